/* components.c - ldm.autoencoder / ldm.unet / ldm.conditioner userdata. Their handles belong to the
 * model: each userdata keeps the model userdata alive (user value 1) and refuses to work once the
 * model has been closed, or while a call on the model runs (from one of its callbacks). */
#include "lbind.h"

typedef struct lb_component {
    void *h;
} lb_component;

void lb_push_component(lua_State *L, const char *name, void *handle, int model_idx)
{
    model_idx = lua_absindex(L, model_idx);
    lb_component *c = lua_newuserdatauv(L, sizeof *c, 1);
    c->h = handle;
    luaL_setmetatable(L, name);
    lua_pushvalue(L, model_idx);
    lua_setiuservalue(L, -2, 1);
}

/* The component's handle, after checking that its model is still open. */
static void *check_component(lua_State *L, int idx, const char *name)
{
    lb_component *c = luaL_checkudata(L, idx, name);
    lua_getiuservalue(L, idx, 1);
    lb_model *m = lua_touserdata(L, -1);
    if (!m || !m->m) luaL_error(L, "%s: its model is closed", name);
    lb_model_check_idle(L, m);
    lua_pop(L, 1);
    return c->h;
}

/* check_component for a library call: the model userdata is left on the stack, at the returned
 * index (for LB_MODEL_CALL). */
static void *check_component_call(lua_State *L, int idx, const char *name, int *model_idx)
{
    void *h = check_component(L, idx, name);
    lua_getiuservalue(L, idx, 1);
    *model_idx = lua_gettop(L);
    return h;
}

static int no_gc(lua_State *L)
{
    (void)L; /* owned by the model */
    return 0;
}

/* ---------------------------------------------------------------- autoencoder */

static int ae_kind(lua_State *L)
{
    ldm_autoencoder *ae = check_component(L, 1, LB_AUTOENCODER);
    lua_pushstring(L, ldm_autoencoder_get_kind(ae) == LDM_AUTOENCODER_VQ ? "vq" : "kl");
    return 1;
}

static int ae_factor(lua_State *L)
{
    lua_pushinteger(L, ldm_autoencoder_factor(check_component(L, 1, LB_AUTOENCODER)));
    return 1;
}

static int ae_latent_channels(lua_State *L)
{
    lua_pushinteger(L, ldm_autoencoder_latent_channels(check_component(L, 1, LB_AUTOENCODER)));
    return 1;
}

typedef ldm_status (*ae_fn)(ldm_autoencoder *, const ldm_tensor *, ldm_tensor **);

static int ae_call(lua_State *L, ae_fn fn, const char *name)
{
    lua_settop(L, 2);
    int model;
    ldm_autoencoder *ae = check_component_call(L, 1, LB_AUTOENCODER, &model);
    const ldm_tensor *x = lb_to_tensor(L, 2, LDM_F32, 0);
    ldm_tensor **out = lb_push_tensor_slot(L);
    LB_MODEL_CALL(L, model, fn(ae, x, out), name);
    return 1;
}

static int ae_encode(lua_State *L) { return ae_call(L, ldm_autoencoder_encode, "ldm_autoencoder_encode"); }
static int ae_decode(lua_State *L) { return ae_call(L, ldm_autoencoder_decode, "ldm_autoencoder_decode"); }
static int ae_decode_unquantized(lua_State *L)
{
    return ae_call(L, ldm_autoencoder_decode_unquantized, "ldm_autoencoder_decode_unquantized");
}

/* ae:quantize(h) -> quant, indices */
static int ae_quantize(lua_State *L)
{
    lua_settop(L, 2);
    int model;
    ldm_autoencoder *ae = check_component_call(L, 1, LB_AUTOENCODER, &model);
    const ldm_tensor *h = lb_to_tensor(L, 2, LDM_F32, 0);
    ldm_tensor **quant = lb_push_tensor_slot(L), **indices = lb_push_tensor_slot(L);
    LB_MODEL_CALL(L, model, ldm_autoencoder_quantize(ae, h, quant, indices), "ldm_autoencoder_quantize");
    return 2;
}

/* ---------------------------------------------------------------- unet */

