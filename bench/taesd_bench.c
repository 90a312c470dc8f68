/* taesd_bench.c - the tiny autoencoder (TAESD) against the full SD VAE: decode (and encode) of
 * one latent at real size, seeded weights on both sides (no download): the SD 1.5 built-in
 * model's KL-f8 first stage, and a TAESD of the released architecture (64 channels, float16
 * weights like the released files, normal with std fan_in^-1/2) written to a temporary file.
 * The two are timed alternately, so a change in the machine's load hits both. A benchmark, not
 * a test: it prints numbers and never fails on them.
 *
 *   taesd_bench [--size PIXELS] [--threads N] [--repeat N] [--encode 0|1]
 *
 * Each network runs once on an 8x8 latent first (creating the full first stage widens its
 * weights; not timed). Prints the median and best wall time of each, the ratio full / tiny, and
 * the same ratio of process CPU time (all threads), which other jobs on the machine disturb
 * less. */
#include "ldm.h"

#include "io/weights.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Process CPU time (every thread): less disturbed than wall time when other jobs share the cores. */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what)
{
    fprintf(stderr, "taesd_bench: %s: %s\n", what, ldm_last_error());
    exit(1);
}

static ldm_tensor *randn(int64_t b, int64_t c, int64_t h, int64_t w, uint64_t seed, float scale)
{
    ldm_tensor *t = NULL;
    int64_t shape[4] = {b, c, h, w};
    if (ldm_tensor_create(LDM_F32, 4, shape, &t) != LDM_OK || ldm_randn(seed, 0, t) != LDM_OK) die("tensor");
    float *d = ldm_tensor_data(t);
    for (int64_t i = 0; i < ldm_tensor_numel(t); i++) d[i] *= scale;
    return t;
}

/* One conv of the file: "<prefix><index><sub>.weight" [out,in,3,3] (+ bias). */
typedef struct conv_spec {
    char name[48];
    int in, out, bias;
} conv_spec;

static int add_conv(conv_spec *c, int n, const char *prefix, int index, const char *sub, int in, int out, int bias)
{
    snprintf(c[n].name, sizeof c[n].name, "%s%d%s", prefix, index, sub);
    c[n].in = in;
    c[n].out = out;
    c[n].bias = bias;
    return n + 1;
}

static int add_block(conv_spec *c, int n, const char *prefix, int index)
{
    n = add_conv(c, n, prefix, index, ".conv.0", 64, 64, 1);
    n = add_conv(c, n, prefix, index, ".conv.2", 64, 64, 1);
    return add_conv(c, n, prefix, index, ".conv.4", 64, 64, 1);
}

/* taesd.py's Encoder() and Decoder() as a TAESD module state dict (encoder.N / decoder.N). */
static int taesd_convs(conv_spec *c)
{
    int n = add_conv(c, 0, "encoder.", 0, "", 3, 64, 1);
    n = add_block(c, n, "encoder.", 1);
    for (int s = 0; s < 3; s++) {
        n = add_conv(c, n, "encoder.", 2 + 4 * s, "", 64, 64, 0);
        for (int k = 0; k < 3; k++) n = add_block(c, n, "encoder.", 3 + 4 * s + k);
    }
    n = add_conv(c, n, "encoder.", 14, "", 64, 4, 1);
    n = add_conv(c, n, "decoder.", 1, "", 4, 64, 1);
    for (int k = 0; k < 3; k++) n = add_block(c, n, "decoder.", 3 + k);
    static const int blocks[3] = {3, 3, 1};
    for (int s = 0, at = 6; s < 3; s++) {
        n = add_conv(c, n, "decoder.", at + 1, "", 64, 64, 0);
        for (int k = 0; k < blocks[s]; k++) n = add_block(c, n, "decoder.", at + 2 + k);
        at += 2 + blocks[s];
    }
    return add_conv(c, n, "decoder.", 19, "", 64, 3, 1);
}

static void write_taesd(const char *path)
{
    conv_spec convs[80];
    int n = taesd_convs(convs), k = 0;
    lw_out_tensor *out = calloc((size_t)(2 * n), sizeof *out);
    float **bufs = calloc((size_t)(2 * n), sizeof *bufs);
    char(*names)[56] = calloc((size_t)(2 * n), 56);
    for (int i = 0; i < n; i++) {
        const conv_spec *c = &convs[i];
        ldm_tensor *w = randn(c->out, c->in, 3, 3, 100 + (uint64_t)i, 1.0f / sqrtf(9.0f * (float)c->in));
        size_t bytes = (size_t)ldm_tensor_numel(w) * sizeof(float);
        bufs[k] = malloc(bytes);
        memcpy(bufs[k], ldm_tensor_data(w), bytes);
        ldm_tensor_free(w);
        snprintf(names[k], 56, "%.47s.weight", c->name);
        out[k] = (lw_out_tensor){.name = names[k],
                                 .dtype = LW_F16,
                                 .ndim = 4,
                                 .shape = {c->out, c->in, 3, 3},
                                 .data = bufs[k],
                                 .from_f32 = 1};
        k++;
        if (!c->bias) continue;
        ldm_tensor *b = randn(1, 1, 1, c->out, 500 + (uint64_t)i, 0.05f);
        bufs[k] = malloc((size_t)c->out * sizeof(float));
        memcpy(bufs[k], ldm_tensor_data(b), (size_t)c->out * sizeof(float));
        ldm_tensor_free(b);
        snprintf(names[k], 56, "%.47s.bias", c->name);
        out[k] = (lw_out_tensor){
            .name = names[k], .dtype = LW_F16, .ndim = 1, .shape = {c->out}, .data = bufs[k], .from_f32 = 1};
        k++;
    }
    if (lw_write_safetensors(path, out, (size_t)k, NULL, NULL, 0) != LDM_OK) die(path);
    for (int i = 0; i < k; i++) free(bufs[i]);
    free(bufs);
    free(names);
    free(out);
}

