/* test_taesd.c - the tiny autoencoder (TAESD) beyond its goldens (tests/fixtures/taesd_*, run by
 * the conformance runner): the three weight layouts give the same network, bad files give named
 * errors, the model-level tiny autoencoder in every pipeline, and step previews. */
#include "ldm.h"

#include <check.h>

#include "api/pipeline_internal.h"
#include "core/tensor.h"
#include "io/weights.h"
#include "models/config.h"
#include "support/ck_fixture.h"
#include "support/ck_run.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* <dir of this file>/<rel>: the fixtures of this repository. */
static const char *source_path(const char *rel)
{
    static char path[1024];
    const char *slash = strrchr(__FILE__, '/');
    int dirlen = slash ? (int)(slash - __FILE__) : 0;
    snprintf(path, sizeof path, "%.*s%s%s", dirlen, __FILE__, slash ? "/" : "", rel);
    return path;
}

#define DIFFUSERS_FILE "fixtures/taesd_diffusers/diffusion_pytorch_model.safetensors"
#define ENCODER_PTH    "fixtures/taesd_diffusers/taesd_encoder.pth"
#define DECODER_FILE   "fixtures/taesd_sd_decoder/taesd_decoder.safetensors"

static char tmpdir[256];

static const char *tmp_path(const char *name)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    return path;
}

static void setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ldm_taesd_XXXXXX");
    ck_assert(mkdtemp(tmpdir) != NULL);
}

static void teardown(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    ck_assert(system(cmd) == 0);
}

static ldm_tiny_autoencoder *load_ok(const char *path)
{
    ldm_tiny_autoencoder *t = NULL;
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    mp.n_threads = 2;
    ck_assert_msg(ldm_tiny_autoencoder_load(path, &mp, &t) == LDM_OK, "%s: %s", path, ldm_last_error());
    return t;
}

static ldm_tensor *seeded(int64_t b, int64_t c, int64_t h, int64_t w, uint64_t seed, float scale)
{
    ldm_tensor *t = NULL;
    int64_t shape[4] = {b, c, h, w};
    ck_assert(ldm_tensor_create(LDM_F32, 4, shape, &t) == LDM_OK);
    ck_assert(ldm_randn(seed, 0, t) == LDM_OK);
    for (int64_t i = 0; i < lt_numel(t); i++) lt_f32(t)[i] *= scale;
    return t;
}

static void expect_same(const ldm_tensor *a, const ldm_tensor *b)
{
    ck_assert_int_eq(a->ndim, b->ndim);
    for (int i = 0; i < a->ndim; i++) ck_assert_int_eq(a->shape[i], b->shape[i]);
    ck_assert(memcmp(a->data, b->data, (size_t)lt_numel(a) * sizeof(float)) == 0);
}

/* Rewrites the safetensors file `src` to `dst`: each tensor renamed by `rename` (NULL drops it),
 * plus an optional extra tensor. */
typedef const char *(*renamer)(const char *name, char *buf, size_t cap);

static void rewrite(const char *src, const char *dst, renamer rename, const char *extra)
{
    lw_store *s = NULL;
    ck_assert_msg(lw_open(src, 0, &s) == LDM_OK, "%s", ldm_last_error());
    size_t n = lw_count(s);
    lw_out_tensor *out = calloc(n + 1, sizeof *out);
    char(*names)[128] = calloc(n + 1, 128);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const lw_tensor *t = lw_at(s, i);
        const char *name = rename ? rename(t->name, names[k], 128) : t->name;
        if (!name) continue;
        out[k] = (lw_out_tensor){.name = name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
        memcpy(out[k].shape, t->shape, sizeof t->shape);
        k++;
    }
    static const uint16_t one[4] = {0x3c00, 0x3c00, 0x3c00, 0x3c00};
    if (extra) out[k++] = (lw_out_tensor){.name = extra, .dtype = LW_F16, .ndim = 1, .shape = {4}, .data = one};
    ck_assert_msg(lw_write_safetensors(dst, out, k, NULL, NULL, 0) == LDM_OK, "%s", ldm_last_error());
    free(out);
    free(names);
    lw_close(s);
}

