/* model.c - ldm.model userdata: ldm.load / ldm.load_builtin, generate with a Lua progress callback,
 * the model's Lua abort callback, the latent diffusion calls, and access to the components.
 *
 *   local m <close> = ldm.load_builtin("demo")            -- or ldm.load("sd15.safetensors", {config=...})
 *   m:set_abort_callback(function() return os.time() > deadline end)
 *   local img = m:generate{class_label = 1, steps = 20, seed = 42,
 *                          progress = function(step, total) return false end}
 */
#include <string.h>

#include "lbind.h"

void lb_model_check_idle(lua_State *L, const lb_model *u)
{
    if (u->L)
        luaL_error(L, "a call on this model is running (this call comes from one of its callbacks): a model and "
                      "its components take one call at a time");
}

ldm_model *lb_check_model(lua_State *L, int idx)
{
    lb_model *u = luaL_checkudata(L, idx, LB_MODEL);
    if (!u->m) luaL_error(L, "model is closed");
    lb_model_check_idle(L, u);
    return u->m;
}

/* The tensor in opts[key] (left on the stack with any converted copy), NULL when absent. */
static const ldm_tensor *opt_tensor(lua_State *L, int opts, const char *key, ldm_dtype dtype)
{
    lua_getfield(L, opts, key);
    return lb_to_tensor(L, -1, dtype, 1);
}

/* ---------------------------------------------------------------- loading */

static void model_params(lua_State *L, int opts, ldm_model_params *mp)
{
    static const char *const known[] = {"config",      "vocab",   "threads", "weights", "max_alloc_bytes",
                                        "cpu_kernels", "compute", NULL};
    static const char *const weights[] = {"auto", "ema", "raw", NULL};
    static const char *const compute[] = {"f32", "bf16", NULL}; /* in ldm_compute order */
    ldm_model_params_init(mp);
    if (lua_isnoneornil(L, opts)) return;
    luaL_checktype(L, opts, LUA_TTABLE);
    lb_check_options(L, opts, "model options", known);
    mp->config_path = lb_opt_string(L, opts, "config", NULL);
    mp->vocab_path = lb_opt_string(L, opts, "vocab", NULL);
    mp->n_threads = lb_opt_int(L, opts, "threads", 0);
    mp->max_alloc_bytes = lb_opt_size(L, opts, "max_alloc_bytes", 0);
    mp->weights = (ldm_weights_choice)lb_opt_choice(L, opts, "weights", "auto", weights);
    mp->cpu_kernels = lb_opt_string(L, opts, "cpu_kernels", NULL); /* opts stays on the stack */
    mp->compute = lb_opt_choice(L, opts, "compute", "f32", compute);
}

static lb_model *push_model(lua_State *L)
{
    lb_model *u = lua_newuserdatauv(L, sizeof *u, 1); /* user value 1: the abort callback */
    u->m = NULL;
    u->L = NULL;
    u->self = u->error = 0;
    luaL_setmetatable(L, LB_MODEL);
    return u;
}

/* ldm.load(path [, {config=, vocab=, threads=, weights=, max_alloc_bytes=, cpu_kernels=, compute=}]) */
static int l_load(lua_State *L)
{
    lua_settop(L, 2);
    const char *path = luaL_checkstring(L, 1);
    ldm_model_params mp;
    model_params(L, 2, &mp);
    lb_model *u = push_model(L);
    lb_check(L, ldm_model_load(path, &mp, &u->m), "ldm_model_load");
    return 1;
}

/* ldm.load_builtin([name="demo" [, seed=0 [, options]]]) */
static int l_builtin(lua_State *L)
{
    lua_settop(L, 3);
    const char *name = luaL_optstring(L, 1, "demo");
    uint64_t seed = lb_arg_u64(L, 2, "load_builtin: seed", 1, 0);
    ldm_model_params mp;
    model_params(L, 3, &mp);
    lb_model *u = push_model(L);
    lb_check(L, ldm_model_load_builtin(name, seed, &mp, &u->m), "ldm_model_load_builtin");
    return 1;
}

static int m_gc(lua_State *L)
{
    lb_model *u = luaL_checkudata(L, 1, LB_MODEL);
    /* from a callback of a running call (not from the collector: the call's stack holds the model) */
    if (u->L) return luaL_error(L, "model:close(): a call on this model is running");
    ldm_model_free(u->m);
    u->m = NULL;
    lua_pushnil(L);
    lua_setiuservalue(L, 1, 1); /* drops the abort callback */
    return 0;
}