typedef struct job {
    ldm_model *m;
    ldm_tensor *in;
    ldm_vae_choice vae;
    int encode;
} job;

static double run(const job *j, double *cpu)
{
    ldm_tensor *out = NULL;
    double c0 = cpu_now(), t0 = now();
    ldm_status st = j->encode ? ldm_model_encode_image(j->m, j->in, j->vae, 1, &out)
                              : ldm_model_decode_latent_with(j->m, j->in, j->vae, &out);
    double t = now() - t0;
    *cpu = cpu_now() - c0;
    if (st != LDM_OK) die(j->vae == LDM_VAE_TINY ? "tiny" : "full");
    ldm_tensor_free(out);
    return t;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void compare(ldm_model *m, int size, int repeat, int encode)
{
    int latent = size / 8;
    job full = {m, NULL, LDM_VAE_FULL, encode}, tiny = {m, NULL, LDM_VAE_TINY, encode};
    full.in = tiny.in = encode ? randn(1, 3, 64, 64, 3, 0.5f) : randn(1, 4, 8, 8, 3, 1.0f);
    double cf[64], ct[64];
    run(&full, cf); /* creates the first stage */
    run(&tiny, ct);
    ldm_tensor_free(full.in);
    full.in = tiny.in = encode ? randn(1, 3, size, size, 4, 0.5f) : randn(1, 4, latent, latent, 4, 1.0f);
    double tf[64], tt[64];
    for (int r = 0; r < repeat; r++) {
        tf[r] = run(&full, &cf[r]);
        tt[r] = run(&tiny, &ct[r]);
        printf("  round %d: full %.3f s (cpu %.3f s), tiny %.3f s (cpu %.3f s)\n", r + 1, tf[r], cf[r], tt[r], ct[r]);
        fflush(stdout);
    }
    qsort(tf, (size_t)repeat, sizeof(double), cmp);
    qsort(tt, (size_t)repeat, sizeof(double), cmp);
    qsort(cf, (size_t)repeat, sizeof(double), cmp);
    qsort(ct, (size_t)repeat, sizeof(double), cmp);
    double mf = tf[repeat / 2], mt = tt[repeat / 2];
    printf("%s %dx%d latent %dx%d: full VAE median %.3f s (best %.3f), TAESD median %.3f s (best %.3f): %.1fx\n",
           encode ? "encode" : "decode", size, size, latent, latent, mf, tf[0], mt, tt[0], mf / mt);
    printf("  process cpu time: full median %.3f s, TAESD median %.3f s: %.1fx\n", cf[repeat / 2], ct[repeat / 2],
           cf[repeat / 2] / ct[repeat / 2]);
    ldm_tensor_free(full.in);
}

int main(int argc, char **argv)
{
    int size = 512, threads = 0, repeat = 3, encode = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--size"))
            size = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--repeat"))
            repeat = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--encode"))
            encode = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: taesd_bench [--size PIXELS] [--threads N] [--repeat N] [--encode 0|1]\n");
            return 2;
        }
    }
    if (repeat < 1 || repeat > 64 || size < 64 || size % 64) {
        fprintf(stderr, "taesd_bench: repeat 1..64, size a multiple of 64\n");
        return 2;
    }
    char path[64];
    snprintf(path, sizeof path, "/tmp/taesd_bench_%d.safetensors", (int)getpid());
    write_taesd(path);
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    mp.n_threads = threads;
    ldm_model *m = NULL;
    if (ldm_model_load_builtin("sd15", 42, &mp, &m) != LDM_OK) die("sd15");
    if (ldm_model_set_tiny_autoencoder(m, path) != LDM_OK) die(path);
    unlink(path);
    printf("%s\nthreads %d (0: all online CPUs), %d alternating rounds\n", ldm_cpu_info(), threads, repeat);
    compare(m, size, repeat, 0);
    if (encode) compare(m, size, repeat, 1);
    ldm_model_free(m);
    return 0;
}
