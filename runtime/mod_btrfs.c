/*
** mod_btrfs.c — the `btrfs` module: subvolumes and snapshots through libbtrfsutil (no
** btrfs CLI), restore, retention (prune), and scrub (the one CLI call: there is no
** library API for it).
*/
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <btrfsutil.h>

#include "hrun/spawn.h"
#include "internal.h"

/* {======================================================
** Errors: the path and the reason, and a code a program can test
** ======================================================= */

/* [-0, +3, m] nil, "what: path: reason", code for a libbtrfsutil error */
static int fail(lua_State *L, const char *what, const char *path, enum btrfs_util_error e)
{
    int err = errno;
    switch (e) {
    case BTRFS_UTIL_ERROR_NOT_BTRFS:
        return hrun_failf(L, "ENOTBTRFS", "%s: %s: not on a btrfs filesystem", what, path);
    case BTRFS_UTIL_ERROR_NOT_SUBVOLUME:
        return hrun_failf(L, "ENOTSUBVOL", "%s: %s: not a btrfs subvolume", what, path);
    case BTRFS_UTIL_ERROR_SUBVOLUME_NOT_FOUND:
        return hrun_failf(L, "ENOENT", "%s: %s: no such subvolume", what, path);
    case BTRFS_UTIL_ERROR_NO_MEMORY:
        return hrun_fail(L, what, path, ENOMEM);
    default:
        /* the *_FAILED errors leave the failing system call's errno */
        if (err == 0)
            return hrun_failf(L, "EBTRFS", "%s: %s: %s", what, path, btrfs_util_strerror(e));
        return hrun_fail(L, what, path, err);
    }
}

#define BTRFS_MAGIC 0x9123683E

/* Where a new subvolume would go (path's directory) is on btrfs: 0; else -1, with the
** failure pushed (nil, message, code). */
static int check_parent(lua_State *L, const char *what, const char *path)
{
    char dir[PATH_MAX];
    struct statfs sf;
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    if (statfs(dir, &sf) < 0) return hrun_fail(L, what, dir, errno), -1;
    if (sf.f_type != BTRFS_MAGIC) return fail(L, what, dir, BTRFS_UTIL_ERROR_NOT_BTRFS), -1;
    return 0;
}

/* }====================================================== */

static void push_uuid(lua_State *L, const uint8_t u[16])
{
    static const uint8_t zero[16];
    if (memcmp(u, zero, 16) == 0) {
        lua_pushnil(L);
        return;
    }
    char s[37];
    snprintf(s, sizeof s, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
             u[14], u[15]);
    lua_pushstring(L, s);
}

static void settime(lua_State *L, const char *k, struct timespec ts)
{
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    lua_setfield(L, -2, k);
}

/* [-0, +1, m] The fields of a subvolume's info into the table on top. */
static void fill_info(lua_State *L, const struct btrfs_util_subvolume_info *i)
{
    lua_pushinteger(L, (lua_Integer)i->id);
    lua_setfield(L, -2, "id");
    lua_pushinteger(L, (lua_Integer)i->parent_id);
    lua_setfield(L, -2, "parent_id");
    push_uuid(L, i->uuid);
    lua_setfield(L, -2, "uuid");
    push_uuid(L, i->parent_uuid);
    lua_setfield(L, -2, "parent_uuid");
    push_uuid(L, i->received_uuid);
    lua_setfield(L, -2, "received_uuid");
    lua_pushinteger(L, (lua_Integer)i->generation);
    lua_setfield(L, -2, "generation");
    settime(L, "otime", i->otime);
    settime(L, "ctime", i->ctime);
    lua_pushboolean(L, (i->flags & 1) != 0); /* BTRFS_ROOT_SUBVOL_RDONLY */
    lua_setfield(L, -2, "readonly");
}

/* {======================================================
** Reads
** ======================================================= */

/* btrfs.is_subvolume(path) → true | false | nil, message, code */
static int btrfs_is_subvolume(lua_State *L)
{
    const char *path = hrun_checkpath(L, 1, NULL);
    errno = 0;
    enum btrfs_util_error e = btrfs_util_is_subvolume(path);
    if (e == BTRFS_UTIL_OK) return lua_pushboolean(L, 1), 1;
    if (e == BTRFS_UTIL_ERROR_NOT_SUBVOLUME || e == BTRFS_UTIL_ERROR_NOT_BTRFS)
        return lua_pushboolean(L, 0), 1;
    return fail(L, "btrfs.is_subvolume", path, e);
}

/*
** btrfs.info(path) → {id, parent_id, uuid, parent_uuid, received_uuid, generation,
**   otime, ctime, readonly, path} | nil, message, code
** path is the subvolume's path inside the filesystem (as `btrfs subvolume list` says).
*/
static int btrfs_info(lua_State *L)
{
    const char *path = hrun_checkpath(L, 1, NULL);
    struct btrfs_util_subvolume_info info;
    errno = 0;
    enum btrfs_util_error e = btrfs_util_subvolume_info(path, 0, &info);
    if (e) return fail(L, "btrfs.info", path, e);
    lua_createtable(L, 0, 11);
    fill_info(L, &info);
    char *fspath = NULL;
    if (btrfs_util_subvolume_path(path, 0, &fspath) == BTRFS_UTIL_OK) {
        lua_pushstring(L, fspath);
        lua_setfield(L, -2, "path");
    }
    free(fspath);
    return 1;
}

typedef struct Iter {
    struct btrfs_util_subvolume_iterator *it;
} Iter;

static int iter_close(lua_State *L)
{
    Iter *i = luaL_checkudata(L, 1, "hrun.btrfs.iter");
    if (i->it) btrfs_util_destroy_subvolume_iterator(i->it);
    i->it = NULL;
    return 0;
}

/* The nearest directory at or above `dir` that is a subvolume, into `root`. */
static int containing_subvolume(const char *dir, char *root, size_t size)
{
    snprintf(root, size, "%s", dir);
    for (;;) {
        if (btrfs_util_is_subvolume(root) == BTRFS_UTIL_OK) return 0;
        char *slash = strrchr(root, '/');
        if (slash == NULL || slash == root) return -1;
        *slash = '\0';
    }
}

