/*
** confine.c — the process a sandboxed playbook runs in, and the kernel's hold on it.
**
** The engine starts `hrun __sandbox STDLIB PPID` (this same binary) with a pipe to it on
** descriptors 3 (engine → child) and 4 (child → engine), nothing else open, and an empty
** environment.  The child makes a fresh Lua state holding the playbook language and the
** wire codec, reads what loading needs (stdlib/hrun/child.lua, dsl.lua), and then
** confines itself for good, before it sees a byte of the playbook:
**
**   nobody        started as root, it drops to uid and gid 65534, no groups, no capabilities;
**   no_new_privs  no setuid or file capability can raise it again;
**   Landlock      no filesystem access at all, no TCP, no abstract unix sockets or
**                 signals outside itself (as far as the kernel's Landlock ABI goes);
**   seccomp       a list of the system calls a Lua interpreter reading and writing two
**                 pipes needs; everything else fails with EPERM (no execve, no socket,
**                 no ptrace, no open);
**   rlimits       RLIMIT_AS (C allocations count), no core files.
**
** What the kernel lacks is reported, not papered over: the engine decides whether a
** playbook may run with it (--allow-weak-sandbox).
*/
#include <errno.h>
#include <grp.h>
#include <fcntl.h>
#include <jansson.h>
#include <seccomp.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

extern char **environ;

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

/* The user and group the child drops to when it starts as root. */
#define NOBODY 65534

/* The child's ends of the pipe. */
#define CHILD_IN  3
#define CHILD_OUT 4

/* {======================================================
** The engine's side: start and stop the child
** ======================================================= */

/* Environment variables the child keeps: the sanitizers' (a sanitizer build's child
** reports as the engine does; leak checking needs ptrace, which seccomp refuses), and
** the one knob that weakens confinement for tests (HRUN_SANDBOX_OMIT). */
static char **child_environment(void)
{
    static const char *const kept[] = {"UBSAN_OPTIONS", "LSAN_OPTIONS", "HRUN_SANDBOX_OMIT", NULL};
    size_t n = 0;
    char **env = calloc(8, sizeof(char *));
    if (env == NULL) return NULL;
    for (const char *const *k = kept; *k; k++) {
        const char *v = getenv(*k);
        if (v == NULL) continue;
        size_t len = strlen(*k) + strlen(v) + 2;
        if ((env[n] = malloc(len)) == NULL) break;
        snprintf(env[n++], len, "%s=%s", *k, v);
    }
    const char *asan = getenv("ASAN_OPTIONS");
    size_t len = (asan ? strlen(asan) : 0) + 64;
    if ((env[n] = malloc(len)) != NULL)
        snprintf(env[n++], len, "ASAN_OPTIONS=%s%sdetect_leaks=0", asan ? asan : "",
                 asan ? ":" : "");
    return env;
}

static void free_environment(char **env)
{
    for (char **e = env; e && *e; e++) free(*e);
    free(env);
}

/* priv.sandboxspawn(stdlib) → pid, channel | raises */
static int priv_sandboxspawn(lua_State *L)
{
    const char *stdlib = luaL_checkstring(L, 1);
    int to_child[2], from_child[2];
    if (pipe2(to_child, O_CLOEXEC) != 0) return luaL_error(L, "sandbox: pipe: %s", strerror(errno));
    if (pipe2(from_child, O_CLOEXEC) != 0) {
        int e = errno;
        close(to_child[0]), close(to_child[1]);
        return luaL_error(L, "sandbox: pipe: %s", strerror(e));
    }
    /* the child's ends away from 3 and 4, so that dup2 onto them never meets itself */
    int cin = fcntl(to_child[0], F_DUPFD_CLOEXEC, 10),
        cout = fcntl(from_child[1], F_DUPFD_CLOEXEC, 10);
    close(to_child[0]), close(from_child[1]);
    char ppid[32];
    snprintf(ppid, sizeof ppid, "%ld", (long)getpid());
    char *argv[] = {"hrun", "__sandbox", (char *)stdlib, ppid, NULL};
    char **env = child_environment();
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, cin, CHILD_IN);
    posix_spawn_file_actions_adddup2(&fa, cout, CHILD_OUT);
    posix_spawnattr_init(&attr);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid;
    int err = env ? posix_spawn(&pid, "/proc/self/exe", &fa, &attr, argv, env) : ENOMEM;
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    free_environment(env);
    close(cin), close(cout);
    if (err != 0) {
        close(to_child[1]), close(from_child[0]);
        return luaL_error(L, "sandbox: cannot start the playbook's process: %s", strerror(err));
    }
    lua_pushinteger(L, pid);
    lua_getfield(L, LUA_REGISTRYINDEX, "hrun.wire.new");
    lua_pushinteger(L, from_child[0]);
    lua_pushinteger(L, to_child[1]);
    lua_call(L, 2, 1);
    return 2;
}

