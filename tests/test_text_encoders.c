/* test_text_encoders.c - CLIP / OpenCLIP text towers and the BERTEmbedder against the fixtures
 * (cond_clip_sd1, cond_openclip_sd2, cond_bert, cond_layout, and the c/uc conditioning of
 * ldm_sd1_txt2img / ldm_sd2v_ddim, whose prompts are tokenised by the tok_* fixtures), plus thread
 * independence, bad inputs, wrong checkpoints, cancellation and allocation failures. */
#include <check.h>

#include "core/ctx.h"
#include "core/tensor.h"
#include "io/weights.h"
#include "models/bert.h"
#include "models/clip_text.h"
#include "models/config.h"
#include "support/ck_fixture.h"
#include "support/ck_run.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- fixture access */

/* The cond-stage description of a fixture: from its config.yaml through ld_config_load, checked
 * against what the fixture's config says (so a config-reader regression shows up here too). */
static ld_cond fixture_cond(const char *dir, const ld_cond *want)
{
    char path[4096];
    ld_model m;
    snprintf(path, sizeof path, "%s/config.yaml", dir);
    ldm_status st = ld_config_load(path, &m);
    ck_assert_msg(st == LDM_OK, "ld_config_load %s: %s", path, ldm_last_error());
    ck_assert_int_eq(m.cond.kind, want->kind);
    if (want->kind == LD_COND_BERT) {
        ck_assert_int_eq(m.cond.n_embed, want->n_embed);
        ck_assert_int_eq(m.cond.n_layer, want->n_layer);
        ck_assert_int_eq(m.cond.vocab_size, want->vocab_size);
        ck_assert_int_eq(m.cond.max_seq_len, want->max_seq_len);
    } else {
        ck_assert_int_eq(m.cond.width, want->width);
        ck_assert_int_eq(m.cond.layers, want->layers);
        ck_assert_int_eq(m.cond.heads, want->heads);
        ck_assert_int_eq(m.cond.layer_skip, want->layer_skip);
    }
    return m.cond;
}

static ld_cond clip_desc(ld_cond_kind kind, int width, int layers, int heads, int layer_skip)
{
    ld_cond d;
    memset(&d, 0, sizeof d);
    d.kind = kind;
    d.width = width;
    d.layers = layers;
    d.heads = heads;
    d.vocab = 49408;
    d.ctx = 77;
    d.layer_skip = layer_skip;
    return d;
}

static ld_cond bert_desc(int n_embed, int n_layer, int vocab, int max_seq_len)
{
    ld_cond d;
    memset(&d, 0, sizeof d);
    d.kind = LD_COND_BERT;
    d.n_embed = n_embed;
    d.n_layer = n_layer;
    d.vocab_size = vocab;
    d.max_seq_len = max_seq_len;
    d.bert_heads = 8;
    d.bert_dim_head = 64;
    return d;
}

/* A text encoder of either family behind one interface, so every check runs on all of them. */
typedef struct encoder {
    lclip *clip;
    lbert *bert;
} encoder;

static ldm_status encoder_create(const ld_cond *d, const lw_store *s, encoder *e)
{
    memset(e, 0, sizeof *e);
    if (d->kind == LD_COND_BERT) return lbert_create(d, s, "cond_stage_model.", &e->bert);
    return lclip_create(d, s, "cond_stage_model.", &e->clip);
}

static ldm_status encoder_run(encoder *e, const lctx *c, const ldm_tensor *tokens, ldm_tensor **out)
{
    return e->bert ? lbert_encode(e->bert, c, tokens, out) : lclip_encode(e->clip, c, tokens, out);
}

static void encoder_free(encoder *e)
{
    lbert_free(e->bert);
    lclip_free(e->clip);
    memset(e, 0, sizeof *e);
}

static int encoder_vocab(const encoder *e)
{
    return e->bert ? lbert_vocab(e->bert) : lclip_vocab(e->clip);
}
static int encoder_ctx(const encoder *e)
{
    return e->bert ? lbert_max_seq_len(e->bert) : lclip_ctx(e->clip);
}

static void expect_match(const char *fixture, const char *what, const ldm_tensor *got, const ldm_tensor *ref,
                         fx_tolerance tol)
{
    fx_compare_result r;
    int ok = fx_compare(got, ref, tol, &r);
    printf("%s %s: max abs err %.3g (atol %.3g rtol %.3g)\n", fixture, what, r.max_abs, tol.atol, tol.rtol);
    ck_assert_msg(ok, "%s %s: %s", fixture, what, r.note);
}

