/* sampling.h - internal API of the samplers: DDPM noise schedules, DDIM / PLMS / DDPM update
 * rules of CompVis latent-diffusion (and Stability-AI stablediffusion for v-prediction), the
 * k-diffusion samplers (crowsonkb/k-diffusion) and the counter-based noise generator.
 *
 * Everything here is pure arithmetic on float arrays: no model, no threads. The public
 * host-driven state machine (ldm_sampler_*, include/ldm.h) is built on these pieces in
 * sampler_api.c; the conformance runner and the model glue may call them directly.
 *
 * Precision policy: schedules are computed in double and rounded to float32 exactly where the
 * reference stores float32 buffers; per-element updates are done in float32 in the same
 * operation order as the PyTorch reference, so that a trajectory fed the reference's model
 * outputs reproduces the reference to float32 rounding. */
#ifndef LDM_SAMPLING_H
#define LDM_SAMPLING_H

#include "../core/common.h"
#include "../core/tensor.h"

typedef struct lw_store lw_store;

/* ---------------------------------------------------------------- beta schedules (schedule.c) */

typedef enum ls_beta_kind {
    LS_BETA_LINEAR = 0,      /* betas = linspace(sqrt(start), sqrt(end), T)^2   (LDM, SD "linear") */
    LS_BETA_COSINE = 1,      /* Nichol & Dhariwal, s = cosine_s, betas clipped to [0, 0.999] */
    LS_BETA_SQRT_LINEAR = 2, /* betas = linspace(start, end, T) */
    LS_BETA_SQRT = 3         /* betas = sqrt(linspace(start, end, T)) */
} ls_beta_kind;

/* "linear" | "cosine" | "sqrt_linear" | "sqrt" (the config's beta_schedule) -> kind. */
ldm_status ls_beta_kind_parse(const char *name, ls_beta_kind *out);

/* make_beta_schedule of ldm/modules/diffusionmodules/util.py, in double. `betas` has n entries.
 * linspace follows torch.linspace (float64): start + i*step for the first half, end - (n-1-i)*step
 * for the second half. */
ldm_status ls_make_betas(ls_beta_kind kind, int n, double linear_start, double linear_end,
                         double cosine_s, double *betas);

/* The 12 buffers DDPM.register_schedule stores in every LDM checkpoint, in that order. */
typedef enum ls_buffer {
    LS_BETAS = 0,
    LS_ALPHAS_CUMPROD,
    LS_ALPHAS_CUMPROD_PREV,
    LS_SQRT_ALPHAS_CUMPROD,
    LS_SQRT_ONE_MINUS_ALPHAS_CUMPROD,
    LS_LOG_ONE_MINUS_ALPHAS_CUMPROD,
    LS_SQRT_RECIP_ALPHAS_CUMPROD,
    LS_SQRT_RECIPM1_ALPHAS_CUMPROD,
    LS_POSTERIOR_VARIANCE,
    LS_POSTERIOR_LOG_VARIANCE_CLIPPED,
    LS_POSTERIOR_MEAN_COEF1,
    LS_POSTERIOR_MEAN_COEF2,
    LS_N_BUFFERS
} ls_buffer;

/* The checkpoint key of each buffer ("betas", "alphas_cumprod", ...). */
const char *ls_buffer_name(ls_buffer b);

/* A DDPM schedule: n training timesteps, every buffer float32 [n] (as the reference stores them). */
typedef struct ls_schedule {
    int n;
    float *buf[LS_N_BUFFERS];
    /* sgm DiscreteDenoiser's sigma table (SDXL): sqrt((1 - ac) / ac) with ac in double as the
     * discretization computes it, the quotient rounded to float32 before the float32 sqrt. */
    float *sgm_sigmas;
    /* DiscreteDenoiser's `sigmas` buffer: equal to sgm_sigmas unless the checkpoint stores
     * `denoiser.sigmas` (then those values, as loading the state dict gives the reference). The
     * sampler visits sgm_sigmas; the denoiser quantises each to the nearest entry here, whose
     * index is the model timestep and whose value scales the network input and output. */
    float *sgm_denoiser_sigmas;
} ls_schedule;

