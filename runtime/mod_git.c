/*
** mod_git.c — the `git` module through libgit2 (no git CLI): open, init, clone, head,
** status, log, tags, commit, tag, delete_tag, checkout_paths, checkout, fetch, diff.
**
** Every function takes the repository's directory first, so a journaled call and its
** inverse are plain JSON; `git.open(dir)` returns a repository object whose methods
** call those functions with its path (through the dispatcher: journaled like any other).
*/
#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <git2.h>

#include "internal.h"

#define REPO_TYPE "hrun.git.repo"

/* {======================================================
** Errors and opening
** ======================================================= */

/* [-0, +3, m] nil, "what: obj: libgit2's message", code */
static int fail(lua_State *L, const char *what, const char *obj, int rc)
{
    const git_error *e = git_error_last();
    const char *msg = e && e->message ? e->message : "unknown error";
    const char *code = rc == GIT_ENOTFOUND       ? "ENOENT"
                       : rc == GIT_EEXISTS       ? "EEXIST"
                       : rc == GIT_EAMBIGUOUS    ? "EAMBIGUOUS"
                       : rc == GIT_EUNBORNBRANCH ? "EUNBORN"
                       : rc == GIT_EUSER         ? "EINTR"
                       : rc == GIT_ECONFLICT     ? "ECONFLICT"
                                                 : "EGIT";
    if (obj) return hrun_failf(L, code, "%s: %s: %s", what, obj, msg);
    return hrun_failf(L, code, "%s: %s", what, msg);
}

/* {======================================================
** The sandbox: the repository a directory opens, its config, its remotes
** ======================================================= */

/* Config keys that would send git (now or in a later libgit2) outside the scope its
** capability names: another work tree, hooks or a monitor run from elsewhere, an ssh
** command, a config file read from elsewhere. A sandboxed playbook's repository may
** not set them in its own config (.git/config; the system's and root's are trusted). */
static int sends_elsewhere(const char *name)
{
    static const char *const keys[] = {"core.worktree",   "core.hookspath", "core.fsmonitor",
                                       "core.sshcommand", "include.path",   NULL};
    for (const char *const *k = keys; *k; k++)
        if (strcasecmp(name, *k) == 0) return 1;
    size_t n = strlen(name);
    return strncasecmp(name, "includeif.", 10) == 0 && n > 15 &&
           strcasecmp(name + n - 5, ".path") == 0;
}

/* [-0, +0, v] In the sandbox, what r (opened from dir) uses must be in the playbook's
** scope, checked as git targets: its work tree, its git directory and common directory
** (git finds a repository above dir; a .git file, core.worktree or commondir may point
** elsewhere). And its own config may set none of sends_elsewhere's keys. Raises the
** refusal. */
static void confine_repo(lua_State *L, const char *what, const char *dir, git_repository *r)
{
    int mode = hrun_sandbox_mode(L);
    if (mode == 0) return;
    const char *wd = git_repository_workdir(r);
    const char *dirs[] = {wd, git_repository_path(r), git_repository_commondir(r)};
    char path[PATH_MAX];
    for (size_t i = 0; i < 3; i++) {
        if (dirs[i] == NULL || (i > 0 && wd && strncmp(dirs[i], wd, strlen(wd)) == 0)) continue;
        size_t n = strlen(dirs[i]);
        if (n > 1 && dirs[i][n - 1] == '/') n--; /* libgit2 ends them with a slash */
        snprintf(path, sizeof path, "%.*s", (int)n, dirs[i]);
        if (!hrun_sandbox_allows(
                L, lua_pushfstring(L, "%s: the repository %s opens (%s)", what, dir, path), "git",
                path))
            lua_error(L);
        lua_pop(L, 1);
    }
    if (mode < 2) return;
    git_config *cfg = NULL;
    git_config_iterator *it = NULL;
    git_config_entry *e;
    char bad[512] = ""; /* nothing that can raise while libgit2's objects are held */
    if (git_repository_config_snapshot(&cfg, r) == 0 && git_config_iterator_new(&it, cfg) == 0) {
        while (*bad == '\0' && git_config_next(&e, it) == 0)
            if (e->level >= GIT_CONFIG_LEVEL_LOCAL && sends_elsewhere(e->name))
                snprintf(bad, sizeof bad, "%s = %s", e->name, e->value ? e->value : "");
    } else {
        snprintf(bad, sizeof bad, "what its config cannot be read to show");
    }
    git_config_iterator_free(it);
    git_config_free(cfg);
    if (*bad)
        luaL_error(L,
                   "sandbox: %s: %s: the repository's config sets %s, which could send git "
                   "outside the playbook's scope: a sandboxed playbook may not use it",
                   what, dir, bad);
}

/* Where a remote URL (as libgit2 will use it: insteadOf applied) goes, as libgit2's
** transport picks: a URL with a scheme is the network (net), except file://, a local
** path (git); without one, a ':' makes it an ssh address (host:path, net: only an
** unscoped net covers it), else it is a local path (git). Into buf; returns the
** capability. */
static const char *remote_target(const char *url, char *buf, size_t size)
{
    if (strncasecmp(url, "file://", 7) == 0) {
        const char *p = url + 7;
        if (strncasecmp(p, "localhost/", 10) == 0) p += 9;
        size_t k = 0;
        for (; *p && k + 1 < size; p++) { /* %XX decoded, as libgit2 decodes them */
            unsigned v;
            if (p[0] == '%' && sscanf(p + 1, "%2x", &v) == 1 && v != 0) {
                buf[k++] = (char)v;
                p += 2;
            } else {
                buf[k++] = *p;
            }
        }
        buf[k] = '\0';
        return "git";
    }
    snprintf(buf, size, "%s", url);
    return strstr(url, "://") || strchr(url, ':') ? "net" : "git";
}

/* [-0, +0, v] In the sandbox, may the repository at wd reach remote url? A local path
** without a '/' at its start is checked as libgit2 may read it, relative to hrun's
** directory and to the repository's. Raises the refusal. */
static void confine_remote(lua_State *L, const char *what, const char *url, const char *wd)
{
    if (hrun_sandbox_mode(L) == 0) return;
    char target[PATH_MAX], rel[PATH_MAX * 2];
    const char *cap = remote_target(url, target, sizeof target);
    const char *msg = lua_pushfstring(L, "%s: the remote %s", what, url);
    int ok = hrun_sandbox_allows(L, msg, cap, target);
    if (ok && strcmp(cap, "git") == 0 && target[0] != '/' && wd) {
        snprintf(rel, sizeof rel, "%s/%s", wd, target);
        ok = hrun_sandbox_allows(L, msg, cap, rel);
    }
    if (!ok) lua_error(L);
    lua_pop(L, 1);
}

/* }====================================================== */

typedef struct Repo {
    git_repository *r;
} Repo;

static int git_shutdown(lua_State *L)
{
    (void)L;
    git_libgit2_shutdown();
    return 0;
}

/* [-0, +0, m] libgit2's global state, made by the first call that needs it and ended
** with the Lua state: its TLS set-up parses every CA certificate of the system, half of
** hrun's start-up (~15 ms) when made for every run. */
static void need_libgit2(lua_State *L)
{
    static const char made = 0; /* its address keys the registry */
    int have = lua_rawgetp(L, LUA_REGISTRYINDEX, &made) != LUA_TNIL;
    lua_pop(L, 1);
    if (have) return;
    hrun_atclose(L, git_shutdown); /* first: it may raise, and then nothing is made */
    git_libgit2_init();
    lua_pushboolean(L, 1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &made);
}

void hrun_need_libgit2(lua_State *L)
{
    need_libgit2(L);
}

typedef struct Remote {
    git_remote *r;
} Remote;

static int remote_gc(lua_State *L)
{
    Remote *h = lua_touserdata(L, 1);
    if (h->r) git_remote_free(h->r);
    h->r = NULL;
    return 0;
}

static int repo_gc(lua_State *L)
{
    Repo *h = lua_touserdata(L, 1);
    if (h->r) git_repository_free(h->r);
    h->r = NULL;
    return 0;
}

/*
** [-0, +1, m] Opens the repository at (or above, as git finds it) dir; the handle on
** the stack is closed when the function returns. Returns NULL after pushing the
** failure (nil, message, code) — 3 values then.
*/
static git_repository *open_repo(lua_State *L, const char *what, const char *dir)
{
    struct stat st;
    if (stat(dir, &st) < 0) {
        hrun_fail(L, what, dir, errno);
        return NULL;
    }
    need_libgit2(L);
    Repo *h = lua_newuserdatauv(L, sizeof(Repo), 0);
    h->r = NULL;
    hrun_setclose(L, "hrun.git.handle", repo_gc, NULL);
    lua_toclose(L, -1);
    int rc = git_repository_open_ext(&h->r, dir, 0, NULL);
    if (rc == GIT_ENOTFOUND) {
        hrun_failf(L, "ENOTREPO", "%s: %s: not in a git repository", what, dir);
        return NULL;
    }
    if (rc < 0) {
        fail(L, what, dir, rc);
        return NULL;
    }
    confine_repo(L, what, dir, h->r);
    return h->r;
}

/* [-0, +0, -] Hex of an object id. */
static void oid_hex(const git_oid *id, char out[GIT_OID_HEXSZ + 1])
{
    git_oid_tostr(out, GIT_OID_HEXSZ + 1, id);
}

static void push_oid(lua_State *L, const git_oid *id)
{
    char hex[GIT_OID_HEXSZ + 1];
    oid_hex(id, hex);
    lua_pushstring(L, hex);
}

/* Resolves rev ("HEAD~1", a tag, a branch, an id) to a commit. */
static int resolve_commit(git_commit **out, git_repository *r, const char *rev)
{
    git_object *obj;
    int rc = git_revparse_single(&obj, r, rev);
    if (rc < 0) return rc;
    rc = git_object_peel((git_object **)out, obj, GIT_OBJECT_COMMIT);
    git_object_free(obj);
    return rc;
}

