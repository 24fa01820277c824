/*
** undo.c — what the engine needs to undo writes carefully.
**
** Before an inverse runs, the runner compares the state of what the effect changed now
** with the state before the effect and after it: equal to before, it is already undone;
** different from both, someone changed it since, and the inverse must not overwrite
** that. A primitive's `state` function (its hrun_Prim entry) says what one call changes:
** {kind, target, key} entries. Here each kind's fingerprint is computed from its key —
** now, or again later from the journal (restate) — and the temporaries a primitive makes
** are named from the run and the effect, so that after a SIGKILL at any instant the
** leftovers of that effect can be found and removed.
*/
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <xxhash.h>

#include "internal.h"

/* The fingerprint of each kind of state, from its key: [-0, +1, m] key at 1, pushes a
** string; a failure of the world is a fingerprint too ("unreadable: why"). */
static const struct {
    const char *kind;
    lua_CFunction fp;
} kinds[] = {
    /* clang-format off */
    {"path", hrun_path_fp},
    {"subvolume", hrun_subvolume_fp},
    {"profile", hrun_profile_fp},
#ifndef HRUN_PORTABLE /* git's, service's, podman's: not in the portable build */
    {"ref", hrun_ref_fp},
    {"repo", hrun_repo_fp},
    {"unit", hrun_unit_fp},
    {"container", hrun_container_fp},
#endif
    /* clang-format on */
};

/* {======================================================
** Temporaries named from the run and the effect
** ======================================================= */

/* At most this much of a target's name goes into its temporary's: a name of 255 bytes
** must still have one within NAME_MAX. */
#define TMP_BASE 200

