/* utf8.c - strict UTF-8 decoding/encoding and the growable code point buffer used by the
 * tokenizers' text clean-up passes. */
#include "unicode.h"

#include <string.h>

ldm_status ltx_cpbuf_reserve(ltx_cpbuf *b, size_t extra)
{
    size_t need;
    if (ldm_add_size(b->len, extra, &need)) return ldm_fail(LDM_ERR_LIMIT, "text buffer size overflows");
    /* An empty buffer still gets storage: callers do pointer arithmetic on b->cp (cp + 0),
     * which is undefined on NULL (found by fuzzing empty prompts under UBSan). */
    if (need <= b->cap && b->cp) return LDM_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) {
        if (ldm_mul_size(cap, 2, &cap)) return ldm_fail(LDM_ERR_LIMIT, "text buffer size overflows");
    }
    size_t bytes;
    if (ldm_mul_size(cap, sizeof(uint32_t), &bytes)) return ldm_fail(LDM_ERR_LIMIT, "text buffer size overflows");
    uint32_t *p = ldm_realloc(b->cp, bytes);
    if (!p) return LDM_ERR_OUT_OF_MEMORY;
    b->cp = p;
    b->cap = cap;
    return LDM_OK;
}

ldm_status ltx_cpbuf_push(ltx_cpbuf *b, uint32_t cp)
{
    if (b->len == b->cap) LDM_TRY(ltx_cpbuf_reserve(b, 1));
    b->cp[b->len++] = cp;
    return LDM_OK;
}

ldm_status ltx_cpbuf_append(ltx_cpbuf *b, const uint32_t *cp, size_t n)
{
    if (n == 0) return LDM_OK;
    LDM_TRY(ltx_cpbuf_reserve(b, n));
    memcpy(b->cp + b->len, cp, n * sizeof *cp);
    b->len += n;
    return LDM_OK;
}

void ltx_cpbuf_free(ltx_cpbuf *b)
{
    ldm_free(b->cp);
    b->cp = NULL;
    b->len = b->cap = 0;
}

/* Length of the sequence a lead byte announces (0: not a valid lead byte). */
static int utf8_sequence_length(unsigned char lead)
{
    if (lead < 0x80) return 1;
    if (lead >= 0xC2 && lead <= 0xDF) return 2;
    if (lead >= 0xE0 && lead <= 0xEF) return 3;
    if (lead >= 0xF0 && lead <= 0xF4) return 4;
    return 0;
}

ldm_status ltx_utf8_decode(const char *s, size_t len, ltx_cpbuf *out, const char *what)
{
    static const uint32_t min_value[5] = {0, 0, 0x80, 0x800, 0x10000};
    const unsigned char *u = (const unsigned char *)s;
    LDM_TRY(ltx_cpbuf_reserve(out, len));
    size_t i = 0;
    while (i < len) {
        int n = utf8_sequence_length(u[i]);
        if (n == 0 || len - i < (size_t)n)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: invalid UTF-8 at byte %zu", what, i);
        uint32_t cp = n == 1 ? u[i] : (uint32_t)(u[i] & (0x7F >> n));
        for (int k = 1; k < n; k++) {
            if ((u[i + k] & 0xC0) != 0x80)
                return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: invalid UTF-8 at byte %zu", what, i);
            cp = (cp << 6) | (u[i + k] & 0x3F);
        }
        if (cp < min_value[n] || cp > LTX_U_MAX || (cp >= 0xD800 && cp <= 0xDFFF))
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: invalid UTF-8 (overlong, surrogate or out of range) at byte %zu", what, i);
        out->cp[out->len++] = cp;
        i += (size_t)n;
    }
    return LDM_OK;
}

size_t ltx_utf8_put(uint32_t cp, char out[4])
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}