/* Runs the encoder on `tokens` with 1 and 2 threads; checks both against `ref` and each other. */
static void check_encoding(const char *fixture, const char *what, encoder *e, const ldm_tensor *tokens,
                           const ldm_tensor *ref, fx_tolerance tol)
{
    lpool *pools[2] = {lpool_create(1), lpool_create(2)};
    ldm_tensor *outs[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        ck_assert_msg(pools[i] != NULL, "lpool_create: %s", ldm_last_error());
        lctx c = {.pool = pools[i], .cancel = NULL};
        ldm_status st = encoder_run(e, &c, tokens, &outs[i]);
        ck_assert_msg(st == LDM_OK, "%s %s (%d threads): %s", fixture, what, i + 1, ldm_last_error());
        expect_match(fixture, what, outs[i], ref, tol);
    }
    /* Each element is reduced in a fixed order whatever the split: only rounding may differ. */
    fx_tolerance same = {1e-6, 1e-6, 0};
    fx_compare_result r;
    int ok = fx_compare(outs[1], outs[0], same, &r);
    printf("%s %s: 1 vs 2 threads max abs diff %.3g\n", fixture, what, r.max_abs);
    ck_assert_msg(ok, "%s %s: 1 vs 2 threads differ: %s", fixture, what, r.note);
    for (int i = 0; i < 2; i++) {
        ldm_tensor_free(outs[i]);
        lpool_free(pools[i]);
    }
}

/* A cond fixture: one call (tokens -> c) on the io tensors. */
static void run_cond_fixture(const char *name, const ld_cond *want)
{
    char dir[4096];
    if (!fixture_dir(name, dir, sizeof dir)) return;
    lj_value *cas = NULL;
    ck_assert_msg(fx_load_case(dir, &cas) == LDM_OK, "%s", ldm_last_error());
    ld_cond d = fixture_cond(dir, want);
    lw_store *w = open_file(dir, "model.safetensors");
    lw_store *io = open_file(dir, "io.safetensors");
    encoder e;
    ldm_status st = encoder_create(&d, w, &e);
    ck_assert_msg(st == LDM_OK, "%s: create: %s", name, ldm_last_error());
    ldm_tensor *tokens = io_tensor(io, "tokens");
    ldm_tensor *ref = io_tensor(io, "c");
    check_encoding(name, "c", &e, tokens, ref, fx_tolerance_for(cas, "c"));
    ldm_tensor_free(tokens);
    ldm_tensor_free(ref);
    encoder_free(&e);
    lw_close(w); /* only now: the encoder borrows the store's float16 matrices */
    lw_close(io);
    lj_free(cas);
}

START_TEST(test_cond_clip_sd1)
{
    ld_cond want = clip_desc(LD_COND_CLIP, 32, 2, 2, 0);
    run_cond_fixture("cond_clip_sd1", &want);
}
END_TEST

START_TEST(test_cond_openclip_sd2)
{
    ld_cond want = clip_desc(LD_COND_OPENCLIP, 32, 3, 4, 1);
    run_cond_fixture("cond_openclip_sd2", &want);
}
END_TEST

START_TEST(test_cond_bert)
{
    ld_cond want = bert_desc(32, 2, 1000, 77);
    run_cond_fixture("cond_bert", &want);
}
END_TEST

/* cond_layout: the cond.bert call consumes the `tokens` output of cond.layout_tokens, which the
 * io file holds, so the BERT part is checked directly from those ids. */
START_TEST(test_cond_layout_bert)
{
    ld_cond want = bert_desc(16, 2, 8192, 92);
    run_cond_fixture("cond_layout", &want);
}
END_TEST

/* ---- the text conditioning of the txt2img sampler fixtures
 * Their io has c/uc but no token ids. The prompts (cond and uncond "") are prompts 0 and 2 of the
 * tokenizer fixtures, whose io holds the expected ids: take those rows (after checking that the
 * prompts really are the same). */

static const char *call_prompt(const lj_value *cas, const char *which)
{
    const lj_value *calls = lj_get(cas, "calls");
    ck_assert(calls && calls->type == LJ_ARRAY && calls->count > 0);
    const lj_value *p = lj_get(lj_get(lj_get(calls->items[0], "params"), which), "prompts");
    ck_assert_msg(p && p->type == LJ_ARRAY && p->count == 1, "params.%s.prompts: expected one prompt", which);
    return lj_string(p->items[0], NULL);
}

