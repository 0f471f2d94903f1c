/* The request protocol of the demo service (see proto.c). */
#ifndef DEMO_PROTO_H
#define DEMO_PROTO_H

#include <stddef.h>

/* One client connection. The echo buffer sits next to the connection's credentials, as
 * buffers and secrets sit next to each other in real servers. */
struct session {
    char echo[128];   /* the last ECHO payload */
    char user[64];    /* who is logged in on this connection */
    char api_key[64]; /* the upstream API key the service uses on the user's behalf */
};

void session_init(struct session *s, const char *api_key);

/* Handles one request line (without its newline); writes a reply ending in '\n'. */
int handle_request(struct session *s, const char *line, char *reply, size_t cap);

#endif
