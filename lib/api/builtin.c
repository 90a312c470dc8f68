/* builtin.c - models of named architectures with seeded random weights, for the demo, the
 * benchmarks and tests that need no file. Each architecture is its original YAML config (trimmed
 * to what the model reads) going through the normal config reader; the weights come from a
 * synthetic store (lib/io/synthetic.c). The text towers find their sizes by looking tensors up,
 * so their tensors are listed explicitly; every other network asks for exact shapes and gets
 * generated values on demand. */
#include "model_internal.h"

#include "../models/config.h"

#include <stdio.h>
#include <string.h>

typedef struct builtin_arch {
    const char *name;
    const char *yaml;
} builtin_arch;

/* A tiny class-conditional LDM: KL-f4 first stage, 2-level UNet with cross-attention on the class
 * embedding, cin256-v2's extra unconditional class for guidance. 64x64 images in seconds. */
static const char demo_yaml[] =
    "model:\n"
    "  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
    "  params:\n"
    "    linear_start: 0.0015\n"
    "    linear_end: 0.0195\n"
    "    timesteps: 1000\n"
    "    image_size: 16\n"
    "    channels: 3\n"
    "    cond_stage_key: class_label\n"
    "    conditioning_key: crossattn\n"
    "    use_ema: false\n"
    "    unet_config:\n"
    "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
    "      params: {image_size: 16, in_channels: 3, out_channels: 3, model_channels: 64, attention_resolutions: [2],\n"
    "               num_res_blocks: 1, channel_mult: [1, 2], num_heads: 4, use_spatial_transformer: true,\n"
    "               transformer_depth: 1, context_dim: 64}\n"
    "    first_stage_config:\n"
    "      target: ldm.models.autoencoder.AutoencoderKL\n"
    "      params:\n"
    "        embed_dim: 3\n"
    "        ddconfig: {double_z: true, z_channels: 3, resolution: 64, in_channels: 3, out_ch: 3, ch: 32,\n"
    "                   ch_mult: [1, 2, 2], num_res_blocks: 1, attn_resolutions: []}\n"
    "        lossconfig: {target: torch.nn.Identity}\n"
    "    cond_stage_config:\n"
    "      target: ldm.modules.encoders.modules.ClassEmbedder\n"
    "      params: {embed_dim: 64, n_classes: 1001, key: class_label}\n";

/* Stable Diffusion 1.x (configs/stable-diffusion/v1-inference.yaml). */
static const char sd15_yaml[] =
    "model:\n"
    "  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
    "  params:\n"
    "    linear_start: 0.00085\n"
    "    linear_end: 0.012\n"
    "    timesteps: 1000\n"
    "    image_size: 64\n"
    "    channels: 4\n"
    "    cond_stage_key: txt\n"
    "    conditioning_key: crossattn\n"
    "    scale_factor: 0.18215\n"
    "    use_ema: false\n"
    "    unet_config:\n"
    "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
    "      params: {image_size: 32, in_channels: 4, out_channels: 4, model_channels: 320,\n"
    "               attention_resolutions: [4, 2, 1], num_res_blocks: 2, channel_mult: [1, 2, 4, 4], num_heads: 8,\n"
    "               use_spatial_transformer: true, transformer_depth: 1, context_dim: 768, legacy: false}\n"
    "    first_stage_config:\n"
    "      target: ldm.models.autoencoder.AutoencoderKL\n"
    "      params:\n"
    "        embed_dim: 4\n"
    "        ddconfig: {double_z: true, z_channels: 4, resolution: 256, in_channels: 3, out_ch: 3, ch: 128,\n"
    "                   ch_mult: [1, 2, 4, 4], num_res_blocks: 2, attn_resolutions: []}\n"
    "        lossconfig: {target: torch.nn.Identity}\n"
    "    cond_stage_config: {target: ldm.modules.encoders.modules.FrozenCLIPEmbedder}\n";

/* Stable Diffusion 2.x 768-v (configs/stable-diffusion/v2-inference-v.yaml). */
static const char sd21v_yaml[] =
    "model:\n"
    "  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
    "  params:\n"
    "    parameterization: v\n"
    "    linear_start: 0.00085\n"
    "    linear_end: 0.012\n"
    "    timesteps: 1000\n"
    "    image_size: 96\n"
    "    channels: 4\n"
    "    cond_stage_key: txt\n"
    "    conditioning_key: crossattn\n"
    "    scale_factor: 0.18215\n"
    "    use_ema: false\n"
    "    unet_config:\n"
    "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
    "      params: {image_size: 32, in_channels: 4, out_channels: 4, model_channels: 320,\n"
    "               attention_resolutions: [4, 2, 1], num_res_blocks: 2, channel_mult: [1, 2, 4, 4],\n"
    "               num_head_channels: 64, use_spatial_transformer: true, use_linear_in_transformer: true,\n"
    "               transformer_depth: 1, context_dim: 1024, legacy: false}\n"
    "    first_stage_config:\n"
    "      target: ldm.models.autoencoder.AutoencoderKL\n"
    "      params:\n"
    "        embed_dim: 4\n"
    "        ddconfig: {double_z: true, z_channels: 4, resolution: 256, in_channels: 3, out_ch: 3, ch: 128,\n"
    "                   ch_mult: [1, 2, 4, 4], num_res_blocks: 2, attn_resolutions: []}\n"
    "        lossconfig: {target: torch.nn.Identity}\n"
    "    cond_stage_config:\n"
    "      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder\n"
    "      params: {freeze: true, layer: penultimate}\n";

