/*
** stdlib.c — where the engine's Lua library is read from: the directory found by main
** (stdlib/, <prefix>/share/hrun/lua, $HRUN_PATH), or, in the portable build, the copy of
** the .lua files of stdlib/hrun built into the binary (sources generated at build time
** by cmake/embed_stdlib.cmake), which `require` then finds through a searcher of its own.
*/
#include <string.h>

#include "internal.h"

#ifdef HRUN_PORTABLE

/* Registry field: set once the built-in library's searcher is installed. */
#define SEARCHER_KEY "hrun.stdlib.searcher"

/* The built-in file called name ("hrun/cli.lua"), or NULL. */
static const hrun_StdlibFile *builtin(const char *name)
{
    for (const hrun_StdlibFile *f = hrun_stdlib_files; f->name; f++)
        if (strcmp(f->name, name) == 0) return f;
    return NULL;
}

/* [-0, +1, m] Loads the built-in file f, named as a file of the directory HRUN_BUILTIN_STDLIB
** would be in messages and tracebacks. */
static int load_builtin(lua_State *L, const hrun_StdlibFile *f)
{
    const char *chunkname = lua_pushfstring(L, "@" HRUN_BUILTIN_STDLIB "/%s", f->name);
    int status = luaL_loadbufferx(L, (const char *)f->bytes, f->len, chunkname, "t");
    lua_remove(L, -2);
    return status;
}

/* package.searchers' entry: "hrun.x" → the built-in hrun/x.lua (a loader and its name), or
** why not, as the searchers of package say it. */
static int searcher(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (const char *p = name; *p; p++) luaL_addchar(&b, *p == '.' ? '/' : *p);
    luaL_addstring(&b, ".lua");
    luaL_pushresult(&b);
    const hrun_StdlibFile *f = builtin(lua_tostring(L, -1));
    if (f == NULL) {
        lua_pushfstring(L, "no built-in file '" HRUN_BUILTIN_STDLIB "/%s'", lua_tostring(L, -1));
        return 1;
    }
    if (load_builtin(L, f) != LUA_OK)
        return luaL_error(L, "error loading module '%s' from the built-in library:\n\t%s", name,
                          lua_tostring(L, -1));
    lua_pushfstring(L, HRUN_BUILTIN_STDLIB "/%s", f->name);
    return 2;
}

/* Puts the searcher of the built-in library after package.preload's, before the files'. */
static void install_searcher(lua_State *L)
{
    if (lua_getfield(L, LUA_REGISTRYINDEX, SEARCHER_KEY) != LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    lua_pop(L, 1);
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, SEARCHER_KEY);
    lua_getglobal(L, "package");
    if (lua_getfield(L, -1, "searchers") == LUA_TTABLE) {
        for (lua_Integer i = (lua_Integer)lua_rawlen(L, -1); i >= 2; i--) {
            lua_rawgeti(L, -1, i);
            lua_rawseti(L, -2, i + 1);
        }
        lua_pushcfunction(L, searcher);
        lua_rawseti(L, -2, 2);
    }
    lua_pop(L, 2);
}

#endif

int hrun_stdlib_load(lua_State *L, const char *dir, const char *file)
{
#ifdef HRUN_PORTABLE
    if (strcmp(dir, HRUN_BUILTIN_STDLIB) == 0) {
        install_searcher(L);
        const hrun_StdlibFile *f = builtin(file);
        if (f) return load_builtin(L, f);
        lua_pushfstring(L, "cannot open %s/%s (not in the built-in library)", dir, file);
        return LUA_ERRFILE;
    }
#endif
    int status = luaL_loadfile(L, lua_pushfstring(L, "%s/%s", dir, file));
    lua_remove(L, -2);
    return status;
}
