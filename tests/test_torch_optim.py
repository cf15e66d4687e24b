"""lrcore.torch against torch.optim: a real model trained side by side, state-dict interchange,
schedulers, groups, params without grads, and every error leaving the params unchanged.

The model is an MLP on lrcore's built-in digits data (mini-batches); torch.optim runs with
foreach=False (the per-tensor reference arithmetic lrcore's kernels reproduce).
"""
import copy
import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lrcore  # noqa: E402
import lrcore.torch as lt  # noqa: E402
from lrcore import schedules  # noqa: E402
from lrcore.demo.datasets import load_digits, standardize  # noqa: E402

DTYPES = (torch.float32, torch.float64)
STEPS = 100
BATCH = 64

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
NAMES = ("SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adadelta")
DEFAULT_KW = {"SGD": dict(lr=0.05, momentum=0.9), "Adam": dict(lr=1e-2),
              "AdamW": dict(lr=1e-2), "Adagrad": dict(lr=0.05), "RMSprop": dict(lr=1e-3),
              "Adadelta": dict(lr=1.0)}


def tol(dtype):
    """Trajectory tolerance scaled to the dtype: lrcore and torch round a few operations
    differently (fused multiply-adds), and 100 steps of training amplify it; the largest
    deviation measured over CASES is about 26 eps (AdamW + amsgrad, float32)."""
    eps = torch.finfo(dtype).eps
    return dict(rtol=256 * eps, atol=256 * eps)


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


def train_step(model, opt, x, y):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def assert_params_close(a, b, dtype, what=""):
    for i, (p, q) in enumerate(zip(a.parameters(), b.parameters())):
        torch.testing.assert_close(p, q, **tol(dtype), msg=lambda m: f"{what} param {i}: {m}")


def assert_state_close(s1, s2, dtype):
    assert s1.keys() == s2.keys()
    for k in s1:
        assert s1[k].keys() == s2[k].keys(), k
        for name in s1[k]:
            a, b = s1[k][name], s2[k][name]
            if name == "step":
                assert a.dtype == b.dtype and a.shape == b.shape and float(a) == float(b)
            else:
                torch.testing.assert_close(a, b, **tol(dtype))


def pair(name, kw, dtype, seed=0):
    """Two identical models, one driven by torch.optim (foreach=False), one by lrcore.torch."""
    ref_model = mlp(dtype, seed)
    model = copy.deepcopy(ref_model)
    ref = getattr(torch.optim, name)(ref_model.parameters(), foreach=False, **kw)
    opt = getattr(lt, name)(model.parameters(), **kw)
    return ref_model, ref, model, opt


# -- the real model, every step --------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_mlp_matches_torch_every_step(digits, name, kw, dtype):
    ref_model, ref, model, opt = pair(name, kw, dtype)
    assert isinstance(opt, getattr(torch.optim, name))
    losses = []
    for step, (x, y) in enumerate(batches(digits, dtype)):
        l_ref = train_step(ref_model, ref, x, y)
        l_mine = train_step(model, opt, x, y)
        losses.append(l_mine)
        assert math.isclose(l_mine, l_ref, rel_tol=tol(dtype)["rtol"],
                            abs_tol=tol(dtype)["atol"]), (step, l_mine, l_ref)
        assert_params_close(model, ref_model, dtype, f"step {step}")
    assert losses[-1] < losses[0]  # it trains
    assert_state_close(opt.state_dict()["state"], ref.state_dict()["state"], dtype)
    assert opt.state_dict()["param_groups"][0].keys() - {"lrcore_steps"} == \
        ref.state_dict()["param_groups"][0].keys()


@pytest.mark.parametrize("name", NAMES)
def test_maximize_matches_torch(digits, name):
    kw = dict(DEFAULT_KW[name], maximize=True)
    dtype = torch.float64
    ref_model, ref, model, opt = pair(name, kw, dtype)
    for x, y in batches(digits, dtype, steps=20):
        for m, o in ((ref_model, ref), (model, opt)):
            o.zero_grad()
            (-torch.nn.functional.cross_entropy(m(x), y)).backward()
            o.step()
    assert_params_close(model, ref_model, dtype)


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
    for x, y in data[:30]:
        train_step(ref_model, ref, x, y)
        train_step(model, opt, x, y)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    model = mlp(dtype, seed=1)
    model.load_state_dict(saved["model"])
    extra = {"foreach": False} if second is torch.optim else {}
    opt = getattr(second, name)(model.parameters(), **kw, **extra)
    opt.load_state_dict(saved["opt"])
    for x, y in data[30:]:
        l_ref = train_step(ref_model, ref, x, y)
        l_mine = train_step(model, opt, x, y)
        assert math.isclose(l_mine, l_ref, rel_tol=tol(dtype)["rtol"], abs_tol=tol(dtype)["atol"])
    assert_params_close(model, ref_model, dtype)
    assert_state_close(opt.state_dict()["state"], ref.state_dict()["state"], dtype)


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
    opt.step()
    ref.step()
    assert opt._lrcore_cache.plan is not plan
    torch.testing.assert_close(p, ref.param_groups[0]["params"][0], rtol=1e-6, atol=1e-7)
    assert float(opt.state[p]["step"]) == 2.0


