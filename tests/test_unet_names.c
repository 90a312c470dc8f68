/* test_unet_names.c - CompVis <-> diffusers UNet parameter names (lib/models/unet_names.c).
 *
 * The expected pairs are the ones diffusers' conversion scripts produce for SD 1.x (4 levels,
 * attention at ds 1,2,4) and SDXL (3 levels, no attention at ds 1); every pair must also map back. */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "models/unet_names.h"
#include "support/ck_run.h"

static ld_unet_layout sd1_layout(void)
{
    ld_unet u;
    ld_unet_defaults(&u);
    u.n_levels = 4;
    u.num_res_blocks = 2;
    u.n_attention_resolutions = 3;
    u.attention_resolutions[0] = 4, u.attention_resolutions[1] = 2, u.attention_resolutions[2] = 1;
    ld_unet_layout l;
    ld_unet_layout_from_desc(&u, &l);
    return l;
}

static ld_unet_layout sdxl_layout(void)
{
    ld_unet_layout l = {.n_levels = 3, .num_res_blocks = 2, .level_has_attn = {0, 1, 1}};
    return l;
}

typedef struct pair {
    const char *ldm, *diffusers;
} pair;

static const pair sd1_pairs[] = {
    {"time_embed.0.weight", "time_embedding.linear_1.weight"},
    {"time_embed.2.bias", "time_embedding.linear_2.bias"},
    {"input_blocks.0.0.weight", "conv_in.weight"},
    {"input_blocks.1.0.in_layers.0.weight", "down_blocks.0.resnets.0.norm1.weight"},
    {"input_blocks.1.0.in_layers.2.bias", "down_blocks.0.resnets.0.conv1.bias"},
    {"input_blocks.2.0.emb_layers.1.weight", "down_blocks.0.resnets.1.time_emb_proj.weight"},
    {"input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
     "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"},
    {"input_blocks.2.1.proj_in", "down_blocks.0.attentions.1.proj_in"},
    {"input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight"},
    {"input_blocks.4.0.skip_connection.weight", "down_blocks.1.resnets.0.conv_shortcut.weight"},
    {"input_blocks.8.1.transformer_blocks.0.ff.net.0.proj.weight",
     "down_blocks.2.attentions.1.transformer_blocks.0.ff.net.0.proj.weight"},
    {"input_blocks.9.0.op.bias", "down_blocks.2.downsamplers.0.conv.bias"},
    {"input_blocks.10.0.in_layers.0.weight", "down_blocks.3.resnets.0.norm1.weight"},
    {"input_blocks.11.0.out_layers.3.weight", "down_blocks.3.resnets.1.conv2.weight"},
    {"middle_block.0.out_layers.0.bias", "mid_block.resnets.0.norm2.bias"},
    {"middle_block.1.transformer_blocks.0.attn2.to_k.weight", "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"},
    {"middle_block.2.out_layers.3.weight", "mid_block.resnets.1.conv2.weight"},
    {"output_blocks.0.0.skip_connection.bias", "up_blocks.0.resnets.0.conv_shortcut.bias"},
    {"output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"},
    {"output_blocks.3.1.norm.weight", "up_blocks.1.attentions.0.norm.weight"},
    {"output_blocks.5.2.conv.bias", "up_blocks.1.upsamplers.0.conv.bias"},
    {"output_blocks.8.2.conv.weight", "up_blocks.2.upsamplers.0.conv.weight"},
    {"output_blocks.11.1.proj_out.weight", "up_blocks.3.attentions.2.proj_out.weight"},
    {"output_blocks.11.0.in_layers.2.weight", "up_blocks.3.resnets.2.conv1.weight"},
    {"out.0.weight", "conv_norm_out.weight"},
    {"out.2.bias", "conv_out.bias"},
    {"time_embed.cond_proj.weight", "time_embedding.cond_proj.weight"},
};

static const pair sdxl_pairs[] = {
    {"label_emb.0.0.weight", "add_embedding.linear_1.weight"},
    {"label_emb.0.2.bias", "add_embedding.linear_2.bias"},
    {"input_blocks.1.0.in_layers.0.weight", "down_blocks.0.resnets.0.norm1.weight"},
    {"input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight"},
    {"input_blocks.4.1.transformer_blocks.1.attn1.to_out.0.weight",
     "down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_out.0.weight"},
    {"input_blocks.8.1.transformer_blocks.9.norm3.weight", "down_blocks.2.attentions.1.transformer_blocks.9.norm3.weight"},
    {"output_blocks.2.2.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"},
    {"output_blocks.5.2.conv.bias", "up_blocks.1.upsamplers.0.conv.bias"},
    {"output_blocks.5.1.proj_out.weight", "up_blocks.1.attentions.2.proj_out.weight"},
    {"output_blocks.8.0.skip_connection.weight", "up_blocks.2.resnets.2.conv_shortcut.weight"},
};

static void check_pairs(const ld_unet_layout *l, const pair *p, size_t n)
{
    char out[256];
    for (size_t i = 0; i < n; i++) {
        ck_assert_msg(ld_unet_name_to_diffusers(l, p[i].ldm, out, sizeof out), "%s: no diffusers name", p[i].ldm);
        ck_assert_msg(!strcmp(out, p[i].diffusers), "%s -> %s, expected %s", p[i].ldm, out, p[i].diffusers);
        ck_assert_msg(ld_unet_name_from_diffusers(l, p[i].diffusers, out, sizeof out), "%s: no CompVis name",
                      p[i].diffusers);
        ck_assert_msg(!strcmp(out, p[i].ldm), "%s -> %s, expected %s", p[i].diffusers, out, p[i].ldm);
    }
}

