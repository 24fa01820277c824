/*
** mod_hash.c — the `hash` module: a file's digest, a tree's manifest (hashed in parallel
** by hashpool.c, kept in the journal database), verify and compare, and manifests in
** the formats of sha256sum, b2sum and xxhsum.
*/
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <sqlite3.h>

#include "hrun/hashpool.h"
#include "internal.h"

#define TREE_TYPE "hrun.hash.tree"

static const char hexdigits[] = "0123456789abcdef";

static void push_hex(lua_State *L, const unsigned char *d, size_t n)
{
    char buf[129];
    for (size_t i = 0; i < n; i++)
        buf[2 * i] = hexdigits[d[i] >> 4], buf[2 * i + 1] = hexdigits[d[i] & 15];
    lua_pushlstring(L, buf, 2 * n);
}

static enum hrun_algo check_algo(lua_State *L, int arg)
{
    const char *name = hrun_optstring(L, arg, "algo", "xxh128", NULL);
    int a = hrun_algo_parse(name);
    if (a < 0)
        luaL_argerror(
            L, arg, lua_pushfstring(L, "field 'algo': xxh128, sha256 or blake2b, not '%s'", name));
    return (enum hrun_algo)a;
}

/* hash.file(path [, {algo = "xxh128"}]) → hex digest | nil, message, code */
static int hash_file(lua_State *L)
{
    static const char *const opts[] = {"algo", NULL};
    const char *path = hrun_checkpath(L, 1, NULL);
    hrun_checkopts(L, 2, opts);
    enum hrun_algo a = check_algo(L, 2);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return hrun_fail(L, "hash.file", path, errno);
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        close(fd);
        return hrun_fail(L, "hash.file", path, EISDIR);
    }
    unsigned char d[64];
    char *buf = malloc(1 << 20);
    int err = buf ? hrun_hash_fd(fd, a, d, buf, 1 << 20) : ENOMEM;
    free(buf);
    close(fd);
    if (err) return hrun_fail(L, "hash.file", path, err);
    push_hex(L, d, hrun_algo_size(a));
    return 1;
}

/* {======================================================
** The journal's manifests
** ======================================================= */

/* [-0, +0, e] The journal's database (opening it on first use). */
static sqlite3 *journal_db(lua_State *L)
{
    if (lua_getfield(L, LUA_REGISTRYINDEX, JOURNAL_DB) != LUA_TFUNCTION)
        luaL_error(L, "hash: no journal to keep manifests in");
    lua_call(L, 0, 1);
    sqlite3 *db = hrun_db_check(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, "hrun.hash.dbref"); /* keep the userdata alive */
    return db;
}

static int db_fail(lua_State *L, sqlite3 *db)
{
    return luaL_error(L, "hash: journal: %s", sqlite3_errmsg(db));
}

static void exec_sql(lua_State *L, sqlite3 *db, const char *sql)
{
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK) db_fail(L, db);
}

/* A prepared statement owned by the caller (finalize it). */
static sqlite3_stmt *prep(lua_State *L, sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) db_fail(L, db);
    return st;
}

/* Finds a manifest by id (integer) or name (string) at arg; returns its id, 0 if none. */
static sqlite3_int64 manifest_id(lua_State *L, sqlite3 *db, int arg)
{
    sqlite3_stmt *st;
    if (lua_isinteger(L, arg)) {
        st = prep(L, db, "SELECT id FROM manifests WHERE id = ?");
        sqlite3_bind_int64(st, 1, lua_tointeger(L, arg));
    } else if (lua_type(L, arg) == LUA_TSTRING) {
        st = prep(L, db, "SELECT id FROM manifests WHERE name = ?");
        sqlite3_bind_text(st, 1, lua_tostring(L, arg), -1, SQLITE_TRANSIENT);
    } else if (lua_istable(L, arg)) {
        lua_getfield(L, arg, "id");
        sqlite3_int64 id = lua_tointeger(L, -1);
        lua_pop(L, 1);
        return id;
    } else {
        luaL_typeerror(L, arg, "manifest, name or id");
        return 0;
    }
    sqlite3_int64 id = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_finalize(st);
    return id;
}

/* [-0, +1, e] The manifest's row as a table. */
static void push_manifest(lua_State *L, sqlite3 *db, sqlite3_int64 id)
{
    sqlite3_stmt *st =
        prep(L, db,
             "SELECT id, name, root, algo, status, started, ended, source, "
             "(SELECT count(*) FROM entries WHERE manifest = m.id AND type = 'f'), "
             "(SELECT coalesce(sum(size), 0) FROM entries WHERE manifest = m.id AND type = 'f'), "
             "(SELECT count(*) FROM entries WHERE manifest = m.id), "
             "(SELECT count(*) FROM entries WHERE manifest = m.id AND error IS NOT NULL) "
             "FROM manifests m WHERE id = ?");
    sqlite3_bind_int64(st, 1, id);
    if (sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_finalize(st);
        lua_pushnil(L);
        return;
    }
    lua_createtable(L, 0, 12);
    static const char *const names[] = {"id",    "name",   "root",  "algo",  "status",  "started",
                                        "ended", "source", "files", "bytes", "entries", "errors"};
    for (int i = 0; i < 12; i++) {
        hrun_push_column(L, st, i);
        lua_setfield(L, -2, names[i]);
    }
    lua_pushboolean(L, strcmp((const char *)sqlite3_column_text(st, 4), "complete") == 0);
    lua_setfield(L, -2, "complete");
    if (sqlite3_column_type(st, 6) != SQLITE_NULL) {
        lua_pushnumber(L, sqlite3_column_double(st, 6) - sqlite3_column_double(st, 5));
        lua_setfield(L, -2, "seconds");
    }
    sqlite3_finalize(st);
}

/* }====================================================== */

/* {======================================================
** Hashing a tree into a manifest
** ======================================================= */

typedef struct Tree {
    hrun_HashPool *pool;
    sqlite3 *ro;        /* the walker's own read-only connection (resume, quick) */
    sqlite3_stmt *look; /* SELECT … FROM entries WHERE manifest = ? AND path = ? */
    sqlite3_int64 look_id;
    int resume;              /* look_id is this manifest: skip what it has */
    pthread_mutex_t look_mu; /* the walker and the hashers share the statement */
    sqlite3 *db;
    sqlite3_stmt *ins;
} Tree;

