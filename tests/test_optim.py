"""The optimizer classes (lrcore.optim) against torch's recorded trajectories, the kernels
they drive, and their contract: schedules as hyperparameters, set(), validation that changes
nothing on a rejected call, clipping, skipping non-finite steps, many params, threads.

Every comparison is element by element on non-zero random data. "Replay" means running the
per-array functions of lrcore.kernels (compiled, or the numpy twin on LRCORE_BACKEND=python)
with the values the optimizer should have used: the optimizer's single native call over all
arrays must give bitwise the same result.
"""
import json
import math
import re
import warnings

import numpy as np
import pytest

import lrcore
from lrcore import kernels, optim, reference
from lrcore import schedules as S

from test_golden_torch import GOLDEN_ARRAYS, GOLDEN_CASES, GOLDEN_META

CLASSES = {"SGD": lrcore.SGD, "Adam": lrcore.Adam, "AdamW": lrcore.AdamW,
           "Adagrad": lrcore.Adagrad, "RMSprop": lrcore.RMSprop, "Adadelta": lrcore.Adadelta,
           "Adamax": optim.Adamax, "NAdam": optim.NAdam, "RAdam": optim.RAdam,
           "Lion": optim.Lion}
NEW_RULES = ("Adamax", "NAdam", "RAdam", "Lion")
TORCH_STATE = {"sum": "state_sum"}          # torch state name -> lrcore state name
PLANS = ("default", "reference")            # the backend's StepPlan, and the numpy twin's


@pytest.fixture(params=PLANS)
def plan(request, monkeypatch):
    """Run the optimizer on the backend's StepPlan, then on lrcore.reference.StepPlan."""
    if request.param == "reference":
        monkeypatch.setattr(optim.base, "plan_class", lambda: reference.StepPlan)
    return request.param


def _rand(rng, shape, dtype, low=0.5, high=1.5):
    """Non-zero random values of both signs."""
    x = rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)
    return np.ascontiguousarray(x.astype(dtype))


# --------------------------------------------------------------------------------------------
# Replaying the kernels one array at a time
# --------------------------------------------------------------------------------------------

class Replay:
    """The reference trajectory of one param: state buffers plus the kernel call per step."""

    def __init__(self, name, param, initial_accumulator=0.0):
        self.name, self.param = name, param.copy()
        self.state = {}
        self.initial_accumulator = initial_accumulator
        self.momentum_started = False

    def _buf(self, key):
        if key not in self.state:
            fill = self.initial_accumulator if key == "state_sum" else 0.0
            self.state[key] = np.full_like(self.param, fill)
        return self.state[key]

    def step(self, grad, hp, step, flags=None):
        """hp: the values in force (numbers); step: 1 for the first step."""
        flags = flags or {}
        p, g, name = self.param, np.ascontiguousarray(grad), self.name
        if name == "SGD":
            mom = hp["momentum"]
            buf = self._buf("momentum_buffer") if mom > 0 else None
            kstep = step
            if mom > 0:
                kstep = step if self.momentum_started else 1
                self.momentum_started = True
            kernels.sgd(p, g, buf, lr=hp["lr"], step=kstep, momentum=mom,
                        dampening=hp["dampening"], nesterov=hp["nesterov"],
                        weight_decay=hp["weight_decay"], maximize=hp["maximize"])
        elif name in ("Adam", "AdamW"):
            vmax = self._buf("max_exp_avg_sq") if flags.get("amsgrad") else None
            kernels.adam(p, g, self._buf("exp_avg"), self._buf("exp_avg_sq"), vmax,
                         lr=hp["lr"], step=step, beta1=hp["beta1"], beta2=hp["beta2"],
                         eps=hp["eps"], weight_decay=hp["weight_decay"],
                         decoupled_weight_decay=hp["decoupled_weight_decay"],
                         maximize=hp["maximize"])
        elif name == "Adagrad":
            kernels.adagrad(p, g, self._buf("state_sum"), lr=hp["lr"], step=step,
                            lr_decay=hp["lr_decay"], weight_decay=hp["weight_decay"],
                            eps=hp["eps"], maximize=hp["maximize"])
        elif name == "RMSprop":
            mom = hp["momentum"]
            kernels.rmsprop(p, g, self._buf("square_avg"),
                            self._buf("momentum_buffer") if mom > 0 else None,
                            self._buf("grad_avg") if flags.get("centered") else None,
                            lr=hp["lr"], step=step, alpha=hp["alpha"], eps=hp["eps"],
                            weight_decay=hp["weight_decay"], momentum=mom,
                            maximize=hp["maximize"])
        elif name == "Adadelta":
            kernels.adadelta(p, g, self._buf("square_avg"), self._buf("acc_delta"),
                             lr=hp["lr"], step=step, rho=hp["rho"], eps=hp["eps"],
                             weight_decay=hp["weight_decay"], maximize=hp["maximize"])
        else:   # the rules added with the table: every hyperparameter by name
            rule = CLASSES[name].rule
            states = [self._buf(s.name) for s in rule.states]
            extra = {}
            if name == "NAdam":   # the table: a float32 running product, f32(prod * f32(mu))
                mu = hp["beta1"] * (1.0 - 0.5 * 0.96 ** (step * hp["momentum_decay"]))
                self.mu_product = np.float32(getattr(self, "mu_product", 1.0)) * np.float32(mu)
                extra["mu_product"] = float(self.mu_product)
            getattr(kernels, rule.name)(p, g, *states, step=step, **hp, **extra)


def _numbers(opt, group):
    """Hyperparameters in force (schedules evaluated) without the fixed flags."""
    hp = opt.hyperparameters(group)
    return {k: v for k, v in hp.items() if k not in ("amsgrad", "centered")}


def _assert_same(opt, replays, where=""):
    """Every param and state buffer bitwise equal to its replay."""
    state = opt.state_dict()["state"]
    for i, (p, r) in enumerate(zip(opt.params, replays)):
        assert p.tobytes() == r.param.tobytes(), (
            f"{where} params[{i}]: max |diff| {np.max(np.abs(p - r.param))}")
        for key, buf in r.state.items():
            assert key in state[i], f"{where} params[{i}] has no state {key!r}"
            assert state[i][key].tobytes() == buf.tobytes(), f"{where} params[{i}] state {key}"


# --------------------------------------------------------------------------------------------
# Golden torch trajectories through the optimizer classes, two groups, three params
# --------------------------------------------------------------------------------------------

SPLIT = ((slice(0, 10), (2, 5), 0), (slice(10, 25), (15,), 1), (slice(25, 37), (3, 4), 0))


def _partner(case):
    """Another golden case of the same optimizer and dtype, for the second group."""
    same = [c for c in GOLDEN_CASES if c["optimizer"] == case["optimizer"]
            and c["dtype"] == case["dtype"]]
    return same[(same.index(case) + 1) % len(same)]


def _torch_hyper(case):
    hp = dict(case["hyperparameters"])
    if case["optimizer"] == "Adagrad":
        hp.pop("initial_accumulator_value")
    return hp


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=[c["name"] for c in GOLDEN_CASES])
def test_golden_inputs_in_two_groups_equal_per_array_kernels(plan, case):
    """Group 0 holds params 0 and 2 with this golden case's hyperparameters, group 1 holds
    param 1 with another case's; on torch's recorded inputs, each piece must be bitwise the
    per-array kernel calls with its own group's values at every step (the kernels follow
    torch's trajectories within the ulp budget of tests/test_golden_torch.py)."""
    other = _partner(case)
    dtype, n_steps = case["dtype"], GOLDEN_META["n_steps"]
    init = GOLDEN_ARRAYS[f"inputs__{dtype}__initial_param"]
    grads = GOLDEN_ARRAYS[f"inputs__{dtype}__grads"]
    params = [init[sl].reshape(shape).copy() for sl, shape, _ in SPLIT]
    hyper = [_torch_hyper(case), _torch_hyper(other)]
    groups = [{"params": [p for p, (_, _, g) in zip(params, SPLIT) if g == k], **hyper[k]}
              for k in range(2)]
    kwargs = {}
    acc = 0.0
    if case["optimizer"] == "Adagrad":
        acc = case["hyperparameters"]["initial_accumulator_value"]
        if acc != other["hyperparameters"]["initial_accumulator_value"]:
            groups[1] = {"params": groups[1]["params"], **hyper[0]}
        kwargs["initial_accumulator_value"] = acc
    opt = CLASSES[case["optimizer"]](groups, **kwargs)
    order = [0, 2, 1]          # params in optimizer order: group 0 first, then group 1
    replays = [Replay(case["optimizer"], opt.params[j], acc) for j in range(3)]
    hps = [_numbers(opt, SPLIT[i][2]) for i in order]
    flags = [_flags(opt.hyperparameters(SPLIT[i][2])) for i in order]
    for step in range(1, n_steps + 1):
        grad_list = [grads[step - 1][SPLIT[i][0]].reshape(SPLIT[i][1]).copy() for i in order]
        before = [g.copy() for g in grad_list]
        assert opt.step(grad_list) is True
        assert opt.step_count == step
        for g, b in zip(grad_list, before):
            assert g.tobytes() == b.tobytes(), "a grad was written"
        for r, g, hp, fl in zip(replays, grad_list, hps, flags):
            r.step(g, hp, step, fl)
        _assert_same(opt, replays, f"{case['name']} step {step}")


