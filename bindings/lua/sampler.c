/* sampler.c - ldm.sampler userdata: the host-driven sampler state machine from Lua.
 *
 *   local s <close> = m:sampler{kind = "ddim", steps = 20, seed = 1}
 *   s:begin(x_T)
 *   while true do
 *       local x, t = s:next()             -- x: a copy of the request, t: the timestep
 *       if not x then break end
 *       s:give(m:apply(x, t, cond))
 *   end
 *   local z0 = s:current()
 */
#include <limits.h>
#include <string.h>

#include "lbind.h"

typedef struct lb_sampler {
    ldm_sampler *s;
} lb_sampler;

static ldm_sampler *check_sampler(lua_State *L, int idx)
{
    lb_sampler *u = luaL_checkudata(L, idx, LB_SAMPLER);
    if (!u->s) luaL_error(L, "sampler is closed");
    return u->s;
}

void lb_push_sampler(lua_State *L, ldm_sampler *s)
{
    lb_sampler *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->s = s;
    luaL_setmetatable(L, LB_SAMPLER);
}

void lb_sampler_params(lua_State *L, int opts, ldm_sampler_params *p)
{
    static const char *const known[] = {
        "kind",           "steps", "eta", "quad", "seed", "parameterization", "spacing", "lcm_original_steps",
        "discretization", NULL};
    static const char *const spacings[] = {"default", "trailing", NULL};
    static const char *const discretizations[] = {"kdiffusion", "sgm", NULL}; /* LDM_DISCRETIZATION_* */
    ldm_sampler_params_init(p);
    if (lua_isnoneornil(L, opts)) return;
    luaL_checktype(L, opts, LUA_TTABLE);
    lb_check_options(L, opts, "sampler options", known);
    const char *kind = lb_opt_string(L, opts, "kind", NULL);
    if (kind) p->kind = lb_sampler_kind(L, kind);
    p->steps = lb_opt_int(L, opts, "steps", p->steps);
    p->eta = (float)lb_opt_number(L, opts, "eta", p->eta);
    lua_getfield(L, opts, "quad");
    p->ddim_quad = lua_toboolean(L, -1);
    lua_pop(L, 1);
    p->seed = lb_opt_u64(L, opts, "seed", p->seed);
    p->spacing = (ldm_timestep_spacing)lb_opt_choice(L, opts, "spacing", "default", spacings);
    p->lcm_original_steps = lb_opt_int(L, opts, "lcm_original_steps", p->lcm_original_steps);
    p->discretization = lb_opt_choice(L, opts, "discretization", "kdiffusion", discretizations);
}

/* A caller-owned copy of a tensor the sampler keeps (valid only until its next call). */
static void push_copy(lua_State *L, const ldm_tensor *t)
{
    if (!t) {
        lua_pushnil(L);
        return;
    }
    ldm_tensor *src = (ldm_tensor *)t; /* ldm_tensor_data takes a non-const handle; only read */
    int64_t shape[LDM_MAX_DIMS];
    for (int i = 0; i < ldm_tensor_ndim(t); i++) shape[i] = ldm_tensor_dim(t, i);
    ldm_tensor **slot = lb_push_tensor_slot(L);
    lb_check(L, ldm_tensor_create(ldm_tensor_dtype(t), ldm_tensor_ndim(t), shape, slot), "ldm_tensor_create");
    size_t bytes = (size_t)ldm_tensor_numel(t) * (ldm_tensor_dtype(t) == LDM_I64 ? 8 : 4);
    if (bytes) memcpy(ldm_tensor_data(*slot), ldm_tensor_data(src), bytes);
}

/* ldm.sampler(alphas_cumprod, {kind=, steps=, eta=, quad=, seed=, parameterization="eps"|"v"|"x0",
 * spacing="default"|"trailing", lcm_original_steps=}) */
static int l_sampler(lua_State *L)
{
    static const char *const params[] = {"eps", "v", "x0", NULL};
    lua_settop(L, 2);
    const ldm_tensor *ac = lb_to_tensor(L, 1, LDM_F32, 0);
    if (ldm_tensor_dtype(ac) != LDM_F32 || ldm_tensor_ndim(ac) != 1)
        luaL_error(L, "ldm.sampler: alphas_cumprod must be a 1-D f32 tensor or a table of numbers");
    ldm_sampler_params p;
    lb_sampler_params(L, 2, &p);
    ldm_parameterization param = LDM_PARAM_EPS;
    if (lua_istable(L, 2)) param = (ldm_parameterization)lb_opt_choice(L, 2, "parameterization", "eps", params);
    ldm_sampler *s = NULL;
    int n = (int)lb_range(L, ldm_tensor_numel(ac), 0, INT_MAX, "ldm.sampler: #alphas_cumprod", "int");
    lb_check(L, ldm_sampler_create(ldm_tensor_data((ldm_tensor *)ac), n, param, &p, &s),
             "ldm_sampler_create");
    lb_push_sampler(L, s);
    return 1;
}

static int s_gc(lua_State *L)
{
    lb_sampler *u = luaL_checkudata(L, 1, LB_SAMPLER);
    ldm_sampler_free(u->s);
    u->s = NULL;
    return 0;
}

static int s_begin(lua_State *L)
{
    lua_settop(L, 2);
    ldm_sampler *s = check_sampler(L, 1);
    lb_check(L, ldm_sampler_begin(s, lb_to_tensor(L, 2, LDM_F32, 0)), "ldm_sampler_begin");
    return 0;
}

