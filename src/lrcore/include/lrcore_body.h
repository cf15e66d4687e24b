/*
 * lrcore_body.h -- the update loops of lrcore.h for one element type. Private:
 * lrcore.h includes it once per type with LRCORE__T (the element type),
 * LRCORE__SUFFIX (f32, f64), LRCORE__SQRT and LRCORE__FABS defined, and the
 * public kernels lrcore_<rule>_<suffix> call the lrcore__<rule>_<suffix> below.
 *
 * For each rule: the math (as in lrcore/rules.py and lrcore/reference.py), the
 * loop, which takes the options that select a variant as the bit set `variant`,
 * and the per-call part, which forms the step's scalars in double, rounds each
 * once to T, and dispatches to the loop compiled for the options in use.
 * s = grad_scale, negated when maximize.
 */
#define T LRCORE__T
#define SQRT LRCORE__SQRT
#define FN(name) LRCORE__CAT(LRCORE__CAT(lrcore__, name), LRCORE__CAT(_, LRCORE__SUFFIX))

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

/* Lion's update term, neg_lr * sign(c) with sign(c) = c for +-0 and NaN, without a
 * sign: copysign(lr, -c) where c is non-zero and not NaN (the same value, exactly), and
 * neg_lr * c elsewhere: two compares and selects, so it vectorises on every ISA. */
