/*
** mod_secrets.c — the `secrets` module: values that are passed, never shown.
**
** secrets.read(path | name) gives a secret: a userdata holding the bytes, which exec
** (argv, env, stdin), http (headers, body, json) and fs.write accept and which shows as
** "<secret>" everywhere else — tostring, json.encode, the journal, events, error
** messages. A name (no '/') is looked up as systemd's credentials ($CREDENTIALS_DIRECTORY)
** and agenix's (/run/agenix) keep them.  Every secret read is also known to the masker
** (hrun_mask) until hrun exits, which replaces its bytes wherever they turn up in text
** hrun shows or journals: a command that echoes its password does not put it in the
** journal.
*/
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define SECRET_TYPE "hrun.secret"
#define SHOWN       "<secret>"
/* The largest secret read from a file (a key, a token, a password file). */
#define MAX_SECRET (1 << 20)
/* Shorter secrets are not masked in text: they would blot out every "abc". */
#define MIN_MASKED 4
#define AGENIX_DIR "/run/agenix"

typedef struct Secret {
    struct Secret *next, **prev; /* the list of live secrets the masker reads */
    size_t len;
    char data[]; /* len bytes and a NUL */
} Secret;

static Secret *live;
/* Secrets collected: their bytes stay known to the masker until hrun exits, since the
** text that quotes one (a command's error, an event) may outlive the value. */
static Secret *retired;

static int secret_gc(lua_State *L)
{
    Secret *s = lua_touserdata(L, 1);
    if (s->prev) {
        *s->prev = s->next;
        if (s->next) s->next->prev = s->prev;
        s->prev = NULL;
        Secret *r = s->len >= MIN_MASKED ? malloc(sizeof *r + s->len + 1) : NULL;
        if (r) {
            r->len = s->len;
            memcpy(r->data, s->data, s->len + 1);
            r->next = retired;
            r->prev = NULL;
            retired = r;
        }
    }
    explicit_bzero(s->data, s->len);
    s->len = 0;
    return 0;
}

static int secret_tostring(lua_State *L)
{
    lua_pushliteral(L, SHOWN);
    return 1;
}

static int secret_concat(lua_State *L);

/* [-0, +1, m] A new secret of len bytes (filled by the caller), known to the masker. */
static Secret *secret_new(lua_State *L, size_t len)
{
    Secret *s = lua_newuserdatauv(L, sizeof(Secret) + len + 1, 0);
    s->len = len;
    s->data[len] = '\0';
    s->prev = NULL;
    s->next = NULL;
    if (luaL_newmetatable(L, SECRET_TYPE)) {
        static const luaL_Reg meta[] = {{"__gc", secret_gc},
                                        {"__tostring", secret_tostring},
                                        {"__concat", secret_concat},
                                        {NULL, NULL}};
        luaL_setfuncs(L, meta, 0);
        lua_pushliteral(L, SECRET_TYPE); /* getmetatable(secret) → "hrun.secret", locked */
        lua_setfield(L, -2, "__metatable");
    }
    lua_setmetatable(L, -2);
    s->next = live;
    if (live) live->prev = &s->next;
    s->prev = &live;
    live = s;
    return s;
}

const char *hrun_tosecret(lua_State *L, int idx, size_t *len)
{
    Secret *s = luaL_testudata(L, idx, SECRET_TYPE);
    if (s == NULL) return NULL;
    if (len) *len = s->len;
    return s->data;
}

const char *hrun_tobytes(lua_State *L, int idx, size_t *len)
{
    if (lua_type(L, idx) == LUA_TSTRING) return lua_tolstring(L, idx, len);
    return hrun_tosecret(L, idx, len);
}

const char *hrun_optbytes(lua_State *L, int arg, const char *field, size_t *len)
{
    if (lua_type(L, arg) != LUA_TTABLE) return NULL;
    lua_getfield(L, arg, field);
    const char *s = hrun_tobytes(L, -1, len);
    if (s == NULL && !lua_isnil(L, -1))
        luaL_argerror(L, arg,
                      lua_pushfstring(L, "field '%s': string or secret expected, got %s", field,
                                      luaL_typename(L, -1)));
    lua_pop(L, 1); /* the bytes stay anchored by the options table */
    return s;
}

int hrun_secrets_live(void)
{
    int n = 0;
    for (const Secret *s = live; s; s = s->next) n++;
    for (const Secret *s = retired; s; s = s->next) n++;
    return n;
}

int hrun_secret_owns(const char *p)
{
    for (const Secret *s = live; s; s = s->next)
        if (p == s->data) return 1;
    return 0;
}

void hrun_mask(lua_State *L, int idx)
{
    size_t len;
    const char *text = lua_tolstring(L, idx, &len);
    lua_pushvalue(L, idx);
    if (text == NULL) return;
    for (int list = 0; list < 2; list++)
        for (const Secret *s = list ? retired : live; s; s = s->next) {
            if (s->len < MIN_MASKED || memmem(text, len, s->data, s->len) == NULL) continue;
            luaL_Buffer b;
            luaL_buffinit(L, &b);
            const char *p = text, *end = text + len, *hit;
            while ((hit = memmem(p, (size_t)(end - p), s->data, s->len)) != NULL) {
                luaL_addlstring(&b, p, (size_t)(hit - p));
                luaL_addstring(&b, SHOWN);
                p = hit + s->len;
            }
            luaL_addlstring(&b, p, (size_t)(end - p));
            luaL_pushresult(&b);
            lua_remove(L, -2);
            text = lua_tolstring(L, -1, &len);
        }
}

