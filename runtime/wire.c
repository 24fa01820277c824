/*
** wire.c — the messages that cross a process boundary: plain data as JSON, one line each.
**
** A sandboxed playbook runs in a child process; every primitive call it makes, and every
** call the engine makes into its functions, crosses a pipe as one JSON object on one line
** (docs/architecture.md has the format).  Only data crosses: nil, booleans, integers and
** floats (kept apart), strings of any bytes, and tables.  What is not data is handed to a
** `special` function on the way out, which names it by a tag and a payload — a function
** crosses as a handle the other side calls back through, a secret as a handle that only
** the engine can turn back into bytes — or refuses it.  Tags are one-key objects whose key
** is "$" and a letter; a table's own keys that start with "$" are escaped by another "$".
**
**   {"$b": "base64"}     a string that is not UTF-8
**   {"$m": [[k, v], …]}  a table that is neither a sequence nor keyed by strings only
**   {"$n": "nan"}        nan, inf, -inf
**   {"$X": payload}      any other letter: the special value's tag, decoded by tags.X
**
** The engine decodes with no metatable, no function and no userdata of the sender's
** making, so what the capability check reads is what the primitive acts on.
*/
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "internal.h"

#define CHANNEL_TYPE "hrun.wire.channel"
#define MAX_DEPTH    200

/* {======================================================
** Lua -> JSON
** ======================================================= */

typedef struct Enc {
    lua_State *L;
    int special; /* stack index of the special function, 0: none */
    int mask;    /* replace live secrets' bytes in every string */
    int depth;
    const void *path[MAX_DEPTH];
    char err[200];
} Enc;

static json_t *enc_value(Enc *e, int idx);

static void enc_fail(Enc *e, const char *fmt, const char *what)
{
    if (e->err[0] == '\0') snprintf(e->err, sizeof e->err, fmt, what);
}

static int valid_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (len == 0 || i + len > n) return 0;
        unsigned cp = len == 1 ? c : c & (0x7F >> len);
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        static const unsigned least[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < least[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += len;
    }
    return 1;
}

static json_t *tagged(const char *tag, json_t *payload)
{
    if (payload == NULL) return NULL;
    json_t *o = json_object();
    if (o == NULL || json_object_set_new_nocheck(o, tag, payload) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static json_t *enc_bytes(const char *s, size_t n)
{
    if (valid_utf8((const unsigned char *)s, n)) return json_stringn_nocheck(s, n);
    size_t cap = 4 * ((n + 2) / 3) + 1;
    unsigned char *b64 = malloc(cap);
    if (b64 == NULL) return NULL;
    int len = EVP_EncodeBlock(b64, (const unsigned char *)s, (int)n);
    json_t *j = tagged("$b", json_stringn_nocheck((const char *)b64, (size_t)len));
    free(b64);
    return j;
}

static json_t *enc_string(Enc *e, int idx)
{
    size_t n;
    const char *s = lua_tolstring(e->L, idx, &n);
    if (e->mask && hrun_secrets_masked()) {
        hrun_mask(e->L, idx);
        s = lua_tolstring(e->L, -1, &n);
        json_t *j = enc_bytes(s, n);
        lua_pop(e->L, 1);
        return j;
    }
    return enc_bytes(s, n);
}

/* A key of a table keyed by strings: one that starts with '$' gets another. */
static int enc_key(Enc *e, json_t *obj, int kidx, json_t *v)
{
    size_t n;
    const char *k = lua_tolstring(e->L, kidx, &n);
    if (memchr(k, '\0', n) || !valid_utf8((const unsigned char *)k, n)) {
        json_decref(v);
        enc_fail(e, "a table key that is not text (%s)", "NUL or not UTF-8");
        return -1;
    }
    if (k[0] == '$') {
        lua_pushfstring(e->L, "$%s", k);
        int r = json_object_set_new_nocheck(obj, lua_tostring(e->L, -1), v);
        lua_pop(e->L, 1);
        return r;
    }
    return json_object_set_new_nocheck(obj, k, v);
}

/* 0: empty, 1: a sequence 1..n, 2: keyed by strings, 3: anything else */
static int table_shape(lua_State *L, int idx, lua_Integer *n)
{
    lua_Integer count = 0, max = 0;
    int strings = 0, others = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1) {
            lua_Integer i = lua_tointeger(L, -1);
            if (i > max) max = i;
            count++;
        } else if (lua_type(L, -1) == LUA_TSTRING) {
            strings++;
        } else {
            others++;
        }
    }
    *n = max;
    if (count == 0 && strings == 0 && others == 0) return 0;
    if (strings == 0 && others == 0 && count == max) return 1;
    if (count == 0 && others == 0) return 2;
    return 3;
}

