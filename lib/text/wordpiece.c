/* wordpiece.c - BERT tokenization with HF BertTokenizerFast (bert-base-uncased) semantics:
 *  1. special tokens ([PAD] [UNK] [CLS] [SEP] [MASK]) are cut out of the RAW text first and map
 *     to their ids (HF's added-vocabulary pass; Google's tokenizer would split them);
 *  2. BertNormalizer on the rest: delete U+0000, U+FFFD and control chars (category C* except
 *     \t \n \r), map whitespace (\t \n \r, White_Space) to ' ', pad CJK ideographs with
 *     spaces, NFD and drop Mn marks,
 *     then lowercase char by char (no final-sigma rule);
 *  3. BertPreTokenizer: split on whitespace, every punctuation char (ASCII punctuation or P*)
 *     is a word of its own;
 *  4. WordPiece: a word longer than 100 chars is [UNK]; else greedy longest match from the left,
 *     continuations looked up with a '##' prefix; a position where nothing matches makes the whole
 *     word one [UNK]. */
#include "wordpiece.h"

#include "strmap.h"
#include "unicode.h"

#include <string.h>

#define WP_MAX_WORD_CHARS 100
#define WP_VOCAB_MAX_BYTES (64u << 20)

static const char *const special_tokens[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
#define N_SPECIAL 5

struct ltx_wordpiece {
    ltx_strmap *vocab;
    int32_t special_id[N_SPECIAL]; /* in special_tokens order, -1 when absent */
};

enum { SPECIAL_PAD, SPECIAL_UNK, SPECIAL_CLS, SPECIAL_SEP, SPECIAL_MASK };

int32_t ltx_wordpiece_cls_id(const ltx_wordpiece *wp) { return wp->special_id[SPECIAL_CLS]; }
int32_t ltx_wordpiece_sep_id(const ltx_wordpiece *wp) { return wp->special_id[SPECIAL_SEP]; }
int32_t ltx_wordpiece_pad_id(const ltx_wordpiece *wp) { return wp->special_id[SPECIAL_PAD]; }
int32_t ltx_wordpiece_unk_id(const ltx_wordpiece *wp) { return wp->special_id[SPECIAL_UNK]; }

/* ---------------------------------------------------------------- loading */

static ldm_status parse_vocab(ltx_wordpiece *wp, const char *path, const char *data, size_t len)
{
    size_t lines = 0;
    for (size_t i = 0; i < len; i++) lines += data[i] == '\n';
    LDM_TRY(ltx_strmap_new(lines + 1, &wp->vocab));
    const char *p = data, *end = data + len;
    int32_t id = 0;
    while (p < end) {
        const char *e = memchr(p, '\n', (size_t)(end - p));
        if (!e) e = end;
        size_t n = (size_t)(e - p);
        if (n && p[n - 1] == '\r') n--; /* tolerate CRLF files */
        if (id == INT32_MAX) return ldm_fail(LDM_ERR_LIMIT, "BERT vocabulary %s: too many lines", path);
        LDM_TRY(ltx_strmap_put(wp->vocab, p, n, id++));
        p = e + 1;
    }
    for (int k = 0; k < N_SPECIAL; k++)
        wp->special_id[k] = ltx_strmap_get(wp->vocab, special_tokens[k], strlen(special_tokens[k]));
    static const int required[] = {SPECIAL_PAD, SPECIAL_UNK, SPECIAL_CLS, SPECIAL_SEP};
    for (size_t k = 0; k < LDM_ARRAY_LEN(required); k++)
        if (wp->special_id[required[k]] < 0)
            return ldm_fail(LDM_ERR_NOT_FOUND, "BERT vocabulary %s: no %s token (%d lines read)", path,
                            special_tokens[required[k]], (int)id);
    return LDM_OK;
}

ldm_status ltx_wordpiece_load(const char *path, ltx_wordpiece **out)
{
    *out = NULL;
    char *data = NULL;
    size_t len = 0;
    LDM_TRY(ltx_read_file(path, "BERT vocabulary", WP_VOCAB_MAX_BYTES, &data, &len));
    ltx_wordpiece *wp = ldm_calloc(1, sizeof *wp);
    ldm_status st = wp ? parse_vocab(wp, path, data, len) : LDM_ERR_OUT_OF_MEMORY;
    ldm_free(data);
    if (st != LDM_OK) {
        ltx_wordpiece_free(wp);
        return st;
    }
    *out = wp;
    return LDM_OK;
}

void ltx_wordpiece_free(ltx_wordpiece *wp)
{
    if (!wp) return;
    ltx_strmap_free(wp->vocab);
    ldm_free(wp);
}

/* ---------------------------------------------------------------- normalizer */

/* HF's is_chinese_char. Its fifth range starts at U+2B920, not U+2B820 as in Google's BERT
 * (so U+2B820..2B91F are not spaced out): HF is the reference here. */
static int is_cjk(uint32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

static int is_whitespace(uint32_t c)
{
    return c == '\t' || c == '\n' || c == '\r' || (ltx_u_props(c) & LTX_U_WHITE_SPACE);
}

static int is_control(uint32_t c)
{
    if (c == '\t' || c == '\n' || c == '\r') return 0;
    return (ltx_u_props(c) & LTX_U_CAT_C) != 0;
}

static int is_punctuation(uint32_t c)
{
    if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126)) return 1;
    return (ltx_u_props(c) & LTX_U_CAT_P) != 0;
}

