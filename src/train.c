/* train.c - `ldm train CONFIG --data DIR --out DIR [...]`: trains an autoencoder or a latent
 * diffusion model with ldm_trainer (include/ldm.h), showing progress, saving on Ctrl-C. */
#include <errno.h>
#include <sys/resource.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

typedef struct train_opts {
    const char *config, *export_path;
    int quiet, half;
    int64_t log_every;
    ldm_train_params p;
} train_opts;

static ldm_trainer *volatile running;

static void on_sigint(int sig)
{
    (void)sig;
    if (running) ldm_trainer_interrupt(running);
}

static int parse_i64(const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "ldm train: %s: '%s' is not an integer in [%lld, %lld]\n", opt, s, (long long)lo, (long long)hi);
        return 0;
    }
    *out = v;
    return 1;
}

static int parse_f64(const char *opt, const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "ldm train: %s: '%s' is not a number in [%g, %g]\n", opt, s, lo, hi);
        return 0;
    }
    *out = v;
    return 1;
}

/* Returns 0 to go on, 1 when help was printed, 2 on a usage error. */
static int parse(int argc, char **argv, train_opts *o)
{
    memset(o, 0, sizeof *o);
    ldm_train_params_init(&o->p);
    o->log_every = 50;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            cli_command_usage(stdout, "train");
            return 1;
        }
        if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) { o->quiet = 1; continue; }
        if (!strcmp(a, "--resume")) { o->p.resume = 1; continue; }
        if (!strcmp(a, "--half")) { o->half = 1; continue; }
        if (a[0] != '-') {
            if (o->config) {
                fprintf(stderr, "ldm train: one config only ('%s' and '%s')\n", o->config, a);
                return 2;
            }
            o->config = a;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "ldm train: %s needs a value (ldm train --help)\n", a);
            return 2;
        }
        const char *v = argv[++i];
        int64_t n;
        if (!strcmp(a, "--data")) o->p.data_dir = v;
        else if (!strcmp(a, "--out")) o->p.out_dir = v;
        else if (!strcmp(a, "--first-stage")) o->p.first_stage = v;
        else if (!strcmp(a, "--init")) o->p.init_from = v;
        else if (!strcmp(a, "--export")) o->export_path = v;
        else if (!strcmp(a, "--steps")) { if (!parse_i64(a, v, 1, (int64_t)1 << 40, &o->p.max_steps)) return 2; }
        else if (!strcmp(a, "--minutes")) { if (!parse_f64(a, v, 1e-6, 1e7, &o->p.max_minutes)) return 2; }
        else if (!strcmp(a, "--batch")) { if (!parse_i64(a, v, 1, 65536, &n)) return 2; o->p.batch_size = (int)n; }
        else if (!strcmp(a, "--lr")) { if (!parse_f64(a, v, 1e-12, 10.0, &o->p.learning_rate)) return 2; }
        else if (!strcmp(a, "--cond-drop")) { if (!parse_f64(a, v, 0.0, 0.999, &o->p.cond_drop_rate)) return 2; }
        else if (!strcmp(a, "--save-every")) { if (!parse_i64(a, v, 1, 1 << 30, &n)) return 2; o->p.save_every = (int)n; }
        else if (!strcmp(a, "--log-every")) { if (!parse_i64(a, v, 1, 1 << 30, &o->log_every)) return 2; }
        else if (!strcmp(a, "--seed")) { if (!parse_i64(a, v, 0, INT64_MAX, &n)) return 2; o->p.seed = (uint64_t)n; }
        else if (!strcmp(a, "--threads")) { if (!parse_i64(a, v, 1, 4096, &n)) return 2; o->p.n_threads = (int)n; }
        else if (!strcmp(a, "--memory-budget")) { /* MB of activations before blocks are recomputed */
            if (!parse_i64(a, v, 1, (int64_t)1 << 30, &n)) return 2;
            o->p.max_activation_bytes = (uint64_t)n << 20;
        }
        else {
            fprintf(stderr, "ldm train: unknown option %s (ldm train --help)\n", a);
            return 2;
        }
    }
    if (!o->config || !o->p.data_dir || !o->p.out_dir) {
        fprintf(stderr, "ldm train: usage: ldm train CONFIG --data DIR --out DIR [--steps N | --minutes M] "
                        "(ldm train --help)\n");
        return 2;
    }
    return 0;
}

