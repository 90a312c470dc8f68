/* test_text_f16.c - the text towers (CLIP, OpenCLIP, BERT; lib/models/text_transformer.c) on float16
 * checkpoints: their weight matrices are borrowed from the store, not copied, and encode what the
 * float32 copies made with LDM_WIDEN_F16=1 encode. Small towers with random float16 weights, built
 * in memory: no fixtures needed. */
#include <check.h>

#include "core/ctx.h"
#include "core/tensor.h"
#include "io/weights.h"
#include "models/bert.h"
#include "models/clip_text.h"
#include "models/config.h"
#include "models/text_transformer.h"
#include "support/ck_run.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Tower dimensions: every weight matrix ([D,D] = 16 KB as float32, the smallest) is larger than
 * every float32 copy the tower keeps (positional embedding [T,D] = 4 KB, biases, norms), so an
 * allocation cap between the two tells borrowed matrices from copied ones. */
#define D              64
#define HEADS          4
#define FF             128
#define T              16
#define V              100
#define LAYERS         2
#define SMALL_COPY_CAP ((size_t)8 << 10)
#define PREFIX         "cond_stage_model."

/* ---- an in-memory store of float16 tensors */

typedef struct builder {
    lw_store *s;
    uint64_t rng;
} builder;

static float next_uniform(builder *b)
{
    b->rng = b->rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((b->rng >> 40) & 0xffffff) / 16777216.0f - 0.5f;
}

