/* test_loaders.c - checkpoint loading: every fixture checkpoint opens, .ckpt and .safetensors of
 * the same weights agree byte for byte, float32 conversion (F16/BF16/F64) is exact, shape
 * mismatches are reported clearly, and EMA names map as the reference's LitEma does. */
#include <check.h>

#include "io/weights.h"
#include "support/ck_run.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *shared_dir(void)
{
    const char *s = getenv("LDM_SHARED");
    return (s && *s) ? s : "../shared";
}

static int file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static int fixtures_dir(char *out, size_t cap)
{
    snprintf(out, cap, "%s/fixtures", shared_dir());
    DIR *d = opendir(out);
    if (!d) {
        printf("SKIPPED: fixtures not found at %s (set LDM_SHARED)\n", out);
        return 0;
    }
    closedir(d);
    return 1;
}

static size_t numel_of(const lw_tensor *t)
{
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
    return n;
}

/* Opens `path`, checks that every tensor is self-consistent; returns the tensor count or -1. */
static long check_store_file(const char *path)
{
    lw_store *s = NULL;
    ldm_status st = lw_open(path, 0, &s);
    ck_assert_msg(st == LDM_OK, "%s: %s", path, ldm_last_error());
    long n = (long)lw_count(s);
    for (size_t i = 0; i < lw_count(s); i++) {
        const lw_tensor *t = lw_at(s, i);
        ck_assert_msg(t->nbytes == numel_of(t) * lw_dtype_size(t->dtype), "%s: %s: nbytes", path, t->name);
        ck_assert(lw_find(s, t->name) == t);
        if (i > 0) ck_assert_msg(strcmp(lw_at(s, i - 1)->name, t->name) < 0, "%s: not sorted", path);
    }
    lw_close(s);
    return n;
}

START_TEST(every_fixture_checkpoint_loads)
{
    char root[1024];
    if (!fixtures_dir(root, sizeof root)) return;
    DIR *d = opendir(root);
    struct dirent *de;
    int files = 0;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        static const char *names[] = {"model.safetensors", "model.ckpt", "io.safetensors"};
        for (size_t k = 0; k < 3; k++) {
            char path[2048];
            snprintf(path, sizeof path, "%s/%s/%s", root, de->d_name, names[k]);
            if (!file_exists(path)) continue;
            ck_assert_int_gt(check_store_file(path), 0);
            files++;
        }
    }
    closedir(d);
    ck_assert_int_gt(files, 10);
}
END_TEST

