"""lrcore.torch inside torch.distributed (gloo, two processes): DDP with an lrcore optimizer,
and torch's ZeroRedundancyOptimizer with optimizer_class=lrcore.torch.Adam.

Each spawned process also steps a single-process reference on the average of the two ranks'
gradients ((g_0 + g_1) / 2: with two ranks gloo's sum and the halving are exact whatever the
order), so "equal" below is bitwise. Skips when torch or torch.distributed's gloo is absent.
"""
import os
import socket
import sys

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

WORLD = 2
STEPS = 8


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.Tanh(),
                               torch.nn.Linear(32, 5)).to(dtype)


def _batch(step, rank):
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(16, 20, generator=g), torch.randint(0, 5, (16,), generator=g)


def _grads(model, step, rank):
    model.zero_grad(set_to_none=True)
    x, y = _batch(step, rank)
    torch.nn.functional.cross_entropy(model(x.to(_dtype(model))), y).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def _reference_step(ref, ref_opt, step):
    per_rank = [_grads(ref, step, r) for r in range(WORLD)]
    for k, p in enumerate(ref.parameters()):
        p.grad = (per_rank[0][k] + per_rank[1][k]) / WORLD
    ref_opt.step()


def _dtype(model):
    return next(model.parameters()).dtype


def _same(a, b):
    return torch.equal(a, b) and a.dtype == b.dtype


def _replicas_identical(params):
    for p in params:
        gathered = [torch.empty_like(p) for _ in range(WORLD)]
        dist.all_gather(gathered, p.detach())
        assert all(_same(gathered[0], t) for t in gathered[1:]), "replicas differ"


def _worker(rank, port, kinds):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        for kind in kinds:
            _run(rank, kind)
    finally:
        dist.destroy_process_group()
    # Every check passed (a failure raised above, which spawn reports). End the process
    # here: torch 2.13's gloo sometimes aborts in the interpreter's teardown ("terminate
    # called without an active exception", SIGABRT, after every check had passed; 4 of 20
    # runs of this test at lrcore 7c8fc89 on this machine), which is not what is tested.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _run(rank, kind):
    import lrcore.torch as lt
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.distributed.optim import ZeroRedundancyOptimizer
    # bf16-sr: bfloat16 params, grads and state with stochastic rounding (lrcore.torch keys
    # the stream by each param's place among its optimizer's params: every DDP rank holds
    # them all, so it draws one process's bits); zero-bf16: ZeRO shards whole params, each
    # rank's optimizer numbering only its own, so there it is nearest rounding
    dtype = torch.bfloat16 if kind in ("bf16-sr", "zero-bf16") else torch.float32
    model, ref = _model(dtype), _model(dtype)
    ddp = DDP(model)
    cls, kwargs = {"sgd": (lt.SGD, dict(lr=0.05, momentum=0.9)),
                   "adam": (lt.Adam, dict(lr=1e-2)),
                   "zero": (lt.Adam, dict(lr=1e-2)),
                   "bf16-sr": (lt.Adam, dict(lr=1e-2, rounding="stochastic", seed=7)),
                   "zero-bf16": (lt.Adam, dict(lr=1e-2, amsgrad=True))}[kind]
    if kind.startswith("zero"):
        opt = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=cls, **kwargs)
    else:
        opt = cls(ddp.parameters(), **kwargs)
    ref_opt = cls(ref.parameters(), **kwargs)
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        x, y = _batch(step, rank)
        torch.nn.functional.cross_entropy(ddp(x.to(dtype)), y).backward()
        opt.step()
        _reference_step(ref, ref_opt, step)
    _replicas_identical(list(model.parameters()))
    for k, (p, q) in enumerate(zip(model.parameters(), ref.parameters())):
        assert _same(p.detach(), q.detach()), f"{kind}: param {k} differs from one process"
    for k, st in enumerate(ref_opt.state_dict()["state"].values()):
        for name, t in st.items():
            assert name == "step" or t.dtype == dtype, f"{kind}: state {k}/{name} is {t.dtype}"
    if kind == "zero":
        # every rank holds only its params' state; consolidate on rank 0, load it into a
        # single-process lrcore.torch.Adam and continue in step with the reference
        held = len(opt.optim.state)
        assert 0 < held < len(list(model.parameters())), \
            f"rank {rank} holds state for {held} params: not sharded"
        opt.consolidate_state_dict(to=0)
        if rank == 0:
            sd = opt.state_dict()
            solo_model = _model()
            with torch.no_grad():
                for p, q in zip(solo_model.parameters(), model.parameters()):
                    p.copy_(q)
            solo = lt.Adam(solo_model.parameters(), **kwargs)
            solo.load_state_dict(sd)
            want = ref_opt.state_dict()
            for k in want["state"]:
                for name, t in want["state"][k].items():
                    assert _same(solo.state_dict()["state"][k][name], t), \
                        f"consolidated state {k}/{name} differs"
            step = STEPS
            solo.zero_grad(set_to_none=True)
            per_rank = [_grads(solo_model, step, r) for r in range(WORLD)]
            for k, p in enumerate(solo_model.parameters()):
                p.grad = (per_rank[0][k] + per_rank[1][k]) / WORLD
            solo.step()
            _reference_step(ref, ref_opt, step)
            for p, q in zip(solo_model.parameters(), ref.parameters()):
                assert _same(p.detach(), q.detach()), "continued single-process step differs"
    dist.barrier()


def test_lrcore_torch_optimizers_under_ddp_and_zero():
    """One spawn (two processes) runs DDP + lrcore.torch.SGD (momentum), DDP +
    lrcore.torch.Adam, ZeroRedundancyOptimizer(optimizer_class=lrcore.torch.Adam), DDP +
    lrcore.torch.Adam on bfloat16 with stochastic rounding, and ZeRO + lrcore.torch.Adam
    (AMSGrad) on bfloat16 (bfloat16 state)."""
    import warnings

    import torch.multiprocessing as mp
    kinds = ("sgd", "adam", "zero", "bf16-sr", "zero-bf16")
    try:
        mp.spawn(_worker, args=(_free_port(), kinds), nprocs=WORLD, join=True)
    except mp.ProcessExitedException as e:
        # A worker killed by a signal, not one whose check failed (that exits with an
        # exception and code 1): the teardown abort _worker now skips was such a kill;
        # should another appear, the whole spawn runs once more on a new port, and a
        # second failure of any kind fails the test.
        if e.signal_name is None:
            raise
        warnings.warn(f"torch.distributed spawn: {e}; running it again")
        mp.spawn(_worker, args=(_free_port(), kinds), nprocs=WORLD, join=True)
