/* module.c - luaopen_ldm: the `ldm` table, shared helpers (errors, classes, options, strings). */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "lbind.h"

void lb_check(lua_State *L, ldm_status st, const char *function)
{
    if (st == LDM_OK) return;
    const char *msg = ldm_last_error();
    luaL_error(L, "%s: %s (%s)", function, msg && msg[0] ? msg : ldm_status_string(st), ldm_status_string(st));
}

void lb_new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc)
{
    luaL_newmetatable(L, name);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__close");
    lua_pop(L, 1);
}

void lb_set_functions(lua_State *L, int module, const luaL_Reg *functions)
{
    for (const luaL_Reg *f = functions; f->name; f++) {
        lua_pushcfunction(L, f->func);
        lua_setfield(L, module, f->name);
    }
}

lua_Integer lb_opt_integer(lua_State *L, int opts, const char *key, lua_Integer def)
{
    lua_getfield(L, opts, key);
    int ok;
    lua_Integer v = lua_tointegerx(L, -1, &ok);
    if (!ok && !lua_isnil(L, -1)) luaL_error(L, "option '%s': expected an integer", key);
    lua_pop(L, 1);
    return ok ? v : def;
}

lua_Integer lb_range(lua_State *L, lua_Integer v, lua_Integer min, lua_Integer max, const char *name, const char *ctype)
{
    if (v < min || v > max)
        luaL_error(L, "%s = %I is out of range: it is passed as a C %s (%I..%I)", name, v, ctype, min, max);
    return v;
}

int lb_opt_int(lua_State *L, int opts, const char *key, int def)
{
    char name[64];
    snprintf(name, sizeof name, "option '%s'", key);
    return (int)lb_range(L, lb_opt_integer(L, opts, key, def), INT_MIN, INT_MAX, name, "int");
}

uint64_t lb_opt_u64(lua_State *L, int opts, const char *key, uint64_t def)
{
    char name[64];
    snprintf(name, sizeof name, "option '%s'", key);
    lua_getfield(L, opts, key);
    int absent = lua_isnil(L, -1);
    lua_pop(L, 1);
    if (absent) return def;
    return (uint64_t)lb_range(L, lb_opt_integer(L, opts, key, 0), 0, LUA_MAXINTEGER, name, "uint64_t");
}

size_t lb_opt_size(lua_State *L, int opts, const char *key, size_t def)
{
    char name[64];
    snprintf(name, sizeof name, "option '%s'", key);
    lua_getfield(L, opts, key);
    int absent = lua_isnil(L, -1);
    lua_pop(L, 1);
    if (absent) return def;
    lua_Integer max = SIZE_MAX < (size_t)LUA_MAXINTEGER ? (lua_Integer)SIZE_MAX : LUA_MAXINTEGER;
    return (size_t)lb_range(L, lb_opt_integer(L, opts, key, 0), 0, max, name, "size_t");
}

/* the integer argument `arg`, or an error naming it (luaL_checkinteger names only its position) */
static lua_Integer arg_integer(lua_State *L, int arg, const char *name)
{
    int ok;
    lua_Integer v = lua_tointegerx(L, arg, &ok);
    if (!ok) luaL_error(L, "%s: expected an integer, got %s", name, lua_isnumber(L, arg) ? "a number out of the integer range or with a fraction" : luaL_typename(L, arg));
    return v;
}

int lb_arg_int(lua_State *L, int arg, const char *name, int optional, int def)
{
    if (optional && lua_isnoneornil(L, arg)) return def;
    return (int)lb_range(L, arg_integer(L, arg, name), INT_MIN, INT_MAX, name, "int");
}

uint64_t lb_arg_u64(lua_State *L, int arg, const char *name, int optional, uint64_t def)
{
    if (optional && lua_isnoneornil(L, arg)) return def;
    return (uint64_t)lb_range(L, arg_integer(L, arg, name), 0, LUA_MAXINTEGER, name, "uint64_t");
}

double lb_opt_number(lua_State *L, int opts, const char *key, double def)
{
    lua_getfield(L, opts, key);
    if (!lua_isnil(L, -1) && !lua_isnumber(L, -1)) luaL_error(L, "option '%s': expected a number", key);
    double v = lua_isnil(L, -1) ? def : lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

const char *lb_opt_string(lua_State *L, int opts, const char *key, const char *def)
{
    lua_getfield(L, opts, key);
    if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "option '%s': expected a string", key);
    const char *v = lua_isnil(L, -1) ? def : lua_tostring(L, -1);
    lua_pop(L, 1);
    return v;
}

int lb_opt_choice(lua_State *L, int opts, const char *key, const char *def, const char *const *names)
{
    const char *v = lb_opt_string(L, opts, key, def);
    for (int i = 0; names[i]; i++)
        if (!strcmp(v, names[i])) return i;
    return luaL_error(L, "option '%s': '%s' is not one of the accepted values", key, v);
}

