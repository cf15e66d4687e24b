"""bfloat16/float16 layouts against float32, torch, torchao and DeepSpeed, in one run (issue 12).

For AdamW (decoupled weight decay), SGD with momentum and Lion, each layout is one row: the
step time at n elements on 2 threads, the bytes moved per element (the layout's bytes model:
param read and written, grad read, each state read and written), GB/s, the bandwidth probe's
time at the same bytes, the compute time of the same kernel on cache-resident data (the
arithmetic limit), the roofline (the larger of probe and compute time) and the fractions of
probe and roofline the step reaches. The three are timed side by side within the row: in
each of 9 rounds, after one warm-up call of each, one step call, one probe call, and one
compute measurement, in turn, so a change in the machine's load falls on all three alike;
each column is the median over the rounds.
  - the probe: on the layout's own memory when every buffer has the same byte size; else
    on float32 buffers of the same rule and n (allocated once per rule), its time scaled
    by the ratio of the bytes models (the float32 probe's GB/s applied to the layout's
    bytes);
  - the compute measurement of a round: one thread, 200 calls on 2**16 elements and 400
    calls on 64 elements (the per-call overhead), each timed as a batch; (time per 2**16
    call - time per 64 call) / (2**16 - 64) seconds per element, times n, divided by the
    thread count.
The row also gives the median share of the THREADS cores the process got during its step
calls (process CPU time / (wall time * THREADS)).
Ratios, timed side by side (the contenders of one comparison called in turn, one call
each per round, medians, so a change in the machine's load falls on all alike): the
all-bfloat16 stochastic-rounding AdamW against lrcore's float32 AdamW, torch's
fused float32 AdamW, torch's fused AdamW on bfloat16 params, torchao's
_AdamW(bf16_stochastic_round=True) and DeepSpeed's CPUAdam (bf16 params and state) when
those import (skipped otherwise); SGD and Lion in bfloat16 against their float32 step.
Results go to extra_info and are printed as tables.

Run: python -m pytest bench/test_bench_lowp.py --benchmark-only -s
     LRCORE_BENCH_LOWP_N: comma-separated element counts (default 2**24,2**26);
     LRCORE_BENCH_LOWP_RULES: comma-separated subset of adamw,sgd,lion.
"""
import gc
import os
import time

import numpy as np
import pytest

import lrcore
from lrcore import kernels, lowp

if lrcore.backend() != "native":
    pytest.skip("benchmarks need the compiled backend", allow_module_level=True)

from lrcore import backend  # noqa: E402  (the probe)

SIZES = [int(eval(s, {})) for s in os.environ.get("LRCORE_BENCH_LOWP_N", "2**24,2**26").split(",")]
THREADS = 2
BF16, F16, F32 = lowp.bfloat16, np.dtype(np.float16), np.dtype(np.float32)

RULES = {  # label: (kernel, hyperparameters, number of state buffers)
    "adamw": ("adam", dict(lr=1e-4, weight_decay=0.01, decoupled_weight_decay=True), 2),
    "sgd": ("sgd", dict(lr=1e-4, momentum=0.9), 1),
    "lion": ("lion", dict(lr=1e-4, weight_decay=0.01), 1),
}
LAYOUTS = [  # (label, param, grad, state dtypes, rounding)
    ("f32", F32, F32, F32, "nearest"),
    ("bf16 all, SR", BF16, BF16, BF16, "stochastic"),
    ("bf16 all, nearest", BF16, BF16, BF16, "nearest"),
    ("bf16 p/g, f32 state, SR", BF16, BF16, F32, "stochastic"),
    ("f16 p/g, f32 state, SR", F16, F16, F32, "stochastic"),
    ("f16 p/g, f32 state, nearest", F16, F16, F32, "nearest"),
    ("f32 p/state, bf16 grad", F32, BF16, F32, "nearest"),
    ("f32 p/state, f16 grad", F32, F16, F32, "nearest"),
]
SELECTED = [r for r in os.environ.get("LRCORE_BENCH_LOWP_RULES", ",".join(RULES)).split(",") if r]


def bytes_per_element(nstates, p, g, s):
    return 2 * p.itemsize + g.itemsize + 2 * nstates * s.itemsize


def _buffers(nstates, p, g, s, n, rng):
    x = rng.standard_normal(n, dtype=np.float32)
    param = x.astype(p)
    grad = (x * 1e-3).astype(g)
    states = [np.full(n, 1e-4, np.float32).astype(s) for _ in range(nstates)]
    return param, grad, states


def _step(rule, bufs, rounding, threads):
    kernel, hyper, _ = RULES[rule]
    param, grad, states = bufs
    fn = getattr(kernels, kernel)
    extra = {} if param.dtype == F32 and grad.dtype == F32 else {"rounding": rounding, "seed": 1}
    counter = [1]

    def step():
        counter[0] += 1
        fn(param, grad, *states, step=counter[0], num_threads=threads, **hyper, **extra)
    return step


