/* test_concurrency.c - the thread-safety contract of ldm.h (docs/architecture.md, "Thread
 * safety"): different models used from different threads at the same time give exactly the
 * single-threaded results, and ldm_model_interrupt() from another thread stops a running UNet
 * call or ldm_generate sampling loop quickly with LDM_CANCELLED, leaving the model usable (the
 * next call succeeds and gives the same result as an undisturbed one). Uses the built-in seeded
 * "demo" model, so no fixtures are needed. */
#include <check.h>

#include "ldm.h"
#include "support/ck_run.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static ldm_model *demo(uint64_t seed)
{
    ldm_model_params p;
    ldm_model_params_init(&p);
    p.n_threads = 2;
    ldm_model *m = NULL;
    ck_assert_msg(ldm_model_load_builtin("demo", seed, &p, &m) == LDM_OK, "%s", ldm_last_error());
    return m;
}

static int same(const ldm_tensor *a, const ldm_tensor *b)
{
    if (ldm_tensor_numel(a) != ldm_tensor_numel(b) || ldm_tensor_ndim(a) != ldm_tensor_ndim(b)) return 0;
    return memcmp(ldm_tensor_data((ldm_tensor *)a), ldm_tensor_data((ldm_tensor *)b),
                  (size_t)ldm_tensor_numel(a) * sizeof(float)) == 0;
}

/* ---------------------------------------------------------------- two models, two threads */

typedef struct {
    ldm_model *model;
    ldm_generate_params params;
    ldm_tensor *image;
    ldm_status status;
    char error[256];
} gen_job;

static void *run_generate(void *arg)
{
    gen_job *j = arg;
    j->status = ldm_generate(j->model, &j->params, &j->image);
    /* ldm_last_error is per thread: the message of this thread's failure, not the other's */
    snprintf(j->error, sizeof j->error, "%s", j->status == LDM_OK ? "" : ldm_last_error());
    return NULL;
}

static void job_init(gen_job *j, ldm_model *m, int class_label, uint64_t seed)
{
    memset(j, 0, sizeof *j);
    j->model = m;
    ldm_generate_params_init(&j->params);
    j->params.class_label = class_label;
    j->params.seed = seed;
    j->params.steps = 4;
    j->params.guidance_scale = 3.0f;
}

START_TEST(two_models_two_threads_match_single_threaded_runs)
{
    ldm_model *m[2] = {demo(1), demo(2)};
    gen_job ref[2], par[2];
    /* single-threaded reference runs, one after the other */
    for (int i = 0; i < 2; i++) {
        job_init(&ref[i], m[i], 3 + i, 100 + (uint64_t)i);
        run_generate(&ref[i]);
        ck_assert_msg(ref[i].status == LDM_OK, "%s", ref[i].error);
    }
    ck_assert(!same(ref[0].image, ref[1].image));
    /* the same two calls at once, three times over (different interleavings) */
    for (int round = 0; round < 3; round++) {
        pthread_t th[2];
        for (int i = 0; i < 2; i++) {
            job_init(&par[i], m[i], 3 + i, 100 + (uint64_t)i);
            ck_assert_int_eq(pthread_create(&th[i], NULL, run_generate, &par[i]), 0);
        }
        for (int i = 0; i < 2; i++) ck_assert_int_eq(pthread_join(th[i], NULL), 0);
        for (int i = 0; i < 2; i++) {
            ck_assert_msg(par[i].status == LDM_OK, "%s", par[i].error);
            ck_assert_msg(same(par[i].image, ref[i].image), "round %d: model %d differs from its single-threaded run",
                          round, i);
            ldm_tensor_free(par[i].image);
        }
    }
    /* one failing, one succeeding at once: each thread sees its own error */
    job_init(&par[0], m[0], 3, 100);
    job_init(&par[1], m[1], 3, 100);
    par[1].params.steps = -5;
    pthread_t th[2];
    for (int i = 0; i < 2; i++) ck_assert_int_eq(pthread_create(&th[i], NULL, run_generate, &par[i]), 0);
    for (int i = 0; i < 2; i++) ck_assert_int_eq(pthread_join(th[i], NULL), 0);
    ck_assert_msg(par[0].status == LDM_OK && par[0].error[0] == '\0', "%s", par[0].error);
    ck_assert_int_ne(par[1].status, LDM_OK);
    ck_assert(par[1].error[0] != '\0');
    ldm_tensor_free(par[0].image);
    ldm_tensor_free(par[1].image);
    for (int i = 0; i < 2; i++) {
        ldm_tensor_free(ref[i].image);
        ldm_model_free(m[i]);
    }
}
END_TEST

