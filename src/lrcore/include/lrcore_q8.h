/*
 * lrcore_q8.h -- 8-bit optimizer state: the block codec (encode, decode) of the 8-bit step.
 *
 * Design: a state buffer of n float32 values is kept as n uint8 codes plus one float32
 * absmax per block of LRCORE_Q8_BLOCK (256) values; a value is map[code] * absmax, with
 * map the 256-entry dynamic quantization map of bitsandbytes (signed for first moments,
 * unsigned for second moments). The tables (map, decision thresholds, bucket bases, the
 * vector encoder's decade tables, the VBMI decoder's byte planes) are built by
 * lrcore/quantization.py and passed in an lrcore_q8_codec; this header only reads them. The
 * step (csrc/q8_isa.c) decodes a chunk of blocks into cache-resident float32 arrays, runs
 * the rule's float32 kernel of lrcore.h on them, and encodes each block again (Adam on
 * AVX512-VBMI CPUs: one software-pipelined pass over the blocks, same values): no
 * buffer-sized temporaries, and every block is computed the same way whatever range of
 * blocks a call is given, so any split over threads gives the same bytes.
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
/* Blocks decoded, updated and encoded together by the chunked step (q8_isa.c; up to 5 x
 * 2 KiB of float32 scratch: bfloat16 param and grad widened, three 8-bit states decoded).
 * 2 rather than 8: out of cache, AdamW's step took ~10% less time per element (Zen 4). */
#ifndef LRCORE_Q8_CHUNK
#define LRCORE_Q8_CHUNK 2
#endif

