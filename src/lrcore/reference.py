"""The numpy twin of every compiled kernel: lrcore's executable specification.

For each rule of lrcore.rules, `_<rule>(p, grad, states, hp)` performs the operations of
its C loop (include/lrcore_body.h) in the same order, with every scalar rounded once to
the buffers' dtype; `hp` is the rule's hyperparameter struct as a dict. The public
functions (reference.adam, ...) have the compiled kernels' signatures and checks (built
from the table by lrcore._validate) and run these twins. It is also a real backend:
LRCORE_BACKEND=python makes lrcore.kernels use it.
"""
import functools

import numpy as np

from . import _validate as v
from .rules import RULES

__all__ = list(RULES) + ["StepPlan", "docstring"]


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


def _scale(hp, T):
    """s = grad_scale, negated for maximize."""
    return T(-hp["grad_scale"] if hp["maximize"] else hp["grad_scale"])


def _moments(p, grad, m, vsq, hp, decoupled):
    """The Adam family's common start (lrcore_body.h, `moments`): g, decoupled decay or L2,
    exp_avg and exp_avg_sq updated in place; returns g."""
    T = p.dtype.type
    g = grad * _scale(hp, T)
    if decoupled:
        p *= T(1.0 - hp["lr"] * hp["weight_decay"])
    elif hp["weight_decay"] != 0.0:
        g = g + T(hp["weight_decay"]) * p
    m[...] = _lerp(m, g, 1.0 - hp["beta1"], T)
    vsq[...] = vsq * T(hp["beta2"]) + (T(1.0 - hp["beta2"]) * g) * g
    return g


@_quiet
def _sgd(p, grad, st, hp):
    T = p.dtype.type
    buf, mom = st[0], hp["momentum"]
    g = grad * _scale(hp, T)
    if hp["weight_decay"] != 0.0:
        g = g + T(hp["weight_decay"]) * p
    if mom != 0.0:
        if hp["init_buffer"]:
            buf[...] = g
        else:
            buf[...] = buf * T(mom) + T(1.0 - hp["dampening"]) * g
        g = g + T(mom) * buf if hp["nesterov"] else buf
    p += T(-hp["lr"]) * g


@_quiet
def _adam(p, grad, st, hp):
    T = p.dtype.type
    m, vsq, vmax = st
    step = hp["step"]
    bc1 = 1.0 - hp["beta1"] ** step
    bc2 = 1.0 - hp["beta2"] ** step
    _moments(p, grad, m, vsq, hp, hp["decoupled_weight_decay"])
    if vmax is not None:
        np.maximum(vmax, vsq, out=vmax)              # torch.maximum: NaN wins
        vv = vmax
    else:
        vv = vsq
    denom = np.sqrt(vv) / T(np.sqrt(bc2)) + T(hp["eps"])
    p += (T(-(hp["lr"] / bc1)) * m) / denom          # torch.addcdiv: (value * t1) / t2


@_quiet
def _adagrad(p, grad, st, hp):
    T = p.dtype.type
    ssum = st[0]
    clr = hp["lr"] / (1.0 + (hp["step"] - 1) * hp["lr_decay"])
    g = grad * _scale(hp, T)
    if hp["weight_decay"] != 0.0:
        g = g + T(hp["weight_decay"]) * p
    ssum += g * g
    p += (T(-clr) * g) / (np.sqrt(ssum) + T(hp["eps"]))


@_quiet
def _rmsprop(p, grad, st, hp):
    T = p.dtype.type
    sq, buf, ga = st
    alpha = hp["alpha"]
    g = grad * _scale(hp, T)
    if hp["weight_decay"] != 0.0:
        g = g + T(hp["weight_decay"]) * p
    sq[...] = sq * T(alpha) + (T(1.0 - alpha) * g) * g
    if ga is not None:
        ga[...] = _lerp(ga, g, 1.0 - alpha, T)
        avg = np.sqrt(sq - ga * ga) + T(hp["eps"])
    else:
        avg = np.sqrt(sq) + T(hp["eps"])
    if hp["momentum"] > 0.0:
        buf[...] = buf * T(hp["momentum"]) + g / avg
        p += T(-hp["lr"]) * buf
    else:
        p += (T(-hp["lr"]) * g) / avg


