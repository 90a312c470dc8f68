/* render_glyphs.c - `ldm-glyphs`: renders the glyph data set of docs/training-data.md with
 * FreeType: 62 classes (A-Z a-z 0-9, class = position in LTR_GLYPH_CLASSES), each font face several
 * times with light jitter (scale, shift, rotation) and one of a few dark-ink-on-light-paper colour
 * pairs, all drawn from --seed. Built by `make glyphs-data` only: the library and its tests never
 * need FreeType.
 *
 *   ldm-glyphs [options] [FONT...]
 *     --fonts LIST     font list (lines "package path", '#' comments; default src/glyphs/fonts.txt
 *                      when no FONT is given)
 *     --out DIR        one PNG per glyph (FFF-C-KK.png: face, copy, class) + labels.csv + classes.txt
 *                      + faces.txt (face index, package, path)
 *     --grid PNG       instead: one PNG, 62 columns (classes) x one row per (face, copy)
 *     --gray           --grid as 8-bit grayscale (templates)
 *     --clean          no jitter, black on white (templates)
 *     --seed N         jitter and colours (default 1)
 *     --copies N       renditions per face and class (default 2)
 *     --only K/M       keep the faces whose index i has i % M == K (repeatable: any match keeps)
 *     --skip K/M       drop the faces whose index i has i % M == K
 *     --size S         image side in pixels (default 32)
 *     --fit F          the face's tallest extent fits F pixels (default 24)
 *     --scale-jitter A scale factor in [1-A, 1+A] (default 0.1)
 *     --shift P        shift in [-P, P] pixels on each axis (default 2)
 *     --rotate D       rotation in [-D, D] degrees (default 4)
 *
 * Placement: one scale per face (so that lower and upper case keep their relative sizes): the
 * union of the 62 glyphs' boxes (top of the tallest ascender to the bottom of the deepest
 * descender) or the widest glyph, whichever is larger, fits --fit pixels. Each glyph is centred
 * horizontally on its own box and vertically on the face's box (so the baseline stays where the
 * face puts it), then jittered. Hinting is off (exact outlines at any transform). */
#include "ldm.h"
#include "sampling/sampling.h"

#include <ft2build.h>
#include FT_FREETYPE_H
#include FT_OUTLINE_H

#include <errno.h>
#include <math.h>
#include <png.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CLASSES   "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
#define N_CLASSES 62
#define REF_PX    100 /* outlines are loaded at this pixel size, then scaled by the transform */

typedef struct {
    char package[64];
    char path[512];
} font_entry;

typedef struct {
    unsigned char ink[3], paper[3];
} colour_pair;

/* Dark ink on light paper, high contrast (luminance difference >= 170 of 255). */
static const colour_pair COLOURS[] = {
    {{0, 0, 0}, {255, 255, 255}},     /* black on white */
    {{20, 30, 90}, {250, 245, 225}},  /* navy on cream */
    {{110, 15, 15}, {236, 236, 236}}, /* dark red on light grey */
    {{15, 70, 30}, {250, 250, 205}},  /* dark green on pale yellow */
    {{60, 40, 20}, {225, 236, 250}},  /* brown on pale blue */
    {{45, 45, 45}, {250, 232, 238}},  /* charcoal on pale pink */
};
#define N_COLOURS ((int)(sizeof COLOURS / sizeof COLOURS[0]))

typedef struct {
    const char *fonts_list, *out_dir, *grid;
    int gray, clean, copies, size;
    uint64_t seed;
    double fit, scale_jitter, shift, rotate;
    int only_k[16], only_m[16], n_only;
    int skip_k[16], skip_m[16], n_skip;
} options;

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "ldm-glyphs: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    exit(1);
}

/* ------------------------------------------------------------------ font list */

static int read_font_list(const char *path, font_entry **out)
{
    FILE *f = fopen(path, "r");
    if (!f) die("cannot open font list %s", path);
    char line[1024];
    int n = 0, cap = 0;
    font_entry *v = NULL;
    while (fgets(line, sizeof line, f)) {
        char *p = line;
        while (*p == ' ' || *p == '\t') p++;
        if (*p == '#' || *p == '\n' || *p == '\0') continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            v = realloc(v, (size_t)cap * sizeof *v);
            if (!v) die("%s", "out of memory");
        }
        if (sscanf(p, "%63s %511s", v[n].package, v[n].path) != 2) die("bad line in font list: %s", line);
        n++;
    }
    fclose(f);
    *out = v;
    return n;
}

