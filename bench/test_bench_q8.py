"""8-bit AdamW (lrcore.quantization.step, issue 13) against torch and the 8-bit anchors, in one run.

For each lrcore row (float32 or bfloat16 param and grad with 8-bit moments; nearest or
stochastic rounding of a bfloat16 param): the median step time, the bytes moved per element
(the layout's bytes model, below), bytes/s, the bandwidth probe's time at those bytes (the
float32 probe's bytes/s, measured on the float32 AdamW buffers of the same run, applied to the
layout's bytes), the compute time of the same kernel on cache-resident data scaled to n (the
time per element of a 2^15-element call minus that of a 256-element call, i.e. without the
per-call Python cost, on one thread, times n / threads), the roofline = max(memory time, compute time),
and the fractions of the probe and of the roofline reached (also from CPU times: in-cache
CPU time per element / threads, and the step's CPU time / threads). Ratios against torch's fused
float32 AdamW, bitsandbytes' AdamW8bit and torchao's AdamW8bit (each where it imports; torchao's
first step compiles for about half a minute and is excluded, as is every library's first
step) are measured in the same run. Medians of 7 steps (3 for the 8-bit anchors, which take
seconds per step at 2^26); 2 threads everywhere (torch.set_num_threads(2)). Wall and process
CPU time both (on a shared, loaded machine a compute-bound step's wall time is mostly waiting
for a core; the CPU-time ratios are the steadier figure there).

Bytes per element (blocks of 256, one float32 absmax per block and moment):
    float32 param and grad: 4 + 4 (param read, written) + 4 (grad) + 2 x (1 + 1) (two
        moments' codes read and written) + 2 x 2 x 4 / 256 (absmax read and written) = 16.06
    bfloat16 param and grad: 2 + 2 + 2 + 4 + 0.06 = 10.06
    float32 AdamW (torch, lrcore): 4 + 4 + 4 + 2 x (4 + 4) = 28

Run: python bench/test_bench_q8.py [log2 n ...]   (default 24 26: the table)
 or: python -m pytest bench/test_bench_q8.py --benchmark-only -s   (LRCORE_BENCH_Q8_LOG2N,
     default 24)
"""
import gc
import os
import sys
import time

import numpy as np
import pytest

import lrcore
from lrcore import lowp
from lrcore import quantization as q

if lrcore.backend() != "native":
    pytest.skip("benchmarks need the compiled backend", allow_module_level=True)

from lrcore import backend  # noqa: E402  (the probe)

THREADS = 2
HP = dict(lr=1e-3, weight_decay=1e-2)
ABSMAX = 2 * 2 * 4 / q.BLOCK
BYTES_F32 = 28.0
# (label, param/grad dtype, rounding)
ROWS = [("lrcore 8-bit AdamW, f32 param/grad", np.dtype(np.float32), "nearest"),
        ("lrcore 8-bit AdamW, bf16 param/grad, nearest", lowp.bfloat16, "nearest"),
        ("lrcore 8-bit AdamW, bf16 param/grad, stochastic", lowp.bfloat16, "stochastic")]


def bytes_per_element(dtype):
    s = np.dtype(dtype).itemsize
    return 3 * s + 2 * 2 + ABSMAX


def _median(fn, repeat=7, warmup=1, cpu=None):
    """Median wall time of fn(); with a list `cpu`, also appends the median process CPU time
    (every thread's time on a core: on a shared, loaded machine a compute-bound step's wall
    time is mostly waiting for a core, its CPU time is the steadier figure)."""
    for _ in range(warmup):
        fn()
    ts, cs = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        ts.append(time.perf_counter() - t0)
        cs.append(time.process_time() - c0)
    if cpu is not None:
        cpu.append(float(np.median(cs)))
    return float(np.median(ts))


def _q8_step(n, dtype, rounding, seed=0, threads=THREADS):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n, dtype=np.float32)
    p = x.astype(dtype)
    g = (x * np.float32(1e-3)).astype(dtype)
    st = {"exp_avg": q.QuantizedState.zeros(n, True),
          "exp_avg_sq": q.QuantizedState.zeros(n, False)}
    count = [0]

    def run():
        count[0] += 1
        q.step("adamw", p, g, st, step=count[0], rounding=rounding, seed=1,
               num_threads=threads, **HP)
    return run


