/* model_internal.h - what a loaded ldm_model holds, shared by the lib/api/ files. */
#ifndef LDM_API_MODEL_INTERNAL_H
#define LDM_API_MODEL_INTERNAL_H

#include "../core/common.h"
#include "../core/ctx.h"
#include "../core/tensor.h"
#include "../io/weights.h"
#include "../models/desc.h"
#include "../sampling/sampling.h"

#include <stdatomic.h>

struct lae;
struct lunet;
struct lclip;
struct lbert;
struct lclass;
struct lrescaler;
struct lm_loras;
struct ltae;

struct ldm_autoencoder {
    ldm_model *model;
    struct lae *net;
};

struct ldm_unet {
    ldm_model *model;
    struct lunet *net;
};

struct ldm_conditioner {
    ldm_model *model;
    ld_cond_kind kind;
    struct lclip *clip;
    struct lbert *bert;
    struct lclass *cls;
    struct lrescaler *rescaler;
    ldm_tokenizer *tokenizer; /* text kinds, loaded on first encode_text */
    struct lsdxl_cond *sdxl;  /* sgm GeneralConditioner (SDXL) */
    ldm_tokenizer *sdxl_tok[LD_MAX_EMBEDDERS]; /* per text encoder, loaded on first use */
};

struct ldm_model {
    char *path;
    char *config_path;              /* the YAML config the description came from, NULL: detected */
    lw_store *store;
    ld_model desc;
    const char *first_stage_prefix; /* "first_stage_model." or "" for a standalone autoencoder */
    int use_ema;
    char *vocab_path;               /* as given (file or directory), NULL: search */
    char *description;
    lpool *pool;
    atomic_int cancel;
    lctx ctx;
    size_t max_alloc;
    ldm_log_callback log;
    void *log_user;
    ls_schedule *schedule;          /* DDPM buffers: computed from the config, replaced by the
                                       checkpoint's stored ones (what the reference samples with) */
    /* components, created on first use */
    struct ldm_autoencoder *ae;
    struct ldm_unet *unet;
    struct ldm_conditioner *cond;
    struct lm_loras *loras;         /* LoRAs merged into the weights (lora.c), NULL: none yet */
    /* tiny autoencoder (tiny.c): the files that gave the decoder and the encoder (may be one) and
     * which autoencoder the running call encodes and decodes with (an ldm_vae_choice) */
    struct ltae *tiny_dec, *tiny_enc;
    int vae_in_use;
    int cpu_held;                   /* holds the kernel family (lk_cpu_hold) until freed */
};

/* Loading steps shared by files and built-in models: a new model with its params read, the rest
 * once m->store and m->desc are set, and the cleanup of a failed load. */
/* builtin_trained.c: the trained built-in models shipped as files ("glyphs"). */
int lm_is_trained_builtin(const char *name);
ldm_status lm_load_trained_builtin(const char *name, const ldm_model_params *params, ldm_model **out);
ldm_status lm_model_new(const char *label, const ldm_model_params *params, ldm_model **out, ldm_model_params *p);
ldm_status lm_load_from(ldm_model *m, const ldm_model_params *p);
/* diffusers_load.c: a diffusers folder's store and description (config_path: the caller's YAML,
 * which then describes the model instead of the folder's JSON). */
ldm_status lm_open_diffusers(ldm_model *m, const char *path, const char *config_path);
void lm_model_discard(ldm_model *m);
void lm_free_components(ldm_model *m);
/* lora.c: the LoRA state and merged copies (the store's overrides are restored). */
void lm_loras_free(ldm_model *m);
/* Between the phases of a generation (text encoding, sampling, decoding): the weights of the
 * phase just finished leave the resident set (they stay in the page cache and come back on the
 * next use), the kernels' scratch cache is emptied and free heap memory returned. This is what
 * keeps the peak near the largest phase instead of the sum of all (docs/performance.md). */
void lm_release_memory(ldm_model *m);

/* Starts a top-level (public) call on model `m` named `fn`: clears a stale interrupt and caps this
 * thread's allocations at the smaller nonzero of the model's max_alloc_bytes and the thread's own
 * cap until the calling FUNCTION returns, by whatever path: the cap in force on entry is saved in
 * a variable whose cleanup puts it back, so no early return can leave the model's cap set on the
 * thread (D9). A statement list, not an expression: write it at function scope, after the
 * argument checks that return before any work. Returns LDM_ERR_INVALID_ARGUMENT for a NULL m. */
#define LM_BEGIN(m, fn)                                                                            \
    LM_CAP_SCOPE();                                                                                \
    LDM_TRY(lm_begin((m), (fn)))
/* Only the cap part of LM_BEGIN (loaders, which have no model yet). The variable is only read by
 * its cleanup function, which clang's -Wunused-variable does not count as a use. */
#define LM_CAP_SCOPE()                                                                             \
    size_t lm_saved_cap_ __attribute__((cleanup(lm_restore_cap), unused)) = ldm_alloc_get_cap()
void lm_restore_cap(const size_t *saved);
/* The body of LM_BEGIN; never call it without the scope, or the model's cap outlives the call. */
ldm_status lm_begin(ldm_model *m, const char *fn);
void lm_log(const ldm_model *m, ldm_log_level level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* tiny.c: frees the model's tiny autoencoder; encode/decode with it (lp_encode_latent and
 * lp_decode call these while vae_in_use is LDM_VAE_TINY). */
