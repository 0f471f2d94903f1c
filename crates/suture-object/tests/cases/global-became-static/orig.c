/* Request accounting of a small HTTP server. */
struct stats {
    unsigned long requests;
    unsigned long bytes;
};

static struct stats totals;

__attribute__((noinline)) unsigned long account(struct stats *s, unsigned long len)
{
    s->requests++;
    s->bytes += len;
    return s->bytes;
}

unsigned long on_request(unsigned long len)
{
    return account(&totals, len);
}
