/*
** mod_podman.c — the `podman` module: containers through podman's own JSON output
** (`podman ps --format json`, `podman inspect`), started, stopped and restarted with the
** state they end in, and their logs. The command is `podman` from PATH (HRUN_PODMAN
** overrides it); its configuration comes from the environment as for podman itself
** (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF). Containers that systemd runs
** (`podman-<name>.service`) are better controlled through `service`.
*/
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* [-0, +1, e] Runs podman with the arguments (strings, NULL-ended), output kept; pushes
** exec's result table. */
static void podman(lua_State *L, const char *what, const char *const *args)
{
    const char *cmd = getenv("HRUN_PODMAN");
    hrun_pushexec(L, what);
    lua_newtable(L);
    lua_pushstring(L, cmd && *cmd ? cmd : "podman");
    lua_rawseti(L, -2, 1);
    for (int i = 0; args[i]; i++) {
        lua_pushstring(L, args[i]);
        lua_rawseti(L, -2, i + 2);
    }
    lua_createtable(L, 0, 1);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "check");
    lua_call(L, 2, 2);
    if (lua_isnil(L, -2)) lua_error(L); /* podman cannot be started: its message */
    lua_pop(L, 1);
}

/* [-1, +3, m] For a failed podman run (its result on top): nil, "what: name: podman's
** last line of stderr", code (ENOENT when podman says there is no such container). */
static int podman_fail(lua_State *L, const char *what, const char *name)
{
    lua_getfield(L, -1, "stderr");
    size_t len;
    const char *err = lua_tolstring(L, -1, &len);
    while (len > 0 && (err[len - 1] == '\n' || err[len - 1] == ' ')) len--;
    size_t start = len;
    while (start > 0 && err[start - 1] != '\n') start--;
    const char *line = err + start;
    if (strncmp(line, "Error: ", 7) == 0) line += 7;
    int missing =
        strstr(line, "no such container") != NULL || strstr(line, "no container with") != NULL;
    lua_pushlstring(L, line, (size_t)(err + len - line));
    return hrun_failf(L, missing ? "ENOENT" : "EPODMAN", "%s: %s: %s", what, name,
                      len ? lua_tostring(L, -1) : "podman failed");
}

static int ran_ok(lua_State *L)
{
    lua_getfield(L, -1, "ok");
    int ok = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return ok;
}

/* [-1, +1, e] The JSON on the stdout of the result on top, decoded (replaces it). */
static void decode_stdout(lua_State *L, const char *what)
{
    lua_getfield(L, -1, "stdout");
    lua_pushcfunction(L, hrun_json_decode);
    lua_insert(L, -2);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK)
        luaL_error(L, "%s: podman's output is not the JSON expected: %s", what,
                   lua_tostring(L, -1));
    lua_remove(L, -2);
}

/* [-0, +0, m] t[to] = t_src[from] for the table at dst from the one at src. */
static void copy_field(lua_State *L, int dst, int src, const char *from, const char *to)
{
    lua_getfield(L, src, from);
    lua_setfield(L, dst, to);
}

/* A container name or id argument. */
static const char *check_name(lua_State *L, int arg)
{
    size_t len;
    const char *s = luaL_checklstring(L, arg, &len);
    if (len == 0 || strlen(s) != len || s[0] == '-') luaL_argerror(L, arg, "not a container name");
    return s;
}

static const char *const ps_options[] = {"all", NULL};

/*
** podman.ps([{all = false}]) → {{id, name, names, image, state, status, created, exit_code,
** pid}, …} by name: the running containers (all: every one).
*/
static int l_ps(lua_State *L)
{
    hrun_checkopts(L, 1, ps_options);
    int all = hrun_optbool(L, 1, "all", 0);
    static const char *const running[] = {"ps", "--format", "json", NULL};
    static const char *const every[] = {"ps", "--all", "--format", "json", NULL};
    podman(L, "podman.ps", all ? every : running);
    if (!ran_ok(L)) return podman_fail(L, "podman.ps", all ? "--all" : "ps");
    decode_stdout(L, "podman.ps");
    int in = lua_gettop(L);
    lua_Integer n = lua_istable(L, in) ? (lua_Integer)lua_rawlen(L, in) : 0;
    lua_createtable(L, (int)n, 0);
    int out = lua_gettop(L);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, in, i);
        int c = lua_gettop(L);
        lua_createtable(L, 0, 9);
        int e = lua_gettop(L);
        copy_field(L, e, c, "Id", "id");
        copy_field(L, e, c, "Names", "names");
        lua_getfield(L, c, "Names");
        if (lua_istable(L, -1)) lua_rawgeti(L, -1, 1), lua_setfield(L, e, "name");
        lua_pop(L, 1);
        copy_field(L, e, c, "Image", "image");
        copy_field(L, e, c, "State", "state");
        copy_field(L, e, c, "Status", "status");
        copy_field(L, e, c, "Created", "created");
        copy_field(L, e, c, "ExitCode", "exit_code");
        copy_field(L, e, c, "Pid", "pid");
        lua_rawseti(L, out, i);
        lua_settop(L, out);
    }
    /* by name */
    lua_getglobal(L, "table");
    lua_getfield(L, -1, "sort");
    lua_pushvalue(L, out);
    luaL_loadstring(L, "local a, b = ... return (a.name or '') < (b.name or '')");
    lua_call(L, 2, 0);
    lua_settop(L, out);
    return 1;
}

