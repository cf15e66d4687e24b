/*
 * lrcore_body.h -- the update loops of lrcore.h for one element type and one storage
 * layout. Private: lrcore.h includes it once per type (float32, float64) and
 * lrcore_lowp.h once per bfloat16/float16 layout, with
 *   LRCORE__T          the type the arithmetic runs in (float, double);
 *   LRCORE__SUFFIX     the name suffix of the functions made here (f32, f64, bf16_sr, ...);
 *   LRCORE__SQRT, LRCORE__FABS, LRCORE__COPYSIGN   T's math functions (all four
 *                      default to float and sqrtf, fabsf, copysignf when LRCORE__T is not
 *                      defined: the bfloat16/float16 layouts compute in float32);
 *   LRCORE__P, LRCORE__G, LRCORE__S   how param, grad and the states are stored: a kind
 *                      with a storage type lrcore__<kind>_t, a load that gives T and a
 *                      store that takes T (lrcore.h: f32, f64, plain, lrcore__ld_<kind> and
 *                      lrcore__st_<kind>; lrcore_lowp.h, with LRCORE__LOWP_KINDS:
 *                      bfloat16/float16, widen on load, round on store, to nearest or
 *                      stochastically, lrcore__ldx_<kind> and lrcore__stx_<kind>);
 *   LRCORE__PAIRED     (lrcore_lowp.h, all-bfloat16) two elements per 32-bit word;
 *   LRCORE__BLOCK_FN   (optional) the block function of the loops (default lrcore.h's
 *                      lrcore__block_x; lrcore_lowp.h: lrcore__block_lowp);
 *   LRCORE__TILE_P, LRCORE__TILE_G   (lrcore_lowp.h, float16 with F16C) float16 param /
 *                      grad converted a tile at a time (see ELEMENTS below).
 * The public kernels lrcore_<rule>_<suffix> call the lrcore__<rule>_<suffix> below.
 *
 * For each rule: the math (as in lrcore/rules.py and lrcore/reference.py), the
 * loop, which takes the options that select a variant as the bit set `variant`,
 * and the per-call part, which forms the step's scalars in double, rounds each
 * once to T, and dispatches to the loop compiled for the options in use.
 * s = grad_scale, negated when maximize.
 *
 * Every loop reads each element of each buffer once, at the top, computes in T and
 * stores each result once, at the bottom; a value it stores and uses again is used from
 * the register, never re-read. So with rounding stores the arithmetic is exactly the
 * float32 rule's on the widened values, and each stored value is rounded once.
 */
#ifndef LRCORE__T
#define LRCORE__T float
#define LRCORE__SQRT sqrtf
#define LRCORE__FABS fabsf
#define LRCORE__COPYSIGN copysignf
#endif
#define T LRCORE__T
#define SQRT LRCORE__SQRT
#define FN(name) LRCORE__CAT(LRCORE__CAT(lrcore__, name), LRCORE__CAT(_, LRCORE__SUFFIX))
#define PT LRCORE__CAT(LRCORE__CAT(lrcore__, LRCORE__P), _t)
#define GT LRCORE__CAT(LRCORE__CAT(lrcore__, LRCORE__G), _t)
#define ST LRCORE__CAT(LRCORE__CAT(lrcore__, LRCORE__S), _t)
/* element i of param / grad / a state; stores name the buffer's number in the stream */
#if defined(LRCORE__LOWP_KINDS)
/* lrcore_lowp.h's kinds: lrcore__ldx_<kind>(a, i, lane) and
 * lrcore__stx_<kind>(a, i, x, stream, buffer, lane, pw, ix), where ix = stream->lo + i, the
 * element's index in the random stream, is a 32-bit counter of its own (one vector add per
 * vector, where deriving it from the 64-bit i costs permutes). ELEMENTS(b0, b1, body) runs
 * body for each element i in [b0, b1) with lane 2 (one element at a time), or, with
 * LRCORE__PAIRED (the all-bfloat16 layouts), for elements i and i + 1 as lanes 0 and 1 of
 * one 32-bit word of each buffer (lane 2 for an odd one at the end): the loads widen with
 * a shift or a mask, the stores write whole words, lane 0 leaving its half in pw[buffer]
 * for lane 1's store. Same values and random bits either way, so the same results. The
 * paired loop counts pairs (its trip count computed first): with the element index as its
 * counter GCC kept a vector of 64-bit indices for the value after the loop, two more
 * instructions per 32 elements (the vector loops of all-bfloat16 SGD-momentum 53 -> 51,
 * Lion 65 -> 63, AdamW stochastic 111 -> 103). */
#if defined(LRCORE__TILE_P)
#define LDP(a, i) tp_[(i) - t0_]
#define STP(a, i, x) ((void)(tp_[(i) - t0_] = (x)))
#else
#define LDP(a, i) LRCORE__CAT(lrcore__ldx_, LRCORE__P)((a), (i), lane_)
#define STP(a, i, x) \
    LRCORE__CAT(lrcore__stx_, LRCORE__P)((a), (i), (x), &st, 0u, lane_, pw_, ix_)
#endif
#if defined(LRCORE__TILE_G)
#define LDG(a, i) tg_[(i) - t0_]
#else
#define LDG(a, i) LRCORE__CAT(lrcore__ldx_, LRCORE__G)((a), (i), lane_)
#endif
#define LDS(a, i) LRCORE__CAT(lrcore__ldx_, LRCORE__S)((a), (i), lane_)
#define LDG1(a, i) LRCORE__CAT(lrcore__ldx_, LRCORE__G)((a), (i), 2u)   /* outside the loops */
#define STS(a, i, x, buffer) \
    LRCORE__CAT(lrcore__stx_, LRCORE__S)((a), (i), (x), &st, (buffer), lane_, pw_, ix_)
#if defined(LRCORE__PAIRED)
#define ELEMENTS(b0, b1, ...) { \
    const size_t np_ = ((b1) - (b0)) / 2; \
    uint32_t ix2_ = st.lo + (uint32_t)(b0); \
    for (size_t k_ = 0; k_ < np_; k_++, ix2_ += 2u) { \
        const size_t i_ = (b0) + 2 * k_; \
        uint32_t pw_[4]; \
        { const size_t i = i_; const uint32_t ix_ = ix2_; const unsigned lane_ = 0u; \
          __VA_ARGS__ } \
        { const size_t i = i_ + 1; const uint32_t ix_ = ix2_ + 1u; const unsigned lane_ = 1u; \
          __VA_ARGS__ } \
    } \
    if (2 * np_ < (b1) - (b0)) { uint32_t pw_[4]; const size_t i = (b1) - 1; \
                     const uint32_t ix_ = st.lo + (uint32_t)i; \
                     const unsigned lane_ = 2u; __VA_ARGS__ } }