static void on_log(ldm_log_level level, const char *message, void *user_data)
{
    const train_opts *o = user_data;
    if (o->quiet && level != LDM_LOG_ERROR) return;
    fprintf(stderr, "ldm train: %s%s\n", level == LDM_LOG_WARN ? "warning: " : "", message);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct progress_state {
    const train_opts *o;
    int tty;
    double start;
} progress_state;

static int on_step(const ldm_train_progress *p, void *user_data)
{
    progress_state *s = user_data;
    if (s->o->quiet) return 0;
    double elapsed = now() - s->start;
    int line = p->step % s->o->log_every == 0 || p->step == 1 || p->step == p->total_steps;
    if (s->tty) {
        char bar[32] = "";
        if (p->total_steps > 0) {
            int fill = (int)(p->step * 24 / p->total_steps);
            for (int i = 0; i < 24; i++) bar[i] = i < fill ? '#' : '.';
            bar[24] = 0;
        }
        fprintf(stderr, "\r%s [%s] step %lld/%lld  loss %.4f (avg %.4f)  %.0f ms/step  %.1f img/s  %.0fs ",
                p->phase, bar, (long long)p->step, (long long)p->total_steps, p->loss, p->loss_ema, 1e3 * p->seconds,
                p->images_per_second, elapsed);
        if (line && p->step == p->total_steps) fprintf(stderr, "\n");
    } else if (line) {
        fprintf(stderr, "%s step %lld/%lld  loss %.5f  avg %.5f  %.0f ms/step  %.1f img/s  %.0fs\n", p->phase,
                (long long)p->step, (long long)p->total_steps, p->loss, p->loss_ema, 1e3 * p->seconds,
                p->images_per_second, elapsed);
    }
    return 0;
}

int cli_train(int argc, char **argv)
{
    train_opts o;
    int r = parse(argc, argv, &o);
    if (r) return r == 1 ? 0 : r;
    progress_state ps = {&o, isatty(STDERR_FILENO), now()};
    o.p.callback = on_step;
    o.p.user_data = &ps;
    o.p.log_callback = on_log;
    o.p.log_user_data = &o;
    ldm_trainer *t = NULL;
    ldm_status st = ldm_trainer_create(o.config, &o.p, &t);
    if (st != LDM_OK) {
        fprintf(stderr, "ldm train: %s\n", ldm_last_error());
        return 1;
    }
    running = t;
    signal(SIGINT, on_sigint);
    st = ldm_trainer_run(t);
    signal(SIGINT, SIG_DFL);
    running = NULL;
    if (ps.tty && !o.quiet) fprintf(stderr, "\n");
    ldm_train_progress p;
    ldm_trainer_progress(t, &p);
    if (st == LDM_OK || st == LDM_CANCELLED) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        if (!o.quiet)
            fprintf(stderr, "ldm train: %s checkpoint at step %lld in %s/last.safetensors (config.yaml beside it); "
                            "%.1f min, peak memory %.0f MiB\n",
                    st == LDM_OK ? "saved the" : "interrupted; saved the", (long long)p.step, o.p.out_dir,
                    (now() - ps.start) / 60.0, ru.ru_maxrss / 1024.0);
        if (o.export_path) {
            ldm_status e = ldm_trainer_export(t, o.export_path, o.half);
            if (e != LDM_OK) {
                fprintf(stderr, "ldm train: export: %s\n", ldm_last_error());
                st = e;
            } else if (!o.quiet) {
                fprintf(stderr, "ldm train: exported %s weights to %s\n", o.half ? "float16" : "float32",
                        o.export_path);
            }
        }
    } else {
        fprintf(stderr, "ldm train: %s\n", ldm_last_error());
    }
    ldm_trainer_free(t);
    return st == LDM_OK ? 0 : st == LDM_CANCELLED ? 130 : 1;
}
