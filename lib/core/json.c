/* json.c - strict recursive-descent JSON parser with bounded depth. */
#include "json.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LJ_MAX_DEPTH 64

typedef struct {
    const char *s;
    size_t len, pos;
    int failed;
} lj_parser;

static lj_value *parse_value(lj_parser *p, int depth);

static void *perr(lj_parser *p, const char *what)
{
    if (!p->failed) ldm_fail(LDM_ERR_FORMAT, "JSON: %s at byte %zu", what, p->pos);
    p->failed = 1;
    return NULL;
}

static void skip_ws(lj_parser *p)
{
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static int literal(lj_parser *p, const char *word)
{
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0) return 0;
    p->pos += n;
    return 1;
}

static lj_value *new_value(lj_parser *p, lj_type type)
{
    lj_value *v = ldm_calloc(1, sizeof *v);
    if (!v) p->failed = 1;
    else v->type = type;
    return v;
}

static int hex4(lj_parser *p, unsigned *out)
{
    if (p->len - p->pos < 4) return 0;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p->s[p->pos++];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Parses a string starting at the opening quote; returns malloc'd UTF-8 (escapes decoded). */
static char *parse_string(lj_parser *p, size_t *out_len)
{
    p->pos++; /* opening quote */
    size_t start = p->pos;
    /* Decoded output is never longer than the encoded text. */
    size_t end = start;
    while (end < p->len && p->s[end] != '"') end += (p->s[end] == '\\') ? 2 : 1;
    if (end >= p->len) return perr(p, "unterminated string");
    char *out = ldm_malloc(end - start + 1);
    if (!out) { p->failed = 1; return NULL; }
    size_t n = 0;
    while (p->pos < p->len && p->s[p->pos] != '"') {
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c < 0x20) { ldm_free(out); return perr(p, "control character in string"); }
        if (c != '\\') { out[n++] = (char)c; p->pos++; continue; }
        p->pos++;
        if (p->pos >= p->len) break;
        char e = p->s[p->pos++];
        unsigned cp;
        switch (e) {
        case '"': out[n++] = '"'; break;
        case '\\': out[n++] = '\\'; break;
        case '/': out[n++] = '/'; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'n': out[n++] = '\n'; break;
        case 'r': out[n++] = '\r'; break;
        case 't': out[n++] = '\t'; break;
        case 'u':
            if (!hex4(p, &cp)) { ldm_free(out); return perr(p, "bad \\u escape"); }
            if (cp >= 0xD800 && cp < 0xDC00) {
                unsigned lo;
                if (!literal(p, "\\u") || !hex4(p, &lo) || lo < 0xDC00 || lo > 0xDFFF) {
                    ldm_free(out);
                    return perr(p, "unpaired surrogate");
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp < 0xE000) {
                ldm_free(out);
                return perr(p, "unpaired surrogate");
            }
            n += put_utf8(out + n, cp);
            break;
        default: ldm_free(out); return perr(p, "bad escape");
        }
    }
    if (p->pos >= p->len) { ldm_free(out); return perr(p, "unterminated string"); }
    p->pos++; /* closing quote */
    out[n] = '\0';
    *out_len = n;
    return out;
}

static lj_value *parse_number(lj_parser *p)
{
    size_t start = p->pos;
    int integral = 1;
    if (p->s[p->pos] == '-') p->pos++;
    if (p->pos >= p->len || p->s[p->pos] < '0' || p->s[p->pos] > '9') return perr(p, "bad number");
    if (p->s[p->pos] == '0') p->pos++;
    else while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    if (p->pos < p->len && p->s[p->pos] == '.') {
        integral = 0;
        p->pos++;
        if (p->pos >= p->len || p->s[p->pos] < '0' || p->s[p->pos] > '9') return perr(p, "bad number");
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    }
    if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        integral = 0;
        p->pos++;
        if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
        if (p->pos >= p->len || p->s[p->pos] < '0' || p->s[p->pos] > '9') return perr(p, "bad number");
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    }
    char buf[64];
    size_t n = p->pos - start;
    if (n >= sizeof buf) return perr(p, "number too long");
    memcpy(buf, p->s + start, n);
    buf[n] = '\0';
    lj_value *v = new_value(p, LJ_NUMBER);
    if (!v) return NULL;
    v->number = strtod(buf, NULL);
    if (integral) {
        /* exact int64 parse with overflow check */
        int neg = buf[0] == '-';
        uint64_t acc = 0;
        int ok = 1;
        for (const char *c = buf + neg; *c; c++) {
            if (acc > (UINT64_MAX - (uint64_t)(*c - '0')) / 10) { ok = 0; break; }
            acc = acc * 10 + (uint64_t)(*c - '0');
        }
        if (ok && (neg ? acc <= (uint64_t)INT64_MAX + 1 : acc <= (uint64_t)INT64_MAX)) {
            v->is_integer = 1;
            v->integer = neg ? (int64_t)(0 - acc) : (int64_t)acc;
        }
    }
    return v;
}

