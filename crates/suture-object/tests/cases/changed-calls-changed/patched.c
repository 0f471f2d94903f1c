/* Cookie header parsing of a session middleware. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decode src[0..n) into dst (NUL-terminated, at most cap-1 bytes). */
size_t cookie_unescape(char *dst, size_t cap, const char *src, size_t n)
{
    size_t o = 0;

    for (size_t i = 0; i < n && o + 1 < cap; i++) {
        /* "%41" at the very end of the value was copied literally (off by one). */
        if (src[i] == '%' && i + 2 <= n - 1) {
            int hi = hexval(src[i + 1]), lo = hexval(src[i + 2]);
            if (hi >= 0 && lo >= 0) {
                dst[o++] = (char)(hi << 4 | lo);
                i += 2;
                continue;
            }
        }
        dst[o++] = src[i] == '+' ? ' ' : src[i];
    }
    dst[o] = '\0';
    return o;
}

int cookie_get(const char *header, const char *name, char *out, size_t cap)
{
    size_t nlen = strlen(name);
    const char *p = header;

    while ((p = strstr(p, name)) != NULL) {
        if ((p == header || p[-1] == ' ' || p[-1] == ';') && p[nlen] == '=') {
            const char *v = p + nlen + 1;
            const char *end = strchr(v, ';');
            /* An empty value must not match: "sid=;" logged users in with an empty session id. */
            if (v == end || *v == '\0')
                return -1;
            cookie_unescape(out, cap, v, end ? (size_t)(end - v) : strlen(v));
            return 0;
        }
        p += nlen;
    }
    return -1;
}

int cookie_get_int(const char *header, const char *name, long *val)
{
    char buf[24], *end;

    if (cookie_get(header, name, buf, sizeof(buf)) < 0)
        return -1;
    *val = strtol(buf, &end, 10);
    return *end == '\0' ? 0 : -1;
}
