/*
** sqlite.c — the journal's database handle, for the engine (private library): open with
** WAL and synchronous=FULL, run statements with bound parameters, transactions. The
** schema and what goes in it are the engine's (stdlib/hrun/journal.lua).
** Errors raise ("journal: …"): the runner cannot go on without its journal.
*/
#include <string.h>
#include <sys/stat.h>

#include <sqlite3.h>

#include "hrun/manifest.h"
#include "internal.h"

#define DB_TYPE "hrun.db"

typedef struct Db {
    sqlite3 *db;
} Db;

static Db *checkdb(lua_State *L)
{
    Db *d = luaL_checkudata(L, 1, DB_TYPE);
    if (d->db == NULL) luaL_error(L, "journal: the database is closed");
    return d;
}

/* Finalizes the cached statements (the user value) and closes; idempotent. */
static int db_close(lua_State *L)
{
    Db *d = luaL_checkudata(L, 1, DB_TYPE);
    if (d->db == NULL) return 0;
    if (lua_getiuservalue(L, 1, 1) == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            sqlite3_finalize(lua_touserdata(L, -1));
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    lua_newtable(L);
    lua_setiuservalue(L, 1, 1);
    sqlite3_close_v2(d->db);
    d->db = NULL;
    return 0;
}

static int fail(lua_State *L, sqlite3 *db, const char *sql)
{
    return luaL_error(L, "journal: %s (in: %.60s)", sqlite3_errmsg(db), sql);
}

/* [-0, +0, e] The prepared statement for sql, from the cache or new; reset and with the
** arguments from `first` on bound to its parameters. */
static sqlite3_stmt *prepare(lua_State *L, Db *d, int first)
{
    size_t len;
    const char *sql = luaL_checklstring(L, 2, &len);
    sqlite3_stmt *st;
    lua_getiuservalue(L, 1, 1);
    if (lua_getfield(L, -1, sql) == LUA_TLIGHTUSERDATA) {
        st = lua_touserdata(L, -1);
        lua_pop(L, 2);
    } else {
        lua_pop(L, 1);
        if (sqlite3_prepare_v3(d->db, sql, (int)len + 1, SQLITE_PREPARE_PERSISTENT, &st, NULL) !=
            SQLITE_OK)
            fail(L, d->db, sql);
        lua_pushlightuserdata(L, st);
        lua_setfield(L, -2, sql);
        lua_pop(L, 1);
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    int n = lua_gettop(L) - first + 1;
    if (n != sqlite3_bind_parameter_count(st))
        luaL_error(L, "journal: %d values for %d parameters (in: %.60s)", n,
                   sqlite3_bind_parameter_count(st), sql);
    for (int i = 1; i <= n; i++) {
        int idx = first + i - 1, rc;
        switch (lua_type(L, idx)) {
        case LUA_TNIL:
            rc = sqlite3_bind_null(st, i);
            break;
        case LUA_TBOOLEAN:
            rc = sqlite3_bind_int(st, i, lua_toboolean(L, idx));
            break;
        case LUA_TNUMBER:
            rc = lua_isinteger(L, idx) ? sqlite3_bind_int64(st, i, lua_tointeger(L, idx))
                                       : sqlite3_bind_double(st, i, lua_tonumber(L, idx));
            break;
        case LUA_TSTRING: {
            size_t slen;
            const char *s = lua_tolstring(L, idx, &slen);
            rc = sqlite3_bind_text64(st, i, s, slen, SQLITE_TRANSIENT, SQLITE_UTF8);
            break;
        }
        default:
            return luaL_error(L, "journal: cannot bind a %s", luaL_typename(L, idx)), NULL;
        }
        if (rc != SQLITE_OK) fail(L, d->db, sql);
    }
    return st;
}

void hrun_push_column(lua_State *L, struct sqlite3_stmt *st, int i)
{
    switch (sqlite3_column_type(st, i)) {
    case SQLITE_INTEGER:
        lua_pushinteger(L, sqlite3_column_int64(st, i));
        break;
    case SQLITE_FLOAT:
        lua_pushnumber(L, sqlite3_column_double(st, i));
        break;
    case SQLITE_NULL:
        lua_pushnil(L);
        break;
    default:
        lua_pushlstring(L, (const char *)sqlite3_column_blob(st, i),
                        (size_t)sqlite3_column_bytes(st, i));
    }
}

int hrun_push_rows(lua_State *L, struct sqlite3_stmt *st)
{
    lua_newtable(L);
    lua_Integer n = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int cols = sqlite3_column_count(st);
        lua_createtable(L, 0, cols);
        for (int i = 0; i < cols; i++) {
            hrun_push_column(L, st, i);
            lua_setfield(L, -2, sqlite3_column_name(st, i));
        }
        lua_rawseti(L, -2, ++n);
    }
    return rc;
}

/* db:query(sql, ...) → {{column = value, …}, …} */
static int db_query(lua_State *L)
{
    Db *d = checkdb(L);
    sqlite3_stmt *st = prepare(L, d, 3);
    int rc = hrun_push_rows(L, st);
    if (rc != SQLITE_DONE) {
        sqlite3_reset(st);
        return fail(L, d->db, lua_tostring(L, 2));
    }
    sqlite3_reset(st);
    return 1;
}

/* db:run(sql, ...) → changes, last inserted rowid */
static int db_run(lua_State *L)
{
    Db *d = checkdb(L);
    sqlite3_stmt *st = prepare(L, d, 3);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) return fail(L, d->db, lua_tostring(L, 2));
    lua_pushinteger(L, sqlite3_changes64(d->db));
    lua_pushinteger(L, sqlite3_last_insert_rowid(d->db));
    return 2;
}

