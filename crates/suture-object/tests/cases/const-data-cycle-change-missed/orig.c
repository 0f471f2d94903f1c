/* Two read-only nodes pointing at each other; node a also points at the limit. */
struct node {
	const struct node *peer;
	const int *limit;
};

static const int max_len = 64;
static const struct node b;
static const struct node a = { &b, &max_len };
static const struct node b = { &a, 0 };

__attribute__((noinline)) const struct node *node_a(void)
{
	return &a;
}

__attribute__((noinline)) const struct node *node_b(void)
{
	return &b;
}
