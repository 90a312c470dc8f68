/* train_finetune.c - the trainer's fine-tuning parts (trainer_internal.h): LoRA adapters on a
 * frozen base model (lora.h), and caption conditioning through a frozen text encoder
 * (train_text.h) with classifier-free caption dropout. */
#include "trainer_internal.h"

#include "train_text.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Philox stream of the caption draws: train_step.c uses 1..5; the dropout masks (tape.c) have a
 * counter layout of their own, keyed by the layer's site hash, and use no stream number. */
enum { STREAM_CAPTION = 6 };

static void say(const ldm_trainer *t, ldm_log_level level, const char *msg)
{
    if (t->p.log_callback) t->p.log_callback(level, msg, t->p.log_user_data);
}

ldm_status ltr_finetune_check(ldm_trainer *t)
{
    const ldm_train_params *p = &t->p;
    t->lora = t->cfg.lora;
    if (p->lora_rank < 0 || p->lora_rank > LTR_LORA_MAX_RANK)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_trainer_create: lora_rank %d outside [0, %d]", p->lora_rank,
                        LTR_LORA_MAX_RANK);
    if (isnan(p->lora_alpha) || isinf(p->lora_alpha))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_trainer_create: lora_alpha %g is not a number", p->lora_alpha);
    if (p->lora_rank > 0) t->lora.rank = p->lora_rank;
    if (p->lora_alpha >= 0) t->lora.alpha = p->lora_alpha;
    if (t->lora.rank > 0) {
        if (!t->is_diffusion)
            return ldm_fail(LDM_ERR_UNSUPPORTED,
                            "%s: LoRA adapters are for the diffusion model's UNet, not an "
                            "autoencoder",
                            t->config_path);
        if (!t->init_from && !p->resume)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                            "%s: LoRA fine-tunes an existing model: give the base "
                            "checkpoint (ldm_train_params.init_from, ldm train --init)",
                            t->config_path);
        if (t->use_ema) say(t, LDM_LOG_INFO, "LoRA: no EMA of the adapters (as kohya's train_network.py)");
        t->use_ema = 0;
    }
    const ld_model *m = &t->cfg.model;
    int text = t->is_diffusion && ltr_text_kind(m->cond.kind);
    if (text && t->cfg.cond_stage_trainable)
        return ldm_fail(LDM_ERR_UNSUPPORTED,
                        "%s: cond_stage_trainable: true with a text encoder (the LDM paper's "
                        "trainable BERT) needs the transformer's backward pass, which is not implemented; set "
                        "cond_stage_trainable: false to train the UNet on the frozen encoder",
                        t->config_path);
    if (text && m->conditioning_key != LD_CONDKEY_CROSSATTN)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: captions are supported through cross-attention (crossattn)",
                        t->config_path);
    double drop = t->cfg.caption_drop >= 0 ? t->cfg.caption_drop : 0.0;
    t->caption_drop = p->cond_drop_rate >= 0 ? p->cond_drop_rate : drop;
    return LDM_OK;
}

ldm_status ltr_finetune_open_text(ldm_trainer *t, const char *resume_path)
{
    if (!t->is_diffusion || !ltr_text_kind(t->cfg.model.cond.kind)) return LDM_OK;
    const char *fs = t->first_stage_path          ? t->first_stage_path
                     : t->cfg.first_stage_ckpt[0] ? t->cfg.first_stage_ckpt
                                                  : NULL;
    const char *paths[3] = {t->p.resume ? resume_path : NULL, t->init_from, fs};
    LDM_TRY(ltr_text_open(&t->cfg.model, paths, 3, t->vocab_path, &t->text));
    size_t n = (size_t)t->batch * ltr_text_tokens(t->text) * ltr_text_width(t->text);
    t->context = ldm_malloc(n * sizeof(float));
    t->captions = ldm_calloc((size_t)t->batch, sizeof *t->captions);
    if (!t->context || !t->captions) return ldm_alloc_failure_status();
    /* every image needs its caption: an image without one would silently train as unconditional */
    for (int64_t i = 0; i < ltr_dataset_count(t->data); i++)
        if (!ltr_dataset_caption(t->data, i))
            return ldm_fail(LDM_ERR_FORMAT,
                            "data %s: %s has no caption (a text-conditioned model needs a caption "
                            "per image in labels.csv; quote a caption made of digits)",
                            t->data_dir, ltr_dataset_file(t->data, i));
    return LDM_OK;
}

ldm_status ltr_finetune_freeze(ldm_trainer *t)
{
    if (t->lora.rank <= 0) return LDM_OK;
    LDM_TRY(ltp_params_set_trainable(t->ps, "model.diffusion_model.", 0));
    LDM_TRY(ltp_params_set_trainable(t->ps, "cond_stage_model.", 0));
    /* a learned logvar is part of the base model too (kohya trains adapters alone) */
    if (ltp_params_find(t->ps, "logvar")) LDM_TRY(ltp_params_set_trainable(t->ps, "logvar", 0));
    size_t adapters = 0;
    for (size_t i = 0; i < ltp_params_count(t->ps); i++) adapters += ltp_params_at(t->ps, i)->trainable;
    if (!adapters)
        return ldm_fail(LDM_ERR_UNSUPPORTED,
                        "%s: LoRA: the UNet has no SpatialTransformer layer to adapt "
                        "(targets %u)",
                        t->config_path, t->lora.targets);
    return LDM_OK;
}

/* Uniform in [0, 1) from Philox: draw i of `stream` at the seed. */
static double uniform01(uint64_t seed, uint64_t stream, uint64_t i)
{
    uint32_t ctr[4] = {(uint32_t)i, (uint32_t)(i >> 32), (uint32_t)stream, 0x7472u};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)}, o[4];
    ls_philox4x32_10(ctr, key, o);
    return (double)(((uint64_t)o[0] << 21) ^ (o[1] >> 11)) * (1.0 / 9007199254740992.0);
}

ldm_status ltr_finetune_context(ldm_trainer *t, int64_t draw, int B)
{
    if (!t->text) return LDM_OK;
    /* ucg_training: each caption independently replaced by "" with probability p */
    for (int b = 0; b < B; b++)
        if (t->caption_drop > 0 && uniform01(t->p.seed, STREAM_CAPTION, (uint64_t)draw * B + b) < t->caption_drop)
            t->captions[b] = "";
    return ltr_text_encode(t->text, &t->c, t->captions, B, t->context);
}

void ltr_finetune_free(ldm_trainer *t)
{
    ltr_text_free(t->text);
    ldm_free(t->context);
    ldm_free(t->captions);
    ldm_free(t->vocab_path);
}

int ldm_trainer_lora_rank(const ldm_trainer *t)
{
    return t ? t->lora.rank : -1;
}
