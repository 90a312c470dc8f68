/* test_png.c - PNG reading and writing: round trips with the reference's pixel mapping, tEXt /
 * iTXt metadata, every colour type libpng can hand us, size limits, and corrupt or truncated
 * files (which must fail cleanly, never crash). Test images are made here with libpng. */
#include <check.h>

#include "ldm.h"
#include "support/ck_bytes.h"
#include "support/ck_child.h"
#include "support/ck_tmpdir.h"

#include <dirent.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static void write_whole(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    if (len) ck_assert_uint_eq(fwrite(data, 1, len, f), len);
    fclose(f);
}

/* The reference's mapping of a byte to [-1,1]: np.float32(v) / 255.0, then 2*x - 1. */
static float byte_to_unit(unsigned v)
{
    float x = (float)v / 255.0f;
    return 2.0f * x - 1.0f;
}

/* ---------------------------------------------------------------- writing test images with libpng */

typedef struct {
    int color_type, bit_depth, interlace;
    uint32_t w, h;
    const unsigned char *rows; /* packed rows as libpng expects them for the format */
    size_t rowbytes;
    const png_color *palette;
    int n_palette;
    const unsigned char *trns;
    int n_trns;
} raw_png;

static void write_raw_png(const char *path, const raw_png *r)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    ck_assert(!setjmp(png_jmpbuf(png)));
    png_init_io(png, f);
    png_set_IHDR(png, info, r->w, r->h, r->bit_depth, r->color_type, r->interlace, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (r->palette) png_set_PLTE(png, info, r->palette, r->n_palette);
    if (r->trns) png_set_tRNS(png, info, r->trns, r->n_trns, NULL);
    png_write_info(png, info);
    int passes = png_set_interlace_handling(png);
    for (int p = 0; p < passes; p++)
        for (uint32_t y = 0; y < r->h; y++) png_write_row(png, r->rows + y * r->rowbytes);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    fclose(f);
}

static ldm_tensor *make_image(int batch, int64_t h, int64_t w, float (*fn)(int c, int64_t y, int64_t x))
{
    ldm_tensor *t = NULL;
    int64_t shape[4] = {batch, 3, h, w};
    ck_assert_int_eq(ldm_tensor_create(LDM_F32, 4, shape, &t), LDM_OK);
    float *d = ldm_tensor_data(t);
    for (int c = 0; c < 3; c++)
        for (int64_t y = 0; y < h; y++)
            for (int64_t x = 0; x < w; x++) d[(c * h + y) * w + x] = fn(c, y, x);
    return t;
}

/* A value that the writer maps to byte (c*50 + y*7 + x*3) % 256: the centre of that byte's bin. */
static unsigned pattern_byte(int c, int64_t y, int64_t x) { return (unsigned)((c * 50 + y * 7 + x * 3) % 256); }
static float pattern_value(int c, int64_t y, int64_t x)
{
    return ((float)pattern_byte(c, y, x) + 0.5f) / 255.0f * 2.0f - 1.0f;
}

START_TEST(round_trip_is_exact)
{
    ldm_tensor *img = make_image(2, 37, 53, pattern_value); /* only batch item 0 is written */
    const char *path = ck_tmp_path("rt.png");
    ck_assert_msg(ldm_image_write_png(path, img, NULL, NULL, 0) == LDM_OK, "%s", ldm_last_error());
    ldm_tensor *back = NULL;
    ck_assert_msg(ldm_image_read_png(path, &back) == LDM_OK, "%s", ldm_last_error());
    ck_assert_int_eq(ldm_tensor_ndim(back), 4);
    ck_assert_int_eq(ldm_tensor_dim(back, 0), 1);
    ck_assert_int_eq(ldm_tensor_dim(back, 1), 3);
    ck_assert_int_eq(ldm_tensor_dim(back, 2), 37);
    ck_assert_int_eq(ldm_tensor_dim(back, 3), 53);
    const float *d = ldm_tensor_data(back);
    for (int c = 0; c < 3; c++)
        for (int64_t y = 0; y < 37; y++)
            for (int64_t x = 0; x < 53; x++)
                ck_assert_msg(d[(c * 37 + y) * 53 + x] == byte_to_unit(pattern_byte(c, y, x)), "c%d y%lld x%lld", c,
                              (long long)y, (long long)x);
    ldm_tensor_free(back);
    ldm_tensor_free(img);
}
END_TEST

/* Writes a 1x1 [3,1,1] image with value v in every channel and returns the stored byte. */
static unsigned stored_byte(float v)
{
    float px[3] = {v, v, v};
    ldm_tensor *t = NULL;
    ck_assert_int_eq(ldm_tensor_wrap(LDM_F32, 3, (int64_t[]){3, 1, 1}, px, &t), LDM_OK);
    const char *path = ck_tmp_path("px.png");
    ck_assert_int_eq(ldm_image_write_png(path, t, NULL, NULL, 0), LDM_OK);
    ldm_tensor_free(t);
    ldm_tensor *g = NULL;
    ck_assert_int_eq(ldm_image_read_png_gray(path, 0, &g), LDM_OK);
    unsigned b = (unsigned)((const float *)ldm_tensor_data(g))[0];
    ldm_tensor_free(g);
    return b;
}