static int tree_close(lua_State *L)
{
    Tree *t = luaL_checkudata(L, 1, TREE_TYPE);
    hrun_hashpool_free(t->pool);
    t->pool = NULL;
    sqlite3_finalize(t->look);
    t->look = NULL;
    sqlite3_close_v2(t->ro);
    t->ro = NULL;
    sqlite3_finalize(t->ins);
    t->ins = NULL;
    if (t->db && !sqlite3_get_autocommit(t->db)) sqlite3_exec(t->db, "COMMIT", NULL, NULL, NULL);
    t->db = NULL;
    return 0;
}

/* The walker's question (its thread): skip, reuse a digest, or hash. */
static int lookup(void *ud, hrun_Entry *e)
{
    Tree *t = ud;
    if (t->look == NULL) return 0;
    if (!t->resume && !e->statted) return 0; /* quick needs the metadata: asked again */
    pthread_mutex_lock(&t->look_mu);
    sqlite3_reset(t->look);
    sqlite3_bind_int64(t->look, 1, t->look_id);
    sqlite3_bind_blob(t->look, 2, e->path, (int)e->pathlen, SQLITE_STATIC);
    int verdict = 0;
    if (sqlite3_step(t->look) == SQLITE_ROW) {
        if (t->resume) {
            verdict = 1;
        } else if (e->type == 'f' && sqlite3_column_text(t->look, 0)[0] == 'f' &&
                   (uint64_t)sqlite3_column_int64(t->look, 1) == e->size &&
                   sqlite3_column_int64(t->look, 2) == e->mtime_ns &&
                   (uint64_t)sqlite3_column_int64(t->look, 3) == e->ino &&
                   sqlite3_column_bytes(t->look, 4) > 0 && sqlite3_column_bytes(t->look, 4) <= 64) {
            /* the quick check: same size, mtime and inode — trust the digest */
            memcpy(e->digest, sqlite3_column_blob(t->look, 4),
                   (size_t)sqlite3_column_bytes(t->look, 4));
            e->has_digest = e->reused = 1;
            verdict = 2;
        }
    }
    sqlite3_reset(t->look);
    pthread_mutex_unlock(&t->look_mu);
    return verdict;
}

static void insert(lua_State *L, Tree *t, sqlite3_int64 id, const hrun_Entry *e, size_t dlen)
{
    sqlite3_stmt *s = t->ins;
    char type[2] = {e->type, 0};
    sqlite3_reset(s);
    sqlite3_bind_int64(s, 1, id);
    sqlite3_bind_blob(s, 2, e->path, (int)e->pathlen, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, type, 1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 4, (sqlite3_int64)e->size);
    sqlite3_bind_int64(s, 5, e->mode);
    sqlite3_bind_int64(s, 6, e->mtime_ns);
    sqlite3_bind_int64(s, 7, (sqlite3_int64)e->dev);
    sqlite3_bind_int64(s, 8, (sqlite3_int64)e->ino);
    if (e->target)
        sqlite3_bind_blob(s, 9, e->target, (int)strlen(e->target), SQLITE_STATIC);
    else
        sqlite3_bind_null(s, 9);
    if (e->has_digest)
        sqlite3_bind_blob(s, 10, e->digest, (int)dlen, SQLITE_STATIC);
    else
        sqlite3_bind_null(s, 10);
    if (e->err)
        sqlite3_bind_text(s, 11, strerror(e->err), -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(s, 11);
    if (sqlite3_step(s) != SQLITE_DONE) db_fail(L, t->db);
}

/* [-0, +0, e] Calls the progress function (at index fn) with the pool's numbers. */
static void report(lua_State *L, int fn, hrun_HashPool *pool, double started)
{
    uint64_t files, bytes, tfiles, tbytes;
    int scanned;
    hrun_hashpool_progress(pool, &files, &bytes, &tfiles, &tbytes, &scanned);
    double secs = hrun_monotime() - started, rate = secs > 0 ? (double)bytes / secs : 0;
    lua_pushvalue(L, fn);
    lua_createtable(L, 0, 8);
    lua_pushinteger(L, (lua_Integer)files);
    lua_setfield(L, -2, "files");
    lua_pushinteger(L, (lua_Integer)bytes);
    lua_setfield(L, -2, "bytes");
    lua_pushinteger(L, (lua_Integer)tfiles);
    lua_setfield(L, -2, "total_files");
    lua_pushinteger(L, (lua_Integer)tbytes);
    lua_setfield(L, -2, "total_bytes");
    lua_pushboolean(L, scanned);
    lua_setfield(L, -2, "scanned");
    lua_pushnumber(L, rate);
    lua_setfield(L, -2, "rate");
    lua_pushnumber(L, secs);
    lua_setfield(L, -2, "seconds");
    if (scanned && rate > 0 && tbytes >= bytes) {
        lua_pushnumber(L, (double)(tbytes - bytes) / rate);
        lua_setfield(L, -2, "eta");
    }
    lua_call(L, 1, 0);
}

/*
** [-0, +0, e] Hashes root into manifest id (created by the caller). opts at arg:
** algo, threads, exclude, one_file_system, progress. quick_id: a manifest whose
** digests are trusted for unchanged files (0: none); resume: skip what id has.
*/
static void hash_into(lua_State *L, int arg, const char *root, enum hrun_algo algo, sqlite3 *db,
                      sqlite3_int64 id, sqlite3_int64 quick_id, int resume)
{
    int top = lua_gettop(L);
    int threads = (int)hrun_optinteger(L, arg, "threads", 0);
    int onefs = hrun_optbool(L, arg, "one_file_system", 0);
    int progress = 0;
    if (hrun_optfield(L, arg, "progress", LUA_TFUNCTION)) progress = lua_gettop(L);
    /* exclude globs, anchored by a table on the stack */
    const char **exclude = NULL;
    if (hrun_optfield(L, arg, "exclude", LUA_TTABLE)) {
        int ex = lua_gettop(L);
        lua_Integer n = luaL_len(L, ex);
        exclude = lua_newuserdatauv(L, sizeof(char *) * ((size_t)n + 1), 0);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, ex, i);
            if (lua_type(L, -1) != LUA_TSTRING)
                luaL_argerror(L, arg, "field 'exclude': a list of globs");
            exclude[i - 1] = lua_tostring(L, -1);
            lua_pop(L, 1);
        }
        exclude[n] = NULL;
    }
    Tree *t = lua_newuserdatauv(L, sizeof(Tree), 0);
    memset(t, 0, sizeof *t);
    pthread_mutex_init(&t->look_mu, NULL);
    hrun_setclose(L, TREE_TYPE, tree_close, NULL);
    lua_toclose(L, -1);
    t->db = db;
    /* what is open (the runner's pending writes) is committed: the batches are ours */
    if (!sqlite3_get_autocommit(db)) exec_sql(L, db, "COMMIT");
    t->ins =
        prep(L, db,
             "INSERT OR REPLACE INTO entries (manifest, path, type, size, mode, mtime_ns, dev, "
             "ino, target, digest, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
    if (quick_id || resume) {
        const char *file = sqlite3_db_filename(db, "main");
        if (sqlite3_open_v2(file, &t->ro, SQLITE_OPEN_READONLY | SQLITE_OPEN_FULLMUTEX, NULL) !=
                SQLITE_OK ||
            sqlite3_prepare_v2(t->ro,
                               "SELECT type, size, mtime_ns, ino, digest FROM entries "
                               "WHERE manifest = ? AND path = ?",
                               -1, &t->look, NULL) != SQLITE_OK)
            luaL_error(L, "hash: journal: %s", sqlite3_errmsg(t->ro));
        sqlite3_busy_timeout(t->ro, 5000);
        t->look_id = resume ? id : quick_id;
        t->resume = resume;
    }
    hrun_HashOpts o = {root, algo, threads, onefs, exclude, lookup, t, progress != 0};
    if ((t->pool = hrun_hashpool_start(&o)) == NULL) {
        int err = errno;
        lua_settop(L, top);
        luaL_error(L, "hash.tree: %s: %s", root, strerror(err)); /* checked by the caller first */
    }
    size_t dlen = hrun_algo_size(algo);
    double started = hrun_monotime(), last_report = 0, last_commit = started;
    int batch = 0, done = 0, interrupted = 0, commits = 0, crash_at = 0, batch_max = 20000;
    const char *crash = getenv("HRUN_TEST_CRASH");
    if (crash && sscanf(crash, "hash-commit:%d", &crash_at) == 1) batch_max = 1000;
    while (!done) {
        hrun_Entry *list = hrun_hashpool_take(t->pool, 0.1, &done);
        for (hrun_Entry *e = list; e; e = e->next) {
            if (batch == 0) exec_sql(L, db, "BEGIN IMMEDIATE");
            insert(L, t, id, e, dlen);
            batch++;
        }
        hrun_entry_free(list);
        double now = hrun_monotime();
        if (batch > 0 && (batch >= batch_max || now - last_commit > 1 || done)) {
            exec_sql(L, db, "COMMIT");
            batch = 0, last_commit = now;
            /* the test suite's fault injection: killed after the Nth committed batch */
            if (crash_at > 0 && ++commits == crash_at) raise(SIGKILL);
        }
        if (hrun_interrupted() && !interrupted) {
            interrupted = 1;
            hrun_hashpool_cancel(t->pool);
        }
        if (progress && (now - last_report >= 0.25 || done)) {
            report(L, progress, t->pool, started);
            last_report = now;
        }
    }
    if (batch > 0) exec_sql(L, db, "COMMIT");
    lua_settop(L, top); /* closes the pool */
    if (interrupted) hrun_raiseinterrupt(L);
}

