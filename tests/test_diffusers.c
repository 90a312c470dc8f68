/* test_diffusers.c - diffusers folders (lib/models/diffusers*.c, lib/api/diffusers_load.c): the VAE
 * and SD 2.x text encoder name tables, the config.json readers, and loading the
 * diffusers_lcm_sd1 fixture's folder (tests/fixtures/diffusers_lcm_sd1/model) with its failures:
 * a missing component, bad JSON, unsupported options, mismatched shapes, truncated or foreign
 * weights. The numbers against diffusers are the conformance runner's job on that fixture. */
#define _XOPEN_SOURCE 700
#include <check.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/json.h"
#include "io/weights.h"
#include "ldm.h"
#include "models/diffusers.h"
#include "models/diffusers_internal.h"
#include "models/diffusers_names.h"
#include "support/ck_run.h"

/* ---------------------------------------------------------------- name tables */

typedef struct vae_case {
    const char *diffusers, *compvis; /* compvis NULL: refused */
    ld_dn_kind kind;
} vae_case;

/* SD's AutoencoderKL: 4 levels, layers_per_block 2 (pairs as diffusers' conversion script gives them). */
static const vae_case sd_vae[] = {
    {"encoder.conv_in.weight", "encoder.conv_in.weight", LD_DN_SAME},
    {"encoder.down_blocks.0.resnets.1.conv1.bias", "encoder.down.0.block.1.conv1.bias", LD_DN_SAME},
    {"encoder.down_blocks.1.resnets.0.conv_shortcut.weight", "encoder.down.1.block.0.nin_shortcut.weight", LD_DN_SAME},
    {"encoder.down_blocks.2.downsamplers.0.conv.bias", "encoder.down.2.downsample.conv.bias", LD_DN_SAME},
    {"encoder.mid_block.resnets.0.norm1.weight", "encoder.mid.block_1.norm1.weight", LD_DN_SAME},
    {"encoder.mid_block.resnets.1.norm2.bias", "encoder.mid.block_2.norm2.bias", LD_DN_SAME},
    {"encoder.mid_block.attentions.0.group_norm.weight", "encoder.mid.attn_1.norm.weight", LD_DN_SAME},
    {"encoder.mid_block.attentions.0.to_q.weight", "encoder.mid.attn_1.q.weight", LD_DN_CONV1X1},
    {"encoder.mid_block.attentions.0.to_k.bias", "encoder.mid.attn_1.k.bias", LD_DN_SAME},
    {"decoder.mid_block.attentions.0.to_out.0.weight", "decoder.mid.attn_1.proj_out.weight", LD_DN_CONV1X1},
    {"decoder.mid_block.attentions.0.value.weight", "decoder.mid.attn_1.v.weight", LD_DN_CONV1X1},
    {"decoder.mid_block.attentions.0.proj_attn.bias", "decoder.mid.attn_1.proj_out.bias", LD_DN_SAME},
    {"encoder.conv_norm_out.weight", "encoder.norm_out.weight", LD_DN_SAME},
    {"encoder.conv_out.bias", "encoder.conv_out.bias", LD_DN_SAME},
    {"quant_conv.weight", "quant_conv.weight", LD_DN_SAME},
    {"post_quant_conv.bias", "post_quant_conv.bias", LD_DN_SAME},
    {"decoder.up_blocks.0.resnets.2.norm1.weight", "decoder.up.3.block.2.norm1.weight", LD_DN_SAME},
    {"decoder.up_blocks.0.upsamplers.0.conv.weight", "decoder.up.3.upsample.conv.weight", LD_DN_SAME},
    {"decoder.up_blocks.2.resnets.0.conv_shortcut.bias", "decoder.up.1.block.0.nin_shortcut.bias", LD_DN_SAME},
    {"decoder.up_blocks.3.resnets.1.conv2.weight", "decoder.up.0.block.1.conv2.weight", LD_DN_SAME},
    {"decoder.up_blocks.1.attentions.0.to_q.weight", "decoder.up.2.attn.0.q.weight", LD_DN_CONV1X1},
    {"decoder.conv_norm_out.bias", "decoder.norm_out.bias", LD_DN_SAME},
    /* outside the layout or not a parameter */
    {"encoder.down_blocks.3.downsamplers.0.conv.weight", NULL, 0},
    {"decoder.up_blocks.3.upsamplers.0.conv.weight", NULL, 0},
    {"encoder.down_blocks.0.resnets.2.conv1.weight", NULL, 0},
    {"decoder.up_blocks.0.resnets.3.conv1.weight", NULL, 0},
    {"decoder.up_blocks.4.resnets.0.conv1.weight", NULL, 0},
    {"encoder.mid_block.resnets.2.conv1.weight", NULL, 0},
    {"encoder.mid_block.attentions.1.to_q.weight", NULL, 0},
    {"encoder.down_blocks.0.resnets.0.bogus.weight", NULL, 0},
    {"encoder.down_blocks.x.resnets.0.conv1.weight", NULL, 0},
    {"decoder.conv_in", NULL, 0},
    {"loss.logvar", NULL, 0},
};

