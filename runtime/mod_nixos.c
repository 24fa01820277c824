/*
** mod_nixos.c — the `nixos` module: system generations read from the profile directory
** itself, nixos-rebuild with its inverse journaled, rollback as nixos-rebuild does it
** underneath, closure diffs (as nvd shows them), and flake inputs: rewriting one URL in
** flake.nix byte for byte, `nix flake lock/update` and `nix flake check`.
*/
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "internal.h"

#define DEFAULT_PROFILE "/nix/var/nix/profiles/system"

/* {======================================================
** Generations
** ======================================================= */

typedef struct Gen {
    long number;
    char link[PATH_MAX + 256]; /* PROFILE-N-link */
    char path[PATH_MAX];       /* its store path */
    long long date;            /* the link's mtime, as nix-env --list-generations shows it */
} Gen;

typedef struct Gens {
    Gen *v;
    size_t n;
    long current; /* 0: the profile link points at none of them */
} Gens;

static int by_number(const void *a, const void *b)
{
    long x = ((const Gen *)a)->number, y = ((const Gen *)b)->number;
    return (x > y) - (x < y);
}

/* Reads the generations of profile (sorted by number). 0, or an errno value. */
static int read_gens(const char *profile, Gens *g)
{
    char dir[PATH_MAX], cur[PATH_MAX];
    const char *slash = strrchr(profile, '/');
    const char *base = slash ? slash + 1 : profile;
    size_t blen = strlen(base);
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - profile) : 1, slash ? profile : ".");
    if (slash == profile) snprintf(dir, sizeof dir, "/");
    g->v = NULL, g->n = 0, g->current = 0;
    struct stat st;
    if (lstat(profile, &st) < 0) return errno;
    ssize_t cl = readlink(profile, cur, sizeof cur - 1);
    cur[cl < 0 ? 0 : cl] = '\0';
    DIR *d = opendir(dir);
    if (d == NULL) return errno;
    struct dirent *de;
    size_t cap = 0;
    int err = 0;
    while ((de = readdir(d)) != NULL) {
        const char *name = de->d_name;
        if (strncmp(name, base, blen) != 0 || name[blen] != '-' ||
            !isdigit((unsigned char)name[blen + 1]))
            continue;
        char *end;
        long n = strtol(name + blen + 1, &end, 10);
        if (strcmp(end, "-link") != 0) continue;
        if (g->n == cap) {
            cap = cap ? cap * 2 : 16;
            Gen *v = realloc(g->v, cap * sizeof *v);
            if (v == NULL) {
                err = ENOMEM;
                break;
            }
            g->v = v;
        }
        Gen *e = &g->v[g->n];
        e->number = n;
        snprintf(e->link, sizeof e->link, "%s/%s", strcmp(dir, "/") ? dir : "", name);
        ssize_t len = readlink(e->link, e->path, sizeof e->path - 1);
        if (len < 0) continue;
        e->path[len] = '\0';
        e->date = lstat(e->link, &st) == 0 ? (long long)st.st_mtime : 0;
        if (strcmp(cur, name) == 0 || strcmp(cur, e->link) == 0) g->current = n;
        g->n++;
    }
    closedir(d);
    if (g->n > 1) qsort(g->v, g->n, sizeof *g->v, by_number);
    return err;
}

static Gen *find_gen(Gens *g, long n)
{
    for (size_t i = 0; i < g->n; i++)
        if (g->v[i].number == n) return &g->v[i];
    return NULL;
}

/* The generations live in a userdata so an error cannot leak them. */
static int gens_gc(lua_State *L)
{
    Gens *g = lua_touserdata(L, 1);
    free(g->v);
    g->v = NULL, g->n = 0;
    return 0;
}

/* [-0, +1, m] A Gens userdata on the stack, filled from profile; NULL after pushing
** the failure (nil, message, code: 3 values on top then, the userdata below them). */
static Gens *load_gens(lua_State *L, const char *what, const char *profile)
{
    Gens *g = lua_newuserdatauv(L, sizeof(Gens), 0);
    memset(g, 0, sizeof *g);
    hrun_setclose(L, "hrun.nixos.gens", gens_gc, NULL);
    int err = read_gens(profile, g);
    if (err == 0 && g->n == 0) {
        hrun_failf(L, "ENOENT", "%s: %s: no generations", what, profile);
        return NULL;
    }
    if (err) {
        hrun_fail(L, what, profile, err);
        return NULL;
    }
    return g;
}

/* Name and version of a store path's name, split as Nix's parseDrvName does: the
** version starts after the first dash that is followed by something not a letter. */
static void split_name(const char *s, size_t len, size_t *namelen, const char **version)
{
    for (size_t i = 0; i + 1 < len; i++)
        if (s[i] == '-' && !isalpha((unsigned char)s[i + 1])) {
            *namelen = i;
            *version = s + i + 1;
            return;
        }
    *namelen = len;
    *version = s + len;
}

/* The store path's name without the store directory and hash ("linux-6.6.63"). */
static const char *store_name(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dash = strchr(base, '-');
    return dash && dash - base == 32 ? dash + 1 : base;
}

/* The kernel version of a system: kernel-modules/lib/modules/<version>, else the
** version of boot.json's kernel store path. */
static int kernel_version(const char *sys, char *out, size_t size)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/kernel-modules/lib/modules", sys);
    DIR *d = opendir(path);
    if (d) {
        struct dirent *de;
        int found = 0;
        while (!found && (de = readdir(d)) != NULL)
            if (de->d_name[0] != '.') found = snprintf(out, size, "%s", de->d_name) > 0;
        closedir(d);
        if (found) return 1;
    }
    snprintf(path, sizeof path, "%s/boot.json", sys);
    json_t *root = json_load_file(path, 0, NULL);
    const char *kernel = json_string_value(
        json_object_get(json_object_get(root, "org.nixos.bootspec.v1"), "kernel"));
    int ok = 0;
    if (kernel) {
        /* /nix/store/<hash>-linux-6.6.63/bzImage */
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s", kernel);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = '\0';
        const char *name = store_name(dir), *version;
        size_t nl;
        split_name(name, strlen(name), &nl, &version);
        if (*version) ok = snprintf(out, size, "%s", version) > 0;
    }
    json_decref(root);
    return ok;
}

/* [-0, +1, m] {number, path, link, date, current, version, kernel} */
static void push_gen(lua_State *L, const Gen *e, long current)
{
    lua_createtable(L, 0, 7);
    lua_pushinteger(L, e->number);
    lua_setfield(L, -2, "number");
    lua_pushstring(L, e->path);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, e->link);
    lua_setfield(L, -2, "link");
    lua_pushinteger(L, e->date);
    lua_setfield(L, -2, "date");
    lua_pushboolean(L, e->number == current);
    lua_setfield(L, -2, "current");
    char buf[256], file[PATH_MAX + 64];
    snprintf(file, sizeof file, "%s/nixos-version", e->path);
    FILE *f = fopen(file, "r");
    if (f) {
        if (fgets(buf, sizeof buf, f)) {
            buf[strcspn(buf, "\r\n")] = '\0';
            lua_pushstring(L, buf);
            lua_setfield(L, -2, "version");
        }
        fclose(f);
    }
    if (kernel_version(e->path, buf, sizeof buf)) {
        lua_pushstring(L, buf);
        lua_setfield(L, -2, "kernel");
    }
}

static const char *const profile_options[] = {"profile", NULL};

static const char *opt_profile(lua_State *L, int arg)
{
    return hrun_optstring(L, arg, "profile", DEFAULT_PROFILE, NULL);
}