START_TEST(writer_clamps_and_truncates_like_the_reference)
{
    ck_assert_uint_eq(stored_byte(-1.0f), 0);
    ck_assert_uint_eq(stored_byte(1.0f), 255);
    ck_assert_uint_eq(stored_byte(-7.0f), 0);
    ck_assert_uint_eq(stored_byte(7.0f), 255);
    ck_assert_uint_eq(stored_byte(NAN), 0);
    ck_assert_uint_eq(stored_byte(INFINITY), 255);
    ck_assert_uint_eq(stored_byte(0.0f), 127);                 /* 127.5 truncates */
    /* A byte read back as 2*(5/255)-1 is written as 4.9999995 -> 4: truncation, as astype(uint8). */
    ck_assert_uint_eq(stored_byte(byte_to_unit(5)), 4);
    ck_assert_uint_eq(stored_byte(2.0f * 100.5f / 255.0f - 1.0f), 100);
}
END_TEST

START_TEST(text_chunks_are_written)
{
    ldm_tensor *img = make_image(1, 8, 8, pattern_value);
    const char *keys[] = {"parameters", "Software", "prompt"};
    const char *values[] = {"a photo of a cat, Steps: 50, Seed: 42", ("libldm " LDM_VERSION_STRING),
                            "caf\xc3\xa9 \xe2\x98\x95"};
    const char *path = ck_tmp_path("text.png");
    ck_assert_msg(ldm_image_write_png(path, img, keys, values, 3) == LDM_OK, "%s", ldm_last_error());
    ldm_tensor_free(img);

    FILE *f = fopen(path, "rb");
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    ck_assert(!setjmp(png_jmpbuf(png)));
    png_init_io(png, f);
    png_read_info(png, info);
    png_textp text = NULL;
    int n = 0;
    png_get_text(png, info, &text, &n);
    ck_assert_int_eq(n, 3);
    for (int i = 0; i < 3; i++) {
        ck_assert_str_eq(text[i].key, keys[i]);
        ck_assert_str_eq(text[i].text, values[i]);
    }
    ck_assert_int_eq(text[0].compression, PNG_TEXT_COMPRESSION_NONE); /* tEXt */
    ck_assert_int_eq(text[2].compression, PNG_ITXT_COMPRESSION_NONE);  /* UTF-8 needs iTXt */
    png_destroy_read_struct(&png, &info, NULL);
    fclose(f);

    /* the chunk bytes themselves */
    size_t len;
    unsigned char *bytes = read_whole(path, &len);
    ck_assert_ptr_nonnull(bytes);
    ck_assert_ptr_nonnull(memmem(bytes, len, "tEXtparameters\0a photo of a cat", 31));
    free(bytes);
}
END_TEST

START_TEST(writer_rejects_bad_arguments)
{
    ldm_tensor *img = make_image(1, 4, 4, pattern_value);
    const char *long_key = "0123456789012345678901234567890123456789012345678901234567890123456789012345678901";
    const char *keys[] = {long_key}, *values[] = {"v"};
    ck_assert_int_eq(ldm_image_write_png(ck_tmp_path("k.png"), img, keys, values, 1), LDM_ERR_INVALID_ARGUMENT);
    const char *empty_key[] = {""};
    ck_assert_int_eq(ldm_image_write_png(ck_tmp_path("k.png"), img, empty_key, values, 1), LDM_ERR_INVALID_ARGUMENT);
    const char *nul_value[] = {NULL};
    ck_assert_int_eq(ldm_image_write_png(ck_tmp_path("k.png"), img, keys, nul_value, 1), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ldm_image_write_png(ck_tmp_path("k.png"), img, NULL, NULL, 2), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ldm_image_write_png(ck_tmp_path("k.png"), img, NULL, NULL, -1), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(access(ck_tmp_path("k.png"), F_OK), -1); /* nothing was created */
    ck_assert_int_eq(ldm_image_write_png(NULL, img, NULL, NULL, 0), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ldm_image_write_png(ck_tmp_path("k.png"), NULL, NULL, NULL, 0), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ldm_image_write_png("/nonexistent-dir/x.png", img, NULL, NULL, 0), LDM_ERR_IO);
    ldm_tensor_free(img);
    ldm_tensor *four = NULL;
    ck_assert_int_eq(ldm_tensor_create(LDM_F32, 4, (int64_t[]){1, 4, 2, 2}, &four), LDM_OK);
    ck_assert_int_eq(ldm_image_write_png(ck_tmp_path("k.png"), four, NULL, NULL, 0), LDM_ERR_INVALID_ARGUMENT);
    ldm_tensor_free(four);
    ldm_tensor *ints = NULL;
    ck_assert_int_eq(ldm_tensor_create(LDM_I64, 3, (int64_t[]){3, 2, 2}, &ints), LDM_OK);
    ck_assert_int_eq(ldm_image_write_png(ck_tmp_path("k.png"), ints, NULL, NULL, 0), LDM_ERR_INVALID_ARGUMENT);
    ldm_tensor_free(ints);
}
END_TEST

/* ---------------------------------------------------------------- replacing files (issue #12) */

/* Incompressible pixels, so the PNG is about as large as its raw bytes. */
static float noise_value(int c, int64_t y, int64_t x)
{
    uint32_t h = (uint32_t)(c * 0x9E3779B1u) ^ (uint32_t)(y * 0x85EBCA77u) ^ (uint32_t)(x * 0xC2B2AE3Du);
    h ^= h >> 15;
    h *= 0x2C1B3C6Du;
    h ^= h >> 12;
    return (float)(h & 0xFF) / 127.5f - 1.0f;
}

/* Names in folder `dir` other than . and .., counted; `only` (may be NULL) must be the one. */
static int count_entries(const char *dir, const char *only)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        n++;
        if (only) ck_assert_msg(strcmp(de->d_name, only) == 0, "%s: unexpected entry %s", dir, de->d_name);
    }
    closedir(d);
    return n;
}