static int m_describe(lua_State *L)
{
    lua_pushstring(L, ldm_model_describe(lb_check_model(L, 1)));
    return 1;
}

/* m:config_path() -> the YAML config the model was built from, or nil (detected, built-in) */
static int m_config_path(lua_State *L)
{
    const char *path = ldm_model_config_path(lb_check_model(L, 1));
    if (path) lua_pushstring(L, path);
    else lua_pushnil(L);
    return 1;
}

static int m_set_threads(lua_State *L)
{
    ldm_model *m = lb_check_model(L, 1);
    lb_check(L, ldm_model_set_threads(m, lb_arg_int(L, 2, "set_threads: n", 0, 0)), "ldm_model_set_threads");
    return 0;
}

/* ---- LoRA (docs/lora.md) */

/* m:add_lora(path [, multiplier [, allow_unmatched]]) -> id */
static int m_add_lora(lua_State *L)
{
    ldm_model *m = lb_check_model(L, 1);
    const char *path = luaL_checkstring(L, 2);
    double multiplier = luaL_optnumber(L, 3, 1.0);
    unsigned flags = lua_toboolean(L, 4) ? LDM_LORA_ALLOW_UNMATCHED : 0;
    int id = 0;
    LB_MODEL_CALL(L, 1, ldm_model_lora_add(m, path, multiplier, flags, &id), "ldm_model_lora_add");
    lua_pushinteger(L, id);
    return 1;
}

static int m_remove_lora(lua_State *L)
{
    ldm_model *m = lb_check_model(L, 1);
    int id = lb_arg_int(L, 2, "remove_lora: id", 0, 0);
    LB_MODEL_CALL(L, 1, ldm_model_lora_remove(m, id), "ldm_model_lora_remove");
    return 0;
}

static int m_set_lora_multiplier(lua_State *L)
{
    ldm_model *m = lb_check_model(L, 1);
    int id = lb_arg_int(L, 2, "set_lora_multiplier: id", 0, 0);
    double multiplier = luaL_checknumber(L, 3);
    LB_MODEL_CALL(L, 1, ldm_model_lora_set_multiplier(m, id, multiplier),
                  "ldm_model_lora_set_multiplier");
    return 0;
}

static int m_clear_loras(lua_State *L)
{
    ldm_model *m = lb_check_model(L, 1);
    LB_MODEL_CALL(L, 1, ldm_model_lora_clear(m), "ldm_model_lora_clear");
    return 0;
}

/* m:loras() -> {{id=, path=, multiplier=, n_unet_layers=, n_text_layers=, n_skipped_keys=}, ...} */
static int m_loras(lua_State *L)
{
    ldm_model *m = lb_check_model(L, 1);
    int n = ldm_model_lora_count(m);
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        ldm_lora_info info = {.struct_size = sizeof info};
        lb_check(L, ldm_model_lora_get(m, i, &info), "ldm_model_lora_get");
        lua_createtable(L, 0, 6);
        lua_pushinteger(L, info.id), lua_setfield(L, -2, "id");
        lua_pushstring(L, info.path), lua_setfield(L, -2, "path");
        lua_pushnumber(L, info.multiplier), lua_setfield(L, -2, "multiplier");
        lua_pushinteger(L, info.n_unet_layers), lua_setfield(L, -2, "n_unet_layers");
        lua_pushinteger(L, info.n_text_layers), lua_setfield(L, -2, "n_text_layers");
        lua_pushinteger(L, info.n_skipped_keys), lua_setfield(L, -2, "n_skipped_keys");
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static int m_interrupt(lua_State *L)
{
    lb_model *u = luaL_checkudata(L, 1, LB_MODEL);
    if (u->m) ldm_model_interrupt(u->m);
    return 0;
}

/* ---------------------------------------------------------------- the abort callback */

/* The C side of m:set_abort_callback: runs the Lua function (the model's user value) under pcall on
 * the thread running the call, as the progress callback does. Non-zero (stop) when it returned true
 * or raised; the error value stays on that thread's stack, where lb_call_end finds it. */
static int on_abort(void *user)
{
    lb_model *u = user;
    lua_State *L = u->L;
    if (!L) return 0; /* polled outside LB_MODEL_CALL: no thread to run Lua on */
    if (u->error || !lua_checkstack(L, 2)) return 1;
    lua_getiuservalue(L, u->self, 1);
    if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
        u->error = lua_gettop(L);
        return 1;
    }
    int stop = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return stop;
}