int hrun_tmpname(lua_State *L, const char *target, char *out, size_t size)
{
    hrun_Runtime *rt = hrun_runtime(L);
    const char *slash = strrchr(target, '/');
    const char *base = slash ? slash + 1 : target;
    int dirlen = slash == NULL ? 1 : slash == target ? 0 : (int)(slash - target);
    const char *dir = slash ? target : ".";
    int n;
    if (rt->effect_id)
        n = snprintf(out, size, "%.*s/.%.*s.hrun-%lld-%lld-XXXXXX", dirlen, dir, TMP_BASE, base,
                     (long long)rt->effect_run, (long long)rt->effect_id);
    else
        n = snprintf(out, size, "%.*s/.%.*s.hrun-XXXXXX", dirlen, dir, TMP_BASE, base);
    if (n < 0 || (size_t)n >= size) {
        if (size) out[0] = '\0';
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

/* seteffect(run, effect) | seteffect(nil): while set, temporaries are named
** .BASENAME.hrun-<run>-<effect>-XXXXXX (effect < 0: an undo function's attempt) */
static int priv_seteffect(lua_State *L)
{
    hrun_Runtime *rt = hrun_runtime(L);
    if (lua_isnoneornil(L, 1)) {
        rt->effect_run = rt->effect_id = 0;
        return 0;
    }
    lua_Integer run = luaL_checkinteger(L, 1), effect = luaL_checkinteger(L, 2);
    luaL_argcheck(L, run > 0, 1, "a run id expected");
    /* an undo function's attempt has no effect of its own: minus the attempt's id */
    luaL_argcheck(L, effect != 0, 2, "an effect id (or minus an undo attempt's) expected");
    rt->effect_run = run, rt->effect_id = effect;
    return 0;
}

/* }====================================================== */

/* {======================================================
** Paths: absolute, and their fingerprints
** ======================================================= */

int hrun_abspath(const char *path, char *out, size_t size)
{
    char buf[PATH_MAX * 2];
    if (path[0] == '/') {
        if (strlen(path) >= sizeof buf) return errno = ENAMETOOLONG, -1;
        strcpy(buf, path);
    } else {
        char cwd[PATH_MAX];
        if (getcwd(cwd, sizeof cwd) == NULL) return -1;
        if ((size_t)snprintf(buf, sizeof buf, "%s/%s", cwd, path) >= sizeof buf)
            return errno = ENAMETOOLONG, -1;
    }
    /* lexically: "." and "//" dropped, ".." takes the previous component off (the last
    ** component is never resolved: a symlink is the link, as the primitives see it) */
    size_t n = 0;
    for (const char *p = buf; *p;) {
        while (*p == '/') p++;
        const char *end = p + strcspn(p, "/");
        size_t len = (size_t)(end - p);
        if (len == 0 || (len == 1 && p[0] == '.')) {
        } else if (len == 2 && p[0] == '.' && p[1] == '.') {
            while (n > 0 && out[n - 1] != '/') n--;
            if (n > 0) n--;
        } else {
            if (n + 1 + len >= size) return errno = ENAMETOOLONG, -1;
            out[n++] = '/';
            memcpy(out + n, p, len);
            n += len;
        }
        p = end;
    }
    if (n == 0) out[n++] = '/';
    out[n] = '\0';
    return 0;
}

void hrun_addstate(lua_State *L, int list, const char *kind, const char *target)
{
    lua_createtable(L, 0, 3);
    lua_pushstring(L, kind);
    lua_setfield(L, -2, "kind");
    lua_pushstring(L, target);
    lua_setfield(L, -2, "target");
    lua_rotate(L, -2, 1); /* the key above the entry */
    lua_setfield(L, -2, "key");
    lua_rawseti(L, list, (lua_Integer)lua_rawlen(L, list) + 1);
}

void hrun_addabs(lua_State *L, int list, const char *kind, const char *path)
{
    char abs[PATH_MAX];
    if (hrun_abspath(path, abs, sizeof abs) < 0) snprintf(abs, sizeof abs, "%s", path);
    lua_pushstring(L, abs);
    hrun_addstate(L, list, kind, abs);
}

void hrun_addpath(lua_State *L, int list, const char *path)
{
    hrun_addabs(L, list, "path", path);
}

/* "root:root", or the numbers where the names are unknown. */
static void owner_text(uid_t uid, gid_t gid, char *out, size_t size)
{
    char buf[4096], u[64], g[64];
    struct passwd pw, *pwp = NULL;
    struct group gr, *grp = NULL;
    if (getpwuid_r(uid, &pw, buf, sizeof buf, &pwp) == 0 && pwp)
        snprintf(u, sizeof u, "%s", pw.pw_name);
    else
        snprintf(u, sizeof u, "%u", (unsigned)uid);
    if (getgrgid_r(gid, &gr, buf, sizeof buf, &grp) == 0 && grp)
        snprintf(g, sizeof g, "%s", gr.gr_name);
    else
        snprintf(g, sizeof g, "%u", (unsigned)gid);
    snprintf(out, size, "%s:%s", u, g);
}

static void hex128(XXH128_hash_t h, char out[33])
{
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, h);
    for (int i = 0; i < 16; i++) snprintf(out + 2 * i, 3, "%02x", c.digest[i]);
}

/* The xxh128 of the regular file fd's bytes into hex; 0, or -1 with errno. */
static int hash_fd(int fd, char hex[33])
{
    XXH3_state_t *s = XXH3_createState();
    if (s == NULL) return errno = ENOMEM, -1;
    XXH3_128bits_reset(s);
    char buf[1 << 16];
    int rc = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            rc = -1;
            break;
        }
        if (n == 0) break;
        XXH3_128bits_update(s, buf, (size_t)n);
    }
    if (rc == 0) hex128(XXH3_128bits_digest(s), hex);
    int err = errno;
    XXH3_freeState(s);
    errno = err;
    return rc;
}

/* A directory's signature: one walk, no contents read. */
typedef struct Sig {
    XXH3_state_t *s;
    long long entries;
    char path[PATH_MAX * 2]; /* relative to the top */
    size_t len;
} Sig;

