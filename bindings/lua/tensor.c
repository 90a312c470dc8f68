/* tensor.c - ldm.tensor userdata: tensors from/to Lua strings (raw native-endian float32 / int64
 * bytes) and tables of numbers, plus ldm.randn and ldm.posterior_split.
 *
 *   local t = ldm.tensor({1, 3, 64, 64}, data [, "f32" | "i64"])  -- data: string, table or nil
 *   t:shape() -> {1, 3, 64, 64};  t:dtype() -> "f32";  #t / t:numel();  t:bytes();  t:totable()
 */
#include <math.h>
#include <string.h>

#include "lbind.h"

static size_t elem_size(ldm_dtype d) { return d == LDM_I64 ? 8 : 4; }

ldm_tensor **lb_push_tensor_slot(lua_State *L)
{
    lb_tensor *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->t = NULL;
    luaL_setmetatable(L, LB_TENSOR);
    return &u->t;
}

void lb_push_tensor(lua_State *L, ldm_tensor *t)
{
    if (!t) {
        lua_pushnil(L);
        return;
    }
    *lb_push_tensor_slot(L) = t;
}

static ldm_tensor *check_tensor(lua_State *L, int idx)
{
    lb_tensor *u = luaL_checkudata(L, idx, LB_TENSOR);
    if (!u->t) luaL_error(L, "tensor is closed");
    return u->t;
}

static int shape_of_table(lua_State *L, int idx, int64_t *shape)
{
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_Integer n = luaL_len(L, idx);
    if (n < 0 || n > LDM_MAX_DIMS) luaL_error(L, "tensor rank %d outside 0..%d", (int)n, LDM_MAX_DIMS);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, i);
        int ok;
        lua_Integer d = lua_tointegerx(L, -1, &ok);
        if (!ok || d < 0) luaL_error(L, "shape[%d]: expected a non-negative integer", (int)i);
        shape[i - 1] = d;
        lua_pop(L, 1);
    }
    return (int)n;
}

/* Stores the number at the stack top as element i of t (I64 tensors need integers). */
static void store_number(lua_State *L, ldm_tensor *t, int64_t i)
{
    if (ldm_tensor_dtype(t) == LDM_I64) {
        int ok;
        lua_Integer v = lua_tointegerx(L, -1, &ok);
        if (!ok) luaL_error(L, "element %d: expected an integer for an i64 tensor", (int)(i + 1));
        ((int64_t *)ldm_tensor_data(t))[i] = v;
    } else {
        if (!lua_isnumber(L, -1)) luaL_error(L, "element %d: expected a number", (int)(i + 1));
        ((float *)ldm_tensor_data(t))[i] = (float)lua_tonumber(L, -1);
    }
}

/* Walks a nested table of numbers row-major, checking it is rectangular. */
static void fill_nested(lua_State *L, int idx, ldm_tensor *t, int depth, int64_t *pos)
{
    int ndim = ldm_tensor_ndim(t);
    if (depth == ndim) {
        store_number(L, t, (*pos)++);
        return;
    }
    if (!lua_istable(L, idx) || luaL_len(L, idx) != ldm_tensor_dim(t, depth))
        luaL_error(L, "ragged table: not a tensor");
    for (int64_t i = 1; i <= ldm_tensor_dim(t, depth); i++) {
        lua_rawgeti(L, idx, i);
        fill_nested(L, lua_gettop(L), t, depth + 1, pos);
        lua_pop(L, 1);
    }
}

static int nested_shape(lua_State *L, int idx, int64_t *shape)
{
    int n = 0;
    lua_pushvalue(L, idx);
    while (lua_istable(L, -1)) {
        if (n == LDM_MAX_DIMS) luaL_error(L, "table nested deeper than %d levels", LDM_MAX_DIMS);
        shape[n++] = luaL_len(L, -1);
        lua_rawgeti(L, -1, 1);
        lua_remove(L, -2);
    }
    lua_pop(L, 1);
    return n;
}

