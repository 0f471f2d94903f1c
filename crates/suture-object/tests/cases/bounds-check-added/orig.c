/* Ring of the most recent client addresses, shown by the admin "who" command. */
#include <stddef.h>
#include <string.h>

#define RING_SLOTS 16
#define ADDR_MAX 40

struct addr_ring {
    unsigned int head;
    unsigned int len;
    char slots[RING_SLOTS][ADDR_MAX];
};

void ring_init(struct addr_ring *r)
{
    memset(r, 0, sizeof(*r));
}

int ring_push(struct addr_ring *r, const char *addr)
{
    size_t n = strlen(addr);
    char *slot = r->slots[r->head];

    memcpy(slot, addr, n + 1);
    r->head = (r->head + 1) % RING_SLOTS;
    if (r->len < RING_SLOTS)
        r->len++;
    return 0;
}

const char *ring_get(const struct addr_ring *r, unsigned int i)
{
    if (i >= r->len)
        return NULL;
    return r->slots[(r->head + RING_SLOTS - r->len + i) % RING_SLOTS];
}

unsigned int ring_len(const struct addr_ring *r)
{
    return r->len;
}
