/* test_config.c - YAML configs, architecture detection from weights, completion and description.
 *
 * Fixture part (LDM_SHARED): every fixtures/<name>/config.yaml parses, spot values match the YAML,
 * ld_config_complete accepts the fixture's checkpoint, and ld_detect on the checkpoint agrees with
 * the config on everything the weights can tell. Synthetic part: real-size SD 1.x / 2.x / LDM
 * checkpoints (names and shapes only) against the official YAML configs, and the error paths. */
#include <check.h>
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/weights.h"
#include "models/config.h"
#include "models/ytree.h"
#include "support/ck_run.h"

/* ---------------------------------------------------------------- helpers */

static const char *shared_dir(void)
{
    const char *s = getenv("LDM_SHARED");
    return (s && *s) ? s : "../shared";
}

static int fixtures_present(void)
{
    char path[1024];
    struct stat st;
    snprintf(path, sizeof path, "%s/fixtures", shared_dir());
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return 1;
    printf("SKIPPED: fixtures not found at %s (set LDM_SHARED)\n", path);
    return 0;
}

static ldm_status parse_str(const char *yaml, ld_model *m) { return ld_config_parse(yaml, strlen(yaml), "test.yaml", m); }

#define ASSERT_ERR(call, want, needle)                                                                           \
    do {                                                                                                         \
        ldm_status st_ = (call);                                                                                 \
        ck_assert_msg(st_ == (want), "%s: status %d, want %d (%s)", #call, (int)st_, (int)(want),             \
                      ldm_last_error());                                                                         \
        ck_assert_msg(strstr(ldm_last_error(), (needle)) != NULL, "message '%s' lacks '%s'", ldm_last_error(), \
                      (needle));                                                                                 \
    } while (0)

/* A small but complete LatentDiffusion config with a @@ placeholder for one injected line. */
static const char mini_template[] =
    "model:\n"
    "  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
    "  params:\n"
    "    linear_start: 0.0015\n"
    "    linear_end: 0.0195\n"
    "    @@PARAM@@\n"
    "    unet_config:\n"
    "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
    "      params:\n"
    "        image_size: 16\n"
    "        in_channels: 3\n"
    "        out_channels: 3\n"
    "        model_channels: 32\n"
    "        attention_resolutions: [2]\n"
    "        num_res_blocks: 1\n"
    "        @@UNET@@\n"
    "    first_stage_config:\n"
    "      target: ldm.models.autoencoder.VQModelInterface\n"
    "      params:\n"
    "        embed_dim: 3\n"
    "        n_embed: 16\n"
    "        ddconfig: {double_z: false, z_channels: 3, resolution: 64, in_channels: 3, out_ch: 3, ch: 32,\n"
    "                   ch_mult: [1], num_res_blocks: 0, attn_resolutions: []}\n"
    "    cond_stage_config: @@COND@@\n";

/* mini_template with PARAM / UNET / COND replaced (NULL: a neutral default). */
static char *mini(const char *param, const char *unet, const char *cond)
{
    const char *subst[3][2] = {{"@@PARAM@@", param ? param : "timesteps: 1000"},
                               {"@@UNET@@", unet ? unet : "num_head_channels: 32\n        channel_mult: [1, 1]"},
                               {"@@COND@@", cond ? cond : "__is_unconditional__"}};
    size_t cap = sizeof mini_template + 2048;
    char *out = malloc(cap), *o = out;
    const char *s = mini_template;
    while (*s) {
        int hit = 0;
        for (int i = 0; i < 3; i++) {
            size_t n = strlen(subst[i][0]);
            if (!strncmp(s, subst[i][0], n)) {
                o += sprintf(o, "%s", subst[i][1]);
                s += n;
                hit = 1;
            }
        }
        if (!hit) *o++ = *s++;
    }
    *o = '\0';
    return out;
}

/* ---------------------------------------------------------------- YAML tree */

START_TEST(yaml_scalar_typing)
{
    ld_ynode *root = NULL;
    const char *y = "a: 0x10\nb: 1_000\nc: 010\nd: 1e-4\ne: 1.0e-06\nf: .5\ng: yes\nh: '1'\ni: ~\nj: 1.\n"
                    "k: -3\nl: abc\nm: .inf\nn: \"true\"\n";
    ck_assert_int_eq(ld_yaml_parse(y, strlen(y), "t", &root), LDM_OK);
    long long v;
    double f;
    int b;
    ck_assert_int_eq(ld_yaml_int(ld_yaml_get(root, "a"), &v), 0);
    ck_assert_int_eq(v, 16);
    ck_assert_int_eq(ld_yaml_int(ld_yaml_get(root, "b"), &v), 0);
    ck_assert_int_eq(v, 1000);
    ck_assert_int_eq(ld_yaml_int(ld_yaml_get(root, "c"), &v), 0); /* YAML 1.1 octal, as PyYAML */
    ck_assert_int_eq(v, 8);
    ck_assert_int_eq(ld_yaml_int(ld_yaml_get(root, "d"), &v), -1);
    ck_assert_int_eq(ld_yaml_float(ld_yaml_get(root, "d"), &f), 0);
    ck_assert(f == 1e-4);
    ck_assert_int_eq(ld_yaml_float(ld_yaml_get(root, "e"), &f), 0);
    ck_assert(f == 1e-6);
    ck_assert_int_eq(ld_yaml_float(ld_yaml_get(root, "f"), &f), 0);
    ck_assert(f == 0.5);
    ck_assert_int_eq(ld_yaml_bool(ld_yaml_get(root, "g"), &b), 0);
    ck_assert_int_eq(b, 1);
    ck_assert_int_eq(ld_yaml_int(ld_yaml_get(root, "h"), &v), -1); /* quoted: a string */
    ck_assert(ld_yaml_is_null(ld_yaml_get(root, "i")));
    ck_assert_int_eq(ld_yaml_float(ld_yaml_get(root, "j"), &f), 0);
    ck_assert(f == 1.0);
    ck_assert_int_eq(ld_yaml_int(ld_yaml_get(root, "k"), &v), 0);
    ck_assert_int_eq(v, -3);
    ck_assert_int_eq(ld_yaml_float(ld_yaml_get(root, "l"), &f), -1);
    ck_assert_int_eq(ld_yaml_float(ld_yaml_get(root, "m"), &f), 0);
    ck_assert(isinf(f));
    ck_assert_int_eq(ld_yaml_bool(ld_yaml_get(root, "n"), &b), -1);
    ck_assert_ptr_null(ld_yaml_get(root, "zz"));
    ld_yaml_free(root);
}
END_TEST

START_TEST(yaml_rejects_bad_documents)
{
    ld_ynode *root = NULL;
    const char *bomb = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
                       "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
                       "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
                       "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n";
    ASSERT_ERR(ld_yaml_parse(bomb, strlen(bomb), "bomb.yaml", &root), LDM_ERR_UNSUPPORTED, "aliases");
    ck_assert_ptr_null(root);
    ASSERT_ERR(ld_yaml_parse("a: [1, 2\n", 9, "bad.yaml", &root), LDM_ERR_FORMAT, "invalid YAML");
    ASSERT_ERR(ld_yaml_parse("a: 1\na: 2\n", 10, "dup.yaml", &root), LDM_ERR_FORMAT, "duplicate key 'a'");
    ASSERT_ERR(ld_yaml_parse("", 0, "empty.yaml", &root), LDM_ERR_FORMAT, "empty");
    ASSERT_ERR(ld_yaml_parse("a: 1\n---\nb: 2\n", 14, "two.yaml", &root), LDM_ERR_FORMAT, "more than one");
    ASSERT_ERR(ld_yaml_parse("? [a]\n: 1\n", 10, "complex.yaml", &root), LDM_ERR_UNSUPPORTED, "map keys");
    ASSERT_ERR(ld_yaml_parse("a: !!python/object:os.system x\n", 31, "tag.yaml", &root), LDM_ERR_UNSUPPORTED, "tag");
    char deep[512];
    memset(deep, '[', 200);
    memset(deep + 200, ']', 200);
    deep[400] = '\0';
    ASSERT_ERR(ld_yaml_parse(deep, 400, "deep.yaml", &root), LDM_ERR_LIMIT, "deeper");
    ck_assert_ptr_null(root);
}
END_TEST