/* }====================================================== */

/* {======================================================
** Reading
** ======================================================= */

/* [-0, +1, m] The repository object: {path, gitdir, bare} with the methods. */
static void push_repo(lua_State *L, git_repository *r)
{
    const char *wd = git_repository_workdir(r), *gd = git_repository_path(r);
    lua_createtable(L, 0, 3);
    char buf[PATH_MAX];
    const char *path = wd ? wd : gd;
    size_t n = strlen(path);
    if (n > 1 && path[n - 1] == '/') n--; /* libgit2 ends them with a slash */
    snprintf(buf, sizeof buf, "%.*s", (int)n, path);
    lua_pushstring(L, buf);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, gd);
    lua_setfield(L, -2, "gitdir");
    lua_pushboolean(L, git_repository_is_bare(r));
    lua_setfield(L, -2, "bare");
    luaL_setmetatable(L, REPO_TYPE);
}

/* The directory argument: a path string, or a repository object. */
static const char *check_dir(lua_State *L, int arg)
{
    if (lua_type(L, arg) == LUA_TTABLE) {
        /* raw, as the sandbox reads it (dir_targets): no __index shows it another path */
        lua_pushliteral(L, "path");
        if (lua_rawget(L, arg) != LUA_TSTRING)
            luaL_argerror(L, arg, "a repository ({path = dir}) or a directory expected");
        lua_replace(L, arg);
    }
    return hrun_checkpath(L, arg, NULL);
}

/*
** git.open(dir) → repo | nil, message, code ("ENOTREPO": dir is in no repository)
** Finds the repository as git does (dir or a directory above it).
*/
static int l_open(lua_State *L)
{
    const char *dir = check_dir(L, 1);
    git_repository *r = open_repo(L, "git.open", dir);
    if (r == NULL) return 3;
    push_repo(L, r);
    return 1;
}

/*
** git.head(dir) → {commit, branch, detached, unborn, summary}
** commit is nil in a repository without commits (unborn = true).
*/
static int l_head(lua_State *L)
{
    const char *dir = check_dir(L, 1);
    git_repository *r = open_repo(L, "git.head", dir);
    if (r == NULL) return 3;
    lua_createtable(L, 0, 5);
    int unborn = git_repository_head_unborn(r) == 1;
    int detached = git_repository_head_detached(r) == 1;
    lua_pushboolean(L, unborn);
    lua_setfield(L, -2, "unborn");
    lua_pushboolean(L, detached);
    lua_setfield(L, -2, "detached");
    git_reference *head = NULL;
    if (unborn) {
        /* HEAD names a branch that has no commit yet */
        if (git_reference_lookup(&head, r, "HEAD") == 0) {
            const char *target = git_reference_symbolic_target(head);
            if (target && strncmp(target, "refs/heads/", 11) == 0) {
                lua_pushstring(L, target + 11);
                lua_setfield(L, -2, "branch");
            }
            git_reference_free(head);
        }
        return 1;
    }
    int rc = git_repository_head(&head, r);
    if (rc < 0) return fail(L, "git.head", dir, rc);
    if (!detached) {
        lua_pushstring(L, git_reference_shorthand(head));
        lua_setfield(L, -2, "branch");
    }
    git_commit *c;
    rc = git_commit_lookup(&c, r, git_reference_target(head));
    git_reference_free(head);
    if (rc < 0) return fail(L, "git.head", dir, rc);
    push_oid(L, git_commit_id(c));
    lua_setfield(L, -2, "commit");
    lua_pushstring(L, git_commit_summary(c) ? git_commit_summary(c) : "");
    lua_setfield(L, -2, "summary");
    git_commit_free(c);
    return 1;
}

static const char *index_status(unsigned s)
{
    if (s & GIT_STATUS_INDEX_NEW) return "added";
    if (s & GIT_STATUS_INDEX_MODIFIED) return "modified";
    if (s & GIT_STATUS_INDEX_DELETED) return "deleted";
    if (s & GIT_STATUS_INDEX_RENAMED) return "renamed";
    if (s & GIT_STATUS_INDEX_TYPECHANGE) return "typechange";
    return NULL;
}

static const char *worktree_status(unsigned s)
{
    if (s & GIT_STATUS_WT_NEW) return "untracked";
    if (s & GIT_STATUS_WT_MODIFIED) return "modified";
    if (s & GIT_STATUS_WT_DELETED) return "deleted";
    if (s & GIT_STATUS_WT_RENAMED) return "renamed";
    if (s & GIT_STATUS_WT_TYPECHANGE) return "typechange";
    if (s & GIT_STATUS_CONFLICTED) return "conflicted";
    return NULL;
}

static const char *const status_options[] = {"untracked", "ignored", NULL};

/*
** git.status(dir [, {untracked = true, ignored = false}]) → {clean, files}
** files: {{path, index = "added"|"modified"|…|nil, worktree = "modified"|"untracked"|…|nil}}
** in path order; clean is true when there is nothing (untracked files count, as they
** do for `git status`, unless untracked = false).
*/
static int l_status(lua_State *L)
{
    const char *dir = check_dir(L, 1);
    hrun_checkopts(L, 2, status_options);
    int untracked = hrun_optbool(L, 2, "untracked", 1);
    int ignored = hrun_optbool(L, 2, "ignored", 0);
    git_repository *r = open_repo(L, "git.status", dir);
    if (r == NULL) return 3;
    if (git_repository_is_bare(r))
        return hrun_failf(L, "EBARE", "git.status: %s: a bare repository has no working tree", dir);
    git_status_options o;
    git_status_options_init(&o, GIT_STATUS_OPTIONS_VERSION);
    o.show = GIT_STATUS_SHOW_INDEX_AND_WORKDIR;
    o.flags = GIT_STATUS_OPT_RENAMES_HEAD_TO_INDEX | GIT_STATUS_OPT_SORT_CASE_SENSITIVELY;
    if (untracked)
        o.flags |= GIT_STATUS_OPT_INCLUDE_UNTRACKED | GIT_STATUS_OPT_RECURSE_UNTRACKED_DIRS;
    if (ignored) o.flags |= GIT_STATUS_OPT_INCLUDE_IGNORED;
    git_status_list *list;
    int rc = git_status_list_new(&list, r, &o);
    if (rc < 0) return fail(L, "git.status", dir, rc);
    size_t n = git_status_list_entrycount(list);
    lua_createtable(L, 0, 2);
    lua_createtable(L, (int)n, 0);
    lua_Integer k = 0;
    for (size_t i = 0; i < n; i++) {
        const git_status_entry *e = git_status_byindex(list, i);
        const git_diff_delta *d = e->head_to_index ? e->head_to_index : e->index_to_workdir;
        if (d == NULL) continue;
        lua_createtable(L, 0, 3);
        lua_pushstring(L, d->new_file.path ? d->new_file.path : d->old_file.path);
        lua_setfield(L, -2, "path");
        const char *is = index_status(e->status), *ws = worktree_status(e->status);
        if (e->status & GIT_STATUS_IGNORED) ws = "ignored";
        if (is) {
            lua_pushstring(L, is);
            lua_setfield(L, -2, "index");
        }
        if (ws) {
            lua_pushstring(L, ws);
            lua_setfield(L, -2, "worktree");
        }
        lua_rawseti(L, -2, ++k);
    }
    git_status_list_free(list);
    lua_setfield(L, -2, "files");
    lua_pushboolean(L, k == 0);
    lua_setfield(L, -2, "clean");
    return 1;
}

/* [-0, +1, m] {id, summary, message, author, email, time} of a commit */
static void push_commit(lua_State *L, git_commit *c)
{
    const git_signature *a = git_commit_author(c);
    lua_createtable(L, 0, 6);
    push_oid(L, git_commit_id(c));
    lua_setfield(L, -2, "id");
    lua_pushstring(L, git_commit_summary(c) ? git_commit_summary(c) : "");
    lua_setfield(L, -2, "summary");
    lua_pushstring(L, git_commit_message(c) ? git_commit_message(c) : "");
    lua_setfield(L, -2, "message");
    lua_pushstring(L, a->name);
    lua_setfield(L, -2, "author");
    lua_pushstring(L, a->email);
    lua_setfield(L, -2, "email");
    lua_pushinteger(L, (lua_Integer)git_commit_time(c));
    lua_setfield(L, -2, "time");
}

static const char *const log_options[] = {"from", "to", NULL};

/*
** git.log(dir [, n [, {from = REV, to = REV}]]) → {{id, summary, message, author, email,
** time}, …} newest first; n: at most that many (default 20; 0: all); from: where to
** start (default HEAD); to: stop before this commit and its ancestors (git log to..from).
*/
static int l_log(lua_State *L)
{
    const char *dir = check_dir(L, 1);
    lua_Integer n = luaL_optinteger(L, 2, 20);
    hrun_checkopts(L, 3, log_options);
    const char *from = hrun_optstring(L, 3, "from", "HEAD", NULL);
    const char *to = hrun_optstring(L, 3, "to", NULL, NULL);
    if (n < 0) luaL_argerror(L, 2, "must not be negative");
    git_repository *r = open_repo(L, "git.log", dir);
    if (r == NULL) return 3;
    lua_newtable(L);
    if (strcmp(from, "HEAD") == 0 && git_repository_head_unborn(r) == 1) return 1;
    git_revwalk *w;
    git_commit *c;
    int rc = git_revwalk_new(&w, r);
    if (rc < 0) return fail(L, "git.log", dir, rc);
    git_revwalk_sorting(w, GIT_SORT_TIME);
    if ((rc = resolve_commit(&c, r, from)) < 0) {
        git_revwalk_free(w);
        return fail(L, "git.log", from, rc);
    }
    rc = git_revwalk_push(w, git_commit_id(c));
    git_commit_free(c);
    if (rc == 0 && to) {
        if ((rc = resolve_commit(&c, r, to)) < 0) {
            git_revwalk_free(w);
            return fail(L, "git.log", to, rc);
        }
        rc = git_revwalk_hide(w, git_commit_id(c));
        git_commit_free(c);
    }
    git_oid id;
    lua_Integer k = 0;
    while (rc == 0 && (n == 0 || k < n) && git_revwalk_next(&id, w) == 0) {
        if ((rc = git_commit_lookup(&c, r, &id)) < 0) break;
        push_commit(L, c);
        git_commit_free(c);
        lua_rawseti(L, -2, ++k);
    }
    git_revwalk_free(w);
    if (rc < 0) return fail(L, "git.log", dir, rc);
    return 1;
}

