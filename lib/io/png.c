/* png.c - PNG input and output for the public image helpers (ldm_image_*), with libpng.
 *
 * Pixel conventions follow the CompVis scripts: images are read as PIL's convert("RGB") and
 * mapped to 2*(v/255)-1 in float32; outputs are 255*clamp((x+1)/2,0,1) truncated to uint8. libpng
 * reports errors by longjmp; every call below arms setjmp first, so a corrupt file becomes an
 * LDM_ERR_FORMAT with libpng's message instead of a crash, and libpng's allocations go through
 * ldm_malloc so the allocation cap applies to them too. */
#include "../core/tensor.h"
#include "weights.h"

#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define PNG_MAX_SIDE 16384u
#define PNG_MAX_PIXELS ((uint64_t)1 << 26) /* 64 Mpixel: 768 MB as float RGB */
#define PNG_MAX_CHUNK ((png_alloc_size_t)8 << 20)
#define PNG_MAX_CACHED_CHUNKS 64u

typedef struct {
    const char *path;
    char message[200];
    ldm_status alloc_status; /* set when one of libpng's allocations was refused */
} png_ctx;

/* ---------------------------------------------------------------- libpng callbacks */

static void on_error(png_structp png, png_const_charp msg)
{
    png_ctx *c = png_get_error_ptr(png);
    /* libpng's "Read Error" is a short read: say what it means for a PNG */
    if (msg && strcmp(msg, "Read Error") == 0) msg = "the file ends inside a chunk (truncated, or a chunk length "
                                                      "larger than the file)";
    snprintf(c->message, sizeof c->message, "%s", msg ? msg : "libpng error");
    png_longjmp(png, 1);
}

/* The library never prints: warnings (bad ancillary CRCs, unknown chunks) are dropped. */
static void on_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

static png_voidp on_malloc(png_structp png, png_alloc_size_t size)
{
    void *p = ldm_malloc(size);
    if (!p) ((png_ctx *)png_get_mem_ptr(png))->alloc_status = lw_alloc_status(size);
    return p;
}

static void on_free(png_structp png, png_voidp p)
{
    (void)png;
    ldm_free(p);
}

static ldm_status libpng_failure(const png_ctx *c, ldm_status format_status)
{
    if (c->alloc_status != LDM_OK) return ldm_fail_context(c->alloc_status, "%s: ", c->path);
    return ldm_fail(format_status, "%s: %s PNG: %s", c->path, format_status == LDM_ERR_IO ? "cannot write" : "corrupt",
                    c->message);
}

/* ---------------------------------------------------------------- decoding */

/* 8-bit pixels, `channels` interleaved samples per pixel (1 gray or index, 2 gray+alpha, 3 RGB,
 * 4 RGBA). */
typedef struct {
    uint32_t width, height;
    int channels;
    unsigned char *pixels;
} png_pixels;

/* Requests 8-bit samples. Palette images expand to RGB(A) unless `palette_indices` asks for
 * the raw indices (label maps); low-bit gray expands to 0..255 as PIL does. */
static void choose_transforms(png_structp png, png_infop info, int palette_indices)
{
    int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
    if (color == PNG_COLOR_TYPE_PALETTE) {
        if (palette_indices) png_set_packing(png);
        else png_set_palette_to_rgb(png);
    }
    if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (depth == 16) png_set_strip_16(png); /* keeps the high byte, like PIL */
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
}

static ldm_status check_size(const png_ctx *c, uint32_t w, uint32_t h)
{
    if (w == 0 || h == 0) return ldm_fail(LDM_ERR_FORMAT, "%s: PNG has zero size", c->path);
    if (w > PNG_MAX_SIDE || h > PNG_MAX_SIDE || (uint64_t)w * h > PNG_MAX_PIXELS)
        return ldm_fail(LDM_ERR_LIMIT, "%s: PNG of %ux%u pixels exceeds the limit of %u per side / %llu in total",
                        c->path, w, h, PNG_MAX_SIDE, (unsigned long long)PNG_MAX_PIXELS);
    return LDM_OK;
}

/* deflate cannot compress better than 1032:1, so a file holding fewer than rows * (1 + row
 * bytes) / 1032 bytes cannot contain the image it declares. Refusing it here keeps a 60-byte
 * file from making us allocate hundreds of megabytes for pixels that are not there (found by
 * fuzzing). */
