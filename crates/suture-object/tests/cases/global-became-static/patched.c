/* Request accounting of a small HTTP server. */
struct stats {
    unsigned long requests;
    unsigned long bytes;
};

static struct stats totals;

/* Only used here: made static by the fix, which also caps oversized lengths. */
__attribute__((noinline)) static unsigned long account(struct stats *s, unsigned long len)
{
    if (len > (1ul << 30))
        len = 1ul << 30;
    s->requests++;
    s->bytes += len;
    return s->bytes;
}

unsigned long on_request(unsigned long len)
{
    return account(&totals, len);
}
