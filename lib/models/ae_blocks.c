/* ae_blocks.c - autoencoder building blocks (see ae_blocks.h). */
#include "ae_blocks.h"

#include "../kernels/kernels.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define AE_GROUPS 32
#define AE_EPS 1e-6f

/* ---------------------------------------------------------------- feature maps */

/* ---------------------------------------------------------------- map buffer pool */

#define AE_POOL 8
/* Maps from this size on ask for transparent huge pages: a 512x512 TAESD decode first-touches
 * about 200 MB of fresh maps, 50 000 page faults that took 7-20 % of its CPU time (perf). */
#define AE_HUGE_MIN ((size_t)8 << 20)

typedef struct map_pool {
    int active;
    void *p[AE_POOL];
    size_t bytes[AE_POOL];
} map_pool;

static _Thread_local map_pool pool;

void laeb_pool_begin(void)
{
    pool.active = !lk_low_memory();
}

void laeb_pool_end(void)
{
    for (int i = 0; i < AE_POOL; i++) {
        ldm_free(pool.p[i]);
        pool.p[i] = NULL;
    }
    pool.active = 0;
}

/* A kept buffer of `bytes` to twice that (the smallest such: a map handed out, e.g. the decoded
 * image, may outlive the pass, so it must not sit in a much larger buffer), or NULL after
 * dropping the kept buffers smaller than the request. */
static void *pool_take(size_t bytes, size_t *cap)
{
    int best = -1;
    for (int i = 0; i < AE_POOL; i++)
        if (pool.p[i] && pool.bytes[i] >= bytes && pool.bytes[i] / 2 <= bytes &&
            (best < 0 || pool.bytes[i] < pool.bytes[best]))
            best = i;
    if (best >= 0) {
        void *p = pool.p[best];
        *cap = pool.bytes[best];
        pool.p[best] = NULL;
        return p;
    }
    for (int i = 0; i < AE_POOL; i++)
        if (pool.p[i] && pool.bytes[i] < bytes) {
            ldm_free(pool.p[i]);
            pool.p[i] = NULL;
        }
    return NULL;
}

static void pool_give(void *p, size_t cap)
{
    if (pool.active && cap)
        for (int i = 0; i < AE_POOL; i++)
            if (!pool.p[i]) {
                pool.p[i] = p;
                pool.bytes[i] = cap;
                return;
            }
    ldm_free(p);
}

ldm_status laeb_map_alloc(laeb_map *m, int b, int c, int h, int w)
{
    memset(m, 0, sizeof *m);
    if (b < 1 || c < 1 || h < 1 || w < 1)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "autoencoder: empty feature map [%d,%d,%d,%d]", b, c, h, w);
    size_t bc, hw, n, bytes;
    /* The kernels take b*c and h*w as int. */
    if (ldm_mul_size((size_t)b, (size_t)c, &bc) || bc > INT_MAX || ldm_mul_size((size_t)h, (size_t)w, &hw) ||
        hw > INT_MAX || ldm_mul_size(bc, hw, &n) || ldm_mul_size(n, sizeof(float), &bytes))
        return ldm_fail(LDM_ERR_LIMIT, "autoencoder: feature map [%d,%d,%d,%d] is too large", b, c, h, w);
    size_t cap = bytes;
    m->d = pool.active ? pool_take(bytes, &cap) : NULL;
    if (!m->d) {
        cap = bytes;
        m->d = ldm_malloc_aligned(bytes);
        if (m->d && bytes >= AE_HUGE_MIN) ldm_pages_prefer_huge(m->d, bytes);
    }
    if (!m->d)
        return ldm_fail_context(ldm_alloc_failure_status(), "autoencoder feature map [%d,%d,%d,%d]: ", b, c, h, w);
    m->b = b;
    m->c = c;
    m->h = h;
    m->w = w;
    m->cap = cap;
    return LDM_OK;
}

void laeb_map_free(laeb_map *m)
{
    pool_give(m->d, m->cap);
    memset(m, 0, sizeof *m);
}

size_t laeb_map_numel(const laeb_map *m) { return (size_t)m->b * (size_t)m->c * (size_t)m->h * (size_t)m->w; }

/* ---------------------------------------------------------------- convolution */

ldm_status laeb_conv_load(laeb_conv *cv, const lw_store *s, const char *name, int in, int out, int k, int has_bias)
{
    memset(cv, 0, sizeof *cv);
    cv->in = in;
    cv->out = out;
    cv->k = k;
    char wname[512];
    int n = snprintf(wname, sizeof wname, "%s.weight", name);
    if (n < 0 || (size_t)n >= sizeof wname) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "tensor name too long (%s)", name);
    LDM_TRY(lnw_get(s, wname, 4, (int64_t[]){out, in, k, k}, &cv->w));
    if (has_bias) {
        ldm_status st = lw_get_f32f(s, 1, (int64_t[]){out}, &cv->bias, "%s.bias", name);
        if (st != LDM_OK) {
            laeb_conv_free(cv);
            return st;
        }
    }
    return LDM_OK;
}

