/*
** test_registry.c — the dispatcher: every call passes through the hooks, which can
** watch it, stand in for it (plan mode) or refuse it (the sandbox), without the
** modules knowing; misuse names the primitive and the caller's line.
*/
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "unit.h"

static lua_State *newstate(void)
{
    lua_State *L = hrun_newstate();
    hrun_openlibs(L);
    lua_pop(L, 1);
    return L;
}

/* Runs code; returns its error message or NULL (kept in a static buffer). */
static const char *run(lua_State *L, const char *code)
{
    static char msg[512];
    if (luaL_loadbuffer(L, code, strlen(code), "=t") == LUA_OK && lua_pcall(L, 0, 0, 0) == LUA_OK)
        return NULL;
    snprintf(msg, sizeof msg, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
    return msg;
}

typedef struct Seen {
    int before, after, writes, reads;
    char last[64];
    int plan;   /* stand in for writes */
    int refuse; /* raise for capability "exec" */
} Seen;

static int before(lua_State *L, const hrun_Call *call, void *ud)
{
    Seen *s = ud;
    s->before++;
    snprintf(s->last, sizeof s->last, "%s", call->fullname);
    if (call->writes) s->writes++;
    if (!call->writes) s->reads++;
    if (s->refuse && call->prim->cap && strcmp(call->prim->cap, "exec") == 0)
        return luaL_error(L, "capability '%s' not granted", call->prim->cap);
    if (s->plan && call->writes) {
        lua_pushfstring(L, "<planned %s>", call->fullname);
        return 1;
    }
    return -1;
}

static void after(lua_State *L, const hrun_Call *call, int nres, void *ud)
{
    (void)L, (void)call, (void)nres;
    ((Seen *)ud)->after++;
}

static void test_hooks_see_every_call(void)
{
    lua_State *L = newstate();
    Seen s = {0};
    hrun_Hooks h = {before, after, &s};
    hrun_sethooks(L, &h);
    CHECK(run(L, "assert(fs.exists('/'))") == NULL);
    CHECK(s.before == 1 && s.after == 1 && s.reads == 1 && s.writes == 0);
    CHECK_STR(s.last, "fs.exists");
    CHECK(run(L, "assert(json.decode('[1]')[1] == 1)") == NULL);
    CHECK_STR(s.last, "json.decode");
    lua_close(L);
}

static void test_plan_stands_in_for_writes(void)
{
    lua_State *L = newstate();
    char dir[] = "/tmp/hrun-unit-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    Seen s = {0};
    s.plan = 1;
    hrun_Hooks h = {before, after, &s};
    hrun_sethooks(L, &h);
    char code[256];
    snprintf(code, sizeof code,
             "local r = fs.write('%s/f', 'x'); assert(r == '<planned fs.write>', r);"
             "assert(not fs.exists('%s/f'))",
             dir, dir);
    CHECK(run(L, code) == NULL);
    CHECK(s.writes == 1 && s.after == 1); /* the stand-in is not followed by after */
    /* exec.run with readonly = true reads: it runs even in plan mode */
    CHECK(run(L, "local r = exec.run({'true'}, {readonly = true}); assert(r.ok)") == NULL);
    CHECK(run(L, "assert(exec.run({'true'}) == '<planned exec.run>')") == NULL);
    rmdir(dir);
    lua_close(L);
}

static void test_refusal_names_capability(void)
{
    lua_State *L = newstate();
    Seen s = {0};
    s.refuse = 1;
    hrun_Hooks h = {before, NULL, &s};
    hrun_sethooks(L, &h);
    const char *err = run(L, "exec.run({'true'})");
    CHECK(err && strstr(err, "t:1: capability 'exec' not granted"));
    CHECK(run(L, "assert(fs.exists('/'))") == NULL);
    hrun_sethooks(L, NULL);
    CHECK(run(L, "exec.run({'true'})") == NULL);
    lua_close(L);
}

static void test_misuse_names_primitive_and_line(void)
{
    lua_State *L = newstate();
    const char *err = run(L, "\n\nexec.run(5)");
    CHECK_STR(err, "t:3: bad argument #1 to 'exec.run' (table expected, got number)");
    err = run(L, "local w = fs.write\nw('/tmp/x', {})");
    CHECK_STR(err, "t:2: bad argument #2 to 'fs.write' (string or secret expected, got table)");
    err = run(L, "exec.run({'true'}, {timout = 1})");
    CHECK_STR(
        err,
        "t:1: bad argument #2 to 'exec.run' (unknown option 'timout' (did you mean 'timeout'?))");
    /* an error raised by a Lua callback inside a primitive keeps its own position */
    err = run(L, "exec.run({'echo', 'x'}, {stream = function() error('cb') end})");
    CHECK_STR(err, "t:1: cb");
    err = run(L, "exec.run({'echo', 'x'}, {stream = function()\nerror('cb2') end})");
    CHECK_STR(err, "t:2: cb2");
    lua_close(L);
}

static void test_primitive_listing(void)
{
    lua_State *L = newstate();
    CHECK(run(L, "fs.exists('/')") == NULL);
    hrun_pushprimitives(L);
    int found = 0, n = (int)luaL_len(L, -1);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        lua_getfield(L, -1, "name");
        lua_getfield(L, -2, "kind");
        lua_getfield(L, -3, "calls");
        const char *name = lua_tostring(L, -3), *kind = lua_tostring(L, -2);
        if (strcmp(name, "fs.write") == 0) {
            found |= 1;
            CHECK_STR(kind, "write");
        } else if (strcmp(name, "fs.exists") == 0) {
            found |= 2;
            CHECK_STR(kind, "read");
            CHECK(lua_tointeger(L, -1) == 1);
        } else if (strcmp(name, "json.encode") == 0) {
            found |= 4;
            CHECK_STR(kind, "pure");
        }
        lua_pop(L, 4);
    }
    CHECK(found == 7);
    CHECK(n >= 20);
    lua_close(L);
}

static void test_require_gives_the_globals(void)
{
    lua_State *L = newstate();
    CHECK(run(L, "assert(require 'hrun.fs' == fs and require 'hrun.exec' == exec and "
                 "require 'hrun.json' == json and require 'hrun.sys' == sys)") == NULL);
    lua_close(L);
}

int main(void)
{
    RUN(test_hooks_see_every_call);
    RUN(test_plan_stands_in_for_writes);
    RUN(test_refusal_names_capability);
    RUN(test_misuse_names_primitive_and_line);
    RUN(test_primitive_listing);
    RUN(test_require_gives_the_globals);
    return UNIT_END();
}
