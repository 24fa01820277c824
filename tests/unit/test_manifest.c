/*
** test_manifest.c — manifests' packed chunks on their own: every field survives the
** round trip (extreme numbers, odd bytes, absent fields) across many chunks, a damaged
** chunk is refused without reading past its end, and hrun_chunk() packs rows given in
** any order into path order.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hrun/hashpool.h"
#include "hrun/manifest.h"
#include "unit.h"

#define N 20000

static sqlite3 *open_db(void)
{
    sqlite3 *db;
    if (sqlite3_open(":memory:", &db) != SQLITE_OK) return NULL;
    sqlite3_exec(db,
                 "CREATE TABLE manifests (id INTEGER PRIMARY KEY, entries INTEGER NOT NULL "
                 "DEFAULT 0, files INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0, "
                 "errors INTEGER NOT NULL DEFAULT 0);"
                 "CREATE TABLE chunks (id INTEGER PRIMARY KEY, manifest INTEGER NOT NULL, "
                 "entries INTEGER NOT NULL, last BLOB NOT NULL, data BLOB NOT NULL);"
                 "INSERT INTO manifests (id) VALUES (1), (2);",
                 NULL, NULL, NULL);
    hrun_manifest_sqlfuncs(db);
    return db;
}

/* Entry i: paths sorted by their number's digits, with odd bytes in some; every field
** varies, some absent. */
static void make(int i, char *path, size_t *plen, hrun_MEntry *e, unsigned char *digest)
{
    *plen = (size_t)snprintf(path, 256, "dir %05d/%s%05d", i / 100,
                             i % 7 == 0 ? "new\nline\xff" : "f", i);
    memset(e, 0, sizeof *e);
    e->path = path, e->pathlen = *plen;
    e->type = "fdls"[i % 4];
    e->has_meta = i % 5 != 0;
    e->size = i % 11 == 0 ? UINT64_MAX : (uint64_t)i * 4099;
    e->mode = (uint32_t)(i % 4096);
    e->mtime_ns = i % 3 == 0 ? INT64_MIN + i : (int64_t)i * 1000000007LL - 5000000000000LL;
    e->dev = (uint64_t)i << 40;
    e->ino = UINT64_MAX - (uint64_t)i;
    if (e->type == 'l') e->target = "../some/where", e->targetlen = 13;
    if (e->type == 'f' && i % 13 != 0) {
        for (int j = 0; j < 64; j++) digest[j] = (unsigned char)(i + j);
        e->digest = digest, e->dlen = i % 2 ? 16 : 64;
    }
    if (i % 17 == 0) e->error = "Permission denied", e->errlen = 17;
}

static void roundtrip(void)
{
    sqlite3 *db = open_db();
    CHECK(db != NULL);
    hrun_Packer k;
    CHECK(hrun_packer_init(&k, db, 1) == SQLITE_OK);
    char path[256];
    size_t plen;
    unsigned char digest[64];
    hrun_MEntry e, r;
    uint64_t files = 0, errors = 0;
    for (int i = 0; i < N; i++) {
        make(i, path, &plen, &e, digest);
        files += e.type == 'f', errors += e.error != NULL;
        CHECK(hrun_packer_add(&k, &e) == SQLITE_OK);
    }
    CHECK(hrun_packer_flush(&k) == SQLITE_OK);
    hrun_packer_free(&k);
    sqlite3_stmt *st;
    sqlite3_prepare_v2(db,
                       "SELECT entries, files, errors, (SELECT count(*) FROM chunks) FROM "
                       "manifests WHERE id = 1",
                       -1, &st, NULL);
    CHECK(sqlite3_step(st) == SQLITE_ROW);
    CHECK(sqlite3_column_int64(st, 0) == N);
    CHECK((uint64_t)sqlite3_column_int64(st, 1) == files);
    CHECK((uint64_t)sqlite3_column_int64(st, 2) == errors);
    CHECK(sqlite3_column_int(st, 3) > 3); /* several chunks: they join up */
    sqlite3_finalize(st);

    hrun_Cursor c;
    CHECK(hrun_cursor_open(&c, db, 1) == SQLITE_OK);
    int i = 0, bad = 0;
    while (hrun_cursor_next(&c, &r) == 1) {
        make(i, path, &plen, &e, digest);
        bad += r.pathlen != e.pathlen || memcmp(r.path, e.path, e.pathlen) != 0;
        bad += r.type != e.type || r.has_meta != e.has_meta;
        if (e.has_meta)
            bad += r.size != e.size || r.mode != e.mode || r.mtime_ns != e.mtime_ns ||
                   r.dev != e.dev || r.ino != e.ino;
        bad += (r.target == NULL) != (e.target == NULL) ||
               (e.target && (r.targetlen != e.targetlen || memcmp(r.target, e.target, 13)));
        bad += r.dlen != e.dlen || (e.dlen && memcmp(r.digest, e.digest, e.dlen));
        bad += (r.error == NULL) != (e.error == NULL) ||
               (e.error && memcmp(r.error, e.error, e.errlen));
        i++;
    }
    CHECK(c.rc == SQLITE_OK);
    CHECK(i == N);
    CHECK(bad == 0);
    hrun_cursor_close(&c);
    /* an empty manifest reads as nothing */
    CHECK(hrun_cursor_open(&c, db, 2) == SQLITE_OK);
    CHECK(hrun_cursor_next(&c, &r) == 0);
    hrun_cursor_close(&c);
    sqlite3_close(db);
}

