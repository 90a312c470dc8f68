/* test_numeric.c - numerical faults are reported, never propagated silently: a NaN/Inf weight is
 * refused when it is widened (LDM_ERR_NUMERIC naming the tensor), NaN/Inf inputs are refused by
 * the call they are given to, and a network step whose output overflows fails with
 * LDM_ERR_NUMERIC naming the step. Weights come from copies of fixtures with one value poked. */
#include <check.h>

#include "core/json.h"
#include "io/weights.h"
#include "support/ck_bytes.h"
#include "support/ck_tmpdir.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *shared_path(const char *rel)
{
    static char path[1024];
    const char *s = getenv("LDM_SHARED");
    snprintf(path, sizeof path, "%s/%s", (s && *s) ? s : "../shared", rel);
    return path;
}

static int have(const char *rel)
{
    if (access(shared_path(rel), R_OK) == 0) return 1;
    printf("SKIPPED: %s not found (set LDM_SHARED)\n", shared_path(rel));
    return 0;
}

/* A copy of fixture `rel` (safetensors) where element `index` of tensor `name` is replaced by
 * `value` (stored in the tensor's own dtype: F32, or F16 bits via lw_f32_to_f16). Returns the
 * copy's path. */
static const char *poke(const char *rel, const char *name, size_t index, float value)
{
    size_t len;
    unsigned char *b = read_whole(shared_path(rel), &len);
    ck_assert_msg(b != NULL, "%s cannot be read", shared_path(rel));
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | b[i];
    lj_value *h = lj_parse((const char *)b + 8, (size_t)hlen);
    ck_assert_ptr_nonnull(h);
    const lj_value *e = lj_get(h, name);
    ck_assert_msg(e != NULL, "%s has no tensor %s", rel, name);
    const char *dtype = lj_string(lj_get(e, "dtype"), "");
    int64_t begin;
    ck_assert_int_eq(lj_int64(lj_get(e, "data_offsets")->items[0], &begin), 0);
    unsigned char *at = b + 8 + hlen + begin;
    if (strcmp(dtype, "F32") == 0) {
        memcpy(at + 4 * index, &value, 4);
    } else {
        ck_assert_str_eq(dtype, "F16");
        uint16_t v = lw_f32_to_f16(value);
        memcpy(at + 2 * index, &v, 2);
    }
    lj_free(h);
    const char *path = ck_tmp_write("poked.safetensors", b, len);
    free(b);
    return path;
}

static ldm_model *load(const char *path_in, const char *config_rel, ldm_weights_choice weights)
{
    char path[1024];
    snprintf(path, sizeof path, "%s", path_in); /* shared_path's buffer is reused below */
    ldm_model_params p;
    ldm_model_params_init(&p);
    char config[1024];
    snprintf(config, sizeof config, "%s", shared_path(config_rel));
    p.config_path = config;
    p.n_threads = 2;
    p.weights = weights;
    ldm_model *m = NULL;
    ck_assert_msg(ldm_model_load(path, &p, &m) == LDM_OK, "%s", ldm_last_error());
    return m;
}

static void expect_numeric(ldm_status st, const char *needle1, const char *needle2)
{
    ck_assert_msg(st == LDM_ERR_NUMERIC, "status %d (%s)", st, ldm_last_error());
    ck_assert_msg(strstr(ldm_last_error(), needle1), "message '%s' lacks '%s'", ldm_last_error(), needle1);
    if (needle2) ck_assert_msg(strstr(ldm_last_error(), needle2), "message '%s' lacks '%s'", ldm_last_error(), needle2);
}

static ldm_tensor *filled(int ndim, const int64_t *shape, float v)
{
    ldm_tensor *t = NULL;
    ck_assert_int_eq(ldm_tensor_create(LDM_F32, ndim, shape, &t), LDM_OK);
    float *d = ldm_tensor_data(t);
    for (int64_t i = 0; i < ldm_tensor_numel(t); i++) d[i] = v;
    return t;
}

/* ---------------------------------------------------------------- weights */

/* Decodes a zero latent with the standalone autoencoder fixture ae_kl_f4. */
static ldm_status decode_zero(ldm_model *m)
{
    ldm_autoencoder *ae = NULL;
    LDM_TRY(ldm_model_autoencoder(m, &ae));
    int64_t shape[4] = {1, ldm_autoencoder_latent_channels(ae), 4, 4};
    ldm_tensor *z = filled(4, shape, 0.0f), *img = NULL;
    ldm_status st = ldm_autoencoder_decode(ae, z, &img);
    if (st == LDM_OK) {
        const float *v = ldm_tensor_data(img);
        for (int64_t i = 0; i < ldm_tensor_numel(img); i++) ck_assert(isfinite(v[i]));
    }
    ldm_tensor_free(img);
    ldm_tensor_free(z);
    return st;
}

