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
#include "xxh_avx2.h"

#define QUEUE_MAX 4096
#define READ_SIZE (128 << 10) /* fits the cache: the page cache's copy is hashed while hot */
#define BATCH     64          /* entries a hasher takes at once */
#define MAP_FROM  (64 << 20)  /* files this large are hashed through mmap */

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

/* Hashes a large file through a mapping: no copy out of the page cache (measured: the
** copy is a fifth of hashing a warm tree). Returns 0, or -1 to fall back to read. */
static int hash_mapped(int fd, uint64_t len, enum hrun_algo a, unsigned char *out)
{
    if (a != HRUN_XXH128 || !__builtin_cpu_supports("avx2")) return -1;
    void *m = mmap(NULL, (size_t)len, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    if (m == MAP_FAILED) return -1;
    madvise(m, (size_t)len, MADV_SEQUENTIAL);
    void *s = hrun_xxh3_avx2_new();
    if (s == NULL) {
        munmap(m, (size_t)len);
        return -1;
    }
    hrun_xxh3_avx2_update(s, m, (size_t)len);
    hrun_xxh3_avx2_digest(s, out);
    munmap(m, (size_t)len);
    return 0;
}

int hrun_hash_fd(int fd, enum hrun_algo a, unsigned char *out, char *buf, size_t size)
{
    int err = 0;
    ssize_t n;
    if (a == HRUN_XXH128 && __builtin_cpu_supports("avx2")) {
        void *s = hrun_xxh3_avx2_new();
        if (s == NULL) return ENOMEM;
        while ((n = read(fd, buf, size)) != 0) {
            if (n < 0) {
                if (errno == EINTR) continue;
                err = errno;
                break;
            }
            hrun_xxh3_avx2_update(s, buf, (size_t)n);
        }
        hrun_xxh3_avx2_digest(s, out);
        return err;
    }
    if (a == HRUN_XXH128) {
        XXH3_state_t *s = XXH3_createState();
        if (s == NULL) return ENOMEM;
        XXH3_128bits_reset(s);
        while ((n = read(fd, buf, size)) != 0) {
            if (n < 0) {
                if (errno == EINTR) continue;
                err = errno;
                break;
            }
            XXH3_128bits_update(s, buf, (size_t)n);
        }
        XXH128_canonical_t c;
        XXH128_canonicalFromHash(&c, XXH3_128bits_digest(s));
        memcpy(out, c.digest, 16);
        XXH3_freeState(s);
        return err;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL) return ENOMEM;
    EVP_DigestInit_ex(ctx, a == HRUN_SHA256 ? EVP_sha256() : EVP_blake2b512(), NULL);
    while ((n = read(fd, buf, size)) != 0) {
        if (n < 0) {
            if (errno == EINTR) continue;
            err = errno;
            break;
        }
        EVP_DigestUpdate(ctx, buf, (size_t)n);
    }
    unsigned int len;
    EVP_DigestFinal_ex(ctx, out, &len);
    EVP_MD_CTX_free(ctx);
    return err;
}

/* {======================================================
** Queues
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
    pthread_mutex_t mu;
    Queue work, done;
    pthread_t walker, scanner, *hashers;
    int nhashers, hashers_running;
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
    /* wake a hasher for every piece of work; the owner of the done queue only once a
    ** good batch waits (it looks every 0.1 s anyway): fewer context switches */
    if (q == &p->work || q->n % 1024 == 0) pthread_cond_signal(&q->not_empty);
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

static void deliver(hrun_HashPool *p, Queue *q, hrun_Entry *e)
{
    pthread_mutex_lock(&p->mu);
    q_push(p, q, e);
    pthread_mutex_unlock(&p->mu);
}

/* }====================================================== */

/* {======================================================
** Walking
** ======================================================= */

static int excluded(const hrun_HashPool *p, const char *rel)
{
    if (p->exclude == NULL) return 0;
    const char *base = strrchr(rel, '/');
    base = base ? base + 1 : rel;
    for (char **g = p->exclude; *g; g++) {
        /* like rsync: a pattern without a slash matches the name, one with a slash the path */
        const char *subject = strchr(*g, '/') ? rel : base;
        if (fnmatch(*g, subject, 0) == 0) return 1;
    }
    return 0;
}

static char *join(const char *dir, const char *name, size_t *len)
{
    size_t dl = strlen(dir), nl = strlen(name);
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

typedef struct Stack {
    char **dirs;
    size_t n, cap;
} Stack;

static int push_dir(Stack *s, char *dir)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        char **d = realloc(s->dirs, cap * sizeof *d);
        if (d == NULL) return -1;
        s->dirs = d, s->cap = cap;
    }
    s->dirs[s->n++] = dir;
    return 0;
}