/* diffusers -> a whole TAESD module's state dict: decoder.layers.i -> decoder.(i+1). */
static const char *to_module(const char *name, char *buf, size_t cap)
{
    int i;
    char rest[96];
    if (sscanf(name, "decoder.layers.%d.%95s", &i, rest) == 2)
        snprintf(buf, cap, "decoder.%d.%s", i + 1, rest);
    else if (sscanf(name, "encoder.layers.%d.%95s", &i, rest) == 2)
        snprintf(buf, cap, "encoder.%d.%s", i, rest);
    else
        return NULL;
    return buf;
}

/* ---------------------------------------------------------------- layouts */

START_TEST(test_layouts_agree)
{
    ldm_tiny_autoencoder *d = load_ok(source_path(DIFFUSERS_FILE));
    ck_assert(ldm_tiny_autoencoder_has_encoder(d) && ldm_tiny_autoencoder_has_decoder(d));
    ck_assert_int_eq(ldm_tiny_autoencoder_latent_channels(d), 4);
    rewrite(source_path(DIFFUSERS_FILE), tmp_path("module.safetensors"), to_module, NULL);
    ldm_tiny_autoencoder *m = load_ok(tmp_path("module.safetensors"));
    ldm_tiny_autoencoder *e = load_ok(source_path(ENCODER_PTH));
    ck_assert(ldm_tiny_autoencoder_has_encoder(e) && !ldm_tiny_autoencoder_has_decoder(e));
    ldm_tensor *z = seeded(2, 4, 4, 6, 1, 2.0f), *x = seeded(1, 3, 24, 16, 2, 0.5f);
    ldm_tensor *a = NULL, *b = NULL, *c = NULL, *za = NULL, *zb = NULL, *zc = NULL;
    ck_assert(ldm_tiny_autoencoder_decode(d, z, &a) == LDM_OK);
    ck_assert(ldm_tiny_autoencoder_decode(m, z, &b) == LDM_OK);
    ck_assert_int_eq(a->shape[0], 2);
    ck_assert_int_eq(a->shape[1], 3);
    ck_assert_int_eq(a->shape[2], 32);
    ck_assert_int_eq(a->shape[3], 48);
    expect_same(a, b);
    ck_assert(ldm_tiny_autoencoder_encode(d, x, &za) == LDM_OK);
    ck_assert(ldm_tiny_autoencoder_encode(m, x, &zb) == LDM_OK);
    ck_assert(ldm_tiny_autoencoder_encode(e, x, &zc) == LDM_OK);
    ck_assert_int_eq(za->shape[2], 3);
    ck_assert_int_eq(za->shape[3], 2);
    expect_same(za, zb);
    expect_same(za, zc);
    /* an encoder-only file cannot decode, a decoder-only one cannot encode */
    ck_assert_int_eq(ldm_tiny_autoencoder_decode(e, z, &c), LDM_ERR_NOT_FOUND);
    ck_assert(c == NULL);
    ldm_tiny_autoencoder *dec = load_ok(source_path(DECODER_FILE));
    ck_assert(!ldm_tiny_autoencoder_has_encoder(dec) && ldm_tiny_autoencoder_has_decoder(dec));
    ck_assert_int_eq(ldm_tiny_autoencoder_encode(dec, x, &c), LDM_ERR_NOT_FOUND);
    ldm_tensor *t[] = {z, x, a, b, za, zb, zc};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) ldm_tensor_free(t[i]);
    ldm_tiny_autoencoder_free(d);
    ldm_tiny_autoencoder_free(m);
    ldm_tiny_autoencoder_free(e);
    ldm_tiny_autoencoder_free(dec);
}
END_TEST