/* ---------------------------------------------------------------- interrupting a UNet call */

typedef struct {
    ldm_model *model;
    const ldm_tensor *x, *t, *cond;
    ldm_tensor *out;
    ldm_status status;
    atomic_int started, finished;
    double t_end;
} apply_job;

static void *run_apply(void *arg)
{
    apply_job *j = arg;
    atomic_store(&j->started, 1);
    j->status = ldm_model_apply(j->model, j->x, j->t, j->cond, &j->out);
    j->t_end = now_s();
    atomic_store(&j->finished, 1);
    return NULL;
}

/* Interrupts `m` from this thread until `finished` is set: the first request may land before
 * the call has started (each call clears stale requests), so keep asking. Returns the time of the
 * first request. */
static double interrupt_until(ldm_model *m, atomic_int *finished)
{
    double t0 = now_s();
    while (!atomic_load(finished)) {
        ldm_model_interrupt(m);
        sleep_s(0.0005);
    }
    return t0;
}

START_TEST(interrupt_stops_a_unet_call_and_leaves_the_model_usable)
{
    ldm_model *m = demo(5);
    ldm_conditioner *cond = NULL;
    ldm_autoencoder *ae = NULL;
    ck_assert_int_eq(ldm_model_conditioner(m, &cond), LDM_OK);
    ck_assert_int_eq(ldm_model_autoencoder(m, &ae), LDM_OK);
    const int64_t B = 4;
    ldm_tensor *labels = NULL, *c = NULL, *x = NULL, *t = NULL;
    ck_assert_int_eq(ldm_tensor_create(LDM_I64, 1, &B, &labels), LDM_OK);
    for (int i = 0; i < B; i++) ((int64_t *)ldm_tensor_data(labels))[i] = i;
    ck_assert_msg(ldm_conditioner_encode_labels(cond, labels, &c) == LDM_OK, "%s", ldm_last_error());
    int64_t xs[4] = {B, ldm_autoencoder_latent_channels(ae), 48, 48};
    ck_assert_int_eq(ldm_tensor_create(LDM_F32, 4, xs, &x), LDM_OK);
    ck_assert_int_eq(ldm_randn(9, 0, x), LDM_OK);
    ck_assert_int_eq(ldm_tensor_create(LDM_I64, 1, &B, &t), LDM_OK);
    for (int i = 0; i < B; i++) ((int64_t *)ldm_tensor_data(t))[i] = 500 + 100 * i;

    ldm_tensor *ref = NULL;
    double t0 = now_s();
    ck_assert_msg(ldm_model_apply(m, x, t, c, &ref) == LDM_OK, "%s", ldm_last_error());
    double full = now_s() - t0;

    int cancelled = 0;
    for (int attempt = 0; attempt < 3 && !cancelled; attempt++) {
        apply_job j = {.model = m, .x = x, .t = t, .cond = c};
        pthread_t th;
        ck_assert_int_eq(pthread_create(&th, NULL, run_apply, &j), 0);
        while (!atomic_load(&j.started)) sleep_s(0.0002);
        sleep_s(full / 10);
        double t_int = interrupt_until(m, &j.finished);
        ck_assert_int_eq(pthread_join(th, NULL), 0);
        if (j.status == LDM_OK) { /* finished before the request: try again */
            ldm_tensor_free(j.out);
            continue;
        }
        ck_assert_msg(j.status == LDM_CANCELLED, "status %d: %s", j.status, ldm_last_error());
        ck_assert_ptr_null(j.out);
        double latency = j.t_end - t_int;
        /* it stopped well before an undisturbed call would have ended (0.9 of it was left); the
         * slack covers a loaded machine's scheduling delays */
        printf("UNet call: %.3f s undisturbed, stopped %.3f s after the interrupt\n", full, latency);
        ck_assert_msg(latency < 0.6 * full + 0.2, "cancel took %.3f s of a %.3f s call", latency, full);
        cancelled = 1;
    }
    ck_assert_msg(cancelled, "never cancelled in 3 attempts");

    /* the model works again, with the same result */
    ldm_tensor *again = NULL;
    ck_assert_msg(ldm_model_apply(m, x, t, c, &again) == LDM_OK, "%s", ldm_last_error());
    ck_assert(same(again, ref));
    ldm_tensor_free(again);
    ldm_tensor_free(ref);
    ldm_tensor_free(labels);
    ldm_tensor_free(c);
    ldm_tensor_free(x);
    ldm_tensor_free(t);
    ldm_model_free(m);
}
END_TEST

