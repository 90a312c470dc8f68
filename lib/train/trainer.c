/* trainer.c - the public ldm_trainer (include/ldm.h): reads the config and the data, builds the
 * networks and the optimiser, runs steps within the limits and reports progress. One step's
 * arithmetic is in train_step.c, checkpoints in train_save.c. */
#include "trainer_internal.h"

#include "train_text.h"
#include "../kernels/kernels.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void ldm_train_params_init_size(ldm_train_params *params, size_t struct_size)
{
    if (!params || struct_size < sizeof(size_t)) return;
    ldm_train_params d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.cond_drop_rate = -1.0;
    d.lora_alpha = -1.0;
    d.seed = 23;
    size_t n = struct_size < sizeof d ? struct_size : sizeof d;
    memset(params, 0, struct_size);
    memcpy(params, &d, n);
    params->struct_size = struct_size;
}

static void log_msg(const ldm_trainer *t, ldm_log_level level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void log_msg(const ldm_trainer *t, ldm_log_level level, const char *fmt, ...)
{
    if (!t->p.log_callback) return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    t->p.log_callback(level, buf, t->p.log_user_data);
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static char *dup_or_null(const char *s, ldm_status *st)
{
    if (!s || *st != LDM_OK) return NULL;
    char *d = ldm_strdup(s);
    if (!d) *st = ldm_alloc_failure_status();
    return d;
}

/* Copies the caller's params (as many bytes as its struct_size says) and the strings. */
static ldm_status copy_params(ldm_trainer *t, const ldm_train_params *p)
{
    ldm_train_params_init(&t->p);
    if (p) {
        if (p->struct_size < offsetof(ldm_train_params, user_data))
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_trainer_create: params not initialised (struct_size %zu)",
                            p->struct_size);
        memcpy(&t->p, p, p->struct_size < sizeof t->p ? p->struct_size : sizeof t->p);
        t->p.struct_size = sizeof t->p;
    }
    ldm_status st = LDM_OK;
    t->data_dir = dup_or_null(t->p.data_dir, &st);
    t->out_dir = dup_or_null(t->p.out_dir, &st);
    t->first_stage_path = dup_or_null(t->p.first_stage, &st);
    t->init_from = dup_or_null(t->p.init_from, &st);
    t->vocab_path = dup_or_null(t->p.vocab_path, &st);
    t->p.vocab_path = t->vocab_path;
    t->p.data_dir = t->data_dir, t->p.out_dir = t->out_dir;
    t->p.first_stage = t->first_stage_path, t->p.init_from = t->init_from;
    return st;
}

static ldm_status check_params(const ldm_trainer *t)
{
    const ldm_train_params *p = &t->p;
    if (!p->data_dir) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_trainer_create: data_dir is required");
    if (!p->out_dir) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_trainer_create: out_dir is required");
    if (p->max_steps < 0 || p->batch_size < 0 || p->save_every < 0 || p->n_threads < 0 || !(p->max_minutes >= 0) ||
        !(p->learning_rate >= 0) || p->cond_drop_rate >= 1.0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_trainer_create: a negative or out-of-range parameter "
                        "(max_steps %lld, batch_size %d, save_every %d, n_threads %d, max_minutes %g, "
                        "learning_rate %g, cond_drop_rate %g)", (long long)p->max_steps, p->batch_size,
                        p->save_every, p->n_threads, p->max_minutes, p->learning_rate, p->cond_drop_rate);
    if (p->resume && p->init_from)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_trainer_create: resume and init_from exclude each other");
    return LDM_OK;
}

/* The architecture this trainer handles, and its sizes. */
static ldm_status check_model(ldm_trainer *t)
{
    const ld_model *m = &t->cfg.model;
    const ld_autoencoder *fs = &m->first_stage;
    t->is_diffusion = m->is_diffusion;
    if (!fs->present || (fs->is_vq && !t->is_diffusion))
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: training supports AutoencoderKL and LatentDiffusion on an "
                        "AutoencoderKL or VQModelInterface first stage (VQ autoencoders themselves do not train)",
                        t->config_path);
    int factor = 1 << (fs->n_levels - 1);
    if (!t->is_diffusion) {
        t->image_size = fs->resolution;
        if (t->image_size <= 0 || t->image_size % factor)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: ddconfig.resolution %d is not a multiple of %d",
                            t->config_path, t->image_size, factor);
        return LDM_OK;
    }
    if (m->sgm.present)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: training an sgm DiffusionEngine (SDXL) is not supported",
                        t->config_path);
    if (m->cond.kind != LD_COND_NONE && !(m->cond.kind == LD_COND_CLASS && m->conditioning_key == LD_CONDKEY_CROSSATTN) &&
        !ltr_text_kind(m->cond.kind))
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: training supports unconditional models, a ClassEmbedder and frozen "
                        "text encoders (captions) through cross-attention (crossattn) for now", t->config_path);
    if (m->unet.num_classes > 0 && m->cond.kind != LD_COND_NONE)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: a UNet with num_classes (label_emb, y = the class labels) trains "
                        "without a cond stage (cond_stage_config: __is_unconditional__)", t->config_path);
    if (m->unet.num_classes > 0 && strcmp(m->cond_stage_key, "class_label") != 0)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: num_classes (label_emb) needs cond_stage_key: class_label, found "
                        "'%s'", t->config_path, m->cond_stage_key);
    t->latent_size = m->image_size;
    t->latent_channels = fs->embed_dim;
    t->image_size = m->image_size * factor;
    if (m->channels != fs->embed_dim || m->unet.in_channels != fs->embed_dim)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: channels %d / unet in_channels %d differ from the first "
                        "stage's embed_dim %d", t->config_path, m->channels, m->unet.in_channels, fs->embed_dim);
    return LDM_OK;
}

