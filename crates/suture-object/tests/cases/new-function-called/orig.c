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

int header_add(struct header_set *hs, const char *name, const char *value)
{
    struct header *h = header_find(hs, name);

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
    struct header *h = header_find(hs, name);
    size_t len;

    if (!h)
        return header_add(hs, name, more);
    len = strlen(h->value);
    snprintf(h->value + len, sizeof(h->value) - len, ", %s", more);
    return 0;
}
