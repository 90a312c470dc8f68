/* lora.h - LoRA adapters on the training UNet (issue #13): low-rank updates of the
 * SpatialTransformer's linear layers, trained while the base weights stay frozen, and the
 * adapter file in the kohya / webui layout that other tools load.
 *
 * What kohya-ss/sd-scripts networks/lora.py (commit 48d368fa557731ad0488c07304dfeba8c07910eb)
 * does by default, and so does this:
 *   - targets (LoRANetwork.UNET_TARGET_REPLACE_MODULE = Transformer2DModel, i.e. the CompVis
 *     SpatialTransformer): every Linear and 1x1 Conv2d inside it: proj_in, proj_out, and per
 *     transformer block attn1/attn2 .to_q .to_k .to_v .to_out.0, ff.net.0.proj, ff.net.2;
 *   - LoRAModule.__init__: lora_down = Linear(in, r, bias=False) (a 1x1 Conv2d for a 1x1 conv),
 *     kaiming_uniform_(a=sqrt 5) (bound 1/sqrt(in)); lora_up = Linear(r, out, bias=False),
 *     zeros; scale = alpha / r (alpha 0 means alpha = r); dropout, rank and module dropout off;
 *   - LoRAModule.forward: org_forward(x) + lora_up(lora_down(x)) * multiplier * scale
 *     (multiplier 1 in training).
 * The 3x3 convolutions of ResBlocks (LoCon, conv_dim) are not adapted.
 *
 * Parameter names in the training state (checkpoints, resume): "lora." + the CompVis module
 * path + ".lora_down.weight" / ".lora_up.weight", e.g.
 * lora.model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.lora_down.weight.
 * The exported file uses kohya's names instead (ltr_lora_write). */
#ifndef LDM_TRAIN_LORA_H
#define LDM_TRAIN_LORA_H

#include "../models/desc.h"
#include "../models/ytree.h"
#include "tape.h"

/* Which layers get adapters (bits). */
enum {
    LTR_LORA_ATTN = 1, /* attn1 / attn2: to_q, to_k, to_v, to_out.0 */
    LTR_LORA_FF = 2,   /* ff.net.0.proj (GEGLU projection), ff.net.2 */
    LTR_LORA_PROJ = 4, /* the SpatialTransformer's proj_in / proj_out */
    LTR_LORA_ALL = 7   /* kohya's default */
};

#define LTR_LORA_PARAM_PREFIX "lora."
#define LTR_LORA_MAX_RANK     4096

typedef struct ltr_lora {
    int rank;     /* 0: no adapters */
    double alpha; /* the stored alpha; scale = alpha / rank */
    unsigned targets;
} ltr_lora;

/* alpha / rank (kohya: alpha 0 means alpha = rank, i.e. scale 1). */
float ltr_lora_scale(const ltr_lora *l);

/* The `lora:` section of a training config: rank (0 or absent: none), alpha (default 1.0, as
 * kohya's --network_alpha; 0 = rank), targets (a list of attn, ff, proj; default all). Errors name
 * the file, line and key. */
ldm_status ltr_lora_read_config(const ld_ynode *root, const char *name, ltr_lora *out);

/* 1 when the CompVis module path `module` (no prefix, no ".weight": e.g.
 * "input_blocks.1.1.transformer_blocks.0.attn2.to_k") is an adapter target. */
int ltr_lora_is_target(const ltr_lora *l, const char *module);

/* y = base output of the module `module` (its full parameter prefix, e.g.
 * "model.diffusion_model.output_blocks.3.1.proj_in") on input x. Returns y + scale *
 * up(down(x)) when the module is a target (declaring the adapter's parameters on first use),
 * y itself otherwise. `conv` says the module is a 1x1 Conv2d on NCHW x. Errors latch in the tape. */
ltp_id ltr_lora_apply(ltp_tape *t, ltp_params *ps, const ltr_lora *l, const char *unet_prefix, const char *module,
                      ltp_id x, ltp_id y, int in, int out, int conv);

/* The kohya key stem of an adapted module: "lora_unet_" + the diffusers module path (SD 1.x/2.x
 * layouts, kohya's spelling for them) with '.' -> '_', or the CompVis path where the layout has
 * no diffusers spelling (resblock_updown UNets; kohya's own SDXL files use CompVis paths).
 * `module` is the CompVis path without prefix. 0 when it does not fit in cap. */
int ltr_lora_kohya_name(const ld_unet *d, const char *module, char *out, size_t cap);

/* Writes the adapters of `ps` (parameters named as above under unet_prefix) as a kohya LoRA
 * safetensors file: <stem>.lora_down.weight [r,in] ([r,in,1,1] for 1x1 convs),
 * <stem>.lora_up.weight [out,r] ([out,r,1,1]), <stem>.alpha (0-dim), all float16 when `half`
 * (kohya's default save precision) else float32; metadata as train_network.py writes its
 * minimum: ss_network_module networks.lora, ss_network_dim, ss_network_alpha, ss_network_args
 * absent, ss_v2, ss_base_model_version (model_util.get_model_version_str_for_sd1_sd2), plus
 * ss_training_comment naming libldm and the step. */
ldm_status ltr_lora_write(const char *path, const ltp_params *ps, const char *unet_prefix, const ld_model *m,
                          const ltr_lora *l, int half, int64_t step);

/* W += scale * up . down for every adapter of ps, into the base weights of `base` (which may be
 * ps itself): the merged model that equals the adapted one. */
ldm_status ltr_lora_merge(const ltp_params *ps, const char *unet_prefix, const ltr_lora *l, ltp_params *base);

#endif
