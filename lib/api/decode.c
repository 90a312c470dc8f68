/* decode.c - first-stage decoding with scale_factor, whole or in overlapping tiles.
 *
 * The decoder's memory grows with the image (SD's 512x512 decode holds several 128x512x512
 * activations), so large latents are decoded in tiles that overlap by a quarter tile and are
 * blended with linear ramps. Tiling is an approximation: the decoder's mid-block attention is
 * global, so a tiled decode differs slightly from the whole one (invisible at the overlap used);
 * an explicit vae_tile larger than the latent decodes whole. */
#include "pipeline_internal.h"

#include "../models/autoencoder.h"

#include <string.h>

/* Latents up to this many pixels (e.g. 96x96 = a 768x768 SD image) decode whole by default. */
#define LP_AUTO_TILE_MAX_PIXELS (96 * 96)
#define LP_AUTO_TILE 64

static ldm_tensor *crop(const ldm_tensor *z, int64_t y0, int64_t x0, int64_t h, int64_t w)
{
    ldm_tensor *t = lt_new_f32_4d(z->shape[0], z->shape[1], h, w);
    if (!t) return NULL;
    for (int64_t bc = 0; bc < z->shape[0] * z->shape[1]; bc++)
        for (int64_t y = 0; y < h; y++)
            memcpy(lt_f32(t) + (bc * h + y) * w, lt_f32(z) + (bc * z->shape[2] + y0 + y) * z->shape[3] + x0,
                   (size_t)w * sizeof(float));
    return t;
}

/* Weight of a tile pixel: ramps from the tile edge over `ramp` pixels, except at image borders. */
static float ramp_weight(int64_t i, int64_t n, int64_t ramp, int at_start, int at_end)
{
    float w = 1.0f;
    if (!at_start && i < ramp) w = LDM_MIN(w, (float)(i + 1) / (float)(ramp + 1));
    if (!at_end && n - 1 - i < ramp) w = LDM_MIN(w, (float)(n - i) / (float)(ramp + 1));
    return w;
}

static void accumulate(const ldm_tensor *tile, int64_t oy, int64_t ox, int64_t ramp, int top, int bottom, int left,
                       int right, ldm_tensor *acc, float *weight)
{
    int64_t B = tile->shape[0], C = tile->shape[1], h = tile->shape[2], w = tile->shape[3];
    int64_t H = acc->shape[2], W = acc->shape[3];
    for (int64_t y = 0; y < h; y++) {
        float wy = ramp_weight(y, h, ramp, top, bottom);
        for (int64_t x = 0; x < w; x++) {
            float wt = wy * ramp_weight(x, w, ramp, left, right);
            weight[(oy + y) * W + ox + x] += wt;
            for (int64_t bc = 0; bc < B * C; bc++)
                lt_f32(acc)[(bc * H + oy + y) * W + ox + x] += wt * lt_f32(tile)[(bc * h + y) * w + x];
        }
    }
}

static ldm_status decode_tiled(ldm_model *m, struct ldm_autoencoder *ae, const ldm_tensor *z, int tile,
                               ldm_tensor **image)
{
    int f = lae_factor(ae->net);
    int64_t h = z->shape[2], w = z->shape[3], overlap = tile / 4, stride = tile - overlap;
    int64_t H = h * f, W = w * f;
    ldm_tensor *acc = lt_new_f32_4d(z->shape[0], lae_out_channels(ae->net), H, W);
    float *weight = ldm_calloc((size_t)(H * W), sizeof(float));
    ldm_status st = (acc && weight) ? LDM_OK : LDM_ERR_OUT_OF_MEMORY;
    for (int64_t y0 = 0; st == LDM_OK && y0 < h; y0 += stride) {
        int64_t ty = LDM_MIN((int64_t)tile, h - y0);
        for (int64_t x0 = 0; st == LDM_OK && x0 < w; x0 += stride) {
            int64_t tx = LDM_MIN((int64_t)tile, w - x0);
            ldm_tensor *part = crop(z, y0, x0, ty, tx), *pix = NULL;
            st = part ? lae_decode(ae->net, &m->ctx, part, &pix) : LDM_ERR_OUT_OF_MEMORY;
            if (st == LDM_OK)
                accumulate(pix, y0 * f, x0 * f, overlap * f, y0 == 0, y0 + ty >= h, x0 == 0, x0 + tx >= w, acc, weight);
            ldm_tensor_free(part);
            ldm_tensor_free(pix);
            if (x0 + tx >= w) break;
        }
        if (y0 + ty >= h) break;
    }
    if (st == LDM_OK) {
        for (int64_t bc = 0; bc < acc->shape[0] * acc->shape[1]; bc++)
            for (int64_t i = 0; i < H * W; i++) lt_f32(acc)[bc * H * W + i] /= weight[i];
        *image = acc;
        acc = NULL;
    }
    ldm_tensor_free(acc);
    ldm_free(weight);
    return st;
}

ldm_status lp_decode(ldm_model *m, const ldm_tensor *z, int tile, ldm_tensor **image)
{
    struct ldm_autoencoder *ae;
    LDM_TRY(lt_check(z, "decode: z", LDM_F32, 4));
    LDM_TRY(lm_autoencoder(m, &ae));
    ldm_tensor *scaled = lt_clone(z);
    if (!scaled) return LDM_ERR_OUT_OF_MEMORY;
    float inv = (float)(1.0 / m->desc.scale_factor); /* decode_first_stage: z / scale_factor */
    for (int64_t i = 0, n = lt_numel(scaled); i < n; i++) lt_f32(scaled)[i] *= inv;
    int64_t h = z->shape[2], w = z->shape[3];
    if (tile <= 0 && h * w > LP_AUTO_TILE_MAX_PIXELS) tile = LP_AUTO_TILE;
    ldm_status st;
    if (tile > 0 && (h > tile || w > tile)) st = decode_tiled(m, ae, scaled, LDM_MAX(tile, 8), image);
    else st = lae_decode(ae->net, &m->ctx, scaled, image);
    ldm_tensor_free(scaled);
    return st;
}
