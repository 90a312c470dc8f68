/* lbind.h - the Lua 5.4 binding's internal interface (module `ldm`, built as ldm.so).
 *
 * Every library object lives in a full userdata with __gc and __close metamethods, so whatever a
 * Lua error unwinds past is freed by the collector: the binding never holds a C-only pointer
 * across a call that may raise. Errors are raised only after the library call has returned (a Lua
 * error must never longjmp through libldm's frames); progress and abort callbacks run under
 * lua_pcall for the same reason. Functions that convert arguments start with lua_settop(L, <argument count>):
 * converted tensors are pushed above the arguments, where an absent optional argument's slot
 * would otherwise find them. Uses only the public API (include/ldm.h). */
#ifndef LBIND_H
#define LBIND_H

#include <lauxlib.h>
#include <lua.h>

#include "ldm.h"

/* metatable names */
#define LB_TENSOR "ldm.tensor"
#define LB_MODEL "ldm.model"
#define LB_AUTOENCODER "ldm.autoencoder"
#define LB_UNET "ldm.unet"
#define LB_CONDITIONER "ldm.conditioner"
#define LB_SAMPLER "ldm.sampler"
#define LB_TOKENIZER "ldm.tokenizer"
#define LB_TRAINER "ldm.trainer"

/* errors: raises "<function>: <ldm_last_error()> (<status name>)" unless st is LDM_OK */
void lb_check(lua_State *L, ldm_status st, const char *function);

/* module[name] = function for each entry */
void lb_set_functions(lua_State *L, int module, const luaL_Reg *functions);
/* a metatable with methods, __index = methods, and __gc/__close = gc (both may run twice) */
void lb_new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc);

/* tensors (tensor.c) */
typedef struct lb_tensor {
    ldm_tensor *t;
} lb_tensor;

/* Pushes an empty tensor userdata whose slot the caller fills (a library call's output). */
ldm_tensor **lb_push_tensor_slot(lua_State *L);
/* Pushes the tensor userdata for a result (NULL pushes nil); the userdata owns it. */
void lb_push_tensor(lua_State *L, ldm_tensor *t);
/* The tensor at idx: a tensor userdata, a number (a [1] tensor) or a (nested) table of numbers
 * converted to `dtype`; converted values are pushed as a new userdata (left on the stack, so the
 * collector frees them). nil gives NULL when `optional`. */
ldm_tensor *lb_to_tensor(lua_State *L, int idx, ldm_dtype dtype, int optional);
/* A [n] tensor from a table of integers or a number, for timesteps: I64 when every value is an
 * integer, else F32 (fractional k-sampler timesteps); `n` copies when idx holds one number. */
ldm_tensor *lb_to_timesteps(lua_State *L, int idx, int64_t n);
/* registers the class and its module functions (ldm.tensor, ldm.randn, ldm.posterior_split) */
void lb_tensor_register(lua_State *L, int module);

/* models and components (model.c, components.c) */
typedef struct lb_model {
    ldm_model *m;
    /* While a library call on the model runs (LB_MODEL_CALL), for its abort callback (the Lua
     * function in the model userdata's user value 1): the thread running the call, the stack index
     * of the model userdata there, and the stack index of the error value the function raised
     * (0: none). L is NULL between calls. */
    lua_State *L;
    int self;
    int error;
} lb_model;
/* the open model at idx, with no call on it running (error when closed, or when called from a
 * callback of a running call on it: the library takes one call at a time per model) */
ldm_model *lb_check_model(lua_State *L, int idx);
/* raises when a call on the model runs (a callback's attempt at a second one) */
void lb_model_check_idle(lua_State *L, const lb_model *u);

/* A library call that may poll the abort callback of the model whose userdata is at model_idx
 * (every call that computes): LB_MODEL_CALL(L, 1, ldm_model_apply(m, ...), "ldm_model_apply").
 * Runs `call` with the callback able to run Lua on L, then raises the callback's own error value
 * if it raised one, else what lb_check raises for the status. Like lb_check, raising happens only
 * after the library has returned. While it runs the model is busy: any other call on the model or
 * its components (from a callback, or a coroutine resumed there) raises before reaching the
 * library. */
