/* expat-probe: exercises the code paths of expat's CVE fixes in a loop, one line per
 * iteration on stdout, so a test can watch the library's behaviour change while it runs.
 * Written for suture's real-fixes tier (scripts/real-fixes.sh, crates/suture/tests/real_fixes.rs).
 *
 * Usage: expat-probe PROBE
 *   parse-negative-len  XML_ParseBuffer() with a negative length (CVE-2024-45490): prints
 *                       the status and error code
 *   stop-unstarted      XML_StopParser() on a parser that never parsed (CVE-2024-50602)
 */
#include <expat.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static void probe_negative_len(void) {
  XML_Parser p = XML_ParserCreate(NULL);
  void *buf = XML_GetBuffer(p, 16);
  memcpy(buf, "<a/>", 4);
  enum XML_Status st = XML_ParseBuffer(p, -1, 0);
  printf("status=%d error=%d\n", (int)st, (int)XML_GetErrorCode(p));
  XML_ParserFree(p);
}

static void probe_stop_unstarted(void) {
  XML_Parser p = XML_ParserCreate(NULL);
  enum XML_Status st = XML_StopParser(p, XML_TRUE);
  printf("status=%d error=%d\n", (int)st, (int)XML_GetErrorCode(p));
  XML_ParserFree(p);
}

int main(int argc, char **argv) {
  void (*probe)(void) = NULL;
  if (argc == 2 && strcmp(argv[1], "parse-negative-len") == 0)
    probe = probe_negative_len;
  else if (argc == 2 && strcmp(argv[1], "stop-unstarted") == 0)
    probe = probe_stop_unstarted;
  if (!probe) {
    fprintf(stderr, "usage: expat-probe parse-negative-len|stop-unstarted\n");
    return 2;
  }
  const struct timespec pause = {0, 20 * 1000 * 1000};
  for (;;) {
    probe();
    fflush(stdout);
    nanosleep(&pause, NULL);
  }
}
