/* test_small_cond.c - the small conditioning stages: ClassEmbedder (fixture cond_class) and
 * SpatialRescaler with its one-hot helper (fixture cond_spatial_rescaler, F16 weights), plus the
 * interpolation modes on hand-made inputs, thread independence, bad labels/inputs, missing or
 * misshapen weights, cancellation and allocation failures. */
#include <check.h>

#include "core/ctx.h"
#include "core/tensor.h"
#include "io/weights.h"
#include "models/class_embed.h"
#include "models/config.h"
#include "models/spatial_rescaler.h"
#include "support/ck_fixture.h"
#include "support/ck_run.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define PREFIX "cond_stage_model."

/* ---------------------------------------------------------------- fixture access */

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

/* A fixture: weights, io tensors, case.json. */
typedef struct opened {
    char dir[4096];
    lw_store *weights, *io;
    lj_value *cas;
} opened;

static int open_fixture(const char *name, opened *o)
{
    memset(o, 0, sizeof *o);
    if (!fixture_dir(name, o->dir, sizeof o->dir)) return 0;
    o->weights = open_file(o->dir, "model.safetensors");
    o->io = open_file(o->dir, "io.safetensors");
    expect_ok(fx_load_case(o->dir, &o->cas), "case.json");
    return 1;
}

static void close_fixture(opened *o)
{
    lj_free(o->cas);
    lw_close(o->io);
    lw_close(o->weights);
}

static void expect_match(const char *fixture, const opened *o, const char *name, const ldm_tensor *got)
{
    ldm_tensor *ref = io_tensor(o->io, name);
    fx_tolerance tol = fx_tolerance_for(o->cas, name);
    fx_compare_result r;
    int ok = fx_compare(got, ref, tol, &r);
    printf("%s %s: max abs err %.3g (atol %.3g rtol %.3g)\n", fixture, name, r.max_abs, tol.atol, tol.rtol);
    ldm_tensor_free(ref);
    ck_assert_msg(ok, "%s %s: %s", fixture, name, r.note);
}

/* ---------------------------------------------------------------- descriptions */

static ld_cond class_desc(int n_classes, int embed_dim)
{
    ld_cond d;
    memset(&d, 0, sizeof d);
    d.kind = LD_COND_CLASS;
    d.n_classes = n_classes;
    d.embed_dim = embed_dim;
    return d;
}

static ld_cond rescaler_desc(int n_stages, double multiplier, int bilinear, int in, int out, int bias)
{
    ld_cond d;
    memset(&d, 0, sizeof d);
    d.kind = LD_COND_SPATIAL_RESCALER;
    d.n_stages = n_stages;
    d.multiplier = multiplier;
    d.method_bilinear = bilinear;
    d.in_channels = in;
    d.out_channels = out;
    d.bias = bias;
    return d;
}

/* The fixture's cond description: config.yaml through ld_config_load, checked against the
 * hand-written one. */
static ld_cond fixture_cond(const char *dir, const ld_cond *want)
{
    char path[4096];
    ld_model m;
    snprintf(path, sizeof path, "%s/config.yaml", dir);
    expect_ok(ld_config_load(path, &m), path);
    ck_assert_int_eq(m.cond.kind, want->kind);
    if (want->kind == LD_COND_CLASS) {
        ck_assert_int_eq(m.cond.n_classes, want->n_classes);
        ck_assert_int_eq(m.cond.embed_dim, want->embed_dim);
    } else {
        ck_assert_int_eq(m.cond.n_stages, want->n_stages);
        ck_assert(m.cond.multiplier == want->multiplier);
        ck_assert_int_eq(m.cond.method_bilinear, want->method_bilinear);
        ck_assert_int_eq(m.cond.in_channels, want->in_channels);
        ck_assert_int_eq(m.cond.out_channels, want->out_channels);
        ck_assert_int_eq(m.cond.bias, want->bias);
    }
    return m.cond;
}

/* A one-tensor-at-a-time in-memory store (the data must outlive it). */
static lw_store *mem_store(void) { return lw_store_new("memory"); }

static void mem_add(lw_store *s, const char *name, int ndim, const int64_t *shape, const float *data)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
    expect_ok(lw_store_add(s, name, LW_F32, ndim, shape, data, n * sizeof(float)), "lw_store_add");
}

