"""lrcore's threads next to PyTorch's in one process: the Adam step on two threads while
torch runs an op loop in another Python thread (torch.set_num_threads(2)).

Each row records the step's median time with torch idle and with torch busy, and torch's
op rate alone and while lrcore steps, so both sides of the competition show. Run:
python -m pytest bench/test_bench_threads.py --benchmark-only
"""
import threading
import time

import numpy as np
import pytest

import lrcore

from conftest import record

torch = pytest.importorskip("torch")

ADAM_BYTES = 28            # float32 Adam: read param, grad, exp_avg, exp_avg_sq; write three
TORCH_ELEMENTS = 1 << 20   # torch's op: z = x + y over 4 MiB float32 tensors (parallel_for)
THREADS = 2


class TorchLoop:
    """torch.add in a loop on another Python thread (torch releases the GIL inside ops)."""

    def __init__(self):
        self.x = torch.rand(TORCH_ELEMENTS)
        self.y = torch.rand(TORCH_ELEMENTS)
        self.z = torch.empty(TORCH_ELEMENTS)
        self.ops = 0
        self._stop = threading.Event()
        self._thread = None

    def _run(self):
        torch.set_num_threads(THREADS)
        while not self._stop.is_set():
            torch.add(self.x, self.y, out=self.z)
            self.ops += 1

    def __enter__(self):
        self.ops = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        while self.ops < 20:      # torch's pool is up and spinning before we measure
            time.sleep(0.001)
        self.t0, self.ops0 = time.perf_counter(), self.ops
        return self

    def rate(self):
        return (self.ops - self.ops0) / (time.perf_counter() - self.t0)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def torch_alone():
    """torch's op rate with lrcore idle (ops per second)."""
    torch.set_num_threads(THREADS)
    with TorchLoop() as loop:
        time.sleep(1.0)
        return loop.rate()


@pytest.mark.parametrize("torch_busy", [False, True], ids=["torch-idle", "torch-busy"])
@pytest.mark.parametrize("n", [1 << 22, 1 << 24], ids=["2^22", "2^24"])
def test_adam_step_beside_torch(benchmark, torch_alone, n, torch_busy):
    rng = np.random.default_rng(0)
    p = rng.uniform(0.5, 1.5, n).astype(np.float32)
    g = rng.uniform(-1, 1, n).astype(np.float32)
    opt = lrcore.Adam(p, lr=1e-3, num_threads=THREADS)
    opt.step(g)
    benchmark.group = f"Adam float32 {n:,} elements, {THREADS} threads, beside torch"
    rounds = 30 if n <= 1 << 22 else 12
    extra = {"torch_busy": torch_busy, "threads": THREADS}
    if torch_busy:
        with TorchLoop() as loop:
            benchmark.pedantic(opt.step, args=(g,), rounds=rounds, iterations=1, warmup_rounds=2)
            rate = loop.rate()
        extra.update(torch_ops_per_s_alone=round(torch_alone, 1),
                     torch_ops_per_s_during=round(rate, 1),
                     torch_rate_kept=round(rate / torch_alone, 3))
    else:
        torch.add(torch.ones(TORCH_ELEMENTS), 1.0)   # torch's pool exists but is idle
        benchmark.pedantic(opt.step, args=(g,), rounds=rounds, iterations=1, warmup_rounds=2)
    record(benchmark, ADAM_BYTES * n, **extra)