/* Removes a manifest and its entries (inside the caller's transaction, if any). */
static void drop_manifest(lua_State *L, sqlite3 *db, sqlite3_int64 id)
{
    char sql[128];
    snprintf(sql, sizeof sql,
             "DELETE FROM entries WHERE manifest = %lld; DELETE FROM manifests WHERE id = %lld",
             (long long)id, (long long)id);
    exec_sql(L, db, sql);
}

static const char *const tree_options[] = {
    "algo", "threads", "exclude", "one_file_system", "save", "progress", "resume", "quick", NULL};

/*
** hash.tree(root [, {algo, threads, exclude, one_file_system, save, resume, quick,
**   progress}]) → {id, name, root, algo, files, bytes, entries, errors, complete,
**   seconds} | nil, message, code
** Every entry under root (not following symlinks) into a manifest of the journal: save =
** NAME names it (replacing an older one of that name); resume = true continues the
** manifest NAME that a killed hash left; quick = NAME trusts NAME's digests for files
** whose size, mtime and inode did not change. complete is false when some entry could
** not be read (its error is recorded).
*/
static int hash_tree(lua_State *L)
{
    const char *root = hrun_checkpath(L, 1, NULL);
    hrun_checkopts(L, 2, tree_options);
    enum hrun_algo algo = check_algo(L, 2);
    const char *name = hrun_optstring(L, 2, "save", NULL, NULL);
    int resume = hrun_optbool(L, 2, "resume", 0);
    const char *quick = hrun_optstring(L, 2, "quick", NULL, NULL);
    if (resume && name == NULL)
        luaL_argerror(L, 2, "resume needs the manifest's name (save = NAME)");
    char real[4096];
    struct stat st;
    if (realpath(root, real) == NULL) return hrun_fail(L, "hash.tree", root, errno);
    if (stat(real, &st) < 0 || !S_ISDIR(st.st_mode))
        return hrun_fail(L, "hash.tree", root, ENOTDIR);
    if (access(real, R_OK | X_OK) < 0) return hrun_fail(L, "hash.tree", root, errno);
    sqlite3 *db = journal_db(L);
    if (!sqlite3_get_autocommit(db)) exec_sql(L, db, "COMMIT");
    sqlite3_int64 id = 0, quick_id = 0;
    if (quick) {
        lua_pushstring(L, quick);
        quick_id = manifest_id(L, db, lua_gettop(L));
        lua_pop(L, 1);
        if (!quick_id) return hrun_failf(L, "ENOENT", "hash.tree: no manifest named '%s'", quick);
    }
    if (name) {
        lua_pushstring(L, name);
        id = manifest_id(L, db, lua_gettop(L));
        lua_pop(L, 1);
    }
    sqlite3_stmt *st2;
    if (resume) {
        if (!id)
            return hrun_failf(L, "ENOENT", "hash.tree: no manifest named '%s' to resume", name);
        st2 = prep(L, db, "SELECT status, algo, root FROM manifests WHERE id = ?");
        sqlite3_bind_int64(st2, 1, id);
        sqlite3_step(st2);
        int ok = strcmp((const char *)sqlite3_column_text(st2, 0), "complete") != 0;
        int same = strcmp((const char *)sqlite3_column_text(st2, 1), hrun_algo_name(algo)) == 0;
        sqlite3_finalize(st2);
        if (!ok)
            return hrun_failf(L, "EEXIST",
                              "hash.tree: manifest '%s' is complete: nothing to resume", name);
        if (!same)
            return hrun_failf(L, "EINVAL", "hash.tree: manifest '%s' was not hashed with %s", name,
                              hrun_algo_name(algo));
        st2 = prep(L, db, "UPDATE manifests SET status = 'running' WHERE id = ?");
        sqlite3_bind_int64(st2, 1, id);
    } else {
        exec_sql(L, db, "BEGIN IMMEDIATE");
        if (id) drop_manifest(L, db, id); /* a new hash of that name replaces the old */
        st2 = prep(L, db,
                   "INSERT INTO manifests (name, root, algo, status, started, options) "
                   "VALUES (?, ?, ?, 'running', ?, ?)");
        if (name)
            sqlite3_bind_text(st2, 1, name, -1, SQLITE_TRANSIENT);
        else
            sqlite3_bind_null(st2, 1);
        sqlite3_bind_blob(st2, 2, real, (int)strlen(real), SQLITE_TRANSIENT);
        sqlite3_bind_text(st2, 3, hrun_algo_name(algo), -1, SQLITE_STATIC);
        sqlite3_bind_double(st2, 4, hrun_walltime());
        sqlite3_bind_text(
            st2, 5, hrun_optbool(L, 2, "one_file_system", 0) ? "{\"one_file_system\":true}" : "{}",
            -1, SQLITE_STATIC);
    }
    int rc = sqlite3_step(st2);
    sqlite3_finalize(st2);
    if (rc != SQLITE_DONE) db_fail(L, db);
    if (!resume) {
        id = sqlite3_last_insert_rowid(db);
        exec_sql(L, db, "COMMIT");
    }
    hash_into(L, 2, real, algo, db, id, quick_id, resume);
    st2 = prep(L, db,
               "UPDATE manifests SET status = CASE WHEN EXISTS (SELECT 1 FROM entries WHERE "
               "manifest = ?1 AND error IS NOT NULL) THEN 'incomplete' ELSE 'complete' END, "
               "ended = ?2 WHERE id = ?1");
    sqlite3_bind_int64(st2, 1, id);
    sqlite3_bind_double(st2, 2, hrun_walltime());
    rc = sqlite3_step(st2);
    sqlite3_finalize(st2);
    if (rc != SQLITE_DONE) db_fail(L, db);
    push_manifest(L, db, id);
    return 1;
}

