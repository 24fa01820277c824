/*
** transfer.c — copies of trees between machines with the real tools: fs.sync (rsync),
** and what it shares with btrfs.receive (btrfs send | btrfs receive): a child run with
** its output captured, and the transport to the machine the data comes from.
**
** Both run on the receiving machine, as its journaled write (with its inverse there).
** The sending side is started by the controller (priv.settransport: it answers the
** socket of a `hrun __relay serve` for the call, relay.c), and the receiving tool reaches
** it through `hrun __relay connect|feed`. Without `from`, both sides are here.
*/
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hrun/spawn.h"
#include "internal.h"

/* {======================================================
** A child whose output is kept
** ======================================================= */

static int keep(char **buf, size_t *len, size_t *cap, const char *data, size_t n)
{
    if (*len + n > *cap) {
        size_t c = *cap ? *cap : 4096;
        while (c < *len + n) c *= 2;
        char *p = realloc(*buf, c);
        if (p == NULL) return -1;
        *buf = p, *cap = c;
    }
    memcpy(*buf + *len, data, n);
    *len += n;
    return 0;
}

static int capture_output(void *ud, int stream, const char *data, size_t len)
{
    hrun_Capture *c = ud;
    if (keep(&c->all, &c->all_len, &c->all_cap, data, len) < 0 ||
        (stream == HRUN_STDOUT && keep(&c->out, &c->out_len, &c->out_cap, data, len) < 0))
        return c->nomem = 1, -1;
    return 0;
}

static int capture_close(lua_State *L)
{
    hrun_Capture *c = luaL_checkudata(L, 1, "hrun.capture");
    hrun_proc_close(&c->proc);
    free(c->all), free(c->out);
    c->all = c->out = NULL;
    return 0;
}

hrun_Capture *hrun_capture(lua_State *L, char *const argv[], int *err)
{
    hrun_Capture *c = lua_newuserdatauv(L, sizeof *c, 0);
    memset(c, 0, sizeof *c);
    hrun_proc_init(&c->proc);
    hrun_setclose(L, "hrun.capture", capture_close, NULL);
    lua_toclose(L, lua_gettop(L));
    double deadline = hrun_deadline(L);
    hrun_SpawnOpts o = {.argv = argv,
                        .timeout = deadline > 0 ? deadline - hrun_monotime() : 0,
                        .grace = 5,
                        .output = capture_output,
                        .ud = c};
    if (hrun_interrupted()) hrun_raiseinterrupt(L);
    if (deadline > 0 && o.timeout <= 0) hrun_raisetimeout(L);
    int top = lua_gettop(L);
    /* the child is journaled before it runs (children.c); a sink that refused raised */
    *err = hrun_spawn_reported(&c->proc, &o, hrun_children_report, L);
    if (*err == HRUN_REFUSED && lua_gettop(L) > top) lua_error(L);
    if (*err) return c;
    hrun_proc_wait(&c->proc, &o);
    if (c->proc.interrupted) hrun_raiseinterrupt(L);
    if (c->proc.timed_out) hrun_raisetimeout(L);
    if (c->nomem) luaL_error(L, "%s: not enough memory for its output", argv[0]);
    if (keep(&c->all, &c->all_len, &c->all_cap, "", 1) < 0 ||
        keep(&c->out, &c->out_len, &c->out_cap, "", 1) < 0)
        luaL_error(L, "%s: not enough memory for its output", argv[0]);
    c->all_len--, c->out_len--; /* NUL-ended, not counted */
    return c;
}

int hrun_capture_code(const hrun_Capture *c)
{
    int st = c->proc.status;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* [-0, +1, m] The last lines of what the child said (at most 3, 600 bytes): for people. */
void hrun_capture_tail(lua_State *L, const hrun_Capture *c)
{
    const char *s = c->all ? c->all : "";
    size_t len = c->all_len;
    while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == ' ')) len--;
    size_t from = len;
    for (int lines = 0; from > 0 && len - from < 600; from--)
        if (s[from - 1] == '\n' && ++lines == 3) break;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = from; i < len; i++) luaL_addchar(&b, s[i] == '\n' ? ';' : s[i]);
    luaL_pushresult(&b);
}

/* }====================================================== */

/* {======================================================
** The machine the data comes from
** ======================================================= */