/*
** git.tags(dir [, pattern]) → {{name, commit, annotated, message}, …} sorted by name;
** pattern: a glob ("v1.*").
*/
static int l_tags(lua_State *L)
{
    const char *dir = check_dir(L, 1);
    const char *pattern = luaL_optstring(L, 2, "*");
    git_repository *r = open_repo(L, "git.tags", dir);
    if (r == NULL) return 3;
    git_strarray names;
    int rc = git_tag_list_match(&names, pattern, r);
    if (rc < 0) return fail(L, "git.tags", dir, rc);
    lua_createtable(L, (int)names.count, 0);
    for (size_t i = 0; i < names.count; i++) {
        char ref[1024];
        git_object *obj;
        snprintf(ref, sizeof ref, "refs/tags/%s", names.strings[i]);
        lua_createtable(L, 0, 4);
        lua_pushstring(L, names.strings[i]);
        lua_setfield(L, -2, "name");
        if (git_revparse_single(&obj, r, ref) == 0) {
            int annotated = git_object_type(obj) == GIT_OBJECT_TAG;
            lua_pushboolean(L, annotated);
            lua_setfield(L, -2, "annotated");
            if (annotated && git_tag_message((git_tag *)obj)) {
                lua_pushstring(L, git_tag_message((git_tag *)obj));
                lua_setfield(L, -2, "message");
            }
            git_object *peeled;
            if (git_object_peel(&peeled, obj, GIT_OBJECT_COMMIT) == 0) {
                push_oid(L, git_object_id(peeled));
                lua_setfield(L, -2, "commit");
                git_object_free(peeled);
            }
            git_object_free(obj);
        }
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    git_strarray_dispose(&names);
    return 1;
}

/* git_diff_print's line callback: the patch text into a buffer */
static int diff_line(const git_diff_delta *d, const git_diff_hunk *h, const git_diff_line *l,
                     void *ud)
{
    (void)d, (void)h;
    luaL_Buffer *b = ud;
    if (l->origin == GIT_DIFF_LINE_CONTEXT || l->origin == GIT_DIFF_LINE_ADDITION ||
        l->origin == GIT_DIFF_LINE_DELETION)
        luaL_addchar(b, l->origin);
    luaL_addlstring(b, l->content, l->content_len);
    return 0;
}

/*
** git.diff(dir, from [, to]) → {files = {{path, status}}, patch = "unified diff"}
** Between two commits (to: default HEAD), as `git diff from to`.
*/
static int l_diff(lua_State *L)
{
    const char *dir = check_dir(L, 1);
    const char *from = luaL_checkstring(L, 2);
    const char *to = luaL_optstring(L, 3, "HEAD");
    git_repository *r = open_repo(L, "git.diff", dir);
    if (r == NULL) return 3;
    git_commit *a = NULL, *b = NULL;
    git_tree *ta = NULL, *tb = NULL;
    git_diff *diff = NULL;
    int rc;
    const char *bad = from;
    if ((rc = resolve_commit(&a, r, from)) == 0 &&
        (bad = to, rc = resolve_commit(&b, r, to)) == 0 && (rc = git_commit_tree(&ta, a)) == 0 &&
        (rc = git_commit_tree(&tb, b)) == 0)
        rc = git_diff_tree_to_tree(&diff, r, ta, tb, NULL);
    git_tree_free(ta), git_tree_free(tb), git_commit_free(a), git_commit_free(b);
    if (rc < 0) return fail(L, "git.diff", bad, rc);
    lua_createtable(L, 0, 2);
    size_t n = git_diff_num_deltas(diff);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        const git_diff_delta *d = git_diff_get_delta(diff, i);
        lua_createtable(L, 0, 2);
        lua_pushstring(L, d->new_file.path);
        lua_setfield(L, -2, "path");
        lua_pushstring(L, d->status == GIT_DELTA_ADDED      ? "added"
                          : d->status == GIT_DELTA_DELETED  ? "deleted"
                          : d->status == GIT_DELTA_RENAMED  ? "renamed"
                          : d->status == GIT_DELTA_MODIFIED ? "modified"
                                                            : "changed");
        lua_setfield(L, -2, "status");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "files");
    luaL_Buffer buf;
    luaL_buffinit(L, &buf);
    rc = git_diff_print(diff, GIT_DIFF_FORMAT_PATCH, diff_line, &buf);
    luaL_pushresult(&buf);
    git_diff_free(diff);
    if (rc < 0) return fail(L, "git.diff", dir, rc);
    lua_setfield(L, -2, "patch");
    return 1;
}

/* }====================================================== */

/* {======================================================
** Writing
** ======================================================= */

/* The signature for commits and tags: git config's user, else hrun <user@host>. */
static int signature(git_signature **sig, git_repository *r)
{
    if (git_signature_default(sig, r) == 0) return 0;
    char host[256] = "localhost", email[512];
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    struct passwd *pw = getpwuid(geteuid());
    snprintf(email, sizeof email, "%s@%s", pw ? pw->pw_name : "root", host);
    return git_signature_now(sig, "hrun", email);
}

static const char *const init_options[] = {"bare", "branch", NULL};

/*
** git.init(dir [, {bare, branch = "main"}]) → repo | nil, message, code
** A new repository (dir is made if missing); an existing one is an error (EEXIST).
*/
static int l_init(lua_State *L)
{
    const char *dir = check_dir(L, 1);
    hrun_checkopts(L, 2, init_options);
    int bare = hrun_optbool(L, 2, "bare", 0);
    const char *branch = hrun_optstring(L, 2, "branch", "main", NULL);
    need_libgit2(L);
    git_repository *r;
    if (git_repository_open_ext(&r, dir, GIT_REPOSITORY_OPEN_NO_SEARCH, NULL) == 0) {
        git_repository_free(r);
        return hrun_failf(L, "EEXIST", "git.init: %s: already a git repository", dir);
    }
    git_repository_init_options o;
    git_repository_init_options_init(&o, GIT_REPOSITORY_INIT_OPTIONS_VERSION);
    o.flags = GIT_REPOSITORY_INIT_MKPATH | (bare ? GIT_REPOSITORY_INIT_BARE : 0);
    o.initial_head = branch;
    int rc = git_repository_init_ext(&r, dir, &o);
    if (rc < 0) return fail(L, "git.init", dir, rc);
    push_repo(L, r);
    git_repository_free(r);
    return 1;
}

/* Undo of init and clone: remove what they make (dir if new, else its .git). */
static int init_inverse(lua_State *L)
{
    const char *dir = check_dir(L, 1);
    struct stat st;
    lua_newtable(L);
    int list = lua_gettop(L);
    int bare = lua_type(L, 2) == LUA_TTABLE && (lua_getfield(L, 2, "bare"), lua_toboolean(L, -1));
    lua_settop(L, list);
    if (stat(dir, &st) == 0 && !bare)
        lua_pushfstring(L, "%s/.git", dir);
    else
        lua_pushstring(L, dir);
    lua_createtable(L, 0, 2);
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "force");
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "recursive");
    hrun_addop(L, list, "fs.remove", 2);
    return 1;
}

typedef struct Progress {
    lua_State *L;
    int fn;     /* stack index of the progress function, 0: none */
    int errref; /* its error, LUA_NOREF: none */
    double last;
} Progress;

static int on_transfer(const git_indexer_progress *s, void *ud)
{
    Progress *p = ud;
    if (hrun_interrupted()) return GIT_EUSER;
    if (p->fn == 0) return 0;
    double now = hrun_monotime();
    int last = s->received_objects == s->total_objects && s->indexed_deltas == s->total_deltas;
    if (now - p->last < 0.1 && !last) return 0;
    p->last = now;
    lua_State *L = p->L;
    lua_pushvalue(L, p->fn);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, (lua_Integer)s->received_objects);
    lua_setfield(L, -2, "received_objects");
    lua_pushinteger(L, (lua_Integer)s->total_objects);
    lua_setfield(L, -2, "total_objects");
    lua_pushinteger(L, (lua_Integer)s->indexed_objects);
    lua_setfield(L, -2, "indexed_objects");
    lua_pushinteger(L, (lua_Integer)s->received_bytes);
    lua_setfield(L, -2, "received_bytes");
    if (hrun_pcallback(L, 1) != LUA_OK) {
        p->errref = luaL_ref(L, LUA_REGISTRYINDEX);
        return GIT_EUSER;
    }
    lua_pop(L, 1);
    return 0;
}

/* After a transfer: the progress function's error or the interrupt, raised. */
static void raise_transfer(lua_State *L, Progress *p)
{
    if (p->errref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, p->errref);
        luaL_unref(L, LUA_REGISTRYINDEX, p->errref);
        lua_error(L);
    }
    if (hrun_interrupted()) hrun_raiseinterrupt(L);
}

/* Moves HEAD (detached) and the working tree to commit c. */
static int checkout_detached(git_repository *r, git_commit *c)
{
    git_checkout_options co;
    git_checkout_options_init(&co, GIT_CHECKOUT_OPTIONS_VERSION);
    co.checkout_strategy = GIT_CHECKOUT_SAFE;
    int rc = git_checkout_tree(r, (git_object *)c, &co);
    if (rc == 0) rc = git_repository_set_head_detached(r, git_commit_id(c));
    return rc;
}

static const char *const clone_options[] = {"ref", "bare", "progress", NULL};

