/* Request statistics exported on /status. */
#include <stdio.h>

struct req_stats {
    unsigned long requests;
    unsigned long errors;
};

struct req_stats stats;

void stats_count(int status)
{
    stats.requests++;
    if (status >= 500)
        stats.errors++;
}

int stats_print(char *buf, size_t n)
{
    return snprintf(buf, n, "requests %lu\nerrors %lu\n", stats.requests, stats.errors);
}