typedef struct Names {
    struct Name {
        char *name;
        unsigned char type;
    } * v;
    size_t n, cap;
} Names;

static int by_name(const void *a, const void *b)
{
    return strcmp(((const struct Name *)a)->name, ((const struct Name *)b)->name);
}

/* Reads a directory's entries but . and .., sorted by name (bytes). -1: out of memory
** (what was read is kept). */
static int read_names(DIR *d, Names *names)
{
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' &&
            (de->d_name[1] == 0 || (de->d_name[1] == '.' && !de->d_name[2])))
            continue;
        if (names->n == names->cap) {
            size_t cap = names->cap ? names->cap * 2 : 64;
            struct Name *v = realloc(names->v, cap * sizeof *v);
            if (v == NULL) {
                rc = -1;
                break;
            }
            names->v = v, names->cap = cap;
        }
        char *name = strdup(de->d_name);
        if (name == NULL) {
            rc = -1;
            break;
        }
        names->v[names->n].name = name;
        names->v[names->n++].type = de->d_type;
    }
    if (names->n > 1) qsort(names->v, names->n, sizeof *names->v, by_name);
    return rc;
}

static void free_names(Names *names)
{
    for (size_t i = 0; i < names->n; i++) free(names->v[i].name);
    free(names->v);
}

/* Walks the tree; for each entry calls visit(p, rel, len, &st, dirfd, name) (the
** pre-scan and the walker differ there). Directories on other filesystems (with
** one_file_system) and excluded paths are not entered. */
typedef void (*Visit)(hrun_HashPool *p, char *rel, size_t len, const struct stat *st, int dirfd,
                      const char *name, int err);