typedef struct {
    const float *map;     /* 256 entries, ascending */
    const float *thr;     /* 257: thr[j] = least float32 x whose code is > j; thr[255..256] = +inf */
    const int32_t *base;  /* 2 * LRCORE_Q8_NKEYS: thresholds <= the bucket's low end (x >= 0, x < 0) */
    const float *dec;     /* 64: cst | inv (16 each, by decade) | split (32) (quantization.py) */
    const int32_t *deci;  /* 64: last index | base index (16 each, by decade) | lo (32) */
    const uint8_t *planes;   /* 4 x 256: byte k of map[j] at planes[256 k + j] (VBMI decoder) */
    int32_t window;       /* Y within it of a multiple of 2**14 takes the exact search */
    int32_t near;         /* float32 steps from a decade start that take the exact search */
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

/* The exact code of value v in a block of absmax am: the float32 quotient v / am, NaN taken
 * as 0, searched exactly. */
LRCORE_INLINE uint8_t lrcore_q8_code_of(const lrcore_q8_codec *c, float v, float am)
{
    float x = v / am;
    x = x == x ? x : 0.0f;
    return lrcore_q8_code(c, x);
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__)
#define LRCORE_Q8_VECTOR_ENCODER 1
/* The vector encoder's tables in registers (lrcore_q8_code16), derived from the codec's:
 *   cst  = C + window (float32, by decade; exact: C and C + window are integers in [2**23,
 *          2**24)), inv = INV (by decade), last = LAST (by decade);
 *   q0, q1: Q[e] (32 int32, by binade e), such that z = bits(max(|x|, 2**-31)) + Q[e] has
 *          the decade of |x| in bits 23-26 and its flag in the bits of nearmask:
 *     binade with a decade start (split[e] finite):
 *          Q = ((lo[e] + 1) << 23) - bits(split[e]) + P, so z = ((lo[e] + 1) << 23) + t + P
 *          with t = bits(|x|) - bits(split[e]); |t| < 2**23 - 64 (no start within 64 steps
 *          of a power of two) and P <= 16 keep t + P in (-2**23, 2**23): bits 23-26 are
 *          lo[e] + (t + P >= 0), the low 23 bits (t + P) mod 2**23, below 2 P exactly when
 *          -P <= t < P (t + P < 0 leaves at least 2**23 - 48 there);
 *     binade without one: Q = (lo[e] << 23) - ((96 + e) << 23) + 2**28, so z = (lo[e] << 23)
 *          + (mantissa of |x|) + 2**28: bits 23-26 are lo[e], bit 28 is set;
 *   P = the least power of two >= near, nearmask = bits 2**28 and log2(2 P) .. 22: a lane is
 *   flagged when z has none of them, i.e. -P <= t < P in a binade with a start. near <= 0:
 *   every Q has 2**28 (never flagged) and no P. The permutes read bits 0-3 of the decade,
 *   so 2**28 (bit 5 of z >> 23) does not change it.
 *   winmask: Y mod 2**14 within `window` of 0 iff (Y + window) mod 2**14 < 2 window (a power
 *   of two) iff no bit of (Y + window) & 0x3fff at or above 2 window; `cst` adds the window
 *   to Y (window even: the fma's rounding to integers, ties to even, commutes with it). */
typedef struct {
    __m512 cst, inv;
    __m512i last, q0, q1, winmask, nearmask;
} lrcore_q8_vtab;

LRCORE_INLINE lrcore_q8_vtab lrcore_q8_vtab_load(const lrcore_q8_codec *c)
{
    lrcore_q8_vtab t;
    const int win = c->window > 0 ? c->window : 0;
    int nn = 1;
    while (nn < c->near) nn *= 2;
    t.cst = _mm512_add_ps(_mm512_loadu_ps(c->dec), _mm512_set1_ps((float)win));
    t.inv = _mm512_loadu_ps(c->dec + 16);
    t.last = _mm512_loadu_si512(c->deci);
    const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i b28 = _mm512_set1_epi32(1 << 28);
    const __m512i off = c->near > 0 ? _mm512_set1_epi32(nn) : b28;
    __m512i q[2];
    for (int h = 0; h < 2; h++) {
        const __m512i sp = _mm512_loadu_si512(c->dec + 32 + 16 * h);    /* split, as bits */
        const __m512i lo = _mm512_loadu_si512(c->deci + 32 + 16 * h);
        const __m512i ex = _mm512_slli_epi32(
            _mm512_add_epi32(iota, _mm512_set1_epi32(96 + 16 * h)), 23);
        const __m512i qs = _mm512_add_epi32(_mm512_sub_epi32(_mm512_slli_epi32(
            _mm512_add_epi32(lo, _mm512_set1_epi32(1)), 23), sp), off);
        const __m512i qn = _mm512_add_epi32(_mm512_sub_epi32(_mm512_slli_epi32(lo, 23), ex), b28);
        q[h] = _mm512_mask_blend_epi32(
            _mm512_cmplt_epu32_mask(sp, _mm512_set1_epi32(0x7f800000)), qn, qs);
    }
    t.q0 = q[0];
    t.q1 = q[1];
    t.nearmask = _mm512_set1_epi32((1 << 28) | (0x7fffff & ~(2 * nn - 1)));
    t.winmask = _mm512_set1_epi32(win > 0 ? 0x3fff & ~(2 * win - 1) : 0x3fff);
    return t;
}

/* 16 codes (bytes) of the quotient estimates x (v * (1 / absmax), never NaN); *ok loses
 * the lanes the estimate cannot decide (lrcore_q8_encode_block): Y within `window` of a
 * multiple of 2**14, or |x| within P >= near float32 steps of the decade start in its
 * binade (lrcore_q8_vtab). */
LRCORE_INLINE __m128i lrcore_q8_code16(const lrcore_q8_vtab *t, __m512 x, const int is_signed,
                                       __mmask16 *ok)
{
    const __m512i u = _mm512_castps_si512(x);
    /* am = max(|x|, 2**-31): signed map, vrangeps (the larger magnitude, sign cleared: one
     * op; x is never NaN here, the only input it would not order); unsigned map, which codes
     * x < 0 as 0, max(x, 2**-31) on the signed bit patterns, which takes x < 0 as 2**-31.
     * Its binade index e = exponent - 96 is bits 0-4 of bits(am) >> 23, which the permute
     * reads. Below 2**-31 is the decade of 0, where INV is 0: y = C whatever am is. */
    const __m512i lim = _mm512_set1_epi32(96 << 23);
    const __m512i am = is_signed
        ? _mm512_castps_si512(_mm512_range_ps(x, _mm512_castsi512_ps(lim), 0x0B))
        : _mm512_max_epi32(u, lim);
    const __m512i z = _mm512_add_epi32(am, _mm512_permutex2var_epi32(
        t->q0, _mm512_srli_epi32(am, 23), t->q1));
    const __m512i d = _mm512_srli_epi32(z, 23);      /* the decade (bits 0-3) */
    /* y = fma(am, INV, C + window) in [2**23, 2**24): bits(y) = bits(2**23) + Y + window */
    const __m512i y = _mm512_castps_si512(_mm512_fmadd_ps(
        _mm512_castsi512_ps(am), _mm512_permutexvar_ps(d, t->inv),
        _mm512_permutexvar_ps(d, t->cst)));
    *ok = _mm512_mask_test_epi32_mask(_mm512_mask_test_epi32_mask(*ok, z, t->nearmask),
                                      y, t->winmask);
    /* (bits(2**23) >> 14) + code (Y + window: the same where unflagged), clamped to the
     * decade's last entry; the low byte is the code */
    const __m128i j = _mm512_cvtepi32_epi8(_mm512_min_epi32(
        _mm512_srli_epi32(y, 14), _mm512_permutexvar_epi32(d, t->last)));
    if (is_signed)     /* x < 0: 254 - j, saturated at 0 (codes 127 - index; index 128 is 0) */
        return _mm_mask_subs_epu8(j, _mm512_movepi32_mask(u), _mm_set1_epi8((char)254), j);
    return j;
}

/* The 64 codes c0..c3 to codes[0..63]. */
LRCORE_INLINE void lrcore_q8_store64(uint8_t *codes, __m128i c0, __m128i c1, __m128i c2,
                                     __m128i c3)
{
    _mm_storeu_si128((__m128i *)codes, c0);
    _mm_storeu_si128((__m128i *)(codes + 16), c1);
    _mm_storeu_si128((__m128i *)(codes + 32), c2);
    _mm_storeu_si128((__m128i *)(codes + 48), c3);
}

/* The lanes of v[0..63] (block of absmax am, r = 1 / am) that lrcore_q8_code16 leaves
 * undecided: the exact search (rare: at most a few per block). */
__attribute__((noinline, cold)) static void lrcore_q8_encode64_fix(const lrcore_q8_codec *c,
    const lrcore_q8_vtab *t, const float *LRCORE_RESTRICT v, __m512 r, float am,
    uint8_t *LRCORE_RESTRICT codes, const int is_signed)
{
    for (int g = 0; g < 64; g += 16) {
        __mmask16 ok = 0xFFFF;
        (void)lrcore_q8_code16(t, _mm512_mul_ps(_mm512_loadu_ps(v + g), r), is_signed, &ok);
        for (unsigned bad = (unsigned)(uint16_t)~ok; bad; bad &= bad - 1) {
            const size_t k = (size_t)g + (size_t)__builtin_ctz(bad);
            codes[k] = lrcore_q8_code_of(c, v[k], am);
        }
    }
}

/* 64 codes of v[0..63] in a block of absmax am (r = 1 / am, am in [2**-126, 2**126]):
 * four lrcore_q8_code16 (one mask: lane i decided in all four), then, when a lane is
 * undecided, the exact search for it (lrcore_q8_encode64_fix). */
LRCORE_INLINE void lrcore_q8_encode64(const lrcore_q8_codec *c, const lrcore_q8_vtab *t,
    const float *LRCORE_RESTRICT v, __m512 r, float am, uint8_t *LRCORE_RESTRICT codes,
    const int is_signed)
{
    __mmask16 ok = 0xFFFF;
    const __m128i c0 = lrcore_q8_code16(t, _mm512_mul_ps(_mm512_loadu_ps(v), r), is_signed, &ok);
    const __m128i c1 = lrcore_q8_code16(t, _mm512_mul_ps(_mm512_loadu_ps(v + 16), r), is_signed,
                                        &ok);
    const __m128i c2 = lrcore_q8_code16(t, _mm512_mul_ps(_mm512_loadu_ps(v + 32), r), is_signed,
                                        &ok);
    const __m128i c3 = lrcore_q8_code16(t, _mm512_mul_ps(_mm512_loadu_ps(v + 48), r), is_signed,
                                        &ok);
    lrcore_q8_store64(codes, c0, c1, c2, c3);
    if (__builtin_expect(ok != 0xFFFF, 0))
        lrcore_q8_encode64_fix(c, t, v, r, am, codes, is_signed);
}

/* The vector part of lrcore_q8_encode_block (absmax am in [2**-126, 2**126]): codes of the
 * first n - n % 16 values; returns how many it coded. */
LRCORE_INLINE size_t lrcore_q8_encode_vec(const lrcore_q8_codec *c, size_t n,
    const float *LRCORE_RESTRICT v, float am, uint8_t *LRCORE_RESTRICT codes,
    const int is_signed)
{
    const lrcore_q8_vtab t = lrcore_q8_vtab_load(c);
    const __m512 r = _mm512_set1_ps(1.0f / am);
    size_t i = 0;
    for (; i + 64 <= n; i += 64)
        lrcore_q8_encode64(c, &t, v + i, r, am, codes + i, is_signed);
    for (; i + 16 <= n; i += 16) {
        __mmask16 ok = 0xFFFF;
        _mm_storeu_si128((__m128i *)(codes + i), lrcore_q8_code16(
            &t, _mm512_mul_ps(_mm512_loadu_ps(v + i), r), is_signed, &ok));
        for (unsigned bad = (unsigned)(uint16_t)~ok; bad; bad &= bad - 1) {
            const size_t k = i + (size_t)__builtin_ctz(bad);
            codes[k] = lrcore_q8_code_of(c, v[k], am);
        }
    }
    return i;
}
#endif

/* A block's absmax from the largest bit pattern of its |values| (a NaN pattern: NaN). */
LRCORE_INLINE uint32_t lrcore_q8_absmax_bits(uint32_t mb)
{
    return mb > 0x7f800000u ? 0x7fc00000u : mb;
}

/* Whether the vector encoder codes a block of absmax bits mb: absmax in [2**-126, 2**126],
 * where r = fl(1 / absmax) is a normal float32 (lrcore_q8_encode_block). */
LRCORE_INLINE int lrcore_q8_vector_ok(uint32_t mb)
{
    return mb >= 0x00800000u && mb <= 0x7e800000u;
}

/* Encode one block of n values:
 *   absmax = max |v[i]| (NaN when a value is NaN; taken on the bit patterns of |v|, which
 *            order like the values, so the reduction vectorises and its order is free)
 *   x = v[i] / absmax (float32; NaN, e.g. 0/0 in an all-zero block, is taken as 0)
 *   code = the index of the map entry nearest to x, ties to the entry of smaller magnitude
 *        = number of thresholds thr[j] <= x (lrcore_q8_code).
 * A block whose absmax is 0, NaN or +inf has every quotient 0 or NaN: every code is the
 * code of 0 (127 signed, 0 unsigned).
 *
 * With AVX-512 (16 lanes at a time, no division, no memory lookup), when absmax lies in
 * [2**-126, 2**126] (so that r = fl(1 / absmax) is a normal float32; other blocks take the
 * exact search), each lane codes the estimate x' = fl(v * r) of its quotient
 * x = fl(v / absmax) and flags the lanes where the two could code differently:
 *
 *   Where x is. Let q = v / absmax (real), r = (1 / absmax)(1 + d1) with |d1| <= u =
 *   2**-24, |x'| in [2**k, 2**(k+1)), ulp(x') = 2**(k-23), nothing underflowing (|q| >=
 *   2**-101). One error per rounding: |x - q| <= ulp(x) / 2, |x' - v r| <= ulp(x') / 2,
 *   and |v r - q| = |q| |d1| < ulp(x') (1 + 2u) (|q| < 2**(k+1) (1 + 2u)). If x is in the
 *   binade of x' or below, ulp(x) <= ulp(x'), so |x - x'| < 2 ulp(x') (1 + u), and as x and
 *   x' lie on the grid of ulp(x') / 2 there, |x - x'| <= 2 ulp(x'). If x is in the binade
 *   above, |q - x'| < 1.5 ulp(x') (1 + 2u) and x' <= 2**(k+1) - ulp(x') give q < 2**(k+1) +
 *   ulp(x) / 2, so x = 2**(k+1); then q >= 2**(k+1) - ulp(x') / 2 (q rounds up to it), so
 *   x' > 2**(k+1) - 2 ulp(x') - 3u ulp(x'), i.e. x' >= 2**(k+1) - 2 ulp(x') on its grid:
 *   again |x - x'| <= 2 ulp(x'). And if
 *   |x'| < 2**-100, then |x| < 2**-99. Hence x lies in N(x') = [x' - 2 ulp(x'),
 *   x' + 2 ulp(x')], or in [-2**-99, 2**-99] when |x'| < 2**-100 (far below the smallest
 *   threshold, 1.6e-7: all of it has the code of 0). |x'| <= 1, as |v| <= absmax.
 *
 *   The code of x'. |x'| is coded against the magnitude map (the signed map's negative
 *   half mirrors its positive half), whose entries come in decades of evenly spaced values
 *   (quantization.py, _Codec._decades). A decade begins at a threshold, its start, and at
 *   most one start lies in a binade. With e the binade of |x'| (exponent - 96, 2**-31 for
 *   smaller |x'|) and t = bits(|x'|) - bits(split[e]) (split: the start inside the binade,
 *   or +inf; the bit patterns of non-negative floats order like the values), the decade is
 *   d = lo[e] + (t >= 0). One 32-entry lookup by e (two registers) and an add form it:
 *   z = bits(max(|x'|, 2**-31)) + Q[e] has d in bits 23-26 (lrcore_q8_vtab; in a binade
 *   with a start, lo[e] + (t + P >= 0): d except where -P <= t < 0, flagged below). In
 *   the decade the position of |x'|
 *   among the entries, plus 127 for the signed map, is formed in fixed point with 14
 *   fraction bits: y = fma(|x'|, INV[d], C[d]) lies in [2**23, 2**24), where float32 steps
 *   are 1, so Y = bits(y) - bits(2**23) is an integer, 2**14 (position + 0.5) rounded
 *   once; the code is Y >> 14, clamped to the decade's last entry (a negative x' codes as
 *   254 minus that, saturated at 0, on the signed map, and as 0 on the unsigned one). The
 *   encoder adds `window` to C, which adds it to Y exactly (an even integer: the rounding
 *   to integers, ties to even, commutes with it), and tests Y + window. The
 *   decision points of the decade sit at the multiples of 2**14. A lane is flagged when
 *     Y is within `window` (4) of a multiple of 2**14: window exceeds twice the largest
 *       |Y - 2**14 k| at every float32 within 8 steps of each decision point 2**14 k inside
 *       a decade (Y's rounding, and N's width: at most 4 steps each way); an unflagged
 *       lane has Y mod 2**14 in [window, 2**14 - window), so (Y + window) >> 14 = Y >> 14;
 *       or
 *     -P <= t < P, P = 16 (the least power of two >= near = 9): |x'| within 9 float32 steps
 *       of the decade start of its binade, and a few steps more (no
 *       start lies within 64 steps of a power of two, checked where the tables are built,
 *       so N(x') meets a start only when |x'| is in the start's binade).
 *   Hence an unflagged lane's code is the exact code of every float32 in N(x'), x included.
 *   `python bench/q8_exhaustive.py` checks exactly that for every float32 x' in [-1, 1]
 *   and both maps (codes are monotone in x, so it compares the lane's code with the exact
 *   codes of the two ends of N(x'), rounded outwards), through the vector encoder's own
 *   code (lrcore_q8_code16), and that the encoder's codes equal the exact search's.
 *
 * Flagged lanes take the exact search on x = v / absmax (lrcore_q8_code_of), one lane at a
 * time; the tests compare both with a brute-force search. */
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
    mb = lrcore_q8_absmax_bits(mb);
    float am;
    memcpy(&am, &mb, sizeof am);
    if (mb == 0 || mb >= 0x7f800000u) {        /* 0, +inf or NaN: every quotient 0 or NaN */
        memset(codes, c->is_signed ? 127 : 0, n);
        return am;
    }
    size_t i = 0;
#ifdef LRCORE_Q8_VECTOR_ENCODER
    if (lrcore_q8_vector_ok(mb))
        i = c->is_signed ? lrcore_q8_encode_vec(c, n, v, am, codes, 1)
                         : lrcore_q8_encode_vec(c, n, v, am, codes, 0);
#endif
    for (; i < n; i++) codes[i] = lrcore_q8_code_of(c, v[i], am);
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

#ifdef LRCORE_Q8_VECTOR_ENCODER
/* AVX512-VBMI (Ice Lake and later, Zen 4; not Skylake-X): 1 when the decoder below may run.
 * Set once by q8_isa.c's lrcore_q8_vbmi_avx512 (at import of lrcore._q8) from the CPU. */
/* static: each build of q8_isa.c keeps its own flag (with CFLAGS that enable AVX-512 for
 * every build, three objects define it, and only the avx512 one's is ever set). */
static int lrcore_q8_vbmi __attribute__((unused)) = 0;

/* Functions that may use AVX512-VBMI (called only where lrcore_q8_vbmi is 1). */
#define LRCORE_Q8_VBMI __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vbmi")))

/* The byte planes in registers (P[k][h]: plane k, entries 64 h .. 64 h + 63), and the
 * order of the codes that makes the unpacks come out in code order. */
typedef struct { __m512i P[4][4]; __m512i order; } lrcore_q8_btab;

LRCORE_Q8_VBMI LRCORE_INLINE void lrcore_q8_btab_load(const lrcore_q8_codec *c, lrcore_q8_btab *t)
{
    for (int k = 0; k < 4; k++)
        for (int h = 0; h < 4; h++)
            t->P[k][h] = _mm512_loadu_si512((const void *)(c->planes + 256 * k + 64 * h));
    /* position 16 L + 4 q + i takes code 16 q + 4 L + i */
    uint8_t ord[64];
    for (int L = 0; L < 4; L++)
        for (int qq = 0; qq < 4; qq++)
            for (int i = 0; i < 4; i++) ord[16 * L + 4 * qq + i] = (uint8_t)(16 * qq + 4 * L + i);
    t->order = _mm512_loadu_si512((const void *)ord);
}

/* Decode with byte permutes: the map's 256 float32 entries as four byte planes (plane k =
 * byte k of every entry, 256 bytes = 4 registers each); per 64 codes, two two-register
 * byte permutes (vpermi2b, index bits 0-6) and a blend on bit 7 give byte k of the 64
 * entries, and byte/word unpacks assemble the floats. The unpacks work within 128-bit
 * lanes, so the codes are first permuted (`order`) such that the four results come out in
 * code order. Same bits as lrcore_q8_decode_block: out[i] = map[codes[i]] * am. */
LRCORE_Q8_VBMI LRCORE_INLINE void lrcore_q8_decode64_vbmi(const lrcore_q8_btab *t,
    const uint8_t *LRCORE_RESTRICT codes, __m512 am, float *LRCORE_RESTRICT out)
{
    LRCORE__FP_STRICT
    const __m512i k = _mm512_permutexvar_epi8(t->order, _mm512_loadu_si512((const void *)codes));
    const __mmask64 hi = _mm512_movepi8_mask(k);
    __m512i B[4];
    for (int pk = 0; pk < 4; pk++)
        B[pk] = _mm512_mask_blend_epi8(hi, _mm512_permutex2var_epi8(t->P[pk][0], k, t->P[pk][1]),
                                       _mm512_permutex2var_epi8(t->P[pk][2], k, t->P[pk][3]));
    const __m512i w0 = _mm512_unpacklo_epi8(B[0], B[1]), w1 = _mm512_unpackhi_epi8(B[0], B[1]);
    const __m512i w2 = _mm512_unpacklo_epi8(B[2], B[3]), w3 = _mm512_unpackhi_epi8(B[2], B[3]);
    _mm512_storeu_ps(out, _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(w0, w2)), am));
    _mm512_storeu_ps(out + 16,
                     _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(w0, w2)), am));
    _mm512_storeu_ps(out + 32,
                     _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(w1, w3)), am));
    _mm512_storeu_ps(out + 48,
                     _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(w1, w3)), am));
}

