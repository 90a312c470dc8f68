/* test_train_data.c - the training data loader (lib/train/data.h) and the glyph judge
 * (tests/support/glyph_judge.h): PNG colour types and sizes, resizing and crops, labels.csv and
 * classes.txt parsing, every error case named by file and line, deterministic shuffling (resume
 * equality, each image once per epoch), flips, the cache, and the judge on committed held-out
 * glyphs (tests/data/glyphs/, docs/training-data.md). */
#include <check.h>

#include "ldm.h"
#include "support/ck_tmpdir.h"
#include "support/glyph_judge.h"
#include "train/data.h"

#include <ftw.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---------------------------------------------------------------- helpers */

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

/* A fresh, empty folder <tmpdir>/<name>. */
static const char *fresh_dir(const char *name)
{
    static char dir[512];
    snprintf(dir, sizeof dir, "%s", ck_tmp_path(name));
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    ck_assert_int_eq(mkdir(dir, 0777), 0);
    return dir;
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char path[768];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fwrite(text, 1, strlen(text), f);
    fclose(f);
}

/* An 8-bit PNG of colour type ct (PNG_COLOR_TYPE_GRAY, _RGB, _RGBA, _GRAY_ALPHA, _PALETTE) with
 * packed rows `px` (palette: indices into a 4-entry palette pal). */
static void write_png(const char *dir, const char *name, int w, int h, int ct, const unsigned char *px)
{
    char path[768];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    ck_assert(!setjmp(png_jmpbuf(png)));
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, ct, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    static const png_color pal[4] = {{0, 0, 0}, {255, 0, 0}, {0, 255, 0}, {10, 20, 30}};
    if (ct == PNG_COLOR_TYPE_PALETTE) png_set_PLTE(png, info, pal, 4);
    png_write_info(png, info);
    int ch = ct == PNG_COLOR_TYPE_GRAY || ct == PNG_COLOR_TYPE_PALETTE ? 1
             : ct == PNG_COLOR_TYPE_GRAY_ALPHA                         ? 2
             : ct == PNG_COLOR_TYPE_RGB                                ? 3
                                                                       : 4;
    for (int y = 0; y < h; y++) png_write_row(png, px + (size_t)y * (size_t)w * (size_t)ch);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    fclose(f);
}

/* A w x h RGB image whose pixel (x, y) is (seed + x*7 + y*13, 2*x + y, 255 - x - y) (mod 256). */
static void write_rgb(const char *dir, const char *name, int w, int h, int seed)
{
    unsigned char *px = malloc((size_t)w * (size_t)h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            unsigned char *p = px + ((size_t)y * (size_t)w + (size_t)x) * 3;
            p[0] = (unsigned char)(seed + x * 7 + y * 13);
            p[1] = (unsigned char)(2 * x + y);
            p[2] = (unsigned char)(255 - x - y);
        }
    write_png(dir, name, w, h, PNG_COLOR_TYPE_RGB, px);
    free(px);
}

static float unit(unsigned v)
{
    return (float)v / 127.5f - 1.0f;
}

static ltr_dataset *open_ok(const char *dir, const ltr_data_opts *o)
{
    ltr_dataset *d = NULL;
    ldm_status st = ltr_dataset_open(dir, o, &d);
    ck_assert_msg(st == LDM_OK, "open %s: %s", dir, ldm_last_error());
    return d;
}

/* Opening fails with `want`, and the message contains `needle`. */
static void open_fails(const char *dir, const ltr_data_opts *o, ldm_status want, const char *needle)
{
    ltr_dataset *d = NULL;
    ldm_status st = ltr_dataset_open(dir, o, &d);
    ck_assert_msg(st == want, "expected status %d, got %d (%s)", want, st, ldm_last_error());
    ck_assert_ptr_null(d);
    ck_assert_msg(strstr(ldm_last_error(), needle), "message \"%s\" lacks \"%s\"", ldm_last_error(), needle);
}

/* ---------------------------------------------------------------- formats and sizes */

