/* test_trainer.c - ldm_trainer end to end on tiny models and a tiny generated data set:
 *  - an AutoencoderKL run: the loss falls, the checkpoint + config.yaml load with ldm_model_load
 *    and reconstruct through the public first-stage calls;
 *  - a LatentDiffusion run on that autoencoder (ClassEmbedder, scale_by_std, EMA, label
 *    dropout): the loss falls, the checkpoint loads and generates, the export (EMA-only, float16)
 *    loads too;
 *  - resume: 3 + 3 steps with a save and a new trainer in between equal 6 steps straight, bit
 *    for bit (weights, optimiser state, EMA, scale_factor, data order and noise all continue);
 *  - interrupt and callback stop; parameter and config errors name what is wrong. */
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

#include "io/weights.h"
#include "ldm.h"
#include "support/ck_run.h"
#include "support/ck_train.h"

static char root[512];

static const char *AE_YAML =
    "model:\n"
    "  base_learning_rate: 2.5e-4\n"
    "  target: ldm.models.autoencoder.AutoencoderKL\n"
    "  params:\n"
    "    embed_dim: 2\n"
    "    lossconfig:\n"
    "      target: ldm.modules.losses.LPIPSWithDiscriminator\n"
    "      params: {disc_start: 50001, kl_weight: 1.0e-6, disc_weight: 0.0, perceptual_weight: 0.0}\n"
    "    ddconfig: {double_z: true, z_channels: 2, resolution: 16, in_channels: 3, out_ch: 3, ch: 32,\n"
    "               ch_mult: [1, 1], num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}\n"
    "data:\n"
    "  params: {batch_size: 4}\n"
    "lightning:\n"
    "  trainer: {max_steps: 40}\n";

/* The LDM: its first stage's ckpt_path is filled in by write_ldm_yaml. */
static const char *LDM_YAML_FMT =
    "model:\n"
    "  base_learning_rate: 2.5e-4\n"
    "  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
    "  params:\n"
    "    linear_start: 0.0015\n"
    "    linear_end: 0.0195\n"
    "    timesteps: 100\n"
    "    image_size: 8\n"
    "    channels: 2\n"
    "    cond_stage_key: class_label\n"
    "    cond_stage_trainable: true\n"
    "    conditioning_key: crossattn\n"
    "    scale_by_std: true\n"
    "    use_ema: true\n"
    "    scheduler_config:\n"
    "      target: ldm.lr_scheduler.LambdaLinearScheduler\n"
    "      params: {warm_up_steps: [5], cycle_lengths: [10000000], f_start: [0.1], f_max: [1.0], f_min: [1.0]}\n"
    "    unet_config:\n"
    "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
    "      params: {image_size: 8, in_channels: 2, out_channels: 2, model_channels: 32, attention_resolutions: [2],\n"
    "               num_res_blocks: 1, channel_mult: [1, 1], num_head_channels: 16, use_spatial_transformer: true,\n"
    "               transformer_depth: 1, context_dim: 16}\n"
    "    first_stage_config:\n"
    "      target: ldm.models.autoencoder.AutoencoderKL\n"
    "      params:\n"
    "        embed_dim: 2\n"
    "        ckpt_path: %s\n"
    "        ddconfig: {double_z: true, z_channels: 2, resolution: 16, in_channels: 3, out_ch: 3, ch: 32,\n"
    "                   ch_mult: [1, 1], num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}\n"
    "        lossconfig: {target: torch.nn.Identity}\n"
    "    cond_stage_config:\n"
    "      target: ldm.modules.encoders.modules.ClassEmbedder\n"
    "      params: {embed_dim: 16, n_classes: 4, key: class_label, ucg_rate: 0.25}\n"
    "data:\n"
    "  params: {batch_size: 4}\n"
    "lightning:\n"
    "  trainer: {max_steps: 30}\n";

static void setup(void)
{
    ck_train_root_create(root, "trainer");
    char path[700];
    snprintf(path, sizeof path, "%s/data", root);
    ck_train_make_bars(path, 12);
    snprintf(path, sizeof path, "%s/ae.yaml", root);
    ck_train_write_file(path, AE_YAML);
}

static void teardown(void) { ck_train_root_remove(root); }

static ldm_train_params base_params(const char *out)
{
    return ck_train_params(root, out, 5);
}

static void train_autoencoder(void)
{
    char cfg[700];
    snprintf(cfg, sizeof cfg, "%s/ae.yaml", root);
    ldm_train_params p = base_params("ae");
    ck_train_losses l = {.window = 5, .total = 40};
    p.callback = ck_train_record_loss, p.user_data = &l;
    ldm_trainer *t = NULL;
    ck_assert_msg(ldm_trainer_create(cfg, &p, &t) == LDM_OK, "%s", ldm_last_error());
    ck_assert_msg(ldm_trainer_run(t) == LDM_OK, "%s", ldm_last_error());
    ldm_train_progress pr;
    ck_assert_int_eq(ldm_trainer_progress(t, &pr), LDM_OK);
    ck_assert_int_eq(pr.step, 40);
    ck_assert_str_eq(pr.phase, "autoencoder");
    ck_assert_int_eq(l.n, 40);
    ck_assert_msg(l.last < 0.5 * l.first, "autoencoder loss did not fall: %g -> %g", l.first, l.last);
    ldm_trainer_free(t);
}