void lm_tiny_release(ldm_model *m);
ldm_status lm_tiny_decode(ldm_model *m, const ldm_tensor *z, int tile, ldm_tensor **image);
ldm_status lm_tiny_encode(ldm_model *m, const ldm_tensor *x, ldm_tensor **z);

/* Components, created on first use. */
ldm_status lm_autoencoder(ldm_model *m, struct ldm_autoencoder **out);
ldm_status lm_unet(ldm_model *m, struct ldm_unet **out);
ldm_status lm_conditioner(ldm_model *m, struct ldm_conditioner **out);

/* Conditioner calls for use inside the library (no lm_begin: a running call's interrupt must not
 * be cleared by the calls it makes). */
ldm_status lm_cond_encode_tokens(struct ldm_conditioner *cond, const ldm_tensor *tokens, ldm_tensor **out);
ldm_status lm_cond_encode_labels(struct ldm_conditioner *cond, const ldm_tensor *labels, ldm_tensor **out);
ldm_status lm_cond_encode_image(struct ldm_conditioner *cond, const ldm_tensor *x, ldm_tensor **out);
ldm_status lm_cond_encode_text(struct ldm_conditioner *cond, const char *const *prompts, int n_prompts,
                               ldm_tensor **out);
/* Text conditioners: the tokenizer (loaded on first use from the vocabulary found as
 * text_cond.c says) and the token context of one encoder call (77; BERT: max_seq_len). */
ldm_status lm_cond_tokenizer(struct ldm_conditioner *cond);
int lm_cond_context_length(const struct ldm_conditioner *cond);
/* Prompts with webui's syntax and length rules (prompt_cond.c, docs/prompts.md): [n, row * k, D]
 * with k = the largest chunk count of the prompts and at least min_chunks (shorter prompts get
 * webui's empty chunks); flags are LDM_PROMPT_*. */
ldm_status lm_cond_encode_prompts(struct ldm_conditioner *cond, const char *const *prompts, int n_prompts,
                                  unsigned flags, int min_chunks, ldm_tensor **out);
/* The number of chunks a prompt takes (tokenization only). */
ldm_status lm_cond_prompt_chunk_count(struct ldm_conditioner *cond, const char *prompt, unsigned flags, int *n_chunks);
/* SDXL (sdxl_api.c): the conditioner's network, and one encode without lm_begin. */
ldm_status lm_sdxl_cond_create(ldm_model *m, struct ldm_conditioner *h);
void lm_sdxl_cond_free(struct ldm_conditioner *h);
ldm_status lm_cond_encode_sdxl(struct ldm_conditioner *cond, const ldm_sdxl_cond_params *p, ldm_tensor **crossattn,
                               ldm_tensor **vector);
/* Text encoder k's tokenizer, loaded on first use (sdxl_api.c). */
ldm_status lm_sdxl_tokenizer(struct ldm_conditioner *cond, int k, ldm_tokenizer **tok);
/* p->prompts with webui's syntax and length rules on every text tower (sdxl_prompt.c,
 * docs/prompts.md): crossattn [B, 77*k, D] with k = the largest chunk count of the prompts over
 * the towers and at least min_chunks; vector from the first chunk. p is already read and
 * checked; p->prompt_flags are LDM_PROMPT_*. */
ldm_status lm_cond_encode_sdxl_prompts(struct ldm_conditioner *cond, const ldm_sdxl_cond_params *p, int min_chunks,
                                       ldm_tensor **crossattn, ldm_tensor **vector);
/* The chunk count of prompt over the text towers (tokenization only). */
ldm_status lm_sdxl_prompt_chunk_count(struct ldm_conditioner *cond, const char *prompt, unsigned flags, int *n_chunks);
/* The SDXL UNet call, guided when uncond_* are given (sdxl_sample.c). */
ldm_status lm_sdxl_apply(ldm_model *m, const ldm_tensor *x, const ldm_tensor *timesteps, const ldm_tensor *ca,
                         const ldm_tensor *vec, const ldm_tensor *uca, const ldm_tensor *uvec, float scale,
                         ldm_tensor **out);
/* CLIP BPE vocabulary search (text_cond.c). */
ldm_status lm_find_vocab(const ldm_model *m, int bert, char *out, size_t cap);

/* The UNet on already-batched inputs; cond is routed as the model's conditioning_key says
 * (crossattn: context; concat: channels appended to x). Timesteps F32 or I64 [B]. */
ldm_status lm_apply(ldm_model *m, const ldm_tensor *x, const ldm_tensor *t, const ldm_tensor *cond, ldm_tensor **out);
/* lm_apply with the LCM guidance embedding of *guidance_scale for the whole batch (NULL: none). */
ldm_status lm_apply_w(ldm_model *m, const ldm_tensor *x, const ldm_tensor *t, const ldm_tensor *cond,
                      const float *guidance_scale, ldm_tensor **out);
/* The number of classes when the UNet itself is class-conditional (num_classes: label_emb) with no
 * cond stage feeding it otherwise (conditioning_key None or adm): then lm_apply's cond is the
 * class labels y, I64 [B] (UNetModel.forward(x, t, y=...)); 0 otherwise. */
int lm_label_emb_classes(const ldm_model *m);

#endif
