/* autoencoder.c - AutoencoderKL / VQModelInterface wrapper around the Encoder and Decoder:
 * quant_conv, post_quant_conv, the VQ codebook lookup and the Gaussian posterior split. */
#include "autoencoder.h"

#include "ae_coder.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* Channel counts beyond this are certainly a broken config (and would overflow int products). */
#define AE_MAX_CHANNELS (1 << 16)

struct lae {
    ld_autoencoder d;
    laec enc, dec;
    laeb_conv quant_conv, post_quant_conv;
    float *codebook;   /* VQ: quantize.embedding.weight [n_embed, embed_dim] */
    double *code_norm; /* VQ: ||e_j||^2 per codebook row */
};

/* ---------------------------------------------------------------- creation */

static ldm_status check_positive(const char *what, int v, int max)
{
    if (v < 1 || v > max)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "autoencoder config: %s = %d outside 1..%d", what, v, max);
    return LDM_OK;
}

static ldm_status validate_desc(const ld_autoencoder *d)
{
    LDM_TRY(check_positive("number of levels (len(ch_mult))", d->n_levels, LD_MAX_LEVELS));
    LDM_TRY(check_positive("ch", d->ch, AE_MAX_CHANNELS));
    for (int i = 0; i < d->n_levels; i++) {
        char what[32];
        snprintf(what, sizeof what, "ch_mult[%d]", i);
        LDM_TRY(check_positive(what, d->ch_mult[i], AE_MAX_CHANNELS / d->ch));
    }
    LDM_TRY(check_positive("in_channels", d->in_channels, AE_MAX_CHANNELS));
    LDM_TRY(check_positive("out_ch", d->out_ch, AE_MAX_CHANNELS));
    LDM_TRY(check_positive("z_channels", d->z_channels, AE_MAX_CHANNELS));
    LDM_TRY(check_positive("embed_dim", d->embed_dim, AE_MAX_CHANNELS));
    if (d->num_res_blocks < 0 || d->num_res_blocks > 1000)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "autoencoder config: num_res_blocks = %d outside 0..1000",
                        d->num_res_blocks);
    if (d->resolution < 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "autoencoder config: resolution = %d is negative", d->resolution);
    if (d->n_attn_resolutions < 0 || d->n_attn_resolutions > LD_MAX_LEVELS)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "autoencoder config: %d attn_resolutions", d->n_attn_resolutions);
    if (d->is_vq) {
        LDM_TRY(check_positive("n_embed", d->n_embed, INT_MAX));
        /* VQModel's quant_conv takes z_channels inputs: a double_z encoder cannot feed it. */
        if (d->double_z) return ldm_fail(LDM_ERR_UNSUPPORTED, "autoencoder config: VQ first stage with double_z true");
    } else if (!d->double_z) {
        return ldm_fail(LDM_ERR_UNSUPPORTED, "autoencoder config: AutoencoderKL needs double_z true");
    }
    return LDM_OK;
}

static ldm_status load_codebook(lae *ae, const lw_store *s, const char *prefix)
{
    const ld_autoencoder *d = &ae->d;
    LDM_TRY(lw_get_f32f(s, 2, (int64_t[]){d->n_embed, d->embed_dim}, &ae->codebook, "%squantize.embedding.weight",
                        prefix));
    ae->code_norm = ldm_malloc((size_t)d->n_embed * sizeof *ae->code_norm);
    if (!ae->code_norm) return ldm_alloc_failure_status();
    for (int j = 0; j < d->n_embed; j++) {
        double n = 0;
        for (int e = 0; e < d->embed_dim; e++) {
            double v = ae->codebook[(size_t)j * (size_t)d->embed_dim + (size_t)e];
            n += v * v;
        }
        ae->code_norm[j] = n;
    }
    return LDM_OK;
}

static ldm_status load_parts(lae *ae, const lw_store *s, const char *prefix)
{
    const ld_autoencoder *d = &ae->d;
    char name[512];
    int n = snprintf(name, sizeof name, "%sencoder", prefix);
    if (n < 0 || (size_t)n >= sizeof name) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "autoencoder: prefix too long");
    LDM_TRY(laec_encoder_load(&ae->enc, d, s, name));
    snprintf(name, sizeof name, "%sdecoder", prefix);
    LDM_TRY(laec_decoder_load(&ae->dec, d, s, name));
    int q_in = d->is_vq ? d->z_channels : 2 * d->z_channels;
    int q_out = d->is_vq ? d->embed_dim : 2 * d->embed_dim;
    snprintf(name, sizeof name, "%squant_conv", prefix);
    LDM_TRY(laeb_conv_load(&ae->quant_conv, s, name, q_in, q_out, 1, 1));
    snprintf(name, sizeof name, "%spost_quant_conv", prefix);
    LDM_TRY(laeb_conv_load(&ae->post_quant_conv, s, name, d->embed_dim, d->z_channels, 1, 1));
    if (d->is_vq) LDM_TRY(load_codebook(ae, s, prefix));
    return LDM_OK;
}

