/*
** test_undo.c — the careful undo's ground truth (runtime/undo.c): a state's fingerprint
** is the same exactly when the thing is, a restore gives the one before back, and a
** killed effect's temporaries are found by their names and removed — nobody else's.
*/
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "unit.h"

static char tmp[64];

static lua_State *newstate(void)
{
    lua_State *L = hrun_newstate();
    hrun_openlibs(L);
    lua_pop(L, 1);
    hrun_openprivate(L);
    lua_setglobal(L, "priv");
    lua_pushstring(L, tmp);
    lua_setglobal(L, "T");
    return L;
}

/* Runs code (helpers first); returns its error message or NULL. */
static const char *run(lua_State *L, const char *code)
{
    static const char helpers[] =
        "function eq(a, b, what) if a ~= b then error((what or '') .. ': ' .. tostring(a) .. "
        "' ~= ' .. tostring(b), 2) end end\n"
        "function ne(a, b, what) if a == b then error((what or '') .. ': both ' .. tostring(a), "
        "2) end end\n"
        "function fp(states, i) return priv.restate(states)[i or 1].fp end\n"
        "function undo(ops) for _, op in ipairs(ops) do local m, f = op.op:match('(%w+)%.(.+)') "
        "assert(_G[m][f](table.unpack(op.args))) end end\n";
    static char msg[1024];
    luaL_loadbuffer(L, helpers, sizeof helpers - 1, "=helpers");
    lua_call(L, 0, 0);
    if (luaL_loadbuffer(L, code, strlen(code), "=t") == LUA_OK && lua_pcall(L, 0, 0, 0) == LUA_OK)
        return NULL;
    snprintf(msg, sizeof msg, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
    return msg;
}

#define CHECK_RUN(L, code)                                                                         \
    do {                                                                                           \
        const char *err_ = run(L, code);                                                           \
        if (err_) fprintf(stderr, "  %s:%d: %s\n", __FILE__, __LINE__, err_);                      \
        CHECK(err_ == NULL);                                                                       \
    } while (0)

/* fs.write, then its inverse: the file's fingerprint is the one before; an edit after the
** write is unlike both */
static void test_file_round_trip(void)
{
    lua_State *L = newstate();
    CHECK_RUN(L, "local f = T .. '/config'\n"
                 "fs.mkdir(T .. '/stash')\n"
                 "priv.setstash(T .. '/stash', 1)\n"
                 "local absent = priv.state('fs.write', f, 'v1')\n"
                 "eq(#absent, 1) eq(absent[1].kind, 'path') eq(absent[1].target, f)\n"
                 "eq(absent[1].key, f) eq(absent[1].fp, 'absent')\n"
                 "assert(fs.write(f, 'version=1\\n', { mode = '0640' }))\n"
                 "local before = priv.state('fs.write', f, 'version=2\\n')\n"
                 "assert(before[1].fp:match('^file 0640 root:root 10 bytes xxh128 %x+$'), "
                 "before[1].fp)\n"
                 "local ops = assert(priv.inverse('fs.write', f, 'version=2\\n'))\n"
                 "assert(fs.write(f, 'version=2\\n'))\n"
                 "local after = fp(before)\n"
                 "ne(after, before[1].fp, 'written')\n"
                 "undo(ops)\n"
                 "eq(fp(before), before[1].fp, 'restored')\n"
                 "assert(fs.write(f, 'version=2\\n')) assert(fs.write(f, 'edited\\n'))\n"
                 "ne(fp(before), before[1].fp) ne(fp(before), after)\n"
                 "priv.setstash(nil)\n");
    /* relative paths are made absolute; nil for what cannot be compared; misuse raises */
    CHECK_RUN(L, "local cwd = os.getenv('PWD')\n"
                 "local s = priv.state('fs.copy', 'a/./b/../c', 'x/y')\n"
                 "eq(s[1].key:sub(1, 1), '/') assert(s[1].key:match('/x/y$'), s[1].key)\n"
                 "eq(priv.state('exec.run', { 'true' }), nil)\n"
                 "eq(priv.state('service.restart', 'x'), nil)\n"
                 "assert(not pcall(priv.state, 'fs.nothing', 'x'))\n"
                 "assert(not pcall(priv.state, 'fs.write', {}))\n");
    lua_close(L);
}

/* a symlink is its target; a directory is its tree, without the directories' mtimes */
static void test_links_and_trees(void)
{
    lua_State *L = newstate();
    CHECK_RUN(L,
              "local l = T .. '/link'\n"
              "assert(os.execute('ln -s /etc/hostname ' .. l))\n"
              "local s = priv.state('fs.remove', l)\n"
              "eq(s[1].fp, 'link -> /etc/hostname')\n"
              "os.remove(l) assert(os.execute('ln -s /etc/passwd ' .. l))\n"
              "eq(fp(s), 'link -> /etc/passwd')\n"
              /* mkdir D, write D/f, undone newest first: D as mkdir left it */
              "local d = T .. '/d'\n"
              "local m = priv.state('fs.mkdir', d)\n"
              "eq(m[1].fp, 'absent')\n"
              "assert(fs.mkdir(d, { mode = '0750' }))\n"
              "local made = fp(m)\n"
              "assert(made:match('^dir 0750 root:root, 0 entries, tree xxh128 %x+$'), made)\n"
              "assert(fs.write(d .. '/f', 'x'))\n"
              "local with = fp(m) ne(with, made)\n"
              "assert(with:match(', 1 entry,'), with)\n"
              "assert(fs.remove(d .. '/f'))\n"
              "eq(fp(m), made, 'file removed')\n"
              /* a tree and its copy (times kept) sign the same; a file added does not */
              "assert(fs.mkdir(d .. '/sub/deeper', { parents = true }))\n"
              "assert(fs.write(d .. '/sub/a', 'a')) assert(fs.write(d .. '/sub/deeper/b', 'b'))\n"
              "assert(os.execute('ln -s a ' .. d .. '/sub/l'))\n"
              "assert(fs.copy(d, T .. '/copy', { recursive = true }))\n"
              "local c = priv.state('fs.remove', T .. '/copy')\n"
              "eq(c[1].fp, fp(m), 'a copy')\n"
              "assert(fs.write(T .. '/copy/sub/deeper/new', ''))\n"
              "ne(fp(c), fp(m), 'a file added')\n"
              "assert(fs.remove(T .. '/copy/sub/deeper/new'))\n"
              "eq(fp(c), fp(m), 'and removed')\n"
              "assert(fs.write(T .. '/copy/sub/a', 'A'))\n" /* same size, new mtime */
              "ne(fp(c), fp(m), 'a file rewritten')\n"
              /* mkdir{parents}: each directory it makes */
              "local p = priv.state('fs.mkdir', T .. '/p/q/r', { parents = true })\n"
              "eq(#p, 3) eq(p[1].key, T .. '/p/q/r') eq(p[3].key, T .. '/p')\n"
              /* rename: both names */
              "local r = priv.state('fs.rename', d, T .. '/e')\n"
              "eq(#r, 2) eq(r[2].fp, 'absent')\n");
    lua_close(L);
}

/* temporaries are named from the effect while one is set */
static void test_temporary_names(void)
{
    lua_State *L = newstate();
    char name[PATH_MAX];
    CHECK(hrun_tmpname(L, "/srv/x/file.conf", name, sizeof name) == 0);
    CHECK_STR(name, "/srv/x/.file.conf.hrun-XXXXXX");
    CHECK_RUN(L, "priv.seteffect(7, 42)");
    CHECK(hrun_tmpname(L, "/srv/x/file.conf", name, sizeof name) == 0);
    CHECK_STR(name, "/srv/x/.file.conf.hrun-7-42-XXXXXX");
    CHECK(hrun_tmpname(L, "file", name, sizeof name) == 0);
    CHECK_STR(name, "./.file.hrun-7-42-XXXXXX");
    CHECK(hrun_tmpname(L, "/file", name, sizeof name) == 0);
    CHECK_STR(name, "/.file.hrun-7-42-XXXXXX");
    CHECK_RUN(L, "priv.seteffect(nil)");
    CHECK(hrun_tmpname(L, "/srv/x/file.conf", name, sizeof name) == 0);
    CHECK_STR(name, "/srv/x/.file.conf.hrun-XXXXXX");
    CHECK_RUN(L, "assert(not pcall(priv.seteffect, 'x', 1))");
    lua_close(L);
}

/*
** A process killed in the middle of fs.copy (its source a FIFO nobody writes: it waits
** with its temporary made) leaves .dst.hrun-7-42-XXXXXX; leftovers removes it, and a
** temporary tree of the same effect, and keeps other effects' and other files'.
*/
static void test_killed_copy_leftovers(void)
{
    lua_State *L = newstate();
    char fifo[128], dir[128];
    snprintf(fifo, sizeof fifo, "%s/fifo", tmp);
    snprintf(dir, sizeof dir, "%s/kill", tmp);
    CHECK(mkfifo(fifo, 0600) == 0 && mkdir(dir, 0755) == 0);
    CHECK_RUN(L, "priv.seteffect(7, 42)");
    pid_t pid = fork();
    if (pid == 0) {
        luaL_dostring(L, "fs.copy(T .. '/fifo', T .. '/kill/dst')");
        _exit(0);
    }
    int w = open(fifo, O_WRONLY); /* lets the child's open return; writes nothing */
    int found = 0;
    for (int i = 0; i < 5000 && !found; i++) {
        lua_settop(L, 0);
        CHECK_RUN(L, "found = #fs.glob(T .. '/kill/.dst.hrun-7-42-*')");
        lua_getglobal(L, "found");
        found = (int)lua_tointeger(L, -1);
        lua_pop(L, 1);
        if (!found) usleep(1000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    close(w);
    CHECK(found == 1);
    CHECK_RUN(L, "priv.seteffect(nil)\n"
                 "local k = T .. '/kill'\n"
                 "assert(fs.mkdir(k .. '/.dst.hrun-7-42-tree/sub', { parents = true }))\n"
                 "assert(fs.write(k .. '/.dst.hrun-7-42-tree/sub/f', 'x'))\n"
                 "assert(os.execute('ln -s /etc ' .. k .. '/.dst.hrun-7-42-tree/etc'))\n"
                 "for _, other in ipairs({ '.dst.hrun-7-43-abcdef', '.dst.hrun-7-4-abcdef', "
                 "'.dst.hrun-8-42-abcdef', '.dst2.hrun-7-42-abcdef', '.dst.hrun-abcdef' }) do\n"
                 "  assert(fs.write(k .. '/' .. other, 'keep'))\n"
                 "end\n"
                 "local states = priv.state('fs.copy', T .. '/fifo', k .. '/dst')\n"
                 "local removed = priv.leftovers(7, 42, states, 0)\n"
                 "table.sort(removed, function(a, b) return #a > #b or (#a == #b and a < b) "
                 "end)\n"
                 "eq(#removed, 2, 'removed')\n"
                 "eq(fs.exists(k .. '/.dst.hrun-7-42-tree'), false)\n"
                 "assert(removed[1]:match('/%.dst%.hrun%-7%-42%-%w+$'), removed[1])\n"
                 "assert(removed[2]:match('/%.dst%.hrun%-7%-42%-%w+$'), removed[2])\n"
                 "eq(#fs.glob(k .. '/.dst*'), 5, 'the others kept')\n"
                 "assert(fs.exists('/etc/passwd'), 'the link was not followed')\n"
                 "eq(#priv.leftovers(7, 42, states, 0), 0, 'nothing twice')\n");
    lua_close(L);
}

/* git: a tag moved, deleted; a commit's branch; a lock left by a kill removed when new */
static void test_git_refs(void)
{
    lua_State *L = newstate();
    CHECK_RUN(L, "local r = T .. '/repo'\n"
                 "assert(git.init(r))\n"
                 "assert(fs.write(r .. '/a', '1'))\n"
                 "local c = priv.state('git.commit', r, 'one', { all = true })\n"
                 "eq(c[1].kind, 'ref') eq(c[1].key.ref, 'refs/heads/main') eq(c[1].fp, 'absent')\n"
                 "eq(c[1].target, r .. ' refs/heads/main')\n"
                 "local one = assert(git.commit(r, 'one', { all = true }))\n"
                 "eq(fp(c), 'commit ' .. one)\n"
                 "assert(fs.write(r .. '/a', '2'))\n"
                 "local two = assert(git.commit(r, 'two', { all = true }))\n"
                 "local t = priv.state('git.tag', r, 'v1', { target = one })\n"
                 "eq(t[1].fp, 'absent')\n"
                 "assert(git.tag(r, 'v1', { target = one }))\n"
                 "local tagged = fp(t) eq(tagged, 'commit ' .. one)\n"
                 "assert(git.tag(r, 'v1', { target = two, force = true }))\n"
                 "eq(fp(t), 'commit ' .. two, 'moved')\n"
                 "assert(git.tag(r, 'v2', { message = 'annotated' }))\n"
                 "local a = priv.state('git.delete_tag', r, 'v2')\n"
                 "assert(a[1].fp:match('^tag %x+ on commit ' .. two .. '$'), a[1].fp)\n"
                 "assert(git.delete_tag(r, 'v2'))\n"
                 "eq(fp(a), 'absent')\n"
                 "local h = priv.state('git.checkout', r, one)\n"
                 "eq(h[1].fp, 'commit ' .. two)\n"
                 "assert(git.checkout(r, one)) eq(fp(h), 'commit ' .. one)\n"
                 /* locks: one made since the effect started goes, an older one stays */
                 "local lock = r .. '/.git/refs/tags/v1.lock'\n"
                 "local found = false\n"
                 "for _, l in ipairs(t[1].locks) do found = found or l == lock end\n"
                 "assert(found, 'the ref lock is listed')\n"
                 "local started = sys.now()\n"
                 "assert(fs.write(lock, ''))\n"
                 "assert(fs.write(r .. '/.git/index.lock', ''))\n"
                 "assert(os.execute('touch -d 2001-01-01 ' .. r .. '/.git/index.lock'))\n"
                 "local removed = priv.leftovers(1, 1, h, started)\n"
                 "eq(#removed, 0, 'HEAD: not its lock')\n"
                 "removed = priv.leftovers(1, 1, c, started)\n"
                 "eq(#removed, 0, 'index.lock older than the effect')\n"
                 "removed = priv.leftovers(1, 1, t, started)\n"
                 "eq(#removed, 1) eq(removed[1], lock) eq(fs.exists(lock), false)\n"
                 "eq(fs.exists(r .. '/.git/index.lock'), true)\n"
                 "local p = priv.state('git.checkout_paths', r, one, { 'a' })\n"
                 "eq(p[1].key, r .. '/a') eq(p[1].locks[1], r .. '/.git/index.lock')\n");
    lua_close(L);
}

/* a profile is its generation and store path */
static void test_profiles(void)
{
    lua_State *L = newstate();
    CHECK_RUN(L, "local p = T .. '/profiles'\n"
                 "assert(fs.mkdir(p .. '/store1', { parents = true })) assert(fs.mkdir(p .. "
                 "'/store2'))\n"
                 "assert(os.execute(string.format('ln -s %s/store1 %s/system-1-link && ln -s "
                 "%s/store2 %s/system-2-link && ln -s system-2-link %s/system', p, p, p, p, p)))\n"
                 "local s = priv.state('nixos.rollback', { profile = p .. '/system', action = "
                 "'boot' })\n"
                 "eq(#s, 1) eq(s[1].kind, 'profile')\n"
                 "eq(s[1].fp, 'generation 2 ' .. p .. '/store2')\n"
                 "os.remove(p .. '/system') assert(os.execute('ln -s system-1-link ' .. p .. "
                 "'/system'))\n"
                 "eq(fp(s), 'generation 1 ' .. p .. '/store1')\n"
                 "local r = priv.state('nixos.rebuild', 'switch', { profile = p .. '/system' })\n"
                 "local booted = fs.stat('/run/current-system', { follow = false }) ~= nil\n"
                 "eq(#r, booted and 2 or 1) eq(r[1].key, p .. '/system')\n"
                 "if booted then eq(r[2].key, '/run/current-system') end\n"
                 "eq(priv.state('nixos.rebuild', 'test', {}) ~= nil, booted)\n"
                 "eq(priv.state('nixos.rebuild', 'build', {}), nil)\n"
                 "local f = priv.state('nixos.flake_update', p)\n"
                 "eq(f[1].key, p .. '/flake.lock') eq(f[1].fp, 'absent')\n"
                 /* units and containers: never a raise, whatever the machine has */
                 "local u = priv.state('service.start', 'hrun-no-such-unit')\n"
                 "eq(u[1].kind, 'unit') eq(u[1].key, 'hrun-no-such-unit.service')\n"
                 "assert(type(u[1].fp) == 'string')\n");
    lua_close(L);
}

/* restate of what the journal gives back: other fields kept, an unknown kind said so */
static void test_restate(void)
{
    lua_State *L = newstate();
    CHECK_RUN(L, "local s = priv.restate({ { kind = 'path', target = 'x', key = T, fp = 'old', "
                 "locks = { 'l' } }, { kind = 'martian', key = 1 } })\n"
                 "assert(s[1].fp:match('^dir '), s[1].fp) eq(s[1].locks[1], 'l') eq(s[1].target, "
                 "'x')\n"
                 "eq(s[2].fp, \"unreadable: no kind 'martian'\")\n"
                 "assert(not pcall(priv.restate, { 1 }))\n");
    lua_close(L);
}

/* {======================================================
** btrfs: on a loop device of its own (root, mkfs.btrfs, losetup), else skipped
** ======================================================= */

static int sh(const char *fmt, const char *arg)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, fmt, arg, arg, arg, arg);
    return system(cmd);
}

static void test_btrfs(void)
{
    char loop[64] = "";
    if (geteuid() != 0 || sh("command -v mkfs.btrfs >/dev/null && command -v losetup "
                             ">/dev/null && truncate -s 300M %s/img",
                             tmp) != 0) {
        printf("  (btrfs skipped: needs root, mkfs.btrfs, losetup)\n");
        return;
    }
    char cmd[256];
    snprintf(cmd, sizeof cmd, "losetup --find --show %s/img", tmp);
    FILE *p = popen(cmd, "r");
    if (p == NULL || fgets(loop, sizeof loop, p) == NULL) loop[0] = '\0';
    if (p) pclose(p);
    loop[strcspn(loop, "\n")] = '\0';
    CHECK(loop[0] != '\0');
    if (loop[0] == '\0') return;
    snprintf(cmd, sizeof cmd, "mkfs.btrfs -q -f %s >/dev/null 2>&1 && mkdir %s/mnt", loop, tmp);
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "mount -o relatime %s %s/mnt", loop, tmp);
    CHECK(system(cmd) == 0);
    lua_State *L = newstate();
    CHECK_RUN(L, "local m = T .. '/mnt'\n"
                 "local s = priv.state('btrfs.create', m .. '/vol')\n"
                 "eq(s[1].kind, 'subvolume') eq(s[1].fp, 'absent')\n"
                 "assert(btrfs.create(m .. '/vol'))\n"
                 "assert(fs.write(m .. '/vol/f', 'data'))\n"
                 "assert(fs.read(m .. '/vol/f'))\n" /* relatime: the first read after a write */
                 "local made = fp(s)\n"
                 "assert(made:match('^subvolume %x+%-[%x-]+ rw$'), made)\n"
                 "assert(fs.read(m .. '/vol/f')) eq(fp(s), made, 'read')\n"
                 "assert(btrfs.snapshot(m .. '/vol', m .. '/snap', { readonly = true }))\n"
                 "eq(fp(s), made, 'snapshotted')\n"
                 "assert(btrfs.snapshot(m .. '/vol', m .. '/snap2'))\n"
                 "eq(fp(s), made, 'snapshotted writable')\n"
                 "local sn = priv.state('btrfs.delete', m .. '/snap')\n"
                 "eq(sn, nil, 'delete: no inverse, no state')\n"
                 "sn = priv.state('btrfs.set_readonly', m .. '/snap', false)\n"
                 "assert(sn[1].fp:match(' ro ctransid '), sn[1].fp)\n"
                 "assert(fs.write(m .. '/vol/f', 'more data'))\n"
                 "eq(fp(s), made, 'written: a writable one is known by its uuid alone')\n"
                 "assert(btrfs.set_readonly(m .. '/vol', true))\n"
                 "local ro = fp(s)\n"
                 "assert(ro:match(' ro ctransid '), 'read-only')\n"
                 "assert(btrfs.set_readonly(m .. '/vol', false))\n"
                 "assert(fs.write(m .. '/vol/f', 'written while writable'))\n"
                 "assert(exec.run({'sync'}))\n"
                 "assert(btrfs.set_readonly(m .. '/vol', true))\n"
                 "ne(fp(s), ro, 'a read-only one written in between is changed')\n"
                 "assert(btrfs.set_readonly(m .. '/vol', false))\n"
                 /* restore: the target and its aside; a kill between the move and the
                 ** snapshot is put back by leftovers */
                 "local r = priv.state('btrfs.restore', m .. '/snap', m .. '/vol')\n"
                 "eq(#r, 2) eq(r[2].aside_of, m .. '/vol') eq(r[2].fp, 'absent')\n"
                 "local inv = priv.inverse('btrfs.restore', m .. '/snap', m .. '/vol')\n"
                 "eq(inv[2].args[1], r[2].key, 'the inverse and the state agree on the aside')\n"
                 "assert(os.rename(m .. '/vol', r[2].key))\n"
                 "local back = priv.leftovers(3, 9, r, 0)\n"
                 "eq(#back, 1) eq(back[1], r[2].key)\n"
                 "eq(fp(r, 1), r[1].fp, 'target as before') eq(fp(r, 2), 'absent')\n"
                 "local aside = assert(btrfs.restore(m .. '/snap', m .. '/vol'))\n"
                 "eq(aside, r[2].key, 'the call used the planned aside')\n"
                 "eq(fp(r, 2), r[1].fp, 'the aside is the old target')\n"
                 "ne(fp(r, 1), r[1].fp)\n"
                 "eq(#priv.leftovers(3, 9, r, 0), 0, 'a finished restore is left alone')\n");
    lua_close(L);
    snprintf(cmd, sizeof cmd, "umount %s/mnt; losetup -d %s", tmp, loop);
    CHECK(system(cmd) == 0);
}

/* }====================================================== */

int main(void)
{
    snprintf(tmp, sizeof tmp, "/tmp/hrun-undo-XXXXXX");
    if (mkdtemp(tmp) == NULL) return perror("mkdtemp"), 1;
    umask(022);
    RUN(test_file_round_trip);
    RUN(test_links_and_trees);
    RUN(test_temporary_names);
    RUN(test_killed_copy_leftovers);
    RUN(test_git_refs);
    RUN(test_profiles);
    RUN(test_restate);
    RUN(test_btrfs);
    sh("rm -rf %s", tmp);
    return UNIT_END();
}
