"""Optimizer-level costs: many arrays vs one flat buffer, small-call overhead,
clip/skip-nonfinite overhead, and the thread threshold."""
import numpy as np
import pytest

import lrcore
from lrcore import backend, bench, kernels, lowp
import lrcore.optim

from conftest import record

ADAM_BYTES = 28  # float32 Adam: read param, grad, exp_avg, exp_avg_sq; write three


def _mixed_sizes(total=8_000_000, count=200, seed=0):
    """200 sizes from a few hundred to a few million elements, summing to `total`."""
    rng = np.random.default_rng(seed)
    w = np.exp(rng.uniform(np.log(300), np.log(3_000_000), count))
    sizes = np.maximum(300, (w / w.sum() * total).astype(np.int64))
    sizes[np.argmax(sizes)] += total - sizes.sum()
    return [int(s) for s in sizes]


def _model(sizes, dtype=np.float32):
    rng = np.random.default_rng(1)
    params = [rng.uniform(0.5, 1.5, s).astype(dtype) for s in sizes]
    grads = [rng.uniform(-1, 1, s).astype(dtype) for s in sizes]
    return params, grads


@pytest.mark.parametrize("layout", ["200-arrays", "one-flat-buffer"])
def test_many_arrays(benchmark, layout):
    sizes = _mixed_sizes()
    params, grads = _model(sizes if layout == "200-arrays" else [sum(sizes)])
    opt = lrcore.Adam(params, lr=1e-3)
    opt.step(grads)
    benchmark.group = "many arrays: Adam float32, 8M elements"
    benchmark.pedantic(opt.step, args=(grads,), rounds=40, iterations=1, warmup_rounds=3)
    extra = {"arrays": len(sizes) if layout == "200-arrays" else 1}
    if layout == "200-arrays":
        flat_p, flat_g = _model([sum(sizes)])
        flat = lrcore.Adam(flat_p, lr=1e-3)
        flat.step(flat_g)
        t_flat = bench.median_time(lambda: flat.step(flat_g), repeat=40)
        t_many = bench.median_time(lambda: opt.step(grads), repeat=40)
        extra.update(flat_ms=t_flat * 1e3, many_over_flat=round(t_many / t_flat, 3))
    record(benchmark, ADAM_BYTES * sum(sizes), **extra)


