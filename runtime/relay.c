/*
** relay.c — `hrun __relay`: the byte path of a copy between two machines (fs.sync,
** btrfs.receive), started by hrun itself, never by people.
**
** The receiving side runs the real tool (rsync, btrfs receive) under its journaled
** write; the sending side (rsync --server --sender, btrfs send) runs where the data is,
** started on its behalf by the controller. Between them is one Unix socket: the
** controller's, or one an ssh master forwards from the receiving host to it (`ssh -O
** forward -R`), so the bytes go from one ssh channel to the other and nothing on either
** host needs a key to the other (as `scp -3` does).
**
**   serve SOCK (--rsync SRC | --stdout) [--remote] -- ARGV…
**        listens on SOCK (0600, in a directory of the caller's) and answers each
**        connection with the sending side, the connection as its stdin and stdout:
**        --rsync: the arguments the receiving rsync asks for come first (each ended by a
**        NUL, an empty one ends them); they must be `rsync --server --sender OPTIONS . SRC/`
**        (SRC with one trailing slash: the tree's contents)
**        with OPTIONS among those fs.sync gives, and are appended to ARGV. --stdout: ARGV
**        as it is, the connection its stdout (btrfs send). --remote: ARGV is an ssh
**        command line, and what is appended goes as one quoted command. It ends when its
**        caller stops it, its caller ends, or nothing connects for ten minutes.
**   connect SOCK HOST ARGS…
**        rsync's remote shell (-e): sends ARGS as above, then carries bytes both ways
**        between its stdin and stdout and the connection.
**   feed SOCK -- ARGV…
**        runs ARGV with the connection as its stdin (btrfs receive).
**   pipe -- A… -- B…
**        runs A with its stdout into B's stdin (btrfs send | btrfs receive on one
**        machine); fails when either does, saying which.
*/
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

#define RELAY_ARGS_MAX 65536 /* the bytes of the arguments a receiving rsync may send */
#define RELAY_IDLE_MS  (10 * 60 * 1000)
#define RELAY_BUF      65536

static _Noreturn void die(const char *what, const char *detail)
{
    fprintf(stderr, "hrun relay: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    _exit(255);
}

static int unix_addr(const char *path, struct sockaddr_un *a)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof a->sun_path) return -1;
    memcpy(a->sun_path, path, strlen(path) + 1);
    return 0;
}

static int dial(const char *path)
{
    struct sockaddr_un a;
    if (unix_addr(path, &a) < 0) die("socket path too long", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die(path, strerror(errno));
    return fd;
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) die("write", strerror(errno));
        p += w, n -= (size_t)w;
    }
}

/* {======================================================
** connect: rsync's remote shell
** ======================================================= */

typedef struct Dir {
    int from, to;
    char buf[RELAY_BUF];
    size_t off, len;
    int eof; /* from has ended */
} Dir;