# --------------------------------------------------------------------------------------------
# The native plan against the numpy twin, and against per-array kernel calls
# --------------------------------------------------------------------------------------------

CONFIGS = [
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, maximize=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.01, amsgrad=True)),
    ("AdamW", dict(lr=0.01, betas=(0.8, 0.95), maximize=True)),
    ("Adagrad", dict(lr=0.05, lr_decay=0.1, weight_decay=0.01, initial_accumulator_value=0.1)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.5)),
    ("Adadelta", dict(lr=1.0, rho=0.5, weight_decay=0.01)),
    ("Adamax", dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.01)),
    ("Adamax", dict(lr=0.01, betas=(0.3, 0.9), maximize=True)),
    ("NAdam", dict(lr=0.01, weight_decay=0.01, momentum_decay=0.01)),
    ("NAdam", dict(lr=0.01, betas=(0.3, 0.9), weight_decay=0.01, decoupled_weight_decay=True)),
    ("RAdam", dict(lr=0.01, weight_decay=0.01)),
    ("RAdam", dict(lr=0.01, betas=(0.3, 0.5), weight_decay=0.01, decoupled_weight_decay=True,
                   maximize=True)),
    ("Lion", dict(lr=0.01, weight_decay=0.1)),
    ("Lion", dict(lr=0.01, betas=(0.5, 0.9), maximize=True)),
]
CONFIG_IDS = [f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)]
SHAPES = [(0,), (1,), (7,), (3, 5), (33,), (2, 3, 4), (1003,)]


