/* Chunked transfer-encoding reader: error paths report to the connection log. */
#include <stdio.h>
#include <stdlib.h>

struct conn {
    int fd;
    FILE *log;
    unsigned long body_left;
};

long chunk_size_parse(struct conn *c, const char *line)
{
    char *end;
    long n = strtol(line, &end, 16);

    if (end == line || n < 0) {
        fprintf(c->log, "fd %d: malformed chunk size received\n", c->fd);
        return -1;
    }
    return n;
}

int chunk_trailer_check(struct conn *c, const char *line)
{
    if (line[0] != '\r' || line[1] != '\n') {
        fprintf(c->log, "fd %d: missing CRLF after chunk\n", c->fd);
        return -1;
    }
    return 0;
}
