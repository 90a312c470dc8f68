/* tokenizer.c - ldm.tokenizer userdata: prompts to token ids without a model.
 *
 *   local tok <close> = ldm.tokenizer("clip", "bpe_simple_vocab_16e6.txt.gz")
 *   local ids = tok:encode({"a photo of a cat"})      -- i64 tensor [1,77]
 */
#include "lbind.h"

typedef struct lb_tokenizer {
    ldm_tokenizer *tok;
} lb_tokenizer;

/* ldm.tokenizer("clip" | "openclip" | "bert", vocab_path) */
static int l_tokenizer(lua_State *L)
{
    lua_settop(L, 2);
    static const char *const kinds[] = {"clip", "openclip", "bert", NULL};
    ldm_tokenizer_kind kind = (ldm_tokenizer_kind)luaL_checkoption(L, 1, NULL, kinds);
    const char *vocab = luaL_checkstring(L, 2);
    lb_tokenizer *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->tok = NULL;
    luaL_setmetatable(L, LB_TOKENIZER);
    lb_check(L, ldm_tokenizer_load(kind, vocab, &u->tok), "ldm_tokenizer_load");
    return 1;
}

static int tok_gc(lua_State *L)
{
    lb_tokenizer *u = luaL_checkudata(L, 1, LB_TOKENIZER);
    ldm_tokenizer_free(u->tok);
    u->tok = NULL;
    return 0;
}

/* tok:encode(prompt or {prompts} [, context_length = 77]) -> i64 [n, context_length] */
static int tok_encode(lua_State *L)
{
    lua_settop(L, 3);
    lb_tokenizer *u = luaL_checkudata(L, 1, LB_TOKENIZER);
    if (!u->tok) luaL_error(L, "tokenizer is closed");
    int n = 0;
    const char *const *prompts = lb_strings(L, 2, &n);
    int ctx = lb_arg_int(L, 3, "encode: context_length", 1, 77);
    ldm_tensor **out = lb_push_tensor_slot(L);
    lb_check(L, ldm_tokenizer_encode(u->tok, prompts, n, ctx, out), "ldm_tokenizer_encode");
    return 1;
}

/* tok:encode_prompt(prompt [, context_length = 77 [, {emphasis =, comma_backtrack =}]]) -> ids i64
 * [n_chunks, context_length], weights f32 [n_chunks, context_length] (docs/prompts.md) */
static int tok_encode_prompt(lua_State *L)
{
    lua_settop(L, 4);
    lb_tokenizer *u = luaL_checkudata(L, 1, LB_TOKENIZER);
    if (!u->tok) luaL_error(L, "tokenizer is closed");
    const char *prompt = luaL_checkstring(L, 2);
    int ctx = lb_arg_int(L, 3, "encode_prompt: context_length", 1, 77);
    unsigned flags = lb_prompt_flags(L, 4);
    ldm_tensor **ids = lb_push_tensor_slot(L);
    ldm_tensor **weights = lb_push_tensor_slot(L);
    lb_check(L, ldm_tokenizer_encode_prompt(u->tok, prompt, ctx, flags, ids, weights), "ldm_tokenizer_encode_prompt");
    return 2;
}

void lb_tokenizer_register(lua_State *L, int module)
{
    static const luaL_Reg methods[] = {
        {"encode", tok_encode}, {"encode_prompt", tok_encode_prompt}, {"close", tok_gc}, {NULL, NULL}};
    static const luaL_Reg functions[] = {{"tokenizer", l_tokenizer}, {NULL, NULL}};
    lb_new_class(L, LB_TOKENIZER, methods, tok_gc);
    lb_set_functions(L, module, functions);
}