void laeb_conv_free(laeb_conv *cv)
{
    lnw_free(&cv->w);
    ldm_free(cv->bias);
    cv->bias = NULL;
}

/* Any convolution of the autoencoder: the output map is allocated here. */
static ldm_status conv_apply(const lctx *c, const laeb_conv *cv, const laeb_map *x, int stride, int pad_tl, int pad_br,
                             laeb_map *y)
{
    memset(y, 0, sizeof *y);
    if (x->c != cv->in)
        return ldm_fail(LDM_ERR_INTERNAL, "autoencoder conv: expected %d input channels, found %d", cv->in, x->c);
    lk_conv2d_shape sh = {.batch = x->b, .in_ch = x->c, .in_h = x->h, .in_w = x->w, .out_ch = cv->out,
                          .k_h = cv->k, .k_w = cv->k, .stride = stride, .pad_top = pad_tl, .pad_left = pad_tl,
                          .pad_bottom = pad_br, .pad_right = pad_br};
    int oh = lk_conv2d_out_h(&sh), ow = lk_conv2d_out_w(&sh);
    if (oh < 1 || ow < 1)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "autoencoder: feature map %dx%d too small for a %dx%d convolution",
                        x->h, x->w, cv->k, cv->k);
    LDM_TRY(laeb_map_alloc(y, x->b, cv->out, oh, ow));
    ldm_status st = lk_conv2d_wt(c, &sh, x->d, cv->w.w, cv->bias, y->d);
    if (st != LDM_OK) laeb_map_free(y);
    return st;
}

ldm_status laeb_conv_run(const lctx *c, const laeb_conv *cv, const laeb_map *x, laeb_map *y)
{
    return conv_apply(c, cv, x, 1, cv->k / 2, cv->k / 2, y);
}

/* ---------------------------------------------------------------- GroupNorm */

ldm_status laeb_norm_load(laeb_norm *n, const lw_store *s, const char *name, int c)
{
    memset(n, 0, sizeof *n);
    n->c = c;
    if (c % AE_GROUPS != 0)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: GroupNorm(%d groups) needs a channel count divisible by %d, found %d",
                        name, AE_GROUPS, AE_GROUPS, c);
    LDM_TRY(lw_get_f32f(s, 1, (int64_t[]){c}, &n->gamma, "%s.weight", name));
    ldm_status st = lw_get_f32f(s, 1, (int64_t[]){c}, &n->beta, "%s.bias", name);
    if (st != LDM_OK) laeb_norm_free(n);
    return st;
}

void laeb_norm_free(laeb_norm *n)
{
    ldm_free(n->gamma);
    ldm_free(n->beta);
    n->gamma = n->beta = NULL;
}

void laeb_norm_run(const lctx *c, const laeb_norm *n, const laeb_map *x, int silu, float *y)
{
    if (silu)
        lk_group_norm_silu(c, x->d, x->b, x->c, x->h * x->w, AE_GROUPS, AE_EPS, n->gamma, n->beta, y);
    else
        lk_group_norm(c, x->d, x->b, x->c, x->h * x->w, AE_GROUPS, AE_EPS, n->gamma, n->beta, y);
}

/* ---------------------------------------------------------------- ResnetBlock */

/* Builds "<name>.<part>" for the sub-modules; fails cleanly on absurdly long prefixes. */
static ldm_status sub_name(char *buf, size_t cap, const char *name, const char *part)
{
    int n = snprintf(buf, cap, "%s.%s", name, part);
    if (n < 0 || (size_t)n >= cap) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "module name too long: %s.%s", name, part);
    return LDM_OK;
}

static ldm_status resblock_load_parts(laeb_resblock *r, const lw_store *s, const char *name)
{
    char sub[512];
    LDM_TRY(sub_name(sub, sizeof sub, name, "norm1"));
    LDM_TRY(laeb_norm_load(&r->norm1, s, sub, r->in));
    LDM_TRY(sub_name(sub, sizeof sub, name, "conv1"));
    LDM_TRY(laeb_conv_load(&r->conv1, s, sub, r->in, r->out, 3, 1));
    LDM_TRY(sub_name(sub, sizeof sub, name, "norm2"));
    LDM_TRY(laeb_norm_load(&r->norm2, s, sub, r->out));
    LDM_TRY(sub_name(sub, sizeof sub, name, "conv2"));
    LDM_TRY(laeb_conv_load(&r->conv2, s, sub, r->out, r->out, 3, 1));
    if (r->in != r->out) {
        LDM_TRY(sub_name(sub, sizeof sub, name, "nin_shortcut"));
        LDM_TRY(laeb_conv_load(&r->nin_shortcut, s, sub, r->in, r->out, 1, 1));
    }
    return LDM_OK;
}

