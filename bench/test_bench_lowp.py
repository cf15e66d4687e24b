"""bfloat16/float16 layouts against float32, torch, torchao and DeepSpeed, in one run (issue 12).

For AdamW (decoupled weight decay), SGD with momentum and Lion, each layout: the median step
time at n elements on 2 threads, the bytes moved per element (the layout's bytes model:
param read and written, grad read, each state read and written), GB/s, the bandwidth probe's
time at the same bytes (the probe run on the layout's own memory when every buffer has the
same byte size, else the float32 probe's GB/s applied to the layout's bytes), the compute
time of the same kernel on cache-resident data (one thread on 2**16 elements, the per-call
overhead measured on 64 elements subtracted, divided by the thread count: the arithmetic
limit), the roofline (the larger of the two) and the fractions of probe and roofline reached.
Ratios, all from the same run: the all-bfloat16 stochastic-rounding AdamW against torch's
fused float32 AdamW, torch's fused AdamW on bfloat16 params, torchao's
_AdamW(bf16_stochastic_round=True) and DeepSpeed's CPUAdam (bf16 params and state) when
those import (skipped otherwise); SGD and Lion in bfloat16 against their float32 step.
Results go to extra_info and are printed as a table.

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


def _median(fn, repeat=9):
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


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


def _compute_seconds_per_element(rule, p, g, s, rounding, rng):
    """One thread on cache-resident data, minus the per-call overhead (64 elements)."""
    nstates = RULES[rule][2]
    best = {}
    for n in (64, 1 << 16):
        step = _step(rule, _buffers(nstates, p, g, s, n, rng), rounding, 1)
        reps = 400 if n == 64 else 60
        step()
        runs = []
        for _ in range(7):
            t = time.perf_counter()
            for _ in range(reps):
                step()
            runs.append((time.perf_counter() - t) / reps)
        best[n] = min(runs)
    return max(best[1 << 16] - best[64], 0.0) / ((1 << 16) - 64)


def _probe_step(bufs):
    """The probe on the layout's own memory when every buffer has the same byte size."""
    param, grad, states = bufs
    arrays = [param, grad] + states
    if len({a.nbytes for a in arrays}) != 1 or param.nbytes % 4:
        return None
    views = [a.view(np.float32) for a in arrays]
    return lambda: backend.probe(*views, scale=0.0, num_threads=THREADS)


