/* bpe.c - CLIP's byte-level BPE vocabulary and merge loop.
 *
 * Every symbol the merge loop can produce is a vocabulary string (a byte symbol, a byte symbol
 * + '</w>', or the join of a merge), so symbols are handled as vocabulary ids and the merges as
 * a table (left id, right id) -> (rank, id of the joined string). Ids follow Python's
 * dict(zip(vocab, range(len(vocab)))): a string listed twice keeps its LAST index.
 *
 * The reference merges, per word, all occurrences of the lowest-ranked adjacent pair (left to
 * right, non-overlapping), and repeats. Here a heap keyed by (rank, position) yields the same
 * order in O(n log n): all entries of the lowest rank are taken out first and applied left to
 * right (stale ones skipped), and only then are pairs created by those merges considered. */
#include "bpe.h"

#include "strmap.h"

#include <string.h>

#define BPE_MERGE_COUNT (49152 - 256 - 2)  /* lines 1..48894 of the file */
#define BPE_VOCAB_MAX_BYTES (64u << 20)
#define BPE_WORD_MAX_BYTES ((size_t)1 << 28)
#define END_OF_WORD "</w>"

typedef struct {
    uint64_t key;   /* left id << 32 | right id; 0 with rank < 0: empty */
    int32_t rank;   /* -1: empty slot */
    int32_t merged; /* id of the joined symbol */
} pair_slot;

struct ltx_bpe {
    pair_slot *pairs;
    size_t n_pair_slots;
    int32_t byte_id[256];       /* symbol of byte b inside a word */
    int32_t byte_final_id[256]; /* symbol of byte b ending a word (+ '</w>') */
    int32_t start_id, end_id;
};

int32_t ltx_bpe_start_id(const ltx_bpe *bpe) { return bpe->start_id; }
int32_t ltx_bpe_end_id(const ltx_bpe *bpe) { return bpe->end_id; }

/* ---------------------------------------------------------------- pair table */

static uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

static size_t pair_hash(uint64_t key, size_t mask)
{
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdull;
    key ^= key >> 33;
    return (size_t)key & mask;
}

static pair_slot *pair_find(const ltx_bpe *bpe, uint64_t key)
{
    size_t mask = bpe->n_pair_slots - 1;
    for (size_t i = pair_hash(key, mask);; i = (i + 1) & mask) {
        pair_slot *s = &bpe->pairs[i];
        if (s->rank < 0 || s->key == key) return s;
    }
}

/* ---------------------------------------------------------------- loading */

/* CLIP's bytes_to_unicode(): printable bytes map to themselves, the others to 256 + n in byte
 * order. Vocabulary index k holds the symbol of the k-th byte in the order printable ranges
 * first, then the rest. */
static void byte_symbol_order(int order[256], uint32_t symbol_of_byte[256])
{
    int k = 0, extra = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        if (printable) {
            order[k++] = b;
            symbol_of_byte[b] = (uint32_t)b;
        }
    }
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        if (!printable) {
            order[k++] = b;
            symbol_of_byte[b] = (uint32_t)(256 + extra++);
        }
    }
}

typedef struct {
    const char *first, *second;
    size_t first_len, second_len;
} merge_line;

static int is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f' || (c >= 0x1C && c <= 0x1F); }

/* Splits line [s, e) into exactly two whitespace-separated symbols. */
static int parse_merge(const char *s, const char *e, merge_line *m)
{
    const char *parts[2];
    size_t lens[2];
    int n = 0;
    while (s < e) {
        while (s < e && is_ascii_space(*s)) s++;
        if (s == e) break;
        const char *t = s;
        while (t < e && !is_ascii_space(*t)) t++;
        if (n == 2) return 0;
        parts[n] = s;
        lens[n++] = (size_t)(t - s);
        s = t;
    }
    if (n != 2) return 0;
    m->first = parts[0];
    m->second = parts[1];
    m->first_len = lens[0];
    m->second_len = lens[1];
    return 1;
}