/* The row of the tokenizer fixture `tok` whose prompt equals `prompt`, as ids [1,77]. */
static ldm_tensor *tokens_of_prompt(const char *tok, const char *prompt)
{
    char dir[4096];
    if (!fixture_dir(tok, dir, sizeof dir)) return NULL;
    lj_value *cas = NULL;
    ck_assert_msg(fx_load_case(dir, &cas) == LDM_OK, "%s", ldm_last_error());
    const lj_value *prompts = lj_get(lj_get(lj_get(cas, "calls")->items[0], "params"), "prompts");
    ck_assert(prompts && prompts->type == LJ_ARRAY);
    size_t row = prompts->count;
    for (size_t i = 0; i < prompts->count && row == prompts->count; i++)
        if (strcmp(lj_string(prompts->items[i], ""), prompt) == 0) row = i;
    ck_assert_msg(row < prompts->count, "prompt \"%s\" not among the %s prompts", prompt, tok);
    lw_store *io = open_file(dir, "io.safetensors");
    ldm_tensor *all = io_tensor(io, "tokens");
    int64_t shape[2] = {1, all->shape[1]};
    ldm_tensor *one = lt_new_i64(2, shape);
    ck_assert(one != NULL);
    memcpy(lt_i64(one), lt_i64(all) + row * (size_t)all->shape[1], (size_t)all->shape[1] * sizeof(int64_t));
    ldm_tensor_free(all);
    lw_close(io);
    lj_free(cas);
    return one;
}

static void run_sampler_text(const char *name, const char *tok, const ld_cond *want)
{
    char dir[4096];
    if (!fixture_dir(name, dir, sizeof dir)) return;
    lj_value *cas = NULL;
    ck_assert_msg(fx_load_case(dir, &cas) == LDM_OK, "%s", ldm_last_error());
    static const char *const which[2] = {"cond", "uncond"};
    static const char *const output[2] = {"c", "uc"};
    ldm_tensor *tokens[2];
    for (int i = 0; i < 2; i++) {
        tokens[i] = tokens_of_prompt(tok, call_prompt(cas, which[i]));
        if (!tokens[i]) {
            if (i) ldm_tensor_free(tokens[0]);
            lj_free(cas);
            return;
        }
    }
    ld_cond d = fixture_cond(dir, want);
    lw_store *w = open_file(dir, "model.safetensors");
    lw_store *io = open_file(dir, "io.safetensors");
    encoder e;
    ck_assert_msg(encoder_create(&d, w, &e) == LDM_OK, "%s: create: %s", name, ldm_last_error());
    for (int i = 0; i < 2; i++) {
        ldm_tensor *ref = io_tensor(io, output[i]);
        check_encoding(name, output[i], &e, tokens[i], ref, fx_tolerance_for(cas, output[i]));
        ldm_tensor_free(ref);
        ldm_tensor_free(tokens[i]);
    }
    encoder_free(&e);
    lw_close(w); /* only now: the encoder borrows the store's float16 matrices */
    lw_close(io);
    lj_free(cas);
}

START_TEST(test_sd1_txt2img_text)
{
    ld_cond want = clip_desc(LD_COND_CLIP, 16, 2, 2, 0);
    run_sampler_text("ldm_sd1_txt2img", "tok_clip_sd1", &want);
}
END_TEST

START_TEST(test_sd2v_ddim_text)
{
    ld_cond want = clip_desc(LD_COND_OPENCLIP, 16, 2, 2, 1);
    run_sampler_text("ldm_sd2v_ddim", "tok_openclip_sd2", &want);
}
END_TEST

/* ---- bad inputs */

typedef struct small_fixture {
    const char *name;
    ld_cond d;
} small_fixture;

static small_fixture small_fixtures(int i)
{
    small_fixture f[3] = {{"cond_clip_sd1", clip_desc(LD_COND_CLIP, 32, 2, 2, 0)},
                          {"cond_openclip_sd2", clip_desc(LD_COND_OPENCLIP, 32, 3, 4, 1)},
                          {"cond_bert", bert_desc(32, 2, 1000, 77)}};
    return f[i];
}

/* Small fixture i and its weights; NULL (after a SKIPPED line) when the fixtures are absent. */
static lw_store *open_small(int i, small_fixture *f)
{
    char dir[4096];
    *f = small_fixtures(i);
    if (!fixture_dir(f->name, dir, sizeof dir)) return NULL;
    return open_file(dir, "model.safetensors");
}

