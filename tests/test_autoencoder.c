/* test_autoencoder.c - first-stage autoencoders against the fixtures ae_kl_f8 (safetensors and
 * PyTorch .ckpt), ae_kl_f4 (attn_type none) and ae_vq_f4 (VQ codebook), plus batching, odd
 * sizes, checkpoint key prefixes, thread independence, bad inputs, wrong/missing weights,
 * cancellation and allocation failures. */
#include <check.h>

#include "core/ctx.h"
#include "core/tensor.h"
#include "io/weights.h"
#include "models/autoencoder.h"
#include "models/config.h"
#include "support/ck_fixture.h"
#include "support/ck_run.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---------------------------------------------------------------- fixture access */

/* Compares `got` with io tensor `ref_name` at the case's tolerance for `tol_name`. */
static void expect_match(const char *fixture, const lj_value *cas, const lw_store *io, const char *ref_name,
                         const char *tol_name, const ldm_tensor *got)
{
    ldm_tensor *ref = io_tensor(io, ref_name);
    fx_tolerance tol = fx_tolerance_for(cas, tol_name);
    fx_compare_result r;
    int ok = fx_compare(got, ref, tol, &r);
    printf("%s %s: max abs err %.3g (atol %.3g rtol %.3g)\n", fixture, tol_name, r.max_abs, tol.atol, tol.rtol);
    ldm_tensor_free(ref);
    ck_assert_msg(ok, "%s %s: %s", fixture, tol_name, r.note);
}

static void expect_ok(ldm_status st, const char *what)
{
    ck_assert_msg(st == LDM_OK, "%s: %s (%s)", what, ldm_status_string(st), ldm_last_error());
}

static void expect_fail(ldm_status st, ldm_status want, const char *needle, const char *what)
{
    ck_assert_msg(st == want, "%s: expected status %s, got %s (%s)", what, ldm_status_string(want),
                  ldm_status_string(st), ldm_last_error());
    ck_assert_msg(strstr(ldm_last_error(), needle) != NULL, "%s: message \"%s\" lacks \"%s\"", what, ldm_last_error(),
                  needle);
    printf("expected failure (%s): %s\n", what, ldm_last_error());
}

/* ---------------------------------------------------------------- descriptions */

typedef struct ae_fixture {
    const char *name;
    ld_autoencoder desc;
} ae_fixture;

static ld_autoencoder base_desc(int is_vq, int embed_dim, int z_channels, int n_levels, const int *mult)
{
    ld_autoencoder d;
    memset(&d, 0, sizeof d);
    d.present = 1;
    d.is_vq = is_vq;
    d.in_channels = 3;
    d.out_ch = 3;
    d.ch = 32;
    d.z_channels = z_channels;
    d.resolution = 64;
    d.n_levels = n_levels;
    for (int i = 0; i < n_levels; i++) d.ch_mult[i] = mult[i];
    d.num_res_blocks = 1;
    d.double_z = !is_vq;
    d.embed_dim = embed_dim;
    return d;
}

/* The ddconfigs of the three fixtures, written out from their config.yaml. */
static ae_fixture fixture_kl_f8(void)
{
    ae_fixture f = {"ae_kl_f8", base_desc(0, 4, 4, 4, (const int[]){1, 1, 1, 1})};
    f.desc.attn_resolutions[0] = 16;
    f.desc.n_attn_resolutions = 1;
    return f;
}

static ae_fixture fixture_kl_f4(void)
{
    ae_fixture f = {"ae_kl_f4", base_desc(0, 3, 3, 3, (const int[]){1, 1, 1})};
    f.desc.attn_none = 1;
    return f;
}

static ae_fixture fixture_vq_f4(void)
{
    ae_fixture f = {"ae_vq_f4", base_desc(1, 3, 3, 3, (const int[]){1, 1, 2})};
    f.desc.n_embed = 32;
    return f;
}

/* The description the library will actually use: config.yaml through ld_config_load, checked
 * against the hand-written one (so a config-reader regression shows up here too). */
