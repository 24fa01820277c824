/*
** hashpool.h — hashing a file tree in parallel: a walker thread, a pre-scan thread (the
** totals for an ETA), and N hashing threads; found entries flow through bounded queues
** to the one thread that owns Lua and the journal, so memory stays bounded whatever the
** tree's size. Plain C and pthreads: no thread ever touches a lua_State.
*/
#ifndef HRUN_HASHPOOL_H
#define HRUN_HASHPOOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum hrun_algo { HRUN_XXH128, HRUN_SHA256, HRUN_BLAKE2B };

/* Digest length in bytes, name ("xxh128"), and parse by name (-1: unknown). */
size_t hrun_algo_size(enum hrun_algo a);
const char *hrun_algo_name(enum hrun_algo a);
int hrun_algo_parse(const char *name);

/* What an earlier manifest says of a file (quick mode): its digest is taken over when
** the file's size, mtime and inode are the same now. */
typedef struct hrun_Prior {
    int valid;
    uint64_t size, ino;
    int64_t mtime_ns;
    unsigned char digest[64];
    size_t dlen;
} hrun_Prior;

/* One entry of a tree. */
typedef struct hrun_Entry {
    char *path; /* relative to the root, bytes */
    size_t pathlen;
    uint64_t seq; /* its place in the walk: entries are taken in this order */
    char type;    /* 'f' file, 'l' symlink, 'd' directory, 's' special */
    uint64_t size, dev, ino;
    uint32_t mode; /* permission bits */
    int64_t mtime_ns;
    char *target; /* a symlink's */
    unsigned char digest[64];
    int has_digest;
    int err;     /* errno of what failed (stat, open, read), 0 if none */
    int reused;  /* the digest came from an earlier manifest (quick mode) */
    int statted; /* size, mode, mtime, dev and ino are known (a file's come from its
                 ** hasher's fstat: the walker only reads its name) */
    hrun_Prior prior;
    struct hrun_Entry *next;
} hrun_Entry;

void hrun_entry_free(hrun_Entry *e);

/* Orders paths as the walk gives them: bytes, unsigned, a prefix first (memcmp's
** order, and SQLite's for BLOBs). */
int hrun_pathcmp(const char *a, size_t alen, const char *b, size_t blen);

/* Called by the walker for each entry it gives, in the walk's order: it may fill e->prior
** (quick mode). Only the walker's thread calls it. */
typedef void (*hrun_HashLookup)(void *ud, hrun_Entry *e);

typedef struct hrun_HashOpts {
    const char *root;
    enum hrun_algo algo;
    int threads; /* hashing threads; <= 0: the number of CPUs */
    int one_file_system;
    const char *const *exclude; /* globs, NULL-ended (NULL: none) */
    hrun_HashLookup lookup;
    void *lookup_ud;
    int prescan; /* count the tree first, in parallel, for progress totals */
    /* resume: only paths after this one (NULL: all), as if the walk had paused there;
    ** directories whose every path comes before it are not entered */
    const char *after;
    size_t afterlen;
} hrun_HashOpts;

typedef struct hrun_HashPool hrun_HashPool;

/* Starts the threads; NULL with errno when the root cannot be read. */
hrun_HashPool *hrun_hashpool_start(const hrun_HashOpts *o);

/* Takes the entries finished so far, in the walk's order — paths ascending by
** hrun_pathcmp, a directory's entry before what it holds — as a list the caller frees
** with hrun_entry_free, waiting up to `wait` seconds for one. *done is set once the
** walk and every hash have finished and the list returned is the last. */
hrun_Entry *hrun_hashpool_take(hrun_HashPool *p, double wait, int *done);

/* Progress: entries and bytes finished, and the pre-scan's totals (*scanned is set
** when the pre-scan has finished and the totals are final). */
void hrun_hashpool_progress(hrun_HashPool *p, uint64_t *files, uint64_t *bytes,
                            uint64_t *total_files, uint64_t *total_bytes, int *scanned);

/* Stops early (an interrupt): the threads finish what they hold and exit. */
void hrun_hashpool_cancel(hrun_HashPool *p);

/* Waits for the threads and frees everything (entries not taken included). */
void hrun_hashpool_free(hrun_HashPool *p);

/* Hashes one open file into out (hrun_algo_size bytes); returns 0 or an errno. `buf`
** of `size` bytes is scratch space. */
int hrun_hash_fd(int fd, enum hrun_algo a, unsigned char *out, char *buf, size_t size);

#endif
