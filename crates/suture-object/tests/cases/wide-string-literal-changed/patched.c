#include <wchar.h>

const wchar_t *banner(int verbose)
{
	return verbose ? L"Access denied!" : L"";
}
