/* unicode.h - the Unicode pieces the tokenizers need: UTF-8 decoding into code point buffers,
 * per-code-point properties, Python's str.lower and NFD.
 *
 * The tokenizers must reproduce Python reference code bit for bit, so the property tables are
 * generated from the functions the reference itself calls (gen_unicode_tables.py): the `regex`
 * module's classes for CLIP's split pattern, str.isspace / str.lower for the text clean-up,
 * unicodedata for BERT. */
#ifndef LDM_TEXT_UNICODE_H
#define LDM_TEXT_UNICODE_H

#include "../core/common.h"

/* Property bits (generated tables; keep in sync with gen_unicode_tables.py). */
enum {
    LTX_U_CLIP_L = 1 << 0,      /* matches [\p{L}] in `regex` with IGNORECASE */
    LTX_U_CLIP_N = 1 << 1,      /* matches [\p{N}] with IGNORECASE */
    LTX_U_CLIP_O = 1 << 2,      /* matches [^\s\p{L}\p{N}] with IGNORECASE */
    LTX_U_RE_SPACE = 1 << 3,    /* matches \s in `regex` */
    LTX_U_PY_SPACE = 1 << 4,    /* str.isspace() (what str.strip() removes) */
    LTX_U_CASED = 1 << 5,       /* Cased (only meaningful when not case-ignorable) */
    LTX_U_CASE_IGN = 1 << 6,    /* Case_Ignorable */
    LTX_U_CAT_C = 1 << 7,       /* general category C* (Cc Cf Cn Co Cs) */
    LTX_U_CAT_P = 1 << 8,       /* general category P* */
    LTX_U_CAT_MN = 1 << 9,      /* general category Mn */
    LTX_U_WHITE_SPACE = 1 << 10 /* White_Space property */
};

#define LTX_U_MAX 0x10FFFFu

typedef struct { uint32_t cp, lower0, lower1; } ltx_u_lower_entry;
typedef struct { uint32_t cp; uint32_t d[4]; } ltx_u_decomp_entry;

/* Generated tables (unicode_tables.c). */
extern const uint32_t ltx_u_prop_start[];
extern const uint16_t ltx_u_prop_flags[];
extern const size_t ltx_u_prop_count;
extern const ltx_u_lower_entry ltx_u_lower_table[];
extern const size_t ltx_u_lower_count;
extern const ltx_u_decomp_entry ltx_u_decomp_table[];
extern const size_t ltx_u_decomp_count;
extern const uint32_t ltx_u_ccc_start[];
extern const uint8_t ltx_u_ccc_value[];
extern const size_t ltx_u_ccc_count;

/* A growable code point string. Zero-initialise before first use. */
typedef struct {
    uint32_t *cp;
    size_t len, cap;
} ltx_cpbuf;

ldm_status ltx_cpbuf_reserve(ltx_cpbuf *b, size_t extra);
ldm_status ltx_cpbuf_push(ltx_cpbuf *b, uint32_t cp);
ldm_status ltx_cpbuf_append(ltx_cpbuf *b, const uint32_t *cp, size_t n);
void ltx_cpbuf_free(ltx_cpbuf *b);

/* Strict UTF-8 -> code points (rejects overlong forms, surrogates, > U+10FFFF, truncation).
 * `what` names the text in the error message ("prompt 3"). Appends to `out`. */
ldm_status ltx_utf8_decode(const char *s, size_t len, ltx_cpbuf *out, const char *what);
/* Writes the UTF-8 form of cp (<= U+10FFFF) to out; returns its length (1..4). */
size_t ltx_utf8_put(uint32_t cp, char out[4]);

/* Property bits of a code point (0 above U+10FFFF). */
uint16_t ltx_u_props(uint32_t cp);
/* Canonical combining class. */
uint8_t ltx_u_ccc(uint32_t cp);
/* Full lowercase mapping of one code point (Python str.lower without the final-sigma context):
 * writes 1 or 2 code points to out and returns the count. */
int ltx_u_lower_char(uint32_t cp, uint32_t out[2]);

/* Python str.lower() of a whole string, including the Final_Sigma rule for U+03A3. */
ldm_status ltx_u_lower_python(const uint32_t *in, size_t n, ltx_cpbuf *out);
/* Canonical decomposition (NFD): full decomposition incl. Hangul, then canonical ordering. */
ldm_status ltx_u_nfd(const uint32_t *in, size_t n, ltx_cpbuf *out);

#endif