/* Carries bytes stdin → sock and sock → stdout until the sending side has ended (as ssh
** ends with its remote command, though its stdin is still open): neither direction waits
** on a write while the other has bytes for it (both in one loop). */
static void carry(int sock)
{
    static Dir up, down;
    up.from = 0, up.to = sock, down.from = sock, down.to = 1;
    Dir *dirs[2] = {&up, &down};
    for (int i = 0; i < 2; i++)
        fcntl(dirs[i]->to, F_SETFL, fcntl(dirs[i]->to, F_GETFL) | O_NONBLOCK);
    while (!(down.eof && down.len == 0)) {
        struct pollfd p[4];
        Dir *of[4];
        int want[4], n = 0;
        for (int i = 0; i < 2; i++) {
            Dir *d = dirs[i];
            if (d->len > 0)
                p[n] = (struct pollfd){d->to, POLLOUT, 0}, of[n] = d, want[n++] = 1;
            else if (!d->eof)
                p[n] = (struct pollfd){d->from, POLLIN, 0}, of[n] = d, want[n++] = 0;
        }
        if (poll(p, (nfds_t)n, -1) < 0) {
            if (errno == EINTR) continue;
            die("poll", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
            Dir *d = of[i];
            if (p[i].revents == 0) continue;
            if (want[i]) {
                ssize_t w = write(d->to, d->buf + d->off, d->len);
                if (w < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                if (w < 0) _exit(errno == EPIPE ? 0 : 255); /* the reader is gone: so are we */
                d->off += (size_t)w, d->len -= (size_t)w;
            } else {
                ssize_t r = read(d->from, d->buf, sizeof d->buf);
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                if (r <= 0) {
                    d->eof = 1;
                    if (d == &up)
                        shutdown(sock, SHUT_WR);
                    else
                        close(1);
                } else {
                    d->off = 0, d->len = (size_t)r;
                }
            }
        }
    }
}

static int relay_connect(int argc, char **argv)
{
    /* hrun __relay connect SOCK HOST ARGS… */
    if (argc < 6) die("connect: SOCK HOST ARGS…", NULL);
    int sock = dial(argv[3]);
    size_t total = 0;
    for (int i = 5; i < argc; i++) {
        size_t n = strlen(argv[i]) + 1;
        if ((total += n) > RELAY_ARGS_MAX) die("connect: the arguments are too long", NULL);
        write_all(sock, argv[i], n);
    }
    write_all(sock, "", 1);
    carry(sock);
    return 0;
}

/* }====================================================== */

/* {======================================================
** serve: the sending side, for each connection
** ======================================================= */

/* The short options fs.sync gives rsync (and rsync's own -e.CAPS), as its server gets
** them: `-lHogDtpre.iLsfxCIvu`. */
static int rsync_flags_ok(const char *a)
{
    if (a[0] != '-' || a[1] == '-' || a[1] == '\0') return 0;
    for (const char *p = a + 1; *p; p++) {
        if (*p == 'e') { /* the rest is rsync's capability string: ".iLsfxCIvu" */
            if (p[1] != '.') return 0;
            for (const char *q = p + 2; *q; q++)
                if (!strchr("iLsfxCIvu", *q)) return 0;
            return 1;
        }
        if (!strchr("lHogDtprAXcnv", *p)) return 0;
    }
    return 1;
}

int hrun_tree_contents(const char *path, char *out, size_t size)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    int slash = n > 1 || path[0] != '/';
    if (n + (size_t)slash + 1 > size) return -1;
    memcpy(out, path, n);
    if (slash) out[n++] = '/';
    out[n] = '\0';
    return 0;
}

/* Are args (n of them) the sender fs.sync asked for, of the tree src? NULL, or why not. */
static const char *rsync_args_ok(char **args, int n, const char *src)
{
    static char want[RELAY_ARGS_MAX];
    if (hrun_tree_contents(src, want, sizeof want) < 0) return "a source too long";
    if (n < 5 || strcmp(args[0], "rsync") != 0 || strcmp(args[1], "--server") != 0 ||
        strcmp(args[2], "--sender") != 0)
        return "not an rsync sender";
    int i = 3;
    for (; i < n - 2; i++)
        if (!rsync_flags_ok(args[i]) && strcmp(args[i], "--numeric-ids") != 0)
            return "an option fs.sync does not give";
    if (strcmp(args[n - 2], ".") != 0 || strcmp(args[n - 1], want) != 0)
        return "not the source asked for";
    return NULL;
}

/* Reads the NUL-ended arguments up to an empty one: a NULL-ended array. */
static char **read_args(int fd, int *count)
{
    static char buf[RELAY_ARGS_MAX + 1];
    size_t len = 0;
    int n = 0;
    for (;;) {
        if (len == RELAY_ARGS_MAX) die("serve: the arguments are too long", NULL);
        ssize_t r = read(fd, buf + len, 1);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) die("serve: the connection ended before its arguments", NULL);
        if (buf[len++] != '\0') continue;
        if (len == 1 || buf[len - 2] == '\0') break; /* an empty one: the end */
        n++;
    }
    char **args = calloc((size_t)n + 1, sizeof *args);
    if (args == NULL) die("serve", strerror(ENOMEM));
    char *p = buf;
    for (int i = 0; i < n; i++, p += strlen(p) + 1) args[i] = p;
    *count = n;
    return args;
}

