"""lrcore.torch against torch.optim: a real model trained side by side, state-dict interchange,
schedulers, groups, params without grads, and every error leaving the params unchanged.

The model is an MLP on lrcore's built-in digits data (mini-batches); torch.optim runs with
foreach=False (the per-tensor loop whose operations lrcore's kernels perform). Both optimizers
step on the same gradients (computed once, on torch's side) and every param and state buffer
must agree after every step within the rounding-error budget of tests/ulp_budget.py: derived
from the rule's rounded operations and the steps taken, never tuned to a machine. Every
comparison with torch here uses that budget. The arithmetic comparisons (marker
``torch_compare``: every rule and option set in both dtypes, maximize, and the check that the
budget can fail) also run once per ATEN_CPU_CAPABILITY this CPU has, each in a fresh
interpreter (torch reads the variable at import): test_torch_comparisons_under_every_capability.
The other tests (schedulers, groups, state dicts, closures) drive the same arithmetic through
other plumbing and run under the process's capability.
"""
import copy
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lrcore  # noqa: E402
import lrcore.torch as lt  # noqa: E402
from lrcore import schedules  # noqa: E402
from lrcore.demo.datasets import load_digits, standardize  # noqa: E402

from ulp_budget import TorchPair, report  # noqa: E402

DTYPES = (torch.float32, torch.float64)
STEPS = 100
BATCH = 64
TESTS = pathlib.Path(__file__).resolve().parent

# (optimizer name, constructor keyword arguments): a few hyperparameter sets each
CASES = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=False)),
    ("SGD", dict(lr=0.02, momentum=0.8, dampening=0.3)),
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=5e-3, betas=(0.8, 0.99), weight_decay=1e-2, amsgrad=True)),
    ("Adam", dict(lr=5e-3, weight_decay=0.1, decoupled_weight_decay=True, eps=1e-6)),
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    ("Adagrad", dict(lr=0.05)),
    ("Adagrad", dict(lr=0.05, lr_decay=1e-2, weight_decay=1e-3,
                     initial_accumulator_value=0.1)),
    ("RMSprop", dict(lr=1e-3)),
    ("RMSprop", dict(lr=1e-3, momentum=0.9, centered=True, weight_decay=1e-3)),
    ("RMSprop", dict(lr=1e-3, alpha=0.9, momentum=0.5)),
    ("Adadelta", dict(lr=1.0)),
    ("Adadelta", dict(lr=0.5, rho=0.95, weight_decay=1e-3)),
]
# Rules whose lrcore.torch drop-in may not exist yet: compared as soon as it does.
CASES += [(n, kw) for n, kw in [
    ("Adamax", dict(lr=2e-3)),
    ("Adamax", dict(lr=2e-3, betas=(0.8, 0.99), weight_decay=1e-2)),
    ("NAdam", dict(lr=2e-3)),
    ("NAdam", dict(lr=2e-3, weight_decay=1e-2, decoupled_weight_decay=True)),
    ("RAdam", dict(lr=1e-3)),
    ("RAdam", dict(lr=1e-3, weight_decay=1e-2, decoupled_weight_decay=True)),
] if hasattr(lt, n)]
NAMES = ("SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adadelta")
DEFAULT_KW = {"SGD": dict(lr=0.05, momentum=0.9), "Adam": dict(lr=1e-2),
              "AdamW": dict(lr=1e-2), "Adagrad": dict(lr=0.05), "RMSprop": dict(lr=1e-3),
              "Adadelta": dict(lr=1.0)}

compare_with_torch = pytest.mark.torch_compare


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits()
    (X,) = standardize(X)
    return X, y


def batches(digits, dtype, steps=STEPS, seed=0):
    X, y = digits
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        idx = rng.choice(len(X), BATCH, replace=False)
        out.append((torch.from_numpy(X[idx]).to(dtype), torch.from_numpy(y[idx])))
    return out


def mlp(dtype, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(),
                               torch.nn.Linear(32, 10)).to(dtype)


def backward(model, opt, x, y, sign=1.0):
    """Gradients of the batch loss on `model` (torch's side); returns the loss."""
    opt.zero_grad()
    loss = sign * torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss.item()


def loss_of(model, x, y):
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model(x), y).item()


def pair(name, kw, dtype, seed=0):
    """Two identical models, one driven by torch.optim (foreach=False), one by lrcore.torch,
    and the TorchPair that steps both on torch's gradients and checks every step."""
    ref_model = mlp(dtype, seed)
    model = copy.deepcopy(ref_model)
    ref = getattr(torch.optim, name)(ref_model.parameters(), foreach=False, **kw)
    opt = getattr(lt, name)(model.parameters(), **kw)
    return ref_model, ref, model, opt, TorchPair(name, ref, opt, dtype)


# -- the real model, every step --------------------------------------------------------------

@compare_with_torch
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_mlp_matches_torch_every_step(digits, name, kw, dtype):
    ref_model, ref, model, opt, both = pair(name, kw, dtype)
    assert isinstance(opt, getattr(torch.optim, name))
    data = batches(digits, dtype)
    first = loss_of(model, *data[0])
    for x, y in data:
        backward(ref_model, ref, x, y)
        both.step()                              # checks param and state, every element
    assert loss_of(model, *data[0]) < first       # lrcore's params train
    assert opt.state_dict()["param_groups"][0].keys() - {"lrcore_steps"} == \
        ref.state_dict()["param_groups"][0].keys()


@compare_with_torch
@pytest.mark.parametrize("name", NAMES)
def test_maximize_matches_torch(digits, name):
    kw = dict(DEFAULT_KW[name], maximize=True)
    ref_model, ref, model, opt, both = pair(name, kw, torch.float64)
    for x, y in batches(digits, torch.float64, steps=20):
        backward(ref_model, ref, x, y, sign=-1.0)
        both.step()


def test_lrcore_torch_trains_on_its_own_gradients(digits):
    """The comparisons feed torch's gradients to both sides; here lrcore.torch runs the usual
    closed loop (its own backward) and the loss falls as torch.optim's does."""
    for name, kw in DEFAULT_KW.items():
        model = mlp(torch.float32)
        opt = getattr(lt, name)(model.parameters(), **kw)
        data = batches(digits, torch.float32, steps=60)
        first = loss_of(model, *data[0])
        for x, y in data:
            backward(model, opt, x, y)
            opt.step()
        assert loss_of(model, *data[0]) < 0.8 * first, name


# -- state dicts -------------------------------------------------------------------------------

@pytest.mark.parametrize("direction", ["torch-to-lrcore", "lrcore-to-torch"])
@pytest.mark.parametrize("name,kw", [("Adam", dict(lr=1e-2, amsgrad=True)),
                                     ("AdamW", dict(lr=1e-2)),
                                     ("SGD", dict(lr=0.05, momentum=0.9)),
                                     ("Adagrad", dict(lr=0.05, lr_decay=1e-3)),
                                     ("RMSprop", dict(lr=1e-3, momentum=0.9, centered=True)),
                                     ("Adadelta", dict(lr=1.0))])
def test_state_dict_interchange(digits, tmp_path, name, kw, direction):
    """Train 30 steps with one, save (to a file), load into the other, continue 30 steps; the
    run that switched matches the run that stayed on torch.optim throughout."""
    dtype = torch.float32
    data = batches(digits, dtype, steps=60)
    ref_model = mlp(dtype)
    ref = getattr(torch.optim, name)(ref_model.parameters(), foreach=False, **kw)
    model = copy.deepcopy(ref_model)
    first, second = (torch.optim, lt) if direction == "torch-to-lrcore" else (lt, torch.optim)
    extra = {"foreach": False} if first is torch.optim else {}
    opt = getattr(first, name)(model.parameters(), **kw, **extra)
    both = TorchPair(name, ref, opt, dtype)
    for x, y in data[:30]:
        backward(ref_model, ref, x, y)
        both.step()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    model = mlp(dtype, seed=1)
    model.load_state_dict(saved["model"])
    extra = {"foreach": False} if second is torch.optim else {}
    opt = getattr(second, name)(model.parameters(), **kw, **extra)
    opt.load_state_dict(saved["opt"])
    both = TorchPair(name, ref, opt, dtype, steps=30)
    for x, y in data[30:]:
        backward(ref_model, ref, x, y)
        both.step()


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_continuation_is_bitwise(digits, tmp_path, name):
    """The README's claim: an lrcore.torch run saved with state_dict() (through torch.save and
    torch.load) and loaded into a fresh lrcore.torch optimizer continues bit for bit as the run
    that was never interrupted (each on its own backward passes)."""
    dtype = torch.float32
    kw = DEFAULT_KW[name]
    data = batches(digits, dtype, steps=20)
    straight = mlp(dtype)
    first = copy.deepcopy(straight)
    opt = getattr(lt, name)(straight.parameters(), **kw)
    for x, y in data:
        backward(straight, opt, x, y)
        opt.step()
    opt1 = getattr(lt, name)(first.parameters(), **kw)
    for x, y in data[:10]:
        backward(first, opt1, x, y)
        opt1.step()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, tmp_path / "c.pt")
    saved = torch.load(tmp_path / "c.pt", weights_only=False)
    resumed = mlp(dtype, seed=1)
    resumed.load_state_dict(saved["model"])
    opt2 = getattr(lt, name)(resumed.parameters(), **kw)
    opt2.load_state_dict(saved["opt"])
    for x, y in data[10:]:
        backward(resumed, opt2, x, y)
        opt2.step()
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert p.detach().numpy().tobytes() == q.detach().numpy().tobytes()
        for k, v in opt.state[p].items():
            assert v.detach().numpy().tobytes() == opt2.state[q][k].detach().numpy().tobytes(), k