static ldm_status open_first_stage(ldm_trainer *t)
{
    const char *path = t->first_stage_path ? t->first_stage_path : t->cfg.first_stage_ckpt[0] ? t->cfg.first_stage_ckpt : NULL;
    char own[4096];
    snprintf(own, sizeof own, "%s/last.safetensors", t->out_dir);
    if (!path && t->init_from) path = t->init_from; /* fine-tuning a whole model: its own first stage */
    if (!path && t->p.resume) path = own;             /* ... and the run's checkpoint keeps it */
    if (!path)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: no first stage: give first_stage_config.params.ckpt_path or "
                        "ldm_train_params.first_stage (ldm train --first-stage)", t->config_path);
    LDM_TRY(lw_open(path, 0, &t->fs_store));
    t->fs_prefix = lw_find(t->fs_store, "encoder.conv_in.weight") ? "" : "first_stage_model.";
    ldm_status st = lae_create(&t->cfg.model.first_stage, t->fs_store, t->fs_prefix, &t->fs);
    if (st != LDM_OK) return ldm_fail_context(st, "first stage %s", path), st;
    return LDM_OK;
}

static ldm_status make_schedule(ldm_trainer *t)
{
    const ld_model *m = &t->cfg.model;
    static const ls_beta_kind kinds[] = {[LD_SCHED_LINEAR] = LS_BETA_LINEAR, [LD_SCHED_COSINE] = LS_BETA_COSINE,
                                         [LD_SCHED_SQRT_LINEAR] = LS_BETA_SQRT_LINEAR, [LD_SCHED_SQRT] = LS_BETA_SQRT};
    LDM_TRY(ls_schedule_make(kinds[m->beta_schedule], m->timesteps, m->linear_start, m->linear_end, m->cosine_s,
                             &t->sched));
    /* p_losses' tables: lvlb_weights as register_schedule computes them, logvar = logvar_init */
    int T = t->sched->n;
    t->lvlb = ldm_malloc(sizeof(float) * (size_t)T);
    t->logvar_fixed = ldm_malloc(sizeof(float) * (size_t)T);
    t->dlogvar = ldm_malloc(sizeof(float) * (size_t)T);
    if (!t->lvlb || !t->logvar_fixed || !t->dlogvar) return ldm_alloc_failure_status();
    if (T < 2) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: timesteps %d (at least 2)", t->config_path, T);
    ltr_prediction pred = m->parameterization == LD_PARAM_V    ? LTR_PRED_V
                          : m->parameterization == LD_PARAM_X0 ? LTR_PRED_X0
                                                               : LTR_PRED_EPS;
    ltr_lvlb_weights(pred, t->sched->buf[LS_BETAS], t->sched->buf[LS_ALPHAS_CUMPROD],
                     t->sched->buf[LS_POSTERIOR_VARIANCE], T, t->lvlb);
    for (int i = 0; i < T; i++) t->logvar_fixed[i] = (float)t->cfg.logvar_init;
    return LDM_OK;
}