START_TEST(formats_are_read_as_rgb_bytes)
{
    const char *dir = fresh_dir("formats");
    unsigned char gray[16], ga[32], rgba[64], pal[16];
    for (int i = 0; i < 16; i++) {
        gray[i] = (unsigned char)(i * 16);
        ga[2 * i] = (unsigned char)(i * 3);
        ga[2 * i + 1] = 7;
        for (int c = 0; c < 4; c++) rgba[4 * i + c] = (unsigned char)(i * 10 + c);
        pal[i] = (unsigned char)(i % 4);
    }
    write_png(dir, "a_gray.png", 4, 4, PNG_COLOR_TYPE_GRAY, gray);
    write_png(dir, "b_ga.png", 4, 4, PNG_COLOR_TYPE_GRAY_ALPHA, ga);
    write_rgb(dir, "c_rgb.png", 4, 4, 5);
    write_png(dir, "d_rgba.png", 4, 4, PNG_COLOR_TYPE_RGB_ALPHA, rgba);
    write_png(dir, "e_pal.PNG", 4, 4, PNG_COLOR_TYPE_PALETTE, pal);
    write_text(dir, "notes.txt", "not an image");
    write_text(dir, ".hidden.png", "skipped");
    ltr_data_opts o;
    ltr_data_opts_init(&o);
    o.size = 4;
    ltr_dataset *d = open_ok(dir, &o);
    ck_assert_int_eq(ltr_dataset_count(d), 5);
    ck_assert_str_eq(ltr_dataset_file(d, 0), "a_gray.png");
    ck_assert_str_eq(ltr_dataset_file(d, 4), "e_pal.PNG");
    ck_assert_int_eq(ltr_dataset_n_classes(d), 0);
    ck_assert_int_eq(ltr_dataset_label(d, 0), -1);
    ck_assert_ptr_null(ltr_dataset_caption(d, 0));
    float img[48];
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(ltr_dataset_image(d, 1, 0, i, img), LDM_OK);
        for (int p = 0; p < 16; p++)
            for (int c = 0; c < 3; c++) {
                unsigned want;
                static const unsigned char palrgb[4][3] = {{0, 0, 0}, {255, 0, 0}, {0, 255, 0}, {10, 20, 30}};
                switch (i) {
                case 0:
                    want = gray[p];
                    break;
                case 1:
                    want = ga[2 * p];
                    break;
                case 2:
                    want = (unsigned char)(c == 0   ? 5 + (p % 4) * 7 + (p / 4) * 13
                                           : c == 1 ? 2 * (p % 4) + p / 4
                                                    : 255 - p % 4 - p / 4);
                    break;
                case 3:
                    want = rgba[4 * p + c];
                    break;
                default:
                    want = palrgb[pal[p]][c];
                    break;
                }
                ck_assert_msg(img[c * 16 + p] == unit(want), "image %d pixel %d channel %d: %g, want %g", i, p, c,
                              img[c * 16 + p], unit(want));
            }
    }
    ltr_dataset_free(d);
}
END_TEST

