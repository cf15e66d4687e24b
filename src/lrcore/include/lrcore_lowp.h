/*
 * lrcore_lowp.h -- bfloat16 and float16 buffers for lrcore's kernels.
 *
 * Design: a low-precision step is "widen every buffer to float32, run the float32
 * kernel exactly as for float32 buffers, round param and state back once". This header
 * holds the pieces, in plain C99 integer arithmetic that the compiler vectorises:
 *
 *   - widening (bfloat16: a 16-bit shift; float16: exact, subnormals included);
 *   - rounding to nearest even, and stochastic rounding (round away from zero with
 *     probability equal to the discarded fraction of an ulp, subnormals included) with
 *     32 random bits per element from a counter-based stream keyed by
 *     (seed, step, buffer, element index): results never depend on how the work is split
 *     (threads, instruction sets, slices passed with an index offset). One 32-bit hash
 *     serves a pair of buffers (param and the first state, the second and third states):
 *     the odd buffer's word is the even one's rotated by 16, so bfloat16 rounding, which
 *     adds the high 16 bits, draws disjoint halves of one hash for the two (buffer 0's
 *     bits, float16's only buffer, are the full hash);
 *   - the fused loops: lrcore_body.h included once per layout and rounding, its loads
 *     widening and its stores rounding, so each element is read once, computed in float32
 *     registers by the float32 rule's own operations, and stored once, the step's scalars
 *     formed once per call (the all-bfloat16 layouts run two elements per 32-bit word,
 *     LRCORE__PAIRED in lrcore_body.h; the float16 layouts of builds with F16C convert a
 *     tile of 256 elements at a time with vcvtph2ps/vcvtps2ph, LRCORE__TILE_P/G); and lrcore_<rule>_lowp, which picks the loop for a call's
 *     element types and rounding (see the bottom of this file).
 *
 * NaN stays NaN (quiet, sign and top payload bits kept), Inf stays Inf. lrcore/lowp.py is
 * the numpy twin of every function here; the tests compare them bit for bit.
 */
#ifndef LRCORE_LOWP_H
#define LRCORE_LOWP_H

#include <stdint.h>
#include <string.h>
#include "lrcore.h"
#if defined(__F16C__)
#include <immintrin.h>
#endif