#elif defined(LRCORE__TILE_G)
/* float16 tiles (lrcore_lowp.h, builds with F16C): tiles of up to LRCORE__TILE_N elements;
 * the float16 grad (and param, LRCORE__TILE_P: its rounding store) are widened into tg_
 * (tp_) first, the body reads and writes those, and the param tile is rounded back last.
 * The loops use `p` and `gr` for param and grad. */
/* a helper that loads (moments_at) receives the tiles: */
#define TILE_PARAMS , const T *tp_, const T *tg_, const size_t t0_
#define TILE_ARGS , tp_, tg_, t0_
#if defined(LRCORE__TILE_P)
#define TILE_IN_P(t0, m) lrcore__f16_tile_in(p + (t0), (m), tp_)
#define TILE_OUT_P(t0, m) LRCORE__TILE_P(p + (t0), (m), tp_, &st, st.lo + (uint32_t)(t0))
#else
#define TILE_IN_P(t0, m) ((void)0)
#define TILE_OUT_P(t0, m) ((void)0)
#endif
#define ELEMENTS(b0, b1, ...) \
    for (size_t t0_ = (b0), t1_; t0_ < (b1); t0_ = t1_) { \
        float tp_[LRCORE__TILE_N], tg_[LRCORE__TILE_N]; \
        t1_ = (b1) - t0_ > LRCORE__TILE_N ? t0_ + LRCORE__TILE_N : (b1); \
        (void)tp_; \
        TILE_IN_P(t0_, t1_ - t0_); \
        lrcore__f16_tile_in(gr + t0_, t1_ - t0_, tg_); \
        for (size_t i = t0_; i < t1_; i++) { \
            uint32_t *const pw_ = 0; const uint32_t ix_ = 0u; const unsigned lane_ = 2u; \
            (void)pw_; (void)ix_; __VA_ARGS__ } \
        TILE_OUT_P(t0_, t1_ - t0_); \
    }
#else
#define ELEMENTS(b0, b1, ...) { \
    uint32_t ix1_ = st.lo + (uint32_t)(b0); \
    for (size_t i = (b0); i < (b1); i++, ix1_++) { \
        uint32_t *const pw_ = 0; const uint32_t ix_ = ix1_; const unsigned lane_ = 2u; \
        (void)pw_; (void)ix_; __VA_ARGS__ } }
#endif
#else
/* lrcore.h's kinds: lrcore__ld_<kind>(a, i), lrcore__st_<kind>(a, i, x, stream, buffer) */
#define LDP(a, i) LRCORE__CAT(lrcore__ld_, LRCORE__P)((a), (i))
#define LDG(a, i) LRCORE__CAT(lrcore__ld_, LRCORE__G)((a), (i))
#define LDS(a, i) LRCORE__CAT(lrcore__ld_, LRCORE__S)((a), (i))
#define LDG1(a, i) LDG(a, i)
#define STP(a, i, x) LRCORE__CAT(lrcore__st_, LRCORE__P)((a), (i), (x), &st, 0u)
#define STS(a, i, x, buffer) LRCORE__CAT(lrcore__st_, LRCORE__S)((a), (i), (x), &st, (buffer))
/* ELEMENTS(b0, b1, body): body for each element i in [b0, b1) */
#define ELEMENTS(b0, b1, ...) for (size_t i = (b0); i < (b1); i++) { \
    uint32_t *const pw_ = 0; const unsigned lane_ = 2u; const uint32_t ix_ = 0u; \
    (void)pw_; (void)lane_; (void)ix_; __VA_ARGS__ }
#endif
#if !defined(TILE_ARGS)
#define TILE_PARAMS
#define TILE_ARGS
#endif
#if defined(LRCORE__FEW_VARIANTS)
#define DISPATCH_FEW(bits, variant, sa, sb, f1, f2, ...) \
    LRCORE__DISPATCH_FEW_(variant, sa, sb, f1, f2, __VA_ARGS__)
#else
#define DISPATCH_FEW(bits, variant, sa, sb, f1, f2, ...) LRCORE__DISPATCH(bits, variant, __VA_ARGS__)
#endif
/* the block function (lrcore.h's lrcore__block_x, or the includer's LRCORE__BLOCK_FN) */
#if defined(LRCORE__BLOCK_FN)
#define BLOCK(b0, n, r, w0, w1, w2, w3) \
    LRCORE__BLOCK_FN((b0), (n), sizeof(PT), sizeof(GT), sizeof(ST), (r), (w0), (w1), (w2), (w3))
#else
#define BLOCK(b0, n, r, w0, w1, w2, w3) \
    lrcore__block_x((b0), (n), sizeof(PT), sizeof(GT), sizeof(ST), (r), (w0), (w1), (w2), (w3))
#endif

/* ---- element helpers -------------------------------------------------------------- */

/* torch.lerp(a, b, w) with a scalar weight; `small` (|w| < 0.5, tested on w rounded to T)
 * picks torch's branch. */
LRCORE_INLINE T FN(lerp)(T a, T b, T w, T one_minus_w, const int small) {
    LRCORE__FP_STRICT
    return small ? a + w * (b - a) : b - (b - a) * one_minus_w;
}

/* torch.maximum(a, b): the larger; NaN when either is NaN. */
LRCORE_INLINE T FN(max_nan)(T a, T b) {
    return (a > b || a != a) ? a : b;
}

