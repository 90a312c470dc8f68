/* diffusers.c - a diffusers folder as one CompVis-named weight store plus its description
 * (diffusers.h). The components' weight files are opened by the ordinary loaders and adopted by
 * the folder's store, whose tensors point into them under their translated names. */
#include "diffusers.h"

#include "diffusers_internal.h"
#include "diffusers_names.h"
#include "config.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define JSON_MAX_BYTES ((size_t)4 << 20)
#define NAME_CAP       512
/* in_proj weights and biases of at most 256 text encoder layers (ViT-bigG has 32) */
#define QKV_MAX_SLOTS 512

typedef struct folder {
    char dir[PATH_MAX];
    size_t max_alloc;
    lw_store *out;
    size_t copied; /* bytes of private copies (stacked q/k/v) */
} folder;

static int ends_with_index(const char *path)
{
    const char *slash = strrchr(path, '/');
    return !strcmp(slash ? slash + 1 : path, "model_index.json");
}

int ld_diffusers_is_folder(const char *path)
{
    char p[PATH_MAX];
    if (!path) return 0;
    if (ends_with_index(path)) return lw_is_file(path);
    int n = snprintf(p, sizeof p, "%s/model_index.json", path);
    return n > 0 && (size_t)n < sizeof p && lw_is_dir(path) && lw_is_file(p);
}

/* The folder of `path` (a folder, or its model_index.json). */
static ldm_status set_dir(folder *f, const char *path)
{
    size_t n = strlen(path);
    if (ends_with_index(path)) {
        const char *slash = strrchr(path, '/');
        n = slash ? (size_t)(slash - path) : 0;
    }
    while (n > 1 && path[n - 1] == '/') n--;
    if (n >= sizeof f->dir) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: path too long", path);
    if (n == 0)
        snprintf(f->dir, sizeof f->dir, ".");
    else
        memcpy(f->dir, path, n), f->dir[n] = '\0';
    return LDM_OK;
}

static ldm_status join(const folder *f, const char *rel, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s/%s", f->dir, rel);
    if (n < 0 || (size_t)n >= cap) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s/%s: path too long", f->dir, rel);
    return LDM_OK;
}

/* Parses the JSON file dir/rel (at most JSON_MAX_BYTES). */
static ldm_status read_json(const folder *f, const char *rel, const char *what, lj_value **out)
{
    char path[PATH_MAX];
    FILE *fp;
    *out = NULL;
    LDM_TRY(join(f, rel, path, sizeof path));
    LDM_TRY(lw_fopen_regular(path, what, LDM_ERR_NOT_FOUND, &fp));
    struct stat st_file;
    size_t want =
        fstat(fileno(fp), &st_file) == 0 && st_file.st_size >= 0 && (uint64_t)st_file.st_size < (uint64_t)JSON_MAX_BYTES
            ? (size_t)st_file.st_size
            : JSON_MAX_BYTES;
    char *buf = ldm_malloc(want + 1); /* one byte more: a file that grew shows as too long or is parsed whole */
    if (!buf) {
        fclose(fp);
        return ldm_fail_context(ldm_alloc_failure_status(), "%s: ", path);
    }
    size_t len = fread(buf, 1, want + 1, fp);
    int err = ferror(fp);
    fclose(fp);
    ldm_status st = LDM_OK;
    if (err)
        st = ldm_fail(LDM_ERR_IO, "%s: read error", path);
    else if (len > want || len > JSON_MAX_BYTES)
        st = ldm_fail(LDM_ERR_LIMIT, "%s: more than %zu bytes (or it grew while being read)", path, want);
    else if (!(*out = lj_parse(buf, len))) /* a syntax error reads "JSON: ...", else allocation failed */
        st = ldm_fail_context(strncmp(ldm_last_error(), "JSON:", 5) ? ldm_alloc_failure_status() : LDM_ERR_FORMAT,
                              "%s: ", path);
    else if ((*out)->type != LJ_OBJECT) {
        st = ldm_fail(LDM_ERR_FORMAT, "%s: not a JSON object", path);
        lj_free(*out);
        *out = NULL;
    }
    ldm_free(buf);
    return st;
}

/* ---------------------------------------------------------------- model_index.json */

