/* train_config.c - the training keys of a reference config (train_config.h). The architecture
 * comes from lib/models/config.c; this reads the rest from the same YAML tree. */
#include "train_config.h"

#include "../io/weights.h"
#include "../models/config.h"
#include "../models/ytree.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The node at a dotted path ("model.params.loss_type"), or NULL. */
static const ld_ynode *at(const ld_ynode *root, const char *path)
{
    char key[128];
    const ld_ynode *n = root;
    while (n && *path) {
        const char *dot = strchr(path, '.');
        size_t len = dot ? (size_t)(dot - path) : strlen(path);
        if (len >= sizeof key) return NULL;
        memcpy(key, path, len);
        key[len] = 0;
        n = ld_yaml_get(n, key);
        path += len + (dot ? 1 : 0);
    }
    return n;
}

static ldm_status type_error(const char *name, const ld_ynode *n, const char *path, const char *want)
{
    char shown[96];
    ld_yaml_show(n, shown, sizeof shown);
    return ldm_fail(LDM_ERR_FORMAT, "%s:%d: %s: expected %s, found %s", name, n->line, path, want, shown);
}

static ldm_status get_float(const ld_ynode *root, const char *name, const char *path, double *out)
{
    const ld_ynode *n = at(root, path);
    if (!n || ld_yaml_is_null(n)) return LDM_OK;
    if (ld_yaml_float(n, out) != 0) return type_error(name, n, path, "a number");
    return LDM_OK;
}

static ldm_status get_int(const ld_ynode *root, const char *name, const char *path, long long lo, long long hi,
                          long long *out)
{
    const ld_ynode *n = at(root, path);
    if (!n || ld_yaml_is_null(n)) return LDM_OK;
    if (ld_yaml_int(n, out) != 0) return type_error(name, n, path, "an integer");
    if (*out < lo || *out > hi)
        return ldm_fail(LDM_ERR_FORMAT, "%s:%d: %s: %lld outside [%lld, %lld]", name, n->line, path, *out, lo, hi);
    return LDM_OK;
}

static ldm_status get_bool(const ld_ynode *root, const char *name, const char *path, int *out)
{
    const ld_ynode *n = at(root, path);
    if (!n || ld_yaml_is_null(n)) return LDM_OK;
    if (ld_yaml_bool(n, out) != 0) return type_error(name, n, path, "true or false");
    return LDM_OK;
}

static const char *get_str(const ld_ynode *root, const char *path)
{
    const ld_ynode *n = at(root, path);
    return n && n->kind == LD_Y_SCALAR && !ld_yaml_is_null(n) ? n->text : NULL;
}

/* A list of numbers (or one number, repeated as a list of one). */
static ldm_status get_list(const ld_ynode *root, const char *name, const char *path, double *out, int *n_out)
{
    const ld_ynode *n = at(root, path);
    if (!n) return LDM_OK;
    if (n->kind == LD_Y_SCALAR) {
        *n_out = 1;
        return get_float(root, name, path, out);
    }
    if (n->kind != LD_Y_SEQ || n->n == 0 || n->n > LTR_MAX_CYCLES) return type_error(name, n, path, "a short list");
    for (size_t i = 0; i < n->n; i++)
        if (ld_yaml_float(n->items[i], &out[i]) != 0) return type_error(name, n->items[i], path, "numbers");
    *n_out = (int)n->n;
    return LDM_OK;
}

