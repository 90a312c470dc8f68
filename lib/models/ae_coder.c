/* ae_coder.c - autoencoder Encoder / Decoder (see ae_coder.h). */
#include "ae_coder.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* printf-style module name; fails cleanly when it does not fit. */
static ldm_status modname(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static ldm_status modname(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "autoencoder: module name too long");
    return LDM_OK;
}

static int in_attn_resolutions(const ld_autoencoder *d, int res)
{
    if (d->attn_none) return 0; /* make_attn(attn_type="none") is an Identity */
    for (int i = 0; i < d->n_attn_resolutions; i++)
        if (d->attn_resolutions[i] == res) return 1;
    return 0;
}

/* The ResnetBlocks (and attention blocks, when `attn`) of one level: `n` blocks named
 * "<name>.<kind>.<level>.block.<j>", the first in_ch -> out_ch, the rest out_ch -> out_ch. */
static ldm_status level_load(laec_level *lv, const lw_store *s, const char *name, const char *kind, int level,
                             int n, int in_ch, int out_ch, int attn)
{
    char sub[512];
    if (n > 0) {
        lv->blocks = ldm_calloc((size_t)n, sizeof *lv->blocks);
        if (!lv->blocks) return ldm_alloc_failure_status();
        if (attn) {
            lv->attn = ldm_calloc((size_t)n, sizeof *lv->attn);
            if (!lv->attn) return ldm_alloc_failure_status();
        }
        lv->n_blocks = n;
    }
    for (int j = 0; j < n; j++) {
        LDM_TRY(modname(sub, sizeof sub, "%s.%s.%d.block.%d", name, kind, level, j));
        LDM_TRY(laeb_resblock_load(&lv->blocks[j], s, sub, j == 0 ? in_ch : out_ch, out_ch));
        if (attn) {
            LDM_TRY(modname(sub, sizeof sub, "%s.%s.%d.attn.%d", name, kind, level, j));
            LDM_TRY(laeb_attn_load(&lv->attn[j], s, sub, out_ch));
        }
    }
    return LDM_OK;
}

static ldm_status mid_load(laec *e, const ld_autoencoder *d, const lw_store *s, const char *name, int ch)
{
    char sub[512];
    LDM_TRY(modname(sub, sizeof sub, "%s.mid.block_1", name));
    LDM_TRY(laeb_resblock_load(&e->mid_block_1, s, sub, ch, ch));
    if (!d->attn_none) {
        LDM_TRY(modname(sub, sizeof sub, "%s.mid.attn_1", name));
        LDM_TRY(laeb_attn_load(&e->mid_attn, s, sub, ch));
        e->has_mid_attn = 1;
    }
    LDM_TRY(modname(sub, sizeof sub, "%s.mid.block_2", name));
    return laeb_resblock_load(&e->mid_block_2, s, sub, ch, ch);
}

static ldm_status out_load(laec *e, const lw_store *s, const char *name, int ch, int out_ch)
{
    char sub[512];
    LDM_TRY(modname(sub, sizeof sub, "%s.norm_out", name));
    LDM_TRY(laeb_norm_load(&e->norm_out, s, sub, ch));
    LDM_TRY(modname(sub, sizeof sub, "%s.conv_out", name));
    return laeb_conv_load(&e->conv_out, s, sub, ch, out_ch, 3, 1);
}

static ldm_status encoder_load_parts(laec *e, const ld_autoencoder *d, const lw_store *s, const char *name)
{
    char sub[512];
    int L = d->n_levels, ch = d->ch;
    LDM_TRY(modname(sub, sizeof sub, "%s.conv_in", name));
    LDM_TRY(laeb_conv_load(&e->conv_in, s, sub, d->in_channels, ch, 3, 1));
    int curr_res = d->resolution, block_in = ch;
    for (int i = 0; i < L; i++) {
        laec_level *lv = &e->level[i];
        block_in = ch * (i == 0 ? 1 : d->ch_mult[i - 1]);
        int block_out = ch * d->ch_mult[i];
        int attn = in_attn_resolutions(d, curr_res);
        LDM_TRY(level_load(lv, s, name, "down", i, d->num_res_blocks, block_in, block_out, attn));
        if (d->num_res_blocks > 0) block_in = block_out;
        if (i != L - 1) {
            LDM_TRY(modname(sub, sizeof sub, "%s.down.%d.downsample.conv", name, i));
            LDM_TRY(laeb_conv_load(&lv->resample, s, sub, block_in, block_in, 3, 1));
            lv->has_resample = 1;
            curr_res /= 2;
        }
    }
    LDM_TRY(mid_load(e, d, s, name, block_in));
    return out_load(e, s, name, block_in, d->double_z ? 2 * d->z_channels : d->z_channels);
}

static ldm_status decoder_load_parts(laec *e, const ld_autoencoder *d, const lw_store *s, const char *name)
{
    char sub[512];
    int L = d->n_levels, ch = d->ch;
    int block_in = ch * d->ch_mult[L - 1];
    int curr_res = d->resolution >> (L - 1);
    LDM_TRY(modname(sub, sizeof sub, "%s.conv_in", name));
    LDM_TRY(laeb_conv_load(&e->conv_in, s, sub, d->z_channels, block_in, 3, 1));
    LDM_TRY(mid_load(e, d, s, name, block_in));
    for (int i = L - 1; i >= 0; i--) {
        laec_level *lv = &e->level[i];
        int block_out = ch * d->ch_mult[i];
        int attn = in_attn_resolutions(d, curr_res);
        LDM_TRY(level_load(lv, s, name, "up", i, d->num_res_blocks + 1, block_in, block_out, attn));
        block_in = block_out;
        if (i != 0) {
            LDM_TRY(modname(sub, sizeof sub, "%s.up.%d.upsample.conv", name, i));
            LDM_TRY(laeb_conv_load(&lv->resample, s, sub, block_in, block_in, 3, 1));
            lv->has_resample = 1;
            curr_res *= 2;
        }
    }
    return out_load(e, s, name, block_in, d->out_ch);
}