/* clean_text + handle_chinese_chars */
static ldm_status clean_and_space_cjk(const uint32_t *s, size_t n, ltx_cpbuf *out)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t c = s[i];
        if (c == 0 || c == 0xFFFD || is_control(c)) continue;
        if (is_whitespace(c)) c = ' ';
        if (is_cjk(c)) {
            LDM_TRY(ltx_cpbuf_push(out, ' '));
            LDM_TRY(ltx_cpbuf_push(out, c));
            LDM_TRY(ltx_cpbuf_push(out, ' '));
        } else {
            LDM_TRY(ltx_cpbuf_push(out, c));
        }
    }
    return LDM_OK;
}

/* strip_accents (after NFD) + lowercase */
static ldm_status drop_marks_and_lower(const uint32_t *s, size_t n, ltx_cpbuf *out)
{
    for (size_t i = 0; i < n; i++) {
        if (ltx_u_props(s[i]) & LTX_U_CAT_MN) continue;
        uint32_t low[2];
        int k = ltx_u_lower_char(s[i], low);
        LDM_TRY(ltx_cpbuf_append(out, low, (size_t)k));
    }
    return LDM_OK;
}

static ldm_status normalize(const uint32_t *s, size_t n, ltx_cpbuf *tmp1, ltx_cpbuf *tmp2, ltx_cpbuf *out)
{
    tmp1->len = tmp2->len = out->len = 0;
    LDM_TRY(clean_and_space_cjk(s, n, tmp1));
    LDM_TRY(ltx_u_nfd(tmp1->cp, tmp1->len, tmp2));
    return drop_marks_and_lower(tmp2->cp, tmp2->len, out);
}

/* ---------------------------------------------------------------- WordPiece */

typedef struct {
    const ltx_wordpiece *wp;
    int64_t *ids;
    size_t max_ids, *n_ids;
    char *key;        /* "##" + UTF-8 of the word (lookups use key or key + 2) */
    size_t *offset;   /* byte offset of each char boundary, relative to key + 2 */
} wp_state;

static void emit(wp_state *st, int32_t id)
{
    if (*st->n_ids < st->max_ids) st->ids[(*st->n_ids)++] = id;
}

static void wordpiece_word(wp_state *st, const uint32_t *w, size_t n)
{
    int32_t unk = st->wp->special_id[SPECIAL_UNK];
    if (n > WP_MAX_WORD_CHARS) {
        emit(st, unk);
        return;
    }
    char *bytes = st->key + 2;
    st->offset[0] = 0;
    for (size_t i = 0; i < n; i++) st->offset[i + 1] = st->offset[i] + ltx_utf8_put(w[i], bytes + st->offset[i]);
    int32_t pieces[WP_MAX_WORD_CHARS];
    size_t n_pieces = 0, start = 0;
    while (start < n) {
        int32_t found = -1;
        size_t end = n;
        for (; end > start; end--) {
            char *k = start ? bytes + st->offset[start] - 2 : bytes;
            size_t klen = st->offset[end] - st->offset[start] + (start ? 2 : 0);
            if (start) memcpy(k, "##", 2); /* overwrites bytes already consumed (or key's prefix) */
            found = ltx_strmap_get(st->wp->vocab, k, klen);
            if (found >= 0) break;
        }
        if (found < 0) {
            emit(st, unk);
            return;
        }
        pieces[n_pieces++] = found;
        start = end;
    }
    for (size_t i = 0; i < n_pieces; i++) emit(st, pieces[i]);
}