def _flags(kw):
    return {"amsgrad": kw.get("amsgrad", False), "centered": kw.get("centered", False)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,kw", CONFIGS, ids=CONFIG_IDS)
def test_native_plan_matches_numpy_twin(name, kw, dtype):
    rng = np.random.default_rng(11)
    start = [_rand(rng, s, dtype) for s in SHAPES]
    grads = [[_rand(rng, s, dtype) for s in SHAPES] for _ in range(5)]
    results = []
    for plan_class in (optim.plan_class(), reference.StepPlan):
        params = [p.copy() for p in start]
        saved, optim.base.plan_class = optim.base.plan_class, (lambda c=plan_class: c)
        try:
            opt = CLASSES[name](params, **kw)
        finally:
            optim.base.plan_class = saved
        assert type(opt._plan) is plan_class
        for g in grads:
            opt.step(g)
        results.append((params, opt.state_dict()["state"]))
    # bit for bit (the README: every build and the numpy twin give the same bytes), element
    # by element, signed zeros included
    for i, (a, b) in enumerate(zip(results[0][0], results[1][0])):
        assert a.tobytes() == b.tobytes(), f"params[{i}]: the native plan differs from the twin"
        if a.size:
            assert np.all(a != start[i]), "the step left an element unchanged"
    for i, (sa, sb) in enumerate(zip(results[0][1], results[1][1])):
        assert sorted(sa) == sorted(sb)
        for k in sa:
            assert np.asarray(sa[k]).tobytes() == np.asarray(sb[k]).tobytes(), f"params[{i}] {k}"


@pytest.mark.parametrize("name,kw", CONFIGS, ids=CONFIG_IDS)
def test_many_params_equal_per_array_kernel_calls(plan, name, kw):
    """200 arrays of mixed sizes (0 to 5000 elements, some multi-dimensional), two groups
    with different hyperparameters: one native call per step equals 200 kernel calls."""
    rng = np.random.default_rng(5)
    sizes = rng.integers(0, 5000, 200)
    sizes[:5] = [0, 1, 2, 3, 17]
    params = []
    for k, n in enumerate(sizes):
        shape = (int(n),) if k % 3 else (1, int(n)) if k % 2 else (int(n), 1)
        params.append(_rand(rng, shape, np.float32 if k % 2 else np.float64))
    # float32 and float64 arrays mixed in one optimizer (one plan, one call)
    lr2 = kw["lr"] * 0.5
    groups = [{"params": params[::2]}, {"params": params[1::2], "lr": lr2, "weight_decay": 0.02}]
    opt = CLASSES[name](groups, **kw)
    ordered = params[::2] + params[1::2]
    replays = [Replay(name, p, kw.get("initial_accumulator_value", 0.0)) for p in ordered]
    hps = [_numbers(opt, 0), _numbers(opt, 1)]
    assert hps[1]["lr"] == lr2 and hps[0]["lr"] == kw["lr"]
    for step in range(1, 4):
        grads = [_rand(rng, p.shape, p.dtype) for p in ordered]
        opt.step(grads)
        for i, (r, g) in enumerate(zip(replays, grads)):
            r.step(g, hps[0 if i < len(params[::2]) else 1], step, _flags(kw))
        _assert_same(opt, replays, f"step {step}")
    assert all(o is p for o, p in zip(opt.params, ordered)), "the caller's arrays are updated"


@pytest.mark.parametrize("name,kw", CONFIGS, ids=CONFIG_IDS)
def test_thread_count_is_bitwise_invariant(force_threads, name, kw):
    rng = np.random.default_rng(9)
    start = [_rand(rng, (n,), np.float32) for n in (40_001, 3, 77_777, 0, 12_345)]
    grads = [[_rand(rng, p.shape, p.dtype) for p in start] for _ in range(3)]
    results = []
    for threads in (1, 2, 3, 8):
        params = [p.copy() for p in start]
        opt = CLASSES[name](params, num_threads=threads, **kw)
        for g in grads:
            opt.step(g, clip_norm=100.0)
        results.append([p.tobytes() for p in params] +
                       [b.tobytes() for st in opt.state_dict()["state"] for b in st.values()])
    for other in results[1:]:
        assert other == results[0]


# --------------------------------------------------------------------------------------------
# Schedules as hyperparameters, set() mid-training
# --------------------------------------------------------------------------------------------

SCHEDULED = [
    ("SGD", dict(lr=S.Warmup(S.Cosine(0.1, 20, floor=0.01), 3),
                 momentum=S.PiecewiseConstant([2, 5], [0.0, 0.9, 0.5]),
                 weight_decay=S.Linear(0.0, 0.1, 4))),
    ("Adam", dict(lr=S.OneCycle(0.05, 10), betas=(S.Linear(0.95, 0.85, 5), 0.99),
                  amsgrad=True)),
    ("AdamW", dict(lr=S.StepDecay(0.02, 0.5, 2), weight_decay=S.ExponentialDecay(0.1, 0.2))),
    ("Adagrad", dict(lr=S.MultiStep(0.1, [2, 4]), lr_decay=S.Linear(0.0, 0.5, 3))),
    ("RMSprop", dict(lr=S.CosineWarmRestarts(0.02, 3), alpha=S.Linear(0.9, 0.5, 6),
                     momentum=S.PiecewiseConstant([3], [0.0, 0.7]), centered=True)),
    ("Adadelta", dict(lr=S.Cyclic(0.5, 1.5, 2), rho=S.Linear(0.5, 0.95, 4))),
]


def _evaluated(kw, step):
    """The numbers a schedule config gives after `step` steps (independent of lrcore.optim)."""
    out = {}
    for k, v in kw.items():
        if k == "betas":
            out["beta1"], out["beta2"] = (b(step) if isinstance(b, S.Schedule) else b for b in v)
        elif k not in ("amsgrad", "centered"):
            out[k] = v(step) if isinstance(v, S.Schedule) else v
    return out


def _defaults(name):
    opt = CLASSES[name](np.ones(1))
    return _numbers(opt, 0)


@pytest.mark.parametrize("name,kw", SCHEDULED, ids=[n for n, _ in SCHEDULED])
def test_schedule_is_evaluated_at_steps_taken(plan, name, kw):
    rng = np.random.default_rng(3)
    params = [_rand(rng, (5, 3), np.float64), _rand(rng, (11,), np.float64)]
    opt = CLASSES[name](params, **kw)
    replays = [Replay(name, p) for p in params]
    for step in range(1, 9):
        hp = dict(_defaults(name), **_evaluated(kw, step - 1))
        got = opt.hyperparameters(0)
        for k, v in hp.items():
            assert got[k] == v, f"step {step}: hyperparameters()[{k!r}] {got[k]} != {v}"
        assert opt.lr == hp["lr"]
        grads = [_rand(rng, p.shape, p.dtype) for p in params]
        opt.step(grads)
        for r, g in zip(replays, grads):
            r.step(g, hp, step, _flags(kw))
        _assert_same(opt, replays, f"step {step}")
    # the schedules really vary over these steps (so the replay would catch a wrong step)
    assert len({_evaluated(kw, s)["lr"] for s in range(8)}) > 1


def test_sgd_momentum_schedule_first_momentum_step_copies_grad():
    """Momentum off for two steps, then on: the first momentum step sets buf = g (torch)."""
    p = np.array([1.0, -2.0, 3.0])
    opt = lrcore.SGD(p, lr=0.1, momentum=S.PiecewiseConstant([2], [0.0, 0.9]), weight_decay=0.1)
    for _ in range(2):
        opt.step(np.array([0.5, 0.5, 0.5]))
    before = p.copy()
    g = np.array([1.0, 2.0, -4.0])
    opt.step(g)
    buf = opt.state_dict()["state"][0]["momentum_buffer"]
    np.testing.assert_array_equal(buf, g + 0.1 * before)
    np.testing.assert_array_equal(p, before - 0.1 * (g + 0.1 * before))


def test_set_applies_from_next_step_in_one_group(plan):
    rng = np.random.default_rng(4)
    a, b = _rand(rng, (9,), np.float32), _rand(rng, (4, 2), np.float32)
    opt = lrcore.Adam([{"params": [a]}, {"params": [b], "lr": 0.02}], lr=0.01)
    replays = [Replay("Adam", a), Replay("Adam", b)]
    for step in range(1, 7):
        if step == 3:
            opt.set(group=1, lr=S.Linear(0.02, 0.0, 10), betas=(0.5, 0.9))
            # a schedule set after 2 steps is evaluated at 2 (not restarted from 0)
            assert opt.hyperparameters(1)["lr"] == S.Linear(0.02, 0.0, 10)(2) == 0.016
            assert opt.hyperparameters(1)["beta1"] == 0.5
            assert opt.hyperparameters(0) == dict(opt.hyperparameters(0), lr=0.01, beta1=0.9)
        if step == 5:
            opt.set(weight_decay=0.1)           # every group
        hps = [_numbers(opt, 0), _numbers(opt, 1)]
        grads = [_rand(rng, a.shape, a.dtype), _rand(rng, b.shape, b.dtype)]
        opt.step(grads)
        for r, g, hp in zip(replays, grads, hps):
            r.step(g, hp, step)
        _assert_same(opt, replays, f"step {step}")
    assert hps[1]["lr"] == pytest.approx(0.02 * (1 - 5 / 10))   # the last step: 5 taken
    assert hps[0]["weight_decay"] == hps[1]["weight_decay"] == 0.1


def _snapshot(opt, evaluate=True):
    """Everything an optimizer holds: state buffers, params, hyperparameters (and with
    `evaluate` their values in force), step."""
    sd = opt.state_dict()
    arrays = [{k: v.tobytes() for k, v in st.items()} for st in sd.pop("state")]
    values = [opt.hyperparameters(g) for g in range(len(opt.param_groups))] if evaluate else []
    return repr(sd), arrays, [p.tobytes() for p in opt.params], opt.step_count, values


REJECTED_SETS = [
    ("SGD", dict(lr=-0.1), ValueError, "lr"),
    ("SGD", dict(lr=0.5, momentum=float("nan")), ValueError, "momentum"),
    ("SGD", dict(dampening=1.5), ValueError, "dampening"),
    ("SGD", dict(nesterov=True, dampening=0.5), ValueError, "nesterov"),
    ("SGD", dict(lr="0.1"), TypeError, "lr"),
    ("SGD", dict(lr=S.Constant(0.2), maximize=1), TypeError, "maximize"),
    ("SGD", dict(lr=0.2, learning_rate=0.1), TypeError, "learning_rate"),
    ("Adam", dict(betas=(0.9, 1.0)), ValueError, "beta2"),
    ("Adam", dict(lr=0.5, betas=(S.Linear(1.2, 1.0, 3), 0.9)), ValueError, "beta1"),  # invalid at the next step
    ("Adam", dict(amsgrad=True), ValueError, "amsgrad"),
    ("Adam", dict(eps=math.inf), ValueError, "eps"),
    ("RMSprop", dict(centered=True), ValueError, "centered"),
    ("RMSprop", dict(alpha=1.0), ValueError, "alpha"),
    ("Adadelta", dict(rho=-0.1), ValueError, "rho"),
    ("Adagrad", dict(lr_decay=-1), ValueError, "lr_decay"),
]


@pytest.mark.parametrize("name,values,exc,word", REJECTED_SETS,
                         ids=[f"{n}-{'-'.join(v)}" for n, v, _, _ in REJECTED_SETS])
@pytest.mark.parametrize("group", [None, 1])
def test_rejected_set_changes_nothing(name, values, exc, word, group):
    rng = np.random.default_rng(2)
    a, b = _rand(rng, (6,), np.float64), _rand(rng, (3,), np.float64)
    kw = {"momentum": 0.9} if name == "SGD" else {}
    opt = CLASSES[name]([{"params": [a]}, {"params": [b]}], lr=0.05, **kw)
    opt.step([_rand(rng, a.shape, a.dtype), _rand(rng, b.shape, b.dtype)])
    before = _snapshot(opt)
    with pytest.raises(exc, match=word):
        opt.set(group=group, **values)
    assert _snapshot(opt) == before
    # and the next step uses the old values
    twin = CLASSES[name]([{"params": [a.copy()]}, {"params": [b.copy()]}], lr=0.05, **kw)
    twin.load_state_dict(opt.state_dict())
    grads = [_rand(rng, a.shape, a.dtype), _rand(rng, b.shape, b.dtype)]
    opt.step(grads)
    twin.step(grads)
    assert [p.tobytes() for p in opt.params] == [p.tobytes() for p in twin.params]


def test_set_bad_group_changes_nothing():
    opt = lrcore.SGD([np.ones(3)], lr=0.1)
    before = _snapshot(opt)
    for bad in (1, -1, True, "0", 0.0):
        with pytest.raises(ValueError, match="group"):
            opt.set(group=bad, lr=0.5)
    assert _snapshot(opt) == before


def test_fixed_flags_set_at_construction():
    for opt, key in ((lrcore.Adam(np.ones(3), amsgrad=True), "amsgrad"),
                     (lrcore.AdamW(np.ones(3)), "amsgrad"),
                     (lrcore.RMSprop(np.ones(3), centered=True), "centered")):
        with pytest.raises(ValueError, match=f"{key}.*fixed at construction"):
            opt.set(**{key: False})
        assert opt.hyperparameters(0)[key] is (type(opt) is not lrcore.AdamW)
    # per group at construction is allowed: the state layout follows each group
    a, b = np.ones(4), np.ones(5)
    opt = lrcore.Adam([{"params": [a], "amsgrad": True}, {"params": [b]}])
    opt.step([np.full(4, 0.5), np.full(5, 0.5)])
    st = opt.state_dict()["state"]
    assert sorted(st[0]) == ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
    assert sorted(st[1]) == ["exp_avg", "exp_avg_sq"]


def test_momentum_turned_on_mid_training_like_torch(plan):
    """SGD: set(momentum=...) allocates the buffer; the first momentum step copies the grad
    (torch's buf = None branch), later steps follow buf = m*buf + (1-d)*g. RMSprop: the
    buffer starts at zero."""
    rng = np.random.default_rng(8)
    p = _rand(rng, (17,), np.float64)
    opt = lrcore.SGD(p, lr=0.1, weight_decay=0.01)
    for _ in range(3):
        opt.step(_rand(rng, p.shape, p.dtype))
    assert opt.state_dict()["state"][0] == {}
    opt.set(momentum=0.9, dampening=0.2)
    assert list(opt.state_dict()["state"][0]) == ["momentum_buffer"]
    # torch's SGD in float64 numpy
    q, buf = p.copy(), None
    for k in range(4):
        g = _rand(rng, p.shape, p.dtype)
        opt.step(g)
        d = g + 0.01 * q
        buf = d.copy() if buf is None else 0.9 * buf + (1 - 0.2) * d
        q = q - 0.1 * buf
        np.testing.assert_allclose(p, q, rtol=1e-14, atol=1e-15, err_msg=f"momentum step {k}")
        np.testing.assert_allclose(opt.state_dict()["state"][0]["momentum_buffer"], buf,
                                   rtol=1e-14, atol=1e-15)

    r = _rand(rng, (9,), np.float64)
    opt = lrcore.RMSprop(r, lr=0.01)
    opt.step(_rand(rng, r.shape, r.dtype))
    opt.set(momentum=0.5)
    sq = opt.state_dict()["state"][0]["square_avg"]
    g = _rand(rng, r.shape, r.dtype)
    before = r.copy()
    opt.step(g)
    sq = 0.99 * sq + 0.01 * g * g
    buf = g / (np.sqrt(sq) + 1e-8)                    # 0.5 * 0 + g / avg
    np.testing.assert_allclose(opt.state_dict()["state"][0]["momentum_buffer"], buf, rtol=1e-14)
    np.testing.assert_allclose(r, before - 0.01 * buf, rtol=1e-14)


def test_shared_plateau_schedule_reported_once_per_call():
    """Both groups take the constructor's ReduceOnPlateau: report() must count once."""
    plateau = S.ReduceOnPlateau(0.1, patience=1, factor=0.5)
    opt = lrcore.SGD([{"params": [np.ones(2)]}, {"params": [np.ones(3)]}], lr=plateau)
    opt.report(1.0)
    opt.report(2.0)                  # one bad report: patience 1 not exceeded
    assert plateau.num_reports == 2 and opt.lr == 0.1
    opt.report(2.0)                  # two bad reports: cut
    assert opt.hyperparameters(0)["lr"] == opt.hyperparameters(1)["lr"] == 0.05


# --------------------------------------------------------------------------------------------
# Bad arguments: a clear error naming the argument, nothing modified
# --------------------------------------------------------------------------------------------

BAD_HYPER = [
    ("SGD", dict(lr=-1.0), ValueError, "lr"),
    ("SGD", dict(lr=float("nan")), ValueError, "lr"),
    ("SGD", dict(lr=math.inf), ValueError, "lr"),
    ("SGD", dict(lr=None), TypeError, "lr"),
    ("SGD", dict(lr=True), TypeError, "lr"),
    ("SGD", dict(momentum=-0.5), ValueError, "momentum"),
    ("SGD", dict(dampening=2.0), ValueError, "dampening"),
    ("SGD", dict(weight_decay=-1e-3), ValueError, "weight_decay"),
    ("SGD", dict(nesterov=True), ValueError, "nesterov"),
    ("SGD", dict(nesterov=True, momentum=0.9, dampening=0.1), ValueError, "nesterov"),
    ("SGD", dict(nesterov=True, momentum=S.Constant(0.9)), ValueError, "nesterov"),
    ("SGD", dict(nesterov="yes", momentum=0.9), TypeError, "nesterov"),
    ("SGD", dict(lr=S.Linear(0.1, 0.0, 5), maximize=None), TypeError, "maximize"),
    ("SGD", dict(num_threads=0), ValueError, "num_threads"),
    ("SGD", dict(num_threads=2.0), ValueError, "num_threads"),
    ("Adam", dict(betas=(1.0, 0.999)), ValueError, "beta1"),
    ("Adam", dict(betas=(0.9, -0.1)), ValueError, "beta2"),
    ("Adam", dict(betas=(0.9, float("nan"))), ValueError, "beta2"),
    ("Adam", dict(betas=0.9), TypeError, "betas"),
    ("Adam", dict(betas=(0.9, 0.99, 0.5)), TypeError, "betas"),
    ("Adam", dict(eps=-1e-8), ValueError, "eps"),
    ("Adam", dict(amsgrad=1), TypeError, "amsgrad"),
    ("AdamW", dict(weight_decay=-0.01), ValueError, "weight_decay"),
    ("Adagrad", dict(lr_decay=-0.1), ValueError, "lr_decay"),
    ("Adagrad", dict(initial_accumulator_value=-1.0), ValueError, "initial_accumulator_value"),
    ("RMSprop", dict(alpha=1.5), ValueError, "alpha"),
    ("RMSprop", dict(momentum=float("inf")), ValueError, "momentum"),
    ("RMSprop", dict(centered="no"), TypeError, "centered"),
    ("Adadelta", dict(rho=1.0), ValueError, "rho"),
    ("Adadelta", dict(lr=S.Lambda(lambda s: -1.0)), ValueError, "fn"),
    ("Adam", dict(betas=(S.Linear(1.5, 0.5, 4), 0.999)), ValueError, "beta1"),
]


@pytest.mark.parametrize("name,kw,exc,word", BAD_HYPER,
                         ids=[f"{i}-{n}-{'-'.join(k)}" for i, (n, k, _, _) in enumerate(BAD_HYPER)])
def test_bad_hyperparameters(name, kw, exc, word):
    p = np.linspace(-1.0, 1.0, 7)
    before = p.tobytes()
    with pytest.raises(exc, match=word):
        CLASSES[name](p, **kw)
    assert p.tobytes() == before


def test_bad_hyperparameters_in_a_group():
    p, q = np.ones(3), np.ones(4)
    with pytest.raises(TypeError, match="unknown hyperparameter 'learning_rate'.*group 1"):
        lrcore.SGD([{"params": [p]}, {"params": [q], "learning_rate": 0.1}])
    with pytest.raises(ValueError, match="lr"):
        lrcore.SGD([{"params": [p]}, {"params": [q], "lr": -0.1}])
    with pytest.raises(ValueError, match="beta2"):
        lrcore.Adam([{"params": [p]}, {"params": [q], "betas": (0.9, 1.5)}])
    with pytest.raises(ValueError, match="'params' key"):
        lrcore.SGD([{"params": [p]}, {"lr": 0.1}])
    with pytest.raises(TypeError, match="learning_rate"):
        lrcore.SGD(p, learning_rate=0.1)


def _bad_params():
    base = np.arange(1.0, 21.0)
    ro = np.ones(4)
    ro.flags.writeable = False
    return [
        ("non-array", [np.ones(3), [1.0, 2.0]], TypeError, r"params\[1\].*numpy.ndarray"),
        ("int dtype", [np.arange(5)], TypeError, r"params\[0\].*float32, float64, bfloat16"),
        ("complex", [np.ones(5, np.complex64)], TypeError,
         r"params\[0\].*float32, float64, bfloat16 or float16"),
        ("big-endian", [np.ones(5, ">f8")], TypeError, r"params\[0\]"),
        ("non-contiguous", [np.ones(3), base[::2]], ValueError, r"params\[1\].*C-contiguous"),
        ("fortran", [np.ones((3, 4), order="F")], ValueError, r"params\[0\].*C-contiguous"),
        ("read-only", [np.ones(2), ro], ValueError, r"params\[1\].*read-only"),
        ("duplicate", [base[:5], np.ones(2), base[:5]], ValueError, r"share memory"),
        ("overlapping", [base[0:10], base[5:15]], ValueError, r"params\[0\] and params\[1\]"),
        ("empty list", [], ValueError, "empty"),
        ("a dict", {"params": [np.ones(3)]}, TypeError, "list"),
        ("mixed", [np.ones(3), {"params": [np.ones(2)]}], TypeError, "mixes"),
        ("not iterable", 3.0, TypeError, "params"),
        ("same array in two groups", [{"params": [base]}, {"params": [base]}], ValueError,
         "share memory"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_params())),
                         ids=[c[0] for c in _bad_params()])