#if defined(__cplusplus)
extern "C" {
#endif

/* No contraction into FMA here either (see the top of lrcore.h). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif

/* Element types of a buffer. */
enum { LRCORE_ET_F32 = 0, LRCORE_ET_F64 = 1, LRCORE_ET_BF16 = 2, LRCORE_ET_F16 = 3 };
enum { LRCORE_ROUND_NEAREST = 0, LRCORE_ROUND_STOCHASTIC = 1 };

/* How a call stores its buffers and rounds (the element types of param, grad and the
 * states; index_offset: position of element 0 in the whole buffer, for the random stream). */
typedef struct {
    int param, grad, state;
    int rounding;
    uint64_t seed, step, index_offset;
} lrcore_lowp;

LRCORE_INLINE uint32_t lrcore__f32_bits(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
LRCORE_INLINE float lrcore__f32_from(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

/* ---- the random stream ------------------------------------------------------------------ */

/* murmur3's 64-bit finaliser. */
static inline uint64_t lrcore_fmix64(uint64_t k)
{
    k ^= k >> 33; k *= 0xFF51AFD7ED558CCDull;
    k ^= k >> 33; k *= 0xC4CEB9FE1A85EC53ull;
    k ^= k >> 33;
    return k;
}

/* The 32-bit key of (seed, step, buffer, high 32 bits of the element index). */
static inline uint32_t lrcore_stream_key(uint64_t seed, uint64_t step, unsigned buffer, uint32_t hi)
{
    uint64_t k = lrcore_fmix64(seed);
    k = lrcore_fmix64(k ^ step);
    k = lrcore_fmix64(k ^ (((uint64_t)hi << 8) | (buffer & 0xFFu)));
    return (uint32_t)(k ^ (k >> 32));
}

/* Chris Wellons' lowbias32. The 32 bits of element i of an even buffer b:
 * lowbias32(low32(index) ^ key(b)); of the odd buffer b + 1: the same word rotated by 16
 * (one hash per pair of buffers: bfloat16 rounding uses the high 16 bits, so buffer b
 * draws the high half of the hash and buffer b + 1 the low half). */
/* lowbias32's middle steps (after its first, x ^= x >> 16, and before its last, the same) */
LRCORE_INLINE uint32_t lrcore__lowbias32_mid(uint32_t x)
{
    x *= 0x7FEB352Du;
    x ^= x >> 15; x *= 0x846CA68Bu;
    return x;
}

LRCORE_INLINE uint32_t lrcore_lowbias32(uint32_t x)
{
    x = lrcore__lowbias32_mid(x ^ (x >> 16));
    return x ^ (x >> 16);
}

/* lrcore_lowbias32(ix ^ key), its first step, x ^= x >> 16, written
 * (ix ^ (ix >> 16)) ^ (key ^ (key >> 16)) (a logical shift distributes over xor): the same
 * bits, but the loops shift their element counter ix once for every buffer pair and fold
 * the call's constant key ^ (key >> 16) into one three-input xor (AVX-512: vpternlogd).
 * lrcore__lowbias32_pre stops before the last step, x ^= x >> 16, which leaves the high 16
 * bits unchanged: callers that use only those skip it. */
LRCORE_INLINE uint32_t lrcore__lowbias32_pre(uint32_t ix, uint32_t key)
{
    return lrcore__lowbias32_mid((ix ^ (ix >> 16)) ^ (key ^ (key >> 16)));
}

LRCORE_INLINE uint32_t lrcore__lowbias32_ix(uint32_t ix, uint32_t key)
{
    const uint32_t x = lrcore__lowbias32_pre(ix, key);
    return x ^ (x >> 16);
}

LRCORE_INLINE uint32_t lrcore__rotl32(uint32_t x, unsigned r)
{ return r ? (x << r) | (x >> (32u - r)) : x; }

/* ---- one element ---------------------------------------------------------------------- */

LRCORE_INLINE uint32_t lrcore__bf16_widen(uint16_t b) { return (uint32_t)b << 16; }

LRCORE_INLINE uint32_t lrcore__f16_widen(uint16_t h)
{
    uint32_t sign = ((uint32_t)h & 0x8000u) << 16, e = ((uint32_t)h >> 10) & 0x1Fu;
    uint32_t m = (uint32_t)h & 0x3FFu;
    uint32_t normal = ((e + 112u) << 23) | (m << 13);
    uint32_t special = 0x7F800000u | (m << 13);                          /* Inf, NaN payload */
    uint32_t sub = lrcore__f32_bits((float)(int32_t)m * 5.9604644775390625e-8f); /* m * 2^-24 */
    /* selects by masks: a conditional with a float conversion in it stays a branch in GCC */
    const uint32_t is_sub = 0u - (uint32_t)(e == 0u), is_special = 0u - (uint32_t)(e == 31u);
    uint32_t u = (sub & is_sub) | (special & is_special) | (normal & ~(is_sub | is_special));
    return u | sign;
}

/* Nearest even; NaN -> quiet NaN with the top payload bits. */
LRCORE_INLINE uint16_t lrcore__bf16_nearest(uint32_t u)
{
    uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)((u & 0x7FFFFFFFu) > 0x7F800000u ? ((u >> 16) | 0x40u) : r);
}

/* Add 16 random bits below bfloat16's ulp, truncate (Inf + bits truncates back to Inf). */
LRCORE_INLINE uint16_t lrcore__bf16_stochastic(uint32_t u, uint32_t r)
{
    uint32_t t = (u + (r >> 16)) >> 16;
    return (uint16_t)((u & 0x7FFFFFFFu) > 0x7F800000u ? ((u >> 16) | 0x40u) : t);
}

/* float16, nearest even. |x| >= 2^16: Inf. |x| < 2^-14: the significand M (24 bits) of
 * x / 2^-24 = M / 2^sh is rounded at bit sh. */
LRCORE_INLINE uint16_t lrcore__f16_nearest(uint32_t u)
{
    uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu, e = a >> 23;
    uint32_t norm = ((a + 0xFFFu + ((a >> 13) & 1u)) >> 13) - (112u << 10);
    uint32_t M = (a & 0x7FFFFFu) | (e != 0u ? 0x800000u : 0u);
    uint32_t sh = 126u - (e != 0u ? e : 1u);
    /* only e < 113 (sh >= 14) is used; the clamps keep every shift defined */
    uint32_t s = sh < 25u ? (sh > 14u ? sh : 14u) : 25u;   /* from 25 on the result is 0 */
    uint32_t sub = (M + ((1u << (s - 1u)) - 1u) + ((M >> s) & 1u)) >> s;
    uint32_t out = e < 113u ? sub : norm;
    out = a >= (143u << 23) ? 0x7C00u : out;
    out |= sign;
    uint32_t qnan = sign | 0x7E00u | ((a & 0x7FFFFFu) >> 13);
    return (uint16_t)(a > 0x7F800000u ? qnan : out);
}

/* float16, stochastic: normal range adds 13 random bits below the ulp and truncates;
 * subnormal range rounds M / 2^sh up with probability (M mod 2^sh) / 2^sh, i.e. computes
 * (M * 2^(32 - sh) + r) >> 32 (for sh > 32, with M * 2^(32 - sh) truncated to an integer). */
LRCORE_INLINE uint16_t lrcore__f16_stochastic(uint32_t u, uint32_t r)
{
    uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu, e = a >> 23;
    uint32_t norm = ((a + (r >> 19)) >> 13) - (112u << 10);
    uint32_t M = (a & 0x7FFFFFu) | (e != 0u ? 0x800000u : 0u);
    uint32_t sh = 126u - (e != 0u ? e : 1u);
    uint32_t s1 = sh < 31u ? (sh > 14u ? sh : 14u) : 31u;   /* clamps: used only for sh >= 14 */
    uint32_t sub_a = (M + (r >> (32u - s1))) >> s1;                   /* sh in 14..31 */
    uint32_t d = sh >= 32u ? sh - 32u : 0u;
    uint32_t Z = d > 31u ? 0u : (M >> (d < 31u ? d : 31u));
    uint32_t sub_b = r > ~Z ? 1u : 0u;                                /* sh >= 32 */
    uint32_t sub = sh >= 32u ? sub_b : sub_a;
    uint32_t out = e < 113u ? sub : norm;
    out = a >= (143u << 23) ? 0x7C00u : out;
    out |= sign;
    uint32_t qnan = sign | 0x7E00u | ((a & 0x7FFFFFu) >> 13);
    return (uint16_t)(a > 0x7F800000u ? qnan : out);
}

/* ---- arrays ----------------------------------------------------------------------------- */

static inline void lrcore_widen_bf16(size_t n, const uint16_t *LRCORE_RESTRICT src,
                                     float *LRCORE_RESTRICT dst)
{
    for (size_t i = 0; i < n; i++) dst[i] = lrcore__f32_from(lrcore__bf16_widen(src[i]));
}

static inline void lrcore_widen_f16(size_t n, const uint16_t *LRCORE_RESTRICT src,
                                    float *LRCORE_RESTRICT dst)
{
    for (size_t i = 0; i < n; i++) dst[i] = lrcore__f32_from(lrcore__f16_widen(src[i]));
}

/* Round n float32 values to bfloat16 (et LRCORE_ET_BF16) or float16 (LRCORE_ET_F16). Element
 * i draws the bits of index `index + i` of stream (seed, step, buffer). */
static inline void lrcore_round_half(int et, size_t n, const float *LRCORE_RESTRICT src,
                                     uint16_t *LRCORE_RESTRICT dst, int rounding, uint64_t seed,
                                     uint64_t step, unsigned buffer, uint64_t index)
{
    if (rounding == LRCORE_ROUND_NEAREST) {
        if (et == LRCORE_ET_BF16)
            for (size_t i = 0; i < n; i++) dst[i] = lrcore__bf16_nearest(lrcore__f32_bits(src[i]));
        else
            for (size_t i = 0; i < n; i++) dst[i] = lrcore__f16_nearest(lrcore__f32_bits(src[i]));
        return;
    }
    size_t i = 0;
    while (i < n) {   /* segments that do not cross a multiple of 2^32 in the index */
        uint64_t idx = index + i;
        uint32_t lo = (uint32_t)idx;
        uint64_t room = ((uint64_t)1 << 32) - lo;
        size_t seg = (uint64_t)(n - i) < room ? n - i : (size_t)room;
        uint32_t key = lrcore_stream_key(seed, step, buffer & ~1u, (uint32_t)(idx >> 32));
        const unsigned rot = (buffer & 1u) ? 16u : 0u;   /* odd buffers: rotated by 16 */
        const float *s = src + i;
        uint16_t *d = dst + i;
        if (et == LRCORE_ET_BF16)
            for (size_t j = 0; j < seg; j++)
                d[j] = lrcore__bf16_stochastic(lrcore__f32_bits(s[j]),
                    lrcore__rotl32(lrcore_lowbias32((lo + (uint32_t)j) ^ key), rot));
        else
            for (size_t j = 0; j < seg; j++)
                d[j] = lrcore__f16_stochastic(lrcore__f32_bits(s[j]),
                    lrcore__rotl32(lrcore_lowbias32((lo + (uint32_t)j) ^ key), rot));
        i += seg;
    }
}

/* ---- the fused loops ------------------------------------------------------------------ */

/* Storage kinds for lrcore_body.h (see "Element access" in lrcore.h), in the form the
 * loops of lrcore_lowp.h call (LRCORE__LOWP_KINDS in lrcore_body.h):
 *     float lrcore__ldx_<kind>(const S *a, size_t i, unsigned lane)
 *     void lrcore__stx_<kind>(S *a, size_t i, float x, const lrcore__stream *st,
 *                             unsigned buffer, unsigned lane, uint32_t *pw, uint32_t ix)
 * bf16 and f16 widen on load and round to nearest even on store; bf16sr and f16sr round
 * stochastically, element i of buffer b drawing h = lrcore_lowbias32(ix ^ st->key[b & ~1])
 * (ix = st->lo + i, counted by the loop), rotated by 16 when b is odd (st->key[b] is the
 * key of buffer b & ~1); f32: float32 buffers of these layouts, stored as they are.
 * lane 2: element i on its own. Lanes 0 and 1 (the bfloat16 kinds only; LRCORE__PAIRED in
 * lrcore_body.h, little-endian): element i is the low half of the 32-bit word at a + i
 * (lane 0) or the high half of the word at a + i - 1 (lane 1); a lane-0 store leaves its
 * half in pw[buffer] and the lane-1 store of the same buffer writes the word. */
typedef uint16_t lrcore__bf16_t;
typedef uint16_t lrcore__bf16sr_t;
typedef uint16_t lrcore__f16_t;
typedef uint16_t lrcore__f16sr_t;

LRCORE_INLINE float lrcore__ldx_f32(const float *a, size_t i, const unsigned lane)
{ (void)lane; return a[i]; }
LRCORE_INLINE void lrcore__stx_f32(float *a, size_t i, float x, const lrcore__stream *st,
    unsigned buffer, const unsigned lane, uint32_t *pw, const uint32_t ix)
{ (void)st; (void)buffer; (void)lane; (void)pw; (void)ix; a[i] = x; }

LRCORE_INLINE float lrcore__ldx_bf16(const uint16_t *a, size_t i, const unsigned lane)
{
    uint32_t w;
    if (lane == 2u) return lrcore__f32_from(lrcore__bf16_widen(a[i]));
    memcpy(&w, a + i - lane, 4);
    return lrcore__f32_from(lane == 0u ? w << 16 : w & 0xFFFF0000u);
}
#define lrcore__ldx_bf16sr lrcore__ldx_bf16
LRCORE_INLINE float lrcore__ldx_f16(const uint16_t *a, size_t i, const unsigned lane)
{ (void)lane; return lrcore__f32_from(lrcore__f16_widen(a[i])); }
#define lrcore__ldx_f16sr lrcore__ldx_f16

/* The 16 bits bfloat16 stochastic rounding adds (the high half of the element's 32 random
 * bits): the high half of the pair's hash for an even buffer, the low half for an odd one.
 * Buffers b and b + 1 compute the same h, which the compiler computes once. lowbias32's last
 * step, x ^= x >> 16, leaves the high half unchanged, so it is only done for the low half. */
LRCORE_INLINE uint32_t lrcore__bf16_bits16(uint32_t ix, uint32_t key, unsigned buffer)
{
    const uint32_t h = lrcore__lowbias32_pre(ix, key);
    return (buffer & 1u) ? (h ^ (h >> 16)) & 0xFFFFu : h >> 16;
}

/* Stores the bfloat16 in the high half of r (element i's lane of the word). */
LRCORE_INLINE void lrcore__stx_word(uint16_t *a, size_t i, uint32_t r, unsigned buffer,
                                    const unsigned lane, uint32_t *pw)
{
    if (lane == 2u) { a[i] = (uint16_t)(r >> 16); return; }
    if (lane == 0u) { pw[buffer] = r >> 16; return; }
    const uint32_t w = pw[buffer] | (r & 0xFFFF0000u);
    memcpy(a + i - 1, &w, 4);
}

/* The bfloat16 stores compute lrcore__bf16_nearest / lrcore__bf16_stochastic with fewer
 * vector operations, to the same bits: for NaN the rounding term is 0 and the float32
 * quiet bit 0x400000 is set first, so (u | 0x400000) >> 16 == (u >> 16) | 0x40, the quiet
 * NaN those functions return (x != x is one vector compare). */
LRCORE_INLINE void lrcore__stx_bf16(uint16_t *a, size_t i, float x, const lrcore__stream *st,
    unsigned buffer, const unsigned lane, uint32_t *pw, const uint32_t ix)
{
    const uint32_t u = lrcore__f32_bits(x);
    const int nan = x != x;
    const uint32_t add = nan ? 0u : 0x7FFFu + ((u >> 16) & 1u);
    (void)st; (void)ix;
    lrcore__stx_word(a, i, (nan ? u | 0x400000u : u) + add, buffer, lane, pw);
}
LRCORE_INLINE void lrcore__stx_bf16sr(uint16_t *a, size_t i, float x, const lrcore__stream *st,
    unsigned buffer, const unsigned lane, uint32_t *pw, const uint32_t ix)
{
    const uint32_t u = lrcore__f32_bits(x);
    const int nan = x != x;
    const uint32_t add = nan ? 0u : lrcore__bf16_bits16(ix, st->key[buffer & ~1u], buffer);
    lrcore__stx_word(a, i, (nan ? u | 0x400000u : u) + add, buffer, lane, pw);
}
LRCORE_INLINE void lrcore__stx_f16(uint16_t *a, size_t i, float x, const lrcore__stream *st,
    unsigned buffer, const unsigned lane, uint32_t *pw, const uint32_t ix)
{
    (void)st; (void)buffer; (void)lane; (void)pw; (void)ix;
    a[i] = lrcore__f16_nearest(lrcore__f32_bits(x));
}
LRCORE_INLINE void lrcore__stx_f16sr(uint16_t *a, size_t i, float x, const lrcore__stream *st,
    unsigned buffer, const unsigned lane, uint32_t *pw, const uint32_t ix)
{
    const uint32_t r = lrcore__rotl32(lrcore__lowbias32_ix(ix, st->key[buffer & ~1u]),
                                      (buffer & 1u) ? 16u : 0u);
    (void)lane; (void)pw;
    a[i] = lrcore__f16_stochastic(lrcore__f32_bits(x), r);
}

/* float16 tiles (LRCORE__TILE in lrcore_body.h: float16 param or grad in a build with
 * F16C): the loop widens a tile of the float16 buffers into float32 arrays with vcvtph2ps,
 * runs the float32 loop body on them, and rounds the param tile back with vcvtps2ph
 * (nearest even) or the stochastic rounding of lrcore__f16_stochastic (buffer 0's bits).
 * Both instructions agree with lrcore__f16_widen / lrcore__f16_nearest on every input
 * (bench/f16c_exhaustive.c checks all 65536 halves and all 2^32 floats), except that
 * vcvtph2ps quiets a signalling NaN: the loops never store a loaded value unchanged, and
 * the arithmetic that produces what they store quiets it anyway, to the same NaN
 * (tests/test_lowp_kernels.py runs NaN, Inf and subnormal halves through every rule). */
#define LRCORE__TILE_N 256
LRCORE_INLINE void lrcore__f16_tile_in(const uint16_t *src, size_t n, float *dst)
{
    size_t j = 0;
#if defined(__F16C__)
#if defined(__AVX512F__)
    for (; j + 16 <= n; j += 16)
        _mm512_storeu_ps(dst + j, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + j))));