void lb_check_options(lua_State *L, int idx, const char *what, const char *const *known)
{
    idx = lua_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        const char *key = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        int ok = 0;
        for (int i = 0; key && known[i]; i++) ok |= !strcmp(key, known[i]);
        if (!ok) luaL_error(L, "%s: unknown option '%s'", what, key ? key : luaL_typename(L, -1));
    }
}

ldm_sampler_kind lb_sampler_kind(lua_State *L, const char *name)
{
    static const char *const names[] = {"ddim", "plms", "ddpm", "euler", "euler_a", "heun", "dpmpp_2m",
                                        "dpmpp_2m_karras", "lcm", NULL};
    static const ldm_sampler_kind kinds[] = {LDM_SAMPLER_DDIM, LDM_SAMPLER_PLMS, LDM_SAMPLER_DDPM,
                                             LDM_SAMPLER_EULER, LDM_SAMPLER_EULER_ANCESTRAL, LDM_SAMPLER_HEUN,
                                             LDM_SAMPLER_DPMPP_2M, LDM_SAMPLER_DPMPP_2M_KARRAS, LDM_SAMPLER_LCM};
    for (int i = 0; names[i]; i++)
        if (!strcmp(name, names[i])) return kinds[i];
    luaL_error(L, "unknown sampler '%s' (ddim, plms, ddpm, euler, euler_a, heun, dpmpp_2m, dpmpp_2m_karras, lcm)",
               name);
    return LDM_SAMPLER_DDIM;
}

const char *const *lb_strings(lua_State *L, int idx, int *n)
{
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) == LUA_TSTRING) {
        const char **arr = lua_newuserdatauv(L, sizeof *arr, 1);
        lua_pushvalue(L, idx);
        lua_setiuservalue(L, -2, 1); /* keeps the string alive with the array */
        arr[0] = lua_tostring(L, idx);
        *n = 1;
        return arr;
    }
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_Integer len = luaL_len(L, idx);
    if (len < 1 || len > 4096) luaL_error(L, "expected 1..4096 strings, got %d", (int)len);
    const char **arr = lua_newuserdatauv(L, (size_t)len * sizeof *arr, 1);
    lua_pushvalue(L, idx);
    lua_setiuservalue(L, -2, 1); /* the table keeps its strings alive */
    for (lua_Integer i = 1; i <= len; i++) {
        if (lua_rawgeti(L, idx, i) != LUA_TSTRING) luaL_error(L, "string %d: expected a string", (int)i);
        arr[i - 1] = lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    *n = (int)len;
    return arr;
}

/* ldm.set_thread_max_alloc(n) -> the previous cap (0: none) of this thread's allocations */
static int l_set_thread_max_alloc(lua_State *L)
{
    int ok;
    lua_Integer v = lua_tointegerx(L, 1, &ok);
    if (!ok) luaL_error(L, "set_thread_max_alloc: expected an integer");
    lua_Integer max = SIZE_MAX < (size_t)LUA_MAXINTEGER ? (lua_Integer)SIZE_MAX : LUA_MAXINTEGER;
    size_t previous = ldm_set_thread_max_alloc((size_t)lb_range(L, v, 0, max, "set_thread_max_alloc: n", "size_t"));
    lua_pushinteger(L, previous > (size_t)LUA_MAXINTEGER ? LUA_MAXINTEGER : (lua_Integer)previous);
    return 1;
}

static int l_version(lua_State *L)
{
    lua_pushstring(L, ldm_version());
    lua_pushinteger(L, ldm_version_number());
    return 2;
}

static int l_cpu_info(lua_State *L)
{
    lua_pushstring(L, ldm_cpu_info());
    return 1;
}

__attribute__((visibility("default"))) int luaopen_ldm(lua_State *L);

int luaopen_ldm(lua_State *L)
{
    lua_newtable(L);
    int module = lua_gettop(L);
    lua_pushcfunction(L, l_version);
    lua_setfield(L, module, "version");
    lua_pushcfunction(L, l_cpu_info);
    lua_setfield(L, module, "cpu_info");
    lua_pushstring(L, LDM_VERSION_STRING);
    lua_setfield(L, module, "VERSION"); /* the header this module was built against */
    lua_pushcfunction(L, l_set_thread_max_alloc);
    lua_setfield(L, module, "set_thread_max_alloc");
    lua_pushinteger(L, LDM_UNCOND_CLASS_AUTO);
    lua_setfield(L, module, "UNCOND_CLASS_AUTO");
    lua_pushinteger(L, LDM_UNCOND_CLASS_NONE);
    lua_setfield(L, module, "UNCOND_CLASS_NONE");
    lb_tensor_register(L, module);
    lb_model_register(L, module);
    lb_components_register(L);
    lb_sampler_register(L, module);
    lb_tokenizer_register(L, module);
    lb_prompt_register(L, module);
    lb_trainer_register(L, module);
    lb_image_register(L, module);
    lb_tiny_register(L, module);
    return 1;
}
