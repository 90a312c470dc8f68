/* test_hostile.c - hostile inputs beyond the broken files of test_badinput.c: recursion and
 * reference bombs in pickles, zip bombs a checkpoint does or does not reference, fixtures with
 * one tensor's shape or dtype rewritten (loaded through the public API), the caller's allocation
 * cap, and the reproducers of fuzzing findings (docs/fuzzing.md). Every case must end in a clean
 * status within a bounded time; CI runs this under ASan+UBSan too. */
#include <check.h>

#include "core/json.h"
#include "io/pickle.h"
#include "io/weights.h"
#include "io/zip.h"
#include "support/ck_bytes.h"
#include "support/ck_child.h"
#include "text/unicode.h"
#include "support/ck_tmpdir.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

/* Generous: sanitizer builds are several times slower, and the machine is shared. */
#define TIME_LIMIT_S 20.0

/* ---------------------------------------------------------------- helpers */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static const char *shared_path(const char *rel)
{
    static char path[1024];
    const char *s = getenv("LDM_SHARED");
    snprintf(path, sizeof path, "%s/%s", (s && *s) ? s : "../shared", rel);
    return path;
}

static int have_fixture(const char *rel)
{
    if (access(shared_path(rel), R_OK) == 0) return 1;
    printf("SKIPPED: %s not found (set LDM_SHARED)\n", shared_path(rel));
    return 0;
}

/* ---------------------------------------------------------------- checkpoints (writers: support/ck_bytes.h) */

/* A float32 vector tensor [numel] over the whole of storage `key`. */
static void pk_float_vector(buf *o, const char *key, int64_t numel)
{
    pk_tensor t = {"", "FloatStorage", key, numel, 0, 1, {numel}, {1}, 0};
    pk_tensor_value(o, &t);
}

/* {"state_dict": {name: tensor(storage key, numel)}, "extra": <extra opcodes' value>} */
static buf pk_checkpoint(const char *name, const char *key, int64_t numel, const buf *extra)
{
    buf o = {0};
    put8(&o, 0x80);
    put8(&o, 2);
    put8(&o, '}');
    pk_str(&o, "state_dict");
    put8(&o, '}');
    pk_str(&o, name);
    pk_float_vector(&o, key, numel);
    put8(&o, 's');
    put8(&o, 's');
    if (extra) {
        pk_str(&o, "extra");
        put(&o, extra->b, extra->n);
        put8(&o, 's');
    }
    put8(&o, '.');
    return o;
}

/* Runs the pickle VM and the checkpoint loader over `body` (opcodes leaving one value on the
 * stack): neither may crash, and both must finish within the time limit. Returns the VM's status. */
static ldm_status run_pickle_bomb(const char *what, const buf *body)
{
    buf pk = {0};
    put8(&pk, 0x80);
    put8(&pk, 2);
    put(&pk, body->b, body->n);
    put8(&pk, '.');
    double t0 = now_s();
    lw_pickle *vm = NULL;
    const lw_py *root = NULL;
    ldm_status st = lw_pickle_run(what, pk.b, pk.n, &vm, &root);
    if (st == LDM_OK) lw_pickle_free(vm);
    else ck_assert_msg(ldm_last_error()[0], "%s: failed without a message", what);

    static const float w[4] = {1, 2, 3, 4};
    buf ck = pk_checkpoint("model.w", "0", 4, body);
    zent m[2] = {{"archive/data.pkl", ck.b, ck.n, 0, -1, 0, 0, 0}, {"archive/data/0", w, sizeof w, 0, -1, 0, 0, 0}};
    buf z = make_zip(m, 2, 0);
    lw_store *s = NULL;
    ldm_status st2 = lw_open(ck_tmp_write("bomb.ckpt", z.b, z.n), 0, &s);
    if (st2 == LDM_OK) {
        ck_assert_ptr_nonnull(lw_find(s, "model.w"));
        lw_close(s);
    }
    double dt = now_s() - t0;
    ck_assert_msg(dt < TIME_LIMIT_S, "%s: took %.1f s", what, dt);
    free(z.b);
    free(ck.b);
    free(pk.b);
    return st;
}

/* ---------------------------------------------------------------- pickle recursion bombs */

