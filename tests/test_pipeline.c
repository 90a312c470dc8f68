/* test_pipeline.c - ldm_generate end to end, task by task, on the fixture models (tiny, exact
 * against the reference) and the built-in "demo" model.
 *
 * The fixture cross-checks give ldm_generate the fixture's x_T (ldm_generate_params.x_T) and must
 * reproduce the reference sampler's final latent and decoded image within the fixture tolerance:
 * they check that the pipeline builds the same conditioning, guidance, schedule and decode as the
 * reference scripts. The other tests check the rules the pipeline documents (image-to-image
 * start step and noise level, the inpainting composite, output sizes, tiling, determinism,
 * progress and cancellation). */
#include <check.h>

#include "api/pipeline_internal.h"
#include "core/tensor.h"
#include "models/config.h"
#include "sampling/sampling.h"
#include "support/ck_fixture.h"
#include "support/ck_run.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- helpers */

typedef struct fixture {
    char dir[1024];
    ldm_model *model;
    lw_store *io;
    lj_value *cas;
} fixture;

static const char *vocab_dir(void)
{
    static char path[1024];
    snprintf(path, sizeof path, "%s/vocab", fx_shared_dir());
    return path;
}

/* Loads <shared>/fixtures/<name> (model with its config, io tensors, case.json); 0 and a SKIPPED
 * line when absent. */
static int fixture_open(const char *name, fixture *f)
{
    char weights[1200], config[1200];
    memset(f, 0, sizeof *f);
    if (!fixture_dir(name, f->dir, sizeof f->dir)) return 0;
    snprintf(weights, sizeof weights, "%s/model.safetensors", f->dir);
    snprintf(config, sizeof config, "%s/config.yaml", f->dir);
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    mp.config_path = config;
    mp.vocab_path = vocab_dir();
    mp.n_threads = fx_threads();
    ck_assert_msg(ldm_model_load(weights, &mp, &f->model) == LDM_OK, "%s: %s", weights, ldm_last_error());
    f->io = open_file(f->dir, "io.safetensors");
    f->cas = load_case(f->dir);
    return 1;
}

static void fixture_close(fixture *f)
{
    ldm_model_free(f->model);
    lw_close(f->io);
    lj_free(f->cas);
    memset(f, 0, sizeof *f);
}

/* Row b of a batched tensor as a new [1,...] tensor. */
static ldm_tensor *slice(const ldm_tensor *t, int64_t b)
{
    int64_t shape[LDM_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    shape[0] = 1;
    ldm_tensor *r = NULL;
    ck_assert(ldm_tensor_create(t->dtype, t->ndim, shape, &r) == LDM_OK);
    size_t bytes = (size_t)lt_numel(r) * (t->dtype == LDM_I64 ? 8 : 4);
    memcpy(r->data, (const char *)t->data + (size_t)b * bytes, bytes);
    return r;
}

static void expect_close(const fixture *f, const char *ref_name, const ldm_tensor *got, const ldm_tensor *ref)
{
    fx_compare_result res;
    fx_tolerance tol = fx_tolerance_for(f->cas, ref_name);
    int ok = fx_compare(got, ref, tol, &res);
    printf("  %-28s max_abs=%.3g (atol %.3g)\n", ref_name, res.max_abs, tol.atol);
    ck_assert_msg(ok, "%s: %s differs from the reference: %s", f->dir, ref_name, res.note);
}

static void expect_fixture(const fixture *f, const char *ref_name, const ldm_tensor *got)
{
    ldm_tensor *ref = io_tensor(f->io, ref_name);
    expect_close(f, ref_name, got, ref);
    ldm_tensor_free(ref);
}

static double max_abs_diff(const ldm_tensor *a, const ldm_tensor *b)
{
    ck_assert_int_eq(lt_numel(a), lt_numel(b));
    double m = 0;
    for (int64_t i = 0; i < lt_numel(a); i++) m = fmax(m, fabs((double)lt_f32(a)[i] - lt_f32(b)[i]));
    return m;
}

static double max_abs(const ldm_tensor *a)
{
    double m = 0;
    for (int64_t i = 0; i < lt_numel(a); i++) m = fmax(m, fabs((double)lt_f32(a)[i]));
    return m;
}

static double rms_diff(const ldm_tensor *a, const ldm_tensor *b)
{
    double s = 0;
    for (int64_t i = 0; i < lt_numel(a); i++) {
        double d = (double)lt_f32(a)[i] - (b ? lt_f32(b)[i] : 0.0f);
        s += d * d;
    }
    return sqrt(s / (double)lt_numel(a));
}

static int all_finite(const ldm_tensor *a)
{
    for (int64_t i = 0; i < lt_numel(a); i++)
        if (!isfinite(lt_f32(a)[i])) return 0;
    return 1;
}

static void expect_shape(const ldm_tensor *t, int64_t b, int64_t c, int64_t h, int64_t w)
{
    ck_assert_int_eq(t->ndim, 4);
    ck_assert_msg(t->shape[0] == b && t->shape[1] == c && t->shape[2] == h && t->shape[3] == w,
                  "shape [%lld,%lld,%lld,%lld], expected [%lld,%lld,%lld,%lld]", (long long)t->shape[0],
                  (long long)t->shape[1], (long long)t->shape[2], (long long)t->shape[3], (long long)b, (long long)c,
                  (long long)h, (long long)w);
}

static ldm_model *demo_model(int threads)
{
    ldm_model_params mp;
    ldm_model *m = NULL;
    ldm_model_params_init(&mp);
    mp.n_threads = threads;
    ck_assert_msg(ldm_model_load_builtin("demo", 0, &mp, &m) == LDM_OK, "%s", ldm_last_error());
    return m;
}

/* A smooth test picture in [-1,1] (F32 [B,3,H,W]). */
static ldm_tensor *test_image(int64_t B, int64_t H, int64_t W)
{
    ldm_tensor *t = lt_new_f32_4d(B, 3, H, W);
    ck_assert(t != NULL);
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < 3; c++)
            for (int64_t y = 0; y < H; y++)
                for (int64_t x = 0; x < W; x++)
                    lt_f32(t)[((b * 3 + c) * H + y) * W + x] =
                        0.8f * sinf(0.3f * (float)(x + 2 * c) + 0.2f * (float)(y * (b + 1)));
    return t;
}

/* Mask [B,1,H,W]: 1 (generate) in the rectangle [y0,y1) x [x0,x1). */
static ldm_tensor *rect_mask(int64_t B, int64_t H, int64_t W, int64_t y0, int64_t y1, int64_t x0, int64_t x1)
{
    ldm_tensor *t = lt_new_f32_4d(B, 1, H, W);
    ck_assert(t != NULL);
    for (int64_t b = 0; b < B; b++)
        for (int64_t y = 0; y < H; y++)
            for (int64_t x = 0; x < W; x++)
                lt_f32(t)[(b * H + y) * W + x] = (y >= y0 && y < y1 && x >= x0 && x < x1) ? 1.0f : 0.0f;
    return t;
}

static ldm_tensor *generate_ok(ldm_model *m, const ldm_generate_params *p)
{
    ldm_tensor *img = NULL;
    ldm_status st = ldm_generate(m, p, &img);
    ck_assert_msg(st == LDM_OK, "ldm_generate: %s (%s)", ldm_status_string(st), ldm_last_error());
    ck_assert(img != NULL);
    ck_assert_msg(all_finite(img), "ldm_generate produced NaN/Inf");
    return img;
}