static ldm_status read_scheduler(const ld_ynode *root, const char *name, ltr_config *c)
{
    const char *target = get_str(root, "model.params.scheduler_config.target");
    if (!target) return LDM_OK;
    const char *p = "model.params.scheduler_config.params.";
    char path[160];
#define KEY(k) (snprintf(path, sizeof path, "%s%s", p, k), path)
    if (!strcmp(target, "ldm.lr_scheduler.LambdaWarmUpCosineScheduler")) {
        c->sched = LTR_SCHED_COSINE;
        ltr_warmup_cosine *w = &c->cosine;
        LDM_TRY(get_float(root, name, KEY("warm_up_steps"), &w->warm_up_steps));
        LDM_TRY(get_float(root, name, KEY("lr_min"), &w->lr_min));
        LDM_TRY(get_float(root, name, KEY("lr_max"), &w->lr_max));
        LDM_TRY(get_float(root, name, KEY("lr_start"), &w->lr_start));
        return get_float(root, name, KEY("max_decay_steps"), &w->max_decay_steps);
    }
    int linear = !strcmp(target, "ldm.lr_scheduler.LambdaLinearScheduler");
    if (!linear && strcmp(target, "ldm.lr_scheduler.LambdaWarmUpCosineScheduler2"))
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: scheduler_config.target '%s' is not supported (LambdaLinearScheduler, "
                        "LambdaWarmUpCosineScheduler, LambdaWarmUpCosineScheduler2)", name, target);
    c->sched = linear ? LTR_SCHED_LINEAR : LTR_SCHED_COSINE2;
    int n[5] = {0, 0, 0, 0, 0};
    LDM_TRY(get_list(root, name, KEY("warm_up_steps"), c->warm_up, &n[0]));
    LDM_TRY(get_list(root, name, KEY("f_min"), c->f_min, &n[1]));
    LDM_TRY(get_list(root, name, KEY("f_max"), c->f_max, &n[2]));
    LDM_TRY(get_list(root, name, KEY("f_start"), c->f_start, &n[3]));
    LDM_TRY(get_list(root, name, KEY("cycle_lengths"), c->cycle_lengths, &n[4]));
#undef KEY
    c->n_cycles = n[0];
    for (int i = 1; i < 5; i++)
        if (n[i] != n[0] || n[0] == 0)
            return ldm_fail(LDM_ERR_FORMAT, "%s: scheduler_config.params: warm_up_steps, f_min, f_max, f_start and "
                            "cycle_lengths must be lists of the same length", name);
    return LDM_OK;
}

static void defaults(ltr_config *c)
{
    memset(c, 0, sizeof *c);
    c->batch_size = 1;
    c->accumulate_grad_batches = 1;
    c->loss_type = LTR_LOSS_L2;
    c->l_simple_weight = 1.0;
    c->kl_weight = 1.0;
    c->base_learning_rate = -1.0;
}