/* ---------------------------------------------------------------- ClassEmbedder */

START_TEST(test_class_fixture)
{
    opened o;
    if (!open_fixture("cond_class", &o)) return;
    ld_cond want = class_desc(1001, 48), d = fixture_cond(o.dir, &want);
    lclass *n = NULL;
    expect_ok(lclass_create(&d, o.weights, PREFIX, &n), "lclass_create");
    ck_assert_int_eq(lclass_n_classes(n), 1001);
    ck_assert_int_eq(lclass_embed_dim(n), 48);
    ldm_tensor *labels = io_tensor(o.io, "class_label"), *c = NULL;
    expect_ok(lclass_encode(n, labels, &c), "cond.class_embed");
    expect_match("cond_class", &o, "c", c);
    ldm_tensor_free(c);
    ldm_tensor_free(labels);
    lclass_free(n);
    close_fixture(&o);
}
END_TEST

START_TEST(test_class_bad)
{
    opened o;
    if (!open_fixture("cond_class", &o)) return;
    ld_cond d = class_desc(1001, 48);
    lclass *n = NULL;
    expect_ok(lclass_create(&d, o.weights, PREFIX, &n), "lclass_create");
    ldm_tensor *out = NULL;
    ldm_tensor *lab = lt_new_i64(1, (int64_t[]){3}), *lab2 = lt_new_i64(2, (int64_t[]){3, 1});
    ldm_tensor *labf = lt_new_f32(1, (int64_t[]){3}), *empty = lt_new_i64(1, (int64_t[]){0});
    lt_i64(lab)[0] = 5;
    lt_i64(lab)[1] = 1001;
    expect_fail(lclass_encode(n, lab, &out), LDM_ERR_INVALID_ARGUMENT, "label 1001 at position 1", "label 1001");
    ck_assert_ptr_null(out);
    lt_i64(lab)[1] = -1;
    expect_fail(lclass_encode(n, lab, &out), LDM_ERR_INVALID_ARGUMENT, "label -1", "label -1");
    lt_i64(lab)[1] = 1000; /* the unconditional class of cin models is valid */
    expect_ok(lclass_encode(n, lab, &out), "label 1000");
    ck_assert_int_eq(out->ndim, 3);
    ck_assert_int_eq(out->shape[0], 3);
    ck_assert_int_eq(out->shape[1], 1);
    ck_assert_int_eq(out->shape[2], 48);
    ldm_tensor_free(out);
    out = NULL;
    expect_fail(lclass_encode(n, lab2, &out), LDM_ERR_INVALID_ARGUMENT, "1 dimensions", "2-D labels");
    expect_fail(lclass_encode(n, labf, &out), LDM_ERR_INVALID_ARGUMENT, "dtype", "F32 labels");
    expect_fail(lclass_encode(n, empty, &out), LDM_ERR_INVALID_ARGUMENT, "B >= 1", "empty batch");
    expect_fail(lclass_encode(n, NULL, &out), LDM_ERR_INVALID_ARGUMENT, "NULL", "NULL labels");
    lclass_free(n);

    lclass *bad = NULL;
    expect_fail(lclass_create(&d, o.weights, "model.", &bad), LDM_ERR_NOT_FOUND, "model.embedding.weight",
                "wrong prefix");
    ck_assert_ptr_null(bad);
    ld_cond d2 = class_desc(1000, 48);
    expect_fail(lclass_create(&d2, o.weights, PREFIX, &bad), LDM_ERR_FORMAT, "expected shape [1000,48]",
                "wrong n_classes");
    d2 = class_desc(0, 48);
    expect_fail(lclass_create(&d2, o.weights, PREFIX, &bad), LDM_ERR_INVALID_ARGUMENT, "n_classes", "0 classes");
    ck_assert_ptr_null(bad);

    ldm_tensor *all[] = {lab, lab2, labf, empty};
    for (size_t i = 0; i < LDM_ARRAY_LEN(all); i++) ldm_tensor_free(all[i]);
    close_fixture(&o);
}
END_TEST

/* ---------------------------------------------------------------- SpatialRescaler fixture */