START_TEST(yaml_survives_allocation_failures)
{
    char *y = mini(NULL, NULL, NULL);
    ld_model m;
    ldm_status st = LDM_ERR_OUT_OF_MEMORY;
    for (long n = 1; n < 2000 && st != LDM_OK; n++) {
        ldm_alloc_fail_after(n);
        st = parse_str(y, &m);
        ldm_alloc_fail_after(0);
        ck_assert_msg(st == LDM_OK || st == LDM_ERR_OUT_OF_MEMORY, "n=%ld: status %d (%s)", n, (int)st,
                      ldm_last_error());
    }
    ck_assert_int_eq(st, LDM_OK);
    free(y);
}
END_TEST

/* ---------------------------------------------------------------- config semantics */

/* mini(param, unet, cond) must fail to parse with `want` and a message containing `needle`. */
static void mini_fails(const char *param, const char *unet, const char *cond, ldm_status want, const char *needle)
{
    ld_model m;
    char *y = mini(param, unet, cond);
    ASSERT_ERR(parse_str(y, &m), want, needle);
    free(y);
}

typedef struct mini_error {
    const char *param, *unet, *cond;
    ldm_status want;
    const char *needle;
} mini_error;

static const mini_error mini_errors[] = {
    {NULL, "num_head_channels: 32\n        channel_mult: [1, x]", NULL, LDM_ERR_FORMAT, "channel_mult"},
    {"timesteps: lots", NULL, NULL, LDM_ERR_FORMAT, "model.params.timesteps: expected an integer"},
    {"timesteps: -5", NULL, NULL, LDM_ERR_FORMAT, "out of the range"},
    {"use_ema: maybe", NULL, NULL, LDM_ERR_FORMAT, "use_ema: expected a boolean"},
    {"parameterization: mu", NULL, NULL, LDM_ERR_FORMAT, "parameterization"},
    /* neither num_heads nor num_head_channels */
    {NULL, "channel_mult: [1, 1]", NULL, LDM_ERR_FORMAT, "num_head_channels"},
    {NULL, "num_heads: 3\n        channel_mult: [1, 1]", NULL, LDM_ERR_UNSUPPORTED, "heads"},
    {NULL, NULL, "{target: ldm.modules.encoders.modules.NoSuchEncoder}", LDM_ERR_UNSUPPORTED, "NoSuchEncoder"},
    {NULL, NULL, "{target: ldm.modules.encoders.modules.FrozenT5Embedder}", LDM_ERR_UNSUPPORTED, "not supported"},
    {NULL, NULL, "__is_something__", LDM_ERR_FORMAT, "cond_stage_config"},
    {NULL, "num_heads: 1\n        channel_mult: [1, 1]\n        use_spatial_transformer: true", NULL, LDM_ERR_FORMAT,
     "context_dim"},
    {NULL, "num_heads: 1\n        channel_mult: [1, 1]\n        conv_resample: maybe", NULL, LDM_ERR_FORMAT,
     "conv_resample"},
};

START_TEST(config_errors_name_the_key)
{
    ld_model m;
    mini_fails(NULL, "num_head_channels: 32\n        channel_mult: \"abc\"", NULL, LDM_ERR_FORMAT,
               "unet_config.params.channel_mult: expected a sequence of integers");
    ck_assert(strstr(ldm_last_error(), "\"abc\""));
    for (size_t i = 0; i < LDM_ARRAY_LEN(mini_errors); i++) {
        const mini_error *e = &mini_errors[i];
        mini_fails(e->param, e->unet, e->cond, e->want, e->needle);
    }

    ASSERT_ERR(parse_str("model:\n  target: foo.Bar\n", &m), LDM_ERR_UNSUPPORTED, "foo.Bar");
    ASSERT_ERR(parse_str("model:\n  target: ldm.models.diffusion.ddpm.LatentUpscaleDiffusion\n", &m),
               LDM_ERR_UNSUPPORTED, "LatentUpscaleDiffusion");
    ASSERT_ERR(parse_str("model:\n  params: {}\n", &m), LDM_ERR_FORMAT, "model.target is required");
    ASSERT_ERR(parse_str("- 1\n- 2\n", &m), LDM_ERR_FORMAT, "top level");
    ASSERT_ERR(parse_str("model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n    timesteps: 9\n",
                         &m),
               LDM_ERR_FORMAT, "unet_config is required");
    ASSERT_ERR(parse_str("model: [\n", &m), LDM_ERR_FORMAT, "test.yaml:");
    /* conv_resample: false is a supported network (parameter-free Downsample / Upsample) */
    char *y = mini(NULL, "num_heads: 1\n        channel_mult: [1, 1]\n        conv_resample: false", NULL);
    ck_assert_msg(parse_str(y, &m) == LDM_OK, "%s", ldm_last_error());
    ck_assert_int_eq(m.unet.no_conv_resample, 1);
    free(y);
    y = mini(NULL, "num_heads: 1\n        channel_mult: [1, 1]", NULL);
    ck_assert_int_eq(parse_str(y, &m), LDM_OK);
    ck_assert_int_eq(m.unet.no_conv_resample, 0);
    free(y);
    ASSERT_ERR(ld_config_load("/nonexistent/dir/config.yaml", &m), LDM_ERR_IO, "/nonexistent/dir/config.yaml");
    ASSERT_ERR(parse_str("model:\n  target: ldm.models.autoencoder.AutoencoderKL\n  params:\n    embed_dim: 4\n"
                         "    ddconfig: {double_z: false, z_channels: 4, resolution: 256, in_channels: 3, out_ch: 3,"
                         " ch: 8, num_res_blocks: 1, attn_resolutions: []}\n",
                         &m),
               LDM_ERR_FORMAT, "double_z");
}
END_TEST

START_TEST(config_conditioning_key_rules)
{
    ld_model m;
    char *y;
    /* LatentDiffusion: no conditioning_key -> concat_mode (default True) decides. */
    y = mini(NULL, NULL, "{target: torch.nn.Identity}");
    ck_assert_int_eq(parse_str(y, &m), LDM_OK);
    ck_assert_int_eq(m.conditioning_key, LD_CONDKEY_CONCAT);
    ck_assert_int_eq(m.cond.kind, LD_COND_IDENTITY);
    free(y);
    y = mini("concat_mode: false", NULL,
             "{target: ldm.modules.encoders.modules.ClassEmbedder, params: {embed_dim: 32, n_classes: 10}}");
    ck_assert_int_eq(parse_str(y, &m), LDM_OK);
    ck_assert_int_eq(m.conditioning_key, LD_CONDKEY_CROSSATTN);
    ck_assert_int_eq(m.cond.n_classes, 10);
    free(y);
    /* __is_unconditional__ forces None whatever the key says. */
    y = mini("conditioning_key: crossattn", NULL, "__is_unconditional__");
    ck_assert_int_eq(parse_str(y, &m), LDM_OK);
    ck_assert_int_eq(m.conditioning_key, LD_CONDKEY_NONE);
    ck_assert_int_eq(m.use_ema, 1); /* DDPM default */
    ck_assert_int_eq(m.unet.legacy, 1);
    free(y);
    mini_fails("conditioning_key: sideways", NULL, NULL, LDM_ERR_FORMAT, "conditioning_key");
    mini_fails("conditioning_key: crossattn-adm", NULL, NULL, LDM_ERR_UNSUPPORTED, "crossattn-adm");
    /* BERTEmbedder defaults and the layout tokens. */
    y = mini("cond_stage_key: coordinates_bbox", NULL,
             "{target: ldm.modules.encoders.modules.BERTEmbedder, params: {n_embed: 32, n_layer: 2, vocab_size: 8192, "
             "max_seq_len: 92, use_tokenizer: false}}");
    ck_assert_int_eq(parse_str(y, &m), LDM_OK);
    ck_assert_int_eq(m.variant, LD_VARIANT_LAYOUT2IMG);
    ck_assert_int_eq(m.layout_no_tokens, 8192);
    ck_assert_int_eq(m.layout_no_max_objects, 30);
    ck_assert_int_eq(m.layout_no_object_classes, 300);
    ck_assert_int_eq(m.cond.bert_heads, 8);
    ck_assert_int_eq(m.cond.bert_dim_head, 64);
    free(y);
    y = mini(NULL, NULL, "{target: ldm.modules.encoders.modules.BERTEmbedder, params: {n_embed: 32, n_layer: 2}}");
    ck_assert_int_eq(parse_str(y, &m), LDM_OK);
    ck_assert_int_eq(m.cond.vocab_size, 30522);
    ck_assert_int_eq(m.cond.max_seq_len, 77);
    ck_assert_int_eq(m.cond.use_tokenizer, 1);
    ck_assert_int_eq(m.variant, LD_VARIANT_LDM);
    free(y);
    mini_fails(NULL, NULL, "{target: ldm.modules.encoders.modules.SpatialRescaler, params: {method: bicubic}}",
               LDM_ERR_UNSUPPORTED, "bicubic");
}
END_TEST