void lb_call_begin(lua_State *L, lb_call *c, int model_idx)
{
    lb_model *u = luaL_checkudata(L, model_idx, LB_MODEL);
    lb_model_check_idle(L, u); /* also checked on entry; converting arguments may have run Lua code */
    c->u = u;
    u->L = L;
    u->self = lua_absindex(L, model_idx);
    u->error = 0;
}

void lb_call_end(lua_State *L, lb_call *c)
{
    lb_model *u = c->u;
    int error = u->error;
    u->L = NULL;
    u->self = 0;
    u->error = 0;
    if (error) {
        lua_pushvalue(L, error);
        lua_error(L); /* the callback's own error value, re-raised */
    }
}

/* lb_call_end without raising: the stack index of the callback's error value, 0 when none (for a
 * second model busy in the same call, whose error is raised after the first call has ended). */
static int call_end_quiet(lb_call *c)
{
    lb_model *u = c->u;
    int error = u->error;
    u->L = NULL;
    u->self = 0;
    u->error = 0;
    return error;
}

/* m:set_abort_callback(fn | nil): fn() is polled between network blocks and sampler steps of every
 * call on the model; true stops the call (it raises "... cancelled"), an error raised by fn stops
 * it and is re-raised from it. The function is kept in the model's user value rather than the
 * registry, so a callback that refers to its own model does not keep the model alive. */
static int m_set_abort_callback(lua_State *L)
{
    lua_settop(L, 2);
    lb_model *u = luaL_checkudata(L, 1, LB_MODEL);
    luaL_argexpected(L, lua_isnil(L, 2) || lua_isfunction(L, 2), 2, "function or nil");
    if (!u->m) return luaL_error(L, "model is closed");
    if (u->L) return luaL_error(L, "model:set_abort_callback(): a call on this model is running");
    int on = lua_isfunction(L, 2);
    lb_check(L, ldm_model_set_abort_callback(u->m, on ? on_abort : NULL, on ? u : NULL),
             "ldm_model_set_abort_callback");
    lua_setiuservalue(L, 1, 1);
    return 0;
}

/* ---------------------------------------------------------------- generate */

typedef struct progress_ctx {
    lua_State *L;
    int fn;        /* stack index of the Lua function */
    int error_ref; /* registry reference of the error it raised, or LUA_NOREF */
} progress_ctx;

/* Runs the Lua callback under pcall: a Lua error must not longjmp through libldm. Returns
 * non-zero (stop) when it returned true or raised. */
static int on_progress(int step, int total, void *user)
{
    progress_ctx *p = user;
    lua_State *L = p->L;
    if (p->error_ref != LUA_NOREF || !lua_checkstack(L, 4)) return 1;
    lua_pushvalue(L, p->fn);
    lua_pushinteger(L, step);
    lua_pushinteger(L, total);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
        p->error_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        return 1;
    }
    int stop = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return stop;
}

/* The preview callback: the Lua function gets (step, total, image), image a copy it may keep. */
static int on_preview(int step, int total, const ldm_tensor *image, void *user)
{
    progress_ctx *p = user;
    lua_State *L = p->L;
    ldm_tensor *copy = NULL;
    int64_t shape[LDM_MAX_DIMS];
    int nd = ldm_tensor_ndim(image);
    for (int i = 0; i < nd; i++) shape[i] = ldm_tensor_dim(image, i);
    if (p->error_ref != LUA_NOREF || !lua_checkstack(L, 5) ||
        ldm_tensor_create(ldm_tensor_dtype(image), nd, shape, &copy) != LDM_OK)
        return 1;
    memcpy(ldm_tensor_data(copy), ldm_tensor_data((ldm_tensor *)image),
           (size_t)ldm_tensor_numel(image) * (ldm_tensor_dtype(image) == LDM_I64 ? 8 : 4));
    lua_pushvalue(L, p->fn);
    lua_pushinteger(L, step);
    lua_pushinteger(L, total);
    lb_push_tensor(L, copy);
    if (lua_pcall(L, 3, 1, 0) != LUA_OK) {
        p->error_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        return 1;
    }
    int stop = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return stop;
}

/* opts.uncond_class: nil or "auto" (the model's own), "none", or a class number */
static int opt_uncond_class(lua_State *L, int opts)
{
    lua_getfield(L, opts, "uncond_class");
    int type = lua_type(L, -1);
    const char *s = type == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    lua_pop(L, 1);
    if (type == LUA_TNIL || (s && !strcmp(s, "auto"))) return LDM_UNCOND_CLASS_AUTO;
    if (s && !strcmp(s, "none")) return LDM_UNCOND_CLASS_NONE;
    if (s) luaL_error(L, "option 'uncond_class': '%s' is not \"auto\", \"none\" or a class number", s);
    return lb_opt_int(L, opts, "uncond_class", LDM_UNCOND_CLASS_AUTO);
}