/* All derived buffers from betas (double, n entries), computed in double like register_schedule
 * (numpy float64) and rounded to float32. v_posterior is the DDPM option (0 in every config). */
ldm_status ls_schedule_from_betas(const double *betas, int n, double v_posterior, ls_schedule **out);
/* ls_make_betas + ls_schedule_from_betas. */
ldm_status ls_schedule_make(ls_beta_kind kind, int n, double linear_start, double linear_end,
                            double cosine_s, ls_schedule **out);
/* A schedule when only the float32 alphas_cumprod are known (public ldm_sampler_create): betas are
 * recovered as 1 - ac[t]/ac[t-1] in double, everything else derived from those; alphas_cumprod itself
 * is kept bit-exact. The other buffers can differ from a checkpoint's by float32 rounding of the
 * recovered betas (~1e-4 relative on betas, far less on the sqrt buffers). */
ldm_status ls_schedule_from_alphas_cumprod(const float *alphas_cumprod, int n, ls_schedule **out);
/* The checkpoint's stored buffers are authoritative: every one of the 12 names found in `store`
 * (key = prefix + name, prefix may be NULL or "") replaces the computed values. Each must have n
 * elements (any rank with that many elements, e.g. [n]); F32/F16/BF16/F64 accepted. *n_replaced
 * (may be NULL) receives how many were found. */
ldm_status ls_schedule_apply_store(ls_schedule *s, const lw_store *store, const char *prefix,
                                   int *n_replaced);
ldm_status ls_schedule_clone(const ls_schedule *s, ls_schedule **out);
void ls_schedule_free(ls_schedule *s);

/* ---------------------------------------------------------------- DDIM / PLMS (ddim.c) */

/* make_ddim_timesteps: 'uniform' (quad = 0): range(0, T, T // S) + 1, which gives MORE than S steps
 * when T % S != 0 (S=6 -> 7 steps); 'quad' (quad = 1): (linspace(0, sqrt(0.8 T), S)^2).astype(int) + 1.
 * Returns the count in *n_out and an ldm_malloc'ed ascending array in *out. 1 <= S <= T. */
ldm_status ls_ddim_timesteps(int S, int T, int quad, int64_t **out, int *n_out);

/* The DDIM arrays of one (S, eta) choice, per DDIM index i (ascending timesteps). */
typedef struct ls_ddim {
    int n;                        /* number of DDIM steps actually run */
    int64_t *timesteps;           /* ascending DDPM timesteps (1, 126, ... for S=8) */
    float *alphas;                /* alphas_cumprod[ts[i]] */
    float *alphas_prev;           /* alphas_cumprod[0] for i = 0 (NOT 1.0), else alphas_cumprod[ts[i-1]] */
    float *sigmas;                /* eta*sqrt((1-a_prev)/(1-a)*(1-a/a_prev)) in double, cast */
    float *sqrt_one_minus_alphas; /* sqrtf(1.f - alphas[i]) (float32, like np.sqrt of the f32 tensor) */
} ls_ddim;

/* make_ddim_sampling_parameters over the model's float32 alphas_cumprod (T entries). */
ldm_status ls_ddim_make(const float *alphas_cumprod, int T, int S, int quad, double eta, ls_ddim *out);
void ls_ddim_release(ls_ddim *d);

/* DDIM eps step on n floats (p_sample_ddim, float32, reference operation order):
 *   pred_x0 = (x - sqrt_one_minus_at*e) / sqrtf(a_t)
 *   x_prev  = sqrtf(a_prev)*pred_x0 + sqrtf(1 - a_prev - sigma^2)*e + sigma*noise
 * noise may be NULL (treated as zeros; the reference multiplies its noise by sigma anyway).
 * x_prev may alias x. pred_x0 may be NULL. */
void ls_ddim_step_eps(const float *x, const float *e, const float *noise, float a_t,
                      float sqrt_one_minus_at, float a_prev, float sigma, size_t n, float *x_prev,
                      float *pred_x0);
/* The second half of a DDIM step from pred_x0 and eps (used by the v step). x_prev may alias
 * pred_x0 or e. */
