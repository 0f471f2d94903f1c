/* Idle timeout of keep-alive connections. */
#include <time.h>

int keepalive_timeout = 15;

struct kconn {
    time_t last_active;
    int busy;
};

int kconn_expired(const struct kconn *c, time_t now)
{
    return !c->busy && now - c->last_active > keepalive_timeout;
}
