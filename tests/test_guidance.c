/* test_guidance.c - classifier-free guidance of class-conditional models (issue #12): the
 * unconditional class (n_classes - 1 by default, none with `ucg_rate: 0`, or the caller's
 * uncond_class), ldm_generate against a manual loop through the component API, the errors for
 * guidance or missing labels a model cannot serve, ldm_generate_params_resolve, and the config
 * found beside a checkpoint. The class models are small seeded networks built from a YAML config
 * with 63 classes (62 real ones + the "no class" one), so nothing here needs a fixture; the
 * families that do (text, unconditional, concat) are skipped without LDM_SHARED. */
#include <check.h>

#include "api/pipeline_internal.h"
#include "core/tensor.h"
#include "models/config.h"
#include "support/ck_fixture.h"
#include "support/ck_run.h"
#include "support/ck_tmpdir.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- models */

/* A tiny LDM like the built-in "demo" (KL-f4, 2-level UNet with cross-attention on the class
 * embedding, 32x32 images), with the ClassEmbedder params given by the test. */
static const char class_yaml[] =
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
    "      params: {image_size: 8, in_channels: 3, out_channels: 3, model_channels: 32, attention_resolutions: [2],\n"
    "               num_res_blocks: 1, channel_mult: [1, 2], num_heads: 4, use_spatial_transformer: true,\n"
    "               transformer_depth: 1, context_dim: 32}\n"
    "    first_stage_config:\n"
    "      target: ldm.models.autoencoder.AutoencoderKL\n"
    "      params:\n"
    "        embed_dim: 3\n"
    "        ddconfig: {double_z: true, z_channels: 3, resolution: 32, in_channels: 3, out_ch: 3, ch: 32,\n"
    "                   ch_mult: [1, 2, 2], num_res_blocks: 1, attn_resolutions: []}\n"
    "        lossconfig: {target: torch.nn.Identity}\n"
    "    cond_stage_config:\n"
    "      target: ldm.modules.encoders.modules.ClassEmbedder\n"
    "      params: {embed_dim: 32, key: class_label, %s}\n";

#define N_CLASSES 63
#define UNCOND (N_CLASSES - 1)
#define STEPS 4

/* The model of class_yaml with `cond_params` and seeded weights, as ldm_model_load_builtin builds
 * its models (a synthetic store answers every tensor the networks ask for). */
static ldm_model *class_model(const char *cond_params)
{
    char yaml[4096];
    snprintf(yaml, sizeof yaml, class_yaml, cond_params);
    ldm_model_params mp, p;
    ldm_model_params_init(&mp);
    mp.n_threads = fx_threads();
    ldm_model *m = NULL;
    ck_assert(lm_model_new("test:class63", &mp, &m, &p) == LDM_OK);
    ldm_status st = ld_config_parse(yaml, strlen(yaml), "class63.yaml", &m->desc);
    ck_assert_msg(st == LDM_OK, "config: %s", ldm_last_error());
    ck_assert(lw_store_create("test:class63", &m->store) == LDM_OK);
    lw_store_set_synthetic(m->store, 12);
    ck_assert(lw_store_seal(m->store) == LDM_OK);
    st = lm_load_from(m, &p);
    ck_assert_msg(st == LDM_OK, "load: %s", ldm_last_error());
    return m;
}

static ldm_model *model_with_uncond(void) { return class_model("n_classes: 63, ucg_rate: 0.1"); }
static ldm_model *model_without_uncond(void) { return class_model("n_classes: 63, ucg_rate: 0"); }

/* ---------------------------------------------------------------- helpers */

static ldm_generate_params params_for(int label, float scale)
{
    ldm_generate_params p;
    ldm_generate_params_init(&p);
    p.class_label = label;
    p.guidance_scale = scale;
    p.steps = STEPS;
    p.seed = 77;
    return p;
}

static ldm_tensor *generate_ok(ldm_model *m, const ldm_generate_params *p)
{
    ldm_tensor *img = NULL;
    ldm_status st = ldm_generate(m, p, &img);
    ck_assert_msg(st == LDM_OK, "ldm_generate: %s (%s)", ldm_status_string(st), ldm_last_error());
    return img;
}

static double max_abs_diff(const ldm_tensor *a, const ldm_tensor *b)
{
    ck_assert_int_eq(lt_numel(a), lt_numel(b));
    double d = 0;
    for (int64_t i = 0; i < lt_numel(a); i++) d = fmax(d, fabs((double)lt_f32(a)[i] - lt_f32(b)[i]));
    return d;
}

