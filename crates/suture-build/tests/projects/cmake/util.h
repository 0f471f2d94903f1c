#ifndef UTIL_H
#define UTIL_H

/* A structure the running program holds in memory. */
struct counter {
	int hits;
	int limit;
};

/* Inlined into its callers: a change here changes every unit that uses it. */
static inline int pad(int n)
{
	return n;
}

int clamp_len(int n);
int version(void);
int answer(void);
struct counter *counter(void);

#endif