/*
** btrfs.list(dir) → {{id, path, rel, fs_path, uuid, parent_uuid, readonly, otime,
**   generation, …}, …} sorted by rel | nil, message, code
** Every subvolume below dir, recursively: path is where it is on this machine, rel its
** path relative to dir, fs_path relative to the filesystem's top.
*/
static int btrfs_list(lua_State *L)
{
    const char *dir = hrun_checkpath(L, 1, NULL);
    char real[PATH_MAX], root[PATH_MAX];
    if (realpath(dir, real) == NULL) return hrun_fail(L, "btrfs.list", dir, errno);
    errno = 0;
    enum btrfs_util_error e = btrfs_util_is_subvolume(real);
    if (e == BTRFS_UTIL_ERROR_NOT_BTRFS) return fail(L, "btrfs.list", dir, e);
    if (containing_subvolume(real, root, sizeof root) < 0)
        return fail(L, "btrfs.list", dir, BTRFS_UTIL_ERROR_NOT_SUBVOLUME);
    /* dir's path inside its subvolume: entries must be under it */
    const char *inner = real + strlen(root);
    while (*inner == '/') inner++;
    size_t innerlen = strlen(inner);
    uint64_t top;
    if ((e = btrfs_util_subvolume_id(root, &top))) return fail(L, "btrfs.list", dir, e);
    Iter *i = lua_newuserdatauv(L, sizeof(Iter), 0);
    i->it = NULL;
    hrun_setclose(L, "hrun.btrfs.iter", iter_close, NULL);
    lua_toclose(L, -1);
    if ((e = btrfs_util_create_subvolume_iterator(root, top, 0, &i->it)))
        return fail(L, "btrfs.list", dir, e);
    lua_newtable(L);
    lua_Integer n = 0;
    for (;;) {
        char *p = NULL;
        struct btrfs_util_subvolume_info info;
        e = btrfs_util_subvolume_iterator_next_info(i->it, &p, &info);
        if (e == BTRFS_UTIL_ERROR_STOP_ITERATION) break;
        if (e) return fail(L, "btrfs.list", dir, e);
        int under = innerlen == 0 || (strncmp(p, inner, innerlen) == 0 && p[innerlen] == '/');
        if (!under) {
            free(p);
            continue;
        }
        /* no raise between here and free: the pushes below have room (checkstack) */
        if (!lua_checkstack(L, 4)) {
            free(p);
            return luaL_error(L, "btrfs.list: stack overflow");
        }
        lua_createtable(L, 0, 14);
        fill_info(L, &info);
        lua_pushfstring(L, "%s/%s", root, p);
        lua_setfield(L, -2, "path");
        lua_pushstring(L, innerlen ? p + innerlen + 1 : p);
        lua_setfield(L, -2, "rel");
        char *fspath = NULL;
        if (btrfs_util_subvolume_path(root, info.id, &fspath) == BTRFS_UTIL_OK) {
            lua_pushstring(L, fspath);
            lua_setfield(L, -2, "fs_path");
        }
        free(fspath);
        free(p);
        lua_rawseti(L, -2, ++n);
    }
    /* sorted by rel: the iterator's order is the tree's, not a person's */
    lua_getglobal(L, "table");
    lua_getfield(L, -1, "sort");
    lua_pushvalue(L, -3);
    luaL_loadstring(L, "local a, b = ... return a.rel < b.rel");
    lua_call(L, 2, 0);
    lua_pop(L, 1);
    return 1;
}

/* }====================================================== */

/* {======================================================
** Writes and their inverses
** ======================================================= */

/* [-0, +1, m] {recursive = true} */
static void push_recursive(lua_State *L)
{
    lua_createtable(L, 0, 1);
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "recursive");
}

/* btrfs.create(path) → path | nil, message, code */
static int btrfs_create(lua_State *L)
{
    const char *path = hrun_checkpath(L, 1, NULL);
    struct stat st;
    if (check_parent(L, "btrfs.create", path) < 0) return 3;
    if (lstat(path, &st) == 0) return hrun_fail(L, "btrfs.create", path, EEXIST);
    errno = 0;
    enum btrfs_util_error e = btrfs_util_create_subvolume(path, 0, NULL, NULL);
    if (e) return fail(L, "btrfs.create", path, e);
    lua_pushvalue(L, 1);
    return 1;
}

/* created subvolumes are undone by deleting them */
static int btrfs_create_inverse(lua_State *L)
{
    lua_newtable(L);
    int list = lua_gettop(L);
    lua_pushvalue(L, 1);
    hrun_addop(L, list, "btrfs.delete", 1);
    return 1;
}

static const char *const snapshot_options[] = {"readonly", "recursive", NULL};

/* btrfs.snapshot(src, dst [, {readonly, recursive}]) → dst | nil, message, code */
static int btrfs_snapshot(lua_State *L)
{
    const char *src = hrun_checkpath(L, 1, NULL);
    const char *dst = hrun_checkpath(L, 2, NULL);
    hrun_checkopts(L, 3, snapshot_options);
    int flags = (hrun_optbool(L, 3, "readonly", 0) ? BTRFS_UTIL_CREATE_SNAPSHOT_READ_ONLY : 0) |
                (hrun_optbool(L, 3, "recursive", 0) ? BTRFS_UTIL_CREATE_SNAPSHOT_RECURSIVE : 0);
    struct stat st;
    /* say which side is wrong: the library reports both as one failure */
    if (stat(src, &st) < 0) return hrun_fail(L, "btrfs.snapshot", src, errno);
    errno = 0;
    enum btrfs_util_error e = btrfs_util_is_subvolume(src);
    if (e) return fail(L, "btrfs.snapshot", src, e);
    if (lstat(dst, &st) == 0) return hrun_fail(L, "btrfs.snapshot", dst, EEXIST);
    if (check_parent(L, "btrfs.snapshot", dst) < 0) return 3;
    if ((e = btrfs_util_create_snapshot(src, dst, flags, NULL, NULL)))
        return fail(L, "btrfs.snapshot", dst, e);
    lua_pushvalue(L, 2);
    return 1;
}

static int btrfs_snapshot_inverse(lua_State *L)
{
    int recursive = lua_istable(L, 3) && (lua_getfield(L, 3, "recursive"), lua_toboolean(L, -1));
    lua_newtable(L);
    int list = lua_gettop(L);
    lua_pushvalue(L, 2);
    if (recursive) {
        push_recursive(L);
        hrun_addop(L, list, "btrfs.delete", 2);
    } else {
        hrun_addop(L, list, "btrfs.delete", 1);
    }
    return 1;
}

static const char *const delete_options[] = {"recursive", NULL};

