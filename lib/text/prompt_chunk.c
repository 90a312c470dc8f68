/* prompt_chunk.c - runs to chunks of token ids and weights, as webui's tokenize_line
 * (AUTOMATIC1111/stable-diffusion-webui modules/sd_hijack_clip.py,
 * FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line, and process_tokens for the padding id):
 *   - each run is tokenized on its own (so "a (b) c" is three tokenizer calls, as in webui);
 *   - a BREAK marker closes the current chunk (an empty one too: "BREAK a" has a chunk of padding
 *     first);
 *   - before each token: a comma remembers its position; otherwise, when the chunk is full and
 *     the last comma is at most comma_backtrack tokens back, the tokens after that comma move to
 *     the next chunk; a full chunk is closed;
 *   - closing pads with id_end (weight 1) to chunk_length and wraps in id_start / id_end
 *     (weight 1 each); the prompt's last chunk is closed if it holds tokens or is the only one.
 * Textual-inversion embeddings (webui's embedding_db) are not part of this. */
#include "prompt.h"

#include <math.h>
#include <string.h>

typedef struct builder {
    const lpr_chunk_cfg *cfg;
    int64_t *tok; /* the open chunk: up to chunk_length tokens */
    double *mult;
    int len;
    int last_comma;
    lpr_chunks *out;
} builder;

/* webui's process_tokens: after the first id_end of a row everything is id_pad (when they
 * differ: OpenCLIP pads with 0, BERT with [PAD]). */
static void apply_pad(const lpr_chunk_cfg *cfg, int64_t *ids, int row)
{
    if (cfg->id_pad == cfg->id_end) return;
    int i = 0;
    while (i < row && ids[i] != cfg->id_end) i++;
    for (i++; i < row; i++) ids[i] = cfg->id_pad;
}

/* webui's next_chunk: pad, wrap, append to the output. */
static ldm_status close_chunk(builder *b)
{
    lpr_chunks *o = b->out;
    int row = b->cfg->chunk_length + 2;
    size_t n = (size_t)o->n_chunks + 1, elems;
    if (ldm_mul_size(n, (size_t)row, &elems) || elems > (SIZE_MAX / 8))
        return ldm_fail(LDM_ERR_LIMIT, "prompt: too many chunks");
    int64_t *ids = ldm_realloc(o->ids, elems * sizeof *ids);
    if (!ids) return ldm_alloc_failure_status();
    o->ids = ids;
    float *w = ldm_realloc(o->weights, elems * sizeof *w);
    if (!w) return ldm_alloc_failure_status();
    o->weights = w;
    ids += (n - 1) * (size_t)row;
    w += (n - 1) * (size_t)row;
    ids[0] = b->cfg->id_start;
    w[0] = 1.0f;
    for (int i = 0; i < b->cfg->chunk_length; i++) {
        int have = i < b->len;
        ids[1 + i] = have ? b->tok[i] : b->cfg->id_end;
        w[1 + i] = have ? (float)b->mult[i] : 1.0f;
    }
    ids[row - 1] = b->cfg->id_end;
    w[row - 1] = 1.0f;
    apply_pad(b->cfg, ids, row);
    o->n_chunks = (int)n;
    o->row = row;
    b->len = 0;
    b->last_comma = -1;
    return LDM_OK;
}

/* The comma rule: the tokens after the last comma go to the next chunk (closing reads only the
 * tokens before them, so they can be moved down afterwards). */
static ldm_status backtrack_to_comma(builder *b)
{
    int from = b->last_comma + 1, n = b->len - from;
    b->len = from;
    LDM_TRY(close_chunk(b));
    memmove(b->tok, b->tok + from, (size_t)n * sizeof *b->tok);
    memmove(b->mult, b->mult + from, (size_t)n * sizeof *b->mult);
    b->len = n;
    return LDM_OK;
}

static ldm_status add_token(builder *b, int64_t token, double weight)
{
    const lpr_chunk_cfg *cfg = b->cfg;
    if (token == cfg->id_comma)
        b->last_comma = b->len;
    else if (cfg->comma_backtrack != 0 && b->len == cfg->chunk_length && b->last_comma != -1 &&
             b->len - b->last_comma <= cfg->comma_backtrack)
        LDM_TRY(backtrack_to_comma(b));
    if (b->len == cfg->chunk_length) LDM_TRY(close_chunk(b));
    b->tok[b->len] = token;
    b->mult[b->len] = weight;
    b->len++;
    return LDM_OK;
}

static ldm_status add_run(builder *b, const lpr_run *run, lpr_tokenize_fn tokenize, void *user)
{
    if (lpr_is_break(run)) return close_chunk(b);
    if (!isfinite(run->weight))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "prompt: the weight of \"%.40s\" is not finite", run->text);
    int64_t *ids = NULL;
    size_t n = 0;
    LDM_TRY(tokenize(user, run->text, &ids, &n));
    ldm_status st = LDM_OK;
    for (size_t i = 0; i < n && st == LDM_OK; i++) st = add_token(b, ids[i], run->weight);
    ldm_free(ids);
    return st;
}

ldm_status lpr_chunk(const lpr_runs *runs, const lpr_chunk_cfg *cfg, lpr_tokenize_fn tokenize, void *user,
                     lpr_chunks *out)
{
    if (!runs || !cfg || !tokenize || !out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "prompt chunks: NULL argument");
    if (cfg->chunk_length < 1 || cfg->chunk_length > (1 << 20))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "prompt chunks: chunk length %d outside 1..%d", cfg->chunk_length,
                        1 << 20);
    builder b = {cfg, NULL, NULL, 0, -1, out};
    b.tok = ldm_malloc((size_t)cfg->chunk_length * sizeof *b.tok);
    b.mult = ldm_malloc((size_t)cfg->chunk_length * sizeof *b.mult);
    ldm_status st = b.tok && b.mult ? LDM_OK : ldm_alloc_failure_status();
    for (int i = 0; i < runs->count && st == LDM_OK; i++) st = add_run(&b, &runs->items[i], tokenize, user);
    if (st == LDM_OK && (b.len > 0 || out->n_chunks == 0)) st = close_chunk(&b);
    ldm_free(b.tok);
    ldm_free(b.mult);
    return st;
}

void lpr_chunks_free(lpr_chunks *chunks)
{
    if (!chunks) return;
    ldm_free(chunks->ids);
    ldm_free(chunks->weights);
    memset(chunks, 0, sizeof *chunks);
}

void lpr_empty_chunk(const lpr_chunk_cfg *cfg, int64_t *ids, float *weights)
{
    int row = cfg->chunk_length + 2;
    for (int i = 0; i < row; i++) {
        ids[i] = i == 0 ? cfg->id_start : cfg->id_end;
        weights[i] = 1.0f;
    }
    apply_pad(cfg, ids, row);
}
