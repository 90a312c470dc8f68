/* json.h - a small strict JSON reader (RFC 8259) for safetensors headers, fixture case files
 * and layout files. Parses into a tree allocated with ldm_malloc; depth and size bounded. */
#ifndef LDM_CORE_JSON_H
#define LDM_CORE_JSON_H

#include "common.h"

typedef enum { LJ_NULL, LJ_BOOL, LJ_NUMBER, LJ_STRING, LJ_ARRAY, LJ_OBJECT } lj_type;

typedef struct lj_value lj_value;
struct lj_value {
    lj_type type;
    int boolean;
    double number;
    int is_integer;        /* number written without fraction/exponent and within int64 */
    int64_t integer;       /* its exact value (doubles lose precision above 2^53) */
    char *string;          /* LJ_STRING: UTF-8, NUL-terminated; may hold \u0000 (see string_len) */
    size_t string_len;
    size_t count;          /* LJ_ARRAY / LJ_OBJECT: number of items */
    lj_value **items;      /* children */
    char **keys;           /* LJ_OBJECT: key of each child */
};

/* Parses `len` bytes. On failure returns NULL with an error "JSON: <what> at byte N". */
lj_value *lj_parse(const char *text, size_t len);
void lj_free(lj_value *v);

/* Object member lookup (first match), NULL when absent or v is not an object. */
const lj_value *lj_get(const lj_value *v, const char *key);
/* Typed accessors returning `fallback` when v is NULL or of another type. */
double lj_number(const lj_value *v, double fallback);
const char *lj_string(const lj_value *v, const char *fallback);
/* Exact integer value: 0 on success, -1 if v is not a number holding an integer in int64 range. */
int lj_int64(const lj_value *v, int64_t *out);

#endif
