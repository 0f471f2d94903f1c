/* A userspace copy of the kernel's x86 static_branch_unlikely(): a 5-byte NOP whose
 * (site, target, key) triple lives in __jump_table. */
struct static_key {
	int enabled;
};

struct static_key key_debug, key_trace;

#define static_branch(k) ({						\
	int __r = 0;							\
	asm goto("1: .byte 0x0f,0x1f,0x44,0x00,0x00\n\t"		\
		 ".pushsection __jump_table, \"aw\"\n\t"		\
		 ".balign 8\n\t"					\
		 ".long 1b - ., %l[l_yes] - .\n\t"			\
		 ".quad %c0 - .\n\t"					\
		 ".popsection"						\
		 : : "i"(k) : : l_yes);					\
	if (0) {							\
	l_yes:								\
		__r = 1;						\
	}								\
	__r;								\
})

extern void slow_path(void);

int handle(int x)
{
	if (static_branch(&key_trace))
		slow_path();
	return x + 1;
}
