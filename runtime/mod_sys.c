/*
** mod_sys.c — the `sys` module: facts about this machine and process, and time.
*/
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

extern char **environ;

/* sys.hostname() → name | nil, message, code */
static int sys_hostname(lua_State *L)
{
    char name[HOST_NAME_MAX + 1];
    if (gethostname(name, sizeof name) < 0) return hrun_fail(L, "sys.hostname", NULL, errno);
    name[HOST_NAME_MAX] = '\0';
    lua_pushstring(L, name);
    return 1;
}

/* sys.is_root() → whether the effective user is root */
static int sys_is_root(lua_State *L)
{
    lua_pushboolean(L, geteuid() == 0);
    return 1;
}

/* sys.sleep(seconds) → true; an interrupt (Ctrl-C) ends it with the error "interrupted",
** the step's deadline with "timed out" */
static int sys_sleep(lua_State *L)
{
    lua_Number s = luaL_checknumber(L, 1);
    luaL_argcheck(L, s >= 0 && isfinite(s), 1, "seconds must be a finite number >= 0");
    double deadline = hrun_deadline(L), left = deadline - hrun_monotime();
    int cut = deadline > 0 && left < s;
    double end = hrun_monotime() + (cut ? (left > 0 ? left : 0) : s);
    /* in slices when a ticker (the runner's spinner) wants to hear from us */
    for (;;) {
        double now = hrun_monotime(), slice = end - now;
        if (slice <= 0) break;
        int tick = lua_getfield(L, LUA_REGISTRYINDEX, TICKER) == LUA_TFUNCTION;
        if (!tick)
            lua_pop(L, 1);
        else if (slice > 0.1)
            slice = 0.1;
        if (hrun_sleep(slice) < 0) return hrun_raiseinterrupt(L);
        if (tick) {
            hrun_pcallback(L, 0); /* its result or error: not ours to keep */
            lua_pop(L, 1);
        }
    }
    if (cut) return hrun_raisetimeout(L);
    lua_pushboolean(L, 1);
    return 1;
}

/* sys.now() → seconds since the epoch, with a fraction (the wall clock) */
static int sys_now(lua_State *L)
{
    lua_pushnumber(L, hrun_walltime());
    return 1;
}

/* sys.clock() → seconds on a monotonic clock: for measuring durations */
static int sys_clock(lua_State *L)
{
    lua_pushnumber(L, hrun_monotime());
    return 1;
}

/* sys.env(name) → value | nil;  sys.env() → {name = value, …}. In the sandbox it needs
** env:NAME, or for the whole environment every name's (plain env). */
static int sys_env(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) {
        lua_newtable(L);
        for (char **e = environ; *e; e++) {
            const char *eq = strchr(*e, '=');
            if (eq == NULL) continue;
            lua_pushlstring(L, *e, (size_t)(eq - *e));
            lua_pushstring(L, eq + 1);
            lua_rawset(L, -3);
        }
        return 1;
    }
    const char *v = getenv(luaL_checkstring(L, 1));
    if (v)
        lua_pushstring(L, v);
    else
        lua_pushnil(L);
    return 1;
}

/* The sandbox's targets of sys.env: the name it reads (env:NAME), or every name when it
** lists them all. */
static int env_targets(lua_State *L, hrun_Target *t)
{
    int type = lua_type(L, 1);
    if (type == LUA_TSTRING || type == LUA_TNUMBER) {
        lua_pushvalue(L, 1);
        t[0] = (hrun_Target){NULL, lua_tostring(L, -1), NULL, 0, 0};
        return 1;
    }
    if (type != LUA_TNONE && type != LUA_TNIL) return 0; /* misuse: sys.env raises */
    lua_newtable(L);
    lua_Integer n = 0;
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (eq == NULL) continue;
        lua_pushlstring(L, *e, (size_t)(eq - *e));
        lua_rawseti(L, -2, ++n);
    }
    t[0] = (hrun_Target){NULL, NULL, NULL, lua_gettop(L), 0};
    return 1;
}

static const hrun_Prim sys_prims[] = {
    {.name = "hostname", .func = sys_hostname, .kind = HRUN_READ},
    {.name = "is_root", .func = sys_is_root, .kind = HRUN_READ},
    {.name = "sleep", .func = sys_sleep, .kind = HRUN_READ},
    {.name = "now", .func = sys_now, .kind = HRUN_READ},
    {.name = "clock", .func = sys_clock, .kind = HRUN_READ},
    {.name = "env", .func = sys_env, .kind = HRUN_READ, .cap = "env", .targets = env_targets},
    {0},
};

int luaopen_hrun_sys(lua_State *L)
{
    hrun_newmodule(L, "sys", sys_prims);
    return 1;
}