static void write_ldm_yaml(void)
{
    char text[8192], ae[700], path[700];
    snprintf(ae, sizeof ae, "%s/ae/last.safetensors", root);
    snprintf(text, sizeof text, LDM_YAML_FMT, ae);
    snprintf(path, sizeof path, "%s/ldm.yaml", root);
    ck_train_write_file(path, text);
}

START_TEST(autoencoder_trains_and_loads)
{
    train_autoencoder();
    char path[700], cfg[700];
    snprintf(path, sizeof path, "%s/ae/last.safetensors", root);
    snprintf(cfg, sizeof cfg, "%s/ae/config.yaml", root);
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    mp.config_path = cfg;
    ldm_model *m = NULL;
    ck_assert_msg(ldm_model_load(path, &mp, &m) == LDM_OK, "%s", ldm_last_error());
    /* the trained autoencoder reconstructs a training image better than an untrained one would */
    snprintf(path, sizeof path, "%s/data/img04.png", root);
    ldm_tensor *x = NULL, *mom = NULL, *z = NULL, *y = NULL;
    ck_assert_int_eq(ldm_image_read_png(path, &x), LDM_OK);
    ldm_autoencoder *ae = NULL;
    ck_assert_msg(ldm_model_autoencoder(m, &ae) == LDM_OK, "%s", ldm_last_error());
    ck_assert_msg(ldm_autoencoder_encode(ae, x, &mom) == LDM_OK, "%s", ldm_last_error());
    ck_assert_int_eq(ldm_posterior_split(mom, &z, NULL, NULL), LDM_OK);
    ck_assert_msg(ldm_autoencoder_decode(ae, z, &y) == LDM_OK, "%s", ldm_last_error());
    const float *a = ldm_tensor_data(x), *b = ldm_tensor_data(y);
    double err = 0.0;
    for (int i = 0; i < 3 * 16 * 16; i++) err += fabs((double)a[i] - b[i]);
    err /= 3 * 16 * 16;
    ck_assert_msg(err < 0.3, "mean reconstruction error %g", err);
    ldm_tensor_free(x), ldm_tensor_free(mom), ldm_tensor_free(z), ldm_tensor_free(y);
    ldm_model_free(m);
}
END_TEST

START_TEST(diffusion_trains_loads_and_generates)
{
    train_autoencoder();
    write_ldm_yaml();
    char cfg[700], path[700], out[700];
    snprintf(cfg, sizeof cfg, "%s/ldm.yaml", root);
    ldm_train_params p = base_params("ldm");
    ck_train_losses l = {.window = 5, .total = 30};
    p.callback = ck_train_record_loss, p.user_data = &l;
    ldm_trainer *t = NULL;
    ck_assert_msg(ldm_trainer_create(cfg, &p, &t) == LDM_OK, "%s", ldm_last_error());
    ck_assert_msg(ldm_trainer_run(t) == LDM_OK, "%s", ldm_last_error());
    ck_assert_msg(l.last < l.first, "diffusion loss did not fall: %g -> %g", l.first, l.last);
    snprintf(out, sizeof out, "%s/ldm/export.safetensors", root);
    ck_assert_msg(ldm_trainer_export(t, out, 1) == LDM_OK, "%s", ldm_last_error());
    ldm_trainer_free(t);
    /* the checkpoint (with EMA) and the export both load and generate a class */
    const char *files[2] = {"last.safetensors", "export.safetensors"};
    for (int k = 0; k < 2; k++) {
        snprintf(path, sizeof path, "%s/ldm/%s", root, files[k]);
        snprintf(cfg, sizeof cfg, "%s/ldm/config.yaml", root);
        ldm_model_params mp;
        ldm_model_params_init(&mp);
        mp.config_path = cfg;
        ldm_model *m = NULL;
        ck_assert_msg(ldm_model_load(path, &mp, &m) == LDM_OK, "%s: %s", files[k], ldm_last_error());
        ldm_generate_params gp;
        ldm_generate_params_init(&gp);
        gp.class_label = 1;
        gp.steps = 5;
        ldm_tensor *img = NULL;
        ck_assert_msg(ldm_generate(m, &gp, &img) == LDM_OK, "%s: %s", files[k], ldm_last_error());
        ck_assert_int_eq(ldm_tensor_dim(img, 3), 16);
        ldm_tensor_free(img);
        ldm_model_free(m);
    }
}
END_TEST

