/* prompt_parse.c - webui's emphasis syntax (parse_prompt_attention of
 * AUTOMATIC1111/stable-diffusion-webui modules/prompt_parser.py, commit 28bd8e14): the prompt is
 * cut by the alternatives of its re_attention pattern, tried in this order at each position:
 *   \(  \)  \[  \]  \\  \          an escape: the character after the backslash as text of
 *                                  weight 1 (a lone backslash: an empty text)
 *   (  [                           opens a bracket (the position in the run list is pushed)
 *   :\s*([+-]?[.\d]+)\s*\)         closes the innermost "(" with that weight
 *   )  ]                           closes the innermost bracket of its kind with 1.1 / (1/1.1)
 *   [^\\()\[\]:]+  :               text (also a closing bracket without an opener, and a
 *                                  ":weight)" without an open "(")
 * Text is split at \s*\bBREAK\b\s* into parts with ("BREAK", -1) markers between them. Closing
 * multiplies every run from the opener's position to the end; brackets still open at the end
 * multiply as if closed there (round ones first). An empty result is ("", 1); neighbouring runs of
 * equal weight are merged. Python's \s is str.isspace(), \w (for \b) alphanumerics and "_"; the
 * number's digits are ASCII here (Python's \d also takes other scripts' digits: docs/prompts.md). */
#include "prompt.h"

#include "unicode.h"

#include <locale.h>
#include <stdlib.h>
#include <string.h>

#define ROUND_MULTIPLIER  1.1
#define SQUARE_MULTIPLIER (1 / 1.1)

/* A run while parsing: code points, merged and converted to UTF-8 at the end. */
typedef struct cp_run {
    ltx_cpbuf text;
    double weight;
} cp_run;

typedef struct parser {
    const uint32_t *s;
    size_t n;
    cp_run *res;
    size_t count, cap;
    size_t *round, n_round; /* positions in res of the open brackets (stacks) */
    size_t *square, n_square;
} parser;

static int is_space(uint32_t c)
{
    return (ltx_u_props(c) & LTX_U_PY_SPACE) != 0;
}

static int is_word(uint32_t c)
{
    return c == '_' || (ltx_u_props(c) & (LTX_U_CLIP_L | LTX_U_CLIP_N)) != 0;
}

static ldm_status push_run(parser *p, const uint32_t *cp, size_t n, double weight)
{
    if (p->count == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 16;
        cp_run *grown = ldm_realloc(p->res, cap * sizeof *grown);
        if (!grown) return ldm_alloc_failure_status();
        p->res = grown;
        p->cap = cap;
    }
    cp_run *r = &p->res[p->count];
    memset(r, 0, sizeof *r);
    r->weight = weight;
    p->count++;
    return n ? ltx_cpbuf_append(&r->text, cp, n) : LDM_OK;
}

static void multiply_range(parser *p, size_t start, double multiplier)
{
    for (size_t i = start; i < p->count; i++) p->res[i].weight *= multiplier;
}

/* Where the next BREAK separator of t[from..n) starts (*start) and ends (*end); 0 if none. The
 * separator's leading \s* begins at the whitespace run before the keyword (never before `from`,
 * which follows the previous separator's greedy trailing \s*). */
static int find_break(const uint32_t *t, size_t n, size_t from, size_t *start, size_t *end)
{
    static const char kw[] = "BREAK";
    for (size_t k = from; k + 5 <= n; k++) {
        size_t j = 0;
        while (j < 5 && t[k + j] == (uint32_t)kw[j]) j++;
        if (j < 5) continue;
        if ((k > 0 && is_word(t[k - 1])) || (k + 5 < n && is_word(t[k + 5]))) continue;
        size_t s = k;
        while (s > from && is_space(t[s - 1])) s--;
        size_t e = k + 5;
        while (e < n && is_space(t[e])) e++;
        *start = s;
        *end = e;
        return 1;
    }
    return 0;
}

/* webui's text branch: re.split(re_break, text), a ("BREAK", -1) marker between the parts. */
static ldm_status push_text(parser *p, const uint32_t *t, size_t n)
{
    static const uint32_t kw[5] = {'B', 'R', 'E', 'A', 'K'};
    size_t from = 0, s, e;
    while (find_break(t, n, from, &s, &e)) {
        LDM_TRY(push_run(p, t + from, s - from, 1.0));
        LDM_TRY(push_run(p, kw, 5, -1.0));
        from = e;
    }
    return push_run(p, t + from, n - from, 1.0);
}