START_TEST(vae_names)
{
    for (size_t i = 0; i < sizeof sd_vae / sizeof *sd_vae; i++) {
        char out[256];
        ld_dn_kind kind = 99;
        int r = ld_vae_name_from_diffusers(4, 2, sd_vae[i].diffusers, out, sizeof out, &kind);
        if (!sd_vae[i].compvis) {
            ck_assert_msg(r == 0, "%s should be refused, gave %s", sd_vae[i].diffusers, out);
            continue;
        }
        ck_assert_msg(r == 1, "%s not translated", sd_vae[i].diffusers);
        ck_assert_str_eq(out, sd_vae[i].compvis);
        ck_assert_int_eq(kind, sd_vae[i].kind);
    }
    char small[8];
    ld_dn_kind kind;
    ck_assert_int_eq(ld_vae_name_from_diffusers(4, 2, "encoder.conv_in.weight", small, sizeof small, &kind), 0);
}
END_TEST

START_TEST(openclip_names)
{
    static const struct {
        const char *hf, *openclip;
        int ret, part;
        ld_dn_kind kind;
    } cases[] = {
        {"text_model.embeddings.token_embedding.weight", "model.token_embedding.weight", 1, 0, LD_DN_SAME},
        {"text_model.embeddings.position_embedding.weight", "model.positional_embedding", 1, 0, LD_DN_SAME},
        {"text_model.final_layer_norm.bias", "model.ln_final.bias", 1, 0, LD_DN_SAME},
        {"text_model.encoder.layers.22.layer_norm1.weight", "model.transformer.resblocks.22.ln_1.weight", 1, 0,
         LD_DN_SAME},
        {"text_model.encoder.layers.0.mlp.fc1.bias", "model.transformer.resblocks.0.mlp.c_fc.bias", 1, 0, LD_DN_SAME},
        {"text_model.encoder.layers.3.mlp.fc2.weight", "model.transformer.resblocks.3.mlp.c_proj.weight", 1, 0,
         LD_DN_SAME},
        {"text_model.encoder.layers.1.self_attn.out_proj.weight", "model.transformer.resblocks.1.attn.out_proj.weight",
         1, 0, LD_DN_SAME},
        {"text_model.encoder.layers.5.self_attn.q_proj.weight", "model.transformer.resblocks.5.attn.in_proj_weight", 1,
         0, LD_DN_QKV_PART},
        {"text_model.encoder.layers.5.self_attn.k_proj.bias", "model.transformer.resblocks.5.attn.in_proj_bias", 1, 1,
         LD_DN_QKV_PART},
        {"text_model.encoder.layers.5.self_attn.v_proj.weight", "model.transformer.resblocks.5.attn.in_proj_weight", 1,
         2, LD_DN_QKV_PART},
        {"text_model.embeddings.position_ids", NULL, -1, 0, LD_DN_SAME},
        {"text_model.encoder.layers.5.self_attn.q_proj.scale", NULL, 0, 0, LD_DN_SAME},
        {"text_projection.weight", NULL, 0, 0, LD_DN_SAME},
        {"text_model.encoder.layers.x.mlp.fc1.bias", NULL, 0, 0, LD_DN_SAME},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char out[256] = "";
        ld_dn_kind kind;
        int part;
        int r = ld_openclip_name_from_hf(cases[i].hf, out, sizeof out, &kind, &part);
        ck_assert_msg(r == cases[i].ret, "%s: returned %d", cases[i].hf, r);
        if (r != 1) continue;
        ck_assert_str_eq(out, cases[i].openclip);
        ck_assert_int_eq(kind, cases[i].kind);
        ck_assert_int_eq(part, cases[i].part);
    }
}
END_TEST

