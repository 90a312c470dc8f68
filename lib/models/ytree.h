/* ytree.h - a YAML document as a small generic tree (maps, sequences, scalars), built with libyaml.
 *
 * Only what model configs need: no aliases (rejected, so no "billion laughs"), no complex keys,
 * no duplicate keys, one document. Depth, node count and input size are bounded. Scalars keep
 * their text and whether they were quoted, so typing follows YAML 1.1 / PyYAML rules as OmegaConf
 * applies them (`true`, `1e-4`, `~` typed when plain; "1" stays a string). */
#ifndef LDM_MODELS_YTREE_H
#define LDM_MODELS_YTREE_H

#include "../core/common.h"

#define LD_Y_MAX_DEPTH 64
#define LD_Y_MAX_NODES 200000
#define LD_Y_MAX_INPUT ((size_t)16 << 20)

typedef enum { LD_Y_SCALAR, LD_Y_SEQ, LD_Y_MAP } ld_ykind;

typedef struct ld_ynode ld_ynode;
struct ld_ynode {
    ld_ykind kind;
    int line;            /* 1-based line of the node's start, for messages */
    int plain;           /* scalar written without quotes or block style */
    char *text;          /* scalar text (NUL-terminated) */
    size_t n;            /* sequence items / map pairs */
    char **keys;         /* map keys */
    ld_ynode **items;    /* sequence items / map values */
};

/* Parses `len` bytes; `name` is used in messages ("config.yaml:12: ..."). */
ldm_status ld_yaml_parse(const char *text, size_t len, const char *name, ld_ynode **out);
void ld_yaml_free(ld_ynode *n);

/* Map lookup; NULL when absent or when `map` is NULL or not a map. */
const ld_ynode *ld_yaml_get(const ld_ynode *map, const char *key);

/* Scalar typing (YAML 1.1 core as PyYAML/OmegaConf resolve plain scalars). Each returns 0 on
 * success, -1 when the node is not a scalar of that type. */
int ld_yaml_is_null(const ld_ynode *n);
int ld_yaml_bool(const ld_ynode *n, int *out);
int ld_yaml_int(const ld_ynode *n, long long *out);
int ld_yaml_float(const ld_ynode *n, double *out);   /* ints are accepted as floats */
/* Short description of a node for messages: `"abc" (string)`, `a sequence`, `a map`. */
void ld_yaml_show(const ld_ynode *n, char *buf, size_t cap);

#endif
