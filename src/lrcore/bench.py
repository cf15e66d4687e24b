"""Measuring lrcore against the memory system: the shared machinery of `lrcore bench` and bench/.

Every measurement is a median of repeated timed calls, reported as bytes moved per second
and as a fraction of the bandwidth probe measured on the same buffers in the same run
(`_core.probe`: the same read and read-modify-write streams as the update rule, almost no
arithmetic). Implementations compared on one buffer set: lrcore's compiled kernel, the
numpy in-place reference (the baseline) and PyTorch's fused optimizer when torch is
installed. Which kernels and hyperparameters run comes from lrcore.registry (the same
registry the tests use) and the optimizers as users name them from lrcore.rules.PRESETS.
"""
import json
import platform
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import backend, kernels, reference
from .registry import call, make_state, spec
from .rules import PRESETS, RULES

__all__ = ["BENCH_CASES", "Buffers", "median_time", "make_buffers", "native_step", "numpy_step",
           "probe_step", "torch_step", "torch_has", "Row", "run", "format_table"]


# The configuration each benchmark row runs beyond the preset's own settings: SGD as it is
# usually run, with momentum.
_TYPICAL = {"sgd": {"momentum": 0.9}}


def _bench_cases():
    """(label, KernelSpec, Case): one row per optimizer of lrcore.rules.PRESETS (each rule,
    and AdamW), in its common configuration: the registry case with the preset's fixed
    and default values, every other variant-selecting option at its default."""
    out = []
    for p in PRESETS.values():
        kspec = spec(p.rule)
        want = dict(p.fixed, **p.defaults, **_TYPICAL.get(p.name, {}))
        want = {k: v for k, v in want.items() if v != RULES[p.rule].hyper(k).default}
        case = next(c for c in kspec.cases
                    if {k: v for k, v in c.hyper.items()
                        if v != RULES[p.rule].hyper(k).default} == want and not any(c.options.values()))
        out.append((p.name, kspec, case))
    return tuple(out)


BENCH_CASES = _bench_cases()


