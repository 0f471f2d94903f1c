/* Idle timeout of keep-alive connections. */
#include <time.h>

extern unsigned int open_connections;

/* Shrink the timeout under load instead of a fixed 15 s. */
int keepalive_timeout(void)
{
    return open_connections > 1000 ? 2 : 15;
}

struct kconn {
    time_t last_active;
    int busy;
};

int kconn_expired(const struct kconn *c, time_t now)
{
    return !c->busy && now - c->last_active > keepalive_timeout();
}