static ldm_status push_index(size_t **stack, size_t *n, size_t value)
{
    size_t *grown = ldm_realloc(*stack, (*n + 1) * sizeof *grown);
    if (!grown) return ldm_alloc_failure_status();
    *stack = grown;
    grown[(*n)++] = value;
    return LDM_OK;
}

/* The ":\s*([+-]?[.\d]+)\s*\)" alternative at s[i] == ':'. Returns the index after ")" (0: no
 * match) and the number's span. */
static size_t match_weight(const parser *p, size_t i, size_t *num, size_t *num_len)
{
    size_t q = i + 1;
    while (q < p->n && is_space(p->s[q])) q++;
    size_t start = q;
    if (q < p->n && (p->s[q] == '+' || p->s[q] == '-')) q++;
    size_t digits = q;
    while (q < p->n && (p->s[q] == '.' || (p->s[q] >= '0' && p->s[q] <= '9'))) q++;
    if (q == digits) return 0;
    size_t stop = q;
    while (q < p->n && is_space(p->s[q])) q++;
    if (q >= p->n || p->s[q] != ')') return 0;
    *num = start;
    *num_len = stop - start;
    return q + 1;
}

/* Python's float() of a [+-]?[.0-9]+ string: at most one '.', at least one digit; correctly
 * rounded by strtod in the C locale's notation (a host may have set another decimal point). */
static ldm_status parse_number(const uint32_t *s, size_t n, size_t at, double *out)
{
    int dots = 0, digits = 0;
    char *buf = ldm_malloc(n + 1);
    if (!buf) return ldm_alloc_failure_status();
    for (size_t i = 0; i < n; i++) {
        buf[i] = (char)s[i];
        dots += s[i] == '.';
        digits += s[i] >= '0' && s[i] <= '9';
    }
    buf[n] = '\0';
    ldm_status st = LDM_OK;
    if (dots > 1 || digits == 0) {
        st = ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                      "prompt: the weight \"%.40s\" at character %zu is not a number (write e.g. (word:1.2))", buf, at);
    } else {
        const char *dp = localeconv()->decimal_point;
        char *dot = strchr(buf, '.');
        if (dot && dp && dp[0] && dp[0] != '.' && !dp[1]) *dot = dp[0];
        *out = strtod(buf, NULL);
    }
    ldm_free(buf);
    return st;
}

/* One alternative of re_attention at s[*i]; advances *i. */
static ldm_status step(parser *p, size_t *i)
{
    const uint32_t *s = p->s;
    uint32_t c = s[*i];
    if (c == '\\') {
        uint32_t next = *i + 1 < p->n ? s[*i + 1] : 0;
        int escape = next == '(' || next == ')' || next == '[' || next == ']' || next == '\\';
        *i += escape ? 2 : 1;
        return push_run(p, &next, escape ? 1 : 0, 1.0);
    }
    if (c == '(' || c == '[') {
        *i += 1;
        return c == '(' ? push_index(&p->round, &p->n_round, p->count) : push_index(&p->square, &p->n_square, p->count);
    }
    if (c == ':') {
        size_t num = 0, num_len = 0, end = match_weight(p, *i, &num, &num_len);
        if (!end) { /* the lone ":" alternative */
            *i += 1;
            return push_text(p, &s[*i - 1], 1);
        }
        size_t at = *i;
        *i = end;
        if (!p->n_round) return push_text(p, &s[at], end - at);
        double w = 1.0;
        LDM_TRY(parse_number(s + num, num_len, num, &w));
        multiply_range(p, p->round[--p->n_round], w);
        return LDM_OK;
    }
    if (c == ')' && p->n_round) {
        *i += 1;
        multiply_range(p, p->round[--p->n_round], ROUND_MULTIPLIER);
        return LDM_OK;
    }
    if (c == ']' && p->n_square) {
        *i += 1;
        multiply_range(p, p->square[--p->n_square], SQUARE_MULTIPLIER);
        return LDM_OK;
    }
    if (c == ')' || c == ']') {
        *i += 1;
        return push_text(p, &s[*i - 1], 1);
    }
    size_t j = *i;
    while (j < p->n && s[j] != '\\' && s[j] != '(' && s[j] != ')' && s[j] != '[' && s[j] != ']' && s[j] != ':') j++;
    size_t at = *i;
    *i = j;
    return push_text(p, &s[at], j - at);
}