/* Results do not depend on the thread count beyond float rounding (here: not at all). */
/* Latents above 128x128 decode in blended tiles (the 64-channel maps of a whole decode would pass
 * 1 GB at 1024x1024): the image has the whole size, and a latent of one tile is decoded whole. */
START_TEST(test_large_latent_tiles)
{
    ldm_tiny_autoencoder *t = load_ok(source_path(DIFFUSERS_FILE));
    ldm_tensor *z = seeded(1, 4, 9, 1900, 5, 1.0f), *img = NULL;
    ck_assert_msg(ldm_tiny_autoencoder_decode(t, z, &img) == LDM_OK, "%s", ldm_last_error());
    ck_assert_int_eq(img->shape[2], 72);
    ck_assert_int_eq(img->shape[3], 15200);
    for (int64_t i = 0; i < lt_numel(img); i += 997) ck_assert(isfinite(lt_f32(img)[i]));
    ldm_tensor_free(img);
    ldm_tensor_free(z);
    ldm_tiny_autoencoder_free(t);
}
END_TEST

START_TEST(test_threads)
{
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    ldm_tiny_autoencoder *one = NULL, *three = NULL;
    mp.n_threads = 1;
    ck_assert(ldm_tiny_autoencoder_load(source_path(DIFFUSERS_FILE), &mp, &one) == LDM_OK);
    mp.n_threads = 3;
    ck_assert(ldm_tiny_autoencoder_load(source_path(DIFFUSERS_FILE), &mp, &three) == LDM_OK);
    ldm_tensor *z = seeded(1, 4, 16, 16, 3, 2.0f), *a = NULL, *b = NULL;
    ck_assert(ldm_tiny_autoencoder_decode(one, z, &a) == LDM_OK);
    ck_assert(ldm_tiny_autoencoder_decode(three, z, &b) == LDM_OK);
    double err = 0;
    for (int64_t i = 0; i < lt_numel(a); i++) err = fmax(err, fabs(lt_f32(a)[i] - lt_f32(b)[i]));
    ck_assert_msg(err < 1e-5, "1 vs 3 threads: %g", err);
    ldm_tensor_free(z);
    ldm_tensor_free(a);
    ldm_tensor_free(b);
    ldm_tiny_autoencoder_free(one);
    ldm_tiny_autoencoder_free(three);
}
END_TEST

/* ---------------------------------------------------------------- bad files */

static void expect_load_error(const char *path, ldm_status want, const char *in_message)
{
    ldm_tiny_autoencoder *t = NULL;
    ldm_status st = ldm_tiny_autoencoder_load(path, NULL, &t);
    ck_assert_msg(st == want, "%s: status %d (%s), expected %d", path, st, ldm_last_error(), want);
    ck_assert(t == NULL);
    ck_assert_msg(strstr(ldm_last_error(), in_message), "'%s' does not mention '%s'", ldm_last_error(), in_message);
}

static const char *drop_one(const char *name, char *buf, size_t cap)
{
    (void)buf;
    (void)cap;
    return strcmp(name, "8.conv.2.weight") == 0 ? NULL : name;
}

static const char *misname(const char *name, char *buf, size_t cap)
{
    if (strcmp(name, "19.weight") != 0) return name;
    snprintf(buf, cap, "19.weight_typo");
    return buf;
}

static const char *drop_decoder(const char *name, char *buf, size_t cap)
{
    (void)buf;
    (void)cap;
    return strncmp(name, "decoder.", 8) == 0 ? NULL : name;
}