static ldm_tensor *latent_ok(ldm_model *m, const ldm_generate_params *p)
{
    ldm_tensor *z = NULL;
    ldm_status st = lp_generate_latent(m, p, &z);
    ck_assert_msg(st == LDM_OK, "lp_generate_latent: %s (%s)", ldm_status_string(st), ldm_last_error());
    return z;
}

/* ---------------------------------------------------------------- fixture cross-checks */

/* cin256-v2 style: DDIM 8 steps, eta 0, CFG 3 against the extra class 1000. The fixture batch has
 * two different labels; ldm_generate takes one label, so each row is generated on its own (rows
 * are independent in the reference too). */
START_TEST(test_cin_ddim_reproduces_fixture)
{
    fixture f;
    if (!fixture_open("ldm_cin_ddim", &f)) return;
    ldm_tensor *x_T = io_tensor(f.io, "x_T"), *labels = io_tensor(f.io, "class_label");
    ldm_tensor *ref_z = io_tensor(f.io, "eta0_samples"), *ref_img = io_tensor(f.io, "eta0_image");
    for (int64_t b = 0; b < x_T->shape[0]; b++) {
        ldm_generate_params p;
        ldm_generate_params_init(&p);
        ldm_tensor *xb = slice(x_T, b), *zb = slice(ref_z, b), *ib = slice(ref_img, b);
        p.class_label = (int)lt_i64(labels)[b];
        p.steps = 8;
        p.guidance_scale = 3.0f;
        p.x_T = xb;
        ldm_tensor *z = latent_ok(f.model, &p), *img = generate_ok(f.model, &p);
        expect_close(&f, "eta0_samples", z, zb);
        expect_close(&f, "eta0_image", img, ib);
        ldm_tensor *all[] = {xb, zb, ib, z, img};
        for (size_t i = 0; i < 5; i++) ldm_tensor_free(all[i]);
    }
    ldm_tensor_free(x_T);
    ldm_tensor_free(labels);
    ldm_tensor_free(ref_z);
    ldm_tensor_free(ref_img);
    fixture_close(&f);
}
END_TEST

/* Text-to-image through the prompt (tokenizer + text tower) and negative prompt "". */
static void text_fixture(const char *name)
{
    fixture f;
    if (!fixture_open(name, &f)) return;
    ldm_generate_params p;
    ldm_generate_params_init(&p);
    ldm_tensor *x_T = io_tensor(f.io, "x_T");
    p.prompt = "a photograph of an astronaut riding a horse";
    p.negative_prompt = "";
    p.steps = 6;
    p.guidance_scale = 7.5f;
    p.x_T = x_T;
    ldm_tensor *z = latent_ok(f.model, &p);
    expect_fixture(&f, "samples", z);
    /* the same through width/height: the fixtures' latent is 8x8 with a factor-1 first stage */
    p.width = p.height = 8;
    ldm_tensor *img = generate_ok(f.model, &p);
    expect_fixture(&f, "image", img);
    ldm_tensor_free(z);
    ldm_tensor_free(img);
    ldm_tensor_free(x_T);
    fixture_close(&f);
}

START_TEST(test_sd1_txt2img_reproduces_fixture)
{
    text_fixture("ldm_sd1_txt2img");
}
END_TEST

START_TEST(test_sd2v_reproduces_fixture)
{
    text_fixture("ldm_sd2v_ddim");
}
END_TEST

/* LDM-BSR: the LR image is the concatenated conditioning; output = LR size x factor. */
START_TEST(test_sr_reproduces_fixture)
{
    fixture f;
    if (!fixture_open("ldm_sr_concat", &f)) return;
    ldm_generate_params p;
    ldm_generate_params_init(&p);
    ldm_tensor *x_T = io_tensor(f.io, "x_T"), *lr = io_tensor(f.io, "lr_image");
    p.cond_image = lr;
    p.steps = 6;
    p.x_T = x_T;
    p.width = p.height = 64; /* ignored: the LR image decides the size */
    ldm_tensor *z = latent_ok(f.model, &p), *img = generate_ok(f.model, &p);
    expect_fixture(&f, "samples", z);
    expect_fixture(&f, "image", img);
    ldm_autoencoder *ae;
    ck_assert(ldm_model_autoencoder(f.model, &ae) == LDM_OK);
    int fac = ldm_autoencoder_factor(ae);
    expect_shape(img, 1, 3, lr->shape[2] * fac, lr->shape[3] * fac);
    ldm_tensor_free(z);
    ldm_tensor_free(img);
    ldm_tensor_free(x_T);
    ldm_tensor_free(lr);
    fixture_close(&f);
}
END_TEST

/* Unconditional PLMS with the EMA weights (the default for a use_ema checkpoint), batch 2. */
START_TEST(test_uncond_plms_reproduces_fixture)
{
    fixture f;
    if (!fixture_open("ldm_uncond_plms", &f)) return;
    ldm_generate_params p;
    ldm_generate_params_init(&p);
    ldm_tensor *x_T = io_tensor(f.io, "x_T");
    p.sampler = LDM_SAMPLER_PLMS;
    p.steps = 8;
    p.batch = (int)x_T->shape[0];
    p.x_T = x_T;
    ldm_tensor *z = latent_ok(f.model, &p), *img = generate_ok(f.model, &p);
    expect_fixture(&f, "plms_samples", z);
    expect_fixture(&f, "plms_image", img);
    ldm_tensor_free(z);
    ldm_tensor_free(img);
    ldm_tensor_free(x_T);
    fixture_close(&f);
}
END_TEST

/* The LDM inpainting model: ldm_generate maps image and mask as scripts/inpaint.py does; the
 * sampled latent must be the reference's, and the result keeps the known pixels exactly and
 * shows clamp(decode(samples)) in the hole. The fixture's mask is the mapped one (-1/+1). */
START_TEST(test_ldm_inpaint_model)
{
    fixture f;
    if (!fixture_open("ldm_inpaint", &f)) return;
    ldm_tensor *x_T = io_tensor(f.io, "x_T"), *image = io_tensor(f.io, "image"), *mask = io_tensor(f.io, "mask");
    for (int64_t i = 0; i < lt_numel(mask); i++) lt_f32(mask)[i] = (lt_f32(mask)[i] + 1.0f) * 0.5f;
    ldm_generate_params p;
    ldm_generate_params_init(&p);
    p.init_image = image;
    p.mask = mask;
    p.steps = 6;
    p.x_T = x_T;
    p.strength = 0.3f; /* not used by this model: it always starts from x_T */
    ldm_tensor *z = latent_ok(f.model, &p), *img = generate_ok(f.model, &p), *dec = NULL;
    expect_fixture(&f, "samples", z);
    ck_assert(ldm_model_decode_latent(f.model, z, &dec) == LDM_OK);
    int64_t HW = image->shape[2] * image->shape[3], holes = 0;
    for (int64_t c = 0; c < 3; c++)
        for (int64_t i = 0; i < HW; i++) {
            float got = lt_f32(img)[c * HW + i];
            if (lt_f32(mask)[i] < 0.5f)
                ck_assert_msg(got == lt_f32(image)[c * HW + i], "known pixel %lld changed", (long long)i);
            else {
                holes++;
                ck_assert_float_eq(got, fmaxf(-1.0f, fminf(1.0f, lt_f32(dec)[c * HW + i])));
            }
        }
    ck_assert_int_gt(holes, 0);
    ldm_tensor *all[] = {x_T, image, mask, z, img, dec};
    for (size_t i = 0; i < 6; i++) ldm_tensor_free(all[i]);
    fixture_close(&f);
}
END_TEST

