"""Rounding-error budgets for comparing lrcore with torch.optim (issue 9, item 1).

Why a budget and not a tolerance: lrcore and torch.optim perform the same operations for each
update rule, but they do not round alike. torch's vector code contracts ``a*b + c`` into one
FMA on some instruction sets and not on others (its AVX2 and AVX-512 builds differ from each
other and from its scalar code), its vector sqrt is not always correctly rounded, and lrcore
contracts nothing. Neither result is "the" answer; both approximate the trajectory that exact
arithmetic would give. A tolerance tuned to the difference seen on one machine failed on the
next one (RMSprop on AVX-512, 4.8e-05 against 3.05e-05 allowed). So every comparison with
torch here allows what rounding can explain and nothing more, on every machine.

The derivation. Write one step of a rule as x_{t+1} = F(x_t, g_t): x is the param and the
state buffers, F the rule in exact arithmetic, f~ and f^ lrcore's and torch's rounded
evaluations of it. From the values each side actually holds after step t (x~, x^):

    |x~_{t+1} - x^_{t+1}| = |f~(x~) - f^(x^)|
                          <= |f~(x~) - F(x~)| + |F(x~) - F(x^)| + |F(x^) - f^(x^)|
                          <= r(x~) + |F(x~) - F(x^)| + r(x^)

r(x) is the rounding budget of ONE step from x: each rounded operation of the rule adds at
most one unit roundoff u of its result, and operand errors propagate (first order and beyond):

    x + y, x - y   e_x + e_y + u*|x +- y|
    x * y          |x| e_y + |y| e_x + e_x e_y + u*|x y|
    x / y          (e_x + |x/y| e_y) / (|y| - e_y) + u*|x/y|        (unbounded if |y| <= e_y)
    sqrt(x)        min(e_x / sqrt(x), sqrt(e_x)) + 2u*sqrt(x)        (2u: torch's vector sqrt
                                                                     is within 1 ulp, not 1/2)
    max, |x|, -x   exact: max(e_x, e_y), e_x, e_x

u = 2**-24 for float32 buffers and 2**-53 for float64. Scalars (bias corrections, step sizes,
1 - beta) are computed in double (u = 2**-53) and rounded once to the buffers' dtype where
they meet a buffer (+ u*|scalar|); hyperparameters are exact doubles, so that rounding counts.
A fused multiply-add rounds once where this counts twice, and torch's and lrcore's operations
are the ones listed, in the same order, in each rule's ``_twin_*`` function below (with the
count of roundings per buffer), so r bounds both.

The steps taken enter through |F(x~) - F(x^)|: the difference the two sides already carry,
propagated through the exact step. It is evaluated in double from the values each side holds
(F64), which is itself within r of F: so the budget checked after every step is

    |x~_{t+1} - x^_{t+1}| <= |F64(x~) - F64(x^)| + 2 (r(x~) + r(x^))

element by element, for the param and every state buffer. (A running bound carried from step
to step without the values would treat correlated errors as independent -- exp_avg and
exp_avg_sq of a param pushed only by weight decay scale together -- and grow exponentially.)
A wrong formula, a missing or extra operation, or a skipped element exceeds one step's r at
the step it happens. Reported per rule, dtype and torch capability (LRCORE_ULP_REPORT=path
appends them as JSON at exit), in ulps of the magnitude involved, eps * max(|torch's value
after the step|, |before it|): the largest difference, the largest new difference of one
step beyond the carried one, the largest one-step rounding budget, and the largest fraction
of that budget a step used.
"""
from __future__ import annotations

import atexit
import json
import math
import os

import numpy as np

U32 = 2.0 ** -24
U64 = 2.0 ** -53
UNIT_ROUNDOFF = {"float32": U32, "float64": U64}


