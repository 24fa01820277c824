/*
** manifest.c — a manifest's entries packed into chunks (see hrun/manifest.h).
**
** An entry in a chunk:
**   varint shared, varint n, n bytes   its path: `shared` bytes of the path before, then these
**   byte type                          f, l, d or s
**   byte flags                         1 metadata, 2 target, 4 digest, 8 error
**   varint size, mode, zigzag(mtime_ns), dev, ino     with flag 1
**   varint n, n bytes                  the target, with flag 2
**   byte n, n bytes                    the digest, with flag 4
**   varint n, n bytes                  the error, with flag 8
** The first entry of a chunk shares nothing: each chunk decodes alone.
*/
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "hrun/hashpool.h"
#include "hrun/manifest.h"

#define CHUNK_BYTES (64 << 10) /* a chunk is written once it holds this much */

enum { F_META = 1, F_TARGET = 2, F_DIGEST = 4, F_ERROR = 8 };

/* {======================================================
** Encoding
** ======================================================= */

/* buf grown to hold need bytes (NULL, buf untouched, when memory ran out) */
static void *grow(void *buf, size_t *cap, size_t need)
{
    if (need <= *cap) return buf;
    size_t n = *cap ? *cap : 4096;
    while (n < need) n *= 2;
    void *b = realloc(buf, n);
    if (b) *cap = n;
    return b;
}

static size_t put_varint(unsigned char *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (unsigned char)v;
    return n;
}

/* Appends e (its path must sort after the one before); 0 or ENOMEM. */
static int chunk_add(hrun_Chunk *c, const hrun_MEntry *e)
{
    size_t shared = 0, max = c->prevlen < e->pathlen ? c->prevlen : e->pathlen;
    while (shared < max && c->prev[shared] == e->path[shared]) shared++;
    size_t rest = e->pathlen - shared;
    size_t dlen = e->digest ? e->dlen : 0;
    /* the worst case: 10 bytes a varint */
    size_t need =
        c->len + 2 * 10 + rest + 2 + 5 * 10 + 10 + e->targetlen + 1 + dlen + 10 + e->errlen;
    unsigned char *buf = grow(c->buf, &c->cap, need);
    if (buf == NULL) return ENOMEM;
    c->buf = buf;
    char *prev = grow(c->prev, &c->prevcap, e->pathlen + 1);
    if (prev == NULL) return ENOMEM;
    c->prev = prev;
    unsigned char *p = c->buf + c->len;
    p += put_varint(p, shared);
    p += put_varint(p, rest);
    memcpy(p, e->path + shared, rest);
    p += rest;
    *p++ = (unsigned char)e->type;
    unsigned char *flags = p++;
    *flags = 0;
    if (e->has_meta) {
        *flags |= F_META;
        p += put_varint(p, e->size);
        p += put_varint(p, e->mode);
        p += put_varint(p, ((uint64_t)e->mtime_ns << 1) ^ (uint64_t)(e->mtime_ns >> 63));
        p += put_varint(p, e->dev);
        p += put_varint(p, e->ino);
    }
    if (e->target) {
        *flags |= F_TARGET;
        p += put_varint(p, e->targetlen);
        memcpy(p, e->target, e->targetlen);
        p += e->targetlen;
    }
    if (dlen) {
        *flags |= F_DIGEST;
        *p++ = (unsigned char)dlen;
        memcpy(p, e->digest, dlen);
        p += dlen;
    }
    if (e->error) {
        *flags |= F_ERROR;
        p += put_varint(p, e->errlen);
        memcpy(p, e->error, e->errlen);
        p += e->errlen;
    }
    c->len = (size_t)(p - c->buf);
    memcpy(c->prev, e->path, e->pathlen);
    c->prevlen = e->pathlen;
    c->entries++;
    if (e->type == 'f') c->files++, c->bytes += e->has_meta ? e->size : 0;
    if (e->error) c->errors++;
    return 0;
}

