/*
** mod_fs.c — the `fs` module: files and directories, paths as byte strings.
** Writes are atomic where the kernel allows it (a temporary file or directory beside
** the target, fsync, rename, fsync of the directory), so a crash leaves the old or the
** new, never half of each.
*/
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <linux/fs.h>

#include "internal.h"

#define TMP_TYPE "hrun.fs.tmp"

/* {======================================================
** What a call holds — a file descriptor, a directory stream, a glob, a temporary
** path — owned by a userdata box: released, and the temporary removed unless
** committed, on every way out (return, raise, interrupt).
** ======================================================= */

typedef struct Tmp {
    int fd;
    DIR *dir;
    glob_t glob;
    int globbed;   /* glob holds results to free */
    int isdir;     /* the temporary is a directory tree */
    int committed; /* renamed into place: keep it */
    char path[PATH_MAX];
} Tmp;

/* A path being walked, for messages: grows and shrinks as the walk goes down and up. */
typedef struct Walk {
    char path[PATH_MAX * 2];
    size_t len;
} Walk;

static int remove_at(int parent, const char *name, Walk *w, dev_t dev);

static void walk_start(Walk *w, const char *path)
{
    snprintf(w->path, sizeof w->path, "%s", path);
    w->len = strlen(w->path);
}

static int tmp_close(lua_State *L)
{
    Tmp *t = luaL_checkudata(L, 1, TMP_TYPE);
    if (t->fd >= 0) close(t->fd);
    t->fd = -1;
    if (t->dir) closedir(t->dir);
    t->dir = NULL;
    if (t->globbed) globfree(&t->glob);
    t->globbed = 0;
    if (t->path[0] && !t->committed) {
        if (t->isdir) {
            Walk w;
            walk_start(&w, t->path);
            remove_at(AT_FDCWD, t->path, &w, 0);
        } else
            unlink(t->path);
    }
    t->path[0] = '\0';
    return 0;
}

/* [-0, +1, m] A closed, empty box, marked to-be-closed on the stack. */
static Tmp *tmp_new(lua_State *L)
{
    Tmp *t = lua_newuserdatauv(L, sizeof(Tmp), 0);
    t->fd = -1;
    t->dir = NULL;
    t->globbed = t->isdir = t->committed = 0;
    t->path[0] = '\0';
    hrun_setclose(L, TMP_TYPE, tmp_close, NULL);
    lua_toclose(L, -1);
    return t;
}

/* }====================================================== */

/* The directory part of path into buf ("." for a bare name). */
static void dir_of(const char *path, char *buf, size_t size)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        snprintf(buf, size, ".");
    else if (slash == path)
        snprintf(buf, size, "/");
    else
        snprintf(buf, size, "%.*s", (int)(slash - path), path);
}

int hrun_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    int err = errno;
    close(fd);
    errno = err;
    return rc;
}

/* Creates a temporary beside `target` (a file, or a directory when isdir) in t, named
** from the effect being made (hrun_tmpname): a crash leaves nothing leftovers misses. */
static int make_tmp(lua_State *L, Tmp *t, const char *target, int isdir)
{
    if (hrun_tmpname(L, target, t->path, sizeof t->path) < 0) return -1;
    t->isdir = isdir;
    if (isdir) {
        if (mkdtemp(t->path) == NULL) return t->path[0] = '\0', -1;
    } else if ((t->fd = mkostemp(t->path, O_CLOEXEC)) < 0) {
        t->path[0] = '\0';
        return -1;
    }
    return 0;
}

/* Renames the temporary onto target and makes the rename durable. */
static int commit_tmp(Tmp *t, const char *target)
{
    char dir[PATH_MAX];
    if (t->fd >= 0 && (fsync(t->fd) < 0 || close(t->fd) < 0)) return t->fd = -1, -1;
    t->fd = -1;
    if (rename(t->path, target) < 0) return -1;
    t->committed = 1;
    dir_of(target, dir, sizeof dir);
    return hrun_fsync_dir(dir);
}

static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -1;
        data += n, len -= (size_t)n;
    }
    return 0;
}

/* A mode option: an integer, or a string of octal digits ("0644", "755"). */
static mode_t opt_mode(lua_State *L, int arg, mode_t def)
{
    if (lua_isnoneornil(L, arg)) return def;
    int t = lua_getfield(L, arg, "mode");
    lua_Integer m = -1;
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return def;
    } else if (t == LUA_TSTRING) {
        const char *s = lua_tostring(L, -1);
        char *end;
        m = strtol(s, &end, 8);
        if (*s == '\0' || *end != '\0') m = -1;
    } else if (lua_isinteger(L, -1)) {
        m = lua_tointeger(L, -1);
    }
    if (m < 0 || m > 07777)
        luaL_argerror(L, arg, "field 'mode': permission bits expected (0 to 07777, or \"0644\")");
    lua_pop(L, 1);
    return (mode_t)m;
}

static mode_t default_mode(mode_t base)
{
    mode_t mask = umask(0);
    umask(mask);
    return base & ~mask;
}

/* {======================================================
** Reads
** ======================================================= */

