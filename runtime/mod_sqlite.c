/*
** mod_sqlite.c — the `sqlite` module: the SQLite databases applications keep
** (Vaultwarden's db.sqlite3, Emby's library.db, the download history of the *arr
** apps), through the library itself: an online backup, consistent while the
** application writes (what `sqlite3 DB ".backup FILE"` does), and read-only queries
** (integrity checks, row counts compared before and after a move).
*/
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define BUSY_MS 10000 /* how long to wait for a writer's lock before giving up */

/* [-0, +3, m] nil, "what: file: SQLite's message", code; returns 3. */
static int fail_db(lua_State *L, const char *what, const char *file, sqlite3 *db, int rc)
{
    int err = rc == SQLITE_CANTOPEN && access(file, F_OK) < 0 ? errno : 0;
    if (err) return hrun_fail(L, what, file, err);
    struct stat st;
    if (rc == SQLITE_CANTOPEN && stat(file, &st) == 0 && !S_ISREG(st.st_mode))
        return hrun_failf(L, "EINVAL", "%s: %s: not a regular file (a database is one)", what,
                          file);
    /* the backup API leaves its errors on the destination, or only in rc */
    const char *msg =
        db && sqlite3_errcode(db) != SQLITE_OK ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    return hrun_failf(L, rc == SQLITE_BUSY || rc == SQLITE_LOCKED ? "EBUSY" : "ESQLITE",
                      "%s: %s: %s", what, file, msg);
}

/* Whether file is a database in WAL mode that no connection has open (it has no -wal
** file: the last connection to close removed it). */
static int idle_wal(const char *file)
{
    unsigned char header[20];
    char wal[PATH_MAX];
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, header, sizeof header);
    close(fd);
    if (n != (ssize_t)sizeof header || memcmp(header, "SQLite format 3", 16) != 0) return 0;
    if (header[18] != 2 || header[19] != 2) return 0; /* not WAL */
    if (snprintf(wal, sizeof wal, "%s-wal", file) >= (int)sizeof wal) return 0;
    return access(wal, F_OK) < 0 && errno == ENOENT;
}