/*
** nixos.generations([{profile = "/nix/var/nix/profiles/system"}]) → {{number, path, link,
** date, current, version, kernel}, …} oldest first | nil, message, code
*/
static int l_generations(lua_State *L)
{
    hrun_checkopts(L, 1, profile_options);
    const char *profile = opt_profile(L, 1);
    Gens *g = load_gens(L, "nixos.generations", profile);
    if (g == NULL) return 3;
    lua_createtable(L, (int)g->n, 0);
    for (size_t i = 0; i < g->n; i++) {
        push_gen(L, &g->v[i], g->current);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

/* nixos.current([{profile}]) → the current generation | nil, message, code */
static int l_current(lua_State *L)
{
    hrun_checkopts(L, 1, profile_options);
    const char *profile = opt_profile(L, 1);
    Gens *g = load_gens(L, "nixos.current", profile);
    if (g == NULL) return 3;
    Gen *e = find_gen(g, g->current);
    if (e == NULL)
        return hrun_failf(L, "ENOENT", "nixos.current: %s: points at no generation", profile);
    push_gen(L, e, g->current);
    return 1;
}

static const char *const reboot_options[] = {"booted", "current", NULL};

/*
** nixos.needs_reboot([{booted = "/run/booted-system", current = "/run/current-system"}])
** → needs, {what differs: "kernel", "initrd", "kernel-modules"} | nil, message, code
*/
static int l_needs_reboot(lua_State *L)
{
    static const char *const parts[] = {"kernel", "initrd", "kernel-modules", NULL};
    hrun_checkopts(L, 1, reboot_options);
    const char *booted = hrun_optstring(L, 1, "booted", "/run/booted-system", NULL);
    const char *current = hrun_optstring(L, 1, "current", "/run/current-system", NULL);
    struct stat st;
    if (stat(booted, &st) < 0) return hrun_fail(L, "nixos.needs_reboot", booted, errno);
    if (stat(current, &st) < 0) return hrun_fail(L, "nixos.needs_reboot", current, errno);
    lua_newtable(L);
    int n = 0;
    for (const char *const *p = parts; *p; p++) {
        char a[PATH_MAX], b[PATH_MAX], ra[PATH_MAX], rb[PATH_MAX];
        snprintf(a, sizeof a, "%s/%s", booted, *p);
        snprintf(b, sizeof b, "%s/%s", current, *p);
        int ha = realpath(a, ra) != NULL, hb = realpath(b, rb) != NULL;
        if (ha != hb || (ha && strcmp(ra, rb) != 0)) {
            lua_pushstring(L, *p);
            lua_rawseti(L, -2, ++n);
        }
    }
    lua_pushboolean(L, n > 0);
    lua_insert(L, -2);
    return 2;
}

/* }====================================================== */

/* {======================================================
** Running the tools
** ======================================================= */

/* [-0, +1, e] Runs argv (a table on top, popped) as exec.run with check = false and
** {stream}, cwd; pushes the result table. Raises only what exec.run raises. */
static void run_tool(lua_State *L, const char *what, int stream, int streamfn, const char *cwd)
{
    int argv = lua_gettop(L);
    hrun_pushexec(L, what);
    lua_pushvalue(L, argv);
    lua_createtable(L, 0, 4);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "check");
    if (streamfn)
        lua_pushvalue(L, streamfn);
    else
        lua_pushboolean(L, stream);
    lua_setfield(L, -2, "stream");
    if (cwd) {
        lua_pushstring(L, cwd);
        lua_setfield(L, -2, "cwd");
    }
    lua_call(L, 2, 2);
    if (lua_isnil(L, -2)) { /* could not start: nil, message */
        lua_pushfstring(L, "%s", lua_tostring(L, -1));
        lua_error(L);
    }
    lua_pop(L, 1);
    lua_remove(L, argv);
}

/* Did the result on top succeed? */
static int tool_ok(lua_State *L)
{
    lua_getfield(L, -1, "ok");
    int ok = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return ok;
}

/* [-0, +3, m] For a failed run (its result on top): nil, "what: cmd exited with code
** N:\n<the last lines of its stderr>", code. */
static int tool_fail(lua_State *L, const char *what, const char *cmd, const char *code)
{
    int res = lua_gettop(L);
    lua_getfield(L, res, "code");
    int status = (int)lua_tointeger(L, -1);
    lua_getfield(L, res, "stderr");
    size_t len;
    const char *err = lua_tolstring(L, -1, &len);
    while (len > 0 && (err[len - 1] == '\n' || err[len - 1] == ' ')) len--;
    size_t start = len;
    for (int lines = 0; start > 0; start--)
        if (err[start - 1] == '\n' && ++lines == 10) break;
    if (len > start)
        lua_pushfstring(L, "%s: %s exited with code %d:\n%s", what, cmd, status,
                        lua_pushlstring(L, err + start, len - start));
    else
        lua_pushfstring(L, "%s: %s exited with code %d", what, cmd, status);
    int msg = lua_gettop(L);
    lua_pushnil(L);
    lua_pushvalue(L, msg);
    lua_pushstring(L, code);
    return 3;
}

/* [-0, +0, m] Appends s to the argv table at idx. */
static void argv_add(lua_State *L, int idx, const char *s)
{
    lua_pushstring(L, s);
    lua_rawseti(L, idx, (lua_Integer)lua_rawlen(L, idx) + 1);
}

/* [-0, +1, m] A new argv table for `nix` with the flakes feature on. */
static int nix_argv(lua_State *L)
{
    lua_newtable(L);
    int t = lua_gettop(L);
    const char *nix = getenv("HRUN_NIX");
    argv_add(L, t, nix && *nix ? nix : "nix");
    argv_add(L, t, "--extra-experimental-features");
    argv_add(L, t, "nix-command flakes");
    return t;
}

/* }====================================================== */

/* {======================================================
** nixos-rebuild
** ======================================================= */

static const char *const actions[] = {"switch",    "boot",         "test", "build",
                                      "dry-build", "dry-activate", NULL};

static const char *const rebuild_options[] = {
    "flake", "profile_name", "profile", "target_host", "extra_args", "stream", NULL};

/* The profile a rebuild changes: opts.profile, else the profile_name's, else the system's. */
static const char *rebuild_profile(lua_State *L, int arg, char *buf, size_t size)
{
    const char *profile = hrun_optstring(L, arg, "profile", NULL, NULL);
    const char *name = hrun_optstring(L, arg, "profile_name", NULL, NULL);
    if (profile) return profile;
    if (name == NULL) return DEFAULT_PROFILE;
    snprintf(buf, size, "/nix/var/nix/profiles/system-profiles/%s", name);
    return buf;
}

/* [-0, +1, m] Parses dry-activate's "would stop the following units: a, b" lines into
** {stop = {…}, restart = {…}, start = {…}, reload = {…}, not_stopped = {…}}. */
static void push_units(lua_State *L, const char *out, size_t len)
{
    lua_newtable(L);
    const char *end = out + len;
    while (out < end) {
        const char *nl = memchr(out, '\n', (size_t)(end - out));
        const char *eol = nl ? nl : end;
        const char *mark = "the following units: ", *verb = NULL;
        size_t vlen = 0;
        char line[4096];
        snprintf(line, sizeof line, "%.*s", (int)(eol - out), out);
        char *at = strstr(line, mark);
        const char *key = NULL;
        if (strncmp(line, "would NOT stop the following changed units: ", 44) == 0) {
            key = "not_stopped", at = line + 44;
        } else if (strncmp(line, "would ", 6) == 0 && at) {
            verb = line + 6;
            vlen = (size_t)(at - 1 - verb);
            at += strlen(mark);
        }
        if (key || verb) {
            if (key)
                lua_pushstring(L, key);
            else
                lua_pushlstring(L, verb, vlen);
            lua_newtable(L);
            int k = 0;
            for (char *tok = strtok(at, ", "); tok; tok = strtok(NULL, ", ")) {
                lua_pushstring(L, tok);
                lua_rawseti(L, -2, ++k);
            }
            lua_rawset(L, -3);
        }
        out = nl ? nl + 1 : end;
    }
}

/*
** nixos.rebuild(action [, {flake, profile_name, profile, target_host, extra_args, stream =
** true}]) → {action, generation, previous, units, stdout, stderr, seconds} | nil, message,
** code ("EREBUILD"). Runs nixos-rebuild (HRUN_NIXOS_REBUILD overrides the command), its
** output streamed under the step. action: switch, boot, test, build, dry-build,
** dry-activate (units: what it would stop, restart, start, reload). profile: where the
** generations are read (default from profile_name, else the system profile).
*/
static int l_rebuild(lua_State *L)
{
    const char *action = actions[luaL_checkoption(L, 1, NULL, actions)];
    hrun_checkopts(L, 2, rebuild_options);
    const char *flake = hrun_optstring(L, 2, "flake", NULL, NULL);
    const char *pname = hrun_optstring(L, 2, "profile_name", NULL, NULL);
    const char *host = hrun_optstring(L, 2, "target_host", NULL, NULL);
    int stream = 1, streamfn = 0;
    if (!lua_isnoneornil(L, 2)) {
        int t = lua_getfield(L, 2, "stream");
        if (t == LUA_TFUNCTION)
            streamfn = lua_gettop(L);
        else if (t == LUA_TBOOLEAN)
            stream = lua_toboolean(L, -1), lua_pop(L, 1);
        else if (t == LUA_TNIL)
            lua_pop(L, 1);
        else
            luaL_argerror(L, 2, "field 'stream': boolean or function expected");
    }
    char pbuf[PATH_MAX];
    const char *profile = rebuild_profile(L, 2, pbuf, sizeof pbuf);
    const char *cmd = getenv("HRUN_NIXOS_REBUILD");
    if (cmd == NULL || *cmd == '\0') cmd = "nixos-rebuild";
    lua_newtable(L);
    int argv = lua_gettop(L);
    argv_add(L, argv, cmd);
    argv_add(L, argv, action);
    if (flake) argv_add(L, argv, "--flake"), argv_add(L, argv, flake);
    if (pname) argv_add(L, argv, "--profile-name"), argv_add(L, argv, pname);
    if (host) argv_add(L, argv, "--target-host"), argv_add(L, argv, host);
    if (hrun_optfield(L, 2, "extra_args", LUA_TTABLE)) {
        int extra = lua_gettop(L);
        lua_Integer n = luaL_len(L, extra);
        for (lua_Integer i = 1; i <= n; i++) {
            if (lua_rawgeti(L, extra, i) != LUA_TSTRING)
                luaL_argerror(L, 2, "field 'extra_args': a list of strings");
            lua_rawseti(L, argv, (lua_Integer)lua_rawlen(L, argv) + 1);
        }
        lua_pop(L, 1);
    }
    /* the generation before, for the result (the inverse was computed from it too) */
    long previous = 0;
    Gens before = {0};
    if (host == NULL && read_gens(profile, &before) == 0) previous = before.current;
    free(before.v);
    lua_pushvalue(L, argv);
    run_tool(L, "nixos.rebuild", stream, streamfn, NULL);
    if (!tool_ok(L)) {
        lua_pushfstring(L, "nixos-rebuild %s", action);
        const char *what = lua_tostring(L, -1);
        lua_insert(L, -2);
        return tool_fail(L, "nixos.rebuild", what, "EREBUILD");
    }
    int res = lua_gettop(L);
    lua_pushstring(L, action);
    lua_setfield(L, res, "action");
    lua_pushboolean(L, 1);
    lua_setfield(L, res, "ok");
    if (previous) {
        lua_pushinteger(L, previous);
        lua_setfield(L, res, "previous");
    }
    Gens after = {0};
    if (host == NULL && read_gens(profile, &after) == 0 && after.current) {
        lua_pushinteger(L, after.current);
        lua_setfield(L, res, "generation");
    }
    free(after.v);
    if (strcmp(action, "dry-activate") == 0) {
        size_t olen, elen;
        lua_getfield(L, res, "stdout");
        lua_getfield(L, res, "stderr");
        const char *o = lua_tolstring(L, -2, &olen), *e = lua_tolstring(L, -1, &elen);
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        luaL_addlstring(&b, o, olen);
        luaL_addchar(&b, '\n');
        luaL_addlstring(&b, e, elen);
        luaL_pushresult(&b);
        size_t len;
        const char *all = lua_tolstring(L, -1, &len);
        push_units(L, all, len);
        lua_setfield(L, res, "units");
        lua_pop(L, 3);
    }
    lua_settop(L, res);
    return 1;
}

/* dry-build and dry-activate change nothing (in plans they run for real). */
static int rebuild_writes(lua_State *L)
{
    const char *a = lua_tostring(L, 1);
    return !(a && (strcmp(a, "dry-build") == 0 || strcmp(a, "dry-activate") == 0));
}

/* [-0, +0, m] Appends {op = "nixos.rollback", args = {{profile, to, action}}}. */
static void add_profile_op(lua_State *L, int list, const char *op, const char *profile,
                           const char *key, long n, const char *action)
{
    lua_createtable(L, 0, 3);
    lua_pushstring(L, profile);
    lua_setfield(L, -2, "profile");
    lua_pushinteger(L, n);
    lua_setfield(L, -2, key);
    lua_pushstring(L, action);
    lua_setfield(L, -2, "action");
    hrun_addop(L, list, op, 1);
}

static void add_rollback(lua_State *L, int list, const char *profile, long to, const char *action)
{
    add_profile_op(L, list, "nixos.rollback", profile, "to", to, action);
}

/* Undo of a rebuild: switch/boot → the generation current before; test → activate it
** again; build and the dry ones change nothing to undo. */
static int rebuild_inverse(lua_State *L)
{
    const char *action = luaL_checkstring(L, 1);
    lua_settop(L, 2);
    const char *host = NULL;
    if (lua_type(L, 2) == LUA_TTABLE && lua_getfield(L, 2, "target_host") == LUA_TSTRING)
        host = lua_tostring(L, -1);
    lua_newtable(L);
    int list = lua_gettop(L);
    if (strcmp(action, "switch") && strcmp(action, "boot") && strcmp(action, "test")) return 1;
    if (host) {
        lua_pushnil(L);
        lua_pushfstring(L,
                        "nixos.rebuild %s on %s: a remote host's generation is not switched back "
                        "from here (nixos-rebuild switch --rollback --target-host does it)",
                        action, host);
        return 2;
    }
    char pbuf[PATH_MAX];
    const char *profile = rebuild_profile(L, 2, pbuf, sizeof pbuf);
    Gens g = {0};
    int err = read_gens(profile, &g);
    long cur = g.current;
    free(g.v);
    if (err || cur == 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "nixos.rebuild %s: %s has no current generation to go back to", action,
                        profile);
        return 2;
    }
    if (strcmp(action, "test") == 0) {
        /* test does not touch the profile: activating its current generation undoes it */
        add_profile_op(L, list, "nixos._activate", profile, "generation", cur, "test");
    } else {
        add_rollback(L, list, profile, cur, action);
    }
    return 1;
}