/* fs.read(path) → contents | nil, message, code */
static int fs_read(lua_State *L)
{
    const char *path = hrun_checkpath(L, 1, NULL);
    Tmp *t = tmp_new(L); /* only its fd: closed on any way out */
    struct stat st;
    if ((t->fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) return hrun_fail(L, "fs.read", path, errno);
    if (fstat(t->fd, &st) == 0 && S_ISDIR(st.st_mode)) return hrun_fail(L, "fs.read", path, EISDIR);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (;;) {
        size_t want =
            S_ISREG(st.st_mode) && (size_t)st.st_size > b.n ? (size_t)st.st_size - b.n : 0;
        if (want < LUAL_BUFFERSIZE) want = LUAL_BUFFERSIZE;
        char *p = luaL_prepbuffsize(&b, want);
        ssize_t n = read(t->fd, p, want);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return hrun_fail(L, "fs.read", path, errno);
        if (n == 0) break;
        luaL_addsize(&b, (size_t)n);
    }
    luaL_pushresult(&b);
    return 1;
}

/* fs.exists(path) → true | false | nil, message, code (when it cannot be known) */
static int fs_exists(lua_State *L)
{
    const char *path = hrun_checkpath(L, 1, NULL);
    struct stat st;
    if (stat(path, &st) == 0) return lua_pushboolean(L, 1), 1;
    if (errno == ENOENT || errno == ENOTDIR) return lua_pushboolean(L, 0), 1;
    return hrun_fail(L, "fs.exists", path, errno);
}

const char *hrun_typename(unsigned m)
{
    switch (m & S_IFMT) {
    case S_IFREG:
        return "file";
    case S_IFDIR:
        return "dir";
    case S_IFLNK:
        return "link";
    case S_IFIFO:
        return "fifo";
    case S_IFSOCK:
        return "socket";
    case S_IFCHR:
        return "char";
    case S_IFBLK:
        return "block";
    default:
        return "unknown";
    }
}

static void setint(lua_State *L, const char *k, lua_Integer v)
{
    lua_pushinteger(L, v);
    lua_setfield(L, -2, k);
}

static void settime(lua_State *L, const char *k, struct timespec ts)
{
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    lua_setfield(L, -2, k);
}

/*
** fs.stat(path [, {follow = true}]) → {type, size, mode, uid, gid, nlink, ino, dev,
**   atime, mtime, ctime, mtime_ns, target (links)} | nil, message, code
*/
/*
** fs.statfs(path) → {total, free, available, files, files_free, block_size} | nil, msg,
** code: the filesystem path is on, in bytes (available: what an unprivileged user may
** still write, as df shows it) and inodes.
*/
static int fs_statfs(lua_State *L)
{
    const char *path = hrun_checkpath(L, 1, NULL);
    struct statvfs v;
    if (statvfs(path, &v) < 0) return hrun_fail(L, "fs.statfs", path, errno);
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, (lua_Integer)((unsigned long long)v.f_blocks * v.f_frsize));
    lua_setfield(L, -2, "total");
    lua_pushinteger(L, (lua_Integer)((unsigned long long)v.f_bfree * v.f_frsize));
    lua_setfield(L, -2, "free");
    lua_pushinteger(L, (lua_Integer)((unsigned long long)v.f_bavail * v.f_frsize));
    lua_setfield(L, -2, "available");
    lua_pushinteger(L, (lua_Integer)v.f_files);
    lua_setfield(L, -2, "files");
    lua_pushinteger(L, (lua_Integer)v.f_ffree);
    lua_setfield(L, -2, "files_free");
    lua_pushinteger(L, (lua_Integer)v.f_frsize);
    lua_setfield(L, -2, "block_size");
    return 1;
}

