/* trainer_internal.h - the state of an ldm_trainer (include/ldm.h), shared by trainer.c (setup
 * and the public calls), train_step.c (one optimiser step of each objective) and
 * train_save.c (checkpoints, resume). */
#ifndef LDM_TRAIN_TRAINER_INTERNAL_H
#define LDM_TRAIN_TRAINER_INTERNAL_H

#include "ldm.h"

#include "../core/ctx.h"
#include "../io/weights.h"
#include "../models/autoencoder.h"
#include "../sampling/sampling.h"
#include "data.h"
#include "optim.h"
#include "tape.h"
#include "train_config.h"

#include <stdatomic.h>

struct ldm_trainer {
    ltr_config cfg;
    char *config_path, *data_dir, *out_dir, *first_stage_path, *init_from;
    ldm_train_params p; /* strings point at the copies above */
    int is_diffusion;
    int cpu_held; /* holds the kernel family (lk_cpu_hold) until freed */
    int image_size;      /* pixels fed to the network (AE) or to the first stage (LDM) */
    int latent_size;     /* LDM: image_size / factor */
    int latent_channels; /* LDM: the first stage's embed_dim */
    int batch;
    double lr;         /* the base learning rate after scale_lr */
    double cond_drop;  /* share of labels replaced by the unconditional class */
    int uncond_class;  /* n_classes - 1 when label dropout is on */

    lpool *pool;
    atomic_int cancel;
    lctx c;

    ltr_dataset *data;
    ltp_params *ps;
    ltp_tape *tape;
    ltr_param *plist;
    size_t n_plist;
    ltr_adamw *opt;

    /* EMA (LDM with use_ema): one shadow per UNet parameter */
    int use_ema;
    ltr_ema ema;
    float **shadow;
    ltr_ema_pair *pairs;
    size_t n_pairs;

    /* LDM: the frozen first stage and the schedule */
    lw_store *fs_store;
    const char *fs_prefix;
    lae *fs;
    ls_schedule *sched;
    float scale_factor;
    int scale_factor_known; /* scale_by_std: computed from the first batch (or read on resume) */

    /* batch buffers */
    float *images, *x0, *noise, *xt, *target, *dout, *aux;
    int64_t *labels;
    int *timesteps;
    float *tsteps_f;
    /* LDM loss: register_schedule's lvlb_weights [T], the fixed logvar [T] (learn_logvar False),
     * d loss / d logvar [T] */
    float *lvlb, *logvar_fixed, *dlogvar;

    ldm_train_progress prog;
    int64_t planned;

    /* fine-tuning (train_finetune.c): LoRA adapters, the frozen text encoder of caption models */
    ltr_lora lora;          /* in effect (rank 0: none) */
    struct ltr_text *text;  /* NULL unless the conditioner takes captions */
    double caption_drop;    /* share of captions replaced by "" */
    float *context;         /* [batch, tokens, width] of the current batch */
    const char **captions;  /* [batch] */
    char *vocab_path;
};

/* train_step.c */
ldm_status ltr_declare_params(ldm_trainer *t);
ldm_status ltr_train_step(ldm_trainer *t, double *loss);

/* train_finetune.c */
/* The run's LoRA settings and caption dropout from params and config, and what they require. */
ldm_status ltr_finetune_check(ldm_trainer *t);
/* Opens the frozen text encoder of a caption model (after the first stage). */
ldm_status ltr_finetune_open_text(ldm_trainer *t, const char *resume_path);
/* After the parameters are declared: LoRA freezes every base weight. */
ldm_status ltr_finetune_freeze(ldm_trainer *t);
/* Caption models: dropout on the batch's captions, then t->context = the encoder's output. */
ldm_status ltr_finetune_context(ldm_trainer *t, int64_t draw, int B);
void ltr_finetune_free(ldm_trainer *t);

/* train_save.c */
ldm_status ltr_save_checkpoint(ldm_trainer *t);
ldm_status ltr_export(ldm_trainer *t, const char *path, int half);
ldm_status ltr_load_weights(ldm_trainer *t, const char *path, int resume);
ldm_status ltr_load_optimizer_state(ldm_trainer *t, const char *path);
/* The parameter's name in the reference state dict's EMA copy. */
void ltr_ema_key(const char *name, char *out, size_t cap);

#endif
