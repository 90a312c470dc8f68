/* conformance.c - runs fixture directories in the shared format through libldm's public API and
 * compares every output with the reference at the fixture's tolerance.
 *
 *   conformance DIR...     (each DIR holds case.json, io.safetensors, [config.yaml], [model.*])
 *
 * For each call of case.json, inputs are taken from the outputs of earlier calls (by tensor name)
 * or from io.safetensors; the op runs through the public API; each output is compared with the
 * tensor of the same name in io.safetensors: pass if |got-ref| <= atol + rtol*|ref| everywhere
 * (integers: exact). Only names declared in case.json `outputs` have a reference: a call result
 * named like a fixture INPUT but not declared an output (e.g. a sampler `image` in a case whose
 * original input image is also called `image`) is reported as unchecked, not compared with the input.
 * Prints max abs/rel error per output and a closing "N passed, N failed" line;
 * exits non-zero when anything fails. Works on fixture directories it has never seen: nothing here
 * knows a fixture by name. Reading case.json and io.safetensors uses the library's internal JSON
 * and safetensors readers (test data, not model data). */
#include "ldm.h"

#include "core/json.h"
#include "core/tensor.h"
#include "io/weights.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support/fixture.h"

typedef struct runner {
    const char *dir;
    lj_value *cas;
    lw_store *io;
    ldm_model *model;
    fx_env env; /* tensors produced by earlier calls */
    int passed, failed;
} runner;

/* ---------------------------------------------------------------- comparison */

static void compare(runner *r, const char *result, const char *ref_name, const ldm_tensor *got)
{
    ldm_tensor *ref = fx_io_tensor(r->io, ref_name);
    fx_tolerance tol = fx_tolerance_for(r->cas, ref_name);
    fx_compare_result cr;
    if (!ref) {
        printf("  %-22s FAIL  reference tensor '%s' missing from io.safetensors\n", result, ref_name);
        r->failed++;
        return;
    }
    int ok = fx_compare(got, ref, tol, &cr);
    printf("  %-22s %s  max_abs=%.3g max_rel=%.3g atol=%.3g rtol=%.3g%s%s\n", ref_name, ok ? "ok  " : "FAIL", cr.max_abs,
           cr.max_rel, tol.atol, tol.rtol, cr.note[0] ? "  " : "", cr.note);
    if (ok) r->passed++;
    else r->failed++;
    ldm_tensor_free(ref);
}

/* Whether io.safetensors holds a REFERENCE for `name`. case.json lists every expected result under
 * `outputs`; a name found only under `inputs` is stored, but as the input: comparing a result with
 * it would test the wrong thing. (Older cases without `outputs` are trusted as before.) */
static int has_reference(const runner *r, const char *name)
{
    const lj_value *outputs = lj_get(r->cas, "outputs");
    return !outputs || lj_get(outputs, name) != NULL;
}

/* Records `t` as the output `result` of the current call: compared, then kept for later calls. */
static void emit(runner *r, const lj_value *outputs, const char *result, ldm_tensor *t)
{
    const char *name = lj_string(lj_get(outputs, result), NULL);
    if (!name) {
        ldm_tensor_free(t);
        return; /* the fixture does not check this result */
    }
    if (has_reference(r, name))
        compare(r, result, name, t);
    else
        printf("  %-22s unchecked  no reference: case.json does not declare '%s' an output%s\n", name, name,
               lj_get(lj_get(r->cas, "inputs"), name) ? " (the stored tensor of that name is an input)" : "");
    fx_env_put(&r->env, name, t);
}

/* An input tensor: an earlier output, else io.safetensors. Borrowed from the env. */
static const ldm_tensor *input(runner *r, const lj_value *inputs, const char *arg)
{
    const char *name = lj_string(lj_get(inputs, arg), NULL);
    if (!name) return NULL;
    const ldm_tensor *t = fx_env_get(&r->env, name);
    if (t) return t;
    ldm_tensor *loaded = fx_io_tensor(r->io, name);
    if (!loaded) return NULL;
    fx_env_put(&r->env, name, loaded);
    return loaded;
}

/* ---------------------------------------------------------------- ops */

typedef ldm_status (*op_fn)(runner *r, const lj_value *call);

static ldm_status need_model(runner *r)
{
    if (!r->model) return ldm_fail(LDM_ERR_NOT_FOUND, "this op needs model weights and the fixture has none");
    return LDM_OK;
}

static ldm_status get_ae(runner *r, ldm_autoencoder **ae)
{
    LDM_TRY(need_model(r));
    return ldm_model_autoencoder(r->model, ae);
}

static ldm_status op_kl_encode(runner *r, const lj_value *call)
{
    ldm_autoencoder *ae;
    ldm_tensor *moments = NULL, *mean = NULL, *logvar = NULL, *std = NULL;
    const lj_value *in = lj_get(call, "inputs"), *out = lj_get(call, "outputs");
    LDM_TRY(get_ae(r, &ae));
    LDM_TRY(ldm_autoencoder_encode(ae, input(r, in, "x"), &moments));
    ldm_status st = ldm_posterior_split(moments, &mean, &logvar, &std);
    if (st != LDM_OK) {
        ldm_tensor_free(moments);
        return st;
    }
    emit(r, out, "moments", moments);
    emit(r, out, "mean", mean);
    emit(r, out, "logvar", logvar);
    emit(r, out, "std", std);
    return LDM_OK;
}

static ldm_status op_ae_decode(runner *r, const lj_value *call)
{
    ldm_autoencoder *ae;
    ldm_tensor *image = NULL;
    const lj_value *in = lj_get(call, "inputs");
    const ldm_tensor *z = input(r, in, "z");
    if (!z) z = input(r, in, "h");
    LDM_TRY(get_ae(r, &ae));
    LDM_TRY(ldm_autoencoder_decode(ae, z, &image));
    emit(r, lj_get(call, "outputs"), "image", image);
    return LDM_OK;
}

