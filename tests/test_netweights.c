/* test_netweights.c - the memory-saving plumbing of the networks: weight matrices kept in the
 * checkpoint's float16 (lib/models/netweights.c), their pages dropped after use in the
 * low-memory mode (lk_wt_done, ldm_pages_drop, lw_store_in_mapping) and the autoencoder's pool
 * of feature-map buffers (laeb_pool_begin / laeb_pool_end in lib/models/ae_blocks.c). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/common.h"
#include "io/weights.h"
#include "kernels/kernels.h"
#include "models/ae_blocks.h"
#include "models/netweights.h"
#include "models/unet_blocks.h"
#include "support/ck_run.h"

/* A store with a float16 matrix "m16" [3,4], a float32 matrix "m32" [2,2], the same values at
 * an odd address "m32odd" and a float16 vector "v16" [4]. */
static uint16_t h16[12], v16[4];
static float f32[4] = {1.5f, -2.0f, 0.25f, 8.0f};
static _Alignas(8) unsigned char odd[1 + sizeof f32]; /* f32's values at an odd address */

static lw_store *make_store(void)
{
    for (int i = 0; i < 12; i++) h16[i] = lw_f32_to_f16((float)i * 0.5f - 2.0f);
    for (int i = 0; i < 4; i++) v16[i] = lw_f32_to_f16((float)i);
    lw_store *s = lw_store_new("test.safetensors");
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(lw_store_add(s, "m16", LW_F16, 2, (int64_t[]){3, 4}, h16, sizeof h16), LDM_OK);
    ck_assert_int_eq(lw_store_add(s, "m32", LW_F32, 2, (int64_t[]){2, 2}, f32, sizeof f32), LDM_OK);
    ck_assert_int_eq(lw_store_add(s, "v16", LW_F16, 1, (int64_t[]){4}, v16, sizeof v16), LDM_OK);
    memcpy(odd + 1, f32, sizeof f32);
    ck_assert_int_eq(lw_store_add(s, "m32odd", LW_F32, 2, (int64_t[]){2, 2}, odd + 1, sizeof f32), LDM_OK);
    ck_assert_int_eq(lw_store_seal(s), LDM_OK);
    return s;
}

START_TEST(float16_matrices_are_borrowed)
{
    unsetenv("LDM_WIDEN_F16");
    lw_store *s = make_store();
    lnw w;
    ck_assert_int_eq(lnw_get(s, "m16", 2, (int64_t[]){3, 4}, &w), LDM_OK);
    ck_assert_ptr_null(w.own); /* no copy */
    ck_assert_ptr_null(w.w.f32);
    ck_assert_ptr_eq(w.w.f16, lw_find(s, "m16")->data);
    float got[12];
    lk_wt_read(w.w, 0, 12, got);
    for (int i = 0; i < 12; i++) ck_assert(got[i] == (float)i * 0.5f - 2.0f);
    lnw_free(&w);
    ck_assert_ptr_null(w.w.f16);

    /* aligned float32 storage is used in place as well */
    ck_assert_int_eq(lnw_get(s, "m32", 2, (int64_t[]){2, 2}, &w), LDM_OK);
    ck_assert_ptr_null(w.own);
    ck_assert_ptr_eq(w.w.f32, f32);
    lnw_free(&w);
    /* float32 at an odd address (a file may place it there) and vectors: float32 copies */
    ck_assert_int_eq(lnw_get(s, "m32odd", 2, (int64_t[]){2, 2}, &w), LDM_OK);
    ck_assert_ptr_nonnull(w.own);
    ck_assert_ptr_eq(w.w.f32, w.own);
    ck_assert(memcmp(w.own, f32, sizeof f32) == 0);
    lnw_free(&w);
    ck_assert_int_eq(lnw_get(s, "v16", 1, (int64_t[]){4}, &w), LDM_OK);
    ck_assert_ptr_nonnull(w.own);
    ck_assert(w.own[3] == 3.0f);
    lnw_free(&w);

    /* LDM_WIDEN_F16=1: float32 copies of everything at load instead */
    ck_assert_int_eq(setenv("LDM_WIDEN_F16", "1", 1), 0);
    ck_assert_int_eq(lnw_get(s, "m16", 2, (int64_t[]){3, 4}, &w), LDM_OK);
    ck_assert_ptr_nonnull(w.own);
    for (int i = 0; i < 12; i++) ck_assert(w.own[i] == (float)i * 0.5f - 2.0f);
    lnw_free(&w);
    ck_assert_int_eq(lnw_get(s, "m32", 2, (int64_t[]){2, 2}, &w), LDM_OK);
    ck_assert_ptr_nonnull(w.own);
    ck_assert(memcmp(w.own, f32, sizeof f32) == 0);
    lnw_free(&w);
    unsetenv("LDM_WIDEN_F16");
    lw_close(s);
}
END_TEST

