/*
 * lrcore.h -- in-place optimizer update kernels, float32 and float64.
 *
 * Design: self-contained C99, header-only (no Python.h; link with -lm for sqrt
 * and pow). Each kernel performs ONE optimizer step, numbered `step` (1 for the
 * first), over n contiguous elements, in place on `param` and the state buffers;
 * `grad` is only read. Step-dependent factors are computed once per call in
 * double; the loops are plain and branch-free, so the compiler vectorises them
 * for whatever instruction set the including file is built for.
 *
 * Layout of this header:
 *   - hyperparameter structs (one per update rule, each made from its field
 *     list LRCORE_HP_FIELDS_<rule>) and PyTorch's defaults;
 *   - the block/prefetch scaffold and the element helpers (element access by
 *     storage kind: plain float32/float64 loads and stores here), written once;
 *   - lrcore_body.h, included once per element type: each rule's loop (with its
 *     math in a comment above it) and the dispatch from the options that select
 *     a loop variant to a loop compiled with those options as constants;
 *   - the public kernels, lrcore_<rule>_f32 and lrcore_<rule>_f64.
 * lrcore_lowp.h includes lrcore_body.h again once per bfloat16/float16 layout (loads
 * that widen, stores that round) for the kernels lrcore_<rule>_lowp.
 * The rules themselves are described in lrcore/rules.py (the table) and
 * lrcore/reference.py (the numpy twin, which performs the same operations in
 * the same order, every scalar rounded once to the buffer's dtype).
 *
 * Floating-point contraction (a*b + c fused into one FMA) is turned off inside
 * this header: GCC through `#pragma GCC optimize("fp-contract=off")` (it holds
 * under -march=native, -mfma, -O3 and -ffp-contract=fast), clang through
 * `#pragma STDC FP_CONTRACT OFF` in every function (it holds under -march=native,
 * -mfma and -O3, and under clang's default -ffp-contract=on). With those flags an
 * embedding program gets the same bits as lrcore.kernels (tests/test_embedding.py).
 * NOT supported, because no setting inside a header can undo them:
 *   - -ffast-math / -Ofast (reassociation, reciprocal approximations, NaN checks
 *     removed) and -ffinite-math-only: they define __FAST_MATH__ or
 *     __FINITE_MATH_ONLY__ (gcc and clang), and this header stops with #error;
 *     so do GCC's -funsafe-math-optimizations, -freciprocal-math and (when in
 *     effect) -fassociative-math, which GCC announces as __RECIPROCAL_MATH__ /
 *     __ASSOCIATIVE_MATH__;
 *   - clang's -ffp-contract=fast, which fuses across statements regardless of
 *     any pragma (clang's documentation; measured with clang 14: after 100 steps
 *     over 1003 elements, 435 to 2842 param and state values per rule differed
 *     from lrcore.kernels), and clang's -fassociative-math, -freciprocal-math and
 *     -funsafe-math-optimizations: clang defines no macro a header could test
 *     for these. With clang keep its default -ffp-contract=on, or use =off.
 *
 * Callers initialise state buffers (zeros; Adagrad's state_sum may start at any
 * value), pass pointers that do not overlap and are aligned for their type, and
 * validate hyperparameters; lrcore's Python layer does all of that. From C:
 *
 *     #include "lrcore.h"   // cc -I$(python -c "import lrcore; print(lrcore.get_include())") ... -lm
 *     lrcore_adam_hp hp = lrcore_adam_defaults(1e-3, step);
 *     lrcore_adam_f32(n, param, grad, exp_avg, exp_avg_sq, NULL, &hp);
 *
 * and from Cython: `from lrcore.clrcore cimport lrcore_adam_f32, lrcore_adam_hp`.
 *
 * `grad_scale` (every kernel) multiplies the gradient before anything else:
 * g = grad * grad_scale. It is how gradient clipping is applied without a write
 * pass over grad. Use 1.0 for a plain step; maximize multiplies it by -1.
 */
#ifndef LRCORE_H
#define LRCORE_H

/* Value-changing math flags the compiler announces (see the top of the file). */
#if defined(__FAST_MATH__) || (defined(__FINITE_MATH_ONLY__) && __FINITE_MATH_ONLY__) || \
    defined(__ASSOCIATIVE_MATH__) || defined(__RECIPROCAL_MATH__)
