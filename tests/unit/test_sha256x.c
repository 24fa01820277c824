/*
** test_sha256x.c — the multi-buffer SHA-256 kernels against OpenSSL's digests: messages of
** every length around the block and padding boundaries and random ones up to 300 KiB,
** started in their lanes at different times and compressed in steps of any size (as
** the hashers do), idle lanes hashing junk beside them; and messages detached from a
** lane part-way to go on one stream at a time.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "sha256x.h"
#include "unit.h"

#define SPAN (320 << 10) /* a lane's buffer: the longest message and its padding */

static int kernels[2], nkernels;
static uint64_t rng = 0x9e3779b97f4a7c15u;

static uint64_t next(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}

static void reference(const unsigned char *m, size_t len, unsigned char out[32])
{
    unsigned int n;
    EVP_Digest(m, len, out, &n, EVP_sha256(), NULL);
}

/* The lengths worth trying: around every boundary, then anything up to 300 KiB. */
static size_t some_length(int i)
{
    static const size_t edges[] = {0,
                                   1,
                                   55,
                                   56,
                                   57,
                                   63,
                                   64,
                                   65,
                                   119,
                                   120,
                                   127,
                                   128,
                                   129,
                                   191,
                                   192,
                                   4095,
                                   4096,
                                   65535,
                                   65536,
                                   65537,
                                   (64 << 10) + 55,
                                   (64 << 10) + 56};
    size_t nedges = sizeof edges / sizeof *edges;
    if ((size_t)i < nedges) return edges[i];
    return i % 3 == 0 ? next() % 300 : i % 3 == 1 ? next() % 5000 : next() % (300 << 10);
}

static void padding(void)
{
    unsigned char buf[256];
    for (uint64_t total = 0; total < 200; total++) {
        memset(buf, 0xaa, sizeof buf);
        size_t n = hrun_sha256x_pad(buf, total);
        CHECK((total + n) % 64 == 0 && n >= 9 && n <= 72);
        CHECK(buf[0] == 0x80);
        for (size_t i = 1; i < n - 8; i++) CHECK(buf[i] == 0);
        uint64_t bits = 0;
        for (size_t i = n - 8; i < n; i++) bits = bits << 8 | buf[i];
        CHECK(bits == total * 8);
        CHECK(buf[n] == 0xaa);
    }
}

/* Lanes run as the pool runs them: each step compresses some blocks of every lane (at
** most what the emptiest one holds); a lane whose message is done takes the next. */
static void staggered(void)
{
    for (int k = 0; k < nkernels; k++) {
        int lanes = kernels[k];
        unsigned char *mem = malloc((size_t)(lanes + 1) * SPAN);
        CHECK(mem != NULL);
        if (mem == NULL) return;
        for (size_t i = 0; i < (size_t)(lanes + 1) * SPAN; i++) mem[i] = (unsigned char)next();
        hrun_Sha256x s;
        size_t len[HRUN_SHA256X_MAX], pos[HRUN_SHA256X_MAX], end[HRUN_SHA256X_MAX];
        int busy[HRUN_SHA256X_MAX] = {0}, started = 0, checked = 0, total = 600;
        uint32_t off[HRUN_SHA256X_MAX];
        for (;;) {
            for (int i = 0; i < lanes; i++)
                if (!busy[i] && started < total && next() % 4 != 0) { /* some stay idle a step */
                    unsigned char *m = mem + (size_t)i * SPAN;
                    len[i] = some_length(started++);
                    for (size_t j = 0; j < len[i]; j++) m[j] = (unsigned char)next();
                    end[i] = len[i] + hrun_sha256x_pad(m + len[i], len[i]);
                    pos[i] = 0, busy[i] = 1;
                    hrun_sha256x_reset(&s, i);
                }
            size_t most = SIZE_MAX;
            int any = 0;
            for (int i = 0; i < lanes; i++) {
                off[i] = (uint32_t)(busy[i] ? (size_t)i * SPAN + pos[i] : (size_t)lanes * SPAN);
                if (busy[i] && (end[i] - pos[i]) / 64 < most) most = (end[i] - pos[i]) / 64;
                any |= busy[i];
            }
            if (!any && started == total) break;
            if (!any) continue;
            size_t n = 1 + next() % most;
            hrun_sha256x_blocks(&s, lanes, mem, off, n);
            for (int i = 0; i < lanes; i++) {
                if (!busy[i]) continue;
                pos[i] += n * 64;
                if (pos[i] < end[i]) continue;
                unsigned char got[32], want[32];
                hrun_sha256x_digest(&s, i, got);
                reference(mem + (size_t)i * SPAN, len[i], want);
                if (memcmp(got, want, 32) != 0)
                    fprintf(stderr, "  %d lanes: lane %d, %zu bytes: wrong digest\n", lanes, i,
                            len[i]);
                CHECK(memcmp(got, want, 32) == 0);
                busy[i] = 0, checked++;
            }
        }
        CHECK(checked == total);
        free(mem);
    }
}

/* Part of a message in a lane, the rest one stream at a time. */
static void detached(void)
{
    for (int k = 0; k < nkernels; k++) {
        int lanes = kernels[k];
        unsigned char *mem = calloc((size_t)lanes, SPAN);
        CHECK(mem != NULL);
        if (mem == NULL) return;
        uint32_t off[HRUN_SHA256X_MAX];
        for (int round = 0; round < 100; round++) {
            hrun_Sha256x s;
            size_t len[HRUN_SHA256X_MAX], most = SIZE_MAX;
            for (int i = 0; i < lanes; i++) {
                len[i] = some_length(round * lanes + i);
                for (size_t j = 0; j < len[i]; j++)
                    mem[(size_t)i * SPAN + j] = (unsigned char)next();
                off[i] = (uint32_t)((size_t)i * SPAN);
                hrun_sha256x_reset(&s, i);
                if (len[i] / 64 < most) most = len[i] / 64;
            }
            size_t n = most ? next() % (most + 1) : 0; /* whole blocks of message, no padding */
            hrun_sha256x_blocks(&s, lanes, mem, off, n);
            for (int i = 0; i < lanes; i++) {
                unsigned char got[32], want[32];
                void *one = hrun_sha256x_detach(&s, i, n * 64);
                CHECK(one != NULL);
                if (one == NULL) continue;
                const unsigned char *m = mem + (size_t)i * SPAN;
                size_t at = n * 64, cut = at + (len[i] - at) / 2;
                hrun_sha256_update(one, m + at, cut - at);
                hrun_sha256_update(one, m + cut, len[i] - cut);
                hrun_sha256_final(one, got);
                reference(m, len[i], want);
                CHECK(memcmp(got, want, 32) == 0);
            }
        }
        free(mem);
    }
}

int main(void)
{
    if (__builtin_cpu_supports("avx2")) kernels[nkernels++] = 8;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"))
        kernels[nkernels++] = 16;
    printf("kernels this CPU runs:%s%s (the hashers use %d lanes)\n", nkernels ? "" : " none",
           nkernels == 2 ? " 8 and 16 lanes"
           : nkernels    ? " 8 lanes"
                         : "",
           hrun_sha256x_lanes());
    RUN(padding);
    RUN(staggered);
    RUN(detached);
    return UNIT_END();
}
