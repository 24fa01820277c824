/*
** modules.c — the one table of hrun's modules (adding one is one line), the state
** that carries them, and the private library handed to the Lua engine.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <lualib.h>

#include "internal.h"

/* Every module: loaded as require "hrun.<name>" and set as the global <name>. */
static const luaL_Reg hrun_modules[] = {
    /* clang-format off */
    {"fs", luaopen_hrun_fs},
    {"exec", luaopen_hrun_exec},
    {"json", luaopen_hrun_json},
    {"sys", luaopen_hrun_sys},
    {"btrfs", luaopen_hrun_btrfs},
    {"hash", luaopen_hrun_hash},
#ifndef HRUN_PORTABLE
    {"git", luaopen_hrun_git},
#endif
    {"nixos", luaopen_hrun_nixos},
#ifndef HRUN_PORTABLE
    {"http", luaopen_hrun_http},
    {"service", luaopen_hrun_service},
    {"podman", luaopen_hrun_podman},
#endif
    {"sqlite", luaopen_hrun_sqlite},
    {"secrets", luaopen_hrun_secrets},
    {NULL, NULL},
    /* clang-format on */
};

#ifdef HRUN_PORTABLE
/* {======================================================
** The modules the portable build has not (their libraries have no static archive in
** Debian: libgit2's and libcurl's need krb5, ldap, nghttp2…; libsystemd has none). Each
** is a stand-in: `require "hrun.git"` still loads (the engine's files that name them load),
** and any function of it fails, saying what to use on such a host instead.
** ======================================================= */

/* Each: its name, what to use instead, its functions (the full build's, that a playbook's
** copy of the module has: tests/spec/portable_spec.lua compares them). */
static const char *const missing_modules[][3] = {
    {"git", "run the host's own git through exec.run{\"git\", …}, or use git on the controller",
     "checkout checkout_paths clone commit delete_tag diff fetch head init log open status tag "
     "tags"},
    {"http", "make HTTP requests and checks from the controller", "get head post request wait"},
    {"service", "run the host's systemctl through exec.run{\"systemctl\", …}",
     "failed is_enabled list reload restart start status stop"},
    {"podman", "run the host's podman or docker through exec.run",
     "inspect logs ps restart start stop"},
};

/* A stand-in's function: nil, "git.clone: git is not in the portable build …", "ENOTSUP"
** (the engine's callers take it as any failure of the world: git.open's gives no
** provenance); raised in a playbook's functions (strict), as a primitive's failure is. */
static int missing_call(lua_State *L)
{
    lua_settop(L, 0);
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s is not in the portable build of hrun (%s)",
                    lua_tostring(L, lua_upvalueindex(1)), lua_tostring(L, lua_upvalueindex(2)),
                    lua_tostring(L, lua_upvalueindex(3)));
    if (hrun_runtime(L)->strict) {
        luaL_where(L, 1);
        lua_insert(L, -2);
        lua_concat(L, 2);
        return lua_error(L);
    }
    lua_pushliteral(L, "ENOTSUP");
    return 3;
}

/* [-0, +1, m] A stand-in's function called module.name (the strings at m and n) */
static void push_missing(lua_State *L, int m, int n, const char *instead)
{
    lua_pushfstring(L, "%s.%s", lua_tostring(L, m), lua_tostring(L, n));
    lua_pushvalue(L, m);
    lua_pushstring(L, instead);
    lua_pushcclosure(L, missing_call, 3);
}

/* __index of a stand-in module (upvalue: its index): any other field is a function that
** fails too (the engine's own _names) */
static int missing_index(lua_State *L)
{
    if (lua_type(L, 2) != LUA_TSTRING) return 0;
    const char *const *m = missing_modules[lua_tointeger(L, lua_upvalueindex(1))];
    lua_pushstring(L, m[0]);
    push_missing(L, lua_gettop(L), 2, m[1]);
    return 1;
}

