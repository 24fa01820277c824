/*
** internal.h — what the runtime's C files share and nothing else sees.
*/
#ifndef HRUN_INTERNAL_H
#define HRUN_INTERNAL_H

#include <errno.h>
#include <stddef.h>

#include "hrun/hrun.h"
#include "hrun/spawn.h"

/* Per-state runtime data; a userdata anchored in the registry, its address kept in
** the state's extra space so the dispatcher finds it without a table lookup. */
typedef struct hrun_Runtime {
    hrun_Hooks hooks;
    hrun_Options options;
    double deadline;    /* the current step's, monotonic; 0: none */
    char *stash_dir;    /* malloc'd; NULL outside a journaled run */
    lua_Integer run_id; /* the journaled run, 0 outside one */
    int lua_before;     /* registry refs of Lua hooks (priv.sethooks), or LUA_NOREF */
    int lua_after;
    int stood_in; /* the before hook stood in for the call just made: no after hook */
    int shielded; /* > 0: in a call's hooks, which journal it: Ctrl-C and the deadline wait */
    int deferred; /* the hook found one of them while shielded: raised once the shield is down */
    int strict;   /* inside a playbook's functions: nil, message returns raise */
    struct hrun_Sandbox *sandbox; /* the capabilities a sandboxed playbook declared; NULL: none */
    int trusted;                  /* > 0: the engine's own work, outside the sandbox */
    int undo_check;         /* checking an inverse's operation: the run's stash is hrun's own */
    lua_Integer effect_run; /* the effect being made (priv.seteffect), 0: none; */
    lua_Integer effect_id;  /* temporaries are named from it */
} hrun_Runtime;

typedef struct hrun_Sandbox hrun_Sandbox;

/* [-0, +0, v] The sandbox's check of a call of p (arguments at 1..top): raises, naming
** the capability missing, unless the declared capabilities cover what it touches. */
void hrun_sandbox_check(lua_State *L, const hrun_Prim *p, const char *fullname);

/* Does capability cap take paths (fs, btrfs, hash, …)? */
int hrun_cap_paths(const char *cap);

/* [-0, +0, v] For what a primitive uses as it runs (fs.glob's matches, the program and
** environment exec.run starts): in the sandbox, raises the refusal unless a declared
** capability t->cap covers the target; in a plan's audit, records it when it is not
** covered. Outside the sandbox, or in the engine's own (trusted) work: nothing. */
void hrun_sandbox_require(lua_State *L, const char *prim, const hrun_Target *t);

/* [-0, +(0|1), m] For a primitive that finds a target of its own while it runs (a
** redirect's URL, the repository a directory opens): may the playbook touch target,
** under capability cap? 1: yes (or no sandbox, or the engine's own work, or audit
** mode: recorded then); 0: no, and the refusal is pushed, naming `what` and the
** capability missing. */
int hrun_sandbox_allows(lua_State *L, const char *what, const char *cap, const char *target);

/* Whether the sandbox watches this call: 0, no (none set, or the engine's own work);
** 1, it audits (records, refuses nothing); 2, it enforces. */
int hrun_sandbox_mode(lua_State *L);

/* The one parse of a URL that the sandbox's check and an http request both use (a
** CURLU *, curl_url_cleanup it); NULL, and libcurl's CURLUcode in *why, when text is
** not a URL. */
struct Curl_URL;
struct Curl_URL *hrun_urlparse(const char *text, int *why);

/* The bytes of the secret at idx (secrets.read), or NULL when it is not one. */
const char *hrun_tosecret(lua_State *L, int idx, size_t *len);

/* The bytes of the string or secret at idx, or NULL when it is neither (no numbers). */
const char *hrun_tobytes(lua_State *L, int idx, size_t *len);

/* [-0, +0, v] Field `field` of the options table at arg as hrun_tobytes gives it (kept
** alive by the table), or NULL when the table or the field is absent; another type is
** an argument error. */
const char *hrun_optbytes(lua_State *L, int arg, const char *field, size_t *len);

/* How many texts the masker hides: every secret made, and each line of one of several
** lines (0: nothing to mask). */
int hrun_secrets_masked(void);

/* Is p the bytes of a live secret (an argv entry taken from one)? */
int hrun_secret_owns(const char *p);