def _compute_round(rule, p, g, s, rounding, rng):
    """A function that measures once the compute time per element: one thread on
    cache-resident data (2**16 elements, 200 calls), minus the per-call overhead (64
    elements, 400 calls)."""
    nstates = RULES[rule][2]
    big = _step(rule, _buffers(nstates, p, g, s, 1 << 16, rng), rounding, 1)
    small = _step(rule, _buffers(nstates, p, g, s, 64, rng), rounding, 1)

    def batch(fn, reps):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t) / reps

    def measure():
        return max(batch(big, 200) - batch(small, 400), 0.0) / ((1 << 16) - 64)
    return measure


def _probe_step(bufs):
    """The probe on the layout's own memory when every buffer has the same byte size."""
    param, grad, states = bufs
    arrays = [param, grad] + states
    if len({a.nbytes for a in arrays}) != 1 or param.nbytes % 4:
        return None
    views = [a.view(np.float32) for a in arrays]
    return lambda: backend.probe(*views, scale=0.0, num_threads=THREADS)


def _others(n, rng):
    """Step functions of torch fused AdamW (float32, bf16 params), torchao's bf16 SR AdamW and
    DeepSpeed's CPUAdam (bf16 params and state), where they import and run; else a string
    saying why not."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(THREADS)
    out = {}

    def make(label, make_opt, dt):
        x = torch.from_numpy(rng.standard_normal(n, dtype=np.float32)).to(dt)
        p = torch.nn.Parameter(x)
        p.grad = (x * 1e-3).to(dt)
        try:
            opt = make_opt([p])
            opt.step()
        except Exception as e:   # an optional competitor that does not run here
            out[label] = f"skipped: {type(e).__name__}: {e}"[:200]
            return
        out[label] = opt.step

    make("torch fused AdamW f32",
         lambda ps: torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.01, fused=True), torch.float32)
    make("torch fused AdamW bf16 params",
         lambda ps: torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.01, fused=True), torch.bfloat16)
    try:
        from torchao.optim import _AdamW
        make("torchao _AdamW bf16 SR",
             lambda ps: _AdamW(ps, lr=1e-4, weight_decay=0.01, bf16_stochastic_round=True),
             torch.bfloat16)
    except Exception as e:
        out["torchao _AdamW bf16 SR"] = f"skipped: {type(e).__name__}: {e}"[:200]
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        make("DeepSpeed CPUAdam bf16",
             lambda ps: DeepSpeedCPUAdam(ps, lr=1e-4, weight_decay=0.01, adamw_mode=True,
                                         fp32_optimizer_states=False),
             torch.bfloat16)
    except Exception as e:
        out["DeepSpeed CPUAdam bf16"] = f"skipped: {type(e).__name__}: {e}"[:200]
    return out


def _interleaved(fns, repeat=9, slow=()):
    """Median step time of each function, the functions run in turn (one call each per
    round), so that a change in the machine's load falls on all of them alike. `slow` ones
    (seconds per step) run in the first 3 rounds only. Also the median share of THREADS
    cores the process got during a call (process CPU time / (wall time * THREADS)): below
    1 on a loaded machine, where kernels limited by arithmetic lose more than those limited
    by memory."""
    ts = {k: [] for k in fns}
    share = {k: [] for k in fns}
    for f in fns.values():
        f()
    for r in range(repeat):
        for k, f in fns.items():
            if k in slow and r >= 3:
                continue
            c, t = time.process_time(), time.perf_counter()
            f()
            t, c = time.perf_counter() - t, time.process_time() - c
            ts[k].append(t)
            share[k].append(c / (t * THREADS))
    return ({k: float(np.median(v)) for k, v in ts.items()},
            {k: float(np.median(v)) for k, v in share.items()})


def _side_by_side(n, rng):
    """The issue's ratios, each group timed interleaved: all-bf16 SR AdamW against lrcore's
    float32 AdamW and the other optimizers; SGD and Lion in bfloat16 (SR and nearest)
    against their float32 step."""
    times, shares, skipped = {}, {}, {}
    if "adamw" in SELECTED:
        fns = {}
        for label, p, g, s, rounding in (LAYOUTS[0], LAYOUTS[1], LAYOUTS[2]):
            fns[f"lrcore adamw {label}"] = _step("adamw", _buffers(2, p, g, s, n, rng), rounding,
                                                 THREADS)
        for label, f in _others(n, rng).items():
            if callable(f):
                fns[label] = f
            else:
                skipped[label] = f
        t, c = _interleaved(fns, slow=("torchao _AdamW bf16 SR",))
        times.update(t)
        shares.update(c)
        del fns
        gc.collect()
    for rule in ("sgd", "lion"):
        if rule not in SELECTED:
            continue
        fns = {f"lrcore {rule} {label}": _step(rule, _buffers(1, p, g, s, n, rng), rounding, THREADS)
               for label, p, g, s, rounding in (LAYOUTS[0], LAYOUTS[1], LAYOUTS[2])}
        t, c = _interleaved(fns)
        times.update(t)
        shares.update(c)
        del fns
        gc.collect()
    ratios = {}
    head = times.get("lrcore adamw bf16 all, SR")
    if head:
        for label, t in times.items():
            if label != "lrcore adamw bf16 all, SR" and not label.startswith(("lrcore sgd",
                                                                              "lrcore lion")):
                ratios[f"adamw bf16 all SR vs {label}"] = t / head
    for rule in ("sgd", "lion"):
        f32 = times.get(f"lrcore {rule} f32")
        for label in ("bf16 all, SR", "bf16 all, nearest"):
            t = times.get(f"lrcore {rule} {label}")
            if f32 and t:
                ratios[f"{rule} {label} vs lrcore {rule} f32"] = f32 / t
    return times, shares, skipped, ratios


def _row(rule, p, g, s, rounding, n, rng, f32_probe, rounds=9):
    """One layout's row, its step, probe and compute time measured in turn in each round
    (see the module docstring); medians over the rounds. f32_probe: (probe function on
    float32 buffers of this rule and n, their bytes per element), for layouts whose buffers
    differ in byte size."""
    nstates = RULES[rule][2]
    compute = _compute_round(rule, p, g, s, rounding, rng)
    bufs = _buffers(nstates, p, g, s, n, rng)
    step = _step(rule, bufs, rounding, THREADS)
    nbytes = bytes_per_element(nstates, p, g, s)
    probe, probe_scale, own = _probe_step(bufs), 1.0, True
    if probe is None:
        probe, f32_bytes = f32_probe
        probe_scale, own = nbytes / f32_bytes, False
    step(), probe(), compute()
    ts, ps, cs, share = [], [], [], []
    for _ in range(rounds):
        c, t = time.process_time(), time.perf_counter()
        step()
        t, c = time.perf_counter() - t, time.process_time() - c
        ts.append(t)
        share.append(c / (t * THREADS))
        t = time.perf_counter()
        probe()
        ps.append((time.perf_counter() - t) * probe_scale)
        cs.append(compute() * n / THREADS)
    t, mem, comp = (float(np.median(x)) for x in (ts, ps, cs))
    roof = max(mem, comp)
    del bufs, step
    gc.collect()
    return dict(rule=rule, seconds=t, bytes_per_element=nbytes, gbps=nbytes * n / t / 1e9,
                memory_seconds=mem, probe_on_own_memory=own, compute_seconds=comp,
                roofline_seconds=roof, fraction_of_probe=mem / t, fraction_of_roofline=roof / t,
                cpu_share=float(np.median(share)))


@pytest.mark.parametrize("n", SIZES)
def test_lowp_layouts(benchmark, n):
    rng = np.random.default_rng(0)
    rows = {}
    for rule in SELECTED:
        nstates = RULES[rule][2]
        f32_bufs = _buffers(nstates, F32, F32, F32, n, rng)
        f32_probe = (_probe_step(f32_bufs), bytes_per_element(nstates, F32, F32, F32))
        for label, p, g, s, rounding in LAYOUTS:
            rows[f"{rule} {label}"] = dict(layout=label, **_row(rule, p, g, s, rounding, n, rng,
                                                                f32_probe))
        del f32_bufs, f32_probe
        gc.collect()
    times, shares, skipped, ratios = _side_by_side(n, rng)
    # the benchmark fixture times the headline row once more (pytest-benchmark's table)
    rule0 = SELECTED[0]
    bufs = _buffers(RULES[rule0][2], BF16, BF16, BF16, n, rng)
    benchmark.pedantic(_step(rule0, bufs, "stochastic", THREADS), rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(n=n, threads=THREADS, rows=rows, side_by_side=times,
                                cpu_share=shares, skipped=skipped, ratios=ratios)
    print(f"\nn = {n}, {THREADS} threads; each row's step, probe and compute timed in turn, "
          f"medians of 9 rounds (probe *: float32 probe scaled to the row's bytes)")
    print(f"{'rule / layout':38s} {'ms':>8s} {'B/el':>5s} {'GB/s':>6s} {'probe ms':>10s} "
          f"{'compute ms':>10s} {'of probe':>8s} {'of roofline':>11s} {'cpu':>5s}")
    for key, r in rows.items():
        star = " " if r["probe_on_own_memory"] else "*"
        print(f"{key:38s} {r['seconds'] * 1e3:8.2f} {r['bytes_per_element']:5d} {r['gbps']:6.1f} "
              f"{r['memory_seconds'] * 1e3:9.2f}{star} {r['compute_seconds'] * 1e3:10.2f} "
              f"{r['fraction_of_probe']:8.2f} {r['fraction_of_roofline']:11.2f} "
              f"{r['cpu_share']:5.2f}")
    print("side by side (interleaved, medians; share of the cores the process got):")
    for label, t in times.items():
        print(f"  {label:40s} {t * 1e3:9.2f} ms   cpu share {shares[label]:.2f}")
    for label, why in skipped.items():
        print(f"  {label:40s} {why}")
    for label, x in ratios.items():
        print(f"  {label:62s} {x:6.2f}x")
