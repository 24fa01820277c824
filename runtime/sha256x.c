/*
** sha256x.c — multi-buffer SHA-256 (FIPS 180-4): each SIMD lane holds one message's state,
** so 8 (AVX2) or 16 (AVX-512) files are compressed by one instruction stream. OpenSSL
** has such kernels only inside its TLS record ciphers, and no Debian package offers one;
** the rounds below are the standard's, checked against OpenSSL's digests by
** tests/unit/test_sha256x.c. Each kernel is compiled for its
** instruction set alone (target attributes) and chosen at run time.
*/
#include <cpuid.h>
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

/* SHA256_CTX is deprecated in OpenSSL 3, but EVP cannot start a digest from a state: the
** detached lanes below are the one use, kept to this file */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>

#include "sha256x.h"

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static const uint32_t H0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

/* One round, with the eight working variables named by the caller in their rotation:
** after it, d holds the new e and h the new a (the standard's shifting, by renaming). */
#define ROUND(a, b, c, d, e, f, g, h, kw)                                                          \
    do {                                                                                           \
        V t1_ = ADD(ADD(h, SIGMA1(e)), ADD(CH(e, f, g), kw));                                      \
        V t2_ = ADD(SIGMA0(a), MAJ(a, b, c));                                                      \
        d = ADD(d, t1_);                                                                           \
        h = ADD(t1_, t2_);                                                                         \
    } while (0)

/* Round t: from round 16 on, the message schedule w[16] is extended in place as a ring
** (W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16]). t is a constant everywhere, so
** the indexing and the test fold away and w stays in registers. */
#define R(t, a, b, c, d, e, f, g, h)                                                               \
    do {                                                                                           \
        if ((t) >= 16)                                                                             \
            w[(t)&15] = ADD(ADD(w[(t)&15], s1(w[((t) + 14) & 15])),                                \
                            ADD(w[((t) + 9) & 15], s0(w[((t) + 1) & 15])));                        \
        ROUND(a, b, c, d, e, f, g, h, ADD(w[(t)&15], SET1(K[t])));                                 \
    } while (0)

#define EIGHT(t)                                                                                   \
    R((t) + 0, a, b, c, d, e, f, g, h);                                                            \
    R((t) + 1, h, a, b, c, d, e, f, g);                                                            \
    R((t) + 2, g, h, a, b, c, d, e, f);                                                            \
    R((t) + 3, f, g, h, a, b, c, d, e);                                                            \
    R((t) + 4, e, f, g, h, a, b, c, d);                                                            \
    R((t) + 5, d, e, f, g, h, a, b, c);                                                            \
    R((t) + 6, c, d, e, f, g, h, a, b);                                                            \
    R((t) + 7, b, c, d, e, f, g, h, a)

/* The body of a kernel: load the state; per block, the 16 big-endian words of every lane
** (LOAD_W: each lane's block loaded, then transposed so that w[t] holds word t of all
** lanes — a third faster than gathers), 64 rounds, add; store. */
#define KERNEL_BODY                                                                                \
    V a = LOAD(s->h[0]), b = LOAD(s->h[1]), c = LOAD(s->h[2]), d = LOAD(s->h[3]);                  \
    V e = LOAD(s->h[4]), f = LOAD(s->h[5]), g = LOAD(s->h[6]), h = LOAD(s->h[7]);                  \
    for (size_t blk = 0; blk < n; blk++) {                                                         \
        V w[16];                                                                                   \
        LOAD_W(w, base, off, 64 * blk);                                                            \
        V a0 = a, b0 = b, c0 = c, d0 = d, e0 = e, f0 = f, g0 = g, h0 = h;                          \
        EIGHT(0);                                                                                  \
        EIGHT(8);                                                                                  \
        EIGHT(16);                                                                                 \
        EIGHT(24);                                                                                 \
        EIGHT(32);                                                                                 \
        EIGHT(40);                                                                                 \
        EIGHT(48);                                                                                 \
        EIGHT(56);                                                                                 \
        a = ADD(a, a0), b = ADD(b, b0), c = ADD(c, c0), d = ADD(d, d0);                            \
        e = ADD(e, e0), f = ADD(f, f0), g = ADD(g, g0), h = ADD(h, h0);                            \
    }                                                                                              \
    STORE(s->h[0], a), STORE(s->h[1], b), STORE(s->h[2], c), STORE(s->h[3], d);                    \
    STORE(s->h[4], e), STORE(s->h[5], f), STORE(s->h[6], g), STORE(s->h[7], h);

/* {======================================================
** AVX2: 8 lanes of 32 bits
** ======================================================= */