static void walk(hrun_HashPool *p, Visit visit)
{
    Stack stack = {0};
    struct stat rootst;
    if (fstat(p->rootfd, &rootst) < 0) return;
    char *top = strdup("");
    if (top == NULL || push_dir(&stack, top) < 0) {
        free(top);
        return;
    }
    while (stack.n > 0 && !p->cancel) {
        char *dir = stack.dirs[--stack.n];
        /* a new open of each directory: the walker and the pre-scan must not share offsets */
        int fd =
            openat(p->rootfd, *dir ? dir : ".", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
        if (d == NULL) {
            if (fd >= 0) close(fd);
            free(dir);
            continue; /* the directory itself was reported with its error already */
        }
        /* the names in byte order: entries reach the journal's index nearly in key order
        ** (an insert beside the last one is cheaper: measured ~9 % less CPU for the writer
        ** on the small bench tree than with readdir's hash order) */
        Names names = {0};
        if (read_names(d, &names) < 0 && *dir) {
            /* the directory is recorded again, with the error: the manifest is incomplete */
            char *again = strdup(dir);
            if (again) visit(p, again, strlen(again), NULL, p->rootfd, again, ENOMEM);
        }
        size_t first_sub = stack.n;
        for (size_t i = 0; i < names.n && !p->cancel; i++) {
            const char *name = names.v[i].name;
            size_t len;
            char *rel = join(dir, name, &len);
            if (rel == NULL) continue;
            if (excluded(p, rel)) {
                free(rel);
                continue;
            }
            if (names.v[i].type == DT_REG) { /* its hasher stats the open file: one lookup less */
                visit(p, rel, len, NULL, dirfd(d), name, -1);
                continue;
            }
            struct stat st;
            int err = fstatat(dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) < 0 ? errno : 0;
            int descend = !err && S_ISDIR(st.st_mode) &&
                          !(p->o.one_file_system && st.st_dev != rootst.st_dev);
            if (descend) {
                /* unreadable directories are reported by the walker's visit */
                char *copy = strdup(rel);
                if (copy && push_dir(&stack, copy) < 0) free(copy);
            }
            visit(p, rel, len, err ? NULL : &st, dirfd(d), name, err);
        }
        /* the stack pops last first: reversed, the subdirectories are entered in order */
        for (size_t i = first_sub, j = stack.n; i + 1 < j; i++, j--) {
            char *tmp = stack.dirs[i];
            stack.dirs[i] = stack.dirs[j - 1];
            stack.dirs[j - 1] = tmp;
        }
        free_names(&names);
        closedir(d);
        free(dir);
    }
    while (stack.n > 0) free(stack.dirs[--stack.n]);
    free(stack.dirs);
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
        e->statted = 1;
        e->type = S_ISREG(st->st_mode)   ? 'f'
                  : S_ISDIR(st->st_mode) ? 'd'
                  : S_ISLNK(st->st_mode) ? 'l'
                                         : 's';
        e->size = (uint64_t)st->st_size;
        e->dev = (uint64_t)st->st_dev;
        e->ino = (uint64_t)st->st_ino;
        e->mode = st->st_mode & 07777;
        e->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
    }
    if (e->type == 'l') {
        char target[4096];
        ssize_t n = readlinkat(dirfd, name, target, sizeof target - 1);
        if (n >= 0) {
            target[n] = '\0';
            e->target = strdup(target);
        }
    }
    if (e->type == 'd' && !err && faccessat(dirfd, name, R_OK | X_OK, AT_EACCESS) < 0)
        e->err = errno;
    int verdict = p->o.lookup ? p->o.lookup(p->o.lookup_ud, e) : 0;
    if (verdict == 1) {
        hrun_entry_free(e);
        return;
    }
    deliver(p, e->type == 'f' && !e->err && verdict == 0 ? &p->work : &p->done, e);
}

static void *walker_main(void *arg)
{
    hrun_HashPool *p = arg;
    walk(p, found);
    pthread_mutex_lock(&p->mu);
    p->walking = 0;
    pthread_cond_broadcast(&p->work.not_empty);
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* }====================================================== */

static void hash_one(hrun_HashPool *p, hrun_Entry *e, char *buf)
{
    if (buf == NULL) {
        e->err = ENOMEM;
        return;
    }
    int fd = openat(p->rootfd, e->path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOATIME);
    if (fd < 0 && errno == EPERM) /* O_NOATIME needs the file's owner or root */
        fd = openat(p->rootfd, e->path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd >= 0 && !e->statted && fstat(fd, &st) == 0) {
        e->size = (uint64_t)st.st_size;
        e->dev = (uint64_t)st.st_dev;
        e->ino = (uint64_t)st.st_ino;
        e->mode = st.st_mode & 07777;
        e->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
        e->statted = 1;
        if (p->o.lookup && p->o.lookup(p->o.lookup_ud, e) == 2) { /* quick: unchanged */
            close(fd);
            return;
        }
    }
    if (fd < 0) {
        int err = errno;
        /* unreadable: its metadata still belongs in the manifest */
        if (!e->statted && fstatat(p->rootfd, e->path, &st, AT_SYMLINK_NOFOLLOW) == 0) {
            e->size = (uint64_t)st.st_size, e->dev = (uint64_t)st.st_dev,
            e->ino = (uint64_t)st.st_ino;
            e->mode = st.st_mode & 07777;
            e->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
            e->statted = 1;
        }
        e->err = err;
        return;
    }
    if (e->size >= MAP_FROM && hash_mapped(fd, e->size, p->o.algo, e->digest) == 0) {
        e->has_digest = 1;
        close(fd);
        return;
    }
    if (e->size >= (1 << 20)) posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    e->err = hrun_hash_fd(fd, p->o.algo, e->digest, buf, READ_SIZE);
    e->has_digest = e->err == 0;
    close(fd);
}

