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
 *   pton-prefix     ares_inet_pton(AF_INET6) on "0::00:00:00/2", the input of CVE-2023-31130
 *                   (ares_inet_net_pton rewritten): prints the return code, 0 before the fix
 *                   and 1 after
 */
#include <arpa/inet.h>
#include <ares.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static ares_channel channel;

static void probe_sortlist_long(void) {
  printf("rc=%d\n", ares_set_sortlist(channel, "111.111.111.111*/16"));
}

static void probe_pton_prefix(void) {
  unsigned char addr[16];
  printf("rc=%d\n", ares_inet_pton(AF_INET6, "0::00:00:00/2", addr));
}

int main(int argc, char **argv) {
  void (*probe)(void) = NULL;
  if (argc == 2 && strcmp(argv[1], "sortlist-long") == 0)
    probe = probe_sortlist_long;
  else if (argc == 2 && strcmp(argv[1], "pton-prefix") == 0)
    probe = probe_pton_prefix;
  if (!probe) {
    fprintf(stderr, "usage: c-ares-probe sortlist-long|pton-prefix\n");
    return 2;
  }
  if (ares_library_init(ARES_LIB_INIT_ALL) != ARES_SUCCESS) return 1;
  struct ares_options opts;
  memset(&opts, 0, sizeof opts);
  opts.lookups = "b";
  if (ares_init_options(&channel, &opts, ARES_OPT_LOOKUPS) != ARES_SUCCESS) return 1;
  const struct timespec pause = {0, 20 * 1000 * 1000};
  for (;;) {
    probe();
    fflush(stdout);
    nanosleep(&pause, NULL);
  }
}
