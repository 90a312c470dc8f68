/* train_save.c - checkpoints of a training run: <out>/last.safetensors in the reference's state
 * dict layout (a LatentDiffusion: model.diffusion_model.*, cond_stage_model.*, the frozen
 * first_stage_model.* (a VQ one with its codebook quantize.*), model_ema.* with decay and
 * num_updates, the twelve schedule buffers and scale_factor; an AutoencoderKL: encoder.*,
 * decoder.*, quant_conv.*, post_quant_conv.* and loss.logvar), <out>/config.yaml (the training config, so the folder loads as a model), and
 * <out>/last.state.safetensors (AdamW moments and step counts, the trainer's step) for resume.
 * Every file is replaced atomically (lib/io/atomic_file.c). */
#include "trainer_internal.h"

#include <stdio.h>
#include <string.h>

/* A growing list of tensors to write; `owned` buffers are freed after the write. */
typedef struct out_list {
    lw_out_tensor *t;
    size_t n, cap;
    void **owned;
    size_t n_owned, cap_owned;
    char **names;
} out_list;

static ldm_status keep(out_list *L, void *p)
{
    if (L->n_owned == L->cap_owned) {
        size_t nc = L->cap_owned ? 2 * L->cap_owned : 64;
        void **no = ldm_realloc(L->owned, nc * sizeof *no);
        if (!no) {
            ldm_free(p);
            return ldm_alloc_failure_status();
        }
        L->owned = no, L->cap_owned = nc;
    }
    L->owned[L->n_owned++] = p;
    return LDM_OK;
}

static ldm_status add(out_list *L, const char *name, lw_dtype dt, int ndim, const int64_t *shape, const void *data)
{
    if (L->n == L->cap) {
        size_t nc = L->cap ? 2 * L->cap : 256;
        lw_out_tensor *nt = ldm_realloc(L->t, nc * sizeof *nt);
        if (!nt) return ldm_alloc_failure_status();
        L->t = nt, L->cap = nc;
    }
    char *copy = ldm_strdup(name);
    if (!copy) return ldm_alloc_failure_status();
    LDM_TRY(keep(L, copy));
    lw_out_tensor *o = &L->t[L->n++];
    memset(o, 0, sizeof *o);
    o->name = copy, o->dtype = dt, o->ndim = ndim, o->data = data;
    for (int i = 0; i < ndim; i++) o->shape[i] = shape[i];
    return LDM_OK;
}

static void list_free(out_list *L)
{
    for (size_t i = 0; i < L->n_owned; i++) ldm_free(L->owned[i]);
    ldm_free(L->owned);
    ldm_free(L->t);
}

void ltr_ema_key(const char *name, char *out, size_t cap) { lw_ema_name(name, out, cap); }

static ldm_status add_scalar_f32(out_list *L, const char *name, float v)
{
    float *p = ldm_malloc(sizeof *p);
    if (!p) return ldm_alloc_failure_status();
    *p = v;
    LDM_TRY(keep(L, p));
    return add(L, name, LW_F32, 0, NULL, p);
}

static ldm_status add_scalar_i64(out_list *L, const char *name, int64_t v, lw_dtype dt)
{
    int64_t *p = ldm_malloc(sizeof *p);
    if (!p) return ldm_alloc_failure_status();
    if (dt == LW_I32) {
        int32_t v32 = (int32_t)v;
        memcpy(p, &v32, sizeof v32);
    } else {
        *p = v;
    }
    LDM_TRY(keep(L, p));
    return add(L, name, dt, 0, NULL, p);
}

/* The frozen first stage's weights under first_stage_model. (float32 copies). */
static ldm_status add_first_stage(ldm_trainer *t, out_list *L)
{
    size_t plen = strlen(t->fs_prefix);
    char name[LTP_NAME_MAX + 32];
    for (size_t i = 0; i < lw_count(t->fs_store); i++) {
        const lw_tensor *w = lw_at(t->fs_store, i);
        if (strncmp(w->name, t->fs_prefix, plen) != 0) continue;
        const char *rest = w->name + plen;
        if (!plen && strncmp(rest, "encoder.", 8) && strncmp(rest, "decoder.", 8) && strncmp(rest, "quant_conv.", 11) &&
            strncmp(rest, "post_quant_conv.", 16) && strncmp(rest, "quantize.", 9))
            continue;
        float *data = NULL;
        LDM_TRY(lw_get_f32(t->fs_store, w->name, -1, NULL, &data));
        LDM_TRY(keep(L, data));
        snprintf(name, sizeof name, "first_stage_model.%s", rest);
        LDM_TRY(add(L, name, LW_F32, w->ndim, w->shape, data));
    }
    return LDM_OK;
}