static ldm_tensor *labels_embedding(ldm_model *m, int label)
{
    ldm_conditioner *cond;
    ldm_tensor *labels = NULL, *out = NULL;
    int64_t one = 1;
    ck_assert(ldm_model_conditioner(m, &cond) == LDM_OK);
    ck_assert(ldm_tensor_create(LDM_I64, 1, &one, &labels) == LDM_OK);
    lt_i64(labels)[0] = label;
    ck_assert_msg(ldm_conditioner_encode_labels(cond, labels, &out) == LDM_OK, "%s", ldm_last_error());
    ldm_tensor_free(labels);
    return out;
}

static ldm_tensor *apply_ok(ldm_model *m, const ldm_tensor *x, double t, const ldm_tensor *c)
{
    int64_t one = 1;
    ldm_tensor *ts = NULL, *out = NULL;
    ck_assert(ldm_tensor_create(LDM_F32, 1, &one, &ts) == LDM_OK);
    lt_f32(ts)[0] = (float)t;
    ck_assert_msg(ldm_model_apply(m, x, ts, c, &out) == LDM_OK, "%s", ldm_last_error());
    ldm_tensor_free(ts);
    return out;
}

/* What guidance means, written out with the component API and no batching: every step's output
 * is uncond_out + s * (cond_out - uncond_out), cond/uncond the embeddings of `label` and
 * `uncond`, then the decoded image. x_T and the sampler as ldm_generate draws them. */
static ldm_tensor *manual_guided(ldm_model *m, int label, int uncond, float s, uint64_t seed)
{
    ldm_tensor *c = labels_embedding(m, label), *u = labels_embedding(m, uncond), *x_T = NULL, *img = NULL;
    int64_t shape[4] = {1, 3, 8, 8};
    ck_assert(ldm_tensor_create(LDM_F32, 4, shape, &x_T) == LDM_OK);
    ck_assert(ldm_randn(seed, 0, x_T) == LDM_OK);
    ldm_sampler_params sp;
    ldm_sampler_params_init(&sp);
    sp.steps = STEPS;
    sp.seed = seed;
    ldm_sampler *smp = NULL;
    ck_assert(ldm_model_sampler(m, &sp, &smp) == LDM_OK);
    ck_assert(ldm_sampler_begin(smp, x_T) == LDM_OK);
    const ldm_tensor *x;
    double t;
    int r;
    while ((r = ldm_sampler_next(smp, &x, &t)) == 1) {
        ldm_tensor *oc = apply_ok(m, x, t, c), *ou = apply_ok(m, x, t, u);
        for (int64_t i = 0; i < lt_numel(oc); i++)
            lt_f32(oc)[i] = lt_f32(ou)[i] + s * (lt_f32(oc)[i] - lt_f32(ou)[i]);
        ck_assert(ldm_sampler_give(smp, oc) == LDM_OK);
        ldm_tensor_free(oc);
        ldm_tensor_free(ou);
    }
    ck_assert_int_eq(r, 0);
    ck_assert_msg(ldm_model_decode_latent(m, ldm_sampler_current(smp), &img) == LDM_OK, "%s", ldm_last_error());
    ldm_sampler_free(smp);
    ldm_tensor_free(x_T);
    ldm_tensor_free(c);
    ldm_tensor_free(u);
    return img;
}

/* Batched (ldm_generate) and separate (manual) network calls round differently in the last bits. */
#define TOL 2e-4