/* ---------------------------------------------------------------- official configs */

/* The KL-f8 first stage (AutoencoderKL, embed_dim 4) as the official SD 1.x, SD 2.x and LDM configs
 * spell it; SD 2.x has one more (comment) line at the top of ddconfig. */
#define KL_F8_FIRST_STAGE(DDCONFIG_EXTRA)                                                                         \
    "    first_stage_config:\n"                                                                                  \
    "      target: ldm.models.autoencoder.AutoencoderKL\n"                                                       \
    "      params:\n"                                                                                            \
    "        embed_dim: 4\n"                                                                                     \
    "        monitor: val/rec_loss\n"                                                                            \
    "        ddconfig:\n" DDCONFIG_EXTRA "          double_z: true\n"                                            \
    "          z_channels: 4\n"                                                                                  \
    "          resolution: 256\n"                                                                                \
    "          in_channels: 3\n"                                                                                 \
    "          out_ch: 3\n"                                                                                      \
    "          ch: 128\n"                                                                                        \
    "          ch_mult:\n"                                                                                       \
    "          - 1\n"                                                                                            \
    "          - 2\n"                                                                                            \
    "          - 4\n"                                                                                            \
    "          - 4\n"                                                                                            \
    "          num_res_blocks: 2\n"                                                                              \
    "          attn_resolutions: []\n"                                                                           \
    "          dropout: 0.0\n"                                                                                   \
    "        lossconfig:\n"                                                                                      \
    "          target: torch.nn.Identity\n"

static const char sd1_yaml[] =
    "model:\n"
    "  base_learning_rate: 1.0e-04\n"
    "  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
    "  params:\n"
    "    linear_start: 0.00085\n"
    "    linear_end: 0.0120\n"
    "    num_timesteps_cond: 1\n"
    "    log_every_t: 200\n"
    "    timesteps: 1000\n"
    "    first_stage_key: \"jpg\"\n"
    "    cond_stage_key: \"txt\"\n"
    "    image_size: 64\n"
    "    channels: 4\n"
    "    cond_stage_trainable: false   # Note: different from the one we trained before\n"
    "    conditioning_key: crossattn\n"
    "    monitor: val/loss_simple_ema\n"
    "    scale_factor: 0.18215\n"
    "    use_ema: False\n"
    "\n"
    "    scheduler_config: # 10000 warmup steps\n"
    "      target: ldm.lr_scheduler.LambdaLinearScheduler\n"
    "      params:\n"
    "        warm_up_steps: [ 10000 ]\n"
    "        cycle_lengths: [ 10000000000000 ] # incredibly large number to prevent corner cases\n"
    "        f_start: [ 1.e-6 ]\n"
    "        f_max: [ 1. ]\n"
    "        f_min: [ 1. ]\n"
    "\n"
    "    unet_config:\n"
    "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
    "      params:\n"
    "        image_size: 32 # unused\n"
    "        in_channels: 4\n"
    "        out_channels: 4\n"
    "        model_channels: 320\n"
    "        attention_resolutions: [ 4, 2, 1 ]\n"
    "        num_res_blocks: 2\n"
    "        channel_mult: [ 1, 2, 4, 4 ]\n"
    "        num_heads: 8\n"
    "        use_spatial_transformer: True\n"
    "        transformer_depth: 1\n"
    "        context_dim: 768\n"
    "        use_checkpoint: True\n"
    "        legacy: False\n"
    "\n"
    KL_F8_FIRST_STAGE("")
    "\n"
    "    cond_stage_config:\n"
    "      target: ldm.modules.encoders.modules.FrozenCLIPEmbedder\n";

/* v2-inference-v.yaml (SD 2.x 768-v) with the unet/first/cond blocks of the official file; the
 * inpainting variant below differs in target, conditioning_key, in_channels and parameterization. */
#define SD2_BODY(TARGET, EXTRA, KEY, IN)                                                                            \
    "model:\n"                                                                                                     \
    "  base_learning_rate: 1.0e-4\n"                                                                               \
    "  target: " TARGET "\n"                                                                                       \
    "  params:\n" EXTRA "    linear_start: 0.00085\n"                                                              \
    "    linear_end: 0.0120\n"                                                                                     \
    "    num_timesteps_cond: 1\n"                                                                                  \
    "    log_every_t: 200\n"                                                                                       \
    "    timesteps: 1000\n"                                                                                        \
    "    first_stage_key: \"jpg\"\n"                                                                               \
    "    cond_stage_key: \"txt\"\n"                                                                                \
    "    image_size: 64\n"                                                                                         \
    "    channels: 4\n"                                                                                            \
    "    cond_stage_trainable: false\n"                                                                            \
    "    conditioning_key: " KEY "\n"                                                                              \
    "    monitor: val/loss_simple_ema\n"                                                                           \
    "    scale_factor: 0.18215\n"                                                                                  \
    "    use_ema: False # we set this to false because this is an inference only config\n"                         \
    "\n"                                                                                                           \
    "    unet_config:\n"                                                                                           \
    "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"                                           \
    "      params:\n"                                                                                              \
    "        use_checkpoint: True\n"                                                                               \
    "        use_fp16: True\n"                                                                                     \
    "        image_size: 32 # unused\n"                                                                            \
    "        in_channels: " IN "\n"                                                                                \
    "        out_channels: 4\n"                                                                                    \
    "        model_channels: 320\n"                                                                                \
    "        attention_resolutions: [ 4, 2, 1 ]\n"                                                                 \
    "        num_res_blocks: 2\n"                                                                                  \
    "        channel_mult: [ 1, 2, 4, 4 ]\n"                                                                       \
    "        num_head_channels: 64 # need to fix for flash-attn\n"                                                 \
    "        use_spatial_transformer: True\n"                                                                      \
    "        use_linear_in_transformer: True\n"                                                                    \
    "        transformer_depth: 1\n"                                                                               \
    "        context_dim: 1024\n"                                                                                  \
    "        legacy: False\n"                                                                                      \
    "\n"                                                                                                           \
    KL_F8_FIRST_STAGE("          #attn_type: \"vanilla-xformers\"\n")                                                   \
    "\n"                                                                                                           \
    "    cond_stage_config:\n"                                                                                     \
    "      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder\n"                                          \
    "      params:\n"                                                                                              \
    "        freeze: True\n"                                                                                       \
    "        layer: \"penultimate\"\n"                                                                             \
    "\n"                                                                                                           \
    "data:\n"                                                                                                      \
    "  target: ldm.data.laion.WebDataModuleFromConfig\n"                                                           \
    "  params:\n"                                                                                                  \
    "    tar_base: null  # for concat as in LAION-A\n"                                                             \
    "    train:\n"                                                                                                 \
    "      shards:\n"                                                                                              \
    "        - \"pipe:aws s3 cp s3://stability-aws/laion-a-native/part-0/{00000..18699}.tar -\"\n"

