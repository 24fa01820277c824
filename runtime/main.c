/*
** main.c — the host: create the state, find the engine, run it protected.
** Everything a command does is in stdlib/hrun/cli.lua; this file stays thin.
*/
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#ifndef HRUN_SOURCE_STDLIB
#define HRUN_SOURCE_STDLIB ""
#endif
#ifndef HRUN_INSTALL_STDLIB
#define HRUN_INSTALL_STDLIB ""
#endif

static int isdir_with_engine(const char *dir)
{
    char path[PATH_MAX];
    struct stat st;
    if (dir == NULL || *dir == '\0') return 0;
    if ((size_t)snprintf(path, sizeof path, "%s/hrun/cli.lua", dir) >= sizeof path) return 0;
    return stat(path, &st) == 0;
}

/*
** Where the Lua stdlib is: $HRUN_PATH; else beside the installed binary
** (<prefix>/bin/hrun → <prefix>/share/hrun/lua); else the source tree the binary was
** built from, so it runs from its build directory without installing. The portable
** build (HRUN_PORTABLE) has its own inside: $HRUN_PATH, else that one.
*/
static const char *find_stdlib(char *buf, size_t size)
{
    const char *env = getenv("HRUN_PATH");
    if (env && *env) return env;
#ifdef HRUN_PORTABLE
    (void)buf, (void)size;
    return HRUN_BUILTIN_STDLIB;
#else
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            if ((size_t)snprintf(buf, size, "%s/../share/hrun/lua", exe) < size &&
                isdir_with_engine(buf))
                return buf;
        }
    }
    if (isdir_with_engine(HRUN_SOURCE_STDLIB)) return HRUN_SOURCE_STDLIB;
    return HRUN_INSTALL_STDLIB;
#endif
}

/* The message handler: a traceback with -v (the engine asks for it), else the message. */
static int msghandler(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    if (hrun_options(L)->verbose) luaL_traceback(L, L, msg, 1);
    return 1;
}

/* [-0, +1, e] pmain(argc, argv): runs the engine, returns the exit status. */
static int pmain(lua_State *L)
{
    int argc = (int)lua_tointeger(L, 1);
    char **argv = lua_touserdata(L, 2);
    char buf[PATH_MAX];
    const char *stdlib = find_stdlib(buf, sizeof buf);
    int builtin = strcmp(stdlib, HRUN_BUILTIN_STDLIB) == 0;
    if (!builtin && !isdir_with_engine(stdlib))
        return luaL_error(
            L, "cannot find the hrun Lua library (hrun/cli.lua) in '%s'; set HRUN_PATH", stdlib);
    hrun_openlibs(L);
    lua_pop(L, 1);
    /* the engine's own modules come first; installed Lua modules stay reachable (the
    ** built-in library's searcher comes before package.path: hrun_stdlib_load puts it) */
    if (!builtin) {
        lua_getglobal(L, "package");
        lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", stdlib, stdlib);
        lua_getfield(L, -2, "path");
        lua_concat(L, 2);
        lua_setfield(L, -2, "path");
        lua_pop(L, 1);
    }

    if (hrun_stdlib_load(L, stdlib, "hrun/cli.lua") != LUA_OK) return lua_error(L);
    hrun_openprivate(L);
    lua_createtable(L, argc, 0);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    lua_pushstring(L, stdlib);
    lua_call(L, 3, 1);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "__sandbox") == 0) return hrun_child_main(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "__relay") == 0) return hrun_relay_main(argc, argv);
    lua_State *L = hrun_newstate();
    if (L == NULL) {
        fprintf(stderr, "hrun: cannot create the Lua state: not enough memory\n");
        return 1;
    }
    hrun_catchsignals(L);
    lua_pushcfunction(L, msghandler);
    lua_pushcfunction(L, pmain);
    lua_pushinteger(L, argc);
    lua_pushlightuserdata(L, argv);
    int status = lua_pcall(L, 2, 1, 1);
    int code;
    if (status != LUA_OK) {
        fprintf(stderr, "hrun: %s\n", lua_tostring(L, -1));
        code = hrun_interrupted() ? 130 : 1;
    } else {
        code = (int)lua_tointeger(L, -1);
    }
    fflush(stdout);
    lua_close(L);
    return code;
}
