/* decode.c - first-stage decoding with scale_factor, whole or in overlapping tiles.
 *
 * The decoder's memory grows with the image (SD's 512x512 decode holds several 128x512x512
 * activations), so large latents are decoded in tiles that overlap by a quarter tile and are
 * blended with linear ramps. Tiling is an approximation: the decoder's mid-block attention is
 * global and its GroupNorms take statistics over the whole input, so each tile is normalised
 * with its own statistics and a tiled decode differs from the whole one everywhere, not only at
 * the seams (how much depends on the weights: trained VAEs have similar statistics across
 * large tiles, which is why the automatic tile is large). Only the blending itself is exact: for
 * a local decoder, tiles reassemble the whole decode (tested). A tile at least as large as the
 * latent decodes whole, bit for bit. */
#include "pipeline_internal.h"

#include "../models/autoencoder.h"

#include <string.h>

/* Latents up to this many pixels (128x128 = a 1024x1024 SD image, ~2 GB of decoder activations)
 * decode whole by default: tiling changes the result (see above), so it is kept for sizes whose
 * whole decode would need several GB. */
#define LP_AUTO_TILE_MAX_PIXELS (128 * 128)
#define LP_AUTO_TILE            64

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

/* Tile origins along one axis: every `stride`, the last one moved back so that it ends at the
 * border (full-size tiles decode better than a thin last strip). */
static int64_t tile_origin(int64_t i, int64_t n, int64_t tile, int64_t stride)
{
    return LDM_MIN(i * stride, LDM_MAX((int64_t)0, n - tile));
}

static int64_t tile_count(int64_t n, int64_t tile, int64_t stride)
{
    return n <= tile ? 1 : 1 + (n - tile + stride - 1) / stride;
}

ldm_status lp_decode_tiles(const lctx *c, const ldm_tensor *z, int tile, int factor, lp_tile_decoder decode, void *user,
                           ldm_tensor **image)
{
    int64_t h = z->shape[2], w = z->shape[3], overlap = tile / 4, stride = tile - overlap, f = factor;
    int64_t H = h * f, W = w * f, ny = tile_count(h, tile, stride), nx = tile_count(w, tile, stride);
    ldm_tensor *acc = NULL;
    float *weight = ldm_calloc((size_t)(H * W), sizeof(float));
    ldm_status st = weight ? LDM_OK : ldm_alloc_failure_status();
    for (int64_t iy = 0; st == LDM_OK && iy < ny; iy++) {
        int64_t y0 = tile_origin(iy, h, tile, stride), ty = LDM_MIN((int64_t)tile, h - y0);
        for (int64_t ix = 0; st == LDM_OK && ix < nx; ix++) {
            int64_t x0 = tile_origin(ix, w, tile, stride), tx = LDM_MIN((int64_t)tile, w - x0);
            if (lctx_cancelled(c)) {
                st = ldm_fail(LDM_CANCELLED, "cancelled while decoding tile (%lld,%lld)", (long long)iy, (long long)ix);
                break;
            }
            ldm_tensor *part = crop(z, y0, x0, ty, tx), *pix = NULL;
            st = part ? decode(user, part, &pix) : LDM_ERR_OUT_OF_MEMORY;
            if (st == LDM_OK &&
                (pix->ndim != 4 || pix->shape[0] != z->shape[0] || pix->shape[2] != ty * f || pix->shape[3] != tx * f))
                st = ldm_fail(LDM_ERR_INTERNAL, "tiled decode: a tile decoded to an unexpected shape");
            if (st == LDM_OK && !acc && !(acc = lt_new_f32_4d(z->shape[0], pix->shape[1], H, W)))
                st = LDM_ERR_OUT_OF_MEMORY;
            if (st == LDM_OK)
                accumulate(pix, y0 * f, x0 * f, overlap * f, iy == 0, iy == ny - 1, ix == 0, ix == nx - 1, acc, weight);
            ldm_tensor_free(part);
            ldm_tensor_free(pix);
        }
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

typedef struct first_stage_tiles {
    ldm_model *m;
    struct ldm_autoencoder *ae;
} first_stage_tiles;

static ldm_status decode_one(void *user, const ldm_tensor *z, ldm_tensor **pixels)
{
    first_stage_tiles *t = user;
    return lae_decode(t->ae->net, &t->m->ctx, z, pixels);
}

ldm_status lp_decode(ldm_model *m, const ldm_tensor *z, int tile, ldm_tensor **image)
{
    struct ldm_autoencoder *ae;
    LDM_TRY(lt_check(z, "decode: z", LDM_F32, 4));
    if (m->vae_in_use == LDM_VAE_TINY) return lm_tiny_decode(m, z, tile, image); /* no scale_factor */
    LDM_TRY(lm_autoencoder(m, &ae));
    ldm_tensor *scaled = lt_clone(z);
    if (!scaled) return ldm_alloc_failure_status();
    /* decode_first_stage: z = 1. / self.scale_factor * z, the factor rounded to float32 first as
     * torch does for a Python scalar times a float32 tensor */
    float inv = (float)(1.0 / m->desc.scale_factor);
    for (int64_t i = 0, n = lt_numel(scaled); i < n; i++) lt_f32(scaled)[i] *= inv;
    int64_t h = z->shape[2], w = z->shape[3];
    if (tile == 0 && h * w > LP_AUTO_TILE_MAX_PIXELS) tile = LP_AUTO_TILE;
    ldm_status st;
    first_stage_tiles ft = {m, ae};
    if (tile > 0 && (h > tile || w > tile))
        st = lp_decode_tiles(&m->ctx, scaled, LDM_MAX(tile, 8), lae_factor(ae->net), decode_one, &ft, image);
    else
        st = lae_decode(ae->net, &m->ctx, scaled, image);
    ldm_tensor_free(scaled);
    return st;
}
