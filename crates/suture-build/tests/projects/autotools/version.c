#include "util.h"

int version(void)
{
	return 1;
}
