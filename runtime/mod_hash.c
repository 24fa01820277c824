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
#include "hrun/manifest.h"
#include "internal.h"

#define TREE_TYPE    "hrun.hash.tree"
#define STREAMS_TYPE "hrun.hash.streams"

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

/* The root manifest id describes, copied into buf; NULL when it has none. */
static const char *manifest_root(lua_State *L, sqlite3 *db, sqlite3_int64 id, char *buf,
                                 size_t size);

/* A sandboxed playbook uses a manifest only when it may hash the tree it describes: one
** another run made of a tree beyond its capabilities is not its to read, verify, export
** or replace (the manifests are all in one journal). prim names the call refused. */
static void require_manifest(lua_State *L, sqlite3 *db, sqlite3_int64 id, const char *prim)
{
    char root[PATH_MAX];
    if (id == 0 || manifest_root(L, db, id, root, sizeof root) == NULL) return;
    hrun_Target t = {"hash", root, NULL, 0, 0};
    hrun_sandbox_require(L, prim, &t);
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

static const char *manifest_root(lua_State *L, sqlite3 *db, sqlite3_int64 id, char *buf,
                                 size_t size)
{
    sqlite3_stmt *st = prep(L, db, "SELECT root FROM manifests WHERE id = ?");
    sqlite3_bind_int64(st, 1, id);
    const char *out = NULL;
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
        const void *root = sqlite3_column_blob(st, 0); /* text or blob: the path's bytes */
        size_t n = (size_t)sqlite3_column_bytes(st, 0);
        if (root && n < size && memchr(root, '\0', n) == NULL) {
            memcpy(buf, root, n);
            buf[n] = '\0';
            out = buf;
        }
    }
    sqlite3_finalize(st);
    return out;
}