/* Runs of identical weight become one (Python's float ==, so 0.0 and -0.0 merge too). */
static ldm_status merge_equal(parser *p)
{
    size_t i = 0;
    while (i + 1 < p->count) {
        if (p->res[i].weight != p->res[i + 1].weight) {
            i++;
            continue;
        }
        LDM_TRY(ltx_cpbuf_append(&p->res[i].text, p->res[i + 1].text.cp, p->res[i + 1].text.len));
        ltx_cpbuf_free(&p->res[i + 1].text);
        memmove(&p->res[i + 1], &p->res[i + 2], (p->count - i - 2) * sizeof *p->res);
        p->count--;
    }
    return LDM_OK;
}

static ldm_status to_utf8(const ltx_cpbuf *text, char **out)
{
    size_t bytes;
    if (ldm_mul_size(text->len, 4, &bytes) || ldm_add_size(bytes, 1, &bytes))
        return ldm_fail(LDM_ERR_LIMIT, "prompt: run too long");
    char *s = ldm_malloc(bytes);
    if (!s) return ldm_alloc_failure_status();
    size_t k = 0;
    for (size_t i = 0; i < text->len; i++) k += ltx_utf8_put(text->cp[i], s + k);
    s[k] = '\0';
    *out = s;
    return LDM_OK;
}

static ldm_status append_run(lpr_runs *out, char *text, double weight)
{
    if (out->count == out->cap) {
        int cap = out->cap ? 2 * out->cap : 8;
        lpr_run *grown = ldm_realloc(out->items, (size_t)cap * sizeof *grown);
        if (!grown) {
            ldm_free(text);
            return ldm_alloc_failure_status();
        }
        out->items = grown;
        out->cap = cap;
    }
    out->items[out->count].text = text;
    out->items[out->count].weight = weight;
    out->count++;
    return LDM_OK;
}

static ldm_status parse_cps(parser *p)
{
    for (size_t i = 0; i < p->n;) LDM_TRY(step(p, &i));
    for (size_t k = 0; k < p->n_round; k++) multiply_range(p, p->round[k], ROUND_MULTIPLIER);
    for (size_t k = 0; k < p->n_square; k++) multiply_range(p, p->square[k], SQUARE_MULTIPLIER);
    if (p->count == 0) LDM_TRY(push_run(p, NULL, 0, 1.0));
    return merge_equal(p);
}

static ldm_status emit_runs(const parser *p, lpr_runs *out)
{
    for (size_t i = 0; i < p->count; i++) {
        if (out->count == INT32_MAX) return ldm_fail(LDM_ERR_LIMIT, "prompt: too many runs");
        char *text = NULL;
        LDM_TRY(to_utf8(&p->res[i].text, &text));
        LDM_TRY(append_run(out, text, p->res[i].weight));
    }
    return LDM_OK;
}

ldm_status lpr_parse(const char *prompt, lpr_runs *out)
{
    if (!prompt || !out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "prompt parse: NULL argument");
    ltx_cpbuf cps = {0};
    parser p = {0};
    ldm_status st = ltx_utf8_decode(prompt, strlen(prompt), &cps, "prompt");
    p.s = cps.cp;
    p.n = cps.len;
    if (st == LDM_OK) st = parse_cps(&p);
    if (st == LDM_OK) st = emit_runs(&p, out);
    for (size_t i = 0; i < p.count; i++) ltx_cpbuf_free(&p.res[i].text);
    ldm_free(p.res);
    ldm_free(p.round);
    ldm_free(p.square);
    ltx_cpbuf_free(&cps);
    return st;
}

ldm_status lpr_parse_plain(const char *prompt, lpr_runs *out)
{
    if (!prompt || !out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "prompt parse: NULL argument");
    char *text = ldm_strdup(prompt);
    if (!text) return ldm_alloc_failure_status();
    return append_run(out, text, 1.0);
}

void lpr_runs_free(lpr_runs *runs)
{
    if (!runs) return;
    for (int i = 0; i < runs->count; i++) ldm_free(runs->items[i].text);
    ldm_free(runs->items);
    memset(runs, 0, sizeof *runs);
}

int lpr_is_break(const lpr_run *run)
{
    return run->weight == -1.0 && strcmp(run->text, "BREAK") == 0;
}