def compute_seconds_per_element(dtype, rounding):
    """The kernel's time per element on cache-resident data (2^15 elements: 0.5 MiB of
    buffers) on one thread, divided by THREADS, without the per-call Python cost (a
    256-element call's time subtracted): (from wall times, from CPU times). One thread: a
    threaded call this short would count the pool's spinning workers as CPU time."""
    big, small = 1 << 15, q.BLOCK
    cb, cs = [], []
    t_big = _median(_q8_step(big, dtype, rounding, threads=1), repeat=101, warmup=5, cpu=cb)
    t_small = _median(_q8_step(small, dtype, rounding, threads=1), repeat=101, warmup=5, cpu=cs)
    return (max(t_big - t_small, 0.0) / (big - small) / THREADS,
            max(cb[0] - cs[0], 0.0) / (big - small) / THREADS)


def _f32_buffers(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n, dtype=np.float32)
    return x, x * np.float32(1e-3), np.zeros(n, np.float32), np.zeros(n, np.float32)


def _torch_fused(n):
    import torch
    torch.set_num_threads(THREADS)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(n, dtype=np.float32))
    p = torch.nn.Parameter(x)
    p.grad = x * 1e-3
    opt = torch.optim.AdamW([p], lr=1e-3, weight_decay=1e-2, fused=True)
    return opt.step


def _anchor(n, which):
    """bitsandbytes' or torchao's AdamW8bit step on one float32 parameter of n elements."""
    import torch
    torch.set_num_threads(THREADS)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(n, dtype=np.float32))
    p = torch.nn.Parameter(x)
    p.grad = x * 1e-3
    if which == "bitsandbytes":
        import bitsandbytes as bnb
        opt = bnb.optim.AdamW8bit([p], lr=1e-3, weight_decay=1e-2)
    else:
        from torchao.optim import AdamW8bit
        opt = AdamW8bit([p], lr=1e-3, weight_decay=1e-2)
    return opt.step


def _importable(name):
    try:
        __import__(name)
        return True
    except Exception:    # noqa: BLE001 - any failure to import: that anchor is left out
        return False


def table(log2n):
    """One run at n = 2^log2n: a dict of rows (seconds and derived figures)."""
    n = 1 << log2n
    rows = {}
    cpu = []
    for label, dt, rounding in ROWS:
        wall, per_core = compute_seconds_per_element(dt, rounding)
        rows[label] = dict(seconds=_median(_q8_step(n, dt, rounding), cpu=cpu),
                           bytes_per_element=bytes_per_element(dt), compute_seconds=wall * n,
                           compute_cpu_seconds=per_core * n)
        gc.collect()
    p, g, m, v = _f32_buffers(n)
    rows["lrcore float32 AdamW"] = dict(
        seconds=_median(lambda: lrcore.kernels.adam(p, g, m, v, step=5, num_threads=THREADS,
                                                    decoupled_weight_decay=True, **HP),
                        cpu=cpu),
        bytes_per_element=BYTES_F32)
    probe = _median(lambda: backend.probe(p, g, m, v, scale=0.0, num_threads=THREADS))
    del p, g, m, v
    gc.collect()
    probe_bps = BYTES_F32 * n / probe
    rows["torch fused float32 AdamW"] = dict(seconds=_median(_torch_fused(n), cpu=cpu),
                                             bytes_per_element=BYTES_F32)
    gc.collect()
    for lib, mod in (("bitsandbytes", "bitsandbytes"), ("torchao", "torchao.optim")):
        if _importable(mod):
            rows[f"{lib} AdamW8bit"] = dict(seconds=_median(_anchor(n, lib), repeat=3, cpu=cpu),
                                            bytes_per_element=bytes_per_element(np.float32))
            gc.collect()
    for r, c in zip(rows.values(), cpu):
        r["cpu_seconds"] = c
    torch_s = rows["torch fused float32 AdamW"]["seconds"]
    torch_c = rows["torch fused float32 AdamW"]["cpu_seconds"]
    for r in rows.values():
        r["cpu_vs_torch_fused_f32"] = torch_c / r["cpu_seconds"]
        r["bytes_per_second"] = r["bytes_per_element"] * n / r["seconds"]
        r["memory_seconds"] = r["bytes_per_element"] * n / probe_bps
        r["fraction_of_probe"] = r["memory_seconds"] / r["seconds"]
        if "compute_seconds" in r:
            r["roofline_seconds"] = max(r["memory_seconds"], r["compute_seconds"])
            r["fraction_of_roofline"] = r["roofline_seconds"] / r["seconds"]
            # the same with CPU times: compute = in-cache CPU time / threads, the step's
            # CPU time / threads (what the wall time would be with every thread on a core)
            r["roofline_cpu_seconds"] = max(r["memory_seconds"], r["compute_cpu_seconds"])
            r["fraction_of_roofline_cpu"] = (r["roofline_cpu_seconds"]
                                             / (r["cpu_seconds"] / THREADS))
        r["vs_torch_fused_f32"] = torch_s / r["seconds"]
        for lib in ("bitsandbytes", "torchao"):
            if f"{lib} AdamW8bit" in rows:
                r[f"vs_{lib}"] = rows[f"{lib} AdamW8bit"]["seconds"] / r["seconds"]
                r[f"cpu_vs_{lib}"] = rows[f"{lib} AdamW8bit"]["cpu_seconds"] / r["cpu_seconds"]
    return rows, probe_bps