static ldm_status check_data_size(const png_ctx *c, png_structp png, png_infop info, FILE *fp)
{
    struct stat sb;
    if (fstat(fileno(fp), &sb) != 0) return LDM_OK; /* the reads will fail on their own */
    uint64_t bits = (uint64_t)png_get_image_width(png, info) * png_get_channels(png, info) * png_get_bit_depth(png, info);
    uint64_t raw = (uint64_t)png_get_image_height(png, info) * (1 + (bits + 7) / 8);
    if ((uint64_t)sb.st_size < raw / 1032)
        return ldm_fail(LDM_ERR_FORMAT, "%s: PNG of %ux%u pixels needs at least %llu bytes of image data, the file has %lld",
                        c->path, png_get_image_width(png, info), png_get_image_height(png, info),
                        (unsigned long long)(raw / 1032), (long long)sb.st_size);
    return LDM_OK;
}

/* libpng reads every ancillary chunk it knows (tEXt, zTXt, iTXt, iCCP, sPLT, pCAL, sCAL, eXIf,
 * ...) whole into one buffer before looking at it, and on reading its chunk-size limit is only a
 * warning: a 141-byte file whose tEXt claimed 2^31-1 bytes made it allocate and zero 2 GB before
 * finding the data missing. We use none of these chunks, so every chunk libpng may ignore is
 * handled as "unknown, never keep": it is skipped by reading through it with libpng's small
 * fixed buffer, and a length the file does not hold becomes a read error. Kept: the critical
 * chunks and tRNS (the palette expansion may read it; at most 256 entries). The limits below then
 * bound whatever libpng still allocates for a chunk. */
static void skip_unused_chunks(png_structp png)
{
    png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, NULL, -1);
    png_set_chunk_malloc_max(png, PNG_MAX_CHUNK);
    png_set_chunk_cache_max(png, PNG_MAX_CACHED_CHUNKS);
}

/* Reads the whole image. On failure nothing is left allocated. The pointers that change after
 * setjmp are volatile so their values survive the longjmp. */
static ldm_status decode_png(png_ctx *c, FILE *fp, int palette_indices, png_pixels *out)
{
    png_structp png = png_create_read_struct_2(PNG_LIBPNG_VER_STRING, c, on_error, on_warning, c, on_malloc, on_free);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_read_struct(png ? &png : NULL, NULL, NULL);
        return ldm_fail_context(c->alloc_status ? c->alloc_status : LDM_ERR_OUT_OF_MEMORY,
                                "%s: cannot start the PNG decoder: ", c->path);
    }
    unsigned char *volatile pixels = NULL;
    png_bytep *volatile rows = NULL;
    volatile ldm_status st = LDM_OK;
    if (setjmp(png_jmpbuf(png))) {
        st = libpng_failure(c, LDM_ERR_FORMAT);
    } else {
        png_init_io(png, fp);
        png_set_sig_bytes(png, 8);
        skip_unused_chunks(png);
        png_read_info(png, info);
        out->width = png_get_image_width(png, info);
        out->height = png_get_image_height(png, info);
        st = check_size(c, out->width, out->height);
        if (st == LDM_OK) st = check_data_size(c, png, info, fp);
        if (st == LDM_OK) {
            choose_transforms(png, info, palette_indices);
            out->channels = png_get_channels(png, info);
            size_t rowbytes = png_get_rowbytes(png, info);
            if (out->channels < 1 || out->channels > 4 || rowbytes != (size_t)out->width * (size_t)out->channels) {
                st = ldm_fail(LDM_ERR_UNSUPPORTED, "%s: unexpected PNG pixel layout", c->path);
            } else {
                pixels = ldm_malloc(rowbytes * out->height);
                rows = ldm_malloc(sizeof(png_bytep) * out->height);
                if (!pixels || !rows) st = ldm_fail_context(lw_alloc_status(rowbytes * out->height), "%s: ", c->path);
            }
        }
        if (st == LDM_OK) {
            for (uint32_t y = 0; y < out->height; y++) rows[y] = pixels + (size_t)y * out->width * out->channels;
            png_read_image(png, rows);
            png_read_end(png, NULL);
        }
    }
    png_destroy_read_struct(&png, &info, NULL);
    ldm_free(rows);
    if (st != LDM_OK) {
        ldm_free(pixels);
        return st;
    }
    out->pixels = pixels;
    return LDM_OK;
}

static ldm_status read_pixels(const char *path, int palette_indices, png_pixels *out)
{
    memset(out, 0, sizeof *out);
    if (!path) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_image_read_png: NULL path");
    FILE *fp;
    LDM_TRY(lw_fopen_regular(path, NULL, LDM_ERR_IO, &fp));
    unsigned char sig[8];
    ldm_status st;
    if (fread(sig, 1, 8, fp) != 8 || png_sig_cmp(sig, 0, 8) != 0) {
        st = ldm_fail(LDM_ERR_FORMAT, "%s: not a PNG file", path);
    } else {
        png_ctx c;
        memset(&c, 0, sizeof c);
        c.path = path;
        st = decode_png(&c, fp, palette_indices, out);
    }
    fclose(fp);
    return st;
}