static const char sd2v_yaml[] =
    SD2_BODY("ldm.models.diffusion.ddpm.LatentDiffusion", "    parameterization: \"v\"\n", "crossattn", "4");
static const char sd2_inpaint_yaml[] = SD2_BODY("ldm.models.diffusion.ddpm.LatentInpaintDiffusion", "", "hybrid", "9");

/* CompVis/latent-diffusion models/ldm/lsun_churches256/config.yaml (model part). */
static const char churches_yaml[] =
    "model:\n"
    "  base_learning_rate: 5.0e-05\n"
    "  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
    "  params:\n"
    "    linear_start: 0.0015\n"
    "    linear_end: 0.0155\n"
    "    num_timesteps_cond: 1\n"
    "    log_every_t: 200\n"
    "    timesteps: 1000\n"
    "    loss_type: l1\n"
    "    first_stage_key: image\n"
    "    cond_stage_key: image\n"
    "    image_size: 32\n"
    "    channels: 4\n"
    "    cond_stage_trainable: false\n"
    "    concat_mode: false\n"
    "    scale_by_std: true\n"
    "    monitor: val/loss_simple_ema\n"
    "    scheduler_config:\n"
    "      target: ldm.lr_scheduler.LambdaLinearScheduler\n"
    "      params:\n"
    "        warm_up_steps:\n"
    "        - 10000\n"
    "        cycle_lengths:\n"
    "        - 10000000000000\n"
    "        f_start:\n"
    "        - 1.0e-06\n"
    "        f_max:\n"
    "        - 1.0\n"
    "        f_min:\n"
    "        - 1.0\n"
    "    unet_config:\n"
    "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
    "      params:\n"
    "        image_size: 32\n"
    "        in_channels: 4\n"
    "        out_channels: 4\n"
    "        model_channels: 192\n"
    "        attention_resolutions:\n"
    "        - 1\n"
    "        - 2\n"
    "        - 4\n"
    "        - 8\n"
    "        num_res_blocks: 2\n"
    "        channel_mult:\n"
    "        - 1\n"
    "        - 2\n"
    "        - 2\n"
    "        - 4\n"
    "        - 4\n"
    "        num_heads: 8\n"
    "        use_scale_shift_norm: true\n"
    "        resblock_updown: true\n"
    KL_F8_FIRST_STAGE("")
    "\n"
    "    cond_stage_config: '__is_unconditional__'\n";

/* ---------------------------------------------------------------- synthetic checkpoints */

/* Tensor names and shapes as the reference modules register them; the data is never read
 * (except the schedule buffers), so every tensor points at one small dummy block. */
typedef struct synth {
    lw_store *s;
    float betas[1000], alphas_cumprod[1000], scale_factor;
} synth;

static const char dummy[64];

static void add(synth *y, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));
static void add(synth *y, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3, const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    int64_t shape[4] = {d0, d1, d2, d3};
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) numel *= (size_t)shape[i];
    ck_assert_int_eq(lw_store_add(y->s, name, LW_F16, ndim, shape, dummy, numel * 2), LDM_OK);
}

static void add_resblock(synth *y, const char *p, int in, int out, int emb, int scale_shift)
{
    add(y, 1, in, 0, 0, 0, "%sin_layers.0.weight", p);
    add(y, 4, out, in, 3, 3, "%sin_layers.2.weight", p);
    add(y, 2, (scale_shift ? 2 : 1) * out, emb, 0, 0, "%semb_layers.1.weight", p);
    add(y, 4, out, out, 3, 3, "%sout_layers.3.weight", p);
    if (in != out) add(y, 4, out, in, 1, 1, "%sskip_connection.weight", p);
}

typedef struct unet_spec {
    int in, out, mc, nrb, levels, mult[8], attn[8], heads_dummy;
    int spatial, depth, context, linear, updown, scale_shift;
} unet_spec;

static void add_attention(synth *y, const char *p, int ch, const unet_spec *u)
{
    if (!u->spatial) {
        add(y, 3, 3 * ch, ch, 1, 0, "%sqkv.weight", p);
        return;
    }
    if (u->linear) add(y, 2, ch, ch, 0, 0, "%sproj_in.weight", p);
    else add(y, 4, ch, ch, 1, 1, "%sproj_in.weight", p);
    for (int d = 0; d < u->depth; d++) {
        add(y, 2, ch, ch, 0, 0, "%stransformer_blocks.%d.attn1.to_k.weight", p, d);
        add(y, 2, ch, u->context, 0, 0, "%stransformer_blocks.%d.attn2.to_k.weight", p, d);
    }
}

/* openaimodel.UNetModel's module tree. */
static void add_unet(synth *y, const unet_spec *u)
{
    const char *P = "model.diffusion_model.";
    char p[128];
    int emb = 4 * u->mc, ch = u->mc, chans[64], nch = 0, idx = 1, ds = 1;
    add(y, 4, u->mc, u->in, 3, 3, "%sinput_blocks.0.0.weight", P);
    chans[nch++] = ch;
    for (int l = 0; l < u->levels; l++) {
        for (int r = 0; r < u->nrb; r++, idx++) {
            snprintf(p, sizeof p, "%sinput_blocks.%d.0.", P, idx);
            add_resblock(y, p, ch, u->mult[l] * u->mc, emb, u->scale_shift);
            ch = u->mult[l] * u->mc;
            snprintf(p, sizeof p, "%sinput_blocks.%d.1.", P, idx);
            if (u->attn[l]) add_attention(y, p, ch, u);
            chans[nch++] = ch;
        }
        if (l != u->levels - 1) {
            snprintf(p, sizeof p, "%sinput_blocks.%d.0.", P, idx++);
            if (u->updown) add_resblock(y, p, ch, ch, emb, u->scale_shift);
            else add(y, 4, ch, ch, 3, 3, "%sop.weight", p);
            chans[nch++] = ch;
            ds *= 2;
        }
    }
    snprintf(p, sizeof p, "%smiddle_block.0.", P);
    add_resblock(y, p, ch, ch, emb, u->scale_shift);
    snprintf(p, sizeof p, "%smiddle_block.1.", P);
    add_attention(y, p, ch, u);
    snprintf(p, sizeof p, "%smiddle_block.2.", P);
    add_resblock(y, p, ch, ch, emb, u->scale_shift);
    idx = 0;
    for (int l = u->levels - 1; l >= 0; l--)
        for (int i = 0; i <= u->nrb; i++, idx++) {
            int ich = chans[--nch], j = 1;
            snprintf(p, sizeof p, "%soutput_blocks.%d.0.", P, idx);
            add_resblock(y, p, ch + ich, u->mc * u->mult[l], emb, u->scale_shift);
            ch = u->mc * u->mult[l];
            if (u->attn[l]) {
                snprintf(p, sizeof p, "%soutput_blocks.%d.1.", P, idx);
                add_attention(y, p, ch, u);
                j = 2;
            }
            if (l && i == u->nrb) {
                snprintf(p, sizeof p, "%soutput_blocks.%d.%d.", P, idx, j);
                if (u->updown) add_resblock(y, p, ch, ch, emb, u->scale_shift);
                else add(y, 4, ch, ch, 3, 3, "%sconv.weight", p);
            }
        }
    add(y, 4, u->out, u->mc, 3, 3, "%sout.2.weight", P);
}

/* ldm.modules.diffusionmodules.model Encoder/Decoder + quant convs (decoder blocks and the
 * convs detection reads; encoder blocks are left out). */
