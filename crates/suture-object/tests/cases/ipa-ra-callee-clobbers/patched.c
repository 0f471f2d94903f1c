/* Volume levels of an audio mixing service. */
#include <stdio.h>

#define LEVEL_MAX 100

__attribute__((noinline)) static int level_clamp(int v)
{
    if (v < 0 || v > LEVEL_MAX) {
        /* Out-of-range levels come from a buggy client: say which. */
        fprintf(stderr, "mixer: level %d out of range\n", v);
        return v < 0 ? 0 : LEVEL_MAX;
    }
    return v;
}

int level_sum(const int *levels, int n)
{
    int sum = 0;

    for (int i = 0; i < n; i++)
        sum += level_clamp(levels[i]);
    return sum;
}

void level_apply(int *dst, const int *src, int n, int gain)
{
    for (int i = 0; i < n; i++)
        dst[i] = level_clamp(src[i] * gain / 16);
}
