/*
** hrun.h — the embedding API and the primitive registry.
**
** Every native function hrun gives Lua is a primitive: registered once, with whether it
** reads or writes the system and the capability it needs, and always called through one
** dispatcher (runtime/registry.c).  Plan mode, the journal and the capability sandbox
** are hooks on that dispatcher; modules never test for them.
*/
#ifndef HRUN_H
#define HRUN_H

#include <stddef.h>

#include <lua.h>
#include <lauxlib.h>

#define HRUN_VERSION "0.1.0"

/* {====================================================================
** The primitive registry
** ===================================================================== */

/* What a primitive does to the system. */
enum hrun_kind {
    HRUN_PURE,  /* computes from its arguments only (json.encode) */
    HRUN_READ,  /* looks at the system (fs.read, sys.hostname) */
    HRUN_WRITE, /* changes it (fs.write, exec.run): recorded in plan mode, journaled */
};

/* What one call touches, for the capability sandbox: a path (fs, btrfs, hash, git, nix,
** secrets), a program (exec), a unit or container (service), a URL (net), an environment
** variable (env). */
typedef struct hrun_Target {
    const char *cap;   /* the capability it falls under; NULL: the primitive's */
    const char *value; /* a string among the call's arguments (or anchored on the stack) */
    const char *base;  /* a relative path's directory (exec's cwd); NULL: hrun's */
    int list;          /* non-zero: the stack index of an array of strings, each a target as value
                       ** would be (value unused): as many as a call has (exec.run's env names) */
    int set; /* env: the call gives the variable a value (some no sandboxed playbook may) */
} hrun_Target;

#define HRUN_MAXTARGETS 6 /* exec: the program, the undo's, env set and unset, creates, removes */

/* Declared with designated initializers: {.name = "write", .func = fs_write, …}. */
typedef struct hrun_Prim {
    const char *name;   /* field in the module table: "write"; "_name": internal (undo) */
    lua_CFunction func; /* misuse raises; the world's failures return nil, msg, code */
    enum hrun_kind kind;
    const char *cap; /* capability it needs ("fs", "exec"); NULL for pure ones */
    /* For a HRUN_WRITE primitive whose arguments can make one call read-only
    ** (exec.run's {readonly=true}): [-0, +0, -], arguments at 1..top; returns
    ** non-zero when this call writes. Must not raise. NULL: every call writes. */
    int (*writes)(lua_State *L);
    /* For a write: [-0, +(1|2), e] with the call's arguments at 1..top, before the call
    ** runs: pushes how to undo it, a list of operations run in order
    ** {{op = "fs.remove", args = {…}}, …}, or nil and why it cannot be undone. It may
    ** save what the call will destroy (hrun_stash). NULL: it cannot be undone. */
    lua_CFunction inverse;
    /* It destroys what it cannot give back (btrfs.delete): in a playbook step it is
    ** refused unless the step has its own undo or says irreversible = true. */
    int destroys;
    /* For a write, in plan mode only: [-0, +1, e] with the call's arguments at 1..top,
    ** pushes what the call would change for the plan to show — a table with `lines`
    ** (text for people) and any data (nixos.rebuild switch: the closure diff) — or nil.
    ** It may read and build, never change the system. NULL: nothing to show. */
    lua_CFunction preview;
    /* For the sandbox: [-0, +?, -] with the call's arguments at 1..top, fills t with what
    ** this call touches and returns how many (it may push values the targets point
    ** into). Must not raise; an argument of the wrong type is left to the primitive.
    ** NULL: the call touches nothing in particular (any capability of its name will do). */
    int (*targets)(lua_State *L, hrun_Target *t);
    /* For a write whose undo can check its ground first: [-0, +1, e] with the call's
    ** arguments at 1..top, pushes what the call changes, an array with one entry per
    ** thing: {kind = "path", target = "/abs/path" (for people), key = what the kind's
    ** fingerprint reads back (plain data)}, plus, for leftovers, `locks` (lock files a
    ** kill may leave) or `aside_of`. The engine adds each entry's fingerprint
    ** (runtime/undo.c), before the call and again before its inverse runs: equal to
    ** before, already undone; unlike before and after, changed since. Raises only for
    ** misuse. NULL, or nil pushed: nothing to compare (exec.run, a restart). */
    lua_CFunction state;
    /* For a write that can know when it would change nothing (the same bytes, the unit
    ** already active): [-0, +1, e] with the call's arguments at 1..top, before the call
    ** runs, pushes what the call returns when there is nothing to do (a true value:
    ** fs.write's path, service.start's status read now), or nil when the call would
    ** change something or it cannot tell. It reads, never changes the system; it raises
    ** only for misuse (the call itself then says what is wrong). The runner neither runs
    ** nor journals such a call, and the step counts it ok. NULL: every call changes. */
    lua_CFunction unchanged;
    /* For a write: the position of its options table (fs.write's {mode} is 3), where the
    ** dispatcher takes `keep = true` out of it before the hooks and the write see it; 0:
    ** it takes no options (and cannot be kept). */
    int opts;
} hrun_Prim;

