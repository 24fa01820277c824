/*
** mod_http.c — the `http` module through libcurl: requests with JSON bodies, headers,
** redirects, connect and total timeouts, TLS verified by default, unix sockets; and
** `http.wait`, the health check. Status codes are values, not errors: a 503 is an
** answer. What fails is reaching the server (refused, timed out, TLS), with a code.
*/
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "internal.h"

#define MAX_BODY_DEFAULT (64 << 20) /* bytes of a response kept, unless max_body says */

/* {======================================================
** One transfer
** ======================================================= */

typedef struct Transfer {
    CURL *curl;
    CURLU *url;  /* the URL of the hop being made (hrun_urlparse: the sandbox read it) */
    CURLU *next; /* the next hop's, while it is checked */
    struct curl_slist *headers;
    char *body; /* the response's bytes (malloc'd, the userdata's close frees them) */
    size_t got, size, max_body;
    int too_big, no_memory;
    lua_State *L;
    int resp_headers; /* stack index of the response headers table */
    double deadline;  /* the step's (monotonic), 0: none */
    int interrupted, past_deadline;
} Transfer;

static int transfer_close(lua_State *L)
{
    Transfer *t = lua_touserdata(L, 1);
    if (t->curl) curl_easy_cleanup(t->curl);
    if (t->url) curl_url_cleanup(t->url);
    if (t->next) curl_url_cleanup(t->next);
    if (t->headers) curl_slist_free_all(t->headers);
    free(t->body);
    t->curl = NULL, t->url = NULL, t->next = NULL, t->headers = NULL, t->body = NULL;
    return 0;
}

static size_t on_body(char *data, size_t size, size_t n, void *ud)
{
    Transfer *t = ud;
    size_t len = size * n;
    if (t->got + len > t->max_body) {
        t->too_big = 1;
        return 0; /* stops the transfer: CURLE_WRITE_ERROR */
    }
    if (t->got + len > t->size) {
        size_t want = t->size ? t->size : 16384;
        while (want < t->got + len) want *= 2;
        char *more = realloc(t->body, want);
        if (more == NULL) return t->no_memory = 1, 0;
        t->body = more, t->size = want;
    }
    memcpy(t->body + t->got, data, len);
    t->got += len;
    return len;
}

/* Response headers into the table at t->resp_headers: lower-case names; a repeated one
** joined with ", " (as RFC 9110 allows); a new response (after a redirect) starts over. */
static size_t on_header(char *data, size_t size, size_t n, void *ud)
{
    Transfer *t = ud;
    lua_State *L = t->L;
    size_t len = size * n;
    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) { /* a status line: a new response */
        lua_newtable(L);
        lua_replace(L, t->resp_headers);
        return len;
    }
    const char *colon = memchr(data, ':', len);
    if (colon == NULL) return len;
    size_t nl = (size_t)(colon - data);
    const char *v = colon + 1, *end = data + len;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ')) end--;
    char name[256];
    if (nl == 0 || nl >= sizeof name) return len;
    for (size_t i = 0; i < nl; i++) name[i] = (char)tolower((unsigned char)data[i]);
    lua_pushlstring(L, name, nl);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, t->resp_headers) == LUA_TSTRING) {
        lua_pushliteral(L, ", ");
        lua_pushlstring(L, v, (size_t)(end - v));
        lua_concat(L, 3);
    } else {
        lua_pop(L, 1);
        lua_pushlstring(L, v, (size_t)(end - v));
    }
    lua_rawset(L, t->resp_headers);
    return len;
}

/* Interrupts and the step's deadline stop a transfer at once. */
static int on_progress(void *ud, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    Transfer *t = ud;
    (void)a, (void)b, (void)c, (void)d;
    if (hrun_interrupted()) return t->interrupted = 1;
    if (t->deadline > 0 && hrun_monotime() >= t->deadline) return t->past_deadline = 1;
    return 0;
}

