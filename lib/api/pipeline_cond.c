/* pipeline_cond.c - the learned conditioning of ldm_generate for each task, as the reference
 * scripts build it: prompts (text models, uncond = the negative prompt, "" by default), class
 * labels (uncond = the model's unconditional class, n_classes-1 by default; the labels y
 * themselves for a UNet with label_emb), layout tokens, label
 * maps (semantic synthesis), the low-resolution image (super-resolution), the masked image and
 * mask (LDM and SD inpainting). The inputs' batch already equals params->batch (pipeline.c
 * broadcasts). Also the resolution of the guidance and class defaults (lp_resolve_cond), which
 * ldm_generate and ldm_generate_params_resolve share. */
#include "model_internal.h"

#include "../kernels/kernels.h"
#include "../models/spatial_rescaler.h"
#include "pipeline_internal.h"

#include <math.h>
#include <string.h>

static ldm_status repeat_text(ldm_conditioner *cond, const char *text, int batch, ldm_tensor **out)
{
    const char *prompts[64];
    for (int i = 0; i < batch; i++) prompts[i] = text ? text : "";
    return lm_cond_encode_text(cond, prompts, batch, out);
}

/* webui's syntax and length rules (prompt_cond.c): the prompt and the negative prompt are brought
 * to the same number of chunks (the shorter one gets empty chunks, as webui's "pad prompt/negative
 * prompt" does) so that guidance can batch them. */
static ldm_status weighted_text(ldm_conditioner *cond, const ldm_generate_params *p, lp_cond *out)
{
    const char *prompt = p->prompt ? p->prompt : "", *negative = p->negative_prompt ? p->negative_prompt : "";
    const char *prompts[64], *negatives[64];
    int guided = lp_cfg_branch(cond->model, p), n_chunks = 1;
    for (int i = 0; i < p->batch; i++) prompts[i] = prompt, negatives[i] = negative;
    if (guided) {
        int n_pos = 1, n_neg = 1;
        LDM_TRY(lm_cond_prompt_chunk_count(cond, prompt, 0, &n_pos));
        LDM_TRY(lm_cond_prompt_chunk_count(cond, negative, 0, &n_neg));
        n_chunks = LDM_MAX(n_pos, n_neg);
    }
    LDM_TRY(lm_cond_encode_prompts(cond, prompts, p->batch, 0, n_chunks, &out->cond));
    LDM_TRY(lp_check_cancel(cond->model, "while encoding the prompt"));
    if (guided) LDM_TRY(lm_cond_encode_prompts(cond, negatives, p->batch, 0, n_chunks, &out->uncond));
    return LDM_OK;
}

static ldm_status encode_class(ldm_conditioner *cond, int label, int batch, ldm_tensor **out)
{
    int64_t n = batch;
    ldm_tensor *labels = NULL;
    LDM_TRY(ldm_tensor_create(LDM_I64, 1, &n, &labels));
    for (int i = 0; i < batch; i++) lt_i64(labels)[i] = label;
    ldm_status st = lm_cond_encode_labels(cond, labels, out);
    ldm_tensor_free(labels);
    return st;
}

/* p is resolved (lp_resolve_cond): class_label is a class of the model, uncond_class the
 * unconditional one or NONE, and a guidance_scale != 1 comes with an unconditional class. When
 * the label IS the unconditional class both branches are equal and guidance changes nothing. */
static ldm_status class_cond(ldm_model *m, ldm_conditioner *cond, const ldm_generate_params *p, lp_cond *out)
{
    int n = m->desc.cond.n_classes;
    if (p->class_label < 0 || p->class_label >= n)
        return ldm_fail(LDM_ERR_INTERNAL, "class label %d unresolved (this model's classes are 0..%d)", p->class_label,
                        n - 1);
    LDM_TRY(encode_class(cond, p->class_label, p->batch, &out->cond));
    LDM_TRY(lp_check_cancel(m, "while encoding the class"));
    if (lp_cfg_branch(m, p) && p->class_label != p->uncond_class)
        LDM_TRY(encode_class(cond, p->uncond_class, p->batch, &out->uncond));
    return LDM_OK;
}

