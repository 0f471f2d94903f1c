#include "util.h"
#ifdef ENABLE_EXTRA
#include "extra.h"
#endif

static int max_len = 8;
static struct counter the_counter = { 0, 100 };

int clamp_len(int n)
{
	the_counter.hits++;
	return pad(n > max_len ? max_len : n);
}

struct counter *counter(void)
{
	return &the_counter;
}

#ifdef ENABLE_EXTRA
int extra(int x)
{
	return x * 3;
}
#endif
