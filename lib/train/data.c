/* data.c - the training data loader (data.h, docs/training-data.md). */
#include "data.h"

#include "../io/weights.h"
#include "../sampling/sampling.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_LINE    65536
#define MAX_CLASSES (1 << 20)
#define MAX_SIDE    16384
#define TAG_PERM    0x50524d00u
#define TAG_AUG     0x41554700u

typedef struct {
    char *name;
    int64_t label;
    char *caption;
    int w, h;   /* from the PNG header */
    int rw, rh; /* after resizing */
    long line;  /* labels line, 0 = none yet */
} item;

struct ltr_dataset {
    char *dir;
    ltr_data_opts o;
    int64_t n;
    item *items;
    int64_t n_classes;
    char **names; /* classes.txt */
    int64_t n_names;
    /* permutation of the epoch perm_epoch for perm_seed (perm_epoch -1: none) */
    int64_t *perm;
    int64_t perm_epoch;
    uint64_t perm_seed;
    /* cache: one block per image (rh*rw*3 bytes, HWC), NULL until decoded; cache == NULL: off */
    unsigned char **cache;
};

void ltr_data_opts_init(ltr_data_opts *o)
{
    memset(o, 0, sizeof *o);
    o->size = 32;
    o->resize = 1;
    o->crop = LTR_CROP_CENTER;
    o->flip = 0;
    o->n_classes = 0;
    o->cache_bytes = (size_t)256 << 20;
    o->labels_path = NULL;
}

/* ------------------------------------------------------------------ small helpers */

static char *join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = ldm_malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

/* Valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF) without NUL bytes. */
static int utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c == 0) return 0;
        if (c < 0x80) {
            i++;
            continue;
        }
        int len;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0)
            len = 2, cp = c & 0x1F, min = 0x80;
        else if ((c & 0xF0) == 0xE0)
            len = 3, cp = c & 0x0F, min = 0x800;
        else if ((c & 0xF8) == 0xF0)
            len = 4, cp = c & 0x07, min = 0x10000;
        else
            return 0;
        if (i + (size_t)len > n) return 0;
        for (int k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += (size_t)len;
    }
    return 1;
}

static int ends_with_png(const char *name)
{
    size_t n = strlen(name);
    return n > 4 && strcasecmp(name + n - 4, ".png") == 0;
}

static int cmp_items(const void *a, const void *b)
{
    return strcmp(((const item *)a)->name, ((const item *)b)->name);
}

static item *find_item(ltr_dataset *d, const char *name)
{
    item key = {.name = (char *)name};
    return bsearch(&key, d->items, (size_t)d->n, sizeof *d->items, cmp_items);
}

/* Reads one line (without its '\n' and a trailing '\r') into buf[MAX_LINE + 1]. Returns 1 for a
 * line, 0 at the end of the file, -1 for a line that is too long or contains a NUL byte (status
 * set), -2 for a read error. */
static int read_line(FILE *f, char *buf, size_t *len, const char *path, long lineno)
{
    size_t n = 0;
    int c;
    while ((c = getc(f)) != EOF && c != '\n') {
        if (c == 0) {
            ldm_fail(LDM_ERR_FORMAT, "%s:%ld: NUL byte in the line", path, lineno);
            return -1;
        }
        if (n == MAX_LINE) {
            ldm_fail(LDM_ERR_FORMAT, "%s:%ld: line longer than %d bytes", path, lineno, MAX_LINE);
            return -1;
        }
        buf[n++] = (char)c;
    }
    if (ferror(f)) {
        ldm_fail(LDM_ERR_IO, "%s:%ld: read error: %s", path, lineno, strerror(errno));
        return -2;
    }
    if (c == EOF && n == 0) return 0;
    if (n > 0 && buf[n - 1] == '\r') n--;
    buf[n] = '\0';
    *len = n;
    return 1;
}