#endif
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + j))));
#endif
    for (; j < n; j++) dst[j] = lrcore__f32_from(lrcore__f16_widen(src[j]));
}
LRCORE_INLINE void lrcore__f16_tile_out_rn(uint16_t *dst, size_t n, const float *src,
                                           const lrcore__stream *st, uint32_t ix)
{
    size_t j = 0;
    (void)st; (void)ix;
#if defined(__F16C__)
#define LRCORE__RNE (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#if defined(__AVX512F__)
    for (; j + 16 <= n; j += 16)
        _mm256_storeu_si256((__m256i *)(dst + j), _mm512_cvtps_ph(_mm512_loadu_ps(src + j),
                                                                  LRCORE__RNE));
#endif
    for (; j + 8 <= n; j += 8)
        _mm_storeu_si128((__m128i *)(dst + j), _mm256_cvtps_ph(_mm256_loadu_ps(src + j),
                                                               LRCORE__RNE));
#undef LRCORE__RNE
#endif
    for (; j < n; j++) dst[j] = lrcore__f16_nearest(lrcore__f32_bits(src[j]));
}
/* Stochastic: a tile whose values all lie in float16's normal range, 2^-14 <= |x| < 2^16
 * (the usual case), takes lrcore__f16_stochastic's normal-range branch only (the same bits
 * there); any other value (subnormal, zero, overflow, Inf, NaN) sends the tile through the
 * whole function. */