static ldm_status op_vq_encode(runner *r, const lj_value *call)
{
    ldm_autoencoder *ae;
    ldm_tensor *h = NULL;
    LDM_TRY(get_ae(r, &ae));
    LDM_TRY(ldm_autoencoder_encode(ae, input(r, lj_get(call, "inputs"), "x"), &h));
    emit(r, lj_get(call, "outputs"), "h", h);
    return LDM_OK;
}

static ldm_status op_vq_quantize(runner *r, const lj_value *call)
{
    ldm_autoencoder *ae;
    ldm_tensor *quant = NULL, *indices = NULL;
    LDM_TRY(get_ae(r, &ae));
    LDM_TRY(ldm_autoencoder_quantize(ae, input(r, lj_get(call, "inputs"), "h"), &quant, &indices));
    emit(r, lj_get(call, "outputs"), "quant", quant);
    emit(r, lj_get(call, "outputs"), "indices", indices);
    return LDM_OK;
}

static ldm_status op_vq_decode_noquant(runner *r, const lj_value *call)
{
    ldm_autoencoder *ae;
    ldm_tensor *image = NULL;
    LDM_TRY(get_ae(r, &ae));
    LDM_TRY(ldm_autoencoder_decode_unquantized(ae, input(r, lj_get(call, "inputs"), "h"), &image));
    emit(r, lj_get(call, "outputs"), "image", image);
    return LDM_OK;
}

static ldm_status op_unet_forward(runner *r, const lj_value *call)
{
    ldm_unet *unet;
    ldm_tensor *out = NULL;
    const lj_value *in = lj_get(call, "inputs");
    LDM_TRY(need_model(r));
    LDM_TRY(ldm_model_unet(r->model, &unet));
    LDM_TRY(ldm_unet_forward(unet, input(r, in, "x"), input(r, in, "timesteps"), input(r, in, "context"),
                             input(r, in, "y"), &out));
    emit(r, lj_get(call, "outputs"), "out", out);
    return LDM_OK;
}

/* The conditioning tensor named by a params cond/uncond spec: class labels go through the class
 * embedder, prompts through the text conditioner, tensors are used as they are. *owned says
 * whether the caller must free the result. NULL spec -> NULL. */
static ldm_status cond_from_spec(runner *r, const lj_value *spec, const lj_value *inputs, ldm_tensor **out)
{
    *out = NULL;
    if (!spec || spec->type != LJ_OBJECT) return LDM_OK;
    const char *type = lj_string(lj_get(spec, "type"), "");
    const char *name = lj_string(lj_get(spec, "name"), NULL);
    ldm_conditioner *cond;
    if (strcmp(type, "tensor") == 0) {
        const ldm_tensor *t = name ? fx_env_get(&r->env, name) : NULL;
        if (!t && name) t = input(r, inputs, name);
        if (!t && name) {
            ldm_tensor *loaded = fx_io_tensor(r->io, name);
            if (loaded) fx_env_put(&r->env, name, loaded);
            t = loaded;
        }
        if (!t) return ldm_fail(LDM_ERR_NOT_FOUND, "cond tensor '%s' not found", name ? name : "?");
        *out = lt_clone(t);
        return *out ? LDM_OK : LDM_ERR_OUT_OF_MEMORY;
    }
    LDM_TRY(ldm_model_conditioner(r->model, &cond));
    if (strcmp(type, "class_label") == 0) {
        const ldm_tensor *labels = input(r, inputs, name ? name : "");
        if (!labels) return ldm_fail(LDM_ERR_NOT_FOUND, "class labels '%s' not found", name ? name : "?");
        return ldm_conditioner_encode_labels(cond, labels, out);
    }
    if (strcmp(type, "text") == 0) {
        const lj_value *prompts = lj_get(spec, "prompts");
        if (!prompts || prompts->type != LJ_ARRAY) return ldm_fail(LDM_ERR_FORMAT, "text cond without prompts");
        const char **p = calloc(prompts->count ? prompts->count : 1, sizeof *p);
        if (!p) return LDM_ERR_OUT_OF_MEMORY;
        for (size_t i = 0; i < prompts->count; i++) p[i] = fx_prompt(prompts->items[i]);
        ldm_status st = ldm_conditioner_encode_text(cond, p, (int)prompts->count, out);
        free(p);
        return st;
    }
    return ldm_fail(LDM_ERR_UNSUPPORTED, "cond spec type '%s'", type);
}

static ldm_status op_apply_model(runner *r, const lj_value *call)
{
    const lj_value *in = lj_get(call, "inputs"), *params = lj_get(call, "params");
    ldm_tensor *c = NULL, *out = NULL;
    LDM_TRY(need_model(r));
    if (lj_get(params, "cond")) LDM_TRY(cond_from_spec(r, lj_get(params, "cond"), in, &c));
    else {
        const ldm_tensor *t = input(r, in, "c_concat");
        if (!t) t = input(r, in, "c");
        if (!t) t = input(r, in, "context");
        if (t && !(c = lt_clone(t))) return LDM_ERR_OUT_OF_MEMORY;
    }
    ldm_status st = ldm_model_apply(r->model, input(r, in, "x"), input(r, in, "timesteps"), c, &out);
    ldm_tensor_free(c);
    LDM_TRY(st);
    emit(r, lj_get(call, "outputs"), "out", out);
    return LDM_OK;
}

/* ldm.apply_model with an LCM guidance embedding: params.guidance_scale goes into the UNet. */
static ldm_status op_apply_embedded_guidance(runner *r, const lj_value *call)
{
    const lj_value *in = lj_get(call, "inputs");
    ldm_tensor *out = NULL;
    LDM_TRY(need_model(r));
    float scale = (float)lj_number(lj_get(lj_get(call, "params"), "guidance_scale"), 1.0);
    LDM_TRY(ldm_model_apply_embedded_guidance(r->model, input(r, in, "x"), input(r, in, "timesteps"),
                                              input(r, in, "context"), scale, &out));
    emit(r, lj_get(call, "outputs"), "out", out);
    return LDM_OK;
}

