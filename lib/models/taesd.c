/* taesd.c - TAESD / TAESDXL encoder and decoder (see taesd.h).
 *
 * Both networks are written as tables of taesd.py's Sequential: the module index of each
 * convolution, upsample and Block, so the checkpoint names follow from the index and the layout's
 * prefix/offset. Convolutions run on the shared kernels (Winograd for the 3x3 stride-1 ones; the
 * nearest 2x upsample is folded into the next convolution, so the largest map is never stored);
 * the ReLUs and the Block's residual add are the convolutions' epilogue (lk_conv2d_ep: fused into
 * the Winograd output transform, no pass over the 64-channel maps); the clamp and the range
 * changes are elementwise passes. */
#include "taesd.h"

#include "../kernels/kernels.h"
#include "ae_blocks.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define TAE_MAX_LAYERS 20
#define TAE_MAX_NAMES  (2 * 3 * 2 * TAE_MAX_LAYERS) /* 2 parts, 3 convs, weight + bias */
#define TAE_NAME_LEN   96

/* Channel counts in the tables: the width and the latent channels come from the file. */
enum { CH_WIDTH = -1, CH_LATENT = -2, CH_RGB = 3 };

typedef enum tkind {
    T_CONV,    /* 3x3 stride 1, padding 1 */
    T_DOWN,    /* 3x3 stride 2, padding 1, no bias */
    T_UP_CONV, /* nearest 2x (module index - 1), then 3x3 without bias (module index) */
    T_BLOCK    /* Block(n, n): relu(conv(relu(conv(relu(conv(x))))) + x) */
} tkind;

typedef struct tdef {
    tkind kind;
    int index; /* the module's index in taesd.py's Sequential */
    int in, out, bias, relu_after;
} tdef;

#define BLOCK(i)                                                                                                       \
    {                                                                                                                  \
        T_BLOCK, (i), CH_WIDTH, CH_WIDTH, 1, 0                                                                         \
    }
#define DOWN(i)                                                                                                        \
    {                                                                                                                  \
        T_DOWN, (i), CH_WIDTH, CH_WIDTH, 0, 0                                                                          \
    }
#define UP(i)                                                                                                          \
    {                                                                                                                  \
        T_UP_CONV, (i), CH_WIDTH, CH_WIDTH, 0, 0                                                                       \
    }

/* Encoder(): conv(3, 64), Block, then three times conv(stride 2, no bias) + 3 Blocks,
 * conv(64, latent). */
static const tdef encoder_defs[] = {
    {T_CONV, 0, CH_RGB, CH_WIDTH, 1, 0},
    BLOCK(1),
    DOWN(2),
    BLOCK(3),
    BLOCK(4),
    BLOCK(5),
    DOWN(6),
    BLOCK(7),
    BLOCK(8),
    BLOCK(9),
    DOWN(10),
    BLOCK(11),
    BLOCK(12),
    BLOCK(13),
    {T_CONV, 14, CH_WIDTH, CH_LATENT, 1, 0},
};

/* Decoder(): Clamp (module 0), conv(latent, 64), ReLU, 3 Blocks, then three times Upsample +
 * conv(no bias) + Blocks (3, 3, 1), conv(64, 3). */
static const tdef decoder_defs[] = {
    {T_CONV, 1, CH_LATENT, CH_WIDTH, 1, 1},
    BLOCK(3),
    BLOCK(4),
    BLOCK(5),
    UP(7),
    BLOCK(8),
    BLOCK(9),
    BLOCK(10),
    UP(12),
    BLOCK(13),
    BLOCK(14),
    BLOCK(15),
    UP(17),
    BLOCK(18),
    {T_CONV, 19, CH_WIDTH, CH_RGB, 1, 0},
};

typedef struct tlayer {
    tkind kind;
    int relu_after;
    laeb_conv conv[3]; /* T_BLOCK: conv.0, conv.2, conv.4; else conv[0] */
} tlayer;

typedef struct tpart {
    int present;
    const char *prefix; /* "", "encoder.", "decoder.layers.", ... */
    int offset;         /* added to taesd's module index to get the key's */
    tlayer layers[TAE_MAX_LAYERS];
    int n_layers;
} tpart;

