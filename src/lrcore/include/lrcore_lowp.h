/*
 * lrcore_lowp.h -- bfloat16 and float16 buffers for lrcore's kernels.
 *
 * Design: a low-precision step is "widen every buffer to float32, run the float32
 * kernel exactly as for float32 buffers, round param and state back once". This header
 * holds the three pieces, in plain C99 integer arithmetic that the compiler vectorises:
 *
 *   - widening (bfloat16: a 16-bit shift; float16: exact, subnormals included);
 *   - rounding to nearest even, and stochastic rounding (round away from zero with
 *     probability equal to the discarded fraction of an ulp, subnormals included) with
 *     32 random bits per element from a counter-based stream keyed by
 *     (seed, step, buffer, element index): results never depend on how the work is split
 *     (threads, instruction sets, slices passed with an index offset);
 *   - lrcore_lowp_run: the tiled driver. It widens up to LRCORE_LOWP_TILE elements of each
 *     half-precision buffer into float32 tiles on the stack (float32 buffers are used in
 *     place), calls a float32 step on the tiles, and rounds param and states back. So every
 *     update rule and every loop variant of lrcore.h gets every layout with no second copy
 *     of its arithmetic.
 *
 * NaN stays NaN (quiet, sign and top payload bits kept), Inf stays Inf. lrcore/lowp.py is
 * the numpy twin of every function here; the tests compare them bit for bit.
 */
#ifndef LRCORE_LOWP_H
#define LRCORE_LOWP_H

#include <stdint.h>
#include <string.h>
#include "lrcore.h"

#if defined(__cplusplus)
extern "C" {
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

#ifndef LRCORE_LOWP_TILE
#define LRCORE_LOWP_TILE 512    /* elements per float32 tile: 5 tiles take 10 KiB of L1 */
#endif

#ifndef LRCORE_LOWP_AHEAD
#define LRCORE_LOWP_AHEAD 2048  /* bytes prefetched ahead per stream, on calls past LRCORE_PREFETCH_MIN_BYTES */
#endif

#if defined(__GNUC__) || defined(__clang__)
#define LRCORE__ALIGN64 __attribute__((aligned(64)))
#else
#define LRCORE__ALIGN64
#endif

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

/* Chris Wellons' lowbias32; element i's bits: lowbias32(low32(index) ^ key). */
LRCORE_INLINE uint32_t lrcore_lowbias32(uint32_t x)
{
    x ^= x >> 16; x *= 0x7FEB352Du;
    x ^= x >> 15; x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

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
        uint32_t key = lrcore_stream_key(seed, step, buffer, (uint32_t)(idx >> 32));
        const float *s = src + i;
        uint16_t *d = dst + i;
        if (et == LRCORE_ET_BF16)
            for (size_t j = 0; j < seg; j++)
                d[j] = lrcore__bf16_stochastic(lrcore__f32_bits(s[j]),
                                               lrcore_lowbias32((lo + (uint32_t)j) ^ key));
        else
            for (size_t j = 0; j < seg; j++)
                d[j] = lrcore__f16_stochastic(lrcore__f32_bits(s[j]),
                                              lrcore_lowbias32((lo + (uint32_t)j) ^ key));
        i += seg;
    }
}

/* ---- the tiled driver ------------------------------------------------------------------ */

/* A float32 step over n elements: param, grad, and up to 3 state buffers (NULL where the
 * call has none). ctx: the caller's (rule and hyperparameters). */
typedef void (*lrcore_f32_step_fn)(void *ctx, size_t n, float *param, const float *grad,
                                   float *state[3]);

LRCORE_INLINE size_t lrcore__et_size(int et) { return et == LRCORE_ET_F32 ? 4 : (et == LRCORE_ET_F64 ? 8 : 2); }

/* Widen (or point at) `m` elements of buffer `b` starting at element t0. With `pf`, a line
 * LRCORE_LOWP_AHEAD bytes ahead is requested for every line widened (n: the call's size, so
 * no request goes past the end); float32 buffers used in place get the same requests. */
LRCORE_INLINE float *lrcore__tile_in(int et, void *buf, size_t t0, size_t m, float *tile,
                                     int pf, size_t n, int write)
{
    const size_t es = lrcore__et_size(et), line = LRCORE_CACHE_LINE / es;
    const size_t ahead = LRCORE_LOWP_AHEAD / es;
    if (pf) {
        for (size_t l = t0; l < t0 + m && n - l > ahead; l += line) {
            if (write) LRCORE__PREFETCH_W((char *)buf + (l + ahead) * es);
            else LRCORE__PREFETCH_R((char *)buf + (l + ahead) * es);
        }
    }
    if (et == LRCORE_ET_F32) return (float *)buf + t0;
    if (et == LRCORE_ET_BF16) lrcore_widen_bf16(m, (const uint16_t *)buf + t0, tile);
    else lrcore_widen_f16(m, (const uint16_t *)buf + t0, tile);
    return tile;
}

/*
 * One low-precision step over elements [0, n) of the buffers: param (lp->param), grad
 * (lp->grad), states (lp->state; NULL where absent). Buffer ids of the random stream:
 * param 0, state k -> k + 1. Element i is element lp->index_offset + i of the whole buffer.
 */
static inline void lrcore_lowp_run(size_t n, void *param, const void *grad, void *state[3],
                                   const lrcore_lowp *lp, lrcore_f32_step_fn step_f32, void *ctx)
{
    float tp[LRCORE_LOWP_TILE] LRCORE__ALIGN64, tg[LRCORE_LOWP_TILE] LRCORE__ALIGN64;
    float ts[3][LRCORE_LOWP_TILE] LRCORE__ALIGN64;
    const int pf = n * lrcore__et_size(lp->param) > (size_t)LRCORE_PREFETCH_MIN_BYTES;
    for (size_t t0 = 0; t0 < n; t0 += LRCORE_LOWP_TILE) {
        size_t m = n - t0 < LRCORE_LOWP_TILE ? n - t0 : LRCORE_LOWP_TILE;
        float *p = lrcore__tile_in(lp->param, param, t0, m, tp, pf, n, 1);
        float *g = lrcore__tile_in(lp->grad, (void *)grad, t0, m, tg, pf, n, 0);
        float *s[3];
        for (int k = 0; k < 3; k++)
            s[k] = state[k] ? lrcore__tile_in(lp->state, state[k], t0, m, ts[k], pf, n, 1)
                            : (float *)0;
        step_f32(ctx, m, p, g, s);
        uint64_t index = lp->index_offset + t0;
        if (lp->param != LRCORE_ET_F32)
            lrcore_round_half(lp->param, m, p, (uint16_t *)param + t0, lp->rounding, lp->seed,
                              lp->step, 0u, index);
        if (lp->state != LRCORE_ET_F32)
            for (int k = 0; k < 3; k++)
                if (state[k])
                    lrcore_round_half(lp->state, m, s[k], (uint16_t *)state[k] + t0, lp->rounding,
                                      lp->seed, lp->step, (unsigned)k + 1u, index);
    }
}

#if defined(__cplusplus)
}
#endif

#endif /* LRCORE_LOWP_H */