/* The code a program can test for a failed transfer. */
static const char *code_of(CURLcode rc)
{
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
        return "ECONNREFUSED";
    case CURLE_OPERATION_TIMEDOUT:
        return "ETIMEDOUT";
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return "EHOST";
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
        return "ETLS";
    case CURLE_TOO_MANY_REDIRECTS:
        return "EREDIRECT";
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
        return "EURL";
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
        return "ECONNRESET";
    default:
        return "ECURL";
    }
}

/* }====================================================== */

static const char *const request_options[] = {
    "method",          "headers",  "body",   "json",        "timeout",
    "connect_timeout", "insecure", "cacert", "unix_socket", "follow",
    "max_redirects",   "max_body", NULL};

/* [-0, +0, v] A string option that must not hold NUL bytes (curl takes C strings). */
static const char *opt_cstring(lua_State *L, int arg, const char *name)
{
    size_t len;
    const char *s = hrun_optstring(L, arg, name, NULL, &len);
    if (s && strlen(s) != len)
        luaL_argerror(L, arg, lua_pushfstring(L, "field '%s': contains a NUL byte", name));
    return s;
}

/* [-0, +0, v] A string option read raw (no __index may show the sandbox's check one
** socket and the request another), that must not hold NUL bytes. */
static const char *opt_raw(lua_State *L, int arg, const char *name)
{
    if (lua_type(L, arg) != LUA_TTABLE) return NULL;
    lua_pushstring(L, name);
    int type = lua_rawget(L, arg);
    lua_pop(L, 1); /* the table keeps the string */
    if (type == LUA_TNIL) return NULL;
    if (type != LUA_TSTRING)
        luaL_argerror(L, arg, lua_pushfstring(L, "field '%s': string expected", name));
    return opt_cstring(L, arg, name);
}

/* Is name: value (a request header) one that must not go to another origin? */
static int credential_header(const char *h)
{
    static const char *const names[] = {"authorization", "cookie", NULL};
    for (const char *const *n = names; *n; n++) {
        size_t len = strlen(*n);
        if (strncasecmp(h, *n, len) == 0 && (h[len] == ':' || h[len] == ';')) return 1;
    }
    return 0;
}

/* Do a and b name the same origin (scheme, host and port)? */
static int same_origin(CURLU *a, CURLU *b)
{
    static const CURLUPart parts[] = {CURLUPART_SCHEME, CURLUPART_HOST, CURLUPART_PORT};
    int same = 1;
    for (size_t i = 0; i < 3 && same; i++) {
        char *x = NULL, *y = NULL;
        curl_url_get(a, parts[i], &x, CURLU_DEFAULT_PORT);
        curl_url_get(b, parts[i], &y, CURLU_DEFAULT_PORT);
        same = x && y && strcasecmp(x, y) == 0;
        curl_free(x), curl_free(y);
    }
    return same;
}

/* The request headers without credentials (as libcurl does on a redirect to another
** origin): 0, or -1 when out of memory. */
static int drop_credentials(Transfer *t)
{
    struct curl_slist *kept = NULL;
    for (struct curl_slist *h = t->headers; h; h = h->next) {
        if (credential_header(h->data)) continue;
        struct curl_slist *n = curl_slist_append(kept, h->data);
        if (n == NULL) return curl_slist_free_all(kept), -1;
        kept = n;
    }
    curl_slist_free_all(t->headers);
    t->headers = kept;
    return 0;
}

/* The method of a request (and whether it keeps its body) after a redirect with status:
** 303 makes it a GET (HEAD stays), 301 and 302 make a POST a GET, as browsers and
** libcurl do; 307 and 308 keep both. */
static const char *redirected_method(const char *method, long status, int *keep_body)
{
    *keep_body = 1;
    if ((status == 303 && strcmp(method, "HEAD") != 0) ||
        ((status == 301 || status == 302) && strcmp(method, "POST") == 0)) {
        *keep_body = 0;
        return "GET";
    }
    return method;
}