/* ---------------------------------------------------------------- config.json readers */

static lj_value *json(const char *text)
{
    lj_value *v = lj_parse(text, strlen(text));
    ck_assert_msg(v != NULL, "bad test JSON: %s", ldm_last_error());
    return v;
}

/* The shapes of SD 1.5's and SD 2.1's unet/config.json (keys at their released values). */
#define SD1_UNET                                                                                                       \
    "\"_class_name\": \"UNet2DConditionModel\", \"block_out_channels\": [320, 640, 1280, 1280], "                      \
    "\"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", "            \
    "\"DownBlock2D\"], \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", "           \
    "\"CrossAttnUpBlock2D\"], \"layers_per_block\": 2, \"in_channels\": 4, \"out_channels\": 4, \"sample_size\": 64, " \
    "\"norm_num_groups\": 32, \"norm_eps\": 1e-05, \"act_fn\": \"silu\", \"flip_sin_to_cos\": true, "                  \
    "\"freq_shift\": 0, \"mid_block_scale_factor\": 1, \"downsample_padding\": 1, \"center_input_sample\": false"

START_TEST(unet_config_sd1_sd2)
{
    ld_unet u;
    ld_unet_layout l;
    int size;
    lj_value *c = json("{" SD1_UNET ", \"cross_attention_dim\": 768, \"attention_head_dim\": 8, "
                       "\"time_cond_proj_dim\": 256}");
    ck_assert_int_eq(ldd_unet_config("sd1", c, &u, &l, &size), LDM_OK);
    lj_free(c);
    ck_assert_int_eq(u.model_channels, 320);
    ck_assert_int_eq(u.n_levels, 4);
    ck_assert_int_eq(u.channel_mult[3], 4);
    ck_assert_int_eq(u.num_res_blocks, 2);
    ck_assert_int_eq(u.n_attention_resolutions, 3);
    ck_assert_int_eq(u.attention_resolutions[2], 4);
    ck_assert_int_eq(u.num_heads, 8);
    ck_assert_int_eq(u.num_head_channels, -1);
    ck_assert_int_eq(u.context_dim, 768);
    ck_assert_int_eq(u.time_cond_proj_dim, 256);
    ck_assert_int_eq(u.use_linear_in_transformer, 0);
    ck_assert_int_eq(size, 64);
    ck_assert(l.level_has_attn[0] && l.level_has_attn[2] && !l.level_has_attn[3]);
    /* the layout translates the LCM guidance embedding and the last level's ResBlocks */
    char out[256];
    ck_assert(ld_unet_name_from_diffusers(&l, "time_embedding.cond_proj.weight", out, sizeof out));
    ck_assert_str_eq(out, "time_embed.cond_proj.weight");
    ck_assert(ld_unet_name_from_diffusers(&l, "down_blocks.3.resnets.1.conv1.weight", out, sizeof out));
    ck_assert_str_eq(out, "input_blocks.11.0.in_layers.2.weight");
    ck_assert(!ld_unet_name_from_diffusers(&l, "down_blocks.3.attentions.0.proj_in.weight", out, sizeof out));
    /* SD 2.x: per-level head counts of one width become num_head_channels; linear projections */
    c = json("{" SD1_UNET ", \"cross_attention_dim\": 1024, \"attention_head_dim\": [5, 10, 20, 20], "
             "\"use_linear_projection\": true}");
    ck_assert_int_eq(ldd_unet_config("sd2", c, &u, &l, &size), LDM_OK);
    lj_free(c);
    ck_assert_int_eq(u.num_heads, -1);
    ck_assert_int_eq(u.num_head_channels, 64);
    ck_assert_int_eq(u.use_linear_in_transformer, 1);
    ck_assert_int_eq(u.time_cond_proj_dim, 0);
}
END_TEST

/* A config that must fail with `status` and a message naming `key`. */
static void refused(ldm_status (*read)(const char *, const lj_value *, void *), const char *text, ldm_status status,
                    const char *key)
{
    lj_value *c = json(text);
    ldm_status st = read("the.json", c, NULL);
    lj_free(c);
    ck_assert_msg(st == status, "%s: status %s (%s)", text, ldm_status_string(st), ldm_last_error());
    ck_assert_msg(strstr(ldm_last_error(), key) && strstr(ldm_last_error(), "the.json"), "message: %s",
                  ldm_last_error());
}