START_TEST(pickle_deep_nesting)
{
    const int n = 900000;
    /* [[[[...]]]]: n EMPTY_LISTs, then APPEND each into the one below */
    buf b = {0};
    for (int i = 0; i < n; i++) put8(&b, ']');
    for (int i = 0; i < n - 1; i++) put8(&b, 'a');
    ldm_status st = run_pickle_bomb("nested lists", &b);
    ck_assert_msg(st == LDM_OK || st == LDM_ERR_LIMIT, "status %d: %s", st, ldm_last_error());
    free(b.b);
    /* ((((None,),),),): TUPLE1 nests without growing the stack */
    b = (buf){0};
    put8(&b, 'N');
    for (int i = 0; i < n; i++) put8(&b, 0x85);
    st = run_pickle_bomb("nested tuples", &b);
    ck_assert_msg(st == LDM_OK || st == LDM_ERR_LIMIT, "status %d: %s", st, ldm_last_error());
    free(b.b);
    /* {k: {k: {k: ...}}} built bottom-up with SETITEM */
    b = (buf){0};
    for (int i = 0; i < n / 4; i++) put8(&b, '}');
    for (int i = 0; i < n / 4 - 1; i++) {
        /* stack: ... d_outer d_inner -> swap is not available; use MEMO: put inner, pop, key, get */
        put8(&b, 'q');
        put8(&b, 0);
        put8(&b, '0');
        pk_str(&b, "k");
        put8(&b, 'h');
        put8(&b, 0);
        put8(&b, 's');
    }
    st = run_pickle_bomb("nested dicts", &b);
    ck_assert_msg(st == LDM_OK || st == LDM_ERR_LIMIT, "status %d: %s", st, ldm_last_error());
    free(b.b);
}
END_TEST

START_TEST(pickle_cycles_and_fan_out)
{
    /* a list that contains itself, a dict that maps to itself */
    buf b = {0};
    put8(&b, ']');
    put8(&b, 'q');
    put8(&b, 0);
    put8(&b, 'h');
    put8(&b, 0);
    put8(&b, 'a');
    ck_assert_int_eq(run_pickle_bomb("self-referencing list", &b), LDM_OK);
    free(b.b);
    b = (buf){0};
    put8(&b, '}');
    put8(&b, 'q');
    put8(&b, 0);
    pk_str(&b, "self");
    put8(&b, 'h');
    put8(&b, 0);
    put8(&b, 's');
    ck_assert_int_eq(run_pickle_bomb("self-referencing dict", &b), LDM_OK);
    free(b.b);
    /* billion laughs: level k is a list of 16 references to level k-1, 30 levels: 16^30 leaves
     * if anything expanded it; shared references keep it a few hundred objects */
    b = (buf){0};
    pk_str(&b, "lol");
    for (int level = 0; level < 30; level++) {
        put8(&b, 'r');
        put32(&b, (uint32_t)level);
        put8(&b, '0');
        put8(&b, '(');
        for (int k = 0; k < 16; k++) {
            put8(&b, 'j');
            put32(&b, (uint32_t)level);
        }
        put8(&b, 'l');
    }
    ck_assert_int_eq(run_pickle_bomb("billion laughs", &b), LDM_OK);
    free(b.b);
    /* a state dict of the same storage under 20000 names: one read of the storage */
    buf many = {0};
    put8(&many, '}');
    for (int i = 0; i < 20000; i++) {
        char name[32];
        snprintf(name, sizeof name, "t%d", i);
        pk_str(&many, name);
        pk_float_vector(&many, "0", 4);
        put8(&many, 's');
    }
    ck_assert_int_eq(run_pickle_bomb("shared storage", &many), LDM_OK);
    free(many.b);
}
END_TEST

/* ---------------------------------------------------------------- zip bombs */

/* A checkpoint whose tensor model.w uses storage `key`; members "archive/data/0" (16 honest
 * bytes) and "archive/data/9" (`bomb_len` zeros, deflated, claiming `declared` bytes). */
static buf bomb_ckpt(const char *key, int64_t numel, const unsigned char *zeros, size_t bomb_len, int64_t declared)
{
    static const float w[4] = {1, 2, 3, 4};
    buf pk = pk_checkpoint("model.w", key, numel, NULL);
    zent m[3] = {{"archive/data.pkl", pk.b, pk.n, 0, -1, 0, 0, 0},
                 {"archive/data/0", w, sizeof w, 0, -1, 0, 0, 0},
                 {"archive/data/9", zeros, bomb_len, 1, declared, 0, 0, 0}};
    buf z = make_zip(m, 3, 0);
    free(pk.b);
    return z;
}

START_TEST(zip_bomb_not_referenced_is_never_inflated)
{
    size_t big = (size_t)64 << 20;
    unsigned char *zeros = calloc(1, big);
    ck_assert_ptr_nonnull(zeros);
    /* honest 64 MB and lying (claims 16 bytes) bombs beside the real storage: never read, so
     * the load succeeds, fast, even under a 1 MB allocation cap */
    const int64_t declared[2] = {-1, 16};
    for (int i = 0; i < 2; i++) {
        buf z = bomb_ckpt("0", 4, zeros, big, declared[i]);
        ck_assert_uint_lt(z.n, (size_t)1 << 20);
        double t0 = now_s();
        lw_store *s = NULL;
        ck_assert_msg(lw_open(ck_tmp_write("bomb.ckpt", z.b, z.n), (size_t)1 << 20, &s) == LDM_OK, "%s",
                      ldm_last_error());
        float *w = NULL;
        ck_assert_int_eq(lw_get_f32(s, "model.w", 1, (int64_t[]){4}, &w), LDM_OK);
        ck_assert(w[0] == 1.0f && w[3] == 4.0f);
        ldm_free(w);
        lw_close(s);
        ck_assert_double_lt(now_s() - t0, 2.0);
        free(z.b);
    }
    free(zeros);
}
END_TEST

