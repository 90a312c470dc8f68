/* bench.c - times the components of a real-size model built from seeded random weights (no
 * download): one UNet evaluation (batch 2, as classifier-free guidance needs), one VAE decode and
 * one text encode, with peak memory and a per-kernel breakdown (calls, counted GFLOP, time,
 * GFLOP/s; see lib/kernels/stats.c for what is counted). A benchmark, not a test: it prints
 * numbers and never fails on them.
 *
 *   bench [--arch sd15|sd21-v|cin256-v2|demo] [--size PIXELS] [--threads N] [--repeat N]
 *         [--only unet|vae|text] [--breakdown 0|1] [--result 0|1]
 *
 * --result 1 adds one line per component for scripts (bench/peak_share.sh):
 *   result COMPONENT PIXELS WALL_S GFLOP CPU_S      (COMPONENT: unet, vae or text; the best run)
 *
 * Every component is first run once on a tiny input so that creating it (widening the weights to
 * float32) is not timed; the timed runs then use the real size. With --repeat N > 1 the first
 * full-size run (which also grows the scratch buffers) and the best of the N are both printed.
 * Peak RSS is the process's high-water mark since the component's timed runs began (reset through
 * /proc/self/clear_refs), so it includes the model's weights but not the other components' peaks.
 */
#include "ldm.h"

#include "kernels/kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#ifndef LDM_BLAS_BLIS
char *openblas_get_config(void);
char *openblas_get_corename(void);
#endif

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Reads a "Key:   123 kB" line of /proc/self/status in MiB; -1 when unavailable. */
static double proc_status_mib(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    double v = -1;
    size_t n = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':') {
            v = atof(line + n + 1) / 1024.0;
            break;
        }
    fclose(f);
    return v;
}

/* Resets the peak-RSS mark (Linux >= 4.0); harmless elsewhere. */
static void reset_peak_rss(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return;
    fputs("5", f);
    fclose(f);
}

static double peak_rss_mib(void)
{
    double hwm = proc_status_mib("VmHWM");
    if (hwm >= 0) return hwm;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0; /* Linux: KiB */
}

/* CPU seconds (user + system) of every thread of the process so far. */
static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
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
    int size, threads, repeat, breakdown, result;
} bench_opts;

/* One timed component: its runs and the kernel counters of the best run. */
typedef struct timing {
    double first, best, best_cpu; /* wall seconds; process CPU seconds of the best run */
    lk_op_stats ops[LK_OP_COUNT];
} timing;

typedef int (*run_fn)(void *arg); /* returns non-zero on failure */

static void time_runs(const bench_opts *o, run_fn fn, void *arg, const char *what, timing *t)
{
    reset_peak_rss();
    t->first = t->best = 1e30;
    for (int r = 0; r < o->repeat; r++) {
        lk_stats_reset();
        double t0 = now(), c0 = cpu_seconds();
        if (fn(arg)) die(what);
        double dt = now() - t0, cpu = cpu_seconds() - c0;
        lk_stats_stop();
        if (r == 0) t->first = dt;
        if (dt < t->best) {
            t->best = dt;
            t->best_cpu = cpu;
            lk_stats_read(t->ops);
        }
    }
}