static void make_subdir(const char *name, char *out, size_t cap)
{
    snprintf(out, cap, "%s", ck_tmp_path(name));
    ck_assert_int_eq(mkdir(out, 0755), 0);
}

/* Removes the (flat) folder made by make_subdir: ck_run_in_tmpdir only empties the top one. */
static void remove_subdir(const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    struct dirent *de;
    char path[1024];
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (rmdir(path) != 0) unlink(path);
    }
    closedir(d);
    ck_assert_int_eq(rmdir(dir), 0);
}

typedef struct {
    const char *path;
    const ldm_tensor *img;
    ldm_status want;
} write_job;

/* In a child: files may not grow past 64 KB (SIGXFSZ ignored, so writes fail with EFBIG). */
static int write_under_fsize_limit(void *arg)
{
    const write_job *j = arg;
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl = {64 << 10, 64 << 10};
    if (setrlimit(RLIMIT_FSIZE, &rl) != 0) return 90;
    ldm_status st = ldm_image_write_png(j->path, j->img, NULL, NULL, 0);
    if (st == j->want && strstr(ldm_last_error(), j->path)) return 0;
    fprintf(stderr, "%s: status %d, want %d: %s\n", j->path, st, j->want, ldm_last_error());
    return 1;
}

/* D2: `-o keep.png` that failed (disk full, file-size limit) truncated keep.png, then deleted it. */
START_TEST(failed_write_keeps_the_previous_file)
{
    char dir[512], keep[600];
    make_subdir("fsize", dir, sizeof dir);
    snprintf(keep, sizeof keep, "%s/keep.png", dir);
    ldm_tensor *small = make_image(1, 8, 8, pattern_value), *big = make_image(1, 256, 256, noise_value);
    ck_assert_int_eq(ldm_image_write_png(keep, small, NULL, NULL, 0), LDM_OK);
    size_t len0, len1;
    unsigned char *before = read_whole(keep, &len0);
    write_job j = {keep, big, LDM_ERR_IO};
    int rc = ck_child_run(write_under_fsize_limit, &j, 60);
    ck_assert_msg(rc == 0, "child ended with %d (see stderr)", rc);
    unsigned char *after = read_whole(keep, &len1);
    ck_assert_msg(after != NULL, "keep.png was deleted by the failed write");
    ck_assert_msg(len0 == len1 && memcmp(before, after, len0) == 0, "keep.png changed");
    ck_assert_int_eq(count_entries(dir, "keep.png"), 1); /* no temporary file left */
    /* without the limit the same write replaces it */
    ck_assert_msg(ldm_image_write_png(keep, big, NULL, NULL, 0) == LDM_OK, "%s", ldm_last_error());
    ldm_tensor *back = NULL;
    ck_assert_int_eq(ldm_image_read_png(keep, &back), LDM_OK);
    ck_assert_int_eq(ldm_tensor_dim(back, 3), 256);
    ck_assert_int_eq(count_entries(dir, "keep.png"), 1);
    ldm_tensor_free(back);
    free(before);
    free(after);
    ldm_tensor_free(small);
    ldm_tensor_free(big);
    remove_subdir(dir);
}
END_TEST