/* x / c for a per-call constant c, correctly rounded, without a division, where
 * LRCORE__FMA is defined (lrcore.h: the float32 loops, in builds with AVX-512 and FMA;
 * T is float32 wherever it is). Adam divides sqrt(v) by c = sqrt(1 - beta2**step); sqrt
 * and division share one unit per core (bench/divider_limit.c), and this takes the
 * division off it. With y = fl(1 / c) (computed once per call):
 *   q0 = fl(x y)            one multiplication
 *   r  = fl(q0 c - x)       one FMA (exact)
 *   q  = fl(q0 - r y)       one FMA: q = fl(x / c)
 * the known correctly rounded division by a divisor whose reciprocal is computed in
 * advance (P. Markstein, IBM J. Res. Dev. 34(1), 1990; N. Brisebarre, J.-M. Muller and
 * S. K. Raina, IEEE Trans. Computers 53(8), 2004), which needs no underflow or overflow:
 * scaling x or c by a power of two scales every step exactly, and for every x in {+-0}
 * U [2**-75, 2**64] (every square root of a float32) and c in [2**-60, 1] (FN(recip_ok);
 * Adam's c lies in [2**-27, 1]) q0 lies in [2**-75, 2**124] and r is a multiple of
 * 2**-122 or more. For x = +-0, +-inf and NaN the result is x itself, which is x / c
 * there (c > 0; sqrt's NaN is already quiet): x = inf makes r NaN, and GCC may turn
 * fl(q0 c - x) into -fl(x - q0 c), which is +0 where the FMA gives -0.
 * `bench/markstein_exhaustive.c` checks every float32 x in [1, 2), the ends of the range
 * and the special values against x / c for thousands of c (Adam's, those whose
 * reciprocal is least accurate, random ones); tests/test_adam_division.py checks the
 * kernels against the numpy twin on every instruction set. */
LRCORE_INLINE int FN(recip_ok)(T c)
{
#if defined(LRCORE__FMA)
    return c >= (T)0x1p-60 && c <= (T)1;
#else
    (void)c;
    return 0;
#endif
}

LRCORE_INLINE T FN(quot_c)(T x, T c, T y)
{
#if defined(LRCORE__FMA)
    LRCORE__FP_STRICT
    const T q0 = x * y;
    const T r = LRCORE__FMA(q0, c, -x);
    const T q = LRCORE__FMA(-r, y, q0);
    /* x = +-0, +-inf or NaN: x. A select on the bit patterns, without a branch: GCC does
     * not if-convert a floating-point select under -ftrapping-math without AVX-512 masks,
     * and the AVX2 loop would not vectorise. */
    uint32_t xb, qb;
    memcpy(&xb, &x, sizeof xb);
    memcpy(&qb, &q, sizeof qb);
    const uint32_t m = 0u - (uint32_t)(((xb & 0x7fffffffu) - 1u) >= 0x7f7fffffu);
    const uint32_t b = (xb & m) | (qb & ~m);
    T out;
    memcpy(&out, &b, sizeof out);
    return out;
#else
    (void)y;
    return x / c;
#endif
}

/* Lion's update term, lr * sign(c) with sign(c) = c for +-0 and NaN, without a sign:
 * copysign(lr, c) where c is non-zero and not NaN (the same value, exactly), and lr * c
 * elsewhere, so it vectorises on every ISA. "Non-zero and not NaN" is C99's
 * islessgreater(c, 0): one ordered-not-equal compare whose mask the multiply takes. The
 * loop subtracts the term from param: x - y is x + (-y) in IEEE arithmetic, and
 * lr * c = -((-lr) * c) exactly, so param - lr * sign(c) has the bits of param + (-lr) *
 * sign(c), and copysign(lr, c) is one bitwise select where copysign(lr, -c) also negates c.
 * With AVX-512: 3 vector instructions (`c == c ? (c != 0 ? copysign(lr, -c) ...` compiled
 * to 6; Lion's all-bfloat16 loops took 15-20% longer in cache). */
LRCORE_INLINE T FN(lion_update)(T c, T lr) {
    LRCORE__FP_STRICT
    const T nonzero = LRCORE__COPYSIGN(lr, c), other = lr * c;
    return islessgreater(c, (T)0) ? nonzero : other;
}

/* The scalars of the Adam family (Adam, NAdam, RAdam), rounded to T once per call. */
typedef struct {
    T s, decay, wd, w, one_minus_w, beta2, one_minus_beta2;
    int l2, small;
} FN(moment_k);

static inline FN(moment_k) FN(moment_scalars)(double lr, double beta1, double beta2,
    double weight_decay, int decoupled, double grad_scale, int maximize)
{
    LRCORE__FP_STRICT
    FN(moment_k) k;
    k.s = (T)lrcore__grad_sign_scale(grad_scale, maximize);
    k.decay = (T)(decoupled ? 1.0 - lr * weight_decay : 1.0);
    k.wd = (T)weight_decay;
    k.w = (T)(1.0 - beta1);
    k.one_minus_w = (T)1 - k.w;
    k.beta2 = (T)beta2;
    k.one_minus_beta2 = (T)(1.0 - beta2);
    k.l2 = !decoupled && weight_decay != 0.0;
    k.small = fabs((double)k.w) < 0.5;   /* torch tests the rounded weight */
    return k;
}

/* One element of the Adam family's common start:
 *   g = s * grad;  param = param * decay (1 - lr * weight_decay if decoupled, else 1)
 *   g = g + weight_decay * param                        if l2
 *   exp_avg = lerp(exp_avg, g, 1 - beta1)
 *   exp_avg_sq = exp_avg_sq * beta2 + ((1 - beta2) * g) * g
 * from the element's grad, param, exp_avg and exp_avg_sq; returns g, and the new param
 * (not yet stored), exp_avg and exp_avg_sq in *pi, *mi, *vi. */
LRCORE_INLINE T FN(moments)(const FN(moment_k) *k, const int l2, const int small,
    T grad, T param, T exp_avg, T exp_avg_sq, T *pi, T *mi, T *vi)
{
    LRCORE__FP_STRICT
    T g = grad * k->s;
    const T p = param * k->decay;
    if (l2) g = g + k->wd * p;
    *pi = p;
    *mi = FN(lerp)(exp_avg, g, k->w, k->one_minus_w, small);
    *vi = exp_avg_sq * k->beta2 + (k->one_minus_beta2 * g) * g;
    return g;
}

/* The same start at element i of the buffers: loads grad, param, exp_avg and exp_avg_sq,
 * stores the new exp_avg (buffer 1) and exp_avg_sq (buffer 2), returns g; *pi, *mi, *vi as
 * above. */