static ldm_status op_cond_tokens(runner *r, const lj_value *call)
{
    ldm_conditioner *cond;
    ldm_tensor *c = NULL;
    LDM_TRY(need_model(r));
    LDM_TRY(ldm_model_conditioner(r->model, &cond));
    LDM_TRY(ldm_conditioner_encode_tokens(cond, input(r, lj_get(call, "inputs"), "tokens"), &c));
    emit(r, lj_get(call, "outputs"), "c", c);
    return LDM_OK;
}

static ldm_status op_class_embed(runner *r, const lj_value *call)
{
    ldm_conditioner *cond;
    ldm_tensor *c = NULL;
    const lj_value *in = lj_get(call, "inputs");
    const ldm_tensor *labels = input(r, in, "class_label");
    if (!labels) labels = input(r, in, "labels");
    LDM_TRY(need_model(r));
    LDM_TRY(ldm_model_conditioner(r->model, &cond));
    LDM_TRY(ldm_conditioner_encode_labels(cond, labels, &c));
    emit(r, lj_get(call, "outputs"), "c", c);
    return LDM_OK;
}

static ldm_status op_spatial_rescaler(runner *r, const lj_value *call)
{
    ldm_conditioner *cond;
    ldm_tensor *c = NULL;
    LDM_TRY(need_model(r));
    LDM_TRY(ldm_model_conditioner(r->model, &cond));
    LDM_TRY(ldm_conditioner_encode_image(cond, input(r, lj_get(call, "inputs"), "seg"), &c));
    emit(r, lj_get(call, "outputs"), "c", c);
    return LDM_OK;
}

static ldm_status op_inpaint_cond(runner *r, const lj_value *call)
{
    const lj_value *in = lj_get(call, "inputs");
    ldm_tensor *c = NULL;
    LDM_TRY(need_model(r));
    LDM_TRY(ldm_model_inpaint_cond(r->model, input(r, in, "masked_image"), input(r, in, "mask"), &c));
    emit(r, lj_get(call, "outputs"), "c", c);
    return LDM_OK;
}

static ldm_status op_p_sample(runner *r, const lj_value *call)
{
    const lj_value *in = lj_get(call, "inputs");
    ldm_tensor *x_prev = NULL;
    LDM_TRY(need_model(r));
    LDM_TRY(ldm_model_p_sample(r->model, input(r, in, "x"), input(r, in, "timesteps"), NULL, input(r, in, "noise"),
                               &x_prev));
    emit(r, lj_get(call, "outputs"), "x_prev", x_prev);
    return LDM_OK;
}

/* Where the vocabularies are: <fixtures>/../vocab in the shared layout; the project's own fixtures
 * (tests/fixtures) use the shared ones, $LDM_SHARED/vocab (default ../shared/vocab). */
static void vocab_dir(const runner *r, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/../../vocab", r->dir);
    if (fx_file_exists(buf)) return;
    const char *shared = getenv("LDM_SHARED");
    snprintf(buf, cap, "%s/vocab", shared && *shared ? shared : "../shared");
}

static char *vocab_for(runner *r, const lj_value *params, const char *default_file)
{
    const char *rel = lj_string(lj_get(params, "vocab"), NULL);
    char buf[4096], dir[3072];
    vocab_dir(r, dir, sizeof dir);
    if (rel) snprintf(buf, sizeof buf, "%s/%s", r->dir, rel);
    else snprintf(buf, sizeof buf, "%s/%s", dir, default_file);
    return strdup(buf);
}

static ldm_status run_tokenizer(runner *r, const lj_value *call, ldm_tokenizer_kind kind, const char *vocab_file)
{
    const lj_value *params = lj_get(call, "params");
    const lj_value *prompts = lj_get(params, "prompts");
    int ctx = (int)lj_number(lj_get(params, "max_length"), 77);
    ldm_tokenizer *tok = NULL;
    ldm_tensor *ids = NULL;
    if (!prompts || prompts->type != LJ_ARRAY) return ldm_fail(LDM_ERR_FORMAT, "tokenizer call without prompts");
    char *vocab = vocab_for(r, params, vocab_file);
    ldm_status st = ldm_tokenizer_load(kind, vocab, &tok);
    free(vocab);
    LDM_TRY(st);
    const char **p = calloc(prompts->count ? prompts->count : 1, sizeof *p);
    for (size_t i = 0; p && i < prompts->count; i++) p[i] = fx_prompt(prompts->items[i]);
    st = p ? ldm_tokenizer_encode(tok, p, (int)prompts->count, ctx, &ids) : LDM_ERR_OUT_OF_MEMORY;
    free(p);
    ldm_tokenizer_free(tok);
    LDM_TRY(st);
    emit(r, lj_get(call, "outputs"), "tokens", ids);
    return LDM_OK;
}

static ldm_status op_tok_clip(runner *r, const lj_value *call)
{
    return run_tokenizer(r, call, LDM_TOKENIZER_CLIP, "bpe_simple_vocab_16e6.txt.gz");
}
static ldm_status op_tok_openclip(runner *r, const lj_value *call)
{
    return run_tokenizer(r, call, LDM_TOKENIZER_OPENCLIP, "bpe_simple_vocab_16e6.txt.gz");
}
static ldm_status op_tok_bert(runner *r, const lj_value *call)
{
    return run_tokenizer(r, call, LDM_TOKENIZER_BERT, "bert-base-uncased-vocab.txt");
}

/* ---- prompts as users write them (docs/prompts.md) */

/* A growable int64 list for the flat outputs of the prompt ops. */
typedef struct i64_list {
    int64_t *v;
    int64_t n, cap;
} i64_list;

static void i64_push(i64_list *l, int64_t x)
{
    if (l->n == l->cap) {
        int64_t cap = l->cap ? 2 * l->cap : 64;
        int64_t *v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v) abort(); /* test runner: out of memory is fatal */
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = x;
}

/* The prompts of params.prompts (borrowed from the case's parse tree). */
static ldm_status call_prompts(const lj_value *params, const char ***out, int *n)
{
    const lj_value *prompts = lj_get(params, "prompts");
    if (!prompts || prompts->type != LJ_ARRAY || prompts->count == 0)
        return ldm_fail(LDM_ERR_FORMAT, "prompt call without prompts");
    *out = calloc(prompts->count, sizeof **out);
    if (!*out) return LDM_ERR_OUT_OF_MEMORY;
    for (size_t i = 0; i < prompts->count; i++) (*out)[i] = fx_prompt(prompts->items[i]);
    *n = (int)prompts->count;
    return LDM_OK;
}

