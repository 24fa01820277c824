/*
** mod_json.c — the `json` module, through jansson: integers stay integers (64-bit),
** strings are checked UTF-8, object keys are sorted so the same table always gives
** the same text. A table is an array when its keys are exactly 1..n; json.array and
** json.object say which an empty (or any) table is; decoded arrays keep that mark so
** they encode back as arrays. A table whose metatable has __tojson is encoded as what
** that function returns (proxies, read-only views).
*/
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

#define DOC_TYPE  "hrun.json.doc"
#define ARRAY_MT  "hrun.json.array"
#define OBJECT_MT "hrun.json.object"
#define MAX_DEPTH 200

int hrun_json_reveal;

/* json.null: a light userdata no other value equals */
static const char null_sentinel;
#define JSON_NULLP ((void *)&null_sentinel)

/* {======================================================
** Lua -> JSON. Builds the jansson tree without raising (it is malloc'd), then raises
** if something could not be encoded, after freeing it.
** ======================================================= */

typedef struct Enc {
    lua_State *L;
    const void *seen[MAX_DEPTH]; /* tables on the current path, for cycles */
    int depth;
    char where[512]; /* "$.a[3].b": where the first error is */
    char err[160];
} Enc;

static void enc_error(Enc *e, const char *msg)
{
    if (e->err[0] == '\0') snprintf(e->err, sizeof e->err, "%s", msg);
}

/* Appends ".key" or "[i]" to e->where while the walk is below it; returns old length. */
static size_t where_push(Enc *e, int idx)
{
    size_t len = strlen(e->where);
    lua_State *L = e->L;
    if (lua_type(L, idx) == LUA_TSTRING)
        snprintf(e->where + len, sizeof e->where - len, ".%s", lua_tostring(L, idx));
    else if (lua_isinteger(L, idx))
        snprintf(e->where + len, sizeof e->where - len, "[%lld]", (long long)lua_tointeger(L, idx));
    return len;
}

static json_t *to_json(Enc *e, int idx);

static int table_kind(lua_State *L, int idx, size_t *n)
{
    if (lua_getmetatable(L, idx)) {
        luaL_getmetatable(L, ARRAY_MT);
        int arr = lua_rawequal(L, -1, -2);
        luaL_getmetatable(L, OBJECT_MT);
        int obj = lua_rawequal(L, -1, -3);
        lua_pop(L, 3);
        if (arr || obj) {
            *n = lua_rawlen(L, idx);
            return arr ? 'a' : 'o';
        }
    }
    size_t count = 0, maxi = 0;
    int strs = 0, ints = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        count++;
        if (lua_type(L, -1) == LUA_TSTRING)
            strs = 1;
        else if (lua_isinteger(L, -1) && lua_tointeger(L, -1) > 0) {
            ints = 1;
            if ((size_t)lua_tointeger(L, -1) > maxi) maxi = (size_t)lua_tointeger(L, -1);
        } else {
            lua_pop(L, 1);
            return 'x'; /* a key JSON cannot have */
        }
    }
    *n = maxi;
    if (strs && ints) return 'm';
    if (ints) return maxi == count ? 'a' : 's';
    return 'o';
}

