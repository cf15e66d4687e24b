"""One step of each update rule on one buffer: lrcore vs the probe, numpy and torch."""
import numpy as np
import pytest

from lrcore import bench

from conftest import record

SIZES = [(1 << 18, np.float32), (1 << 20, np.float32), (1 << 24, np.float32),
         (1 << 26, np.float32), (1 << 24, np.float64)]
IMPLS = ["lrcore", "numpy", "torch"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n,dtype", SIZES, ids=[f"{n}-{np.dtype(d).name}" for n, d in SIZES])
@pytest.mark.parametrize("label,kspec,case", bench.BENCH_CASES,
                         ids=[c[0] for c in bench.BENCH_CASES])
def test_step(benchmark, buffers, label, kspec, case, n, dtype, threads, impl):
    if impl == "numpy" and threads != 1:
        pytest.skip("numpy runs on one thread")
    if impl == "torch" and not bench.torch_has(label):
        pytest.skip("torch not installed, or torch.optim has no such optimizer")
    buf = buffers.get(label, kspec, case, n, dtype)
    benchmark.group = f"{label} {np.dtype(dtype).name} {n} threads={threads}"
    nbytes = kspec.bytes_per_element(case, buf.param.itemsize) * n
    probe = buffers.probe_gbps(buf, kspec, case, threads)
    big = n >= 1 << 24
    if impl == "lrcore":
        fn, desc = bench.native_step(kspec, case, buf, threads), "lrcore"
        rounds = 15 if big else 60
    elif impl == "numpy":
        fn, desc = bench.numpy_step(kspec, case, buf), "numpy in-place (lrcore.reference)"
        rounds = 3 if big else 10
    else:
        fn, desc = bench.torch_step(label, kspec, case, buf, threads)
        rounds = 10 if big else 40
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=2)
    record(benchmark, nbytes, probe, implementation=desc, bytes_per_element=nbytes // n)
