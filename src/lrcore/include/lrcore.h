/*
 * lrcore.h -- in-place optimizer update kernels, float32 and float64.
 *
 * Design: self-contained C99, header-only (no Python.h, no libraries). Each
 * kernel performs ONE optimizer step, numbered `step` (1 for the first), over n
 * contiguous elements, in place on `param` and the state buffers; `grad` is only
 * read. Step-dependent factors are computed once per call in double; the loops
 * are plain, branch-free and written once for both dtypes, so the compiler
 * vectorises them for whatever instruction set the including file is built for.
 * The arithmetic is that of PyTorch 2.x's single-tensor (foreach=False)
 * implementation, operation for operation, with every scalar rounded once to
 * the buffer's dtype. The numpy reference (lrcore/reference.py) performs the
 * same operations in the same order.
 *
 * Callers zero-initialise state buffers (Adagrad's state_sum may start at any
 * value), pass pointers that do not overlap, and validate hyperparameters;
 * lrcore's Python layer does all of that. Embedding from C:
 *
 *     #include "lrcore.h"            // cc -I$(python -c "import lrcore; print(lrcore.get_include())")
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

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define LRCORE_ABI_VERSION 1

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

/*
 * Software prefetch. The loops run LRCORE_BLOCK_LINES cache lines at a time and ask for the lines
 * LRCORE_PREFETCH_AHEAD bytes ahead in every stream, so the memory system stays busy
 * while the core is occupied by square roots and divisions (on one core this is worth
 * about 10% of the bandwidth for Adam on large buffers). Calls over at most
 * LRCORE_PREFETCH_MIN_BYTES per stream (data that caches hold) run as one plain loop.
 * A hint only: no effect on results.
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
/* Hyperparameters. `step` is 1 for the first step.                          */
/* ------------------------------------------------------------------------ */

typedef struct {
    double lr, momentum, dampening, weight_decay, grad_scale;
    int64_t step;
    int nesterov, maximize;
} lrcore_sgd_hp;

typedef struct {
    double lr, beta1, beta2, eps, weight_decay, grad_scale;
    int64_t step;
    int decoupled_weight_decay, maximize;
} lrcore_adam_hp;

typedef struct {
    double lr, lr_decay, weight_decay, eps, grad_scale;
    int64_t step;
    int maximize;
} lrcore_adagrad_hp;

typedef struct {
    double lr, alpha, eps, weight_decay, momentum, grad_scale;
    int64_t step;
    int maximize;
} lrcore_rmsprop_hp;

typedef struct {
    double lr, rho, eps, weight_decay, grad_scale;
    int64_t step;
    int maximize;
} lrcore_adadelta_hp;