/*
** git.clone(url, dir [, {ref, bare, progress}]) → repo | nil, message, code
** ref: a branch (checked out), a tag or a commit (HEAD detached there); progress:
** function({received_objects, total_objects, indexed_objects, received_bytes}).
** On failure nothing is left at dir.
*/
static int l_clone(lua_State *L)
{
    const char *url = luaL_checkstring(L, 1);
    const char *dir = hrun_checkpath(L, 2, NULL);
    hrun_checkopts(L, 3, clone_options);
    const char *ref = hrun_optstring(L, 3, "ref", NULL, NULL);
    int bare = hrun_optbool(L, 3, "bare", 0);
    need_libgit2(L);
    Progress p = {L, 0, LUA_NOREF, 0};
    if (hrun_optfield(L, 3, "progress", LUA_TFUNCTION)) p.fn = lua_gettop(L);
    struct stat st;
    /* a local path (no scheme, not host:path): one that is not there is named as such */
    const char *colon = strchr(url, ':'), *slash = strchr(url, '/');
    int is_path = strstr(url, "://") == NULL && (colon == NULL || (slash && slash < colon));
    if (is_path && stat(url, &st) < 0) return hrun_fail(L, "git.clone", url, errno);
    if (lstat(dir, &st) == 0 && !(S_ISDIR(st.st_mode) && rmdir(dir) == 0))
        return hrun_failf(L, "EEXIST", "git.clone: %s: exists and is not an empty directory", dir);
    git_clone_options o;
    git_clone_options_init(&o, GIT_CLONE_OPTIONS_VERSION);
    o.bare = bare;
    o.fetch_opts.callbacks.transfer_progress = on_transfer;
    o.fetch_opts.callbacks.payload = &p;
    if (hrun_sandbox_mode(L)) o.fetch_opts.follow_redirects = GIT_REMOTE_REDIRECT_NONE;
    git_repository *r = NULL;
    int rc = git_clone(&r, url, dir, &o);
    if (rc == 0 && ref) {
        /* a branch of the remote, else a tag or commit id: HEAD detached there */
        char remote_ref[1024];
        git_reference *branch = NULL;
        git_commit *c = NULL;
        snprintf(remote_ref, sizeof remote_ref, "refs/remotes/origin/%s", ref);
        if (git_reference_lookup(&branch, r, remote_ref) == 0) {
            git_reference *local = NULL;
            git_commit *tip = NULL;
            char head_ref[1024];
            snprintf(head_ref, sizeof head_ref, "refs/heads/%s", ref);
            rc = git_commit_lookup(&tip, r, git_reference_target(branch));
            if (rc == 0 && !bare) rc = checkout_detached(r, tip);
            if (rc == 0) rc = git_branch_create(&local, r, ref, tip, 1);
            if (rc == 0) rc = git_branch_set_upstream(local, remote_ref + 13);
            if (rc == 0) rc = git_repository_set_head(r, head_ref);
            git_reference_free(local), git_commit_free(tip), git_reference_free(branch);
        } else if ((rc = resolve_commit(&c, r, ref)) == 0) {
            rc = bare ? git_repository_set_head_detached(r, git_commit_id(c))
                      : checkout_detached(r, c);
            git_commit_free(c);
        }
    }
    if (rc < 0) {
        lua_settop(L, 3);
        fail(L, "git.clone", ref && r ? ref : url, rc);
        git_repository_free(r);
        hrun_rmtree(dir); /* nothing half-cloned is left behind */
        raise_transfer(L, &p);
        return 3;
    }
    push_repo(L, r);
    git_repository_free(r);
    return 1;
}

static int clone_inverse(lua_State *L)
{
    lua_remove(L, 1); /* (url, dir, opts) → (dir, opts) */
    return init_inverse(L);
}

static const char *const fetch_options[] = {"remote", "progress", NULL};

/*
** git.fetch(dir [, {remote = "origin", progress}]) → true | nil, message, code
** Updates the remote's branches and tags (its remote-tracking refs and the tags).
*/
static int l_fetch(lua_State *L)
{
    const char *dir = check_dir(L, 1);
    hrun_checkopts(L, 2, fetch_options);
    const char *name = hrun_optstring(L, 2, "remote", "origin", NULL);
    Progress p = {L, 0, LUA_NOREF, 0};
    if (hrun_optfield(L, 2, "progress", LUA_TFUNCTION)) p.fn = lua_gettop(L);
    git_repository *r = open_repo(L, "git.fetch", dir);
    if (r == NULL) return 3;
    Remote *h = lua_newuserdatauv(L, sizeof(Remote), 0);
    h->r = NULL;
    hrun_setclose(L, "hrun.git.remote", remote_gc, NULL);
    lua_toclose(L, -1);
    int rc = git_remote_lookup(&h->r, r, name);
    if (rc < 0) return fail(L, "git.fetch", name, rc);
    /* the URL this remote object fetches from (url.<base>.insteadOf applied) */
    if (git_remote_url(h->r))
        confine_remote(L, "git.fetch", git_remote_url(h->r), git_repository_workdir(r));
    git_fetch_options o;
    git_fetch_options_init(&o, GIT_FETCH_OPTIONS_VERSION);
    o.callbacks.transfer_progress = on_transfer;
    o.callbacks.payload = &p;
    o.download_tags = GIT_REMOTE_DOWNLOAD_TAGS_ALL;
    /* a redirect would be followed inside libgit2, where no check sees it */
    if (hrun_sandbox_mode(L)) o.follow_redirects = GIT_REMOTE_REDIRECT_NONE;
    rc = git_remote_fetch(h->r, NULL, &o, NULL);
    raise_transfer(L, &p);
    if (rc < 0) return fail(L, "git.fetch", name, rc);
    lua_pushboolean(L, 1);
    return 1;
}

/* Nothing to undo for a fetch: it only adds objects and moves remote-tracking refs. */
static int nothing_inverse(lua_State *L)
{
    lua_newtable(L);
    return 1;
}

/* Adds paths (a list at idx) or everything (all) to the index, as git add does
** (deletions included). */
static int stage(git_repository *r, git_index *ix, lua_State *L, int idx, int all, const char **bad)
{
    int rc = 0;
    if (all) {
        char *star = "*";
        git_strarray everything = {&star, 1};
        rc = git_index_add_all(ix, &everything, GIT_INDEX_ADD_DEFAULT, NULL, NULL);
        if (rc == 0) rc = git_index_update_all(ix, &everything, NULL, NULL);
        return rc;
    }
    const char *wd = git_repository_workdir(r);
    lua_Integer n = luaL_len(L, idx);
    for (lua_Integer i = 1; i <= n && rc == 0; i++) {
        lua_rawgeti(L, idx, i);
        const char *path = lua_tostring(L, -1);
        lua_pop(L, 1); /* the list keeps the string */
        char full[PATH_MAX];
        struct stat st;
        *bad = path;
        snprintf(full, sizeof full, "%s%s", wd, path);
        rc = lstat(full, &st) == 0 ? git_index_add_bypath(ix, path)
                                   : git_index_remove_bypath(ix, path);
    }
    return rc;
}

/* The list at field `paths` of the options at arg: strings, relative to the work tree. */
static int opt_paths(lua_State *L, int arg, const char *what)
{
    if (!hrun_optfield(L, arg, "paths", LUA_TTABLE)) return 0;
    int idx = lua_gettop(L);
    lua_Integer n = luaL_len(L, idx);
    for (lua_Integer i = 1; i <= n; i++) {
        if (lua_rawgeti(L, idx, i) != LUA_TSTRING)
            luaL_argerror(L, arg,
                          lua_pushfstring(L, "field 'paths': %s needs a list of paths", what));
        const char *s = lua_tostring(L, -1);
        if (s[0] == '/' || strcmp(s, "..") == 0 || strncmp(s, "../", 3) == 0)
            luaL_argerror(L, arg,
                          lua_pushfstring(L, "field 'paths': '%s' is not inside the work tree", s));
        lua_pop(L, 1);
    }
    return idx;
}

static const char *const commit_options[] = {"paths", "all", "allow_empty", NULL};

/*
** git.commit(dir, message [, {paths = {…} | all = true, allow_empty}]) → commit id
** | nil, message, code. Stages the paths (or every change, with all) and commits the
** index on the current branch; author and committer from git config (user.name,
** user.email), else "hrun <user@host>". Without anything to commit: ENOCHANGE, unless
** allow_empty.
*/
static int l_commit(lua_State *L)
{
    const char *dir = check_dir(L, 1);
    const char *message = luaL_checkstring(L, 2);
    hrun_checkopts(L, 3, commit_options);
    int paths = opt_paths(L, 3, "git.commit");
    int all = hrun_optbool(L, 3, "all", 0);
    int allow_empty = hrun_optbool(L, 3, "allow_empty", 0);
    if (paths && all) luaL_argerror(L, 3, "paths and all exclude each other");
    git_repository *r = open_repo(L, "git.commit", dir);
    if (r == NULL) return 3;
    if (git_repository_is_bare(r))
        return hrun_failf(L, "EBARE", "git.commit: %s: a bare repository has no working tree", dir);
    git_index *ix = NULL;
    git_tree *tree = NULL;
    git_commit *parent = NULL;
    git_signature *sig = NULL;
    git_oid tree_id, id;
    const char *bad = dir;
    int rc = git_repository_index(&ix, r);
    if (rc == 0 && (paths || all)) rc = stage(r, ix, L, paths, all, &bad);
    if (rc == 0) bad = dir, rc = git_index_write(ix);
    if (rc == 0) rc = git_index_write_tree(&tree_id, ix);
    if (rc == 0) rc = git_tree_lookup(&tree, r, &tree_id);
    if (rc == 0 && git_repository_head_unborn(r) != 1) {
        git_object *head;
        if ((rc = git_revparse_single(&head, r, "HEAD^{commit}")) == 0) parent = (git_commit *)head;
    }
    int unchanged = rc == 0 && !allow_empty &&
                    (parent ? git_oid_equal(git_commit_tree_id(parent), &tree_id)
                            : git_tree_entrycount(tree) == 0);
    if (rc == 0 && !unchanged) rc = signature(&sig, r);
    if (rc == 0 && !unchanged)
        rc = git_commit_create_v(&id, r, "HEAD", sig, sig, NULL, message, tree, parent ? 1 : 0,
                                 parent);
    git_signature_free(sig), git_commit_free(parent), git_tree_free(tree), git_index_free(ix);
    if (rc < 0) return fail(L, "git.commit", bad, rc);
    if (unchanged) return hrun_failf(L, "ENOCHANGE", "git.commit: %s: nothing to commit", dir);
    push_oid(L, &id);
    return 1;
}