/* Adds a float16 tensor [d0] (d1 == 0) or [d0,d1] of offset + scale * uniform(-0.5, 0.5). */
static void add_f16(builder *b, float scale, float offset, int64_t d0, int64_t d1, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static void add_f16(builder *b, float scale, float offset, int64_t d0, int64_t d1, const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    size_t n = (size_t)d0 * (size_t)(d1 ? d1 : 1);
    uint16_t *h = ldm_malloc(n * sizeof *h);
    ck_assert_ptr_nonnull(h);
    for (size_t i = 0; i < n; i++) h[i] = lw_f32_to_f16(offset + scale * next_uniform(b));
    ck_assert_int_eq(lw_store_keep(b->s, h), LDM_OK);
    int64_t shape[2] = {d0, d1};
    ck_assert_int_eq(lw_store_add(b->s, name, LW_F16, d1 ? 2 : 1, shape, h, n * sizeof *h), LDM_OK);
}

static void add_linear(builder *b, int64_t out, int64_t in, int bias, const char *stem)
{
    add_f16(b, 0.2f, 0.0f, out, in, "%s.weight", stem);
    if (bias) add_f16(b, 0.2f, 0.0f, out, 0, "%s.bias", stem);
}

static void add_norm(builder *b, const char *stem)
{
    add_f16(b, 0.2f, 1.0f, D, 0, "%s.weight", stem);
    add_f16(b, 0.2f, 0.0f, D, 0, "%s.bias", stem);
}

/* Tensor `bad` (if not NULL) is stored with one row too many. */
static void add_linear_maybe_bad(builder *b, int64_t out, int64_t in, int bias, const char *stem, const char *bad)
{
    char w[256];
    snprintf(w, sizeof w, "%s.weight", stem);
    if (bad && strcmp(w, bad) == 0) {
        add_f16(b, 0.2f, 0.0f, out + 1, in, "%s", w);
        if (bias) add_f16(b, 0.2f, 0.0f, out, 0, "%s.bias", stem);
    } else {
        add_linear(b, out, in, bias, stem);
    }
}

typedef enum { HF_CLIP, OPEN_CLIP, BERT } family;

static void add_clip_hf(builder *b, const char *bad)
{
    const char *r = PREFIX "transformer.text_model.";
    char p[256], stem[320];
    add_f16(b, 1.0f, 0.0f, V, D, "%sembeddings.token_embedding.weight", r);
    add_f16(b, 1.0f, 0.0f, T, D, "%sembeddings.position_embedding.weight", r);
    snprintf(stem, sizeof stem, "%sfinal_layer_norm", r);
    add_norm(b, stem);
    static const char *const norms[] = {"layer_norm1", "layer_norm2"};
    static const char *const lins[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                       "self_attn.out_proj"};
    for (int l = 0; l < LAYERS; l++) {
        snprintf(p, sizeof p, "%sencoder.layers.%d.", r, l);
        for (int i = 0; i < 2; i++) {
            snprintf(stem, sizeof stem, "%s%s", p, norms[i]);
            add_norm(b, stem);
        }
        for (int i = 0; i < 4; i++) {
            snprintf(stem, sizeof stem, "%s%s", p, lins[i]);
            add_linear_maybe_bad(b, D, D, 1, stem, bad);
        }
        snprintf(stem, sizeof stem, "%smlp.fc1", p);
        add_linear_maybe_bad(b, FF, D, 1, stem, bad);
        snprintf(stem, sizeof stem, "%smlp.fc2", p);
        add_linear_maybe_bad(b, D, FF, 1, stem, bad);
    }
}

static void add_openclip(builder *b)
{
    const char *r = PREFIX "model.";
    char p[256], stem[320];
    add_f16(b, 1.0f, 0.0f, V, D, "%stoken_embedding.weight", r);
    add_f16(b, 1.0f, 0.0f, T, D, "%spositional_embedding", r);
    snprintf(stem, sizeof stem, "%sln_final", r);
    add_norm(b, stem);
    for (int l = 0; l < LAYERS; l++) {
        snprintf(p, sizeof p, "%stransformer.resblocks.%d.", r, l);
        snprintf(stem, sizeof stem, "%sln_1", p);
        add_norm(b, stem);
        snprintf(stem, sizeof stem, "%sln_2", p);
        add_norm(b, stem);
        add_f16(b, 0.2f, 0.0f, 3 * D, D, "%sattn.in_proj_weight", p);
        add_f16(b, 0.2f, 0.0f, 3 * D, 0, "%sattn.in_proj_bias", p);
        snprintf(stem, sizeof stem, "%sattn.out_proj", p);
        add_linear(b, D, D, 1, stem);
        snprintf(stem, sizeof stem, "%smlp.c_fc", p);
        add_linear(b, FF, D, 1, stem);
        snprintf(stem, sizeof stem, "%smlp.c_proj", p);
        add_linear(b, D, FF, 1, stem);
    }
}

/* BERT with HEADS heads of dim_head D / HEADS: inner = D. */
static void add_bert(builder *b, const char *bad)
{
    const char *r = PREFIX "transformer.";
    char p[256], stem[320];
    add_f16(b, 1.0f, 0.0f, V, D, "%stoken_emb.weight", r);
    add_f16(b, 1.0f, 0.0f, T, D, "%spos_emb.emb.weight", r);
    snprintf(stem, sizeof stem, "%snorm", r);
    add_norm(b, stem);
    static const char *const qkv[] = {"1.to_q", "1.to_k", "1.to_v"};
    for (int l = 0; l < LAYERS; l++) {
        snprintf(p, sizeof p, "%sattn_layers.layers.%d.", r, 2 * l);
        snprintf(stem, sizeof stem, "%s0", p);
        add_norm(b, stem);
        for (int i = 0; i < 3; i++) {
            snprintf(stem, sizeof stem, "%s%s", p, qkv[i]);
            add_linear_maybe_bad(b, D, D, 0, stem, bad);
        }
        snprintf(stem, sizeof stem, "%s1.to_out", p);
        add_linear_maybe_bad(b, D, D, 1, stem, bad);
        snprintf(p, sizeof p, "%sattn_layers.layers.%d.", r, 2 * l + 1);
        snprintf(stem, sizeof stem, "%s0", p);
        add_norm(b, stem);
        snprintf(stem, sizeof stem, "%s1.net.0.0", p);
        add_linear_maybe_bad(b, FF, D, 1, stem, bad);
        snprintf(stem, sizeof stem, "%s1.net.2", p);
        add_linear_maybe_bad(b, D, FF, 1, stem, bad);
    }
}

static lw_store *make_store(family f, const char *bad)
{
    builder b = {lw_store_new("f16.safetensors"), 0x5eedULL + (uint64_t)f};
    ck_assert_ptr_nonnull(b.s);
    if (f == HF_CLIP)
        add_clip_hf(&b, bad);
    else if (f == OPEN_CLIP)
        add_openclip(&b);
    else
        add_bert(&b, bad);
    ck_assert_int_eq(lw_store_seal(b.s), LDM_OK);
    return b.s;
}

/* ---- the encoders */

static ld_cond desc(family f)
{
    ld_cond d;
    memset(&d, 0, sizeof d);
    if (f == BERT) {
        d.kind = LD_COND_BERT;
        d.n_embed = D;
        d.n_layer = LAYERS;
        d.vocab_size = V;
        d.max_seq_len = T;
        d.bert_heads = HEADS;
        d.bert_dim_head = D / HEADS;
    } else {
        d.kind = f == HF_CLIP ? LD_COND_CLIP : LD_COND_OPENCLIP;
        d.width = D;
        d.layers = LAYERS;
        d.heads = HEADS;
        d.vocab = V;
        d.ctx = T;
    }
    return d;
}

typedef struct encoder {
    lclip *clip;
    lbert *bert;
} encoder;

static ldm_status encoder_create(family f, const lw_store *s, encoder *e)
{
    ld_cond d = desc(f);
    memset(e, 0, sizeof *e);
    return f == BERT ? lbert_create(&d, s, PREFIX, &e->bert) : lclip_create(&d, s, PREFIX, &e->clip);
}

static void encoder_free(encoder *e)
{
    lclip_free(e->clip);
    lbert_free(e->bert);
}

/* Creates the encoder (LDM_WIDEN_F16 set to `widen`), encodes two fixed token rows with `threads`
 * threads and returns the output. */
static ldm_tensor *encode(family f, const lw_store *s, int widen, int threads)
{
    if (widen)
        ck_assert_int_eq(setenv("LDM_WIDEN_F16", "1", 1), 0);
    else
        unsetenv("LDM_WIDEN_F16");
    encoder e;
    ldm_status st = encoder_create(f, s, &e);
    unsetenv("LDM_WIDEN_F16");
    ck_assert_msg(st == LDM_OK, "create: %s", ldm_last_error());
    ldm_tensor *tok = lt_new_i64(2, (int64_t[]){2, T - 3});
    ck_assert_ptr_nonnull(tok);
    for (int i = 0; i < 2 * (T - 3); i++) lt_i64(tok)[i] = (i * 37 + 11) % V;
    lpool *pool = lpool_create(threads);
    ck_assert_ptr_nonnull(pool);
    lctx c = {.pool = pool};
    ldm_tensor *out = NULL;
    st = e.bert ? lbert_encode(e.bert, &c, tok, &out) : lclip_encode(e.clip, &c, tok, &out);
    ck_assert_msg(st == LDM_OK, "encode: %s", ldm_last_error());
    lpool_free(pool);
    ldm_tensor_free(tok);
    encoder_free(&e);
    return out;
}

/* Max |a - b| / (1 + |b|) over the elements (both [2, T-3, D]): <= 1e-6 is the atol = rtol = 1e-6
 * the text encoder tests allow between thread counts. Also checks b is a real encoding (finite,
 * not all near zero) so that agreement means something. */
static double max_rel_diff(const ldm_tensor *a, const ldm_tensor *b)
{
    size_t n = (size_t)2 * (T - 3) * D;
    ck_assert_int_eq(lt_numel(a), n);
    ck_assert_int_eq(lt_numel(b), n);
    double worst = 0, largest = 0;
    for (size_t i = 0; i < n; i++) {
        float x = lt_f32(a)[i], y = lt_f32(b)[i];
        ck_assert(isfinite(x) && isfinite(y));
        worst = fmax(worst, fabs((double)x - y) / (1.0 + fabs((double)y)));
        largest = fmax(largest, fabs((double)y));
    }
    ck_assert(largest > 0.5); /* LayerNorm'd output with gains ~1 */
    return worst;
}

/* ---- tests */

/* The fused projection of OpenCLIP and every other matrix: the borrowed halves are widened
 * exactly, block by block, and each product is the same lk_gemm call on the same float values as
 * with a float32 copy (all these matrices fit in one widened block): bitwise equal. */
START_TEST(openclip_borrowed_equals_widened)
{
    lw_store *s = make_store(OPEN_CLIP, NULL);
    for (int threads = 1; threads <= 2; threads++) {
        ldm_tensor *borrowed = encode(OPEN_CLIP, s, 0, threads), *widened = encode(OPEN_CLIP, s, 1, threads);
        ck_assert_double_eq(max_rel_diff(borrowed, widened), 0.0);
        ck_assert(memcmp(lt_f32(borrowed), lt_f32(widened), lt_numel(borrowed) * sizeof(float)) == 0);
        ldm_tensor_free(borrowed);
        ldm_tensor_free(widened);
    }
    lw_close(s);
}
END_TEST

/* Separate q/k/v (HF CLIP, BERT): borrowed halves make three products of `inner` columns where
 * the widened copies are stacked into one product of 3*inner columns. Same values, same sums per
 * element, but BLAS may block a narrower product differently: only float rounding differs. */
START_TEST(split_qkv_borrowed_matches_widened)
{
    static const family fams[] = {HF_CLIP, BERT};
    for (size_t k = 0; k < 2; k++) {
        lw_store *s = make_store(fams[k], NULL);
        for (int threads = 1; threads <= 2; threads++) {
            ldm_tensor *borrowed = encode(fams[k], s, 0, threads), *widened = encode(fams[k], s, 1, threads);
            double r = max_rel_diff(borrowed, widened);
            printf("text_f16 %s, %d thread(s): borrowed vs widened max |a-b|/(1+|b|) %.3g\n",
                   fams[k] == BERT ? "BERT" : "CLIP", threads, r);
            ck_assert_msg(r <= 1e-6, "borrowed vs widened differ by %.3g", r);
            ldm_tensor_free(borrowed);
            ldm_tensor_free(widened);
        }
        lw_close(s);
    }
}
END_TEST

/* The loading helpers: a float16 matrix is the store's own memory; LDM_WIDEN_F16=1 gives float32
 * copies, and q/k/v copies are stacked into one fused matrix. */
START_TEST(helpers_borrow_f16)
{
    lw_store *s = make_store(HF_CLIP, NULL);
    static const char *const part[3] = {"q_proj", "k_proj", "v_proj"};
    const char *stem = PREFIX "transformer.text_model.encoder.layers.1.self_attn.";
    char name[256];

    unsetenv("LDM_WIDEN_F16");
    ltt_block blk;
    memset(&blk, 0, sizeof blk);
    ck_assert_int_eq(ltt_get_qkv(s, D, D, &blk, 1, stem, part), LDM_OK);
    ck_assert_int_eq(blk.n_qkv, 3);
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "%s%s.weight", stem, part[i]);
        ck_assert_ptr_null(blk.qkv[i].own);
        ck_assert_ptr_eq(blk.qkv[i].w.f16, lw_find(s, name)->data);
    }
    ck_assert_ptr_nonnull(blk.qkv_b);
    ck_assert_int_eq(
        ltt_get_linear(s, FF, D, &blk.fc1, &blk.fc1_b, "%smlp.fc1", PREFIX "transformer.text_model.encoder.layers.0."),
        LDM_OK);
    ck_assert_ptr_null(blk.fc1.own);
    ck_assert_ptr_eq(blk.fc1.w.f16, lw_find(s, PREFIX "transformer.text_model.encoder.layers.0.mlp.fc1.weight")->data);

    ltt_block wide;
    memset(&wide, 0, sizeof wide);
    ck_assert_int_eq(setenv("LDM_WIDEN_F16", "1", 1), 0);
    ck_assert_int_eq(ltt_get_qkv(s, D, D, &wide, 1, stem, part), LDM_OK);
    unsetenv("LDM_WIDEN_F16");
    ck_assert_int_eq(wide.n_qkv, 1);
    ck_assert_ptr_nonnull(wide.qkv[0].own);
    ck_assert_ptr_null(wide.qkv[1].own);
    /* stacked q, k, v rows, each the exact widening of the stored halves */
    float *row = ldm_malloc(D * sizeof(float));
    ck_assert_ptr_nonnull(row);
    for (int i = 0; i < 3; i++)
        for (int r = 0; r < D; r += 7) {
            lk_wt_read(blk.qkv[i].w, (size_t)r * D, D, row);
            ck_assert(memcmp(row, wide.qkv[0].own + ((size_t)i * D + r) * D, D * sizeof(float)) == 0);
        }
    ck_assert(memcmp(blk.qkv_b, wide.qkv_b, 3 * D * sizeof(float)) == 0);
    ldm_free(row);

    for (int i = 0; i < 3; i++) {
        lnw_free(&blk.qkv[i]);
        lnw_free(&wide.qkv[i]);
    }
    lnw_free(&blk.fc1);
    ldm_free(blk.fc1_b);
    ldm_free(blk.qkv_b);
    ldm_free(wide.qkv_b);
    lw_close(s);
}
END_TEST