static ldm_status parse_merges(const char *path, const char *data, size_t len, merge_line *merges)
{
    const char *p = data, *end = data + len;
    const char *nl = memchr(p, '\n', len); /* line 0 is the version header */
    if (!nl) return ldm_fail(LDM_ERR_FORMAT, "CLIP BPE vocabulary %s: no merge lines", path);
    p = nl + 1;
    for (size_t r = 0; r < BPE_MERGE_COUNT; r++) {
        if (p >= end)
            return ldm_fail(LDM_ERR_FORMAT, "CLIP BPE vocabulary %s: %zu merge lines, expected at least %d",
                            path, r, BPE_MERGE_COUNT);
        const char *e = memchr(p, '\n', (size_t)(end - p));
        if (!e) e = end;
        if (!parse_merge(p, e, &merges[r]))
            return ldm_fail(LDM_ERR_FORMAT, "CLIP BPE vocabulary %s: line %zu is not a pair of symbols", path, r + 2);
        p = e + 1;
    }
    return LDM_OK;
}

/* a + b in `stack` when it fits, else in a new allocation (NULL on failure). Release with
 * release_joined. */
static char *join_symbols(const char *a, size_t na, const char *b, size_t nb, char *stack, size_t cap)
{
    char *buf = na + nb <= cap ? stack : ldm_malloc(na + nb);
    if (!buf) return NULL;
    memcpy(buf, a, na);
    memcpy(buf + na, b, nb);
    return buf;
}

static void release_joined(char *buf, char *stack)
{
    if (buf != stack) ldm_free(buf);
}

static ldm_status put_joined(ltx_strmap *map, const char *a, size_t na, const char *b, size_t nb, int32_t id)
{
    char stack[256];
    char *buf = join_symbols(a, na, b, nb, stack, sizeof stack);
    if (!buf) return LDM_ERR_OUT_OF_MEMORY;
    ldm_status st = ltx_strmap_put(map, buf, na + nb, id);
    release_joined(buf, stack);
    return st;
}

static ldm_status get_joined(const ltx_strmap *map, const char *a, size_t na, const char *b, size_t nb, int32_t *id)
{
    char stack[256];
    char *buf = join_symbols(a, na, b, nb, stack, sizeof stack);
    if (!buf) return LDM_ERR_OUT_OF_MEMORY;
    *id = ltx_strmap_get(map, buf, na + nb);
    release_joined(buf, stack);
    return LDM_OK;
}

static ldm_status build_vocab(ltx_strmap *map, const merge_line *merges, const int order[256],
                              const uint32_t symbol_of_byte[256])
{
    for (int k = 0; k < 256; k++) {
        char u[4];
        size_t n = ltx_utf8_put(symbol_of_byte[order[k]], u);
        LDM_TRY(ltx_strmap_put(map, u, n, k));
    }
    for (int k = 0; k < 256; k++) {
        char u[8];
        size_t n = ltx_utf8_put(symbol_of_byte[order[k]], u);
        memcpy(u + n, END_OF_WORD, 4);
        LDM_TRY(ltx_strmap_put(map, u, n + 4, 256 + k));
    }
    for (int32_t r = 0; r < BPE_MERGE_COUNT; r++) {
        const merge_line *m = &merges[r];
        LDM_TRY(put_joined(map, m->first, m->first_len, m->second, m->second_len, 512 + r));
    }
    LDM_TRY(ltx_strmap_put(map, "<|startoftext|>", 15, 512 + BPE_MERGE_COUNT));
    return ltx_strmap_put(map, "<|endoftext|>", 13, 512 + BPE_MERGE_COUNT + 1);
}