/* }====================================================== */

/* {======================================================
** Differences between two manifests
** ======================================================= */

/* [-0, +0, e] Fills list `field` of the table on top with the paths the query gives. */
static void collect(lua_State *L, sqlite3 *db, const char *field, const char *sql, sqlite3_int64 a,
                    sqlite3_int64 b, int files_only)
{
    sqlite3_stmt *st = prep(L, db, sql);
    sqlite3_bind_int64(st, 1, a);
    sqlite3_bind_int64(st, 2, b);
    sqlite3_bind_int(st, 3, files_only);
    lua_newtable(L);
    lua_Integer n = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        lua_pushlstring(L, (const char *)sqlite3_column_blob(st, 0),
                        (size_t)sqlite3_column_bytes(st, 0));
        lua_rawseti(L, -2, ++n);
    }
    sqlite3_finalize(st);
    lua_setfield(L, -2, field);
}

/*
** [-0, +1, e] {ok, files, bytes, changed, missing, added, meta, errors}: what b (the
** tree now) says against a (the reference). files_only: a is an imported sha256sum
** file, a list of files to check: as with sha256sum -c, other files are not "added".
*/
static void push_diff(lua_State *L, sqlite3 *db, sqlite3_int64 a, sqlite3_int64 b, int files_only)
{
    lua_createtable(L, 0, 8);
    collect(L, db, "changed",
            "SELECT x.path FROM entries x JOIN entries y ON y.manifest = ?2 AND y.path = x.path "
            "WHERE x.manifest = ?1 AND (?3 = 0 OR x.type = 'f') AND (x.type <> y.type OR (x.type = "
            "'f' AND "
            "x.digest IS NOT y.digest AND y.error IS NULL) OR (x.type = 'l' AND x.target IS NOT "
            "y.target)) "
            "ORDER BY x.path",
            a, b, files_only);
    collect(
        L, db, "missing",
        "SELECT x.path FROM entries x WHERE x.manifest = ?1 AND NOT EXISTS (SELECT 1 FROM entries "
        "y "
        "WHERE y.manifest = ?2 AND y.path = x.path) AND (?3 = 0 OR x.type = 'f') ORDER BY x.path",
        a, b, files_only);
    collect(L, db, "added",
            "SELECT y.path FROM entries y WHERE y.manifest = ?2 AND NOT EXISTS (SELECT 1 FROM "
            "entries x "
            "WHERE x.manifest = ?1 AND x.path = y.path) AND ?3 = 0 ORDER BY y.path",
            a, b, files_only);
    /* metadata only: the same content, another mode or mtime */
    collect(
        L, db, "meta",
        "SELECT x.path FROM entries x JOIN entries y ON y.manifest = ?2 AND y.path = x.path "
        "WHERE x.manifest = ?1 AND ?3 = 0 AND x.type = y.type AND (x.type <> 'f' OR x.digest IS "
        "y.digest) "
        "AND (x.type <> 'l' OR x.target IS y.target) AND (x.mode <> y.mode OR (x.type = 'f' AND "
        "x.mtime_ns <> y.mtime_ns)) ORDER BY x.path",
        a, b, files_only);
    collect(L, db, "errors",
            "SELECT y.path || ': ' || y.error FROM entries y WHERE y.manifest = ?2 AND y.error IS "
            "NOT NULL "
            "AND (?3 = 0 OR y.type = 'f') AND ?1 = ?1 ORDER BY y.path",
            a, b, files_only);
    sqlite3_stmt *st =
        prep(L, db,
             "SELECT count(*), coalesce(sum(size), 0) FROM entries y WHERE manifest = ?2 "
             "AND type = 'f' AND (?3 = 0 OR EXISTS (SELECT 1 FROM entries x WHERE "
             "x.manifest = ?1 AND x.path = y.path))");
    sqlite3_bind_int64(st, 1, a);
    sqlite3_bind_int64(st, 2, b);
    sqlite3_bind_int(st, 3, files_only);
    sqlite3_step(st);
    lua_pushinteger(L, sqlite3_column_int64(st, 0));
    lua_setfield(L, -2, "files");
    lua_pushinteger(L, sqlite3_column_int64(st, 1));
    lua_setfield(L, -2, "bytes");
    sqlite3_finalize(st);
    int ok = 1;
    static const char *const bad[] = {"changed", "missing", "added", "errors"};
    for (int i = 0; i < 4; i++) {
        lua_getfield(L, -1, bad[i]);
        ok &= lua_rawlen(L, -1) == 0;
        lua_pop(L, 1);
    }
    lua_pushboolean(L, ok);
    lua_setfield(L, -2, "ok");
}

