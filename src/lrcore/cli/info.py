"""`lrcore info` (also plain `lrcore` or `python -m lrcore`): what is installed and in use,
the CPU features that select the compiled code's paths, then a short self-check under every
instruction set this CPU runs. Three kernel families, each result equal to its numpy twin bit
for bit:

- float32/float64: every kernel case of the test registry (each loop variant), a few steps
  on a few sizes, against lrcore.reference;
- bfloat16/float16: every rule in every half-precision layout of lrcore.lowp.LAYOUTS with
  nearest and with stochastic rounding (its loop variants taking turns), against
  lrcore.lowp.twin_step;
- 8-bit state: lrcore.quantization.step (lrcore.optim's state_dtype="int8" step) of every
  rule with 8-bit state, float32 and bfloat16 params, against quantization.step_reference.

Design: a case is a function of one argument, `twin` (True: the numpy twin, False: the
selected backend), returning the buffers its steps leave; the twins run once and every
instruction set's results are compared with theirs."""
import functools
import platform
import sys
import textwrap

import numpy as np

from .. import backend, lowp, quantization, reference, rules
from ..registry import KERNEL_SPECS, call, make_state
from . import EXIT_FAILED, CLIError

HELP = ("versions, backend, instruction set, CPU features, threads; kernel self-check (the "
        "default command)")
SIZES = (1, 17, 1003)       # one element, a SIMD tail, several vectors and a tail
STEPS = 3
HALF_SIZE = 75              # 16-bit data: two AVX-512 vectors of 32 and a tail of 11
HALF_STEPS = 2
Q8_SIZE = 2 * quantization.BLOCK + 37      # two blocks and a partial one
Q8_STEPS = 2
SEED, INDEX_OFFSET = 2 ** 64 - 3, 5        # of the stochastic-rounding stream

#: The CPU features the compiled core tests (lrcore/csrc/runtime.c: the avx2 build needs
#: AVX2, FMA and F16C, the avx512 build AVX-512 F, VL, BW, DQ and F16C; lrcore/csrc/q8_isa.c:
#: the avx512 build's 8-bit decoder uses AVX512-VBMI byte permutes where the CPU also has
#: AVX-512 BW), by their names in /proc/cpuinfo. Nothing else selects a code path.
CPU_FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512vl", "avx512bw", "avx512dq",
                "avx512vbmi")

#: 8-bit step cases: per rule of INT8_RULES, hyperparameters that make each 8-bit state
#: present (a rule not listed runs with its defaults).
Q8_HYPER = {"adam": ({}, {"amsgrad": True, "weight_decay": 0.01}),
            "nadam": ({},), "radam": ({},), "sgd": ({"momentum": 0.9},),
            "rmsprop": ({"momentum": 0.9},), "lion": ({"weight_decay": 0.1},)}
#: (param, grad, rounding) of the 8-bit cases: float32; bfloat16 rounded both ways; float32
#: params with bfloat16 grads (offload)
Q8_LAYOUTS = (("float32", "float32", "nearest"), ("bfloat16", "bfloat16", "nearest"),
              ("bfloat16", "bfloat16", "stochastic"), ("float32", "bfloat16", "nearest"))

_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64),
           "bfloat16": np.dtype(lowp.bfloat16), "float16": np.dtype(np.float16)}


def _same(a, b):
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


# ---------------------------------------------------------------------------- the cases


def _float_case(kspec, case, dtype, sizes, steps, twin):
    out = []
    for n in sizes:
        rng = np.random.default_rng(n)
        p = rng.uniform(0.5, 1.5, n).astype(dtype)
        st = make_state(kspec, case, p)
        for step in range(1, steps + 1):
            g = rng.uniform(-1, 1, n).astype(dtype)
            call(reference if twin else backend.kernels, kspec, case, p, g, st, step)
        out += [p] + [st[k] for k in sorted(st)]
    return out


def float_cases(sizes=SIZES, steps=STEPS):
    """{'rule/case dtype': case} of the float32 and float64 kernels (every loop variant)."""
    return {f"{kspec.name}/{case.name} {np.dtype(dtype).name}":
            functools.partial(_float_case, kspec, case, dtype, sizes, steps)
            for kspec in KERNEL_SPECS for case in kspec.cases
            for dtype in (np.float32, np.float64)}


