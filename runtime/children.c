/*
** children.c — the process groups of running children, for the journal.
**
** Every child runs in a process group of its own (spawn.c). When hrun dies while a step
** runs one (SIGKILL, OOM), the group runs on; resume and rollback must stop it before they
** run the step again or undo it. Two private functions make that possible:
**
** priv.setspawnsink(fn | nil): while set, each child hrun_spawn starts is reported as
**   fn{pgid = N, pid = N, start = N, boot = "…", argv0 = "…"} right after the fork and
**   before the child may exec: it waits on a gate pipe that opens only once fn returned.
**   start is the leader's start time (field 22 of /proc/PID/stat, clock ticks since boot),
**   boot /proc/sys/kernel/random/boot_id (a field is left out when it cannot be read).
**   If fn raises, the child is killed at the gate (it has run nothing) and the primitive
**   raises fn's error: a child the journal cannot record does not run. exec.run, exec.sh
**   and the modules that run tools through hrun_pushexec call fn on the thread that
**   called them; other users of hrun_spawn (btrfs.scrub) call it on the main thread of
**   the state that set it, and fail with ECANCELED when it raises.
**
** priv.reap(groups) → stopped: groups = {{pgid = N, start = N, boot = "…"}, …} as the sink
**   saw them. A group is stopped only when it provably is the one recorded: same boot,
**   and a live process (zombies are dead) of that process group started no earlier than
**   its leader was; and when the leader itself still runs, it must be the recorded one
**   (same start). SIGTERM (and SIGCONT, for a stopped one) to the group, up to 5 s for it
**   to go, then SIGKILL. Returns {{pgid = N, processes = N, signal = "SIGTERM" |
**   "SIGKILL", argv0 = "…"}, …}, one entry per group found running. Never raises for
**   what it finds; a malformed entry is left alone.
*/
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "hrun/spawn.h"
#include "internal.h"

/* Registry key (its address): the spawn sink. */
static const char spawn_sink = 0;

/* The main thread of the state whose sink the reports of plain hrun_spawn calls go to. */
static lua_State *sink_state;

/* How long a group has after SIGTERM, and after SIGKILL; how often it is looked at. */
#define TERM_WAIT 5.0
#define KILL_WAIT 5.0
#define POLL_NS   (20 * 1000 * 1000)

/* {======================================================
** /proc
** ======================================================= */

/* Reads up to size-1 bytes of path, NUL-terminated: their number, or -1. */
static ssize_t read_small(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n;
    do n = read(fd, buf, size - 1);
    while (n < 0 && errno == EINTR);
    close(fd);
    if (n < 0) return -1;
    buf[n] = '\0';
    return n;
}

/* This boot's id (trimmed) in buf[37+], or 0 when it cannot be read. */
static int boot_id(char *buf, size_t size)
{
    ssize_t n = read_small("/proc/sys/kernel/random/boot_id", buf, size);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ')) buf[--n] = '\0';
    return n > 0;
}

typedef struct Stat {
    char state;
    long pgrp;
    unsigned long long start; /* clock ticks after boot */
} Stat;

/* Fields 3, 5 and 22 of /proc/<pid>/stat: 0, or -1 when it is gone or unreadable. */
static int read_stat(const char *pid, Stat *st)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%.20s/stat", pid);
    if (read_small(path, buf, sizeof buf) <= 0) return -1;
    /* pid (comm) state …: comm may hold anything, so parse after the last ')' */
    char *p = strrchr(buf, ')');
    if (p == NULL) return -1;
    /* fields 3 (state), 5 (process group) and 22 (start time), blank-separated */
    p++;
    for (int field = 3; field <= 22; field++) {
        while (*p == ' ') p++;
        if (*p == '\0') return -1;
        if (field == 3) st->state = *p;
        if (field == 5) st->pgrp = strtol(p, NULL, 10);
        if (field == 22) st->start = strtoull(p, NULL, 10);
        while (*p && *p != ' ') p++;
    }
    return 0;
}

/* The program of process pid: its argv[0], else its comm; "" when gone. */
static void read_program(pid_t pid, char *buf, size_t size)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
    if (read_small(path, buf, size) > 0 && buf[0]) return; /* argv[0] ends at its NUL */
    snprintf(path, sizeof path, "/proc/%d/comm", (int)pid);
    ssize_t n = read_small(path, buf, size);
    while (n > 0 && buf[n - 1] == '\n') buf[--n] = '\0';
    if (n < 0) buf[0] = '\0';
}

