/*
** undo.c — what the engine needs to undo writes safely (being written).
*/
#include "internal.h"

void hrun_openundo(lua_State *L)
{
    (void)L;
}
