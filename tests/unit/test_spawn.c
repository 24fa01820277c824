/*
** test_spawn.c — the process engine on its own: big outputs on both pipes without
** deadlock, stdin, timeouts that leave no process of the group behind.
*/
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "hrun/spawn.h"
#include "internal.h"
#include "unit.h"

typedef struct Sink {
    size_t bytes[3];
    unsigned char last[3];
} Sink;

static int sink(void *ud, int stream, const char *data, size_t len)
{
    Sink *s = ud;
    s->bytes[stream] += len;
    s->last[stream] = (unsigned char)data[len - 1];
    return 0;
}

static int run(char *const argv[], const char *input, size_t inlen, double timeout, Sink *s,
               hrun_Proc *p)
{
    hrun_SpawnOpts o = {.argv = argv,
                        .input = input,
                        .input_len = inlen,
                        .timeout = timeout,
                        .grace = 0.5,
                        .output = sink,
                        .ud = s};
    hrun_proc_init(p);
    int rc = hrun_spawn(p, &o);
    if (rc == 0) hrun_proc_wait(p, &o);
    hrun_proc_close(p);
    return rc;
}

static void test_big_outputs_on_both_pipes(void)
{
    /* 10 MB on each, interleaved: a reader of one pipe at a time would deadlock */
    char *argv[] = {"sh", "-c",
                    "head -c 10000000 /dev/zero | tr '\\0' o & head -c 10000000 /dev/zero | "
                    "tr '\\0' e >&2; wait",
                    NULL};
    Sink s = {0};
    hrun_Proc p;
    CHECK(run(argv, NULL, 0, 60, &s, &p) == 0);
    CHECK(WIFEXITED(p.status) && WEXITSTATUS(p.status) == 0);
    CHECK(s.bytes[HRUN_STDOUT] == 10000000 && s.last[HRUN_STDOUT] == 'o');
    CHECK(s.bytes[HRUN_STDERR] == 10000000 && s.last[HRUN_STDERR] == 'e');
}

static void test_stdin_round_trip(void)
{
    size_t n = 10000000;
    char *input = malloc(n);
    memset(input, 'i', n);
    char *argv[] = {"cat", NULL};
    Sink s = {0};
    hrun_Proc p;
    CHECK(run(argv, input, n, 60, &s, &p) == 0);
    CHECK(s.bytes[HRUN_STDOUT] == n && s.last[HRUN_STDOUT] == 'i');
    free(input);
}

static void test_timeout_kills_the_group(void)
{
    /* a child and a grandchild, both ignoring nothing; the group must be gone after */
    char *argv[] = {"sh", "-c", "sleep 30 & sleep 30; wait", NULL};
    Sink s = {0};
    hrun_Proc p;
    double t0 = hrun_monotime();
    CHECK(run(argv, NULL, 0, 0.3, &s, &p) == 0);
    CHECK(p.timed_out);
    CHECK(hrun_monotime() - t0 < 5);
    CHECK(!hrun_group_alive(p.pgid));
}

static void test_timeout_escalates_to_sigkill(void)
{
    char *argv[] = {"sh", "-c", "trap '' TERM; sleep 30 & wait; sleep 30", NULL};
    Sink s = {0};
    hrun_Proc p;
    CHECK(run(argv, NULL, 0, 0.3, &s, &p) == 0);
    CHECK(p.timed_out && p.killsig == SIGKILL);
    CHECK(!hrun_group_alive(p.pgid));
}

static void test_missing_program(void)
{
    char *argv[] = {"hrun-no-such-program", NULL};
    Sink s = {0};
    hrun_Proc p;
    CHECK(run(argv, NULL, 0, 0, &s, &p) == ENOENT);
}

int main(void)
{
    RUN(test_big_outputs_on_both_pipes);
    RUN(test_stdin_round_trip);
    RUN(test_timeout_kills_the_group);
    RUN(test_timeout_escalates_to_sigkill);
    RUN(test_missing_program);
    return UNIT_END();
}
