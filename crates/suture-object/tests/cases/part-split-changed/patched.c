/* Server options from argv, the environment and config lines ("key=value"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct opts {
    int verbose;
    int port;
    char root[256];
    char log[256];
};

static int opt_apply(struct opts *o, const char *kv)
{
    const char *eq;
    size_t klen;

    if (!kv || kv[0] == '#')
        return 0;
    eq = strchr(kv, '=');
    if (!eq)
        return -1;
    klen = (size_t)(eq - kv);
    /* strncmp with klen 0 matched every key: "=80" set the port. */
    if (klen == 0)
        return -1;
    if (strncmp(kv, "port", klen) == 0)
        o->port = atoi(eq + 1);
    else if (strncmp(kv, "root", klen) == 0)
        snprintf(o->root, sizeof(o->root), "%s", eq + 1);
    else if (strncmp(kv, "log", klen) == 0)
        snprintf(o->log, sizeof(o->log), "%s", eq + 1);
    else if (strncmp(kv, "verbose", klen) == 0)
        o->verbose = atoi(eq + 1);
    else
        return -1;
    return 1;
}

int opts_from_argv(struct opts *o, char **argv, int argc)
{
    int n = 0;

    for (int i = 0; i < argc; i++)
        n += opt_apply(o, argv[i]) > 0;
    return n;
}

int opts_from_env(struct opts *o)
{
    return opt_apply(o, getenv("SRV_OPTS"));
}

int opts_line(struct opts *o, const char *line)
{
    return opt_apply(o, line);
}