static ldm_status build_pairs(ltx_bpe *bpe, const ltx_strmap *map, const merge_line *merges)
{
    bpe->n_pair_slots = 1;
    while (bpe->n_pair_slots < 2 * BPE_MERGE_COUNT) bpe->n_pair_slots *= 2;
    bpe->pairs = ldm_malloc(bpe->n_pair_slots * sizeof *bpe->pairs);
    if (!bpe->pairs) return LDM_ERR_OUT_OF_MEMORY;
    for (size_t i = 0; i < bpe->n_pair_slots; i++) bpe->pairs[i] = (pair_slot){0, -1, -1};
    for (int32_t r = 0; r < BPE_MERGE_COUNT; r++) {
        const merge_line *m = &merges[r];
        int32_t a = ltx_strmap_get(map, m->first, m->first_len);
        int32_t b = ltx_strmap_get(map, m->second, m->second_len);
        if (a < 0 || b < 0) continue; /* a symbol no word can contain: the merge never applies */
        int32_t joined;
        LDM_TRY(get_joined(map, m->first, m->first_len, m->second, m->second_len, &joined));
        pair_slot *s = pair_find(bpe, pair_key(a, b));
        *s = (pair_slot){pair_key(a, b), r, joined}; /* a repeated pair keeps its last rank */
    }
    return LDM_OK;
}

static ldm_status resolve_symbols(ltx_bpe *bpe, const ltx_strmap *map, const uint32_t symbol_of_byte[256])
{
    for (int b = 0; b < 256; b++) {
        char u[8];
        size_t n = ltx_utf8_put(symbol_of_byte[b], u);
        bpe->byte_id[b] = ltx_strmap_get(map, u, n);
        memcpy(u + n, END_OF_WORD, 4);
        bpe->byte_final_id[b] = ltx_strmap_get(map, u, n + 4);
    }
    bpe->start_id = ltx_strmap_get(map, "<|startoftext|>", 15);
    bpe->end_id = ltx_strmap_get(map, "<|endoftext|>", 13);
    return LDM_OK;
}

static ldm_status load_from_text(ltx_bpe *bpe, const char *path, const char *data, size_t len)
{
    merge_line *merges = ldm_malloc(BPE_MERGE_COUNT * sizeof *merges);
    if (!merges) return LDM_ERR_OUT_OF_MEMORY;
    ltx_strmap *map = NULL;
    int order[256];
    uint32_t symbol_of_byte[256];
    byte_symbol_order(order, symbol_of_byte);
    ldm_status st = parse_merges(path, data, len, merges);
    if (st == LDM_OK) st = ltx_strmap_new(512 + BPE_MERGE_COUNT + 2, &map);
    if (st == LDM_OK) st = build_vocab(map, merges, order, symbol_of_byte);
    if (st == LDM_OK) st = build_pairs(bpe, map, merges);
    if (st == LDM_OK) st = resolve_symbols(bpe, map, symbol_of_byte);
    ltx_strmap_free(map);
    ldm_free(merges);
    return st;
}

ldm_status ltx_bpe_load(const char *path, ltx_bpe **out)
{
    *out = NULL;
    char *data = NULL;
    size_t len = 0;
    LDM_TRY(ltx_read_file(path, "CLIP BPE vocabulary", BPE_VOCAB_MAX_BYTES, &data, &len));
    ltx_bpe *bpe = ldm_calloc(1, sizeof *bpe);
    ldm_status st = bpe ? load_from_text(bpe, path, data, len) : LDM_ERR_OUT_OF_MEMORY;
    ldm_free(data);
    if (st != LDM_OK) {
        ltx_bpe_free(bpe);
        return st;
    }
    *out = bpe;
    return LDM_OK;
}

void ltx_bpe_free(ltx_bpe *bpe)
{
    if (!bpe) return;
    ldm_free(bpe->pairs);
    ldm_free(bpe);
}

/* ---------------------------------------------------------------- merging one word */

typedef struct {
    int32_t rank, left, right, left_id, right_id, merged;
} candidate;