/* [-0, +1, m] The text at idx with the bytes of every secret made (live or collected),
** and each line of one of several lines, replaced by "<secret>" (a run of them by one);
** a value that is not text as it is. */
void hrun_mask(lua_State *L, int idx);

/* [-0, +0, m] hrun's stdout and stderr pass the masker: files' write, io.write, print. */
void hrun_maskstdio(lua_State *L);

/* While set, json.encode writes a secret's bytes instead of "<secret>" (http's json);
** a __tojson it calls runs with it unset. */
extern int hrun_json_reveal;

/* [-0, +1, m] The wire codec and channels (wire.c): plain data as one line of JSON. */
int luaopen_hrun_wire(lua_State *L);

/* [-0, +0, m] Adds to the private library on top: wire, sandboxspawn, sandboxend. */
void hrun_openconfine(lua_State *L);

/* What confinement a process got (hrun_confine); missing: why each part is not there. */
typedef struct hrun_Confinement {
    int nobody, no_new_privs, landlock_abi, seccomp, rlimit_as;
    int nmissing;
    char missing[4][240];
    char note[240]; /* what this build does not do, though the kernel could */
} hrun_Confinement;

/* Confines the calling process for good: no_new_privs, Landlock with no access, the
** seccomp list of a Lua interpreter on two pipes, RLIMIT_AS of what it has + memory. */
void hrun_confine(size_t memory, hrun_Confinement *c);

/* The main of `hrun __sandbox`: the confined process a sandboxed playbook runs in. */
int hrun_child_main(int argc, char **argv);
/* hrun __relay …: the byte path of a copy between machines (relay.c). */
int hrun_relay_main(int argc, char **argv);

/* {======================================================
** transfer.c: children whose output is kept; copies between machines
** ======================================================= */

typedef struct hrun_Capture {
    hrun_Proc proc;
    char *all, *out; /* both streams as they came, stdout alone: NUL-ended after the run */
    size_t all_len, all_cap, out_len, out_cap;
    int nomem;
} hrun_Capture;

/* [-0, +1, e] Runs argv as a child of the call — journaled before it runs (children.c),
** under the step's deadline and Ctrl-C (raised as the call's) — and pushes what owns its
** output, closed when the call ends. *err: 0, or the errno its start failed with. */
hrun_Capture *hrun_capture(lua_State *L, char *const argv[], int *err);
/* Its exit code, or -1 when a signal ended it. */
int hrun_capture_code(const hrun_Capture *c);
/* [-0, +1, m] The last lines it said (a few, on one line): for a failure's message. */
void hrun_capture_tail(lua_State *L, const hrun_Capture *c);
/* [-0, +2, e] With a copy's (src, dst, opts) at 1..3: pushes the socket its sending side
** answers on (opts.from: through the TRANSPORT function) and its closer (marked
** to-be-closed); returns the socket, or NULL when the data is here. */
const char *hrun_transport(lua_State *L, const char *name);
/* [-0, +1, e] What the sending side said, from the closer at idx (its `said`), as
** " (the sending side: …)", or "". */
void hrun_transport_said(lua_State *L, int idx);
/* [-0, +1, e] The path of the running hrun (its relay is itself). */
const char *hrun_self_exe(lua_State *L);
/* The sandbox's targets of a copy (src, dst, {from}): dst, and src unless from. */
int hrun_copy_targets(lua_State *L, hrun_Target *t);
/* [-0, +0, -] Does the copy at 1..3 name the machine of its data (opts.from)? Raw: it
** never raises. */
int hrun_copy_remote(lua_State *L);
/* path as rsync names a tree's contents: without its trailing slashes, then one ("/"
** stays "/"), into out; 0, or -1 when it does not fit (relay.c: the sender's check). */
int hrun_tree_contents(const char *path, char *out, size_t size);
/* fs.sync and its hooks, entered in the fs module's table. */
int hrun_fs_sync(lua_State *L);
int hrun_fs_sync_inverse(lua_State *L);
int hrun_fs_sync_state(lua_State *L);
int hrun_fs_sync_unchanged(lua_State *L);

/* }====================================================== */

/* Counts delta bytes against the Lua heap's limit (C allocations made for Lua: the
** sandbox's JSON); 0 when a positive delta would pass it (nothing counted). */
int hrun_heap_charge(ptrdiff_t delta);

/* Whether an allocation was refused under the heap's limit since it was set. */
int hrun_heap_hit(void);

