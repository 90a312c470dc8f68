/* test_train_sample.c - models the trainer makes, sampled by the inference API (issue #13):
 *  - a LatentDiffusion on a VQModelInterface first stage (the frozen VQ f4 of the train_ldm_vq
 *    golden, cin-ldm-vq-f8's structure shrunk) trains, and its checkpoint (the codebook
 *    included) loads with ldm_model_load and samples with ldm_generate (decoding quantises);
 *  - a UNet with label_emb (num_classes, no cond stage) trained with EMA and a learned logvar:
 *    the checkpoint (model_ema.*, logvar) and the export load, ldm_generate samples a class (the
 *    labels reach the UNet: other classes give other images), guidance needs an unconditional
 *    class the caller names, ldm_model_apply / apply_guided take the labels as cond. */
#include <check.h>

/* paths here are short temporary ones; gcc cannot see that */
#pragma GCC diagnostic ignored "-Wformat-truncation"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <ftw.h>
#include <unistd.h>

#include "api/pipeline_internal.h"
#include "io/weights.h"
#include "ldm.h"
#include "support/ck_run.h"
#include "support/ck_train.h"

static char root[512];

static const char *golden_vq(void)
{
    static char path[1024];
    const char *slash = strrchr(__FILE__, '/');
    int dirlen = slash ? (int)(slash - __FILE__) : 0;
    snprintf(path, sizeof path, "%.*s%sgolden/train_ldm_vq/model.safetensors", dirlen, __FILE__, slash ? "/" : "");
    return path;
}

/* The first stage of the golden (its weights under first_stage_model.). */
#define VQ_FIRST_STAGE                                                                                                 \
    "    first_stage_config:\n"                                                                                        \
    "      target: ldm.models.autoencoder.VQModelInterface\n"                                                          \
    "      params:\n"                                                                                                  \
    "        embed_dim: 3\n"                                                                                           \
    "        n_embed: 16\n"                                                                                            \
    "        ckpt_path: %s\n"                                                                                          \
    "        ddconfig: {double_z: false, z_channels: 3, resolution: 16, in_channels: 3, out_ch: 3, ch: 32,\n"          \
    "                   ch_mult: [1, 1, 1], num_res_blocks: 0, attn_resolutions: [], dropout: 0.0}\n"                  \
    "        lossconfig: {target: torch.nn.Identity}\n"

/* The LatentDiffusion keys both models below share: 4x4x3 latents, 100 timesteps, class labels. */
#define LDM_HEAD                                                                                                       \
    "model:\n"                                                                                                         \
    "  base_learning_rate: 1.0e-3\n"                                                                                   \
    "  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"                                                            \
    "  params:\n"                                                                                                      \
    "    linear_start: 0.0015\n"                                                                                       \
    "    linear_end: 0.0195\n"                                                                                         \
    "    timesteps: 100\n"                                                                                             \
    "    image_size: 4\n"                                                                                              \
    "    channels: 3\n"                                                                                                \
    "    cond_stage_key: class_label\n"

/* cin-ldm-vq-f8 shrunk: ClassEmbedder through cross-attention on a VQ first stage. */
static const char *VQ_LDM_YAML = LDM_HEAD
    "    conditioning_key: crossattn\n"
    "    cond_stage_trainable: true\n"
    "    scale_by_std: true\n"
    "    use_ema: false\n"
    "    unet_config:\n"
    "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
    "      params: {image_size: 4, in_channels: 3, out_channels: 3, model_channels: 32, attention_resolutions: [1],\n"
    "               num_res_blocks: 1, channel_mult: [1, 1], num_head_channels: 16, use_spatial_transformer: true,\n"
    "               transformer_depth: 1, context_dim: 16}\n" VQ_FIRST_STAGE "    cond_stage_config:\n"
    "      target: ldm.modules.encoders.modules.ClassEmbedder\n"
    "      params: {embed_dim: 16, n_classes: 4, key: class_label}\n"
    "data:\n"
    "  params: {batch_size: 4}\n";

/* celebahq-ldm-vq-4's UNet with label_emb (num_classes) instead of a cond stage. FiLM
 * (use_scale_shift_norm): with 32 channels GroupNorm(32) has one channel per group and would
 * remove an added embedding entirely, so the class would have no effect to test. */
static const char *LABEL_LDM_YAML = LDM_HEAD
    "    learn_logvar: true\n"
    "    use_ema: true\n"
    "    unet_config:\n"
    "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
    "      params: {image_size: 4, in_channels: 3, out_channels: 3, model_channels: 32, attention_resolutions: [2],\n"
    "               num_res_blocks: 1, channel_mult: [1, 1], num_heads: 2, num_classes: 3, use_scale_shift_norm: "
    "true}\n" VQ_FIRST_STAGE "    cond_stage_config: __is_unconditional__\n"
    "data:\n"
    "  params: {batch_size: 4}\n";