static void *hasher_main(void *arg)
{
    hrun_HashPool *p = arg;
    char *buf = malloc(READ_SIZE);
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (p->work.head == NULL && p->walking && !p->cancel)
            pthread_cond_wait(&p->work.not_empty, &p->mu);
        /* a batch at a time: fewer trips through the lock for small files */
        hrun_Entry *batch = NULL, **tail = &batch;
        for (int i = 0; i < BATCH; i++) {
            hrun_Entry *e = q_pop(&p->work);
            if (e == NULL) break;
            *tail = e, tail = &e->next;
        }
        pthread_mutex_unlock(&p->mu);
        if (batch == NULL) break;
        if (p->cancel) { /* stopping: what is left is not hashed */
            hrun_entry_free(batch);
            continue;
        }
        for (hrun_Entry *e = batch; e; e = e->next) hash_one(p, e, buf);
        pthread_mutex_lock(&p->mu);
        while (batch) {
            hrun_Entry *next = batch->next;
            q_push(p, &p->done, batch);
            batch = next;
        }
        pthread_mutex_unlock(&p->mu);
    }
    free(buf);
    pthread_mutex_lock(&p->mu);
    p->hashers_running--;
    pthread_cond_broadcast(&p->done.not_empty);
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

hrun_HashPool *hrun_hashpool_start(const hrun_HashOpts *o)
{
    hrun_HashPool *p = calloc(1, sizeof *p);
    if (p == NULL) return NULL;
    p->o = *o;
    if ((p->rootfd = open(o->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        int err = errno;
        free(p);
        errno = err;
        return NULL;
    }
    if (o->exclude) {
        size_t n = 0;
        while (o->exclude[n]) n++;
        p->exclude = calloc(n + 1, sizeof(char *));
        for (size_t i = 0; p->exclude && i < n; i++) p->exclude[i] = strdup(o->exclude[i]);
    }
    pthread_mutex_init(&p->mu, NULL);
    q_init(&p->work);
    q_init(&p->done);
    p->walking = 1;
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
    while (p->done.head == NULL && (p->hashers_running > 0 || p->walking) &&
           pthread_cond_timedwait(&p->done.not_empty, &p->mu, &until) == 0) {
    }
    hrun_Entry *list = p->done.head;
    for (hrun_Entry *e = list; e; e = e->next) {
        p->files++;
        if (e->type == 'f') p->bytes += e->size;
    }
    p->done.head = p->done.tail = NULL;
    p->done.n = 0;
    pthread_cond_broadcast(&p->done.not_full);
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
    pthread_cond_broadcast(&p->done.not_full);
    pthread_mutex_unlock(&p->mu);
}

void hrun_hashpool_free(hrun_HashPool *p)
{
    if (p == NULL) return;
    hrun_hashpool_cancel(p);
    /* drain while they finish: a thread may wait for room in the done queue */
    for (;;) {
        int done;
        hrun_entry_free(hrun_hashpool_take(p, 0.05, &done));
        pthread_mutex_lock(&p->mu);
        int idle = !p->walking && p->hashers_running == 0;
        pthread_mutex_unlock(&p->mu);
        if (idle) break;
    }
    pthread_join(p->walker, NULL);
    if (p->started_scanner) pthread_join(p->scanner, NULL);
    for (int i = 0; i < p->nhashers; i++) pthread_join(p->hashers[i], NULL);
    hrun_entry_free(p->work.head);
    hrun_entry_free(p->done.head);
    free(p->hashers);
    if (p->exclude)
        for (char **g = p->exclude; *g; g++) free(*g);
    free(p->exclude);
    close(p->rootfd);
    pthread_mutex_destroy(&p->mu);
    free(p);
}
