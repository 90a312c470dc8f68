/* test_train_finetune.c - fine-tuning a text-conditioned model with ldm_trainer: the tiny SD
 * 1.x-style model of the shared fixture ldm_sd1_txt2img (FrozenCLIPEmbedder, KL first stage,
 * SpatialTransformer UNet) on 8x8 images with two captions:
 *  - captions, whole UNet (v-parameterised: with eps the caption only matters at high t, where
 *    its share of the eps loss is tiny, and 200 steps learn to ignore it): the loss falls, and the
 *    trained model (loaded from the run's checkpoint with ldm_model_load: config.yaml, frozen
 *    text encoder written back) predicts v at high t better with the image's own caption than
 *    with the other one, which the base model cannot;
 *  - LoRA (rank 4): only the adapters change (the checkpoint's base weights are the base's bit
 *    for bit), the loss falls, the export is a kohya LoRA file, and the base with the adapters
 *    merged (ltr_lora_merge) exports, loads as a whole model and tells the captions apart;
 *  - resume of a LoRA run continues exactly (3 + 3 steps = 6 steps);
 *  - a frozen BERTEmbedder read from the first stage's file, UNet from scratch;
 *  - refusals: LoRA without a base, a trainable text encoder, an image without caption, no
 *    vocabulary.
 * Needs $LDM_SHARED (fixtures and vocab): SKIPPED loudly without it. */
#include <check.h>

#pragma GCC diagnostic ignored "-Wformat-truncation"
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/weights.h"
#include "ldm.h"
#include "support/ck_fixture.h"
#include "support/ck_run.h"
#include "support/ck_train.h"
#include "train/lora.h"
#include "train/trainer_internal.h"

static char root[512], fixture[4096], vocab[4096], base_ckpt[4200];
static int have_shared;

/* The fixture's config for training: see ck_train_sd1_config. */
static void write_config(const char *path, const char *model_extra, const char *top_extra)
{
    ck_train_sd1_config(fixture, path, model_extra, top_extra, -1);
}

static void setup(void)
{
    have_shared = ck_train_sd1_setup(root, "finetune", fixture, vocab, base_ckpt);
}

static void teardown(void)
{
    ck_train_root_remove(root);
}

static ldm_train_params params_for(const char *out)
{
    ldm_train_params p = ck_train_params(root, out, 3);
    p.init_from = base_ckpt, p.vocab_path = vocab;
    return p;
}

typedef ck_train_losses losses;

/* Sum over both images and six high timesteps of |v(x_t, other caption) - v|^2 - |v(x_t, own
 * caption) - v|^2, relative to the latter: > 0 when the captions help. */