@_quiet
def _adadelta(p, grad, st, hp):
    T = p.dtype.type
    sq, acc = st
    rho, eps = T(hp["rho"]), T(hp["eps"])
    g = grad * _scale(hp, T)
    if hp["weight_decay"] != 0.0:
        g = g + T(hp["weight_decay"]) * p
    sq[...] = sq * rho + (T(1.0 - hp["rho"]) * g) * g
    delta = (np.sqrt(acc + eps) / np.sqrt(sq + eps)) * g
    acc[...] = acc * rho + (T(1.0 - hp["rho"]) * delta) * delta
    p += T(-hp["lr"]) * delta


@_quiet
def _adamax(p, grad, st, hp):
    T = p.dtype.type
    m, u = st
    clr = hp["lr"] / (1.0 - hp["beta1"] ** hp["step"])
    g = grad * _scale(hp, T)
    if hp["weight_decay"] != 0.0:
        g = g + T(hp["weight_decay"]) * p
    m[...] = _lerp(m, g, 1.0 - hp["beta1"], T)
    np.maximum(u * T(hp["beta2"]), np.abs(g) + T(hp["eps"]), out=u)   # NaN wins
    p += (T(-clr) * m) / u


def nadam_mu(beta1, momentum_decay, t):
    """NAdam's momentum coefficient at step t (lrcore_nadam_mu in lrcore.h)."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))


@_quiet
def _nadam(p, grad, st, hp):
    T = p.dtype.type
    m, vsq = st
    step, lr, mu_product = hp["step"], hp["lr"], hp["mu_product"]
    bc2 = 1.0 - hp["beta2"] ** step
    mu = nadam_mu(hp["beta1"], hp["momentum_decay"], step)
    mu_next = nadam_mu(hp["beta1"], hp["momentum_decay"], step + 1)
    coef_grad = -lr * (1.0 - mu) / (1.0 - mu_product)
    coef_avg = (-lr * mu_next) / (1.0 - mu_product * mu_next)
    g = _moments(p, grad, m, vsq, hp, hp["decoupled_weight_decay"])
    denom = np.sqrt(vsq / T(bc2)) + T(hp["eps"])
    p += (T(coef_grad) * g) / denom
    p += (T(coef_avg) * m) / denom


@_quiet
def _radam(p, grad, st, hp):
    T = p.dtype.type
    m, vsq = st
    step, beta2 = hp["step"], hp["beta2"]
    bc1 = 1.0 - hp["beta1"] ** step
    b2t = beta2 ** step
    bc2 = 1.0 - b2t
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho = rho_inf - 2.0 * step * b2t / bc2
    _moments(p, grad, m, vsq, hp, hp["decoupled_weight_decay"])
    u = (m / T(bc1)) * T(hp["lr"])
    if rho > 5.0:
        rect = ((rho - 4.0) * (rho - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho)) ** 0.5
        u = (u * ((T(1) / (np.sqrt(vsq) + T(hp["eps"]))) * T(bc2 ** 0.5))) * T(rect)
    p -= u


@_quiet
def _lion(p, grad, st, hp):
    T = p.dtype.type
    m = st[0]
    s = _scale(hp, T)
    g = grad * s if s != T(1) else grad                  # g * 1 skipped, as in C (exact)
    c = m * T(hp["beta1"]) + T(1.0 - hp["beta1"]) * g
    if hp["weight_decay"] != 0.0:
        p *= T(1.0 - hp["lr"] * hp["weight_decay"])
    # lr * sign(c), sign(c) = c at +-0 and NaN: copysign(lr, c) where c is non-zero and not
    # NaN (the same value exactly), lr * c elsewhere, subtracted (lrcore_body.h, lion_update)
    p -= np.where((c != 0) & (c == c), np.copysign(T(hp["lr"]), c), T(hp["lr"]) * c)
    m[...] = m * T(hp["beta2"]) + T(1.0 - hp["beta2"]) * g


_TWINS = {"sgd": _sgd, "adam": _adam, "adagrad": _adagrad, "rmsprop": _rmsprop,
          "adadelta": _adadelta, "adamax": _adamax, "nadam": _nadam, "radam": _radam,
          "lion": _lion}


def _used_states(rule, states, hp):
    """The states the kernel works on: a state whose hyperparameter is off (momentum = 0)
    is passed as NULL to C and as None here, whatever the caller gave."""
    out = []
    for s, a in zip(rule.states, states):
        if a is not None and s.when is not None and not any(o.name == s.when for o in rule.options):
            a = a if (hp[s.when] or 0.0) > 0.0 else None
        out.append(a)
    return out


def _run(rule, buffers, hp, num_threads):
    """The numpy backend's `run` for lrcore._validate.make_kernel."""
    names = ["param", "grad"] + [s.name for s in rule.states]
    checked = v.buffers(rule.name, names, list(buffers), [True, False] + [True] * len(rule.states))
    flat = iter(_flat(a) for a in checked[2:])
    states = [None if b is None else next(flat) for b in buffers[2:]]
    hp["grad_scale"] = 1.0
    _TWINS[rule.name](_flat(checked[0]), _flat(checked[1]), _used_states(rule, states, hp), hp)