def _others(n, rng):
    """Step times of torch fused AdamW (float32, bf16 params), torchao's bf16 SR AdamW and
    DeepSpeed's CPUAdam (bf16), where they import."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(THREADS)
    out = {}

    def run(label, make_opt, dt):
        x = torch.from_numpy(rng.standard_normal(n, dtype=np.float32)).to(dt)
        p = torch.nn.Parameter(x)
        p.grad = (x * 1e-3).to(dt)
        try:
            opt = make_opt([p])
            opt.step()
        except Exception as e:   # an optional competitor that does not run here
            out[label] = f"skipped: {type(e).__name__}: {e}"[:200]
            return
        out[label] = _median(opt.step, repeat=3 if "torchao" in label else 9)
        del opt, p, x
        gc.collect()

    run("torch fused AdamW f32",
        lambda ps: torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.01, fused=True), torch.float32)
    run("torch fused AdamW bf16 params",
        lambda ps: torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.01, fused=True), torch.bfloat16)
    try:
        from torchao.optim import _AdamW
        run("torchao _AdamW bf16 SR",
            lambda ps: _AdamW(ps, lr=1e-4, weight_decay=0.01, bf16_stochastic_round=True),
            torch.bfloat16)
    except Exception as e:
        out["torchao _AdamW bf16 SR"] = f"skipped: {type(e).__name__}: {e}"[:200]
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        run("DeepSpeed CPUAdam bf16",
            lambda ps: DeepSpeedCPUAdam(ps, lr=1e-4, weight_decay=0.01, adamw_mode=True,
                                         fp32_optimizer_states=False),
            torch.bfloat16)
    except Exception as e:
        out["DeepSpeed CPUAdam bf16"] = f"skipped: {type(e).__name__}: {e}"[:200]
    return out


@pytest.mark.parametrize("n", SIZES)
def test_lowp_layouts(benchmark, n):
    rng = np.random.default_rng(0)
    rows = {}
    for rule in SELECTED:
        nstates = RULES[rule][2]
        for label, p, g, s, rounding in LAYOUTS:
            key = f"{rule} {label}"
            per_el = _compute_seconds_per_element(rule, p, g, s, rounding, rng)
            bufs = _buffers(nstates, p, g, s, n, rng)
            t = _median(_step(rule, bufs, rounding, THREADS))
            probe = _probe_step(bufs)
            nbytes = bytes_per_element(nstates, p, g, s)
            rows[key] = dict(rule=rule, layout=label, seconds=t, bytes_per_element=nbytes,
                             gbps=nbytes * n / t / 1e9,
                             probe_seconds=_median(probe) if probe else None,
                             compute_seconds=per_el * n / THREADS)
            del bufs
            gc.collect()
    f32_gbps = {}
    for r in rows.values():
        if r["layout"] == "f32" and r["probe_seconds"]:
            f32_gbps[r["rule"]] = r["bytes_per_element"] * n / r["probe_seconds"]
    for r in rows.values():
        gb = f32_gbps.get(r["rule"])
        mem = r["probe_seconds"] or (r["bytes_per_element"] * n / gb if gb else None)
        r["memory_seconds"] = mem
        r["roofline_seconds"] = max(mem, r["compute_seconds"]) if mem else None
        r["fraction_of_probe"] = mem / r["seconds"] if mem else None
        r["fraction_of_roofline"] = r["roofline_seconds"] / r["seconds"] if mem else None
    others = _others(n, rng) if "adamw" in SELECTED else {}
    ratios = {}
    head = rows.get("adamw bf16 all, SR")
    if head:
        for label, t in others.items():
            if isinstance(t, float):
                ratios[f"adamw bf16 all SR vs {label}"] = t / head["seconds"]
    for rule in SELECTED:
        f32, sr, rn = (rows.get(f"{rule} {x}") for x in ("f32", "bf16 all, SR", "bf16 all, nearest"))
        if f32 and sr:
            ratios[f"{rule} bf16 all SR vs lrcore {rule} f32"] = f32["seconds"] / sr["seconds"]
        if f32 and rn:
            ratios[f"{rule} bf16 all nearest vs lrcore {rule} f32"] = f32["seconds"] / rn["seconds"]
    # the benchmark fixture times the headline row once more (pytest-benchmark's table)
    rule0 = SELECTED[0]
    bufs = _buffers(RULES[rule0][2], BF16, BF16, BF16, n, rng)
    benchmark.pedantic(_step(rule0, bufs, "stochastic", THREADS), rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(n=n, threads=THREADS, rows=rows, others=others, ratios=ratios)
    print(f"\nn = {n}, {THREADS} threads, medians")
    print(f"{'rule / layout':38s} {'ms':>8s} {'B/el':>5s} {'GB/s':>6s} {'probe ms':>9s} "
          f"{'compute ms':>10s} {'of probe':>8s} {'of roofline':>11s}")
    for key, r in rows.items():
        print(f"{key:38s} {r['seconds'] * 1e3:8.2f} {r['bytes_per_element']:5d} {r['gbps']:6.1f} "
              f"{(r['memory_seconds'] or 0) * 1e3:9.2f} {r['compute_seconds'] * 1e3:10.2f} "
              f"{r['fraction_of_probe'] or 0:8.2f} {r['fraction_of_roofline'] or 0:11.2f}")
    for label, t in others.items():
        print(f"{label:38s} " + (f"{t * 1e3:8.2f} ms" if isinstance(t, float) else t))
    for label, x in ratios.items():
        print(f"{label:62s} {x:6.2f}x")
