/* philox.c - reproducible Gaussian noise from a counter-based generator.
 *
 * Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as easy as 1, 2, 3", SC11)
 * maps a 128-bit counter and a 64-bit key to 128 random bits with no state, so element i of a
 * noise tensor depends only on (seed, stream, i): results are the same for any thread count or
 * chunking. Two Philox words make a uniform double; Box-Muller turns a pair into two normals. The
 * exact recipe is documented with ldm_randn in include/ldm.h. */
#include "sampling.h"

#include <math.h>

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u /* golden ratio */
#define PHILOX_W1 0xBB67AE85u /* sqrt(3) - 1 */

static inline void mulhilo(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo)
{
    uint64_t p = (uint64_t)a * (uint64_t)b;
    *hi = (uint32_t)(p >> 32);
    *lo = (uint32_t)p;
}

void ls_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        if (round > 0) { /* key schedule: bump before every round but the first */
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        uint32_t hi0, lo0, hi1, lo1;
        mulhilo(PHILOX_M0, c0, &hi0, &lo0);
        mulhilo(PHILOX_M1, c2, &hi1, &lo1);
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* The two normals of one Philox block (element indices 2*block and 2*block + 1). */
static void normal_pair(uint64_t seed, uint64_t stream, uint64_t block, double *z0, double *z1)
{
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t ctr[4] = {(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)stream, (uint32_t)(stream >> 32)};
    uint32_t w[4];
    ls_philox4x32_10(ctr, key, w);
    const double two_m53 = 1.0 / 9007199254740992.0; /* 2^-53 */
    uint64_t a = ((uint64_t)w[1] << 32) | w[0];
    uint64_t b = ((uint64_t)w[3] << 32) | w[2];
    double u1 = (double)((a >> 11) + 1) * two_m53; /* (0, 1]: log never sees 0 */
    double u2 = (double)(b >> 11) * two_m53;       /* [0, 1) */
    double r = sqrt(-2.0 * log(u1));
    double th = 2.0 * M_PI * u2;
    *z0 = r * cos(th);
    *z1 = r * sin(th);
}

double ls_randn_at(uint64_t seed, uint64_t stream, uint64_t index)
{
    double z0, z1;
    normal_pair(seed, stream, index >> 1, &z0, &z1);
    return (index & 1) ? z1 : z0;
}

void ls_randn_fill(uint64_t seed, uint64_t stream, uint64_t first, size_t n, float *out)
{
    size_t j = 0;
    if (n && (first & 1)) { /* odd start: second half of a pair */
        out[j++] = (float)ls_randn_at(seed, stream, first);
    }
    for (; j + 1 < n; j += 2) {
        double z0, z1;
        normal_pair(seed, stream, (first + j) >> 1, &z0, &z1);
        out[j] = (float)z0;
        out[j + 1] = (float)z1;
    }
    if (j < n) out[j] = (float)ls_randn_at(seed, stream, first + j);
}

ldm_status ldm_randn(uint64_t seed, uint64_t stream, ldm_tensor *out)
{
    LDM_TRY(lt_check(out, "ldm_randn: out", LDM_F32, -1));
    if (!out->data && lt_numel(out) > 0) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_randn: tensor has no data");
    ls_randn_fill(seed, stream, 0, (size_t)lt_numel(out), lt_f32(out));
    return LDM_OK;
}
