"""Checkpoint load: peak memory beyond the destinations, and time, for an Adam checkpoint.

Run: python -m pytest bench/test_bench_checkpoint.py --benchmark-only -s
or, for one figure: python bench/test_bench_checkpoint.py [elements] [path/to/checkpoint.py]
(the second argument measures another implementation of lrcore.checkpoint, e.g. an older
one from `git show <commit>:src/lrcore/checkpoint.py`).

The load runs in a fresh process whose destinations (params and Adam state) are already
written, so that only the load's own allocations raise the peak: the kernel's high-water
mark of resident memory (VmHWM) is reset through /proc/self/clear_refs just before the load
and read after it. tracemalloc's peak (numpy reports its buffers to it) is measured too.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

MEASURE = textwrap.dedent('''
    import importlib.util, json, os, sys, time, tracemalloc
    import numpy as np
    import lrcore
    n, path, impl = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    ckpt = lrcore.checkpoint
    if impl:
        spec = importlib.util.spec_from_file_location("lrcore._bench_checkpoint", impl)
        ckpt = importlib.util.module_from_spec(spec)
        ckpt.__package__ = "lrcore"
        spec.loader.exec_module(ckpt)
    shapes = [(n // 2,), (n // 4,), (n // 8, 2), (n // 8,)]
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    opt = lrcore.Adam(params, lr=0.01)
    opt.step([np.ones_like(p) for p in params])
    lrcore.checkpoint.save(path, opt)
    del opt, params
    target = lrcore.Adam([np.zeros(s, np.float32) for s in shapes], lr=0.01)
    grads = [np.full(s, 0.5, np.float32) for s in shapes]
    target.step(grads)                     # every destination page written once
    del grads

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                       # reset VmHWM to the current VmRSS
    rss = status("VmRSS")
    tracemalloc.start()
    t = time.perf_counter()
    ckpt.load(path, target)
    seconds = time.perf_counter() - t
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    hwm = status("VmHWM")
    print(json.dumps({"file_bytes": os.path.getsize(path), "rss_growth": hwm - rss,
                      "traced_peak": traced, "seconds": seconds,
                      "largest_array": max(p.nbytes for p in target.params)}))
''')


def measure(n=1 << 24, impl="", directory="/tmp"):
    """Load figures for an Adam checkpoint of `n` float32 parameters, in a fresh process."""
    path = os.path.join(directory, f"lrcore-bench-{os.getpid()}.lrc")
    try:
        run = subprocess.run([sys.executable, "-c", MEASURE, str(n), path, impl],
                             capture_output=True, text=True, timeout=600, check=True)
    finally:
        if os.path.exists(path):
            os.unlink(path)
    return json.loads(run.stdout)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux /proc only")
def test_load_peak_memory(benchmark, tmp_path):
    fig = benchmark.pedantic(measure, kwargs=dict(directory=str(tmp_path)), rounds=3,
                             iterations=1)
    benchmark.extra_info.update(fig)
    mib = 1 << 20
    print(f"\nload of a {fig['file_bytes'] / mib:.0f} MiB Adam checkpoint: resident memory "
          f"+{fig['rss_growth'] / mib:.1f} MiB, traced peak {fig['traced_peak'] / mib:.1f} MiB, "
          f"{fig['seconds']:.3f} s")
    assert fig["rss_growth"] <= fig["file_bytes"] + fig["largest_array"]


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 1 << 24,
                             sys.argv[2] if len(sys.argv) > 2 else "")))