/*
** priv.spawnchannel(argv, stderr_path [, stdin_path]) → pid, channel | raises: runs argv[1]
** (searched in PATH) with the engine's environment, in a session of its own (a Ctrl-C at
** the terminal is the engine's to handle, not the child's: ssh must outlive it for the
** rollback), its stdin and stdout a message channel (or stdin read from stdin_path, and
** the channel reading stdout only), its stderr appended to stderr_path. The transport to
** other hosts: ssh running `hrun agent` at the other end.
*/
static int priv_spawnchannel(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    const char *errpath = luaL_checkstring(L, 2);
    const char *inpath = luaL_optstring(L, 3, NULL);
    int n = (int)luaL_len(L, 1);
    luaL_argcheck(L, n >= 1 && n < 256, 1, "an argv of 1 to 255 strings expected");
    char **argv = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 1), 0);
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 1, i + 1);
        argv[i] = (char *)luaL_checkstring(L, -1);
        lua_pop(L, 1); /* the table keeps the string */
    }
    argv[n] = NULL;
    int to_child[2], from_child[2];
    if (pipe2(to_child, O_CLOEXEC) != 0) return luaL_error(L, "pipe: %s", strerror(errno));
    if (pipe2(from_child, O_CLOEXEC) != 0) {
        int e = errno;
        close(to_child[0]), close(to_child[1]);
        return luaL_error(L, "pipe: %s", strerror(e));
    }
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    if (inpath)
        posix_spawn_file_actions_addopen(&fa, 0, inpath, O_RDONLY, 0);
    else
        posix_spawn_file_actions_adddup2(&fa, to_child[0], 0);
    posix_spawn_file_actions_adddup2(&fa, from_child[1], 1);
    posix_spawn_file_actions_addopen(&fa, 2, errpath, O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawnattr_init(&attr);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr,
                             POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSID);
    extern char **environ;
    pid_t pid;
    int err = posix_spawnp(&pid, argv[0], &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close(to_child[0]), close(from_child[1]);
    if (err != 0) {
        close(to_child[1]), close(from_child[0]);
        return luaL_error(L, "cannot start %s: %s", argv[0], strerror(err));
    }
    if (inpath) close(to_child[1]), to_child[1] = -1;
    lua_pushinteger(L, pid);
    lua_getfield(L, LUA_REGISTRYINDEX, "hrun.wire.new");
    lua_pushinteger(L, from_child[0]);
    lua_pushinteger(L, to_child[1]);
    lua_call(L, 2, 1);
    return 2;
}

static const char *signame(int sig)
{
    switch (sig) {
    case SIGKILL:
        return "SIGKILL";
    case SIGSYS:
        return "SIGSYS (a system call seccomp refuses)";
    case SIGSEGV:
        return "SIGSEGV";
    case SIGABRT:
        return "SIGABRT";
    case SIGXCPU:
        return "SIGXCPU";
    default:
        return "a signal";
    }
}

/* priv.sandboxend(pid [, kill [, wait]]) → how it ended ("exited with code 0", "killed by
** …"), or nil while it runs (without kill or wait). kill: SIGKILL (or the signal of that
** number) first, then wait. */
static int priv_sandboxend(lua_State *L)
{
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    int kill_it = lua_toboolean(L, 2), wait_it = lua_toboolean(L, 3);
    if (kill_it) kill(pid, lua_isinteger(L, 2) ? (int)lua_tointeger(L, 2) : SIGKILL);
    int status;
    pid_t r;
    do r = waitpid(pid, &status, kill_it || wait_it ? 0 : WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r == 0) return 0;
    if (r < 0) {
        lua_pushfstring(L, "gone (%s)", strerror(errno));
        return 1;
    }
    if (WIFEXITED(status))
        lua_pushfstring(L, "exited with code %d", WEXITSTATUS(status));
    else
        lua_pushfstring(L, "killed by %s (%d)", signame(WTERMSIG(status)), WTERMSIG(status));
    return 1;
}