# -- schedulers and schedules ----------------------------------------------------------------------

@pytest.mark.parametrize("scheduler", ["StepLR", "OneCycleLR", "CosineAnnealingLR"])
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop"])
def test_lr_scheduler_drives_lrcore(digits, name, scheduler):
    dtype = torch.float64
    kw = DEFAULT_KW[name]
    ref_model, ref, model, opt = pair(name, kw, dtype)

    def make(o):
        if scheduler == "StepLR":
            return torch.optim.lr_scheduler.StepLR(o, step_size=10, gamma=0.5)
        if scheduler == "OneCycleLR":
            return torch.optim.lr_scheduler.OneCycleLR(o, max_lr=kw["lr"] * 2,
                                                       total_steps=STEPS)
        return torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=STEPS)
    s_ref, s_mine = make(ref), make(opt)
    for x, y in batches(digits, dtype):
        train_step(ref_model, ref, x, y)
        train_step(model, opt, x, y)
        s_ref.step()
        s_mine.step()
        assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"]
    assert_params_close(model, ref_model, dtype)


@pytest.mark.parametrize("name", NAMES)
def test_lrcore_schedule_as_lr(digits, name):
    """An lrcore schedule is evaluated at the number of steps already taken."""
    dtype = torch.float64
    kw = DEFAULT_KW[name]
    sched = schedules.Cosine(kw["lr"], 40)
    ref_model, ref, model, _ = pair(name, kw, dtype)
    opt = getattr(lt, name)(model.parameters(), **dict(kw, lr=sched))
    assert opt.param_groups[0]["lr"] is sched
    for k, (x, y) in enumerate(batches(digits, dtype, steps=40)):
        ref.param_groups[0]["lr"] = sched(k)
        train_step(ref_model, ref, x, y)
        train_step(model, opt, x, y)
    assert_params_close(model, ref_model, dtype)
    sd = opt.state_dict()   # schedules travel as plain data (torch.load weights_only=True)
    assert sd["param_groups"][0]["lr"]["schedule"] == sched.to_config()


def test_schedule_as_beta1_and_in_a_group(digits):
    dtype = torch.float64
    b1 = schedules.Linear(0.95, 0.85, 20)
    ref_model, ref, model, _ = pair("Adam", dict(lr=1e-2), dtype)
    opt = lt.Adam([{"params": list(model.parameters()), "betas": (b1, 0.999)}], lr=1e-2)
    for k, (x, y) in enumerate(batches(digits, dtype, steps=20)):
        ref.param_groups[0]["betas"] = (b1(k), 0.999)
        train_step(ref_model, ref, x, y)
        train_step(model, opt, x, y)
    assert_params_close(model, ref_model, dtype)


def test_tensor_lr_and_hand_edited_groups(digits):
    dtype = torch.float32
    ref_model, ref, model, _ = pair("Adam", dict(lr=1e-2), dtype)
    opt = lt.Adam(model.parameters(), lr=torch.tensor(1e-2))
    for k, (x, y) in enumerate(batches(digits, dtype, steps=30)):
        if k == 10:
            for o in (ref, opt):
                o.param_groups[0]["lr"] = 3e-3
                o.param_groups[0]["weight_decay"] = 1e-2
        train_step(ref_model, ref, x, y)
        train_step(model, opt, x, y)
    assert_params_close(model, ref_model, dtype)


def test_closure_returns_loss_and_steps(digits):
    dtype = torch.float64
    ref_model, ref, model, opt = pair("RMSprop", dict(lr=1e-3), dtype)
    for x, y in batches(digits, dtype, steps=10):
        def closure(m=model, o=opt):
            o.zero_grad()
            loss = torch.nn.functional.cross_entropy(m(x), y)
            loss.backward()
            return loss
        loss = opt.step(closure)
        l_ref = train_step(ref_model, ref, x, y)
        assert math.isclose(loss.item(), l_ref, rel_tol=1e-12)
    assert_params_close(model, ref_model, dtype)


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
    for x, y in batches(digits, dtype, steps=50):
        train_step(ref_model, ref, x, y)
        train_step(model, opt, x, y)
    assert_params_close(model, ref_model, dtype)


@pytest.mark.parametrize("name", NAMES)
def test_params_without_grads_are_skipped(digits, name):
    """A frozen layer never gets a grad; a second layer only every other step (its step
    count lags); both must behave as in torch, including the state they (don't) get."""
    dtype = torch.float64
    kw = DEFAULT_KW[name]
    ref_model, ref, model, opt = pair(name, kw, dtype)
    for m in (ref_model, model):
        m[0].bias.requires_grad_(False)
    for k, (x, y) in enumerate(batches(digits, dtype, steps=30)):
        for m, o in ((ref_model, ref), (model, opt)):
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            if k % 2:
                m[2].bias.grad = None
            o.step()
    assert_params_close(model, ref_model, dtype)
    if name != "Adagrad":  # torch's Adagrad creates all state at construction
        assert model[0].bias not in opt.state
    assert_state_close(opt.state_dict()["state"], ref.state_dict()["state"], dtype)


