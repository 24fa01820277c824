/*
** spawn.c — child processes: fork and exec into a new process group, a poll loop that
** feeds stdin and drains stdout and stderr (so neither pipe can fill and deadlock), a
** timeout and interrupts that stop the whole group, SIGTERM first, SIGKILL after a grace.
**
** Every child is reported (children.c's spawn sink: the journal records its group) before
** it may run its program: it waits on a gate pipe between fork and exec, and only a byte
** written after the report opens it. A refused child dies at the gate, having run nothing.
**
** The child shares hrun's memory until its exec (clone with CLONE_VM, on a stack of its
** own), as posix_spawn's does, but without suspending hrun, which must report it while
** it waits: a fork would copy hrun's page tables and make every page it writes next
** fault, for a child that only waits and execs. Under the sanitizers it is a fork.
*/
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/pidfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hrun/spawn.h"
#include "internal.h"

extern char **environ;

/* What hrun_spawn reports each child to (children.c installs it with a spawn sink). */
static hrun_SpawnReport default_report;
static void *default_report_ud;

void hrun_setspawnreport(hrun_SpawnReport report, void *ud)
{
    default_report = report;
    default_report_ud = ud;
}

void hrun_proc_init(hrun_Proc *p)
{
    memset(p, 0, sizeof *p);
    p->pidfd = p->fds[0] = p->fds[1] = p->fds[2] = -1;
}

