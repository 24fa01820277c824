/*
** mod_secrets.c — the `secrets` module: values that are passed, never shown.
**
** secrets.read(path | name) gives a secret: a userdata holding the bytes, which exec
** (argv, env, stdin), http (headers, body, json) and fs.write accept and which shows as
** "<secret>" everywhere else — tostring, json.encode, the journal, events, error
** messages. A name (no '/') is looked up as systemd's credentials ($CREDENTIALS_DIRECTORY)
** and agenix's (/run/agenix) keep them.  Every secret made is also known to the masker
** (hrun_mask) until hrun exits — its bytes, and each line of one of several lines (a key
** file: a command streams it line by line) — which replaces them wherever they turn up
** in text hrun shows or journals: a command that echoes its password does not put it in
** the journal. hrun_maskstdio makes hrun's own stdout and stderr (io, print) pass
** through the masker too.
*/
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
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
    struct Secret *next, **prev; /* the list of live secrets (hrun_secret_owns) */
    size_t len;
    int masked;  /* wherever its bytes show, the masker hides all that is secret in them */
    char data[]; /* len bytes and a NUL */
} Secret;

static Secret *live;

/* What the masker hides: the bytes of every secret made, kept until hrun exits, since
** the text that quotes one (a command's output, an error, an event) may outlive it. */
typedef struct Mask {
    struct Mask *next;
    size_t len;
    char data[];
} Mask;

static Mask *masks;
static int nmasks;

/* [-0, +0, m] Adds len bytes at p to what the masker hides (once). Raises when memory
** runs out: a secret the masker does not know must not be handed out. */
static void remember(lua_State *L, const char *p, size_t len)
{
    if (len < MIN_MASKED) return;
    for (const Mask *m = masks; m; m = m->next)
        if (m->len == len && memcmp(m->data, p, len) == 0) return;
    Mask *m = malloc(sizeof *m + len);
    if (m == NULL) luaL_error(L, "secrets: not enough memory");
    m->len = len;
    memcpy(m->data, p, len);
    m->next = masks;
    masks = m;
    nmasks++;
}

/* [-0, +0, m] The masker learns s: its bytes and, for a secret of several lines (a key,
** a certificate), each line (without a CR), which a command streaming it shows alone. */
static void remember_secret(lua_State *L, Secret *s)
{
    remember(L, s->data, s->len);
    s->masked = s->len >= MIN_MASKED;
    if (memchr(s->data, '\n', s->len) == NULL) return;
    const char *p = s->data, *end = s->data + s->len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *e = nl ? nl : end;
        size_t n = (size_t)(e - p);
        if (n > 0 && p[n - 1] == '\r') n--;
        remember(L, p, n);
        p = e + 1;
    }
}