/* [-0, +(0|3), e] Runs GEN/bin/switch-to-configuration action; 0, or 3 failure values. */
static int activate(lua_State *L, const char *what, const Gen *e, const char *action)
{
    char stc[sizeof e->link + 64];
    snprintf(stc, sizeof stc, "%s/bin/switch-to-configuration", e->link);
    lua_newtable(L);
    argv_add(L, lua_gettop(L), stc);
    argv_add(L, lua_gettop(L), action);
    run_tool(L, what, 1, 0, NULL);
    if (!tool_ok(L)) return tool_fail(L, what, "switch-to-configuration", "EACTIVATE");
    lua_pop(L, 1);
    return 0;
}

static const char *const activate_actions[] = {"switch", "boot", "test", NULL};
static const char *const activate_options[] = {"profile", "generation", "action", NULL};

/*
** nixos._activate({profile, generation, action = "test"}) → true | nil, message, code
** Undo operation of `nixos-rebuild test`: activates the profile's generation again.
*/
static int l_activate(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    hrun_checkopts(L, 1, activate_options);
    const char *profile = opt_profile(L, 1);
    long n = (long)hrun_optinteger(L, 1, "generation", 0);
    const char *action = hrun_optstring(L, 1, "action", "test", NULL);
    lua_pushstring(L, action);
    action = activate_actions[luaL_checkoption(L, -1, NULL, activate_actions)];
    Gens *g = load_gens(L, "nixos._activate", profile);
    if (g == NULL) return 3;
    Gen *e = find_gen(g, n);
    if (e == NULL)
        return hrun_failf(L, "ENOENT", "nixos._activate: generation %d does not exist in %s",
                          (int)n, profile);
    if (activate(L, "nixos._activate", e, action)) return 3;
    lua_pushboolean(L, 1);
    return 1;
}

static const char *const rollback_options[] = {"profile", "to", "action", NULL};

/*
** nixos.rollback([{profile, to, action = "switch"}]) → {generation, previous} | nil,
** message, code. What `nixos-rebuild switch --rollback` does underneath: `nix-env
** --profile P --switch-generation N` (to: default the one before the current), then
** P/bin/switch-to-configuration ACTION (switch or boot). An unknown generation is an
** error naming it (ENOENT) and nothing changes.
*/
static int l_rollback(lua_State *L)
{
    hrun_checkopts(L, 1, rollback_options);
    const char *profile = opt_profile(L, 1);
    long to = (long)hrun_optinteger(L, 1, "to", 0);
    const char *action = hrun_optstring(L, 1, "action", "switch", NULL);
    if (strcmp(action, "switch") && strcmp(action, "boot"))
        luaL_argerror(L, 1, "field 'action': switch or boot");
    Gens *g = load_gens(L, "nixos.rollback", profile);
    if (g == NULL) return 3;
    long cur = g->current;
    if (to == 0) {
        for (size_t i = 0; i < g->n; i++)
            if (g->v[i].number < cur) to = g->v[i].number;
        if (to == 0)
            return hrun_failf(L, "ENOENT", "nixos.rollback: %s: no generation before %d", profile,
                              (int)cur);
    }
    Gen *e = find_gen(g, to);
    if (e == NULL)
        return hrun_failf(L, "ENOENT", "nixos.rollback: generation %d does not exist in %s",
                          (int)to, profile);
    if (to != cur) {
        char num[32];
        snprintf(num, sizeof num, "%ld", to);
        lua_newtable(L);
        int argv = lua_gettop(L);
        const char *env = getenv("HRUN_NIX_ENV");
        argv_add(L, argv, env && *env ? env : "nix-env");
        argv_add(L, argv, "--profile");
        argv_add(L, argv, profile);
        argv_add(L, argv, "--switch-generation");
        argv_add(L, argv, num);
        run_tool(L, "nixos.rollback", 1, 0, NULL);
        if (!tool_ok(L))
            return tool_fail(L, "nixos.rollback", "nix-env --switch-generation", "ENIXENV");
        lua_pop(L, 1);
    }
    if (activate(L, "nixos.rollback", e, action)) return 3;
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, to);
    lua_setfield(L, -2, "generation");
    lua_pushinteger(L, cur);
    lua_setfield(L, -2, "previous");
    return 1;
}

