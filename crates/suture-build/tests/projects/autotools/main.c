#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "greet.h"
#include "util.h"

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 1000000;
	for (int i = 0; i < n; i++) {
		printf("limit=%d scale=%d answer=%d v=%d\n", clamp_len(i % 4 + 9), scale(10),
		       answer(), version());
		fflush(stdout);
		usleep(20000);
	}
	return 0;
}
