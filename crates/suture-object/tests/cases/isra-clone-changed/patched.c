/* Request URI checks run before a static-file handler opens anything. */
#include <stddef.h>
#include <stdio.h>

struct request {
    int method;
    const char *uri;
    size_t uri_len;
    char headers[512];
    unsigned int flags;
};

static int uri_unsafe(const struct request *r)
{
    int dots = 0;

    for (size_t i = 0; i < r->uri_len; i++) {
        if (r->uri[i] == '.' && i + 1 < r->uri_len && r->uri[i + 1] == '.')
            dots++;
        /* Backslashes are path separators for the Windows build of the file backend. */
        if (r->uri[i] == '\0' || r->uri[i] == '\\')
            return -1;
    }
    return dots ? -2 : 0;
}

int handle_get(const struct request *r)
{
    if (uri_unsafe(r))
        return 400;
    printf("GET %.*s\n", (int)r->uri_len, r->uri);
    return 200;
}

int handle_put(const struct request *r)
{
    if (uri_unsafe(r))
        return 400;
    printf("PUT %.*s\n", (int)r->uri_len, r->uri);
    return 201;
}
