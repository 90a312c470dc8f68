/* test_train_lora.c - LoRA adapters on the training UNet (lib/train/lora.h):
 *  1. which layers are targets (kohya's default set inside SpatialTransformers, the `targets`
 *     filter), kohya key stems (diffusers paths for SD layouts, CompVis paths for resblock_updown);
 *  2. initialisation: lora_up zero, so the adapted UNet starts equal to the base; lora_down
 *     within torch Linear's kaiming bound 1/sqrt(in);
 *  3. gradients: only lora_down/lora_up get any (base weights frozen), and they match central
 *     finite differences, for conv (proj_in/out 1x1 conv) and linear SpatialTransformers;
 *  4. merging scale * up . down into the base weights reproduces the adapted forward;
 *     activation checkpointing (use_checkpoint, or a memory budget that recomputes some blocks)
 *     applies the adapters inside the recomputed blocks: output and every adapter's gradient
 *     bit-identical to the run without it;
 *  5. the kohya file: names, shapes, float16, alpha, metadata, read back by the library's reader;
 *  6. the config's lora: section. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/json.h"
#include "io/weights.h"
#include "models/ytree.h"
#include "support/ck_rand.h"
#include "support/ck_run.h"
#include "train/lora.h"
#include "train/nets.h"

#define UP "model.diffusion_model."

/* SD-like: 2 levels, SpatialTransformer at both and in the middle, conv proj, no classes. */
static ld_unet small_unet(int linear_proj)
{
    ld_unet d;
    memset(&d, 0, sizeof d);
    d.present = 1;
    d.in_channels = 3, d.out_channels = 3, d.model_channels = 32, d.num_res_blocks = 1;
    d.n_levels = 2, d.channel_mult[0] = 1, d.channel_mult[1] = 2;
    d.n_attention_resolutions = 2, d.attention_resolutions[0] = 1, d.attention_resolutions[1] = 2;
    d.num_heads = -1, d.num_head_channels = 16;
    d.use_spatial_transformer = 1, d.transformer_depth = 1, d.context_dim = 12;
    d.use_linear_in_transformer = linear_proj;
    return d;
}

typedef struct lcase {
    ld_unet d;
    ltr_lora lora;
    int B, H, T;
    float x[2 * 3 * 8 * 8], ctx[2 * 3 * 12], t[2];
} lcase;

static void case_init(lcase *c, int linear_proj)
{
    memset(c, 0, sizeof *c);
    c->d = small_unet(linear_proj);
    c->lora.rank = 4, c->lora.alpha = 2.0, c->lora.targets = LTR_LORA_ALL;
    c->B = 2, c->H = 8, c->T = 3;
    for (size_t i = 0; i < sizeof c->x / sizeof *c->x; i++) c->x[i] = frand();
    for (size_t i = 0; i < sizeof c->ctx / sizeof *c->ctx; i++) c->ctx[i] = frand();
    c->t[0] = 11.0f, c->t[1] = 480.0f;
}

/* The UNet with (lora) or without (NULL) adapters on the tape. */
static ltp_id run(ltp_tape *t, ltp_params *ps, const lcase *c, const ltr_lora *lora)
{
    int64_t xs[4] = {c->B, 3, c->H, c->H}, cs[3] = {c->B, c->T, 12};
    ltp_id x = ltp_input(t, 4, xs, c->x, 0), ctx = ltp_input(t, 3, cs, c->ctx, 0);
    return ltn_unet_forward_lora(t, ps, UP, &c->d, x, c->t, ctx, -1, lora);
}

/* Declares base + adapters; every base parameter random and frozen (no zero layer hides a
 * path); lora_up random too when `random_up` (at init it is zero and hides lora_down). */
