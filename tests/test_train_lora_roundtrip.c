/* test_train_lora_roundtrip.c - a LoRA trained with ldm_trainer, used by the rest of the library,
 * on the tiny SD 1.x-style model of the shared fixture ldm_sd1_txt2img (FrozenCLIPEmbedder,
 * SpatialTransformer UNet whose config sets use_checkpoint: true) and 8x8 captioned images:
 *  - activation checkpointing keeps the adapters: 3 LoRA steps with use_checkpoint (every UNet
 *    block recomputed in backward), without it, and without it under a memory budget (some
 *    blocks recomputed) give bit-identical adapters;
 *  - the round trip: after a few LoRA steps, the exported kohya file (float32 and float16) loaded
 *    onto the base checkpoint with ldm_model_load + ldm_model_lora_add (lib/api/lora.c) gives
 *    the UNet output of the training-time adapted forward (ltn_unet_forward_lora with the
 *    trainer's parameters), i.e. the merge W + (alpha / r) up . down of the loader is the
 *    adapter arithmetic of the trainer, under the kohya names of the file;
 *  - a learned logvar stays frozen in a LoRA run (it is part of the base).
 * Needs $LDM_SHARED (fixture and vocab): SKIPPED loudly without it. */
#include <check.h>

#pragma GCC diagnostic ignored "-Wformat-truncation"
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/weights.h"
#include "ldm.h"
#include "support/ck_fixture.h"
#include "support/ck_rand.h"
#include "support/ck_run.h"
#include "support/ck_train.h"
#include "train/lora.h"
#include "train/nets.h"
#include "train/trainer_internal.h"

#define UP "model.diffusion_model."

static char root[512], fixture[4096], vocab[4096], base_ckpt[4200];
static int have_shared;

/* The fixture's config for training with `lora` at the top level: see ck_train_sd1_config. */
static void write_config(const char *path, const char *lora, int use_checkpoint, const char *model_extra)
{
    ck_train_sd1_config(fixture, path, model_extra, lora, use_checkpoint);
}

static void setup(void)
{
    have_shared = ck_train_sd1_setup(root, "lora-roundtrip", fixture, vocab, base_ckpt);
}

static void teardown(void)
{
    ck_train_root_remove(root);
}

static ldm_train_params params_for(const char *out)
{
    ldm_train_params p = ck_train_params(root, out, 5);
    p.init_from = base_ckpt, p.vocab_path = vocab;
    return p;
}

/* Every adapter value of a trainer, in parameter order. */
static float *adapters_of(const ldm_trainer *t, size_t *n)
{
    *n = 0;
    float *all = NULL;
    for (size_t i = 0; i < ltp_params_count(t->ps); i++) {
        const ltp_param *p = ltp_params_at(t->ps, i);
        if (strncmp(p->name, LTR_LORA_PARAM_PREFIX, strlen(LTR_LORA_PARAM_PREFIX))) continue;
        all = realloc(all, (*n + p->n) * sizeof(float));
        memcpy(all + *n, p->data, p->n * sizeof(float));
        *n += p->n;
    }
    return all;
}