static void sig_add(Sig *g, const char *line)
{
    XXH3_128bits_update(g->s, g->path, g->len + 1); /* with its NUL */
    XXH3_128bits_update(g->s, line, strlen(line) + 1);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
** Adds the entries under the directory fd (its own device dev) to g, sorted by name so
** a copy of the tree signs the same: each entry's relative path, type, mode, owner; a
** file's size and mtime_ns (restores keep times), a link's target. Directory mtimes are
** left out: they change when entries come and go, and undoing a later effect inside
** brings the entries back, not the mtime. Never enters another filesystem or follows
** a symlink; what cannot be read is signed as such.
*/
static void sig_dir(Sig *g, int fd, dev_t dev)
{
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        close(fd);
        sig_add(g, "unreadable");
        return;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        if (n == cap) {
            char **grown = realloc(names, (cap = cap ? cap * 2 : 32) * sizeof *names);
            if (grown == NULL) break;
            names = grown;
        }
        if ((names[n] = strdup(de->d_name)) == NULL) break;
        n++;
    }
    if (n) qsort(names, n, sizeof *names, by_name);
    size_t len = g->len;
    for (size_t i = 0; i < n; i++) {
        size_t nl = strlen(names[i]);
        if (len + 1 + nl >= sizeof g->path) {
            free(names[i]);
            continue;
        }
        g->path[len] = '/';
        memcpy(g->path + len + 1, names[i], nl + 1);
        g->len = len + 1 + nl;
        g->entries++;
        struct stat st;
        char line[PATH_MAX + 128];
        if (fstatat(dirfd(d), names[i], &st, AT_SYMLINK_NOFOLLOW) < 0) {
            snprintf(line, sizeof line, "unreadable %d", errno);
            sig_add(g, line);
        } else {
            int k =
                snprintf(line, sizeof line, "%s %o %u:%u", hrun_typename(st.st_mode),
                         (unsigned)(st.st_mode & 07777), (unsigned)st.st_uid, (unsigned)st.st_gid);
            if (S_ISREG(st.st_mode))
                snprintf(line + k, sizeof line - (size_t)k, " %lld %lld", (long long)st.st_size,
                         (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec);
            else if (S_ISLNK(st.st_mode)) {
                char target[PATH_MAX];
                ssize_t tl = readlinkat(dirfd(d), names[i], target, sizeof target - 1);
                target[tl < 0 ? 0 : tl] = '\0';
                snprintf(line + k, sizeof line - (size_t)k, " -> %s", target);
            } else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode))
                snprintf(line + k, sizeof line - (size_t)k, " %u:%u", major(st.st_rdev),
                         minor(st.st_rdev));
            else if (S_ISDIR(st.st_mode) && st.st_dev != dev)
                snprintf(line + k, sizeof line - (size_t)k, " another filesystem");
            sig_add(g, line);
            if (S_ISDIR(st.st_mode) && st.st_dev == dev) {
                int sub =
                    openat(dirfd(d), names[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (sub < 0)
                    sig_add(g, "unreadable");
                else
                    sig_dir(g, sub, dev);
            }
        }
        free(names[i]);
    }
    g->len = len;
    g->path[len] = '\0';
    free(names);
    closedir(d);
}

/* Files up to this size are fingerprinted by their bytes. */
#define FP_READ_MAX (64 << 20)

/*
** The fingerprint of path (never followed) into out: "absent"; "file 0644 root:root 12
** bytes xxh128 9f…" (over 64 MiB: "… bytes mtime SECONDS.NS"); "link -> target";
** "dir 0755 root:root, 3 entries, tree xxh128 …";
** "fifo 0644 root:root"; or "unreadable: why".
*/
static void path_fp(const char *path, char *out, size_t size)
{
    struct stat st;
    char owner[160], hex[33];
    if (lstat(path, &st) < 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            snprintf(out, size, "absent");
        else
            snprintf(out, size, "unreadable: %s", strerror(errno));
        return;
    }
    owner_text(st.st_uid, st.st_gid, owner, sizeof owner);
    unsigned mode = (unsigned)(st.st_mode & 07777);
    if (S_ISLNK(st.st_mode)) {
        char target[PATH_MAX];
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n < 0) {
            snprintf(out, size, "unreadable: %s", strerror(errno));
            return;
        }
        target[n] = '\0';
        snprintf(out, size, "link -> %s", target);
    } else if (S_ISREG(st.st_mode) && st.st_size > FP_READ_MAX) {
        /* a big file (an image, a dump) is known by its size and time, not read whole
        ** at each write: a restore from the stash keeps the time, an edit moves it */
        snprintf(out, size, "file %04o %s %lld bytes mtime %lld.%09ld", mode, owner,
                 (long long)st.st_size, (long long)st.st_mtim.tv_sec, (long)st.st_mtim.tv_nsec);
    } else if (S_ISREG(st.st_mode)) {
        int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 || hash_fd(fd, hex) < 0) {
            snprintf(out, size, "unreadable: %s", strerror(errno));
        } else {
            snprintf(out, size, "file %04o %s %lld bytes xxh128 %s", mode, owner,
                     (long long)st.st_size, hex);
        }
        if (fd >= 0) close(fd);
    } else if (S_ISDIR(st.st_mode)) {
        Sig *g = malloc(sizeof *g);
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (g == NULL || fd < 0 || (g->s = XXH3_createState()) == NULL) {
            int err = g == NULL || fd >= 0 ? ENOMEM : errno;
            if (fd >= 0) close(fd);
            free(g);
            snprintf(out, size, "unreadable: %s", strerror(err));
            return;
        }
        XXH3_128bits_reset(g->s);
        g->entries = 0, g->len = 0, g->path[0] = '\0';
        sig_dir(g, fd, st.st_dev);
        hex128(XXH3_128bits_digest(g->s), hex);
        snprintf(out, size, "dir %04o %s, %lld entr%s, tree xxh128 %s", mode, owner, g->entries,
                 g->entries == 1 ? "y" : "ies", hex);
        XXH3_freeState(g->s);
        free(g);
    } else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
        snprintf(out, size, "%s %04o %s %u:%u", hrun_typename(st.st_mode), mode, owner,
                 major(st.st_rdev), minor(st.st_rdev));
    } else {
        snprintf(out, size, "%s %04o %s", hrun_typename(st.st_mode), mode, owner);
    }
}

