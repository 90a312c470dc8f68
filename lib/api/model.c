/* model.c - ldm_model: loading a checkpoint + config, threads, cancellation, logging. */
#include "model_internal.h"

#include "../kernels/kernels.h"
#include "../models/config.h"
#include "../models/diffusers.h"
#include "../models/unet.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h> /* mallinfo2 */
#endif

static void model_params_defaults(ldm_model_params *params)
{
    if (!params) return;
    memset(params, 0, sizeof *params);
    params->struct_size = sizeof *params;
    params->weights = LDM_WEIGHTS_AUTO;
}

void ldm_model_params_init_size(ldm_model_params *params, size_t struct_size)
{
    ldm_model_params defaults;
    model_params_defaults(&defaults);
    ldm_params_fill(params, struct_size, &defaults, sizeof defaults);
}

void(ldm_model_params_init)(ldm_model_params *params) { ldm_model_params_init_size(params, sizeof *params); }

/* Copies a caller's params struct that may come from an older (smaller) header. */
static ldm_status read_params(const ldm_model_params *in, ldm_model_params *out)
{
    ldm_model_params_init(out);
    return ldm_params_read(in, out, sizeof *out, offsetof(ldm_model_params, n_threads), "ldm_model_params");
}

void lm_log(const ldm_model *m, ldm_log_level level, const char *fmt, ...)
{
    if (!m || !m->log) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    m->log(level, buf, m->log_user);
}

ldm_status lm_begin(ldm_model *m, const char *fn)
{
    if (!m) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: model is NULL", fn);
    atomic_store(&m->cancel, 0);
    ldm_alloc_set_cap(ldm_alloc_cap_within(ldm_alloc_get_cap(), m->max_alloc));
    return LDM_OK;
}

void lm_restore_cap(const size_t *saved) { ldm_alloc_set_cap(*saved); }

static int default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)LDM_MIN(n, 256) : 1;
}

static ldm_status pick_weights(ldm_model *m, ldm_weights_choice choice)
{
    int has_ema = lw_has_prefix(m->store, "model_ema.");
    switch (choice) {
    case LDM_WEIGHTS_AUTO: m->use_ema = has_ema && m->desc.use_ema; break;
    case LDM_WEIGHTS_EMA:
        if (!has_ema) return ldm_fail(LDM_ERR_NOT_FOUND, "%s: EMA weights requested but the checkpoint has no model_ema.* tensors", m->path);
        m->use_ema = 1;
        break;
    case LDM_WEIGHTS_RAW: m->use_ema = 0; break;
    default: return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_params.weights: unknown value %d", (int)choice);
    }
    return LDM_OK;
}

/* sgm's DiscreteDenoiser buffer `denoiser.sigmas` when the checkpoint stores it: the table the
 * reference quantises with after loading the state dict. */
static ldm_status load_denoiser_sigmas(ldm_model *m)
{
    const lw_tensor *t = lw_find(m->store, "denoiser.sigmas");
    if (!t) return LDM_OK;
    int n = m->schedule->n;
    if (t->ndim != 1 || t->shape[0] != n)
        return ldm_fail(LDM_ERR_FORMAT, "%s: tensor denoiser.sigmas: expected [%d] (num_idx), found a %d-D tensor",
                        m->path, n, t->ndim);
    float *v = NULL;
    LDM_TRY(lw_get_f32(m->store, "denoiser.sigmas", 1, (int64_t[]){n}, &v));
    for (int i = 0; i < n; i++)
        if (!(v[i] > 0.0f) || !isfinite(v[i]) || (i && v[i] < v[i - 1])) {
            ldm_free(v);
            return ldm_fail(LDM_ERR_FORMAT, "%s: denoiser.sigmas[%d] = %g: not an ascending positive table", m->path,
                            i, (double)v[i]);
        }
    memcpy(m->schedule->sgm_denoiser_sigmas, v, (size_t)n * sizeof *v);
    ldm_free(v);
    lm_log(m, LDM_LOG_DEBUG, "sgm denoiser sigmas from the checkpoint");
    return LDM_OK;
}