static int push_item(lj_parser *p, lj_value *parent, lj_value *item, char *key, size_t *cap)
{
    if (parent->count == *cap) {
        size_t nc = *cap ? *cap * 2 : 4;
        lj_value **ni = ldm_realloc(parent->items, nc * sizeof *ni);
        if (!ni) { p->failed = 1; return 0; }
        parent->items = ni;
        if (parent->type == LJ_OBJECT) {
            char **nk = ldm_realloc(parent->keys, nc * sizeof *nk);
            if (!nk) { p->failed = 1; return 0; }
            parent->keys = nk;
        }
        *cap = nc;
    }
    parent->items[parent->count] = item;
    if (parent->type == LJ_OBJECT) parent->keys[parent->count] = key;
    parent->count++;
    return 1;
}

static lj_value *parse_container(lj_parser *p, int depth, int is_object)
{
    char close = is_object ? '}' : ']';
    lj_value *v = new_value(p, is_object ? LJ_OBJECT : LJ_ARRAY);
    if (!v) return NULL;
    size_t cap = 0;
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) { p->pos++; return v; }
    for (;;) {
        char *key = NULL;
        skip_ws(p);
        if (is_object) {
            size_t klen;
            if (p->pos >= p->len || p->s[p->pos] != '"') { lj_free(v); return perr(p, "expected object key"); }
            key = parse_string(p, &klen);
            if (!key) { lj_free(v); return NULL; }
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') { ldm_free(key); lj_free(v); return perr(p, "expected ':'"); }
            p->pos++;
        }
        lj_value *item = parse_value(p, depth + 1);
        if (!item || !push_item(p, v, item, key, &cap)) {
            ldm_free(key);
            lj_free(item);
            lj_free(v);
            return NULL;
        }
        skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == ',') { p->pos++; continue; }
        if (p->pos < p->len && p->s[p->pos] == close) { p->pos++; return v; }
        lj_free(v);
        return perr(p, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static lj_value *parse_value(lj_parser *p, int depth)
{
    if (depth > LJ_MAX_DEPTH) return perr(p, "nesting too deep");
    skip_ws(p);
    if (p->pos >= p->len) return perr(p, "unexpected end");
    char c = p->s[p->pos];
    if (c == '{') return parse_container(p, depth, 1);
    if (c == '[') return parse_container(p, depth, 0);
    if (c == '"') {
        size_t n;
        char *s = parse_string(p, &n);
        if (!s) return NULL;
        lj_value *v = new_value(p, LJ_STRING);
        if (!v) { ldm_free(s); return NULL; }
        v->string = s;
        v->string_len = n;
        return v;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number(p);
    if (literal(p, "true")) { lj_value *v = new_value(p, LJ_BOOL); if (v) v->boolean = 1; return v; }
    if (literal(p, "false")) return new_value(p, LJ_BOOL);
    if (literal(p, "null")) return new_value(p, LJ_NULL);
    return perr(p, "unexpected character");
}

lj_value *lj_parse(const char *text, size_t len)
{
    lj_parser p = {text, len, 0, 0};
    lj_value *v = parse_value(&p, 0);
    if (!v) return NULL;
    skip_ws(&p);
    if (p.pos != p.len) {
        lj_free(v);
        return perr(&p, "trailing characters");
    }
    return v;
}

void lj_free(lj_value *v)
{
    if (!v) return;
    for (size_t i = 0; i < v->count; i++) {
        lj_free(v->items[i]);
        if (v->keys) ldm_free(v->keys[i]);
    }
    ldm_free(v->items);
    ldm_free(v->keys);
    ldm_free(v->string);
    ldm_free(v);
}

const lj_value *lj_get(const lj_value *v, const char *key)
{
    if (!v || v->type != LJ_OBJECT) return NULL;
    for (size_t i = 0; i < v->count; i++)
        if (strcmp(v->keys[i], key) == 0) return v->items[i];
    return NULL;
}

double lj_number(const lj_value *v, double fallback) { return (v && v->type == LJ_NUMBER) ? v->number : fallback; }

const char *lj_string(const lj_value *v, const char *fallback) { return (v && v->type == LJ_STRING) ? v->string : fallback; }

int lj_int64(const lj_value *v, int64_t *out)
{
    if (!v || v->type != LJ_NUMBER) return -1;
    if (v->is_integer) { *out = v->integer; return 0; }
    /* 3.0 or 1e3 written as a float but integral and exactly representable */
    if (isfinite(v->number) && v->number == floor(v->number) && fabs(v->number) < 9007199254740992.0) {
        *out = (int64_t)v->number;
        return 0;
    }
    return -1;
}
