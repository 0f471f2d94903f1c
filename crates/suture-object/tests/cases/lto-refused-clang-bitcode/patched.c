/* Path normalisation for a static-file handler. */
#include <string.h>

size_t path_collapse_slashes(char *p)
{
    char *w = p;

    for (char *r = p; *r; r++) {
        if (*r == '/' && w > p && w[-1] == '/')
            continue;
        *w++ = *r;
    }
    *w = '\0';
    return (size_t)(w - p);
}

int path_is_absolute(const char *p)
{
    /* "//host/share" is a network path on the Windows build, not an absolute local one. */
    return p[0] == '/' && p[1] != '/';
}