/*
** btrfs.delete(path [, {recursive}]) → path | nil, message, code
** Read-only snapshots too. It cannot be undone: in a playbook step it is refused
** unless the step has its own undo or says irreversible = true.
*/
static int btrfs_delete(lua_State *L)
{
    const char *path = hrun_checkpath(L, 1, NULL);
    hrun_checkopts(L, 2, delete_options);
    int flags = hrun_optbool(L, 2, "recursive", 0) ? BTRFS_UTIL_DELETE_SUBVOLUME_RECURSIVE : 0;
    struct stat st;
    if (lstat(path, &st) < 0) return hrun_fail(L, "btrfs.delete", path, errno);
    errno = 0;
    enum btrfs_util_error e = btrfs_util_is_subvolume(path);
    if (e) return fail(L, "btrfs.delete", path, e);
    if ((e = btrfs_util_delete_subvolume(path, flags))) return fail(L, "btrfs.delete", path, e);
    lua_pushvalue(L, 1);
    return 1;
}

/* btrfs.set_readonly(path, readonly) → path | nil, message, code */
static int btrfs_set_readonly(lua_State *L)
{
    const char *path = hrun_checkpath(L, 1, NULL);
    luaL_checktype(L, 2, LUA_TBOOLEAN);
    errno = 0;
    enum btrfs_util_error e = btrfs_util_set_subvolume_read_only(path, lua_toboolean(L, 2));
    if (e) return fail(L, "btrfs.set_readonly", path, e);
    lua_pushvalue(L, 1);
    return 1;
}

/* the inverse puts the old flag back */
static int btrfs_set_readonly_inverse(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    bool old;
    lua_newtable(L);
    if (btrfs_util_get_subvolume_read_only(path, &old) != BTRFS_UTIL_OK) return 1;
    lua_pushvalue(L, 1);
    lua_pushboolean(L, old);
    hrun_addop(L, lua_gettop(L) - 2, "btrfs.set_readonly", 2);
    return 1;
}

/* btrfs.create: a subvolume is there */
static int btrfs_create_unchanged(lua_State *L)
{
    const char *path = lua_tostring(L, 1);
    if (path && *path && btrfs_util_is_subvolume(path) == BTRFS_UTIL_OK)
        lua_pushvalue(L, 1);
    else
        lua_pushnil(L);
    return 1;
}

/* btrfs.set_readonly: the flag is already so */
static int btrfs_set_readonly_unchanged(lua_State *L)
{
    const char *path = lua_tostring(L, 1);
    bool now;
    if (path && *path && lua_type(L, 2) == LUA_TBOOLEAN &&
        btrfs_util_get_subvolume_read_only(path, &now) == BTRFS_UTIL_OK &&
        now == (bool)lua_toboolean(L, 2))
        lua_pushvalue(L, 1);
    else
        lua_pushnil(L);
    return 1;
}

/* btrfs.sync(path) → path | nil, message, code: commits the filesystem's transaction */
static int btrfs_sync(lua_State *L)
{
    const char *path = hrun_checkpath(L, 1, NULL);
    errno = 0;
    enum btrfs_util_error e = btrfs_util_sync(path);
    if (e) return fail(L, "btrfs.sync", path, e);
    lua_pushvalue(L, 1);
    return 1;
}

/* The name restore's inverse and state chose for target (computed just before the
** call, which must use the same one even if the clock's second turned in between). */
static char planned_target[PATH_MAX], planned_aside[PATH_MAX];

/* The name target is moved aside to: <target>.hrun-<run>-<time>. plan: for the inverse
** and the state, the name is kept for the call (and given again to the other); the call
** takes it. */
static void aside_name(lua_State *L, const char *target, char *out, size_t size, int plan)
{
    if (planned_target[0] && strcmp(planned_target, target) == 0) {
        snprintf(out, size, "%s", planned_aside);
        if (!plan) planned_target[0] = '\0';
        return;
    }
    /* to the microsecond, and a name that is taken is not chosen (restore renames with
    ** RENAME_NOREPLACE too): two restores of one target in a second both keep theirs */
    lua_Integer run = hrun_runtime(L)->run_id;
    struct stat st;
    for (int i = 0; i < 100; i++) {
        char when[80], sec[32];
        struct timespec now;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &now);
        gmtime_r(&now.tv_sec, &tm);
        strftime(sec, sizeof sec, "%Y%m%dT%H%M%S", &tm);
        snprintf(when, sizeof when, "%s.%06dZ", sec, (int)(now.tv_nsec / 1000) % 1000000);
        if (run > 0)
            snprintf(out, size, "%s.hrun-%lld-%s", target, (long long)run, when);
        else
            snprintf(out, size, "%s.hrun-%s", target, when);
        if (lstat(out, &st) < 0 && errno == ENOENT) break;
    }
    if (plan) {
        snprintf(planned_target, sizeof planned_target, "%s", target);
        snprintf(planned_aside, sizeof planned_aside, "%s", out);
    }
}

/*
** btrfs.restore(snapshot, target) → aside | false | nil, message, code
** Moves target aside (to <target>.hrun-<run>-<time>), puts a writable snapshot of
** snapshot at target, and returns the aside path (false when there was no target).
** Fails without changing anything if either step cannot be done.
*/
static int btrfs_restore(lua_State *L)
{
    const char *snap = hrun_checkpath(L, 1, NULL);
    const char *target = hrun_checkpath(L, 2, NULL);
    char aside[PATH_MAX];
    struct stat st;
    errno = 0;
    enum btrfs_util_error e = btrfs_util_is_subvolume(snap);
    if (e) return fail(L, "btrfs.restore", snap, e);
    int exists = lstat(target, &st) == 0;
    if (exists) {
        if ((e = btrfs_util_is_subvolume(target)))
            return fail(L, "btrfs.restore", target, e); /* replace a subvolume, not any dir */
        aside_name(L, target, aside, sizeof aside, 0);
        if (renameat2(AT_FDCWD, target, AT_FDCWD, aside, RENAME_NOREPLACE) < 0)
            return hrun_fail(L, "btrfs.restore", target, errno);
    }
    if ((e = btrfs_util_create_snapshot(snap, target, 0, NULL, NULL))) {
        int err = errno;
        if (exists && rename(aside, target) < 0) { /* put it back: nothing half made */
        }
        errno = err;
        return fail(L, "btrfs.restore", target, e);
    }
    if (exists)
        lua_pushstring(L, aside);
    else
        lua_pushboolean(L, 0);
    return 1;
}