/* The DDPM schedule: computed from the config (beta_schedule, linear_start/end), then every
 * buffer the checkpoint stores replaces the computed one, since the reference samples with the
 * stored float32 values. */
static ldm_status load_schedule(ldm_model *m)
{
    const ld_model *d = &m->desc;
    if (!d->is_diffusion) return LDM_OK;
    if (d->timesteps <= 0 || d->timesteps > 100000)
        return ldm_fail(LDM_ERR_FORMAT, "%s: timesteps %d out of range", m->path, d->timesteps);
    static const ls_beta_kind kinds[] = {[LD_SCHED_LINEAR] = LS_BETA_LINEAR, [LD_SCHED_COSINE] = LS_BETA_COSINE,
                                         [LD_SCHED_SQRT_LINEAR] = LS_BETA_SQRT_LINEAR, [LD_SCHED_SQRT] = LS_BETA_SQRT};
    LDM_TRY(ls_schedule_make(kinds[d->beta_schedule], d->timesteps, d->linear_start, d->linear_end, d->cosine_s,
                             &m->schedule));
    int replaced = 0;
    LDM_TRY(ls_schedule_apply_store(m->schedule, m->store, "", &replaced));
    if (d->sgm.present) LDM_TRY(load_denoiser_sigmas(m));
    lm_log(m, LDM_LOG_DEBUG, "noise schedule: %d of %d buffers from the checkpoint", replaced, (int)LS_N_BUFFERS);
    return LDM_OK;
}

static int is_regular_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The config beside a checkpoint: <path without its extension>.yaml, then config.yaml in its
 * folder (how the CompVis and Stability releases ship them). Only regular files count: a FIFO or
 * a directory of that name must not block or fail the load. Returns a heap copy or NULL (also
 * when the copy cannot be allocated: detection then runs, as if nothing had been found, and the
 * cap error is reported by whatever allocates next). */
static char *find_config(const char *checkpoint)
{
    size_t n = strlen(checkpoint);
    char *buf = ldm_malloc(n + sizeof "/config.yaml");
    if (!buf) return NULL;
    const char *slash = strrchr(checkpoint, '/');
    const char *base = slash ? slash + 1 : checkpoint;
    const char *dot = strrchr(base, '.');
    size_t stem = dot && dot != base ? (size_t)(dot - checkpoint) : n;
    snprintf(buf, n + sizeof "/config.yaml", "%.*s.yaml", (int)stem, checkpoint);
    if (strcmp(buf, checkpoint) != 0 && is_regular_file(buf)) return buf;
    if (slash) snprintf(buf, n + sizeof "/config.yaml", "%.*s/config.yaml", (int)(slash - checkpoint), checkpoint);
    else snprintf(buf, n + sizeof "/config.yaml", "config.yaml");
    if (strcmp(buf, checkpoint) != 0 && is_regular_file(buf)) return buf;
    ldm_free(buf);
    return NULL;
}

/* The architecture from the YAML config (given, else found beside the checkpoint), else detected
 * from the tensors; then completed and checked against the checkpoint's shapes. */
static ldm_status load_description(ldm_model *m, const char *config_path)
{
    if (config_path) {
        if (!(m->config_path = ldm_strdup(config_path))) return lw_alloc_status(strlen(config_path) + 1);
        LDM_TRY(ld_config_load(config_path, &m->desc));
    } else if ((m->config_path = find_config(m->path))) {
        ldm_status st = ld_config_load(m->config_path, &m->desc);
        if (st != LDM_OK)
            return ldm_fail_context(st, "config %s found beside the checkpoint (pass ldm_model_params.config_path "
                                        "to use another): ", m->config_path);
        lm_log(m, LDM_LOG_INFO, "using the config %s found beside the checkpoint", m->config_path);
    } else {
        LDM_TRY(ld_detect(m->store, &m->desc));
    }
    return ld_config_complete(&m->desc, m->store);
}