/* Whole towers: with every allocation capped below one matrix's float32 size, a float16 tower
 * still loads (only biases, norms and the positional embedding are copied) and a widened one
 * cannot: no matrix (projection or token embedding) is copied. */
START_TEST(towers_copy_no_matrix)
{
    static const family fams[] = {HF_CLIP, OPEN_CLIP, BERT};
    for (size_t k = 0; k < 3; k++) {
        lw_store *s = make_store(fams[k], NULL);
        encoder e;
        unsetenv("LDM_WIDEN_F16");
        ldm_alloc_set_cap(SMALL_COPY_CAP);
        ldm_status st = encoder_create(fams[k], s, &e);
        ldm_alloc_set_cap(0);
        ck_assert_msg(st == LDM_OK, "borrowed load under a %zu-byte cap: %s", SMALL_COPY_CAP, ldm_last_error());
        encoder_free(&e);

        ck_assert_int_eq(setenv("LDM_WIDEN_F16", "1", 1), 0);
        ldm_alloc_set_cap(SMALL_COPY_CAP);
        st = encoder_create(fams[k], s, &e);
        ldm_alloc_set_cap(0);
        unsetenv("LDM_WIDEN_F16");
        ck_assert_int_eq(st, LDM_ERR_LIMIT);
        encoder_free(&e);
        lw_close(s);
    }
}
END_TEST

