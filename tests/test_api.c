/* test_api.c - the public API's contracts: versions, status strings, parameter structs from
 * older/newer headers, NULL handling, tensors, cancellation by callback and interrupt (the
 * model stays usable), built-in models. Uses only include/ldm.h. */
#include <check.h>

#include "ldm.h"
#include "support/ck_run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

START_TEST(version_macros_agree)
{
    ck_assert_str_eq(ldm_version(), LDM_VERSION_STRING);
    ck_assert_int_eq(ldm_version_number(), LDM_VERSION_NUMBER);
    ck_assert_int_eq(LDM_VERSION_NUMBER, LDM_VERSION_MAJOR * 10000 + LDM_VERSION_MINOR * 100 + LDM_VERSION_PATCH);
}
END_TEST

START_TEST(status_strings_never_null)
{
    for (int s = 0; s <= 20; s++) ck_assert_ptr_nonnull(ldm_status_string((ldm_status)s));
    ck_assert_str_eq(ldm_status_string(LDM_CANCELLED), "cancelled");
}
END_TEST

START_TEST(null_arguments_are_errors)
{
    ldm_model *m = (ldm_model *)0x1;
    ck_assert_int_eq(ldm_model_load(NULL, NULL, &m), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "ldm_model_load"));
    ck_assert_int_eq(ldm_model_load("x", NULL, NULL), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ldm_model_unet(NULL, NULL), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ldm_generate(NULL, NULL, NULL), LDM_ERR_INVALID_ARGUMENT);
    ldm_model_free(NULL);
    ldm_tensor_free(NULL);
    ldm_model_interrupt(NULL);
}
END_TEST

START_TEST(missing_file_names_the_path)
{
    ldm_model *m = NULL;
    ck_assert_int_eq(ldm_model_load("/nonexistent/dir/model.ckpt", NULL, &m), LDM_ERR_IO);
    ck_assert_ptr_null(m);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "/nonexistent/dir/model.ckpt"));
}
END_TEST

/* A struct from an older header (smaller struct_size) is accepted and the missing fields take
 * their defaults; a struct_size that cannot be a real one is refused. */
START_TEST(params_struct_size)
{
    ldm_model_params p;
    ldm_model *m = NULL;
    ldm_model_params_init(&p);
    ck_assert_uint_eq(p.struct_size, sizeof p);
    p.struct_size = offsetof(ldm_model_params, weights); /* an "old" caller without later fields */
    p.n_threads = 1;
    ck_assert_int_eq(ldm_model_load_builtin("demo", 0, &p, &m), LDM_OK);
    ldm_model_free(m);
    p.struct_size = 3;
    ck_assert_int_eq(ldm_model_load_builtin("demo", 0, &p, &m), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "struct_size"));
    ldm_generate_params g;
    ldm_generate_params_init(&g);
    ck_assert_uint_eq(g.struct_size, sizeof g);
}
END_TEST

/* An old caller's smaller struct is filled only up to its own size. */
START_TEST(params_init_respects_caller_size)
{
    size_t small = offsetof(ldm_model_params, weights);
    unsigned char buf[1024];
    memset(buf, 0xAB, sizeof buf);
    ldm_model_params_init_size((ldm_model_params *)(void *)buf, small);
    for (size_t i = small; i < sizeof buf; i++) ck_assert_uint_eq(buf[i], 0xAB);
    ldm_model_params p;
    memcpy(&p, buf, small);
    ck_assert_uint_eq(p.struct_size, small);
    ldm_model *m = NULL;
    ck_assert_int_eq(ldm_model_load_builtin("demo", 0, &p, &m), LDM_OK);
    ldm_model_free(m);
    /* A newer caller's larger struct: the bytes past what this library knows are zeroed. */
    memset(buf, 0xAB, sizeof buf);
    ldm_generate_params_init_size((ldm_generate_params *)(void *)buf, sizeof(ldm_generate_params) + 8);
    for (size_t i = sizeof(ldm_generate_params); i < sizeof(ldm_generate_params) + 8; i++) ck_assert_uint_eq(buf[i], 0);
}
END_TEST

