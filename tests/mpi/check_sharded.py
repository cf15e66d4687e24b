"""Run under mpiexec by tests/test_distributed.py: ShardedOptimizer against one process.

Usage: mpiexec -n W python -m mpi4py tests/mpi/check_sharded.py MODE DIR
MODE: rules (every optimizer class x float32/float64 x the table's option variants, 20 steps,
clipping, skipping, a schedule: params bitwise equal to a single-process optimizer on the
averaged grads, state dicts equal, memory per rank), rules-defaults (the same, default options
only), lowp (every class with bfloat16 params, grads and state and stochastic rounding; the
other half-precision layouts; 8-bit state for every class of lrcore.quantization.INT8_RULES,
float32 and bfloat16 params: params, grads' average, state dicts and state bytes bitwise
against one process; a state dict of one process loaded and continued), lowp-some (the same
for Adam, AdamW and SGD only), save (10 steps with average=False, then save to DIR; also a bfloat16
8-bit stochastic-rounding Adam to DIR/lowp), load (load DIR's checkpoints on this world size,
continue to step 20, compare with uninterrupted single-process runs), faults, mismatch
(also options that must agree and options that may differ), refusals (grads sharing memory
with params, read-only params, state dicts and checkpoints that differ between ranks or hold a
bad array: the same error on every rank, nothing changed, then steps equal to one process;
DIR: a directory every rank sees), set-mismatch (set() called differently on one rank: the
same ValueError on every rank at the next step, nothing changed). Prints one line per check from rank 0;
exits non-zero (MPI_Abort through mpi4py) on the first mismatch.
"""
import inspect
import os
import sys

import ml_dtypes
import numpy as np
from mpi4py import MPI

import lrcore
import lrcore.optim
from lrcore import schedules
from lrcore.distributed import DistributedError, ShardedOptimizer, average_grads, load, save

comm = MPI.COMM_WORLD
RANK, W = comm.Get_rank(), comm.Get_size()
STEPS = 20
BLOCK = 1 << 14
BF16 = np.dtype(ml_dtypes.bfloat16)


def say(*a):
    if RANK == 0:
        print(*a, flush=True)


def rules():
    """Every optimizer class lrcore.optim exports."""
    return [getattr(lrcore.optim, n) for n in lrcore.optim.__all__
            if isinstance(getattr(lrcore.optim, n), type)
            and issubclass(getattr(lrcore.optim, n), lrcore.optim.Optimizer)
            and getattr(lrcore.optim, n) is not lrcore.optim.Optimizer]


def variants(cls):
    """Default options, and the options that select other loops or more state: from the
    table (lrcore.rules: each rule's hyperparameters and options with `variants`), the
    non-default value of each that the class's constructor takes."""
    sig = inspect.signature(cls.__init__).parameters
    rule = getattr(cls, "rule", None)
    extra = {}
    fields = list(getattr(rule, "hypers", ())) + list(getattr(rule, "options", ()))
    for f in fields:
        values = [v for v in getattr(f, "variants", ()) if v != f.default]
        if f.name in sig and f.name not in ("lr", "betas") and values:
            extra[f.name] = values[-1]
    if not fields:   # no table: the options known to change the loops
        extra = {k: v for k, v in (("momentum", 0.9), ("amsgrad", True), ("centered", True))
                 if k in sig}
    out = [{}]
    if extra.get("nesterov") and extra.get("dampening", 0) != 0:   # torch forbids the pair
        out.append({k: v for k, v in extra.items() if k != "nesterov"})
        extra = {k: v for k, v in extra.items() if k != "dampening"}
    if extra:
        out.append(extra)
    return out


def make_params(dtype, seed=0, mixed=False):
    """Two groups, sizes around the 2**14 block grid and SIMD widths."""
    rng = np.random.default_rng(seed)
    other = np.float64 if mixed else dtype
    g0 = [rng.standard_normal(s).astype(dt) for s, dt in
          (((2 * BLOCK + 5,), dtype), ((3,), dtype), ((BLOCK,), other), ((17, 1), dtype))]
    g1 = [rng.standard_normal(s).astype(dtype) for s in ((BLOCK + 1, 1), (8,))]
    return g0, g1


_CACHE = {}


def grads_for(params, step, rank):
    """Rank `rank`'s grads at `step` (cached: every run of a layout reuses them)."""
    key = (tuple((p.shape, p.dtype.str) for p in params), step, rank)
    if key not in _CACHE:
        _CACHE[key] = _make_grads(params, step, rank)
    return _CACHE[key]


def _make_grads(params, step, rank):
    rng = np.random.default_rng(1000 * step + rank + 7)
    out = [(0.3 * rng.standard_normal(p.shape)).astype(p.dtype) for p in params]
    if step == 7 and rank == W - 1:
        out[0].reshape(-1)[5] = np.nan
    return out


def averaged(params, step):
    key = ("avg", tuple((p.shape, p.dtype.str) for p in params), step)
    if key not in _CACHE:
        _CACHE[key] = _averaged(params, step)
    return _CACHE[key]


def _averaged(params, step):
    per_rank = [grads_for(params, step, r) for r in range(W)]
    out = []
    for i, p in enumerate(params):
        acc = per_rank[0][i].copy()
        for r in range(1, W):
            acc = acc + per_rank[r][i]
        out.append(acc / p.dtype.type(W))
    return out


def step_args(t):
    clip = {0: 1.0, 1: 1e4, 2: None}[t % 3]
    return dict(clip_norm=clip, skip_nonfinite=(t % 2 == 1) or t == 7)


def bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


def check(cond, what):
    if not cond:
        print(f"FAIL rank {RANK}/{W}: {what}", flush=True)
        comm.Abort(1)