static int fs_stat(lua_State *L)
{
    static const char *const opts[] = {"follow", NULL};
    const char *path = hrun_checkpath(L, 1, NULL);
    hrun_checkopts(L, 2, opts);
    int follow = hrun_optbool(L, 2, "follow", 1);
    struct stat st;
    if ((follow ? stat(path, &st) : lstat(path, &st)) < 0)
        return hrun_fail(L, "fs.stat", path, errno);
    lua_createtable(L, 0, 14);
    lua_pushstring(L, hrun_typename(st.st_mode));
    lua_setfield(L, -2, "type");
    setint(L, "size", (lua_Integer)st.st_size);
    setint(L, "mode", (lua_Integer)(st.st_mode & 07777));
    setint(L, "uid", (lua_Integer)st.st_uid);
    setint(L, "gid", (lua_Integer)st.st_gid);
    setint(L, "nlink", (lua_Integer)st.st_nlink);
    setint(L, "ino", (lua_Integer)st.st_ino);
    setint(L, "dev", (lua_Integer)st.st_dev);
    settime(L, "atime", st.st_atim);
    settime(L, "mtime", st.st_mtim);
    settime(L, "ctime", st.st_ctim);
    setint(L, "mtime_ns", (lua_Integer)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec);
    if (S_ISLNK(st.st_mode)) {
        char target[PATH_MAX];
        ssize_t n = readlink(path, target, sizeof target);
        if (n >= 0) {
            lua_pushlstring(L, target, (size_t)n);
            lua_setfield(L, -2, "target");
        }
    }
    return 1;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* fs.list(dir) → {name, …} sorted bytewise, without "." and ".." | nil, message, code */
static int fs_list(lua_State *L)
{
    const char *path = hrun_checkpath(L, 1, NULL);
    Tmp *t = tmp_new(L);
    if ((t->fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
        return hrun_fail(L, "fs.list", path, errno);
    if ((t->dir = fdopendir(t->fd)) == NULL) return hrun_fail(L, "fs.list", path, errno);
    t->fd = -1; /* the DIR owns it now */
    lua_newtable(L);
    lua_Integer n = 0;
    struct dirent *de;
    for (;;) {
        errno = 0;
        if ((de = readdir(t->dir)) == NULL) break;
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        lua_pushstring(L, de->d_name);
        lua_rawseti(L, -2, ++n);
    }
    if (errno) return hrun_fail(L, "fs.list", path, errno);
    /* sort bytewise: the names stay anchored in the unsorted table while sorting */
    const char **names = lua_newuserdatauv(L, sizeof(char *) * ((size_t)n + 1), 0);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -2, i);
        names[i - 1] = lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    qsort(names, (size_t)n, sizeof *names, compare_names);
    lua_createtable(L, (int)n, 0);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_pushstring(L, names[i - 1]);
        lua_rawseti(L, -2, i);
    }
    return 1;
}

static int glob_error(const char *path, int err)
{
    (void)path, (void)err;
    return 0; /* unreadable directories are skipped, as the shell does */
}

/* More alternatives than this in one pattern ({a,b}{c,d}… multiplies) is an error. */
#define GLOB_MAXALTS 4096

/* The end of the brace alternative starting at p: its ',' or the '}' closing the
** expression (nested braces skipped, backslash escapes), or NULL: not well formed. As
** glibc's GLOB_BRACE reads it. */
static const char *brace_next(const char *p)
{
    int depth = 0;
    for (; *p; p++) {
        if (*p == '\\' && p[1])
            p++;
        else if (*p == '{')
            depth++;
        else if (*p == '}' && depth-- == 0)
            return p;
        else if (*p == ',' && depth == 0)
            return p;
    }
    return NULL;
}

/* [-0, +0, m] Appends to the array at list the alternatives of pattern's braces (as
** GLOB_BRACE expands them: the first '{…}' that is well formed, each alternative then
** expanded again; a pattern whose brace is not well formed stays as it is). Returns
** how many the array holds, or -1 past GLOB_MAXALTS. */
static int brace_expand(lua_State *L, int list, const char *pattern)
{
    int n = (int)lua_rawlen(L, list);
    if (n >= GLOB_MAXALTS) return -1;
    const char *open = pattern;
    while (*open && *open != '{') open += *open == '\\' && open[1] ? 2 : 1;
    const char *next = *open ? brace_next(open + 1) : NULL, *rest = next;
    while (rest && *rest != '}') rest = brace_next(rest + 1);
    if (rest == NULL) { /* no brace, or not well formed: the pattern as it is */
        lua_pushstring(L, pattern);
        lua_rawseti(L, list, n + 1);
        return n + 1;
    }
    for (const char *p = open + 1;; p = next + 1, next = brace_next(p)) {
        lua_pushlstring(L, pattern, (size_t)(open - pattern));
        lua_pushlstring(L, p, (size_t)(next - p));
        lua_pushstring(L, rest + 1);
        lua_concat(L, 3);
        n = brace_expand(L, list, lua_tostring(L, -1));
        lua_pop(L, 1);
        if (n < 0) return -1;
        if (*next == '}') return n;
    }
}

/* Does the pattern have a ".." component after one with a wildcard? Where that lands is
** only known by walking: the sandbox refuses it rather than read outside the scope. */
static int dotdot_after_wildcard(const char *pattern)
{
    int wild = 0;
    for (const char *p = pattern; *p;) {
        size_t len = strcspn(p, "/");
        if (wild && len == 2 && p[0] == '.' && p[1] == '.') return 1;
        if (memchr(p, '*', len) || memchr(p, '?', len) || memchr(p, '[', len)) wild = 1;
        p += len;
        while (*p == '/') p++;
    }
    return 0;
}

/* fs.glob(pattern) → {path, …} (empty when nothing matches) | nil, message, code. Braces
** are expanded first ({a,b}), and each alternative's matches come sorted, in turn. In the
** sandbox, the directory each alternative starts from is checked before (its targets),
** and each match as found: one outside the scope (through a symlink, a "..") is refused,
** naming it; ".." after a wildcard is refused. */
static int fs_glob(lua_State *L)
{
    const char *pattern = hrun_checkpath(L, 1, NULL);
    lua_settop(L, 1);
    lua_newtable(L); /* 2: the alternatives */
    int nalts = brace_expand(L, 2, pattern);
    Tmp *t = tmp_new(L);
    if (nalts < 0)
        return hrun_failf(L, "E2BIG", "fs.glob: %s: more than %d alternatives", pattern,
                          GLOB_MAXALTS);
    hrun_Runtime *rt = hrun_runtime(L);
    int sandboxed = rt->sandbox && rt->trusted == 0;
    for (int i = 1; i <= nalts; i++) {
        lua_rawgeti(L, 2, i);
        const char *alt = lua_tostring(L, -1);
        if (sandboxed && dotdot_after_wildcard(alt))
            return luaL_error(L,
                              "sandbox: fs.glob: %s: '..' after a wildcard is refused in the "
                              "sandbox (where it lands is only known by walking)",
                              alt);
        int rc = glob(alt, t->globbed ? GLOB_APPEND : 0, glob_error, &t->glob);
        t->globbed = 1;
        lua_pop(L, 1);
        if (rc != 0 && rc != GLOB_NOMATCH)
            return hrun_failf(L, rc == GLOB_NOSPACE ? "ENOMEM" : "EIO", "fs.glob: %s: %s", pattern,
                              rc == GLOB_NOSPACE ? "out of memory" : "read error");
    }
    size_t n = t->globbed ? t->glob.gl_pathc : 0;
    for (size_t i = 0; i < n && sandboxed; i++) {
        hrun_Target m = {"fs", t->glob.gl_pathv[i], NULL, 0, 0};
        hrun_sandbox_require(L, "fs.glob", &m);
    }
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushstring(L, t->glob.gl_pathv[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

/* }====================================================== */

/* {======================================================
** Writes
** ======================================================= */

/*
** fs.write(path, data [, {mode}]) → path | nil, message, code
** Atomic: the new bytes go to a temporary beside the file, are fsynced and renamed over
** it; the directory is fsynced. An existing file keeps its mode and owner unless `mode`
** is given; a symlink is written through to its target.
*/
int hrun_fs_write(lua_State *L)
{
    static const char *const opts[] = {"mode", NULL};
    const char *path = hrun_checkpath(L, 1, NULL);
    size_t len;
    const char *data = hrun_tobytes(L, 2, &len); /* a string or a secret */
    if (data == NULL) luaL_typeerror(L, 2, "string or secret");
    hrun_checkopts(L, 3, opts);
    mode_t mode = opt_mode(L, 3, (mode_t)-1);
    lua_settop(L, 3);
    Tmp *t = tmp_new(L);
    char real[PATH_MAX];
    const char *target = path;
    struct stat st;
    int exists = lstat(path, &st) == 0;
    if (exists && S_ISLNK(st.st_mode)) {
        if (realpath(path, real) == NULL) return hrun_fail(L, "fs.write", path, errno);
        target = real;
        exists = stat(target, &st) == 0;
    }
    if (exists && S_ISDIR(st.st_mode)) return hrun_fail(L, "fs.write", path, EISDIR);
    if (mode == (mode_t)-1) mode = exists ? st.st_mode & 07777 : default_mode(0666);
    if (make_tmp(L, t, target, 0) < 0 || write_all(t->fd, data, len) < 0 ||
        fchmod(t->fd, mode) < 0 ||
        (exists && (st.st_uid != geteuid() || st.st_gid != getegid()) &&
         fchown(t->fd, st.st_uid, st.st_gid) < 0 && errno != EPERM) ||
        commit_tmp(t, target) < 0)
        return hrun_fail(L, "fs.write", path, errno);
    lua_pushvalue(L, 1);
    return 1;
}

static int mkdir_parents(char *path, mode_t mode)
{
    struct stat st;
    if (stat(path, &st) == 0) return S_ISDIR(st.st_mode) ? 0 : (errno = ENOTDIR, -1);
    char *slash = strrchr(path, '/');
    while (slash && slash > path && slash[-1] == '/') slash--;
    if (slash && slash != path) {
        *slash = '\0';
        int rc = mkdir_parents(path, mode | 0300); /* parents must stay traversable */
        *slash = '/';
        if (rc < 0) return -1;
    }
    if (mkdir(path, mode) < 0 && errno != EEXIST) return -1;
    return 0;
}

/* fs.mkdir(path [, {parents = false, mode = "0777" less umask}]) → path | nil, msg, code */
static int fs_mkdir(lua_State *L)
{
    static const char *const opts[] = {"parents", "mode", NULL};
    size_t len;
    const char *path = hrun_checkpath(L, 1, &len);
    hrun_checkopts(L, 2, opts);
    int parents = hrun_optbool(L, 2, "parents", 0);
    mode_t mode = opt_mode(L, 2, 0777);
    if (len >= PATH_MAX) return hrun_fail(L, "fs.mkdir", path, ENAMETOOLONG);
    char buf[PATH_MAX];
    memcpy(buf, path, len + 1);
    while (len > 1 && buf[len - 1] == '/') buf[--len] = '\0';
    if ((parents ? mkdir_parents(buf, mode) : mkdir(buf, mode)) < 0)
        return hrun_fail(L, "fs.mkdir", path, errno);
    lua_pushvalue(L, 1);
    return 1;
}

/* Appends "/name" to the walk's path; -1 (ENAMETOOLONG) when it does not fit. */
static int walk_down(Walk *w, const char *name)
{
    size_t n = strlen(name);
    if (w->len + 1 + n >= sizeof w->path) return errno = ENAMETOOLONG, -1;
    w->path[w->len] = '/';
    memcpy(w->path + w->len + 1, name, n + 1);
    w->len += 1 + n;
    return 0;
}

static void walk_up(Walk *w, size_t len)
{
    w->len = len;
    w->path[len] = '\0';
}

/*
** Removes name (relative to parent) and, if it is a directory, everything under it:
** never following a symlink, never crossing into another filesystem (a mount point or
** a btrfs subvolume) when dev is not 0. On failure returns -1 with errno, and w->path
** names what could not be removed.
*/
static int remove_at(int parent, const char *name, Walk *w, dev_t dev)
{
    struct stat st;
    if (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) < 0) return -1;
    if (!S_ISDIR(st.st_mode)) return unlinkat(parent, name, 0);
    if (dev && st.st_dev != dev) return errno = EXDEV, -1;
    int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -1;
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        int err = errno;
        close(fd);
        return errno = err, -1;
    }
    size_t len = w->len;
    int rc = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (de == NULL) {
            rc = errno ? -1 : 0;
            break;
        }
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        if ((rc = walk_down(w, de->d_name)) < 0) break;
        if ((rc = remove_at(dirfd(d), de->d_name, w, st.st_dev)) < 0) break;
        walk_up(w, len);
    }
    int err = errno;
    closedir(d);
    if (rc < 0) return errno = err, -1;
    return unlinkat(parent, name, AT_REMOVEDIR);
}

/* [-0, +3, m] The failure of a walk at w->path. */
static int walk_fail(lua_State *L, const char *what, const Walk *w, int err)
{
    if (err == EXDEV)
        return hrun_failf(L, "EXDEV",
                          "%s: %s: on another filesystem (a mount point or a "
                          "btrfs subvolume), not crossed",
                          what, w->path);
    return hrun_fail(L, what, w->path, err);
}

/* Is path (not a symlink) on another device than its parent directory? */
static int is_mountpoint(const char *path, const struct stat *st)
{
    char parent[PATH_MAX];
    struct stat pst;
    if ((size_t)snprintf(parent, sizeof parent, "%s/..", path) >= sizeof parent) return 0;
    return S_ISDIR(st->st_mode) && stat(parent, &pst) == 0 && pst.st_dev != st->st_dev;
}

/*
** fs.remove(path [, {recursive = false, force = false}]) → path | nil, message, code
** A directory needs `recursive` unless it is empty. `force`: a missing path is fine.
** Symlinks are removed, not followed; other filesystems under path are never entered.
*/
static int fs_remove(lua_State *L)
{
    static const char *const opts[] = {"recursive", "force", NULL};
    const char *path = hrun_checkpath(L, 1, NULL);
    hrun_checkopts(L, 2, opts);
    int recursive = hrun_optbool(L, 2, "recursive", 0);
    int force = hrun_optbool(L, 2, "force", 0);
    struct stat st;
    char real[PATH_MAX];
    if (lstat(path, &st) < 0) {
        if (force && errno == ENOENT) return lua_pushvalue(L, 1), 1;
        return hrun_fail(L, "fs.remove", path, errno);
    }
    if (S_ISDIR(st.st_mode) && realpath(path, real) && strcmp(real, "/") == 0)
        return hrun_failf(L, "EPERM", "fs.remove: %s: refusing to remove the root directory", path);
    if (is_mountpoint(path, &st)) {
        Walk w;
        walk_start(&w, path);
        return walk_fail(L, "fs.remove", &w, EXDEV);
    }
    if (!S_ISDIR(st.st_mode)) {
        if (unlink(path) < 0) return hrun_fail(L, "fs.remove", path, errno);
    } else if (!recursive) {
        if (rmdir(path) < 0) {
            if (errno == ENOTEMPTY || errno == EEXIST)
                return hrun_failf(L, "ENOTEMPTY",
                                  "fs.remove: %s: directory not empty (use recursive = true)",
                                  path);
            return hrun_fail(L, "fs.remove", path, errno);
        }
    } else {
        Walk w;
        walk_start(&w, path);
        if (remove_at(AT_FDCWD, path, &w, st.st_dev) < 0)
            return walk_fail(L, "fs.remove", &w, errno);
    }
    lua_pushvalue(L, 1);
    return 1;
}

/* {======================================================
** Copies
** ======================================================= */

enum { REFLINK_NEVER, REFLINK_AUTO, REFLINK_ALWAYS };

static int copy_data(int in, int out, int reflink)
{
    if (reflink != REFLINK_NEVER) {
        if (ioctl(out, FICLONE, in) == 0) return 0;
        if (reflink == REFLINK_ALWAYS) return -1;
    }
    int cfr = 1;
    for (;;) {
        ssize_t n;
        if (cfr) {
            n = copy_file_range(in, NULL, out, NULL, (size_t)1 << 30, 0);
            if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS ||
                          errno == EOPNOTSUPP || errno == EBADF)) {
                cfr = 0; /* not between these files: plain reads and writes */
                continue;
            }
        } else {
            char buf[1 << 16];
            n = read(in, buf, sizeof buf);
            if (n > 0 && write_all(out, buf, (size_t)n) < 0) return -1;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -1;
        if (n == 0) return 0;
    }
}

