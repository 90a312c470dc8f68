/* glyph_judge.c - nearest-template glyph classifier (glyph_judge.h). */
#include "glyph_judge.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define S           GLYPH_JUDGE_SIZE
#define NPX         (S * S)
#define SHIFT       2
#define N_SHIFTS    ((2 * SHIFT + 1) * (2 * SHIFT + 1))
#define TEMPERATURE 0.02f
#define BLUR        2

struct glyph_judge {
    int faces;
    int n;    /* templates = faces * 62, row-major [n][NPX], unit norm */
    float *t; /* templates */
    int *cls; /* class of each template */
};

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Luminance (0..255) -> blurred ink map (0 = paper, 1 = ink) normalised to unit norm; returns
 * 0 for an image without ink (paper and darkest pixel less than 32 levels apart). */
static int ink_map(const float *lum, float *out)
{
    float border[4 * S];
    int nb = 0;
    float lo = lum[0];
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) {
            float v = lum[y * S + x];
            if (v < lo) lo = v;
            if (y == 0 || y == S - 1 || x == 0 || x == S - 1) border[nb++] = v;
        }
    qsort(border, (size_t)nb, sizeof border[0], cmp_float);
    float paper = border[nb / 2];
    float range = paper - lo;
    if (range < 32.0f) {
        memset(out, 0, NPX * sizeof *out);
        return 0;
    }
    float ink[NPX], tmp[NPX];
    for (int p = 0; p < NPX; p++) {
        float a = (paper - lum[p]) / range;
        ink[p] = a < 0 ? 0 : a > 1 ? 1 : a;
    }
    /* BLUR passes of a [1 2 1]/4 blur along x, then y; outside the image is paper (0). */
    for (int pass = 0; pass < BLUR; pass++) {
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                float l = x > 0 ? ink[y * S + x - 1] : 0, r = x < S - 1 ? ink[y * S + x + 1] : 0;
                tmp[y * S + x] = 0.25f * l + 0.5f * ink[y * S + x] + 0.25f * r;
            }
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                float u = y > 0 ? tmp[(y - 1) * S + x] : 0, d = y < S - 1 ? tmp[(y + 1) * S + x] : 0;
                ink[y * S + x] = 0.25f * u + 0.5f * tmp[y * S + x] + 0.25f * d;
            }
    }
    double ss = 0;
    for (int p = 0; p < NPX; p++) {
        out[p] = ink[p];
        ss += (double)ink[p] * ink[p];
    }
    float inv = (float)(1.0 / sqrt(ss));
    for (int p = 0; p < NPX; p++) out[p] *= inv;
    return 1;
}

ldm_status glyph_judge_load(const char *templates_png, glyph_judge **out)
{
    *out = NULL;
    ldm_tensor *img = NULL;
    ldm_status st = ldm_image_read_png_gray(templates_png, 0, &img);
    if (st != LDM_OK) return st;
    int nd = ldm_tensor_ndim(img);
    int64_t h = ldm_tensor_dim(img, nd - 2), w = ldm_tensor_dim(img, nd - 1);
    if (w != (int64_t)GLYPH_JUDGE_N_CLASSES * S || h % S != 0 || h == 0 || h > 256 * S) {
        ldm_tensor_free(img);
        return LDM_ERR_FORMAT;
    }
    glyph_judge *j = calloc(1, sizeof *j);
    j->faces = (int)(h / S);
    j->n = j->faces * GLYPH_JUDGE_N_CLASSES;
    j->t = malloc((size_t)j->n * NPX * sizeof *j->t);
    j->cls = malloc((size_t)j->n * sizeof *j->cls);
    const float *px = ldm_tensor_data(img);
    int m = 0;
    for (int f = 0; f < j->faces; f++)
        for (int k = 0; k < GLYPH_JUDGE_N_CLASSES; k++) {
            float lum[NPX];
            for (int y = 0; y < S; y++)
                for (int x = 0; x < S; x++) lum[y * S + x] = px[(int64_t)(f * S + y) * w + k * S + x];
            if (!ink_map(lum, j->t + (size_t)m * NPX)) continue; /* a blank template never wins */
            j->cls[m++] = k;
        }
    j->n = m;
    ldm_tensor_free(img);
    *out = j;
    return LDM_OK;
}