@pytest.mark.parametrize("name", list(CLASSES))
def test_bad_params(case, name):
    _, params, exc, pattern = _bad_params()[case]
    arrays = params if isinstance(params, list) else []
    before = [a.tobytes() for a in arrays if isinstance(a, np.ndarray)]
    with pytest.raises(exc, match=pattern):
        CLASSES[name](params, lr=0.1)
    assert [a.tobytes() for a in arrays if isinstance(a, np.ndarray)] == before


def _bad_grads(p, q):
    return [
        ("too few", [np.ones(5)], ValueError, "got 1 grads for 2 params"),
        ("too many", [np.ones(5), np.ones((2, 3)), np.ones(1)], ValueError, "got 3 grads"),
        ("not a list", 3.0, TypeError, "grads"),
        ("wrong dtype", [np.ones(5), np.ones((2, 3), np.float32)], TypeError,
         r"grads\[1\].*dtype"),
        ("int grads", [np.ones(5, np.int64), np.ones((2, 3))], TypeError, r"grads\[0\]"),
        ("wrong size", [np.ones(5), np.ones(5)], ValueError, r"grads\[1\] has 5 elements"),
        ("wrong shape", [np.ones(5), np.ones((3, 2))], ValueError, r"grads\[1\] has shape"),
        ("non-array", [np.ones(5), [[1.0] * 3] * 2], TypeError, r"grads\[1\].*numpy.ndarray"),
        ("non-contiguous", [np.ones(10)[::2], np.ones((2, 3))], ValueError,
         r"grads\[0\].*C-contiguous"),
        ("grad is a param", [p, np.ones((2, 3))], ValueError, r"grads\[0\] shares memory"),
        ("grad aliases another param", [q.reshape(-1)[:5], np.ones((2, 3))], ValueError,
         r"grads\[0\] shares memory with params\[1\]"),
    ]