void ls_ddim_finish(const float *pred_x0, const float *e, const float *noise, float a_prev,
                    float sigma, size_t n, float *x_prev);
/* v-prediction conversion (Stability-AI ddpm.py), sa = sqrt_alphas_cumprod[t],
 * so = sqrt_one_minus_alphas_cumprod[t] of the FULL schedule at the step's DDPM timestep t:
 *   eps = sa*v + so*x  (predict_eps_from_z_and_v),  x0 = sa*x - so*v  (predict_start_from_z_and_v).
 * Either output may be NULL. Outputs must not alias x or v. */
void ls_v_to_eps_x0(const float *x, const float *v, float sa, float so, size_t n, float *eps,
                    float *x0);
/* The reverse: v = sa*eps - so*x0 (get_v with noise = eps, x_start = x0). */
void ls_eps_x0_to_v(const float *eps, const float *x0, float sa, float so, size_t n, float *v);

/* PLMS eps combination (p_sample_plms). hist[0] is the most recent RAW e_t of earlier steps,
 * hist[1] the one before, ...; n_hist = 1: AB2 (3e - h0)/2, 2: AB3 (23e - 16h0 + 5h1)/12,
 * >= 3: AB4 (55e - 59h0 + 37h1 - 9h2)/24. n_hist = 0 is the warm-up step, whose combination is
 * (e + e_next)/2 (ls_plms_warmup). out may alias e. */
void ls_plms_combine(const float *e, const float *const *hist, int n_hist, size_t n, float *out);
void ls_plms_warmup(const float *e, const float *e_next, size_t n, float *out);

/* ---------------------------------------------------------------- DDPM ancestral (ddpm.c) */

/* LatentDiffusion.p_sample with clip_denoised False on a batch of B samples of `per` floats, each
 * with its own timestep t[b] (0 <= t < s->n):
 *   x0 = sqrt_recip_alphas_cumprod[t]*x - sqrt_recipm1_alphas_cumprod[t]*eps     (eps model)
 *   x0 = sqrt_alphas_cumprod[t]*x - sqrt_one_minus_alphas_cumprod[t]*v          (v model)
 *   x_prev = coef1[t]*x0 + coef2[t]*x + (t != 0)*exp(0.5*posterior_log_variance_clipped[t])*noise
 * noise may be NULL (zeros). pred_x0 may be NULL. x_prev may alias x. */
ldm_status ls_ddpm_p_sample(const ls_schedule *s, int B, size_t per, const int64_t *t,
                            const float *x, const float *model_out, int v_param, const float *noise,
                            float *x_prev, float *pred_x0);

/* ---------------------------------------------------------------- sgm discretization (sgm.c) */

/* Stability-AI generative-models (SDXL): LegacyDDPMDiscretization's n noise levels, descending,
 * then 0 (n + 1 values in out): the table sigmas of the timesteps
 * np.linspace(T - 1, 0, n, endpoint=False).astype(int) (all T when n == T). */
void ls_sgm_sigmas(const float *table, int T, int n, double *out);
/* DiscreteDenoiser.sigma_to_idx: the index of the table sigma nearest to sigma (the first of
 * equal distances, as torch's argmin). */
int ls_sgm_sigma_index(const float *table, int T, double sigma);
/* EpsScaling / VScaling c_in = 1 / (sigma^2 + 1) ** 0.5, in float32 as torch computes it. */
float ls_sgm_c_in(float sigma);

/* ---------------------------------------------------------------- k-diffusion (kdiff.c) */

/* k-diffusion's DiscreteSchedule over a DDPM model: sigma_t = sqrt((1 - ac_t)/ac_t) for the
 * T training steps (ascending in t), kept as float32 like the torch buffer, log in double. */
typedef struct ls_ksched {
    int n;
    float *sigmas;       /* [n], ascending */
    double *log_sigmas;  /* [n], log of the float32 sigmas */
} ls_ksched;

ldm_status ls_ksched_make(const float *alphas_cumprod, int n, ls_ksched *out);
void ls_ksched_release(ls_ksched *k);
/* Fractional model timestep of a sigma (sigma_to_t, quantize False): log-sigma interpolation
 * between the two neighbouring training steps, clamped to [0, n-1]. */