/* The loader of a stand-in (package.preload["hrun.git"]): upvalue i, its index. */
static int missing_open(lua_State *L)
{
    lua_Integer i = lua_tointeger(L, lua_upvalueindex(1));
    const char *const *m = missing_modules[i];
    lua_settop(L, 0);
    lua_newtable(L);
    lua_pushstring(L, m[0]);
    for (const char *p = m[2]; *p;) {
        size_t len = strcspn(p, " ");
        lua_pushlstring(L, p, len);
        push_missing(L, 2, 3, m[1]);
        lua_rawset(L, 1);
        p += len + (p[len] == ' ');
    }
    lua_settop(L, 1);
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, i);
    lua_pushcclosure(L, missing_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushfstring(L, "hrun.%s (not in the portable build)", m[0]);
    lua_setfield(L, -2, "__name");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
    return 1;
}

/* }====================================================== */
#endif

static int runtime_gc(lua_State *L)
{
    hrun_Runtime *rt = lua_touserdata(L, 1);
    free(rt->stash_dir);
    rt->stash_dir = NULL;
    hrun_sandbox_close(rt);
    return 0;
}

/* {======================================================
** The Lua heap, counted: a sandboxed playbook runs under a limit (priv.memlimit)
** ======================================================= */

/* Room the engine gets once a limit is hit, to report it and roll back. */
#define MEMORY_RESERVE (64u << 20)

static struct {
    size_t used;  /* bytes the Lua state holds */
    size_t limit; /* 0: none */
    int hit;      /* an allocation was refused since the limit was set */
} heap;

static void *counted_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        heap.used -= old;
        return NULL;
    }
    if (heap.limit && nsize > old && heap.used - old + nsize > heap.limit) {
        if (!heap.hit) heap.limit += MEMORY_RESERVE; /* then the limit is the limit */
        heap.hit = 1;
        return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (p) heap.used = heap.used - old + nsize;
    return p;
}

/* memlimit(bytes | 0) → bytes in use: sets (0: lifts) the limit on the Lua heap */
static int priv_memlimit(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n >= 0, 1, "must not be negative");
    heap.limit = (size_t)n;
    heap.hit = 0;
    lua_pushinteger(L, (lua_Integer)heap.used);
    return 1;
}

/* memhit() → whether an allocation was refused under the current limit, the limit */
static int priv_memhit(lua_State *L)
{
    lua_pushboolean(L, heap.hit);
    lua_pushinteger(L, (lua_Integer)(heap.hit ? heap.limit - MEMORY_RESERVE : heap.limit));
    return 2;
}

int hrun_heap_charge(ptrdiff_t delta)
{
    if (delta > 0 && heap.limit && heap.used + (size_t)delta > heap.limit) {
        heap.hit = 1;
        return 0;
    }
    heap.used += (size_t)delta;
    return 1;
}

int hrun_heap_hit(void)
{
    return heap.hit;
}

void hrun_openheap(lua_State *L)
{
    lua_pushcfunction(L, priv_memlimit);
    lua_setfield(L, -2, "memlimit");
    lua_pushcfunction(L, priv_memhit);
    lua_setfield(L, -2, "memhit");
}

/* As lauxlib's: the message of an error nobody catches. */
static int panic(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "hrun: unprotected error in a call to Lua: %s\n", msg ? msg : "?");
    return 0;
}

/* }====================================================== */

lua_State *hrun_newstate(void)
{
    lua_State *L = lua_newstate(counted_alloc, NULL);
    if (L == NULL) return NULL;
    lua_atpanic(L, panic);
    hrun_Runtime *rt = lua_newuserdatauv(L, sizeof *rt, 0);
    memset(rt, 0, sizeof *rt);
    rt->lua_before = rt->lua_after = LUA_NOREF;
    /* frees what the runtime holds when the state closes */
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, runtime_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, "hrun.runtime");
    *(hrun_Runtime **)lua_getextraspace(L) = rt;
    luaL_openlibs(L);
    hrun_maskstdio(L);
    /* strings' metatable is everyone's: a playbook may not reach it to change it */
    lua_pushliteral(L, "");
    if (lua_getmetatable(L, -1)) {
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    for (const luaL_Reg *m = hrun_modules; m->name; m++) {
        lua_pushcfunction(L, m->func);
        lua_pushfstring(L, "hrun.%s", m->name);
        lua_insert(L, -2);
        lua_settable(L, -3);
    }
#ifdef HRUN_PORTABLE
    for (size_t i = 0; i < sizeof missing_modules / sizeof missing_modules[0]; i++) {
        lua_pushfstring(L, "hrun.%s", missing_modules[i][0]);
        lua_pushinteger(L, (lua_Integer)i);
        lua_pushcclosure(L, missing_open, 1);
        lua_settable(L, -3);
    }
#endif
    lua_pop(L, 1);
    return L;
}