/*
** The body of http.request: (url, opts) → {status, headers, body, json, url, seconds} |
** nil, message, code. `what` names the function in messages.
**
** Redirects are followed here, not by libcurl: each hop's URL is checked by the sandbox
** before anything is sent to it (a refusal raises, naming the URL and the capability it
** needs), and only http and https are followed.
*/
static int request(lua_State *L, const char *what)
{
    size_t urllen;
    if (lua_type(L, 1) != LUA_TSTRING) luaL_typeerror(L, 1, "string (a URL)");
    const char *url = lua_tolstring(L, 1, &urllen);
    if (strlen(url) != urllen || urllen == 0) luaL_argerror(L, 1, "not a URL");
    hrun_checkopts(L, 2, request_options);
    lua_settop(L, 2);
    const char *method = opt_cstring(L, 2, "method");
    const char *cacert = opt_cstring(L, 2, "cacert");
    const char *sock = opt_raw(L, 2, "unix_socket");
    double timeout = hrun_optnumber(L, 2, "timeout", 30);
    double ctimeout = hrun_optnumber(L, 2, "connect_timeout", 10);
    int insecure = hrun_optbool(L, 2, "insecure", 0);
    int follow = hrun_optbool(L, 2, "follow", 1);
    lua_Integer max_redirects = hrun_optinteger(L, 2, "max_redirects", 10);
    lua_Integer max_body = hrun_optinteger(L, 2, "max_body", MAX_BODY_DEFAULT);
    if (timeout <= 0) luaL_argerror(L, 2, "field 'timeout': must be positive");
    if (ctimeout <= 0) luaL_argerror(L, 2, "field 'connect_timeout': must be positive");
    if (max_body < 0) luaL_argerror(L, 2, "field 'max_body': must not be negative");
    if (hrun_interrupted()) return hrun_raiseinterrupt(L);

    Transfer *t = lua_newuserdatauv(L, sizeof(Transfer), 0); /* 3 */
    memset(t, 0, sizeof *t);
    hrun_setclose(L, "hrun.http.transfer", transfer_close, NULL);
    lua_toclose(L, 3);
    t->L = L;
    t->max_body = (size_t)max_body;
    if ((t->curl = curl_easy_init()) == NULL) return luaL_error(L, "%s: not enough memory", what);
    CURL *c = t->curl;

    /* the request body: body (a string), or json (a value, encoded into slot 4) */
    size_t blen = 0;
    const char *body = hrun_optbytes(L, 2, "body", &blen);
    lua_pushnil(L); /* 4 */
    if (lua_istable(L, 2)) {
        if (lua_getfield(L, 2, "json") != LUA_TNIL) {
            if (body) luaL_argerror(L, 2, "body and json exclude each other");
            lua_pushcfunction(L, hrun_json_encode);
            lua_insert(L, -2);
            hrun_json_reveal = 1; /* the request carries the secrets in it */
            int status = lua_pcall(L, 1, 1, 0);
            hrun_json_reveal = 0;
            if (status != LUA_OK) return lua_error(L);
            lua_replace(L, 4);
            body = lua_tolstring(L, 4, &blen);
        } else {
            lua_pop(L, 1);
        }
    }
    int has_json = !lua_isnil(L, 4);
    if (method == NULL) method = body ? "POST" : "GET";

    /* request headers: {name = value} */
    if (hrun_optfield(L, 2, "headers", LUA_TTABLE)) {
        int h = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, h)) {
            const char *value = hrun_tobytes(L, -1, NULL); /* a string or a secret */
            if (lua_type(L, -2) != LUA_TSTRING || value == NULL)
                luaL_argerror(L, 2, "field 'headers': {name = value} strings (or secrets)");
            const char *name = lua_tostring(L, -2);
            if (strpbrk(name, ":\r\n") || strpbrk(value, "\r\n"))
                luaL_argerror(L, 2, lua_pushfstring(L, "field 'headers': bad header '%s'", name));
            lua_pushfstring(L, *value ? "%s: %s" : "%s;", name, value);
            struct curl_slist *n = curl_slist_append(t->headers, lua_tostring(L, -1));
            if (n == NULL) return luaL_error(L, "%s: not enough memory", what);
            t->headers = n;
            lua_pop(L, 2);
        }
        lua_pop(L, 1);
    }
    if (has_json) {
        struct curl_slist *n = curl_slist_append(t->headers, "Content-Type: application/json");
        if (n == NULL) return luaL_error(L, "%s: not enough memory", what);
        t->headers = n;
    }

    /* the URL as the sandbox read it: libcurl is handed this parse, not the text again */
    int why;
    if ((t->url = hrun_urlparse(url, &why)) == NULL)
        return hrun_failf(L, "EURL", "%s: %s: %s", what, url, curl_url_strerror(why));

    lua_newtable(L); /* 5: response headers */
    t->resp_headers = lua_gettop(L);
    char errbuf[CURL_ERROR_SIZE] = "";
    double deadline = hrun_deadline(L);
    t->deadline = deadline;
    if (deadline > 0 && deadline - hrun_monotime() < timeout) timeout = deadline - hrun_monotime();
    if (timeout <= 0) return hrun_raisetimeout(L);

    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, t);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)(ctimeout * 1000));
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_USERAGENT, "hrun/" HRUN_VERSION);
    curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, "");
    if (insecure) {
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (cacert) curl_easy_setopt(c, CURLOPT_CAINFO, cacert);
    if (sock) curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, sock);

    double started = hrun_monotime();
    CURLcode rc;
    for (lua_Integer hops = 0;; hops++) {
        double left = timeout - (hrun_monotime() - started);
        curl_easy_setopt(c, CURLOPT_CURLU, t->url);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, t->headers);
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, left > 0.001 ? (long)(left * 1000) : 1L);
        if (body) {
            curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
        } else {
            curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
        }
        curl_easy_setopt(c, CURLOPT_NOBODY, strcmp(method, "HEAD") == 0 ? 1L : 0L);
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        t->got = 0;
        rc = curl_easy_perform(c);
        char *next = NULL;
        long status = 0;
        if (rc != CURLE_OK || !follow || curl_easy_getinfo(c, CURLINFO_REDIRECT_URL, &next) ||
            next == NULL)
            break;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        if (max_redirects >= 0 && hops >= max_redirects)
            return hrun_failf(L, "EREDIRECT", "%s: %s: Maximum (%d) redirects followed", what, url,
                              (int)max_redirects);
        lua_pushstring(L, next); /* libcurl's resolution of Location against this hop */
        const char *to = lua_tostring(L, -1);
        CURLU *hop = t->next = hrun_urlparse(to, &why); /* the transfer frees it */
        char *scheme = NULL;
        if (hop) curl_url_get(hop, CURLUPART_SCHEME, &scheme, 0);
        int web = scheme && (strcmp(scheme, "http") == 0 || strcmp(scheme, "https") == 0);
        curl_free(scheme);
        if (!web)
            return hrun_failf(L, "EREDIRECT",
                              "%s: %s: a redirect to %s: only http and https are followed", what,
                              url, to);
        /* through a unix socket every hop goes where the first went (already checked) */
        if (sock == NULL &&
            !hrun_sandbox_allows(L, lua_pushfstring(L, "%s's redirect to %s", what, to), "net", to))
            return lua_error(L);
        if (!same_origin(t->url, hop) && drop_credentials(t) < 0)
            return luaL_error(L, "%s: not enough memory", what);
        curl_url_cleanup(t->url);
        t->url = hop;
        t->next = NULL;
        int keep_body;
        method = redirected_method(method, status, &keep_body);
        if (!keep_body) body = NULL;
        lua_settop(L, t->resp_headers);
    }
    double seconds = hrun_monotime() - started;
    if (t->interrupted) return hrun_raiseinterrupt(L);
    if (t->past_deadline) return hrun_raisetimeout(L);
    if (t->no_memory) return luaL_error(L, "%s: not enough memory", what);
    if (rc != CURLE_OK) {
        if (t->too_big)
            return hrun_failf(L, "E2BIG", "%s: %s: the response is larger than max_body (%d bytes)",
                              what, url, (int)max_body);
        if (rc == CURLE_OPERATION_TIMEDOUT && deadline > 0 && hrun_monotime() >= deadline - 0.01)
            return hrun_raisetimeout(L);
        return hrun_failf(L, code_of(rc), "%s: %s: %s", what, url,
                          *errbuf ? errbuf : curl_easy_strerror(rc));
    }
    lua_pushlstring(L, t->body ? t->body : "", t->got); /* the body, on top of the headers */
    long status = 0;
    char *effective = NULL; /* the last hop's (libcurl's own may still name the first) */
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    lua_createtable(L, 0, 6);
    curl_url_get(t->url, CURLUPART_URL, &effective, 0);
    lua_pushstring(L, effective ? effective : url);
    curl_free(effective);
    lua_setfield(L, -2, "url");
    lua_pushinteger(L, status);
    lua_setfield(L, -2, "status");
    lua_pushvalue(L, t->resp_headers);
    lua_setfield(L, -2, "headers");
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "body");
    lua_pushnumber(L, seconds);
    lua_setfield(L, -2, "seconds");
    /* a JSON answer is decoded too (json = nil when it is not valid JSON) */
    lua_getfield(L, t->resp_headers, "content-type");
    const char *ctype = lua_tostring(L, -1);
    int is_json = ctype && (strstr(ctype, "application/json") || strstr(ctype, "+json"));
    lua_pop(L, 1);
    if (is_json) {
        lua_pushcfunction(L, hrun_json_decode);
        lua_pushvalue(L, -3);
        if (lua_pcall(L, 1, 1, 0) == LUA_OK)
            lua_setfield(L, -2, "json");
        else
            lua_pop(L, 1);
    }
    return 1;
}

