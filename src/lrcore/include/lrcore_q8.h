/*
 * lrcore_q8.h -- 8-bit optimizer state: the block codec (encode, decode) of the 8-bit step.
 *
 * Design: a state buffer of n float32 values is kept as n uint8 codes plus one float32
 * absmax per block of LRCORE_Q8_BLOCK (256) values; a value is map[code] * absmax, with
 * map the 256-entry dynamic quantization map of bitsandbytes (signed for first moments,
 * unsigned for second moments). The tables (map, decision thresholds, bucket bases, the
 * vector encoder's decade tables) are built by lrcore/quantization.py and passed in an
 * lrcore_q8_codec; this header only reads them. The step (csrc/q8_isa.c) decodes a chunk of
 * blocks into cache-resident float32 arrays, runs the rule's float32 kernel of lrcore.h on
 * them, and encodes each block again: no buffer-sized temporaries, and every block is
 * computed the same way whatever range of blocks a call is given, so any split over
 * threads gives the same bytes.
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
/* Blocks decoded, updated and encoded together (up to 5 x 8 KiB of float32 scratch:
 * bfloat16 param and grad widened, three 8-bit states decoded). */
#ifndef LRCORE_Q8_CHUNK
#define LRCORE_Q8_CHUNK 8
#endif

typedef struct {
    const float *map;     /* 256 entries, ascending */
    const float *thr;     /* 257: thr[j] = least float32 x whose code is > j; thr[255..256] = +inf */
    const int32_t *base;  /* 2 * LRCORE_Q8_NKEYS: thresholds <= the bucket's low end (x >= 0, x < 0) */
    const float *dec;     /* 64: cst | inv (16 each, by decade) | split (32) (quantization.py) */
    const int32_t *deci;  /* 64: last index | base index (16 each, by decade) | lo (32) */
    float amb;            /* 0.5 - eps: |f - rint(f)| above it takes the exact search */
    int is_signed;
} lrcore_q8_codec;

/* Decode one block: out[i] = map[codes[i]] * absmax. With AVX-512 the 256-entry map sits
 * in 16 registers (`tab`, loaded by the caller): eight two-register permutes look up index
 * bits 0-4 and three blend levels pick by bits 5, 6 and 7; no memory gather. */
LRCORE_INLINE void lrcore_q8_decode_block(const lrcore_q8_codec *c, size_t n,
    const uint8_t *LRCORE_RESTRICT codes, float absmax, float *LRCORE_RESTRICT out
#if defined(__AVX512F__) && defined(__AVX512BW__)
    , const __m512 *tab
#endif
    )
{
    LRCORE__FP_STRICT
    const float *map = c->map;
    size_t i = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
    const __m512 am = _mm512_set1_ps(absmax);
    const __m512i b5 = _mm512_set1_epi32(32), b6 = _mm512_set1_epi32(64);
    const __m512i b7 = _mm512_set1_epi32(128);
    for (; i + 16 <= n; i += 16) {
        const __m512i k = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(codes + i)));
        const __mmask16 m5 = _mm512_test_epi32_mask(k, b5), m6 = _mm512_test_epi32_mask(k, b6);
        const __mmask16 m7 = _mm512_test_epi32_mask(k, b7);
        __m512 r[8];
        for (int q = 0; q < 8; q++) r[q] = _mm512_permutex2var_ps(tab[2 * q], k, tab[2 * q + 1]);
        for (int q = 0; q < 8; q += 2) r[q] = _mm512_mask_blend_ps(m5, r[q], r[q + 1]);
        r[0] = _mm512_mask_blend_ps(m6, r[0], r[2]);
        r[4] = _mm512_mask_blend_ps(m6, r[4], r[6]);
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_mask_blend_ps(m7, r[0], r[4]), am));
    }
#endif
    for (; i < n; i++) out[i] = map[codes[i]] * absmax;
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

#if defined(__AVX512F__) && defined(__AVX512BW__)
/* The vector encoder's tables in registers (lrcore_q8_encode_block). */
typedef struct {
    __m512 cst, inv, amb, sp0, sp1;
    __m512i last, lo0, lo1;
    int is_signed;
} lrcore_q8_vtab;

LRCORE_INLINE lrcore_q8_vtab lrcore_q8_vtab_load(const lrcore_q8_codec *c)
{
    lrcore_q8_vtab t;
    t.cst = _mm512_loadu_ps(c->dec);
    t.inv = _mm512_loadu_ps(c->dec + 16);
    t.sp0 = _mm512_loadu_ps(c->dec + 32);
    t.sp1 = _mm512_loadu_ps(c->dec + 48);
    t.last = _mm512_loadu_si512(c->deci);
    t.lo0 = _mm512_loadu_si512(c->deci + 32);
    t.lo1 = _mm512_loadu_si512(c->deci + 48);
    t.amb = _mm512_set1_ps(c->amb);
    t.is_signed = c->is_signed;
    return t;
}

/* 16 codes (as 32-bit lanes) of v[0..15] / am; *bad gets the lanes whose f is within eps
 * of a half-integer, or NaN (x NaN: taken as 0 by the exact search instead). */
