/* lora.c - LoRA adapters on the training UNet and the kohya LoRA file (lora.h). */
#include "lora.h"

#include "../io/weights.h"
#include "../models/unet_names.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

float ltr_lora_scale(const ltr_lora *l)
{
    if (!l || l->rank <= 0) return 0.0f;
    double alpha = l->alpha == 0.0 ? (double)l->rank : l->alpha;
    return (float)(alpha / (double)l->rank);
}

/* ---------------------------------------------------------------- config */

static ldm_status bad_key(const char *name, const ld_ynode *n, const char *key, const char *want)
{
    char shown[96];
    ld_yaml_show(n, shown, sizeof shown);
    return ldm_fail(LDM_ERR_FORMAT, "%s:%d: lora.%s: expected %s, found %s", name, n->line, key, want, shown);
}

static ldm_status read_targets(const ld_ynode *n, const char *name, unsigned *out)
{
    if (n->kind != LD_Y_SEQ || n->n == 0) return bad_key(name, n, "targets", "a list of attn, ff, proj");
    *out = 0;
    for (size_t i = 0; i < n->n; i++) {
        const ld_ynode *it = n->items[i];
        const char *s = it->kind == LD_Y_SCALAR ? it->text : "";
        if (!strcmp(s, "attn"))
            *out |= LTR_LORA_ATTN;
        else if (!strcmp(s, "ff"))
            *out |= LTR_LORA_FF;
        else if (!strcmp(s, "proj"))
            *out |= LTR_LORA_PROJ;
        else
            return bad_key(name, it, "targets", "attn, ff or proj");
    }
    return LDM_OK;
}

ldm_status ltr_lora_read_config(const ld_ynode *root, const char *name, ltr_lora *out)
{
    memset(out, 0, sizeof *out);
    out->alpha = 1.0;
    out->targets = LTR_LORA_ALL;
    const ld_ynode *sec = ld_yaml_get(root, "lora");
    if (!sec || ld_yaml_is_null(sec)) return LDM_OK;
    if (sec->kind != LD_Y_MAP) return bad_key(name, sec, "", "a map (rank, alpha, targets)");
    for (size_t i = 0; i < sec->n; i++) {
        const char *k = sec->keys[i];
        const ld_ynode *v = sec->items[i];
        long long r;
        if (!strcmp(k, "rank")) {
            if (ld_yaml_int(v, &r) != 0 || r < 0 || r > LTR_LORA_MAX_RANK)
                return bad_key(name, v, k, "an integer in [0, 4096]");
            out->rank = (int)r;
        } else if (!strcmp(k, "alpha")) {
            if (ld_yaml_float(v, &out->alpha) != 0 || !(out->alpha >= 0) || !isfinite(out->alpha))
                return bad_key(name, v, k, "a number >= 0");
        } else if (!strcmp(k, "targets")) {
            LDM_TRY(read_targets(v, name, &out->targets));
        } else {
            return ldm_fail(LDM_ERR_FORMAT, "%s:%d: lora.%s: unknown key (rank, alpha, targets)", name, v->line, k);
        }
    }
    return LDM_OK;
}

/* ---------------------------------------------------------------- targets and the forward */

static int ends_with(const char *s, const char *suffix)
{
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && !strcmp(s + ls - lx, suffix);
}

int ltr_lora_is_target(const ltr_lora *l, const char *module)
{
    if (!l || l->rank <= 0 || !module) return 0;
    if (ends_with(module, ".proj_in") || ends_with(module, ".proj_out")) return (l->targets & LTR_LORA_PROJ) != 0;
    if (!strstr(module, ".transformer_blocks.")) return 0;
    static const char *const attn[] = {".to_q", ".to_k", ".to_v", ".to_out.0"};
    for (int i = 0; i < 4; i++)
        if (ends_with(module, attn[i]) && (strstr(module, ".attn1.") || strstr(module, ".attn2.")))
            return (l->targets & LTR_LORA_ATTN) != 0;
    if (ends_with(module, ".ff.net.0.proj") || ends_with(module, ".ff.net.2")) return (l->targets & LTR_LORA_FF) != 0;
    return 0;
}

static ltp_param *adapter_param(ltp_params *ps, const char *module_full, const char *which, int ndim,
                                const int64_t *shape, ltp_init init, int64_t fan_in)
{
    char name[LTP_NAME_MAX];
    int n = snprintf(name, sizeof name, "%s%s.%s.weight", LTR_LORA_PARAM_PREFIX, module_full, which);
    if (n < 0 || (size_t)n >= sizeof name) {
        ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lora: name too long for %s", module_full);
        return NULL;
    }
    return ltp_params_get(ps, name, ndim, shape, init, fan_in);
}

