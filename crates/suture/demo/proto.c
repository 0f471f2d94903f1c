/* The demo service's request handling. One request per line:
 *
 *   SET <key> <value>        store a value           -> "STORED"
 *   GET <key>                read it back            -> "VALUE <value>" or "NOT_FOUND"
 *   ECHO <length> <payload>  a keep-alive heartbeat: the server stores the payload and sends
 *                            <length> bytes of it back, hex-encoded -> "ECHO <hex>"
 *
 * ECHO trusts the length the client claims, like the TLS heartbeat bug known as Heartbleed:
 * claim more than you send and the reply carries whatever sits after the payload in the
 * session, including its API key. fix.diff is the fix. */
#include "proto.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 64
#define MAX_ECHO 255 /* the length field of a heartbeat is one byte */

struct slot {
    char key[32];
    char value[64];
};

static struct slot table[SLOTS];
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long requests;

void session_init(struct session *s, const char *api_key)
{
    memset(s, 0, sizeof *s);
    snprintf(s->user, sizeof s->user, "guest");
    snprintf(s->api_key, sizeof s->api_key, "%s", api_key);
}

static unsigned hash_key(const char *key)
{
    unsigned h = 5381;
    while (*key)
        h = h * 33 + (unsigned char)*key++;
    return h % SLOTS;
}

/* The slot holding `key`, or the empty slot where it goes (NULL when the table is full).
 * Called with table_lock held. */
static struct slot *find_slot(const char *key)
{
    unsigned h = hash_key(key);
    for (unsigned i = 0; i < SLOTS; i++) {
        struct slot *s = &table[(h + i) % SLOTS];
        if (!s->key[0] || strcmp(s->key, key) == 0)
            return s;
    }
    return NULL;
}

static int handle_set(struct session *session, const char *args, size_t n, char *reply,
                      size_t cap)
{
    (void)session;
    (void)n;
    size_t klen = strcspn(args, " ");
    if (klen == 0 || klen >= sizeof table[0].key || args[klen] != ' ')
        return snprintf(reply, cap, "ERROR bad key\n");
    const char *value = args + klen + 1;
    char key[32];
    memcpy(key, args, klen);
    key[klen] = '\0';
    pthread_mutex_lock(&table_lock);
    struct slot *s = find_slot(key);
    if (s) {
        snprintf(s->key, sizeof s->key, "%s", key);
        snprintf(s->value, sizeof s->value, "%s", value);
    }
    pthread_mutex_unlock(&table_lock);
    return snprintf(reply, cap, s ? "STORED\n" : "ERROR table full\n");
}

static int handle_get(struct session *session, const char *key, size_t n, char *reply,
                      size_t cap)
{
    (void)session;
    (void)n;
    int len;
    pthread_mutex_lock(&table_lock);
    struct slot *s = find_slot(key);
    if (s && s->key[0])
        len = snprintf(reply, cap, "VALUE %s\n", s->value);
    else
        len = snprintf(reply, cap, "NOT_FOUND\n");
    pthread_mutex_unlock(&table_lock);
    return len;
}

static int handle_echo(struct session *s, const char *args, size_t n, char *reply,
                       size_t cap)
{
    char *end;
    unsigned long claimed = strtoul(args, &end, 10);
    if (end == args || *end != ' ' || claimed > MAX_ECHO)
        return snprintf(reply, cap, "ERROR bad length\n");
    const char *payload = end + 1;
    size_t len = n - (size_t)(payload - args);
    if (len > sizeof s->echo)
        return snprintf(reply, cap, "ERROR payload too long\n");
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)payload[i] < ' ')
            return snprintf(reply, cap, "ERROR payload must be text\n");
        s->echo[i] = payload[i];
    }
    if (cap < 2 * claimed + 7)
        return snprintf(reply, cap, "ERROR reply too long\n");
    /* Send the heartbeat back: as many bytes as the client said it sent. */
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s->echo;
    size_t out = (size_t)snprintf(reply, cap, "ECHO ");
    for (unsigned long i = 0; i < claimed; i++) {
        reply[out++] = hex[p[i] >> 4];
        reply[out++] = hex[p[i] & 15];
    }
    reply[out++] = '\n';
    reply[out] = '\0';
    return (int)out;
}

/* The commands, dispatched by name; each handler gets its arguments and their length. */
static const struct command {
    const char *name;
    int (*handler)(struct session *s, const char *args, size_t n, char *reply, size_t cap);
} commands[] = {
    {"SET", handle_set},
    {"GET", handle_get},
    {"ECHO", handle_echo},
};

int handle_request(struct session *s, const char *line, char *reply, size_t cap)
{
    __atomic_fetch_add(&requests, 1, __ATOMIC_RELAXED);
    size_t n = strlen(line);
    size_t name = strcspn(line, " ");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (name < n && strlen(commands[i].name) == name &&
            memcmp(commands[i].name, line, name) == 0)
            return commands[i].handler(s, line + name + 1, n - name - 1, reply, cap);
    }
    return snprintf(reply, cap, "ERROR unknown command\n");
}