START_TEST(resize_and_crop)
{
    const char *dir = fresh_dir("resize");
    /* A constant 30x12 image stays constant through the resize (12 -> 8, 30 -> 20) and crop. */
    unsigned char *px = malloc(30 * 12 * 3);
    for (int i = 0; i < 30 * 12; i++) px[3 * i] = 200, px[3 * i + 1] = 100, px[3 * i + 2] = 3;
    write_png(dir, "wide.png", 30, 12, PNG_COLOR_TYPE_RGB, px);
    free(px);
    ltr_data_opts o;
    ltr_data_opts_init(&o);
    o.size = 8;
    ltr_dataset *d = open_ok(dir, &o);
    float img[3 * 64];
    ck_assert_int_eq(ltr_dataset_image(d, 1, 0, 0, img), LDM_OK);
    for (int p = 0; p < 64; p++) {
        ck_assert_float_eq(img[p], unit(200));
        ck_assert_float_eq(img[64 + p], unit(100));
        ck_assert_float_eq(img[128 + p], unit(3));
    }
    ltr_dataset_free(d);

    /* Centre crop without resizing: a 10x6 gradient cut to 4x4 starts at (3, 1). */
    dir = fresh_dir("crop");
    write_rgb(dir, "g.png", 10, 6, 0);
    o.size = 4;
    o.resize = 0;
    d = open_ok(dir, &o);
    ck_assert_int_eq(ltr_dataset_image(d, 1, 0, 0, img), LDM_OK);
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++)
            ck_assert_float_eq(img[y * 4 + x], unit((unsigned char)((x + 3) * 7 + (y + 1) * 13)));
    ltr_dataset_free(d);

    /* Random crops: deterministic per (seed, epoch, image), varying across epochs, always inside. */
    o.crop = LTR_CROP_RANDOM;
    d = open_ok(dir, &o);
    int seen_x[7] = {0}, seen_y[3] = {0};
    for (int e = 0; e < 200; e++) {
        float a[48], b[48];
        ck_assert_int_eq(ltr_dataset_image(d, 9, e, 0, a), LDM_OK);
        ck_assert_int_eq(ltr_dataset_image(d, 9, e, 0, b), LDM_OK);
        ck_assert_mem_eq(a, b, sizeof a);
        int found = 0;
        for (int y0 = 0; y0 <= 2 && !found; y0++)
            for (int x0 = 0; x0 <= 6 && !found; x0++)
                if (a[0] == unit((unsigned char)(x0 * 7 + y0 * 13)) &&
                    a[1] == unit((unsigned char)((x0 + 1) * 7 + y0 * 13)) &&
                    a[4] == unit((unsigned char)(x0 * 7 + (y0 + 1) * 13)))
                    found = 1, seen_x[x0]++, seen_y[y0]++;
        ck_assert_msg(found, "epoch %d: crop not found", e);
    }
    for (int i = 0; i < 7; i++) ck_assert_int_gt(seen_x[i], 5);
    for (int i = 0; i < 3; i++) ck_assert_int_gt(seen_y[i], 20);
    ltr_dataset_free(d);

    /* Resizing off: an image smaller than size is an error naming it. */
    o.size = 8;
    open_fails(dir, &o, LDM_ERR_FORMAT, "g.png: 10x6 is smaller than 8x8");
}
END_TEST

START_TEST(downscale_is_antialiased)
{
    /* A 64x64 one-pixel checkerboard shrunk to 8x8 is a flat mid gray (aliasing would keep
     * extremes). */
    const char *dir = fresh_dir("aa");
    unsigned char *px = malloc(64 * 64);
    for (int y = 0; y < 64; y++)
        for (int x = 0; x < 64; x++) px[y * 64 + x] = (x + y) % 2 ? 255 : 0;
    write_png(dir, "cb.png", 64, 64, PNG_COLOR_TYPE_GRAY, px);
    free(px);
    ltr_data_opts o;
    ltr_data_opts_init(&o);
    o.size = 8;
    ltr_dataset *d = open_ok(dir, &o);
    float img[3 * 64];
    ck_assert_int_eq(ltr_dataset_image(d, 1, 0, 0, img), LDM_OK);
    for (int p = 1; p < 63; p++) ck_assert_msg(fabsf(img[p] - unit(128)) < 0.05f, "pixel %d: %g", p, img[p]);
    ltr_dataset_free(d);
}
END_TEST

/* ---------------------------------------------------------------- labels and classes */

