/* test_train_extras.c - the training options beyond the basic UNet (issue #13):
 *  - dropout on the tape: the share of kept elements and their scale, the mask a function of
 *    (seed, draw, site, index) only (the same in backward, in a recomputed segment and at any
 *    thread count), finite differences through the channel gather;
 *  - ldm_trainer on a class-conditional UNet with label_emb (num_classes, y = the labels) and
 *    legacy AttentionBlocks, resblock_updown, ResBlock dropout, use_checkpoint, the vlb term and
 *    a learned logvar: the loss falls within seconds; 3 + 3 steps resumed equal 6 straight and
 *    1 thread equals 2 threads, bit for bit (dropout masks included); a memory budget gives the
 *    same weights as no budget. */
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
#include "support/ck_rand.h"
#include "support/ck_run.h"
#include "support/ck_train.h"
#include "train/tape.h"

/* ---------------------------------------------------------------- dropout and gather ops */

START_TEST(dropout_mask_statistics)
{
    const size_t n = 200000;
    const float p = 0.3f;
    float *x = malloc(n * sizeof(float)), *dy = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = 1.0f + 0.5f * frand(), dy[i] = frand();
    ltp_tape *t;
    ck_assert_int_eq(ltp_tape_create(NULL, &t), LDM_OK);
    ltp_set_rng(t, 42, 7);
    int64_t shape[2] = {4, (int64_t)n / 4};
    ltp_id xi = ltp_input(t, 2, shape, x, 1);
    ltp_id y = ltp_dropout(t, xi, p, ltp_site_hash("input_blocks.1.0.out_layers.2"));
    ck_assert_int_ge(y, 0);
    const float *Y = ltp_data(t, y);
    size_t kept = 0;
    double sx = 0, sy = 0;
    for (size_t i = 0; i < n; i++) {
        int keep = ltp_dropout_keep(42, 7, ltp_site_hash("input_blocks.1.0.out_layers.2"), i, p);
        kept += keep;
        ck_assert_msg(keep ? Y[i] == x[i] * (1.0f / (1.0f - p)) : Y[i] == 0.0f, "element %zu", i);
        sx += x[i], sy += Y[i];
    }
    /* binomial: sd of the kept share sqrt(p (1-p) / n) = 0.001 */
    ck_assert_msg(fabs((double)kept / n - (1.0 - p)) < 0.005, "kept %zu of %zu", kept, n);
    ck_assert_msg(fabs(sy / sx - 1.0) < 0.01, "mean not preserved: %g vs %g", sy / n, sx / n);
    /* backward: the same mask and scale */
    ck_assert_int_eq(ltp_seed_grad(t, y, dy), LDM_OK);
    ck_assert_int_eq(ltp_backward(t), LDM_OK);
    const float *dx = ltp_grad(t, xi);
    for (size_t i = 0; i < n; i++) ck_assert(dx[i] == (Y[i] != 0.0f ? dy[i] * (1.0f / (1.0f - p)) : 0.0f));
    /* another draw, another site: other masks; p = 0: the identity, no operation */
    size_t same_draw = 0, same_site = 0;
    uint64_t site = ltp_site_hash("input_blocks.1.0.out_layers.2"),
             other = ltp_site_hash("middle_block.0.out_layers.2");
    for (size_t i = 0; i < 10000; i++) {
        int k = ltp_dropout_keep(42, 7, site, i, p);
        same_draw += k == ltp_dropout_keep(42, 8, site, i, p);
        same_site += k == ltp_dropout_keep(42, 7, other, i, p);
    }
    ck_assert(same_draw < 6500 && same_site < 6500); /* independent masks agree on p^2 + (1-p)^2 = 58 % */
    ck_assert_int_eq(ltp_dropout(t, xi, 0.0f, site), xi);
    ltp_tape_free(t);
    free(x), free(dy);
}
END_TEST