def print_table(log2n, rows, probe_bps):
    print(f"n = 2^{log2n}, {THREADS} threads, lrcore ISA {lrcore.isa()}, probe "
          f"{probe_bps / 1e9:.1f} GB/s; medians")
    print(f"{'row':50s} {'ms':>8s} {'cpu ms':>8s} {'B/el':>6s} {'GB/s':>6s} {'of probe':>8s} "
          f"{'compute ms':>10s} {'roofline ms':>11s} {'of roof':>7s} {'x torch':>7s} {'x bnb':>6s} "
          f"{'x tao':>6s} {'cpu x torch':>11s} {'cpu x bnb':>9s} {'cpu x tao':>9s} "
          f"{'cpu compute ms':>14s} {'cpu roof ms':>11s} {'cpu of roof':>11s}")
    for name, r in rows.items():
        print(f"{name:50s} {r['seconds'] * 1e3:8.1f} {r['cpu_seconds'] * 1e3:8.1f} "
              f"{r['bytes_per_element']:6.2f} "
              f"{r['bytes_per_second'] / 1e9:6.1f} {r['fraction_of_probe']:8.2f} "
              f"{r.get('compute_seconds', float('nan')) * 1e3:10.1f} "
              f"{r.get('roofline_seconds', float('nan')) * 1e3:11.1f} "
              f"{r.get('fraction_of_roofline', float('nan')):7.2f} "
              f"{r['vs_torch_fused_f32']:7.2f} {r.get('vs_bitsandbytes', float('nan')):6.1f} "
              f"{r.get('vs_torchao', float('nan')):6.1f} {r['cpu_vs_torch_fused_f32']:11.2f} "
              f"{r.get('cpu_vs_bitsandbytes', float('nan')):9.1f} "
              f"{r.get('cpu_vs_torchao', float('nan')):9.1f} "
              f"{r.get('compute_cpu_seconds', float('nan')) * 1e3:14.1f} "
              f"{r.get('roofline_cpu_seconds', float('nan')) * 1e3:11.1f} "
              f"{r.get('fraction_of_roofline_cpu', float('nan')):11.2f}")


def test_q8_table(benchmark):
    """The table at LRCORE_BENCH_Q8_LOG2N (default 24) into extra_info; the benchmark fixture
    times the float32-param 8-bit row once more (pytest-benchmark's own table)."""
    log2n = int(os.environ.get("LRCORE_BENCH_Q8_LOG2N", 24))
    rows, probe_bps = table(log2n)
    print_table(log2n, rows, probe_bps)
    benchmark.extra_info.update(n=1 << log2n, threads=THREADS, probe_bytes_per_second=probe_bps,
                                rows=rows)
    benchmark(_q8_step(1 << log2n, np.float32, "nearest"))


if __name__ == "__main__":
    for a in (sys.argv[1:] or ["24", "26"]):
        print_table(int(a), *table(int(a)))
