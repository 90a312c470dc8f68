/* latency.c - small-model latency: how many network evaluations and whole generations per second
 * small models reach at batch 1, where per-call overhead (thread-pool round trips, tiny kernels,
 * system calls, memory given back and faulted in again) rather than arithmetic sets the speed.
 * Game and art tools call such models many times, one image at a time. Two models, both with
 * seeded random weights (no file):
 *   demo     the built-in "demo" model (ldm_model_load_builtin): a 2.7M-parameter UNet on 16x16x3
 *            latents of 64x64 images;
 *   issue12  the model of issue 12, section 4: 32x32 RGB images, a KL-f4 autoencoder (8x8x3
 *            latents), a 1.7M-parameter UNet (64 channels, channel_mult 1,1, one ResBlock per
 *            level, a SpatialTransformer at both levels) with context_dim 64 from a 63-class
 *            ClassEmbedder. Built from the YAML config below through the library's internal
 *            loader steps (the same ones ldm_model_load_builtin takes).
 *
 *   latency [--model LIST] [--threads LIST] [--repeat N] [--evals N] [--gens N] [--big-batch N]
 *           [--steps N] [--only all|apply|generate|none] [--pause SECONDS] [--clock wall|cpu]
 *
 * For each model in LIST (default "demo,issue12") and each thread count in LIST (default "1,2"),
 * it times:
 *   apply   ldm_model_apply on one latent (batch 1), --evals calls per run, and the same network
 *           on --big-batch latents at once: the ratio of the batch-1 time to the per-image time
 *           in the big batch, and their difference (the per-evaluation overhead), say how much of
 *           a batch-1 call is not the network's own arithmetic;
 *   generate ldm_generate at batch 1 (--steps DDIM steps, guidance off, so every evaluation is a
 *           batch-1 call, then the VAE decode), --gens calls per run.
 * Each measurement is --repeat runs; it prints the best and median time per call, calls per
 * second, the share of the process's CPU time spent in the kernel (getrusage ru_stime over
 * ru_utime + ru_stime) and voluntary / involuntary context switches per call, over all runs and
 * all threads. `--pause S` sleeps S seconds after the warm-up and before the timed runs, printing
 * the process id, so that `strace -c -f -p PID` (or `perf stat -p PID`) attached meanwhile counts
 * the system calls of the timed calls only, without start-up. `--clock cpu` times the calls by
 * the process's CPU time (all threads) instead of the wall clock: with one thread, the number to
 * compare on a machine that other jobs share. A benchmark, not a test: it never
 * fails on its numbers. Built with -Ilib: it reaches the library's internal loader. */
#include "ldm.h"

#include "api/model_internal.h"
#include "io/weights.h"
#include "models/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define MAX_REPEAT 64

typedef struct lat_opts {
    const char *models, *threads, *only;
    int repeat, evals, gens, big_batch, steps, pause;
} lat_opts;

/* --clock cpu: time calls by the process's CPU time (all threads) instead of the wall clock. */
static clockid_t timing_clock = CLOCK_MONOTONIC;

/* Process-wide counters sampled around a measurement. */
typedef struct usage {
    double user, sys;
    long vcsw, ivcsw;
} usage;