ldm_tensor *lb_to_tensor(lua_State *L, int idx, ldm_dtype dtype, int optional)
{
    idx = lua_absindex(L, idx);
    if (optional && lua_isnoneornil(L, idx)) return NULL;
    if (lua_isuserdata(L, idx)) return check_tensor(L, idx);
    int64_t shape[LDM_MAX_DIMS] = {1};
    int ndim = lua_type(L, idx) == LUA_TNUMBER ? 1 : (luaL_checktype(L, idx, LUA_TTABLE), nested_shape(L, idx, shape));
    ldm_tensor **slot = lb_push_tensor_slot(L);
    lb_check(L, ldm_tensor_create(dtype, ndim, shape, slot), "ldm_tensor_create");
    int64_t pos = 0;
    if (lua_type(L, idx) == LUA_TNUMBER) {
        lua_pushvalue(L, idx);
        store_number(L, *slot, 0);
        lua_pop(L, 1);
    } else {
        fill_nested(L, idx, *slot, 0, &pos);
    }
    return *slot;
}

ldm_tensor *lb_to_timesteps(lua_State *L, int idx, int64_t n)
{
    idx = lua_absindex(L, idx);
    if (lua_isuserdata(L, idx)) return check_tensor(L, idx);
    int is_table = lua_istable(L, idx);
    if (!is_table && !lua_isnumber(L, idx)) luaL_error(L, "timesteps: expected a number, a table or a tensor");
    int64_t len = is_table ? luaL_len(L, idx) : n;
    int fractional = 0;
    for (int64_t i = 1; i <= len; i++) {
        if (is_table) lua_rawgeti(L, idx, i);
        else lua_pushvalue(L, idx);
        if (!lua_isnumber(L, -1)) luaL_error(L, "timesteps[%d]: expected a number", (int)i);
        double v = lua_tonumber(L, -1);
        int integral;
        lua_tointegerx(L, -1, &integral);
        if (v == floor(v) && !integral) luaL_error(L, "timesteps[%d] = %f is out of the int64 range", (int)i, v);
        fractional |= v != floor(v);
        lua_pop(L, 1);
    }
    ldm_tensor **slot = lb_push_tensor_slot(L);
    lb_check(L, ldm_tensor_create(fractional ? LDM_F32 : LDM_I64, 1, &len, slot), "ldm_tensor_create");
    for (int64_t i = 0; i < len; i++) {
        if (is_table) lua_rawgeti(L, idx, i + 1);
        else lua_pushvalue(L, idx);
        if (fractional) ((float *)ldm_tensor_data(*slot))[i] = (float)lua_tonumber(L, -1);
        else ((int64_t *)ldm_tensor_data(*slot))[i] = lua_tointeger(L, -1); /* integral: checked above */
        lua_pop(L, 1);
    }
    return *slot;
}

/* ldm.tensor(shape, data, dtype) */
static int l_tensor(lua_State *L)
{
    lua_settop(L, 3);
    int64_t shape[LDM_MAX_DIMS];
    int ndim = shape_of_table(L, 1, shape);
    const char *dt = luaL_optstring(L, 3, "f32");
    if (strcmp(dt, "f32") && strcmp(dt, "i64")) luaL_error(L, "dtype '%s': expected \"f32\" or \"i64\"", dt);
    ldm_dtype dtype = dt[0] == 'i' ? LDM_I64 : LDM_F32;
    ldm_tensor **slot = lb_push_tensor_slot(L);
    lb_check(L, ldm_tensor_create(dtype, ndim, shape, slot), "ldm_tensor_create");
    size_t bytes = (size_t)ldm_tensor_numel(*slot) * elem_size(dtype);
    if (lua_type(L, 2) == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, 2, &len);
        if (len != bytes) luaL_error(L, "tensor data: %d bytes given, the shape needs %d", (int)len, (int)bytes);
        if (bytes) memcpy(ldm_tensor_data(*slot), s, bytes);
    } else if (lua_istable(L, 2)) {
        if (luaL_len(L, 2) != ldm_tensor_numel(*slot))
            luaL_error(L, "tensor data: %d values given, the shape needs %d", (int)luaL_len(L, 2),
                       (int)ldm_tensor_numel(*slot));
        for (int64_t i = 0; i < ldm_tensor_numel(*slot); i++) {
            lua_rawgeti(L, 2, i + 1);
            store_number(L, *slot, i);
            lua_pop(L, 1);
        }
    } else if (!lua_isnoneornil(L, 2)) {
        luaL_error(L, "tensor data: expected a string of raw bytes, a table of numbers or nil");
    }
    return 1;
}