/* Per-encode scratch: the word's symbols as a doubly linked list over byte positions (a merged
 * symbol keeps the position of its left part, so positions stay in word order) and a heap. */
typedef struct {
    int32_t *id, *next, *prev;
    candidate *heap;
    size_t cap, heap_len, heap_cap;
    char *bytes;
    size_t bytes_cap;
} bpe_scratch;

static void scratch_free(bpe_scratch *s)
{
    ldm_free(s->id);
    ldm_free(s->next);
    ldm_free(s->prev);
    ldm_free(s->heap);
    ldm_free(s->bytes);
}

static ldm_status grow_array(void **p, size_t count, size_t elem)
{
    size_t bytes;
    if (ldm_mul_size(count, elem, &bytes)) return ldm_fail(LDM_ERR_LIMIT, "prompt word too long");
    void *q = ldm_realloc(*p, bytes);
    if (!q) return LDM_ERR_OUT_OF_MEMORY;
    *p = q;
    return LDM_OK;
}

static ldm_status scratch_reserve(bpe_scratch *s, size_t n)
{
    if (n <= s->cap) return LDM_OK;
    LDM_TRY(grow_array((void **)&s->id, n, sizeof(int32_t)));
    LDM_TRY(grow_array((void **)&s->next, n, sizeof(int32_t)));
    LDM_TRY(grow_array((void **)&s->prev, n, sizeof(int32_t)));
    s->cap = n;
    return LDM_OK;
}

static int candidate_less(const candidate *a, const candidate *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static ldm_status heap_push(bpe_scratch *s, candidate c)
{
    if (s->heap_len == s->heap_cap) {
        size_t cap = s->heap_cap ? s->heap_cap * 2 : 64;
        LDM_TRY(grow_array((void **)&s->heap, cap, sizeof(candidate)));
        s->heap_cap = cap;
    }
    size_t i = s->heap_len++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!candidate_less(&c, &s->heap[parent])) break;
        s->heap[i] = s->heap[parent];
        i = parent;
    }
    s->heap[i] = c;
    return LDM_OK;
}

static candidate heap_pop(bpe_scratch *s)
{
    candidate top = s->heap[0];
    candidate last = s->heap[--s->heap_len];
    size_t i = 0, n = s->heap_len;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && candidate_less(&s->heap[child + 1], &s->heap[child])) child++;
        if (!candidate_less(&s->heap[child], &last)) break;
        s->heap[i] = s->heap[child];
        i = child;
    }
    if (n) s->heap[i] = last;
    return top;
}

/* Queues the pair starting at node `left` if it is a known merge. */
static ldm_status push_pair(const ltx_bpe *bpe, bpe_scratch *s, int32_t left)
{
    if (left < 0) return LDM_OK;
    int32_t right = s->next[left];
    if (right < 0) return LDM_OK;
    const pair_slot *p = pair_find(bpe, pair_key(s->id[left], s->id[right]));
    if (p->rank < 0) return LDM_OK;
    return heap_push(s, (candidate){p->rank, left, right, s->id[left], s->id[right], p->merged});
}

static int still_valid(const bpe_scratch *s, const candidate *c)
{
    return s->id[c->left] == c->left_id && s->next[c->left] == c->right && s->id[c->right] == c->right_id;
}

static ldm_status apply_merge(const ltx_bpe *bpe, bpe_scratch *s, const candidate *c)
{
    int32_t l = c->left, r = c->right;
    s->id[l] = c->merged;
    s->next[l] = s->next[r];
    if (s->next[r] >= 0) s->prev[s->next[r]] = l;
    s->id[r] = -1; /* dead */
    s->next[r] = s->prev[r] = -1;
    LDM_TRY(push_pair(bpe, s, s->prev[l]));
    return push_pair(bpe, s, l);
}

