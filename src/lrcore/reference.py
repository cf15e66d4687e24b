"""The numpy twin of every compiled kernel: lrcore's executable specification.

Each function has the signature of its compiled counterpart in lrcore.kernels and
performs the same operations in the same order, with every scalar rounded once to
the buffers' dtype, as the C loops in include/lrcore.h do. It is also a real
backend: LRCORE_BACKEND=python makes lrcore.kernels use it. Its docstrings are the
kernels' docstrings.
"""
import functools

import numpy as np

from . import _validate as v

__all__ = ["sgd", "adam", "adagrad", "rmsprop", "adadelta"]


def _quiet(fn):
    """NaN and Inf propagate silently, as in the C kernels (not an input error)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)
    return wrapper


def _flat(a):
    """A flat plain-ndarray view of a's memory (a subclass such as np.matrix would turn
    `*` into a matrix product)."""
    return a.view(np.ndarray).reshape(-1)


def _lerp(start, end, weight, T):
    """torch.lerp with a scalar weight: start + w*(end - start) if |w| < 0.5,
    else end - (end - start)*(1 - w), evaluated in the buffers' dtype."""
    w = T(weight)
    if abs(float(w)) < 0.5:   # torch tests the weight rounded to the dtype
        return start + w * (end - start)
    return end - (end - start) * (T(1) - w)


def sgd(param, grad, momentum_buffer=None, *, lr, step, momentum=0.0, dampening=0.0,
        nesterov=False, weight_decay=0.0, maximize=False, num_threads=None):
    """One SGD step (torch.optim.SGD), in place on param and momentum_buffer.

    g = -grad if maximize else grad
    g = g + weight_decay * param                     if weight_decay != 0
    if momentum != 0:
        buf = g                                      at step 1
        buf = momentum * buf + (1 - dampening) * g   after step 1
        g = g + momentum * buf                       if nesterov
        g = buf                                      otherwise
    param = param - lr * g

    momentum_buffer is required when momentum > 0 (zero-initialised by the caller).
    """
    fn = "sgd"
    lr = v.nonneg(fn, "lr", lr)
    step = v.step_number(fn, step)
    momentum = v.nonneg(fn, "momentum", momentum)
    dampening = v.unit_closed(fn, "dampening", dampening)
    weight_decay = v.nonneg(fn, "weight_decay", weight_decay)
    nesterov, maximize = bool(nesterov), bool(maximize)
    if nesterov and (momentum <= 0.0 or dampening != 0.0):
        raise ValueError(f"{fn}(): nesterov requires momentum > 0 and dampening = 0, got "
                         f"momentum={momentum!r}, dampening={dampening!r}")
    if momentum > 0.0 and momentum_buffer is None:
        raise ValueError(f"{fn}(): momentum_buffer is required when momentum > 0")
    v.threads(fn, num_threads)
    v.buffers(fn, ["param", "grad", "momentum_buffer"], [param, grad, momentum_buffer],
              [True, False, True])
    return _sgd(_flat(param), _flat(grad),
                _flat(momentum_buffer) if momentum > 0.0 else None,
                lr, step, momentum, dampening, nesterov, weight_decay, maximize, 1.0)