def median_time(fn, *, repeat=15, warmup=2, max_seconds=None):
    """Median wall time of fn() over `repeat` calls (fewer if max_seconds runs out)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if max_seconds is not None and time.perf_counter() - start > max_seconds and len(times) >= 3:
            break
    return float(np.median(times))


@dataclass
class Buffers:
    """One parameter, its gradient and its state buffers, allocated the ordinary numpy way."""
    param: np.ndarray
    grad: np.ndarray
    state: dict

    @property
    def n(self):
        return self.param.size


def make_buffers(kspec, case, n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    param = rng.uniform(0.5, 1.5, n).astype(dtype)
    grad = rng.uniform(-1.0, 1.0, n).astype(dtype)
    state = make_state(kspec, case, param)
    for v in state.values():   # touch every page and use realistic non-zero state
        v += dtype(0.25)
    return Buffers(param, grad, state)


def native_step(kspec, case, buf, threads, step=5):
    return lambda: call(kernels, kspec, case, buf.param, buf.grad, buf.state, step,
                        num_threads=threads)


def numpy_step(kspec, case, buf, step=5):
    return lambda: call(reference, kspec, case, buf.param, buf.grad, buf.state, step)


def probe_step(buf, threads):
    """The probe on the very buffers the kernel runs on: where the buffers sit in memory
    changes what the memory system delivers (seen here: one placement of two 64 MiB
    buffers halves the bandwidth of every access pattern). scale=0 keeps the data."""
    states = list(buf.state.values())
    return lambda: backend.probe(buf.param, buf.grad, *states, scale=0.0, num_threads=threads)


_TORCH_FUSED = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "adagrad": "Adagrad"}


def torch_has(label):
    """Whether torch.optim has this optimizer (Lion is not in torch)."""
    return PRESETS[label].torch_class is not None and torch_available()


def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def torch_step(label, kspec, case, buf, threads):
    """torch.optim on the same memory (zero-copy): fused=True where torch has a fused CPU
    kernel (SGD, Adam, AdamW, Adagrad), its default (foreach) implementation otherwise.
    Returns (callable, description)."""
    import torch
    torch.set_num_threads(threads)
    p = torch.from_numpy(buf.param)
    p.grad = torch.from_numpy(buf.grad)
    params = [torch.nn.Parameter(p, requires_grad=True)]
    params[0].grad = p.grad
    hyper = dict(case.hyper)
    lr = kspec.lr
    name = PRESETS[label].torch_class
    kwargs = {"lr": lr}
    rule = kspec.rule
    for k, x in hyper.items():   # by the table's names; betas as torch's tuple
        if k in ("beta1", "beta2"):
            betas = kwargs.setdefault("betas", [rule.hyper("beta1").default,
                                                rule.hyper("beta2").default])
            betas[k == "beta2"] = x
        elif k != "decoupled_weight_decay" or name != "AdamW":
            kwargs[k] = x
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    fused = label in _TORCH_FUSED
    if fused:
        kwargs["fused"] = True
    opt = getattr(torch.optim, name)(params, **kwargs)
    opt.step()  # allocate state
    return opt.step, f"torch.optim.{name}({'fused=True' if fused else 'default'})"


@dataclass
class Row:
    optimizer: str
    dtype: str
    elements: int
    threads: int
    bytes_per_element: int
    ms: float
    gbps: float
    probe_gbps: float
    fraction: float
    numpy_ms: float = None
    speedup_numpy: float = None
    torch_ms: float = None
    speedup_torch: float = None
    torch_impl: str = None


def measure(label, kspec, case, n, dtype, threads, *, repeat=15, with_numpy=True,
            with_torch=True, max_seconds=None):
    """Measure lrcore, the probe, numpy and torch on one buffer set; returns a Row."""
    buf = make_buffers(kspec, case, n, dtype)
    bpe = kspec.bytes_per_element(case, np.dtype(dtype).itemsize)
    nbytes = bpe * n
    # interleave probe and kernel measurements so a noisy neighbour hits both alike
    t_probe, t_kernel = [], []
    for _ in range(3):
        t_probe.append(median_time(probe_step(buf, threads), repeat=max(3, repeat // 3),
                                   max_seconds=max_seconds))
        t_kernel.append(median_time(native_step(kspec, case, buf, threads),
                                    repeat=max(3, repeat // 3), max_seconds=max_seconds))
    tp, tk = float(np.median(t_probe)), float(np.median(t_kernel))
    row = Row(label, np.dtype(dtype).name, n, threads, bpe, tk * 1e3, nbytes / tk / 1e9,
              nbytes / tp / 1e9, tp / tk)
    if with_numpy:
        tn = median_time(numpy_step(kspec, case, buf), repeat=max(3, repeat // 5), warmup=1,
                         max_seconds=max_seconds)
        row.numpy_ms, row.speedup_numpy = tn * 1e3, tn / tk
    if with_torch and torch_available() and PRESETS[label].torch_class:
        fn, desc = torch_step(label, kspec, case, buf, threads)
        tt = median_time(fn, repeat=max(3, repeat // 3), max_seconds=max_seconds)
        row.torch_ms, row.speedup_torch, row.torch_impl = tt * 1e3, tt / tk, desc
    return row


def run(quick=False, threads=(1, 2), optimizers=None, progress=None):
    """The `lrcore bench` suite. quick: 2^20 and 2^22 float32 elements, few repeats."""
    if quick:
        sizes = [(1 << 20, np.float32), (1 << 22, np.float32)]
        repeat, max_seconds = 6, 0.5
    else:
        sizes = [(1 << 18, np.float32), (1 << 20, np.float32), (1 << 24, np.float32),
                 (1 << 26, np.float32), (1 << 24, np.float64)]
        repeat, max_seconds = 21, 4.0
    rows = []
    for label, kspec, case in BENCH_CASES:
        if optimizers and label not in optimizers:
            continue
        for n, dtype in sizes:
            for t in threads:
                row = measure(label, kspec, case, n, dtype, t, repeat=repeat,
                              max_seconds=max_seconds, with_numpy=True,
                              with_torch=True)
                rows.append(row)
                if progress:
                    progress(row)
    return rows


def machine_info():
    import lrcore
    return {"lrcore": lrcore.__version__, "isa": lrcore.isa(), "backend": lrcore.backend(),
            "numpy": np.__version__, "machine": platform.machine(),
            "processor": platform.processor(), "python": platform.python_version()}


def format_table(rows):
    head = ("optimizer", "dtype", "elements", "thr", "ms/step", "GB/s", "probe GB/s",
            "of probe", "vs numpy", "vs torch")
    lines = []
    for r in rows:
        lines.append((r.optimizer, r.dtype, f"{r.elements:,}", str(r.threads), f"{r.ms:.3f}",
                      f"{r.gbps:.1f}", f"{r.probe_gbps:.1f}", f"{r.fraction:.2f}",
                      "-" if r.speedup_numpy is None else f"{r.speedup_numpy:.1f}x",
                      "-" if r.speedup_torch is None else f"{r.speedup_torch:.2f}x"))
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.rjust(w) if i >= 2 else c.ljust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    out = [fmt(head), fmt(["-" * w for w in widths])]
    out += [fmt(l) for l in lines]
    return "\n".join(out)


def to_json(rows, path):
    with open(path, "w") as f:
        json.dump({"machine": machine_info(), "rows": [asdict(r) for r in rows]}, f, indent=2)