ldm_status lae_create(const ld_autoencoder *d, const lw_store *s, const char *prefix, lae **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lae_create: NULL output");
    *out = NULL;
    if (!d || !s) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lae_create: NULL description or store");
    if (!prefix) prefix = "";
    LDM_TRY(validate_desc(d));
    lae *ae = ldm_calloc(1, sizeof *ae);
    if (!ae) return ldm_alloc_failure_status();
    ae->d = *d;
    ldm_status st = load_parts(ae, s, prefix);
    if (st != LDM_OK) {
        lae_free(ae);
        return ldm_fail_context(st, "loading the %s autoencoder: ", d->is_vq ? "VQ" : "KL");
    }
    *out = ae;
    return LDM_OK;
}

void lae_free(lae *ae)
{
    if (!ae) return;
    laec_free(&ae->enc);
    laec_free(&ae->dec);
    laeb_conv_free(&ae->quant_conv);
    laeb_conv_free(&ae->post_quant_conv);
    ldm_free(ae->codebook);
    ldm_free(ae->code_norm);
    ldm_free(ae);
}

int lae_is_vq(const lae *ae) { return ae->d.is_vq; }
int lae_factor(const lae *ae) { return 1 << (ae->d.n_levels - 1); }
int lae_latent_channels(const lae *ae) { return ae->d.embed_dim; }

/* ---------------------------------------------------------------- tensors <-> maps */

/* Checks an F32 [B,channels,H,W] input and views it as a map (no copy). */
static ldm_status view_input(const ldm_tensor *t, const char *what, int channels, laeb_map *m)
{
    char buf[96];
    LDM_TRY(lt_check(t, what, LDM_F32, 4));
    for (int i = 0; i < 4; i++)
        if (t->shape[i] < 1 || t->shape[i] > INT_MAX)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: bad shape %s", what, lt_shape_str(t, buf, sizeof buf));
    if (t->shape[1] != channels)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: expected [B,%d,H,W], found %s", what, channels,
                        lt_shape_str(t, buf, sizeof buf));
    m->d = lt_f32(t);
    m->b = (int)t->shape[0];
    m->c = (int)t->shape[1];
    m->h = (int)t->shape[2];
    m->w = (int)t->shape[3];
    return LDM_OK;
}

/* Hands the map's buffer to a new tensor (no copy); the map is emptied either way. */
static ldm_status map_to_tensor(laeb_map *m, ldm_tensor **out)
{
    ldm_tensor *t = ldm_calloc(1, sizeof *t);
    if (!t) {
        laeb_map_free(m);
        return ldm_alloc_failure_status();
    }
    t->dtype = LDM_F32;
    t->ndim = 4;
    t->shape[0] = m->b;
    t->shape[1] = m->c;
    t->shape[2] = m->h;
    t->shape[3] = m->w;
    t->data = m->d;
    t->owned = 1;
    m->d = NULL;
    *out = t;
    return LDM_OK;
}

/* ---------------------------------------------------------------- encode */

ldm_status lae_encode(lae *ae, const lctx *c, const ldm_tensor *x, ldm_tensor **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "autoencoder encode: NULL output");
    *out = NULL;
    if (!ae) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "autoencoder encode: NULL autoencoder");
    laeb_map xm, h, m;
    LDM_TRY(view_input(x, "autoencoder encode: x", ae->d.in_channels, &xm));
    LDM_TRY(laec_run(c, &ae->enc, &xm, &h));
    ldm_status st = laeb_conv_run(c, &ae->quant_conv, &h, &m);
    laeb_map_free(&h);
    if (st != LDM_OK) return st;
    return map_to_tensor(&m, out);
}

/* ---------------------------------------------------------------- VQ codebook lookup */