/* [-0, +1, e] The inspection of a container, normalised; NULL-free: returns 3 after
** pushing the failure when podman has no such container. */
static int inspect(lua_State *L, const char *what, const char *name)
{
    const char *const args[] = {"inspect", "--type", "container", "--format", "json", name, NULL};
    podman(L, what, args);
    if (!ran_ok(L)) return podman_fail(L, what, name);
    decode_stdout(L, what);
    lua_rawgeti(L, -1, 1);
    if (!lua_istable(L, -1))
        return hrun_failf(L, "ENOENT", "%s: %s: no such container", what, name);
    int c = lua_gettop(L);
    lua_getfield(L, c, "State");
    int st = lua_gettop(L);
    lua_getfield(L, c, "Config");
    int cfg = lua_gettop(L);
    lua_createtable(L, 0, 12);
    int e = lua_gettop(L);
    copy_field(L, e, c, "Id", "id");
    copy_field(L, e, c, "Name", "name");
    copy_field(L, e, c, "ImageName", "image");
    copy_field(L, e, c, "RestartCount", "restarts");
    if (lua_istable(L, st)) {
        copy_field(L, e, st, "Status", "status");
        copy_field(L, e, st, "Running", "running");
        copy_field(L, e, st, "ExitCode", "exit_code");
        copy_field(L, e, st, "Pid", "pid");
        copy_field(L, e, st, "StartedAt", "started_at");
        copy_field(L, e, st, "FinishedAt", "finished_at");
        lua_getfield(L, st, "Health");
        if (lua_istable(L, -1)) copy_field(L, e, lua_gettop(L), "Status", "health");
        lua_pop(L, 1);
    }
    if (lua_istable(L, cfg)) {
        copy_field(L, e, cfg, "Labels", "labels");
        copy_field(L, e, cfg, "Env", "env");
    }
    lua_pushvalue(L, c);
    lua_setfield(L, e, "raw");
    return 1;
}

/*
** podman.inspect(name) → {id, name, image, status, running, exit_code, pid, started_at,
** finished_at, restarts, health, labels, env, raw} | nil, message, code ("ENOENT")
*/
static int l_inspect(lua_State *L)
{
    const char *name = check_name(L, 1);
    return inspect(L, "podman.inspect", name);
}

static const char *const logs_options[] = {"tail", "since", NULL};

/*
** podman.logs(name [, {tail = N, since = "10m"}]) → stdout, stderr of the container
** | nil, message, code
*/
static int l_logs(lua_State *L)
{
    const char *name = check_name(L, 1);
    hrun_checkopts(L, 2, logs_options);
    lua_Integer tail = hrun_optinteger(L, 2, "tail", -1);
    const char *since = hrun_optstring(L, 2, "since", NULL, NULL);
    char n[32];
    snprintf(n, sizeof n, "%lld", (long long)tail);
    const char *args[8];
    int k = 0;
    args[k++] = "logs";
    if (tail >= 0) args[k++] = "--tail", args[k++] = n;
    if (since) args[k++] = "--since", args[k++] = since;
    args[k++] = name;
    args[k] = NULL;
    podman(L, "podman.logs", args);
    if (!ran_ok(L)) return podman_fail(L, "podman.logs", name);
    lua_getfield(L, -1, "stdout");
    lua_getfield(L, -2, "stderr");
    return 2;
}

static const char *const action_options[] = {"timeout", NULL};

/* The body of start, stop and restart: then the container as inspect sees it. */
static int action(lua_State *L, const char *what, const char *verb)
{
    const char *name = check_name(L, 1);
    hrun_checkopts(L, 2, action_options);
    lua_Integer timeout = hrun_optinteger(L, 2, "timeout", 10);
    if (timeout < 0) luaL_argerror(L, 2, "field 'timeout': must not be negative");
    char t[32];
    snprintf(t, sizeof t, "%lld", (long long)timeout);
    const char *with_time[] = {verb, "--time", t, name, NULL};
    const char *plain[] = {verb, name, NULL};
    podman(L, what, strcmp(verb, "start") == 0 ? plain : with_time);
    if (!ran_ok(L)) return podman_fail(L, what, name);
    return inspect(L, what, name);
}