/* A scalar is 0-dim in the .ckpt and [1] in the converted safetensors. */
static int same_shape(const lw_tensor *a, const lw_tensor *b)
{
    if (numel_of(a) == 1 && numel_of(b) == 1 && a->ndim <= 1 && b->ndim <= 1) return 1;
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

START_TEST(ckpt_matches_safetensors)
{
    char root[1024];
    if (!fixtures_dir(root, sizeof root)) return;
    static const char *fixtures[] = {"ae_kl_f8", "unet_attnblock", "ldm_uncond_plms"};
    for (size_t f = 0; f < LDM_ARRAY_LEN(fixtures); f++) {
        char pc[2048], ps[2048];
        snprintf(pc, sizeof pc, "%s/%s/model.ckpt", root, fixtures[f]);
        snprintf(ps, sizeof ps, "%s/%s/model.safetensors", root, fixtures[f]);
        lw_store *c = NULL, *s = NULL;
        ck_assert_msg(lw_open(pc, 0, &c) == LDM_OK, "%s", ldm_last_error());
        ck_assert_msg(lw_open(ps, 0, &s) == LDM_OK, "%s", ldm_last_error());
        ck_assert_uint_eq(lw_count(c), lw_count(s));
        for (size_t i = 0; i < lw_count(c); i++) {
            const lw_tensor *a = lw_at(c, i), *b = lw_at(s, i);
            ck_assert_str_eq(a->name, b->name);
            ck_assert_msg(a->dtype == b->dtype, "%s: dtype", a->name);
            ck_assert_msg(same_shape(a, b), "%s: shape", a->name);
            ck_assert_uint_eq(a->nbytes, b->nbytes);
            ck_assert_msg(memcmp(a->data, b->data, a->nbytes) == 0, "%s: bytes differ", a->name);
        }
        lw_close(c);
        lw_close(s);
    }
}
END_TEST

START_TEST(uncond_plms_has_ema_for_every_diffusion_weight)
{
    char root[1024], path[2048];
    if (!fixtures_dir(root, sizeof root)) return;
    snprintf(path, sizeof path, "%s/ldm_uncond_plms/model.ckpt", root);
    lw_store *s = NULL;
    ck_assert_msg(lw_open(path, 0, &s) == LDM_OK, "%s", ldm_last_error());
    int n = 0;
    for (size_t i = 0; i < lw_count(s); i++) {
        const char *name = lw_at(s, i)->name;
        if (strncmp(name, "model.diffusion_model.", 22) != 0) continue;
        char ema[512];
        lw_ema_name(name, ema, sizeof ema);
        ck_assert_msg(lw_find(s, ema) != NULL, "no EMA tensor %s for %s", ema, name);
        n++;
    }
    ck_assert_int_gt(n, 10);
    const lw_tensor *nu = lw_find(s, "model_ema.num_updates");
    ck_assert_ptr_nonnull(nu);
    ck_assert_int_eq(nu->dtype, LW_I32);
    ck_assert(lw_has_prefix(s, "model_ema."));
    ck_assert(!lw_has_prefix(s, "cond_stage_model."));
    lw_close(s);
}
END_TEST

START_TEST(ema_name_mapping)
{
    char out[256];
    lw_ema_name("model.diffusion_model.input_blocks.0.0.weight", out, sizeof out);
    ck_assert_str_eq(out, "model_ema.diffusion_modelinput_blocks00weight");
    lw_ema_name("model.diffusion_model.out.2.bias", out, sizeof out);
    ck_assert_str_eq(out, "model_ema.diffusion_modelout2bias");
    /* Truncation never overruns and stays terminated. */
    char small[12];
    memset(small, 'x', sizeof small);
    lw_ema_name("model.diffusion_model.input_blocks.0.0.weight", small, sizeof small);
    ck_assert_str_eq(small, "model_ema.d");
}
END_TEST

/* ---------------------------------------------------------------- in-memory stores */

START_TEST(get_f32_reports_shape_mismatch)
{
    float w[6] = {1, 2, 3, 4, 5, 6};
    lw_store *s = lw_store_new("mem.safetensors");
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(lw_store_add(s, "layer.weight", LW_F32, 2, (int64_t[]){2, 3}, w, sizeof w), LDM_OK);
    ck_assert_int_eq(lw_store_seal(s), LDM_OK);

    float *out = NULL;
    ck_assert_int_eq(lw_get_f32(s, "layer.weight", 2, (int64_t[]){3, 2}, &out), LDM_ERR_FORMAT);
    ck_assert_ptr_null(out);
    ck_assert_str_eq(ldm_last_error(), "mem.safetensors: tensor layer.weight: expected shape [3,2], found [2,3]");
    ck_assert_int_eq(lw_get_f32(s, "layer.weight", 1, (int64_t[]){6}, &out), LDM_ERR_FORMAT);
    ck_assert_str_eq(ldm_last_error(), "mem.safetensors: tensor layer.weight: expected shape [6], found [2,3]");

    ck_assert_int_eq(lw_get_f32f(s, 2, (int64_t[]){2, 3}, &out, "%s.%s", "layer", "bias"), LDM_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "layer.bias"));

    ck_assert_int_eq(lw_get_f32f(s, 2, (int64_t[]){2, 3}, &out, "%s.weight", "layer"), LDM_OK);
    ck_assert_mem_eq(out, w, sizeof w);
    ldm_free(out);
    ck_assert_int_eq(lw_get_f32(s, "layer.weight", -1, NULL, &out), LDM_OK); /* any shape */
    ldm_free(out);
    lw_close(s);
}
END_TEST

