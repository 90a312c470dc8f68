/* ck_rand.h - the tests' random numbers: a xorshift64 stream, seeded per test program (define
 * CK_RAND_SEED before including to pick another stream), so every run draws the same values.
 * Header-only; include once per program. */
#ifndef LDM_TESTS_CK_RAND_H
#define LDM_TESTS_CK_RAND_H

#include <stdint.h>

#ifndef CK_RAND_SEED
#define CK_RAND_SEED 0x9E3779B97F4A7C15ull
#endif

static uint64_t rng_state = CK_RAND_SEED;

static inline uint64_t next_u64(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* uniform in [-1, 1) */
static inline double urand(void) { return (double)(next_u64() >> 11) / (double)(1ull << 53) * 2.0 - 1.0; }
static inline float frand(void) { return (float)urand(); }

#endif
