/* A target for suture-process's ptrace tests.
 *
 *   target threads N   main thread + N workers that count (and sleep a little)
 *   target spawner     threads are created and exit continuously, some by other threads
 *   target flood N     N workers, and a thread that sigqueues SIGRTMIN+4 to the process
 *                      every 50 us, counting what it sent (real-time signals are never merged)
 *   target orphan N    N workers; the commands are read by another thread and the main thread
 *                      exits (the leader becomes a zombie while the process lives on)
 *   target exit        exits at once with status 3 (a zombie until the parent waits)
 *
 * The main thread prints "progress <count>" every 20 ms and obeys lines on stdin:
 *   status        -> "status usr1=.. usr2=.. trap=.. rt=.. rtval=.. rtcode=.. rtpid=.. magic=.. value=.."
 *   call <hex>    -> calls the function at that address, prints "called <result>"
 *   quit          -> prints "bye", exits with status 42
 *   quiet         -> (flood) stops sending, prints "quiet sent=N"
 *   flood         -> prints "flood sent=N received=M"
 * It never forks (no SIGCHLD) and records every SIGTRAP it receives.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t n_usr1, n_usr2, n_trap, n_rt;
static volatile int rt_value, rt_code, rt_pid;
volatile unsigned long magic = 0x1122334455667788UL;

static atomic_ulong counters[256];
static atomic_ulong main_ticks;
static atomic_int started;
static atomic_int live;
static atomic_ulong spawned;
static atomic_ulong flood_sent, flood_received;
static atomic_int flood_stop, flood_stopped;

__attribute__((noinline, used)) int value_fn(void) { return 1; }
int (*volatile value_ptr)(void) = value_fn;

static void on_usr1(int s) { (void)s; n_usr1++; }
static void on_usr2(int s) { (void)s; n_usr2++; }
static void on_trap(int s) { (void)s; n_trap++; }
static void on_rt(int s, siginfo_t *si, void *uc)
{
    (void)s; (void)uc;
    n_rt++;
    rt_value = si->si_value.sival_int;
    rt_code = si->si_code;
    rt_pid = si->si_pid;
}

static void on_flood(int s)
{
    (void)s;
    atomic_fetch_add(&flood_received, 1);
}

static void handle(int sig, void (*fn)(int))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fn;
    sa.sa_flags = SA_RESTART;
    sigaction(sig, &sa, 0);
}

static void spin(int n)
{
    for (volatile int j = 0; j < n; j++)
        ;
}

static void *worker(void *arg)
{
    long i = (long)arg;
    atomic_fetch_add(&started, 1);
    for (unsigned long k = 0;; k++) {
        atomic_fetch_add(&counters[i % 256], 1);
        spin(3000);
        if (k % 4 == 0) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, 0);
        }
    }
    return 0;
}

static void *ephemeral(void *arg)
{
    long depth = (long)arg;
    spin(20000);
    if (depth < 2) {
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        atomic_fetch_add(&live, 1);
        if (pthread_create(&t, &a, ephemeral, (void *)(depth + 1)) != 0)
            atomic_fetch_sub(&live, 1);
    }
    atomic_fetch_add(&spawned, 1);
    atomic_fetch_sub(&live, 1);
    return 0;
}

static void *spawner(void *arg)
{
    (void)arg;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    atomic_fetch_add(&started, 1);
    for (;;) {
        if (atomic_load(&live) >= 24) {
            struct timespec ts = {0, 100000};
            nanosleep(&ts, 0);
            continue;
        }
        pthread_t t;
        atomic_fetch_add(&live, 1);
        if (pthread_create(&t, &a, ephemeral, (void *)0) != 0)
            atomic_fetch_sub(&live, 1);
    }
    return 0;
}

static void *flooder(void *arg)
{
    (void)arg;
    union sigval v = {0};
    atomic_fetch_add(&started, 1);
    while (!atomic_load(&flood_stop)) {
        if (sigqueue(getpid(), SIGRTMIN + 4, v) == 0)
            atomic_fetch_add(&flood_sent, 1);
        struct timespec ts = {0, 50000};
        nanosleep(&ts, 0);
    }
    atomic_store(&flood_stopped, 1);
    return 0;
}

static unsigned long progress(void)
{
    unsigned long sum = atomic_load(&main_ticks) + atomic_load(&spawned);
    for (int i = 0; i < 256; i++)
        sum += atomic_load(&counters[i]);
    return sum;
}

static void command(char *line)
{
    if (strcmp(line, "status") == 0) {
        printf("status usr1=%d usr2=%d trap=%d rt=%d rtval=%d rtcode=%d rtpid=%d magic=%lx value=%d\n",
               (int)n_usr1, (int)n_usr2, (int)n_trap, (int)n_rt, rt_value, rt_code, rt_pid, magic,
               value_ptr());
    } else if (strncmp(line, "call ", 5) == 0) {
        long (*f)(void) = (long (*)(void))strtoul(line + 5, 0, 16);
        printf("called %ld\n", f());
    } else if (strcmp(line, "quiet") == 0) {
        atomic_store(&flood_stop, 1);
        while (!atomic_load(&flood_stopped))
            usleep(1000);
        printf("quiet sent=%lu\n", atomic_load(&flood_sent));
    } else if (strcmp(line, "flood") == 0) {
        printf("flood sent=%lu received=%lu\n", atomic_load(&flood_sent), atomic_load(&flood_received));
    } else if (strcmp(line, "quit") == 0) {
        printf("bye\n");
        fflush(stdout);
        exit(42);
    } else {
        printf("unknown command %s\n", line);
    }
    fflush(stdout);
}

static void *command_loop(void *arg)
{
    (void)arg;
    char buf[4096];
    size_t have = 0;
    for (;;) {
        struct pollfd p = {0, POLLIN, 0};
        int r = poll(&p, 1, 20);
        atomic_fetch_add(&main_ticks, 1);
        if (r > 0) {
            ssize_t n = read(0, buf + have, sizeof buf - 1 - have);
            if (n <= 0)
                exit(43);
            have += (size_t)n;
            char *nl;
            while ((nl = memchr(buf, '\n', have)) != 0) {
                *nl = 0;
                command(buf);
                size_t used = (size_t)(nl + 1 - buf);
                memmove(buf, nl + 1, have - used);
                have -= used;
            }
        } else {
            printf("progress %lu\n", progress());
        }
    }
    return 0;
}

static int start_workers(int n)
{
    for (long i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, 0, worker, (void *)i) != 0) {
            perror("pthread_create");
            exit(2);
        }
    }
    return n;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, 0, _IOLBF, 0);
    if (argc < 2)
        return 2;
    if (strcmp(argv[1], "exit") == 0)
        return 3;

    handle(SIGUSR1, on_usr1);
    handle(SIGUSR2, on_usr2);
    handle(SIGTRAP, on_trap);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_rt;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGRTMIN + 3, &sa, 0);

    struct sigaction fa;
    memset(&fa, 0, sizeof fa);
    fa.sa_handler = on_flood;
    fa.sa_flags = SA_RESTART;
    sigaction(SIGRTMIN + 4, &fa, 0);

    int want = 0, orphan = 0;
    if (strcmp(argv[1], "threads") == 0 && argc == 3) {
        want = start_workers(atoi(argv[2]));
    } else if (strcmp(argv[1], "flood") == 0 && argc == 3) {
        want = start_workers(atoi(argv[2])) + 1;
        pthread_t t;
        pthread_create(&t, 0, flooder, 0);
    } else if (strcmp(argv[1], "orphan") == 0 && argc == 3) {
        want = start_workers(atoi(argv[2]));
        orphan = 1;
    } else if (strcmp(argv[1], "spawner") == 0) {
        want = 1;
        pthread_t t;
        pthread_create(&t, 0, spawner, 0);
    } else {
        return 2;
    }
    while (atomic_load(&started) < want)
        usleep(1000);

    printf("pid %d\n", getpid());
    printf("rtsig %d\n", SIGRTMIN + 3);
    printf("magic %p\n", (void *)&magic);
    printf("value_fn %p\n", (void *)value_fn);
    if (orphan) {
        pthread_t t;
        pthread_create(&t, 0, command_loop, 0);
        printf("ready\n");
        pthread_exit(0);
    }
    printf("ready\n");
    command_loop(0);
    return 0;
}