ldm_status laec_encoder_load(laec *e, const ld_autoencoder *d, const lw_store *s, const char *name)
{
    memset(e, 0, sizeof *e);
    e->n_levels = d->n_levels;
    ldm_status st = encoder_load_parts(e, d, s, name);
    if (st != LDM_OK) laec_free(e);
    return st;
}

ldm_status laec_decoder_load(laec *e, const ld_autoencoder *d, const lw_store *s, const char *name)
{
    memset(e, 0, sizeof *e);
    e->is_decoder = 1;
    e->n_levels = d->n_levels;
    ldm_status st = decoder_load_parts(e, d, s, name);
    if (st != LDM_OK) laec_free(e);
    return st;
}

static void level_free(laec_level *lv)
{
    for (int j = 0; j < lv->n_blocks; j++) {
        laeb_resblock_free(&lv->blocks[j]);
        if (lv->attn) laeb_attn_free(&lv->attn[j]);
    }
    ldm_free(lv->blocks);
    ldm_free(lv->attn);
    laeb_conv_free(&lv->resample);
    memset(lv, 0, sizeof *lv);
}

void laec_free(laec *e)
{
    laeb_conv_free(&e->conv_in);
    for (int i = 0; i < LD_MAX_LEVELS; i++) level_free(&e->level[i]);
    laeb_resblock_free(&e->mid_block_1);
    laeb_resblock_free(&e->mid_block_2);
    laeb_attn_free(&e->mid_attn);
    laeb_norm_free(&e->norm_out);
    laeb_conv_free(&e->conv_out);
}

/* ---------------------------------------------------------------- forward */

static ldm_status check_cancel(const lctx *c)
{
    return lctx_cancelled(c) ? ldm_fail(LDM_CANCELLED, "cancelled") : LDM_OK;
}

/* Each step replaces *h by the step's output (freeing the input). */
static ldm_status step_resblock(const lctx *c, const laeb_resblock *r, laeb_map *h)
{
    laeb_map y;
    LDM_TRY(check_cancel(c));
    LDM_TRY(laeb_resblock_run(c, r, h, &y)); /* frees h, also on failure */
    *h = y;
    return LDM_OK;
}

static ldm_status step_resample(const lctx *c, const laec *e, const laeb_conv *cv, laeb_map *h)
{
    laeb_map y;
    LDM_TRY(check_cancel(c));
    LDM_TRY(e->is_decoder ? laeb_upsample_run(c, cv, h, &y) : laeb_downsample_run(c, cv, h, &y));
    laeb_map_free(h);
    *h = y;
    return LDM_OK;
}

static ldm_status run_level(const lctx *c, const laec *e, int i, laeb_map *h)
{
    const laec_level *lv = &e->level[i];
    for (int j = 0; j < lv->n_blocks; j++) {
        LDM_TRY(step_resblock(c, &lv->blocks[j], h));
        if (lv->attn) LDM_TRY(laeb_attn_run(c, &lv->attn[j], h));
    }
    if (lv->has_resample) LDM_TRY(step_resample(c, e, &lv->resample, h));
    return LDM_OK;
}

static ldm_status run_mid(const lctx *c, const laec *e, laeb_map *h)
{
    LDM_TRY(step_resblock(c, &e->mid_block_1, h));
    if (e->has_mid_attn) LDM_TRY(laeb_attn_run(c, &e->mid_attn, h));
    return step_resblock(c, &e->mid_block_2, h);
}

static ldm_status run_body(const lctx *c, const laec *e, laeb_map *h)
{
    if (e->is_decoder) {
        LDM_TRY(run_mid(c, e, h));
        for (int i = e->n_levels - 1; i >= 0; i--) LDM_TRY(run_level(c, e, i, h));
        return LDM_OK;
    }
    for (int i = 0; i < e->n_levels; i++) LDM_TRY(run_level(c, e, i, h));
    return run_mid(c, e, h);
}

static ldm_status coder_run(const lctx *c, const laec *e, const laeb_map *x, laeb_map *y)
{
    memset(y, 0, sizeof *y);
    laeb_map h;
    LDM_TRY(check_cancel(c));
    LDM_TRY(laeb_conv_run(c, &e->conv_in, x, &h));
    ldm_status st = run_body(c, e, &h);
    if (st == LDM_OK) st = check_cancel(c);
    if (st == LDM_OK) {
        laeb_norm_run(c, &e->norm_out, &h, 1, h.d);
        st = laeb_conv_run(c, &e->conv_out, &h, y);
    }
    laeb_map_free(&h);
    return st;
}

ldm_status laec_run(const lctx *c, const laec *e, const laeb_map *x, laeb_map *y)
{
    laeb_pool_begin(); /* the maps of one pass reuse each other's memory (ae_blocks.h) */
    ldm_status st = coder_run(c, e, x, y);
    laeb_pool_end();
    return st;
}
