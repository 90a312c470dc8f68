/* optim.h - the optimiser side of a training step (issue #13), each piece as the reference
 * trainer defines it: AdamW as torch.optim.AdamW (what ldm/models/diffusion/ddpm.py
 * configure_optimizers builds), gradient clipping as torch.nn.utils.clip_grad_norm_, the EMA of
 * the weights as ldm/modules/ema.py LitEma, the learning-rate multipliers of ldm/lr_scheduler.py
 * (applied as torch's LambdaLR: lr = base_lr * lambda(step)) and main.py's --scale_lr rule.
 *
 * Parameters are flat float32 arrays; nothing here knows about networks. Not yet used by a
 * trainer. */
#ifndef LDM_TRAIN_OPTIM_H
#define LDM_TRAIN_OPTIM_H

#include "../core/common.h"
#include "../core/ctx.h"

#include <stddef.h>
#include <stdint.h>

/* One parameter tensor: its values, its gradient (same length) and the element count. A NULL
 * grad means "no gradient this step" (torch's p.grad is None): AdamW skips the tensor and does
 * not advance its step count, clipping ignores it. */
typedef struct {
    float *data;
    float *grad;
    size_t n;
} ltr_param;

/* ---- AdamW (adamw.c), torch.optim.AdamW with amsgrad=False, maximize=False, single-tensor path
 * (torch's default on CPU). Defaults are torch's: lr 1e-3, betas (0.9, 0.999), eps 1e-8,
 * weight_decay 1e-2; the reference passes only lr, so its weight decay is this 0.01. */
typedef struct {
    double lr; /* the base learning rate (torch's initial_lr); each step is given its own lr */
    double beta1, beta2, eps, weight_decay;
} ltr_adamw_config;

typedef struct ltr_adamw ltr_adamw;

void ltr_adamw_defaults(ltr_adamw_config *cfg);
/* Keeps a copy of the parameter list (the arrays stay the caller's) and allocates the state
 * (exp_avg, exp_avg_sq, zero; step 0 per tensor). Hyper-parameters are checked as torch does
 * (0 <= lr, 0 <= eps, 0 <= beta < 1, 0 <= weight_decay): LDM_ERR_INVALID_ARGUMENT otherwise. */
ldm_status ltr_adamw_create(const ltr_param *params, size_t n_params, const ltr_adamw_config *cfg,
                            ltr_adamw **out);
void ltr_adamw_free(ltr_adamw *opt);
/* One optimizer.step() with learning rate `lr` (the scheduler's current value; cfg->lr is only
 * the base rate a scheduler multiplies). Per tensor with a gradient, step += 1, then per element in
 * torch's order and float32 arithmetic:
 *   p *= 1 - lr*wd;  m = lerp(m, g, 1-b1);  v = v*b2 + (1-b2)*g*g;
 *   p += (-lr/(1-b1^step)) * m / (sqrt(v)/sqrt(1-b2^step) + eps)
 * (the scalar factors in double, as torch's Python floats, then rounded to float). Elementwise,
 * split over c's pool (c may be NULL): results do not depend on the thread count. */
ldm_status ltr_adamw_step(ltr_adamw *opt, const lctx *c, double lr);
double ltr_adamw_lr(const ltr_adamw *opt);
/* The state of tensor i (for saving and tests): exp_avg, exp_avg_sq (n floats each), step. */
void ltr_adamw_state(const ltr_adamw *opt, size_t i, float **exp_avg, float **exp_avg_sq, int64_t *step);
/* Restores tensor i's step count (resume; the moments are written through ltr_adamw_state). */
ldm_status ltr_adamw_set_step(ltr_adamw *opt, size_t i, int64_t step);

/* ---- clipping (clip.c), torch.nn.utils.clip_grad_norm_(params, max_norm) with norm_type 2:
 * total = sqrt(sum over tensors of ||g_i||^2) (each tensor's sum of squares, then the total, in
 * double and in list order), clip_coef = max_norm / (total + 1e-6), and every gradient is
 * multiplied by (float)clip_coef only when clip_coef < 1. Returns the total norm in *total_norm.
 * A NaN/Inf norm leaves the gradients untouched and gives LDM_ERR_NUMERIC (torch's
 * error_if_nonfinite=True; without it torch would scale every gradient to NaN). */
