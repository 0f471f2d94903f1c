/* Per-kind event counters: two zero-initialised statics with the same name in one function. */
int events_note(int kind)
{
	if (kind == 1) {
		static int count;
		return ++count;
	}
	if (kind == 2) {
		static int count;
		return count += 10;
	}
	return 0;
}
