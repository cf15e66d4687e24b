"""lrcore schedules inside lrcore.torch optimizers, the way PyTorch users save and schedule
(issue 9 item 13), and one lrcore.torch optimizer stepped from two threads.

- `torch.save(opt.state_dict(), path)` then `torch.load(path)` under torch's default
  weights_only=True: schedules travel as plain data; a fresh optimizer loaded from the file
  continues bitwise like the one that never stopped.
- A torch.optim.lr_scheduler (StepLR) on an optimizer whose lr is a lrcore schedule is
  refused at the scheduler's construction with a message saying what to do; with a number
  lr it drives lrcore.torch as it drives torch.optim.
"""
import copy
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

import lrcore.torch as lt  # noqa: E402
from lrcore import schedules  # noqa: E402


def _model(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(37, generator=g, dtype=torch.float64)),
            torch.nn.Parameter(torch.randn(5, 3, generator=g, dtype=torch.float64))]


def _grads(params, k):
    g = torch.Generator().manual_seed(100 + k)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


def _bits(opt, params):
    out = [p.detach().numpy().tobytes() for p in params]
    for p in params:
        for k, v in sorted(opt.state[p].items()):
            out.append((k, v.numpy().tobytes() if isinstance(v, torch.Tensor) else v))
    return out


CASES = [
    ("SGD", lambda: dict(lr=schedules.Cosine(0.1, 20), momentum=0.9)),
    ("Adam", lambda: dict(lr=schedules.warmup_cosine(1e-2, 20, 5),
                          betas=(schedules.Linear(0.95, 0.85, 20), 0.999))),
    ("RMSprop", lambda: dict(lr=schedules.ReduceOnPlateau(1e-2, patience=0, factor=0.5))),
    ("Adagrad", lambda: dict(lr=schedules.StepDecay(0.1, 0.5, 3))),
]


@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_state_dict_with_schedules_loads_with_weights_only(tmp_path, name, kw):
    cls = getattr(lt, name)
    params = _model()
    opt = cls(params, **kw())
    for k in range(6):
        _grads(params, k)
        opt.step()
        for s in (opt.param_groups[0]["lr"],):
            if isinstance(s, schedules.ReduceOnPlateau):
                s.report(1.0 + (k % 2))          # some progress in the schedule's state
    path = tmp_path / "opt.pt"
    torch.save(opt.state_dict(), path)
    loaded = torch.load(path)                    # weights_only=True, torch's default
    assert loaded["param_groups"] == torch.load(path, weights_only=True)["param_groups"]
    assert isinstance(loaded["param_groups"][0]["lr"], dict)   # plain data
    # a fresh optimizer (other schedules at construction) continues exactly
    params2 = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = cls(params2, **dict(kw(), lr=0.5))
    opt2.load_state_dict(loaded)
    assert type(opt2.param_groups[0]["lr"]) is type(opt.param_groups[0]["lr"])
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for k in range(6, 12):
        for ps in (params, params2):
            _grads(ps, k)
        opt.step()
        opt2.step()
    assert _bits(opt, params) == _bits(opt2, params2)


def test_a_lambda_schedule_is_kept_from_the_live_optimizer_or_refused(tmp_path):
    lam = schedules.Lambda(lambda k: 0.1 / (k + 1))
    params = _model()
    opt = lt.SGD(params, lr=lam)
    _grads(params, 0)
    opt.step()
    sd = opt.state_dict()
    torch.save(sd, tmp_path / "opt.pt")
    loaded = torch.load(tmp_path / "opt.pt")
    opt.load_state_dict(loaded)                  # the live Lambda stays
    assert opt.param_groups[0]["lr"] is lam
    other = lt.SGD(_model(), lr=0.1)
    before = other.state_dict()
    with pytest.raises(ValueError, match=r"param_groups\[0\]: lr was Lambda.*cannot be "
                                         r"restored"):
        other.load_state_dict(loaded)
    assert other.state_dict() == before and other.param_groups[0]["lr"] == 0.1