/* a .. b where either is a secret: a secret ("Bearer " .. token) */
static int secret_concat(lua_State *L)
{
    size_t alen, blen;
    const char *a = hrun_tobytes(L, 1, &alen), *b = hrun_tobytes(L, 2, &blen);
    if (a == NULL && lua_type(L, 1) == LUA_TNUMBER) a = lua_tolstring(L, 1, &alen);
    if (b == NULL && lua_type(L, 2) == LUA_TNUMBER) b = lua_tolstring(L, 2, &blen);
    if (a == NULL || b == NULL)
        return luaL_error(L, "attempt to concatenate a secret with a %s value",
                          luaL_typename(L, a == NULL ? 1 : 2));
    Secret *s = secret_new(L, alen + blen);
    memcpy(s->data, a, alen);
    memcpy(s->data + alen, b, blen);
    return 1;
}

/* {======================================================
** secrets.read
** ======================================================= */

static const char *const read_options[] = {"trim", NULL};

/* [-0, +1, m] Where secrets.read(name) finds name: a path as it is; a bare name in
** $CREDENTIALS_DIRECTORY, else in /run/agenix (the first where it exists; the first
** place to look when it is nowhere). */
static const char *resolve(lua_State *L, const char *name)
{
    if (strchr(name, '/')) return lua_pushstring(L, name);
    const char *creds = getenv("CREDENTIALS_DIRECTORY");
    if (creds && *creds) {
        const char *p = lua_pushfstring(L, "%s/%s", creds, name);
        if (access(p, F_OK) == 0) return p;
        lua_pop(L, 1);
    }
    const char *p = lua_pushfstring(L, AGENIX_DIR "/%s", name);
    if (access(p, F_OK) == 0 || !(creds && *creds)) return p;
    lua_pop(L, 1);
    return lua_pushfstring(L, "%s/%s", creds, name);
}

/* The sandbox's target: the file the name resolves to. */
static int read_targets(lua_State *L, hrun_Target *t)
{
    if (lua_type(L, 1) != LUA_TSTRING) return 0;
    t[0] = (hrun_Target){NULL, resolve(L, lua_tostring(L, 1)), NULL, 0, 0};
    return 1;
}

/*
** secrets.read(path | name [, {trim = true}]) → secret | nil, message, code
** A name without '/' is looked up in $CREDENTIALS_DIRECTORY (systemd's LoadCredential=),
** then /run/agenix. trim: one trailing newline (as editors and `echo` leave) is dropped.
*/
static int secrets_read(lua_State *L)
{
    const char *name = hrun_checkpath(L, 1, NULL);
    hrun_checkopts(L, 2, read_options);
    int trim = hrun_optbool(L, 2, "trim", 1);
    lua_settop(L, 2);
    const char *path = resolve(L, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0) {
        if (errno == ENOENT && !strchr(name, '/'))
            return hrun_failf(L, "ENOENT",
                              "secrets.read: %s: no such credential in $CREDENTIALS_DIRECTORY (%s) "
                              "or " AGENIX_DIR,
                              name,
                              getenv("CREDENTIALS_DIRECTORY") ? getenv("CREDENTIALS_DIRECTORY")
                                                              : "not set");
        return hrun_fail(L, "secrets.read", path, errno);
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > MAX_SECRET) {
        int err = errno;
        close(fd);
        if (S_ISDIR(st.st_mode)) return hrun_fail(L, "secrets.read", path, EISDIR);
        if (!S_ISREG(st.st_mode) || st.st_size > MAX_SECRET)
            return hrun_failf(L, "EINVAL", "secrets.read: %s: not a regular file of at most 1 MiB",
                              path);
        return hrun_fail(L, "secrets.read", path, err);
    }
    Secret *s = secret_new(L, (size_t)st.st_size);
    size_t got = 0;
    while (got < s->len) {
        ssize_t n = read(fd, s->data + got, s->len - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int err = n < 0 ? errno : EIO;
            close(fd);
            return hrun_fail(L, "secrets.read", path, err);
        }
        got += (size_t)n;
    }
    close(fd);
    if (trim && s->len > 0 && s->data[s->len - 1] == '\n') {
        s->data[--s->len] = '\0';
        if (s->len > 0 && s->data[s->len - 1] == '\r') s->data[--s->len] = '\0';
    }
    return 1;
}

/* secrets.is(v) → whether v is a secret */
static int secrets_is(lua_State *L)
{
    lua_pushboolean(L, hrun_tosecret(L, 1, NULL) != NULL);
    return 1;
}

/* }====================================================== */

static const hrun_Prim secrets_prims[] = {
    {.name = "read",
     .func = secrets_read,
     .kind = HRUN_READ,
     .cap = "secrets",
     .targets = read_targets},
    {.name = "is", .func = secrets_is, .kind = HRUN_PURE},
    {0},
};

int luaopen_hrun_secrets(lua_State *L)
{
    hrun_newmodule(L, "secrets", secrets_prims);
    return 1;
}