static void add_kl_f8(synth *y, const char *P)
{
    const int ch = 128, mult[4] = {1, 2, 4, 4}, z = 4, E = 4;
    add(y, 4, ch, 3, 3, 3, "%sencoder.conv_in.weight", P);
    add(y, 4, 2 * z, ch * 4, 3, 3, "%sencoder.conv_out.weight", P);
    add(y, 4, ch * 4, z, 3, 3, "%sdecoder.conv_in.weight", P);
    add(y, 4, 3, ch, 3, 3, "%sdecoder.conv_out.weight", P);
    add(y, 4, 2 * E, 2 * z, 1, 1, "%squant_conv.weight", P);
    add(y, 4, z, E, 1, 1, "%spost_quant_conv.weight", P);
    add(y, 4, ch * 4, ch * 4, 1, 1, "%sencoder.mid.attn_1.q.weight", P);
    add(y, 4, ch * 4, ch * 4, 1, 1, "%sdecoder.mid.attn_1.q.weight", P);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++) add(y, 4, ch * mult[i], ch * mult[i], 3, 3, "%sdecoder.up.%d.block.%d.conv1.weight", P, i, j);
}

static void add_schedule(synth *y, double start, double end)
{
    double a = sqrt(start), b = sqrt(end), acc = 1;
    for (int i = 0; i < 1000; i++) {
        double r = i == 999 ? b : a + i * (b - a) / 999;
        y->betas[i] = (float)(r * r);
        acc *= 1 - r * r;
        y->alphas_cumprod[i] = (float)acc;
    }
    int64_t n = 1000;
    ck_assert_int_eq(lw_store_add(y->s, "betas", LW_F32, 1, &n, y->betas, sizeof y->betas), LDM_OK);
    ck_assert_int_eq(lw_store_add(y->s, "alphas_cumprod", LW_F32, 1, &n, y->alphas_cumprod, sizeof y->alphas_cumprod),
                     LDM_OK);
}