class B:
    """A value computed in floating point and a bound on its distance from the exact value.

    `u` is the unit roundoff of the precision the value is held in: 0 for literals that every
    precision represents exactly (1, 0.5, -1), U64 for Python doubles, U32/U64 for buffers."""
    __slots__ = ("v", "e", "u")

    def __init__(self, v, e=0.0, u=U64):
        self.v = np.asarray(v, dtype=np.float64)
        self.e = np.asarray(e, dtype=np.float64)
        self.u = u

    # -- helpers
    @staticmethod
    def lift(x):
        return x if isinstance(x, B) else B(float(x), 0.0, 0.0)

    def cast(self, u):
        """Rounded to a coarser precision (a double scalar meeting a float32 buffer)."""
        if self.u == 0.0 or self.u >= u:
            return self
        return B(self.v, self.e + u * np.abs(self.v), u)

    @staticmethod
    def _pair(a, b):
        a, b = B.lift(a), B.lift(b)
        u = max(a.u, b.u, U64)
        return a.cast(u), b.cast(u), u

    # -- arithmetic
    def __add__(self, other):
        a, b, u = B._pair(self, other)
        z = a.v + b.v
        return B(z, a.e + b.e + u * np.abs(z), u)

    def __radd__(self, other):
        return B.lift(other) + self

    def __sub__(self, other):
        a, b, u = B._pair(self, other)
        z = a.v - b.v
        return B(z, a.e + b.e + u * np.abs(z), u)

    def __rsub__(self, other):
        return B.lift(other) - self

    def __mul__(self, other):
        a, b, u = B._pair(self, other)
        z = a.v * b.v
        return B(z, np.abs(a.v) * b.e + np.abs(b.v) * a.e + a.e * b.e + u * np.abs(z), u)

    def __rmul__(self, other):
        return B.lift(other) * self

    def __truediv__(self, other):
        a, b, u = B._pair(self, other)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            z = a.v / b.v
            margin = np.abs(b.v) - b.e
            e = np.where(margin > 0, (a.e + np.abs(z) * b.e) / np.where(margin > 0, margin, 1.0),
                         np.inf)
        return B(z, e + u * np.abs(z), u)

    def __rtruediv__(self, other):
        return B.lift(other) / self

    def __neg__(self):
        return B(-self.v, self.e, self.u)

    def __abs__(self):
        return B(np.abs(self.v), self.e, self.u)

    def sqrt(self):
        u = max(self.u, U64)
        x = np.maximum(self.v, 0.0)
        z = np.sqrt(x)
        with np.errstate(divide="ignore", invalid="ignore"):
            prop = np.where(z > 0, self.e / np.where(z > 0, z, 1.0), np.inf)
        return B(z, np.minimum(prop, np.sqrt(self.e)) + 2 * u * z, u)

    def pow(self, k):
        """A double power (beta ** step): libm's pow is within 1 ulp (2u)."""
        assert not np.any(self.e) and self.u <= U64, "pow of an inexact value"
        z = self.v ** float(k)
        return B(z, 2 * U64 * np.abs(z), U64)


def H(x):
    """A hyperparameter: an exact double (its rounding to float32 counts where it meets a
    float32 buffer), or already a B (a float32 tensor lr is held at float32)."""
    return x if isinstance(x, B) else B(float(x), 0.0, U64)


def maximum(a, b):
    a, b, u = B._pair(a, b)
    return B(np.maximum(a.v, b.v), np.maximum(a.e, b.e), u)


def lerp(a, b, w):
    """torch.lerp with a scalar weight, as torch and lrcore compute it: the weight rounded to
    the buffers' dtype, then a + w*(b - a) if |w| < 0.5 else b - (b - a)*(1 - w): 3 or 4
    roundings."""
    w = B.lift(w).cast(max(a.u, b.u))
    if abs(float(w.v)) < 0.5:
        return a + w * (b - a)
    return b - (b - a) * (1 - w)


def _grad(p, g, hp):
    """g = -grad if maximize (exact); g + weight_decay * param (2 roundings) if weight_decay."""
    if hp.get("maximize"):
        g = -g
    if hp.get("weight_decay", 0.0) and not _decoupled(hp):
        g = g + H(hp["weight_decay"]) * p
    return g


def _decoupled(hp):
    return bool(hp.get("decoupled_weight_decay", False))


# -- one twin per rule: the operations of one step, in the order torch and lrcore perform them.
# Counts are roundings per element and step (each scalar's double arithmetic aside).

