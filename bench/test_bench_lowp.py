"""bfloat16/float16 layouts against float32 and torch, in one run (issue 12's figures).

For each layout of AdamW (decoupled weight decay, the optimizer people run in bf16) and of SGD
with momentum: median step time, bytes moved per element (the layout's bytes model), the
bandwidth probe's time at the same bytes (the probe run on the same memory where the layout
allows, else the float32 probe's GB/s applied to the layout's bytes), the roofline (the larger
of that memory time and the compute time of the same kernel on cache-resident data, scaled to
n), and ratios against torch's fused float32 AdamW and fused AdamW on bfloat16 params measured
in the same run. Results go to extra_info and are printed as a table.

Run: python -m pytest bench/test_bench_lowp.py --benchmark-only -s
     (LRCORE_BENCH_LOWP_N sets the element count, default 2**26; 2 threads)
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

N = int(os.environ.get("LRCORE_BENCH_LOWP_N", 1 << 26))
THREADS = 2
BF16, F16, F32 = lowp.bfloat16, np.dtype(np.float16), np.dtype(np.float32)

# (label, rule, param, grad, state dtypes, rounding)
ROWS = [
    ("adamw f32", "adam", F32, F32, F32, "nearest"),
    ("adamw bf16 all, SR", "adam", BF16, BF16, BF16, "stochastic"),
    ("adamw bf16 all, nearest", "adam", BF16, BF16, BF16, "nearest"),
    ("adamw bf16 p/g, f32 state, SR", "adam", BF16, BF16, F32, "stochastic"),
    ("adamw f16 p/g, f32 state, SR", "adam", F16, F16, F32, "stochastic"),
    ("adamw f32 p/state, bf16 grad", "adam", F32, BF16, F32, "nearest"),
    ("sgd-momentum f32", "sgd", F32, F32, F32, "nearest"),
    ("sgd-momentum bf16 all, SR", "sgd", BF16, BF16, BF16, "stochastic"),
]
HYPER = {"adam": dict(lr=1e-4, weight_decay=0.01, decoupled_weight_decay=True),
         "sgd": dict(lr=1e-4, momentum=0.9)}
NSTATES = {"adam": 2, "sgd": 1}


def bytes_per_element(rule, p, g, s):
    k = NSTATES[rule]
    return 2 * p.itemsize + g.itemsize + 2 * k * s.itemsize


def _buffers(rule, p, g, s, n, rng):
    x = rng.standard_normal(n, dtype=np.float32)
    param = x.astype(p)
    grad = (x * 1e-3).astype(g)
    states = [np.full(n, 1e-4, np.float32).astype(s) for _ in range(NSTATES[rule])]
    return param, grad, states


def _median(fn, repeat=9):
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def _lrcore_step(rule, bufs, rounding):
    param, grad, states = bufs
    fn = getattr(kernels, rule)
    extra = {} if param.dtype == F32 and grad.dtype == F32 else {"rounding": rounding, "seed": 1}
    counter = [1]

    def step():
        counter[0] += 1
        fn(param, grad, *states, step=counter[0], num_threads=THREADS, **HYPER[rule], **extra)
    return step


def _probe_step(bufs):
    """The probe on the layout's own memory when every buffer has the same byte size."""
    param, grad, states = bufs
    arrays = [param, grad] + states
    if len({a.nbytes for a in arrays}) != 1 or param.nbytes % 4:
        return None
    views = [a.view(np.float32) for a in arrays]
    return lambda: backend.probe(*views, scale=0.0, num_threads=THREADS)


def _torch_rows(n, rng):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(THREADS)
    out = {}
    for label, dt in (("torch fused AdamW f32", torch.float32),
                      ("torch fused AdamW bf16 params", torch.bfloat16)):
        x = torch.from_numpy(rng.standard_normal(n, dtype=np.float32)).to(dt)
        p = torch.nn.Parameter(x)
        p.grad = (x * 1e-3).to(dt)
        opt = torch.optim.AdamW([p], lr=1e-4, weight_decay=0.01, fused=True)
        opt.step()
        out[label] = _median(opt.step)
        del opt, p, x
        gc.collect()
    return out


def test_lowp_layouts(benchmark):
    rng = np.random.default_rng(0)
    rows = {}
    # compute time on cache-resident data (per element), same kernel, same threads
    small = 1 << 17
    for label, rule, p, g, s, rounding in ROWS:
        bufs = _buffers(rule, p, g, s, small, rng)
        t_cache = _median(_lrcore_step(rule, bufs, rounding), repeat=51) / small
        bufs = _buffers(rule, p, g, s, N, rng)
        t = _median(_lrcore_step(rule, bufs, rounding))
        probe = _probe_step(bufs)
        nbytes = bytes_per_element(rule, p, g, s)
        rows[label] = dict(rule=rule, seconds=t, bytes_per_element=nbytes,
                           probe_seconds=_median(probe) if probe else None,
                           compute_seconds=t_cache * N)
        del bufs
        gc.collect()
    f32_probe = rows["adamw f32"]["probe_seconds"] or None
    f32_gbps = bytes_per_element("adam", F32, F32, F32) * N / f32_probe if f32_probe else None
    for r in rows.values():
        mem = r["probe_seconds"] or (r["bytes_per_element"] * N / f32_gbps if f32_gbps else None)
        r["memory_seconds"] = mem
        r["roofline_seconds"] = max(mem, r["compute_seconds"]) if mem else None
        r["fraction_of_probe"] = mem / r["seconds"] if mem else None
        r["fraction_of_roofline"] = r["roofline_seconds"] / r["seconds"] if mem else None
    torch_rows = _torch_rows(N, rng)
    headline = rows["adamw bf16 all, SR"]
    for tl, tt in torch_rows.items():
        headline["speedup_vs_" + tl.replace(" ", "_")] = tt / headline["seconds"]
    # the benchmark fixture times the headline row once more (pytest-benchmark's table)
    bufs = _buffers("adam", BF16, BF16, BF16, N, rng)
    benchmark.pedantic(_lrcore_step("adam", bufs, "stochastic"), rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(n=N, threads=THREADS, rows=rows, torch=torch_rows)
    print(f"\nn = {N}, {THREADS} threads, medians")
    print(f"{'layout':34s} {'ms':>8s} {'B/el':>5s} {'probe ms':>9s} {'compute ms':>10s} "
          f"{'of probe':>8s} {'of roofline':>11s}")
    for label, r in rows.items():
        print(f"{label:34s} {r['seconds'] * 1e3:8.2f} {r['bytes_per_element']:5d} "
              f"{(r['memory_seconds'] or 0) * 1e3:9.2f} {r['compute_seconds'] * 1e3:10.2f} "
              f"{r['fraction_of_probe'] or 0:8.2f} {r['fraction_of_roofline'] or 0:11.2f}")
    for tl, tt in torch_rows.items():
        print(f"{tl:34s} {tt * 1e3:8.2f}   bf16 SR AdamW speed-up: {tt / headline['seconds']:.2f}x")
    print(f"all-bf16 SR AdamW vs lrcore float32 AdamW: "
          f"{rows['adamw f32']['seconds'] / headline['seconds']:.2f}x; all-bf16 SR SGD vs float32: "
          f"{rows['sgd-momentum f32']['seconds'] / rows['sgd-momentum bf16 all, SR']['seconds']:.2f}x")