static void chunk_reset(hrun_Chunk *c)
{
    c->len = c->prevlen = 0;
    c->entries = c->files = c->bytes = c->errors = 0;
}

static void chunk_free(hrun_Chunk *c)
{
    free(c->buf);
    free(c->prev);
    memset(c, 0, sizeof *c);
}

/* }====================================================== */

/* {======================================================
** Writing a manifest
** ======================================================= */

int hrun_packer_init(hrun_Packer *k, sqlite3 *db, sqlite3_int64 manifest)
{
    memset(k, 0, sizeof *k);
    k->db = db, k->manifest = manifest;
    int rc = sqlite3_prepare_v2(
        db, "INSERT INTO chunks (manifest, entries, last, data) VALUES (?, ?, ?, ?)", -1,
        &k->insert, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(db,
                                "UPDATE manifests SET entries = entries + ?, files = files + ?, "
                                "bytes = bytes + ?, errors = errors + ? WHERE id = ?",
                                -1, &k->count, NULL);
    return rc;
}

int hrun_packer_flush(hrun_Packer *k)
{
    hrun_Chunk *c = &k->chunk;
    if (c->entries == 0) return SQLITE_OK;
    sqlite3_reset(k->insert);
    sqlite3_bind_int64(k->insert, 1, k->manifest);
    sqlite3_bind_int64(k->insert, 2, (sqlite3_int64)c->entries);
    sqlite3_bind_blob(k->insert, 3, c->prev, (int)c->prevlen, SQLITE_STATIC);
    sqlite3_bind_blob(k->insert, 4, c->buf, (int)c->len, SQLITE_STATIC);
    int rc = sqlite3_step(k->insert);
    sqlite3_reset(k->insert);
    if (rc != SQLITE_DONE) return rc;
    sqlite3_reset(k->count);
    sqlite3_bind_int64(k->count, 1, (sqlite3_int64)c->entries);
    sqlite3_bind_int64(k->count, 2, (sqlite3_int64)c->files);
    sqlite3_bind_int64(k->count, 3, (sqlite3_int64)c->bytes);
    sqlite3_bind_int64(k->count, 4, (sqlite3_int64)c->errors);
    sqlite3_bind_int64(k->count, 5, k->manifest);
    rc = sqlite3_step(k->count);
    sqlite3_reset(k->count);
    if (rc != SQLITE_DONE) return rc;
    chunk_reset(c);
    return SQLITE_OK;
}

int hrun_packer_add(hrun_Packer *k, const hrun_MEntry *e)
{
    if (chunk_add(&k->chunk, e)) return SQLITE_NOMEM;
    return k->chunk.len >= CHUNK_BYTES ? hrun_packer_flush(k) : SQLITE_OK;
}

void hrun_packer_free(hrun_Packer *k)
{
    sqlite3_finalize(k->insert);
    sqlite3_finalize(k->count);
    chunk_free(&k->chunk);
    k->insert = k->count = NULL;
}

/* }====================================================== */

/* {======================================================
** Reading a manifest
** ======================================================= */

int hrun_cursor_open(hrun_Cursor *c, sqlite3 *db, sqlite3_int64 manifest)
{
    memset(c, 0, sizeof *c);
    c->manifest = manifest;
    c->rc = sqlite3_prepare_v2(db,
                               "SELECT id, data FROM chunks WHERE manifest = ? AND id > ? "
                               "ORDER BY id LIMIT 1",
                               -1, &c->next_chunk, NULL);
    return c->rc;
}

static int get_varint(hrun_Cursor *c, uint64_t *v)
{
    uint64_t r = 0;
    for (int shift = 0; shift < 64 && c->pos < c->len; shift += 7) {
        unsigned char b = c->data[c->pos++];
        r |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = r;
            return 0;
        }
    }
    return -1;
}