typedef struct lb_call {
    lb_model *u;
} lb_call;
/* raises (before anything starts) when a call on the model already runs */
void lb_call_begin(lua_State *L, lb_call *c, int model_idx);
/* ends the call begun by lb_call_begin; raises the callback's error when it raised one */
void lb_call_end(lua_State *L, lb_call *c);
#define LB_MODEL_CALL(L, model_idx, call, function)                                                                    \
    do {                                                                                                               \
        lb_call lb_call_;                                                                                              \
        lb_call_begin((L), &lb_call_, (model_idx));                                                                    \
        ldm_status lb_status_ = (call);                                                                                \
        lb_call_end((L), &lb_call_);                                                                                   \
        lb_check((L), lb_status_, (function));                                                                         \
    } while (0)
void lb_model_register(lua_State *L, int module);
void lb_components_register(lua_State *L);
/* pushes a component userdata of class `name` bound to the model at model_idx */
void lb_push_component(lua_State *L, const char *name, void *handle, int model_idx);

/* samplers and tokenizers (sampler.c, tokenizer.c) */
void lb_sampler_register(lua_State *L, int module);
/* fills p from an options table {kind=, steps=, eta=, quad=, seed=} (nil: defaults) */
void lb_sampler_params(lua_State *L, int opts, ldm_sampler_params *p);
void lb_push_sampler(lua_State *L, ldm_sampler *s);
void lb_tokenizer_register(lua_State *L, int module);
/* prompt syntax: ldm.parse_prompt (prompt.c); the flags of a prompt option table
 * {emphasis =, comma_backtrack =, normalize =} at idx (nil: defaults) */
void lb_prompt_register(lua_State *L, int module);
unsigned lb_prompt_flags(lua_State *L, int idx);
/* training runs: ldm.trainer (trainer.c) */
void lb_trainer_register(lua_State *L, int module);

/* images and layouts (image.c) */
void lb_image_register(lua_State *L, int module);

/* opts[key] of an option table (the table on the stack keeps returned strings alive); nil gives
 * def, a value of the wrong type raises naming the option */
lua_Integer lb_opt_integer(lua_State *L, int opts, const char *key, lua_Integer def);
/* Integers crossing into C, checked against the C type they are passed as: a value out of its
 * range raises naming it (never the low bits: steps = 2^32 + 1 is not 1 step). Seeds and streams
 * are uint64_t, so negative ones are errors (Lua integers stop at 2^63 - 1). */
int lb_opt_int(lua_State *L, int opts, const char *key, int def);
uint64_t lb_opt_u64(lua_State *L, int opts, const char *key, uint64_t def);
size_t lb_opt_size(lua_State *L, int opts, const char *key, size_t def);
/* the same for positional argument `arg` named `name` (absent: def when optional, else an error) */
int lb_arg_int(lua_State *L, int arg, const char *name, int optional, int def);
uint64_t lb_arg_u64(lua_State *L, int arg, const char *name, int optional, uint64_t def);
/* raises unless min <= v <= max, naming `name` */
lua_Integer lb_range(lua_State *L, lua_Integer v, lua_Integer min, lua_Integer max, const char *name, const char *ctype);
double lb_opt_number(lua_State *L, int opts, const char *key, double def);
const char *lb_opt_string(lua_State *L, int opts, const char *key, const char *def);
/* the index of opts[key] (default def) in the NULL-terminated names */
int lb_opt_choice(lua_State *L, int opts, const char *key, const char *def, const char *const *names);
/* option tables: raises on a key not in `known` (NULL-terminated), catching typos */
void lb_check_options(lua_State *L, int idx, const char *what, const char *const *known);
/* a sampler kind by name ("ddim", "plms", "ddpm", "euler", "euler_a", "heun", "dpmpp_2m",
 * "dpmpp_2m_karras") */
ldm_sampler_kind lb_sampler_kind(lua_State *L, const char *name);
/* a table of strings (or one string) as a C array on the Lua stack (a userdata); *n its length */
const char *const *lb_strings(lua_State *L, int idx, int *n);

#endif