static void expect_error(ldm_model *m, const ldm_generate_params *p, const char *const *phrases)
{
    ldm_tensor *img = NULL;
    ldm_generate_params r;
    ck_assert_int_eq(ldm_generate(m, p, &img), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(img);
    for (int i = 0; phrases[i]; i++)
        ck_assert_msg(strstr(ldm_last_error(), phrases[i]), "'%s' not in: %s", phrases[i], ldm_last_error());
    /* resolve refuses it with the same message */
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", ldm_last_error());
    ldm_clear_error();
    ck_assert_int_eq(ldm_generate_params_resolve(m, p, &r), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_str_eq(ldm_last_error(), msg);
}

/* ---------------------------------------------------------------- (a) (b) guidance is applied */

START_TEST(guidance_scale_changes_the_result)
{
    ldm_model *m = model_with_uncond();
    ldm_generate_params p1 = params_for(5, 1.0f), p3 = params_for(5, 3.0f);
    ldm_tensor *g1 = generate_ok(m, &p1), *g3 = generate_ok(m, &p3);
    ck_assert_msg(max_abs_diff(g1, g3) > 1e-3, "scale 3 gave the scale-1 image: guidance was not applied");
    ldm_tensor_free(g1);
    ldm_tensor_free(g3);
    ldm_model_free(m);
}
END_TEST

START_TEST(generate_equals_manual_guided_loop)
{
    ldm_model *m = model_with_uncond();
    ldm_generate_params p = params_for(5, 3.0f);
    ldm_tensor *g = generate_ok(m, &p), *ref = manual_guided(m, 5, UNCOND, 3.0f, p.seed);
    ck_assert_msg(max_abs_diff(g, ref) < TOL, "ldm_generate vs manual loop: %g", max_abs_diff(g, ref));
    /* the default scale (0) of a class model with an unconditional class is 3 */
    p.guidance_scale = 0.0f;
    ldm_tensor *d = generate_ok(m, &p);
    ck_assert_double_eq(max_abs_diff(d, g), 0.0);
    /* no class label: the unconditional class, sampled as any other class */
    p.class_label = -1;
    ldm_tensor *u = generate_ok(m, &p), *uref = manual_guided(m, UNCOND, UNCOND, 3.0f, p.seed);
    ck_assert_msg(max_abs_diff(u, uref) < TOL, "unconditional sample vs manual: %g", max_abs_diff(u, uref));
    ldm_tensor *all[] = {g, ref, d, u, uref};
    for (size_t i = 0; i < 5; i++) ldm_tensor_free(all[i]);
    ldm_model_free(m);
}
END_TEST

/* A config without ucg_rate (cin256-v2's) has the extra class too. */
START_TEST(config_without_ucg_rate_has_the_extra_class)
{
    ldm_model *m = class_model("n_classes: 63");
    ldm_generate_params p = params_for(5, 2.0f);
    ldm_tensor *g = generate_ok(m, &p), *ref = manual_guided(m, 5, UNCOND, 2.0f, p.seed);
    ck_assert_msg(max_abs_diff(g, ref) < TOL, "%g", max_abs_diff(g, ref));
    ck_assert_ptr_nonnull(strstr(ldm_model_describe(m), "unconditional class 62"));
    ldm_tensor_free(g);
    ldm_tensor_free(ref);
    ldm_model_free(m);
}
END_TEST

/* ---------------------------------------------------------------- (c) the override */

START_TEST(uncond_class_override)
{
    ldm_model *m = model_with_uncond();
    ldm_generate_params p = params_for(5, 3.0f);
    ldm_tensor *auto_img = generate_ok(m, &p);
    p.uncond_class = 7;
    ldm_tensor *g = generate_ok(m, &p), *ref = manual_guided(m, 5, 7, 3.0f, p.seed);
    ck_assert_msg(max_abs_diff(g, auto_img) > 1e-3, "uncond_class 7 gave the class-62 result");
    ck_assert_msg(max_abs_diff(g, ref) < TOL, "uncond_class 7 vs manual loop: %g", max_abs_diff(g, ref));
    /* it also stands for "no class" */
    p.class_label = -1;
    ldm_tensor *u = generate_ok(m, &p), *uref = manual_guided(m, 7, 7, 3.0f, p.seed);
    ck_assert_msg(max_abs_diff(u, uref) < TOL, "%g", max_abs_diff(u, uref));
    /* an override names a class of the model (the message gives the range) */
    p.uncond_class = N_CLASSES;
    expect_error(m, &p, (const char *const[]){"uncond_class 63", "0..62", NULL});
    p.uncond_class = -3;
    expect_error(m, &p, (const char *const[]){"uncond_class -3", "0..62", NULL});
    /* a model declared without one can be given one */
    ldm_model *n = model_without_uncond();
    ldm_generate_params q = params_for(5, 3.0f);
    q.uncond_class = UNCOND;
    ldm_tensor *gn = generate_ok(n, &q), *nref = manual_guided(n, 5, UNCOND, 3.0f, q.seed);
    ck_assert_msg(max_abs_diff(gn, nref) < TOL, "%g", max_abs_diff(gn, nref));
    ldm_tensor *all[] = {auto_img, g, ref, u, uref, gn, nref};
    for (size_t i = 0; i < 7; i++) ldm_tensor_free(all[i]);
    ldm_model_free(m);
    ldm_model_free(n);
}
END_TEST

/* ---------------------------------------------------------------- (d) no unconditional class */

static void refuses_guidance_and_missing_label(ldm_model *m, int uncond_class, const char *reason)
{
    ldm_generate_params p = params_for(5, 3.0f);
    p.uncond_class = uncond_class;
    expect_error(m, &p, (const char *const[]){"guidance_scale 3", "unconditional class", reason, "uncond_class", NULL});
    p.class_label = -1;
    p.guidance_scale = 1.0f;
    expect_error(m, &p, (const char *const[]){"class label", "this model's classes are 0..62", reason, NULL});
    /* the default scale is 1 there, and a labelled sample works */
    p.class_label = 5;
    p.guidance_scale = 0.0f;
    ldm_generate_params r;
    ck_assert_msg(ldm_generate_params_resolve(m, &p, &r) == LDM_OK, "%s", ldm_last_error());
    ck_assert(r.guidance_scale == 1.0f);
    ck_assert_int_eq(r.uncond_class, LDM_UNCOND_CLASS_NONE);
    ldm_tensor *img = generate_ok(m, &p);
    ldm_tensor_free(img);
}

START_TEST(no_uncond_class_refuses_guidance)
{
    ldm_model *m = model_without_uncond();
    ck_assert_ptr_nonnull(strstr(ldm_model_describe(m), "no unconditional class"));
    refuses_guidance_and_missing_label(m, LDM_UNCOND_CLASS_AUTO, "ucg_rate: 0");
    ldm_model_free(m);
    m = model_with_uncond();
    refuses_guidance_and_missing_label(m, LDM_UNCOND_CLASS_NONE, "LDM_UNCOND_CLASS_NONE");
    ldm_model_free(m);
    /* one class: nothing to stand for "no class" */
    m = class_model("n_classes: 1");
    ldm_generate_params p = params_for(0, 2.0f);
    expect_error(m, &p, (const char *const[]){"single class", NULL});
    ldm_model_free(m);
}
END_TEST

/* ---------------------------------------------------------------- (e) resolve */

START_TEST(resolve_reports_what_runs)
{
    ldm_model *m = model_with_uncond();
    ldm_generate_params p, r;
    ldm_generate_params_init(&p);
    ck_assert(p.guidance_scale == 0.0f);
    ck_assert_int_eq(p.uncond_class, LDM_UNCOND_CLASS_AUTO);
    p.steps = STEPS;
    ck_assert_msg(ldm_generate_params_resolve(m, &p, &r) == LDM_OK, "%s", ldm_last_error());
    ck_assert(r.guidance_scale == 3.0f);
    ck_assert_int_eq(r.uncond_class, UNCOND);
    ck_assert_int_eq(r.class_label, UNCOND);
    ck_assert_int_eq(r.width, 32);
    ck_assert_int_eq(r.height, 32);
    ck_assert_int_eq(r.steps, STEPS);
    ck_assert_uint_eq(r.struct_size, sizeof r);
    /* the resolved struct runs exactly what the original did */
    ldm_tensor *a = generate_ok(m, &p), *b = generate_ok(m, &r);
    ck_assert_double_eq(max_abs_diff(a, b), 0.0);
    ck_assert_int_eq(ldm_tensor_dim(a, 2), r.height);
    ck_assert_int_eq(ldm_tensor_dim(a, 3), r.width);
    /* explicit values are kept; a size is rounded to nothing (it must already fit) */
    p.class_label = 4;
    p.guidance_scale = 1.5f;
    p.uncond_class = 9;
    p.width = 64;
    ck_assert(ldm_generate_params_resolve(m, &p, &r) == LDM_OK);
    ck_assert(r.guidance_scale == 1.5f);
    ck_assert_int_eq(r.uncond_class, 9);
    ck_assert_int_eq(r.class_label, 4);
    ck_assert_int_eq(r.width, 64);
    ck_assert_int_eq(r.height, 32);
    /* in place */
    ck_assert(ldm_generate_params_resolve(m, &p, &p) == LDM_OK);
    ck_assert_int_eq(p.height, 32);
    /* a class out of range: the message names the range */
    p.class_label = N_CLASSES;
    expect_error(m, &p, (const char *const[]){"class label 63", "0..62", NULL});
    ldm_tensor_free(a);
    ldm_tensor_free(b);
    ldm_model_free(m);
}
END_TEST

/* Every other family: guidance where the model has an unconditional input, else an error. */
static ldm_model *fixture_model(const char *name)
{
    char dir[1024], weights[1200], config[1200], vocab[1200];
    if (!fixture_dir(name, dir, sizeof dir)) return NULL;
    snprintf(weights, sizeof weights, "%s/model.safetensors", dir);
    snprintf(config, sizeof config, "%s/config.yaml", dir);
    snprintf(vocab, sizeof vocab, "%s/vocab", fx_shared_dir());
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    mp.config_path = config;
    mp.vocab_path = vocab;
    mp.n_threads = fx_threads();
    ldm_model *m = NULL;
    ck_assert_msg(ldm_model_load(weights, &mp, &m) == LDM_OK, "%s: %s", weights, ldm_last_error());
    return m;
}

static void family_defaults(const char *fixture, float default_scale, const char *why)
{
    ldm_model *m = fixture_model(fixture);
    if (!m) return;
    ldm_generate_params p, r;
    ldm_generate_params_init(&p);
    int64_t lr[4] = {1, 3, 8, 8};
    ldm_tensor *cond_image = NULL;
    ck_assert(ldm_tensor_create(LDM_F32, 4, lr, &cond_image) == LDM_OK);
    p.cond_image = cond_image; /* only the concat model reads it */
    ck_assert_msg(ldm_generate_params_resolve(m, &p, &r) == LDM_OK, "%s: %s", fixture, ldm_last_error());
    ck_assert_msg(r.guidance_scale == default_scale, "%s: default scale %g", fixture, (double)r.guidance_scale);
    ck_assert_int_eq(r.uncond_class, LDM_UNCOND_CLASS_NONE);
    p.uncond_class = 3;
    ck_assert_int_eq(ldm_generate_params_resolve(m, &p, &r), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "not class-conditional"));
    p.uncond_class = LDM_UNCOND_CLASS_AUTO;
    if (why) {
        p.guidance_scale = 3.0f;
        ck_assert_int_eq(ldm_generate_params_resolve(m, &p, &r), LDM_ERR_INVALID_ARGUMENT);
        ck_assert_msg(strstr(ldm_last_error(), why), "%s: %s", fixture, ldm_last_error());
        ldm_tensor *img = NULL;
        ck_assert_int_eq(ldm_generate(m, &p, &img), LDM_ERR_INVALID_ARGUMENT);
    }
    ldm_tensor_free(cond_image);
    ldm_model_free(m);
}

START_TEST(other_families_never_skip_guidance)
{
    family_defaults("ldm_sd1_txt2img", 7.5f, NULL);
    family_defaults("ldm_uncond_plms", 1.0f, "unconditional model");
    family_defaults("ldm_sr_concat", 1.0f, "concatenated channels");
}
END_TEST

/* The concat model's output size follows the LR image (resolve computes it without the network). */
START_TEST(resolve_size_of_a_concat_model)
{
    ldm_model *m = fixture_model("ldm_sr_concat");
    if (!m) return;
    ldm_autoencoder *ae;
    ck_assert(ldm_model_autoencoder(m, &ae) == LDM_OK);
    int f = ldm_autoencoder_factor(ae);
    ldm_generate_params p, r;
    ldm_generate_params_init(&p);
    int64_t lr[4] = {1, 3, 8, 12};
    ldm_tensor *cond_image = NULL;
    ck_assert(ldm_tensor_create(LDM_F32, 4, lr, &cond_image) == LDM_OK);
    p.cond_image = cond_image;
    p.steps = 2;
    p.width = 4096; /* ignored: the LR image decides */
    ck_assert(ldm_generate_params_resolve(m, &p, &r) == LDM_OK);
    ck_assert_int_eq(r.width, 12 * f);
    ck_assert_int_eq(r.height, 8 * f);
    ldm_tensor *img = NULL;
    ck_assert_msg(ldm_generate(m, &p, &img) == LDM_OK, "%s", ldm_last_error());
    ck_assert_int_eq(ldm_tensor_dim(img, 3), r.width);
    ck_assert_int_eq(ldm_tensor_dim(img, 2), r.height);
    ldm_tensor_free(img);
    ldm_tensor_free(cond_image);
    ldm_model_free(m);
}
END_TEST

/* ---------------------------------------------------------------- config discovery */

static void copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    ck_assert(in && out);
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) ck_assert_uint_eq(fwrite(buf, 1, n, out), n);
    fclose(in);
    ck_assert_int_eq(fclose(out), 0);
}