static json_t *enc_table(Enc *e, int idx)
{
    lua_State *L = e->L;
    const void *p = lua_topointer(L, idx);
    for (int i = 0; i < e->depth; i++)
        if (e->path[i] == p) {
            enc_fail(e, "%s", "a table that contains itself");
            return NULL;
        }
    if (e->depth >= MAX_DEPTH) {
        enc_fail(e, "%s", "data nested too deep");
        return NULL;
    }
    e->path[e->depth++] = p;
    lua_Integer n;
    int shape = table_shape(L, idx, &n);
    json_t *out = NULL;
    if (shape == 1) {
        out = json_array();
        for (lua_Integer i = 1; out && i <= n; i++) {
            lua_rawgeti(L, idx, i);
            json_t *v = enc_value(e, lua_gettop(L));
            lua_pop(L, 1);
            if (v == NULL || json_array_append_new(out, v) != 0) json_decref(out), out = NULL;
        }
    } else if (shape == 0 || shape == 2) {
        out = json_object();
        lua_pushnil(L);
        while (out && lua_next(L, idx)) {
            json_t *v = enc_value(e, lua_gettop(L));
            lua_pop(L, 1);
            if (v == NULL || enc_key(e, out, lua_gettop(L), v) != 0) {
                json_decref(out), out = NULL;
                lua_pop(L, 1);
            }
        }
    } else {
        json_t *pairs = json_array();
        lua_pushnil(L);
        while (pairs && lua_next(L, idx)) {
            json_t *k = enc_value(e, lua_gettop(L) - 1), *v = enc_value(e, lua_gettop(L));
            json_t *pair =
                k && v ? json_pack("[oo]", k, v) : (json_decref(k), json_decref(v), NULL);
            lua_pop(L, 1);
            if (pair == NULL || json_array_append_new(pairs, pair) != 0) {
                json_decref(pairs), pairs = NULL;
                lua_pop(L, 1);
            }
        }
        out = tagged("$m", pairs);
    }
    e->depth--;
    return out;
}

/* A value that is not data: special(v) → tag, payload; nil for a table: its raw content. */
static json_t *enc_special(Enc *e, int idx)
{
    lua_State *L = e->L;
    int t = lua_type(L, idx);
    if (e->special) {
        lua_pushvalue(L, e->special);
        lua_pushvalue(L, idx);
        lua_call(L, 1, 2);
        if (lua_type(L, -2) == LUA_TSTRING) {
            char tag[8];
            size_t n;
            const char *name = lua_tolstring(L, -2, &n);
            if (n != 1 || strchr("bmn", name[0])) luaL_error(L, "wire: bad tag '%s'", name);
            snprintf(tag, sizeof tag, "$%s", name);
            json_t *payload = enc_value(e, lua_gettop(L));
            lua_pop(L, 2);
            return tagged(tag, payload);
        }
        lua_pop(L, 2);
    }
    if (t == LUA_TTABLE) return enc_table(e, idx);
    enc_fail(e, "a %s where only data may be", lua_typename(L, t));
    return NULL;
}

static json_t *enc_value(Enc *e, int idx)
{
    lua_State *L = e->L;
    luaL_checkstack(L, 8, "data nested too deep");
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return json_null();
    case LUA_TBOOLEAN:
        return json_boolean(lua_toboolean(L, idx));
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) return json_integer((json_int_t)lua_tointeger(L, idx));
        {
            double d = lua_tonumber(L, idx);
            if (isfinite(d)) return json_real(d);
            return tagged("$n", json_string(isnan(d) ? "nan" : d > 0 ? "inf" : "-inf"));
        }
    case LUA_TSTRING:
        return enc_string(e, idx);
    case LUA_TTABLE:
        if (!lua_getmetatable(L, idx)) return enc_table(e, idx);
        lua_pop(L, 1);
        return enc_special(e, idx);
    default:
        return enc_special(e, idx);
    }
}