static int face_selected(const options *o, int i)
{
    for (int j = 0; j < o->n_skip; j++)
        if (i % o->skip_m[j] == o->skip_k[j]) return 0;
    if (o->n_only == 0) return 1;
    for (int j = 0; j < o->n_only; j++)
        if (i % o->only_m[j] == o->only_k[j]) return 1;
    return 0;
}

/* ------------------------------------------------------------------ random numbers */

/* Four uniform numbers in [0,1) for (face, copy, class, block), keyed by the seed. */
static void uniforms(uint64_t seed, int face, int copy, int cls, unsigned block, double u[4])
{
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t ctr[4] = {(uint32_t)face, (uint32_t)copy, (uint32_t)cls, 0x47000000u + block};
    uint32_t r[4];
    ls_philox4x32_10(ctr, key, r);
    for (int i = 0; i < 4; i++) u[i] = (r[i] >> 8) * (1.0 / 16777216.0);
}

/* ------------------------------------------------------------------ rendering */

typedef struct {
    FT_Face face;
    double top, bottom, max_width; /* 26.6 units at REF_PX */
    double scale;                  /* REF_PX outline units -> output pixels (before jitter) */
} face_info;

static int load_glyph(FT_Face face, int cls)
{
    FT_UInt gi = FT_Get_Char_Index(face, (FT_ULong)(unsigned char)CLASSES[cls]);
    if (gi == 0) return -1;
    if (FT_Load_Glyph(face, gi, FT_LOAD_NO_HINTING | FT_LOAD_NO_BITMAP)) return -1;
    if (face->glyph->format != FT_GLYPH_FORMAT_OUTLINE) return -1;
    return 0;
}

static int face_open(FT_Library lib, const char *path, const options *o, face_info *fi)
{
    if (FT_New_Face(lib, path, 0, &fi->face)) return -1;
    if (FT_Set_Pixel_Sizes(fi->face, REF_PX, REF_PX)) return -1;
    fi->top = -1e30;
    fi->bottom = 1e30;
    fi->max_width = 0;
    for (int k = 0; k < N_CLASSES; k++) {
        if (load_glyph(fi->face, k)) return -1;
        FT_BBox b;
        FT_Outline_Get_CBox(&fi->face->glyph->outline, &b);
        if (b.yMax > fi->top) fi->top = (double)b.yMax;
        if (b.yMin < fi->bottom) fi->bottom = (double)b.yMin;
        if (b.xMax - b.xMin > fi->max_width) fi->max_width = (double)(b.xMax - b.xMin);
    }
    double extent = fi->top - fi->bottom;
    if (fi->max_width > extent) extent = fi->max_width;
    fi->scale = o->fit * 64.0 / extent; /* 26.6 units in, 26.6 units out */
    return 0;
}

/* Coverage (0..255) of glyph `cls` into cov[size*size], jittered by (s, dx, dy, rot). */
static int render(FT_Library lib, const face_info *fi, int cls, int size, double s, double dx, double dy, double rot,
                  unsigned char *cov)
{
    if (load_glyph(fi->face, cls)) return -1;
    FT_Outline *ol = &fi->face->glyph->outline;
    FT_BBox b;
    FT_Outline_Get_CBox(ol, &b);
    FT_Outline_Translate(ol, -(FT_Pos)lround((b.xMin + b.xMax) / 2.0), -(FT_Pos)lround((fi->top + fi->bottom) / 2.0));
    double a = fi->scale * s, c = cos(rot), sn = sin(rot);
    FT_Matrix m;
    m.xx = (FT_Fixed)lround(a * c * 65536.0);
    m.xy = (FT_Fixed)lround(-a * sn * 65536.0);
    m.yx = (FT_Fixed)lround(a * sn * 65536.0);
    m.yy = (FT_Fixed)lround(a * c * 65536.0);
    FT_Outline_Transform(ol, &m);
    /* y grows upwards, the bitmap's origin is its bottom-left corner; dy > 0 moves down. */
    FT_Outline_Translate(ol, (FT_Pos)lround((size / 2.0 + dx) * 64.0), (FT_Pos)lround((size / 2.0 - dy) * 64.0));
    memset(cov, 0, (size_t)size * (size_t)size);
    FT_Bitmap bm;
    memset(&bm, 0, sizeof bm);
    bm.rows = (unsigned)size;
    bm.width = (unsigned)size;
    bm.pitch = size;
    bm.buffer = cov;
    bm.num_grays = 256;
    bm.pixel_mode = FT_PIXEL_MODE_GRAY;
    return FT_Outline_Get_Bitmap(lib, ol, &bm) ? -1 : 0;
}