/* [-0, +0, m] Adds memlimit and memhit to the table on top. */
void hrun_openheap(lua_State *L);

/* Lifts the sandbox and frees it. */
void hrun_sandbox_close(hrun_Runtime *rt);

/* [-0, +0, m] Adds to the private library on top: sandbox, capability, trusted, allowed,
** capsused (sandbox.c). */
void hrun_opensandbox(lua_State *L);

static inline hrun_Runtime *hrun_runtime(lua_State *L)
{
    return *(hrun_Runtime **)lua_getextraspace(L);
}

/* The Levenshtein-nearest of `cands` (NULL-ended) to `word`, or NULL when none is
** close enough to be a plausible typo. */
const char *hrun_nearest(const char *word, const char *const cands[]);

/* Installs the Lua hook functions (priv.sethooks): before(call, ...) and
** after(call, nres, ...) with call = {name, module, kind, cap, writes}. */
int hrun_setluahooks(lua_State *L);

/* Re-arms the interrupt/deadline hook as the runtime's state requires. */
void hrun_armhook(lua_State *L);

/* Sets the shield (hrun_Runtime.shielded) back to level, the value it had before the
** call hooks ran; at 0, an interrupt or a deadline the hook found in the meantime is
** raised at the next instruction of L's Lua code — unless delivered: the error on its
** way up is that interruption (a primitive raised it), which is then not raised twice. */
void hrun_unshield(lua_State *L, int level, int delivered);

/* Gives coroutine co a count hook that watches for interrupts and the deadline (hooks
** are per thread: one made before a step's deadline was set would otherwise run on). */
void hrun_armthread(lua_State *co);

/* Registry field: the function that stream = true lines go to (priv.setstreamsink);
** absent: hrun's own stdout and stderr. */
#define STREAM_SINK "hrun.streamsink"

/* Registry field: fn(name, src, dst, opts) → socket | nil, closer: where the sending
** side of a copy from opts.from answers (priv.settransport: the runner's, the agent's);
** nil: the data is on this machine. closer is closed when the call ends. */
#define TRANSPORT "hrun.transport"

/* Registry field: a function called about every 0.1 s while a primitive waits
** (priv.setticker: the runner's spinner). */
#define TICKER "hrun.ticker"

/* Registry field: function(path) → true when an unfinished run references path in its
** journal (priv.setprotector); btrfs.prune never deletes those. */
#define PROTECTOR "hrun.protector"

/* [-0, +1, m] The private library handed to the Lua engine as a chunk argument
** (never a global): interrupts, the registry listing, the REPL's line editor. */
int hrun_openprivate(lua_State *L);

/* [-0, +0, m] Add to the private library on top: db_open (sqlite.c); lock, crash
** (lock.c); sha256 (digest.c). */
void hrun_opensqlite(lua_State *L);

/* The journal database behind a db userdata (sqlite.c). */
struct sqlite3;
struct sqlite3_stmt;
struct sqlite3 *hrun_db_check(lua_State *L, int idx);

/* [-0, +1, m] Column i of the row st is on, as a Lua value (text and blobs as strings). */
void hrun_push_column(lua_State *L, struct sqlite3_stmt *st, int i);

/* fsync of a directory (what a rename into it needs to be durable); -1 and errno. */
int hrun_fsync_dir(const char *dir);

/* [-0, +1, m] Steps st to its end, pushing its rows {{column = value, …}, …}; returns
** the last sqlite3_step code (SQLITE_DONE when every row was read). */
int hrun_push_rows(lua_State *L, struct sqlite3_stmt *st);

/* Registry field: function() → the journal's db userdata, opened on first use (set by
** the command line and by the runner); the hash module keeps manifests there. */
#define JOURNAL_DB "hrun.journaldb"
void hrun_opendigest(lua_State *L);
/* [-0, +0, m] Add to the private table on top: undo.c's state, restate, seteffect,
** leftovers; children.c's setspawnsink, reap. */
void hrun_openundo(lua_State *L);

/* {======================================================
** Careful undo (undo.c): states, their fingerprints, temporaries named from the effect
** ======================================================= */

/* The template of a temporary beside target (mkstemp's XXXXXX at its end) into out:
** DIR/.BASENAME.hrun-<run>-<effect>-XXXXXX while an effect is set (priv.seteffect), so
** that leftovers finds it after a crash; DIR/.BASENAME.hrun-XXXXXX otherwise. 0, or -1
** (ENAMETOOLONG). */
int hrun_tmpname(lua_State *L, const char *target, char *out, size_t size);