LRCORE_INLINE T FN(moments_at)(const FN(moment_k) *k, const int l2, const int small,
    const GT *LRCORE_RESTRICT gr, const PT *LRCORE_RESTRICT p, ST *LRCORE_RESTRICT m,
    ST *LRCORE_RESTRICT v, size_t i, lrcore__stream st, const unsigned lane_, uint32_t *pw_,
    const uint32_t ix_ TILE_PARAMS, T *pi, T *mi, T *vi)
{
    (void)lane_; (void)pw_; (void)ix_;
    LRCORE__FP_STRICT
    const T g = FN(moments)(k, l2, small, LDG(gr, i), LDP(p, i), LDS(m, i), LDS(v, i),
                            pi, mi, vi);
    STS(m, i, *mi, 1u);
    STS(v, i, *vi, 2u);
    return g;
}

/* ---- SGD ---------------------------------------------------------------------------
 * g = s * grad
 * g = g + weight_decay * param                    if weight_decay != 0
 * if momentum != 0:
 *     buf = g                                     if init_buffer (torch's first step)
 *     buf = momentum * buf + (1 - dampening) * g  otherwise
 *     g = g + momentum * buf                      if nesterov
 *     g = buf                                     otherwise
 * param = param + (-lr) * g
 * variant bits: 1 weight decay, 2 momentum, 4 init_buffer, 8 nesterov */
LRCORE_INLINE void FN(sgd_loop)(size_t n, PT *LRCORE_RESTRICT p, const GT *LRCORE_RESTRICT gr,
    ST *LRCORE_RESTRICT buf, T s, T wd, T mom, T one_minus_damp, T neg_lr, lrcore__stream st,
    const unsigned variant)
{
    LRCORE__FP_STRICT
    const int has_wd = variant & 1u, use_mom = variant & 2u, init = variant & 4u,
              nesterov = variant & 8u;
    for (size_t b0 = 0, b1; b0 < n; b0 = b1) {
        b1 = BLOCK(b0, n, gr, p, use_mom ? buf : 0, 0, 0);
        ELEMENTS(b0, b1,
            const T pi = LDP(p, i);
            T g = LDG(gr, i) * s;
            if (has_wd) g = g + wd * pi;
            if (use_mom) {
                const T b0i = LDS(buf, i);   /* unused on the first step (init) */
                const T bi = init ? g : b0i * mom + one_minus_damp * g;
                STS(buf, i, bi, 1u);
                g = nesterov ? g + mom * bi : bi;
            }
            STP(p, i, pi + neg_lr * g);
        )
    }
}

static inline void FN(sgd)(size_t n, PT *LRCORE_RESTRICT param, const GT *LRCORE_RESTRICT grad,
    ST *LRCORE_RESTRICT momentum_buffer, const lrcore_sgd_hp *hp, lrcore__stream st)
{
    LRCORE__FP_STRICT
    const T s = (T)lrcore__grad_sign_scale(hp->grad_scale, hp->maximize);
    const T wd = (T)hp->weight_decay, mom = (T)hp->momentum;
    const T omd = (T)(1.0 - hp->dampening), neg_lr = (T)(-hp->lr);
    const unsigned use_mom = hp->momentum != 0.0;
    const unsigned variant = (hp->weight_decay != 0.0) | use_mom << 1
                           | (use_mom && hp->init_buffer) << 2 | (use_mom && hp->nesterov) << 3;
    /* own loops: plain SGD, momentum (no weight decay, nesterov or first step) */
    DISPATCH_FEW(4, variant, 2u, 0u, 0u, 2u, FN(sgd_loop), n, param, grad, momentum_buffer,
                 s, wd, mom, omd, neg_lr, st)
}

/* ---- Adam / AdamW / AMSGrad --------------------------------------------------------
 * (moments above: g, decoupled decay or L2, exp_avg, exp_avg_sq)
 * v = max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq)    if AMSGrad (torch.maximum)
 * v = exp_avg_sq                                          otherwise
 * denom = sqrt(v) / sqrt(1 - beta2**step) + eps
 * param = param + ((-lr / (1 - beta1**step)) * exp_avg) / denom   (torch.addcdiv order)
 * variant bits: 1 L2 weight decay, 2 lerp weight < 0.5, 4 AMSGrad, 8 the quotient
 * sqrt(v) / sqrt(1 - beta2**step) without a division (FN(quot_c); the same bits) */
LRCORE_INLINE void FN(adam_elements)(size_t n, PT *LRCORE_RESTRICT p,
    const GT *LRCORE_RESTRICT gr, ST *LRCORE_RESTRICT m, ST *LRCORE_RESTRICT v,
    ST *LRCORE_RESTRICT vmax, const FN(moment_k) *k, T bc2_sqrt, T rc, T eps,
    T neg_step_size, lrcore__stream st, const unsigned variant)
{
    LRCORE__FP_STRICT
    const int l2 = variant & 1u, small = variant & 2u, amsgrad = variant & 4u,
              fmadiv = variant & 8u;
    (void)rc;
    for (size_t b0 = 0, b1; b0 < n; b0 = b1) {
        b1 = BLOCK(b0, n, gr, p, m, v, amsgrad ? vmax : 0);
        ELEMENTS(b0, b1,
            T pi, mi, vi;
            FN(moments_at)(k, l2, small, gr, p, m, v, i, st, lane_, pw_, ix_ TILE_ARGS, &pi, &mi, &vi);
            if (amsgrad) { vi = FN(max_nan)(LDS(vmax, i), vi); STS(vmax, i, vi, 3u); }
            const T a = SQRT(vi);
            const T denom = (fmadiv ? FN(quot_c)(a, bc2_sqrt, rc) : a / bc2_sqrt) + eps;
            STP(p, i, pi + (neg_step_size * mi) / denom);
        )
    }
}

/* Adam's loop with IEEE division (also run by lrcore_q8's fused 8-bit pass, where the
 * divider works in parallel with the encoder's vector ALU work). */
LRCORE_INLINE void FN(adam_loop)(size_t n, PT *LRCORE_RESTRICT p, const GT *LRCORE_RESTRICT gr,
    ST *LRCORE_RESTRICT m, ST *LRCORE_RESTRICT v, ST *LRCORE_RESTRICT vmax,
    const FN(moment_k) *k, T bc2_sqrt, T eps, T neg_step_size, lrcore__stream st,
    const unsigned variant)
{
    FN(adam_elements)(n, p, gr, m, v, vmax, k, bc2_sqrt, (T)0, eps, neg_step_size, st,
                      variant & ~8u);
}

