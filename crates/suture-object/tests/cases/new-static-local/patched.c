/* Connection accept path of an event-driven server. */
#include <errno.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

struct listener {
    int fd;
    unsigned int max_clients;
    unsigned int clients;
};

int listener_accept(struct listener *l)
{
    static unsigned long suppressed;
    int fd = accept(l->fd, NULL, NULL);

    if (fd < 0)
        return errno == EAGAIN ? 0 : -1;
    if (l->clients >= l->max_clients) {
        /* A connection flood filled the log; report every 1000th refusal only. */
        if (suppressed++ % 1000 == 0)
            fprintf(stderr, "too many clients (%u), closing fd %d (%lu refused)\n",
                    l->clients, fd, suppressed);
        close(fd);
        return 0;
    }
    l->clients++;
    return fd;
}

void listener_closed(struct listener *l)
{
    if (l->clients)
        l->clients--;
}