#define V             __m256i
#define ADD(x, y)     _mm256_add_epi32(x, y)
#define SET1(x)       _mm256_set1_epi32((int)(x))
#define LOAD(p)       _mm256_loadu_si256((const __m256i *)(p))
#define STORE(p, x)   _mm256_storeu_si256((__m256i *)(p), x)
#define ROR(x, n)     _mm256_or_si256(_mm256_srli_epi32(x, n), _mm256_slli_epi32(x, 32 - (n)))
#define XOR3(x, y, z) _mm256_xor_si256(_mm256_xor_si256(x, y), z)
#define SIGMA0(x)     XOR3(ROR(x, 2), ROR(x, 13), ROR(x, 22))
#define SIGMA1(x)     XOR3(ROR(x, 6), ROR(x, 11), ROR(x, 25))
#define s0(x)         XOR3(ROR(x, 7), ROR(x, 18), _mm256_srli_epi32(x, 3))
#define s1(x)         XOR3(ROR(x, 17), ROR(x, 19), _mm256_srli_epi32(x, 10))
#define CH(x, y, z)   _mm256_xor_si256(_mm256_and_si256(x, y), _mm256_andnot_si256(x, z))
#define MAJ(x, y, z)                                                                               \
    _mm256_or_si256(_mm256_and_si256(x, y), _mm256_and_si256(z, _mm256_or_si256(x, y)))
#define LOAD_W(w, base, off, at) (load8(w, base, off, at), load8(w + 8, base, off, (at) + 32))

/* Words 0-7 (or 8-15) of 8 lanes' blocks: an 8x8 transpose of 32-bit words. */
__attribute__((target("avx2"))) static inline void load8(__m256i c[8], const unsigned char *base,
                                                         const uint32_t *off, size_t at)
{
    const __m256i bswap = _mm256_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3, 12,
                                          13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3);
    __m256i r[8], t[8], u[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_shuffle_epi8(LOAD(base + off[i] + at), bswap);
    for (int i = 0; i < 8; i += 2) { /* t[i]: words 0,1|4,5 of rows i, i+1; t[i+1]: 2,3|6,7 */
        t[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) { /* u[i+j]: word j|j+4 of rows i..i+3 */
        u[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int j = 0; j < 4; j++) {
        c[j] = _mm256_permute2x128_si256(u[j], u[j + 4], 0x20);
        c[j + 4] = _mm256_permute2x128_si256(u[j], u[j + 4], 0x31);
    }
}

__attribute__((target("avx2"))) static void blocks8(hrun_Sha256x *s, const unsigned char *base,
                                                    const uint32_t *off, size_t n)
{
    KERNEL_BODY
}

#undef V
#undef ADD
#undef SET1
#undef LOAD
#undef STORE
#undef ROR
#undef XOR3
#undef SIGMA0
#undef SIGMA1
#undef s0
#undef s1
#undef CH
#undef MAJ
#undef LOAD_W

/* }====================================================== */

/* {======================================================
** AVX-512: 16 lanes, with rotates and three-input logic in one instruction each (its
** macros stay defined to the end of the file, which uses none of their names)
** ======================================================= */

#define V           __m512i
#define ADD(x, y)   _mm512_add_epi32(x, y)
#define SET1(x)     _mm512_set1_epi32((int)(x))
#define LOAD(p)     _mm512_loadu_si512((const void *)(p))
#define STORE(p, x) _mm512_storeu_si512((void *)(p), x)
#define ROR(x, n)   _mm512_ror_epi32(x, n)
/* ternary logic truth tables: x^y^z, x?y:z, majority */
#define XOR3(x, y, z)            _mm512_ternarylogic_epi32(x, y, z, 0x96)
#define SIGMA0(x)                XOR3(ROR(x, 2), ROR(x, 13), ROR(x, 22))
#define SIGMA1(x)                XOR3(ROR(x, 6), ROR(x, 11), ROR(x, 25))
#define s0(x)                    XOR3(ROR(x, 7), ROR(x, 18), _mm512_srli_epi32(x, 3))
#define s1(x)                    XOR3(ROR(x, 17), ROR(x, 19), _mm512_srli_epi32(x, 10))
#define CH(x, y, z)              _mm512_ternarylogic_epi32(x, y, z, 0xca)
#define MAJ(x, y, z)             _mm512_ternarylogic_epi32(x, y, z, 0xe8)
#define LOAD_W(w, base, off, at) load16(w, base, off, at)

/* The 16 words of 16 lanes' blocks: a 16x16 transpose of 32-bit words. */
__attribute__((target("avx512f,avx512bw"))) static inline void
load16(__m512i c[16], const unsigned char *base, const uint32_t *off, size_t at)
{
    const __m512i bswap =
        _mm512_broadcast_i32x4(_mm_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3));
    __m512i r[16], t[16], u[16], v[4];
    for (int i = 0; i < 16; i++) r[i] = _mm512_shuffle_epi8(LOAD(base + off[i] + at), bswap);
    for (int i = 0; i < 16; i += 2) { /* per 128 bits k: words 4k,4k+1 (t[i]), 4k+2,4k+3 */
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) { /* u[i+j], 128 bits k: word 4k+j of rows i..i+3 */
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int j = 0; j < 4; j++) { /* a 4x4 transpose of 128-bit parts: word 4k+j, rows 0-15 */
        v[0] = _mm512_shuffle_i32x4(u[j], u[j + 4], 0x88);
        v[1] = _mm512_shuffle_i32x4(u[j], u[j + 4], 0xdd);
        v[2] = _mm512_shuffle_i32x4(u[j + 8], u[j + 12], 0x88);
        v[3] = _mm512_shuffle_i32x4(u[j + 8], u[j + 12], 0xdd);
        c[j] = _mm512_shuffle_i32x4(v[0], v[2], 0x88);
        c[j + 8] = _mm512_shuffle_i32x4(v[0], v[2], 0xdd);
        c[j + 4] = _mm512_shuffle_i32x4(v[1], v[3], 0x88);
        c[j + 12] = _mm512_shuffle_i32x4(v[1], v[3], 0xdd);
    }
}

__attribute__((target("avx512f,avx512bw"))) static void
blocks16(hrun_Sha256x *s, const unsigned char *base, const uint32_t *off, size_t n)
{
    KERNEL_BODY
}

/* }====================================================== */

/* The SHA extensions (CPUID leaf 7, EBX bit 29): OpenSSL's one stream is then faster. */
static int has_sha_ni(void)
{
    unsigned a, b, c, d;
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b >> 29 & 1);
}