START_TEST(errors_name_the_tensor)
{
    lw_store *s = make_store();
    lnw w;
    ck_assert_int_eq(lnw_get(s, "m16", 2, (int64_t[]){4, 3}, &w), LDM_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "m16"));
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "[4,3]"));
    ck_assert_ptr_null(w.w.f16);
    ck_assert_ptr_null(w.own);
    ck_assert_int_eq(lnw_get(s, "absent", 2, (int64_t[]){1, 1}, &w), LDM_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "absent"));
    lw_close(s);
}
END_TEST

START_TEST(autoencoder_maps_reuse_memory_in_a_pass)
{
    unsetenv("LDM_LOW_MEMORY");
    laeb_map a, b;
    laeb_pool_begin();
    ck_assert_int_eq(laeb_map_alloc(&a, 1, 4, 16, 16), LDM_OK);
    float *first = a.d;
    laeb_map_free(&a);
    ldm_alloc_fail_after(1); /* any allocation would fail now */
    ck_assert_int_eq(laeb_map_alloc(&a, 1, 4, 16, 16), LDM_OK);
    ck_assert_ptr_eq(a.d, first); /* the kept buffer */
    laeb_map_free(&a);
    ck_assert_int_eq(laeb_map_alloc(&b, 1, 1, 16, 16), LDM_ERR_OUT_OF_MEMORY); /* 4x smaller: not handed out */
    ldm_alloc_fail_after(0);
    ck_assert_int_eq(laeb_map_alloc(&b, 1, 8, 16, 16), LDM_OK); /* larger: kept smaller ones are dropped */
    laeb_map_free(&b);
    laeb_pool_end();
    ldm_alloc_fail_after(1); /* after the pass nothing is kept */
    ck_assert_int_eq(laeb_map_alloc(&a, 1, 8, 16, 16), LDM_ERR_OUT_OF_MEMORY);
    ldm_alloc_fail_after(0);

    /* low-memory mode: no pool */
    ck_assert_int_eq(setenv("LDM_LOW_MEMORY", "1", 1), 0);
    laeb_pool_begin();
    ck_assert_int_eq(laeb_map_alloc(&a, 1, 4, 16, 16), LDM_OK);
    laeb_map_free(&a);
    ldm_alloc_fail_after(1);
    ck_assert_int_eq(laeb_map_alloc(&a, 1, 4, 16, 16), LDM_ERR_OUT_OF_MEMORY);
    ldm_alloc_fail_after(0);
    laeb_pool_end();
    unsetenv("LDM_LOW_MEMORY");
}
END_TEST

/* Large maps ask for transparent huge pages (ldm_pages_prefer_huge): advice only, so contents
 * written before or after it stay what they are, and degenerate ranges are ignored. Whether the
 * kernel grants huge pages depends on the system's setting, so that is not asserted. */