/* Semantic synthesis: a label map (class ids) -> one-hot -> SpatialRescaler -> concatenated
 * conditioning; the conditioning equals the reference's and the image has the rescaled size. */
START_TEST(test_semantic_synthesis)
{
    fixture f;
    if (!fixture_open("cond_spatial_rescaler", &f)) return;
    ldm_tensor *labels = io_tensor(f.io, "labels"), *seg = io_tensor(f.io, "seg");
    ldm_tensor *map = lt_new_f32_4d(1, 1, labels->shape[1], labels->shape[2]);
    for (int64_t i = 0; i < lt_numel(labels); i++) lt_f32(map)[i] = (float)lt_i64(labels)[i];
    ldm_generate_params p;
    ldm_generate_params_init(&p);
    p.cond_image = map;
    p.steps = 4;
    p.seed = 3;
    lp_cond c;
    ck_assert_msg(lp_build_cond(f.model, &p, &c) == LDM_OK, "%s", ldm_last_error());
    ck_assert_ptr_null(c.uncond);
    expect_fixture(&f, "c", c.cond);
    lp_cond_release(&c);
    ldm_tensor *img = generate_ok(f.model, &p);
    expect_shape(img, 1, 3, 5, 9); /* 22x38 -> two x0.5 stages -> 5x9, first stage f1 */
    /* a one-hot map gives the same image */
    p.cond_image = seg;
    ldm_tensor *img2 = generate_ok(f.model, &p);
    ck_assert_double_eq(max_abs_diff(img, img2), 0.0);
    /* a label outside the model's classes is refused with a message */
    lt_f32(map)[7] = 500.0f;
    p.cond_image = map;
    ldm_tensor *bad = NULL;
    ck_assert_int_eq(ldm_generate(f.model, &p, &bad), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "label"));
    ldm_tensor *all[] = {labels, seg, map, img, img2};
    for (size_t i = 0; i < 5; i++) ldm_tensor_free(all[i]);
    fixture_close(&f);
}
END_TEST

/* Layout-to-image: JSON -> ldm_layout_tokens_from_json -> BERT -> cross-attention. The third
 * fixture layout gives the reference's conditioning row. */
START_TEST(test_layout_to_image)
{
    static const char layout[] =
        "{\"objects\": [[12, 0.25, 0.25, 0.25, 0.5, 1], [299, 0.1, 0.2, 0.3, 0.4, 15], [0, 0.5, 0.5, 0.5, 0.5, 2],"
        " [42, 0.7, 0.05, 0.2, 0.9, 4], [100, 0.33, 0.66, 0.11, 0.22, 8]], \"crop\": null, \"flip\": false}";
    fixture f;
    if (!fixture_open("cond_layout", &f)) return;
    ldm_tensor *tokens = NULL;
    ck_assert_msg(ldm_layout_tokens_from_json(layout, strlen(layout), 300, &tokens) == LDM_OK, "%s", ldm_last_error());
    ldm_generate_params p;
    ldm_generate_params_init(&p);
    p.layout_tokens = tokens;
    p.steps = 4;
    lp_cond c;
    ck_assert_msg(lp_build_cond(f.model, &p, &c) == LDM_OK, "%s", ldm_last_error());
    ldm_tensor *ref = io_tensor(f.io, "c"), *row = slice(ref, 2);
    expect_close(&f, "c", c.cond, row);
    lp_cond_release(&c);
    p.batch = 2; /* the one layout row is repeated */
    ldm_tensor *img = generate_ok(f.model, &p);
    expect_shape(img, 2, 3, 16, 16); /* image_size 16, VQ f1 */
    ldm_tensor *i0 = slice(img, 0), *i1 = slice(img, 1);
    ck_assert_msg(max_abs_diff(i0, i1) > 1e-3, "two seeds of one batch gave the same image");
    p.layout_tokens = NULL;
    ldm_tensor *bad = NULL;
    ck_assert_int_eq(ldm_generate(f.model, &p, &bad), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "layout"));
    ldm_tensor *all[] = {tokens, ref, row, img, i0, i1};
    for (size_t i = 0; i < 6; i++) ldm_tensor_free(all[i]);
    fixture_close(&f);
}
END_TEST

/* Writes a tiny WordPiece vocabulary (< the fixture's 1000 ids) to a temporary file. */
static void write_small_vocab(char *path, size_t cap)
{
    static const char *const words[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a",   "red", "fox",
                                        "blue",  "bird",  "in",    "the",   "snow",   "##s", ",",   "."};
    snprintf(path, cap, "/tmp/ldm_test_vocab_%d.txt", (int)getpid());
    FILE *fp = fopen(path, "w");
    ck_assert(fp != NULL);
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) fprintf(fp, "%s\n", words[i]);
    fclose(fp);
}

/* LDM text2img with the BERT text tower (cond_bert's full LDM config): ldm_generate equals the
 * host-driven loop over the public calls (encode_text for prompt and "", guided DDIM, decode). */
START_TEST(test_bert_text_to_image)
{
    char dir[1024], weights[1200], config[1200], vocab[256];
    snprintf(dir, sizeof dir, "%s/fixtures/cond_bert", fx_shared_dir());
    snprintf(weights, sizeof weights, "%s/model.safetensors", dir);
    snprintf(config, sizeof config, "%s/config.yaml", dir);
    if (!fx_file_exists(weights)) {
        printf("SKIPPED: fixture cond_bert not found at %s\n", dir);
        return;
    }
    write_small_vocab(vocab, sizeof vocab);
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    mp.config_path = config;
    mp.vocab_path = vocab;
    mp.n_threads = fx_threads();
    ldm_model *m = NULL;
    ck_assert_msg(ldm_model_load(weights, &mp, &m) == LDM_OK, "%s", ldm_last_error());
    ldm_generate_params p;
    ldm_generate_params_init(&p);
    p.prompt = "a red fox in the snow";
    p.steps = 5;
    p.guidance_scale = 5.0f;
    p.seed = 11;
    ldm_tensor *img = generate_ok(m, &p);
    expect_shape(img, 1, 3, 16, 16);

    /* the same through the public component calls */
    ldm_conditioner *cond;
    ck_assert(ldm_model_conditioner(m, &cond) == LDM_OK);
    ck_assert_int_eq(ldm_conditioner_get_kind(cond), LDM_COND_BERT);
    const char *pr[] = {p.prompt}, *un[] = {""};
    fx_sample_spec spec = {.kind = LDM_SAMPLER_DDIM, .steps = 5, .guidance_scale = 5.0f};
    ldm_tensor *x_T = lt_new_f32_4d(1, 3, 16, 16);
    ck_assert(ldm_randn(11, 0, x_T) == LDM_OK);
    spec.x_T = x_T;
    ck_assert(ldm_conditioner_encode_text(cond, pr, 1, &spec.cond) == LDM_OK);
    ck_assert(ldm_conditioner_encode_text(cond, un, 1, &spec.uncond) == LDM_OK);
    fx_sample_result res = {0};
    ck_assert_msg(fx_sample(m, &spec, &res) == LDM_OK, "%s", ldm_last_error());
    double d = max_abs_diff(img, res.image);
    printf("  bert text2img: ldm_generate vs host loop max diff %.3g\n", d);
    ck_assert_msg(d <= 1e-6 * fmax(1.0, max_abs(res.image)), "ldm_generate differs from the host-driven loop by %g", d);
    /* another prompt changes the image */
    p.prompt = "a blue bird";
    ldm_tensor *img2 = generate_ok(m, &p);
    ck_assert(max_abs_diff(img, img2) > 1e-4);
    fx_sample_result_free(&res);
    ldm_tensor_free(spec.cond);
    ldm_tensor_free(spec.uncond);
    ldm_tensor_free(x_T);
    ldm_tensor_free(img);
    ldm_tensor_free(img2);
    ldm_model_free(m);
    remove(vocab);
}
END_TEST

