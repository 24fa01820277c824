/*
** sandbox.c — the capability sandbox: what a shared playbook may touch.
**
** A playbook declares capabilities: a name ("fs", "exec", "net", …), optionally narrowed
** by a scope ("fs:/etc/nixos", "exec:pg_dumpall", "net:https://ntfy.example",
** "service:podman-*.service").  While a sandbox is set, the dispatcher asks it about every
** call of a primitive that needs a capability: the primitive names what the call touches
** (its targets: paths, a program, a unit, a URL) and each must fall in the scope of a
** declared capability of that name.  A call with no target (service.failed()) needs any
** capability of its name.  A refusal raises an error that names the capability missing.
** In audit mode the sandbox records what a run uses and refuses nothing (hrun plan).
*/
#include <ctype.h>
#include <errno.h>
#include <fnmatch.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>

#include "internal.h"

#define USED_KEY "hrun.capsused"

/* How a capability's scope is read and matched. */
enum scope_kind { SCOPE_NONE, SCOPE_PATH, SCOPE_PROGRAM, SCOPE_NAME, SCOPE_URL };

static const struct {
    const char *name;
    enum scope_kind kind;
} known_caps[] = {
    {"fs", SCOPE_PATH},      {"btrfs", SCOPE_PATH},   {"hash", SCOPE_PATH},
    {"git", SCOPE_PATH},     {"nix", SCOPE_PATH},     {"secrets", SCOPE_PATH},
    {"exec", SCOPE_PROGRAM}, {"service", SCOPE_NAME}, {"net", SCOPE_URL},
};
#define NCAPS (sizeof known_caps / sizeof known_caps[0])

/* A URL as the sandbox compares it (url_parse), or a unix socket (net:unix:/path). */
typedef struct Url {
    char *scheme, *host, *port; /* libcurl's; port "" when the scheme has no default */
    char *path, *bare;          /* the path's two forms (url_paths) */
    char *sock;                 /* a socket's path, normalized; then the rest is NULL */
} Url;

typedef struct Cap {
    int kind;    /* index in known_caps */
    char *scope; /* NULL: the whole capability; a path normalized, a program, a glob */
    char *found; /* SCOPE_PROGRAM by name: where hrun's PATH finds it (or NULL) */
    Url url;     /* SCOPE_URL */
    char *text;  /* as declared */
} Cap;

struct hrun_Sandbox {
    int enforce; /* 0: audit (record, refuse nothing) */
    int record;  /* keep what is used, for capsused() (plans) */
    int n;
    Cap caps[];
};

static int cap_index(const char *name, size_t len)
{
    for (size_t i = 0; i < NCAPS; i++)
        if (strlen(known_caps[i].name) == len && strncmp(known_caps[i].name, name, len) == 0)
            return (int)i;
    return -1;
}

/* {======================================================
** Paths: absolute, without . and .., symlinks resolved as far as the path exists
** ======================================================= */

/* Removes ".", ".." and doubled slashes from the absolute path in p, in place. */
static void lexical_clean(char *p)
{
    char *out = p;
    const char *in = p;
    while (*in) {
        while (*in == '/') in++;
        const char *end = strchr(in, '/');
        size_t len = end ? (size_t)(end - in) : strlen(in);
        if (len == 0) break;
        if (len == 1 && in[0] == '.') {
            /* skip */
        } else if (len == 2 && in[0] == '.' && in[1] == '.') {
            while (out > p && *--out != '/') {
            }
            *out = '\0';
        } else {
            *out++ = '/';
            memmove(out, in, len);
            out += len;
        }
        in += len;
    }
    if (out == p) *out++ = '/';
    *out = '\0';
}

