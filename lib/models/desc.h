/* desc.h - typed description of a latent diffusion model's architecture.
 *
 * Filled from the original CompVis/Stability YAML config (config.c) or detected from tensor names
 * and shapes (detect.c); consumed by the network builders. Field names follow the YAML keys. */
#ifndef LDM_MODELS_DESC_H
#define LDM_MODELS_DESC_H

#include "../core/common.h"

#define LD_MAX_LEVELS 8

/* ddconfig of ldm.modules.diffusionmodules.model.Encoder/Decoder + the autoencoder wrapper. */
typedef struct ld_autoencoder {
    int present;
    int is_vq;                   /* VQModel / VQModelInterface; else AutoencoderKL */
    int in_channels, out_ch, ch, z_channels, resolution;
    int ch_mult[LD_MAX_LEVELS], n_levels;
    int num_res_blocks;
    int attn_resolutions[LD_MAX_LEVELS], n_attn_resolutions; /* pixel resolutions w.r.t. `resolution` */
    int double_z;
    int attn_none;               /* attn_type: none (mid attention = Identity) */
    int embed_dim;               /* quant_conv output channels (KL: 2*embed_dim) */
    int n_embed;                 /* VQ codebook size */
} ld_autoencoder;

/* ldm.modules.diffusionmodules.openaimodel.UNetModel params. */
typedef struct ld_unet {
    int present;
    int in_channels, out_channels, model_channels;
    int num_res_blocks;
    int attention_resolutions[LD_MAX_LEVELS], n_attention_resolutions; /* downsample factors ds */
    int channel_mult[LD_MAX_LEVELS], n_levels;
    int num_heads;               /* -1 when num_head_channels is used */
    int num_head_channels;       /* -1 when num_heads is used */
    int use_spatial_transformer;
    int transformer_depth;       /* depth of every level's SpatialTransformer (and the middle one's) */
    /* sgm UNetModel (SDXL): a per-level transformer_depth list (n_transformer_depths == n_levels;
     * 0 = use transformer_depth everywhere) and the middle block's depth (0: derived: the last
     * level's, as sgm does, or transformer_depth; a zero-filled ld_unet keeps the old meaning). Read them through ld_unet_level_depth / ld_unet_middle_depth. */
    int transformer_depths[LD_MAX_LEVELS], n_transformer_depths;
    int transformer_depth_middle;
    int context_dim;             /* 0: none */
    int use_linear_in_transformer;
    int resblock_updown;
    int num_classes;             /* 0: not class-conditional via y */
    int adm_in_channels;         /* sgm num_classes "sequential": y [B, adm_in_channels] F32 through
                                  * label_emb.0 = Linear(adm, 4mc) -> SiLU -> Linear(4mc, 4mc); 0: none */
    int legacy;
    int use_scale_shift_norm;    /* ResBlock FiLM: emb_layers output 2*out_channels (lsun_churches) */
    /* Training-time options (inference ignores dropout and use_checkpoint). */
    double dropout;              /* ResBlock out_layers Dropout */
    int use_checkpoint;          /* recompute blocks in backward (lib/train) */
    int use_new_attention_order; /* AttentionBlock: QKVAttention instead of QKVAttentionLegacy */
    int time_cond_proj_dim;      /* LCM guidance embedding width (time_embed.cond_proj), 0: none */
    int no_conv_resample;        /* conv_resample: false: Downsample = avg-pool 2x2, Upsample = nearest
                                    x2, neither with a convolution (no parameters) */
} ld_unet;

typedef enum {
    LD_COND_NONE = 0,
    LD_COND_CLASS,
    LD_COND_CLIP,         /* FrozenCLIPEmbedder (HF CLIPTextModel keys) */
    LD_COND_OPENCLIP,     /* FrozenOpenCLIPEmbedder */
    LD_COND_BERT,         /* BERTEmbedder (x_transformer) */
    LD_COND_SPATIAL_RESCALER,
    LD_COND_FIRST_STAGE,  /* __is_first_stage__ */
    LD_COND_IDENTITY      /* __is_unconditional__ with concat of the raw input, or torch.nn.Identity */
} ld_cond_kind;

typedef struct ld_cond {
    ld_cond_kind kind;
    /* class */
    int n_classes, embed_dim;
    double ucg_rate;      /* ClassEmbedder label dropout from the config; < 0: not given */
    /* text towers (CLIP/OpenCLIP): width/layers/heads/vocab/ctx; layer_skip = number of final
     * blocks skipped (OpenCLIP "penultimate" = 1, "last" = 0) */
    int width, layers, heads, vocab, ctx, layer_skip;
    /* BERT (x_transformer TransformerWrapper + Encoder) */
    int n_embed, n_layer, vocab_size, max_seq_len, bert_heads, bert_dim_head, use_tokenizer;
    /* SpatialRescaler */
    int n_stages, in_channels, out_channels, bias;
    double multiplier;
    int method_bilinear;  /* 1 bilinear (default), 0 nearest */
} ld_cond;

/* One embedder of sgm's GeneralConditioner (SDXL, Stability-AI generative-models). */
typedef enum {
    LD_EMB_CLIP = 1,     /* FrozenCLIPEmbedder: HF CLIPTextModel under conditioner.embedders.N.transformer. */
    LD_EMB_OPENCLIP2,    /* FrozenOpenCLIPEmbedder2: open_clip text tower under conditioner.embedders.N.model. */
    LD_EMB_SIZE          /* ConcatTimestepEmbedderND: sinusoidal embedding of each number, concatenated */
} ld_emb_kind;

