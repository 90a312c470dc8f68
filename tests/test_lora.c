/* test_lora.c - LoRA merging (lib/api/lora.c, lora_names.c) on the lora_sd1 fixture's model.
 *
 * The numbers against kohya-ss' merge are the conformance fixtures' job (tests/fixtures/lora_*);
 * here: removal gives bit-identical outputs to never having merged (memcmp), stacking and
 * multiplier changes equal a fresh merge, the older diffusers key forms equal the PEFT ones, and
 * every kind of bad file is refused by name, leaving the model as it was. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/tensor.h"
#include "io/weights.h"
#include "ldm.h"
#include "support/ck_tmpdir.h"

/* tests/fixtures/lora_sd1/<name>, found from this file's path (the tests may run elsewhere). */
static const char *fix(const char *name)
{
    static char path[4][1024];
    static int next;
    const char *slash = strrchr(__FILE__, '/');
    int dirlen = slash ? (int)(slash - __FILE__) + 1 : 0;
    char *p = path[next++ % 4];
    snprintf(p, sizeof path[0], "%.*sfixtures/lora_sd1/%s", dirlen, __FILE__, name);
    return p;
}
#define KOHYA fix("lora_kohya.safetensors")
#define PEFT  fix("lora_peft.safetensors")

static ldm_model *load(void)
{
    ldm_model_params p;
    ldm_model_params_init(&p);
    p.config_path = fix("config.yaml");
    p.n_threads = 2;
    ldm_model *m = NULL;
    ck_assert_msg(ldm_model_load(fix("model.safetensors"), &p, &m) == LDM_OK, "%s", ldm_last_error());
    return m;
}

static ldm_tensor *filled(ldm_dtype dt, int ndim, const int64_t *shape, int salt)
{
    ldm_tensor *t = NULL;
    ck_assert_int_eq(ldm_tensor_create(dt, ndim, shape, &t), LDM_OK);
    int64_t n = ldm_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) {
        if (dt == LDM_F32)
            ((float *)ldm_tensor_data(t))[i] = (float)sin(0.37 * (double)i + salt);
        else
            ((int64_t *)ldm_tensor_data(t))[i] = (i * 7 + salt) % 1000;
    }
    return t;
}

/* The UNet output and the text encoding of fixed inputs. */
typedef struct outputs {
    ldm_tensor *unet, *text;
} outputs;

static outputs run(ldm_model *m)
{
    ldm_tensor *x = filled(LDM_F32, 4, (int64_t[]){2, 4, 8, 8}, 1), *ctx = filled(LDM_F32, 3, (int64_t[]){2, 5, 16}, 2);
    ldm_tensor *tok = filled(LDM_I64, 2, (int64_t[]){2, 77}, 3), *t = NULL;
    ck_assert_int_eq(ldm_tensor_create(LDM_I64, 1, (int64_t[]){2}, &t), LDM_OK);
    ((int64_t *)ldm_tensor_data(t))[0] = 981;
    ((int64_t *)ldm_tensor_data(t))[1] = 17;
    ldm_unet *u;
    ldm_conditioner *c;
    outputs o = {0};
    ck_assert_int_eq(ldm_model_unet(m, &u), LDM_OK);
    ck_assert_msg(ldm_unet_forward(u, x, t, ctx, NULL, &o.unet) == LDM_OK, "%s", ldm_last_error());
    ck_assert_int_eq(ldm_model_conditioner(m, &c), LDM_OK);
    ck_assert_msg(ldm_conditioner_encode_tokens(c, tok, &o.text) == LDM_OK, "%s", ldm_last_error());
    ldm_tensor_free(x);
    ldm_tensor_free(ctx);
    ldm_tensor_free(tok);
    ldm_tensor_free(t);
    return o;
}

static int same_tensor(ldm_tensor *a, ldm_tensor *b)
{
    return ldm_tensor_numel(a) == ldm_tensor_numel(b) &&
           memcmp(ldm_tensor_data(a), ldm_tensor_data(b), (size_t)ldm_tensor_numel(a) * sizeof(float)) == 0;
}

static int same(outputs a, outputs b)
{
    return same_tensor(a.unet, b.unet) && same_tensor(a.text, b.text);
}

static void release(outputs o)
{
    ldm_tensor_free(o.unet);
    ldm_tensor_free(o.text);
}