/* unet:forward(x, timesteps, context, y); one number as timesteps applies to the whole batch */
static int unet_forward(lua_State *L)
{
    lua_settop(L, 5);
    int model;
    ldm_unet *unet = check_component_call(L, 1, LB_UNET, &model);
    const ldm_tensor *x = lb_to_tensor(L, 2, LDM_F32, 0);
    const ldm_tensor *t = lb_to_timesteps(L, 3, ldm_tensor_dim(x, 0));
    const ldm_tensor *context = lb_to_tensor(L, 4, LDM_F32, 1);
    const ldm_tensor *y = lb_to_tensor(L, 5, LDM_I64, 1);
    ldm_tensor **out = lb_push_tensor_slot(L);
    LB_MODEL_CALL(L, model, ldm_unet_forward(unet, x, t, context, y, out), "ldm_unet_forward");
    return 1;
}

/* ---------------------------------------------------------------- conditioner */

static int cond_kind(lua_State *L)
{
    static const char *const names[] = {"none", "class", "clip_text", "openclip_text", "bert",
                                        "spatial_rescaler", "first_stage", "identity", "sdxl"};
    ldm_conditioner_kind k = ldm_conditioner_get_kind(check_component(L, 1, LB_CONDITIONER));
    lua_pushstring(L, (unsigned)k < sizeof names / sizeof names[0] ? names[k] : "unknown");
    return 1;
}

typedef ldm_status (*cond_fn)(ldm_conditioner *, const ldm_tensor *, ldm_tensor **);

static int cond_call(lua_State *L, cond_fn fn, ldm_dtype dtype, const char *name)
{
    lua_settop(L, 2);
    int model;
    ldm_conditioner *c = check_component_call(L, 1, LB_CONDITIONER, &model);
    const ldm_tensor *x = lb_to_tensor(L, 2, dtype, 0);
    ldm_tensor **out = lb_push_tensor_slot(L);
    LB_MODEL_CALL(L, model, fn(c, x, out), name);
    return 1;
}

static int cond_encode_tokens(lua_State *L)
{
    return cond_call(L, ldm_conditioner_encode_tokens, LDM_I64, "ldm_conditioner_encode_tokens");
}
static int cond_encode_labels(lua_State *L)
{
    return cond_call(L, ldm_conditioner_encode_labels, LDM_I64, "ldm_conditioner_encode_labels");
}
static int cond_encode_image(lua_State *L)
{
    return cond_call(L, ldm_conditioner_encode_image, LDM_F32, "ldm_conditioner_encode_image");
}

/* cond:encode_text(prompt or {prompts}) */
static int cond_encode_text(lua_State *L)
{
    lua_settop(L, 2);
    int model;
    ldm_conditioner *c = check_component_call(L, 1, LB_CONDITIONER, &model);
    int n = 0;
    const char *const *prompts = lb_strings(L, 2, &n);
    ldm_tensor **out = lb_push_tensor_slot(L);
    LB_MODEL_CALL(L, model, ldm_conditioner_encode_text(c, prompts, n, out), "ldm_conditioner_encode_text");
    return 1;
}

/* cond:encode_prompt(prompt or {prompts} [, {emphasis =, comma_backtrack =, normalize =}]):
 * webui's syntax and long prompts (docs/prompts.md) -> [n, 77*k, D] */
static int cond_encode_prompt(lua_State *L)
{
    lua_settop(L, 3);
    int model;
    ldm_conditioner *c = check_component_call(L, 1, LB_CONDITIONER, &model);
    unsigned flags = lb_prompt_flags(L, 3);
    int n = 0;
    const char *const *prompts = lb_strings(L, 2, &n);
    ldm_tensor **out = lb_push_tensor_slot(L);
    LB_MODEL_CALL(L, model, ldm_conditioner_encode_prompt(c, prompts, n, flags, out), "ldm_conditioner_encode_prompt");
    return 1;
}

/* cond:encode_sdxl{prompts = prompt or {prompts} | tokens = {ids per text encoder}, original_width
 * =, original_height =, crop_left =, crop_top =, target_width =, target_height =, aesthetic_score
 * =, zero_text =, prompt_syntax =, emphasis =, comma_backtrack =, normalize =} -> crossattn, vector
 * (ldm_conditioner_encode_sdxl) */