static void closefd(int *fd)
{
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

/* The file name runs (searched in PATH as execvp does, in this process so that a missing
** program fails before anything is started): 0, or ENOENT, EACCES. */
static int find_program(const char *name, char *out, size_t size)
{
    if (strchr(name, '/')) {
        if (strlen(name) >= size) return ENAMETOOLONG;
        strcpy(out, name);
        return 0;
    }
    const char *path = getenv("PATH");
    int err = ENOENT;
    if (path == NULL) path = "/bin:/usr/bin";
    for (const char *dir = path;; dir++) {
        const char *end = strchr(dir, ':');
        size_t len = end ? (size_t)(end - dir) : strlen(dir);
        int n = len == 0 ? snprintf(out, size, "%s", name) /* "" is the working directory */
                         : snprintf(out, size, "%.*s/%s", (int)len, dir, name);
        struct stat st;
        if (n > 0 && (size_t)n < size && stat(out, &st) == 0 && S_ISREG(st.st_mode)) {
            if (access(out, X_OK) == 0) return 0;
            err = EACCES;
        }
        if (end == NULL) break;
        dir = end;
    }
    return err;
}

/* fd moved (if need be) above the standard three, so that setting those up cannot
** overwrite it; close-on-exec. */
static int above_std(int fd)
{
    return fd > 2 ? fd : fcntl(fd, F_DUPFD_CLOEXEC, 3);
}

/* The child between fork and exec: async-signal-safe calls only (this process may have
** threads). fds: its stdin, stdout, stderr; theirs: the parent's ends, closed first (the
** gate's, so that the parent's death is EOF). Reports a failure as its errno on ep and
** exits 127. */
static _Noreturn void child(const char *file, const hrun_SpawnOpts *o, int fds[3], int gate, int ep,
                            const int theirs[5])
{
    struct sigaction dfl;
    sigset_t none;
    char b;
    int err = 0;

    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    /* only signals that can be set: a failed call would write errno, which this child
    ** shares with hrun's thread (CLONE_VM) */
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP && (sig < 32 || sig >= SIGRTMIN))
            sigaction(sig, &dfl, NULL);
    setpgid(0, 0);
    for (int i = 0; i < 5; i++)
        if (theirs[i] >= 0) close(theirs[i]);
    gate = above_std(gate), ep = above_std(ep);
    for (int i = 0; i < 3; i++) fds[i] = above_std(fds[i]);
    /* the parent opens the gate once the report is made; EOF: it refused, or died */
    ssize_t n;
    do n = read(gate, &b, 1);
    while (n < 0 && errno == EINTR);
    if (n != 1) _exit(127);
    for (int i = 0; i < 3 && err == 0; i++)
        if (dup2(fds[i], i) < 0) err = errno;
    if (err == 0 && o->cwd && chdir(o->cwd) < 0) err = errno;
    if (err == 0) {
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execve(file, o->argv, o->envp ? o->envp : environ);
        err = errno;
    }
    while (write(ep, &err, sizeof err) < 0 && errno == EINTR) {
    }
    _exit(127);
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SPAWN_FORK 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SPAWN_FORK 1
#endif
#endif

/* What the child needs until its exec, in hrun_spawn_reported's frame: that outlives it
** (the parent waits on ep for the exec, or for the child's end). */
typedef struct ChildArgs {
    const char *file;
    const hrun_SpawnOpts *o;
    int fds[3], gate, ep, theirs[5];
} ChildArgs;

static int child_main(void *arg)
{
    const ChildArgs *a = arg;
    int fds[3] = {a->fds[0], a->fds[1], a->fds[2]}; /* its own copy: child() moves them */
    child(a->file, a->o, fds, a->gate, a->ep, a->theirs);
}

#define CHILD_STACK (64 * 1024)

/* A child running child(), in a new process: its pid, or -1 with errno. *stack is what
** to unmap once it has exec'd or ended (NULL when it is a fork). */
static pid_t start_child(const ChildArgs *a, void **stack)
{
    *stack = NULL;
#ifdef SPAWN_FORK
    pid_t pid = fork();
    if (pid == 0) child_main((void *)a);
    return pid;
#else
    void *s = mmap(NULL, CHILD_STACK, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (s == MAP_FAILED) return -1;
    pid_t pid = clone(child_main, (char *)s + CHILD_STACK, CLONE_VM | SIGCHLD, (void *)a);
    if (pid < 0) {
        int err = errno;
        munmap(s, CHILD_STACK);
        errno = err;
        return -1;
    }
    *stack = s;
    return pid;
#endif
}

int hrun_spawn(hrun_Proc *p, const hrun_SpawnOpts *o)
{
    return hrun_spawn_reported(p, o, default_report, default_report_ud);
}

int hrun_spawn_reported(hrun_Proc *p, const hrun_SpawnOpts *o, hrun_SpawnReport report, void *ud)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, gate[2] = {-1, -1};
    int ep[2] = {-1, -1};
    char file[PATH_MAX];
    void *stack = NULL;
    sigset_t all, old;
    int rc = find_program(o->argv[0], file, sizeof file);

    if (rc != 0) return rc;
    if (o->input)
        rc = pipe2(in, O_CLOEXEC);
    else if ((in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0)
        rc = -1;
    if (rc < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0 ||
        pipe2(gate, O_CLOEXEC) < 0 || pipe2(ep, O_CLOEXEC) < 0) {
        rc = errno;
        goto done;
    }
    /* nothing may run a handler in the child before it resets them all */
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    ChildArgs args = {file,    o,     {in[0], out[1], err[1]},
                      gate[0], ep[1], {in[1], out[0], err[0], gate[1], ep[0]}};
    pid_t pid = start_child(&args, &stack);
    rc = pid < 0 ? errno : 0;
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) goto done;
    setpgid(pid, pid); /* the child does it too: it is done before either goes on */
    closefd(&in[0]), closefd(&out[1]), closefd(&err[1]), closefd(&gate[0]), closefd(&ep[1]);
    p->pid = p->pgid = pid;

    if (report && report(ud, p, o->argv[0]) != 0) {
        rc = HRUN_REFUSED;
    } else {
        ssize_t n;
        do n = write(gate[1], "", 1);
        while (n < 0 && errno == EINTR);
        closefd(&gate[1]);
        int cerr = 0;
        do n = read(ep[0], &cerr, sizeof cerr);
        while (n < 0 && errno == EINTR);
        rc = n == (ssize_t)sizeof cerr ? cerr : 0; /* EOF: exec closed it */
    }
    if (rc != 0) {
        /* refused: it dies at the gate, having run nothing; or its exec failed */
        kill(-pid, SIGKILL);
        closefd(&gate[1]);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
        p->pid = 0;
        goto done;
    }
    p->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    p->fds[0] = in[1], p->fds[1] = out[0], p->fds[2] = err[0];
    in[1] = out[0] = err[0] = -1;
    for (int i = 0; i < 3; i++)
        if (p->fds[i] >= 0) fcntl(p->fds[i], F_SETFL, fcntl(p->fds[i], F_GETFL) | O_NONBLOCK);
    p->input_off = 0;
    p->started = hrun_monotime();
done:
    /* the child has exec'd (a memory of its own) or is gone: its stack is free */
    if (stack) munmap(stack, CHILD_STACK);
    closefd(&in[0]), closefd(&in[1]), closefd(&out[0]), closefd(&out[1]);
    closefd(&err[0]), closefd(&err[1]), closefd(&gate[0]), closefd(&gate[1]);
    closefd(&ep[0]), closefd(&ep[1]);
    return rc;
}

static void signal_group(hrun_Proc *p, int sig)
{
    if (p->pgid > 0) kill(-p->pgid, sig);
    p->killsig = sig;
}

static void reap(hrun_Proc *p, int options)
{
    int status;
    if (p->pid <= 0) return;
    pid_t r;
    do r = waitpid(p->pid, &status, options);
    while (r < 0 && errno == EINTR);
    if (r == p->pid || (r < 0 && errno == ECHILD)) {
        p->status = r == p->pid ? status : 0;
        p->pid = 0;
        closefd(&p->pidfd);
    }
}

/* Is a process of group pgid still running? Zombies do not count: they are dead, and
** reaping the ones that were reparented is init's job, which it may do late. */
int hrun_group_alive(pid_t pgid)
{
    DIR *d = opendir("/proc");
    if (d == NULL) return kill(-pgid, 0) == 0;
    int alive = 0;
    struct dirent *de;
    while (!alive && (de = readdir(d)) != NULL) {
        char path[64], buf[512];
        if (de->d_name[0] < '0' || de->d_name[0] > '9') continue;
        snprintf(path, sizeof path, "/proc/%.20s/stat", de->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0) continue;
        buf[n] = '\0';
        /* pid (comm) state ppid pgrp …; comm may hold anything, so parse after the last ')' */
        char *rp = strrchr(buf, ')');
        char state;
        int ppid, pgrp;
        if (rp && sscanf(rp + 1, " %c %d %d", &state, &ppid, &pgrp) == 3)
            alive = pgrp == pgid && state != 'Z' && state != 'X';
    }
    closedir(d);
    return alive;
}

/* After a kill, waits (bounded) until no process is left running in the group. */
static void await_group(hrun_Proc *p)
{
    for (int i = 0; i < 200 && p->pgid > 0; i++) {
        if (!hrun_group_alive(p->pgid)) break;
        kill(-p->pgid, SIGKILL);
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static int pump_output(hrun_Proc *p, const hrun_SpawnOpts *o, int i, char *buf, size_t size)
{
    for (;;) {
        ssize_t n = read(p->fds[i], buf, size);
        if (n > 0) {
            if (o->output && o->output(o->ud, i, buf, (size_t)n)) return -1;
            if ((size_t)n < size) return 0;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return 0;
        closefd(&p->fds[i]); /* EOF, or an error we cannot do better with */
        return 0;
    }
}

static void feed_input(hrun_Proc *p, const hrun_SpawnOpts *o)
{
    while (p->input_off < o->input_len) {
        ssize_t n = write(p->fds[0], o->input + p->input_off, o->input_len - p->input_off);
        if (n > 0) {
            p->input_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return;
        break; /* EPIPE: the child does not want the rest */
    }
    closefd(&p->fds[0]);
}

#define NEVER 1e300

void hrun_proc_wait(hrun_Proc *p, const hrun_SpawnOpts *o)
{
    char buf[1 << 16]; /* not static: an output callback may run another child */
    double deadline = o->timeout > 0 ? p->started + o->timeout : NEVER;
    double killat = NEVER, drain_until = NEVER;
    double next_tick = o->tick ? hrun_monotime() + o->tick_interval : NEVER;
    int seen = 0;
    sigset_t block, old;

    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigprocmask(SIG_BLOCK, &block, &old);
    if (p->fds[0] >= 0 && o->input_len == 0) closefd(&p->fds[0]);
    for (;;) {
        double now = hrun_monotime();
        int n = hrun_interrupted();
        if (n > seen) {
            /* the first interrupt is passed on, as a terminal would; the second kills */
            p->interrupted = 1;
            if (p->killsig == 0 && seen == 0) {
                signal_group(p, SIGINT);
                killat = now + o->grace;
            } else {
                signal_group(p, SIGKILL);
            }
        }
        seen = n;
        if (p->killsig == 0 && now >= deadline) {
            p->timed_out = 1;
            signal_group(p, SIGTERM);
            killat = now + o->grace;
        }
        if (p->killsig && p->killsig != SIGKILL && now >= killat) signal_group(p, SIGKILL);
        reap(p, WNOHANG);
        /* once a stopped child is gone, processes that escaped its group may still hold
        ** the pipes: read what is there, then stop waiting for them */
        if (p->pid == 0 && p->killsig && drain_until == NEVER) drain_until = now + 0.2;
        if (p->pid == 0 && (p->fds[1] < 0 && p->fds[2] < 0)) break;
        if (p->pid == 0 && now >= drain_until) break;

        struct pollfd pf[4];
        int idx[4], nf = 0;
        if (p->fds[0] >= 0) pf[nf] = (struct pollfd){p->fds[0], POLLOUT, 0}, idx[nf++] = 0;
        if (p->fds[1] >= 0) pf[nf] = (struct pollfd){p->fds[1], POLLIN, 0}, idx[nf++] = 1;
        if (p->fds[2] >= 0) pf[nf] = (struct pollfd){p->fds[2], POLLIN, 0}, idx[nf++] = 2;
        if (p->pidfd >= 0 && p->pid > 0)
            pf[nf] = (struct pollfd){p->pidfd, POLLIN, 0}, idx[nf++] = 3;
        if (now >= next_tick) {
            o->tick(o->ud);
            next_tick = now + o->tick_interval;
        }
        double wake = p->killsig == 0 ? deadline : p->killsig != SIGKILL ? killat : NEVER;
        if (next_tick < wake) wake = next_tick;
        if (drain_until < wake) wake = drain_until;
        if (p->pid > 0 && p->pidfd < 0 && wake > now + 0.05) wake = now + 0.05; /* no pidfd */
        struct timespec ts, *tsp = NULL;
        if (wake < NEVER) {
            double left = wake > now ? wake - now : 0;
            ts.tv_sec = (time_t)left;
            ts.tv_nsec = (long)((left - (double)ts.tv_sec) * 1e9);
            tsp = &ts;
        }
        if (ppoll(pf, (nfds_t)nf, tsp, &old) <= 0) continue;
        for (int k = 0; k < nf; k++) {
            if (!pf[k].revents) continue;
            if (idx[k] == 0)
                feed_input(p, o);
            else if (idx[k] < 3 && p->fds[idx[k]] >= 0) {
                if (pump_output(p, o, idx[k], buf, sizeof buf) < 0 && p->killsig == 0) {
                    p->aborted = 1;
                    signal_group(p, SIGTERM);
                    killat = hrun_monotime() + o->grace;
                }
            }
        }
    }
    if (p->killsig) await_group(p);
    closefd(&p->fds[0]), closefd(&p->fds[1]), closefd(&p->fds[2]);
    p->seconds = hrun_monotime() - p->started;
    sigprocmask(SIG_SETMASK, &old, NULL);
}

void hrun_proc_close(hrun_Proc *p)
{
    if (p->pid > 0) {
        signal_group(p, SIGKILL);
        reap(p, 0);
        await_group(p);
    }
    closefd(&p->pidfd);
    closefd(&p->fds[0]), closefd(&p->fds[1]), closefd(&p->fds[2]);
}
