/*
** lock.c — one run at a time per state directory, as Terraform's state lock: an flock
** on STATE/lock, whose content says who holds it. The kernel drops it when the holder
** dies, so a crashed run never leaves a stale lock.
*/
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "internal.h"

#define LOCK_TYPE "hrun.lock"

typedef struct Lock {
    int fd;
} Lock;

static int lock_release(lua_State *L)
{
    Lock *k = luaL_checkudata(L, 1, LOCK_TYPE);
    if (k->fd >= 0) {
        if (ftruncate(k->fd, 0) < 0) { /* the content only informs: nothing to do */
        }
        close(k->fd); /* closing drops the flock */
    }
    k->fd = -1;
    return 0;
}

/* lock:note(text): what a second run is told about the holder */
static int lock_note(lua_State *L)
{
    Lock *k = luaL_checkudata(L, 1, LOCK_TYPE);
    size_t len;
    const char *text = luaL_checklstring(L, 2, &len);
    if (k->fd < 0) return luaL_error(L, "lock released");
    if (ftruncate(k->fd, 0) < 0 || pwrite(k->fd, text, len, 0) < 0)
        return hrun_fail(L, "lock", NULL, errno);
    lua_pushboolean(L, 1);
    return 1;
}

/* lock(path) → handle | nil, "what the holder noted", "ELOCKED" | nil, message, code */
static int lock_acquire(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"note", lock_note},
        {"release", lock_release},
        {NULL, NULL},
    };
    const char *path = hrun_checkpath(L, 1, NULL);
    Lock *k = lua_newuserdatauv(L, sizeof(Lock), 0);
    k->fd = -1;
    hrun_setclose(L, LOCK_TYPE, lock_release, methods);
    if ((k->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0)
        return hrun_fail(L, "lock", path, errno);
    if (flock(k->fd, LOCK_EX | LOCK_NB) < 0) {
        int err = errno;
        char holder[256];
        ssize_t n = err == EWOULDBLOCK ? pread(k->fd, holder, sizeof holder - 1, 0) : -1;
        close(k->fd);
        k->fd = -1;
        if (err != EWOULDBLOCK) return hrun_fail(L, "lock", path, err);
        holder[n > 0 ? n : 0] = '\0';
        lua_pushnil(L);
        lua_pushstring(L, n > 0 ? holder : "another process");
        lua_pushliteral(L, "ELOCKED");
        return 3;
    }
    return 1;
}

/* crash([signal]): SIGKILL this process at once, or with "INT" send it SIGINT (a Ctrl-C
** at that very point) — the test suite's fault injection */
static int crash(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TSTRING && strcmp(lua_tostring(L, 1), "INT") == 0) {
        raise(SIGINT);
        return 0;
    }
    fflush(NULL);
    raise(SIGKILL);
    return 0;
}

/* [-0, +0, m] Adds lock and crash to the private library on top. */
void hrun_openlock(lua_State *L)
{
    lua_pushcfunction(L, lock_acquire);
    lua_setfield(L, -2, "lock");
    lua_pushcfunction(L, crash);
    lua_setfield(L, -2, "crash");
}
