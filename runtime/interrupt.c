/*
** interrupt.c — SIGINT and SIGTERM, clocks and interruptible sleep.
**
** As in lua.c, the signal handler only records the signal and sets a hook; the hook
** raises "interrupted" at the next safe point in Lua code. The same hook enforces a
** step's deadline on Lua code that never returns to the runner.  C code that blocks (a child
** process, a sleep) waits with the signals unblocked only inside ppoll, so it wakes at
** once and gives up cleanly; nothing longjmps out of a C library.
*/
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <time.h>

#include "internal.h"

static volatile sig_atomic_t interrupts;
static lua_State *volatile hooked_state;

/* How often (in VM instructions) a step with a deadline looks at the clock. */
#define DEADLINE_COUNT 10000

/* The one hook: an interrupt first, then the step's deadline. On the main thread it goes
** back to what the deadline needs; a coroutine's to its count hook (hrun_armthread).
** Neither is raised in a call's hooks, between the intent they journal and its result
** (hrun_Runtime.shielded): hrun_unshield raises them after. */
static void hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    if (L == hooked_state)
        hrun_armhook(L);
    else
        hrun_armthread(L);
    hrun_Runtime *rt = hrun_runtime(L);
    if (rt->shielded) {
        if (interrupts || (rt->deadline > 0 && hrun_monotime() >= rt->deadline)) rt->deferred = 1;
        return;
    }
    if (interrupts) hrun_raiseinterrupt(L);
    if (rt->deadline > 0 && hrun_monotime() >= rt->deadline) hrun_raisetimeout(L);
}

void hrun_armhook(lua_State *L)
{
    if (hrun_runtime(L)->deadline > 0)
        lua_sethook(L, hook, LUA_MASKCOUNT, DEADLINE_COUNT);
    else
        lua_sethook(L, NULL, 0, 0);
}

void hrun_armthread(lua_State *co)
{
    lua_sethook(co, hook, LUA_MASKCOUNT, DEADLINE_COUNT);
}

void hrun_unshield(lua_State *L, int level, int delivered)
{
    hrun_Runtime *rt = hrun_runtime(L);
    rt->shielded = level;
    if (level > 0) return;
    int deferred = rt->deferred;
    rt->deferred = 0;
    if (delivered) {
        /* the hook a signal armed is spent too: its interruption is the error under way */
        lua_State *main = hooked_state;
        if (main && main != L) hrun_armhook(main);
        if (L == main)
            hrun_armhook(L);
        else
            hrun_armthread(L);
    } else if (deferred) {
        lua_sethook(L, hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
    }
}

void hrun_setdeadline(lua_State *L, double deadline)
{
    hrun_runtime(L)->deadline = deadline;
    hrun_armhook(L);
}

double hrun_deadline(lua_State *L)
{
    return hrun_runtime(L)->deadline;
}

int hrun_raisetimeout(lua_State *L)
{
    return luaL_error(L, "timed out");
}

static void on_signal(int sig)
{
    (void)sig;
    if (interrupts < 1000) interrupts++;
    lua_State *L = hooked_state;
    /* lua_sethook is the one Lua call that is safe in a signal handler */
    if (L) lua_sethook(L, hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

void hrun_catchsignals(lua_State *L)
{
    struct sigaction sa = {0};
    hooked_state = L;
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: blocking calls return EINTR */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN); /* a child that stops reading its stdin is an EPIPE */
}

int hrun_interrupted(void)
{
    return interrupts;
}

void hrun_clearinterrupt(void)
{
    interrupts = 0;
    lua_State *L = hooked_state;
    if (L) hrun_armhook(L);
}

/* the counter changes with the signals held: none is lost in between */
static int swap_interrupts(int n, int add)
{
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigprocmask(SIG_BLOCK, &block, &old);
    int had = interrupts;
    interrupts = add ? (had + n < 1000 ? had + n : 1000) : n;
    sigprocmask(SIG_SETMASK, &old, NULL);
    return had;
}

int hrun_takeinterrupts(void)
{
    return swap_interrupts(0, 0);
}

void hrun_putinterrupts(int n)
{
    if (n > 0) swap_interrupts(n, 1);
}

int hrun_raiseinterrupt(lua_State *L)
{
    return luaL_error(L, "interrupted");
}

static double clock_seconds(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double hrun_monotime(void)
{
    return clock_seconds(CLOCK_MONOTONIC);
}

double hrun_walltime(void)
{
    return clock_seconds(CLOCK_REALTIME);
}

int hrun_sleep(double seconds)
{
    double end = hrun_monotime() + seconds;
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    /* the check of the counter and the wait are atomic: no signal falls in between */
    sigprocmask(SIG_BLOCK, &block, &old);
    int rc = 0;
    for (;;) {
        if (interrupts) {
            rc = -1;
            break;
        }
        double left = end - hrun_monotime();
        if (left <= 0) break;
        struct timespec ts = {(time_t)left, (long)((left - (double)(time_t)left) * 1e9)};
        ppoll(NULL, 0, &ts, &old);
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    return rc;
}
