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
#include <fcntl.h>
#include <limits.h>
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
    if (e->mask && hrun_secrets_masked()) { /* a key holds text as a value does */
        hrun_mask(e->L, kidx);
        k = lua_tolstring(e->L, -1, &n);
        put_quoted(e, k[0] == '$' ? "$" : NULL, k, n);
        lua_pop(e->L, 1);
    } else {
        put_quoted(e, k[0] == '$' ? "$" : NULL, k, n);
    }
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

/* A value that is not data: special(v) → tag, payload; nil, t: t's content (read raw) in
** its place; nil for a table: its own content (read raw). */
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
        if (lua_isnil(L, -2) && lua_type(L, -1) == LUA_TTABLE) { /* nil, t: t's content instead */
            enc_table(e, lua_gettop(L));
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
** JSON -> Lua: a parser that pushes Lua values as it reads (a message is decoded for
** every call; jansson's tree cost twice the rest). Tags are dispatched as they are met.
** ======================================================= */

typedef struct Dec {
    lua_State *L;
    const char *start, *p, *end;
    int tags; /* stack index of the tags table, 0: none */
} Dec;

static void dec_value(Dec *d, int depth);

static _Noreturn void dec_fail(Dec *d, const char *what)
{
    luaL_error(d->L, "wire: not JSON: %s at byte %d", what, (int)(d->p - d->start));
    abort(); /* not reached */
}

/* Whether the literal w is next (then it is read). */
static int word(Dec *d, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(d->end - d->p) < n || memcmp(d->p, w, n) != 0) return 0;
    d->p += n;
    return 1;
}

static void skip_ws(Dec *d)
{
    while (d->p < d->end && (*d->p == ' ' || *d->p == '\t' || *d->p == '\n' || *d->p == '\r'))
        d->p++;
}

static int hexval(int c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

static unsigned read_u4(Dec *d)
{
    if (d->end - d->p < 4) dec_fail(d, "a short \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval((unsigned char)d->p[k]);
        if (h < 0) dec_fail(d, "a bad \\u escape");
        v = v << 4 | (unsigned)h;
    }
    d->p += 4;
    return v;
}

static void put_utf8(luaL_Buffer *b, unsigned cp)
{
    char u[4];
    int n;
    if (cp < 0x80)
        u[0] = (char)cp, n = 1;
    else if (cp < 0x800)
        u[0] = (char)(0xC0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3F)), n = 2;
    else if (cp < 0x10000)
        u[0] = (char)(0xE0 | cp >> 12), u[1] = (char)(0x80 | (cp >> 6 & 0x3F)),
        u[2] = (char)(0x80 | (cp & 0x3F)), n = 3;
    else
        u[0] = (char)(0xF0 | cp >> 18), u[1] = (char)(0x80 | (cp >> 12 & 0x3F)),
        u[2] = (char)(0x80 | (cp >> 6 & 0x3F)), u[3] = (char)(0x80 | (cp & 0x3F)), n = 4;
    luaL_addlstring(b, u, (size_t)n);
}

/* The string at d->p (after its opening quote), pushed. */
static void dec_string(Dec *d)
{
    const char *s = d->p;
    while (d->p < d->end && *d->p != '"' && *d->p != '\\') d->p++;
    if (d->p >= d->end) dec_fail(d, "an unterminated string");
    if (*d->p == '"') { /* no escapes: the common case */
        lua_pushlstring(d->L, s, (size_t)(d->p - s));
        d->p++;
        return;
    }
    luaL_Buffer b;
    luaL_buffinit(d->L, &b);
    luaL_addlstring(&b, s, (size_t)(d->p - s));
    for (;;) {
        if (d->p >= d->end) dec_fail(d, "an unterminated string");
        char c = *d->p++;
        if (c == '"') break;
        if (c != '\\') {
            luaL_addchar(&b, c);
            continue;
        }
        if (d->p >= d->end) dec_fail(d, "an unterminated string");
        c = *d->p++;
        switch (c) {
        case '"':
        case '\\':
        case '/':
            luaL_addchar(&b, c);
            break;
        case 'b':
            luaL_addchar(&b, '\b');
            break;
        case 'f':
            luaL_addchar(&b, '\f');
            break;
        case 'n':
            luaL_addchar(&b, '\n');
            break;
        case 'r':
            luaL_addchar(&b, '\r');
            break;
        case 't':
            luaL_addchar(&b, '\t');
            break;
        case 'u': {
            unsigned cp = read_u4(d);
            if (cp >= 0xD800 && cp <= 0xDBFF && d->end - d->p >= 6 && d->p[0] == '\\' &&
                d->p[1] == 'u') {
                const char *save = d->p;
                d->p += 2;
                unsigned lo = read_u4(d);
                if (lo >= 0xDC00 && lo <= 0xDFFF)
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                else
                    d->p = save;
            }
            put_utf8(&b, cp);
            break;
        }
        default:
            dec_fail(d, "a bad escape");
        }
    }
    luaL_pushresult(&b);
}

static void dec_number(Dec *d)
{
    const char *s = d->p;
    int is_float = 0;
    while (d->p < d->end && strchr("+-0123456789.eE", *d->p) && *d->p) {
        if (*d->p == '.' || *d->p == 'e' || *d->p == 'E') is_float = 1;
        d->p++;
    }
    size_t n = (size_t)(d->p - s);
    char num[64];
    if (n == 0 || n >= sizeof num) dec_fail(d, "a bad number");
    memcpy(num, s, n);
    num[n] = '\0';
    char *stop;
    errno = 0;
    if (!is_float) {
        long long v = strtoll(num, &stop, 10);
        if (*stop == '\0' && errno == 0) {
            lua_pushinteger(d->L, (lua_Integer)v);
            return;
        }
    }
    double v = strtod(num, &stop);
    if (*stop != '\0') dec_fail(d, "a bad number");
    lua_pushnumber(d->L, v);
}

static void dec_tag(Dec *d, char tag, int depth)
{
    lua_State *L = d->L;
    switch (tag) {
    case 'b': {
        dec_value(d, depth + 1);
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        if (lua_type(L, -1) != LUA_TSTRING || n % 4 != 0 || n > INT_MAX)
            luaL_error(L, "wire: $b: not base64");
        size_t pad = 0; /* '=' only as the last one or two characters */
        while (pad < 2 && pad < n && s[n - 1 - pad] == '=') pad++;
        if (memchr(s, '=', n - pad)) luaL_error(L, "wire: $b: not base64");
        luaL_Buffer b;
        unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, n / 4 * 3 + 1);
        int len = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);
        if (len < (int)pad) luaL_error(L, "wire: $b: not base64");
        luaL_pushresultsize(&b, (size_t)len - pad); /* DecodeBlock counts the padding */
        lua_remove(L, -2);
        return;
    }
    case 'n': {
        dec_value(d, depth + 1);
        const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
        double v = strcmp(s, "nan") == 0    ? NAN
                   : strcmp(s, "inf") == 0  ? HUGE_VAL
                   : strcmp(s, "-inf") == 0 ? -HUGE_VAL
                                            : 0;
        if (v == 0) luaL_error(L, "wire: $n: not nan, inf or -inf");
        lua_pop(L, 1);
        lua_pushnumber(L, v);
        return;
    }
    case 'm': {
        dec_value(d, depth + 1);
        if (!lua_istable(L, -1)) luaL_error(L, "wire: $m: not a list of pairs");
        lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
        lua_createtable(L, 0, (int)(n < 1 << 16 ? n : 1 << 16));
        for (lua_Integer i = 1; i <= n; i++) {
            if (lua_rawgeti(L, -2, i) != LUA_TTABLE || lua_rawlen(L, -1) != 2)
                luaL_error(L, "wire: $m: not a list of pairs");
            lua_rawgeti(L, -1, 1);
            lua_rawgeti(L, -2, 2);
            if (lua_isnil(L, -2) || (lua_type(L, -2) == LUA_TNUMBER && isnan(lua_tonumber(L, -2))))
                luaL_error(L, "wire: $m: a key that cannot be one");
            lua_rawset(L, -4);
            lua_pop(L, 1);
        }
        lua_remove(L, -2);
        return;
    }
    default: {
        char key[2] = {tag, '\0'};
        if (d->tags == 0 || lua_getfield(L, d->tags, key) != LUA_TFUNCTION)
            luaL_error(L, "wire: unknown tag '$%s'", key);
        dec_value(d, depth + 1);
        lua_call(L, 1, 1);
    }
    }
}

