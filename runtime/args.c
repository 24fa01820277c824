/*
** args.c — the conventions every binding follows: how arguments and options are
** checked (misuse raises) and how the world's failures are returned (nil, msg, code).
*/
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

void hrun_atclose(lua_State *L, lua_CFunction fn)
{
    lua_newuserdatauv(L, 0, 0);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, fn);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    luaL_ref(L, LUA_REGISTRYINDEX);
}

void hrun_undo_startstop(lua_State *L, int idx, const char *module, const char *name, int starting,
                         int running)
{
    if (starting == running) return; /* the call changes nothing to undo */
    char op[64];
    snprintf(op, sizeof op, "%s.%s", module, starting ? "stop" : "start");
    lua_pushstring(L, name);
    hrun_addop(L, idx, op, 1);
}

const char *hrun_errname(int err)
{
    static _Thread_local char buf[16];
    const char *name = strerrorname_np(err);
    if (name) return name;
    snprintf(buf, sizeof buf, "E%d", err);
    return buf;
}

int hrun_fail(lua_State *L, const char *what, const char *obj, int err)
{
    luaL_pushfail(L);
    if (obj)
        lua_pushfstring(L, "%s: %s: %s", what, obj, strerror(err));
    else
        lua_pushfstring(L, "%s: %s", what, strerror(err));
    lua_pushstring(L, hrun_errname(err));
    return 3;
}

void hrun_setclose(lua_State *L, const char *type, lua_CFunction close, const luaL_Reg *methods)
{
    if (luaL_newmetatable(L, type)) {
        if (methods) {
            lua_newtable(L);
            luaL_setfuncs(L, methods, 0);
            lua_setfield(L, -2, "__index");
        }
        lua_pushcfunction(L, close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, close);
        lua_setfield(L, -2, "__close");
        lua_pushliteral(L, "locked");
        lua_setfield(L, -2, "__metatable");
    }
    lua_setmetatable(L, -2);
}

void hrun_addop(lua_State *L, int idx, const char *op, int n)
{
    lua_createtable(L, n, 0);
    lua_insert(L, -n - 1);
    for (int i = n; i >= 1; i--) lua_rawseti(L, -1 - i, i);
    lua_createtable(L, 0, 2);
    lua_insert(L, -2);
    lua_setfield(L, -2, "args");
    lua_pushstring(L, op);
    lua_setfield(L, -2, "op");
    lua_rawseti(L, idx, (lua_Integer)lua_rawlen(L, idx) + 1);
}

int hrun_failf(lua_State *L, const char *code, const char *fmt, ...)
{
    va_list ap;
    luaL_pushfail(L);
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_pushstring(L, code);
    return 3;
}

const char *hrun_checkpath(lua_State *L, int arg, size_t *len)
{
    size_t n;
    /* strictly a string: a number where a path should be is a bug, not a file name */
    if (lua_type(L, arg) != LUA_TSTRING) luaL_typeerror(L, arg, "string");
    const char *s = lua_tolstring(L, arg, &n);
    if (n == 0) luaL_argerror(L, arg, "empty path");
    if (memchr(s, '\0', n)) luaL_argerror(L, arg, "path contains a NUL byte");
    if (len) *len = n;
    return s;
}

/* {======================================================
** Did you mean …?
** ======================================================= */

/* Edits from a to b, a swap of two neighbours counting one ("rnu" is one from "run"):
** the optimal string alignment distance. */
static size_t distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    size_t rows[3][64], *prev2 = rows[0], *prev = rows[1], *cur = rows[2];
    if (lb >= 64) return (size_t)-1;
    for (size_t j = 0; j <= lb; j++) prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t best = prev[j - 1] + (a[i - 1] != b[j - 1]);
            if (prev[j] + 1 < best) best = prev[j] + 1;
            if (cur[j - 1] + 1 < best) best = cur[j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                prev2[j - 2] + 1 < best)
                best = prev2[j - 2] + 1;
            cur[j] = best;
        }
        size_t *t = prev2;
        prev2 = prev, prev = cur, cur = t;
    }
    return prev[lb];
}

const char *hrun_nearest(const char *word, const char *const cands[])
{
    const char *best = NULL;
    size_t bestd = (size_t)-1, len = strlen(word);
    /* a typo is at most a third of the word wrong, and at least one edit is allowed */
    size_t limit = len / 3 > 1 ? len / 3 : 1;
    if (len > 2) limit = limit < 2 ? 2 : limit;
    for (size_t i = 0; cands[i]; i++) {
        size_t d = distance(word, cands[i]);
        if (d < bestd) bestd = d, best = cands[i];
    }
    return bestd <= limit ? best : NULL;
}

/* }====================================================== */

void hrun_checkopts(lua_State *L, int arg, const char *const known[])
{
    if (lua_isnoneornil(L, arg)) return;
    luaL_checktype(L, arg, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, arg)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) {
            luaL_argerror(
                L, arg,
                lua_pushfstring(L, "option keys are names, got a %s key", luaL_typename(L, -1)));
        }
        const char *key = lua_tostring(L, -1);
        size_t i = 0;
        while (known[i] && strcmp(known[i], key) != 0) i++;
        if (known[i]) continue;
        const char *near = hrun_nearest(key, known);
        if (near)
            lua_pushfstring(L, "unknown option '%s' (did you mean '%s'?)", key, near);
        else
            lua_pushfstring(L, "unknown option '%s'", key);
        luaL_argerror(L, arg, lua_tostring(L, -1));
    }
}

/* [-0, +(0|1), v] Pushes field `name` of the options at `arg` unless it is absent. */
int hrun_optfield(lua_State *L, int arg, const char *name, int t)
{
    if (lua_isnoneornil(L, arg)) return 0;
    luaL_checktype(L, arg, LUA_TTABLE);
    int got = lua_getfield(L, arg, name);
    if (got == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (got != t && !(t == LUA_TNUMBER && got == LUA_TSTRING && lua_isnumber(L, -1))) {
        luaL_argerror(L, arg,
                      lua_pushfstring(L, "field '%s': %s expected, got %s", name,
                                      lua_typename(L, t), luaL_typename(L, -1)));
    }
    return 1;
}

int hrun_optbool(lua_State *L, int arg, const char *name, int def)
{
    if (!hrun_optfield(L, arg, name, LUA_TBOOLEAN)) return def;
    int v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

lua_Number hrun_optnumber(lua_State *L, int arg, const char *name, lua_Number def)
{
    if (!hrun_optfield(L, arg, name, LUA_TNUMBER)) return def;
    lua_Number v = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

lua_Integer hrun_optinteger(lua_State *L, int arg, const char *name, lua_Integer def)
{
    if (!hrun_optfield(L, arg, name, LUA_TNUMBER)) return def;
    int isint;
    lua_Integer v = lua_tointegerx(L, -1, &isint);
    if (!isint)
        luaL_argerror(L, arg,
                      lua_pushfstring(L, "field '%s': number has no integer representation", name));
    lua_pop(L, 1);
    return v;
}

/* The string stays valid while the options table holds it. */
const char *hrun_optstring(lua_State *L, int arg, const char *name, const char *def, size_t *len)
{
    if (!hrun_optfield(L, arg, name, LUA_TSTRING)) {
        if (len) *len = def ? strlen(def) : 0;
        return def;
    }
    const char *s = lua_tolstring(L, -1, len);
    lua_pop(L, 1);
    return s;
}