static void setup(void)
{
    ck_train_root_create(root, "train-sample");
    char path[700], text[8192];
    snprintf(path, sizeof path, "%s/data", root);
    ck_train_make_bars(path, 9);
    snprintf(text, sizeof text, VQ_LDM_YAML, golden_vq());
    snprintf(path, sizeof path, "%s/vq.yaml", root);
    ck_train_write_file(path, text);
    snprintf(text, sizeof text, LABEL_LDM_YAML, golden_vq());
    snprintf(path, sizeof path, "%s/label.yaml", root);
    ck_train_write_file(path, text);
}

static void teardown(void)
{
    ck_train_root_remove(root);
}

static void train(const char *yaml, const char *out, int steps, const char *export_path)
{
    char cfg[700];
    snprintf(cfg, sizeof cfg, "%s/%s", root, yaml);
    ldm_train_params p = ck_train_params(root, out, 5);
    p.max_steps = steps;
    ldm_trainer *t = NULL;
    ck_assert_msg(ldm_trainer_create(cfg, &p, &t) == LDM_OK, "%s", ldm_last_error());
    ck_assert_msg(ldm_trainer_run(t) == LDM_OK, "%s", ldm_last_error());
    if (export_path) ck_assert_msg(ldm_trainer_export(t, export_path, 0) == LDM_OK, "%s", ldm_last_error());
    ldm_trainer_free(t);
}

static ldm_model *load(const char *path, const char *config)
{
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    mp.n_threads = 2;
    mp.config_path = config;
    ldm_model *m = NULL;
    ck_assert_msg(ldm_model_load(path, &mp, &m) == LDM_OK, "%s: %s", path, ldm_last_error());
    return m;
}

/* ldm_generate of one 16x16 image in a few DDIM steps; NULL with the status in *st on failure. */
static ldm_tensor *generate(ldm_model *m, int cls, float guidance, int uncond, ldm_status *st)
{
    ldm_generate_params g;
    ldm_generate_params_init(&g);
    g.class_label = cls, g.guidance_scale = guidance, g.steps = 4, g.seed = 11;
    if (uncond != LDM_UNCOND_CLASS_AUTO) g.uncond_class = uncond;
    ldm_tensor *img = NULL;
    *st = ldm_generate(m, &g, &img);
    if (*st != LDM_OK) return NULL;
    ck_assert_int_eq(ldm_tensor_ndim(img), 4);
    ck_assert(ldm_tensor_dim(img, 1) == 3 && ldm_tensor_dim(img, 2) == 16 && ldm_tensor_dim(img, 3) == 16);
    const float *v = ldm_tensor_data(img);
    for (int i = 0; i < 3 * 16 * 16; i++) ck_assert(isfinite(v[i]));
    return img;
}

/* max |z_a - z_b| of the final latents ldm_generate decodes (same seed): class a unguided, class
 * b with guidance_b and uncond_b. */
static double latent_diff(ldm_model *m, int a, int b, float guidance_b, int uncond_b)
{
    ldm_generate_params g;
    ldm_generate_params_init(&g);
    g.guidance_scale = 1.0f, g.steps = 4, g.seed = 11;
    ldm_tensor *za = NULL, *zb = NULL;
    g.class_label = a;
    ck_assert_msg(lp_generate_latent(m, &g, &za) == LDM_OK, "%s", ldm_last_error());
    g.class_label = b, g.guidance_scale = guidance_b, g.uncond_class = uncond_b;
    ck_assert_msg(lp_generate_latent(m, &g, &zb) == LDM_OK, "%s", ldm_last_error());
    double d = 0;
    for (int64_t i = 0; i < lt_numel(za); i++) d = fmax(d, fabs((double)lt_f32(za)[i] - lt_f32(zb)[i]));
    ldm_tensor_free(za), ldm_tensor_free(zb);
    return d;
}

static double max_diff(ldm_tensor *a, ldm_tensor *b)
{
    const float *x = ldm_tensor_data(a), *y = ldm_tensor_data(b);
    double d = 0;
    for (int64_t i = 0, n = ldm_tensor_numel(a); i < n; i++) d = fmax(d, fabs((double)x[i] - y[i]));
    return d;
}

