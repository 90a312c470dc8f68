/* sdxl_cond.c - sgm GeneralConditioner for SDXL (see sdxl_cond.h): which hidden state of each
 * text tower feeds the UNet, the pooled open_clip vector, the size/crop/score embeddings and
 * their concatenation. The towers themselves are clip_text.c / text_transformer.c. */
#include "sdxl_cond.h"

#include "clip_text.h"
#include "probe.h"
#include "unet.h"

#include <stdio.h>
#include <string.h>

typedef struct lsdxl_emb {
    ld_embedder d;
    lclip *tower;      /* text embedders */
    int capture_after; /* the context is the stream after this many blocks (-1: the tower's output) */
    int final_ln;      /* the tower's output gets the final LayerNorm */
    float *proj;       /* text_projection [width, proj_dim] (pooled embedders) */
    int width, proj_dim;
    int numbers; /* size embedders: values per sample */
} lsdxl_emb;

struct lsdxl_cond {
    int n;
    lsdxl_emb e[LD_MAX_EMBEDDERS];
    int n_text, context_dim, vector_dim;
};

static const char EMB[] = "conditioner.embedders.";

/* Heads are not stored: every released CLIP / OpenCLIP tower has 64-channel heads. */
static ldm_status text_heads(const lw_store *s, const char *prefix, ld_cond *t)
{
    if (t->heads > 0) return LDM_OK;
    const lw_tensor *tok = t->kind == LD_COND_CLIP
                               ? ld_probe(s, "%stransformer.text_model.embeddings.token_embedding.weight", prefix)
                               : ld_probe(s, "%smodel.token_embedding.weight", prefix);
    if (!tok || tok->ndim != 2)
        return ldm_fail(LDM_ERR_NOT_FOUND, "sdxl conditioner: %s*: no text encoder token embedding", prefix);
    if (tok->shape[1] % 64)
        return ldm_fail(LDM_ERR_UNSUPPORTED,
                        "sdxl conditioner: %s*: width %lld is not a multiple of the usual "
                        "64-channel heads; the head count is unknown",
                        prefix, (long long)tok->shape[1]);
    t->heads = (int)(tok->shape[1] / 64);
    return LDM_OK;
}

static int text_layers(const lw_store *s, const char *prefix, const ld_cond *t)
{
    if (t->layers > 0) return t->layers;
    return t->kind == LD_COND_CLIP ? ld_probe_count(s, 1024, "%stransformer.text_model.encoder.layers.", prefix)
                                   : ld_probe_count(s, 1024, "%smodel.transformer.resblocks.", prefix);
}

static ldm_status load_projection(lsdxl_emb *e, const lw_store *s, const char *prefix)
{
    char name[160];
    snprintf(name, sizeof name, "%smodel.text_projection", prefix);
    const lw_tensor *t = lw_find(s, name);
    if (!t) return ldm_fail(LDM_ERR_NOT_FOUND, "sdxl conditioner: tensor %s is missing (pooled output)", name);
    if (t->ndim != 2 || t->shape[0] != e->width || t->shape[1] <= 0 || t->shape[1] > 65536)
        return ldm_fail(LDM_ERR_FORMAT, "sdxl conditioner: tensor %s: expected [%d, P], found a %d-D tensor", name,
                        e->width, t->ndim);
    e->proj_dim = (int)t->shape[1];
    return lw_get_f32(s, name, 2, (int64_t[]){e->width, e->proj_dim}, &e->proj);
}

/* Which blocks to load and which state to read, from the embedder's layer settings. */
static ldm_status create_text(lsdxl_emb *e, const lw_store *s, int index)
{
    char prefix[64];
    snprintf(prefix, sizeof prefix, "%s%d.", EMB, index);
    ld_cond t = e->d.text;
    LDM_TRY(text_heads(s, prefix, &t));
    int L = text_layers(s, prefix, &t);
    if (L <= 0) return ldm_fail(LDM_ERR_NOT_FOUND, "sdxl conditioner: %s*: no text encoder blocks", prefix);
    t.layer_skip = 0;
    e->capture_after = -1;
    e->final_ln = 1;
    if (e->d.kind == LD_EMB_CLIP && e->d.layer == LD_EMB_LAYER_HIDDEN) {
        int idx = e->d.layer_idx < 0 ? e->d.layer_idx + L + 1 : e->d.layer_idx; /* hidden_states has L+1 */
        if (idx < 0 || idx > L)
            return ldm_fail(LDM_ERR_FORMAT,
                            "sdxl conditioner: embedder %d: layer_idx %d outside the %d hidden "
                            "states",
                            index, e->d.layer_idx, L + 1);
        t.layer_skip = L - idx; /* blocks after hidden_states[idx] are never needed */
        e->final_ln = 0;
    } else if (e->d.kind == LD_EMB_OPENCLIP2 && e->d.legacy) {
        t.layer_skip = e->d.layer == LD_EMB_LAYER_PENULTIMATE; /* then ln_final, like SD 2.x */
    } else if (e->d.kind == LD_EMB_OPENCLIP2) {
        /* non-legacy: the context is a raw hidden state; ln_final only feeds the pooled vector */
        e->capture_after = e->d.layer == LD_EMB_LAYER_PENULTIMATE ? L - 1 : L;
        if (!e->d.pooled) t.layer_skip = L - e->capture_after;
    }
    LDM_TRY(lclip_create(&t, s, prefix, &e->tower));
    e->width = lclip_width(e->tower);
    if (e->d.pooled) LDM_TRY(load_projection(e, s, prefix));
    return LDM_OK;
}

