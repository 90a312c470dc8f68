/* ytree.c - libyaml event stream -> ld_ynode tree, and YAML 1.1 scalar typing.
 *
 * Aliases are rejected outright: model configs never use them, and expanding them is how a few
 * hundred bytes of YAML become gigabytes ("billion laughs"). Without aliases the tree is linear
 * in the input, and the input, the nesting depth and the node count are all capped. */
#include "ytree.h"

#include <ctype.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

typedef struct builder {
    const char *name;
    size_t nodes;
    int depth;
    int documents;
    ld_ynode *root;
    ld_ynode *stack[LD_Y_MAX_DEPTH];
    char *pending_key[LD_Y_MAX_DEPTH]; /* a map's key waiting for its value */
} builder;

void ld_yaml_free(ld_ynode *n)
{
    if (!n) return;
    for (size_t i = 0; i < n->n; i++) {
        if (n->keys) ldm_free(n->keys[i]);
        ld_yaml_free(n->items[i]);
    }
    ldm_free(n->keys);
    ldm_free(n->items);
    ldm_free(n->text);
    ldm_free(n);
}

static ld_ynode *node_new(builder *b, ld_ykind kind, int line)
{
    if (b->nodes >= LD_Y_MAX_NODES) {
        ldm_fail(LDM_ERR_LIMIT, "%s:%d: more than %d YAML nodes", b->name, line, LD_Y_MAX_NODES);
        return NULL;
    }
    ld_ynode *n = ldm_calloc(1, sizeof *n);
    if (!n) return NULL;
    b->nodes++;
    n->kind = kind;
    n->line = line;
    return n;
}

/* Makes room for one more child. Capacity is implicit: 4, then doubled whenever the count
 * reaches a power of two >= 4, so appends stay linear. */
static ldm_status grow(ld_ynode *parent, int with_keys)
{
    size_t n = parent->n;
    int full = n == 0 || (n >= 4 && (n & (n - 1)) == 0);
    if (!full) return LDM_OK;
    size_t cap = n ? 2 * n : 4;
    ld_ynode **items = ldm_realloc(parent->items, cap * sizeof *items);
    if (!items) return ldm_alloc_failure_status();
    parent->items = items;
    if (with_keys) {
        char **keys = ldm_realloc(parent->keys, cap * sizeof *keys);
        if (!keys) return ldm_alloc_failure_status();
        parent->keys = keys;
    }
    return LDM_OK;
}

static ldm_status add_to_map(builder *b, ld_ynode *map, ld_ynode *node)
{
    char **key = &b->pending_key[b->depth - 1];
    if (!*key) {
        if (node->kind != LD_Y_SCALAR) {
            int line = node->line;
            ld_yaml_free(node);
            return ldm_fail(LDM_ERR_UNSUPPORTED, "%s:%d: only plain scalar map keys are supported", b->name, line);
        }
        for (size_t i = 0; i < map->n; i++)
            if (strcmp(map->keys[i], node->text) == 0) {
                ldm_status st = ldm_fail(LDM_ERR_FORMAT, "%s:%d: duplicate key '%s'", b->name, node->line, node->text);
                ld_yaml_free(node);
                return st;
            }
        *key = node->text;
        node->text = NULL;
        ld_yaml_free(node);
        return LDM_OK;
    }
    ldm_status st = grow(map, 1);
    if (st != LDM_OK) {
        ld_yaml_free(node);
        return st;
    }
    map->keys[map->n] = *key;
    map->items[map->n++] = node;
    *key = NULL;
    return LDM_OK;
}

/* Hangs a new node under the innermost open container (or makes it the root). Takes ownership. */
static ldm_status attach(builder *b, ld_ynode *node)
{
    if (b->depth == 0) {
        if (b->root) {
            ld_yaml_free(node);
            return ldm_fail(LDM_ERR_FORMAT, "%s: more than one root node", b->name);
        }
        b->root = node;
        return LDM_OK;
    }
    ld_ynode *parent = b->stack[b->depth - 1];
    if (parent->kind == LD_Y_MAP) return add_to_map(b, parent, node);
    ldm_status st = grow(parent, 0);
    if (st != LDM_OK) {
        ld_yaml_free(node);
        return st;
    }
    parent->items[parent->n++] = node;
    return LDM_OK;
}