static ldm_tensor *i64_vector(const int64_t *v, int64_t n)
{
    ldm_tensor *t = NULL;
    if (ldm_tensor_create(LDM_I64, 1, &n, &t) != LDM_OK) return NULL;
    if (n) memcpy(ldm_tensor_data(t), v, (size_t)n * sizeof *v);
    return t;
}

/* prompt.parse: the runs of every prompt as flat tensors (prompt index, UTF-8 bytes, byte length,
 * the weight's float64 bits). */
static ldm_status op_prompt_parse(runner *r, const lj_value *call)
{
    const char **p = NULL;
    int n = 0;
    LDM_TRY(call_prompts(lj_get(call, "params"), &p, &n));
    i64_list owner = {0}, len = {0}, text = {0}, bits = {0};
    ldm_status st = LDM_OK;
    for (int i = 0; i < n && st == LDM_OK; i++) {
        ldm_prompt_runs *runs = NULL;
        st = ldm_prompt_parse(p[i], 0, &runs);
        for (int k = 0; st == LDM_OK && k < ldm_prompt_runs_count(runs); k++) {
            const char *t = ldm_prompt_runs_text(runs, k);
            double w = ldm_prompt_runs_weight(runs, k);
            int64_t b;
            memcpy(&b, &w, sizeof b);
            i64_push(&owner, i);
            i64_push(&len, (int64_t)strlen(t));
            for (const char *c = t; *c; c++) i64_push(&text, (unsigned char)*c);
            i64_push(&bits, b);
        }
        ldm_prompt_runs_free(runs);
    }
    free(p);
    const lj_value *out = lj_get(call, "outputs");
    if (st == LDM_OK) {
        emit(r, out, "runs_prompt", i64_vector(owner.v, owner.n));
        emit(r, out, "runs_len", i64_vector(len.v, len.n));
        emit(r, out, "runs_text", i64_vector(text.v, text.n));
        emit(r, out, "runs_weight_bits", i64_vector(bits.v, bits.n));
    }
    free(owner.v);
    free(len.v);
    free(text.v);
    free(bits.v);
    return st;
}

/* Appends the rows of `add` [k, T] to *acc [n, T] (a new tensor; *acc NULL at first). */
static ldm_status append_rows(ldm_tensor **acc, ldm_tensor *add)
{
    if (!*acc) {
        *acc = add;
        return LDM_OK;
    }
    int64_t shape[2] = {ldm_tensor_dim(*acc, 0) + ldm_tensor_dim(add, 0), ldm_tensor_dim(add, 1)};
    ldm_tensor *t = NULL;
    ldm_status st = ldm_tensor_create(ldm_tensor_dtype(add), 2, shape, &t);
    if (st == LDM_OK) {
        size_t elem = ldm_tensor_dtype(add) == LDM_I64 ? 8 : 4;
        size_t a = (size_t)ldm_tensor_numel(*acc) * elem, b = (size_t)ldm_tensor_numel(add) * elem;
        memcpy(ldm_tensor_data(t), ldm_tensor_data(*acc), a);
        memcpy((char *)ldm_tensor_data(t) + a, ldm_tensor_data(add), b);
        ldm_tensor_free(*acc);
        *acc = t;
    }
    ldm_tensor_free(add);
    return st;
}

/* prompt.tokens: params prompts, tokenizer ("clip" | "openclip" | "bert"), context_length -> every
 * prompt's chunk ids and weights stacked, and the chunk count of each prompt. */
static ldm_status op_prompt_tokens(runner *r, const lj_value *call)
{
    const lj_value *params = lj_get(call, "params");
    const char *kind_name = lj_string(lj_get(params, "tokenizer"), "clip");
    int bert = strcmp(kind_name, "bert") == 0;
    ldm_tokenizer_kind kind = bert ? LDM_TOKENIZER_BERT
                                   : strcmp(kind_name, "openclip") == 0 ? LDM_TOKENIZER_OPENCLIP : LDM_TOKENIZER_CLIP;
    int ctx = (int)lj_number(lj_get(params, "context_length"), 77);
    char *vocab = vocab_for(r, params, bert ? "bert-base-uncased-vocab.txt" : "bpe_simple_vocab_16e6.txt.gz");
    ldm_tokenizer *tok = NULL;
    ldm_status st = ldm_tokenizer_load(kind, vocab, &tok);
    free(vocab);
    LDM_TRY(st);
    const char **p = NULL;
    int n = 0;
    st = call_prompts(params, &p, &n);
    ldm_tensor *ids = NULL, *weights = NULL;
    i64_list counts = {0};
    for (int i = 0; i < n && st == LDM_OK; i++) {
        ldm_tensor *id1 = NULL, *w1 = NULL;
        st = ldm_tokenizer_encode_prompt(tok, p[i], ctx, 0, &id1, &w1);
        if (st != LDM_OK) break;
        i64_push(&counts, ldm_tensor_dim(id1, 0));
        st = append_rows(&ids, id1);
        if (st == LDM_OK) st = append_rows(&weights, w1);
        else ldm_tensor_free(w1);
    }
    free(p);
    ldm_tokenizer_free(tok);
    if (st == LDM_OK) {
        const lj_value *out = lj_get(call, "outputs");
        emit(r, out, "ids", ids);
        emit(r, out, "weights", weights);
        emit(r, out, "chunks", i64_vector(counts.v, counts.n));
    } else {
        ldm_tensor_free(ids);
        ldm_tensor_free(weights);
    }
    free(counts.v);
    return st;
}