static void free_emb(lsdxl_emb *e)
{
    lclip_free(e->tower);
    ldm_free(e->proj);
}

void lsdxl_cond_free(lsdxl_cond *c)
{
    if (!c) return;
    for (int i = 0; i < c->n; i++) free_emb(&c->e[i]);
    ldm_free(c);
}

static ldm_status create_all(lsdxl_cond *c, const ld_sgm *g, const lw_store *s)
{
    for (int i = 0; i < g->n_embedders; i++, c->n++) {
        lsdxl_emb *e = &c->e[i];
        e->d = g->emb[i];
        if (e->d.kind == LD_EMB_SIZE) {
            if (e->d.outdim <= 0 || e->d.outdim > 65536)
                return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "sdxl conditioner: embedder %d: outdim %d", i, e->d.outdim);
            e->numbers = e->d.input == LD_EMB_IN_AESTHETIC ? 1 : 2;
            c->vector_dim += e->numbers * e->d.outdim;
            continue;
        }
        ldm_status st = create_text(e, s, i);
        if (st != LDM_OK) {
            c->n++; /* free what was loaded */
            return ldm_fail_context(st, "embedder %d: ", i);
        }
        c->n_text++;
        c->context_dim += e->width;
        if (e->d.pooled) c->vector_dim += e->proj_dim;
    }
    return LDM_OK;
}

ldm_status lsdxl_cond_create(const ld_sgm *g, const lw_store *s, lsdxl_cond **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lsdxl_cond_create: NULL output");
    *out = NULL;
    if (!g || !s || !g->present) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lsdxl_cond_create: not an sgm model");
    if (g->n_embedders <= 0 || g->n_embedders > LD_MAX_EMBEDDERS)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "sdxl conditioner: %d embedders", g->n_embedders);
    lsdxl_cond *c = ldm_calloc(1, sizeof *c);
    if (!c) return ldm_alloc_failure_status();
    ldm_status st = create_all(c, g, s);
    if (st != LDM_OK) {
        lsdxl_cond_free(c);
        return st;
    }
    *out = c;
    return LDM_OK;
}

int lsdxl_cond_n_text(const lsdxl_cond *c)
{
    return c->n_text;
}
int lsdxl_cond_context_dim(const lsdxl_cond *c)
{
    return c->context_dim;
}
int lsdxl_cond_vector_dim(const lsdxl_cond *c)
{
    return c->vector_dim;
}

static const lsdxl_emb *text_emb(const lsdxl_cond *c, int k)
{
    for (int i = 0; i < c->n; i++)
        if (c->e[i].d.kind != LD_EMB_SIZE && k-- == 0) return &c->e[i];
    return NULL;
}

ld_cond_kind lsdxl_cond_text_kind(const lsdxl_cond *c, int k)
{
    const lsdxl_emb *e = text_emb(c, k);
    return e ? e->d.text.kind : LD_COND_NONE;
}

int lsdxl_cond_text_width(const lsdxl_cond *c, int k)
{
    const lsdxl_emb *e = text_emb(c, k);
    return e ? e->width : 0;
}

/* ---------------------------------------------------------------- forward */

typedef struct enc_out {
    float *ctx, *vec; /* [B,T,context_dim], [B,vector_dim] (zero-filled) */
    int B, T, context_dim, vector_dim;
    int ctx_off, vec_off; /* where the next embedder's features go */
} enc_out;

/* pooled[b] = h[b, argmax(ids[b])] @ proj (torch's argmax: the first of equal maxima). */
static void pool(const lsdxl_emb *e, const float *h, const int64_t *ids, enc_out *o)
{
    for (int b = 0; b < o->B; b++) {
        const int64_t *row_ids = ids + (size_t)b * o->T;
        int best = 0;
        for (int t = 1; t < o->T; t++)
            if (row_ids[t] > row_ids[best]) best = t;
        const float *x = h + ((size_t)b * o->T + best) * e->width;
        float *dst = o->vec + (size_t)b * o->vector_dim + o->vec_off;
        for (int p = 0; p < e->proj_dim; p++) {
            double acc = 0.0;
            for (int w = 0; w < e->width; w++) acc += (double)x[w] * e->proj[(size_t)w * e->proj_dim + p];
            dst[p] = (float)acc;
        }
    }
}

/* Copies a [B,T,width] state into the context at this embedder's feature offset. */
static void put_context(const float *h, int width, enc_out *o)
{
    for (size_t r = 0; r < (size_t)o->B * o->T; r++)
        memcpy(o->ctx + r * o->context_dim + o->ctx_off, h + r * width, (size_t)width * sizeof(float));
}