START_TEST(checkpointing_keeps_adapters)
{
    if (!have_shared) return;
    static const char *what[3] = {"use_checkpoint", "no checkpointing", "memory budget"};
    float *a[3];
    size_t n[3];
    int segs[3], dropped[3];
    for (int mode = 0; mode < 3; mode++) {
        char cfg[700], out[16];
        snprintf(cfg, sizeof cfg, "%s/ck%d.yaml", root, mode);
        write_config(cfg, "lora: {rank: 4, alpha: 2}\n", mode == 0, NULL);
        snprintf(out, sizeof out, "ck%d", mode);
        ldm_train_params p = params_for(out);
        p.learning_rate = 1e-2;
        if (mode == 2) p.max_activation_bytes = 800 << 10; /* some blocks over it */
        ldm_trainer *t = NULL;
        ck_assert_msg(ldm_trainer_create(cfg, &p, &t) == LDM_OK, "%s: %s", what[mode], ldm_last_error());
        ck_assert_msg(ldm_trainer_step(t, 3) == LDM_OK, "%s: %s", what[mode], ldm_last_error());
        segs[mode] = ltp_segments(t->tape, &dropped[mode]);
        a[mode] = adapters_of(t, &n[mode]);
        ldm_trainer_free(t);
    }
    printf("LoRA with checkpointing: %zu adapter values after 3 steps; UNet blocks recomputed: %d of %d "
           "(use_checkpoint), %d of %d (no checkpointing), %d of %d (budget 800 KiB)\n",
           n[0], dropped[0], segs[0], dropped[1], segs[1], dropped[2], segs[2]);
    ck_assert_msg(segs[0] > 0 && dropped[0] == segs[0], "use_checkpoint recomputed %d of %d", dropped[0], segs[0]);
    ck_assert_int_eq(segs[1], 0);
    ck_assert_msg(dropped[2] > 0 && dropped[2] < segs[2], "the budget recomputed %d of %d", dropped[2], segs[2]);
    ck_assert_uint_gt(n[0], 0);
    double moved = 0; /* lora_up starts at zero: the steps must have trained it */
    for (size_t i = 0; i < n[0]; i++) moved = fmax(moved, fabs(a[0][i]));
    ck_assert(moved > 0);
    for (int mode = 1; mode < 3; mode++) {
        ck_assert_uint_eq(n[mode], n[0]);
        ck_assert_msg(!memcmp(a[0], a[mode], n[0] * sizeof(float)), "adapters with %s differ from %s", what[mode],
                      what[0]);
    }
    for (int mode = 0; mode < 3; mode++) free(a[mode]);
}
END_TEST

/* A learned logvar (learn_logvar) belongs to the base model: a LoRA run keeps it frozen at its
 * value (logvar_init here, the base checkpoint has none) while the adapters train. */
START_TEST(lora_freezes_learned_logvar)
{
    if (!have_shared) return;
    char cfg[700];
    snprintf(cfg, sizeof cfg, "%s/lv.yaml", root);
    write_config(cfg, "lora: {rank: 2}\n", 0,
                 "    learn_logvar: true\n    logvar_init: -0.5\n    original_elbo_weight: 0.3\n");
    ldm_train_params p = params_for("lv");
    p.learning_rate = 1e-2;
    ldm_trainer *t = NULL;
    ck_assert_msg(ldm_trainer_create(cfg, &p, &t) == LDM_OK, "%s", ldm_last_error());
    const ltp_param *lv = ltp_params_find(t->ps, "logvar");
    ck_assert_ptr_nonnull(lv);
    ck_assert(!lv->trainable && lv->grad == NULL);
    size_t trainable = 0;
    for (size_t i = 0; i < ltp_params_count(t->ps); i++) {
        const ltp_param *q = ltp_params_at(t->ps, i);
        if (!q->trainable) continue;
        ck_assert_msg(!strncmp(q->name, LTR_LORA_PARAM_PREFIX, strlen(LTR_LORA_PARAM_PREFIX)), "%s trains", q->name);
        trainable++;
    }
    ck_assert_uint_eq(trainable, 2 * 4 * 12);
    ck_assert_msg(ldm_trainer_step(t, 2) == LDM_OK, "%s", ldm_last_error());
    for (size_t i = 0; i < lv->n; i++) ck_assert_msg(lv->data[i] == -0.5f, "logvar[%zu] = %g", i, lv->data[i]);
    ldm_trainer_free(t);
}
END_TEST

/* ---------------------------------------------------------------- round trip */

typedef struct probe {
    int B, T;
    float x[2 * 4 * 8 * 8], ctx[2 * 5 * 16], tf[2];
    int64_t ts[2];
} probe;