/* path made absolute (relative to the working directory) and clean of ".", ".." and
** doubled slashes, lexically: symlinks are not resolved. 0, or -1 with errno. */
int hrun_abspath(const char *path, char *out, size_t size);

/* [-1, +0, m] For state functions: appends {kind, target, key = the value on top} to
** the array at list. */
void hrun_addstate(lua_State *L, int list, const char *kind, const char *target);

/* [-0, +0, m] Appends a `kind` entry whose key and target are path made absolute (a
** subvolume, a repository); hrun_addpath, a "path" one. */
void hrun_addabs(lua_State *L, int list, const char *kind, const char *path);
void hrun_addpath(lua_State *L, int list, const char *path);

/* The fingerprint of each kind of state: [-0, +1, m] with the key at 1, pushes a
** readable string, equal exactly when the state is; "absent" when nothing is there;
** "unreadable: why" when it cannot be known (they never raise for the world). */
int hrun_path_fp(lua_State *L);      /* undo.c: key = absolute path */
int hrun_subvolume_fp(lua_State *L); /* mod_btrfs.c: key = absolute path */
int hrun_ref_fp(lua_State *L);       /* mod_git.c: key = {repo, ref} */
int hrun_repo_fp(lua_State *L);      /* mod_git.c: key = a repository's absolute path */
int hrun_unit_fp(lua_State *L);      /* mod_service.c: key = unit name */
int hrun_container_fp(lua_State *L); /* mod_podman.c: key = container name */
int hrun_profile_fp(lua_State *L);   /* mod_nixos.c: key = a profile's link */

/* Removes path and everything under it, never following a symlink nor entering
** another filesystem than path's own. 0, or -1 with errno. */
int hrun_rmtree_onefs(const char *path);

/* }====================================================== */
void hrun_openchildren(lua_State *L);
void hrun_openlock(lua_State *L);

/* The REPL's line editor (runtime/repl.c), private entry points of the engine. */
int hrun_repl_readline(lua_State *L);
int hrun_repl_addhistory(lua_State *L);
int hrun_repl_open(lua_State *L);
int hrun_repl_close(lua_State *L);

/* [-0, +0, e] For inverse functions of other modules that change a file (mod_fs.c):
** appends to the list at idx how to put path back as it is now — its bytes saved in
** the run's stash and restored (fs._restore), or removed when it does not exist. */
void hrun_undo_change(lua_State *L, int idx, const char *what, const char *path);

/* The body of fs.write (path, data [, opts]): atomic, fsync'ed, mode and owner kept. For
** a module whose primitive writes a file as part of its job (lua_call it; it does not
** go through the dispatcher, the module's own primitive is the journaled effect). */
int hrun_fs_write(lua_State *L);

/* [-0, +0, m] libgit2's global state, made once for the Lua state (mod_git.c). */
void hrun_need_libgit2(lua_State *L);

/* {======================================================
** Diffs of a file's content, for previews (diff.c)
** ======================================================= */

/* [-0, +0, m] Appends a line to the list at idx (formatted): a preview's lines. */
void hrun_add_line(lua_State *L, int idx, const char *fmt, ...);

/* [-0, +1, m] The preview of a change of path's content, old (NULL: a new file) → new:
** {lines = {"--- path", "+++ path", "@@ … @@", " context", "-old", "+new", …}, diff =
** true, path, added, removed}, both sides masked first; binary content said as such. */
void hrun_diff_preview(lua_State *L, const char *path, const char *old, size_t oldlen,
                       const char *new, size_t newlen);

/* [-0, +1, m] The same, of path as it is now (absent: a new file) → new; a side too large
** or not a regular file gives a preview that says why there is no diff. */
void hrun_diff_file(lua_State *L, const char *path, const char *new, size_t newlen);

/* [-0, +1, m] The preview of copying the regular file src over dst, or nil when src is
** not one that can be read. */
void hrun_diff_files(lua_State *L, const char *src, const char *dst);

/* }====================================================== */

/* The bodies of json.encode (value [, opts]) → string and json.decode (string) → value,
** for modules that speak JSON inside their own primitive (lua_call them). */
int hrun_json_encode(lua_State *L);
int hrun_json_decode(lua_State *L);