def docstring(rule):
    """The kernels' docstring of one rule, from the table."""
    what = f"torch.optim.{rule.torch_class}" if rule.torch_class else "not in torch.optim"
    states = ", ".join(s.name + ("" if s.when is None else f" (when {s.when})")
                       for s in rule.states)
    math = "\n".join("    " + line for line in rule.math.splitlines())
    return (f"One {rule.name} step ({what}), in place on param and the state buffers.\n\n"
            f"{math}\n\n    States, in argument order: {states}. s = grad_scale (1 here), "
            f"negated for maximize.\n")


for _name, _rule in RULES.items():
    globals()[_name] = v.make_kernel(_rule, _run, docstring(_rule))
    globals()[_name].__module__ = __name__


class StepPlan:
    """The numpy twin of lrcore._core.StepPlan: one step over many buffer sets.

    Same constructor, same checks and messages, same `run` / `grad_sumsq`; it loops over
    the buffers in Python and applies the functions above.
    """

    def __init__(self, kind, params, states, groups):
        if kind not in RULES:
            raise ValueError(f"StepPlan: kind must be one of {sorted(RULES)}, got {kind!r}")
        if not (len(params) == len(states) == len(groups)):
            raise ValueError("StepPlan: params, states and groups must have the same length")
        self.kind = kind
        self.rule = RULES[kind]
        self.njobs = len(params)
        self.group_of = [int(g) for g in groups]
        extents = []
        self.params, self.states = [], []
        for i, p in enumerate(params):
            v.check_array("step", f"params[{i}]", p, None, None, True)
            if len(states[i]) != 3:
                raise ValueError("StepPlan: each states entry must have 3 slots")
            self.params.append(_flat(p))
            st = []
            for a in states[i]:
                if a is not None:
                    v.check_array("step", f"state of params[{i}]", a, p.dtype, p.size, True)
                    extents.append(v.extent(a) + (f"state of params[{i}]",))
                st.append(None if a is None else _flat(a))
            self.states.append(st)
            extents.append(v.extent(p) + (f"params[{i}]",))
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
            v.check_array("step", f"grads[{i}]", g, p.dtype, p.size, False)
            if g.nbytes == 0:
                continue
            g0, g1 = v.extent(g)
            for e0, e1, name in self.extents:
                if e0 < g1 and g0 < e1:
                    raise ValueError(f"step(): grads[{i}] shares memory with {name}; "
                                     f"gradients must be separate arrays")
        return [_flat(g) for g in grads]

    @_quiet
    def grad_sumsq(self, grads, num_threads=None):
        """(sum of squares of all grads in double, every element finite), summed in the
        compiled core's order (sum_squares_blocked), so both backends clip by exactly the
        same scale."""
        grads = self._check_grads(grads)
        total = sum_squares_blocked(grads)
        finite = bool(np.isfinite(total)) or all(np.isfinite(g).all() for g in grads)
        return total, finite

    def run(self, grads, group_hps, grad_scale=1.0, num_threads=None, grads_checked=False):
        """Apply one step; group_hps[g] is a dict of group g's hyperparameters by name (the
        rule's fields in lrcore.rules; derived ones and those at their default may be left out)."""
        flat = self._check_grads(grads)
        hps = v.plan_hypers(self.rule, group_hps)
        _check_plan_states(self.rule, hps, self.group_of,
                           [[a is not None for a in st] for st in self.states])
        twin = _TWINS[self.kind]
        for p, g, st, gi in zip(self.params, flat, self.states, self.group_of):
            hp = dict(hps[gi], grad_scale=grad_scale)
            twin(p, g, _used_states(self.rule, st, hp), hp)