def test_state_format_is_torchs():
    p = torch.nn.Parameter(torch.ones(5))
    p.grad = torch.full((5,), 0.5)
    opt = lt.Adam([p], amsgrad=True)
    opt.step()
    st = opt.state[p]
    assert set(st) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert st["step"].dtype == torch.float32 and st["step"].dim() == 0 and float(st["step"]) == 1
    assert all(st[k].shape == p.shape and st[k].dtype == p.dtype for k in st if k != "step")


def test_load_state_dict_rebuilds_the_plan():
    p = torch.nn.Parameter(torch.ones(5))
    p.grad = torch.full((5,), 0.5)
    opt = lt.Adam([p], lr=0.1)
    opt.step()
    plan = opt._lrcore_cache.plan
    opt.step()
    assert opt._lrcore_cache.plan is plan  # cached while nothing changed
    ref = torch.optim.Adam([torch.nn.Parameter(torch.ones(5))], lr=0.1, foreach=False)
    ref.param_groups[0]["params"][0].grad = torch.full((5,), 0.5)
    ref.step()
    opt.load_state_dict(copy.deepcopy(ref.state_dict()))  # torch shares loaded tensors
    with torch.no_grad():
        p.copy_(ref.param_groups[0]["params"][0])
    # both sides now hold the same values: the budget of the next step starts from zero
    TorchPair("Adam", ref, opt, torch.float32, copy_grads=False).step()
    assert opt._lrcore_cache.plan is not plan
    assert float(opt.state[p]["step"]) == 2.0


# -- schedulers and schedules ----------------------------------------------------------------------

@pytest.mark.parametrize("scheduler", ["StepLR", "OneCycleLR", "CosineAnnealingLR"])
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop"])
def test_lr_scheduler_drives_lrcore(digits, name, scheduler):
    dtype = torch.float64
    kw = DEFAULT_KW[name]
    ref_model, ref, model, opt, both = pair(name, kw, dtype)

    def make(o):
        if scheduler == "StepLR":
            return torch.optim.lr_scheduler.StepLR(o, step_size=10, gamma=0.5)
        if scheduler == "OneCycleLR":
            return torch.optim.lr_scheduler.OneCycleLR(o, max_lr=kw["lr"] * 2,
                                                       total_steps=STEPS)
        return torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=STEPS)
    s_ref, s_mine = make(ref), make(opt)
    for x, y in batches(digits, dtype):
        backward(ref_model, ref, x, y)
        both.step()
        s_ref.step()
        s_mine.step()
        assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"]


@pytest.mark.parametrize("name", NAMES)
def test_lrcore_schedule_as_lr(digits, name):
    """An lrcore schedule is evaluated at the number of steps already taken."""
    dtype = torch.float64
    kw = DEFAULT_KW[name]
    sched = schedules.Cosine(kw["lr"], 40)
    ref_model, ref, model, _, _ = pair(name, kw, dtype)
    opt = getattr(lt, name)(model.parameters(), **dict(kw, lr=sched))
    assert opt.param_groups[0]["lr"] is sched
    both = TorchPair(name, ref, opt, dtype)
    for k, (x, y) in enumerate(batches(digits, dtype, steps=40)):
        ref.param_groups[0]["lr"] = sched(k)
        backward(ref_model, ref, x, y)
        both.step()
    clone = getattr(lt, name)(copy.deepcopy(model).parameters(), **kw)
    clone.load_state_dict(opt.state_dict())          # the schedule travels in the state dict
    assert repr(clone.param_groups[0]["lr"]) == repr(sched)


def test_schedule_as_beta1_and_in_a_group(digits):
    dtype = torch.float64
    b1 = schedules.Linear(0.95, 0.85, 20)
    ref_model, ref, model, _, _ = pair("Adam", dict(lr=1e-2), dtype)
    opt = lt.Adam([{"params": list(model.parameters()), "betas": (b1, 0.999)}], lr=1e-2)
    both = TorchPair("Adam", ref, opt, dtype)
    for k, (x, y) in enumerate(batches(digits, dtype, steps=20)):
        ref.param_groups[0]["betas"] = (b1(k), 0.999)
        backward(ref_model, ref, x, y)
        both.step()


def test_tensor_lr_and_hand_edited_groups(digits):
    dtype = torch.float32
    ref_model, ref, model, _, _ = pair("Adam", dict(lr=1e-2), dtype)
    opt = lt.Adam(model.parameters(), lr=torch.tensor(1e-2))
    both = TorchPair("Adam", ref, opt, dtype)
    for k, (x, y) in enumerate(batches(digits, dtype, steps=30)):
        if k == 10:
            for o in (ref, opt):
                o.param_groups[0]["lr"] = 3e-3
                o.param_groups[0]["weight_decay"] = 1e-2
        backward(ref_model, ref, x, y)
        both.step()


def test_closure_returns_loss_and_steps(digits):
    """step(closure) calls the closure, steps on the grads it leaves, returns its loss."""
    dtype = torch.float64
    ref_model, ref, model, opt, both = pair("RMSprop", dict(lr=1e-3), dtype)
    for x, y in batches(digits, dtype, steps=10):
        calls = []

        def closure():                            # grads: torch's, copied in by both.step
            calls.append(torch.tensor(loss_of(model, x, y)))
            return calls[-1]
        backward(ref_model, ref, x, y)
        loss = both.step(closure)
        assert len(calls) == 1 and loss is calls[0]


# -- groups and params without grads -------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_groups_with_different_hyperparameters(digits, name):
    dtype = torch.float32
    kw = DEFAULT_KW[name]
    ref_model = mlp(dtype)
    model = copy.deepcopy(ref_model)

    def groups(m):
        return [{"params": m[0].parameters()},
                {"params": m[2].parameters(), "lr": kw["lr"] * 0.3, "weight_decay": 1e-2}]
    ref = getattr(torch.optim, name)(groups(ref_model), foreach=False, **kw)
    opt = getattr(lt, name)(groups(model), **kw)
    both = TorchPair(name, ref, opt, dtype)
    for x, y in batches(digits, dtype, steps=50):
        backward(ref_model, ref, x, y)
        both.step()


@pytest.mark.parametrize("name", NAMES)
def test_params_without_grads_are_skipped(digits, name):
    """A frozen layer never gets a grad; a second layer only every other step (its step
    count lags); both must behave as in torch, including the state they (don't) get."""
    dtype = torch.float64
    kw = DEFAULT_KW[name]
    ref_model, ref, model, opt, both = pair(name, kw, dtype)
    for m in (ref_model, model):
        m[0].bias.requires_grad_(False)
    for k, (x, y) in enumerate(batches(digits, dtype, steps=30)):
        backward(ref_model, ref, x, y)
        if k % 2:
            ref_model[2].bias.grad = None                 # copied as None to lrcore's side
        both.step()
    if name != "Adagrad":  # torch's Adagrad creates all state at construction
        assert model[0].bias not in opt.state
    assert len(opt.state) == len(ref.state)


def test_add_param_group_midway(digits):
    dtype = torch.float64
    ref_model, _, model, _, _ = pair("Adam", dict(lr=1e-2), dtype)
    ref = torch.optim.Adam(ref_model[0].parameters(), lr=1e-2, foreach=False)
    opt = lt.Adam(model[0].parameters(), lr=1e-2)
    both = TorchPair("Adam", ref, opt, dtype)
    for k, (x, y) in enumerate(batches(digits, dtype, steps=20)):
        if k == 5:
            ref.add_param_group({"params": ref_model[2].parameters(), "lr": 5e-3})
            opt.add_param_group({"params": model[2].parameters(), "lr": 5e-3})
        backward(ref_model, ref, x, y)
        both.step()
    assert len(opt.state) == 4


def test_state_tensor_replaced_by_hand_is_used():
    """Assigning a new state tensor (not copy_) is seen: the cached plan is rebuilt."""
    p, q = _param(4), _param(4)
    a = lt.Adam([p], lr=0.1)
    b = torch.optim.Adam([q], lr=0.1, foreach=False)
    both = TorchPair("Adam", b, a, torch.float32, copy_grads=False)
    both.step()
    for o in (a, b):
        o.state[o.param_groups[0]["params"][0]]["exp_avg"] = torch.full((4,), 0.3)
    both.step()
    assert not torch.equal(a.state[p]["exp_avg"], torch.full((4,), 0.3))