int hrun_normpath(const char *path, const char *base, char *out, size_t size)
{
    char buf[PATH_MAX], cwd[PATH_MAX];
    if (path[0] != '/') {
        if (base == NULL) {
            if (getcwd(cwd, sizeof cwd) == NULL) return -1;
            base = cwd;
        }
        if ((size_t)snprintf(buf, sizeof buf, "%s/%s", base, path) >= sizeof buf)
            return errno = ENAMETOOLONG, -1;
    } else if ((size_t)snprintf(buf, sizeof buf, "%s", path) >= sizeof buf) {
        return errno = ENAMETOOLONG, -1;
    }
    lexical_clean(buf);
    /* the longest prefix that exists, with its symlinks resolved; the rest as it is */
    size_t cut = strlen(buf);
    for (;;) {
        char saved = buf[cut];
        buf[cut] = '\0';
        char real[PATH_MAX];
        int ok = realpath(cut ? buf : "/", real) != NULL;
        buf[cut] = saved;
        if (ok) {
            const char *rest = buf + cut;
            int slash = strcmp(real, "/") == 0 && *rest == '/';
            if ((size_t)snprintf(out, size, "%s%s", real, rest + slash) >= size)
                return errno = ENAMETOOLONG, -1;
            return 0;
        }
        if (cut == 0) return -1;
        while (cut > 0 && buf[--cut] != '/') {
        }
    }
}

/* A program's path: as hrun_normpath, but the last component (a symlink to pg_wrapper,
** busybox, …) is kept as it is — its name is which program runs. */
static int normprog(const char *path, const char *base, char *out, size_t size)
{
    char abs[PATH_MAX], cwd[PATH_MAX], dir[PATH_MAX];
    if (path[0] != '/' && base == NULL && (base = getcwd(cwd, sizeof cwd)) == NULL) return -1;
    int n = path[0] == '/' ? snprintf(abs, sizeof abs, "%s", path)
                           : snprintf(abs, sizeof abs, "%s/%s", base, path);
    if (n < 0 || (size_t)n >= sizeof abs) return errno = ENAMETOOLONG, -1;
    lexical_clean(abs);
    char *slash = strrchr(abs, '/');
    const char *name = slash + 1;
    *slash = '\0';
    if (hrun_normpath(*abs ? abs : "/", NULL, dir, sizeof dir) < 0) return -1;
    n = snprintf(out, size, "%s/%s", strcmp(dir, "/") == 0 ? "" : dir, name);
    if (n < 0 || (size_t)n >= size) return errno = ENAMETOOLONG, -1;
    return 0;
}