START_TEST(nan_or_inf_weights_are_refused_naming_the_tensor)
{
    if (!have("fixtures/ae_kl_f4/model.safetensors")) return;
    const char *rel = "fixtures/ae_kl_f4/model.safetensors", *cfg = "fixtures/ae_kl_f4/config.yaml";
    /* the undisturbed file decodes */
    ldm_model *m = load(shared_path(rel), cfg, LDM_WEIGHTS_AUTO);
    ck_assert_msg(decode_zero(m) == LDM_OK, "%s", ldm_last_error());
    ldm_model_free(m);
    const float bad[3] = {NAN, INFINITY, -INFINITY};
    const char *word[3] = {"NaN", "Inf", "Inf"};
    for (int i = 0; i < 3; i++) {
        m = load(poke(rel, "decoder.conv_out.weight", 7, bad[i]), cfg, LDM_WEIGHTS_AUTO);
        expect_numeric(decode_zero(m), "tensor decoder.conv_out.weight holds", word[i]);
        ck_assert_ptr_nonnull(strstr(ldm_last_error(), "element 7 "));
        ldm_model_free(m);
    }
}
END_TEST

START_TEST(f16_inf_weight_is_refused_naming_the_tensor)
{
    if (!have("fixtures/cond_clip_sd1/model.safetensors")) return;
    const char *rel = "fixtures/cond_clip_sd1/model.safetensors", *cfg = "fixtures/cond_clip_sd1/config.yaml";
    const char *t = "cond_stage_model.transformer.text_model.final_layer_norm.weight";
    ldm_model *m = load(poke(rel, t, 3, 1e6f), cfg, LDM_WEIGHTS_AUTO); /* 1e6 overflows F16: Inf */
    ldm_conditioner *c = NULL;
    ldm_status st = ldm_model_conditioner(m, &c);
    if (st == LDM_OK) {
        int64_t shape[2] = {1, 77};
        ldm_tensor *ids = NULL, *out = NULL;
        ck_assert_int_eq(ldm_tensor_create(LDM_I64, 2, shape, &ids), LDM_OK);
        int64_t *v = ldm_tensor_data(ids);
        for (int i = 0; i < 77; i++) v[i] = i == 0 ? 49406 : 49407;
        st = ldm_conditioner_encode_tokens(c, ids, &out);
        ck_assert_ptr_null(out);
        ldm_tensor_free(ids);
    }
    expect_numeric(st, t, "Inf");
    ldm_model_free(m);
}
END_TEST

/* F16 matrices may be used as stored, without widening: their check reads the stored bits. */
START_TEST(f16_weight_used_as_stored_is_checked_too)
{
    if (!have("fixtures/cond_spatial_rescaler/model.safetensors")) return;
    const char *rel = "fixtures/cond_spatial_rescaler/model.safetensors";
    const char *cfg = "fixtures/cond_spatial_rescaler/config.yaml";
    const char *t = "model.diffusion_model.input_blocks.0.0.weight"; /* F16 [32,6,3,3] */
    const float bad[2] = {INFINITY, NAN};
    for (int i = 0; i < 2; i++) {
        ldm_model *m = load(poke(rel, t, 100, bad[i]), cfg, LDM_WEIGHTS_AUTO);
        int64_t one = 1, xs[4] = {1, 3, 6, 10};
        ldm_tensor *ts = NULL, *x = filled(4, xs, 0.25f), *c = filled(4, xs, 0.5f), *out = NULL;
        ck_assert_int_eq(ldm_tensor_create(LDM_I64, 1, &one, &ts), LDM_OK);
        ((int64_t *)ldm_tensor_data(ts))[0] = 604;
        expect_numeric(ldm_model_apply(m, x, ts, c, &out), t, i ? "NaN (element 100 " : "Inf (element 100 ");
        ck_assert_ptr_null(out);
        ldm_tensor_free(ts);
        ldm_tensor_free(x);
        ldm_tensor_free(c);
        ldm_model_free(m);
    }
}
END_TEST