static void print_timing(const bench_opts *o, const char *label, const char *component, const timing *t)
{
    double flops = 0, kernel_s = 0;
    for (int i = 0; i < LK_OP_COUNT; i++) flops += t->ops[i].flops, kernel_s += t->ops[i].seconds;
    if (o->result) printf("result %s %d %.6f %.4f %.6f\n", component, o->size, t->best, flops * 1e-9, t->best_cpu);
    printf("  %-40s %8.3f s", label, t->best);
    if (o->repeat > 1) printf(" (first %.3f s)", t->first);
    printf("  %7.1f GFLOP counted, %6.1f GFLOP/s, cpu %.2f s, peak RSS %.0f MiB\n", flops * 1e-9,
           flops * 1e-9 / t->best, t->best_cpu, peak_rss_mib());
    if (!o->breakdown) return;
    /* GFLOP per CPU second stays meaningful when other processes share the cores. */
    printf("      %-16s %6s %9s %8s %6s %9s %8s %9s\n", "kernel", "calls", "GFLOP", "wall s", "%", "GFLOP/s", "cpu s",
           "GF/cpu-s");
    double kernel_cpu = 0;
    for (int i = 0; i < LK_OP_COUNT; i++) {
        const lk_op_stats *s = &t->ops[i];
        kernel_cpu += s->cpu_seconds;
        if (!s->calls) continue;
        printf("      %-16s %6llu %9.2f %8.3f %5.1f%%", lk_op_name((lk_op)i), s->calls, s->flops * 1e-9, s->seconds,
               100.0 * s->seconds / t->best);
        if (s->flops > 0 && s->seconds > 0) printf(" %9.1f", s->flops * 1e-9 / s->seconds);
        else printf(" %9s", "");
        printf(" %8.3f", s->cpu_seconds);
        if (s->flops > 0 && s->cpu_seconds > 0) printf(" %9.1f", s->flops * 1e-9 / s->cpu_seconds);
        printf("\n");
    }
    printf("      %-16s %6s %9s %8.3f %5.1f%% %9s %8.3f\n", "(not in kernels)", "", "", t->best - kernel_s,
           100.0 * (t->best - kernel_s) / t->best, "", t->best_cpu - kernel_cpu);
}

/* ---------------------------------------------------------------- UNet */

typedef struct unet_run {
    ldm_unet *unet;
    ldm_tensor *x, *t, *ctx;
} unet_run;

static int run_unet(void *arg)
{
    unet_run *u = arg;
    ldm_tensor *out = NULL;
    int bad = ldm_unet_forward(u->unet, u->x, u->t, u->ctx, NULL, &out) != LDM_OK;
    ldm_tensor_free(out);
    return bad;
}

static void unet_inputs(unet_run *u, int latent, int channels, int ctx_len, int ctx_dim)
{
    int64_t xs[4] = {2, channels, latent, latent}, ts[1] = {2}, cs[3] = {2, ctx_len, ctx_dim};
    u->x = randn(4, xs, 1);
    u->ctx = ctx_dim > 0 ? randn(3, cs, 2) : NULL;
    if (ldm_tensor_create(LDM_I64, 1, ts, &u->t) != LDM_OK) die("tensor");
    ((int64_t *)ldm_tensor_data(u->t))[0] = 999;
    ((int64_t *)ldm_tensor_data(u->t))[1] = 500;
}

static void unet_free_inputs(unet_run *u)
{
    ldm_tensor_free(u->x);
    ldm_tensor_free(u->t);
    ldm_tensor_free(u->ctx);
}

static void time_unet(ldm_model *m, const bench_opts *o, int latent, int channels, int ctx_len, int ctx_dim)
{
    unet_run u = {0};
    if (ldm_model_unet(m, &u.unet) != LDM_OK) die("unet");
    unet_inputs(&u, 8, channels, ctx_len, ctx_dim);
    if (run_unet(&u)) die("unet warm-up");
    unet_free_inputs(&u);
    unet_inputs(&u, latent, channels, ctx_len, ctx_dim);
    timing t;
    time_runs(o, run_unet, &u, "unet forward", &t);
    char label[96];
    snprintf(label, sizeof label, "unet forward  batch 2, latent %dx%d:", latent, latent);
    print_timing(o, label, "unet", &t);
    unet_free_inputs(&u);
}

/* ---------------------------------------------------------------- VAE */

typedef struct vae_run {
    ldm_model *m;
    ldm_tensor *z;
} vae_run;

static int run_vae(void *arg)
{
    vae_run *v = arg;
    ldm_tensor *img = NULL;
    int bad = ldm_model_decode_latent(v->m, v->z, &img) != LDM_OK;
    ldm_tensor_free(img);
    return bad;
}