START_TEST(test_bad_files)
{
    /* truncated */
    FILE *in = fopen(source_path(DECODER_FILE), "rb");
    ck_assert(in != NULL);
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, in);
    fclose(in);
    FILE *out = fopen(tmp_path("truncated.safetensors"), "wb");
    ck_assert(fwrite(buf, 1, n / 2, out) == n / 2);
    fclose(out);
    expect_load_error(tmp_path("truncated.safetensors"), LDM_ERR_FORMAT, "truncated.safetensors");
    /* a missing tensor, a tensor the network does not use */
    rewrite(source_path(DECODER_FILE), tmp_path("missing.safetensors"), drop_one, NULL);
    expect_load_error(tmp_path("missing.safetensors"), LDM_ERR_NOT_FOUND, "8.conv.2.weight");
    rewrite(source_path(DECODER_FILE), tmp_path("extra.safetensors"), NULL, "3.skip.weight");
    expect_load_error(tmp_path("extra.safetensors"), LDM_ERR_FORMAT, "3.skip.weight");
    rewrite(source_path(DECODER_FILE), tmp_path("typo.safetensors"), misname, NULL);
    expect_load_error(tmp_path("typo.safetensors"), LDM_ERR_NOT_FOUND, "19.weight");
    /* wrong shapes: the 16-wide diffusers encoder beside the 64-wide decoder */
    rewrite(source_path(DIFFUSERS_FILE), tmp_path("enc16.safetensors"), drop_decoder, NULL);
    {
        lw_store *a = NULL, *b = NULL;
        ck_assert(lw_open(tmp_path("enc16.safetensors"), 0, &a) == LDM_OK);
        ck_assert(lw_open(source_path(DECODER_FILE), 0, &b) == LDM_OK);
        size_t na = lw_count(a), nb = lw_count(b);
        lw_out_tensor *o = calloc(na + nb, sizeof *o);
        char(*names)[64] = calloc(nb, 64);
        for (size_t i = 0; i < na; i++) {
            const lw_tensor *t = lw_at(a, i);
            o[i] = (lw_out_tensor){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
            memcpy(o[i].shape, t->shape, sizeof t->shape);
        }
        for (size_t i = 0; i < nb; i++) {
            const lw_tensor *t = lw_at(b, i);
            snprintf(names[i], 64, "decoder.layers.%d.%s", atoi(t->name) - 1, strchr(t->name, '.') + 1);
            o[na + i] = (lw_out_tensor){.name = names[i], .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
            memcpy(o[na + i].shape, t->shape, sizeof t->shape);
        }
        ck_assert(lw_write_safetensors(tmp_path("mixed.safetensors"), o, na + nb, NULL, NULL, 0) == LDM_OK);
        free(o);
        free(names);
        lw_close(a);
        lw_close(b);
    }
    expect_load_error(tmp_path("mixed.safetensors"), LDM_ERR_FORMAT, "does not match the decoder");
    /* not a tiny autoencoder: a full KL first stage */
    char dir[1024], path[1100];
    if (fixture_dir("ae_kl_f8", dir, sizeof dir)) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        expect_load_error(path, LDM_ERR_NOT_FOUND, "TAESD module layout");
    }
    out = fopen(tmp_path("empty.safetensors"), "wb");
    fclose(out);
    expect_load_error(tmp_path("empty.safetensors"), LDM_ERR_FORMAT, "empty.safetensors");
    expect_load_error(tmp_path("absent.safetensors"), LDM_ERR_IO, "absent.safetensors");
}
END_TEST

START_TEST(test_bad_inputs)
{
    ldm_tiny_autoencoder *t = load_ok(source_path(DIFFUSERS_FILE));
    ldm_tensor *z3 = seeded(1, 3, 4, 4, 1, 1.0f), *x4 = seeded(1, 4, 16, 16, 1, 1.0f), *out = NULL;
    ck_assert_int_eq(ldm_tiny_autoencoder_decode(t, z3, &out), LDM_ERR_INVALID_ARGUMENT);
    ck_assert(strstr(ldm_last_error(), "[B,4,H,W]"));
    ck_assert_int_eq(ldm_tiny_autoencoder_encode(t, x4, &out), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ldm_tiny_autoencoder_decode(t, NULL, &out), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ldm_tiny_autoencoder_decode(NULL, z3, &out), LDM_ERR_INVALID_ARGUMENT);
    lt_f32(x4)[5] = NAN;
    ldm_tensor *nan_z = seeded(1, 4, 2, 2, 1, 1.0f);
    lt_f32(nan_z)[0] = NAN;
    ck_assert_int_eq(ldm_tiny_autoencoder_decode(t, nan_z, &out), LDM_ERR_NUMERIC);
    ck_assert(out == NULL);
    ldm_tensor_free(z3);
    ldm_tensor_free(x4);
    ldm_tensor_free(nan_z);
    ldm_tiny_autoencoder_free(t);
}
END_TEST