/* BertPreTokenizer over the normalized text, WordPiece per word. */
static void split_words(wp_state *st, const uint32_t *s, size_t n)
{
    size_t i = 0;
    while (i < n && *st->n_ids < st->max_ids) {
        if (is_whitespace(s[i])) {
            i++;
            continue;
        }
        size_t e = i + 1;
        if (!is_punctuation(s[i]))
            while (e < n && !is_whitespace(s[e]) && !is_punctuation(s[e])) e++;
        wordpiece_word(st, s + i, e - i);
        i = e;
    }
}

/* Length of the special token starting at s[i] (0 if none); its index in *which. */
static size_t match_special(const ltx_wordpiece *wp, const uint32_t *s, size_t n, size_t i, int *which)
{
    if (s[i] != '[') return 0;
    for (int k = 0; k < N_SPECIAL; k++) {
        if (wp->special_id[k] < 0) continue;
        const char *t = special_tokens[k];
        size_t len = strlen(t);
        if (n - i < len) continue;
        size_t j = 0;
        while (j < len && s[i + j] == (uint32_t)(unsigned char)t[j]) j++;
        if (j == len) {
            *which = k;
            return len;
        }
    }
    return 0;
}

typedef struct {
    ltx_cpbuf text, tmp1, tmp2, norm;
    char *key;
    size_t *offset;
} wp_buffers;

static ldm_status encode_segment(wp_state *st, wp_buffers *b, const uint32_t *s, size_t n)
{
    if (n == 0) return LDM_OK;
    LDM_TRY(normalize(s, n, &b->tmp1, &b->tmp2, &b->norm));
    split_words(st, b->norm.cp, b->norm.len);
    return LDM_OK;
}

static ldm_status encode_text(wp_state *st, wp_buffers *b)
{
    const uint32_t *s = b->text.cp;
    size_t n = b->text.len, seg = 0;
    for (size_t i = 0; i < n && *st->n_ids < st->max_ids;) {
        int which;
        size_t len = match_special(st->wp, s, n, i, &which);
        if (!len) {
            i++;
            continue;
        }
        LDM_TRY(encode_segment(st, b, s + seg, i - seg));
        emit(st, st->wp->special_id[which]);
        i += len;
        seg = i;
    }
    if (*st->n_ids < st->max_ids) LDM_TRY(encode_segment(st, b, s + seg, n - seg));
    return LDM_OK;
}

ldm_status ltx_wordpiece_encode(const ltx_wordpiece *wp, const char *text, const char *what, int64_t *ids,
                                size_t max_ids, size_t *n_ids)
{
    *n_ids = 0;
    wp_buffers b = {0};
    wp_state st = {wp, ids, max_ids, n_ids, NULL, NULL};
    ldm_status status = ltx_utf8_decode(text, strlen(text), &b.text, what);
    if (status == LDM_OK) {
        /* Words reaching WordPiece have at most WP_MAX_WORD_CHARS chars of <= 4 bytes. */
        b.key = ldm_malloc(2 + 4 * WP_MAX_WORD_CHARS);
        b.offset = ldm_malloc((WP_MAX_WORD_CHARS + 1) * sizeof *b.offset);
        if (!b.key || !b.offset) status = LDM_ERR_OUT_OF_MEMORY;
    }
    st.key = b.key;
    st.offset = b.offset;
    if (status == LDM_OK) status = encode_text(&st, &b);
    ldm_free(b.key);
    ldm_free(b.offset);
    ltx_cpbuf_free(&b.text);
    ltx_cpbuf_free(&b.tmp1);
    ltx_cpbuf_free(&b.tmp2);
    ltx_cpbuf_free(&b.norm);
    return status;
}
