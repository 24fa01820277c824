/*
** mod_exec.c — the `exec` module: run a program (no shell) or, with exec.sh, a shell
** command; capture stdout and stderr apart, feed stdin, stream lines live, time out.
*/
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hrun/spawn.h"
#include "internal.h"

#define PROC_TYPE "hrun.exec.proc"

/* How much of stderr an error message quotes. */
#define TAIL_LINES 10
#define TAIL_BYTES 2000

extern char **environ;

typedef struct Buf {
    char *data;
    size_t len, cap;
} Buf;

/* A running command: a userdata box created before anything is acquired, so an error
** at any point (a raise, an interrupt, a memory error) leaves nothing behind. */
typedef struct Run {
    hrun_Proc proc;
    Buf out[3], line[3]; /* captured output and the unfinished line, by stream */
    char **argv, **envp;
    lua_State *L;
    int stream; /* 0 none, 1 echo to our stdout/stderr, 2 call the function at `streamfn` */
    int streamfn;
    int errref; /* a stream callback's error, or LUA_NOREF */
    int nomem;
} Run;

static int buf_add(Buf *b, const char *data, size_t len)
{
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len) cap *= 2;
        char *p = realloc(b->data, cap);
        if (p == NULL) return -1;
        b->data = p, b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

static int run_close(lua_State *L)
{
    Run *r = luaL_checkudata(L, 1, PROC_TYPE);
    hrun_proc_close(&r->proc);
    for (int i = 0; i < 3; i++) {
        free(r->out[i].data), free(r->line[i].data);
        r->out[i] = r->line[i] = (Buf){NULL, 0, 0};
    }
    free(r->argv), free(r->envp);
    r->argv = r->envp = NULL;
    if (r->errref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, r->errref);
    r->errref = LUA_NOREF;
    return 0;
}

static Run *run_new(lua_State *L)
{
    Run *r = lua_newuserdatauv(L, sizeof(Run), 0);
    memset(r, 0, sizeof *r);
    hrun_proc_init(&r->proc);
    r->errref = LUA_NOREF;
    r->L = L;
    hrun_setclose(L, PROC_TYPE, run_close, NULL);
    return r;
}

/* {======================================================
** Streaming
** ======================================================= */

static int emit_line(Run *r, int stream, const char *s, size_t len)
{
    lua_State *L = r->L;
    if (r->stream == 1) { /* echoed as hrun's own output: through the masker */
        FILE *f = stream == HRUN_STDOUT ? stdout : stderr;
        lua_pushlstring(L, s, len);
        hrun_mask(L, -1);
        s = lua_tolstring(L, -1, &len);
        fwrite(s, 1, len, f);
        fputc('\n', f);
        fflush(f);
        lua_pop(L, 2);
        return 0;
    }
    lua_pushvalue(L, r->streamfn);
    lua_pushlstring(L, s, len);
    lua_pushstring(L, stream == HRUN_STDOUT ? "stdout" : "stderr");
    if (hrun_pcallback(L, 2) != LUA_OK) {
        r->errref = luaL_ref(L, LUA_REGISTRYINDEX);
        return -1;
    }
    lua_pop(L, 1);
    return 0;
}

/* Cuts the stream's pending bytes into lines; at EOF (final) the rest is a line too. */
static int split_lines(Run *r, int stream, int final)
{
    Buf *b = &r->line[stream];
    size_t start = 0;
    if (b->len == 0) return 0;
    for (size_t i = 0; i < b->len; i++) {
        if (b->data[i] != '\n') continue;
        if (emit_line(r, stream, b->data + start, i - start) < 0) return -1;
        start = i + 1;
    }
    if (final && start < b->len) {
        if (emit_line(r, stream, b->data + start, b->len - start) < 0) return -1;
        start = b->len;
    }
    memmove(b->data, b->data + start, b->len - start);
    b->len -= start;
    return 0;
}

/* The runner's ticker (a spinner), while the command runs. */
static void on_tick(void *ud)
{
    hrun_tick(((Run *)ud)->L);
}