static ldm_status encode_text(const lsdxl_emb *e, const lctx *ctx, const ldm_tensor *tokens, int zero, enc_out *o)
{
    if (!zero) {
        char a[64];
        if (!tokens || tokens->dtype != LDM_I64 || tokens->ndim != 2 || tokens->shape[0] != o->B ||
            tokens->shape[1] != o->T)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "sdxl conditioner: tokens: expected I64 [%d,%d], found %s", o->B,
                            o->T, tokens ? lt_shape_str(tokens, a, sizeof a) : "none");
        ldm_tensor *out = NULL, *hidden = NULL;
        LDM_TRY(lclip_encode_ex(e->tower, ctx, tokens, e->capture_after, e->capture_after >= 0 ? &hidden : NULL,
                                e->final_ln, &out));
        put_context(lt_f32(hidden ? hidden : out), e->width, o);
        if (e->d.pooled) pool(e, lt_f32(out), lt_i64(tokens), o);
        ldm_tensor_free(out);
        ldm_tensor_free(hidden);
    }
    o->ctx_off += e->width;
    if (e->d.pooled) o->vec_off += e->proj_dim;
    return LDM_OK;
}

/* ConcatTimestepEmbedderND: the numbers of each sample through timestep_embedding, flattened
 * (b d) -> b (d outdim). */
static ldm_status encode_size(const lsdxl_emb *e, const lsdxl_values *values, enc_out *o)
{
    float *t = ldm_malloc(sizeof(float) * (size_t)e->numbers);
    if (!t) return ldm_alloc_failure_status();
    for (int b = 0; b < o->B; b++) {
        const lsdxl_values *v = &values[b];
        switch (e->d.input) {
        case LD_EMB_IN_ORIGINAL_SIZE:
            t[0] = (float)v->original_h, t[1] = (float)v->original_w;
            break;
        case LD_EMB_IN_CROP:
            t[0] = (float)v->crop_top, t[1] = (float)v->crop_left;
            break;
        case LD_EMB_IN_TARGET_SIZE:
            t[0] = (float)v->target_h, t[1] = (float)v->target_w;
            break;
        default:
            t[0] = (float)v->aesthetic;
            break;
        }
        lunet_timestep_embedding(t, e->numbers, e->d.outdim, o->vec + (size_t)b * o->vector_dim + o->vec_off);
    }
    ldm_free(t);
    o->vec_off += e->numbers * e->d.outdim;
    return LDM_OK;
}

static ldm_status encode_all(lsdxl_cond *c, const lctx *ctx, const ldm_tensor *const *tokens,
                             const lsdxl_values *values, int zero_text, enc_out *o)
{
    int k = 0;
    for (int i = 0; i < c->n; i++) {
        const lsdxl_emb *e = &c->e[i];
        if (e->d.kind == LD_EMB_SIZE)
            LDM_TRY(encode_size(e, values, o));
        else
            LDM_TRY(encode_text(e, ctx, tokens ? tokens[k++] : NULL, zero_text, o));
    }
    return LDM_OK;
}

ldm_status lsdxl_cond_encode(lsdxl_cond *c, const lctx *ctx, const ldm_tensor *const *tokens,
                             const lsdxl_values *values, int B, int zero_text, ldm_tensor **crossattn,
                             ldm_tensor **vector)
{
    if (!crossattn || !vector) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lsdxl_cond_encode: NULL output");
    *crossattn = *vector = NULL;
    if (!c || !values || B <= 0 || B > 65536)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lsdxl_cond_encode: bad arguments (batch %d)", B);
    int T = 77;
    if (!zero_text && c->n_text) {
        if (!tokens || !tokens[0] || tokens[0]->ndim != 2)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "sdxl conditioner: token ids for %d text encoders are needed",
                            c->n_text);
        T = (int)tokens[0]->shape[1];
    }
    ldm_tensor *ca = lt_new_f32(3, (int64_t[]){B, T, c->context_dim > 0 ? c->context_dim : 1});
    ldm_tensor *vec = lt_new_f32(2, (int64_t[]){B, c->vector_dim > 0 ? c->vector_dim : 1});
    if (!ca || !vec) {
        ldm_tensor_free(ca);
        ldm_tensor_free(vec);
        return ldm_alloc_failure_status();
    }
    memset(lt_f32(ca), 0, lt_numel(ca) * sizeof(float));
    memset(lt_f32(vec), 0, lt_numel(vec) * sizeof(float));
    enc_out o = {lt_f32(ca), lt_f32(vec), B, T, c->context_dim, c->vector_dim, 0, 0};
    ldm_status st = encode_all(c, ctx, tokens, values, zero_text, &o);
    if (st != LDM_OK) {
        ldm_tensor_free(ca);
        ldm_tensor_free(vec);
        return st;
    }
    *crossattn = ca;
    *vector = vec;
    return LDM_OK;
}