/* PIL's convert("L"): ITU-R 601-2 luma in 16-bit fixed point, rounded. */
static unsigned luminance(const unsigned char *rgb)
{
    return (rgb[0] * 19595u + rgb[1] * 38470u + rgb[2] * 7471u + 0x8000u) >> 16;
}

/* The three colour samples of pixel i (gray is replicated; alpha ignored). */
static void pixel_rgb(const png_pixels *p, size_t i, unsigned char rgb[3])
{
    const unsigned char *s = p->pixels + i * (size_t)p->channels;
    if (p->channels <= 2) rgb[0] = rgb[1] = rgb[2] = s[0];
    else memcpy(rgb, s, 3);
}

LDM_API ldm_status ldm_image_read_png(const char *path, ldm_tensor **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_image_read_png: NULL output");
    *out = NULL;
    png_pixels p;
    LDM_TRY(read_pixels(path, 0, &p));
    ldm_tensor *t = lt_new_f32_4d(1, 3, p.height, p.width);
    if (!t) {
        ldm_free(p.pixels);
        return ldm_fail_context(lw_alloc_status((size_t)p.width * p.height * 3 * sizeof(float)), "%s: ", path);
    }
    float *dst = lt_f32(t);
    size_t plane = (size_t)p.width * p.height;
    for (size_t i = 0; i < plane; i++) {
        unsigned char rgb[3];
        pixel_rgb(&p, i, rgb);
        for (int ch = 0; ch < 3; ch++) {
            float v = (float)rgb[ch] / 255.0f; /* np.float32(v) / 255.0, then 2*x - 1 */
            dst[(size_t)ch * plane + i] = 2.0f * v - 1.0f;
        }
    }
    ldm_free(p.pixels);
    *out = t;
    return LDM_OK;
}

LDM_API ldm_status ldm_image_read_png_gray(const char *path, int normalize, ldm_tensor **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_image_read_png_gray: NULL output");
    *out = NULL;
    png_pixels p;
    LDM_TRY(read_pixels(path, !normalize, &p));
    ldm_tensor *t = lt_new_f32_4d(1, 1, p.height, p.width);
    if (!t) {
        ldm_free(p.pixels);
        return ldm_fail_context(lw_alloc_status((size_t)p.width * p.height * sizeof(float)), "%s: ", path);
    }
    float *dst = lt_f32(t);
    size_t plane = (size_t)p.width * p.height;
    for (size_t i = 0; i < plane; i++) {
        const unsigned char *s = p.pixels + i * (size_t)p.channels;
        unsigned v = p.channels <= 2 ? s[0] : luminance(s);
        dst[i] = normalize ? (float)v / 255.0f : (float)v;
    }
    ldm_free(p.pixels);
    *out = t;
    return LDM_OK;
}

/* ---------------------------------------------------------------- encoding */

/* tEXt keywords: 1-79 printable Latin-1 characters (PNG spec 11.3.4.3). */
static int valid_keyword(const char *k)
{
    size_t n = k ? strlen(k) : 0;
    if (n < 1 || n > 79) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)k[i];
        if (ch < 32 || (ch > 126 && ch < 161)) return 0;
    }
    return 1;
}

static int is_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80) return 0;
    return 1;
}

static ldm_status make_texts(const char *const *keys, const char *const *values, int n, png_textp *out)
{
    *out = NULL;
    if (n < 0 || (n > 0 && (!keys || !values)))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_image_write_png: invalid text arrays (n_text = %d)", n);
    if (n == 0) return LDM_OK;
    png_textp texts = ldm_calloc((size_t)n, sizeof *texts);
    if (!texts) return lw_alloc_status((size_t)n * sizeof *texts);
    for (int i = 0; i < n; i++) {
        if (!valid_keyword(keys[i]) || !values[i]) {
            ldm_free(texts);
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_image_write_png: text %d: key must be 1-79 printable "
                                                      "Latin-1 characters and the value non-NULL", i);
        }
        /* Non-ASCII values are UTF-8 (prompts), which tEXt (Latin-1) cannot hold: use iTXt. */
        texts[i].compression = is_ascii(values[i]) ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
        texts[i].key = (png_charp)keys[i];   /* libpng copies; the cast only drops const */
        texts[i].text = (png_charp)values[i];
        texts[i].text_length = strlen(values[i]);
    }
    *out = texts;
    return LDM_OK;
}