/* The plan of a restore: what becomes the target and where the current target goes
** (aside: the name the call takes, false when there is no target — what the call
** returns). A restore that would fail says so (error, code). */
static int btrfs_restore_preview(lua_State *L)
{
    const char *snap = hrun_checkpath(L, 1, NULL);
    const char *target = hrun_checkpath(L, 2, NULL);
    char aside[PATH_MAX];
    struct stat st;
    lua_createtable(L, 0, 4);
    int res = lua_gettop(L);
    lua_newtable(L);
    int lines = lua_gettop(L);
    errno = 0;
    const char *bad = snap;
    enum btrfs_util_error e = btrfs_util_is_subvolume(snap);
    int exists = lstat(target, &st) == 0;
    if (!e && exists) {
        bad = target; /* replace a subvolume, not any dir: as the call */
        e = btrfs_util_is_subvolume(target);
    }
    if (e) {
        fail(L, "btrfs.restore", bad, e);
        lua_setfield(L, res, "code");
        lua_pushfstring(L, "the restore fails: %s", lua_tostring(L, -1));
        lua_rawseti(L, lines, 1);
        lua_setfield(L, res, "error");
        lua_pop(L, 1);
    } else {
        if (exists) {
            aside_name(L, target, aside, sizeof aside, 1);
            lua_pushfstring(L, "sets the current %s aside as %s", target, aside);
            lua_rawseti(L, lines, 1);
            lua_pushstring(L, aside);
        } else {
            lua_pushboolean(L, 0);
        }
        lua_setfield(L, res, "aside");
        lua_pushfstring(L, "%s becomes a writable snapshot of %s%s", target, snap,
                        exists ? "" : " (there is no target to set aside)");
        lua_rawseti(L, lines, (lua_Integer)lua_rawlen(L, lines) + 1);
    }
    lua_setfield(L, res, "lines");
    return 1;
}

/* the inverse swaps back: the restored copy deleted, the old target renamed home */
static int btrfs_restore_inverse(lua_State *L)
{
    const char *target = luaL_checkstring(L, 2);
    char aside[PATH_MAX];
    struct stat st;
    lua_newtable(L);
    int list = lua_gettop(L);
    lua_pushvalue(L, 2);
    hrun_addop(L, list, "btrfs.delete", 1);
    if (lstat(target, &st) == 0) {
        /* the name restore will choose, kept for it */
        aside_name(L, target, aside, sizeof aside, 1);
        lua_pushstring(L, aside);
        lua_pushvalue(L, 2);
        lua_createtable(L, 0, 1);
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "replace");
        hrun_addop(L, list, "fs.rename", 3);
    }
    return 1;
}

/* }====================================================== */

/* {======================================================
** States, for the careful undo (runtime/undo.c)
** ======================================================= */

/*
** A subvolume's fingerprint: "absent"; "subvolume <uuid> rw"; "subvolume <uuid> ro
** ctransid N"; "not a subvolume: …"; "unreadable: …". The uuid tells a subvolume from
** another made in its place (a snapshot gets a new one), the flag a set_readonly.
** Found on a real btrfs (kernel 6.1, libbtrfsutil 6.2): `generation` moves whenever the
** subvolume's root is in a transaction — a snapshot of it bumps it — so it says nothing
** about writes. `ctransid` (the transaction of the last change to its files) stays
** through reads, snapshots, a rename and set_readonly, and moves when a file in it is
** written, once that transaction commits. It is kept for read-only subvolumes only: a
** writable one is written by the run's own later steps (a subvolume created, then
** filled), and undoing those writes moves ctransid on again rather than back, so it
** would call every such subvolume changed; and on a relatime mount one read after a
** write moves it too. A read-only one changes only if someone made it writable.
*/
int hrun_subvolume_fp(lua_State *L)
{
    const char *path = lua_tostring(L, 1);
    struct stat st;
    if (path == NULL) return lua_pushliteral(L, "unreadable: no path in the key"), 1;
    if (lstat(path, &st) < 0) {
        if (errno == ENOENT || errno == ENOTDIR) return lua_pushliteral(L, "absent"), 1;
        return lua_pushfstring(L, "unreadable: %s", strerror(errno)), 1;
    }
    errno = 0;
    enum btrfs_util_error e = btrfs_util_is_subvolume(path);
    if (e == BTRFS_UTIL_ERROR_NOT_SUBVOLUME || e == BTRFS_UTIL_ERROR_NOT_BTRFS) {
        lua_pushfstring(L, "not a subvolume: ");
        hrun_path_fp(L); /* what is there instead */
        lua_concat(L, 2);
        return 1;
    }
    struct btrfs_util_subvolume_info info;
    if (e == BTRFS_UTIL_OK) e = btrfs_util_subvolume_info(path, 0, &info);
    if (e) {
        int err = errno;
        return lua_pushfstring(L, "unreadable: %s%s%s", btrfs_util_strerror(e), err ? ": " : "",
                               err ? strerror(err) : ""),
               1;
    }
    push_uuid(L, info.uuid);
    const char *uuid = lua_tostring(L, -1);
    if (info.flags & 1)
        lua_pushfstring(L, "subvolume %s ro ctransid %I", uuid ? uuid : "(no uuid)",
                        (lua_Integer)info.ctransid);
    else
        lua_pushfstring(L, "subvolume %s rw", uuid ? uuid : "(no uuid)");
    return 1;
}

/* btrfs.create and btrfs.set_readonly: the subvolume */
static int btrfs_path_state(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lua_newtable(L);
    hrun_addabs(L, lua_gettop(L), "subvolume", path);
    return 1;
}

/* btrfs.snapshot: the new one (its source is only read) */
static int btrfs_snapshot_state(lua_State *L)
{
    luaL_checkstring(L, 1);
    const char *dst = luaL_checkstring(L, 2);
    lua_newtable(L);
    hrun_addabs(L, lua_gettop(L), "subvolume", dst);
    return 1;
}

/* btrfs.restore: the target and the name it is moved aside to (the aside's entry says
** so: killed between the move and the snapshot, leftovers moves it back) */
static int btrfs_restore_state(lua_State *L)
{
    luaL_checkstring(L, 1);
    const char *target = luaL_checkstring(L, 2);
    char aside[PATH_MAX], abs[PATH_MAX];
    struct stat st;
    lua_newtable(L);
    int list = lua_gettop(L);
    hrun_addabs(L, list, "subvolume", target);
    if (lstat(target, &st) < 0) return 1; /* nothing to move aside */
    aside_name(L, target, aside, sizeof aside, 1);
    hrun_addabs(L, list, "subvolume", aside);
    lua_rawgeti(L, list, 2);
    if (hrun_abspath(target, abs, sizeof abs) < 0) snprintf(abs, sizeof abs, "%s", target);
    lua_pushstring(L, abs);
    lua_setfield(L, -2, "aside_of");
    lua_pop(L, 1);
    return 1;
}