/* s quoted for a POSIX shell, appended to out (of size cap, with its length *len). */
static void shquote(char *out, size_t cap, size_t *len, const char *s)
{
    size_t need = 3 + strlen(s) * 4;
    if (*len + need + 2 >= cap) die("serve: the command is too long", NULL);
    if (*len > 0) out[(*len)++] = ' ';
    out[(*len)++] = '\'';
    for (; *s; s++) {
        if (*s == '\'') {
            memcpy(out + *len, "'\\''", 4);
            *len += 4;
        } else {
            out[(*len)++] = *s;
        }
    }
    out[(*len)++] = '\'';
    out[*len] = '\0';
}

/* In the child of one connection: the sending side, exec'd. */
static _Noreturn void answer(int conn, char **argv, int nargv, const char *src, int remote)
{
    char **extra = NULL;
    int nextra = 0;
    if (src) {
        extra = read_args(conn, &nextra);
        const char *why = rsync_args_ok(extra, nextra, src);
        if (why) {
            fprintf(stderr, "hrun relay: refused what the receiving side asked for (%s):", why);
            for (int i = 0; i < nextra; i++) fprintf(stderr, " %s", extra[i]);
            fputc('\n', stderr);
            _exit(255);
        }
    }
    char **full = calloc((size_t)nargv + (size_t)nextra + 2, sizeof *full);
    static char cmd[RELAY_ARGS_MAX * 4 + 16];
    if (full == NULL) die("serve", strerror(ENOMEM));
    int n = 0;
    for (int i = 0; i < nargv; i++) full[n++] = argv[i];
    if (remote && nextra > 0) {
        size_t len = 0;
        for (int i = 0; i < nextra; i++) shquote(cmd, sizeof cmd, &len, extra[i]);
        full[n++] = cmd;
    } else {
        for (int i = 0; i < nextra; i++) full[n++] = extra[i];
    }
    if (src && dup2(conn, 0) < 0) die("serve", strerror(errno));
    if (!src) {
        int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (null < 0 || dup2(null, 0) < 0) die("serve", strerror(errno));
    }
    if (dup2(conn, 1) < 0) die("serve", strerror(errno));
    signal(SIGCHLD, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    execvp(full[0], full);
    die(full[0], strerror(errno));
}

static const char *serving; /* the socket to remove when stopped */

/* Stopped (or idle): the senders it started end with it, and are waited for. */
static _Noreturn void stopped(int sig)
{
    (void)sig;
    if (serving) unlink(serving);
    signal(SIGTERM, SIG_IGN);
    kill(0, SIGTERM); /* its process group: it is a session of its own */
    while (wait(NULL) > 0 || errno == EINTR) {
    }
    _exit(0);
}

static _Noreturn void relay_serve(int argc, char **argv)
{
    /* hrun __relay serve SOCK (--rsync SRC | --stdout) [--remote] -- ARGV… */
    const char *path = argc > 3 ? argv[3] : NULL, *src = NULL;
    int i = 4, out = 0, remote = 0;
    for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (strcmp(argv[i], "--rsync") == 0 && i + 1 < argc)
            src = argv[++i];
        else if (strcmp(argv[i], "--stdout") == 0)
            out = 1;
        else if (strcmp(argv[i], "--remote") == 0)
            remote = 1;
        else
            die("serve: unknown option", argv[i]);
    }
    if (path == NULL || i >= argc || (src == NULL) == (out == 0) || (out && i + 1 >= argc))
        die("serve SOCK (--rsync SRC | --stdout) [--remote] -- ARGV…", NULL);
    char **cmd = argv + i + 1;
    int ncmd = argc - i - 1;
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* its caller gone: nobody will connect */
    struct sockaddr_un a;
    if (unix_addr(path, &a) < 0) die("socket path too long", path);
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    mode_t old = umask(077);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 4) < 0)
        die(path, strerror(errno));
    umask(old);
    serving = path;
    signal(SIGTERM, stopped);
    signal(SIGHUP, stopped);
    signal(SIGCHLD, SIG_IGN); /* each connection's sender is reaped by the kernel */
    fputs("ready\n", stdout);
    fflush(stdout);
    for (;;) {
        struct pollfd p = {l, POLLIN, 0};
        int r = poll(&p, 1, RELAY_IDLE_MS);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) stopped(0);
        int conn = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        if (conn < 0) continue;
        pid_t pid = fork();
        if (pid == 0) {
            close(l);
            answer(conn, cmd, ncmd, src, remote);
        }
        close(conn);
    }
}