def _twin_sgd(p, g, s, hp, step):
    """SGD: g (+wd: 2); buf = momentum*buf + (1 - dampening)*g: 3 (or buf = g at step 1: 0);
    nesterov g + momentum*buf: 2; param + (-lr)*g: 2. At most 9 per step on the param."""
    g = _grad(p, g, hp)
    buf = s.get("momentum_buffer")
    out = {}
    if hp.get("momentum", 0.0):
        m = H(hp["momentum"])
        buf = g if buf is None else buf * m + g * (1 - H(hp.get("dampening", 0.0)))
        out["momentum_buffer"] = buf
        g = g + buf * m if hp.get("nesterov") else buf
    return p + g * (-H(hp["lr"])), out


def _twin_adam(p, g, s, hp, step):
    """Adam/AdamW: param*(1 - lr*wd) if decoupled: 1 (+1 for the scalar's cast), else g + wd*p: 2;
    exp_avg = lerp(exp_avg, g, 1 - beta1): 3-4; exp_avg_sq*beta2 + ((1 - beta2)*g)*g: 4;
    amsgrad max: 0; denom = sqrt(v)/sqrt(1 - beta2**t) + eps: 3 (sqrt at 2u);
    param + ((-lr/(1 - beta1**t))*exp_avg)/denom: 3. At most 13 per step on the param, plus
    what the states carry in from earlier steps."""
    b1, b2 = H(hp["betas"][0]), H(hp["betas"][1])
    lr, wd = H(hp["lr"]), hp.get("weight_decay", 0.0)
    if wd and _decoupled(hp):
        p = p * (1 - lr * B(wd))
    g = _grad(p, g, hp)
    m = lerp(s["exp_avg"], g, 1 - b1)
    v = s["exp_avg_sq"] * b2 + ((1 - b2) * g) * g
    out = {"exp_avg": m, "exp_avg_sq": v}
    if hp.get("amsgrad"):
        v = out["max_exp_avg_sq"] = maximum(s["max_exp_avg_sq"], v)
    bc1, bc2 = 1 - b1.pow(step), 1 - b2.pow(step)
    denom = v.sqrt() / bc2.sqrt() + H(hp["eps"])
    return p + ((-lr / bc1) * m) / denom, out


def _twin_adagrad(p, g, s, hp, step):
    """Adagrad: g (+wd: 2); clr = lr/(1 + (t - 1)*lr_decay) in double; sum + g*g: 2;
    sqrt(sum) + eps: 2 (sqrt at 2u); param + ((-clr)*g)/std: 3. At most 9 per step."""
    g = _grad(p, g, hp)
    clr = H(hp["lr"]) / (1 + (step - 1) * H(hp.get("lr_decay", 0.0)))
    ssum = s["sum"] + g * g
    std = ssum.sqrt() + H(hp["eps"])
    return p + ((-clr) * g) / std, {"sum": ssum}


def _twin_rmsprop(p, g, s, hp, step):
    """RMSprop: g (+wd: 2); square_avg*alpha + ((1 - alpha)*g)*g: 4; centered: grad_avg =
    lerp(grad_avg, g, 1 - alpha): 3-4, avg = sqrt(square_avg - grad_avg*grad_avg) + eps: 4
    (the subtraction can cancel: its bound is absolute, and the sqrt and the division carry it
    as such); else sqrt(square_avg) + eps: 2; momentum: buf*momentum + g/avg: 3, param +
    (-lr)*buf: 2; else param + ((-lr)*g)/avg: 3."""
    alpha = H(hp["alpha"])
    g = _grad(p, g, hp)
    sq = s["square_avg"] * alpha + ((1 - alpha) * g) * g
    out = {"square_avg": sq}
    if hp.get("centered"):
        ga = out["grad_avg"] = lerp(s["grad_avg"], g, 1 - alpha)
        avg = (sq - ga * ga).sqrt() + H(hp["eps"])
    else:
        avg = sq.sqrt() + H(hp["eps"])
    lr = H(hp["lr"])
    if hp.get("momentum", 0.0):
        buf = out["momentum_buffer"] = s["momentum_buffer"] * H(hp["momentum"]) + g / avg
        return p + (-lr) * buf, out
    return p + ((-lr) * g) / avg, out


