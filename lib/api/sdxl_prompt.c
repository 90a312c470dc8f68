/* sdxl_prompt.c - webui's prompt rules (lib/text/prompt.h) on SDXL's GeneralConditioner, as
 * AUTOMATIC1111/stable-diffusion-webui runs SDXL (docs/prompts.md "SDXL"): each text tower is
 * wrapped on its own (sd_hijack_clip.py FrozenCLIPEmbedderForSDXLWithCustomWords,
 * sd_hijack_open_clip.py FrozenOpenCLIPEmbedder2WithCustomWords), so each tokenizes and chunks the
 * prompt, encodes chunk by chunk, applies the weights to its own output and concatenates the
 * chunks; the pooled vector is the first chunk's (forward: `torch.hstack(zs), zs[0].pooled`),
 * computed before the weights. GeneralConditioner then puts the towers' features side by side
 * and the size embeddings after the pooled vector, which do not depend on the chunk. */
#include "model_internal.h"

#include "../models/sdxl_cond.h"
#include "../text/prompt.h"

#include <math.h>
#include <string.h>

typedef struct tower_chunks {
    lpr_chunk_cfg cfg;
    lpr_chunks *chunks; /* one per prompt (none when the text is zeroed) */
    int width, offset;  /* the tower's features in crossattn */
} tower_chunks;

typedef struct sdxl_prompt_set {
    tower_chunks t[LD_MAX_EMBEDDERS];
    int n_text, n, k, row;
} sdxl_prompt_set;

static void set_free(sdxl_prompt_set *s)
{
    for (int i = 0; i < s->n_text; i++) {
        for (int b = 0; s->t[i].chunks && b < s->n; b++) lpr_chunks_free(&s->t[i].chunks[b]);
        ldm_free(s->t[i].chunks);
    }
}

/* Chunks of every prompt for every tower; with zero_text the prompts are not read (the text is
 * zeroed in chunk 0, and any further chunk is the empty prompt's, as webui pads it). */
static ldm_status set_build(struct ldm_conditioner *cond, const char *const *prompts, int n, unsigned flags,
                            int zero_text, int min_chunks, sdxl_prompt_set *s)
{
    memset(s, 0, sizeof *s);
    s->n = n;
    s->row = 77;
    s->k = LDM_MAX(min_chunks, 1);
    s->n_text = lsdxl_cond_n_text(cond->sdxl);
    int offset = 0;
    for (int i = 0; i < s->n_text; i++) {
        tower_chunks *t = &s->t[i];
        ldm_tokenizer *tok;
        LDM_TRY(lm_sdxl_tokenizer(cond, i, &tok));
        LDM_TRY(lpr_tokenizer_cfg(tok, s->row, flags, &t->cfg));
        t->width = lsdxl_cond_text_width(cond->sdxl, i);
        t->offset = offset;
        offset += t->width;
        if (zero_text) continue;
        if (!(t->chunks = ldm_calloc((size_t)n, sizeof *t->chunks))) return ldm_alloc_failure_status();
        for (int b = 0; b < n; b++) {
            if (!prompts[b]) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "prompt %d is NULL", b);
            ldm_status st = lpr_tokenizer_chunks(tok, &t->cfg, prompts[b], flags, &t->chunks[b]);
            if (st != LDM_OK) return ldm_fail_context(st, "prompt %d: ", b);
            s->k = LDM_MAX(s->k, t->chunks[b].n_chunks);
        }
    }
    return LDM_OK;
}

/* Chunk c of every prompt for tower i (the empty chunk past a prompt's end): ids [n, row] and
 * their weights. */
static ldm_status chunk_ids(const sdxl_prompt_set *s, int i, int c, ldm_tensor **ids, float *weights)
{
    const tower_chunks *t = &s->t[i];
    int64_t shape[2] = {s->n, s->row};
    if (!(*ids = lt_new_i64(2, shape))) return ldm_alloc_failure_status();
    for (int b = 0; b < s->n; b++) {
        int64_t *dst = lt_i64(*ids) + (size_t)b * (size_t)s->row;
        float *w = weights + (size_t)b * (size_t)s->row;
        const lpr_chunks *ch = t->chunks ? &t->chunks[b] : NULL;
        if (!ch || c >= ch->n_chunks) {
            lpr_empty_chunk(&t->cfg, dst, w);
            continue;
        }
        memcpy(dst, ch->ids + (size_t)c * (size_t)s->row, (size_t)s->row * sizeof *dst);
        memcpy(w, ch->weights + (size_t)c * (size_t)s->row, (size_t)s->row * sizeof *w);
    }
    return LDM_OK;
}

/* The weights of tower i on its slice of one prompt's chunk z [row, D] (lpr_emphasis works on a
 * contiguous [row, width] block, hence the copy). */
static ldm_status weigh_slice(const sdxl_prompt_set *s, int i, float *z, int D, const float *w, unsigned flags,
                              float *tmp, int prompt, int chunk)
{
    const tower_chunks *t = &s->t[i];
    for (int r = 0; r < s->row; r++)
        memcpy(tmp + (size_t)r * t->width, z + (size_t)r * D + t->offset, (size_t)t->width * sizeof *tmp);
    lpr_emphasis(tmp, w, s->row, t->width, !(flags & LDM_PROMPT_NO_NORMALIZE));
    for (size_t j = 0; j < (size_t)s->row * (size_t)t->width; j++)
        if (!isfinite(tmp[j]))
            return ldm_fail(LDM_ERR_NUMERIC,
                            "prompt %d, chunk %d, text encoder %d: the weighted embedding is not finite "
                            "(weights too large, or a weighted mean of 0)",
                            prompt, chunk, i);
    for (int r = 0; r < s->row; r++)
        memcpy(z + (size_t)r * D + t->offset, tmp + (size_t)r * t->width, (size_t)t->width * sizeof *tmp);
    return LDM_OK;
}