typedef struct vq_job {
    const lae *ae;
    const laeb_map *h;
    float *quant;   /* may be NULL */
    int64_t *index; /* may be NULL */
    size_t n_pos;   /* B*h*w */
    int n_tasks;
} vq_job;

/* Nearest codebook row of the vector at (b, s): argmin_j ||v||^2 + ||e_j||^2 - 2 v.e_j, the
 * first minimum winning (torch.argmin). Distances in double: the reference's float32 distances
 * are no closer to the truth, and ties closer than float rounding are not resolvable anyway. */
static int vq_nearest(const lae *ae, const float *v, size_t stride)
{
    int E = ae->d.embed_dim;
    double vn = 0;
    for (int e = 0; e < E; e++) vn += (double)v[(size_t)e * stride] * v[(size_t)e * stride];
    int best = 0;
    double best_d = INFINITY;
    for (int j = 0; j < ae->d.n_embed; j++) {
        const float *row = ae->codebook + (size_t)j * (size_t)E;
        double dot = 0;
        for (int e = 0; e < E; e++) dot += (double)v[(size_t)e * stride] * row[e];
        double dist = vn + ae->code_norm[j] - 2.0 * dot;
        if (dist < best_d) {
            best_d = dist;
            best = j;
        }
    }
    return best;
}

static void vq_task(void *arg, int task)
{
    const vq_job *job = arg;
    const laeb_map *h = job->h;
    size_t hw = (size_t)h->h * (size_t)h->w, E = (size_t)h->c;
    size_t lo = job->n_pos * (size_t)task / (size_t)job->n_tasks;
    size_t hi = job->n_pos * (size_t)(task + 1) / (size_t)job->n_tasks;
    for (size_t p = lo; p < hi; p++) {
        size_t base = (p / hw) * E * hw + p % hw; /* channel 0 of position p in NCHW */
        const float *v = h->d + base;
        int j = vq_nearest(job->ae, v, hw);
        if (job->index) job->index[p] = j;
        if (!job->quant) continue;
        const float *row = job->ae->codebook + (size_t)j * E;
        /* Straight-through estimator z + (z_q - z): not bit-identical to z_q. */
        for (size_t e = 0; e < E; e++) job->quant[base + e * hw] = v[e * hw] + (row[e] - v[e * hw]);
    }
}

static void vq_run(const lae *ae, const lctx *c, const laeb_map *h, float *quant, int64_t *index)
{
    vq_job job = {ae, h, quant, index, (size_t)h->b * (size_t)h->h * (size_t)h->w, 1};
    size_t tasks = (size_t)lctx_threads(c) * 4;
    job.n_tasks = (int)(tasks < job.n_pos ? tasks : job.n_pos);
    lpool_run(c ? c->pool : NULL, job.n_tasks, vq_task, &job);
}

static ldm_status require_vq(const lae *ae, const char *op)
{
    if (!ae) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "autoencoder %s: NULL autoencoder", op);
    if (!ae->d.is_vq)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "autoencoder %s: only VQ autoencoders have a codebook (this is KL)",
                        op);
    return LDM_OK;
}

ldm_status lae_quantize(lae *ae, const lctx *c, const ldm_tensor *h, ldm_tensor **quant, ldm_tensor **indices)
{
    if (quant) *quant = NULL;
    if (indices) *indices = NULL;
    LDM_TRY(require_vq(ae, "quantize"));
    laeb_map hm;
    LDM_TRY(view_input(h, "autoencoder quantize: h", ae->d.embed_dim, &hm));
    ldm_tensor *q = quant ? lt_new_f32(4, h->shape) : NULL;
    int64_t ishape[3] = {h->shape[0], h->shape[2], h->shape[3]};
    ldm_tensor *ix = indices ? lt_new_i64(3, ishape) : NULL;
    if ((quant && !q) || (indices && !ix)) {
        ldm_tensor_free(q);
        ldm_tensor_free(ix);
        return ldm_alloc_failure_status();
    }
    vq_run(ae, c, &hm, q ? lt_f32(q) : NULL, ix ? lt_i64(ix) : NULL);
    if (quant) *quant = q;
    if (indices) *indices = ix;
    return LDM_OK;
}

/* ---------------------------------------------------------------- decode */

static ldm_status decode_map(lae *ae, const lctx *c, const laeb_map *z, ldm_tensor **image)
{
    laeb_map p, img;
    LDM_TRY(laeb_conv_run(c, &ae->post_quant_conv, z, &p));
    ldm_status st = laec_run(c, &ae->dec, &p, &img);
    laeb_map_free(&p);
    if (st != LDM_OK) return st;
    return map_to_tensor(&img, image);
}

