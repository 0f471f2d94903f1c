/* The fix points the table at a checked reader. */
struct dev_ops {
	int (*read)(int n);
};

extern void register_dev(const struct dev_ops *ops);

static int dev_read(int n)
{
	return n;
}

static int dev_read_checked(int n)
{
	return n < 0 ? 0 : n;
}

static const struct dev_ops ops = {
	.read = dev_read_checked,
};

void dev_init(void)
{
	register_dev(&ops);
}