START_TEST(zip_bomb_referenced_is_refused)
{
    size_t big = (size_t)64 << 20;
    unsigned char *zeros = calloc(1, big);
    ck_assert_ptr_nonnull(zeros);
    double t0 = now_s();
    /* the storage claims 16 bytes and inflates to 64 MB: refused when inflation passes the claim */
    buf z = bomb_ckpt("9", 4, zeros, big, 16);
    lw_store *s = (lw_store *)1;
    ldm_status st = lw_open(ck_tmp_write("bomb.ckpt", z.b, z.n), 0, &s);
    ck_assert_msg(st == LDM_ERR_FORMAT, "status %d: %s", st, ldm_last_error());
    ck_assert_ptr_null(s);
    ck_assert_msg(strstr(ldm_last_error(), "archive/data/9"), "%s", ldm_last_error());
    free(z.b);
    /* an honest 64 MB storage under a 1 MB cap: LDM_ERR_LIMIT before inflating */
    z = bomb_ckpt("9", (int64_t)(big / 4), zeros, big, -1);
    st = lw_open(ck_tmp_write("bomb.ckpt", z.b, z.n), (size_t)1 << 20, &s);
    ck_assert_msg(st == LDM_ERR_LIMIT, "status %d: %s", st, ldm_last_error());
    ck_assert_ptr_null(s);
    free(z.b);
    /* a tensor claiming more elements than its (bomb) storage holds */
    z = bomb_ckpt("9", (int64_t)(big / 4) + 1, zeros, big, -1);
    st = lw_open(ck_tmp_write("bomb.ckpt", z.b, z.n), 0, &s);
    ck_assert_msg(st == LDM_ERR_FORMAT, "status %d: %s", st, ldm_last_error());
    ck_assert_msg(strstr(ldm_last_error(), "model.w"), "%s", ldm_last_error());
    free(z.b);
    ck_assert_double_lt(now_s() - t0, TIME_LIMIT_S);
    free(zeros);
}
END_TEST

/* ---------------------------------------------------------------- rewritten fixtures */

/* A copy of a safetensors file with tensor `name`'s "shape":[...] and/or "dtype" replaced in
 * the header text (the byte size must stay valid, so callers keep numel * dtype size). */
static const char *rewrite_safetensors(const char *src, const char *name, const char *new_dtype,
                                       const char *new_shape)
{
    size_t len = 0;
    unsigned char *in = read_whole(src, &len);
    ck_assert_ptr_nonnull(in);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | in[i];
    char *header = malloc(hlen + 1);
    memcpy(header, in + 8, hlen);
    header[hlen] = '\0';
    char key[512];
    snprintf(key, sizeof key, "\"%s\":{", name);
    char *entry = strstr(header, key);
    ck_assert_msg(entry != NULL, "%s not in %s", name, src);
    char *end = strchr(entry, '}');
    buf h = {0};
    put(&h, header, (size_t)(entry - header));
    /* rebuild the entry: "name":{"dtype":..,"shape":..,"data_offsets":[..]} */
    char *dt = strstr(entry, "\"dtype\":\""), *sh = strstr(entry, "\"shape\":["), *off = strstr(entry, "\"data_offsets\":[");
    ck_assert(dt && sh && off && dt < end && sh < end && off < end);
    char old_dtype[16] = {0}, old_shape[128] = {0}, offsets[128] = {0};
    sscanf(dt, "\"dtype\":\"%15[^\"]", old_dtype);
    sscanf(sh, "\"shape\":%127[^]]", old_shape);
    sscanf(off, "\"data_offsets\":%127[^]]", offsets);
    char rebuilt[1024];
    snprintf(rebuilt, sizeof rebuilt, "\"%s\":{\"dtype\":\"%s\",\"shape\":%s%s,\"data_offsets\":%s]}", name,
             new_dtype ? new_dtype : old_dtype, new_shape ? new_shape : old_shape, new_shape ? "" : "]", offsets);
    puts_(&h, rebuilt);
    puts_(&h, end + 1);
    buf o = {0};
    put64(&o, h.n);
    put(&o, h.b, h.n);
    put(&o, in + 8 + hlen, len - 8 - hlen);
    const char *path = ck_tmp_write("rewritten.safetensors", o.b, o.n);
    free(o.b);
    free(h.b);
    free(header);
    free(in);
    return path;
}

/* Loads `path` with `config` and decodes a latent: the first failing call must be a format
 * error naming `tensor`. */