static lrescaler *fixture_rescaler(const opened *o)
{
    ld_cond want = rescaler_desc(2, 0.5, 1, 182, 3, 0), d = fixture_cond(o->dir, &want);
    lrescaler *n = NULL;
    expect_ok(lrescaler_create(&d, o->weights, PREFIX, &n), "lrescaler_create");
    return n;
}

START_TEST(test_rescaler_fixture)
{
    opened o;
    if (!open_fixture("cond_spatial_rescaler", &o)) return;
    lrescaler *n = fixture_rescaler(&o);
    ck_assert_int_eq(lrescaler_out_channels(n), 3);
    ldm_tensor *labels = io_tensor(o.io, "labels"), *seg_ref = io_tensor(o.io, "seg"), *seg = NULL;
    /* the glue's one-hot equals the reference's np.eye(182)[labels] exactly */
    expect_ok(lrescaler_one_hot(labels, 182, &seg), "one-hot");
    fx_compare_result r;
    ck_assert_msg(fx_compare(seg, seg_ref, (fx_tolerance){0, 0, 1}, &r), "one-hot: %s", r.note);

    ldm_tensor *c[2] = {NULL, NULL};
    for (int t = 0; t < 2; t++) {
        lpool *pool = lpool_create(t + 1);
        ck_assert_ptr_nonnull(pool);
        lctx ctx = {.pool = pool, .cancel = NULL};
        expect_ok(lrescaler_encode(n, &ctx, t ? seg : seg_ref, &c[t]), "cond.spatial_rescaler");
        expect_match("cond_spatial_rescaler", &o, "c", c[t]);
        lpool_free(pool);
    }
    ck_assert_msg(fx_compare(c[0], c[1], (fx_tolerance){0, 0, 1}, &r), "1 vs 2 threads: %s", r.note);
    ldm_tensor *all[] = {labels, seg_ref, seg, c[0], c[1]};
    for (size_t i = 0; i < LDM_ARRAY_LEN(all); i++) ldm_tensor_free(all[i]);
    lrescaler_free(n);
    close_fixture(&o);
}
END_TEST

START_TEST(test_rescaler_bad)
{
    opened o;
    if (!open_fixture("cond_spatial_rescaler", &o)) return;
    lrescaler *n = fixture_rescaler(&o);
    ldm_tensor *out = NULL;
    ldm_tensor *x181 = lt_new_f32_4d(1, 181, 8, 8), *tiny = lt_new_f32_4d(1, 182, 3, 8);
    ldm_tensor *x3d = lt_new_f32(3, (int64_t[]){182, 8, 8}), *lab = lt_new_i64(3, (int64_t[]){1, 2, 2});
    ldm_tensor *labf = lt_new_f32(3, (int64_t[]){1, 2, 2});
    expect_fail(lrescaler_encode(n, NULL, x181, &out), LDM_ERR_INVALID_ARGUMENT, "expected [B,182,H,W]",
                "181 channels");
    ck_assert_ptr_null(out);
    expect_fail(lrescaler_encode(n, NULL, x3d, &out), LDM_ERR_INVALID_ARGUMENT, "4 dimensions", "3-D input");
    /* 3 -> 1 -> 0 rows after two stages */
    expect_fail(lrescaler_encode(n, NULL, tiny, &out), LDM_ERR_INVALID_ARGUMENT, "too small", "3 rows");
    ck_assert_ptr_null(out);
    lt_i64(lab)[3] = 182;
    expect_fail(lrescaler_one_hot(lab, 182, &out), LDM_ERR_INVALID_ARGUMENT, "label 182 at [0,1,1]", "label 182");
    lt_i64(lab)[3] = -3;
    expect_fail(lrescaler_one_hot(lab, 182, &out), LDM_ERR_INVALID_ARGUMENT, "label -3", "label -3");
    ck_assert_ptr_null(out);
    expect_fail(lrescaler_one_hot(labf, 182, &out), LDM_ERR_INVALID_ARGUMENT, "dtype", "F32 labels");
    expect_fail(lrescaler_one_hot(lab, 0, &out), LDM_ERR_INVALID_ARGUMENT, "n_classes", "0 classes");

    atomic_int flag = 1;
    lctx c = {.pool = NULL, .cancel = &flag};
    ldm_tensor *x = lt_new_f32_4d(1, 182, 8, 8);
    expect_fail(lrescaler_encode(n, &c, x, &out), LDM_CANCELLED, "cancelled", "cancel");
    ck_assert_ptr_null(out);
    lrescaler_free(n);

    lrescaler *bad = NULL;
    ld_cond d = rescaler_desc(2, 0.5, 1, 182, 3, 1);
    expect_fail(lrescaler_create(&d, o.weights, PREFIX, &bad), LDM_ERR_NOT_FOUND, PREFIX "channel_mapper.bias",
                "bias missing");
    d = rescaler_desc(2, 0.5, 1, 181, 3, 0);
    expect_fail(lrescaler_create(&d, o.weights, PREFIX, &bad), LDM_ERR_FORMAT, "expected shape [3,181,1,1]",
                "181 in channels");
    d = rescaler_desc(2, 0.0, 1, 182, 3, 0);
    expect_fail(lrescaler_create(&d, o.weights, PREFIX, &bad), LDM_ERR_INVALID_ARGUMENT, "multiplier", "mult 0");
    d = rescaler_desc(-1, 0.5, 1, 182, 3, 0);
    expect_fail(lrescaler_create(&d, o.weights, PREFIX, &bad), LDM_ERR_INVALID_ARGUMENT, "n_stages", "-1 stages");
    ck_assert_ptr_null(bad);

    ldm_tensor *all[] = {x181, tiny, x3d, lab, labf, x};
    for (size_t i = 0; i < LDM_ARRAY_LEN(all); i++) ldm_tensor_free(all[i]);
    close_fixture(&o);
}
END_TEST

