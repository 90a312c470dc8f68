/* prompt.c - prompts as users write them (docs/prompts.md): ldm.parse_prompt and the option
 * table the prompt calls share.
 *
 *   for _, run in ipairs(ldm.parse_prompt("a (red:1.3) cat BREAK sky")) do
 *       print(run.text, run.weight, run.is_break)
 *   end
 */
#include "lbind.h"

/* {emphasis = bool, comma_backtrack = bool, normalize = bool} (each true when absent) at idx (nil:
 * all defaults) -> LDM_PROMPT_* flags */
unsigned lb_prompt_flags(lua_State *L, int idx)
{
    static const char *const known[] = {"emphasis", "comma_backtrack", "normalize", NULL};
    static const unsigned flag[] = {LDM_PROMPT_NO_EMPHASIS, LDM_PROMPT_NO_COMMA_BACKTRACK, LDM_PROMPT_NO_NORMALIZE};
    unsigned flags = 0;
    if (lua_isnoneornil(L, idx)) return 0;
    lb_check_options(L, idx, "prompt options", known);
    for (int i = 0; known[i]; i++) {
        lua_getfield(L, idx, known[i]);
        if (!lua_isnil(L, -1) && !lua_isboolean(L, -1)) luaL_error(L, "option '%s': expected a boolean", known[i]);
        if (lua_isboolean(L, -1) && !lua_toboolean(L, -1)) flags |= flag[i];
        lua_pop(L, 1);
    }
    return flags;
}

/* ldm.parse_prompt(prompt [, {emphasis = false}]) -> {{text =, weight =, is_break =}, ...} */
static int l_parse_prompt(lua_State *L)
{
    lua_settop(L, 2);
    const char *prompt = luaL_checkstring(L, 1);
    unsigned flags = lb_prompt_flags(L, 2);
    ldm_prompt_runs *runs = NULL;
    lb_check(L, ldm_prompt_parse(prompt, flags, &runs), "ldm_prompt_parse");
    int n = ldm_prompt_runs_count(runs);
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_createtable(L, 0, 3);
        lua_pushstring(L, ldm_prompt_runs_text(runs, i));
        lua_setfield(L, -2, "text");
        lua_pushnumber(L, ldm_prompt_runs_weight(runs, i));
        lua_setfield(L, -2, "weight");
        lua_pushboolean(L, ldm_prompt_runs_is_break(runs, i));
        lua_setfield(L, -2, "is_break");
        lua_rawseti(L, -2, i + 1);
    }
    ldm_prompt_runs_free(runs);
    return 1;
}

void lb_prompt_register(lua_State *L, int module)
{
    static const luaL_Reg functions[] = {{"parse_prompt", l_parse_prompt}, {NULL, NULL}};
    lb_set_functions(L, module, functions);
}