@pytest.mark.parametrize("clip,skip", [(None, False), (1.0, False), (None, True)])
@pytest.mark.parametrize("case", range(11), ids=[c[0] for c in _bad_grads(np.ones(5),
                                                                             np.ones((2, 3)))])
@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop"])
def test_bad_grads_change_nothing(plan, name, case, clip, skip):
    rng = np.random.default_rng(1)
    p, q = _rand(rng, (5,), np.float64), _rand(rng, (2, 3), np.float64)
    kw = {"momentum": 0.9} if name != "Adam" else {}
    opt = CLASSES[name]([p, q], lr=0.1, **kw)
    opt.step([_rand(rng, (5,), np.float64), _rand(rng, (2, 3), np.float64)])
    label, grads, exc, pattern = _bad_grads(p, q)[case]
    before = _snapshot(opt)
    with pytest.raises(exc, match=pattern):
        opt.step(grads, clip_norm=clip, skip_nonfinite=skip)
    assert _snapshot(opt) == before


def test_grad_aliasing_a_state_buffer_is_rejected(plan):
    p = np.ones(6)
    opt = lrcore.Adam(p)
    exp_avg = opt.snapshot().states[0]["exp_avg"]   # the live buffer
    before = _snapshot(opt)
    with pytest.raises(ValueError, match=r"grads\[0\] shares memory with state"):
        opt.step(exp_avg)
    assert _snapshot(opt) == before


# --------------------------------------------------------------------------------------------
# clip_norm and skip_nonfinite
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,kw", CONFIGS, ids=CONFIG_IDS)
def test_clip_norm_equals_torch_formula(plan, name, kw, dtype):
    """scale = min(1, max_norm / (norm + 1e-6)) over all grads (torch clip_grad_norm_):
    bitwise the plain step on grads pre-multiplied by the scale in their dtype; the
    grads themselves are not written."""
    rng = np.random.default_rng(12)
    shapes = [(13,), (4, 6), (0,), (1,)]
    start = [_rand(rng, s, dtype) for s in shapes]
    clipped = [p.copy() for p in start]
    plain = [p.copy() for p in start]
    opt_c, opt_p = CLASSES[name](clipped, **kw), CLASSES[name](plain, **kw)
    scales = []
    for step, max_norm in enumerate((0.5, 2.0, 1e6, 3.0)):
        grads = [_rand(rng, s, dtype) * dtype(step + 1) for s in shapes]
        keep = [g.copy() for g in grads]
        norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
        assert opt_c.step(grads, clip_norm=max_norm) is True
        assert [g.tobytes() for g in grads] == [g.tobytes() for g in keep], "grads written"
        # the norm is summed in double in some order: equal to ours up to rounding
        assert opt_c.last_grad_norm == pytest.approx(norm, rel=1e-12)
        # given the norm, the scale is torch's formula exactly
        scale = min(1.0, max_norm / (opt_c.last_grad_norm + 1e-6))
        scales.append(scale)
        opt_p.step([g * dtype(scale) for g in grads])
        assert [p.tobytes() for p in clipped] == [p.tobytes() for p in plain], f"step {step}"
    assert scales[2] == 1.0 and min(scales) < 0.5        # both branches were exercised


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), math.inf, True, "1"])
def test_bad_clip_norm(plan, bad):
    p = np.ones(4)
    opt = lrcore.Adam(p)
    before = _snapshot(opt)
    with pytest.raises(ValueError, match="clip_norm"):
        opt.step(np.ones(4), clip_norm=bad)
    assert _snapshot(opt) == before


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [(0, 0), (1, 7), (2, -1)])
@pytest.mark.parametrize("name,kw", CONFIGS, ids=CONFIG_IDS)
def test_skip_nonfinite_changes_nothing(plan, name, kw, value, where):
    rng = np.random.default_rng(13)
    params = [_rand(rng, s, np.float32) for s in ((3,), (2, 5), (1000,))]
    opt = CLASSES[name](params, **kw)
    opt.step([_rand(rng, p.shape, p.dtype) for p in params])
    twin = CLASSES[name]([p.copy() for p in params], **kw)
    twin.load_state_dict(opt.state_dict())
    before = _snapshot(opt)
    grads = [_rand(rng, p.shape, p.dtype) for p in params]
    grads[where[0]].reshape(-1)[where[1]] = value
    for clip in (None, 1.0):
        assert opt.step(grads, skip_nonfinite=True, clip_norm=clip) is False
        assert _snapshot(opt) == before
    # a finite step afterwards: as if the skipped one never happened; True returned
    good = [_rand(rng, p.shape, p.dtype) for p in params]
    assert opt.step(good, skip_nonfinite=True) is True
    twin.step(good)
    assert [p.tobytes() for p in opt.params] == [p.tobytes() for p in twin.params]
    assert opt.step_count == 2


def test_skip_nonfinite_keeps_sgd_momentum_unstarted():
    """A skipped first momentum step must not count as started: the next one copies g."""
    p = np.array([1.0, 2.0])
    opt = lrcore.SGD(p, lr=0.1, momentum=0.9)
    assert opt.step(np.array([np.nan, 1.0]), skip_nonfinite=True) is False
    g = np.array([0.5, -0.5])
    opt.step(g)
    np.testing.assert_array_equal(opt.state_dict()["state"][0]["momentum_buffer"], g)


def test_without_skip_nonfinite_nan_propagates():
    p = np.ones(4, np.float32)
    opt = lrcore.SGD(p, lr=0.1)
    assert opt.step(np.array([1, np.nan, 1, 1], np.float32)) is True
    assert np.isnan(p[1]) and np.all(np.isfinite(np.delete(p, 1)))