/* Undo of rollback: back to the generation current now. */
static int rollback_inverse(lua_State *L)
{
    const char *profile = DEFAULT_PROFILE, *action = "switch";
    if (lua_istable(L, 1)) {
        if (lua_getfield(L, 1, "profile") == LUA_TSTRING) profile = lua_tostring(L, -1);
        if (lua_getfield(L, 1, "action") == LUA_TSTRING) action = lua_tostring(L, -1);
    }
    lua_newtable(L);
    int list = lua_gettop(L);
    Gens g = {0};
    int err = read_gens(profile, &g);
    long cur = g.current;
    free(g.v);
    if (err == 0 && cur != 0) add_rollback(L, list, profile, cur, action);
    return 1; /* (no current generation: the rollback will fail and change nothing) */
}

/* }====================================================== */

/* {======================================================
** Closure diffs
** ======================================================= */

/* [-0, +1, e] The store path for a generation number or a path (arg). */
static const char *diff_target(lua_State *L, int arg, const char *profile, Gens **g)
{
    if (lua_type(L, arg) == LUA_TNUMBER) {
        lua_Integer n = luaL_checkinteger(L, arg);
        if (*g == NULL) {
            *g = load_gens(L, "nixos.diff", profile);
            if (*g == NULL) {
                lua_pop(L, 1); /* the code */
                lua_error(L);  /* the message: a generation that cannot be read is misuse */
            }
        }
        Gen *e = find_gen(*g, (long)n);
        if (e == NULL)
            luaL_error(L, "nixos.diff: generation %d does not exist in %s", (int)n, profile);
        lua_pushstring(L, e->path);
        return lua_tostring(L, -1);
    }
    const char *p = hrun_checkpath(L, arg, NULL);
    lua_pushstring(L, p);
    return p;
}

/* [-0, +1, e] The closure of path as a table {store path = true}. */
static void closure(lua_State *L, const char *path)
{
    lua_newtable(L);
    int set = lua_gettop(L);
    lua_newtable(L);
    const char *ns = getenv("HRUN_NIX_STORE");
    argv_add(L, set + 1, ns && *ns ? ns : "nix-store");
    argv_add(L, set + 1, "-qR");
    argv_add(L, set + 1, path);
    run_tool(L, "nixos.diff", 0, 0, NULL);
    if (!tool_ok(L)) {
        tool_fail(L, "nixos.diff", "nix-store -qR", "ENIXSTORE");
        lua_pop(L, 1);
        lua_error(L);
    }
    lua_getfield(L, -1, "stdout");
    size_t len;
    const char *s = lua_tolstring(L, -1, &len), *end = s + len;
    while (s < end) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        const char *eol = nl ? nl : end;
        if (eol > s) {
            lua_pushlstring(L, s, (size_t)(eol - s));
            lua_pushboolean(L, 1);
            lua_rawset(L, set);
        }
        s = nl ? nl + 1 : end;
    }
    lua_settop(L, set);
}

/* [-0, +1, e] {name = {versions…, sorted, as one string "1.2, 1.3"}} of a closure */
static void by_package(lua_State *L, int set)
{
    lua_newtable(L);
    int out = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, set)) {
        lua_pop(L, 1);
        const char *name = store_name(lua_tostring(L, -1)), *version;
        size_t nl;
        split_name(name, strlen(name), &nl, &version);
        lua_pushlstring(L, name, nl);
        if (lua_rawget(L, out) == LUA_TNIL) {
            lua_pop(L, 1);
            lua_newtable(L);
            lua_pushlstring(L, name, nl);
            lua_pushvalue(L, -2);
            lua_rawset(L, out);
        }
        lua_pushstring(L, version);
        lua_pushboolean(L, 1);
        lua_rawset(L, -3);
        lua_pop(L, 1);
    }
}

/* [-0, +1, m] The versions of a package (a set at idx) as "a, b" in sorted order. */
static void push_versions(lua_State *L, int idx)
{
    lua_getglobal(L, "table"); /* the standard library's sort and concat */
    int tbl = lua_gettop(L);
    lua_newtable(L);
    int list = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_rawseti(L, list, (lua_Integer)lua_rawlen(L, list) + 1);
    }
    lua_getfield(L, tbl, "sort");
    lua_pushvalue(L, list);
    lua_call(L, 1, 0);
    lua_getfield(L, tbl, "concat");
    lua_pushvalue(L, list);
    lua_pushliteral(L, ", ");
    lua_call(L, 2, 1);
    lua_replace(L, tbl);
    lua_settop(L, tbl);
}

/* The size of the store paths of the set at idx that are not in the set at other. */
static lua_Integer size_of(lua_State *L, int idx, int other)
{
    lua_newtable(L);
    int argv = lua_gettop(L);
    const char *ns = getenv("HRUN_NIX_STORE");
    argv_add(L, argv, ns && *ns ? ns : "nix-store");
    argv_add(L, argv, "-q");
    argv_add(L, argv, "--size");
    int any = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        if (lua_rawget(L, other) == LUA_TNIL) {
            lua_pushvalue(L, -2);
            lua_rawseti(L, argv, (lua_Integer)lua_rawlen(L, argv) + 1);
            any = 1;
        }
        lua_pop(L, 1);
    }
    if (!any) {
        lua_pop(L, 1);
        return 0;
    }
    run_tool(L, "nixos.diff", 0, 0, NULL);
    lua_Integer total = 0;
    if (tool_ok(L)) {
        lua_getfield(L, -1, "stdout");
        const char *s = lua_tostring(L, -1);
        char *end;
        for (long long v; (v = strtoll(s, &end, 10)), end != s; s = end) total += v;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return total;
}

/* [-0, +0, m] Appends {name, version or from/to} to the list at idx. */
static void add_change(lua_State *L, int list, const char *name, int from, int to)
{
    lua_createtable(L, 0, 3);
    lua_pushstring(L, name);
    lua_setfield(L, -2, "name");
    if (from && to) {
        push_versions(L, from);
        lua_setfield(L, -2, "from");
        push_versions(L, to);
        lua_setfield(L, -2, "to");
    } else {
        push_versions(L, from ? from : to);
        lua_setfield(L, -2, "version");
    }
    lua_rawseti(L, list, (lua_Integer)lua_rawlen(L, list) + 1);
}

static int by_name_field(lua_State *L)
{
    lua_getfield(L, 1, "name");
    lua_getfield(L, 2, "name");
    lua_pushboolean(L, strcmp(lua_tostring(L, -2), lua_tostring(L, -1)) < 0);
    return 1;
}

static void sort_list(lua_State *L, int list)
{
    lua_getglobal(L, "table");
    lua_getfield(L, -1, "sort");
    lua_pushvalue(L, list);
    lua_pushcfunction(L, by_name_field);
    lua_call(L, 2, 0);
    lua_pop(L, 1);
}

static const char *const diff_options[] = {"profile", "sizes", NULL};