def test_non_contiguous_grad_is_read_correctly():
    p = torch.nn.Parameter(torch.ones(3, 4))
    q = torch.nn.Parameter(torch.ones(3, 4))
    g = torch.arange(12.0).reshape(4, 3).t()
    assert not g.is_contiguous()
    p.grad, q.grad = g, g.contiguous()
    a, b = lt.SGD([p], lr=0.1, momentum=0.9), torch.optim.SGD([q], lr=0.1, momentum=0.9)
    both = TorchPair("SGD", b, a, torch.float32, copy_grads=False)
    for _ in range(3):
        both.step()


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_param_data_made_non_contiguous_later_is_refused(name):
    """`p.data = p.data.t()` keeps the param's storage (and data_ptr) but not its layout:
    the cached plan is rebuilt, so the step refuses the non-contiguous param, naming it,
    with nothing changed (it stepped the old element order against the new grad's)."""
    p = torch.nn.Parameter(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)))
    opt = getattr(lt, name)([p], lr=0.1)
    p.grad = torch.ones(3, 4)
    opt.step()
    p.data = p.data.t()
    p.grad = torch.ones(4, 3)
    before = p.detach().clone(), copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\].*not contiguous"):
        opt.step()
    assert torch.equal(p.detach(), before[0])
    after = opt.state_dict()
    assert after["param_groups"] == before[1]["param_groups"]
    for k, v in before[1]["state"].get(0, {}).items():
        assert torch.equal(after["state"][0][k], v)


def test_no_grads_at_all_is_a_no_op():
    p = torch.nn.Parameter(torch.ones(3))
    opt = lt.Adam([p])
    opt.step()
    assert torch.equal(p, torch.ones(3)) and not opt.state


# -- errors leave everything unchanged -------------------------------------------------------------

def _param(*shape, dtype=torch.float32):
    p = torch.nn.Parameter(torch.linspace(-1, 1, math.prod(shape), dtype=dtype).reshape(shape))
    p.grad = torch.full(shape, 0.25, dtype=dtype)
    return p


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad,exc,match", [
    (lambda: torch.nn.Parameter(torch.ones(3, dtype=torch.complex64)), TypeError, "complex"),
    (lambda: torch.nn.Parameter(torch.ones(3).to(torch.float8_e4m3fn)), TypeError,
     "float8_e4m3fn; lrcore supports torch.float32, torch.float64, torch.bfloat16"),
    (lambda: torch.nn.Parameter(torch.ones(4, 3).t()), ValueError, "contiguous"),
    (lambda: torch.nn.Parameter(torch.ones(3, device="meta")), ValueError, "CPU"),
], ids=["complex", "float8", "non-contiguous", "non-cpu"])
def test_bad_params_rejected_at_construction(name, bad, exc, match):
    with pytest.raises(exc, match=match):
        getattr(lt, name)([_param(3), bad()], **DEFAULT_KW[name])


@pytest.mark.parametrize("name", NAMES)
def test_bad_param_added_later_is_rejected(name):
    good = _param(3)
    opt = getattr(lt, name)([good], **DEFAULT_KW[name])
    with pytest.raises(TypeError, match="complex"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2, dtype=torch.cfloat))]})
    assert len(opt.param_groups) == 1


def _unchanged_after(opt, params, fn, exc, match):
    before = [p.detach().clone() for p in params]
    state_before = copy.deepcopy(opt.state_dict()["state"])
    with pytest.raises(exc, match=match):
        fn()
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)
    assert str(opt.state_dict()["state"]) == str(state_before)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("after_steps", [0, 2])
def test_errors_at_step_change_nothing(name, after_steps):
    def fresh():
        a, b = _param(4, 3), _param(5)
        opt = getattr(lt, name)([a, b], **DEFAULT_KW[name])
        for _ in range(after_steps):
            opt.step()
        return a, b, opt

    # a sparse grad
    a, b, opt = fresh()
    b.grad = torch.sparse_coo_tensor([[0]], [1.0], (5,), check_invariants=True)
    _unchanged_after(opt, [a, b], opt.step, RuntimeError, "sparse")
    # storage swapped for a non-contiguous one
    a, b, opt = fresh()
    with torch.no_grad():
        a.data = torch.ones(3, 4).t()
    _unchanged_after(opt, [a, b], opt.step, ValueError, "contiguous")
    # dtype changed behind the optimizer's back
    a, b, opt = fresh()
    b.data = b.data.to(torch.float8_e4m3fn)
    b.grad = torch.ones(5).to(torch.float8_e4m3fn)
    _unchanged_after(opt, [a, b], opt.step, TypeError, "float8")
    # bfloat16 now, while the state (after steps) is float32: a state of the wrong dtype
    a, b, opt = fresh()
    b.data = b.data.bfloat16()
    b.grad = torch.ones(5, dtype=torch.bfloat16)
    if after_steps and opt.state[b].keys() - {"step", "mu_product"}:
        _unchanged_after(opt, [a, b], opt.step, ValueError, "expected bfloat16")
    # a hyperparameter edited by hand to a bad value (in the second group's place: only one)
    a, b, opt = fresh()
    opt.param_groups[0]["lr"] = -1.0
    _unchanged_after(opt, [a, b], opt.step, ValueError, "lr")
    a, b, opt = fresh()
    opt.param_groups[0]["weight_decay"] = float("nan")
    _unchanged_after(opt, [a, b], opt.step, ValueError, "weight_decay")
    # the same tensor twice: buffers would alias
    a, b, opt = fresh()
    opt.param_groups[0]["params"].append(a)
    _unchanged_after(opt, [a, b], opt.step, ValueError, "share memory")


def test_bad_hyperparameters_at_construction():
    p = _param(3)
    with pytest.raises(ValueError):
        lt.Adam([p], lr=-1.0)                      # torch's own check
    with pytest.raises(ValueError, match="dampening"):
        lt.SGD([p], lr=0.1, momentum=0.9, dampening=2.0)
    with pytest.raises(ValueError, match="alpha"):
        lt.RMSprop([p], alpha=1.5)
    with pytest.raises(ValueError, match="beta"):
        lt.Adam([p], betas=(schedules.Constant(1.5), 0.9))
    with pytest.raises(ValueError, match="(?i)nesterov"):
        lt.SGD([p], lr=0.1, momentum=0.0, nesterov=True)


@pytest.mark.parametrize("name,key", [("RMSprop", "alpha"), ("Adadelta", "rho")])
def test_alpha_and_rho_are_in_0_1_open_stricter_than_torch(name, key):
    """README: lrcore's ranges are a little stricter than torch's: RMSprop's alpha and
    Adadelta's rho must be in [0, 1). The edge values: 1.0 (torch takes it, lrcore refuses it,
    naming it, for lrcore.torch and lrcore.optim, at construction and when set later), 0.0
    and the float below 1.0 (both take them)."""
    below_one = float(np.nextafter(1.0, 0.0))
    p = _param(4)
    getattr(torch.optim, name)([p], **{key: 1.0})                  # torch accepts 1.0
    for ok in (0.0, below_one):
        getattr(lt, name)([p], **{key: ok})
        getattr(lrcore.optim, name)([np.ones(4)], **{key: ok})
    for bad in (1.0, -1e-300, 1.5):
        with pytest.raises(ValueError, match=key):
            getattr(lt, name)([p], **{key: bad})
        with pytest.raises(ValueError, match=key):
            getattr(lrcore.optim, name)([np.ones(4)], **{key: bad})
    # a value edited into param_groups by hand is refused at the step, nothing changed
    p.grad = torch.full((4,), 0.5, dtype=p.dtype)
    opt = getattr(lt, name)([p], **{key: 0.5})
    opt.param_groups[0][key] = 1.0
    _unchanged_after(opt, [p], opt.step, ValueError, key)
    q = np.linspace(-1.0, 1.0, 4)
    mine = getattr(lrcore.optim, name)([q], **{key: 0.5})
    with pytest.raises(ValueError, match=key):
        mine.set(**{key: 1.0})
    assert mine.hyperparameters(0)[key] == 0.5


@pytest.mark.parametrize("name,flag", [("Adam", "capturable"), ("Adam", "differentiable"),
                                       ("AdamW", "capturable"), ("SGD", "differentiable"),
                                       ("Adagrad", "differentiable"),
                                       ("RMSprop", "capturable"), ("Adadelta", "capturable")])
def test_unsupported_modes_are_not_implemented(name, flag):
    with pytest.raises(NotImplementedError, match=flag):
        getattr(lt, name)([_param(3)], **{flag: True})


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "Adagrad"])
def test_foreach_and_fused_are_accepted(name):
    for flag in ("fused", "foreach"):
        p, r = _param(3), _param(3)
        a = getattr(lt, name)([p], **{flag: True}, **DEFAULT_KW[name])
        ref = getattr(torch.optim, name)([r], foreach=False, **DEFAULT_KW[name])
        TorchPair(name, ref, a, torch.float32, copy_grads=False).step()
        assert a.param_groups[0][flag] is True


# -- packaging ------------------------------------------------------------------------------------