START_TEST(duplicate_names_are_rejected)
{
    float w = 1;
    lw_store *s = lw_store_new("dup");
    ck_assert_int_eq(lw_store_add(s, "b", LW_F32, 0, NULL, &w, 4), LDM_OK);
    ck_assert_int_eq(lw_store_add(s, "a", LW_F32, 0, NULL, &w, 4), LDM_OK);
    ck_assert_int_eq(lw_store_add(s, "b", LW_F32, 0, NULL, &w, 4), LDM_OK);
    ck_assert_int_eq(lw_store_seal(s), LDM_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "tensor b appears twice"));
    lw_close(s);
}
END_TEST

START_TEST(scalar_and_one_element_shapes_match)
{
    float v = 0.9999f;
    lw_store *s = lw_store_new("scalar");
    ck_assert_int_eq(lw_store_add(s, "decay", LW_F32, 0, NULL, &v, 4), LDM_OK);
    lw_store_seal(s);
    float *out = NULL;
    ck_assert_int_eq(lw_get_f32(s, "decay", 1, (int64_t[]){1}, &out), LDM_OK);
    ck_assert(out[0] == v);
    ldm_free(out);
    ck_assert_int_eq(lw_get_f32(s, "decay", 0, NULL, &out), LDM_OK);
    ldm_free(out);
    ck_assert_int_eq(lw_get_f32(s, "decay", 1, (int64_t[]){2}, &out), LDM_ERR_FORMAT);
    lw_close(s);
}
END_TEST

/* F16/BF16/F64 storage, deliberately misaligned as tensors in a mapping can be. */
START_TEST(get_f32_converts_and_tolerates_misalignment)
{
    unsigned char buf[64];
    uint16_t h[3] = {0x3C00, 0xC000, 0x0001};     /* 1, -2, 2^-24 */
    uint16_t bf[3] = {0x3F80, 0xC040, 0x7F80};    /* 1, -3, inf */
    double d[2] = {0.1, -1e300};
    lw_store *s = lw_store_new("conv");
    memcpy(buf + 1, h, sizeof h);
    memcpy(buf + 9, bf, sizeof bf);
    memcpy(buf + 17, d, sizeof d);
    ck_assert_int_eq(lw_store_add(s, "h", LW_F16, 1, (int64_t[]){3}, buf + 1, 6), LDM_OK);
    ck_assert_int_eq(lw_store_add(s, "bf", LW_BF16, 1, (int64_t[]){3}, buf + 9, 6), LDM_OK);
    ck_assert_int_eq(lw_store_add(s, "d", LW_F64, 1, (int64_t[]){2}, buf + 17, 16), LDM_OK);
    ck_assert_int_eq(lw_store_add(s, "i", LW_I64, 1, (int64_t[]){1}, buf + 33, 8), LDM_OK);
    ck_assert_int_eq(lw_store_add(s, "f", LW_F32, 1, (int64_t[]){2}, buf + 41, 8), LDM_OK);
    lw_store_seal(s);
    float *o = NULL;
    ck_assert_int_eq(lw_get_f32(s, "h", 1, (int64_t[]){3}, &o), LDM_OK);
    ck_assert(o[0] == 1.0f && o[1] == -2.0f && o[2] == ldexpf(1.0f, -24));
    ldm_free(o);
    /* the conversions are exact (inf stays inf, -1e300 overflows to -inf), but a weight that
     * widens to Inf/NaN is refused, naming the tensor (test_numeric.c has the rest) */
    ck_assert(lw_bf16_to_f32(bf[0]) == 1.0f && lw_bf16_to_f32(bf[1]) == -3.0f && isinf(lw_bf16_to_f32(bf[2])));
    ck_assert_int_eq(lw_get_f32(s, "bf", 1, (int64_t[]){3}, &o), LDM_ERR_NUMERIC);
    ck_assert_ptr_null(o);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "tensor bf holds Inf (element 2 of 3)"));
    ck_assert_int_eq(lw_get_f32(s, "d", 1, (int64_t[]){2}, &o), LDM_ERR_NUMERIC);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "tensor d holds Inf (element 1 of 2)"));
    ck_assert_int_eq(lw_get_f32(s, "f", -1, NULL, &o), LDM_OK);
    ldm_free(o);
    ck_assert_int_eq(lw_get_f32(s, "i", 1, (int64_t[]){1}, &o), LDM_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "I64"));
    lw_close(s);
}
END_TEST