# --------------------------------------------------------------------------------------------
# A schedule that becomes invalid
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,kw,word", [
    ("Adam", dict(betas=(S.Linear(0.5, 1.5, 10), 0.999)), "beta1"),        # 1.0 at step 5
    ("SGD", dict(lr=S.Lambda(lambda s: 0.1 if s < 5 else -0.1)), "fn"),
    ("SGD", dict(lr=S.Lambda(lambda s: 0.1 if s < 5 else float("nan"))), "fn"),
    ("RMSprop", dict(alpha=S.PiecewiseConstant([5], [0.9, 1.0])), "alpha"),
    ("Adadelta", dict(rho=S.Linear(0.2, 2.0, 9)), "rho"),                  # 1.0 at step 4
], ids=["beta1", "lr-negative", "lr-nan", "alpha", "rho"])
def test_schedule_invalid_at_a_later_step_raises_before_modifying(plan, name, kw, word):
    rng = np.random.default_rng(14)
    a, b = _rand(rng, (8,), np.float64), _rand(rng, (3,), np.float64)
    # the bad schedule is in group 1 only: group 0 must not be stepped either
    opt = CLASSES[name]([{"params": [a], "lr": 0.01}, {"params": [b], **kw}], lr=0.01)
    steps = 0
    with pytest.raises(ValueError, match=word):
        while True:
            grads = [_rand(rng, a.shape, a.dtype), _rand(rng, b.shape, b.dtype)]
            before = _snapshot(opt, evaluate=False)
            opt.step(grads)
            steps += 1
    assert 3 <= steps <= 5, steps
    assert _snapshot(opt, evaluate=False) == before
    assert opt.step_count == steps



def test_set_checks_a_schedule_at_the_next_step_not_step_zero():
    opt = lrcore.Adam(np.ones(4), lr=0.1)
    for _ in range(5):
        opt.step(np.ones(4))
    opt.set(beta1=S.Linear(1.5, 0.5, 4))          # beta1 = 1.5 at step 0, 0.5 from step 4 on
    assert opt.hyperparameters()["beta1"] == 0.5
    with pytest.raises(ValueError, match="beta1"):
        opt.set(beta1=S.Linear(1.5, 1.2, 10))     # still above 1 at step 5


def test_adamw_keeps_decoupled_weight_decay():
    opt = lrcore.AdamW(np.ones(3))
    with pytest.raises(ValueError, match="decoupled_weight_decay"):
        opt.set(decoupled_weight_decay=False)


def test_skipped_step_still_reports_the_grad_norm():
    opt = lrcore.SGD(np.ones(2), lr=0.1)
    opt.step(np.array([3.0, 4.0]), clip_norm=10.0)
    assert opt.last_grad_norm == pytest.approx(5.0)
    assert opt.step(np.array([np.inf, 0.0]), skip_nonfinite=True) is False
    assert math.isinf(opt.last_grad_norm)


def test_load_resets_state_the_file_does_not_have():
    p = np.ones(3)
    src = lrcore.RMSprop(np.ones(3), lr=0.01)                 # no momentum buffer
    dst = lrcore.RMSprop(p, lr=0.01, momentum=0.9)
    dst.step(np.full(3, 0.5))                                  # momentum buffer now non-zero
    sd = src.state_dict()
    sd["groups"][0]["hyperparameters"]["momentum"] = 0.9       # same layout, state lacks the buffer
    sd["state"][0]["momentum_buffer"] = np.zeros(3)
    del sd["state"][0]["momentum_buffer"]
    with pytest.raises(ValueError, match="momentum_buffer"):
        dst.load_state_dict(sd)                                # needed by momentum > 0
    sd["groups"][0]["hyperparameters"]["momentum"] = 0.0
    dst.load_state_dict(sd)
    assert np.all(dst.snapshot().states[0]["momentum_buffer"] == 0)


def test_clip_with_an_overflowing_norm_scales_to_zero_like_torch():
    p = np.array([1.0, 2.0, 3.0])
    lrcore.SGD(p, lr=0.1).step(np.array([1e200, -1e200, 1.0]), clip_norm=1.0)
    np.testing.assert_array_equal(p, [1.0, 2.0, 3.0])      # finite grads, norm = inf: scale 0
    p = np.array([1.0, 2.0, 3.0])
    lrcore.SGD(p, lr=0.1).step(np.array([np.inf, 0.0, 1.0]), clip_norm=1.0)
    assert np.isnan(p[0]) and np.array_equal(p[1:], [2.0, 3.0])   # inf * 0 at the inf only


def test_both_backends_clip_by_the_same_norm():
    from lrcore import backend, reference
    rng = np.random.default_rng(4)
    sizes = [1000, 33_333, 5, 0, 40_000]
    params = [np.zeros(s) for s in sizes]
    grads = [rng.standard_normal(s) * 10.0 ** rng.uniform(-3, 3) for s in sizes]
    states = [(None, None, None)] * len(sizes)
    native_plan = backend.implementation("native").StepPlan
    native = native_plan("sgd", params, states, [0] * len(sizes)).grad_sumsq(grads)
    numpy_ = reference.StepPlan("sgd", params, states, [0] * len(sizes)).grad_sumsq(grads)
    assert native == numpy_


def test_numpy_backend_handles_ndarray_subclasses_like_the_compiled_one():
    from lrcore import reference

    def m(v):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            return np.matrix(np.full((1, 4), v, np.float32))
    a, b, c, d = m(1), m(1), m(0), m(0)
    reference.adam(a, b, c, d, lr=0.1, step=1, weight_decay=0.5, decoupled_weight_decay=True)
    p = np.ones(4, np.float32)
    reference.adam(p, np.ones(4, np.float32), np.zeros(4, np.float32), np.zeros(4, np.float32),
                   lr=0.1, step=1, weight_decay=0.5, decoupled_weight_decay=True)
    np.testing.assert_array_equal(np.asarray(a).reshape(-1), p)


def test_malformed_state_dict_is_a_clear_error_and_changes_nothing():
    opt = lrcore.Adam(np.ones(3), lr=0.1)
    opt.step(np.ones(3))
    sd = opt.state_dict()
    before = opt.state_dict()
    sd["groups"] = [1]
    with pytest.raises(ValueError, match="malformed state dict"):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert after["step"] == before["step"]
    for k in before["state"][0]:
        np.testing.assert_array_equal(after["state"][0][k], before["state"][0][k])


# --------------------------------------------------------------------------------------------
# The table (lrcore.rules) as the source of the classes, and one vocabulary for the ranges
# --------------------------------------------------------------------------------------------

import inspect  # noqa: E402
import threading  # noqa: E402

from lrcore import hyperparams, rules  # noqa: E402


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_classes_are_derived_from_the_table(name):
    cls = CLASSES[name]
    rule = cls.rule
    assert cls.kernel == rule.name
    assert cls.state_slots == tuple(s.name for s in rule.states)
    assert set(cls.numeric) == {h.name for h in rule.hypers if h.public and h.ctype == "double"
                                and h.name not in rule.scalar_states}
    preset = rules.PRESETS[name.lower()]
    sig = inspect.signature(cls.__init__).parameters
    table = {h.name: h.default for h in rule.hypers if h.public and h.default is not None}
    table.update({o.name: o.default for o in rule.options})
    table.update(preset.defaults)
    table.update(preset.fixed)
    given = {k: p.default for k, p in sig.items() if p.default is not inspect.Parameter.empty}
    if "betas" in given:
        given["beta1"], given["beta2"] = given.pop("betas")
    for key, value in given.items():
        if key in table and key not in preset.fixed:
            assert value == table[key], f"{name}.{key}: {value!r} in the signature, " \
                                        f"{table[key]!r} in the table"


def _torch_or_skip():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    import lrcore.torch as lt
    return torch, lt


VOCABULARY = [   # (class, hyperparameter, value, accepted) at the edges of the table's ranges
    ("Adam", "eps", 0.0, True), ("Adam", "eps", -1e-12, False),
    ("SGD", "momentum", 1.5, True), ("SGD", "momentum", -0.1, False),
    ("Adam", "beta1", 0.0, True), ("Adam", "beta1", 1.0, False),
    ("Adam", "beta2", 1.0 - 2 ** -53, True), ("Adam", "beta2", 1.0, False),
    ("SGD", "lr", 0.0, True), ("SGD", "lr", math.inf, False),
    ("Adam", "weight_decay", -1e-300, False), ("RMSprop", "momentum", 2.0, True),
]
TASK_KEYS = {"lr": "LEARNING_RATE", "momentum": "MOMENTUM", "beta1": "BETA1", "beta2": "BETA2",
             "eps": "EPS", "weight_decay": "WEIGHT_DECAY"}