void hrun_openconfine(lua_State *L)
{
    luaL_requiref(L, "hrun.wire", luaopen_hrun_wire, 0);
    lua_getfield(L, -1, "channel");
    lua_setfield(L, LUA_REGISTRYINDEX, "hrun.wire.new");
    lua_setfield(L, -2, "wire");
    lua_pushcfunction(L, priv_sandboxspawn);
    lua_setfield(L, -2, "sandboxspawn");
    lua_pushcfunction(L, priv_sandboxend);
    lua_setfield(L, -2, "sandboxend");
    lua_pushcfunction(L, priv_spawnchannel);
    lua_setfield(L, -2, "spawnchannel");
}

/* }====================================================== */

/* {======================================================
** The child's side: confinement
** ======================================================= */

#ifndef LANDLOCK_CREATE_RULESET_VERSION
#define LANDLOCK_CREATE_RULESET_VERSION (1U << 0)
#endif

/* The attribute as of Landlock ABI 6; older kernels are given its first bytes. */
struct ruleset_attr {
    uint64_t handled_access_fs;
    uint64_t handled_access_net;
    uint64_t scoped;
};

static int omitted(const char *what)
{
    const char *omit = getenv("HRUN_SANDBOX_OMIT");
    if (omit == NULL) return 0;
    size_t n = strlen(what);
    for (const char *p = omit; (p = strstr(p, what)) != NULL; p += n)
        if ((p == omit || p[-1] == ',') && (p[n] == '\0' || p[n] == ',')) return 1;
    return 0;
}

/* Landlock with no rule: every access the ABI knows how to refuse is refused. Returns the
** ABI (> 0), or 0 and why in `why`. */
static int landlock(char *why, size_t size)
{
#if defined(SYS_landlock_create_ruleset) && defined(SYS_landlock_restrict_self)
    long abi = syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
    if (abi < 0) {
        snprintf(why, size, "the kernel has no Landlock (%s)", strerror(errno));
        return 0;
    }
    struct ruleset_attr attr = {0};
    /* fs: execute … make_sym (ABI 1), refer (2), truncate (3), ioctl_dev (5) */
    attr.handled_access_fs = (1ULL << 13) - 1;
    if (abi >= 2) attr.handled_access_fs |= 1ULL << 13;
    if (abi >= 3) attr.handled_access_fs |= 1ULL << 14;
    if (abi >= 5) attr.handled_access_fs |= 1ULL << 15;
    size_t len = sizeof attr.handled_access_fs;
    if (abi >= 4) { /* bind and connect TCP */
        attr.handled_access_net = 3;
        len = offsetof(struct ruleset_attr, scoped);
    }
    if (abi >= 6) { /* abstract unix sockets and signals outside the domain */
        attr.scoped = 3;
        len = sizeof attr;
    }
    long fd = syscall(SYS_landlock_create_ruleset, &attr, len, 0);
    if (fd < 0) {
        snprintf(why, size, "Landlock refused the ruleset (%s)", strerror(errno));
        return 0;
    }
    long r = syscall(SYS_landlock_restrict_self, fd, 0);
    int e = errno;
    close((int)fd);
    if (r != 0) {
        snprintf(why, size, "Landlock could not restrict the process (%s)", strerror(e));
        return 0;
    }
    return (int)abi;
#else
    snprintf(why, size, "hrun was built without Landlock's system calls");
    return 0;
#endif
}