static void generate_params(lua_State *L, int opts, ldm_generate_params *p)
{
    static const char *const known[] = {
        "prompt", "negative_prompt", "class_label", "width", "height", "batch", "sampler", "steps", "eta",
        "guidance_scale", "seed", "init_image", "strength", "mask", "cond_image", "layout_tokens", "vae_tile",
        "progress", "x_T", "uncond_class", "timestep_spacing", "lcm_original_steps", "plain_prompts",
        "vae", "preview", "preview_every", "preview_kind",
        /* SDXL */
        "original_width", "original_height", "crop_left", "crop_top", "target_width", "target_height",
        "aesthetic_score", "negative_aesthetic_score", "refiner", "refiner_start", NULL};
    static const char *const spacings[] = {"default", "trailing", NULL};
    static const char *const vaes[] = {"full", "tiny", NULL};
    static const char *const previews[] = {"auto", "tiny", "linear", "full", NULL};
    ldm_generate_params_init(p);
    lb_check_options(L, opts, "generate", known);
    p->prompt = lb_opt_string(L, opts, "prompt", NULL);
    p->negative_prompt = lb_opt_string(L, opts, "negative_prompt", NULL);
    p->class_label = lb_opt_int(L, opts, "class_label", p->class_label);
    p->width = lb_opt_int(L, opts, "width", p->width);
    p->height = lb_opt_int(L, opts, "height", p->height);
    p->batch = lb_opt_int(L, opts, "batch", p->batch);
    const char *sampler = lb_opt_string(L, opts, "sampler", NULL);
    if (sampler) p->sampler = lb_sampler_kind(L, sampler);
    p->steps = lb_opt_int(L, opts, "steps", p->steps);
    p->eta = (float)lb_opt_number(L, opts, "eta", p->eta);
    p->guidance_scale = (float)lb_opt_number(L, opts, "guidance_scale", p->guidance_scale);
    p->seed = lb_opt_u64(L, opts, "seed", p->seed);
    p->strength = (float)lb_opt_number(L, opts, "strength", p->strength);
    p->vae_tile = lb_opt_int(L, opts, "vae_tile", p->vae_tile);
    p->uncond_class = opt_uncond_class(L, opts);
    p->timestep_spacing = (ldm_timestep_spacing)lb_opt_choice(L, opts, "timestep_spacing", "default", spacings);
    p->lcm_original_steps = lb_opt_int(L, opts, "lcm_original_steps", p->lcm_original_steps);
    lua_getfield(L, opts, "plain_prompts"); /* true: no webui syntax, 75 tokens (docs/prompts.md) */
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1)) luaL_error(L, "option 'plain_prompts': expected a boolean");
    p->plain_prompts = lua_toboolean(L, -1);
    lua_pop(L, 1);
    p->vae = lb_opt_choice(L, opts, "vae", "full", vaes);
    p->preview_every = lb_opt_int(L, opts, "preview_every", p->preview_every);
    p->preview_kind = lb_opt_choice(L, opts, "preview_kind", "auto", previews);
    p->original_width = lb_opt_int(L, opts, "original_width", p->original_width);
    p->original_height = lb_opt_int(L, opts, "original_height", p->original_height);
    p->crop_left = lb_opt_int(L, opts, "crop_left", p->crop_left);
    p->crop_top = lb_opt_int(L, opts, "crop_top", p->crop_top);
    p->target_width = lb_opt_int(L, opts, "target_width", p->target_width);
    p->target_height = lb_opt_int(L, opts, "target_height", p->target_height);
    p->aesthetic_score = (float)lb_opt_number(L, opts, "aesthetic_score", p->aesthetic_score);
    p->negative_aesthetic_score =
        (float)lb_opt_number(L, opts, "negative_aesthetic_score", p->negative_aesthetic_score);
    p->refiner_start = lb_opt_number(L, opts, "refiner_start", p->refiner_start);
    p->init_image = opt_tensor(L, opts, "init_image", LDM_F32);
    p->mask = opt_tensor(L, opts, "mask", LDM_F32);
    p->cond_image = opt_tensor(L, opts, "cond_image", LDM_F32);
    p->layout_tokens = opt_tensor(L, opts, "layout_tokens", LDM_I64);
    p->x_T = opt_tensor(L, opts, "x_T", LDM_F32);
}