/* ---------------------------------------------------------------- in a model */

/* The ldm_sd1_txt2img fixture with an 8x KL first stage (4 levels, seeded weights) in place of
 * its 1x one: the SD latent space's geometry at a test model's size. */
static ldm_model *sd_f8_model(void)
{
    char dir[1024], path[1200];
    if (!fixture_dir("ldm_sd1_txt2img", dir, sizeof dir)) return NULL;
    snprintf(path, sizeof path, "%s/config.yaml", dir);
    FILE *fp = fopen(path, "rb");
    ck_assert(fp != NULL);
    static char yaml[1 << 16];
    size_t len = fread(yaml, 1, sizeof yaml - 1, fp);
    fclose(fp);
    yaml[len] = '\0';
    const char *one = "          ch_mult:\n          - 1\n";
    char *at = strstr(yaml, one);
    ck_assert(at != NULL);
    static char edited[1 << 16];
    snprintf(edited, sizeof edited,
             "%.*s          ch_mult:\n          - 1\n          - 1\n          - 1\n          - 1\n%s", (int)(at - yaml),
             yaml, at + strlen(one));
    lw_store *src = NULL;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ck_assert(lw_open(path, 0, &src) == LDM_OK);
    ldm_model_params mp, p;
    ldm_model_params_init(&mp);
    snprintf(path, sizeof path, "%s/../../vocab", dir);
    mp.vocab_path = path;
    mp.n_threads = 2;
    ldm_model *m = NULL;
    ck_assert(lm_model_new("test:sd-f8", &mp, &m, &p) == LDM_OK);
    ck_assert_msg(ld_config_parse(edited, strlen(edited), "test:sd-f8", &m->desc) == LDM_OK, "%s", ldm_last_error());
    ck_assert(lw_store_create("test:sd-f8", &m->store) == LDM_OK);
    for (size_t i = 0; i < lw_count(src); i++) {
        const lw_tensor *t = lw_at(src, i);
        if (strncmp(t->name, "first_stage_model.", 18) == 0) continue;
        size_t nb = t->nbytes ? t->nbytes : 1;
        void *copy = ldm_malloc_aligned(nb);
        memcpy(copy, t->data, t->nbytes);
        ck_assert(lw_store_keep(m->store, copy) == LDM_OK);
        ck_assert(lw_store_add(m->store, t->name, t->dtype, t->ndim, t->shape, copy, t->nbytes) == LDM_OK);
    }
    lw_close(src);
    lw_store_set_synthetic(m->store, 7);
    ck_assert(lw_store_seal(m->store) == LDM_OK);
    ck_assert_msg(lm_load_from(m, &p) == LDM_OK, "%s", ldm_last_error());
    return m;
}

static void gen_params(ldm_generate_params *p)
{
    ldm_generate_params_init(p);
    p->prompt = "a red fox";
    p->steps = 5;
    p->width = p->height = 64;
    p->seed = 11;
    p->guidance_scale = 2.0f;
}

