/* Routing table of a reverse proxy: a binary tree of path prefixes. */
#include <stdlib.h>
#include <string.h>

struct route {
    struct route *left, *right;
    char prefix[64];
    int backend;
};

struct route *route_root;

int route_insert(struct route *r)
{
    struct route **link = &route_root;

    while (*link) {
        int c = strcmp(r->prefix, (*link)->prefix);
        if (c == 0)
            return -1;
        link = c < 0 ? &(*link)->left : &(*link)->right;
    }
    r->left = r->right = NULL;
    *link = r;
    return 0;
}

int route_lookup(const char *path)
{
    for (struct route *r = route_root; r;) {
        int c = strncmp(path, r->prefix, strlen(r->prefix));
        if (c == 0)
            return r->backend;
        r = c < 0 ? r->left : r->right;
    }
    return -1;
}
