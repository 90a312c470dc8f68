/* bpe.h - openai CLIP's byte-level BPE (SimpleTokenizer), shared by SD 1.x (HF CLIPTokenizer)
 * and SD 2.x (open_clip.tokenize): text clean-up, word splitting, merges. */
#ifndef LDM_TEXT_BPE_H
#define LDM_TEXT_BPE_H

#include "unicode.h"

/* ---- text pre-processing (clip_pretok.c) */

/* CLIP's clean-up of one prompt: html.unescape twice, strip, collapse \s+ to ' ', strip,
 * str.lower (ftfy.fix_text is the identity for NFC text). `what` names the text in errors. */
ldm_status ltx_clip_clean(const char *text, size_t len, const char *what, ltx_cpbuf *out);

/* The next match of the split pattern
 *   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 * (IGNORECASE) in s[0..n) at or after *pos: sets [*start, *end), advances *pos, returns 1;
 * returns 0 when there is none. */
int ltx_clip_next_word(const uint32_t *s, size_t n, size_t *pos, size_t *start, size_t *end);

/* ---- vocabulary and merges (bpe.c) */

typedef struct ltx_bpe ltx_bpe;

/* Loads bpe_simple_vocab_16e6.txt.gz (gzip or plain): merges are lines 1..48894, the vocabulary
 * is the 256 byte symbols, their '</w>' forms, the merges joined, then <|startoftext|> and
 * <|endoftext|> (ids 49406, 49407). */
ldm_status ltx_bpe_load(const char *path, ltx_bpe **out);
void ltx_bpe_free(ltx_bpe *bpe);
int32_t ltx_bpe_start_id(const ltx_bpe *bpe);
int32_t ltx_bpe_end_id(const ltx_bpe *bpe);

/* Token ids of one prompt (clean-up, split, BPE per word), without start/end tokens. Stops
 * after max_ids ids: every caller truncates there, and later words cannot change earlier ids. */
ldm_status ltx_bpe_encode(const ltx_bpe *bpe, const char *text, const char *what, int64_t *ids,
                          size_t max_ids, size_t *n_ids);

#endif
