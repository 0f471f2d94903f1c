/* Command-line handling of a small file server. */
#include <stdio.h>
#include <stdlib.h>

struct srv_args {
    int port;
    int verbose;
    const char *root;
};

int parse_port(const char *s)
{
    int v = 0;

    while (*s >= '0' && *s <= '9')
        v = v * 10 + (*s++ - '0');
    return v;
}

int log_rare(const char *what)
{
    return fprintf(stderr, "note: %s\n", what);
}

int args_parse(struct srv_args *a, int argc, char **argv)
{
    a->port = 8080;
    a->verbose = 0;
    a->root = ".";
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] != '-')
            return -1;
        switch (argv[i][1]) {
        case 'p':
            a->port = parse_port(argv[++i]);
            break;
        case 'r':
            a->root = argv[++i];
            break;
        case 'v':
            a->verbose++;
            break;
        default:
            log_rare("unknown option ignored");
        }
    }
    return 0;
}
