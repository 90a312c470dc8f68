/* fixture.h - helpers for tests that read fixture directories in the shared format. */
#ifndef LDM_TESTS_FIXTURE_H
#define LDM_TESTS_FIXTURE_H

#include "ldm.h"
#include "core/json.h"
#include "io/weights.h"

/* Named tensors produced during a run (owned). */
typedef struct fx_env {
    char **names;
    ldm_tensor **tensors;
    size_t count, cap;
} fx_env;
void fx_env_put(fx_env *e, const char *name, ldm_tensor *t); /* takes ownership; replaces */
const ldm_tensor *fx_env_get(const fx_env *e, const char *name);
void fx_env_clear(fx_env *e);

/* $LDM_SHARED or "../shared". */
const char *fx_shared_dir(void);
/* Threads for model runs: $LDM_THREADS or 2. */
int fx_threads(void);
int fx_file_exists(const char *path);
void fx_strip_slash(char *dir);

ldm_status fx_load_case(const char *dir, lj_value **out);
/* The weights file to load: the first of case.json `weights` that exists, preferring
 * model.safetensors. Returns 0 when the fixture has no weights. */
int fx_pick_weights(const char *dir, const lj_value *cas, char *path, size_t cap);
/* An F32 or I64 tensor of io.safetensors as a new ldm_tensor (NULL when absent). */
ldm_tensor *fx_io_tensor(const lw_store *io, const char *name);

typedef struct fx_tolerance {
    double atol, rtol;
    int exact;
} fx_tolerance;
/* tolerances[name] of case.json, else the top-level atol/rtol; integer outputs are exact. */
fx_tolerance fx_tolerance_for(const lj_value *cas, const char *name);

typedef struct fx_compare_result {
    double max_abs, max_rel;
    char note[160]; /* shape/dtype mismatch or first failing element */
} fx_compare_result;
/* 1 if every element satisfies |got-ref| <= atol + rtol*|ref| (exact for integers). */
int fx_compare(const ldm_tensor *got, const ldm_tensor *ref, fx_tolerance tol, fx_compare_result *res);

/* A prompt string of case.json as a C string: a C API cannot carry U+0000, so embedded NULs are
 * removed (in place; every tokenizer that sees them, BERT's, deletes them anyway). */
const char *fx_prompt(const lj_value *v);

/* ---- ops that need more than one public call */

/* cond.layout_tokens: builder settings and layouts from a call's params -> ids [N, 3*max+2]. */
ldm_status fx_layout_tokens(const lj_value *params, ldm_tensor **out);

typedef struct fx_sample_spec {
    ldm_sampler_kind kind;
    int steps;
    float eta, guidance_scale;
    const ldm_tensor *x_T;
    const ldm_tensor *noise; /* [n_steps, B, ...] or NULL */
    ldm_tensor *cond, *uncond; /* learned conditioning (owned by the caller) */
    ldm_timestep_spacing spacing; /* k-samplers */
    int guidance_embedding;       /* LCM-distilled UNet: guidance_scale goes into the network, no CFG */
} fx_sample_spec;

typedef struct fx_sample_result {
    ldm_tensor *ddim_timesteps, *ddim_alphas, *ddim_alphas_prev, *ddim_sigmas;
    ldm_tensor *step_timesteps, *step_x, *step_pred_x0, *samples, *image, *model_output_step0;
    ldm_tensor *sigmas; /* k-samplers: the noise levels, last 0 (F32) */
} fx_sample_result;
/* Runs a whole sampling loop through the public API (host-driven: sampler + model apply with
 * classifier-free guidance), recording every step as the reference's sampler outputs do. */
ldm_status fx_sample(ldm_model *model, const fx_sample_spec *spec, fx_sample_result *res);
void fx_sample_result_free(fx_sample_result *res);


#endif