/* db:exec(sql): one or more statements without parameters (schema, pragmas) */
static int db_exec(lua_State *L)
{
    Db *d = checkdb(L);
    const char *sql = luaL_checkstring(L, 2);
    char *msg = NULL;
    if (sqlite3_exec(d->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        /* lua_pushfstring knows no precision; and msg is freed before anything raises */
        char text[512];
        snprintf(text, sizeof text, "journal: %s (in: %.60s)", msg ? msg : sqlite3_errmsg(d->db),
                 sql);
        sqlite3_free(msg);
        return luaL_error(L, "%s", text);
    }
    return 0;
}

/* db:in_transaction() → whether a transaction is open (the hash engine commits them) */
static int db_in_transaction(lua_State *L)
{
    Db *d = checkdb(L);
    lua_pushboolean(L, !sqlite3_get_autocommit(d->db));
    return 1;
}

/* db_open(path) → db | nil, message, code. WAL; synchronous=FULL, so a committed
** transaction survives a power cut. */
static int db_open(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"query", db_query},
        {"run", db_run},
        {"exec", db_exec},
        {"close", db_close},
        {"in_transaction", db_in_transaction},
        {NULL, NULL},
    };
    const char *path = hrun_checkpath(L, 1, NULL);
    Db *d = lua_newuserdatauv(L, sizeof(Db), 1);
    d->db = NULL;
    lua_newtable(L);
    lua_setiuservalue(L, -2, 1);
    hrun_setclose(L, DB_TYPE, db_close, methods);
    /* the journal and its -wal and -shm files: readable by root only */
    mode_t mask = umask(077);
    int rc = sqlite3_open_v2(path, &d->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    umask(mask);
    if (rc != SQLITE_OK) {
        hrun_failf(L, "EJOURNAL", "journal: %s: %s", path,
                   d->db ? sqlite3_errmsg(d->db) : sqlite3_errstr(rc));
        sqlite3_close_v2(d->db);
        d->db = NULL;
        return 3;
    }
    sqlite3_busy_timeout(d->db, 5000);
    hrun_manifest_sqlfuncs(d->db); /* the journal's migrations use them */
    char *msg = NULL;
    if (sqlite3_exec(d->db,
                     "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
                     NULL, NULL, &msg) != SQLITE_OK) {
        hrun_failf(L, "EJOURNAL", "journal: %s: %s", path, msg ? msg : sqlite3_errmsg(d->db));
        sqlite3_free(msg);
        sqlite3_close_v2(d->db);
        d->db = NULL;
        return 3;
    }
    return 1;
}

sqlite3 *hrun_db_check(lua_State *L, int idx)
{
    Db *d = luaL_checkudata(L, idx, DB_TYPE);
    if (d->db == NULL) luaL_error(L, "journal: the database is closed");
    return d->db;
}

/* [-0, +1, m] Adds db_open and the SQLite version to the private library on top. */
void hrun_opensqlite(lua_State *L)
{
    lua_pushcfunction(L, db_open);
    lua_setfield(L, -2, "db_open");
    lua_pushstring(L, sqlite3_libversion());
    lua_setfield(L, -2, "sqlite_version");
}
