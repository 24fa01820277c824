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

static hrun_Call describe_call(lua_State *L, const Entry *e, int nargs)
{
    const hrun_Prim *p = e->prim;
    hrun_Call call = {p, e->module, e->fullname, 0, nargs, 0};
    call.writes = p->kind == HRUN_WRITE && (p->writes == NULL || p->writes(L));
    return call;
}

/*
** [-0, +0, e] keep = true in a write's options table (at hrun_Prim.opts): taken out
** before the primitive checks its options — the primitive gets a copy without it, the
** caller's table is left as it was — and returned, for the hooks (the runner journals
** the effect as kept: a rollback leaves it). Every write that takes options has it.
*/
static int take_keep(lua_State *L, const Entry *e)
{
    int n = e->prim->opts; /* only its options: never a request's body or an argv */
    if (e->prim->kind != HRUN_WRITE || n < 1 || lua_type(L, n) != LUA_TTABLE) return 0;
    lua_pushliteral(L, "keep");
    int t = lua_rawget(L, n);
    int keep = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (t == LUA_TNIL) return 0;
    if (t != LUA_TBOOLEAN)
        luaL_argerror(
            L, n, lua_pushfstring(L, "field 'keep': boolean expected, got %s", lua_typename(L, t)));
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, n) != 0) {
        if (lua_type(L, -2) == LUA_TSTRING && strcmp(lua_tostring(L, -2), "keep") == 0) {
            lua_pop(L, 1);
            continue;
        }
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
    lua_replace(L, n);
    return keep;
}

/* Runs under dispatch's protected call: the before hook, then the primitive. */
static int protected_call(lua_State *L)
{
    Entry *e = lua_touserdata(L, lua_upvalueindex(1));
    hrun_Runtime *rt = hrun_runtime(L);
    int keep = take_keep(L, e);
    if (rt->hooks.before) {
        hrun_Call call = describe_call(L, e, lua_gettop(L));
        call.keep = keep;
        int r = rt->hooks.before(L, &call, rt->hooks.ud);
        if (r >= 0) {
            rt->stood_in = 1; /* set last: calls made by the hook reset it */
            return r;
        }
    }
    return e->prim->func(L);
}

/* after_hook(call, nres, ...results): the after hook, under a protected call so that the
** shield is lowered whatever it does. */
static int after_hook(lua_State *L)
{
    hrun_Runtime *rt = hrun_runtime(L);
    const hrun_Call *call = lua_touserdata(L, 1);
    int nres = (int)lua_tointeger(L, 2);
    lua_rotate(L, 1, -2);
    lua_pop(L, 2);
    rt->hooks.after(L, call, nres, rt->hooks.ud);
    return 0;
}

/* Is the error on top the interruption itself — Ctrl-C or the step's deadline, raised by
** the primitive (exec.run) or the hook: its words, with one pending? (A command's own
** "timed out", with neither, is not.) */
static int is_interruption(lua_State *L)
{
    static const char *const ends[] = {"interrupted", "timed out"};
    hrun_Runtime *rt = hrun_runtime(L);
    if (!hrun_interrupted() && !(rt->deadline > 0 && hrun_monotime() >= rt->deadline)) return 0;
    size_t len;
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
    for (size_t i = 0; msg && i < sizeof ends / sizeof ends[0]; i++) {
        size_t n = strlen(ends[i]);
        if (len >= n && strcmp(msg + len - n, ends[i]) == 0) return 1;
    }
    return 0;
}

/* [-0, +0, e] Runs the after hook over the call's results (the top nres values; the
** error alone when nres is -1), shielded (hrun_Runtime.shielded): the effect the before
** hook journaled gets its result even when Ctrl-C came in during the call. */
static void run_after(lua_State *L, const hrun_Call *call, int nres)
{
    hrun_Runtime *rt = hrun_runtime(L);
    int n = nres < 0 ? 1 : nres, top = lua_gettop(L);
    int delivered = nres < 0 && is_interruption(L);
    luaL_checkstack(L, n + 3, "hooks");
    lua_pushcfunction(L, after_hook);
    lua_pushlightuserdata(L, (void *)call);
    lua_pushinteger(L, nres);
    for (int i = top - n + 1; i <= top; i++) lua_pushvalue(L, i);
    int shield = rt->shielded++;
    int status = lua_pcall(L, n + 2, 0, 0);
    hrun_unshield(L, shield, delivered && status == LUA_OK);
    if (status != LUA_OK) lua_error(L);
}

