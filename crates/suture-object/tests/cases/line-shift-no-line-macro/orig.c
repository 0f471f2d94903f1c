/* Token bucket used by the SMTP front end to throttle senders. */
#include <stdint.h>

struct throttle {
    uint32_t tokens;
    uint32_t burst;
    uint32_t per_tick;
};

void throttle_tick(struct throttle *t)
{
    uint32_t n = t->tokens + t->per_tick;

    t->tokens = n > t->burst ? t->burst : n;
}

int throttle_take(struct throttle *t, uint32_t cost)
{
    if (t->tokens < cost)
        return 0;
    t->tokens -= cost;
    return 1;
}

uint32_t throttle_wait_ticks(const struct throttle *t, uint32_t cost)
{
    if (t->tokens >= cost)
        return 0;
    if (t->per_tick == 0)
        return UINT32_MAX;
    return (cost - t->tokens + t->per_tick - 1) / t->per_tick;
}