static int on_output(void *ud, int stream, const char *data, size_t len)
{
    Run *r = ud;
    if (buf_add(&r->out[stream], data, len) < 0) return r->nomem = 1, -1;
    if (r->stream == 0) return 0;
    if (buf_add(&r->line[stream], data, len) < 0) return r->nomem = 1, -1;
    return split_lines(r, stream, 0);
}

/* }====================================================== */

/* [-0, +1, m] The command as a person would type it, for messages. */
static void push_command(lua_State *L, char *const *argv)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 0; argv[i]; i++) {
        const unsigned char *s = (const unsigned char *)argv[i];
        if (i > 0) luaL_addchar(&b, ' ');
        if (hrun_secret_owns(argv[i])) {
            luaL_addstring(&b, "<secret>");
            continue;
        }
        int plain = *s != '\0';
        for (const unsigned char *p = s; *p; p++)
            if (!(strchr("_./=:,+@%-", *p) || (*p >= '0' && *p <= '9') ||
                  ((*p | 0x20) >= 'a' && (*p | 0x20) <= 'z')))
                plain = 0;
        if (plain) {
            luaL_addstring(&b, argv[i]);
            continue;
        }
        luaL_addchar(&b, '\'');
        for (const unsigned char *p = s; *p; p++) {
            if (*p == '\'')
                luaL_addstring(&b, "'\\''");
            else if (*p < 0x20 || *p == 0x7f) {
                char esc[8];
                snprintf(esc, sizeof esc, "\\x%02x", *p);
                luaL_addstring(&b, esc);
            } else
                luaL_addchar(&b, (char)*p);
        }
        luaL_addchar(&b, '\'');
        if (b.n > 300) {
            luaL_addstring(&b, " …");
            break;
        }
    }
    luaL_pushresult(&b);
}

/* [-0, +1, m] The last lines of what the command wrote to stderr. */
static void push_tail(lua_State *L, const Buf *b)
{
    size_t end = b->len, start;
    while (end > 0 && (b->data[end - 1] == '\n' || b->data[end - 1] == ' ')) end--;
    start = end;
    for (int lines = 0; start > 0 && end - start < TAIL_BYTES; start--)
        if (b->data[start - 1] == '\n' && ++lines == TAIL_LINES) break;
    lua_pushlstring(L, b->len ? b->data + start : "", end - start);
}

/* [-0, +1, m] "SIGTERM" */
static void push_signame(lua_State *L, int sig)
{
    const char *abbrev = sigabbrev_np(sig);
    if (abbrev)
        lua_pushfstring(L, "SIG%s", abbrev);
    else
        lua_pushfstring(L, "signal %d", sig);
}

/* [-3, +(0|3), v] With nil, message, code on top: raises the message when `check`,
** else returns 3 to hand all three back. */
static int fail_or_raise(lua_State *L, int check)
{
    if (!check) return 3;
    lua_pop(L, 1);
    return lua_error(L);
}

static const char *const run_options[] = {"cwd",     "env",     "clear_env", "stdin", "timeout",
                                          "grace",   "check",   "stream",    "undo",  "readonly",
                                          "creates", "removes", "changed",   NULL};

