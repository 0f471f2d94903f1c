/* Threads that spend their time inside the vDSO: the main thread calls clock_gettime in a
 * loop inside spin_clock(), a second thread gettimeofday inside spin_gtod(). A stop almost
 * always finds them in the vDSO, with spin_clock/spin_gtod one frame below.
 * not_on_stack() is never running. Prints "ready" once both loops run. */
#include <pthread.h>
#include <stdio.h>
#include <sys/time.h>
#include <time.h>

static volatile int started;

__attribute__((noinline)) void not_on_stack(void)
{
	__asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void spin_clock(void)
{
	struct timespec ts;
	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &ts);
		__asm__ volatile("" : : "r"(&ts) : "memory");
	}
}

__attribute__((noinline)) void spin_gtod(void)
{
	struct timeval tv;
	started = 1;
	for (;;) {
		gettimeofday(&tv, NULL);
		__asm__ volatile("" : : "r"(&tv) : "memory");
	}
}

static void *gtod_thread(void *arg)
{
	(void)arg;
	spin_gtod();
	return NULL;
}

int main(void)
{
	pthread_t t;
	pthread_create(&t, NULL, gtod_thread, NULL);
	while (!started)
		;
	printf("ready\n");
	fflush(stdout);
	spin_clock();
	not_on_stack();
	return 0;
}