static void add_clip(synth *y, int hf, int width, int layers)
{
    if (hf) {
        add(y, 2, 49408, width, 0, 0, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight");
        add(y, 2, 77, width, 0, 0, "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight");
        for (int i = 0; i < layers; i++)
            add(y, 1, width, 0, 0, 0, "cond_stage_model.transformer.text_model.encoder.layers.%d.layer_norm1.weight", i);
        return;
    }
    add(y, 2, 49408, width, 0, 0, "cond_stage_model.model.token_embedding.weight");
    add(y, 2, 77, width, 0, 0, "cond_stage_model.model.positional_embedding");
    for (int i = 0; i < layers; i++)
        add(y, 1, width, 0, 0, 0, "cond_stage_model.model.transformer.resblocks.%d.ln_1.weight", i);
}

static const unet_spec sd_unet = {4, 4, 320, 2, 4, {1, 2, 4, 4}, {1, 1, 1, 0}, 0, 1, 1, 768, 0, 0, 0};

static synth *synth_sd(int version, int in_channels)
{
    synth *y = calloc(1, sizeof *y);
    y->s = lw_store_new("synthetic-sd.safetensors");
    unet_spec u = sd_unet;
    u.in = in_channels;
    if (version == 2) {
        u.context = 1024;
        u.linear = 1;
    }
    add_unet(y, &u);
    add_kl_f8(y, "first_stage_model.");
    add_clip(y, version == 1, version == 1 ? 768 : 1024, version == 1 ? 12 : 24);
    add_schedule(y, 0.00085, 0.012);
    lw_store_finish(y->s);
    return y;
}

static void synth_free(synth *y)
{
    lw_close(y->s);
    free(y);
}

/* ---------------------------------------------------------------- comparisons */

static int ae_level_attn(const ld_autoencoder *a, int level)
{
    for (int i = 0; i < a->n_attn_resolutions; i++)
        if (a->attn_resolutions[i] == a->resolution >> level) return 1;
    return 0;
}

static int unet_level_attn(const ld_unet *u, int level)
{
    for (int i = 0; i < u->n_attention_resolutions; i++)
        if (u->attention_resolutions[i] == 1 << level) return 1;
    return 0;
}

#define SAME(what, a, b) ck_assert_msg((a) == (b), "%s: %s: config %d, detected %d", fx, what, (int)(a), (int)(b))

static void compare_first_stage(const char *fx, const ld_autoencoder *c, const ld_autoencoder *d)
{
    SAME("first stage is_vq", c->is_vq, d->is_vq);
    SAME("first stage ch", c->ch, d->ch);
    SAME("first stage in_channels", c->in_channels, d->in_channels);
    SAME("first stage out_ch", c->out_ch, d->out_ch);
    SAME("first stage z_channels", c->z_channels, d->z_channels);
    SAME("first stage embed_dim", c->embed_dim, d->embed_dim);
    SAME("first stage double_z", c->double_z, d->double_z);
    SAME("first stage levels", c->n_levels, d->n_levels);
    SAME("first stage num_res_blocks", c->num_res_blocks, d->num_res_blocks);
    SAME("first stage attn_none", c->attn_none, d->attn_none);
    if (c->is_vq) SAME("first stage n_embed", c->n_embed, d->n_embed);
    for (int i = 0; i < c->n_levels; i++) {
        SAME("first stage ch_mult[i]", c->ch_mult[i], d->ch_mult[i]);
        SAME("first stage attention at level i", ae_level_attn(c, i), ae_level_attn(d, i));
    }
}

static void compare_unet(const char *fx, const ld_unet *c, const ld_unet *d)
{
    SAME("unet in_channels", c->in_channels, d->in_channels);
    SAME("unet out_channels", c->out_channels, d->out_channels);
    SAME("unet model_channels", c->model_channels, d->model_channels);
    SAME("unet num_res_blocks", c->num_res_blocks, d->num_res_blocks);
    SAME("unet levels", c->n_levels, d->n_levels);
    for (int l = 0; l < c->n_levels; l++) {
        SAME("unet channel_mult[l]", c->channel_mult[l], d->channel_mult[l]);
        SAME("unet attention at level l", unet_level_attn(c, l), unet_level_attn(d, l));
    }
    SAME("unet use_spatial_transformer", c->use_spatial_transformer, d->use_spatial_transformer);
    if (c->use_spatial_transformer) {
        SAME("unet transformer_depth", c->transformer_depth, d->transformer_depth);
        SAME("unet context_dim", c->context_dim, d->context_dim);
        SAME("unet use_linear_in_transformer", c->use_linear_in_transformer, d->use_linear_in_transformer);
    }
    SAME("unet resblock_updown", c->resblock_updown, d->resblock_updown);
    SAME("unet use_scale_shift_norm", c->use_scale_shift_norm, d->use_scale_shift_norm);
    SAME("unet num_classes", c->num_classes, d->num_classes);
}

static void compare_cond(const char *fx, const ld_model *cm, const ld_model *dm)
{
    const ld_cond *c = &cm->cond, *d = &dm->cond;
    SAME("cond kind", c->kind, d->kind);
    SAME("conditioning_key", cm->conditioning_key, dm->conditioning_key);
    SAME("variant", cm->variant, dm->variant);
    switch (c->kind) {
    case LD_COND_CLASS:
        SAME("n_classes", c->n_classes, d->n_classes);
        SAME("embed_dim", c->embed_dim, d->embed_dim);
        break;
    case LD_COND_CLIP:
    case LD_COND_OPENCLIP:
        SAME("text width", c->width, d->width);
        SAME("text layers", c->layers, d->layers);
        SAME("text vocab", c->vocab, d->vocab);
        SAME("text ctx", c->ctx, d->ctx);
        SAME("text layer_skip", c->layer_skip, d->layer_skip);
        break;
    case LD_COND_BERT:
        SAME("bert n_embed", c->n_embed, d->n_embed);
        SAME("bert n_layer", c->n_layer, d->n_layer);
        SAME("bert vocab_size", c->vocab_size, d->vocab_size);
        SAME("bert max_seq_len", c->max_seq_len, d->max_seq_len);
        SAME("bert use_tokenizer", c->use_tokenizer, d->use_tokenizer);
        SAME("layout tokens", cm->layout_no_tokens, dm->layout_no_tokens);
        SAME("layout objects", cm->layout_no_max_objects, dm->layout_no_max_objects);
        break;
    case LD_COND_SPATIAL_RESCALER:
        SAME("rescaler in", c->in_channels, d->in_channels);
        SAME("rescaler out", c->out_channels, d->out_channels);
        SAME("rescaler bias", c->bias, d->bias);
        break;
    default: break;
    }
}

/* use_ema only matters when model_ema.* is stored (without it the EMA equals the weights), so the
 * effective choice is compared. */
static void compare_schedule(const char *fx, const ld_model *c, const ld_model *d, const lw_store *s)
{
    int has_ema = lw_has_prefix(s, "model_ema.");
    SAME("timesteps", c->timesteps, d->timesteps);
    SAME("effective use_ema", c->use_ema && has_ema, d->use_ema && has_ema);
    ck_assert_msg(c->linear_start == d->linear_start && c->linear_end == d->linear_end,
                  "%s: linear schedule config %g..%g, detected %g..%g", fx, c->linear_start, c->linear_end,
                  d->linear_start, d->linear_end);
}

/* ---------------------------------------------------------------- synthetic SD / LDM */

/* det = what ld_detect reads from s; cfg = `yaml` completed against s. */
static void detect_and_complete(const lw_store *s, const char *yaml, ld_model *det, ld_model *cfg)
{
    ck_assert_msg(ld_detect(s, det) == LDM_OK, "%s", ldm_last_error());
    ck_assert_int_eq(parse_str(yaml, cfg), LDM_OK);
    ck_assert_msg(ld_config_complete(cfg, s) == LDM_OK, "%s", ldm_last_error());
}

/* A full-size checkpoint: detection must agree with the official config on everything, heads
 * included (real widths make the 64-channel head rule exact). */
static void compare_full_size(const char *fx, const ld_model *cfg, const ld_model *det, const lw_store *s)
{
    compare_first_stage(fx, &cfg->first_stage, &det->first_stage);
    compare_unet(fx, &cfg->unet, &det->unet);
    compare_cond(fx, cfg, det);
    compare_schedule(fx, cfg, det, s);
    SAME("num_heads", cfg->unet.num_heads, det->unet.num_heads);
    SAME("num_head_channels", cfg->unet.num_head_channels, det->unet.num_head_channels);
    SAME("text heads", cfg->cond.heads, det->cond.heads);
}

START_TEST(sd1_detect_matches_official_config)
{
    synth *y = synth_sd(1, 4);
    ld_model det, cfg;
    detect_and_complete(y->s, sd1_yaml, &det, &cfg);
    compare_full_size("SD1", &cfg, &det, y->s);
    ck_assert(det.scale_factor == 0.18215 && cfg.scale_factor == 0.18215);
    ck_assert_int_eq(det.parameterization, LD_PARAM_EPS);
    ck_assert_int_eq(cfg.cond.width, 768);
    ck_assert_int_eq(cfg.cond.layers, 12);
    ck_assert_int_eq(cfg.cond.heads, 12);
    ck_assert_str_eq(det.cond_stage_key, "txt");
    ck_assert(strstr(det.notes, "Stable Diffusion 1.x"));
    char buf[4096];
    ck_assert_int_eq(ld_describe(&det, y->s, buf, sizeof buf), LDM_OK);
    ck_assert_msg(strstr(buf, "Stable Diffusion 1.x") && strstr(buf, "model_channels 320") &&
                      strstr(buf, "FrozenCLIPEmbedder, width 768, 12 layers, 12 heads") && strstr(buf, "F16"),
                  "%s", buf);
    synth_free(y);
}
END_TEST

START_TEST(sd2_detect_matches_official_configs)
{
    synth *y = synth_sd(2, 4);
    ld_model det, cfg;
    detect_and_complete(y->s, sd2v_yaml, &det, &cfg);
    compare_full_size("SD2", &cfg, &det, y->s);
    ck_assert_int_eq(cfg.cond.heads, 16);
    ck_assert_int_eq(cfg.parameterization, LD_PARAM_V);
    /* v cannot be told from the weights: eps, and said so. */
    ck_assert_int_eq(det.parameterization, LD_PARAM_EPS);
    ck_assert(strstr(det.notes, "parameterization: v"));
    synth_free(y);

    y = synth_sd(2, 9);
    detect_and_complete(y->s, sd2_inpaint_yaml, &det, &cfg);
    ck_assert_int_eq(cfg.variant, LD_VARIANT_INPAINT_HYBRID);
    ck_assert_int_eq(cfg.conditioning_key, LD_CONDKEY_HYBRID);
    compare_cond("SD2 inpainting", &cfg, &det);
    synth_free(y);
}
END_TEST

START_TEST(churches_scale_factor_from_buffer)
{
    synth *y = calloc(1, sizeof *y);
    y->s = lw_store_new("synthetic-churches.ckpt");
    unet_spec u = {4, 4, 192, 2, 5, {1, 2, 2, 4, 4}, {1, 1, 1, 1, 0}, 0, 0, 1, 0, 0, 1, 1};
    add_unet(y, &u);
    add_kl_f8(y, "first_stage_model.");
    add_schedule(y, 0.0015, 0.0155);
    y->scale_factor = 0.22765929f;
    ck_assert_int_eq(lw_store_add(y->s, "scale_factor", LW_F32, 0, NULL, &y->scale_factor, 4), LDM_OK);
    lw_store_finish(y->s);
    ld_model det, cfg;
    ck_assert_msg(ld_detect(y->s, &det) == LDM_OK, "%s", ldm_last_error());
    ck_assert_msg(ld_config_complete(&det, y->s) == LDM_OK, "%s", ldm_last_error());
    ck_assert_int_eq(parse_str(churches_yaml, &cfg), LDM_OK);
    ck_assert(cfg.scale_factor == 1.0); /* scale_by_std: the buffer decides */
    ck_assert_msg(ld_config_complete(&cfg, y->s) == LDM_OK, "%s", ldm_last_error());
    compare_full_size("lsun_churches", &cfg, &det, y->s);
    ck_assert(cfg.scale_factor == (double)0.22765929f && det.scale_factor == cfg.scale_factor);
    ck_assert_int_eq(cfg.unet.use_scale_shift_norm, 1);
    ck_assert_int_eq(cfg.conditioning_key, LD_CONDKEY_NONE);
    synth_free(y);
}
END_TEST

START_TEST(complete_reports_mismatches)
{
    synth *y = synth_sd(1, 4);
    ld_model cfg;
    ck_assert_int_eq(parse_str(sd1_yaml, &cfg), LDM_OK);
    cfg.unet.context_dim = 1024;
    ASSERT_ERR(ld_config_complete(&cfg, y->s), LDM_ERR_FORMAT, "attn2.to_k.weight");
    ck_assert(strstr(ldm_last_error(), "1024") && strstr(ldm_last_error(), "768"));
    ck_assert_int_eq(parse_str(sd1_yaml, &cfg), LDM_OK);
    cfg.unet.channel_mult[1] = 3;
    ASSERT_ERR(ld_config_complete(&cfg, y->s), LDM_ERR_FORMAT, "channel_mult[1]");
    /* The SD2 config against SD1 weights: the text tower does not match. */
    ck_assert_int_eq(parse_str(sd2v_yaml, &cfg), LDM_OK);
    ASSERT_ERR(ld_config_complete(&cfg, y->s), LDM_ERR_FORMAT, "use_linear_in_transformer");
    cfg.unet.use_linear_in_transformer = 0;
    ASSERT_ERR(ld_config_complete(&cfg, y->s), LDM_ERR_FORMAT, "attn2.to_k.weight");
    /* A text tower whose dims are not in the config are read from the weights. */
    ck_assert_int_eq(parse_str(sd1_yaml, &cfg), LDM_OK);
    cfg.cond.width = cfg.cond.layers = cfg.cond.heads = cfg.cond.vocab = 0;
    ck_assert_msg(ld_config_complete(&cfg, y->s) == LDM_OK, "%s", ldm_last_error());
    ck_assert_int_eq(cfg.cond.width, 768);
    ck_assert_int_eq(cfg.cond.layers, 12);
    ck_assert_int_eq(cfg.cond.heads, 12);
    ck_assert_int_eq(cfg.cond.vocab, 49408);
    char small[64];
    ASSERT_ERR(ld_describe(&cfg, y->s, small, sizeof small), LDM_ERR_LIMIT, "does not fit");
    ck_assert_uint_eq(strlen(small), sizeof small - 1);
    synth_free(y);
}
END_TEST

START_TEST(detect_rejects_unknown_layouts)
{
    lw_store *s = lw_store_new("empty.safetensors");
    int64_t n = 3;
    ck_assert_int_eq(lw_store_add(s, "something.weight", LW_F32, 1, &n, dummy, 12), LDM_OK);
    lw_store_finish(s);
    ld_model m;
    ASSERT_ERR(ld_detect(s, &m), LDM_ERR_UNSUPPORTED, "neither");
    lw_close(s);
}
END_TEST

/* ---------------------------------------------------------------- fixtures */

enum { CMP_FIRST = 1, CMP_DIFFUSION = 2 };

typedef struct fixture_case {
    const char *name;
    int diffusion;
    ldm_status detect_status; /* LDM_OK, or UNSUPPORTED for shrunk models outside the known families */
    void (*spot)(const ld_model *m);
} fixture_case;

static void spot_ae_kl_f8(const ld_model *m)
{
    ck_assert(!m->is_diffusion && !m->first_stage.is_vq && m->first_stage.present);
    ck_assert_int_eq(m->first_stage.ch, 32);
    ck_assert_int_eq(m->first_stage.n_levels, 4);
    ck_assert_int_eq(m->first_stage.n_attn_resolutions, 1);
    ck_assert_int_eq(m->first_stage.attn_resolutions[0], 16);
    ck_assert_int_eq(m->first_stage.resolution, 64);
    ck_assert_int_eq(m->first_stage.embed_dim, 4);
}
static void spot_ae_kl_f4(const ld_model *m) { ck_assert(m->first_stage.attn_none && m->first_stage.embed_dim == 3); }
static void spot_ae_vq_f4(const ld_model *m)
{
    ck_assert(m->first_stage.is_vq && m->first_stage.n_embed == 32 && m->first_stage.ch_mult[2] == 2);
}
static void spot_cond_bert(const ld_model *m)
{
    ck_assert_int_eq(m->cond.kind, LD_COND_BERT);
    ck_assert(m->cond.n_embed == 32 && m->cond.n_layer == 2 && m->cond.vocab_size == 1000 && !m->cond.use_tokenizer);
    ck_assert_int_eq(m->unet.num_head_channels, 32);
    ck_assert_int_eq(m->conditioning_key, LD_CONDKEY_CROSSATTN);
}
static void spot_cond_class(const ld_model *m)
{
    ck_assert(m->cond.kind == LD_COND_CLASS && m->cond.n_classes == 1001 && m->cond.embed_dim == 48);
}
static void spot_cond_clip_sd1(const ld_model *m)
{
    ck_assert_int_eq(m->cond.kind, LD_COND_CLIP);
    ck_assert(m->cond.width == 32 && m->cond.layers == 2 && m->cond.heads == 2 && m->cond.vocab == 49408);
    ck_assert(m->scale_factor == 0.18215 && m->linear_start == 0.00085 && m->linear_end == 0.012);
    ck_assert(!m->unet.legacy && !m->use_ema);
    ck_assert_str_eq(m->cond_stage_key, "txt");
}
static void spot_cond_openclip_sd2(const ld_model *m)
{
    ck_assert(m->cond.kind == LD_COND_OPENCLIP && m->cond.layer_skip == 1);
    ck_assert(m->cond.width == 32 && m->cond.layers == 3 && m->cond.heads == 4);
    ck_assert(m->unet.use_linear_in_transformer && m->unet.num_head_channels == 16 && m->unet.num_heads == -1);
}
static void spot_cond_layout(const ld_model *m)
{
    ck_assert_int_eq(m->variant, LD_VARIANT_LAYOUT2IMG);
    ck_assert(m->layout_no_tokens == 8192 && m->layout_no_max_objects == 30 && m->layout_no_object_classes == 300);
    ck_assert(m->cond.max_seq_len == 92 && m->cond.n_embed == 16 && m->unet.num_res_blocks == 0);
}
static void spot_cond_spatial_rescaler(const ld_model *m)
{
    ck_assert_int_eq(m->cond.kind, LD_COND_SPATIAL_RESCALER);
    ck_assert(m->cond.n_stages == 2 && m->cond.in_channels == 182 && m->cond.out_channels == 3 && !m->cond.bias);
    ck_assert(m->cond.multiplier == 0.5 && m->cond.method_bilinear);
    ck_assert_int_eq(m->conditioning_key, LD_CONDKEY_CONCAT); /* concat_mode: true, no key */
    ck_assert(m->unet.in_channels == 6 && m->unet.num_heads == 8);
}
static void spot_ldm_cin_ddim(const ld_model *m)
{
    ck_assert(m->unet.attention_resolutions[0] == 2 && m->unet.n_attention_resolutions == 1);
    ck_assert(m->linear_end == 0.0195 && m->cond.n_classes == 1001);
}
static void spot_ldm_inpaint(const ld_model *m)
{
    ck_assert(m->cond.kind == LD_COND_FIRST_STAGE && m->conditioning_key == LD_CONDKEY_CONCAT);
    ck_assert(m->unet.resblock_updown && m->unet.num_heads == 2 && m->unet.in_channels == 7);
    ck_assert(m->first_stage.attn_none && m->linear_end == 0.0205);
}
static void spot_ldm_sd1_txt2img(const ld_model *m)
{
    ck_assert(m->cond.kind == LD_COND_CLIP && m->cond.width == 16 && m->unet.num_heads == 2 && m->unet.context_dim == 16);
}
static void spot_ldm_sd2v_ddim(const ld_model *m)
{
    ck_assert_int_eq(m->parameterization, LD_PARAM_V);
    ck_assert(m->cond.kind == LD_COND_OPENCLIP && m->cond.layer_skip == 1 && m->cond.width == 16);
}
static void spot_ldm_sr_concat(const ld_model *m)
{
    ck_assert(m->cond.kind == LD_COND_IDENTITY && m->conditioning_key == LD_CONDKEY_CONCAT);
    ck_assert(m->linear_end == 0.0155 && m->unet.in_channels == 6);
}
static void spot_ldm_uncond_plms(const ld_model *m)
{
    ck_assert(m->use_ema == 1 && m->cond.kind == LD_COND_NONE && m->conditioning_key == LD_CONDKEY_NONE);
}
static void spot_unet_attnblock(const ld_model *m)
{
    ck_assert(m->unet.n_attention_resolutions == 2 && m->unet.num_head_channels == 16 && !m->unet.use_spatial_transformer);
    ck_assert_int_eq(m->conditioning_key, LD_CONDKEY_NONE);
}
static void spot_unet_concat_resupdown(const ld_model *m)
{
    ck_assert(m->unet.resblock_updown && m->unet.in_channels == 7 && m->unet.num_heads == 2);
}
static void spot_unet_crossattn(const ld_model *m)
{
    ck_assert(m->unet.channel_mult[1] == 2 && m->unet.num_heads == 4 && m->unet.context_dim == 48);
    ck_assert(m->cond.n_classes == 8 && m->unet.use_spatial_transformer && !m->unet.use_linear_in_transformer);
}
static void spot_unet_sd2_linear(const ld_model *m)
{
    ck_assert(m->unet.use_linear_in_transformer && m->cond.vocab == 1000 && m->cond.layers == 1);
}

static const fixture_case fixture_cases[] = {
    {"ae_kl_f4", 0, LDM_OK, spot_ae_kl_f4},
    {"ae_kl_f8", 0, LDM_OK, spot_ae_kl_f8},
    {"ae_vq_f4", 0, LDM_OK, spot_ae_vq_f4},
    {"cond_bert", 1, LDM_ERR_UNSUPPORTED, spot_cond_bert},
    {"cond_class", 1, LDM_ERR_UNSUPPORTED, spot_cond_class},
    {"cond_clip_sd1", 1, LDM_ERR_UNSUPPORTED, spot_cond_clip_sd1},
    {"cond_layout", 1, LDM_ERR_UNSUPPORTED, spot_cond_layout},
    {"cond_openclip_sd2", 1, LDM_ERR_UNSUPPORTED, spot_cond_openclip_sd2},
    {"cond_spatial_rescaler", 1, LDM_ERR_UNSUPPORTED, spot_cond_spatial_rescaler},
    {"ldm_cin_ddim", 1, LDM_ERR_UNSUPPORTED, spot_ldm_cin_ddim},
    {"ldm_inpaint", 1, LDM_ERR_UNSUPPORTED, spot_ldm_inpaint},
    {"ldm_sd1_txt2img", 1, LDM_ERR_UNSUPPORTED, spot_ldm_sd1_txt2img},
    {"ldm_sd2v_ddim", 1, LDM_ERR_UNSUPPORTED, spot_ldm_sd2v_ddim},
    {"ldm_sr_concat", 1, LDM_ERR_UNSUPPORTED, spot_ldm_sr_concat},
    {"ldm_uncond_plms", 1, LDM_ERR_UNSUPPORTED, spot_ldm_uncond_plms},
    {"unet_attnblock", 1, LDM_ERR_UNSUPPORTED, spot_unet_attnblock},
    {"unet_concat_resupdown", 1, LDM_ERR_UNSUPPORTED, spot_unet_concat_resupdown},
    {"unet_crossattn", 1, LDM_ERR_UNSUPPORTED, spot_unet_crossattn},
    {"unet_sd2_linear", 1, LDM_ERR_UNSUPPORTED, spot_unet_sd2_linear},
};

START_TEST(every_fixture_config_parses)
{
    if (!fixtures_present()) return;
    char dir[1024], path[1300];
    snprintf(dir, sizeof dir, "%s/fixtures", shared_dir());
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int parsed = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s/config.yaml", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0) continue;
        ld_model m;
        ck_assert_msg(ld_config_load(path, &m) == LDM_OK, "%s: %s", path, ldm_last_error());
        parsed++;
    }
    closedir(d);
    ck_assert_int_ge(parsed, (int)LDM_ARRAY_LEN(fixture_cases));
}
END_TEST