/* }====================================================== */

/* {======================================================
** Retention
** ======================================================= */

typedef struct Snap {
    char *name;
    time_t t;
} Snap;

/* A time in a snapshot's name — 2024-05-01T12:30:00, 20240501T1230, 2024-05-01_12-30,
** 2024-05-01 … ("Z" at the end: UTC, else local time) — as btrbk and snapper name them;
** a fraction of a second after the time (hrun's own names: .123456Z) is passed over.
** Returns -1 when the name has none. */
static time_t name_time(const char *name)
{
    for (const char *p = name; *p; p++) {
        int y, mo, d, h = 0, mi = 0, s = 0, n = 0;
        const char *q = p;
        if (sscanf(q, "%4d-%2d-%2d%n", &y, &mo, &d, &n) == 3 && n == 10)
            q += n;
        else if (sscanf(q, "%4d%2d%2d%n", &y, &mo, &d, &n) == 3 && n == 8)
            q += n;
        else
            continue;
        if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > 31) continue;
        if (*q == 'T' || *q == '_' || *q == ' ' || *q == '-') {
            const char *t = q + 1;
            if (sscanf(t, "%2d:%2d:%2d%n", &h, &mi, &s, &n) == 3 && n == 8)
                q = t + n;
            else if (sscanf(t, "%2d-%2d-%2d%n", &h, &mi, &s, &n) == 3 && n == 8)
                q = t + n;
            else if (sscanf(t, "%2d:%2d%n", &h, &mi, &n) == 2 && n == 5)
                q = t + n;
            else if (sscanf(t, "%2d%2d%2d%n", &h, &mi, &s, &n) == 3 && n == 6)
                q = t + n;
            else if (sscanf(t, "%2d%2d%n", &h, &mi, &n) == 2 && n == 4)
                q = t + n;
            if (*q == '.' && isdigit((unsigned char)q[1]))
                for (q++; isdigit((unsigned char)*q); q++) {
                }
        }
        struct tm tm = {.tm_year = y - 1900,
                        .tm_mon = mo - 1,
                        .tm_mday = d,
                        .tm_hour = h,
                        .tm_min = mi,
                        .tm_sec = s,
                        .tm_isdst = -1};
        return *q == 'Z' ? timegm(&tm) : mktime(&tm);
    }
    return -1;
}

static int newest_first(const void *a, const void *b)
{
    const Snap *x = a, *y = b;
    return x->t < y->t ? 1 : x->t > y->t ? -1 : strcmp(y->name, x->name);
}

typedef struct Prune {
    Snap *snaps;
    size_t n;
    DIR *dir;
} Prune;

static int prune_close(lua_State *L)
{
    Prune *p = luaL_checkudata(L, 1, "hrun.btrfs.prune");
    for (size_t i = 0; i < p->n; i++) free(p->snaps[i].name);
    free(p->snaps);
    p->snaps = NULL, p->n = 0;
    if (p->dir) closedir(p->dir);
    p->dir = NULL;
    return 0;
}

/* Is path referenced by an unfinished run (the runner's protector says so)? */
static int protected_path(lua_State *L, const char *path)
{
    if (lua_getfield(L, LUA_REGISTRYINDEX, PROTECTOR) != LUA_TFUNCTION) {
        lua_pop(L, 1);
        return 0;
    }
    lua_pushstring(L, path);
    lua_call(L, 1, 1);
    int yes = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return yes;
}

static const char *const prune_options[] = {
    "keep_last",    "keep_hourly", "keep_daily", "keep_weekly",
    "keep_monthly", "pattern",     "asides_of",  NULL};

/*
** [-0, +1|3, e] What btrfs.prune(dir, opts) at 1 and 2 would do, by its rules (below):
** pushes {kept = {names}, deleted = {names to delete}, protected = {names}}, newest
** first, and returns 1; or pushes nil, message, code and returns 3. Deletes nothing: the
** prune and its plan's preview share it.
*/
static int prune_select(lua_State *L)
{
    static const char *const rules[] = {"keep_last", "keep_hourly", "keep_daily", "keep_weekly",
                                        "keep_monthly"};
    static const char *const buckets[] = {NULL, "%Y%m%d%H", "%Y%m%d", "%G%V", "%Y%m"};
    const char *dir = hrun_checkpath(L, 1, NULL);
    luaL_checktype(L, 2, LUA_TTABLE);
    hrun_checkopts(L, 2, prune_options);
    lua_Integer keep[5];
    int any = 0;
    for (int r = 0; r < 5; r++) {
        keep[r] = hrun_optinteger(L, 2, rules[r], 0);
        if (keep[r] < 0)
            luaL_argerror(L, 2, lua_pushfstring(L, "field '%s': must be >= 0", rules[r]));
        any |= keep[r] > 0;
    }
    if (!any) luaL_argerror(L, 2, "no keep_* rule: pruning would delete every snapshot");
    const char *pattern = hrun_optstring(L, 2, "pattern", NULL, NULL);
    const char *asides_of = hrun_optstring(L, 2, "asides_of", NULL, NULL);
    if (asides_of && pattern) luaL_argerror(L, 2, "'pattern' and 'asides_of' together: give one");
    if (asides_of && (asides_of[0] == '\0' || strchr(asides_of, '/')))
        luaL_argerror(L, 2, "field 'asides_of': the name of a subvolume in dir, without '/'");
    size_t aside_len = asides_of ? strlen(asides_of) : 0;
    lua_settop(L, 2);
    Prune *p = lua_newuserdatauv(L, sizeof(Prune), 0); /* 3 */
    p->snaps = NULL, p->n = 0, p->dir = NULL;
    hrun_setclose(L, "hrun.btrfs.prune", prune_close, NULL);
    lua_toclose(L, 3);
    if ((p->dir = opendir(dir)) == NULL) return hrun_fail(L, "btrfs.prune", dir, errno);
    size_t cap = 0;
    struct dirent *de;
    char path[PATH_MAX];
    while ((de = readdir(p->dir)) != NULL) {
        if (de->d_name[0] == '.' && (de->d_name[1] == '\0' || strcmp(de->d_name, "..") == 0))
            continue;
        if (pattern && fnmatch(pattern, de->d_name, 0) != 0) continue;
        if (asides_of && (strncmp(de->d_name, asides_of, aside_len) != 0 ||
                          strncmp(de->d_name + aside_len, ".hrun-", 6) != 0))
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (btrfs_util_is_subvolume(path) != BTRFS_UTIL_OK) continue;
        time_t t = name_time(de->d_name);
        if (t < 0) {
            struct btrfs_util_subvolume_info info;
            if (btrfs_util_subvolume_info(path, 0, &info) != BTRFS_UTIL_OK) continue;
            t = info.otime.tv_sec;
        }
        if (p->n == cap) {
            Snap *grown = realloc(p->snaps, (cap = cap ? cap * 2 : 16) * sizeof(Snap));
            if (grown == NULL) return luaL_error(L, "btrfs.prune: not enough memory");
            p->snaps = grown;
        }
        if ((p->snaps[p->n].name = strdup(de->d_name)) == NULL)
            return luaL_error(L, "btrfs.prune: not enough memory");
        p->snaps[p->n++].t = t;
    }
    closedir(p->dir);
    p->dir = NULL;
    qsort(p->snaps, p->n, sizeof(Snap), newest_first);

    char *kept = lua_newuserdatauv(L, p->n + 1, 0); /* 4: which ones a rule keeps */
    memset(kept, 0, p->n + 1);
    for (size_t i = 0; i < p->n && (lua_Integer)i < keep[0]; i++) kept[i] = 1;
    for (int r = 1; r < 5; r++) {
        char last[32] = "", key[32];
        lua_Integer count = 0;
        for (size_t i = 0; i < p->n && count < keep[r]; i++) {
            struct tm tm;
            localtime_r(&p->snaps[i].t, &tm);
            strftime(key, sizeof key, buckets[r], &tm);
            if (strcmp(key, last) == 0) continue; /* an older one of a bucket already kept */
            snprintf(last, sizeof last, "%s", key);
            kept[i] = 1;
            count++;
        }
    }
    lua_createtable(L, 0, 3); /* 5: the result */
    lua_newtable(L);
    lua_setfield(L, 5, "kept");
    lua_newtable(L);
    lua_setfield(L, 5, "deleted");
    lua_newtable(L);
    lua_setfield(L, 5, "protected");
    for (size_t i = 0; i < p->n; i++) {
        const char *list = "kept";
        snprintf(path, sizeof path, "%s/%s", dir, p->snaps[i].name);
        if (!kept[i]) list = protected_path(L, path) ? "protected" : "deleted";
        lua_getfield(L, 5, list);
        lua_pushstring(L, p->snaps[i].name);
        lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
        lua_pop(L, 1);
    }
    lua_pushvalue(L, 5);
    return 1;
}