static void expect_model_fails_naming(const char *path, const char *config, const char *tensor, const char *needle)
{
    ldm_model_params p;
    ldm_model_params_init(&p);
    p.config_path = config;
    p.n_threads = 2;
    ldm_model *m = NULL;
    ldm_status st = ldm_model_load(path, &p, &m);
    if (st == LDM_OK) {
        ldm_autoencoder *ae = NULL;
        st = ldm_model_autoencoder(m, &ae);
        if (st == LDM_OK) {
            int64_t shape[4] = {1, ldm_autoencoder_latent_channels(ae), 4, 4};
            ldm_tensor *z = NULL, *img = NULL;
            ck_assert_int_eq(ldm_tensor_create(LDM_F32, 4, shape, &z), LDM_OK);
            st = ldm_autoencoder_decode(ae, z, &img);
            ldm_tensor_free(img);
            ldm_tensor_free(z);
        }
        ldm_model_free(m);
    } else {
        ck_assert_ptr_null(m);
    }
    ck_assert_msg(st == LDM_ERR_FORMAT, "status %d: %s", st, ldm_last_error());
    ck_assert_msg(strstr(ldm_last_error(), tensor), "message '%s' does not name %s", ldm_last_error(), tensor);
    ck_assert_msg(strstr(ldm_last_error(), needle), "message '%s' lacks '%s'", ldm_last_error(), needle);
}

START_TEST(wrong_shape_or_dtype_names_the_tensor)
{
    if (!have_fixture("fixtures/ae_kl_f4/model.safetensors")) return;
    char src[1024], config[1024];
    snprintf(src, sizeof src, "%s", shared_path("fixtures/ae_kl_f4/model.safetensors"));
    snprintf(config, sizeof config, "%s", shared_path("fixtures/ae_kl_f4/config.yaml"));
    /* decoder.conv_out.weight is [3, ch, 3, 3]: transpose the first two dims (same byte size) */
    const char *t = "decoder.conv_out.weight";
    lw_store *s = NULL;
    ck_assert_int_eq(lw_open(src, 0, &s), LDM_OK);
    const lw_tensor *ti = lw_find(s, t);
    ck_assert_ptr_nonnull(ti);
    ck_assert_int_eq(ti->ndim, 4);
    char shape[128];
    snprintf(shape, sizeof shape, "[%lld,%lld,%lld,%lld]", (long long)ti->shape[1], (long long)ti->shape[0],
             (long long)ti->shape[2], (long long)ti->shape[3]);
    lw_close(s);
    for (int with_config = 0; with_config < 2; with_config++) {
        expect_model_fails_naming(rewrite_safetensors(src, t, NULL, shape), with_config ? config : NULL, t, "shape");
        /* F32 -> I32 keeps the byte size: a weight must be floating point */
        expect_model_fails_naming(rewrite_safetensors(src, t, "I32", NULL), with_config ? config : NULL, t, "I32");
    }
    /* the encoder's first conv with a wrong rank: [ch, 3, 3, 3] -> [ch, 27] */
    t = "encoder.conv_in.weight";
    ck_assert_int_eq(lw_open(src, 0, &s), LDM_OK);
    ti = lw_find(s, t);
    snprintf(shape, sizeof shape, "[%lld,%lld]", (long long)ti->shape[0], (long long)(ti->shape[1] * 9));
    lw_close(s);
    ldm_model_params p;
    ldm_model_params_init(&p);
    p.config_path = config;
    ldm_model *m = NULL;
    ldm_status st = ldm_model_load(rewrite_safetensors(src, t, NULL, shape), &p, &m);
    if (st == LDM_OK) {
        ldm_autoencoder *ae = NULL;
        st = ldm_model_autoencoder(m, &ae);
        if (st == LDM_OK) {
            ldm_tensor *x = NULL, *out = NULL;
            ck_assert_int_eq(ldm_tensor_create(LDM_F32, 4, (int64_t[]){1, 3, 8, 8}, &x), LDM_OK);
            st = ldm_autoencoder_encode(ae, x, &out);
            ldm_tensor_free(out);
            ldm_tensor_free(x);
        }
        ldm_model_free(m);
    }
    ck_assert_msg(st == LDM_ERR_FORMAT && strstr(ldm_last_error(), t), "status %d: %s", st, ldm_last_error());
}
END_TEST

/* ---------------------------------------------------------------- allocation cap */

