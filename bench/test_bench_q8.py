"""Benchmarks of the 8-bit Adam step (lrcore.quantization.adam8, issue 13), kept out of the
default test run.

Run: python -m pytest bench/test_bench_q8.py --benchmark-only
 or: python bench/test_bench_q8.py [log2 n] [threads]   (one side-by-side table: medians of
     8-bit AdamW, lrcore's float32 AdamW and torch's fused float32 AdamW in the same run, and
     the roofline of the 8-bit step: the larger of its memory time at its bytes per element,
     taken as lrcore's float32 AdamW time scaled by 16.06/28 bytes, and its compute time on
     cache-resident data scaled to n and the threads)
"""
import sys
import time

import numpy as np
import pytest

import lrcore
from lrcore import quantization as q

if lrcore.backend() != "native":
    pytest.skip("benchmarks need the compiled backend", allow_module_level=True)

# AdamW with 8-bit moments: param (4 read + 4 write), grad 4, two moments of 1 byte read and
# written plus 4 bytes of absmax per 256 elements each.
BYTES_Q8 = 4 + 4 + 4 + 2 * (1 + 1) + 2 * 2 * 4 / q.BLOCK
BYTES_F32 = 28.0
HP = dict(lr=1e-3, weight_decay=1e-2, decoupled_weight_decay=True)


def _buffers(n, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n, dtype=np.float32)
    g = (rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3))
    return p, g, q.QuantizedState.zeros(n, True), q.QuantizedState.zeros(n, False)


def _median(fn, repeat=7, cpu=None):
    """Median wall time of fn(); with a list `cpu`, also appends the median process CPU time
    (every thread's time on a core: on a shared, loaded machine the wall time of a
    compute-bound step is mostly time spent waiting for a core)."""
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


def _adam8_step(n, threads):
    p, g, m, v = _buffers(n)
    step = [0]

    def run():
        step[0] += 1
        q.adam8(p, g, m, v, step=step[0], num_threads=threads, **HP)
    return run


@pytest.mark.parametrize("log2n", [20, 24])
@pytest.mark.parametrize("threads", [1, 2])
def test_adam8(benchmark, log2n, threads):
    n = 1 << log2n
    run = _adam8_step(n, threads)
    benchmark.extra_info.update(bytes_per_element=BYTES_Q8, n=n, threads=threads)
    benchmark(run)


def table(log2n=24, threads=2):
    """Medians (ms) of one step each, measured in one run."""
    import torch
    torch.set_num_threads(threads)
    n = 1 << log2n
    rows, cpu = {}, []
    rows["lrcore adam8 (8-bit AdamW)"] = _median(_adam8_step(n, threads), cpu=cpu)
    p, g, _, _ = _buffers(n)
    m32, v32 = np.zeros(n, np.float32), np.zeros(n, np.float32)
    rows["lrcore float32 AdamW"] = _median(lambda: lrcore.kernels.adam(
        p, g, m32, v32, step=5, num_threads=threads, **HP), cpu=cpu)
    del m32, v32
    tp = torch.from_numpy(p.copy()).requires_grad_()
    tp.grad = torch.from_numpy(g.copy())
    opt = torch.optim.AdamW([tp], lr=1e-3, weight_decay=1e-2, fused=True)
    rows["torch fused float32 AdamW"] = _median(opt.step, cpu=cpu)
    del tp, opt, p, g
    # roofline: compute time on cache-resident data (2^14 elements, one thread, scaled to n
    # and divided by the threads)
    small = 1 << 14
    run = _adam8_step(small, 1)
    compute = _median(lambda: [run() for _ in range(16)], repeat=9) / 16 * (n / small) / threads
    rows = {k: (t, c) for (k, t), c in zip(rows.items(), cpu)}
    # memory time at BYTES_Q8: lrcore's float32 AdamW (memory-bound at 28 B/element)
    # scaled by the bytes
    memory = rows["lrcore float32 AdamW"][0] * BYTES_Q8 / BYTES_F32
    return rows, compute, memory


def main(argv):
    log2n = int(argv[1]) if len(argv) > 1 else 24
    threads = int(argv[2]) if len(argv) > 2 else 2
    rows, compute, memory = table(log2n, threads)
    torch_t, torch_c = rows["torch fused float32 AdamW"]
    print(f"n = 2^{log2n}, {threads} threads, lrcore ISA {lrcore.isa()}: median of 7 steps, "
          f"wall and process CPU time")
    for name, (t, c) in rows.items():
        print(f"  {name:30s} wall {t * 1e3:8.1f} ms ({torch_t / t:5.2f}x torch)   "
              f"cpu {c * 1e3:8.1f} ms ({torch_c / c:5.2f}x torch)")
    roof = max(compute, memory)
    print(f"  roofline of the 8-bit step: max(compute in cache scaled to n {compute * 1e3:.1f} ms, "
          f"memory at {BYTES_Q8:.2f} B/element {memory * 1e3:.1f} ms) = {roof * 1e3:.1f} ms; "
          f"reached {roof / rows['lrcore adam8 (8-bit AdamW)'][0]:.2f} of it (wall)")


if __name__ == "__main__":
    main(sys.argv)
