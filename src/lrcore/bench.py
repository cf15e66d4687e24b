"""Measuring lrcore against the memory system: the shared machinery of `lrcore bench` and bench/.

Every measurement is a median of repeated timed calls, reported as bytes moved per second
and as a fraction of the bandwidth probe measured on the same buffers in the same run
(`_core.probe`: the same read and read-modify-write streams as the update rule, almost no
arithmetic). Implementations compared on one buffer set: lrcore's compiled kernel, the
numpy in-place reference (the baseline) and PyTorch's fused optimizer when torch is
installed. Which kernels and hyperparameters run comes from lrcore.registry (the same
registry the tests use) and the optimizers as users name them from lrcore.rules.PRESETS.

Element types (issues 12, 13): a :class:`Layout` names the dtypes of param, grad and state
(float32, float64, bfloat16, float16; 8-bit state "int8") and the rounding of stored values;
its bytes model (:meth:`Layout.bytes_per_element`) counts each buffer at its own size (8-bit
state: one code byte plus 4 bytes of absmax per BLOCK elements, read and written). The
probe runs on the row's own buffers (viewed as float32) when they all have the same size
(one dtype for everything); otherwise on float32 buffers of the same rule and element count,
in the same run, and the row is marked (`probe_on="float32"`). Half-precision rows are
compared with torch's fused optimizer on bfloat16 params (all-bfloat16 rows, where torch has
a fused kernel) and the others with torch's fused float32 optimizer (`torch_impl` says which).
"""
import json
import platform
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import backend, kernels, lowp, quantization, reference
from .registry import call, make_state, spec
from .rules import PRESETS, RULES

__all__ = ["BENCH_CASES", "Buffers", "median_time", "make_buffers", "native_step", "numpy_step",
           "probe_step", "torch_step", "torch_has", "Row", "run", "format_table", "Layout",
           "layouts", "int8_states", "DTYPES", "STATE_DTYPES"]


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


# ----------------------------------------------------------------------------------------
# Element types: layouts and their bytes model
# ----------------------------------------------------------------------------------------

#: dtype names a row's param and grad may have, and their numpy dtypes
DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64),
          "bfloat16": lowp.bfloat16, "float16": np.dtype(np.float16)}
STATE_DTYPES = ("float32", "float64", "bfloat16", "int8")
_SHORT = {"float32": "f32", "float64": "f64", "bfloat16": "bf16", "float16": "f16",
          "int8": "int8"}


def int8_states(rule_name):
    """{state name: signed} of a rule's 8-bit states (lrcore.quantization.INT8_RULES, as
    lrcore.optim reads it), or {} when the rule has none."""
    from .optim import precision
    return precision.int8_rules().get(rule_name, {})


@dataclass(frozen=True)
class Layout:
    """Dtype names of (param, grad, state) and the rounding of stored values (None when
    nothing is stored in half precision: rounding has no effect)."""
    param: str = "float32"
    grad: str = "float32"
    state: str = "float32"
    rounding: str = None

    @property
    def plain(self):
        """float32 or float64 everywhere: the original rows."""
        return self.param == self.grad == self.state and self.param in ("float32", "float64")

    @property
    def label(self):
        """e.g. 'f32', 'bf16 sr' (one dtype everywhere) or 'bf16/bf16/f32 nearest'."""
        names = (self.param, self.grad, self.state)
        text = _SHORT[self.param] if len(set(names)) == 1 else "/".join(_SHORT[n] for n in names)
        return text + ({"stochastic": " sr", "nearest": " nearest"}[self.rounding]
                       if self.rounding else "")

    def state_bytes(self, kspec, case, name):
        """Bytes of state buffer `name` per element (8-bit: code + absmax share)."""
        if self.state == "int8" and name in int8_states(kspec.name):
            return 1 + 4 / quantization.BLOCK
        return float(DTYPES["float32" if self.state == "int8" else self.state].itemsize)

    def bytes_per_element(self, kspec, case, step=2):
        """Bytes one step moves per element: param read and written, grad read, each state
        of the case read and written (SGD's momentum buffer only written at step 1)."""
        p, g = DTYPES[self.param].itemsize, DTYPES[self.grad].itemsize
        total = 2 * p + g
        for name in case.states:
            b = self.state_bytes(kspec, case, name)
            total += b if (kspec.name == "sgd" and step <= 1) else 2 * b
        return int(total) if float(total).is_integer() else round(total, 4)