START_TEST(allocation_cap_is_respected)
{
    if (!have_fixture("fixtures/ldm_uncond_plms/model.safetensors")) return;
    char path[1024], config[1024];
    snprintf(path, sizeof path, "%s", shared_path("fixtures/ldm_uncond_plms/model.safetensors"));
    snprintf(config, sizeof config, "%s", shared_path("fixtures/ldm_uncond_plms/config.yaml"));
    ldm_model_params p;
    ldm_model_params_init(&p);
    p.config_path = config;
    p.n_threads = 2;
    double t0 = now_s();
    /* too small for the header's own table: the load itself fails */
    p.max_alloc_bytes = 256;
    ldm_model *m = (ldm_model *)1;
    ldm_status st = ldm_model_load(path, &p, &m);
    ck_assert_msg(st == LDM_ERR_LIMIT, "status %d: %s", st, ldm_last_error());
    ck_assert_ptr_null(m);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "limit"));
    ck_assert_uint_eq(ldm_alloc_get_cap(), 0); /* the model's cap does not outlive the load */
    /* the .ckpt loader too */
    snprintf(path, sizeof path, "%s", shared_path("fixtures/ldm_uncond_plms/model.ckpt"));
    if (access(path, R_OK) == 0) {
        st = ldm_model_load(path, &p, &m);
        ck_assert_msg(st == LDM_ERR_LIMIT, "status %d: %s", st, ldm_last_error());
    }
    snprintf(path, sizeof path, "%s", shared_path("fixtures/ldm_uncond_plms/model.safetensors"));
    /* enough to load (weights stay mapped) but not to widen the larger weights: the first call
     * that needs them fails with LDM_ERR_LIMIT, and the model stays usable for a retry */
    p.max_alloc_bytes = 64 << 10;
    ck_assert_msg(ldm_model_load(path, &p, &m) == LDM_OK, "%s", ldm_last_error());
    ldm_generate_params g;
    ldm_generate_params_init(&g);
    g.steps = 2;
    g.guidance_scale = 1.0f;
    ldm_tensor *img = NULL;
    st = ldm_generate(m, &g, &img);
    ck_assert_msg(st == LDM_ERR_LIMIT, "status %d: %s", st, ldm_last_error());
    ck_assert_ptr_null(img);
    ldm_model_free(m);
    /* without the cap the same calls succeed */
    p.max_alloc_bytes = 0;
    ck_assert_int_eq(ldm_model_load(path, &p, &m), LDM_OK);
    ck_assert_msg(ldm_generate(m, &g, &img) == LDM_OK, "%s", ldm_last_error());
    ldm_tensor_free(img);
    ldm_model_free(m);
    ck_assert_double_lt(now_s() - t0, TIME_LIMIT_S);
}
END_TEST

/* ---------------------------------------------------------------- resources */