START_TEST(fixture_config_against_weights)
{
    if (!fixtures_present()) return;
    const fixture_case *c = &fixture_cases[_i];
    char path[1300];
    snprintf(path, sizeof path, "%s/fixtures/%s/config.yaml", shared_dir(), c->name);
    ld_model cfg, det;
    ck_assert_msg(ld_config_load(path, &cfg) == LDM_OK, "%s: %s", path, ldm_last_error());
    ck_assert_int_eq(cfg.is_diffusion, c->diffusion);
    c->spot(&cfg);

    snprintf(path, sizeof path, "%s/fixtures/%s/model.safetensors", shared_dir(), c->name);
    lw_store *s = NULL;
    ck_assert_msg(lw_open(path, 0, &s) == LDM_OK, "%s: %s", path, ldm_last_error());
    ck_assert_msg(ld_config_complete(&cfg, s) == LDM_OK, "%s: %s", c->name, ldm_last_error());
    c->spot(&cfg); /* completion keeps the config's values */

    ldm_status st = ld_detect(s, &det);
    ck_assert_msg(st == c->detect_status, "%s: ld_detect status %d, want %d (%s)", c->name, (int)st,
                  (int)c->detect_status, st ? ldm_last_error() : "");
    if (st != LDM_OK) {
        /* Shrunk models: the head split (and more) is not in the weights; the message says so. */
        ck_assert_msg(strstr(ldm_last_error(), "heads") && strstr(ldm_last_error(), "--config"), "%s: %s", c->name,
                      ldm_last_error());
    }
    const char *fx = c->name;
    compare_first_stage(fx, &cfg.first_stage, &det.first_stage);
    if (c->diffusion) {
        compare_unet(fx, &cfg.unet, &det.unet);
        compare_cond(fx, &cfg, &det);
        compare_schedule(fx, &cfg, &det, s);
        SAME("use_ema", cfg.use_ema, det.use_ema);
    }
    char buf[8192];
    ck_assert_msg(ld_describe(&cfg, s, buf, sizeof buf) == LDM_OK, "%s", ldm_last_error());
    ck_assert_msg(strstr(buf, "first stage:") && strstr(buf, "dtypes:"), "%s", buf);
    if (c->diffusion) ck_assert_msg(strstr(buf, "unet:") && strstr(buf, "cond:"), "%s", buf);
    lw_close(s);
}
END_TEST