static void dec_object(Dec *d, int depth)
{
    lua_State *L = d->L;
    skip_ws(d);
    if (d->p < d->end && *d->p == '}') {
        d->p++;
        lua_newtable(L);
        return;
    }
    int first = 1;
    for (;;) {
        skip_ws(d);
        if (d->p >= d->end || *d->p != '"') dec_fail(d, "a key expected");
        d->p++;
        dec_string(d); /* the key */
        size_t klen;
        const char *k = lua_tolstring(L, -1, &klen);
        skip_ws(d);
        if (d->p >= d->end || *d->p != ':') dec_fail(d, "':' expected");
        d->p++;
        skip_ws(d);
        if (k[0] == '$' && klen == 2 && k[1] != '$') { /* a tag: the only key of its object */
            if (!first) luaL_error(L, "wire: a key '%s' that is not escaped", k);
            char tag = k[1];
            lua_pop(L, 1);
            if (!((tag >= 'a' && tag <= 'z') || (tag >= 'A' && tag <= 'Z')))
                luaL_error(L, "wire: a key '$%c' that is not escaped", tag);
            dec_tag(d, tag, depth);
            skip_ws(d);
            if (d->p >= d->end || *d->p != '}')
                luaL_error(L, "wire: a tag with other keys beside it");
            d->p++;
            return;
        }
        if (k[0] == '$' && k[1] != '$') luaL_error(L, "wire: a key '%s' that is not escaped", k);
        if (memchr(k, '\0', klen) || !valid_utf8((const unsigned char *)k, klen))
            luaL_error(L, "wire: a table key that is not text (a NUL byte, or not UTF-8)");
        if (first) {
            lua_newtable(L);
            lua_insert(L, -2);
            first = 0;
        }
        if (k[0] == '$') { /* "$$x" is the playbook's "$x" */
            lua_pushlstring(L, k + 1, klen - 1);
            lua_replace(L, -2);
        }
        dec_value(d, depth + 1);
        lua_rawset(L, -3);
        skip_ws(d);
        if (d->p < d->end && *d->p == ',') {
            d->p++;
            continue;
        }
        if (d->p < d->end && *d->p == '}') {
            d->p++;
            return;
        }
        dec_fail(d, "',' or '}' expected");
    }
}