/* Opens file read-only (never creating it) with the busy timeout; NULL and rc on failure.
** A WAL database nobody has open is read as immutable: reading it then makes no -wal or
** -shm file beside it (the directory of a stopped application stays as it was, and a
** read-only mount can be read). */
static sqlite3 *open_readonly(const char *file, int *rc)
{
    sqlite3 *db = NULL;
    /* a database is a regular file: opening a FIFO (or a device) would block the engine
    ** past every deadline */
    struct stat st;
    if (stat(file, &st) == 0 && !S_ISREG(st.st_mode)) {
        *rc = SQLITE_CANTOPEN;
        return NULL;
    }
    if (idle_wal(file)) {
        char uri[3 * PATH_MAX + 32], *u = uri;
        u += sprintf(u, "file:");
        for (const unsigned char *c = (const unsigned char *)file; *c; c++)
            u += isalnum(*c) || strchr("/._~-", *c) ? sprintf(u, "%c", *c)
                                                    : sprintf(u, "%%%02X", *c);
        sprintf(u, "?immutable=1");
        *rc = sqlite3_open_v2(uri, &db,
                              SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_URI, NULL);
    } else {
        *rc = sqlite3_open_v2(file, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    }
    if (*rc == SQLITE_OK) *rc = sqlite3_busy_timeout(db, BUSY_MS);
    /* the one file named, nothing else: ATTACH is a "read-only" statement that opens any
    ** file, which the capability check never saw */
    if (*rc == SQLITE_OK) sqlite3_limit(db, SQLITE_LIMIT_ATTACHED, 0);
    return db;
}

/*
** sqlite.backup(src, dst) → {file, bytes, pages, seconds} | nil, message, code
** A consistent copy of the database src (read-only; its writers go on, a copy started
** over when one commits mid-way, as SQLite's backup API does) at dst, which must not
** exist: built beside it, synced, renamed into place (mode 0600), one file (in rollback
** journal mode, whatever the source's). Undone by removing dst.
*/
static int sqlite_backup(lua_State *L)
{
    const char *src = hrun_checkpath(L, 1, NULL);
    const char *dst = hrun_checkpath(L, 2, NULL);
    char tmp[PATH_MAX];
    struct stat st;
    double started = hrun_monotime();
    if (lstat(dst, &st) == 0) return hrun_fail(L, "sqlite.backup", dst, EEXIST);
    if (stat(src, &st) < 0) return hrun_fail(L, "sqlite.backup", src, errno);
    /* named from the effect (its journal, tmp-journal, too): leftovers finds them */
    if (hrun_tmpname(L, dst, tmp, sizeof tmp) < 0)
        return hrun_fail(L, "sqlite.backup", dst, ENAMETOOLONG);
    int rc;
    sqlite3 *from = open_readonly(src, &rc), *to = NULL;
    if (rc != SQLITE_OK) {
        int n = fail_db(L, "sqlite.backup", src, from, rc);
        sqlite3_close(from);
        return n;
    }
    int fd = mkostemp(tmp, O_CLOEXEC); /* 0600 */
    if (fd < 0) {
        sqlite3_close(from);
        return hrun_fail(L, "sqlite.backup", dst, errno);
    }
    close(fd);
    rc = sqlite3_open_v2(tmp, &to, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    const char *bad = dst; /* what an error is named by */
    int pages = 0;
    if (rc == SQLITE_OK) {
        sqlite3_backup *b = sqlite3_backup_init(to, "main", from, "main");
        if (b == NULL) {
            rc = sqlite3_errcode(to);
        } else {
            /* all pages at once; a writer's lock is waited for, a bit at a time */
            for (int waited = 0;;) {
                rc = sqlite3_backup_step(b, -1);
                if ((rc != SQLITE_BUSY && rc != SQLITE_LOCKED) || waited >= BUSY_MS) break;
                sqlite3_sleep(50);
                waited += 50;
            }
            pages = sqlite3_backup_pagecount(b);
            int frc = sqlite3_backup_finish(b);
            if (rc == SQLITE_DONE) rc = frc;
            if (rc == SQLITE_NOTADB || rc == SQLITE_CORRUPT) bad = src; /* the source's fault */
        }
    }
    /* one self-contained file: a copy of a WAL database would be one too */
    if (rc == SQLITE_OK) rc = sqlite3_exec(to, "PRAGMA journal_mode = DELETE", NULL, NULL, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_close(to), to = NULL;
    /* SQLite synced the copy when its last page was committed */
    if (rc == SQLITE_OK && rename(tmp, dst) < 0) {
        int err = errno;
        unlink(tmp);
        sqlite3_close(from);
        return hrun_fail(L, "sqlite.backup", dst, err);
    }
    if (rc != SQLITE_OK) {
        int n = fail_db(L, "sqlite.backup", bad, to, rc);
        sqlite3_close(to);
        sqlite3_close(from);
        unlink(tmp);
        return n;
    }
    sqlite3_close(from);
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", dst);
    char *slash = strrchr(dir, '/');
    if (slash) slash[slash == dir] = '\0'; /* "/x" → "/" */
    if (hrun_fsync_dir(slash ? dir : ".") < 0 || stat(dst, &st) < 0)
        return hrun_fail(L, "sqlite.backup", dst, errno);
    lua_createtable(L, 0, 4);
    lua_pushstring(L, dst);
    lua_setfield(L, -2, "file");
    lua_pushinteger(L, (lua_Integer)st.st_size);
    lua_setfield(L, -2, "bytes");
    lua_pushinteger(L, pages);
    lua_setfield(L, -2, "pages");
    lua_pushnumber(L, hrun_monotime() - started);
    lua_setfield(L, -2, "seconds");
    return 1;
}

static int sqlite_backup_inverse(lua_State *L)
{
    const char *dst = luaL_checkstring(L, 2);
    lua_newtable(L);
    lua_pushstring(L, dst);
    hrun_addop(L, lua_gettop(L) - 1, "fs.remove", 1);
    return 1;
}

/* [-0, +0, v] The values at idx (an array or nil) can be bound: numbers, strings, booleans. */
static void check_values(lua_State *L, int idx)
{
    if (lua_isnoneornil(L, idx)) return;
    luaL_checktype(L, idx, LUA_TTABLE);
    for (lua_Integer i = 1, n = luaL_len(L, idx); i <= n; i++) {
        int t = lua_rawgeti(L, idx, i);
        if (t != LUA_TNUMBER && t != LUA_TSTRING && t != LUA_TBOOLEAN)
            luaL_argerror(L, idx,
                          lua_pushfstring(L,
                                          "value %I: a number, string or boolean expected, got %s",
                                          i, luaL_typename(L, -1)));
        lua_pop(L, 1);
    }
}

/* Binds the values of the array at idx (checked) to st's parameters; -1 when their
** numbers differ. */
static int bind_values(lua_State *L, sqlite3_stmt *st, int idx)
{
    int n = sqlite3_bind_parameter_count(st);
    if ((lua_Integer)n != (lua_istable(L, idx) ? luaL_len(L, idx) : 0)) return -1;
    for (int i = 1; i <= n; i++) {
        size_t len;
        const char *s;
        switch (lua_rawgeti(L, idx, i)) {
        case LUA_TNUMBER:
            if (lua_isinteger(L, -1))
                sqlite3_bind_int64(st, i, lua_tointeger(L, -1));
            else
                sqlite3_bind_double(st, i, lua_tonumber(L, -1));
            break;
        case LUA_TSTRING:
            s = lua_tolstring(L, -1, &len);
            sqlite3_bind_text(st, i, s, (int)len, SQLITE_TRANSIENT);
            break;
        default:
            sqlite3_bind_int(st, i, lua_toboolean(L, -1));
        }
        lua_pop(L, 1);
    }
    return 0;
}

/*
** sqlite.query(file, sql [, {values}]) → {{column = value, …}, …} | nil, message, code
** One statement that only reads (anything else is misuse), on the database opened
** read-only; `?` parameters bound from the array. Integers stay integers, text and
** blobs are strings, NULL is absent.
*/
static int sqlite_query(lua_State *L)
{
    const char *file = hrun_checkpath(L, 1, NULL);
    size_t len;
    const char *sql = luaL_checklstring(L, 2, &len);
    check_values(L, 3);
    lua_settop(L, 3);
    int rc;
    sqlite3 *db = open_readonly(file, &rc);
    sqlite3_stmt *st = NULL;
    const char *rest = NULL;
    if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(db, sql, (int)len, &st, &rest);
    if (rc != SQLITE_OK || st == NULL) {
        int n = rc != SQLITE_OK ? fail_db(L, "sqlite.query", file, db, rc) : 0;
        sqlite3_close(db);
        if (n) return n;
        return luaL_argerror(L, 2, "no SQL statement");
    }
    while (rest && (*rest == ' ' || *rest == '\n' || *rest == '\t' || *rest == ';')) rest++;
    const char *misuse = rest && *rest                ? "one statement only"
                         : !sqlite3_stmt_readonly(st) ? "a statement that only reads expected"
                         : bind_values(L, st, 3) < 0  ? "as many values as the SQL has parameters"
                                                      : NULL;
    if (misuse) {
        sqlite3_finalize(st);
        sqlite3_close(db);
        return luaL_argerror(L, 2, misuse);
    }
    if ((rc = hrun_push_rows(L, st)) != SQLITE_DONE) {
        int r = fail_db(L, "sqlite.query", file, db, rc);
        sqlite3_finalize(st);
        sqlite3_close(db);
        return r;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return 1;
}

/* backup's state: the copy it makes */
static int sqlite_backup_state(lua_State *L)
{
    luaL_checkstring(L, 1);
    const char *dst = luaL_checkstring(L, 2);
    lua_newtable(L);
    hrun_addpath(L, lua_gettop(L), dst);
    return 1;
}

static const hrun_Prim sqlite_prims[] = {
    {.name = "query",
     .func = sqlite_query,
     .kind = HRUN_READ,
     .cap = "fs",
     .targets = hrun_targets_arg1},
    {.name = "backup",
     .func = sqlite_backup,
     .kind = HRUN_WRITE,
     .cap = "fs",
     .inverse = sqlite_backup_inverse,
     .state = sqlite_backup_state,
     .targets = hrun_targets_args12},
    {0},
};

int luaopen_hrun_sqlite(lua_State *L)
{
    hrun_newmodule(L, "sqlite", sqlite_prims);
    return 1;
}
