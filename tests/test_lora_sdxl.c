/* test_lora_sdxl.c - LoRA files on SDXL (lib/api/lora.c, lora_names.c) with the sdxl_base_tiny
 * fixture model and a synthetic kohya-ss SDXL LoRA: lora_unet_* in the CompVis/sgm spelling
 * kohya's SDXL trainer uses (a linear layer and a 3x3 LoCon convolution), lora_te1_* on the CLIP
 * ViT-L tower (HF names), lora_te2_* on the OpenCLIP bigG tower (HF names: q/k/v into row thirds
 * of the fused in_proj, fc1 into c_fc), and lora_unet_* over diffusers paths as LCM-LoRA SDXL spells
 * them (attention, feed-forward, 3x3 resnet and upsampler convolutions, time_emb_proj; the mapping
 * is unet_names.c's, checked against diffusers' conversion in test_unet_names.c, depth 10 included).
 * Every merged weight must equal base + multiplier * (alpha / rank) * up @ down (float64 here), the networks must use them (the
 * conditioner and UNet outputs change, the SDXL conditioner included) and removal must give back
 * the checkpoint's weights and outputs byte for byte. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/model_internal.h"
#include "core/tensor.h"
#include "io/weights.h"
#include "ldm.h"
#include "support/ck_tmpdir.h"

static const char *fix(const char *name)
{
    static char path[4][1024];
    static int next;
    const char *slash = strrchr(__FILE__, '/');
    int dirlen = slash ? (int)(slash - __FILE__) + 1 : 0;
    char *p = path[next++ % 4];
    snprintf(p, sizeof path[0], "%.*sfixtures/sdxl_base_tiny/%s", dirlen, __FILE__, name);
    return p;
}

/* One LoRA module: the weight it reaches, the rows of it (a third of a fused in_proj), the
 * down / up shapes (4-D for the LoCon convolution: down [r, in, 3, 3], up [out, r, 1, 1]). */
typedef struct module {
    const char *key, *weight;
    int64_t row0, rows, rank, cols;
    int conv;
    float alpha;
} module;

static const module MODULES[] = {
    {"lora_unet_middle_block_1_transformer_blocks_0_attn1_to_q",
     "model.diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight", 0, 64, 4, 64, 0, 2.0f},
    {"lora_unet_input_blocks_0_0", "model.diffusion_model.input_blocks.0.0.weight", 0, 64, 3, 4 * 9, 1, 0.0f},
    /* LCM-LoRA SDXL's spelling (latent-consistency/lcm-lora-sdxl): kohya keys over diffusers
     * paths, which diffusers' own loader accepts beside the sgm ones */
    {"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k",
     "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight", 0, 64, 4, 128, 0, 8.0f},
    {"lora_unet_up_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0",
     "model.diffusion_model.output_blocks.0.1.transformer_blocks.0.attn1.to_out.0.weight", 0, 64, 4, 64, 0, 4.0f},
    {"lora_unet_up_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj",
     "model.diffusion_model.output_blocks.0.1.transformer_blocks.0.ff.net.0.proj.weight", 0, 512, 2, 64, 0, 1.0f},
    {"lora_unet_up_blocks_0_resnets_0_conv1", "model.diffusion_model.output_blocks.0.0.in_layers.2.weight", 0, 64, 4,
     128 * 9, 1, 4.0f},
    {"lora_unet_up_blocks_0_resnets_0_time_emb_proj", "model.diffusion_model.output_blocks.0.0.emb_layers.1.weight", 0,
     64, 4, 256, 0, 4.0f},
    {"lora_unet_up_blocks_0_upsamplers_0_conv", "model.diffusion_model.output_blocks.0.2.conv.weight", 0, 64, 4, 64 * 9,
     1, 4.0f},
    {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
     "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight", 0, 64, 2, 64, 0, 1.0f},
    {"lora_te2_text_model_encoder_layers_1_self_attn_k_proj",
     "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight", 64, 64, 2, 64, 0, 4.0f},
    {"lora_te2_text_model_encoder_layers_0_mlp_fc1",
     "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc.weight", 0, 256, 2, 64, 0, 1.0f},
};
#define N_MODULES  (sizeof MODULES / sizeof MODULES[0])
#define MULTIPLIER 0.8

static float *down_values(const module *m)
{
    float *d = malloc(sizeof(float) * (size_t)(m->rank * m->cols));
    for (int64_t i = 0; i < m->rank * m->cols; i++) d[i] = (float)(0.05 * sin(0.7 * (double)i + 1.0));
    return d;
}

static float *up_values(const module *m)
{
    float *u = malloc(sizeof(float) * (size_t)(m->rows * m->rank));
    for (int64_t i = 0; i < m->rows * m->rank; i++) u[i] = (float)(0.08 * cos(0.3 * (double)i));
    return u;
}

