/* Two rate-limit states declared by one macro in one function, as in Linux's
 * fs/ext4/mballoc.c: both are named `_rs` and have the same user and contents. */
struct ratelimit_state {
    int interval, burst, printed, missed;
    unsigned long begin;
};
extern int ___ratelimit(struct ratelimit_state *rs, const char *func);
extern int printf(const char *fmt, ...);

#define warn_ratelimited(fmt, ...)                                            \
    do {                                                                      \
        static struct ratelimit_state _rs = {5 * 250, 10, 0, 0, 0};           \
        if (___ratelimit(&_rs, __func__))                                     \
            printf(fmt, ##__VA_ARGS__);                                       \
    } while (0)

int mb_free_blocks(int block, int count, int max)
{
    if (block < 0) {
        warn_ratelimited("bad block %d\n", block);
        return -1;
    }
    if (block + count > max) {
        warn_ratelimited("range %d+%d past %d\n", block, count, max);
        return -2;
    }
    return count;
}

int mb_other(int n)
{
    static int calls;
    return n + ++calls;
}