START_TEST(large_maps_prefer_huge_pages)
{
    unsetenv("LDM_LOW_MEMORY");
    ldm_pages_prefer_huge(NULL, 0);
    ldm_pages_prefer_huge(NULL, (size_t)8 << 20);
    float small[16] = {1.0f};
    ldm_pages_prefer_huge(small, sizeof small); /* no whole 2 MiB page inside: nothing */
    ck_assert(small[0] == 1.0f);
    size_t n = (size_t)6 << 20, bytes = n * sizeof(float);
    float *p = ldm_malloc_aligned(bytes);
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i += 1021) p[i] = (float)i;
    ldm_pages_prefer_huge(p + 3, bytes - 5 * sizeof(float)); /* an unaligned range of written memory */
    for (size_t i = 0; i < n; i += 1021) ck_assert(p[i] == (float)i);
    ldm_free(p);
    laeb_map m;
    for (int pooled = 0; pooled < 2; pooled++) { /* 16 MiB maps: outside a pass, then reused by the pool */
        if (pooled) laeb_pool_begin();
        for (int rep = 0; rep < 2; rep++) {
            ck_assert_int_eq(laeb_map_alloc(&m, 1, 16, 512, 512), LDM_OK);
            size_t numel = laeb_map_numel(&m);
            for (size_t i = 0; i < numel; i++) m.d[i] = (float)(i % 977);
            for (size_t i = 0; i < numel; i += 4093) ck_assert(m.d[i] == (float)(i % 977));
            laeb_map_free(&m);
        }
        if (pooled) laeb_pool_end();
    }
}
END_TEST

/* ---- pages of a mapped checkpoint */

enum { PR = 64, PC = 2048 }; /* a float16 matrix of 256 KiB: many pages */

/* A safetensors file holding "m" [PR, PC] as float16 (f32 = 0) or float32; returns its path. */
static const char *write_checkpoint(int f32)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/ldm_netweights_%d.safetensors", (int)getpid());
    int esize = f32 ? 4 : 2;
    char header[128];
    int n = snprintf(header, sizeof header, "{\"m\":{\"dtype\":\"%s\",\"shape\":[%d,%d],\"data_offsets\":[0,%d]}}",
                     f32 ? "F32" : "F16", PR, PC, esize * PR * PC);
    while (n % 8) header[n++] = ' ';
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    uint64_t len = (uint64_t)n;
    ck_assert_int_eq(fwrite(&len, 8, 1, f), 1);
    ck_assert_int_eq(fwrite(header, 1, (size_t)n, f), (size_t)n);
    for (int i = 0; i < PR * PC; i++) {
        float v = (float)(i % 97) / 32.0f - 1.5f;
        uint16_t h = lw_f32_to_f16(v);
        ck_assert_int_eq(f32 ? fwrite(&v, 4, 1, f) : fwrite(&h, 2, 1, f), 1);
    }
    ck_assert_int_eq(fclose(f), 0);
    return path;
}

/* Resident KiB of the mapping that holds p, from /proc/self/smaps (-1 when not found). */
static long resident_kib(const void *p)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[512];
    int inside = 0;
    long rss = -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            inside = (uintptr_t)p >= lo && (uintptr_t)p < hi;
            continue;
        }
        if (inside && sscanf(line, "Rss: %ld kB", &rss) == 1) break;
    }
    fclose(f);
    return rss;
}