static int files_only(sqlite3 *db, sqlite3_int64 id)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT source IS NOT NULL FROM manifests WHERE id = ?", -1, &st,
                           NULL) != SQLITE_OK)
        return 0;
    sqlite3_bind_int64(st, 1, id);
    int yes = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return yes;
}

/* hash.compare(m1, m2) → {ok, files, bytes, changed, missing, added, meta, errors}: what
** m2 says against m1 (manifests, names or ids) */
static int hash_compare(lua_State *L)
{
    sqlite3 *db = journal_db(L);
    sqlite3_int64 a = manifest_id(L, db, 1), b = manifest_id(L, db, 2);
    if (!a)
        return hrun_failf(L, "ENOENT", "hash.compare: no manifest %s", luaL_tolstring(L, 1, NULL));
    if (!b)
        return hrun_failf(L, "ENOENT", "hash.compare: no manifest %s", luaL_tolstring(L, 2, NULL));
    push_diff(L, db, a, b, files_only(db, a));
    return 1;
}

static const char *const verify_options[] = {"quick", "threads", "progress", NULL};

/* hash.verify's work, protected: (opts, root, algo, a, b, quick) → the difference */
static int verify_body(lua_State *L)
{
    sqlite3 *db = journal_db(L);
    sqlite3_int64 a = lua_tointeger(L, 4), b = lua_tointeger(L, 5);
    hash_into(L, 1, lua_tostring(L, 2), (enum hrun_algo)lua_tointeger(L, 3), db, b,
              lua_toboolean(L, 6) ? a : 0, 0);
    push_diff(L, db, a, b, files_only(db, a));
    return 1;
}

/*
** hash.verify(manifest | name, [root,] [{quick, threads, progress}]) → {ok, files, bytes,
**   changed, missing, added, meta, errors} | nil, message, code
** Hashes root (default: the manifest's) again with the manifest's algorithm and
** compares. quick = true trusts files whose size, mtime and inode did not change.
*/
static int hash_verify(lua_State *L)
{
    int opts_at = lua_istable(L, 2) ? 2 : 3;
    hrun_checkopts(L, opts_at, verify_options);
    lua_settop(L, 3);
    sqlite3 *db = journal_db(L);
    sqlite3_int64 a = manifest_id(L, db, 1);
    if (!a)
        return hrun_failf(L, "ENOENT", "hash.verify: no manifest %s", luaL_tolstring(L, 1, NULL));
    sqlite3_stmt *st = prep(L, db, "SELECT root, algo FROM manifests WHERE id = ?");
    sqlite3_bind_int64(st, 1, a);
    sqlite3_step(st);
    lua_pushlstring(L, (const char *)sqlite3_column_blob(st, 0),
                    (size_t)sqlite3_column_bytes(st, 0));
    int algo = hrun_algo_parse((const char *)sqlite3_column_text(st, 1));
    sqlite3_finalize(st);
    const char *root =
        opts_at == 3 && !lua_isnoneornil(L, 2) ? hrun_checkpath(L, 2, NULL) : lua_tostring(L, -1);
    char real[4096];
    if (realpath(root, real) == NULL) return hrun_fail(L, "hash.verify", root, errno);
    if (!sqlite3_get_autocommit(db)) exec_sql(L, db, "COMMIT");
    st = prep(L, db,
              "INSERT INTO manifests (name, root, algo, status, started) VALUES (NULL, ?, ?, "
              "'running', ?)");
    sqlite3_bind_blob(st, 1, real, (int)strlen(real), SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, hrun_algo_name((enum hrun_algo)algo), -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 3, hrun_walltime());
    if (sqlite3_step(st) != SQLITE_DONE) db_fail(L, db);
    sqlite3_finalize(st);
    sqlite3_int64 b = sqlite3_last_insert_rowid(db);
    int quick = hrun_optbool(L, opts_at, "quick", 0);
    /* the verification's own hash is a scratch manifest, gone afterwards — also when the
    ** hash is interrupted or fails */
    lua_pushcfunction(L, verify_body);
    lua_pushvalue(L, opts_at);
    lua_pushstring(L, real);
    lua_pushinteger(L, algo);
    lua_pushinteger(L, a);
    lua_pushinteger(L, b);
    lua_pushboolean(L, quick);
    int status = lua_pcall(L, 6, 1, 0);
    if (!sqlite3_get_autocommit(db)) exec_sql(L, db, "ROLLBACK");
    drop_manifest(L, db, b);
    if (status != LUA_OK) return lua_error(L);
    return 1;
}