/* [-0, +0, v] Field `undo` of the options at 2: the command that undoes this one — an
** argv for exec.run, a shell command for exec.sh — or absent. */
static void check_undo(lua_State *L, const char *what)
{
    if (lua_type(L, 2) != LUA_TTABLE) return;
    lua_pushliteral(L, "undo");
    int t = lua_rawget(L, 2); /* raw, as the sandbox and the inverse read it */
    int sh = strcmp(what, "exec.sh") == 0;
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    if (sh && t != LUA_TSTRING)
        luaL_argerror(
            L, 2,
            lua_pushfstring(L, "field 'undo': a command expected, got %s", luaL_typename(L, -1)));
    if (!sh) {
        lua_Integer n = t == LUA_TTABLE ? luaL_len(L, -1) : 0;
        if (n < 1) luaL_argerror(L, 2, "field 'undo': an argv (a non-empty array) expected");
        for (lua_Integer i = 1; i <= n; i++) {
            if (lua_rawgeti(L, -1, i) != LUA_TSTRING)
                luaL_argerror(L, 2,
                              lua_pushfstring(L, "field 'undo': argv[%I] must be a string", i));
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

/* [-0, +0, v] argv from the table at 1 into r->argv (pointers into its strings). */
static void check_argv(lua_State *L, Run *r)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer n = luaL_len(L, 1);
    if (n < 1) luaL_argerror(L, 1, "argv is empty");
    for (lua_Integer i = 1; i <= n; i++) {
        size_t len;
        lua_rawgeti(L, 1, i);
        const char *s = hrun_tobytes(L, -1, &len); /* a string or a secret */
        if (s == NULL)
            luaL_argerror(
                L, 1,
                lua_pushfstring(L, "argv[%I] must be a string, got %s", i, luaL_typename(L, -1)));
        if (memchr(s, '\0', len))
            luaL_argerror(L, 1, lua_pushfstring(L, "argv[%I] contains a NUL byte", i));
        lua_pop(L, 1);
    }
    if ((r->argv = calloc((size_t)n + 1, sizeof(char *))) == NULL)
        luaL_error(L, "not enough memory");
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 1, i);
        r->argv[i - 1] = (char *)hrun_tobytes(L, -1, NULL); /* anchored by the argv table */
        lua_pop(L, 1);
    }
}

/* [-0, +1, v] The environment for the child into r->envp, when `env` or `clear_env`
** asks for one; its "K=V" strings live in the table it leaves on the stack. In the
** sandbox (checked: a playbook's own exec.run), each name set or unset needs env:NAME. */
static void build_env(lua_State *L, Run *r, int clear, const char *what, int checked)
{
    int has_env = hrun_optfield(L, 2, "env", LUA_TTABLE);
    lua_newtable(L); /* name -> "name=value" */
    if (!has_env && !clear) return;
    int envt = lua_gettop(L) - (has_env ? 1 : 0);
    int strs = lua_gettop(L);
    if (!clear) {
        for (char **e = environ; *e; e++) {
            const char *eq = strchr(*e, '=');
            if (eq == NULL) continue;
            lua_pushlstring(L, *e, (size_t)(eq - *e));
            lua_pushstring(L, *e);
            lua_rawset(L, strs);
        }
    }
    if (has_env) {
        lua_pushnil(L);
        while (lua_next(L, envt)) {
            size_t klen;
            if (lua_type(L, -2) != LUA_TSTRING)
                luaL_argerror(L, 2, "field 'env': names must be strings");
            const char *k = lua_tolstring(L, -2, &klen);
            if (klen == 0 || strchr(k, '=') || strlen(k) != klen)
                luaL_argerror(L, 2, lua_pushfstring(L, "field 'env': bad name '%s'", k));
            int unset = lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1);
            if (checked) {
                hrun_Target t = {"env", k, NULL, 0, !unset};
                hrun_sandbox_require(L, what, &t);
            }
            if (unset) {
                lua_pushvalue(L, -2);
                lua_pushnil(L);
                lua_rawset(L, strs); /* false unsets */
            } else if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER ||
                       hrun_tosecret(L, -1, NULL)) {
                size_t vlen;
                const char *v = hrun_tosecret(L, -1, &vlen);
                if (v == NULL) v = lua_tolstring(L, -1, &vlen);
                if (strlen(v) != vlen)
                    luaL_argerror(L, 2,
                                  lua_pushfstring(L, "field 'env': %s contains a NUL byte", k));
                lua_pushvalue(L, -2);
                lua_pushfstring(L, "%s=%s", k, v);
                lua_rawset(L, strs);
            } else {
                luaL_argerror(L, 2,
                              lua_pushfstring(L,
                                              "field 'env': %s must be a string or false, got %s",
                                              k, luaL_typename(L, -1)));
            }
            lua_pop(L, 1);
        }
        lua_remove(L, envt);
        strs--;
    }
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, strs)) n++, lua_pop(L, 1);
    if ((r->envp = calloc(n + 1, sizeof(char *))) == NULL) luaL_error(L, "not enough memory");
    n = 0;
    lua_pushnil(L);
    while (lua_next(L, strs)) {
        r->envp[n++] = (char *)lua_tostring(L, -1);
        lua_pop(L, 1);
    }
}