def int8_param_dtypes():
    """The param dtypes 8-bit state takes: float32 and bfloat16 through
    lrcore.quantization.step, float32 only where that is absent (quantization.adam8)."""
    return ("float32", "bfloat16") if hasattr(quantization, "step") else ("float32",)


def check_layout(kspec, layout):
    """A ValueError naming the layout when lrcore has no kernel for it (issue 12's table of
    layouts; 8-bit state for the rules of INT8_RULES with float32 or bfloat16 params)."""
    if layout.state == "int8":
        if not int8_states(kspec.name):
            raise ValueError(f"8-bit state is not supported for {kspec.name}")
        allowed = int8_param_dtypes()
        if layout.param not in allowed or layout.grad != layout.param:
            raise ValueError(f"8-bit state takes {' or '.join(allowed)} params with grads of "
                             f"the same type, got param {layout.param}, grad {layout.grad}")
        return
    if (layout.param, layout.grad, layout.state) not in lowp.LAYOUTS:
        raise ValueError(f"param {layout.param}, grad {layout.grad}, state {layout.state} is "
                         f"not a supported layout ({lowp.layouts_text()})")


def _stores_half(param, state):
    return param in ("bfloat16", "float16") or state == "bfloat16"


def layouts(dtype, grad_dtype=None, state_dtype=None, roundings=None):
    """The Layouts `lrcore bench --dtype D [--grad-dtype G] [--state-dtype S] [--rounding R]`
    runs: grad defaults to the param's dtype, state to lrcore.optim's default (the param's
    dtype; float32 for float16), rounding to both modes where something is stored in half
    precision. ValueError for a combination lrcore has no kernel for (not rule-specific:
    int8 is checked per optimizer by check_layout)."""
    grad = grad_dtype or dtype
    state = state_dtype or ("float32" if dtype == "float16" else dtype)
    if state != "int8" and (dtype, grad, state) not in lowp.LAYOUTS:
        raise ValueError(f"param {dtype}, grad {grad}, state {state} is not a supported "
                         f"layout; supported: {lowp.layouts_text()}; and 8-bit state with "
                         f"float32 or bfloat16 params")
    if state == "int8" and grad != dtype:
        raise ValueError(f"8-bit state takes grads of the params' type, got param {dtype}, "
                         f"grad {grad}")
    if not _stores_half(dtype, state):
        return [Layout(dtype, grad, state, None)]
    return [Layout(dtype, grad, state, r) for r in (roundings or lowp.ROUNDINGS)]


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
    name = PRESETS[label].torch_class
    kwargs = _torch_kwargs(label, kspec, case)
    fused = label in _TORCH_FUSED
    if fused:
        kwargs["fused"] = True
    opt = getattr(torch.optim, name)(params, **kwargs)
    opt.step()  # allocate state
    return opt.step, f"torch.optim.{name}({'fused=True' if fused else 'default'})"


def _torch_kwargs(label, kspec, case):
    """torch.optim's keyword arguments for one case (the table's names; betas a tuple)."""
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
    return kwargs


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
    layout: str = None          # Layout.label ('f32', 'bf16 sr', 'f32/f32/int8', ...)
    grad_dtype: str = None
    state_dtype: str = None
    rounding: str = None        # None: nothing stored in half precision
    probe_on: str = "same buffers"   # or "float32": see the module docstring


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


# ----------------------------------------------------------------------------------------
# Rows of other layouts: half-precision buffers, 8-bit state
# ----------------------------------------------------------------------------------------


def make_layout_buffers(kspec, case, n, layout, seed=0):
    """Buffers of one layout: the values of make_buffers, stored in the layout's dtypes;
    8-bit states start at zero (the warm-up steps before timing fill them)."""
    if layout.plain:
        return make_buffers(kspec, case, n, DTYPES[layout.param].type, seed)
    rng = np.random.default_rng(seed)
    param = rng.uniform(0.5, 1.5, n).astype(np.float32).astype(DTYPES[layout.param])
    grad = rng.uniform(-1.0, 1.0, n).astype(np.float32).astype(DTYPES[layout.grad])
    rule = kspec.rule
    values = dict(case.hyper, **case.options)
    q8 = int8_states(kspec.name) if layout.state == "int8" else {}
    sdt = DTYPES["float32" if layout.state == "int8" else layout.state]
    state = {}
    for st in rule.states:
        if st.name not in case.states:
            continue
        if st.name in q8:
            state[st.name] = quantization.QuantizedState.zeros(n, q8[st.name])
        else:
            state[st.name] = np.full(n, rule.initial_value(st, values) + 0.25,
                                     np.float32).astype(sdt)
    return Buffers(param, grad, state)


