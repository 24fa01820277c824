/*
** fuzz.c — one libFuzzer target per driver in tests/fuzz/<name>.lua.
**
** The driver is a Lua chunk given the engine's private library; it returns a function
** that takes one input. Bad input is expected to come back as a value (a playbook's
** problems, nil and a message); the driver raises only when an invariant breaks, and a
** raise is a crash here (abort), as a memory error is under ASan. The C under test —
** the JSON codec, the manifest import parser, the flake.nix rewriter, the registry and
** the sandbox a playbook's file runs in — is what the fuzzer instruments.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <lualib.h>

#include "internal.h"

#ifndef FUZZ_TARGET
#error "FUZZ_TARGET: the driver's name"
#endif

static lua_State *L;
static int driver = LUA_NOREF;

static void setup(void)
{
    L = hrun_newstate();
    if (L == NULL) abort();
    hrun_openlibs(L);
    lua_pop(L, 1);
    lua_getglobal(L, "package");
    lua_pushliteral(L, HRUN_SOURCE_STDLIB "/?.lua");
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
    if (luaL_loadfile(L, HRUN_FUZZ_DIR "/" FUZZ_TARGET ".lua") != LUA_OK) goto fail;
    hrun_openprivate(L);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_isfunction(L, -1)) goto fail;
    driver = luaL_ref(L, LUA_REGISTRYINDEX);
    return;
fail:
    fprintf(stderr, "fuzz %s: %s\n", FUZZ_TARGET, lua_tostring(L, -1));
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (L == NULL) setup();
    lua_rawgeti(L, LUA_REGISTRYINDEX, driver);
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        fprintf(stderr, "fuzz %s: an invariant broke: %s\n", FUZZ_TARGET, lua_tostring(L, -1));
        abort();
    }
    lua_settop(L, 0);
    return 0;
}