/* The batch key an embedder reads (its input_key). */
typedef enum {
    LD_EMB_IN_TXT = 0,
    LD_EMB_IN_ORIGINAL_SIZE, /* original_size_as_tuple (height, width) */
    LD_EMB_IN_CROP,          /* crop_coords_top_left (top, left) */
    LD_EMB_IN_TARGET_SIZE,   /* target_size_as_tuple (height, width) */
    LD_EMB_IN_AESTHETIC      /* aesthetic_score (one number) */
} ld_emb_input;

/* Which hidden state of a text tower is the crossattn context. */
typedef enum {
    LD_EMB_LAYER_LAST = 0,    /* final LayerNorm of the last block's output */
    LD_EMB_LAYER_HIDDEN,      /* CLIP hidden_states[layer_idx]: no final LayerNorm */
    LD_EMB_LAYER_PENULTIMATE  /* open_clip: the last block's input; final LayerNorm only when legacy */
} ld_emb_layer;

typedef struct ld_embedder {
    ld_emb_kind kind;
    ld_emb_input input;
    ld_cond text;          /* CLIP / OpenCLIP tower (kind LD_COND_CLIP / LD_COND_OPENCLIP, dims 0 = from weights) */
    ld_emb_layer layer;
    int layer_idx;         /* LD_EMB_LAYER_HIDDEN: index into hidden_states (negative counts from the end) */
    int legacy;            /* OpenCLIP2 legacy (default true): penultimate gets the final LayerNorm, no pooled */
    int pooled;            /* always_return_pooled: also the vector ln_final(last)[argmax id] @ text_projection
                            * (OpenCLIP2) */
    int outdim;            /* LD_EMB_SIZE */
} ld_embedder;

#define LD_MAX_EMBEDDERS 8

/* sgm DiffusionEngine parts that LatentDiffusion does not have. */
typedef struct ld_sgm {
    int present;
    int n_embedders;
    ld_embedder emb[LD_MAX_EMBEDDERS];
} ld_sgm;

typedef enum { LD_PARAM_EPS = 0, LD_PARAM_V = 1, LD_PARAM_X0 = 2 } ld_parameterization;
typedef enum { LD_CONDKEY_NONE = 0, LD_CONDKEY_CROSSATTN, LD_CONDKEY_CONCAT, LD_CONDKEY_HYBRID, LD_CONDKEY_ADM } ld_condkey;
typedef enum { LD_SCHED_LINEAR = 0, LD_SCHED_COSINE, LD_SCHED_SQRT_LINEAR, LD_SCHED_SQRT } ld_schedule;

/* Which LatentDiffusion subclass the config names (they differ in how conditioning is built). */
typedef enum {
    LD_VARIANT_LDM = 0,          /* LatentDiffusion */
    LD_VARIANT_LAYOUT2IMG,       /* Layout2ImgDiffusion, or LatentDiffusion with cond_stage_key coordinates_bbox */
    LD_VARIANT_INPAINT_HYBRID    /* LatentInpaintDiffusion (SD inpainting): hybrid, c_concat = [mask, encoded masked image] */
} ld_variant;

#define LD_NOTES_CAP 512

typedef struct ld_model {
    int is_diffusion;            /* LatentDiffusion (else a standalone first stage) */
    ld_variant variant;
    char cond_stage_key[32];     /* model.params.cond_stage_key ("image" default; "txt", "class_label", ...) */
    ld_parameterization parameterization;
    ld_condkey conditioning_key;
    double scale_factor;         /* default 1.0 */
    int timesteps;               /* default 1000 */
    ld_schedule beta_schedule;
    double linear_start, linear_end, cosine_s;
    int use_ema;                 /* config value (default 1 in DDPM) */
    int channels, image_size;    /* latent channels / size from the LDM params */
    ld_autoencoder first_stage;
    ld_unet unet;
    ld_cond cond;
    /* sgm DiffusionEngine (SDXL): GeneralConditioner embedders; the denoiser is DiscreteDenoiser over
     * LegacyDDPMDiscretization (timesteps, linear_start/end above; parameterization EPS = EpsScaling,
     * V = VScaling). cond.kind stays NONE. */
    ld_sgm sgm;
    /* layout2img bbox tokenizer builder parameters (0 when not a layout model) */
    int layout_no_tokens, layout_no_object_classes, layout_no_max_objects;
    /* What ld_detect assumed rather than read from the weights ("; "-separated, "" when nothing or
     * when the description came from a config). Shown by ld_describe. */
    char notes[LD_NOTES_CAP];
} ld_model;

/* Defaults of the reference classes (use_ema 1, scale_factor 1, timesteps 1000, linear
 * schedule 1e-4/2e-2, eps, ...). */
void ld_model_defaults(ld_model *m);
/* Constructor defaults of one component (UNetModel, Encoder/Decoder ddconfig, cond stages). */
void ld_unet_defaults(ld_unet *u);
void ld_autoencoder_defaults(ld_autoencoder *a);
void ld_cond_defaults(ld_cond *c);
/* Transformer depth of UNet level `level` (0-based) and of the middle block. */
int ld_unet_level_depth(const ld_unet *u, int level);
int ld_unet_middle_depth(const ld_unet *u);
/* The class a class-conditional model learned as "no class" (reference ClassEmbedder
 * get_unconditional_conditioning: n_classes - 1), or -1 when it has none: not a class model, a
 * single class, or a config that declares no label dropout (`ucg_rate: 0`). */
int ld_class_uncond(const ld_cond *c);
/* Appends a note to m->notes (silently truncated: notes are informational). */
void ld_model_note(ld_model *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
