/* Connection pool of a database proxy. */
#include <stdio.h>
#include <stdlib.h>

#define POOL_LOG(fmt, ...) fprintf(stderr, "pool.c:%d: " fmt "\n", __LINE__, __VA_ARGS__)
#define POOL_CHECK(cond)                                                           \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "pool.c:%d: check failed: %s\n", __LINE__, #cond);     \
            abort();                                                               \
        }                                                                          \
    } while (0)

struct pool {
    int fds[32];
    unsigned int used;
    unsigned int cap;
};

int pool_get(struct pool *p)
{
    POOL_CHECK(p->used <= p->cap);
    if (p->used == 0) {
        POOL_LOG("empty pool (cap %u)", p->cap);
        return -1;
    }
    return p->fds[--p->used];
}

unsigned int pool_idle(const struct pool *p)
{
    return p->used;
}

/* Return a connection to the pool. */
int pool_put(struct pool *p, int fd)
{
    POOL_CHECK(p->used <= p->cap);
    if (p->used >= p->cap - 1) {
        POOL_LOG("pool full, closing fd %d", fd);
        return -1;
    }
    p->fds[p->used++] = fd;
    return 0;
}

void pool_drain(struct pool *p, void (*close_fn)(int))
{
    while (p->used)
        close_fn(p->fds[--p->used]);
}