/* [-0, +1, m] The result table of a finished command. */
static void push_result(lua_State *L, Run *r)
{
    int st = r->proc.status;
    int exited = WIFEXITED(st) && !r->proc.timed_out && !r->proc.aborted;
    lua_createtable(L, 0, 7);
    lua_pushboolean(L, exited && WEXITSTATUS(st) == 0);
    lua_setfield(L, -2, "ok");
    if (WIFEXITED(st)) {
        lua_pushinteger(L, WEXITSTATUS(st));
        lua_setfield(L, -2, "code");
    } else if (WIFSIGNALED(st)) {
        push_signame(L, WTERMSIG(st));
        lua_setfield(L, -2, "signal");
    }
    lua_pushlstring(L, r->out[HRUN_STDOUT].len ? r->out[HRUN_STDOUT].data : "",
                    r->out[HRUN_STDOUT].len);
    lua_setfield(L, -2, "stdout");
    lua_pushlstring(L, r->out[HRUN_STDERR].len ? r->out[HRUN_STDERR].data : "",
                    r->out[HRUN_STDERR].len);
    lua_setfield(L, -2, "stderr");
    lua_pushnumber(L, r->proc.seconds);
    lua_setfield(L, -2, "seconds");
    lua_pushboolean(L, r->proc.timed_out);
    lua_setfield(L, -2, "timed_out");
}

/* [-0, +1, m] Why a command that did not succeed failed: "exited with code 2", … */
static void push_failure(lua_State *L, Run *r, double timeout)
{
    int st = r->proc.status;
    if (r->proc.timed_out) {
        push_signame(L, r->proc.killsig);
        lua_pushfstring(L, "timed out after %f s (stopped with %s)", timeout, lua_tostring(L, -1));
    } else if (r->proc.aborted) {
        lua_pushliteral(L, "");
        lua_pushliteral(L, "was stopped");
    } else if (WIFSIGNALED(st)) {
        push_signame(L, WTERMSIG(st));
        lua_pushfstring(L, "was killed by %s", lua_tostring(L, -1));
    } else {
        lua_pushliteral(L, "");
        lua_pushfstring(L, "exited with code %d", WEXITSTATUS(st));
    }
    lua_remove(L, -2);
}

/* [-0, +0, v] Field `name` (creates, removes) of the options at 2: a non-empty path,
** or NULL when absent. */
static const char *guard_path(lua_State *L, const char *name)
{
    if (lua_type(L, 2) != LUA_TTABLE) return NULL;
    size_t len;
    const char *path = hrun_optstring(L, 2, name, NULL, &len);
    if (path && (len == 0 || strlen(path) != len))
        luaL_argerror(L, 2,
                      lua_pushfstring(L, "field '%s': a path expected (not empty, no NUL)", name));
    return path;
}

/* [-0, +(0|1), v] Ansible's guards: with `creates` a path that exists, or `removes` one
** that does not, the command has nothing to do: pushes what the call returns then
** (ok, code 0, no output, skipped = why) and returns 1; else 0. A relative path is
** taken from the option cwd. */
static int guarded(lua_State *L)
{
    const char *creates = guard_path(L, "creates"), *removes = guard_path(L, "removes");
    if (lua_type(L, 2) == LUA_TTABLE) hrun_optbool(L, 2, "changed", 1); /* the runner's */
    const char *cwd = lua_type(L, 2) == LUA_TTABLE ? hrun_optstring(L, 2, "cwd", NULL, NULL) : NULL;
    for (int i = 0; i < 2; i++) {
        const char *path = i == 0 ? creates : removes;
        if (path == NULL) continue;
        char full[PATH_MAX];
        if (path[0] != '/' && cwd &&
            (size_t)snprintf(full, sizeof full, "%s/%s", cwd, path) < sizeof full)
            path = full;
        struct stat st;
        int exists = lstat(path, &st) == 0;
        if (exists != (i == 0)) continue;
        lua_createtable(L, 0, 7);
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "ok");
        lua_pushinteger(L, 0);
        lua_setfield(L, -2, "code");
        lua_pushliteral(L, "");
        lua_setfield(L, -2, "stdout");
        lua_pushliteral(L, "");
        lua_setfield(L, -2, "stderr");
        lua_pushnumber(L, 0);
        lua_setfield(L, -2, "seconds");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "timed_out");
        lua_pushfstring(L, i == 0 ? "creates: %s exists" : "removes: %s does not exist", path);
        lua_setfield(L, -2, "skipped");
        return 1;
    }
    return 0;
}