hrun_Options *hrun_options(lua_State *L)
{
    return &hrun_runtime(L)->options;
}

void hrun_openlibs(lua_State *L)
{
    lua_newtable(L);
    for (const luaL_Reg *m = hrun_modules; m->name; m++) {
        lua_pushfstring(L, "hrun.%s", m->name);
        luaL_requiref(L, lua_tostring(L, -1), m->func, 0);
        lua_pushvalue(L, -1);
        lua_setglobal(L, m->name);
        lua_setfield(L, -3, m->name);
        lua_pop(L, 1);
    }
#ifdef HRUN_PORTABLE
    /* the stand-ins are globals too (a script's git.clone fails saying why), not in the
    ** table of the modules this build has */
    for (size_t i = 0; i < sizeof missing_modules / sizeof missing_modules[0]; i++) {
        lua_getglobal(L, "require");
        lua_pushfstring(L, "hrun.%s", missing_modules[i][0]);
        lua_call(L, 1, 1);
        lua_setglobal(L, missing_modules[i][0]);
    }
#endif
}

/* {======================================================
** The private library: what the engine (the Lua files of stdlib/hrun) needs from C and
** playbooks must not see. Passed as a chunk argument, never a global.
** ======================================================= */

static int priv_primitives(lua_State *L)
{
    hrun_pushprimitives(L);
    return 1;
}

static int priv_interrupted(lua_State *L)
{
    lua_pushinteger(L, hrun_interrupted());
    return 1;
}

static int priv_clearinterrupt(lua_State *L)
{
    (void)L;
    hrun_clearinterrupt();
    return 0;
}

/* shielded(fn, ...) → fn(...): fn runs with Ctrl-C and the step's deadline held off
** until it returns (hrun_Runtime.shielded): what it journals is not cut in the middle */
static int priv_shielded(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    hrun_Runtime *rt = hrun_runtime(L);
    int level = rt->shielded++;
    int status = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    hrun_unshield(L, level, 0);
    if (status != LUA_OK) return lua_error(L);
    return lua_gettop(L);
}

/* takeinterrupts() → n: the interrupts that arrived, none left; putinterrupts(n) */
static int priv_takeinterrupts(lua_State *L)
{
    lua_pushinteger(L, hrun_takeinterrupts());
    return 1;
}

static int priv_putinterrupts(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    hrun_putinterrupts(n > 1000 ? 1000 : (int)n);
    return 0;
}

/* nearest(word, {candidates}) → the plausible intended candidate, or nil */
static int priv_nearest(lua_State *L)
{
    const char *word = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_Integer n = luaL_len(L, 2);
    const char **cands = lua_newuserdatauv(L, sizeof(char *) * ((size_t)n + 1), 0);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 2, i);
        cands[i - 1] = lua_tostring(L, -1); /* anchored by the table */
        lua_pop(L, 1);
        if (cands[i - 1] == NULL) return luaL_argerror(L, 2, "strings expected");
    }
    cands[n] = NULL;
    const char *best = hrun_nearest(word, cands);
    if (best)
        lua_pushstring(L, best);
    else
        lua_pushnil(L);
    return 1;
}

/* setoptions{verbose = bool, color = bool} */
static int priv_setoptions(lua_State *L)
{
    hrun_Options *o = hrun_options(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "verbose");
    o->verbose = lua_toboolean(L, -1);
    lua_getfield(L, 1, "color");
    o->color = lua_toboolean(L, -1);
    return 0;
}

/* setdeadline(monotonic seconds | 0): the current step's deadline */
static int priv_setdeadline(lua_State *L)
{
    hrun_setdeadline(L, luaL_checknumber(L, 1));
    return 0;
}