static int is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* ------------------------------------------------------------------ PNG header */

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static ldm_status read_header(const char *path, int *w, int *h)
{
    FILE *f;
    LDM_TRY(lw_fopen_regular(path, "image", LDM_ERR_NOT_FOUND, &f));
    unsigned char b[24];
    size_t got = fread(b, 1, sizeof b, f);
    int err = ferror(f);
    fclose(f);
    if (err) return ldm_fail(LDM_ERR_IO, "image %s: read error", path);
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    if (got < sizeof b || memcmp(b, sig, 8) != 0 || memcmp(b + 12, "IHDR", 4) != 0)
        return ldm_fail(LDM_ERR_FORMAT, "image %s: not a PNG file", path);
    uint32_t W = be32(b + 16), H = be32(b + 20);
    if (W == 0 || H == 0 || W > MAX_SIDE || H > MAX_SIDE)
        return ldm_fail(W == 0 || H == 0 ? LDM_ERR_FORMAT : LDM_ERR_LIMIT, "image %s: %ux%u pixels (1..%d per side)",
                        path, W, H, MAX_SIDE);
    *w = (int)W;
    *h = (int)H;
    return LDM_OK;
}

/* ------------------------------------------------------------------ listing */

static ldm_status list_dir(ltr_dataset *d)
{
    DIR *dir = opendir(d->dir);
    if (!dir)
        return ldm_fail(errno == ENOENT || errno == ENOTDIR ? LDM_ERR_NOT_FOUND : LDM_ERR_IO, "data folder %s: %s",
                        d->dir, strerror(errno));
    int64_t cap = 0;
    ldm_status st = LDM_OK;
    struct dirent *de;
    while ((de = readdir(dir)) != NULL) {
        if (de->d_name[0] == '.' || !ends_with_png(de->d_name)) continue;
        struct stat sb;
        if (fstatat(dirfd(dir), de->d_name, &sb, 0) != 0 || !S_ISREG(sb.st_mode)) continue;
        if (d->n == cap) {
            int64_t nc = cap ? 2 * cap : 256;
            item *v = ldm_realloc(d->items, (size_t)nc * sizeof *v);
            if (!v) {
                st = ldm_alloc_failure_status();
                break;
            }
            d->items = v;
            cap = nc;
        }
        item *it = &d->items[d->n];
        memset(it, 0, sizeof *it);
        it->label = -1;
        it->name = ldm_strdup(de->d_name);
        if (!it->name) {
            st = ldm_alloc_failure_status();
            break;
        }
        d->n++;
    }
    closedir(dir);
    if (st != LDM_OK) return st;
    if (d->n > 1) qsort(d->items, (size_t)d->n, sizeof *d->items, cmp_items);
    return LDM_OK;
}

/* ------------------------------------------------------------------ classes.txt */

static ldm_status read_classes(ltr_dataset *d, char *buf)
{
    char *path = join(d->dir, "classes.txt");
    if (!path) return ldm_alloc_failure_status();
    struct stat sb;
    if (stat(path, &sb) != 0 && errno == ENOENT) {
        ldm_free(path);
        return LDM_OK;
    }
    FILE *f;
    ldm_status st = lw_fopen_regular(path, "classes file", LDM_ERR_NOT_FOUND, &f);
    if (st != LDM_OK) {
        ldm_free(path);
        return st;
    }
    int64_t cap = 0;
    long lineno = 0, blank_at = 0;
    size_t len;
    int r;
    while ((r = read_line(f, buf, &len, path, lineno + 1)) == 1) {
        lineno++;
        char *s = buf;
        while (is_blank(*s)) s++, len--;
        while (len > 0 && is_blank(s[len - 1])) s[--len] = '\0';
        if (len == 0) {
            if (!blank_at) blank_at = lineno;
            continue;
        }
        if (blank_at) {
            st = ldm_fail(LDM_ERR_FORMAT, "%s:%ld: empty class name (line k names class k-1)", path, blank_at);
            break;
        }
        if (!utf8_valid((const unsigned char *)s, len)) {
            st = ldm_fail(LDM_ERR_FORMAT, "%s:%ld: invalid UTF-8", path, lineno);
            break;
        }
        if (d->n_names == MAX_CLASSES) {
            st = ldm_fail(LDM_ERR_LIMIT, "%s:%ld: more than %d classes", path, lineno, MAX_CLASSES);
            break;
        }
        for (int64_t k = 0; k < d->n_names && st == LDM_OK; k++)
            if (strcmp(d->names[k], s) == 0)
                st = ldm_fail(LDM_ERR_FORMAT, "%s:%ld: class name \"%s\" already on line %lld", path, lineno, s,
                              (long long)k + 1);
        if (st != LDM_OK) break;
        if (d->n_names == cap) {
            int64_t nc = cap ? 2 * cap : 64;
            char **v = ldm_realloc(d->names, (size_t)nc * sizeof *v);
            if (!v) {
                st = ldm_alloc_failure_status();
                break;
            }
            d->names = v;
            cap = nc;
        }
        if (!(d->names[d->n_names] = ldm_strdup(s))) {
            st = ldm_alloc_failure_status();
            break;
        }
        d->n_names++;
    }
    if (st == LDM_OK && r < 0) st = r == -1 ? LDM_ERR_FORMAT : LDM_ERR_IO;
    fclose(f);
    ldm_free(path);
    return st;
}