static int add(ldm_model *m, const char *path, double mul)
{
    int id = 0;
    ck_assert_msg(ldm_model_lora_add(m, path, mul, 0, &id) == LDM_OK, "%s", ldm_last_error());
    ck_assert_int_gt(id, 0);
    return id;
}

START_TEST(removal_is_bit_identical)
{
    ldm_model *m = load();
    outputs base = run(m);
    int k = add(m, KOHYA, 0.7);
    outputs merged = run(m);
    ck_assert(!same_tensor(base.unet, merged.unet) && !same_tensor(base.text, merged.text));
    int p = add(m, PEFT, -0.5);
    ck_assert_int_eq(ldm_model_lora_count(m), 2);
    ck_assert_int_eq(ldm_model_lora_remove(m, k), LDM_OK);
    ck_assert_int_eq(ldm_model_lora_remove(m, p), LDM_OK);
    ck_assert_int_eq(ldm_model_lora_count(m), 0);
    outputs back = run(m);
    ck_assert_msg(same(base, back), "outputs after removing every LoRA differ from the base model's");
    add(m, KOHYA, 0.7);
    ck_assert_int_eq(ldm_model_lora_clear(m), LDM_OK);
    outputs cleared = run(m);
    ck_assert(same(base, cleared));
    release(base), release(merged), release(back), release(cleared);
    ldm_model_free(m);
}
END_TEST

/* Merging before the networks exist and rebuilding them after gives the same weights. */
START_TEST(merge_before_first_use_equals_rebuild)
{
    ldm_model *a = load(), *b = load();
    outputs base = run(a);
    add(a, KOHYA, 0.7);
    add(b, KOHYA, 0.7);
    outputs ra = run(a), rb = run(b);
    ck_assert(same(ra, rb));
    release(base), release(ra), release(rb);
    ldm_model_free(a);
    ldm_model_free(b);
}
END_TEST

START_TEST(multiplier_change_equals_fresh_stack)
{
    ldm_model *a = load(), *b = load();
    int k = add(a, KOHYA, 0.7);
    add(a, PEFT, -0.5);
    ck_assert_int_eq(ldm_model_lora_set_multiplier(a, k, 0.25), LDM_OK);
    add(b, KOHYA, 0.25);
    add(b, PEFT, -0.5);
    outputs ra = run(a), rb = run(b);
    ck_assert(same(ra, rb));
    ldm_lora_info info = {.struct_size = sizeof info};
    ck_assert_int_eq(ldm_model_lora_get(a, 0, &info), LDM_OK);
    ck_assert_int_eq(info.id, k);
    ck_assert(info.multiplier == 0.25);
    ck_assert_str_eq(info.path, KOHYA);
    ck_assert_int_gt(info.n_unet_layers, 0);
    ck_assert_int_gt(info.n_text_layers, 0);
    ck_assert_int_eq(info.n_skipped_keys, 0);
    ck_assert_int_eq(ldm_model_lora_get(a, 2, &info), LDM_ERR_NOT_FOUND);
    ck_assert_int_eq(ldm_model_lora_remove(a, 999), LDM_ERR_NOT_FOUND);
    release(ra), release(rb);
    ldm_model_free(a);
    ldm_model_free(b);
}
END_TEST

/* ---- files written here */

/* The PEFT file's tensors under other names: `rename` maps a PEFT key to the new one. */
static const char *rewrite_peft(const char *out, void (*rename)(const char *in, char *buf, size_t cap))
{
    lw_store *s = NULL;
    ck_assert_int_eq(lw_open(PEFT, 0, &s), LDM_OK);
    size_t n = lw_count(s);
    lw_out_tensor *t = calloc(n, sizeof *t);
    char(*names)[256] = calloc(n, sizeof *names);
    for (size_t i = 0; i < n; i++) {
        const lw_tensor *w = lw_at(s, i);
        rename(w->name, names[i], sizeof names[i]);
        t[i] = (lw_out_tensor){.name = names[i], .dtype = w->dtype, .ndim = w->ndim, .data = w->data};
        memcpy(t[i].shape, w->shape, sizeof t[i].shape);
    }
    const char *path = ck_tmp_path(out);
    static char keep[512];
    snprintf(keep, sizeof keep, "%s", path);
    ck_assert_msg(lw_write_safetensors(keep, t, n, NULL, NULL, 0) == LDM_OK, "%s", ldm_last_error());
    free(t);
    free(names);
    lw_close(s);
    return keep;
}