/* The LDM class-conditional ImageNet model (configs/latent-diffusion/cin256-v2.yaml). */
static const char cin256v2_yaml[] =
    "model:\n"
    "  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
    "  params:\n"
    "    linear_start: 0.0015\n"
    "    linear_end: 0.0195\n"
    "    timesteps: 1000\n"
    "    image_size: 64\n"
    "    channels: 3\n"
    "    cond_stage_key: class_label\n"
    "    conditioning_key: crossattn\n"
    "    use_ema: false\n"
    "    unet_config:\n"
    "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
    "      params: {image_size: 64, in_channels: 3, out_channels: 3, model_channels: 192,\n"
    "               attention_resolutions: [8, 4, 2], num_res_blocks: 2, channel_mult: [1, 2, 3, 5], num_heads: 1,\n"
    "               use_spatial_transformer: true, transformer_depth: 1, context_dim: 512}\n"
    "    first_stage_config:\n"
    "      target: ldm.models.autoencoder.VQModelInterface\n"
    "      params:\n"
    "        embed_dim: 3\n"
    "        n_embed: 8192\n"
    "        ddconfig: {double_z: false, z_channels: 3, resolution: 256, in_channels: 3, out_ch: 3, ch: 128,\n"
    "                   ch_mult: [1, 2, 4], num_res_blocks: 2, attn_resolutions: []}\n"
    "        lossconfig: {target: torch.nn.Identity}\n"
    "    cond_stage_config:\n"
    "      target: ldm.modules.encoders.modules.ClassEmbedder\n"
    "      params: {embed_dim: 512, n_classes: 1001, key: class_label}\n";

static const builtin_arch archs[] = {
    {"demo", demo_yaml},
    {"sd15", sd15_yaml},
    {"sd21-v", sd21v_yaml},
    {"cin256-v2", cin256v2_yaml},
};

/* ---------------------------------------------------------------- text tower tensors */