/* ------------------------------------------------------------------ labels.csv */

typedef struct {
    char *text;
    size_t len;
    int quoted;
} field;

/* Splits a line into at most 3 fields in place (a third one is reported as an error by the
 * caller). Returns the field count, or -1 for a bad quote (message set). */
static int split_fields(char *s, field *f, const char *path, long lineno)
{
    int n = 0;
    for (;;) {
        while (is_blank(*s)) s++;
        if (n == 3) return n;
        field *x = &f[n++];
        x->quoted = 0;
        if (*s == '"') {
            x->quoted = 1;
            char *w = ++s;
            x->text = w;
            for (;;) {
                if (*s == '\0') {
                    ldm_fail(LDM_ERR_FORMAT, "%s:%ld: unterminated quoted field", path, lineno);
                    return -1;
                }
                if (*s == '"') {
                    if (s[1] == '"') {
                        *w++ = '"';
                        s += 2;
                        continue;
                    }
                    s++;
                    break;
                }
                *w++ = *s++;
            }
            x->len = (size_t)(w - x->text);
            while (is_blank(*s)) s++;
            if (*s != ',' && *s != '\0') {
                ldm_fail(LDM_ERR_FORMAT, "%s:%ld: text after a closing quote", path, lineno);
                return -1;
            }
            char *end = s;
            int more = *s == ',';
            x->text[x->len] = '\0'; /* w <= end: safe */
            if (!more) return n;
            s = end + 1;
        } else {
            x->text = s;
            char *c = strchr(s, ',');
            char *end = c ? c : s + strlen(s);
            char *e = end;
            while (e > s && is_blank(e[-1])) e--;
            x->len = (size_t)(e - s);
            if (memchr(s, '"', x->len)) {
                ldm_fail(LDM_ERR_FORMAT, "%s:%ld: a quote inside an unquoted field (quote the whole field)", path,
                         lineno);
                return -1;
            }
            int more = c != NULL;
            *e = '\0';
            if (!more) return n;
            s = c + 1;
        }
    }
}

static int is_header(const field *f)
{
    static const char *const h[] = {"file", "filename", "image", "path"};
    if (f->quoted) return 0;
    for (size_t i = 0; i < LDM_ARRAY_LEN(h); i++)
        if (strcasecmp(f->text, h[i]) == 0) return 1;
    return 0;
}