/*
** nixos.diff(a, b [, {profile, sizes = true}]) → {added = {{name, version}},
** removed = {{name, version}}, changed = {{name, from, to}}, bytes, paths_added,
** paths_removed}. a and b: generation numbers (of profile) or store paths. Packages are
** grouped by name with versions split as parseDrvName does (nvd's view); bytes: how
** much the closure grows (negative: shrinks).
*/
static int l_diff(lua_State *L)
{
    hrun_checkopts(L, 3, diff_options);
    const char *profile = opt_profile(L, 3);
    int sizes = hrun_optbool(L, 3, "sizes", 1);
    lua_settop(L, 3);
    Gens *g = NULL;
    const char *a = diff_target(L, 1, profile, &g);
    const char *b = diff_target(L, 2, profile, &g);
    closure(L, a);
    int ca = lua_gettop(L);
    closure(L, b);
    int cb = lua_gettop(L);
    by_package(L, ca);
    int pa = lua_gettop(L);
    by_package(L, cb);
    int pb = lua_gettop(L);
    lua_createtable(L, 0, 6);
    int res = lua_gettop(L);
    lua_newtable(L);
    int added = lua_gettop(L);
    lua_newtable(L);
    int removed = lua_gettop(L);
    lua_newtable(L);
    int changed = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, pb)) {
        int vb = lua_gettop(L);
        lua_pushvalue(L, -2);
        if (lua_rawget(L, pa) == LUA_TNIL) {
            add_change(L, added, lua_tostring(L, vb - 1), 0, vb);
        } else {
            push_versions(L, vb + 1);
            push_versions(L, vb);
            if (strcmp(lua_tostring(L, -1), lua_tostring(L, -2)) != 0)
                add_change(L, changed, lua_tostring(L, vb - 1), vb + 1, vb);
            lua_pop(L, 2);
        }
        lua_settop(L, vb - 1);
    }
    lua_pushnil(L);
    while (lua_next(L, pa)) {
        int va = lua_gettop(L);
        lua_pushvalue(L, -2);
        if (lua_rawget(L, pb) == LUA_TNIL) add_change(L, removed, lua_tostring(L, va - 1), va, 0);
        lua_settop(L, va - 1);
    }
    sort_list(L, added), sort_list(L, removed), sort_list(L, changed);
    lua_setfield(L, res, "changed");
    lua_setfield(L, res, "removed");
    lua_setfield(L, res, "added");
    lua_Integer pa_n = 0, pr_n = 0;
    lua_pushnil(L);
    while (lua_next(L, cb)) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        if (lua_rawget(L, ca) == LUA_TNIL) pa_n++;
        lua_pop(L, 1);
    }
    lua_pushnil(L);
    while (lua_next(L, ca)) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        if (lua_rawget(L, cb) == LUA_TNIL) pr_n++;
        lua_pop(L, 1);
    }
    lua_pushinteger(L, pa_n);
    lua_setfield(L, res, "paths_added");
    lua_pushinteger(L, pr_n);
    lua_setfield(L, res, "paths_removed");
    if (sizes) {
        lua_pushinteger(L, size_of(L, cb, ca) - size_of(L, ca, cb));
        lua_setfield(L, res, "bytes");
    }
    lua_settop(L, res);
    return 1;
}

/* }====================================================== */

/* [-0, +0, m] The lines of a closure diff (at idx) into the list at lines, as nvd
** shows them: "~ openssl 3.0.13 → 3.3.2", "+ foo 1.0", "- bar 1.0". */
static void diff_lines(lua_State *L, int idx, int lines)
{
    static const char *const kinds[] = {"changed", "added", "removed"};
    lua_getfield(L, idx, "bytes");
    lua_Integer bytes = lua_tointeger(L, -1);
    lua_pop(L, 1);
    int counts[3];
    for (int k = 0; k < 3; k++) {
        lua_getfield(L, idx, kinds[k]);
        counts[k] = (int)lua_rawlen(L, -1);
        lua_pop(L, 1);
    }
    hrun_add_line(L, lines, "closure: %d changed, %d added, %d removed, %s%d KiB", counts[0],
                  counts[1], counts[2], bytes >= 0 ? "+" : "-",
                  (int)((bytes < 0 ? -bytes : bytes) / 1024));
    for (int k = 0; k < 3; k++) {
        lua_getfield(L, idx, kinds[k]);
        for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, -1); i++) {
            lua_rawgeti(L, -1, i);
            lua_getfield(L, -1, "name");
            lua_getfield(L, -2, k == 0 ? "from" : "version");
            lua_getfield(L, -3, "to");
            if (k == 0)
                hrun_add_line(L, lines, "~ %s %s → %s", lua_tostring(L, -3), lua_tostring(L, -2),
                              lua_tostring(L, -1));
            else
                hrun_add_line(L, lines, "%c %s %s", k == 1 ? '+' : '-', lua_tostring(L, -3),
                              lua_tostring(L, -2));
            lua_pop(L, 4);
        }
        lua_pop(L, 1);
    }
}

/* The body of rebuild_preview: (opts, profile, scratch) → the preview table. */
static int preview_body(lua_State *L)
{
    const char *profile = lua_tostring(L, 2), *scratch = lua_tostring(L, 3);
    lua_createtable(L, 0, 3);
    int res = lua_gettop(L);
    lua_newtable(L);
    int lines = lua_gettop(L);
    /* `nixos-rebuild build` with the same flake and options, in the scratch directory */
    lua_newtable(L);
    int argv = lua_gettop(L);
    const char *cmd = getenv("HRUN_NIXOS_REBUILD");
    argv_add(L, argv, cmd && *cmd ? cmd : "nixos-rebuild");
    argv_add(L, argv, "build");
    argv_add(L, argv, "--no-write-lock-file"); /* a plan changes nothing */
    if (lua_istable(L, 1)) {
        static const char *const flags[][2] = {{"flake", "--flake"},
                                               {"profile_name", "--profile-name"}};
        for (int i = 0; i < 2; i++)
            if (lua_getfield(L, 1, flags[i][0]) == LUA_TSTRING) {
                argv_add(L, argv, flags[i][1]);
                lua_rawseti(L, argv, (lua_Integer)lua_rawlen(L, argv) + 1);
            } else {
                lua_pop(L, 1);
            }
        if (lua_getfield(L, 1, "extra_args") == LUA_TTABLE)
            for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, -1); i++) {
                lua_rawgeti(L, -1, i);
                lua_rawseti(L, argv, (lua_Integer)lua_rawlen(L, argv) + 1);
            }
        lua_pop(L, 1);
    }
    run_tool(L, "nixos.rebuild", 0, 0, scratch);
    char result[PATH_MAX + 16], built[PATH_MAX];
    snprintf(result, sizeof result, "%s/result", scratch);
    ssize_t n = tool_ok(L) ? readlink(result, built, sizeof built - 1) : -1;
    if (n < 0) {
        tool_fail(L, "nixos.rebuild", "nixos-rebuild build", "EREBUILD");
        lua_pop(L, 1);
        hrun_add_line(L, lines, "the build fails: %s", lua_tostring(L, -1));
        lua_setfield(L, res, "error");
    } else {
        built[n] = '\0';
        lua_pushstring(L, built);
        lua_setfield(L, res, "path");
        Gens g = {0};
        int err = read_gens(profile, &g);
        Gen *cur = err ? NULL : find_gen(&g, g.current);
        lua_pushstring(L, cur ? cur->path : "");
        free(g.v);
        if (*lua_tostring(L, -1)) {
            lua_pushcfunction(L, l_diff);
            lua_insert(L, -2);
            lua_pushstring(L, built);
            lua_call(L, 2, 1);
            diff_lines(L, lua_gettop(L), lines);
            lua_setfield(L, res, "diff");
        } else {
            hrun_add_line(L, lines, "builds %s (%s has no current generation to compare with)",
                          built, profile);
        }
    }
    lua_settop(L, lines);
    lua_setfield(L, res, "lines");
    return 1;
}