ldm_status lae_decode(lae *ae, const lctx *c, const ldm_tensor *z, ldm_tensor **image)
{
    if (!image) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "autoencoder decode: NULL output");
    *image = NULL;
    if (!ae) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "autoencoder decode: NULL autoencoder");
    laeb_map zm, q;
    LDM_TRY(view_input(z, "autoencoder decode: z", ae->d.embed_dim, &zm));
    if (!ae->d.is_vq) return decode_map(ae, c, &zm, image);
    /* VQModelInterface.decode goes through the quantizer first. */
    LDM_TRY(laeb_map_alloc(&q, zm.b, zm.c, zm.h, zm.w));
    vq_run(ae, c, &zm, q.d, NULL);
    ldm_status st = decode_map(ae, c, &q, image);
    laeb_map_free(&q);
    return st;
}

ldm_status lae_decode_unquantized(lae *ae, const lctx *c, const ldm_tensor *z, ldm_tensor **image)
{
    if (!image) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "autoencoder decode_unquantized: NULL output");
    *image = NULL;
    LDM_TRY(require_vq(ae, "decode_unquantized"));
    laeb_map zm;
    LDM_TRY(view_input(z, "autoencoder decode: z", ae->d.embed_dim, &zm));
    return decode_map(ae, c, &zm, image);
}

/* ---------------------------------------------------------------- posterior */

static ldm_status new_half(const ldm_tensor *moments, ldm_tensor **t)
{
    int64_t shape[4] = {moments->shape[0], moments->shape[1] / 2, moments->shape[2], moments->shape[3]};
    *t = lt_new_f32(4, shape);
    return *t ? LDM_OK : ldm_alloc_failure_status();
}

static ldm_status posterior_alloc(const ldm_tensor *m, ldm_tensor **mean, ldm_tensor **logvar, ldm_tensor **std)
{
    if (mean) LDM_TRY(new_half(m, mean));
    if (logvar) LDM_TRY(new_half(m, logvar));
    if (std) LDM_TRY(new_half(m, std));
    return LDM_OK;
}

/* DiagonalGaussianDistribution: mean, logvar = chunk(moments, 2, dim=1); clamp; std. */
static void posterior_fill(const ldm_tensor *m, ldm_tensor *mean, ldm_tensor *logvar, ldm_tensor *std)
{
    size_t half = (size_t)(m->shape[1] / 2) * (size_t)m->shape[2] * (size_t)m->shape[3];
    for (int64_t b = 0; b < m->shape[0]; b++) {
        const float *src = lt_f32(m) + (size_t)b * 2 * half;
        size_t off = (size_t)b * half;
        for (size_t i = 0; i < half; i++) {
            float lv = src[half + i];
            lv = lv < -30.0f ? -30.0f : (lv > 20.0f ? 20.0f : lv);
            if (mean) lt_f32(mean)[off + i] = src[i];
            if (logvar) lt_f32(logvar)[off + i] = lv;
            if (std) lt_f32(std)[off + i] = expf(0.5f * lv);
        }
    }
}

ldm_status lae_posterior_split(const ldm_tensor *moments, ldm_tensor **mean, ldm_tensor **logvar, ldm_tensor **std)
{
    char buf[96];
    if (mean) *mean = NULL;
    if (logvar) *logvar = NULL;
    if (std) *std = NULL;
    LDM_TRY(lt_check(moments, "posterior: moments", LDM_F32, 4));
    if (moments->shape[1] < 2 || moments->shape[1] % 2 != 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "posterior: moments need an even channel count [B,2E,h,w], found %s",
                        lt_shape_str(moments, buf, sizeof buf));
    ldm_tensor *t_mean = NULL, *t_logvar = NULL, *t_std = NULL;
    ldm_status st = posterior_alloc(moments, mean ? &t_mean : NULL, logvar ? &t_logvar : NULL, std ? &t_std : NULL);
    if (st != LDM_OK) {
        ldm_tensor_free(t_mean);
        ldm_tensor_free(t_logvar);
        ldm_tensor_free(t_std);
        return st;
    }
    posterior_fill(moments, t_mean, t_logvar, t_std);
    if (mean) *mean = t_mean;
    if (logvar) *logvar = t_logvar;
    if (std) *std = t_std;
    return LDM_OK;
}
