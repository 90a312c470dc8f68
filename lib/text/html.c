/* html.c - html.unescape exactly as CPython implements it:
 *   re.sub(r'&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)', _replace_charref, s)
 * A numeric reference is remapped (Windows-1252 range, NUL, CR), becomes U+FFFD (surrogate or
 * beyond U+10FFFF) or vanishes (noncharacters, most C0/C1 controls). A named reference is looked
 * up as matched (with its ';' if any); failing that, its longest prefix of >= 2 characters that
 * is a known name is replaced and the rest kept (legacy names such as "&ampx"). */
#include "html.h"

#include <string.h>

#define NAME_MAX_CHARS 32

static int in_sorted_u32(const uint32_t *a, size_t n, uint32_t v)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (a[mid] == v) return 1;
        if (a[mid] < v) lo = mid + 1;
        else hi = mid;
    }
    return 0;
}

/* Python's replacement for numeric reference `num` (saturated at 0x110000); 0 items when the
 * reference is dropped. */
static ldm_status emit_numeric(uint32_t num, ltx_cpbuf *out)
{
    for (size_t i = 0; i < ltx_html_invalid_charref_count; i++)
        if (ltx_html_invalid_charrefs[i].from == num) return ltx_cpbuf_push(out, ltx_html_invalid_charrefs[i].to);
    if ((num >= 0xD800 && num <= 0xDFFF) || num > LTX_U_MAX) return ltx_cpbuf_push(out, 0xFFFD);
    if (in_sorted_u32(ltx_html_invalid_codepoints, ltx_html_invalid_codepoint_count, num)) return LDM_OK;
    return ltx_cpbuf_push(out, num);
}

static int hex_value(uint32_t c)
{
    if (c >= '0' && c <= '9') return (int)(c - '0');
    if (c >= 'a' && c <= 'f') return (int)(c - 'a' + 10);
    if (c >= 'A' && c <= 'F') return (int)(c - 'A' + 10);
    return -1;
}

/* Tries the two numeric alternatives at in[i] == '#'. Returns the index just past the match, or
 * 0 when neither matches. */
static size_t match_numeric(const uint32_t *in, size_t n, size_t i, uint32_t *num)
{
    size_t k = i + 1;
    uint32_t v = 0;
    int base = 10;
    if (k < n && (in[k] == 'x' || in[k] == 'X')) {
        base = 16;
        k++;
    }
    size_t digits_start = k;
    for (; k < n; k++) {
        int d = base == 16 ? hex_value(in[k]) : (in[k] >= '0' && in[k] <= '9' ? (int)(in[k] - '0') : -1);
        if (d < 0) break;
        v = v > LTX_U_MAX ? LTX_U_MAX + 1 : v * (uint32_t)base + (uint32_t)d;
    }
    if (k == digits_start) return 0;
    if (v > LTX_U_MAX) v = LTX_U_MAX + 1;
    if (k < n && in[k] == ';') k++;
    *num = v;
    return k;
}

static int cmp_name(const char *name, const char *key, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char a = (unsigned char)name[i], b = (unsigned char)key[i];
        if (a == 0) return -1;
        if (a != b) return a < b ? -1 : 1;
    }
    return name[n] ? 1 : 0;
}

static const char *lookup_entity(const char *key, size_t n)
{
    size_t lo = 0, hi = ltx_html_entity_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = cmp_name(ltx_html_entities[mid].name, key, n);
        if (c == 0) return ltx_html_entities[mid].value;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

static ldm_status emit_utf8(const char *s, ltx_cpbuf *out)
{
    return ltx_utf8_decode(s, strlen(s), out, "HTML entity table");
}

static int is_name_char(uint32_t c)
{
    return !(c == '\t' || c == '\n' || c == '\f' || c == ' ' || c == '<' || c == '&' || c == '#' || c == ';');
}

/* The named alternative at in[i] (the char after '&'): s = in[i..end). Returns end, or 0 when
 * the alternative does not match. */
static ldm_status replace_named(const uint32_t *in, size_t n, size_t i, size_t *end_out, ltx_cpbuf *out)
{
    size_t k = i;
    while (k < n && k - i < NAME_MAX_CHARS && is_name_char(in[k])) k++;
    if (k == i) {
        *end_out = 0;
        return LDM_OK;
    }
    size_t end = (k < n && in[k] == ';') ? k + 1 : k;
    size_t chars = end - i;
    char key[(NAME_MAX_CHARS + 1) * 4] = {0};
    size_t offset[NAME_MAX_CHARS + 2]; /* byte offset of each char boundary */
    offset[0] = 0;
    for (size_t c = 0; c < chars; c++) offset[c + 1] = offset[c] + ltx_utf8_put(in[i + c], key + offset[c]);
    *end_out = end;
    const char *value = lookup_entity(key, offset[chars]);
    if (value) return emit_utf8(value, out);
    for (size_t x = chars - 1; x >= 2; x--) {
        value = lookup_entity(key, offset[x]);
        if (value) {
            LDM_TRY(emit_utf8(value, out));
            return ltx_cpbuf_append(out, in + i + x, chars - x);
        }
    }
    LDM_TRY(ltx_cpbuf_push(out, '&'));
    return ltx_cpbuf_append(out, in + i, chars);
}

ldm_status ltx_html_unescape(const uint32_t *in, size_t n, ltx_cpbuf *out)
{
    LDM_TRY(ltx_cpbuf_reserve(out, n));
    size_t i = 0;
    while (i < n) {
        if (in[i] != '&' || i + 1 >= n) {
            LDM_TRY(ltx_cpbuf_push(out, in[i++]));
            continue;
        }
        size_t end;
        if (in[i + 1] == '#') {
            uint32_t num;
            end = match_numeric(in, n, i + 1, &num);
            if (end) LDM_TRY(emit_numeric(num, out));
        } else {
            LDM_TRY(replace_named(in, n, i + 1, &end, out));
        }
        if (end) {
            i = end;
        } else {
            LDM_TRY(ltx_cpbuf_push(out, in[i++])); /* no reference here: '&' stays literal */
        }
    }
    return LDM_OK;
}