struct ltae {
    lw_store *owned_store;
    const lw_store *store;
    const char *layout;
    int width, latent;
    tpart enc, dec;
    /* every tensor name the networks use, to report the ones a file has beyond them */
    char (*names)[TAE_NAME_LEN];
    int n_names;
};

/* ---------------------------------------------------------------- loading */

static int channels(const ltae *t, int code)
{
    return code == CH_WIDTH ? t->width : code == CH_LATENT ? t->latent : code;
}

static ldm_status remember(ltae *t, const char *name)
{
    size_t n = strlen(name);
    if (t->n_names >= TAE_MAX_NAMES || n >= TAE_NAME_LEN) return ldm_fail(LDM_ERR_INTERNAL, "taesd: name table full");
    memcpy(t->names[t->n_names++], name, n + 1);
    return LDM_OK;
}

static ldm_status load_conv(ltae *t, const tpart *p, int index, const char *sub, int in, int out, int bias,
                            laeb_conv *cv)
{
    char name[TAE_NAME_LEN - 8], full[TAE_NAME_LEN];
    snprintf(name, sizeof name, "%s%d%s", p->prefix, index + p->offset, sub);
    LDM_TRY(laeb_conv_load(cv, t->store, name, in, out, 3, bias));
    snprintf(full, sizeof full, "%s.weight", name);
    LDM_TRY(remember(t, full));
    if (!bias) return LDM_OK;
    snprintf(full, sizeof full, "%s.bias", name);
    return remember(t, full);
}

static ldm_status load_part(ltae *t, tpart *p, const tdef *defs, int n)
{
    for (int i = 0; i < n; i++) {
        tlayer *l = &p->layers[p->n_layers++];
        const tdef *d = &defs[i];
        int in = channels(t, d->in), out = channels(t, d->out);
        l->kind = d->kind;
        l->relu_after = d->relu_after;
        if (d->kind == T_BLOCK) {
            static const char *const subs[3] = {".conv.0", ".conv.2", ".conv.4"};
            for (int k = 0; k < 3; k++) LDM_TRY(load_conv(t, p, d->index, subs[k], in, out, 1, &l->conv[k]));
        } else {
            LDM_TRY(load_conv(t, p, d->index, "", in, out, d->bias, &l->conv[0]));
        }
    }
    return LDM_OK;
}

/* The shape [o, i, 3, 3] of the convolution that fixes the width (and latent channels). */
static ldm_status first_conv(const lw_store *s, const char *name, int64_t dims[2])
{
    const lw_tensor *w = lw_find(s, name);
    if (!w) return ldm_fail(LDM_ERR_NOT_FOUND, "%s: tensor %s missing", lw_path(s), name);
    if (w->ndim != 4 || w->shape[2] != 3 || w->shape[3] != 3 || w->shape[0] < 1 || w->shape[0] > 1024 ||
        w->shape[1] < 1 || w->shape[1] > 1024)
        return ldm_fail(LDM_ERR_FORMAT,
                        "%s: tensor %s: expected a 3x3 convolution [out,in,3,3] of at most 1024 channels", lw_path(s),
                        name);
    dims[0] = w->shape[0];
    dims[1] = w->shape[1];
    return LDM_OK;
}

static void find_layout(const lw_store *s, ltae *t)
{
    if (lw_has_prefix(s, "encoder.layers.") || lw_has_prefix(s, "decoder.layers.")) {
        t->layout = "diffusers AutoencoderTiny";
        t->enc = (tpart){.present = lw_has_prefix(s, "encoder.layers."), .prefix = "encoder.layers.", .offset = 0};
        t->dec = (tpart){.present = lw_has_prefix(s, "decoder.layers."), .prefix = "decoder.layers.", .offset = -1};
    } else if (lw_has_prefix(s, "encoder.") || lw_has_prefix(s, "decoder.")) {
        t->layout = "TAESD module";
        t->enc = (tpart){.present = lw_has_prefix(s, "encoder."), .prefix = "encoder.", .offset = 0};
        t->dec = (tpart){.present = lw_has_prefix(s, "decoder."), .prefix = "decoder.", .offset = 0};
    } else {
        t->layout = "taesd.py files";
        t->enc = (tpart){.present = lw_find(s, "0.weight") != NULL, .prefix = "", .offset = 0};
        t->dec = (tpart){
            .present = lw_find(s, "0.weight") == NULL && lw_find(s, "1.weight") != NULL, .prefix = "", .offset = 0};
    }
}

