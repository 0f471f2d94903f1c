/* liblzma-probe: exercises the code an xz-utils security update changes, in a loop, one line
 * per iteration on stdout, so a test can watch an installed liblzma's behaviour change while
 * the probe runs. Written for suture's `build --deb` tier (crates/suture/tests/deb_build.rs).
 *
 * Usage: liblzma-probe alone-init-failure
 *   alone-init-failure  GHSA-5qpq-xqfv-j9pg (xz 5.4.1-1+deb12u2): when the LZMA1 decoder of the
 *                       .lzma ("alone") format failed to initialise, liblzma kept the half-made
 *                       filter chain for a later reinitialisation that was not safe; the fix
 *                       ends the chain at once. The probe decodes a .lzma header whose 8 MiB
 *                       dictionary its allocator refuses, and prints lzma_code's result and
 *                       how many of liblzma's allocations are still live before lzma_end():
 *                       4 before the fix (the stream, the .lzma decoder and the failed
 *                       chain's two), 2 after it.
 */
#include <lzma.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int live;

static void *probe_alloc(void *opaque, size_t nmemb, size_t size) {
  (void)opaque;
  if (nmemb * size >= (1 << 20))
    return NULL; /* the dictionary */
  void *p = malloc(nmemb * size);
  if (p)
    live++;
  return p;
}

static void probe_free(void *opaque, void *ptr) {
  (void)opaque;
  if (ptr)
    live--;
  free(ptr);
}

static const lzma_allocator allocator = {probe_alloc, probe_free, NULL};

static void probe_alone_init_failure(void) {
  /* Properties lc=3 lp=0 pb=2, an 8 MiB dictionary, unknown size, then one byte of data. */
  static const uint8_t in[] = {0x5d, 0x00, 0x00, 0x80, 0x00, 0xff, 0xff, 0xff,
                               0xff, 0xff, 0xff, 0xff, 0xff, 0x00};
  uint8_t out[64];
  lzma_stream strm = LZMA_STREAM_INIT;
  strm.allocator = &allocator;
  live = 0;
  lzma_ret init = lzma_alone_decoder(&strm, UINT64_MAX);
  strm.next_in = in;
  strm.avail_in = sizeof in;
  strm.next_out = out;
  strm.avail_out = sizeof out;
  lzma_ret ret = init == LZMA_OK ? lzma_code(&strm, LZMA_RUN) : init;
  int before_end = live;
  lzma_end(&strm);
  printf("ret=%d live=%d after-end=%d\n", (int)ret, before_end, live);
}

int main(int argc, char **argv) {
  if (argc != 2 || strcmp(argv[1], "alone-init-failure") != 0) {
    fprintf(stderr, "usage: liblzma-probe alone-init-failure\n");
    return 2;
  }
  const struct timespec pause = {0, 20 * 1000 * 1000};
  for (;;) {
    probe_alone_init_failure();
    fflush(stdout);
    nanosleep(&pause, NULL);
  }
}
