/* class_embed.c - ClassEmbedder: an embedding-table lookup (see class_embed.h). */
#include "class_embed.h"

#include <string.h>

struct lclass {
    float *table; /* [n_classes, dim] */
    int n_classes, dim;
};

ldm_status lclass_create(const ld_cond *d, const lw_store *s, const char *prefix, lclass **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lclass_create: NULL output");
    *out = NULL;
    if (!d || !s) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lclass_create: NULL description or store");
    if (!prefix) prefix = "";
    if (d->n_classes < 1 || d->embed_dim < 1)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ClassEmbedder config: n_classes = %d, embed_dim = %d must be positive",
                        d->n_classes, d->embed_dim);
    lclass *n = ldm_calloc(1, sizeof *n);
    if (!n) return ldm_alloc_failure_status();
    n->n_classes = d->n_classes;
    n->dim = d->embed_dim;
    ldm_status st = lw_get_f32f(s, 2, (int64_t[]){d->n_classes, d->embed_dim}, &n->table, "%sembedding.weight", prefix);
    if (st != LDM_OK) {
        lclass_free(n);
        return ldm_fail_context(st, "loading the class embedder: ");
    }
    *out = n;
    return LDM_OK;
}

void lclass_free(lclass *n)
{
    if (!n) return;
    ldm_free(n->table);
    ldm_free(n);
}

int lclass_n_classes(const lclass *n) { return n->n_classes; }
int lclass_embed_dim(const lclass *n) { return n->dim; }

static ldm_status check_labels(const lclass *n, const ldm_tensor *labels)
{
    char buf[96];
    LDM_TRY(lt_check(labels, "class embedder: labels", LDM_I64, 1));
    if (labels->shape[0] < 1)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "class embedder: labels: expected [B] with B >= 1, found %s",
                        lt_shape_str(labels, buf, sizeof buf));
    for (int64_t i = 0; i < labels->shape[0]; i++) {
        int64_t v = lt_i64(labels)[i];
        if (v < 0 || v >= n->n_classes)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "class embedder: label %lld at position %lld outside [0,%d)",
                            (long long)v, (long long)i, n->n_classes);
    }
    return LDM_OK;
}

ldm_status lclass_encode(lclass *n, const ldm_tensor *labels, ldm_tensor **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "class embedder: NULL output");
    *out = NULL;
    if (!n) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "class embedder: NULL embedder");
    LDM_TRY(check_labels(n, labels));
    int64_t shape[3] = {labels->shape[0], 1, n->dim};
    ldm_tensor *t = lt_new_f32(3, shape);
    if (!t) return ldm_alloc_failure_status();
    size_t dim = (size_t)n->dim;
    for (int64_t i = 0; i < labels->shape[0]; i++)
        memcpy(lt_f32(t) + (size_t)i * dim, n->table + (size_t)lt_i64(labels)[i] * dim, dim * sizeof(float));
    *out = t;
    return LDM_OK;
}
