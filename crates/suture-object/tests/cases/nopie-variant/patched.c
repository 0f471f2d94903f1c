/* Per-user disk quota checks of an upload service. */
#include <stdio.h>

struct quota {
    unsigned long used;
    unsigned long limit;
};

unsigned long quota_default_limit = 1UL << 30;
static unsigned long quota_denials;

typedef void (*quota_hook)(const char *user, unsigned long want);
void quota_set_hook(quota_hook h);

static void quota_note(const char *user, unsigned long want)
{
    quota_denials++;
    fprintf(stderr, "quota: %s denied %lu bytes\n", user, want);
}

void quota_init(struct quota *q)
{
    q->used = 0;
    q->limit = quota_default_limit;
    quota_set_hook(quota_note);
}

int quota_charge(struct quota *q, const char *user, unsigned long bytes)
{
    /* used + bytes wrapped around for huge Content-Length values. */
    if (bytes > q->limit || q->used > q->limit - bytes) {
        quota_note(user, bytes);
        return -1;
    }
    q->used += bytes;
    return 0;
}
