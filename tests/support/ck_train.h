/* ck_train.h - the scratch side of an ldm_trainer test: a root folder per test (checked fixture:
 * ck_train_root_create / ck_train_root_remove), the tiny data sets the trainer reads (16x16 bars
 * labelled by orientation, 8x8 bright halves captioned "a bright top" / "a bright bottom"), the
 * shared SD 1.x fixture's config shrunk for training, run parameters, a loss recorder, one run
 * start to end, and the bitwise comparison of two runs' checkpoints. Header-only like
 * ck_fixture.h (each program includes it once). Uses lib/io/weights.h for the comparison. */
#ifndef LDM_TESTS_CK_TRAIN_H
#define LDM_TESTS_CK_TRAIN_H

/* paths here are short temporary ones; gcc cannot see that */
#pragma GCC diagnostic ignored "-Wformat-truncation"
#include <check.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ck_fixture.h"
#include "io/weights.h"
#include "ldm.h"

static inline void ck_train_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

/* root (512 bytes) = a new folder $TMPDIR/ldm-<tag>-XXXXXX (or under /tmp). */
static inline void ck_train_root_create(char root[512], const char *tag)
{
    const char *base = getenv("TMPDIR");
    snprintf(root, 512, "%s/ldm-%s-XXXXXX", base && *base ? base : "/tmp", tag);
    ck_assert_ptr_nonnull(mkdtemp(root));
}

static inline int ck_train_remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* root and everything below it. */
static inline void ck_train_root_remove(const char *root)
{
    nftw(root, ck_train_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* <dir>/img%02d.png and labels.csv: n images of 16x16 in 3 classes, a bar whose orientation is
 * the class (i % 3), on a ground tinted by the image and channel. */
static inline void ck_train_make_bars(const char *dir, int n)
{
    mkdir(dir, 0777);
    char path[700], csv[4096] = "file,label\n";
    int64_t shape[4] = {1, 3, 16, 16};
    for (int i = 0; i < n; i++) {
        int cls = i % 3;
        ldm_tensor *img = NULL;
        ck_assert_int_eq(ldm_tensor_create(LDM_F32, 4, shape, &img), LDM_OK);
        float *p = ldm_tensor_data(img);
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < 16; y++)
                for (int x = 0; x < 16; x++) {
                    int on = cls == 0 ? (y >= 6 && y < 10) : cls == 1 ? (x >= 6 && x < 10) : abs(x - y) < 2;
                    p[(c * 16 + y) * 16 + x] = on ? -0.8f : 0.6f + 0.1f * (float)((i + c) % 3);
                }
        snprintf(path, sizeof path, "%s/img%02d.png", dir, i);
        ck_assert_int_eq(ldm_image_write_png(path, img, NULL, NULL, 0), LDM_OK);
        ldm_tensor_free(img);
        size_t k = strlen(csv);
        snprintf(csv + k, sizeof csv - k, "img%02d.png,%d\n", i, cls);
    }
    snprintf(path, sizeof path, "%s/labels.csv", dir);
    ck_train_write_file(path, csv);
}

static const char *const CK_TRAIN_CAPTIONS[2] = {"a bright top", "a bright bottom"};

/* The 8x8 image of caption k: bright top half (k 0) or bottom half (k 1), tinted by i. */
static inline void ck_train_fill_halves(float *p, int k, int i)
{
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < 8; y++)
            for (int x = 0; x < 8; x++) {
                int bright = k == 0 ? y < 4 : y >= 4;
                p[(c * 8 + y) * 8 + x] = bright ? 0.8f - 0.05f * (float)((i + c) % 3) : -0.7f;
            }
}

/* <dir>/img%02d.png and labels.csv: 8 images, caption CK_TRAIN_CAPTIONS[i % 2]; with
 * drop_one_caption, image 3 has a number instead of a caption. */
static inline void ck_train_make_halves(const char *dir, int drop_one_caption)
{
    mkdir(dir, 0777);
    char path[700], csv[4096] = "file,caption\n";
    int64_t shape[4] = {1, 3, 8, 8};
    for (int i = 0; i < 8; i++) {
        ldm_tensor *img = NULL;
        ck_assert_int_eq(ldm_tensor_create(LDM_F32, 4, shape, &img), LDM_OK);
        ck_train_fill_halves(ldm_tensor_data(img), i % 2, i);
        snprintf(path, sizeof path, "%s/img%02d.png", dir, i);
        ck_assert_int_eq(ldm_image_write_png(path, img, NULL, NULL, 0), LDM_OK);
        ldm_tensor_free(img);
        size_t n = strlen(csv);
        if (drop_one_caption && i == 3)
            snprintf(csv + n, sizeof csv - n, "img%02d.png,2\n", i);
        else
            snprintf(csv + n, sizeof csv - n, "img%02d.png,\"%s\"\n", i, CK_TRAIN_CAPTIONS[i % 2]);
    }
    snprintf(path, sizeof path, "%s/labels.csv", dir);
    ck_train_write_file(path, csv);
}

