/* Frame scanner of a binary log shipper: 0xff bytes are not allowed in payloads. */
#include <stddef.h>
#include <stdio.h>

__attribute__((cold)) void shipper_alarm(const char *what, size_t at);

int frame_scan(const unsigned char *p, size_t n, unsigned int *sum)
{
    unsigned int s = 0;

    for (size_t i = 0; i < n; i++) {
        if (p[i] == 0xff) {
            shipper_alarm("0xff byte in frame", i);
            fprintf(stderr, "frame_scan: giving up at %zu\n", i);
            return -1;
        }
        s = s * 31 + p[i];
    }
    *sum = s;
    return 0;
}

unsigned int frame_len(const unsigned char *hdr)
{
    /* The length field is 24 bits since protocol v2. */
    return (unsigned int)hdr[0] << 16 | (unsigned int)hdr[1] << 8 | hdr[2];
}
