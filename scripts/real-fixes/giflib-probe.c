/* giflib-probe: exercises the code paths of giflib's CVE fixes in a loop, one line per
 * iteration on stdout, so a test can watch the library's behaviour change while it runs.
 * Written for suture's real-fixes tier (scripts/real-fixes.sh, crates/suture/tests/real_fixes.rs).
 *
 * Usage: giflib-probe PROBE
 *   gcb-short-block  EGifGCBToSavedExtension() on a saved image whose graphics control
 *                    extension block is 1 byte long (CVE-2026-26740): the old code writes the
 *                    4-byte block into it and succeeds, the fix refuses with GIF_ERROR; prints
 *                    the return value
 *   copy-fails       GifMakeSavedImage() copying an image whose raster cannot be allocated
 *                    (CVE-2026-23868): the old code, cleaning up after the failed allocation,
 *                    freed the extension blocks of the image it copied from (they were still
 *                    aliased in the new record); the fix clears the aliases first. Prints
 *                    whether the source's extension array was freed (glibc hands the chunk
 *                    just freed back to the next malloc of its size, in this thread)
 */
#include <gif_lib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int discard(GifFileType *gif, const GifByteType *buf, int len) {
  (void)gif;
  (void)buf;
  return len;
}

static void probe_gcb_short_block(void) {
  int err = 0;
  GifFileType *gif = EGifOpen(NULL, discard, &err);
  if (!gif) {
    printf("EGifOpen failed: %d\n", err);
    return;
  }
  SavedImage *img = GifMakeSavedImage(gif, NULL);
  /* 8 bytes of storage, a block that says it has 1 */
  static unsigned char one[8] = {0};
  GifAddExtensionBlock(&img->ExtensionBlockCount, &img->ExtensionBlocks,
                       GRAPHICS_EXT_FUNC_CODE, sizeof one, one);
  img->ExtensionBlocks[0].ByteCount = 1;
  GraphicsControlBlock gcb = {DISPOSE_DO_NOT, false, 10, 3};
  int rc = EGifGCBToSavedExtension(&gcb, gif, 0);
  printf("rc=%d\n", rc);
  img->ExtensionBlocks[0].ByteCount = sizeof one;
  EGifCloseFile(gif, &err);
}

static void probe_copy_fails(void) {
  GifFileType gif;
  memset(&gif, 0, sizeof gif);
  /* a source image with one extension block and a raster too large to allocate */
  SavedImage from;
  memset(&from, 0, sizeof from);
  from.ImageDesc.Width = -1;
  from.ImageDesc.Height = 1;
  from.ExtensionBlockCount = 1;
  from.ExtensionBlocks = malloc(sizeof(ExtensionBlock));
  ExtensionBlock *blocks = from.ExtensionBlocks;
  blocks[0].Function = COMMENT_EXT_FUNC_CODE;
  blocks[0].ByteCount = 200;
  blocks[0].Bytes = malloc(200); /* another size class than the array */
  memset(blocks[0].Bytes, 'x', 200);
  SavedImage *sp = GifMakeSavedImage(&gif, &from);
  void *again = malloc(sizeof(ExtensionBlock));
  int freed = again == blocks;
  if (freed) {
    free(again); /* the library freed the array and its block's bytes */
  } else {
    free(again);
    free(blocks[0].Bytes);
    free(blocks);
  }
  printf("copy=%s freed=%d\n", sp ? "made" : "failed", freed);
  GifFreeSavedImages(&gif);
}

int main(int argc, char **argv) {
  void (*probe)(void) = NULL;
  if (argc == 2 && strcmp(argv[1], "gcb-short-block") == 0)
    probe = probe_gcb_short_block;
  else if (argc == 2 && strcmp(argv[1], "copy-fails") == 0)
    probe = probe_copy_fails;
  if (!probe) {
    fprintf(stderr, "usage: giflib-probe gcb-short-block|copy-fails\n");
    return 2;
  }
  const struct timespec pause = {0, 20 * 1000 * 1000};
  for (;;) {
    probe();
    fflush(stdout);
    nanosleep(&pause, NULL);
  }
}
