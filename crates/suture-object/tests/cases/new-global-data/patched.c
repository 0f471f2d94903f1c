/* Upload body accumulator of a request handler. */
#include <stdlib.h>
#include <string.h>

struct body {
    char *data;
    size_t len;
    size_t cap;
};

unsigned long bodies_started;

/* New: cap on an upload body (was unbounded) and a counter of refused bodies. */
size_t body_limit = 8u << 20;
static unsigned long bodies_refused;

int body_begin(struct body *b, size_t hint)
{
    b->cap = hint ? hint : 1024;
    b->len = 0;
    b->data = malloc(b->cap);
    if (!b->data)
        return -1;
    bodies_started++;
    return 0;
}

int body_feed(struct body *b, const char *chunk, size_t n)
{
    if (n > body_limit || b->len > body_limit - n) {
        bodies_refused++;
        return -1;
    }
    if (b->len + n > b->cap) {
        size_t ncap = b->cap * 2;
        char *p;

        while (ncap < b->len + n)
            ncap *= 2;
        p = realloc(b->data, ncap);
        if (!p)
            return -1;
        b->data = p;
        b->cap = ncap;
    }
    memcpy(b->data + b->len, chunk, n);
    b->len += n;
    return 0;
}

unsigned long body_refused_count(void)
{
    return bodies_refused;
}

void body_free(struct body *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