/* [-0, +1, e] The manifest's row as a table. */
static void push_manifest(lua_State *L, sqlite3 *db, sqlite3_int64 id)
{
    sqlite3_stmt *st = prep(L, db,
                            "SELECT id, name, root, algo, status, started, ended, source, files, "
                            "bytes, entries, errors FROM manifests WHERE id = ?");
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
** A manifest's entries, written and read in path order (hrun/manifest.h); the
** packers and cursors live in a to-be-closed userdata, so a Lua error leaks none
** ======================================================= */
typedef struct Streams {
    hrun_Packer packer;
    int packing;
    hrun_Cursor cursor[2];
    int cursors;
} Streams;

static void streams_release(Streams *s)
{
    if (s->packing) hrun_packer_free(&s->packer);
    s->packing = 0;
    for (int i = 0; i < s->cursors; i++) hrun_cursor_close(&s->cursor[i]);
    s->cursors = 0;
}

static int streams_close(lua_State *L)
{
    streams_release(luaL_checkudata(L, 1, STREAMS_TYPE));
    return 0;
}

/* [-0, +1, e] A new Streams, to be closed with the caller's frame. */
static Streams *new_streams(lua_State *L)
{
    Streams *s = lua_newuserdatauv(L, sizeof(Streams), 0);
    memset(s, 0, sizeof *s);
    hrun_setclose(L, STREAMS_TYPE, streams_close, NULL);
    lua_toclose(L, -1);
    return s;
}

/* [-0, +0, e] Opens a cursor over manifest id in s. */
static hrun_Cursor *open_cursor(lua_State *L, Streams *s, sqlite3 *db, sqlite3_int64 id)
{
    hrun_Cursor *c = &s->cursor[s->cursors];
    if (hrun_cursor_open(c, db, id) != SQLITE_OK) db_fail(L, db);
    s->cursors++;
    return c;
}

/* [-0, +0, e] The cursor's next entry: 1, or 0 at the end; raises when it cannot be read. */
static int next_entry(lua_State *L, sqlite3 *db, hrun_Cursor *c, hrun_MEntry *e)
{
    int r = hrun_cursor_next(c, e);
    if (r < 0)
        luaL_error(L, "hash: journal: %s",
                   c->rc == SQLITE_CORRUPT ? "a manifest's entries do not decode"
                                           : sqlite3_errmsg(db));
    return r;
}

/* [-0, +0, e] Starts the packer of s on manifest id. */
static hrun_Packer *open_packer(lua_State *L, Streams *s, sqlite3 *db, sqlite3_int64 id)
{
    s->packing = 1;
    if (hrun_packer_init(&s->packer, db, id) != SQLITE_OK) db_fail(L, db);
    return &s->packer;
}

static void packer_check(lua_State *L, sqlite3 *db, int rc)
{
    if (rc == SQLITE_NOMEM) luaL_error(L, "hash: journal: out of memory");
    if (rc != SQLITE_OK) db_fail(L, db);
}

/* }====================================================== */

/* {======================================================
** Hashing a tree into a manifest
** ======================================================= */

typedef struct Tree {
    hrun_HashPool *pool;
    sqlite3 *db;
    /* its packer writes the manifest; with quick, its cursor reads the earlier one in step
    ** with the walk, on the walker's own read-only connection ro */
    Streams io;
    sqlite3 *ro;
    int has; /* cur is the earlier manifest's next entry */
    hrun_MEntry cur;
} Tree;

static int tree_close(lua_State *L)
{
    Tree *t = luaL_checkudata(L, 1, TREE_TYPE);
    hrun_hashpool_free(t->pool); /* first: the walker reads the earlier manifest */
    t->pool = NULL;
    streams_release(&t->io);
    sqlite3_close_v2(t->ro);
    t->ro = NULL;
    /* what was written is a prefix of the walk: kept, a resume continues after it */
    if (t->db && !sqlite3_get_autocommit(t->db)) sqlite3_exec(t->db, "COMMIT", NULL, NULL, NULL);
    t->db = NULL;
    return 0;
}

/* The walker's question (its thread, in path order): what did the earlier manifest say of
** this path? Both go in path order: one merge. A manifest that cannot be read only
** means hashing everything. */
static void lookup(void *ud, hrun_Entry *e)
{
    Tree *t = ud;
    while (t->has && hrun_pathcmp(t->cur.path, t->cur.pathlen, e->path, e->pathlen) < 0)
        t->has = hrun_cursor_next(&t->io.cursor[0], &t->cur) > 0;
    if (!t->has || t->cur.pathlen != e->pathlen || memcmp(t->cur.path, e->path, e->pathlen) != 0)
        return;
    if (e->type == 'f' && t->cur.type == 'f' && t->cur.has_meta && t->cur.dlen > 0 &&
        !t->cur.error) {
        hrun_Prior *p = &e->prior;
        p->valid = 1;
        p->size = t->cur.size, p->ino = t->cur.ino, p->mtime_ns = t->cur.mtime_ns;
        memcpy(p->digest, t->cur.digest, t->cur.dlen);
        p->dlen = t->cur.dlen;
    }
}

static void add_entry(lua_State *L, Tree *t, const hrun_Entry *e, size_t dlen)
{
    hrun_MEntry m = {
        .path = e->path,
        .pathlen = e->pathlen,
        .type = e->type,
        .has_meta = e->statted,
        .size = e->size,
        .dev = e->dev,
        .ino = e->ino,
        .mode = e->mode,
        .mtime_ns = e->mtime_ns,
        .target = e->target,
        .targetlen = e->target ? strlen(e->target) : 0,
        .digest = e->has_digest ? e->digest : NULL,
        .dlen = e->has_digest ? dlen : 0,
        .error = e->err ? strerror(e->err) : NULL,
    };
    m.errlen = m.error ? strlen(m.error) : 0;
    packer_check(L, t->db, hrun_packer_add(&t->io.packer, &m));
}

/* [-0, +0, e] Commits what was written since the last commit. */
static void commit(lua_State *L, Tree *t, int crash_at, int *commits)
{
    packer_check(L, t->db, hrun_packer_flush(&t->io.packer));
    exec_sql(L, t->db, "COMMIT");
    /* the test suite's fault injection: killed after the Nth committed batch */
    if (crash_at > 0 && ++*commits == crash_at) raise(SIGKILL);
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
** digests are trusted for unchanged files (0: none); after (afterlen bytes): resuming,
** the last path id has (NULL: none).
*/
static void hash_into(lua_State *L, int arg, const char *root, enum hrun_algo algo, sqlite3 *db,
                      sqlite3_int64 id, sqlite3_int64 quick_id, const char *after, size_t afterlen)
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
    hrun_setclose(L, TREE_TYPE, tree_close, NULL);
    lua_toclose(L, -1);
    t->db = db;
    /* what is open (the runner's pending writes) is committed: the batches are ours */
    if (!sqlite3_get_autocommit(db)) exec_sql(L, db, "COMMIT");
    open_packer(L, &t->io, db, id);
    if (quick_id) {
        const char *file = sqlite3_db_filename(db, "main");
        if (sqlite3_open_v2(file, &t->ro, SQLITE_OPEN_READONLY | SQLITE_OPEN_FULLMUTEX, NULL) !=
            SQLITE_OK)
            db_fail(L, t->ro);
        sqlite3_busy_timeout(t->ro, 5000);
        t->has = hrun_cursor_next(open_cursor(L, &t->io, t->ro, quick_id), &t->cur) > 0;
    }
    hrun_HashOpts o = {root, algo,          threads, onefs,   exclude, quick_id ? lookup : NULL,
                       t,    progress != 0, after,   afterlen};
    if ((t->pool = hrun_hashpool_start(&o)) == NULL) {
        int err = errno;
        lua_settop(L, top);
        luaL_error(L, "hash.tree: %s: %s", root, strerror(err)); /* checked by the caller first */
    }
    size_t dlen = hrun_algo_size(algo);
    double started = hrun_monotime(), last_report = 0, last_commit = started;
    int batch = 0, done = 0, interrupted = 0, commits = 0, crash_at = 0, batch_max = 100000;
    const char *crash = getenv("HRUN_TEST_CRASH");
    if (crash && sscanf(crash, "hash-commit:%d", &crash_at) == 1) batch_max = 1000;
    while (!done) {
        hrun_Entry *list = hrun_hashpool_take(t->pool, 0.1, &done);
        double now = hrun_monotime();
        for (hrun_Entry *e = list; e; e = e->next) {
            if (batch == 0) exec_sql(L, db, "BEGIN IMMEDIATE");
            add_entry(L, t, e, dlen);
            if (++batch >= batch_max) {
                commit(L, t, crash_at, &commits);
                batch = 0, last_commit = now;
            }
        }
        hrun_entry_free(list);
        if (batch > 0 && (now - last_commit > 1 || done)) { /* and every second */
            commit(L, t, crash_at, &commits);
            batch = 0, last_commit = now;
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
    lua_settop(L, top); /* closes the pool */
    if (interrupted) hrun_raiseinterrupt(L);
}

/* Removes a manifest and its entries (inside the caller's transaction, if any). */
static void drop_manifest(lua_State *L, sqlite3 *db, sqlite3_int64 id)
{
    char sql[128];
    snprintf(sql, sizeof sql,
             "DELETE FROM chunks WHERE manifest = %lld; DELETE FROM manifests WHERE id = %lld",
             (long long)id, (long long)id);
    exec_sql(L, db, sql);
}

/* [-0, +0, e] A new manifest's row (inside the caller's transaction, if any, which a
** failure rolls back); its id. An imported one (source) is complete at once. */
static sqlite3_int64 new_manifest(lua_State *L, sqlite3 *db, const char *name, const char *root,
                                  enum hrun_algo algo, const char *options, const char *source)
{
    sqlite3_stmt *st = prep(L, db,
                            "INSERT INTO manifests (name, root, algo, status, started, ended, "
                            "options, source) VALUES (?1, ?2, ?3, iif(?6 IS NULL, 'running', "
                            "'complete'), ?4, iif(?6 IS NULL, NULL, ?4), ?5, ?6)");
    if (name)
        sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, 1);
    sqlite3_bind_blob(st, 2, root, (int)strlen(root), SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, hrun_algo_name(algo), -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 4, hrun_walltime());
    if (options)
        sqlite3_bind_text(st, 5, options, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 5);
    if (source)
        sqlite3_bind_text(st, 6, source, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, 6);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        lua_pushstring(L, sqlite3_errmsg(db));
        if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        luaL_error(L, "hash: journal: %s", lua_tostring(L, -1));
    }
    return sqlite3_last_insert_rowid(db);
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
        require_manifest(L, db, quick_id, "hash.tree");
    }
    if (name) {
        lua_pushstring(L, name);
        id = manifest_id(L, db, lua_gettop(L));
        lua_pop(L, 1);
        require_manifest(L, db, id, "hash.tree"); /* the one save= replaces */
    }
    sqlite3_stmt *st2;
    const char *after = NULL;
    size_t afterlen = 0;
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
        /* the walk goes in path order and commits what it has done in that order: it
        ** continues after the last path committed, as if it had paused there */
        st2 = prep(L, db, "SELECT last FROM chunks WHERE manifest = ? ORDER BY id DESC LIMIT 1");
        sqlite3_bind_int64(st2, 1, id);
        if (sqlite3_step(st2) == SQLITE_ROW) {
            lua_pushlstring(L, sqlite3_column_blob(st2, 0), (size_t)sqlite3_column_bytes(st2, 0));
            after = lua_tolstring(L, -1, &afterlen); /* anchored on the stack */
        }
        sqlite3_finalize(st2);
        st2 = prep(L, db, "UPDATE manifests SET status = 'running' WHERE id = ?");
        sqlite3_bind_int64(st2, 1, id);
        int rc = sqlite3_step(st2);
        sqlite3_finalize(st2);
        if (rc != SQLITE_DONE) db_fail(L, db);
    } else {
        exec_sql(L, db, "BEGIN IMMEDIATE");
        if (id) drop_manifest(L, db, id); /* a new hash of that name replaces the old */
        id = new_manifest(
            L, db, name, real, algo,
            hrun_optbool(L, 2, "one_file_system", 0) ? "{\"one_file_system\":true}" : "{}", NULL);
        exec_sql(L, db, "COMMIT");
    }
    hash_into(L, 2, real, algo, db, id, quick_id, after, afterlen);
    st2 = prep(L, db,
               "UPDATE manifests SET status = CASE WHEN errors > 0 THEN 'incomplete' ELSE "
               "'complete' END, ended = ?2 WHERE id = ?1");
    sqlite3_bind_int64(st2, 1, id);
    sqlite3_bind_double(st2, 2, hrun_walltime());
    int rc = sqlite3_step(st2);
    sqlite3_finalize(st2);
    if (rc != SQLITE_DONE) db_fail(L, db);
    push_manifest(L, db, id);
    return 1;
}