/* Targets functions for the common shapes: argument 1, argument 2, arguments 1 and 2;
** and one that adds the string field `field` of the table at `arg` (as capability
** `cap`, NULL: the primitive's) to the n targets in t, returning the new count. */
int hrun_targets_arg1(lua_State *L, hrun_Target *t);
int hrun_targets_arg2(lua_State *L, hrun_Target *t);
int hrun_targets_args12(lua_State *L, hrun_Target *t);
int hrun_targets_field(lua_State *L, int arg, const char *field, hrun_Target *t, int n,
                       const char *cap);

/* An absolute form of path (relative to base, or the working directory when NULL):
** without "." and "..", with the symlinks of its longest existing prefix resolved.
** 0, or -1 with errno. */
int hrun_normpath(const char *path, const char *base, char *out, size_t size);

/* One call of a primitive, as the hooks see it. */
typedef struct hrun_Call {
    const hrun_Prim *prim;
    const char *module;   /* "fs" */
    const char *fullname; /* "fs.write" */
    int writes;           /* this call changes the system */
    int nargs;            /* arguments at 1..nargs */
    int keep;             /* a write's options said keep = true: a rollback leaves it */
} hrun_Call;

/* Hooks on the dispatcher, installed by the runner (plan mode, journal, sandbox). */
typedef struct hrun_Hooks {
    /* [-0, +r, e] Runs before the primitive, with the call's arguments at 1..nargs.
    ** Returns -1 to let the primitive run, or r >= 0 after pushing r values that
    ** stand for its results without running it (plan mode). May raise (sandbox). */
    int (*before)(lua_State *L, const hrun_Call *call, void *ud);
    /* [-0, +0, e] Runs after the primitive returned, its nres results on top; or after
    ** it raised, with nres = -1 and the error on top. Not when `before` stood in. */
    void (*after)(lua_State *L, const hrun_Call *call, int nres, void *ud);
    void *ud;
} hrun_Hooks;

/* [-0, +1, m] Creates the table of module `module` from `prims` (ended by a NULL
** name), each function a dispatcher closure, and enters them in the registry. */
void hrun_newmodule(lua_State *L, const char *module, const hrun_Prim *prims);

/* [-n, +0, e] Checks a call of primitive `fullname` with the n values on top as its
** arguments (popped) against the sandbox in force: raises as the call itself would be
** refused, before anything of it (its preview, its inverse) has run. undo: the call is
** an inverse's operation, checked again before it runs — what it reads back from the
** run's stash is hrun's own; where it writes must still be the playbook's. */
void hrun_checkcall(lua_State *L, const char *fullname, int n, int undo);

/* [-0, +1, e] Runs the inverse function of primitive `fullname` with the n values on
** top as its arguments (popped); pushes its list of operations, or nil and why. */
int hrun_inverse(lua_State *L, const char *fullname, int n);

/* [-0, +1, e] Runs the preview function of primitive `fullname` with the n values on
** top as its arguments (popped); pushes its table, or nil when it has none. */
int hrun_preview(lua_State *L, const char *fullname, int n);

/* [-0, +1, e] Runs the state function of primitive `fullname` with the n values on
** top as its arguments (popped); pushes its array of states (without fingerprints), or
** nil when it has none. */
int hrun_state(lua_State *L, const char *fullname, int n);

/* [-0, +1, e] Runs the unchanged function of primitive `fullname` with the n values on
** top (popped): what the call returns when it would change nothing, or nil. */
int hrun_unchanged(lua_State *L, const char *fullname, int n);

/* Where inverse functions save what a write will destroy (the current run's stash
** directory), or NULL outside a journaled run. */
const char *hrun_stashdir(lua_State *L);

/* Installs hooks (NULL: none) and returns the previous ones. */
hrun_Hooks hrun_sethooks(lua_State *L, const hrun_Hooks *hooks);

/* [-0, +1, m] An array describing every registered primitive:
** {name = "fs.write", kind = "write", cap = "fs", calls = N}. */
void hrun_pushprimitives(lua_State *L);

/* }==================================================================== */

/* {====================================================================
** Errors and arguments (rule: misuse raises, the world returns nil, msg, code)
** ===================================================================== */

/* [-0, +3, m] Pushes nil, "what: obj: strerror(err)", "ENAME" (obj may be NULL);
** returns 3, so a binding can `return hrun_fail(...)`. */
int hrun_fail(lua_State *L, const char *what, const char *obj, int err);

/* [-0, +3, m] Pushes nil, the formatted message, and `code`; returns 3. */
int hrun_failf(lua_State *L, const char *code, const char *fmt, ...);