static git_repository *state_repo(lua_State *L);

/* [-0, +1, v] state_repo for an already-so check: in the sandbox, what the repository
** opens must be in the playbook's scope, as for the call (confine_repo raises; the runner
** then lets the call itself say so), and its config must send git nowhere else. */
static git_repository *unchanged_repo(lua_State *L, const char *what)
{
    git_repository *r = state_repo(L);
    if (r) confine_repo(L, what, lua_tostring(L, 1), r);
    return r;
}

/* [-0, +0, -] The number of status entries of r, those `show` selects, within the paths
** at idx (a list; 0: every path); -1 when it cannot be read. */
static long status_count(git_repository *r, lua_State *L, int idx, git_status_show_t show)
{
    git_status_options o;
    git_status_options_init(&o, GIT_STATUS_OPTIONS_VERSION);
    o.show = show;
    o.flags = GIT_STATUS_OPT_INCLUDE_UNTRACKED | GIT_STATUS_OPT_RECURSE_UNTRACKED_DIRS |
              GIT_STATUS_OPT_EXCLUDE_SUBMODULES;
    const char *paths[64];
    if (idx) {
        lua_Integer n = luaL_len(L, idx);
        if (n > 64) return -1;
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, idx, i);
            paths[i - 1] = lua_tostring(L, -1);
            lua_pop(L, 1); /* the list keeps the string */
        }
        o.pathspec.strings = (char **)paths;
        o.pathspec.count = (size_t)n;
        o.flags |= GIT_STATUS_OPT_DISABLE_PATHSPEC_MATCH;
    }
    git_status_list *list;
    if (git_status_list_new(&list, r, &o) < 0) return -1;
    long n = (long)git_status_list_entrycount(list);
    git_status_list_free(list);
    return n;
}

/* git.commit: nothing to commit (not allow_empty): the index is HEAD's tree, and the work
** tree has no change within what would be staged (paths, or everything with all); pushes
** HEAD's commit id, or nil. It stages nothing: git's status, read-only. */
static int commit_unchanged(lua_State *L)
{
    if (lua_type(L, 1) != LUA_TSTRING && lua_type(L, 1) != LUA_TTABLE) return lua_pushnil(L), 1;
    if (!lua_isnoneornil(L, 3) && !lua_istable(L, 3)) return lua_pushnil(L), 1;
    lua_settop(L, 3);
    if (hrun_optbool(L, 3, "allow_empty", 0)) return lua_pushnil(L), 1;
    int all = hrun_optbool(L, 3, "all", 0);
    int paths = opt_paths(L, 3, "git.commit");
    git_repository *r = unchanged_repo(L, "git.commit");
    git_object *head = NULL;
    int so = r && !git_repository_is_bare(r) && git_repository_head_unborn(r) == 0 &&
             git_revparse_single(&head, r, "HEAD^{commit}") == 0 &&
             status_count(r, L, 0, GIT_STATUS_SHOW_INDEX_ONLY) == 0 &&
             (!(all || paths) || status_count(r, L, paths, GIT_STATUS_SHOW_WORKDIR_ONLY) == 0);
    if (so)
        push_oid(L, git_object_id(head));
    else
        lua_pushnil(L);
    git_object_free(head);
    return 1;
}

/* [-0, +0, m] Appends {op = "git._setref", args = {dir, ref, old or false, {…}}}; for
** a commit's undo (commit = 1) only from the commit made, and the index too. */
static void add_setref(lua_State *L, int list, const char *dir, const char *ref, const git_oid *old,
                       int commit)
{
    lua_pushstring(L, dir);
    lua_pushstring(L, ref);
    if (old)
        push_oid(L, old);
    else
        lua_pushboolean(L, 0);
    lua_createtable(L, 0, 2);
    lua_pushboolean(L, commit);
    lua_setfield(L, -2, "only_from_child");
    lua_pushboolean(L, commit);
    lua_setfield(L, -2, "reset_index");
    hrun_addop(L, list, "git._setref", 4);
}

/* Undo of commit: the branch back where it was and the index with it, the working tree
** kept (`git reset --mixed HEAD~1`): the changes are there again, uncommitted. */
static int commit_inverse(lua_State *L)
{
    const char *dir = check_dir(L, 1);
    lua_newtable(L);
    int list = lua_gettop(L);
    git_repository *r;
    need_libgit2(L);
    if (git_repository_open_ext(&r, dir, 0, NULL) < 0) return 1; /* the commit will fail */
    git_reference *head = NULL, *target = NULL;
    if (git_reference_lookup(&head, r, "HEAD") == 0) {
        char root[PATH_MAX];
        snprintf(root, sizeof root, "%s",
                 git_repository_workdir(r) ? git_repository_workdir(r) : dir);
        const char *branch = git_reference_type(head) == GIT_REFERENCE_SYMBOLIC
                                 ? git_reference_symbolic_target(head)
                                 : "HEAD";
        if (git_reference_lookup(&target, r, branch) == 0)
            add_setref(L, list, root, branch, git_reference_target(target), 1);
        else
            add_setref(L, list, root, branch, NULL, 1);
        git_reference_free(target);
        git_reference_free(head);
    }
    git_repository_free(r);
    return 1;
}

static const char *const setref_options[] = {"only_from_child", "reset_index", NULL};

/* The index as the tree of commit id (or empty), the working tree untouched. */
static int reset_index(git_repository *r, const git_oid *id)
{
    git_index *ix;
    git_commit *c = NULL;
    git_tree *tree = NULL;
    int rc = git_repository_index(&ix, r);
    if (rc < 0) return rc;
    if (id && (rc = git_commit_lookup(&c, r, id)) == 0) rc = git_commit_tree(&tree, c);
    if (rc == 0) rc = tree ? git_index_read_tree(ix, tree) : git_index_clear(ix);
    if (rc == 0) rc = git_index_write(ix);
    git_tree_free(tree), git_commit_free(c), git_index_free(ix);
    return rc;
}

/*
** git._setref(dir, ref, id | false [, {only_from_child, reset_index}]) → true
** Undo operation: points ref at id again, or deletes it (false). only_from_child: only
** when ref now points at a child of id (the commit being undone) or at id already; a
** branch that moved on since is an error, not lost work. reset_index: the index too.
*/
static int l_setref(lua_State *L)
{
    const char *dir = check_dir(L, 1);
    const char *ref = luaL_checkstring(L, 2);
    const char *hex = lua_toboolean(L, 3) ? luaL_checkstring(L, 3) : NULL;
    hrun_checkopts(L, 4, setref_options);
    int guard = hrun_optbool(L, 4, "only_from_child", 0);
    int index = hrun_optbool(L, 4, "reset_index", 0);
    git_repository *r = open_repo(L, "git._setref", dir);
    if (r == NULL) return 3;
    git_oid id;
    if (hex && git_oid_fromstr(&id, hex) < 0) luaL_argerror(L, 3, "not an object id");
    git_reference *cur = NULL;
    int rc = git_reference_lookup(&cur, r, ref);
    if (rc < 0 && rc != GIT_ENOTFOUND) return fail(L, "git._setref", ref, rc);
    if (guard && cur) {
        const git_oid *now = git_reference_target(cur);
        git_commit *c = NULL;
        int ok = hex && git_oid_equal(now, &id);
        if (!ok && git_commit_lookup(&c, r, now) == 0) {
            ok = hex ? git_commit_parentcount(c) > 0 &&
                           git_oid_equal(git_commit_parent_id(c, 0), &id)
                     : git_commit_parentcount(c) == 0;
            git_commit_free(c);
        }
        if (!ok) {
            git_reference_free(cur);
            return hrun_failf(L, "EMOVED", "git._setref: %s: %s moved on since; left alone", dir,
                              ref);
        }
    }
    if (hex) {
        git_reference *out;
        rc = git_reference_create(&out, r, ref, &id, 1, "hrun: undo");
        if (rc == 0) git_reference_free(out);
    } else if (cur) {
        rc = git_reference_delete(cur);
    }
    git_reference_free(cur);
    if (rc == 0 && index && !git_repository_is_bare(r)) rc = reset_index(r, hex ? &id : NULL);
    if (rc < 0) return fail(L, "git._setref", ref, rc);
    lua_pushboolean(L, 1);
    return 1;
}

/* "refs/tags/NAME" in buf; raises for a name git refuses. */
static const char *tag_ref(lua_State *L, int arg, char *buf, size_t size)
{
    const char *name = luaL_checkstring(L, arg);
    int valid = 0;
    need_libgit2(L);
    snprintf(buf, size, "refs/tags/%s", name);
    if (git_reference_name_is_valid(&valid, buf) < 0 || !valid)
        luaL_argerror(L, arg, lua_pushfstring(L, "'%s' is not a valid tag name", name));
    return name;
}

static const char *const tag_options[] = {"message", "target", "force", NULL};