/* Gives fd (or, with fd < 0, name under dir) src's mode, owner and times. */
static int copy_meta(int fd, int dir, const char *name, const struct stat *src)
{
    struct timespec times[2] = {src->st_atim, src->st_mtim};
    int root = geteuid() == 0;
    if (fd >= 0) {
        if (root && fchown(fd, src->st_uid, src->st_gid) < 0) return -1;
        if (fchmod(fd, src->st_mode & 07777) < 0) return -1;
        return futimens(fd, times);
    }
    if (root && fchownat(dir, name, src->st_uid, src->st_gid, AT_SYMLINK_NOFOLLOW) < 0) return -1;
    if (!S_ISLNK(src->st_mode) && fchmodat(dir, name, src->st_mode & 07777, 0) < 0) return -1;
    return utimensat(dir, name, times, AT_SYMLINK_NOFOLLOW);
}

/* Copies what the walk is at (name under sdir) to dname under ddir, recursively. */
static int copy_at(int sdir, const char *name, int ddir, const char *dname, Walk *w, int reflink)
{
    struct stat st;
    int rc = -1, in = -1, out = -1, err;
    if (fstatat(sdir, name, &st, AT_SYMLINK_NOFOLLOW) < 0) return -1;
    switch (st.st_mode & S_IFMT) {
    case S_IFREG:
        if ((in = openat(sdir, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0) break;
        if ((out = openat(ddir, dname, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0) break;
        if (copy_data(in, out, reflink) < 0 || copy_meta(out, -1, NULL, &st) < 0) break;
        rc = 0;
        break;
    case S_IFLNK: {
        char target[PATH_MAX];
        ssize_t n = readlinkat(sdir, name, target, sizeof target - 1);
        if (n < 0) break;
        target[n] = '\0';
        if (symlinkat(target, ddir, dname) < 0 || copy_meta(-1, ddir, dname, &st) < 0) break;
        rc = 0;
        break;
    }
    case S_IFDIR: {
        if (mkdirat(ddir, dname, 0700) < 0) break;
        if ((in = openat(sdir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0) break;
        if ((out = openat(ddir, dname, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0) break;
        DIR *d = fdopendir(in);
        if (d == NULL) break;
        in = -1; /* d owns it */
        size_t len = w->len;
        for (rc = 0;;) {
            errno = 0;
            struct dirent *de = readdir(d);
            if (de == NULL) {
                rc = errno ? -1 : 0;
                break;
            }
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
            if ((rc = walk_down(w, de->d_name)) < 0) break;
            if ((rc = copy_at(dirfd(d), de->d_name, out, de->d_name, w, reflink)) < 0) break;
            walk_up(w, len);
        }
        err = errno;
        closedir(d);
        errno = err;
        /* times last: filling the directory changed its mtime */
        if (rc == 0) rc = copy_meta(out, -1, NULL, &st);
        break;
    }
    default:
        if (mknodat(ddir, dname, st.st_mode, st.st_rdev) < 0 || copy_meta(-1, ddir, dname, &st) < 0)
            break;
        rc = 0;
    }
    err = errno;
    if (in >= 0) close(in);
    if (out >= 0) close(out);
    errno = err;
    return rc;
}

/*
** fs.copy(src, dst [, {recursive = false, reflink = "auto"}]) → dst | nil, message, code
** Copies mode, owner (as root) and times. A file replaces dst atomically; a directory
** (recursive) is built beside dst and renamed into place, so dst must not exist and a
** failure leaves nothing. reflink: "auto" clones where the filesystem can, true
** requires it, false never does. src is followed if it is a symlink; symlinks inside a
** directory are copied as symlinks. Hard links and extended attributes are not kept.
*/
static int fs_copy(lua_State *L)
{
    static const char *const opts[] = {"recursive", "reflink", NULL};
    const char *src = hrun_checkpath(L, 1, NULL);
    const char *dst = hrun_checkpath(L, 2, NULL);
    hrun_checkopts(L, 3, opts);
    int recursive = hrun_optbool(L, 3, "recursive", 0);
    int reflink = REFLINK_AUTO;
    if (!lua_isnoneornil(L, 3)) {
        lua_getfield(L, 3, "reflink");
        if (lua_type(L, -1) == LUA_TBOOLEAN)
            reflink = lua_toboolean(L, -1) ? REFLINK_ALWAYS : REFLINK_NEVER;
        else if (!lua_isnil(L, -1) &&
                 !(lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "auto") == 0))
            luaL_argerror(L, 3, "field 'reflink': true, false or \"auto\" expected");
        lua_pop(L, 1);
    }
    lua_settop(L, 3);
    Tmp *t = tmp_new(L);
    struct stat st, dst_st;
    if (stat(src, &st) < 0) return hrun_fail(L, "fs.copy", src, errno);
    int dst_exists = stat(dst, &dst_st) == 0;
    if (S_ISDIR(st.st_mode)) {
        if (!recursive)
            return hrun_failf(L, "EISDIR", "fs.copy: %s: is a directory (use recursive = true)",
                              src);
        if (dst_exists) return hrun_fail(L, "fs.copy", dst, EEXIST);
        Walk w;
        walk_start(&w, src);
        if (make_tmp(L, t, dst, 1) < 0) return hrun_fail(L, "fs.copy", dst, errno);
        /* the top directory is the temporary itself: copy its entries, then its metadata */
        if ((t->fd = open(t->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
            return hrun_fail(L, "fs.copy", dst, errno);
        int sfd = open(src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (sfd < 0) return hrun_fail(L, "fs.copy", src, errno);
        DIR *d = fdopendir(sfd);
        if (d == NULL) {
            int err = errno;
            close(sfd);
            return hrun_fail(L, "fs.copy", src, err);
        }
        int rc = 0;
        for (;;) {
            errno = 0;
            struct dirent *de = readdir(d);
            if (de == NULL) {
                rc = errno ? -1 : 0;
                break;
            }
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
            if ((rc = walk_down(&w, de->d_name)) < 0) break;
            if ((rc = copy_at(dirfd(d), de->d_name, t->fd, de->d_name, &w, reflink)) < 0) break;
            walk_up(&w, strlen(src));
        }
        int err = errno;
        closedir(d);
        if (rc < 0) return hrun_fail(L, "fs.copy", w.path, err);
        if (copy_meta(t->fd, -1, NULL, &st) < 0 || fsync(t->fd) < 0)
            return hrun_fail(L, "fs.copy", dst, errno);
        close(t->fd);
        t->fd = -1;
        char dir[PATH_MAX];
        if (renameat2(AT_FDCWD, t->path, AT_FDCWD, dst, RENAME_NOREPLACE) < 0)
            return hrun_fail(L, "fs.copy", dst, errno);
        t->committed = 1;
        dir_of(dst, dir, sizeof dir);
        hrun_fsync_dir(dir);
    } else {
        if (dst_exists && S_ISDIR(dst_st.st_mode))
            return hrun_failf(L, "EISDIR",
                              "fs.copy: %s: is a directory (give the whole destination path)", dst);
        int in = open(src, O_RDONLY | O_CLOEXEC);
        if (in < 0) return hrun_fail(L, "fs.copy", src, errno);
        int rc = make_tmp(L, t, dst, 0);
        int err = errno;
        if (rc == 0 && (rc = copy_data(in, t->fd, reflink)) < 0) err = errno;
        close(in);
        if (rc < 0 && reflink == REFLINK_ALWAYS)
            return hrun_failf(L, hrun_errname(err), "fs.copy: %s: cannot reflink to %s: %s", src,
                              dst, strerror(err));
        if (rc < 0) return hrun_fail(L, "fs.copy", t->path[0] ? src : dst, err);
        if (copy_meta(t->fd, -1, NULL, &st) < 0 || commit_tmp(t, dst) < 0)
            return hrun_fail(L, "fs.copy", dst, errno);
    }
    lua_pushvalue(L, 2);
    return 1;
}

/* }====================================================== */

/*
** fs.rename(src, dst [, {replace = true}]) → dst | nil, message, code
** replace = false: fails with EEXIST instead of replacing dst. Both directories are
** fsynced, so the rename survives a crash.
*/
static int fs_rename(lua_State *L)
{
    static const char *const opts[] = {"replace", NULL};
    const char *src = hrun_checkpath(L, 1, NULL);
    const char *dst = hrun_checkpath(L, 2, NULL);
    hrun_checkopts(L, 3, opts);
    int replace = hrun_optbool(L, 3, "replace", 1);
    if (renameat2(AT_FDCWD, src, AT_FDCWD, dst, replace ? 0 : RENAME_NOREPLACE) < 0) {
        int err = errno;
        return hrun_failf(L, hrun_errname(err), "fs.rename: %s -> %s: %s", src, dst, strerror(err));
    }
    char dir[PATH_MAX];
    dir_of(dst, dir, sizeof dir);
    hrun_fsync_dir(dir);
    dir_of(src, dir, sizeof dir);
    hrun_fsync_dir(dir);
    lua_pushvalue(L, 2);
    return 1;
}

/* {======================================================
** Inverses: how to undo each write, computed before it runs. What a write destroys
** (old file contents, a removed tree) is first copied into the run's stash.
** ======================================================= */

/*
** [-0, +1, e] Saves a copy of path (file, symlink or tree; never followed) in the run's
** stash, durably, and pushes the copy's path. Outside a run (a plan) it only pushes a
** description. Raises when it cannot save: a write must not run without its way back.
*/
static void stash(lua_State *L, const char *what, const char *path)
{
    const char *dir = hrun_stashdir(L);
    if (dir == NULL) {
        lua_pushfstring(L, "(a saved copy of %s)", path);
        return;
    }
    char tmpl[PATH_MAX];
    Walk w;
    walk_start(&w, path);
    if ((size_t)snprintf(tmpl, sizeof tmpl, "%s/s-XXXXXX", dir) >= sizeof tmpl || !mkdtemp(tmpl))
        luaL_error(L, "%s: cannot save %s before changing it: %s: %s", what, path, dir,
                   strerror(errno));
    int dfd = open(tmpl, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = dfd < 0 ? -1 : copy_at(AT_FDCWD, path, dfd, "data", &w, REFLINK_AUTO);
    int err = errno;
    if (rc == 0 && syncfs(dfd) < 0) rc = -1, err = errno;
    if (dfd >= 0) close(dfd);
    if (rc < 0) {
        Walk rw;
        walk_start(&rw, tmpl);
        remove_at(AT_FDCWD, tmpl, &rw, 0);
        luaL_error(L, "%s: cannot save %s before changing it: %s", what, w.path, strerror(err));
    }
    lua_pushfstring(L, "%s/data", tmpl);
}

/* [-0, +1, m] {force = true} (and recursive) */
static void push_force(lua_State *L, int recursive)
{
    lua_createtable(L, 0, 2);
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "force");
    if (recursive) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "recursive");
    }
}

/* Undoing a change to path that existed as st (exists) or not: restore the saved copy,
** or remove what the change made. Appends to the list at idx. */
static void undo_change(lua_State *L, int idx, const char *what, const char *path, int exists)
{
    lua_pushstring(L, path);
    if (exists) {
        stash(L, what, path);
        hrun_addop(L, idx, "fs._restore", 2);
    } else {
        push_force(L, 1);
        hrun_addop(L, idx, "fs.remove", 2);
    }
}

int hrun_rmtree(const char *path)
{
    Walk w;
    walk_start(&w, path);
    return remove_at(AT_FDCWD, path, &w, 0);
}

int hrun_rmtree_onefs(const char *path)
{
    struct stat st;
    Walk w;
    if (lstat(path, &st) < 0) return -1;
    walk_start(&w, path);
    return remove_at(AT_FDCWD, path, &w, st.st_dev);
}

void hrun_undo_change(lua_State *L, int idx, const char *what, const char *path)
{
    struct stat st;
    undo_change(L, idx, what, path, lstat(path, &st) == 0);
}

static int fs_write_inverse(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    char real[PATH_MAX];
    struct stat st;
    lua_newtable(L);
    int list = lua_gettop(L);
    if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode) && realpath(path, real)) path = real;
    int exists = lstat(path, &st) == 0;
    if (exists && S_ISDIR(st.st_mode)) return 1; /* the write will fail: nothing to undo */
    undo_change(L, list, "fs.write", path, exists);
    return 1;
}

static int fs_mkdir_inverse(lua_State *L)
{
    size_t len;
    const char *path = luaL_checklstring(L, 1, &len);
    char buf[PATH_MAX];
    struct stat st;
    lua_newtable(L);
    int list = lua_gettop(L);
    if (len >= sizeof buf) return 1;
    memcpy(buf, path, len + 1);
    /* the directories that do not exist yet, deepest first: removed in that order */
    for (;;) {
        while (len > 1 && buf[len - 1] == '/') buf[--len] = '\0';
        if (len == 0 || lstat(buf, &st) == 0) break;
        lua_pushstring(L, buf);
        push_force(L, 0);
        hrun_addop(L, list, "fs.remove", 2);
        char *slash = strrchr(buf, '/');
        if (slash == NULL || slash == buf) break;
        *slash = '\0';
        len = (size_t)(slash - buf);
    }
    return 1;
}

static int fs_remove_inverse(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    struct stat st;
    lua_newtable(L);
    if (lstat(path, &st) == 0) undo_change(L, lua_gettop(L), "fs.remove", path, 1);
    return 1;
}

static int fs_copy_inverse(lua_State *L)
{
    const char *dst = luaL_checkstring(L, 2);
    struct stat st;
    lua_newtable(L);
    undo_change(L, lua_gettop(L), "fs.copy", dst, lstat(dst, &st) == 0);
    return 1;
}

static int fs_rename_inverse(lua_State *L)
{
    const char *src = luaL_checkstring(L, 1);
    const char *dst = luaL_checkstring(L, 2);
    struct stat st;
    lua_newtable(L);
    int list = lua_gettop(L);
    lua_pushstring(L, dst);
    lua_pushstring(L, src);
    lua_createtable(L, 0, 1);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "replace");
    hrun_addop(L, list, "fs.rename", 3);
    if (lstat(dst, &st) == 0) { /* it replaces dst: put dst back after moving src home */
        lua_pushstring(L, dst);
        stash(L, "fs.rename", dst);
        hrun_addop(L, list, "fs._restore", 2);
    }
    return 1;
}

/*
** fs._restore(path, saved) → path | nil, message, code
** Undo operation: puts a copy of saved (from the stash) at path, replacing what is
** there — a file atomically; a directory by removing the current one first.
*/
static int fs_restore(lua_State *L)
{
    const char *path = hrun_checkpath(L, 1, NULL);
    const char *saved = hrun_checkpath(L, 2, NULL);
    lua_settop(L, 2);
    Tmp *t = tmp_new(L);
    struct stat st;
    Walk w;
    walk_start(&w, saved);
    if (make_tmp(L, t, path, 1) < 0) return hrun_fail(L, "fs._restore", path, errno);
    /* staged as "x" in a temporary directory beside path (t->fd holds it open) */
    if ((t->fd = open(t->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
        return hrun_fail(L, "fs._restore", path, errno);
    if (copy_at(AT_FDCWD, saved, t->fd, "x", &w, REFLINK_AUTO) < 0 || syncfs(t->fd) < 0)
        return hrun_fail(L, "fs._restore", w.path, errno);
    if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        walk_start(&w, path);
        if (remove_at(AT_FDCWD, path, &w, st.st_dev) < 0)
            return walk_fail(L, "fs._restore", &w, errno);
    }
    if (renameat(t->fd, "x", AT_FDCWD, path) < 0) return hrun_fail(L, "fs._restore", path, errno);
    char dir[PATH_MAX];
    dir_of(path, dir, sizeof dir);
    hrun_fsync_dir(dir);
    lua_pushvalue(L, 1);
    return 1;
}

/* }====================================================== */

/* {======================================================
** Previews: what a planned write does to a file's content (diff.c)
** ======================================================= */

/* fs.write: the file's content now → the data. A secret whose bytes the masker does not
** hide (too short to mask) shows as "<secret>" whole. */
static int fs_write_preview(lua_State *L)
{
    size_t len;
    const char *path = lua_tostring(L, 1);
    const char *data = hrun_tobytes(L, 2, &len);
    if (path == NULL || data == NULL) {
        lua_pushnil(L);
        return 1;
    }
    if (hrun_tosecret(L, 2, NULL)) {
        lua_pushlstring(L, data, len);
        hrun_mask(L, -1);
        if (lua_rawequal(L, -1, -2)) lua_pushliteral(L, "<secret>");
        data = lua_tolstring(L, -1, &len);
    }
    hrun_diff_file(L, path, data, len);
    return 1;
}

/* fs.copy of a regular file over another: dst's content now → src's */
static int fs_copy_preview(lua_State *L)
{
    const char *src = lua_tostring(L, 1), *dst = lua_tostring(L, 2);
    struct stat a, b;
    if (src == NULL || dst == NULL || stat(src, &a) < 0 || !S_ISREG(a.st_mode) ||
        stat(dst, &b) < 0 || !S_ISREG(b.st_mode)) {
        lua_pushnil(L);
        return 1;
    }
    hrun_diff_files(L, src, dst);
    return 1;
}

/*
** fs._diff(old, new [, name]) → {lines = {…}, diff = true, …}: the unified diff of two
** texts as a preview shows it (old nil: a new file), for the runner's own previews (the
** flake text its planned edits leave).
*/
static int fs_diff(lua_State *L)
{
    size_t olen, nlen;
    const char *old = lua_isnil(L, 1) ? NULL : luaL_checklstring(L, 1, &olen);
    const char *new = luaL_checklstring(L, 2, &nlen);
    hrun_diff_preview(L, luaL_optstring(L, 3, "(text)"), old, old ? olen : 0, new, nlen);
    return 1;
}

/* }====================================================== */

/* {======================================================
** States: what each write changes, for the careful undo (runtime/undo.c)
** ======================================================= */

/* fs.write: the file (a symlink's target: the write goes through it) */
static int fs_write_state(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    char real[PATH_MAX];
    struct stat st;
    lua_newtable(L);
    if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode) && realpath(path, real)) path = real;
    hrun_addpath(L, lua_gettop(L), path);
    return 1;
}

/* fs.mkdir: the directory, and each parent it will make */
static int fs_mkdir_state(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    char buf[PATH_MAX];
    struct stat st;
    lua_newtable(L);
    int list = lua_gettop(L);
    if (hrun_abspath(path, buf, sizeof buf) < 0) return 1;
    hrun_addpath(L, list, buf);
    int parents = lua_istable(L, 2) && (lua_getfield(L, 2, "parents"), lua_toboolean(L, -1));
    lua_settop(L, list);
    while (parents) {
        char *slash = strrchr(buf, '/');
        if (slash == NULL || slash == buf) break;
        *slash = '\0';
        if (lstat(buf, &st) == 0) break;
        hrun_addpath(L, list, buf);
    }
    return 1;
}

/* fs.remove and fs._restore: the path itself */
static int fs_path_state(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lua_newtable(L);
    hrun_addpath(L, lua_gettop(L), path);
    return 1;
}

/* fs.copy: the destination */
static int fs_copy_state(lua_State *L)
{
    luaL_checkstring(L, 1);
    const char *dst = luaL_checkstring(L, 2);
    lua_newtable(L);
    hrun_addpath(L, lua_gettop(L), dst);
    return 1;
}

/* fs.rename: both names */
static int fs_rename_state(lua_State *L)
{
    const char *src = luaL_checkstring(L, 1);
    const char *dst = luaL_checkstring(L, 2);
    lua_newtable(L);
    hrun_addpath(L, lua_gettop(L), src);
    hrun_addpath(L, lua_gettop(L), dst);
    return 1;
}

/* }====================================================== */

/* {======================================================
** Already so: what each write finds done, so that it neither acts nor is journaled
** ======================================================= */

/* Reads up to len bytes at fd into buf; the count read (short only at the end), -1. */
static ssize_t read_full(int fd, char *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -1;
        if (n == 0) break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

/* Whether the open file fd holds exactly the len bytes at data (b: NULL) or the same
** bytes as the open file b. */
static int same_bytes(int fd, const char *data, size_t len, int b)
{
    char x[16384], y[16384];
    for (size_t off = 0;; off += sizeof x) {
        ssize_t n = read_full(fd, x, sizeof x);
        if (n < 0) return 0;
        if (b >= 0) {
            if (read_full(b, y, sizeof y) != n || memcmp(x, y, (size_t)n) != 0) return 0;
        } else {
            size_t want = off >= len ? 0 : len - off < sizeof x ? len - off : sizeof x;
            if ((size_t)n != want || memcmp(x, data + off, (size_t)n) != 0) return 0;
        }
        if ((size_t)n < sizeof x) return 1;
    }
}

/* fs.write: the file (through a symlink) holds these bytes, and has the mode given */
static int fs_write_unchanged(lua_State *L)
{
    const char *path = lua_tostring(L, 1);
    size_t len;
    const char *data = hrun_tobytes(L, 2, &len);
    struct stat st;
    lua_settop(L, 3);
    if (path == NULL || data == NULL || stat(path, &st) < 0 || !S_ISREG(st.st_mode) ||
        (size_t)st.st_size != len)
        return lua_pushnil(L), 1;
    mode_t mode = lua_istable(L, 3) ? opt_mode(L, 3, (mode_t)-1) : (mode_t)-1;
    if (mode != (mode_t)-1 && (st.st_mode & 07777) != mode) return lua_pushnil(L), 1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    int same = fd >= 0 && same_bytes(fd, data, len, -1);
    if (fd >= 0) close(fd);
    if (same)
        lua_pushvalue(L, 1);
    else
        lua_pushnil(L);
    return 1;
}

/* fs.write as playbooks call it: the same bytes already there (and the mode, when given)
** are left as they are — nothing written, the file's times kept — as a run leaves them,
** where such a write is not journaled either (fs.edit and fs.template lean on it). */
static int fs_write_call(lua_State *L)
{
    static const char *const opts[] = {"mode", NULL};
    size_t len;
    hrun_checkpath(L, 1, NULL); /* misuse raises as the write would */
    if (hrun_tobytes(L, 2, &len) == NULL) luaL_typeerror(L, 2, "string or secret");
    hrun_checkopts(L, 3, opts);
    opt_mode(L, 3, (mode_t)-1);
    fs_write_unchanged(L); /* arguments 1..3, then the path or nil */
    if (!lua_isnil(L, -1)) return 1;
    lua_pop(L, 1);
    return hrun_fs_write(L);
}

/* fs.mkdir: a directory is there (its mode is left as it is, as mkdir -p does) */
static int fs_mkdir_unchanged(lua_State *L)
{
    const char *path = lua_tostring(L, 1);
    struct stat st;
    if (path != NULL && *path && stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        lua_pushvalue(L, 1);
    else
        lua_pushnil(L);
    return 1;
}

/* fs.remove: nothing is there (not even a dangling symlink) */
static int fs_remove_unchanged(lua_State *L)
{
    const char *path = lua_tostring(L, 1);
    struct stat st;
    if (path != NULL && *path && lstat(path, &st) < 0 && errno == ENOENT)
        lua_pushvalue(L, 1);
    else
        lua_pushnil(L);
    return 1;
}

/* fs.copy of a regular file: dst is a regular file (not a symlink) with the same bytes
** and mode (and owner, as root). Times are not compared. A tree is never already so:
** its copy needs dst not to exist. */
static int fs_copy_unchanged(lua_State *L)
{
    const char *src = lua_tostring(L, 1), *dst = lua_tostring(L, 2);
    struct stat s, d;
    if (src == NULL || dst == NULL || stat(src, &s) < 0 || !S_ISREG(s.st_mode) ||
        lstat(dst, &d) < 0 || !S_ISREG(d.st_mode) || s.st_size != d.st_size ||
        (s.st_mode & 07777) != (d.st_mode & 07777) ||
        (geteuid() == 0 && (s.st_uid != d.st_uid || s.st_gid != d.st_gid)))
        return lua_pushnil(L), 1;
    int a = open(src, O_RDONLY | O_CLOEXEC), b = open(dst, O_RDONLY | O_CLOEXEC);
    int same = a >= 0 && b >= 0 && same_bytes(a, NULL, 0, b);
    if (a >= 0) close(a);
    if (b >= 0) close(b);
    if (same)
        lua_pushvalue(L, 2);
    else
        lua_pushnil(L);
    return 1;
}

/* }====================================================== */

/* The sandbox's targets of fs.glob: for each of its brace alternatives, the directory
** it starts from (what comes before the first wildcard, up to its last '/'), or the
** path itself when it has no wildcard. */
static int glob_targets(lua_State *L, hrun_Target *t)
{
    if (lua_type(L, 1) != LUA_TSTRING) return 0;
    lua_newtable(L);
    int alts = lua_gettop(L);
    lua_newtable(L);
    int dirs = alts + 1;
    int n = brace_expand(L, alts, lua_tostring(L, 1));
    if (n < 0) n = (int)lua_rawlen(L, alts); /* fs.glob fails: E2BIG */
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, alts, i);
        const char *pattern = lua_tostring(L, -1);
        size_t wild = strcspn(pattern, "*?[\\");
        const char *slash = NULL;
        for (const char *p = pattern; p < pattern + wild; p++)
            if (*p == '/') slash = p;
        if (wild == strlen(pattern))
            lua_pushvalue(L, -1); /* no wildcard */
        else if (slash == NULL)
            lua_pushliteral(L, ".");
        else
            lua_pushlstring(L, pattern, slash == pattern ? 1 : (size_t)(slash - pattern));
        lua_rawseti(L, dirs, i);
        lua_pop(L, 1);
    }
    t[0] = (hrun_Target){NULL, NULL, NULL, dirs, 0};
    return 1;
}

static const hrun_Prim fs_prims[] = {
    {.name = "read", .func = fs_read, .kind = HRUN_READ, .cap = "fs", .targets = hrun_targets_arg1},
    {.name = "exists",
     .func = fs_exists,
     .kind = HRUN_READ,
     .cap = "fs",
     .targets = hrun_targets_arg1},
    {.name = "stat", .func = fs_stat, .kind = HRUN_READ, .cap = "fs", .targets = hrun_targets_arg1},
    {.name = "statfs",
     .func = fs_statfs,
     .kind = HRUN_READ,
     .cap = "fs",
     .targets = hrun_targets_arg1},
    {.name = "list", .func = fs_list, .kind = HRUN_READ, .cap = "fs", .targets = hrun_targets_arg1},
    {.name = "glob", .func = fs_glob, .kind = HRUN_READ, .cap = "fs", .targets = glob_targets},
    {.name = "write",
     .func = fs_write_call,
     .kind = HRUN_WRITE,
     .opts = 3,
     .cap = "fs",
     .inverse = fs_write_inverse,
     .state = fs_write_state,
     .unchanged = fs_write_unchanged,
     .preview = fs_write_preview,
     .targets = hrun_targets_arg1},
    {.name = "mkdir",
     .func = fs_mkdir,
     .kind = HRUN_WRITE,
     .opts = 2,
     .cap = "fs",
     .inverse = fs_mkdir_inverse,
     .state = fs_mkdir_state,
     .unchanged = fs_mkdir_unchanged,
     .targets = hrun_targets_arg1},
    {.name = "remove",
     .func = fs_remove,
     .kind = HRUN_WRITE,
     .opts = 2,
     .cap = "fs",
     .inverse = fs_remove_inverse,
     .state = fs_path_state,
     .unchanged = fs_remove_unchanged,
     .targets = hrun_targets_arg1},
    {.name = "copy",
     .func = fs_copy,
     .kind = HRUN_WRITE,
     .opts = 3,
     .cap = "fs",
     .inverse = fs_copy_inverse,
     .state = fs_copy_state,
     .unchanged = fs_copy_unchanged,
     .preview = fs_copy_preview,
     .targets = hrun_targets_args12},
    {.name = "rename",
     .func = fs_rename,
     .kind = HRUN_WRITE,
     .opts = 3,
     .cap = "fs",
     .inverse = fs_rename_inverse,
     .state = fs_rename_state,
     .targets = hrun_targets_args12},
    {.name = "sync",
     .func = hrun_fs_sync,
     .kind = HRUN_WRITE,
     .opts = 3,
     .cap = "fs",
     .inverse = hrun_fs_sync_inverse,
     .state = hrun_fs_sync_state,
     .unchanged = hrun_fs_sync_unchanged,
     .targets = hrun_copy_targets},
    {.name = "_diff", .func = fs_diff, .kind = HRUN_PURE},
    {.name = "_restore",
     .func = fs_restore,
     .kind = HRUN_WRITE,
     .cap = "fs",
     .state = fs_path_state,
     .targets = hrun_targets_args12},
    {0},
};

int luaopen_hrun_fs(lua_State *L)
{
    hrun_newmodule(L, "fs", fs_prims);
    return 1;
}