def _twin_adadelta(p, g, s, hp, step):
    """Adadelta: g (+wd: 2); square_avg*rho + ((1 - rho)*g)*g: 4; delta = (sqrt(acc_delta +
    eps) / sqrt(square_avg + eps)) * g: 6 (two sqrt at 2u); acc_delta*rho + ((1 - rho)*delta)*
    delta: 4; param + (-lr)*delta: 2."""
    rho, eps = H(hp["rho"]), H(hp["eps"])
    g = _grad(p, g, hp)
    sq = s["square_avg"] * rho + ((1 - rho) * g) * g
    delta = ((s["acc_delta"] + eps).sqrt() / (sq + eps).sqrt()) * g
    acc = s["acc_delta"] * rho + ((1 - rho) * delta) * delta
    return p + (-H(hp["lr"])) * delta, {"square_avg": sq, "acc_delta": acc}


def _twin_adamax(p, g, s, hp, step):
    """Adamax: g (+wd: 2); exp_avg lerp: 3-4; exp_inf = max(exp_inf*beta2, |g| + eps): 2;
    param + ((-lr/(1 - beta1**t))*exp_avg)/exp_inf: 3."""
    b1, b2 = H(hp["betas"][0]), H(hp["betas"][1])
    g = _grad(p, g, hp)
    m = lerp(s["exp_avg"], g, 1 - b1)
    inf = maximum(s["exp_inf"] * b2, abs(g) + H(hp["eps"]))
    clr = H(hp["lr"]) / (1 - b1.pow(step))
    return p + ((-clr) * m) / inf, {"exp_avg": m, "exp_inf": inf}


def _twin_nadam(p, g, s, hp, step):
    """NAdam: decoupled decay 1 or g + wd*p: 2; mu, mu_next in double; mu_product *= mu in
    torch's scalar dtype (float32 unless the default dtype is float64: 1 rounding of u32 per
    step, which the step-size scalars inherit); exp_avg lerp: 3-4; exp_avg_sq: 4;
    denom = sqrt(exp_avg_sq / (1 - beta2**t)) + eps: 3; two addcdiv updates: 3 each."""
    b1, b2 = H(hp["betas"][0]), H(hp["betas"][1])
    lr, wd, psi = H(hp["lr"]), hp.get("weight_decay", 0.0), H(hp["momentum_decay"])
    if wd and _decoupled(hp):
        p = p * (1 - lr * B(wd))
    g = _grad(p, g, hp)
    mu = b1 * (1 - 0.5 * B(0.96).pow(float((step * psi).v)))
    mu_next = b1 * (1 - 0.5 * B(0.96).pow(float(((step + 1) * psi).v)))
    mu_product = s["mu_product"] * mu
    m = lerp(s["exp_avg"], g, 1 - b1)
    v = s["exp_avg_sq"] * b2 + ((1 - b2) * g) * g
    denom = (v / (1 - b2.pow(step))).sqrt() + H(hp["eps"])
    mp = B(mu_product.v, mu_product.e, U64)          # torch reads it back as a Python float
    p = p + ((-lr * (1 - mu) / (1 - mp)) * g) / denom
    p = p + ((-lr * mu_next / (1 - mp * mu_next)) * m) / denom
    return p, {"exp_avg": m, "exp_avg_sq": v, "mu_product": mu_product}


def _twin_radam(p, g, s, hp, step):
    """RAdam: decay 1 or 2; exp_avg lerp: 3-4; exp_avg_sq: 4; m = exp_avg/(1 - beta1**t): 1;
    rho_t and rect in double; if rho_t > 5: adaptive = (1/(sqrt(exp_avg_sq) + eps)) *
    sqrt(1 - beta2**t): 4 (torch divides the scalar by the tensor: 3); param - ((m*lr)*
    adaptive)*rect: 4; else param - m*lr: 2."""
    b1, b2 = H(hp["betas"][0]), H(hp["betas"][1])
    lr, wd = H(hp["lr"]), hp.get("weight_decay", 0.0)
    if wd and _decoupled(hp):
        p = p * (1 - lr * B(wd))
    g = _grad(p, g, hp)
    m = lerp(s["exp_avg"], g, 1 - b1)
    v = s["exp_avg_sq"] * b2 + ((1 - b2) * g) * g
    out = {"exp_avg": m, "exp_avg_sq": v}
    bc1, bc2 = 1 - b1.pow(step), 1 - b2.pow(step)
    mhat = m / bc1
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * B(float(step)) * b2.pow(step) / bc2
    if float(rho_t.v) > 5.0:
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)).sqrt()
        adaptive = (1 / (v.sqrt() + H(hp["eps"]))) * bc2.sqrt()
        return p - ((mhat * lr) * adaptive) * rect, out
    return p - mhat * lr, out


