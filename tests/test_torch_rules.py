"""lrcore.torch drop-ins for the rules added with the table: Adamax, NAdam, RAdam (torch.optim
has them) and Lion (it does not).

Their trajectories against torch.optim, within the derived rounding budget, are in
tests/test_torch_optim.py (its CASES include every drop-in that exists). Here: Lion against
the numpy twin (lrcore.reference.lion, bitwise: the same operations in the same order),
NAdam's mu_product state bitwise torch's, the torch.optim interface (groups, state names,
state-dict interchange both ways).
"""
import copy
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

import lrcore.torch as lt  # noqa: E402
from lrcore import reference, rules  # noqa: E402

DTYPES = (torch.float32, torch.float64)


def _params(dtype, seed=0, shapes=((37,), (5, 3), (1,), (1003,))):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]


def _set_grads(params, k, scale=1.0):
    g = torch.Generator().manual_seed(1000 + k)
    for p in params:
        p.grad = scale * torch.randn(p.shape, generator=g, dtype=p.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lion_equals_the_numpy_twin_bitwise(dtype):
    """Two groups with different hyperparameters (one maximizing, one with weight decay):
    every param and exp_avg after every step bitwise lrcore.reference.lion on the same grads
    (gradients of both signs and zeros, so sign() sees -1, 0 and 1)."""
    params = _params(dtype)
    twin = [p.detach().numpy().copy() for p in params]
    twin_m = [np.zeros_like(t) for t in twin]
    groups = [dict(lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1, maximize=False),
              dict(lr=1e-2, betas=(0.5, 0.9), weight_decay=0.0, maximize=True)]
    opt = lt.Lion([{"params": params[:2], **groups[0]}, {"params": params[2:], **groups[1]}])
    assert isinstance(opt, torch.optim.Optimizer)
    for k in range(1, 13):
        _set_grads(params, k)
        for p in params[::2]:
            p.grad.view(-1)[::3] = 0.0
        opt.step()
        for i, p in enumerate(params):
            hp = groups[0 if i < 2 else 1]
            reference.lion(twin[i], p.grad.numpy(), twin_m[i], lr=hp["lr"], step=k,
                           beta1=hp["betas"][0], beta2=hp["betas"][1],
                           weight_decay=hp["weight_decay"], maximize=hp["maximize"])
            assert p.detach().numpy().tobytes() == twin[i].tobytes(), f"step {k} param {i}"
            st = opt.state[p]
            assert st["exp_avg"].numpy().tobytes() == twin_m[i].tobytes()
            assert float(st["step"]) == k
    assert rules.RULES["lion"].torch_class is None


def test_lion_state_dict_survives_torch_save_and_load(tmp_path):
    params = _params(torch.float32, 3)
    opt = lt.Lion(params, lr=1e-3, weight_decay=0.01)
    for k in range(3):
        _set_grads(params, k)
        opt.step()
    torch.save(opt.state_dict(), tmp_path / "lion.pt")
    copy = [torch.nn.Parameter(p.detach().clone()) for p in params]
    other = lt.Lion(copy, lr=0.5)
    other.load_state_dict(torch.load(tmp_path / "lion.pt"))
    assert other.param_groups[0]["lr"] == 1e-3
    for k in range(3, 6):
        for ps in (params, copy):
            _set_grads(ps, k)
        opt.step()
        other.step()
    for a, b in zip(params, copy):
        assert a.detach().numpy().tobytes() == b.detach().numpy().tobytes()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("default_dtype", [torch.float32, torch.float64])
def test_nadam_mu_product_is_torchs_bitwise(dtype, default_dtype):
    """torch keeps mu_product as a 0-dim tensor of the default scalar dtype, multiplied by
    each step's mu in that dtype; lrcore.torch.NAdam keeps the same tensor, bitwise."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(default_dtype)
    try:
        mine, ref = _params(dtype, 5), _params(dtype, 5)
        kw = dict(lr=2e-3, betas=(0.8, 0.99), momentum_decay=0.01)
        opt, ref_opt = lt.NAdam(mine, **kw), torch.optim.NAdam(ref, foreach=False, **kw)
        for k in range(20):
            for ps in (mine, ref):
                _set_grads(ps, k)
            opt.step()
            ref_opt.step()
            for a, b in zip(mine, ref):
                ma, mb = opt.state[a]["mu_product"], ref_opt.state[b]["mu_product"]
                assert ma.dtype == mb.dtype and ma.item() == mb.item(), f"step {k}"
    finally:
        torch.set_default_dtype(saved)


@pytest.mark.parametrize("name", ["Adamax", "NAdam", "RAdam"])
def test_drop_ins_are_torch_optim_subclasses_with_its_groups_and_state(name):
    mine, ref = _params(torch.float64, 7), _params(torch.float64, 7)
    opt = getattr(lt, name)(mine, lr=1e-3)
    ref_opt = getattr(torch.optim, name)(ref, lr=1e-3, foreach=False)
    assert isinstance(opt, getattr(torch.optim, name))
    assert opt.param_groups[0].keys() == ref_opt.param_groups[0].keys()
    for k in range(3):
        for ps in (mine, ref):
            _set_grads(ps, k)
        opt.step()
        ref_opt.step()
    for a, b in zip(mine, ref):
        assert opt.state[a].keys() == ref_opt.state[b].keys()
        for key in opt.state[a]:
            assert opt.state[a][key].dtype == ref_opt.state[b][key].dtype
    # torch's state dict loads into lrcore.torch and back; both continue
    # (deep copies: torch's load keeps the loaded step tensors, shared otherwise)
    opt.load_state_dict(copy.deepcopy(ref_opt.state_dict()))
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for k in range(3, 5):
        for ps in (mine, ref):
            _set_grads(ps, k)
        opt.step()
        ref_opt.step()
    for a, b in zip(mine, ref):
        assert float(opt.state[a]["step"]) == float(ref_opt.state[b]["step"]) == 5


@pytest.mark.parametrize("name", ["Adamax", "NAdam", "RAdam", "Lion"])
def test_bad_hyperparameters_use_the_tables_ranges(name):
    p = [torch.nn.Parameter(torch.ones(3))]
    cls = getattr(lt, name)
    rng = rules.RULES[name.lower()].hyper("beta1").range
    text = re.escape(f"{name}: beta1 must be {rng.text}, got 1.5")
    with pytest.raises(ValueError, match=text):
        cls(p, betas=(1.5, 0.9))
    with pytest.raises(ValueError, match=rf"{name}: lr must be a finite number >= 0"):
        cls(p, lr=-1.0)
