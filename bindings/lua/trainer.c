/* trainer.c - ldm.trainer userdata: training and fine-tuning runs (ldm_trainer_*) with a Lua
 * callback after every step.
 *
 *   local t <close> = ldm.trainer("ae.yaml", {data_dir = "data", out_dir = "run", max_steps = 100,
 *                                             callback = function(p) print(p.step, p.loss) end})
 *   t:run()                                   -- saves run/last.safetensors + run/config.yaml
 *   t:export("run/export.safetensors", true)  -- float16
 */
#include "lbind.h"

typedef struct lb_trainer {
    ldm_trainer *t;
    /* While ldm_trainer_step/run runs (call_begin .. call_end): the thread running it, the stack
     * index of the trainer userdata there (its user value 1 is the callback) and the stack index
     * of the error value the callback raised (0: none). L is NULL between calls. */
    lua_State *L;
    int self;
    int error;
} lb_trainer;

static lb_trainer *check_trainer(lua_State *L, int idx)
{
    lb_trainer *u = luaL_checkudata(L, idx, LB_TRAINER);
    if (!u->t) luaL_error(L, "trainer is closed");
    if (u->L)
        luaL_error(L, "a call on this trainer is running (this call comes from its callback): a trainer takes one "
                      "call at a time");
    return u;
}

/* the progress as a table {step=, total_steps=, loss=, loss_ema=, seconds=, images_per_second=, phase=} */
static void push_progress(lua_State *L, const ldm_train_progress *p)
{
    lua_createtable(L, 0, 7);
    lua_pushinteger(L, (lua_Integer)p->step);
    lua_setfield(L, -2, "step");
    lua_pushinteger(L, (lua_Integer)p->total_steps);
    lua_setfield(L, -2, "total_steps");
    lua_pushnumber(L, p->loss);
    lua_setfield(L, -2, "loss");
    lua_pushnumber(L, p->loss_ema);
    lua_setfield(L, -2, "loss_ema");
    lua_pushnumber(L, p->seconds);
    lua_setfield(L, -2, "seconds");
    lua_pushnumber(L, p->images_per_second);
    lua_setfield(L, -2, "images_per_second");
    lua_pushstring(L, p->phase ? p->phase : "");
    lua_setfield(L, -2, "phase");
}

/* Runs under lua_pcall: (progress pointer, fn) -> fn(progress table). Building the table may
 * raise (memory), so it happens inside the protected call too. */
static int call_callback(lua_State *L)
{
    const ldm_train_progress *p = lua_touserdata(L, 1);
    lua_pushvalue(L, 2);
    push_progress(L, p);
    lua_call(L, 1, 1);
    return 1;
}

/* The C callback: the Lua function under pcall on the thread running the call (a Lua error
 * must not longjmp through libldm). Non-zero (stop) when it returned true or raised; the error
 * value stays on that thread's stack, where call_end finds it. Pushing a light C function, a
 * light userdata and the user value allocates nothing, so nothing here raises outside pcall. */
static int on_progress(const ldm_train_progress *p, void *user)
{
    lb_trainer *u = user;
    lua_State *L = u->L;
    if (!L) return 0; /* not from a step/run call of this binding */
    if (u->error || !lua_checkstack(L, 4)) return 1;
    lua_pushcfunction(L, call_callback);
    lua_pushlightuserdata(L, (void *)p);
    lua_getiuservalue(L, u->self, 1);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
        u->error = lua_gettop(L);
        return 1;
    }
    int stop = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return stop;
}

static void call_begin(lua_State *L, lb_trainer *u, int idx)
{
    u->L = L;
    u->self = lua_absindex(L, idx);
    u->error = 0;
}

/* ends the call: raises the callback's own error value if it raised one, else lb_check's error */
static void call_end(lua_State *L, lb_trainer *u, ldm_status st, const char *function)
{
    int error = u->error;
    u->L = NULL;
    u->self = 0;
    u->error = 0;
    if (error) {
        lua_pushvalue(L, error);
        lua_error(L);
    }
    lb_check(L, st, function);
}

static int opt_boolean(lua_State *L, int opts, const char *key)
{
    lua_getfield(L, opts, key);
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1)) luaL_error(L, "option '%s': expected a boolean", key);
    int v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* ldm.trainer(config, {data_dir=, out_dir=, first_stage=, init_from=, resume=, max_steps=,
 * max_minutes=, batch_size=, learning_rate=, cond_drop_rate=, save_every=, seed=, n_threads=,
 * max_activation_bytes=, callback=}) */