START_TEST(labels_and_captions)
{
    const char *dir = fresh_dir("labels");
    const char *names[] = {"a.png", "b.png", "c.png", "d, e.png", "f.png"};
    for (int i = 0; i < 5; i++) write_rgb(dir, names[i], 4, 4, i);
    write_text(dir, "labels.csv",
               "# a comment\r\n"
               "file,label\r\n"
               "\n"
               "b.png , 2\n"
               "  a.png,0\n"
               "c.png,\"a red \"\"A\"\", on white\"\n"
               "\"d, e.png\",  a caption with spaces  \n"
               "f.png,\"7\"\n");
    write_text(dir, "classes.txt", "zero\none\n two \n\n");
    ltr_data_opts o;
    ltr_data_opts_init(&o);
    o.size = 4;
    ltr_dataset *d = open_ok(dir, &o);
    ck_assert_int_eq(ltr_dataset_count(d), 5);
    ck_assert_int_eq(ltr_dataset_n_classes(d), 3);
    ck_assert_str_eq(ltr_dataset_class_name(d, 2), "two");
    ck_assert_ptr_null(ltr_dataset_class_name(d, 3));
    ck_assert_int_eq(ltr_dataset_label(d, 0), 0);
    ck_assert_int_eq(ltr_dataset_label(d, 1), 2);
    ck_assert_int_eq(ltr_dataset_label(d, 2), -1);
    ck_assert_str_eq(ltr_dataset_caption(d, 2), "a red \"A\", on white");
    ck_assert_str_eq(ltr_dataset_file(d, 3), "d, e.png");
    ck_assert_str_eq(ltr_dataset_caption(d, 3), "a caption with spaces");
    ck_assert_str_eq(ltr_dataset_caption(d, 4), "7"); /* quoted: text, not a class */
    ck_assert_ptr_null(ltr_dataset_caption(d, 0));
    /* Batches carry labels and captions. */
    float img[5 * 48];
    int64_t lab[5];
    const char *cap[5];
    ck_assert_int_eq(ltr_dataset_batch(d, 3, 0, 5, img, lab, cap), LDM_OK);
    for (int b = 0; b < 5; b++) {
        int64_t i = ltr_dataset_index_at(d, 3, b);
        ck_assert_int_eq(lab[b], ltr_dataset_label(d, i));
        ck_assert_ptr_eq(cap[b], ltr_dataset_caption(d, i));
    }
    ltr_dataset_free(d);

    /* n_classes derived from the labels without classes.txt; given explicitly it wins. */
    remove(ck_tmp_path("labels/classes.txt"));
    d = open_ok(dir, &o);
    ck_assert_int_eq(ltr_dataset_n_classes(d), 3);
    ltr_dataset_free(d);
    o.n_classes = 10;
    d = open_ok(dir, &o);
    ck_assert_int_eq(ltr_dataset_n_classes(d), 10);
    ltr_dataset_free(d);

    /* A labels file elsewhere. */
    write_text(ck_tmpdir, "other.csv", "a.png,1\nb.png,1\nc.png,1\n\"d, e.png\",1\nf.png,5\n");
    o.n_classes = 0;
    o.labels_path = ck_tmp_path("other.csv");
    d = open_ok(dir, &o);
    ck_assert_int_eq(ltr_dataset_n_classes(d), 6);
    ck_assert_int_eq(ltr_dataset_label(d, 4), 5);
    ltr_dataset_free(d);
}
END_TEST

/* Writes labels.csv (and classes.txt when given) into a folder holding a.png and b.png, and
 * checks that opening fails with `want` and a message containing `needle`. */
static void bad_labels(const char *labels, const char *classes, int64_t n_classes, ldm_status want, const char *needle)
{
    const char *dir = fresh_dir("bad");
    write_rgb(dir, "a.png", 4, 4, 0);
    write_rgb(dir, "b.png", 4, 4, 1);
    write_text(dir, "labels.csv", labels);
    if (classes) write_text(dir, "classes.txt", classes);
    ltr_data_opts o;
    ltr_data_opts_init(&o);
    o.n_classes = n_classes;
    open_fails(dir, &o, want, needle);
}

