/* strmap.c - string -> int32 hash map. Keys live in one growable byte arena (referenced by
 * offset so the arena may move); slots use linear probing at load factor <= 1/2. */
#include "strmap.h"

#include <string.h>

typedef struct {
    size_t offset; /* key bytes in the arena */
    uint32_t len;
    int32_t value;  /* -1: empty slot */
    uint64_t hash;
} slot;

struct ltx_strmap {
    slot *slots;
    size_t n_slots, count;
    char *arena;
    size_t arena_len, arena_cap;
};

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static ldm_status alloc_slots(size_t n_slots, slot **out)
{
    slot *s = ldm_calloc(n_slots, sizeof *s);
    if (!s) return LDM_ERR_OUT_OF_MEMORY;
    for (size_t i = 0; i < n_slots; i++) s[i].value = -1;
    *out = s;
    return LDM_OK;
}

ldm_status ltx_strmap_new(size_t expected_count, ltx_strmap **out)
{
    size_t n_slots = 64;
    while (n_slots < expected_count * 2) {
        if (n_slots > ((size_t)1 << 40)) return ldm_fail(LDM_ERR_LIMIT, "vocabulary too large");
        n_slots *= 2;
    }
    ltx_strmap *m = ldm_calloc(1, sizeof *m);
    if (!m) return LDM_ERR_OUT_OF_MEMORY;
    ldm_status st = alloc_slots(n_slots, &m->slots);
    if (st != LDM_OK) {
        ldm_free(m);
        return st;
    }
    m->n_slots = n_slots;
    *out = m;
    return LDM_OK;
}

void ltx_strmap_free(ltx_strmap *m)
{
    if (!m) return;
    ldm_free(m->slots);
    ldm_free(m->arena);
    ldm_free(m);
}

static size_t find_slot(const ltx_strmap *m, const char *key, size_t len, uint64_t h)
{
    size_t mask = m->n_slots - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        const slot *s = &m->slots[i];
        if (s->value < 0) return i;
        /* len 0: an empty key (an empty vocab.txt line) never allocates the arena, and
         * NULL + 0 is undefined (found by fuzz_bert_vocab) */
        if (s->hash == h && s->len == len && (len == 0 || memcmp(m->arena + s->offset, key, len) == 0)) return i;
    }
}

static ldm_status grow(ltx_strmap *m)
{
    size_t n = m->n_slots * 2;
    slot *fresh;
    LDM_TRY(alloc_slots(n, &fresh));
    for (size_t i = 0; i < m->n_slots; i++) {
        if (m->slots[i].value < 0) continue;
        size_t j = (size_t)m->slots[i].hash & (n - 1);
        while (fresh[j].value >= 0) j = (j + 1) & (n - 1);
        fresh[j] = m->slots[i];
    }
    ldm_free(m->slots);
    m->slots = fresh;
    m->n_slots = n;
    return LDM_OK;
}

static ldm_status arena_add(ltx_strmap *m, const char *key, size_t len, size_t *offset)
{
    size_t need;
    if (ldm_add_size(m->arena_len, len, &need)) return ldm_fail(LDM_ERR_LIMIT, "vocabulary too large");
    if (need > m->arena_cap) {
        size_t cap = m->arena_cap ? m->arena_cap : 4096;
        while (cap < need)
            if (ldm_mul_size(cap, 2, &cap)) return ldm_fail(LDM_ERR_LIMIT, "vocabulary too large");
        char *a = ldm_realloc(m->arena, cap);
        if (!a) return LDM_ERR_OUT_OF_MEMORY;
        m->arena = a;
        m->arena_cap = cap;
    }
    if (len) memcpy(m->arena + m->arena_len, key, len);
    *offset = m->arena_len;
    m->arena_len = need;
    return LDM_OK;
}

ldm_status ltx_strmap_put(ltx_strmap *m, const char *key, size_t len, int32_t value)
{
    if (value < 0) return ldm_fail(LDM_ERR_INTERNAL, "string map: negative value");
    if (len > UINT32_MAX) return ldm_fail(LDM_ERR_LIMIT, "vocabulary entry too long");
    if ((m->count + 1) * 2 > m->n_slots) LDM_TRY(grow(m));
    uint64_t h = hash_bytes(key, len);
    size_t i = find_slot(m, key, len, h);
    slot *s = &m->slots[i];
    if (s->value >= 0) {
        s->value = value;
        return LDM_OK;
    }
    size_t offset = 0;
    LDM_TRY(arena_add(m, key, len, &offset));
    s->offset = offset;
    s->len = (uint32_t)len;
    s->hash = h;
    s->value = value;
    m->count++;
    return LDM_OK;
}

int32_t ltx_strmap_get(const ltx_strmap *m, const char *key, size_t len)
{
    uint64_t h = hash_bytes(key, len);
    return m->slots[find_slot(m, key, len, h)].value;
}
