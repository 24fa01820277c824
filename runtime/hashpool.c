/*
** hashpool.c — the tree hashing engine: one walker, one pre-scan, N hashers, bounded
** queues between them. The thread that owns Lua takes finished entries with
** hrun_hashpool_take and writes them to the journal; nothing here knows Lua or SQLite.
*/
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <xxhash.h>

#include "hrun/hashpool.h"
#include "sha256x.h"
#include "xxh_avx2.h"

#define QUEUE_MAX 4096        /* files waiting for a hasher */
#define WINDOW    16384       /* entries the walk may be ahead of the taker */
#define READ_SIZE (128 << 10) /* fits the cache: the page cache's copy is hashed while hot */
#define BATCH     64          /* entries a hasher takes at once */
/* files this large are hashed through mmap (the mixed tree: 5 % faster than from 64 MiB) */
#define MAP_FROM (4 << 20)
#define MAP_STEP (256 << 20) /* of a mapping, hashed between two looks at a stop */

size_t hrun_algo_size(enum hrun_algo a)
{
    return a == HRUN_XXH128 ? 16 : a == HRUN_SHA256 ? 32 : 64;
}

const char *hrun_algo_name(enum hrun_algo a)
{
    return a == HRUN_XXH128 ? "xxh128" : a == HRUN_SHA256 ? "sha256" : "blake2b";
}

int hrun_algo_parse(const char *name)
{
    if (strcmp(name, "xxh128") == 0) return HRUN_XXH128;
    if (strcmp(name, "sha256") == 0) return HRUN_SHA256;
    if (strcmp(name, "blake2b") == 0) return HRUN_BLAKE2B;
    return -1;
}

void hrun_entry_free(hrun_Entry *e)
{
    while (e) {
        hrun_Entry *next = e->next;
        free(e->path);
        free(e->target);
        free(e);
        e = next;
    }
}

/* Hashes a large file through mappings of MAP_STEP at a time: no copy out of the page
** cache (measured: the copy is a fifth of hashing a warm tree), page tables made in one
** go (MAP_POPULATE), memory bounded however large the file. Returns 0, an errno (of a
** later mapping, or ECANCELED when *stop was set part-way), or -1 to fall back to read. */
static int hash_mapped(int fd, uint64_t len, enum hrun_algo a, unsigned char *out,
                       const _Atomic int *stop)
{
    if (a != HRUN_XXH128 || !__builtin_cpu_supports("avx2")) return -1;
    void *s = hrun_xxh3_avx2_new();
    if (s == NULL) return -1;
    int err = 0;
    for (uint64_t at = 0; at < len && !err; at += MAP_STEP) {
        size_t n = len - at < MAP_STEP ? (size_t)(len - at) : MAP_STEP;
        void *m = mmap(NULL, n, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, (off_t)at);
        if (m == MAP_FAILED) {
            err = at == 0 ? -1 : errno;
            break;
        }
        hrun_xxh3_avx2_update(s, m, n);
        munmap(m, n);
        if (stop && *stop) err = ECANCELED;
    }
    hrun_xxh3_avx2_digest(s, out);
    return err;
}

typedef void (*Update)(void *ctx, const void *data, size_t len);

/* Reads fd to its end into update(ctx, ...), size bytes at a time. expect >= 0: the bytes
** left by the size fstat gave — a short read that reaches it is the end (one read a small
** file, not two). Returns 0 or an errno, ECANCELED when *stop (if given) was set
** part-way. */
static int read_all(int fd, char *buf, size_t size, int64_t expect, const _Atomic int *stop,
                    Update update, void *ctx)
{
    ssize_t n;
    int64_t total = 0;
    while ((n = read(fd, buf, size)) != 0) {
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        update(ctx, buf, (size_t)n);
        total += n;
        if ((size_t)n < size && total == expect) break;
        if (stop && *stop) return ECANCELED;
    }
    return 0;
}

static void xxh3_update(void *s, const void *data, size_t len)
{
    XXH3_128bits_update(s, data, len);
}

static void evp_update(void *ctx, const void *data, size_t len)
{
    EVP_DigestUpdate(ctx, data, len);
}