/*
** What a planned switch, boot or test would change: the configuration is built (as
** `nixos-rebuild build` in a scratch directory: store paths only, nothing activated)
** and diffed against the profile's current generation, as nvd shows it. A build that
** fails is shown too — the plan says the run would fail there.
*/
static int rebuild_preview(lua_State *L)
{
    const char *action = luaL_checkstring(L, 1);
    lua_settop(L, 2);
    int remote = lua_istable(L, 2) && lua_getfield(L, 2, "target_host") != LUA_TNIL;
    if (remote || (strcmp(action, "switch") && strcmp(action, "boot") && strcmp(action, "test"))) {
        lua_pushnil(L);
        return 1;
    }
    lua_settop(L, 2);
    char pbuf[PATH_MAX];
    const char *profile =
        lua_istable(L, 2) ? rebuild_profile(L, 2, pbuf, sizeof pbuf) : DEFAULT_PROFILE;
    const char *tmp = getenv("TMPDIR");
    char scratch[PATH_MAX];
    snprintf(scratch, sizeof scratch, "%s/hrun-plan-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (mkdtemp(scratch) == NULL)
        return luaL_error(L, "nixos.rebuild: plan: %s: %s", scratch, strerror(errno));
    lua_pushcfunction(L, preview_body);
    lua_pushvalue(L, 2);
    lua_pushstring(L, profile);
    lua_pushstring(L, scratch);
    int status = lua_pcall(L, 3, 1, 0);
    hrun_rmtree(scratch); /* the result link only: the build stays in the store */
    if (status != LUA_OK) return lua_error(L);
    return 1;
}

/* {======================================================
** flake.nix inputs: a small Nix lexer that follows attribute paths
** ======================================================= */

typedef struct Lex {
    const char *s, *end, *p;
    int line;
} Lex;

enum { T_EOF, T_ID, T_STR, T_PUNCT, T_OTHER };

typedef struct Tok {
    int type;
    const char *start, *end; /* the token's bytes; a string's without its quotes */
    int line;
    int plain; /* a string without ${} interpolation */
    char c;    /* punctuation */
} Tok;

static void skip_space(Lex *x)
{
    while (x->p < x->end) {
        char c = *x->p;
        if (c == '\n') {
            x->line++, x->p++;
        } else if (isspace((unsigned char)c)) {
            x->p++;
        } else if (c == '#') {
            while (x->p < x->end && *x->p != '\n') x->p++;
        } else if (c == '/' && x->p + 1 < x->end && x->p[1] == '*') {
            x->p += 2;
            while (x->p + 1 < x->end && !(x->p[0] == '*' && x->p[1] == '/'))
                x->line += *x->p++ == '\n';
            x->p = x->p + 1 < x->end ? x->p + 2 : x->end;
        } else {
            break;
        }
    }
}

/* Skips an interpolation's body (after "${") to its closing brace. */
static void skip_interp(Lex *x);

static void next(Lex *x, Tok *t)
{
    skip_space(x);
    t->line = x->line, t->plain = 1, t->c = 0;
    t->start = x->p;
    if (x->p >= x->end) {
        t->type = T_EOF, t->end = x->p;
        return;
    }
    char c = *x->p;
    if (isalpha((unsigned char)c) || c == '_') {
        while (x->p < x->end &&
               (isalnum((unsigned char)*x->p) || *x->p == '_' || *x->p == '-' || *x->p == '\''))
            x->p++;
        t->type = T_ID, t->end = x->p;
        return;
    }
    if (c == '"') {
        x->p++;
        t->start = x->p;
        while (x->p < x->end && *x->p != '"') {
            if (*x->p == '\\' && x->p + 1 < x->end) {
                x->p += 2;
                t->plain = 0; /* escapes: rewrite refused rather than guessed */
                continue;
            }
            if (*x->p == '$' && x->p + 1 < x->end && x->p[1] == '{') {
                t->plain = 0;
                x->p += 2;
                skip_interp(x);
                continue;
            }
            x->line += *x->p++ == '\n';
        }
        t->type = T_STR, t->end = x->p;
        if (x->p < x->end) x->p++;
        return;
    }
    if (c == '\'' && x->p + 1 < x->end && x->p[1] == '\'') { /* ''indented string'' */
        x->p += 2;
        t->start = x->p;
        t->plain = 0;
        while (x->p + 1 < x->end && !(x->p[0] == '\'' && x->p[1] == '\'' &&
                                      (x->p + 2 >= x->end || (x->p[2] != '\'' && x->p[2] != '$'))))
            x->line += *x->p++ == '\n';
        t->type = T_STR, t->end = x->p;
        x->p = x->p + 1 < x->end ? x->p + 2 : x->end;
        return;
    }
    x->p++;
    t->end = x->p;
    if (strchr("{}=;.@:,()[]", c)) {
        t->type = T_PUNCT, t->c = c;
        return;
    }
    if (c == '$' && x->p < x->end && *x->p == '{') {
        x->p++;
        skip_interp(x);
        t->type = T_OTHER, t->end = x->p;
        return;
    }
    t->type = T_OTHER;
}

static void skip_interp(Lex *x)
{
    int depth = 1;
    Tok t;
    while (depth > 0) {
        next(x, &t);
        if (t.type == T_EOF) return;
        if (t.type == T_PUNCT && t.c == '{') depth++;
        if (t.type == T_PUNCT && t.c == '}') depth--;
    }
}

#define MAX_PATH_PARTS 16
#define MAX_DEPTH      64

typedef struct Part {
    const char *s;
    size_t len;
} Part;

/* One `{` of the file: the attribute path it is the value of, or opaque (a function's
** argument set, a let, a set inside a list) where no input can be declared. */
typedef struct Frame {
    Part path[MAX_PATH_PARTS];
    int n, opaque;
} Frame;

typedef struct Match {
    const char *start, *end; /* the URL string's bytes */
    int line, plain;
} Match;

static int part_is(const Part *p, const char *s)
{
    return p->len == strlen(s) && memcmp(p->s, s, p->len) == 0;
}

/* Finds `inputs.<input>.url = "…"` in any of its spellings. Returns the number of
** matches (the first two in m[0..1]). */
static int find_input(const char *src, size_t len, const char *input, Match m[2])
{
    Lex x = {src, src + len, src, 1};
    Frame stack[MAX_DEPTH];
    int depth = 0, found = 0;
    Tok t;
    Part path[MAX_PATH_PARTS];
    int n = 0;          /* the attribute path being read at the start of a binding */
    int at_binding = 0; /* right after `{` or `;` inside a set: a binding may start */
    int after_eq = 0;   /* the token before was the `=` of a binding with path[0..n) */
    Part eq_path[MAX_PATH_PARTS * 2];
    int eq_n = 0;
    int last_dot = 0;
    for (next(&x, &t); t.type != T_EOF; next(&x, &t)) {
        if (t.type == T_PUNCT && t.c == '{') {
            Frame *f = depth < MAX_DEPTH ? &stack[depth] : NULL;
            if (f) {
                f->opaque = !(after_eq || depth == 0) || (depth > 0 && stack[depth - 1].opaque);
                f->n = 0;
                if (after_eq && !f->opaque)
                    for (int i = 0; i < eq_n && i < MAX_PATH_PARTS; i++)
                        f->path[f->n++] = eq_path[i];
            }
            depth++;
            at_binding = 1, after_eq = 0, n = 0, last_dot = 0;
            continue;
        }
        if (t.type == T_PUNCT && t.c == '}') {
            if (depth > 0) depth--;
            at_binding = 0, after_eq = 0, n = 0;
            continue;
        }
        if (after_eq && t.type == T_STR && depth > 0 && depth <= MAX_DEPTH &&
            !stack[depth - 1].opaque) {
            /* the value of eq_path: is it inputs.<input>.url? */
            if (eq_n == 3 && part_is(&eq_path[0], "inputs") && part_is(&eq_path[1], input) &&
                part_is(&eq_path[2], "url")) {
                if (found < 2) m[found] = (Match){t.start, t.end, t.line, t.plain};
                found++;
            }
        }
        if (t.type == T_PUNCT && t.c == ';') {
            at_binding = 1, after_eq = 0, n = 0, last_dot = 0;
            continue;
        }
        if (at_binding && (t.type == T_ID || t.type == T_STR) && (n == 0 || last_dot)) {
            if (n < MAX_PATH_PARTS) path[n++] = (Part){t.start, (size_t)(t.end - t.start)};
            last_dot = 0, after_eq = 0;
            continue;
        }
        if (at_binding && t.type == T_PUNCT && t.c == '.' && n > 0) {
            last_dot = 1;
            continue;
        }
        if (at_binding && t.type == T_PUNCT && t.c == '=' && n > 0 && depth > 0 &&
            depth <= MAX_DEPTH) {
            Frame *f = &stack[depth - 1];
            eq_n = 0;
            for (int i = 0; i < f->n; i++) eq_path[eq_n++] = f->path[i];
            for (int i = 0; i < n && eq_n < MAX_PATH_PARTS * 2; i++) eq_path[eq_n++] = path[i];
            after_eq = 1, at_binding = 0, n = 0;
            continue;
        }
        /* anything else: inside an expression until the next `;` of this set */
        at_binding = 0, after_eq = 0, n = 0;
    }
    return found;
}

/*
** [-0, +2|3, e] The text of a flake.nix (at src, named file in messages) with the URL of
** input replaced: pushes the new text and the old URL, returns 2; or pushes nil, message,
** code and returns 3.
*/
static int set_input_text(lua_State *L, const char *file, const char *src, size_t len,
                          const char *input, const char *url, size_t ulen)
{
    Match m[2];
    int found = find_input(src, len, input, m);
    if (found == 0)
        return hrun_failf(L, "ENOENT", "nixos.flake_set_input: %s: no input '%s' with a url", file,
                          input);
    if (found > 1)
        return hrun_failf(L, "EAMBIGUOUS",
                          "nixos.flake_set_input: %s: input '%s' has a url on line %d and line %d",
                          file, input, m[0].line, m[1].line);
    if (!m[0].plain)
        return hrun_failf(L, "EINVAL",
                          "nixos.flake_set_input: %s:%d: the url of '%s' is not a plain string",
                          file, m[0].line, input);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, src, (size_t)(m[0].start - src));
    luaL_addlstring(&b, url, ulen);
    luaL_addlstring(&b, m[0].end, (size_t)(src + len - m[0].end));
    luaL_pushresult(&b);
    lua_pushlstring(L, m[0].start, (size_t)(m[0].end - m[0].start));
    return 2;
}

static const char *check_url(lua_State *L, int arg, size_t *ulen)
{
    const char *url = luaL_checklstring(L, arg, ulen);
    for (const char *c = url; *c; c++)
        if (*c == '"' || *c == '\\' || *c == '\n' || (*c == '$' && c[1] == '{'))
            luaL_argerror(L, arg, "a URL with a quote, backslash, newline or ${ in it");
    return url;
}