/* cond.encode_prompt: params prompts -> the conditioner's ldm_conditioner_encode_prompt. */
static ldm_status op_encode_prompt(runner *r, const lj_value *call)
{
    ldm_conditioner *cond;
    ldm_tensor *c = NULL;
    const char **p = NULL;
    int n = 0;
    LDM_TRY(need_model(r));
    LDM_TRY(ldm_model_conditioner(r->model, &cond));
    LDM_TRY(call_prompts(lj_get(call, "params"), &p, &n));
    ldm_status st = ldm_conditioner_encode_prompt(cond, p, n, 0, &c);
    free(p);
    LDM_TRY(st);
    emit(r, lj_get(call, "outputs"), "c", c);
    return LDM_OK;
}

static ldm_status op_layout_tokens(runner *r, const lj_value *call)
{
    ldm_tensor *ids = NULL;
    LDM_TRY(fx_layout_tokens(lj_get(call, "params"), &ids));
    emit(r, lj_get(call, "outputs"), "tokens", ids);
    return LDM_OK;
}

static ldm_status op_sampler_spaced(runner *r, const lj_value *call, ldm_sampler_kind kind,
                                    ldm_timestep_spacing spacing);

static ldm_status op_sampler(runner *r, const lj_value *call, ldm_sampler_kind kind)
{
    return op_sampler_spaced(r, call, kind, LDM_SPACING_DEFAULT);
}

/* params.guidance_embedding true: the guidance scale goes into an LCM-distilled UNet. */
static ldm_status op_sampler_spaced(runner *r, const lj_value *call, ldm_sampler_kind kind,
                                    ldm_timestep_spacing spacing)
{
    LDM_TRY(need_model(r));
    fx_sample_spec spec = {0};
    const lj_value *in = lj_get(call, "inputs"), *params = lj_get(call, "params");
    spec.kind = kind;
    spec.steps = (int)lj_number(lj_get(params, "steps"), 50);
    spec.eta = (float)lj_number(lj_get(params, "eta"), 0.0);
    spec.guidance_scale = (float)lj_number(lj_get(params, "guidance_scale"), 1.0);
    spec.x_T = input(r, in, "x_T");
    spec.noise = input(r, in, "noise");
    spec.spacing = spacing;
    const lj_value *ge = lj_get(params, "guidance_embedding");
    spec.guidance_embedding = ge && ge->type == LJ_BOOL && ge->boolean;
    ldm_status st = cond_from_spec(r, lj_get(params, "cond"), in, &spec.cond);
    if (st == LDM_OK) st = cond_from_spec(r, lj_get(params, "uncond"), in, &spec.uncond);
    fx_sample_result res = {0};
    if (st == LDM_OK) st = fx_sample(r->model, &spec, &res);
    if (st == LDM_OK) {
        const lj_value *out = lj_get(call, "outputs");
        emit(r, out, "ddim_timesteps", res.ddim_timesteps);
        emit(r, out, "ddim_alphas", res.ddim_alphas);
        emit(r, out, "ddim_alphas_prev", res.ddim_alphas_prev);
        emit(r, out, "ddim_sigmas", res.ddim_sigmas);
        emit(r, out, "step_timesteps", res.step_timesteps);
        emit(r, out, "step_x", res.step_x);
        emit(r, out, "step_pred_x0", res.step_pred_x0);
        emit(r, out, "samples", res.samples);
        emit(r, out, "image", res.image);
        emit(r, out, "model_output_step0", res.model_output_step0);
        emit(r, out, "sigmas", res.sigmas);
        emit(r, out, "c", spec.cond);
        emit(r, out, "uc", spec.uncond);
        return LDM_OK;
    }
    ldm_tensor_free(spec.cond);
    ldm_tensor_free(spec.uncond);
    fx_sample_result_free(&res);
    return st;
}

/* taesd.encode / taesd.decode: the tiny autoencoder file named by params.file (beside case.json),
 * loaded on its own through the public handle. */
static ldm_status op_taesd(runner *r, const lj_value *call, int decode)
{
    char path[4096];
    ldm_model_params mp;
    ldm_tiny_autoencoder *tae = NULL;
    ldm_tensor *out = NULL;
    const lj_value *in = lj_get(call, "inputs");
    const ldm_tensor *arg = input(r, in, decode ? "z" : "x");
    const char *file = lj_string(lj_get(lj_get(call, "params"), "file"), NULL);
    if (!arg || !file) return ldm_fail(LDM_ERR_NOT_FOUND, "taesd op: input or params.file missing");
    snprintf(path, sizeof path, "%s/%s", r->dir, file);
    ldm_model_params_init(&mp);
    mp.n_threads = fx_threads();
    LDM_TRY(ldm_tiny_autoencoder_load(path, &mp, &tae));
    ldm_status st = decode ? ldm_tiny_autoencoder_decode(tae, arg, &out) : ldm_tiny_autoencoder_encode(tae, arg, &out);
    ldm_tiny_autoencoder_free(tae);
    LDM_TRY(st);
    emit(r, lj_get(call, "outputs"), decode ? "image" : "z", out);
    return LDM_OK;
}

static ldm_status op_taesd_encode(runner *r, const lj_value *call) { return op_taesd(r, call, 0); }
static ldm_status op_taesd_decode(runner *r, const lj_value *call) { return op_taesd(r, call, 1); }

static ldm_status op_ddim(runner *r, const lj_value *call) { return op_sampler(r, call, LDM_SAMPLER_DDIM); }
static ldm_status op_plms(runner *r, const lj_value *call) { return op_sampler(r, call, LDM_SAMPLER_PLMS); }
static ldm_status op_lcm(runner *r, const lj_value *call) { return op_sampler(r, call, LDM_SAMPLER_LCM); }
static ldm_status op_euler_trailing(runner *r, const lj_value *call)
{
    return op_sampler_spaced(r, call, LDM_SAMPLER_EULER, LDM_SPACING_TRAILING);
}
static ldm_status op_euler_a_trailing(runner *r, const lj_value *call)
{
    return op_sampler_spaced(r, call, LDM_SAMPLER_EULER_ANCESTRAL, LDM_SPACING_TRAILING);
}