/* Reads fd to its end into the digest (read_all's expect and stop). */
static int hash_read(int fd, enum hrun_algo a, unsigned char *out, char *buf, size_t size,
                     int64_t expect, const _Atomic int *stop)
{
    int err;
    if (a == HRUN_XXH128 && __builtin_cpu_supports("avx2")) {
        void *s = hrun_xxh3_avx2_new();
        if (s == NULL) return ENOMEM;
        err = read_all(fd, buf, size, expect, stop, hrun_xxh3_avx2_update, s);
        hrun_xxh3_avx2_digest(s, out);
        return err;
    }
    if (a == HRUN_XXH128) {
        XXH3_state_t *s = XXH3_createState();
        if (s == NULL) return ENOMEM;
        XXH3_128bits_reset(s);
        err = read_all(fd, buf, size, expect, stop, xxh3_update, s);
        XXH128_canonical_t c;
        XXH128_canonicalFromHash(&c, XXH3_128bits_digest(s));
        memcpy(out, c.digest, 16);
        XXH3_freeState(s);
        return err;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL) return ENOMEM;
    EVP_DigestInit_ex(ctx, a == HRUN_SHA256 ? EVP_sha256() : EVP_blake2b512(), NULL);
    err = read_all(fd, buf, size, expect, stop, evp_update, ctx);
    unsigned int len;
    EVP_DigestFinal_ex(ctx, out, &len);
    EVP_MD_CTX_free(ctx);
    return err;
}

int hrun_hash_fd(int fd, enum hrun_algo a, unsigned char *out, char *buf, size_t size)
{
    return hash_read(fd, a, out, buf, size, -1, NULL);
}

int hrun_pathcmp(const char *a, size_t alen, const char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    return c ? c : (alen > blen) - (alen < blen);
}

/* {======================================================
** The work queue, and finished entries put back in the walk's order
** ======================================================= */

typedef struct Queue {
    hrun_Entry *head, *tail;
    size_t n;
    pthread_cond_t not_empty, not_full;
} Queue;

struct hrun_HashPool {
    hrun_HashOpts o;
    char **exclude;
    int rootfd;
    dev_t rootdev;
    pthread_mutex_t mu;
    Queue work; /* files for the hashers */
    /* finished entries by seq % WINDOW: the taker gives them in order from `taken` on,
    ** and the walker stays within WINDOW of it (memory bounded, a hasher on a huge
    ** file or not) */
    hrun_Entry **ring;
    uint64_t next_seq, taken, unsignalled;
    pthread_cond_t ready, room;
    pthread_t walker, scanner, *hashers;
    int nhashers, hashers_running;
    int lanes; /* SHA-256 files hashed at once by a hasher (hash_lanes), 0: one by one */
    int walking, scanned;
    _Atomic int cancel;
    uint64_t files, bytes, total_files, total_bytes;
    int started_scanner;
};

static void q_init(Queue *q)
{
    q->head = q->tail = NULL;
    q->n = 0;
    pthread_cond_init(&q->not_empty, NULL);
    pthread_cond_init(&q->not_full, NULL);
}

/* With p->mu held: waits for room (unless cancelled), then appends. */
static void q_push(hrun_HashPool *p, Queue *q, hrun_Entry *e)
{
    while (q->n >= QUEUE_MAX && !p->cancel) pthread_cond_wait(&q->not_full, &p->mu);
    e->next = NULL;
    if (q->tail)
        q->tail->next = e;
    else
        q->head = e;
    q->tail = e;
    q->n++;
    pthread_cond_signal(&q->not_empty);
}

static hrun_Entry *q_pop(Queue *q)
{
    hrun_Entry *e = q->head;
    if (e == NULL) return NULL;
    q->head = e->next;
    if (q->head == NULL) q->tail = NULL;
    q->n--;
    e->next = NULL;
    pthread_cond_signal(&q->not_full);
    return e;
}

/* With p->mu held: e is finished. The taker is woken once a good batch waits (it looks
** every 0.1 s anyway): fewer context switches. */
static void finish(hrun_HashPool *p, hrun_Entry *e)
{
    e->next = NULL;
    p->ring[e->seq % WINDOW] = e;
    if (++p->unsignalled >= 1024) {
        p->unsignalled = 0;
        pthread_cond_signal(&p->ready);
    }
}

/* The quick check: the earlier manifest's digest for a file whose size, mtime and inode
** are unchanged. */
static int reuse(hrun_Entry *e)
{
    const hrun_Prior *o = &e->prior;
    if (!o->valid || e->type != 'f' || !e->statted || e->err || o->size != e->size ||
        o->mtime_ns != e->mtime_ns || o->ino != e->ino)
        return 0;
    memcpy(e->digest, o->digest, o->dlen);
    e->has_digest = e->reused = 1;
    return 1;
}

/* }====================================================== */

/* {======================================================
** Walking, in path order
** ======================================================= */