static ld_autoencoder config_desc(const char *dir, const ld_autoencoder *w)
{
    char path[4096];
    ld_model m;
    snprintf(path, sizeof path, "%s/config.yaml", dir);
    expect_ok(ld_config_load(path, &m), path);
    const ld_autoencoder *a = &m.first_stage;
    ck_assert_int_eq(a->present, 1);
    ck_assert_int_eq(a->is_vq, w->is_vq);
    ck_assert_int_eq(a->in_channels, w->in_channels);
    ck_assert_int_eq(a->out_ch, w->out_ch);
    ck_assert_int_eq(a->ch, w->ch);
    ck_assert_int_eq(a->n_levels, w->n_levels);
    for (int i = 0; i < w->n_levels; i++) ck_assert_int_eq(a->ch_mult[i], w->ch_mult[i]);
    ck_assert_int_eq(a->num_res_blocks, w->num_res_blocks);
    ck_assert_int_eq(a->n_attn_resolutions, w->n_attn_resolutions);
    for (int i = 0; i < w->n_attn_resolutions; i++) ck_assert_int_eq(a->attn_resolutions[i], w->attn_resolutions[i]);
    ck_assert_int_eq(a->attn_none, w->attn_none);
    ck_assert_int_eq(a->double_z, w->double_z);
    ck_assert_int_eq(a->z_channels, w->z_channels);
    ck_assert_int_eq(a->embed_dim, w->embed_dim);
    ck_assert_int_eq(a->n_embed, w->n_embed);
    ck_assert_int_eq(a->resolution, w->resolution);
    return *a;
}

static ld_autoencoder fixture_desc(const char *dir, const ae_fixture *f) { return config_desc(dir, &f->desc); }

/* An open fixture: weights, io tensors, case.json and the network. */
typedef struct opened {
    char dir[4096];
    ae_fixture f;
    lw_store *weights, *io;
    lj_value *cas;
    lae *ae;
} opened;

static int open_fixture(ae_fixture f, const char *weights_file, opened *o)
{
    memset(o, 0, sizeof *o);
    o->f = f;
    if (!fixture_dir(f.name, o->dir, sizeof o->dir)) return 0;
    o->weights = open_file(o->dir, weights_file);
    o->io = open_file(o->dir, "io.safetensors");
    o->cas = load_case(o->dir);
    ld_autoencoder d = fixture_desc(o->dir, &f);
    expect_ok(lae_create(&d, o->weights, "", &o->ae), f.name);
    return 1;
}

static void close_fixture(opened *o)
{
    lae_free(o->ae);
    lj_free(o->cas);
    lw_close(o->io);
    lw_close(o->weights);
    memset(o, 0, sizeof *o);
}

/* A ctx on a pool of n threads (caller frees the pool). */
static lctx make_ctx(int n, lpool **pool)
{
    *pool = lpool_create(n);
    ck_assert_msg(*pool != NULL, "lpool_create: %s", ldm_last_error());
    lctx c = {.pool = *pool, .cancel = NULL};
    return c;
}

/* ---------------------------------------------------------------- KL fixtures */

/* autoencoder_kl.encode: moments and the posterior's mean/logvar/std; then every decode call. */
static void run_kl(opened *o, const lctx *c, int decode_mean)
{
    const char *fx = o->f.name;
    ldm_tensor *x = io_tensor(o->io, "x"), *moments = NULL, *mean = NULL, *logvar = NULL, *std = NULL;
    expect_ok(lae_encode(o->ae, c, x, &moments), "encode");
    expect_match(fx, o->cas, o->io, "moments", "moments", moments);
    expect_ok(lae_posterior_split(moments, &mean, &logvar, &std), "posterior");
    expect_match(fx, o->cas, o->io, "mean", "mean", mean);
    expect_match(fx, o->cas, o->io, "logvar", "logvar", logvar);
    expect_match(fx, o->cas, o->io, "std", "std", std);

    ldm_tensor *z = io_tensor(o->io, "z"), *image = NULL;
    expect_ok(lae_decode(o->ae, c, z, &image), "decode z");
    expect_match(fx, o->cas, o->io, "image", "image", image);
    ldm_tensor_free(image);
    if (decode_mean) {
        ldm_tensor *ref_mean = io_tensor(o->io, "mean");
        expect_ok(lae_decode(o->ae, c, ref_mean, &image), "decode mean");
        expect_match(fx, o->cas, o->io, "recon_mode", "recon_mode", image);
        ldm_tensor_free(image);
        ldm_tensor_free(ref_mean);
    }
    ldm_tensor_free(z);
    ldm_tensor_free(x);
    ldm_tensor_free(moments);
    ldm_tensor_free(mean);
    ldm_tensor_free(logvar);
    ldm_tensor_free(std);
}

START_TEST(test_kl_f8)
{
    opened o;
    if (!open_fixture(fixture_kl_f8(), "model.safetensors", &o)) return;
    lpool *pool;
    lctx c = make_ctx(fx_threads(), &pool);
    ck_assert_int_eq(lae_factor(o.ae), 8);
    ck_assert_int_eq(lae_latent_channels(o.ae), 4);
    ck_assert_int_eq(lae_is_vq(o.ae), 0);
    run_kl(&o, &c, 1);
    lpool_free(pool);
    close_fixture(&o);
}
END_TEST

/* The same weights from the PyTorch zip checkpoint. */
START_TEST(test_kl_f8_ckpt)
{
    opened o;
    if (!open_fixture(fixture_kl_f8(), "model.ckpt", &o)) return;
    run_kl(&o, NULL, 1);
    close_fixture(&o);
}
END_TEST