static ldm_status alloc_buffers(ldm_trainer *t)
{
    const ld_autoencoder *fs = &t->cfg.model.first_stage;
    size_t B = (size_t)t->batch, S = (size_t)t->image_size;
    size_t img = B * 3 * S * S;
    size_t lat = t->is_diffusion ? B * t->latent_channels * t->latent_size * t->latent_size : 0;
    size_t zs = S >> (fs->n_levels - 1);
    size_t mom = B * 2 * fs->embed_dim * zs * zs;
    size_t big = img > lat ? img : lat;
    if (mom > big) big = mom;
    t->images = ldm_malloc(img * sizeof(float));
    t->x0 = ldm_malloc(big * sizeof(float));
    t->noise = ldm_malloc(big * sizeof(float));
    t->xt = ldm_malloc(big * sizeof(float));
    t->target = ldm_malloc(big * sizeof(float));
    t->dout = ldm_malloc(big * sizeof(float));
    t->aux = ldm_malloc(big * sizeof(float));
    t->labels = ldm_malloc(B * sizeof(int64_t));
    t->timesteps = ldm_malloc(B * sizeof(int));
    t->tsteps_f = ldm_malloc(B * sizeof(float));
    if (!t->images || !t->x0 || !t->noise || !t->xt || !t->target || !t->dout || !t->aux || !t->labels ||
        !t->timesteps || !t->tsteps_f)
        return ldm_alloc_failure_status();
    return LDM_OK;
}

static ldm_status open_data(ldm_trainer *t)
{
    ltr_data_opts o;
    ltr_data_opts_init(&o);
    o.size = t->image_size;
    o.flip = 0;
    if (t->is_diffusion && t->cfg.model.cond.kind == LD_COND_CLASS) o.n_classes = t->cfg.model.cond.n_classes;
    if (t->is_diffusion && t->cfg.model.unet.num_classes > 0) o.n_classes = t->cfg.model.unet.num_classes;
    ldm_status st = ltr_dataset_open(t->data_dir, &o, &t->data);
    if (st != LDM_OK) return st;
    if (ltr_dataset_count(t->data) == 0) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "data %s: no images", t->data_dir);
    return LDM_OK;
}