/* sum(r * gather(x)) by central differences against the tape. */
START_TEST(gather_channels_finite_differences)
{
    enum { B = 2, C = 6, HW = 5 };
    int idx[7] = {4, 0, 0, 5, 2, 3, 4}; /* repeats and a channel never picked (1) */
    float x[B * C * HW], r[B * 7 * HW];
    for (int i = 0; i < B * C * HW; i++) x[i] = frand();
    for (int i = 0; i < B * 7 * HW; i++) r[i] = frand();
    int64_t shape[3] = {B, C, HW};
    ltp_tape *t;
    ck_assert_int_eq(ltp_tape_create(NULL, &t), LDM_OK);
    ltp_id xi = ltp_input(t, 3, shape, x, 1), y = ltp_gather_channels(t, xi, idx, 7);
    ck_assert_int_eq(ltp_dim(t, y, 1), 7);
    ck_assert_int_eq(ltp_seed_grad(t, y, r), LDM_OK);
    ck_assert_int_eq(ltp_backward(t), LDM_OK);
    float dx[B * C * HW];
    memcpy(dx, ltp_grad(t, xi), sizeof dx);
    for (int j = 0; j < B * C * HW; j++) {
        double L[2];
        for (int s = 0; s < 2; s++) {
            float keep = x[j];
            x[j] = keep + (s ? -1e-2f : 1e-2f);
            ltp_reset(t);
            ltp_id a = ltp_input(t, 3, shape, x, 0), b = ltp_gather_channels(t, a, idx, 7);
            L[s] = 0;
            for (int i = 0; i < B * 7 * HW; i++) L[s] += (double)r[i] * ltp_data(t, b)[i];
            x[j] = keep;
        }
        double fd = (L[0] - L[1]) / 2e-2;
        ck_assert_msg(fabs(fd - dx[j]) < 1e-3, "x[%d]: fd %g tape %g", j, fd, dx[j]);
    }
    int bad[1] = {6};
    ltp_reset(t);
    ltp_id a = ltp_input(t, 3, shape, x, 0);
    ck_assert_int_eq(ltp_gather_channels(t, a, bad, 1), LTP_NONE);
    ck_assert_ptr_nonnull(strstr(ltp_error(t), "channel 6"));
    ltp_tape_free(t);
}
END_TEST

/* ---------------------------------------------------------------- trainer */

static char root[512];

static const char *AE_YAML =
    "model:\n"
    "  base_learning_rate: 2.5e-4\n"
    "  target: ldm.models.autoencoder.AutoencoderKL\n"
    "  params:\n"
    "    embed_dim: 2\n"
    "    lossconfig: {target: torch.nn.Identity}\n"
    "    ddconfig: {double_z: true, z_channels: 2, resolution: 16, in_channels: 3, out_ch: 3, ch: 32,\n"
    "               ch_mult: [1, 2], num_res_blocks: 0, attn_resolutions: [], dropout: 0.0}\n"
    "data:\n"
    "  params: {batch_size: 4}\n";

/* celebahq-ldm-vq-4 / cin-ldm-vq-f8 shapes shrunk: AttentionBlocks, label_emb, a KL first stage. */
static const char *LDM_YAML_FMT =
    "model:\n"
    "  base_learning_rate: 1.0e-3\n"
    "  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
    "  params:\n"
    "    linear_start: 0.0015\n"
    "    linear_end: 0.0195\n"
    "    timesteps: 100\n"
    "    image_size: 8\n"
    "    channels: 2\n"
    "    cond_stage_key: class_label\n"
    "    original_elbo_weight: 0.1\n"
    "    learn_logvar: true\n"
    "    logvar_init: 0.0\n"
    "    use_ema: false\n"
    "    unet_config:\n"
    "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
    "      params: {image_size: 8, in_channels: 2, out_channels: 2, model_channels: 32, attention_resolutions: [2],\n"
    "               num_res_blocks: 1, channel_mult: [1, 1], num_heads: 2, resblock_updown: true, num_classes: 3,\n"
    "               dropout: 0.1, use_checkpoint: %s}\n"
    "    first_stage_config:\n"
    "      target: ldm.models.autoencoder.AutoencoderKL\n"
    "      params:\n"
    "        embed_dim: 2\n"
    "        ckpt_path: %s\n"
    "        ddconfig: {double_z: true, z_channels: 2, resolution: 16, in_channels: 3, out_ch: 3, ch: 32,\n"
    "                   ch_mult: [1, 2], num_res_blocks: 0, attn_resolutions: [], dropout: 0.0}\n"
    "        lossconfig: {target: torch.nn.Identity}\n"
    "    cond_stage_config: __is_unconditional__\n"
    "data:\n"
    "  params: {batch_size: 6}\n"
    "lightning:\n"
    "  trainer: {max_steps: 120}\n";

static ldm_train_params base_params(const char *out)
{
    return ck_train_params(root, out, 9);
}

/* A briefly trained autoencoder (its quality does not matter here) and the LDM configs. */
static void setup(void)
{
    ck_train_root_create(root, "train-extras");
    char path[700], cfg[700], text[8192], ae[700];
    snprintf(path, sizeof path, "%s/data", root);
    ck_train_make_bars(path, 12);
    snprintf(cfg, sizeof cfg, "%s/ae.yaml", root);
    ck_train_write_file(cfg, AE_YAML);
    ldm_train_params p = base_params("ae");
    p.max_steps = 2;
    ck_train_run(cfg, &p);
    snprintf(ae, sizeof ae, "%s/ae/last.safetensors", root);
    for (int ck = 0; ck < 2; ck++) {
        snprintf(text, sizeof text, LDM_YAML_FMT, ck ? "true" : "false", ae);
        snprintf(path, sizeof path, "%s/ldm%s.yaml", root, ck ? "_ck" : "");
        ck_train_write_file(path, text);
    }
}

static void teardown(void)
{
    ck_train_root_remove(root);
}

static void run(const char *yaml, ldm_train_params *p)
{
    char cfg[700];
    snprintf(cfg, sizeof cfg, "%s/%s", root, yaml);
    ck_train_run(cfg, p);
}