/* The EMA shadow of a UNet parameter, or NULL. */
static const float *shadow_of(const ldm_trainer *t, const ltp_param *p)
{
    for (size_t i = 0; i < t->n_pairs; i++)
        if (t->pairs[i].param == p->data) return t->pairs[i].shadow;
    return NULL;
}

/* export: the weights a sampler uses (EMA in place of the raw UNet when kept), no model_ema.*,
 * float16 when `half` (schedule buffers and scalars stay float32). */
static ldm_status build_weights(ldm_trainer *t, out_list *L, int export, int half)
{
    for (size_t i = 0; i < ltp_params_count(t->ps); i++) {
        const ltp_param *p = ltp_params_at(t->ps, i);
        const float *src = export && shadow_of(t, p) ? shadow_of(t, p) : p->data;
        LDM_TRY(add(L, p->name, half ? LW_F16 : LW_F32, p->ndim, p->shape, src));
        L->t[L->n - 1].from_f32 = half;
    }
    if (!t->is_diffusion) return add_scalar_f32(L, "loss.logvar", (float)t->cfg.logvar_init);
    size_t first = L->n;
    LDM_TRY(add_first_stage(t, L));
    for (size_t i = first; half && i < L->n; i++) L->t[i].dtype = LW_F16, L->t[i].from_f32 = 1;
    char key[LTP_NAME_MAX + 32];
    for (size_t i = 0; !export && i < t->n_pairs; i++) {
        const ltp_param *p = NULL;
        for (size_t k = 0; k < ltp_params_count(t->ps) && !p; k++)
            if (ltp_params_at(t->ps, k)->data == t->pairs[i].param) p = ltp_params_at(t->ps, k);
        ltr_ema_key(p->name, key, sizeof key);
        LDM_TRY(add(L, key, LW_F32, p->ndim, p->shape, t->pairs[i].shadow));
    }
    if (t->use_ema && !export) {
        LDM_TRY(add_scalar_f32(L, "model_ema.decay", t->ema.decay));
        LDM_TRY(add_scalar_i64(L, "model_ema.num_updates", t->ema.num_updates, LW_I32));
    }
    for (int b = 0; b < LS_N_BUFFERS; b++) {
        int64_t n = t->sched->n;
        LDM_TRY(add(L, ls_buffer_name((ls_buffer)b), LW_F32, 1, &n, t->sched->buf[b]));
    }
    if (t->cfg.scale_by_std) LDM_TRY(add_scalar_f32(L, "scale_factor", t->scale_factor));
    return LDM_OK;
}

static ldm_status build_state(ldm_trainer *t, out_list *L)
{
    char key[LTP_NAME_MAX + 32];
    size_t k = 0;
    for (size_t i = 0; i < ltp_params_count(t->ps); i++) {
        const ltp_param *p = ltp_params_at(t->ps, i);
        if (!p->trainable) continue;
        float *m, *v;
        int64_t step;
        ltr_adamw_state(t->opt, k++, &m, &v, &step);
        snprintf(key, sizeof key, "exp_avg.%s", p->name);
        LDM_TRY(add(L, key, LW_F32, p->ndim, p->shape, m));
        snprintf(key, sizeof key, "exp_avg_sq.%s", p->name);
        LDM_TRY(add(L, key, LW_F32, p->ndim, p->shape, v));
        snprintf(key, sizeof key, "step.%s", p->name);
        LDM_TRY(add_scalar_i64(L, key, step, LW_I64));
    }
    LDM_TRY(add_scalar_i64(L, "trainer.step", t->prog.step, LW_I64));
    return add_scalar_f32(L, "trainer.loss_ema", (float)t->prog.loss_ema);
}