static ltp_params *make_params(const lcase *c, int random_up)
{
    ltp_params *ps;
    ck_assert_int_eq(ltp_params_create(5, &ps), LDM_OK);
    ltp_tape *t;
    ck_assert_int_eq(ltp_tape_create(NULL, &t), LDM_OK);
    ck_assert_msg(run(t, ps, c, &c->lora) >= 0, "%s", ltp_error(t));
    ltp_tape_free(t);
    for (size_t i = 0; i < ltp_params_count(ps); i++) {
        ltp_param *p = ltp_params_at(ps, i);
        if (!strncmp(p->name, LTR_LORA_PARAM_PREFIX, strlen(LTR_LORA_PARAM_PREFIX))) {
            if (random_up && strstr(p->name, "lora_up"))
                for (size_t j = 0; j < p->n; j++) p->data[j] = 0.3f * frand();
            continue;
        }
        int is_norm_weight = p->ndim == 1 && strstr(p->name, "norm") && strstr(p->name, ".weight");
        float scale = p->ndim >= 2 ? 1.0f / sqrtf((float)(p->n / (size_t)p->shape[0])) : 0.1f;
        for (size_t j = 0; j < p->n; j++) p->data[j] = (is_norm_weight ? 1.0f : 0.0f) + scale * frand();
    }
    ck_assert_int_eq(ltp_params_set_trainable(ps, UP, 0), LDM_OK);
    return ps;
}

static size_t count_adapters(const ltp_params *ps)
{
    size_t n = 0;
    for (size_t i = 0; i < ltp_params_count(ps); i++)
        if (strstr(ltp_params_at(ps, i)->name, ".lora_down.weight")) n++;
    return n;
}