def test_small_kernel_call(benchmark):
    n = 1000
    p, g = np.ones(n, np.float32), np.full(n, 0.1, np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    benchmark.group = "small: 1,000 elements"
    benchmark.pedantic(lambda: kernels.adam(p, g, m, v, lr=1e-3, step=3), rounds=20000,
                       iterations=1, warmup_rounds=100)
    record(benchmark, ADAM_BYTES * n, what="lrcore.kernels.adam call")


def test_small_optimizer_step(benchmark):
    n = 1000
    p, g = np.ones(n, np.float32), np.full(n, 0.1, np.float32)
    opt = lrcore.Adam(p, lr=1e-3)
    benchmark.group = "small: 1,000 elements"
    benchmark.pedantic(opt.step, args=(g,), rounds=20000, iterations=1, warmup_rounds=100)
    record(benchmark, ADAM_BYTES * n, what="lrcore.Adam.step")


_SMALL = {  # layout: (param dtype, grad dtype, AdamW options, elements per param)
    "float32": (np.float32, np.float32, {}, 64),
    "bfloat16": (lowp.bfloat16, lowp.bfloat16, {}, 64),
    "bfloat16 SR": (lowp.bfloat16, lowp.bfloat16, dict(rounding="stochastic"), 64),
    "float16": (np.float16, np.float16, {}, 64),
    "float32 + bfloat16 grads": (np.float32, lowp.bfloat16, {}, 64),
    "float32 5000": (np.float32, np.float32, {}, 5000),
    "bfloat16 5000": (lowp.bfloat16, lowp.bfloat16, {}, 5000),
    "int8 state 5000": (np.float32, np.float32, dict(state_dtype="int8"), 5000),
}


@pytest.mark.parametrize("layout", list(_SMALL))
def test_small_params_step(benchmark, layout):
    """AdamW over 20 small params, per layout: the fixed cost of a step (README, "How a step
    runs"): one compiled call for float32 and the half-precision layouts, the kernel once per
    param with 8-bit state (params of 5000 elements: 8-bit state starts at 4096)."""
    pdt, gdt, kw, n = _SMALL[layout]
    params = [np.ones(n, pdt) for _ in range(20)]
    grads = [np.full(n, 0.01, np.float32).astype(gdt) for _ in range(20)]
    opt = lrcore.optim.AdamW(params, lr=1e-3, **kw)
    benchmark.group = "small params: AdamW, 20 params"
    benchmark.pedantic(opt.step, args=(grads,), rounds=2000, iterations=1, warmup_rounds=20)
    nbytes = sum(p.nbytes * 2 + g.nbytes for p, g in zip(params, grads)) + opt.state_nbytes() * 2
    record(benchmark, nbytes, what=f"lrcore.optim.AdamW.step, 20 x {n} {layout}",
           us_per_step=round(benchmark.stats.stats.median * 1e6, 2))


@pytest.mark.parametrize("layout", ["float32", "bfloat16 SR"])
def test_small_kernel_call_layouts(benchmark, layout):
    """One lrcore.kernels.adam call on 1,000 elements of a layout (its checks run compiled
    for every layout)."""
    pdt, gdt, kw, _ = _SMALL[layout]
    n = 1000
    p, g = np.ones(n, pdt), np.full(n, 0.1, np.float32).astype(gdt)
    m, v = np.zeros(n, pdt), np.zeros(n, pdt)
    extra = dict(rounding="stochastic", seed=1) if kw else {}
    benchmark.group = "small: 1,000 elements"
    benchmark.pedantic(lambda: kernels.adam(p, g, m, v, lr=1e-3, step=3, **extra),
                       rounds=20000, iterations=1, warmup_rounds=100)
    record(benchmark, (p.nbytes * 2 + g.nbytes + (m.nbytes + v.nbytes) * 2),
           what=f"lrcore.kernels.adam call, {layout}")


@pytest.mark.parametrize("mode", ["plain", "clip_norm+skip_nonfinite"])
def test_clip_and_skip_overhead(benchmark, mode):
    n = 1 << 24
    params, grads = _model([n])
    opt = lrcore.Adam(params, lr=1e-3)
    kw = {} if mode == "plain" else {"clip_norm": 1.0, "skip_nonfinite": True}
    benchmark.group = "clip/skip: Adam float32 2^24"
    benchmark.pedantic(lambda: opt.step(grads, **kw), rounds=15, iterations=1, warmup_rounds=2)
    extra = {}
    if mode != "plain":
        t_plain = bench.median_time(lambda: opt.step(grads), repeat=15)
        t_safe = bench.median_time(lambda: opt.step(grads, **kw), repeat=15)
        extra["over_plain"] = round(t_safe / t_plain, 3)
    record(benchmark, ADAM_BYTES * n, **extra)


@pytest.mark.parametrize("n", [1 << k for k in range(12, 21)])
def test_thread_threshold(benchmark, n):
    """Default threads vs one thread around the size where a second thread starts paying."""
    p, g = np.ones(n, np.float32), np.full(n, 0.1, np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    step = lambda t: kernels.adam(p, g, m, v, lr=1e-3, step=3, num_threads=t)  # noqa: E731
    benchmark.group = "threads: Adam float32, default vs 1"
    benchmark.pedantic(lambda: step(None), rounds=2000 if n < 1 << 17 else 200, iterations=1,
                       warmup_rounds=20)
    t1 = bench.median_time(lambda: step(1), repeat=400 if n < 1 << 17 else 60)
    _core = backend.core()   # the compiled core's tuning hooks
    before = _core.min_bytes_per_thread()
    _core.set_min_bytes_per_thread(0)   # really two threads, whatever the size
    try:
        t2 = bench.median_time(lambda: step(2), repeat=400 if n < 1 << 17 else 60)
    finally:
        _core.set_min_bytes_per_thread(before)
    record(benchmark, ADAM_BYTES * n, one_thread_ms=t1 * 1e3, two_threads_ms=t2 * 1e3,
           default_threads=_core.planned_threads(4 * n),
           default_over_one=round(benchmark.stats.stats.median / t1, 3))