/* Blocks [c0, c1) of q (a buffer of n values) decoded into out with lrcore_q8_decode64_vbmi
 * (the scalar loop for the last n % 64 values of a partial block). */
LRCORE_Q8_VBMI static void lrcore_q8_decode_blocks_vbmi(const lrcore_q8_codec *c, size_t n,
    size_t c0, size_t c1, lrcore_q8_state q, float *LRCORE_RESTRICT out)
{
    LRCORE__FP_STRICT
    lrcore_q8_btab t;
    lrcore_q8_btab_load(c, &t);
    for (size_t b = c0; b < c1; b++) {
        const size_t m = lrcore_q8_block_len(n, b);
        const uint8_t *codes = q.codes + b * LRCORE_Q8_BLOCK;
        float *o = out + (b - c0) * LRCORE_Q8_BLOCK;
        const float absmax = q.absmax[b];
        const __m512 am = _mm512_set1_ps(absmax);
        size_t i = 0;
        for (; i + 64 <= m; i += 64) lrcore_q8_decode64_vbmi(&t, codes + i, am, o + i);
        for (; i < m; i++) o[i] = c->map[codes[i]] * absmax;
    }
}
#endif

/* Decode blocks [c0, c1) of q (a buffer of n values) into out (block c0 first). */
LRCORE_INLINE void lrcore_q8_decode_blocks(const lrcore_q8_codec *c, size_t n, size_t c0,
    size_t c1, lrcore_q8_state q, float *LRCORE_RESTRICT out)
{
#ifdef LRCORE_Q8_VECTOR_ENCODER
    if (lrcore_q8_vbmi) {
        lrcore_q8_decode_blocks_vbmi(c, n, c0, c1, q, out);
        return;
    }
#endif
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