static int l_trainer(lua_State *L)
{
    static const char *const known[] = {"data_dir",   "out_dir",       "first_stage",    "init_from",  "resume",
                                        "max_steps",  "max_minutes",   "batch_size",     "learning_rate",
                                        "cond_drop_rate", "save_every", "seed",          "n_threads",  "callback",
                                        "max_activation_bytes", NULL};
    lua_settop(L, 2);
    const char *config = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lb_check_options(L, 2, "trainer options", known);
    ldm_train_params p;
    ldm_train_params_init(&p);
    /* the strings stay alive in the options table during the call; the library copies them */
    p.data_dir = lb_opt_string(L, 2, "data_dir", NULL);
    p.out_dir = lb_opt_string(L, 2, "out_dir", NULL);
    p.first_stage = lb_opt_string(L, 2, "first_stage", NULL);
    p.init_from = lb_opt_string(L, 2, "init_from", NULL);
    p.resume = opt_boolean(L, 2, "resume");
    p.max_steps = (int64_t)lb_opt_integer(L, 2, "max_steps", 0); /* a Lua integer is an int64_t */
    p.max_minutes = lb_opt_number(L, 2, "max_minutes", p.max_minutes);
    p.batch_size = lb_opt_int(L, 2, "batch_size", 0);
    p.learning_rate = lb_opt_number(L, 2, "learning_rate", p.learning_rate);
    p.cond_drop_rate = lb_opt_number(L, 2, "cond_drop_rate", p.cond_drop_rate);
    p.save_every = lb_opt_int(L, 2, "save_every", 0);
    p.seed = lb_opt_u64(L, 2, "seed", p.seed);
    p.n_threads = lb_opt_int(L, 2, "n_threads", 0);
    p.max_activation_bytes = lb_opt_u64(L, 2, "max_activation_bytes", 0);
    lua_getfield(L, 2, "callback"); /* index 3 */
    if (!lua_isnil(L, 3) && !lua_isfunction(L, 3)) luaL_error(L, "option 'callback': expected a function");
    lb_trainer *u = lua_newuserdatauv(L, sizeof *u, 1); /* user value 1: the callback */
    u->t = NULL;
    u->L = NULL;
    u->self = u->error = 0;
    luaL_setmetatable(L, LB_TRAINER);
    lua_pushvalue(L, 3);
    lua_setiuservalue(L, -2, 1);
    if (lua_isfunction(L, 3)) {
        p.callback = on_progress;
        p.user_data = u; /* a full userdata does not move */
    }
    lb_check(L, ldm_trainer_create(config, &p, &u->t), "ldm_trainer_create");
    return 1;
}

static int tr_gc(lua_State *L)
{
    lb_trainer *u = luaL_checkudata(L, 1, LB_TRAINER);
    /* from the callback of a running call (not from the collector: the call's stack holds it) */
    if (u->L) return luaL_error(L, "trainer:close(): a call on this trainer is running");
    ldm_trainer_free(u->t);
    u->t = NULL;
    lua_pushnil(L);
    lua_setiuservalue(L, 1, 1); /* drops the callback */
    return 0;
}

static int push_current(lua_State *L, const lb_trainer *u)
{
    ldm_train_progress p;
    lb_check(L, ldm_trainer_progress(u->t, &p), "ldm_trainer_progress");
    push_progress(L, &p);
    return 1;
}

/* t:step([n = 1]) -> progress table; n optimiser steps, no checkpoint */
static int tr_step(lua_State *L)
{
    lua_settop(L, 2);
    lb_trainer *u = check_trainer(L, 1);
    int n = lb_arg_int(L, 2, "step: n", 1, 1);
    call_begin(L, u, 1);
    ldm_status st = ldm_trainer_step(u->t, n);
    call_end(L, u, st, "ldm_trainer_step");
    return push_current(L, u);
}

/* t:run() -> progress table; until max_steps / max_minutes, saving every save_every and at the end */
static int tr_run(lua_State *L)
{
    lua_settop(L, 1);
    lb_trainer *u = check_trainer(L, 1);
    call_begin(L, u, 1);
    ldm_status st = ldm_trainer_run(u->t);
    call_end(L, u, st, "ldm_trainer_run");
    return push_current(L, u);
}

static int tr_save(lua_State *L)
{
    lb_trainer *u = check_trainer(L, 1);
    lb_check(L, ldm_trainer_save(u->t), "ldm_trainer_save");
    return 0;
}

/* t:export(path [, half = false]) */
static int tr_export(lua_State *L)
{
    lua_settop(L, 3);
    lb_trainer *u = check_trainer(L, 1);
    const char *path = luaL_checkstring(L, 2);
    lb_check(L, ldm_trainer_export(u->t, path, lua_toboolean(L, 3)), "ldm_trainer_export");
    return 0;
}

static int tr_progress(lua_State *L) { return push_current(L, check_trainer(L, 1)); }

/* t:interrupt(): a running step/run (this is then its callback) stops after the current step */
static int tr_interrupt(lua_State *L)
{
    lb_trainer *u = luaL_checkudata(L, 1, LB_TRAINER);
    if (u->t) ldm_trainer_interrupt(u->t);
    return 0;
}

void lb_trainer_register(lua_State *L, int module)
{
    static const luaL_Reg methods[] = {{"step", tr_step},         {"run", tr_run},
                                       {"save", tr_save},         {"export", tr_export},
                                       {"progress", tr_progress}, {"interrupt", tr_interrupt},
                                       {"close", tr_gc},          {NULL, NULL}};
    static const luaL_Reg functions[] = {{"trainer", l_trainer}, {NULL, NULL}};
    lb_new_class(L, LB_TRAINER, methods, tr_gc);
    lb_set_functions(L, module, functions);
}
