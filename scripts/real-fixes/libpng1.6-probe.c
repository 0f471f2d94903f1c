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
 *   write-8bit      png_image_write_to_memory() of an 8-bit RGB image with convert_to_8bit
 *                   set (CVE-2025-64506): the old code took the 16-bit conversion path and
 *                   read the 8-bit rows as 16-bit samples (twice the row, past its end); the
 *                   fix writes the rows as they are; prints a hash of the PNG written (the
 *                   buffer has room for the old code's over-read, so it stays in bounds)
 *   palette-compose png_image_finish_read() of a palette image with a tRNS chunk into RGB,
 *                   composed on the buffer's contents (CVE-2025-64720): the old code
 *                   composited the palette on black where it should only premultiply it
 *                   (the results differ in rounding, and the old ones can exceed their
 *                   alpha); prints a hash of the pixels read
 *   read-interlaced-16
 *                   png_image_finish_read() of an interlaced 16-bit RGB image into 8-bit
 *                   RGB rows of exactly the image's width (CVE-2025-65018): the old code
 *                   combined the interlace passes at the image's 16 bits a sample into the
 *                   8-bit rows, each row's write running into the next (past the last one
 *                   for wider images); prints whether the bytes after the image changed, and
 *                   a hash of the image read
 *   read-interlaced-16-padded
 *                   the same with rows padded by 64 bytes (CVE-2026-22695, on top of the fix
 *                   for CVE-2025-65018): that fix copied each row from its row buffer with the
 *                   caller's stride, reading past the buffer into the padding; prints whether
 *                   the padding changed, and a hash of the image read
 *   palette-gamma   png_image_finish_read() of a palette image with tRNS and gAMA into RGB,
 *                   composed on the buffer's contents (CVE-2025-66293): the old code took
 *                   the palette's sRGB values for linear premultiplied ones and indexed past
 *                   its sRGB table; prints a hash of the pixels read
 *   write-stride    png_image_write_to_memory() of a 16-bit linear RGBA image whose row
 *                   stride is over 65535 bytes (CVE-2026-22801): the old code truncated the
 *                   stride to 16 bits and wrote rows from the wrong place; prints a hash of
 *                   the PNG written
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

/* FNV-1a, enough to tell two outputs apart */
static unsigned long hash(const unsigned char *p, size_t n) {
  unsigned long h = 14695981039346656037ul;
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * 1099511628211ul;
  return h;
}

static unsigned char written[1 << 20];

/* Writes `image` from `buffer` with `row_stride` to memory; prints the hash of the file. */
static void write_and_print(png_image *image, int convert_to_8bit, const void *buffer,
                            png_int_32 row_stride) {
  png_alloc_size_t size = sizeof written;
  if (!png_image_write_to_memory(image, written, &size, convert_to_8bit, buffer, row_stride,
                                 NULL)) {
    printf("write failed: %s\n", image->message);
    return;
  }
  printf("png=%lx\n", hash(written, size));
}

static void probe_write_8bit(void) {
  enum { W = 16, H = 8 };
  /* twice the image: the old code reads each 8-bit row as 16-bit samples */
  static png_byte pixels[2 * W * H * 3];
  for (size_t i = 0; i < sizeof pixels; i++)
    pixels[i] = (png_byte)(i * 7 + 3);
  png_image image;
  memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  image.width = W;
  image.height = H;
  image.format = PNG_FORMAT_RGB;
  write_and_print(&image, 1, pixels, 0);
}

static void write_memory(png_structp png, png_bytep data, size_t n) {
  struct sink {
    size_t size;
  } *out = png_get_io_ptr(png);
  if (n > sizeof written - out->size)
    png_error(png, "image too large for the probe");
  memcpy(written + out->size, data, n);
  out->size += n;
}

static void read_memory(png_structp png, png_bytep out, size_t n) {
  struct reader {
    const png_byte *p;
    size_t left;
  } *in = png_get_io_ptr(png);
  if (n > in->left)
    png_error(png, "read past the end");
  memcpy(out, in->p, n);
  in->p += n;
  in->left -= n;
}