START_TEST(class_unet_with_attention_blocks_learns)
{
    ldm_train_params p = base_params("curve");
    ck_train_losses l = {.window = 8, .total = 120};
    p.callback = ck_train_record_loss, p.user_data = &l;
    run("ldm_ck.yaml", &p);
    ck_assert_msg(l.last < 0.92 * l.first, "loss did not fall: %g -> %g", l.first, l.last);
    /* the checkpoint holds label_emb, the AttentionBlocks and the learned logvar */
    char path[700];
    snprintf(path, sizeof path, "%s/curve/last.safetensors", root);
    lw_store *s = NULL;
    ck_assert_int_eq(lw_open(path, 0, &s), LDM_OK);
    ck_assert_ptr_nonnull(lw_find(s, "model.diffusion_model.label_emb.weight"));
    ck_assert_ptr_nonnull(lw_find(s, "model.diffusion_model.middle_block.1.qkv.weight"));
    ck_assert_ptr_nonnull(lw_find(s, "model.diffusion_model.input_blocks.2.0.in_layers.2.weight")); /* updown */
    const lw_tensor *lv = lw_find(s, "logvar");
    ck_assert_msg(lv && lv->ndim == 1 && lv->shape[0] == 100, "logvar");
    float *v = NULL;
    ck_assert_int_eq(lw_get_f32(s, "logvar", -1, NULL, &v), LDM_OK);
    int moved = 0;
    for (int i = 0; i < 100; i++) moved += v[i] != 0.0f;
    ck_assert_msg(moved > 0, "the learned logvar never moved");
    ldm_free(v);
    lw_close(s);
}
END_TEST

START_TEST(dropout_runs_reproduce)
{
    /* 6 steps straight (2 threads), 6 steps at 1 thread, 6 steps under a memory budget */
    ldm_train_params p = base_params("straight");
    p.max_steps = 6;
    run("ldm.yaml", &p);
    p = base_params("one_thread");
    p.max_steps = 6, p.n_threads = 1;
    run("ldm.yaml", &p);
    p = base_params("budget");
    p.max_steps = 6, p.max_activation_bytes = 64 << 10;
    run("ldm.yaml", &p);
    /* 3 steps, then a new trainer resumes for 3 more */
    p = base_params("resumed");
    p.max_steps = 3;
    run("ldm.yaml", &p);
    p.max_steps = 6, p.resume = 1;
    run("ldm.yaml", &p);
    ck_train_expect_same(root, "straight", "one_thread", "last.safetensors");
    ck_train_expect_same(root, "straight", "budget", "last.safetensors");
    ck_train_expect_same(root, "straight", "resumed", "last.safetensors");
    ck_train_expect_same(root, "straight", "resumed", "last.state.safetensors");
}
END_TEST

START_TEST(unsupported_combinations_named)
{
    char path[700], text[8192], ae[700];
    snprintf(ae, sizeof ae, "%s/ae/last.safetensors", root);
    snprintf(text, sizeof text, LDM_YAML_FMT, "false", ae);
    /* label_emb with a cond stage: the reference passes no y then */
    char *k = strstr(text, "    cond_stage_config: __is_unconditional__\n");
    ck_assert_ptr_nonnull(k);
    snprintf(k, sizeof text - (size_t)(k - text),
             "    conditioning_key: crossattn\n    cond_stage_config:\n      target: "
             "ldm.modules.encoders.modules.ClassEmbedder\n      params: {embed_dim: 16, n_classes: 3}\n");
    snprintf(path, sizeof path, "%s/bad.yaml", root);
    ck_train_write_file(path, text);
    ldm_train_params p = base_params("bad");
    p.max_steps = 1;
    ldm_trainer *t = NULL;
    ck_assert_int_ne(ldm_trainer_create(path, &p, &t), LDM_OK);
    ck_assert_msg(strstr(ldm_last_error(), "num_classes"), "%s", ldm_last_error());
    /* dropout must be below 1 */
    snprintf(text, sizeof text, LDM_YAML_FMT, "false", ae);
    k = strstr(text, "dropout: 0.1");
    memcpy(k, "dropout: 1.5", 12);
    ck_train_write_file(path, text);
    ck_assert_int_ne(ldm_trainer_create(path, &p, &t), LDM_OK);
    ck_assert_msg(strstr(ldm_last_error(), "dropout"), "%s", ldm_last_error());
}
END_TEST

static Suite *extras_suite(void)
{
    Suite *s = suite_create("train_extras");
    TCase *ops = tcase_create("ops");
    tcase_add_test(ops, dropout_mask_statistics);
    tcase_add_test(ops, gather_channels_finite_differences);
    suite_add_tcase(s, ops);
    TCase *tc = tcase_create("trainer");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, class_unet_with_attention_blocks_learns);
    tcase_add_test(tc, dropout_runs_reproduce);
    tcase_add_test(tc, unsupported_combinations_named);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return ck_run_suite(extras_suite());
}