/* Lines of `path` (all of them when `needle` is NULL, else those containing it). */
static int count_lines(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    int n = 0;
    char line[4096];
    while (fgets(line, sizeof line, f))
        if (!needle || strstr(line, needle)) n++;
    fclose(f);
    return n;
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    ck_assert_ptr_nonnull(d);
    int n = 0;
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

/* Loading and freeing a model 100 times leaves no file descriptor and no mapping behind (the
 * checkpoint is mmap'ed; a leaked mapping per load would exhaust address space in a server). */
START_TEST(load_free_releases_descriptors_and_mappings)
{
    if (!have_fixture("fixtures/ldm_uncond_plms/model.ckpt")) return;
    const char *files[2] = {"fixtures/ldm_uncond_plms/model.safetensors", "fixtures/ldm_uncond_plms/model.ckpt"};
    char config[1024];
    snprintf(config, sizeof config, "%s", shared_path("fixtures/ldm_uncond_plms/config.yaml"));
    ldm_model_params p;
    ldm_model_params_init(&p);
    p.config_path = config;
    p.n_threads = 2;
    for (int f = 0; f < 2; f++) {
        char path[1024];
        snprintf(path, sizeof path, "%s", shared_path(files[f]));
        /* one warm-up round: libraries (OpenBLAS, libyaml) may map things once */
        ldm_model *m = NULL;
        ck_assert_int_eq(ldm_model_load(path, &p, &m), LDM_OK);
        ldm_model_free(m);
        const char *base = strrchr(path, '/') + 1; /* the checkpoint's mapping names the file */
        int fds = count_fds(), maps = count_lines("/proc/self/maps", NULL);
        ck_assert_int_eq(count_lines("/proc/self/maps", base), 0);
        for (int i = 0; i < 100; i++) {
            ck_assert_msg(ldm_model_load(path, &p, &m) == LDM_OK, "%s", ldm_last_error());
            if (i % 25 == 0) { /* sometimes use it too: components map nothing more */
                ldm_autoencoder *ae = NULL;
                ck_assert_int_eq(ldm_model_autoencoder(m, &ae), LDM_OK);
                ck_assert_int_ge(count_lines("/proc/self/maps", base), 1); /* really mapped */
            }
            ldm_model_free(m);
            ck_assert_int_eq(count_lines("/proc/self/maps", base), 0);
        }
        ck_assert_int_eq(count_fds(), fds);
        /* Anonymous mappings: allocators (glibc arenas, ASan's) may add a few dozen; one leaked
         * per load would add 100 or more. */
        int after = count_lines("/proc/self/maps", NULL);
        ck_assert_msg(after <= maps + 50, "%s: /proc/self/maps grew from %d to %d lines", files[f], maps, after);
    }
}
END_TEST

/* Fails the n-th allocation for n = 1, 2, ... until `run` succeeds: each failure must be a clean
 * error (ASan's leak checker, in the sanitizer build, watches for leaks). */
static int exhaust(ldm_status (*run)(void *), void *arg, const char *what)
{
    for (long n = 1; n < 1000000; n++) {
        ldm_alloc_fail_after(n);
        ldm_status st = run(arg);
        ldm_alloc_fail_after(0);
        if (st == LDM_OK) return (int)n;
        ck_assert_msg(st == LDM_ERR_OUT_OF_MEMORY, "%s, n=%ld: status %d: %s", what, n, st, ldm_last_error());
        ck_assert_msg(ldm_last_error()[0], "%s, n=%ld: no message", what, n);
    }
    ck_abort_msg("%s never succeeded", what);
    return 0;
}

static ldm_status demo_load(void *arg)
{
    ldm_model_params p;
    ldm_model_params_init(&p);
    p.n_threads = 1;
    ldm_model *m = NULL;
    LDM_TRY(ldm_model_load_builtin("demo", 11, &p, &m));
    if (arg) *(ldm_model **)arg = m;
    else ldm_model_free(m);
    return LDM_OK;
}

/* Generates with a model that earlier failures may have left half set up (components created on
 * first use): each failure must leave it usable for the next attempt. */
static ldm_status demo_generate(void *arg)
{
    ldm_generate_params g;
    ldm_generate_params_init(&g);
    g.steps = 2;
    g.width = g.height = 32;
    g.class_label = 1;
    g.guidance_scale = 2.0f;
    ldm_tensor *img = NULL;
    ldm_status st = ldm_generate((ldm_model *)arg, &g, &img);
    ldm_tensor_free(img);
    return st;
}

static ldm_status file_load(void *arg)
{
    const char *const *paths = arg;
    ldm_model_params p;
    ldm_model_params_init(&p);
    p.config_path = paths[1];
    p.n_threads = 1;
    ldm_model *m = NULL;
    LDM_TRY(ldm_model_load(paths[0], &p, &m));
    ldm_model_free(m);
    return LDM_OK;
}

START_TEST(allocation_failures_in_load_and_generate_are_clean)
{
    double t0 = now_s();
    int n = exhaust(demo_load, NULL, "demo load");
    ldm_model *m = NULL;
    ck_assert_int_eq(demo_load(&m), LDM_OK);
    ldm_tensor *ref = NULL, *img = NULL;
    ldm_generate_params g;
    int n2 = exhaust(demo_generate, m, "demo generate");
    printf("demo: load needs %d allocations, generate %d (%.1f s)\n", n, n2, now_s() - t0);
    /* after all those failures the model gives what a fresh one gives */
    ldm_generate_params_init(&g);
    g.steps = 2;
    g.width = g.height = 32;
    g.class_label = 1;
    g.guidance_scale = 2.0f;
    ck_assert_int_eq(ldm_generate(m, &g, &img), LDM_OK);
    ldm_model_free(m);
    ck_assert_int_eq(demo_load(&m), LDM_OK);
    ck_assert_int_eq(ldm_generate(m, &g, &ref), LDM_OK);
    ck_assert(memcmp(ldm_tensor_data(img), ldm_tensor_data(ref), (size_t)ldm_tensor_numel(ref) * 4) == 0);
    ldm_tensor_free(img);
    ldm_tensor_free(ref);
    ldm_model_free(m);
    if (!have_fixture("fixtures/ldm_uncond_plms/model.ckpt")) return;
    char ckpt[1024], config[1024];
    /* the safetensors file: the .ckpt path (zip + pickle) is exhausted on a small file by
     * test_badinput; thousands of pickle objects would make this quadratic loop slow */
    snprintf(ckpt, sizeof ckpt, "%s", shared_path("fixtures/ldm_uncond_plms/model.safetensors"));
    snprintf(config, sizeof config, "%s", shared_path("fixtures/ldm_uncond_plms/config.yaml"));
    const char *paths[2] = {ckpt, config};
    t0 = now_s();
    n = exhaust(file_load, (void *)paths, "safetensors + config load");
    printf("ldm_uncond_plms model.safetensors + config.yaml: load needs %d allocations (%.1f s)\n", n, now_s() - t0);
}
END_TEST

/* ---------------------------------------------------------------- fuzzing reproducers */

/* fuzz_clip_tokenizer / fuzz_bert_tokenizer: an empty prompt left the code point buffer NULL and
 * the clean-up did NULL + 0 (undefined; clang's UBSan aborts). Every decoded buffer must now own
 * storage, even when empty. */
START_TEST(fuzz_empty_text_buffers_own_storage)
{
    ltx_cpbuf b = {0};
    ck_assert_int_eq(ltx_utf8_decode("", 0, &b, "empty"), LDM_OK);
    ck_assert_uint_eq(b.len, 0);
    ck_assert_ptr_nonnull(b.cp);
    ltx_cpbuf_free(&b);
    const char *vocab = shared_path("vocab/bpe_simple_vocab_16e6.txt.gz");
    if (access(vocab, R_OK) != 0) {
        printf("SKIPPED: %s not found\n", vocab);
        return;
    }
    ldm_tokenizer *tok = NULL;
    ck_assert_int_eq(ldm_tokenizer_load(LDM_TOKENIZER_CLIP, vocab, &tok), LDM_OK);
    const char *prompts[2] = {"", "&amp;"};
    ldm_tensor *ids = NULL;
    ck_assert_int_eq(ldm_tokenizer_encode(tok, prompts, 2, 77, &ids), LDM_OK);
    const int64_t *v = ldm_tensor_data(ids);
    ck_assert_int_eq(v[0], 49406);
    ck_assert_int_eq(v[1], 49407);
    ldm_tensor_free(ids);
    ldm_tokenizer_free(tok);
}
END_TEST

/* fuzz_bert_vocab: a vocab.txt with two empty lines. The first empty token left the string map's
 * arena unallocated and the second lookup of "" did memcmp(NULL + 0, ...), undefined (clang's
 * UBSan aborts; gcc's does not report it, so under gcc this only shows the input is handled). */
START_TEST(fuzz_vocab_with_empty_lines)
{
    static const char repro[] = "\n\nP[[[]Ased";
    ldm_tokenizer *tok = (ldm_tokenizer *)1;
    ldm_status st = ldm_tokenizer_load(LDM_TOKENIZER_BERT, ck_tmp_write("vocab.txt", repro, sizeof repro - 1), &tok);
    ck_assert_msg(st == LDM_ERR_NOT_FOUND && strstr(ldm_last_error(), "no [PAD] token"), "status %d: %s", st,
                  ldm_last_error());
    ck_assert_ptr_null(tok);
    /* the same with the special tokens present: it loads, "" is an ordinary (unreachable) token */
    static const char ok[] = "\n\n[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n\n";
    ck_assert_msg(ldm_tokenizer_load(LDM_TOKENIZER_BERT, ck_tmp_write("vocab.txt", ok, sizeof ok - 1), &tok) == LDM_OK,
                  "%s", ldm_last_error());
    const char *prompts[1] = {"hello there"};
    ldm_tensor *ids = NULL;
    ck_assert_int_eq(ldm_tokenizer_encode(tok, prompts, 1, 6, &ids), LDM_OK);
    const int64_t *v = ldm_tensor_data(ids);
    const int64_t want[6] = {4, 6, 3, 5, 2, 2}; /* [CLS] hello [UNK] [SEP] [PAD] [PAD] */
    for (int i = 0; i < 6; i++) ck_assert_int_eq(v[i], want[i]);
    ldm_tensor_free(ids);
    ldm_tokenizer_free(tok);
}
END_TEST

static void png_chunk(buf *o, const char *type, const void *data, uint32_t len)
{
    unsigned char be[4] = {(unsigned char)(len >> 24), (unsigned char)(len >> 16), (unsigned char)(len >> 8),
                           (unsigned char)len};
    put(o, be, 4);
    put(o, type, 4);
    put(o, data, len);
    uLong crc = crc32(0, (const Bytef *)type, 4);
    crc = crc32(crc, data, len);
    unsigned char c[4] = {(unsigned char)(crc >> 24), (unsigned char)(crc >> 16), (unsigned char)(crc >> 8),
                          (unsigned char)crc};
    put(o, c, 4);
}

/* fuzz_png: a 60-byte PNG declaring 16384x4096 RGBA made the reader allocate 256 MB of pixels
 * before finding the data missing. A file too short to hold its image (deflate's best ratio is
 * 1032:1) is now refused first: a format error even under a 1 MB allocation cap. */
START_TEST(fuzz_png_declaring_more_than_it_holds)
{
    buf o = {0};
    put(&o, "\x89PNG\r\n\x1a\n", 8);
    unsigned char ihdr[13] = {0, 0, 0x40, 0, 0, 0, 0x10, 0, 8, 6, 0, 0, 0}; /* 16384 x 4096, RGBA 8-bit */
    png_chunk(&o, "IHDR", ihdr, 13);
    unsigned char idat[16];
    uLongf n = sizeof idat;
    unsigned char row[1] = {0};
    ck_assert_int_eq(compress(idat, &n, row, 1), Z_OK);
    png_chunk(&o, "IDAT", idat, (uint32_t)n);
    png_chunk(&o, "IEND", "", 0);
    const char *path = ck_tmp_write("bomb.png", o.b, o.n);
    ldm_alloc_set_cap((size_t)1 << 20);
    ldm_tensor *t = NULL;
    ldm_status st = ldm_image_read_png(path, &t);
    ldm_alloc_set_cap(0);
    ck_assert_msg(st == LDM_ERR_FORMAT, "status %d: %s", st, ldm_last_error());
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "16384x4096"));
    ck_assert_ptr_null(t);
    free(o.b);
}
END_TEST

