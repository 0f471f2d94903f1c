/* libpng1.6-probe: exercises the code paths of libpng's CVE fixes in a loop, one line per
 * iteration on stdout, so a test can watch the library's behaviour change while it runs.
 * Written for suture's real-fixes tier (scripts/real-fixes.sh, crates/suture/tests/real_fixes.rs).
 *
 * Usage: libpng1.6-probe PROBE
 *   quantize-alloc  png_set_quantize() with an 8-entry palette reduced to 4 colours
 *                   (CVE-2025-64505): prints the sizes libpng allocates during the call,
 *                   through a png_create_read_struct_2() allocator; the fix sizes the
 *                   quantize index for every possible palette index (256), not the palette's
 *                   length (8)
 *   quantize-palette png_set_quantize() without a histogram, a 64-entry palette reduced to 16
 *                   colours (CVE-2026-25646): prints the reduced palette (the call rewrites the
 *                   caller's palette); the fix takes the pairs it merges from the current
 *                   palette order, not from the original indices
 */
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static char sizes[256];
static int recording;

static png_voidp probe_malloc(png_structp png, png_alloc_size_t size) {
  (void)png;
  if (recording) {
    size_t n = strlen(sizes);
    snprintf(sizes + n, sizeof sizes - n, "%s%zu", n ? "," : "", (size_t)size);
  }
  return malloc(size);
}

static void probe_free(png_structp png, png_voidp p) {
  (void)png;
  free(p);
}

static void probe_quantize_alloc(void) {
  png_structp png = png_create_read_struct_2(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL, NULL,
                                             probe_malloc, probe_free);
  png_infop info = png_create_info_struct(png);
  png_color palette[8];
  for (int i = 0; i < 8; i++) {
    palette[i].red = (png_byte)(i * 32);
    palette[i].green = (png_byte)(255 - i * 32);
    palette[i].blue = (png_byte)(i * 16);
  }
  sizes[0] = 0;
  recording = 1;
  png_set_quantize(png, palette, 8, 4, NULL, 0);
  recording = 0;
  printf("allocs=%s\n", sizes);
  png_destroy_read_struct(&png, &info, NULL);
}

static void probe_quantize_palette(void) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png_create_info_struct(png);
  png_color palette[64];
  unsigned seed = 12345;
  for (int i = 0; i < 64; i++) {
    seed = seed * 1103515245u + 12345u;
    palette[i].red = (png_byte)(seed >> 16);
    seed = seed * 1103515245u + 12345u;
    palette[i].green = (png_byte)(seed >> 16);
    seed = seed * 1103515245u + 12345u;
    palette[i].blue = (png_byte)(seed >> 16);
  }
  png_set_quantize(png, palette, 64, 16, NULL, 0);
  unsigned long sum = 0;
  for (int i = 0; i < 16; i++)
    sum = sum * 31 + palette[i].red * 65536u + palette[i].green * 256u + palette[i].blue;
  printf("palette=%lx\n", sum);
  png_destroy_read_struct(&png, &info, NULL);
}

int main(int argc, char **argv) {
  void (*probe)(void) = NULL;
  if (argc == 2 && strcmp(argv[1], "quantize-alloc") == 0)
    probe = probe_quantize_alloc;
  else if (argc == 2 && strcmp(argv[1], "quantize-palette") == 0)
    probe = probe_quantize_palette;
  if (!probe) {
    fprintf(stderr, "usage: libpng1.6-probe quantize-alloc|quantize-palette\n");
    return 2;
  }
  const struct timespec pause = {0, 20 * 1000 * 1000};
  for (;;) {
    probe();
    fflush(stdout);
    nanosleep(&pause, NULL);
  }
}