/* opts.refiner (an SDXL refiner model, another than the one at model_idx): pushed on the stack
 * and its handle put in p; returns its stack index, 0 when none. */
static int opt_refiner(lua_State *L, int opts, int model_idx, ldm_generate_params *p)
{
    lua_getfield(L, opts, "refiner");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    int idx = lua_gettop(L);
    if (lua_rawequal(L, idx, model_idx)) luaL_error(L, "option 'refiner': another model than the generating one");
    p->refiner = lb_check_model(L, idx);
    return idx;
}

/* m:generate{...} -> image tensor [B,3,H,W] in [-1,1] */
static int m_generate(lua_State *L)
{
    ldm_model *m = lb_check_model(L, 1);
    lua_settop(L, 2);
    if (lua_isnil(L, 2)) {
        lua_newtable(L);
        lua_replace(L, 2);
    }
    luaL_checktype(L, 2, LUA_TTABLE);
    ldm_generate_params p;
    generate_params(L, 2, &p);
    progress_ctx ctx = {L, 0, LUA_NOREF};
    lua_getfield(L, 2, "progress");
    if (!lua_isnil(L, -1)) {
        luaL_checktype(L, -1, LUA_TFUNCTION);
        ctx.fn = lua_gettop(L);
        p.progress = on_progress;
        p.progress_user_data = &ctx;
    }
    progress_ctx pctx = {L, 0, LUA_NOREF};
    lua_getfield(L, 2, "preview");
    if (!lua_isnil(L, -1)) {
        luaL_checktype(L, -1, LUA_TFUNCTION);
        pctx.fn = lua_gettop(L);
        p.preview = on_preview;
        p.preview_user_data = &pctx;
    }
    int refiner = opt_refiner(L, 2, 1, &p);
    ldm_tensor **image = lb_push_tensor_slot(L);
    lb_call call, rcall;
    if (refiner) lb_call_begin(L, &rcall, refiner); /* the refiner is busy for the call too */
    lb_call_begin(L, &call, 1);
    ldm_status st = ldm_generate(m, &p, image);
    if (ctx.error_ref == LUA_NOREF && pctx.error_ref != LUA_NOREF) ctx.error_ref = pctx.error_ref;
    else if (pctx.error_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, pctx.error_ref);
    int refiner_error = refiner ? call_end_quiet(&rcall) : 0;
    if (ctx.error_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, ctx.error_ref);
        luaL_unref(L, LUA_REGISTRYINDEX, ctx.error_ref);
    }
    /* the abort callback's error value, else the progress callback's, else the status */
    lb_call_end(L, &call);
    if (ctx.error_ref != LUA_NOREF) return lua_error(L);
    if (refiner_error) { /* the refiner's abort callback raised */
        lua_pushvalue(L, refiner_error);
        return lua_error(L);
    }
    lb_check(L, st, "ldm_generate");
    return 1;
}

/* m:resolve_generate_params{...} -> a table of what m:generate{...} would run with: the same
 * options (progress is accepted and not called), every model-dependent default made explicit */
