int request_limit;

int request_allowed(int n)
{
	return n < 100;
}