/* wire.encode(v [, special [, mask]]) → one line of JSON; raises what is not data */
static int wire_encode(lua_State *L)
{
    Enc *e = lua_newuserdatauv(L, sizeof(Enc), 0);
    memset(e, 0, sizeof *e);
    e->L = L;
    e->special = lua_isfunction(L, 2) ? 2 : 0;
    e->mask = lua_toboolean(L, 3);
    lua_settop(L, 4); /* 4: the Enc */
    json_t *j = enc_value(e, 1);
    size_t size = j ? json_dumpb(j, NULL, 0, JSON_COMPACT | JSON_ENCODE_ANY) : 0;
    if (size == 0) {
        json_decref(j);
        return luaL_error(L, "wire: %s", e->err[0] ? e->err : "not enough memory");
    }
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, size);
    luaL_addsize(&b, json_dumpb(j, p, size, JSON_COMPACT | JSON_ENCODE_ANY));
    json_decref(j);
    luaL_pushresult(&b);
    return 1;
}

/* }====================================================== */

/* {======================================================
** JSON -> Lua
** ======================================================= */

static void dec_value(lua_State *L, json_t *j, int tags, int depth);

static void dec_tag(lua_State *L, const char *key, json_t *payload, int tags, int depth)
{
    switch (key[1]) {
    case 'b': {
        const char *s = json_string_value(payload);
        size_t n = json_string_length(payload);
        if (s == NULL || n % 4 != 0) luaL_error(L, "wire: $b: not base64");
        luaL_Buffer b;
        unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, n / 4 * 3 + 1);
        int len = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);
        if (len < 0) luaL_error(L, "wire: $b: not base64");
        while (n > 0 && s[n - 1] == '=') n--, len--; /* DecodeBlock counts the padding */
        luaL_pushresultsize(&b, (size_t)len);
        return;
    }
    case 'n': {
        const char *s = json_string_value(payload);
        if (s && strcmp(s, "nan") == 0)
            lua_pushnumber(L, NAN);
        else if (s && strcmp(s, "inf") == 0)
            lua_pushnumber(L, HUGE_VAL);
        else if (s && strcmp(s, "-inf") == 0)
            lua_pushnumber(L, -HUGE_VAL);
        else
            luaL_error(L, "wire: $n: not nan, inf or -inf");
        return;
    }
    case 'm': {
        if (!json_is_array(payload)) luaL_error(L, "wire: $m: not a list of pairs");
        lua_createtable(L, 0, (int)json_array_size(payload));
        size_t i;
        json_t *pair;
        json_array_foreach(payload, i, pair)
        {
            if (!json_is_array(pair) || json_array_size(pair) != 2)
                luaL_error(L, "wire: $m: not a list of pairs");
            dec_value(L, json_array_get(pair, 0), tags, depth + 1);
            dec_value(L, json_array_get(pair, 1), tags, depth + 1);
            if (lua_isnil(L, -2) || (lua_type(L, -2) == LUA_TNUMBER && isnan(lua_tonumber(L, -2))))
                luaL_error(L, "wire: $m: a key that cannot be one");
            lua_rawset(L, -3);
        }
        return;
    }
    default:
        if (tags == 0 || lua_getfield(L, tags, key + 1) != LUA_TFUNCTION)
            luaL_error(L, "wire: unknown tag '%s'", key);
        dec_value(L, payload, tags, depth + 1);
        lua_call(L, 1, 1);
    }
}