static int m_resolve_generate_params(lua_State *L)
{
    static const char *const samplers[] = {"ddim", "plms", "ddpm", "euler", "euler_a", "heun", "dpmpp_2m",
                                           "dpmpp_2m_karras", "lcm"};
    ldm_model *m = lb_check_model(L, 1);
    lua_settop(L, 2);
    if (lua_isnil(L, 2)) {
        lua_newtable(L);
        lua_replace(L, 2);
    }
    luaL_checktype(L, 2, LUA_TTABLE);
    ldm_generate_params p, r;
    generate_params(L, 2, &p);
    opt_refiner(L, 2, 1, &p);
    LB_MODEL_CALL(L, 1, ldm_generate_params_resolve(m, &p, &r), "ldm_generate_params_resolve");
    lua_createtable(L, 0, 24);
    lua_pushstring(L, r.prompt ? r.prompt : "");
    lua_setfield(L, -2, "prompt");
    lua_pushstring(L, r.negative_prompt ? r.negative_prompt : "");
    lua_setfield(L, -2, "negative_prompt");
    const struct {
        const char *name;
        int value;
    } ints[] = {{"class_label", r.class_label},
                {"width", r.width},
                {"height", r.height},
                {"batch", r.batch},
                {"steps", r.steps},
                {"vae_tile", r.vae_tile},
                {"lcm_original_steps", r.lcm_original_steps},
                {"original_width", r.original_width},
                {"original_height", r.original_height},
                {"crop_left", r.crop_left},
                {"crop_top", r.crop_top},
                {"target_width", r.target_width},
                {"target_height", r.target_height}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        lua_pushinteger(L, ints[i].value);
        lua_setfield(L, -2, ints[i].name);
    }
    lua_pushinteger(L, (lua_Integer)r.seed); /* above 2^63 - 1: negative, as Lua integers wrap */
    lua_setfield(L, -2, "seed");
    lua_pushnumber(L, r.eta);
    lua_setfield(L, -2, "eta");
    lua_pushnumber(L, r.guidance_scale);
    lua_setfield(L, -2, "guidance_scale");
    lua_pushnumber(L, r.strength);
    lua_setfield(L, -2, "strength");
    lua_pushnumber(L, r.aesthetic_score);
    lua_setfield(L, -2, "aesthetic_score");
    lua_pushnumber(L, r.negative_aesthetic_score);
    lua_setfield(L, -2, "negative_aesthetic_score");
    lua_pushnumber(L, r.refiner_start);
    lua_setfield(L, -2, "refiner_start");
    if ((unsigned)r.sampler < sizeof samplers / sizeof samplers[0]) lua_pushstring(L, samplers[r.sampler]);
    else lua_pushinteger(L, r.sampler);
    lua_setfield(L, -2, "sampler");
    if (r.uncond_class == LDM_UNCOND_CLASS_NONE) lua_pushliteral(L, "none");
    else lua_pushinteger(L, r.uncond_class);
    lua_setfield(L, -2, "uncond_class");
    lua_pushstring(L, r.timestep_spacing == LDM_SPACING_TRAILING ? "trailing" : "default");
    lua_setfield(L, -2, "timestep_spacing");
    lua_pushboolean(L, r.plain_prompts);
    lua_setfield(L, -2, "plain_prompts");
    static const char *const previews[] = {"auto", "tiny", "linear", "full"};
    lua_pushstring(L, r.vae == LDM_VAE_TINY ? "tiny" : "full");
    lua_setfield(L, -2, "vae");
    lua_pushinteger(L, r.preview_every);
    lua_setfield(L, -2, "preview_every");
    lua_pushstring(L, (unsigned)r.preview_kind < 4 ? previews[r.preview_kind] : "?");
    lua_setfield(L, -2, "preview_kind");
    return 1;
}

/* ---------------------------------------------------------------- latent diffusion calls */

/* m:apply(x, timesteps, cond) */
static int m_apply(lua_State *L)
{
    lua_settop(L, 4);
    ldm_model *m = lb_check_model(L, 1);
    const ldm_tensor *x = lb_to_tensor(L, 2, LDM_F32, 0);
    const ldm_tensor *t = lb_to_timesteps(L, 3, 1);
    const ldm_tensor *cond = lb_to_tensor(L, 4, LDM_F32, 1);
    ldm_tensor **out = lb_push_tensor_slot(L);
    LB_MODEL_CALL(L, 1, ldm_model_apply(m, x, t, cond, out), "ldm_model_apply");
    return 1;
}

/* m:apply_guided(x, timesteps, cond, uncond, scale) */
static int m_apply_guided(lua_State *L)
{
    lua_settop(L, 6);
    ldm_model *m = lb_check_model(L, 1);
    const ldm_tensor *x = lb_to_tensor(L, 2, LDM_F32, 0);
    const ldm_tensor *t = lb_to_timesteps(L, 3, 1);
    const ldm_tensor *cond = lb_to_tensor(L, 4, LDM_F32, 1);
    const ldm_tensor *uncond = lb_to_tensor(L, 5, LDM_F32, 1);
    float scale = (float)luaL_checknumber(L, 6);
    ldm_tensor **out = lb_push_tensor_slot(L);
    LB_MODEL_CALL(L, 1, ldm_model_apply_guided(m, x, t, cond, uncond, scale, out), "ldm_model_apply_guided");
    return 1;
}

/* m:apply_embedded_guidance(x, timesteps, cond, guidance_scale): an LCM-distilled UNet */
static int m_apply_embedded_guidance(lua_State *L)
{
    lua_settop(L, 5);
    ldm_model *m = lb_check_model(L, 1);
    const ldm_tensor *x = lb_to_tensor(L, 2, LDM_F32, 0);
    const ldm_tensor *t = lb_to_timesteps(L, 3, 1);
    const ldm_tensor *cond = lb_to_tensor(L, 4, LDM_F32, 1);
    float scale = (float)luaL_checknumber(L, 5);
    ldm_tensor **out = lb_push_tensor_slot(L);
    LB_MODEL_CALL(L, 1, ldm_model_apply_embedded_guidance(m, x, t, cond, scale, out),
                  "ldm_model_apply_embedded_guidance");
    return 1;
}