static int t_shape(lua_State *L)
{
    ldm_tensor *t = check_tensor(L, 1);
    lua_createtable(L, ldm_tensor_ndim(t), 0);
    for (int i = 0; i < ldm_tensor_ndim(t); i++) {
        lua_pushinteger(L, ldm_tensor_dim(t, i));
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static int t_dtype(lua_State *L)
{
    lua_pushstring(L, ldm_tensor_dtype(check_tensor(L, 1)) == LDM_I64 ? "i64" : "f32");
    return 1;
}

static int t_numel(lua_State *L)
{
    lua_pushinteger(L, ldm_tensor_numel(check_tensor(L, 1)));
    return 1;
}

static int t_bytes(lua_State *L)
{
    ldm_tensor *t = check_tensor(L, 1);
    size_t n = (size_t)ldm_tensor_numel(t) * elem_size(ldm_tensor_dtype(t));
    lua_pushlstring(L, n ? ldm_tensor_data(t) : "", n);
    return 1;
}

/* The values as a flat table (row-major), 1-based. */
static int t_totable(lua_State *L)
{
    ldm_tensor *t = check_tensor(L, 1);
    int64_t n = ldm_tensor_numel(t);
    if (n > INT32_MAX) luaL_error(L, "tensor too large for a table");
    lua_createtable(L, (int)n, 0);
    for (int64_t i = 0; i < n; i++) {
        if (ldm_tensor_dtype(t) == LDM_I64) lua_pushinteger(L, ((int64_t *)ldm_tensor_data(t))[i]);
        else lua_pushnumber(L, ((float *)ldm_tensor_data(t))[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static int t_tostring(lua_State *L)
{
    lb_tensor *u = luaL_checkudata(L, 1, LB_TENSOR);
    if (!u->t) {
        lua_pushstring(L, "ldm.tensor (closed)");
        return 1;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, ldm_tensor_dtype(u->t) == LDM_I64 ? "ldm.tensor i64 " : "ldm.tensor f32 ");
    for (int i = 0; i < ldm_tensor_ndim(u->t); i++) {
        if (i) luaL_addchar(&b, 'x');
        lua_pushinteger(L, ldm_tensor_dim(u->t, i));
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    return 1;
}

static int t_gc(lua_State *L)
{
    lb_tensor *u = luaL_checkudata(L, 1, LB_TENSOR);
    ldm_tensor_free(u->t);
    u->t = NULL;
    return 0;
}

/* ldm.randn(seed, stream, shape) -> f32 tensor of the library's reproducible normal noise */
static int l_randn(lua_State *L)
{
    lua_settop(L, 3);
    uint64_t seed = lb_arg_u64(L, 1, "randn: seed", 0, 0), stream = lb_arg_u64(L, 2, "randn: stream", 0, 0);
    int64_t shape[LDM_MAX_DIMS];
    int ndim = shape_of_table(L, 3, shape);
    ldm_tensor **slot = lb_push_tensor_slot(L);
    lb_check(L, ldm_tensor_create(LDM_F32, ndim, shape, slot), "ldm_tensor_create");
    lb_check(L, ldm_randn(seed, stream, *slot), "ldm_randn");
    return 1;
}

/* ldm.posterior_split(moments) -> mean, logvar, std */
static int l_posterior_split(lua_State *L)
{
    lua_settop(L, 1);
    ldm_tensor *moments = lb_to_tensor(L, 1, LDM_F32, 0);
    ldm_tensor **mean = lb_push_tensor_slot(L), **logvar = lb_push_tensor_slot(L), **std = lb_push_tensor_slot(L);
    lb_check(L, ldm_posterior_split(moments, mean, logvar, std), "ldm_posterior_split");
    return 3;
}

void lb_tensor_register(lua_State *L, int module)
{
    static const luaL_Reg methods[] = {{"shape", t_shape}, {"dtype", t_dtype},     {"numel", t_numel},
                                       {"bytes", t_bytes}, {"totable", t_totable}, {"close", t_gc},
                                       {NULL, NULL}};
    lb_new_class(L, LB_TENSOR, methods, t_gc);
    luaL_getmetatable(L, LB_TENSOR);
    lua_pushcfunction(L, t_numel);
    lua_setfield(L, -2, "__len");
    lua_pushcfunction(L, t_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    static const luaL_Reg functions[] = {{"tensor", l_tensor}, {"randn", l_randn},
                                         {"posterior_split", l_posterior_split}, {NULL, NULL}};
    lb_set_functions(L, module, functions);
}