/* }====================================================== */

/* {======================================================
** Interop: sha256sum, b2sum and xxhsum files
** ======================================================= */

/* The algorithm a format implies (-1: any). */
static int format_algo(const char *format)
{
    if (strcmp(format, "sha256sum") == 0) return HRUN_SHA256;
    if (strcmp(format, "b2sum") == 0) return HRUN_BLAKE2B;
    if (strcmp(format, "xxhsum") == 0) return HRUN_XXH128;
    return -1;
}

static const char *check_format(lua_State *L, int arg, int hrun)
{
    const char *format = hrun_optstring(L, arg, "format", "sha256sum", NULL);
    if (strcmp(format, "sha256sum") && strcmp(format, "b2sum") && strcmp(format, "xxhsum") &&
        strcmp(format, "coreutils") && !(hrun && strcmp(format, "hrun") == 0))
        luaL_argerror(
            L, arg,
            lua_pushfstring(L, "field 'format': sha256sum, b2sum, xxhsum, coreutils%s, not '%s'",
                            hrun ? " or hrun" : "", format));
    return format;
}

/* [-0, +0, m] One JSON line (compact, sorted keys) of obj into b; obj is released. */
static void add_json_line(luaL_Buffer *b, json_t *obj)
{
    char *line = json_dumps(obj, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(obj);
    if (line == NULL) return;
    luaL_addstring(b, line);
    luaL_addchar(b, '\n');
    free(line);
}

static json_t *hex_of(const unsigned char *d, size_t n)
{
    char buf[2 * 64 + 1];
    if (n > 64) n = 64;
    for (size_t i = 0; i < n; i++) {
        buf[2 * i] = hexdigits[d[i] >> 4];
        buf[2 * i + 1] = hexdigits[d[i] & 15];
    }
    return json_stringn(buf, 2 * n);
}

/* [-0, +0, m] A byte string as a JSON field: key (valid UTF-8) or key_hex (any bytes). */
static void set_bytes(json_t *obj, const char *key, const void *s, size_t n)
{
    json_t *v = json_stringn(s, n); /* NULL: not valid UTF-8 */
    if (v) {
        json_object_set_new(obj, key, v);
        return;
    }
    char hkey[32];
    snprintf(hkey, sizeof hkey, "%s_hex", key);
    char *h = malloc(2 * n + 1);
    if (h == NULL) return;
    for (size_t i = 0; i < n; i++) {
        h[2 * i] = hexdigits[((const unsigned char *)s)[i] >> 4];
        h[2 * i + 1] = hexdigits[((const unsigned char *)s)[i] & 15];
    }
    json_object_set_new(obj, hkey, json_stringn(h, 2 * n));
    free(h);
}

/* The hrun format: a header line with the manifest, then every entry (files, links,
** directories, specials) with its metadata, as JSON lines in path order. */
static void export_hrun(lua_State *L, sqlite3 *db, sqlite3_int64 id, luaL_Buffer *b)
{
    static const char *const types[][2] = {
        {"f", "file"}, {"l", "link"}, {"d", "dir"}, {"s", "special"}};
    sqlite3_stmt *st =
        prep(L, db,
             "SELECT root, algo, status, "
             "(SELECT count(*) FROM entries WHERE manifest = m.id AND type = 'f'), "
             "(SELECT coalesce(sum(size), 0) FROM entries WHERE manifest = m.id AND type = 'f'), "
             "(SELECT count(*) FROM entries WHERE manifest = m.id AND error IS NOT NULL), "
             "name, started, ended FROM manifests m WHERE id = ?");
    sqlite3_bind_int64(st, 1, id);
    if (sqlite3_step(st) == SQLITE_ROW) {
        json_t *h = json_object();
        json_object_set_new(h, "hrun_manifest", json_integer(1));
        set_bytes(h, "root", sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0));
        json_object_set_new(h, "algo", json_string((const char *)sqlite3_column_text(st, 1)));
        json_object_set_new(h, "status", json_string((const char *)sqlite3_column_text(st, 2)));
        json_object_set_new(h, "files", json_integer(sqlite3_column_int64(st, 3)));
        json_object_set_new(h, "bytes", json_integer(sqlite3_column_int64(st, 4)));
        json_object_set_new(h, "errors", json_integer(sqlite3_column_int64(st, 5)));
        if (sqlite3_column_type(st, 6) != SQLITE_NULL)
            json_object_set_new(h, "name", json_string((const char *)sqlite3_column_text(st, 6)));
        json_object_set_new(h, "started", json_real(sqlite3_column_double(st, 7)));
        if (sqlite3_column_type(st, 8) != SQLITE_NULL)
            json_object_set_new(h, "ended", json_real(sqlite3_column_double(st, 8)));
        add_json_line(b, h);
    }
    sqlite3_finalize(st);
    st = prep(
        L, db,
        "SELECT path, type, size, mode, mtime_ns, dev, ino, target, digest, error FROM entries "
        "WHERE manifest = ? ORDER BY path");
    sqlite3_bind_int64(st, 1, id);
    while (sqlite3_step(st) == SQLITE_ROW) {
        json_t *e = json_object();
        set_bytes(e, "path", sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0));
        const char *t = (const char *)sqlite3_column_text(st, 1);
        for (size_t i = 0; t && i < sizeof types / sizeof types[0]; i++)
            if (strcmp(t, types[i][0]) == 0)
                json_object_set_new(e, "type", json_string(types[i][1]));
        static const char *const ints[] = {"size", "mode", "mtime_ns", "dev", "ino"};
        for (int i = 0; i < 5; i++)
            if (sqlite3_column_type(st, 2 + i) != SQLITE_NULL)
                json_object_set_new(e, ints[i], json_integer(sqlite3_column_int64(st, 2 + i)));
        if (sqlite3_column_type(st, 7) != SQLITE_NULL)
            set_bytes(e, "target", sqlite3_column_blob(st, 7), (size_t)sqlite3_column_bytes(st, 7));
        if (sqlite3_column_type(st, 8) != SQLITE_NULL)
            json_object_set_new(
                e, "digest",
                hex_of(sqlite3_column_blob(st, 8), (size_t)sqlite3_column_bytes(st, 8)));
        if (sqlite3_column_type(st, 9) != SQLITE_NULL)
            json_object_set_new(e, "error", json_string((const char *)sqlite3_column_text(st, 9)));
        add_json_line(b, e);
    }
    sqlite3_finalize(st);
}