/* Standard tags change typing (!!str keeps "1" a string); anything else (!!python/...) is refused. */
static ldm_status check_tag(builder *b, const yaml_char_t *tag, int line, int *plain)
{
    if (!tag) return LDM_OK;
    static const char prefix[] = "tag:yaml.org,2002:";
    const char *t = (const char *)tag;
    if (strncmp(t, prefix, sizeof prefix - 1) == 0) {
        const char *k = t + sizeof prefix - 1;
        if (strcmp(k, "str") == 0) *plain = 0;
        if (!strcmp(k, "str") || !strcmp(k, "int") || !strcmp(k, "float") || !strcmp(k, "bool") ||
            !strcmp(k, "null") || !strcmp(k, "map") || !strcmp(k, "seq"))
            return LDM_OK;
    }
    return ldm_fail(LDM_ERR_UNSUPPORTED, "%s:%d: YAML tag %s is not supported", b->name, line, t);
}

static ldm_status on_scalar(builder *b, const yaml_event_t *ev)
{
    int line = (int)ev->start_mark.line + 1;
    int plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    LDM_TRY(check_tag(b, ev->data.scalar.tag, line, &plain));
    size_t len = ev->data.scalar.length;
    if (strnlen((const char *)ev->data.scalar.value, len) != len)
        return ldm_fail(LDM_ERR_FORMAT, "%s:%d: NUL character in a scalar", b->name, line);
    ld_ynode *n = node_new(b, LD_Y_SCALAR, line);
    if (!n) return ldm_fail_context(ldm_alloc_failure_status(), "%s", b->name);
    n->plain = plain;
    n->text = ldm_malloc(len + 1);
    if (!n->text) {
        ld_yaml_free(n);
        return ldm_alloc_failure_status();
    }
    memcpy(n->text, ev->data.scalar.value, len);
    n->text[len] = '\0';
    return attach(b, n);
}

static ldm_status on_start(builder *b, const yaml_event_t *ev, ld_ykind kind)
{
    int line = (int)ev->start_mark.line + 1;
    int plain = 1;
    const yaml_char_t *tag = kind == LD_Y_MAP ? ev->data.mapping_start.tag : ev->data.sequence_start.tag;
    LDM_TRY(check_tag(b, tag, line, &plain));
    if (b->depth >= LD_Y_MAX_DEPTH)
        return ldm_fail(LDM_ERR_LIMIT, "%s:%d: YAML nested deeper than %d levels", b->name, line, LD_Y_MAX_DEPTH);
    ld_ynode *n = node_new(b, kind, line);
    if (!n) return ldm_alloc_failure_status();
    LDM_TRY(attach(b, n));
    b->stack[b->depth] = n;
    b->pending_key[b->depth] = NULL;
    b->depth++;
    return LDM_OK;
}

static ldm_status on_event(builder *b, const yaml_event_t *ev, int *done)
{
    int line = (int)ev->start_mark.line + 1;
    switch (ev->type) {
    case YAML_DOCUMENT_START_EVENT:
        if (++b->documents > 1)
            return ldm_fail(LDM_ERR_FORMAT, "%s:%d: more than one YAML document", b->name, line);
        return LDM_OK;
    case YAML_ALIAS_EVENT:
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s:%d: YAML aliases (*%s) are not supported in model configs", b->name,
                        line, (const char *)ev->data.alias.anchor);
    case YAML_SCALAR_EVENT: return on_scalar(b, ev);
    case YAML_SEQUENCE_START_EVENT: return on_start(b, ev, LD_Y_SEQ);
    case YAML_MAPPING_START_EVENT: return on_start(b, ev, LD_Y_MAP);
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
        if (b->depth > 0) b->depth--;
        return LDM_OK;
    case YAML_STREAM_END_EVENT: *done = 1; return LDM_OK;
    default: return LDM_OK;
    }
}

static void builder_release(builder *b)
{
    for (int i = 0; i < LD_Y_MAX_DEPTH; i++) ldm_free(b->pending_key[i]);
    ld_yaml_free(b->root);
    b->root = NULL;
}