def test_add_param_group_midway(digits):
    dtype = torch.float64
    ref_model, _, model, _ = pair("Adam", dict(lr=1e-2), dtype)
    ref = torch.optim.Adam(ref_model[0].parameters(), lr=1e-2, foreach=False)
    opt = lt.Adam(model[0].parameters(), lr=1e-2)
    for k, (x, y) in enumerate(batches(digits, dtype, steps=20)):
        if k == 5:
            ref.add_param_group({"params": ref_model[2].parameters(), "lr": 5e-3})
            opt.add_param_group({"params": model[2].parameters(), "lr": 5e-3})
        train_step(ref_model, ref, x, y)
        train_step(model, opt, x, y)
    assert_params_close(model, ref_model, dtype)


def test_state_tensor_replaced_by_hand_is_used():
    """Assigning a new state tensor (not copy_) is seen: the cached plan is rebuilt."""
    p, q = _param(4), _param(4)
    a = lt.Adam([p], lr=0.1)
    b = torch.optim.Adam([q], lr=0.1, foreach=False)
    for o in (a, b):
        o.step()
        o.state[o.param_groups[0]["params"][0]]["exp_avg"] = torch.full((4,), 0.3)
        o.step()
    torch.testing.assert_close(p, q)
    torch.testing.assert_close(a.state[p]["exp_avg"], b.state[q]["exp_avg"])


def test_non_contiguous_grad_is_read_correctly():
    p = torch.nn.Parameter(torch.ones(3, 4))
    q = torch.nn.Parameter(torch.ones(3, 4))
    g = torch.arange(12.0).reshape(4, 3).t()
    assert not g.is_contiguous()
    p.grad, q.grad = g, g.contiguous()
    a, b = lt.SGD([p], lr=0.1, momentum=0.9), torch.optim.SGD([q], lr=0.1, momentum=0.9)
    for _ in range(3):
        a.step()
        b.step()
    torch.testing.assert_close(p, q)


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
    (lambda: torch.nn.Parameter(torch.ones(3, dtype=torch.float16)), TypeError, "float16"),
    (lambda: torch.nn.Parameter(torch.ones(4, 3).t()), ValueError, "contiguous"),
    (lambda: torch.nn.Parameter(torch.ones(3, device="meta")), ValueError, "CPU"),
], ids=["complex", "float16", "non-contiguous", "non-cpu"])
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
    b.data = b.data.half()
    b.grad = torch.ones(5, dtype=torch.half)
    _unchanged_after(opt, [a, b], opt.step, TypeError, "float16")
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


@pytest.mark.parametrize("name,flag", [("Adam", "capturable"), ("Adam", "differentiable"),
                                       ("AdamW", "capturable"), ("SGD", "differentiable"),
                                       ("Adagrad", "differentiable"),
                                       ("RMSprop", "capturable"), ("Adadelta", "capturable")])
def test_unsupported_modes_are_not_implemented(name, flag):
    with pytest.raises(NotImplementedError, match=flag):
        getattr(lt, name)([_param(3)], **{flag: True})


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "Adagrad"])
def test_foreach_and_fused_are_accepted(name):
    p, q = _param(3), _param(3)
    r = torch.nn.Parameter(p.detach().clone())
    r.grad = p.grad.clone()
    a = getattr(lt, name)([p], fused=True, **DEFAULT_KW[name])
    b = getattr(lt, name)([q], foreach=True, **DEFAULT_KW[name])
    ref = getattr(torch.optim, name)([r], foreach=False, **DEFAULT_KW[name])
    for o in (a, b, ref):
        o.step()
    assert a.param_groups[0]["fused"] is True
    torch.testing.assert_close(p, r)
    torch.testing.assert_close(q, r)


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


def test_numpy_reference_backend_agrees():
    """LRCORE_BACKEND=python runs the same optimizer through the numpy twin."""
    code = (
        "import torch, lrcore, lrcore.torch as lt\n"
        "assert lrcore.backend() == 'python'\n"
        "torch.manual_seed(0)\n"
        "p = torch.nn.Parameter(torch.randn(50, dtype=torch.float64)); q = p.detach().clone()"
        ".requires_grad_()\n"
        "a = lt.Adam([p], lr=0.1, amsgrad=True); b = torch.optim.Adam([q], lr=0.1, amsgrad=True,"
        " foreach=False)\n"
        "for k in range(10):\n"
        "    g = torch.randn(50, dtype=torch.float64); p.grad = g.clone(); q.grad = g.clone()\n"
        "    a.step(); b.step()\n"
        "torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12); print('ok')\n")
    import os
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, LRCORE_BACKEND="python"))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
