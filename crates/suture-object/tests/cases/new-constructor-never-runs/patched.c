int request_limit;

/* The fix makes the limit configurable and initialises it at start-up. */
__attribute__((constructor)) static void request_limit_init(void)
{
	request_limit = 100;
}

int request_allowed(int n)
{
	return n < request_limit;
}
