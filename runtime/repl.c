/*
** repl.c — the REPL's line editor, through libedit (BSD licence; GNU readline's would
** bind the binary): prompts, persistent history, tab completion. What a line means
** (incomplete chunks, printing values) is the engine's business, in stdlib/hrun/repl.lua.
**
** The portable build (HRUN_PORTABLE) has no libedit: its REPL reads plain lines, with no
** editing, history or completion.
*/
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#ifdef HRUN_PORTABLE

int hrun_repl_open(lua_State *L)
{
    (void)L;
    return 0;
}

int hrun_repl_close(lua_State *L)
{
    (void)L;
    return 0;
}

/* readline(prompt) → line | nil (end of input) | nil, "interrupted" (Ctrl-C) */
int hrun_repl_readline(lua_State *L)
{
    fputs(luaL_checkstring(L, 1), stdout);
    fflush(stdout);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (;;) {
        unsigned char c;
        ssize_t n = read(STDIN_FILENO, &c, 1);
        if (n < 0 && errno == EINTR && !hrun_interrupted()) continue;
        if (hrun_interrupted()) {
            hrun_clearinterrupt();
            lua_pushnil(L);
            lua_pushliteral(L, "interrupted");
            return 2;
        }
        if (n <= 0) {
            if (luaL_bufflen(&b) == 0) {
                lua_pushnil(L);
                return 1;
            }
            break;
        }
        if (c == '\n') break;
        luaL_addchar(&b, (char)c);
    }
    luaL_pushresult(&b);
    return 1;
}

/* addhistory(line): no history here */
int hrun_repl_addhistory(lua_State *L)
{
    luaL_checkstring(L, 1);
    lua_pushboolean(L, 1);
    return 1;
}

#else

#include <editline/readline.h>

#define HISTORY_MAX 2000

static struct {
    lua_State *L;
    int completer; /* registry ref of the engine's completion function */
    char *histfile;
    char **matches; /* candidates for the word being completed */
    size_t nmatches, next;
} repl = {NULL, LUA_NOREF, NULL, NULL, 0, 0};

static void free_matches(void)
{
    for (size_t i = 0; i < repl.nmatches; i++) free(repl.matches[i]);
    free(repl.matches);
    repl.matches = NULL;
    repl.nmatches = repl.next = 0;
}

/* Asks the engine for the candidates of `text`; errors mean no candidates. */
static void load_matches(const char *text)
{
    lua_State *L = repl.L;
    free_matches();
    if (L == NULL || repl.completer == LUA_NOREF || !lua_checkstack(L, 4)) return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, repl.completer);
    lua_pushstring(L, text);
    if (hrun_pcallback(L, 1) != LUA_OK || !lua_istable(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    size_t n = lua_rawlen(L, -1);
    repl.matches = calloc(n + 1, sizeof(char *));
    for (size_t i = 0; repl.matches && i < n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i + 1);
        const char *s = lua_tostring(L, -1);
        if (s && (repl.matches[repl.nmatches] = strdup(s)) != NULL) repl.nmatches++;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static char *generator(const char *text, int state)
{
    if (state == 0) load_matches(text);
    if (repl.next >= repl.nmatches) return NULL;
    return strdup(repl.matches[repl.next++]);
}

static char **attempted_completion(const char *text, int start, int end)
{
    (void)start, (void)end;
    rl_attempted_completion_over = 1; /* never fall back to file names */
    return rl_completion_matches(text, generator);
}

/* Reads a key; an interrupt (Ctrl-C) ends the line, which readline then returns as EOF. */
static int getc_interruptible(FILE *f)
{
    unsigned char c;
    for (;;) {
        ssize_t n = read(fileno(f), &c, 1);
        if (n == 1) return c;
        if (n < 0 && errno == EINTR && !hrun_interrupted()) continue;
        return EOF;
    }
}

/* repl_open(histfile|nil, completer) */
int hrun_repl_open(lua_State *L)
{
    const char *hist = luaL_optstring(L, 1, NULL);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    hrun_repl_close(L);
    repl.L = L;
    lua_pushvalue(L, 2);
    repl.completer = luaL_ref(L, LUA_REGISTRYINDEX);
    rl_readline_name = "hrun";
    rl_initialize();
    rl_getc_function = getc_interruptible;
    rl_attempted_completion_function = attempted_completion;
    rl_basic_word_break_characters = " \t\n\"\\'`@$><=;|&{(,+-*/%^~#[]";
    rl_completion_append_character = '\0';
    using_history();
    stifle_history(HISTORY_MAX);
    if (hist) {
        repl.histfile = strdup(hist);
        read_history(hist);
    }
    return 0;
}

int hrun_repl_close(lua_State *L)
{
    if (repl.completer != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, repl.completer);
    repl.completer = LUA_NOREF;
    free(repl.histfile);
    repl.histfile = NULL;
    free_matches();
    repl.L = NULL;
    return 0;
}

/* readline(prompt) → line | nil (end of input) | nil, "interrupted" (Ctrl-C) */
int hrun_repl_readline(lua_State *L)
{
    const char *prompt = luaL_checkstring(L, 1);
    char *line = readline(prompt);
    if (hrun_interrupted()) {
        /* the signal also armed the Lua hook: disarm it, this interrupt is handled here */
        hrun_clearinterrupt();
        free(line);
        lua_pushnil(L);
        lua_pushliteral(L, "interrupted");
        return 2;
    }
    if (line == NULL) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushstring(L, line);
    free(line);
    return 1;
}

/* addhistory(line): kept in memory and, when there is a file, written out at once */
int hrun_repl_addhistory(lua_State *L)
{
    const char *line = luaL_checkstring(L, 1);
    if (*line == '\0') return 0;
    HIST_ENTRY *last = history_length > 0 ? history_get(history_base + history_length - 1) : NULL;
    if (last && strcmp(last->line, line) == 0) return 0;
    add_history(line);
    if (repl.histfile && write_history(repl.histfile) != 0) {
        lua_pushboolean(L, 0);
        return 1;
    }
    lua_pushboolean(L, 1);
    return 1;
}

#endif