START_TEST(write_into_missing_or_read_only_folder)
{
    ldm_tensor *img = make_image(1, 4, 4, pattern_value);
    const char *missing = ck_tmp_path("no-such-folder/x.png");
    ck_assert_int_eq(ldm_image_write_png(missing, img, NULL, NULL, 0), LDM_ERR_IO);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), missing));
    char dir[512], path[600];
    make_subdir("read-only", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/x.png", dir);
    ck_assert_int_eq(chmod(dir, 0555), 0);
    /* root writes into a 0555 folder anyway: then only the message-free success is checked */
    ldm_status st = ldm_image_write_png(path, img, NULL, NULL, 0);
    if (geteuid() != 0) {
        ck_assert_int_eq(st, LDM_ERR_IO);
        ck_assert_ptr_nonnull(strstr(ldm_last_error(), path));
        ck_assert_int_eq(count_entries(dir, NULL), 0);
    } else {
        ck_assert_int_eq(st, LDM_OK);
    }
    ck_assert_int_eq(chmod(dir, 0755), 0);
    remove_subdir(dir);
    ldm_tensor_free(img);
}
END_TEST

/* A write that must be refused, in a child with a time limit: the old writer blocked forever in
 * fopen() on a FIFO without a reader. */
static int refused_write(void *arg)
{
    const write_job *j = arg;
    ldm_status st = ldm_image_write_png(j->path, j->img, NULL, NULL, 0);
    if (st == LDM_ERR_INVALID_ARGUMENT && strstr(ldm_last_error(), j->path)) return 0;
    fprintf(stderr, "%s: status %d: %s\n", j->path, st, ldm_last_error());
    return 1;
}

static void expect_refused(const char *path, const ldm_tensor *img, mode_t kind)
{
    write_job j = {path, img, LDM_ERR_INVALID_ARGUMENT};
    int rc = ck_child_run(refused_write, &j, 20);
    ck_assert_msg(rc == 0, "%s: child ended with %d (142: it blocked; see stderr)", path, rc);
    struct stat sb;
    ck_assert_msg(lstat(path, &sb) == 0, "%s was deleted", path);
    ck_assert_msg((sb.st_mode & S_IFMT) == kind, "%s changed kind", path);
}

/* A character device like /dev/full (1,7): our own node in the scratch folder when we may make
 * one (root), so that a regression deletes that copy, never the real one; else /dev/full itself,
 * which a user who is not root cannot delete. NULL when neither is usable. */
static const char *full_device(void)
{
    const char *copy = ck_tmp_path("full");
    if (mknod(copy, S_IFCHR | 0666, makedev(1, 7)) == 0) return copy;
    return geteuid() != 0 && access("/dev/full", W_OK) == 0 ? "/dev/full" : NULL;
}

/* D3: the writer never opens, truncates or deletes anything but a regular file (as root,
 * `-o /dev/full` deleted the device node). A symbolic link to a regular file is written through. */
START_TEST(writer_refuses_what_is_not_a_regular_file)
{
    ldm_tensor *img = make_image(1, 4, 4, pattern_value);
    const char *fifo = ck_tmp_path("fifo");
    ck_assert_int_eq(mkfifo(fifo, 0644), 0);
    expect_refused(fifo, img, S_IFIFO);
    char link_to_fifo[600];
    snprintf(link_to_fifo, sizeof link_to_fifo, "%s", ck_tmp_path("link-to-fifo"));
    ck_assert_int_eq(symlink("fifo", link_to_fifo), 0);
    expect_refused(link_to_fifo, img, S_IFLNK);
    char dir[512];
    make_subdir("a-folder", dir, sizeof dir);
    expect_refused(dir, img, S_IFDIR);
    rmdir(dir);
    const char *dev = full_device();
    if (dev) {
        char devpath[600];
        snprintf(devpath, sizeof devpath, "%s", dev);
        expect_refused(devpath, img, S_IFCHR);
        if (strcmp(devpath, "/dev/full") != 0) unlink(devpath);
    }
    /* a link that leads nowhere: not followed into a new file */
    const char *dangling = ck_tmp_path("dangling.png");
    ck_assert_int_eq(symlink("nowhere/x.png", dangling), 0);
    ck_assert_int_eq(ldm_image_write_png(dangling, img, NULL, NULL, 0), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "dangling.png"));
    ldm_tensor_free(img);
}
END_TEST