/*
** http.request(url [, {method, headers, body, json, timeout = 30, connect_timeout = 10,
** insecure, cacert, unix_socket, follow = true, max_redirects = 10, max_body}])
** → {status, headers, body, json, url, seconds} | nil, message, code
*/
static int l_request(lua_State *L)
{
    return request(L, "http.request");
}

/* [-0, +0, m] The options at idx replaced by a copy of them (or a new table) with
** `key` set to the value on top (popped): the caller's table is not changed. */
static void set_opt(lua_State *L, int idx, const char *key)
{
    lua_newtable(L);
    if (lua_istable(L, idx)) {
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, -4);
        }
    } else if (!lua_isnil(L, idx)) {
        luaL_typeerror(L, idx, "table");
    }
    lua_insert(L, -2);
    lua_setfield(L, -2, key);
    lua_replace(L, idx);
}

/* http.get(url [, opts]) */
static int l_get(lua_State *L)
{
    lua_settop(L, 2);
    lua_pushliteral(L, "GET");
    set_opt(L, 2, "method");
    return request(L, "http.get");
}

/* http.head(url [, opts]) */
static int l_head(lua_State *L)
{
    lua_settop(L, 2);
    lua_pushliteral(L, "HEAD");
    set_opt(L, 2, "method");
    return request(L, "http.head");
}