/* seccomp: the calls a Lua interpreter on two pipes makes; the rest fail with EPERM. */
static int seccomp(char *why, size_t size)
{
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ERRNO(EPERM));
    if (ctx == NULL) {
        snprintf(why, size, "seccomp_init failed");
        return 0;
    }
    static const int allowed[] = {
        SCMP_SYS(read),           SCMP_SYS(write),        SCMP_SYS(readv),
        SCMP_SYS(writev),         SCMP_SYS(close),        SCMP_SYS(munmap),
        SCMP_SYS(mremap),         SCMP_SYS(brk),          SCMP_SYS(madvise),
        SCMP_SYS(exit),           SCMP_SYS(exit_group),   SCMP_SYS(rt_sigreturn),
        SCMP_SYS(rt_sigprocmask), SCMP_SYS(futex),        SCMP_SYS(clock_gettime),
        SCMP_SYS(clock_getres),   SCMP_SYS(gettimeofday), SCMP_SYS(time),
        SCMP_SYS(getpid),         SCMP_SYS(gettid),       SCMP_SYS(getrandom),
        SCMP_SYS(fstat),          SCMP_SYS(newfstatat),   SCMP_SYS(lseek),
        SCMP_SYS(sched_yield),    SCMP_SYS(sigaltstack),  SCMP_SYS(restart_syscall),
        SCMP_SYS(getrusage),      SCMP_SYS(times),        SCMP_SYS(poll),
        SCMP_SYS(ppoll),
    };
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < sizeof allowed / sizeof allowed[0]; i++)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, allowed[i], 0);
    /* memory, never executable */
    if (rc == 0)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mmap), 1,
                              SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
    if (rc == 0)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mprotect), 1,
                              SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
    /* its own limits only (getrlimit is prlimit64 on pid 0): never another process's */
    if (rc == 0)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prlimit64), 1,
                              SCMP_A0(SCMP_CMP_EQ, 0, 0));
    /* abort() signals itself, and only itself */
    if (rc == 0)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(tgkill), 1,
                              SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)getpid(), 0));
    /* the sanitizers' reports read /proc/self/maps: refused, as every open is */
    if (rc == 0) rc = seccomp_load(ctx);
    seccomp_release(ctx);
    if (rc != 0) {
        snprintf(why, size, "seccomp could not load its filter (%s)", strerror(-rc));
        return 0;
    }
    return 1;
}

/* The address space the child has now, in bytes (its binary and libraries mapped). */
static size_t address_space(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long pages = 0;
    if (f) {
        if (fscanf(f, "%lu", &pages) != 1) pages = 0;
        fclose(f);
    }
    return (size_t)pages * (size_t)sysconf(_SC_PAGESIZE);
}

/* Notes a part of the confinement that is not in force: "part: why". */
static void missing(hrun_Confinement *c, const char *part, const char *why)
{
    if (c->nmissing < (int)(sizeof c->missing / sizeof c->missing[0]))
        snprintf(c->missing[c->nmissing++], sizeof c->missing[0], "%s: %s", part, why);
}

/* A part that needs no_new_privs (landlock, seccomp): what fn gives (> 0: in force), or 0
** and why, missing. */
static int apply(hrun_Confinement *c, const char *name, int (*fn)(char *why, size_t size))
{
    char why[200];
    int got = 0;
    if (omitted(name))
        snprintf(why, sizeof why, "omitted (HRUN_SANDBOX_OMIT)");
    else if (c->no_new_privs)
        got = fn(why, sizeof why);
    else
        snprintf(why, sizeof why, "needs no_new_privs");
    if (got == 0) missing(c, name, why);
    return got;
}

void hrun_confine(size_t memory, hrun_Confinement *c)
{
    memset(c, 0, sizeof *c);
    struct rlimit zero = {0, 0};
    setrlimit(RLIMIT_CORE, &zero);
    /* root is not needed to read and write two pipes: nobody, no groups, no capabilities
    ** (they go with the uid); a change of credentials clears the parent-death signal */
    if (geteuid() == 0 && !omitted("nobody")) {
        c->nobody = setgroups(0, NULL) == 0 && setresgid(NOBODY, NOBODY, NOBODY) == 0 &&
                    setresuid(NOBODY, NOBODY, NOBODY) == 0;
        if (!c->nobody) missing(c, "nobody", strerror(errno));
        prctl(PR_SET_PDEATHSIG, SIGKILL);
    }
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);

    c->no_new_privs = !omitted("no_new_privs") && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0;
    if (!c->no_new_privs) missing(c, "no_new_privs", "not set");

    if (UNDER_ASAN) {
        /* a property of the test build, not of the kernel: not counted as missing */
        snprintf(c->note, sizeof c->note, "%s",
                 "no RLIMIT_AS in a sanitizer build (its shadow memory needs the room); the "
                 "memory limit still holds for Lua and JSON");
    } else if (omitted("rlimit_as")) {
        missing(c, "rlimit_as", "omitted (HRUN_SANDBOX_OMIT)");
    } else {
        size_t room = address_space() + memory + (64u << 20);
        struct rlimit r = {(rlim_t)room, (rlim_t)room};
        c->rlimit_as = setrlimit(RLIMIT_AS, &r) == 0;
        if (!c->rlimit_as) missing(c, "rlimit_as", strerror(errno));
    }

    c->landlock_abi = apply(c, "landlock", landlock);
    c->seccomp = apply(c, "seccomp", seccomp);
}