START_TEST(test_kl_f4)
{
    opened o;
    if (!open_fixture(fixture_kl_f4(), "model.safetensors", &o)) return;
    lpool *pool;
    lctx c = make_ctx(fx_threads(), &pool);
    ck_assert_int_eq(lae_factor(o.ae), 4);
    ck_assert_int_eq(lae_latent_channels(o.ae), 3);
    run_kl(&o, &c, 0);
    lpool_free(pool);
    close_fixture(&o);
}
END_TEST

/* ---------------------------------------------------------------- VQ fixture */

START_TEST(test_vq_f4)
{
    opened o;
    if (!open_fixture(fixture_vq_f4(), "model.safetensors", &o)) return;
    lpool *pool;
    lctx c = make_ctx(fx_threads(), &pool);
    const char *fx = o.f.name;
    ck_assert_int_eq(lae_is_vq(o.ae), 1);
    ck_assert_int_eq(lae_factor(o.ae), 4);

    ldm_tensor *x = io_tensor(o.io, "x"), *h = NULL;
    expect_ok(lae_encode(o.ae, &c, x, &h), "vq.encode");
    expect_match(fx, o.cas, o.io, "h", "h", h);

    /* vq.quantize on the reference h, and on ours (the argmin margin is 2.7e-4, far above our error) */
    ldm_tensor *ref_h = io_tensor(o.io, "h"), *quant = NULL, *indices = NULL;
    expect_ok(lae_quantize(o.ae, &c, ref_h, &quant, &indices), "vq.quantize");
    expect_match(fx, o.cas, o.io, "quant", "quant", quant);
    expect_match(fx, o.cas, o.io, "indices", "indices", indices);
    ldm_tensor_free(quant);
    ldm_tensor_free(indices);
    expect_ok(lae_quantize(o.ae, &c, h, NULL, &indices), "vq.quantize own h");
    expect_match(fx, o.cas, o.io, "indices", "indices", indices);
    ldm_tensor_free(indices);

    ldm_tensor *image = NULL;
    expect_ok(lae_decode(o.ae, &c, ref_h, &image), "vq.decode");
    expect_match(fx, o.cas, o.io, "image", "image", image);
    ldm_tensor_free(image);
    expect_ok(lae_decode_unquantized(o.ae, &c, ref_h, &image), "vq.decode_no_quantize");
    expect_match(fx, o.cas, o.io, "image_noquant", "image_noquant", image);
    ldm_tensor_free(image);

    ldm_tensor_free(ref_h);
    ldm_tensor_free(h);
    ldm_tensor_free(x);
    lpool_free(pool);
    close_fixture(&o);
}
END_TEST

/* ---------------------------------------------------------------- first stages inside LDMs */

/* The first stages of the latent diffusion fixtures (one-level f1 and two-level f2 shapes), under
 * "first_stage_model." (and "cond_stage_model." for inpainting), checked through the sampler
 * fixtures' decode_first_stage outputs: image = decode(samples / scale_factor). */
typedef struct ldm_case {
    const char *name;
    int is_vq, n_levels, nrb, attn_none;
    double scale_factor;
    const char *samples[2], *images[2];
} ldm_case;

static const ldm_case ldm_cases[] = {
    {"ldm_cin_ddim", 1, 1, 1, 0, 1.0, {"eta0_samples", "eta1_samples"}, {"eta0_image", "eta1_image"}},
    {"ldm_uncond_plms", 1, 1, 1, 1, 1.0, {"plms_samples", NULL}, {"plms_image", NULL}},
    {"ldm_sr_concat", 1, 1, 1, 0, 1.0, {"samples", NULL}, {"image", NULL}},
    {"ldm_sd1_txt2img", 0, 1, 1, 0, 0.18215, {"samples", NULL}, {"image", NULL}},
    {"ldm_sd2v_ddim", 0, 1, 1, 0, 0.18215, {"samples", NULL}, {"image", NULL}},
};

static ld_autoencoder ldm_case_desc(int is_vq, int n_levels, int nrb, int attn_none)
{
    ld_autoencoder d = base_desc(is_vq, is_vq ? 3 : 4, is_vq ? 3 : 4, n_levels, (const int[]){1, 1});
    d.num_res_blocks = nrb;
    d.attn_none = attn_none;
    d.n_embed = is_vq ? 16 : 0;
    return d;
}

