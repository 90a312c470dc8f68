/* image.c - PNG files and layout tokens: ldm.read_png, ldm.read_png_gray, ldm.write_png,
 * ldm.layout_tokens. */
#include "lbind.h"

/* ldm.read_png(path) -> f32 [1,3,H,W] in [-1,1] */
static int l_read_png(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    ldm_tensor **out = lb_push_tensor_slot(L);
    lb_check(L, ldm_image_read_png(path, out), "ldm_image_read_png");
    return 1;
}

/* ldm.read_png_gray(path [, normalize = true]) -> f32 [1,1,H,W] */
static int l_read_png_gray(lua_State *L)
{
    lua_settop(L, 2);
    const char *path = luaL_checkstring(L, 1);
    int normalize = lua_isnoneornil(L, 2) ? 1 : lua_toboolean(L, 2);
    ldm_tensor **out = lb_push_tensor_slot(L);
    lb_check(L, ldm_image_read_png_gray(path, normalize, out), "ldm_image_read_png_gray");
    return 1;
}

/* ldm.write_png(path, image [, {key = value, ...}]) writes the first image as 8-bit RGB */
static int l_write_png(lua_State *L)
{
    lua_settop(L, 3);
    const char *path = luaL_checkstring(L, 1);
    const ldm_tensor *image = lb_to_tensor(L, 2, LDM_F32, 0);
    int n = 0;
    const char **keys = NULL, **values = NULL;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        for (lua_pushnil(L); lua_next(L, 3); lua_pop(L, 1)) n++;
        if (n > 256) luaL_error(L, "write_png: at most 256 text entries");
        keys = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *keys, 0);
        values = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *values, 0);
        int i = 0; /* the strings stay alive: table 3 holds them */
        for (lua_pushnil(L); lua_next(L, 3); lua_pop(L, 1), i++) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "write_png: text entries must be string = string");
            keys[i] = lua_tostring(L, -2);
            values[i] = lua_tostring(L, -1);
        }
    }
    lb_check(L, ldm_image_write_png(path, image, keys, values, n), "ldm_image_write_png");
    return 0;
}

/* ldm.layout_tokens(json [, no_object_classes = 300]) -> i64 [n, 92] */
static int l_layout_tokens(lua_State *L)
{
    lua_settop(L, 2);
    size_t len;
    const char *json = luaL_checklstring(L, 1, &len);
    int classes = lb_arg_int(L, 2, "layout_tokens: no_object_classes", 1, 300);
    ldm_tensor **out = lb_push_tensor_slot(L);
    lb_check(L, ldm_layout_tokens_from_json(json, len, classes, out), "ldm_layout_tokens_from_json");
    return 1;
}

void lb_image_register(lua_State *L, int module)
{
    static const luaL_Reg functions[] = {{"read_png", l_read_png},
                                         {"read_png_gray", l_read_png_gray},
                                         {"write_png", l_write_png},
                                         {"layout_tokens", l_layout_tokens},
                                         {NULL, NULL}};
    lb_set_functions(L, module, functions);
}
