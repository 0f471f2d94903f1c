/* Command dispatch statistics of a key-value server. */
#include <stdio.h>
#include <string.h>

struct kv_reply {
    int code;
    char msg[64];
};

void kv_report(const char *cmd, unsigned long n);

void cmd_get(struct kv_reply *r, const char *key)
{
    static unsigned long count;

    if (++count % 4096 == 0)
        kv_report("GET", count);
    r->code = 0;
    snprintf(r->msg, sizeof(r->msg), "OK %s", key);
}

void cmd_del(struct kv_reply *r, const char *key)
{
    static unsigned long count;

    if (++count % 4096 == 0)
        kv_report("DEL", count);
    r->code = 0;
    snprintf(r->msg, sizeof(r->msg), "DELETED %s", key);
}