/* The [library, class] of component `name`; NULL class when absent or [null, null]. */
static ldm_status component_class(const char *file, const lj_value *index, const char *name, const char **cls)
{
    const lj_value *v = lj_get(index, name);
    *cls = NULL;
    if (!v || v->type == LJ_NULL) return LDM_OK;
    if (v->type != LJ_ARRAY || v->count != 2)
        return ldm_fail(LDM_ERR_FORMAT, "%s: \"%s\" must be a [library, class] pair", file, name);
    if (v->items[1]->type == LJ_NULL) return LDM_OK;
    if (v->items[1]->type != LJ_STRING)
        return ldm_fail(LDM_ERR_FORMAT, "%s: \"%s\": class is not a string", file, name);
    *cls = v->items[1]->string;
    return LDM_OK;
}

/* The three components libldm needs, of the classes it reads; the rest (tokenizer, scheduler,
 * safety checker, feature extractor) are not weights it uses. */
static ldm_status check_index(const folder *f, const lj_value *index, ld_model *m)
{
    static const char *const need[][2] = {
        {"unet", "UNet2DConditionModel"}, {"vae", "AutoencoderKL"}, {"text_encoder", "CLIPTextModel"}};
    char file[PATH_MAX];
    const char *cls, *pipeline = lj_string(lj_get(index, "_class_name"), "?");
    LDM_TRY(join(f, "model_index.json", file, sizeof file));
    LDM_TRY(component_class(file, index, "text_encoder_2", &cls));
    if (cls)
        return ldm_fail(LDM_ERR_UNSUPPORTED,
                        "%s: a second text encoder (%s, text_encoder_2: an SDXL pipeline) is not "
                        "supported in diffusers folders",
                        file, pipeline);
    for (size_t i = 0; i < LDM_ARRAY_LEN(need); i++) {
        LDM_TRY(component_class(file, index, need[i][0], &cls));
        if (!cls)
            return ldm_fail(LDM_ERR_UNSUPPORTED,
                            "%s: the pipeline %s has no %s component: libldm needs unet, vae and "
                            "text_encoder",
                            file, pipeline, need[i][0]);
        if (strcmp(cls, need[i][1]))
            return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: \"%s\" is a %s: only %s is supported", file, need[i][0], cls,
                            need[i][1]);
    }
    ld_model_note(m, "diffusers folder (%.60s)", pipeline);
    return LDM_OK;
}

/* ---------------------------------------------------------------- weights */

/* The component's weight file: full precision first (what diffusers loads without a variant),
 * then the fp16 variant; safetensors before PyTorch pickles. */
static ldm_status weights_file(const folder *f, const char *comp, const char *stem, char *out, size_t cap)
{
    static const char *const forms[] = {"%s/%s.safetensors", "%s/%s.fp16.safetensors", "%s/%s.bin", "%s/%s.fp16.bin"};
    char rel[256];
    for (size_t i = 0; i < LDM_ARRAY_LEN(forms); i++) {
        snprintf(rel, sizeof rel, forms[i], comp, stem);
        LDM_TRY(join(f, rel, out, cap));
        if (lw_is_file(out)) return LDM_OK;
    }
    snprintf(rel, sizeof rel, "%s/%s.safetensors.index.json", comp, stem);
    LDM_TRY(join(f, rel, out, cap));
    if (lw_is_file(out))
        return ldm_fail(LDM_ERR_UNSUPPORTED,
                        "%s: sharded weights are not supported: merge the shards into %s/%s"
                        ".safetensors",
                        out, comp, stem);
    return ldm_fail(LDM_ERR_NOT_FOUND, "%s/%s: no weights (%s.safetensors, %s.fp16.safetensors or %s.bin)", f->dir,
                    comp, stem, stem, stem);
}

/* A q, k or v slice waiting for its two siblings. */
typedef struct qkv_slot {
    char name[NAME_CAP];
    const lw_tensor *part[3];
} qkv_slot;

typedef struct qkv_table {
    qkv_slot *slots;
    size_t n, cap;
} qkv_table;