@pytest.mark.parametrize("name,key,value,accepted", VOCABULARY)
def test_one_vocabulary_for_optimizer_task_and_torch(name, key, value, accepted):
    """The optimizer, the update task and lrcore.torch accept and refuse the same values,
    with the table's message ("... must be <range>, got <value>")."""
    cls = CLASSES[name]
    rng = hyperparams.range_of(cls.rule, key)
    assert rng.contains(value) == accepted
    text = re.escape(f"{key} must be {rng.text}, got {value!r}")
    kw = {key: value}
    if key in ("beta1", "beta2"):
        kw = {"betas": (value, 0.999) if key == "beta1" else (0.9, value)}
    attempts = [lambda: cls(np.ones(3), **kw),
                lambda: cls(np.ones(3)).set(**{key: value})]
    from lrcore.task import ParameterKey, UpdateTask
    task_key = ParameterKey[TASK_KEYS[key]]

    def task():
        UpdateTask([np.ones(3)], lambda b, p, g: 0.0, (np.ones((4, 1)),), name.lower(),
                   {task_key: value})
    attempts.append(task)
    for attempt in attempts:
        if accepted:
            attempt()
        else:
            task_text = re.escape(f"ParameterKey.{TASK_KEYS[key]} must be {rng.text}, "
                                  f"got {value!r}")
            with pytest.raises(ValueError, match=task_text if attempt is task else text):
                attempt()
    torch, lt = _torch_or_skip()
    make = lambda: getattr(lt, name)([torch.nn.Parameter(torch.ones(3))], **kw)  # noqa: E731
    if accepted:
        make()
    else:
        with pytest.raises(ValueError, match=text):
            make()


def test_momentum_above_one_is_allowed_and_a_schedule_leaving_its_range_is_refused():
    s = S.Linear(0.5, 1.5, 10)          # momentum passes 1: allowed (>= 0, as in torch)
    opt = lrcore.SGD(np.ones(3), lr=0.1, momentum=s)
    for _ in range(12):
        opt.step(np.ones(3))
    assert opt.hyperparameters()["momentum"] == 1.5
    bad = S.Linear(0.9, 1.0, 3)         # beta1 reaches 1 at step 3: refused then, not before
    opt = lrcore.Adam(np.ones(3), lr=0.1, betas=(bad, 0.999))
    for _ in range(3):
        opt.step(np.ones(3))
    before = _snapshot(opt, evaluate=False)
    with pytest.raises(ValueError, match=r"beta1 schedule at step 3\): beta1 must be "
                                         r"in \[0, 1\), got 1.0"):
        opt.step(np.ones(3))
    assert _snapshot(opt, evaluate=False) == before


def test_injector_resolves_numbers_arrays_and_schedules():
    rng = rules.NONNEG
    assert hyperparams.resolve("X", "lr", 0.5, 3, rng) == 0.5
    assert hyperparams.resolve("X", "lr", np.array(0.25), 3, rng) == 0.25
    assert hyperparams.resolve("X", "lr", S.Linear(1.0, 0.0, 4), 3, rng) == 0.25
    with pytest.raises(ValueError, match=r"X: lr as a tensor must have one element, got shape "
                                         r"\(2,\)"):
        hyperparams.resolve("X", "lr", np.ones(2), 0, rng)
    with pytest.raises(ValueError, match=r"X \(beta1 schedule at step 5\): beta1 must be in "
                                         r"\[0, 1\), got 1.5"):
        hyperparams.resolve("X", "beta1", S.Linear(1.0, 2.0, 10), 5, rules.UNIT_OPEN)
    with pytest.raises(ValueError, match=r"X: lr must be a finite number >= 0, got "):
        hyperparams.check("X", "lr", -10 ** 400, rng)


def test_sgd_first_momentum_step_is_an_explicit_flag():
    rule = rules.RULES["sgd"]
    group = dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False,
                 maximize=False)
    first = hyperparams.kernel_values(rule, "SGD", group, 0, init_buffer=True)
    later = hyperparams.kernel_values(rule, "SGD", group, 7, init_buffer=False)
    assert first["init_buffer"] is True and first["step"] == 1
    assert later["init_buffer"] is False and later["step"] == 8
    assert list(first) == [h.name for h in rule.hypers if h.public or h.name in
                           ("step", "init_buffer")]
    # momentum switched on at step 5: the buffer starts as g then (torch), whatever the step
    p, q = np.ones(4), np.ones(4)
    opt = lrcore.SGD(p, lr=0.1)
    for _ in range(5):
        opt.step(np.full(4, 0.5))
    opt.set(momentum=0.9)
    opt.step(np.full(4, 0.5))
    assert np.array_equal(opt.state_dict()["state"][0]["momentum_buffer"], np.full(4, 0.5))
    buf = np.zeros(4)
    for _ in range(5):
        kernels.sgd(q, np.full(4, 0.5), lr=0.1, step=6)
    kernels.sgd(q, np.full(4, 0.5), buf, lr=0.1, momentum=0.9, step=1)
    assert np.array_equal(p, q)


def test_plateau_reports_reach_each_schedule_once():
    plateau = S.ReduceOnPlateau(0.1, patience=0, factor=0.5)
    opt = lrcore.SGD([{"params": [np.ones(2)]}, {"params": [np.ones(2)]}], lr=plateau,
                     momentum=plateau)
    opt.report(1.0)
    opt.report(2.0)                  # worse: one cut, not one per group or per key
    assert plateau.num_reports == 2 and opt.lr == 0.05
    with pytest.raises(TypeError, match="metric must be a real number"):
        opt.report("1.0")


def test_report_takes_what_the_schedule_takes():
    """ReduceOnPlateau.report takes numpy scalars and 0-d arrays (and one-element tensors);
    the optimizer's report() forwards the same values (np.mean(..., keepdims) or a torch
    loss), and still refuses non-numbers, bools and arrays of several values, unchanged."""
    plateau = S.ReduceOnPlateau(0.1, patience=0, factor=0.5)
    opt = lrcore.SGD([np.ones(2)], lr=plateau)
    opt.report(np.array(1.0))
    opt.report(np.array([[2.0]]).reshape(()))
    assert plateau.num_reports == 2 and opt.lr == 0.05
    before = plateau.state_dict()
    for bad in (np.array([1.0, 2.0]), np.array(True), np.array("x"), None):
        with pytest.raises(TypeError, match="metric must be a real number"):
            opt.report(bad)
    assert plateau.state_dict() == before
    torch = pytest.importorskip("torch")
    opt.report(torch.tensor(3.0))
    assert plateau.num_reports == 3


def test_schedules_round_trip_as_plain_data():
    for s in (S.Cosine(0.1, 100), S.warmup_cosine(0.1, 10, 5),
              S.ReduceOnPlateau(0.1, patience=1)):
        if isinstance(s, S.ReduceOnPlateau):
            s.report(1.0)
            s.report(2.0)
            s.report(3.0)
        data = hyperparams.to_data(s)
        assert json.loads(json.dumps(data)) == data
        back = hyperparams.from_data("X", "lr", data)
        assert back == s and back is not s and back(7) == s(7)
    lam = S.Lambda(lambda k: 0.1)
    data = hyperparams.to_data(lam)
    assert data["schedule"] is None
    with pytest.raises(ValueError, match=r"X: lr was Lambda.*cannot be restored"):
        hyperparams.from_data("X", "lr", data)
    assert hyperparams.from_data("X", "lr", data, live=lam) is lam


# --------------------------------------------------------------------------------------------
# Threads (issue 11 item 5) and writeability at the step (item 6)
# --------------------------------------------------------------------------------------------

N_THREAD_STEPS = 25


def _threaded(opt, grads, n_threads):
    errors = []
    barrier = threading.Barrier(n_threads)

    def work():
        try:
            barrier.wait()
            for g in grads:
                opt.step(g)
        except Exception as exc:   # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.mark.parametrize("name,kw", [("Adam", dict(lr=1e-2, amsgrad=True)),
                                     ("SGD", dict(lr=0.1, momentum=0.9)),
                                     ("RMSprop", dict(lr=1e-2, centered=True))])