/* The optimiser over every trainable parameter, and the EMA shadows of the UNet's. */
static ldm_status make_optimizer(ldm_trainer *t)
{
    size_t n = ltp_params_count(t->ps);
    t->plist = ldm_calloc(n ? n : 1, sizeof *t->plist);
    if (!t->plist) return ldm_alloc_failure_status();
    for (size_t i = 0; i < n; i++) {
        ltp_param *p = ltp_params_at(t->ps, i);
        if (p->trainable) t->plist[t->n_plist++] = (ltr_param){p->data, p->grad, p->n};
    }
    ltr_adamw_config oc;
    ltr_adamw_defaults(&oc);
    oc.lr = t->lr;
    if (!t->is_diffusion) { /* AutoencoderKL.configure_optimizers: Adam(betas=(0.5, 0.9)) */
        oc.beta1 = 0.5, oc.beta2 = 0.9, oc.weight_decay = 0.0;
    }
    LDM_TRY(ltr_adamw_create(t->plist, t->n_plist, &oc, &t->opt));
    if (!t->use_ema) return LDM_OK;
    LDM_TRY(ltr_ema_init(&t->ema, 0.9999, 1));
    t->pairs = ldm_calloc(n ? n : 1, sizeof *t->pairs);
    t->shadow = ldm_calloc(n ? n : 1, sizeof *t->shadow);
    if (!t->pairs || !t->shadow) return ldm_alloc_failure_status();
    for (size_t i = 0; i < n; i++) {
        ltp_param *p = ltp_params_at(t->ps, i);
        if (strncmp(p->name, "model.diffusion_model.", 22) != 0) continue;
        float *s = ldm_malloc(p->n * sizeof(float));
        if (!s) return ldm_alloc_failure_status();
        memcpy(s, p->data, p->n * sizeof(float));
        t->shadow[t->n_pairs] = s;
        t->pairs[t->n_pairs++] = (ltr_ema_pair){s, p->data, p->n};
    }
    return LDM_OK;
}

/* main.py: learning_rate = accumulate_grad_batches * ngpu * batch_size * base_lr (--scale_lr). */
static void choose_rates(ldm_trainer *t)
{
    t->batch = t->p.batch_size ? t->p.batch_size : t->cfg.batch_size;
    t->lr = t->p.learning_rate > 0
                ? t->p.learning_rate
                : ltr_scale_lr(t->cfg.accumulate_grad_batches, 1, t->batch, t->cfg.base_learning_rate);
    const ld_cond *cd = &t->cfg.model.cond;
    double ucg = cd->ucg_rate > 0 ? cd->ucg_rate : 0.0;
    t->cond_drop = t->p.cond_drop_rate >= 0 ? t->p.cond_drop_rate : ucg;
    t->uncond_class = (t->is_diffusion && cd->kind == LD_COND_CLASS && cd->n_classes > 1) ? cd->n_classes - 1 : -1;
    t->planned = t->p.max_steps ? t->p.max_steps : t->cfg.max_steps;
    t->use_ema = t->is_diffusion && t->cfg.model.use_ema;
}

static ldm_status make_out_dir(const char *dir)
{
    if (mkdir(dir, 0777) == 0 || errno == EEXIST) {
        struct stat st;
        if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) return LDM_OK;
        return ldm_fail(LDM_ERR_IO, "out_dir %s: not a directory", dir);
    }
    return ldm_fail(LDM_ERR_IO, "out_dir %s: %s", dir, strerror(errno));
}

