/* A table suture does not know (like a kernel special section it has no layout for): each
 * entry holds the address of a place inside a function. */
#define MARK_SITE(v)							\
	asm volatile("1: nop\n\t"					\
		     ".pushsection __suture_unknown_sites, \"a\"\n\t"	\
		     ".balign 8\n\t"					\
		     ".quad 1b\n\t"					\
		     ".popsection" : "+r"(v))

int handle(int x)
{
	x = x * 3 + 7;
	MARK_SITE(x);
	return x + 2;
}