def test_a_refused_load_leaves_the_live_schedules_alone():
    # the live schedules (a caller's ReduceOnPlateau, a beta1 schedule) take the saved state
    # only when the whole load passes: a load torch (or lrcore) refuses changes nothing
    params = _model()
    lr = schedules.ReduceOnPlateau(0.1, patience=0)
    b1 = schedules.Linear(0.95, 0.85, 20)
    opt = lt.Adam(params, lr=lr, betas=(b1, 0.999))
    _grads(params, 0)
    opt.step()
    saved = opt.state_dict()
    for m in (1.0, 2.0, 3.0):
        lr.report(m)
    live = lr.state_dict()
    assert live != saved["param_groups"][0]["lr"]["state"]
    too_many = copy.deepcopy(saved)
    too_many["param_groups"][0]["params"] = [0, 1, 2]
    with pytest.raises(ValueError):
        opt.load_state_dict(too_many)
    assert lr.state_dict() == live and opt.param_groups[0]["lr"] is lr
    assert opt.param_groups[0]["betas"][0] is b1
    opt.load_state_dict(saved)                   # a load that passes: the live objects stay
    assert opt.param_groups[0]["lr"] is lr and opt.param_groups[0]["betas"][0] is b1
    assert lr.state_dict() == saved["param_groups"][0]["lr"]["state"]


def test_a_refused_lowp_load_leaves_the_live_schedule_alone():
    p = torch.nn.Parameter(torch.randn(8).to(torch.bfloat16))
    lr = schedules.ReduceOnPlateau(0.1, patience=0)
    opt = lt.Adam([p], lr=lr)
    p.grad = torch.ones(8, dtype=torch.bfloat16)
    opt.step()
    saved = opt.state_dict()
    saved["state"][0]["exp_avg"] = torch.zeros(8)      # float32 where bfloat16 is kept
    for m in (1.0, 2.0, 3.0):
        lr.report(m)
    live = lr.state_dict()
    with pytest.raises(ValueError, match="exp_avg"):
        opt.load_state_dict(saved)
    assert lr.state_dict() == live and opt.param_groups[0]["lr"] is lr


@pytest.mark.parametrize("make", [
    lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10),
    lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda k: 0.9 ** k),
], ids=["StepLR", "CosineAnnealingLR", "LambdaLR"])
def test_a_torch_scheduler_on_a_schedule_lr_is_refused_at_construction(make):
    params = _model()
    sched = schedules.Cosine(0.1, 20)
    opt = lt.SGD(params, lr=sched, momentum=0.9)
    with pytest.raises(TypeError, match=r"lr is the lrcore schedule Cosine\(initial=0.1, "
                                        r"steps=20\); a torch.optim.lr_scheduler cannot also "
                                        r"drive it .* Give lr as a number"):
        make(opt)
    assert "initial_lr" not in opt.param_groups[0] and opt.param_groups[0]["lr"] is sched
    _grads(params, 0)
    opt.step()                                   # the optimizer is untouched and works


def test_steplr_with_a_number_lr_drives_lrcore_torch_like_torch():
    """StepLR sets the same lr on lrcore.torch as on torch.optim, and lrcore.torch steps with
    it: bitwise the same params as the same optimizer given those lrs by hand."""
    mine, by_hand, ref = _model(), _model(), _model()
    opt = lt.SGD(mine, lr=0.1, momentum=0.9)
    hand = lt.SGD(by_hand, lr=0.1, momentum=0.9)
    ref_opt = torch.optim.SGD(ref, lr=0.1, momentum=0.9, foreach=False)
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5)
              for o in (opt, ref_opt)]
    for k in range(7):
        for ps in (mine, by_hand, ref):
            _grads(ps, k)
        hand.param_groups[0]["lr"] = 0.1 * 0.5 ** (k // 2)
        for o in (opt, hand, ref_opt):
            o.step()
        for s in scheds:
            s.step()
        assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"] == \
            0.1 * 0.5 ** ((k + 1) // 2)
    assert _bits(opt, mine) == _bits(hand, by_hand)
    assert not any(torch.equal(a, b) for a, b in zip(mine, _model()))   # it trained


def test_one_lrcore_torch_optimizer_from_two_threads_is_serialised():
    n = 20
    big = [torch.nn.Parameter(torch.linspace(-1, 1, (1 << 17) + 3, dtype=torch.float32))]
    ref = [torch.nn.Parameter(big[0].detach().clone())]
    g = torch.sin(torch.arange(big[0].numel(), dtype=torch.float32))
    big[0].grad, ref[0].grad = g.clone(), g.clone()
    opt = lt.Adam(big, lr=1e-2, amsgrad=True, num_threads=2)
    ref_opt = lt.Adam(ref, lr=1e-2, amsgrad=True, num_threads=2)
    barrier = threading.Barrier(2)
    errors = []

    def work():
        try:
            barrier.wait()
            for _ in range(n):
                opt.step()
        except Exception as exc:   # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for _ in range(2 * n):
        ref_opt.step()
    assert _bits(opt, big) == _bits(ref_opt, ref)
    assert float(opt.state[big[0]]["step"]) == 2 * n
    np.testing.assert_array_equal(big[0].detach().numpy(), ref[0].detach().numpy())