START_TEST(targets_and_names)
{
    ltr_lora l = {4, 1.0, LTR_LORA_ALL};
    ck_assert(ltr_lora_is_target(&l, "input_blocks.1.1.proj_in"));
    ck_assert(ltr_lora_is_target(&l, "middle_block.1.transformer_blocks.0.attn2.to_out.0"));
    ck_assert(ltr_lora_is_target(&l, "output_blocks.3.1.transformer_blocks.1.ff.net.0.proj"));
    ck_assert(ltr_lora_is_target(&l, "output_blocks.3.1.transformer_blocks.1.ff.net.2"));
    ck_assert(!ltr_lora_is_target(&l, "input_blocks.1.0.emb_layers.1"));
    ck_assert(!ltr_lora_is_target(&l, "input_blocks.1.0.skip_connection"));
    ck_assert(!ltr_lora_is_target(&l, "time_embed.0"));
    ck_assert(!ltr_lora_is_target(&l, "input_blocks.1.1.norm"));
    l.targets = LTR_LORA_ATTN;
    ck_assert(!ltr_lora_is_target(&l, "input_blocks.1.1.proj_in"));
    ck_assert(!ltr_lora_is_target(&l, "input_blocks.1.1.transformer_blocks.0.ff.net.2"));
    ck_assert(ltr_lora_is_target(&l, "input_blocks.1.1.transformer_blocks.0.attn1.to_v"));
    l.rank = 0;
    ck_assert(!ltr_lora_is_target(&l, "input_blocks.1.1.transformer_blocks.0.attn1.to_v"));

    /* SD 1.x: 4 levels, 2 ResBlocks each, attention at ds 1, 2, 4 (kohya trains on diffusers) */
    ld_unet sd;
    memset(&sd, 0, sizeof sd);
    sd.n_levels = 4, sd.num_res_blocks = 2, sd.model_channels = 320;
    for (int i = 0; i < 4; i++) sd.channel_mult[i] = i == 0 ? 1 : i == 1 ? 2 : 4;
    sd.n_attention_resolutions = 3, sd.attention_resolutions[0] = 4, sd.attention_resolutions[1] = 2,
    sd.attention_resolutions[2] = 1;
    char name[256];
    ck_assert(ltr_lora_kohya_name(&sd, "input_blocks.1.1.transformer_blocks.0.attn1.to_q", name, sizeof name));
    ck_assert_str_eq(name, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q");
    ck_assert(ltr_lora_kohya_name(&sd, "input_blocks.5.1.proj_in", name, sizeof name));
    ck_assert_str_eq(name, "lora_unet_down_blocks_1_attentions_1_proj_in");
    ck_assert(ltr_lora_kohya_name(&sd, "middle_block.1.transformer_blocks.0.ff.net.0.proj", name, sizeof name));
    ck_assert_str_eq(name, "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj");
    ck_assert(ltr_lora_kohya_name(&sd, "output_blocks.11.1.transformer_blocks.0.attn2.to_out.0", name, sizeof name));
    ck_assert_str_eq(name, "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0");
    /* a block index outside the layout has no diffusers spelling: the CompVis path */
    ck_assert(ltr_lora_kohya_name(&sd, "input_blocks.40.1.proj_out", name, sizeof name));
    ck_assert_str_eq(name, "lora_unet_input_blocks_40_1_proj_out");
    ck_assert(!ltr_lora_kohya_name(&sd, "input_blocks.4.1.proj_out", name, 12)); /* does not fit */
}
END_TEST

START_TEST(init_is_identity_and_kaiming)
{
    lcase c;
    case_init(&c, 0);
    ltp_params *ps = make_params(&c, 0);
    /* 7 SpatialTransformers (2 down, middle, 4 up), 12 adapters each: attn1/attn2 q k v out,
     * ff 2, proj_in/out */
    size_t n = count_adapters(ps);
    ck_assert_msg(n == 84, "%zu adapters", n);
    for (size_t i = 0; i < ltp_params_count(ps); i++) {
        const ltp_param *p = ltp_params_at(ps, i);
        if (strstr(p->name, "lora_up"))
            for (size_t j = 0; j < p->n; j++) ck_assert(p->data[j] == 0.0f);
        if (strstr(p->name, "lora_down")) {
            float bound = 1.0f / sqrtf((float)p->shape[1]), mx = 0;
            for (size_t j = 0; j < p->n; j++) mx = fmaxf(mx, fabsf(p->data[j]));
            ck_assert_msg(mx <= bound && mx > 0.5f * bound, "%s: max %g bound %g", p->name, mx, bound);
            ck_assert_msg(p->ndim == 4 ? strstr(p->name, "proj_") != NULL : 1, "%s: conv adapter", p->name);
        }
    }
    ltp_tape *t;
    ck_assert_int_eq(ltp_tape_create(NULL, &t), LDM_OK);
    ltp_id a = run(t, ps, &c, &c.lora), b = run(t, ps, &c, NULL);
    ck_assert(a >= 0 && b >= 0);
    ck_assert(memcmp(ltp_data(t, a), ltp_data(t, b), ltp_numel(t, a) * sizeof(float)) == 0);
    ltp_tape_free(t);
    ltp_params_free(ps);
}
END_TEST

static double loss_of(const lcase *c, ltp_params *ps, const float *r, int backward)
{
    ltp_tape *t;
    ck_assert_int_eq(ltp_tape_create(NULL, &t), LDM_OK);
    ltp_id y = run(t, ps, c, &c->lora);
    ck_assert_msg(y >= 0, "%s", ltp_error(t));
    double L = 0;
    for (size_t i = 0; i < ltp_numel(t, y); i++) L += (double)r[i] * ltp_data(t, y)[i];
    if (backward) {
        ltp_params_zero_grad(ps);
        ck_assert_int_eq(ltp_seed_grad(t, y, r), LDM_OK);
        ck_assert_msg(ltp_backward(t) == LDM_OK, "%s", ltp_error(t));
    }
    ltp_tape_free(t);
    return L;
}

static void check_gradients(int linear_proj)
{
    lcase c;
    case_init(&c, linear_proj);
    ltp_params *ps = make_params(&c, 1);
    size_t nout = (size_t)c.B * 3 * c.H * c.H;
    float *r = malloc(nout * sizeof(float));
    for (size_t i = 0; i < nout; i++) r[i] = frand();
    loss_of(&c, ps, r, 1);
    size_t trainable = 0, checked = 0;
    for (size_t i = 0; i < ltp_params_count(ps); i++) {
        ltp_param *p = ltp_params_at(ps, i);
        int is_lora = !strncmp(p->name, "lora.", 5);
        ck_assert_msg(is_lora == (p->grad != NULL), "%s: gradient buffer %p", p->name, (void *)p->grad);
        trainable += is_lora;
    }
    static const char *mods[] = {"input_blocks.1.1.proj_in",
                                 "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
                                 "input_blocks.1.1.transformer_blocks.0.attn2.to_k",
                                 "middle_block.1.transformer_blocks.0.attn2.to_v",
                                 "middle_block.1.transformer_blocks.0.ff.net.0.proj",
                                 "output_blocks.2.1.transformer_blocks.0.attn1.to_out.0",
                                 "output_blocks.2.1.transformer_blocks.0.ff.net.2",
                                 "output_blocks.0.1.proj_out"};
    char name[256];
    for (size_t m = 0; m < sizeof mods / sizeof *mods; m++)
        for (int w = 0; w < 2; w++) {
            snprintf(name, sizeof name, "lora." UP "%s.%s.weight", mods[m], w ? "lora_up" : "lora_down");
            ltp_param *p = ltp_params_find(ps, name);
            ck_assert_msg(p != NULL, "no %s", name);
            float *g = malloc(p->n * sizeof(float));
            memcpy(g, p->grad, p->n * sizeof(float));
            for (int s = 0; s < 2; s++) {
                size_t j = (size_t)(s * 7919 + 3 * m + w) % p->n;
                float keep = p->data[j], h = 1e-2f;
                p->data[j] = keep + h;
                double lp = loss_of(&c, ps, r, 0);
                p->data[j] = keep - h;
                double lm = loss_of(&c, ps, r, 0);
                p->data[j] = keep;
                double fd = (lp - lm) / (2.0 * h);
                ck_assert_msg(fabs(fd - g[j]) <= 2e-2 * fmax(fabs(fd), fabs(g[j])) + 2e-3,
                              "%s[%zu]: finite difference %g, tape %g", name, j, fd, g[j]);
                ck_assert_msg(fabs(g[j]) > 1e-6 || s, "%s[%zu]: gradient %g is not informative", name, j, g[j]);
                checked++;
            }
            free(g);
        }
    printf("lora gradients (%s proj): %zu adapters' parameters trainable, %zu checked against finite differences\n",
           linear_proj ? "linear" : "conv", trainable, checked);
    free(r);
    ltp_params_free(ps);
}

START_TEST(gradients_conv_proj)
{
    check_gradients(0);
}
END_TEST

START_TEST(gradients_linear_proj)
{
    check_gradients(1);
}
END_TEST

START_TEST(merge_reproduces_forward)
{
    for (int lin = 0; lin < 2; lin++) {
        lcase c;
        case_init(&c, lin);
        ltp_params *ps = make_params(&c, 1);
        ltp_tape *t;
        ck_assert_int_eq(ltp_tape_create(NULL, &t), LDM_OK);
        ltp_id a = run(t, ps, &c, &c.lora);
        ck_assert(a >= 0);
        size_t n = ltp_numel(t, a);
        float *adapted = malloc(n * sizeof(float));
        memcpy(adapted, ltp_data(t, a), n * sizeof(float));
        ltp_reset(t);
        ltp_id b0 = run(t, ps, &c, NULL);
        double diff0 = 0, mx = 0;
        for (size_t i = 0; i < n; i++) diff0 = fmax(diff0, fabs(ltp_data(t, b0)[i] - adapted[i]));
        ck_assert_int_eq(ltr_lora_merge(ps, UP, &c.lora, ps), LDM_OK);
        ltp_reset(t);
        ltp_id b = run(t, ps, &c, NULL);
        double err = 0;
        for (size_t i = 0; i < n; i++) {
            err = fmax(err, fabs(ltp_data(t, b)[i] - adapted[i]));
            mx = fmax(mx, fabs(adapted[i]));
        }
        printf("merge (%s proj): adapters change the output by %g, merged vs adapted %g (max |out| %g)\n",
               lin ? "linear" : "conv", diff0, err, mx);
        ck_assert_msg(diff0 > 1e-2 * mx, "the adapters hardly change the output (%g)", diff0);
        ck_assert_msg(err <= 2e-5 * mx, "merged forward differs by %g", err);
        free(adapted);
        ltp_tape_free(t);
        ltp_params_free(ps);
    }
}
END_TEST

/* Output and adapter gradients of one forward + backward; mode 0: plain, 1: use_checkpoint
 * (every block recomputed), 2: a budget of a third of the plain run's peak (some recomputed). */
static void checkpointed_run(const lcase *c0, ltp_params *ps, const float *r, int mode, size_t budget, float *out,
                             float *grads, size_t *peak, int *segs, int *dropped)
{
    lcase c = *c0;
    c.d.use_checkpoint = mode == 1;
    ltp_tape *t;
    ck_assert_int_eq(ltp_tape_create(NULL, &t), LDM_OK);
    if (mode == 2) ltp_set_activation_budget(t, budget);
    ltp_params_zero_grad(ps);
    ltp_id y = run(t, ps, &c, &c.lora);
    ck_assert_msg(y >= 0, "%s", ltp_error(t));
    memcpy(out, ltp_data(t, y), ltp_numel(t, y) * sizeof(float));
    ck_assert_int_eq(ltp_seed_grad(t, y, r), LDM_OK);
    ck_assert_msg(ltp_backward(t) == LDM_OK, "%s", ltp_error(t));
    *peak = ltp_peak_bytes(t);
    *segs = ltp_segments(t, dropped);
    size_t k = 0;
    for (size_t i = 0; i < ltp_params_count(ps); i++) {
        const ltp_param *p = ltp_params_at(ps, i);
        if (!p->grad) continue;
        memcpy(grads + k, p->grad, p->n * sizeof(float));
        k += p->n;
    }
    ltp_tape_free(t);
}

START_TEST(checkpointing_keeps_adapters)
{
    for (int lin = 0; lin < 2; lin++) {
        lcase c;
        case_init(&c, lin);
        ltp_params *ps = make_params(&c, 1);
        size_t nout = (size_t)c.B * 3 * c.H * c.H, ng = ltp_params_numel(ps, 1);
        float *r = malloc(nout * sizeof(float)), *out[3], *g[3];
        for (size_t i = 0; i < nout; i++) r[i] = frand();
        size_t peak[3] = {0, 0, 0};
        int segs[3], dropped[3];
        for (int mode = 0; mode < 3; mode++) {
            out[mode] = malloc(nout * sizeof(float)), g[mode] = malloc(ng * sizeof(float));
            checkpointed_run(&c, ps, r, mode, peak[0] / 3, out[mode], g[mode], &peak[mode], &segs[mode],
                             &dropped[mode]);
        }
        ck_assert_int_eq(segs[0], 0);
        ck_assert_msg(segs[1] > 0 && dropped[1] == segs[1], "use_checkpoint: %d of %d blocks recomputed", dropped[1],
                      segs[1]);
        ck_assert_msg(dropped[2] > 0 && dropped[2] < segs[2], "budget: %d of %d blocks recomputed", dropped[2],
                      segs[2]);
        double gmax = 0;
        for (size_t i = 0; i < ng; i++) gmax = fmax(gmax, fabs(g[0][i]));
        ck_assert_msg(gmax > 1e-3, "adapter gradients vanish (%g)", gmax);
        for (int mode = 1; mode < 3; mode++) {
            ck_assert_msg(!memcmp(out[0], out[mode], nout * sizeof(float)), "%s proj, mode %d: output differs",
                          lin ? "linear" : "conv", mode);
            ck_assert_msg(!memcmp(g[0], g[mode], ng * sizeof(float)), "%s proj, mode %d: adapter gradients differ",
                          lin ? "linear" : "conv", mode);
        }
        printf("lora + checkpointing (%s proj): %zu adapter values' gradients bit-identical; use_checkpoint "
               "recomputes %d blocks, a budget of %zu bytes %d of %d; peak tape %zu / %zu / %zu bytes\n",
               lin ? "linear" : "conv", ng, segs[1], peak[0] / 3, dropped[2], segs[2], peak[0], peak[1], peak[2]);
        for (int mode = 0; mode < 3; mode++) free(out[mode]), free(g[mode]);
        free(r);
        ltp_params_free(ps);
    }
}
END_TEST

/* The JSON header of a safetensors file. */
static lj_value *header_of(const char *path)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    uint64_t len = 0;
    ck_assert_int_eq(fread(&len, 8, 1, f), 1);
    ck_assert(len < (1u << 24));
    char *buf = malloc(len + 1);
    ck_assert_int_eq(fread(buf, 1, len, f), len);
    fclose(f);
    buf[len] = 0;
    lj_value *v = lj_parse(buf, len);
    ck_assert_msg(v != NULL, "%s: header is not JSON", path);
    free(buf);
    return v;
}