START_TEST(test_model_refuses_other_latent_spaces)
{
    char dir[1024], path[1200];
    if (!fixture_dir("ldm_sd1_txt2img", dir, sizeof dir)) return;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    ldm_model *m = NULL;
    ck_assert(ldm_model_load(path, &mp, &m) == LDM_OK);
    /* the fixture's first stage is 1x (one level): not TAESD's latent space */
    ck_assert_int_eq(ldm_model_set_tiny_autoencoder(m, source_path(DIFFUSERS_FILE)), LDM_ERR_INVALID_ARGUMENT);
    ck_assert(strstr(ldm_last_error(), "at 1x"));
    ck_assert(!ldm_model_has_tiny_decoder(m));
    ldm_model_free(m);
    ldm_model *demo = NULL;
    ck_assert(ldm_model_load_builtin("demo", 0, &mp, &demo) == LDM_OK);
    ck_assert_int_eq(ldm_model_set_tiny_autoencoder(demo, source_path(DIFFUSERS_FILE)), LDM_ERR_INVALID_ARGUMENT);
    ldm_model_free(demo);
}
END_TEST

START_TEST(test_model_pipelines)
{
    ldm_model *m = sd_f8_model();
    if (!m) return;
    ldm_tiny_autoencoder *t = load_ok(source_path(DIFFUSERS_FILE));
    ldm_generate_params p;
    gen_params(&p);
    p.vae = LDM_VAE_TINY;
    ldm_tensor *img = NULL, *z = NULL, *ref = NULL, *full = NULL;
    /* no tiny autoencoder yet */
    ck_assert_int_eq(ldm_generate(m, &p, &img), LDM_ERR_INVALID_ARGUMENT);
    ck_assert(strstr(ldm_last_error(), "ldm_model_set_tiny_autoencoder"));
    /* decoder first, then the encoder from another file (the .pth): both parts kept */
    ck_assert_msg(ldm_model_set_tiny_autoencoder(m, source_path(DIFFUSERS_FILE)) == LDM_OK, "%s", ldm_last_error());
    ck_assert_msg(ldm_model_set_tiny_autoencoder(m, source_path(ENCODER_PTH)) == LDM_OK, "%s", ldm_last_error());
    ck_assert(ldm_model_has_tiny_decoder(m) && ldm_model_has_tiny_encoder(m));
    /* txt2img: the sampled latent decoded as it is (no scale_factor) by the tiny decoder */
    ck_assert_msg(ldm_generate(m, &p, &img) == LDM_OK, "%s", ldm_last_error());
    ck_assert_msg(lp_generate_latent(m, &p, &z) == LDM_OK, "%s", ldm_last_error());
    ck_assert(ldm_tiny_autoencoder_decode(t, z, &ref) == LDM_OK);
    expect_same(img, ref);
    ldm_tensor_free(ref);
    ck_assert(ldm_model_decode_latent_with(m, z, LDM_VAE_TINY, &ref) == LDM_OK);
    expect_same(img, ref);
    ldm_tensor_free(ref);
    /* the full decoder differs (and is what LDM_VAE_FULL and the old call give) */
    ck_assert(ldm_model_decode_latent_with(m, z, LDM_VAE_FULL, &full) == LDM_OK);
    ck_assert(ldm_model_decode_latent(m, z, &ref) == LDM_OK);
    expect_same(full, ref);
    ck_assert(memcmp(full->data, img->data, (size_t)lt_numel(img) * 4) != 0);
    ldm_tensor_free(ref);
    ldm_tensor_free(full);
    /* encode: the tiny encoder, deterministic */
    ldm_tensor *za = NULL, *zb = NULL;
    ck_assert(ldm_model_encode_image(m, img, LDM_VAE_TINY, 1, &za) == LDM_OK);
    ck_assert(ldm_tiny_autoencoder_encode(t, img, &zb) == LDM_OK);
    expect_same(za, zb);
    ldm_tensor_free(zb);
    ck_assert(ldm_model_encode_image(m, img, LDM_VAE_FULL, 1, &zb) == LDM_OK);
    ck_assert_int_eq(zb->shape[1], 4);
    ck_assert_int_eq(zb->shape[2], 8);
    ldm_tensor_free(zb);
    ck_assert_int_eq(ldm_model_encode_image(m, img, (ldm_vae_choice)7, 1, &zb), LDM_ERR_INVALID_ARGUMENT);
    /* image-to-image and mask-blended inpainting run on the tiny autoencoder end to end */
    ldm_tensor *out = NULL, *mask = NULL;
    int64_t ms[4] = {1, 1, 64, 64};
    ck_assert(ldm_tensor_create(LDM_F32, 4, ms, &mask) == LDM_OK);
    for (int i = 0; i < 64 * 32; i++) lt_f32(mask)[i] = 1.0f;
    p.init_image = img;
    p.strength = 0.6f;
    ck_assert_msg(ldm_generate(m, &p, &out) == LDM_OK, "%s", ldm_last_error());
    ldm_tensor_free(out);
    p.mask = mask;
    ck_assert_msg(ldm_generate(m, &p, &out) == LDM_OK, "%s", ldm_last_error());
    /* the known half is the init image exactly (composite) */
    ck_assert(memcmp(lt_f32(out) + 64 * 32, lt_f32(img) + 64 * 32, 64 * 32 * sizeof(float)) == 0);
    ldm_tensor_free(out);
    /* only a decoder: image-to-image needs the encoder */
    ck_assert(ldm_model_set_tiny_autoencoder(m, NULL) == LDM_OK);
    ck_assert(!ldm_model_has_tiny_decoder(m) && !ldm_model_has_tiny_encoder(m));
    ck_assert(ldm_model_set_tiny_autoencoder(m, source_path(DECODER_FILE)) == LDM_OK);
    ck_assert_int_eq(ldm_generate(m, &p, &out), LDM_ERR_INVALID_ARGUMENT);
    ck_assert(strstr(ldm_last_error(), "tiny encoder"));
    p.init_image = NULL;
    p.mask = NULL;
    ck_assert_msg(ldm_generate(m, &p, &out) == LDM_OK, "%s", ldm_last_error());
    ck_assert_int_eq(out->shape[2], 64);
    ldm_tensor *list[] = {img, z, za, mask, out};
    for (size_t i = 0; i < sizeof list / sizeof list[0]; i++) ldm_tensor_free(list[i]);
    ldm_tiny_autoencoder_free(t);
    ldm_model_free(m);
}
END_TEST