static ldm_status run_parser(yaml_parser_t *p, builder *b)
{
    int done = 0;
    while (!done) {
        yaml_event_t ev;
        if (!yaml_parser_parse(p, &ev))
            return ldm_fail(LDM_ERR_FORMAT, "%s:%d:%d: invalid YAML: %s%s%s", b->name, (int)p->problem_mark.line + 1,
                            (int)p->problem_mark.column + 1, p->problem ? p->problem : "parse error",
                            p->context ? " " : "", p->context ? p->context : "");
        ldm_status st = on_event(b, &ev, &done);
        yaml_event_delete(&ev);
        if (st != LDM_OK) return st;
    }
    return LDM_OK;
}

ldm_status ld_yaml_parse(const char *text, size_t len, const char *name, ld_ynode **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ld_yaml_parse: NULL output");
    *out = NULL;
    name = name ? name : "(yaml)";
    if (!text && len) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: NULL text", name);
    if (len > LD_Y_MAX_INPUT)
        return ldm_fail(LDM_ERR_LIMIT, "%s: %zu bytes is more than the %zu allowed for a config", name, len,
                        LD_Y_MAX_INPUT);
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) return ldm_fail(LDM_ERR_OUT_OF_MEMORY, "%s: cannot start the YAML parser", name);
    yaml_parser_set_input_string(&p, (const unsigned char *)(text ? text : ""), len);
    builder *b = ldm_calloc(1, sizeof *b);
    if (!b) {
        yaml_parser_delete(&p);
        return ldm_alloc_failure_status();
    }
    b->name = name;
    ldm_status st = run_parser(&p, b);
    yaml_parser_delete(&p);
    if (st == LDM_OK && !b->root) st = ldm_fail(LDM_ERR_FORMAT, "%s: empty YAML document", name);
    if (st == LDM_OK) {
        *out = b->root;
        b->root = NULL;
    }
    builder_release(b);
    ldm_free(b);
    return st;
}

const ld_ynode *ld_yaml_get(const ld_ynode *map, const char *key)
{
    if (!map || map->kind != LD_Y_MAP || !key) return NULL;
    for (size_t i = 0; i < map->n; i++)
        if (strcmp(map->keys[i], key) == 0) return map->items[i];
    return NULL;
}

/* ---- scalar typing: PyYAML's SafeLoader resolvers (YAML 1.1), with OmegaConf's float rule */

static int is_plain_scalar(const ld_ynode *n) { return n && n->kind == LD_Y_SCALAR && n->plain; }

int ld_yaml_is_null(const ld_ynode *n)
{
    if (!is_plain_scalar(n)) return 0;
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};
    for (size_t i = 0; i < LDM_ARRAY_LEN(nulls); i++)
        if (strcmp(n->text, nulls[i]) == 0) return 1;
    return 0;
}

int ld_yaml_bool(const ld_ynode *n, int *out)
{
    if (!is_plain_scalar(n)) return -1;
    static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
    static const char *const no[] = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"};
    for (size_t i = 0; i < LDM_ARRAY_LEN(yes); i++) {
        if (strcmp(n->text, yes[i]) == 0) return *out = 1, 0;
        if (strcmp(n->text, no[i]) == 0) return *out = 0, 0;
    }
    return -1;
}

static int digit_value(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return 99;
}

/* Digits in `base` with '_' separators (at least one digit), no overflow. */
static int parse_digits(const char *s, int base, unsigned long long *out)
{
    unsigned long long v = 0;
    int any = 0;
    for (; *s; s++) {
        if (*s == '_') continue;
        int d = digit_value((unsigned char)*s);
        if (d >= base) return -1;
        if (v > (ULLONG_MAX - (unsigned)d) / (unsigned)base) return -1;
        v = v * (unsigned)base + (unsigned)d;
        any = 1;
    }
    *out = v;
    return any ? 0 : -1;
}