/*
** podman.start / stop / restart(name [, {timeout = 10}]) → the container as
** podman.inspect returns it | nil, message, code. stop and restart give it timeout seconds
** after SIGTERM before SIGKILL.
*/
static int l_start(lua_State *L)
{
    return action(L, "podman.start", "start");
}

static int l_stop(lua_State *L)
{
    return action(L, "podman.stop", "stop");
}

static int l_restart(lua_State *L)
{
    return action(L, "podman.restart", "restart");
}

/* Undo of start and stop: the container back as it is now, running or not. */
static int start_stop_inverse(lua_State *L, int starting)
{
    const char *name = check_name(L, 1);
    lua_settop(L, 1);
    lua_newtable(L); /* 2 */
    lua_pushcfunction(L, l_inspect);
    lua_pushstring(L, name);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_istable(L, -1)) return lua_settop(L, 2), 1;
    lua_getfield(L, -1, "running");
    int running = lua_toboolean(L, -1);
    lua_settop(L, 2);
    hrun_undo_startstop(L, 2, "podman", name, starting, running);
    return 1;
}

static int start_inverse(lua_State *L)
{
    return start_stop_inverse(L, 1);
}

static int stop_inverse(lua_State *L)
{
    return start_stop_inverse(L, 0);
}

/* A container's fingerprint, key = its name: "running", "not running", or "absent". */
int hrun_container_fp(lua_State *L)
{
    const char *name = lua_tostring(L, 1);
    if (name == NULL) return lua_pushliteral(L, "unreadable: no container in the key"), 1;
    lua_pushcfunction(L, l_inspect);
    lua_pushstring(L, name);
    if (lua_pcall(L, 1, 3, 0) != LUA_OK)
        return lua_pushfstring(L, "unreadable: %s", luaL_tolstring(L, -1, NULL)), 1;
    if (!lua_istable(L, -3)) {
        const char *code = lua_tostring(L, -1);
        if (code && strcmp(code, "ENOENT") == 0) return lua_pushliteral(L, "absent"), 1;
        return lua_pushfstring(L, "unreadable: %s", lua_tostring(L, -2)), 1;
    }
    lua_getfield(L, -3, "running");
    lua_pushstring(L, lua_toboolean(L, -1) ? "running" : "not running");
    return 1;
}

/* start and stop: the container (a restart has no state: it cannot be undone) */
static int container_state(lua_State *L)
{
    const char *name = check_name(L, 1);
    lua_newtable(L);
    lua_pushstring(L, name);
    hrun_addstate(L, lua_gettop(L) - 1, "container", name);
    return 1;
}

/* start (running wanted) and stop (not running): already so when the container is there
** and so; pushes it as podman.inspect returns it now, or nil */
static int startstop_unchanged(lua_State *L, int want_running)
{
    if (lua_type(L, 1) != LUA_TSTRING) return lua_pushnil(L), 1;
    lua_pushcfunction(L, l_inspect);
    lua_pushvalue(L, 1);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_istable(L, -1)) return lua_pushnil(L), 1;
    lua_getfield(L, -1, "running");
    int running = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (running != want_running) lua_pushnil(L);
    return 1;
}

static int start_unchanged(lua_State *L)
{
    return startstop_unchanged(L, 1);
}

static int stop_unchanged(lua_State *L)
{
    return startstop_unchanged(L, 0);
}

static int restart_inverse(lua_State *L)
{
    lua_pushnil(L);
    lua_pushliteral(L, "a restart cannot be undone (the old processes are gone)");
    return 2;
}

static const hrun_Prim podman_prims[] = {
    {.name = "ps", .func = l_ps, .kind = HRUN_READ, .cap = "service"},
    {.name = "inspect",
     .func = l_inspect,
     .kind = HRUN_READ,
     .cap = "service",
     .targets = hrun_targets_arg1},
    {.name = "logs",
     .func = l_logs,
     .kind = HRUN_READ,
     .cap = "service",
     .targets = hrun_targets_arg1},
    {.name = "start",
     .func = l_start,
     .kind = HRUN_WRITE,
     .opts = 2,
     .cap = "service",
     .inverse = start_inverse,
     .unchanged = start_unchanged,
     .state = container_state,
     .targets = hrun_targets_arg1},
    {.name = "stop",
     .func = l_stop,
     .kind = HRUN_WRITE,
     .opts = 2,
     .cap = "service",
     .inverse = stop_inverse,
     .unchanged = stop_unchanged,
     .state = container_state,
     .targets = hrun_targets_arg1},
    {.name = "restart",
     .func = l_restart,
     .kind = HRUN_WRITE,
     .opts = 2,
     .cap = "service",
     .inverse = restart_inverse,
     .targets = hrun_targets_arg1},
    {0},
};

int luaopen_hrun_podman(lua_State *L)
{
    hrun_newmodule(L, "podman", podman_prims);
    return 1;
}