START_TEST(vq_first_stage_ldm_trains_and_samples)
{
    train("vq.yaml", "vq", 3, NULL);
    char path[700];
    snprintf(path, sizeof path, "%s/vq/last.safetensors", root);
    /* the frozen VQ first stage is saved as it was, codebook included */
    lw_store *s = NULL, *ref = NULL;
    ck_assert_int_eq(lw_open(path, 0, &s), LDM_OK);
    ck_assert_int_eq(lw_open(golden_vq(), 0, &ref), LDM_OK);
    const char *keys[] = {"first_stage_model.quantize.embedding.weight", "first_stage_model.encoder.conv_in.weight",
                          "first_stage_model.decoder.conv_out.weight", "first_stage_model.quant_conv.weight"};
    for (int i = 0; i < 4; i++) {
        const lw_tensor *a = lw_find(s, keys[i]), *b = lw_find(ref, keys[i]);
        ck_assert_msg(a && b && a->nbytes == b->nbytes && !memcmp(a->data, b->data, a->nbytes), "%s", keys[i]);
    }
    ck_assert_ptr_nonnull(lw_find(s, "scale_factor"));
    lw_close(ref);
    lw_close(s);
    ldm_model *m = load(path, NULL); /* config.yaml beside it */
    ldm_status st;
    ldm_tensor *a = generate(m, 1, 1.0f, LDM_UNCOND_CLASS_AUTO, &st);
    ck_assert_msg(a, "%s", ldm_last_error());
    ldm_tensor *b = generate(m, 1, 1.0f, LDM_UNCOND_CLASS_AUTO, &st);
    ck_assert_msg(b && max_diff(a, b) == 0.0, "not reproducible");
    ldm_tensor_free(a), ldm_tensor_free(b);
    ldm_model_free(m);
    /* a VQ autoencoder itself does not train (no codebook or commitment loss): said by name */
    char cfg[700], data[700], out[700];
    snprintf(cfg, sizeof cfg, "%s/vqae.yaml", root);
    ck_train_write_file(
        cfg, "model:\n  base_learning_rate: 1.0e-4\n  target: ldm.models.autoencoder.VQModel\n  params:\n"
             "    embed_dim: 3\n    n_embed: 16\n    lossconfig: {target: torch.nn.Identity}\n"
             "    ddconfig: {double_z: false, z_channels: 3, resolution: 16, in_channels: 3, out_ch: 3, ch: 32,\n"
             "               ch_mult: [1, 1, 1], num_res_blocks: 0, attn_resolutions: [], dropout: 0.0}\n");
    snprintf(data, sizeof data, "%s/data", root);
    snprintf(out, sizeof out, "%s/vqae", root);
    ldm_train_params p;
    ldm_train_params_init(&p);
    p.data_dir = data, p.out_dir = out, p.max_steps = 1;
    ldm_trainer *t = NULL;
    ck_assert_int_eq(ldm_trainer_create(cfg, &p, &t), LDM_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(ldm_last_error(), "VQ"), "%s", ldm_last_error());
}
END_TEST