START_TEST(resume_continues_exactly)
{
    char cfg[700];
    snprintf(cfg, sizeof cfg, "%s/ae.yaml", root);
    /* 6 steps straight */
    ldm_train_params p = base_params("straight");
    p.max_steps = 6;
    ldm_trainer *t = NULL;
    ck_assert_msg(ldm_trainer_create(cfg, &p, &t) == LDM_OK, "%s", ldm_last_error());
    ck_assert_int_eq(ldm_trainer_run(t), LDM_OK);
    ldm_trainer_free(t);
    /* 3, save, a new trainer resumes for 3 more */
    p = base_params("resumed");
    p.max_steps = 3;
    ck_assert_int_eq(ldm_trainer_create(cfg, &p, &t), LDM_OK);
    ck_assert_int_eq(ldm_trainer_run(t), LDM_OK);
    ldm_trainer_free(t);
    p.max_steps = 6;
    p.resume = 1;
    ck_assert_msg(ldm_trainer_create(cfg, &p, &t) == LDM_OK, "%s", ldm_last_error());
    ldm_train_progress pr;
    ldm_trainer_progress(t, &pr);
    ck_assert_int_eq(pr.step, 3);
    ck_assert_int_eq(ldm_trainer_run(t), LDM_OK);
    ldm_trainer_free(t);
    ck_train_expect_same(root, "straight", "resumed", "last.safetensors");
    ck_train_expect_same(root, "straight", "resumed", "last.state.safetensors");
}
END_TEST

static int stop_at_two(const ldm_train_progress *p, void *user)
{
    (void)user;
    return p->step >= 2;
}

START_TEST(callback_stops_and_saves)
{
    char cfg[700], path[700];
    snprintf(cfg, sizeof cfg, "%s/ae.yaml", root);
    ldm_train_params p = base_params("stopped");
    p.callback = stop_at_two;
    ldm_trainer *t = NULL;
    ck_assert_int_eq(ldm_trainer_create(cfg, &p, &t), LDM_OK);
    ck_assert_int_eq(ldm_trainer_run(t), LDM_CANCELLED);
    ldm_train_progress pr;
    ldm_trainer_progress(t, &pr);
    ck_assert_int_eq(pr.step, 2);
    /* a later call runs again (the stop is not sticky): one more step, then the callback stops it */
    ck_assert_int_eq(ldm_trainer_step(t, 1), LDM_CANCELLED);
    ldm_trainer_progress(t, &pr);
    ck_assert_int_eq(pr.step, 3);
    ldm_trainer_free(t);
    snprintf(path, sizeof path, "%s/stopped/last.safetensors", root);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
}
END_TEST

START_TEST(errors_name_the_problem)
{
    char cfg[700], path[700];
    snprintf(cfg, sizeof cfg, "%s/ae.yaml", root);
    ldm_trainer *t = NULL;
    ldm_train_params p = base_params("err");
    p.data_dir = NULL;
    ck_assert_int_eq(ldm_trainer_create(cfg, &p, &t), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "data_dir"));
    ck_assert_ptr_null(t);
    p = base_params("err");
    p.batch_size = -1;
    ck_assert_int_eq(ldm_trainer_create(cfg, &p, &t), LDM_ERR_INVALID_ARGUMENT);
    /* a config without base_learning_rate */
    snprintf(path, sizeof path, "%s/nolr.yaml", root);
    const char *nolr = strstr(AE_YAML, "  target:");
    char text[4096];
    snprintf(text, sizeof text, "model:\n%s", nolr);
    ck_train_write_file(path, text);
    p = base_params("err");
    ck_assert_int_eq(ldm_trainer_create(path, &p, &t), LDM_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "base_learning_rate"));
    /* an LDM whose first stage file is missing */
    write_ldm_yaml(); /* points at <root>/ae/last.safetensors, not trained in this test */
    snprintf(path, sizeof path, "%s/ldm.yaml", root);
    p = base_params("err");
    ck_assert_int_ne(ldm_trainer_create(path, &p, &t), LDM_OK);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "ae/last.safetensors"));
    /* a data folder without images */
    snprintf(path, sizeof path, "%s/empty", root);
    mkdir(path, 0777);
    p = base_params("err");
    p.data_dir = path;
    ck_assert_int_ne(ldm_trainer_create(cfg, &p, &t), LDM_OK);
    ck_assert_ptr_null(t);
}
END_TEST

static Suite *trainer_suite(void)
{
    Suite *s = suite_create("trainer");
    TCase *tc = tcase_create("runs");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, autoencoder_trains_and_loads);
    tcase_add_test(tc, diffusion_trains_loads_and_generates);
    tcase_add_test(tc, resume_continues_exactly);
    tcase_add_test(tc, callback_stops_and_saves);
    tcase_add_test(tc, errors_name_the_problem);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return ck_run_suite(trainer_suite());
}