START_TEST(bad_labels_are_named)
{
    bad_labels("a.png,0\nb.png,0\nc.png,1\n", NULL, 0, LDM_ERR_FORMAT, "labels.csv:3: c.png: no such PNG image");
    bad_labels("a.png,0\n", NULL, 0, LDM_ERR_FORMAT, "no line for the image b.png");
    bad_labels("a.png,0\nb.png,1\na.png,1\n", NULL, 0, LDM_ERR_FORMAT,
               "labels.csv:3: a.png already labelled on line 1");
    bad_labels("a.png,0\nb.png,5\n", NULL, 5, LDM_ERR_FORMAT, "labels.csv:2: class 5 out of range (5 classes)");
    bad_labels("a.png,0\nb.png,2\n", "x\ny\n", 0, LDM_ERR_FORMAT,
               "labels.csv:2: class 2 out of range (2 classes in classes.txt)");
    bad_labels("a.png,-1\nb.png,0\n", NULL, 0, LDM_ERR_FORMAT, "labels.csv:1: negative class index");
    bad_labels("a.png,99999999999999999999999\nb.png,0\n", NULL, 0, LDM_ERR_FORMAT, "too large");
    bad_labels("a.png,\nb.png,0\n", NULL, 0, LDM_ERR_FORMAT, "labels.csv:1: empty label");
    bad_labels("a.png\nb.png,0\n", NULL, 0, LDM_ERR_FORMAT, "labels.csv:1: expected \"file,label\" (no comma)");
    bad_labels("a.png,a,b\nb.png,0\n", NULL, 0, LDM_ERR_FORMAT, "more than two fields");
    bad_labels("a.png,\"open\nb.png,0\n", NULL, 0, LDM_ERR_FORMAT, "labels.csv:1: unterminated quoted field");
    bad_labels("a.png,\"x\"y\nb.png,0\n", NULL, 0, LDM_ERR_FORMAT, "labels.csv:1: text after a closing quote");
    bad_labels("a.png,x\"y\nb.png,0\n", NULL, 0, LDM_ERR_FORMAT, "labels.csv:1: a quote inside an unquoted field");
    bad_labels("a.png,caf\xc3\nb.png,0\n", NULL, 0, LDM_ERR_FORMAT, "labels.csv:1: caption is not valid UTF-8");
    bad_labels("a.png,\xed\xa0\x80\nb.png,0\n", NULL, 0, LDM_ERR_FORMAT, "not valid UTF-8"); /* a surrogate */
    bad_labels("../a.png,0\nb.png,0\n", NULL, 0, LDM_ERR_FORMAT, "is not a plain file name");
    bad_labels("a.png,0\nb.png,0\n", "x\nx\n", 0, LDM_ERR_FORMAT, "classes.txt:2: class name \"x\" already on line 1");
    bad_labels("a.png,0\nb.png,0\n", "x\n\ny\n", 0, LDM_ERR_FORMAT, "classes.txt:2: empty class name");
    bad_labels("a.png,0\nb.png,0\n", "x\ny\nz\n", 2, LDM_ERR_FORMAT, "3 class names but n_classes is 2");
    bad_labels("a.png,0\nb.png,0\n", "\xff\n", 0, LDM_ERR_FORMAT, "classes.txt:1: invalid UTF-8");
    /* A huge line, a NUL byte. */
    size_t n = 200000;
    char *big = malloc(n + 32);
    memcpy(big, "a.png,", 6);
    memset(big + 6, 'x', n);
    strcpy(big + 6 + n, "\nb.png,0\n");
    bad_labels(big, NULL, 0, LDM_ERR_FORMAT, "labels.csv:1: line longer than 65536 bytes");
    free(big);
    const char *dir = fresh_dir("nul");
    write_rgb(dir, "a.png", 4, 4, 0);
    char path[768];
    snprintf(path, sizeof path, "%s/labels.csv", dir);
    FILE *f = fopen(path, "wb");
    fwrite("a.png,x\0y\n", 1, 10, f);
    fclose(f);
    open_fails(dir, NULL, LDM_ERR_FORMAT, "labels.csv:1: NUL byte");
}
END_TEST