static const char *meta(const lj_value *h, const char *key)
{
    const lj_value *m = lj_get(h, "__metadata__");
    ck_assert_ptr_nonnull(m);
    const lj_value *v = lj_get(m, key);
    ck_assert_msg(v && lj_string(v, NULL), "metadata %s missing", key);
    return lj_string(v, NULL);
}

START_TEST(kohya_file)
{
    lcase c;
    case_init(&c, 0);
    ltp_params *ps = make_params(&c, 1);
    ld_model m;
    ld_model_defaults(&m);
    m.unet = c.d;
    m.cond.kind = LD_COND_CLIP;
    char path[256];
    snprintf(path, sizeof path, "%s/ldm-lora-%d.safetensors", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
             (int)getpid());
    ck_assert_msg(ltr_lora_write(path, ps, UP, &m, &c.lora, 1, 42) == LDM_OK, "%s", ldm_last_error());
    lw_store *s;
    ck_assert_int_eq(lw_open(path, 0, &s), LDM_OK);
    size_t n = count_adapters(ps);
    ck_assert_uint_eq(lw_count(s), 3 * n);
    /* every adapter of ps under its kohya name, float16, shapes as kohya's modules */
    char module[256], stem[256], key[300];
    size_t conv = 0;
    for (size_t i = 0; i < ltp_params_count(ps); i++) {
        const ltp_param *p = ltp_params_at(ps, i);
        const char *suf = strstr(p->name, ".lora_down.weight");
        if (!suf) continue;
        size_t off = strlen("lora." UP);
        snprintf(module, sizeof module, "%.*s", (int)(suf - p->name - off), p->name + off);
        ck_assert(ltr_lora_kohya_name(&c.d, module, stem, sizeof stem));
        ck_assert_msg(strstr(stem, "input_blocks") == NULL && strstr(stem, "output_blocks") == NULL &&
                          strstr(stem, "middle_block") == NULL,
                      "%s: not a diffusers path", stem);
        snprintf(key, sizeof key, "%s.lora_down.weight", stem);
        const lw_tensor *d = lw_find(s, key);
        ck_assert_msg(d != NULL, "%s missing", key);
        ck_assert_int_eq(d->dtype, LW_F16);
        int is_conv = strstr(module, "proj_") != NULL;
        conv += is_conv;
        ck_assert_int_eq(d->ndim, is_conv ? 4 : 2);
        ck_assert_int_eq(d->shape[0], 4);
        float *v = NULL;
        ck_assert_int_eq(lw_get_f32(s, key, -1, NULL, &v), LDM_OK);
        for (size_t j = 0; j < p->n; j++) ck_assert(fabsf(v[j] - p->data[j]) <= 1e-3f * fabsf(p->data[j]) + 1e-7f);
        ldm_free(v);
        snprintf(key, sizeof key, "%s.lora_up.weight", stem);
        const lw_tensor *u = lw_find(s, key);
        ck_assert_msg(u != NULL && u->ndim == d->ndim && u->shape[1] == 4, "%s", key);
        snprintf(key, sizeof key, "%s.alpha", stem);
        const lw_tensor *a = lw_find(s, key);
        ck_assert_msg(a != NULL && a->ndim == 0 && a->dtype == LW_F16, "%s: a 0-dim float16 tensor", key);
        ck_assert_int_eq(lw_get_f32(s, key, 0, NULL, &v), LDM_OK);
        ck_assert(v[0] == 2.0f);
        ldm_free(v);
    }
    ck_assert_uint_eq(conv, 14); /* proj_in/out of seven SpatialTransformers */
    ck_assert_ptr_nonnull(
        lw_find(s, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"));
    ck_assert_ptr_nonnull(lw_find(s, "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight"));
    lw_close(s);
    lj_value *h = header_of(path);
    ck_assert_str_eq(meta(h, "ss_network_module"), "networks.lora");
    ck_assert_str_eq(meta(h, "ss_network_dim"), "4");
    ck_assert_str_eq(meta(h, "ss_network_alpha"), "2.0");
    ck_assert_str_eq(meta(h, "ss_base_model_version"), "sd_v1");
    ck_assert_str_eq(meta(h, "ss_v2"), "False");
    lj_free(h);
    /* float32 on request */
    ck_assert_int_eq(ltr_lora_write(path, ps, UP, &m, &c.lora, 0, 42), LDM_OK);
    ck_assert_int_eq(lw_open(path, 0, &s), LDM_OK);
    ck_assert_int_eq(lw_find(s, "lora_unet_mid_block_attentions_0_proj_in.alpha")->dtype, LW_F32);
    lw_close(s);
    unlink(path);
    ltp_params_free(ps);
}
END_TEST

static ldm_status parse_lora(const char *yaml, ltr_lora *l)
{
    ld_ynode *root = NULL;
    ldm_status st = ld_yaml_parse(yaml, strlen(yaml), "t.yaml", &root);
    if (st == LDM_OK) st = ltr_lora_read_config(root, "t.yaml", l);
    ld_yaml_free(root);
    return st;
}

START_TEST(config_section)
{
    ltr_lora l;
    ck_assert_int_eq(parse_lora("model: {}\n", &l), LDM_OK);
    ck_assert_int_eq(l.rank, 0);
    ck_assert_int_eq(parse_lora("lora: {rank: 8, alpha: 4, targets: [attn, proj]}\n", &l), LDM_OK);
    ck_assert_int_eq(l.rank, 8);
    ck_assert(l.alpha == 4.0 && ltr_lora_scale(&l) == 0.5f);
    ck_assert_uint_eq(l.targets, LTR_LORA_ATTN | LTR_LORA_PROJ);
    ck_assert_int_eq(parse_lora("lora: {rank: 8}\n", &l), LDM_OK);
    ck_assert(l.alpha == 1.0 && l.targets == LTR_LORA_ALL);
    ck_assert_int_eq(parse_lora("lora: {rank: 8, alpha: 0}\n", &l), LDM_OK);
    ck_assert(ltr_lora_scale(&l) == 1.0f); /* kohya: alpha 0 = rank */
    ck_assert_int_eq(parse_lora("lora: {rank: -1}\n", &l), LDM_ERR_FORMAT);
    ck_assert_msg(strstr(ldm_last_error(), "lora.rank"), "%s", ldm_last_error());
    ck_assert_int_eq(parse_lora("lora: {rank: 4, targets: [attn, conv3x3]}\n", &l), LDM_ERR_FORMAT);
    ck_assert_msg(strstr(ldm_last_error(), "t.yaml:1: lora.targets"), "%s", ldm_last_error());
    ck_assert_int_eq(parse_lora("lora: {rank: 4, dropout: 0.1}\n", &l), LDM_ERR_FORMAT);
    ck_assert_msg(strstr(ldm_last_error(), "lora.dropout: unknown key"), "%s", ldm_last_error());
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("train_lora");
    TCase *tc = tcase_create("lora");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, targets_and_names);
    tcase_add_test(tc, init_is_identity_and_kaiming);
    tcase_add_test(tc, gradients_conv_proj);
    tcase_add_test(tc, gradients_linear_proj);
    tcase_add_test(tc, merge_reproduces_forward);
    tcase_add_test(tc, checkpointing_keeps_adapters);
    tcase_add_test(tc, kohya_file);
    tcase_add_test(tc, config_section);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return ck_run_suite(suite());
}
