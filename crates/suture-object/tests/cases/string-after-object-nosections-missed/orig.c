#include <stdio.h>

static const int limits[2] = { 10, 20 };
static const int weights[2] = { 30, 40 };

int limit(int i)
{
	return limits[i & 1] + weights[i & 1];
}

void purge(void)
{
	puts("rm -rf /var/cache/app");
}
