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
** Lua -> JSON, written straight into a buffer (a message is encoded for every call:
** building a jansson tree first cost more than the rest of the round trip)
** ======================================================= */

#define BUF_TYPE "hrun.wire.buf"

typedef struct Buf {
    char *data;
    size_t len, cap;
} Buf;

typedef struct Enc {
    lua_State *L;
    Buf *b;
    int special; /* stack index of the special function, 0: none */
    int mask;    /* replace live secrets' bytes in every string */
    int depth;
    const void *path[MAX_DEPTH];
} Enc;

static void enc_value(Enc *e, int idx);

static int buf_gc(lua_State *L)
{
    Buf *b = lua_touserdata(L, 1);
    free(b->data);
    b->data = NULL;
    return 0;
}

static void put(Enc *e, const char *s, size_t n)
{
    Buf *b = e->b;
    if (b->cap - b->len < n) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->len < n) cap *= 2;
        char *d = realloc(b->data, cap);
        if (d == NULL) luaL_error(e->L, "not enough memory");
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

#define PUTLIT(e, lit) put(e, lit, sizeof lit - 1)

static int valid_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (len == 0 || i + len > n) return 0;
        unsigned cp = c & (0x7F >> len);
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

/* A JSON string of UTF-8 text s (escaped), with `prefix` before it inside the quotes. */
static void put_quoted(Enc *e, const char *prefix, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    PUTLIT(e, "\"");
    if (prefix) put(e, prefix, strlen(prefix));
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        put(e, s + run, i - run);
        run = i + 1;
        char esc[6] = {'\\', (char)c, 0, 0, 0, 0};
        if (c == '"' || c == '\\') {
            put(e, esc, 2);
        } else if (c == '\n') {
            PUTLIT(e, "\\n");
        } else if (c == '\t') {
            PUTLIT(e, "\\t");
        } else {
            esc[1] = 'u', esc[2] = '0', esc[3] = '0', esc[4] = hex[c >> 4], esc[5] = hex[c & 15];
            put(e, esc, 6);
        }
    }
    put(e, s + run, n - run);
    PUTLIT(e, "\"");
}

static void put_bytes(Enc *e, const char *s, size_t n)
{
    if (valid_utf8((const unsigned char *)s, n)) {
        put_quoted(e, NULL, s, n);
        return;
    }
    size_t cap = 4 * ((n + 2) / 3) + 1;
    unsigned char *b64 = malloc(cap);
    if (b64 == NULL) luaL_error(e->L, "not enough memory");
    int len = EVP_EncodeBlock(b64, (const unsigned char *)s, (int)n);
    PUTLIT(e, "{\"$b\":\"");
    put(e, (const char *)b64, (size_t)len);
    PUTLIT(e, "\"}");
    free(b64);
}

static void enc_string(Enc *e, int idx)
{
    size_t n;
    const char *s = lua_tolstring(e->L, idx, &n);
    if (e->mask && hrun_secrets_masked()) {
        hrun_mask(e->L, idx);
        s = lua_tolstring(e->L, -1, &n);
        put_bytes(e, s, n);
        lua_pop(e->L, 1);
        return;
    }
    put_bytes(e, s, n);
}

/* A key of a table keyed by strings: one that starts with '$' gets another. */
static void enc_key(Enc *e, int kidx)
{
    size_t n;
    const char *k = lua_tolstring(e->L, kidx, &n);
    if (memchr(k, '\0', n) || !valid_utf8((const unsigned char *)k, n))
        luaL_error(e->L, "wire: a table key that is not text (a NUL byte, or not UTF-8)");
    put_quoted(e, k[0] == '$' ? "$" : NULL, k, n);
    PUTLIT(e, ":");
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

static void enc_table(Enc *e, int idx)
{
    lua_State *L = e->L;
    const void *p = lua_topointer(L, idx);
    for (int i = 0; i < e->depth; i++)
        if (e->path[i] == p) luaL_error(L, "wire: a table that contains itself");
    if (e->depth >= MAX_DEPTH) luaL_error(L, "wire: data nested too deep");
    e->path[e->depth++] = p;
    lua_Integer n;
    int shape = table_shape(L, idx, &n);
    if (shape == 1) {
        PUTLIT(e, "[");
        for (lua_Integer i = 1; i <= n; i++) {
            if (i > 1) PUTLIT(e, ",");
            lua_rawgeti(L, idx, i);
            enc_value(e, lua_gettop(L));
            lua_pop(L, 1);
        }
        PUTLIT(e, "]");
    } else if (shape == 0 || shape == 2) {
        PUTLIT(e, "{");
        int first = 1;
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            if (!first) PUTLIT(e, ",");
            first = 0;
            enc_key(e, lua_gettop(L) - 1);
            enc_value(e, lua_gettop(L));
            lua_pop(L, 1);
        }
        PUTLIT(e, "}");
    } else {
        PUTLIT(e, "{\"$m\":[");
        int first = 1;
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            if (!first) PUTLIT(e, ",");
            PUTLIT(e, "[");
            first = 0;
            enc_value(e, lua_gettop(L) - 1);
            PUTLIT(e, ",");
            enc_value(e, lua_gettop(L));
            PUTLIT(e, "]");
            lua_pop(L, 1);
        }
        PUTLIT(e, "]}");
    }
    e->depth--;
}

