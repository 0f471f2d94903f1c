/* A userspace copy of the kernel's x86 WARN site: a ud2 whose (address, file, line, flags)
 * entry lives in __bug_table (struct bug_entry with relative pointers, 12 bytes). */
#define WARN_SITE(flags)						\
	asm volatile("1: ud2\n\t"					\
		     ".pushsection __bug_table, \"aw\"\n\t"		\
		     "2: .long 1b - ., %c0 - .\n\t"			\
		     ".word %c1, %c2\n\t"				\
		     ".org 2b + 12\n\t"					\
		     ".popsection"					\
		     : : "i"("file.c"), "i"(__LINE__), "i"(flags))

int check(int x)
{
	if (x < 0)
		WARN_SITE(0);
	return x * 2;
}