const char *hrun_transport(lua_State *L, const char *name)
{
    if (lua_type(L, 3) != LUA_TTABLE || lua_getfield(L, 3, "from") == LUA_TNIL) {
        if (lua_type(L, 3) == LUA_TTABLE) lua_pop(L, 1);
        lua_pushnil(L);
        lua_pushnil(L);
        return NULL;
    }
    if (!lua_isstring(L, -1)) luaL_error(L, "%s: from must be the name of a host of the run", name);
    const char *from = lua_tostring(L, -1);
    if (lua_getfield(L, LUA_REGISTRYINDEX, TRANSPORT) != LUA_TFUNCTION)
        luaL_error(
            L, "%s: from = '%s': other hosts are reached while a playbook runs (hrun PLAYBOOK.lua)",
            name, from);
    lua_remove(L, -2);
    lua_pushstring(L, name);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_call(L, 4, 2); /* → socket | nil (the data is here), closer */
    lua_toclose(L, lua_gettop(L));
    if (lua_isnil(L, -2)) return NULL;
    const char *sock = lua_tostring(L, -2);
    if (sock == NULL) luaL_error(L, "%s: no way to host '%s'", name, from);
    return sock;
}

void hrun_transport_said(lua_State *L, int idx)
{
    if (lua_type(L, idx) == LUA_TTABLE) {
        if (lua_getfield(L, idx, "said") == LUA_TFUNCTION) {
            lua_pushvalue(L, idx);
            lua_call(L, 1, 1);
            if (lua_type(L, -1) == LUA_TSTRING && lua_rawlen(L, -1) > 0) {
                lua_pushfstring(L, " (the sending side: %s)", lua_tostring(L, -1));
                lua_remove(L, -2);
                return;
            }
        }
        lua_pop(L, 1);
    }
    lua_pushliteral(L, "");
}

const char *hrun_self_exe(lua_State *L)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n < 0) luaL_error(L, "cannot find hrun's own program: %s", strerror(errno));
    return lua_pushlstring(L, exe, (size_t)n);
}

/* The sandbox's targets of a copy (src, dst [, {from}]): where it writes, and what it
** reads when that is here (another host's data is checked against that host's box). */
int hrun_copy_targets(lua_State *L, hrun_Target *t)
{
    return hrun_copy_remote(L) ? hrun_targets_arg2(L, t) : hrun_targets_args12(L, t);
}

int hrun_copy_remote(lua_State *L)
{
    if (lua_type(L, 3) != LUA_TTABLE) return 0;
    lua_pushliteral(L, "from");
    int from = lua_rawget(L, 3) != LUA_TNIL;
    lua_pop(L, 1);
    return from;
}

/* }====================================================== */

/* {======================================================
** fs.sync
** ======================================================= */

static const char *const sync_options[] = {"from", "delete", "exclude", "checksum",
                                           "acls", "xattrs", NULL};

/* [-0, +1, m] path as rsync names a tree's contents (hrun_tree_contents) */
static const char *contents(lua_State *L, const char *path)
{
    char out[PATH_MAX + 2];
    if (hrun_tree_contents(path, out, sizeof out) < 0)
        luaL_error(L, "fs.sync: %s: path too long", path);
    return lua_pushstring(L, out);
}

/* Pushes rsync's argv for the call (its strings anchored in a table on the stack) and
** returns it, NULL-ended. dry: only list what would change. */
static char **sync_argv(lua_State *L, const char *src, const char *dst, const char *sock, int dry)
{
    lua_newtable(L);
    int t = lua_gettop(L), n = 0;
#define ARG(s) (lua_pushstring(L, (s)), lua_rawseti(L, t, ++n))
    ARG("rsync");
    ARG("-aH");
    ARG("--numeric-ids");
    if (hrun_optbool(L, 3, "acls", 0)) ARG("-A");
    if (hrun_optbool(L, 3, "xattrs", 0)) ARG("-X");
    if (hrun_optbool(L, 3, "checksum", 0)) ARG("-c");
    if (hrun_optbool(L, 3, "delete", 0)) ARG("--delete");
    if (lua_type(L, 3) == LUA_TTABLE && lua_getfield(L, 3, "exclude") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TTABLE)
            luaL_error(L, "fs.sync: exclude must be a list of patterns");
        for (lua_Integer i = 1; lua_rawgeti(L, -1, i) != LUA_TNIL; i++) {
            if (lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "fs.sync: exclude[%d] is not a pattern", (int)i);
            lua_pushfstring(L, "--exclude=%s", lua_tostring(L, -1));
            lua_rawseti(L, t, ++n);
            lua_pop(L, 1);
        }
        lua_pop(L, 2); /* the nil that ended it, the list */
    } else if (lua_type(L, 3) == LUA_TTABLE) {
        lua_pop(L, 1);
    }
    if (dry) {
        ARG("--dry-run");
        ARG("--itemize-changes");
    }
    ARG("--stats");
    if (sock) {
        const char *exe = hrun_self_exe(L);
        if (strchr(exe, '\'') || strchr(sock, '\''))
            luaL_error(L, "fs.sync: a quote in hrun's path or its socket's (%s, %s)", exe, sock);
        lua_pushfstring(L, "--rsh='%s' __relay connect '%s'", exe, sock);
        lua_rawseti(L, t, ++n);
        lua_pop(L, 1);
        ARG("--rsync-path=rsync");
        lua_pushfstring(L, "relay:%s", contents(L, src));
        lua_rawseti(L, t, ++n);
        lua_pop(L, 1);
    } else {
        ARG(contents(L, src));
        lua_pop(L, 1);
    }
    ARG(contents(L, dst));
    lua_pop(L, 1);