static ldm_status qkv_put(qkv_table *q, const char *file, const char *name, int part, const lw_tensor *t)
{
    qkv_slot *s = NULL;
    for (size_t i = 0; i < q->n && !s; i++)
        if (!strcmp(q->slots[i].name, name)) s = &q->slots[i];
    if (!s) {
        if (q->n == QKV_MAX_SLOTS)
            return ldm_fail(LDM_ERR_LIMIT, "%s: more than %d attention projections to stack (at %s)", file,
                            QKV_MAX_SLOTS, t->name);
        if (q->n == q->cap) {
            size_t cap = q->cap ? 2 * q->cap : 64;
            qkv_slot *grown = ldm_realloc(q->slots, cap * sizeof *grown);
            if (!grown) return ldm_fail_context(ldm_alloc_failure_status(), "%s: ", file);
            q->slots = grown;
            q->cap = cap;
        }
        s = &q->slots[q->n++];
        memset(s, 0, sizeof *s);
        snprintf(s->name, sizeof s->name, "%s", name);
    }
    if (s->part[part]) return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s appears twice", file, t->name);
    s->part[part] = t;
    return LDM_OK;
}

static int same_shape(const lw_tensor *a, const lw_tensor *b)
{
    if (a->ndim != b->ndim || a->dtype != b->dtype) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

/* [q;k;v] stacked along the first dimension: a private copy in the stored dtype. */
static ldm_status qkv_stack(folder *f, const char *file, const qkv_slot *s)
{
    static const char *const which[3] = {"q_proj", "k_proj", "v_proj"};
    for (int i = 0; i < 3; i++)
        if (!s->part[i])
            return ldm_fail(LDM_ERR_FORMAT, "%s: the %s of %s is missing (q, k and v go together)", file, which[i],
                            s->name);
    const lw_tensor *q = s->part[0];
    for (int i = 1; i < 3; i++)
        if (!same_shape(q, s->part[i]) || q->ndim < 1 || q->ndim > 2)
            return ldm_fail(LDM_ERR_FORMAT, "%s: %s and %s differ in shape or dtype (or are not 1- or 2-D)", file,
                            q->name, s->part[i]->name);
    size_t bytes;
    if (ldm_mul_size(q->nbytes, 3, &bytes)) return ldm_fail(LDM_ERR_LIMIT, "%s: %s is too large", file, q->name);
    unsigned char *buf = ldm_malloc(bytes ? bytes : 1);
    if (!buf) return ldm_fail_context(ldm_alloc_failure_status(), "%s: stacking %s: ", file, s->name);
    for (int i = 0; i < 3; i++) memcpy(buf + i * q->nbytes, s->part[i]->data, q->nbytes);
    LDM_TRY(lw_store_keep(f->out, buf));
    int64_t shape[2] = {3 * q->shape[0], q->ndim > 1 ? q->shape[1] : 0};
    f->copied += bytes;
    return lw_store_add(f->out, s->name, q->dtype, q->ndim, shape, buf, bytes);
}

typedef enum { COMP_UNET, COMP_VAE, COMP_TEXT } comp_kind;

typedef struct translator {
    comp_kind kind;
    const ld_unet_layout *unet;
    int vae_levels, vae_blocks;
    int openclip;
} translator;

/* The CompVis name of one stored tensor: 1 translated (kind/part set), 0 no counterpart, -1
 * known but dropped. */
static int translate(const translator *tr, const char *name, char *out, size_t cap, ld_dn_kind *kind, int *part)
{
    static const char unet_prefix[] = "model.diffusion_model.", vae_prefix[] = "first_stage_model.",
                      clip_prefix[] = "cond_stage_model.transformer.", openclip_prefix[] = "cond_stage_model.";
    char tail[NAME_CAP];
    int r = 0;
    const char *prefix = "";
    *kind = LD_DN_SAME;
    *part = 0;
    switch (tr->kind) {
    case COMP_UNET:
        prefix = unet_prefix;
        r = ld_unet_name_from_diffusers(tr->unet, name, tail, sizeof tail);
        break;
    case COMP_VAE:
        prefix = vae_prefix;
        r = ld_vae_name_from_diffusers(tr->vae_levels, tr->vae_blocks, name, tail, sizeof tail, kind);
        break;
    case COMP_TEXT:
        if (tr->openclip) {
            prefix = openclip_prefix;
            r = ld_openclip_name_from_hf(name, tail, sizeof tail, kind, part);
        } else {
            /* SD 1.x checkpoints hold CLIPTextModel under its own names: kept as they are, but only
             * names of that model (the open_clip table knows them all) */
            ld_dn_kind unused_kind;
            int unused_part;
            prefix = clip_prefix;
            r = ld_openclip_name_from_hf(name, tail, sizeof tail, &unused_kind, &unused_part) != 0 &&
                snprintf(tail, sizeof tail, "%s", name) < (int)sizeof tail;
        }
        break;
    }
    if (r <= 0) return r;
    int n = snprintf(out, cap, "%s%s", prefix, tail);
    return n > 0 && (size_t)n < cap;
}

static ldm_status add_tensor(folder *f, const char *file, const lw_tensor *t, const char *name, ld_dn_kind kind)
{
    int64_t shape[LDM_MAX_DIMS];
    int ndim = t->ndim;
    for (int i = 0; i < ndim; i++) shape[i] = t->shape[i];
    if (kind == LD_DN_CONV1X1 && ndim == 2) { /* a reshape: the same bytes */
        shape[2] = shape[3] = 1;
        ndim = 4;
    } else if (kind == LD_DN_CONV1X1 && !(ndim == 4 && shape[2] == 1 && shape[3] == 1)) {
        return ldm_fail(LDM_ERR_FORMAT,
                        "%s: tensor %s: expected a Linear [out,in] or 1x1 convolution weight, found "
                        "%d dimensions",
                        file, t->name, ndim);
    }
    ldm_status st = lw_store_add(f->out, name, t->dtype, ndim, shape, t->data, t->nbytes);
    return st == LDM_OK ? LDM_OK : ldm_fail_context(st, "%s: ", file);
}

/* Opens one component's weights and adds each tensor under its CompVis name. */
static ldm_status add_component(folder *f, const char *comp, const char *stem, const translator *tr)
{
    char file[PATH_MAX], name[NAME_CAP];
    lw_store *child = NULL;
    LDM_TRY(weights_file(f, comp, stem, file, sizeof file));
    LDM_TRY(lw_open(file, f->max_alloc, &child));
    LDM_TRY(lw_store_adopt(f->out, child)); /* closed with the folder's store from here on */
    qkv_table q = {0};
    ldm_status st = LDM_OK;
    for (size_t i = 0; i < lw_count(child) && st == LDM_OK; i++) {
        const lw_tensor *t = lw_at(child, i);
        ld_dn_kind kind;
        int part, r = translate(tr, t->name, name, sizeof name, &kind, &part);
        if (r < 0) continue;
        if (r == 0)
            st = ldm_fail(LDM_ERR_FORMAT,
                          "%s: tensor %s has no CompVis counterpart (not a parameter of the %s this "
                          "folder's config.json describes)",
                          file, t->name, comp);
        else if (kind == LD_DN_QKV_PART)
            st = qkv_put(&q, file, name, part, t);
        else
            st = add_tensor(f, file, t, name, kind);
    }
    for (size_t i = 0; i < q.n && st == LDM_OK; i++) st = qkv_stack(f, file, &q.slots[i]);
    ldm_free(q.slots);
    return st;
}

/* ---------------------------------------------------------------- description */

static ldm_status read_component(const folder *f, const char *rel, const char *what, char *file, size_t cap,
                                 lj_value **json)
{
    LDM_TRY(join(f, rel, file, cap));
    return read_json(f, rel, what, json);
}

/* unet, vae, text_encoder and scheduler configs into m; the UNet layout for names. */
static ldm_status describe(const folder *f, ld_model *m, ld_unet_layout *layout)
{
    char file[PATH_MAX];
    lj_value *j = NULL;
    int sample_size = 64;
    ldm_status st = read_component(f, "unet/config.json", "UNet config", file, sizeof file, &j);
    if (st == LDM_OK) st = ldd_unet_config(file, j, &m->unet, layout, &sample_size);
    lj_free(j), j = NULL;
    if (st == LDM_OK) st = read_component(f, "vae/config.json", "VAE config", file, sizeof file, &j);
    if (st == LDM_OK) st = ldd_vae_config(file, j, &m->first_stage, &m->scale_factor);
    lj_free(j), j = NULL;
    if (st == LDM_OK) st = read_component(f, "text_encoder/config.json", "text encoder config", file, sizeof file, &j);
    if (st == LDM_OK) st = ldd_text_config(file, j, &m->cond);
    lj_free(j), j = NULL;
    LDM_TRY(st);
    LDM_TRY(join(f, "scheduler/scheduler_config.json", file, sizeof file));
    if (lw_is_file(file)) {
        st = read_json(f, "scheduler/scheduler_config.json", "scheduler config", &j);
        if (st == LDM_OK) st = ldd_scheduler_config(file, j, m);
        lj_free(j);
        LDM_TRY(st);
    } else {
        m->beta_schedule = LD_SCHED_LINEAR, m->linear_start = 0.00085, m->linear_end = 0.012;
        ld_model_note(m, "no scheduler/scheduler_config.json: Stable Diffusion's scaled_linear 0.00085..0.012 and "
                         "epsilon prediction assumed");
    }
    m->is_diffusion = 1;
    m->use_ema = 0;
    m->channels = m->first_stage.embed_dim;
    m->image_size = sample_size;
    snprintf(m->cond_stage_key, sizeof m->cond_stage_key, "txt");
    const int extra = m->unet.in_channels - m->channels;
    if (extra == 0) {
        m->conditioning_key = LD_CONDKEY_CROSSATTN;
    } else if (extra == m->channels + 1) { /* StableDiffusionInpaintPipeline: mask + masked-image latent */
        m->conditioning_key = LD_CONDKEY_HYBRID;
        m->variant = LD_VARIANT_INPAINT_HYBRID;
    } else {
        return ldm_fail(LDM_ERR_UNSUPPORTED,
                        "%s/unet/config.json: in_channels %d for %d latent channels (only "
                        "text-to-image and inpainting UNets are supported)",
                        f->dir, m->unet.in_channels, m->channels);
    }
    if (m->unet.context_dim != m->cond.width)
        return ldm_fail(LDM_ERR_FORMAT,
                        "%s: unet cross_attention_dim %d differs from the text encoder's hidden_size %d", f->dir,
                        m->unet.context_dim, m->cond.width);
    return LDM_OK;
}

/* The guidance embedding the UNet's config announces must be the one its weights hold. */
static ldm_status check_guidance_embedding(const folder *f, const ld_model *m)
{
    const lw_tensor *t = lw_find(f->out, "model.diffusion_model.time_embed.cond_proj.weight");
    int dim = m->unet.time_cond_proj_dim;
    if (!dim && !t) return LDM_OK;
    if (dim && t && t->ndim == 2 && t->shape[1] == dim) return LDM_OK;
    return ldm_fail(LDM_ERR_FORMAT, "%s/unet: config.json says time_cond_proj_dim %d but the weights %s", f->dir, dim,
                    t ? "have a time_embedding.cond_proj.weight of another width" : "have no time_embedding.cond_proj");
}

static ldm_status open_folder(folder *f, ld_model *desc)
{
    ld_unet_layout layout;
    lj_value *index = NULL;
    LDM_TRY(read_json(f, "model_index.json", "diffusers model index", &index));
    ldm_status st = check_index(f, index, desc);
    lj_free(index);
    LDM_TRY(st);
    LDM_TRY(describe(f, desc, &layout));
    LDM_TRY(lw_store_create(f->dir, &f->out));
    translator unet = {COMP_UNET, &layout, 0, 0, 0};
    translator vae = {COMP_VAE, NULL, desc->first_stage.n_levels, desc->first_stage.num_res_blocks, 0};
    translator text = {COMP_TEXT, NULL, 0, 0, desc->cond.kind == LD_COND_OPENCLIP};
    LDM_TRY(add_component(f, "unet", "diffusion_pytorch_model", &unet));
    LDM_TRY(add_component(f, "vae", "diffusion_pytorch_model", &vae));
    LDM_TRY(add_component(f, "text_encoder", "model", &text));
    if (!lw_find(f->out, "cond_stage_model.model.token_embedding.weight") &&
        !lw_find(f->out, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"))
        return ldm_fail(LDM_ERR_FORMAT, "%s/text_encoder: no text_model.embeddings.token_embedding.weight", f->dir);
    LDM_TRY(lw_store_seal(f->out));
    LDM_TRY(check_guidance_embedding(f, desc));
    if (f->copied)
        ld_model_note(desc, "q/k/v of the text encoder stacked into %.1f KiB of copies", (double)f->copied / 1024);
    return LDM_OK;
}

ldm_status ld_diffusers_open(const char *path, size_t max_alloc, lw_store **store, ld_model *desc)
{
    *store = NULL;
    if (!path || !desc) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ld_diffusers_open: NULL argument");
    folder *f = ldm_calloc(1, sizeof *f);
    if (!f) return ldm_alloc_failure_status();
    f->max_alloc = max_alloc;
    ld_model_defaults(desc);
    ldm_status st = set_dir(f, path);
    if (st == LDM_OK) st = open_folder(f, desc);
    if (st == LDM_OK)
        *store = f->out;
    else
        lw_close(f->out);
    ldm_free(f);
    return st;
}
