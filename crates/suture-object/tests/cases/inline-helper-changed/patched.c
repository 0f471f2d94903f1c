/* Reader for a little-endian binary wire protocol. */
#include <stddef.h>
#include <stdint.h>

struct wire_reader {
    const uint8_t *p;
    size_t left;
    int err;
};

static inline int wire_need(struct wire_reader *r, size_t n)
{
    /* Errors are sticky: after a short read, later reads must not consume bytes. */
    if (r->err || r->left < n) {
        r->err = 1;
        return 0;
    }
    return 1;
}

void wire_init(struct wire_reader *r, const void *buf, size_t len)
{
    r->p = buf;
    r->left = len;
    r->err = 0;
}

uint16_t wire_u16(struct wire_reader *r)
{
    uint16_t v;

    if (!wire_need(r, 2))
        return 0;
    v = (uint16_t)(r->p[0] | r->p[1] << 8);
    r->p += 2;
    r->left -= 2;
    return v;
}

uint32_t wire_u32(struct wire_reader *r)
{
    uint32_t v;

    if (!wire_need(r, 4))
        return 0;
    v = (uint32_t)r->p[0] | (uint32_t)r->p[1] << 8 | (uint32_t)r->p[2] << 16 | (uint32_t)r->p[3] << 24;
    r->p += 4;
    r->left -= 4;
    return v;
}

int wire_failed(const struct wire_reader *r)
{
    return r->err;
}