def layout_step(kspec, case, buf, layout, threads, step=5, module=None):
    """One step of the layout's kernel (lrcore.kernels, or `module`: a backend namespace);
    8-bit state through lrcore.quantization.step (adam8 where that is absent)."""
    module = module or kernels
    rounding = layout.rounding or "nearest"
    if layout.state == "int8":
        if hasattr(quantization, "step"):
            return lambda: quantization.step(
                kspec.name, buf.param, buf.grad, buf.state, step=step, rounding=rounding,
                seed=1, num_threads=threads, lr=kspec.lr, **case.hyper)
        args = [buf.state.get(name) for name in kspec.states]
        while args and args[-1] is None:
            args.pop()
        return lambda: quantization.adam8(buf.param, buf.grad, *args, lr=kspec.lr, step=step,
                                          num_threads=threads, **case.hyper)
    extra = {} if layout.plain else {"rounding": rounding, "seed": 1}
    if module is not kernels:
        return lambda: call(module, kspec, case, buf.param, buf.grad, buf.state, step, **extra)
    return lambda: call(kernels, kspec, case, buf.param, buf.grad, buf.state, step,
                        num_threads=threads, **extra)


def _same_size(buf):
    arrays = [buf.param, buf.grad] + list(buf.state.values())
    return all(isinstance(a, np.ndarray) for a in arrays) and \
        len({a.nbytes for a in arrays}) == 1 and buf.param.nbytes % 4 == 0


def _torch_bf16_step(label, kspec, case, buf, threads):
    """torch.optim's fused optimizer on the row's own bfloat16 param and grad (zero-copy:
    the bits viewed as torch.bfloat16; torch keeps its own bfloat16 state and rounds to
    nearest). None when torch has no fused kernel for it."""
    import torch
    torch.set_num_threads(threads)
    p = torch.from_numpy(buf.param.view(np.int16)).view(torch.bfloat16)
    param = torch.nn.Parameter(p, requires_grad=True)
    param.grad = torch.from_numpy(buf.grad.view(np.int16)).view(torch.bfloat16)
    name = PRESETS[label].torch_class
    kwargs = _torch_kwargs(label, kspec, case)
    try:
        opt = getattr(torch.optim, name)([param], fused=True, **kwargs)
        opt.step()
    except (RuntimeError, TypeError, ValueError):
        return None
    return opt.step, f"torch.optim.{name}(fused=True) on bfloat16 params"