/* ---------------------------------------------------------------- interpolation modes by hand */

/* Runs a weightless rescaler (no channel_mapper) on x. */
static ldm_tensor *rescale(int n_stages, double mult, int bilinear, const ldm_tensor *x)
{
    lw_store *s = mem_store();
    lw_store_finish(s);
    ld_cond d = rescaler_desc(n_stages, mult, bilinear, 3, 0, 0);
    lrescaler *n = NULL;
    ldm_tensor *out = NULL;
    expect_ok(lrescaler_create(&d, s, PREFIX, &n), "create");
    expect_ok(lrescaler_encode(n, NULL, x, &out), "encode");
    lrescaler_free(n);
    lw_close(s);
    return out;
}

static ldm_tensor *ramp(int c, int h, int w)
{
    ldm_tensor *x = lt_new_f32_4d(1, c, h, w);
    for (int64_t i = 0; i < lt_numel(x); i++) lt_f32(x)[i] = (float)i;
    return x;
}

START_TEST(test_rescaler_modes)
{
    ldm_tensor *x = ramp(2, 5, 7), *y;
    /* bilinear x0.5 on odd sizes = 2x2 average pool with floor: 5x7 -> 2x3 */
    y = rescale(1, 0.5, 1, x);
    ck_assert_int_eq(y->shape[2], 2);
    ck_assert_int_eq(y->shape[3], 3);
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 3; j++) {
                const float *p = lt_f32(x) + c * 35 + (2 * i) * 7 + 2 * j;
                float avg = (p[0] + p[1] + p[7] + p[8]) / 4;
                ck_assert_float_eq_tol(lt_f32(y)[c * 6 + i * 3 + j], avg, 1e-5f);
            }
    ldm_tensor_free(y);

    /* nearest x0.5: src = floor(dst * 2) */
    y = rescale(1, 0.5, 0, x);
    ck_assert_float_eq(lt_f32(y)[1 * 3 + 2], lt_f32(x)[2 * 7 + 4]);
    ldm_tensor_free(y);
    /* nearest x2 duplicates; x0.75 on 4 columns: out 3, src floor(dst * 4/3) = 0, 1, 2 */
    ldm_tensor *r = ramp(1, 1, 4);
    y = rescale(1, 2.0, 0, r);
    ck_assert_int_eq(y->shape[3], 8);
    for (int j = 0; j < 8; j++) ck_assert_float_eq(lt_f32(y)[j], (float)(j / 2));
    ldm_tensor_free(y);
    ldm_tensor_free(r);
    r = ramp(1, 4, 4);
    y = rescale(1, 0.75, 0, r);
    ck_assert_int_eq(y->shape[2], 3);
    ck_assert_int_eq(y->shape[3], 3);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) ck_assert_float_eq(lt_f32(y)[i * 3 + j], lt_f32(r)[i * 4 + j]);
    ldm_tensor_free(y);
    ldm_tensor_free(r);

    /* zero stages, no mapper: a copy */
    y = rescale(0, 0.5, 1, x);
    fx_compare_result cr;
    ck_assert(fx_compare(y, x, (fx_tolerance){0, 0, 1}, &cr));
    ldm_tensor_free(y);
    ldm_tensor_free(x);
}
END_TEST