static const char *write_lora(void)
{
    lw_out_tensor t[3 * N_MODULES];
    char names[3 * N_MODULES][160];
    float *bufs[2 * N_MODULES];
    size_t n = 0;
    for (size_t i = 0; i < N_MODULES; i++) {
        const module *m = &MODULES[i];
        bufs[2 * i] = down_values(m), bufs[2 * i + 1] = up_values(m);
        snprintf(names[n], sizeof names[0], "%s.lora_down.weight", m->key);
        t[n] = m->conv ? (lw_out_tensor){names[n], LW_F32, 4, {m->rank, m->cols / 9, 3, 3}, bufs[2 * i], 0}
                       : (lw_out_tensor){names[n], LW_F32, 2, {m->rank, m->cols}, bufs[2 * i], 0};
        n++;
        snprintf(names[n], sizeof names[0], "%s.lora_up.weight", m->key);
        t[n] = m->conv ? (lw_out_tensor){names[n], LW_F32, 4, {m->rows, m->rank, 1, 1}, bufs[2 * i + 1], 0}
                       : (lw_out_tensor){names[n], LW_F32, 2, {m->rows, m->rank}, bufs[2 * i + 1], 0};
        n++;
        if (m->alpha != 0.0f) {
            snprintf(names[n], sizeof names[0], "%s.alpha", m->key);
            t[n] = (lw_out_tensor){names[n], LW_F32, 0, {0}, &m->alpha, 0};
            n++;
        }
    }
    static char path[512];
    snprintf(path, sizeof path, "%s", ck_tmp_path("lora_sdxl.safetensors"));
    ck_assert_msg(lw_write_safetensors(path, t, n, NULL, NULL, 0) == LDM_OK, "%s", ldm_last_error());
    for (size_t i = 0; i < 2 * N_MODULES; i++) free(bufs[i]);
    return path;
}

static ldm_model *load(void)
{
    ldm_model_params p;
    ldm_model_params_init(&p);
    p.config_path = fix("config.yaml");
    p.n_threads = 2;
    ldm_model *m = NULL;
    ck_assert_msg(ldm_model_load(fix("model.safetensors"), &p, &m) == LDM_OK, "%s", ldm_last_error());
    return m;
}

/* ---------------------------------------------------------------- outputs of fixed inputs */

typedef struct outputs {
    ldm_tensor *ca, *vec, *eps;
} outputs;

static ldm_tensor *tensor(ldm_dtype dt, int ndim, const int64_t *shape)
{
    ldm_tensor *t = NULL;
    ck_assert_int_eq(ldm_tensor_create(dt, ndim, shape, &t), LDM_OK);
    return t;
}

static outputs run(ldm_model *m)
{
    int64_t ts[2] = {1, 77}, xs[4] = {1, 4, 8, 8}, one = 1;
    ldm_tensor *tok = tensor(LDM_I64, 2, ts), *x = tensor(LDM_F32, 4, xs), *t = tensor(LDM_F32, 1, &one);
    for (int i = 0; i < 77; i++) lt_i64(tok)[i] = i < 12 ? (i * 37 + 5) % 250 + 1 : i == 12 ? 255 : 0;
    ck_assert_int_eq(ldm_randn(3, 0, x), LDM_OK);
    lt_f32(t)[0] = 411.0f;
    ldm_conditioner *cond;
    ck_assert_int_eq(ldm_model_conditioner(m, &cond), LDM_OK);
    ldm_sdxl_cond_params p;
    ldm_sdxl_cond_params_init(&p);
    const ldm_tensor *tokens[2] = {tok, tok};
    p.tokens = tokens, p.n_tokens = 2;
    p.original_height = p.target_height = p.original_width = p.target_width = 64;
    outputs o = {0};
    ck_assert_msg(ldm_conditioner_encode_sdxl(cond, &p, &o.ca, &o.vec) == LDM_OK, "%s", ldm_last_error());
    ck_assert_msg(ldm_model_apply_sdxl(m, x, t, o.ca, o.vec, NULL, NULL, 1.0f, &o.eps) == LDM_OK, "%s",
                  ldm_last_error());
    ldm_tensor_free(tok);
    ldm_tensor_free(x);
    ldm_tensor_free(t);
    return o;
}

static int same_tensor(const ldm_tensor *a, const ldm_tensor *b)
{
    return lt_numel(a) == lt_numel(b) && memcmp(a->data, b->data, (size_t)lt_numel(a) * sizeof(float)) == 0;
}

static void release(outputs o)
{
    ldm_tensor_free(o.ca);
    ldm_tensor_free(o.vec);
    ldm_tensor_free(o.eps);
}

/* ---------------------------------------------------------------- the merged weights */

/* The store's current values of weight m (the override in force) against the file's values +
 * MULTIPLIER * (alpha / rank) * up @ down in float64; rows outside the module's are the file's. */
