/* grad_embed.c - backward of an embedding table lookup (the class embedder) and of a
 * concatenation along channels (the UNet's skip connections).
 *
 * The lookup's gradient is a scatter-add, dtable[label[i]] += dy[i]: written as a gather it is
 * split by table rows, each task scanning the labels in order and adding the rows that picked its
 * own, so every table row is summed in batch order whatever the thread count. */
#include "grad.h"

#include <string.h>

#define EMB_ROWS_PER_TASK 16

typedef struct emb_job {
    const int64_t *labels;
    const float *dy;
    int n, n_classes, dim;
    float *dtable;
} emb_job;

static void emb_task(void *arg, int task)
{
    const emb_job *j = arg;
    int r0 = task * EMB_ROWS_PER_TASK, r1 = LDM_MIN(j->n_classes, r0 + EMB_ROWS_PER_TASK);
    memset(j->dtable + (size_t)r0 * j->dim, 0, sizeof(float) * (size_t)(r1 - r0) * j->dim);
    for (int i = 0; i < j->n; i++) {
        if (j->labels[i] < r0 || j->labels[i] >= r1) continue;
        float *row = j->dtable + (size_t)j->labels[i] * j->dim;
        const float *g = j->dy + (size_t)i * j->dim;
        for (int d = 0; d < j->dim; d++) row[d] += g[d];
    }
}

ldm_status lg_embedding_backward(const lctx *c, const int64_t *labels, int n, const float *dy, int n_classes, int dim,
                                 float *dtable)
{
    if (n < 0 || n_classes <= 0 || dim <= 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "embedding backward: bad shape n=%d classes=%d dim=%d", n,
                        n_classes, dim);
    for (int i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= n_classes)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "embedding backward: label %lld at %d outside [0,%d)",
                            (long long)labels[i], i, n_classes);
    emb_job j = {labels, dy, n, n_classes, dim, dtable};
    lpool_run(c ? c->pool : NULL, (n_classes + EMB_ROWS_PER_TASK - 1) / EMB_ROWS_PER_TASK, emb_task, &j);
    return LDM_OK;
}

void lg_ref_embedding_backward(const int64_t *labels, int n, const float *dy, int n_classes, int dim, float *dtable)
{
    for (int r = 0; r < n_classes; r++)
        for (int d = 0; d < dim; d++) {
            double acc = 0.0;
            for (int i = 0; i < n; i++)
                if (labels[i] == r) acc += dy[(size_t)i * dim + d];
            dtable[(size_t)r * dim + d] = (float)acc;
        }
}

void lg_split_channels(const float *dz, int B, int C1, int C2, int HW, float *da, float *db)
{
    size_t n1 = (size_t)C1 * HW, n2 = (size_t)C2 * HW;
    for (int b = 0; b < B; b++) {
        const float *src = dz + (size_t)b * (n1 + n2);
        if (da) memcpy(da + (size_t)b * n1, src, sizeof(float) * n1);
        if (db) memcpy(db + (size_t)b * n2, src + n1, sizeof(float) * n2);
    }
}