/* Adam's loop of the kernels: the division-free quotient where FN(recip_ok) allows it
 * (variant bit 8; the same bits). */
LRCORE_INLINE void FN(adam_loop_q)(size_t n, PT *LRCORE_RESTRICT p,
    const GT *LRCORE_RESTRICT gr, ST *LRCORE_RESTRICT m, ST *LRCORE_RESTRICT v,
    ST *LRCORE_RESTRICT vmax, const FN(moment_k) *k, T bc2_sqrt, T eps, T neg_step_size,
    lrcore__stream st, const unsigned variant)
{
    if (FN(recip_ok)(bc2_sqrt))
        FN(adam_elements)(n, p, gr, m, v, vmax, k, bc2_sqrt, (T)1 / bc2_sqrt, eps,
                          neg_step_size, st, variant | 8u);
    else
        FN(adam_loop)(n, p, gr, m, v, vmax, k, bc2_sqrt, eps, neg_step_size, st, variant);
}

/* The per-call scalars of one Adam step (also run by lrcore_q8's fused 8-bit pass). */
typedef struct {
    FN(moment_k) k;
    T bc2_sqrt, eps, nss;
    unsigned variant;
} FN(adam_k);

static inline FN(adam_k) FN(adam_scalars)(const lrcore_adam_hp *hp, int amsgrad)
{
    FN(adam_k) a;
    const double step = (double)hp->step;
    const double bc1 = 1.0 - pow(hp->beta1, step);
    const double bc2 = 1.0 - pow(hp->beta2, step);
    a.k = FN(moment_scalars)(hp->lr, hp->beta1, hp->beta2, hp->weight_decay,
                             hp->decoupled_weight_decay, hp->grad_scale, hp->maximize);
    a.bc2_sqrt = (T)sqrt(bc2);
    a.eps = (T)hp->eps;
    a.nss = (T)(-(hp->lr / bc1));
    a.variant = a.k.l2 | a.k.small << 1 | (amsgrad != 0) << 2;
    return a;
}

static inline void FN(adam)(size_t n, PT *LRCORE_RESTRICT param, const GT *LRCORE_RESTRICT grad,
    ST *LRCORE_RESTRICT exp_avg, ST *LRCORE_RESTRICT exp_avg_sq,
    ST *LRCORE_RESTRICT max_exp_avg_sq, const lrcore_adam_hp *hp, lrcore__stream st)
{
    LRCORE__FP_STRICT
    const FN(adam_k) a = FN(adam_scalars)(hp, max_exp_avg_sq != 0);
    /* own loops: beta1 > 0.5 without and with L2 weight decay */
    DISPATCH_FEW(3, a.variant, 4u, 0u, 2u, 3u, FN(adam_loop_q), n, param, grad, exp_avg,
                 exp_avg_sq, max_exp_avg_sq, &a.k, a.bc2_sqrt, a.eps, a.nss, st)
}

/* ---- Adagrad -----------------------------------------------------------------------
 * g = s * grad
 * g = g + weight_decay * param                    if weight_decay != 0
 * clr = lr / (1 + (step - 1) * lr_decay)
 * state_sum = state_sum + g * g
 * param = param + ((-clr) * g) / (sqrt(state_sum) + eps)
 * variant bits: 1 weight decay */
LRCORE_INLINE void FN(adagrad_loop)(size_t n, PT *LRCORE_RESTRICT p,
    const GT *LRCORE_RESTRICT gr, ST *LRCORE_RESTRICT ssum, T s, T wd, T eps, T neg_clr,
    lrcore__stream st, const unsigned variant)
{
    LRCORE__FP_STRICT
    const int has_wd = variant & 1u;
    for (size_t b0 = 0, b1; b0 < n; b0 = b1) {
        b1 = BLOCK(b0, n, gr, p, ssum, 0, 0);
        ELEMENTS(b0, b1,
            const T pi = LDP(p, i);
            T g = LDG(gr, i) * s;
            if (has_wd) g = g + wd * pi;
            const T si = LDS(ssum, i) + g * g;
            STS(ssum, i, si, 1u);
            STP(p, i, pi + (neg_clr * g) / (SQRT(si) + eps));
        )
    }
}

static inline void FN(adagrad)(size_t n, PT *LRCORE_RESTRICT param,
    const GT *LRCORE_RESTRICT grad, ST *LRCORE_RESTRICT state_sum, const lrcore_adagrad_hp *hp,
    lrcore__stream st)
{
    LRCORE__FP_STRICT
    const double clr = hp->lr / (1.0 + (double)(hp->step - 1) * hp->lr_decay);
    const T s = (T)lrcore__grad_sign_scale(hp->grad_scale, hp->maximize);
    const T wd = (T)hp->weight_decay, eps = (T)hp->eps, nclr = (T)(-clr);
    const unsigned variant = hp->weight_decay != 0.0;
    LRCORE__DISPATCH(1, variant, FN(adagrad_loop), n, param, grad, state_sum, s, wd, eps, nclr,
                     st)
}

/* ---- RMSprop -----------------------------------------------------------------------
 * g = s * grad
 * g = g + weight_decay * param                    if weight_decay != 0
 * square_avg = square_avg * alpha + ((1 - alpha) * g) * g
 * if centered (grad_avg given):
 *     grad_avg = lerp(grad_avg, g, 1 - alpha)     (torch.lerp, as in Adam)
 *     avg = sqrt(square_avg - grad_avg * grad_avg) + eps
 * else: avg = sqrt(square_avg) + eps
 * if momentum > 0:
 *     buf = buf * momentum + g / avg
 *     param = param + (-lr) * buf
 * else: param = param + ((-lr) * g) / avg
 * variant bits: 1 weight decay, 2 centered, 4 lerp weight < 0.5, 8 momentum
 * (states in kernel order: square_avg 1, momentum_buffer 2, grad_avg 3) */
