/* clip_pretok.c - CLIP's text clean-up and word splitting (openai CLIP simple_tokenizer.py:
 * basic_clean, whitespace_clean, lower, then re.findall(pat, text) with the `regex` module).
 * The character classes come from tables probed with the same `regex` module (unicode.h). */
#include "bpe.h"
#include "html.h"

/* [start, end) of s[0..n) without leading and trailing str.isspace() characters (str.strip). */
static void strip(const uint32_t *s, size_t n, size_t *start, size_t *end)
{
    size_t a = 0, b = n;
    while (a < b && (ltx_u_props(s[a]) & LTX_U_PY_SPACE)) a++;
    while (b > a && (ltx_u_props(s[b - 1]) & LTX_U_PY_SPACE)) b--;
    *start = a;
    *end = b;
}

/* re.sub(r'\s+', ' ', s) */
static ldm_status collapse_whitespace(const uint32_t *s, size_t n, ltx_cpbuf *out)
{
    LDM_TRY(ltx_cpbuf_reserve(out, n));
    for (size_t i = 0; i < n;) {
        if (!(ltx_u_props(s[i]) & LTX_U_RE_SPACE)) {
            out->cp[out->len++] = s[i++];
            continue;
        }
        while (i < n && (ltx_u_props(s[i]) & LTX_U_RE_SPACE)) i++;
        out->cp[out->len++] = ' ';
    }
    return LDM_OK;
}

static ldm_status clean(const char *text, size_t len, const char *what, ltx_cpbuf *a, ltx_cpbuf *b, ltx_cpbuf *out)
{
    LDM_TRY(ltx_utf8_decode(text, len, a, what));
    LDM_TRY(ltx_html_unescape(a->cp, a->len, b));
    a->len = 0;
    LDM_TRY(ltx_html_unescape(b->cp, b->len, a));
    size_t s, e;
    strip(a->cp, a->len, &s, &e);
    b->len = 0;
    LDM_TRY(collapse_whitespace(a->cp + s, e - s, b));
    strip(b->cp, b->len, &s, &e);
    return ltx_u_lower_python(b->cp + s, e - s, out);
}

ldm_status ltx_clip_clean(const char *text, size_t len, const char *what, ltx_cpbuf *out)
{
    ltx_cpbuf a = {0}, b = {0};
    ldm_status st = clean(text, len, what, &a, &b, out);
    ltx_cpbuf_free(&a);
    ltx_cpbuf_free(&b);
    return st;
}

/* Does pattern char p (ASCII) match c under `regex`'s IGNORECASE (simple case folding)? */
static int char_matches_ci(uint32_t c, char p)
{
    if (c == (uint32_t)(unsigned char)p) return 1;
    if (p >= 'a' && p <= 'z' && c == (uint32_t)(p - 'a' + 'A')) return 1;
    if (p == 's' && c == 0x17F) return 1;  /* LATIN SMALL LETTER LONG S folds to s */
    if (p == 'k' && c == 0x212A) return 1; /* KELVIN SIGN folds to k */
    return 0;
}

/* Length of `lit` if it matches s at pos case-insensitively, else 0. */
static size_t match_literal(const uint32_t *s, size_t n, size_t pos, const char *lit)
{
    size_t k = 0;
    for (; lit[k]; k++)
        if (pos + k >= n || !char_matches_ci(s[pos + k], lit[k])) return 0;
    return k;
}

static size_t run_of(const uint32_t *s, size_t n, size_t pos, uint16_t flag)
{
    size_t e = pos;
    while (e < n && (ltx_u_props(s[e]) & flag)) e++;
    return e;
}

int ltx_clip_next_word(const uint32_t *s, size_t n, size_t *pos, size_t *start, size_t *end)
{
    static const char *const specials[] = {"<|startoftext|>", "<|endoftext|>"};
    static const char *const contractions[] = {"s", "t", "re", "ve", "m", "ll", "d"};
    for (size_t i = *pos; i < n; i++) {
        size_t e = 0;
        for (size_t k = 0; k < LDM_ARRAY_LEN(specials) && !e; k++) {
            size_t m = match_literal(s, n, i, specials[k]);
            if (m) e = i + m;
        }
        if (!e && s[i] == '\'') {
            for (size_t k = 0; k < LDM_ARRAY_LEN(contractions) && !e; k++) {
                size_t m = match_literal(s, n, i + 1, contractions[k]);
                if (m) e = i + 1 + m;
            }
        }
        if (!e) {
            uint16_t p = ltx_u_props(s[i]);
            if (p & LTX_U_CLIP_L) e = run_of(s, n, i, LTX_U_CLIP_L);
            else if (p & LTX_U_CLIP_N) e = i + 1;
            else if (p & LTX_U_CLIP_O) e = run_of(s, n, i, LTX_U_CLIP_O);
        }
        if (e) {
            *start = i;
            *end = e;
            *pos = e;
            return 1;
        }
        /* whitespace (or a character no alternative matches): findall skips it */
    }
    *pos = n;
    return 0;
}