/*
** nixos.flake_set_input(flake_nix, input, url) → the URL it replaced | nil, message, code
** Rewrites only that input's URL string (inputs.X.url = "…", inputs = { X.url = "…"; },
** inputs = { X = { url = "…"; }; } or inputs.X = { url = "…"; }), every other byte
** left alone. An input that is missing (ENOENT) or declared twice (EAMBIGUOUS), or whose
** URL is not a plain string, is an error and the file is not touched.
*/
static int l_flake_set_input(lua_State *L)
{
    const char *file = hrun_checkpath(L, 1, NULL);
    const char *input = luaL_checkstring(L, 2);
    size_t ulen;
    const char *url = check_url(L, 3, &ulen);
    if (*input == '\0') luaL_argerror(L, 2, "empty input name");
    FILE *f = fopen(file, "rb");
    if (f == NULL) return hrun_fail(L, "nixos.flake_set_input", file, errno);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) luaL_addlstring(&b, chunk, n);
    int rerr = ferror(f) ? errno : 0;
    fclose(f);
    if (rerr) return hrun_fail(L, "nixos.flake_set_input", file, rerr);
    luaL_pushresult(&b);
    size_t len;
    const char *src = lua_tolstring(L, -1, &len);
    if (set_input_text(L, file, src, len, input, url, ulen) == 3) return 3;
    int old = lua_gettop(L);                         /* the old URL, above the new text */
    if (lua_rawequal(L, old - 2, old - 1)) return 1; /* already so: nothing written */
    lua_pushcfunction(L, hrun_fs_write);
    lua_pushstring(L, file);
    lua_pushvalue(L, old - 1);
    lua_call(L, 2, 3);
    if (lua_isnil(L, -3)) {
        lua_pushfstring(L, "nixos.flake_set_input: %s", lua_tostring(L, -2));
        lua_replace(L, -3);
        return 3;
    }
    lua_settop(L, old);
    return 1;
}

/*
** nixos._set_input_text(text, input, url [, name]) → the text with input's URL replaced,
** the old URL | nil, message, code: what flake_set_input would write, for plans (which
** build what the edits make without making them). name: the file, for messages.
*/
static int l_set_input_text(lua_State *L)
{
    size_t len, ulen;
    const char *src = luaL_checklstring(L, 1, &len);
    const char *input = luaL_checkstring(L, 2);
    const char *url = check_url(L, 3, &ulen);
    return set_input_text(L, luaL_optstring(L, 4, "flake.nix"), src, len, input, url, ulen);
}

/* Pushes the bytes of a flake.nix, read as flake_set_input reads it; 0 (nothing pushed)
** when it cannot be read. */
static int push_flake_text(lua_State *L, const char *file)
{
    FILE *f = fopen(file, "rb");
    if (f == NULL) return 0;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) luaL_addlstring(&b, chunk, n);
    int bad = ferror(f);
    fclose(f);
    luaL_pushresult(&b);
    if (bad) lua_pop(L, 1);
    return !bad;
}

/* flake_set_input: the input's URL is already that one; pushes it (the URL it would
** replace), or nil */
static int flake_set_input_unchanged(lua_State *L)
{
    const char *file = lua_tostring(L, 1), *input = lua_tostring(L, 2);
    size_t ulen;
    const char *url = lua_tolstring(L, 3, &ulen);
    if (file == NULL || input == NULL || url == NULL) return lua_pushnil(L), 1;
    lua_settop(L, 3);
    if (!push_flake_text(L, file)) return lua_pushnil(L), 1;
    size_t len;
    const char *src = lua_tolstring(L, -1, &len);
    if (set_input_text(L, file, src, len, input, url, ulen) != 2 || !lua_rawequal(L, -3, -2))
        return lua_pushnil(L), 1;
    return 1; /* the old URL, the same as url */
}

/* What a planned flake_set_input does to the file: the diff of its text (nil when the
** edit cannot be made: the call itself says why). */
static int flake_set_input_preview(lua_State *L)
{
    const char *file = lua_tostring(L, 1), *input = lua_tostring(L, 2);
    size_t ulen;
    const char *url = lua_tolstring(L, 3, &ulen);
    if (file == NULL || input == NULL || url == NULL) return 0;
    lua_settop(L, 3);
    if (!push_flake_text(L, file)) return 0;
    size_t len;
    const char *src = lua_tolstring(L, -1, &len);
    if (set_input_text(L, file, src, len, input, url, ulen) != 2) return 0;
    size_t nlen;
    const char *new = lua_tolstring(L, -2, &nlen);
    hrun_diff_preview(L, file, src, len, new, nlen);
    return 1;
}

/* Undo of flake_set_input: the file's bytes back. */
static int file_inverse(lua_State *L)
{
    const char *file = luaL_checkstring(L, 1);
    lua_newtable(L);
    struct stat st;
    if (stat(file, &st) == 0) hrun_undo_change(L, lua_gettop(L), "nixos.flake_set_input", file);
    return 1;
}

/*
** The start of a `nix flake …` command on the directory at arg 1 (options at 2, checked
** against known; `stream` read): pushes its argv, up to "flake", and returns its index;
** 0 after pushing the failure when DIR/flake.nix is not there.
*/
static int flake_command(lua_State *L, const char *what, const char *const known[],
                         const char **dir, int *stream)
{
    *dir = hrun_checkpath(L, 1, NULL);
    hrun_checkopts(L, 2, known);
    *stream = hrun_optbool(L, 2, "stream", 1);
    char nix[PATH_MAX + 16];
    struct stat st;
    snprintf(nix, sizeof nix, "%s/flake.nix", *dir);
    if (stat(nix, &st) < 0) return hrun_fail(L, what, nix, errno), 0;
    int argv = nix_argv(L);
    argv_add(L, argv, "flake");
    return argv;
}

static const char *const update_options[] = {"inputs", "stream", NULL};

/*
** nixos.flake_update(dir [, {inputs = {…}, stream = true}]) → {inputs} | nil, message, code
** `nix flake lock --update-input X` for each input (all of them without inputs: `nix flake
** update`); the lock file's previous bytes are the undo.
*/
static int l_flake_update(lua_State *L)
{
    const char *dir;
    int stream;
    int argv = flake_command(L, "nixos.flake_update", update_options, &dir, &stream);
    if (argv == 0) return 3;
    if (hrun_optfield(L, 2, "inputs", LUA_TTABLE)) {
        int inputs = lua_gettop(L);
        lua_Integer n = luaL_len(L, inputs);
        if (n == 0) luaL_argerror(L, 2, "field 'inputs': an empty list");
        argv_add(L, argv, "lock");
        argv_add(L, argv, dir);
        for (lua_Integer i = 1; i <= n; i++) {
            if (lua_rawgeti(L, inputs, i) != LUA_TSTRING)
                luaL_argerror(L, 2, "field 'inputs': a list of input names");
            argv_add(L, argv, "--update-input");
            lua_rawseti(L, argv, (lua_Integer)lua_rawlen(L, argv) + 1);
        }
        lua_pop(L, 1);
    } else {
        argv_add(L, argv, "update");
        argv_add(L, argv, dir);
    }
    run_tool(L, "nixos.flake_update", stream, 0, NULL);
    if (!tool_ok(L)) return tool_fail(L, "nixos.flake_update", "nix flake lock", "ENIX");
    lua_pushboolean(L, 1);
    return 1;
}

static int lock_inverse(lua_State *L)
{
    const char *dir = luaL_checkstring(L, 1);
    lua_newtable(L);
    char lock[PATH_MAX];
    snprintf(lock, sizeof lock, "%s/flake.lock", dir);
    hrun_undo_change(L, lua_gettop(L), "nixos.flake_update", lock);
    return 1;
}

static const char *const check_options[] = {"stream", NULL};

/*
** nixos.flake_check(dir [, {stream = true}]) → {ok, stdout, stderr, seconds} | nil,
** message, code ("ECHECK": the checks failed; the message has their last lines)
*/
static int l_flake_check(lua_State *L)
{
    const char *dir;
    int stream;
    int argv = flake_command(L, "nixos.flake_check", check_options, &dir, &stream);
    if (argv == 0) return 3;
    argv_add(L, argv, "check");
    argv_add(L, argv, "--no-write-lock-file"); /* a read: it runs in plans too */
    argv_add(L, argv, dir);
    run_tool(L, "nixos.flake_check", stream, 0, NULL);
    if (!tool_ok(L)) return tool_fail(L, "nixos.flake_check", "nix flake check", "ECHECK");
    return 1;
}

/* }====================================================== */

/* {======================================================
** States, for the careful undo (runtime/undo.c)
** ======================================================= */

#define CURRENT_SYSTEM "/run/current-system"