START_TEST(bad_folders_and_images)
{
    open_fails(ck_tmp_path("no-such-folder"), NULL, LDM_ERR_NOT_FOUND, "no-such-folder");
    const char *dir = fresh_dir("badimg");
    write_rgb(dir, "a.png", 4, 4, 0);
    write_text(dir, "b.png", "GIF89a, not a PNG at all");
    open_fails(dir, NULL, LDM_ERR_FORMAT, "b.png: not a PNG file");
    /* A valid header on a truncated file passes open and fails at decode, naming the file. */
    dir = fresh_dir("trunc");
    write_rgb(dir, "a.png", 16, 16, 0);
    char path[768];
    snprintf(path, sizeof path, "%s/a.png", dir);
    ck_assert_int_eq(truncate(path, 40), 0);
    ltr_data_opts o;
    ltr_data_opts_init(&o);
    o.size = 16;
    ltr_dataset *d = open_ok(dir, &o);
    float img[3 * 256];
    ck_assert_int_ne(ltr_dataset_batch(d, 1, 0, 1, img, NULL, NULL), LDM_OK);
    ck_assert_msg(strstr(ldm_last_error(), "a.png"), "%s", ldm_last_error());
    ltr_dataset_free(d);
    /* A labels path that does not exist, a labels path that is a folder. */
    dir = fresh_dir("lp");
    write_rgb(dir, "a.png", 4, 4, 0);
    o.labels_path = ck_tmp_path("missing.csv");
    open_fails(dir, &o, LDM_ERR_NOT_FOUND, "missing.csv");
    o.labels_path = dir;
    open_fails(dir, &o, LDM_ERR_IO, "directory");
    /* Bad options. */
    ltr_data_opts_init(&o);
    o.size = 0;
    open_fails(dir, &o, LDM_ERR_INVALID_ARGUMENT, "size");
    ltr_data_opts_init(&o);
    o.flip = 1.5f;
    open_fails(dir, &o, LDM_ERR_INVALID_ARGUMENT, "flip");
    /* An empty folder opens (count 0) but gives no batches. */
    dir = fresh_dir("empty");
    d = open_ok(dir, NULL);
    ck_assert_int_eq(ltr_dataset_count(d), 0);
    ck_assert_int_eq(ltr_dataset_batch(d, 1, 0, 1, img, NULL, NULL), LDM_ERR_INVALID_ARGUMENT);
    ltr_dataset_free(d);
}
END_TEST

/* ---------------------------------------------------------------- shuffling */

static const char *make_set(const char *name, int n)
{
    const char *dir = fresh_dir(name);
    char fname[32], labels[4096] = "";
    for (int i = 0; i < n; i++) {
        snprintf(fname, sizeof fname, "img%03d.png", i);
        write_rgb(dir, fname, 6, 6, i * 17);
        char line[64];
        snprintf(line, sizeof line, "%s,%d\n", fname, i % 4);
        strcat(labels, line);
    }
    write_text(dir, "labels.csv", labels);
    return dir;
}

START_TEST(epochs_cover_every_image_once)
{
    make_set("epochs", 7);
    ltr_data_opts o;
    ltr_data_opts_init(&o);
    o.size = 6;
    ltr_dataset *d = open_ok(ck_tmp_path("epochs"), &o);
    for (int e = 0; e < 5; e++) {
        int seen[7] = {0};
        for (int k = 0; k < 7; k++) {
            int64_t i = ltr_dataset_index_at(d, 42, e * 7 + k);
            ck_assert(i >= 0 && i < 7);
            seen[i]++;
        }
        for (int i = 0; i < 7; i++) ck_assert_int_eq(seen[i], 1);
    }
    /* Epochs differ from one another and between seeds. */
    int same01 = 1, same_seed = 1;
    for (int k = 0; k < 7; k++) {
        if (ltr_dataset_index_at(d, 42, k) != ltr_dataset_index_at(d, 42, 7 + k)) same01 = 0;
        if (ltr_dataset_index_at(d, 42, k) != ltr_dataset_index_at(d, 43, k)) same_seed = 0;
    }
    ck_assert(!same01);
    ck_assert(!same_seed);
    /* Batches of 3 straddle the epochs: batch b holds positions 3b..3b+2. */
    float img[3 * 108], one[108];
    int64_t lab[3];
    for (int step = 0; step < 10; step++) {
        ck_assert_int_eq(ltr_dataset_batch(d, 42, step, 3, img, lab, NULL), LDM_OK);
        for (int b = 0; b < 3; b++) {
            int64_t pos = step * 3 + b, i = ltr_dataset_index_at(d, 42, pos);
            ck_assert_int_eq(lab[b], i % 4);
            ck_assert_int_eq(ltr_dataset_image(d, 42, pos / 7, i, one), LDM_OK);
            ck_assert_mem_eq(img + b * 108, one, sizeof one);
        }
    }
    ltr_dataset_free(d);
}
END_TEST