static ldm_model *load_plain(const char *path, ldm_status expect)
{
    ldm_model *m = NULL;
    ldm_status st = ldm_model_load(path, NULL, &m);
    ck_assert_msg(st == expect, "%s: %s (%s)", path, ldm_status_string(st), ldm_last_error());
    return m;
}

START_TEST(config_found_beside_the_checkpoint)
{
    char dir[1024], src[1200], cfg[1200], ckpt[1200];
    if (!fixture_dir("ae_kl_f4", dir, sizeof dir)) return;
    snprintf(src, sizeof src, "%s/model.safetensors", dir);
    snprintf(cfg, sizeof cfg, "%s/config.yaml", dir);
    /* config.yaml in the checkpoint's folder */
    ldm_model *m = load_plain(src, LDM_OK);
    ck_assert_str_eq(ldm_model_config_path(m), cfg);
    ldm_model_free(m);
    /* <stem>.yaml wins over config.yaml; a FIFO or directory of that name does not count */
    snprintf(ckpt, sizeof ckpt, "%s", ck_tmp_path("net.v1.safetensors"));
    char target[PATH_MAX]; /* the link must not depend on a relative $LDM_SHARED */
    ck_assert_ptr_nonnull(realpath(src, target));
    ck_assert_int_eq(symlink(target, ckpt), 0);
    m = load_plain(ckpt, LDM_OK); /* nothing beside it: detected from tensor names */
    ck_assert_ptr_null(ldm_model_config_path(m));
    ldm_model_free(m);
    ck_assert_int_eq(mkfifo(ck_tmp_path("net.v1.yaml"), 0600), 0);
    ck_assert_int_eq(mkdir(ck_tmp_path("config.yaml"), 0700), 0);
    m = load_plain(ckpt, LDM_OK);
    ck_assert_ptr_null(ldm_model_config_path(m));
    ldm_model_free(m);
    ck_assert_int_eq(unlink(ck_tmp_path("net.v1.yaml")), 0);
    ck_assert_int_eq(rmdir(ck_tmp_path("config.yaml")), 0);
    copy_file(cfg, ck_tmp_path("net.v1.yaml"));
    ck_tmp_write("config.yaml", "model: [broken", 14);
    m = load_plain(ckpt, LDM_OK);
    ck_assert_str_eq(ldm_model_config_path(m), ck_tmp_path("net.v1.yaml"));
    ldm_model_free(m);
    /* a found config that does not parse is an error naming it */
    ck_assert_int_eq(unlink(ck_tmp_path("net.v1.yaml")), 0);
    ck_assert(load_plain(ckpt, LDM_ERR_FORMAT) == NULL);
    ck_assert_msg(strstr(ldm_last_error(), ck_tmp_path("config.yaml")), "%s", ldm_last_error());
    ck_assert_int_eq(unlink(ck_tmp_path("config.yaml")), 0);
    /* an explicit config is reported as given; built-in models have none */
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    mp.config_path = cfg;
    ck_assert(ldm_model_load(ckpt, &mp, &m) == LDM_OK);
    ck_assert_str_eq(ldm_model_config_path(m), cfg);
    ldm_model_free(m);
    ck_assert_int_eq(unlink(ckpt), 0);
    ck_assert(ldm_model_load_builtin("demo", 1, NULL, &m) == LDM_OK);
    ck_assert_ptr_null(ldm_model_config_path(m));
    ldm_model_free(m);
    ck_assert_ptr_null(ldm_model_config_path(NULL));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("guidance");
    TCase *tc = tcase_create("class");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, guidance_scale_changes_the_result);
    tcase_add_test(tc, generate_equals_manual_guided_loop);
    tcase_add_test(tc, config_without_ucg_rate_has_the_extra_class);
    tcase_add_test(tc, uncond_class_override);
    tcase_add_test(tc, no_uncond_class_refuses_guidance);
    tcase_add_test(tc, resolve_reports_what_runs);
    suite_add_tcase(s, tc);
    TCase *fam = tcase_create("families");
    tcase_set_timeout(fam, 600);
    tcase_add_test(fam, other_families_never_skip_guidance);
    tcase_add_test(fam, resolve_size_of_a_concat_model);
    tcase_add_test(fam, config_found_beside_the_checkpoint);
    suite_add_tcase(s, fam);
    return ck_run_in_tmpdir(s, "guidance");
}
