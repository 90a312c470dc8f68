/* unicode.c - lookups in the generated tables, Python's str.lower (with the final-sigma rule)
 * and canonical decomposition (NFD). */
#include "unicode.h"

/* Index of the run containing cp in a sorted run-start array (starts[0] == 0). */
static size_t find_run(const uint32_t *starts, size_t count, uint32_t cp)
{
    size_t lo = 0, hi = count; /* invariant: starts[lo] <= cp, answer in [lo, hi) */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (starts[mid] <= cp) lo = mid;
        else hi = mid;
    }
    return lo;
}

uint16_t ltx_u_props(uint32_t cp)
{
    if (cp > LTX_U_MAX) return 0;
    return ltx_u_prop_flags[find_run(ltx_u_prop_start, ltx_u_prop_count, cp)];
}

uint8_t ltx_u_ccc(uint32_t cp)
{
    if (cp > LTX_U_MAX) return 0;
    return ltx_u_ccc_value[find_run(ltx_u_ccc_start, ltx_u_ccc_count, cp)];
}

int ltx_u_lower_char(uint32_t cp, uint32_t out[2])
{
    size_t lo = 0, hi = ltx_u_lower_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const ltx_u_lower_entry *e = &ltx_u_lower_table[mid];
        if (e->cp == cp) {
            out[0] = e->lower0;
            out[1] = e->lower1;
            return e->lower1 ? 2 : 1;
        }
        if (e->cp < cp) lo = mid + 1;
        else hi = mid;
    }
    out[0] = cp;
    return 1;
}

/* CPython's handle_capital_sigma: U+03A3 becomes final sigma U+03C2 when
 * \p{cased} \p{case-ignorable}* U+03A3 !( \p{case-ignorable}* \p{cased} ). */
static uint32_t lower_capital_sigma(const uint32_t *s, size_t n, size_t i)
{
    size_t j = i;
    uint16_t p = 0;
    int found = 0;
    while (j > 0) {
        p = ltx_u_props(s[--j]);
        if (!(p & LTX_U_CASE_IGN)) {
            found = 1;
            break;
        }
    }
    int final_sigma = found && (p & LTX_U_CASED);
    if (final_sigma) {
        for (j = i + 1; j < n; j++) {
            p = ltx_u_props(s[j]);
            if (!(p & LTX_U_CASE_IGN)) break;
        }
        final_sigma = j == n || !(p & LTX_U_CASED);
    }
    return final_sigma ? 0x3C2 : 0x3C3;
}

ldm_status ltx_u_lower_python(const uint32_t *in, size_t n, ltx_cpbuf *out)
{
    LDM_TRY(ltx_cpbuf_reserve(out, n));
    for (size_t i = 0; i < n; i++) {
        if (in[i] == 0x3A3) {
            LDM_TRY(ltx_cpbuf_push(out, lower_capital_sigma(in, n, i)));
            continue;
        }
        uint32_t low[2];
        int k = ltx_u_lower_char(in[i], low);
        LDM_TRY(ltx_cpbuf_append(out, low, (size_t)k));
    }
    return LDM_OK;
}

/* Hangul syllable decomposition constants (Unicode ch. 3.12). */
enum { HANGUL_S = 0xAC00, HANGUL_L = 0x1100, HANGUL_V = 0x1161, HANGUL_T = 0x11A7,
       HANGUL_V_COUNT = 21, HANGUL_T_COUNT = 28, HANGUL_N = 21 * 28, HANGUL_S_COUNT = 19 * 21 * 28 };

static ldm_status decompose_char(uint32_t cp, ltx_cpbuf *out)
{
    if (cp >= HANGUL_S && cp < HANGUL_S + HANGUL_S_COUNT) {
        uint32_t s = cp - HANGUL_S;
        LDM_TRY(ltx_cpbuf_push(out, HANGUL_L + s / HANGUL_N));
        LDM_TRY(ltx_cpbuf_push(out, HANGUL_V + (s % HANGUL_N) / HANGUL_T_COUNT));
        if (s % HANGUL_T_COUNT) LDM_TRY(ltx_cpbuf_push(out, HANGUL_T + s % HANGUL_T_COUNT));
        return LDM_OK;
    }
    size_t lo = 0, hi = ltx_u_decomp_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const ltx_u_decomp_entry *e = &ltx_u_decomp_table[mid];
        if (e->cp == cp) {
            for (int k = 0; k < 4 && e->d[k]; k++) LDM_TRY(ltx_cpbuf_push(out, e->d[k]));
            return LDM_OK;
        }
        if (e->cp < cp) lo = mid + 1;
        else hi = mid;
    }
    return ltx_cpbuf_push(out, cp);
}

/* Stable sort of a run of combining marks by combining class. Short runs (the normal case) use
 * insertion sort; long ones a counting sort so that hostile input stays linear. */
static void sort_marks(uint32_t *s, size_t n, uint32_t *scratch)
{
    if (n <= 32) {
        for (size_t i = 1; i < n; i++) {
            uint32_t c = s[i];
            uint8_t cc = ltx_u_ccc(c);
            size_t j = i;
            while (j > 0 && ltx_u_ccc(s[j - 1]) > cc) {
                s[j] = s[j - 1];
                j--;
            }
            s[j] = c;
        }
        return;
    }
    size_t start[257] = {0};
    for (size_t i = 0; i < n; i++) start[ltx_u_ccc(s[i]) + 1]++;
    for (int c = 1; c <= 256; c++) start[c] += start[c - 1];
    for (size_t i = 0; i < n; i++) scratch[start[ltx_u_ccc(s[i])]++] = s[i];
    for (size_t i = 0; i < n; i++) s[i] = scratch[i];
}

ldm_status ltx_u_nfd(const uint32_t *in, size_t n, ltx_cpbuf *out)
{
    size_t base = out->len;
    LDM_TRY(ltx_cpbuf_reserve(out, n));
    for (size_t i = 0; i < n; i++) LDM_TRY(decompose_char(in[i], out));
    /* Canonical ordering: sort every maximal run of non-starters (ccc != 0) by ccc. */
    uint32_t *s = out->cp + base;
    size_t len = out->len - base;
    uint32_t *scratch = NULL;
    for (size_t i = 0; i < len;) {
        if (ltx_u_ccc(s[i]) == 0) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < len && ltx_u_ccc(s[j]) != 0) j++;
        if (j - i > 32 && !scratch) {
            scratch = ldm_malloc(len * sizeof *scratch);
            if (!scratch) return LDM_ERR_OUT_OF_MEMORY;
        }
        sort_marks(s + i, j - i, scratch);
        i = j;
    }
    ldm_free(scratch);
    return LDM_OK;
}