/* <fixture>/config.yaml written to path with 8x8 latents (the fixture's first stage has factor
 * 1), batch 4, model_extra (or NULL) under model.params, top_extra (or NULL) at the top level;
 * use_checkpoint 0 or 1 sets the config's `use_checkpoint: true` (which must be there), -1
 * leaves it. */
static inline void ck_train_sd1_config(const char *fixture, const char *path, const char *model_extra,
                                       const char *top_extra, int use_checkpoint)
{
    char src[4200];
    snprintf(src, sizeof src, "%s/config.yaml", fixture);
    FILE *f = fopen(src, "r");
    ck_assert_ptr_nonnull(f);
    static char text[16384], out[20000];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    char *o = out;
    int seen = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (!strcmp(line, "    image_size: 64")) line = "    image_size: 8";
        if (use_checkpoint >= 0 && !strcmp(line, "        use_checkpoint: true")) {
            line = use_checkpoint ? "        use_checkpoint: true" : "        use_checkpoint: false";
            seen = 1;
        }
        o += sprintf(o, "%s\n", line);
        if (!strcmp(line, "  params:") && model_extra) o += sprintf(o, "%s", model_extra);
    }
    ck_assert_msg(use_checkpoint < 0 || seen, "the fixture's config no longer sets use_checkpoint: true");
    sprintf(o, "data:\n  params: {batch_size: 4}\n%s", top_extra ? top_extra : "");
    ck_train_write_file(path, out);
}

/* setup() of a fine-tuning test on the shared fixture ldm_sd1_txt2img: its folder, the shared
 * vocabulary folder and its checkpoint into fixture / vocab (4096 bytes) and base_ckpt (4200), a
 * new root (ck_train_root_create) with <root>/data of captioned halves (ck_train_make_halves).
 * 0 when $LDM_SHARED lacks the fixture (fixture_dir says so). */
static inline int ck_train_sd1_setup(char root[512], const char *tag, char *fixture, char *vocab, char *base_ckpt)
{
    int have_shared = fixture_dir("ldm_sd1_txt2img", fixture, 4096);
    snprintf(vocab, 4096, "%s/vocab", fx_shared_dir());
    snprintf(base_ckpt, 4200, "%s/model.safetensors", fixture);
    ck_train_root_create(root, tag);
    char path[700];
    snprintf(path, sizeof path, "%s/data", root);
    ck_train_make_halves(path, 0);
    return have_shared;
}

/* Params of a run on <root>/data into <root>/<out>, 2 threads (static buffers: valid until the
 * next call). */
static inline ldm_train_params ck_train_params(const char *root, const char *out, uint64_t seed)
{
    static char data[700], outp[700];
    snprintf(data, sizeof data, "%s/data", root);
    snprintf(outp, sizeof outp, "%s/%s", root, out);
    ldm_train_params p;
    ldm_train_params_init(&p);
    p.data_dir = data, p.out_dir = outp, p.n_threads = 2, p.seed = seed;
    return p;
}

/* A trainer on cfg with p, run to its end. */
static inline void ck_train_run(const char *cfg, const ldm_train_params *p)
{
    ldm_trainer *t = NULL;
    ck_assert_msg(ldm_trainer_create(cfg, p, &t) == LDM_OK, "%s", ldm_last_error());
    ck_assert_msg(ldm_trainer_run(t) == LDM_OK, "%s", ldm_last_error());
    ldm_trainer_free(t);
}

/* Mean loss of the first and of the last `window` steps of a run of `total` steps; n counts the
 * calls. ck_train_record_loss is the progress callback (user_data: the ck_train_losses). */
typedef struct ck_train_losses {
    double first, last;
    int window, total, n;
} ck_train_losses;

static inline int ck_train_record_loss(const ldm_train_progress *p, void *user)
{
    ck_train_losses *l = user;
    if (p->step <= l->window) l->first += p->loss / l->window;
    if (p->step > l->total - l->window) l->last += p->loss / l->window;
    l->n++;
    return 0;
}

/* Every tensor of <root>/<a_dir>/<file> is in <root>/<b_dir>/<file>, bit for bit, and no more. */
static inline void ck_train_expect_same(const char *root, const char *a_dir, const char *b_dir, const char *file)
{
    char pa[700], pb[700];
    snprintf(pa, sizeof pa, "%s/%s/%s", root, a_dir, file);
    snprintf(pb, sizeof pb, "%s/%s/%s", root, b_dir, file);
    lw_store *a = NULL, *b = NULL;
    ck_assert_int_eq(lw_open(pa, 0, &a), LDM_OK);
    ck_assert_int_eq(lw_open(pb, 0, &b), LDM_OK);
    ck_assert_uint_eq(lw_count(a), lw_count(b));
    for (size_t i = 0; i < lw_count(a); i++) {
        const lw_tensor *ta = lw_at(a, i), *tb = lw_find(b, ta->name);
        ck_assert_msg(tb != NULL, "%s: %s missing in %s", file, ta->name, b_dir);
        ck_assert_msg(ta->nbytes == tb->nbytes && memcmp(ta->data, tb->data, ta->nbytes) == 0,
                      "%s: %s differs between %s and %s", file, ta->name, a_dir, b_dir);
    }
    lw_close(a);
    lw_close(b);
}

#endif