/* lw_check_finite tests several elements at once: one Inf or NaN at every position of an
 * unaligned tensor of each float type (lengths not a multiple of the word) is found at its index,
 * and the largest finite values and subnormals are not taken for one. */
START_TEST(check_finite_finds_every_position)
{
    static const struct {
        int dtype, width;
        uint64_t finite[3], bad[2]; /* max, -max, smallest subnormal; Inf, NaN */
    } types[] = {
        {LW_F16, 2, {0x7BFF, 0xFBFF, 0x0001}, {0xFC00, 0x7E01}},
        {LW_BF16, 2, {0x7F7F, 0xFF7F, 0x0001}, {0x7F80, 0xFFC1}},
        {LW_F32, 4, {0x7F7FFFFF, 0xFF7FFFFF, 0x00000001}, {0xFF800000, 0x7FC00001}},
        {LW_F64, 8, {0x7FEFFFFFFFFFFFFFull, 0xFFEFFFFFFFFFFFFFull, 1}, {0x7FF0000000000000ull, 0xFFF8000000000001ull}},
    };
    enum { N = 23 };
    unsigned char buf[N * 8 + 1];
    for (size_t k = 0; k < LDM_ARRAY_LEN(types); k++)
        for (int at = -1; at < N; at++)
            for (int which = 0; which < 2; which++) {
                int w = types[k].width;
                for (int i = 0; i < N; i++) {
                    uint64_t v = i == at ? types[k].bad[which] : types[k].finite[i % 3];
                    memcpy(buf + 1 + (size_t)i * w, &v, (size_t)w); /* little-endian */
                }
                lw_store *s = lw_store_new("bits");
                size_t bytes = (size_t)N * w;
                ck_assert_int_eq(lw_store_add(s, "t", types[k].dtype, 1, (int64_t[]){N}, buf + 1, bytes), LDM_OK);
                ck_assert_int_eq(lw_store_seal(s), LDM_OK);
                ldm_status st = lw_check_finite(s, lw_find(s, "t"));
                if (at < 0) {
                    ck_assert_int_eq(st, LDM_OK);
                } else {
                    char want[64];
                    snprintf(want, sizeof want, "holds %s (element %d of %d)", which ? "NaN" : "Inf", at, N);
                    expect_numeric(st, want, NULL);
                }
                lw_close(s);
            }
}
END_TEST

/* lw_check_finite on every float storage type, read in place (unaligned too). */
START_TEST(stored_bits_check_every_float_dtype)
{
    unsigned char buf[64] = {0};
    lw_store *s = lw_store_new("bits");
    uint16_t h[2] = {0x3C00, 0x7C00};         /* 1, +Inf */
    uint16_t bf[2] = {0x3F80, 0xFFC1};        /* 1, NaN */
    float f[2] = {1.0f, -INFINITY};
    double d[2] = {NAN, 2.0};
    uint16_t ok[3] = {0x7BFF, 0xFBFF, 0x0001}; /* max, -max, smallest subnormal */
    memcpy(buf + 1, h, 4);
    memcpy(buf + 5, bf, 4);
    memcpy(buf + 9, f, 8);
    memcpy(buf + 17, d, 16);
    memcpy(buf + 33, ok, 6);
    ck_assert_int_eq(lw_store_add(s, "h", LW_F16, 1, (int64_t[]){2}, buf + 1, 4), LDM_OK);
    ck_assert_int_eq(lw_store_add(s, "bf", LW_BF16, 1, (int64_t[]){2}, buf + 5, 4), LDM_OK);
    ck_assert_int_eq(lw_store_add(s, "f", LW_F32, 1, (int64_t[]){2}, buf + 9, 8), LDM_OK);
    ck_assert_int_eq(lw_store_add(s, "d", LW_F64, 1, (int64_t[]){2}, buf + 17, 16), LDM_OK);
    ck_assert_int_eq(lw_store_add(s, "ok", LW_F16, 1, (int64_t[]){3}, buf + 33, 6), LDM_OK);
    ck_assert_int_eq(lw_store_add(s, "i", LW_I64, 1, (int64_t[]){1}, buf + 48, 8), LDM_OK);
    ck_assert_int_eq(lw_store_seal(s), LDM_OK);
    expect_numeric(lw_check_finite(s, lw_find(s, "h")), "tensor h holds Inf (element 1 of 2)", NULL);
    expect_numeric(lw_check_finite(s, lw_find(s, "bf")), "tensor bf holds NaN (element 1 of 2)", NULL);
    expect_numeric(lw_check_finite(s, lw_find(s, "f")), "tensor f holds Inf (element 1 of 2)", NULL);
    expect_numeric(lw_check_finite(s, lw_find(s, "d")), "tensor d holds NaN (element 0 of 2)", NULL);
    ck_assert_int_eq(lw_check_finite(s, lw_find(s, "ok")), LDM_OK);
    memset(buf + 48, 0xFF, 8);
    ck_assert_int_eq(lw_check_finite(s, lw_find(s, "i")), LDM_OK); /* integers are never NaN */
    lw_close(s);
}
END_TEST

