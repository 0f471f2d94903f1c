/* Like the kernel's __sched: functions placed in one explicit section. */
#define __sched __attribute__((__section__(".sched.text")))

__attribute__((noinline)) static void __sched do_schedule(int prio)
{
	asm volatile("" : : "r"(prio) : "memory");
}

void __sched schedule_prio(int prio)
{
	do_schedule(prio);
	do_schedule(prio + 2);
}
