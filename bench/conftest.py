"""Benchmarks (pytest-benchmark), kept out of the default test run.

Run: python -m pytest bench/ --benchmark-only [--benchmark-json=out.json]
Every benchmark puts bytes per element, GB/s and the fraction of the bandwidth probe
(measured on the same shapes in the same run) into extra_info. Kernels and
hyperparameters come from lrcore.registry, the registry the tests use.
"""
import numpy as np
import pytest

import lrcore
from lrcore import bench

if lrcore.backend() != "native":
    pytest.skip("benchmarks need the compiled backend", allow_module_level=True)


class _BufferCache:
    """Keep only the most recent buffer set: the largest are 1 GiB each."""

    def __init__(self):
        self.key, self.value, self.probe = None, None, {}

    def get(self, label, kspec, case, n, dtype):
        key = (label, n, np.dtype(dtype).name)
        if key != self.key:
            self.key, self.value = None, None   # free before allocating the next
            self.value = bench.make_buffers(kspec, case, n, dtype)
            self.key = key
        return self.value

    def probe_gbps(self, buf, kspec, case, threads):
        key = (self.key, threads)
        if key not in self.probe:
            t = bench.median_time(bench.probe_step(buf, threads), repeat=15, max_seconds=5)
            nbytes = kspec.bytes_per_element(case, buf.param.itemsize) * buf.n
            self.probe[key] = nbytes / t / 1e9
        return self.probe[key]


@pytest.fixture(scope="session")
def buffers():
    return _BufferCache()


def record(benchmark, nbytes, probe_gbps=None, **extra):
    """Fill extra_info from the benchmark's median."""
    median = benchmark.stats.stats.median
    gbps = nbytes / median / 1e9
    benchmark.extra_info.update(bytes_moved=nbytes, gbps=round(gbps, 2), median_ms=median * 1e3,
                                **extra)
    if probe_gbps:
        benchmark.extra_info.update(probe_gbps=round(probe_gbps, 2),
                                    fraction_of_probe=round(gbps / probe_gbps, 3))
    return gbps