ldm_status laeb_resblock_load(laeb_resblock *r, const lw_store *s, const char *name, int in, int out)
{
    memset(r, 0, sizeof *r);
    r->in = in;
    r->out = out;
    ldm_status st = resblock_load_parts(r, s, name);
    if (st != LDM_OK) laeb_resblock_free(r);
    return st;
}

void laeb_resblock_free(laeb_resblock *r)
{
    laeb_norm_free(&r->norm1);
    laeb_norm_free(&r->norm2);
    laeb_conv_free(&r->conv1);
    laeb_conv_free(&r->conv2);
    laeb_conv_free(&r->nin_shortcut);
}

/* y = conv2(norm2(h)) + shortcut, h = conv1(norm1(x)) given; h is freed. */
static ldm_status resblock_finish(const lctx *c, const laeb_resblock *r, laeb_map *h, laeb_map *y)
{
    laeb_norm_run(c, &r->norm2, h, 1, h->d);
    ldm_status st = laeb_conv_run(c, &r->conv2, h, y);
    laeb_map_free(h);
    return st;
}

/* Identity shortcut: x is still needed at the end, so the normalised input is a copy. */
static ldm_status resblock_identity(const lctx *c, const laeb_resblock *r, const laeb_map *x, laeb_map *y)
{
    laeb_map t, h;
    LDM_TRY(laeb_map_alloc(&t, x->b, x->c, x->h, x->w));
    laeb_norm_run(c, &r->norm1, x, 1, t.d);
    ldm_status st = laeb_conv_run(c, &r->conv1, &t, &h);
    laeb_map_free(&t);
    if (st == LDM_OK) st = resblock_finish(c, r, &h, y);
    if (st == LDM_OK) lk_add(y->d, x->d, laeb_map_numel(y));
    return st;
}

/* nin_shortcut: it runs first, so x itself can then hold the normalised input (no copy of the
 * block's widest map: at the first full-resolution block of a 1024x1024 decode that copy was
 * 1 GB of the peak). y = conv2 out + shortcut, the same sum in the same order as ever. */
static ldm_status resblock_projected(const lctx *c, const laeb_resblock *r, laeb_map *x, laeb_map *y)
{
    laeb_map s, h;
    LDM_TRY(laeb_conv_run(c, &r->nin_shortcut, x, &s));
    laeb_norm_run(c, &r->norm1, x, 1, x->d);
    ldm_status st = laeb_conv_run(c, &r->conv1, x, &h);
    laeb_map_free(x);
    if (st == LDM_OK) st = resblock_finish(c, r, &h, y);
    if (st == LDM_OK) lk_add(y->d, s.d, laeb_map_numel(y));
    laeb_map_free(&s);
    return st;
}

ldm_status laeb_resblock_run(const lctx *c, const laeb_resblock *r, laeb_map *x, laeb_map *y)
{
    memset(y, 0, sizeof *y);
    ldm_status st = r->in == r->out ? resblock_identity(c, r, x, y) : resblock_projected(c, r, x, y);
    laeb_map_free(x);
    if (st != LDM_OK) laeb_map_free(y);
    return st;
}

/* ---------------------------------------------------------------- AttnBlock */

/* q, k, v are three [C,C,1,1] convs in the checkpoint; one stacked [3C,C] conv computes them in
 * a single pass (rows q, then k, then v). */
static ldm_status attn_load_qkv(laeb_attn *a, const lw_store *s, const char *name)
{
    static const char *const parts[3] = {"q", "k", "v"};
    size_t cc = (size_t)a->c * (size_t)a->c;
    a->qkv.in = a->c;
    a->qkv.out = 3 * a->c;
    a->qkv.k = 1;
    a->qkv.w.own = ldm_malloc_aligned(3 * cc * sizeof(float)); /* float32 whatever the storage */
    a->qkv.w.w = lk_wt_f32(a->qkv.w.own);
    a->qkv.bias = ldm_malloc_aligned(3 * (size_t)a->c * sizeof(float));
    if (!a->qkv.w.own || !a->qkv.bias) return ldm_fail_context(ldm_alloc_failure_status(), "%s: ", name);
    for (int i = 0; i < 3; i++) {
        char sub[512];
        laeb_conv one;
        LDM_TRY(sub_name(sub, sizeof sub, name, parts[i]));
        LDM_TRY(laeb_conv_load(&one, s, sub, a->c, a->c, 1, 1));
        lk_wt_read(one.w.w, 0, cc, a->qkv.w.own + (size_t)i * cc);
        memcpy(a->qkv.bias + (size_t)i * (size_t)a->c, one.bias, (size_t)a->c * sizeof(float));
        laeb_conv_free(&one);
    }
    return LDM_OK;
}