/* LoRA (tests/fixtures/lora_*): params.file is relative to the fixture directory. */
static ldm_status op_lora_add(runner *r, const lj_value *call)
{
    const lj_value *params = lj_get(call, "params");
    char path[4096];
    LDM_TRY(need_model(r));
    snprintf(path, sizeof path, "%s/%s", r->dir, lj_string(lj_get(params, "file"), ""));
    return ldm_model_lora_add(r->model, path, lj_number(lj_get(params, "multiplier"), 1.0), 0, NULL);
}

static ldm_status op_lora_clear(runner *r, const lj_value *call)
{
    LDM_TRY(need_model(r));
    return ldm_model_lora_clear(r->model);
}

static ldm_status op_lora_remove_last(runner *r, const lj_value *call)
{
    ldm_lora_info info = {.struct_size = sizeof info};
    LDM_TRY(need_model(r));
    LDM_TRY(ldm_model_lora_get(r->model, ldm_model_lora_count(r->model) - 1, &info));
    return ldm_model_lora_remove(r->model, info.id);
}

/* A second model of the fixture ({weights, config} relative to the fixture directory). */
static ldm_status load_other(runner *r, const lj_value *spec, ldm_model **out)
{
    char w[4096], c[4096];
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    snprintf(w, sizeof w, "%s/%s", r->dir, lj_string(lj_get(spec, "weights"), "refiner.safetensors"));
    snprintf(c, sizeof c, "%s/%s", r->dir, lj_string(lj_get(spec, "config"), "refiner.yaml"));
    mp.config_path = c;
    mp.n_threads = fx_threads();
    return ldm_model_load(w, &mp, out);
}

static ldm_status cond_sdxl(runner *r, ldm_model *m, const lj_value *call);

/* SDXL conditioner (sgm GeneralConditioner): inputs tokens0, tokens1, ... (one per text encoder);
 * params original_size [h,w], crop [top,left], target_size [h,w], aesthetic_score, zero_text and
 * optionally model {weights, config} (another model of the fixture, e.g. the refiner). */
static ldm_status op_cond_sdxl(runner *r, const lj_value *call)
{
    const lj_value *other = lj_get(lj_get(call, "params"), "model");
    ldm_model *m = NULL;
    LDM_TRY(need_model(r));
    if (!other) return cond_sdxl(r, r->model, call);
    LDM_TRY(load_other(r, other, &m));
    ldm_status st = cond_sdxl(r, m, call);
    ldm_model_free(m);
    return st;
}

static ldm_status cond_sdxl(runner *r, ldm_model *m, const lj_value *call)
{
    const lj_value *in = lj_get(call, "inputs"), *params = lj_get(call, "params");
    ldm_conditioner *cond;
    ldm_sdxl_cond_params p;
    const ldm_tensor *tokens[8];
    char name[32];
    ldm_sdxl_cond_params_init(&p);
    LDM_TRY(ldm_model_conditioner(m, &cond));
    for (p.n_tokens = 0; p.n_tokens < 8; p.n_tokens++) {
        snprintf(name, sizeof name, "tokens%d", p.n_tokens);
        if (!(tokens[p.n_tokens] = input(r, in, name))) break;
    }
    p.tokens = tokens;
    const lj_value *v;
    if ((v = lj_get(params, "original_size")) && v->count == 2)
        p.original_height = lj_number(v->items[0], 0), p.original_width = lj_number(v->items[1], 0);
    if ((v = lj_get(params, "crop")) && v->count == 2)
        p.crop_top = lj_number(v->items[0], 0), p.crop_left = lj_number(v->items[1], 0);
    if ((v = lj_get(params, "target_size")) && v->count == 2)
        p.target_height = lj_number(v->items[0], 0), p.target_width = lj_number(v->items[1], 0);
    p.aesthetic_score = lj_number(lj_get(params, "aesthetic_score"), p.aesthetic_score);
    p.zero_text = (int)lj_number(lj_get(params, "zero_text"), 0);
    ldm_tensor *ca = NULL, *vec = NULL;
    LDM_TRY(ldm_conditioner_encode_sdxl(cond, &p, &ca, &vec));
    emit(r, lj_get(call, "outputs"), "crossattn", ca);
    emit(r, lj_get(call, "outputs"), "vector", vec);
    return LDM_OK;
}

/* Runs one model's share of an SDXL sampling run (steps first..last) with its conditioning
 * tensors named prefix+"crossattn"/"vector" and "u"+prefix+..., appending x after each step;
 * with a mask, inpainting's blending of z0 (noised with x_T) after each step. */
static ldm_status sgm_run(runner *r, ldm_model *m, ldm_sampler *s, const lj_value *in, const char *prefix,
                          float scale, int last, const ldm_tensor *mask, ldm_tensor *steps_x, int *row)
{
    char n[4][48];
    snprintf(n[0], sizeof n[0], "%scrossattn", prefix);
    snprintf(n[1], sizeof n[1], "%svector", prefix);
    snprintf(n[2], sizeof n[2], "u%scrossattn", prefix);
    snprintf(n[3], sizeof n[3], "u%svector", prefix);
    const ldm_tensor *ca = input(r, in, n[0]), *vec = input(r, in, n[1]);
    const ldm_tensor *uca = input(r, in, n[2]), *uvec = input(r, in, n[3]);
    const ldm_tensor *xin;
    double t;
    while (ldm_sampler_steps_done(s) < last && ldm_sampler_next(s, &xin, &t) == 1) {
        ldm_tensor *tt = NULL, *out = NULL;
        int64_t B = xin->shape[0];
        LDM_TRY(ldm_tensor_create(LDM_F32, 1, &B, &tt));
        for (int64_t i = 0; i < B; i++) lt_f32(tt)[i] = (float)t;
        ldm_status st = ldm_model_apply_sdxl(m, xin, tt, ca, vec, uca, uvec, scale, &out);
        ldm_tensor_free(tt);
        int before = ldm_sampler_steps_done(s);
        if (st == LDM_OK) st = ldm_sampler_give(s, out);
        ldm_tensor_free(out);
        LDM_TRY(st);
        if (ldm_sampler_steps_done(s) > before && mask)
            LDM_TRY(ldm_sampler_blend_known(s, input(r, in, "z0"), input(r, in, "x_T"), mask));
        if (ldm_sampler_steps_done(s) > before) {
            const ldm_tensor *x = ldm_sampler_current(s);
            size_t n_x = (size_t)lt_numel(x);
            memcpy(lt_f32(steps_x) + (size_t)(*row)++ * n_x, lt_f32(x), n_x * sizeof(float));
        }
    }
    return LDM_OK;
}