/* }====================================================== */

/* {======================================================
** The spawn sink
** ======================================================= */

typedef struct Report {
    const hrun_Proc *p;
    const char *argv0;
} Report;

/* [-0, +0, e] Under hrun_pcallback: calls the sink, if any, with the child's record. */
static int call_sink(lua_State *L)
{
    const Report *r = lua_touserdata(L, 1);
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &spawn_sink) != LUA_TFUNCTION) return 0;
    char pid[24], boot[64];
    Stat st;
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, r->p->pgid);
    lua_setfield(L, -2, "pgid");
    lua_pushinteger(L, r->p->pid);
    lua_setfield(L, -2, "pid");
    snprintf(pid, sizeof pid, "%d", (int)r->p->pid);
    if (read_stat(pid, &st) == 0) {
        lua_pushinteger(L, (lua_Integer)st.start);
        lua_setfield(L, -2, "start");
    }
    if (boot_id(boot, sizeof boot)) {
        lua_pushstring(L, boot);
        lua_setfield(L, -2, "boot");
    }
    lua_pushstring(L, r->argv0);
    lua_setfield(L, -2, "argv0");
    lua_call(L, 1, 0);
    return 0;
}

int hrun_children_report(void *ud, const hrun_Proc *p, const char *argv0)
{
    lua_State *L = ud;
    Report r = {p, argv0};
    if (!lua_checkstack(L, 4)) return 0; /* cannot happen in a primitive (LUA_MINSTACK) */
    lua_pushcfunction(L, call_sink);
    lua_pushlightuserdata(L, &r);
    if (hrun_pcallback(L, 1) != LUA_OK) return -1;
    lua_pop(L, 1);
    return 0;
}

/* The report of a plain hrun_spawn: on the main thread of the sink's state, where the
** error cannot be left for the primitive (it has no state to raise it in). */
static int report_main(void *ud, const hrun_Proc *p, const char *argv0)
{
    lua_State *L = ud;
    int top = lua_gettop(L);
    int r = hrun_children_report(L, p, argv0);
    lua_settop(L, top);
    return r;
}

/* The state closes: its main thread must not be reported to any more. */
static int forget_state(lua_State *L)
{
    if (sink_state == L) {
        sink_state = NULL;
        hrun_setspawnreport(NULL, NULL);
    }
    return 0;
}

/*
** priv.setspawnsink(fn | nil): fn(info) is called for each child started from now on,
** before it may run (see the top of this file); nil: no more.
*/
static int children_setspawnsink(lua_State *L)
{
    if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
    int set = lua_isfunction(L, 1);
    lua_settop(L, 1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &spawn_sink);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    lua_State *main = lua_tothread(L, -1);
    lua_pop(L, 1);
    if (set || sink_state == main) {
        sink_state = set ? main : NULL;
        hrun_setspawnreport(set ? report_main : NULL, sink_state);
    }
    return 0;
}

/* }====================================================== */

/* {======================================================
** Reaping the groups a crash left behind
** ======================================================= */

typedef struct Group {
    lua_Integer pgid;
    unsigned long long start;
    int ours;    /* recorded in this boot, well-formed, not our own group */
    int foreign; /* its leader runs, but is not the one recorded: a reused id */
    int alive;   /* its processes found by the last scan */
    int found;   /* how many the first scan found */
    int sig;     /* the last signal sent */
    pid_t first; /* one of them (the leader if it runs), for its program's name */
    char argv0[256];
} Group;

/* Counts the live processes of each group in g[0..n-1] (and marks the foreign ones). */
static void scan(Group *g, int n)
{
    for (int i = 0; i < n; i++) g[i].alive = 0, g[i].first = 0;
    DIR *d = opendir("/proc");
    if (d == NULL) return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] < '0' || de->d_name[0] > '9') continue;
        Stat st;
        if (read_stat(de->d_name, &st) < 0) continue;
        pid_t pid = (pid_t)strtol(de->d_name, NULL, 10);
        for (int i = 0; i < n; i++) {
            if (!g[i].ours || st.pgrp != g[i].pgid) continue;
            if (pid == g[i].pgid && st.start != g[i].start) g[i].foreign = 1;
            if (st.state == 'Z' || st.state == 'X' || st.start < g[i].start) continue;
            g[i].alive++;
            if (g[i].first == 0 || pid == g[i].pgid) g[i].first = pid;
        }
    }
    closedir(d);
    for (int i = 0; i < n; i++)
        if (g[i].foreign) g[i].alive = 0;
}