static ldm_status attn_load_parts(laeb_attn *a, const lw_store *s, const char *name)
{
    char sub[512];
    LDM_TRY(sub_name(sub, sizeof sub, name, "norm"));
    LDM_TRY(laeb_norm_load(&a->norm, s, sub, a->c));
    LDM_TRY(attn_load_qkv(a, s, name));
    LDM_TRY(sub_name(sub, sizeof sub, name, "proj_out"));
    return laeb_conv_load(&a->proj_out, s, sub, a->c, a->c, 1, 1);
}

ldm_status laeb_attn_load(laeb_attn *a, const lw_store *s, const char *name, int c)
{
    memset(a, 0, sizeof *a);
    a->c = c;
    ldm_status st = attn_load_parts(a, s, name);
    if (st != LDM_OK) laeb_attn_free(a);
    return st;
}

void laeb_attn_free(laeb_attn *a)
{
    laeb_norm_free(&a->norm);
    laeb_conv_free(&a->qkv);
    laeb_conv_free(&a->proj_out);
}

/* softmax(q^T k * C^-0.5) applied to v, reading the channels-first [B,3C,T] qkv map in place
 * through strided views (position stride 1, channel stride T); o is [B,C,T]. */
static ldm_status attn_core(const lctx *c, int C, const laeb_map *qkv, laeb_map *o)
{
    long T = (long)qkv->h * qkv->w;
    lk_view q = {qkv->d, 3L * C * T, 0, 1, T};
    lk_view k = q, v = q;
    k.p += (long)C * T;
    v.p += 2L * C * T;
    lk_view out = {o->d, (long)C * T, 0, 1, T};
    /* The reference multiplies by int(c)**(-0.5), a Python float cast to float32. */
    float scale = (float)pow((double)C, -0.5);
    return lk_attention(c, qkv->b, 1, (int)T, (int)T, C, q, k, v, out, scale, 0);
}

ldm_status laeb_attn_run(const lctx *c, const laeb_attn *a, laeb_map *x)
{
    laeb_map hn, qkv, o, proj;
    LDM_TRY(laeb_map_alloc(&hn, x->b, x->c, x->h, x->w));
    laeb_norm_run(c, &a->norm, x, 0, hn.d);
    ldm_status st = laeb_conv_run(c, &a->qkv, &hn, &qkv);
    laeb_map_free(&hn);
    if (st != LDM_OK) return st;
    st = laeb_map_alloc(&o, x->b, x->c, x->h, x->w);
    if (st == LDM_OK) st = attn_core(c, a->c, &qkv, &o);
    laeb_map_free(&qkv);
    if (st == LDM_OK) st = laeb_conv_run(c, &a->proj_out, &o, &proj);
    laeb_map_free(&o);
    if (st != LDM_OK) return st;
    lk_add(x->d, proj.d, laeb_map_numel(x));
    laeb_map_free(&proj);
    return LDM_OK;
}

/* ---------------------------------------------------------------- resampling */

ldm_status laeb_downsample_run(const lctx *c, const laeb_conv *cv, const laeb_map *x, laeb_map *y)
{
    memset(y, 0, sizeof *y);
    if (x->h < 2 || x->w < 2)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                        "autoencoder: feature map %dx%d is too small to downsample (input image too small)", x->h,
                        x->w);
    return conv_apply(c, cv, x, 2, 0, 1, y);
}

ldm_status laeb_upsample_run(const lctx *c, const laeb_conv *cv, const laeb_map *x, laeb_map *y)
{
    memset(y, 0, sizeof *y);
    if (x->h > INT_MAX / 2 || x->w > INT_MAX / 2)
        return ldm_fail(LDM_ERR_LIMIT, "autoencoder: feature map %dx%d too large to upsample", x->h, x->w);
    if (x->c != cv->in)
        return ldm_fail(LDM_ERR_INTERNAL, "autoencoder conv: expected %d input channels, found %d", cv->in, x->c);
    /* nearest 2x folded into the convolution: the upsampled map (the largest tensor of a decode)
     * is never stored */
    int p = cv->k / 2;
    lk_conv2d_shape sh = {.batch = x->b, .in_ch = x->c, .in_h = 2 * x->h, .in_w = 2 * x->w, .out_ch = cv->out,
                          .k_h = cv->k, .k_w = cv->k, .stride = 1, .pad_top = p, .pad_left = p, .pad_bottom = p,
                          .pad_right = p};
    LDM_TRY(laeb_map_alloc(y, x->b, cv->out, lk_conv2d_out_h(&sh), lk_conv2d_out_w(&sh)));
    ldm_status st = lk_conv2d_up2(c, &sh, x->d, cv->w.w, cv->bias, y->d);
    if (st != LDM_OK) laeb_map_free(y);
    return st;
}