/* http.post(url, body [, opts]): a string (or secret) body as it is, a table as JSON */
static int l_post(lua_State *L)
{
    lua_settop(L, 3);
    int t = lua_type(L, 2);
    if (t != LUA_TSTRING && t != LUA_TTABLE && !hrun_tosecret(L, 2, NULL))
        luaL_typeerror(L, 2, "string, secret or table");
    lua_pushvalue(L, 2);
    set_opt(L, 3, t == LUA_TTABLE ? "json" : "body");
    lua_pushliteral(L, "POST");
    set_opt(L, 3, "method");
    lua_remove(L, 2);
    return request(L, "http.post");
}

/* Whether a call writes: GET, HEAD and OPTIONS read; other methods (and a body) write. */
static int request_writes(lua_State *L)
{
    if (lua_type(L, 2) != LUA_TTABLE) return 0;
    lua_getfield(L, 2, "method");
    lua_getfield(L, 2, "body");
    lua_getfield(L, 2, "json");
    const char *m = lua_tostring(L, -3);
    int body = !lua_isnil(L, -2) || !lua_isnil(L, -1);
    int reads =
        m ? strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0 || strcmp(m, "OPTIONS") == 0 : !body;
    lua_pop(L, 3);
    return !reads;
}

/* {======================================================
** Health checks
** ======================================================= */