/* channel_mapper with bias, after a bilinear stage, against a direct computation. */
START_TEST(test_rescaler_mapper_bias)
{
    static const float w[2 * 3] = {1, -2, 0.5f, 0.25f, 3, -1};
    static const float b[2] = {0.5f, -4};
    lw_store *s = mem_store();
    mem_add(s, PREFIX "channel_mapper.weight", 4, (int64_t[]){2, 3, 1, 1}, w);
    mem_add(s, PREFIX "channel_mapper.bias", 1, (int64_t[]){2}, b);
    lw_store_finish(s);
    ld_cond d = rescaler_desc(1, 0.5, 1, 3, 2, 1);
    lrescaler *n = NULL;
    expect_ok(lrescaler_create(&d, s, PREFIX, &n), "create");
    ldm_tensor *x = ramp(3, 4, 4), *y = NULL;
    expect_ok(lrescaler_encode(n, NULL, x, &y), "encode");
    ck_assert_int_eq(y->shape[1], 2);
    ck_assert_int_eq(y->shape[2], 2);
    for (int o = 0; o < 2; o++)
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 2; j++) {
                double acc = b[o];
                for (int c = 0; c < 3; c++) {
                    const float *p = lt_f32(x) + c * 16 + 2 * i * 4 + 2 * j;
                    acc += w[o * 3 + c] * (p[0] + p[1] + p[4] + p[5]) / 4.0;
                }
                ck_assert_float_eq_tol(lt_f32(y)[o * 4 + i * 2 + j], (float)acc, 1e-4f);
            }
    ldm_tensor_free(x);
    ldm_tensor_free(y);
    lrescaler_free(n);
    lw_close(s);
}
END_TEST

/* ---------------------------------------------------------------- allocation failures */

START_TEST(test_alloc_failures)
{
    opened o;
    if (!open_fixture("cond_spatial_rescaler", &o)) return;
    ldm_tensor *labels = io_tensor(o.io, "labels");
    int done = 0;
    for (int n = 1; n < 1000 && !done; n++) {
        ld_cond d = rescaler_desc(2, 0.5, 1, 182, 3, 0);
        lrescaler *r = NULL;
        ldm_tensor *seg = NULL, *c = NULL;
        ldm_alloc_fail_after(n);
        ldm_status st = lrescaler_create(&d, o.weights, PREFIX, &r);
        if (st == LDM_OK) st = lrescaler_one_hot(labels, 182, &seg);
        if (st == LDM_OK) st = lrescaler_encode(r, NULL, seg, &c);
        ldm_alloc_fail_after(0);
        if (st == LDM_OK) done = 1;
        else ck_assert_msg(st == LDM_ERR_OUT_OF_MEMORY && !c, "n=%d: %s", n, ldm_last_error());
        ldm_tensor_free(seg);
        ldm_tensor_free(c);
        lrescaler_free(r);
    }
    ck_assert(done);
    ldm_tensor_free(labels);
    close_fixture(&o);
}
END_TEST

static Suite *small_cond_suite(void)
{
    Suite *s = suite_create("small_cond");
    TCase *tc = tcase_create("class");
    tcase_add_test(tc, test_class_fixture);
    tcase_add_test(tc, test_class_bad);
    suite_add_tcase(s, tc);
    tc = tcase_create("rescaler");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_rescaler_fixture);
    tcase_add_test(tc, test_rescaler_bad);
    tcase_add_test(tc, test_rescaler_modes);
    tcase_add_test(tc, test_rescaler_mapper_bias);
    tcase_add_test(tc, test_alloc_failures);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return ck_run_suite(small_cond_suite());
}
