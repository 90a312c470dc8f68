/* train_config.h - what a reference training config says beyond the architecture (which
 * ld_config_load reads): learning rate and its schedule, batch size, step limits, EMA, loss
 * options, the first stage's checkpoint, label dropout. Keys and defaults are those of the
 * reference code that reads them (main.py, ldm/models/diffusion/ddpm.py, autoencoder.py,
 * lr_scheduler.py, contperceptual.py). */
#ifndef LDM_TRAIN_TRAIN_CONFIG_H
#define LDM_TRAIN_TRAIN_CONFIG_H

#include "../models/desc.h"
#include "loss.h"
#include "optim.h"

#define LTR_MAX_CYCLES 8

typedef enum { LTR_SCHED_NONE, LTR_SCHED_LINEAR, LTR_SCHED_COSINE, LTR_SCHED_COSINE2 } ltr_sched_kind;

typedef struct ltr_config {
    ld_model model;
    double base_learning_rate;      /* model.base_learning_rate (required, as main.py reads it) */
    int batch_size;                 /* data.params.batch_size (default 1) */
    int64_t max_steps;              /* lightning.trainer.max_steps (0: none) */
    int accumulate_grad_batches;    /* lightning.trainer.accumulate_grad_batches (1) */
    int cond_stage_trainable;       /* model.params.cond_stage_trainable (False) */
    int scale_by_std;               /* model.params.scale_by_std (False) */
    ltr_loss_type loss_type;        /* model.params.loss_type (l2) */
    double l_simple_weight;         /* (1.0) */
    double original_elbo_weight;    /* (0.0) */
    double kl_weight;               /* autoencoder lossconfig.params.kl_weight (1.0) */
    double logvar_init;             /* autoencoder lossconfig.params.logvar_init, or LatentDiffusion's
                                       model.params.logvar_init (0.0) */
    int learn_logvar;               /* LatentDiffusion model.params.learn_logvar (False): logvar [T] is
                                       the trained parameter "logvar" */
    int has_disc_or_perceptual;     /* lossconfig enables LPIPS or a discriminator (not trained) */
    char first_stage_ckpt[1024];    /* first_stage_config.params.ckpt_path ("" when absent) */
    /* scheduler_config */
    ltr_sched_kind sched;
    int n_cycles;
    double warm_up[LTR_MAX_CYCLES], f_min[LTR_MAX_CYCLES], f_max[LTR_MAX_CYCLES], f_start[LTR_MAX_CYCLES],
        cycle_lengths[LTR_MAX_CYCLES];
    ltr_warmup_cosine cosine; /* LambdaWarmUpCosineScheduler */
} ltr_config;

/* Reads the config file. Errors name the file, line and key. */
ldm_status ltr_config_load(const char *path, ltr_config *out);
ldm_status ltr_config_parse(const char *text, size_t len, const char *name, ltr_config *out);
/* The learning-rate multiplier of optimiser step n (1 without a scheduler). */
ldm_status ltr_config_lr_lambda(const ltr_config *c, int64_t n, double *lambda);

#endif