def test_import_lrcore_does_not_import_torch():
    code = ("import sys, lrcore, lrcore.optim, lrcore.schedules, lrcore.kernels; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_optimizer_pickles_and_deepcopies():
    p = _param(3)
    opt = lt.Adam([p], lr=0.1)
    opt.step()
    clone = copy.deepcopy(opt)
    assert clone._lrcore_cache is None and float(clone.state[clone.param_groups[0]["params"][0]]
                                                 ["step"]) == 1.0
    assert "lrcore.torch" in repr(opt)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copy_keeps_lrcore_options_and_steps_as_the_original(how):
    """A deepcopy or pickle of an optimizer keeps num_threads, state_dtype, rounding and
    seed (torch's __getstate__ kept only defaults, state and param_groups: the copy of an
    int8-state optimizer had state_dtype None and its step failed with KeyError 'exp_avg';
    a stochastic-rounding one rounded to nearest), and steps bit for bit as the original."""
    import pickle
    gen = torch.Generator().manual_seed(4)
    p = torch.nn.Parameter(torch.randn(5000, generator=gen).bfloat16())
    opt = lt.AdamW([p], lr=schedules.Cosine(1e-3, 10), state_dtype="int8",
                   rounding="stochastic", seed=7, num_threads=2)
    p.grad = torch.randn(5000, generator=gen).bfloat16()
    opt.step()
    clone = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    assert (clone.num_threads, clone._lrcore_state_dtype, clone._lrcore_rounding,
            clone._lrcore_seed) == (2, "int8", "stochastic", 7)
    q = clone.param_groups[0]["params"][0]
    assert q is not p
    for _ in range(3):
        g = torch.randn(5000, generator=gen).bfloat16()
        p.grad, q.grad = g, g.clone()
        opt.step()
        clone.step()
    assert np.array_equal(_tbits(p), _tbits(q))
    for k, t in opt.state[p].items():
        assert np.array_equal(_tbits(t), _tbits(clone.state[q][k])), k


def test_numpy_reference_backend_agrees():
    """LRCORE_BACKEND=python runs the same optimizer through the numpy twin, within the same
    budget of torch."""
    code = (
        "import sys, torch, lrcore, lrcore.torch as lt\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from ulp_budget import TorchPair\n"
        "torch.set_num_threads(1)\n"
        "assert lrcore.backend() == 'python'\n"
        "torch.manual_seed(0)\n"
        "for dtype in (torch.float32, torch.float64):\n"
        "    p = torch.nn.Parameter(torch.randn(50, dtype=dtype))\n"
        "    q = p.detach().clone().requires_grad_()\n"
        "    a = lt.Adam([p], lr=0.1, amsgrad=True)\n"
        "    b = torch.optim.Adam([q], lr=0.1, amsgrad=True, foreach=False)\n"
        "    both = TorchPair('Adam', b, a, dtype)\n"
        "    for k in range(10):\n"
        "        q.grad = torch.randn(50, dtype=dtype)\n"
        "        both.step()\n"
        "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, LRCORE_BACKEND="python"))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# -- the budget itself ------------------------------------------------------------------------

@compare_with_torch
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_the_budget_catches_a_slightly_wrong_step(digits, name, dtype):
    """The comparison can fail: torch.optim itself with lr off by 2**-12 (float32) or 2**-30
    (float64) relative -- far below what any tolerance tuned by eye would notice, far above
    rounding -- is caught at the first step."""
    kw = DEFAULT_KW[name]
    ref_model = mlp(dtype)
    model = copy.deepcopy(ref_model)
    ref = getattr(torch.optim, name)(ref_model.parameters(), foreach=False, **kw)
    off = 2.0 ** (-12 if dtype == torch.float32 else -30)
    wrong = getattr(torch.optim, name)(model.parameters(), foreach=False,
                                       **dict(kw, lr=kw["lr"] * (1 + off)))
    both = TorchPair(name, ref, wrong, dtype, record=False)
    x, y = batches(digits, dtype, steps=1)[0]
    backward(ref_model, ref, x, y)
    with pytest.raises(AssertionError, match="over budget"):
        both.step()


# -- every instruction set torch has here ------------------------------------------------------

CAPABILITIES = ("default", "avx2", "avx512")


@pytest.mark.skipif(bool(os.environ.get("LRCORE_NESTED_CAPABILITY_RUN")),
                    reason="already inside a per-capability run")
@pytest.mark.parametrize("capability", CAPABILITIES)
def test_torch_comparisons_under_every_capability(capability, tmp_path):
    """torch chooses its kernels, and so its rounding, by ATEN_CPU_CAPABILITY when it is
    imported: every torch_compare test of this file runs again in a fresh interpreter under
    each capability this CPU runs (the one this process runs under is covered above)."""
    active = torch.backends.cpu.get_cpu_capability().lower()
    if capability == active:
        pytest.skip(f"{capability} is this process's capability: the tests above ran under it")
    report_path = tmp_path / "ulp.jsonl"
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability, LRCORE_NESTED_CAPABILITY_RUN="1",
               LRCORE_ULP_REPORT=str(report_path))
    probe = subprocess.run([sys.executable, "-c", "import torch; "
                            "print(torch.backends.cpu.get_cpu_capability())"],
                           capture_output=True, text=True, env=env)
    assert probe.returncode == 0, probe.stderr
    if probe.stdout.strip().lower() != capability:
        pytest.skip(f"this CPU does not run torch's {capability} kernels "
                    f"(torch falls back to {probe.stdout.strip()})")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-m", "torch_compare", str(pathlib.Path(__file__))],
                       capture_output=True, text=True, env=env, cwd=TESTS.parent)
    assert r.returncode == 0, f"under ATEN_CPU_CAPABILITY={capability}:\n" + r.stdout[-6000:]
    seen = {}
    for line in report_path.read_text().splitlines():
        seen.update(json.loads(line))
    assert seen and all(key.endswith("|" + capability) for key in seen), sorted(seen)
    for key, rec in seen.items():
        print(key, rec)


# -- every torch.optim.lr_scheduler refuses to drive an lrcore schedule (issue 9 item 13) --

S = torch.optim.lr_scheduler


def _children(o):
    return [S.ConstantLR(o, factor=0.5, total_iters=2), S.ExponentialLR(o, gamma=0.9)]


# Each scheduler of torch.optim.lr_scheduler, built on an optimizer. SequentialLR and
# ChainedScheduler wrap schedulers built first (while the lr was a number: see the test).
SCHEDULERS = {
    "LambdaLR": lambda o, kids: S.LambdaLR(o, lambda k: 0.9 ** k),
    "MultiplicativeLR": lambda o, kids: S.MultiplicativeLR(o, lambda k: 0.9),
    "StepLR": lambda o, kids: S.StepLR(o, step_size=2, gamma=0.5),
    "MultiStepLR": lambda o, kids: S.MultiStepLR(o, milestones=[2, 4]),
    "ConstantLR": lambda o, kids: S.ConstantLR(o, factor=0.5, total_iters=2),
    "LinearLR": lambda o, kids: S.LinearLR(o, start_factor=0.5, total_iters=4),
    "ExponentialLR": lambda o, kids: S.ExponentialLR(o, gamma=0.9),
    "SequentialLR": lambda o, kids: S.SequentialLR(o, kids, milestones=[2]),
    "PolynomialLR": lambda o, kids: S.PolynomialLR(o, total_iters=4),
    "CosineAnnealingLR": lambda o, kids: S.CosineAnnealingLR(o, T_max=10),
    "ChainedScheduler": lambda o, kids: S.ChainedScheduler(kids, optimizer=o),
    "ReduceLROnPlateau": lambda o, kids: S.ReduceLROnPlateau(o, patience=1),
    "CyclicLR": lambda o, kids: S.CyclicLR(o, 0.001, 0.01),
    "CosineAnnealingWarmRestarts": lambda o, kids: S.CosineAnnealingWarmRestarts(o, T_0=3),
    "OneCycleLR": lambda o, kids: S.OneCycleLR(o, 0.1, total_steps=10),
    "SWALR": lambda o, kids: torch.optim.swa_utils.SWALR(o, swa_lr=0.01),
}


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(19, generator=g)),
            torch.nn.Parameter(torch.randn(4, 5, generator=g))]


def _snapshot(opt):
    return [{k: (tuple(v) if k == "params" else v) for k, v in g.items()}
            for g in opt.param_groups]


def test_the_list_covers_every_torch_scheduler():
    """A scheduler added to torch.optim.lr_scheduler must be added to SCHEDULERS."""
    found = {n for n, c in vars(S).items() if isinstance(c, type) and not n.startswith("_")
             and (issubclass(c, S.LRScheduler) or n == "ReduceLROnPlateau")
             and c is not S.LRScheduler}
    assert found <= set(SCHEDULERS), sorted(found - set(SCHEDULERS))