static const char *const wait_only[] = {"status", "match", "interval", NULL};

/* Does the status (on top of the result at res) match the wanted one(s) (at want)? */
static int status_ok(lua_State *L, int want, lua_Integer status)
{
    if (lua_isnil(L, want)) return status >= 200 && status < 300;
    if (lua_isinteger(L, want)) return lua_tointeger(L, want) == status;
    lua_Integer n = luaL_len(L, want);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, want, i);
        int eq = lua_tointeger(L, -1) == status;
        lua_pop(L, 1);
        if (eq) return 1;
    }
    return 0;
}

/*
** http.wait(url [, {status = 2xx | N | {N…}, match = "lua pattern", timeout = 60,
** interval = 1, …request options}]) → the last response | nil, message, code
** Asks until the answer has the status (and its body matches), or the time is up:
** then the message carries the last status or error ("ETIMEDOUT").
*/
static int l_wait(lua_State *L)
{
    if (lua_type(L, 1) != LUA_TSTRING) luaL_typeerror(L, 1, "string (a URL)");
    const char *url = lua_tostring(L, 1);
    lua_settop(L, 2);
    if (lua_isnil(L, 2)) lua_newtable(L), lua_replace(L, 2);
    luaL_checktype(L, 2, LUA_TTABLE);
    /* the wait's own options out of the table a request gets (a copy) */
    lua_newtable(L); /* 3: request options */
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        int own = 0;
        if (lua_type(L, -2) == LUA_TSTRING)
            for (const char *const *o = wait_only; *o; o++)
                own |= strcmp(lua_tostring(L, -2), *o) == 0;
        if (!own &&
            !(lua_type(L, -2) == LUA_TSTRING && strcmp(lua_tostring(L, -2), "timeout") == 0)) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, 3);
        } else {
            lua_pop(L, 1);
        }
    }
    lua_getfield(L, 2, "status"); /* 4 */
    if (!lua_isnil(L, 4) && !lua_isinteger(L, 4) && !lua_istable(L, 4))
        luaL_argerror(L, 2, "field 'status': a status or a list of them");
    const char *match = hrun_optstring(L, 2, "match", NULL, NULL);
    double timeout = hrun_optnumber(L, 2, "timeout", 60);
    double interval = hrun_optnumber(L, 2, "interval", 1);
    if (timeout <= 0) luaL_argerror(L, 2, "field 'timeout': must be positive");
    if (interval <= 0) luaL_argerror(L, 2, "field 'interval': must be positive");
    double start = hrun_monotime(), end = start + timeout;
    lua_pushliteral(L, "no answer yet"); /* 5: what the last attempt said */
    for (int attempt = 1;; attempt++) {
        double left = end - hrun_monotime();
        lua_pushnumber(L, left < 10 ? (left > 0.05 ? left : 0.05) : 10);
        lua_setfield(L, 3, "timeout");
        lua_pushcfunction(L, l_request);
        lua_pushvalue(L, 1);
        lua_pushvalue(L, 3);
        lua_call(L, 2, 3);
        if (!lua_isnil(L, -3)) {
            lua_pop(L, 2);
            lua_getfield(L, -1, "status");
            lua_Integer status = lua_tointeger(L, -1);
            lua_pop(L, 1);
            int ok = status_ok(L, 4, status);
            if (ok && match) {
                lua_getfield(L, -1, "body");
                const char *body = lua_tostring(L, -1);
                lua_getglobal(L, "string");
                lua_getfield(L, -1, "find");
                lua_pushstring(L, body);
                lua_pushstring(L, match);
                lua_call(L, 2, 1);
                ok = !lua_isnil(L, -1);
                lua_pop(L, 3);
                if (!ok)
                    lua_pushfstring(L, "status %d, body not matching '%s'", (int)status, match);
            } else if (!ok) {
                lua_pushfstring(L, "status %d", (int)status);
            }
            if (ok) {
                lua_pushinteger(L, attempt);
                lua_setfield(L, -2, "attempts");
                return 1;
            }
            lua_replace(L, 5);
            lua_pop(L, 1);
        } else {
            lua_pop(L, 1); /* the code */
            lua_replace(L, 5);
            lua_pop(L, 1);
        }
        /* the last attempt is at the end of the time given, not an interval before it */
        double wait = end - hrun_monotime();
        if (wait <= 0.001) {
            lua_pushinteger(L, attempt);
            break;
        }
        if (hrun_sleep(wait < interval ? wait : interval) < 0) return hrun_raiseinterrupt(L);
        double deadline = hrun_deadline(L);
        if (deadline > 0 && hrun_monotime() >= deadline) return hrun_raisetimeout(L);
    }
    char took[32]; /* the time it took, as a person reads it */
    snprintf(took, sizeof took, "%.1f", hrun_monotime() - start);
    return hrun_failf(L, "ETIMEDOUT", "http.wait: %s: not healthy after %s s (%d attempts): %s",
                      url, took, (int)lua_tointeger(L, -1), lua_tostring(L, 5));
}