START_TEST(symlink_to_a_file_is_written_through)
{
    ldm_tensor *small = make_image(1, 4, 4, pattern_value), *other = make_image(1, 6, 5, pattern_value);
    char real[600], link[600];
    snprintf(real, sizeof real, "%s", ck_tmp_path("real.png"));
    snprintf(link, sizeof link, "%s", ck_tmp_path("link.png"));
    ck_assert_int_eq(ldm_image_write_png(real, small, NULL, NULL, 0), LDM_OK);
    ck_assert_int_eq(symlink("real.png", link), 0);
    ck_assert_msg(ldm_image_write_png(link, other, NULL, NULL, 0) == LDM_OK, "%s", ldm_last_error());
    struct stat sb;
    ck_assert_int_eq(lstat(link, &sb), 0);
    ck_assert(S_ISLNK(sb.st_mode)); /* the link stays a link */
    ldm_tensor *back = NULL;
    ck_assert_int_eq(ldm_image_read_png(real, &back), LDM_OK);
    ck_assert_int_eq(ldm_tensor_dim(back, 3), 5); /* and its target holds the new image */
    ldm_tensor_free(back);
    ldm_tensor_free(small);
    ldm_tensor_free(other);
}
END_TEST

/* A new file gets 0666 less the umask, as fopen would; a replaced one keeps its permissions. */
START_TEST(written_files_have_the_usual_permissions)
{
    ldm_tensor *img = make_image(1, 4, 4, pattern_value);
    mode_t old_mask = umask(027);
    const char *fresh = ck_tmp_path("fresh.png");
    ck_assert_int_eq(ldm_image_write_png(fresh, img, NULL, NULL, 0), LDM_OK);
    struct stat sb;
    ck_assert_int_eq(stat(fresh, &sb), 0);
    ck_assert_int_eq(sb.st_mode & 0777, 0640);
    ck_assert_int_eq(chmod(fresh, 0604), 0);
    ck_assert_int_eq(ldm_image_write_png(fresh, img, NULL, NULL, 0), LDM_OK);
    ck_assert_int_eq(stat(fresh, &sb), 0);
    ck_assert_int_eq(sb.st_mode & 0777, 0604);
    umask(old_mask);
    ldm_tensor_free(img);
}
END_TEST

/* D5: a FIFO given as an image to read is refused at once instead of blocking in open(). */
static int read_fifo(void *arg)
{
    const char *path = arg;
    ldm_tensor *t = NULL;
    ldm_status a = ldm_image_read_png(path, &t), b = ldm_image_read_png_gray(path, 1, &t);
    if (a == LDM_ERR_IO && b == LDM_ERR_IO && strstr(ldm_last_error(), path) && strstr(ldm_last_error(), "FIFO"))
        return 0;
    fprintf(stderr, "%s: status %d / %d: %s\n", path, a, b, ldm_last_error());
    return 1;
}

START_TEST(reading_a_fifo_fails_at_once)
{
    char fifo[600];
    snprintf(fifo, sizeof fifo, "%s", ck_tmp_path("in-fifo.png"));
    ck_assert_int_eq(mkfifo(fifo, 0644), 0);
    int rc = ck_child_run(read_fifo, fifo, 20);
    ck_assert_msg(rc == 0, "child ended with %d (142: it blocked; see stderr)", rc);
    ck_assert_int_eq(access(fifo, F_OK), 0);
}
END_TEST

/* ---------------------------------------------------------------- reading every colour type */

static ldm_tensor *read_rgb(const char *path)
{
    ldm_tensor *t = NULL;
    ck_assert_msg(ldm_image_read_png(path, &t) == LDM_OK, "%s", ldm_last_error());
    ck_assert_int_eq(ldm_tensor_dim(t, 1), 3);
    return t;
}

static void expect_pixel(const ldm_tensor *t, int64_t y, int64_t x, unsigned r, unsigned g, unsigned b)
{
    int64_t h = ldm_tensor_dim(t, 2), w = ldm_tensor_dim(t, 3);
    const float *d = ldm_tensor_data((ldm_tensor *)t);
    unsigned want[3] = {r, g, b};
    for (int c = 0; c < 3; c++)
        ck_assert_msg(d[(c * h + y) * w + x] == byte_to_unit(want[c]), "pixel (%lld,%lld) channel %d: %g, want %u",
                      (long long)y, (long long)x, c, (double)d[(c * h + y) * w + x], want[c]);
}