/* config.yaml beside the checkpoint: the training config's bytes. */
static ldm_status copy_config(ldm_trainer *t, const char *dst)
{
    FILE *in = NULL, *out = NULL;
    LDM_TRY(lw_fopen_regular(t->config_path, "config", LDM_ERR_IO, &in));
    lw_atomic_file *af = NULL;
    ldm_status st = lw_atomic_begin(dst, "a config", &af);
    if (st == LDM_OK) st = lw_atomic_stream(af, &out);
    char buf[8192];
    size_t n;
    while (st == LDM_OK && (n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) st = ldm_fail(LDM_ERR_IO, "%s: write failed", dst);
    if (st == LDM_OK && ferror(in)) st = ldm_fail(LDM_ERR_IO, "%s: read failed", t->config_path);
    fclose(in);
    if (st == LDM_OK) return lw_atomic_commit(af);
    lw_atomic_abort(af);
    return st;
}

ldm_status ltr_save_checkpoint(ldm_trainer *t)
{
    char path[4096], step[32];
    snprintf(step, sizeof step, "%lld", (long long)t->prog.step);
    const char *keys[] = {"format", "libldm_phase", "libldm_step"};
    const char *vals[] = {"pt", t->is_diffusion ? "diffusion" : "autoencoder", step};
    out_list L = {0};
    ldm_status st = build_weights(t, &L, 0, 0);
    snprintf(path, sizeof path, "%s/last.safetensors", t->out_dir);
    if (st == LDM_OK) st = lw_write_safetensors(path, L.t, L.n, keys, vals, 3);
    list_free(&L);
    memset(&L, 0, sizeof L);
    if (st == LDM_OK) st = build_state(t, &L);
    snprintf(path, sizeof path, "%s/last.state.safetensors", t->out_dir);
    if (st == LDM_OK) st = lw_write_safetensors(path, L.t, L.n, keys, vals, 3);
    list_free(&L);
    snprintf(path, sizeof path, "%s/config.yaml", t->out_dir);
    if (st == LDM_OK) st = copy_config(t, path);
    return st;
}

ldm_status ltr_export(ldm_trainer *t, const char *path, int half)
{
    char step[32];
    snprintf(step, sizeof step, "%lld", (long long)t->prog.step);
    const char *keys[] = {"format", "libldm_phase", "libldm_step", "libldm_weights"};
    const char *vals[] = {"pt", t->is_diffusion ? "diffusion" : "autoencoder", step, t->use_ema ? "ema" : "raw"};
    out_list L = {0};
    ldm_status st = build_weights(t, &L, 1, half);
    if (st == LDM_OK) st = lw_write_safetensors(path, L.t, L.n, keys, vals, 4);
    list_free(&L);
    return st;
}

/* The parameters this run trains, by name: the UNet and class embedder of an LDM, the whole
 * AutoencoderKL of an autoencoder run. */
static int is_trained_name(const ldm_trainer *t, const char *name)
{
    if (t->is_diffusion)
        return !strncmp(name, "model.diffusion_model.", 22) || !strncmp(name, "cond_stage_model.", 17) ||
               (t->cfg.learn_logvar && !strcmp(name, "logvar"));
    return !strncmp(name, "encoder.", 8) || !strncmp(name, "decoder.", 8) || !strncmp(name, "quant_conv.", 11) ||
           !strncmp(name, "post_quant_conv.", 16);
}

ldm_status ltr_load_weights(ldm_trainer *t, const char *path, int resume)
{
    lw_store *s = NULL;
    LDM_TRY(lw_open(path, 0, &s));
    ldm_status st = LDM_OK;
    size_t loaded = 0;
    for (size_t i = 0; i < lw_count(s) && st == LDM_OK; i++) {
        const lw_tensor *w = lw_at(s, i);
        if (!is_trained_name(t, w->name)) continue;
        float *data = NULL;
        st = lw_get_f32(s, w->name, -1, NULL, &data);
        if (st == LDM_OK) st = ltp_params_set(t->ps, w->name, w->ndim, w->shape, data);
        ldm_free(data);
        loaded++;
    }
    if (st == LDM_OK && resume && t->cfg.scale_by_std) {
        float *sf = NULL;
        st = lw_get_f32(s, "scale_factor", -1, NULL, &sf);
        if (st == LDM_OK) t->scale_factor = *sf, t->scale_factor_known = 1;
        ldm_free(sf);
    }
    lw_close(s);
    if (st == LDM_OK && !loaded)
        st = ldm_fail(LDM_ERR_NOT_FOUND, "%s: none of the weights this run trains (%s)", path,
                      t->is_diffusion ? "model.diffusion_model.*" : "encoder.*, decoder.*");
    return st;
}

static ldm_status read_i64(const lw_store *s, const char *name, int64_t *out)
{
    const lw_tensor *w = lw_find(s, name);
    if (!w || (w->dtype != LW_I64 && w->dtype != LW_I32) || w->nbytes < lw_dtype_size(w->dtype))
        return ldm_fail(LDM_ERR_NOT_FOUND, "optimizer state: %s missing or not an integer", name);
    if (w->dtype == LW_I64) {
        memcpy(out, w->data, sizeof *out);
    } else {
        int32_t v;
        memcpy(&v, w->data, sizeof v);
        *out = v;
    }
    return LDM_OK;
}

/* AdamW state, step counts and the EMA shadows of a resumed run. */
ldm_status ltr_load_optimizer_state(ldm_trainer *t, const char *path)
{
    lw_store *s = NULL;
    LDM_TRY(lw_open(path, 0, &s));
    char key[LTP_NAME_MAX + 32];
    ldm_status st = read_i64(s, "trainer.step", &t->prog.step);
    float *ema_loss = NULL;
    if (st == LDM_OK) st = lw_get_f32(s, "trainer.loss_ema", -1, NULL, &ema_loss);
    if (st == LDM_OK) t->prog.loss_ema = *ema_loss;
    ldm_free(ema_loss);
    size_t k = 0;
    for (size_t i = 0; i < ltp_params_count(t->ps) && st == LDM_OK; i++) {
        const ltp_param *p = ltp_params_at(t->ps, i);
        if (!p->trainable) continue;
        float *m, *v, *tmp = NULL;
        ltr_adamw_state(t->opt, k, &m, &v, NULL);
        snprintf(key, sizeof key, "exp_avg.%s", p->name);
        st = lw_get_f32(s, key, p->ndim, p->shape, &tmp);
        if (st == LDM_OK) memcpy(m, tmp, p->n * sizeof(float));
        ldm_free(tmp), tmp = NULL;
        snprintf(key, sizeof key, "exp_avg_sq.%s", p->name);
        if (st == LDM_OK) st = lw_get_f32(s, key, p->ndim, p->shape, &tmp);
        if (st == LDM_OK) memcpy(v, tmp, p->n * sizeof(float));
        ldm_free(tmp);
        int64_t step = 0;
        snprintf(key, sizeof key, "step.%s", p->name);
        if (st == LDM_OK) st = read_i64(s, key, &step);
        if (st == LDM_OK) st = ltr_adamw_set_step(t->opt, k, step);
        k++;
    }
    lw_close(s);
    if (st != LDM_OK || !t->use_ema) return st;
    /* EMA shadows and counter from the checkpoint itself */
    char last[4096];
    snprintf(last, sizeof last, "%s/last.safetensors", t->out_dir);
    LDM_TRY(lw_open(last, 0, &s));
    for (size_t i = 0; i < t->n_pairs && st == LDM_OK; i++) {
        const ltp_param *p = NULL;
        for (size_t j = 0; j < ltp_params_count(t->ps) && !p; j++)
            if (ltp_params_at(t->ps, j)->data == t->pairs[i].param) p = ltp_params_at(t->ps, j);
        ltr_ema_key(p->name, key, sizeof key);
        float *tmp = NULL;
        st = lw_get_f32(s, key, p->ndim, p->shape, &tmp);
        if (st == LDM_OK) memcpy(t->pairs[i].shadow, tmp, p->n * sizeof(float));
        ldm_free(tmp);
    }
    int64_t nu = 0;
    if (st == LDM_OK) st = read_i64(s, "model_ema.num_updates", &nu);
    if (st == LDM_OK) t->ema.num_updates = (int32_t)nu;
    lw_close(s);
    return st;
}
