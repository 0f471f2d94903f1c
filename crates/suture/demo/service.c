/* The demo service: a small multi-threaded key/value server with a heartbeat command
 * (protocol and bug in proto.c).
 *
 * Usage: service [PORT]   (default 0: the kernel picks a free port)
 * Listens on 127.0.0.1 only and prints "listening on 127.0.0.1:<port>". WORKERS threads
 * accept and serve connections. The upstream API key comes from SERVICE_API_KEY. The service
 * exits with status 0 when its standard input reaches end of file, so it never outlives the
 * program that started it. */
#include "proto.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define WORKERS 8

static int listener;
static const char *api_key = "sk-demo-unset";

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void serve(int fd)
{
    struct session s;
    char buf[1024], reply[1024];
    size_t have = 0;
    session_init(&s, api_key);
    for (;;) {
        char *nl = memchr(buf, '\n', have);
        if (!nl) {
            if (have == sizeof buf)
                return; /* a line longer than the buffer: drop the client */
            ssize_t r = read(fd, buf + have, sizeof buf - have);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                return;
            have += (size_t)r;
            continue;
        }
        *nl = '\0';
        if (nl > buf && nl[-1] == '\r')
            nl[-1] = '\0';
        int n = handle_request(&s, buf, reply, sizeof reply);
        if (n <= 0 || (size_t)n >= sizeof reply || write_all(fd, reply, (size_t)n) != 0)
            return;
        have -= (size_t)(nl + 1 - buf);
        memmove(buf, nl + 1, have);
    }
}

static void *worker(void *arg)
{
    (void)arg;
    for (;;) {
        int fd = accept(listener, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            perror("accept");
            exit(1);
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        serve(fd);
        close(fd);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    const char *key = getenv("SERVICE_API_KEY");
    if (key && *key)
        api_key = key;
    struct sockaddr_in addr = {.sin_family = AF_INET};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(argc > 1 ? (unsigned short)atoi(argv[1]) : 0);
    socklen_t alen = sizeof addr;
    listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 ||
        listen(listener, 64) != 0 || getsockname(listener, (struct sockaddr *)&addr, &alen) != 0) {
        perror("service: cannot listen");
        return 1;
    }
    for (int i = 0; i < WORKERS; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker, NULL) != 0) {
            perror("service: cannot start a worker");
            return 1;
        }
    }
    printf("listening on 127.0.0.1:%d with %d worker threads\n", ntohs(addr.sin_port), WORKERS);
    fflush(stdout);
    char c[256];
    while (read(0, c, sizeof c) > 0) {
    }
    return 0;
}
