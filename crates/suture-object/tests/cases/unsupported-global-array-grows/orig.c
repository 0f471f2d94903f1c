/* Table of virtual hosts served by a static-file server. */
#include <string.h>

#define MAX_VHOSTS 16

struct vhost {
    char name[64];
    char root[128];
};

static struct vhost vhosts[MAX_VHOSTS];
static unsigned int nvhosts;

int vhost_add(const char *name, const char *root)
{
    if (nvhosts == MAX_VHOSTS)
        return -1;
    strncpy(vhosts[nvhosts].name, name, sizeof(vhosts[0].name) - 1);
    strncpy(vhosts[nvhosts].root, root, sizeof(vhosts[0].root) - 1);
    nvhosts++;
    return 0;
}

const char *vhost_root(const char *name)
{
    for (unsigned int i = 0; i < nvhosts; i++)
        if (strcmp(vhosts[i].name, name) == 0)
            return vhosts[i].root;
    return NULL;
}
