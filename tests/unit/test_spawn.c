/*
** test_spawn.c — the process engine on its own: big outputs on both pipes without
** deadlock, stdin, timeouts that leave no process of the group behind; and children.c:
** every child reported to the spawn sink before it runs, the groups a crash left
** stopped by priv.reap, and nothing else.
*/
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hrun/spawn.h"
#include "internal.h"
#include "unit.h"

typedef struct Sink {
    size_t bytes[3];
    unsigned char last[3];
} Sink;

static int sink(void *ud, int stream, const char *data, size_t len)
{
    Sink *s = ud;
    s->bytes[stream] += len;
    s->last[stream] = (unsigned char)data[len - 1];
    return 0;
}

static int run(char *const argv[], const char *input, size_t inlen, double timeout, Sink *s,
               hrun_Proc *p)
{
    hrun_SpawnOpts o = {.argv = argv,
                        .input = input,
                        .input_len = inlen,
                        .timeout = timeout,
                        .grace = 0.5,
                        .output = sink,
                        .ud = s};
    hrun_proc_init(p);
    int rc = hrun_spawn(p, &o);
    if (rc == 0) hrun_proc_wait(p, &o);
    hrun_proc_close(p);
    return rc;
}

static void test_big_outputs_on_both_pipes(void)
{
    /* 10 MB on each, interleaved: a reader of one pipe at a time would deadlock */
    char *argv[] = {"sh", "-c",
                    "head -c 10000000 /dev/zero | tr '\\0' o & head -c 10000000 /dev/zero | "
                    "tr '\\0' e >&2; wait",
                    NULL};
    Sink s = {0};
    hrun_Proc p;
    CHECK(run(argv, NULL, 0, 60, &s, &p) == 0);
    CHECK(WIFEXITED(p.status) && WEXITSTATUS(p.status) == 0);
    CHECK(s.bytes[HRUN_STDOUT] == 10000000 && s.last[HRUN_STDOUT] == 'o');
    CHECK(s.bytes[HRUN_STDERR] == 10000000 && s.last[HRUN_STDERR] == 'e');
}

static void test_stdin_round_trip(void)
{
    size_t n = 10000000;
    char *input = malloc(n);
    memset(input, 'i', n);
    char *argv[] = {"cat", NULL};
    Sink s = {0};
    hrun_Proc p;
    CHECK(run(argv, input, n, 60, &s, &p) == 0);
    CHECK(s.bytes[HRUN_STDOUT] == n && s.last[HRUN_STDOUT] == 'i');
    free(input);
}

static void test_timeout_kills_the_group(void)
{
    /* a child and a grandchild, both ignoring nothing; the group must be gone after */
    char *argv[] = {"sh", "-c", "sleep 30 & sleep 30; wait", NULL};
    Sink s = {0};
    hrun_Proc p;
    double t0 = hrun_monotime();
    CHECK(run(argv, NULL, 0, 0.3, &s, &p) == 0);
    CHECK(p.timed_out);
    CHECK(hrun_monotime() - t0 < 5);
    CHECK(!hrun_group_alive(p.pgid));
}

static void test_timeout_escalates_to_sigkill(void)
{
    char *argv[] = {"sh", "-c", "trap '' TERM; sleep 30 & wait; sleep 30", NULL};
    Sink s = {0};
    hrun_Proc p;
    CHECK(run(argv, NULL, 0, 0.3, &s, &p) == 0);
    CHECK(p.timed_out && p.killsig == SIGKILL);
    CHECK(!hrun_group_alive(p.pgid));
}

static void test_missing_program(void)
{
    char *argv[] = {"hrun-no-such-program", NULL};
    Sink s = {0};
    hrun_Proc p;
    CHECK(run(argv, NULL, 0, 0, &s, &p) == ENOENT);
}

/* {======================================================
** The spawn sink and priv.reap (children.c)
** ======================================================= */

/* A state with the modules as globals and the private library as global `priv`. */
static lua_State *newstate(void)
{
    lua_State *L = hrun_newstate();
    hrun_openlibs(L);
    lua_pop(L, 1);
    hrun_openprivate(L);
    lua_setglobal(L, "priv");
    return L;
}