TWINS = {"SGD": _twin_sgd, "Adam": _twin_adam, "AdamW": _twin_adam, "Adagrad": _twin_adagrad,
         "RMSprop": _twin_rmsprop, "Adadelta": _twin_adadelta, "Adamax": _twin_adamax,
         "NAdam": _twin_nadam, "RAdam": _twin_radam}

# State a rule's first step finds when torch has not created it yet (None: "no buffer", SGD's
# first step copies g into it).
INITIAL_STATE = {"SGD": {"momentum_buffer": None}, "NAdam": {"mu_product": 1.0}}


def normalise_hp(name, hp):
    """torch's param_group values as plain floats/bools; AdamW decouples its decay."""
    out = {}
    for k, val in hp.items():
        if k == "params":
            continue
        if hasattr(val, "item") and getattr(val, "ndim", 0) == 0:
            is32 = "float32" in str(getattr(val, "dtype", ""))
            val = B(val.item(), 0.0, U32 if is32 else U64)   # a tensor lr: torch's float32
            if k in ("lr",):
                out[k] = val
                continue
            val = float(val.v)
        if isinstance(val, (tuple, list)):
            val = tuple(x.item() if hasattr(x, "item") else x for x in val)
        out[k] = val
    if name == "AdamW":
        out["decoupled_weight_decay"] = True
    return out


def twin_step(name, param, grad, state, hp, step, dtype):
    """One step of rule `name` from the values one side holds: {buffer: B} with v = F64 of
    the step (double) and e = r, its rounding budget.

    param, grad: arrays; state: {torch state name: array or number, missing before the first
    step}. Returns {buffer name ('param' or a state name): B}."""
    if name not in TWINS:
        raise AssertionError(f"no error model for torch.optim.{name}: add a _twin_ function "
                             f"to tests/ulp_budget.py before comparing it with torch")
    u = UNIT_ROUNDOFF[str(np.dtype(dtype))]
    p = B(np.asarray(param, np.float64), 0.0, u)
    g = B(np.asarray(grad, np.float64), 0.0, u)
    s = {}
    for k, init in INITIAL_STATE.get(name, {}).items():
        s[k] = None if init is None else B(init, 0.0, u)
    for k, val in state.items():
        if val is None:
            continue
        su = u
        if k == "mu_product":      # torch's scalar dtype
            su = U32 if np.asarray(val).dtype == np.float32 else U64
        s[k] = B(np.asarray(val, np.float64), 0.0, su)
    zeros = lambda: B(np.zeros_like(p.v), 0.0, u)  # noqa: E731
    for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg", "grad_avg",
              "acc_delta", "exp_inf"):
        s.setdefault(k, zeros())
    if name == "RMSprop":
        s.setdefault("momentum_buffer", zeros())
    new_p, new_s = TWINS[name](p, g, s, hp, step)
    return {"param": new_p, **new_s}


# -- torch.optim and lrcore.torch side by side ---------------------------------------------------

def _snapshot(param, state):
    p = param.detach().numpy().copy()
    s = {k: (v.detach().numpy().copy() if hasattr(v, "detach") else v)
         for k, v in state.items() if k != "step"}
    return p, s


def step_budget(side_a, side_b):
    """{buffer: (carried, rounding)} after one step, from the two sides' twin_step results:
    allowed |a - b| = carried + rounding = |F64(a) - F64(b)| + 2 (r(a) + r(b))."""
    return {k: (np.abs(side_a[k].v - side_b[k].v), 2 * (side_a[k].e + side_b[k].e))
            for k in side_a}