LRCORE_INLINE void FN(rmsprop_loop)(size_t n, PT *LRCORE_RESTRICT p,
    const GT *LRCORE_RESTRICT gr, ST *LRCORE_RESTRICT sq, ST *LRCORE_RESTRICT buf,
    ST *LRCORE_RESTRICT ga, T s, T wd, T alpha, T one_minus_alpha, T one_minus_w, T eps, T mom,
    T neg_lr, lrcore__stream st, const unsigned variant)
{
    LRCORE__FP_STRICT
    const int has_wd = variant & 1u, centered = variant & 2u, small = variant & 4u,
              use_mom = variant & 8u;
    for (size_t b0 = 0, b1; b0 < n; b0 = b1) {
        b1 = BLOCK(b0, n, gr, p, sq, centered ? ga : 0, use_mom ? buf : 0);
        ELEMENTS(b0, b1,
            const T pi = LDP(p, i);
            T g = LDG(gr, i) * s;
            if (has_wd) g = g + wd * pi;
            const T sqi = LDS(sq, i) * alpha + (one_minus_alpha * g) * g;
            STS(sq, i, sqi, 1u);
            T avg;
            if (centered) {
                const T gai = FN(lerp)(LDS(ga, i), g, one_minus_alpha, one_minus_w, small);
                STS(ga, i, gai, 3u);
                avg = SQRT(sqi - gai * gai) + eps;
            } else {
                avg = SQRT(sqi) + eps;
            }
            if (use_mom) {
                const T bi = LDS(buf, i) * mom + g / avg;
                STS(buf, i, bi, 2u);
                STP(p, i, pi + neg_lr * bi);
            } else {
                STP(p, i, pi + (neg_lr * g) / avg);
            }
        )
    }
}

static inline void FN(rmsprop)(size_t n, PT *LRCORE_RESTRICT param,
    const GT *LRCORE_RESTRICT grad, ST *LRCORE_RESTRICT square_avg,
    ST *LRCORE_RESTRICT momentum_buffer, ST *LRCORE_RESTRICT grad_avg,
    const lrcore_rmsprop_hp *hp, lrcore__stream st)
{
    LRCORE__FP_STRICT
    const T s = (T)lrcore__grad_sign_scale(hp->grad_scale, hp->maximize);
    const T wd = (T)hp->weight_decay, a = (T)hp->alpha;
    const T oma = (T)(1.0 - hp->alpha), omw = (T)1 - oma;
    const T eps = (T)hp->eps, mom = (T)hp->momentum, nlr = (T)(-hp->lr);
    const unsigned variant = (hp->weight_decay != 0.0) | (grad_avg != 0) << 1
                           | (fabs((double)oma) < 0.5) << 2 | (hp->momentum > 0.0) << 3;
    /* own loops: plain, and with momentum */
    DISPATCH_FEW(4, variant, 2u, 8u, 0u, 8u, FN(rmsprop_loop), n, param, grad, square_avg,
                 momentum_buffer, grad_avg, s, wd, a, oma, omw, eps, mom, nlr, st)
}

/* ---- Adadelta ----------------------------------------------------------------------
 * g = s * grad
 * g = g + weight_decay * param                    if weight_decay != 0
 * square_avg = square_avg * rho + ((1 - rho) * g) * g
 * delta = (sqrt(acc_delta + eps) / sqrt(square_avg + eps)) * g
 * acc_delta = acc_delta * rho + ((1 - rho) * delta) * delta
 * param = param + (-lr) * delta
 * variant bits: 1 weight decay */
LRCORE_INLINE void FN(adadelta_loop)(size_t n, PT *LRCORE_RESTRICT p,
    const GT *LRCORE_RESTRICT gr, ST *LRCORE_RESTRICT sq, ST *LRCORE_RESTRICT acc, T s, T wd,
    T rho, T one_minus_rho, T eps, T neg_lr, lrcore__stream st, const unsigned variant)
{
    LRCORE__FP_STRICT
    const int has_wd = variant & 1u;
    for (size_t b0 = 0, b1; b0 < n; b0 = b1) {
        b1 = BLOCK(b0, n, gr, p, sq, acc, 0);
        ELEMENTS(b0, b1,
            const T pi = LDP(p, i), ai = LDS(acc, i);
            T g = LDG(gr, i) * s;
            if (has_wd) g = g + wd * pi;
            const T sqi = LDS(sq, i) * rho + (one_minus_rho * g) * g;
            STS(sq, i, sqi, 1u);
            const T delta = (SQRT(ai + eps) / SQRT(sqi + eps)) * g;
            STS(acc, i, ai * rho + (one_minus_rho * delta) * delta, 2u);
            STP(p, i, pi + neg_lr * delta);
        )
    }
}

static inline void FN(adadelta)(size_t n, PT *LRCORE_RESTRICT param,
    const GT *LRCORE_RESTRICT grad, ST *LRCORE_RESTRICT square_avg,
    ST *LRCORE_RESTRICT acc_delta, const lrcore_adadelta_hp *hp, lrcore__stream st)
{
    LRCORE__FP_STRICT
    const T s = (T)lrcore__grad_sign_scale(hp->grad_scale, hp->maximize);
    const T wd = (T)hp->weight_decay, rho = (T)hp->rho, omr = (T)(1.0 - hp->rho);
    const T eps = (T)hp->eps, nlr = (T)(-hp->lr);
    const unsigned variant = hp->weight_decay != 0.0;
    LRCORE__DISPATCH(1, variant, FN(adadelta_loop), n, param, grad, square_avg, acc_delta,
                     s, wd, rho, omr, eps, nlr, st)
}

/* ---- Adamax (torch.optim.Adamax) ---------------------------------------------------
 * g = s * grad
 * g = g + weight_decay * param                    if weight_decay != 0
 * exp_avg = lerp(exp_avg, g, 1 - beta1)
 * exp_inf = max(exp_inf * beta2, |g| + eps)       (torch.maximum: NaN wins)
 * param = param + ((-lr / (1 - beta1**step)) * exp_avg) / exp_inf
 * variant bits: 1 weight decay, 2 lerp weight < 0.5 */
