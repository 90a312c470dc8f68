/* bench.c - times the components of a real-size model built from seeded random weights (no
 * download): one UNet evaluation (batch 2, as classifier-free guidance needs), one VAE decode and
 * one text encode, with peak memory. A benchmark, not a test: it prints numbers and never fails
 * on them.
 *
 *   bench [--arch sd15|sd21-v|cin256-v2|demo] [--size PIXELS] [--threads N] [--repeat N]
 *         [--only unet|vae|text]
 */
#include "ldm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double peak_rss_mib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0; /* Linux: KiB */
}

static void die(const char *what)
{
    fprintf(stderr, "bench: %s: %s\n", what, ldm_last_error());
    exit(1);
}

static ldm_tensor *randn(int ndim, const int64_t *shape, uint64_t stream)
{
    ldm_tensor *t = NULL;
    if (ldm_tensor_create(LDM_F32, ndim, shape, &t) != LDM_OK || ldm_randn(1234, stream, t) != LDM_OK) die("tensor");
    return t;
}

typedef struct bench_opts {
    const char *arch, *only;
    int size, threads, repeat;
} bench_opts;

static void time_unet(ldm_model *m, const bench_opts *o, int latent, int channels, int ctx_len, int ctx_dim)
{
    ldm_unet *unet;
    if (ldm_model_unet(m, &unet) != LDM_OK) die("unet");
    int64_t xs[4] = {2, channels, latent, latent}, ts[1] = {2}, cs[3] = {2, ctx_len, ctx_dim};
    ldm_tensor *x = randn(4, xs, 1), *t = NULL, *ctx = ctx_dim > 0 ? randn(3, cs, 2) : NULL, *y = NULL, *out = NULL;
    ldm_tensor_create(LDM_I64, 1, ts, &t);
    ((int64_t *)ldm_tensor_data(t))[0] = 999;
    ((int64_t *)ldm_tensor_data(t))[1] = 500;
    if (ldm_unet_forward(unet, x, t, ctx, y, &out) != LDM_OK) die("unet warm-up");
    ldm_tensor_free(out);
    double best = 1e30;
    for (int r = 0; r < o->repeat; r++) {
        double t0 = now();
        if (ldm_unet_forward(unet, x, t, ctx, y, &out) != LDM_OK) die("unet forward");
        double dt = now() - t0;
        best = dt < best ? dt : best;
        ldm_tensor_free(out);
    }
    printf("  unet forward  batch 2, latent %dx%d: %8.3f s   (peak RSS %.0f MiB)\n", latent, latent, best, peak_rss_mib());
    ldm_tensor_free(x);
    ldm_tensor_free(t);
    ldm_tensor_free(ctx);
}

static void time_vae(ldm_model *m, const bench_opts *o, int latent, int channels)
{
    int64_t zs[4] = {1, channels, latent, latent};
    ldm_tensor *z = randn(4, zs, 3), *img = NULL;
    double best = 1e30;
    for (int r = 0; r < o->repeat; r++) {
        double t0 = now();
        if (ldm_model_decode_latent(m, z, &img) != LDM_OK) die("vae decode");
        double dt = now() - t0;
        best = dt < best ? dt : best;
        ldm_tensor_free(img);
    }
    printf("  vae decode    latent %dx%d -> %lldx%lld: %8.3f s   (peak RSS %.0f MiB)\n", latent, latent,
           (long long)latent * 8, (long long)latent * 8, best, peak_rss_mib());
    ldm_tensor_free(z);
}

static void time_text(ldm_model *m, const bench_opts *o)
{
    ldm_conditioner *cond;
    if (ldm_model_conditioner(m, &cond) != LDM_OK) die("conditioner");
    int64_t ts[2] = {2, 77};
    ldm_tensor *tokens = NULL, *out = NULL;
    ldm_tensor_create(LDM_I64, 2, ts, &tokens);
    int64_t *ids = ldm_tensor_data(tokens);
    for (int i = 0; i < 154; i++) ids[i] = (i % 77 == 0) ? 49406 : (i % 77 < 10 ? 320 + i % 77 : 49407);
    double best = 1e30;
    for (int r = 0; r < o->repeat; r++) {
        double t0 = now();
        if (ldm_conditioner_encode_tokens(cond, tokens, &out) != LDM_OK) die("text encode");
        double dt = now() - t0;
        best = dt < best ? dt : best;
        ldm_tensor_free(out);
    }
    printf("  text encode   2 prompts x 77 tokens: %8.3f s   (peak RSS %.0f MiB)\n", best, peak_rss_mib());
    ldm_tensor_free(tokens);
}

static int wants(const bench_opts *o, const char *what) { return !o->only || strcmp(o->only, what) == 0; }

int main(int argc, char **argv)
{
    bench_opts o = {"sd15", NULL, 0, 0, 1};
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--arch")) o.arch = argv[i + 1];
        else if (!strcmp(argv[i], "--size")) o.size = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) o.threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--repeat")) o.repeat = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--only")) o.only = argv[i + 1];
        else {
            fprintf(stderr, "usage: bench [--arch sd15|sd21-v|cin256-v2|demo] [--size PIXELS] [--threads N] "
                            "[--repeat N] [--only unet|vae|text]\n");
            return 2;
        }
    }
    if (o.repeat < 1) o.repeat = 1;
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    mp.n_threads = o.threads;
    ldm_model *m = NULL;
    double t0 = now();
    if (ldm_model_load_builtin(o.arch, 42, &mp, &m) != LDM_OK) die(o.arch);
    printf("%s: built in %.1f s\n", o.arch, now() - t0);
    int sd = !strncmp(o.arch, "sd", 2), factor = sd ? 8 : 4;
    int size = o.size > 0 ? o.size : (!strcmp(o.arch, "sd21-v") ? 768 : sd ? 512 : 256);
    int latent = size / factor, channels = sd ? 4 : 3;
    int ctx_dim = !strcmp(o.arch, "sd15") ? 768 : !strcmp(o.arch, "sd21-v") ? 1024 : !strcmp(o.arch, "cin256-v2") ? 512 : 0;
    int ctx_len = sd ? 77 : 1;
    if (wants(&o, "text") && sd) time_text(m, &o);
    if (wants(&o, "unet")) time_unet(m, &o, latent, channels, ctx_len, ctx_dim);
    if (wants(&o, "vae")) time_vae(m, &o, latent, channels);
    ldm_model_free(m);
    return 0;
}
