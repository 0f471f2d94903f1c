/*
 * Request-line parser of a small embedded HTTP/1.x server.
 *
 *   request-line = method SP request-target SP HTTP-version CRLF
 */
#include <ctype.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#define URI_MAX 256
#define QUERY_MAX 256

enum http_method { M_GET, M_HEAD, M_POST, M_PUT, M_DELETE, M_OPTIONS, M_UNKNOWN };

struct http_request {
    enum http_method method;
    int version_major;
    int version_minor;
    char path[URI_MAX];
    char query[QUERY_MAX];
};

enum parse_error {
    PE_OK = 0,
    PE_METHOD = -1,
    PE_URI = -2,
    PE_URI_TOO_LONG = -3,
    PE_VERSION = -4,
    PE_EOL = -5,
};

static const struct {
    const char *name;
    size_t len;
    enum http_method m;
} methods[] = {
    { "GET", 3, M_GET },         { "HEAD", 4, M_HEAD },     { "POST", 4, M_POST },
    { "PUT", 3, M_PUT },         { "DELETE", 6, M_DELETE }, { "OPTIONS", 7, M_OPTIONS },
};

unsigned long parse_failures;

static enum http_method method_lookup(const char *s, size_t len)
{
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
        if (methods[i].len == len && memcmp(methods[i].name, s, len) == 0)
            return methods[i].m;
    return M_UNKNOWN;
}

static int hex_digit(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Percent-decode src[0..len) into dst (size cap, NUL-terminated). */
static int uri_decode(char *dst, size_t cap, const char *src, size_t len)
{
    size_t o = 0;

    for (size_t i = 0; i < len; i++) {
        int c = (unsigned char)src[i];

        if (c == '%') {
            int hi, lo;

            if (i + 2 >= len)
                return PE_URI;
            hi = hex_digit(src[i + 1]);
            lo = hex_digit(src[i + 2]);
            if (hi < 0 || lo < 0)
                return PE_URI;
            c = hi << 4 | lo;
            i += 2;
        }
        if (c == '\0')
            return PE_URI;
        if (o > cap)
            return PE_URI_TOO_LONG;
        dst[o++] = (char)c;
    }
    if (o >= cap)
        return PE_URI_TOO_LONG;
    dst[o] = '\0';
    return PE_OK;
}

static int parse_version(const char *p, size_t len, struct http_request *req)
{
    if (len != 8 || memcmp(p, "HTTP/", 5) != 0)
        return PE_VERSION;
    if (!isdigit((unsigned char)p[5]) || p[6] != '.' || !isdigit((unsigned char)p[7]))
        return PE_VERSION;
    req->version_major = p[5] - '0';
    req->version_minor = p[7] - '0';
    return req->version_major == 1 ? PE_OK : PE_VERSION;
}

int http_parse_request_line(const char *line, size_t len, struct http_request *req)
{
    const char *sp1, *sp2, *q, *end = line + len;
    int rc;

    if (len < 2 || line[len - 2] != '\r' || line[len - 1] != '\n') {
        rc = PE_EOL;
        goto fail;
    }
    end -= 2;
    sp1 = memchr(line, ' ', (size_t)(end - line));
    if (!sp1) {
        rc = PE_METHOD;
        goto fail;
    }
    req->method = method_lookup(line, (size_t)(sp1 - line));
    if (req->method == M_UNKNOWN) {
        rc = PE_METHOD;
        goto fail;
    }
    sp2 = memchr(sp1 + 1, ' ', (size_t)(end - sp1 - 1));
    if (!sp2 || sp2 == sp1 + 1 || sp1[1] != '/') {
        rc = PE_URI;
        goto fail;
    }
    q = memchr(sp1 + 1, '?', (size_t)(sp2 - sp1 - 1));
    rc = uri_decode(req->path, sizeof(req->path), sp1 + 1, (size_t)((q ? q : sp2) - sp1 - 1));
    if (rc == PE_OK && q)
        rc = uri_decode(req->query, sizeof(req->query), q + 1, (size_t)(sp2 - q - 1));
    else if (rc == PE_OK)
        req->query[0] = '\0';
    if (rc == PE_OK)
        rc = parse_version(sp2 + 1, (size_t)(end - sp2 - 1), req);
    if (rc == PE_OK)
        return PE_OK;
fail:
    parse_failures++;
    return rc;
}

const char *http_method_name(enum http_method m)
{
    return (size_t)m < sizeof(methods) / sizeof(methods[0]) ? methods[m].name : "UNKNOWN";
}

int http_request_describe(const struct http_request *req, char *buf, size_t cap)
{
    return snprintf(buf, cap, "%s %s%s%s HTTP/%d.%d", http_method_name(req->method), req->path,
                    req->query[0] ? "?" : "", req->query, req->version_major,
                    req->version_minor);
}