/* ---------------------------------------------------------------- half precision */

static double half_value(uint16_t h)
{
    int sign = h >> 15, exp = (h >> 10) & 31, man = h & 1023;
    double v = exp == 0 ? ldexp(man, -24) : ldexp(1024 + man, exp - 25);
    return sign ? -v : v;
}

START_TEST(f16_to_f32_is_exact_for_every_value)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = lw_f16_to_f32((uint16_t)h);
        int exp = (h >> 10) & 31, man = h & 1023;
        if (exp == 31 && man) {
            ck_assert_msg(isnan(f), "0x%04x should be NaN", h);
        } else if (exp == 31) {
            ck_assert_msg(isinf(f) && (f < 0) == (h >> 15), "0x%04x should be inf", h);
        } else {
            ck_assert_msg((double)f == half_value((uint16_t)h), "0x%04x: %.9g", h, (double)f);
            ck_assert_msg(signbit(f) == 0 ? !(h >> 15) : (h >> 15), "0x%04x: sign", h);
        }
    }
}
END_TEST

START_TEST(f32_to_f16_round_trips_and_rounds_to_nearest_even)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = lw_f16_to_f32((uint16_t)h);
        uint16_t back = lw_f32_to_f16(f);
        if (isnan(f)) {
            ck_assert_msg((back & 0x7C00) == 0x7C00 && (back & 0x3FF), "NaN 0x%04x -> 0x%04x", h, back);
            continue;
        }
        ck_assert_msg(back == h, "0x%04x -> %.9g -> 0x%04x", h, (double)f, back);
        /* Midpoint to the next half up (same sign): ties go to the even mantissa. */
        uint32_t next = h + 1;
        if ((h & 0x7FFF) >= 0x7BFF || (next & 0x8000) != (h & 0x8000)) continue; /* 65504's tie: special cases */
        float g = lw_f16_to_f32((uint16_t)next);
        float mid = (float)(((double)f + (double)g) / 2); /* exact: halves have 11 significant bits */
        uint16_t even = (h & 1) ? (uint16_t)next : (uint16_t)h;
        ck_assert_msg(lw_f32_to_f16(mid) == even, "tie between 0x%04x and 0x%04x", h, next);
        float above = nextafterf(mid, signbit(f) ? -INFINITY : INFINITY);
        float below = nextafterf(mid, signbit(f) ? INFINITY : -INFINITY);
        ck_assert_msg(lw_f32_to_f16(above) == next, "above tie 0x%04x", h);
        ck_assert_msg(lw_f32_to_f16(below) == h, "below tie 0x%04x", h);
    }
}
END_TEST