/* export's inverse is fs.write's: the file it replaces comes back */
static int hash_export_inverse(lua_State *L)
{
    lua_settop(L, 2);
    lua_remove(L, 1);
    return hrun_inverse(L, "fs.write", 1);
}

static const char *const export_options[] = {"format", NULL};

/* [-1, +(1|3), e] Writes the text on top to the file at arg 2 — fs.write's body (atomic
** and durable; not a second journaled effect: hash.export is the one) — and returns it. */
static int write_export(lua_State *L)
{
    lua_pushcfunction(L, hrun_fs_write);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, -3);
    lua_call(L, 2, 3);
    if (lua_isnil(L, -3)) return 3;
    lua_pushvalue(L, 2);
    return 1;
}

/*
** hash.export(manifest | name, file [, {format = "sha256sum"}]) → file | nil, msg, code
** The manifest's files, one line each: "<digest>  <path>" relative to its root — GNU
** coreutils' format (a name with a backslash or a newline escaped, the line starting
** with a backslash) for sha256sum, b2sum and coreutils; xxhsum's (no escaping) for
** xxhsum. The format must match the manifest's algorithm. format = "hrun": JSON lines,
** the manifest first, then every entry with its metadata (any algorithm). Written
** atomically.
*/
static int hash_export(lua_State *L)
{
    hrun_checkpath(L, 2, NULL);
    hrun_checkopts(L, 3, export_options);
    const char *format = check_format(L, 3, 1);
    sqlite3 *db = journal_db(L);
    sqlite3_int64 id = manifest_id(L, db, 1);
    if (!id)
        return hrun_failf(L, "ENOENT", "hash.export: no manifest %s", luaL_tolstring(L, 1, NULL));
    luaL_Buffer b;
    if (strcmp(format, "hrun") == 0) {
        luaL_buffinit(L, &b);
        export_hrun(L, db, id, &b);
        luaL_pushresult(&b);
        return write_export(L);
    }
    sqlite3_stmt *st = prep(L, db, "SELECT algo FROM manifests WHERE id = ?");
    sqlite3_bind_int64(st, 1, id);
    sqlite3_step(st);
    int algo = hrun_algo_parse((const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    int want = format_algo(format);
    if (want >= 0 && want != algo)
        return hrun_failf(L, "EINVAL", "hash.export: the manifest is %s; the %s format needs %s",
                          hrun_algo_name((enum hrun_algo)algo), format,
                          hrun_algo_name((enum hrun_algo)want));
    int escape = strcmp(format, "xxhsum") != 0;
    luaL_buffinit(L, &b);
    st = prep(
        L, db,
        "SELECT path, digest FROM entries WHERE manifest = ? AND type = 'f' AND digest IS NOT NULL "
        "ORDER BY path");
    sqlite3_bind_int64(st, 1, id);
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *path = sqlite3_column_blob(st, 0);
        size_t plen = (size_t)sqlite3_column_bytes(st, 0);
        const unsigned char *d = sqlite3_column_blob(st, 1);
        int dlen = sqlite3_column_bytes(st, 1);
        if (!escape && (memchr(path, '\n', plen) || memchr(path, '\r', plen))) {
            /* xxhsum has no escaping: the line would read back as another name */
            lua_pushlstring(L, path, plen);
            sqlite3_finalize(st);
            return hrun_failf(L, "EINVAL",
                              "hash.export: %s: a name with a newline cannot be written in "
                              "xxhsum's format (use coreutils' format, which escapes it)",
                              lua_tostring(L, -1));
        }
        int special = escape && (memchr(path, '\\', plen) || memchr(path, '\n', plen) ||
                                 memchr(path, '\r', plen));
        if (special) luaL_addchar(&b, '\\');
        for (int i = 0; i < dlen; i++) {
            luaL_addchar(&b, hexdigits[d[i] >> 4]);
            luaL_addchar(&b, hexdigits[d[i] & 15]);
        }
        luaL_addstring(&b, "  ");
        for (size_t i = 0; i < plen; i++) {
            char c = path[i];
            if (special && c == '\\')
                luaL_addstring(&b, "\\\\");
            else if (special && c == '\n')
                luaL_addstring(&b, "\\n");
            else if (special && c == '\r')
                luaL_addstring(&b, "\\r");
            else
                luaL_addchar(&b, c);
        }
        luaL_addchar(&b, '\n');
    }
    sqlite3_finalize(st);
    luaL_pushresult(&b);
    return write_export(L);
}

static int unhex(int c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

static const char *const import_options[] = {"format", "root", "name", NULL};

/*
** hash.import(file [, {format = "sha256sum", root, name}]) → manifest | nil, msg, code
** Reads a sha256sum, b2sum, xxhsum or coreutils-format file (backslash escapes
** understood) into a manifest of its files, relative to root (default: the file's
** directory). The algorithm comes from the format, or from the digests' length.
*/
static int hash_import(lua_State *L)
{
    const char *file = hrun_checkpath(L, 1, NULL);
    hrun_checkopts(L, 2, import_options);
    const char *format = check_format(L, 2, 0);
    const char *root = hrun_optstring(L, 2, "root", NULL, NULL);
    const char *name = hrun_optstring(L, 2, "name", NULL, NULL);
    lua_settop(L, 2);
    FILE *f = fopen(file, "rb");
    if (f == NULL) return hrun_fail(L, "hash.import", file, errno);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) luaL_addlstring(&b, chunk, n);
    int err = ferror(f) ? errno : 0;
    fclose(f);
    luaL_pushresult(&b); /* 3 */
    if (err) return hrun_fail(L, "hash.import", file, err);
    char dir[4096], real[4096];
    if (root == NULL) {
        snprintf(dir, sizeof dir, "%s", file);
        char *slash = strrchr(dir, '/');
        if (slash)
            *slash = '\0';
        else
            snprintf(dir, sizeof dir, ".");
        root = dir;
    }
    if (realpath(root, real) == NULL) return hrun_fail(L, "hash.import", root, errno);
    size_t len;
    const char *text = lua_tolstring(L, 3, &len);
    sqlite3 *db = journal_db(L);
    if (!sqlite3_get_autocommit(db)) exec_sql(L, db, "COMMIT");
    int algo = format_algo(format);
    exec_sql(L, db, "BEGIN IMMEDIATE");
    if (name) {
        lua_pushstring(L, name);
        sqlite3_int64 old = manifest_id(L, db, lua_gettop(L));
        lua_pop(L, 1);
        if (old) drop_manifest(L, db, old);
    }
    sqlite3_stmt *st =
        prep(L, db,
             "INSERT INTO manifests (name, root, algo, status, started, ended, source) "
             "VALUES (?, ?, '?', 'complete', ?, ?, ?)");
    if (name)
        sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, 1);
    sqlite3_bind_blob(st, 2, real, (int)strlen(real), SQLITE_TRANSIENT);
    sqlite3_bind_double(st, 3, hrun_walltime());
    sqlite3_bind_double(st, 4, hrun_walltime());
    sqlite3_bind_text(st, 5, file, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) != SQLITE_DONE) {
        exec_sql(L, db, "ROLLBACK");
        db_fail(L, db);
    }
    sqlite3_finalize(st);
    sqlite3_int64 id = sqlite3_last_insert_rowid(db);
    st =
        prep(L, db,
             "INSERT OR REPLACE INTO entries (manifest, path, type, digest) VALUES (?, ?, 'f', ?)");
    luaL_Buffer pb;
    int lineno = 0;
    for (const char *p = text, *end = text + len; p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL) eol = end;
        lineno++;
        const char *q = p;
        p = eol + 1;
        if (q == eol) continue;
        int escaped = *q == '\\';
        if (escaped) q++;
        unsigned char digest[64];
        int dlen = 0;
        while (q + 1 < eol && unhex(q[0]) >= 0 && unhex(q[1]) >= 0 && dlen < 64) {
            digest[dlen++] = (unsigned char)(unhex(q[0]) << 4 | unhex(q[1]));
            q += 2;
        }
        int line_algo = dlen == 16   ? HRUN_XXH128
                        : dlen == 32 ? HRUN_SHA256
                        : dlen == 64 ? HRUN_BLAKE2B
                                     : -1;
        if (line_algo < 0 || q + 2 > eol || q[0] != ' ' || (q[1] != ' ' && q[1] != '*') ||
            (algo >= 0 && line_algo != algo)) {
            sqlite3_finalize(st);
            exec_sql(L, db, "ROLLBACK");
            return hrun_failf(L, "EINVAL", "hash.import: %s:%d: not a %s line", file, lineno,
                              format);
        }
        algo = line_algo;
        q += 2;
        luaL_buffinit(L, &pb);
        for (; q < eol; q++) {
            if (escaped && *q == '\\' && q + 1 < eol) {
                q++;
                luaL_addchar(&pb, *q == 'n' ? '\n' : *q == 'r' ? '\r' : *q);
            } else {
                luaL_addchar(&pb, *q);
            }
        }
        luaL_pushresult(&pb);
        size_t plen;
        const char *path = lua_tolstring(L, -1, &plen);
        while (plen > 2 && path[0] == '.' && path[1] == '/') path += 2, plen -= 2;
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_blob(st, 2, path, (int)plen, SQLITE_TRANSIENT);
        sqlite3_bind_blob(st, 3, digest, dlen, SQLITE_TRANSIENT);
        if (sqlite3_step(st) != SQLITE_DONE) db_fail(L, db);
        lua_pop(L, 1);
    }
    sqlite3_finalize(st);
    if (algo < 0) {
        exec_sql(L, db, "ROLLBACK");
        return hrun_failf(L, "EINVAL", "hash.import: %s: no digests in it", file);
    }
    st = prep(L, db, "UPDATE manifests SET algo = ? WHERE id = ?");
    sqlite3_bind_text(st, 1, hrun_algo_name((enum hrun_algo)algo), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, id);
    sqlite3_step(st);
    sqlite3_finalize(st);
    exec_sql(L, db, "COMMIT");
    push_manifest(L, db, id);
    return 1;
}

