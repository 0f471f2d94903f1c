/* giflib-probe: exercises the code paths of giflib's CVE fixes in a loop, one line per
 * iteration on stdout, so a test can watch the library's behaviour change while it runs.
 * Written for suture's real-fixes tier (scripts/real-fixes.sh, crates/suture/tests/real_fixes.rs).
 *
 * Usage: giflib-probe PROBE
 *   gcb-short-block  EGifGCBToSavedExtension() on a saved image whose graphics control
 *                    extension block is 1 byte long (CVE-2026-26740): the old code writes the
 *                    4-byte block into it and succeeds, the fix refuses with GIF_ERROR; prints
 *                    the return value
 */
#include <gif_lib.h>
#include <stdio.h>
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

int main(int argc, char **argv) {
  if (argc != 2 || strcmp(argv[1], "gcb-short-block") != 0) {
    fprintf(stderr, "usage: giflib-probe gcb-short-block\n");
    return 2;
  }
  const struct timespec pause = {0, 20 * 1000 * 1000};
  for (;;) {
    probe_gcb_short_block();
    fflush(stdout);
    nanosleep(&pause, NULL);
  }
}
