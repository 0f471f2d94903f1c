/* Audit trail of an admin API: every privileged action is written to the audit log. */
#include <stdio.h>
#include <time.h>

FILE *audit_log;

static void audit(const char *facility, const char *user, const char *action, int ok)
{
    char stamp[32];
    time_t now = time(NULL);
    struct tm tm;

    if (!audit_log)
        return;
    gmtime_r(&now, &tm);
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
    /* user comes from the request: quote it so a space cannot forge a "result=" field. */
    fprintf(audit_log, "%s %s user=\"%s\" action=%s result=%s\n", stamp, facility, user,
            action, ok ? "ok" : "denied");
    fflush(audit_log);
}

int admin_add_user(const char *who, const char *name)
{
    audit("admin", who, "add-user", name[0] != '\0');
    return name[0] != '\0';
}

int admin_del_user(const char *who, const char *name)
{
    audit("admin", who, "del-user", 1);
    return name != NULL;
}

int admin_reload(const char *who)
{
    audit("admin", who, "reload", 1);
    return 0;
}