/*
** A profile's fingerprint, key = its link (a profile, or /run/current-system):
** "generation 42 /nix/store/…-nixos-system-…" (the generation its link names, and the
** store path it is), "/nix/store/…" for a link that is no generation's, "absent".
*/
int hrun_profile_fp(lua_State *L)
{
    const char *path = lua_tostring(L, 1);
    char link[PATH_MAX], real[PATH_MAX];
    if (path == NULL) return lua_pushliteral(L, "unreadable: no profile in the key"), 1;
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n < 0 && (errno == ENOENT || errno == ENOTDIR)) return lua_pushliteral(L, "absent"), 1;
    if (n < 0 && errno == EINVAL) { /* not a link */
        lua_pushliteral(L, "not a link: ");
        hrun_path_fp(L);
        lua_concat(L, 2);
        return 1;
    }
    if (n < 0) return lua_pushfstring(L, "unreadable: %s", strerror(errno)), 1;
    link[n] = '\0';
    /* PROFILE -> PROFILE-N-link */
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    const char *lbase = strrchr(link, '/') ? strrchr(link, '/') + 1 : link;
    size_t blen = strlen(base);
    long gen = 0;
    if (strncmp(lbase, base, blen) == 0 && lbase[blen] == '-' &&
        isdigit((unsigned char)lbase[blen + 1])) {
        char *end;
        gen = strtol(lbase + blen + 1, &end, 10);
        if (strcmp(end, "-link") != 0) gen = 0;
    }
    if (realpath(path, real) == NULL)
        return lua_pushfstring(L, "-> %s (dangling: %s)", link, strerror(errno)), 1;
    if (gen)
        lua_pushfstring(L, "generation %d %s", (int)gen, real);
    else
        lua_pushstring(L, real);
    return 1;
}

/* [-0, +0, m] Appends a "profile" entry for the link at path to the array at list. */
static void add_profile(lua_State *L, int list, const char *path)
{
    char abs[PATH_MAX];
    if (hrun_abspath(path, abs, sizeof abs) < 0) snprintf(abs, sizeof abs, "%s", path);
    lua_pushstring(L, abs);
    hrun_addstate(L, list, "profile", abs);
}

/* Is the running system's link there (a NixOS booted as such)? Where it is not, what
** an activation changes cannot be seen: only the profile is compared. */
static int has_current_system(void)
{
    struct stat st;
    return lstat(CURRENT_SYSTEM, &st) == 0;
}

/* nixos.rebuild: switch and boot move the profile, switch and test the running system;
** the others change nothing, and a remote host's profile is not looked at from here
** (nil: nothing to compare, the inverse runs). A test without /run/current-system has
** nothing to compare either. */
static int rebuild_state(lua_State *L)
{
    const char *action = luaL_checkstring(L, 1);
    int sw = strcmp(action, "switch") == 0, boot = strcmp(action, "boot") == 0,
        test = strcmp(action, "test") == 0 && has_current_system();
    if (lua_istable(L, 2) && lua_getfield(L, 2, "target_host") != LUA_TNIL) sw = boot = test = 0;
    lua_settop(L, 2);
    if (!(sw || boot || test)) return lua_pushnil(L), 1;
    char pbuf[PATH_MAX];
    const char *profile = rebuild_profile(L, 2, pbuf, sizeof pbuf);
    lua_newtable(L);
    int list = lua_gettop(L);
    if (sw || boot) add_profile(L, list, profile);
    if ((sw || test) && has_current_system()) add_profile(L, list, CURRENT_SYSTEM);
    return 1;
}

/* nixos.rollback: the profile, and the running system when it switches */
static int rollback_state(lua_State *L)
{
    hrun_checkopts(L, 1, rollback_options);
    const char *profile = opt_profile(L, 1);
    const char *action = hrun_optstring(L, 1, "action", "switch", NULL);
    lua_newtable(L);
    int list = lua_gettop(L);
    add_profile(L, list, profile);
    if (strcmp(action, "switch") == 0 && has_current_system()) add_profile(L, list, CURRENT_SYSTEM);
    return 1;
}

/* nixos.flake_set_input: the file */
static int flake_file_state(lua_State *L)
{
    const char *file = luaL_checkstring(L, 1);
    lua_newtable(L);
    hrun_addpath(L, lua_gettop(L), file);
    return 1;
}

/* nixos.flake_update: the lock file */
static int flake_lock_state(lua_State *L)
{
    const char *dir = luaL_checkstring(L, 1);
    char lock[PATH_MAX];
    snprintf(lock, sizeof lock, "%s/flake.lock", dir);
    lua_newtable(L);
    hrun_addpath(L, lua_gettop(L), lock);
    return 1;
}

/* }====================================================== */

/* nixos.rebuild(action, {flake = "path#host"}): the flake's directory (a flake that is
** not a path is left to an unscoped nix capability: it is compared as a relative path). */
/* [-0, +1, m] The target of a flake reference: the directory of a local one ("/etc/nixos",
** ".#host", "path:/x?dir=y", "git+file:///x"); "/" for one nix fetches ("github:o/r",
** "git+https://…"): only a `nix` capability scoped to everything covers it, never one
** scoped to the directory hrun happens to run in. */
static const char *flake_target(lua_State *L, const char *flake)
{
    size_t len = strcspn(flake, "#");
    size_t scheme =
        strspn(flake, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-");
    if (scheme == 0 || scheme >= len || flake[scheme] != ':' || !isalpha((unsigned char)flake[0]))
        return lua_pushlstring(L, flake, len); /* a path */
    const char *rest = flake + scheme + 1;
    if (strncmp(flake, "path:", 5) == 0 || strncmp(flake, "git+file:", 9) == 0 ||
        strncmp(flake, "file:", 5) == 0) {
        if (strncmp(rest, "//", 2) == 0) rest += 2;
        return lua_pushlstring(L, rest, strcspn(rest, "?#"));
    }
    return lua_pushliteral(L, "/");
}

/* flake_check(flake): the flake's directory (flake_target) */
static int flake_arg1_targets(lua_State *L, hrun_Target *t)
{
    if (lua_type(L, 1) != LUA_TSTRING) return hrun_targets_arg1(L, t);
    t[0] = (hrun_Target){NULL, flake_target(L, lua_tostring(L, 1)), NULL, 0, 0};
    return 1;
}

static int rebuild_targets(lua_State *L, hrun_Target *t)
{
    if (lua_type(L, 2) != LUA_TTABLE) return 0;
    lua_pushliteral(L, "flake");
    if (lua_rawget(L, 2) != LUA_TSTRING) return 0;
    t[0] = (hrun_Target){NULL, flake_target(L, lua_tostring(L, -1)), NULL, 0, 0};
    return 1;
}

static const hrun_Prim nixos_prims[] = {
    {.name = "generations", .func = l_generations, .kind = HRUN_READ, .cap = "nix"},
    {.name = "current", .func = l_current, .kind = HRUN_READ, .cap = "nix"},
    {.name = "needs_reboot", .func = l_needs_reboot, .kind = HRUN_READ, .cap = "nix"},
    {.name = "diff", .func = l_diff, .kind = HRUN_READ, .cap = "nix"},
    {.name = "flake_check",
     .func = l_flake_check,
     .kind = HRUN_READ,
     .cap = "nix",
     .targets = flake_arg1_targets},
    {.name = "rebuild",
     .func = l_rebuild,
     .kind = HRUN_WRITE,
     .opts = 2,
     .cap = "nix",
     .writes = rebuild_writes,
     .inverse = rebuild_inverse,
     .state = rebuild_state,
     .preview = rebuild_preview,
     .targets = rebuild_targets},
    {.name = "rollback",
     .func = l_rollback,
     .kind = HRUN_WRITE,
     .opts = 1,
     .cap = "nix",
     .inverse = rollback_inverse,
     .state = rollback_state},
    {.name = "flake_set_input",
     .func = l_flake_set_input,
     .kind = HRUN_WRITE,
     .cap = "nix",
     .inverse = file_inverse,
     .unchanged = flake_set_input_unchanged,
     .state = flake_file_state,
     .preview = flake_set_input_preview,
     .targets = hrun_targets_arg1},
    {.name = "flake_update",
     .func = l_flake_update,
     .kind = HRUN_WRITE,
     .opts = 2,
     .cap = "nix",
     .inverse = lock_inverse,
     .state = flake_lock_state,
     .targets = hrun_targets_arg1},
    {.name = "_activate", .func = l_activate, .kind = HRUN_WRITE, .cap = "nix"},
    {.name = "_set_input_text", .func = l_set_input_text, .kind = HRUN_PURE, .cap = "nix"},
    {0},
};

int luaopen_hrun_nixos(lua_State *L)
{
    hrun_newmodule(L, "nixos", nixos_prims);
    return 1;
}