static ldm_status read_training_keys(const ld_ynode *root, const char *name, ltr_config *c)
{
    const char *mp = c->model.is_diffusion ? "model.params." : "model.params.lossconfig.params.";
    char path[160];
    LDM_TRY(get_float(root, name, "model.base_learning_rate", &c->base_learning_rate));
    if (c->base_learning_rate < 0)
        return ldm_fail(LDM_ERR_FORMAT, "%s: model.base_learning_rate is missing (the reference's main.py needs it)",
                        name);
    long long v = c->batch_size;
    LDM_TRY(get_int(root, name, "data.params.batch_size", 1, 1 << 16, &v));
    c->batch_size = (int)v;
    v = 0;
    LDM_TRY(get_int(root, name, "lightning.trainer.max_steps", -1, (long long)1 << 40, &v));
    c->max_steps = v > 0 ? v : 0;
    v = 1;
    LDM_TRY(get_int(root, name, "lightning.trainer.accumulate_grad_batches", 1, 1 << 16, &v));
    c->accumulate_grad_batches = (int)v;
    if (c->model.is_diffusion) {
        LDM_TRY(get_bool(root, name, "model.params.cond_stage_trainable", &c->cond_stage_trainable));
        LDM_TRY(get_bool(root, name, "model.params.scale_by_std", &c->scale_by_std));
        LDM_TRY(get_float(root, name, "model.params.l_simple_weight", &c->l_simple_weight));
        LDM_TRY(get_float(root, name, "model.params.original_elbo_weight", &c->original_elbo_weight));
        LDM_TRY(get_float(root, name, "model.params.logvar_init", &c->logvar_init));
        LDM_TRY(get_bool(root, name, "model.params.learn_logvar", &c->learn_logvar));
        const char *lt = get_str(root, "model.params.loss_type");
        if (lt && !strcmp(lt, "l1"))
            c->loss_type = LTR_LOSS_L1;
        else if (lt && strcmp(lt, "l2"))
            return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: model.params.loss_type '%s' (l1 or l2)", name, lt);
        const char *ck = get_str(root, "model.params.first_stage_config.params.ckpt_path");
        if (ck) snprintf(c->first_stage_ckpt, sizeof c->first_stage_ckpt, "%s", ck);
    } else {
        snprintf(path, sizeof path, "%skl_weight", mp);
        LDM_TRY(get_float(root, name, path, &c->kl_weight));
        snprintf(path, sizeof path, "%slogvar_init", mp);
        LDM_TRY(get_float(root, name, path, &c->logvar_init));
        /* LPIPSWithDiscriminator: perceptual_weight defaults to 1, disc_weight to 1 */
        double pw = 1.0, dw = 1.0;
        snprintf(path, sizeof path, "%sperceptual_weight", mp);
        LDM_TRY(get_float(root, name, path, &pw));
        snprintf(path, sizeof path, "%sdisc_weight", mp);
        LDM_TRY(get_float(root, name, path, &dw));
        const char *lt = get_str(root, "model.params.lossconfig.target");
        c->has_disc_or_perceptual = lt && strstr(lt, "LPIPSWithDiscriminator") && (pw != 0.0 || dw != 0.0);
    }
    return read_scheduler(root, name, c);
}

ldm_status ltr_config_parse(const char *text, size_t len, const char *name, ltr_config *out)
{
    defaults(out);
    LDM_TRY(ld_config_parse(text, len, name, &out->model));
    ld_ynode *root = NULL;
    LDM_TRY(ld_yaml_parse(text, len, name, &root));
    ldm_status st = read_training_keys(root, name, out);
    ld_yaml_free(root);
    return st;
}

ldm_status ltr_config_load(const char *path, ltr_config *out)
{
    FILE *f = NULL;
    LDM_TRY(lw_fopen_regular(path, "config", LDM_ERR_IO, &f));
    char *buf = ldm_malloc(LD_Y_MAX_INPUT + 1);
    if (!buf) {
        fclose(f);
        return ldm_alloc_failure_status();
    }
    size_t n = fread(buf, 1, LD_Y_MAX_INPUT + 1, f);
    int err = ferror(f);
    fclose(f);
    ldm_status st;
    if (err)
        st = ldm_fail(LDM_ERR_IO, "config %s: read error", path);
    else if (n > LD_Y_MAX_INPUT)
        st = ldm_fail(LDM_ERR_LIMIT, "config %s: larger than %zu bytes", path, LD_Y_MAX_INPUT);
    else
        st = ltr_config_parse(buf, n, path, out);
    ldm_free(buf);
    return st;
}

ldm_status ltr_config_lr_lambda(const ltr_config *c, int64_t n, double *lambda)
{
    ltr_cycles cy = {c->n_cycles, c->warm_up, c->f_min, c->f_max, c->f_start, c->cycle_lengths};
    switch (c->sched) {
    case LTR_SCHED_NONE: *lambda = 1.0; return LDM_OK;
    case LTR_SCHED_LINEAR: return ltr_lr_linear(&cy, n, lambda);
    case LTR_SCHED_COSINE2: return ltr_lr_warmup_cosine2(&cy, n, lambda);
    case LTR_SCHED_COSINE: return ltr_lr_warmup_cosine(&c->cosine, n, lambda);
    }
    return ldm_fail(LDM_ERR_INTERNAL, "lr schedule");
}