LRCORE_INLINE void lrcore__f16_tile_out_sr(uint16_t *dst, size_t n, const float *src,
                                           const lrcore__stream *st, uint32_t ix)
{
    const uint32_t key = st->key[0];
    uint32_t most = 0;   /* some |x| outside the range <=> max of |x| - 2^-14 (unsigned) */
    for (size_t j = 0; j < n; j++) {
        const uint32_t d = (lrcore__f32_bits(src[j]) & 0x7FFFFFFFu) - (113u << 23);
        most = d > most ? d : most;
    }
    const int other = most >= (30u << 23);
    uint32_t c = ix;   /* the element's counter: a 32-bit induction of its own (as ELEMENTS) */
    if (!other)
        for (size_t j = 0; j < n; j++, c++) {
            const uint32_t u = lrcore__f32_bits(src[j]), a = u & 0x7FFFFFFFu;
            /* r >> 19, r = lrcore__lowbias32_ix(c, key): bits 19..31 of r are those of
             * lrcore__lowbias32_pre (its last step changes only the low 16 bits) */
            const uint32_t r19 = lrcore__lowbias32_pre(c, key) >> 19;
            dst[j] = (uint16_t)(((u >> 16) & 0x8000u)
                                | (((a + r19) >> 13) - (112u << 10)));
        }
    else
        for (size_t j = 0; j < n; j++, c++)
            dst[j] = lrcore__f16_stochastic(lrcore__f32_bits(src[j]),
                                            lrcore__lowbias32_ix(c, key));
}