static ldm_status add_tensor(lw_store *s, uint64_t seed, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static ldm_status add_tensor(lw_store *s, uint64_t seed, int ndim, const int64_t *shape, const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
    float *data = ldm_malloc_aligned(n * sizeof(float));
    if (!data) return ldm_alloc_failure_status();
    lw_synth_fill(name, seed, ndim, shape, data);
    ldm_status st = lw_store_keep(s, data);
    if (st != LDM_OK) {
        ldm_free(data);
        return st;
    }
    return lw_store_add(s, name, LW_F32, ndim, shape, data, n * sizeof(float));
}

#define VEC(n) 1, (int64_t[]){(n)}
#define MAT(r, c) 2, (int64_t[]){(r), (c)}

/* HF CLIPTextModel keys (SD 1.x). */
static ldm_status add_clip_hf(lw_store *s, uint64_t seed, const ld_cond *d)
{
    const char *p = "cond_stage_model.transformer.text_model.";
    int64_t W = d->width, M = 4 * W;
    LDM_TRY(add_tensor(s, seed, MAT(d->vocab, W), "%sembeddings.token_embedding.weight", p));
    LDM_TRY(add_tensor(s, seed, MAT(d->ctx, W), "%sembeddings.position_embedding.weight", p));
    for (int i = 0; i < d->layers; i++) {
        static const char *const proj[] = {"q_proj", "k_proj", "v_proj", "out_proj"};
        for (int k = 0; k < 4; k++) {
            LDM_TRY(add_tensor(s, seed, MAT(W, W), "%sencoder.layers.%d.self_attn.%s.weight", p, i, proj[k]));
            LDM_TRY(add_tensor(s, seed, VEC(W), "%sencoder.layers.%d.self_attn.%s.bias", p, i, proj[k]));
        }
        for (int k = 1; k <= 2; k++) {
            LDM_TRY(add_tensor(s, seed, VEC(W), "%sencoder.layers.%d.layer_norm%d.weight", p, i, k));
            LDM_TRY(add_tensor(s, seed, VEC(W), "%sencoder.layers.%d.layer_norm%d.bias", p, i, k));
        }
        LDM_TRY(add_tensor(s, seed, MAT(M, W), "%sencoder.layers.%d.mlp.fc1.weight", p, i));
        LDM_TRY(add_tensor(s, seed, VEC(M), "%sencoder.layers.%d.mlp.fc1.bias", p, i));
        LDM_TRY(add_tensor(s, seed, MAT(W, M), "%sencoder.layers.%d.mlp.fc2.weight", p, i));
        LDM_TRY(add_tensor(s, seed, VEC(W), "%sencoder.layers.%d.mlp.fc2.bias", p, i));
    }
    LDM_TRY(add_tensor(s, seed, VEC(W), "%sfinal_layer_norm.weight", p));
    return add_tensor(s, seed, VEC(W), "%sfinal_layer_norm.bias", p);
}

/* open_clip keys (SD 2.x). */
static ldm_status add_openclip(lw_store *s, uint64_t seed, const ld_cond *d)
{
    const char *p = "cond_stage_model.model.";
    int64_t W = d->width, M = 4 * W;
    LDM_TRY(add_tensor(s, seed, MAT(d->vocab, W), "%stoken_embedding.weight", p));
    LDM_TRY(add_tensor(s, seed, MAT(d->ctx, W), "%spositional_embedding", p));
    for (int i = 0; i < d->layers; i++) {
        const char *b = "transformer.resblocks";
        LDM_TRY(add_tensor(s, seed, MAT(3 * W, W), "%s%s.%d.attn.in_proj_weight", p, b, i));
        LDM_TRY(add_tensor(s, seed, VEC(3 * W), "%s%s.%d.attn.in_proj_bias", p, b, i));
        LDM_TRY(add_tensor(s, seed, MAT(W, W), "%s%s.%d.attn.out_proj.weight", p, b, i));
        LDM_TRY(add_tensor(s, seed, VEC(W), "%s%s.%d.attn.out_proj.bias", p, b, i));
        for (int k = 1; k <= 2; k++) {
            LDM_TRY(add_tensor(s, seed, VEC(W), "%s%s.%d.ln_%d.weight", p, b, i, k));
            LDM_TRY(add_tensor(s, seed, VEC(W), "%s%s.%d.ln_%d.bias", p, b, i, k));
        }
        LDM_TRY(add_tensor(s, seed, MAT(M, W), "%s%s.%d.mlp.c_fc.weight", p, b, i));
        LDM_TRY(add_tensor(s, seed, VEC(M), "%s%s.%d.mlp.c_fc.bias", p, b, i));
        LDM_TRY(add_tensor(s, seed, MAT(W, M), "%s%s.%d.mlp.c_proj.weight", p, b, i));
        LDM_TRY(add_tensor(s, seed, VEC(W), "%s%s.%d.mlp.c_proj.bias", p, b, i));
    }
    LDM_TRY(add_tensor(s, seed, VEC(W), "%sln_final.weight", p));
    return add_tensor(s, seed, VEC(W), "%sln_final.bias", p);
}

static ldm_status build_store(const char *label, uint64_t seed, const ld_model *d, lw_store **out)
{
    lw_store *s = NULL;
    LDM_TRY(lw_store_create(label, &s));
    lw_store_set_synthetic(s, seed);
    ldm_status st = LDM_OK;
    if (d->cond.kind == LD_COND_CLIP) st = add_clip_hf(s, seed, &d->cond);
    else if (d->cond.kind == LD_COND_OPENCLIP) st = add_openclip(s, seed, &d->cond);
    if (st == LDM_OK) st = lw_store_seal(s);
    if (st != LDM_OK) {
        lw_close(s);
        return st;
    }
    *out = s;
    return LDM_OK;
}

ldm_status ldm_model_load_builtin(const char *name, uint64_t seed, const ldm_model_params *params, ldm_model **out)
{
    const builtin_arch *arch = NULL;
    if (!name || !out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_load_builtin: NULL argument");
    *out = NULL;
    if (lm_is_trained_builtin(name)) return lm_load_trained_builtin(name, params, out);
    for (size_t i = 0; i < LDM_ARRAY_LEN(archs); i++)
        if (strcmp(archs[i].name, name) == 0) arch = &archs[i];
    if (!arch) return ldm_fail(LDM_ERR_NOT_FOUND, "no built-in model '%s' (glyphs, demo, sd15, sd21-v, cin256-v2)", name);
    char label[96];
    snprintf(label, sizeof label, "builtin:%s", name);
    ldm_model_params p;
    ldm_model *m = NULL;
    LM_CAP_SCOPE(); /* the model's cap holds for the load only */
    LDM_TRY(lm_model_new(label, params, &m, &p));
    ldm_status st = ld_config_parse(arch->yaml, strlen(arch->yaml), label, &m->desc);
    if (st == LDM_OK) st = build_store(label, seed, &m->desc, &m->store);
    if (st == LDM_OK) st = lm_load_from(m, &p);
    if (st != LDM_OK) {
        lm_model_discard(m);
        return st;
    }
    *out = m;
    return LDM_OK;
}