ldm_status ltr_clip_grad_norm(const ltr_param *params, size_t n_params, double max_norm, double *total_norm);

/* ---- EMA of the weights (ema.c), ldm/modules/ema.py LitEma. `decay` is the float32 buffer
 * model_ema.decay (0.9999 by default); `num_updates` is model_ema.num_updates (int32), 0 at the
 * start when use_num_upates is on, -1 when it is off. */
typedef struct {
    float decay;
    int32_t num_updates;
} ltr_ema;

typedef struct {
    float *shadow;      /* the model_ema.<name without dots> buffer, starts as a copy of param */
    const float *param; /* the live parameter */
    size_t n;
} ltr_ema_pair;

/* LitEma.__init__: LDM_ERR_INVALID_ARGUMENT unless 0 <= decay <= 1. */
ldm_status ltr_ema_init(ltr_ema *e, double decay, int use_num_updates);
/* The decay LitEma.forward uses when num_updates is `n` AFTER its increment:
 * min(decay, (1 + n) / (10 + n)) in float32 (the first update, n = 1, uses 2/11). */
float ltr_ema_decay_at(float decay, int32_t n);
/* LitEma.forward (called by the reference after every training batch): num_updates += 1 when it
 * is >= 0, then shadow -= (1 - decay) * (shadow - param) for every pair, in float32. Returns the
 * decay that was used. */
float ltr_ema_update(ltr_ema *e, const ltr_ema_pair *pairs, size_t n_pairs);
/* LitEma.copy_to: params[k] <- pairs[k].shadow (params[k] is normally pairs[k].param). */
void ltr_ema_copy_to(const ltr_ema_pair *pairs, size_t n_pairs, float *const *params);

/* ---- learning-rate multipliers (lr_schedule.c). All return lambda(n) for the step count n >= 0;
 * the learning rate of step n is base_lr * lambda(n) (torch LambdaLR; the reference uses
 * base_lr 1 with these and steps the scheduler every optimizer step). */

/* ldm/lr_scheduler.py LambdaWarmUpCosineScheduler(warm_up_steps, lr_min, lr_max, lr_start,
 * max_decay_steps): linear from lr_start to lr_max over warm_up_steps, then a half cosine from
 * lr_max down to lr_min at max_decay_steps, lr_min after. */
typedef struct {
    double warm_up_steps, lr_min, lr_max, lr_start, max_decay_steps;
} ltr_warmup_cosine;
ldm_status ltr_lr_warmup_cosine(const ltr_warmup_cosine *s, int64_t n, double *lambda);

/* LambdaWarmUpCosineScheduler2 / LambdaLinearScheduler(warm_up_steps, f_min, f_max, f_start,
 * cycle_lengths): lists of n_cycles entries. Step n belongs to the first cycle whose cumulative
 * end is >= n (so a cycle's last step is its length, inclusive) and counts from that cycle's
 * start. Past the last cycle the reference fails (find_in_interval returns None): here
 * LDM_ERR_INVALID_ARGUMENT, as for a zero-length decay phase (the reference divides by zero). */
typedef struct {
    int n_cycles;
    const double *warm_up_steps, *f_min, *f_max, *f_start, *cycle_lengths;
} ltr_cycles;
ldm_status ltr_lr_warmup_cosine2(const ltr_cycles *s, int64_t n, double *lambda);
ldm_status ltr_lr_linear(const ltr_cycles *s, int64_t n, double *lambda);

/* Constant after a linear warm-up (not in the ldm reference; the diffusers/transformers
 * get_constant_schedule_with_warmup definition): n / max(1, warm_up_steps) while
 * n < warm_up_steps, then 1. */
double ltr_lr_constant_warmup(int64_t warm_up_steps, int64_t n);

/* main.py with --scale_lr (its default): learning_rate = accumulate_grad_batches * ngpu *
 * batch_size * base_lr. */
double ltr_scale_lr(int accumulate_grad_batches, int ngpu, int batch_size, double base_lr);

#endif