START_TEST(resume_gives_the_same_batches)
{
    make_set("resume", 11);
    ltr_data_opts o;
    ltr_data_opts_init(&o);
    o.size = 4;
    o.crop = LTR_CROP_RANDOM;
    o.flip = 0.5f;
    enum { B = 4, STEPS = 12, PER = 3 * 16 };
    static float run[STEPS][B * PER];
    static int64_t lab[STEPS][B];
    ltr_dataset *d = open_ok(ck_tmp_path("resume"), &o);
    for (int s = 0; s < STEPS; s++) ck_assert_int_eq(ltr_dataset_batch(d, 7, s, B, run[s], lab[s], NULL), LDM_OK);
    ltr_dataset_free(d);
    /* A new handle (a resumed run) asked for steps in another order, with and without the cache. */
    for (int cache = 0; cache < 2; cache++) {
        o.cache_bytes = cache ? (size_t)1 << 20 : 0;
        d = open_ok(ck_tmp_path("resume"), &o);
        for (int s = STEPS - 1; s >= 5; s -= 2) {
            float img[B * PER];
            int64_t l[B];
            ck_assert_int_eq(ltr_dataset_batch(d, 7, s, B, img, l, NULL), LDM_OK);
            ck_assert_mem_eq(img, run[s], sizeof img);
            ck_assert_mem_eq(l, lab[s], sizeof l);
        }
        ltr_dataset_free(d);
    }
    /* Another seed, another sequence. */
    d = open_ok(ck_tmp_path("resume"), &o);
    float img[B * PER];
    ck_assert_int_eq(ltr_dataset_batch(d, 8, 0, B, img, NULL, NULL), LDM_OK);
    ck_assert(memcmp(img, run[0], sizeof img) != 0);
    ck_assert_int_eq(ltr_dataset_batch(d, 7, -1, B, img, NULL, NULL), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ltr_dataset_batch(d, 7, INT64_MAX / 2, B, img, NULL, NULL), LDM_ERR_INVALID_ARGUMENT);
    ltr_dataset_free(d);
}
END_TEST

START_TEST(flips)
{
    const char *dir = fresh_dir("flip");
    write_rgb(dir, "g.png", 5, 5, 0);
    ltr_data_opts o;
    ltr_data_opts_init(&o);
    o.size = 5;
    float a[75], ref[75];
    /* flip = 0: never flipped (the glyph set); flip = 1: always mirrored. */
    ltr_dataset *d = open_ok(dir, &o);
    ck_assert_int_eq(ltr_dataset_image(d, 1, 0, 0, ref), LDM_OK);
    for (int e = 0; e < 50; e++) {
        ck_assert_int_eq(ltr_dataset_image(d, 1, e, 0, a), LDM_OK);
        ck_assert_mem_eq(a, ref, sizeof a);
    }
    ltr_dataset_free(d);
    o.flip = 1;
    d = open_ok(dir, &o);
    ck_assert_int_eq(ltr_dataset_image(d, 1, 0, 0, a), LDM_OK);
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < 5; y++)
            for (int x = 0; x < 5; x++) ck_assert_float_eq(a[c * 25 + y * 5 + x], ref[c * 25 + y * 5 + 4 - x]);
    ltr_dataset_free(d);
    /* flip = 0.5: about half of the epochs. */
    o.flip = 0.5f;
    d = open_ok(dir, &o);
    int flipped = 0;
    for (int e = 0; e < 400; e++) {
        ck_assert_int_eq(ltr_dataset_image(d, 1, e, 0, a), LDM_OK);
        flipped += memcmp(a, ref, sizeof a) != 0;
    }
    ck_assert_msg(flipped > 160 && flipped < 240, "%d of 400 flipped", flipped);
    ltr_dataset_free(d);
}
END_TEST

