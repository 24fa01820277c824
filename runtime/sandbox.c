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
**
** The portable build (HRUN_PORTABLE) has no libcurl, whose URL parser is the one both the
** check and a request use: there a net capability scoped to a URL is refused as it is
** declared (net, and net:unix:/path, are kept), and a URL target is covered only by net.
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

#ifndef HRUN_PORTABLE
#include <curl/curl.h>
#endif

#include "internal.h"

#define USED_KEY "hrun.capsused"

#ifdef HRUN_PORTABLE
#define HRUN_PORTABLE_NOURL 1
#else
#define HRUN_PORTABLE_NOURL 0
#endif

/* How a capability's scope is read and matched. */
enum scope_kind { SCOPE_NONE, SCOPE_PATH, SCOPE_PROGRAM, SCOPE_NAME, SCOPE_URL, SCOPE_ENV };

static const struct {
    const char *name;
    enum scope_kind kind;
} known_caps[] = {
    {"fs", SCOPE_PATH},  {"btrfs", SCOPE_PATH},   {"hash", SCOPE_PATH},    {"git", SCOPE_PATH},
    {"nix", SCOPE_PATH}, {"secrets", SCOPE_PATH}, {"exec", SCOPE_PROGRAM}, {"service", SCOPE_NAME},
    {"net", SCOPE_URL},  {"env", SCOPE_ENV},
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
    char *host;  /* another host's capabilities ("fs@old:/DATA"), or NULL: this one's */
    int lexical; /* another host's, checked here: its paths taken as written (hrun_lexpath) */
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
** Paths: absolute, walked as the kernel walks them, symlinks followed where they stand
** ======================================================= */

/* The component of path up to the next '/' (or its end) at *p; advances *p past it. */
static size_t next_component(const char **p, const char **comp)
{
    while (**p == '/') (*p)++;
    *comp = *p;
    size_t len = strcspn(*p, "/");
    *p += len;
    return len;
}

/*
** Where the absolute path would land, as the kernel walks it: each existing component's
** symlink followed where it stands (so ".." after a symlink to a directory goes up from
** where the link points, not from the link), a dangling link followed to where its
** target would be created; from the first component that does not exist on, the rest
** is taken lexically (as mkdir -p would create it: real directories), until ".." climbs
** back into what exists.
*/
static int resolve(const char *path, char *out, size_t size)
{
    char todo[PATH_MAX * 2], tmp[PATH_MAX * 2], cur[PATH_MAX], link[PATH_MAX];
    size_t len = 0;          /* of cur: "" is "/" */
    int links = 0, made = 0; /* made: components of cur past what exists */
    if ((size_t)snprintf(todo, sizeof todo, "%s", path) >= sizeof todo)
        return errno = ENAMETOOLONG, -1;
    const char *p = todo;
    cur[0] = '\0';
    for (;;) {
        const char *comp;
        size_t n = next_component(&p, &comp);
        if (n == 0) break;
        if (n == 1 && comp[0] == '.') continue;
        if (n == 2 && comp[0] == '.' && comp[1] == '.') {
            while (len > 0 && cur[--len] != '/') {
            }
            cur[len] = '\0';
            if (made > 0) made--;
            continue;
        }
        if (len + 1 + n >= sizeof cur) return errno = ENAMETOOLONG, -1;
        size_t before = len;
        cur[len++] = '/';
        memcpy(cur + len, comp, n);
        len += n;
        cur[len] = '\0';
        if (made > 0) {
            made++;
            continue;
        }
        struct stat st;
        if (lstat(cur, &st) < 0) {
            made = 1; /* ENOENT, ENOTDIR, EACCES: taken as it is written from here */
            continue;
        }
        if (!S_ISLNK(st.st_mode)) continue;
        if (++links > 40) return errno = ELOOP, -1;
        ssize_t ln = readlink(cur, link, sizeof link - 1);
        if (ln < 0) return -1;
        link[ln] = '\0';
        /* the link's target, then what was left of the path */
        if ((size_t)snprintf(tmp, sizeof tmp, "%s/%s", link, p) >= sizeof tmp)
            return errno = ENAMETOOLONG, -1;
        memcpy(todo, tmp, strlen(tmp) + 1);
        p = todo;
        len = link[0] == '/' ? 0 : before;
        cur[len] = '\0';
    }
    if ((size_t)snprintf(out, size, "%s", len ? cur : "/") >= size) return errno = ENAMETOOLONG, -1;
    return 0;
}

/* path made absolute (relative to base, itself relative to the working directory) into
** buf, as it is written. */
static int absolute(const char *path, const char *base, char *buf, size_t size)
{
    char cwd[PATH_MAX];
    int n;
    if (path[0] == '/')
        n = snprintf(buf, size, "%s", path);
    else if (base && base[0] == '/')
        n = snprintf(buf, size, "%s/%s", base, path);
    else if (getcwd(cwd, sizeof cwd) == NULL)
        return -1;
    else if (base)
        n = snprintf(buf, size, "%s/%s/%s", cwd, base, path);
    else
        n = snprintf(buf, size, "%s/%s", cwd, path);
    if (n < 0 || (size_t)n >= size) return errno = ENAMETOOLONG, -1;
    return 0;
}

int hrun_normpath(const char *path, const char *base, char *out, size_t size)
{
    char buf[PATH_MAX];
    if (absolute(path, base, buf, sizeof buf) < 0) return -1;
    return resolve(buf, out, size);
}

/* The absolute path as written, cleaned lexically (hrun_abspath): another host's path
** checked on this machine, whose symlinks say nothing of that host's (its agent checks
** again where they are). Relative to base, or to "/". */
static int lexpath(const char *path, const char *base, char *out, size_t size)
{
    char buf[PATH_MAX * 2];
    if (path[0] == '/') return hrun_abspath(path, out, size);
    int n = snprintf(buf, sizeof buf, "%s/%s", base && base[0] == '/' ? base : "", path);
    if (n < 0 || (size_t)n >= sizeof buf) return errno = ENAMETOOLONG, -1;
    return hrun_abspath(buf, out, size);
}

/* A program's path: as hrun_normpath, but the last component (a symlink to pg_wrapper,
** busybox, …) is kept as it is — its name is which program runs. */
static int normprog(const char *path, const char *base, char *out, size_t size)
{
    char abs[PATH_MAX], dir[PATH_MAX];
    if (absolute(path, base, abs, sizeof abs) < 0) return -1;
    size_t end = strlen(abs);
    while (end > 1 && abs[end - 1] == '/') abs[--end] = '\0';
    char *slash = strrchr(abs, '/');
    const char *name = slash + 1;
    if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) return resolve(abs, out, size);
    *slash = '\0';
    if (resolve(*abs ? abs : "/", dir, sizeof dir) < 0) return -1;
    int n = snprintf(out, size, "%s/%s", strcmp(dir, "/") == 0 ? "" : dir, name);
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

#ifndef HRUN_PORTABLE
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
#endif

static void url_free(Url *u)
{
    free(u->scheme), free(u->host), free(u->port), free(u->path), free(u->bare), free(u->sock);
    memset(u, 0, sizeof *u);
}

#ifndef HRUN_PORTABLE /* the URL parser's helpers */
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
#endif

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
#ifdef HRUN_PORTABLE
    return -1; /* no URL parser without libcurl: covered by no scoped capability */
#else
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
#endif
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
static const char *cap_parse(lua_State *L, const char *text, Cap *c, int lexical)
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
            "net, secrets, env)",
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
        if ((lexical ? lexpath(scope, NULL, norm, sizeof norm)
                     : hrun_normpath(scope, NULL, norm, sizeof norm)) < 0)
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
            if ((lexical ? lexpath(scope, NULL, norm, sizeof norm)
                         : normprog(scope, NULL, norm, sizeof norm)) < 0)
                return lua_pushfstring(L, "'%s': %s", text, strerror(errno));
            c->scope = strdup(norm);
        } else {
            c->scope = strdup(scope);
            c->found = lexical ? NULL : lookup_program(scope); /* this machine's PATH */
        }
        break;
    case SCOPE_NAME:
        c->scope = strdup(scope);
        break;
    case SCOPE_ENV:
        if (strpbrk(scope, "= \t\n"))
            return lua_pushfstring(
                L, "'%s': env takes a variable's name or a glob of names (env:PGPASSWORD)", text);
        c->scope = strdup(scope);
        break;
    case SCOPE_URL:
        if (strncmp(scope, "unix:", 5) == 0 && strstr(scope, "://") == NULL) {
            if (scope[5] != '/' || url_parse(scope, &c->url) < 0)
                return lua_pushfstring(L,
                                       "'%s': net:unix takes a socket's absolute path "
                                       "(net:unix:/run/podman/podman.sock)",
                                       text);
        } else if (HRUN_PORTABLE_NOURL) {
            return lua_pushfstring(L,
                                   "'%s': a net capability scoped to a URL is not in the "
                                   "portable build of hrun (it has no libcurl): declare net, "
                                   "or check the playbook on the controller",
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
** Environment variables no sandboxed playbook may set, declared or not: each turns a
** program the playbook may run into any code (or reads code from where it says)
** ======================================================= */

/* Families: names (a trailing '*' is a prefix), compared without case (npm reads
** npm_config_* and NPM_CONFIG_* alike), and why. */
static const struct {
    const char *names;
    const char *why;
} forbidden_env[] = {
    {"LD_* GCONV_PATH GETCONF_DIR GLIBC_TUNABLES HOSTALIASES LOCALDOMAIN LOCPATH MALLOC_* "
     "NIS_PATH NLSPATH RESOLV_HOST_CONF RES_OPTIONS TMPDIR TZDIR",
     "the dynamic loader and the C library load code, or read files, that it names (glibc "
     "drops it before running a setuid program)"},
    {"PATH", "the program finds the programs it runs there (hrun's own PATH finds argv[1], not "
             "what that program runs)"},
    {"BASH_* ENV SHELLOPTS PS1 PS2 PS3 PS4 PROMPT_COMMAND IFS ZDOTDIR FPATH SHELL",
     "a shell runs code it names: a startup file, exported functions (BASH_FUNC_*), a prompt "
     "expanded under xtrace, the shell other programs start"},
    {"PERL*", "perl loads the modules and runs the code it names (PERL5OPT=-M…)"},
    {"PYTHON*", "python imports and runs the code it names (PYTHONPATH, PYTHONSTARTUP, "
                "PYTHONWARNINGS, PYTHONBREAKPOINT)"},
    {"RUBY* GEM_* BUNDLE_*", "ruby loads the libraries and gems it names (RUBYOPT=-r…)"},
    {"NODE_* NPM_CONFIG_*", "node and npm load the modules and run the scripts it names "
                            "(NODE_OPTIONS=--require …)"},
    {"LUA_*", "lua runs it (LUA_INIT) or loads modules from where it says"},
    {"JAVA_TOOL_OPTIONS _JAVA_OPTIONS JDK_JAVA_OPTIONS CLASSPATH TCLLIBPATH PHPRC "
     "PHP_INI_SCAN_DIR R_PROFILE R_PROFILE_USER",
     "the interpreter loads agents, classes or startup code from where it says"},
    {"CC CXX CPP LD AR AS MAKE MAKEFLAGS MFLAGS GNUMAKEFLAGS MAKEFILES CARGO_* RUSTC "
     "RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER GOFLAGS GOTOOLCHAIN GOROOT GOENV",
     "a build tool runs the compiler, makefiles or wrapper it names"},
    {"GIT_*", "git runs the commands, hooks and configuration it names (GIT_SSH_COMMAND, "
              "GIT_CONFIG_*, GIT_DIR, GIT_EXEC_PATH)"},
    {"SSH_ASKPASS SSH_ASKPASS_REQUIRE SUDO_ASKPASS EDITOR VISUAL SUDO_EDITOR PAGER MANPAGER "
     "BROWSER LESS LESSOPEN LESSCLOSE LESSKEY LESSKEYIN SYSTEMD_PAGER SYSTEMD_EDITOR "
     "SYSTEMD_LESS PSQL*",
     "the program runs the helper, editor or pager it names (or psql its \\! commands)"},
    {"HOME XDG_CONFIG_HOME XDG_CONFIG_DIRS CURL_HOME WGETRC GNUPGHOME",
     "programs read their configuration from there, and configuration runs commands "
     "(~/.gitconfig's core.pager, ~/.psqlrc, ~/.ssh/config's ProxyCommand)"},
    {"OPENSSL_CONF OPENSSL_ENGINES OPENSSL_MODULES GIO_EXTRA_MODULES GIO_MODULE_DIR "
     "GTK_MODULES GTK_PATH GST_PLUGIN_PATH GST_PLUGIN_SYSTEM_PATH QT_PLUGIN_PATH SASL_PATH",
     "a library loads the plugins (shared objects) it names"},
    {"NIX_* NIXOS_CONFIG", "nix takes its configuration (post-build-hook, substituters), its "
                           "search path and what nixos-rebuild builds from it"},
};

/* Why a sandboxed playbook may never set the variable name, or NULL. */
static const char *env_forbidden(const char *name)
{
    for (size_t i = 0; i < sizeof forbidden_env / sizeof forbidden_env[0]; i++) {
        const char *p = forbidden_env[i].names;
        while (*p) {
            size_t len = strcspn(p, " ");
            int prefix = p[len - 1] == '*';
            size_t n = prefix ? len - 1 : len;
            if (strncasecmp(name, p, n) == 0 && (prefix || name[n] == '\0'))
                return forbidden_env[i].why;
            p += len;
            while (*p == ' ') p++;
        }
    }
    return NULL;
}

/* }====================================================== */

/* {======================================================
** The check
** ======================================================= */

/* A target as the sandbox compares it, into buf: a normalized path, a program, … */
static int target_text(const hrun_Target *t, enum scope_kind kind, int lexical, char *buf,
                       size_t size)
{
    if ((kind == SCOPE_PATH || (kind == SCOPE_PROGRAM && strchr(t->value, '/'))) && lexical)
        return lexpath(t->value, t->base, buf, size);
    if (kind == SCOPE_PATH) return hrun_normpath(t->value, t->base, buf, size);
    if (kind == SCOPE_PROGRAM && strchr(t->value, '/'))
        return normprog(t->value, t->base, buf, size);
    if ((size_t)snprintf(buf, size, "%s", t->value) >= size) return errno = ENAMETOOLONG, -1;
    return 0;
}

static int cap_covers(const Cap *c, const char *target, const Url *url, int lexical)
{
    if (c->scope == NULL) return 1;
    switch (known_caps[c->kind].kind) {
    case SCOPE_PATH:
        return path_within(target, c->scope);
    case SCOPE_PROGRAM: {
        int abs_target = target[0] == '/', abs_scope = c->scope[0] == '/';
        if (abs_target == abs_scope) return strcmp(target, c->scope) == 0;
        if (lexical) { /* that host's PATH is not known here: the same name passes */
            const char *a = abs_target ? target : c->scope, *name = abs_target ? c->scope : target;
            return strcmp(strrchr(a, '/') + 1, name) == 0;
        }
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
    case SCOPE_ENV:
        return fnmatch(c->scope, target, 0) == 0;
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

/* [-0, +1, m] "fs:/etc/shadow" for what a call needs (the message names it); on another
** host "fs@old:/DATA/x". */
static const char *needed(lua_State *L, const char *host, const char *cap, const char *target,
                          const Url *url)
{
    if (host) {
        const char *capx = lua_pushfstring(L, "%s@%s", cap, host);
        needed(L, NULL, capx, target, url);
        lua_remove(L, -2);
        return lua_tostring(L, -1);
    }
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
    if (sb->host) { /* need: fs@old:/DATA/x */
        lua_pushfstring(
            L,
            "sandbox: %s on host '%s' needs the capability '%s', which the playbook does not "
            "declare",
            prim, sb->host, need);
    } else {
        lua_pushfstring(
            L, "sandbox: %s needs the capability '%s', which the playbook does not declare", prim,
            need);
    }
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

int hrun_cap_paths(const char *cap)
{
    int idx = cap ? cap_index(cap, strlen(cap)) : -1;
    return idx >= 0 && known_caps[idx].kind == SCOPE_PATH;
}

#define OWN_KEY "hrun.sandbox.own"

/* [-0, +0, m] Is path within one of hrun's own directories (priv.setown: its state, a
** host's agent directory)? Why not, or NULL. No capability covers them: a playbook that
** wrote there could forge what hrun runs trusted (an inverse, the agent's program). */
static const char *own_path(lua_State *L, const char *path)
{
    const char *why = NULL;
    if (lua_getfield(L, LUA_REGISTRYINDEX, OWN_KEY) == LUA_TTABLE) {
        lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
        for (lua_Integer i = 1; i <= n && !why; i++) {
            if (lua_rawgeti(L, -1, i) == LUA_TSTRING && path_within(path, lua_tostring(L, -1)))
                why = "it is hrun's own (its journal, its agent, what undo restores)";
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    return why;
}

/* setown({dir, …} | nil): hrun's own directories, refused to every sandboxed call */
static int priv_setown(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) {
        lua_pushnil(L);
        lua_setfield(L, LUA_REGISTRYINDEX, OWN_KEY);
        return 0;
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
    lua_createtable(L, (int)n, 0);
    for (lua_Integer i = 1; i <= n; i++) {
        char norm[PATH_MAX];
        lua_rawgeti(L, 1, i);
        const char *dir = lua_tostring(L, -1);
        if (dir == NULL || hrun_normpath(dir, NULL, norm, sizeof norm) < 0)
            return luaL_error(L, "setown: %s: not a path", dir ? dir : "?");
        lua_pop(L, 1);
        lua_pushstring(L, norm);
        lua_rawseti(L, -2, i);
    }
    lua_setfield(L, LUA_REGISTRYINDEX, OWN_KEY);
    return 0;
}

/* [-0, +(0|1), v] Is one target of capability `cap` covered? Records it (one covered
** only when record_ok). A refusal (unless auditing) raises, at the caller's line; or,
** with raise = 0, is pushed and -1 returned. */
static int check_one(lua_State *L, const hrun_Sandbox *sb, const char *prim, const char *cap,
                     const hrun_Target *t, int raise, int record_ok)
{
    int idx = cap_index(cap, strlen(cap));
    if (idx < 0) return luaL_error(L, "%s: unknown capability '%s' (a bug)", prim, cap);
    enum scope_kind kind = known_caps[idx].kind;
    char text[PATH_MAX];
    const char *target = NULL;
    Url url = {0}, *up = NULL;
    if (t) {
        if (target_text(t, kind, sb->lexical, text, sizeof text) < 0)
            return luaL_error(L, "sandbox: %s: %s: %s", prim, t->value, strerror(errno));
        target = text;
        if (kind == SCOPE_URL) {
            if (url_parse(target, &url) == 0) up = &url;
        }
    }
    int ok = 0;
    const char *never = t && t->set && kind == SCOPE_ENV ? env_forbidden(target) : NULL;
    hrun_Runtime *rt = hrun_runtime(L);
    if (t && kind == SCOPE_PATH && rt->undo_check && rt->stash_dir) {
        char stash[PATH_MAX]; /* where an inverse keeps what its write destroyed: hrun's own */
        ok = hrun_normpath(rt->stash_dir, NULL, stash, sizeof stash) == 0 &&
             path_within(target, stash);
    }
    if (t && kind == SCOPE_PATH && !ok && !sb->lexical) never = own_path(L, target);
    for (int i = 0; i < sb->n && !ok && !never; i++) {
        const Cap *c = &sb->caps[i];
        if (c->kind != idx) continue;
        if (t == NULL || (kind == SCOPE_URL && up == NULL))
            ok = c->scope == NULL || t == NULL;
        else
            ok = cap_covers(c, target, up, sb->lexical);
    }
    const char *need = needed(L, sb->host, cap, target, up);
    if (up) url_free(&url);
    if (sb->record && (record_ok || !ok)) record(L, prim, cap, need, ok);
    if (!ok && sb->enforce) {
        if (never)
            lua_pushfstring(L,
                            "sandbox: %s needs the capability '%s', which no sandboxed playbook "
                            "may use, declared or not: %s",
                            prim, need, never);
        else
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
    hrun_Target t = {NULL, target, NULL, 0, 0};
    if (rt->sandbox == NULL || rt->trusted > 0) return 1;
    luaL_checkstack(L, 8, "sandbox");
    return check_one(L, rt->sandbox, what, cap, &t, 0, 1) >= 0;
}

void hrun_sandbox_check(lua_State *L, const hrun_Prim *p, const char *fullname)
{
    hrun_Runtime *rt = hrun_runtime(L);
    const hrun_Sandbox *sb = rt->sandbox;
    hrun_Target t[HRUN_MAXTARGETS];
    int top = lua_gettop(L);
    luaL_checkstack(L, 2 * HRUN_MAXTARGETS + 8, "sandbox");
    memset(t, 0, sizeof t);
    int n = p->targets ? p->targets(L, t) : 0;
    if (n == 0) {
        check_one(L, sb, fullname, p->cap, NULL, 1, 1);
        lua_settop(L, top);
        return;
    }
    for (int i = 0; i < n; i++) {
        const char *cap = t[i].cap ? t[i].cap : p->cap;
        if (t[i].list == 0) {
            check_one(L, sb, fullname, cap, t[i].value ? &t[i] : NULL, 1, 1);
            continue;
        }
        lua_Integer len = (lua_Integer)lua_rawlen(L, t[i].list);
        for (lua_Integer j = 1; j <= len; j++) {
            if (lua_rawgeti(L, t[i].list, j) == LUA_TSTRING) {
                hrun_Target one = {cap, lua_tostring(L, -1), t[i].base, 0, t[i].set};
                check_one(L, sb, fullname, cap, &one, 1, 1);
            }
            lua_pop(L, 1);
        }
    }
    lua_settop(L, top);
}

void hrun_sandbox_require(lua_State *L, const char *prim, const hrun_Target *t)
{
    hrun_Runtime *rt = hrun_runtime(L);
    if (rt->sandbox == NULL || rt->trusted > 0) return;
    luaL_checkstack(L, 8, "sandbox");
    check_one(L, rt->sandbox, prim, t->cap, t, 1, 0);
}

/* }====================================================== */

/* {======================================================
** Targets: what a call touches, read from its arguments (never raises)
** ======================================================= */

static int add(lua_State *L, hrun_Target *t, int n, int idx, const char *cap)
{
    if (n >= HRUN_MAXTARGETS || lua_type(L, idx) != LUA_TSTRING) return n;
    t[n] = (hrun_Target){cap, lua_tostring(L, idx), NULL, 0, 0};
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
    free(sb->host);
    free(sb);
}

void hrun_sandbox_close(hrun_Runtime *rt)
{
    sandbox_free(rt->sandbox);
    rt->sandbox = NULL;
}

/* sandbox({"fs:/etc", …} [, enforce = true, record = not enforce [, host [, lexical]]]) |
** sandbox(nil): sets or lifts the sandbox; raises for a malformed capability. Setting one
** starts a new record of what is used (when it records: plans). With host, the
** capabilities are that host's, written with it ("fs@old:/DATA") and refusals name it;
** lexical: checked on this machine, paths as written (the host's agent resolves them). */
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
    sb->record = lua_isnoneornil(L, 3) ? !enforce : lua_toboolean(L, 3);
    const char *host = luaL_optstring(L, 4, NULL);
    sb->lexical = host != NULL && lua_toboolean(L, 5);
    if (host && (sb->host = strdup(host)) == NULL) {
        sandbox_free(sb);
        return luaL_error(L, "not enough memory");
    }
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 1, i);
        const char *text = lua_tostring(L, -1), *parsed = text;
        if (text && host) { /* "fs@old:/DATA" is parsed as "fs:/DATA" */
            size_t hl = strlen(host), cl = strcspn(text, "@:");
            if (text[cl] != '@' || strncmp(text + cl + 1, host, hl) != 0 ||
                (text[cl + 1 + hl] != ':' && text[cl + 1 + hl] != '\0')) {
                sandbox_free(sb);
                return luaL_error(L, "%s: not a capability of host '%s'", text, host);
            }
            lua_pushlstring(L, text, cl);
            lua_pushstring(L, text + cl + 1 + hl);
            lua_concat(L, 2);
            parsed = lua_tostring(L, -1);
        }
        const char *err =
            text ? cap_parse(L, parsed, &sb->caps[sb->n], sb->lexical) : "not a string";
        if (err == NULL && (sb->caps[sb->n].text = strdup(text)) == NULL) err = "not enough memory";
        if (err) {
            lua_pushstring(L, err);
            cap_free(&sb->caps[sb->n]);
            sandbox_free(sb);
            return lua_error(L);
        }
        sb->n++;
        lua_pop(L, parsed != text ? 2 : 1);
    }
    hrun_sandbox_close(rt);
    rt->sandbox = sb;
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, USED_KEY);
    return 0;
}

/* A sandbox set aside: the capabilities of another host, swapped in while a call goes
** to that host (a playbook's `fs@old:/DATA` is old's `fs:/DATA`). */
#define SANDBOX_BOX "hrun.sandbox.box"

static int box_gc(lua_State *L)
{
    hrun_Sandbox **box = luaL_checkudata(L, 1, SANDBOX_BOX);
    sandbox_free(*box);
    *box = NULL;
    return 0;
}

/* sandboxbox() → an empty box; sandboxswap(box): the sandbox in force and the box's
** trade places (swapped twice, each is back) */
static int priv_sandboxbox(lua_State *L)
{
    hrun_Sandbox **box = lua_newuserdatauv(L, sizeof *box, 0);
    *box = NULL;
    if (luaL_newmetatable(L, SANDBOX_BOX)) {
        lua_pushcfunction(L, box_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    return 1;
}

static int priv_sandboxswap(lua_State *L)
{
    hrun_Sandbox **box = luaL_checkudata(L, 1, SANDBOX_BOX);
    hrun_Runtime *rt = hrun_runtime(L);
    hrun_Sandbox *in_force = rt->sandbox;
    rt->sandbox = *box;
    *box = in_force;
    return 0;
}

/* capability(text) → true | nil, why: is text a well-formed capability? */
static int priv_capability(lua_State *L)
{
    Cap c;
    const char *err = cap_parse(L, luaL_checkstring(L, 1), &c, 0);
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
        {"sandbox", priv_sandbox},       {"capability", priv_capability},
        {"trusted", priv_trusted},       {"allowed", priv_allowed},
        {"capsused", priv_capsused},     {"normpath", priv_normpath},
        {"untrusted", priv_untrusted},   {"securedir", priv_securedir},
        {"sandboxbox", priv_sandboxbox}, {"sandboxswap", priv_sandboxswap},
        {"setown", priv_setown},         {NULL, NULL},
    };
    luaL_setfuncs(L, funcs, 0);
}

/* }====================================================== */