/* Issue #12 (D1): libpng read every ancillary chunk it knows whole into one zeroed buffer, and
 * its chunk-size limit was only a warning, which our warning callback dropped. A 141-byte file
 * (IHDR, then a tEXt/zTXt/iTXt/sPLT/pCAL/sCAL/iCCP/eXIf header claiming 2^31-1 bytes, then what
 * would be IDAT and IEND) made both readers allocate and zero 2 GB (6-16 s, 2.1 GB peak). */
static const char *const png_bomb_types[] = {"tEXt", "zTXt", "iTXt", "sPLT", "pCAL",
                                             "sCAL", "iCCP", "eXIf", "prVt" /* unknown, private */};
#define N_PNG_BOMBS (sizeof png_bomb_types / sizeof *png_bomb_types)

static buf png_length_bomb(const char *type)
{
    buf o = {0};
    put(&o, "\x89PNG\r\n\x1a\n", 8);
    unsigned char ihdr[13] = {0, 0, 0, 16, 0, 0, 0, 16, 8, 2, 0, 0, 0}; /* 16 x 16 RGB 8-bit */
    png_chunk(&o, "IHDR", ihdr, 13);
    put(&o, "\x7f\xff\xff\xff", 4); /* length 2^31 - 1: the largest PNG allows */
    put(&o, type, 4);
    puts_(&o, "Comment");
    put8(&o, 0);
    unsigned char rows[16 * 49] = {0}, idat[64];
    uLongf n = sizeof idat;
    ck_assert_int_eq(compress(idat, &n, rows, sizeof rows), Z_OK);
    png_chunk(&o, "IDAT", idat, (uint32_t)n);
    png_chunk(&o, "IEND", "", 0);
    return o;
}