def _half_case(kspec, case, layout, rounding, n, steps, twin):
    pdt, gdt, sdt = (_DTYPES[d] for d in layout)
    rng = np.random.default_rng(n)
    p = rng.uniform(0.5, 1.5, n).astype(np.float32).astype(pdt)
    values = dict(case.hyper, **case.options)
    st = {s.name: np.full(n, kspec.rule.initial_value(s, values), dtype=sdt)
          for s in kspec.rule.states if s.name in case.states}
    names = ["param", "grad"] + list(kspec.states)
    kw = dict(rounding=rounding, seed=SEED, index_offset=INDEX_OFFSET)
    for step in range(1, steps + 1):
        g = rng.uniform(-1, 1, n).astype(np.float32).astype(gdt)
        if twin:
            lowp.twin_step(getattr(reference, kspec.name), names,
                           [p, g] + [st.get(s) for s in kspec.states], lr=kspec.lr, step=step,
                           **case.hyper, **kw)
        else:
            call(backend.kernels, kspec, case, p, g, st, step, **kw)
    return [p] + [st[k] for k in sorted(st)]


def half_layouts():
    """The layouts of lrcore.lowp.LAYOUTS that store bfloat16 or float16 buffers."""
    return [tuple(lay) for lay in lowp.LAYOUTS
            if any(d in ("bfloat16", "float16") for d in lay)]


def half_cases(n=HALF_SIZE, steps=HALF_STEPS):
    """{'rule/case param/grad/state rounding': case}: every rule in every half-precision
    layout with nearest and with stochastic rounding, its loop variants (registry cases)
    taking turns (tests/test_lowp_kernels.py runs every variant in every layout)."""
    out = {}
    for kspec in KERNEL_SPECS:
        k = 0
        for layout in half_layouts():
            for rounding in lowp.ROUNDINGS:
                case = kspec.cases[k % len(kspec.cases)]
                k += 1
                out[f"{kspec.name}/{case.name} {'/'.join(layout)} {rounding}"] = \
                    functools.partial(_half_case, kspec, case, layout, rounding, n, steps)
    return out


def _q8_case(name, hyper, layout, n, steps, twin):
    pname, gname, rounding = layout
    row = rules.RULES[rules.preset(name).rule]
    hp = dict(hyper)       # options (amsgrad) say which states are present, not passed
    values = dict(hp, **{o.name: hp.pop(o.name) for o in row.options if o.name in hyper})
    int8 = quantization.INT8_RULES[row.name]
    st = {s.name: (quantization.QuantizedState.zeros(n, int8[s.name]) if s.name in int8
                   else np.zeros(n, np.float32)) for s in row.present_states(values)}
    rng = np.random.default_rng(n)
    p = rng.standard_normal(n).astype(np.float32).astype(_DTYPES[pname])
    fn = quantization.step_reference if twin else quantization.step
    for step in range(1, steps + 1):
        g = (rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 1, n)).astype(np.float32)
        fn(name, p, g.astype(_DTYPES[gname]), st, step=step, lr=1e-2, rounding=rounding,
           seed=SEED, index_offset=INDEX_OFFSET, **hp)
    out = [p]
    for k in sorted(st):
        s = st[k]
        out += [s.codes, s.absmax] if isinstance(s, quantization.QuantizedState) else [s]
    return out


def q8_cases(n=Q8_SIZE, steps=Q8_STEPS):
    """{'rule param/grad rounding': case} of the 8-bit-state step: every rule of
    lrcore.quantization.INT8_RULES (Adam also with AMSGrad and weight decay, and as AdamW),
    in each of Q8_LAYOUTS."""
    out = {}
    for rule in quantization.INT8_RULES:
        variants = [(rule, h) for h in Q8_HYPER.get(rule, ({},))]
        if rule == "adam":
            variants.append(("adamw", {"weight_decay": 0.05}))
        for name, hyper in variants:
            label = name + "".join(f" {k}={v}" for k, v in hyper.items())
            for layout in Q8_LAYOUTS:
                out[f"{label} {layout[0]}/{layout[1]} {layout[2]}"] = \
                    functools.partial(_q8_case, name, hyper, layout, n, steps)
    return out


#: (family, its cases) in the order the report shows them
FAMILIES = (("float32/float64", float_cases), ("bfloat16/float16", half_cases),
            ("8-bit state", q8_cases))


def _outcome(case, twin):
    """The case's buffers, or the exception it raised (a failure, reported by its class)."""
    try:
        return case(twin=twin)
    except Exception as exc:      # noqa: BLE001 - a self-check reports, never crashes
        return exc


def twin_results(cases):
    """{label: the numpy twin's buffers (or the exception it raised)} of `cases`."""
    return {label: _outcome(case, True) for label, case in cases.items()}


def check(cases, want=None):
    """Run `cases` ({label: case}) on the selected backend; return the labels whose
    buffers differ in any bit from the numpy twin's (`want`: twin_results(cases), computed
    here if not given), a case that raised followed by what it raised."""
    want = twin_results(cases) if want is None else want
    failures = []
    for label, case in cases.items():
        expected, got = want[label], _outcome(case, False)
        for who, result in (("the twin", expected), ("the kernel", got)):
            if isinstance(result, Exception):
                failures.append(f"{label} ({who} raised {type(result).__name__}: {result})")
                break
        else:
            if len(got) != len(expected) or \
                    not all(_same(a, b) for a, b in zip(got, expected)):
                failures.append(label)
    return failures