static json_t *table_to_json(Enc *e, int idx)
{
    lua_State *L = e->L;
    /* a proxy (a read-only view, say) says what it stands for through __tojson; a
    ** playbook's function, it never runs while secrets are revealed (http's json): a
    ** json.encode in it would hand it their bytes */
    if (luaL_getmetafield(L, idx, "__tojson") != LUA_TNIL) {
        int reveal = hrun_json_reveal;
        lua_pushvalue(L, idx);
        hrun_json_reveal = 0;
        int status = lua_pcall(L, 1, 1, 0);
        hrun_json_reveal = reveal;
        if (status != LUA_OK) {
            enc_error(e, lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "__tojson failed");
            lua_pop(L, 1);
            return NULL;
        }
        json_t *v = lua_type(L, -1) == LUA_TTABLE && lua_topointer(L, -1) == lua_topointer(L, idx)
                        ? (enc_error(e, "__tojson returned the table itself"), NULL)
                        : to_json(e, lua_gettop(L));
        lua_pop(L, 1);
        return v;
    }
    const void *p = lua_topointer(L, idx);
    for (int i = 0; i < e->depth; i++)
        if (e->seen[i] == p) return enc_error(e, "cycle: a table contains itself"), NULL;
    if (e->depth == MAX_DEPTH) return enc_error(e, "nested too deep"), NULL;
    if (!lua_checkstack(L, 6)) return enc_error(e, "stack overflow"), NULL;
    size_t n;
    int kind = table_kind(L, idx, &n);
    if (kind == 'x')
        return enc_error(e, "a table key that is neither a string nor a positive integer"), NULL;
    if (kind == 'm') return enc_error(e, "a table with both string and integer keys"), NULL;
    if (kind == 's') return enc_error(e, "a sparse array (integer keys with holes)"), NULL;
    e->seen[e->depth++] = p;
    json_t *out = kind == 'a' ? json_array() : json_object();
    if (out == NULL) enc_error(e, "not enough memory");
    if (kind == 'a') {
        for (size_t i = 1; out && i <= n; i++) {
            lua_pushinteger(L, (lua_Integer)i);
            size_t len = where_push(e, -1);
            lua_rawget(L, idx);
            json_t *v = to_json(e, lua_gettop(L));
            lua_pop(L, 1);
            if (v == NULL || json_array_append_new(out, v) < 0) {
                json_decref(out), out = NULL;
                break;
            }
            e->where[len] = '\0';
        }
    } else {
        lua_pushnil(L);
        while (out && lua_next(L, idx)) {
            if (lua_type(L, -2) != LUA_TSTRING) { /* an object's integer keys: marked object */
                lua_pop(L, 2);
                enc_error(e, "an object key that is not a string");
                json_decref(out), out = NULL;
                break;
            }
            size_t klen, len = where_push(e, -2);
            const char *k = lua_tolstring(L, -2, &klen);
            json_t *v = to_json(e, lua_gettop(L));
            lua_pop(L, 1);
            if (v == NULL) {
                lua_pop(L, 1);
                json_decref(out), out = NULL;
                break;
            }
            if (json_object_setn_new(out, k, klen, v) < 0) {
                lua_pop(L, 1);
                enc_error(e, "a key that is not valid UTF-8");
                json_decref(out), out = NULL;
                break;
            }
            e->where[len] = '\0';
        }
    }
    e->depth--;
    return out;
}

static json_t *to_json(Enc *e, int idx)
{
    lua_State *L = e->L;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return json_null();
    case LUA_TBOOLEAN:
        return json_boolean(lua_toboolean(L, idx));
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) return json_integer((json_int_t)lua_tointeger(L, idx));
        if (!isfinite(lua_tonumber(L, idx))) return enc_error(e, "NaN or infinity"), NULL;
        return json_real(lua_tonumber(L, idx));
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        json_t *v = json_stringn(s, len);
        if (v == NULL) enc_error(e, "a string that is not valid UTF-8");
        return v;
    }
    case LUA_TTABLE:
        return table_to_json(e, idx);
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == JSON_NULLP) return json_null();
        break;
    case LUA_TUSERDATA: {
        size_t len;
        const char *s = hrun_tosecret(L, idx, &len);
        if (s == NULL) break;
        if (!hrun_json_reveal) return json_string("<secret>");
        json_t *v = json_stringn(s, len);
        if (v == NULL) enc_error(e, "a secret that is not valid UTF-8");
        return v;
    }
    default:
        break;
    }
    char msg[64];
    snprintf(msg, sizeof msg, "a value of type %s", luaL_typename(L, idx));
    enc_error(e, msg);
    return NULL;
}

/* }====================================================== */

static int doc_close(lua_State *L)
{
    json_t **doc = luaL_checkudata(L, 1, DOC_TYPE);
    if (*doc) json_decref(*doc);
    *doc = NULL;
    return 0;
}

/* [-0, +1, m] A to-be-closed box that owns a jansson tree. */
static json_t **doc_new(lua_State *L)
{
    json_t **doc = lua_newuserdatauv(L, sizeof(json_t *), 0);
    *doc = NULL;
    hrun_setclose(L, DOC_TYPE, doc_close, NULL);
    lua_toclose(L, -1);
    return doc;
}

static const char *const encode_options[] = {"indent", "sort_keys", NULL};

/*
** json.encode(value [, {indent = 0, sort_keys = true}]) → string
** Raises for what JSON cannot say (functions, cycles, NaN, mixed or sparse keys,
** invalid UTF-8), naming where in the value it is.
*/
int hrun_json_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    hrun_checkopts(L, 2, encode_options);
    lua_Integer indent = hrun_optinteger(L, 2, "indent", 0);
    int sort = hrun_optbool(L, 2, "sort_keys", 1);
    if (indent < 0 || indent > 31) luaL_argerror(L, 2, "field 'indent': 0 to 31 expected");
    lua_settop(L, 2);
    json_t **doc = doc_new(L);
    Enc *e = lua_newuserdatauv(L, sizeof(Enc), 0);
    e->L = L, e->depth = 0, e->err[0] = '\0';
    snprintf(e->where, sizeof e->where, "$");
    *doc = to_json(e, 1);
    if (*doc == NULL) return luaL_error(L, "json.encode: cannot encode %s at %s", e->err, e->where);
    size_t flags = JSON_ENCODE_ANY | JSON_REAL_PRECISION(17) | (sort ? JSON_SORT_KEYS : 0) |
                   (indent ? JSON_INDENT(indent) : JSON_COMPACT);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    size_t size = json_dumpb(*doc, NULL, 0, flags);
    char *p = luaL_prepbuffsize(&b, size);
    luaL_addsize(&b, json_dumpb(*doc, p, size, flags));
    luaL_pushresult(&b);
    return 1;
}