START_TEST(tensors_create_wrap)
{
    int64_t shape[3] = {2, 3, 4};
    ldm_tensor *t = NULL, *v = NULL;
    float buf[24] = {0};
    ck_assert_int_eq(ldm_tensor_create(LDM_F32, 3, shape, &t), LDM_OK);
    ck_assert_int_eq(ldm_tensor_numel(t), 24);
    ck_assert_int_eq(ldm_tensor_dim(t, 2), 4);
    ck_assert_int_eq(ldm_tensor_dim(t, 3), 0);
    ck_assert_int_eq(((float *)ldm_tensor_data(t))[23], 0.0f);
    ck_assert_int_eq(ldm_tensor_wrap(LDM_F32, 3, shape, buf, &v), LDM_OK);
    ck_assert_ptr_eq(ldm_tensor_data(v), buf);
    ldm_tensor_free(v); /* must not free buf */
    ldm_tensor_free(t);
    int64_t bad[2] = {-1, 4};
    ck_assert_int_eq(ldm_tensor_create(LDM_F32, 2, bad, &t), LDM_ERR_INVALID_ARGUMENT);
    int64_t huge[2] = {INT64_MAX / 2, 4};
    ck_assert_int_eq(ldm_tensor_create(LDM_F32, 2, huge, &t), LDM_ERR_LIMIT);
    ck_assert_int_eq(ldm_tensor_create(LDM_F32, 7, shape, &t), LDM_ERR_INVALID_ARGUMENT);
}
END_TEST

static ldm_tensor *unet_input(ldm_tensor **t)
{
    int64_t xs[4] = {1, 3, 16, 16}, ts[1] = {1};
    ldm_tensor *x = NULL;
    ck_assert_int_eq(ldm_tensor_create(LDM_F32, 4, xs, &x), LDM_OK);
    ck_assert_int_eq(ldm_randn(3, 0, x), LDM_OK);
    ck_assert_int_eq(ldm_tensor_create(LDM_I64, 1, ts, t), LDM_OK);
    ((int64_t *)ldm_tensor_data(*t))[0] = 500;
    return x;
}

static int abort_after(void *user)
{
    int *calls = user;
    return ++*calls > 3;
}

/* The abort callback stops a component call mid-way; without it the same call succeeds and
 * gives the same result as before the cancelled one. */
START_TEST(abort_callback_cancels_and_model_stays_usable)
{
    ldm_model *m = NULL;
    ldm_unet *unet = NULL;
    ldm_conditioner *cond = NULL;
    ldm_tensor *t = NULL, *x = unet_input(&t), *ctx = NULL, *labels = NULL, *a = NULL, *b = NULL, *c = NULL;
    int64_t ls[1] = {1};
    ck_assert_int_eq(ldm_model_load_builtin("demo", 5, NULL, &m), LDM_OK);
    ck_assert_int_eq(ldm_model_unet(m, &unet), LDM_OK);
    ck_assert_int_eq(ldm_model_conditioner(m, &cond), LDM_OK);
    ck_assert_int_eq(ldm_tensor_create(LDM_I64, 1, ls, &labels), LDM_OK);
    ck_assert_int_eq(ldm_conditioner_encode_labels(cond, labels, &ctx), LDM_OK);
    ck_assert_int_eq(ldm_unet_forward(unet, x, t, ctx, NULL, &a), LDM_OK);
    int calls = 0;
    ck_assert_int_eq(ldm_model_set_abort_callback(m, abort_after, &calls), LDM_OK);
    ck_assert_int_eq(ldm_unet_forward(unet, x, t, ctx, NULL, &b), LDM_CANCELLED);
    ck_assert_ptr_null(b);
    ck_assert_int_gt(calls, 3);
    ck_assert_int_eq(ldm_model_set_abort_callback(m, NULL, NULL), LDM_OK);
    ck_assert_int_eq(ldm_unet_forward(unet, x, t, ctx, NULL, &c), LDM_OK);
    ck_assert_mem_eq(ldm_tensor_data(a), ldm_tensor_data(c), (size_t)ldm_tensor_numel(a) * 4);
    ldm_tensor_free(a);
    ldm_tensor_free(c);
    ldm_tensor_free(x);
    ldm_tensor_free(t);
    ldm_tensor_free(ctx);
    ldm_tensor_free(labels);
    ldm_model_free(m);
}
END_TEST