/*
** git.tag(dir, name [, {message, target = "HEAD", force}]) → the tag's id | nil, message,
** code. With message an annotated tag (tagger as for commits), else a lightweight one;
** an existing tag is an error (EEXIST) unless force.
*/
static int l_tag(lua_State *L)
{
    const char *dir = check_dir(L, 1);
    char ref[1024];
    const char *name = tag_ref(L, 2, ref, sizeof ref);
    hrun_checkopts(L, 3, tag_options);
    const char *message = hrun_optstring(L, 3, "message", NULL, NULL);
    const char *target = hrun_optstring(L, 3, "target", "HEAD", NULL);
    int force = hrun_optbool(L, 3, "force", 0);
    git_repository *r = open_repo(L, "git.tag", dir);
    if (r == NULL) return 3;
    git_object *obj;
    int rc = git_revparse_single(&obj, r, target);
    if (rc < 0) return fail(L, "git.tag", target, rc);
    git_oid id;
    git_signature *sig = NULL;
    if (message) {
        if ((rc = signature(&sig, r)) == 0)
            rc = git_tag_create(&id, r, name, obj, sig, message, force);
    } else {
        rc = git_tag_create_lightweight(&id, r, name, obj, force);
    }
    git_signature_free(sig);
    git_object_free(obj);
    if (rc == GIT_EEXISTS) return hrun_failf(L, "EEXIST", "git.tag: %s: tag exists", name);
    if (rc < 0) return fail(L, "git.tag", name, rc);
    push_oid(L, &id);
    return 1;
}

/* Undo of tag and delete_tag: the tag's ref as it is now (or gone). */
static int tagref_inverse(lua_State *L)
{
    const char *dir = check_dir(L, 1);
    char ref[1024];
    tag_ref(L, 2, ref, sizeof ref);
    lua_newtable(L);
    int list = lua_gettop(L);
    git_repository *r;
    need_libgit2(L);
    if (git_repository_open_ext(&r, dir, 0, NULL) < 0) return 1;
    git_reference *cur = NULL;
    const char *root =
        git_repository_workdir(r) ? git_repository_workdir(r) : git_repository_path(r);
    if (git_reference_lookup(&cur, r, ref) == 0) {
        add_setref(L, list, root, ref, git_reference_target(cur), 0);
        git_reference_free(cur);
    } else {
        add_setref(L, list, root, ref, NULL, 0);
    }
    git_repository_free(r);
    return 1;
}

/*
** git.delete_tag(dir, name) → true | nil, message, code (ENOENT: no such tag)
** The tag object stays in the repository until git gc: the undo puts the tag back.
*/
static int l_delete_tag(lua_State *L)
{
    const char *dir = check_dir(L, 1);
    char ref[1024];
    const char *name = tag_ref(L, 2, ref, sizeof ref);
    git_repository *r = open_repo(L, "git.delete_tag", dir);
    if (r == NULL) return 3;
    int rc = git_tag_delete(r, name);
    if (rc == GIT_ENOTFOUND)
        return hrun_failf(L, "ENOENT", "git.delete_tag: %s: no such tag", name);
    if (rc < 0) return fail(L, "git.delete_tag", name, rc);
    lua_pushboolean(L, 1);
    return 1;
}

/* The paths argument: a non-empty list of strings inside the work tree. */
static void check_paths(lua_State *L, int arg, const char *what)
{
    luaL_checktype(L, arg, LUA_TTABLE);
    lua_Integer n = luaL_len(L, arg);
    if (n == 0) luaL_argerror(L, arg, "an empty list of paths");
    for (lua_Integer i = 1; i <= n; i++) {
        if (lua_rawgeti(L, arg, i) != LUA_TSTRING)
            luaL_argerror(L, arg, lua_pushfstring(L, "%s needs a list of paths", what));
        const char *s = lua_tostring(L, -1);
        if (s[0] == '/' || strcmp(s, "..") == 0 || strncmp(s, "../", 3) == 0)
            luaL_argerror(L, arg, lua_pushfstring(L, "'%s' is not inside the work tree", s));
        lua_pop(L, 1);
    }
}

/*
** git.checkout_paths(dir, rev, paths) → true | nil, message, code
** As `git checkout REV -- PATHS`: each path's content at rev into the working tree and
** the index. A path that rev does not have is an error (ENOENT) and nothing changes.
*/
static int l_checkout_paths(lua_State *L)
{
    const char *dir = check_dir(L, 1);
    const char *rev = luaL_checkstring(L, 2);
    check_paths(L, 3, "git.checkout_paths");
    git_repository *r = open_repo(L, "git.checkout_paths", dir);
    if (r == NULL) return 3;
    git_commit *c;
    git_tree *tree = NULL;
    int rc = resolve_commit(&c, r, rev);
    if (rc < 0) return fail(L, "git.checkout_paths", rev, rc);
    rc = git_commit_tree(&tree, c);
    git_commit_free(c);
    if (rc < 0) return fail(L, "git.checkout_paths", rev, rc);
    lua_Integer n = luaL_len(L, 3);
    char **v = lua_newuserdatauv(L, sizeof(char *) * (size_t)n, 0);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 3, i);
        v[i - 1] = (char *)lua_tostring(L, -1);
        lua_pop(L, 1);
        git_tree_entry *e;
        if (git_tree_entry_bypath(&e, tree, v[i - 1]) < 0) {
            git_tree_free(tree);
            return hrun_failf(L, "ENOENT", "git.checkout_paths: %s: not in %s", v[i - 1], rev);
        }
        git_tree_entry_free(e);
    }
    git_checkout_options co;
    git_checkout_options_init(&co, GIT_CHECKOUT_OPTIONS_VERSION);
    co.checkout_strategy = GIT_CHECKOUT_FORCE | GIT_CHECKOUT_DISABLE_PATHSPEC_MATCH;
    co.paths.strings = v;
    co.paths.count = (size_t)n;
    rc = git_checkout_tree(r, (git_object *)tree, &co);
    git_tree_free(tree);
    if (rc < 0) return fail(L, "git.checkout_paths", dir, rc);
    lua_pushboolean(L, 1);
    return 1;
}

/* Undo of checkout_paths: each path's present bytes back (saved in the run's stash). */
static int checkout_paths_inverse(lua_State *L)
{
    const char *dir = check_dir(L, 1);
    lua_newtable(L);
    int list = lua_gettop(L);
    if (lua_type(L, 3) != LUA_TTABLE) return 1;
    git_repository *r;
    need_libgit2(L);
    if (git_repository_open_ext(&r, dir, 0, NULL) < 0) return 1;
    const char *wd = git_repository_workdir(r);
    char root[PATH_MAX];
    snprintf(root, sizeof root, "%s", wd ? wd : "");
    git_repository_free(r);
    if (wd == NULL) return 1;
    lua_Integer n = luaL_len(L, 3);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 3, i);
        const char *path = lua_tostring(L, -1);
        if (path) {
            char full[PATH_MAX];
            snprintf(full, sizeof full, "%s%s", root, path);
            hrun_undo_change(L, list, "git.checkout_paths", full);
        }
        lua_pop(L, 1);
    }
    return 1;
}

/*
** git.checkout(dir, rev) → commit id | nil, message, code
** The working tree at rev with HEAD detached there (a pinned checkout); refused (ECONFLICT)
** when it would overwrite local changes.
*/
static int l_checkout(lua_State *L)
{
    const char *dir = check_dir(L, 1);
    const char *rev = luaL_checkstring(L, 2);
    git_repository *r = open_repo(L, "git.checkout", dir);
    if (r == NULL) return 3;
    git_commit *c;
    int rc = resolve_commit(&c, r, rev);
    if (rc < 0) return fail(L, "git.checkout", rev, rc);
    rc = checkout_detached(r, c);
    if (rc == 0) push_oid(L, git_commit_id(c));
    git_commit_free(c);
    if (rc < 0) return fail(L, "git.checkout", rev, rc);
    return 1;
}

/* Undo of checkout: back to where HEAD is now. */
static int checkout_inverse(lua_State *L)
{
    const char *dir = check_dir(L, 1);
    lua_newtable(L);
    int list = lua_gettop(L);
    git_repository *r;
    need_libgit2(L);
    if (git_repository_open_ext(&r, dir, 0, NULL) < 0) return 1;
    git_object *head;
    if (git_revparse_single(&head, r, "HEAD^{commit}") == 0) {
        lua_pushstring(L, dir);
        push_oid(L, git_object_id(head));
        hrun_addop(L, list, "git.checkout", 2);
        git_object_free(head);
    }
    git_repository_free(r);
    return 1;
}

/* }====================================================== */

/* {======================================================
** States, for the careful undo (runtime/undo.c)
** ======================================================= */