/* ------------------------------------------------------------------ PNG output (libpng, no fsync) */

static void write_png(const char *path, const unsigned char *px, int w, int h, int channels)
{
    FILE *f = fopen(path, "wb");
    if (!f) die("cannot write %s", path);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info || setjmp(png_jmpbuf(png))) die("libpng failed writing %s", path);
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_set_compression_level(png, 9);
    png_write_info(png, info);
    for (int y = 0; y < h; y++) png_write_row(png, (png_const_bytep)(px + (size_t)y * (size_t)w * (size_t)channels));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    if (fclose(f) != 0) die("cannot write %s", path);
}

/* ------------------------------------------------------------------ main */

static int parse_km(const char *s, int *k, int *m)
{
    return sscanf(s, "%d/%d", k, m) == 2 && *m > 0 && *k >= 0 && *k < *m ? 0 : -1;
}

static void usage(void)
{
    fputs("usage: ldm-glyphs (--out DIR | --grid PNG) [--fonts LIST] [--seed N] [--copies N] [--clean] [--gray]\n"
          "                  [--only K/M] [--skip K/M] [--size S] [--fit F] [--scale-jitter A] [--shift P]\n"
          "                  [--rotate DEG] [FONT...]\n",
          stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    options o = {.copies = 2, .size = 32, .seed = 1, .fit = 24, .scale_jitter = 0.1, .shift = 2, .rotate = 4};
    const char **files = calloc((size_t)argc, sizeof *files);
    int n_files = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (strcmp(a, name) == 0 && (v || (usage(), 0)) && (i++, 1))
        if (ARG("--fonts"))
            o.fonts_list = v;
        else if (ARG("--out"))
            o.out_dir = v;
        else if (ARG("--grid"))
            o.grid = v;
        else if (ARG("--seed"))
            o.seed = strtoull(v, NULL, 10);
        else if (ARG("--copies"))
            o.copies = atoi(v);
        else if (ARG("--size"))
            o.size = atoi(v);
        else if (ARG("--fit"))
            o.fit = atof(v);
        else if (ARG("--scale-jitter"))
            o.scale_jitter = atof(v);
        else if (ARG("--shift"))
            o.shift = atof(v);
        else if (ARG("--rotate"))
            o.rotate = atof(v);
        else if (ARG("--only")) {
            if (o.n_only == 16 || parse_km(v, &o.only_k[o.n_only], &o.only_m[o.n_only])) usage();
            o.n_only++;
        } else if (ARG("--skip")) {
            if (o.n_skip == 16 || parse_km(v, &o.skip_k[o.n_skip], &o.skip_m[o.n_skip])) usage();
            o.n_skip++;
        } else if (strcmp(a, "--gray") == 0)
            o.gray = 1;
        else if (strcmp(a, "--clean") == 0)
            o.clean = 1;
        else if (a[0] == '-')
            usage();
        else
            files[n_files++] = a;
#undef ARG
    }
    if (!o.out_dir == !o.grid) usage();
    if (o.copies < 1 || o.size < 8 || o.size > 1024 || o.fit <= 0) usage();

    font_entry *fonts = NULL;
    int n_fonts;
    if (n_files > 0 && !o.fonts_list) {
        n_fonts = n_files;
        fonts = calloc((size_t)n_files, sizeof *fonts);
        for (int i = 0; i < n_files; i++) {
            snprintf(fonts[i].package, sizeof fonts[i].package, "-");
            snprintf(fonts[i].path, sizeof fonts[i].path, "%s", files[i]);
        }
    } else {
        n_fonts = read_font_list(o.fonts_list ? o.fonts_list : "src/glyphs/fonts.txt", &fonts);
    }

    FT_Library lib;
    if (FT_Init_FreeType(&lib)) die("%s", "FreeType initialisation failed");
    int S = o.size;
    unsigned char *cov = malloc((size_t)S * (size_t)S);
    int channels = o.gray ? 1 : 3;
    int n_rows = 0;
    for (int f = 0; f < n_fonts; f++) n_rows += face_selected(&o, f) ? o.copies : 0;
    unsigned char *grid = NULL;
    size_t grid_w = (size_t)N_CLASSES * (size_t)S;
    if (o.grid) {
        grid = malloc(grid_w * (size_t)S * (size_t)n_rows * (size_t)channels);
        if (!grid) die("%s", "out of memory");
    }
    FILE *labels = NULL, *faces = NULL;
    char path[4096];
    if (o.out_dir) {
        if (mkdir(o.out_dir, 0777) != 0 && errno != EEXIST) die("cannot create %s", o.out_dir);
        snprintf(path, sizeof path, "%s/classes.txt", o.out_dir);
        FILE *c = fopen(path, "w");
        if (!c) die("cannot write %s", path);
        for (int k = 0; k < N_CLASSES; k++) fprintf(c, "%c\n", CLASSES[k]);
        fclose(c);
        snprintf(path, sizeof path, "%s/labels.csv", o.out_dir);
        labels = fopen(path, "w");
        snprintf(path, sizeof path, "%s/faces.txt", o.out_dir);
        faces = fopen(path, "w");
        if (!labels || !faces) die("cannot write into %s", o.out_dir);
        fprintf(labels, "file,label\n");
    }
    unsigned char *img = malloc((size_t)S * (size_t)S * 3);
    long n_images = 0;
    int row = 0;
    for (int f = 0; f < n_fonts; f++) {
        if (!face_selected(&o, f)) continue;
        face_info fi;
        if (face_open(lib, fonts[f].path, &o, &fi)) die("cannot use font %s (missing file or glyphs)", fonts[f].path);
        if (faces) fprintf(faces, "%d %s %s\n", f, fonts[f].package, fonts[f].path);
        for (int c = 0; c < o.copies; c++, row++) {
            for (int k = 0; k < N_CLASSES; k++) {
                double u[4], w[4];
                uniforms(o.seed, f, c, k, 0, u);
                uniforms(o.seed, f, c, k, 1, w);
                double s = 1, dx = 0, dy = 0, rot = 0;
                const colour_pair *cp = &COLOURS[0];
                if (!o.clean) {
                    s = 1 + o.scale_jitter * (2 * u[0] - 1);
                    dx = o.shift * (2 * u[1] - 1);
                    dy = o.shift * (2 * u[2] - 1);
                    rot = o.rotate * (2 * u[3] - 1) * M_PI / 180.0;
                    cp = &COLOURS[(int)(w[0] * N_COLOURS)];
                }
                if (render(lib, &fi, k, S, s, dx, dy, rot, cov)) die("rendering failed with %s", fonts[f].path);
                for (int p = 0; p < S * S; p++) {
                    double a = cov[p] / 255.0;
                    for (int ch = 0; ch < 3; ch++)
                        img[p * 3 + ch] = (unsigned char)lround(cp->paper[ch] * (1 - a) + cp->ink[ch] * a);
                }
                if (o.out_dir) {
                    char name[64];
                    snprintf(name, sizeof name, "%03d-%d-%02d.png", f, c, k);
                    snprintf(path, sizeof path, "%s/%s", o.out_dir, name);
                    write_png(path, img, S, S, 3);
                    fprintf(labels, "%s,%d\n", name, k);
                } else {
                    for (int y = 0; y < S; y++)
                        for (int x = 0; x < S; x++) {
                            size_t gi = ((size_t)(row * S + y) * grid_w + (size_t)(k * S + x)) * (size_t)channels;
                            const unsigned char *q = img + ((size_t)y * (size_t)S + (size_t)x) * 3;
                            if (channels == 1)
                                grid[gi] = (unsigned char)((q[0] * 299 + q[1] * 587 + q[2] * 114 + 500) / 1000);
                            else
                                memcpy(grid + gi, q, 3);
                        }
                }
                n_images++;
            }
        }
        FT_Done_Face(fi.face);
    }
    if (o.grid) write_png(o.grid, grid, (int)grid_w, S * n_rows, channels);
    if (labels && fclose(labels) != 0) die("cannot write labels.csv in %s", o.out_dir);
    if (faces) fclose(faces);
    FT_Done_FreeType(lib);
    fprintf(stderr, "ldm-glyphs: %ld images from %d faces\n", n_images, n_rows / o.copies);
    free(img);
    free(grid);
    free(cov);
    free(fonts);
    free(files);
    return 0;
}
