/* test_dtypes.c - a model stored as F16 or BF16 computes exactly what the same model computes
 * from F32 weights holding the same (rounded) values: the storage dtype only changes how the
 * weights are widened, never the arithmetic. Uses a fixture checkpoint, rewritten by this test
 * into the three storage forms. */
#include <check.h>

#include "core/json.h"
#include "io/weights.h"
#include "ldm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "support/fixture.h"
#include "support/ck_run.h"

typedef enum { STORE_F32, STORE_F16, STORE_BF16 } store_kind;

static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFF + ((u >> 16) & 1); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

/* The value a float becomes when stored in `kind`. */
static float rounded(float f, store_kind kind)
{
    if (kind == STORE_F16) return lw_f16_to_f32(lw_f32_to_f16(f));
    if (kind == STORE_BF16) return lw_bf16_to_f32(to_bf16(f));
    return f;
}

/* Writes every floating tensor of `src` rounded as `kind`, stored as `dtype_kind` (F32 storage of
 * rounded values when as_f32 is set), other tensors unchanged. */
static void write_copy(const lw_store *src, const char *path, store_kind kind, int as_f32)
{
    size_t n = lw_count(src), off = 0;
    char *header = malloc(1 << 20);
    size_t hl = 0;
    hl += (size_t)sprintf(header + hl, "{");
    FILE *data = tmpfile();
    for (size_t i = 0; i < n; i++) {
        const lw_tensor *t = lw_at(src, i);
        int is_float = t->dtype == LW_F32 || t->dtype == LW_F16 || t->dtype == LW_BF16;
        const char *dt = !is_float ? lw_dtype_name(t->dtype) : (as_f32 || kind == STORE_F32) ? "F32" : kind == STORE_F16 ? "F16" : "BF16";
        size_t numel = t->nbytes / lw_dtype_size(t->dtype), bytes;
        if (is_float) {
            float *f = NULL;
            ck_assert_int_eq(lw_get_f32(src, t->name, -1, NULL, &f), LDM_OK);
            if (!strcmp(dt, "F32")) {
                for (size_t k = 0; k < numel; k++) f[k] = rounded(f[k], kind);
                fwrite(f, 4, numel, data);
                bytes = numel * 4;
            } else {
                for (size_t k = 0; k < numel; k++) {
                    uint16_t h = kind == STORE_F16 ? lw_f32_to_f16(f[k]) : to_bf16(f[k]);
                    fwrite(&h, 2, 1, data);
                }
                bytes = numel * 2;
            }
            ldm_free(f);
        } else {
            fwrite(t->data, 1, t->nbytes, data);
            bytes = t->nbytes;
        }
        hl += (size_t)sprintf(header + hl, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", i ? "," : "", t->name, dt);
        for (int d = 0; d < t->ndim; d++) hl += (size_t)sprintf(header + hl, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        hl += (size_t)sprintf(header + hl, "],\"data_offsets\":[%zu,%zu]}", off, off + bytes);
        off += bytes;
    }
    hl += (size_t)sprintf(header + hl, "}");
    FILE *out = fopen(path, "wb");
    ck_assert_ptr_nonnull(out);
    uint64_t len = hl;
    fwrite(&len, 8, 1, out);
    fwrite(header, 1, hl, out);
    rewind(data);
    char buf[65536];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, data)) > 0) fwrite(buf, 1, got, out);
    fclose(out);
    fclose(data);
    free(header);
}

/* encode + decode of the fixture input through the public API. */
static ldm_tensor *run_ae(const char *weights, const char *config, const ldm_tensor *x)
{
    ldm_model_params p;
    ldm_model *m = NULL;
    ldm_autoencoder *ae = NULL;
    ldm_tensor *moments = NULL, *image = NULL;
    ldm_model_params_init(&p);
    p.config_path = config;
    p.n_threads = 2;
    ck_assert_msg(ldm_model_load(weights, &p, &m) == LDM_OK, "%s", ldm_last_error());
    ck_assert_int_eq(ldm_model_autoencoder(m, &ae), LDM_OK);
    ck_assert_int_eq(ldm_autoencoder_encode(ae, x, &moments), LDM_OK);
    ck_assert_int_eq(ldm_autoencoder_decode(ae, moments, &image), LDM_ERR_INVALID_ARGUMENT); /* 2E channels */
    ldm_tensor *mean = NULL;
    ck_assert_int_eq(ldm_posterior_split(moments, &mean, NULL, NULL), LDM_OK);
    ck_assert_int_eq(ldm_autoencoder_decode(ae, mean, &image), LDM_OK);
    ldm_tensor_free(moments);
    ldm_tensor_free(mean);
    ldm_model_free(m);
    return image;
}

static void check_kind(store_kind kind)
{
    char dir[4096], src[4200], config[4200], io[4200], a[4200], b[4200];
    snprintf(dir, sizeof dir, "%s/fixtures/ae_kl_f4", fx_shared_dir());
    snprintf(src, sizeof src, "%s/model.safetensors", dir);
    snprintf(config, sizeof config, "%s/config.yaml", dir);
    snprintf(io, sizeof io, "%s/io.safetensors", dir);
    if (!fx_file_exists(src)) {
        printf("SKIPPED: dtypes: fixtures not found at %s (set LDM_SHARED)\n", dir);
        return;
    }
    char tmpl[] = "/tmp/ldm-dtypes-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(tmpl));
    snprintf(a, sizeof a, "%s/stored.safetensors", tmpl);
    snprintf(b, sizeof b, "%s/reference.safetensors", tmpl);
    lw_store *s = NULL, *ios = NULL;
    ck_assert_int_eq(lw_open(src, 0, &s), LDM_OK);
    write_copy(s, a, kind, 0);
    write_copy(s, b, kind, 1);
    lw_close(s);
    ck_assert_int_eq(lw_open(io, 0, &ios), LDM_OK);
    ldm_tensor *x = fx_io_tensor(ios, "x");
    ldm_tensor *got = run_ae(a, config, x), *want = run_ae(b, config, x);
    ck_assert_int_eq(ldm_tensor_numel(got), ldm_tensor_numel(want));
    ck_assert_msg(memcmp(ldm_tensor_data(got), ldm_tensor_data(want), (size_t)ldm_tensor_numel(got) * 4) == 0,
                  "storage dtype %d changes the result", (int)kind);
    ldm_tensor_free(got);
    ldm_tensor_free(want);
    ldm_tensor_free(x);
    lw_close(ios);
    unlink(a);
    unlink(b);
    rmdir(tmpl);
}

START_TEST(f16_storage_equals_rounded_f32) { check_kind(STORE_F16); }
END_TEST

START_TEST(bf16_storage_equals_rounded_f32) { check_kind(STORE_BF16); }
END_TEST

int main(void)
{
    Suite *s = suite_create("dtypes");
    TCase *tc = tcase_create("storage");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, f16_storage_equals_rounded_f32);
    tcase_add_test(tc, bf16_storage_equals_rounded_f32);
    suite_add_tcase(s, tc);
    return ck_run_suite(s);
}