static int stop_at_step(int step, int total, void *user)
{
    (void)total;
    return step >= *(int *)user;
}

START_TEST(progress_callback_cancels_generation)
{
    ldm_model *m = NULL;
    ldm_tensor *img = NULL;
    ldm_generate_params p;
    int stop = 2;
    ck_assert_int_eq(ldm_model_load_builtin("demo", 0, NULL, &m), LDM_OK);
    ldm_generate_params_init(&p);
    p.class_label = 3;
    p.steps = 5;
    p.progress = stop_at_step;
    p.progress_user_data = &stop;
    ck_assert_int_eq(ldm_generate(m, &p, &img), LDM_CANCELLED);
    ck_assert_ptr_null(img);
    p.progress = NULL;
    ck_assert_int_eq(ldm_generate(m, &p, &img), LDM_OK);
    ck_assert_int_eq(ldm_tensor_dim(img, 1), 3);
    ck_assert_int_eq(ldm_tensor_dim(img, 2), 64);
    ldm_tensor_free(img);
    ldm_model_free(m);
}
END_TEST

START_TEST(builtin_models)
{
    ldm_model *m = NULL;
    ck_assert_int_eq(ldm_model_load_builtin("no-such-arch", 0, NULL, &m), LDM_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "no-such-arch"));
    ck_assert_int_eq(ldm_model_load_builtin("demo", 0, NULL, &m), LDM_OK);
    ck_assert_ptr_nonnull(strstr(ldm_model_describe(m), "ClassEmbedder"));
    ldm_model_free(m);
}
END_TEST

/* ---------------------------------------------------------------- issue #12: D8, D9, resolve */

START_TEST(negative_size_is_an_error)
{
    ldm_model *m = NULL;
    ldm_tensor *img = NULL;
    ldm_generate_params p, r;
    ck_assert_int_eq(ldm_model_load_builtin("demo", 0, NULL, &m), LDM_OK);
    ldm_generate_params_init(&p);
    p.class_label = 3;
    p.steps = 2;
    for (int k = 0; k < 2; k++) {
        p.width = k ? 64 : -64;
        p.height = k ? -8 : 0;
        ck_assert_int_eq(ldm_generate(m, &p, &img), LDM_ERR_INVALID_ARGUMENT);
        ck_assert_ptr_null(img);
        ck_assert_ptr_nonnull(strstr(ldm_last_error(), "negative"));
        ck_assert_int_eq(ldm_generate_params_resolve(m, &p, &r), LDM_ERR_INVALID_ARGUMENT);
    }
    /* 0 is the default: the training size */
    p.width = p.height = 0;
    ck_assert_int_eq(ldm_generate_params_resolve(m, &p, &r), LDM_OK);
    ck_assert_int_eq(r.width, 64);
    ck_assert_int_eq(r.height, 64);
    ck_assert(r.guidance_scale == 3.0f); /* demo: class model with the extra class 1000 */
    ck_assert_int_eq(r.uncond_class, 1000);
    ldm_model_free(m);
}
END_TEST

/* A tensor of `bytes` (F32): LDM_OK or the cap's LDM_ERR_LIMIT. */
static ldm_status make_tensor(size_t bytes)
{
    int64_t n = (int64_t)(bytes / 4);
    ldm_tensor *t = NULL;
    ldm_status st = ldm_tensor_create(LDM_F32, 1, &n, &t);
    ldm_tensor_free(t);
    return st;
}

static const char *png_path(void)
{
    static char path[64];
    const char *tmp = getenv("TMPDIR");
    snprintf(path, sizeof path, "%.40s/ldm-api-%d.png", tmp && *tmp ? tmp : "/tmp", (int)getpid());
    return path;
}

/* A 256x256 PNG: reading it allocates 768 KiB of floats. */
static ldm_status read_png(void)
{
    ldm_tensor *img = NULL;
    ldm_status st = ldm_image_read_png(png_path(), &img);
    ldm_tensor_free(img);
    return st;
}