/* The class labels y [batch] of a label_emb UNet (lm_label_emb_classes): the class, and the
 * unconditional class for guidance when the caller named one (p is resolved). */
static ldm_status label_emb_cond(const ldm_generate_params *p, lp_cond *out)
{
    int64_t n = p->batch;
    LDM_TRY(ldm_tensor_create(LDM_I64, 1, &n, &out->cond));
    for (int i = 0; i < p->batch; i++) lt_i64(out->cond)[i] = p->class_label;
    if (p->guidance_scale == 1.0f || p->class_label == p->uncond_class) return LDM_OK;
    LDM_TRY(ldm_tensor_create(LDM_I64, 1, &n, &out->uncond));
    for (int i = 0; i < p->batch; i++) lt_i64(out->uncond)[i] = p->uncond_class;
    return LDM_OK;
}

/* Label map [B,1,H,W] (class ids as floats) or one-hot [B,C,H,W] -> the rescaler's input. */
static ldm_status semantic_cond(ldm_model *m, ldm_conditioner *cond, const ldm_tensor *map, lp_cond *out)
{
    LDM_TRY(lt_check(map, "semantic map (cond_image)", LDM_F32, 4));
    if (map->shape[1] != 1) return lm_cond_encode_image(cond, map, &out->cond);
    int n = m->desc.cond.in_channels;
    int64_t shape[3] = {map->shape[0], map->shape[2], map->shape[3]};
    ldm_tensor *labels = NULL, *onehot = NULL;
    LDM_TRY(ldm_tensor_create(LDM_I64, 3, shape, &labels));
    ldm_status st = LDM_OK;
    for (int64_t i = 0, k = lt_numel(labels); i < k && st == LDM_OK; i++) {
        float v = lt_f32(map)[i];
        if (!(v >= 0.0f && v < (float)n))
            st = ldm_fail(LDM_ERR_INVALID_ARGUMENT, "semantic map: label %g at element %lld outside [0,%d)", v,
                          (long long)i, n);
        else
            lt_i64(labels)[i] = (int64_t)lrintf(v);
    }
    if (st == LDM_OK) st = lrescaler_one_hot(labels, n, &onehot);
    if (st == LDM_OK) st = lm_cond_encode_image(cond, onehot, &out->cond);
    ldm_tensor_free(labels);
    ldm_tensor_free(onehot);
    return st;
}

static ldm_status concat_cond(ldm_model *m, ldm_conditioner *cond, const ldm_generate_params *p, lp_cond *out)
{
    switch (m->desc.cond.kind) {
    case LD_COND_FIRST_STAGE:
        if (!p->init_image || !p->mask)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "the inpainting model needs init_image and mask");
        return lp_ldm_inpaint_cond(m, p->init_image, p->mask, &out->cond);
    case LD_COND_SPATIAL_RESCALER:
        if (!p->cond_image)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "semantic synthesis needs a label map (cond_image)");
        return semantic_cond(m, cond, p->cond_image, out);
    default:
        if (!p->cond_image)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                            "this model is conditioned on an image (cond_image: the low-resolution input)");
        return lm_cond_encode_image(cond, p->cond_image, &out->cond);
    }
}

static ldm_status text_cond(ldm_model *m, ldm_conditioner *cond, const ldm_generate_params *p, lp_cond *out)
{
    if (m->desc.layout_no_tokens > 0) {
        if (!p->layout_tokens)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                            "the layout-to-image model needs layout_tokens (ldm_layout_tokens_from_json)");
        return lm_cond_encode_tokens(cond, p->layout_tokens, &out->cond);
    }
    if (!p->plain_prompts) {
        LDM_TRY(weighted_text(cond, p, out));
    } else {
        LDM_TRY(repeat_text(cond, p->prompt, p->batch, &out->cond));
        LDM_TRY(lp_check_cancel(m, "while encoding the prompt"));
        if (lp_cfg_branch(m, p)) LDM_TRY(repeat_text(cond, p->negative_prompt, p->batch, &out->uncond));
    }
    if (m->desc.variant == LD_VARIANT_INPAINT_HYBRID) {
        if (!p->init_image || !p->mask)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "the inpainting model needs init_image and mask");
        LDM_TRY(lp_hybrid_inpaint_concat(m, p->init_image, p->mask, p->seed, &out->concat));
    }
    return LDM_OK;
}