static ldm_status parse_label_line(ltr_dataset *d, field *fl, const char *path, long lineno, int64_t *max_label)
{
    field *name = &fl[0], *lab = &fl[1];
    if (name->len == 0) return ldm_fail(LDM_ERR_FORMAT, "%s:%ld: empty file name", path, lineno);
    if (strchr(name->text, '/') || !utf8_valid((const unsigned char *)name->text, name->len))
        return ldm_fail(LDM_ERR_FORMAT, "%s:%ld: \"%.200s\" is not a plain file name in the folder", path, lineno,
                        name->text);
    item *it = find_item(d, name->text);
    if (!it)
        return ldm_fail(LDM_ERR_FORMAT, "%s:%ld: %.200s: no such PNG image in %s", path, lineno, name->text, d->dir);
    if (it->line)
        return ldm_fail(LDM_ERR_FORMAT, "%s:%ld: %s already labelled on line %ld", path, lineno, it->name, it->line);
    it->line = lineno;
    if (lab->len == 0 && !lab->quoted)
        return ldm_fail(LDM_ERR_FORMAT, "%s:%ld: empty label for %s", path, lineno, it->name);
    const char *t = lab->text;
    int digits = !lab->quoted && t[0] != '\0';
    for (const char *p = t; *p && digits; p++) digits = *p >= '0' && *p <= '9';
    if (!lab->quoted && t[0] == '-' && t[1] >= '0' && t[1] <= '9')
        return ldm_fail(LDM_ERR_FORMAT, "%s:%ld: negative class index %.40s", path, lineno, t);
    if (digits) {
        int64_t v = 0;
        for (const char *p = t; *p; p++) {
            if (v > (INT64_MAX - 9) / 10)
                return ldm_fail(LDM_ERR_FORMAT, "%s:%ld: class index %.40s too large", path, lineno, t);
            v = v * 10 + (*p - '0');
        }
        int64_t limit = d->o.n_classes > 0 ? d->o.n_classes : d->n_names > 0 ? d->n_names : INT32_MAX;
        if (v >= limit)
            return ldm_fail(LDM_ERR_FORMAT, "%s:%ld: class %lld out of range (%lld classes%s)", path, lineno,
                            (long long)v, (long long)limit,
                            d->o.n_classes > 0 ? ""
                            : d->n_names > 0   ? " in classes.txt"
                                               : ", the limit");
        it->label = v;
        if (v > *max_label) *max_label = v;
        return LDM_OK;
    }
    if (lab->len == 0) return ldm_fail(LDM_ERR_FORMAT, "%s:%ld: empty caption for %s", path, lineno, it->name);
    if (!utf8_valid((const unsigned char *)t, lab->len))
        return ldm_fail(LDM_ERR_FORMAT, "%s:%ld: caption is not valid UTF-8", path, lineno);
    it->caption = ldm_strdup(t);
    return it->caption ? LDM_OK : ldm_alloc_failure_status();
}

static ldm_status read_labels(ltr_dataset *d, char *buf, int64_t *max_label)
{
    char *own = NULL;
    const char *path = d->o.labels_path;
    if (!path) {
        own = join(d->dir, "labels.csv");
        if (!own) return ldm_alloc_failure_status();
        struct stat sb;
        if (stat(own, &sb) != 0 && errno == ENOENT) {
            ldm_free(own);
            return LDM_OK; /* unconditional */
        }
        path = own;
    }
    FILE *f;
    ldm_status st = lw_fopen_regular(path, "labels file", LDM_ERR_NOT_FOUND, &f);
    if (st != LDM_OK) {
        ldm_free(own);
        return st;
    }
    long lineno = 0;
    int seen_content = 0, r;
    size_t len;
    while ((r = read_line(f, buf, &len, path, lineno + 1)) == 1) {
        lineno++;
        const char *s = buf;
        while (is_blank(*s)) s++;
        if (*s == '\0' || *s == '#') continue;
        field fl[3];
        int n = split_fields(buf, fl, path, lineno);
        if (n < 0) {
            st = LDM_ERR_FORMAT;
            break;
        }
        if (!seen_content++ && is_header(&fl[0])) continue;
        if (n != 2) {
            st = ldm_fail(LDM_ERR_FORMAT, "%s:%ld: expected \"file,label\" (%s)", path, lineno,
                          n < 2 ? "no comma" : "more than two fields: quote a caption that contains commas");
            break;
        }
        st = parse_label_line(d, fl, path, lineno, max_label);
        if (st != LDM_OK) break;
    }
    if (st == LDM_OK && r < 0) st = r == -1 ? LDM_ERR_FORMAT : LDM_ERR_IO;
    fclose(f);
    for (int64_t i = 0; st == LDM_OK && i < d->n; i++)
        if (!d->items[i].line)
            st = ldm_fail(LDM_ERR_FORMAT, "%s: no line for the image %s (every image needs a label)", path,
                          d->items[i].name);
    ldm_free(own);
    return st;
}

/* ------------------------------------------------------------------ open / free */