/* Is path within dir (equal, or below it)? Both normalized. */
static int path_within(const char *path, const char *dir)
{
    size_t n = strlen(dir);
    if (strcmp(dir, "/") == 0) return 1;
    return strncmp(path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

/* Where hrun's PATH finds program name (malloc'd), or NULL. */
static char *lookup_program(const char *name)
{
    const char *path = getenv("PATH");
    if (path == NULL || *name == '\0') return NULL;
    while (*path) {
        const char *end = strchr(path, ':');
        size_t len = end ? (size_t)(end - path) : strlen(path);
        char buf[PATH_MAX];
        if (len > 0 &&
            (size_t)snprintf(buf, sizeof buf, "%.*s/%s", (int)len, path, name) < sizeof buf) {
            if (access(buf, X_OK) == 0) {
                char clean[PATH_MAX];
                if (normprog(buf, NULL, clean, sizeof clean) == 0) return strdup(clean);
            }
        }
        path += len;
        if (*path == ':') path++;
    }
    return NULL;
}

/* }====================================================== */

/* {======================================================
** URLs (libcurl's parser: what the sandbox checks is what libcurl sends)
** ======================================================= */

/* The one parse of a URL that both the check and a request use (http hands libcurl
** this handle itself): a scheme is required (no guessing: "80" is not a URL), dot
** segments are removed as libcurl removes them before it sends a path. */
CURLU *hrun_urlparse(const char *text, int *why)
{
    CURLU *h = curl_url();
    CURLUcode rc =
        h ? curl_url_set(h, CURLUPART_URL, text, CURLU_NON_SUPPORT_SCHEME) : CURLUE_OUT_OF_MEMORY;
    if (why) *why = (int)rc;
    if (rc == CURLUE_OK) return h;
    curl_url_cleanup(h);
    return NULL;
}

static void url_free(Url *u)
{
    free(u->scheme), free(u->host), free(u->port), free(u->path), free(u->bare), free(u->sock);
    memset(u, 0, sizeof *u);
}

static int hexval(int c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* Decodes the percent-escapes of p in place: of unreserved characters only (all = 0:
** RFC 3986 6.2.2.2, the others' hex made upper case), or of every byte (all = 1). -1
** for an escaped NUL. */
static int unescape(char *p, int all)
{
    static const char hex[] = "0123456789ABCDEF";
    char *out = p;
    for (const char *in = p; *in; in++) {
        int hi, lo;
        if (in[0] != '%' || (hi = hexval(in[1])) < 0 || (lo = hexval(in[2])) < 0) {
            *out++ = *in;
            continue;
        }
        int c = hi * 16 + lo;
        if (c == 0) return -1;
        if (all || isalnum(c) || strchr("-._~", c)) {
            *out++ = (char)c;
        } else {
            *out++ = '%', *out++ = hex[hi], *out++ = hex[lo];
        }
        in += 2;
    }
    *out = '\0';
    return 0;
}

/* Removes the dot segments of the absolute path p in place (RFC 3986 5.2.4); with
** lenient, empty segments too, as a server that squashes "//" first would. */
static void remove_dots(char *p, int lenient)
{
    char *out = p;
    const char *in = p;
    while (*in == '/') {
        const char *seg = in + 1, *end = strchr(seg, '/');
        size_t len = end ? (size_t)(end - seg) : strlen(seg);
        int last = end == NULL;
        if ((len == 1 && seg[0] == '.') || (len == 0 && lenient)) {
            if (last) *out++ = '/';
        } else if (len == 2 && seg[0] == '.' && seg[1] == '.') {
            while (out > p && *--out != '/') {
            }
            if (last) *out++ = '/';
        } else {
            *out++ = '/';
            memmove(out, seg, len);
            out += len;
        }
        in = seg + len;
    }
    if (out == p) *out++ = '/';
    *out = '\0';
}

/* The two forms of a path the sandbox compares, from libcurl's (what it sends): path,
** with unreserved characters decoded ("%2e%2e" is ".."), and bare, what the most
** lenient server could make of it — every escape decoded (twice, for one that decodes
** again), '\' a separator, ";params" dropped from each segment ("..;"). A path must be
** within the scope in both. -1: an escaped NUL. */
static int url_paths(const char *raw, char **path, char **bare)
{
    size_t n = strlen(raw);
    *path = malloc(n + 2), *bare = malloc(n + 2);
    if (*path == NULL || *bare == NULL) return -1;
    snprintf(*path, n + 2, "%s%s", raw[0] == '/' ? "" : "/", raw);
    memcpy(*bare, *path, strlen(*path) + 1);
    if (unescape(*path, 0) < 0 || unescape(*bare, 1) < 0 || unescape(*bare, 1) < 0) return -1;
    char *out = *bare;
    for (const char *in = *bare; *in; in++) {
        if (*in == ';') { /* to the segment's end */
            while (in[1] && in[1] != '/' && in[1] != '\\') in++;
            continue;
        }
        *out++ = *in == '\\' ? '/' : *in;
    }
    *out = '\0';
    remove_dots(*path, 0);
    remove_dots(*bare, 1);
    return 0;
}

/* Could parsers read text differently (libgit2's and libcurl's, a server's)? A
** backslash, a space or a control character, or two '@' before the path: such a URL is
** covered by no scoped net capability. */
static int url_ambiguous(const char *text)
{
    for (const unsigned char *p = (const unsigned char *)text; *p; p++)
        if (*p <= ' ' || *p == 0x7f || *p == '\\') return 1;
    const char *auth = strstr(text, "://");
    auth = auth ? auth + 3 : text;
    const char *at = strchr(auth, '@'), *slash = strchr(auth, '/');
    return at && strchr(at + 1, '@') && (slash == NULL || strchr(at + 1, '@') < slash);
}

/* Reads text into u: a URL (as hrun_urlparse reads it), or "unix:/abs/path", a socket
** (its path made absolute and its symlinks resolved, as fs paths are). -1 when it is
** neither, or ambiguous. */
static int url_parse(const char *text, Url *u)
{
    memset(u, 0, sizeof *u);
    if (strncmp(text, "unix:", 5) == 0 && strstr(text, "://") == NULL) {
        if (text[5] == '\0') return -1;
        char norm[PATH_MAX];
        if (hrun_normpath(text + 5, NULL, norm, sizeof norm) < 0) return -1;
        return (u->sock = strdup(norm)) ? 0 : -1;
    }
    if (url_ambiguous(text)) return -1;
    CURLU *h = hrun_urlparse(text, NULL);
    if (h == NULL) return -1;
    char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL;
    int ok = curl_url_get(h, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
             curl_url_get(h, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
             curl_url_get(h, CURLUPART_PATH, &path, 0) == CURLUE_OK;
    if (ok && curl_url_get(h, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK) port = NULL;
    if (ok) {
        u->scheme = strdup(scheme), u->host = strdup(host), u->port = strdup(port ? port : "");
        ok = u->scheme && u->host && u->port && url_paths(path, &u->path, &u->bare) == 0;
    }
    curl_free(scheme), curl_free(host), curl_free(port), curl_free(path);
    curl_url_cleanup(h);
    if (!ok) url_free(u);
    return ok ? 0 : -1;
}

/* Is path within the scope's path sp at a '/' (sp's trailing slashes aside)? */
static int urlpath_within(const char *path, const char *sp)
{
    size_t n = strlen(sp);
    while (n > 0 && sp[n - 1] == '/') n--;
    return strncmp(path, sp, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

/* A socket: the scope's path or below it. A URL: same scheme, host and port, and both
** forms of the path within the scope's. */
static int url_within(const Url *t, const Url *scope)
{
    if (t->sock || scope->sock) return t->sock && scope->sock && path_within(t->sock, scope->sock);
    if (strcasecmp(t->scheme, scope->scheme) || strcasecmp(t->host, scope->host) ||
        strcmp(t->port, scope->port))
        return 0;
    return urlpath_within(t->path, scope->path) && urlpath_within(t->bare, scope->bare);
}

/* }====================================================== */

/* {======================================================
** Declarations: "name" or "name:scope"
** ======================================================= */

static void cap_free(Cap *c)
{
    free(c->scope), free(c->found), free(c->text);
    url_free(&c->url);
}

/* Parses text into c; NULL, or why it is not a capability (a static or pushed string). */
static const char *cap_parse(lua_State *L, const char *text, Cap *c)
{
    memset(c, 0, sizeof *c);
    const char *colon = strchr(text, ':');
    size_t nlen = colon ? (size_t)(colon - text) : strlen(text);
    c->kind = cap_index(text, nlen);
    if (c->kind < 0) {
        const char *names[NCAPS + 1];
        for (size_t i = 0; i < NCAPS; i++) names[i] = known_caps[i].name;
        names[NCAPS] = NULL;
        lua_pushlstring(L, text, nlen);
        const char *near = hrun_nearest(lua_tostring(L, -1), names);
        lua_pop(L, 1);
        return lua_pushfstring(
            L,
            "unknown capability '%s'%s%s%s (known: fs, exec, btrfs, hash, nix, git, service, "
            "net, secrets)",
            text, near ? " (did you mean '" : "", near ? near : "", near ? "'?)" : "");
    }
    if (colon == NULL) return NULL;
    const char *scope = colon + 1;
    const char *name = known_caps[c->kind].name;
    if (*scope == '\0') return lua_pushfstring(L, "'%s': the scope after ':' is empty", text);
    switch (known_caps[c->kind].kind) {
    case SCOPE_PATH: {
        char norm[PATH_MAX];
        if (scope[0] != '/')
            return lua_pushfstring(L, "'%s': %s takes an absolute path (%s:/etc/nixos)", text, name,
                                   name);
        if (hrun_normpath(scope, NULL, norm, sizeof norm) < 0)
            return lua_pushfstring(L, "'%s': %s", text, strerror(errno));
        c->scope = strdup(norm);
        break;
    }
    case SCOPE_PROGRAM:
        if (strpbrk(scope, " \t\n") || (strchr(scope, '/') && scope[0] != '/'))
            return lua_pushfstring(
                L, "'%s': exec takes a program's name or absolute path (exec:pg_dumpall)", text);
        if (scope[0] == '/') {
            char norm[PATH_MAX];
            if (normprog(scope, NULL, norm, sizeof norm) < 0)
                return lua_pushfstring(L, "'%s': %s", text, strerror(errno));
            c->scope = strdup(norm);
        } else {
            c->scope = strdup(scope);
            c->found = lookup_program(scope);
        }
        break;
    case SCOPE_NAME:
        c->scope = strdup(scope);
        break;
    case SCOPE_URL:
        if (strncmp(scope, "unix:", 5) == 0 && strstr(scope, "://") == NULL) {
            if (scope[5] != '/' || url_parse(scope, &c->url) < 0)
                return lua_pushfstring(L,
                                       "'%s': net:unix takes a socket's absolute path "
                                       "(net:unix:/run/podman/podman.sock)",
                                       text);
        } else if (strstr(scope, "://") == NULL || url_parse(scope, &c->url) < 0) {
            return lua_pushfstring(L, "'%s': net takes a URL (net:https://ntfy.example)", text);
        }
        c->scope = strdup(scope);
        break;
    default:
        break;
    }
    if (c->scope == NULL) return "not enough memory";
    return NULL;
}

/* }====================================================== */

/* {======================================================
** The check
** ======================================================= */

/* A target as the sandbox compares it, into buf: a normalized path, a program, … */
static int target_text(const hrun_Target *t, enum scope_kind kind, char *buf, size_t size)
{
    if (kind == SCOPE_PATH) return hrun_normpath(t->value, t->base, buf, size);
    if (kind == SCOPE_PROGRAM && strchr(t->value, '/'))
        return normprog(t->value, t->base, buf, size);
    if ((size_t)snprintf(buf, size, "%s", t->value) >= size) return errno = ENAMETOOLONG, -1;
    return 0;
}

static int cap_covers(const Cap *c, const char *target, const Url *url)
{
    if (c->scope == NULL) return 1;
    switch (known_caps[c->kind].kind) {
    case SCOPE_PATH:
        return path_within(target, c->scope);
    case SCOPE_PROGRAM: {
        int abs_target = target[0] == '/', abs_scope = c->scope[0] == '/';
        if (abs_target == abs_scope) return strcmp(target, c->scope) == 0;
        if (abs_target) return c->found && strcmp(target, c->found) == 0;
        char *found = lookup_program(target); /* a name, the scope a path */
        int same = found && strcmp(found, c->scope) == 0;
        free(found);
        return same;
    }
    case SCOPE_NAME: {
        if (fnmatch(c->scope, target, 0) == 0) return 1;
        if (strchr(target, '.')) return 0;
        char unit[PATH_MAX + 16];
        if ((size_t)snprintf(unit, sizeof unit, "%s.service", target) >= sizeof unit) return 0;
        return fnmatch(c->scope, unit, 0) == 0;
    }
    case SCOPE_URL:
        return url && url_within(url, &c->url);
    default:
        return 0;
    }
}

/* [-0, +0, m] Notes in the registry's table that `need` ("fs:/etc/nixos/flake.nix",
** "service") was used by prim, and whether the declared capabilities cover it. */
static void record(lua_State *L, const char *prim, const char *cap, const char *need, int allowed)
{
    luaL_getsubtable(L, LUA_REGISTRYINDEX, USED_KEY);
    if (lua_getfield(L, -1, need) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_createtable(L, 0, 5);
        lua_pushstring(L, cap);
        lua_setfield(L, -2, "cap");
        lua_pushstring(L, need);
        lua_setfield(L, -2, "need");
        lua_pushstring(L, prim);
        lua_setfield(L, -2, "by");
        lua_pushboolean(L, allowed);
        lua_setfield(L, -2, "declared");
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, need);
    }
    lua_getfield(L, -1, "calls");
    lua_Integer n = lua_tointeger(L, -1);
    lua_pop(L, 1);
    lua_pushinteger(L, n + 1);
    lua_setfield(L, -2, "calls");
    lua_pop(L, 2);
}

/* [-0, +1, m] "fs:/etc/shadow" for what a call needs (the message names it). */
static const char *needed(lua_State *L, const char *cap, const char *target, const Url *url)
{
    if (target == NULL) return lua_pushstring(L, cap);
    if (url && url->sock) return lua_pushfstring(L, "%s:unix:%s", cap, url->sock);
    if (url) {
        const char *def = strcmp(url->scheme, "https") == 0  ? "443"
                          : strcmp(url->scheme, "http") == 0 ? "80"
                                                             : "";
        if (strcmp(url->port, def) == 0 || *url->port == '\0')
            return lua_pushfstring(L, "%s:%s://%s", cap, url->scheme, url->host);
        return lua_pushfstring(L, "%s:%s://%s:%s", cap, url->scheme, url->host, url->port);
    }
    return lua_pushfstring(L, "%s:%s", cap, target);
}

/* [-0, +1, m] The refusal of a call: which capability it needs, which are declared. */
static const char *refusal(lua_State *L, const hrun_Sandbox *sb, const char *prim, const char *need)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    lua_pushfstring(L, "sandbox: %s needs the capability '%s', which the playbook does not declare",
                    prim, need);
    luaL_addvalue(&b);
    luaL_addstring(&b, sb->n ? " (it declares: " : " (it declares none)");
    for (int i = 0; i < sb->n; i++) {
        if (i) luaL_addstring(&b, ", ");
        luaL_addstring(&b, sb->caps[i].text);
    }
    if (sb->n) luaL_addchar(&b, ')');
    luaL_pushresult(&b);
    return lua_tostring(L, -1);
}

/* [-0, +(0|1), v] Is one target of capability `cap` covered? Records it. A refusal
** (unless auditing) raises, at the caller's line; or, with raise = 0, is pushed and -1
** returned. */
static int check_one(lua_State *L, const hrun_Sandbox *sb, const char *prim, const char *cap,
                     const hrun_Target *t, int raise)
{
    int idx = cap_index(cap, strlen(cap));
    if (idx < 0) return luaL_error(L, "%s: unknown capability '%s' (a bug)", prim, cap);
    enum scope_kind kind = known_caps[idx].kind;
    char text[PATH_MAX];
    const char *target = NULL;
    Url url = {0}, *up = NULL;
    if (t) {
        if (target_text(t, kind, text, sizeof text) < 0)
            return luaL_error(L, "sandbox: %s: %s: %s", prim, t->value, strerror(errno));
        target = text;
        if (kind == SCOPE_URL) {
            if (url_parse(target, &url) == 0) up = &url;
        }
    }
    int ok = 0;
    for (int i = 0; i < sb->n && !ok; i++) {
        const Cap *c = &sb->caps[i];
        if (c->kind != idx) continue;
        if (t == NULL || (kind == SCOPE_URL && up == NULL))
            ok = c->scope == NULL || t == NULL;
        else
            ok = cap_covers(c, target, up);
    }
    const char *need = needed(L, cap, target, up);
    if (up) url_free(&url);
    if (sb->record) record(L, prim, cap, need, ok);
    if (!ok && sb->enforce) {
        refusal(L, sb, prim, need);
        lua_remove(L, -2);
        if (!raise) return -1;
        luaL_where(L, 1);
        lua_insert(L, -2);
        lua_concat(L, 2);
        return lua_error(L);
    }
    lua_pop(L, 1);
    return ok;
}

int hrun_sandbox_mode(lua_State *L)
{
    hrun_Runtime *rt = hrun_runtime(L);
    if (rt->sandbox == NULL || rt->trusted > 0) return 0;
    return rt->sandbox->enforce ? 2 : 1;
}

int hrun_sandbox_allows(lua_State *L, const char *what, const char *cap, const char *target)
{
    hrun_Runtime *rt = hrun_runtime(L);
    hrun_Target t = {NULL, target, NULL};
    if (rt->sandbox == NULL || rt->trusted > 0) return 1;
    luaL_checkstack(L, 8, "sandbox");
    return check_one(L, rt->sandbox, what, cap, &t, 0) >= 0;
}

void hrun_sandbox_check(lua_State *L, const hrun_Prim *p, const char *fullname)
{
    hrun_Runtime *rt = hrun_runtime(L);
    const hrun_Sandbox *sb = rt->sandbox;
    hrun_Target t[HRUN_MAXTARGETS];
    int top = lua_gettop(L);
    luaL_checkstack(L, 2 * HRUN_MAXTARGETS + 8, "sandbox");
    int n = p->targets ? p->targets(L, t) : 0;
    if (n == 0) {
        check_one(L, sb, fullname, p->cap, NULL, 1);
    } else {
        for (int i = 0; i < n; i++)
            check_one(L, sb, fullname, t[i].cap ? t[i].cap : p->cap, t[i].value ? &t[i] : NULL, 1);
    }
    lua_settop(L, top);
}

/* }====================================================== */

/* {======================================================
** Targets: what a call touches, read from its arguments (never raises)
** ======================================================= */

static int add(lua_State *L, hrun_Target *t, int n, int idx, const char *cap)
{
    if (n >= HRUN_MAXTARGETS || lua_type(L, idx) != LUA_TSTRING) return n;
    t[n].cap = cap;
    t[n].value = lua_tostring(L, idx);
    t[n].base = NULL;
    return n + 1;
}

int hrun_targets_arg1(lua_State *L, hrun_Target *t)
{
    return add(L, t, 0, 1, NULL);
}

int hrun_targets_arg2(lua_State *L, hrun_Target *t)
{
    return add(L, t, 0, 2, NULL);
}

int hrun_targets_args12(lua_State *L, hrun_Target *t)
{
    return add(L, t, add(L, t, 0, 1, NULL), 2, NULL);
}

int hrun_targets_field(lua_State *L, int arg, const char *field, hrun_Target *t, int n,
                       const char *cap)
{
    if (lua_type(L, arg) != LUA_TTABLE) return n;
    lua_pushstring(L, field);
    lua_rawget(L, arg); /* anchored below the call's arguments until the check ends */
    if (lua_type(L, -1) != LUA_TSTRING) {
        lua_pop(L, 1);
        return n;
    }
    return add(L, t, n, lua_gettop(L), cap);
}

/* }====================================================== */

/* {======================================================
** The private library: priv.sandbox, priv.trusted, priv.allowed, priv.capsused,
** priv.capability
** ======================================================= */

static void sandbox_free(hrun_Sandbox *sb)
{
    if (sb == NULL) return;
    for (int i = 0; i < sb->n; i++) cap_free(&sb->caps[i]);
    free(sb);
}

void hrun_sandbox_close(hrun_Runtime *rt)
{
    sandbox_free(rt->sandbox);
    rt->sandbox = NULL;
}

/* sandbox({"fs:/etc", …} [, enforce = true, record = not enforce]) | sandbox(nil): sets or
** lifts the sandbox; raises for a malformed capability. Setting one starts a new record
** of what is used (when it records: plans). */
static int priv_sandbox(lua_State *L)
{
    hrun_Runtime *rt = hrun_runtime(L);
    if (lua_isnoneornil(L, 1)) {
        hrun_sandbox_close(rt);
        return 0;
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    int enforce = lua_isnone(L, 2) || lua_toboolean(L, 2);
    lua_Integer n = luaL_len(L, 1);
    hrun_Sandbox *sb = calloc(1, sizeof *sb + sizeof(Cap) * (size_t)n);
    if (sb == NULL) return luaL_error(L, "not enough memory");
    sb->enforce = enforce;
    sb->record = lua_isnone(L, 3) ? !enforce : lua_toboolean(L, 3);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 1, i);
        const char *text = lua_tostring(L, -1);
        const char *err = text ? cap_parse(L, text, &sb->caps[sb->n]) : "not a string";
        if (err == NULL && (sb->caps[sb->n].text = strdup(text)) == NULL) err = "not enough memory";
        if (err) {
            lua_pushstring(L, err);
            cap_free(&sb->caps[sb->n]);
            sandbox_free(sb);
            return lua_error(L);
        }
        sb->n++;
        lua_pop(L, 1);
    }
    hrun_sandbox_close(rt);
    rt->sandbox = sb;
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, USED_KEY);
    return 0;
}

/* capability(text) → true | nil, why: is text a well-formed capability? */
static int priv_capability(lua_State *L)
{
    Cap c;
    const char *err = cap_parse(L, luaL_checkstring(L, 1), &c);
    cap_free(&c);
    if (err) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* trusted(fn, ...) → fn's results: runs the engine's own work (undo operations from
** the journal, a plan's scratch copy) outside the sandbox. */
static int trusted_done(lua_State *L, int status, lua_KContext ctx)
{
    (void)ctx;
    hrun_runtime(L)->trusted--;
    if (status != LUA_OK && status != LUA_YIELD) return lua_error(L);
    return lua_gettop(L);
}

static int priv_trusted(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    hrun_runtime(L)->trusted++;
    int status = lua_pcallk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, 0, trusted_done);
    return trusted_done(L, status, 0);
}

/* allowed(what, cap, target) → true | nil, the refusal: may the playbook's `what`
** (io.open) touch target? */
static int priv_allowed(lua_State *L)
{
    const char *what = luaL_checkstring(L, 1);
    const char *cap = luaL_checkstring(L, 2);
    const char *target = luaL_checkstring(L, 3);
    if (cap_index(cap, strlen(cap)) < 0) return luaL_argerror(L, 2, "unknown capability");
    if (!hrun_sandbox_allows(L, what, cap, target)) {
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* capsused() → {{cap, target, by, declared, calls}, …} since the sandbox was set */
static int priv_capsused(lua_State *L)
{
    lua_newtable(L);
    if (lua_getfield(L, LUA_REGISTRYINDEX, USED_KEY) != LUA_TTABLE) {
        lua_pop(L, 1);
        return 1;
    }
    lua_Integer n = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_rawseti(L, -4, ++n);
    }
    lua_pop(L, 1);
    return 1;
}

/* normpath(path) → the path absolute, clean, its existing part's symlinks resolved | nil */
static int priv_normpath(lua_State *L)
{
    char out[PATH_MAX];
    if (hrun_normpath(luaL_checkstring(L, 1), NULL, out, sizeof out) < 0) return 0;
    lua_pushstring(L, out);
    return 1;
}

/* Is uid one root may trust: root's own, or the user who ran sudo? */
static int trusted_uid(uid_t uid)
{
    const char *sudo = getenv("SUDO_UID");
    return uid == 0 || (sudo && *sudo && strtoul(sudo, NULL, 10) == (unsigned long)uid);
}

/* [-0, +1, m] Why st (of path, a file or a directory on its way) is not to be trusted,
** or NULL. */
static const char *distrust(lua_State *L, const char *path, const struct stat *st, int dir)
{
    const char *what = dir ? "the directory " : "";
    if (!trusted_uid(st->st_uid)) {
        struct passwd *pw = getpwuid(st->st_uid);
        return lua_pushfstring(L,
                               "%s%s is owned by %s (uid %d), not by root: that user could change "
                               "what runs as root",
                               what, path, pw ? pw->pw_name : "another user", (int)st->st_uid);
    }
    int open = st->st_mode & (S_IWGRP | S_IWOTH);
    if (open && !(dir && (st->st_mode & S_ISVTX))) {
        struct group *gr = getgrgid(st->st_gid);
        char mode[8];
        snprintf(mode, sizeof mode, "%04o", (unsigned)(st->st_mode & 07777));
        if (st->st_mode & S_IWOTH)
            return lua_pushfstring(L, "%s%s is writable by everyone (mode %s): chmod o-w %s", what,
                                   path, mode, path);
        return lua_pushfstring(L, "%s%s is writable by the group %s (mode %s): chmod g-w %s", what,
                               path, gr ? gr->gr_name : "?", mode, path);
    }
    return NULL;
}

/* untrusted(path) → nil | why root must not run it: as root, a playbook or params file
** that someone else could have changed (as sudo and sshd refuse theirs). */
static int priv_untrusted(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    char real[PATH_MAX];
    struct stat st;
    if (geteuid() != 0 || realpath(path, real) == NULL || stat(real, &st) < 0) return 0;
    if (distrust(L, real, &st, 0)) return 1;
    for (char *slash = strrchr(real, '/'); slash; slash = strrchr(real, '/')) {
        int top = slash == real;
        slash[top] = '\0'; /* "/a/b" → "/a"; "/a" → "/" */
        if (stat(real, &st) == 0 && distrust(L, real, &st, 1)) return 1;
        if (top) break;
    }
    return 0;
}

/* securedir(dir) → true | nil, why: the state directory is hrun's alone — owned by the
** effective user, mode 0700 (tightened when it is looser: the journal holds arguments
** and outputs, the stash the bytes writes replaced) */
static int priv_securedir(lua_State *L)
{
    const char *dir = luaL_checkstring(L, 1);
    struct stat st;
    if (stat(dir, &st) < 0) return hrun_fail(L, "state directory", dir, errno);
    if (!S_ISDIR(st.st_mode)) return hrun_fail(L, "state directory", dir, ENOTDIR);
    if (st.st_uid != geteuid())
        return hrun_failf(L, "EPERM",
                          "state directory %s is owned by uid %d, not by this user (%d)", dir,
                          (int)st.st_uid, (int)geteuid());
    if ((st.st_mode & 077) && chmod(dir, st.st_mode & 07700) < 0)
        return hrun_fail(L, "state directory", dir, errno);
    lua_pushboolean(L, 1);
    return 1;
}

void hrun_opensandbox(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"sandbox", priv_sandbox},     {"capability", priv_capability}, {"trusted", priv_trusted},
        {"allowed", priv_allowed},     {"capsused", priv_capsused},     {"normpath", priv_normpath},
        {"untrusted", priv_untrusted}, {"securedir", priv_securedir},   {NULL, NULL},
    };
    luaL_setfuncs(L, funcs, 0);
}

/* }====================================================== */
