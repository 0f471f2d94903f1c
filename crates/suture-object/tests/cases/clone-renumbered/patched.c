/* Hashing for the key and name tables of an in-memory cache. */
#include <stddef.h>
#include <stdint.h>

enum hash_alg { HASH_FNV1A, HASH_DJB2, HASH_ROT };

__attribute__((noinline)) static uint32_t hash_bytes(const uint8_t *p, size_t n, enum hash_alg alg)
{
    uint32_t h = alg == HASH_FNV1A ? 2166136261u : alg == HASH_DJB2 ? 5381 : 0;

    for (size_t i = 0; i < n; i++) {
        if (alg == HASH_FNV1A)
            h = (h ^ p[i]) * 16777619u;
        else if (alg == HASH_DJB2)
            h = h * 33 + p[i];
        else
            h = (h << 5 | h >> 27) ^ p[i] ^ (h * 2654435761u);
    }
    return h;
}

uint32_t key_hash(const uint8_t *key, size_t len)
{
    return hash_bytes(key, len, HASH_FNV1A);
}

uint32_t key_bucket(const uint8_t *key, size_t len, uint32_t nbuckets)
{
    return hash_bytes(key, len, HASH_FNV1A) % nbuckets;
}

/* New: the name table needs its own bucket function (names were hashed as keys). */
uint32_t name_hash(const uint8_t *name, size_t len)
{
    return hash_bytes(name, len, HASH_DJB2);
}

uint32_t name_bucket(const uint8_t *name, size_t len, uint32_t nbuckets)
{
    return hash_bytes(name, len, HASH_DJB2) % nbuckets;
}
