/* train_text.h - the frozen text conditioner of caption-conditioned training (issue #13):
 * LatentDiffusion with cond_stage_trainable false computes c = cond_stage_model.encode(captions)
 * without gradients, so the trainer runs the inference text encoders of lib/models (CLIP,
 * OpenCLIP, BERTEmbedder) once per batch and puts c on the tape as a constant input.
 *
 * The encoder's weights (cond_stage_model.*) are read from the first of the given checkpoints
 * that has them (the run's own last checkpoint on resume, the fine-tuned checkpoint, the first
 * stage's file), and written back into the run's checkpoints so they load as whole models. */
#ifndef LDM_TRAIN_TRAIN_TEXT_H
#define LDM_TRAIN_TRAIN_TEXT_H

#include "../core/ctx.h"
#include "../io/weights.h"
#include "../models/desc.h"

typedef struct ltr_text ltr_text;

/* 1 for the conditioner kinds that take captions. */
int ltr_text_kind(ld_cond_kind k);

/* Opens the encoder of model m from the first of paths[0..n) (NULL entries skipped) holding
 * cond_stage_model.* weights, and its tokenizer: the vocabulary at vocab_path (file or folder),
 * else $LDM_VOCAB, else the folder of that checkpoint. Errors say what is missing and where. */
ldm_status ltr_text_open(const ld_model *m, const char *const *paths, int n, const char *vocab_path, ltr_text **out);
void ltr_text_free(ltr_text *tx);

/* Context length and width of the encoder's output. */
int ltr_text_tokens(const ltr_text *tx);
int ltr_text_width(const ltr_text *tx);

/* c [n, tokens, width] for n captions (NULL = ""), into out. */
ldm_status ltr_text_encode(ltr_text *tx, const lctx *c, const char *const *captions, int n, float *out);

/* The store the weights came from and the prefix of its keys ("cond_stage_model."), for the
 * checkpoint writer. */
const lw_store *ltr_text_store(const ltr_text *tx);

#endif