static double now(void)
{
    struct timespec ts;
    clock_gettime(timing_clock, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static usage usage_now(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    usage u = {(double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6,
               (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6, ru.ru_nvcsw, ru.ru_nivcsw};
    return u;
}

static void die(const char *what)
{
    fprintf(stderr, "latency: %s: %s\n", what, ldm_last_error());
    exit(1);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ---------------------------------------------------------------- the models */

/* Issue 12, section 4: the demo's YAML with 32x32 images (KL-f4: 8x8x3 latents), a UNet of
 * channel_mult [1, 1] with attention at both levels (1,705,603 parameters) and 63 classes. */
static const char issue12_yaml[] =
    "model:\n"
    "  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
    "  params:\n"
    "    linear_start: 0.0015\n"
    "    linear_end: 0.0195\n"
    "    timesteps: 1000\n"
    "    image_size: 8\n"
    "    channels: 3\n"
    "    cond_stage_key: class_label\n"
    "    conditioning_key: crossattn\n"
    "    use_ema: false\n"
    "    unet_config:\n"
    "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
    "      params: {image_size: 8, in_channels: 3, out_channels: 3, model_channels: 64, attention_resolutions: [1, 2],\n"
    "               num_res_blocks: 1, channel_mult: [1, 1], num_heads: 4, use_spatial_transformer: true,\n"
    "               transformer_depth: 1, context_dim: 64}\n"
    "    first_stage_config:\n"
    "      target: ldm.models.autoencoder.AutoencoderKL\n"
    "      params:\n"
    "        embed_dim: 3\n"
    "        ddconfig: {double_z: true, z_channels: 3, resolution: 32, in_channels: 3, out_ch: 3, ch: 32,\n"
    "                   ch_mult: [1, 2, 2], num_res_blocks: 1, attn_resolutions: []}\n"
    "        lossconfig: {target: torch.nn.Identity}\n"
    "    cond_stage_config:\n"
    "      target: ldm.modules.encoders.modules.ClassEmbedder\n"
    "      params: {embed_dim: 64, n_classes: 63, key: class_label}\n";

typedef struct lat_model {
    const char *name;
    const char *yaml; /* NULL: the built-in architecture of that name */
    int latent;       /* latent height = width (3 channels) */
    int context_dim;  /* the class embedding: context [B,1,context_dim] */
} lat_model;

static const lat_model models[] = {
    {"demo", NULL, 16, 64},
    {"issue12", issue12_yaml, 8, 64},
};

/* What ldm_model_load_builtin does, for a YAML config given here: the description from the config,
 * a synthetic store (every tensor generated from `seed` on demand; a class embedder has no tensors
 * that must be listed), then the loader's common steps. */
static ldm_status load_yaml(const char *name, const char *yaml, uint64_t seed, const ldm_model_params *params,
                            ldm_model **out)
{
    ldm_model_params p;
    ldm_model *m = NULL;
    *out = NULL;
    LDM_TRY(lm_model_new(name, params, &m, &p));
    ldm_status st = ld_config_parse(yaml, strlen(yaml), name, &m->desc);
    if (st == LDM_OK) st = lw_store_create(name, &m->store);
    if (st == LDM_OK) {
        lw_store_set_synthetic(m->store, seed);
        st = lw_store_seal(m->store);
    }
    if (st == LDM_OK) st = lm_load_from(m, &p);
    if (st != LDM_OK) {
        ldm_model_free(m);
        return st;
    }
    *out = m;
    return LDM_OK;
}

static ldm_model *load_model(const lat_model *lm, int threads)
{
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    mp.n_threads = threads;
    ldm_model *m = NULL;
    ldm_status st = lm->yaml ? load_yaml(lm->name, lm->yaml, 42, &mp, &m) : ldm_model_load_builtin(lm->name, 42, &mp, &m);
    if (st != LDM_OK) die(lm->name);
    return m;
}

/* ---------------------------------------------------------------- the timed calls */

typedef struct apply_run {
    ldm_model *m;
    const lat_model *lm;
    ldm_tensor *x, *t, *ctx;
} apply_run;

static ldm_tensor *tensor(ldm_dtype dt, int ndim, const int64_t *shape)
{
    ldm_tensor *t = NULL;
    if (ldm_tensor_create(dt, ndim, shape, &t) != LDM_OK) die("tensor");
    return t;
}

/* Inputs of the UNet for `batch` latents: x [B,3,S,S], t [B], class context [B,1,context_dim]. */
static void apply_inputs(apply_run *a, int batch)
{
    int64_t S = a->lm->latent;
    int64_t xs[4] = {batch, 3, S, S}, ts[1] = {batch}, cs[3] = {batch, 1, a->lm->context_dim};
    a->x = tensor(LDM_F32, 4, xs);
    a->ctx = tensor(LDM_F32, 3, cs);
    if (ldm_randn(7, 1, a->x) != LDM_OK || ldm_randn(7, 2, a->ctx) != LDM_OK) die("randn");
    a->t = tensor(LDM_I64, 1, ts);
    for (int i = 0; i < batch; i++) ((int64_t *)ldm_tensor_data(a->t))[i] = 999 - 40 * (i % 25);
}

static void apply_free(apply_run *a)
{
    ldm_tensor_free(a->x);
    ldm_tensor_free(a->t);
    ldm_tensor_free(a->ctx);
}

static void apply_once(const apply_run *a)
{
    ldm_tensor *out = NULL;
    if (ldm_model_apply(a->m, a->x, a->t, a->ctx, &out) != LDM_OK) die("ldm_model_apply");
    ldm_tensor_free(out);
}

static void generate_once(ldm_model *m, int steps)
{
    ldm_generate_params p;
    ldm_generate_params_init(&p);
    p.class_label = 3;
    p.steps = steps;
    p.guidance_scale = 1.0f; /* no classifier-free guidance: batch-1 evaluations */
    p.seed = 11;
    ldm_tensor *img = NULL;
    if (ldm_generate(m, &p, &img) != LDM_OK) die("ldm_generate");
    ldm_tensor_free(img);
}

/* ---------------------------------------------------------------- measuring */

typedef struct result {
    double best, median; /* seconds per call */
    double sys_share;    /* of the process's CPU time */
    double vcsw, ivcsw;  /* per call */
} result;

typedef void (*call_fn)(void *arg);

/* `repeat` runs of `calls` calls each; per-call times from the runs' wall times. */
static result measure(const lat_opts *o, int calls, call_fn fn, void *arg)
{
    double per_call[MAX_REPEAT];
    usage u0 = usage_now();
    for (int r = 0; r < o->repeat; r++) {
        double t0 = now();
        for (int i = 0; i < calls; i++) fn(arg);
        per_call[r] = (now() - t0) / calls;
    }
    usage u1 = usage_now();
    qsort(per_call, (size_t)o->repeat, sizeof per_call[0], cmp_double);
    double cpu = (u1.user - u0.user) + (u1.sys - u0.sys), n = (double)calls * o->repeat;
    result res = {per_call[0], per_call[o->repeat / 2], cpu > 0 ? (u1.sys - u0.sys) / cpu : 0,
                  (u1.vcsw - u0.vcsw) / n, (u1.ivcsw - u0.ivcsw) / n};
    return res;
}

static void print_result(const char *label, const result *r, const char *unit)
{
    printf("  %-28s best %8.3f ms  median %8.3f ms  %8.1f %s/s  sys %5.1f%%  csw/call %6.1f vol %5.1f invol\n",
           label, r->best * 1e3, r->median * 1e3, 1.0 / r->median, unit, 100 * r->sys_share, r->vcsw, r->ivcsw);
}

static void call_apply(void *arg) { apply_once(arg); }

typedef struct gen_arg {
    ldm_model *m;
    int steps;
} gen_arg;

static void call_generate(void *arg)
{
    const gen_arg *g = arg;
    generate_once(g->m, g->steps);
}

static void bench_apply(ldm_model *m, const lat_model *lm, const lat_opts *o)
{
    apply_run one = {.m = m, .lm = lm}, big = {.m = m, .lm = lm};
    apply_inputs(&one, 1);
    apply_inputs(&big, o->big_batch);
    apply_once(&big); /* grows the workspace and scratch buffers to the big batch */
    apply_once(&one);
    result r1 = measure(o, o->evals, call_apply, &one);
    print_result("apply batch 1:", &r1, "evals");
    int big_calls = o->evals / o->big_batch > 2 ? o->evals / o->big_batch : 2; /* about as many images */
    result rb = measure(o, big_calls, call_apply, &big);
    char label[64];
    snprintf(label, sizeof label, "apply batch %d (per image):", o->big_batch);
    result per_image = rb;
    per_image.best /= o->big_batch, per_image.median /= o->big_batch;
    per_image.vcsw /= o->big_batch, per_image.ivcsw /= o->big_batch;
    print_result(label, &per_image, "images");
    printf("  batch-1 cost / per-image cost at batch %d: %.2fx (median %.2fx); overhead per batch-1 evaluation "
           "%.3f ms (median %.3f ms)\n",
           o->big_batch, r1.best / per_image.best, r1.median / per_image.median, (r1.best - per_image.best) * 1e3,
           (r1.median - per_image.median) * 1e3);
    apply_free(&one);
    apply_free(&big);
}

static void bench_generate(ldm_model *m, const lat_opts *o)
{
    gen_arg g = {m, o->steps};
    generate_once(m, o->steps); /* warm-up (after the apply runs, which grew the scratch buffers) */
    result r = measure(o, o->gens, call_generate, &g);
    char label[64];
    snprintf(label, sizeof label, "generate %d steps batch 1:", o->steps);
    print_result(label, &r, "images");
}

/* ---------------------------------------------------------------- main */

static void run_threads(const lat_opts *o, const lat_model *lm, int threads)
{
    ldm_model *m = load_model(lm, threads);
    printf("%s, threads %d\n", lm->name, threads);
    apply_run warm = {.m = m, .lm = lm};
    apply_inputs(&warm, 1);
    apply_once(&warm); /* creates the UNet */
    apply_free(&warm);
    if (!strcmp(o->only, "generate")) generate_once(m, o->steps); /* creates the other components */
    if (o->pause > 0) {
        printf("  pid %ld: pausing %d s before the timed runs\n", (long)getpid(), o->pause);
        fflush(stdout);
        sleep((unsigned)o->pause);
    }
    if (!strcmp(o->only, "all") || !strcmp(o->only, "apply")) bench_apply(m, lm, o);
    if (!strcmp(o->only, "all") || !strcmp(o->only, "generate")) bench_generate(m, o);
    ldm_model_free(m);
}

static void usage_exit(void)
{
    fprintf(stderr, "usage: latency [--model demo,issue12] [--threads LIST] [--repeat N] [--evals N] [--gens N] [--big-batch N] "
                    "[--steps N] [--only all|apply|generate|none] [--pause SECONDS] [--clock wall|cpu]\n");
    exit(2);
}

static void parse(int argc, char **argv, lat_opts *o)
{
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc) usage_exit();
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--model")) o->models = v;
        else if (!strcmp(k, "--threads")) o->threads = v;
        else if (!strcmp(k, "--only")) o->only = v;
        else if (!strcmp(k, "--repeat")) o->repeat = atoi(v);
        else if (!strcmp(k, "--evals")) o->evals = atoi(v);
        else if (!strcmp(k, "--gens")) o->gens = atoi(v);
        else if (!strcmp(k, "--big-batch")) o->big_batch = atoi(v);
        else if (!strcmp(k, "--steps")) o->steps = atoi(v);
        else if (!strcmp(k, "--pause")) o->pause = atoi(v);
        else if (!strcmp(k, "--clock") && (!strcmp(v, "wall") || !strcmp(v, "cpu")))
            timing_clock = !strcmp(v, "cpu") ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC;
        else usage_exit();
    }
    if (o->repeat < 1 || o->repeat > MAX_REPEAT || o->evals < 1 || o->gens < 1 || o->big_batch < 1 || o->steps < 1)
        usage_exit();
}

static const lat_model *find_model(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++)
        if (strlen(models[i].name) == len && !strncmp(models[i].name, name, len)) return &models[i];
    fprintf(stderr, "latency: unknown model '%.*s' (demo, issue12)\n", (int)len, name);
    exit(2);
}

int main(int argc, char **argv)
{
    lat_opts o = {"demo,issue12", "1,2", "all", 7, 100, 4, 62, 25, 0};
    parse(argc, argv, &o);
    printf("batch-1 latency (--repeat %d: best and median of the runs)\n", o.repeat);
    for (const char *mp = o.models; *mp;) {
        size_t len = strcspn(mp, ",");
        const lat_model *lm = find_model(mp, len);
        for (const char *p = o.threads; *p;) {
            char *end;
            long t = strtol(p, &end, 10);
            if (end == p || t < 1) usage_exit();
            run_threads(&o, lm, (int)t);
            p = *end == ',' ? end + 1 : end;
        }
        mp += len;
        if (*mp == ',') mp++;
    }
    return 0;
}
