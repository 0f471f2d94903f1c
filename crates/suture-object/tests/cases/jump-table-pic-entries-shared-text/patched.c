/* A dense switch (PIC jump table) followed by other functions in the same .text. */
int vm_op(int k, int x)
{
	switch (k) {
	case 0:
		return x + 11;
	case 1:
		return x * 3;
	case 2:
		return x - 7;
	case 3:
		return x ^ 0x55;
	case 4:
		return x << 2;
	case 5:
		return x / 6;
	case 6:
		return x | 0x100;
	case 7:
		return ~x;
	case 8:
		return x + 1000;
	case 9:
		return x * 9;
	case 10:
		return x - 99;
	case 11:
		return x ^ 0x1234;
	case 12:
		return x >> 3;
	case 13:
		return x * 77;
	case 14:
		return x & 0xff;
	case 15:
		return x + 5;
	}
	return -1;
}

int vm_after(int x)
{
	return x * 7 + 3;
}

int vm_after2(int x)
{
	return x * 9 + 3;
}
