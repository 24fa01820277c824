/*
** diff.c — what a write does to a file's content, for people: a unified diff of the bytes
** before and after (libgit2's, three lines of context), as the `lines` of a preview
** that plans and `--diff` show. Shared by the writes that change a file's content
** (fs.write, fs.copy, nixos.flake_set_input) and by the runner, which diffs the text
** its planned flake edits leave (fs._diff).
**
** Both sides pass the secrets masker before they are diffed: a secret's bytes, even of
** several lines, show as one "<secret>" — masked afterwards, line by line, a secret of
** several lines would not be found. Binary content (a NUL byte) is said as such, not
** shown; sides over DIFF_MAX_INPUT are not read, and a diff is cut after DIFF_MAX_LINES.
**
** The portable build (HRUN_PORTABLE) has no libgit2: its previews say there is no diff
** (the controller, which has the full build, makes the diffs people read).
*/
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef HRUN_PORTABLE
#include <git2.h>
#endif

#include "internal.h"

/* The largest side diffed (bytes), and the most lines of a diff shown. */
#define DIFF_MAX_INPUT (4 << 20)
#define DIFF_MAX_LINES 2000
/* Where git looks for a NUL to call content binary. */
#define BINARY_PROBE 8000

void hrun_add_line(lua_State *L, int idx, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_rawseti(L, idx, (lua_Integer)lua_rawlen(L, idx) + 1);
}

/* "512 B", "3.2 KiB", "12.0 MiB" */
static const char *size_text(char *buf, size_t size, size_t n)
{
    if (n < 1024)
        snprintf(buf, size, "%zu B", n);
    else if (n < (1 << 20))
        snprintf(buf, size, "%.1f KiB", (double)n / 1024);
    else
        snprintf(buf, size, "%.1f MiB", (double)n / (1 << 20));
    return buf;
}

static int is_binary(const char *p, size_t len)
{
    return p && memchr(p, '\0', len < BINARY_PROBE ? len : BINARY_PROBE) != NULL;
}

#ifdef HRUN_PORTABLE

/* [-0, +0, m] No diff (no libgit2): a line says so; -1, as when libgit2 fails. */
static int hunks(lua_State *L, int lines, const char *old, size_t oldlen, const char *new,
                 size_t newlen, size_t *added, size_t *removed)
{
    (void)old, (void)oldlen, (void)new, (void)newlen, (void)added, (void)removed;
    hrun_add_line(L, lines, "(no diff: the portable build of hrun makes none)");
    return -1;
}

#else

typedef struct Patch {
    git_patch *p;
} Patch;

static int patch_close(lua_State *L)
{
    Patch *h = lua_touserdata(L, 1);
    git_patch_free(h->p);
    h->p = NULL;
    return 0;
}