/* ---------------------------------------------------------------- previews */

typedef struct preview_log {
    int calls, steps[16], total;
    int64_t shape[4];
    double first_pixel;
    int stop_at; /* return non-zero at this step (0: never) */
} preview_log;

static int on_preview(int step, int total, const ldm_tensor *image, void *user)
{
    preview_log *l = user;
    if (l->calls < 16) l->steps[l->calls] = step;
    l->calls++;
    l->total = total;
    for (int i = 0; i < 4; i++) l->shape[i] = ldm_tensor_dim(image, i);
    l->first_pixel = ((const float *)ldm_tensor_data((ldm_tensor *)image))[0];
    return l->stop_at && step >= l->stop_at;
}

static void run_preview(ldm_model *m, int kind, int every, int steps, preview_log *l, ldm_status want)
{
    ldm_generate_params p;
    gen_params(&p);
    p.steps = steps;
    p.preview = on_preview;
    p.preview_user_data = l;
    p.preview_every = every;
    p.preview_kind = kind;
    ldm_tensor *img = NULL;
    ldm_status st = ldm_generate(m, &p, &img);
    ck_assert_msg(st == want, "status %d: %s", st, ldm_last_error());
    ldm_tensor_free(img);
}

START_TEST(test_previews)
{
    ldm_model *m = sd_f8_model();
    if (!m) return;
    preview_log l = {0};
    /* no tiny decoder: AUTO is the linear map at latent resolution */
    ldm_generate_params p, r;
    gen_params(&p);
    ck_assert(ldm_generate_params_resolve(m, &p, &r) == LDM_OK);
    ck_assert_int_eq(r.preview_kind, LDM_PREVIEW_LINEAR);
    ck_assert_int_eq(r.preview_every, 1);
    run_preview(m, LDM_PREVIEW_AUTO, 2, 5, &l, LDM_OK);
    ck_assert_int_eq(l.calls, 2); /* after steps 2 and 4 of 5 */
    ck_assert_int_eq(l.steps[0], 2);
    ck_assert_int_eq(l.steps[1], 4);
    ck_assert_int_eq(l.total, 5);
    ck_assert(l.shape[0] == 1 && l.shape[1] == 3 && l.shape[2] == 8 && l.shape[3] == 8);
    p.preview_kind = LDM_PREVIEW_TINY;
    ck_assert_int_eq(ldm_generate_params_resolve(m, &p, &r), LDM_ERR_INVALID_ARGUMENT);
    /* the full first stage: image size, every step */
    memset(&l, 0, sizeof l);
    run_preview(m, LDM_PREVIEW_FULL, 0, 4, &l, LDM_OK);
    ck_assert_int_eq(l.calls, 4);
    ck_assert(l.shape[1] == 3 && l.shape[2] == 64 && l.shape[3] == 64);
    /* with a tiny decoder AUTO is it: the last preview is the tiny decode of the last step's x0
     * prediction, which the final latent nearly is (DDIM's last step still adds
     * sqrt(1 - alphas_cumprod[0]) = 0.03 of eps) */
    ck_assert(ldm_model_set_tiny_autoencoder(m, source_path(DECODER_FILE)) == LDM_OK);
    gen_params(&p);
    ck_assert(ldm_generate_params_resolve(m, &p, &r) == LDM_OK);
    ck_assert_int_eq(r.preview_kind, LDM_PREVIEW_TINY);
    memset(&l, 0, sizeof l);
    run_preview(m, LDM_PREVIEW_AUTO, 1, 4, &l, LDM_OK);
    ck_assert_int_eq(l.calls, 4);
    ck_assert(l.shape[1] == 3 && l.shape[2] == 64 && l.shape[3] == 64);
    ldm_tensor *img = NULL;
    p.steps = 4;
    p.vae = LDM_VAE_TINY;
    ck_assert(ldm_generate(m, &p, &img) == LDM_OK);
    ck_assert_msg(fabs(lt_f32(img)[0] - l.first_pixel) < 0.02 && lt_f32(img)[0] != l.first_pixel, "%g vs %g",
                  lt_f32(img)[0], l.first_pixel);
    ldm_tensor_free(img);
    /* cancel from the callback: LDM_CANCELLED at that step, and the model runs normally after */
    memset(&l, 0, sizeof l);
    l.stop_at = 2;
    run_preview(m, LDM_PREVIEW_TINY, 1, 5, &l, LDM_CANCELLED);
    ck_assert_int_eq(l.calls, 2);
    ck_assert(strstr(ldm_last_error(), "preview callback at step 2 of 5"));
    memset(&l, 0, sizeof l);
    run_preview(m, LDM_PREVIEW_LINEAR, 5, 5, &l, LDM_OK);
    ck_assert_int_eq(l.calls, 1);
    /* bad values */
    run_preview(m, 9, 1, 2, &l, LDM_ERR_INVALID_ARGUMENT);
    run_preview(m, LDM_PREVIEW_TINY, -1, 2, &l, LDM_ERR_INVALID_ARGUMENT);
    ldm_model_free(m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("taesd");
    TCase *files = tcase_create("files"), *model = tcase_create("model");
    tcase_add_checked_fixture(files, setup, teardown);
    tcase_set_timeout(files, 600);
    tcase_set_timeout(model, 600);
    tcase_add_test(files, test_layouts_agree);
    tcase_add_test(files, test_threads);
    tcase_add_test(files, test_large_latent_tiles);
    tcase_add_test(files, test_bad_files);
    tcase_add_test(files, test_bad_inputs);
    tcase_add_test(model, test_model_refuses_other_latent_spaces);
    tcase_add_test(model, test_model_pipelines);
    tcase_add_test(model, test_previews);
    suite_add_tcase(s, files);
    suite_add_tcase(s, model);
    return ck_run_suite(s);
}