static int cond_encode_sdxl(lua_State *L)
{
    static const char *const known[] = {
        "prompts",       "tokens",       "original_width",  "original_height", "crop_left",
        "crop_top",      "target_width", "target_height",   "aesthetic_score", "zero_text",
        "prompt_syntax", "emphasis",     "comma_backtrack", "normalize",       NULL};
    lua_settop(L, 2);
    int model;
    ldm_conditioner *c = check_component_call(L, 1, LB_CONDITIONER, &model);
    luaL_checktype(L, 2, LUA_TTABLE);
    lb_check_options(L, 2, "encode_sdxl", known);
    ldm_sdxl_cond_params p;
    ldm_sdxl_cond_params_init(&p);
    p.original_width = lb_opt_number(L, 2, "original_width", p.original_width);
    p.original_height = lb_opt_number(L, 2, "original_height", p.original_height);
    p.crop_left = lb_opt_number(L, 2, "crop_left", p.crop_left);
    p.crop_top = lb_opt_number(L, 2, "crop_top", p.crop_top);
    p.target_width = lb_opt_number(L, 2, "target_width", p.target_width);
    p.target_height = lb_opt_number(L, 2, "target_height", p.target_height);
    p.aesthetic_score = lb_opt_number(L, 2, "aesthetic_score", p.aesthetic_score);
    /* booleans: zero_text, prompt_syntax (default false); emphasis, comma_backtrack, normalize
     * (default true: false sets the LDM_PROMPT_NO_* flag) */
    static const char *const flags[] = {"zero_text", "prompt_syntax", "emphasis", "comma_backtrack", "normalize"};
    static const unsigned no_flag[] = {0, 0, LDM_PROMPT_NO_EMPHASIS, LDM_PROMPT_NO_COMMA_BACKTRACK,
                                       LDM_PROMPT_NO_NORMALIZE};
    for (int i = 0; i < 5; i++) {
        lua_getfield(L, 2, flags[i]);
        if (!lua_isnil(L, -1) && !lua_isboolean(L, -1)) luaL_error(L, "option '%s': expected a boolean", flags[i]);
        int on = lua_toboolean(L, -1), given = lua_isboolean(L, -1);
        lua_pop(L, 1);
        if (i == 0)
            p.zero_text = on;
        else if (i == 1)
            p.prompt_syntax = on;
        else if (given && !on)
            p.prompt_flags |= no_flag[i];
    }
    const ldm_tensor *tokens[8];
    lua_getfield(L, 2, "tokens"); /* stays on the stack: it keeps the converted tensors alive */
    if (!lua_isnil(L, -1)) {
        luaL_checktype(L, -1, LUA_TTABLE);
        int list = lua_gettop(L);
        p.n_tokens = (int)luaL_len(L, list);
        if (p.n_tokens < 1 || p.n_tokens > 8) luaL_error(L, "option 'tokens': 1 to 8 tensors, one per text encoder");
        for (int i = 0; i < p.n_tokens; i++) {
            lua_rawgeti(L, list, i + 1);
            tokens[i] = lb_to_tensor(L, lua_gettop(L), LDM_I64, 0);
        }
        p.tokens = tokens;
    } else {
        lua_getfield(L, 2, "prompts");
        if (lua_isnil(L, -1)) luaL_error(L, "encode_sdxl: give prompts or tokens");
        p.prompts = lb_strings(L, lua_gettop(L), &p.n_prompts);
    }
    ldm_tensor **ca = lb_push_tensor_slot(L);
    ldm_tensor **vec = lb_push_tensor_slot(L);
    LB_MODEL_CALL(L, model, ldm_conditioner_encode_sdxl(c, &p, ca, vec), "ldm_conditioner_encode_sdxl");
    return 2;
}

void lb_components_register(lua_State *L)
{
    static const luaL_Reg ae[] = {{"kind", ae_kind},     {"factor", ae_factor}, {"latent_channels", ae_latent_channels},
                                  {"encode", ae_encode}, {"decode", ae_decode}, {"decode_unquantized", ae_decode_unquantized},
                                  {"quantize", ae_quantize}, {NULL, NULL}};
    static const luaL_Reg unet[] = {{"forward", unet_forward}, {NULL, NULL}};
    static const luaL_Reg cond[] = {{"kind", cond_kind},
                                    {"encode_tokens", cond_encode_tokens},
                                    {"encode_text", cond_encode_text},
                                    {"encode_prompt", cond_encode_prompt},
                                    {"encode_sdxl", cond_encode_sdxl},
                                    {"encode_labels", cond_encode_labels},
                                    {"encode_image", cond_encode_image},
                                    {NULL, NULL}};
    lb_new_class(L, LB_AUTOENCODER, ae, no_gc);
    lb_new_class(L, LB_UNET, unet, no_gc);
    lb_new_class(L, LB_CONDITIONER, cond, no_gc);
}
