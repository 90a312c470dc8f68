/* kcount.c - runs one kernel a given number of times on fixed inputs, for counting executed
 * instructions under emulation (bench/arm64-icount.sh; docs/performance.md "ARM64 instruction
 * counts"). The kernel family is whatever LDM_CPU selects (lib/kernels/cpu.c).
 *
 *   kcount KERNEL N      KERNEL: attention | attention-causal | winograd | winograd2 |
 *                                groupnorm | layernorm | gelu | silu | softmax | half |
 *                                attention-ref | winograd-ref (the naive references lk_ref_*,
 *                                in double, for scale: the same shapes as attention / winograd)
 *
 * Inputs are made and the kernel is called once (warm-up: scratch buffers, BLAS setup, pages)
 * before the N counted calls, so the count of a run with N = k minus that of a run with N = 0,
 * divided by k, is the kernel's own count per call. Runs on the calling thread only (no pool).
 * Prints the family and a checksum of the output (the same within float rounding across
 * families). */
#include "kernels/kernels.h"
#include "kernels/simd.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float *filled(size_t n, uint32_t seed, float scale)
{
    float *p = malloc(sizeof(float) * n);
    if (!p) exit(1);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = scale * ((float)(seed >> 8) / 16777216.0f * 2.0f - 1.0f);
    }
    return p;
}

static double checksum(const float *p, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += p[i] * (double)((i % 7) + 1);
    return s;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: kcount KERNEL N\n");
        return 2;
    }
    const char *k = argv[1];
    int n = atoi(argv[2]);
    float *out = NULL;
    size_t n_out = 0;
    if (!strncmp(k, "attention", 9)) {
        /* an SD-like self-attention head set: 8 heads of 40 channels, 256 positions */
        int B = 1, H = 8, T = 256, D = 40, causal = !strcmp(k, "attention-causal");
        size_t sz = (size_t)B * H * T * D;
        float *q = filled(sz, 1, 1.0f), *kk = filled(sz, 2, 1.0f), *v = filled(sz, 3, 1.0f);
        out = calloc(sz, sizeof(float)), n_out = sz;
        lk_view vq = {q, (long)H * T * D, (long)T * D, D, 1}, vk = {kk, (long)H * T * D, (long)T * D, D, 1};
        lk_view vv = {v, (long)H * T * D, (long)T * D, D, 1}, vo = {out, (long)H * T * D, (long)T * D, D, 1};
        for (int i = 0; i <= n; i++)
            if (!strcmp(k, "attention-ref"))
                lk_ref_attention(B, H, T, T, D, vq, vk, vv, vo, 0.158113883f, 0);
            else if (lk_attention(NULL, B, H, T, T, D, vq, vk, vv, vo, 0.158113883f, causal) != LDM_OK)
                return 1;
    } else if (!strncmp(k, "winograd", 8)) {
        /* a UNet-like 3x3 convolution: 64 -> 64 channels on 32x32, F(4x4) (winograd2: F(2x2)) */
        lk_conv2d_shape s = {1, 64, 32, 32, 64, 3, 3, 1, 1, 1, 1, 1};
        size_t nx = 64 * 32 * 32, nw = 64 * 64 * 9;
        float *x = filled(nx, 4, 1.0f), *w = filled(nw, 5, 0.05f), *b = filled(64, 6, 0.1f);
        out = calloc(nx, sizeof(float)), n_out = nx;
        int m = !strcmp(k, "winograd2") ? 2 : 4;
        for (int i = 0; i <= n; i++)
            if (!strcmp(k, "winograd-ref"))
                lk_ref_conv2d(&s, x, w, b, out);
            else if (lk_conv3x3_winograd(NULL, &s, x, lk_wt_f32(w), b, out, m) != LDM_OK)
                return 1;
    } else if (!strcmp(k, "groupnorm")) {
        int C = 128, HW = 32 * 32;
        float *x = filled((size_t)C * HW, 7, 2.0f), *g = filled(C, 8, 1.0f), *b = filled(C, 9, 1.0f);
        out = calloc((size_t)C * HW, sizeof(float)), n_out = (size_t)C * HW;
        for (int i = 0; i <= n; i++) lk_group_norm_silu(NULL, x, 1, C, HW, 32, 1e-5f, g, b, out);
    } else if (!strcmp(k, "layernorm")) {
        int rows = 256, dim = 320;
        float *x = filled((size_t)rows * dim, 10, 2.0f), *g = filled(dim, 11, 1.0f), *b = filled(dim, 12, 1.0f);
        out = calloc((size_t)rows * dim, sizeof(float)), n_out = (size_t)rows * dim;
        for (int i = 0; i <= n; i++) lk_layer_norm(NULL, x, rows, dim, 1e-5f, g, b, out);
    } else if (!strcmp(k, "gelu") || !strcmp(k, "silu") || !strcmp(k, "softmax")) {
        size_t len = 256 * 320;
        float *x = filled(len, 13, 4.0f);
        out = malloc(sizeof(float) * len), n_out = len;
        for (int i = 0; i <= n; i++) {
            memcpy(out, x, sizeof(float) * len);
            if (!strcmp(k, "gelu"))
                lk_gelu(out, len);
            else if (!strcmp(k, "silu"))
                lk_silu(out, len);
            else
                lk_softmax_rows(out, 256, 320);
        }
    } else if (!strcmp(k, "half")) {
        size_t len = 1 << 18;
        uint16_t *h = malloc(2 * len);
        for (size_t i = 0; i < len; i++) h[i] = (uint16_t)(i * 40503u);
        out = malloc(sizeof(float) * len), n_out = len;
        for (int i = 0; i <= n; i++) lk_half_to_float(h, len, out);
        for (size_t i = 0; i < len; i++)
            if (out[i] != out[i]) out[i] = 0; /* NaN payloads out of the checksum */
    } else {
        fprintf(stderr, "kcount: unknown kernel %s\n", k);
        return 2;
    }
    printf("kcount: %s x%d, kernels %s, checksum %.6e\n", k, n, lk_cpu_kernels(), checksum(out, n_out));
    return 0;
}