/* A float16 matrix of the wrong shape is rejected with the tensor's name, what was expected and
 * what was found, as a float32 one is. */
START_TEST(wrong_shape_f16_names_tensor)
{
    static const struct {
        family f;
        const char *bad, *want, *found;
    } cases[] = {
        {HF_CLIP, PREFIX "transformer.text_model.encoder.layers.1.mlp.fc2.weight", "[64,128]", "[65,128]"},
        {HF_CLIP, PREFIX "transformer.text_model.encoder.layers.0.self_attn.k_proj.weight", "[64,64]", "[65,64]"},
        {BERT, PREFIX "transformer.attn_layers.layers.2.1.to_v.weight", "[64,64]", "[65,64]"},
        {BERT, PREFIX "transformer.attn_layers.layers.3.1.net.0.0.weight", "[128,64]", "[129,64]"},
    };
    unsetenv("LDM_WIDEN_F16");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lw_store *s = make_store(cases[i].f, cases[i].bad);
        ck_assert_int_eq(lw_find(s, cases[i].bad)->dtype, LW_F16);
        encoder e;
        ck_assert_int_eq(encoder_create(cases[i].f, s, &e), LDM_ERR_FORMAT);
        const char *msg = ldm_last_error();
        ck_assert_msg(strstr(msg, cases[i].bad) != NULL, "message %s does not name %s", msg, cases[i].bad);
        char shapes[128];
        snprintf(shapes, sizeof shapes, "expected shape %s, found %s", cases[i].want, cases[i].found);
        ck_assert_msg(strstr(msg, shapes) != NULL, "message %s lacks \"%s\"", msg, shapes);
        ck_assert_ptr_null(e.clip);
        ck_assert_ptr_null(e.bert);
        lw_close(s);
    }
}
END_TEST

static Suite *text_f16_suite(void)
{
    Suite *s = suite_create("text_f16");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, openclip_borrowed_equals_widened);
    tcase_add_test(tc, split_qkv_borrowed_matches_widened);
    tcase_add_test(tc, helpers_borrow_f16);
    tcase_add_test(tc, towers_copy_no_matrix);
    tcase_add_test(tc, wrong_shape_f16_names_tensor);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return ck_run_suite(text_f16_suite());
}