class TorchPair:
    """A torch.optim optimizer (foreach=False, the reference) and another optimizer over a copy
    of the same params (lrcore.torch, or torch.optim after a state-dict switch), stepped on the
    SAME gradients and checked against the budget after every step.

    Same gradients: torch's are computed once (on the reference model) and copied to the other
    side (``copy_grads=True``; False when the test set equal grads itself), so the two
    trajectories differ only by the optimizers' arithmetic, which is what the budget bounds.
    (On separate backward passes the model's own sensitivity would amplify the difference by
    an amount no operation count predicts.) The budget needs nothing from earlier steps, so a
    pair may be rebuilt over new optimizer objects at any time (after a state-dict switch)."""

    def __init__(self, name, ref, opt, dtype, copy_grads=True, label="", steps=0, record=True):
        self.name, self.ref, self.opt = name, ref, opt
        self.record = record                   # False: a deliberately wrong side, not reported
        self.dtype = np.dtype(str(dtype).replace("torch.", ""))
        self.copy_grads = copy_grads
        self.label = label or name
        self.steps = steps
        self.sgd_steps = {}

    def pairs(self):
        for gi, (gr, go) in enumerate(zip(self.ref.param_groups, self.opt.param_groups)):
            assert len(gr["params"]) == len(go["params"]), "the two sides' groups differ"
            for pi, (pr, po) in enumerate(zip(gr["params"], go["params"])):
                yield (gi, pi), gr, pr, po

    def step(self, closure=None):
        """One step of both; returns what the other side's step returned."""
        import torch
        if self.copy_grads:
            with torch.no_grad():
                for _, _, pr, po in self.pairs():
                    po.grad = None if pr.grad is None else pr.grad.detach().clone()
        before = []
        for key, gr, pr, po in self.pairs():
            if pr.grad is None:
                continue
            before.append((key, gr, pr, po, _snapshot(pr, self.ref.state.get(pr, {})),
                           _snapshot(po, self.opt.state.get(po, {})),
                           pr.grad.detach().numpy().copy()))
        self.ref.step()
        out = self.opt.step(closure) if closure is not None else self.opt.step()
        self.steps += 1
        items = []
        for key, gr, pr, po, (p_r, s_r), (p_m, s_m), g in before:
            st = self.ref.state[pr]
            if "step" in st:
                step = int(float(st["step"]))
                assert float(self.opt.state[po]["step"]) == step, (key, "step count differs")
            else:                                  # SGD keeps no count: 1 = no buffer yet
                step = 1 if "momentum_buffer" not in s_r else 2
            mine = self.opt.state[po]
            where = f"{self.label} step {self.steps} group {key[0]} param {key[1]}"
            assert set(mine) == set(st), (where, sorted(mine), sorted(st))
            names = sorted(k for k in st if k != "step")
            for k in names:
                assert mine[k].dtype == st[k].dtype and mine[k].shape == st[k].shape, (where, k)
            items.append(dict(key=key, hp=normalise_hp(self.name, gr), step=step, names=names,
                              p_r=p_r, s_r=s_r, p_m=p_m, s_m=s_m, g=g, where=where,
                              after_r={"param": pr.detach().numpy(),
                                       **{k: st[k].detach().numpy() for k in names}},
                              after_m={"param": po.detach().numpy(),
                                       **{k: mine[k].detach().numpy() for k in names}}))
        # One budget evaluation per group of params that share hyperparameters, step and
        # state layout (the MLP's weights and biases): the same arithmetic, fewer numpy calls.
        batches = {}
        for it in items:
            flat = all(np.ndim(v) > 0 for v in list(it["s_r"].values()) + list(it["s_m"].values()))
            tag = (it["key"][0], it["step"], tuple(it["names"]), tuple(sorted(it["s_r"])),
                   tuple(sorted(it["s_m"]))) if flat else ("single", it["key"])
            batches.setdefault(tag, []).append(it)
        for group in batches.values():
            self._check(group)
        return out

    def _check(self, group):
        """Budget and comparison for params stepped alike, concatenated."""
        def cat(get):
            return np.concatenate([np.asarray(get(it), np.float64).reshape(-1) for it in group])
        first = group[0]
        if len(group) == 1:
            cat = lambda get: get(first)  # noqa: E731
        sides = []
        for side in ("r", "m"):
            state = {k: cat(lambda it, k=k, side=side: it["s_" + side][k])
                     for k in first["s_" + side]}
            sides.append(twin_step(self.name, cat(lambda it, side=side: it["p_" + side]),
                                   cat(lambda it: it["g"]), state, first["hp"], first["step"],
                                   self.dtype))
        allowed = step_budget(*sides)
        for k in ["param"] + first["names"]:
            before = (cat(lambda it: it["p_r"]) if k == "param" else
                      (cat(lambda it, k=k: it["s_r"][k]) if k in first["s_r"] else None))
            msg = compare(self.name, self.dtype, k, cat(lambda it, k=k: it["after_m"][k]),
                          cat(lambda it, k=k: it["after_r"][k]), allowed[k],
                          first["where"] if len(group) == 1 else
                          f"{first['where'].rsplit(' param ', 1)[0]} params "
                          f"{[it['key'][1] for it in group]} (concatenated)",
                          before=before, record=self.record)
            assert msg is None, msg