/* ---------------------------------------------------------------- SD inpainting (hybrid) */

/* A tiny SD inpainting model built from the ldm_sd1_txt2img fixture: the same weights and config,
 * but LatentInpaintDiffusion with conditioning_key hybrid and a UNet input conv of 4 + 5
 * channels: the fixture's for x, `extra` times seeded values for the concatenated mask and
 * masked-image latent. With extra = 0 it must sample exactly like the text-to-image fixture. */
typedef struct hybrid_model {
    ldm_model *model;
    lw_store *source;
} hybrid_model;

static char *replace_once(char *text, const char *from, const char *to)
{
    char *at = strstr(text, from);
    ck_assert_msg(at != NULL, "config text '%s' not found", from);
    size_t n = strlen(text) - strlen(from) + strlen(to) + 1;
    char *r = malloc(n);
    snprintf(r, n, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
    free(text);
    return r;
}

static int hybrid_open(float extra, hybrid_model *h)
{
    char dir[1024], path[1200];
    snprintf(dir, sizeof dir, "%s/fixtures/ldm_sd1_txt2img", fx_shared_dir());
    snprintf(path, sizeof path, "%s/config.yaml", dir);
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        printf("SKIPPED: fixture ldm_sd1_txt2img not found at %s\n", dir);
        return 0;
    }
    char *yaml = calloc(1, 1 << 16);
    size_t len = fread(yaml, 1, (1 << 16) - 1, fp);
    fclose(fp);
    yaml[len] = '\0';
    yaml = replace_once(yaml, "ddpm.LatentDiffusion", "ddpm.LatentInpaintDiffusion");
    yaml = replace_once(yaml, "conditioning_key: crossattn", "conditioning_key: hybrid");
    yaml = replace_once(yaml, "in_channels: 4", "in_channels: 9");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ck_assert_msg(lw_open(path, 0, &h->source) == LDM_OK, "%s", ldm_last_error());
    ldm_model_params mp, p;
    ldm_model_params_init(&mp);
    mp.vocab_path = vocab_dir();
    mp.n_threads = fx_threads();
    ck_assert(lm_model_new("test:sd-inpainting", &mp, &h->model, &p) == LDM_OK);
    ldm_model *m = h->model;
    ck_assert_msg(ld_config_parse(yaml, strlen(yaml), "test:sd-inpainting", &m->desc) == LDM_OK, "%s",
                  ldm_last_error());
    free(yaml);
    ck_assert(lw_store_create("test:sd-inpainting", &m->store) == LDM_OK);
    const char *conv = "model.diffusion_model.input_blocks.0.0.weight";
    for (size_t i = 0; i < lw_count(h->source); i++) {
        const lw_tensor *t = lw_at(h->source, i);
        if (strcmp(t->name, conv) != 0)
            ck_assert(lw_store_add(m->store, t->name, t->dtype, t->ndim, t->shape, t->data, t->nbytes) == LDM_OK);
    }
    const lw_tensor *w4 = lw_find(h->source, conv);
    ck_assert(w4 && w4->dtype == LW_F32 && w4->shape[1] == 4);
    int64_t O = w4->shape[0], shape[4] = {O, 9, 3, 3};
    float *w9 = ldm_malloc_aligned((size_t)(O * 9 * 9) * sizeof(float)),
          *noise = malloc((size_t)(O * 9 * 9) * sizeof(float));
    lw_synth_fill("extra", 5, 4, shape, noise);
    for (int64_t o = 0; o < O; o++)
        for (int64_t c = 0; c < 9; c++)
            for (int64_t k = 0; k < 9; k++) {
                float v = 0;
                if (c < 4)
                    memcpy(&v, (const float *)w4->data + (o * 4 + c) * 9 + k, sizeof v);
                else
                    v = extra * noise[(o * 9 + c) * 9 + k];
                w9[(o * 9 + c) * 9 + k] = v;
            }
    free(noise);
    ck_assert(lw_store_keep(m->store, w9) == LDM_OK);
    ck_assert(lw_store_add(m->store, conv, LW_F32, 4, shape, w9, (size_t)(O * 81) * sizeof(float)) == LDM_OK);
    ck_assert(lw_store_seal(m->store) == LDM_OK);
    ck_assert_msg(lm_load_from(m, &p) == LDM_OK, "%s", ldm_last_error());
    return 1;
}

static void hybrid_close(hybrid_model *h)
{
    ldm_model_free(h->model);
    lw_close(h->source);
}

/* With zero weights on the concatenated channels the hybrid model is the text-to-image model:
 * ldm_generate (prompt + init_image + mask) must reproduce the fixture's samples. */
START_TEST(test_sd_inpainting_routes_like_txt2img)
{
    hybrid_model h;
    fixture f;
    if (!hybrid_open(0.0f, &h) || !fixture_open("ldm_sd1_txt2img", &f)) return;
    ldm_tensor *x_T = io_tensor(f.io, "x_T"), *init = test_image(1, 8, 8), *mask = rect_mask(1, 8, 8, 2, 6, 2, 6);
    ldm_generate_params p;
    ldm_generate_params_init(&p);
    p.prompt = "a photograph of an astronaut riding a horse";
    p.steps = 6;
    p.x_T = x_T;
    p.init_image = init;
    p.mask = mask;
    ldm_tensor *z = latent_ok(h.model, &p);
    expect_fixture(&f, "samples", z);
    ldm_tensor_free(z);
    ldm_tensor_free(x_T);
    ldm_tensor_free(init);
    ldm_tensor_free(mask);
    fixture_close(&f);
    hybrid_close(&h);
}
END_TEST

/* c_concat = cat(nearest(mask), scale_factor * (mean + std * randn(seed, posterior stream)) of
 * the encoded image * (mask < 0.5)), recomputed with the public calls; pixels inside the mask do
 * not reach the model, pixels outside do; the model's output is not composited. */
