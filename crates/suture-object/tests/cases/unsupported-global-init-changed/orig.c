/* Accept-loop limits of a chat server; the limits can be changed at runtime by the admin console. */
#include <stdio.h>

unsigned int max_clients = 64;
unsigned int clients;

int client_admit(int fd)
{
    if (clients >= max_clients) {
        fprintf(stderr, "refusing fd %d: %u clients\n", fd, clients);
        return -1;
    }
    clients++;
    return 0;
}

void client_gone(void)
{
    if (clients)
        clients--;
}