static int excluded(const hrun_HashPool *p, const char *rel)
{
    const char *base = strrchr(rel, '/');
    base = base ? base + 1 : rel;
    for (char **g = p->exclude; *g; g++) {
        /* like rsync: a pattern without a slash matches the name, one with a slash the path */
        const char *subject = strchr(*g, '/') ? rel : base;
        if (fnmatch(*g, subject, 0) == 0) return 1;
    }
    return 0;
}

static char *join(const char *dir, size_t dl, const char *name, size_t nl, size_t *len)
{
    char *s = malloc(dl + nl + 2);
    if (s == NULL) return NULL;
    if (dl) {
        memcpy(s, dir, dl);
        s[dl] = '/';
        memcpy(s + dl + 1, name, nl + 1);
        *len = dl + 1 + nl;
    } else {
        memcpy(s, name, nl + 1);
        *len = nl;
    }
    return s;
}

/*
** A directory's listing. Each name is an item; a subdirectory is a second item too, its
** descent, sorted as NAME/: so "a" (the entry), "a-b", "a/…" (what a holds), "a0" — the
** order of the paths' bytes, which is the journal's. A directory is read when its entry
** is reached (its error belongs to that entry) and entered when its descent is.
*/
typedef struct Level Level;

typedef struct Item {
    const char *name;
    size_t off, len;       /* off: where name is in the names (they move while they grow) */
    unsigned char type;    /* d_type (DT_UNKNOWN resolved) */
    unsigned char descend; /* the descent of a directory */
    Level *child;          /* a descent's listing, once read */
} Item;

struct Level {
    DIR *d;    /* open while its items are walked */
    char *dir; /* relative to the root; "" for the root */
    size_t dirlen;
    char *names; /* NUL-ended, end to end */
    Item *items;
    size_t n, next;
};

static void level_free(Level *lv)
{
    if (lv == NULL) return;
    for (size_t i = 0; i < lv->n; i++) level_free(lv->items[i].child);
    if (lv->d) closedir(lv->d);
    free(lv->dir);
    free(lv->names);
    free(lv->items);
    free(lv);
}

static int by_key(const void *x, const void *y)
{
    const Item *a = x, *b = y;
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->name, b->name, n);
    if (c) return c;
    if (a->len == b->len) return a->descend - b->descend; /* the entry, then its descent */
    /* one name is the other's start: what follows it is '/' for a descent, else nothing */
    int ca = n < a->len ? (unsigned char)a->name[n] : a->descend ? '/' : -1;
    int cb = n < b->len ? (unsigned char)b->name[n] : b->descend ? '/' : -1;
    return ca - cb;
}

/* Reads directory fd (taken over) at dir (taken over). *err: a read's error (what was read
** is kept). NULL, with fd and dir released, when nothing could be. */
static Level *list_dir(hrun_HashPool *p, int fd, char *dir, size_t dirlen, int *err)
{
    Level *lv = calloc(1, sizeof *lv);
    if (lv == NULL || (lv->d = fdopendir(fd)) == NULL) {
        *err = lv ? errno : ENOMEM;
        close(fd);
        free(dir);
        free(lv);
        return NULL;
    }
    lv->dir = dir, lv->dirlen = dirlen;
    size_t used = 0, size = 0, cap = 0;
    struct dirent *de;
    for (;;) {
        errno = 0;
        if ((de = readdir(lv->d)) == NULL) {
            if (errno) *err = errno;
            break;
        }
        const char *name = de->d_name;
        if (name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0))) continue;
        unsigned char type = de->d_type;
        struct stat st;
        if (type == DT_UNKNOWN && fstatat(dirfd(lv->d), name, &st, AT_SYMLINK_NOFOLLOW) == 0)
            type = IFTODT(st.st_mode);
        size_t nl = strlen(name);
        if (p->exclude) {
            size_t rl;
            char *rel = join(dir, dirlen, name, nl, &rl);
            int out = rel == NULL || excluded(p, rel);
            free(rel);
            if (out) continue;
        }
        if (used + nl + 1 > size || lv->n + 2 > cap) {
            size_t nsize = used + nl + 1 > size ? 2 * size + 4096 : size;
            size_t ncap = lv->n + 2 > cap ? 2 * cap + 64 : cap;
            char *names = realloc(lv->names, nsize);
            if (names) lv->names = names, size = nsize;
            Item *items = names ? realloc(lv->items, ncap * sizeof *items) : NULL;
            if (items == NULL) {
                *err = ENOMEM;
                break;
            }
            lv->items = items, cap = ncap;
        }
        memcpy(lv->names + used, name, nl + 1);
        lv->items[lv->n++] = (Item){NULL, used, nl, type, 0, NULL};
        if (type == DT_DIR) lv->items[lv->n++] = (Item){NULL, used, nl, type, 1, NULL};
        used += nl + 1;
    }
    for (size_t i = 0; i < lv->n; i++) lv->items[i].name = lv->names + lv->items[i].off;
    if (lv->n > 1) qsort(lv->items, lv->n, sizeof *lv->items, by_key);
    return lv;
}