static int dispatch(lua_State *L)
{
    Entry *e = lua_touserdata(L, lua_upvalueindex(1));
    hrun_Runtime *rt = hrun_runtime(L);
    int nargs = lua_gettop(L);
    e->calls++;
    if (rt->sandbox && rt->trusted == 0 && e->prim->cap)
        hrun_sandbox_check(L, e->prim, e->fullname);
    lua_pushvalue(L, lua_upvalueindex(2)); /* protected_call over this entry */
    lua_insert(L, 1);
    rt->stood_in = 0;
    if (lua_pcall(L, nargs, LUA_MULTRET, 0) != LUA_OK) {
        rt->stood_in = 0;
        locate_error(L, e);
        if (rt->hooks.after) {
            hrun_Call call = describe_call(L, e, nargs);
            run_after(L, &call, -1);
        }
        return lua_error(L);
    }
    int stood_in = rt->stood_in;
    rt->stood_in = 0;
    if (rt->hooks.after && !stood_in) {
        hrun_Call call = describe_call(L, e, nargs);
        run_after(L, &call, lua_gettop(L));
    }
    /* in a playbook's step, a failure of the world raises, naming where (as redis.call
    ** raises where redis.pcall returns) */
    if (rt->strict && lua_gettop(L) >= 2 && lua_isnil(L, 1) && lua_type(L, 2) == LUA_TSTRING) {
        luaL_where(L, 1);
        lua_pushvalue(L, 2);
        lua_concat(L, 2);
        return lua_error(L);
    }
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
        lua_pushvalue(L, -1);
        lua_pushcclosure(L, protected_call, 1);
        lua_pushcclosure(L, dispatch, 2);
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

void hrun_tick(lua_State *L)
{
    if (!lua_checkstack(L, 3)) return;
    if (lua_getfield(L, LUA_REGISTRYINDEX, TICKER) == LUA_TFUNCTION)
        hrun_pcallback(L, 0); /* its result or error: not ours to keep */
    lua_pop(L, 1);
}

/* [-0, +0, -] The entry of primitive `fullname`, or NULL. */
static const Entry *find_entry(lua_State *L, const char *fullname)
{
    const Entry *found = NULL;
    luaL_getsubtable(L, LUA_REGISTRYINDEX, PRIMITIVES_KEY);
    lua_Integer n = luaL_len(L, -1);
    for (lua_Integer i = 1; i <= n && !found; i++) {
        lua_rawgeti(L, -1, i);
        const Entry *e = lua_touserdata(L, -1);
        if (strcmp(e->fullname, fullname) == 0) found = e;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return found;
}

/* The entry of primitive fullname; raises when there is none. */
static const Entry *check_entry(lua_State *L, const char *fullname)
{
    const Entry *e = find_entry(L, fullname);
    if (e == NULL) luaL_error(L, "no primitive named '%s'", fullname);
    return e;
}

/* [-n, +nres, e] Calls fn with the n values on top, in their place; nres results. */
static int call_with(lua_State *L, lua_CFunction fn, int n, int nres)
{
    int base = lua_gettop(L) - n;
    lua_pushcfunction(L, fn);
    lua_insert(L, base + 1);
    lua_call(L, n, nres);
    return nres;
}

/* Under hrun_checkcall: the arguments at 1.., as the dispatcher sees them. */
static int check_frame(lua_State *L)
{
    const Entry *e = lua_touserdata(L, lua_upvalueindex(1));
    hrun_sandbox_check(L, e->prim, e->fullname);
    return 0;
}

/* Under hrun_checkcall for an inverse's operation: the flag is cleared however it ends. */
static int check_undo_frame(lua_State *L)
{
    hrun_Runtime *rt = hrun_runtime(L);
    rt->undo_check = 1;
    int status = lua_pcall(L, lua_gettop(L) - 1, 0, 0);
    rt->undo_check = 0;
    if (status != LUA_OK) return lua_error(L);
    return 0;
}

void hrun_checkcall(lua_State *L, const char *fullname, int n, int undo)
{
    const Entry *e = check_entry(L, fullname);
    hrun_Runtime *rt = hrun_runtime(L);
    if (rt->sandbox == NULL || rt->trusted > 0 || e->prim->cap == NULL) {
        lua_pop(L, n);
        return;
    }
    lua_pushlightuserdata(L, (void *)e);
    lua_pushcclosure(L, check_frame, 1);
    lua_insert(L, -(n + 1)); /* check_frame, the arguments */
    if (undo) {
        lua_pushcfunction(L, check_undo_frame);
        lua_insert(L, -(n + 2)); /* check_undo_frame, check_frame, the arguments */
    }
    lua_call(L, undo ? n + 1 : n, 0);
}

/* The paths among the n values on top that a write's inverse will act on (its first,
** or first two arguments) made absolute: a rollback run from another directory acts
** where the write did, not there. */
static void absolute_targets(lua_State *L, const hrun_Prim *p, int n)
{
    int count = p->targets == hrun_targets_arg1 ? 1 : p->targets == hrun_targets_args12 ? 2 : 0;
    if (!hrun_cap_paths(p->cap)) return;
    for (int i = 1; i <= count && i <= n; i++) {
        int idx = lua_gettop(L) - n + i;
        const char *path = lua_type(L, idx) == LUA_TSTRING ? lua_tostring(L, idx) : NULL;
        char abs[PATH_MAX];
        if (path == NULL || path[0] == '/' || path[0] == '\0' ||
            hrun_abspath(path, abs, sizeof abs) < 0)
            continue;
        lua_pushstring(L, abs);
        lua_replace(L, idx);
    }
}

int hrun_inverse(lua_State *L, const char *fullname, int n)
{
    const Entry *e = check_entry(L, fullname);
    if (e->prim->kind == HRUN_WRITE && e->prim->inverse) {
        absolute_targets(L, e->prim, n);
        return call_with(L, e->prim->inverse, n, 2);
    }
    lua_pop(L, n);
    lua_pushnil(L);
    lua_pushfstring(L, "%s cannot be undone", fullname);
    return 2;
}

int hrun_preview(lua_State *L, const char *fullname, int n)
{
    const Entry *e = check_entry(L, fullname);
    if (e->prim->preview) return call_with(L, e->prim->preview, n, 1);
    lua_pop(L, n);
    lua_pushnil(L);
    return 1;
}

int hrun_state(lua_State *L, const char *fullname, int n)
{
    const Entry *e = check_entry(L, fullname);
    if (e->prim->kind == HRUN_WRITE && e->prim->state) return call_with(L, e->prim->state, n, 1);
    lua_pop(L, n);
    lua_pushnil(L);
    return 1;
}

int hrun_unchanged(lua_State *L, const char *fullname, int n)
{
    const Entry *e = check_entry(L, fullname);
    if (e->prim->kind == HRUN_WRITE && e->prim->unchanged)
        return call_with(L, e->prim->unchanged, n, 1);
    lua_pop(L, n);
    lua_pushnil(L);
    return 1;
}

const char *hrun_stashdir(lua_State *L)
{
    return hrun_runtime(L)->stash_dir;
}

/* {======================================================
** Lua hooks: the runner's policy (plan mode, the journal) written in Lua, called
** from the C hooks.
** ======================================================= */

/* [-0, +1, m] {name, module, kind, cap, writes} */
static void push_call(lua_State *L, const hrun_Call *call)
{
    static const char *const kinds[] = {"pure", "read", "write"};
    lua_createtable(L, 0, 7);
    lua_pushstring(L, call->fullname);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, call->module);
    lua_setfield(L, -2, "module");
    lua_pushstring(L, kinds[call->prim->kind]);
    lua_setfield(L, -2, "kind");
    if (call->prim->cap) {
        lua_pushstring(L, call->prim->cap);
        lua_setfield(L, -2, "cap");
    }
    lua_pushboolean(L, call->writes);
    lua_setfield(L, -2, "writes");
    if (call->prim->destroys) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "destroys");
    }
    if (call->keep) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "keep");
    }
}