START_TEST(model_cap_does_not_outlive_the_call)
{
    int64_t shape[4] = {1, 3, 256, 256};
    ldm_tensor *pic = NULL;
    ck_assert_int_eq(ldm_tensor_create(LDM_F32, 4, shape, &pic), LDM_OK);
    ck_assert_int_eq(ldm_image_write_png(png_path(), pic, NULL, NULL, 0), LDM_OK);
    ldm_tensor_free(pic);
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    mp.max_alloc_bytes = (size_t)64 << 20;
    ldm_model *m = NULL;
    ldm_autoencoder *ae = NULL;
    ck_assert_int_eq(ldm_model_load_builtin("demo", 0, &mp, &m), LDM_OK);
    ck_assert_int_eq(make_tensor((size_t)128 << 20), LDM_OK); /* the load's cap is gone */
    /* a call that succeeds, and one that fails under the model's cap: neither leaves it set */
    ck_assert_int_eq(ldm_model_autoencoder(m, &ae), LDM_OK);
    ck_assert_int_eq(make_tensor((size_t)128 << 20), LDM_OK);
    ldm_tensor *big = NULL, *out = NULL;
    int64_t huge[4] = {1, 3, 2048, 4096}; /* 96 MiB input: its encoding needs more than 64 MiB */
    ck_assert_int_eq(ldm_tensor_create(LDM_F32, 4, huge, &big), LDM_OK);
    ck_assert_int_eq(ldm_autoencoder_encode(ae, big, &out), LDM_ERR_LIMIT);
    ldm_tensor_free(big);
    ck_assert_int_eq(make_tensor((size_t)128 << 20), LDM_OK);
    ck_assert_int_eq(ldm_set_thread_max_alloc(0), 0); /* nothing was left on the thread */
    /* the thread's own cap: calls without a model honour it, the previous value comes back */
    ck_assert_int_eq(read_png(), LDM_OK);
    ck_assert_uint_eq(ldm_set_thread_max_alloc(1 << 19), 0);
    ck_assert_int_eq(make_tensor(1 << 20), LDM_ERR_LIMIT);
    ck_assert_int_eq(read_png(), LDM_ERR_LIMIT);
    /* a model call under it: the smaller of the two caps (the model's 64 MiB is larger) */
    ldm_generate_params p;
    ldm_generate_params_init(&p);
    p.class_label = 3;
    p.steps = 2;
    ck_assert_int_eq(ldm_model_autoencoder(m, &ae), LDM_OK);
    ldm_tensor *img = NULL;
    ck_assert_int_eq(ldm_generate(m, &p, &img), LDM_ERR_LIMIT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "limit"));
    ck_assert_int_eq(make_tensor(1 << 20), LDM_ERR_LIMIT); /* still the thread's cap after it */
    ck_assert_uint_eq(ldm_set_thread_max_alloc(0), 1 << 19);
    ck_assert_int_eq(read_png(), LDM_OK);
    ck_assert_int_eq(ldm_generate(m, &p, &img), LDM_OK);
    ldm_tensor_free(img);
    ldm_model_free(m);
    /* a model without a cap of its own loads under the thread's cap */
    ldm_set_thread_max_alloc(1 << 10);
    ck_assert_int_eq(ldm_model_load_builtin("demo", 0, NULL, &m), LDM_ERR_LIMIT);
    ck_assert_ptr_null(m);
    ck_assert_uint_eq(ldm_set_thread_max_alloc(0), 1 << 10);
    unlink(png_path());
}
END_TEST

int main(void)
{
    Suite *s = suite_create("api");
    TCase *tc = tcase_create("contracts");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, version_macros_agree);
    tcase_add_test(tc, status_strings_never_null);
    tcase_add_test(tc, null_arguments_are_errors);
    tcase_add_test(tc, missing_file_names_the_path);
    tcase_add_test(tc, params_struct_size);
    tcase_add_test(tc, params_init_respects_caller_size);
    tcase_add_test(tc, tensors_create_wrap);
    tcase_add_test(tc, abort_callback_cancels_and_model_stays_usable);
    tcase_add_test(tc, progress_callback_cancels_generation);
    tcase_add_test(tc, builtin_models);
    tcase_add_test(tc, negative_size_is_an_error);
    tcase_add_test(tc, model_cap_does_not_outlive_the_call);
    suite_add_tcase(s, tc);
    return ck_run_suite(s);
}