/* Sends sig to every group still alive; returns how many there are. */
static int signal_alive(Group *g, int n, int sig)
{
    int left = 0;
    for (int i = 0; i < n; i++) {
        if (g[i].found == 0 || g[i].alive == 0) continue;
        kill(-(pid_t)g[i].pgid, sig);
        if (sig == SIGTERM) kill(-(pid_t)g[i].pgid, SIGCONT); /* a stopped one must see it */
        g[i].sig = sig;
        left++;
    }
    return left;
}

/* Waits up to `seconds` for every signalled group to be gone, resending sig meanwhile
** when it is SIGKILL (a process forked after the first one); returns how many are left. */
static int await_groups(Group *g, int n, double seconds, int sig)
{
    double until = hrun_monotime() + seconds;
    int left = 1;
    while (left > 0 && hrun_monotime() < until) {
        struct timespec ts = {0, POLL_NS};
        nanosleep(&ts, NULL);
        scan(g, n);
        left = 0;
        for (int i = 0; i < n; i++)
            if (g[i].found && g[i].alive) {
                if (sig == SIGKILL) kill(-(pid_t)g[i].pgid, SIGKILL);
                left++;
            }
    }
    return left;
}

/* Field `key` of the table on top as an integer, or 0 when it is not one. */
static int field_integer(lua_State *L, const char *key, lua_Integer *v)
{
    int isnum;
    lua_getfield(L, -1, key);
    *v = lua_tointegerx(L, -1, &isnum);
    lua_pop(L, 1);
    return isnum;
}

/*
** priv.reap(groups) → stopped (see the top of this file): stops the process groups of
** the children a crashed run left running. groups = {{pgid, start, boot}, …}; stopped =
** {{pgid, processes, signal, argv0}, …}, one per group found running. Raises only when
** groups is not a table.
*/
static int children_reap(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int n = (int)luaL_len(L, 1);
    if (n < 0) n = 0;
    Group *g = lua_newuserdatauv(L, (size_t)n * sizeof(Group) + 1, 0);
    char boot[64];
    int booted = boot_id(boot, sizeof boot);
    pid_t self = getpgrp();
    for (int i = 0; i < n; i++) {
        lua_Integer pgid = 0, start = 0;
        memset(&g[i], 0, sizeof g[i]);
        if (lua_rawgeti(L, 1, i + 1) == LUA_TTABLE && field_integer(L, "pgid", &pgid) &&
            field_integer(L, "start", &start) && lua_getfield(L, -1, "boot") == LUA_TSTRING) {
            g[i].ours = booted && strcmp(lua_tostring(L, -1), boot) == 0 && pgid > 1 &&
                        pgid <= INT32_MAX && pgid != self && start >= 0;
            g[i].pgid = pgid;
            g[i].start = (unsigned long long)start;
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    scan(g, n);
    for (int i = 0; i < n; i++) {
        g[i].found = g[i].alive;
        if (g[i].found) read_program(g[i].first, g[i].argv0, sizeof g[i].argv0);
    }
    if (signal_alive(g, n, SIGTERM) > 0 && await_groups(g, n, TERM_WAIT, SIGTERM) > 0) {
        signal_alive(g, n, SIGKILL);
        await_groups(g, n, KILL_WAIT, SIGKILL);
    }
    lua_newtable(L);
    for (int i = 0, k = 0; i < n; i++) {
        if (g[i].found == 0) continue;
        lua_createtable(L, 0, 4);
        lua_pushinteger(L, g[i].pgid);
        lua_setfield(L, -2, "pgid");
        lua_pushinteger(L, g[i].found);
        lua_setfield(L, -2, "processes");
        lua_pushstring(L, g[i].sig == SIGKILL ? "SIGKILL" : "SIGTERM");
        lua_setfield(L, -2, "signal");
        lua_pushstring(L, g[i].argv0);
        lua_setfield(L, -2, "argv0");
        lua_rawseti(L, -2, ++k);
    }
    return 1;
}

/* }====================================================== */

void hrun_openchildren(lua_State *L)
{
    hrun_atclose(L, forget_state);
    lua_pushcfunction(L, children_setspawnsink);
    lua_setfield(L, -2, "setspawnsink");
    lua_pushcfunction(L, children_reap);
    lua_setfield(L, -2, "reap");
}