static ldm_status read_unet(const char *file, const lj_value *c, void *unused)
{
    ld_unet u;
    ld_unet_layout l;
    int size;
    (void)unused;
    return ldd_unet_config(file, c, &u, &l, &size);
}

static ldm_status read_text(const char *file, const lj_value *c, void *unused)
{
    ld_cond cond;
    (void)unused;
    return ldd_text_config(file, c, &cond);
}

static ldm_status read_sched(const char *file, const lj_value *c, void *unused)
{
    ld_model m;
    (void)unused;
    ld_model_defaults(&m);
    return ldd_scheduler_config(file, c, &m);
}

static ldm_status read_vae(const char *file, const lj_value *c, void *unused)
{
    ld_autoencoder a;
    double sf;
    (void)unused;
    return ldd_vae_config(file, c, &a, &sf);
}

START_TEST(configs_refused)
{
    refused(read_unet, "{" SD1_UNET ", \"addition_embed_type\": \"text_time\"}", LDM_ERR_UNSUPPORTED,
            "addition_embed_type");
    refused(read_unet, "{" SD1_UNET ", \"attention_head_dim\": [5, 10, 10, 20]}", LDM_ERR_UNSUPPORTED,
            "attention_head_dim");
    refused(read_unet, "{\"layers_per_block\": \"two\", " SD1_UNET "}", LDM_ERR_FORMAT, "layers_per_block");
    refused(read_unet, "{" SD1_UNET ", \"resnet_time_scale_shift\": \"spatial\"}", LDM_ERR_UNSUPPORTED,
            "resnet_time_scale_shift");
    refused(read_unet, "{\"block_out_channels\": [32]}", LDM_ERR_FORMAT, "down_block_types");
    refused(read_unet, "{\"_class_name\": \"UNet2DModel\"}", LDM_ERR_UNSUPPORTED, "_class_name");
    refused(read_unet,
            "{\"block_out_channels\": [32, 64], \"down_block_types\": [\"CrossAttnDownBlock2D\", \"DownBlock2D\"], "
            "\"up_block_types\": [\"CrossAttnUpBlock2D\", \"UpBlock2D\"]}",
            LDM_ERR_UNSUPPORTED, "up_block_types");
    refused(read_text, "{\"model_type\": \"t5\"}", LDM_ERR_UNSUPPORTED, "model_type");
    refused(read_text, "{\"architectures\": [\"CLIPTextModelWithProjection\"]}", LDM_ERR_UNSUPPORTED, "architectures");
    refused(read_text, "{\"hidden_act\": \"relu\"}", LDM_ERR_UNSUPPORTED, "hidden_act");
    refused(read_sched, "{\"beta_schedule\": \"karras\"}", LDM_ERR_UNSUPPORTED, "beta_schedule");
    refused(read_sched, "{\"prediction_type\": \"flow\"}", LDM_ERR_UNSUPPORTED, "prediction_type");
    refused(read_sched, "{\"trained_betas\": [0.1, 0.2]}", LDM_ERR_UNSUPPORTED, "trained_betas");
    refused(read_sched, "{\"rescale_betas_zero_snr\": true}", LDM_ERR_UNSUPPORTED, "rescale_betas_zero_snr");
    refused(read_vae, "{\"_class_name\": \"AutoencoderTiny\"}", LDM_ERR_UNSUPPORTED, "_class_name");
    refused(read_vae,
            "{\"block_out_channels\": [32], \"down_block_types\": [\"DownEncoderBlock2D\"], "
            "\"up_block_types\": [\"UpDecoderBlock2D\"], \"shift_factor\": 0.1}",
            LDM_ERR_UNSUPPORTED, "shift_factor");
}
END_TEST