static void dec_value(Dec *d, int depth)
{
    lua_State *L = d->L;
    if (depth > MAX_DEPTH) luaL_error(L, "wire: data nested too deep");
    luaL_checkstack(L, 8, "data nested too deep");
    skip_ws(d);
    if (d->p >= d->end) dec_fail(d, "a value expected");
    char c = *d->p;
    switch (c) {
    case '{':
        d->p++;
        dec_object(d, depth);
        return;
    case '[': {
        d->p++;
        lua_newtable(L);
        skip_ws(d);
        if (d->p < d->end && *d->p == ']') {
            d->p++;
            return;
        }
        for (lua_Integer i = 1;; i++) {
            dec_value(d, depth + 1);
            lua_rawseti(L, -2, i);
            skip_ws(d);
            if (d->p < d->end && *d->p == ',') {
                d->p++;
                continue;
            }
            if (d->p < d->end && *d->p == ']') {
                d->p++;
                return;
            }
            dec_fail(d, "',' or ']' expected");
        }
    }
    case '"':
        d->p++;
        dec_string(d);
        return;
    case 't':
        if (word(d, "true")) {
            lua_pushboolean(L, 1);
            return;
        }
        break;
    case 'f':
        if (word(d, "false")) {
            lua_pushboolean(L, 0);
            return;
        }
        break;
    case 'n':
        if (word(d, "null")) {
            lua_pushnil(L);
            return;
        }
        break;
    default:
        if (c == '-' || (c >= '0' && c <= '9')) {
            dec_number(d);
            return;
        }
    }
    dec_fail(d, "a value expected");
}

/* wire.decode(text [, tags]) → value; tags: {X = function(payload) → value} */
static int wire_decode(lua_State *L)
{
    size_t n;
    const char *text = luaL_checklstring(L, 1, &n);
    Dec d = {L, text, text, text + n, lua_istable(L, 2) ? 2 : 0};
    lua_settop(L, 2);
    dec_value(&d, 0);
    skip_ws(&d);
    if (d.p != d.end) dec_fail(&d, "more after the value");
    return 1;
}

