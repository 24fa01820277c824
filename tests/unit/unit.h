/*
** unit.h — the few macros the C unit tests need: CHECK, a named test, a summary.
*/
#ifndef HRUN_UNIT_H
#define HRUN_UNIT_H

#include <stdio.h>
#include <string.h>

static int unit_passed, unit_failed, unit_current_ok;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "  %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);             \
            unit_current_ok = 0;                                                                   \
        }                                                                                          \
    } while (0)

#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0) {                                     \
            fprintf(stderr, "  %s:%d: \"%s\" != \"%s\"\n", __FILE__, __LINE__, a_ ? a_ : "(null)", \
                    b_ ? b_ : "(null)");                                                           \
            unit_current_ok = 0;                                                                   \
        }                                                                                          \
    } while (0)

#define RUN(test)                                                                                  \
    do {                                                                                           \
        unit_current_ok = 1;                                                                       \
        test();                                                                                    \
        if (unit_current_ok)                                                                       \
            unit_passed++;                                                                         \
        else                                                                                       \
            unit_failed++, fprintf(stderr, "FAIL %s\n", #test);                                    \
    } while (0)

#define UNIT_END() (printf("%d passed, %d failed\n", unit_passed, unit_failed), unit_failed ? 1 : 0)

#endif