/* The body of exec.run and exec.sh (`what` names it in messages); argv at 1. checked: a
** playbook's own call, whose program and environment the sandbox checks as they are used
** (the dispatcher checked the arguments, but playbook code may have run since: a
** __pairs the journal called). */
static int run_command(lua_State *L, const char *what, int checked)
{
    hrun_checkopts(L, 2, run_options);
    lua_settop(L, 2);
    Run *r = run_new(L); /* 3 */
    lua_toclose(L, 3);
    check_argv(L, r);
    size_t inlen = 0;
    const char *cwd = hrun_optstring(L, 2, "cwd", NULL, NULL);
    const char *input = hrun_optbytes(L, 2, "stdin", &inlen);
    double timeout = hrun_optnumber(L, 2, "timeout", 0);
    double grace = hrun_optnumber(L, 2, "grace", 2);
    int check = hrun_optbool(L, 2, "check", 1);
    int clear = hrun_optbool(L, 2, "clear_env", 0);
    hrun_optbool(L, 2, "readonly", 0); /* checked here, used by the registry (exec_writes) */
    check_undo(L, what);               /* used by the registry (exec_inverse) */
    if (guarded(L)) return 1;
    if (timeout < 0) luaL_argerror(L, 2, "field 'timeout': must not be negative");
    if (grace < 0) luaL_argerror(L, 2, "field 'grace': must not be negative");
    if (cwd && strlen(cwd) == 0) luaL_argerror(L, 2, "field 'cwd': empty path");
    if (!lua_isnoneornil(L, 2)) {
        int t = lua_getfield(L, 2, "stream"); /* 4 */
        if (t == LUA_TFUNCTION)
            r->stream = 2, r->streamfn = 4;
        else if (t == LUA_TBOOLEAN)
            r->stream = lua_toboolean(L, 4);
        else if (t != LUA_TNIL)
            luaL_argerror(L, 2,
                          lua_pushfstring(L, "field 'stream': boolean or function expected, got %s",
                                          luaL_typename(L, 4)));
    } else {
        lua_pushnil(L); /* 4 */
    }
    /* stream = true goes to the sink the runner installs (lines under their step) */
    if (r->stream == 1 && lua_getfield(L, LUA_REGISTRYINDEX, STREAM_SINK) == LUA_TFUNCTION) {
        lua_replace(L, 4);
        r->stream = 2, r->streamfn = 4;
    } else if (r->stream == 1) {
        lua_pop(L, 1);
    }
    if (checked) {
        hrun_Target prog = {"exec", r->argv[0], cwd, 0, 0};
        hrun_sandbox_require(L, what, &prog);
    }
    build_env(L, r, clear, what, checked); /* 5 */
    push_command(L, r->argv);              /* 6 */
    const char *cmd = lua_tostring(L, 6);

    if (hrun_interrupted()) return hrun_raiseinterrupt(L);
    /* the step's deadline bounds the command too */
    double deadline = hrun_deadline(L), step_left = deadline - hrun_monotime();
    int step_bound = deadline > 0 && (timeout == 0 || step_left < timeout);
    if (step_bound) {
        if (step_left <= 0) return hrun_raisetimeout(L);
        timeout = step_left;
    }
    struct stat st;
    int err = cwd == NULL ? 0 : stat(cwd, &st) < 0 ? errno : !S_ISDIR(st.st_mode) ? ENOTDIR : 0;
    if (err) {
        hrun_failf(L, hrun_errname(err), "%s: %s: working directory %s: %s", what, cmd, cwd,
                   strerror(err));
        return fail_or_raise(L, check);
    }
    hrun_SpawnOpts o = {r->argv, r->envp, cwd, input, inlen, timeout, grace, on_output, r, NULL, 0};
    lua_getfield(L, LUA_REGISTRYINDEX, TICKER);
    if (lua_isfunction(L, -1)) o.tick = on_tick, o.tick_interval = 0.1;
    lua_pop(L, 1);
    /* the spawn sink (the journal) is told of the child, on this thread, before it runs;
    ** when it raises, the child has run nothing and its error is ours */
    int top = lua_gettop(L);
    err = hrun_spawn_reported(&r->proc, &o, hrun_children_report, L);
    if (err == HRUN_REFUSED && lua_gettop(L) > top) return lua_error(L);
    if (err != 0) {
        hrun_failf(L, hrun_errname(err), "%s: %s: %s", what, r->argv[0], strerror(err));
        return fail_or_raise(L, check);
    }
    hrun_proc_wait(&r->proc, &o);
    if (r->errref == LUA_NOREF && r->stream && !r->nomem)
        for (int i = HRUN_STDOUT; i <= HRUN_STDERR && r->errref == LUA_NOREF; i++)
            split_lines(r, i, 1);
    if (r->nomem) return luaL_error(L, "%s: %s: not enough memory for its output", what, cmd);
    if (r->errref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, r->errref);
        return lua_error(L);
    }
    if (r->proc.interrupted) return hrun_raiseinterrupt(L);
    if (r->proc.timed_out && step_bound) return hrun_raisetimeout(L);
    push_result(L, r);
    lua_getfield(L, -1, "ok");
    int ok = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (ok || !check) return 1;
    push_failure(L, r, timeout);
    push_tail(L, &r->out[HRUN_STDERR]);
    if (lua_rawlen(L, -1) > 0)
        lua_pushfstring(L, "%s: %s %s:\n%s", what, cmd, lua_tostring(L, -2), lua_tostring(L, -1));
    else
        lua_pushfstring(L, "%s: %s %s", what, cmd, lua_tostring(L, -2));
    return lua_error(L);
}

