/* Status-line replies of a small HTTP server. */
#include <stdio.h>

struct request {
    const char *proto;
    const char *path;
    int keepalive;
};

static int reply_emit(FILE *out, const char *proto, int code, const char *msg)
{
    int n = fprintf(out, "%s %d", proto, code);

    if (msg && *msg)
        n += fprintf(out, " %s", msg);
    n += fprintf(out, "\r\n");
    fflush(out);
    return n;
}

int reply_ok(FILE *out, const char *msg)
{
    return reply_emit(out, "HTTP/1.1", 200, msg);
}

int reply_not_found(FILE *out, const char *msg)
{
    return reply_emit(out, "HTTP/1.1", 404, msg);
}

int reply_error(FILE *out, const struct request *r, int code)
{
    /* r->proto is client-controlled: echoing it allowed response splitting. */
    (void)r;
    return reply_emit(out, "HTTP/1.1", code, "Error");
}
