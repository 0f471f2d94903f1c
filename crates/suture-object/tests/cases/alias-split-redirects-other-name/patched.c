/* The fix gives bar its own body; foo is untouched. */
int foo(int x)
{
	return x + 1;
}

int bar(int x)
{
	return x > 0 ? x - 1 : 0;
}