/* [-0, +0, m] Gives the userdata on top its metatable `type` — made on first use, with
** `close` as both __gc and __close (one idempotent close: rule 5), `methods` (or NULL)
** as __index, and locked. */
void hrun_setclose(lua_State *L, const char *type, lua_CFunction close, const luaL_Reg *methods);

/* [-n, +0, m] For inverse functions: appends {op = op, args = {the n values on top}} to
** the list of undo operations at idx. */
void hrun_addop(lua_State *L, int idx, const char *op, int n);

/* The symbolic name of an errno value: "ENOENT"; "E<n>" when unknown. */
const char *hrun_errname(int err);

/* [-0, +0, v] A path argument: a string without NUL bytes (any other byte goes). */
const char *hrun_checkpath(lua_State *L, int arg, size_t *len);

/* [-0, +0, v] Raises when the table at `arg` (if any) has a key not in `known`
** (a NULL-ended list), naming the nearest known key. */
void hrun_checkopts(lua_State *L, int arg, const char *const known[]);

/* Options read from the table at `arg` (absent or nil: the default). Wrong types
** raise "bad argument #arg (field 'name': number expected, got string)". */
int hrun_optbool(lua_State *L, int arg, const char *name, int def);
lua_Number hrun_optnumber(lua_State *L, int arg, const char *name, lua_Number def);
lua_Integer hrun_optinteger(lua_State *L, int arg, const char *name, lua_Integer def);
const char *hrun_optstring(lua_State *L, int arg, const char *name, const char *def, size_t *len);
/* [-0, +(0|1), v] Pushes field `name` if it has type `t` and returns 1; returns 0 and
** pushes nothing when it is nil; raises for any other type. */
int hrun_optfield(lua_State *L, int arg, const char *name, int t);

/* }==================================================================== */

/* {====================================================================
** Interrupts (SIGINT, SIGTERM)
** ===================================================================== */

/* Installs the handlers; the next signal raises "interrupted" in Lua at a safe point
** (a hook), never by a longjmp out of C code. */
void hrun_catchsignals(lua_State *L);

/* How many interrupts arrived since the last hrun_clearinterrupt (0: none). Blocking
** primitives watch it and give up cleanly. */
int hrun_interrupted(void);
void hrun_clearinterrupt(void);

/* Takes the interrupts that arrived (returned; none are left), and puts them back: in
** between, a wait that must finish (a host's answer to an interrupt sent on to it) is
** not itself interrupted — by those; one that arrives after still is. Putting back
** does not raise: blocking primitives and the runner see them. */
int hrun_takeinterrupts(void);
void hrun_putinterrupts(int n);

/* [-0, +0, v] Raises the interrupt error ("interrupted"). */
int hrun_raiseinterrupt(lua_State *L);

/* Sleeps up to `seconds`, waking early on an interrupt; returns 0 if slept in full,
** -1 if interrupted. */
int hrun_sleep(double seconds);

/* The current step's deadline on the monotonic clock (0: none). While one is set, a
** count hook stops runaway Lua code with the error "timed out", and blocking
** primitives (exec.run, sys.sleep) stop waiting at it. */
void hrun_setdeadline(lua_State *L, double deadline);
double hrun_deadline(lua_State *L);

/* [-0, +0, v] Raises the deadline error ("timed out"). */
int hrun_raisetimeout(lua_State *L);

/* Monotonic clock and wall clock, in seconds. */
double hrun_monotime(void);
double hrun_walltime(void);

/* }==================================================================== */

/* {====================================================================
** The state
** ===================================================================== */

typedef struct hrun_Options {
    int verbose; /* -v: tracebacks and debug lines */
    int color;   /* colours on a terminal */
} hrun_Options;

/* A new state with Lua's standard libraries, hrun's modules preloaded as
** "hrun.<name>" and set as globals. NULL when out of memory. */
lua_State *hrun_newstate(void);

/* The options of the state (set by the command line). */
hrun_Options *hrun_options(lua_State *L);

/* [-0, +1, m] Requires every hrun module and sets them as globals; leaves the table
** {name = module} on the stack. */
void hrun_openlibs(lua_State *L);

/* Module openers (runtime/modules.c lists them in one table). */
int luaopen_hrun_fs(lua_State *L);
int luaopen_hrun_exec(lua_State *L);
int luaopen_hrun_json(lua_State *L);
int luaopen_hrun_sys(lua_State *L);
int luaopen_hrun_btrfs(lua_State *L);
int luaopen_hrun_hash(lua_State *L);
int luaopen_hrun_git(lua_State *L);
int luaopen_hrun_nixos(lua_State *L);
int luaopen_hrun_http(lua_State *L);
int luaopen_hrun_service(lua_State *L);
int luaopen_hrun_podman(lua_State *L);
int luaopen_hrun_sqlite(lua_State *L);
int luaopen_hrun_secrets(lua_State *L);

/* }==================================================================== */

#endif