/* confine(memory) → {no_new_privs, landlock = ABI | false, seccomp, rlimit_as, missing} */
static int child_confine(lua_State *L)
{
    lua_Integer memory = luaL_checkinteger(L, 1);
    hrun_Confinement c;
    hrun_confine((size_t)memory, &c);
    lua_createtable(L, 0, 5);
    lua_pushboolean(L, c.no_new_privs);
    lua_setfield(L, -2, "no_new_privs");
    if (c.landlock_abi > 0)
        lua_pushinteger(L, c.landlock_abi);
    else
        lua_pushboolean(L, 0);
    lua_setfield(L, -2, "landlock");
    lua_pushboolean(L, c.seccomp);
    lua_setfield(L, -2, "seccomp");
    lua_pushboolean(L, c.rlimit_as);
    lua_setfield(L, -2, "rlimit_as");
    lua_pushboolean(L, c.nobody);
    lua_setfield(L, -2, "nobody");
    lua_createtable(L, c.nmissing, 0);
    for (int i = 0; i < c.nmissing; i++) {
        lua_pushstring(L, c.missing[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "missing");
    if (c.note[0]) {
        lua_pushstring(L, c.note);
        lua_setfield(L, -2, "note");
    }
    return 1;
}

/* strict(on): nil, message returns of module functions raise, as in a trusted run's steps */
static int child_strict(lua_State *L)
{
    hrun_runtime(L)->strict = lua_toboolean(L, 1);
    return 0;
}

/* jansson's allocations (json.decode, the wire) count against the child's heap limit. */
static void *json_charged_malloc(size_t n)
{
    size_t *p = NULL;
    if (hrun_heap_charge((ptrdiff_t)(n + sizeof(size_t))) &&
        (p = malloc(n + sizeof(size_t))) == NULL)
        hrun_heap_charge(-(ptrdiff_t)(n + sizeof(size_t)));
    if (p == NULL) return NULL;
    *p = n;
    return p + 1;
}

static void json_charged_free(void *ptr)
{
    if (ptr == NULL) return;
    size_t *p = (size_t *)ptr - 1;
    hrun_heap_charge(-(ptrdiff_t)(*p + sizeof(size_t)));
    free(p);
}

/* The child's main: hrun __sandbox STDLIB PPID. */
int hrun_child_main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "hrun: __sandbox is started by hrun itself\n");
        return 2;
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != (pid_t)atol(argv[3])) return 1; /* the engine is gone already */
    /* nothing open but stdin, stdout, stderr and the pipe: not what hrun itself inherited */
    close_range(CHILD_OUT + 1, ~0U, 0);
    signal(SIGINT, SIG_IGN); /* Ctrl-C is the engine's to act on */
    signal(SIGPIPE, SIG_IGN);
    json_set_alloc_funcs(json_charged_malloc, json_charged_free);
    lua_State *L = hrun_newstate();
    if (L == NULL) return 1;
    /* nothing of the engine's modules but json stays loadable */
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        if (strcmp(lua_tostring(L, -1), "hrun.json") != 0) {
            lua_pushvalue(L, -1);
            lua_pushnil(L);
            lua_rawset(L, -4);
        }
    }
    lua_pop(L, 1);
    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/?.lua", argv[2]);
    lua_setfield(L, -2, "path");
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "cpath");
    lua_pop(L, 1);

    int status = hrun_stdlib_load(L, argv[2], "hrun/child.lua"); /* built in: portable */
    if (status == LUA_OK) {
        lua_createtable(L, 0, 6); /* the child's private library */
        luaL_requiref(L, "hrun.wire", luaopen_hrun_wire, 0);
        lua_setfield(L, -2, "wire");
        lua_pushcfunction(L, child_confine);
        lua_setfield(L, -2, "confine");
        lua_pushcfunction(L, child_strict);
        lua_setfield(L, -2, "strict");
        hrun_openheap(L);
        lua_pushinteger(L, CHILD_IN);
        lua_setfield(L, -2, "infd");
        lua_pushinteger(L, CHILD_OUT);
        lua_setfield(L, -2, "outfd");
        status = lua_pcall(L, 1, 0, 0);
    }
    if (status != LUA_OK) {
        /* memory ran out outside any call (between messages): the engine says which limit */
        const char *msg = lua_tostring(L, -1);
        if (status == LUA_ERRMEM || (msg && strstr(msg, "not enough memory"))) return 4;
        fprintf(stderr, "hrun: the sandbox's process: %s\n",
                msg ? msg : "(an error that is not text)");
        return 1;
    }
    lua_close(L);
    return 0;
}

/* }====================================================== */
