/* A threaded interpreter: the handler table holds addresses of labels inside run(). */
int run(const unsigned char *code, int acc)
{
	static const void *const handlers[] = { &&op_add, &&op_mul, &&op_halt };

	goto *handlers[*code++];
op_add:
	acc += 4;
	goto *handlers[*code++];
op_mul:
	acc *= 5;
	goto *handlers[*code++];
op_halt:
	return acc;
}