/* }====================================================== */

/* {======================================================
** Channels: lines over a pair of file descriptors
** ======================================================= */

typedef struct Channel {
    int rfd, wfd;
    int busy; /* in a send or recv: a finalizer that runs meanwhile may not use it */
    char *buf;
    size_t len, cap, scanned;
} Channel;

static Channel *tochannel(lua_State *L)
{
    return luaL_checkudata(L, 1, CHANNEL_TYPE);
}

/* wire.channel(rfd, wfd) → a channel that owns both descriptors (wfd made non-blocking:
** a send waits in poll, where the deadline and interrupts reach it) */
static int wire_channel(lua_State *L)
{
    int rfd = (int)luaL_checkinteger(L, 1), wfd = (int)luaL_checkinteger(L, 2);
    Channel *c = lua_newuserdatauv(L, sizeof(Channel), 0);
    memset(c, 0, sizeof *c);
    c->rfd = rfd;
    c->wfd = wfd;
    luaL_setmetatable(L, CHANNEL_TYPE);
    int fl = fcntl(wfd, F_GETFL);
    if (fl >= 0) fcntl(wfd, F_SETFL, fl | O_NONBLOCK);
    return 1;
}

/* How long a wait spins before it sleeps. Engine and playbook process answer each other
** at once, and a pipe's wake-up across CPUs costs ~60 µs on a VM: spinning this long
** first makes a round trip ~2 µs (bench/boundary.sh); a longer wait then sleeps. */
#define SPIN_SECONDS 150e-6

/* Spins until fd is ready for `events` or SPIN_SECONDS pass: 1 when it is. */
static int spin(int fd, short events)
{
    double end = hrun_monotime() + SPIN_SECONDS;
    struct pollfd p = {fd, events, 0};
    do {
        if (poll(&p, 1, 0) > 0) return 1;
    } while (hrun_monotime() < end);
    return 0;
}

/* Waits until fd is ready for `events`: 0, or with watch the reason it stopped
** ("interrupted", "timeout"), in slices of 0.1 s that call the runner's ticker. */
static const char *wait_fd(lua_State *L, int fd, short events, int watch)
{
    if (spin(fd, events)) return NULL;
    for (;;) {
        int ms = -1;
        if (watch) {
            if (hrun_interrupted()) return "interrupted";
            double deadline = hrun_deadline(L), left = deadline - hrun_monotime();
            if (deadline > 0 && left <= 0) return "timeout";
            ms = deadline > 0 && left < 0.1 ? (int)(left * 1000) + 1 : 100;
        }
        struct pollfd p = {fd, events, 0};
        int r = poll(&p, 1, ms);
        if (r > 0) return NULL;
        if (r == 0 && watch) hrun_tick(L);
    }
}

/* [-0, +2, -] nil and why: how a send or receive that did not happen answers */
static int nil_why(lua_State *L, const char *why)
{
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
}

static int refuse_reentry(lua_State *L, Channel *c)
{
    if (c->busy) return luaL_error(L, "wire: the channel is in use (a finalizer called across it)");
    return 0;
}

