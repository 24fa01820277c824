/*
** digest.c — message digests through OpenSSL's EVP (which uses the CPU's SHA
** instructions where it has them): the playbook's content hash for the journal.
*/
#include <openssl/evp.h>

#include "internal.h"

/* sha256(data) → lowercase hex digest */
static int priv_sha256(lua_State *L)
{
    size_t len;
    const char *data = luaL_checklstring(L, 1, &len);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL))
        return luaL_error(L, "sha256: OpenSSL failed");
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    static const char digits[] = "0123456789abcdef";
    for (unsigned int i = 0; i < mdlen; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    lua_pushlstring(L, hex, 2 * (size_t)mdlen);
    return 1;
}

void hrun_opendigest(lua_State *L)
{
    lua_pushcfunction(L, priv_sha256);
    lua_setfield(L, -2, "sha256");
}