START_TEST(test_ldm_first_stage)
{
    const ldm_case *k = &ldm_cases[_i];
    char dir[4096];
    if (!fixture_dir(k->name, dir, sizeof dir)) return;
    lw_store *w = open_file(dir, "model.safetensors"), *io = open_file(dir, "io.safetensors");
    lj_value *cas = load_case(dir);
    ld_autoencoder want = ldm_case_desc(k->is_vq, k->n_levels, k->nrb, k->attn_none);
    ld_autoencoder d = config_desc(dir, &want);
    lae *ae = NULL;
    expect_ok(lae_create(&d, w, "first_stage_model.", &ae), k->name);
    /* decode_first_stage: z = 1/scale_factor * z (a Python float applied in float32) */
    float inv = (float)(1.0 / k->scale_factor);
    for (int i = 0; i < 2 && k->samples[i]; i++) {
        ldm_tensor *z = io_tensor(io, k->samples[i]), *image = NULL;
        for (int64_t j = 0; j < lt_numel(z); j++) lt_f32(z)[j] *= inv;
        expect_ok(lae_decode(ae, NULL, z, &image), "decode_first_stage");
        expect_match(k->name, cas, io, k->images[i], k->images[i], image);
        ldm_tensor_free(image);
        ldm_tensor_free(z);
    }
    lae_free(ae);
    lj_free(cas);
    lw_close(io);
    lw_close(w);
}
END_TEST

/* ldm_inpaint: c = cat(cond_stage_model.encode(masked_image), resized mask); the VQ f2 (attn none)
 * is both first and cond stage. */
START_TEST(test_ldm_inpaint_encode)
{
    char dir[4096];
    if (!fixture_dir("ldm_inpaint", dir, sizeof dir)) return;
    lw_store *w = open_file(dir, "model.safetensors"), *io = open_file(dir, "io.safetensors");
    lj_value *cas = load_case(dir);
    ld_autoencoder want = ldm_case_desc(1, 2, 1, 1);
    ld_autoencoder d = config_desc(dir, &want);
    lae *first = NULL, *cond = NULL;
    expect_ok(lae_create(&d, w, "first_stage_model.", &first), "first stage");
    expect_ok(lae_create(&d, w, "cond_stage_model.", &cond), "cond stage");
    ck_assert_int_eq(lae_factor(cond), 2);
    ldm_tensor *x = io_tensor(io, "masked_image"), *h = NULL, *c = io_tensor(io, "c");
    expect_ok(lae_encode(cond, NULL, x, &h), "encode masked image");
    /* the reference: the first 3 channels of c */
    ldm_tensor *ref = lt_new_f32_4d(1, 3, 8, 8);
    memcpy(lt_f32(ref), lt_f32(c), (size_t)lt_numel(ref) * sizeof(float));
    fx_tolerance tol = fx_tolerance_for(cas, "c");
    fx_compare_result r;
    int ok = fx_compare(h, ref, tol, &r);
    printf("ldm_inpaint c[:, :3]: max abs err %.3g (atol %.3g)\n", r.max_abs, tol.atol);
    ck_assert_msg(ok, "ldm_inpaint c[:, :3]: %s", r.note);
    ldm_tensor_free(x);
    ldm_tensor_free(h);
    ldm_tensor_free(c);
    ldm_tensor_free(ref);
    lae_free(first);
    lae_free(cond);
    lj_free(cas);
    lw_close(io);
    lw_close(w);
}
END_TEST

/* ---------------------------------------------------------------- batching and sizes */