/* open_small, then the encoder its description builds (which must succeed). */
static lw_store *open_small_encoder(int i, small_fixture *f, encoder *e)
{
    lw_store *w = open_small(i, f);
    if (w) ck_assert_msg(encoder_create(&f->d, w, e) == LDM_OK, "%s: %s", f->name, ldm_last_error());
    return w;
}

static void expect_fail(ldm_status st, ldm_status want, const char *needle, const char *what)
{
    ck_assert_msg(st == want, "%s: expected status %d, got %d (%s)", what, (int)want, (int)st, ldm_last_error());
    ck_assert_msg(strstr(ldm_last_error(), needle) != NULL, "%s: message \"%s\" should mention \"%s\"", what,
                  ldm_last_error(), needle);
    printf("%s -> %s\n", what, ldm_last_error());
}

/* `tok` is refused as an argument, with a message naming `needle`, and nothing is returned. */
static void expect_bad_tokens(encoder *e, const ldm_tensor *tok, const char *needle, const char *name)
{
    lctx c = {.pool = NULL, .cancel = NULL};
    ldm_tensor *out = NULL;
    expect_fail(encoder_run(e, &c, tok, &out), LDM_ERR_INVALID_ARGUMENT, needle, name);
    ck_assert_ptr_null(out);
}

/* Zero ids of the given shape are refused (see expect_bad_tokens). */
static void expect_bad_shape(encoder *e, int ndim, int64_t d0, int64_t d1, const char *needle, const char *name)
{
    int64_t shape[2] = {d0, d1};
    ldm_tensor *tok = lt_new_i64(ndim, shape);
    ck_assert(tok != NULL);
    expect_bad_tokens(e, tok, needle, name);
    ldm_tensor_free(tok);
}

START_TEST(test_bad_tokens)
{
    small_fixture f;
    encoder e;
    lw_store *w = open_small_encoder(_i, &f, &e);
    if (!w) return;
    int V = encoder_vocab(&e), T = encoder_ctx(&e);
    int64_t shape[2] = {2, 5};
    ldm_tensor *tok = lt_new_i64(2, shape);
    ck_assert(tok != NULL);
    lt_i64(tok)[7] = V;
    expect_bad_tokens(&e, tok, "outside", f.name);
    lt_i64(tok)[7] = -1;
    expect_bad_tokens(&e, tok, "[1,2]", f.name);
    lt_i64(tok)[7] = V - 1;
    lctx c = {.pool = NULL, .cancel = NULL};
    ldm_tensor *out = NULL;
    ck_assert_msg(encoder_run(&e, &c, tok, &out) == LDM_OK, "%s: %s", f.name, ldm_last_error());
    ck_assert_int_eq(out->ndim, 3);
    ck_assert_int_eq(out->shape[0], 2);
    ck_assert_int_eq(out->shape[1], 5);
    ldm_tensor_free(out);
    ldm_tensor_free(tok);

    expect_bad_shape(&e, 2, 1, T + 1, "T <=", f.name);
    expect_bad_shape(&e, 2, 1, 0, "[1,0]", f.name);
    expect_bad_shape(&e, 1, 5, 0, "dimensions", f.name);
    ldm_tensor *f32 = lt_new_f32(2, shape);
    expect_bad_tokens(&e, f32, "dtype", f.name);
    ldm_tensor_free(f32);
    expect_bad_tokens(&e, NULL, "NULL", f.name);
    encoder_free(&e);
    lw_close(w);
}
END_TEST

/* A copy of `s` without the tensor `drop` (tensor data still points into `s`). */
static lw_store *store_without(const lw_store *s, const char *drop)
{
    lw_store *c = lw_store_new("without.safetensors");
    ck_assert(c != NULL);
    for (size_t i = 0; i < lw_count(s); i++) {
        const lw_tensor *t = lw_at(s, i);
        if (strcmp(t->name, drop) == 0) continue;
        ck_assert(lw_store_add(c, t->name, t->dtype, t->ndim, t->shape, t->data, t->nbytes) == LDM_OK);
    }
    lw_store_finish(c);
    return c;
}

static void expect_create_fail(const ld_cond *d, const lw_store *s, ldm_status want, const char *needle,
                               const char *what)
{
    encoder e;
    ldm_status st = encoder_create(d, s, &e);
    ck_assert_ptr_null(e.clip);
    ck_assert_ptr_null(e.bert);
    expect_fail(st, want, needle, what);
}