static double caption_advantage(const char *ckpt, float scale)
{
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    mp.vocab_path = vocab;
    char cfg[700];
    snprintf(cfg, sizeof cfg, "%s", ckpt);
    ldm_model *m = NULL;
    ck_assert_msg(ldm_model_load(ckpt, &mp, &m) == LDM_OK, "%s", ldm_last_error());
    ldm_autoencoder *ae = NULL;
    ldm_conditioner *cond = NULL;
    ck_assert_int_eq(ldm_model_autoencoder(m, &ae), LDM_OK);
    ck_assert_int_eq(ldm_model_conditioner(m, &cond), LDM_OK);
    ldm_tensor *ctx = NULL;
    ck_assert_msg(ldm_conditioner_encode_text(cond, CK_TRAIN_CAPTIONS, 2, &ctx) == LDM_OK, "%s", ldm_last_error());
    int64_t T = ldm_tensor_dim(ctx, 1), D = ldm_tensor_dim(ctx, 2);
    int64_t xs[4] = {1, 3, 8, 8}, zs[4] = {1, 4, 8, 8}, cs[3] = {1, T, D}, ts[1] = {1};
    double own = 0, other = 0;
    /* the fixture's schedule: linear 0.00085 .. 0.012 over 1000 steps (sqrt-linear betas) */
    double ac[1000], a = 1;
    for (int i = 0; i < 1000; i++) {
        double s = sqrt(0.00085) + (sqrt(0.012) - sqrt(0.00085)) * i / 999.0;
        a *= 1 - s * s;
        ac[i] = a;
    }
    for (int k = 0; k < 2; k++) {
        ldm_tensor *x = NULL, *mom = NULL, *z = NULL, *noise = NULL, *t = NULL, *c[2] = {NULL, NULL};
        ldm_tensor_create(LDM_F32, 4, xs, &x);
        ck_train_fill_halves(ldm_tensor_data(x), k, 0);
        ck_assert_int_eq(ldm_autoencoder_encode(ae, x, &mom), LDM_OK);
        ldm_tensor_create(LDM_F32, 4, zs, &z);
        ldm_tensor_create(LDM_F32, 4, zs, &noise);
        ldm_tensor_create(LDM_I64, 1, ts, &t);
        for (int j = 0; j < 2; j++) {
            ldm_tensor_create(LDM_F32, 3, cs, &c[j]);
            memcpy(ldm_tensor_data(c[j]), (float *)ldm_tensor_data(ctx) + (size_t)j * T * D, sizeof(float) * T * D);
        }
        const float *mean = ldm_tensor_data(mom);
        for (int r = 0; r < 6; r++) {
            int step = 999 - 60 * r;
            ((int64_t *)ldm_tensor_data(t))[0] = step;
            ck_assert_int_eq(ldm_randn(100 + r, (uint64_t)k, noise), LDM_OK);
            float *zx = ldm_tensor_data(z), *nz = ldm_tensor_data(noise);
            for (int i = 0; i < 4 * 64; i++)
                zx[i] = (float)(sqrt(ac[step]) * scale * mean[i] + sqrt(1 - ac[step]) * nz[i]);
            for (int j = 0; j < 2; j++) {
                ldm_tensor *eps = NULL;
                ck_assert_msg(ldm_model_apply(m, z, t, c[j], &eps) == LDM_OK, "%s", ldm_last_error());
                const float *e = ldm_tensor_data(eps);
                double err = 0; /* v = sqrt(ac) eps - sqrt(1 - ac) x0 */
                for (int i = 0; i < 4 * 64; i++) {
                    double v = sqrt(ac[step]) * nz[i] - sqrt(1 - ac[step]) * scale * mean[i];
                    err += (e[i] - v) * (e[i] - v);
                }
                if (j == k)
                    own += err;
                else
                    other += err;
                ldm_tensor_free(eps);
            }
        }
        ldm_tensor_free(x), ldm_tensor_free(mom), ldm_tensor_free(z), ldm_tensor_free(noise), ldm_tensor_free(t);
        ldm_tensor_free(c[0]), ldm_tensor_free(c[1]);
    }
    ldm_tensor_free(ctx);
    ldm_model_free(m);
    return (other - own) / own;
}

/* The scale_factor a scale_by_std run stored in its checkpoint. */
static float stored_scale(const char *ckpt)
{
    lw_store *s = NULL;
    float *v = NULL;
    ck_assert_int_eq(lw_open(ckpt, 0, &s), LDM_OK);
    ck_assert_msg(lw_get_f32(s, "scale_factor", -1, NULL, &v) == LDM_OK, "%s", ldm_last_error());
    float f = *v;
    ldm_free(v);
    lw_close(s);
    return f;
}

static void train(const char *cfg, ldm_train_params *p, int steps, losses *l)
{
    *l = (losses){.window = 20, .total = steps};
    p->max_steps = steps, p->callback = ck_train_record_loss, p->user_data = l;
    ck_train_run(cfg, p);
}