static int secret_gc(lua_State *L)
{
    Secret *s = lua_touserdata(L, 1);
    if (s->prev) {
        *s->prev = s->next;
        if (s->next) s->next->prev = s->prev;
        s->prev = NULL;
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

/* [-0, +1, m] A new secret of len bytes, to be filled by the caller, then made known to
** the masker (remember_secret) before it is handed out. */
static Secret *secret_new(lua_State *L, size_t len)
{
    Secret *s = lua_newuserdatauv(L, sizeof(Secret) + len + 1, 0);
    s->len = len;
    s->masked = 0;
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

int hrun_secrets_masked(void)
{
    return nmasks;
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
    idx = lua_absindex(L, idx);
    const char *text = lua_tolstring(L, idx, &len);
    lua_pushvalue(L, idx);
    if (text == NULL || masks == NULL) return;
    /* which bytes are a secret's: the union of every mask's matches, overlapping ones
    ** too, so that secrets inside or across others leave no part shown */
    char *hidden = NULL;
    for (const Mask *m = masks; m; m = m->next) {
        const char *p = text, *end = text + len, *hit;
        while ((hit = memmem(p, (size_t)(end - p), m->data, m->len)) != NULL) {
            if (hidden == NULL) hidden = memset(lua_newuserdatauv(L, len, 0), 0, len);
            memset(hidden + (hit - text), 1, m->len);
            p = hit + 1;
        }
    }
    if (hidden == NULL) return;
    /* a "<secret>" already there that a match touches goes whole: masking masked text
    ** again changes nothing */
    const size_t shown = sizeof SHOWN - 1;
    for (const char *p = text, *hit; (hit = memmem(p, len - (size_t)(p - text), SHOWN, shown));
         p = hit + 1)
        if (memchr(hidden + (hit - text), 1, shown)) memset(hidden + (hit - text), 1, shown);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < len;) {
        size_t j = i;
        while (j < len && hidden[j] == hidden[i]) j++;
        if (hidden[i])
            luaL_addstring(&b, SHOWN);
        else
            luaL_addlstring(&b, text + i, j - i);
        i = j;
    }
    luaL_pushresult(&b);
    lua_replace(L, -3); /* over the copy of the text */
    lua_pop(L, 1);      /* the map */
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
    /* "Bearer " .. token: where it shows, the masked token hides all that is secret in
    ** it; a short secret in it (not masked alone) makes the whole a secret to mask */
    Secret *sa = luaL_testudata(L, 1, SECRET_TYPE), *sb = luaL_testudata(L, 2, SECRET_TYPE);
    if ((sa && !sa->masked) || (sb && !sb->masked))
        remember_secret(L, s);
    else
        s->masked = 1;
    return 1;
}

/* {======================================================
** hrun's own stdout and stderr: what io and print write there passes the masker
** ======================================================= */

/* file:write(...), the io library's (upvalue 1), masking what goes to stdout and
** stderr; the strings of one call are masked together: a secret split across them (the
** pieces of a line) is found. */
static int masked_write(lua_State *L)
{
    luaL_Stream *f = luaL_testudata(L, 1, LUA_FILEHANDLE);
    int n = lua_gettop(L);
    if (nmasks > 0 && f && f->closef && (f->f == stdout || f->f == stderr) && n > 1) {
        int strings = 1;
        for (int i = 2; i <= n; i++) strings &= lua_type(L, i) == LUA_TSTRING;
        if (strings) {
            lua_concat(L, n - 1);
            n = 2;
        }
        for (int i = 2; i <= n; i++)
            if (lua_type(L, i) == LUA_TSTRING) {
                hrun_mask(L, i);
                lua_replace(L, i);
            }
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, n, LUA_MULTRET);
    return lua_gettop(L);
}

/* io.write(...): io.output():write(...) as masked_write does it (upvalue 2: io.output) */
static int masked_iowrite(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_call(L, 0, 1);
    lua_insert(L, 1);
    return masked_write(L);
}

/* print(...), as the base library's, through the masker */
static int masked_print(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1) luaL_addchar(&b, '\t');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_addchar(&b, '\n');
    luaL_pushresult(&b);
    size_t len;
    hrun_mask(L, -1);
    const char *text = lua_tolstring(L, -1, &len);
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

void hrun_maskstdio(lua_State *L)
{
    luaL_getmetatable(L, LUA_FILEHANDLE);
    lua_getfield(L, -1, "__index"); /* the methods of files */
    lua_getfield(L, -1, "write");
    lua_getglobal(L, "io");
    lua_pushvalue(L, -2);
    lua_getfield(L, -2, "output");
    lua_pushcclosure(L, masked_iowrite, 2);
    lua_setfield(L, -2, "write");
    lua_pop(L, 1);
    lua_pushcclosure(L, masked_write, 1);
    lua_setfield(L, -2, "write");
    lua_pop(L, 2);
    lua_pushcfunction(L, masked_print);
    lua_setglobal(L, "print");
}

/* }====================================================== */

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
    remember_secret(L, s);
    return 1;
}

/* secrets._wrap(bytes) → a secret holding them: one that crossed from another host (its
** agent read it there, or the controller sends it to be written there) */
static int secrets_wrap(lua_State *L)
{
    size_t len;
    const char *bytes = luaL_checklstring(L, 1, &len);
    Secret *s = secret_new(L, len);
    memcpy(s->data, bytes, len);
    remember_secret(L, s);
    return 1;
}

/* secrets.is(v) → whether v is a secret */
static int secrets_is(lua_State *L)
{
    lua_pushboolean(L, hrun_tosecret(L, 1, NULL) != NULL);
    return 1;
}

/* secrets._mask(v) → v, text with every secret's bytes shown as <secret> (the engine's
** encoders mask the strings of a value before they escape, cut or hex them) */
static int secrets_mask(lua_State *L)
{
    luaL_checkany(L, 1);
    if (lua_type(L, 1) != LUA_TSTRING) return lua_settop(L, 1), 1;
    hrun_mask(L, 1);
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
    {.name = "_wrap", .func = secrets_wrap, .kind = HRUN_PURE},
    {.name = "_mask", .func = secrets_mask, .kind = HRUN_PURE},
    {0},
};

int luaopen_hrun_secrets(lua_State *L)
{
    hrun_newmodule(L, "secrets", secrets_prims);
    return 1;
}