#undef ARG
    char **argv = lua_newuserdatauv(L, ((size_t)n + 1) * sizeof *argv, 0);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, t, i);
        argv[i - 1] = (char *)lua_tostring(L, -1); /* anchored in t */
        lua_pop(L, 1);
    }
    argv[n] = NULL;
    return argv;
}

/* The number after `key` in rsync's --stats ("1,234"), or 0. */
static lua_Integer stat_after(const char *out, const char *key)
{
    const char *p = strstr(out, key);
    lua_Integer v = 0;
    if (p == NULL) return 0;
    for (p += strlen(key); *p == ' '; p++) {
    }
    for (; (*p >= '0' && *p <= '9') || *p == ','; p++)
        if (*p != ',') v = v * 10 + (*p - '0');
    return v;
}

/* [-0, +1, m] fs.sync's result, from rsync's --stats (a dry run's: nothing moved). */
static void sync_result(lua_State *L, const char *out, int vanished, double seconds)
{
    int dry = strstr(out, "(DRY RUN)") != NULL;
    lua_createtable(L, 0, 8);
    lua_pushvalue(L, 2);
    lua_setfield(L, -2, "path");
    lua_pushinteger(L, stat_after(out, "Number of files:"));
    lua_setfield(L, -2, "files");
    lua_pushinteger(L, stat_after(out, "Total file size:"));
    lua_setfield(L, -2, "bytes");
    lua_pushinteger(L, dry ? 0 : stat_after(out, "Number of regular files transferred:"));
    lua_setfield(L, -2, "transferred");
    lua_pushinteger(L, dry ? 0 : stat_after(out, "Total transferred file size:"));
    lua_setfield(L, -2, "transferred_bytes");
    lua_pushinteger(L, dry ? 0 : stat_after(out, "Number of deleted files:"));
    lua_setfield(L, -2, "deleted");
    lua_pushboolean(L, vanished); /* files gone from the source while it ran: rsync's warning */
    lua_setfield(L, -2, "vanished");
    lua_pushnumber(L, seconds);
    lua_setfield(L, -2, "seconds");
}

/* What rsync's exit code means (its manual's list, the common ones). */
static const char *rsync_meaning(int code)
{
    switch (code) {
    case 1:
        return "syntax or usage error";
    case 3:
        return "errors selecting input/output files, dirs";
    case 5:
        return "error starting client-server protocol";
    case 10:
        return "error in socket I/O";
    case 11:
        return "error in file I/O";
    case 12:
        return "error in rsync protocol data stream";
    case 20:
        return "received SIGUSR1 or SIGINT";
    case 23:
        return "partial transfer due to error";
    case 30:
        return "timeout in data send/receive";
    case 255:
        return "the connection to the sending side failed";
    default:
        return "failed";
    }
}

/* The checks of both ends that need no rsync: 0, or the failure pushed (3 values). */
static int sync_check(lua_State *L, const char *src, const char *dst, int remote)
{
    struct stat st;
    if (remote && src[0] != '/')
        return hrun_failf(L, "EINVAL",
                          "fs.sync: %s: the source on another host must be an absolute path", src);
    if (!remote && stat(src, &st) < 0) return hrun_fail(L, "fs.sync", src, errno);
    if (!remote && !S_ISDIR(st.st_mode)) return hrun_fail(L, "fs.sync", src, ENOTDIR);
    if (lstat(dst, &st) == 0)
        return S_ISDIR(st.st_mode) ? 0 : hrun_fail(L, "fs.sync", dst, ENOTDIR);
    char parent[PATH_MAX];
    if (hrun_abspath(dst, parent, sizeof parent) < 0) return hrun_fail(L, "fs.sync", dst, errno);
    char *slash = strrchr(parent, '/');
    if (slash == parent)
        slash[1] = '\0';
    else
        *slash = '\0';
    if (stat(parent, &st) < 0) return hrun_fail(L, "fs.sync", parent, errno);
    if (!S_ISDIR(st.st_mode)) return hrun_fail(L, "fs.sync", parent, ENOTDIR);
    return 0;
}