/* Removes path and, if a directory, everything under it (not following symlinks).
** 0, or -1 with errno. */
int hrun_rmtree(const char *path);

/* What a file's type is called (st_mode's S_IFMT bits): "file", "dir", "link", "fifo",
** "socket", "char", "block", "unknown" (fs.stat's types, the undo fingerprints'). */
const char *hrun_typename(unsigned mode);

/* [-0, +0, m] Calls fn (a library's global clean-up: git_libgit2_shutdown, …) when the
** Lua state closes. */
void hrun_atclose(lua_State *L, lua_CFunction fn);

/* [-0, +0, m] For the inverse of a start or a stop (of a unit, a container): appends
** "<module>.stop" (or ".start") of name to the list at idx when the call changes whether
** it runs — running: whether it runs now. */
void hrun_undo_startstop(lua_State *L, int idx, const char *module, const char *name, int starting,
                         int running);

/* [-0, +1, m] Pushes a function that runs a command as exec.run does (argv, opts →
** result), its messages starting with `what` (a static string), without going through
** the dispatcher: for modules whose one primitive runs a tool (nixos.rebuild). */
void hrun_pushexec(lua_State *L, const char *what);

/* {======================================================
** Children: what spawn.c tells of each child it starts (children.c's spawn sink)
** ======================================================= */

struct hrun_Proc;
struct hrun_SpawnOpts;

/* Called by hrun_spawn for each child right after the fork, before the child may exec
** (it waits on a gate pipe): 0 lets it run; non-zero refuses it — it is killed at the
** gate, having run nothing, and hrun_spawn returns HRUN_REFUSED. Main thread only. */
typedef int (*hrun_SpawnReport)(void *ud, const struct hrun_Proc *p, const char *argv0);

/* What hrun_spawn returns for a child its report refused (an errno value). */
#define HRUN_REFUSED ECANCELED

/* hrun_spawn reporting the child to `report` (NULL: to nobody) instead of the one
** hrun_setspawnreport installed. */
int hrun_spawn_reported(struct hrun_Proc *p, const struct hrun_SpawnOpts *o,
                        hrun_SpawnReport report, void *ud);

/* Installs the report of every hrun_spawn (NULL: none); children.c does, while a spawn
** sink is set. */
void hrun_setspawnreport(hrun_SpawnReport report, void *ud);

/* [-0, +(0|1), -] The report to the spawn sink (priv.setspawnsink) of the state of the
** lua_State ud, called on that thread: 0 when it returned or none is set; -1 when it
** raised, its error then on top. For a primitive that has its lua_State at hand. */
int hrun_children_report(void *ud, const struct hrun_Proc *p, const char *argv0);

/* }====================================================== */

/* [-(n+1), +(0|1), -] Calls the function below its n arguments under a protected
** call whose handler adds a traceback when -v is on (one helper for every C→Lua
** callback). Returns LUA_OK with one result, or an error status with the error. */
int hrun_pcallback(lua_State *L, int nargs);

/* [-0, +0, -] Calls the runner's ticker (priv.setticker: its spinner), if there is one,
** while a primitive waits; its errors are ignored. */
void hrun_tick(lua_State *L);

/* {======================================================
** The engine's Lua library (stdlib.c); in the portable build (HRUN_PORTABLE), built in
** ======================================================= */

/* What the portable build calls the directory of its built-in library: main passes it as
** the library's directory; chunk names are "@(built in)/hrun/cli.lua". */
#define HRUN_BUILTIN_STDLIB "(built in)"

/* A file of the built-in library: name "hrun/cli.lua", its bytes (generated at build time
** by cmake/embed_stdlib.cmake into hrun_stdlib_files, ended by a NULL name). */
typedef struct hrun_StdlibFile {
    const char *name;
    const unsigned char *bytes;
    size_t len;
} hrun_StdlibFile;
extern const hrun_StdlibFile hrun_stdlib_files[];

/* [-0, +1, m] Loads file ("hrun/cli.lua") of the library in dir as luaL_loadfile does
** (the chunk, or the error and LUA_ERRFILE/LUA_ERRSYNTAX). For HRUN_BUILTIN_STDLIB (the
** portable build) the file is the binary's copy, and from then on `require "hrun.x"`
** finds the built-in hrun/x.lua (a searcher before package.path's). */
int hrun_stdlib_load(lua_State *L, const char *dir, const char *file);

/* }====================================================== */

#endif