/* ---------------------------------------------------------------- the glyph judge */

/* tests/data/glyphs/<name>, found from this file's path (make runs the tests from the source
 * root, meson from its build folder: __FILE__ is relative to either). */
static const char *glyph_data(const char *name)
{
    static char path[1024];
    const char *slash = strrchr(__FILE__, '/');
    int dirlen = slash ? (int)(slash - __FILE__) : 0;
    snprintf(path, sizeof path, "%.*s%sdata/glyphs/%s", dirlen, __FILE__, slash ? "/" : "", name);
    return path;
}

START_TEST(judge_recognises_held_out_glyphs)
{
    glyph_judge *j = NULL;
    ck_assert_msg(glyph_judge_load(glyph_data("templates.png"), &j) == LDM_OK, "%s: %s", glyph_data("templates.png"),
                  ldm_last_error());
    ck_assert_int_ge(glyph_judge_faces(j), 10);
    /* heldout.png: 62 columns (classes) x rows of faces that are not among the templates, with
     * the data set's jitter and colours. */
    ldm_tensor *t = NULL;
    ck_assert_int_eq(ldm_image_read_png(glyph_data("heldout.png"), &t), LDM_OK);
    int64_t h = ldm_tensor_dim(t, 2), w = ldm_tensor_dim(t, 3);
    ck_assert_int_eq(w, 62 * 32);
    const float *px = ldm_tensor_data(t);
    int total = 0, right = 0;
    float img[3 * 1024];
    for (int64_t row = 0; row < h / 32; row++)
        for (int k = 0; k < 62; k++) {
            for (int c = 0; c < 3; c++)
                for (int y = 0; y < 32; y++)
                    memcpy(img + (c * 32 + y) * 32, px + (c * h + row * 32 + y) * w + k * 32, 32 * sizeof(float));
            glyph_judge_result r;
            glyph_judge_classify(j, img, &r);
            total++;
            right += r.cls == k;
            ck_assert(r.confidence >= 0 && r.confidence <= 1 && r.score <= 1.0001f);
        }
    ldm_tensor_free(t);
    ck_assert_int_ge(total, 124);
    ck_assert_msg(right * 100 >= total * 90, "judge: %d of %d right", right, total);
    /* A blank image has no class; a flat image with a little noise neither. */
    for (int p = 0; p < 3 * 1024; p++) img[p] = 0.8f + 0.01f * (float)(p % 3);
    glyph_judge_result r;
    glyph_judge_classify(j, img, &r);
    ck_assert_int_eq(r.cls, -1);
    ck_assert_float_eq(r.confidence, 0);
    glyph_judge_free(j);
    ck_assert_int_ne(glyph_judge_load(glyph_data("heldout-missing.png"), &j), LDM_OK);
}
END_TEST

static Suite *data_suite(void)
{
    Suite *s = suite_create("train_data");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, formats_are_read_as_rgb_bytes);
    tcase_add_test(tc, resize_and_crop);
    tcase_add_test(tc, downscale_is_antialiased);
    tcase_add_test(tc, labels_and_captions);
    tcase_add_test(tc, bad_labels_are_named);
    tcase_add_test(tc, bad_folders_and_images);
    tcase_add_test(tc, epochs_cover_every_image_once);
    tcase_add_test(tc, resume_gives_the_same_batches);
    tcase_add_test(tc, flips);
    tcase_add_test(tc, judge_recognises_held_out_glyphs);
    suite_add_tcase(s, tc);
    return s;
}

/* As ck_run_in_tmpdir, but the scratch folder holds folders: removed as a tree. */
int main(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(ck_tmpdir, sizeof ck_tmpdir, "%s/ldm-train-data-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(ck_tmpdir)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    int status = ck_run_suite(data_suite());
    nftw(ck_tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return status;
}