static void damaged(void)
{
    sqlite3 *db = open_db();
    hrun_Packer k;
    hrun_packer_init(&k, db, 1);
    char path[256];
    size_t plen;
    unsigned char digest[64];
    hrun_MEntry e;
    for (int i = 0; i < 100; i++) {
        make(i, path, &plen, &e, digest);
        hrun_packer_add(&k, &e);
    }
    hrun_packer_flush(&k);
    hrun_packer_free(&k);
    /* cut at every length: each read stops with SQLITE_CORRUPT or at a whole entry */
    sqlite3_stmt *st;
    sqlite3_prepare_v2(db, "SELECT length(data) FROM chunks", -1, &st, NULL);
    sqlite3_step(st);
    int len = sqlite3_column_int(st, 0), corrupt = 0;
    sqlite3_finalize(st);
    CHECK(len > 100);
    for (int cut = len - 1; cut > 0; cut -= 7) {
        char sql[128];
        snprintf(sql, sizeof sql, "UPDATE chunks SET data = substr(data, 1, %d)", cut);
        sqlite3_exec(db, sql, NULL, NULL, NULL);
        hrun_Cursor c;
        hrun_cursor_open(&c, db, 1);
        hrun_MEntry r;
        int got, n = 0;
        while ((got = hrun_cursor_next(&c, &r)) == 1) n++;
        CHECK(n < 100);
        if (got < 0) {
            CHECK(c.rc == SQLITE_CORRUPT);
            corrupt++;
        }
        hrun_cursor_close(&c);
    }
    CHECK(corrupt > 0);
    sqlite3_close(db);
}

static void aggregate(void)
{
    sqlite3 *db = open_db();
    CHECK(
        sqlite3_exec(db,
                     "CREATE TABLE rows (path BLOB, type TEXT, size INTEGER, mode INTEGER, "
                     "mtime_ns INTEGER, dev INTEGER, ino INTEGER, target BLOB, digest BLOB, "
                     "error TEXT);"
                     "INSERT INTO rows VALUES (x'62', 'f', 3, 420, -1, 1, 2, NULL, x'00ff', NULL),"
                     " (x'61', 'd', 0, 493, 5, 1, 3, NULL, NULL, NULL),"
                     " (x'612f7a', 'l', NULL, NULL, NULL, NULL, NULL, x'7a', NULL, 'gone');"
                     "INSERT INTO chunks (manifest, entries, last, data) SELECT 1, count(*), "
                     "max(path), hrun_chunk(path, type, size, mode, mtime_ns, dev, ino, target, "
                     "digest, error) FROM rows;",
                     NULL, NULL, NULL) == SQLITE_OK);
    hrun_Cursor c;
    hrun_MEntry r;
    hrun_cursor_open(&c, db, 1);
    CHECK(hrun_cursor_next(&c, &r) == 1);
    CHECK(r.pathlen == 1 && r.path[0] == 'a' && r.type == 'd' && r.mode == 493);
    CHECK(hrun_cursor_next(&c, &r) == 1);
    CHECK_STR(r.path, "a/z");
    CHECK(r.type == 'l' && !r.has_meta && r.targetlen == 1 && r.errlen == 4);
    CHECK(hrun_cursor_next(&c, &r) == 1);
    CHECK_STR(r.path, "b");
    CHECK(r.size == 3 && r.mtime_ns == -1 && r.dlen == 2 && r.digest[1] == 0xff);
    CHECK(hrun_cursor_next(&c, &r) == 0);
    hrun_cursor_close(&c);
    sqlite3_close(db);
}

static void order(void)
{
    /* the walk's order is the bytes': a prefix first, then unsigned */
    CHECK(hrun_pathcmp("a", 1, "a-b", 3) < 0);
    CHECK(hrun_pathcmp("a-b", 3, "a/x", 3) < 0);
    CHECK(hrun_pathcmp("a/x", 3, "a0", 2) < 0);
    CHECK(hrun_pathcmp("a0", 2, "a\xff", 2) < 0);
    CHECK(hrun_pathcmp("same", 4, "same", 4) == 0);
}

int main(void)
{
    RUN(roundtrip);
    RUN(damaged);
    RUN(aggregate);
    RUN(order);
    return UNIT_END();
}