/* ch:send(text [, watch]) → true | nil, why ("closed", "interrupted", "timeout", an
** error): text and a newline, whole */
static int ch_send(lua_State *L)
{
    Channel *c = tochannel(L);
    size_t n;
    const char *text = luaL_checklstring(L, 2, &n);
    int watch = lua_toboolean(L, 3);
    refuse_reentry(L, c);
    if (c->wfd < 0) return nil_why(L, "closed");
    struct iovec iov[2] = {{(void *)text, n}, {"\n", 1}};
    int k = 0;
    while (k < 2) {
        ssize_t w = writev(c->wfd, iov + k, 2 - k);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            const char *why = wait_fd(L, c->wfd, POLLOUT, watch);
            if (why == NULL) continue;
            return nil_why(L, why);
        }
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

/*
** ch:recv([maxlen [, watch]]) → line | nil, why ("eof", "too long", "timeout",
** "interrupted", or an error). With watch, an interrupt (Ctrl-C, SIGTERM) and the step's
** deadline end the wait, and the runner's ticker is called.
*/
static int ch_recv(lua_State *L)
{
    Channel *c = tochannel(L);
    size_t max = (size_t)luaL_optinteger(L, 2, 1 << 30);
    int watch = lua_toboolean(L, 3);
    refuse_reentry(L, c);
    for (;;) {
        char *nl =
            c->len > c->scanned ? memchr(c->buf + c->scanned, '\n', c->len - c->scanned) : NULL;
        if (nl) {
            size_t n = (size_t)(nl - c->buf);
            c->busy = 1; /* the string's allocation may run a finalizer: it may not read on */
            lua_pushlstring(L, c->buf, n);
            memmove(c->buf, c->buf + n + 1, c->len - n - 1);
            c->len -= n + 1;
            c->scanned = 0;
            c->busy = 0;
            return 1;
        }
        c->scanned = c->len;
        if (c->len > max) return nil_why(L, "too long");
        if (c->rfd < 0) return nil_why(L, "eof");
        const char *why = wait_fd(L, c->rfd, POLLIN, watch);
        if (why) return nil_why(L, why);
        if (c->cap - c->len < 65536) {
            size_t cap = c->cap ? c->cap * 2 : 65536 * 2;
            if (cap > max + 65536 && max + 65536 > c->cap) cap = max + 65536; /* the longest line */
            char *b = realloc(c->buf, cap);
            if (b == NULL) return luaL_error(L, "not enough memory");
            c->buf = b;
            c->cap = cap;
        }
        ssize_t r = read(c->rfd, c->buf + c->len, c->cap - c->len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return luaL_fileresult(L, 0, NULL);
        if (r == 0) return nil_why(L, "eof");
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

/*
** wire.select(channels [, seconds]) → i | nil, why ("timeout", "interrupted"): the first
** of a list of channels with a whole line to read, or at its end, so that its recv does
** not wait for another; waiting at most seconds (none: until one is). An interrupt
** (Ctrl-C, SIGTERM) ends the wait; the runner's ticker is called meanwhile. One process
** serving many children at once (a fleet's hosts) waits here.
*/
#define SELECT_MAX 1024

static int wire_select(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    double seconds = luaL_optnumber(L, 2, -1);
    lua_Integer n = luaL_len(L, 1);
    if (n > SELECT_MAX) return luaL_error(L, "wire.select: more than %d channels", SELECT_MAX);
    struct pollfd *p = lua_newuserdatauv(L, sizeof(struct pollfd) * (size_t)(n ? n : 1), 0);
    int *which = lua_newuserdatauv(L, sizeof(int) * (size_t)(n ? n : 1), 0);
    int k = 0;
    for (int i = 1; i <= (int)n; i++) {
        lua_rawgeti(L, 1, i);
        Channel *c = luaL_checkudata(L, -1, CHANNEL_TYPE);
        lua_pop(L, 1);
        int whole = c->len > c->scanned && memchr(c->buf + c->scanned, '\n', c->len - c->scanned);
        if (whole || c->rfd < 0) {
            lua_pushinteger(L, i);
            return 1;
        }
        p[k] = (struct pollfd){c->rfd, POLLIN, 0};
        which[k++] = i;
    }
    double end = seconds >= 0 ? hrun_monotime() + seconds : 0;
    for (;;) {
        if (hrun_interrupted()) return nil_why(L, "interrupted");
        int ms = 100;
        if (seconds >= 0) {
            double left = end - hrun_monotime();
            if (left <= 0) return nil_why(L, "timeout");
            if (left < 0.1) ms = (int)(left * 1000) + 1;
        }
        int r = poll(p, (nfds_t)k, ms);
        if (r < 0 && errno != EINTR) return luaL_error(L, "wire.select: poll: %s", strerror(errno));
        for (int j = 0; r > 0 && j < k; j++)
            if (p[j].revents) {
                lua_pushinteger(L, which[j]);
                return 1;
            }
        if (r == 0) hrun_tick(L);
    }
}

/* }====================================================== */

int luaopen_hrun_wire(lua_State *L)
{
    static const luaL_Reg funcs[] = {{"encode", wire_encode},
                                     {"decode", wire_decode},
                                     {"channel", wire_channel},
                                     {"select", wire_select},
                                     {NULL, NULL}};
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