@pytest.mark.parametrize("opt_name", ["Adam", "SGD"])
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_torch_scheduler_on_a_schedule_lr_is_refused_at_construction(one_thread, name,
                                                                           opt_name):
    """Refused with a TypeError naming the group and saying what to do, before the
    scheduler writes anything: every group (the number-lr one too) is unchanged and the
    optimizer steps with its schedule."""
    params = _tiny()
    sched = schedules.Cosine(0.1, 20)
    kw = {"momentum": 0.9} if opt_name == "SGD" else {}
    opt = getattr(lt, opt_name)([{"params": params[:1], "lr": 0.05},
                                 {"params": params[1:]}], lr=0.1, **kw)
    wraps = name in ("SequentialLR", "ChainedScheduler")
    kids = _children(opt) if wraps else None     # built while the lr was a number
    opt.param_groups[1]["lr"] = sched
    before = _snapshot(opt)
    with pytest.raises(TypeError, match=r"param_groups\[1\]'s lr is the lrcore schedule "
                                        r"Cosine\(initial=0.1, steps=20\); a "
                                        r"torch.optim.lr_scheduler cannot also drive it .* "
                                        r"Give lr as a number"):
        SCHEDULERS[name](opt, kids)
    after = _snapshot(opt)
    assert after == before and opt.param_groups[1]["lr"] is sched
    assert wraps or not any(k in g for g in opt.param_groups
                            for k in ("initial_lr", "max_lr", "max_momentum", "swa_lr"))
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    ref = getattr(lt, opt_name)([{"params": [p.detach().clone().requires_grad_() for p in
                                             _tiny()[:1]], "lr": before[0]["lr"]},
                                 {"params": [p.detach().clone().requires_grad_() for p in
                                             _tiny()[1:]], "lr": sched}], lr=0.1, **kw)
    for g in ref.param_groups:
        for p in g["params"]:
            p.grad = torch.ones_like(p)
    ref.step()
    for p, q in zip(params, [p for g in ref.param_groups for p in g["params"]]):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_torch_scheduler_drives_a_number_lr(one_thread, name):
    """With number lrs every scheduler is accepted and sets lrcore.torch's lr as it sets
    torch.optim's (compared exactly, group by group, over a few steps)."""
    params, ref_params = _tiny(), _tiny()
    opt = lt.SGD(params, lr=0.1, momentum=0.9)
    ref = torch.optim.SGD(ref_params, lr=0.1, momentum=0.9, foreach=False)
    scheds = [SCHEDULERS[name](o, _children(o)) for o in (opt, ref)]
    for k in range(5):
        for ps in (params, ref_params):
            for p in ps:
                p.grad = torch.full_like(p, 0.5 + k)
        opt.step()
        ref.step()
        for s in scheds:
            s.step(1.0) if name == "ReduceLROnPlateau" else s.step()
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in ref.param_groups]


@pytest.mark.parametrize("opt_name,key", [("Adam", "betas"), ("SGD", "momentum")])
@pytest.mark.parametrize("name", ["OneCycleLR", "CyclicLR"])
def test_momentum_cycling_over_a_schedule_is_refused(one_thread, name, opt_name, key):
    """OneCycleLR and CyclicLR (cycle_momentum=True, their default) would write over
    betas[0] / momentum: refused at construction when that is an lrcore schedule, nothing
    written; with cycle_momentum=False they drive the number lr and leave it alone."""
    params = _tiny()
    sched = schedules.Cosine(0.9, 20)
    value = (sched, 0.999) if key == "betas" else sched
    opt = getattr(lt, opt_name)(params, lr=0.01, **{key: value})
    before = _snapshot(opt)
    label = "betas\\[0\\]" if key == "betas" else "momentum"
    with pytest.raises(TypeError, match=rf"param_groups\[0\]'s {label} is the lrcore schedule "
                                        rf"Cosine\(initial=0.9, steps=20\); .*"
                                        rf"cycle_momentum=True cannot also drive it"):
        SCHEDULERS[name](opt, None)
    assert _snapshot(opt) == before
    s = (S.OneCycleLR(opt, 0.1, total_steps=10, cycle_momentum=False) if name == "OneCycleLR"
         else S.CyclicLR(opt, 0.001, 0.01, cycle_momentum=False))
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    s.step()
    got = opt.param_groups[0][key]
    assert (got[0] is sched) if key == "betas" else (got is sched)
    assert isinstance(opt.param_groups[0]["lr"], float)


def test_a_schedule_put_in_later_is_refused_at_the_scheduler_step(one_thread):
    """A StepLR built on a number lr, whose lr is then set to an lrcore schedule by hand,
    raises at its next step instead of writing a number over the schedule."""
    params = _tiny()
    opt = lt.Adam(params, lr=0.1)
    s = S.StepLR(opt, step_size=1, gamma=0.5)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    sched = schedules.Cosine(0.1, 20)
    opt.param_groups[0]["lr"] = sched
    with pytest.raises(TypeError, match=r"lr is the lrcore schedule"):
        s.step()
    assert opt.param_groups[0]["lr"] is sched


# --------------------------------------------------------------------------------------------
# Half precision and 8-bit state (issues 12, 13): bitwise lrcore.optim's class, resumable
# --------------------------------------------------------------------------------------------

LOWP_KW = {"SGD": dict(lr=1e-2, momentum=0.9), "Adam": dict(lr=1e-2, amsgrad=True),
           "AdamW": dict(lr=1e-2), "Adagrad": dict(lr=1e-2),
           "RMSprop": dict(lr=1e-2, momentum=0.5, centered=True), "Adadelta": dict(lr=0.5),
           "Adamax": dict(lr=1e-2), "NAdam": dict(lr=1e-2), "RAdam": dict(lr=1e-2),
           "Lion": dict(lr=1e-3)}
LOWP_CASES = {   # (param dtype, grad dtype, state_dtype for lrcore.torch, for lrcore.optim)
    "bf16": (torch.bfloat16, torch.bfloat16, None, None),
    "bf16-state-f32": (torch.bfloat16, torch.bfloat16, torch.float32, "float32"),
    "f16": (torch.float16, torch.float16, None, None),
    "f32-bf16grad": (torch.float32, torch.bfloat16, None, None),
    "bf16-state-bf16": (torch.bfloat16, torch.bfloat16, torch.bfloat16, "bfloat16"),
    "f32-int8": (torch.float32, torch.float32, "int8", "int8"),
    "bf16-int8": (torch.bfloat16, torch.bfloat16, "int8", "int8"),
}


def _as_numpy(t):
    t = t.detach()
    if t.dtype == torch.bfloat16:
        import ml_dtypes
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _tbits(t):
    return t.detach().contiguous().view(torch.uint8).numpy() if t.dim() else \
        t.detach().reshape(1).view(torch.uint8).numpy()


def _lowp_pair(name, case, steps, seed=0):
    pdt, gdt, tsd, osd = LOWP_CASES[case]
    gen = torch.Generator().manual_seed(seed)
    shapes = [(37,), (50, 100)]
    params = [torch.nn.Parameter((torch.rand(s, generator=gen) - 0.5).to(pdt)) for s in shapes]
    if gdt != pdt:      # optimizer offload: half-precision grads of float32 params
        for p in params:
            p.grad_dtype = gdt
    grads = [[(torch.rand(s, generator=gen) * 2 - 1).to(gdt) for s in shapes]
             for _ in range(steps)]
    mine = [_as_numpy(p).copy() for p in params]
    kw = dict(LOWP_KW[name], rounding="stochastic", seed=2 ** 63 + 5)
    return params, grads, mine, kw, tsd, osd


@pytest.mark.parametrize("case", list(LOWP_CASES))
@pytest.mark.parametrize("name", list(LOWP_KW))
def test_lowp_drop_in_equals_lrcore_optim(name, case):
    if "int8" in case and name.lower() not in lrcore.quantization.INT8_RULES and \
            name not in ("AdamW",):
        with pytest.raises(ValueError, match="state_dtype='int8' is supported for the rules"):
            getattr(lt, name)([torch.zeros(5000)], state_dtype="int8", **LOWP_KW[name])
        return
    kw_extra = dict(centered=False) if name == "RMSprop" and "int8" in case else {}
    params, grads, mine, kw, tsd, osd = _lowp_pair(name, case, 3)
    kw.update(kw_extra)
    opt = getattr(lt, name)(params, state_dtype=tsd, **kw)
    ref = getattr(lrcore.optim, name)(mine, state_dtype=osd, **kw)
    for g in grads:
        for p, x in zip(params, g):
            p.grad = x
        opt.step()
        ref.step([_as_numpy(x) for x in g])
    for p, m in zip(params, mine):
        assert p.dtype == LOWP_CASES[case][0]
        assert np.array_equal(_as_numpy(p).view(np.uint8), m.view(np.uint8))
    sd = ref.state_dict()
    torch_name = {s.name: s.torch_name for s in opt._rule.states}
    for i, p in enumerate(params):
        st = opt.state[p]
        for key, a in sd["state"][i].items():
            name_, dot, part = key.partition(".")
            t = st[torch_name[name_] + dot + part]
            assert np.array_equal(_as_numpy(t).view(np.uint8).reshape(-1),
                                  a.view(np.uint8).reshape(-1)), key
    assert opt.state_nbytes() == ref.state_nbytes() == sum(
        t.numel() * t.element_size() for st in opt.state.values()
        for k, t in st.items() if k not in ("step", "mu_product"))


