/* Reconnect logic of an upstream client with exponential backoff. */
#include <unistd.h>

int upstream_connect(const char *host);

int upstream_reconnect(const char *host)
{
    static unsigned int backoff_ms = 100;
    int fd = upstream_connect(host);

    if (fd >= 0) {
        backoff_ms = 100;
        return fd;
    }
    usleep(backoff_ms * 1000u);
    if (backoff_ms < 30000)
        backoff_ms *= 2;
    return -1;
}