LRCORE_INLINE T FN(lion_update)(T c, T lr, T neg_lr) {
    LRCORE__FP_STRICT
    const T nonzero = LRCORE__COPYSIGN(lr, -c), other = neg_lr * c;
    return c == c ? (c != 0 ? nonzero : other) : other;   /* this shape gcc if-converts */
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
 * stores exp_avg and exp_avg_sq, returns g; *pi, *mi, *vi receive the new param (not yet
 * stored), exp_avg and exp_avg_sq. */
LRCORE_INLINE T FN(moments)(const FN(moment_k) *k, const int l2, const int small,
    T grad, T param, T *exp_avg, T *exp_avg_sq, T *pi, T *mi, T *vi)
{
    LRCORE__FP_STRICT
    T g = grad * k->s;
    const T p = param * k->decay;
    if (l2) g = g + k->wd * p;
    *pi = p;
    *mi = *exp_avg = FN(lerp)(*exp_avg, g, k->w, k->one_minus_w, small);
    *vi = *exp_avg_sq = *exp_avg_sq * k->beta2 + (k->one_minus_beta2 * g) * g;
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
LRCORE_INLINE void FN(sgd_loop)(size_t n, T *LRCORE_RESTRICT p, const T *LRCORE_RESTRICT gr,
    T *LRCORE_RESTRICT buf, T s, T wd, T mom, T one_minus_damp, T neg_lr, const unsigned variant)
{
    LRCORE__FP_STRICT
    const int has_wd = variant & 1u, use_mom = variant & 2u, init = variant & 4u,
              nesterov = variant & 8u;
    for (size_t b0 = 0, b1; b0 < n; b0 = b1) {
        b1 = lrcore__block(b0, n, sizeof(T), gr, p, use_mom ? buf : 0, 0, 0);
        for (size_t i = b0; i < b1; i++) {
            T g = gr[i] * s;
            if (has_wd) g = g + wd * p[i];
            if (use_mom) {
                buf[i] = init ? g : buf[i] * mom + one_minus_damp * g;
                g = nesterov ? g + mom * buf[i] : buf[i];
            }
            p[i] = p[i] + neg_lr * g;
        }
    }
}

static inline void FN(sgd)(size_t n, T *LRCORE_RESTRICT param, const T *LRCORE_RESTRICT grad,
    T *LRCORE_RESTRICT momentum_buffer, const lrcore_sgd_hp *hp)
{
    LRCORE__FP_STRICT
    const T s = (T)lrcore__grad_sign_scale(hp->grad_scale, hp->maximize);
    const T wd = (T)hp->weight_decay, mom = (T)hp->momentum;
    const T omd = (T)(1.0 - hp->dampening), neg_lr = (T)(-hp->lr);
    const unsigned use_mom = hp->momentum != 0.0;
    const unsigned variant = (hp->weight_decay != 0.0) | use_mom << 1
                           | (use_mom && hp->init_buffer) << 2 | (use_mom && hp->nesterov) << 3;
    LRCORE__DISPATCH(4, variant, FN(sgd_loop), n, param, grad, momentum_buffer,
                     s, wd, mom, omd, neg_lr)
}

/* ---- Adam / AdamW / AMSGrad --------------------------------------------------------
 * (moments above: g, decoupled decay or L2, exp_avg, exp_avg_sq)
 * v = max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq)    if AMSGrad (torch.maximum)
 * v = exp_avg_sq                                          otherwise
 * denom = sqrt(v) / sqrt(1 - beta2**step) + eps
 * param = param + ((-lr / (1 - beta1**step)) * exp_avg) / denom   (torch.addcdiv order)
 * variant bits: 1 L2 weight decay, 2 lerp weight < 0.5, 4 AMSGrad */
LRCORE_INLINE void FN(adam_loop)(size_t n, T *LRCORE_RESTRICT p, const T *LRCORE_RESTRICT gr,
    T *LRCORE_RESTRICT m, T *LRCORE_RESTRICT v, T *LRCORE_RESTRICT vmax, const FN(moment_k) *k,
    T bc2_sqrt, T eps, T neg_step_size, const unsigned variant)
{
    LRCORE__FP_STRICT
    const int l2 = variant & 1u, small = variant & 2u, amsgrad = variant & 4u;
    for (size_t b0 = 0, b1; b0 < n; b0 = b1) {
        b1 = lrcore__block(b0, n, sizeof(T), gr, p, m, v, amsgrad ? vmax : 0);
        for (size_t i = b0; i < b1; i++) {
            T pi, mi, vi;
            FN(moments)(k, l2, small, gr[i], p[i], &m[i], &v[i], &pi, &mi, &vi);
            if (amsgrad) { vi = FN(max_nan)(vmax[i], vi); vmax[i] = vi; }
            const T denom = SQRT(vi) / bc2_sqrt + eps;
            p[i] = pi + (neg_step_size * mi) / denom;
        }
    }
}

static inline void FN(adam)(size_t n, T *LRCORE_RESTRICT param, const T *LRCORE_RESTRICT grad,
    T *LRCORE_RESTRICT exp_avg, T *LRCORE_RESTRICT exp_avg_sq,
    T *LRCORE_RESTRICT max_exp_avg_sq, const lrcore_adam_hp *hp)
{
    LRCORE__FP_STRICT
    const double step = (double)hp->step;
    const double bc1 = 1.0 - pow(hp->beta1, step);
    const double bc2 = 1.0 - pow(hp->beta2, step);
    const FN(moment_k) k = FN(moment_scalars)(hp->lr, hp->beta1, hp->beta2, hp->weight_decay,
        hp->decoupled_weight_decay, hp->grad_scale, hp->maximize);
    const T bc2_sqrt = (T)sqrt(bc2), eps = (T)hp->eps;
    const T nss = (T)(-(hp->lr / bc1));
    const unsigned variant = k.l2 | k.small << 1 | (max_exp_avg_sq != 0) << 2;
    LRCORE__DISPATCH(3, variant, FN(adam_loop), n, param, grad, exp_avg, exp_avg_sq,
                     max_exp_avg_sq, &k, bc2_sqrt, eps, nss)
}

/* ---- Adagrad -----------------------------------------------------------------------
 * g = s * grad
 * g = g + weight_decay * param                    if weight_decay != 0
 * clr = lr / (1 + (step - 1) * lr_decay)
 * state_sum = state_sum + g * g
 * param = param + ((-clr) * g) / (sqrt(state_sum) + eps)
 * variant bits: 1 weight decay */
LRCORE_INLINE void FN(adagrad_loop)(size_t n, T *LRCORE_RESTRICT p,
    const T *LRCORE_RESTRICT gr, T *LRCORE_RESTRICT ssum, T s, T wd, T eps, T neg_clr,
    const unsigned variant)
{
    LRCORE__FP_STRICT
    const int has_wd = variant & 1u;
    for (size_t b0 = 0, b1; b0 < n; b0 = b1) {
        b1 = lrcore__block(b0, n, sizeof(T), gr, p, ssum, 0, 0);
        for (size_t i = b0; i < b1; i++) {
            T g = gr[i] * s;
            if (has_wd) g = g + wd * p[i];
            const T si = ssum[i] + g * g;
            ssum[i] = si;
            p[i] = p[i] + (neg_clr * g) / (SQRT(si) + eps);
        }
    }
}

static inline void FN(adagrad)(size_t n, T *LRCORE_RESTRICT param,
    const T *LRCORE_RESTRICT grad, T *LRCORE_RESTRICT state_sum, const lrcore_adagrad_hp *hp)
{
    LRCORE__FP_STRICT
    const double clr = hp->lr / (1.0 + (double)(hp->step - 1) * hp->lr_decay);
    const T s = (T)lrcore__grad_sign_scale(hp->grad_scale, hp->maximize);
    const T wd = (T)hp->weight_decay, eps = (T)hp->eps, nclr = (T)(-clr);
    const unsigned variant = hp->weight_decay != 0.0;
    LRCORE__DISPATCH(1, variant, FN(adagrad_loop), n, param, grad, state_sum, s, wd, eps, nclr)
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
 * variant bits: 1 weight decay, 2 centered, 4 lerp weight < 0.5, 8 momentum */
LRCORE_INLINE void FN(rmsprop_loop)(size_t n, T *LRCORE_RESTRICT p,
    const T *LRCORE_RESTRICT gr, T *LRCORE_RESTRICT sq, T *LRCORE_RESTRICT buf,
    T *LRCORE_RESTRICT ga, T s, T wd, T alpha, T one_minus_alpha, T one_minus_w, T eps, T mom,
    T neg_lr, const unsigned variant)
{
    LRCORE__FP_STRICT
    const int has_wd = variant & 1u, centered = variant & 2u, small = variant & 4u,
              use_mom = variant & 8u;
    for (size_t b0 = 0, b1; b0 < n; b0 = b1) {
        b1 = lrcore__block(b0, n, sizeof(T), gr, p, sq, centered ? ga : 0,
                         use_mom ? buf : 0);
        for (size_t i = b0; i < b1; i++) {
            T g = gr[i] * s;
            if (has_wd) g = g + wd * p[i];
            const T sqi = sq[i] * alpha + (one_minus_alpha * g) * g;
            sq[i] = sqi;
            T avg;
            if (centered) {
                const T gai = FN(lerp)(ga[i], g, one_minus_alpha, one_minus_w, small);
                ga[i] = gai;
                avg = SQRT(sqi - gai * gai) + eps;
            } else {
                avg = SQRT(sqi) + eps;
            }
            if (use_mom) {
                const T bi = buf[i] * mom + g / avg;
                buf[i] = bi;
                p[i] = p[i] + neg_lr * bi;
            } else {
                p[i] = p[i] + (neg_lr * g) / avg;
            }
        }
    }
}

static inline void FN(rmsprop)(size_t n, T *LRCORE_RESTRICT param,
    const T *LRCORE_RESTRICT grad, T *LRCORE_RESTRICT square_avg,
    T *LRCORE_RESTRICT momentum_buffer, T *LRCORE_RESTRICT grad_avg, const lrcore_rmsprop_hp *hp)
{
    LRCORE__FP_STRICT
    const T s = (T)lrcore__grad_sign_scale(hp->grad_scale, hp->maximize);
    const T wd = (T)hp->weight_decay, a = (T)hp->alpha;
    const T oma = (T)(1.0 - hp->alpha), omw = (T)1 - oma;
    const T eps = (T)hp->eps, mom = (T)hp->momentum, nlr = (T)(-hp->lr);
    const unsigned variant = (hp->weight_decay != 0.0) | (grad_avg != 0) << 1
                           | (fabs((double)oma) < 0.5) << 2 | (hp->momentum > 0.0) << 3;
    LRCORE__DISPATCH(4, variant, FN(rmsprop_loop), n, param, grad, square_avg, momentum_buffer,
                     grad_avg, s, wd, a, oma, omw, eps, mom, nlr)
}

/* ---- Adadelta ----------------------------------------------------------------------
 * g = s * grad
 * g = g + weight_decay * param                    if weight_decay != 0
 * square_avg = square_avg * rho + ((1 - rho) * g) * g
 * delta = (sqrt(acc_delta + eps) / sqrt(square_avg + eps)) * g
 * acc_delta = acc_delta * rho + ((1 - rho) * delta) * delta
 * param = param + (-lr) * delta
 * variant bits: 1 weight decay */
LRCORE_INLINE void FN(adadelta_loop)(size_t n, T *LRCORE_RESTRICT p,
    const T *LRCORE_RESTRICT gr, T *LRCORE_RESTRICT sq, T *LRCORE_RESTRICT acc, T s, T wd,
    T rho, T one_minus_rho, T eps, T neg_lr, const unsigned variant)
{
    LRCORE__FP_STRICT
    const int has_wd = variant & 1u;
    for (size_t b0 = 0, b1; b0 < n; b0 = b1) {
        b1 = lrcore__block(b0, n, sizeof(T), gr, p, sq, acc, 0);
        for (size_t i = b0; i < b1; i++) {
            T g = gr[i] * s;
            if (has_wd) g = g + wd * p[i];
            const T sqi = sq[i] * rho + (one_minus_rho * g) * g;
            sq[i] = sqi;
            const T delta = (SQRT(acc[i] + eps) / SQRT(sqi + eps)) * g;
            acc[i] = acc[i] * rho + (one_minus_rho * delta) * delta;
            p[i] = p[i] + neg_lr * delta;
        }
    }
}

static inline void FN(adadelta)(size_t n, T *LRCORE_RESTRICT param,
    const T *LRCORE_RESTRICT grad, T *LRCORE_RESTRICT square_avg,
    T *LRCORE_RESTRICT acc_delta, const lrcore_adadelta_hp *hp)
{
    LRCORE__FP_STRICT
    const T s = (T)lrcore__grad_sign_scale(hp->grad_scale, hp->maximize);
    const T wd = (T)hp->weight_decay, rho = (T)hp->rho, omr = (T)(1.0 - hp->rho);
    const T eps = (T)hp->eps, nlr = (T)(-hp->lr);
    const unsigned variant = hp->weight_decay != 0.0;
    LRCORE__DISPATCH(1, variant, FN(adadelta_loop), n, param, grad, square_avg, acc_delta,
                     s, wd, rho, omr, eps, nlr)
}

/* ---- Adamax (torch.optim.Adamax) ---------------------------------------------------
 * g = s * grad
 * g = g + weight_decay * param                    if weight_decay != 0
 * exp_avg = lerp(exp_avg, g, 1 - beta1)
 * exp_inf = max(exp_inf * beta2, |g| + eps)       (torch.maximum: NaN wins)
 * param = param + ((-lr / (1 - beta1**step)) * exp_avg) / exp_inf
 * variant bits: 1 weight decay, 2 lerp weight < 0.5 */
LRCORE_INLINE void FN(adamax_loop)(size_t n, T *LRCORE_RESTRICT p,
    const T *LRCORE_RESTRICT gr, T *LRCORE_RESTRICT m, T *LRCORE_RESTRICT u,
    const FN(moment_k) *k, T eps, T neg_clr, const unsigned variant)
{
    LRCORE__FP_STRICT
    const int has_wd = variant & 1u, small = variant & 2u;
    for (size_t b0 = 0, b1; b0 < n; b0 = b1) {
        b1 = lrcore__block(b0, n, sizeof(T), gr, p, m, u, 0);
        for (size_t i = b0; i < b1; i++) {
            T g = gr[i] * k->s;
            if (has_wd) g = g + k->wd * p[i];
            const T mi = FN(lerp)(m[i], g, k->w, k->one_minus_w, small);
            const T ui = FN(max_nan)(u[i] * k->beta2, LRCORE__FABS(g) + eps);
            m[i] = mi;
            u[i] = ui;
            p[i] = p[i] + (neg_clr * mi) / ui;
        }
    }
}

static inline void FN(adamax)(size_t n, T *LRCORE_RESTRICT param,
    const T *LRCORE_RESTRICT grad, T *LRCORE_RESTRICT exp_avg, T *LRCORE_RESTRICT exp_inf,
    const lrcore_adamax_hp *hp)
{
    LRCORE__FP_STRICT
    const double clr = hp->lr / (1.0 - pow(hp->beta1, (double)hp->step));
    const FN(moment_k) k = FN(moment_scalars)(hp->lr, hp->beta1, hp->beta2, hp->weight_decay,
        0, hp->grad_scale, hp->maximize);
    const T eps = (T)hp->eps, nclr = (T)(-clr);
    const unsigned variant = k.l2 | k.small << 1;
    LRCORE__DISPATCH(2, variant, FN(adamax_loop), n, param, grad, exp_avg, exp_inf, &k, eps, nclr)
}

/* ---- NAdam / NAdamW (torch.optim.NAdam) --------------------------------------------
 * (moments above: g, decoupled decay or L2, exp_avg, exp_avg_sq)
 * mu = beta1 * (1 - 0.5 * 0.96**(step * momentum_decay)), mu_next likewise at step + 1
 * denom = sqrt(exp_avg_sq / (1 - beta2**step)) + eps
 * param = param + ((-lr * (1 - mu) / (1 - mu_product)) * g) / denom
 * param = param + ((-lr * mu_next / (1 - mu_product * mu_next)) * exp_avg) / denom
 * variant bits: 1 L2 weight decay, 2 lerp weight < 0.5 */
LRCORE_INLINE void FN(nadam_loop)(size_t n, T *LRCORE_RESTRICT p, const T *LRCORE_RESTRICT gr,
    T *LRCORE_RESTRICT m, T *LRCORE_RESTRICT v, const FN(moment_k) *k, T bc2, T eps,
    T coef_grad, T coef_avg, const unsigned variant)
{
    LRCORE__FP_STRICT
    const int l2 = variant & 1u, small = variant & 2u;
    for (size_t b0 = 0, b1; b0 < n; b0 = b1) {
        b1 = lrcore__block(b0, n, sizeof(T), gr, p, m, v, 0);
        for (size_t i = b0; i < b1; i++) {
            T pi, mi, vi;
            const T g = FN(moments)(k, l2, small, gr[i], p[i], &m[i], &v[i], &pi, &mi, &vi);
            const T denom = SQRT(vi / bc2) + eps;
            pi = pi + (coef_grad * g) / denom;
            p[i] = pi + (coef_avg * mi) / denom;
        }
    }
}

static inline void FN(nadam)(size_t n, T *LRCORE_RESTRICT param, const T *LRCORE_RESTRICT grad,
    T *LRCORE_RESTRICT exp_avg, T *LRCORE_RESTRICT exp_avg_sq, const lrcore_nadam_hp *hp)
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
    LRCORE__DISPATCH(2, variant, FN(nadam_loop), n, param, grad, exp_avg, exp_avg_sq, &k,
                     (T)bc2, (T)hp->eps, (T)coef_grad, (T)coef_avg)
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
LRCORE_INLINE void FN(radam_loop)(size_t n, T *LRCORE_RESTRICT p, const T *LRCORE_RESTRICT gr,
    T *LRCORE_RESTRICT m, T *LRCORE_RESTRICT v, const FN(moment_k) *k, T bc1, T lr,
    T bc2_sqrt, T eps, T rect, const unsigned variant)
{
    LRCORE__FP_STRICT
    const int l2 = variant & 1u, small = variant & 2u, rectified = variant & 4u;
    for (size_t b0 = 0, b1; b0 < n; b0 = b1) {
        b1 = lrcore__block(b0, n, sizeof(T), gr, p, m, v, 0);
        for (size_t i = b0; i < b1; i++) {
            T pi, mi, vi;
            FN(moments)(k, l2, small, gr[i], p[i], &m[i], &v[i], &pi, &mi, &vi);
            T u = (mi / bc1) * lr;
            if (rectified) u = (u * (((T)1 / (SQRT(vi) + eps)) * bc2_sqrt)) * rect;
            p[i] = pi - u;
        }
    }
}

static inline void FN(radam)(size_t n, T *LRCORE_RESTRICT param, const T *LRCORE_RESTRICT grad,
    T *LRCORE_RESTRICT exp_avg, T *LRCORE_RESTRICT exp_avg_sq, const lrcore_radam_hp *hp)
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
    LRCORE__DISPATCH(3, variant, FN(radam_loop), n, param, grad, exp_avg, exp_avg_sq, &k,
                     (T)bc1, (T)hp->lr, (T)pow(bc2, 0.5), (T)hp->eps, (T)rect)
}

/* ---- Lion (Chen et al. 2023; timm's and optax's order) ------------------------------
 * g = s * grad
 * param = param * (1 - lr * weight_decay)         (decoupled)
 * c = exp_avg * beta1 + (1 - beta1) * g
 * param = param + (-lr) * sign(c)                 sign(0) = 0, sign(NaN) = NaN
 * exp_avg = exp_avg * beta2 + (1 - beta2) * g
 * variant bits: 1 weight decay (else the factor 1 is skipped), 2 grad_scale != 1 (else
 * g = grad: no multiply; both skips are exact) */
LRCORE_INLINE void FN(lion_loop)(size_t n, T *LRCORE_RESTRICT p, const T *LRCORE_RESTRICT gr,
    T *LRCORE_RESTRICT m, T s, T decay, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2,
    T lr, T neg_lr, const unsigned variant)
{
    LRCORE__FP_STRICT
    const int has_wd = variant & 1u, scaled = variant & 2u;
    for (size_t b0 = 0, b1; b0 < n; b0 = b1) {
        b1 = lrcore__block(b0, n, sizeof(T), gr, p, m, 0, 0);
        for (size_t i = b0; i < b1; i++) {
            const T g = scaled ? gr[i] * s : gr[i];
            const T c = m[i] * beta1 + one_minus_beta1 * g;
            const T pi = has_wd ? p[i] * decay : p[i];
            p[i] = pi + FN(lion_update)(c, lr, neg_lr);
            m[i] = m[i] * beta2 + one_minus_beta2 * g;
        }
    }
}

static inline void FN(lion)(size_t n, T *LRCORE_RESTRICT param, const T *LRCORE_RESTRICT grad,
    T *LRCORE_RESTRICT exp_avg, const lrcore_lion_hp *hp)
{
    LRCORE__FP_STRICT
    const T s = (T)lrcore__grad_sign_scale(hp->grad_scale, hp->maximize);
    const unsigned variant = (hp->weight_decay != 0.0) | (s != (T)1) << 1;
    LRCORE__DISPATCH(2, variant, FN(lion_loop), n, param, grad, exp_avg, s,
                     (T)(1.0 - hp->lr * hp->weight_decay), (T)hp->beta1, (T)(1.0 - hp->beta1),
                     (T)hp->beta2, (T)(1.0 - hp->beta2), (T)hp->lr, (T)(-hp->lr))
}

/* ---- Sum of squares in double, for gradient clipping by global norm ----------------
 *   acc[k] += x[i]^2 for i = k (mod 8), then ((acc0 + acc1) + (acc2 + acc3)) + ...
 * Eight independent accumulators let the compiler vectorise without reassociating, so
 * the result is the same on every instruction set. Non-finite x gives a non-finite sum
 * (a float32 input can never overflow the double sum). */
static inline double FN(sum_squares)(size_t n, const T *LRCORE_RESTRICT x)
{
    LRCORE__FP_STRICT
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const size_t blocks = n / 8;
    for (size_t b = 0; b < blocks; b++)
        for (int k = 0; k < 8; k++) {
            const double v = (double)x[8 * b + k];
            acc[k] += v * v;
        }
    for (size_t i = 8 * blocks; i < n; i++) {
        const double v = (double)x[i];
        acc[i - 8 * blocks] += v * v;
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

#undef FN
#undef SQRT
#undef T
#undef LRCORE__T
#undef LRCORE__SUFFIX
#undef LRCORE__SQRT
#undef LRCORE__FABS
#undef LRCORE__COPYSIGN
