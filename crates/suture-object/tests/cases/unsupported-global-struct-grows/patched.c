/* Request statistics exported on /status. */
#include <stdio.h>

struct req_stats {
    unsigned long requests;
    unsigned long errors;
    unsigned long client_errors;    /* 4xx were not counted at all */
};

struct req_stats stats;

void stats_count(int status)
{
    stats.requests++;
    if (status >= 500)
        stats.errors++;
    else if (status >= 400)
        stats.client_errors++;
}

int stats_print(char *buf, size_t n)
{
    return snprintf(buf, n, "requests %lu\nerrors %lu\nclient_errors %lu\n", stats.requests,
                    stats.errors, stats.client_errors);
}