LRCORE_INLINE void FN(adamax_loop)(size_t n, PT *LRCORE_RESTRICT p,
    const GT *LRCORE_RESTRICT gr, ST *LRCORE_RESTRICT m, ST *LRCORE_RESTRICT u,
    const FN(moment_k) *k, T eps, T neg_clr, lrcore__stream st, const unsigned variant)
{
    LRCORE__FP_STRICT
    const int has_wd = variant & 1u, small = variant & 2u;
    for (size_t b0 = 0, b1; b0 < n; b0 = b1) {
        b1 = BLOCK(b0, n, gr, p, m, u, 0);
        ELEMENTS(b0, b1,
            const T pi = LDP(p, i);
            T g = LDG(gr, i) * k->s;
            if (has_wd) g = g + k->wd * pi;
            const T mi = FN(lerp)(LDS(m, i), g, k->w, k->one_minus_w, small);
            const T ui = FN(max_nan)(LDS(u, i) * k->beta2, LRCORE__FABS(g) + eps);
            STS(m, i, mi, 1u);
            STS(u, i, ui, 2u);
            STP(p, i, pi + (neg_clr * mi) / ui);
        )
    }
}

static inline void FN(adamax)(size_t n, PT *LRCORE_RESTRICT param,
    const GT *LRCORE_RESTRICT grad, ST *LRCORE_RESTRICT exp_avg, ST *LRCORE_RESTRICT exp_inf,
    const lrcore_adamax_hp *hp, lrcore__stream st)
{
    LRCORE__FP_STRICT
    const double clr = hp->lr / (1.0 - pow(hp->beta1, (double)hp->step));
    const FN(moment_k) k = FN(moment_scalars)(hp->lr, hp->beta1, hp->beta2, hp->weight_decay,
        0, hp->grad_scale, hp->maximize);
    const T eps = (T)hp->eps, nclr = (T)(-clr);
    const unsigned variant = k.l2 | k.small << 1;
    /* own loop: beta1 > 0.5, no weight decay */
    DISPATCH_FEW(2, variant, 0u, 0u, 2u, 2u, FN(adamax_loop), n, param, grad, exp_avg, exp_inf,
                 &k, eps, nclr, st)
}

/* ---- NAdam / NAdamW (torch.optim.NAdam) --------------------------------------------
 * (moments above: g, decoupled decay or L2, exp_avg, exp_avg_sq)
 * mu = beta1 * (1 - 0.5 * 0.96**(step * momentum_decay)), mu_next likewise at step + 1
 * denom = sqrt(exp_avg_sq / (1 - beta2**step)) + eps
 * param = param + ((-lr * (1 - mu) / (1 - mu_product)) * g) / denom
 * param = param + ((-lr * mu_next / (1 - mu_product * mu_next)) * exp_avg) / denom
 * variant bits: 1 L2 weight decay, 2 lerp weight < 0.5 */
LRCORE_INLINE void FN(nadam_loop)(size_t n, PT *LRCORE_RESTRICT p, const GT *LRCORE_RESTRICT gr,
    ST *LRCORE_RESTRICT m, ST *LRCORE_RESTRICT v, const FN(moment_k) *k, T bc2, T eps,
    T coef_grad, T coef_avg, lrcore__stream st, const unsigned variant)
{
    LRCORE__FP_STRICT
    const int l2 = variant & 1u, small = variant & 2u;
    for (size_t b0 = 0, b1; b0 < n; b0 = b1) {
        b1 = BLOCK(b0, n, gr, p, m, v, 0);
        ELEMENTS(b0, b1,
            T pi, mi, vi;
            const T g = FN(moments_at)(k, l2, small, gr, p, m, v, i, st, lane_, pw_, ix_ TILE_ARGS,
                                       &pi, &mi, &vi);
            const T denom = SQRT(vi / bc2) + eps;
            pi = pi + (coef_grad * g) / denom;
            STP(p, i, pi + (coef_avg * mi) / denom);
        )
    }
}

static inline void FN(nadam)(size_t n, PT *LRCORE_RESTRICT param, const GT *LRCORE_RESTRICT grad,
    ST *LRCORE_RESTRICT exp_avg, ST *LRCORE_RESTRICT exp_avg_sq, const lrcore_nadam_hp *hp,
    lrcore__stream st)
{
    LRCORE__FP_STRICT
    const double bc2 = 1.0 - pow(hp->beta2, (double)hp->step);
    const double mu = lrcore_nadam_mu(hp->beta1, hp->momentum_decay, hp->step);
    const double mu_next = lrcore_nadam_mu(hp->beta1, hp->momentum_decay, hp->step + 1);
    const double coef_grad = -hp->lr * (1.0 - mu) / (1.0 - hp->mu_product);
    const double coef_avg = (-hp->lr * mu_next) / (1.0 - hp->mu_product * mu_next);
    const FN(moment_k) k = FN(moment_scalars)(hp->lr, hp->beta1, hp->beta2, hp->weight_decay,
        hp->decoupled_weight_decay, hp->grad_scale, hp->maximize);
    const unsigned variant = k.l2 | k.small << 1;
    /* own loop: beta1 > 0.5, no L2 weight decay */
    DISPATCH_FEW(2, variant, 0u, 0u, 2u, 2u, FN(nadam_loop), n, param, grad, exp_avg,
                 exp_avg_sq, &k, (T)bc2, (T)hp->eps, (T)coef_grad, (T)coef_avg, st)
}

/* ---- RAdam (torch.optim.RAdam) -----------------------------------------------------
 * (moments above: g, decoupled decay or L2, exp_avg, exp_avg_sq)
 * m = exp_avg / (1 - beta1**step)
 * rho_inf = 2 / (1 - beta2) - 1;  rho = rho_inf - 2 * step * beta2**step / (1 - beta2**step)
 * if rho > 5:
 *     rect = ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)) ** 0.5
 *     adaptive = (1 / (sqrt(exp_avg_sq) + eps)) * (1 - beta2**step) ** 0.5
 *     param = param - ((m * lr) * adaptive) * rect
 * else: param = param - m * lr
 * variant bits: 1 L2 weight decay, 2 lerp weight < 0.5, 4 rectified (rho > 5) */
LRCORE_INLINE void FN(radam_loop)(size_t n, PT *LRCORE_RESTRICT p, const GT *LRCORE_RESTRICT gr,
    ST *LRCORE_RESTRICT m, ST *LRCORE_RESTRICT v, const FN(moment_k) *k, T bc1, T lr,
    T bc2_sqrt, T eps, T rect, lrcore__stream st, const unsigned variant)
{
    LRCORE__FP_STRICT
    const int l2 = variant & 1u, small = variant & 2u, rectified = variant & 4u;
    for (size_t b0 = 0, b1; b0 < n; b0 = b1) {
        b1 = BLOCK(b0, n, gr, p, m, v, 0);
        ELEMENTS(b0, b1,
            T pi, mi, vi;
            FN(moments_at)(k, l2, small, gr, p, m, v, i, st, lane_, pw_, ix_ TILE_ARGS, &pi, &mi, &vi);
            T u = (mi / bc1) * lr;
            if (rectified) u = (u * (((T)1 / (SQRT(vi) + eps)) * bc2_sqrt)) * rect;
            STP(p, i, pi - u);
        )
    }
}

