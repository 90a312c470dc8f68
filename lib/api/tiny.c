/* tiny.c - the tiny autoencoder (TAESD / TAESDXL) in the public API: a standalone handle, the
 * model's own (ldm_model_set_tiny_autoencoder) and the calls that choose between it and the full
 * first stage.
 *
 * The pipelines choose per call: ldm_generate and the two calls below set m->vae_in_use for
 * their duration, and lp_encode_latent / lp_decode, which every encode and decode of a pipeline
 * goes through (image-to-image, mask blending, SD inpainting's masked image, the final decode),
 * hand the work to lm_tiny_encode / lm_tiny_decode while it is LDM_VAE_TINY. */
#include "pipeline_internal.h"

#include "../kernels/kernels.h"
#include "../models/taesd.h"

#include <string.h>
#include <unistd.h>

struct ldm_tiny_autoencoder {
    ltae *net;
    lpool *pool;
    atomic_int cancel;
    lctx ctx;
    size_t max_alloc;
};

/* Latents up to this many pixels decode whole (a 1024x1024 image: about 1 GB of 64-channel
 * maps at the last level); larger ones in tiles, as the full decoder does. */
#define LT_AUTO_TILE_MAX_PIXELS (128 * 128)
#define LT_AUTO_TILE            64

/* ---------------------------------------------------------------- decoding whole or in tiles */

typedef struct tile_ctx {
    const ltae *net;
    const lctx *ctx;
} tile_ctx;

static ldm_status tile_decode(void *user, const ldm_tensor *z, ldm_tensor **pixels)
{
    const tile_ctx *t = user;
    return ltae_decode(t->net, t->ctx, z, pixels);
}

/* tile > 0: tiles of that many latent pixels when the latent is larger; 0: automatic (large
 * latents only); < 0: whole. */
static ldm_status decode_tiled(const ltae *net, const lctx *c, const ldm_tensor *z, int tile, ldm_tensor **image)
{
    LDM_TRY(lt_check(z, "tiny decode: z", LDM_F32, 4));
    int64_t h = z->shape[2], w = z->shape[3];
    if (tile == 0 && h * w > LT_AUTO_TILE_MAX_PIXELS) tile = LT_AUTO_TILE;
    tile_ctx t = {net, c};
    if (tile > 0 && (h > tile || w > tile) && ltae_has_decoder(net))
        return lp_decode_tiles(c, z, LDM_MAX(tile, 8), 8, tile_decode, &t, image);
    return ltae_decode(net, c, z, image);
}

/* ---------------------------------------------------------------- standalone handle */

ldm_status ldm_tiny_autoencoder_load(const char *path, const ldm_model_params *params, ldm_tiny_autoencoder **out)
{
    ldm_model_params p;
    if (!path || !out)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_tiny_autoencoder_load: path and out must not be NULL");
    *out = NULL;
    ldm_model_params_init(&p);
    if (params)
        LDM_TRY(ldm_params_read(params, &p, sizeof p, offsetof(ldm_model_params, n_threads), "ldm_model_params"));
    LM_CAP_SCOPE();
    ldm_alloc_set_cap(ldm_alloc_cap_within(ldm_alloc_get_cap(), p.max_alloc_bytes));
    ldm_tiny_autoencoder *t = ldm_calloc(1, sizeof *t);
    if (!t) return lw_alloc_status(sizeof *t);
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    int threads = p.n_threads > 0 ? p.n_threads : (online > 0 ? (int)LDM_MIN(online, 256) : 1);
    t->max_alloc = p.max_alloc_bytes;
    ldm_status st = ltae_open(path, ldm_alloc_get_cap(), &t->net);
    if (st == LDM_OK) st = (t->pool = lpool_create(threads)) ? LDM_OK : ldm_alloc_failure_status();
    if (st != LDM_OK) {
        ldm_tiny_autoencoder_free(t);
        return st;
    }
    lk_blas_init();
    t->ctx.pool = t->pool;
    t->ctx.cancel = &t->cancel;
    if (p.log_callback) {
        char msg[512];
        snprintf(msg, sizeof msg, "loaded tiny autoencoder %s (%s layout:%s%s, %d latent channels)", path,
                 ltae_layout(t->net), ltae_has_encoder(t->net) ? " encoder" : "",
                 ltae_has_decoder(t->net) ? " decoder" : "", ltae_latent_channels(t->net));
        p.log_callback(LDM_LOG_INFO, msg, p.log_user_data);
    }
    *out = t;
    return LDM_OK;
}

