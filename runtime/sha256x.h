/*
** sha256x.h — multi-buffer SHA-256: the compression function run on 8 (AVX2) or 16
** (AVX-512) independent messages at once, one per SIMD lane (sha256x.c). A CPU without the
** SHA instructions computes one SHA-256 stream at ~0.4 GB/s a core; many files at once
** go 4-6x faster this way. Padding and the reading of files are the caller's.
*/
#ifndef HRUN_SHA256X_H
#define HRUN_SHA256X_H

#include <stddef.h>
#include <stdint.h>

#define HRUN_SHA256X_MAX 16 /* the most lanes a kernel has */

/* The lanes of the best kernel this CPU runs: 16, 8, or 0 when one stream at a time is as
** fast (SHA instructions) or no kernel runs here. HRUN_SHA256_LANES=0|8|16 in the
** environment lowers it (diagnostics, tests, benchmarks). */
int hrun_sha256x_lanes(void);

/* The state of up to 16 messages, word-major: h[w][lane]. */
typedef struct hrun_Sha256x {
    uint32_t h[8][HRUN_SHA256X_MAX];
} hrun_Sha256x;

/* Sets lane's state to SHA-256's initial value. */
void hrun_sha256x_reset(hrun_Sha256x *s, int lane);

/* Compresses n 64-byte blocks into each of `lanes` lanes (8 or 16, as returned by
** hrun_sha256x_lanes): lane i reads base + off[i], base + off[i] + 64, ... All lanes
** advance; a lane with nothing to hash points at any readable n*64 bytes and its state
** is reset before it is used again. */
void hrun_sha256x_blocks(hrun_Sha256x *s, int lanes, const unsigned char *base,
                         const uint32_t off[HRUN_SHA256X_MAX], size_t n);

/* Writes lane's digest (big-endian words) once its padding has been compressed. */
void hrun_sha256x_digest(const hrun_Sha256x *s, int lane, unsigned char out[32]);

/* The padding of a message of total bytes whose last partial block's `tail` bytes
** (total % 64 of them) are already at out: appends 0x80, zeros and the bit length;
** returns how many bytes were appended (the tail is now 64 or 128 bytes long). */
size_t hrun_sha256x_pad(unsigned char *out, uint64_t total);

/* Goes on with lane's message one stream at a time (OpenSSL's code: the faster way for a
** message or two left alone in the lanes), `hashed` bytes (whole blocks) in. NULL when
** out of memory; hrun_sha256_final frees what it returns. */
void *hrun_sha256x_detach(const hrun_Sha256x *s, int lane, uint64_t hashed);
void hrun_sha256_update(void *one, const void *data, size_t len);
void hrun_sha256_final(void *one, unsigned char out[32]);

#endif