void ltr_dataset_free(ltr_dataset *d)
{
    if (!d) return;
    for (int64_t i = 0; i < d->n; i++) {
        ldm_free(d->items[i].name);
        ldm_free(d->items[i].caption);
        if (d->cache) ldm_free(d->cache[i]);
    }
    for (int64_t k = 0; k < d->n_names; k++) ldm_free(d->names[k]);
    ldm_free(d->names);
    ldm_free(d->items);
    ldm_free(d->cache);
    ldm_free(d->perm);
    ldm_free(d->dir);
    ldm_free(d);
}

static void resized_dims(int w, int h, int size, int *rw, int *rh)
{
    if (w <= h) {
        *rw = size;
        *rh = (int)LDM_MAX(size, llround((double)h * size / w));
    } else {
        *rh = size;
        *rw = (int)LDM_MAX(size, llround((double)w * size / h));
    }
}

ldm_status ltr_dataset_open(const char *dir, const ltr_data_opts *o, ltr_dataset **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ltr_dataset_open: out is NULL");
    *out = NULL;
    if (!dir || !*dir) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ltr_dataset_open: no folder given");
    ltr_data_opts def;
    ltr_data_opts_init(&def);
    if (!o) o = &def;
    if (o->size < 1 || o->size > 4096)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "data %s: size %d out of range (1..4096)", dir, o->size);
    if (!(o->flip >= 0 && o->flip <= 1))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "data %s: flip probability %g out of range (0..1)", dir, o->flip);
    if (o->crop != LTR_CROP_CENTER && o->crop != LTR_CROP_RANDOM)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "data %s: unknown crop mode %d", dir, (int)o->crop);
    if (o->n_classes < 0 || o->n_classes > INT32_MAX)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "data %s: n_classes %lld out of range", dir, (long long)o->n_classes);
    ltr_dataset *d = ldm_calloc(1, sizeof *d);
    if (!d) return ldm_alloc_failure_status();
    d->o = *o;
    d->o.labels_path = NULL;
    d->perm_epoch = -1;
    char *buf = NULL;
    ldm_status st = LDM_OK;
    if (!(d->dir = ldm_strdup(dir))) st = ldm_alloc_failure_status();
    if (st == LDM_OK) st = list_dir(d);
    if (st == LDM_OK && !(buf = ldm_malloc(MAX_LINE + 1))) st = ldm_alloc_failure_status();
    if (st == LDM_OK) st = read_classes(d, buf);
    if (st == LDM_OK && o->n_classes > 0 && d->n_names > o->n_classes)
        st = ldm_fail(LDM_ERR_FORMAT, "%s/classes.txt: %lld class names but n_classes is %lld", dir,
                      (long long)d->n_names, (long long)o->n_classes);
    int64_t max_label = -1;
    if (st == LDM_OK) {
        d->o.labels_path = o->labels_path;
        st = read_labels(d, buf, &max_label);
        d->o.labels_path = NULL;
    }
    ldm_free(buf);
    d->n_classes = o->n_classes > 0 ? o->n_classes : d->n_names > 0 ? d->n_names : max_label + 1;
    /* Headers: sizes, the cache budget. */
    size_t total = 0;
    int cache_fits = d->o.cache_bytes > 0;
    for (int64_t i = 0; st == LDM_OK && i < d->n; i++) {
        item *it = &d->items[i];
        char *path = join(dir, it->name);
        if (!path) {
            st = ldm_alloc_failure_status();
            break;
        }
        st = read_header(path, &it->w, &it->h);
        if (st == LDM_OK && !o->resize && (it->w < o->size || it->h < o->size))
            st = ldm_fail(LDM_ERR_FORMAT, "image %s: %dx%d is smaller than %dx%d (resizing is off)", path, it->w, it->h,
                          o->size, o->size);
        ldm_free(path);
        if (st != LDM_OK) break;
        if (o->resize)
            resized_dims(it->w, it->h, o->size, &it->rw, &it->rh);
        else
            it->rw = it->w, it->rh = it->h;
        size_t bytes = (size_t)it->rw * (size_t)it->rh * 3;
        if (ldm_add_size(total, bytes, &total) || total > d->o.cache_bytes) cache_fits = 0;
    }
    if (st == LDM_OK && cache_fits && d->n > 0 && !(d->cache = ldm_calloc((size_t)d->n, sizeof *d->cache)))
        st = ldm_alloc_failure_status();
    if (st != LDM_OK) {
        ltr_dataset_free(d);
        return st;
    }
    *out = d;
    return LDM_OK;
}