@pytest.mark.parametrize("case", ["bf16", "f16", "bf16-int8", "f32-int8"])
def test_lowp_state_dict_round_trip_is_bitwise(tmp_path, case):
    name = "AdamW"
    params, grads, _, kw, tsd, _ = _lowp_pair(name, case, 6)
    start = [p.detach().clone() for p in params]
    opt = getattr(lt, name)(params, state_dtype=tsd, **kw)
    for g in grads:
        for p, x in zip(params, g):
            p.grad = x
        opt.step()
    part = [torch.nn.Parameter(p.clone()) for p in start]
    opt = getattr(lt, name)(part, state_dtype=tsd, **kw)
    for g in grads[:3]:
        for p, x in zip(part, g):
            p.grad = x
        opt.step()
    torch.save({"opt": opt.state_dict(), "params": [p.detach() for p in part]},
               tmp_path / "o.pt")
    saved = torch.load(tmp_path / "o.pt", weights_only=True)
    dtypes = {t.dtype for st in saved["opt"]["state"].values() for k, t in st.items()
              if k != "step"}
    if "int8" in case:
        assert dtypes == {torch.uint8, torch.float32}
    else:
        assert dtypes == {LOWP_CASES[case][0] if case == "bf16" else torch.float32}
    resumed = [torch.nn.Parameter(t.clone()) for t in saved["params"]]
    new = getattr(lt, name)(resumed, state_dtype=tsd, **kw)
    new.load_state_dict(saved["opt"])
    for g in grads[3:]:
        for p, x in zip(resumed, g):
            p.grad = x
        new.step()
    for a, b in zip(resumed, params):
        assert np.array_equal(_as_numpy(a).view(np.uint8), _as_numpy(b).view(np.uint8))


# every state_dtype each param dtype takes (the others are refused at construction, checked
# below); "int8" only for the rules of lrcore.quantization.INT8_RULES
RESUME_STATE_DTYPES = {torch.bfloat16: (None, "float32", "bfloat16", "int8"),
                       torch.float16: (None, "float32"),
                       torch.float32: ("int8",), torch.float64: (None,)}
RESUME_CASES = [(name, pdt, sd) for name in LOWP_KW for pdt, sds in RESUME_STATE_DTYPES.items()
                for sd in sds
                if sd != "int8" or name.lower() in lrcore.quantization.INT8_RULES
                or name == "AdamW"]


def _resume_kw(name, sd):
    kw = dict(LOWP_KW[name], state_dtype=sd, rounding="stochastic", seed=2 ** 63 + 5)
    if name == "RMSprop" and sd == "int8":
        kw["centered"] = False     # centered RMSprop keeps no 8-bit state
    return kw


def test_resume_cases_cover_every_accepted_state_dtype():
    for name in LOWP_KW:
        for pdt in (torch.bfloat16, torch.float16):
            accepted = []
            for sd in (None, "float32", "bfloat16", "int8"):
                try:
                    getattr(lt, name)([torch.zeros(5000, dtype=pdt)], **_resume_kw(name, sd))
                    accepted.append(sd)
                except (TypeError, ValueError):
                    pass
            assert [(name, pdt, sd) for sd in accepted] == \
                [c for c in RESUME_CASES if c[:2] == (name, pdt)]


@pytest.mark.parametrize("name,pdt,sd", RESUME_CASES,
                         ids=[f"{n}-{str(p)[6:]}-{s}" for n, p, s in RESUME_CASES])
def test_every_class_resumes_bitwise_after_save_and_load(tmp_path, name, pdt, sd):
    """3 steps, torch.save / torch.load(weights_only=True), a fresh optimizer, 3 more steps:
    params and every state tensor (codes, absmax, float32 or bfloat16 buffers, step, NAdam's
    float32 mu_product), their dtypes included, equal bit for bit those of the run that was
    never interrupted. torch's own load would cast mu_product to a bfloat16, float16 or
    float64 param's dtype."""
    gen = torch.Generator().manual_seed(7)
    shapes = [(37,), (50, 100)]          # float32 state and, with "int8", 20 blocks of codes
    start = [(torch.rand(s, generator=gen) - 0.5).to(pdt) for s in shapes]
    grads = [[(torch.rand(s, generator=gen) * 2 - 1).to(pdt) for s in shapes]
             for _ in range(6)]
    kw = _resume_kw(name, sd)

    def run(params, steps, opt=None):
        opt = opt or getattr(lt, name)(params, **kw)
        for g in steps:
            for p, x in zip(params, g):
                p.grad = x.clone()
            opt.step()
        return opt

    straight = [torch.nn.Parameter(t.clone()) for t in start]
    ref = run(straight, grads)
    first = [torch.nn.Parameter(t.clone()) for t in start]
    opt = run(first, grads[:3])
    torch.save({"opt": opt.state_dict(), "params": [p.detach() for p in first]},
               tmp_path / "o.pt")
    saved = torch.load(tmp_path / "o.pt", weights_only=True)
    resumed = [torch.nn.Parameter(t.clone()) for t in saved["params"]]
    new = getattr(lt, name)(resumed, **kw)
    new.load_state_dict(saved["opt"])
    run(resumed, grads[3:], new)
    for p, q in zip(straight, resumed):
        assert q.dtype == pdt
        assert np.array_equal(_tbits(p), _tbits(q))
        assert not torch.equal(p.detach(), start[0] if p.numel() == 37 else start[1])
        st, st2 = ref.state[p], new.state[q]
        assert sorted(st) == sorted(st2)
        for key, t in st.items():
            assert t.dtype == st2[key].dtype, key
            assert np.array_equal(_tbits(t), _tbits(st2[key])), key
    if name == "NAdam":
        assert all(new.state[q]["mu_product"].dtype == torch.float32 for q in resumed)
    assert new.state_nbytes() == ref.state_nbytes()


def test_load_state_dict_refuses_a_bad_scalar_state():
    """NAdam's mu_product must be a 0-dim floating-point tensor; otherwise ValueError naming
    it, and nothing changes."""
    gen = torch.Generator().manual_seed(3)
    p = torch.nn.Parameter(torch.rand(300, generator=gen).bfloat16())
    opt = lt.NAdam([p], lr=1e-2)
    p.grad = torch.rand(300, generator=gen).bfloat16()
    opt.step()
    before = {k: _tbits(v).copy() for k, v in opt.state[p].items()}
    for bad in (0.45, torch.tensor([0.45, 0.2]), torch.tensor(1, dtype=torch.int32)):
        sd = copy.deepcopy(opt.state_dict())
        sd["state"][0]["mu_product"] = bad
        with pytest.raises(ValueError, match=r"state of param 0 .*'mu_product' is .*expected "
                                             r"a 0-dim floating-point tensor"):
            opt.load_state_dict(sd)
        assert sorted(opt.state[p]) == sorted(before)
        assert all(np.array_equal(_tbits(opt.state[p][k]), v) for k, v in before.items())


@pytest.mark.parametrize("pdt,sd,per_element", [
    (torch.float32, None, 4), (torch.float64, None, 8), (torch.bfloat16, "float32", 4),
    (torch.float16, None, 4), (torch.bfloat16, "bfloat16", 2), (torch.bfloat16, "int8", None),
    (torch.float32, "int8", None)])
@pytest.mark.parametrize("name,nbuf", [("AdamW", 2), ("Adam-amsgrad", 3), ("NAdam", 2),
                                       ("SGD", 1)])
