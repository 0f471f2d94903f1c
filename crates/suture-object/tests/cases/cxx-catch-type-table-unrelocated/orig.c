// Compiled as C++ (cflags -x c++).
#include <stdexcept>

extern void parse_header(int len);

int guarded_parse(int len)
{
	try {
		parse_header(len);
	} catch (const std::runtime_error &e) {
		return -1;
	}
	return len + 1;
}
