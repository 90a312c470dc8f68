/* text.h - tokenizers as the rest of the library uses them (the conditioner glue calls these,
 * the public ldm_tokenizer_* functions wrap them). A loaded tokenizer is never modified, so one
 * handle may encode on several threads at once. Layout tokens: layout.h. */
#ifndef LDM_TEXT_TEXT_H
#define LDM_TEXT_TEXT_H

#include "../core/common.h"

/* Loads the vocabulary of a tokenizer family: bpe_simple_vocab_16e6.txt.gz (CLIP, OPENCLIP) or
 * a WordPiece vocab.txt (BERT). Errors name the path (missing file: LDM_ERR_NOT_FOUND; unreadable:
 * LDM_ERR_IO; corrupt gzip or wrong content: LDM_ERR_FORMAT). */
ldm_status ltx_tokenizer_load(ldm_tokenizer_kind kind, const char *vocab_path, ldm_tokenizer **out);
void ltx_tokenizer_free(ldm_tokenizer *tok);

/* Encodes n_prompts UTF-8 prompts into ids[n_prompts * context_length] (row-major):
 *   CLIP      [49406] + bpe[:ctx-2] + [49407], padded with 49407 (HF CLIPTokenizer, SD 1.x)
 *   OPENCLIP  [49406] + bpe[:ctx-2] + [49407], padded with 0     (open_clip.tokenize, SD 2.x)
 *   BERT      [CLS] + wordpiece[:ctx-2] + [SEP], padded with [PAD] (BertTokenizerFast)
 * context_length >= 2 (77 for every supported model). Invalid UTF-8 is LDM_ERR_INVALID_ARGUMENT. */
ldm_status ltx_tokenizer_encode(const ldm_tokenizer *tok, const char *const *prompts, int n_prompts,
                                int context_length, int64_t *ids);

/* The ids of one text without start/end tokens and without truncation (the family's clean-up
 * included): *ids is allocated with ldm_malloc (at least one element), *n_ids may be 0. */
ldm_status ltx_tokenizer_ids(const ldm_tokenizer *tok, const char *text, const char *what, int64_t **ids,
                             size_t *n_ids);
/* The family's framing: start, end and padding ids (CLIP pads with end, OpenCLIP with 0, BERT
 * with [PAD]). */
void ltx_tokenizer_framing(const ldm_tokenizer *tok, int64_t *start, int64_t *end, int64_t *pad);
/* The id of text the vocabulary lacks (BERT [UNK]); -1 when every text has ids (byte-level BPE). */
int64_t ltx_tokenizer_unknown_id(const ldm_tokenizer *tok);

#endif