/* PyTorch's defaults, for C callers. */
static inline lrcore_sgd_hp lrcore_sgd_defaults(double lr, int64_t step) {
    lrcore_sgd_hp hp = {lr, 0.0, 0.0, 0.0, 1.0, step, 0, 0};
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

/* g = grad * s, with s = grad_scale, negated for maximize (exact: x * 1 == x). */
static inline double lrcore__grad_sign_scale(double grad_scale, int maximize) {
    return maximize ? -grad_scale : grad_scale;
}

/*
 * The loops. LRCORE__DEFINE_KERNELS(T, SUFFIX, SQRT) instantiates every kernel
 * for one element type. Options that change which operations run (weight decay
 * on or off, momentum phase, AMSGrad, ...) are compile-time constants of an
 * always-inlined body, so each variant is its own branch-free loop.
 */
#define LRCORE__DEFINE_KERNELS(T, SUFFIX, SQRT)                                              \
                                                                                             \
/* SGD (torch.optim.SGD):                                                                    \
 *   g = s * grad                                  s = grad_scale, negated if maximize       \
 *   g = g + weight_decay * param                  if weight_decay != 0                      \
 *   if momentum != 0:                                                                       \
 *     buf = g                                     at step 1                                 \
 *     buf = momentum * buf + (1 - dampening) * g  after step 1                              \
 *     g = g + momentum * buf                      if nesterov                               \
 *     g = buf                                     otherwise                                 \
 *   param = param - lr * g                                                                  \
 */                                                                                          \
LRCORE_INLINE void lrcore__sgd_body_##SUFFIX(                                                \
    size_t n, T *LRCORE_RESTRICT p, const T *LRCORE_RESTRICT gr, T *LRCORE_RESTRICT buf,     \
    T s, T wd, T mom, T one_minus_damp, T neg_lr,                                            \
    const int has_wd, const int phase, const int nesterov)                                   \
{                                                                                            \
    /* phase: 0 no momentum, 1 first step (buf = g), 2 later steps */                        \
    const size_t line = LRCORE_CACHE_LINE / sizeof(T);                                       \
    const size_t ahead = LRCORE_PREFETCH_AHEAD / sizeof(T);                                  \
    const int pf = n * sizeof(T) > (size_t)LRCORE_PREFETCH_MIN_BYTES; /* else one block */   \
    const size_t block = pf ? line * LRCORE_BLOCK_LINES : n;                                 \
    for (size_t b0 = 0; b0 < n; b0 += block) {  /* LRCORE_BLOCK_LINES lines per block */     \
        const size_t b1 = n - b0 > block ? b0 + block : n;                                   \
        for (size_t l = b0; pf && l < b1 && n - l > ahead; l += line) {                      \
            LRCORE__PREFETCH_W(p + l + ahead);                                              \
            LRCORE__PREFETCH_R(gr + l + ahead);                                             \
            if (phase != 0) LRCORE__PREFETCH_W(buf + l + ahead);                            \
        }                                                                                    \
        for (size_t i = b0; i < b1; i++) {                                                   \
            T g = gr[i] * s;                                                                 \
            if (has_wd) g = g + wd * p[i];                                                   \
            if (phase == 1) { buf[i] = g; }                                                  \
            if (phase == 2) { buf[i] = buf[i] * mom + one_minus_damp * g; }                  \
            if (phase != 0) { g = nesterov ? g + mom * buf[i] : buf[i]; }                    \
            p[i] = p[i] + neg_lr * g;                                                        \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
                                                                                             \
static inline void lrcore_sgd_##SUFFIX(size_t n, T *LRCORE_RESTRICT param,                  \
    const T *LRCORE_RESTRICT grad, T *LRCORE_RESTRICT momentum_buffer,                       \
    const lrcore_sgd_hp *hp)                                                                 \
{                                                                                            \
    const T s = (T)lrcore__grad_sign_scale(hp->grad_scale, hp->maximize);                    \
    const T wd = (T)hp->weight_decay, mom = (T)hp->momentum;                                 \
    const T omd = (T)(1.0 - hp->dampening), neg_lr = (T)(-hp->lr);                           \
    const int has_wd = hp->weight_decay != 0.0;                                              \
    const int phase = hp->momentum == 0.0 ? 0 : (hp->step <= 1 ? 1 : 2);                     \
    const int nest = hp->nesterov != 0;                                                      \
    if (has_wd) {                                                                            \
        if (phase == 0) lrcore__sgd_body_##SUFFIX(n, param, grad, momentum_buffer, s, wd, mom, omd, neg_lr, 1, 0, 0); \
        else if (phase == 1 && nest) lrcore__sgd_body_##SUFFIX(n, param, grad, momentum_buffer, s, wd, mom, omd, neg_lr, 1, 1, 1); \
        else if (phase == 1) lrcore__sgd_body_##SUFFIX(n, param, grad, momentum_buffer, s, wd, mom, omd, neg_lr, 1, 1, 0); \
        else if (nest) lrcore__sgd_body_##SUFFIX(n, param, grad, momentum_buffer, s, wd, mom, omd, neg_lr, 1, 2, 1); \
        else lrcore__sgd_body_##SUFFIX(n, param, grad, momentum_buffer, s, wd, mom, omd, neg_lr, 1, 2, 0); \
    } else {                                                                                 \
        if (phase == 0) lrcore__sgd_body_##SUFFIX(n, param, grad, momentum_buffer, s, wd, mom, omd, neg_lr, 0, 0, 0); \
        else if (phase == 1 && nest) lrcore__sgd_body_##SUFFIX(n, param, grad, momentum_buffer, s, wd, mom, omd, neg_lr, 0, 1, 1); \
        else if (phase == 1) lrcore__sgd_body_##SUFFIX(n, param, grad, momentum_buffer, s, wd, mom, omd, neg_lr, 0, 1, 0); \
        else if (nest) lrcore__sgd_body_##SUFFIX(n, param, grad, momentum_buffer, s, wd, mom, omd, neg_lr, 0, 2, 1); \
        else lrcore__sgd_body_##SUFFIX(n, param, grad, momentum_buffer, s, wd, mom, omd, neg_lr, 0, 2, 0); \
    }                                                                                        \
}                                                                                            \
                                                                                             \
/* Adam / AdamW / AMSGrad (torch.optim.Adam, torch.optim.AdamW):                             \
 *   g = s * grad                                                                            \
 *   param = param * (1 - lr * weight_decay)       if decoupled (AdamW)                      \
 *   g = g + weight_decay * param                  if weight_decay != 0 and not decoupled    \
 *   exp_avg = lerp(exp_avg, g, 1 - beta1)         torch.lerp: m + w*(g - m) if w < 0.5,     \
 *                                                            g - (g - m)*(1 - w) otherwise  \
 *   exp_avg_sq = exp_avg_sq * beta2 + ((1 - beta2) * g) * g                                 \
 *   v = max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq)   if AMSGrad, else v = exp_avg_sq  \
 *   denom = sqrt(v) / sqrt(1 - beta2**step) + eps                                           \
 *   param = param + ((-lr / (1 - beta1**step)) * exp_avg) / denom   (torch.addcdiv order)   \
 */                                                                                          \
LRCORE_INLINE void lrcore__adam_body_##SUFFIX(                                               \
    size_t n, T *LRCORE_RESTRICT p, const T *LRCORE_RESTRICT gr, T *LRCORE_RESTRICT m,       \
    T *LRCORE_RESTRICT v, T *LRCORE_RESTRICT vmax,                                           \
    T s, T decay, T wd, T w, T one_minus_w, T beta2, T one_minus_beta2, T bc2_sqrt, T eps,   \
    T neg_step_size, const int l2, const int lerp_small, const int amsgrad)                  \
{                                                                                            \
    const size_t line = LRCORE_CACHE_LINE / sizeof(T);                                       \
    const size_t ahead = LRCORE_PREFETCH_AHEAD / sizeof(T);                                  \
    const int pf = n * sizeof(T) > (size_t)LRCORE_PREFETCH_MIN_BYTES; /* else one block */   \
    const size_t block = pf ? line * LRCORE_BLOCK_LINES : n;                                 \
    for (size_t b0 = 0; b0 < n; b0 += block) {  /* LRCORE_BLOCK_LINES lines per block */     \
        const size_t b1 = n - b0 > block ? b0 + block : n;                                   \
        for (size_t l = b0; pf && l < b1 && n - l > ahead; l += line) {                      \
            LRCORE__PREFETCH_W(p + l + ahead);                                              \
            LRCORE__PREFETCH_R(gr + l + ahead);                                             \
            LRCORE__PREFETCH_W(m + l + ahead);                                              \
            LRCORE__PREFETCH_W(v + l + ahead);                                              \
            if (amsgrad) LRCORE__PREFETCH_W(vmax + l + ahead);                              \
        }                                                                                    \
        for (size_t i = b0; i < b1; i++) {                                                   \
            T g = gr[i] * s;                                                                 \
            T pi = p[i] * decay;                                                             \
            if (l2) g = g + wd * pi;                                                         \
            T mi = lerp_small ? m[i] + w * (g - m[i]) : g - (g - m[i]) * one_minus_w;        \
            T vi = v[i] * beta2 + (one_minus_beta2 * g) * g;                                 \
            m[i] = mi;                                                                       \
            v[i] = vi;                                                                       \
            if (amsgrad) { /* torch.maximum: NaN wins */                                     \
                vi = (vmax[i] > vi || vmax[i] != vmax[i]) ? vmax[i] : vi; vmax[i] = vi; }    \
            T denom = SQRT(vi) / bc2_sqrt + eps;                                             \
            p[i] = pi + (neg_step_size * mi) / denom;                                        \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
                                                                                             \
static inline void lrcore_adam_##SUFFIX(size_t n, T *LRCORE_RESTRICT param,                 \
    const T *LRCORE_RESTRICT grad, T *LRCORE_RESTRICT exp_avg, T *LRCORE_RESTRICT exp_avg_sq,\
    T *LRCORE_RESTRICT max_exp_avg_sq /* NULL: no AMSGrad */, const lrcore_adam_hp *hp)      \
{                                                                                            \
    const double step = (double)hp->step;                                                    \
    const double bc1 = 1.0 - pow(hp->beta1, step);                                           \
    const double bc2 = 1.0 - pow(hp->beta2, step);                                           \
    const T s = (T)lrcore__grad_sign_scale(hp->grad_scale, hp->maximize);                    \
    const int decoupled = hp->decoupled_weight_decay != 0;                                   \
    const T decay = (T)(decoupled ? 1.0 - hp->lr * hp->weight_decay : 1.0);                  \
    const T wd = (T)hp->weight_decay;                                                        \
    const double wdbl = 1.0 - hp->beta1;                                                     \
    const T w = (T)wdbl;                                                                     \
    const T omw = (T)1 - w;                                                                  \
    const T b2 = (T)hp->beta2, omb2 = (T)(1.0 - hp->beta2);                                  \
    const T bc2_sqrt = (T)sqrt(bc2), eps = (T)hp->eps;                                       \
    const T nss = (T)(-(hp->lr / bc1));                                                      \
    const int l2 = !decoupled && hp->weight_decay != 0.0;                                    \
    const int small = fabs((double)w) < 0.5;  /* torch tests the rounded weight */          \
    const int ams = max_exp_avg_sq != NULL;                                                  \
    T *vm = max_exp_avg_sq;                                                                  \
    if (l2) {                                                                                \
        if (small) { if (ams) lrcore__adam_body_##SUFFIX(n, param, grad, exp_avg, exp_avg_sq, vm, s, decay, wd, w, omw, b2, omb2, bc2_sqrt, eps, nss, 1, 1, 1); \
                     else lrcore__adam_body_##SUFFIX(n, param, grad, exp_avg, exp_avg_sq, vm, s, decay, wd, w, omw, b2, omb2, bc2_sqrt, eps, nss, 1, 1, 0); } \
        else       { if (ams) lrcore__adam_body_##SUFFIX(n, param, grad, exp_avg, exp_avg_sq, vm, s, decay, wd, w, omw, b2, omb2, bc2_sqrt, eps, nss, 1, 0, 1); \
                     else lrcore__adam_body_##SUFFIX(n, param, grad, exp_avg, exp_avg_sq, vm, s, decay, wd, w, omw, b2, omb2, bc2_sqrt, eps, nss, 1, 0, 0); } \
    } else {                                                                                 \
        if (small) { if (ams) lrcore__adam_body_##SUFFIX(n, param, grad, exp_avg, exp_avg_sq, vm, s, decay, wd, w, omw, b2, omb2, bc2_sqrt, eps, nss, 0, 1, 1); \
                     else lrcore__adam_body_##SUFFIX(n, param, grad, exp_avg, exp_avg_sq, vm, s, decay, wd, w, omw, b2, omb2, bc2_sqrt, eps, nss, 0, 1, 0); } \
        else       { if (ams) lrcore__adam_body_##SUFFIX(n, param, grad, exp_avg, exp_avg_sq, vm, s, decay, wd, w, omw, b2, omb2, bc2_sqrt, eps, nss, 0, 0, 1); \
                     else lrcore__adam_body_##SUFFIX(n, param, grad, exp_avg, exp_avg_sq, vm, s, decay, wd, w, omw, b2, omb2, bc2_sqrt, eps, nss, 0, 0, 0); } \
    }                                                                                        \
}                                                                                            \
                                                                                             \
/* Adagrad (torch.optim.Adagrad):                                                            \
 *   g = s * grad                                                                            \
 *   g = g + weight_decay * param                  if weight_decay != 0                      \
 *   clr = lr / (1 + (step - 1) * lr_decay)                                                  \
 *   state_sum = state_sum + g * g                                                           \
 *   param = param + ((-clr) * g) / (sqrt(state_sum) + eps)                                  \
 */                                                                                          \
LRCORE_INLINE void lrcore__adagrad_body_##SUFFIX(                                            \
    size_t n, T *LRCORE_RESTRICT p, const T *LRCORE_RESTRICT gr, T *LRCORE_RESTRICT ssum,    \
    T s, T wd, T eps, T neg_clr, const int has_wd)                                           \
{                                                                                            \
    const size_t line = LRCORE_CACHE_LINE / sizeof(T);                                       \
    const size_t ahead = LRCORE_PREFETCH_AHEAD / sizeof(T);                                  \
    const int pf = n * sizeof(T) > (size_t)LRCORE_PREFETCH_MIN_BYTES; /* else one block */   \
    const size_t block = pf ? line * LRCORE_BLOCK_LINES : n;                                 \
    for (size_t b0 = 0; b0 < n; b0 += block) {  /* LRCORE_BLOCK_LINES lines per block */     \
        const size_t b1 = n - b0 > block ? b0 + block : n;                                   \
        for (size_t l = b0; pf && l < b1 && n - l > ahead; l += line) {                      \
            LRCORE__PREFETCH_W(p + l + ahead);                                              \
            LRCORE__PREFETCH_R(gr + l + ahead);                                             \
            LRCORE__PREFETCH_W(ssum + l + ahead);                                           \
        }                                                                                    \
        for (size_t i = b0; i < b1; i++) {                                                   \
            T g = gr[i] * s;                                                                 \
            if (has_wd) g = g + wd * p[i];                                                   \
            T si = ssum[i] + g * g;                                                          \
            ssum[i] = si;                                                                    \
            p[i] = p[i] + (neg_clr * g) / (SQRT(si) + eps);                                  \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
                                                                                             \
static inline void lrcore_adagrad_##SUFFIX(size_t n, T *LRCORE_RESTRICT param,              \
    const T *LRCORE_RESTRICT grad, T *LRCORE_RESTRICT state_sum, const lrcore_adagrad_hp *hp)\
{                                                                                            \
    const double clr = hp->lr / (1.0 + (double)(hp->step - 1) * hp->lr_decay);              \
    const T s = (T)lrcore__grad_sign_scale(hp->grad_scale, hp->maximize);                    \
    const T wd = (T)hp->weight_decay, eps = (T)hp->eps, nclr = (T)(-clr);                    \
    if (hp->weight_decay != 0.0) lrcore__adagrad_body_##SUFFIX(n, param, grad, state_sum, s, wd, eps, nclr, 1); \
    else lrcore__adagrad_body_##SUFFIX(n, param, grad, state_sum, s, wd, eps, nclr, 0);      \
}                                                                                            \
                                                                                             \
/* RMSprop (torch.optim.RMSprop):                                                            \
 *   g = s * grad                                                                            \
 *   g = g + weight_decay * param                  if weight_decay != 0                      \
 *   square_avg = square_avg * alpha + ((1 - alpha) * g) * g                                 \
 *   if centered (grad_avg given):                                                           \
 *     grad_avg = lerp(grad_avg, g, 1 - alpha)     (torch.lerp, as in Adam)                  \
 *     avg = sqrt(square_avg - grad_avg * grad_avg) + eps                                    \
 *   else: avg = sqrt(square_avg) + eps                                                      \
 *   if momentum > 0:                                                                        \
 *     buf = buf * momentum + g / avg                                                        \
 *     param = param + (-lr) * buf                                                           \
 *   else: param = param + ((-lr) * g) / avg                                                 \
 */                                                                                          \
LRCORE_INLINE void lrcore__rmsprop_body_##SUFFIX(                                            \
    size_t n, T *LRCORE_RESTRICT p, const T *LRCORE_RESTRICT gr, T *LRCORE_RESTRICT sq,      \
    T *LRCORE_RESTRICT buf, T *LRCORE_RESTRICT ga,                                           \
    T s, T wd, T alpha, T one_minus_alpha, T one_minus_w, T eps, T mom, T neg_lr,            \
    const int has_wd, const int centered, const int lerp_small, const int use_mom)           \
{                                                                                            \
    const size_t line = LRCORE_CACHE_LINE / sizeof(T);                                       \
    const size_t ahead = LRCORE_PREFETCH_AHEAD / sizeof(T);                                  \
    const int pf = n * sizeof(T) > (size_t)LRCORE_PREFETCH_MIN_BYTES; /* else one block */   \
    const size_t block = pf ? line * LRCORE_BLOCK_LINES : n;                                 \
    for (size_t b0 = 0; b0 < n; b0 += block) {  /* LRCORE_BLOCK_LINES lines per block */     \
        const size_t b1 = n - b0 > block ? b0 + block : n;                                   \
        for (size_t l = b0; pf && l < b1 && n - l > ahead; l += line) {                      \
            LRCORE__PREFETCH_W(p + l + ahead);                                              \
            LRCORE__PREFETCH_R(gr + l + ahead);                                             \
            LRCORE__PREFETCH_W(sq + l + ahead);                                             \
            if (centered) LRCORE__PREFETCH_W(ga + l + ahead);                               \
            if (use_mom) LRCORE__PREFETCH_W(buf + l + ahead);                               \
        }                                                                                    \
        for (size_t i = b0; i < b1; i++) {                                                   \
            T g = gr[i] * s;                                                                 \
            if (has_wd) g = g + wd * p[i];                                                   \
            T sqi = sq[i] * alpha + (one_minus_alpha * g) * g;                               \
            sq[i] = sqi;                                                                     \
            T avg;                                                                           \
            if (centered) {                                                                  \
                T gai = lerp_small ? ga[i] + one_minus_alpha * (g - ga[i])                   \
                                   : g - (g - ga[i]) * one_minus_w;                          \
                ga[i] = gai;                                                                 \
                avg = SQRT(sqi - gai * gai) + eps;                                           \
            } else {                                                                         \
                avg = SQRT(sqi) + eps;                                                       \
            }                                                                                \
            if (use_mom) {                                                                   \
                T bi = buf[i] * mom + g / avg;                                               \
                buf[i] = bi;                                                                 \
                p[i] = p[i] + neg_lr * bi;                                                   \
            } else {                                                                         \
                p[i] = p[i] + (neg_lr * g) / avg;                                            \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
                                                                                             \
static inline void lrcore_rmsprop_##SUFFIX(size_t n, T *LRCORE_RESTRICT param,              \
    const T *LRCORE_RESTRICT grad, T *LRCORE_RESTRICT square_avg,                            \
    T *LRCORE_RESTRICT momentum_buffer /* used when momentum > 0 */,                         \
    T *LRCORE_RESTRICT grad_avg /* NULL: not centered */, const lrcore_rmsprop_hp *hp)       \
{                                                                                            \
    const T s = (T)lrcore__grad_sign_scale(hp->grad_scale, hp->maximize);                    \
    const T wd = (T)hp->weight_decay, a = (T)hp->alpha;                                      \
    const double wdbl = 1.0 - hp->alpha;                                                     \
    const T oma = (T)wdbl, omw = (T)1 - oma;                                                 \
    const T eps = (T)hp->eps, mom = (T)hp->momentum, nlr = (T)(-hp->lr);                     \
    const int code = (hp->weight_decay != 0.0) * 8 + (grad_avg != NULL) * 4                  \
                   + (fabs((double)oma) < 0.5) * 2 + (hp->momentum > 0.0);                   \
    T *b = momentum_buffer, *ga = grad_avg;                                                  \
    switch (code) {                                                                          \
    case 0:  lrcore__rmsprop_body_##SUFFIX(n, param, grad, square_avg, b, ga, s, wd, a, oma, omw, eps, mom, nlr, 0, 0, 0, 0); break; \
    case 1:  lrcore__rmsprop_body_##SUFFIX(n, param, grad, square_avg, b, ga, s, wd, a, oma, omw, eps, mom, nlr, 0, 0, 0, 1); break; \
    case 2:  lrcore__rmsprop_body_##SUFFIX(n, param, grad, square_avg, b, ga, s, wd, a, oma, omw, eps, mom, nlr, 0, 0, 1, 0); break; \
    case 3:  lrcore__rmsprop_body_##SUFFIX(n, param, grad, square_avg, b, ga, s, wd, a, oma, omw, eps, mom, nlr, 0, 0, 1, 1); break; \
    case 4:  lrcore__rmsprop_body_##SUFFIX(n, param, grad, square_avg, b, ga, s, wd, a, oma, omw, eps, mom, nlr, 0, 1, 0, 0); break; \
    case 5:  lrcore__rmsprop_body_##SUFFIX(n, param, grad, square_avg, b, ga, s, wd, a, oma, omw, eps, mom, nlr, 0, 1, 0, 1); break; \
    case 6:  lrcore__rmsprop_body_##SUFFIX(n, param, grad, square_avg, b, ga, s, wd, a, oma, omw, eps, mom, nlr, 0, 1, 1, 0); break; \
    case 7:  lrcore__rmsprop_body_##SUFFIX(n, param, grad, square_avg, b, ga, s, wd, a, oma, omw, eps, mom, nlr, 0, 1, 1, 1); break; \
    case 8:  lrcore__rmsprop_body_##SUFFIX(n, param, grad, square_avg, b, ga, s, wd, a, oma, omw, eps, mom, nlr, 1, 0, 0, 0); break; \
    case 9:  lrcore__rmsprop_body_##SUFFIX(n, param, grad, square_avg, b, ga, s, wd, a, oma, omw, eps, mom, nlr, 1, 0, 0, 1); break; \
    case 10: lrcore__rmsprop_body_##SUFFIX(n, param, grad, square_avg, b, ga, s, wd, a, oma, omw, eps, mom, nlr, 1, 0, 1, 0); break; \
    case 11: lrcore__rmsprop_body_##SUFFIX(n, param, grad, square_avg, b, ga, s, wd, a, oma, omw, eps, mom, nlr, 1, 0, 1, 1); break; \
    case 12: lrcore__rmsprop_body_##SUFFIX(n, param, grad, square_avg, b, ga, s, wd, a, oma, omw, eps, mom, nlr, 1, 1, 0, 0); break; \
    case 13: lrcore__rmsprop_body_##SUFFIX(n, param, grad, square_avg, b, ga, s, wd, a, oma, omw, eps, mom, nlr, 1, 1, 0, 1); break; \
    case 14: lrcore__rmsprop_body_##SUFFIX(n, param, grad, square_avg, b, ga, s, wd, a, oma, omw, eps, mom, nlr, 1, 1, 1, 0); break; \
    default: lrcore__rmsprop_body_##SUFFIX(n, param, grad, square_avg, b, ga, s, wd, a, oma, omw, eps, mom, nlr, 1, 1, 1, 1); break; \
    }                                                                                        \
}                                                                                            \
                                                                                             \
/* Adadelta (torch.optim.Adadelta):                                                          \
 *   g = s * grad                                                                            \
 *   g = g + weight_decay * param                  if weight_decay != 0                      \
 *   square_avg = square_avg * rho + ((1 - rho) * g) * g                                     \
 *   delta = (sqrt(acc_delta + eps) / sqrt(square_avg + eps)) * g                            \
 *   acc_delta = acc_delta * rho + ((1 - rho) * delta) * delta                               \
 *   param = param + (-lr) * delta                                                           \
 */                                                                                          \
LRCORE_INLINE void lrcore__adadelta_body_##SUFFIX(                                           \
    size_t n, T *LRCORE_RESTRICT p, const T *LRCORE_RESTRICT gr, T *LRCORE_RESTRICT sq,      \
    T *LRCORE_RESTRICT acc, T s, T wd, T rho, T one_minus_rho, T eps, T neg_lr,              \
    const int has_wd)                                                                        \
{                                                                                            \
    const size_t line = LRCORE_CACHE_LINE / sizeof(T);                                       \
    const size_t ahead = LRCORE_PREFETCH_AHEAD / sizeof(T);                                  \
    const int pf = n * sizeof(T) > (size_t)LRCORE_PREFETCH_MIN_BYTES; /* else one block */   \
    const size_t block = pf ? line * LRCORE_BLOCK_LINES : n;                                 \
    for (size_t b0 = 0; b0 < n; b0 += block) {  /* LRCORE_BLOCK_LINES lines per block */     \
        const size_t b1 = n - b0 > block ? b0 + block : n;                                   \
        for (size_t l = b0; pf && l < b1 && n - l > ahead; l += line) {                      \
            LRCORE__PREFETCH_W(p + l + ahead);                                              \
            LRCORE__PREFETCH_R(gr + l + ahead);                                             \
            LRCORE__PREFETCH_W(sq + l + ahead);                                             \
            LRCORE__PREFETCH_W(acc + l + ahead);                                            \
        }                                                                                    \
        for (size_t i = b0; i < b1; i++) {                                                   \
            T g = gr[i] * s;                                                                 \
            if (has_wd) g = g + wd * p[i];                                                   \
            T sqi = sq[i] * rho + (one_minus_rho * g) * g;                                   \
            sq[i] = sqi;                                                                     \
            T delta = (SQRT(acc[i] + eps) / SQRT(sqi + eps)) * g;                            \
            acc[i] = acc[i] * rho + (one_minus_rho * delta) * delta;                         \
            p[i] = p[i] + neg_lr * delta;                                                    \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
                                                                                             \
static inline void lrcore_adadelta_##SUFFIX(size_t n, T *LRCORE_RESTRICT param,             \
    const T *LRCORE_RESTRICT grad, T *LRCORE_RESTRICT square_avg,                            \
    T *LRCORE_RESTRICT acc_delta, const lrcore_adadelta_hp *hp)                              \
{                                                                                            \
    const T s = (T)lrcore__grad_sign_scale(hp->grad_scale, hp->maximize);                    \
    const T wd = (T)hp->weight_decay, rho = (T)hp->rho, omr = (T)(1.0 - hp->rho);            \
    const T eps = (T)hp->eps, nlr = (T)(-hp->lr);                                            \
    if (hp->weight_decay != 0.0) lrcore__adadelta_body_##SUFFIX(n, param, grad, square_avg, acc_delta, s, wd, rho, omr, eps, nlr, 1); \
    else lrcore__adadelta_body_##SUFFIX(n, param, grad, square_avg, acc_delta, s, wd, rho, omr, eps, nlr, 0); \
}

LRCORE__DEFINE_KERNELS(float, f32, sqrtf)
LRCORE__DEFINE_KERNELS(double, f64, sqrt)

/*
 * Sum of squares in double, for gradient clipping by global norm:
 *   acc[k] += x[i]^2 for i = k (mod 8), then ((acc0 + acc1) + (acc2 + acc3)) + ...
 * Eight independent accumulators let the compiler vectorise without reassociating,
 * so the result is the same on every instruction set. Non-finite x gives a
 * non-finite sum (a float32 input can never overflow the double sum).
 */
#define LRCORE__DEFINE_SUMSQ(T, SUFFIX)                                                      \
static inline double lrcore_sum_squares_##SUFFIX(size_t n, const T *LRCORE_RESTRICT x)      \
{                                                                                            \
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                                \
    size_t blocks = n / 8;                                                                   \
    for (size_t b = 0; b < blocks; b++)                                                      \
        for (int k = 0; k < 8; k++) {                                                        \
            double v = (double)x[8 * b + k];                                                 \
            acc[k] += v * v;                                                                 \
        }                                                                                    \
    for (size_t i = 8 * blocks; i < n; i++) {                                                \
        double v = (double)x[i];                                                             \
        acc[i - 8 * blocks] += v * v;                                                        \
    }                                                                                        \
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])); \
}

LRCORE__DEFINE_SUMSQ(float, f32)
LRCORE__DEFINE_SUMSQ(double, f64)

#if defined(__cplusplus)
}
#endif

#endif /* LRCORE_H */