def check_kernels(sizes=SIZES, steps=STEPS):
    """The float32/float64 family on the selected instruction set: the cases whose params
    or states differ in any bit from the numpy twin, as 'rule/case dtype'."""
    return check(float_cases(sizes, steps))


# ---------------------------------------------------------------------------- the report


def cpu_features():
    """{feature: present} for CPU_FEATURES as /proc/cpuinfo lists them, or None where it
    cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    return {name: name in flags for name in CPU_FEATURES}
    except OSError:
        return None
    return {name: False for name in CPU_FEATURES}     # no x86 flags line (e.g. ARM)


def _features_text():
    found = cpu_features()
    if found is None:
        return "not read (no /proc/cpuinfo); the instruction sets above are the core's choice"
    present = [n for n in CPU_FEATURES if found[n]]
    absent = [n for n in CPU_FEATURES if not found[n]]
    return (" ".join(present) or "none of " + " ".join(CPU_FEATURES)) + (
        f" (absent: {' '.join(absent)})" if present and absent else "")


def _decoder_text():
    """Which decoder the avx512 build's 8-bit step uses, as the compiled code detected."""
    if backend.name != "native" or "avx512" not in backend.available_isas():
        return None
    from .. import _q8
    # -1: as detected from the CPU (the setting made at import; resets a test's override)
    if _q8.set_vbmi(-1):
        return "avx512 build with avx512vbmi byte permutes"
    return "avx512 build with AVX-512F register permutes (no avx512vbmi)"


def add_arguments(parser):
    """`lrcore info` takes no options."""


def _line(out, label, text):
    print(textwrap.fill(text, 80, initial_indent=f"  {label + ':':<18}",
                        subsequent_indent=" " * 20, break_on_hyphens=False), file=out)


def run(args=None, out=None):
    """Print the report and the self-check (to `out`, default stdout); 0 when every case
    equals its twin, else the failing cases are listed and a CLIError (exit code 1) says
    how many."""
    out = sys.stdout if out is None else out
    import lrcore
    print(f"lrcore {lrcore.__version__}", file=out)
    print(f"  backend:          {backend.name}", file=out)
    print(f"  instruction set:  {backend.isa()} (available: "
          f"{', '.join(backend.available_isas())})", file=out)
    machine = platform.machine().lower()
    if backend.name != "native":
        pass                    # the numpy twin: no CPU feature selects anything
    elif machine in ("x86_64", "amd64", "i386", "i686"):
        _line(out, "cpu features", _features_text())
    else:
        _line(out, "cpu features", f"{machine or 'this CPU'}: not x86, the baseline build only")
    decoder = _decoder_text()
    if decoder:
        _line(out, "8-bit decoder", decoder)
    print(f"  threads:          {backend.default_threads()}", file=out)
    print(f"  include dir:      {lrcore.get_include()}", file=out)
    print(f"  numpy:            {np.__version__}", file=out)
    families = [(family, make()) for family, make in FAMILIES]
    wanted = [twin_results(cases) for _, cases in families]
    print(textwrap.fill(
        "self-check, under each instruction set: float32/float64 kernels (every loop "
        "variant), bfloat16/float16 kernels (every rule and layout, nearest and stochastic "
        "rounding), the 8-bit-state step (every rule with 8-bit state, float32 and "
        "bfloat16 params); cases equal to the numpy twin bit for bit:", 80,
        initial_indent="  ", subsequent_indent="  "), file=out)
    isas = backend.available_isas()
    first = max(len(isa) for isa in isas) + 6
    widths = [max(len(family), 2 * len(str(len(cases))) + 1) + 2 for family, cases in families]
    print(" " * first + "".join(f"{family:>{w}}" for (family, _), w in zip(families, widths)),
          file=out)
    bad = []
    in_use = backend.isa()
    try:
        for isa in isas:
            backend.set_isa(isa)
            row = f"    {isa:<{first - 4}}"
            for (family, cases), want, w in zip(families, wanted, widths):
                failures = check(cases, want)
                bad += [f"[{isa}] {family}: {f}" for f in failures]
                row += f"{f'{len(cases) - len(failures)}/{len(cases)}':>{w}}"
            print(row, file=out)
    finally:
        backend.set_isa(in_use)
    if bad:
        print("SELF-CHECK FAILED:\n  " + "\n  ".join(bad), file=out)
        out.flush()
        raise CLIError(f"self-check failed: {len(bad)} case{'s' if len(bad) > 1 else ''} "
                       f"not equal to the numpy twin bit for bit (listed above)",
                       exit_code=EXIT_FAILED)
    print("self-check passed", file=out)
    return 0