/* n bytes of the chunk, or NULL past its end */
static const unsigned char *get_bytes(hrun_Cursor *c, uint64_t n)
{
    if (n > c->len - c->pos) return NULL;
    const unsigned char *p = c->data + c->pos;
    c->pos += (size_t)n;
    return p;
}

/* The next chunk into c->data; 1, 0 at the end, -1 on an error. */
static int load_chunk(hrun_Cursor *c)
{
    sqlite3_stmt *st = c->next_chunk;
    sqlite3_bind_int64(st, 1, c->manifest);
    sqlite3_bind_int64(st, 2, c->chunk_id);
    int rc = sqlite3_step(st), got = 0;
    if (rc == SQLITE_ROW) {
        size_t n = (size_t)sqlite3_column_bytes(st, 1);
        unsigned char *data = grow(c->data, &c->cap, n ? n : 1);
        if (data == NULL) {
            rc = SQLITE_NOMEM;
        } else {
            c->data = data;
            if (n) memcpy(c->data, sqlite3_column_blob(st, 1), n);
            c->chunk_id = sqlite3_column_int64(st, 0);
            c->len = n, c->pos = 0, c->pathlen = 0;
            got = 1;
        }
    }
    sqlite3_reset(st);
    if (got) return 1;
    if (rc == SQLITE_DONE) return 0;
    c->rc = rc;
    return -1;
}

int hrun_cursor_next(hrun_Cursor *c, hrun_MEntry *e)
{
    while (c->pos >= c->len) {
        int r = load_chunk(c);
        if (r <= 0) return r;
    }
    uint64_t shared, n, v;
    const unsigned char *b;
    memset(e, 0, sizeof *e);
    c->rc = SQLITE_CORRUPT;
    if (get_varint(c, &shared) || shared > c->pathlen || get_varint(c, &n) ||
        (b = get_bytes(c, n)) == NULL)
        return -1;
    char *path = grow(c->path, &c->pathcap, (size_t)(shared + n + 1));
    if (path == NULL) {
        c->rc = SQLITE_NOMEM;
        return -1;
    }
    c->path = path;
    memcpy(c->path + shared, b, (size_t)n);
    c->pathlen = (size_t)(shared + n);
    c->path[c->pathlen] = '\0';
    e->path = c->path, e->pathlen = c->pathlen;
    const unsigned char *tf = get_bytes(c, 2);
    if (tf == NULL) return -1;
    e->type = (char)tf[0];
    if (tf[1] & F_META) {
        uint64_t mode, zz;
        e->has_meta = 1;
        if (get_varint(c, &e->size) || get_varint(c, &mode) || get_varint(c, &zz) ||
            get_varint(c, &e->dev) || get_varint(c, &e->ino))
            return -1;
        e->mode = (uint32_t)mode;
        e->mtime_ns = (int64_t)(zz >> 1) ^ -(int64_t)(zz & 1);
    }
    if (tf[1] & F_TARGET) {
        if (get_varint(c, &v) || (b = get_bytes(c, v)) == NULL) return -1;
        e->target = (const char *)b, e->targetlen = (size_t)v;
    }
    if (tf[1] & F_DIGEST) {
        if ((b = get_bytes(c, 1)) == NULL || *b > 64 || (e->digest = get_bytes(c, *b)) == NULL)
            return -1;
        e->dlen = *b;
    }
    if (tf[1] & F_ERROR) {
        if (get_varint(c, &v) || (b = get_bytes(c, v)) == NULL) return -1;
        e->error = (const char *)b, e->errlen = (size_t)v;
    }
    c->rc = SQLITE_OK;
    return 1;
}

void hrun_cursor_close(hrun_Cursor *c)
{
    sqlite3_finalize(c->next_chunk);
    free(c->data);
    free(c->path);
    memset(c, 0, sizeof *c);
}

/* }====================================================== */

/* {======================================================
** hrun_chunk(): the journal's migration
** ======================================================= */