int hrun_path_fp(lua_State *L)
{
    char fp[PATH_MAX + 256];
    const char *path = lua_tostring(L, 1);
    if (path == NULL) return lua_pushliteral(L, "unreadable: no path in the key"), 1;
    path_fp(path, fp, sizeof fp);
    lua_pushstring(L, fp);
    return 1;
}

/* }====================================================== */

/* {======================================================
** state, restate
** ======================================================= */

/* [-0, +0, e] Gives each entry of the array at idx its fingerprint, from its kind. */
static void add_fingerprints(lua_State *L, int idx)
{
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    for (lua_Integer i = 1; i <= n; i++) {
        if (lua_rawgeti(L, idx, i) != LUA_TTABLE)
            luaL_error(L, "state entry %d: a table expected", (int)i);
        int e = lua_gettop(L);
        lua_getfield(L, e, "kind");
        const char *kind = lua_tostring(L, -1);
        lua_CFunction fp = NULL;
        for (size_t k = 0; kind && k < sizeof kinds / sizeof kinds[0]; k++)
            if (strcmp(kinds[k].kind, kind) == 0) fp = kinds[k].fp;
        if (fp == NULL) {
            lua_pushfstring(L, "unreadable: no kind '%s'", kind ? kind : "?");
        } else {
            lua_pushcfunction(L, fp);
            lua_getfield(L, e, "key");
            lua_call(L, 1, 1);
        }
        lua_setfield(L, e, "fp");
        lua_settop(L, e - 1);
    }
}

/*
** state(name, ...) → {{kind, target, key, fp}, …} | nil
** What the call of primitive name with those arguments changes, as it is now; nil when
** the primitive has no state function (exec.run: hrun cannot know). Raises for misuse
** only; the world's failures are fingerprints ("unreadable: …").
*/
static int priv_state(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    hrun_state(L, name, lua_gettop(L) - 1);
    if (lua_istable(L, -1)) add_fingerprints(L, lua_gettop(L));
    return 1;
}

/* restate(states) → a copy of states (from the journal) with each fp computed now */
static int priv_restate(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
    lua_createtable(L, (int)n, 0);
    for (lua_Integer i = 1; i <= n; i++) {
        if (lua_rawgeti(L, 1, i) != LUA_TTABLE)
            luaL_argerror(L, 1, lua_pushfstring(L, "entry %d: a table expected", (int)i));
        lua_newtable(L);
        lua_pushnil(L);
        while (lua_next(L, -3)) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_settable(L, -4);
        }
        lua_rawseti(L, 2, i);
        lua_pop(L, 1);
    }
    add_fingerprints(L, 2);
    return 1;
}

/* }====================================================== */