double ls_ksched_sigma_to_t(const ls_ksched *k, double sigma);
/* sigma of a fractional timestep (t_to_sigma): log-linear interpolation. t in [0, n-1]. */
double ls_ksched_t_to_sigma(const ls_ksched *k, double t);
/* get_sigmas(steps): t = linspace(n-1, 0, steps), sigma(t), then a final 0 -> steps+1 values.
 * karras: get_sigmas_karras(steps, sigma_min, sigma_max, rho = 7) + final 0. */
ldm_status ls_ksched_sigmas(const ls_ksched *k, int steps, int karras, double *out);
/* The sigmas of integer timesteps ts[0..n-1] (the model's own float32 sigma of each: no
 * interpolation), then a final 0 -> n+1 values. */
void ls_ksched_sigmas_at(const ls_ksched *k, const int64_t *ts, int n, double *out);

/* Denoised estimate from the raw model output at noise level sigma (CompVisDenoiser /
 * CompVisVDenoiser with sigma_data = 1):
 *   eps:  denoised = x - sigma*eps
 *   v:    denoised = x/(sigma^2+1) - v*sigma/sqrt(sigma^2+1)
 * `x` is the UNscaled sample; the model was evaluated at x*c_in, c_in = 1/sqrt(sigma^2+1). */
void ls_k_denoised(const float *x, const float *model_out, double sigma, int v_param, size_t n,
                   float *denoised);
double ls_k_c_in(double sigma);
/* get_ancestral_step(sigma_from, sigma_to, eta): sigma_up = min(sigma_to, eta*sqrt(sigma_to^2 *
 * (sigma_from^2 - sigma_to^2)/sigma_from^2)), sigma_down = sqrt(sigma_to^2 - sigma_up^2). */
void ls_k_ancestral_step(double sigma_from, double sigma_to, double eta, double *sigma_down,
                         double *sigma_up);
/* x += (x - denoised)/sigma * dt   (one Euler step, to_d). */
void ls_k_euler(float *x, const float *denoised, double sigma, double dt, size_t n);
/* DPM-Solver++(2M) update from sigma to sigma_next. old_denoised NULL (first step) or
 * sigma_next == 0: first order (sigma_next == 0 gives x = denoised). sigma_prev is the sigma of the
 * step that produced old_denoised. */
void ls_k_dpmpp_2m(float *x, const float *denoised, const float *old_denoised, double sigma_prev,
                   double sigma, double sigma_next, size_t n);

/* ---------------------------------------------------------------- LCM (lcm.c) */

/* LCMScheduler.set_timesteps (strength 1): k = T // original_steps, the distillation timesteps
 * (j+1)*k - 1 for j < original_steps taken in descending order at the indices
 * floor(i * original_steps / steps), i < steps. 50 / 4 steps: 999, 759, 499, 259. */
ldm_status ls_lcm_timesteps(int T, int original_steps, int steps, int64_t *out);
/* Consistency boundary conditions (get_scalings_for_boundary_condition_discrete), s = t *
 * timestep_scaling, sigma_data 0.5: c_skip = 0.25/(s^2 + 0.25), c_out = s/sqrt(s^2 + 0.25). */
void ls_lcm_scalings(int64_t t, double timestep_scaling, float *c_skip, float *c_out);
/* LCMScheduler.step in float32 with a_t = alphas_cumprod[t]: x0 from the output (param: an
 * ldm_parameterization; eps (x - sqrt(1-a_t) out)/sqrt(a_t), v sqrt(a_t) x - sqrt(1-a_t) out,
 * x0 out), denoised = c_out x0 + c_skip x; with noise (every step but the last):
 * x_next = sqrt(a_prev) denoised + sqrt(1 - a_prev) noise, else x_next = denoised. x_next may
 * alias x; denoised must not. */
void ls_lcm_step(const float *x, const float *model_out, int param, float a_t, float c_skip, float c_out,
                 const float *noise, float a_prev, size_t n, float *x_next, float *denoised);