/* }====================================================== */

/* {======================================================
** Targets (the sandbox)
** ======================================================= */

/* What a request reaches: the unix socket, when the options at opts name one (as
** "unix:PATH", under net:unix:…; the URL's host is then only a name in the request),
** else the URL. Read raw, as request() reads them. */
static int request_targets_at(lua_State *L, hrun_Target *t, int opts)
{
    if (lua_type(L, opts) == LUA_TTABLE) {
        lua_pushliteral(L, "unix_socket");
        if (lua_rawget(L, opts) == LUA_TSTRING) {
            t[0] =
                (hrun_Target){NULL, lua_pushfstring(L, "unix:%s", lua_tostring(L, -1)), NULL, 0, 0};
            return 1;
        }
        lua_pop(L, 1);
    }
    return hrun_targets_arg1(L, t);
}

static int request_targets(lua_State *L, hrun_Target *t)
{
    return request_targets_at(L, t, 2);
}

static int post_targets(lua_State *L, hrun_Target *t)
{
    return request_targets_at(L, t, 3);
}

/* }====================================================== */

static const hrun_Prim http_prims[] = {
    {.name = "request",
     .func = l_request,
     .kind = HRUN_WRITE,
     .opts = 2,
     .cap = "net",
     .writes = request_writes,
     .targets = request_targets},
    {.name = "get", .func = l_get, .kind = HRUN_READ, .cap = "net", .targets = request_targets},
    {.name = "head", .func = l_head, .kind = HRUN_READ, .cap = "net", .targets = request_targets},
    {.name = "post",
     .func = l_post,
     .kind = HRUN_WRITE,
     .opts = 3,
     .cap = "net",
     .targets = post_targets},
    {.name = "wait", .func = l_wait, .kind = HRUN_READ, .cap = "net", .targets = request_targets},
    {0},
};

static int http_shutdown(lua_State *L)
{
    (void)L;
    curl_global_cleanup();
    return 0;
}

int luaopen_hrun_http(lua_State *L)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    hrun_newmodule(L, "http", http_prims);
    hrun_atclose(L, http_shutdown); /* libcurl's global state ends with the Lua state */
    return 1;
}