/* before(call, ...args) → nothing to let it run, or true, results... to stand in */
static int lua_before(lua_State *L, const hrun_Call *call, void *ud)
{
    hrun_Runtime *rt = ud;
    int top = lua_gettop(L);
    luaL_checkstack(L, call->nargs + 4, "hooks");
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->lua_before);
    push_call(L, call);
    for (int i = 1; i <= call->nargs; i++) lua_pushvalue(L, i);
    lua_call(L, call->nargs + 1, LUA_MULTRET);
    int nres = lua_gettop(L) - top;
    if (nres == 0 || !lua_toboolean(L, top + 1)) {
        lua_settop(L, top);
        return -1;
    }
    lua_remove(L, top + 1);
    return nres - 1;
}

/* after(call, nres, ...results) — nres is -1 and the error follows when it raised */
static void lua_after(lua_State *L, const hrun_Call *call, int nres, void *ud)
{
    hrun_Runtime *rt = ud;
    int n = nres < 0 ? 1 : nres, top = lua_gettop(L);
    luaL_checkstack(L, n + 4, "hooks");
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->lua_after);
    push_call(L, call);
    lua_pushinteger(L, nres);
    for (int i = top - n + 1; i <= top; i++) lua_pushvalue(L, i);
    lua_call(L, n + 2, 0);
}

/* sethooks(before, after) | sethooks(nil): installs or removes the Lua hooks */
int hrun_setluahooks(lua_State *L)
{
    hrun_Runtime *rt = hrun_runtime(L);
    if (rt->lua_before != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, rt->lua_before);
    if (rt->lua_after != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, rt->lua_after);
    rt->lua_before = rt->lua_after = LUA_NOREF;
    if (lua_isnoneornil(L, 1)) {
        hrun_sethooks(L, NULL);
        return 0;
    }
    luaL_checktype(L, 1, LUA_TFUNCTION);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 1);
    rt->lua_before = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, 2);
    rt->lua_after = luaL_ref(L, LUA_REGISTRYINDEX);
    hrun_Hooks h = {lua_before, lua_after, rt};
    hrun_sethooks(L, &h);
    return 0;
}

/* }====================================================== */