LRCORE_INLINE __m512i lrcore_q8_code16(const lrcore_q8_vtab *t, const float *v, __m512 am,
                                       __mmask16 *bad)
{
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi32(1);
    const __m512i c127 = _mm512_set1_epi32(127);
    const __m512 x = _mm512_div_ps(_mm512_loadu_ps(v), am);
    const __m512i u = _mm512_castps_si512(x);
    const __m512i a = _mm512_and_si512(u, absmask);
    const __m512 ax = _mm512_castsi512_ps(a);
    /* binade index: exponent - 96, 0 below 2**-31 (16-bit saturating; the high half is 0) */
    const __m512i e = _mm512_subs_epu16(_mm512_srli_epi32(a, 23), _mm512_set1_epi32(96));
    __m512i d = _mm512_permutex2var_epi32(t->lo0, e, t->lo1);
    const __m512 split = _mm512_permutex2var_ps(t->sp0, e, t->sp1);
    d = _mm512_mask_add_epi32(d, _mm512_cmp_ps_mask(ax, split, _CMP_GE_OQ), d, one);
    const __m512 f = _mm512_sub_ps(_mm512_mul_ps(ax, _mm512_permutexvar_ps(d, t->inv)),
                                   _mm512_permutexvar_ps(d, t->cst));
    const __m512 r = _mm512_roundscale_ps(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    *bad |= _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(f, r)), t->amb, _CMP_NLE_UQ);
    const __m512i j = _mm512_min_epi32(_mm512_cvttps_epi32(r),
                                       _mm512_permutexvar_epi32(d, t->last));
    const __mmask16 neg = _mm512_cmplt_epi32_mask(u, zero);
    if (t->is_signed)   /* x < 0: 127 - min(j, 127); else 127 + j */
        return _mm512_mask_sub_epi32(_mm512_add_epi32(c127, j), neg, c127,
                                     _mm512_min_epi32(j, c127));
    return _mm512_maskz_mov_epi32((__mmask16)~neg, j);     /* unsigned map, x < 0: code 0 */
}
#endif

/* Encode one block of n values:
 *   absmax = max |v[i]| (NaN when a value is NaN; taken on the bit patterns of |v|, which
 *            order like the values, so the reduction vectorises and its order is free)
 *   x = v[i] / absmax (float32; NaN, e.g. 0/0 in an all-zero block, is taken as 0)
 *   code = the index of the map entry nearest to x, ties to the entry of smaller magnitude
 *        = number of thresholds thr[j] <= x (lrcore_q8_code).
 * With AVX-512, 16 lanes at a time and no memory lookup: |x| is coded against the
 * magnitude map (the signed map's negative half mirrors its positive half), whose entries
 * come in decades of evenly spaced values (quantization.py, _Codec._decades). The decade
 * of |x| is the one its binade starts in or the next (32-entry tables in two registers,
 * one compare with the split point); f = |x| * inv - cst is within eps of the position
 * of |x| among the entries, and rint(f) clamped to the decade is the code, unless |f - rint(f)| > 0.5 - eps or x is NaN: a block with such a lane is coded
 * by the exact scalar search (lrcore_q8_code) instead. Exact, and equal to the scalar
 * loop (checked over every float32 in [-1, 1] for both maps; the tests compare both with
 * a brute-force search). */
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
        const lrcore_q8_vtab t = lrcore_q8_vtab_load(c);
        const __m512 vam = _mm512_set1_ps(am);
        const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14,
                                                3, 7, 11, 15);
        __mmask16 bad = 0;
        for (; i + 64 <= n; i += 64) {   /* 4 x 16 codes packed to bytes at once */
            const __m512i c0 = lrcore_q8_code16(&t, v + i, vam, &bad);
            const __m512i c1 = lrcore_q8_code16(&t, v + i + 16, vam, &bad);
            const __m512i c2 = lrcore_q8_code16(&t, v + i + 32, vam, &bad);
            const __m512i c3 = lrcore_q8_code16(&t, v + i + 48, vam, &bad);
            const __m512i b = _mm512_packus_epi16(_mm512_packus_epi32(c0, c1),
                                                  _mm512_packus_epi32(c2, c3));
            _mm512_storeu_si512((void *)(codes + i), _mm512_permutexvar_epi32(order, b));
        }
        for (; i + 16 <= n; i += 16)
            _mm_storeu_si128((__m128i *)(codes + i),
                             _mm512_cvtepi32_epi8(lrcore_q8_code16(&t, v + i, vam, &bad)));
        if (bad) i = 0;     /* a lane near a decision point: the exact search for the block */
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
#if defined(__AVX512F__) && defined(__AVX512BW__)
    __m512 tab[16];
    for (int k = 0; k < 16; k++) tab[k] = _mm512_loadu_ps(c->map + 16 * k);
#define LRCORE__Q8_TAB , tab
#else
#define LRCORE__Q8_TAB
#endif
    for (size_t b = c0; b < c1; b++)
        lrcore_q8_decode_block(c, lrcore_q8_block_len(n, b), q.codes + b * LRCORE_Q8_BLOCK,
                               q.absmax[b], out + (b - c0) * LRCORE_Q8_BLOCK LRCORE__Q8_TAB);
#undef LRCORE__Q8_TAB
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