/*
** btrfs.prune(dir, {keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly,
**   pattern, asides_of}) → {kept = {names}, deleted = {names}, protected = {names}}
**   | nil, message, code
** The subvolumes directly in dir (whose names match the glob `pattern`; with asides_of =
** NAME, the copies btrfs.restore set aside of dir/NAME: NAME.hrun-*), newest first
** by the time in their name (else their creation time): keep_last keeps the N newest;
** keep_hourly / daily / weekly / monthly keep the newest of each of the N latest hours,
** days, ISO weeks, months that have one. What no rule keeps is deleted — unless an
** unfinished hrun run references it in its journal.
*/
static int btrfs_prune(lua_State *L)
{
    const char *dir = hrun_checkpath(L, 1, NULL);
    if (prune_select(L) != 1) return 3;
    int res = lua_gettop(L);
    lua_getfield(L, res, "deleted");
    char path[PATH_MAX];
    for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, -1); i++) {
        lua_rawgeti(L, -1, i);
        snprintf(path, sizeof path, "%s/%s", dir, lua_tostring(L, -1));
        lua_pop(L, 1);
        errno = 0;
        enum btrfs_util_error e = btrfs_util_delete_subvolume(path, 0);
        if (e) return fail(L, "btrfs.prune", path, e);
    }
    lua_settop(L, res);
    return 1;
}

/* The plan of a prune: each snapshot newest first, what the prune's own rules do with it
** ("- delete", "  keep"), and the lists it would return. A prune that would fail says so
** (error, code): the plan's stand-in returns that failure. */
static int btrfs_prune_preview(lua_State *L)
{
    const char *dir = hrun_checkpath(L, 1, NULL);
    int n = prune_select(L);
    int res = lua_gettop(L) - n + 1;
    if (n != 1) {
        lua_createtable(L, 0, 3);
        lua_pushvalue(L, res + 1);
        lua_setfield(L, -2, "error");
        lua_pushvalue(L, res + 2);
        lua_setfield(L, -2, "code");
        lua_createtable(L, 1, 0);
        lua_pushfstring(L, "the prune fails: %s", lua_tostring(L, res + 1));
        lua_rawseti(L, -2, 1);
        lua_setfield(L, -2, "lines");
        return 1;
    }
    lua_newtable(L);
    int lines = lua_gettop(L);
    lua_getfield(L, res, "kept");
    lua_getfield(L, res, "deleted");
    lua_getfield(L, res, "protected");
    lua_Integer counts[3];
    for (int k = 0; k < 3; k++) counts[k] = (lua_Integer)lua_rawlen(L, lines + 1 + k);
    lua_pushfstring(L, "in %s: deletes %I, keeps %I", dir, counts[1], counts[0] + counts[2]);
    if (counts[2] > 0)
        lua_pushfstring(L, "%s (%I that an unfinished run references)", lua_tostring(L, -1),
                        counts[2]);
    lua_rawseti(L, lines, 1);
    lua_settop(L, lines + 3);
    static const char *const marks[] = {"  keep   %s", "- delete %s",
                                        "  keep   %s (an unfinished run references it)"};
    static const int order[] = {1, 0, 2}; /* what goes first: what it deletes */
    for (int o = 0; o < 3; o++) {
        int k = order[o];
        for (lua_Integer i = 1; i <= counts[k]; i++) {
            lua_rawgeti(L, lines + 1 + k, i);
            lua_pushfstring(L, marks[k], lua_tostring(L, -1));
            lua_rawseti(L, lines, (lua_Integer)lua_rawlen(L, lines) + 1);
            lua_pop(L, 1);
        }
    }
    lua_settop(L, lines);
    lua_setfield(L, res, "lines");
    lua_pushboolean(L, 1);
    lua_setfield(L, res, "planned");
    lua_settop(L, res);
    return 1;
}

/* }====================================================== */

/* {======================================================
** Scrub: the one CLI call (libbtrfsutil has no scrub)
** ======================================================= */

/* {======================================================
** receive: btrfs send | btrfs receive, from here or another host (transfer.c)
** ======================================================= */

