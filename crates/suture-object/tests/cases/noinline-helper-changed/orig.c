/* Session id hashing for a session table. */
#include <stddef.h>
#include <stdint.h>

#define SESSION_BUCKETS 1024

struct session {
    struct session *next;
    char id[33];
    unsigned int user;
};

struct session *session_table[SESSION_BUCKETS];

__attribute__((noinline)) static uint32_t session_hash(const char *id)
{
    uint32_t h = 5381;

    while (*id)
        h = h * 33 + (unsigned char)*id++;
    return h;
}

struct session *session_find(const char *id)
{
    struct session *s = session_table[session_hash(id) % SESSION_BUCKETS];

    while (s) {
        const char *a = s->id, *b = id;
        while (*a && *a == *b)
            a++, b++;
        if (*a == *b)
            return s;
        s = s->next;
    }
    return NULL;
}

void session_insert(struct session *s)
{
    uint32_t b = session_hash(s->id) % SESSION_BUCKETS;

    s->next = session_table[b];
    session_table[b] = s;
}