START_TEST(captions_full_unet)
{
    if (!have_shared) return;
    char cfg[700], ckpt[700];
    snprintf(cfg, sizeof cfg, "%s/captions.yaml", root);
    write_config(cfg, "    ucg_training: {txt: {p: 0.1, val: \"\"}}\n    scale_by_std: true\n    parameterization: v\n",
                 NULL);
    ldm_train_params p = params_for("full");
    p.learning_rate = 1e-3;
    losses l;
    train(cfg, &p, 200, &l);
    snprintf(ckpt, sizeof ckpt, "%s/full/last.safetensors", root);
    /* the base model's own config for the base (its image_size does not matter to the UNet) */
    char base_copy[700], base_cfg[700];
    snprintf(base_copy, sizeof base_copy, "%s/base.safetensors", root);
    snprintf(base_cfg, sizeof base_cfg, "%s/base.yaml", root);
    ck_assert_int_eq(symlink(base_ckpt, base_copy), 0);
    write_config(base_cfg, "    parameterization: v\n", NULL);
    float scale = stored_scale(ckpt);
    double before = caption_advantage(base_copy, scale), after = caption_advantage(ckpt, scale);
    printf("captions, whole UNet: loss %.4f -> %.4f (mean of the first / last 20 of 200 steps); caption advantage "
           "%.4f (base) -> %.4f (trained)\n",
           l.first, l.last, before, after);
    ck_assert_msg(l.last < 0.8 * l.first, "loss did not fall: %g -> %g", l.first, l.last);
    ck_assert_msg(fabs(before) < 0.02, "the base model already tells the captions apart (%g)", before);
    ck_assert_msg(after > 0.1, "the trained model does not tell the captions apart (%g)", after);
}
END_TEST

START_TEST(lora_fine_tune)
{
    if (!have_shared) return;
    char cfg[700], path[800];
    snprintf(cfg, sizeof cfg, "%s/lora.yaml", root);
    write_config(cfg, "    scale_by_std: true\n    parameterization: v\n", "lora: {rank: 4, alpha: 4}\n");
    ldm_train_params p = params_for("lora");
    p.learning_rate = 1e-2;
    losses l = {.window = 20, .total = 300};
    p.max_steps = 300, p.callback = ck_train_record_loss, p.user_data = &l;
    ldm_trainer *t = NULL;
    ck_assert_msg(ldm_trainer_create(cfg, &p, &t) == LDM_OK, "%s", ldm_last_error());
    size_t trainable = ltp_params_numel(t->ps, 1), all = ltp_params_numel(t->ps, 0);
    ck_assert_msg(ldm_trainer_run(t) == LDM_OK, "%s", ldm_last_error());
    snprintf(path, sizeof path, "%s/lora/adapter.safetensors", root);
    ck_assert_msg(ldm_trainer_export(t, path, 1) == LDM_OK, "%s", ldm_last_error());
    /* the base weights in the checkpoint are the base's, bit for bit */
    lw_store *base = NULL, *ck = NULL, *lora = NULL;
    char last[800];
    snprintf(last, sizeof last, "%s/lora/last.safetensors", root);
    ck_assert_int_eq(lw_open(base_ckpt, 0, &base), LDM_OK);
    ck_assert_int_eq(lw_open(last, 0, &ck), LDM_OK);
    size_t compared = 0;
    for (size_t i = 0; i < lw_count(base); i++) {
        const lw_tensor *w = lw_at(base, i);
        if (strncmp(w->name, "model.diffusion_model.", 22)) continue;
        float *a = NULL, *b = NULL;
        ck_assert_int_eq(lw_get_f32(base, w->name, -1, NULL, &a), LDM_OK);
        ck_assert_msg(lw_get_f32(ck, w->name, w->ndim, w->shape, &b) == LDM_OK, "%s", ldm_last_error());
        ck_assert_msg(!memcmp(a, b, w->nbytes / lw_dtype_size(w->dtype) * sizeof(float)), "%s changed", w->name);
        ldm_free(a), ldm_free(b);
        compared++;
    }
    /* the kohya file: diffusers names of the one down block's SpatialTransformer */
    ck_assert_int_eq(lw_open(path, 0, &lora), LDM_OK);
    ck_assert_ptr_nonnull(lw_find(lora, "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"));
    ck_assert_ptr_nonnull(
        lw_find(lora, "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight"));
    ck_assert_ptr_nonnull(lw_find(lora, "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_ff_net_2.alpha"));
    size_t n_lora = lw_count(lora);
    lw_close(base), lw_close(ck), lw_close(lora);
    /* the merged model: adapters folded into the base weights, exported whole */
    ck_assert_int_eq(ltr_lora_merge(t->ps, "model.diffusion_model.", &t->lora, t->ps), LDM_OK);
    t->lora.rank = 0;
    snprintf(path, sizeof path, "%s/lora/merged.safetensors", root);
    ck_assert_msg(ldm_trainer_export(t, path, 0) == LDM_OK, "%s", ldm_last_error());
    ldm_trainer_free(t);
    double adv = caption_advantage(path, stored_scale(path));
    printf("LoRA rank 4: %zu of %zu parameters trained, %zu base tensors unchanged, %zu tensors in the kohya file; "
           "loss %.4f -> %.4f; caption advantage of the merged model %.4f\n",
           trainable, all, compared, n_lora, l.first, l.last, adv);
    ck_assert_uint_eq(n_lora, 3 * 12 * 4); /* 4 SpatialTransformers (down, mid, 2 up) x 12 layers */
    ck_assert_msg(trainable < all / 5, "%zu of %zu trainable", trainable, all);
    ck_assert_msg(l.last < 0.85 * l.first, "loss did not fall: %g -> %g", l.first, l.last);
    ck_assert_msg(adv > 0.05, "the LoRA model does not tell the captions apart (%g)", adv);
}
END_TEST