ltp_id ltr_lora_apply(ltp_tape *t, ltp_params *ps, const ltr_lora *l, const char *unet_prefix, const char *module,
                      ltp_id x, ltp_id y, int in, int out, int conv)
{
    if (ltp_status(t) != LDM_OK || !l || l->rank <= 0) return y;
    size_t pl = strlen(unet_prefix);
    const char *rel = strncmp(module, unet_prefix, pl) == 0 ? module + pl : module;
    if (!ltr_lora_is_target(l, rel)) return y;
    int64_t r = l->rank;
    int64_t ds[4] = {r, in, 1, 1}, us[4] = {out, r, 1, 1};
    /* kaiming_uniform_(a=sqrt 5) of lora_down = U(+-1/sqrt(in)); lora_up zeros */
    ltp_param *down = adapter_param(ps, module, "lora_down", conv ? 4 : 2, ds, LTP_INIT_UNIFORM, in);
    ltp_param *up = adapter_param(ps, module, "lora_up", conv ? 4 : 2, us, LTP_INIT_ZERO, r);
    ltp_id h, dn = ltp_param_ref(t, down), upv = ltp_param_ref(t, up); /* NULL: error latched */
    if (dn < 0 || upv < 0) return LTP_NONE;
    if (conv) {
        h = ltp_conv2d(t, ltp_conv2d(t, x, dn, LTP_NONE, 1, 0), upv, LTP_NONE, 1, 0);
    } else {
        h = ltp_linear(t, ltp_linear(t, x, dn, LTP_NONE), upv, LTP_NONE);
    }
    return ltp_add(t, y, ltp_scale(t, h, ltr_lora_scale(l)));
}

/* ---------------------------------------------------------------- the kohya file */

int ltr_lora_kohya_name(const ld_unet *d, const char *module, char *out, size_t cap)
{
    ld_unet_layout lay;
    ld_unet_layout_from_desc(d, &lay);
    char path[LTP_NAME_MAX];
    if (!ld_unet_name_to_diffusers(&lay, module, path, sizeof path)) {
        if (strlen(module) >= sizeof path) return 0;
        memcpy(path, module, strlen(module) + 1); /* no diffusers spelling: the CompVis path */
    }
    int n = snprintf(out, cap, "lora_unet_%s", path);
    if (n < 0 || (size_t)n >= cap) return 0;
    for (char *p = out; *p; p++)
        if (*p == '.') *p = '_';
    return 1;
}

/* The module path of an adapter parameter "lora.<unet_prefix><module>.lora_down.weight", or 0. */
static int adapter_module(const char *pname, const char *unet_prefix, char *module, size_t cap)
{
    size_t lp = strlen(LTR_LORA_PARAM_PREFIX), up = strlen(unet_prefix);
    const char *suffix = ".lora_down.weight";
    if (strncmp(pname, LTR_LORA_PARAM_PREFIX, lp) || strncmp(pname + lp, unet_prefix, up) || !ends_with(pname, suffix))
        return 0;
    const char *m = pname + lp + up;
    size_t len = strlen(m) - strlen(suffix);
    if (len >= cap) return 0;
    memcpy(module, m, len);
    module[len] = 0;
    return 1;
}

static const ltp_param *adapter_up(const ltp_params *ps, const char *down_name)
{
    char name[LTP_NAME_MAX];
    size_t len = strlen(down_name) - strlen("lora_down.weight");
    snprintf(name, sizeof name, "%.*slora_up.weight", (int)len, down_name);
    return ltp_params_find(ps, name);
}

/* ss_base_model_version as kohya's model_util.get_model_version_str_for_sd1_sd2 spells it for the
 * SD families (v2 = the OpenCLIP text tower); other latent diffusion models are no SD version. */
static const char *base_model_version(const ld_model *m, int *v2)
{
    *v2 = m->cond.kind == LD_COND_OPENCLIP;
    int v = m->parameterization == LD_PARAM_V;
    if (m->cond.kind == LD_COND_CLIP) return v ? "sd_v1_v" : "sd_v1";
    if (*v2) return v ? "sd_v2_v" : "sd_v2";
    return "compvis_ldm";
}

static void format_alpha(double a, char *buf, size_t cap)
{
    /* Python's str(float) for the values people use (1.0, 0.5, 16.0, ...) */
    if (a == floor(a) && fabs(a) < 1e15)
        snprintf(buf, cap, "%.1f", a);
    else
        snprintf(buf, cap, "%.17g", a);
}

