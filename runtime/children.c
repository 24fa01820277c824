/*
** children.c — the process groups of running children, for the journal (being written).
*/
#include "internal.h"

void hrun_openchildren(lua_State *L)
{
    (void)L;
}