static void snapshot(const char *out, float **data, size_t *n)
{
    char path[800];
    snprintf(path, sizeof path, "%s/%s/last.safetensors", root, out);
    lw_store *s = NULL;
    ck_assert_int_eq(lw_open(path, 0, &s), LDM_OK);
    *n = 0;
    for (size_t i = 0; i < lw_count(s); i++) {
        const lw_tensor *w = lw_at(s, i);
        if (strncmp(w->name, "lora.", 5)) continue;
        float *v = NULL;
        ck_assert_int_eq(lw_get_f32(s, w->name, -1, NULL, &v), LDM_OK);
        size_t k = w->nbytes / 4;
        *data = realloc(*data, (*n + k) * sizeof(float));
        memcpy(*data + *n, v, k * sizeof(float));
        *n += k;
        ldm_free(v);
    }
    lw_close(s);
}

START_TEST(lora_resume_is_exact)
{
    if (!have_shared) return;
    char cfg[700];
    snprintf(cfg, sizeof cfg, "%s/lora.yaml", root);
    write_config(cfg, "    ucg_training: {txt: {p: 0.3}}\n", "lora: {rank: 2, targets: [attn]}\n");
    ldm_train_params p = params_for("straight");
    p.learning_rate = 1e-3;
    p.max_steps = 6;
    ldm_trainer *t = NULL;
    ck_assert_msg(ldm_trainer_create(cfg, &p, &t) == LDM_OK, "%s", ldm_last_error());
    ck_assert_int_eq(ldm_trainer_run(t), LDM_OK);
    ldm_trainer_free(t);
    p = params_for("halves");
    p.learning_rate = 1e-3;
    p.max_steps = 3;
    ck_assert_int_eq(ldm_trainer_create(cfg, &p, &t), LDM_OK);
    ck_assert_int_eq(ldm_trainer_run(t), LDM_OK);
    ldm_trainer_free(t);
    p.max_steps = 6, p.resume = 1, p.init_from = NULL;
    ck_assert_msg(ldm_trainer_create(cfg, &p, &t) == LDM_OK, "%s", ldm_last_error());
    ck_assert_int_eq(ldm_trainer_run(t), LDM_OK);
    ldm_trainer_free(t);
    float *a = NULL, *b = NULL;
    size_t na, nb;
    snapshot("straight", &a, &na);
    snapshot("halves", &b, &nb);
    ck_assert_uint_eq(na, nb);
    ck_assert_uint_gt(na, 0);
    ck_assert_msg(!memcmp(a, b, na * sizeof(float)), "resumed LoRA run differs");
    free(a), free(b);
}
END_TEST