START_TEST(f32_to_f16_special_cases)
{
    ck_assert_uint_eq(lw_f32_to_f16(0.0f), 0x0000);
    ck_assert_uint_eq(lw_f32_to_f16(-0.0f), 0x8000);
    ck_assert_uint_eq(lw_f32_to_f16(INFINITY), 0x7C00);
    ck_assert_uint_eq(lw_f32_to_f16(-INFINITY), 0xFC00);
    uint16_t n = lw_f32_to_f16(NAN);
    ck_assert((n & 0x7C00) == 0x7C00 && (n & 0x3FF) != 0);
    ck_assert_uint_eq(lw_f32_to_f16(65504.0f), 0x7BFF);
    ck_assert_uint_eq(lw_f32_to_f16(65519.99f), 0x7BFF);
    ck_assert_uint_eq(lw_f32_to_f16(65520.0f), 0x7C00); /* tie with 65536 rounds to even = inf */
    ck_assert_uint_eq(lw_f32_to_f16(1e10f), 0x7C00);
    ck_assert_uint_eq(lw_f32_to_f16(ldexpf(1, -24)), 0x0001);      /* smallest subnormal */
    ck_assert_uint_eq(lw_f32_to_f16(ldexpf(1, -25)), 0x0000);      /* tie with 0 -> even (0) */
    ck_assert_uint_eq(lw_f32_to_f16(nextafterf(ldexpf(1, -25), 1)), 0x0001);
    ck_assert_uint_eq(lw_f32_to_f16(ldexpf(3, -26)), 0x0001);      /* 0.75 ulp -> 1 */
    ck_assert_uint_eq(lw_f32_to_f16(ldexpf(1, -30)), 0x0000);
    ck_assert_uint_eq(lw_f32_to_f16(ldexpf(1023, -24)), 0x03FF);   /* largest subnormal */
    ck_assert_uint_eq(lw_f32_to_f16(ldexpf(2047, -25)), 0x0400);   /* rounds up into the normals */
    ck_assert_uint_eq(lw_f32_to_f16(-ldexpf(1, -14)), 0x8400);
    ck_assert(lw_bf16_to_f32(0x3F80) == 1.0f);
    ck_assert(isnan(lw_bf16_to_f32(0x7FC0)));
}
END_TEST

/* ---------------------------------------------------------------- lw_open */

START_TEST(open_restores_the_allocation_cap)
{
    char root[1024], path[2048];
    if (!fixtures_dir(root, sizeof root)) return;
    snprintf(path, sizeof path, "%s/ae_kl_f8/model.ckpt", root);
    ldm_alloc_set_cap(0);
    lw_store *s = NULL;
    ck_assert_int_eq(lw_open(path, 64, &s), LDM_ERR_LIMIT); /* 64 bytes cannot hold a tensor table */
    ck_assert_ptr_null(s);
    ck_assert_uint_eq(ldm_alloc_get_cap(), 0);
    ck_assert_int_eq(lw_open(path, (size_t)64 << 20, &s), LDM_OK);
    ck_assert_uint_eq(ldm_alloc_get_cap(), 0);
    lw_close(s);
}
END_TEST

START_TEST(open_reports_missing_and_foreign_files)
{
    lw_store *s = NULL;
    ck_assert_int_eq(lw_open("/nonexistent/model.ckpt", 0, &s), LDM_ERR_IO);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "/nonexistent/model.ckpt"));
    /* a device is refused before it is opened (a FIFO would block the open) */
    ck_assert_int_eq(lw_open("/dev/null", 0, &s), LDM_ERR_IO);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "character device"));
    ck_assert_ptr_null(s);
}
END_TEST

static Suite *loaders_suite(void)
{
    Suite *s = suite_create("loaders");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, every_fixture_checkpoint_loads);
    tcase_add_test(tc, ckpt_matches_safetensors);
    tcase_add_test(tc, uncond_plms_has_ema_for_every_diffusion_weight);
    tcase_add_test(tc, ema_name_mapping);
    tcase_add_test(tc, get_f32_reports_shape_mismatch);
    tcase_add_test(tc, duplicate_names_are_rejected);
    tcase_add_test(tc, scalar_and_one_element_shapes_match);
    tcase_add_test(tc, get_f32_converts_and_tolerates_misalignment);
    tcase_add_test(tc, f16_to_f32_is_exact_for_every_value);
    tcase_add_test(tc, f32_to_f16_round_trips_and_rounds_to_nearest_even);
    tcase_add_test(tc, f32_to_f16_special_cases);
    tcase_add_test(tc, open_restores_the_allocation_cap);
    tcase_add_test(tc, open_reports_missing_and_foreign_files);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return ck_run_suite(loaders_suite());
}