const char *ldm_model_config_path(const ldm_model *model) { return model ? model->config_path : NULL; }

/* Everything after the store and the description are known (files and built-in models alike). */
ldm_status lm_load_from(ldm_model *m, const ldm_model_params *p)
{
    m->first_stage_prefix = lw_find(m->store, "encoder.conv_in.weight") ? "" : "first_stage_model.";
    char buf[8192];
    if (m->desc.is_diffusion && m->desc.unet.present) /* an LCM-distilled UNet's guidance embedding */
        LDM_TRY(lunet_probe_guidance_embedding(m->store, "model.diffusion_model.", m->desc.unet.model_channels,
                                               &m->desc.unet.time_cond_proj_dim));
    if (ld_describe(&m->desc, m->store, buf, sizeof buf) != LDM_OK) snprintf(buf, sizeof buf, "(no description)");
    if (!(m->description = ldm_strdup(buf))) return lw_alloc_status(strlen(buf) + 1);
    LDM_TRY(pick_weights(m, p->weights));
    LDM_TRY(load_schedule(m));
    m->pool = lpool_create(p->n_threads > 0 ? p->n_threads : default_threads());
    if (!m->pool) return ldm_alloc_failure_status();
    /* BLAS pinned to one thread and OpenBLAS's load-time threads stopped now rather than at the
     * first matrix product: they spin on sched_yield until then (docs/performance.md). */
    lk_blas_init();
    m->ctx.pool = m->pool;
    m->ctx.cancel = &m->cancel;
    lm_log(m, LDM_LOG_INFO, "loaded %s (%zu tensors%s)", m->path, lw_count(m->store), m->use_ema ? ", EMA weights" : "");
    return LDM_OK;
}

/* A model object with its parameters read; `label` names it in messages. */
ldm_status lm_model_new(const char *label, const ldm_model_params *params, ldm_model **out, ldm_model_params *p)
{
    *out = NULL;
    LDM_TRY(read_params(params, p));
    /* The loader's caller holds the cap scope (LM_CAP_SCOPE) that restores the thread's cap. */
    ldm_alloc_set_cap(ldm_alloc_cap_within(ldm_alloc_get_cap(), p->max_alloc_bytes));
    if (p->compute == LDM_COMPUTE_BF16) return lk_cpu_check_bf16();
    if (p->compute != LDM_COMPUTE_F32)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_params.compute: unknown value %d", p->compute);
    ldm_model *m = ldm_calloc(1, sizeof *m);
    if (!m) return lw_alloc_status(sizeof *m); /* LDM_ERR_LIMIT when the caller's cap refused it */
    ldm_status held = lk_cpu_hold(p->cpu_kernels);
    if (held != LDM_OK) {
        ldm_free(m);
        return held;
    }
    m->cpu_held = 1;
    m->max_alloc = p->max_alloc_bytes;
    m->log = p->log_callback;
    m->log_user = p->log_user_data;
    if (!(m->path = ldm_strdup(label)) || (p->vocab_path && !(m->vocab_path = ldm_strdup(p->vocab_path)))) {
        ldm_model_free(m);
        return ldm_alloc_failure_status();
    }
    *out = m;
    return LDM_OK;
}

/* Frees a model that failed to load, telling the log callback why. */
void lm_model_discard(ldm_model *m)
{
    if (m && m->log) m->log(LDM_LOG_ERROR, ldm_last_error(), m->log_user);
    ldm_model_free(m);
}