static ldm_status setup(ldm_trainer *t)
{
    LDM_TRY(check_params(t));
    LDM_TRY(ltr_config_load(t->config_path, &t->cfg));
    LDM_TRY(check_model(t));
    choose_rates(t);
    LDM_TRY(ltr_finetune_check(t));
    if (!t->planned && !(t->p.max_minutes > 0))
        log_msg(t, LDM_LOG_WARN, "no step or time limit: ldm_trainer_run would not stop (ldm_trainer_step still works)");
    if (!t->is_diffusion && t->cfg.has_disc_or_perceptual)
        log_msg(t, LDM_LOG_WARN, "%s: the perceptual (LPIPS) and adversarial terms of LPIPSWithDiscriminator are not "
                "implemented; training with L1 + kl_weight * KL only", t->config_path);
    LDM_TRY(make_out_dir(t->out_dir));
    int threads = t->p.n_threads ? t->p.n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    t->pool = lpool_create(threads > 0 ? threads : 1);
    if (!t->pool) return ldm_alloc_failure_status();
    LDM_TRY(lk_cpu_hold(NULL)); /* the kernel family must not change under a training run */
    t->cpu_held = 1;
    t->c.pool = t->pool;
    t->c.cancel = &t->cancel;
    LDM_TRY(ltp_params_create(t->p.seed, &t->ps));
    LDM_TRY(ltp_tape_create(&t->c, &t->tape));
    ltp_set_activation_budget(t->tape, (size_t)t->p.max_activation_bytes);
    if (t->p.max_activation_bytes)
        log_msg(t, t->is_diffusion ? LDM_LOG_INFO : LDM_LOG_WARN, "max_activation_bytes %llu: %s",
                (unsigned long long)t->p.max_activation_bytes,
                t->is_diffusion ? "UNet blocks past it are recomputed in backward" : "ignored (only the UNet checkpoints)");
    if (t->is_diffusion) {
        LDM_TRY(open_first_stage(t));
        LDM_TRY(make_schedule(t));
        t->scale_factor = (float)t->cfg.model.scale_factor;
        t->scale_factor_known = !t->cfg.scale_by_std;
    }
    LDM_TRY(alloc_buffers(t));
    LDM_TRY(open_data(t));
    char last[4096];
    snprintf(last, sizeof last, "%s/last.safetensors", t->out_dir);
    LDM_TRY(ltr_finetune_open_text(t, last));
    if (t->p.resume) LDM_TRY(ltr_load_weights(t, last, 1));
    if (t->init_from) LDM_TRY(ltr_load_weights(t, t->init_from, 0));
    LDM_TRY(ltr_declare_params(t));
    if (t->is_diffusion && !t->cfg.cond_stage_trainable) /* LatentDiffusion keeps it frozen */
        LDM_TRY(ltp_params_set_trainable(t->ps, "cond_stage_model.", 0));
    LDM_TRY(ltr_finetune_freeze(t));
    LDM_TRY(make_optimizer(t));
    if (t->p.resume) {
        snprintf(last, sizeof last, "%s/last.state.safetensors", t->out_dir);
        LDM_TRY(ltr_load_optimizer_state(t, last));
    }
    t->prog.phase = t->is_diffusion ? "diffusion" : "autoencoder";
    t->prog.total_steps = t->planned;
    log_msg(t, LDM_LOG_INFO, "training %s: %zu parameters (%zu trainable), %lld images, batch %d, lr %g, %d threads",
            t->prog.phase, ltp_params_numel(t->ps, 0), ltp_params_numel(t->ps, 1), (long long)ltr_dataset_count(t->data),
            t->batch, t->lr, threads);
    return LDM_OK;
}

ldm_status ldm_trainer_create(const char *config_path, const ldm_train_params *params, ldm_trainer **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_trainer_create: NULL output");
    *out = NULL;
    if (!config_path) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_trainer_create: no config");
    ldm_trainer *t = ldm_calloc(1, sizeof *t);
    if (!t) return ldm_alloc_failure_status();
    ldm_status st = copy_params(t, params);
    if (st == LDM_OK) {
        t->config_path = ldm_strdup(config_path);
        st = t->config_path ? setup(t) : ldm_alloc_failure_status();
    }
    if (st != LDM_OK) {
        ldm_trainer_free(t);
        return st;
    }
    *out = t;
    return LDM_OK;
}

/* One step with timing and the callback; *stop when the callback asked to stop. */
static ldm_status timed_step(ldm_trainer *t, int *stop)
{
    if (atomic_load(&t->cancel)) return ldm_fail(LDM_CANCELLED, "training interrupted");
    double t0 = now_seconds(), loss = 0.0;
    LDM_TRY(ltr_train_step(t, &loss));
    ldm_train_progress *p = &t->prog;
    p->step++;
    p->loss = loss;
    p->loss_ema = p->step == 1 ? loss : 0.98 * p->loss_ema + 0.02 * loss;
    p->seconds = now_seconds() - t0;
    p->images_per_second = p->seconds > 0 ? t->batch * t->cfg.accumulate_grad_batches / p->seconds : 0.0;
    if (t->p.callback && t->p.callback(p, t->p.user_data)) *stop = 1;
    return LDM_OK;
}