START_TEST(fixture_mismatch_is_reported)
{
    if (!fixtures_present()) return;
    char path[1300];
    snprintf(path, sizeof path, "%s/fixtures/cond_class/config.yaml", shared_dir());
    ld_model cfg;
    ck_assert_int_eq(ld_config_load(path, &cfg), LDM_OK);
    snprintf(path, sizeof path, "%s/fixtures/cond_class/model.safetensors", shared_dir());
    lw_store *s = NULL;
    ck_assert_int_eq(lw_open(path, 0, &s), LDM_OK);
    cfg.cond.embed_dim = 64;
    ASSERT_ERR(ld_config_complete(&cfg, s), LDM_ERR_FORMAT, "cond_stage_model.embedding.weight");
    ck_assert(strstr(ldm_last_error(), "64") && strstr(ldm_last_error(), "48"));
    /* A VQ config against KL weights. */
    snprintf(path, sizeof path, "%s/fixtures/ae_vq_f4/config.yaml", shared_dir());
    ck_assert_int_eq(ld_config_load(path, &cfg), LDM_OK);
    lw_close(s);
    snprintf(path, sizeof path, "%s/fixtures/ae_kl_f8/model.safetensors", shared_dir());
    ck_assert_int_eq(lw_open(path, 0, &s), LDM_OK);
    ck_assert_int_ne(ld_config_complete(&cfg, s), LDM_OK);
    lw_close(s);
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *t = tcase_create("yaml");
    tcase_add_test(t, yaml_scalar_typing);
    tcase_add_test(t, yaml_rejects_bad_documents);
    tcase_add_test(t, yaml_survives_allocation_failures);
    suite_add_tcase(s, t);
    t = tcase_create("config");
    tcase_add_test(t, config_errors_name_the_key);
    tcase_add_test(t, config_conditioning_key_rules);
    suite_add_tcase(s, t);
    t = tcase_create("synthetic");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, sd1_detect_matches_official_config);
    tcase_add_test(t, sd2_detect_matches_official_configs);
    tcase_add_test(t, churches_scale_factor_from_buffer);
    tcase_add_test(t, complete_reports_mismatches);
    tcase_add_test(t, detect_rejects_unknown_layouts);
    suite_add_tcase(s, t);
    t = tcase_create("fixtures");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, every_fixture_config_parses);
    tcase_add_loop_test(t, fixture_config_against_weights, 0, (int)LDM_ARRAY_LEN(fixture_cases));
    tcase_add_test(t, fixture_mismatch_is_reported);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    return ck_run_suite(config_suite());
}