int64_t ltr_dataset_count(const ltr_dataset *d)
{
    return d ? d->n : 0;
}

int64_t ltr_dataset_n_classes(const ltr_dataset *d)
{
    return d ? d->n_classes : 0;
}

const char *ltr_dataset_class_name(const ltr_dataset *d, int64_t k)
{
    return d && k >= 0 && k < d->n_names ? d->names[k] : NULL;
}

const char *ltr_dataset_file(const ltr_dataset *d, int64_t i)
{
    return d && i >= 0 && i < d->n ? d->items[i].name : NULL;
}

int64_t ltr_dataset_label(const ltr_dataset *d, int64_t i)
{
    return d && i >= 0 && i < d->n ? d->items[i].label : -1;
}

const char *ltr_dataset_caption(const ltr_dataset *d, int64_t i)
{
    return d && i >= 0 && i < d->n ? d->items[i].caption : NULL;
}

/* ------------------------------------------------------------------ shuffling */

static uint64_t rand64(uint64_t seed, uint64_t a, uint64_t b, uint32_t tag)
{
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t ctr[4] = {(uint32_t)a, (uint32_t)(a >> 32), (uint32_t)b, tag ^ (uint32_t)(b >> 32)};
    uint32_t r[4];
    ls_philox4x32_10(ctr, key, r);
    return (uint64_t)r[0] | (uint64_t)r[1] << 32;
}

/* Uniform in [0, n) by the multiply-high method (bias below 2^-40 for the sizes used here). */
static uint64_t below(uint64_t r, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)r * n) >> 64);
}

static ldm_status ensure_perm(ltr_dataset *d, uint64_t seed, int64_t epoch)
{
    if (d->perm && d->perm_epoch == epoch && d->perm_seed == seed) return LDM_OK;
    if (!d->perm && !(d->perm = ldm_malloc((size_t)d->n * sizeof *d->perm))) return ldm_alloc_failure_status();
    for (int64_t i = 0; i < d->n; i++) d->perm[i] = i;
    for (int64_t i = d->n - 1; i > 0; i--) {
        int64_t j = (int64_t)below(rand64(seed, (uint64_t)i, (uint64_t)epoch, TAG_PERM), (uint64_t)i + 1);
        int64_t t = d->perm[i];
        d->perm[i] = d->perm[j];
        d->perm[j] = t;
    }
    d->perm_epoch = epoch;
    d->perm_seed = seed;
    return LDM_OK;
}

int64_t ltr_dataset_index_at(ltr_dataset *d, uint64_t seed, int64_t pos)
{
    if (!d || d->n == 0 || pos < 0) return -1;
    if (ensure_perm(d, seed, pos / d->n) != LDM_OK) return -1;
    return d->perm[pos % d->n];
}

/* ------------------------------------------------------------------ decoding and resizing */

/* Separable antialiased bilinear resampling (a triangle filter widened by the reduction factor,
 * PIL's BILINEAR) of an HWC byte image, rounded to bytes at the end. */
typedef struct {
    int *lo, *cnt;
    float *w; /* cnt weights per output, at w[o * stride] */
    int stride;
} taps;

static void taps_free(taps *t)
{
    ldm_free(t->lo);
    ldm_free(t->cnt);
    ldm_free(t->w);
}

