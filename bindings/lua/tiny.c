/* tiny.c - ldm.tiny_autoencoder userdata: TAESD / TAESDXL on its own (a model's own is set with
 * m:set_tiny_autoencoder(path)).
 *
 *   local tae <close> = ldm.tiny_autoencoder("taesd_decoder.pth" [, threads])
 *   local image = tae:decode(z)      -- diffusion latents [B,4,h,w] -> [B,3,8h,8w] in [-1,1]
 *   local z = tae:encode(image)      -- needs an encoder file (taesd_encoder.pth or diffusers')
 */
#include "lbind.h"

typedef struct lb_tiny {
    ldm_tiny_autoencoder *t;
} lb_tiny;

static int l_tiny(lua_State *L)
{
    lua_settop(L, 2);
    const char *path = luaL_checkstring(L, 1);
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    mp.n_threads = lb_arg_int(L, 2, "tiny_autoencoder: threads", 1, 0);
    lb_tiny *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->t = NULL;
    luaL_setmetatable(L, LB_TINY);
    lb_check(L, ldm_tiny_autoencoder_load(path, &mp, &u->t), "ldm_tiny_autoencoder_load");
    return 1;
}

static ldm_tiny_autoencoder *check_tiny(lua_State *L)
{
    lb_tiny *u = luaL_checkudata(L, 1, LB_TINY);
    if (!u->t) luaL_error(L, "tiny autoencoder is closed");
    return u->t;
}

static int tiny_gc(lua_State *L)
{
    lb_tiny *u = luaL_checkudata(L, 1, LB_TINY);
    ldm_tiny_autoencoder_free(u->t);
    u->t = NULL;
    return 0;
}

static int tiny_run(lua_State *L, int decode)
{
    lua_settop(L, 2);
    ldm_tiny_autoencoder *t = check_tiny(L);
    const ldm_tensor *x = lb_to_tensor(L, 2, LDM_F32, 0);
    ldm_tensor **out = lb_push_tensor_slot(L);
    if (decode)
        lb_check(L, ldm_tiny_autoencoder_decode(t, x, out), "ldm_tiny_autoencoder_decode");
    else
        lb_check(L, ldm_tiny_autoencoder_encode(t, x, out), "ldm_tiny_autoencoder_encode");
    return 1;
}

static int tiny_decode(lua_State *L)
{
    return tiny_run(L, 1);
}
static int tiny_encode(lua_State *L)
{
    return tiny_run(L, 0);
}

static int tiny_has_encoder(lua_State *L)
{
    lua_pushboolean(L, ldm_tiny_autoencoder_has_encoder(check_tiny(L)));
    return 1;
}

static int tiny_has_decoder(lua_State *L)
{
    lua_pushboolean(L, ldm_tiny_autoencoder_has_decoder(check_tiny(L)));
    return 1;
}

static int tiny_latent_channels(lua_State *L)
{
    lua_pushinteger(L, ldm_tiny_autoencoder_latent_channels(check_tiny(L)));
    return 1;
}

void lb_tiny_register(lua_State *L, int module)
{
    static const luaL_Reg methods[] = {{"decode", tiny_decode},
                                       {"encode", tiny_encode},
                                       {"has_encoder", tiny_has_encoder},
                                       {"has_decoder", tiny_has_decoder},
                                       {"latent_channels", tiny_latent_channels},
                                       {"close", tiny_gc},
                                       {NULL, NULL}};
    static const luaL_Reg functions[] = {{"tiny_autoencoder", l_tiny}, {NULL, NULL}};
    lb_new_class(L, LB_TINY, methods, tiny_gc);
    lb_set_functions(L, module, functions);
}