/* [-0, +1, m] The subvolume a receive of snap into dir makes: dir/<snap's name>. */
static const char *receive_target(lua_State *L, const char *snap, const char *dir)
{
    size_t n = strlen(snap);
    while (n > 1 && snap[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && snap[b - 1] != '/') b--;
    size_t d = strlen(dir);
    while (d > 1 && dir[d - 1] == '/') d--;
    lua_pushlstring(L, dir, d);
    lua_pushliteral(L, "/");
    lua_pushlstring(L, snap + b, n - b);
    lua_concat(L, 3);
    return lua_tostring(L, -1);
}

static int btrfs_receive_inverse(lua_State *L)
{
    const char *target = receive_target(L, luaL_checkstring(L, 1), luaL_checkstring(L, 2));
    char abs[PATH_MAX];
    if (hrun_abspath(target, abs, sizeof abs) < 0)
        return hrun_fail(L, "btrfs.receive", target, errno);
    lua_newtable(L);
    lua_pushstring(L, abs);
    hrun_addop(L, lua_gettop(L) - 1, "btrfs.delete", 1);
    return 1;
}

static int btrfs_receive_state(lua_State *L)
{
    const char *target = receive_target(L, luaL_checkstring(L, 1), luaL_checkstring(L, 2));
    lua_newtable(L);
    hrun_addabs(L, lua_gettop(L), "subvolume", target);
    return 1;
}

static const char *const receive_options[] = {"from", "parent", NULL};

/*
** btrfs.receive(snapshot, dir [, {from, parent}]) → info of dir/NAME | nil, message, code
** Receives the read-only snapshot (on host `from`, or here) into the directory dir on
** btrfs, as `btrfs send [-p parent] snapshot | btrfs receive dir` do: the new subvolume
** dir/NAME (NAME: the snapshot's), read-only, its received_uuid the snapshot's uuid.
** parent: a snapshot sent before (on the same side), whose copy dir holds: only the
** difference goes. What a failed receive leaves is deleted. Its inverse deletes dir/NAME.
*/
static int btrfs_receive(lua_State *L)
{
    const char *snap = hrun_checkpath(L, 1, NULL);
    const char *dir = hrun_checkpath(L, 2, NULL);
    hrun_checkopts(L, 3, receive_options);
    lua_settop(L, 3);
    const char *parent = NULL;
    int remote = hrun_copy_remote(L);
    if (lua_istable(L, 3)) {
        if (lua_getfield(L, 3, "parent") != LUA_TNIL && (parent = lua_tostring(L, -1)) == NULL)
            return luaL_error(L, "btrfs.receive: parent must be the path of a snapshot");
        lua_settop(L, 3); /* parent is anchored in the options */
    }
    struct stat st;
    struct statfs sf;
    if (remote && (snap[0] != '/' || (parent && parent[0] != '/')))
        return hrun_failf(
            L, "EINVAL",
            "btrfs.receive: %s: a snapshot on another host is named by its absolute path",
            snap[0] != '/' ? snap : parent);
    if (!remote) {
        bool ro = false;
        enum btrfs_util_error e = btrfs_util_get_subvolume_read_only(snap, &ro);
        if (e) return fail(L, "btrfs.receive", snap, e);
        if (!ro)
            return hrun_failf(L, "EROFS",
                              "btrfs.receive: %s: not a read-only snapshot (btrfs send needs one)",
                              snap);
    }
    if (stat(dir, &st) < 0) return hrun_fail(L, "btrfs.receive", dir, errno);
    if (!S_ISDIR(st.st_mode)) return hrun_fail(L, "btrfs.receive", dir, ENOTDIR);
    if (statfs(dir, &sf) < 0) return hrun_fail(L, "btrfs.receive", dir, errno);
    if (sf.f_type != BTRFS_MAGIC) return fail(L, "btrfs.receive", dir, BTRFS_UTIL_ERROR_NOT_BTRFS);
    const char *target = receive_target(L, snap, dir); /* 4 */
    if (lstat(target, &st) == 0) return hrun_fail(L, "btrfs.receive", target, EEXIST);
    const char *sock = hrun_transport(L, "btrfs.receive"); /* 5, 6 */
    const char *exe = hrun_self_exe(L);
    char *argv[16];
    int n = 0;
    argv[n++] = (char *)exe, argv[n++] = "__relay";
    if (sock) {
        argv[n++] = "feed", argv[n++] = (char *)sock, argv[n++] = "--";
    } else {
        argv[n++] = "pipe", argv[n++] = "--", argv[n++] = "btrfs", argv[n++] = "send",
        argv[n++] = "-q";
        if (parent) argv[n++] = "-p", argv[n++] = (char *)parent;
        argv[n++] = (char *)snap, argv[n++] = "--";
    }
    argv[n++] = "btrfs", argv[n++] = "receive", argv[n++] = (char *)dir, argv[n] = NULL;
    int err;
    hrun_Capture *c = hrun_capture(L, argv, &err);
    if (err) return hrun_failf(L, hrun_errname(err), "btrfs.receive: %s: %s", exe, strerror(err));
    if (hrun_capture_code(c) != 0) {
        bool ro = false;
        /* a receive cut short leaves a writable subvolume: not a copy of anything */
        if (lstat(target, &st) == 0 &&
            btrfs_util_get_subvolume_read_only(target, &ro) == BTRFS_UTIL_OK && !ro)
            btrfs_util_delete_subvolume(target, 0);
        hrun_capture_tail(L, c);
        hrun_transport_said(L, 6);
        lua_concat(L, 2);
        return hrun_failf(L, "ERECEIVE", "btrfs.receive: %s → %s: %s", snap, dir,
                          lua_tostring(L, -1));
    }
    /* committed: on disk before it is journaled done, and its root item (what its state
    ** reads) final — the received uuid and read-only flag land at the commit */
    enum btrfs_util_error e = btrfs_util_sync(dir);
    if (e) return fail(L, "btrfs.receive", dir, e);
    lua_pushcfunction(L, btrfs_info);
    lua_pushvalue(L, 4);
    lua_call(L, 1, 3);
    return 3;
}

/* }====================================================== */

/* The integer after `key` in the scrub's output, or 0. */
static lua_Integer field_after(const char *out, const char *key)
{
    const char *p = strstr(out, key);
    return p ? strtoll(p + strlen(key), NULL, 10) : 0;
}

/*
** btrfs.scrub(path) → {ok, corrected, uncorrectable, unverified, errors = {csum = N,
**   …}, status, output} | nil, message, code
** Runs `btrfs scrub start -B` and reads its summary: ok only when nothing is
** uncorrectable (its exit code 0 also means "errors found, all repaired").
*/
static int btrfs_scrub(lua_State *L)
{
    const char *path = hrun_checkpath(L, 1, NULL);
    lua_settop(L, 1);
    struct statfs sf;
    if (statfs(path, &sf) < 0) return hrun_fail(L, "btrfs.scrub", path, errno);
    if (sf.f_type != BTRFS_MAGIC) return fail(L, "btrfs.scrub", path, BTRFS_UTIL_ERROR_NOT_BTRFS);
    char *argv[] = {"btrfs", "scrub", "start", "-B", (char *)path, NULL};
    int err;
    hrun_Capture *c = hrun_capture(L, argv, &err); /* 2 */
    if (err) return hrun_failf(L, hrun_errname(err), "btrfs.scrub: btrfs: %s", strerror(err));
    lua_pushlstring(L, c->all, c->all_len); /* 3 */
    const char *out = lua_tostring(L, 3);
    int code = hrun_capture_code(c);
    const char *summary = strstr(out, "Error summary:");
    if (summary == NULL) {
        /* no summary: the scrub did not run (not btrfs, no such path, …) */
        size_t len = c->all_len;
        while (len > 0 && out[len - 1] == '\n') len--;
        lua_pushlstring(L, out, len);
        return hrun_failf(L, "ESCRUB", "btrfs.scrub: %s: %s", path,
                          len ? lua_tostring(L, -1) : "btrfs scrub failed");
    }
    lua_Integer corrected = field_after(summary, "Corrected:");
    lua_Integer uncorrectable = field_after(summary, "Uncorrectable:");
    lua_Integer unverified = field_after(summary, "Unverified:");
    lua_createtable(L, 0, 8);
    lua_pushboolean(L, uncorrectable == 0 && code == 0);
    lua_setfield(L, -2, "ok");
    lua_pushinteger(L, corrected);
    lua_setfield(L, -2, "corrected");
    lua_pushinteger(L, uncorrectable);
    lua_setfield(L, -2, "uncorrectable");
    lua_pushinteger(L, unverified);
    lua_setfield(L, -2, "unverified");
    /* "Error summary:    csum=4 verify=1" or "no errors found" */
    lua_newtable(L);
    const char *eol = strchr(summary, '\n');
    for (const char *q = summary + 14; q && *q && (!eol || q < eol);) {
        char key[32];
        long long n;
        int used;
        if (sscanf(q, " %31[a-z_]=%lld%n", key, &n, &used) == 2) {
            lua_pushinteger(L, n);
            lua_setfield(L, -2, key);
            q += used;
        } else {
            q = strchr(q + 1, ' ');
        }
    }
    lua_setfield(L, -2, "errors");
    const char *status = strstr(out, "Status:");
    if (status) {
        status += 7;
        while (*status == ' ') status++;
        lua_pushlstring(L, status, strcspn(status, "\n"));
        lua_setfield(L, -2, "status");
    }
    lua_pushvalue(L, 3);
    lua_setfield(L, -2, "output");
    lua_pushnumber(L, c->proc.seconds);
    lua_setfield(L, -2, "seconds");
    return 1;
}

/* a scrub repairs what it can and changes nothing else: nothing to undo */
static int nothing_to_undo(lua_State *L)
{
    lua_newtable(L);
    return 1;
}

/* }====================================================== */

static const hrun_Prim btrfs_prims[] = {
    {.name = "is_subvolume",
     .func = btrfs_is_subvolume,
     .kind = HRUN_READ,
     .cap = "btrfs",
     .targets = hrun_targets_arg1},
    {.name = "info",
     .func = btrfs_info,
     .kind = HRUN_READ,
     .cap = "btrfs",
     .targets = hrun_targets_arg1},
    {.name = "list",
     .func = btrfs_list,
     .kind = HRUN_READ,
     .cap = "btrfs",
     .targets = hrun_targets_arg1},
    {.name = "sync",
     .func = btrfs_sync,
     .kind = HRUN_READ,
     .cap = "btrfs",
     .targets = hrun_targets_arg1},
    {.name = "create",
     .func = btrfs_create,
     .kind = HRUN_WRITE,
     .cap = "btrfs",
     .inverse = btrfs_create_inverse,
     .unchanged = btrfs_create_unchanged,
     .state = btrfs_path_state,
     .targets = hrun_targets_arg1},
    {.name = "snapshot",
     .func = btrfs_snapshot,
     .kind = HRUN_WRITE,
     .opts = 3,
     .cap = "btrfs",
     .inverse = btrfs_snapshot_inverse,
     .state = btrfs_snapshot_state,
     .targets = hrun_targets_args12},
    {.name = "delete",
     .func = btrfs_delete,
     .kind = HRUN_WRITE,
     .opts = 2,
     .cap = "btrfs",
     .destroys = 1,
     .targets = hrun_targets_arg1},
    {.name = "set_readonly",
     .func = btrfs_set_readonly,
     .kind = HRUN_WRITE,
     .cap = "btrfs",
     .inverse = btrfs_set_readonly_inverse,
     .unchanged = btrfs_set_readonly_unchanged,
     .state = btrfs_path_state,
     .targets = hrun_targets_arg1},
    {.name = "restore",
     .func = btrfs_restore,
     .kind = HRUN_WRITE,
     .cap = "btrfs",
     .inverse = btrfs_restore_inverse,
     .state = btrfs_restore_state,
     .preview = btrfs_restore_preview,
     .targets = hrun_targets_args12},
    {.name = "prune",
     .func = btrfs_prune,
     .kind = HRUN_WRITE,
     .opts = 2,
     .cap = "btrfs",
     .destroys = 1,
     .preview = btrfs_prune_preview,
     .targets = hrun_targets_arg1},
    {.name = "receive",
     .func = btrfs_receive,
     .kind = HRUN_WRITE,
     .opts = 3,
     .cap = "btrfs",
     .inverse = btrfs_receive_inverse,
     .state = btrfs_receive_state,
     .targets = hrun_copy_targets},
    {.name = "scrub",
     .func = btrfs_scrub,
     .kind = HRUN_WRITE,
     .cap = "btrfs",
     .inverse = nothing_to_undo,
     .targets = hrun_targets_arg1},
    {0},
};

int luaopen_hrun_btrfs(lua_State *L)
{
    hrun_newmodule(L, "btrfs", btrfs_prims);
    return 1;
}
