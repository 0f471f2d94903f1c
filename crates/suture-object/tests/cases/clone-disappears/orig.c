/* Checksums of stored blocks in a small object store. */
#include <stddef.h>
#include <stdint.h>

__attribute__((noinline)) static uint32_t block_sum(const uint8_t *p, size_t n, uint32_t seed)
{
    uint32_t a = seed & 0xffff, b = seed >> 16;

    for (size_t i = 0; i < n; i++) {
        a = (a + p[i]) % 65521;
        b = (b + a) % 65521;
    }
    return b << 16 | a;
}

uint32_t block_checksum(const uint8_t *data, size_t len)
{
    return block_sum(data, len, 1);
}

int block_verify(const uint8_t *data, size_t len, uint32_t expect)
{
    return block_sum(data, len, 1) == expect;
}
