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
    worker_errors++;
    fprintf(stderr, "[%s] %s\n", worker_name, what);
}

unsigned int worker_error_count(void)
{
    return worker_errors;
}