START_TEST(reads_gray_palette_alpha_and_16_bit)
{
    /* 8-bit gray: replicated to three channels */
    unsigned char gray[2 * 3] = {0, 128, 255, 10, 20, 30};
    raw_png g = {PNG_COLOR_TYPE_GRAY, 8, PNG_INTERLACE_NONE, 3, 2, gray, 3, NULL, 0, NULL, 0};
    write_raw_png(ck_tmp_path("g8.png"), &g);
    ldm_tensor *t = read_rgb(ck_tmp_path("g8.png"));
    expect_pixel(t, 0, 1, 128, 128, 128);
    expect_pixel(t, 1, 2, 30, 30, 30);
    ldm_tensor_free(t);

    /* 1-bit gray: expands to 0/255 */
    unsigned char bits[2] = {0xA0, 0x40}; /* row 0: 1 0 1, row 1: 0 1 0 */
    raw_png g1 = {PNG_COLOR_TYPE_GRAY, 1, PNG_INTERLACE_NONE, 3, 2, bits, 1, NULL, 0, NULL, 0};
    write_raw_png(ck_tmp_path("g1.png"), &g1);
    t = read_rgb(ck_tmp_path("g1.png"));
    expect_pixel(t, 0, 0, 255, 255, 255);
    expect_pixel(t, 0, 1, 0, 0, 0);
    expect_pixel(t, 1, 1, 255, 255, 255);
    ldm_tensor_free(t);

    /* gray + alpha: alpha dropped */
    unsigned char ga[2 * 2] = {77, 0, 200, 255};
    raw_png gap = {PNG_COLOR_TYPE_GRAY_ALPHA, 8, PNG_INTERLACE_NONE, 2, 1, ga, 4, NULL, 0, NULL, 0};
    write_raw_png(ck_tmp_path("ga.png"), &gap);
    t = read_rgb(ck_tmp_path("ga.png"));
    expect_pixel(t, 0, 0, 77, 77, 77);
    expect_pixel(t, 0, 1, 200, 200, 200);
    ldm_tensor_free(t);

    /* RGBA, interlaced: alpha dropped */
    unsigned char rgba[3 * 3 * 4];
    for (int i = 0; i < 9; i++) {
        rgba[i * 4 + 0] = (unsigned char)(i * 10);
        rgba[i * 4 + 1] = (unsigned char)(100 + i);
        rgba[i * 4 + 2] = (unsigned char)(250 - i);
        rgba[i * 4 + 3] = (unsigned char)(i * 20);
    }
    raw_png ra = {PNG_COLOR_TYPE_RGB_ALPHA, 8, PNG_INTERLACE_ADAM7, 3, 3, rgba, 12, NULL, 0, NULL, 0};
    write_raw_png(ck_tmp_path("rgba.png"), &ra);
    t = read_rgb(ck_tmp_path("rgba.png"));
    expect_pixel(t, 2, 1, 70, 107, 243);
    ldm_tensor_free(t);

    /* 16-bit RGB: the high byte, as PIL */
    unsigned char rgb16[1 * 2 * 6] = {0x12, 0xFF, 0x80, 0x01, 0xFF, 0xFF, 0x00, 0x7F, 0x7F, 0x80, 0xAB, 0xCD};
    raw_png r16 = {PNG_COLOR_TYPE_RGB, 16, PNG_INTERLACE_NONE, 2, 1, rgb16, 12, NULL, 0, NULL, 0};
    write_raw_png(ck_tmp_path("rgb16.png"), &r16);
    t = read_rgb(ck_tmp_path("rgb16.png"));
    expect_pixel(t, 0, 0, 0x12, 0x80, 0xFF);
    expect_pixel(t, 0, 1, 0x00, 0x7F, 0xAB);
    ldm_tensor_free(t);

    /* palette with transparency: colours, no alpha; read_png_gray(normalize=0) gives indices */
    png_color pal[3] = {{255, 0, 0}, {0, 255, 0}, {10, 20, 30}};
    unsigned char trns[3] = {0, 128, 255};
    unsigned char idx[4] = {2, 0, 1, 2};
    raw_png p = {PNG_COLOR_TYPE_PALETTE, 8, PNG_INTERLACE_NONE, 2, 2, idx, 2, pal, 3, trns, 3};
    write_raw_png(ck_tmp_path("pal.png"), &p);
    t = read_rgb(ck_tmp_path("pal.png"));
    expect_pixel(t, 0, 0, 10, 20, 30);
    expect_pixel(t, 0, 1, 255, 0, 0);
    expect_pixel(t, 1, 0, 0, 255, 0);
    ldm_tensor_free(t);
    ck_assert_int_eq(ldm_image_read_png_gray(ck_tmp_path("pal.png"), 0, &t), LDM_OK);
    const float *d = ldm_tensor_data(t);
    ck_assert(d[0] == 2 && d[1] == 0 && d[2] == 1 && d[3] == 2);
    ldm_tensor_free(t);
    /* normalize=1: luminance of the palette colours, as PIL's convert("L") */
    ck_assert_int_eq(ldm_image_read_png_gray(ck_tmp_path("pal.png"), 1, &t), LDM_OK);
    d = ldm_tensor_data(t);
    ck_assert(d[1] == 76.0f / 255.0f);  /* (255*19595 + 0x8000) >> 16 = 76 */
    ck_assert(d[2] == 150.0f / 255.0f); /* (255*38470 + 0x8000) >> 16 = 150 */
    ldm_tensor_free(t);

    /* 4-bit palette indices for label maps */
    unsigned char idx4[1] = {0x5A}; /* 5, 10 */
    png_color pal16[16];
    for (int i = 0; i < 16; i++) pal16[i] = (png_color){(png_byte)(i * 16), 0, 0};
    raw_png p4 = {PNG_COLOR_TYPE_PALETTE, 4, PNG_INTERLACE_NONE, 2, 1, idx4, 1, pal16, 16, NULL, 0};
    write_raw_png(ck_tmp_path("pal4.png"), &p4);
    ck_assert_int_eq(ldm_image_read_png_gray(ck_tmp_path("pal4.png"), 0, &t), LDM_OK);
    ck_assert_int_eq(ldm_tensor_dim(t, 1), 1);
    d = ldm_tensor_data(t);
    ck_assert(d[0] == 5 && d[1] == 10);
    ldm_tensor_free(t);
}
END_TEST

