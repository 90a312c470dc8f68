/* ema.c - the exponential moving average of the weights, as ldm/modules/ema.py LitEma: the
 * reference keeps it in the buffers model_ema.* (decay float32, num_updates int32) and calls
 * forward after every training batch (DDPM.on_train_batch_end). All arithmetic is float32, as
 * torch does with those float32 tensors. */
#include "optim.h"

ldm_status ltr_ema_init(ltr_ema *e, double decay, int use_num_updates)
{
    if (!(decay >= 0.0 && decay <= 1.0))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "EMA: decay must be between 0 and 1 (got %g)", decay);
    e->decay = (float)decay; /* torch.tensor(decay, dtype=torch.float32) */
    e->num_updates = use_num_updates ? 0 : -1;
    return LDM_OK;
}

/* min(self.decay, (1 + n) / (10 + n)): int32 tensors divided with true division give float32;
 * Python's min keeps its first argument unless the second is smaller. */
float ltr_ema_decay_at(float decay, int32_t n)
{
    float warm = (float)(1 + n) / (float)(10 + n);
    return warm < decay ? warm : decay;
}

float ltr_ema_update(ltr_ema *e, const ltr_ema_pair *pairs, size_t n_pairs)
{
    float decay = e->decay;
    if (e->num_updates >= 0) {
        e->num_updates += 1;
        decay = ltr_ema_decay_at(e->decay, e->num_updates);
    }
    float one_minus_decay = 1.0f - decay;
    for (size_t k = 0; k < n_pairs; k++) {
        float *s = pairs[k].shadow;
        const float *p = pairs[k].param;
        /* shadow.sub_(one_minus_decay * (shadow - param)) */
        for (size_t i = 0; i < pairs[k].n; i++) s[i] = s[i] - one_minus_decay * (s[i] - p[i]);
    }
    return decay;
}

void ltr_ema_copy_to(const ltr_ema_pair *pairs, size_t n_pairs, float *const *params)
{
    for (size_t k = 0; k < n_pairs; k++)
        for (size_t i = 0; i < pairs[k].n; i++) params[k][i] = pairs[k].shadow[i];
}