/* [-0, +0, m] Gives the last entry of the array at list the lock files (NULL-ended
** names in gitdir, which ends with a slash) a kill in the middle of the call may leave. */
static void set_locks(lua_State *L, int list, const char *gitdir, const char *const names[])
{
    /* where libgit2 writes an object or a pack before renaming it into place */
    static const char *const scratch[][2] = {{"objects", "tmp_object_git2_"},
                                             {"objects/pack", "pack_git2_"}};
    lua_rawgeti(L, list, (lua_Integer)lua_rawlen(L, list));
    lua_newtable(L);
    for (int i = 0; names[i]; i++) {
        lua_pushfstring(L, "%s%s.lock", gitdir, names[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "locks");
    lua_createtable(L, 2, 0);
    for (int i = 0; i < 2; i++) {
        lua_createtable(L, 2, 0);
        lua_pushfstring(L, "%s%s", gitdir, scratch[i][0]);
        lua_rawseti(L, -2, 1);
        lua_pushstring(L, scratch[i][1]);
        lua_rawseti(L, -2, 2);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "scratch");
    lua_pop(L, 1);
}

/* The repository's directory for people and keys: its work tree, or its git directory
** when bare, absolute, without the trailing slash. */
static void repo_root(git_repository *r, char *out, size_t size)
{
    const char *wd = git_repository_workdir(r);
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", wd ? wd : git_repository_path(r));
    if (hrun_abspath(buf, out, size) < 0) snprintf(out, size, "%s", buf);
}

/* [-0, +0, m] Appends a "ref" entry for ref of r to the array at list, with the lock
** files the call may leave (index: it writes the index too). */
static void add_ref(lua_State *L, int list, git_repository *r, const char *ref, int index)
{
    char root[PATH_MAX];
    repo_root(r, root, sizeof root);
    const char *target = lua_pushfstring(L, "%s %s", root, ref);
    lua_createtable(L, 0, 2);
    lua_pushstring(L, root);
    lua_setfield(L, -2, "repo");
    lua_pushstring(L, ref);
    lua_setfield(L, -2, "ref");
    hrun_addstate(L, list, "ref", target);
    lua_pop(L, 1);
    const char *const with_index[] = {ref, "HEAD", "packed-refs", "index", NULL};
    const char *const without[] = {ref, "HEAD", "packed-refs", NULL};
    set_locks(L, list, git_repository_path(r), index ? with_index : without);
}

/* [-0, +1, m] The repository of the call's directory (argument 1), for a state function:
** its handle is closed when the function returns; NULL when there is none (the call
** will fail: nothing to compare). */
static git_repository *state_repo(lua_State *L)
{
    const char *dir = check_dir(L, 1);
    need_libgit2(L);
    Repo *h = lua_newuserdatauv(L, sizeof(Repo), 0);
    h->r = NULL;
    hrun_setclose(L, "hrun.git.handle", repo_gc, NULL);
    lua_toclose(L, -1);
    if (git_repository_open_ext(&h->r, dir, 0, NULL) < 0) h->r = NULL;
    return h->r;
}

/* git.commit: the branch HEAD points to (HEAD itself when detached) */
static int commit_state(lua_State *L)
{
    git_repository *r = state_repo(L);
    lua_newtable(L);
    int list = lua_gettop(L);
    git_reference *head = NULL;
    if (r == NULL || git_reference_lookup(&head, r, "HEAD") < 0) return 1;
    char ref[1024];
    snprintf(ref, sizeof ref, "%s",
             git_reference_type(head) == GIT_REFERENCE_SYMBOLIC
                 ? git_reference_symbolic_target(head)
                 : "HEAD");
    git_reference_free(head);
    add_ref(L, list, r, ref, 1);
    return 1;
}

/* git.tag and git.delete_tag: the tag's ref */
static int tag_state(lua_State *L)
{
    char ref[1024];
    tag_ref(L, 2, ref, sizeof ref);
    git_repository *r = state_repo(L);
    lua_newtable(L);
    if (r) add_ref(L, lua_gettop(L), r, ref, 0);
    return 1;
}

/* [-0, +0, -] obj peeled past tags (the commit or tree an annotated tag names); a new
** reference, or NULL. */
static git_object *past_tags(git_object *obj)
{
    git_object *out = NULL;
    if (git_object_type(obj) != GIT_OBJECT_TAG) return git_object_dup(&out, obj) == 0 ? out : NULL;
    return git_object_peel(&out, obj, GIT_OBJECT_ANY) == 0 ? out : NULL;
}

/* git.tag: the tag is there, of the same kind (annotated with the same message, or
** lightweight), naming what target names; pushes its id, or nil. With force too: a tag
** already so is not moved. */
static int tag_unchanged(lua_State *L)
{
    char ref[1024];
    if (lua_type(L, 2) != LUA_TSTRING || (lua_type(L, 3) != LUA_TTABLE && !lua_isnoneornil(L, 3)))
        return lua_pushnil(L), 1;
    tag_ref(L, 2, ref, sizeof ref);
    const char *message = hrun_optstring(L, 3, "message", NULL, NULL);
    const char *target = hrun_optstring(L, 3, "target", "HEAD", NULL);
    git_repository *r = unchanged_repo(L, "git.tag");
    git_reference *tag = NULL;
    git_object *want = NULL, *have = NULL, *want_p = NULL, *have_p = NULL;
    int so = r && git_reference_lookup(&tag, r, ref) == 0 &&
             git_revparse_single(&want, r, target) == 0 &&
             git_object_lookup(&have, r, git_reference_target(tag), GIT_OBJECT_ANY) == 0 &&
             (git_object_type(have) == GIT_OBJECT_TAG) == (message != NULL) &&
             (want_p = past_tags(want)) != NULL && (have_p = past_tags(have)) != NULL &&
             git_oid_equal(git_object_id(want_p), git_object_id(have_p));
    if (so && message) {
        const char *m = git_tag_message((git_tag *)have);
        size_t n = strlen(message);
        /* git keeps a message with a newline at its end */
        so = m && strncmp(m, message, n) == 0 &&
             (m[n] == '\0' || (m[n] == '\n' && m[n + 1] == '\0'));
    }
    if (so)
        push_oid(L, git_reference_target(tag));
    else
        lua_pushnil(L);
    git_object_free(want);
    git_object_free(have);
    git_object_free(want_p);
    git_object_free(have_p);
    git_reference_free(tag);
    return 1;
}

/* git.delete_tag: no such tag */
static int delete_tag_unchanged(lua_State *L)
{
    char ref[1024];
    if (lua_type(L, 2) != LUA_TSTRING) return lua_pushnil(L), 1;
    tag_ref(L, 2, ref, sizeof ref);
    git_repository *r = unchanged_repo(L, "git.delete_tag");
    git_reference *tag = NULL;
    int gone = r && git_reference_lookup(&tag, r, ref) == GIT_ENOTFOUND;
    git_reference_free(tag);
    if (gone)
        lua_pushboolean(L, 1);
    else
        lua_pushnil(L);
    return 1;
}

/* git._setref: the ref */
static int setref_state(lua_State *L)
{
    const char *ref = luaL_checkstring(L, 2);
    git_repository *r = state_repo(L);
    lua_newtable(L);
    if (r) add_ref(L, lua_gettop(L), r, ref, 0);
    return 1;
}

/* git.checkout: HEAD (the commit it is at: its undo puts that back, detached) */
static int checkout_state(lua_State *L)
{
    git_repository *r = state_repo(L);
    lua_newtable(L);
    if (r) add_ref(L, lua_gettop(L), r, "HEAD", 1);
    return 1;
}

/* git.checkout_paths: each file */
static int checkout_paths_state(lua_State *L)
{
    luaL_checktype(L, 3, LUA_TTABLE);
    git_repository *r = state_repo(L);
    lua_newtable(L);
    int list = lua_gettop(L);
    const char *wd = r ? git_repository_workdir(r) : NULL;
    if (wd == NULL) return 1;
    static const char *const index[] = {"index", NULL};
    lua_Integer n = luaL_len(L, 3);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 3, i);
        const char *path = lua_tostring(L, -1);
        if (path) {
            char full[PATH_MAX];
            snprintf(full, sizeof full, "%s%s", wd, path);
            hrun_addpath(L, list, full);
            set_locks(L, list, git_repository_path(r), index);
        }
        lua_pop(L, 1);
    }
    return 1;
}

/* git.init: the repository its undo removes (dir, or dir/.git when dir is there already) */
static int init_state(lua_State *L)
{
    const char *dir = check_dir(L, 1);
    struct stat st;
    int bare = lua_type(L, 2) == LUA_TTABLE && (lua_getfield(L, 2, "bare"), lua_toboolean(L, -1));
    lua_newtable(L);
    if (stat(dir, &st) == 0 && !bare)
        lua_pushfstring(L, "%s/.git", dir);
    else
        lua_pushstring(L, dir);
    hrun_addabs(L, lua_gettop(L) - 1, "repo", lua_tostring(L, -1));
    lua_pop(L, 1);
    return 1;
}

/* git.clone: the repository */
static int clone_state(lua_State *L)
{
    luaL_checkstring(L, 1);
    const char *dir = hrun_checkpath(L, 2, NULL);
    lua_newtable(L);
    hrun_addabs(L, lua_gettop(L), "repo", dir);
    return 1;
}

/*
** A repository's fingerprint, key = its path: "absent"; "not a repository: <the path's>";
** "repository, HEAD <ref> at <commit>|unborn". Not its objects, index or work tree: the
** run's own later git writes add objects an undo leaves (a commit's undo moves the ref
** back), and its files are undone by their own effects; a commit someone made since
** moves HEAD, and that is a change.
*/
int hrun_repo_fp(lua_State *L)
{
    const char *dir = lua_tostring(L, 1);
    struct stat st;
    if (dir == NULL) return lua_pushliteral(L, "unreadable: no path in the key"), 1;
    if (lstat(dir, &st) < 0) {
        if (errno == ENOENT || errno == ENOTDIR) return lua_pushliteral(L, "absent"), 1;
        return lua_pushfstring(L, "unreadable: %s", strerror(errno)), 1;
    }
    need_libgit2(L);
    Repo *h = lua_newuserdatauv(L, sizeof(Repo), 0);
    h->r = NULL;
    hrun_setclose(L, "hrun.git.handle", repo_gc, NULL);
    lua_toclose(L, -1);
    if (git_repository_open_ext(&h->r, dir, GIT_REPOSITORY_OPEN_NO_SEARCH, NULL) < 0) {
        lua_pushliteral(L, "not a repository: ");
        lua_pushvalue(L, 1);
        lua_pushcfunction(L, hrun_path_fp);
        lua_insert(L, -2);
        lua_call(L, 1, 1);
        lua_concat(L, 2);
        return 1;
    }
    git_reference *head = NULL;
    const char *name = "HEAD";
    if (git_reference_lookup(&head, h->r, "HEAD") == 0 &&
        git_reference_type(head) == GIT_REFERENCE_SYMBOLIC)
        name = git_reference_symbolic_target(head);
    lua_pushfstring(L, "repository, HEAD %s at ", name);
    git_reference_free(head);
    git_object *commit;
    if (git_revparse_single(&commit, h->r, "HEAD^{commit}") == 0) {
        char hex[GIT_OID_HEXSZ + 1];
        oid_hex(git_object_id(commit), hex);
        git_object_free(commit);
        lua_pushstring(L, hex);
    } else {
        lua_pushliteral(L, "unborn");
    }
    lua_concat(L, 2);
    return 1;
}