@_quiet
def _sgd(p, grad, buf, lr, step, momentum, dampening, nesterov, weight_decay, maximize,
         grad_scale):
    T = p.dtype.type
    g = grad * T(-grad_scale if maximize else grad_scale)
    if weight_decay != 0.0:
        g = g + T(weight_decay) * p
    if momentum != 0.0:
        if step <= 1:
            buf[...] = g
        else:
            buf[...] = buf * T(momentum) + T(1.0 - dampening) * g
        g = g + T(momentum) * buf if nesterov else buf
    p += T(-lr) * g


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, lr, step, beta1=0.9,
         beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, maximize=False,
         num_threads=None):
    """One Adam / AdamW / AMSGrad step (torch.optim.Adam, torch.optim.AdamW), in place.

    g = -grad if maximize else grad
    param = param * (1 - lr * weight_decay)          if decoupled_weight_decay (AdamW)
    g = g + weight_decay * param                     if weight_decay != 0, not decoupled
    exp_avg = lerp(exp_avg, g, 1 - beta1)            = beta1 * exp_avg + (1 - beta1) * g
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
    v = max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq)   AMSGrad: max_exp_avg_sq given
    v = exp_avg_sq                                          otherwise
    denom = sqrt(v) / sqrt(1 - beta2**step) + eps
    param = param - lr / (1 - beta1**step) * exp_avg / denom

    lerp is torch.lerp (m + w*(g - m) for w < 0.5, else g - (g - m)*(1 - w)).
    """
    fn = "adam"
    lr = v.nonneg(fn, "lr", lr)
    step = v.step_number(fn, step)
    beta1 = v.unit_open(fn, "beta1", beta1)
    beta2 = v.unit_open(fn, "beta2", beta2)
    eps = v.nonneg(fn, "eps", eps)
    weight_decay = v.nonneg(fn, "weight_decay", weight_decay)
    decoupled_weight_decay, maximize = bool(decoupled_weight_decay), bool(maximize)
    v.threads(fn, num_threads)
    v.required(fn, "exp_avg", exp_avg)
    v.required(fn, "exp_avg_sq", exp_avg_sq)
    v.buffers(fn, ["param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
              [param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq], [True, False, True, True, True])
    return _adam(_flat(param), _flat(grad), _flat(exp_avg), _flat(exp_avg_sq),
                 None if max_exp_avg_sq is None else _flat(max_exp_avg_sq),
                 lr, step, beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize, 1.0)


@_quiet
def _adam(p, grad, m, vsq, vmax, lr, step, beta1, beta2, eps, weight_decay, decoupled, maximize,
          grad_scale):
    T = p.dtype.type
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    g = grad * T(-grad_scale if maximize else grad_scale)
    if decoupled:
        p *= T(1.0 - lr * weight_decay)
    elif weight_decay != 0.0:
        g = g + T(weight_decay) * p
    m[...] = _lerp(m, g, 1.0 - beta1, T)
    vsq[...] = vsq * T(beta2) + (T(1.0 - beta2) * g) * g
    if vmax is not None:
        np.maximum(vmax, vsq, out=vmax)              # torch.maximum: NaN wins
        vv = vmax
    else:
        vv = vsq
    denom = np.sqrt(vv) / T(np.sqrt(bc2)) + T(eps)
    p += (T(-(lr / bc1)) * m) / denom               # torch.addcdiv: (value * t1) / t2


def adagrad(param, grad, state_sum, *, lr, step, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
            maximize=False, num_threads=None):
    """One Adagrad step (torch.optim.Adagrad), in place on param and state_sum.

    g = -grad if maximize else grad
    g = g + weight_decay * param                     if weight_decay != 0
    clr = lr / (1 + (step - 1) * lr_decay)
    state_sum = state_sum + g * g
    param = param - clr * g / (sqrt(state_sum) + eps)

    state_sum may start at any value (torch's initial_accumulator_value).
    """
    fn = "adagrad"
    lr = v.nonneg(fn, "lr", lr)
    step = v.step_number(fn, step)
    lr_decay = v.nonneg(fn, "lr_decay", lr_decay)
    weight_decay = v.nonneg(fn, "weight_decay", weight_decay)
    eps = v.nonneg(fn, "eps", eps)
    maximize = bool(maximize)
    v.threads(fn, num_threads)
    v.required(fn, "state_sum", state_sum)
    v.buffers(fn, ["param", "grad", "state_sum"], [param, grad, state_sum], [True, False, True])
    return _adagrad(_flat(param), _flat(grad), _flat(state_sum),
                    lr, step, lr_decay, weight_decay, eps, maximize, 1.0)


@_quiet
def _adagrad(p, grad, ssum, lr, step, lr_decay, weight_decay, eps, maximize, grad_scale):
    T = p.dtype.type
    clr = lr / (1.0 + (step - 1) * lr_decay)
    g = grad * T(-grad_scale if maximize else grad_scale)
    if weight_decay != 0.0:
        g = g + T(weight_decay) * p
    ssum += g * g
    p += (T(-clr) * g) / (np.sqrt(ssum) + T(eps))   # torch.addcdiv: (value * t1) / t2


def rmsprop(param, grad, square_avg, momentum_buffer=None, grad_avg=None, *, lr, step, alpha=0.99,
            eps=1e-8, weight_decay=0.0, momentum=0.0, maximize=False, num_threads=None):
    """One RMSprop step (torch.optim.RMSprop), in place on param and the state buffers.

    g = -grad if maximize else grad
    g = g + weight_decay * param                     if weight_decay != 0
    square_avg = alpha * square_avg + (1 - alpha) * g * g
    if centered (grad_avg given):
        grad_avg = lerp(grad_avg, g, 1 - alpha)      = alpha * grad_avg + (1 - alpha) * g
        avg = sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        avg = sqrt(square_avg) + eps
    if momentum > 0:
        buf = momentum * buf + g / avg
        param = param - lr * buf
    else:
        param = param - lr * g / avg

    momentum_buffer is required when momentum > 0.
    """
    fn = "rmsprop"
    lr = v.nonneg(fn, "lr", lr)
    step = v.step_number(fn, step)
    alpha = v.unit_open(fn, "alpha", alpha)
    eps = v.nonneg(fn, "eps", eps)
    weight_decay = v.nonneg(fn, "weight_decay", weight_decay)
    momentum = v.nonneg(fn, "momentum", momentum)
    maximize = bool(maximize)
    v.threads(fn, num_threads)
    v.required(fn, "square_avg", square_avg)
    if momentum > 0.0 and momentum_buffer is None:
        raise ValueError(f"{fn}(): momentum_buffer is required when momentum > 0")
    v.buffers(fn, ["param", "grad", "square_avg", "momentum_buffer", "grad_avg"],
              [param, grad, square_avg, momentum_buffer, grad_avg], [True, False, True, True, True])
    return _rmsprop(_flat(param), _flat(grad), _flat(square_avg),
                    _flat(momentum_buffer) if momentum > 0.0 else None,
                    None if grad_avg is None else _flat(grad_avg),
                    lr, alpha, eps, weight_decay, momentum, maximize, 1.0)


@_quiet
def _rmsprop(p, grad, sq, buf, ga, lr, alpha, eps, weight_decay, momentum, maximize, grad_scale):
    T = p.dtype.type
    g = grad * T(-grad_scale if maximize else grad_scale)
    if weight_decay != 0.0:
        g = g + T(weight_decay) * p
    sq[...] = sq * T(alpha) + (T(1.0 - alpha) * g) * g
    if ga is not None:
        ga[...] = _lerp(ga, g, 1.0 - alpha, T)
        avg = np.sqrt(sq - ga * ga) + T(eps)
    else:
        avg = np.sqrt(sq) + T(eps)
    if momentum > 0.0:
        buf[...] = buf * T(momentum) + g / avg
        p += T(-lr) * buf
    else:
        p += (T(-lr) * g) / avg                     # torch.addcdiv: (value * t1) / t2


def adadelta(param, grad, square_avg, acc_delta, *, lr, step, rho=0.9, eps=1e-6, weight_decay=0.0,
             maximize=False, num_threads=None):
    """One Adadelta step (torch.optim.Adadelta), in place on param and the state buffers.

    g = -grad if maximize else grad
    g = g + weight_decay * param                     if weight_decay != 0
    square_avg = rho * square_avg + (1 - rho) * g * g
    delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g
    acc_delta = rho * acc_delta + (1 - rho) * delta * delta
    param = param - lr * delta
    """
    fn = "adadelta"
    lr = v.nonneg(fn, "lr", lr)
    step = v.step_number(fn, step)
    rho = v.unit_open(fn, "rho", rho)
    eps = v.nonneg(fn, "eps", eps)
    weight_decay = v.nonneg(fn, "weight_decay", weight_decay)
    maximize = bool(maximize)
    v.threads(fn, num_threads)
    v.required(fn, "square_avg", square_avg)
    v.required(fn, "acc_delta", acc_delta)
    v.buffers(fn, ["param", "grad", "square_avg", "acc_delta"],
              [param, grad, square_avg, acc_delta], [True, False, True, True])
    return _adadelta(_flat(param), _flat(grad), _flat(square_avg),
                     _flat(acc_delta), lr, rho, eps, weight_decay, maximize, 1.0)


@_quiet
def _adadelta(p, grad, sq, acc, lr, rho, eps, weight_decay, maximize, grad_scale):
    T = p.dtype.type
    g = grad * T(-grad_scale if maximize else grad_scale)
    if weight_decay != 0.0:
        g = g + T(weight_decay) * p
    sq[...] = sq * T(rho) + (T(1.0 - rho) * g) * g
    delta = (np.sqrt(acc + T(eps)) / np.sqrt(sq + T(eps))) * g
    acc[...] = acc * T(rho) + (T(1.0 - rho) * delta) * delta
    p += T(-lr) * delta


class StepPlan:
    """The numpy twin of lrcore._core.StepPlan: one step over many buffer sets.

    Same constructor, same checks and messages, same `run` / `grad_sumsq`; it loops over
    the buffers in Python and applies the functions above.
    """

    def __init__(self, kind, params, states, groups):
        if kind not in _KERNELS:
            raise ValueError(f"StepPlan: kind must be one of {sorted(_KERNELS)}, got {kind!r}")
        if not (len(params) == len(states) == len(groups)):
            raise ValueError("StepPlan: params, states and groups must have the same length")
        self.kind = kind
        self.njobs = len(params)
        self.group_of = [int(g) for g in groups]
        extents = []
        self.params, self.states = [], []
        for i, p in enumerate(params):
            v._array("step", f"params[{i}]", p, None, None, True)
            if len(states[i]) != 3:
                raise ValueError("StepPlan: each states entry must have 3 slots")
            self.params.append(_flat(p))
            st = []
            for a in states[i]:
                if a is not None:
                    v._array("step", f"state of params[{i}]", a, p.dtype, p.size, True)
                    extents.append(v._extent(a) + (f"state of params[{i}]",))
                st.append(None if a is None else _flat(a))
            self.states.append(st)
            extents.append(v._extent(p) + (f"params[{i}]",))
        extents = sorted(e for e in extents if e[1] > e[0])
        for a, b in zip(extents, extents[1:]):
            if b[0] < a[1]:
                raise ValueError(f"step(): {a[2]} and {b[2]} share memory; every parameter "
                                 f"and state buffer must be a separate array")
        self.extents = extents
        self.param_bytes = sum(p.nbytes for p in self.params)

    def _check_grads(self, grads):
        if len(grads) != self.njobs:
            raise ValueError(f"step(): got {len(grads)} grads for {self.njobs} params; "
                             f"pass one grad per param, in the same order")
        for i, g in enumerate(grads):
            p = self.params[i]
            v._array("step", f"grads[{i}]", g, p.dtype, p.size, False)
            if g.nbytes == 0:
                continue
            g0, g1 = v._extent(g)
            for e0, e1, name in self.extents:
                if e0 < g1 and g0 < e1:
                    raise ValueError(f"step(): grads[{i}] shares memory with {name}; "
                                     f"gradients must be separate arrays")
        return [_flat(g) for g in grads]

    @_quiet
    def grad_sumsq(self, grads, num_threads=None):
        """(sum of squares of all grads in double, every element finite), summed in the
        compiled core's order (lrcore.h, lrcore_sum_squares): blocks of 2**14 elements per
        buffer; in a block, 8 running sums over i mod 8, combined pairwise; blocks added in
        order. So both backends clip by exactly the same scale."""
        grads = self._check_grads(grads)
        total = 0.0
        for g in grads:
            for start in range(0, g.size, _SUMSQ_BLOCK):
                x = g[start:start + _SUMSQ_BLOCK].astype(np.float64)
                sq = x * x
                whole = sq.size - sq.size % 8
                # reducing axis 0 of (rows, 8) adds row after row: sequential, as the C loop
                acc = np.add.reduce(sq[:whole].reshape(-1, 8), axis=0) if whole else np.zeros(8)
                acc[:sq.size - whole] += sq[whole:]
                total += ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
        finite = bool(np.isfinite(total)) or all(np.isfinite(g).all() for g in grads)
        return total, finite

    def run(self, grads, group_hps, grad_scale=1.0, num_threads=None, grads_checked=False):
        """Apply one step; group_hps as in lrcore._core.StepPlan.run."""
        flat = self._check_grads(grads)
        for i, (p, g, st) in enumerate(zip(self.params, flat, self.states)):
            t = group_hps[self.group_of[i]]
            if self.kind == "sgd":
                lr, mom, damp, wd, nest, maxi, step = t
                _sgd(p, g, st[0] if mom > 0 else None, lr, step, mom, damp, nest, wd, maxi,
                     grad_scale)
            elif self.kind == "adam":
                lr, b1, b2, eps, wd, dec, maxi, step = t
                _adam(p, g, st[0], st[1], st[2], lr, step, b1, b2, eps, wd, dec, maxi, grad_scale)
            elif self.kind == "adagrad":
                lr, lr_decay, wd, eps, maxi, step = t
                _adagrad(p, g, st[0], lr, step, lr_decay, wd, eps, maxi, grad_scale)
            elif self.kind == "rmsprop":
                lr, alpha, eps, wd, mom, maxi, step = t
                _rmsprop(p, g, st[0], st[1] if mom > 0 else None, st[2], lr, alpha, eps, wd, mom,
                         maxi, grad_scale)
            else:
                lr, rho, eps, wd, maxi, step = t
                _adadelta(p, g, st[0], st[1], lr, rho, eps, wd, maxi, grad_scale)


_KERNELS = ("sgd", "adam", "adagrad", "rmsprop", "adadelta")
_SUMSQ_BLOCK = 1 << 14   # LRCORE_SUMSQ_BLOCK in csrc/runtime.c