/* SDXL sampling with sgm's discretization: inputs x_T, c_crossattn, c_vector, uc_crossattn,
 * uc_vector; params sampler (euler | euler_a | heun | dpmpp_2m), steps, guidance_scale, spacing
 * ("trailing": diffusers' trailing schedule as SDXL-Turbo runs it, k-diffusion noise levels) and
 * optionally refiner {weights, config, refiner_start} with the refiner's conditioning in rc_* /
 * ruc_*: the base runs ldm_sdxl_base_steps, the refiner the rest from where it stopped
 * (ldm_sampler_begin_at) and decodes. Outputs step_x [steps,B,C,H,W], samples, image.
 * Sampler "lcm": diffusers' LCMScheduler (params lcm_original_steps). Image-to-image: input z0
 * (the scaled latent) and params strength: the run starts at ldm_sdxl_img2img_first_step from
 * z0 noised with x_T (ldm_sampler_begin_noised); step_x then holds the steps run. params model
 * {weights, config}: another model of the fixture samples (the refiner as an img2img model).
 * Inpainting: inputs z0 and mask ([B,1,h,w], 1 = repaint) and params first_step (diffusers'
 * get_timesteps): pure noise at step 0, else z0 noised with x_T; after each step the known region
 * is blended back (ldm_sampler_blend_known with x_T). */
static ldm_status sampler_sgm(runner *r, ldm_model *model, const lj_value *call);

static ldm_status op_sampler_sgm(runner *r, const lj_value *call)
{
    const lj_value *other = lj_get(lj_get(call, "params"), "model");
    ldm_model *m = NULL;
    LDM_TRY(need_model(r));
    if (!other) return sampler_sgm(r, r->model, call);
    LDM_TRY(load_other(r, other, &m));
    ldm_status st = sampler_sgm(r, m, call);
    ldm_model_free(m);
    return st;
}

static ldm_status sampler_sgm(runner *r, ldm_model *model, const lj_value *call)
{
    const lj_value *in = lj_get(call, "inputs"), *params = lj_get(call, "params");
    const lj_value *ref = lj_get(params, "refiner");
    const char *kind = lj_string(lj_get(params, "sampler"), "euler");
    ldm_sampler_params sp;
    ldm_sampler_params_init(&sp);
    sp.kind = !strcmp(kind, "euler_a") ? LDM_SAMPLER_EULER_ANCESTRAL : !strcmp(kind, "heun") ? LDM_SAMPLER_HEUN
              : !strcmp(kind, "dpmpp_2m") ? LDM_SAMPLER_DPMPP_2M : !strcmp(kind, "lcm") ? LDM_SAMPLER_LCM
              : LDM_SAMPLER_EULER;
    sp.steps = (int)lj_number(lj_get(params, "steps"), 50);
    sp.discretization = sp.kind == LDM_SAMPLER_LCM ? LDM_DISCRETIZATION_KDIFFUSION : LDM_DISCRETIZATION_SGM;
    sp.lcm_original_steps = (int)lj_number(lj_get(params, "lcm_original_steps"), 50);
    if (!strcmp(lj_string(lj_get(params, "spacing"), "default"), "trailing")) { /* SDXL-Turbo: diffusers' */
        sp.spacing = LDM_SPACING_TRAILING;
        sp.discretization = LDM_DISCRETIZATION_KDIFFUSION;
    }
    float scale = (float)lj_number(lj_get(params, "guidance_scale"), 5.0);
    const ldm_tensor *x_T = input(r, in, "x_T"), *z0 = input(r, in, "z0"), *mask = input(r, in, "mask");
    if (!x_T) return ldm_fail(LDM_ERR_NOT_FOUND, "sampler.sgm: x_T missing");
    ldm_model *rm = NULL;
    ldm_sampler *s = NULL, *s2 = NULL;
    ldm_tensor *steps_x = NULL, *image = NULL;
    int row = 0, base_steps = sp.steps;
    int first = z0 ? ldm_sdxl_img2img_first_step(sp.steps, (float)lj_number(lj_get(params, "strength"), 1.0)) : 0;
    if (mask) first = (int)lj_number(lj_get(params, "first_step"), 0);
    int64_t shape[5] = {sp.steps > first ? sp.steps - first : 1, x_T->shape[0], x_T->shape[1], x_T->shape[2], x_T->shape[3]};
    ldm_status st = ldm_tensor_create(LDM_F32, 5, shape, &steps_x);
    if (st == LDM_OK && ref) {
        base_steps = ldm_sdxl_base_steps(sp.steps, lj_number(lj_get(ref, "refiner_start"), 0.8));
        st = load_other(r, ref, &rm);
    }
    if (st == LDM_OK) st = ldm_model_sampler(model, &sp, &s);
    if (st == LDM_OK && input(r, in, "noise")) st = ldm_sampler_set_noise(s, input(r, in, "noise"));
    int from_noise = !z0 || (mask && first == 0); /* inpainting at strength 1: pure noise */
    if (st == LDM_OK) st = from_noise ? ldm_sampler_begin(s, x_T) : ldm_sampler_begin_noised(s, z0, x_T, first);
    if (st == LDM_OK) st = sgm_run(r, model, s, in, "c_", scale, base_steps, mask, steps_x, &row);
    if (st == LDM_OK && rm && base_steps < sp.steps) {
        st = ldm_model_sampler(rm, &sp, &s2);
        if (st == LDM_OK) st = ldm_sampler_begin_at(s2, ldm_sampler_current(s), base_steps);
        if (st == LDM_OK) st = sgm_run(r, rm, s2, in, "rc_", scale, sp.steps, NULL, steps_x, &row);
    }
    const ldm_tensor *z = s2 ? ldm_sampler_current(s2) : s ? ldm_sampler_current(s) : NULL;
    if (st == LDM_OK) st = ldm_model_decode_latent(rm ? rm : model, z, &image);
    if (st == LDM_OK) {
        const lj_value *out = lj_get(call, "outputs");
        emit(r, out, "step_x", steps_x);
        emit(r, out, "samples", lt_clone(z));
        emit(r, out, "image", image);
        steps_x = image = NULL;
    }
    ldm_tensor_free(steps_x);
    ldm_tensor_free(image);
    ldm_sampler_free(s);
    ldm_sampler_free(s2);
    ldm_model_free(rm);
    return st;
}