/*
** A ref's fingerprint, key {repo, ref}: "absent"; "commit <id>"; "tag <id> on commit
** <id>" (an annotated tag); "-> refs/heads/x" (symbolic); HEAD's is the commit it
** resolves to, attached or not ("unborn" before the first commit).
*/
int hrun_ref_fp(lua_State *L)
{
    if (!lua_istable(L, 1)) return lua_pushliteral(L, "unreadable: no {repo, ref} key"), 1;
    lua_getfield(L, 1, "repo");
    lua_getfield(L, 1, "ref");
    const char *dir = lua_tostring(L, -2), *ref = lua_tostring(L, -1);
    if (dir == NULL || ref == NULL) return lua_pushliteral(L, "unreadable: no {repo, ref} key"), 1;
    struct stat st;
    if (stat(dir, &st) < 0) return lua_pushliteral(L, "absent"), 1;
    need_libgit2(L);
    Repo *h = lua_newuserdatauv(L, sizeof(Repo), 0);
    h->r = NULL;
    hrun_setclose(L, "hrun.git.handle", repo_gc, NULL);
    lua_toclose(L, -1);
    int rc = git_repository_open_ext(&h->r, dir, GIT_REPOSITORY_OPEN_NO_SEARCH, NULL);
    if (rc == GIT_ENOTFOUND) return lua_pushliteral(L, "absent"), 1;
    const git_error *e;
    char hex[GIT_OID_HEXSZ + 1], peeled[GIT_OID_HEXSZ + 1];
    if (rc == 0 && strcmp(ref, "HEAD") == 0) {
        git_object *head;
        if ((rc = git_revparse_single(&head, h->r, "HEAD^{commit}")) == 0) {
            oid_hex(git_object_id(head), hex);
            git_object_free(head);
            return lua_pushfstring(L, "commit %s", hex), 1;
        }
        if (git_repository_head_unborn(h->r) == 1) return lua_pushliteral(L, "unborn"), 1;
    } else if (rc == 0) {
        git_reference *cur;
        if ((rc = git_reference_lookup(&cur, h->r, ref)) == GIT_ENOTFOUND)
            return lua_pushliteral(L, "absent"), 1;
        if (rc == 0 && git_reference_type(cur) == GIT_REFERENCE_SYMBOLIC) {
            lua_pushfstring(L, "-> %s", git_reference_symbolic_target(cur));
        } else if (rc == 0) {
            git_object *obj = NULL, *c = NULL;
            oid_hex(git_reference_target(cur), hex);
            if (git_object_lookup(&obj, h->r, git_reference_target(cur), GIT_OBJECT_ANY) < 0)
                lua_pushfstring(L, "object %s", hex);
            else if (git_object_type(obj) != GIT_OBJECT_TAG)
                lua_pushfstring(L, "%s %s", git_object_type2string(git_object_type(obj)), hex);
            else if (git_object_peel(&c, obj, GIT_OBJECT_ANY) == 0) {
                oid_hex(git_object_id(c), peeled);
                lua_pushfstring(L, "tag %s on %s %s", hex,
                                git_object_type2string(git_object_type(c)), peeled);
            } else
                lua_pushfstring(L, "tag %s", hex);
            git_object_free(c), git_object_free(obj);
        }
        git_reference_free(cur);
        if (rc == 0) return 1;
    }
    e = git_error_last();
    return lua_pushfstring(L, "unreadable: %s", e && e->message ? e->message : "git error"), 1;
}

/* }====================================================== */

/* The sandbox's targets of a call on a repository: its directory, or a repository
** object's path (read raw, as check_dir reads it). */
static int dir_targets(lua_State *L, hrun_Target *t)
{
    if (lua_type(L, 1) == LUA_TTABLE) return hrun_targets_field(L, 1, "path", t, 0, NULL);
    return hrun_targets_arg1(L, t);
}

/* [-0, +1, m] Adds the target of a remote URL to the n in t (two for a relative local
** path: as read from hrun's directory and from the repository's, wd). */
static int add_remote(lua_State *L, hrun_Target *t, int n, const char *url, const char *wd)
{
    char target[PATH_MAX];
    const char *cap = remote_target(url, target, sizeof target);
    const char *value = lua_pushstring(L, target);
    if (n < HRUN_MAXTARGETS) t[n++] = (hrun_Target){cap, value, NULL, 0, 0};
    if (strcmp(cap, "git") == 0 && target[0] != '/' && wd && n < HRUN_MAXTARGETS)
        t[n++] = (hrun_Target){cap, value, lua_pushstring(L, wd), 0, 0};
    return n;
}

/* git.clone(url, dir): the directory, and where the URL goes (remote_target). */
static int clone_targets(lua_State *L, hrun_Target *t)
{
    int n = hrun_targets_arg2(L, t);
    if (lua_type(L, 1) == LUA_TSTRING) n = add_remote(L, t, n, lua_tostring(L, 1), NULL);
    return n;
}

/* git.fetch(dir [, {remote}]): the repository, and where its remote goes, as its config
** says now (for plans; l_fetch checks again the remote object it fetches with). When
** that cannot be read: some net capability. */
static int fetch_targets(lua_State *L, hrun_Target *t)
{
    int n = dir_targets(L, t);
    char url[PATH_MAX] = "", wd[PATH_MAX] = "";
    const char *name = "origin";
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_pushliteral(L, "remote");
        if (lua_rawget(L, 2) == LUA_TSTRING) name = lua_tostring(L, -1);
    }
    if (n > 0) {
        need_libgit2(L);
        git_repository *r = NULL;
        git_remote *remote = NULL;
        if (git_repository_open_ext(&r, t[0].value, 0, NULL) == 0 &&
            git_remote_lookup(&remote, r, name) == 0 && git_remote_url(remote)) {
            snprintf(url, sizeof url, "%s", git_remote_url(remote));
            if (git_repository_workdir(r)) snprintf(wd, sizeof wd, "%s", git_repository_workdir(r));
        }
        git_remote_free(remote);
        git_repository_free(r);
    }
    if (*url) return add_remote(L, t, n, url, *wd ? wd : NULL);
    if (n < HRUN_MAXTARGETS) t[n++] = (hrun_Target){"net", NULL, NULL, 0, 0};
    return n;
}

static const hrun_Prim git_prims[] = {
    {.name = "open", .func = l_open, .kind = HRUN_READ, .cap = "git", .targets = dir_targets},
    {.name = "head", .func = l_head, .kind = HRUN_READ, .cap = "git", .targets = dir_targets},
    {.name = "status", .func = l_status, .kind = HRUN_READ, .cap = "git", .targets = dir_targets},
    {.name = "log", .func = l_log, .kind = HRUN_READ, .cap = "git", .targets = dir_targets},
    {.name = "tags", .func = l_tags, .kind = HRUN_READ, .cap = "git", .targets = dir_targets},
    {.name = "diff", .func = l_diff, .kind = HRUN_READ, .cap = "git", .targets = dir_targets},
    {.name = "init",
     .func = l_init,
     .kind = HRUN_WRITE,
     .opts = 2,
     .cap = "git",
     .inverse = init_inverse,
     .state = init_state,
     .targets = dir_targets},
    {.name = "clone",
     .func = l_clone,
     .kind = HRUN_WRITE,
     .opts = 3,
     .cap = "git",
     .inverse = clone_inverse,
     .state = clone_state,
     .targets = clone_targets},
    {.name = "fetch",
     .func = l_fetch,
     .kind = HRUN_WRITE,
     .opts = 2,
     .cap = "git",
     .inverse = nothing_inverse,
     .targets = fetch_targets},
    {.name = "commit",
     .func = l_commit,
     .kind = HRUN_WRITE,
     .opts = 3,
     .cap = "git",
     .inverse = commit_inverse,
     .unchanged = commit_unchanged,
     .state = commit_state,
     .targets = dir_targets},
    {.name = "tag",
     .func = l_tag,
     .kind = HRUN_WRITE,
     .opts = 3,
     .cap = "git",
     .inverse = tagref_inverse,
     .state = tag_state,
     .unchanged = tag_unchanged,
     .targets = dir_targets},
    {.name = "delete_tag",
     .func = l_delete_tag,
     .kind = HRUN_WRITE,
     .cap = "git",
     .inverse = tagref_inverse,
     .state = tag_state,
     .unchanged = delete_tag_unchanged,
     .targets = dir_targets},
    {.name = "checkout_paths",
     .func = l_checkout_paths,
     .kind = HRUN_WRITE,
     .cap = "git",
     .inverse = checkout_paths_inverse,
     .state = checkout_paths_state,
     .targets = dir_targets},
    {.name = "checkout",
     .func = l_checkout,
     .kind = HRUN_WRITE,
     .cap = "git",
     .inverse = checkout_inverse,
     .state = checkout_state,
     .targets = dir_targets},
    {.name = "_setref",
     .func = l_setref,
     .kind = HRUN_WRITE,
     .cap = "git",
     .state = setref_state,
     .targets = dir_targets},
    {0},
};

/* A repository method: the module's function (upvalue 1) with the repository's path
** in place of self — through the dispatcher, so its writes are journaled. */
static int repo_call(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "path");
    lua_replace(L, 1);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, n, LUA_MULTRET);
    return lua_gettop(L);
}

static int repo_tostring(lua_State *L)
{
    lua_getfield(L, 1, "path");
    lua_pushfstring(L, "git repository %s", lua_tostring(L, -1));
    return 1;
}

int luaopen_hrun_git(lua_State *L)
{
    static const char *const methods[] = {"head",       "status",         "log",      "tags",
                                          "diff",       "fetch",          "commit",   "tag",
                                          "delete_tag", "checkout_paths", "checkout", NULL};
    hrun_newmodule(L, "git", git_prims); /* module */
    luaL_newmetatable(L, REPO_TYPE);
    lua_createtable(L, 0, 12);
    for (const char *const *m = methods; *m; m++) {
        lua_getfield(L, -3, *m);
        lua_pushcclosure(L, repo_call, 1);
        lua_setfield(L, -2, *m);
    }
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, repo_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "locked");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
    return 1;
}
