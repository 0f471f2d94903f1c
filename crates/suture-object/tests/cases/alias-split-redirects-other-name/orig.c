/* bar is an alias of foo: one address, two names. */
int foo(int x)
{
	return x + 1;
}

int bar(int x) __attribute__((alias("foo")));
