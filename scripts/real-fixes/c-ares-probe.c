/* c-ares-probe: exercises the code paths of c-ares' CVE fixes in a loop, one line per
 * iteration on stdout, so a test can watch the library's behaviour change while it runs.
 * Written for suture's real-fixes tier (scripts/real-fixes.sh, crates/suture/tests/real_fixes.rs).
 *
 * Usage: c-ares-probe PROBE
 *   sortlist-long   ares_set_sortlist() with an address part of 16 characters, as many as
 *                   its buffer holds without the terminator (CVE-2022-4904; the old code
 *                   writes the terminator one byte past it): the fix refuses it with
 *                   ARES_EBADSTR (17);
 *                   prints the return code
 */
#include <ares.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static ares_channel channel;

static void probe_sortlist_long(void) {
  printf("rc=%d\n", ares_set_sortlist(channel, "111.111.111.111*/16"));
}

int main(int argc, char **argv) {
  if (argc != 2 || strcmp(argv[1], "sortlist-long") != 0) {
    fprintf(stderr, "usage: c-ares-probe sortlist-long\n");
    return 2;
  }
  if (ares_library_init(ARES_LIB_INIT_ALL) != ARES_SUCCESS) return 1;
  struct ares_options opts;
  memset(&opts, 0, sizeof opts);
  opts.lookups = "b";
  if (ares_init_options(&channel, &opts, ARES_OPT_LOOKUPS) != ARES_SUCCESS) return 1;
  const struct timespec pause = {0, 20 * 1000 * 1000};
  for (;;) {
    probe_sortlist_long();
    fflush(stdout);
    nanosleep(&pause, NULL);
  }
}