START_TEST(gray_reader_modes)
{
    unsigned char gray[4] = {0, 127, 128, 255};
    raw_png g = {PNG_COLOR_TYPE_GRAY, 8, PNG_INTERLACE_NONE, 2, 2, gray, 2, NULL, 0, NULL, 0};
    write_raw_png(ck_tmp_path("mask.png"), &g);
    ldm_tensor *t = NULL;
    ck_assert_int_eq(ldm_image_read_png_gray(ck_tmp_path("mask.png"), 1, &t), LDM_OK);
    ck_assert_int_eq(ldm_tensor_ndim(t), 4);
    ck_assert_int_eq(ldm_tensor_dim(t, 0), 1);
    ck_assert_int_eq(ldm_tensor_dim(t, 1), 1);
    ck_assert_int_eq(ldm_tensor_dim(t, 2), 2);
    const float *d = ldm_tensor_data(t);
    ck_assert(d[0] == 0.0f && d[1] == 127.0f / 255.0f && d[3] == 1.0f);
    ldm_tensor_free(t);
    ck_assert_int_eq(ldm_image_read_png_gray(ck_tmp_path("mask.png"), 0, &t), LDM_OK);
    d = ldm_tensor_data(t);
    ck_assert(d[0] == 0.0f && d[1] == 127.0f && d[2] == 128.0f && d[3] == 255.0f);
    ldm_tensor_free(t);
    /* RGB -> L with PIL's integer weights */
    unsigned char rgb[3] = {10, 200, 90};
    raw_png c = {PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_NONE, 1, 1, rgb, 3, NULL, 0, NULL, 0};
    write_raw_png(ck_tmp_path("rgbmask.png"), &c);
    ck_assert_int_eq(ldm_image_read_png_gray(ck_tmp_path("rgbmask.png"), 0, &t), LDM_OK);
    unsigned want = (10 * 19595u + 200 * 38470u + 90 * 7471u + 0x8000u) >> 16;
    ck_assert(((const float *)ldm_tensor_data(t))[0] == (float)want);
    ldm_tensor_free(t);
}
END_TEST

/* ---------------------------------------------------------------- bad files */

static void expect_read_fails(const char *path, ldm_status want)
{
    ldm_tensor *t = (ldm_tensor *)1;
    ldm_status st = ldm_image_read_png(path, &t);
    ck_assert_msg(st == want, "%s: status %d, want %d (%s)", path, st, want, ldm_last_error());
    ck_assert_ptr_null(t);
    ck_assert(ldm_last_error()[0] != '\0');
    t = (ldm_tensor *)1;
    st = ldm_image_read_png_gray(path, 0, &t);
    ck_assert_msg(st == want, "%s (gray): status %d, want %d (%s)", path, st, want, ldm_last_error());
    ck_assert_ptr_null(t);
}

START_TEST(corrupt_and_truncated_files_fail_cleanly)
{
    ldm_tensor *img = make_image(1, 24, 31, pattern_value);
    const char *keys[] = {"parameters"}, *values[] = {"x"};
    const char *path = ck_tmp_path("good.png");
    ck_assert_int_eq(ldm_image_write_png(path, img, keys, values, 1), LDM_OK);
    ldm_tensor_free(img);
    size_t len;
    unsigned char *good = read_whole(path, &len);
    ck_assert_ptr_nonnull(good);

    expect_read_fails(ck_tmp_path("missing.png"), LDM_ERR_IO);
    write_whole(ck_tmp_path("notpng.png"), "GIF89a....", 10);
    expect_read_fails(ck_tmp_path("notpng.png"), LDM_ERR_FORMAT);
    write_whole(ck_tmp_path("empty.png"), "", 0);
    expect_read_fails(ck_tmp_path("empty.png"), LDM_ERR_FORMAT);

    /* every truncation point */
    for (size_t cut = 0; cut < len; cut++) {
        write_whole(ck_tmp_path("cut.png"), good, cut);
        expect_read_fails(ck_tmp_path("cut.png"), LDM_ERR_FORMAT);
    }
    /* a flipped byte in the header or the pixel data breaks a CRC */
    unsigned char *bad = malloc(len);
    for (size_t pos = 8; pos < len; pos += 7) {
        memcpy(bad, good, len);
        bad[pos] ^= 0x55;
        write_whole(ck_tmp_path("flip.png"), bad, len);
        ldm_tensor *t = NULL;
        /* a flip in an ancillary chunk only loses that chunk; anything else must fail */
        ldm_status st = ldm_image_read_png(ck_tmp_path("flip.png"), &t);
        if (st == LDM_OK) ldm_tensor_free(t);
        else ck_assert_int_eq(st, LDM_ERR_FORMAT);
    }
    memcpy(bad, good, len);
    bad[8 + 8 + 4] ^= 0x01; /* width in IHDR */
    write_whole(ck_tmp_path("ihdr.png"), bad, len);
    expect_read_fails(ck_tmp_path("ihdr.png"), LDM_ERR_FORMAT);
    free(bad);
    free(good);
}
END_TEST