static ldm_status make_taps(int in, int out, taps *t)
{
    double scale = (double)in / out, fs = scale > 1 ? scale : 1, support = fs;
    t->stride = (int)ceil(support) * 2 + 2;
    t->lo = ldm_malloc((size_t)out * sizeof *t->lo);
    t->cnt = ldm_malloc((size_t)out * sizeof *t->cnt);
    t->w = ldm_malloc((size_t)out * (size_t)t->stride * sizeof *t->w);
    if (!t->lo || !t->cnt || !t->w) {
        taps_free(t);
        return ldm_alloc_failure_status();
    }
    for (int o = 0; o < out; o++) {
        double c = (o + 0.5) * scale;
        int lo = (int)floor(c - support + 0.5), hi = (int)floor(c + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in) hi = in;
        if (hi - lo > t->stride) hi = lo + t->stride;
        double sum = 0;
        float *w = t->w + (size_t)o * (size_t)t->stride;
        for (int k = lo; k < hi; k++) {
            double x = fabs((k + 0.5 - c) / fs);
            double v = x < 1 ? 1 - x : 0;
            w[k - lo] = (float)v;
            sum += v;
        }
        if (sum <= 0) { /* cannot happen for in, out >= 1; keep the nearest sample */
            lo = (int)LDM_MIN(in - 1, (int)c);
            hi = lo + 1;
            w[0] = 1;
            sum = 1;
        }
        for (int k = 0; k < hi - lo; k++) w[k] = (float)(w[k] / sum);
        t->lo[o] = lo;
        t->cnt[o] = hi - lo;
    }
    return LDM_OK;
}

static ldm_status resize_bytes(const unsigned char *src, int w, int h, unsigned char *dst, int rw, int rh)
{
    taps tx = {0}, ty = {0};
    ldm_status st = make_taps(w, rw, &tx);
    if (st == LDM_OK) st = make_taps(h, rh, &ty);
    float *mid = st == LDM_OK ? ldm_malloc((size_t)h * (size_t)rw * 3 * sizeof *mid) : NULL;
    if (st == LDM_OK && !mid) st = ldm_alloc_failure_status();
    if (st == LDM_OK) {
        for (int y = 0; y < h; y++)
            for (int x = 0; x < rw; x++) {
                const float *wt = tx.w + (size_t)x * (size_t)tx.stride;
                float acc[3] = {0, 0, 0};
                for (int k = 0; k < tx.cnt[x]; k++) {
                    const unsigned char *p = src + ((size_t)y * (size_t)w + (size_t)(tx.lo[x] + k)) * 3;
                    for (int c = 0; c < 3; c++) acc[c] += wt[k] * p[c];
                }
                for (int c = 0; c < 3; c++) mid[((size_t)y * (size_t)rw + (size_t)x) * 3 + c] = acc[c];
            }
        for (int y = 0; y < rh; y++) {
            const float *wt = ty.w + (size_t)y * (size_t)ty.stride;
            for (int x = 0; x < rw; x++)
                for (int c = 0; c < 3; c++) {
                    float acc = 0;
                    for (int k = 0; k < ty.cnt[y]; k++)
                        acc += wt[k] * mid[((size_t)(ty.lo[y] + k) * (size_t)rw + (size_t)x) * 3 + c];
                    long v = lrintf(acc);
                    dst[((size_t)y * (size_t)rw + (size_t)x) * 3 + c] = (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v);
                }
        }
    }
    ldm_free(mid);
    taps_free(&tx);
    taps_free(&ty);
    return st;
}

/* Image i as HWC bytes at its resized size (rh x rw): from the cache, or decoded (and cached when
 * the cache is on). *owned = 1 when the caller must ldm_free the block. */