def measure_layout(label, kspec, case, n, layout, threads, *, repeat=15, with_numpy=True,
                   with_torch=True, max_seconds=None):
    """measure() for any layout; returns a Row whose bytes come from the layout's model."""
    if layout.plain:
        row = measure(label, kspec, case, n, DTYPES[layout.param].type, threads,
                      repeat=repeat, with_numpy=with_numpy, with_torch=with_torch,
                      max_seconds=max_seconds)
        row.layout, row.grad_dtype, row.state_dtype = layout.label, layout.grad, layout.state
        return row
    check_layout(kspec, layout)
    buf = make_layout_buffers(kspec, case, n, layout)
    bpe = layout.bytes_per_element(kspec, case)
    nbytes = bpe * n
    kernel = layout_step(kspec, case, buf, layout, threads)
    if _same_size(buf):
        probe_buf, probe_on = Buffers(*(a.view(np.float32) for a in (buf.param, buf.grad)),
                                      {k: v.view(np.float32) for k, v in buf.state.items()}), \
            "same buffers"
        probe_bytes = nbytes
    else:
        probe_buf, probe_on = make_buffers(kspec, case, n, np.float32), "float32"
        probe_bytes = kspec.bytes_per_element(case, 4) * n
    t_probe, t_kernel = [], []
    for _ in range(3):
        t_probe.append(median_time(probe_step(probe_buf, threads), repeat=max(3, repeat // 3),
                                   max_seconds=max_seconds))
        t_kernel.append(median_time(kernel, repeat=max(3, repeat // 3),
                                    max_seconds=max_seconds))
    tp, tk = float(np.median(t_probe)), float(np.median(t_kernel))
    probe_gbps = probe_bytes / tp / 1e9
    gbps = nbytes / tk / 1e9
    row = Row(label, layout.param, n, threads, bpe, tk * 1e3, gbps, probe_gbps,
              gbps / probe_gbps, layout=layout.label, grad_dtype=layout.grad,
              state_dtype=layout.state, rounding=layout.rounding, probe_on=probe_on)
    if with_numpy and layout.state != "int8":
        twin = layout_step(kspec, case, buf, layout, threads,
                           module=backend.implementation("python"))
        tn = median_time(twin, repeat=max(3, repeat // 5), warmup=1, max_seconds=max_seconds)
        row.numpy_ms, row.speedup_numpy = tn * 1e3, tn / tk
    if with_torch and torch_available() and PRESETS[label].torch_class:
        found = None
        if layout.param == layout.grad == layout.state == "bfloat16" and label in _TORCH_FUSED:
            found = _torch_bf16_step(label, kspec, case, buf, threads)
        if found is None:
            if probe_on != "float32":
                probe_buf = make_buffers(kspec, case, n, np.float32)
            found = torch_step(label, kspec, case, probe_buf, threads)
            found = found[0], found[1] + " on float32 params"
        fn, desc = found
        tt = median_time(fn, repeat=max(3, repeat // 3), max_seconds=max_seconds)
        row.torch_ms, row.speedup_torch, row.torch_impl = tt * 1e3, tt / tk, desc
    return row


def run(quick=False, threads=(1, 2), optimizers=None, progress=None, layouts=None):
    """The `lrcore bench` suite. quick: 2^20 and 2^22 float32 elements, few repeats.
    layouts: Layouts to run instead of float32 (and float64 at 2^24 in the full run), at
    2^20 and 2^22 elements (quick) or 2^18, 2^20, 2^24 and 2^26; rows of 8-bit state only
    for the optimizers whose rule has it."""
    if quick:
        sizes = [(1 << 20, np.float32), (1 << 22, np.float32)]
        repeat, max_seconds = 6, 0.5
    else:
        sizes = [(1 << 18, np.float32), (1 << 20, np.float32), (1 << 24, np.float32),
                 (1 << 26, np.float32), (1 << 24, np.float64)]
        repeat, max_seconds = 21, 4.0
    if layouts:
        plan = [(n, lay) for lay in layouts for n, dt in sizes if dt is np.float32]
    else:
        plan = [(n, Layout(np.dtype(dt).name, np.dtype(dt).name, np.dtype(dt).name))
                for n, dt in sizes]
    rows = []
    for label, kspec, case in BENCH_CASES:
        if optimizers and label not in optimizers:
            continue
        for n, lay in plan:
            if lay.state == "int8" and not int8_states(kspec.name):
                continue
            for t in threads:
                if lay.plain and not layouts:
                    row = measure(label, kspec, case, n, DTYPES[lay.param].type, t,
                                  repeat=repeat, max_seconds=max_seconds, with_numpy=True,
                                  with_torch=True)
                else:
                    row = measure_layout(label, kspec, case, n, lay, t, repeat=repeat,
                                         max_seconds=max_seconds)
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
    """The rows as a text table. 'dtype' is the element type, or for other layouts
    param/grad/state (one name when they agree) and the rounding; 'B/el' the bytes model;
    a probe figure marked * was measured on float32 buffers (see the module docstring)."""
    head = ("optimizer", "dtype", "elements", "thr", "B/el", "ms/step", "GB/s", "probe GB/s",
            "of probe", "vs numpy", "vs torch")
    lines = []
    for r in rows:
        mark = "*" if r.probe_on == "float32" else ""
        lines.append((r.optimizer, r.layout or r.dtype, f"{r.elements:,}", str(r.threads),
                      f"{r.bytes_per_element:g}", f"{r.ms:.3f}",
                      f"{r.gbps:.1f}", f"{r.probe_gbps:.1f}{mark}", f"{r.fraction:.2f}",
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