int hrun_sha256x_lanes(void)
{
    static int lanes = -1;
    if (lanes >= 0) return lanes;
    int best = 0;
    if (!has_sha_ni()) {
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"))
            best = 16;
        else if (__builtin_cpu_supports("avx2"))
            best = 8;
    }
    const char *env = getenv("HRUN_SHA256_LANES");
    if (env && *env) {
        int want = atoi(env);
        if (want == 0 || (want == 8 && best >= 8)) best = want;
    }
    return lanes = best;
}

void hrun_sha256x_reset(hrun_Sha256x *s, int lane)
{
    for (int w = 0; w < 8; w++) s->h[w][lane] = H0[w];
}

void hrun_sha256x_blocks(hrun_Sha256x *s, int lanes, const unsigned char *base,
                         const uint32_t off[HRUN_SHA256X_MAX], size_t n)
{
    if (lanes == 16)
        blocks16(s, base, off, n);
    else
        blocks8(s, base, off, n);
}

void hrun_sha256x_digest(const hrun_Sha256x *s, int lane, unsigned char out[32])
{
    for (int w = 0; w < 8; w++) {
        uint32_t v = s->h[w][lane];
        out[4 * w] = (unsigned char)(v >> 24), out[4 * w + 1] = (unsigned char)(v >> 16);
        out[4 * w + 2] = (unsigned char)(v >> 8), out[4 * w + 3] = (unsigned char)v;
    }
}

size_t hrun_sha256x_pad(unsigned char *out, uint64_t total)
{
    size_t tail = (size_t)(total % 64);
    size_t n = (tail < 56 ? 56 : 120) - tail;
    out[0] = 0x80;
    memset(out + 1, 0, n - 1);
    uint64_t bits = total * 8;
    for (int i = 0; i < 8; i++) out[n + (size_t)i] = (unsigned char)(bits >> (56 - 8 * i));
    return n + 8;
}

void *hrun_sha256x_detach(const hrun_Sha256x *s, int lane, uint64_t hashed)
{
    SHA256_CTX *c = malloc(sizeof *c);
    if (c == NULL) return NULL;
    SHA256_Init(c);
    for (int w = 0; w < 8; w++) c->h[w] = s->h[w][lane];
    uint64_t bits = hashed * 8;
    c->Nl = (SHA_LONG)bits, c->Nh = (SHA_LONG)(bits >> 32);
    return c;
}

void hrun_sha256_update(void *one, const void *data, size_t len)
{
    SHA256_Update(one, data, len);
}

void hrun_sha256_final(void *one, unsigned char out[32])
{
    SHA256_Final(out, one);
    free(one);
}