START_TEST(test_sd_inpainting_conditioning)
{
    hybrid_model h;
    if (!hybrid_open(0.5f, &h)) return;
    ldm_model *m = h.model;
    ldm_tensor *init = test_image(1, 8, 8), *mask = rect_mask(1, 8, 8, 2, 6, 1, 5), *cat = NULL;
    ck_assert_msg(lp_hybrid_inpaint_concat(m, init, mask, 77, &cat) == LDM_OK, "%s", ldm_last_error());
    expect_shape(cat, 1, 5, 8, 8);
    ldm_tensor *masked = lt_clone(init), *moments = NULL, *mean = NULL, *std = NULL;
    for (int64_t c = 0; c < 3; c++)
        for (int64_t i = 0; i < 64; i++)
            if (lt_f32(mask)[i] >= 0.5f) lt_f32(masked)[c * 64 + i] = 0.0f;
    ldm_autoencoder *ae;
    ck_assert(ldm_model_autoencoder(m, &ae) == LDM_OK);
    ck_assert(ldm_autoencoder_encode(ae, masked, &moments) == LDM_OK);
    ck_assert(ldm_posterior_split(moments, &mean, NULL, &std) == LDM_OK);
    ldm_tensor *eps = lt_new_f32(4, mean->shape);
    ck_assert(ldm_randn(77, LP_STREAM_POSTERIOR, eps) == LDM_OK);
    for (int64_t i = 0; i < 64; i++) ck_assert_float_eq(lt_f32(cat)[i], lt_f32(mask)[i]); /* f1: same size */
    for (int64_t i = 0; i < lt_numel(mean); i++) {
        float want = (lt_f32(mean)[i] + lt_f32(std)[i] * lt_f32(eps)[i]) * 0.18215f;
        ck_assert_msg(fabsf(lt_f32(cat)[64 + i] - want) <= 1e-6f * fmaxf(1.0f, fabsf(want)), "latent %lld",
                      (long long)i);
    }
    ldm_generate_params p;
    ldm_generate_params_init(&p);
    p.prompt = "a red fox";
    p.steps = 4;
    p.seed = 77;
    p.init_image = init;
    p.mask = mask;
    ldm_tensor *a = generate_ok(m, &p);
    ldm_tensor *inside = lt_clone(init), *outside = lt_clone(init);
    lt_f32(inside)[3 * 8 + 2] += 0.5f; /* (y 3, x 2): in the mask */
    lt_f32(outside)[0] += 0.5f;        /* (y 0, x 0): known */
    p.init_image = inside;
    ldm_tensor *b = generate_ok(m, &p);
    p.init_image = outside;
    ldm_tensor *c = generate_ok(m, &p);
    ck_assert_double_eq(max_abs_diff(a, b), 0.0);
    ck_assert(max_abs_diff(a, c) > 0.0);
    /* no pixel composite: the known region is what the model decodes (not the init image) */
    ck_assert(lt_f32(a)[0] != lt_f32(init)[0]);
    ldm_tensor *all[] = {init, mask, cat, masked, moments, mean, std, eps, a, inside, outside, b, c};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) ldm_tensor_free(all[i]);
    hybrid_close(&h);
}
END_TEST

/* ---------------------------------------------------------------- image-to-image */

/* The documented rule, re-implemented with the public calls: with n DDIM steps and strength s,
 * the last run = max(1, int(s*n)) steps are run, from z0 noised with x_T to the level of the
 * first step run: x = sqrt(a)*z0 + sqrt(1-a)*x_T, a = alphas_cumprod[t of that step]. VQ model
 * with scale_factor 1: z0 = the encoder's pre-quantisation h. */
START_TEST(test_img2img_start_step_and_noise_level)
{
    fixture f;
    if (!fixture_open("ldm_cin_ddim", &f)) return;
    const int steps = 10;
    const float strengths[] = {0.5f, 0.3f, 1.0f, 0.01f};
    ldm_tensor *init = test_image(1, 8, 8), *x_T = lt_new_f32_4d(1, 3, 8, 8), *z0 = NULL, *label = NULL;
    ck_assert(ldm_randn(5, 0, x_T) == LDM_OK);
    ldm_autoencoder *ae;
    ldm_conditioner *cond;
    ck_assert(ldm_model_autoencoder(f.model, &ae) == LDM_OK && ldm_model_conditioner(f.model, &cond) == LDM_OK);
    ck_assert(ldm_autoencoder_encode(ae, init, &z0) == LDM_OK);
    int64_t one = 1;
    ck_assert(ldm_tensor_create(LDM_I64, 1, &one, &label) == LDM_OK);
    lt_i64(label)[0] = 7;
    ldm_tensor *c = NULL;
    ck_assert(ldm_conditioner_encode_labels(cond, label, &c) == LDM_OK);
    ldm_sampler *s = NULL;
    ldm_sampler_params sp;
    ldm_sampler_params_init(&sp);
    sp.steps = steps;
    ck_assert(ldm_model_sampler(f.model, &sp, &s) == LDM_OK);
    const ls_ddim *d = ls_sampler_ddim(s);
    for (size_t k = 0; k < sizeof strengths / sizeof strengths[0]; k++) {
        int run = (int)(strengths[k] * (float)d->n + 1e-4f);
        if (run < 1) run = 1;
        ck_assert_int_eq(lp_img2img_first_step(strengths[k], d->n), d->n - run);
        ldm_tensor *x = lt_clone(z0);
        int i = run - 1; /* ascending DDIM index of the first step run */
        for (int64_t e = 0; e < lt_numel(x); e++)
            lt_f32(x)[e] = sqrtf(d->alphas[i]) * lt_f32(z0)[e] + sqrtf(1.0f - d->alphas[i]) * lt_f32(x_T)[e];
        for (; i >= 0; i--) {
            ldm_tensor *t = NULL, *eps = NULL;
            ck_assert(ldm_tensor_create(LDM_I64, 1, &one, &t) == LDM_OK);
            lt_i64(t)[0] = d->timesteps[i];
            ck_assert(ldm_model_apply_guided(f.model, x, t, c, NULL, 1.0f, &eps) == LDM_OK);
            ls_ddim_step_eps(lt_f32(x), lt_f32(eps), NULL, d->alphas[i], d->sqrt_one_minus_alphas[i], d->alphas_prev[i],
                             d->sigmas[i], (size_t)lt_numel(x), lt_f32(x), NULL);
            ldm_tensor_free(t);
            ldm_tensor_free(eps);
        }
        ldm_generate_params p;
        ldm_generate_params_init(&p);
        p.init_image = init;
        p.strength = strengths[k];
        p.class_label = 7;
        p.guidance_scale = 1.0f;
        p.steps = steps;
        p.x_T = x_T;
        ldm_tensor *z = latent_ok(f.model, &p);
        double diff = max_abs_diff(z, x);
        printf("  img2img strength %.2f: %d of %d steps, max diff to the rule %.3g\n", strengths[k], run, d->n, diff);
        ck_assert_msg(diff <= 1e-5 * fmax(1.0, max_abs(x)), "strength %g: latent differs from the rule by %g",
                      strengths[k], diff);
        ldm_tensor_free(z);
        ldm_tensor_free(x);
    }
    ldm_sampler_free(s);
    ldm_tensor *all[] = {init, x_T, z0, label, c};
    for (size_t i = 0; i < 5; i++) ldm_tensor_free(all[i]);
    fixture_close(&f);
}
END_TEST

typedef struct progress_log {
    int calls, last_step, total, cancel_at, interrupt_at;
    int bad_order;
    ldm_model *model;
} progress_log;

static int record_progress(int step, int total, void *user)
{
    progress_log *l = user;
    l->calls++;
    if (step != l->last_step + 1 || (l->total && total != l->total)) l->bad_order = 1;
    l->last_step = step;
    l->total = total;
    if (l->interrupt_at && step == l->interrupt_at) ldm_model_interrupt(l->model);
    return l->cancel_at && step == l->cancel_at;
}

/* Strength near 0 re-runs one step from the lowest noise level (DDIM 50 steps: t = 1, where
 * sqrt(1 - alphas_cumprod) ~ 0.05): the latent stays within a few percent of the init latent and
 * the image near the first stage's round trip decode(encode(init)); strength 0.5 reports half
 * the steps and moves much further. KL demo model: z0 is the seeded posterior sample. */