/* {======================================================
** Leftovers: what a killed effect leaves, found from its states and removed
** ======================================================= */

typedef struct Scan {
    DIR *d;
} Scan;

static int scan_close(lua_State *L)
{
    Scan *s = lua_touserdata(L, 1);
    if (s->d) closedir(s->d);
    s->d = NULL;
    return 0;
}

/* [-0, +0, e] Appends s to the array at idx. */
static void append(lua_State *L, int idx, const char *s)
{
    lua_pushstring(L, s);
    lua_rawseti(L, idx, (lua_Integer)lua_rawlen(L, idx) + 1);
}

/* [-0, +0, e] Removes the temporaries of effect (run, effect) beside path: every entry
** .BASENAME.hrun-<run>-<effect>-*, trees too (one filesystem, links not followed). */
static void remove_temporaries(lua_State *L, const char *path, lua_Integer run, lua_Integer effect,
                               int out)
{
    char dir[PATH_MAX], prefix[NAME_MAX + 64];
    const char *slash = strrchr(path, '/');
    if (slash == NULL) return; /* keys are absolute */
    snprintf(dir, sizeof dir, "%.*s", slash == path ? 1 : (int)(slash - path), path);
    snprintf(prefix, sizeof prefix, ".%.*s.hrun-%lld-%lld-", TMP_BASE, slash + 1, (long long)run,
             (long long)effect);
    size_t plen = strlen(prefix);
    int top = lua_gettop(L);
    Scan *s = lua_newuserdatauv(L, sizeof(Scan), 0);
    s->d = NULL;
    hrun_setclose(L, "hrun.undo.scan", scan_close, NULL);
    lua_toclose(L, -1);
    if ((s->d = opendir(dir)) == NULL) return lua_settop(L, top);
    lua_newtable(L);
    int found = lua_gettop(L);
    struct dirent *de;
    while ((de = readdir(s->d)) != NULL) {
        if (strncmp(de->d_name, prefix, plen) != 0) continue;
        lua_pushfstring(L, "%s/%s", strcmp(dir, "/") ? dir : "", de->d_name);
        lua_rawseti(L, found, (lua_Integer)lua_rawlen(L, found) + 1);
    }
    for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, found); i++) {
        lua_rawgeti(L, found, i);
        if (hrun_rmtree_onefs(lua_tostring(L, -1)) == 0) append(L, out, lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_settop(L, top);
}

/* File times come from the kernel's coarse clock (a tick behind), and some filesystems
** keep whole seconds: a lock made just after `started` may look a little older. */
#define MTIME_SLACK 1.0

/* [-0, +0, e] Removes the entry's lock files (field locks) made since started: what
** libgit2 leaves when killed holding them (index.lock, a ref's .lock). */
static void remove_locks(lua_State *L, int e, double started, int out)
{
    if (lua_getfield(L, e, "locks") != LUA_TTABLE) return (void)lua_pop(L, 1);
    int locks = lua_gettop(L);
    for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, locks); i++) {
        lua_rawgeti(L, locks, i);
        const char *lock = lua_tostring(L, -1);
        struct stat st;
        if (lock && lstat(lock, &st) == 0 && S_ISREG(st.st_mode) &&
            (double)st.st_mtim.tv_sec + st.st_mtim.tv_nsec / 1e9 >= started - MTIME_SLACK &&
            unlink(lock) == 0)
            append(L, out, lock);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* [-0, +0, e] Removes the entry's scratch files (field scratch: {{dir, prefix}, …}), the
** files in dir whose names start with prefix, made since started: what a library writes
** beside what it makes before it renames it into place (libgit2's objects). */
static void remove_scratch(lua_State *L, int e, double started, int out)
{
    if (lua_getfield(L, e, "scratch") != LUA_TTABLE) return (void)lua_pop(L, 1);
    int list = lua_gettop(L);
    for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, list); i++) {
        lua_rawgeti(L, list, i);
        lua_rawgeti(L, -1, 1);
        lua_rawgeti(L, -2, 2);
        const char *dir = lua_tostring(L, -2), *prefix = lua_tostring(L, -1);
        DIR *d = dir && prefix ? opendir(dir) : NULL;
        size_t plen = prefix ? strlen(prefix) : 0;
        struct dirent *de;
        while (d && (de = readdir(d)) != NULL) {
            char path[PATH_MAX];
            struct stat st;
            if (strncmp(de->d_name, prefix, plen) != 0 ||
                (size_t)snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= sizeof path)
                continue;
            if (lstat(path, &st) == 0 && S_ISREG(st.st_mode) &&
                (double)st.st_mtim.tv_sec + st.st_mtim.tv_nsec / 1e9 >= started - MTIME_SLACK &&
                unlink(path) == 0)
                append(L, out, path);
        }
        if (d) closedir(d);
        lua_pop(L, 3);
    }
    lua_pop(L, 1);
}