/* _i = 0: float16 weights, 1: float32 weights (both used in place from the mapping) */
START_TEST(low_memory_mode_drops_used_weight_pages)
{
    unsetenv("LDM_WIDEN_F16");
    unsetenv("LDM_LOW_MEMORY");
    const int esize = _i ? 4 : 2;
    const char *path = write_checkpoint(_i);
    lw_store *s = NULL;
    ck_assert_int_eq(lw_open(path, 0, &s), LDM_OK);
    lnw w;
    ck_assert_int_eq(lnw_get(s, "m", 2, (int64_t[]){PR, PC}, &w), LDM_OK);
    ck_assert_ptr_null(w.own);
    ck_assert_int_eq(w.w.paged, 1); /* borrowed from the file mapping */
    const void *stored = _i ? (const void *)w.w.f32 : w.w.f16;
    ck_assert_ptr_nonnull(stored);
    ck_assert(lw_store_in_mapping(s, stored, (size_t)esize * PR * PC));
    ck_assert(!lw_store_in_mapping(s, h16, sizeof h16));

    enum { ROWS = 3 };
    static float x[ROWS * PC], y0[ROWS * PR], y1[ROWS * PR], y2[ROWS * PR];
    for (int i = 0; i < ROWS * PC; i++) x[i] = (float)((i * 7) % 13) / 13.0f - 0.5f;
    ck_assert_int_eq(lk_linear_wt(NULL, x, ROWS, PC, w.w, NULL, PR, y0), LDM_OK);
    long touched = resident_kib(stored);
    ck_assert_int_ge(touched, esize * PR * PC / 1024 - 8); /* the whole matrix was read */

    ck_assert_int_eq(setenv("LDM_LOW_MEMORY", "1", 1), 0);
    ck_assert_int_eq(lk_linear_wt(NULL, x, ROWS, PC, w.w, NULL, PR, y1), LDM_OK);
    long after = resident_kib(stored);
    ck_assert_int_ge(after, 0);
    ck_assert_int_le(after, 16); /* at most the partly covered pages at the ends and the header */
    /* the next use reads the same values back from the file */
    ck_assert_int_eq(lk_linear_wt(NULL, x, ROWS, PC, w.w, NULL, PR, y2), LDM_OK);
    ck_assert(memcmp(y0, y1, sizeof y0) == 0);
    ck_assert(memcmp(y0, y2, sizeof y0) == 0);

    /* A batch loop drops the weights once, after its last image (dropping after each image would
     * read them back for the next); a bare product leaves that to its caller. */
    static float xb[2 * PC * ROWS], yb[2 * PR * ROWS];
    for (int i = 0; i < 2 * PC * ROWS; i++) xb[i] = (float)((i * 5) % 11) / 11.0f - 0.5f;
    ck_assert_int_eq(lk_gemm_wa(NULL, w.w, PR, PC, 0, xb, ROWS, ROWS, 0.0f, yb, ROWS), LDM_OK);
    ck_assert_int_ge(resident_kib(stored), touched - 8);
    ck_assert_int_eq(lub_pointwise(NULL, w.w, NULL, xb, 2, PR, PC, ROWS, yb, 0), LDM_OK);
    ck_assert_int_le(resident_kib(stored), 16);
    unsetenv("LDM_LOW_MEMORY");

    /* the phase release drops the whole mapping, and reading works after it as well */
    ck_assert_int_eq(lk_linear_wt(NULL, x, ROWS, PC, w.w, NULL, PR, y1), LDM_OK);
    ck_assert_int_ge(resident_kib(stored), touched - 8);
    lw_store_release_pages(s);
    ck_assert_int_le(resident_kib(stored), 8); /* the file's partly covered last page may stay */
    ck_assert_int_eq(lk_linear_wt(NULL, x, ROWS, PC, w.w, NULL, PR, y2), LDM_OK);
    ck_assert(memcmp(y0, y2, sizeof y0) == 0);
    lnw_free(&w);
    lw_close(s);
    unlink(path);
}
END_TEST

START_TEST(weights_outside_a_mapping_are_never_dropped)
{
    /* test buffers (like inflated zip members) are not file pages: low-memory mode leaves them */
    ck_assert_int_eq(setenv("LDM_LOW_MEMORY", "1", 1), 0);
    lw_store *s = make_store();
    lnw w;
    ck_assert_int_eq(lnw_get(s, "m16", 2, (int64_t[]){3, 4}, &w), LDM_OK);
    ck_assert_int_eq(w.w.paged, 0);
    float x[4] = {1, 2, 3, 4}, y[3];
    ck_assert_int_eq(lk_linear_wt(NULL, x, 1, 4, w.w, NULL, 3, y), LDM_OK);
    ck_assert(y[0] == -2.0f * 1 + -1.5f * 2 + -1.0f * 3 + -0.5f * 4);
    for (int i = 0; i < 12; i++) ck_assert(lw_f16_to_f32(h16[i]) == (float)i * 0.5f - 2.0f);
    lnw_free(&w);
    lw_close(s);
    unsetenv("LDM_LOW_MEMORY");
}
END_TEST

static Suite *netweights_suite(void)
{
    Suite *s = suite_create("netweights");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, float16_matrices_are_borrowed);
    tcase_add_test(tc, errors_name_the_tensor);
    tcase_add_test(tc, autoencoder_maps_reuse_memory_in_a_pass);
    tcase_add_test(tc, large_maps_prefer_huge_pages);
    tcase_add_loop_test(tc, low_memory_mode_drops_used_weight_pages, 0, 2);
    tcase_add_test(tc, weights_outside_a_mapping_are_never_dropped);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return ck_run_suite(netweights_suite());
}
