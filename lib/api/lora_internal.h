/* lora_internal.h - LoRA merging (docs/lora.md): the names a LoRA file may give each weight of a
 * model (lora_names.c), the files read into low-rank deltas and merged (lora.c). */
#ifndef LDM_API_LORA_INTERNAL_H
#define LDM_API_LORA_INTERNAL_H

#include "../io/weights.h"
#include "../models/desc.h"

typedef enum { LORA_UNET = 0, LORA_TEXT = 1 } lora_component;

/* A weight a LoRA may change: its store name (the one the networks read, i.e. the EMA copy when
 * the model samples with EMA weights), rows x cols as a matrix (a conv kernel [O,I,kh,kw] is
 * O x I*kh*kw). */
typedef struct lora_weight {
    char *name;
    int64_t rows, cols;
    lora_component component;
} lora_weight;

/* A LoRA module name and the rows [row0, row0 + rows) of weight `weight` it reaches (all rows but
 * for SD2's fused q/k/v projection). */
typedef struct lora_key {
    char *key;
    int weight;
    int64_t row0, rows;
} lora_key;

typedef struct lora_names {
    lora_weight *w;
    size_t n_w, cap_w;
    lora_key *k;
    size_t n_k, cap_k;
} lora_names;

/* Every spelling of every LoRA-able weight of the model's UNet (prefix model.diffusion_model.,
 * EMA names when use_ema) and text towers: kohya's flattened CompVis and diffusers UNet paths,
 * diffusers' dotted `unet.` paths, the text towers of lora_names.c's table. Sorted by key. */
ldm_status lora_names_build(const lw_store *s, const ld_model *desc, int use_ema, lora_names *out);
const lora_key *lora_names_find(const lora_names *n, const char *key);
void lora_names_free(lora_names *n);

#endif