START_TEST(test_img2img_strength_near_zero)
{
    ldm_model *m = demo_model(fx_threads());
    ldm_tensor *init = test_image(1, 32, 32), *z0 = NULL, *round = NULL;
    ck_assert(lp_encode_latent(m, init, 9, &z0) == LDM_OK);
    ck_assert(ldm_model_decode_latent(m, z0, &round) == LDM_OK);
    ldm_generate_params p;
    ldm_generate_params_init(&p);
    progress_log log = {0};
    p.init_image = init;
    p.class_label = 3;
    p.seed = 9;
    p.steps = 50;
    p.strength = 0.01f;
    p.progress = record_progress;
    p.progress_user_data = &log;
    ldm_tensor *z = latent_ok(m, &p), *img = generate_ok(m, &p);
    ck_assert_int_eq(log.calls, 2); /* one step per run, two runs */
    ck_assert_int_eq(log.total, 1);
    double lat = rms_diff(z, z0) / rms_diff(z0, NULL), pix = rms_diff(img, round);
    memset(&log, 0, sizeof log);
    p.strength = 0.5f;
    ldm_tensor *zh = latent_ok(m, &p);
    ck_assert_int_eq(log.calls, 25);
    ck_assert_int_eq(log.total, 25);
    ck_assert(!log.bad_order);
    double lat_half = rms_diff(zh, z0) / rms_diff(z0, NULL);
    printf("  img2img: strength 0.01 latent rms change %.3g, image rms vs round trip %.3g; strength 0.5 latent %.3g\n",
           lat, pix, lat_half);
    ck_assert_msg(lat < 0.1, "strength 0.01 changed the latent by %g (relative rms)", lat);
    ck_assert_msg(pix < 0.1, "strength 0.01 moved the image by %g rms from decode(encode(init))", pix);
    ck_assert_msg(lat_half > 5 * lat, "strength 0.5 should move much further than 0.01");
    ldm_tensor *all[] = {init, z0, round, z, img, zh};
    for (size_t i = 0; i < 6; i++) ldm_tensor_free(all[i]);
    ldm_model_free(m);
}
END_TEST

/* Mask-blended inpainting with an ordinary model: the known region of the result is the init
 * image bit for bit, the hole is generated; also for every sampler family and a batch of 2 from a
 * single init image and mask. */
START_TEST(test_mask_blend_inpainting)
{
    ldm_model *m = demo_model(fx_threads());
    ldm_tensor *init = test_image(1, 32, 32), *mask = rect_mask(1, 32, 32, 8, 24, 4, 20);
    const ldm_sampler_kind kinds[] = {LDM_SAMPLER_DDIM, LDM_SAMPLER_EULER_ANCESTRAL, LDM_SAMPLER_DPMPP_2M};
    for (size_t k = 0; k < 3; k++) {
        ldm_generate_params p;
        ldm_generate_params_init(&p);
        p.init_image = init;
        p.mask = mask;
        p.strength = 1.0f;
        p.class_label = 5;
        p.steps = 6;
        p.batch = 2;
        p.seed = 21;
        p.sampler = kinds[k];
        ldm_tensor *img = generate_ok(m, &p);
        expect_shape(img, 2, 3, 32, 32);
        int64_t HW = 32 * 32;
        double hole_change = 0;
        for (int64_t b = 0; b < 2; b++)
            for (int64_t c = 0; c < 3; c++)
                for (int64_t i = 0; i < HW; i++) {
                    float got = lt_f32(img)[(b * 3 + c) * HW + i], want = lt_f32(init)[c * HW + i];
                    if (lt_f32(mask)[i] < 0.5f)
                        ck_assert_msg(got == want, "sampler %d: known pixel changed", (int)kinds[k]);
                    else
                        hole_change = fmax(hole_change, fabs(got - want));
                }
        ck_assert_msg(hole_change > 0.05, "sampler %d: the hole was not generated", (int)kinds[k]);
        ldm_tensor_free(img);
    }
    ldm_tensor_free(init);
    ldm_tensor_free(mask);
    ldm_model_free(m);
}
END_TEST

/* ---------------------------------------------------------------- sizes and decoding */

/* Sampling at a resolution other than the training one (demo: 64x64) and non-square. */
START_TEST(test_large_resolution)
{
    ldm_model *m = demo_model(fx_threads());
    ldm_generate_params p;
    ldm_generate_params_init(&p);
    p.class_label = 1;
    p.steps = 4;
    p.width = 128;
    p.height = 96;
    ldm_tensor *img = generate_ok(m, &p);
    expect_shape(img, 1, 3, 96, 128);
    ck_assert(max_abs(img) > 0.01);
    ldm_tensor_free(img);
    /* not a multiple of factor 4 x UNet 2 = 8 */
    p.width = 100;
    ck_assert_int_eq(ldm_generate(m, &p, &img), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "multiples of 8"));
    ck_assert_ptr_null(img);
    /* x_T of a wrong shape is refused */
    p.width = 64;
    p.height = 64;
    ldm_tensor *x_T = lt_new_f32_4d(1, 3, 8, 8);
    p.x_T = x_T;
    ck_assert_int_eq(ldm_generate(m, &p, &img), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "x_T"));
    ldm_tensor_free(x_T);
    ldm_model_free(m);
}
END_TEST

/* A local "decoder": pixel (y,x) depends only on latent (y/4,x/4), so any tiling must give the
 * whole result back exactly (up to the rounding of the blend weights). */
static ldm_status local_decoder(void *user, const ldm_tensor *z, ldm_tensor **out)
{
    (void)user;
    int64_t B = z->shape[0], C = z->shape[1], h = z->shape[2], w = z->shape[3];
    if (!(*out = lt_new_f32_4d(B, 2, 4 * h, 4 * w))) return LDM_ERR_OUT_OF_MEMORY;
    for (int64_t b = 0; b < B; b++)
        for (int64_t o = 0; o < 2; o++)
            for (int64_t y = 0; y < 4 * h; y++)
                for (int64_t x = 0; x < 4 * w; x++) {
                    float v = lt_f32(z)[((b * C + o % C) * h + y / 4) * w + x / 4];
                    lt_f32(*out)[((b * 2 + o) * 4 * h + y) * 4 * w + x] = o ? tanhf(v) : v * v;
                }
    return LDM_OK;
}

START_TEST(test_tile_blending_exact)
{
    ldm_tensor *z = lt_new_f32_4d(2, 3, 37, 50), *whole = NULL;
    ck_assert(ldm_randn(4, 0, z) == LDM_OK);
    ck_assert(local_decoder(NULL, z, &whole) == LDM_OK);
    const int tiles[] = {8, 13, 16, 36, 64};
    for (size_t k = 0; k < sizeof tiles / sizeof tiles[0]; k++) {
        ldm_tensor *tiled = NULL;
        ck_assert(lp_decode_tiles(NULL, z, tiles[k], 4, local_decoder, NULL, &tiled) == LDM_OK);
        expect_shape(tiled, 2, 2, 4 * 37, 4 * 50);
        double d = max_abs_diff(whole, tiled);
        ck_assert_msg(d <= 1e-6 * fmax(1.0, max_abs(whole)), "tile %d: blending changed a local decode by %g", tiles[k],
                      d);
        ldm_tensor_free(tiled);
    }
    ldm_tensor_free(z);
    ldm_tensor_free(whole);
}
END_TEST

/* Tiled decoding on a real first stage without mid attention (ae_kl_f4): tiles are normalised
 * with their own GroupNorm statistics, so the result is an approximation that improves with the
 * tile size; a tile covering the latent decodes whole, bit for bit. */