static double merged_error(ldm_model *model, const module *m)
{
    const lw_tensor *stored = lw_find_stored(model->store, m->weight), *now = lw_find(model->store, m->weight);
    ck_assert_ptr_nonnull(stored);
    ck_assert_ptr_nonnull(now);
    ck_assert_int_eq(now->dtype, LW_F32); /* a float32 copy handed to the networks */
    int64_t rows = stored->shape[0], n = (int64_t)(now->nbytes / sizeof(float));
    float *base = malloc(sizeof(float) * (size_t)n), *down = down_values(m), *up = up_values(m);
    ck_assert_int_eq(lw_tensor_to_f32(model->store, stored, base), LDM_OK);
    ck_assert_int_eq(n, rows * m->cols);
    double scale = MULTIPLIER * (m->alpha != 0.0f ? m->alpha / (double)m->rank : 1.0), worst = 0;
    const float *got = now->data;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < m->cols; c++) {
            double want = base[r * m->cols + c];
            if (r >= m->row0 && r < m->row0 + m->rows)
                for (int64_t k = 0; k < m->rank; k++)
                    want += scale * (double)up[(r - m->row0) * m->rank + k] * down[k * m->cols + c];
            double e = fabs(got[r * m->cols + c] - want) / (1e-3 + fabs(want));
            if (r < m->row0 || r >= m->row0 + m->rows) ck_assert(got[r * m->cols + c] == base[r * m->cols + c]);
            worst = fmax(worst, e);
        }
    free(base);
    free(down);
    free(up);
    return worst;
}

START_TEST(sdxl_lora_merges_and_removes_exactly)
{
    ldm_model *m = load();
    outputs before = run(m); /* the networks exist: the merge rebuilds them */
    const char *path = write_lora();
    int id = 0;
    ck_assert_msg(ldm_model_lora_add(m, path, MULTIPLIER, 0, &id) == LDM_OK, "%s", ldm_last_error());
    ldm_lora_info info = {.struct_size = sizeof info};
    ck_assert_int_eq(ldm_model_lora_get(m, 0, &info), LDM_OK);
    ck_assert_int_eq(info.n_unet_layers, 8);
    ck_assert_int_eq(info.n_text_layers, 3);
    ck_assert_int_eq(info.n_skipped_keys, 0);
    for (size_t i = 0; i < N_MODULES; i++) {
        double e = merged_error(m, &MODULES[i]);
        ck_assert_msg(e < 1e-6, "%s: merged weight off by %g (relative)", MODULES[i].key, e);
    }
    outputs with = run(m);
    ck_assert_msg(!same_tensor(before.ca, with.ca), "the CLIP-L / bigG LoRA did not reach the crossattn");
    ck_assert_msg(!same_tensor(before.vec, with.vec), "the bigG LoRA did not reach the pooled vector");
    ck_assert_msg(!same_tensor(before.eps, with.eps), "the UNet LoRA did not reach the UNet");
    ck_assert_int_eq(ldm_model_lora_remove(m, id), LDM_OK);
    for (size_t i = 0; i < N_MODULES; i++)
        ck_assert(lw_find(m->store, MODULES[i].weight) == lw_find_stored(m->store, MODULES[i].weight));
    outputs after = run(m);
    ck_assert_msg(same_tensor(before.ca, after.ca), "crossattn after removal differs");
    ck_assert_msg(same_tensor(before.vec, after.vec), "vector after removal differs");
    ck_assert_msg(same_tensor(before.eps, after.eps), "UNet output after removal differs");
    release(before);
    release(with);
    release(after);
    ldm_model_free(m);
}
END_TEST

/* Merged before the networks exist (nothing to rebuild) equals merged after. */
START_TEST(sdxl_lora_before_first_use_equals_rebuild)
{
    const char *path = write_lora();
    ldm_model *a = load(), *b = load();
    outputs warm = run(a);
    ck_assert_int_eq(ldm_model_lora_add(a, path, MULTIPLIER, 0, NULL), LDM_OK);
    ck_assert_int_eq(ldm_model_lora_add(b, path, MULTIPLIER, 0, NULL), LDM_OK);
    outputs x = run(a), y = run(b);
    ck_assert(same_tensor(x.ca, y.ca) && same_tensor(x.vec, y.vec) && same_tensor(x.eps, y.eps));
    release(warm);
    release(x);
    release(y);
    ldm_model_free(a);
    ldm_model_free(b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("lora_sdxl");
    TCase *t = tcase_create("lora_sdxl");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, sdxl_lora_merges_and_removes_exactly);
    tcase_add_test(t, sdxl_lora_before_first_use_equals_rebuild);
    suite_add_tcase(s, t);
    return ck_run_in_tmpdir(s, "lora_sdxl");
}