static ldm_status build(ldm_model *m, const ldm_generate_params *p, lp_cond *out)
{
    ldm_conditioner *cond;
    if (lm_label_emb_classes(m)) return label_emb_cond(p, out);
    if (m->desc.conditioning_key == LD_CONDKEY_NONE) return LDM_OK;
    LDM_TRY(lm_conditioner(m, &cond));
    if (m->desc.conditioning_key == LD_CONDKEY_CONCAT) return concat_cond(m, cond, p, out);
    if (m->desc.conditioning_key != LD_CONDKEY_CROSSATTN && m->desc.variant != LD_VARIANT_INPAINT_HYBRID)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "ldm_generate: conditioning key %d is not supported",
                        (int)m->desc.conditioning_key);
    switch (m->desc.cond.kind) {
    case LD_COND_CLIP:
    case LD_COND_OPENCLIP:
    case LD_COND_BERT:
        return text_cond(m, cond, p, out);
    case LD_COND_CLASS:
        return class_cond(m, cond, p, out);
    default:
        break;
    }
    return ldm_fail(LDM_ERR_UNSUPPORTED, "cross-attention conditioning of kind %d", (int)m->desc.cond.kind);
}

ldm_status lp_build_cond(ldm_model *m, const ldm_generate_params *p, lp_cond *out)
{
    memset(out, 0, sizeof *out);
    ldm_status st = build(m, p, out);
    if (st == LDM_OK) st = lp_check_cancel(m, "while building the conditioning");
    if (st != LDM_OK) lp_cond_release(out);
    return st;
}

void lp_cond_release(lp_cond *c)
{
    ldm_tensor_free(c->cond);
    ldm_tensor_free(c->uncond);
    ldm_tensor_free(c->concat);
    memset(c, 0, sizeof *c);
}

/* ---------------------------------------------------------------- resolution */

/* AUTO -> the model's unconditional class (or NONE); an explicit class must be one of the model's. */
/* Classes of a ClassEmbedder or of the UNet's own label_emb. */
static int class_count(const ldm_model *m)
{
    return lm_label_emb_classes(m) ? lm_label_emb_classes(m) : m->desc.cond.n_classes;
}

static ldm_status resolve_uncond_class(const ldm_model *m, ldm_generate_params *p)
{
    int n = class_count(m);
    if (p->uncond_class == LDM_UNCOND_CLASS_AUTO) {
        int u = ld_class_uncond(&m->desc.cond);
        p->uncond_class = u >= 0 ? u : LDM_UNCOND_CLASS_NONE;
        return LDM_OK;
    }
    if (p->uncond_class == LDM_UNCOND_CLASS_NONE || (p->uncond_class >= 0 && p->uncond_class < n)) return LDM_OK;
    return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                    "uncond_class %d: this model's classes are 0..%d (or LDM_UNCOND_CLASS_AUTO / LDM_UNCOND_CLASS_NONE)",
                    p->uncond_class, n - 1);
}

/* Why the class model has no unconditional class, for the messages that need one. */
static const char *no_uncond_reason(const ldm_model *m, const ldm_generate_params *in)
{
    if (in->uncond_class == LDM_UNCOND_CLASS_NONE) return "uncond_class is LDM_UNCOND_CLASS_NONE";
    if (class_count(m) < 2) return "it has a single class";
    if (lm_label_emb_classes(m))
        return "its UNet's class embedding (num_classes, label_emb) has no \"no class\" label of its own; name one "
               "with uncond_class if the model learned one";
    return "its config sets ucg_rate: 0, so it never learned a \"no class\" label";
}