typedef struct {
    char paths[N_PNG_BOMBS][512];
} png_bombs;

/* Not under ASan (see ck_child.h): the address space may grow by 1 GB, so an allocation of
 * gigabytes fails at once instead of swapping the machine. */
static void limit_address_space(void)
{
    long vm_kb = ck_proc_status_kb("VmSize");
    if (CK_ASAN || vm_kb < 0) return;
    struct rlimit rl = {(rlim_t)(vm_kb + (1L << 20)) * 1024, (rlim_t)(vm_kb + (1L << 20)) * 1024};
    setrlimit(RLIMIT_AS, &rl);
}

/* One read of a bomb: a clean format error naming the file (or success), quickly. */
static int read_bomb_once(const char *path, int gray)
{
    ldm_tensor *t = NULL;
    double t0 = now_s();
    ldm_status st = gray ? ldm_image_read_png_gray(path, 1, &t) : ldm_image_read_png(path, &t);
    double dt = now_s() - t0;
    ldm_tensor_free(t);
    if (st != LDM_OK && (st != LDM_ERR_FORMAT || !strstr(ldm_last_error(), path))) {
        fprintf(stderr, "%s (gray %d): status %d: %s\n", path, gray, st, ldm_last_error());
        return 1;
    }
    if (dt > 2.0) {
        fprintf(stderr, "%s (gray %d): %.1f s\n", path, gray, dt);
        return 1;
    }
    return 0;
}

/* In a child: every bomb through both readers, without and with a 1 MB allocation cap; the peak
 * resident size may not grow by more than 64 MB. */
static int read_bombs_child(void *arg)
{
    const png_bombs *b = arg;
    limit_address_space();
    int have_peak = ck_reset_peak_rss() == 0;
    long before = ck_proc_status_kb("VmHWM");
    for (size_t i = 0; i < N_PNG_BOMBS; i++)
        for (int capped = 0; capped < 2; capped++)
            for (int gray = 0; gray < 2; gray++) {
                ldm_alloc_set_cap(capped ? (size_t)1 << 20 : 0);
                if (read_bomb_once(b->paths[i], gray)) return 1;
            }
    long after = ck_proc_status_kb("VmHWM");
    if (have_peak && before >= 0 && after - before > 64 * 1024) {
        fprintf(stderr, "PNG bombs: peak resident size grew by %ld MB\n", (after - before) >> 10);
        return 2;
    }
    return 0;
}

START_TEST(png_ancillary_chunk_bombs)
{
    png_bombs b;
    for (size_t i = 0; i < N_PNG_BOMBS; i++) {
        buf o = png_length_bomb(png_bomb_types[i]);
        char name[32];
        snprintf(name, sizeof name, "bomb-%s.png", png_bomb_types[i]);
        snprintf(b.paths[i], sizeof b.paths[i], "%s", ck_tmp_write(name, o.b, o.n));
        free(o.b);
    }
    int rc = ck_child_run(read_bombs_child, &b, 60);
    ck_assert_msg(rc == 0, "PNG length bombs: child ended with %d (142: timed out; see stderr)", rc);
}
END_TEST

/* ---------------------------------------------------------------- main */

static Suite *hostile_suite(void)
{
    Suite *s = suite_create("hostile");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, pickle_deep_nesting);
    tcase_add_test(tc, pickle_cycles_and_fan_out);
    tcase_add_test(tc, zip_bomb_not_referenced_is_never_inflated);
    tcase_add_test(tc, zip_bomb_referenced_is_refused);
    tcase_add_test(tc, wrong_shape_or_dtype_names_the_tensor);
    tcase_add_test(tc, allocation_cap_is_respected);
    tcase_add_test(tc, load_free_releases_descriptors_and_mappings);
    tcase_add_test(tc, allocation_failures_in_load_and_generate_are_clean);
    tcase_add_test(tc, fuzz_empty_text_buffers_own_storage);
    tcase_add_test(tc, fuzz_png_declaring_more_than_it_holds);
    tcase_add_test(tc, fuzz_vocab_with_empty_lines);
    tcase_add_test(tc, png_ancillary_chunk_bombs);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return ck_run_in_tmpdir(hostile_suite(), "hostile");
}