def test_one_optimizer_stepped_from_two_threads_is_serialised(name, kw):
    """Two threads step the same optimizer with the same grads: whatever the interleaving,
    whole steps apply one after another, so the result is bitwise 2N sequential steps."""
    rng = np.random.default_rng(5)
    start = [_rand(rng, (1 << 17) + 3, np.float32), _rand(rng, (257,), np.float32)]
    grads = [[_rand(rng, p.shape, np.float32) for p in start]] * N_THREAD_STEPS
    shared = [p.copy() for p in start]
    opt = CLASSES[name](shared, num_threads=2, **kw)
    _threaded(opt, grads, 2)
    alone = [p.copy() for p in start]
    ref = CLASSES[name](alone, num_threads=2, **kw)
    for g in grads + grads:
        ref.step(g)
    assert opt.step_count == ref.step_count == 2 * N_THREAD_STEPS
    for a, b in zip(shared, alone):
        assert a.tobytes() == b.tobytes()
    for sa, sb in zip(opt.state_dict()["state"], ref.state_dict()["state"]):
        assert {k: v.tobytes() for k, v in sa.items()} == {k: v.tobytes() for k, v in sb.items()}


def test_two_optimizers_in_two_threads_equal_sequential():
    rng = np.random.default_rng(6)
    starts = [_rand(rng, (1 << 17) + 5, np.float64) for _ in range(2)]
    grads = [[_rand(rng, s.shape, np.float64)] for s in starts for _ in range(N_THREAD_STEPS)]
    grads = [grads[:N_THREAD_STEPS], grads[N_THREAD_STEPS:]]
    mine = [s.copy() for s in starts]
    opts = [lrcore.Adam(p, lr=1e-2, num_threads=2) for p in mine]
    threads = [threading.Thread(target=lambda o=o, gs=gs: [o.step(g) for g in gs])
               for o, gs in zip(opts, grads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s, p, gs in zip(starts, mine, grads):
        q = s.copy()
        ref = lrcore.Adam(q, lr=1e-2, num_threads=2)
        for g in gs:
            ref.step(g)
        assert p.tobytes() == q.tobytes()


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_a_param_made_read_only_after_construction_is_refused_at_the_step(plan, name):
    p, q = np.ones(5), np.ones(3)
    opt = CLASSES[name]([p, q], lr=0.1)
    opt.step([np.full(5, 0.5), np.full(3, 0.5)])
    q.flags.writeable = False
    before = _snapshot(opt)
    with pytest.raises(ValueError, match=r"params\[1\] is read-only"):
        opt.step([np.full(5, 0.5), np.full(3, 0.5)], clip_norm=1.0)
    assert _snapshot(opt) == before
    q.flags.writeable = True
    assert opt.step([np.full(5, 0.5), np.full(3, 0.5)])


def test_a_failed_load_state_dict_changes_nothing():
    opt = lrcore.Adam([np.ones(3), np.ones(2)], lr=S.Cosine(0.1, 50))
    opt.step([np.ones(3), np.ones(2)])
    good = opt.state_dict()
    other = lrcore.Adam([np.ones(3), np.ones(2)], lr=S.Cosine(0.1, 50))
    for _ in range(3):
        other.step([np.full(3, 2.0), np.full(2, 2.0)])
    sd = other.state_dict()
    sd["state"][1]["exp_avg"] = np.zeros(3)          # wrong shape, after a valid params[0]
    before = _snapshot(opt)
    with pytest.raises(ValueError, match=r"params\[1\] state 'exp_avg' is float64 \(3,\)"):
        opt.load_state_dict(sd)
    assert _snapshot(opt) == before
    opt.load_state_dict(good)
    assert _snapshot(opt) == before


def test_every_optimizer_of_the_table_is_exported():
    assert set(optim.CLASSES) == set(rules.PRESETS)
    for cls in optim.CLASSES.values():
        assert getattr(lrcore, cls.__name__) is cls and cls.__name__ in lrcore.__all__


# --------------------------------------------------------------------------------------------
# The snapshot/restore protocol: the only way lrcore.optim.state_dict (and lrcore.checkpoint)
# see an optimizer
# --------------------------------------------------------------------------------------------

def test_snapshot_shows_the_live_state_and_copies_only_its_containers():
    p = np.ones(5)
    opt = lrcore.Adam([{"params": [p]}, {"params": [np.ones(3)], "lr": 0.5}], lr=0.1,
                      amsgrad=True)
    opt.step([np.full(5, 0.25), np.full(3, -0.5)])
    snap = opt.snapshot()
    assert snap.step == 1 and snap.group_of == [0, 1] and snap.params[0] is p
    assert [g["lr"] for g in snap.groups] == [0.1, 0.5]
    assert set(snap.states[0]) == {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    before = _snapshot(opt)
    snap.groups[0]["lr"] = 9.0                       # the containers are the snapshot's own
    snap.states[1].clear()
    snap.group_of.append(7)
    assert _snapshot(opt) == before
    opt.step([np.full(5, 0.25), np.full(3, -0.5)])   # the buffers are the optimizer's own
    np.testing.assert_array_equal(snap.states[0]["exp_avg"],
                                  opt.state_dict()["state"][0]["exp_avg"])


def test_restore_installs_a_checked_state_and_load_equals_check_then_apply():
    from lrcore.optim import state_dict as io
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(7), rng.standard_normal(4)]
    src = lrcore.NAdam([np.ones(7), np.ones(4)], lr=S.Cosine(0.1, 20))
    for _ in range(3):
        src.step(grads)
    sd = src.state_dict()
    a = lrcore.NAdam([np.ones(7), np.ones(4)], lr=S.Cosine(0.1, 20))
    b = lrcore.NAdam([np.ones(7), np.ones(4)], lr=S.Cosine(0.1, 20))
    a.load_state_dict(sd)
    checked = io.check(b, sd)
    assert _snapshot(b) == _snapshot(lrcore.NAdam([np.ones(7), np.ones(4)],
                                                  lr=S.Cosine(0.1, 20)))   # check wrote nothing
    checked.apply()
    assert _snapshot(a)[0] == _snapshot(b)[0] == _snapshot(src)[0]
    assert a.snapshot().scalars == b.snapshot().scalars == src.snapshot().scalars
    for opt in (a, b, src):
        opt.step(grads)
    assert _snapshot(a)[1] == _snapshot(b)[1] == _snapshot(src)[1]


def test_the_checks_of_the_protocol_change_nothing():
    opt = lrcore.SGD(np.ones(3), lr=0.1, momentum=0.9)
    opt.step(np.ones(3))
    before = _snapshot(opt)
    assert opt.validate_group({"lr": 0.2, "momentum": 0.0, "dampening": 0.0,
                               "weight_decay": 0.0, "nesterov": False, "maximize": False},
                              step=5)["lr"] == 0.2
    with pytest.raises(ValueError, match="lr"):
        opt.validate_group(dict(opt.snapshot().groups[0], lr=-1.0), step=5)
    assert opt.states_needed({"momentum": 0.0}) == ()
    assert opt.states_needed({"momentum": 0.9}) == ("momentum_buffer",)
    assert opt.initial_scalars() == {} and lrcore.NAdam(np.ones(2)).initial_scalars() \
        == {"mu_product": 1.0}
    assert _snapshot(opt) == before


def test_a_step_waits_for_the_public_lock():
    from lrcore import checkpoint
    opt = lrcore.SGD(np.ones(3), lr=0.1)
    assert checkpoint.lock_of(opt) is opt.lock
    done = threading.Event()
    with opt.lock:
        t = threading.Thread(target=lambda: (opt.step(np.ones(3)), done.set()))
        t.start()
        assert not done.wait(0.2) and opt.step_count == 0
    t.join()
    assert done.is_set() and opt.step_count == 1


def test_state_dict_io_reads_no_private_name_of_another_object():
    """lrcore.optim.state_dict works through the public protocol: no `x._name` in it."""
    import ast
    from lrcore.optim import state_dict as io
    tree = ast.parse(inspect.getsource(io))
    private = [(node.lineno, node.attr) for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and node.attr.startswith("_")
               and not node.attr.startswith("__")]
    assert private == []