typedef struct Row {
    char *path;
    size_t pathlen;
    hrun_MEntry e; /* its pointers into the row's own copies */
} Row;

typedef struct Rows {
    Row *v;
    size_t n, cap;
    int nomem;
} Rows;

static char *copy_of(sqlite3_value *v, size_t *len)
{
    if (sqlite3_value_type(v) == SQLITE_NULL) return NULL;
    const void *b = sqlite3_value_blob(v);
    *len = (size_t)sqlite3_value_bytes(v);
    char *s = malloc(*len + 1);
    if (s == NULL) return NULL;
    if (*len) memcpy(s, b, *len);
    s[*len] = '\0';
    return s;
}

static void chunk_step(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    Rows *rows = sqlite3_aggregate_context(ctx, sizeof(Rows));
    if (rows == NULL || rows->nomem) return;
    if (rows->n == rows->cap) {
        size_t cap = rows->cap ? 2 * rows->cap : 256;
        Row *v = realloc(rows->v, cap * sizeof *v);
        if (v == NULL) {
            rows->nomem = 1;
            return;
        }
        rows->v = v, rows->cap = cap;
    }
    Row *r = &rows->v[rows->n];
    memset(r, 0, sizeof *r);
    hrun_MEntry *e = &r->e;
    size_t len = 0;
    r->path = copy_of(argv[0], &r->pathlen);
    const unsigned char *type = sqlite3_value_text(argv[1]);
    e->type = type && *type ? (char)*type : 'f';
    e->has_meta = sqlite3_value_type(argv[2]) != SQLITE_NULL;
    e->size = (uint64_t)sqlite3_value_int64(argv[2]);
    e->mode = (uint32_t)sqlite3_value_int64(argv[3]);
    e->mtime_ns = sqlite3_value_int64(argv[4]);
    e->dev = (uint64_t)sqlite3_value_int64(argv[5]);
    e->ino = (uint64_t)sqlite3_value_int64(argv[6]);
    e->target = copy_of(argv[7], &e->targetlen);
    e->digest = (unsigned char *)copy_of(argv[8], &len);
    e->dlen = len > 64 ? 64 : len;
    e->error = copy_of(argv[9], &e->errlen);
    if (r->path == NULL) {
        free((char *)e->target), free((char *)e->digest), free((char *)e->error);
        rows->nomem = sqlite3_value_type(argv[0]) != SQLITE_NULL;
        return;
    }
    e->path = r->path, e->pathlen = r->pathlen;
    rows->n++;
}

static int by_path(const void *x, const void *y)
{
    const Row *a = x, *b = y;
    return hrun_pathcmp(a->path, a->pathlen, b->path, b->pathlen);
}

static void chunk_final(sqlite3_context *ctx)
{
    Rows *rows = sqlite3_aggregate_context(ctx, 0);
    if (rows == NULL) {
        sqlite3_result_zeroblob(ctx, 0);
        return;
    }
    hrun_Chunk c = {0};
    int nomem = rows->nomem;
    if (rows->n > 1) qsort(rows->v, rows->n, sizeof *rows->v, by_path);
    for (size_t i = 0; i < rows->n && !nomem; i++) nomem = chunk_add(&c, &rows->v[i].e);
    if (nomem)
        sqlite3_result_error_nomem(ctx);
    else
        sqlite3_result_blob(ctx, c.buf, (int)c.len, SQLITE_TRANSIENT);
    chunk_free(&c);
    for (size_t i = 0; i < rows->n; i++) {
        Row *r = &rows->v[i];
        free(r->path);
        free((char *)r->e.target), free((char *)r->e.digest), free((char *)r->e.error);
    }
    free(rows->v);
}

int hrun_manifest_sqlfuncs(sqlite3 *db)
{
    return sqlite3_create_function(db, "hrun_chunk", 10, SQLITE_UTF8, NULL, NULL, chunk_step,
                                   chunk_final);
}

/* }====================================================== */
