/* Record sanitizer of a log collector: bad records are counted and skipped. */
#include <stddef.h>

__attribute__((cold)) void collector_warn(const char *what, size_t index);

struct record {
    unsigned int len;
    unsigned int level;
    const char *text;
};

unsigned long records_dropped;

size_t records_keep(struct record *r, size_t n, unsigned int min_level)
{
    size_t kept = 0;

    for (size_t i = 0; i < n; i++) {
        if (r[i].text == NULL) {
            collector_warn("record without text", i);
            records_dropped++;
            continue;
        }
        /* Oversized records broke the forwarder's fixed-size frames. */
        if (r[i].level < min_level || r[i].len > 65536)
            continue;
        r[kept++] = r[i];
    }
    return kept;
}
