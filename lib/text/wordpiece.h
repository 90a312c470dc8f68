/* wordpiece.h - bert-base-uncased WordPiece as HF BertTokenizerFast runs it (LDM text2img's
 * BERTEmbedder): special tokens matched in the raw text, BertNormalizer (clean, CJK spacing,
 * NFD + strip Mn, lowercase), BertPreTokenizer (whitespace + punctuation), WordPiece with '##'
 * continuations and max 100 chars per word. */
#ifndef LDM_TEXT_WORDPIECE_H
#define LDM_TEXT_WORDPIECE_H

#include "../core/common.h"

typedef struct ltx_wordpiece ltx_wordpiece;

/* vocab.txt: one token per line, id = 0-based line number (a repeated token keeps its last id).
 * [CLS], [SEP], [PAD] and [UNK] must be present. */
ldm_status ltx_wordpiece_load(const char *path, ltx_wordpiece **out);
void ltx_wordpiece_free(ltx_wordpiece *wp);
int32_t ltx_wordpiece_cls_id(const ltx_wordpiece *wp);
int32_t ltx_wordpiece_sep_id(const ltx_wordpiece *wp);
int32_t ltx_wordpiece_pad_id(const ltx_wordpiece *wp);
int32_t ltx_wordpiece_unk_id(const ltx_wordpiece *wp);

/* Ids of one prompt without [CLS]/[SEP], at most max_ids (the rest would be truncated). */
ldm_status ltx_wordpiece_encode(const ltx_wordpiece *wp, const char *text, const char *what, int64_t *ids,
                                size_t max_ids, size_t *n_ids);

#endif