/* }====================================================== */

/* {======================================================
** feed, pipe: the receiving side's plumbing
** ======================================================= */

static int relay_feed(int argc, char **argv)
{
    /* hrun __relay feed SOCK -- ARGV… */
    if (argc < 6 || strcmp(argv[4], "--") != 0) die("feed SOCK -- ARGV…", NULL);
    int sock = dial(argv[3]);
    shutdown(sock, SHUT_WR);
    if (dup2(sock, 0) < 0) die("feed", strerror(errno));
    signal(SIGPIPE, SIG_DFL);
    execvp(argv[5], argv + 5);
    die(argv[5], strerror(errno));
}

static pid_t start(char **argv, int in, int out)
{
    pid_t pid = fork();
    if (pid < 0) die("fork", strerror(errno));
    if (pid == 0) {
        if ((in >= 0 && dup2(in, 0) < 0) || (out >= 0 && dup2(out, 1) < 0))
            die("pipe", strerror(errno));
        signal(SIGPIPE, SIG_DFL);
        execvp(argv[0], argv);
        die(argv[0], strerror(errno));
    }
    return pid;
}

/* What a child's status says, or NULL when it succeeded. */
static const char *failure(int st, char *buf, size_t size)
{
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return NULL;
    if (WIFEXITED(st))
        snprintf(buf, size, "exited with code %d", WEXITSTATUS(st));
    else
        snprintf(buf, size, "was killed by signal %d", WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    return buf;
}

static int relay_pipe(int argc, char **argv)
{
    /* hrun __relay pipe -- A… -- B… */
    int sep = 0;
    for (int i = 4; i < argc; i++)
        if (strcmp(argv[i], "--") == 0) sep = i;
    if (argc < 6 || strcmp(argv[3], "--") != 0 || sep < 5 || sep + 1 >= argc)
        die("pipe -- A… -- B…", NULL);
    argv[sep] = NULL;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0) die("pipe", strerror(errno));
    pid_t a = start(argv + 4, -1, fds[1]);
    pid_t b = start(argv + sep + 1, fds[0], -1);
    close(fds[0]), close(fds[1]);
    int sa = 0, sb = 0;
    while (waitpid(a, &sa, 0) < 0 && errno == EINTR) {
    }
    while (waitpid(b, &sb, 0) < 0 && errno == EINTR) {
    }
    char wa[64], wb[64];
    const char *fa = failure(sa, wa, sizeof wa), *fb = failure(sb, wb, sizeof wb);
    if (fa) fprintf(stderr, "hrun relay: the sending side (%s) %s\n", argv[4], fa);
    if (fb) fprintf(stderr, "hrun relay: the receiving side (%s) %s\n", argv[sep + 1], fb);
    return fa || fb ? 1 : 0;
}

/* }====================================================== */

int hrun_relay_main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    const char *mode = argc > 2 ? argv[2] : "";
    if (strcmp(mode, "serve") == 0) relay_serve(argc, argv);
    if (strcmp(mode, "connect") == 0) return relay_connect(argc, argv);
    if (strcmp(mode, "feed") == 0) return relay_feed(argc, argv);
    if (strcmp(mode, "pipe") == 0) return relay_pipe(argc, argv);
    fprintf(stderr, "hrun: __relay is started by hrun itself (fs.sync, btrfs.receive)\n");
    return 2;
}
