/* Cache statistics with per-event counters kept in static locals. */
#include <stdio.h>

struct cache_stats_sink {
    void (*emit)(const char *what, unsigned long n);
};

extern struct cache_stats_sink *stats_sink;

void stat_hit(unsigned int bytes)
{
    static unsigned long count;

    count++;
    if (stats_sink && count % 1000 == 0)
        stats_sink->emit("hit", count);
    (void)bytes;
}

void stat_miss(void)
{
    static unsigned long count;

    if (++count % 100 == 0 && stats_sink)
        stats_sink->emit("miss", count);
}