ldm_status ltr_lora_write(const char *path, const ltp_params *ps, const char *unet_prefix, const ld_model *m,
                          const ltr_lora *l, int half, int64_t step)
{
    size_t np = ltp_params_count(ps), n = 0;
    lw_out_tensor *ts = ldm_calloc(3 * (np ? np : 1), sizeof *ts);
    char(*names)[LTP_NAME_MAX + 32] = ldm_calloc(3 * (np ? np : 1), sizeof *names);
    float *alpha = ldm_malloc(sizeof *alpha);
    if (!ts || !names || !alpha) {
        ldm_free(ts), ldm_free(names), ldm_free(alpha);
        return ldm_alloc_failure_status();
    }
    *alpha = (float)(l->alpha == 0.0 ? (double)l->rank : l->alpha);
    ldm_status st = LDM_OK;
    char module[LTP_NAME_MAX], stem[LTP_NAME_MAX];
    for (size_t i = 0; i < np && st == LDM_OK; i++) {
        const ltp_param *down = ltp_params_at(ps, i);
        if (!adapter_module(down->name, unet_prefix, module, sizeof module)) continue;
        const ltp_param *up = adapter_up(ps, down->name);
        if (!up) {
            st = ldm_fail(LDM_ERR_INTERNAL, "lora: %s has no lora_up", down->name);
            break;
        }
        if (!ltr_lora_kohya_name(&m->unet, module, stem, sizeof stem)) {
            st = ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lora: no kohya name for %s", module);
            break;
        }
        const ltp_param *src[3] = {down, up, NULL};
        const char *what[3] = {"lora_down.weight", "lora_up.weight", "alpha"};
        for (int k = 0; k < 3; k++) {
            lw_out_tensor *o = &ts[n];
            snprintf(names[n], sizeof names[n], "%s.%s", stem, what[k]);
            o->name = names[n];
            o->dtype = half ? LW_F16 : LW_F32;
            o->from_f32 = half;
            if (src[k]) {
                o->ndim = src[k]->ndim;
                for (int j = 0; j < src[k]->ndim; j++) o->shape[j] = src[k]->shape[j];
                o->data = src[k]->data;
            } else {
                o->ndim = 0, o->data = alpha; /* torch.tensor(alpha): a 0-dim tensor */
            }
            n++;
        }
    }
    if (st == LDM_OK && n == 0) st = ldm_fail(LDM_ERR_NOT_FOUND, "lora: the model has no adapters to write");
    char dim[32], alpha_s[40], steps[32];
    int v2 = 0;
    const char *version = base_model_version(m, &v2);
    snprintf(dim, sizeof dim, "%d", l->rank);
    format_alpha(*alpha, alpha_s, sizeof alpha_s);
    snprintf(steps, sizeof steps, "libldm ldm train, %lld steps", (long long)step);
    const char *keys[] = {"ss_network_module",     "ss_network_dim",     "ss_network_alpha",    "ss_v2",
                          "ss_base_model_version", "ss_network_dropout", "ss_training_comment", "ss_steps"};
    char steps_n[32];
    snprintf(steps_n, sizeof steps_n, "%lld", (long long)step);
    const char *vals[] = {"networks.lora", dim, alpha_s, v2 ? "True" : "False", version, "None", steps, steps_n};
    if (st == LDM_OK) st = lw_write_safetensors(path, ts, n, keys, vals, sizeof keys / sizeof *keys);
    ldm_free(ts), ldm_free(names), ldm_free(alpha);
    return st;
}

ldm_status ltr_lora_merge(const ltp_params *ps, const char *unet_prefix, const ltr_lora *l, ltp_params *base)
{
    float scale = ltr_lora_scale(l);
    char module[LTP_NAME_MAX], wname[LTP_NAME_MAX + 16];
    for (size_t i = 0; i < ltp_params_count(ps); i++) {
        const ltp_param *down = ltp_params_at(ps, i);
        if (!adapter_module(down->name, unet_prefix, module, sizeof module)) continue;
        const ltp_param *up = adapter_up(ps, down->name);
        snprintf(wname, sizeof wname, "%s%s.weight", unet_prefix, module);
        ltp_param *w = ltp_params_find(base, wname);
        if (!up || !w)
            return ldm_fail(LDM_ERR_NOT_FOUND, "lora merge: %s lacks %s", down->name, up ? wname : "lora_up");
        int64_t r = down->shape[0], in = down->shape[1], out = up->shape[0];
        if (w->shape[0] != out || (int64_t)w->n != out * in)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lora merge: %s is not [%lld, %lld]", wname, (long long)out,
                            (long long)in);
        for (int64_t o = 0; o < out; o++)
            for (int64_t c = 0; c < in; c++) {
                double s = 0.0;
                for (int64_t k = 0; k < r; k++) s += (double)up->data[o * r + k] * down->data[k * in + c];
                w->data[o * in + c] += (float)(scale * s);
            }
    }
    return LDM_OK;
}