/* ---------------------------------------------------------------- trailing spacing (kdiff.c) */

/* diffusers' timestep_spacing "trailing" (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler):
 * round(np.arange(T, 0, -T/steps)) - 1, i.e. 999, 749, 499, 249 for 4 of 1000; 999 for 1. numpy's
 * arange is reproduced exactly (its length ceil(T/(T/steps)) can be steps + 1 for a few counts,
 * e.g. 61 of 1000, and then so many steps run, as in diffusers). *n_out receives the count;
 * out must hold steps + 1 entries. */
ldm_status ls_trailing_timesteps(int T, int steps, int64_t *out, int *n_out);

/* ---------------------------------------------------------------- noise (philox.c) */

/* One Philox4x32-10 block (Salmon et al. 2011, Random123 constants). */
void ls_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);
/* The i-th standard normal of (seed, stream), as ldm_randn defines it (include/ldm.h). */
double ls_randn_at(uint64_t seed, uint64_t stream, uint64_t index);
/* out[j] = (float)ls_randn_at(seed, stream, first + j) for j < n. */
void ls_randn_fill(uint64_t seed, uint64_t stream, uint64_t first, size_t n, float *out);

/* ---------------------------------------------------------------- sampler internals (sampler_api.c) */

/* ldm_sampler_create with a complete schedule (e.g. from ls_schedule_make + ls_schedule_apply_store),
 * so the DDPM and v-prediction paths use the checkpoint's own buffers bit for bit. The schedule
 * is copied. */
ldm_status ls_sampler_create(const ls_schedule *sched, ldm_parameterization param,
                             const ldm_sampler_params *p, ldm_sampler **out);
/* The DDIM arrays (DDIM and PLMS kinds; NULL otherwise). */
const ls_ddim *ls_sampler_ddim(const ldm_sampler *s);
/* The k-diffusion sigma sequence (steps+1 values, last 0) and its k-schedule (k kinds; NULL
 * otherwise). */
const double *ls_sampler_sigmas(const ldm_sampler *s, int *n_sigmas);
const ls_ksched *ls_sampler_ksched(const ldm_sampler *s);
const ls_schedule *ls_sampler_schedule(const ldm_sampler *s);
/* The model timestep of step k's first evaluation (DDIM/PLMS/DDPM: the integer DDPM timestep;
 * k-samplers: sigma_to_t(sigma_k)); the fixtures' step_timesteps. -1 when k is out of range. */
double ls_sampler_step_timestep(const ldm_sampler *s, int k);

/* Image-to-image: like ldm_sampler_begin, but the run starts at step `first` (0 <= first < total
 * steps; the earlier steps are skipped and steps_done starts at `first`) from z0 noised with the
 * unit noise x_T to the level of that step (ls_sampler_noised(s, first, z0, x_T)). z0 and x_T have
 * the same shape. The multistep histories (PLMS, DPM++ 2M) start empty there. */
ldm_status ls_sampler_begin_from(ldm_sampler *s, const ldm_tensor *z0, const ldm_tensor *x_T, int first);
/* z0 noised with the unit noise `noise` to the level x has after `done` completed steps
 * (0 <= done <= total steps), as a new tensor in *out:
 *   DDIM/PLMS: sqrtf(a)*z0 + sqrtf(1-a)*noise, a = ddim_alphas of step `done` (the timestep it
 *              evaluates at); done == total: a = ddim_alphas_prev of the last step (alphas_cumprod[0],
 *              where the final DDIM step lands);
 *   DDPM:      sqrt_alphas_cumprod[t]*z0 + sqrt_one_minus_alphas_cumprod[t]*noise with t the
 *              timestep of step `done` (q_sample); done == total: z0;
 *   LCM:       the same with t the LCM timestep of step `done`;
 *   k-samplers: z0 + sigmas[done]*noise (k-diffusion's x lives at variance 1 + sigma^2; sigmas[total] = 0).
 * Used for mask blending: the known region is replaced by this after every step. */
ldm_status ls_sampler_noised(const ldm_sampler *s, int done, const ldm_tensor *z0, const ldm_tensor *noise,
                             ldm_tensor **out);

#endif