def same_state_dict(a, b, where):
    check(type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}")
    if isinstance(a, dict):
        check(set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}")
        for k in a:
            same_state_dict(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        check(len(a) == len(b), f"{where}: lengths {len(a)} != {len(b)}")
        for k, (x, y) in enumerate(zip(a, b)):
            same_state_dict(x, y, f"{where}[{k}]")
    elif isinstance(a, np.ndarray):
        check(a.dtype == b.dtype and a.shape == b.shape and np.array_equal(bits(a), bits(b)),
              f"{where}: arrays differ")
    else:
        check(a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}")


def run_rule(cls, dtype, options, mixed=False):
    g0, g1 = make_params(dtype, mixed=mixed)
    r0, r1 = [p.copy() for p in g0], [p.copy() for p in g1]
    lr = schedules.Cosine(0.01, STEPS)
    spec = [{"params": g0}, {"params": g1, "lr": 0.005}]
    # float32: several buckets per group; float64: one bucket per group, the collectives
    # in flight driven from a helper thread during the kernels
    f64 = np.dtype(dtype) == np.float64
    opt = ShardedOptimizer(spec, cls, lr=lr, bucket_elements=1 << 22 if f64 else BLOCK + 3000,
                           overlap=f64, **options)
    ref = cls([{"params": r0}, {"params": r1, "lr": 0.005}], lr=lr, **options)
    params, refs = g0 + g1, r0 + r1
    name = f"{cls.__name__} {np.dtype(dtype).name}{' mixed' if mixed else ''} {options}"
    for t in range(STEPS):
        applied = opt.step(grads_for(params, t, RANK), **step_args(t))
        want = ref.step(averaged(refs, t), **step_args(t))
        check(applied == want, f"{name} step {t}: applied {applied}, single process {want}")
        check((opt.last_grad_norm == ref.last_grad_norm)
              or (opt.last_grad_norm != opt.last_grad_norm and ref.last_grad_norm != ref.last_grad_norm),
              f"{name} step {t}: grad norm {opt.last_grad_norm!r} != {ref.last_grad_norm!r}")
        for i, (p, q) in enumerate(zip(params, refs)):
            check(np.array_equal(bits(p), bits(q)), f"{name} step {t}: params[{i}] differ "
                  f"(max |diff| {np.nanmax(np.abs(p.astype(float) - q)):.3g})")
    check(opt.step_count == ref.step_count, f"{name}: step count")
    for t in (0, STEPS - 1):   # the caller's grads are never written
        for a, b in zip(grads_for(params, t, RANK), _make_grads(params, t, RANK)):
            check(np.array_equal(bits(a), bits(b)), f"{name}: step() wrote the grads")
    sd = opt.consolidated_state_dict(root=0)
    if RANK == 0:
        same_state_dict(sd, ref.state_dict(), f"{name} state_dict")
    else:
        check(sd is None, "consolidated_state_dict off the root must be None")
    # memory: 1/W of the single-process state plus at most one block per (group, dtype) range
    single = sum(a.nbytes for st in ref.state_dict()["state"] for a in st.values())
    mine = opt.state_nbytes()
    nbuf = max((len(st) for st in ref.state_dict()["state"]), default=0)
    ranges = len(opt.shard_elements())
    bound = single / W + ranges * nbuf * BLOCK * np.dtype(dtype).itemsize
    check(mine <= bound, f"{name}: {mine} bytes of state on rank {RANK}, bound {bound:.0f}")
    totals = comm.allreduce(mine)
    check(totals == single, f"{name}: the ranks hold {totals} bytes of state, one process {single}")
    return mine, single


def mode_rules(defaults_only=False):
    count = 0
    for cls in rules():
        for dtype in (np.float32, np.float64):
            for options in variants(cls)[:1] if defaults_only else variants(cls):
                mine, single = run_rule(cls, dtype, options)
                count += 1
                say(f"ok {cls.__name__} {np.dtype(dtype).name} {options}: {STEPS} steps bitwise; "
                    f"state {mine} of {single} bytes on rank 0")
    run_rule(lrcore.Adam, np.float32, {}, mixed=True)
    say(f"ok Adam float32+float64 in one group; {count + 1} runs bitwise on {W} rank(s)")


# -- half precision and 8-bit state ------------------------------------------------------

LOWP_STEPS = 12


def lowp_params(dtype, seed=0):
    """Two groups; sizes around the 2**14 grid, the 256-element quantization blocks and the
    4096-element threshold of 8-bit state: 2*BLOCK+5 and BLOCK+1 leave tails of 5 and 1
    elements past a grid point (so that point may not be a cut), BLOCK+4000 a tail under
    4096, 5000 is quantized but under one grid block, 3, 17 and 8 stay float32."""
    rng = np.random.default_rng(seed)
    g0 = [rng.standard_normal(s).astype(np.float32).astype(dtype) for s in
          ((2 * BLOCK + 5,), (3,), (BLOCK + 4000,), (17, 1))]
    g1 = [rng.standard_normal(s).astype(np.float32).astype(dtype) for s in
          ((BLOCK + 1, 1), (5000,), (8,))]
    return g0, g1


def lowp_grads(params, gdtype, step, rank):
    key = ("lowp", tuple((p.shape, p.dtype.str) for p in params), np.dtype(gdtype).name,
           step, rank)
    if key not in _CACHE:
        rng = np.random.default_rng(1000 * step + rank + 11)
        out = [(0.3 * rng.standard_normal(p.shape)).astype(np.float32).astype(gdtype)
               for p in params]
        if step == 7 and rank == W - 1:
            out[0].reshape(-1)[5] = np.nan
        _CACHE[key] = out
    return _CACHE[key]


def lowp_average(params, gdtype, step):
    """The average of every rank's grads, computed here independently of lrcore: float32
    sum in rank order, / W, one rounding to nearest even in the grads' dtype (ml_dtypes'
    and numpy's casts); checked equal to lrcore.distributed.average_grads."""
    key = ("lowp-avg", tuple((p.shape, p.dtype.str) for p in params), np.dtype(gdtype).name,
           step)
    if key not in _CACHE:
        per_rank = [lowp_grads(params, gdtype, step, r) for r in range(W)]
        out = []
        for i in range(len(params)):
            acc = per_rank[0][i].astype(np.float32)
            for r in range(1, W):
                acc = acc + per_rank[r][i].astype(np.float32)
            out.append((acc / np.float32(W)).astype(gdtype))
        mine = average_grads(per_rank)
        for i, (a, b) in enumerate(zip(out, mine)):
            check(a.dtype == b.dtype and np.array_equal(bits(a), bits(b)),
                  f"average_grads differs from the float32 sum rounded once (grads[{i}])")
        _CACHE[key] = out
    return _CACHE[key]


def run_lowp(cls, pdtype, gdtype, options):
    g0, g1 = lowp_params(pdtype)
    r0, r1 = [p.copy() for p in g0], [p.copy() for p in g1]
    lr = schedules.Cosine(0.01, LOWP_STEPS)
    # bfloat16 Adam (8-bit and not): the collectives in flight driven from a helper thread
    overlap = cls is lrcore.Adam and np.dtype(pdtype) == BF16
    opt = ShardedOptimizer([{"params": g0}, {"params": g1, "lr": 0.005}], cls, lr=lr,
                           bucket_elements=BLOCK + 3000, overlap=overlap, **options)
    ref = cls([{"params": r0}, {"params": r1, "lr": 0.005}], lr=lr, **options)
    params, refs = g0 + g1, r0 + r1
    name = (f"{cls.__name__} param {np.dtype(pdtype).name} grad {np.dtype(gdtype).name} "
            f"{options}")
    for t in range(LOWP_STEPS):
        applied = opt.step(lowp_grads(params, gdtype, t, RANK), **step_args(t))
        want = ref.step(lowp_average(refs, gdtype, t), **step_args(t))
        check(applied == want, f"{name} step {t}: applied {applied}, single process {want}")
        check((opt.last_grad_norm == ref.last_grad_norm)
              or (opt.last_grad_norm != opt.last_grad_norm and ref.last_grad_norm != ref.last_grad_norm),
              f"{name} step {t}: grad norm {opt.last_grad_norm!r} != {ref.last_grad_norm!r}")
        for i, (p, q) in enumerate(zip(params, refs)):
            check(p.dtype == q.dtype and np.array_equal(bits(p), bits(q)),
                  f"{name} step {t}: params[{i}] differ in "
                  f"{int((bits(p).view(np.uint16 if p.itemsize == 2 else np.uint32) != bits(q).view(np.uint16 if q.itemsize == 2 else np.uint32)).sum())} elements")
    sd = opt.consolidated_state_dict(root=W - 1)
    if RANK == W - 1:
        same_state_dict(sd, ref.state_dict(), f"{name} state_dict")
    mine = opt.state_nbytes()
    totals = comm.allreduce(mine)
    check(totals == ref.state_nbytes(), f"{name}: the ranks hold {totals} bytes of state, one "
          f"process {ref.state_nbytes()}")
    # one process's state dict into a sharded optimizer cut otherwise: two more steps alike
    h0, h1 = [p.copy() for p in r0], [p.copy() for p in r1]
    opt2 = ShardedOptimizer([{"params": h0}, {"params": h1, "lr": 0.005}], cls, lr=lr,
                            bucket_elements=2 * BLOCK, **options)
    opt2.load_state_dict(ref.state_dict())
    for t in range(LOWP_STEPS, LOWP_STEPS + 2):
        opt2.step(lowp_grads(h0 + h1, gdtype, t, RANK), **step_args(t))
        ref.step(lowp_average(refs, gdtype, t), **step_args(t))
        for i, (p, q) in enumerate(zip(h0 + h1, refs)):
            check(np.array_equal(bits(p), bits(q)), f"{name} loaded, step {t}: params[{i}] differ")
    return mine, totals


def lowp_cases():
    """(class, param dtype, grad dtype, options) of the lowp mode."""
    extra = {"SGD": {"momentum": 0.9}, "RMSprop": {"momentum": 0.9}}
    sr = {"rounding": "stochastic", "seed": 2 ** 64 - 7}
    out = []
    for cls in rules():       # everything bfloat16, stochastic rounding
        out.append((cls, BF16, BF16, dict(extra.get(cls.__name__, {}), **sr)))
    out += [(lrcore.Adam, BF16, BF16, dict(sr, state_dtype="float32")),
            (lrcore.RMSprop, BF16, BF16, dict(sr, state_dtype="float32", momentum=0.9)),
            (lrcore.Adam, np.float16, np.float16, {"amsgrad": True}),
            (lrcore.SGD, np.float16, np.float16, dict(sr, momentum=0.9, nesterov=True)),
            (lrcore.AdamW, np.float32, BF16, {}),
            (lrcore.SGD, np.float32, np.float16, {"momentum": 0.9})]
    int8 = lrcore.quantization.INT8_RULES
    for cls in rules():       # 8-bit state, float32 params
        if cls.rule.name in int8:
            out.append((cls, np.float32, np.float32,
                        dict(extra.get(cls.__name__, {}), state_dtype="int8")))
    out += [(lrcore.Adam, BF16, BF16, dict(sr, state_dtype="int8", amsgrad=True)),
            (lrcore.Lion, BF16, BF16, dict(sr, state_dtype="int8"))]
    return out


def mode_lowp(some=False):
    cases = lowp_cases()
    if some:   # Adam, AdamW and SGD in every layout of lowp_cases (for 4 ranks on 2 cores)
        cases = [c for c in cases if c[0] in (lrcore.Adam, lrcore.AdamW, lrcore.SGD)]
    for cls, pdt, gdt, options in cases:
        mine, single = run_lowp(cls, pdt, gdt, options)
        say(f"ok {cls.__name__} param {np.dtype(pdt).name} grad {np.dtype(gdt).name} "
            f"{options}: {LOWP_STEPS} steps bitwise; state {mine} of {single} bytes on rank 0")
    say(f"ok {len(cases)} half-precision / 8-bit runs bitwise on {W} rank(s)")


def continued_run(stop, path=None):
    """Single process: STEPS steps of Adam (amsgrad, a schedule) with the full grads."""
    g0, g1 = make_params(np.float32, seed=3)
    params = g0 + g1
    lr = schedules.Cosine(0.01, STEPS)
    ref = lrcore.Adam([{"params": g0}, {"params": g1, "lr": 0.005}], lr=lr, amsgrad=True)
    for t in range(stop):
        ref.step(averaged_full(params, t), **step_args(t))
    return ref, params


def averaged_full(params, t):
    rng = np.random.default_rng(50 + t)
    return [(0.3 * rng.standard_normal(p.shape)).astype(p.dtype) for p in params]


def mode_save(directory):
    g0, g1 = make_params(np.float32, seed=3)
    params = g0 + g1
    opt = ShardedOptimizer([{"params": g0}, {"params": g1, "lr": 0.005}], lrcore.Adam,
                           lr=schedules.Cosine(0.01, STEPS), amsgrad=True, average=False,
                           bucket_elements=BLOCK + 3000)
    for t in range(STEPS // 2):
        opt.step(averaged_full(params, t), **step_args(t))
    path = os.path.join(directory, "ckpt.lrc")
    save(path, opt, meta={"saved_by": W})
    save(path, opt, meta={"saved_by": W})   # a second save replaces the first's rank files
    comm.Barrier()
    files = sorted(f for f in os.listdir(directory) if f != "lowp")
    check(len(files) == W + 1, f"after two saves the directory holds {files}")
    say(f"ok saved step {opt.step_count} with {W} rank(s): {files}")
    lowp_dir = os.path.join(directory, "lowp")
    if RANK == 0:
        os.makedirs(lowp_dir, exist_ok=True)
    comm.Barrier()
    opt, params = lowp_saved_run(ShardedOptimizer, LOWP_STEPS // 2, average=False,
                                 bucket_elements=BLOCK + 3000)
    save(os.path.join(lowp_dir, "ckpt.lrc"), opt)
    say(f"ok saved a bfloat16 8-bit stochastic-rounding Adam at step {opt.step_count} with "
        f"{W} rank(s)")


LOWP_SAVED = dict(state_dtype="int8", rounding="stochastic", seed=12345, amsgrad=True)


def lowp_saved_run(make, stop, seed=3, **kwargs):
    """bfloat16 params, 8-bit state, stochastic rounding: `stop` steps of make(...) (a
    ShardedOptimizer or lrcore.Adam) with full grads; returns (optimizer, params)."""
    g0, g1 = lowp_params(BF16, seed=seed)
    spec = [{"params": g0}, {"params": g1, "lr": 0.005}]
    lr = schedules.Cosine(0.01, LOWP_STEPS)
    opt = make(spec, lrcore.Adam, lr=lr, **LOWP_SAVED, **kwargs) if make is ShardedOptimizer \
        else make(spec, lr=lr, **LOWP_SAVED, **kwargs)
    for t in range(stop):
        opt.step(lowp_full(g0 + g1, t), **step_args(t))
    return opt, g0 + g1


def lowp_full(params, t):
    rng = np.random.default_rng(70 + t)
    return [(0.3 * rng.standard_normal(p.shape)).astype(np.float32).astype(BF16) for p in params]


def load_lowp(directory):
    """The lowp checkpoint: load onto this world size, compare, continue to LOWP_STEPS (the
    stochastic-rounding stream continues), compare; load into one process too."""
    path = os.path.join(directory, "lowp", "ckpt.lrc")
    opt, params = lowp_saved_run(ShardedOptimizer, 0, seed=99, average=False,
                                 bucket_elements=2 * BLOCK)
    load(path, opt)
    ref, rparams = lowp_saved_run(lrcore.Adam, LOWP_STEPS // 2)
    for i, (p, q) in enumerate(zip(params, rparams)):
        check(np.array_equal(bits(p), bits(q)), f"lowp: loaded params[{i}] differ")
    sd = opt.consolidated_state_dict()
    if RANK == 0:
        same_state_dict(sd, ref.state_dict(), "lowp: loaded state_dict")
    for t in range(LOWP_STEPS // 2, LOWP_STEPS):
        opt.step(lowp_full(params, t), **step_args(t))
        ref.step(lowp_full(rparams, t), **step_args(t))
        for i, (p, q) in enumerate(zip(params, rparams)):
            check(np.array_equal(bits(p), bits(q)), f"lowp: continued step {t} params[{i}] differ")
    sd = opt.consolidated_state_dict()
    if RANK == 0:
        same_state_dict(sd, ref.state_dict(), "lowp: continued state_dict")
    single, sparams = lowp_saved_run(lrcore.Adam, 0, seed=5)
    load(path, single)
    ref2, rp2 = lowp_saved_run(lrcore.Adam, LOWP_STEPS // 2)
    same_state_dict(single.state_dict(), ref2.state_dict(), "lowp: single-process load")
    for i, (p, q) in enumerate(zip(sparams, rp2)):
        check(np.array_equal(bits(p), bits(q)), f"lowp: single-process loaded params[{i}] differ")


def mode_load(directory):
    path = os.path.join(directory, "ckpt.lrc")
    g0, g1 = make_params(np.float32, seed=99)   # other values: load must overwrite them
    params = g0 + g1
    opt = ShardedOptimizer([{"params": g0}, {"params": g1, "lr": 0.005}], lrcore.Adam,
                           lr=schedules.Cosine(0.01, STEPS), amsgrad=True, average=False,
                           bucket_elements=2 * BLOCK)
    meta = load(path, opt)
    check(meta["saved_by"] >= 1, "meta returned")
    ref, rparams = continued_run(STEPS // 2)
    for i, (p, q) in enumerate(zip(params, rparams)):
        check(np.array_equal(bits(p), bits(q)), f"loaded params[{i}] differ")
    sd = opt.consolidated_state_dict()
    if RANK == 0:
        same_state_dict(sd, ref.state_dict(), "loaded state_dict")
    for t in range(STEPS // 2, STEPS):
        opt.step(averaged_full(params, t), **step_args(t))
        ref.step(averaged_full(rparams, t), **step_args(t))
    for i, (p, q) in enumerate(zip(params, rparams)):
        check(np.array_equal(bits(p), bits(q)), f"continued params[{i}] differ")
    # into a single-process optimizer, on every rank
    h0, h1 = make_params(np.float32, seed=5)
    single = lrcore.Adam([{"params": h0}, {"params": h1, "lr": 0.005}],
                         lr=schedules.Cosine(0.01, STEPS), amsgrad=True)
    load(path, single)
    ref2, rp2 = continued_run(STEPS // 2)
    same_state_dict(single.state_dict(), ref2.state_dict(), "single-process load")
    for i, (p, q) in enumerate(zip(h0 + h1, rp2)):
        check(np.array_equal(bits(p), bits(q)), f"single-process loaded params[{i}] differ")
    say(f"ok checkpoint saved with {meta['saved_by']} rank(s) loaded on {W}, continued to step "
        f"{STEPS} bitwise; also loaded into a single-process Adam")
    load_lowp(directory)
    say(f"ok bfloat16 8-bit stochastic-rounding checkpoint loaded on {W}, continued to step "
        f"{LOWP_STEPS} bitwise (the random stream continues); also into one process")


def expect_raise(fn, kinds, text, what):
    try:
        fn()
    except kinds as exc:
        check(text in str(exc), f"{what}: message {exc!s} lacks {text!r}")
        return exc
    check(False, f"{what}: no exception")


def mode_faults():
    params = [np.linspace(-1, 1, 3000).astype(np.float32)]
    opt = ShardedOptimizer(params, lrcore.SGD, lr=0.1, timeout=5.0)
    good = [np.ones(3000, np.float32)]
    before = params[0].copy()
    # a rank with bad grads: it raises its own error, every other rank a DistributedError
    bad = [np.ones(2999, np.float32)] if RANK == W - 1 else good
    exc = expect_raise(lambda: opt.step(bad), (ValueError, DistributedError), "grads[0]",
                       "bad grads on one rank")
    check(isinstance(exc, ValueError if RANK == W - 1 else DistributedError),
          f"rank {RANK} raised {type(exc).__name__}")
    check(np.array_equal(params[0], before), "a failed step changed params")
    # the ranks disagree on clip_norm
    if W > 1:
        expect_raise(lambda: opt.step(good, clip_norm=1.0 + RANK), DistributedError,
                     "disagree", "different clip_norm")
    # the ranks' grads differ in dtype (float32 params take bfloat16 grads too)
    if W > 1:
        mixed = [np.ones(3000, BF16)] if RANK == 0 else good
        expect_raise(lambda: opt.step(mixed), DistributedError, "disagree",
                     "grads of different dtypes on different ranks")
        check(np.array_equal(params[0], before), "a refused step changed params")
    check(opt.step(good), "a good step after the errors")
    check(opt.step_count == 1, "step count after errors")
    say("ok a bad grad on one rank raises on every rank; a good step follows")
    # a schedule leaving its range raises on every rank alike, and the next step works
    opt2 = ShardedOptimizer([np.ones(40000, np.float32)], lrcore.SGD,
                            lr=schedules.Lambda(lambda s: 0.1 if s != 1 else -1.0), timeout=5.0,
                            bucket_elements=BLOCK)
    opt2.step([np.ones(40000, np.float32)])
    expect_raise(lambda: opt2.step([np.ones(40000, np.float32)]), ValueError, "-1.0",
                 "schedule out of range")
    check(opt.step(good) and opt.step_count == 2, "the communicator works after that error")
    say("ok a schedule out of range raises on every rank; the next collective works")
    # a rank that stops calling: the others time out (bounded), with a clear message
    if W > 1:
        import time
        opt3 = ShardedOptimizer([np.ones(10, np.float64)], lrcore.SGD, lr=0.1, timeout=2.0)
        if RANK != 0:
            time.sleep(3.0)   # alive but silent: rank 0 must give up on its own
            # then match the status exchange rank 0 abandoned, so every rank can finalize
            from lrcore.distributed._comm import agree
            agree(comm, None, 30.0, "test cleanup")
        else:
            t0 = time.monotonic()
            expect_raise(lambda: opt3.step([np.ones(10)]), DistributedError, "no answer",
                         "a silent peer")
            say(f"ok a rank that stops calling: the others raise after "
                f"{time.monotonic() - t0:.1f} s (timeout 2 s)")
        comm.Barrier()


def mode_mismatch():
    shapes = [(10,), (5, 2)] if RANK == 0 else [(10,), (5, 3)]
    params = [np.zeros(s, np.float32) for s in shapes]
    vals = [np.full(10, float(RANK), np.float32)]
    if W > 1:
        expect_raise(lambda: ShardedOptimizer(params, lrcore.Adam), ValueError,
                     "params[1] is float32 (5, 3) in group 0 on rank 1", "shape mismatch")
        expect_raise(lambda: ShardedOptimizer(vals, lrcore.Adam), ValueError,
                     "different values", "value mismatch")
        expect_raise(lambda: ShardedOptimizer([np.zeros(4)], lrcore.Adam, lr=0.1 * (1 + RANK)),
                     ValueError, "hyperparameters", "hyperparameter mismatch")
        expect_raise(lambda: ShardedOptimizer([np.zeros(4, np.float32)], lrcore.Adam,
                                              rounding="stochastic" if RANK else "nearest"),
                     ValueError, "hyperparameters", "rounding mismatch")
    bad = [np.zeros(4, np.int32)] if RANK == W - 1 else [np.zeros(4, np.float32)]
    expect_raise(lambda: ShardedOptimizer(bad, lrcore.Adam), (TypeError, DistributedError),
                 "params[0]", "bad dtype on one rank")
    # a bad option raises the same error on every rank, before any collective
    expect_raise(lambda: ShardedOptimizer([np.zeros(4, np.float16)], lrcore.Adam,
                                          state_dtype="int8"), TypeError, "params[0]",
                 "8-bit state for float16 params")
    say("ok mismatched params, values, hyperparameters and dtypes are caught at construction")
    mode_options()


def mode_options():
    """average and bucket_elements must agree (a ValueError naming them on every rank);
    timeout, overlap and num_threads are each rank's own and may differ."""
    params = refusal_params()
    before = [bits(p).copy() for p in params]
    if W > 1:
        refused(lambda: ShardedOptimizer(params, lrcore.SGD, lr=0.1, timeout=5.0,
                                         average=RANK != W - 1),
                f"average is False on rank {W - 1} and True on rank 0", "average on one rank")
        refused(lambda: ShardedOptimizer(params, lrcore.SGD, lr=0.1, timeout=5.0,
                                         bucket_elements=BLOCK if RANK == W - 1 else 1 << 22),
                f"bucket_elements is {BLOCK} on rank {W - 1} and {1 << 22} on rank 0",
                "bucket_elements on one rank")
        for i, (p, b) in enumerate(zip(params, before)):
            check(np.array_equal(bits(p), b), f"a refused construction changed params[{i}]")
    refs = [p.copy() for p in params]
    opt = ShardedOptimizer(params, lrcore.Adam, lr=0.01, bucket_elements=BLOCK,
                           timeout=5.0 + RANK, overlap=RANK == 0, num_threads=1 + RANK % 2)
    ref = lrcore.Adam(refs, lr=0.01)
    for t in range(3):
        check(opt.step(grads_for(params, t, RANK), clip_norm=1.0)
              and ref.step(averaged(refs, t), clip_norm=1.0), f"per-rank options: step {t}")
        for i, (p, q) in enumerate(zip(params, refs)):
            check(np.array_equal(bits(p), bits(q)), f"per-rank options: step {t} params[{i}]")
    say("ok average / bucket_elements differing between ranks are refused on every rank; "
        "timeout, overlap and num_threads may differ (bitwise equal to one process)")


# -- refused input: the same error on every rank, nothing changed --------------------------

def refusal_params(dtype=np.float32):
    """Two params over several buckets of BLOCK elements (pieces on every rank up to 3)."""
    rng = np.random.default_rng(11)
    return [rng.standard_normal(40000).astype(np.float32).astype(dtype),
            rng.standard_normal((90, 100)).astype(np.float32).astype(dtype)]


def refused(fn, text, what, culprit=None):
    """fn() raises on every rank: with culprit=None, the same ValueError (same message) on
    every rank; else ValueError on rank `culprit` and DistributedError naming it on the
    others. The message holds `text`."""
    exc = expect_raise(fn, (ValueError, DistributedError), text, what)
    if culprit is None:
        check(type(exc) is ValueError, f"{what}: rank {RANK} raised {type(exc).__name__}: {exc}")
        messages = comm.allgather(str(exc))
        check(len(set(messages)) == 1, f"{what}: the ranks' messages differ: {messages}")
    else:
        want = ValueError if RANK == culprit else DistributedError
        check(type(exc) is want, f"{what}: rank {RANK} raised {type(exc).__name__}: {exc}")
        check(RANK == culprit or f"rank {culprit} failed" in str(exc),
              f"{what}: rank {RANK}'s error does not name rank {culprit}: {exc}")


def fingerprint(opt):
    """All this rank holds of a ShardedOptimizer: every param's bytes, its state shard's
    bytes and the array-free state dict (step, groups, hyperparameters, rounding, seed)."""
    arrays, sd, _ = opt.checkpoint_parts()
    return ([bits(p).copy() for p in opt.params],
            {k: bits(v).copy() for k, v in arrays.items()}, sd)


def unchanged(opt, before, what):
    params, arrays, sd = fingerprint(opt)
    for i, (a, b) in enumerate(zip(params, before[0])):
        check(np.array_equal(a, b), f"{what}: params[{i}] changed on rank {RANK}")
    check(sorted(arrays) == sorted(before[1]), f"{what}: state arrays {sorted(arrays)}")
    for k in arrays:
        check(np.array_equal(arrays[k], before[1][k]),
              f"{what}: state {k!r} changed on rank {RANK}")
    same_state_dict(sd, before[2], f"{what}: state dict")


def mode_refusals(directory):
    refuse_steps()
    refuse_loads()
    refuse_checkpoints(directory)


def refuse_steps():
    """Grads sharing memory with a param, and read-only params, are refused by every rank
    before any bucket is stepped (average=False and True, several buckets)."""
    last = W - 1
    for average in (False, True):
        params = refusal_params()
        refs = [p.copy() for p in params]
        opt = ShardedOptimizer(params, lrcore.Adam, lr=0.01, average=average,
                               bucket_elements=BLOCK, timeout=5.0)
        ref = lrcore.Adam(refs, lr=0.01)

        def grads(t):
            return [g.copy() for g in (grads_for(params, t, RANK) if average
                                       else averaged(params, t))]
        check(opt.step(grads(0)) and ref.step(averaged(refs, 0)), "first step")
        before = fingerprint(opt)
        name = f"average={average}:"
        g = grads(1)
        refused(lambda: opt.step([g[0], params[1]]),
                "ShardedOptimizer.step(): grads[1] shares memory with params[1]",
                f"{name} grads[1] is params[1] on every rank")
        unchanged(opt, before, f"{name} grads[1] is params[1]")
        refused(lambda: opt.step([g[0], params[0][:9000].reshape(90, 100)], clip_norm=1.0),
                "grads[1] shares memory with params[0]", f"{name} grads[1] a view of params[0]")
        unchanged(opt, before, f"{name} grads[1] a view of params[0]")
        if W > 1:
            mine = [params[0] if RANK == last else g[0], g[1]]
            refused(lambda: opt.step(mine), "grads[0] shares memory with params[0]",
                    f"{name} grads[0] is params[0] on rank {last}", culprit=last)
            unchanged(opt, before, f"{name} grads[0] is params[0] on one rank")
        params[1].flags.writeable = False
        refused(lambda: opt.step(g), "ShardedOptimizer.step(): params[1] is read-only",
                f"{name} params[1] read-only")
        params[1].flags.writeable = True
        unchanged(opt, before, f"{name} params[1] read-only")
        if W > 1:
            params[0].flags.writeable = RANK != last
            refused(lambda: opt.step(g, skip_nonfinite=True), "params[0] is read-only",
                    f"{name} params[0] read-only on rank {last}", culprit=last)
            params[0].flags.writeable = True
            unchanged(opt, before, f"{name} params[0] read-only on one rank")
        for t in (1, 2):   # the refusals left it where it was: it goes on as one process
            check(opt.step(grads(t), clip_norm=1.0) and ref.step(averaged(refs, t), clip_norm=1.0),
                  f"{name} step {t} after the refusals")
            for i, (p, q) in enumerate(zip(params, refs)):
                check(np.array_equal(bits(p), bits(q)), f"{name} step {t}: params[{i}] differ")
        check(opt.step_count == ref.step_count == 3, f"{name} step count {opt.step_count}")
    say("ok grads sharing memory with a param and read-only params are refused by every rank "
        "before any bucket is stepped; nothing changed; the next steps equal one process")


def mode_set_mismatch():
    """set() called differently on one rank (a number, a schedule whose value differs at
    this step, in one group of two): the next step is the same ValueError on every rank
    naming the group, the hyperparameter and both values, before anything changes; after a
    consistent set() the steps equal one process."""
    last = W - 1
    params = refusal_params()
    refs = [p.copy() for p in params]
    groups = [dict(params=[params[0]]), dict(params=[params[1]], lr=0.02)]
    opt = ShardedOptimizer(groups, lrcore.Adam, lr=schedules.Cosine(0.01, STEPS),
                           bucket_elements=BLOCK, timeout=5.0)
    ref = lrcore.Adam([dict(params=[refs[0]]), dict(params=[refs[1]], lr=0.02)],
                      lr=schedules.Cosine(0.01, STEPS))

    def both_step(t):
        check(opt.step(grads_for(params, t, RANK), clip_norm=1.0)
              and ref.step(averaged(refs, t), clip_norm=1.0), f"set: step {t}")
        for i, (p, q) in enumerate(zip(params, refs)):
            check(np.array_equal(bits(p), bits(q)), f"set: step {t}: params[{i}] differ")
    both_step(0)
    if W > 1:
        cases = ((1, dict(lr=0.03), "group 1.lr is 0.03 on rank {last}, 0.02 on rank 0"),
                 (1, dict(eps=1e-6), "group 1.eps is 1e-06 on rank {last}, 1e-08 on rank 0"),
                 (0, dict(lr=schedules.Cosine(0.02, STEPS)), "group 0.lr is "))
        for group, values, text in cases:
            if RANK == last:
                opt.set(group=group, **values)
            before, t = fingerprint(opt), opt.step_count
            refused(lambda: opt.step(grads_for(params, t, RANK)),
                    "ShardedOptimizer.step(): the ranks were given different hyperparameters "
                    f"for step {t} (call set() and report() alike on every rank): "
                    + text.format(last=last), f"set({values}) on rank {last} only")
            unchanged(opt, before, f"set({values}) on rank {last} only")
            check(opt.step_count == t, f"set: step count {opt.step_count}")
            opt.set(group=group, **values)   # now alike on every rank: the steps go on
            ref.set(group=group, **values)
            both_step(opt.step_count)
    for t in range(opt.step_count, opt.step_count + 2):
        both_step(t)
    say("ok set() called differently on one rank is refused at the next step by every rank "
        "naming the group and hyperparameter; nothing changed; consistent set() continues "
        "as one process")


LOAD_OPTIONS = dict(lr=0.01, state_dtype="int8", rounding="stochastic", seed=1)


def refuse_loads():
    """load_state_dict: state dicts that differ between ranks (seed, rounding, lr, step) or
    hold a bad array (a negative absmax, wherever it lies) are refused by every rank."""
    params = refusal_params(BF16)
    refs = [p.copy() for p in params]
    opt = ShardedOptimizer(params, lrcore.Adam, bucket_elements=BLOCK, timeout=5.0,
                           **LOAD_OPTIONS)
    ref = lrcore.Adam(refs, **LOAD_OPTIONS)

    def both_step(t):
        check(opt.step(lowp_grads(params, BF16, t, RANK), clip_norm=1.0)
              and ref.step(lowp_average(refs, BF16, t), clip_norm=1.0), f"load: step {t}")
        for i, (p, q) in enumerate(zip(params, refs)):
            check(np.array_equal(bits(p), bits(q)), f"load: step {t}: params[{i}] differ")
    both_step(0)
    both_step(1)
    sd = ref.state_dict()   # step 2
    both_step(2)
    before = fingerprint(opt)
    last = W - 1
    if W > 1:
        lr_changed = [dict(g, hyperparameters=dict(g["hyperparameters"], lr=0.02))
                      for g in sd["groups"]]
        for field, value, text in (
                ("seed", 2, f"seed is 2 on rank {last}, 1 on rank 0"),
                ("rounding", "nearest", f"rounding is 'nearest' on rank {last}"),
                ("step", 5, f"step is 5 on rank {last}, 2 on rank 0"),
                ("groups", lr_changed, f"groups[0].hyperparameters.lr is 0.02 on rank {last}")):
            mine = dict(sd, **{field: value}) if RANK == last else sd
            refused(lambda: opt.load_state_dict(mine),
                    "ShardedOptimizer.load_state_dict(): the ranks were given different state "
                    "dicts: " + text, f"load_state_dict with {field} differing on rank {last}")
            unchanged(opt, before, f"load_state_dict with {field} differing")
    # a negative absmax in a piece that another rank owns: refused all the same
    layout = opt.checkpoint_parts()[2]
    owner = last
    i, start, _ = next(piece for b in layout[owner] for piece in b)
    block = start // 256 + 1
    bad_state = [dict(st) for st in sd["state"]]
    bad_state[i] = dict(bad_state[i], **{"exp_avg.absmax": bad_state[i]["exp_avg.absmax"].copy()})
    bad_state[i]["exp_avg.absmax"][block] = -1.0
    bad = dict(sd, state=bad_state)
    text = f"params[{i}] state 'exp_avg.absmax' holds 1 negative value(s) (block {block}: -1.0)"
    refused(lambda: opt.load_state_dict(bad), text, "a negative absmax given to every rank")
    unchanged(opt, before, "a negative absmax given to every rank")
    if W > 1:   # only rank 0 is given it, and rank 0 does not hold that block
        refused(lambda: opt.load_state_dict(bad if RANK == 0 else sd), text,
                f"a negative absmax in rank {owner}'s piece given to rank 0", culprit=0)
        unchanged(opt, before, "a negative absmax given to rank 0")
    # equal dicts from different sources load: consolidated on rank 0, one process's elsewhere
    sd_now = opt.consolidated_state_dict(0)
    opt.load_state_dict(sd_now if RANK == 0 else ref.state_dict())
    unchanged(opt, before, "a load of the state it holds")
    opt.load_state_dict(sd)   # back to step 2, as one process
    ref.load_state_dict(sd)
    check(opt.step_count == 2 and opt.seed == 1, "load: step count and seed after a load")
    both_step(2)
    both_step(3)
    got = opt.consolidated_state_dict(0)
    if RANK == 0:
        same_state_dict(got, ref.state_dict(), "load: continued state dict")
    say("ok state dicts differing between ranks (seed, rounding, lr, step) or holding a "
        "negative absmax anywhere are refused by every rank; nothing changed; a good load "
        "continues as one process")


def refuse_checkpoints(directory):
    """lrcore.distributed.load: different checkpoints on different ranks, and a read-only
    param, are refused by every rank before anything changes."""
    params = refusal_params()
    refs = [p.copy() for p in params]
    opt = ShardedOptimizer(params, lrcore.Adam, lr=0.01, bucket_elements=BLOCK, timeout=5.0)
    ref = lrcore.Adam(refs, lr=0.01)
    first, second = (os.path.join(directory, f"refuse-{k}.lrc") for k in ("a", "b"))
    opt.step(grads_for(params, 0, RANK))
    ref.step(averaged(refs, 0))
    save(first, opt)
    saved = ref.state_dict(), [p.copy() for p in refs]
    opt.step(grads_for(params, 1, RANK))
    ref.step(averaged(refs, 1))
    save(second, opt)
    before = fingerprint(opt)
    if W > 1:
        refused(lambda: load(first if RANK == 0 else second, opt),
                "lrcore.distributed.load(): the ranks were given different checkpoints",
                "load of different checkpoints")
        unchanged(opt, before, "load of different checkpoints")
    params[1].flags.writeable = False
    refused(lambda: load(first, opt), "lrcore.distributed.load(): params[1] is read-only",
            "load into a read-only param")
    params[1].flags.writeable = True
    unchanged(opt, before, "load into a read-only param")
    if W > 1:
        params[1].flags.writeable = RANK != W - 1
        refused(lambda: opt.gather_params(), "params[1] is read-only",
                "gather_params with a read-only param on one rank", culprit=W - 1)
        params[1].flags.writeable = True
        unchanged(opt, before, "gather_params with a read-only param")
    load(first, opt)
    ref.load_state_dict(saved[0])
    for p, q in zip(refs, saved[1]):
        p[...] = q
    for t in (1, 2):
        opt.step(grads_for(params, t, RANK))
        ref.step(averaged(refs, t))
        for i, (p, q) in enumerate(zip(params, refs)):
            check(np.array_equal(bits(p), bits(q)), f"checkpoint: step {t}: params[{i}] differ")
    say("ok different checkpoints on different ranks and read-only params are refused by "
        "every rank at load; nothing changed; the loaded run continues as one process")


if __name__ == "__main__":
    mode, directory = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
    {"rules": mode_rules, "rules-defaults": lambda: mode_rules(defaults_only=True),
     "lowp": mode_lowp, "lowp-some": lambda: mode_lowp(some=True),
     "save": lambda: mode_save(directory),
     "load": lambda: mode_load(directory), "faults": mode_faults,
     "mismatch": mode_mismatch, "refusals": lambda: mode_refusals(directory),
     "set-mismatch": mode_set_mismatch}[mode]()