/* The descent item of it (a directory's entry) in its listing: after it, among the names
** that start with its name. */
static Item *descent_of(Level *lv, Item *it)
{
    for (Item *j = it + 1; j < lv->items + lv->n; j++) {
        if (j->len < it->len || memcmp(j->name, it->name, it->len) != 0) break;
        if (j->descend && j->len == it->len) return j;
    }
    return NULL;
}

/* Every path under directory rel ("rel/…") comes before `after`. */
static int subtree_before(const char *rel, size_t len, const char *after, size_t alen)
{
    int c = memcmp(after, rel, alen < len ? alen : len);
    if (c) return c > 0;
    return alen > len && (unsigned char)after[len] > '/';
}

/* For each entry, visit(p, rel, len, st, dirfd, name, err): st NULL when it could not be
** stat'ed (err says why) or was not (err -1: a regular file by its directory entry);
** err is a directory's read error. Excluded paths, other filesystems (one_file_system)
** and, when resuming, paths up to `after` are left out. */
typedef void (*Visit)(hrun_HashPool *p, char *rel, size_t len, const struct stat *st, int dirfd,
                      const char *name, int err);

static void walk(hrun_HashPool *p, Visit visit)
{
    size_t depth = 0, cap = 0;
    Level **stack = NULL;
    int err = 0;
    /* a new open: the walker and the pre-scan must not share offsets */
    int fd = openat(p->rootfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    char *top = strdup("");
    Level *lv = fd >= 0 && top ? list_dir(p, fd, top, 0, &err) : NULL;
    if (lv == NULL) {
        if (fd >= 0 && top == NULL) close(fd);
        if (top && fd < 0) free(top);
        return;
    }
    const char *after = p->o.after;
    size_t alen = p->o.afterlen;
    for (;;) {
        if (depth == cap) {
            Level **more = realloc(stack, (cap ? 2 * cap : 16) * sizeof *stack);
            if (more == NULL) { /* out of memory: the walk ends short */
                level_free(lv);
                break;
            }
            stack = more, cap = cap ? 2 * cap : 16;
        }
        stack[depth++] = lv;
        lv = NULL;
        while (depth > 0 && !p->cancel && lv == NULL) {
            Level *at = stack[depth - 1];
            if (at->next == at->n) {
                level_free(at);
                depth--;
                continue;
            }
            Item *it = &at->items[at->next++];
            if (it->descend) {
                lv = it->child; /* entered next (NULL: it could not be read, or not entered) */
                it->child = NULL;
                continue;
            }
            size_t len;
            char *rel = join(at->dir, at->dirlen, it->name, it->len, &len);
            if (rel == NULL) continue;
            int skip = after && hrun_pathcmp(rel, len, after, alen) <= 0;
            if (skip && (it->type != DT_DIR || subtree_before(rel, len, after, alen))) {
                free(rel);
                continue;
            }
            if (it->type == DT_REG) { /* its hasher stats the open file: one lookup less */
                visit(p, rel, len, NULL, dirfd(at->d), it->name, -1);
                continue;
            }
            struct stat st;
            int serr = fstatat(dirfd(at->d), it->name, &st, AT_SYMLINK_NOFOLLOW) < 0 ? errno : 0;
            int lerr = 0;
            Item *descent = serr == 0 && S_ISDIR(st.st_mode) ? descent_of(at, it) : NULL;
            if (descent && !(p->o.one_file_system && st.st_dev != p->rootdev)) {
                int cfd =
                    openat(dirfd(at->d), it->name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                char *cdir = cfd >= 0 ? strdup(rel) : NULL;
                if (cfd < 0)
                    lerr = errno;
                else if (cdir == NULL)
                    lerr = ENOMEM, close(cfd);
                else
                    descent->child = list_dir(p, cfd, cdir, len, &lerr);
            }
            if (skip)
                free(rel);
            else
                visit(p, rel, len, serr ? NULL : &st, dirfd(at->d), it->name, serr ? serr : lerr);
        }
        if (lv == NULL) break;
    }
    while (depth > 0) level_free(stack[--depth]);
    free(stack);
}

static void count(hrun_HashPool *p, char *rel, size_t len, const struct stat *st, int dirfd,
                  const char *name, int err)
{
    struct stat fst;
    (void)len;
    free(rel);
    if (err == -1 && fstatat(dirfd, name, &fst, AT_SYMLINK_NOFOLLOW) == 0) st = &fst;
    if (st && S_ISREG(st->st_mode)) {
        pthread_mutex_lock(&p->mu);
        p->total_files++;
        p->total_bytes += (uint64_t)st->st_size;
        pthread_mutex_unlock(&p->mu);
    }
}

static void *scanner_main(void *arg)
{
    hrun_HashPool *p = arg;
    walk(p, count);
    pthread_mutex_lock(&p->mu);
    p->scanned = 1;
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void set_stat(hrun_Entry *e, const struct stat *st)
{
    e->size = (uint64_t)st->st_size;
    e->dev = (uint64_t)st->st_dev;
    e->ino = (uint64_t)st->st_ino;
    e->mode = st->st_mode & 07777;
    e->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
    e->statted = 1;
}

static void found(hrun_HashPool *p, char *rel, size_t len, const struct stat *st, int dirfd,
                  const char *name, int err)
{
    hrun_Entry *e = calloc(1, sizeof *e);
    if (e == NULL) {
        free(rel);
        return;
    }
    e->path = rel, e->pathlen = len;
    e->type = 's';
    if (err == -1) { /* a regular file, by its directory entry: the hasher stats it */
        e->type = 'f';
        err = 0;
    }
    e->err = err;
    if (st) {
        set_stat(e, st);
        e->type = S_ISREG(st->st_mode)   ? 'f'
                  : S_ISDIR(st->st_mode) ? 'd'
                  : S_ISLNK(st->st_mode) ? 'l'
                                         : 's';
    }
    if (e->type == 'l') {
        char target[4096];
        ssize_t n = readlinkat(dirfd, name, target, sizeof target - 1);
        if (n >= 0) {
            target[n] = '\0';
            e->target = strdup(target);
        }
    }
    if (p->o.lookup) p->o.lookup(p->o.lookup_ud, e);
    int hash = e->type == 'f' && !e->err && !reuse(e);
    pthread_mutex_lock(&p->mu);
    while (p->next_seq - p->taken >= WINDOW && !p->cancel) pthread_cond_wait(&p->room, &p->mu);
    if (p->cancel) { /* stopping: its place in the ring may be taken */
        pthread_mutex_unlock(&p->mu);
        hrun_entry_free(e);
        return;
    }
    e->seq = p->next_seq++;
    if (hash)
        q_push(p, &p->work, e);
    else
        finish(p, e);
    pthread_mutex_unlock(&p->mu);
}

static void *walker_main(void *arg)
{
    hrun_HashPool *p = arg;
    walk(p, found);
    pthread_mutex_lock(&p->mu);
    p->walking = 0;
    pthread_cond_broadcast(&p->work.not_empty);
    pthread_cond_broadcast(&p->ready);
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* }====================================================== */

/* {======================================================
** Hashing
** ======================================================= */

/* Opens e's file to be hashed: the fd, or -1 when e is finished already (it cannot be
** opened, e->err says why; or the quick check found it unchanged). */
static int open_entry(hrun_HashPool *p, hrun_Entry *e)
{
    int fd = openat(p->rootfd, e->path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOATIME);
    if (fd < 0 && errno == EPERM) /* O_NOATIME needs the file's owner or root */
        fd = openat(p->rootfd, e->path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd < 0) {
        e->err = errno;
        /* unreadable: its metadata still belongs in the manifest */
        if (!e->statted && fstatat(p->rootfd, e->path, &st, AT_SYMLINK_NOFOLLOW) == 0)
            set_stat(e, &st);
        return -1;
    }
    if (!e->statted && fstat(fd, &st) == 0) {
        set_stat(e, &st);
        if (reuse(e)) { /* quick: unchanged */
            close(fd);
            return -1;
        }
    }
    if (e->size >= (1 << 20)) posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    return fd;
}

static void hash_one(hrun_HashPool *p, hrun_Entry *e, char *buf)
{
    if (buf == NULL) {
        e->err = ENOMEM;
        return;
    }
    int fd = open_entry(p, e);
    if (fd < 0) return;
    int err = e->size >= MAP_FROM ? hash_mapped(fd, e->size, p->o.algo, e->digest, &p->cancel) : -1;
    e->err = err >= 0 ? err
                      : hash_read(fd, p->o.algo, e->digest, buf, READ_SIZE,
                                  e->statted ? (int64_t)e->size : -1, &p->cancel);
    e->has_digest = e->err == 0;
    close(fd);
}

/* A hasher's one trip through the lock: hands the finished entries of `done` to the taker,
** then takes up to `want` files, waiting for some if `wait`. NULL: none now, or none ever
** (the walk is over and the queue empty, or the pool is cancelled). */
static hrun_Entry *trade(hrun_HashPool *p, hrun_Entry *done, int want, int wait)
{
    pthread_mutex_lock(&p->mu);
    while (done) {
        hrun_Entry *next = done->next;
        finish(p, done);
        done = next;
    }
    while (wait && p->work.head == NULL && p->walking && !p->cancel)
        pthread_cond_wait(&p->work.not_empty, &p->mu);
    hrun_Entry *batch = NULL, **tail = &batch, *e;
    while (!p->cancel && want-- > 0 && (e = q_pop(&p->work)) != NULL) *tail = e, tail = &e->next;
    pthread_mutex_unlock(&p->mu);
    return batch;
}

/* One file after another (xxh128, blake2b; sha256 where no lanes run). */
static void hash_each(hrun_HashPool *p)
{
    char *buf = malloc(READ_SIZE);
    hrun_Entry *batch = NULL;
    /* a batch at a time: fewer trips through the lock for small files */
    while ((batch = trade(p, batch, BATCH, 1)) != NULL)
        for (hrun_Entry *e = batch; e; e = e->next) hash_one(p, e, buf);
    free(buf);
}

/* }====================================================== */

/* {======================================================
** SHA-256 in lanes: a hasher keeps 8 or 16 files open and compresses a block of each
** at once (sha256x.c). A lane reads its file into its own buffer; each step hashes as
** many blocks as the emptiest lane holds, then the lanes run dry are refilled — the next
** part of their file, or the next file.
** ======================================================= */

#define LANE_READ (64 << 10)        /* one read of a lane */
#define LANE_SPAN (LANE_READ + 192) /* its buffer: a partial block kept, padding appended */
#define FEW_LANES 2 /* this many left with no file waiting: one stream each is faster */

typedef struct Lane {
    hrun_Entry *e; /* NULL: idle */
    int fd;
    uint64_t total;  /* bytes of the file read */
    size_t pos, end; /* buf[pos, end) is not hashed yet */
    int padded;      /* the file is read, its padding appended */
    unsigned char *buf;
} Lane;

typedef struct Lanes {
    int n;
    hrun_Sha256x s;
    Lane lane[HRUN_SHA256X_MAX];
    unsigned char *mem; /* the lanes' buffers, then what idle lanes hash */
    uint32_t off[HRUN_SHA256X_MAX];
    hrun_Entry *done; /* finished, for the next trade */
} Lanes;

static void lane_done(Lanes *ls, Lane *l, int err)
{
    hrun_Entry *e = l->e;
    e->err = err;
    e->has_digest = err == 0;
    close(l->fd);
    e->next = ls->done, ls->done = e;
    l->e = NULL;
}

/* Reads until the lane holds a whole block (or its file is read and padded). */
static void lane_fill(Lanes *ls, Lane *l)
{
    if (l->padded || l->end - l->pos >= 64) return;
    memmove(l->buf, l->buf + l->pos, l->end - l->pos);
    l->end -= l->pos, l->pos = 0;
    while (l->end < 64) {
        size_t want = LANE_READ - l->end;
        ssize_t n = read(l->fd, l->buf + l->end, want);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            lane_done(ls, l, errno);
            return;
        }
        l->end += (size_t)n, l->total += (uint64_t)n;
        /* a short read reaching the size fstat gave is the end: one read a small file */
        if (n == 0 || ((size_t)n < want && l->e->statted && l->total == l->e->size)) {
            l->end += hrun_sha256x_pad(l->buf + l->end, l->total);
            l->padded = 1;
            return;
        }
    }
}

/* Hashes the rest of an unpadded lane's file one stream at a time. */
static void lane_detach(hrun_HashPool *p, Lanes *ls, Lane *l, int i)
{
    size_t left = l->end - l->pos; /* read, not hashed */
    void *one = hrun_sha256x_detach(&ls->s, i, l->total - left);
    if (one == NULL) {
        lane_done(ls, l, ENOMEM);
        return;
    }
    hrun_sha256_update(one, l->buf + l->pos, left);
    int64_t rest = l->e->statted ? (int64_t)l->e->size - (int64_t)l->total : -1;
    int err = read_all(l->fd, (char *)l->buf, LANE_READ, rest, &p->cancel, hrun_sha256_update, one);
    hrun_sha256_final(one, l->e->digest);
    lane_done(ls, l, err);
}

static void hash_lanes(hrun_HashPool *p)
{
    Lanes ls = {.n = p->lanes};
    if ((ls.mem = calloc((size_t)ls.n + 1, LANE_SPAN)) == NULL) {
        hash_each(p);
        return;
    }
    for (int i = 0; i < ls.n; i++) ls.lane[i].buf = ls.mem + (size_t)i * LANE_SPAN;
    hrun_Entry *todo = NULL;
    int over = 0; /* no more files will come */
    for (;;) {
        int idle = 0, active = 0;
        for (int i = 0; i < ls.n; i++) idle += ls.lane[i].e == NULL;
        if (ls.done || (todo == NULL && idle > 0 && !over)) {
            int wait = idle == ls.n && todo == NULL;
            /* no more than the idle lanes take: what waits in the queue stays there for
            ** the other hashers */
            hrun_Entry *more = trade(p, ls.done, todo ? 0 : idle, wait);
            ls.done = NULL;
            if (more)
                todo = more;
            else if (wait)
                over = 1;
        }
        if (p->cancel) break;
        for (int i = 0; i < ls.n; i++) {
            Lane *l = &ls.lane[i];
            while (l->e == NULL && todo) {
                hrun_Entry *e = todo;
                todo = e->next, e->next = NULL;
                int fd = open_entry(p, e);
                if (fd < 0) {
                    e->next = ls.done, ls.done = e;
                    continue;
                }
                *l = (Lane){.e = e, .fd = fd, .buf = l->buf};
                hrun_sha256x_reset(&ls.s, i);
            }
            if (l->e) lane_fill(&ls, l);
            active += l->e != NULL;
        }
        if (active > 0 && active <= FEW_LANES && active < ls.n && todo == NULL) {
            /* no file waits (the walk's last, or the walker is behind): a lane of its
            ** own each would be slower than one stream */
            for (int i = 0; i < ls.n; i++) {
                if (ls.lane[i].e == NULL || ls.lane[i].padded) continue;
                lane_detach(p, &ls, &ls.lane[i], i);
                active--;
            }
        }
        if (active == 0) {
            if (over && todo == NULL && ls.done == NULL) break;
            continue;
        }
        size_t blocks = SIZE_MAX;
        for (int i = 0; i < ls.n; i++) {
            Lane *l = &ls.lane[i];
            ls.off[i] =
                (uint32_t)(l->e ? (size_t)(l->buf - ls.mem) + l->pos : (size_t)ls.n * LANE_SPAN);
            if (l->e && (l->end - l->pos) / 64 < blocks) blocks = (l->end - l->pos) / 64;
        }
        hrun_sha256x_blocks(&ls.s, ls.n, ls.mem, ls.off, blocks);
        for (int i = 0; i < ls.n; i++) {
            Lane *l = &ls.lane[i];
            if (l->e == NULL) continue;
            l->pos += blocks * 64;
            if (l->padded && l->pos == l->end) {
                hrun_sha256x_digest(&ls.s, i, l->e->digest);
                lane_done(&ls, l, 0);
            }
        }
    }
    /* cancelled: what is held is not hashed */
    for (int i = 0; i < ls.n; i++)
        if (ls.lane[i].e) {
            close(ls.lane[i].fd);
            hrun_entry_free(ls.lane[i].e);
        }
    hrun_entry_free(todo);
    trade(p, ls.done, 0, 0);
    free(ls.mem);
}

/* }====================================================== */

static void *hasher_main(void *arg)
{
    hrun_HashPool *p = arg;
    if (p->lanes)
        hash_lanes(p);
    else
        hash_each(p);
    pthread_mutex_lock(&p->mu);
    p->hashers_running--;
    pthread_cond_broadcast(&p->ready);
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

hrun_HashPool *hrun_hashpool_start(const hrun_HashOpts *o)
{
    hrun_HashPool *p = calloc(1, sizeof *p);
    if (p == NULL) return NULL;
    p->o = *o;
    struct stat st;
    if ((p->rootfd = open(o->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
        fstat(p->rootfd, &st) < 0 || (p->ring = calloc(WINDOW, sizeof *p->ring)) == NULL) {
        int err = p->rootfd < 0 ? errno : ENOMEM;
        if (p->rootfd >= 0) close(p->rootfd);
        free(p);
        errno = err;
        return NULL;
    }
    p->rootdev = st.st_dev;
    if (o->after) { /* the caller's copy may go: ours */
        char *after = malloc(o->afterlen ? o->afterlen : 1);
        if (after) memcpy(after, o->after, o->afterlen);
        p->o.after = after;
    }
    if (o->exclude) {
        size_t n = 0;
        while (o->exclude[n]) n++;
        p->exclude = calloc(n + 1, sizeof(char *));
        for (size_t i = 0; p->exclude && i < n; i++) p->exclude[i] = strdup(o->exclude[i]);
    }
    pthread_mutex_init(&p->mu, NULL);
    q_init(&p->work);
    pthread_cond_init(&p->ready, NULL);
    pthread_cond_init(&p->room, NULL);
    p->walking = 1;
    p->lanes = o->algo == HRUN_SHA256 ? hrun_sha256x_lanes() : 0;
    int n = o->threads > 0 ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    p->hashers = calloc((size_t)n, sizeof(pthread_t));
    pthread_create(&p->walker, NULL, walker_main, p);
    if (o->prescan)
        p->started_scanner = pthread_create(&p->scanner, NULL, scanner_main, p) == 0;
    else
        p->scanned = 1; /* no totals wanted */
    /* counted under the lock: a hasher done with a small tree before the count is set
    ** would otherwise have its decrement overwritten, and the pool never finish */
    pthread_mutex_lock(&p->mu);
    for (int i = 0; p->hashers && i < n; i++)
        if (pthread_create(&p->hashers[p->nhashers], NULL, hasher_main, p) == 0) p->nhashers++;
    p->hashers_running = p->nhashers;
    pthread_mutex_unlock(&p->mu);
    return p;
}

hrun_Entry *hrun_hashpool_take(hrun_HashPool *p, double wait, int *done)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)wait;
    until.tv_nsec += (long)((wait - (double)(time_t)wait) * 1e9);
    if (until.tv_nsec >= 1000000000) until.tv_sec++, until.tv_nsec -= 1000000000;
    pthread_mutex_lock(&p->mu);
    while (p->ring[p->taken % WINDOW] == NULL && (p->hashers_running > 0 || p->walking) &&
           pthread_cond_timedwait(&p->ready, &p->mu, &until) == 0) {
    }
    hrun_Entry *list = NULL, **tail = &list, *e;
    while ((e = p->ring[p->taken % WINDOW]) != NULL) {
        p->ring[p->taken++ % WINDOW] = NULL;
        *tail = e, tail = &e->next;
        p->files++;
        if (e->type == 'f') p->bytes += e->size;
    }
    if (list) pthread_cond_broadcast(&p->room);
    /* cancelled, some entries never finish: what follows them is not given */
    *done = !p->walking && p->hashers_running == 0 && list == NULL;
    pthread_mutex_unlock(&p->mu);
    return list;
}

void hrun_hashpool_progress(hrun_HashPool *p, uint64_t *files, uint64_t *bytes,
                            uint64_t *total_files, uint64_t *total_bytes, int *scanned)
{
    pthread_mutex_lock(&p->mu);
    *files = p->files, *bytes = p->bytes;
    *total_files = p->total_files, *total_bytes = p->total_bytes;
    *scanned = p->scanned;
    pthread_mutex_unlock(&p->mu);
}

void hrun_hashpool_cancel(hrun_HashPool *p)
{
    pthread_mutex_lock(&p->mu);
    p->cancel = 1;
    pthread_cond_broadcast(&p->work.not_empty);
    pthread_cond_broadcast(&p->work.not_full);
    pthread_cond_broadcast(&p->room);
    pthread_mutex_unlock(&p->mu);
}

void hrun_hashpool_free(hrun_HashPool *p)
{
    if (p == NULL) return;
    hrun_hashpool_cancel(p);
    pthread_join(p->walker, NULL);
    if (p->started_scanner) pthread_join(p->scanner, NULL);
    for (int i = 0; i < p->nhashers; i++) pthread_join(p->hashers[i], NULL);
    hrun_entry_free(p->work.head);
    for (size_t i = 0; i < WINDOW; i++) hrun_entry_free(p->ring[i]);
    free(p->ring);
    free(p->hashers);
    if (p->exclude)
        for (char **g = p->exclude; *g; g++) free(*g);
    free(p->exclude);
    free((char *)p->o.after);
    close(p->rootfd);
    pthread_mutex_destroy(&p->mu);
    free(p);
}