/* s:begin_at(x, first_step): a run from x at step first_step (SDXL base -> refiner hand-off) */
static int s_begin_at(lua_State *L)
{
    lua_settop(L, 3);
    ldm_sampler *s = check_sampler(L, 1);
    const ldm_tensor *x = lb_to_tensor(L, 2, LDM_F32, 0);
    int first = lb_arg_int(L, 3, "first_step", 0, 0);
    lb_check(L, ldm_sampler_begin_at(s, x, first), "ldm_sampler_begin_at");
    return 0;
}

/* s:begin_noised(z0, noise, first_step): a run at step first_step from z0 noised with noise to
 * that step's level (image-to-image) */
static int s_begin_noised(lua_State *L)
{
    lua_settop(L, 4);
    ldm_sampler *s = check_sampler(L, 1);
    const ldm_tensor *z0 = lb_to_tensor(L, 2, LDM_F32, 0), *noise = lb_to_tensor(L, 3, LDM_F32, 0);
    int first = lb_arg_int(L, 4, "first_step", 0, 0);
    lb_check(L, ldm_sampler_begin_noised(s, z0, noise, first), "ldm_sampler_begin_noised");
    return 0;
}

/* s:blend_known(z0, noise, mask): inpainting's blending after a step (mask 0: z0 noised to the
 * level reached; 1: the sample stays) */
static int s_blend_known(lua_State *L)
{
    lua_settop(L, 4);
    ldm_sampler *s = check_sampler(L, 1);
    const ldm_tensor *z0 = lb_to_tensor(L, 2, LDM_F32, 0), *noise = lb_to_tensor(L, 3, LDM_F32, 0);
    const ldm_tensor *mask = lb_to_tensor(L, 4, LDM_F32, 0);
    lb_check(L, ldm_sampler_blend_known(s, z0, noise, mask), "ldm_sampler_blend_known");
    return 0;
}

/* ldm.sdxl_img2img_first_step(steps, strength) */
static int l_sdxl_img2img_first_step(lua_State *L)
{
    int steps = lb_arg_int(L, 1, "steps", 0, 0);
    lua_pushinteger(L, ldm_sdxl_img2img_first_step(steps, (float)luaL_checknumber(L, 2)));
    return 1;
}

/* ldm.sdxl_base_steps(steps, refiner_start) */
static int l_sdxl_base_steps(lua_State *L)
{
    int steps = lb_arg_int(L, 1, "steps", 0, 0);
    lua_pushinteger(L, ldm_sdxl_base_steps(steps, luaL_checknumber(L, 2)));
    return 1;
}

static int s_set_noise(lua_State *L)
{
    lua_settop(L, 2);
    ldm_sampler *s = check_sampler(L, 1);
    lb_check(L, ldm_sampler_set_noise(s, lb_to_tensor(L, 2, LDM_F32, 1)), "ldm_sampler_set_noise");
    return 0;
}

/* s:next() -> x, timestep (the request) or nil when the run is finished */
static int s_next(lua_State *L)
{
    ldm_sampler *s = check_sampler(L, 1);
    const ldm_tensor *x = NULL;
    double t = 0;
    int r = ldm_sampler_next(s, &x, &t);
    if (r < 0) lb_check(L, LDM_ERR_INVALID_ARGUMENT, "ldm_sampler_next");
    if (r == 0) {
        lua_pushnil(L);
        return 1;
    }
    push_copy(L, x);
    lua_pushnumber(L, t);
    return 2;
}

static int s_give(lua_State *L)
{
    lua_settop(L, 2);
    ldm_sampler *s = check_sampler(L, 1);
    lb_check(L, ldm_sampler_give(s, lb_to_tensor(L, 2, LDM_F32, 0)), "ldm_sampler_give");
    return 0;
}

static int s_current(lua_State *L)
{
    push_copy(L, ldm_sampler_current(check_sampler(L, 1)));
    return 1;
}

static int s_pred_x0(lua_State *L)
{
    push_copy(L, ldm_sampler_pred_x0(check_sampler(L, 1)));
    return 1;
}

static int s_total_evaluations(lua_State *L)
{
    lua_pushinteger(L, ldm_sampler_total_evaluations(check_sampler(L, 1)));
    return 1;
}

static int s_total_steps(lua_State *L)
{
    lua_pushinteger(L, ldm_sampler_total_steps(check_sampler(L, 1)));
    return 1;
}

static int s_steps_done(lua_State *L)
{
    lua_pushinteger(L, ldm_sampler_steps_done(check_sampler(L, 1)));
    return 1;
}

void lb_sampler_register(lua_State *L, int module)
{
    static const luaL_Reg methods[] = {{"begin", s_begin},
                                       {"begin_at", s_begin_at},
                                       {"begin_noised", s_begin_noised},
                                       {"blend_known", s_blend_known},
                                       {"set_noise", s_set_noise},
                                       {"next", s_next},
                                       {"give", s_give},
                                       {"current", s_current},
                                       {"pred_x0", s_pred_x0},
                                       {"total_evaluations", s_total_evaluations},
                                       {"total_steps", s_total_steps},
                                       {"steps_done", s_steps_done},
                                       {"close", s_gc},
                                       {NULL, NULL}};
    static const luaL_Reg functions[] = {{"sampler", l_sampler}, {"sdxl_base_steps", l_sdxl_base_steps},
                                               {"sdxl_img2img_first_step", l_sdxl_img2img_first_step}, {NULL, NULL}};
    lb_new_class(L, LB_SAMPLER, methods, s_gc);
    lb_set_functions(L, module, functions);
}