/*
** exec.run(argv [, opts]) → {ok, code, signal, stdout, stderr, seconds, timed_out}
**                        | nil, message, code     (cannot start; only with check=false)
** opts: cwd, env (added; false unsets), clear_env, stdin (string), timeout, grace,
** check (default true: raise unless it exits 0), stream (true or function(line, name)),
** readonly (the call only reads: not recorded as a write in plans), undo (an argv: the
** command that undoes this one — journaled as its inverse, run with the same cwd, env,
** clear_env and timeout), creates (a path: when it exists the command is not run),
** removes (a path: unless it exists the command is not run) — a command not run returns
** {ok = true, code = 0, stdout = "", stderr = "", skipped = why} —, changed (false: the
** command runs and is journaled, but its step counts it ok, not changed).
*/
static int exec_run(lua_State *L)
{
    return run_command(L, "exec.run", 1);
}

/*
** exec.sh(command [, opts]) → as exec.run, running /bin/sh -c command: the one way to
** a shell (undo: a shell command too).
*/
static int exec_sh(lua_State *L)
{
    size_t len;
    const char *cmd = luaL_checklstring(L, 1, &len);
    if (strlen(cmd) != len) luaL_argerror(L, 1, "command contains a NUL byte");
    lua_settop(L, 2);
    lua_createtable(L, 3, 0);
    lua_pushliteral(L, "/bin/sh");
    lua_rawseti(L, -2, 1);
    lua_pushliteral(L, "-c");
    lua_rawseti(L, -2, 2);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, 3);
    lua_replace(L, 1);
    return run_command(L, "exec.sh", 1);
}

static int exec_raw(lua_State *L)
{
    return run_command(L, lua_touserdata(L, lua_upvalueindex(1)), 0);
}

void hrun_pushexec(lua_State *L, const char *what)
{
    lua_pushlightuserdata(L, (void *)what);
    lua_pushcclosure(L, exec_raw, 1);
}

/* exec.run, exec.sh: already so when a guard says there is nothing to do (creates: the
** path exists; removes: it does not) */
static int exec_unchanged(lua_State *L)
{
    lua_settop(L, 2);
    if (!guarded(L)) lua_pushnil(L);
    return 1;
}

