/* synthetic.c - deterministic pseudo-random weights for models built without a file (the demo
 * model, benchmarks at real sizes, tests of the bindings). A synthetic store answers a request
 * for an absent tensor of a fully known shape with values derived from (seed, tensor name) alone:
 * integer hashing (splitmix64) then one float conversion, so every platform gets the same bits
 * and the order of requests does not matter.
 *
 * Scales keep activations in a sane range: matrices and convolution kernels are uniform with
 * variance 1/fan_in (fan_in = product of all but the first dimension), vectors named "*weight"
 * (normalisation gains) are 1 + small noise, other vectors (biases) are small. */
#include "weights.h"

#include <math.h>
#include <string.h>

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static uint64_t hash_name(const char *name, uint64_t seed)
{
    uint64_t h = 0xCBF29CE484222325ull ^ splitmix64(seed);
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) h = (h ^ *p) * 0x100000001B3ull;
    return h;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

void lw_synth_fill(const char *name, uint64_t seed, int ndim, const int64_t *shape, float *out)
{
    uint64_t key = hash_name(name, seed);
    size_t numel = 1, fan_in = 1;
    for (int i = 0; i < ndim; i++) numel *= (size_t)shape[i];
    for (int i = 1; i < ndim; i++) fan_in *= (size_t)shape[i];
    float scale, offset = 0.0f;
    if (ndim >= 2) scale = (float)sqrt(3.0 / (double)(fan_in ? fan_in : 1));
    else if (ends_with(name, "weight")) scale = 0.1f, offset = 1.0f;
    else scale = 0.02f;
    for (size_t i = 0; i < numel; i++) {
        /* 24 random bits -> uniform in [-1, 1) exactly representable in float */
        int32_t r = (int32_t)(splitmix64(key + i) >> 40) - (1 << 23);
        out[i] = offset + scale * ((float)r / (float)(1 << 23));
    }
}