START_TEST(refusals)
{
    if (!have_shared) return;
    char cfg[700];
    snprintf(cfg, sizeof cfg, "%s/r.yaml", root);
    write_config(cfg, NULL, "lora: {rank: 4}\n");
    ldm_train_params p = params_for("r");
    p.init_from = NULL;
    ldm_trainer *t = NULL;
    ck_assert_int_eq(ldm_trainer_create(cfg, &p, &t), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(ldm_last_error(), "LoRA fine-tunes an existing model"), "%s", ldm_last_error());
    write_config(cfg, "    cond_stage_trainable: true\n", NULL);
    /* the fixture's key comes later and wins in the YAML? no: duplicates are refused; edit it */
    char text[20000];
    FILE *f = fopen(cfg, "r");
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    char *k = strstr(text, "cond_stage_trainable: false");
    ck_assert_ptr_nonnull(k);
    memcpy(k, "cond_stage_trainable: true ", 27);
    char *dup = strstr(text, "    cond_stage_trainable: true\n    linear");
    if (dup) memmove(dup, dup + 31, strlen(dup + 31) + 1);
    ck_train_write_file(cfg, text);
    p = params_for("r");
    ck_assert_int_eq(ldm_trainer_create(cfg, &p, &t), LDM_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(ldm_last_error(), "cond_stage_trainable: true with a text encoder"), "%s", ldm_last_error());
    printf("expected refusal: %s\n", ldm_last_error());
    /* an image without caption */
    char data[700];
    snprintf(data, sizeof data, "%s/data2", root);
    ck_train_make_halves(data, 1);
    write_config(cfg, NULL, NULL);
    p = params_for("r");
    p.data_dir = data;
    ck_assert_int_ne(ldm_trainer_create(cfg, &p, &t), LDM_OK);
    ck_assert_msg(strstr(ldm_last_error(), "img03.png has no caption"), "%s", ldm_last_error());
    /* no vocabulary */
    p = params_for("r");
    p.vocab_path = "/nonexistent";
    unsetenv("LDM_VOCAB");
    ck_assert_int_eq(ldm_trainer_create(cfg, &p, &t), LDM_ERR_NOT_FOUND);
    ck_assert_msg(strstr(ldm_last_error(), "vocabulary"), "%s", ldm_last_error());
}
END_TEST

/* BERTEmbedder (frozen) from scratch: the first stage's file also carries the text encoder
 * (the shared cond_bert weights, token table widened to the BERT tokenizer's 30522 ids), the
 * UNet starts from its seeded initialisation; the loss falls and the checkpoint, with the encoder
 * written back, loads and encodes captions. */
