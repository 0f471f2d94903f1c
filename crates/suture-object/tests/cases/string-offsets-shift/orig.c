/* Config file loader: "key = value" lines. */
#include <stdio.h>
#include <string.h>

struct cfg {
    unsigned int port;
    unsigned int workers;
    char root[128];
};

int cfg_set(struct cfg *c, const char *key, const char *val)
{
    if (strcmp(key, "port") == 0)
        return sscanf(val, "%u", &c->port) == 1 ? 0 : -1;
    if (strcmp(key, "workers") == 0)
        return sscanf(val, "%u", &c->workers) == 1 ? 0 : -1;
    if (strcmp(key, "root") == 0) {
        snprintf(c->root, sizeof(c->root), "%s", val);
        return 0;
    }
    return -1;
}

void cfg_dump(const struct cfg *c, FILE *out)
{
    fprintf(out, "port = %u\n", c->port);
    fprintf(out, "workers = %u\n", c->workers);
    fprintf(out, "root = %s\n", c->root);
}