/* [-0, +0, m] The hunks of the diff old (NULL: none) → new into the list at lines, the
** lines added and removed counted. Returns 0, or -1 when libgit2 fails (a line says so). */
static int hunks(lua_State *L, int lines, const char *old, size_t oldlen, const char *new,
                 size_t newlen, size_t *added, size_t *removed)
{
    Patch *h = lua_newuserdatauv(L, sizeof(Patch), 0); /* made closed: nothing to leak */
    h->p = NULL;
    hrun_setclose(L, "hrun.diff.patch", patch_close, NULL);
    int box = lua_gettop(L);
    git_diff_options opts;
    git_diff_options_init(&opts, GIT_DIFF_OPTIONS_VERSION);
    opts.context_lines = 3;
    opts.flags = GIT_DIFF_FORCE_TEXT; /* binary content was told apart before */
    if (git_patch_from_buffers(&h->p, old, oldlen, NULL, new, newlen, NULL, &opts) < 0) {
        const git_error *e = git_error_last();
        hrun_add_line(L, lines, "(no diff: libgit2: %s)", e && e->message ? e->message : "failed");
        lua_settop(L, box - 1);
        return -1;
    }
    size_t shown = 0, cut = 0;
    for (size_t i = 0; i < git_patch_num_hunks(h->p); i++) {
        const git_diff_hunk *hunk;
        size_t n;
        if (git_patch_get_hunk(&hunk, &n, h->p, i) < 0) break;
        size_t hl = hunk->header_len;
        /* "@@ -2,8 +2,9 @@" without the line git guesses to be the function's */
        const char *end = hl > 2 ? memmem(hunk->header + 2, hl - 2, "@@", 2) : NULL;
        if (end) hl = (size_t)(end + 2 - hunk->header);
        if (shown++ < DIFF_MAX_LINES) {
            lua_pushlstring(L, hunk->header, hl);
            lua_rawseti(L, lines, (lua_Integer)lua_rawlen(L, lines) + 1);
        } else {
            cut++;
        }
        for (size_t j = 0; j < n; j++) {
            const git_diff_line *l;
            if (git_patch_get_line_in_hunk(&l, h->p, i, j) < 0) break;
            if (l->origin == GIT_DIFF_LINE_ADDITION) (*added)++;
            if (l->origin == GIT_DIFF_LINE_DELETION) (*removed)++;
            if (shown++ >= DIFF_MAX_LINES) {
                cut++;
                continue;
            }
            if (l->origin == GIT_DIFF_LINE_CONTEXT_EOFNL || l->origin == GIT_DIFF_LINE_ADD_EOFNL ||
                l->origin == GIT_DIFF_LINE_DEL_EOFNL) {
                hrun_add_line(L, lines, "\\ No newline at end of file");
                continue;
            }
            size_t cl = l->content_len;
            if (cl > 0 && l->content[cl - 1] == '\n') cl--;
            luaL_Buffer b;
            luaL_buffinit(L, &b);
            luaL_addchar(&b, l->origin == GIT_DIFF_LINE_ADDITION   ? '+'
                             : l->origin == GIT_DIFF_LINE_DELETION ? '-'
                                                                   : ' ');
            luaL_addlstring(&b, l->content, cl);
            luaL_pushresult(&b);
            lua_rawseti(L, lines, (lua_Integer)lua_rawlen(L, lines) + 1);
        }
    }
    if (cut > 0)
        hrun_add_line(L, lines, "… %d more lines of the diff not shown (the first %d are)",
                      (int)cut, DIFF_MAX_LINES);
    git_patch_free(h->p);
    h->p = NULL;
    lua_settop(L, box - 1);
    return 0;
}

#endif

void hrun_diff_preview(lua_State *L, const char *path, const char *old, size_t oldlen,
                       const char *new, size_t newlen)
{
    int top = lua_gettop(L);
    lua_createtable(L, 0, 5);
    int res = lua_gettop(L);
    lua_pushboolean(L, 1);
    lua_setfield(L, res, "diff");
    lua_pushstring(L, path);
    lua_setfield(L, res, "path");
    lua_newtable(L);
    int lines = lua_gettop(L);
    if (old && oldlen == newlen && memcmp(old, new, newlen) == 0) {
        hrun_add_line(L, lines, "(no change: %s has these bytes already)", path);
        lua_setfield(L, res, "lines");
        lua_settop(L, res);
        return;
    }
    char a[32], b[32];
    hrun_add_line(L, lines, "--- %s", old ? path : "/dev/null");
    hrun_add_line(L, lines, "+++ %s", path);
    if (is_binary(old, oldlen) || is_binary(new, newlen)) {
        if (old)
            hrun_add_line(L, lines, "binary content, not shown: %s → %s",
                          size_text(a, sizeof a, oldlen), size_text(b, sizeof b, newlen));
        else
            hrun_add_line(L, lines, "binary content, not shown: %s",
                          size_text(b, sizeof b, newlen));
    } else {
        /* what people see: every secret masked on both sides, before the diff */
        lua_pushlstring(L, old ? old : "", old ? oldlen : 0);
        lua_pushlstring(L, new, newlen);
        if (hrun_secrets_masked() > 0) {
            hrun_mask(L, -2);
            lua_replace(L, -3);
            hrun_mask(L, -1);
            lua_replace(L, -2);
        }
#ifndef HRUN_PORTABLE
        hrun_need_libgit2(L);
#endif
        size_t ol, nl, added = 0, removed = 0;
        const char *o = lua_tolstring(L, -2, &ol), *n = lua_tolstring(L, -1, &nl);
        if (hunks(L, lines, old ? o : NULL, ol, n, nl, &added, &removed) == 0) {
            lua_pushinteger(L, (lua_Integer)added);
            lua_setfield(L, res, "added");
            lua_pushinteger(L, (lua_Integer)removed);
            lua_setfield(L, res, "removed");
        }
        lua_pop(L, 2);
    }
    lua_pushvalue(L, lines);
    lua_setfield(L, res, "lines");
    lua_settop(L, top + 1);
}

