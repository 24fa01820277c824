/*
** xxh_avx2.h — XXH3-128 streaming for AVX2 CPUs (xxh_avx2.c, compiled with -mavx2).
*/
#ifndef HRUN_XXH_AVX2_H
#define HRUN_XXH_AVX2_H

#include <stddef.h>

void *hrun_xxh3_avx2_new(void);
void hrun_xxh3_avx2_update(void *state, const void *data, size_t len);
/* writes the canonical (big-endian) digest and frees the state */
void hrun_xxh3_avx2_digest(void *state, unsigned char out[16]);

#endif
