/*
** manifest.h — how the journal keeps a manifest's entries: in path order, packed a few
** thousand to a row of the `chunks` table (a path shares its start with the one before,
** numbers are varints), so that writing one costs a memcpy, not a B-tree insert, and
** comparing two manifests is one merge of two ordered streams. Plain C and SQLite.
*/
#ifndef HRUN_MANIFEST_H
#define HRUN_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

/* One entry, as written and as read back (a cursor's pointers last until its next step). */
typedef struct hrun_MEntry {
    const char *path; /* relative to the root, bytes */
    size_t pathlen;
    char type; /* 'f' file, 'l' symlink, 'd' directory, 's' special */
    int has_meta;
    uint64_t size, dev, ino;
    uint32_t mode;
    int64_t mtime_ns;
    const char *target; /* a symlink's; NULL: none */
    size_t targetlen;
    const unsigned char *digest; /* dlen 0: none */
    size_t dlen;
    const char *error; /* why it could not be read; NULL: it could */
    size_t errlen;
} hrun_MEntry;

/* The entries' bytes being gathered into one chunk. */
typedef struct hrun_Chunk {
    unsigned char *buf;
    size_t len, cap;
    char *prev; /* the path before: the next one is written as what differs */
    size_t prevlen, prevcap;
    uint64_t entries, files, bytes, errors;
} hrun_Chunk;

/* Writes a manifest's entries, in path order, into the caller's transactions: a chunk is
** written when it is full and by hrun_packer_flush (before each commit), with the
** manifest's counts (entries, files, bytes, errors) brought up to date. */
typedef struct hrun_Packer {
    sqlite3 *db;
    sqlite3_stmt *insert, *count;
    sqlite3_int64 manifest;
    hrun_Chunk chunk;
} hrun_Packer;

/* Each returns an SQLite result code (SQLITE_NOMEM when memory ran out). */
int hrun_packer_init(hrun_Packer *k, sqlite3 *db, sqlite3_int64 manifest);
int hrun_packer_add(hrun_Packer *k, const hrun_MEntry *e);
int hrun_packer_flush(hrun_Packer *k);
void hrun_packer_free(hrun_Packer *k);

/* Reads a manifest's entries back in path order. Between steps it holds no statement
** open: the connection may write meanwhile. */
typedef struct hrun_Cursor {
    sqlite3_stmt *next_chunk;
    sqlite3_int64 manifest, chunk_id;
    unsigned char *data;
    size_t len, pos, cap;
    char *path;
    size_t pathlen, pathcap;
    int rc; /* why the last step failed */
} hrun_Cursor;

int hrun_cursor_open(hrun_Cursor *c, sqlite3 *db, sqlite3_int64 manifest);
/* 1: *e is the next entry; 0: there is none; -1: c->rc says why (SQLITE_CORRUPT: a chunk
** that does not decode). */
int hrun_cursor_next(hrun_Cursor *c, hrun_MEntry *e);
void hrun_cursor_close(hrun_Cursor *c);

/* Adds the SQL aggregate hrun_chunk(path, type, size, mode, mtime_ns, dev, ino, target,
** digest, error) → one chunk of its rows (sorted by path): the journal's migration from
** one row an entry uses it. */
int hrun_manifest_sqlfuncs(sqlite3 *db);

#endif
