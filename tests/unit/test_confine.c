/*
** test_confine.c — the kernel's hold on a sandboxed playbook's process, tried for real:
** a forked child confines itself as `hrun __sandbox` does and then attempts what a
** playbook that broke out of Lua would: open a file, run a program, open a socket, trace,
** signal another process, map executable memory, allocate past its limit.  Each must
** fail; reading and writing its pipe must still work.
*/
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "unit.h"

enum {
    ROOT,
    OPEN_FILE,
    OPEN_DIR,
    CREATE,
    EXECVE,
    SOCK_INET,
    SOCK_UNIX,
    PTRACE,
    KILL_PARENT,
    PRLIMIT_PARENT,
    MMAP_EXEC,
    BIG_MALLOC,
    PIPE_WRITE,
    NTRIES
};
static const char *const names[] = {"stay root",
                                    "open a file",
                                    "open a directory",
                                    "create a file",
                                    "execve",
                                    "an inet socket",
                                    "a unix socket",
                                    "ptrace",
                                    "signal the parent",
                                    "read the parent's limits",
                                    "executable memory",
                                    "1 GiB more than the limit",
                                    "write its pipe"};

/* In the child: confine, try each thing, write one byte per try (1: it worked). */
static void attempts(int out, size_t memory)
{
    hrun_Confinement c;
    hrun_confine(memory, &c);
    char r[NTRIES + 4];
    r[NTRIES] = (char)('0' + c.no_new_privs);
    r[NTRIES + 1] = (char)('0' + (c.landlock_abi > 0));
    r[NTRIES + 2] = (char)('0' + c.seccomp);
    r[NTRIES + 3] = (char)('0' + c.rlimit_as);
    r[ROOT] = getuid() == 0 || geteuid() == 0 || getgid() == 0;
    int fd = open("/etc/hostname", O_RDONLY);
    r[OPEN_FILE] = fd >= 0;
    fd = open("/", O_RDONLY | O_DIRECTORY);
    r[OPEN_DIR] = fd >= 0;
    fd = open("/tmp/hrun-confine-test-must-not-exist", O_WRONLY | O_CREAT, 0600);
    r[CREATE] = fd >= 0;
    char *argv[] = {"/bin/true", NULL};
    execve("/bin/true", argv, argv + 1); /* returns only when refused */
    r[EXECVE] = 0;
    r[SOCK_INET] = socket(AF_INET, SOCK_STREAM, 0) >= 0;
    r[SOCK_UNIX] = socket(AF_UNIX, SOCK_STREAM, 0) >= 0;
    r[PTRACE] = ptrace(PTRACE_TRACEME, 0, NULL, NULL) == 0;
    r[KILL_PARENT] = kill(getppid(), 0) == 0;
    struct rlimit lim = {0, 0};
    r[PRLIMIT_PARENT] = prlimit(getppid(), RLIMIT_NOFILE, NULL, &lim) == 0;
    void *m = mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    r[MMAP_EXEC] = m != MAP_FAILED;
    void *big = malloc(memory + (1u << 30));
    r[BIG_MALLOC] = big != NULL;
    r[PIPE_WRITE] = 1;
    if (write(out, r, sizeof r) != (ssize_t)sizeof r) _exit(3);
    _exit(0);
}

static void test_a_confined_process_can_only_use_its_pipe(void)
{
    int p[2];
    CHECK(pipe(p) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        attempts(p[1], 64u << 20);
    }
    close(p[1]);
    char r[NTRIES + 4] = {0};
    ssize_t n = read(p[0], r, sizeof r);
    close(p[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(n == (ssize_t)sizeof r);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(r[NTRIES] == '1');     /* no_new_privs */
    CHECK(r[NTRIES + 1] == '1'); /* Landlock (this machine's kernel has it) */
    CHECK(r[NTRIES + 2] == '1'); /* seccomp */
    for (int i = 0; i < NTRIES; i++) {
        int expect = i == PIPE_WRITE;
#if defined(__SANITIZE_ADDRESS__)
        if (i == BIG_MALLOC) continue; /* no RLIMIT_AS under ASan: its shadow needs the room */
#endif
        if (r[i] != expect) {
            fprintf(stderr, "  %s: %s\n", names[i], r[i] ? "worked" : "was refused");
            unit_current_ok = 0;
        }
    }
    CHECK(access("/tmp/hrun-confine-test-must-not-exist", F_OK) != 0);
}

/* HRUN_SANDBOX_OMIT takes parts away, and each is reported missing with the reason. */
static void test_omitted_parts_are_reported(void)
{
    int p[2];
    CHECK(pipe(p) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        setenv("HRUN_SANDBOX_OMIT", "landlock,seccomp", 1);
        hrun_Confinement c;
        hrun_confine(64u << 20, &c);
        int fd = open("/etc/hostname", O_RDONLY); /* not confined now: it opens */
        dprintf(p[1], "%d %d %d", c.landlock_abi, c.seccomp, fd >= 0);
        for (int i = 0; i < c.nmissing; i++) dprintf(p[1], "|%s", c.missing[i]);
        _exit(0);
    }
    close(p[1]);
    char buf[1200] = {0};
    ssize_t n = 0, r;
    while ((r = read(p[0], buf + n, sizeof buf - 1 - (size_t)n)) > 0) n += r;
    close(p[0]);
    waitpid(pid, NULL, 0);
    CHECK(n > 0);
    if (strncmp(buf, "0 0 1|", 6) != 0) fprintf(stderr, "  got: %s\n", buf);
    CHECK(strncmp(buf, "0 0 1|", 6) == 0);
    CHECK(strstr(buf, "landlock: omitted (HRUN_SANDBOX_OMIT)") != NULL);
    CHECK(strstr(buf, "seccomp: omitted (HRUN_SANDBOX_OMIT)") != NULL);
}

int main(void)
{
    RUN(test_a_confined_process_can_only_use_its_pipe);
    RUN(test_omitted_parts_are_reported);
    return UNIT_END();
}