int ld_yaml_int(const ld_ynode *n, long long *out)
{
    if (!is_plain_scalar(n)) return -1;
    const char *s = n->text;
    int neg = 0;
    if (*s == '+' || *s == '-') neg = *s++ == '-';
    if (!isdigit((unsigned char)*s)) return -1;
    unsigned long long v;
    int rc;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) rc = parse_digits(s + 2, 16, &v);
    else if (s[0] == '0' && (s[1] == 'b' || s[1] == 'B')) rc = parse_digits(s + 2, 2, &v);
    else if (s[0] == '0' && s[1]) rc = parse_digits(s + 1, 8, &v); /* YAML 1.1: leading 0 = octal */
    else rc = parse_digits(s, 10, &v);
    if (rc || v > (unsigned long long)LLONG_MAX) return -1;
    *out = neg ? -(long long)v : (long long)v;
    return 0;
}

/* OmegaConf's float pattern: digits '.' digits? exp? | digits exp | '.' digits exp? | [-+].inf | .nan
 * (so "1e-4" is a float, unlike plain PyYAML). Copies the digits without '_' into buf. */
static int float_shape(const char *s, char *buf, size_t cap)
{
    size_t o = 0;
    int int_digits = 0, frac_digits = 0, dot = 0, exp = 0;
    if (*s == '+' || *s == '-') buf[o++] = *s++;
    for (; isdigit((unsigned char)*s) || *s == '_'; s++)
        if (*s != '_' && o + 1 < cap) buf[o++] = *s, int_digits++;
    if (*s == '.') {
        dot = 1;
        if (o + 1 < cap) buf[o++] = *s;
        for (s++; isdigit((unsigned char)*s) || *s == '_'; s++)
            if (*s != '_' && o + 1 < cap) buf[o++] = *s, frac_digits++;
    }
    if (*s == 'e' || *s == 'E') {
        exp = 1;
        if (o + 1 < cap) buf[o++] = 'e';
        s++;
        if ((*s == '+' || *s == '-') && o + 1 < cap) buf[o++] = *s++;
        if (!isdigit((unsigned char)*s)) return -1;
        for (; isdigit((unsigned char)*s); s++)
            if (o + 1 < cap) buf[o++] = *s;
    }
    buf[o] = '\0';
    if (*s || o + 1 >= cap) return -1;
    if (int_digits == 0 && frac_digits == 0) return -1;
    if (!dot && !exp) return -1;
    return 0;
}

int ld_yaml_float(const ld_ynode *n, double *out)
{
    long long i;
    if (ld_yaml_int(n, &i) == 0) return *out = (double)i, 0;
    if (!is_plain_scalar(n)) return -1;
    const char *s = n->text;
    const char *body = (*s == '+' || *s == '-') ? s + 1 : s;
    if (!strcmp(body, ".inf") || !strcmp(body, ".Inf") || !strcmp(body, ".INF"))
        return *out = (*s == '-') ? -INFINITY : INFINITY, 0;
    if (!strcmp(s, ".nan") || !strcmp(s, ".NaN") || !strcmp(s, ".NAN")) return *out = NAN, 0;
    char buf[128];
    if (float_shape(s, buf, sizeof buf)) return -1;
    /* strtod follows the C locale's decimal point; a host program may have set another one. */
    const char *dp = localeconv()->decimal_point;
    char *dot = strchr(buf, '.');
    if (dot && dp && dp[0] && dp[0] != '.' && !dp[1]) *dot = dp[0];
    char *end;
    double v = strtod(buf, &end);
    if (*end) return -1;
    *out = v;
    return 0;
}

void ld_yaml_show(const ld_ynode *n, char *buf, size_t cap)
{
    if (!n) {
        snprintf(buf, cap, "nothing");
        return;
    }
    if (n->kind == LD_Y_SEQ) {
        snprintf(buf, cap, "a sequence (line %d)", n->line);
        return;
    }
    if (n->kind == LD_Y_MAP) {
        snprintf(buf, cap, "a map (line %d)", n->line);
        return;
    }
    long long i;
    double d;
    int b;
    const char *type = ld_yaml_is_null(n)          ? "null"
                       : ld_yaml_bool(n, &b) == 0  ? "boolean"
                       : ld_yaml_int(n, &i) == 0   ? "integer"
                       : ld_yaml_float(n, &d) == 0 ? "float"
                                                   : "string";
    size_t len = strlen(n->text);
    snprintf(buf, cap, "\"%.48s%s\" (%s, line %d)", n->text, len > 48 ? "..." : "", type, n->line);
}
