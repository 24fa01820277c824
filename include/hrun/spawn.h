/*
** spawn.h — running a child process with its output captured: no shell, its own
** process group, stdin from a buffer, a timeout and interrupts that end the whole group.
** Plain C, no Lua: the `exec` module is its glue, other modules may use it directly.
*/
#ifndef HRUN_SPAWN_H
#define HRUN_SPAWN_H

#include <stddef.h>
#include <sys/types.h>

enum { HRUN_STDOUT = 1, HRUN_STDERR = 2 };

typedef struct hrun_SpawnOpts {
    char *const *argv; /* argv[0] is looked up in PATH unless it has a '/' */
    char *const *envp; /* NULL: this process's environment */
    const char *cwd;   /* NULL: this process's */
    const char *input; /* written to the child's stdin; NULL: stdin is /dev/null */
    size_t input_len;
    double timeout; /* seconds; <= 0: none */
    double grace;   /* seconds between SIGTERM and SIGKILL */
    /* Called with each chunk the child writes (HRUN_STDOUT or HRUN_STDERR); a non-zero
    ** return stops the child as a timeout would. */
    int (*output)(void *ud, int stream, const char *data, size_t len);
    void *ud;
    /* Called about every tick_interval seconds while waiting (a spinner); NULL: never. */
    void (*tick)(void *ud);
    double tick_interval;
} hrun_SpawnOpts;

typedef struct hrun_Proc {
    pid_t pid;  /* 0: no child (not started, or reaped) */
    pid_t pgid; /* its process group, kept after it is reaped */
    int pidfd;  /* -1 where the kernel has none */
    int fds[3]; /* our ends: stdin (write), stdout, stderr (read); -1 when closed */
    size_t input_off;
    int status;  /* waitpid status once reaped */
    int killsig; /* the last signal we sent the group, 0 if none */
    int timed_out, interrupted, aborted;
    double started, seconds;
} hrun_Proc;

/* Marks p as holding nothing (so hrun_proc_close is safe on it). */
void hrun_proc_init(hrun_Proc *p);

/* Starts the child. Returns 0, or an errno value (ENOENT: no such program). */
int hrun_spawn(hrun_Proc *p, const hrun_SpawnOpts *o);

/* Feeds stdin, drains the output, enforces the timeout and watches for interrupts
** until the child has exited and its output is closed. Fills status, killsig,
** timed_out, interrupted, aborted and seconds. */
void hrun_proc_wait(hrun_Proc *p, const hrun_SpawnOpts *o);

/* Does a process of group pgid still run (zombies aside)? */
int hrun_group_alive(pid_t pgid);

/* Kills what is left of the child's group (SIGKILL), reaps the child, closes the
** pipes. Idempotent: the __gc and __close of a process handle. */
void hrun_proc_close(hrun_Proc *p);

#endif
