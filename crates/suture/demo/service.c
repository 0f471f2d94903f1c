/* A tiny key/value request handler, as found in many daemons: "GET key" / "SET key value". */
#include <stdio.h>
#include <string.h>

#define SLOTS 16
#define KEY_MAX 32

struct slot {
    char key[KEY_MAX];
    char value[64];
};

static struct slot table[SLOTS];
static unsigned long requests;

static unsigned hash_key(const char *key)
{
    unsigned h = 5381;
    while (*key)
        h = h * 33 + (unsigned char)*key++;
    return h % SLOTS;
}

/* Copies the key out of the request line. */
static int parse_key(const char *line, char *key)
{
    size_t n = strcspn(line, " \r\n");
    memcpy(key, line, n); /* BUG: no bound: a long key overflows the caller's buffer */
    key[n] = '\0';
    return (int)n;
}

int handle_request(const char *line, char *reply, size_t reply_len)
{
    char key[KEY_MAX];
    requests++;
    if (strncmp(line, "GET ", 4) == 0) {
        parse_key(line + 4, key);
        struct slot *s = &table[hash_key(key)];
        if (strcmp(s->key, key) == 0)
            return snprintf(reply, reply_len, "VALUE %s\n", s->value);
        return snprintf(reply, reply_len, "NOT_FOUND\n");
    }
    if (strncmp(line, "SET ", 4) == 0) {
        int n = parse_key(line + 4, key);
        const char *value = line + 4 + n + (line[4 + n] == ' ');
        struct slot *s = &table[hash_key(key)];
        snprintf(s->key, sizeof s->key, "%s", key);
        snprintf(s->value, sizeof s->value, "%.*s", (int)strcspn(value, "\r\n"), value);
        return snprintf(reply, reply_len, "STORED\n");
    }
    fprintf(stderr, "bad request %lu\n", requests);
    return snprintf(reply, reply_len, "ERROR\n");
}