def _check_plan_states(rule, hps, group_of, present):
    """Every param's group exists, and a group whose hyperparameters need an optional state
    (momentum > 0) has it on each of its params: else an error naming both (the same
    checks as _core.StepPlan; the kernel would otherwise dereference a missing buffer)."""
    for i, g in enumerate(group_of):
        if not 0 <= g < len(hps):
            raise ValueError(f"StepPlan.run: no hyperparameters for group {g}")
        for slot in v.required_slots(rule, hps[g]):
            if not present[i][slot]:
                s = rule.states[slot]
                raise ValueError(f"step(): params[{i}] has no {s.name} but its group {g} has "
                                 f"{s.when} > 0")


_SUMSQ_BLOCK = 1 << 14   # LRCORE_SUMSQ_BLOCK in csrc/runtime.c


@_quiet
def sum_squares_blocked(arrays):
    """Sum of squares of every element of `arrays` (any float dtype, widened exactly to
    float64) in the compiled core's order (lrcore.h's lrcore_sum_squares, runtime.c's
    lrcore_grad_sumsq): blocks of 2**14 elements per buffer; in a block, 8 running sums over
    i mod 8 combined pairwise; the blocks' sums added one after another, buffer after buffer.
    numpy adds rows of an axis-1 reduction one after another and cumsum is sequential, so the
    result does not depend on threads or BLAS: the same bits as the native grad_sumsq."""
    sums = []
    for g in arrays:
        x = np.asarray(g).reshape(-1).astype(np.float64)
        sq = x * x
        full = sq.size // _SUMSQ_BLOCK * _SUMSQ_BLOCK
        blocks = [sq[:full].reshape(-1, _SUMSQ_BLOCK // 8, 8)] if full else []
        acc = [np.add.reduce(b, axis=1) for b in blocks]          # (nblocks, 8), sequential
        tail = sq[full:]
        if tail.size:
            whole = tail.size - tail.size % 8
            t = np.add.reduce(tail[:whole].reshape(-1, 8), axis=0) if whole else np.zeros(8)
            t[:tail.size - whole] += tail[whole:]
            acc.append(t[None, :])
        for a in acc:
            sums.append(((a[:, 0] + a[:, 1]) + (a[:, 2] + a[:, 3]))
                        + ((a[:, 4] + a[:, 5]) + (a[:, 6] + a[:, 7])))
    if not sums:
        return 0.0
    return float(np.cumsum(np.concatenate([[0.0]] + sums))[-1])