/* Width and latent channels from the encoder's first and last or the decoder's first conv. */
static ldm_status read_sizes(ltae *t)
{
    char name[TAE_NAME_LEN];
    int64_t a[2], b[2];
    t->width = t->latent = 0;
    if (t->dec.present) {
        snprintf(name, sizeof name, "%s%d.weight", t->dec.prefix, decoder_defs[0].index + t->dec.offset);
        LDM_TRY(first_conv(t->store, name, a));
        t->width = (int)a[0];
        t->latent = (int)a[1];
    }
    if (t->enc.present) {
        snprintf(name, sizeof name, "%s%d.weight", t->enc.prefix, encoder_defs[0].index);
        LDM_TRY(first_conv(t->store, name, a));
        int n = (int)LDM_ARRAY_LEN(encoder_defs);
        snprintf(name, sizeof name, "%s%d.weight", t->enc.prefix, encoder_defs[n - 1].index);
        LDM_TRY(first_conv(t->store, name, b));
        if (t->dec.present && (a[0] != t->width || b[0] != t->latent))
            return ldm_fail(LDM_ERR_FORMAT,
                            "%s: the encoder (width %lld, %lld latent channels) does not match the decoder (width "
                            "%d, %d latent channels)",
                            lw_path(t->store), (long long)a[0], (long long)b[0], t->width, t->latent);
        t->width = (int)a[0];
        t->latent = (int)b[0];
    }
    return LDM_OK;
}

static ldm_status check_no_extra(const ltae *t)
{
    for (size_t i = 0; i < lw_count(t->store); i++) {
        const char *name = lw_at(t->store, i)->name;
        int known = 0;
        for (int k = 0; k < t->n_names && !known; k++) known = strcmp(t->names[k], name) == 0;
        if (!known)
            return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s is not part of a tiny autoencoder (%s layout)",
                            lw_path(t->store), name, t->layout);
    }
    return LDM_OK;
}

ldm_status ltae_create(const lw_store *s, ltae **out)
{
    *out = NULL;
    ltae *t = ldm_calloc(1, sizeof *t);
    if (!t) return ldm_alloc_failure_status();
    t->store = s;
    find_layout(s, t);
    ldm_status st = LDM_OK;
    if (!t->enc.present && !t->dec.present)
        st = ldm_fail(LDM_ERR_FORMAT,
                      "%s: not a tiny autoencoder (TAESD): no encoder (0.weight, encoder.layers.0.weight) or decoder "
                      "(1.weight, decoder.layers.0.weight) found",
                      lw_path(s));
    if (st == LDM_OK) st = (t->names = ldm_calloc(TAE_MAX_NAMES, TAE_NAME_LEN)) ? LDM_OK : ldm_alloc_failure_status();
    if (st == LDM_OK) st = read_sizes(t);
    if (st == LDM_OK && t->enc.present) st = load_part(t, &t->enc, encoder_defs, (int)LDM_ARRAY_LEN(encoder_defs));
    if (st == LDM_OK && t->dec.present) st = load_part(t, &t->dec, decoder_defs, (int)LDM_ARRAY_LEN(decoder_defs));
    if (st == LDM_OK) st = check_no_extra(t);
    if (st != LDM_OK && t->enc.present + t->dec.present > 0)
        st = ldm_fail_context(st, "tiny autoencoder (read in the %s layout): ", t->layout);
    if (st != LDM_OK) {
        ltae_free(t);
        return st;
    }
    *out = t;
    return LDM_OK;
}

ldm_status ltae_open(const char *path, size_t max_alloc, ltae **out)
{
    lw_store *s = NULL;
    *out = NULL;
    LDM_TRY(lw_open(path, max_alloc, &s));
    ldm_status st = ltae_create(s, out);
    if (st != LDM_OK) {
        lw_close(s);
        return st;
    }
    (*out)->owned_store = s;
    return LDM_OK;
}

static void free_part(tpart *p)
{
    for (int i = 0; i < p->n_layers; i++)
        for (int k = 0; k < 3; k++) laeb_conv_free(&p->layers[i].conv[k]);
    p->n_layers = 0;
}

