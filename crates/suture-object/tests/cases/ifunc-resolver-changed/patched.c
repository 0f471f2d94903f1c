/* The fix disables the (buggy) fast path. */
extern int cpu_has_fast_path;

static int checksum_generic(int x)
{
	return x + 1;
}

static int checksum_fast(int x)
{
	return x + 2;
}

static void *checksum_resolve(void)
{
	return (void *)checksum_generic;
}

int checksum(int x) __attribute__((ifunc("checksum_resolve")));