/* deadline() → the current step's deadline (monotonic seconds), 0: none */
static int priv_deadline(lua_State *L)
{
    lua_pushnumber(L, hrun_deadline(L));
    return 1;
}

/* inverse(name, ...) → {{op, args}, …} | nil, why: how to undo that call, before it runs */
static int priv_inverse(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    return hrun_inverse(L, name, lua_gettop(L) - 1);
}

/* preview(name, ...) → what a planned write would change (a table), or nil */
static int priv_preview(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    return hrun_preview(L, name, lua_gettop(L) - 1);
}

/* check(name, ...): raises as the sandbox in force would refuse that call;
** checkundo(name, ...): the same for an inverse's operation (the run's stash is allowed) */
static int priv_check(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    hrun_checkcall(L, name, lua_gettop(L) - 1, 0);
    return 0;
}

static int priv_checkundo(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    hrun_checkcall(L, name, lua_gettop(L) - 1, 1);
    return 0;
}

/* unchanged(name, ...) → what that call returns when it would change nothing, or nil */
static int priv_unchanged(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    return hrun_unchanged(L, name, lua_gettop(L) - 1);
}

/* setstash(dir, run | nil): the run's stash, where inverses save what writes destroy */
static int priv_setstash(lua_State *L)
{
    hrun_Runtime *rt = hrun_runtime(L);
    const char *dir = luaL_optstring(L, 1, NULL);
    rt->run_id = dir ? luaL_optinteger(L, 2, 0) : 0;
    char *copy = dir ? strdup(dir) : NULL;
    if (dir && copy == NULL) return luaL_error(L, "not enough memory");
    free(rt->stash_dir);
    rt->stash_dir = copy;
    return 0;
}

/* armthread(co) → co: interrupts and the step's deadline reach code running in it */
static int priv_armthread(lua_State *L)
{
    lua_State *co = lua_tothread(L, 1);
    luaL_argexpected(L, co != NULL, 1, "coroutine");
    hrun_armthread(co);
    lua_settop(L, 1);
    return 1;
}

/* mask(text) → text with every secret's bytes shown as <secret> */
static int priv_mask(lua_State *L)
{
    if (lua_type(L, 1) != LUA_TSTRING) return lua_settop(L, 1), 1;
    hrun_mask(L, 1);
    return 1;
}

/* secretbytes(secret) → its bytes: for the channel to another host only (ssh's), where
** the agent must write them; a playbook never gets this function */
static int priv_secretbytes(lua_State *L)
{
    size_t len;
    const char *b = hrun_tobytes(L, 1, &len);
    luaL_argcheck(L, b != NULL, 1, "a secret expected");
    lua_pushlstring(L, b, len);
    return 1;
}

/* diffpreview(path, old | nil, new) → a write's preview: the unified diff of old to new (a
** file on another host, read there, diffed here) */
static int priv_diffpreview(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    size_t oldlen = 0, newlen = 0;
    const char *old = lua_isnoneornil(L, 2) ? NULL : luaL_checklstring(L, 2, &oldlen);
    const char *new = luaL_checklstring(L, 3, &newlen);
    hrun_diff_preview(L, path, old, oldlen, new, newlen);
    return 1;
}

/* pid() → this process's id */
static int priv_pid(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)getpid());
    return 1;
}

/* secrets() → how many texts the masker hides (0: nothing to mask) */
static int priv_secrets(lua_State *L)
{
    lua_pushinteger(L, hrun_secrets_masked());
    return 1;
}

/* setstrict(bool): primitives raise their nil, message failures (inside playbooks) */
static int priv_setstrict(lua_State *L)
{
    hrun_runtime(L)->strict = lua_toboolean(L, 1);
    return 0;
}

/*
** The setters of the runner's callbacks, one function over its registry field:
**   setstreamsink(fn | nil): where exec's stream = true lines go, as fn(line, "stdout")
**   setticker(fn | nil): called about every 0.1 s while exec.run or sys.sleep waits
**   setprotector(fn | nil): fn(path) says whether an unfinished run references path
**   setjournal(fn | nil): fn() gives the journal's db, for the hash module's manifests
**   settransport(fn | nil): where a copy's sending side answers (TRANSPORT)
*/
static int priv_setcallback(lua_State *L)
{
    if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_settop(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, lua_tostring(L, lua_upvalueindex(1)));
    return 0;
}