START_TEST(scheduler_and_text_configs)
{
    ld_model m;
    ld_model_defaults(&m);
    lj_value *c = json("{\"_class_name\": \"DDIMScheduler\", \"beta_schedule\": \"scaled_linear\", \"beta_start\": "
                       "0.00085, \"beta_end\": 0.012, \"prediction_type\": \"v_prediction\", \"timestep_spacing\": "
                       "\"trailing\"}");
    ck_assert_int_eq(ldd_scheduler_config("s", c, &m), LDM_OK);
    lj_free(c);
    ck_assert_int_eq(m.parameterization, LD_PARAM_V);
    ck_assert_int_eq(m.beta_schedule, LD_SCHED_LINEAR);
    ck_assert(m.linear_start == 0.00085 && m.linear_end == 0.012);
    ck_assert_ptr_nonnull(strstr(m.notes, "trailing"));
    c = json("{\"beta_schedule\": \"linear\"}");
    ck_assert_int_eq(ldd_scheduler_config("s", c, &m), LDM_OK);
    lj_free(c);
    ck_assert_int_eq(m.beta_schedule, LD_SCHED_SQRT_LINEAR); /* diffusers "linear" is a plain linspace */
    ck_assert_int_eq(m.parameterization, LD_PARAM_EPS);
    ld_cond cond;
    c = json("{\"architectures\": [\"CLIPTextModel\"], \"hidden_act\": \"gelu\", \"hidden_size\": 1024, "
             "\"num_hidden_layers\": 23, \"num_attention_heads\": 16, \"model_type\": \"clip_text_model\"}");
    ck_assert_int_eq(ldd_text_config("t", c, &cond), LDM_OK);
    lj_free(c);
    ck_assert_int_eq(cond.kind, LD_COND_OPENCLIP);
    ck_assert_int_eq(cond.layers, 23);
    ck_assert_int_eq(cond.layer_skip, 0); /* the folder already dropped open_clip's last block */
    ck_assert_int_eq(cond.heads, 16);
}
END_TEST

/* ---------------------------------------------------------------- the fixture's folder */

static const char *const folder_files[] = {
    "model_index.json",         "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model.fp16.safetensors",
    "unet/config.json",         "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json",          "vae/diffusion_pytorch_model.safetensors",
};

static char work[512];

static const char *fixture_folder(void)
{
    static char path[1024];
    const char *slash = strrchr(__FILE__, '/');
    int dirlen = slash ? (int)(slash - __FILE__) + 1 : 0;
    snprintf(path, sizeof path, "%.*sfixtures/diffusers_lcm_sd1/model", dirlen, __FILE__);
    return path;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}

static void spill(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, len, f), len);
    fclose(f);
}

