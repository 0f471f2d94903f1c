/* Only for builds with -DENABLE_EXTRA (this project's Makefile never sets it). */
struct extra_state {
	int calls;
};