static void replace(char *buf, size_t cap, const char *from, const char *to)
{
    char *p = strstr(buf, from);
    if (!p) return;
    char tail[256];
    snprintf(tail, sizeof tail, "%s", p + strlen(from));
    snprintf(p, cap - (size_t)(p - buf), "%s%s", to, tail);
}

/* diffusers before PEFT: attention processors (attn1.processor.to_q_lora.down.weight, to_out_lora
 * for to_out.0) in the UNet, lora_linear_layer in the text encoder. */
static void old_diffusers_name(const char *in, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s", in);
    int text = strncmp(in, "text_encoder.", 13) == 0;
    const char *down = text ? ".lora_linear_layer.down.weight" : "_lora.down.weight";
    const char *up = text ? ".lora_linear_layer.up.weight" : "_lora.up.weight";
    replace(buf, cap, ".lora_A.weight", down);
    replace(buf, cap, ".lora_B.weight", up);
    if (!text) {
        replace(buf, cap, ".to_out.0_lora", ".to_out_lora");
        for (const char *proj = "qkvo"; *proj; proj++) {
            char from[16], to[32];
            snprintf(from, sizeof from, ".to_%c", *proj);
            snprintf(to, sizeof to, ".processor.to_%c", *proj);
            if (strstr(buf, ".processor.")) break;
            replace(buf, cap, from, to);
        }
    }
}

START_TEST(older_diffusers_keys_equal_peft)
{
    const char *old = rewrite_peft("old.safetensors", old_diffusers_name);
    ldm_model *a = load(), *b = load();
    add(a, PEFT, 0.9);
    add(b, old, 0.9);
    outputs ra = run(a), rb = run(b);
    ck_assert(same(ra, rb));
    release(ra), release(rb);
    ldm_model_free(a);
    ldm_model_free(b);
}
END_TEST

/* A one-module LoRA file: down [r, in], up [out, r'], optional alpha and extra key. */
typedef struct one_lora {
    const char *module;
    int64_t down[2], up[2];
    float alpha; /* 0: none */
    float up_value;
    const char *extra; /* another key (a [1] tensor), or NULL */
} one_lora;

static const char *write_one(const char *file, const one_lora *l)
{
    static float down[64 * 64], up[64 * 64], alpha, extra = 1;
    for (size_t i = 0; i < LDM_ARRAY_LEN(down); i++) down[i] = 0.01f * (float)(i % 7), up[i] = l->up_value;
    alpha = l->alpha;
    char nd[256], nu[256], na[256];
    snprintf(nd, sizeof nd, "%s.lora_down.weight", l->module);
    snprintf(nu, sizeof nu, "%s.lora_up.weight", l->module);
    snprintf(na, sizeof na, "%s.alpha", l->module);
    lw_out_tensor t[4] = {{.name = nd, .dtype = LW_F32, .ndim = 2, .shape = {l->down[0], l->down[1]}, .data = down},
                          {.name = nu, .dtype = LW_F32, .ndim = 2, .shape = {l->up[0], l->up[1]}, .data = up}};
    size_t n = 2;
    if (l->alpha != 0) t[n++] = (lw_out_tensor){.name = na, .dtype = LW_F32, .ndim = 0, .data = &alpha};
    if (l->extra) t[n++] = (lw_out_tensor){.name = l->extra, .dtype = LW_F32, .ndim = 1, .shape = {1}, .data = &extra};
    static char keep[512];
    snprintf(keep, sizeof keep, "%s", ck_tmp_path(file));
    ck_assert_msg(lw_write_safetensors(keep, t, n, NULL, NULL, 0) == LDM_OK, "%s", ldm_last_error());
    return keep;
}

#define Q "lora_te_text_model_encoder_layers_0_self_attn_q_proj"

/* Adding `l` fails with `want`, the message holding `needle`, and the model is unchanged. */
static void refused(const one_lora *l, ldm_status want, const char *needle)
{
    ldm_model *m = load();
    outputs base = run(m);
    const char *path = write_one("bad.safetensors", l);
    int id = 7;
    ldm_status st = ldm_model_lora_add(m, path, 1.0, 0, &id);
    ck_assert_msg(st == want, "status %d (want %d): %s", st, want, ldm_last_error());
    ck_assert_msg(strstr(ldm_last_error(), needle), "message without '%s': %s", needle, ldm_last_error());
    ck_assert_int_eq(id, 0);
    ck_assert_int_eq(ldm_model_lora_count(m), 0);
    outputs after = run(m);
    ck_assert(same(base, after));
    release(base), release(after);
    ldm_model_free(m);
}