START_TEST(sd1_names_both_ways)
{
    ld_unet_layout l = sd1_layout();
    check_pairs(&l, sd1_pairs, sizeof sd1_pairs / sizeof *sd1_pairs);
}
END_TEST

START_TEST(sdxl_names_both_ways)
{
    ld_unet_layout l = sdxl_layout();
    check_pairs(&l, sdxl_pairs, sizeof sdxl_pairs / sizeof *sdxl_pairs);
}
END_TEST

/* Every block position of the SD1 layout that has a diffusers name maps back to itself, and no
 * two positions share a diffusers name. */
START_TEST(sd1_every_block_round_trips)
{
    ld_unet_layout l = sd1_layout();
    static const char *tails[] = {".in_layers.0.weight", ".skip_connection.bias", ".proj_in.weight", ".op.weight",
                                  ".conv.weight", ".norm.bias"};
    char name[128], there[256], back[128];
    char seen[256][256];
    int n_seen = 0, mapped = 0;
    for (int side = 0; side < 2; side++)
        for (int k = 0; k < 14; k++)
            for (int m = 0; m < 4; m++)
                for (size_t t = 0; t < sizeof tails / sizeof *tails; t++) {
                    snprintf(name, sizeof name, "%s.%d.%d%s", side ? "output_blocks" : "input_blocks", k, m, tails[t]);
                    if (!ld_unet_name_to_diffusers(&l, name, there, sizeof there)) continue;
                    mapped++;
                    ck_assert_msg(ld_unet_name_from_diffusers(&l, there, back, sizeof back) && !strcmp(back, name),
                                  "%s -> %s -> %s", name, there, back);
                    for (int i = 0; i < n_seen; i++) ck_assert_msg(strcmp(seen[i], there), "%s twice", there);
                    ck_assert_int_lt(n_seen, 256);
                    snprintf(seen[n_seen++], sizeof seen[0], "%s", there);
                }
    /* ResBlocks take the two ResBlock tails (in_layers, skip_connection), samplers their own one
     * (op / conv); attentions and conv_in (input_blocks.0.0) pass every tail through unchanged.
     * input: conv_in, 8 ResBlocks, 6 attentions, 3 downsamplers; output: 12 ResBlocks, 9 attentions,
     * 3 upsamplers. */
    ck_assert_int_eq(mapped, 6 + 8 * 2 + 6 * 6 + 3 + 12 * 2 + 9 * 6 + 3);
}
END_TEST

START_TEST(names_outside_the_layout_are_refused)
{
    ld_unet_layout l = sd1_layout(), xl = sdxl_layout();
    char out[256];
    static const char *bad_ldm[] = {"input_blocks.12.0.in_layers.0.weight", "input_blocks.10.1.proj_in.weight",
                                    "input_blocks.12.0.op.weight", "output_blocks.12.0.in_layers.0.weight",
                                    "output_blocks.11.2.conv.weight", "middle_block.3.weight", "foo.bar",
                                    "input_blocks.x.0.weight", "input_blocks.1.0.bogus.weight", "input_blocks.3.0.conv.weight"};
    for (size_t i = 0; i < sizeof bad_ldm / sizeof *bad_ldm; i++)
        ck_assert_msg(!ld_unet_name_to_diffusers(&l, bad_ldm[i], out, sizeof out), "%s -> %s", bad_ldm[i], out);
    ck_assert(!ld_unet_name_to_diffusers(&xl, "input_blocks.1.1.proj_in.weight", out, sizeof out));
    static const char *bad_diffusers[] = {"down_blocks.4.resnets.0.norm1.weight", "down_blocks.3.downsamplers.0.conv.weight",
                                          "up_blocks.3.upsamplers.0.conv.weight", "down_blocks.0.resnets.2.norm1.weight",
                                          "up_blocks.0.resnets.3.norm1.weight", "mid_block.resnets.2.norm1.weight",
                                          "unet.conv_in.weight"};
    for (size_t i = 0; i < sizeof bad_diffusers / sizeof *bad_diffusers; i++)
        ck_assert_msg(!ld_unet_name_from_diffusers(&l, bad_diffusers[i], out, sizeof out), "%s -> %s",
                      bad_diffusers[i], out);
    /* module paths (no parameter name) map too */
    ck_assert(ld_unet_name_from_diffusers(&l, "down_blocks.0.attentions.0", out, sizeof out));
    ck_assert_str_eq(out, "input_blocks.1.1");
    ck_assert(!ld_unet_name_from_diffusers(&xl, "down_blocks.0.attentions.0.proj_in.weight", out, sizeof out));
    /* a result that does not fit is refused, not truncated */
    char tiny[8];
    ck_assert(!ld_unet_name_to_diffusers(&l, "input_blocks.1.0.in_layers.0.weight", tiny, sizeof tiny));
    /* resblock_updown: the samplers are ResBlocks, which diffusers does not spell */
    l.resblock_updown = 1;
    ck_assert(!ld_unet_name_to_diffusers(&l, "input_blocks.3.0.op.weight", out, sizeof out));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("unet_names");
    TCase *t = tcase_create("names");
    tcase_add_test(t, sd1_names_both_ways);
    tcase_add_test(t, sdxl_names_both_ways);
    tcase_add_test(t, sd1_every_block_round_trips);
    tcase_add_test(t, names_outside_the_layout_are_refused);
    suite_add_tcase(s, t);
    return ck_run_suite(s);
}