static const char *const missing_tensor[3] = {
    "cond_stage_model.transformer.text_model.encoder.layers.1.self_attn.k_proj.bias",
    "cond_stage_model.model.transformer.resblocks.1.mlp.c_fc.weight",
    "cond_stage_model.transformer.attn_layers.layers.3.1.net.2.bias",
};

START_TEST(test_missing_tensor)
{
    small_fixture f;
    lw_store *w = open_small(_i, &f);
    if (!w) return;
    lw_store *cut = store_without(w, missing_tensor[_i]);
    expect_create_fail(&f.d, cut, LDM_ERR_NOT_FOUND, missing_tensor[_i], f.name);
    lw_close(cut);
    /* A checkpoint without any text encoder at that prefix. */
    encoder e;
    memset(&e, 0, sizeof e);
    ldm_status st = f.d.kind == LD_COND_BERT ? lbert_create(&f.d, w, "first_stage_model.", &e.bert)
                                             : lclip_create(&f.d, w, "first_stage_model.", &e.clip);
    expect_fail(st, LDM_ERR_NOT_FOUND, "first_stage_model.", f.name);
    lw_close(w);
}
END_TEST

/* One wrong value in the description: ld_cond field (an int) at `offset` set to `value`. */
typedef struct desc_change {
    size_t offset;
    int value;
    ldm_status want;
    const char *needle;
} desc_change;

static const desc_change bert_changes[] = {
    {offsetof(ld_cond, n_embed), 64, LDM_ERR_FORMAT, "n_embed 64"},
    {offsetof(ld_cond, n_layer), 3, LDM_ERR_FORMAT, "n_layer 3"},
    {offsetof(ld_cond, vocab_size), 30522, LDM_ERR_FORMAT, "vocab_size 30522"},
    {offsetof(ld_cond, max_seq_len), 92, LDM_ERR_FORMAT, "max_seq_len 92"},
    {offsetof(ld_cond, bert_heads), 4, LDM_ERR_FORMAT, "inner dimension 512"},
};

static const desc_change clip_changes[] = {
    {offsetof(ld_cond, width), 768, LDM_ERR_FORMAT, "width 768"},
    {offsetof(ld_cond, layers), 12, LDM_ERR_FORMAT, "layers 12"},
    {offsetof(ld_cond, vocab), 1000, LDM_ERR_FORMAT, "vocab 1000"},
    {offsetof(ld_cond, ctx), 64, LDM_ERR_FORMAT, "ctx 64"},
    {offsetof(ld_cond, heads), 0, LDM_ERR_INVALID_ARGUMENT, "heads"},
    {offsetof(ld_cond, heads), 3, LDM_ERR_INVALID_ARGUMENT, "divisible"},
};

static void expect_changes_fail(const small_fixture *f, const lw_store *w, const desc_change *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        ld_cond d = f->d;
        *(int *)((char *)&d + c[i].offset) = c[i].value;
        expect_create_fail(&d, w, c[i].want, c[i].needle, f->name);
    }
}

/* The description disagrees with the checkpoint: each wrong value is reported by name. */
START_TEST(test_desc_mismatch)
{
    small_fixture f;
    lw_store *w = open_small(_i, &f);
    if (!w) return;
    ld_cond d = f.d;
    if (d.kind == LD_COND_BERT) {
        expect_changes_fail(&f, w, bert_changes, LDM_ARRAY_LEN(bert_changes));
        d.kind = LD_COND_CLIP, d.heads = 2;
        expect_create_fail(&d, w, LDM_ERR_NOT_FOUND, "not found", f.name);
    } else {
        expect_changes_fail(&f, w, clip_changes, LDM_ARRAY_LEN(clip_changes));
        d.layer_skip = d.layers + 1;
        expect_create_fail(&d, w, LDM_ERR_INVALID_ARGUMENT, "layer_skip", f.name);
        /* The other key layout: SD1 weights read as OpenCLIP and vice versa. */
        d = f.d, d.kind = d.kind == LD_COND_CLIP ? LD_COND_OPENCLIP : LD_COND_CLIP;
        expect_create_fail(&d, w, LDM_ERR_NOT_FOUND, "not found", f.name);
        d = f.d, d.kind = LD_COND_BERT;
        lclip *wrong = NULL;
        expect_fail(lclip_create(&d, w, "cond_stage_model.", &wrong), LDM_ERR_INVALID_ARGUMENT, "not a CLIP", f.name);
        ck_assert_ptr_null(wrong);
    }
    lw_close(w);
}
END_TEST