/* {======================================================
** JSON -> Lua
** ======================================================= */

/* Is v nested deeper than MAX_DEPTH levels (what json.encode refuses), counting from depth? */
static int too_deep(json_t *v, int depth)
{
    if (depth >= MAX_DEPTH) return 1;
    size_t i;
    const char *k;
    json_t *item;
    if (json_is_array(v)) {
        json_array_foreach(v, i, item) if (too_deep(item, depth + 1)) return 1;
    } else if (json_is_object(v)) {
        json_object_foreach(v, k, item) if (too_deep(item, depth + 1)) return 1;
    }
    return 0;
}

static void push_json(lua_State *L, json_t *v, int depth)
{
    luaL_checkstack(L, 4, "json.decode");
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *item;
        lua_createtable(L, 0, (int)json_object_size(v));
        json_object_foreach(v, k, item)
        {
            lua_pushlstring(L, k, json_object_iter_key_len(json_object_key_to_iter(k)));
            push_json(L, item, depth + 1);
            lua_rawset(L, -3);
        }
        break;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *item;
        lua_createtable(L, (int)json_array_size(v), 0);
        json_array_foreach(v, i, item)
        {
            push_json(L, item, depth + 1);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        luaL_setmetatable(L, ARRAY_MT);
        break;
    }
    case JSON_STRING:
        lua_pushlstring(L, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        lua_pushinteger(L, (lua_Integer)json_integer_value(v));
        break;
    case JSON_REAL:
        lua_pushnumber(L, json_real_value(v));
        break;
    case JSON_TRUE:
        lua_pushboolean(L, 1);
        break;
    case JSON_FALSE:
        lua_pushboolean(L, 0);
        break;
    case JSON_NULL:
        lua_pushlightuserdata(L, JSON_NULLP);
        break;
    }
}

/* json.decode(text) → value | nil, "json.decode: line L column C: why", "EJSON" */
int hrun_json_decode(lua_State *L)
{
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    lua_settop(L, 1);
    json_t **doc = doc_new(L);
    json_error_t err;
    *doc = json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
    /* past a sandbox's memory limit (runtime/confine.c charges jansson to it): as Lua's own
    ** allocations there, an error the runner explains as the limit */
    if (*doc == NULL && hrun_heap_hit()) return luaL_error(L, "not enough memory");
    if (*doc == NULL)
        return hrun_failf(L, "EJSON", "json.decode: line %d column %d: %s", err.line, err.column,
                          err.text);
    /* found by tests/fuzz (corpus/json/deep-201.json): this was a raise, not a value */
    if (too_deep(*doc, 0))
        return hrun_failf(L, "EJSON", "json.decode: nested deeper than %d levels", MAX_DEPTH);
    push_json(L, *doc, 0);
    return 1;
}

/* }====================================================== */

static int mark(lua_State *L, const char *mt)
{
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    if (lua_getmetatable(L, 1)) {
        luaL_getmetatable(L, ARRAY_MT);
        luaL_getmetatable(L, OBJECT_MT);
        if (!lua_rawequal(L, -1, -3) && !lua_rawequal(L, -2, -3))
            luaL_argerror(L, 1, "table already has a metatable");
    }
    lua_settop(L, 1);
    luaL_setmetatable(L, mt);
    return 1;
}

/* json.array([t]) → t, marked to encode as a JSON array (even when empty) */
static int json_array_(lua_State *L)
{
    return mark(L, ARRAY_MT);
}

/* json.object([t]) → t, marked to encode as a JSON object (even when empty) */
static int json_object_(lua_State *L)
{
    return mark(L, OBJECT_MT);
}

static const hrun_Prim json_prims[] = {
    {.name = "encode", .func = hrun_json_encode, .kind = HRUN_PURE},
    {.name = "decode", .func = hrun_json_decode, .kind = HRUN_PURE},
    {.name = "array", .func = json_array_, .kind = HRUN_PURE},
    {.name = "object", .func = json_object_, .kind = HRUN_PURE},
    {0},
};

int luaopen_hrun_json(lua_State *L)
{
    luaL_newmetatable(L, ARRAY_MT);
    lua_pushliteral(L, "array");
    lua_setfield(L, -2, "__name");
    luaL_newmetatable(L, OBJECT_MT);
    lua_pushliteral(L, "object");
    lua_setfield(L, -2, "__name");
    lua_pop(L, 2);
    hrun_newmodule(L, "json", json_prims);
    lua_pushlightuserdata(L, JSON_NULLP);
    lua_setfield(L, -2, "null");
    return 1;
}