void ltae_free(ltae *t)
{
    if (!t) return;
    free_part(&t->enc);
    free_part(&t->dec);
    ldm_free(t->names);
    lw_close(t->owned_store);
    ldm_free(t);
}

int ltae_has_encoder(const ltae *t)
{
    return t && t->enc.present;
}
int ltae_has_decoder(const ltae *t)
{
    return t && t->dec.present;
}
int ltae_latent_channels(const ltae *t)
{
    return t ? t->latent : 0;
}
const char *ltae_layout(const ltae *t)
{
    return t ? t->layout : "";
}
const char *ltae_path(const ltae *t)
{
    return t ? lw_path(t->store) : "";
}

/* ---------------------------------------------------------------- elementwise passes */

#define TAE_CHUNK (1 << 16)

typedef enum { E_RELU, E_CLAMP, E_TO_PM1, E_FROM_PM1 } eop;

typedef struct ejob {
    float *y;
    const float *x;
    size_t n;
    eop op;
} ejob;

static void etask(void *arg, int task)
{
    const ejob *j = arg;
    size_t i0 = (size_t)task * TAE_CHUNK, i1 = LDM_MIN(j->n, i0 + TAE_CHUNK);
    float *y = j->y;
    const float *x = j->x;
    switch (j->op) {
    case E_RELU:
        for (size_t i = i0; i < i1; i++) y[i] = y[i] > 0.0f ? y[i] : 0.0f;
        break;
    case E_CLAMP: /* Clamp: torch.tanh(x / 3) * 3 */
        for (size_t i = i0; i < i1; i++) y[i] = tanhf(x[i] / 3.0f) * 3.0f;
        break;
    case E_TO_PM1: /* [0,1] -> [-1,1]: x.mul(2).sub(1) */
        for (size_t i = i0; i < i1; i++) y[i] = y[i] * 2.0f - 1.0f;
        break;
    case E_FROM_PM1: /* [-1,1] -> [0,1]: x.add(1).div(2) */
        for (size_t i = i0; i < i1; i++) y[i] = (x[i] + 1.0f) / 2.0f;
        break;
    }
}

static void elementwise(const lctx *c, eop op, float *y, const float *x, size_t n)
{
    ejob j = {.y = y, .x = x, .n = n, .op = op};
    int tasks = (int)((n + TAE_CHUNK - 1) / TAE_CHUNK);
    lpool *pool = lk_pool_for_bytes(c, 12.0 * (double)n);
    if (tasks <= 1 || !pool)
        for (int k = 0; k < tasks; k++) etask(&j, k);
    else
        lpool_run(pool, tasks, etask, &j);
}

/* ---------------------------------------------------------------- running */

/* y = relu?(conv(x) + res); res may be NULL. */
static ldm_status conv_run(const lctx *c, const laeb_conv *cv, const laeb_map *x, int stride, const float *res,
                           int relu, laeb_map *y)
{
    memset(y, 0, sizeof *y);
    lk_conv2d_shape sh = {.batch = x->b,
                          .in_ch = x->c,
                          .in_h = x->h,
                          .in_w = x->w,
                          .out_ch = cv->out,
                          .k_h = 3,
                          .k_w = 3,
                          .stride = stride,
                          .pad_top = 1,
                          .pad_left = 1,
                          .pad_bottom = 1,
                          .pad_right = 1};
    LDM_TRY(laeb_map_alloc(y, x->b, cv->out, lk_conv2d_out_h(&sh), lk_conv2d_out_w(&sh)));
    lk_conv_ep ep = {.res = res, .relu = relu};
    ldm_status st = lk_conv2d_ep(c, &sh, x->d, cv->w.w, cv->bias, y->d, &ep);
    if (st != LDM_OK) laeb_map_free(y);
    return st;
}

static ldm_status block_run(const lctx *c, const tlayer *l, const laeb_map *x, laeb_map *y)
{
    laeb_map a, b;
    LDM_TRY(conv_run(c, &l->conv[0], x, 1, NULL, 1, &a));
    ldm_status st = conv_run(c, &l->conv[1], &a, 1, NULL, 1, &b);
    laeb_map_free(&a);
    LDM_TRY(st);
    st = conv_run(c, &l->conv[2], &b, 1, x->d, 1, y); /* fuse(conv(x) + skip(x)), skip = identity */
    laeb_map_free(&b);
    return st;
}