/* The training tape's UNet output on the probe with the trainer's parameters (lora NULL: the
 * base), into out. */
static void tape_forward(ldm_trainer *t, const probe *pr, const ltr_lora *lora, float *out, size_t n)
{
    ltp_tape *tape;
    ck_assert_int_eq(ltp_tape_create(NULL, &tape), LDM_OK);
    int64_t xs[4] = {pr->B, 4, 8, 8}, cs[3] = {pr->B, pr->T, 16};
    ltp_id x = ltp_input(tape, 4, xs, pr->x, 0), c = ltp_input(tape, 3, cs, pr->ctx, 0);
    ltp_id y = ltn_unet_forward_lora(tape, t->ps, UP, &t->cfg.model.unet, x, pr->tf, c, -1, lora);
    ck_assert_msg(y >= 0, "%s", ltp_error(tape));
    ck_assert_uint_eq(ltp_numel(tape, y), n);
    memcpy(out, ltp_data(tape, y), n * sizeof(float));
    ltp_tape_free(tape);
}

/* ldm_model_apply on the probe (the model as loaded, LoRAs merged), into out. */
static void model_forward(ldm_model *m, const probe *pr, float *out, size_t n)
{
    int64_t xs[4] = {pr->B, 4, 8, 8}, cs[3] = {pr->B, pr->T, 16}, tsh[1] = {pr->B};
    ldm_tensor *x = NULL, *c = NULL, *ts = NULL, *y = NULL;
    ck_assert_int_eq(ldm_tensor_wrap(LDM_F32, 4, xs, (void *)pr->x, &x), LDM_OK);
    ck_assert_int_eq(ldm_tensor_wrap(LDM_F32, 3, cs, (void *)pr->ctx, &c), LDM_OK);
    ck_assert_int_eq(ldm_tensor_wrap(LDM_I64, 1, tsh, (void *)pr->ts, &ts), LDM_OK);
    ck_assert_msg(ldm_model_apply(m, x, ts, c, &y) == LDM_OK, "%s", ldm_last_error());
    ck_assert_uint_eq((size_t)ldm_tensor_numel(y), n);
    memcpy(out, ldm_tensor_data(y), n * sizeof(float));
    ldm_tensor_free(x), ldm_tensor_free(c), ldm_tensor_free(ts), ldm_tensor_free(y);
}

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

static double max_abs(const float *a, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(a[i]));
    return m;
}

/* Replaces every adapter of the trainer by its value in the kohya file `path` (float16 ones
 * widened): the trainer then computes with exactly what the file holds. */
static void adapters_from_file(ldm_trainer *t, const char *path)
{
    lw_store *s = NULL;
    ck_assert_int_eq(lw_open(path, 0, &s), LDM_OK);
    char module[LTP_NAME_MAX], stem[300], key[340];
    size_t off = strlen(LTR_LORA_PARAM_PREFIX UP), done = 0;
    for (size_t i = 0; i < ltp_params_count(t->ps); i++) {
        ltp_param *p = ltp_params_at(t->ps, i);
        const char *suf = strstr(p->name, ".lora_down.weight");
        int down = suf != NULL;
        if (!suf) suf = strstr(p->name, ".lora_up.weight");
        if (!suf || strncmp(p->name, LTR_LORA_PARAM_PREFIX UP, off)) continue;
        snprintf(module, sizeof module, "%.*s", (int)(suf - p->name - off), p->name + off);
        ck_assert(ltr_lora_kohya_name(&t->cfg.model.unet, module, stem, sizeof stem));
        snprintf(key, sizeof key, "%s.%s.weight", stem, down ? "lora_down" : "lora_up");
        float *v = NULL;
        ck_assert_msg(lw_get_f32(s, key, -1, NULL, &v) == LDM_OK, "%s", ldm_last_error());
        memcpy(p->data, v, p->n * sizeof(float));
        ldm_free(v);
        done++;
    }
    ck_assert_uint_eq(done, lw_count(s) / 3 * 2); /* down + up of every module; .alpha the third */
    lw_close(s);
}

