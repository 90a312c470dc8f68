/* prompt.h - prompts as users write them (issue #14, docs/prompts.md), independent of any text
 * encoder so that every tokenizer and tower (CLIP, OpenCLIP, BERT, later SDXL's two) reuses it:
 *
 *   lpr_parse   the emphasis syntax of AUTOMATIC1111/stable-diffusion-webui
 *               (modules/prompt_parser.py parse_prompt_attention): "(a:1.3)", "(a)" x1.1,
 *               "[a]" /1.1, nesting, unbalanced brackets, the escapes \( \) \[ \] \\, "BREAK",
 *               runs of equal weight merged. Output: (text, weight) runs as webui's list.
 *   lpr_chunk   webui's FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line
 *               (modules/sd_hijack_clip.py): each run tokenized on its own, the tokens packed
 *               into chunks of chunk_length, a chunk closed early at a comma when the chunk
 *               fills up within comma_backtrack tokens of it, at BREAK, then each chunk padded
 *               with the end id and wrapped in start/end ids.
 *
 * The weights are applied to the text tower's output by the caller (lib/api/prompt_cond.c). */
#ifndef LDM_TEXT_PROMPT_H
#define LDM_TEXT_PROMPT_H

#include "../core/common.h"

/* One run of text of equal weight. A BREAK keyword is the run ("BREAK", -1), as webui marks it
 * (a BREAK inside brackets has its -1 multiplied and is then ordinary text, as in webui). */
typedef struct lpr_run {
    char *text;    /* UTF-8, NUL-terminated, owned by the list */
    double weight; /* the product of the bracket multipliers, in double like Python's float */
} lpr_run;

typedef struct lpr_runs {
    lpr_run *items;
    int count, cap;
} lpr_runs;

/* Parses `prompt` (NUL-terminated UTF-8) into runs (zero-initialise *out first; free with
 * lpr_runs_free, also after a failure). Invalid UTF-8 and a weight that is not a number where
 * webui's float() would raise (e.g. "(a:1.2.3)", "(a:.)") are LDM_ERR_INVALID_ARGUMENT. */
ldm_status lpr_parse(const char *prompt, lpr_runs *out);
/* The whole prompt as one run of weight 1 (webui's emphasis option "None"). */
ldm_status lpr_parse_plain(const char *prompt, lpr_runs *out);
void lpr_runs_free(lpr_runs *runs);
/* Whether a run is webui's BREAK marker. */
int lpr_is_break(const lpr_run *run);

/* The token ids of one run's text without start/end tokens and without truncation (the
 * tokenizer's own clean-up included). *ids is allocated with ldm_malloc; the caller frees it. */
typedef ldm_status (*lpr_tokenize_fn)(void *user, const char *text, int64_t **ids, size_t *n_ids);

typedef struct lpr_chunk_cfg {
    int chunk_length;    /* tokens of prompt text per chunk (webui: 75 = context 77 - 2) */
    int64_t id_start;    /* wraps every chunk */
    int64_t id_end;      /* ends every chunk and pads it */
    int64_t id_pad;      /* when != id_end, every id after the first id_end of a chunk becomes
                            id_pad (webui's process_tokens for OpenCLIP: 0) */
    int64_t id_comma;    /* the id of "," (-1: none) */
    int comma_backtrack; /* webui's comma_padding_backtrack (default 20; 0: off) */
} lpr_chunk_cfg;

/* The chunks of one prompt: n_chunks rows of chunk_length + 2 ids and their weights (float, as
 * webui's torch.asarray of the multipliers). */
typedef struct lpr_chunks {
    int n_chunks, row;
    int64_t *ids;
    float *weights;
} lpr_chunks;

/* Chunks of one parsed prompt (zero-initialise *out; free with lpr_chunks_free). At least one
 * chunk; an empty prompt gives start + end + padding. Weights that are not finite are
 * LDM_ERR_INVALID_ARGUMENT. */
ldm_status lpr_chunk(const lpr_runs *runs, const lpr_chunk_cfg *cfg, lpr_tokenize_fn tokenize, void *user,
                     lpr_chunks *out);
void lpr_chunks_free(lpr_chunks *chunks);
/* webui's empty_chunk: start, then end ids, weights 1 (the pad rule applied): what a prompt with
 * fewer chunks than the longest of its batch gets. row = chunk_length + 2 entries each. */
void lpr_empty_chunk(const lpr_chunk_cfg *cfg, int64_t *ids, float *weights);

/* ---- weights on the text tower's output (prompt_emphasis.c) */

/* webui's EmphasisOriginal.after_transformers (modules/sd_emphasis.py) on one chunk's output z
 * [row, dim] with the chunk's weights [row]:
 *     original_mean = z.mean();  z = z * weights;  z = z * (original_mean / z.mean())
 * (normalize 0: the last step is left out, webui's "No norm"). Means are accumulated in double
 * and rounded to float like torch's float32 results. A chunk whose weights are all 1 is left
 * untouched (webui's arithmetic is then the identity). */
void lpr_emphasis(float *z, const float *weights, int row, int dim, int normalize);

/* ---- a tokenizer family's chunks (prompt_tokens.c) */

/* The chunk settings of a tokenizer for a context of context_length ids (chunk_length =
 * context_length - 2, its framing, the id its vocabulary gives ",", webui's default backtrack of
 * 20 or 0 with LDM_PROMPT_NO_COMMA_BACKTRACK). */
ldm_status lpr_tokenizer_cfg(const ldm_tokenizer *tok, int context_length, unsigned flags, lpr_chunk_cfg *cfg);
/* Parse (lpr_parse, or lpr_parse_plain with LDM_PROMPT_NO_EMPHASIS) and chunk one prompt with a
 * tokenizer. */
ldm_status lpr_tokenizer_chunks(const ldm_tokenizer *tok, const lpr_chunk_cfg *cfg, const char *prompt, unsigned flags,
                                lpr_chunks *out);

#endif