static ldm_status layer_run(const lctx *c, const tlayer *l, const laeb_map *x, laeb_map *y)
{
    ldm_status st;
    switch (l->kind) {
    case T_BLOCK:
        return block_run(c, l, x, y);
    case T_DOWN:
        st = conv_run(c, &l->conv[0], x, 2, NULL, 0, y);
        break;
    case T_UP_CONV:
        st = laeb_upsample_run(c, &l->conv[0], x, y);
        break;
    default:
        return conv_run(c, &l->conv[0], x, 1, NULL, l->relu_after, y);
    }
    if (st == LDM_OK && l->relu_after) elementwise(c, E_RELU, y->d, NULL, laeb_map_numel(y));
    return st;
}

/* Runs the layers of `p` on x (consumed), leaving the result in *x. */
static ldm_status part_run(const lctx *c, const tpart *p, laeb_map *x)
{
    for (int i = 0; i < p->n_layers; i++) {
        if (lctx_cancelled(c)) return ldm_fail(LDM_CANCELLED, "cancelled in the tiny autoencoder (layer %d)", i);
        laeb_map y;
        ldm_status st = layer_run(c, &p->layers[i], x, &y);
        laeb_map_free(x);
        LDM_TRY(st);
        *x = y;
    }
    return LDM_OK;
}

static ldm_status check_input(const ldm_tensor *t, const char *what, int ch, int max_side)
{
    LDM_TRY(lt_check(t, what, LDM_F32, 4));
    if (t->shape[1] != ch || t->shape[0] < 1 || t->shape[2] < 1 || t->shape[3] < 1 || t->shape[0] > 4096 ||
        t->shape[2] > max_side || t->shape[3] > max_side) {
        char buf[96];
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: expected [B,%d,H,W] with sides 1..%d, found %s", what, ch,
                        max_side, lt_shape_str(t, buf, sizeof buf));
    }
    return LDM_OK;
}

/* Runs part p on the map made from `in` by `op`, then turns the result into a tensor. */
static ldm_status run_on(const lctx *c, const tpart *p, const ldm_tensor *in, eop op, int to_pm1, ldm_tensor **out)
{
    laeb_map x;
    *out = NULL;
    laeb_pool_begin();
    ldm_status st = laeb_map_alloc(&x, (int)in->shape[0], (int)in->shape[1], (int)in->shape[2], (int)in->shape[3]);
    if (st == LDM_OK) {
        elementwise(c, op, x.d, lt_f32(in), laeb_map_numel(&x));
        st = part_run(c, p, &x);
    }
    if (st == LDM_OK && to_pm1) elementwise(c, E_TO_PM1, x.d, NULL, laeb_map_numel(&x));
    if (st == LDM_OK) st = (*out = lt_new_f32_4d(x.b, x.c, x.h, x.w)) ? LDM_OK : ldm_alloc_failure_status();
    if (st == LDM_OK) memcpy(lt_f32(*out), x.d, laeb_map_numel(&x) * sizeof(float));
    laeb_map_free(&x);
    laeb_pool_end();
    return st;
}

ldm_status ltae_decode(const ltae *t, const lctx *c, const ldm_tensor *z, ldm_tensor **image)
{
    if (!ltae_has_decoder(t))
        return ldm_fail(LDM_ERR_NOT_FOUND, "%s: the tiny autoencoder has no decoder", ltae_path(t));
    LDM_TRY(check_input(z, "tiny autoencoder decode: z", t->latent, 16384 / 8));
    return run_on(c, &t->dec, z, E_CLAMP, 1, image);
}

ldm_status ltae_encode(const ltae *t, const lctx *c, const ldm_tensor *x, ldm_tensor **z)
{
    if (!ltae_has_encoder(t))
        return ldm_fail(LDM_ERR_NOT_FOUND, "%s: the tiny autoencoder has no encoder", ltae_path(t));
    LDM_TRY(check_input(x, "tiny autoencoder encode: x", 3, 16384));
    return run_on(c, &t->enc, x, E_FROM_PM1, 0, z);
}