/* [-0, +1, m] The bytes of the regular file at path (followed), for a diff: a string; nil
** when there is none (absent); or false and, in *why, what stops reading it (not a
** regular file, too large, unreadable). */
static void read_side(lua_State *L, const char *path, char *why, size_t size)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT) {
            lua_pushnil(L);
        } else {
            snprintf(why, size, "%s: %s", path, strerror(errno));
            lua_pushboolean(L, 0);
        }
        return;
    }
    if (fstat(fd, &st) < 0) {
        snprintf(why, size, "%s: %s", path, strerror(errno));
        close(fd);
        lua_pushboolean(L, 0);
        return;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > DIFF_MAX_INPUT) {
        char s[32];
        if (!S_ISREG(st.st_mode))
            snprintf(why, size, "%s is not a regular file", path);
        else
            snprintf(why, size, "%s is %s, larger than a diff here shows (%d MiB)", path,
                     size_text(s, sizeof s, (size_t)st.st_size), DIFF_MAX_INPUT >> 20);
        close(fd);
        lua_pushboolean(L, 0);
        return;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (;;) {
        char *p = luaL_prepbuffer(&b);
        ssize_t n = read(fd, p, LUAL_BUFFERSIZE);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (n < 0) snprintf(why, size, "%s: %s", path, strerror(errno));
            close(fd); /* nothing above raises between the open and here but the buffer */
            luaL_pushresult(&b);
            if (n < 0) {
                lua_pop(L, 1);
                lua_pushboolean(L, 0);
            }
            return;
        }
        luaL_addsize(&b, (size_t)n);
        if (luaL_bufflen(&b) > DIFF_MAX_INPUT) {
            close(fd);
            snprintf(why, size, "%s grew past what a diff here shows (%d MiB)", path,
                     DIFF_MAX_INPUT >> 20);
            luaL_pushresult(&b);
            lua_pop(L, 1);
            lua_pushboolean(L, 0);
            return;
        }
    }
}

void hrun_diff_file(lua_State *L, const char *path, const char *new, size_t newlen)
{
    char why[PATH_MAX + 128] = "";
    read_side(L, path, why, sizeof why);
    if (lua_isboolean(L, -1) || newlen > DIFF_MAX_INPUT) {
        char s[32];
        if (!*why)
            snprintf(why, sizeof why,
                     "the new content is %s, larger than a diff here shows (%d MiB)",
                     size_text(s, sizeof s, newlen), DIFF_MAX_INPUT >> 20);
        lua_pop(L, 1);
        lua_createtable(L, 0, 2);
        lua_pushstring(L, path);
        lua_setfield(L, -2, "path");
        lua_createtable(L, 1, 0);
        hrun_add_line(L, lua_gettop(L), "(no diff: %s)", why);
        lua_setfield(L, -2, "lines");
        return;
    }
    size_t oldlen = 0;
    const char *old = lua_tolstring(L, -1, &oldlen);
    hrun_diff_preview(L, path, old, oldlen, new, newlen);
    lua_remove(L, -2);
}

void hrun_diff_files(lua_State *L, const char *src, const char *dst)
{
    char why[PATH_MAX + 128] = "";
    read_side(L, src, why, sizeof why);
    if (!lua_isstring(L, -1)) {
        lua_pop(L, 1);
        lua_pushnil(L); /* no content to show (the copy will say why it fails, if it does) */
        return;
    }
    size_t len;
    const char *bytes = lua_tolstring(L, -1, &len);
    hrun_diff_file(L, dst, bytes, len);
    lua_remove(L, -2);
}