/* Zeros in the description are completed from the weights (heads excepted). */
START_TEST(test_dims_from_weights)
{
    small_fixture f;
    lw_store *w = open_small(_i, &f);
    if (!w) return;
    ld_cond d = f.d;
    d.width = d.layers = d.vocab = d.ctx = 0;
    d.n_embed = d.n_layer = d.vocab_size = d.max_seq_len = d.bert_heads = d.bert_dim_head = 0;
    encoder e;
    ck_assert_msg(encoder_create(&d, w, &e) == LDM_OK, "%s", ldm_last_error());
    if (e.bert) {
        ck_assert_int_eq(lbert_dim(e.bert), f.d.n_embed);
        ck_assert_int_eq(lbert_vocab(e.bert), f.d.vocab_size);
        ck_assert_int_eq(lbert_max_seq_len(e.bert), f.d.max_seq_len);
    } else {
        ck_assert_int_eq(lclip_width(e.clip), f.d.width);
        ck_assert_int_eq(lclip_vocab(e.clip), f.d.vocab);
        ck_assert_int_eq(lclip_ctx(e.clip), f.d.ctx);
    }
    encoder_free(&e);
    lw_close(w);
}
END_TEST

START_TEST(test_cancel)
{
    small_fixture f;
    encoder e;
    lw_store *w = open_small_encoder(_i, &f, &e);
    if (!w) return;
    int64_t shape[2] = {1, 8};
    ldm_tensor *tok = lt_new_i64(2, shape);
    atomic_int flag;
    atomic_init(&flag, 1);
    lctx c = {.pool = NULL, .cancel = &flag};
    ldm_tensor *out = NULL;
    expect_fail(encoder_run(&e, &c, tok, &out), LDM_CANCELLED, "cancelled", f.name);
    ck_assert_ptr_null(out);
    ldm_tensor_free(tok);
    encoder_free(&e);
    lw_close(w);
}
END_TEST

/* Every allocation of create and encode failing in turn: an error, never a crash or a leak
 * (the suite runs under ASan/LSan in CI). */
START_TEST(test_alloc_failures)
{
    small_fixture f;
    lw_store *w = open_small(_i, &f);
    if (!w) return;
    int64_t shape[2] = {2, 6};
    ldm_tensor *tok = lt_new_i64(2, shape);
    lctx c = {.pool = NULL, .cancel = NULL};
    int succeeded = 0;
    for (long n = 1; n < 1000 && !succeeded; n++) {
        encoder e;
        ldm_tensor *out = NULL;
        ldm_alloc_fail_after(n);
        ldm_status st = encoder_create(&f.d, w, &e);
        if (st == LDM_OK) st = encoder_run(&e, &c, tok, &out);
        ldm_alloc_fail_after(0);
        if (st == LDM_OK) {
            succeeded = 1;
            ck_assert_ptr_nonnull(out);
        } else {
            ck_assert_msg(st == LDM_ERR_OUT_OF_MEMORY, "%s: allocation %ld failing gave %d (%s)", f.name, n, (int)st,
                          ldm_last_error());
            ck_assert_ptr_null(out);
        }
        ldm_tensor_free(out);
        encoder_free(&e);
    }
    ck_assert_msg(succeeded, "%s: never succeeded", f.name);
    ldm_tensor_free(tok);
    lw_close(w);
}
END_TEST

static Suite *text_encoders_suite(void)
{
    Suite *s = suite_create("text_encoders");
    TCase *fx = tcase_create("fixtures");
    tcase_set_timeout(fx, 300);
    tcase_add_test(fx, test_cond_clip_sd1);
    tcase_add_test(fx, test_cond_openclip_sd2);
    tcase_add_test(fx, test_cond_bert);
    tcase_add_test(fx, test_cond_layout_bert);
    tcase_add_test(fx, test_sd1_txt2img_text);
    tcase_add_test(fx, test_sd2v_ddim_text);
    suite_add_tcase(s, fx);

    TCase *bad = tcase_create("errors");
    tcase_set_timeout(bad, 300);
    tcase_add_loop_test(bad, test_bad_tokens, 0, 3);
    tcase_add_loop_test(bad, test_missing_tensor, 0, 3);
    tcase_add_loop_test(bad, test_desc_mismatch, 0, 3);
    tcase_add_loop_test(bad, test_dims_from_weights, 0, 3);
    tcase_add_loop_test(bad, test_cancel, 0, 3);
    tcase_add_loop_test(bad, test_alloc_failures, 0, 3);
    suite_add_tcase(s, bad);
    return s;
}

int main(void)
{
    return ck_run_suite(text_encoders_suite());
}
