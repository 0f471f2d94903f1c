/* Helpers of a metrics exporter: the encoder runs per sample, the warning almost never. */
#include <stdio.h>
#include <stdint.h>

size_t metric_encode_varint(uint8_t *out, uint64_t v)
{
    size_t n = 0;

    while (v >= 0x80) {
        out[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

int metric_warn_overflow(const char *name, uint64_t v)
{
    return fprintf(stderr, "metric %s: counter overflow at %llu\n", name, (unsigned long long)v);
}

void metric_dump(FILE *f, const char *name, const uint64_t *vals, size_t n)
{
    fprintf(f, "# %s (%zu samples)\n", name, n);
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%s[%zu] %llu\n", name, i, (unsigned long long)vals[i]);
}