START_TEST(label_emb_model_trains_and_samples_a_class)
{
    char path[700], exported[700], config[700];
    snprintf(exported, sizeof exported, "%s/label_export.safetensors", root);
    train("label.yaml", "label", 10, exported);
    snprintf(path, sizeof path, "%s/label/last.safetensors", root);
    snprintf(config, sizeof config, "%s/label/config.yaml", root);
    lw_store *s = NULL;
    ck_assert_int_eq(lw_open(path, 0, &s), LDM_OK);
    ck_assert_ptr_nonnull(lw_find(s, "logvar"));
    ck_assert_ptr_nonnull(lw_find(s, "model_ema.diffusion_modellabel_embweight"));
    ck_assert_ptr_nonnull(lw_find(s, "model_ema.num_updates"));
    lw_close(s);

    ldm_model *m = load(path, NULL);
    ldm_status st;
    ldm_tensor *c0 = generate(m, 0, 0.0f, LDM_UNCOND_CLASS_AUTO, &st); /* default guidance: off */
    ck_assert_msg(c0, "%s", ldm_last_error());
    ldm_tensor *c2 = generate(m, 2, 1.0f, LDM_UNCOND_CLASS_AUTO, &st);
    ck_assert_msg(c2, "%s", ldm_last_error());
    /* the VQ decoder snaps latents to the codebook, so the classes are told apart before it */
    double d02 = latent_diff(m, 0, 2, 1.0f, LDM_UNCOND_CLASS_AUTO),
           d22 = latent_diff(m, 2, 2, 1.0f, LDM_UNCOND_CLASS_AUTO);
    ck_assert_msg(d02 > 1e-2 && d22 == 0.0, "latents of classes 0 vs 2 differ by %g, 2 vs 2 by %g", d02, d22);
    /* no class, or guidance without an unconditional class: refused, saying why */
    ck_assert_ptr_null(generate(m, -1, 1.0f, LDM_UNCOND_CLASS_AUTO, &st));
    ck_assert_int_eq(st, LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(generate(m, 2, 3.0f, LDM_UNCOND_CLASS_AUTO, &st));
    ck_assert_int_eq(st, LDM_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(ldm_last_error(), "uncond_class") && strstr(ldm_last_error(), "label_emb"), "%s",
                  ldm_last_error());
    ck_assert_ptr_null(generate(m, 3, 1.0f, LDM_UNCOND_CLASS_AUTO, &st)); /* classes 0..2 */
    ck_assert_int_eq(st, LDM_ERR_INVALID_ARGUMENT);
    /* guidance with a class the caller names as unconditional */
    ldm_tensor *g = generate(m, 2, 2.0f, 0, &st);
    ck_assert_msg(g, "%s", ldm_last_error());
    double dg = latent_diff(m, 2, 2, 2.0f, 0);
    ck_assert_msg(dg > 1e-3, "guidance made no difference (%g)", dg);

    /* apply / apply_guided take the labels as cond: guided = u + s (c - u) */
    int64_t xs[4] = {2, 3, 4, 4}, two = 2, one = 1;
    ldm_tensor *x = NULL, *t = NULL, *y = NULL, *yu = NULL, *ec = NULL, *eu = NULL, *eg = NULL, *bad = NULL;
    ck_assert_int_eq(ldm_tensor_create(LDM_F32, 4, xs, &x), LDM_OK);
    ck_assert_int_eq(ldm_randn(3, 0, x), LDM_OK);
    ck_assert_int_eq(ldm_tensor_create(LDM_I64, 1, &one, &t), LDM_OK);
    ((int64_t *)ldm_tensor_data(t))[0] = 40;
    ck_assert_int_eq(ldm_tensor_create(LDM_I64, 1, &two, &y), LDM_OK);
    ck_assert_int_eq(ldm_tensor_create(LDM_I64, 1, &two, &yu), LDM_OK);
    ((int64_t *)ldm_tensor_data(y))[0] = 1, ((int64_t *)ldm_tensor_data(y))[1] = 2;
    ((int64_t *)ldm_tensor_data(yu))[0] = 0, ((int64_t *)ldm_tensor_data(yu))[1] = 0;
    ck_assert_msg(ldm_model_apply(m, x, t, y, &ec) == LDM_OK, "%s", ldm_last_error());
    ck_assert_msg(ldm_model_apply(m, x, t, yu, &eu) == LDM_OK, "%s", ldm_last_error());
    ck_assert_msg(ldm_model_apply_guided(m, x, t, y, yu, 2.5f, &eg) == LDM_OK, "%s", ldm_last_error());
    const float *C = ldm_tensor_data(ec), *U = ldm_tensor_data(eu), *G = ldm_tensor_data(eg);
    double dcu = 0;
    for (int i = 0; i < 2 * 3 * 16; i++) dcu = fmax(dcu, fabs((double)C[i] - U[i]));
    ck_assert_msg(dcu > 1e-2, "the labels make no difference to the UNet output (%g)", dcu);
    for (int i = 0; i < 2 * 3 * 16; i++) ck_assert_msg(fabsf(G[i] - (U[i] + 2.5f * (C[i] - U[i]))) < 1e-5f, "%d", i);
    ck_assert_int_eq(ldm_model_apply(m, x, t, NULL, &bad), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(ldm_last_error(), "num_classes"), "%s", ldm_last_error());
    ldm_tensor_free(x), ldm_tensor_free(t), ldm_tensor_free(y), ldm_tensor_free(yu);
    ldm_tensor_free(ec), ldm_tensor_free(eu), ldm_tensor_free(eg);
    ldm_tensor_free(c0), ldm_tensor_free(c2), ldm_tensor_free(g);
    ldm_model_free(m);

    /* the export (EMA weights in place of the raw ones, no logvar kept apart) loads and samples */
    m = load(exported, config);
    ldm_tensor *e = generate(m, 1, 1.0f, LDM_UNCOND_CLASS_AUTO, &st);
    ck_assert_msg(e, "%s", ldm_last_error());
    ldm_tensor_free(e);
    ldm_model_free(m);
}
END_TEST

static Suite *sample_suite(void)
{
    Suite *s = suite_create("train_sample");
    TCase *tc = tcase_create("trainer");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, vq_first_stage_ldm_trains_and_samples);
    tcase_add_test(tc, label_emb_model_trains_and_samples_a_class);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return ck_run_suite(sample_suite());
}