/* BPE of one word of n bytes; appends its ids to ids[*n_ids..max_ids). */
static ldm_status bpe_word(const ltx_bpe *bpe, bpe_scratch *s, const unsigned char *w, size_t n, int64_t *ids,
                           size_t max_ids, size_t *n_ids)
{
    if (n == 0) return LDM_OK;
    if (n > BPE_WORD_MAX_BYTES) return ldm_fail(LDM_ERR_LIMIT, "prompt word of %zu bytes is too long", n);
    LDM_TRY(scratch_reserve(s, n));
    for (size_t i = 0; i < n; i++) {
        s->id[i] = i + 1 < n ? bpe->byte_id[w[i]] : bpe->byte_final_id[w[i]];
        s->next[i] = i + 1 < n ? (int32_t)(i + 1) : -1;
        s->prev[i] = (int32_t)i - 1;
    }
    s->heap_len = 0;
    for (size_t i = 0; i + 1 < n; i++) LDM_TRY(push_pair(bpe, s, (int32_t)i));
    candidate *batch = NULL;
    size_t batch_cap = 0;
    ldm_status st = LDM_OK;
    while (s->heap_len && st == LDM_OK) {
        /* Take every queued candidate of the lowest rank (they come out in word order) before
         * applying any, so pairs created now wait for the next round as in the reference. */
        int32_t rank = s->heap[0].rank;
        size_t count = 0;
        while (s->heap_len && s->heap[0].rank == rank) {
            if (count == batch_cap) {
                batch_cap = batch_cap ? batch_cap * 2 : 16;
                st = grow_array((void **)&batch, batch_cap, sizeof *batch);
                if (st != LDM_OK) break;
            }
            batch[count++] = heap_pop(s);
        }
        for (size_t k = 0; k < count && st == LDM_OK; k++)
            if (still_valid(s, &batch[k])) st = apply_merge(bpe, s, &batch[k]);
    }
    ldm_free(batch);
    LDM_TRY(st);
    for (int32_t i = 0; i >= 0 && *n_ids < max_ids; i = s->next[i]) ids[(*n_ids)++] = s->id[i];
    return LDM_OK;
}

/* ---------------------------------------------------------------- prompts */

static ldm_status encode_words(const ltx_bpe *bpe, const ltx_cpbuf *text, bpe_scratch *s, int64_t *ids,
                               size_t max_ids, size_t *n_ids)
{
    size_t pos = 0, start, end;
    while (*n_ids < max_ids && ltx_clip_next_word(text->cp, text->len, &pos, &start, &end)) {
        size_t need;
        if (ldm_mul_size(end - start, 4, &need)) return ldm_fail(LDM_ERR_LIMIT, "prompt word too long");
        if (need > s->bytes_cap) {
            LDM_TRY(grow_array((void **)&s->bytes, need, 1));
            s->bytes_cap = need;
        }
        size_t n = 0;
        for (size_t i = start; i < end; i++) n += ltx_utf8_put(text->cp[i], s->bytes + n);
        if (n == 15 && memcmp(s->bytes, "<|startoftext|>", 15) == 0) ids[(*n_ids)++] = bpe->start_id;
        else if (n == 13 && memcmp(s->bytes, "<|endoftext|>", 13) == 0) ids[(*n_ids)++] = bpe->end_id;
        else LDM_TRY(bpe_word(bpe, s, (const unsigned char *)s->bytes, n, ids, max_ids, n_ids));
    }
    return LDM_OK;
}

ldm_status ltx_bpe_encode(const ltx_bpe *bpe, const char *text, const char *what, int64_t *ids, size_t max_ids,
                          size_t *n_ids)
{
    *n_ids = 0;
    ltx_cpbuf clean = {0};
    bpe_scratch s = {0};
    ldm_status st = ltx_clip_clean(text, strlen(text), what, &clean);
    if (st == LDM_OK) st = encode_words(bpe, &clean, &s, ids, max_ids, n_ids);
    scratch_free(&s);
    ltx_cpbuf_free(&clean);
    return st;
}