# -- comparison and report -------------------------------------------------------------------

_REPORT: dict = {}


def capability():
    """The ATEN_CPU_CAPABILITY torch runs with in this process ('numpy' without torch)."""
    import sys
    torch = sys.modules.get("torch")
    if torch is None:
        return "recorded"
    return torch.backends.cpu.get_cpu_capability().lower()


def compare(rule, dtype, what, mine, ref, budget, where, before=None, cap=None, record=True):
    """None if |mine - ref| <= carried + rounding everywhere (NaN never passes), else a
    message about the worst element.

    budget: (carried, rounding) from step_budget. Records per rule, dtype and capability, in
    ulps of the magnitude involved (eps * max(|torch after|, |torch before|)): the largest
    difference, the largest new difference of one step (beyond the carried one), the largest
    one-step rounding budget, and the largest fraction of it used."""
    ref = np.asarray(ref, np.float64)
    carried, rounding = (np.broadcast_to(np.asarray(x, np.float64), ref.shape).reshape(-1)
                         for x in budget)
    mine = np.asarray(mine, np.float64).reshape(-1)
    ref = ref.reshape(-1)
    mag = np.abs(ref) if before is None else np.maximum(
        np.abs(ref), np.abs(np.asarray(before, np.float64).reshape(-1)))
    unit = np.finfo(dtype).eps * np.maximum(mag, np.finfo(dtype).smallest_normal)
    diff = np.abs(mine - ref)
    bound = carried + rounding
    ok = diff <= bound
    new = np.maximum(diff - carried, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        used = np.where(rounding > 0, new / rounding, np.where(new > 0, np.inf, 0.0))
    key = f"{rule}|{np.dtype(dtype).name}|{cap or capability()}"
    rec = {} if not record else _REPORT.setdefault(key, {"max_ulps": 0.0, "max_new_ulps": 0.0,
                                   "max_budget_ulps": 0.0, "max_used": 0.0, "compared": 0})
    if record and ref.size:
        rec["compared"] += ref.size
        nanmax = lambda x: float(np.max(np.where(np.isnan(x), np.inf, x)))  # noqa: E731
        rec["max_ulps"] = max(rec["max_ulps"], nanmax(diff / unit))
        rec["max_new_ulps"] = max(rec["max_new_ulps"], nanmax(new / unit))
        rec["max_budget_ulps"] = max(rec["max_budget_ulps"], nanmax(rounding / unit))
        rec["max_used"] = max(rec["max_used"], nanmax(used))
    if ok.all():
        return None
    bad = ~ok
    worst = int(np.argmax(np.where(bad, np.where(np.isnan(used), np.inf, used), -1.0)))
    return (f"{where} {what}: element {worst} of {ref.size}: lrcore {mine[worst]!r}, torch "
            f"{ref[worst]!r}, |diff| {diff[worst]:.3e} = {diff[worst] / unit[worst]:.1f} ulp "
            f"of the magnitude; allowed {bound[worst]:.3e}: carried from earlier steps "
            f"{carried[worst]:.3e} + this step's rounding {rounding[worst]:.3e} "
            f"({rounding[worst] / unit[worst]:.1f} ulp); {int(bad.sum())} elements over budget")


def report():
    """{rule|dtype|capability: {max_ulps, max_new_ulps, max_budget_ulps, max_used, compared}}."""
    return {k: dict(v) for k, v in sorted(_REPORT.items())}


def _dump():
    path = os.environ.get("LRCORE_ULP_REPORT")
    if path and _REPORT:
        with open(path, "a") as f:
            f.write(json.dumps(report()) + "\n")


atexit.register(_dump)