/* A value that is not data: special(v) → tag, payload; nil for a table: its raw content. */
static void enc_special(Enc *e, int idx)
{
    lua_State *L = e->L;
    int t = lua_type(L, idx);
    if (e->special) {
        lua_pushvalue(L, e->special);
        lua_pushvalue(L, idx);
        lua_call(L, 1, 2);
        if (lua_type(L, -2) == LUA_TSTRING) {
            size_t n;
            const char *name = lua_tolstring(L, -2, &n);
            if (n != 1 ||
                !((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= 'A' && name[0] <= 'Z')) ||
                strchr("bmn", name[0]))
                luaL_error(L, "wire: bad tag '%s'", name);
            char open[8] = {'{', '"', '$', name[0], '"', ':'};
            put(e, open, 6);
            enc_value(e, lua_gettop(L));
            PUTLIT(e, "}");
            lua_pop(L, 2);
            return;
        }
        lua_pop(L, 2);
    }
    if (t == LUA_TTABLE) {
        enc_table(e, idx);
        return;
    }
    luaL_error(L, "wire: a %s where only data may be", lua_typename(L, t));
}

static void enc_value(Enc *e, int idx)
{
    lua_State *L = e->L;
    luaL_checkstack(L, 8, "data nested too deep");
    char num[48];
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        PUTLIT(e, "null");
        return;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx))
            PUTLIT(e, "true");
        else
            PUTLIT(e, "false");
        return;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            put(e, num,
                (size_t)snprintf(num, sizeof num, "%lld", (long long)lua_tointeger(L, idx)));
            return;
        }
        {
            double d = lua_tonumber(L, idx);
            if (isnan(d)) {
                PUTLIT(e, "{\"$n\":\"nan\"}");
            } else if (isinf(d)) {
                if (d > 0)
                    PUTLIT(e, "{\"$n\":\"inf\"}");
                else
                    PUTLIT(e, "{\"$n\":\"-inf\"}");
            } else {
                int n = snprintf(num, sizeof num, "%.17g", d);
                if (strpbrk(num, ".eE") == NULL) num[n++] = '.', num[n++] = '0'; /* stays a float */
                put(e, num, (size_t)n);
            }
        }
        return;
    case LUA_TSTRING:
        enc_string(e, idx);
        return;
    case LUA_TTABLE:
        if (!lua_getmetatable(L, idx)) {
            enc_table(e, idx);
            return;
        }
        lua_pop(L, 1);
        enc_special(e, idx);
        return;
    default:
        enc_special(e, idx);
    }
}

/* wire.encode(v [, special [, mask]]) → one line of JSON; raises what is not data */
static int wire_encode(lua_State *L)
{
    lua_settop(L, 3);
    Enc e;
    e.L = L;
    e.special = lua_isfunction(L, 2) ? 2 : 0;
    e.mask = lua_toboolean(L, 3);
    e.depth = 0;
    e.b = lua_newuserdatauv(L, sizeof(Buf), 0); /* 4: freed by __gc if a raise leaves it */
    memset(e.b, 0, sizeof *e.b);
    luaL_setmetatable(L, BUF_TYPE);
    enc_value(&e, 1);
    lua_pushlstring(L, e.b->data, e.b->len);
    free(e.b->data);
    e.b->data = NULL;
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

/* How long a wait spins before it sleeps. Engine and playbook process answer each other
** at once, and a pipe's wake-up across CPUs costs ~60 µs on a VM: spinning this long
** first makes a round trip ~2 µs (bench/boundary.sh); a longer wait then sleeps. */
#define SPIN_SECONDS 150e-6

/* Spins until fd is readable or SPIN_SECONDS pass: 1 when it is readable. */
static int spin(int fd)
{
    double end = hrun_monotime() + SPIN_SECONDS;
    struct pollfd p = {fd, POLLIN, 0};
    do {
        if (poll(&p, 1, 0) > 0) return 1;
    } while (hrun_monotime() < end);
    return 0;
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
        if (spin(c->rfd)) {
            /* readable: read below */
        } else if (watch) {
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
    if (luaL_newmetatable(L, BUF_TYPE)) {
        lua_pushcfunction(L, buf_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
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
