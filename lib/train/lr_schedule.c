/* lr_schedule.c - learning-rate multipliers: the three schedulers of the reference's
 * ldm/lr_scheduler.py (the configs pass their .schedule to torch's LambdaLR, stepped every
 * optimizer step), a constant schedule with linear warm-up, and main.py's --scale_lr rule.
 * Formulas keep the reference's operation order; Python's true division and numpy's cos are
 * double precision, as here. */
#include "optim.h"

#include <math.h>

/* The warm-up line shared by all three reference schedulers:
 * (f_max - f_start) / warm_up_steps * n + f_start. */
static double warm_up_line(double f_start, double f_max, double warm_up_steps, double n)
{
    return (f_max - f_start) / warm_up_steps * n + f_start;
}

/* f_min + 0.5 * (f_max - f_min) * (1 + cos(t * pi)) with t = min(t, 1). */
static double half_cosine(double f_min, double f_max, double t)
{
    if (t > 1.0) t = 1.0;
    return f_min + 0.5 * (f_max - f_min) * (1.0 + cos(t * M_PI));
}

/* LambdaWarmUpCosineScheduler.schedule(n). */
ldm_status ltr_lr_warmup_cosine(const ltr_warmup_cosine *s, int64_t n, double *lambda)
{
    double x = (double)n;
    if (x < s->warm_up_steps) {
        *lambda = warm_up_line(s->lr_start, s->lr_max, s->warm_up_steps, x);
        return LDM_OK;
    }
    double span = s->max_decay_steps - s->warm_up_steps;
    if (span == 0.0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "LambdaWarmUpCosineScheduler: max_decay_steps equals warm_up_steps");
    *lambda = half_cosine(s->lr_min, s->lr_max, (x - s->warm_up_steps) / span);
    return LDM_OK;
}

/* find_in_interval over cum_cycles = cumsum([0] + cycle_lengths): the first cycle whose end is
 * >= n; *start is the cumulative length before it. -1 past the last cycle. */
static int find_cycle(const ltr_cycles *s, double n, double *start)
{
    double cum = 0.0;
    for (int c = 0; c < s->n_cycles; c++) {
        double end = cum + s->cycle_lengths[c];
        if (n <= end) {
            *start = cum;
            return c;
        }
        cum = end;
    }
    return -1;
}

static ldm_status locate(const ltr_cycles *s, const char *who, int64_t n, int *cycle, double *local)
{
    double start = 0.0;
    *cycle = find_cycle(s, (double)n, &start);
    if (*cycle < 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: step %lld is past the last cycle", who, (long long)n);
    *local = (double)n - start;
    return LDM_OK;
}

/* LambdaWarmUpCosineScheduler2.schedule(n). */
ldm_status ltr_lr_warmup_cosine2(const ltr_cycles *s, int64_t n, double *lambda)
{
    int c = 0;
    double x = 0.0;
    LDM_TRY(locate(s, "LambdaWarmUpCosineScheduler2", n, &c, &x));
    if (x < s->warm_up_steps[c]) {
        *lambda = warm_up_line(s->f_start[c], s->f_max[c], s->warm_up_steps[c], x);
        return LDM_OK;
    }
    double span = s->cycle_lengths[c] - s->warm_up_steps[c];
    if (span == 0.0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "LambdaWarmUpCosineScheduler2: cycle %d is all warm-up", c);
    *lambda = half_cosine(s->f_min[c], s->f_max[c], (x - s->warm_up_steps[c]) / span);
    return LDM_OK;
}

/* LambdaLinearScheduler.schedule(n): after the warm-up, a line from f_max at the cycle start
 * (not at the end of the warm-up) to f_min at its end:
 * f_min + (f_max - f_min) * (cycle_length - n) / cycle_length. */
ldm_status ltr_lr_linear(const ltr_cycles *s, int64_t n, double *lambda)
{
    int c = 0;
    double x = 0.0;
    LDM_TRY(locate(s, "LambdaLinearScheduler", n, &c, &x));
    if (x < s->warm_up_steps[c]) {
        *lambda = warm_up_line(s->f_start[c], s->f_max[c], s->warm_up_steps[c], x);
        return LDM_OK;
    }
    double len = s->cycle_lengths[c];
    if (len == 0.0) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "LambdaLinearScheduler: cycle %d has length 0", c);
    *lambda = s->f_min[c] + (s->f_max[c] - s->f_min[c]) * (len - x) / len;
    return LDM_OK;
}

double ltr_lr_constant_warmup(int64_t warm_up_steps, int64_t n)
{
    if (n < warm_up_steps) return (double)n / (double)(warm_up_steps > 1 ? warm_up_steps : 1);
    return 1.0;
}

/* accumulate_grad_batches * ngpu * bs * base_lr: the integer product first, as in Python. */
double ltr_scale_lr(int accumulate_grad_batches, int ngpu, int batch_size, double base_lr)
{
    double k = (double)accumulate_grad_batches * (double)ngpu * (double)batch_size;
    return k * base_lr;
}