static ldm_status image_layout(const ldm_tensor *img, uint32_t *w, uint32_t *h)
{
    if (!img) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_image_write_png: NULL image");
    int c_dim = img->ndim == 4 ? 1 : 0;
    if (img->dtype != LDM_F32 || (img->ndim != 3 && img->ndim != 4) || img->shape[c_dim] != 3 ||
        (img->ndim == 4 && img->shape[0] < 1))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_image_write_png: image must be F32 [B,3,H,W] or [3,H,W]");
    int64_t hh = img->shape[c_dim + 1], ww = img->shape[c_dim + 2];
    if (hh < 1 || ww < 1 || hh > PNG_MAX_SIDE || ww > PNG_MAX_SIDE)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_image_write_png: image size %lldx%lld outside 1..%u",
                        (long long)ww, (long long)hh, PNG_MAX_SIDE);
    *w = (uint32_t)ww;
    *h = (uint32_t)hh;
    return LDM_OK;
}

/* 255 * clamp((x+1)/2, 0, 1) then truncation, as x.astype(np.uint8) in the reference; NaN -> 0. */
static unsigned char to_byte(float x)
{
    float t = (x + 1.0f) / 2.0f;
    if (!(t >= 0.0f)) t = 0.0f;
    if (t > 1.0f) t = 1.0f;
    return (unsigned char)(255.0f * t);
}

static unsigned char *to_rgb_bytes(const ldm_tensor *img, uint32_t w, uint32_t h)
{
    size_t plane = (size_t)w * h;
    unsigned char *rgb = ldm_malloc(plane * 3);
    if (!rgb) return NULL;
    const float *src = lt_f32(img); /* the first batch item is the first 3*plane values */
    for (size_t i = 0; i < plane; i++)
        for (int ch = 0; ch < 3; ch++) rgb[i * 3 + (size_t)ch] = to_byte(src[(size_t)ch * plane + i]);
    return rgb;
}

static ldm_status encode_png(png_ctx *c, FILE *fp, const unsigned char *rgb, uint32_t w, uint32_t h, png_textp texts,
                             int n_text)
{
    png_structp png = png_create_write_struct_2(PNG_LIBPNG_VER_STRING, c, on_error, on_warning, c, on_malloc, on_free);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_write_struct(png ? &png : NULL, NULL);
        return ldm_fail_context(c->alloc_status ? c->alloc_status : LDM_ERR_OUT_OF_MEMORY,
                                "%s: cannot start the PNG encoder: ", c->path);
    }
    png_bytep *volatile rows = ldm_malloc(sizeof(png_bytep) * h);
    volatile ldm_status st = LDM_OK;
    if (!rows) {
        st = ldm_fail_context(lw_alloc_status(sizeof(png_bytep) * h), "%s: ", c->path);
    } else if (setjmp(png_jmpbuf(png))) {
        st = libpng_failure(c, LDM_ERR_IO);
    } else {
        for (uint32_t y = 0; y < h; y++) rows[y] = (png_bytep)rgb + (size_t)y * w * 3;
        png_init_io(png, fp);
        png_set_IHDR(png, info, w, h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                     PNG_FILTER_TYPE_DEFAULT);
        if (n_text > 0) png_set_text(png, info, texts, n_text);
        png_write_info(png, info);
        png_write_image(png, rows);
        png_write_end(png, info);
    }
    png_destroy_write_struct(&png, &info);
    ldm_free(rows);
    return st;
}

/* ---------------------------------------------------------------- writing */

/* The image replaces `path` atomically (atomic_file.c): a failed write, e.g. on a full disk,
 * leaves the old file as it was, and only a regular file or a new path is ever written. */
static ldm_status write_file(const char *path, const unsigned char *rgb, uint32_t w, uint32_t h, png_textp texts,
                             int n_text)
{
    lw_atomic_file *f = NULL;
    LDM_TRY(lw_atomic_begin(path, "a PNG", &f));
    FILE *fp = NULL;
    ldm_status st = lw_atomic_stream(f, &fp);
    if (st == LDM_OK) {
        png_ctx c;
        memset(&c, 0, sizeof c);
        c.path = path;
        st = encode_png(&c, fp, rgb, w, h, texts, n_text);
    }
    if (st == LDM_OK) return lw_atomic_commit(f);
    lw_atomic_abort(f);
    return st;
}

LDM_API ldm_status ldm_image_write_png(const char *path, const ldm_tensor *image, const char *const *text_keys,
                                       const char *const *text_values, int n_text)
{
    if (!path) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_image_write_png: NULL path");
    uint32_t w = 0, h = 0;
    LDM_TRY(image_layout(image, &w, &h));
    png_textp texts = NULL;
    LDM_TRY(make_texts(text_keys, text_values, n_text, &texts));
    unsigned char *rgb = to_rgb_bytes(image, w, h);
    if (!rgb) {
        ldm_free(texts);
        return ldm_fail_context(lw_alloc_status((size_t)w * h * 3), "%s: ", path);
    }
    ldm_status st = write_file(path, rgb, w, h, texts, n_text);
    ldm_free(rgb);
    ldm_free(texts);
    return st;
}