/*
 * The update loops of lrcore_body.h once per layout and rounding, arithmetic in float32
 * (lrcore_body.h's default LRCORE__T):
 * lrcore__<rule>_<param>_<grad>_<state>[_rn|_sr]. Layouts whose param and states are
 * float32 round nothing, so they have one instantiation for both roundings.
 */
/* Blocks of these loops (software prefetch of calls over LRCORE_PREFETCH_MIN_BYTES per
 * stream, see lrcore.h): lrcore__block_x's, but a block is LRCORE_LOWP_BLOCK_LINES lines
 * of the widest stream (lrcore__block_x: LRCORE_BLOCK_LINES, 4, lines of the narrowest).
 * Layouts with a float32 stream keep their blocks (8 lines of it); the all-bfloat16
 * layouts get 8 lines per block instead of 4: entering their vector loop costs tens of
 * instructions (the hash and rounding constants are broadcast anew each time), which
 * blocks of 128 elements paid every time. LRCORE__BLOCK_FN points lrcore_body.h's BLOCK
 * here while the layouts are instantiated. A hint only: no effect on results. */
#ifndef LRCORE_LOWP_BLOCK_LINES
#define LRCORE_LOWP_BLOCK_LINES 8
#endif
LRCORE_INLINE size_t lrcore__block_lowp(size_t b0, size_t n, size_t ps, size_t gs, size_t ss,
    const void *r, void *w0, void *w1, void *w2, void *w3)
{
    const size_t hi = ps > gs ? (ps > ss ? ps : ss) : (gs > ss ? gs : ss);
    return lrcore__block_mixed(b0, n, ps, gs, ss,
                               LRCORE_CACHE_LINE / hi * LRCORE_LOWP_BLOCK_LINES, r, w0, w1, w2, w3);
}
#define LRCORE__BLOCK_FN lrcore__block_lowp