START_TEST(test_tiled_decode)
{
    char weights[1200], config[1200];
    snprintf(weights, sizeof weights, "%s/fixtures/ae_kl_f4/model.safetensors", fx_shared_dir());
    snprintf(config, sizeof config, "%s/fixtures/ae_kl_f4/config.yaml", fx_shared_dir());
    if (!fx_file_exists(weights)) {
        printf("SKIPPED: fixture ae_kl_f4 not found\n");
        return;
    }
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    mp.config_path = config;
    mp.n_threads = fx_threads();
    ldm_model *m = NULL;
    ck_assert_msg(ldm_model_load(weights, &mp, &m) == LDM_OK, "%s", ldm_last_error());
    ldm_autoencoder *ae;
    ck_assert(ldm_model_autoencoder(m, &ae) == LDM_OK);
    int C = ldm_autoencoder_latent_channels(ae), N = 40;
    /* a smooth latent (like real ones) */
    ldm_tensor *z = lt_new_f32_4d(1, C, N, N), *whole = NULL, *big = NULL;
    for (int c = 0; c < C; c++)
        for (int y = 0; y < N; y++)
            for (int x = 0; x < N; x++)
                lt_f32(z)[(c * N + y) * N + x] = sinf(0.2f * (float)x + (float)c) * cosf(0.15f * (float)y);
    ck_assert(lp_decode(m, z, -1, &whole) == LDM_OK);
    ck_assert(lp_decode(m, z, N, &big) == LDM_OK);
    ck_assert_double_eq(max_abs_diff(whole, big), 0.0);
    double prev = INFINITY, range = rms_diff(whole, NULL);
    const int tiles[] = {16, 24, 32};
    for (size_t k = 0; k < 3; k++) {
        ldm_tensor *tiled = NULL;
        ck_assert(lp_decode(m, z, tiles[k], &tiled) == LDM_OK);
        expect_shape(tiled, 1, 3, 4 * N, 4 * N);
        ck_assert(all_finite(tiled));
        double d = rms_diff(tiled, whole);
        printf("  tiled decode, tile %d of %d: rms diff %.3g (image rms %.3g)\n", tiles[k], N, d, range);
        ck_assert_msg(d < prev, "a larger tile should come closer to the whole decode");
        prev = d;
        ldm_tensor_free(tiled);
    }
    /* random weights make the per-tile statistics differ a lot; still clearly the same picture */
    ck_assert_msg(prev < 0.5 * range, "tile 32 of 40 is %g rms away from the whole decode", prev);
    ldm_tensor_free(z);
    ldm_tensor_free(whole);
    ldm_tensor_free(big);
    ldm_model_free(m);
}
END_TEST

/* vae_tile through ldm_generate: a tile covering the latent changes nothing; a small one still
 * gives an image of the right size. */
START_TEST(test_generate_vae_tile)
{
    ldm_model *m = demo_model(fx_threads());
    ldm_generate_params p;
    ldm_generate_params_init(&p);
    p.class_label = 2;
    p.steps = 2;
    p.width = p.height = 128;
    p.vae_tile = -1;
    ldm_tensor *whole = generate_ok(m, &p);
    p.vae_tile = 32;
    ldm_tensor *same = generate_ok(m, &p);
    ck_assert_double_eq(max_abs_diff(whole, same), 0.0);
    p.vae_tile = 16;
    ldm_tensor *tiled = generate_ok(m, &p);
    expect_shape(tiled, 1, 3, 128, 128);
    ck_assert(max_abs_diff(whole, tiled) < 0.5 * fmax(1.0, max_abs(whole)));
    ldm_tensor_free(whole);
    ldm_tensor_free(same);
    ldm_tensor_free(tiled);
    ldm_model_free(m);
}
END_TEST

/* ---------------------------------------------------------------- samplers, progress, cancel */

static const ldm_sampler_kind all_kinds[] = {
    LDM_SAMPLER_DDIM, LDM_SAMPLER_PLMS,     LDM_SAMPLER_DDPM,           LDM_SAMPLER_EULER, LDM_SAMPLER_EULER_ANCESTRAL,
    LDM_SAMPLER_HEUN, LDM_SAMPLER_DPMPP_2M, LDM_SAMPLER_DPMPP_2M_KARRAS};

/* Every sampler runs on the demo model; a fixed seed gives identical output, another thread
 * count the same within float rounding, another seed a different image; progress is called once
 * per step with the sampler's step count. */
START_TEST(test_every_sampler_deterministic)
{
    ldm_model *m2 = demo_model(2), *m1 = demo_model(1);
    for (size_t k = 0; k < sizeof all_kinds / sizeof all_kinds[0]; k++) {
        ldm_generate_params p;
        ldm_generate_params_init(&p);
        progress_log log = {0};
        p.class_label = 17;
        p.sampler = all_kinds[k];
        p.steps = 4;
        p.width = p.height = 32;
        p.eta = all_kinds[k] == LDM_SAMPLER_DDIM ? 0.5f : 0.0f;
        p.seed = 1234;
        p.progress = record_progress;
        p.progress_user_data = &log;
        ldm_tensor *a = generate_ok(m2, &p);
        ldm_sampler *s = NULL;
        ldm_sampler_params sp;
        ldm_sampler_params_init(&sp);
        sp.kind = all_kinds[k];
        sp.steps = 4;
        ck_assert(ldm_model_sampler(m2, &sp, &s) == LDM_OK);
        ck_assert_int_eq(log.calls, ldm_sampler_total_steps(s));
        ck_assert_int_eq(log.total, ldm_sampler_total_steps(s));
        ck_assert(!log.bad_order);
        ldm_sampler_free(s);
        p.progress = NULL;
        ldm_tensor *b = generate_ok(m2, &p), *c = generate_ok(m1, &p);
        p.seed = 1235;
        ldm_tensor *d = generate_ok(m2, &p);
        double same = max_abs_diff(a, b), threads = max_abs_diff(a, c), other = max_abs_diff(a, d);
        printf("  sampler %d: repeat %.3g, 1 vs 2 threads %.3g, other seed %.3g\n", (int)all_kinds[k], same, threads,
               other);
        ck_assert_double_eq(same, 0.0);
        ck_assert_msg(threads <= 1e-4 * fmax(1.0, max_abs(a)), "sampler %d: thread count changed the image by %g",
                      (int)all_kinds[k], threads);
        ck_assert_msg(other > 1e-3, "sampler %d: the seed has no effect", (int)all_kinds[k]);
        ldm_tensor_free(a);
        ldm_tensor_free(b);
        ldm_tensor_free(c);
        ldm_tensor_free(d);
    }
    ldm_model_free(m1);
    ldm_model_free(m2);
}
END_TEST

START_TEST(test_progress_cancel)
{
    ldm_model *m = demo_model(fx_threads());
    ldm_generate_params p;
    ldm_generate_params_init(&p);
    progress_log log = {.cancel_at = 3};
    p.class_label = 4;
    p.steps = 10;
    p.progress = record_progress;
    p.progress_user_data = &log;
    ldm_tensor *img = NULL;
    ck_assert_int_eq(ldm_generate(m, &p, &img), LDM_CANCELLED);
    ck_assert_ptr_null(img);
    ck_assert_int_eq(log.calls, 3);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "cancel"));
    /* ldm_model_interrupt from inside the callback: the run stops before the next step */
    memset(&log, 0, sizeof log);
    log.interrupt_at = 2;
    log.model = m;
    ck_assert_int_eq(ldm_generate(m, &p, &img), LDM_CANCELLED);
    ck_assert_int_eq(log.calls, 2);
    /* the flag is cleared by the next call, which runs to the end */
    memset(&log, 0, sizeof log);
    img = generate_ok(m, &p);
    ck_assert_int_eq(log.calls, 10);
    ldm_tensor_free(img);
    ldm_model_free(m);
}
END_TEST