START_TEST(bad_files_are_refused_by_name)
{
    refused(&(one_lora){"lora_unet_down_blocks_9_attentions_0_proj_in", {4, 32}, {32, 4}, 0, 0.1f, NULL},
            LDM_ERR_FORMAT, "lora_unet_down_blocks_9_attentions_0_proj_in: no such layer");
    refused(&(one_lora){Q, {4, 16}, {16, 3}, 0, 0.1f, NULL}, LDM_ERR_FORMAT, "not a rank-r pair");
    refused(&(one_lora){Q, {4, 17}, {16, 4}, 0, 0.1f, NULL}, LDM_ERR_FORMAT, "do not fit");
    refused(&(one_lora){Q, {17, 16}, {16, 17}, 0, 0.1f, NULL}, LDM_ERR_FORMAT, "rank 17 exceeds");
    refused(&(one_lora){Q, {4, 16}, {16, 4}, NAN, 0.1f, NULL}, LDM_ERR_NUMERIC, Q ".alpha");
    refused(&(one_lora){Q, {4, 16}, {16, 4}, 0, INFINITY, NULL}, LDM_ERR_NUMERIC, Q ".lora_up.weight");
    refused(&(one_lora){Q, {4, 16}, {16, 4}, 1e30f, 3e38f, NULL}, LDM_ERR_NUMERIC, "non-finite");
    refused(&(one_lora){Q, {4, 16}, {16, 4}, 0, 0.1f, Q ".lora_mid.weight"}, LDM_ERR_FORMAT,
            "lora_mid.weight: unsupported");
    refused(&(one_lora){Q, {4, 16}, {16, 4}, 0, 0.1f, "some_tensor"}, LDM_ERR_FORMAT, "some_tensor: not a LoRA key");
    refused(&(one_lora){Q, {4, 16}, {16, 4}, 0, 0.1f, "lora_te_x.lora_up.weight"}, LDM_ERR_FORMAT,
            "lora_te_x: up without its down weight");
}
END_TEST

START_TEST(unmatched_keys_skipped_on_request)
{
    ldm_model *m = load();
    const char *path =
        write_one("skip.safetensors", &(one_lora){Q, {4, 16}, {16, 4}, 2, 0.1f, "lora_unet_nowhere.lora_down.weight"});
    int id = 0;
    ck_assert_int_eq(ldm_model_lora_add(m, path, 1.0, 0, &id), LDM_ERR_FORMAT);
    ck_assert_msg(ldm_model_lora_add(m, path, 1.0, LDM_LORA_ALLOW_UNMATCHED, &id) == LDM_OK, "%s", ldm_last_error());
    ldm_lora_info info = {.struct_size = sizeof info};
    ck_assert_int_eq(ldm_model_lora_get(m, 0, &info), LDM_OK);
    ck_assert_int_eq(info.n_text_layers, 1);
    ck_assert_int_eq(info.n_unet_layers, 0);
    ck_assert_int_eq(info.n_skipped_keys, 1);
    ck_assert_int_eq(ldm_model_lora_add(m, path, NAN, 0, &id), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ldm_model_lora_add(m, path, 1.0, 0x80, &id), LDM_ERR_INVALID_ARGUMENT);
    /* a checkpoint is not a LoRA file */
    ck_assert_int_eq(ldm_model_lora_add(m, fix("model.safetensors"), 1.0, 0, &id), LDM_ERR_FORMAT);
    ck_assert_int_eq(ldm_model_lora_add(m, fix("missing.safetensors"), 1.0, 0, &id), LDM_ERR_IO);
    ck_assert_int_eq(ldm_model_lora_count(m), 1);
    ldm_model_free(m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("lora");
    TCase *t = tcase_create("lora");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, removal_is_bit_identical);
    tcase_add_test(t, merge_before_first_use_equals_rebuild);
    tcase_add_test(t, multiplier_change_equals_fresh_stack);
    tcase_add_test(t, older_diffusers_keys_equal_peft);
    tcase_add_test(t, bad_files_are_refused_by_name);
    tcase_add_test(t, unmatched_keys_skipped_on_request);
    suite_add_tcase(s, t);
    return ck_run_in_tmpdir(s, "lora");
}