static void probe_palette_compose(void) {
  enum { W = 256, H = 2 };
  /* a palette image with 256 entries of every alpha, written with the simplified API */
  static png_byte map[256 * 4], indices[W * H];
  unsigned seed = 1;
  for (int i = 0; i < 256; i++) {
    for (int c = 0; c < 3; c++) {
      seed = seed * 1103515245u + 12345u;
      map[4 * i + c] = (png_byte)(seed >> 16);
    }
    map[4 * i + 3] = (png_byte)i;
  }
  for (int i = 0; i < W * H; i++)
    indices[i] = (png_byte)i;
  png_image image;
  memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  image.width = W;
  image.height = H;
  image.format = PNG_FORMAT_RGBA_COLORMAP;
  image.colormap_entries = 256;
  png_alloc_size_t size = sizeof written;
  if (!png_image_write_to_memory(&image, written, &size, 0, indices, 0, map)) {
    printf("write failed: %s\n", image.message);
    return;
  }
  png_image_free(&image);

  memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&image, written, size)) {
    printf("read failed: %s\n", image.message);
    return;
  }
  /* Read it back premultiplied (PNG_ALPHA_OPTIMIZED): libpng premultiplies the palette
   * itself when it starts reading; png_get_PLTE() returns that palette. */
  struct reader {
    const png_byte *p;
    size_t left;
  } in = {written, size};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    printf("read failed\n");
    png_destroy_read_struct(&png, &info, NULL);
    return;
  }
  png_set_read_fn(png, &in, read_memory);
  png_read_info(png, info);
  png_set_alpha_mode(png, PNG_ALPHA_OPTIMIZED, PNG_DEFAULT_sRGB);
  png_read_update_info(png, info);
  png_colorp palette;
  int n = 0;
  png_get_PLTE(png, info, &palette, &n);
  printf("palette=%lx\n", hash((const unsigned char *)palette, (size_t)n * sizeof *palette));
  png_destroy_read_struct(&png, &info, NULL);
}

/* Writes a PNG with the low-level API into `written`; returns its size (0: failed). */
static size_t write_png(png_uint_32 w, png_uint_32 h, int color_type, int depth, int interlace,
                        const png_color *palette, int entries, const png_byte *trans,
                        int ntrans, double gamma, png_bytep *rows) {
  struct sink {
    size_t size;
  } out = {0};
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return 0;
  }
  png_set_write_fn(png, &out, write_memory, NULL);
  png_set_IHDR(png, info, w, h, depth, color_type, interlace, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (palette)
    png_set_PLTE(png, info, palette, entries);
  if (trans)
    png_set_tRNS(png, info, trans, ntrans, NULL);
  if (gamma > 0)
    png_set_gAMA(png, info, gamma);
  png_write_info(png, info);
  png_write_image(png, rows);
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  return out.size;
}

enum { IW = 16, IH = 16, PAD = 64 };
/* 8-bit RGB rows read from an interlaced 16-bit image, with room after them */
static png_byte image8[(IW * 3 + PAD) * IH + 4096];

/* Reads the interlaced 16-bit image into `image8` with `stride` bytes a row; returns 0 when
 * the read failed (printed). */
static int read_interlaced_16(size_t stride) {
  static png_uint_16 samples[IH][IW * 3];
  static png_bytep rows[IH];
  for (int y = 0; y < IH; y++) {
    for (int x = 0; x < IW * 3; x++)
      samples[y][x] = (png_uint_16)((y * 4099 + x * 977) * 13);
    rows[y] = (png_bytep)samples[y];
  }
  size_t size = write_png(IW, IH, PNG_COLOR_TYPE_RGB, 16, PNG_INTERLACE_ADAM7, NULL, 0, NULL, 0,
                          0, rows);
  png_image image;
  memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  if (!size || !png_image_begin_read_from_memory(&image, written, size)) {
    printf("read failed: %s\n", image.message);
    return 0;
  }
  image.format = PNG_FORMAT_RGB;
  memset(image8, 0xaa, sizeof image8);
  if (!png_image_finish_read(&image, NULL, image8, (png_int_32)stride, NULL)) {
    printf("read failed: %s\n", image.message);
    return 0;
  }
  return 1;
}

/* Whether any of `n` bytes at `p` is no longer the fill byte */
static int changed(const png_byte *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != 0xaa)
      return 1;
  return 0;
}

static void probe_read_interlaced_16(void) {
  if (!read_interlaced_16(IW * 3))
    return;
  size_t end = IW * 3 * IH;
  printf("after-image=%s pixels=%lx\n", changed(image8 + end, sizeof image8 - end) ? "written" : "intact",
         hash(image8, end));
}