#define LRCORE__FEW_VARIANTS 1    /* see LRCORE__DISPATCH_FEW in lrcore.h */
#define LRCORE__LOWP_KINDS 1      /* the ldx/stx kinds above (lrcore_body.h) */

#define LRCORE__SUFFIX bf16_bf16_bf16_rn
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define LRCORE__PAIRED 1
#endif
#define LRCORE__P bf16
#define LRCORE__G bf16
#define LRCORE__S bf16
#include "lrcore_body.h"

#define LRCORE__SUFFIX bf16_bf16_bf16_sr
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define LRCORE__PAIRED 1
#endif
#define LRCORE__P bf16sr
#define LRCORE__G bf16
#define LRCORE__S bf16sr
#include "lrcore_body.h"

#define LRCORE__SUFFIX bf16_bf16_f32_rn
#define LRCORE__P bf16
#define LRCORE__G bf16
#define LRCORE__S f32
#include "lrcore_body.h"

#define LRCORE__SUFFIX bf16_bf16_f32_sr
#define LRCORE__P bf16sr
#define LRCORE__G bf16
#define LRCORE__S f32
#include "lrcore_body.h"

#define LRCORE__SUFFIX f16_f16_f32_rn
#if defined(__F16C__)
#define LRCORE__TILE_P lrcore__f16_tile_out_rn
#define LRCORE__TILE_G 1
#endif
#define LRCORE__P f16
#define LRCORE__G f16
#define LRCORE__S f32
#include "lrcore_body.h"

