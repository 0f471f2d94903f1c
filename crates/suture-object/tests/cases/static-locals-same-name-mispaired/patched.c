/* The fix adds counters for kinds 0 and 3; the existing ones must keep their running values. */
int events_note(int kind)
{
	if (kind == 0) {
		static int count;
		return ++count > 5 ? -1 : 0;
	}
	if (kind == 1) {
		static int count;
		return ++count;
	}
	if (kind == 2) {
		static int count;
		return count += 10;
	}
	if (kind == 3) {
		static int count;
		return count += 100;
	}
	return 0;
}
