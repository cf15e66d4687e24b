/*
 * lrcore_q8.h -- 8-bit optimizer state: the block codec and the fused 8-bit Adam step.
 *
 * Design: a state buffer of n float32 values is kept as n uint8 codes plus one float32
 * absmax per block of LRCORE_Q8_BLOCK (256) values; a value is map[code] * absmax, with
 * map the 256-entry dynamic quantization map of bitsandbytes (signed for first moments,
 * unsigned for second moments). The tables (map, decision thresholds, bucket bases) are
 * built by lrcore/quantization.py and passed in an lrcore_q8_codec; this header only reads
 * them. The fused step decodes a chunk of blocks into cache-resident float32 arrays, runs
 * lrcore_adam_f32 (the same float32 kernel as lrcore.kernels.adam) on them, and encodes
 * each block again: no buffer-sized temporaries, and every block is computed the same way
 * whatever range of blocks a call is given, so any split over threads gives the same bytes.
 */
#ifndef LRCORE_Q8_H
#define LRCORE_Q8_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "lrcore.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#endif

/* The same options as lrcore.h's functions (no FMA contraction), so its always-inline
 * loops inline here. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif

#define LRCORE_Q8_BLOCK 256
/* Encoder buckets: |x|'s exponent and top KEY_BITS mantissa bits (quantization.py). */
#define LRCORE_Q8_KEY_BITS 6
#define LRCORE_Q8_KEY_LO ((127 - 24) << LRCORE_Q8_KEY_BITS)
#define LRCORE_Q8_NKEYS ((127 << LRCORE_Q8_KEY_BITS) - LRCORE_Q8_KEY_LO + 1)
/* Blocks decoded, updated and encoded together (3 x 8 KiB of float32 scratch). */
#define LRCORE_Q8_CHUNK 8

typedef struct {
    const float *map;     /* 256 entries, ascending */
    const float *thr;     /* 257: thr[j] = least float32 x whose code is > j; thr[255..256] = +inf */
    const int32_t *base;  /* 2 * LRCORE_Q8_NKEYS: thresholds <= the bucket's low end (x >= 0, x < 0) */
    const uint64_t *packed; /* 2 * LRCORE_Q8_NKEYS: one 64-bit word per bucket, see below */
} lrcore_q8_codec;

/* Decode one block: out[i] = map[codes[i]] * absmax. */
LRCORE_INLINE void lrcore_q8_decode_block(const lrcore_q8_codec *c, size_t n,
    const uint8_t *LRCORE_RESTRICT codes, float absmax, float *LRCORE_RESTRICT out)
{
    LRCORE__FP_STRICT
    const float *map = c->map;
    for (size_t i = 0; i < n; i++) out[i] = map[codes[i]] * absmax;
}

/* The code of one quotient x (already NaN-free): its bucket (sign, exponent, KEY_BITS
 * mantissa bits) gives the count of thresholds below the bucket, and at most two thresholds
 * lie inside it (checked where the tables are built). */
LRCORE_INLINE uint8_t lrcore_q8_code(const lrcore_q8_codec *c, float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    int32_t k = (int32_t)((u & 0x7fffffffu) >> (23 - LRCORE_Q8_KEY_BITS)) - LRCORE_Q8_KEY_LO;
    k = k < 0 ? 0 : k;
    k = k > LRCORE_Q8_NKEYS - 1 ? LRCORE_Q8_NKEYS - 1 : k;
    k += (int32_t)(u >> 31) * LRCORE_Q8_NKEYS;
    const int32_t b = c->base[k];
    return (uint8_t)(b + (x >= c->thr[b]) + (x >= c->thr[b + 1]));
}

/* Encode one block of n values:
 *   absmax = max |v[i]| (NaN when a value is NaN; taken on the bit patterns of |v|, which
 *            order like the values, so the reduction vectorises and its order is free)
 *   x = v[i] / absmax (float32; NaN, e.g. 0/0 in an all-zero block, is taken as 0)
 *   code = the index of the map entry nearest to x, ties to the entry of smaller magnitude
 *        = number of thresholds thr[j] <= x (lrcore_q8_code).
 * With AVX-512, 16 lanes at a time and one table load per value: a bucket's thresholds lie
 * in [lo, hi), so they share every bit of |x| above the low 23 - KEY_BITS mantissa bits and
 * compare as those bits alone (reversed for x < 0). Each bucket's 64-bit word in `packed`
 * holds its base and its two candidate thresholds as such tails (2^(23-KEY_BITS): none;
 * the clamped first and last buckets hold none, checked in quantization.py). Exact, and
 * equal to the scalar loop (the tests compare both with a brute-force search). */
