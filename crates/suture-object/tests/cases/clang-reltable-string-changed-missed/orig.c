/* clang turns a switch returning literals into a relative lookup table. */
const char *op_name(int op)
{
	switch (op) {
	case 0:
		return "add";
	case 1:
		return "mul";
	case 2:
		return "sub";
	case 3:
		return "div";
	case 4:
		return "mod";
	case 5:
		return "and";
	default:
		return "???";
	}
}