/* Runs code; returns its error message or NULL (kept in a static buffer). */
static const char *lua_run(lua_State *L, const char *code)
{
    static char msg[1024];
    if (luaL_loadbuffer(L, code, strlen(code), "=t") == LUA_OK && lua_pcall(L, 0, 0, 0) == LUA_OK)
        return NULL;
    snprintf(msg, sizeof msg, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
    return msg;
}

static lua_Integer global_integer(lua_State *L, const char *expr)
{
    char code[256];
    snprintf(code, sizeof code, "return %s", expr);
    luaL_dostring(L, code);
    lua_Integer v = lua_tointeger(L, -1);
    lua_pop(L, 1);
    return v;
}

/* Does process pid still run (a zombie does not)? */
static int runs(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

/* The sink is told of the child before the child may run (it has not made its file),
** on the thread that called exec.run, with its group, start time and boot id. */
static void test_sink_sees_the_child_before_it_runs(void)
{
    lua_State *L = newstate();
    const char *err = lua_run(
        L,
        "dir = os.tmpname(); os.remove(dir); fs.mkdir(dir)\n"
        "seen = {}\n"
        "priv.setspawnsink(function(info)\n"
        "  info.made_yet = io.open(dir .. '/made') ~= nil\n"
        "  info.thread = coroutine.running()\n"
        "  local f = io.open('/proc/' .. info.pid .. '/stat'); local s = f:read('a'); f:close()\n"
        "  local fields = {}\n"
        "  for w in s:match('%) (.*)'):gmatch('%S+') do fields[#fields + 1] = w end\n"
        "  info.stat_pgrp, info.stat_start = tonumber(fields[3]), tonumber(fields[20])\n"
        "  f = io.open('/proc/sys/kernel/random/boot_id'); info.boot_now = f:read('l'); f:close()\n"
        "  seen[#seen + 1] = info\n"
        "end)\n"
        "co = coroutine.create(function()\n"
        "  return exec.run({'sh', '-c', 'touch \"$0\"/made; echo $$', dir})\n"
        "end)\n"
        "local ok, r = coroutine.resume(co); assert(ok, r)\n"
        "child = tonumber(r.stdout)\n"
        "assert(io.open(dir .. '/made'), 'the child ran after the sink')\n"
        "priv.setspawnsink(nil)\n"
        "exec.run({'true'})\n"
        "exec.run({'rm', '-r', dir})\n");
    CHECK(err == NULL);
    if (err) fprintf(stderr, "  %s\n", err);
    CHECK(lua_run(L, "assert(#seen == 1, #seen)\n"
                     "local i = seen[1]\n"
                     "assert(i.made_yet == false)\n"
                     "assert(i.thread == co, 'on the thread that called')\n"
                     "assert(math.type(i.pid) == 'integer' and i.pid == child)\n"
                     "assert(i.pgid == i.pid and i.stat_pgrp == i.pgid)\n"
                     "assert(math.type(i.start) == 'integer' and i.start == i.stat_start)\n"
                     "assert(i.boot == i.boot_now and #i.boot == 36, i.boot)\n"
                     "assert(i.argv0 == 'sh', i.argv0)\n") == NULL);
    lua_close(L);
}

/* A sink that raises: the child never runs its program, is gone, and exec.run raises
** the sink's error (check = false too: it is not the world's failure). */
static void test_raising_sink_stops_the_child(void)
{
    lua_State *L = newstate();
    const char *err = lua_run(
        L, "dir = os.tmpname(); os.remove(dir); fs.mkdir(dir)\n"
           "priv.setspawnsink(function(info) pid = info.pid; error({journal = 'full'}) end)\n"
           "local ok, e = pcall(exec.run, {'sh', '-c', 'touch \"$0\"/made', dir})\n"
           "assert(not ok and type(e) == 'table' and e.journal == 'full', tostring(e))\n"
           "priv.setspawnsink(function() error('cannot record') end)\n"
           "ok, e = pcall(exec.sh, 'touch ' .. dir .. '/made', {check = false})\n"
           "assert(not ok and e:find('cannot record'), e)\n"
           "priv.setspawnsink(nil)\n"
           "assert(io.open(dir .. '/made') == nil, 'a refused child ran')\n"
           "exec.run({'rm', '-r', dir})\n");
    CHECK(err == NULL);
    if (err) fprintf(stderr, "  %s\n", err);
    pid_t pid = (pid_t)global_integer(L, "pid");
    CHECK(pid > 0 && kill(pid, 0) < 0 && errno == ESRCH); /* killed and reaped */
    lua_close(L);
}

/* Starts sh -c script with a plain hrun_spawn, not waiting for it. */
static int start(const char *script, hrun_Proc *p)
{
    char *argv[] = {"sh", "-c", (char *)script, NULL};
    hrun_SpawnOpts o = {.argv = argv, .grace = 0.5};
    hrun_proc_init(p);
    return hrun_spawn(p, &o);
}

/* Reads the child's stdout until it has said `word` (bounded). */
static int await_word(hrun_Proc *p, const char *word)
{
    char buf[256];
    size_t len = 0;
    for (int i = 0; i < 500 && len < sizeof buf - 1; i++) {
        struct pollfd pf = {p->fds[HRUN_STDOUT], POLLIN, 0};
        if (poll(&pf, 1, 20) <= 0) continue;
        ssize_t n = read(p->fds[HRUN_STDOUT], buf + len, sizeof buf - 1 - len);
        if (n <= 0) return 0;
        len += (size_t)n;
        buf[len] = '\0';
        if (strstr(buf, word)) return 1;
    }
    return 0;
}

/* A plain hrun_spawn (btrfs.scrub's way: no lua_State at hand) reports to the main thread
** of the state that set the sink; a raising sink makes it fail with HRUN_REFUSED. */
static void test_plain_spawn_reports_to_the_main_thread(void)
{
    lua_State *L = newstate();
    hrun_Proc p;
    CHECK(lua_run(L, "groups = {}\n"
                     "priv.setspawnsink(function(info)\n"
                     "  local _, main = coroutine.running(); assert(main)\n"
                     "  groups[#groups + 1] = info\n"
                     "end)\n") == NULL);
    CHECK(start("exit 0", &p) == 0);
    hrun_proc_close(&p);
    CHECK(global_integer(L, "#groups") == 1);
    CHECK(global_integer(L, "groups[1].pgid") == p.pgid);
    CHECK(lua_run(L, "priv.setspawnsink(function() error('no room') end)") == NULL);
    CHECK(start("exit 0", &p) == HRUN_REFUSED);
    CHECK(p.pid == 0 && kill(p.pgid, 0) < 0);
    hrun_proc_close(&p);
    CHECK(lua_run(L, "priv.setspawnsink(nil)") == NULL);
    CHECK(start("exit 0", &p) == 0);
    hrun_proc_close(&p);
    CHECK(global_integer(L, "#groups") == 1);
    /* a state that closes with its sink set leaves no report behind */
    CHECK(lua_run(L, "priv.setspawnsink(function() error('closed') end)") == NULL);
    lua_close(L);
    CHECK(start("exit 0", &p) == 0);
    hrun_proc_close(&p);
}

/* Starts script (the sink records it); waits until it says "ready". */
static void start_recorded(const char *script, hrun_Proc *p)
{
    CHECK(start(script, p) == 0);
    CHECK(await_word(p, "ready"));
}

static void test_reap_stops_a_group_with_sigterm(void)
{
    lua_State *L = newstate();
    hrun_Proc p;
    CHECK(lua_run(L, "groups = {}; priv.setspawnsink(function(i) groups[#groups + 1] = i end)") ==
          NULL);
    start_recorded("sleep 30 & echo ready; wait", &p);
    pid_t leader = p.pid;
    double t0 = hrun_monotime();
    const char *err =
        lua_run(L, "local g = groups[1]\n"
                   "stopped = priv.reap({{pgid = g.pgid, start = g.start, boot = g.boot}})\n"
                   "assert(#stopped == 1, #stopped)\n"
                   "local s = stopped[1]\n"
                   "assert(s.pgid == g.pgid)\n"
                   "assert(s.processes == 2, s.processes)\n"
                   "assert(s.signal == 'SIGTERM', s.signal)\n"
                   "assert(s.argv0 == 'sh', s.argv0)\n");
    CHECK(err == NULL);
    if (err) fprintf(stderr, "  %s\n", err);
    CHECK(hrun_monotime() - t0 < 3);
    CHECK(!runs(leader) && !hrun_group_alive(p.pgid));
    /* a group that is gone (its leader a zombie here: we are its parent) is not running */
    CHECK(lua_run(L,
                  "local g = groups[1]\n"
                  "assert(#priv.reap({{pgid = g.pgid, start = g.start, boot = g.boot}}) == 0)\n") ==
          NULL);
    hrun_proc_close(&p);
    lua_close(L);
}

static void test_reap_escalates_to_sigkill(void)
{
    lua_State *L = newstate();
    hrun_Proc p;
    CHECK(lua_run(L, "groups = {}; priv.setspawnsink(function(i) groups[#groups + 1] = i end)") ==
          NULL);
    /* the leader and its child both ignore SIGTERM; JSON may give the numbers as floats */
    start_recorded("trap '' TERM; sleep 30 & echo ready; wait; sleep 30", &p);
    double t0 = hrun_monotime();
    const char *err =
        lua_run(L, "local g = groups[1]\n"
                   "local s = priv.reap({{pgid = g.pgid + 0.0, start = g.start + 0.0, "
                   "boot = g.boot}})\n"
                   "assert(#s == 1 and s[1].signal == 'SIGKILL', s[1] and s[1].signal)\n"
                   "assert(s[1].processes == 2, s[1].processes)\n");
    CHECK(err == NULL);
    if (err) fprintf(stderr, "  %s\n", err);
    double took = hrun_monotime() - t0;
    CHECK(took >= 4.5 && took < 8);
    CHECK(!hrun_group_alive(p.pgid));
    hrun_proc_close(&p);
    lua_close(L);
}

/* What cannot be proved the recorded group is never signalled: a start that does not
** match (a reused id), another boot, a malformed entry; our own group neither. */
static void test_reap_leaves_other_groups_alone(void)
{
    lua_State *L = newstate();
    hrun_Proc p;
    CHECK(lua_run(L, "groups = {}; priv.setspawnsink(function(i) groups[#groups + 1] = i end)") ==
          NULL);
    start_recorded("sleep 30 & echo ready; wait", &p);
    lua_pushinteger(L, getpgrp());
    lua_setglobal(L, "mypgid");
    const char *err = lua_run(
        L, "local g = groups[1]\n"
           "local other = g.boot:sub(1, -2) .. (g.boot:sub(-1) == '0' and '1' or '0')\n"
           "local s = priv.reap({\n"
           "  {pgid = g.pgid, start = g.start + 1, boot = g.boot},\n" /* started later */
           "  {pgid = g.pgid, start = g.start - 1, boot = g.boot},\n" /* the leader differs */
           "  {pgid = g.pgid, start = g.start, boot = other},\n"      /* another boot */
           "  {pgid = g.pgid, start = g.start},\n"                    /* no boot */
           "  {pgid = 'x', start = g.start, boot = g.boot}, 42,\n"    /* malformed */
           "  {pgid = 1, start = 0, boot = g.boot},\n"                /* init */
           "  {pgid = mypgid, start = 0, boot = g.boot},\n"           /* ours */
           "})\n"
           "assert(#s == 0, #s)\n");
    CHECK(err == NULL);
    if (err) fprintf(stderr, "  %s\n", err);
    CHECK(runs(p.pid) && hrun_group_alive(p.pgid));
    CHECK(lua_run(L, "assert(not pcall(priv.reap, 'groups'))") == NULL);
    hrun_proc_close(&p);
    CHECK(!hrun_group_alive(p.pgid));
    lua_close(L);
}

/* }====================================================== */

int main(void)
{
    RUN(test_big_outputs_on_both_pipes);
    RUN(test_stdin_round_trip);
    RUN(test_timeout_kills_the_group);
    RUN(test_timeout_escalates_to_sigkill);
    RUN(test_missing_program);
    RUN(test_sink_sees_the_child_before_it_runs);
    RUN(test_raising_sink_stops_the_child);
    RUN(test_plain_spawn_reports_to_the_main_thread);
    RUN(test_reap_stops_a_group_with_sigterm);
    RUN(test_reap_escalates_to_sigkill);
    RUN(test_reap_leaves_other_groups_alone);
    return UNIT_END();
}