/* m:apply_sdxl(x, timesteps, crossattn, vector [, uncond_crossattn, uncond_vector, scale]): an
 * SDXL model's UNet, guided when the uncond_* are given (ldm_model_apply_sdxl) */
static int m_apply_sdxl(lua_State *L)
{
    lua_settop(L, 8);
    ldm_model *m = lb_check_model(L, 1);
    const ldm_tensor *x = lb_to_tensor(L, 2, LDM_F32, 0);
    const ldm_tensor *t = lb_to_timesteps(L, 3, ldm_tensor_dim(x, 0));
    const ldm_tensor *ca = lb_to_tensor(L, 4, LDM_F32, 0);
    const ldm_tensor *vec = lb_to_tensor(L, 5, LDM_F32, 0);
    const ldm_tensor *uca = lb_to_tensor(L, 6, LDM_F32, 1);
    const ldm_tensor *uvec = lb_to_tensor(L, 7, LDM_F32, 1);
    float scale = (float)luaL_optnumber(L, 8, 1.0);
    ldm_tensor **out = lb_push_tensor_slot(L);
    LB_MODEL_CALL(L, 1, ldm_model_apply_sdxl(m, x, t, ca, vec, uca, uvec, scale, out), "ldm_model_apply_sdxl");
    return 1;
}

/* m:guidance_embedding_dim() -> 0 unless the UNet is LCM-distilled */
static int m_guidance_embedding_dim(lua_State *L)
{
    lua_pushinteger(L, ldm_model_guidance_embedding_dim(lb_check_model(L, 1)));
    return 1;
}

static int m_decode_latent(lua_State *L)
{
    lua_settop(L, 2);
    ldm_model *m = lb_check_model(L, 1);
    const ldm_tensor *z = lb_to_tensor(L, 2, LDM_F32, 0);
    ldm_tensor **out = lb_push_tensor_slot(L);
    LB_MODEL_CALL(L, 1, ldm_model_decode_latent(m, z, out), "ldm_model_decode_latent");
    return 1;
}

/* m:decode_latent_with(z, "full" | "tiny") */
static int m_decode_latent_with(lua_State *L)
{
    static const char *const vaes[] = {"full", "tiny", NULL};
    lua_settop(L, 3);
    ldm_model *m = lb_check_model(L, 1);
    const ldm_tensor *z = lb_to_tensor(L, 2, LDM_F32, 0);
    ldm_vae_choice vae = (ldm_vae_choice)luaL_checkoption(L, 3, "full", vaes);
    ldm_tensor **out = lb_push_tensor_slot(L);
    LB_MODEL_CALL(L, 1, ldm_model_decode_latent_with(m, z, vae, out), "ldm_model_decode_latent_with");
    return 1;
}

/* m:encode_image(x, "full" | "tiny" [, seed]) */
static int m_encode_image(lua_State *L)
{
    static const char *const vaes[] = {"full", "tiny", NULL};
    lua_settop(L, 4);
    ldm_model *m = lb_check_model(L, 1);
    const ldm_tensor *x = lb_to_tensor(L, 2, LDM_F32, 0);
    ldm_vae_choice vae = (ldm_vae_choice)luaL_checkoption(L, 3, "full", vaes);
    uint64_t seed = (uint64_t)luaL_optinteger(L, 4, 0);
    ldm_tensor **out = lb_push_tensor_slot(L);
    LB_MODEL_CALL(L, 1, ldm_model_encode_image(m, x, vae, seed, out), "ldm_model_encode_image");
    return 1;
}

/* m:set_tiny_autoencoder(path or nil) */
static int m_set_tiny_autoencoder(lua_State *L)
{
    lua_settop(L, 2);
    ldm_model *m = lb_check_model(L, 1);
    const char *path = luaL_optstring(L, 2, NULL);
    lb_check(L, ldm_model_set_tiny_autoencoder(m, path), "ldm_model_set_tiny_autoencoder");
    return 0;
}

/* m:has_tiny_autoencoder() -> has_decoder, has_encoder */
static int m_has_tiny_autoencoder(lua_State *L)
{
    ldm_model *m = lb_check_model(L, 1);
    lua_pushboolean(L, ldm_model_has_tiny_decoder(m));
    lua_pushboolean(L, ldm_model_has_tiny_encoder(m));
    return 2;
}