ldm_status ldm_trainer_step(ldm_trainer *t, int n_steps)
{
    if (!t || n_steps < 0) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_trainer_step: bad arguments");
    atomic_store(&t->cancel, 0);
    for (int i = 0; i < n_steps; i++) {
        int stop = 0;
        LDM_TRY(timed_step(t, &stop));
        if (stop) return ldm_fail(LDM_CANCELLED, "training stopped by the callback at step %lld", (long long)t->prog.step);
    }
    return LDM_OK;
}

ldm_status ldm_trainer_run(ldm_trainer *t)
{
    if (!t) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_trainer_run: NULL trainer");
    if (!t->planned && !(t->p.max_minutes > 0))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_trainer_run: no limit (max_steps or max_minutes)");
    atomic_store(&t->cancel, 0);
    double start = now_seconds();
    ldm_status st = LDM_OK;
    int stop = 0;
    while (st == LDM_OK && !stop) {
        if (t->planned && t->prog.step >= t->planned) break;
        if (t->p.max_minutes > 0 && now_seconds() - start >= 60.0 * t->p.max_minutes) break;
        st = timed_step(t, &stop);
        if (st == LDM_OK && t->p.save_every && t->prog.step % t->p.save_every == 0) st = ltr_save_checkpoint(t);
    }
    if (st == LDM_CANCELLED || st == LDM_OK) {
        ldm_status s2 = ltr_save_checkpoint(t);
        if (st == LDM_OK) st = s2;
    }
    if (st == LDM_OK && stop) st = ldm_fail(LDM_CANCELLED, "training stopped by the callback at step %lld", (long long)t->prog.step);
    return st;
}

ldm_status ldm_trainer_save(ldm_trainer *t)
{
    if (!t) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_trainer_save: NULL trainer");
    return ltr_save_checkpoint(t);
}

ldm_status ldm_trainer_export(ldm_trainer *t, const char *path, int half)
{
    if (!t || !path) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_trainer_export: NULL argument");
    return ltr_export(t, path, half != 0);
}

ldm_status ldm_trainer_progress(const ldm_trainer *t, ldm_train_progress *p)
{
    if (!t || !p) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_trainer_progress: NULL argument");
    *p = t->prog;
    return LDM_OK;
}

void ldm_trainer_interrupt(ldm_trainer *t)
{
    if (t) atomic_store(&t->cancel, 1);
}

void ldm_trainer_free(ldm_trainer *t)
{
    if (!t) return;
    ltr_adamw_free(t->opt);
    ltr_finetune_free(t);
    for (size_t i = 0; i < t->n_pairs; i++) ldm_free(t->shadow[i]);
    ldm_free(t->shadow);
    ldm_free(t->pairs);
    ldm_free(t->plist);
    ltp_tape_free(t->tape);
    ltp_params_free(t->ps);
    ltr_dataset_free(t->data);
    lae_free(t->fs);
    lw_close(t->fs_store);
    ls_schedule_free(t->sched);
    lpool_free(t->pool);
    if (t->cpu_held) lk_cpu_release();
    ldm_free(t->images), ldm_free(t->x0), ldm_free(t->noise), ldm_free(t->xt);
    ldm_free(t->target), ldm_free(t->dout), ldm_free(t->aux);
    ldm_free(t->labels), ldm_free(t->timesteps), ldm_free(t->tsteps_f);
    ldm_free(t->lvlb), ldm_free(t->logvar_fixed), ldm_free(t->dlogvar);
    ldm_free(t->config_path), ldm_free(t->data_dir), ldm_free(t->out_dir);
    ldm_free(t->first_stage_path), ldm_free(t->init_from);
    ldm_free(t);
}