static void time_vae(ldm_model *m, const bench_opts *o, int latent, int channels, int factor)
{
    int64_t small[4] = {1, channels, 8, 8}, zs[4] = {1, channels, latent, latent};
    vae_run v = {m, randn(4, small, 3)};
    if (run_vae(&v)) die("vae warm-up");
    ldm_tensor_free(v.z);
    v.z = randn(4, zs, 3);
    timing t;
    time_runs(o, run_vae, &v, "vae decode", &t);
    char label[96];
    snprintf(label, sizeof label, "vae decode    latent %dx%d -> %dx%d:", latent, latent, latent * factor,
             latent * factor);
    print_timing(o, label, "vae", &t);
    ldm_tensor_free(v.z);
}

/* ---------------------------------------------------------------- text */

typedef struct text_run {
    ldm_conditioner *cond;
    ldm_tensor *tokens;
} text_run;

static int run_text(void *arg)
{
    text_run *tr = arg;
    ldm_tensor *out = NULL;
    int bad = ldm_conditioner_encode_tokens(tr->cond, tr->tokens, &out) != LDM_OK;
    ldm_tensor_free(out);
    return bad;
}

static void time_text(ldm_model *m, const bench_opts *o)
{
    text_run tr = {0};
    if (ldm_model_conditioner(m, &tr.cond) != LDM_OK) die("conditioner");
    int64_t ts[2] = {2, 77};
    if (ldm_tensor_create(LDM_I64, 2, ts, &tr.tokens) != LDM_OK) die("tensor");
    int64_t *ids = ldm_tensor_data(tr.tokens);
    for (int i = 0; i < 154; i++) ids[i] = (i % 77 == 0) ? 49406 : (i % 77 < 10 ? 320 + i % 77 : 49407);
    if (run_text(&tr)) die("text warm-up");
    timing t;
    time_runs(o, run_text, &tr, "text encode", &t);
    print_timing(o, "text encode   2 prompts x 77 tokens:", "text", &t);
    ldm_tensor_free(tr.tokens);
}

static int wants(const bench_opts *o, const char *what) { return !o->only || strcmp(o->only, what) == 0; }

static void print_setup(const bench_opts *o)
{
#ifdef LDM_BLAS_BLIS
    const char *blas = "BLIS";
#else
    char blas[256];
    snprintf(blas, sizeof blas, "OpenBLAS core %s (%s)", openblas_get_corename(), openblas_get_config());
#endif
    const char *ct = getenv("OPENBLAS_CORETYPE");
    printf("threads %d, BLAS %s, OPENBLAS_CORETYPE=%s\n%s\n", o->threads, blas, ct ? ct : "(unset)", ldm_cpu_info());
}

int main(int argc, char **argv)
{
    bench_opts o = {"sd15", NULL, 0, 0, 1, 1, 0};
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--arch")) o.arch = argv[i + 1];
        else if (!strcmp(argv[i], "--size")) o.size = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) o.threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--repeat")) o.repeat = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--only")) o.only = argv[i + 1];
        else if (!strcmp(argv[i], "--breakdown")) o.breakdown = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--result")) o.result = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: bench [--arch sd15|sd21-v|cin256-v2|demo] [--size PIXELS] [--threads N] "
                            "[--repeat N] [--only unet|vae|text] [--breakdown 0|1] [--result 0|1]\n");
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
    print_setup(&o);
    printf("%s: built in %.1f s\n", o.arch, now() - t0);
    int sd = !strncmp(o.arch, "sd", 2), factor = sd ? 8 : 4;
    int size = o.size > 0 ? o.size : (!strcmp(o.arch, "sd21-v") ? 768 : sd ? 512 : 256);
    int latent = size / factor, channels = sd ? 4 : 3;
    o.size = size;
    int ctx_dim = !strcmp(o.arch, "sd15") ? 768 : !strcmp(o.arch, "sd21-v") ? 1024 : !strcmp(o.arch, "cin256-v2") ? 512 : 0;
    int ctx_len = sd ? 77 : 1;
    if (wants(&o, "text") && sd) time_text(m, &o);
    if (wants(&o, "unet")) time_unet(m, &o, latent, channels, ctx_len, ctx_dim);
    if (wants(&o, "vae")) time_vae(m, &o, latent, channels, factor);
    ldm_model_free(m);
    return 0;
}