def test_state_nbytes_counts_the_state_tensors(name, nbuf, pdt, sd, per_element):
    """state_nbytes() is the bytes of the rule's state tensors: float32 or bfloat16 buffers,
    8-bit ones as uint8 codes plus one float32 absmax per block of 256 (buffers under 4096
    elements stay float32); not the params, step or NAdam's mu_product. Equal to
    lrcore.optim's on the same data."""
    cls, kw = (lt.Adam, dict(lr=1e-2, amsgrad=True)) if name == "Adam-amsgrad" else \
        (getattr(lt, name), dict(LOWP_KW[name]))
    gen = torch.Generator().manual_seed(5)
    shapes = [(37,), (50, 100)]
    params = [torch.nn.Parameter((torch.rand(s, generator=gen) - 0.5).to(pdt)) for s in shapes]
    opt = cls(params, state_dtype=sd, **kw)
    assert opt.state_nbytes() == 0
    for p in params:
        p.grad = (torch.rand(p.shape, generator=gen) * 2 - 1).to(pdt)
    opt.step()

    def expected(n):
        if per_element is not None:
            return nbuf * n * per_element
        if n < lrcore.quantization.MIN_ELEMENTS:
            return nbuf * n * 4
        return nbuf * (n + 4 * -(-n // lrcore.quantization.BLOCK))

    assert opt.state_nbytes() == expected(37) + expected(5000) == sum(
        t.numel() * t.element_size() for st in opt.state.values()
        for k, t in st.items() if k not in ("step", "mu_product"))
    mine = [_as_numpy(p).copy() for p in params]
    ref = getattr(lrcore.optim, cls.__name__)(mine, state_dtype=sd, **kw)
    ref.step([_as_numpy(p.grad) for p in params])
    assert opt.state_nbytes() == ref.state_nbytes()


def test_lowp_bad_state_dict_and_grads_change_nothing():
    params, grads, _, kw, _, _ = _lowp_pair("Adam", "bf16-int8", 2)
    opt = lt.Adam(params, state_dtype="int8", **kw)
    for p, x in zip(params, grads[0]):
        p.grad = x
    opt.step()

    def frozen():
        return ([_tbits(p).copy() for p in params],
                {(i, k): _tbits(t).copy() for i, p in enumerate(params)
                 for k, t in opt.state[p].items()})

    before = frozen()
    for key, value, match in [
        ("exp_avg.codes", torch.zeros(4999, dtype=torch.uint8),
         r"'exp_avg.codes' is uint8 \(4999,\) on cpu, expected uint8 \(5000,\)"),
        ("exp_avg_sq.absmax", torch.zeros(20, dtype=torch.bfloat16),
         r"'exp_avg_sq.absmax' is bfloat16 \(20,\) on cpu, expected float32 \(20,\)"),
        ("exp_avg", torch.zeros(50, 100), r"has 'exp_avg'; with state_dtype='int8'"),
    ]:
        sd = copy.deepcopy(opt.state_dict())   # torch's holds the live state dicts
        sd["state"][1][key] = value
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(sd)
        now = frozen()
        assert all(np.array_equal(a, b) for a, b in zip(now[0], before[0]))
        assert now[1].keys() == before[1].keys()
        assert all(np.array_equal(now[1][k], before[1][k]) for k in now[1])
    params[1].grad_dtype = None
    params[1].grad = grads[1][1].to(torch.float16)
    params[0].grad = grads[1][0]
    with pytest.raises(TypeError, match=r"the \.grad of param_groups\[0\]\[.params.\]\[1\] is float16 .*8-bit state.*unsupported layout"):
        opt.step()
    now = frozen()
    assert all(np.array_equal(a, b) for a, b in zip(now[0], before[0]))
    assert all(np.array_equal(now[1][k], before[1][k]) for k in now[1])


@pytest.mark.parametrize("kw,exc,match", [
    (dict(state_dtype=torch.float16), ValueError, "squares of gradients overflow"),
    (dict(state_dtype=torch.bfloat16), TypeError, "is float32 and state_dtype='bfloat16'"),
    (dict(state_dtype=torch.int8), ValueError, "state_dtype must be None"),
    (dict(rounding="odd"), ValueError, "rounding must be"),
    (dict(seed=-1), ValueError, "seed must be in"),
])
def test_lowp_bad_options(kw, exc, match):
    with pytest.raises(exc, match=match):
        lt.Adam([torch.zeros(3)], **kw)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_load_state_dict_refuses_missing_buffer(amsgrad):
    """A saved state with a step but without a buffer its group needs is refused before
    anything changes (torch would fail at the next step; lrcore must not start the buffer
    afresh silently)."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(40, dtype=torch.float64))
    opt = lt.AdamW([p], lr=1e-3, amsgrad=amsgrad)
    p.grad = torch.randn(40, dtype=torch.float64)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[p].items()}
    for missing in ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if amsgrad else []):
        sd = opt.state_dict()
        sd["state"][0] = {k: v.clone() for k, v in sd["state"][0].items() if k != missing}
        with pytest.raises(ValueError, match=f"has a step but no '{missing}'"):
            opt.load_state_dict(sd)
        assert sorted(opt.state[p]) == sorted(before)
        assert all(torch.equal(opt.state[p][k], v) for k, v in before.items())


def test_grad_layout_error_names_the_param():
    p = torch.nn.Parameter(torch.randn(8, dtype=torch.float64))
    p.grad_dtype = None
    p.grad = torch.randn(8, dtype=torch.bfloat16)
    opt = lt.AdamW([p], lr=1e-3)
    before = p.detach().clone()
    with pytest.raises(TypeError, match=r"the \.grad of param_groups\[0\]\['params'\]\[0\] is "
                                        r"bfloat16"):
        opt.step()
    assert torch.equal(p.detach(), before) and not opt.state[p]


# -- load_state_dict refuses bad state at load, for every layout ---------------------------------

def _frozen(opt, params):
    """Everything a refused load must leave as it was: params, state (keys, dtypes, bits),
    param_groups (hyperparameters and lrcore's bookkeeping)."""
    return ([_tbits(p).copy() for p in params],
            {(i, k): (t.dtype, _tbits(t).copy()) if isinstance(t, torch.Tensor) else t
             for i, p in enumerate(params) for k, t in opt.state.get(p, {}).items()},
            [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])


def _same(a, b):
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        if isinstance(a[1][k], tuple):
            assert a[1][k][0] == b[1][k][0] and np.array_equal(a[1][k][1], b[1][k][1]), k
        else:
            assert a[1][k] == b[1][k], k
    assert str(a[2]) == str(b[2])


PLAIN_CASES = [(n, d) for n in LOWP_KW for d in DTYPES]


@pytest.mark.parametrize("name,dtype", PLAIN_CASES,
                         ids=[f"{n}-{str(d)[6:]}" for n, d in PLAIN_CASES])
def test_plain_load_state_dict_refuses_bad_state_at_load(name, dtype):
    """float32/float64 optimizers: a saved state tensor of another shape (another size, or
    the same size in another shape), of a non-floating dtype (integer, bool, complex: torch
    would cast it silently, dropping an imaginary part), or not a tensor, and a bad `step`
    (negative, fractional, NaN, several elements, not a number), is refused by
    load_state_dict with a ValueError naming the param index and the state key, with
    params, state and param_groups unchanged; it used to load and only the next step
    refused it. A floating state of another dtype is cast to the param's, as torch does."""
    kw = dict(LOWP_KW[name])
    if name == "Adam":
        kw["amsgrad"] = True
    params = [_param(4, 3, dtype=dtype), _param(5, dtype=dtype)]
    opt = getattr(lt, name)(params, **kw)
    opt.step()
    opt.step()
    before = _frozen(opt, params)
    keys = [k for k in opt.state[params[0]] if k not in ("step", "mu_product")]
    assert keys
    bad_values = [("size", torch.zeros(11, dtype=dtype), r"float\w+ \(11,\) on cpu"),
                  ("shape", torch.zeros(3, 4, dtype=dtype), r"float\w+ \(3, 4\) on cpu"),
                  ("int", torch.zeros(4, 3, dtype=torch.int64), r"int64 \(4, 3\)"),
                  ("bool", torch.zeros(4, 3, dtype=torch.bool), r"bool \(4, 3\)"),
                  ("complex", torch.zeros(4, 3, dtype=torch.complex64), r"complex64 \(4, 3\)"),
                  ("float", 0.5, "0.5"),
                  ("numpy", np.zeros((4, 3)), r"a numpy.ndarray float64 \(4, 3\)")]
    for key in keys:
        for what, value, got in bad_values:
            sd = copy.deepcopy(opt.state_dict())
            sd["state"][0][key] = value
            with pytest.raises(ValueError, match=rf"load_state_dict\(\): state of param 0 "
                                                 rf"\(.*\).*{key!r} is {got}.*expected"):
                opt.load_state_dict(sd)
            _same(_frozen(opt, params), before)
    if opt._has_step:
        for value in (-1.0, 2.5, float("nan"), float("inf"), torch.tensor([1.0, 2.0]),
                      "3", torch.tensor(-2.0)):
            sd = copy.deepcopy(opt.state_dict())
            sd["state"][1]["step"] = value
            with pytest.raises(ValueError, match=r"state of param 1 \(.*\).*'step' is .*"
                                                 r"expected a whole number >= 0"):
                opt.load_state_dict(sd)
            _same(_frozen(opt, params), before)
    # torch's cast of another floating dtype is kept; the load then steps as usual
    sd = copy.deepcopy(opt.state_dict())
    other = torch.float64 if dtype == torch.float32 else torch.float32
    sd["state"][0][keys[0]] = sd["state"][0][keys[0]].to(other)
    opt.load_state_dict(sd)
    assert opt.state[params[0]][keys[0]].dtype == dtype
    opt.step()


@pytest.mark.parametrize("sd", [None, "bfloat16", "int8"])
def test_lowp_load_state_dict_refuses_a_bad_step_at_load(sd):
    """bfloat16 params (float32, bfloat16 or 8-bit state): a bad `step` is refused at load
    naming the param index and key, nothing changed (it loaded; the next step refused it)."""
    params, grads, _, kw, _, _ = _lowp_pair("AdamW", "bf16", 1)
    opt = lt.AdamW(params, state_dtype=sd, **kw)
    for p, x in zip(params, grads[0]):
        p.grad = x
    opt.step()
    before = _frozen(opt, params)
    for value in (-1.0, 0.5, float("nan"), torch.tensor([1.0, 1.0]), None.__class__):
        sd_ = copy.deepcopy(opt.state_dict())
        sd_["state"][1]["step"] = value
        with pytest.raises(ValueError, match=r"state of param 1 \(bfloat16 \(50, 100\) on cpu\): "
                                             r"'step' is .*expected a whole number >= 0"):
            opt.load_state_dict(sd_)
        _same(_frozen(opt, params), before)


def test_plain_load_state_dict_refuses_8bit_state_keys():
    """A state dict of an int8-state optimizer loaded into a float32 one without
    state_dtype is refused naming the key (the codes were kept and ignored)."""
    p = torch.nn.Parameter(torch.randn(5000))
    src = lt.AdamW([torch.nn.Parameter(p.detach().clone())], lr=1e-3, state_dtype="int8")
    src.param_groups[0]["params"][0].grad = torch.randn(5000)
    src.step()
    sd = src.state_dict()
    sd["state"][0]["exp_avg"] = torch.zeros(5000)
    sd["state"][0]["exp_avg_sq"] = torch.zeros(5000)
    opt = lt.AdamW([p], lr=1e-3)
    with pytest.raises(ValueError, match=r"state of param 0 .*has 'exp_avg.(codes|absmax)' "
                                         r"\(8-bit state\)"):
        opt.load_state_dict(sd)
    assert not opt.state


BAD_LRCORE_STEPS = ["3", -1, 2.5, 3.0, True, None, float("nan"), 2 ** 53, torch.tensor(3)]


@pytest.mark.parametrize("pdt", [torch.float32, torch.bfloat16], ids=str)
def test_sgd_bad_lrcore_steps_is_refused_naming_it(pdt):
    """SGD's group["lrcore_steps"] (its count of steps, at which schedules are evaluated)
    must be an integer in [0, 2**53): a string, negative, float (even 3.0), bool, None, NaN
    or tensor is refused with a ValueError naming param_groups[g]['lrcore_steps'], at
    load_state_dict, at a step after a hand edit, and by add_param_group, with nothing
    changed (a string or NaN failed at the step with int()'s bare message; -1, 2.5 and True
    were taken as 0, 3 and 2 steps)."""
    gen = torch.Generator().manual_seed(1)
    a = torch.nn.Parameter(torch.randn(6, generator=gen).to(pdt))
    b = torch.nn.Parameter(torch.randn(4, generator=gen).to(pdt))
    opt = lt.SGD([{"params": [a]}, {"params": [b], "lr": schedules.Linear(0.1, 0.01, 10)}],
                 lr=0.05, momentum=0.9)
    for p in (a, b):
        p.grad = torch.ones_like(p)
    opt.step()
    before = _frozen(opt, [a, b])
    for bad in BAD_LRCORE_STEPS:
        sd = copy.deepcopy(opt.state_dict())
        sd["param_groups"][1]["lrcore_steps"] = bad
        with pytest.raises(ValueError, match=r"SGD.load_state_dict\(\): param_groups\[1\]"
                                             r"\['lrcore_steps'\] is .*expected an integer"):
            opt.load_state_dict(sd)
        _same(_frozen(opt, [a, b]), before)
        opt.param_groups[1]["lrcore_steps"] = bad
        with pytest.raises(ValueError, match=r"SGD: param_groups\[1\]\['lrcore_steps'\] is "
                                             r".*expected an integer in \[0, 2\*\*53\)"):
            opt.step()
        opt.param_groups[1]["lrcore_steps"] = 1
        _same(_frozen(opt, [a, b]), before)
        c = torch.nn.Parameter(torch.zeros(3, dtype=pdt))
        with pytest.raises(ValueError, match=r"param_groups\[2\]\['lrcore_steps'\]"):
            opt.add_param_group({"params": [c], "lrcore_steps": bad})
        assert len(opt.param_groups) == 2
    sd = copy.deepcopy(opt.state_dict())
    sd["param_groups"][1]["lrcore_steps"] = np.int64(7)    # an integer of another type
    opt.load_state_dict(sd)
    opt.step()
    assert opt.param_groups[1]["lrcore_steps"] == 8
    assert opt.param_groups[0]["lrcore_steps"] == 2


@pytest.mark.parametrize("key,value,exc,match", [
    ("lr", -1.0, ValueError, r"lr must be a finite number >= 0, got -1.0"),
    ("lr", "abc", TypeError, r"lr must be a real number, got str"),
    ("eps", float("nan"), ValueError, r"eps must be a finite number >= 0, got nan"),
    ("weight_decay", float("inf"), ValueError, r"weight_decay"),
    ("betas", (0.9, 1.5), ValueError, r"beta2"),
    ("lr", None, ValueError, r"no value for 'lr'"),
    ("capturable", True, NotImplementedError, r"capturable=True"),
])
def test_load_state_dict_refuses_bad_saved_hyperparameters(key, value, exc, match):
    """A saved group's hyperparameters are checked at load as the next step would check
    them: a bad or missing one is refused naming load_state_dict, the group and the
    hyperparameter, with params, state and param_groups unchanged (it loaded, and only the
    next step refused it)."""
    params = [_param(4, 3), _param(5)]
    opt = lt.Adam([{"params": [params[0]]}, {"params": [params[1]], "lr": 5e-3}], lr=1e-2)
    opt.step()
    before = _frozen(opt, params)
    sd = copy.deepcopy(opt.state_dict())
    if value is None:
        del sd["param_groups"][1][key]
    else:
        sd["param_groups"][1][key] = value
    with pytest.raises(exc, match=r"Adam.load_state_dict\(\): param_groups\[1\]: .*" + match):
        opt.load_state_dict(sd)
    _same(_frozen(opt, params), before)
    opt.step()


def test_load_state_dict_hooks_run_as_torchs():
    """A load_state_dict pre-hook sees the state dict first and what it returns is what is
    checked and loaded (lrcore checked the dict before the hook, refusing one the hook
    repairs); each pre-hook runs once. Post-hooks run on the optimizer as loaded: a bfloat16
    param's float32 state in float32 (torch's load had cast it to bfloat16 when they ran)
    and the saved lrcore schedule in the group."""
    for lib in (torch.optim, lt):
        a = torch.nn.Parameter(torch.randn(5))
        opt = lib.Adam([a], lr=0.01)
        a.grad = torch.ones(5)
        opt.step()
        sd = copy.deepcopy(opt.state_dict())
        sd["state"][0]["m"] = sd["state"][0].pop("exp_avg")
        sd["state"][0]["exp_avg"] = torch.zeros(7)       # replaced by the hook
        calls = []

        def fix(o, d):
            calls.append(1)
            d = dict(d, state={k: dict(v) for k, v in d["state"].items()})
            d["state"][0]["exp_avg"] = d["state"][0].pop("m")
            return d
        opt.register_load_state_dict_pre_hook(fix)
        opt.load_state_dict(sd)
        assert calls == [1]
        assert opt.state[a]["exp_avg"].shape == (5,) and "m" not in opt.state[a]
        opt.step()
    p = torch.nn.Parameter(torch.randn(6).bfloat16())
    lr = schedules.Cosine(0.1, 10)
    opt = lt.AdamW([p], lr=lr, state_dtype="float32")
    p.grad = torch.ones(6, dtype=torch.bfloat16)
    opt.step()
    sd = opt.state_dict()
    seen = []
    opt.register_load_state_dict_post_hook(
        lambda o: seen.append((o.state[p]["exp_avg"].dtype, o.param_groups[0]["lr"])))
    opt.load_state_dict(sd)
    assert seen == [(torch.float32, lr)] and seen[0][1] is lr


def test_a_step_in_another_thread_waits_for_a_load():
    """Steps and loads are serialised by the optimizer's lock: a step started from another
    thread while load_state_dict runs (here: from its post-hook) waits until the load is
    done. torch's load calls __setstate__, which replaced the lock mid-load, so the step ran
    during the load."""
    import threading
    p = _param(50)
    opt = lt.Adam([p], lr=0.1)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    during = []

    def hook(o):
        t = threading.Thread(target=o.step)
        t.start()
        t.join(0.5)
        during.append(t.is_alive())      # still waiting for the lock
        hook.thread = t
    opt.register_load_state_dict_post_hook(hook)
    opt.load_state_dict(sd)
    hook.thread.join(10)
    assert during == [True] and not hook.thread.is_alive()
    assert float(opt.state[p]["step"]) == 2.0


@pytest.mark.skipif(lrcore.backend.name != "native", reason="the one-call plan is the compiled core's")
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "NAdam", "RMSprop", "Adagrad"])
def test_lowp_one_call_plan_equals_per_param_path(name, monkeypatch):
    """Half-precision params and grads step in one StepPlan of lrcore.lowp's layouts; the
    per-param path (taken on the numpy backend) gives the same bits: params of four layouts
    in two groups, stochastic rounding, a param without a grad at step 2 (its own step count
    falls behind, as torch keeps it), SGD's momentum buffer made at the first step."""
    kw = {"SGD": dict(lr=0.05, momentum=0.9), "RMSprop": dict(lr=0.01, momentum=0.5)}.get(
        name, dict(lr=0.01))
    gen = torch.Generator().manual_seed(4)
    specs = [(torch.bfloat16, torch.bfloat16, 33), (torch.float16, torch.float16, 17),
             (torch.float32, torch.bfloat16, 65), (torch.float64, torch.float64, 9)]
    start = [(torch.rand(n, generator=gen) - 0.5).to(pdt) for pdt, _, n in specs]
    grads = [[(torch.rand(n, generator=gen) * 2 - 1).to(gdt) for _, gdt, n in specs]
             for _ in range(4)]
    runs = []
    for plan in (True, False):
        if not plan:
            monkeypatch.setattr(lrcore.backend, "name", "python")
        params = [torch.nn.Parameter(x.clone()) for x in start]
        params[2].grad_dtype = torch.bfloat16   # optimizer offload: bfloat16 grads of float32
        opt = getattr(lt, name)([{"params": params[:2]}, {"params": params[2:]}],
                                rounding="stochastic", seed=11, **kw)
        for t, g in enumerate(grads):
            for i, (p, x) in enumerate(zip(params, g)):
                p.grad = None if (t == 2 and i == 1) else x.clone()
            opt.step()
        assert (opt._lrcore_cache is not None) == plan
        runs.append((params, opt.state))
    for p, q in zip(runs[0][0], runs[1][0]):
        assert np.array_equal(_tbits(p), _tbits(q))
        sa, sb = runs[0][1][p], runs[1][1][q]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sa[k].dtype == sb[k].dtype and np.array_equal(_tbits(sa[k]), _tbits(sb[k])), k