#define LRCORE__SUFFIX f16_f16_f32_sr
#if defined(__F16C__)
#define LRCORE__TILE_P lrcore__f16_tile_out_sr
#define LRCORE__TILE_G 1
#endif
#define LRCORE__P f16sr
#define LRCORE__G f16
#define LRCORE__S f32
#include "lrcore_body.h"

#define LRCORE__SUFFIX f32_bf16_f32
#define LRCORE__P f32
#define LRCORE__G bf16
#define LRCORE__S f32
#include "lrcore_body.h"

#define LRCORE__SUFFIX f32_f16_f32
#if defined(__F16C__)
#define LRCORE__TILE_G 1
#endif
#define LRCORE__P f32
#define LRCORE__G f16
#define LRCORE__S f32
#include "lrcore_body.h"

#undef LRCORE__FEW_VARIANTS
#undef LRCORE__LOWP_KINDS
#undef LRCORE__BLOCK_FN

/* The instantiations above as X(number, suffix, param type, grad type, state type, ...);
 * the number is what lrcore__lowp_layout returns. */
#define LRCORE__LOWP_LAYOUTS(X, ...) \
    X(0, bf16_bf16_bf16_rn, uint16_t, uint16_t, uint16_t, __VA_ARGS__) \
    X(1, bf16_bf16_bf16_sr, uint16_t, uint16_t, uint16_t, __VA_ARGS__) \
    X(2, bf16_bf16_f32_rn, uint16_t, uint16_t, float, __VA_ARGS__) \
    X(3, bf16_bf16_f32_sr, uint16_t, uint16_t, float, __VA_ARGS__) \
    X(4, f16_f16_f32_rn, uint16_t, uint16_t, float, __VA_ARGS__) \
    X(5, f16_f16_f32_sr, uint16_t, uint16_t, float, __VA_ARGS__) \
    X(6, f32_bf16_f32, float, uint16_t, float, __VA_ARGS__) \
    X(7, f32_f16_f32, float, uint16_t, float, __VA_ARGS__)

/* The instantiation of a call's element types and rounding, or -1: not a layout
 * lrcore_lowp.h runs (float32/float64 everywhere go to lrcore.h's kernels). */
static inline int lrcore__lowp_layout(const lrcore_lowp *lp)
{
    const int sr = lp->rounding == LRCORE_ROUND_STOCHASTIC;
    if (lp->rounding != LRCORE_ROUND_NEAREST && !sr) return -1;
    if (lp->param == LRCORE_ET_BF16 && lp->grad == LRCORE_ET_BF16) {
        if (lp->state == LRCORE_ET_BF16) return 0 + sr;
        if (lp->state == LRCORE_ET_F32) return 2 + sr;
    }
    if (lp->param == LRCORE_ET_F16 && lp->grad == LRCORE_ET_F16 && lp->state == LRCORE_ET_F32)
        return 4 + sr;
    if (lp->param == LRCORE_ET_F32 && lp->state == LRCORE_ET_F32) {
        if (lp->grad == LRCORE_ET_BF16) return 6;
        if (lp->grad == LRCORE_ET_F16) return 7;
    }
    return -1;
}