static const struct {
    const char *name;
    op_fn fn;
} ops[] = {
    {"autoencoder_kl.encode", op_kl_encode},
    {"autoencoder_kl.decode", op_ae_decode},
    {"vq.encode", op_vq_encode},
    {"vq.quantize", op_vq_quantize},
    {"vq.decode", op_ae_decode},
    {"vq.decode_no_quantize", op_vq_decode_noquant},
    {"unet.forward", op_unet_forward},
    {"ldm.apply_model", op_apply_model},
    {"ldm.inpaint_cond", op_inpaint_cond},
    {"ldm.p_sample", op_p_sample},
    {"cond.class_embed", op_class_embed},
    {"cond.bert", op_cond_tokens},
    {"cond.clip_text", op_cond_tokens},
    {"cond.openclip_text", op_cond_tokens},
    {"cond.spatial_rescaler", op_spatial_rescaler},
    {"cond.layout_tokens", op_layout_tokens},
    {"tokenizer.clip_sd1", op_tok_clip},
    {"tokenizer.openclip_sd2", op_tok_openclip},
    {"tokenizer.bert", op_tok_bert},
    {"prompt.parse", op_prompt_parse},
    {"prompt.tokens", op_prompt_tokens},
    {"cond.encode_prompt", op_encode_prompt},
    {"sampler.ddim", op_ddim},
    {"sampler.plms", op_plms},
    {"sampler.lcm", op_lcm},
    {"sampler.euler_trailing", op_euler_trailing},
    {"sampler.euler_ancestral_trailing", op_euler_a_trailing},
    {"ldm.apply_model_embedded_guidance", op_apply_embedded_guidance},
    {"lora.add", op_lora_add},
    {"lora.clear", op_lora_clear},
    {"lora.remove_last", op_lora_remove_last},
    {"taesd.encode", op_taesd_encode},
    {"taesd.decode", op_taesd_decode},
    {"cond.sdxl", op_cond_sdxl},
    {"sampler.sgm", op_sampler_sgm},
};

/* ---------------------------------------------------------------- fixture */

static ldm_status open_fixture(runner *r)
{
    char path[4096], config[4096], vocab[4096];
    LDM_TRY(fx_load_case(r->dir, &r->cas));
    snprintf(path, sizeof path, "%s/io.safetensors", r->dir);
    LDM_TRY(lw_open(path, 0, &r->io));
    /* "shared_weights": the model (and config) of a shared fixture, which the project's own
     * fixtures use instead of a copy: <shared>/fixtures/<name>/. */
    const char *shared_fixture = lj_string(lj_get(r->cas, "shared_weights"), NULL);
    char model_dir[3072], vocabs[1024];
    snprintf(model_dir, sizeof model_dir, "%s", r->dir);
    if (shared_fixture) {
        vocab_dir(r, vocabs, sizeof vocabs);
        snprintf(model_dir, sizeof model_dir, "%s/../fixtures/%.1000s", vocabs, shared_fixture);
        snprintf(path, sizeof path, "%s/model.safetensors", model_dir);
    } else if (!fx_pick_weights(r->dir, r->cas, path, sizeof path)) {
        return LDM_OK; /* tokenizer-only fixture */
    }
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    snprintf(config, sizeof config, "%s/config.yaml", model_dir);
    if (fx_file_exists(config)) mp.config_path = config;
    mp.n_threads = fx_threads();
    /* Text models find their vocabulary where the shared layout keeps it: <fixtures>/../vocab
     * (the same place the tokenizer fixtures' params.vocab point to). */
    vocab_dir(r, vocab, sizeof vocab);
    if (!getenv("LDM_VOCAB")) mp.vocab_path = vocab;
    return ldm_model_load(path, &mp, &r->model);
}

static void run_fixture(runner *r)
{
    printf("%s\n", r->dir);
    ldm_status st = open_fixture(r);
    if (st != LDM_OK) {
        printf("  FAIL  cannot open fixture: %s\n", ldm_last_error());
        r->failed++;
        return;
    }
    const lj_value *calls = lj_get(r->cas, "calls");
    for (size_t i = 0; calls && i < calls->count; i++) {
        const lj_value *call = calls->items[i];
        const char *op = lj_string(lj_get(call, "op"), "?");
        op_fn fn = NULL;
        for (size_t k = 0; k < LDM_ARRAY_LEN(ops); k++)
            if (strcmp(ops[k].name, op) == 0) fn = ops[k].fn;
        if (!fn) {
            printf("  FAIL  call %zu: unknown op '%s'\n", i, op);
            r->failed++;
            continue;
        }
        st = fn(r, call);
        if (st != LDM_OK) {
            printf("  FAIL  call %zu (%s): %s: %s\n", i, op, ldm_status_string(st), ldm_last_error());
            r->failed++;
        }
    }
}

static void close_fixture(runner *r)
{
    ldm_model_free(r->model);
    lw_close(r->io);
    lj_free(r->cas);
    fx_env_clear(&r->env);
    r->model = NULL;
    r->io = NULL;
    r->cas = NULL;
}

int main(int argc, char **argv)
{
    int passed = 0, failed = 0;
    if (argc < 2) {
        fprintf(stderr, "usage: conformance FIXTURE_DIR...\n");
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        runner r = {0};
        r.dir = argv[i];
        fx_strip_slash((char *)r.dir);
        run_fixture(&r);
        close_fixture(&r);
        passed += r.passed;
        failed += r.failed;
    }
    printf("conformance: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