/* Whether this call writes: not with {readonly = true}. Must not raise. */
static int exec_writes(lua_State *L)
{
    if (lua_type(L, 2) != LUA_TTABLE) return 1;
    lua_pushliteral(L, "readonly");
    lua_rawget(L, 2);
    int readonly = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return !readonly;
}

/* [-0, +1, v] A copy of the array (an argv) or the map (an env) at idx, read raw: plain
** data that no metamethod can change once it is journaled. */
static void plain_copy(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    lua_newtable(L);
    if (lua_type(L, idx) != LUA_TTABLE) return;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
}

/* The inverse of a command run with {undo = …}: that command, with the same cwd, env,
** clear_env and timeout (and check: its failure is the undo's). Without one, none. The
** rollback runs it as the engine's own work, so the sandbox checks here what it will
** run: its program and every name of its env, as plain copies that are journaled. */
static int exec_inverse(lua_State *L, const char *op)
{
    static const char *const kept[] = {"cwd", "clear_env", "timeout", NULL};
    lua_pushliteral(L, "undo");
    if (lua_type(L, 2) != LUA_TTABLE || lua_rawget(L, 2) == LUA_TNIL) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s cannot be undone", op);
        return 2;
    }
    int undo = lua_gettop(L);
    lua_newtable(L);
    int list = lua_gettop(L);
    if (lua_type(L, undo) == LUA_TTABLE)
        plain_copy(L, undo);
    else
        lua_pushvalue(L, undo); /* exec.sh's: a string */
    int argv = lua_gettop(L);
    lua_newtable(L);
    int opts = lua_gettop(L);
    for (int i = 0; kept[i]; i++) {
        lua_pushstring(L, kept[i]);
        if (lua_rawget(L, 2) == LUA_TNIL)
            lua_pop(L, 1);
        else
            lua_setfield(L, opts, kept[i]);
    }
    char abs[PATH_MAX]; /* a relative cwd: where the command ran, not where a rollback runs */
    if (lua_getfield(L, opts, "cwd") == LUA_TSTRING && lua_tostring(L, -1)[0] != '/' &&
        hrun_abspath(lua_tostring(L, -1), abs, sizeof abs) == 0) {
        lua_pushstring(L, abs);
        lua_setfield(L, opts, "cwd");
    }
    lua_pop(L, 1);
    lua_pushliteral(L, "env");
    if (lua_rawget(L, 2) == LUA_TTABLE) {
        plain_copy(L, -1);
        lua_setfield(L, opts, "env");
    }
    lua_pop(L, 1);
    lua_getfield(L, opts, "cwd");
    const char *cwd = lua_tostring(L, -1);
    if (lua_type(L, argv) == LUA_TTABLE && lua_rawgeti(L, argv, 1) == LUA_TSTRING) {
        hrun_Target prog = {"exec", lua_tostring(L, -1), cwd, 0, 0};
        hrun_sandbox_require(L, op, &prog);
    } else if (lua_type(L, argv) == LUA_TSTRING) {
        hrun_Target prog = {"exec", "/bin/sh", NULL, 0, 0};
        hrun_sandbox_require(L, op, &prog);
    }
    lua_settop(L, opts);
    if (lua_getfield(L, opts, "env") == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (lua_type(L, -2) == LUA_TSTRING) {
                int unset = lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1);
                hrun_Target t = {"env", lua_tostring(L, -2), NULL, 0, !unset};
                hrun_sandbox_require(L, op, &t);
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    hrun_addop(L, list, op, 2);
    return 1;
}

static int exec_run_inverse(lua_State *L)
{
    return exec_inverse(L, "exec.run");
}

static int exec_sh_inverse(lua_State *L)
{
    return exec_inverse(L, "exec.sh");
}

/* {======================================================
** Targets (the sandbox): the program a call runs, and its undo's
** ======================================================= */