static inline void FN(radam)(size_t n, PT *LRCORE_RESTRICT param, const GT *LRCORE_RESTRICT grad,
    ST *LRCORE_RESTRICT exp_avg, ST *LRCORE_RESTRICT exp_avg_sq, const lrcore_radam_hp *hp,
    lrcore__stream st)
{
    LRCORE__FP_STRICT
    const double step = (double)hp->step;
    const double bc1 = 1.0 - pow(hp->beta1, step);
    const double b2t = pow(hp->beta2, step), bc2 = 1.0 - b2t;
    const double rho_inf = 2.0 / (1.0 - hp->beta2) - 1.0;
    const double rho = rho_inf - 2.0 * step * b2t / bc2;
    const int rectified = rho > 5.0;
    const double rect = rectified ? pow((rho - 4.0) * (rho - 2.0) * rho_inf
                                        / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho), 0.5) : 1.0;
    const FN(moment_k) k = FN(moment_scalars)(hp->lr, hp->beta1, hp->beta2, hp->weight_decay,
        hp->decoupled_weight_decay, hp->grad_scale, hp->maximize);
    const unsigned variant = k.l2 | k.small << 1 | rectified << 2;
    /* own loops: beta1 > 0.5, no L2 weight decay, rectified or not */
    DISPATCH_FEW(3, variant, 4u, 0u, 6u, 2u, FN(radam_loop), n, param, grad, exp_avg,
                 exp_avg_sq, &k, (T)bc1, (T)hp->lr, (T)pow(bc2, 0.5), (T)hp->eps, (T)rect, st)
}

/* ---- Lion (Chen et al. 2023; timm's and optax's order) ------------------------------
 * g = s * grad
 * param = param * (1 - lr * weight_decay)         (decoupled)
 * c = exp_avg * beta1 + (1 - beta1) * g
 * param = param - lr * sign(c)                    sign(0) = 0, sign(NaN) = NaN
 * exp_avg = exp_avg * beta2 + (1 - beta2) * g
 * variant bits: 1 weight decay (else the factor 1 is skipped), 2 grad_scale != 1 (else
 * g = grad: no multiply; both skips are exact) */
LRCORE_INLINE void FN(lion_loop)(size_t n, PT *LRCORE_RESTRICT p, const GT *LRCORE_RESTRICT gr,
    ST *LRCORE_RESTRICT m, T s, T decay, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2,
    T lr, lrcore__stream st, const unsigned variant)
{
    LRCORE__FP_STRICT
    const int has_wd = variant & 1u, scaled = variant & 2u;
    for (size_t b0 = 0, b1; b0 < n; b0 = b1) {
        b1 = BLOCK(b0, n, gr, p, m, 0, 0);
        ELEMENTS(b0, b1,
            const T gi = LDG(gr, i), mi = LDS(m, i), p0 = LDP(p, i);
            const T g = scaled ? gi * s : gi;
            const T c = mi * beta1 + one_minus_beta1 * g;
            const T pi = has_wd ? p0 * decay : p0;
            STP(p, i, pi - FN(lion_update)(c, lr));
            STS(m, i, mi * beta2 + one_minus_beta2 * g, 1u);
        )
    }
}

static inline void FN(lion)(size_t n, PT *LRCORE_RESTRICT param, const GT *LRCORE_RESTRICT grad,
    ST *LRCORE_RESTRICT exp_avg, const lrcore_lion_hp *hp, lrcore__stream st)
{
    LRCORE__FP_STRICT
    const T s = (T)lrcore__grad_sign_scale(hp->grad_scale, hp->maximize);
    const unsigned variant = (hp->weight_decay != 0.0) | (s != (T)1) << 1;
    /* own loops: grad_scale 1, with and without weight decay */
    DISPATCH_FEW(2, variant, 0u, 0u, 0u, 1u, FN(lion_loop), n, param, grad, exp_avg, s,
                     (T)(1.0 - hp->lr * hp->weight_decay), (T)hp->beta1, (T)(1.0 - hp->beta1),
                     (T)hp->beta2, (T)(1.0 - hp->beta2), (T)hp->lr, st)
}

/* ---- Sum of squares in double, for gradient clipping by global norm ----------------
 *   acc[k] += x[i]^2 for i = k (mod 8), then ((acc0 + acc1) + (acc2 + acc3)) + ...
 * Eight independent accumulators let the compiler vectorise without reassociating, so
 * the result is the same on every instruction set. Non-finite x gives a non-finite sum
 * (a float32 input can never overflow the double sum). */
static inline double FN(sum_squares)(size_t n, const GT *LRCORE_RESTRICT x)
{
    LRCORE__FP_STRICT
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const size_t blocks = n / 8;
    for (size_t b = 0; b < blocks; b++)
        for (int k = 0; k < 8; k++) {
            const double v = (double)LDG1(x, 8 * b + k);
            acc[k] += v * v;
        }
    for (size_t i = 8 * blocks; i < n; i++) {
        const double v = (double)LDG1(x, i);
        acc[i - 8 * blocks] += v * v;
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

#undef BLOCK
#undef ELEMENTS
#undef TILE_IN_P
#undef TILE_PARAMS
#undef TILE_ARGS
#undef TILE_OUT_P
#undef DISPATCH_FEW
#undef STS
#undef STP
#undef LDS
#undef LDG
#undef LDG1
#undef LDP
#undef ST
#undef GT
#undef PT
#undef FN
#undef SQRT
#undef T
#undef LRCORE__T
#undef LRCORE__SUFFIX
#undef LRCORE__SQRT
#undef LRCORE__FABS
#undef LRCORE__COPYSIGN
#undef LRCORE__FMA
#undef LRCORE__P
#undef LRCORE__G
#undef LRCORE__S
#undef LRCORE__PAIRED
#undef LRCORE__TILE_P
#undef LRCORE__TILE_G
