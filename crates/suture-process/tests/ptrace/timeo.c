/* A thread blocked in recv() on a socket with a receive timeout (SO_RCVTIMEO): the kernel
 * does not restart such a call when it is interrupted, it fails with EINTR. Each line on stdin
 * sends one byte to that socket; the thread prints what every recv() returned. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int sv[2];

static void *receiver(void *arg) {
    (void)arg;
    for (;;) {
        char c;
        ssize_t n = recv(sv[0], &c, 1, 0);
        if (n < 0)
            printf("error %d\n", errno);
        else
            printf("got %zd\n", n);
        fflush(stdout);
    }
    return NULL;
}

int main(void) {
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        return 1;
    struct timeval tv = {.tv_sec = 600, .tv_usec = 0};
    if (setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0)
        return 1;
    pthread_t t;
    pthread_create(&t, NULL, receiver, NULL);
    printf("ready\n");
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (write(sv[1], "x", 1) != 1)
            return 1;
    }
    return 0;
}