/* [-0, +?, -] Adds the program of the argv at idx (or /bin/sh for a command string). */
static int add_program(lua_State *L, int idx, hrun_Target *t, int n)
{
    if (n >= HRUN_MAXTARGETS) return n;
    if (lua_type(L, idx) == LUA_TSTRING) {
        t[n].value = "/bin/sh";
    } else if (lua_type(L, idx) == LUA_TTABLE && lua_rawgeti(L, idx, 1) == LUA_TSTRING) {
        t[n].value = lua_tostring(L, -1); /* anchored on the stack until the check ends */
    } else {
        return n;
    }
    t[n].cap = NULL;
    t[n].base = NULL;
    t[n].list = t[n].set = 0;
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_pushliteral(L, "cwd");
        if (lua_rawget(L, 2) == LUA_TSTRING) t[n].base = lua_tostring(L, -1);
    }
    return n + 1;
}

/* [-0, +?, -] Adds the names the env option sets, and those it unsets (false): each
** needs env:NAME, and some no sandboxed playbook may set. The undo command runs with
** the same env. */
static int add_env(lua_State *L, hrun_Target *t, int n)
{
    if (lua_type(L, 2) != LUA_TTABLE) return n;
    lua_pushliteral(L, "env");
    if (lua_rawget(L, 2) != LUA_TTABLE) return n;
    int env = lua_gettop(L);
    lua_newtable(L); /* env + 1: names set */
    lua_newtable(L); /* env + 2: names unset */
    lua_Integer counts[2] = {0, 0};
    lua_pushnil(L);
    while (lua_next(L, env)) {
        if (lua_type(L, -2) == LUA_TSTRING) {
            int unset = lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1);
            lua_pushvalue(L, -2);
            lua_rawseti(L, env + 1 + unset, ++counts[unset]);
        }
        lua_pop(L, 1);
    }
    for (int unset = 0; unset < 2; unset++)
        if (counts[unset] && n < HRUN_MAXTARGETS)
            t[n++] = (hrun_Target){"env", NULL, NULL, env + 1 + unset, !unset};
    return n;
}

/* [-0, +?, -] creates and removes: paths whose existence the call reads (relative ones
** from cwd), each under fs: a sandboxed playbook learns of no path beyond its scope. */
static int add_guards(lua_State *L, hrun_Target *t, int n)
{
    static const char *const guards[] = {"creates", "removes"};
    if (lua_type(L, 2) != LUA_TTABLE) return n;
    const char *base = NULL;
    lua_pushliteral(L, "cwd");
    if (lua_rawget(L, 2) == LUA_TSTRING) base = lua_tostring(L, -1); /* anchored here */
    for (int i = 0; i < 2 && n < HRUN_MAXTARGETS; i++) {
        lua_pushstring(L, guards[i]);
        if (lua_rawget(L, 2) == LUA_TSTRING)
            t[n++] = (hrun_Target){"fs", lua_tostring(L, -1), base, 0, 0};
    }
    return n;
}

static int exec_targets(lua_State *L, hrun_Target *t, int shell)
{
    int n = shell ? (lua_type(L, 1) == LUA_TSTRING ? add_program(L, 1, t, 0) : 0)
                  : add_program(L, 1, t, 0);
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_pushliteral(L, "undo");
        lua_rawget(L, 2);
        n = add_program(L, lua_gettop(L), t, n);
    }
    return add_guards(L, t, add_env(L, t, n));
}

static int run_targets(lua_State *L, hrun_Target *t)
{
    return exec_targets(L, t, 0);
}

static int sh_targets(lua_State *L, hrun_Target *t)
{
    return exec_targets(L, t, 1);
}

/* }====================================================== */

static const hrun_Prim exec_prims[] = {
    {.name = "run",
     .func = exec_run,
     .kind = HRUN_WRITE,
     .opts = 2,
     .cap = "exec",
     .writes = exec_writes,
     .inverse = exec_run_inverse,
     .unchanged = exec_unchanged,
     .targets = run_targets},
    {.name = "sh",
     .func = exec_sh,
     .kind = HRUN_WRITE,
     .opts = 2,
     .cap = "exec",
     .writes = exec_writes,
     .inverse = exec_sh_inverse,
     .unchanged = exec_unchanged,
     .targets = sh_targets},
    {0},
};

int luaopen_hrun_exec(lua_State *L)
{
    hrun_newmodule(L, "exec", exec_prims);
    return 1;
}