/* [-0, +0, e] An entry with aside_of = target is where the effect moves target to before
** putting something new there (btrfs.restore). Killed in between, target is missing and
** the aside holds it as it was before: it is moved back (target's fp before equals the
** aside's now), which leaves the effect undone. */
static void put_back(lua_State *L, int states, int e, int out)
{
    if (lua_getfield(L, e, "aside_of") != LUA_TSTRING) return (void)lua_pop(L, 1);
    const char *target = lua_tostring(L, -1);
    lua_getfield(L, e, "key");
    const char *aside = lua_tostring(L, -1);
    lua_getfield(L, e, "kind");
    const char *kind = lua_tostring(L, -1);
    struct stat st;
    int top = lua_gettop(L);
    if (aside == NULL || kind == NULL || lstat(target, &st) == 0 || errno != ENOENT ||
        lstat(aside, &st) < 0)
        return lua_settop(L, top - 3);
    /* target's fingerprint before the effect, from the same states */
    const char *before = NULL;
    for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, states) && !before; i++) {
        lua_rawgeti(L, states, i);
        if (lua_istable(L, -1) && lua_getfield(L, -1, "key") == LUA_TSTRING &&
            strcmp(lua_tostring(L, -1), target) == 0 && lua_getfield(L, -2, "fp") == LUA_TSTRING)
            before = lua_tostring(L, -1); /* kept on the stack until settop */
    }
    for (size_t k = 0; before && k < sizeof kinds / sizeof kinds[0]; k++) {
        if (strcmp(kinds[k].kind, kind) != 0) continue;
        lua_pushcfunction(L, kinds[k].fp);
        lua_pushstring(L, aside);
        lua_call(L, 1, 1);
        if (strcmp(lua_tostring(L, -1), before) == 0 && rename(aside, target) == 0)
            append(L, out, aside);
    }
    lua_settop(L, top - 3);
}

/*
** leftovers(run, effect, states, started) → {path, …}: what effect (run, effect) left
** when killed, removed: for each "path" entry the temporaries beside it named from the
** effect; for any entry its lock files (field locks) made since started (wall clock);
** an aside (field aside_of) moved back when its target is missing. Returns the paths
** removed (or moved back), possibly none.
*/
static int priv_leftovers(lua_State *L)
{
    lua_Integer run = luaL_checkinteger(L, 1), effect = luaL_checkinteger(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    double started = luaL_optnumber(L, 4, 0);
    lua_settop(L, 4);
    lua_newtable(L); /* 5 */
    for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, 3); i++) {
        if (lua_rawgeti(L, 3, i) != LUA_TTABLE) {
            lua_pop(L, 1);
            continue;
        }
        int e = lua_gettop(L);
        lua_getfield(L, e, "kind");
        lua_getfield(L, e, "key");
        if (lua_type(L, -2) == LUA_TSTRING && strcmp(lua_tostring(L, -2), "path") == 0 &&
            lua_type(L, -1) == LUA_TSTRING)
            remove_temporaries(L, lua_tostring(L, -1), run, effect, 5);
        lua_settop(L, e);
        remove_locks(L, e, started, 5);
        remove_scratch(L, e, started, 5);
        put_back(L, 3, e, 5);
        lua_settop(L, e - 1);
    }
    return 1;
}

/* }====================================================== */

void hrun_openundo(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"state", priv_state},
        {"restate", priv_restate},
        {"seteffect", priv_seteffect},
        {"leftovers", priv_leftovers},
        {NULL, NULL},
    };
    luaL_setfuncs(L, funcs, 0);
}