void ldm_tiny_autoencoder_free(ldm_tiny_autoencoder *tae)
{
    if (!tae) return;
    ltae_free(tae->net);
    lpool_free(tae->pool);
    ldm_free(tae);
}

int ldm_tiny_autoencoder_has_encoder(const ldm_tiny_autoencoder *tae)
{
    return tae && ltae_has_encoder(tae->net);
}
int ldm_tiny_autoencoder_has_decoder(const ldm_tiny_autoencoder *tae)
{
    return tae && ltae_has_decoder(tae->net);
}
int ldm_tiny_autoencoder_latent_channels(const ldm_tiny_autoencoder *tae)
{
    return tae ? ltae_latent_channels(tae->net) : 0;
}

/* A standalone call: arguments checked, the handle's cap for its duration, output checked. */
static ldm_status standalone(ldm_tiny_autoencoder *tae, const ldm_tensor *in, int decode, ldm_tensor **out,
                             const char *fn)
{
    if (!tae || !out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: tae and out must not be NULL", fn);
    *out = NULL;
    LM_CAP_SCOPE();
    ldm_alloc_set_cap(ldm_alloc_cap_within(ldm_alloc_get_cap(), tae->max_alloc));
    atomic_store(&tae->cancel, 0);
    LDM_TRY(lt_check_finite(in, fn));
    ldm_status st = decode ? decode_tiled(tae->net, &tae->ctx, in, 0, out) : ltae_encode(tae->net, &tae->ctx, in, out);
    if (st == LDM_OK) st = lt_check_finite(*out, fn);
    if (st != LDM_OK) {
        ldm_tensor_free(*out);
        *out = NULL;
    }
    return st;
}

ldm_status ldm_tiny_autoencoder_decode(ldm_tiny_autoencoder *tae, const ldm_tensor *z, ldm_tensor **image)
{
    return standalone(tae, z, 1, image, "ldm_tiny_autoencoder_decode");
}

ldm_status ldm_tiny_autoencoder_encode(ldm_tiny_autoencoder *tae, const ldm_tensor *x, ldm_tensor **z)
{
    return standalone(tae, x, 0, z, "ldm_tiny_autoencoder_encode");
}

/* ---------------------------------------------------------------- the model's */

void lm_tiny_release(ldm_model *m)
{
    if (m->tiny_enc != m->tiny_dec) ltae_free(m->tiny_enc);
    ltae_free(m->tiny_dec);
    m->tiny_enc = m->tiny_dec = NULL;
}

/* The model's first stage must share the tiny autoencoder's latent space: same channels, 8x. */
static ldm_status check_fits(const ldm_model *m, const ltae *t)
{
    const ld_autoencoder *fs = &m->desc.first_stage;
    if (!fs->present) return LDM_OK;
    int factor = fs->n_levels > 0 ? 1 << (fs->n_levels - 1) : 1;
    if (fs->embed_dim != ltae_latent_channels(t) || factor != 8)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                        "tiny autoencoder %s: %d latent channels at 8x, the model's first stage has %d at %dx "
                        "(TAESD serves the SD and SDXL latent spaces)",
                        ltae_path(t), ltae_latent_channels(t), fs->embed_dim, factor);
    return LDM_OK;
}

