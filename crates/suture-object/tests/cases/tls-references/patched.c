/* Per-thread scratch buffers and error state of a worker pool. */
#include <stdio.h>
#include <string.h>

__thread char worker_name[16];
static __thread unsigned int worker_errors;
extern __thread int worker_id;

void worker_set_name(const char *name)
{
    strncpy(worker_name, name, sizeof(worker_name) - 1);
}

void worker_fail(const char *what)
{
    /* Unnamed workers printed an empty tag: fall back to the numeric id. */
    if (worker_name[0] == '\0')
        snprintf(worker_name, sizeof(worker_name), "worker-%d", worker_id);
    worker_errors++;
    fprintf(stderr, "[%s] %s (%u errors)\n", worker_name, what, worker_errors);
}

unsigned int worker_error_count(void)
{
    return worker_errors;
}
