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
 *   empty-reply     a query to a DNS server (a UDP socket of this process on 127.0.0.1) that
 *                   answers with an empty datagram, then with the reply (CVE-2023-32067):
 *                   the old code took the 0-byte read for a closed connection and failed the
 *                   query with ARES_ECONNREFUSED (11); the fix skips the empty datagram and
 *                   takes the reply, ARES_SUCCESS (0). Prints the query's status
 */
#include <arpa/inet.h>
#include <ares.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/select.h>
#include <sys/socket.h>
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

static int server = -1;
static ares_channel resolver;

/* The DNS server: one UDP socket on 127.0.0.1 and a resolver channel that asks it, once
 * tries, and waits long enough that a lost reply shows as a timeout, not as a refusal. */
static void start_server(void) {
  server = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (server < 0 || bind(server, (struct sockaddr *)&a, sizeof a) != 0 ||
      getsockname(server, (struct sockaddr *)&a, &len) != 0) {
    perror("c-ares-probe: server socket");
    exit(1);
  }
  struct ares_options opts;
  memset(&opts, 0, sizeof opts);
  opts.tries = 1;
  opts.timeout = 10000;
  char servers[64];
  snprintf(servers, sizeof servers, "127.0.0.1:%u", ntohs(a.sin_port));
  if (ares_init_options(&resolver, &opts, ARES_OPT_TRIES | ARES_OPT_TIMEOUTMS) != ARES_SUCCESS ||
      ares_set_servers_ports_csv(resolver, servers) != ARES_SUCCESS) {
    fprintf(stderr, "c-ares-probe: cannot set up the resolver\n");
    exit(1);
  }
}

/* Answers one query: an empty datagram first, then the query echoed as a reply with no
 * records. Both are queued on the resolver's socket before it reads either. */
static void serve_one(void) {
  unsigned char buf[512];
  struct sockaddr_in from;
  socklen_t len = sizeof from;
  ssize_t n = recvfrom(server, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
  if (n < 12)
    return;
  buf[2] |= 0x80; /* QR: a response */
  sendto(server, buf, 0, 0, (struct sockaddr *)&from, len);
  sendto(server, buf, (size_t)n, 0, (struct sockaddr *)&from, len);
}

static void answered(void *arg, int status, int timeouts, unsigned char *abuf, int alen) {
  (void)timeouts;
  (void)abuf;
  (void)alen;
  *(int *)arg = status;
}

static void probe_empty_reply(void) {
  if (server < 0)
    start_server();
  unsigned char *query;
  int qlen;
  if (ares_create_query("probe.example", 1 /* IN */, 1 /* A */, 0x1234, 1, &query, &qlen, 0) !=
      ARES_SUCCESS) {
    printf("cannot create the query\n");
    return;
  }
  int status = -1;
  ares_send(resolver, query, qlen, answered, &status);
  ares_free_string(query);
  while (status == -1) {
    fd_set r, w;
    FD_ZERO(&r);
    FD_ZERO(&w);
    int nfds = ares_fds(resolver, &r, &w);
    FD_SET(server, &r);
    if (server + 1 > nfds)
      nfds = server + 1;
    struct timeval tv, *tvp = ares_timeout(resolver, NULL, &tv);
    if (select(nfds, &r, &w, NULL, tvp) < 0)
      continue;
    if (FD_ISSET(server, &r)) {
      FD_CLR(server, &r);
      serve_one();
      continue; /* both datagrams are queued now: let the resolver read them */
    }
    ares_process(resolver, &r, &w);
  }
  printf("status=%d\n", status);
}

int main(int argc, char **argv) {
  void (*probe)(void) = NULL;
  if (argc == 2 && strcmp(argv[1], "sortlist-long") == 0)
    probe = probe_sortlist_long;
  else if (argc == 2 && strcmp(argv[1], "pton-prefix") == 0)
    probe = probe_pton_prefix;
  else if (argc == 2 && strcmp(argv[1], "empty-reply") == 0)
    probe = probe_empty_reply;
  if (!probe) {
    fprintf(stderr, "usage: c-ares-probe sortlist-long|pton-prefix|empty-reply\n");
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