ldm_status ldm_model_set_tiny_autoencoder(ldm_model *model, const char *path)
{
    ltae *t = NULL;
    LM_BEGIN(model, "ldm_model_set_tiny_autoencoder");
    if (!path) {
        lm_tiny_release(model);
        return LDM_OK;
    }
    LDM_TRY(ltae_open(path, ldm_alloc_get_cap(), &t));
    ldm_status st = check_fits(model, t);
    if (st != LDM_OK) {
        ltae_free(t);
        return st;
    }
    ltae *old_dec = model->tiny_dec, *old_enc = model->tiny_enc;
    model->tiny_dec = ltae_has_decoder(t) ? t : old_dec;
    model->tiny_enc = ltae_has_encoder(t) ? t : old_enc;
    if (old_dec && old_dec != model->tiny_dec && old_dec != model->tiny_enc) ltae_free(old_dec);
    if (old_enc && old_enc != old_dec && old_enc != model->tiny_dec && old_enc != model->tiny_enc) ltae_free(old_enc);
    lm_log(model, LDM_LOG_INFO, "tiny autoencoder %s (%s layout:%s%s)", path, ltae_layout(t),
           ltae_has_encoder(t) ? " encoder" : "", ltae_has_decoder(t) ? " decoder" : "");
    return LDM_OK;
}

int ldm_model_has_tiny_decoder(const ldm_model *model)
{
    return model && model->tiny_dec;
}
int ldm_model_has_tiny_encoder(const ldm_model *model)
{
    return model && model->tiny_enc;
}

ldm_status lm_tiny_decode(ldm_model *m, const ldm_tensor *z, int tile, ldm_tensor **image)
{
    if (!m->tiny_dec)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                        "the tiny decoder was chosen but none is set (ldm_model_set_tiny_autoencoder)");
    return decode_tiled(m->tiny_dec, &m->ctx, z, tile, image);
}

ldm_status lm_tiny_encode(ldm_model *m, const ldm_tensor *x, ldm_tensor **z)
{
    if (!m->tiny_enc)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                        "the tiny encoder was chosen but none is set (ldm_model_set_tiny_autoencoder with an "
                        "encoder file)");
    return ltae_encode(m->tiny_enc, &m->ctx, x, z);
}

/* ---------------------------------------------------------------- choosing per call */

static ldm_status check_vae(int vae, const char *fn)
{
    if (vae != LDM_VAE_FULL && vae != LDM_VAE_TINY)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: vae %d is neither LDM_VAE_FULL nor LDM_VAE_TINY", fn, vae);
    return LDM_OK;
}

ldm_status ldm_model_decode_latent_with(ldm_model *model, const ldm_tensor *z, ldm_vae_choice vae, ldm_tensor **image)
{
    if (!image) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_decode_latent_with: image is NULL");
    *image = NULL;
    LM_BEGIN(model, "ldm_model_decode_latent_with");
    LDM_TRY(check_vae((int)vae, "ldm_model_decode_latent_with"));
    LDM_TRY(lt_check_finite(z, "ldm_model_decode_latent_with: z"));
    model->vae_in_use = (int)vae;
    ldm_status st = lp_decode(model, z, -1, image); /* whole, as ldm_model_decode_latent */
    model->vae_in_use = LDM_VAE_FULL;
    if (st == LDM_OK) st = lt_check_finite(*image, "ldm_model_decode_latent_with: the decoded image");
    if (st != LDM_OK) {
        ldm_tensor_free(*image);
        *image = NULL;
    }
    return st;
}

ldm_status ldm_model_encode_image(ldm_model *model, const ldm_tensor *x, ldm_vae_choice vae, uint64_t seed,
                                  ldm_tensor **z)
{
    if (!z) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_encode_image: z is NULL");
    *z = NULL;
    LM_BEGIN(model, "ldm_model_encode_image");
    LDM_TRY(check_vae((int)vae, "ldm_model_encode_image"));
    LDM_TRY(lt_check(x, "ldm_model_encode_image: x", LDM_F32, 4));
    LDM_TRY(lt_check_finite(x, "ldm_model_encode_image: x"));
    if (x->shape[1] != 3) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_encode_image: x must be [B,3,H,W]");
    model->vae_in_use = (int)vae;
    ldm_status st = lp_encode_latent(model, x, seed, z);
    model->vae_in_use = LDM_VAE_FULL;
    return st;
}
