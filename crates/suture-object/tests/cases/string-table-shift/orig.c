/* HTTP status line builder. */
#include <stdio.h>

static const char *const reason_2xx[] = { "OK", "Created", "Accepted", "Non-Authoritative Information", "No Content" };
static const char *const reason_4xx[] = { "Bad Request", "Unauthorized", "Payment Required", "Forbidden", "Not Found" };

const char *status_reason(int code)
{
    if (code >= 200 && code < 205)
        return reason_2xx[code - 200];
    if (code >= 400 && code < 405)
        return reason_4xx[code - 400];
    return "Unknown";
}

int status_line(char *buf, size_t n, int code)
{
    return snprintf(buf, n, "HTTP/1.1 %d %s\r\n", code, status_reason(code));
}