/*
** fs.sync(src, dst [, {from, delete, exclude, checksum, acls, xattrs}]) → {path, files,
**   bytes, transferred, transferred_bytes, deleted, vanished, seconds} | nil, message, code
** Makes the directory dst a copy of the tree at src with rsync (-aH --numeric-ids: modes,
** owners by number, times, links, hard links; -A, -X, -c, --delete, --exclude on
** request). from: the host src is on (hosts = {…}); the data goes from there to here.
** dst's parent must exist. Its inverse: dst removed when it was not there, else put back
** as it was (saved first: a reflink copy where the filesystem has them).
*/
int hrun_fs_sync(lua_State *L)
{
    const char *src = hrun_checkpath(L, 1, NULL);
    const char *dst = hrun_checkpath(L, 2, NULL);
    hrun_checkopts(L, 3, sync_options);
    lua_settop(L, 3);
    int remote = hrun_copy_remote(L);
    if (sync_check(L, src, dst, remote)) return 3;
    const char *sock = hrun_transport(L, "fs.sync"); /* 4, 5 */
    char **argv = sync_argv(L, src, dst, sock, 0);
    double started = hrun_monotime();
    int err;
    hrun_Capture *c = hrun_capture(L, argv, &err);
    if (err == ENOENT)
        return hrun_failf(L, "ENOENT", "fs.sync: rsync is not installed here (not in PATH)");
    if (err) return hrun_failf(L, hrun_errname(err), "fs.sync: rsync: %s", strerror(err));
    int code = hrun_capture_code(c);
    if (code != 0 && code != 24) {
        hrun_capture_tail(L, c);
        hrun_transport_said(L, 5);
        lua_concat(L, 2);
        return hrun_failf(L, "ERSYNC", "fs.sync: %s → %s: rsync exited with code %d (%s): %s", src,
                          dst, code, rsync_meaning(code), lua_tostring(L, -1));
    }
    sync_result(L, c->out ? c->out : "", code == 24, hrun_monotime() - started);
    return 1;
}

/* Already so: dst exists and rsync --dry-run lists nothing to change; the result says
** what is there, nothing transferred. */
int hrun_fs_sync_unchanged(lua_State *L)
{
    const char *src = lua_tostring(L, 1), *dst = lua_tostring(L, 2);
    struct stat st;
    lua_settop(L, 3);
    if (src == NULL || dst == NULL || lstat(dst, &st) < 0 || !S_ISDIR(st.st_mode))
        return lua_pushnil(L), 1;
    int remote = hrun_copy_remote(L);
    if (remote && lua_getfield(L, LUA_REGISTRYINDEX, TRANSPORT) != LUA_TFUNCTION)
        return lua_pushnil(L), 1;
    lua_settop(L, 3);
    if (sync_check(L, src, dst, remote)) return lua_pushnil(L), 1;
    const char *sock = hrun_transport(L, "fs.sync");
    char **argv = sync_argv(L, src, dst, sock, 1);
    double started = hrun_monotime();
    int err;
    hrun_Capture *c = hrun_capture(L, argv, &err);
    if (err || hrun_capture_code(c) != 0) return lua_pushnil(L), 1;
    /* nothing itemized before the stats: in sync */
    const char *stats = strstr(c->out, "Number of files:");
    for (const char *p = c->out; stats && p < stats; p++)
        if (*p != '\n' && *p != ' ') return lua_pushnil(L), 1;
    if (stats == NULL) return lua_pushnil(L), 1;
    sync_result(L, c->out, 0, hrun_monotime() - started);
    return 1;
}

int hrun_fs_sync_inverse(lua_State *L)
{
    const char *dst = luaL_checkstring(L, 2);
    char abs[PATH_MAX];
    if (hrun_abspath(dst, abs, sizeof abs) < 0) return hrun_fail(L, "fs.sync", dst, errno);
    lua_newtable(L);
    hrun_undo_change(L, lua_gettop(L), "fs.sync", abs);
    return 1;
}

int hrun_fs_sync_state(lua_State *L)
{
    luaL_checkstring(L, 1);
    const char *dst = luaL_checkstring(L, 2);
    lua_newtable(L);
    hrun_addpath(L, lua_gettop(L), dst);
    return 1;
}

/* }====================================================== */