static const char *in_work(const char *rel)
{
    static char path[1024];
    snprintf(path, sizeof path, "%s/%s", work, rel);
    return path;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* A fresh copy of the fixture's folder in `work`. */
static void setup_folder(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(work, sizeof work, "%s/ldm-diffusers-XXXXXX", base && *base ? base : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(work));
    static const char *const dirs[] = {"scheduler", "text_encoder", "unet", "vae"};
    for (size_t i = 0; i < 4; i++) ck_assert_int_eq(mkdir(in_work(dirs[i]), 0755), 0);
    for (size_t i = 0; i < sizeof folder_files / sizeof *folder_files; i++) {
        char src[1200];
        size_t len;
        snprintf(src, sizeof src, "%s/%s", fixture_folder(), folder_files[i]);
        char *data = slurp(src, &len);
        spill(in_work(folder_files[i]), data, len);
        free(data);
    }
}

static void teardown_folder(void)
{
    nftw(work, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Replaces the first `from` in work/rel by `to`. */
static void edit(const char *rel, const char *from, const char *to)
{
    size_t len;
    char *data = slurp(in_work(rel), &len);
    char *at = strstr(data, from);
    ck_assert_msg(at != NULL, "%s: '%s' not found", rel, from);
    size_t head = (size_t)(at - data), nf = strlen(from), nt = strlen(to);
    char *out = malloc(len - nf + nt + 1);
    memcpy(out, data, head);
    memcpy(out + head, to, nt);
    memcpy(out + head + nt, at + nf, len - head - nf);
    spill(in_work(rel), out, len - nf + nt);
    free(out);
    free(data);
}

/* Loading work must fail with `status` and a message holding `what` (and `what2` if not NULL). */
static void load_fails(ldm_status status, const char *what, const char *what2)
{
    ldm_model *m = NULL;
    ldm_status st = ldm_model_load(work, NULL, &m);
    ck_assert_msg(st == status, "status %s, expected %s: %s", ldm_status_string(st), ldm_status_string(status),
                  ldm_last_error());
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(ldm_last_error(), what) != NULL, "message lacks '%s': %s", what, ldm_last_error());
    if (what2)
        ck_assert_msg(strstr(ldm_last_error(), what2) != NULL, "message lacks '%s': %s", what2, ldm_last_error());
}

START_TEST(folder_loads_in_place)
{
    ldm_model *m = NULL;
    ck_assert(ld_diffusers_is_folder(work));
    ck_assert(ld_diffusers_is_folder(in_work("model_index.json")));
    ck_assert(!ld_diffusers_is_folder(in_work("unet")));
    ck_assert_msg(ldm_model_load(in_work("model_index.json"), NULL, &m) == LDM_OK, "%s", ldm_last_error());
    ck_assert_ptr_nonnull(strstr(ldm_model_describe(m), "diffusers folder (LatentConsistencyModelPipeline)"));
    ck_assert_ptr_nonnull(strstr(ldm_model_describe(m), "LCM guidance embedding 256"));
    ck_assert_ptr_nonnull(strstr(ldm_model_config_path(m), "model_index.json"));
    ck_assert_int_eq(ldm_model_guidance_embedding_dim(m), 256);
    ldm_model_free(m);
    /* the store: F16 tensors point into the component files' mappings, reshapes included */
    lw_store *s = NULL;
    ld_model desc;
    ck_assert_msg(ld_diffusers_open(work, 0, &s, &desc) == LDM_OK, "%s", ldm_last_error());
    const lw_tensor *q = lw_find(s, "first_stage_model.decoder.mid.attn_1.q.weight");
    ck_assert_ptr_nonnull(q);
    ck_assert_int_eq(q->ndim, 4);
    ck_assert(q->shape[0] == 64 && q->shape[1] == 64 && q->shape[2] == 1 && q->shape[3] == 1);
    ck_assert_int_eq(q->dtype, LW_F16);
    ck_assert(lw_store_in_mapping(s, q->data, q->nbytes));
    const lw_tensor *up = lw_find(s, "first_stage_model.decoder.up.1.upsample.conv.weight");
    ck_assert_ptr_nonnull(up); /* diffusers' up_blocks.0: the decoder levels are numbered the other way */
    const lw_tensor *cp = lw_find(s, "model.diffusion_model.time_embed.cond_proj.weight");
    ck_assert(cp && cp->shape[0] == 64 && cp->shape[1] == 256 && lw_store_in_mapping(s, cp->data, cp->nbytes));
    ck_assert_ptr_nonnull(lw_find(s, "cond_stage_model.transformer.text_model.final_layer_norm.weight"));
    ck_assert_int_eq(desc.cond.kind, LD_COND_CLIP);
    ck_assert_int_eq(desc.parameterization, LD_PARAM_EPS);
    ck_assert(desc.scale_factor == 0.18215);
    lw_close(s);
}
END_TEST

START_TEST(prediction_type_is_honoured)
{
    edit("scheduler/scheduler_config.json", "\"epsilon\"", "\"v_prediction\"");
    ldm_model *m = NULL;
    ck_assert_msg(ldm_model_load(work, NULL, &m) == LDM_OK, "%s", ldm_last_error());
    ck_assert_ptr_nonnull(strstr(ldm_model_describe(m), "v-prediction"));
    ldm_model_free(m);
}
END_TEST

START_TEST(missing_component)
{
    ck_assert_int_eq(unlink(in_work("vae/diffusion_pytorch_model.safetensors")), 0);
    load_fails(LDM_ERR_NOT_FOUND, "vae", "diffusion_pytorch_model");
}
END_TEST

START_TEST(missing_config)
{
    ck_assert_int_eq(unlink(in_work("unet/config.json")), 0);
    load_fails(LDM_ERR_NOT_FOUND, "unet/config.json", NULL);
}
END_TEST

START_TEST(bad_json)
{
    edit("unet/config.json", "\"act_fn\": \"silu\",", "\"act_fn\": \"silu\" ,,");
    load_fails(LDM_ERR_FORMAT, "unet/config.json", "JSON");
}
END_TEST

START_TEST(foreign_components)
{
    edit("model_index.json", "\"CLIPTextModel\"", "\"T5EncoderModel\"");
    load_fails(LDM_ERR_UNSUPPORTED, "text_encoder", "T5EncoderModel");
}
END_TEST

START_TEST(sdxl_pipeline_refused)
{
    edit("model_index.json", "\"image_encoder\"",
         "\"text_encoder_2\": [\"transformers\", "
         "\"CLIPTextModelWithProjection\"], \"image_encoder\"");
    load_fails(LDM_ERR_UNSUPPORTED, "text_encoder_2", NULL);
}
END_TEST

START_TEST(mismatched_shapes)
{
    edit("unet/config.json", "\"block_out_channels\": [\n    64,\n    64\n  ]", "\"block_out_channels\": [96, 96]");
    load_fails(LDM_ERR_FORMAT, "model.diffusion_model.", "shape");
}
END_TEST

START_TEST(guidance_embedding_mismatch)
{
    edit("unet/config.json", "\"time_cond_proj_dim\": 256", "\"time_cond_proj_dim\": 128");
    load_fails(LDM_ERR_FORMAT, "time_cond_proj_dim", NULL);
}
END_TEST

START_TEST(truncated_weights)
{
    const char *rel = "unet/diffusion_pytorch_model.fp16.safetensors";
    size_t len;
    char *data = slurp(in_work(rel), &len);
    spill(in_work(rel), data, len / 2);
    free(data);
    load_fails(LDM_ERR_FORMAT, rel, NULL);
}
END_TEST

/* The UNet's file again with one tensor that no UNet2DConditionModel has. */
START_TEST(unknown_tensor)
{
    const char *rel = "unet/diffusion_pytorch_model.fp16.safetensors";
    char src[1200];
    snprintf(src, sizeof src, "%s/%s", fixture_folder(), rel);
    lw_store *s = NULL;
    ck_assert_int_eq(lw_open(src, 0, &s), LDM_OK);
    size_t n = lw_count(s);
    lw_out_tensor *t = calloc(n + 1, sizeof *t);
    for (size_t i = 0; i < n; i++) {
        const lw_tensor *w = lw_at(s, i);
        t[i] = (lw_out_tensor){.name = w->name, .dtype = w->dtype, .ndim = w->ndim, .data = w->data};
        memcpy(t[i].shape, w->shape, sizeof w->shape);
    }
    static const float extra[2] = {1, 2};
    t[n] = (lw_out_tensor){
        .name = "down_blocks.0.resnets.0.conv9.weight", .dtype = LW_F32, .ndim = 1, .shape = {2}, .data = extra};
    ck_assert_msg(lw_write_safetensors(in_work(rel), t, n + 1, NULL, NULL, 0) == LDM_OK, "%s", ldm_last_error());
    free(t);
    lw_close(s);
    load_fails(LDM_ERR_FORMAT, "down_blocks.0.resnets.0.conv9.weight", rel);
}
END_TEST

/* Fails the n-th allocation for n = 1, 2, ... until reading the folder succeeds: every error path
 * releases what it took (valgrind / ASan watch) and reports the failure. */
START_TEST(allocation_failures_are_clean)
{
    int failures = 0;
    for (long n = 1; n < 100000; n++) {
        lw_store *s = NULL;
        ld_model desc;
        ldm_alloc_fail_after(n);
        ldm_status st = ld_diffusers_open(work, 0, &s, &desc);
        ldm_alloc_fail_after(0);
        if (st == LDM_OK) {
            lw_close(s);
            ck_assert_int_gt(failures, 10);
            return;
        }
        ck_assert_msg(st == LDM_ERR_OUT_OF_MEMORY, "n=%ld: status %s: %s", n, ldm_status_string(st), ldm_last_error());
        ck_assert_ptr_null(s);
        failures++;
    }
    ck_abort_msg("never succeeded");
}
END_TEST

/* A text encoder tensor that CLIPTextModel does not have. */
START_TEST(unknown_text_tensor)
{
    const char *rel = "text_encoder/model.fp16.safetensors";
    char src[1200];
    snprintf(src, sizeof src, "%s/%s", fixture_folder(), rel);
    lw_store *s = NULL;
    ck_assert_int_eq(lw_open(src, 0, &s), LDM_OK);
    size_t n = lw_count(s);
    lw_out_tensor *t = calloc(n + 1, sizeof *t);
    for (size_t i = 0; i < n; i++) {
        const lw_tensor *w = lw_at(s, i);
        t[i] = (lw_out_tensor){.name = w->name, .dtype = w->dtype, .ndim = w->ndim, .data = w->data};
        memcpy(t[i].shape, w->shape, sizeof w->shape);
    }
    static const float extra[2] = {1, 2};
    t[n] = (lw_out_tensor){.name = "text_projection.weight", .dtype = LW_F32, .ndim = 1, .shape = {2}, .data = extra};
    ck_assert_msg(lw_write_safetensors(in_work(rel), t, n + 1, NULL, NULL, 0) == LDM_OK, "%s", ldm_last_error());
    free(t);
    lw_close(s);
    load_fails(LDM_ERR_FORMAT, "text_projection.weight", rel);
}
END_TEST

/* The folder's tokenizer/merges.txt (HF's file: the version line and the merges) tokenizes like
 * bpe_simple_vocab_16e6.txt.gz. */
START_TEST(merges_txt_tokenizes_like_the_clip_vocabulary)
{
    const char *slash = strrchr(__FILE__, '/');
    int dirlen = slash ? (int)(slash - __FILE__) + 1 : 0;
    char gz[1024];
    snprintf(gz, sizeof gz, "%.*s../../shared/vocab/bpe_simple_vocab_16e6.txt.gz", dirlen, __FILE__);
    if (access(gz, R_OK) != 0) {
        fprintf(stderr, "skipped: %s not found\n", gz);
        return;
    }
    char cmd[2400];
    ck_assert_int_eq(mkdir(in_work("tokenizer"), 0755), 0);
    snprintf(cmd, sizeof cmd, "gzip -dc '%s' | sed -n '1p;2,48895p' | sed '1s/.*/#version: 0.2/' > '%s'", gz,
             in_work("tokenizer/merges.txt"));
    ck_assert_int_eq(system(cmd), 0);
    ldm_tokenizer *a = NULL, *b = NULL;
    ck_assert_int_eq(ldm_tokenizer_load(LDM_TOKENIZER_CLIP, gz, &a), LDM_OK);
    ck_assert_msg(ldm_tokenizer_load(LDM_TOKENIZER_CLIP, in_work("tokenizer/merges.txt"), &b) == LDM_OK, "%s",
                  ldm_last_error());
    const char *prompts[] = {"a photograph of an astronaut riding a horse", "Ünïcødé & <html> 123 ..."};
    ldm_tensor *ta = NULL, *tb = NULL;
    ck_assert_int_eq(ldm_tokenizer_encode(a, prompts, 2, 77, &ta), LDM_OK);
    ck_assert_int_eq(ldm_tokenizer_encode(b, prompts, 2, 77, &tb), LDM_OK);
    ck_assert_int_eq(memcmp(ldm_tensor_data(ta), ldm_tensor_data(tb), 2 * 77 * sizeof(int64_t)), 0);
    ldm_tensor_free(ta);
    ldm_tensor_free(tb);
    ldm_tokenizer_free(a);
    ldm_tokenizer_free(b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("diffusers");
    TCase *names = tcase_create("names");
    tcase_add_test(names, vae_names);
    tcase_add_test(names, openclip_names);
    suite_add_tcase(s, names);
    TCase *configs = tcase_create("configs");
    tcase_add_test(configs, unet_config_sd1_sd2);
    tcase_add_test(configs, configs_refused);
    tcase_add_test(configs, scheduler_and_text_configs);
    suite_add_tcase(s, configs);
    TCase *folder = tcase_create("folder");
    tcase_add_checked_fixture(folder, setup_folder, teardown_folder);
    tcase_set_timeout(folder, 120);
    tcase_add_test(folder, folder_loads_in_place);
    tcase_add_test(folder, prediction_type_is_honoured);
    tcase_add_test(folder, missing_component);
    tcase_add_test(folder, missing_config);
    tcase_add_test(folder, bad_json);
    tcase_add_test(folder, foreign_components);
    tcase_add_test(folder, sdxl_pipeline_refused);
    tcase_add_test(folder, mismatched_shapes);
    tcase_add_test(folder, guidance_embedding_mismatch);
    tcase_add_test(folder, truncated_weights);
    tcase_add_test(folder, unknown_tensor);
    tcase_add_test(folder, unknown_text_tensor);
    tcase_add_test(folder, allocation_failures_are_clean);
    tcase_add_test(folder, merges_txt_tokenizes_like_the_clip_vocabulary);
    suite_add_tcase(s, folder);
    return ck_run_suite(s);
}
