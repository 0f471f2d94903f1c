/* CPU dispatch through an IFUNC: the resolver ran once, at relocation time. */
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
	return cpu_has_fast_path ? (void *)checksum_fast : (void *)checksum_generic;
}

int checksum(int x) __attribute__((ifunc("checksum_resolve")));