static void probe_read_interlaced_16_padded(void) {
  if (!read_interlaced_16(IW * 3 + PAD))
    return;
  int padding = 0;
  for (int y = 0; y < IH; y++)
    padding |= changed(image8 + y * (IW * 3 + PAD) + IW * 3, PAD);
  png_byte rows[IW * 3 * IH];
  for (int y = 0; y < IH; y++)
    memcpy(rows + y * IW * 3, image8 + y * (IW * 3 + PAD), IW * 3);
  printf("padding=%s pixels=%lx\n", padding ? "written" : "intact", hash(rows, sizeof rows));
}

static void probe_palette_gamma(void) {
  enum { W = 256, H = 2 };
  static png_color palette[256];
  static png_byte trans[256], indices[H][W], rgb[W * H * 3];
  static png_bytep rows[H];
  unsigned seed = 99;
  for (int i = 0; i < 256; i++) {
    seed = seed * 1103515245u + 12345u;
    palette[i].red = (png_byte)(seed >> 16);
    seed = seed * 1103515245u + 12345u;
    palette[i].green = (png_byte)(seed >> 16);
    seed = seed * 1103515245u + 12345u;
    palette[i].blue = (png_byte)(seed >> 16);
    trans[i] = (png_byte)i;
  }
  for (int y = 0; y < H; y++) {
    for (int x = 0; x < W; x++)
      indices[y][x] = (png_byte)x;
    rows[y] = indices[y];
  }
  size_t size = write_png(W, H, PNG_COLOR_TYPE_PALETTE, 8, PNG_INTERLACE_NONE, palette, 256,
                          trans, 256, 1 / 1.8, rows);
  png_image image;
  memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  if (!size || !png_image_begin_read_from_memory(&image, written, size)) {
    printf("read failed: %s\n", image.message);
    return;
  }
  image.format = PNG_FORMAT_RGB;
  for (size_t i = 0; i < sizeof rgb; i++)
    rgb[i] = (png_byte)(i * 13);
  if (!png_image_finish_read(&image, NULL, rgb, 0, NULL)) {
    printf("read failed: %s\n", image.message);
    return;
  }
  printf("pixels=%lx\n", hash(rgb, sizeof rgb));
}

static void probe_write_stride(void) {
  enum { W = 4, H = 3, STRIDE = 33000 }; /* in samples: 66000 bytes a row */
  static png_uint_16 pixels[STRIDE * H];
  for (size_t i = 0; i < sizeof pixels / sizeof pixels[0]; i++)
    pixels[i] = (png_uint_16)(i * 2654435761u >> 7);
  png_image image;
  memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  image.width = W;
  image.height = H;
  image.format = PNG_FORMAT_LINEAR_RGB_ALPHA;
  write_and_print(&image, 0, pixels, STRIDE);
}

int main(int argc, char **argv) {
  void (*probe)(void) = NULL;
  if (argc == 2 && strcmp(argv[1], "quantize-alloc") == 0)
    probe = probe_quantize_alloc;
  else if (argc == 2 && strcmp(argv[1], "quantize-palette") == 0)
    probe = probe_quantize_palette;
  else if (argc == 2 && strcmp(argv[1], "write-8bit") == 0)
    probe = probe_write_8bit;
  else if (argc == 2 && strcmp(argv[1], "palette-compose") == 0)
    probe = probe_palette_compose;
  else if (argc == 2 && strcmp(argv[1], "read-interlaced-16") == 0)
    probe = probe_read_interlaced_16;
  else if (argc == 2 && strcmp(argv[1], "read-interlaced-16-padded") == 0)
    probe = probe_read_interlaced_16_padded;
  else if (argc == 2 && strcmp(argv[1], "palette-gamma") == 0)
    probe = probe_palette_gamma;
  else if (argc == 2 && strcmp(argv[1], "write-stride") == 0)
    probe = probe_write_stride;
  if (!probe) {
    fprintf(stderr, "usage: libpng1.6-probe "
                    "quantize-alloc|quantize-palette|write-8bit|palette-compose|write-stride|"
                    "read-interlaced-16|read-interlaced-16-padded|palette-gamma\n");
    return 2;
  }
  const struct timespec pause = {0, 20 * 1000 * 1000};
  for (;;) {
    probe();
    fflush(stdout);
    nanosleep(&pause, NULL);
  }
}