LRCORE_INLINE size_t lrcore__et_size(int et) { return et == LRCORE_ET_F32 ? 4 : (et == LRCORE_ET_F64 ? 8 : 2); }

/* The stream of the elements from `index` on (up to the next multiple of 2^32). */
static inline lrcore__stream lrcore__stream_at(const lrcore_lowp *lp, uint64_t index)
{
    lrcore__stream st;
    st.lo = (uint32_t)index;
    for (unsigned b = 0; b < 4; b += 2)   /* key[b] and key[b + 1]: the key of buffer b */
        st.key[b] = st.key[b + 1] = lp->rounding == LRCORE_ROUND_STOCHASTIC
                  ? lrcore_stream_key(lp->seed, lp->step, b, (uint32_t)(index >> 32)) : 0u;
    return st;
}

#define LRCORE__LOWP_STATES_1(S) (S *)s[0]
#define LRCORE__LOWP_STATES_2(S) LRCORE__LOWP_STATES_1(S), (S *)s[1]
#define LRCORE__LOWP_STATES_3(S) LRCORE__LOWP_STATES_2(S), (S *)s[2]
#define LRCORE__LOWP_CASE(num, suffix, P, G, S, rule, nstates) \
    case num: lrcore__##rule##_##suffix(seg, (P *)p, (const G *)g, \
                                        LRCORE__LOWP_STATES_##nstates(S), hp, st); break;

/*
 * The low-precision kernels: one step of a rule over n elements of buffers stored as
 * lp->param, lp->grad and lp->state (LRCORE_ET_*), rounded by lp->rounding:
 *
 *     int lrcore_<rule>_lowp(size_t n, void *param, const void *grad, void *const state[3],
 *                            const lrcore_<rule>_hp *hp, const lrcore_lowp *lp);
 *
 * state: the rule's state buffers in kernel order (lrcore.h), NULL where absent. Returns 0,
 * or -1 (nothing touched) when the element types and rounding are not one of the layouts
 * above. Element i is element lp->index_offset + i of the whole buffer; its random bits
 * (stochastic rounding) are lrcore_lowbias32(low32(index) ^ lrcore_stream_key(seed, step,
 * buffer & ~1, high32(index))), rotated by 16 for an odd buffer, with buffer 0 for param
 * and k + 1 for state k; the call runs in
 * segments that do not cross a multiple of 2^32 of the index, each with its keys.
 * The step's scalars are formed once per segment (once per call below 2^32 elements).
 */
#define LRCORE__LOWP_KERNEL(rule, nstates) \
static inline int lrcore_##rule##_lowp(size_t n, void *param, const void *grad, \
    void *const state[3], const lrcore_##rule##_hp *hp, const lrcore_lowp *lp) \
{ \
    const int layout = lrcore__lowp_layout(lp); \
    const size_t ps = lrcore__et_size(lp->param), gs = lrcore__et_size(lp->grad); \
    const size_t ss = lrcore__et_size(lp->state); \
    if (layout < 0) return -1; \
    for (size_t i = 0, seg; i < n; i += seg) { \
        const uint64_t index = lp->index_offset + i; \
        const uint64_t room = ((uint64_t)1 << 32) - (uint32_t)index; \
        seg = (uint64_t)(n - i) < room ? n - i : (size_t)room; \
        const lrcore__stream st = lrcore__stream_at(lp, index); \
        char *p = (char *)param + i * ps; \
        const char *g = (const char *)grad + i * gs; \
        char *s[3]; \
        for (int k = 0; k < 3; k++) s[k] = state[k] ? (char *)state[k] + i * ss : (char *)0; \
        switch (layout) { LRCORE__LOWP_LAYOUTS(LRCORE__LOWP_CASE, rule, nstates) default: break; } \
    } \
    return 0; \
}
LRCORE_RULES(LRCORE__LOWP_KERNEL)
#undef LRCORE__LOWP_KERNEL
#undef LRCORE__LOWP_CASE

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#if defined(__cplusplus)
}
#endif

#endif /* LRCORE_LOWP_H */