static void dec_value(lua_State *L, json_t *j, int tags, int depth)
{
    if (depth > MAX_DEPTH) luaL_error(L, "wire: data nested too deep");
    luaL_checkstack(L, 8, "data nested too deep");
    switch (json_typeof(j)) {
    case JSON_NULL:
        lua_pushnil(L);
        return;
    case JSON_TRUE:
        lua_pushboolean(L, 1);
        return;
    case JSON_FALSE:
        lua_pushboolean(L, 0);
        return;
    case JSON_INTEGER:
        lua_pushinteger(L, (lua_Integer)json_integer_value(j));
        return;
    case JSON_REAL:
        lua_pushnumber(L, json_real_value(j));
        return;
    case JSON_STRING:
        lua_pushlstring(L, json_string_value(j), json_string_length(j));
        return;
    case JSON_ARRAY: {
        size_t n = json_array_size(j), i;
        json_t *v;
        lua_createtable(L, (int)(n < 1 << 20 ? n : 1 << 20), 0);
        json_array_foreach(j, i, v)
        {
            dec_value(L, v, tags, depth + 1);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        return;
    }
    case JSON_OBJECT: {
        const char *key;
        json_t *v;
        if (json_object_size(j) == 1) {
            json_object_foreach(j, key, v)
            {
                if (key[0] == '$' && key[1] != '$' && key[1] != '\0' && key[2] == '\0') {
                    dec_tag(L, key, v, tags, depth);
                    return;
                }
            }
        }
        lua_createtable(L, 0, (int)json_object_size(j));
        json_object_foreach(j, key, v)
        {
            if (key[0] == '$' && key[1] != '$')
                luaL_error(L, "wire: a key '%s' that is not escaped", key);
            lua_pushstring(L, key[0] == '$' ? key + 1 : key);
            dec_value(L, v, tags, depth + 1);
            lua_rawset(L, -3);
        }
        return;
    }
    default:
        luaL_error(L, "wire: not JSON data");
    }
}

/* Frees the jansson tree when a decode raises. */
static int doc_gc(lua_State *L)
{
    json_t **doc = lua_touserdata(L, 1);
    json_decref(*doc);
    *doc = NULL;
    return 0;
}

/* wire.decode(text [, tags]) → value; tags: {X = function(payload) → value} */
static int wire_decode(lua_State *L)
{
    size_t n;
    const char *text = luaL_checklstring(L, 1, &n);
    int tags = lua_istable(L, 2) ? 2 : 0;
    lua_settop(L, 2);
    json_t **doc = lua_newuserdatauv(L, sizeof(json_t *), 0); /* 3 */
    *doc = NULL;
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, doc_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    json_error_t err;
    *doc = json_loadb(text, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
    if (*doc == NULL) return luaL_error(L, "wire: not JSON: %s", err.text);
    dec_value(L, *doc, tags, 0);
    json_decref(*doc);
    *doc = NULL;
    return 1;
}

/* }====================================================== */

/* {======================================================
** Channels: lines over a pair of file descriptors
** ======================================================= */

typedef struct Channel {
    int rfd, wfd;
    char *buf;
    size_t len, cap, scanned;
} Channel;

static Channel *tochannel(lua_State *L)
{
    return luaL_checkudata(L, 1, CHANNEL_TYPE);
}

/* wire.channel(rfd, wfd) → a channel that owns both descriptors */
static int wire_channel(lua_State *L)
{
    int rfd = (int)luaL_checkinteger(L, 1), wfd = (int)luaL_checkinteger(L, 2);
    Channel *c = lua_newuserdatauv(L, sizeof(Channel), 0);
    memset(c, 0, sizeof *c);
    c->rfd = rfd;
    c->wfd = wfd;
    luaL_setmetatable(L, CHANNEL_TYPE);
    return 1;
}

/* ch:send(text) → true | nil, why: text and a newline, whole */
static int ch_send(lua_State *L)
{
    Channel *c = tochannel(L);
    size_t n;
    const char *text = luaL_checklstring(L, 2, &n);
    if (c->wfd < 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    struct iovec iov[2] = {{(void *)text, n}, {"\n", 1}};
    int k = 0;
    while (k < 2) {
        ssize_t w = writev(c->wfd, iov + k, 2 - k);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return luaL_fileresult(L, 0, NULL);
        size_t done = (size_t)w;
        while (k < 2 && done >= iov[k].iov_len) done -= iov[k++].iov_len;
        if (k < 2) {
            iov[k].iov_base = (char *)iov[k].iov_base + done;
            iov[k].iov_len -= done;
        }
    }
    lua_pushboolean(L, 1);
    return 1;
}

static void on_tick(lua_State *L)
{
    if (!lua_checkstack(L, 3)) return;
    if (lua_getfield(L, LUA_REGISTRYINDEX, TICKER) == LUA_TFUNCTION) hrun_pcallback(L, 0);
    lua_pop(L, 1);
}

/*
** ch:recv([maxlen [, watch]]) → line | nil, why ("eof", "too long", "timeout",
** "interrupted", or an error). With watch, waits in slices of 0.1 s: an interrupt (Ctrl-C,
** SIGTERM) and the step's deadline end the wait, and the runner's ticker is called.
*/
static int ch_recv(lua_State *L)
{
    Channel *c = tochannel(L);
    size_t max = (size_t)luaL_optinteger(L, 2, 1 << 30);
    int watch = lua_toboolean(L, 3);
    for (;;) {
        char *nl =
            c->len > c->scanned ? memchr(c->buf + c->scanned, '\n', c->len - c->scanned) : NULL;
        if (nl) {
            size_t n = (size_t)(nl - c->buf);
            lua_pushlstring(L, c->buf, n);
            memmove(c->buf, nl + 1, c->len - n - 1);
            c->len -= n + 1;
            c->scanned = 0;
            return 1;
        }
        c->scanned = c->len;
        if (c->len > max) {
            lua_pushnil(L);
            lua_pushliteral(L, "too long");
            return 2;
        }
        if (c->rfd < 0) {
            lua_pushnil(L);
            lua_pushliteral(L, "eof");
            return 2;
        }
        if (watch) {
            if (hrun_interrupted()) {
                lua_pushnil(L);
                lua_pushliteral(L, "interrupted");
                return 2;
            }
            double deadline = hrun_deadline(L), left = deadline - hrun_monotime();
            if (deadline > 0 && left <= 0) {
                lua_pushnil(L);
                lua_pushliteral(L, "timeout");
                return 2;
            }
            int ms = deadline > 0 && left < 0.1 ? (int)(left * 1000) + 1 : 100;
            struct pollfd p = {c->rfd, POLLIN, 0};
            int r = poll(&p, 1, ms);
            if (r < 0 && errno != EINTR) return luaL_fileresult(L, 0, NULL);
            if (r <= 0) {
                on_tick(L);
                continue;
            }
        }
        if (c->cap - c->len < 65536) {
            size_t cap = c->cap ? c->cap * 2 : 65536 * 2;
            char *b = realloc(c->buf, cap);
            if (b == NULL) return luaL_error(L, "not enough memory");
            c->buf = b;
            c->cap = cap;
        }
        ssize_t r = read(c->rfd, c->buf + c->len, c->cap - c->len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return luaL_fileresult(L, 0, NULL);
        if (r == 0) {
            lua_pushnil(L);
            lua_pushliteral(L, "eof");
            return 2;
        }
        c->len += (size_t)r;
    }
}

/* ch:close(): closes both descriptors (the other side reads its end) */
static int ch_close(lua_State *L)
{
    Channel *c = luaL_checkudata(L, 1, CHANNEL_TYPE);
    if (c->rfd >= 0) close(c->rfd);
    if (c->wfd >= 0 && c->wfd != c->rfd) close(c->wfd);
    c->rfd = c->wfd = -1;
    free(c->buf);
    c->buf = NULL;
    c->len = c->cap = c->scanned = 0;
    return 0;
}

/* }====================================================== */

int luaopen_hrun_wire(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"encode", wire_encode}, {"decode", wire_decode}, {"channel", wire_channel}, {NULL, NULL}};
    static const luaL_Reg methods[] = {
        {"send", ch_send}, {"recv", ch_recv}, {"close", ch_close}, {NULL, NULL}};
    if (luaL_newmetatable(L, CHANNEL_TYPE)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, ch_close);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    luaL_newlib(L, funcs);
    return 1;
}