/* }====================================================== */

/* {======================================================
** Differences between two manifests
** ======================================================= */

/* The same bytes, or both absent (SQL's IS). */
static int same(const void *a, size_t alen, const void *b, size_t blen)
{
    return (a == NULL) == (b == NULL) && alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

/* [-0, +0, m] Appends s to the list at index list. */
static void append(lua_State *L, int list, const char *s, size_t len)
{
    lua_pushlstring(L, s, len);
    lua_rawseti(L, list, (lua_Integer)lua_rawlen(L, list) + 1);
}

/*
** [-0, +1, e] {ok, files, bytes, changed, missing, added, meta, errors}: what b (the
** tree now) says against a (the reference), in one merge of the two in path order (the
** lists come in that order). files_only: a is an imported sha256sum file, a list of
** files to check: as with sha256sum -c, other files are not "added".
*/
static void push_diff(lua_State *L, sqlite3 *db, sqlite3_int64 a, sqlite3_int64 b, int files_only)
{
    static const char *const lists[] = {"changed", "missing", "added", "meta", "errors"};
    enum { CHANGED, MISSING, ADDED, META, ERRORS };
    int top = lua_gettop(L);
    Streams *s = new_streams(L);
    hrun_Cursor *ca = open_cursor(L, s, db, a), *cb = open_cursor(L, s, db, b);
    int list = lua_gettop(L) + 1;
    for (int i = 0; i < 5; i++) lua_newtable(L);
    hrun_MEntry x, y;
    int hx = next_entry(L, db, ca, &x), hy = next_entry(L, db, cb, &y);
    lua_Integer files = 0, bytes = 0;
    while (hx || hy) {
        int c = !hx ? 1 : !hy ? -1 : hrun_pathcmp(x.path, x.pathlen, y.path, y.pathlen);
        if (c < 0) { /* only in a */
            if (!files_only || x.type == 'f') append(L, list + MISSING, x.path, x.pathlen);
            hx = next_entry(L, db, ca, &x);
            continue;
        }
        if (y.error && (!files_only || y.type == 'f')) {
            luaL_Buffer e;
            luaL_buffinit(L, &e);
            luaL_addlstring(&e, y.path, y.pathlen);
            luaL_addstring(&e, ": ");
            luaL_addlstring(&e, y.error, y.errlen);
            luaL_pushresult(&e);
            lua_rawseti(L, list + ERRORS, (lua_Integer)lua_rawlen(L, list + ERRORS) + 1);
        }
        if (y.type == 'f' && (c == 0 || !files_only)) files++, bytes += (lua_Integer)y.size;
        if (c > 0) { /* only in b */
            if (!files_only) append(L, list + ADDED, y.path, y.pathlen);
            hy = next_entry(L, db, cb, &y);
            continue;
        }
        int digests = same(x.digest, x.dlen, y.digest, y.dlen);
        int targets = same(x.target, x.targetlen, y.target, y.targetlen);
        if (!files_only || x.type == 'f') {
            if (x.type != y.type || (x.type == 'f' && !digests && !y.error) ||
                (x.type == 'l' && !targets))
                append(L, list + CHANGED, x.path, x.pathlen);
        }
        /* metadata only: the same content, another mode or mtime */
        if (!files_only && x.type == y.type && (x.type != 'f' || digests) &&
            (x.type != 'l' || targets) && x.has_meta && y.has_meta &&
            (x.mode != y.mode || (x.type == 'f' && x.mtime_ns != y.mtime_ns)))
            append(L, list + META, x.path, x.pathlen);
        hx = next_entry(L, db, ca, &x);
        hy = next_entry(L, db, cb, &y);
    }
    lua_createtable(L, 0, 8);
    int ok = 1;
    for (int i = 0; i < 5; i++) {
        if (i != META) ok &= lua_rawlen(L, list + i) == 0;
        lua_pushvalue(L, list + i);
        lua_setfield(L, -2, lists[i]);
    }
    lua_pushboolean(L, ok);
    lua_setfield(L, -2, "ok");
    lua_pushinteger(L, files);
    lua_setfield(L, -2, "files");
    lua_pushinteger(L, bytes);
    lua_setfield(L, -2, "bytes");
    lua_closeslot(L, top + 1); /* the cursors */
    lua_replace(L, top + 1);
    lua_settop(L, top + 1);
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
    require_manifest(L, db, a, "hash.compare");
    require_manifest(L, db, b, "hash.compare");
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
              lua_toboolean(L, 6) ? a : 0, NULL, 0);
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
    require_manifest(L, db, a, "hash.verify");
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
    sqlite3_int64 b = new_manifest(L, db, NULL, real, (enum hrun_algo)algo, NULL, NULL);
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
static void export_hrun(lua_State *L, sqlite3 *db, sqlite3_int64 id, hrun_Cursor *c, luaL_Buffer *b)
{
    static const char *const types[][2] = {
        {"f", "file"}, {"l", "link"}, {"d", "dir"}, {"s", "special"}};
    sqlite3_stmt *st = prep(L, db,
                            "SELECT root, algo, status, files, bytes, errors, name, started, "
                            "ended FROM manifests WHERE id = ?");
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
    hrun_MEntry m;
    while (next_entry(L, db, c, &m)) {
        json_t *e = json_object();
        set_bytes(e, "path", m.path, m.pathlen);
        for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
            if (m.type == types[i][0][0]) json_object_set_new(e, "type", json_string(types[i][1]));
        if (m.has_meta) {
            json_object_set_new(e, "size", json_integer((json_int_t)m.size));
            json_object_set_new(e, "mode", json_integer(m.mode));
            json_object_set_new(e, "mtime_ns", json_integer(m.mtime_ns));
            json_object_set_new(e, "dev", json_integer((json_int_t)m.dev));
            json_object_set_new(e, "ino", json_integer((json_int_t)m.ino));
        }
        if (m.target) set_bytes(e, "target", m.target, m.targetlen);
        if (m.dlen) json_object_set_new(e, "digest", hex_of(m.digest, m.dlen));
        if (m.error) json_object_set_new(e, "error", json_stringn(m.error, m.errlen));
        add_json_line(b, e);
    }
}

/* export's inverse is fs.write's: the file it replaces comes back */
static int hash_export_inverse(lua_State *L)
{
    lua_settop(L, 2);
    lua_remove(L, 1);
    return hrun_inverse(L, "fs.write", 1);
}

/* export's state is the file it writes (a symlink's target: written through) */
static int hash_export_state(lua_State *L)
{
    lua_settop(L, 2);
    lua_remove(L, 1);
    return hrun_state(L, "fs.write", 1);
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
    require_manifest(L, db, id, "hash.export");
    if (!id)
        return hrun_failf(L, "ENOENT", "hash.export: no manifest %s", luaL_tolstring(L, 1, NULL));
    luaL_Buffer b;
    hrun_Cursor *c = open_cursor(L, new_streams(L), db, id); /* before the buffer's slots */
    if (strcmp(format, "hrun") == 0) {
        luaL_buffinit(L, &b);
        export_hrun(L, db, id, c, &b);
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
    hrun_MEntry m;
    while (next_entry(L, db, c, &m)) {
        if (m.type != 'f' || m.dlen == 0) continue;
        const char *path = m.path;
        size_t plen = m.pathlen;
        if (!escape && (memchr(path, '\n', plen) || memchr(path, '\r', plen))) {
            /* xxhsum has no escaping: the line would read back as another name */
            luaL_pushresult(&b);
            lua_pushlstring(L, path, plen);
            return hrun_failf(L, "EINVAL",
                              "hash.export: %s: a name with a newline cannot be written in "
                              "xxhsum's format (use coreutils' format, which escapes it)",
                              lua_tostring(L, -1));
        }
        int special = escape && (memchr(path, '\\', plen) || memchr(path, '\n', plen) ||
                                 memchr(path, '\r', plen));
        if (special) luaL_addchar(&b, '\\');
        for (size_t i = 0; i < m.dlen; i++) {
            luaL_addchar(&b, hexdigits[m.digest[i] >> 4]);
            luaL_addchar(&b, hexdigits[m.digest[i] & 15]);
        }
        luaL_addstring(&b, "  ");
        for (size_t i = 0; i < plen; i++) {
            char ch = path[i];
            if (special && ch == '\\')
                luaL_addstring(&b, "\\\\");
            else if (special && ch == '\n')
                luaL_addstring(&b, "\\n");
            else if (special && ch == '\r')
                luaL_addstring(&b, "\\r");
            else
                luaL_addchar(&b, ch);
        }
        luaL_addchar(&b, '\n');
    }
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

/* One line of an imported file: the name (unescaped), its digest's hex, its place. */
typedef struct Line {
    const char *path;
    size_t plen;
    const char *hex;
    int dlen;
    size_t at;
} Line;

static int by_line(const void *x, const void *y)
{
    const Line *a = x, *b = y;
    int c = hrun_pathcmp(a->path, a->plen, b->path, b->plen);
    return c ? c : (a->at > b->at) - (a->at < b->at);
}

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
    /* every line read first, nothing written: a bad line changes nothing */
    size_t lines = 1;
    for (const char *p = text; (p = memchr(p, '\n', len - (size_t)(p - text))) != NULL; p++)
        lines++;
    Line *rows = lua_newuserdatauv(L, lines * sizeof(Line), 0); /* 4 */
    lua_newtable(L); /* 5: the unescaped names, anchored */
    size_t nrows = 0;
    int algo = format_algo(format), lineno = 0;
    for (const char *p = text, *end = text + len; p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL) eol = end;
        lineno++;
        const char *q = p;
        p = eol + 1;
        if (q == eol) continue;
        int escaped = *q == '\\';
        if (escaped) q++;
        const char *hex = q;
        int dlen = 0;
        while (q + 1 < eol && unhex(q[0]) >= 0 && unhex(q[1]) >= 0 && dlen < 64) q += 2, dlen++;
        int line_algo = dlen == 16   ? HRUN_XXH128
                        : dlen == 32 ? HRUN_SHA256
                        : dlen == 64 ? HRUN_BLAKE2B
                                     : -1;
        if (line_algo < 0 || q + 2 > eol || q[0] != ' ' || (q[1] != ' ' && q[1] != '*') ||
            (algo >= 0 && line_algo != algo))
            return hrun_failf(L, "EINVAL", "hash.import: %s:%d: not a %s line", file, lineno,
                              format);
        algo = line_algo;
        q += 2;
        const char *path = q;
        size_t plen = (size_t)(eol - q);
        if (escaped && memchr(q, '\\', plen)) {
            luaL_Buffer pb;
            luaL_buffinit(L, &pb);
            for (; q < eol; q++) {
                if (*q == '\\' && q + 1 < eol) {
                    q++;
                    luaL_addchar(&pb, *q == 'n' ? '\n' : *q == 'r' ? '\r' : *q);
                } else {
                    luaL_addchar(&pb, *q);
                }
            }
            luaL_pushresult(&pb);
            path = lua_tolstring(L, -1, &plen);
            lua_rawseti(L, 5, (lua_Integer)lua_rawlen(L, 5) + 1);
        }
        while (plen > 2 && path[0] == '.' && path[1] == '/') path += 2, plen -= 2;
        rows[nrows] = (Line){path, plen, hex, dlen, nrows};
        nrows++;
    }
    if (algo < 0) return hrun_failf(L, "EINVAL", "hash.import: %s: no digests in it", file);
    /* in path order, as manifests are kept; of a path listed twice, the last line counts */
    qsort(rows, nrows, sizeof *rows, by_line);
    sqlite3 *db = journal_db(L);
    if (!sqlite3_get_autocommit(db)) exec_sql(L, db, "COMMIT");
    if (name) { /* the one it replaces: before the transaction, so a refusal leaves none open */
        lua_pushstring(L, name);
        require_manifest(L, db, manifest_id(L, db, lua_gettop(L)), "hash.import");
        lua_pop(L, 1);
    }
    Streams *streams = new_streams(L);
    exec_sql(L, db, "BEGIN IMMEDIATE");
    if (name) {
        lua_pushstring(L, name);
        sqlite3_int64 old = manifest_id(L, db, lua_gettop(L));
        lua_pop(L, 1);
        if (old) drop_manifest(L, db, old);
    }
    sqlite3_int64 id = new_manifest(L, db, name, real, (enum hrun_algo)algo, NULL, file);
    hrun_Packer *k = open_packer(L, streams, db, id);
    for (size_t i = 0; i < nrows; i++) {
        const Line *r = &rows[i];
        if (i + 1 < nrows && r->plen == r[1].plen && memcmp(r->path, r[1].path, r->plen) == 0)
            continue;
        unsigned char digest[64];
        for (int j = 0; j < r->dlen; j++)
            digest[j] = (unsigned char)(unhex(r->hex[2 * j]) << 4 | unhex(r->hex[2 * j + 1]));
        hrun_MEntry m = {.path = r->path,
                         .pathlen = r->plen,
                         .type = 'f',
                         .digest = digest,
                         .dlen = (size_t)r->dlen};
        int rc = hrun_packer_add(k, &m);
        if (rc == SQLITE_OK && i + 1 == nrows) rc = hrun_packer_flush(k);
        if (rc != SQLITE_OK) {
            lua_pushstring(L, rc == SQLITE_NOMEM ? "out of memory" : sqlite3_errmsg(db));
            exec_sql(L, db, "ROLLBACK");
            return luaL_error(L, "hash: journal: %s", lua_tostring(L, -1));
        }
    }
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
        char root[PATH_MAX]; /* a sandboxed playbook sees those of trees it may hash */
        sqlite3_int64 id = sqlite3_column_int64(st, 0);
        if (manifest_root(L, db, id, root, sizeof root) &&
            !hrun_sandbox_allows(L, "hash.manifests", "hash", root))
            continue;
        push_manifest(L, db, id);
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
     .opts = 3,
     .cap = "hash",
     .inverse = hash_export_inverse,
     .state = hash_export_state,
     .targets = hrun_targets_arg2},
    {0},
};

int luaopen_hrun_hash(lua_State *L)
{
    hrun_newmodule(L, "hash", hash_prims);
    return 1;
}