/* hash.manifests() → the named manifests, newest first */
static int hash_manifests(lua_State *L)
{
    sqlite3 *db = journal_db(L);
    sqlite3_stmt *st =
        prep(L, db, "SELECT id FROM manifests WHERE name IS NOT NULL ORDER BY id DESC");
    lua_newtable(L);
    lua_Integer n = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        push_manifest(L, db, sqlite3_column_int64(st, 0));
        lua_rawseti(L, -2, ++n);
    }
    sqlite3_finalize(st);
    return 1;
}

/* }====================================================== */

/* hash.import(file, {root}): the file it reads, and the root it describes. */
static int import_targets(lua_State *L, hrun_Target *t)
{
    return hrun_targets_field(L, 2, "root", t, hrun_targets_arg1(L, t), NULL);
}

static const hrun_Prim hash_prims[] = {
    {.name = "file",
     .func = hash_file,
     .kind = HRUN_READ,
     .cap = "hash",
     .targets = hrun_targets_arg1},
    {.name = "tree",
     .func = hash_tree,
     .kind = HRUN_READ,
     .cap = "hash",
     .targets = hrun_targets_arg1},
    {.name = "verify",
     .func = hash_verify,
     .kind = HRUN_READ,
     .cap = "hash",
     .targets = hrun_targets_arg2},
    {.name = "compare", .func = hash_compare, .kind = HRUN_READ, .cap = "hash"},
    {.name = "import",
     .func = hash_import,
     .kind = HRUN_READ,
     .cap = "hash",
     .targets = import_targets},
    {.name = "manifests", .func = hash_manifests, .kind = HRUN_READ, .cap = "hash"},
    {.name = "export",
     .func = hash_export,
     .kind = HRUN_WRITE,
     .cap = "hash",
     .inverse = hash_export_inverse,
     .targets = hrun_targets_arg2},
    {0},
};

int luaopen_hrun_hash(lua_State *L)
{
    hrun_newmodule(L, "hash", hash_prims);
    return 1;
}