/* ---------------------------------------------------------------- inputs */

START_TEST(nan_inputs_are_refused_by_the_call_they_reach)
{
    ldm_model_params p;
    ldm_model_params_init(&p);
    p.n_threads = 2;
    ldm_model *m = NULL;
    ck_assert_int_eq(ldm_model_load_builtin("demo", 3, &p, &m), LDM_OK);
    ldm_autoencoder *ae = NULL;
    ldm_conditioner *cond = NULL;
    ldm_unet *unet = NULL;
    ck_assert_int_eq(ldm_model_autoencoder(m, &ae), LDM_OK);
    ck_assert_int_eq(ldm_model_conditioner(m, &cond), LDM_OK);
    ck_assert_int_eq(ldm_model_unet(m, &unet), LDM_OK);
    int64_t one = 1, lab = 2;
    ldm_tensor *labels = NULL, *c = NULL, *t = NULL;
    ck_assert_int_eq(ldm_tensor_create(LDM_I64, 1, &one, &labels), LDM_OK);
    memcpy(ldm_tensor_data(labels), &lab, sizeof lab);
    ck_assert_int_eq(ldm_conditioner_encode_labels(cond, labels, &c), LDM_OK);
    ck_assert_int_eq(ldm_tensor_create(LDM_I64, 1, &one, &t), LDM_OK);
    ((int64_t *)ldm_tensor_data(t))[0] = 500;
    int64_t zs[4] = {1, ldm_autoencoder_latent_channels(ae), 8, 8};
    ldm_tensor *x = filled(4, zs, 0.5f), *out = NULL;
    ck_assert_msg(ldm_model_apply(m, x, t, c, &out) == LDM_OK, "%s", ldm_last_error());
    ldm_tensor_free(out);

    ((float *)ldm_tensor_data(x))[37] = NAN;
    expect_numeric(ldm_model_apply(m, x, t, c, &out), "ldm_model_apply: x holds NaN", "element 37");
    ck_assert_ptr_null(out);
    expect_numeric(ldm_model_apply_guided(m, x, t, c, c, 3.0f, &out), "apply_guided: x", NULL);
    expect_numeric(ldm_unet_forward(unet, x, t, c, NULL, &out), "ldm_unet_forward: x", NULL);
    expect_numeric(ldm_model_decode_latent(m, x, &out), "decode_latent: z", NULL);
    expect_numeric(ldm_autoencoder_decode(ae, x, &out), "ldm_autoencoder_decode: z", NULL);
    ck_assert_ptr_null(out);
    ((float *)ldm_tensor_data(x))[37] = 0.5f;
    ((float *)ldm_tensor_data(c))[0] = INFINITY;
    expect_numeric(ldm_model_apply(m, x, t, c, &out), "ldm_model_apply: cond holds Inf", NULL);
    expect_numeric(ldm_model_apply_guided(m, x, t, labels == NULL ? NULL : c, c, 3.0f, &out), "cond", NULL);

    /* an init image with a NaN pixel */
    int64_t is[4] = {1, 3, 64, 64};
    ldm_tensor *img = filled(4, is, 0.0f);
    ((float *)ldm_tensor_data(img))[100] = NAN;
    ldm_generate_params g;
    ldm_generate_params_init(&g);
    g.steps = 2;
    g.init_image = img;
    g.strength = 0.5f;
    ldm_tensor *res = NULL;
    expect_numeric(ldm_generate(m, &g, &res), "ldm_generate: init_image holds NaN", NULL);
    ck_assert_ptr_null(res);
    /* the model is fine afterwards */
    g.init_image = NULL;
    ck_assert_msg(ldm_generate(m, &g, &res) == LDM_OK, "%s", ldm_last_error());
    ldm_tensor_free(res);
    ldm_tensor_free(img);
    ldm_tensor_free(x);
    ldm_tensor_free(t);
    ldm_tensor_free(c);
    ldm_tensor_free(labels);
    ldm_model_free(m);
}
END_TEST