/* [1,...] -> [2,...] with both rows equal to t. */
static ldm_tensor *repeat2(const ldm_tensor *t)
{
    int64_t shape[LDM_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    shape[0] = 2 * t->shape[0];
    ldm_tensor *r = t->dtype == LDM_I64 ? lt_new_i64(t->ndim, shape) : lt_new_f32(t->ndim, shape);
    ck_assert_ptr_nonnull(r);
    size_t bytes = (size_t)lt_numel(t) * (t->dtype == LDM_I64 ? 8 : 4);
    memcpy(r->data, t->data, bytes);
    memcpy((char *)r->data + bytes, t->data, bytes);
    return r;
}

/* Row b of a batched result against the single-row reference. */
static void expect_row(const char *fx, const lj_value *cas, const lw_store *io, const char *name,
                       const ldm_tensor *got, int b)
{
    ldm_tensor row = *got;
    row.shape[0] = 1;
    size_t elem = got->dtype == LDM_I64 ? 8 : 4;
    row.data = (char *)got->data + (size_t)b * (size_t)lt_numel(&row) * elem;
    row.owned = 0;
    expect_match(fx, cas, io, name, name, &row);
}

START_TEST(test_batch2)
{
    opened o;
    if (!open_fixture(fixture_vq_f4(), "model.safetensors", &o)) return;
    ldm_tensor *x = io_tensor(o.io, "x"), *ref_h = io_tensor(o.io, "h");
    ldm_tensor *x2 = repeat2(x), *h2 = repeat2(ref_h), *h = NULL, *quant = NULL, *idx = NULL, *image = NULL;
    expect_ok(lae_encode(o.ae, NULL, x2, &h), "encode B=2");
    expect_ok(lae_quantize(o.ae, NULL, h2, &quant, &idx), "quantize B=2");
    expect_ok(lae_decode(o.ae, NULL, h2, &image), "decode B=2");
    for (int b = 0; b < 2; b++) {
        expect_row(o.f.name, o.cas, o.io, "h", h, b);
        expect_row(o.f.name, o.cas, o.io, "quant", quant, b);
        expect_row(o.f.name, o.cas, o.io, "indices", idx, b);
        expect_row(o.f.name, o.cas, o.io, "image", image, b);
    }
    ldm_tensor *all[] = {x, ref_h, x2, h2, h, quant, idx, image};
    for (size_t i = 0; i < LDM_ARRAY_LEN(all); i++) ldm_tensor_free(all[i]);
    close_fixture(&o);
}
END_TEST

/* Sizes that are not multiples of the factor follow the reference's arithmetic: each Downsample
 * gives floor((n-2)/2)+1, each Upsample doubles. */
START_TEST(test_odd_sizes)
{
    opened o;
    if (!open_fixture(fixture_kl_f8(), "model.safetensors", &o)) return;
    ldm_tensor *x = lt_new_f32_4d(1, 3, 33, 18), *m = NULL, *img = NULL, *mean = NULL;
    for (int64_t i = 0; i < lt_numel(x); i++) lt_f32(x)[i] = (float)sin(0.1 * (double)i);
    expect_ok(lae_encode(o.ae, NULL, x, &m), "encode 33x18");
    /* 33 -> 16 -> 8 -> 4; 18 -> 9 -> 4 -> 2 */
    ck_assert_int_eq(m->shape[1], 8);
    ck_assert_int_eq(m->shape[2], 4);
    ck_assert_int_eq(m->shape[3], 2);
    expect_ok(lae_posterior_split(m, &mean, NULL, NULL), "split");
    expect_ok(lae_decode(o.ae, NULL, mean, &img), "decode 4x2");
    ck_assert_int_eq(img->shape[2], 32);
    ck_assert_int_eq(img->shape[3], 16);
    for (int64_t i = 0; i < lt_numel(img); i++) ck_assert(isfinite(lt_f32(img)[i]));
    ldm_tensor_free(x);
    ldm_tensor_free(m);
    ldm_tensor_free(mean);
    ldm_tensor_free(img);
    close_fixture(&o);
}
END_TEST

/* ---------------------------------------------------------------- prefixes */

/* A store with every tensor of `src` renamed "<prefix><name>" (data shared with src). */
static lw_store *prefixed_store(const lw_store *src, const char *prefix, const char *skip)
{
    lw_store *s = lw_store_new("prefixed");
    ck_assert_ptr_nonnull(s);
    for (size_t i = 0; i < lw_count(src); i++) {
        const lw_tensor *t = lw_at(src, i);
        if (skip && strcmp(t->name, skip) == 0) continue;
        char name[512];
        snprintf(name, sizeof name, "%s%s", prefix, t->name);
        expect_ok(lw_store_add(s, name, t->dtype, t->ndim, t->shape, t->data, t->nbytes), "lw_store_add");
    }
    lw_store_finish(s);
    return s;
}

START_TEST(test_prefix)
{
    opened o;
    if (!open_fixture(fixture_vq_f4(), "model.safetensors", &o)) return;
    lw_store *s = prefixed_store(o.weights, "first_stage_model.", NULL);
    lae *ae = NULL;
    expect_ok(lae_create(&o.f.desc, s, "first_stage_model.", &ae), "create with prefix");
    ldm_tensor *ref_h = io_tensor(o.io, "h"), *image = NULL;
    expect_ok(lae_decode(ae, NULL, ref_h, &image), "decode with prefix");
    expect_match(o.f.name, o.cas, o.io, "image", "image", image);
    /* The unprefixed names are not there. */
    lae *bad = NULL;
    expect_fail(lae_create(&o.f.desc, s, "", &bad), LDM_ERR_NOT_FOUND, "encoder.conv_in.weight", "no prefix");
    ck_assert_ptr_null(bad);
    ldm_tensor_free(image);
    ldm_tensor_free(ref_h);
    lae_free(ae);
    lw_close(s);
    close_fixture(&o);
}
END_TEST

/* ---------------------------------------------------------------- threads */

static double max_diff(const ldm_tensor *a, const ldm_tensor *b)
{
    ck_assert_int_eq(lt_numel(a), lt_numel(b));
    double m = 0;
    for (int64_t i = 0; i < lt_numel(a); i++) {
        double d = fabs((double)lt_f32(a)[i] - (double)lt_f32(b)[i]);
        if (!(d <= m)) m = d;
    }
    return m;
}

START_TEST(test_threads)
{
    opened o;
    if (!open_fixture(fixture_kl_f8(), "model.safetensors", &o)) return;
    ldm_tensor *x = io_tensor(o.io, "x"), *z = io_tensor(o.io, "z");
    ldm_tensor *m[2] = {NULL, NULL}, *img[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        lpool *pool;
        lctx c = make_ctx(i + 1, &pool);
        expect_ok(lae_encode(o.ae, &c, x, &m[i]), "encode");
        expect_ok(lae_decode(o.ae, &c, z, &img[i]), "decode");
        lpool_free(pool);
    }
    double dm = max_diff(m[0], m[1]), di = max_diff(img[0], img[1]);
    printf("threads 1 vs 2: moments max diff %.3g, image max diff %.3g\n", dm, di);
    ck_assert_msg(dm <= 1e-6 && di <= 1e-5, "results depend on the thread count");
    for (int i = 0; i < 2; i++) {
        ldm_tensor_free(m[i]);
        ldm_tensor_free(img[i]);
    }
    ldm_tensor_free(x);
    ldm_tensor_free(z);
    close_fixture(&o);
}
END_TEST

/* ---------------------------------------------------------------- bad inputs */

START_TEST(test_bad_inputs)
{
    opened kl, vq;
    if (!open_fixture(fixture_kl_f8(), "model.safetensors", &kl)) return;
    if (!open_fixture(fixture_vq_f4(), "model.safetensors", &vq)) {
        close_fixture(&kl);
        return;
    }
    ldm_tensor *out = NULL, *q = NULL, *ix = NULL;
    ldm_tensor *x4 = lt_new_f32_4d(1, 4, 32, 32), *x3 = lt_new_f32(3, (int64_t[]){3, 32, 32});
    ldm_tensor *xi = lt_new_i64(4, (int64_t[]){1, 3, 32, 32}), *tiny = lt_new_f32_4d(1, 3, 1, 1);
    ldm_tensor *z3 = lt_new_f32_4d(1, 3, 4, 4), *odd = lt_new_f32_4d(1, 3, 4, 4);

    expect_fail(lae_encode(kl.ae, NULL, x4, &out), LDM_ERR_INVALID_ARGUMENT, "expected [B,3,H,W]", "4 channels");
    ck_assert_ptr_null(out);
    expect_fail(lae_encode(kl.ae, NULL, x3, &out), LDM_ERR_INVALID_ARGUMENT, "4 dimensions", "3-D input");
    expect_fail(lae_encode(kl.ae, NULL, xi, &out), LDM_ERR_INVALID_ARGUMENT, "dtype", "I64 input");
    expect_fail(lae_encode(kl.ae, NULL, NULL, &out), LDM_ERR_INVALID_ARGUMENT, "NULL", "NULL input");
    expect_fail(lae_encode(kl.ae, NULL, tiny, &out), LDM_ERR_INVALID_ARGUMENT, "too small", "1x1 image");
    ck_assert_ptr_null(out);
    expect_fail(lae_decode(kl.ae, NULL, z3, &out), LDM_ERR_INVALID_ARGUMENT, "expected [B,4,H,W]", "z channels");
    expect_fail(lae_quantize(kl.ae, NULL, z3, &q, &ix), LDM_ERR_INVALID_ARGUMENT, "KL", "quantize on KL");
    ck_assert_ptr_null(q);
    ck_assert_ptr_null(ix);
    expect_fail(lae_decode_unquantized(kl.ae, NULL, z3, &out), LDM_ERR_INVALID_ARGUMENT, "KL", "decode_unq KL");
    expect_fail(lae_quantize(vq.ae, NULL, x4, &q, &ix), LDM_ERR_INVALID_ARGUMENT, "expected [B,3,H,W]",
                "quantize channels");
    expect_fail(lae_posterior_split(odd, &out, NULL, NULL), LDM_ERR_INVALID_ARGUMENT, "even channel count",
                "split odd channels");
    expect_fail(lae_posterior_split(xi, &out, NULL, NULL), LDM_ERR_INVALID_ARGUMENT, "dtype", "split I64");

    ldm_tensor *all[] = {x4, x3, xi, tiny, z3, odd};
    for (size_t i = 0; i < LDM_ARRAY_LEN(all); i++) ldm_tensor_free(all[i]);
    close_fixture(&vq);
    close_fixture(&kl);
}
END_TEST

/* The clamping of logvar and std = exp(logvar/2) at the limits. */
START_TEST(test_posterior_clamp)
{
    ldm_tensor *m = lt_new_f32_4d(1, 2, 1, 3), *mean = NULL, *lv = NULL, *sd = NULL;
    float v[6] = {1, -2, 3, -100, 0, 100};
    memcpy(lt_f32(m), v, sizeof v);
    expect_ok(lae_posterior_split(m, &mean, &lv, &sd), "split");
    ck_assert_float_eq(lt_f32(mean)[1], -2.0f);
    ck_assert_float_eq(lt_f32(lv)[0], -30.0f);
    ck_assert_float_eq(lt_f32(lv)[1], 0.0f);
    ck_assert_float_eq(lt_f32(lv)[2], 20.0f);
    ck_assert_float_eq_tol(lt_f32(sd)[2], expf(10.0f), 1e-1f);
    ck_assert_float_eq(lt_f32(sd)[1], 1.0f);
    ldm_tensor_free(m);
    ldm_tensor_free(mean);
    ldm_tensor_free(lv);
    ldm_tensor_free(sd);
}
END_TEST

/* ---------------------------------------------------------------- bad checkpoints and configs */

START_TEST(test_missing_tensor)
{
    opened o;
    if (!open_fixture(fixture_kl_f8(), "model.safetensors", &o)) return;
    static const char *const victims[] = {"decoder.mid.attn_1.q.weight", "encoder.down.2.attn.0.proj_out.bias",
                                          "decoder.up.3.upsample.conv.weight", "post_quant_conv.bias",
                                          "encoder.conv_out.weight"};
    for (size_t i = 0; i < LDM_ARRAY_LEN(victims); i++) {
        lw_store *s = prefixed_store(o.weights, "", victims[i]);
        lae *ae = NULL;
        expect_fail(lae_create(&o.f.desc, s, "", &ae), LDM_ERR_NOT_FOUND, victims[i], "missing tensor");
        ck_assert_ptr_null(ae);
        lw_close(s);
    }
    /* VQ without its codebook */
    opened v;
    if (open_fixture(fixture_vq_f4(), "model.safetensors", &v)) {
        lw_store *s = prefixed_store(v.weights, "", "quantize.embedding.weight");
        lae *ae = NULL;
        expect_fail(lae_create(&v.f.desc, s, "", &ae), LDM_ERR_NOT_FOUND, "quantize.embedding.weight", "codebook");
        lw_close(s);
        close_fixture(&v);
    }
    close_fixture(&o);
}
END_TEST

START_TEST(test_wrong_checkpoint)
{
    opened o;
    if (!open_fixture(fixture_kl_f8(), "model.safetensors", &o)) return;
    lae *ae = NULL;
    /* vq-f4's 64-channel third level does not fit kl-f8's weights */
    ae_fixture vq = fixture_vq_f4();
    expect_fail(lae_create(&vq.desc, o.weights, "", &ae), LDM_ERR_FORMAT, "expected shape", "vq desc on kl weights");
    ck_assert_ptr_null(ae);
    /* kl-f4 (no attention anywhere) loads a subset of kl-f8 but its conv_out shape differs */
    ae_fixture f4 = fixture_kl_f4();
    expect_fail(lae_create(&f4.desc, o.weights, "", &ae), LDM_ERR_FORMAT, "expected shape", "kl-f4 desc on kl-f8");
    close_fixture(&o);
}
END_TEST

START_TEST(test_bad_desc)
{
    opened o;
    if (!open_fixture(fixture_kl_f8(), "model.safetensors", &o)) return;
    lae *ae = NULL;
    ld_autoencoder d = o.f.desc;
    d.n_levels = 0;
    expect_fail(lae_create(&d, o.weights, "", &ae), LDM_ERR_INVALID_ARGUMENT, "levels", "0 levels");
    d = o.f.desc;
    d.n_levels = LD_MAX_LEVELS + 1;
    expect_fail(lae_create(&d, o.weights, "", &ae), LDM_ERR_INVALID_ARGUMENT, "levels", "too many levels");
    d = o.f.desc;
    d.ch_mult[2] = 0;
    expect_fail(lae_create(&d, o.weights, "", &ae), LDM_ERR_INVALID_ARGUMENT, "ch_mult[2]", "ch_mult 0");
    d = o.f.desc;
    d.double_z = 0;
    expect_fail(lae_create(&d, o.weights, "", &ae), LDM_ERR_UNSUPPORTED, "double_z", "KL without double_z");
    d = o.f.desc;
    d.ch = 48; /* not a multiple of GroupNorm's 32 groups */
    expect_fail(lae_create(&d, o.weights, "", &ae), LDM_ERR_FORMAT, "expected shape", "ch 48");
    d = o.f.desc;
    d.num_res_blocks = -1;
    expect_fail(lae_create(&d, o.weights, "", &ae), LDM_ERR_INVALID_ARGUMENT, "num_res_blocks", "nrb -1");
    d = o.f.desc;
    d.is_vq = 1;
    d.double_z = 0;
    d.n_embed = 0;
    expect_fail(lae_create(&d, o.weights, "", &ae), LDM_ERR_INVALID_ARGUMENT, "n_embed", "VQ without n_embed");
    ck_assert_ptr_null(ae);
    expect_fail(lae_create(NULL, o.weights, "", &ae), LDM_ERR_INVALID_ARGUMENT, "NULL", "NULL desc");
    close_fixture(&o);
}
END_TEST

/* ---------------------------------------------------------------- cancellation */

START_TEST(test_cancel)
{
    opened o;
    if (!open_fixture(fixture_kl_f8(), "model.safetensors", &o)) return;
    atomic_int flag = 1;
    lctx c = {.pool = NULL, .cancel = &flag};
    ldm_tensor *x = io_tensor(o.io, "x"), *z = io_tensor(o.io, "z"), *out = NULL;
    expect_fail(lae_encode(o.ae, &c, x, &out), LDM_CANCELLED, "cancelled", "encode");
    ck_assert_ptr_null(out);
    expect_fail(lae_decode(o.ae, &c, z, &out), LDM_CANCELLED, "cancelled", "decode");
    ck_assert_ptr_null(out);
    ldm_tensor_free(x);
    ldm_tensor_free(z);
    close_fixture(&o);
}
END_TEST

/* ---------------------------------------------------------------- allocation failures */

/* Makes the n-th allocation fail for n = 1, 2, ... until the operation succeeds; every failure
 * must be clean (the sanitizers catch leaks and bad frees). */
START_TEST(test_alloc_failures)
{
    opened o;
    if (!open_fixture(fixture_vq_f4(), "model.safetensors", &o)) return;
    ldm_tensor *x = io_tensor(o.io, "x"), *h = io_tensor(o.io, "h");
    int n, done = 0;
    for (n = 1; n < 5000 && !done; n++) {
        lae *ae = NULL;
        ldm_alloc_fail_after(n);
        ldm_status st = lae_create(&o.f.desc, o.weights, "", &ae);
        ldm_alloc_fail_after(0);
        if (st == LDM_OK) done = 1;
        else ck_assert_msg(st == LDM_ERR_OUT_OF_MEMORY && ae == NULL, "create n=%d: %s", n, ldm_last_error());
        lae_free(ae);
    }
    ck_assert(done);
    printf("create survived %d injected allocation failures\n", n - 2);
    for (int op = 0; op < 3; op++) {
        for (n = 1, done = 0; n < 5000 && !done; n++) {
            ldm_tensor *out = NULL, *idx = NULL;
            ldm_alloc_fail_after(n);
            ldm_status st = op == 0 ? lae_encode(o.ae, NULL, x, &out)
                          : op == 1 ? lae_decode(o.ae, NULL, h, &out)
                                    : lae_quantize(o.ae, NULL, h, &out, &idx);
            ldm_alloc_fail_after(0);
            if (st == LDM_OK) done = 1;
            else ck_assert_msg(st == LDM_ERR_OUT_OF_MEMORY && !out && !idx, "op %d n=%d: %s", op, n, ldm_last_error());
            ldm_tensor_free(out);
            ldm_tensor_free(idx);
        }
        ck_assert(done);
    }
    ldm_tensor_free(x);
    ldm_tensor_free(h);
    close_fixture(&o);
}
END_TEST

static Suite *autoencoder_suite(void)
{
    Suite *s = suite_create("autoencoder");
    TCase *fx = tcase_create("fixtures");
    tcase_set_timeout(fx, 300);
    tcase_add_test(fx, test_kl_f8);
    tcase_add_test(fx, test_kl_f8_ckpt);
    tcase_add_test(fx, test_kl_f4);
    tcase_add_test(fx, test_vq_f4);
    tcase_add_test(fx, test_batch2);
    tcase_add_test(fx, test_odd_sizes);
    tcase_add_test(fx, test_prefix);
    tcase_add_test(fx, test_threads);
    tcase_add_loop_test(fx, test_ldm_first_stage, 0, (int)LDM_ARRAY_LEN(ldm_cases));
    tcase_add_test(fx, test_ldm_inpaint_encode);
    suite_add_tcase(s, fx);
    TCase *bad = tcase_create("errors");
    tcase_set_timeout(bad, 300);
    tcase_add_test(bad, test_bad_inputs);
    tcase_add_test(bad, test_posterior_clamp);
    tcase_add_test(bad, test_missing_tensor);
    tcase_add_test(bad, test_wrong_checkpoint);
    tcase_add_test(bad, test_bad_desc);
    tcase_add_test(bad, test_cancel);
    tcase_add_test(bad, test_alloc_failures);
    suite_add_tcase(s, bad);
    return s;
}

int main(void)
{
    return ck_run_suite(autoencoder_suite());
}
