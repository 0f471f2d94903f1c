/* Access-log line formatter of a small web server. */
#include <stdio.h>
#include <string.h>

struct log_entry {
    const char *client;
    const char *path;
    int status;
    unsigned int day, month, year;
};

unsigned int log_verbosity = 1;

static const char month_abbr[12][4] = {
    "Jan", "Feb", "Mar", "Apr", "May", "Jun",
    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
};

/* Copy src, writing control characters and '"' as \xNN. Returns bytes written. */
static size_t log_escape(char *dst, size_t cap, const char *src)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;

    for (; *src && o + 5 < cap; src++) {
        unsigned char c = (unsigned char)*src;
        if (c < 0x20 || c == '"' || c >= 0x7f) {
            dst[o++] = '\\';
            dst[o++] = 'x';
            dst[o++] = hex[c >> 4];
            dst[o++] = hex[c & 15];
        } else {
            dst[o++] = (char)c;
        }
    }
    dst[o] = '\0';
    return o;
}

void log_error(const struct log_entry *e, const char *why)
{
    char path[256];

    log_escape(path, sizeof(path), e->path);
    fprintf(stderr, "error %s \"%s\": %s\n", e->client, path, why);
}

size_t log_line(char *out, size_t cap, const struct log_entry *e)
{
    char path[512];
    size_t n, plen;
    int m;

    plen = log_escape(path, sizeof(path), e->path);
    m = snprintf(out, cap, "%s [%02u/%s/%04u] \"", e->client, e->day,
                 month_abbr[e->month % 12], e->year);
    /* snprintf returns the untruncated length: a long client name overflowed out. */
    if (m < 0 || (size_t)m + plen + 16 > cap) {
        fprintf(stderr, "log_line: %zu-byte buffer too small\n", cap);
        return 0;
    }
    n = (size_t)m;
    memcpy(out + n, path, plen);
    n += plen;
    n += (size_t)snprintf(out + n, cap - n, "\" %d\n", e->status);
    if (log_verbosity > 1)
        printf("%s", out);
    return n;
}
