/*
** xxh_avx2.c — XXH3-128 compiled for AVX2 from libxxhash's own header (XXH_INLINE_ALL),
** under names of its own. Debian's libxxhash is built for plain SSE2; xxhsum dispatches
** at run time. hashpool.c calls these when the CPU has AVX2, the library otherwise.
*/
#define XXH_INLINE_ALL
#define XXH_NAMESPACE hrun_avx2_
#define XXH_VECTOR    XXH_AVX2
#include <xxhash.h>

#include "xxh_avx2.h"

void *hrun_xxh3_avx2_new(void)
{
    XXH3_state_t *s = XXH3_createState();
    if (s) XXH3_128bits_reset(s);
    return s;
}

void hrun_xxh3_avx2_update(void *state, const void *data, size_t len)
{
    XXH3_128bits_update(state, data, len);
}

void hrun_xxh3_avx2_digest(void *state, unsigned char out[16])
{
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits_digest(state));
    memcpy(out, c.digest, 16);
    XXH3_freeState(state);
}