/* ---------------------------------------------------------------- results */

START_TEST(overflowing_step_fails_naming_the_step)
{
    if (!have("fixtures/ldm_uncond_plms/model.safetensors")) return;
    const char *rel = "fixtures/ldm_uncond_plms/model.safetensors", *cfg = "fixtures/ldm_uncond_plms/config.yaml";
    /* a finite but enormous weight in the UNet's last conv: its output overflows to Inf */
    ldm_model *m = load(poke(rel, "model.diffusion_model.out.2.weight", 0, FLT_MAX), cfg, LDM_WEIGHTS_RAW);
    ldm_generate_params g;
    ldm_generate_params_init(&g);
    g.steps = 4;
    g.guidance_scale = 1.0f;
    ldm_tensor *img = NULL;
    expect_numeric(ldm_generate(m, &g, &img), "step 0", "NaN or Inf");
    ck_assert_ptr_null(img);
    /* the same through ldm_model_apply: the output is refused */
    ldm_autoencoder *ae = NULL;
    ck_assert_int_eq(ldm_model_autoencoder(m, &ae), LDM_OK);
    int64_t one = 1, xs[4] = {1, 3, 8, 8};
    ldm_tensor *t = NULL, *x = filled(4, xs, 1.0f), *out = NULL;
    ck_assert_int_eq(ldm_tensor_create(LDM_I64, 1, &one, &t), LDM_OK);
    ((int64_t *)ldm_tensor_data(t))[0] = 10;
    expect_numeric(ldm_model_apply(m, x, t, NULL, &out), "ldm_model_apply: the UNet output", NULL);
    ck_assert_ptr_null(out);
    ldm_tensor_free(x);
    ldm_tensor_free(t);
    ldm_model_free(m);
    /* the EMA weights were not touched: the default choice samples fine */
    m = load(poke(rel, "model.diffusion_model.out.2.weight", 0, FLT_MAX), cfg, LDM_WEIGHTS_AUTO);
    ck_assert_msg(ldm_generate(m, &g, &img) == LDM_OK, "%s", ldm_last_error());
    ldm_tensor_free(img);
    ldm_model_free(m);
}
END_TEST

/* A decoder whose output overflows: the autoencoder call fails instead of returning Inf pixels. */
START_TEST(overflowing_decoder_is_reported)
{
    if (!have("fixtures/ae_kl_f4/model.safetensors")) return;
    const char *path = poke("fixtures/ae_kl_f4/model.safetensors", "decoder.conv_out.weight", 0, FLT_MAX);
    ldm_model *m = load(path, "fixtures/ae_kl_f4/config.yaml", LDM_WEIGHTS_AUTO);
    ldm_autoencoder *ae = NULL;
    ck_assert_int_eq(ldm_model_autoencoder(m, &ae), LDM_OK);
    int64_t shape[4] = {1, ldm_autoencoder_latent_channels(ae), 4, 4};
    /* FLT_MAX times any input activation above 1 overflows */
    ldm_tensor *z = NULL, *img = NULL;
    ck_assert_int_eq(ldm_tensor_create(LDM_F32, 4, shape, &z), LDM_OK);
    ck_assert_int_eq(ldm_randn(1, 0, z), LDM_OK);
    expect_numeric(ldm_autoencoder_decode(ae, z, &img), "ldm_autoencoder_decode: the image holds Inf", NULL);
    ck_assert_ptr_null(img);
    ldm_tensor_free(z);
    ldm_model_free(m);
}
END_TEST

static Suite *numeric_suite(void)
{
    Suite *s = suite_create("numeric");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, nan_or_inf_weights_are_refused_naming_the_tensor);
    tcase_add_test(tc, f16_inf_weight_is_refused_naming_the_tensor);
    tcase_add_test(tc, f16_weight_used_as_stored_is_checked_too);
    tcase_add_test(tc, stored_bits_check_every_float_dtype);
    tcase_add_test(tc, check_finite_finds_every_position);
    tcase_add_test(tc, nan_inputs_are_refused_by_the_call_they_reach);
    tcase_add_test(tc, overflowing_step_fails_naming_the_step);
    tcase_add_test(tc, overflowing_decoder_is_reported);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return ck_run_in_tmpdir(numeric_suite(), "numeric");
}
