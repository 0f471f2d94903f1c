/* Response header table of a small HTTP server. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define MAX_HEADERS 24

struct header {
    char name[32];
    char value[160];
};

struct header_set {
    unsigned int count;
    struct header h[MAX_HEADERS];
};

struct header *header_find(struct header_set *hs, const char *name)
{
    for (unsigned int i = 0; i < hs->count; i++)
        if (strcasecmp(hs->h[i].name, name) == 0)
            return &hs->h[i];
    return NULL;
}

/* Reject CR/LF so a value cannot inject another header (response splitting). */
int header_value_unsafe(const char *name, const char *value)
{
    size_t bad = strcspn(value, "\r\n");

    if (value[bad] == '\0')
        return 0;
    fprintf(stderr, "header %.*s: control character at offset %zu, dropped\n",
            (int)strnlen(name, 31), name, bad);
    return 1;
}

int header_add(struct header_set *hs, const char *name, const char *value)
{
    struct header *h;

    if (header_value_unsafe(name, value))
        return -1;
    h = header_find(hs, name);
    if (!h) {
        if (hs->count == MAX_HEADERS)
            return -1;
        h = &hs->h[hs->count++];
        snprintf(h->name, sizeof(h->name), "%s", name);
    }
    snprintf(h->value, sizeof(h->value), "%s", value);
    return 0;
}

int header_append(struct header_set *hs, const char *name, const char *more)
{
    struct header *h;
    size_t len;

    if (header_value_unsafe(name, more))
        return -1;
    h = header_find(hs, name);
    if (!h)
        return header_add(hs, name, more);
    len = strlen(h->value);
    snprintf(h->value + len, sizeof(h->value) - len, ", %s", more);
    return 0;
}
