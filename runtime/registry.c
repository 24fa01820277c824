/*
** registry.c — the primitive registry and its one dispatcher.
**
** Each primitive becomes a C closure over its registry entry.  Every call goes through
** dispatch(): it counts the call, lets the hooks (plan mode, journal, sandbox) see it,
** runs the primitive under a protected call, and turns the primitive's own errors into
** errors that name it ("bad argument #1 to 'exec.run'") at the caller's line.
*/
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define PRIMITIVES_KEY "hrun.primitives"

typedef struct Entry {
    const hrun_Prim *prim;
    const char *module;
    lua_Integer calls;
    char fullname[]; /* "module.name" */
} Entry;

/* Does the first line of `msg` already carry a "chunk:line: " position? */
static int haspos(const char *msg)
{
    for (const char *p = msg; *p && *p != '\n'; p++) {
        if (*p != ':' || !isdigit((unsigned char)p[1])) continue;
        const char *q = p + 1;
        while (isdigit((unsigned char)*q)) q++;
        if (q[0] == ':' && q[1] == ' ') return 1;
    }
    return 0;
}

/*
** [-1, +1, m] Makes the error on top say which primitive failed and where it was
** called from.  A primitive runs as a C function called from C, so Lua's argument
** errors name it '?' and carry no position; Lua-level errors raised inside it (a
** callback's) already have theirs and are left alone.
*/
static void locate_error(lua_State *L, const Entry *e)
{
    static const char bad[] = "bad argument #";
    if (lua_type(L, -1) != LUA_TSTRING) return;
    const char *msg = lua_tostring(L, -1);
    if (haspos(msg)) return;
    luaL_where(L, 1);
    if (strncmp(msg, bad, sizeof bad - 1) == 0) {
        const char *num = msg + sizeof bad - 1;
        const char *end = num;
        while (isdigit((unsigned char)*end)) end++;
        if (strncmp(end, " to '?'", 7) == 0) {
            lua_pushlstring(L, msg, (size_t)(end - msg));
            lua_pushfstring(L, " to '%s'%s", e->fullname, end + 7);
            lua_concat(L, 3); /* where .. "bad argument #n" .. " to 'name' (...)" */
            lua_remove(L, -2);
            return;
        }
    }
    lua_insert(L, -2);
    lua_concat(L, 2);
}

static int dispatch(lua_State *L)
{
    Entry *e = lua_touserdata(L, lua_upvalueindex(1));
    hrun_Runtime *rt = hrun_runtime(L);
    const hrun_Prim *p = e->prim;
    hrun_Call call = {p, e->module, e->fullname, 0, lua_gettop(L)};
    e->calls++;
    if (rt->hooks.before || rt->hooks.after)
        call.writes = p->kind == HRUN_WRITE && (p->writes == NULL || p->writes(L));
    if (rt->hooks.before) {
        int r = rt->hooks.before(L, &call, rt->hooks.ud);
        if (r >= 0) return r;
    }
    lua_pushcfunction(L, p->func);
    lua_insert(L, 1);
    if (lua_pcall(L, call.nargs, LUA_MULTRET, 0) != LUA_OK) {
        locate_error(L, e);
        if (rt->hooks.after) rt->hooks.after(L, &call, -1, rt->hooks.ud);
        return lua_error(L);
    }
    if (rt->hooks.after) rt->hooks.after(L, &call, lua_gettop(L), rt->hooks.ud);
    return lua_gettop(L);
}

void hrun_newmodule(lua_State *L, const char *module, const hrun_Prim *prims)
{
    size_t n = 0, mlen = strlen(module);
    while (prims[n].name) n++;
    lua_createtable(L, 0, (int)n);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, PRIMITIVES_KEY);
    for (const hrun_Prim *p = prims; p->name; p++) {
        size_t nlen = strlen(p->name);
        Entry *e = lua_newuserdatauv(L, sizeof(Entry) + mlen + nlen + 2, 0);
        e->prim = p;
        e->module = module;
        e->calls = 0;
        memcpy(e->fullname, module, mlen);
        e->fullname[mlen] = '.';
        memcpy(e->fullname + mlen + 1, p->name, nlen + 1);
        lua_pushvalue(L, -1);
        lua_rawseti(L, -3, luaL_len(L, -3) + 1); /* registry list keeps the entry */
        lua_pushcclosure(L, dispatch, 1);
        lua_setfield(L, -3, p->name);
    }
    lua_pop(L, 1);
}

hrun_Hooks hrun_sethooks(lua_State *L, const hrun_Hooks *hooks)
{
    hrun_Runtime *rt = hrun_runtime(L);
    hrun_Hooks old = rt->hooks;
    static const hrun_Hooks none = {NULL, NULL, NULL};
    rt->hooks = hooks ? *hooks : none;
    return old;
}

void hrun_pushprimitives(lua_State *L)
{
    static const char *const kinds[] = {"pure", "read", "write"};
    luaL_getsubtable(L, LUA_REGISTRYINDEX, PRIMITIVES_KEY);
    lua_Integer n = luaL_len(L, -1);
    lua_createtable(L, (int)n, 0);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -2, i);
        const Entry *e = lua_touserdata(L, -1);
        lua_pop(L, 1);
        lua_createtable(L, 0, 4);
        lua_pushstring(L, e->fullname);
        lua_setfield(L, -2, "name");
        lua_pushstring(L, kinds[e->prim->kind]);
        lua_setfield(L, -2, "kind");
        if (e->prim->cap) {
            lua_pushstring(L, e->prim->cap);
            lua_setfield(L, -2, "cap");
        }
        lua_pushinteger(L, e->calls);
        lua_setfield(L, -2, "calls");
        lua_rawseti(L, -2, i);
    }
    lua_remove(L, -2);
}

static int callback_handler(lua_State *L)
{
    if (!hrun_runtime(L)->options.verbose) return 1;
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) return 1; /* a non-string error object goes as it is */
    luaL_traceback(L, L, msg, 1);
    return 1;
}

int hrun_pcallback(lua_State *L, int nargs)
{
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, callback_handler);
    lua_insert(L, base);
    int status = lua_pcall(L, nargs, 1, base);
    lua_remove(L, base);
    return status;
}