#error "lrcore.h cannot give lrcore's results under -ffast-math, -Ofast, -ffinite-math-only, -fassociative-math, -freciprocal-math or -funsafe-math-optimizations: compile the file that includes it without them"
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define LRCORE_ABI_VERSION 2

#if defined(__GNUC__) || defined(__clang__)
#define LRCORE_INLINE static inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define LRCORE_INLINE static __forceinline
#else
#define LRCORE_INLINE static inline
#endif

#if defined(__cplusplus)
#define LRCORE_RESTRICT __restrict
extern "C" {
#else
#define LRCORE_RESTRICT restrict
#endif

/* No contraction into FMA in any function below (see the top of the file). GCC has no
 * STDC FP_CONTRACT; its optimize pragma applies to every function up to pop_options,
 * so the always-inline loops and their callers share one set of options. */
#if defined(__clang__)
#define LRCORE__FP_STRICT _Pragma("STDC FP_CONTRACT OFF")
#else
#define LRCORE__FP_STRICT
#endif
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif   /* MSVC contracts only under /fp:fast or /fp:contract: do not use those */

/*
 * Software prefetch. Calls over more than LRCORE_PREFETCH_MIN_BYTES per stream run
 * LRCORE_BLOCK_LINES cache lines at a time and ask for the lines LRCORE_PREFETCH_AHEAD
 * bytes ahead in every stream, so the memory system stays busy while the core is
 * occupied by square roots and divisions (on one core this is worth about 10% of the
 * bandwidth for Adam on large buffers). Smaller calls (data that caches hold) run as
 * one plain loop. A hint only: no effect on results.
 */
#ifndef LRCORE_CACHE_LINE
#define LRCORE_CACHE_LINE 64
#endif
#ifndef LRCORE_BLOCK_LINES
#define LRCORE_BLOCK_LINES 4
#endif
#ifndef LRCORE_PREFETCH_MIN_BYTES
#define LRCORE_PREFETCH_MIN_BYTES (4 << 20)   /* per stream; smaller calls run one plain loop */
#endif
#ifndef LRCORE_PREFETCH_AHEAD
#define LRCORE_PREFETCH_AHEAD 1024
#endif
#if defined(__GNUC__) || defined(__clang__)
#define LRCORE__PREFETCH_R(addr) __builtin_prefetch((addr), 0, 3)
#define LRCORE__PREFETCH_W(addr) __builtin_prefetch((addr), 1, 3)
#else
#define LRCORE__PREFETCH_R(addr) ((void)0)
#define LRCORE__PREFETCH_W(addr) ((void)0)
#endif

/* ------------------------------------------------------------------------ */
/* Hyperparameters, in the order of lrcore/rules.py. `step` is 1 for the     */
/* first step. Flags are 0 or 1.                                             */
/*                                                                          */
/* Each rule's fields are listed ONCE, in LRCORE_HP_FIELDS_<rule>(X), one    */
/* X(type, name) per field; the struct lrcore_<rule>_hp right below it is    */
/* made from that list, and so are the runtime's field descriptors (name,   */
/* offset, type: csrc/jobs.h), by which Python packs hyperparameters by name. */
/* Types: double, int64_t or int.                                           */
/* ------------------------------------------------------------------------ */

#define LRCORE__MEMBER(type, name) type name;

#define LRCORE_HP_FIELDS_sgd(X) \
    X(double, lr) X(double, momentum) X(double, dampening) X(double, weight_decay) \
    X(double, grad_scale) X(int64_t, step) X(int, nesterov) X(int, maximize) \
    X(int, init_buffer)   /* 1: momentum_buffer = g (torch's first step), not a running mean */
typedef struct { LRCORE_HP_FIELDS_sgd(LRCORE__MEMBER) } lrcore_sgd_hp;

#define LRCORE_HP_FIELDS_adam(X) \
    X(double, lr) X(double, beta1) X(double, beta2) X(double, eps) X(double, weight_decay) \
    X(double, grad_scale) X(int64_t, step) X(int, decoupled_weight_decay) X(int, maximize)
typedef struct { LRCORE_HP_FIELDS_adam(LRCORE__MEMBER) } lrcore_adam_hp;

#define LRCORE_HP_FIELDS_adagrad(X) \
    X(double, lr) X(double, lr_decay) X(double, weight_decay) X(double, eps) \
    X(double, grad_scale) X(int64_t, step) X(int, maximize)
typedef struct { LRCORE_HP_FIELDS_adagrad(LRCORE__MEMBER) } lrcore_adagrad_hp;

#define LRCORE_HP_FIELDS_rmsprop(X) \
    X(double, lr) X(double, alpha) X(double, eps) X(double, weight_decay) X(double, momentum) \
    X(double, grad_scale) X(int64_t, step) X(int, maximize)
typedef struct { LRCORE_HP_FIELDS_rmsprop(LRCORE__MEMBER) } lrcore_rmsprop_hp;

#define LRCORE_HP_FIELDS_adadelta(X) \
    X(double, lr) X(double, rho) X(double, eps) X(double, weight_decay) \
    X(double, grad_scale) X(int64_t, step) X(int, maximize)
typedef struct { LRCORE_HP_FIELDS_adadelta(LRCORE__MEMBER) } lrcore_adadelta_hp;

#define LRCORE_HP_FIELDS_adamax(X) \
    X(double, lr) X(double, beta1) X(double, beta2) X(double, eps) X(double, weight_decay) \
    X(double, grad_scale) X(int64_t, step) X(int, maximize)
typedef struct { LRCORE_HP_FIELDS_adamax(LRCORE__MEMBER) } lrcore_adamax_hp;

/* mu_product: mu_1 * ... * mu_step, this step's mu included (torch's state: a float32
 * running product, see lrcore_nadam_defaults). */
#define LRCORE_HP_FIELDS_nadam(X) \
    X(double, lr) X(double, beta1) X(double, beta2) X(double, eps) X(double, weight_decay) \
    X(double, momentum_decay) X(double, mu_product) X(double, grad_scale) \
    X(int64_t, step) X(int, decoupled_weight_decay) X(int, maximize)
typedef struct { LRCORE_HP_FIELDS_nadam(LRCORE__MEMBER) } lrcore_nadam_hp;

#define LRCORE_HP_FIELDS_radam(X) \
    X(double, lr) X(double, beta1) X(double, beta2) X(double, eps) X(double, weight_decay) \
    X(double, grad_scale) X(int64_t, step) X(int, decoupled_weight_decay) X(int, maximize)
typedef struct { LRCORE_HP_FIELDS_radam(LRCORE__MEMBER) } lrcore_radam_hp;

/* Lion's weight decay is decoupled. */
#define LRCORE_HP_FIELDS_lion(X) \
    X(double, lr) X(double, beta1) X(double, beta2) X(double, weight_decay) \
    X(double, grad_scale) X(int64_t, step) X(int, maximize)
typedef struct { LRCORE_HP_FIELDS_lion(LRCORE__MEMBER) } lrcore_lion_hp;

#undef LRCORE__MEMBER

/* Every rule, with its number of state buffers: the runtime derives its tables from this. */
#define LRCORE_RULES(X) \
    X(sgd, 1) X(adam, 3) X(adagrad, 1) X(rmsprop, 3) X(adadelta, 2) \
    X(adamax, 2) X(nadam, 2) X(radam, 2) X(lion, 1)

/* NAdam's momentum coefficient at step t: mu_t = beta1 * (1 - 0.5 * 0.96**(t * psi)). */
static inline double lrcore_nadam_mu(double beta1, double momentum_decay, int64_t t) {
    LRCORE__FP_STRICT
    return beta1 * (1.0 - 0.5 * pow(0.96, (double)t * momentum_decay));
}

/* PyTorch's defaults, for C callers. */
static inline lrcore_sgd_hp lrcore_sgd_defaults(double lr, int64_t step) {
    lrcore_sgd_hp hp = {lr, 0.0, 0.0, 0.0, 1.0, step, 0, 0, step <= 1};
    return hp;
}
static inline lrcore_adam_hp lrcore_adam_defaults(double lr, int64_t step) {
    lrcore_adam_hp hp = {lr, 0.9, 0.999, 1e-8, 0.0, 1.0, step, 0, 0};
    return hp;
}
static inline lrcore_adagrad_hp lrcore_adagrad_defaults(double lr, int64_t step) {
    lrcore_adagrad_hp hp = {lr, 0.0, 0.0, 1e-10, 1.0, step, 0};
    return hp;
}
static inline lrcore_rmsprop_hp lrcore_rmsprop_defaults(double lr, int64_t step) {
    lrcore_rmsprop_hp hp = {lr, 0.99, 1e-8, 0.0, 0.0, 1.0, step, 0};
    return hp;
}
static inline lrcore_adadelta_hp lrcore_adadelta_defaults(double lr, int64_t step) {
    lrcore_adadelta_hp hp = {lr, 0.9, 1e-6, 0.0, 1.0, step, 0};
    return hp;
}
static inline lrcore_adamax_hp lrcore_adamax_defaults(double lr, int64_t step) {
    lrcore_adamax_hp hp = {lr, 0.9, 0.999, 1e-8, 0.0, 1.0, step, 0};
    return hp;
}
/* mu_product as torch.optim.NAdam keeps it: a float32 running product,
 *     mu_product = (float)mu_product * (float)lrcore_nadam_mu(beta1, momentum_decay, t)
 * formed here from scratch, O(step); a caller that steps repeatedly keeps it instead. */
static inline lrcore_nadam_hp lrcore_nadam_defaults(double lr, int64_t step) {
    lrcore_nadam_hp hp = {lr, 0.9, 0.999, 1e-8, 0.0, 4e-3, 1.0, 1.0, step, 0, 0};
    float prod = 1.0f;
    for (int64_t t = 1; t <= step && prod != 0.0f; t++)
        prod = prod * (float)lrcore_nadam_mu(hp.beta1, hp.momentum_decay, t);
    hp.mu_product = prod;
    return hp;
}
static inline lrcore_radam_hp lrcore_radam_defaults(double lr, int64_t step) {
    lrcore_radam_hp hp = {lr, 0.9, 0.999, 1e-8, 0.0, 1.0, step, 0, 0};
    return hp;
}
static inline lrcore_lion_hp lrcore_lion_defaults(double lr, int64_t step) {
    lrcore_lion_hp hp = {lr, 0.9, 0.99, 0.0, 1.0, step, 0};
    return hp;
}

/* ------------------------------------------------------------------------ */
/* The scaffold shared by every loop, written once.                          */
/* ------------------------------------------------------------------------ */

/* g = grad * s, with s = grad_scale, negated for maximize (exact: x * 1 == x). */
static inline double lrcore__grad_sign_scale(double grad_scale, int maximize) {
    return maximize ? -grad_scale : grad_scale;
}

/* The blocked loop, written once. Every loop runs
 *     for (size_t b0 = 0, b1; b0 < n; b0 = b1) {
 *         b1 = lrcore__block(b0, n, sizeof(T), read stream, read-write streams...);
 *         for (size_t i = b0; i < b1; i++) ...
 * lrcore__block returns the end of the block that starts at b0: the whole call when it
 * is cache-sized (one plain loop, no hints), else LRCORE_BLOCK_LINES cache lines, after
 * prefetching the lines LRCORE_PREFETCH_AHEAD bytes ahead in the read stream r and the
 * read-write streams w0..w3 (NULL: no such stream). */
LRCORE_INLINE size_t lrcore__block(size_t b0, size_t n, size_t elsize,
    const void *r, void *w0, void *w1, void *w2, void *w3)
{
    const size_t line = LRCORE_CACHE_LINE / elsize, ahead = LRCORE_PREFETCH_AHEAD / elsize;
    const size_t block = line * LRCORE_BLOCK_LINES;
    if (n * elsize <= (size_t)LRCORE_PREFETCH_MIN_BYTES) return n;
    const size_t b1 = n - b0 > block ? b0 + block : n;
    for (size_t l = b0; l < b1 && n - l > ahead; l += line) {
        const size_t off = (l + ahead) * elsize;
        if (w0) LRCORE__PREFETCH_W((char *)w0 + off);
        LRCORE__PREFETCH_R((const char *)r + off);
        if (w1) LRCORE__PREFETCH_W((char *)w1 + off);
        if (w2) LRCORE__PREFETCH_W((char *)w2 + off);
        if (w3) LRCORE__PREFETCH_W((char *)w3 + off);
    }
    return b1;
}

/* lrcore__block for loops whose streams have different element sizes (lrcore_lowp.h's
 * layouts): ps, gs, ss are the sizes of param (stream w0), grad (r) and the states
 * (w1..w3), and a block is `block` elements. Every stream asks for the lines that hold
 * the elements LRCORE_PREFETCH_AHEAD bytes of the narrowest stream ahead; calls whose
 * widest stream is cache-sized run as one plain loop. */
LRCORE_INLINE size_t lrcore__block_mixed(size_t b0, size_t n, size_t ps, size_t gs, size_t ss,
    size_t block, const void *r, void *w0, void *w1, void *w2, void *w3)
{
    const size_t lo = ps < gs ? (ps < ss ? ps : ss) : (gs < ss ? gs : ss);
    const size_t hi = ps > gs ? (ps > ss ? ps : ss) : (gs > ss ? gs : ss);
    const size_t line = LRCORE_CACHE_LINE / lo, ahead = LRCORE_PREFETCH_AHEAD / lo;
    if (n * hi <= (size_t)LRCORE_PREFETCH_MIN_BYTES) return n;
    const size_t b1 = n - b0 > block ? b0 + block : n;
    for (size_t l = b0; l < b1 && n - l > ahead + line; l += line) {
        const size_t e = l + ahead;   /* elements [e, e + line) of every stream */
        for (size_t o = 0; o < ps * line; o += LRCORE_CACHE_LINE)
            LRCORE__PREFETCH_W((char *)w0 + e * ps + o);
        for (size_t o = 0; o < gs * line; o += LRCORE_CACHE_LINE)
            LRCORE__PREFETCH_R((const char *)r + e * gs + o);
        for (size_t o = 0; o < ss * line; o += LRCORE_CACHE_LINE) {
            if (w1) LRCORE__PREFETCH_W((char *)w1 + e * ss + o);
            if (w2) LRCORE__PREFETCH_W((char *)w2 + e * ss + o);
            if (w3) LRCORE__PREFETCH_W((char *)w3 + e * ss + o);
        }
    }
    return b1;
}

/* The block function of lrcore_body.h's loops (BLOCK) unless the includer names another
 * (LRCORE__BLOCK_FN: lrcore_lowp.h's lrcore__block_lowp). Equal sizes: exactly
 * lrcore__block. Otherwise a block is LRCORE_BLOCK_LINES lines of the narrowest stream. */
LRCORE_INLINE size_t lrcore__block_x(size_t b0, size_t n, size_t ps, size_t gs, size_t ss,
    const void *r, void *w0, void *w1, void *w2, void *w3)
{
    if (ps == gs && gs == ss) return lrcore__block(b0, n, ps, r, w0, w1, w2, w3);
    const size_t lo = ps < gs ? (ps < ss ? ps : ss) : (gs < ss ? gs : ss);
    return lrcore__block_mixed(b0, n, ps, gs, ss, LRCORE_CACHE_LINE / lo * LRCORE_BLOCK_LINES,
                               r, w0, w1, w2, w3);
}

/* Element access of the loops. A loop reads each buffer through lrcore__ld_<kind> and
 * writes it through lrcore__st_<kind>, where <kind> names how the buffer is stored:
 * here f32 and f64 (plain loads and stores); lrcore_lowp.h adds bfloat16 and float16
 * kinds, which widen on load and round on store. A store receives the call's random
 * stream and the buffer's number in it (param 0, state k -> k + 1), which only the
 * stochastic-rounding kinds use: element i draws lrcore_lowbias32((lo + i) ^ key[buffer]),
 * rotated by 16 for an odd buffer, whose key is its even neighbour's (lrcore_lowp.h). */
typedef struct { uint32_t lo, key[4]; } lrcore__stream;
typedef float lrcore__f32_t;
typedef double lrcore__f64_t;
LRCORE_INLINE float lrcore__ld_f32(const float *a, size_t i) { return a[i]; }
LRCORE_INLINE double lrcore__ld_f64(const double *a, size_t i) { return a[i]; }
LRCORE_INLINE void lrcore__st_f32(float *a, size_t i, float x, const lrcore__stream *st,
                                  unsigned buffer)
{ (void)st; (void)buffer; a[i] = x; }
LRCORE_INLINE void lrcore__st_f64(double *a, size_t i, double x, const lrcore__stream *st,
                                  unsigned buffer)
{ (void)st; (void)buffer; a[i] = x; }
/* The stream of a call that rounds nothing (float32 and float64 buffers). */
LRCORE_INLINE lrcore__stream lrcore__no_stream(void)
{ lrcore__stream s = {0, {0, 0, 0, 0}}; return s; }

/*
 * Variant dispatch. A loop takes its variant-selecting options as one bit set `variant`
 * (a compile-time constant once inlined), so each variant is its own branch-free loop.
 * LRCORE__DISPATCH(bits, variant, loop, args...) is a switch with one case per value of
 * `bits` option bits, each calling loop(args..., value).
 */
#define LRCORE__CASE(loop, v, ...) case (v): loop(__VA_ARGS__, (v)); break;
#define LRCORE__VARIANTS_1(loop, v, ...) \
    LRCORE__CASE(loop, v, __VA_ARGS__) LRCORE__CASE(loop, (v) + 1, __VA_ARGS__)
#define LRCORE__VARIANTS_2(loop, v, ...) \
    LRCORE__VARIANTS_1(loop, v, __VA_ARGS__) LRCORE__VARIANTS_1(loop, (v) + 2, __VA_ARGS__)
#define LRCORE__VARIANTS_3(loop, v, ...) \
    LRCORE__VARIANTS_2(loop, v, __VA_ARGS__) LRCORE__VARIANTS_2(loop, (v) + 4, __VA_ARGS__)
#define LRCORE__VARIANTS_4(loop, v, ...) \
    LRCORE__VARIANTS_3(loop, v, __VA_ARGS__) LRCORE__VARIANTS_3(loop, (v) + 8, __VA_ARGS__)
#define LRCORE__DISPATCH(bits, variant, loop, ...) \
    switch (variant) { LRCORE__VARIANTS_##bits(loop, 0u, __VA_ARGS__) default: break; }

/*
 * LRCORE__DISPATCH_FEW(bits, variant, sa, sb, f1, f2, loop, args...): fewer loops, for the
 * bfloat16/float16 layouts (lrcore_lowp.h; eight of them, each a copy of every loop). The
 * variants f1 and f2 (the common ones) get a loop compiled for them, as above; any other
 * runs a loop compiled for its value of the structural bits sa and sb (options that add or
 * remove a buffer: 0 where a rule has none), with the remaining bits tested at run time
 * (the loops are written so that such a test becomes a select: same arithmetic, so the
 * same bits). lrcore.h's own float32/float64 loops (LRCORE__FEW_VARIANTS undefined) get
 * LRCORE__DISPATCH: every variant its own loop.
 */
#define LRCORE__DISPATCH_FEW_(variant, sa, sb, f1, f2, loop, ...) \
    if ((variant) == (f1)) loop(__VA_ARGS__, (f1)); \
    else if ((variant) == (f2)) loop(__VA_ARGS__, (f2)); \
    else if (((variant) & (sa)) && ((variant) & (sb))) \
        loop(__VA_ARGS__, (variant) | (sa) | (sb)); \
    else if ((variant) & (sa)) loop(__VA_ARGS__, ((variant) | (sa)) & ~(unsigned)(sb)); \
    else if ((variant) & (sb)) loop(__VA_ARGS__, ((variant) | (sb)) & ~(unsigned)(sa)); \
    else loop(__VA_ARGS__, (variant) & ~(unsigned)((sa) | (sb)));

#define LRCORE__CAT2(a, b) a##b
#define LRCORE__CAT(a, b) LRCORE__CAT2(a, b)

/* The loops, once per element type (see lrcore_body.h). */
#define LRCORE__T float
#define LRCORE__SUFFIX f32
#define LRCORE__SQRT sqrtf
#define LRCORE__FABS fabsf
#define LRCORE__COPYSIGN copysignf
/* lrcore_body.h's quot_c (Adam's division by a per-call constant, as a multiply and two
 * FMAs; the same bits): float32 with AVX-512, where it measured 15% faster in cache (Zen 4).
 * Not with AVX2 alone (no gain measured), nor in the bfloat16/float16 layouts and the 8-bit
 * fused pass, whose vector ALUs are the busier units (slower measured). */
#if defined(__FMA__) && defined(__AVX512F__)
#define LRCORE__FMA fmaf
#endif
#define LRCORE__P f32
#define LRCORE__G f32
#define LRCORE__S f32
#include "lrcore_body.h"

#define LRCORE__T double
#define LRCORE__SUFFIX f64
#define LRCORE__SQRT sqrt
#define LRCORE__FABS fabs
#define LRCORE__COPYSIGN copysign
#define LRCORE__P f64
#define LRCORE__G f64
#define LRCORE__S f64
#include "lrcore_body.h"

/* ------------------------------------------------------------------------ */
/* The public kernels. State buffers in kernel order; optional ones NULL     */
/* where absent (the equations are above each loop in lrcore_body.h).        */
/* ------------------------------------------------------------------------ */

/* SGD: momentum_buffer is used when momentum > 0. */
static inline void lrcore_sgd_f32(size_t n, float *LRCORE_RESTRICT param,
    const float *LRCORE_RESTRICT grad, float *LRCORE_RESTRICT momentum_buffer,
    const lrcore_sgd_hp *hp)
{ lrcore__sgd_f32(n, param, grad, momentum_buffer, hp, lrcore__no_stream()); }
static inline void lrcore_sgd_f64(size_t n, double *LRCORE_RESTRICT param,
    const double *LRCORE_RESTRICT grad, double *LRCORE_RESTRICT momentum_buffer,
    const lrcore_sgd_hp *hp)
{ lrcore__sgd_f64(n, param, grad, momentum_buffer, hp, lrcore__no_stream()); }

/* Adam, AdamW (decoupled_weight_decay), AMSGrad (max_exp_avg_sq not NULL). */
static inline void lrcore_adam_f32(size_t n, float *LRCORE_RESTRICT param,
    const float *LRCORE_RESTRICT grad, float *LRCORE_RESTRICT exp_avg,
    float *LRCORE_RESTRICT exp_avg_sq, float *LRCORE_RESTRICT max_exp_avg_sq,
    const lrcore_adam_hp *hp)
{ lrcore__adam_f32(n, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, hp, lrcore__no_stream()); }
static inline void lrcore_adam_f64(size_t n, double *LRCORE_RESTRICT param,
    const double *LRCORE_RESTRICT grad, double *LRCORE_RESTRICT exp_avg,
    double *LRCORE_RESTRICT exp_avg_sq, double *LRCORE_RESTRICT max_exp_avg_sq,
    const lrcore_adam_hp *hp)
{ lrcore__adam_f64(n, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, hp, lrcore__no_stream()); }

/* Adagrad. */
static inline void lrcore_adagrad_f32(size_t n, float *LRCORE_RESTRICT param,
    const float *LRCORE_RESTRICT grad, float *LRCORE_RESTRICT state_sum,
    const lrcore_adagrad_hp *hp)
{ lrcore__adagrad_f32(n, param, grad, state_sum, hp, lrcore__no_stream()); }
static inline void lrcore_adagrad_f64(size_t n, double *LRCORE_RESTRICT param,
    const double *LRCORE_RESTRICT grad, double *LRCORE_RESTRICT state_sum,
    const lrcore_adagrad_hp *hp)
{ lrcore__adagrad_f64(n, param, grad, state_sum, hp, lrcore__no_stream()); }

/* RMSprop: momentum_buffer used when momentum > 0; grad_avg NULL unless centered. */
static inline void lrcore_rmsprop_f32(size_t n, float *LRCORE_RESTRICT param,
    const float *LRCORE_RESTRICT grad, float *LRCORE_RESTRICT square_avg,
    float *LRCORE_RESTRICT momentum_buffer, float *LRCORE_RESTRICT grad_avg,
    const lrcore_rmsprop_hp *hp)
{ lrcore__rmsprop_f32(n, param, grad, square_avg, momentum_buffer, grad_avg, hp, lrcore__no_stream()); }
static inline void lrcore_rmsprop_f64(size_t n, double *LRCORE_RESTRICT param,
    const double *LRCORE_RESTRICT grad, double *LRCORE_RESTRICT square_avg,
    double *LRCORE_RESTRICT momentum_buffer, double *LRCORE_RESTRICT grad_avg,
    const lrcore_rmsprop_hp *hp)
{ lrcore__rmsprop_f64(n, param, grad, square_avg, momentum_buffer, grad_avg, hp, lrcore__no_stream()); }

/* Adadelta. */
static inline void lrcore_adadelta_f32(size_t n, float *LRCORE_RESTRICT param,
    const float *LRCORE_RESTRICT grad, float *LRCORE_RESTRICT square_avg,
    float *LRCORE_RESTRICT acc_delta, const lrcore_adadelta_hp *hp)
{ lrcore__adadelta_f32(n, param, grad, square_avg, acc_delta, hp, lrcore__no_stream()); }
static inline void lrcore_adadelta_f64(size_t n, double *LRCORE_RESTRICT param,
    const double *LRCORE_RESTRICT grad, double *LRCORE_RESTRICT square_avg,
    double *LRCORE_RESTRICT acc_delta, const lrcore_adadelta_hp *hp)
{ lrcore__adadelta_f64(n, param, grad, square_avg, acc_delta, hp, lrcore__no_stream()); }

/* Adamax. */
static inline void lrcore_adamax_f32(size_t n, float *LRCORE_RESTRICT param,
    const float *LRCORE_RESTRICT grad, float *LRCORE_RESTRICT exp_avg,
    float *LRCORE_RESTRICT exp_inf, const lrcore_adamax_hp *hp)
{ lrcore__adamax_f32(n, param, grad, exp_avg, exp_inf, hp, lrcore__no_stream()); }
static inline void lrcore_adamax_f64(size_t n, double *LRCORE_RESTRICT param,
    const double *LRCORE_RESTRICT grad, double *LRCORE_RESTRICT exp_avg,
    double *LRCORE_RESTRICT exp_inf, const lrcore_adamax_hp *hp)
{ lrcore__adamax_f64(n, param, grad, exp_avg, exp_inf, hp, lrcore__no_stream()); }

/* NAdam, NAdamW (decoupled_weight_decay). */
static inline void lrcore_nadam_f32(size_t n, float *LRCORE_RESTRICT param,
    const float *LRCORE_RESTRICT grad, float *LRCORE_RESTRICT exp_avg,
    float *LRCORE_RESTRICT exp_avg_sq, const lrcore_nadam_hp *hp)
{ lrcore__nadam_f32(n, param, grad, exp_avg, exp_avg_sq, hp, lrcore__no_stream()); }
static inline void lrcore_nadam_f64(size_t n, double *LRCORE_RESTRICT param,
    const double *LRCORE_RESTRICT grad, double *LRCORE_RESTRICT exp_avg,
    double *LRCORE_RESTRICT exp_avg_sq, const lrcore_nadam_hp *hp)
{ lrcore__nadam_f64(n, param, grad, exp_avg, exp_avg_sq, hp, lrcore__no_stream()); }

/* RAdam. */
static inline void lrcore_radam_f32(size_t n, float *LRCORE_RESTRICT param,
    const float *LRCORE_RESTRICT grad, float *LRCORE_RESTRICT exp_avg,
    float *LRCORE_RESTRICT exp_avg_sq, const lrcore_radam_hp *hp)
{ lrcore__radam_f32(n, param, grad, exp_avg, exp_avg_sq, hp, lrcore__no_stream()); }
static inline void lrcore_radam_f64(size_t n, double *LRCORE_RESTRICT param,
    const double *LRCORE_RESTRICT grad, double *LRCORE_RESTRICT exp_avg,
    double *LRCORE_RESTRICT exp_avg_sq, const lrcore_radam_hp *hp)
{ lrcore__radam_f64(n, param, grad, exp_avg, exp_avg_sq, hp, lrcore__no_stream()); }

/* Lion. */
static inline void lrcore_lion_f32(size_t n, float *LRCORE_RESTRICT param,
    const float *LRCORE_RESTRICT grad, float *LRCORE_RESTRICT exp_avg, const lrcore_lion_hp *hp)
{ lrcore__lion_f32(n, param, grad, exp_avg, hp, lrcore__no_stream()); }
static inline void lrcore_lion_f64(size_t n, double *LRCORE_RESTRICT param,
    const double *LRCORE_RESTRICT grad, double *LRCORE_RESTRICT exp_avg, const lrcore_lion_hp *hp)
{ lrcore__lion_f64(n, param, grad, exp_avg, hp, lrcore__no_stream()); }

/* Sum of squares of x in double, for gradient clipping by global norm (see lrcore_body.h). */
static inline double lrcore_sum_squares_f32(size_t n, const float *LRCORE_RESTRICT x)
{ return lrcore__sum_squares_f32(n, x); }
static inline double lrcore_sum_squares_f64(size_t n, const double *LRCORE_RESTRICT x)
{ return lrcore__sum_squares_f64(n, x); }

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#if defined(__cplusplus)
}
#endif

#endif /* LRCORE_H */