typedef struct chunk_work {
    ldm_tensor *ids[LD_MAX_EMBEDDERS];
    float *w[LD_MAX_EMBEDDERS];
    float *tmp;
} chunk_work;

static void work_free(chunk_work *cw, int n_text)
{
    for (int i = 0; i < n_text; i++) {
        ldm_tensor_free(cw->ids[i]);
        ldm_free(cw->w[i]);
    }
    ldm_free(cw->tmp);
}

/* Encodes chunk c of every prompt through the whole conditioner, weighs each tower's slice and
 * copies it into ca [n, row*k, D]; the first chunk's vector is kept. */
static ldm_status encode_chunk(struct ldm_conditioner *cond, const sdxl_prompt_set *s, const lsdxl_values *values,
                               int zero_text, unsigned flags, int c, ldm_tensor *ca, ldm_tensor **vec)
{
    chunk_work cw = {0};
    const ldm_tensor *tokens[LD_MAX_EMBEDDERS] = {0};
    ldm_tensor *z = NULL, *v = NULL;
    int max_w = 1, zero = zero_text && c == 0;
    ldm_status st = LDM_OK;
    for (int i = 0; i < s->n_text && st == LDM_OK; i++) {
        max_w = LDM_MAX(max_w, s->t[i].width);
        if (!(cw.w[i] = ldm_malloc((size_t)s->n * (size_t)s->row * sizeof *cw.w[i]))) st = ldm_alloc_failure_status();
        if (st == LDM_OK) st = chunk_ids(s, i, c, &cw.ids[i], cw.w[i]);
        tokens[i] = cw.ids[i];
    }
    if (st == LDM_OK && !(cw.tmp = ldm_malloc((size_t)s->row * (size_t)max_w * sizeof *cw.tmp)))
        st = ldm_alloc_failure_status();
    if (st == LDM_OK) st = lsdxl_cond_encode(cond->sdxl, &cond->model->ctx, tokens, values, s->n, zero, &z, &v);
    int D = (int)ca->shape[2];
    size_t block = (size_t)s->row * (size_t)D;
    for (int b = 0; b < s->n && st == LDM_OK; b++) {
        float *zb = lt_f32(z) + (size_t)b * block;
        for (int i = 0; i < s->n_text && st == LDM_OK && !zero; i++)
            st = weigh_slice(s, i, zb, D, cw.w[i] + (size_t)b * (size_t)s->row, flags, cw.tmp, b, c);
        if (st == LDM_OK) memcpy(lt_f32(ca) + ((size_t)b * (size_t)s->k + (size_t)c) * block, zb, block * sizeof *zb);
    }
    if (st == LDM_OK && c == 0) {
        *vec = v;
        v = NULL;
    }
    ldm_tensor_free(z);
    ldm_tensor_free(v);
    work_free(&cw, s->n_text);
    return st;
}

ldm_status lm_cond_encode_sdxl_prompts(struct ldm_conditioner *cond, const ldm_sdxl_cond_params *p, int min_chunks,
                                       ldm_tensor **crossattn, ldm_tensor **vector)
{
    sdxl_prompt_set s;
    *crossattn = *vector = NULL;
    ldm_status st = set_build(cond, p->prompts, p->n_prompts, p->prompt_flags, p->zero_text, min_chunks, &s);
    lsdxl_values *values = st == LDM_OK ? ldm_calloc((size_t)s.n, sizeof *values) : NULL;
    if (st == LDM_OK && !values) st = ldm_alloc_failure_status();
    for (int b = 0; st == LDM_OK && b < s.n; b++)
        values[b] = (lsdxl_values){p->original_height, p->original_width, p->crop_top,       p->crop_left,
                                   p->target_height,   p->target_width,   p->aesthetic_score};
    ldm_tensor *ca = NULL;
    if (st == LDM_OK) {
        int64_t shape[3] = {s.n, (int64_t)s.row * s.k, LDM_MAX(lsdxl_cond_context_dim(cond->sdxl), 1)};
        if (!(ca = lt_new_f32(3, shape))) st = ldm_alloc_failure_status();
    }
    for (int c = 0; c < s.k && st == LDM_OK; c++)
        st = encode_chunk(cond, &s, values, p->zero_text, p->prompt_flags, c, ca, vector);
    ldm_free(values);
    set_free(&s);
    if (st != LDM_OK) {
        ldm_tensor_free(ca);
        ldm_tensor_free(*vector);
        *vector = NULL;
        return st;
    }
    *crossattn = ca;
    return LDM_OK;
}

ldm_status lm_sdxl_prompt_chunk_count(struct ldm_conditioner *cond, const char *prompt, unsigned flags, int *n_chunks)
{
    sdxl_prompt_set s;
    ldm_status st = set_build(cond, &prompt, 1, flags, 0, 1, &s);
    *n_chunks = s.k;
    set_free(&s);
    return st;
}