LRCORE_INLINE float lrcore_q8_encode_block(const lrcore_q8_codec *c, size_t n,
    const float *LRCORE_RESTRICT v, uint8_t *LRCORE_RESTRICT codes)
{
    LRCORE__FP_STRICT
    uint32_t mb = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], sizeof u);
        u &= 0x7fffffffu;
        mb = u > mb ? u : mb;
    }
    if (mb > 0x7f800000u) mb = 0x7fc00000u;    /* a NaN: the block's absmax is NaN */
    float am;
    memcpy(&am, &mb, sizeof am);
    size_t i = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
    {
        const __m512 vam = _mm512_set1_ps(am);
        const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
        const __m512i klo = _mm512_set1_epi32(LRCORE_Q8_KEY_LO);
        const __m512i khi = _mm512_set1_epi32(LRCORE_Q8_NKEYS - 1);
        const __m512i nk = _mm512_set1_epi32(LRCORE_Q8_NKEYS);
        const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi32(1);
        const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22,
                                               24, 26, 28, 30);
        const __m512i odd = _mm512_add_epi32(even, one);
        const __m512i tail = _mm512_set1_epi32((1 << (23 - LRCORE_Q8_KEY_BITS)) - 1);
        for (; i + 16 <= n; i += 16) {
            __m512 x = _mm512_div_ps(_mm512_loadu_ps(v + i), vam);
            x = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, x, _CMP_ORD_Q), x);
            const __m512i u = _mm512_castps_si512(x);
            const __m512i a = _mm512_and_si512(u, absmask);
            const __mmask16 neg = _mm512_cmplt_epi32_mask(u, zero);
            __m512i k = _mm512_sub_epi32(_mm512_srli_epi32(a, 23 - LRCORE_Q8_KEY_BITS), klo);
            k = _mm512_min_epi32(_mm512_max_epi32(k, zero), khi);
            k = _mm512_mask_add_epi32(k, neg, k, nk);
            /* the bucket's word: low half t0, high half base << 24 | t1 (24-bit signed);
             * y = the low mantissa bits of |x|, negated for x < 0 */
            const __m512i w0 = _mm512_i32gather_epi64(_mm512_castsi512_si256(k),
                                                      (const void *)c->packed, 8);
            const __m512i w1 = _mm512_i32gather_epi64(_mm512_extracti64x4_epi64(k, 1),
                                                      (const void *)c->packed, 8);
            const __m512i t0 = _mm512_permutex2var_epi32(w0, even, w1);
            const __m512i hi = _mm512_permutex2var_epi32(w0, odd, w1);
            const __m512i t1 = _mm512_srai_epi32(_mm512_slli_epi32(hi, 8), 8);
            __m512i y = _mm512_and_si512(a, tail);
            y = _mm512_mask_sub_epi32(y, neg, zero, y);
            __m512i b = _mm512_srli_epi32(hi, 24);
            b = _mm512_mask_add_epi32(b, _mm512_cmpge_epi32_mask(y, t0), b, one);
            b = _mm512_mask_add_epi32(b, _mm512_cmpge_epi32_mask(y, t1), b, one);
            _mm_storeu_si128((__m128i *)(codes + i), _mm512_cvtepi32_epi8(b));
        }
    }
#endif
    for (; i < n; i++) {
        float x = v[i] / am;
        x = x == x ? x : 0.0f;
        codes[i] = lrcore_q8_code(c, x);
    }
    return am;
}

/* One 8-bit state buffer: codes (n) and absmax (one per block). */
typedef struct {
    uint8_t *codes;
    float *absmax;
} lrcore_q8_state;

LRCORE_INLINE size_t lrcore_q8_block_len(size_t n, size_t b)
{
    const size_t s = b * LRCORE_Q8_BLOCK;
    return n - s < LRCORE_Q8_BLOCK ? n - s : LRCORE_Q8_BLOCK;
}

/* Decode blocks [c0, c1) of q (a buffer of n values) into out (block c0 first). */
LRCORE_INLINE void lrcore_q8_decode_blocks(const lrcore_q8_codec *c, size_t n, size_t c0,
    size_t c1, lrcore_q8_state q, float *LRCORE_RESTRICT out)
{
    for (size_t b = c0; b < c1; b++)
        lrcore_q8_decode_block(c, lrcore_q8_block_len(n, b), q.codes + b * LRCORE_Q8_BLOCK,
                               q.absmax[b], out + (b - c0) * LRCORE_Q8_BLOCK);
}

/* Encode blocks [c0, c1) of a buffer of n values from v (block c0 first) into q. */
LRCORE_INLINE void lrcore_q8_encode_blocks(const lrcore_q8_codec *c, size_t n, size_t c0,
    size_t c1, const float *LRCORE_RESTRICT v, lrcore_q8_state q)
{
    for (size_t b = c0; b < c1; b++)
        q.absmax[b] = lrcore_q8_encode_block(c, lrcore_q8_block_len(n, b),
                                             v + (b - c0) * LRCORE_Q8_BLOCK,
                                             q.codes + b * LRCORE_Q8_BLOCK);
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#endif