/* in: the caller's values (for the messages); p: being resolved. */
static ldm_status resolve_class(const ldm_model *m, const ldm_generate_params *in, ldm_generate_params *p)
{
    int n = class_count(m);
    LDM_TRY(resolve_uncond_class(m, p));
    int has_uncond = p->uncond_class >= 0;
    if (p->class_label < -1 || p->class_label >= n)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "class label %d: this model's classes are 0..%d (-1: none)",
                        p->class_label, n - 1);
    if (p->class_label == -1) {
        if (!has_uncond)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                            "this class-conditional model needs a class label: this model's classes are 0..%d, and it "
                            "has no unconditional class to sample without one (%s)",
                            n - 1, no_uncond_reason(m, in));
        p->class_label = p->uncond_class; /* an unconditional sample */
    }
    if (p->guidance_scale == 0.0f) p->guidance_scale = has_uncond ? 3.0f : 1.0f;
    if (p->guidance_scale != 1.0f && !has_uncond)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                        "guidance_scale %g needs an unconditional class for the guidance's second branch, and this "
                        "model has none (%s): set guidance_scale to 1 (or 0, the default), or name the class the "
                        "model learned as \"no class\" with uncond_class",
                        (double)p->guidance_scale, no_uncond_reason(m, in));
    return LDM_OK;
}

/* Why a model that is not a class or text model cannot be guided, NULL when it can. */
static const char *unguidable(const ldm_model *m)
{
    if (m->desc.conditioning_key == LD_CONDKEY_NONE) return "an unconditional model has no conditioning to guide";
    if (m->desc.conditioning_key == LD_CONDKEY_CONCAT)
        return "a model conditioned on concatenated channels (super-resolution, semantic synthesis, LDM "
               "inpainting) has no unconditional input";
    if (m->desc.layout_no_tokens > 0) return "the layout-to-image model has no unconditional layout";
    switch (m->desc.cond.kind) {
    case LD_COND_CLIP:
    case LD_COND_OPENCLIP:
    case LD_COND_BERT: return NULL;
    default: return "this model's conditioning has no unconditional counterpart";
    }
}

int lp_cfg_branch(const ldm_model *m, const ldm_generate_params *p)
{
    return p->guidance_scale != 1.0f && m->desc.unet.time_cond_proj_dim <= 0;
}

static ldm_status resolve_guidance(const ldm_model *m, const ldm_generate_params *in, ldm_generate_params *p);

/* Few-step defaults: steps 0 -> 4 for LCM (the LCM pipelines' default), 50 otherwise; an
 * LCM-distilled UNet (guidance embedding) takes the scale as an input and runs no unconditional
 * branch, default 8.5 as LatentConsistencyModelPipeline; the LCM sampler on other models (LCM-LoRA)
 * defaults to guidance 1 (off). */
ldm_status lp_resolve_cond(const ldm_model *m, const ldm_generate_params *in, ldm_generate_params *p)
{
    if (p->steps == 0) p->steps = p->sampler == LDM_SAMPLER_LCM ? 4 : 50;
    if (p->sampler == LDM_SAMPLER_LCM && p->lcm_original_steps == 0) p->lcm_original_steps = 50;
    if (m->desc.unet.time_cond_proj_dim <= 0) {
        if (p->guidance_scale == 0.0f && p->sampler == LDM_SAMPLER_LCM) p->guidance_scale = 1.0f;
        return resolve_guidance(m, in, p);
    }
    float g = p->guidance_scale;
    p->guidance_scale = 1.0f; /* the class/text checks see no guidance branch */
    LDM_TRY(resolve_guidance(m, in, p));
    p->guidance_scale = g == 0.0f ? 8.5f : g;
    return LDM_OK;
}

static ldm_status resolve_guidance(const ldm_model *m, const ldm_generate_params *in, ldm_generate_params *p)
{
    int is_class = m->desc.conditioning_key != LD_CONDKEY_NONE && m->desc.conditioning_key != LD_CONDKEY_CONCAT &&
                   m->desc.cond.kind == LD_COND_CLASS;
    if (is_class || lm_label_emb_classes(m)) return resolve_class(m, in, p);
    if (p->uncond_class >= 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "uncond_class %d: this model is not class-conditional",
                        p->uncond_class);
    p->uncond_class = LDM_UNCOND_CLASS_NONE;
    const char *why = unguidable(m);
    if (p->guidance_scale == 0.0f) p->guidance_scale = why ? 1.0f : 7.5f;
    if (why && p->guidance_scale != 1.0f)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                        "guidance_scale %g cannot be applied: %s; set guidance_scale to 1 (or 0, the default)",
                        (double)p->guidance_scale, why);
    return LDM_OK;
}
