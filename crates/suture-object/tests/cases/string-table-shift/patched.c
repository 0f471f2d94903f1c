/* HTTP status line builder. */
#include <stdio.h>

static const char *const reason_2xx[] = { "OK", "Created", "Accepted", "Non-Authoritative Information", "No Content" };
static const char *const reason_4xx[] = { "Bad Request", "Unauthorized", "Payment Required", "Forbidden", "Not Found" };

static const char *const reason_5xx[] = { "Internal Server Error", "Not Implemented", "Bad Gateway", "Service Unavailable" };

const char *status_reason(int code)
{
    if (code >= 200 && code < 205)
        return reason_2xx[code - 200];
    if (code >= 400 && code < 405)
        return reason_4xx[code - 400];
    /* 5xx replies went out as "Unknown". */
    if (code >= 500 && code < 504)
        return reason_5xx[code - 500];
    return "Unknown";
}

int status_line(char *buf, size_t n, int code)
{
    return snprintf(buf, n, "HTTP/1.1 %d %s\r\n", code, status_reason(code));
}