typedef struct interrupter {
    ldm_model *model;
    volatile int *started;
} interrupter;

static void *interrupt_later(void *arg)
{
    interrupter *it = arg;
    while (!*it->started) usleep(1000);
    usleep(100 * 1000);
    ldm_model_interrupt(it->model);
    return NULL;
}

static int mark_started(int step, int total, void *user)
{
    (void)step;
    (void)total;
    *(volatile int *)user = 1;
    return 0;
}

/* ldm_model_interrupt from another thread stops a long run promptly. */
START_TEST(test_interrupt_from_thread)
{
    ldm_model *m = demo_model(fx_threads());
    volatile int started = 0;
    interrupter it = {m, &started};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, interrupt_later, &it), 0);
    ldm_generate_params p;
    ldm_generate_params_init(&p);
    p.class_label = 4;
    p.steps = 1000;
    p.sampler = LDM_SAMPLER_DDPM;
    p.progress = mark_started;
    p.progress_user_data = (void *)&started;
    ldm_tensor *img = NULL;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ldm_status st = ldm_generate(m, &p, &img);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    pthread_join(th, NULL);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    printf("  interrupted after %.2f s\n", secs);
    ck_assert_int_eq(st, LDM_CANCELLED);
    ck_assert_ptr_null(img);
    ck_assert_msg(secs < 20.0, "the interrupt took %g s to act", secs);
    ldm_model_free(m);
}
END_TEST

/* ---------------------------------------------------------------- inputs and errors */

START_TEST(test_class_inputs_and_errors)
{
    ldm_model *m = demo_model(fx_threads());
    ldm_generate_params p;
    ldm_generate_params_init(&p);
    p.steps = 2;
    /* no class: the unconditional class 1000 of a cin256-v2 style model */
    ldm_tensor *u = generate_ok(m, &p);
    p.class_label = 1000;
    ldm_tensor *u2 = generate_ok(m, &p);
    ck_assert_double_eq(max_abs_diff(u, u2), 0.0);
    p.class_label = 1001;
    ldm_tensor *img = NULL;
    ck_assert_int_eq(ldm_generate(m, &p, &img), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "class label"));
    /* guidance changes the result; scale 1 is the plain conditional model */
    p.class_label = 9;
    p.guidance_scale = 1.0f;
    ldm_tensor *g1 = generate_ok(m, &p);
    p.guidance_scale = 4.0f;
    ldm_tensor *g4 = generate_ok(m, &p);
    ck_assert(max_abs_diff(g1, g4) > 1e-3);
    /* batch rows are independent draws; an init image of batch 3 cannot serve batch 2 */
    p.batch = 2;
    ldm_tensor *init = test_image(3, 64, 64);
    p.init_image = init;
    ck_assert_int_eq(ldm_generate(m, &p, &img), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "init_image"));
    /* an init image that is not a multiple of 8 pixels */
    ldm_tensor *odd = test_image(1, 60, 64);
    p.init_image = odd;
    ck_assert_int_eq(ldm_generate(m, &p, &img), LDM_ERR_INVALID_ARGUMENT);
    /* a mask without init image */
    ldm_tensor *mask = rect_mask(1, 64, 64, 0, 8, 0, 8);
    p.init_image = NULL;
    p.mask = mask;
    ck_assert_int_eq(ldm_generate(m, &p, &img), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "mask"));
    /* a standalone struct from an older header (no x_T field) still works */
    ldm_generate_params old;
    ldm_generate_params_init(&old);
    old.struct_size = offsetof(ldm_generate_params, x_T);
    old.class_label = 9;
    old.steps = 2;
    old.guidance_scale = 4.0f;
    ldm_tensor *o = generate_ok(m, &old);
    ck_assert_double_eq(max_abs_diff(o, g4), 0.0);
    ldm_tensor *all[] = {u, u2, g1, g4, init, odd, mask, o};
    for (size_t i = 0; i < 8; i++) ldm_tensor_free(all[i]);
    ldm_model_free(m);
}
END_TEST

START_TEST(test_concat_model_errors)
{
    fixture f;
    if (!fixture_open("ldm_sr_concat", &f)) return;
    ldm_generate_params p;
    ldm_generate_params_init(&p);
    p.steps = 2;
    ldm_tensor *img = NULL;
    ck_assert_int_eq(ldm_generate(f.model, &p, &img), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "cond_image"));
    /* batch 2 from one LR image: both rows see it */
    ldm_tensor *lr = io_tensor(f.io, "lr_image");
    p.cond_image = lr;
    p.batch = 2;
    img = generate_ok(f.model, &p);
    expect_shape(img, 2, 3, 8, 8);
    ldm_tensor_free(img);
    ldm_tensor_free(lr);
    fixture_close(&f);
}
END_TEST

static Suite *pipeline_suite(void)
{
    Suite *s = suite_create("pipeline");
    TCase *fx = tcase_create("fixtures");
    tcase_set_timeout(fx, 300);
    tcase_add_test(fx, test_cin_ddim_reproduces_fixture);
    tcase_add_test(fx, test_sd1_txt2img_reproduces_fixture);
    tcase_add_test(fx, test_sd2v_reproduces_fixture);
    tcase_add_test(fx, test_sr_reproduces_fixture);
    tcase_add_test(fx, test_uncond_plms_reproduces_fixture);
    tcase_add_test(fx, test_ldm_inpaint_model);
    tcase_add_test(fx, test_semantic_synthesis);
    tcase_add_test(fx, test_layout_to_image);
    tcase_add_test(fx, test_bert_text_to_image);
    tcase_add_test(fx, test_concat_model_errors);
    tcase_add_test(fx, test_sd_inpainting_routes_like_txt2img);
    tcase_add_test(fx, test_sd_inpainting_conditioning);
    suite_add_tcase(s, fx);
    TCase *i2i = tcase_create("img2img");
    tcase_set_timeout(i2i, 300);
    tcase_add_test(i2i, test_img2img_start_step_and_noise_level);
    tcase_add_test(i2i, test_img2img_strength_near_zero);
    tcase_add_test(i2i, test_mask_blend_inpainting);
    suite_add_tcase(s, i2i);
    TCase *sz = tcase_create("sizes");
    tcase_set_timeout(sz, 300);
    tcase_add_test(sz, test_large_resolution);
    tcase_add_test(sz, test_tile_blending_exact);
    tcase_add_test(sz, test_tiled_decode);
    tcase_add_test(sz, test_generate_vae_tile);
    suite_add_tcase(s, sz);
    TCase *run = tcase_create("run");
    tcase_set_timeout(run, 300);
    tcase_add_test(run, test_every_sampler_deterministic);
    tcase_add_test(run, test_progress_cancel);
    tcase_add_test(run, test_interrupt_from_thread);
    tcase_add_test(run, test_class_inputs_and_errors);
    suite_add_tcase(s, run);
    return s;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* keep the measurements printed by a failing test */
    return ck_run_suite(pipeline_suite());
}
