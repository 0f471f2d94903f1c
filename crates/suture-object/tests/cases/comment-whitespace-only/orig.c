/* base64 encoder used for Basic auth headers */
#include <stddef.h>

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t base64_len(size_t n) { return (n + 2) / 3 * 4; }

size_t base64_encode(char *out, const unsigned char *in, size_t n)
{
    size_t o = 0, i;
    for (i = 0; i + 2 < n; i += 3) {
        unsigned v = in[i] << 16 | in[i+1] << 8 | in[i+2];
        out[o++] = b64[v >> 18 & 63]; out[o++] = b64[v >> 12 & 63];
        out[o++] = b64[v >> 6 & 63]; out[o++] = b64[v & 63];
    }
    if (i < n) {
        unsigned v = in[i] << 16;
        if (i + 1 < n) v |= in[i+1] << 8;
        out[o++] = b64[v >> 18 & 63];
        out[o++] = b64[v >> 12 & 63];
        out[o++] = i + 1 < n ? b64[v >> 6 & 63] : '=';
        out[o++] = '=';
    }
    out[o] = 0;
    return o;
}