void glyph_judge_free(glyph_judge *j)
{
    if (!j) return;
    free(j->t);
    free(j->cls);
    free(j);
}

int glyph_judge_faces(const glyph_judge *j)
{
    return j->faces;
}

static void classify_lum(const glyph_judge *j, const float *lum, glyph_judge_result *r)
{
    memset(r, 0, sizeof *r);
    r->cls = -1;
    r->second = -1;
    float q[NPX];
    if (!ink_map(lum, q) || j->n == 0) return;
    /* The query at every shift (zero fill), each scaled to unit norm. */
    float *qs = malloc((size_t)N_SHIFTS * NPX * sizeof *qs);
    float *sc = malloc((size_t)N_SHIFTS * (size_t)j->n * sizeof *sc);
    int s = 0;
    for (int dy = -SHIFT; dy <= SHIFT; dy++)
        for (int dx = -SHIFT; dx <= SHIFT; dx++, s++) {
            float *d = qs + (size_t)s * NPX;
            double ss = 0;
            for (int y = 0; y < S; y++)
                for (int x = 0; x < S; x++) {
                    int sy = y - dy, sx = x - dx;
                    float v = sy >= 0 && sy < S && sx >= 0 && sx < S ? q[sy * S + sx] : 0;
                    d[y * S + x] = v;
                    ss += (double)v * v;
                }
            float inv = ss > 0 ? (float)(1.0 / sqrt(ss)) : 0;
            for (int p = 0; p < NPX; p++) d[p] *= inv;
        }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N_SHIFTS, j->n, NPX, 1.0f, qs, NPX, j->t, NPX, 0.0f, sc, j->n);
    float best[GLYPH_JUDGE_N_CLASSES];
    for (int k = 0; k < GLYPH_JUDGE_N_CLASSES; k++) best[k] = -1;
    for (s = 0; s < N_SHIFTS; s++)
        for (int m = 0; m < j->n; m++) {
            float v = sc[(size_t)s * (size_t)j->n + (size_t)m];
            if (v > best[j->cls[m]]) best[j->cls[m]] = v;
        }
    free(qs);
    free(sc);
    int b1 = 0;
    for (int k = 1; k < GLYPH_JUDGE_N_CLASSES; k++)
        if (best[k] > best[b1]) b1 = k;
    int b2 = b1 == 0 ? 1 : 0;
    for (int k = 0; k < GLYPH_JUDGE_N_CLASSES; k++)
        if (k != b1 && best[k] > best[b2]) b2 = k;
    double z = 0;
    for (int k = 0; k < GLYPH_JUDGE_N_CLASSES; k++) z += exp((best[k] - best[b1]) / TEMPERATURE);
    r->cls = b1;
    r->second = b2;
    r->score = best[b1];
    r->margin = best[b1] - best[b2];
    r->confidence = (float)(1.0 / z);
}

void glyph_judge_classify(const glyph_judge *j, const float *image, glyph_judge_result *r)
{
    float lum[NPX];
    for (int p = 0; p < NPX; p++) {
        float v = 0.299f * image[p] + 0.587f * image[NPX + p] + 0.114f * image[2 * NPX + p];
        lum[p] = (v + 1.0f) * 127.5f;
    }
    classify_lum(j, lum, r);
}

void glyph_judge_classify_gray(const glyph_judge *j, const unsigned char *gray, glyph_judge_result *r)
{
    float lum[NPX];
    for (int p = 0; p < NPX; p++) lum[p] = gray[p];
    classify_lum(j, lum, r);
}