ldm_status ldm_model_load(const char *path, const ldm_model_params *params, ldm_model **out)
{
    ldm_model_params p;
    ldm_model *m = NULL;
    if (!path || !out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_load: path and out must not be NULL");
    *out = NULL;
    /* The model's cap applies while loading only: the calling thread's own cap is restored, so a
     * failed or capped load does not limit the caller's later, unrelated calls. */
    LM_CAP_SCOPE();
    ldm_status st = lm_model_new(path, params, &m, &p);
    /* lw_open sets the cap it is given for its own duration: the effective one, so that a thread
     * cap smaller than the model's (or a thread cap with no model cap) still holds. */
    /* A diffusers folder arrives as a CompVis-named store with its description (a YAML config
     * given by the caller still wins over the folder's JSON). */
    int diffusers = ld_diffusers_is_folder(path);
    if (st == LDM_OK && diffusers) st = lm_open_diffusers(m, path, p.config_path);
    else if (st == LDM_OK) st = lw_open(path, ldm_alloc_get_cap(), &m->store);
    if (st == LDM_OK && (!diffusers || p.config_path)) st = load_description(m, p.config_path);
    if (st == LDM_OK) st = lm_load_from(m, &p);
    if (st != LDM_OK) {
        lm_model_discard(m);
        return st;
    }
    *out = m;
    return LDM_OK;
}

void ldm_model_free(ldm_model *model)
{
    if (!model) return;
    lm_free_components(model);
    lm_loras_free(model);
    lm_tiny_release(model);
    lpool_free(model->pool);
    lw_close(model->store);
    ls_schedule_free(model->schedule);
    ldm_free(model->description);
    ldm_free(model->vocab_path);
    ldm_free(model->config_path);
    ldm_free(model->path);
    if (model->cpu_held) lk_cpu_release();
    ldm_free(model);
    /* The kernels' scratch cache is shared by the models of the process; what it keeps was sized
     * for the networks just freed. */
    lk_scratch_trim();
    ldm_heap_trim();
}

/* Below this many bytes, giving memory back between the phases of a generation is skipped (except
 * in the low-memory mode): it would save little, and every generate would fault its buffers back
 * in (page faults and zeroing: ~10 % of a small model's time, docs/performance.md). Far below the
 * workspaces of real-size models (an SD 1.5 UNet's alone is hundreds of MiB at 512x512), which are
 * released as before. */
#define LM_RELEASE_MIN_BYTES ((size_t)64 << 20)

/* An upper bound of what lm_release_memory could give back: all the heap the process holds from
 * the system (glibc: main and thread arenas plus mmap'ed chunks, in use or free; the UNet workspace
 * and the scratch cache are part of it) plus the checkpoint's tensor bytes (the pages that may be
 * dropped). SIZE_MAX where the allocator cannot tell: then memory is always released. */
static size_t releasable_bound(const ldm_model *m)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
    struct mallinfo2 mi = mallinfo2();
    size_t bytes = mi.arena + mi.hblkhd;
    for (size_t i = 0, n = lw_count(m->store); i < n && bytes < LM_RELEASE_MIN_BYTES; i++)
        bytes += lw_at(m->store, i)->nbytes;
    return bytes;
#else
    (void)m;
    return SIZE_MAX;
#endif
}

void lm_release_memory(ldm_model *m)
{
    if (!lk_low_memory() && releasable_bound(m) < LM_RELEASE_MIN_BYTES) return;
    if (m->unet) lunet_release_workspace(m->unet->net);
    lw_store_release_pages(m->store);
    lk_scratch_trim();
    ldm_heap_trim();
}

void ldm_model_interrupt(ldm_model *model)
{
    if (model) atomic_store(&model->cancel, 1);
}

ldm_status ldm_model_set_threads(ldm_model *model, int n_threads)
{
    LM_BEGIN(model, "ldm_model_set_threads");
    lpool *pool = lpool_create(n_threads > 0 ? n_threads : default_threads());
    if (!pool) return ldm_alloc_failure_status();
    lpool_free(model->pool);
    model->pool = pool;
    model->ctx.pool = pool;
    return LDM_OK;
}

const char *ldm_model_describe(ldm_model *model)
{
    return (model && model->description) ? model->description : "";
}

ldm_status ldm_model_set_abort_callback(ldm_model *model, ldm_abort_callback callback, void *user_data)
{
    LM_BEGIN(model, "ldm_model_set_abort_callback");
    model->ctx.abort_callback = callback;
    model->ctx.abort_user_data = user_data;
    return LDM_OK;
}