/* ---------------------------------------------------------------- interrupting ldm_generate */

typedef struct {
    gen_job job;
    atomic_int steps_done, finished;
    double t_end;
} cancel_gen;

static int count_steps(int step, int total, void *user)
{
    (void)total;
    atomic_store(&((cancel_gen *)user)->steps_done, step);
    return 0;
}

static void *run_cancel_gen(void *arg)
{
    cancel_gen *g = arg;
    run_generate(&g->job);
    g->t_end = now_s();
    atomic_store(&g->finished, 1);
    return NULL;
}

START_TEST(interrupt_stops_generate_and_leaves_the_model_usable)
{
    ldm_model *m = demo(6);
    const int steps = 30;
    gen_job ref;
    job_init(&ref, m, 7, 42);
    ref.params.steps = steps;
    double t0 = now_s();
    run_generate(&ref);
    double full = now_s() - t0;
    ck_assert_msg(ref.status == LDM_OK, "%s", ref.error);

    cancel_gen g;
    memset(&g, 0, sizeof g);
    job_init(&g.job, m, 7, 42);
    g.job.params.steps = steps;
    g.job.params.progress = count_steps;
    g.job.params.progress_user_data = &g;
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, run_cancel_gen, &g), 0);
    while (atomic_load(&g.steps_done) < 2 && !atomic_load(&g.finished)) sleep_s(0.0002);
    double t_int = interrupt_until(m, &g.finished);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_msg(g.job.status == LDM_CANCELLED, "status %d: %s", g.job.status, g.job.error);
    ck_assert_ptr_null(g.job.image);
    ck_assert_int_lt(atomic_load(&g.steps_done), steps);
    /* stops within about one step (one step is ~full/steps; allow three, and slack for a loaded
     * machine's scheduling delays, still far less than the ~28 steps left) */
    double latency = g.t_end - t_int;
    printf("ldm_generate: %.3f s for %d steps undisturbed, stopped %.3f s after the interrupt\n", full, steps, latency);
    ck_assert_msg(latency < 3.0 * full / steps + 0.3, "cancel took %.3f s; a step takes %.3f s", latency, full / steps);

    /* the next call runs to the end and gives the undisturbed result */
    gen_job again;
    job_init(&again, m, 7, 42);
    again.params.steps = steps;
    run_generate(&again);
    ck_assert_msg(again.status == LDM_OK, "%s", again.error);
    ck_assert(same(again.image, ref.image));
    ldm_tensor_free(again.image);
    ldm_tensor_free(ref.image);
    ldm_model_free(m);
}
END_TEST

/* An interrupt that arrives while no call runs is dropped when the next call starts (a stale
 * request must not cancel unrelated later work). */
START_TEST(stale_interrupt_does_not_cancel_the_next_call)
{
    ldm_model *m = demo(8);
    ldm_model_interrupt(m);
    gen_job j;
    job_init(&j, m, 1, 1);
    j.params.steps = 2;
    run_generate(&j);
    ck_assert_msg(j.status == LDM_OK, "%s", j.error);
    ldm_tensor_free(j.image);
    ldm_model_free(m);
}
END_TEST

static Suite *concurrency_suite(void)
{
    Suite *s = suite_create("concurrency");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, two_models_two_threads_match_single_threaded_runs);
    tcase_add_test(tc, interrupt_stops_a_unet_call_and_leaves_the_model_usable);
    tcase_add_test(tc, interrupt_stops_generate_and_leaves_the_model_usable);
    tcase_add_test(tc, stale_interrupt_does_not_cancel_the_next_call);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return ck_run_suite(concurrency_suite());
}
