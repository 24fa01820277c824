/*
** internal.h — what the runtime's C files share and nothing else sees.
*/
#ifndef HRUN_INTERNAL_H
#define HRUN_INTERNAL_H

#include "hrun/hrun.h"

/* Per-state runtime data; a userdata anchored in the registry, its address kept in
** the state's extra space so the dispatcher finds it without a table lookup. */
typedef struct hrun_Runtime {
    hrun_Hooks hooks;
    hrun_Options options;
} hrun_Runtime;

static inline hrun_Runtime *hrun_runtime(lua_State *L)
{
    return *(hrun_Runtime **)lua_getextraspace(L);
}

/* The Levenshtein-nearest of `cands` (NULL-ended) to `word`, or NULL when none is
** close enough to be a plausible typo. */
const char *hrun_nearest(const char *word, const char *const cands[]);

/* [-0, +1, m] The private library handed to the Lua engine as a chunk argument
** (never a global): interrupts, the registry listing, the REPL's line editor. */
int hrun_openprivate(lua_State *L);

/* The REPL's line editor (runtime/repl.c), private entry points of the engine. */
int hrun_repl_readline(lua_State *L);
int hrun_repl_addhistory(lua_State *L);
int hrun_repl_open(lua_State *L);
int hrun_repl_close(lua_State *L);

/* [-(n+1), +(0|1), -] Calls the function below its n arguments under a protected
** call whose handler adds a traceback when -v is on (one helper for every C→Lua
** callback). Returns LUA_OK with one result, or an error status with the error. */
int hrun_pcallback(lua_State *L, int nargs);

#endif
