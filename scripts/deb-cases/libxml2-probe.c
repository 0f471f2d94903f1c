/* libxml2-probe: exercises the code a libxml2 security update changes, in a loop, one line per
 * iteration on stdout, so a test can watch an installed library's behaviour change while the
 * probe runs. Written for suture's `build --deb` tier (crates/suture/tests/deb_build.rs).
 *
 * Usage: libxml2-probe xpath-depth
 *   xpath-depth  CVE-2025-9714: an XPath evaluation used to reset the context's recursion
 *                depth to 0, so recursive evaluations (EXSLT dyn:evaluate) escaped the depth
 *                limit; the fix keeps and restores the caller's depth. The probe sets the
 *                depth to 100, evaluates an expression and prints the depth afterwards: 0
 *                before the fix, 100 after it.
 */
#include <libxml/parser.h>
#include <libxml/xpath.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static xmlDocPtr doc;

static void probe_xpath_depth(void) {
  xmlXPathContextPtr ctx = xmlXPathNewContext(doc);
  ctx->depth = 100;
  xmlXPathObjectPtr r = xmlXPathEval(BAD_CAST "count(/a/b)", ctx);
  printf("count=%g depth=%d\n", r ? r->floatval : -1.0, ctx->depth);
  xmlXPathFreeObject(r);
  xmlXPathFreeContext(ctx);
}

int main(int argc, char **argv) {
  if (argc != 2 || strcmp(argv[1], "xpath-depth") != 0) {
    fprintf(stderr, "usage: libxml2-probe xpath-depth\n");
    return 2;
  }
  static const char xml[] = "<a><b/><b/><b/></a>";
  doc = xmlReadMemory(xml, sizeof xml - 1, "probe.xml", NULL, 0);
  if (!doc) {
    fprintf(stderr, "libxml2-probe: cannot parse the document\n");
    return 1;
  }
  const struct timespec pause = {0, 20 * 1000 * 1000};
  for (;;) {
    probe_xpath_depth();
    fflush(stdout);
    nanosleep(&pause, NULL);
  }
}