START_TEST(bert_captions_from_scratch)
{
    if (!have_shared) return;
    char bert_dir[4200], path[800], cfg[700];
    if (!fixture_dir("cond_bert", bert_dir, sizeof bert_dir)) return;
    lw_store *sd = open_file(fixture, "model.safetensors"), *bert = open_file(bert_dir, "model.safetensors");
    lw_out_tensor ts[256];
    float *owned[256];
    size_t n = 0, no = 0;
    for (int k = 0; k < 2; k++) {
        const lw_store *s = k ? bert : sd;
        const char *want = k ? "cond_stage_model.transformer." : "first_stage_model.";
        for (size_t i = 0; i < lw_count(s); i++) {
            const lw_tensor *w = lw_at(s, i);
            if (strncmp(w->name, want, strlen(want)) || strstr(w->name, "to_logits")) continue;
            ck_assert_uint_lt(n, 256);
            lw_out_tensor *o = &ts[n++];
            memset(o, 0, sizeof *o);
            o->name = w->name, o->dtype = w->dtype, o->ndim = w->ndim, o->data = w->data;
            for (int j = 0; j < w->ndim; j++) o->shape[j] = w->shape[j];
            if (strstr(w->name, "token_emb")) { /* 1000 rows tiled to 30522, sign-flipped per tile */
                int64_t rows = 30522, D = w->shape[1];
                float *src = NULL, *big = malloc((size_t)(rows * D) * sizeof(float));
                ck_assert_int_eq(lw_get_f32(s, w->name, -1, NULL, &src), LDM_OK);
                for (int64_t r = 0; r < rows; r++)
                    for (int64_t d = 0; d < D; d++)
                        big[r * D + d] = ((r / 1000) % 2 ? -1.0f : 1.0f) * src[(r % 1000) * D + d];
                ldm_free(src);
                o->dtype = LW_F32, o->shape[0] = rows, o->data = big;
                owned[no++] = big;
            }
        }
    }
    snprintf(path, sizeof path, "%s/fs-bert.safetensors", root);
    ck_assert_msg(lw_write_safetensors(path, ts, n, NULL, NULL, 0) == LDM_OK, "%s", ldm_last_error());
    for (size_t i = 0; i < no; i++) free(owned[i]);
    lw_close(sd), lw_close(bert);
    /* the sd1 config with BERTEmbedder(n_embed 32, n_layer 2) and context_dim 32 */
    snprintf(cfg, sizeof cfg, "%s/bert.yaml", root);
    write_config(cfg, NULL, NULL);
    FILE *f = fopen(cfg, "r");
    static char text[20000], out[20000];
    size_t len = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[len] = 0;
    char *o = out;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (!strcmp(line, "        context_dim: 16")) line = "        context_dim: 32";
        if (!strcmp(line, "      target: ldm.modules.encoders.modules.FrozenCLIPEmbedder"))
            line = "      target: ldm.modules.encoders.modules.BERTEmbedder\n      params: {n_embed: 32, n_layer: 2}";
        if (!strncmp(line, "libldm_test", 11)) break; /* the CLIP tower's test dims */
        o += sprintf(o, "%s\n", line);
    }
    o += sprintf(o, "data:\n  params: {batch_size: 4}\n");
    ck_train_write_file(cfg, out);
    ldm_train_params p = params_for("bert");
    p.init_from = NULL, p.first_stage = path, p.learning_rate = 1e-3;
    losses l;
    train(cfg, &p, 60, &l);
    printf("BERTEmbedder captions from scratch: loss %.4f -> %.4f (first / last 20 of 60 steps)\n", l.first, l.last);
    ck_assert_msg(l.last < 0.9 * l.first, "loss did not fall: %g -> %g", l.first, l.last);
    /* the run loads as a text model: the encoder was written back */
    char ckpt[800];
    snprintf(ckpt, sizeof ckpt, "%s/bert/last.safetensors", root);
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    mp.vocab_path = vocab;
    ldm_model *m = NULL;
    ck_assert_msg(ldm_model_load(ckpt, &mp, &m) == LDM_OK, "%s", ldm_last_error());
    ldm_conditioner *cond = NULL;
    ldm_tensor *c = NULL;
    ck_assert_int_eq(ldm_model_conditioner(m, &cond), LDM_OK);
    ck_assert_msg(ldm_conditioner_encode_text(cond, CK_TRAIN_CAPTIONS, 2, &c) == LDM_OK, "%s", ldm_last_error());
    ck_assert_int_eq(ldm_tensor_dim(c, 2), 32);
    ldm_tensor_free(c);
    ldm_model_free(m);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("train_finetune");
    TCase *tc = tcase_create("finetune");
    tcase_set_timeout(tc, 600);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, refusals);
    tcase_add_test(tc, lora_resume_is_exact);
    tcase_add_test(tc, captions_full_unet);
    tcase_add_test(tc, lora_fine_tune);
    tcase_add_test(tc, bert_captions_from_scratch);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return ck_run_suite(suite());
}