static ldm_status load_bytes(ltr_dataset *d, int64_t i, unsigned char **out, int *owned)
{
    item *it = &d->items[i];
    if (d->cache && d->cache[i]) {
        *out = d->cache[i];
        *owned = 0;
        return LDM_OK;
    }
    char *path = join(d->dir, it->name);
    if (!path) return ldm_alloc_failure_status();
    ldm_tensor *t = NULL;
    ldm_status st = ldm_image_read_png(path, &t);
    if (st != LDM_OK) {
        ldm_fail_context(st, "data %s: ", d->dir);
        ldm_free(path);
        return st;
    }
    int w = (int)ldm_tensor_dim(t, 3), h = (int)ldm_tensor_dim(t, 2);
    if (w != it->w || h != it->h) {
        st = ldm_fail(LDM_ERR_FORMAT, "image %s: now %dx%d, was %dx%d when the data set was opened", path, w, h, it->w,
                      it->h);
        ldm_tensor_free(t);
        ldm_free(path);
        return st;
    }
    ldm_free(path);
    size_t np = (size_t)w * (size_t)h;
    unsigned char *full = ldm_malloc(np * 3);
    if (!full) {
        ldm_tensor_free(t);
        return ldm_alloc_failure_status();
    }
    const float *px = ldm_tensor_data(t);
    for (size_t p = 0; p < np; p++)
        for (int c = 0; c < 3; c++) {
            long v = lrintf((px[(size_t)c * np + p] + 1.0f) * 127.5f);
            full[p * 3 + (size_t)c] = (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    ldm_tensor_free(t);
    unsigned char *res = full;
    if (it->rw != w || it->rh != h) {
        res = ldm_malloc((size_t)it->rw * (size_t)it->rh * 3);
        st = res ? resize_bytes(full, w, h, res, it->rw, it->rh) : ldm_alloc_failure_status();
        ldm_free(full);
        if (st != LDM_OK) {
            ldm_free(res);
            return st;
        }
    }
    if (d->cache) {
        d->cache[i] = res;
        *owned = 0;
    } else {
        *owned = 1;
    }
    *out = res;
    return LDM_OK;
}

ldm_status ltr_dataset_image(ltr_dataset *d, uint64_t seed, int64_t epoch, int64_t i, float *out)
{
    if (!d || !out || i < 0 || i >= d->n || epoch < 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ltr_dataset_image: bad arguments");
    item *it = &d->items[i];
    unsigned char *px = NULL;
    int owned = 0;
    LDM_TRY(load_bytes(d, i, &px, &owned));
    int S = d->o.size;
    int x0 = (it->rw - S) / 2, y0 = (it->rh - S) / 2, flip = 0;
    if (d->o.crop == LTR_CROP_RANDOM || d->o.flip > 0) {
        uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
        uint32_t ctr[4] = {(uint32_t)i, (uint32_t)((uint64_t)i >> 32), (uint32_t)epoch,
                           TAG_AUG ^ (uint32_t)((uint64_t)epoch >> 32)};
        uint32_t r[4];
        ls_philox4x32_10(ctr, key, r);
        if (d->o.crop == LTR_CROP_RANDOM) {
            x0 = (int)(((uint64_t)r[0] * (uint64_t)(it->rw - S + 1)) >> 32);
            y0 = (int)(((uint64_t)r[1] * (uint64_t)(it->rh - S + 1)) >> 32);
        }
        flip = (double)(r[2] >> 8) * (1.0 / 16777216.0) < d->o.flip;
    }
    size_t plane = (size_t)S * (size_t)S;
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) {
            int sx = x0 + (flip ? S - 1 - x : x);
            const unsigned char *p = px + ((size_t)(y0 + y) * (size_t)it->rw + (size_t)sx) * 3;
            for (int c = 0; c < 3; c++)
                out[(size_t)c * plane + (size_t)y * (size_t)S + (size_t)x] = p[c] / 127.5f - 1.0f;
        }
    if (owned) ldm_free(px);
    return LDM_OK;
}

ldm_status ltr_dataset_batch(ltr_dataset *d, uint64_t seed, int64_t step, int batch, float *images, int64_t *labels,
                             const char **captions)
{
    if (!d || !images || batch < 1 || step < 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ltr_dataset_batch: bad arguments (step %lld, batch %d)",
                        (long long)step, batch);
    if (d->n == 0) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "data %s: no images", d->dir);
    if (step > (INT64_MAX - batch) / batch)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ltr_dataset_batch: step %lld too large", (long long)step);
    size_t per = (size_t)3 * (size_t)d->o.size * (size_t)d->o.size;
    for (int b = 0; b < batch; b++) {
        int64_t pos = step * batch + b, epoch = pos / d->n;
        LDM_TRY(ensure_perm(d, seed, epoch));
        int64_t i = d->perm[pos % d->n];
        LDM_TRY(ltr_dataset_image(d, seed, epoch, i, images + (size_t)b * per));
        if (labels) labels[b] = d->items[i].label;
        if (captions) captions[b] = d->items[i].caption;
    }
    return LDM_OK;
}