static int m_inpaint_cond(lua_State *L)
{
    lua_settop(L, 3);
    ldm_model *m = lb_check_model(L, 1);
    const ldm_tensor *masked = lb_to_tensor(L, 2, LDM_F32, 0);
    const ldm_tensor *mask = lb_to_tensor(L, 3, LDM_F32, 0);
    ldm_tensor **out = lb_push_tensor_slot(L);
    LB_MODEL_CALL(L, 1, ldm_model_inpaint_cond(m, masked, mask, out), "ldm_model_inpaint_cond");
    return 1;
}

/* m:p_sample(x, timesteps, cond, noise) */
static int m_p_sample(lua_State *L)
{
    lua_settop(L, 5);
    ldm_model *m = lb_check_model(L, 1);
    const ldm_tensor *x = lb_to_tensor(L, 2, LDM_F32, 0);
    const ldm_tensor *t = lb_to_tensor(L, 3, LDM_I64, 0);
    const ldm_tensor *cond = lb_to_tensor(L, 4, LDM_F32, 1);
    const ldm_tensor *noise = lb_to_tensor(L, 5, LDM_F32, 1);
    ldm_tensor **out = lb_push_tensor_slot(L);
    LB_MODEL_CALL(L, 1, ldm_model_p_sample(m, x, t, cond, noise, out), "ldm_model_p_sample");
    return 1;
}

/* m:sampler{kind=, steps=, eta=, quad=, seed=} */
static int m_sampler(lua_State *L)
{
    lua_settop(L, 2);
    ldm_model *m = lb_check_model(L, 1);
    ldm_sampler_params p;
    lb_sampler_params(L, 2, &p);
    ldm_sampler *s = NULL;
    lb_check(L, ldm_model_sampler(m, &p, &s), "ldm_model_sampler");
    lb_push_sampler(L, s);
    return 1;
}

/* ---------------------------------------------------------------- components */

static int m_autoencoder(lua_State *L)
{
    ldm_autoencoder *ae = NULL;
    lb_check(L, ldm_model_autoencoder(lb_check_model(L, 1), &ae), "ldm_model_autoencoder");
    lb_push_component(L, LB_AUTOENCODER, ae, 1);
    return 1;
}

static int m_unet(lua_State *L)
{
    ldm_unet *unet = NULL;
    lb_check(L, ldm_model_unet(lb_check_model(L, 1), &unet), "ldm_model_unet");
    lb_push_component(L, LB_UNET, unet, 1);
    return 1;
}

static int m_conditioner(lua_State *L)
{
    ldm_conditioner *cond = NULL;
    lb_check(L, ldm_model_conditioner(lb_check_model(L, 1), &cond), "ldm_model_conditioner");
    lb_push_component(L, LB_CONDITIONER, cond, 1);
    return 1;
}

void lb_model_register(lua_State *L, int module)
{
    static const luaL_Reg methods[] = {{"describe", m_describe},
                                       {"config_path", m_config_path},
                                       {"resolve_generate_params", m_resolve_generate_params},
                                       {"set_threads", m_set_threads},
                                       {"interrupt", m_interrupt},
                                       {"close", m_gc},
                                       {"generate", m_generate},
                                       {"apply", m_apply},
                                       {"apply_guided", m_apply_guided},
                                       {"apply_sdxl", m_apply_sdxl},
                                       {"apply_embedded_guidance", m_apply_embedded_guidance},
                                       {"guidance_embedding_dim", m_guidance_embedding_dim},
                                       {"decode_latent", m_decode_latent},
                                       {"inpaint_cond", m_inpaint_cond},
                                       {"decode_latent_with", m_decode_latent_with},
                                       {"encode_image", m_encode_image},
                                       {"set_tiny_autoencoder", m_set_tiny_autoencoder},
                                       {"has_tiny_autoencoder", m_has_tiny_autoencoder},
                                       {"p_sample", m_p_sample},
                                       {"sampler", m_sampler},
                                       {"autoencoder", m_autoencoder},
                                       {"unet", m_unet},
                                       {"conditioner", m_conditioner},
                                       {"set_abort_callback", m_set_abort_callback},
                                       {"add_lora", m_add_lora},
                                       {"remove_lora", m_remove_lora},
                                       {"set_lora_multiplier", m_set_lora_multiplier},
                                       {"clear_loras", m_clear_loras},
                                       {"loras", m_loras},
                                       {NULL, NULL}};
    static const luaL_Reg functions[] = {{"load", l_load}, {"load_builtin", l_builtin}, {NULL, NULL}};
    lb_new_class(L, LB_MODEL, methods, m_gc);
    lb_set_functions(L, module, functions);
}