START_TEST(oversized_images_are_refused)
{
    size_t w = 20000;
    unsigned char *row = calloc(1, w);
    raw_png g = {PNG_COLOR_TYPE_GRAY, 8, PNG_INTERLACE_NONE, (uint32_t)w, 1, row, w, NULL, 0, NULL, 0};
    write_raw_png(ck_tmp_path("wide.png"), &g);
    free(row);
    expect_read_fails(ck_tmp_path("wide.png"), LDM_ERR_LIMIT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "20000x1"));
}
END_TEST

/* ldm_alloc_fail_after is internal (lib/core/common.h); tests link the static library. */
void ldm_alloc_fail_after(long n);

/* Fails the n-th allocation for n = 1, 2, ... until the call succeeds: every error path (many
 * of them inside libpng, left by longjmp) must release what it took. */
START_TEST(allocation_failures_are_clean)
{
    ldm_tensor *img = make_image(1, 16, 16, pattern_value);
    const char *keys[] = {"parameters"}, *values[] = {"caf\xc3\xa9"};
    int fails = 0;
    for (long n = 1;; n++) {
        ldm_alloc_fail_after(n);
        ldm_status st = ldm_image_write_png(ck_tmp_path("oom.png"), img, keys, values, 1);
        ldm_alloc_fail_after(0);
        if (st == LDM_OK) break;
        ck_assert_msg(st == LDM_ERR_OUT_OF_MEMORY, "write n=%ld: %d %s", n, st, ldm_last_error());
        ck_assert_int_eq(access(ck_tmp_path("oom.png"), F_OK), -1);
        fails++;
    }
    ck_assert_int_gt(fails, 2);
    /* Read an image without text chunks: libpng drops a text chunk it cannot allocate (only a
     * warning), which would end the loop early. */
    ck_assert_int_eq(ldm_image_write_png(ck_tmp_path("oom.png"), img, NULL, NULL, 0), LDM_OK);
    ldm_tensor_free(img);
    for (int gray = 0; gray < 2; gray++) {
        fails = 0;
        for (long n = 1;; n++) {
            ldm_tensor *t = NULL;
            ldm_alloc_fail_after(n);
            ldm_status st = gray ? ldm_image_read_png_gray(ck_tmp_path("oom.png"), 1, &t)
                                 : ldm_image_read_png(ck_tmp_path("oom.png"), &t);
            ldm_alloc_fail_after(0);
            if (st == LDM_OK) {
                ldm_tensor_free(t);
                break;
            }
            ck_assert_msg(st == LDM_ERR_OUT_OF_MEMORY, "read n=%ld: %d %s", n, st, ldm_last_error());
            ck_assert_ptr_null(t);
            fails++;
        }
        ck_assert_int_gt(fails, 5);
    }
}
END_TEST

static Suite *png_suite(void)
{
    Suite *s = suite_create("png");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, round_trip_is_exact);
    tcase_add_test(tc, writer_clamps_and_truncates_like_the_reference);
    tcase_add_test(tc, text_chunks_are_written);
    tcase_add_test(tc, writer_rejects_bad_arguments);
    tcase_add_test(tc, reads_gray_palette_alpha_and_16_bit);
    tcase_add_test(tc, gray_reader_modes);
    tcase_add_test(tc, corrupt_and_truncated_files_fail_cleanly);
    tcase_add_test(tc, oversized_images_are_refused);
    tcase_add_test(tc, allocation_failures_are_clean);
    tcase_add_test(tc, failed_write_keeps_the_previous_file);
    tcase_add_test(tc, write_into_missing_or_read_only_folder);
    tcase_add_test(tc, writer_refuses_what_is_not_a_regular_file);
    tcase_add_test(tc, symlink_to_a_file_is_written_through);
    tcase_add_test(tc, written_files_have_the_usual_permissions);
    tcase_add_test(tc, reading_a_fifo_fails_at_once);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return ck_run_in_tmpdir(png_suite(), "png");
}
