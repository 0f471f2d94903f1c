/* Periodic maintenance timers of a server's event loop. */
#include <stdio.h>

typedef void (*timer_fn)(void *arg);

struct server_state {
    unsigned long ticks;
    int log_fd;
    unsigned int children;
};

struct server_state server;

int timer_add(timer_fn fn, void *arg, unsigned long period_ms);

static void flush_logs(void *arg)
{
    struct server_state *s = arg;

    fprintf(stderr, "flush logs (fd %d) at tick %lu\n", s->log_fd, s->ticks);
}

void reap_children(void *arg)
{
    struct server_state *s = arg;

    if (s->children)
        s->children--;
}

int server_arm_timers(void)
{
    /* Zombies piled up under fork-heavy load: reap every 500 ms, and log which timer failed. */
    if (timer_add(flush_logs, &server, 1000) < 0) {
        fprintf(stderr, "cannot arm the log flush timer\n");
        return -1;
    }
    if (timer_add(reap_children, &server, 500) < 0) {
        fprintf(stderr, "cannot arm the reaper timer\n");
        return -1;
    }
    return 0;
}