static int priv_monotime(lua_State *L)
{
    lua_pushnumber(L, hrun_monotime());
    return 1;
}

/* selfexe() → the path of the running hrun */
static int priv_selfexe(lua_State *L)
{
    hrun_self_exe(L);
    return 1;
}

static int priv_isatty(lua_State *L)
{
    lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
    return 1;
}

/* termsize(fd) → rows, columns of the terminal fd is, or nil (not a terminal) */
static int priv_termsize(lua_State *L)
{
    struct winsize w;
    if (ioctl((int)luaL_checkinteger(L, 1), TIOCGWINSZ, &w) != 0 || w.ws_row == 0) return 0;
    lua_pushinteger(L, w.ws_row);
    lua_pushinteger(L, w.ws_col);
    return 2;
}

int hrun_openprivate(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"primitives", priv_primitives},
        {"interrupted", priv_interrupted},
        {"clearinterrupt", priv_clearinterrupt},
        {"shielded", priv_shielded},
        {"takeinterrupts", priv_takeinterrupts},
        {"putinterrupts", priv_putinterrupts},
        {"nearest", priv_nearest},
        {"setoptions", priv_setoptions},
        {"isatty", priv_isatty},
        {"termsize", priv_termsize},
        {"selfexe", priv_selfexe},
        {"sethooks", hrun_setluahooks},
        {"setdeadline", priv_setdeadline},
        {"deadline", priv_deadline},
        {"inverse", priv_inverse},
        {"preview", priv_preview},
        {"unchanged", priv_unchanged},
        {"check", priv_check},
        {"checkundo", priv_checkundo},
        {"setstash", priv_setstash},
        {"monotime", priv_monotime},
        {"setstrict", priv_setstrict},
        {"memlimit", priv_memlimit},
        {"mask", priv_mask},
        {"secretbytes", priv_secretbytes},
        {"diffpreview", priv_diffpreview},
        {"pid", priv_pid},
        {"armthread", priv_armthread},
        {"secrets", priv_secrets},
        {"memhit", priv_memhit},
        {"readline", hrun_repl_readline},
        {"addhistory", hrun_repl_addhistory},
        {"repl_open", hrun_repl_open},
        {"repl_close", hrun_repl_close},
        {NULL, NULL},
    };
    luaL_newlib(L, funcs);
    static const char *const callbacks[][2] = {
        {"setstreamsink", STREAM_SINK}, {"setticker", TICKER},       {"setprotector", PROTECTOR},
        {"setjournal", JOURNAL_DB},     {"settransport", TRANSPORT},
    };
    for (size_t i = 0; i < sizeof callbacks / sizeof callbacks[0]; i++) {
        lua_pushstring(L, callbacks[i][1]);
        lua_pushcclosure(L, priv_setcallback, 1);
        lua_setfield(L, -2, callbacks[i][0]);
    }
    hrun_opensqlite(L);
    hrun_openlock(L);
    hrun_opendigest(L);
    hrun_opensandbox(L);
    hrun_openundo(L);
    hrun_openchildren(L);
    hrun_openconfine(L);
    lua_pushliteral(L, HRUN_VERSION);
    lua_setfield(L, -2, "version");
    /* portable: whether this is the static build (docs/portable.md); modules: the names of
    ** the modules it has, in the order of hrun_modules */
#ifdef HRUN_PORTABLE
    lua_pushboolean(L, 1);
#else
    lua_pushboolean(L, 0);
#endif
    lua_setfield(L, -2, "portable");
    lua_newtable(L);
    for (const luaL_Reg *m = hrun_modules; m->name; m++) {
        lua_pushstring(L, m->name);
        lua_rawseti(L, -2, m - hrun_modules + 1);
    }
    lua_setfield(L, -2, "modules");
    return 1;
}

/* }====================================================== */