START_TEST(exported_lora_loads_as_trained)
{
    if (!have_shared) return;
    char cfg[700], f32[800], f16[800];
    snprintf(cfg, sizeof cfg, "%s/rt.yaml", root);
    write_config(cfg, "lora: {rank: 4, alpha: 2}\n", 1, NULL); /* scale 0.5: alpha must be applied */
    ldm_train_params p = params_for("rt");
    p.learning_rate = 1e-2;
    ldm_trainer *t = NULL;
    ck_assert_msg(ldm_trainer_create(cfg, &p, &t) == LDM_OK, "%s", ldm_last_error());
    ck_assert_msg(ldm_trainer_step(t, 10) == LDM_OK, "%s", ldm_last_error());
    snprintf(f32, sizeof f32, "%s/rt/lora-f32.safetensors", root);
    snprintf(f16, sizeof f16, "%s/rt/lora-f16.safetensors", root);
    ck_assert_msg(ldm_trainer_export(t, f32, 0) == LDM_OK, "%s", ldm_last_error());
    ck_assert_msg(ldm_trainer_export(t, f16, 1) == LDM_OK, "%s", ldm_last_error());

    probe pr = {.B = 2, .T = 5, .ts = {40, 730}};
    for (size_t i = 0; i < sizeof pr.x / sizeof *pr.x; i++) pr.x[i] = frand();
    for (size_t i = 0; i < sizeof pr.ctx / sizeof *pr.ctx; i++) pr.ctx[i] = frand();
    pr.tf[0] = 40.0f, pr.tf[1] = 730.0f;
    size_t n = sizeof pr.x / sizeof *pr.x;
    float *base = malloc(n * sizeof(float)), *adapted = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
    tape_forward(t, &pr, NULL, base, n);
    tape_forward(t, &pr, &t->lora, adapted, n);
    double scale = fmax(1.0, max_abs(adapted, n)), effect = max_abs_diff(adapted, base, n);

    ldm_model_params mp;
    ldm_model_params_init(&mp);
    mp.vocab_path = vocab;
    ldm_model *m = NULL;
    ck_assert_msg(ldm_model_load(base_ckpt, &mp, &m) == LDM_OK, "%s", ldm_last_error());
    model_forward(m, &pr, got, n);
    double err_base = max_abs_diff(got, base, n); /* inference UNet vs training tape, same weights */

    /* float32 file: the adapters exactly as trained */
    int id = 0;
    ck_assert_msg(ldm_model_lora_add(m, f32, 1.0, 0, &id) == LDM_OK, "%s", ldm_last_error());
    ldm_lora_info info = {.struct_size = sizeof info};
    ck_assert_int_eq(ldm_model_lora_get(m, 0, &info), LDM_OK);
    ck_assert(id > 0 && info.id == id && info.n_skipped_keys == 0);
    model_forward(m, &pr, got, n);
    double err32 = max_abs_diff(got, adapted, n);

    /* float16 file: against the trainer computing with the file's rounded values, and against
     * the unrounded adapters */
    ck_assert_int_eq(ldm_model_lora_clear(m), LDM_OK);
    ck_assert_msg(ldm_model_lora_add(m, f16, 1.0, 0, NULL) == LDM_OK, "%s", ldm_last_error());
    float *got16 = malloc(n * sizeof(float)), *rounded = malloc(n * sizeof(float));
    model_forward(m, &pr, got16, n);
    double err16_unrounded = max_abs_diff(got16, adapted, n);
    adapters_from_file(t, f16);
    tape_forward(t, &pr, &t->lora, rounded, n);
    double err16 = max_abs_diff(got16, rounded, n), rounding = max_abs_diff(rounded, adapted, n);
    ldm_model_free(m);

    /* the same adapters merged by the trainer (ltr_lora_merge: W += (alpha / r) up . down) and
     * exported as a whole model: the inference UNet on both sides, only the merge's rounding */
    adapters_from_file(t, f32); /* the exact trained values again */
    ck_assert_int_eq(ltr_lora_merge(t->ps, UP, &t->lora, t->ps), LDM_OK);
    int rank = t->lora.rank;
    t->lora.rank = 0; /* export the model itself */
    char merged[800], config[4300];
    snprintf(merged, sizeof merged, "%s/rt/merged.safetensors", root);
    snprintf(config, sizeof config, "%s/config.yaml", fixture);
    ck_assert_msg(ldm_trainer_export(t, merged, 0) == LDM_OK, "%s", ldm_last_error());
    mp.config_path = config;
    ck_assert_msg(ldm_model_load(merged, &mp, &m) == LDM_OK, "%s", ldm_last_error());
    float *gotm = malloc(n * sizeof(float));
    model_forward(m, &pr, gotm, n);
    double err_merged = max_abs_diff(got, gotm, n);

    printf("LoRA round trip (%d UNet layers, rank %d, alpha %g, 10 steps): adapters change the output by %.3g "
           "(max |out| %.3g). ldm_model_load + ldm_model_lora_add vs the training-time adapted forward: base "
           "%.3g, float32 file %.3g, float16 file %.3g vs its rounded adapters (%.3g vs the unrounded ones; the "
           "float16 rounding itself moves the output by %.3g); float32 file vs the trainer's merged model %.3g\n",
           info.n_unet_layers, rank, t->lora.alpha, effect, max_abs(adapted, n), err_base, err32, err16,
           err16_unrounded, rounding, err_merged);
    /* the training tape and the inference UNet: the same float32 arithmetic with different kernels
     * (and W x + s up(down x) vs (W + s up.down) x): rounding only; test_train_nets.c holds the two
     * UNets to 2e-5 of the output's scale, measured here ~2e-6 */
    double tol_tape = 1e-5 * scale;
    ck_assert_msg(err_base <= tol_tape, "the base: %g > %g", err_base, tol_tape);
    ck_assert_msg(err32 <= tol_tape, "float32 LoRA: %g > %g", err32, tol_tape);
    ck_assert_msg(err16 <= tol_tape, "float16 LoRA vs its own rounded adapters: %g > %g", err16, tol_tape);
    /* float16 keeps 11 significant bits: up and down each within 2^-11 relative, their product
     * within ~2^-10, so the adapters' effect within about 1e-3 of itself */
    double tol16 = 1e-3 * effect + tol_tape;
    ck_assert_msg(err16_unrounded <= tol16, "float16 LoRA vs the trained adapters: %g > %g", err16_unrounded, tol16);
    /* the same UNet on weights merged by two codes, whose roundings differ by an ulp of a weight
     * here and there (measured ~1e-6 of outputs of ~1.6) */
    double tol_merge = 2e-6 * scale;
    ck_assert_msg(err_merged <= tol_merge, "float32 LoRA vs the merged model: %g > %g", err_merged, tol_merge);
    /* the test has teeth: the adapters move the output far beyond these tolerances */
    ck_assert_msg(effect > 100 * tol_tape, "the adapters hardly change the output (%g)", effect);
    ck_assert_int_eq(info.n_unet_layers, 4 * 12); /* 4 SpatialTransformers (down, mid, 2 up) x 12 layers */
    ck_assert_int_eq(info.n_text_layers, 0);
    free(got16), free(gotm);
    free(base), free(adapted), free(got), free(rounded);
    ldm_model_free(m);
    ldm_trainer_free(t);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("train_lora_roundtrip");
    TCase *tc = tcase_create("roundtrip");
    tcase_set_timeout(tc, 600);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, checkpointing_keeps_adapters);
    tcase_add_test(tc, exported_lora_loads_as_trained);
    tcase_add_test(tc, lora_freezes_learned_logvar);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return ck_run_suite(suite());
}
