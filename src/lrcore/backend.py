"""The backend switch: the one module that imports the compiled core (lrcore._core).

LRCORE_BACKEND selects 'native' (the compiled C kernels, default) or 'python' (the numpy
twin, lrcore.reference). Everything else reaches either through the names here: the
kernel functions (built from the table of rules by lrcore._validate over the backend's
runner), StepPlan, the instruction-set and thread controls, and the bandwidth probe.
A compiled core that fails to import is an error that says how to fix it, never a
silent switch to the slow backend.

`lrcore.backend()` (calling the module) returns the selected name, as it always has.
"""
import os
import sys
import types

import numpy as np

from . import _validate, lowp, reference
from .rules import RULES

__all__ = ["name", "implementation", "kernels", "StepPlan", "isa", "available_isas", "set_isa",
           "default_threads", "set_default_threads", "probe", "KERNELS"]

KERNELS = tuple(RULES)

name = os.environ.get("LRCORE_BACKEND", "native").strip().lower() or "native"
if name not in ("native", "python"):
    raise ImportError(f"LRCORE_BACKEND must be 'native' or 'python', got {name!r}")


def _import_core():
    try:
        from . import _core
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "lrcore's compiled core (lrcore._core) could not be imported: "
            f"{exc}. Reinstall with a C compiler available (`pip install --force-reinstall "
            "--no-binary lrcore lrcore`, or `pip install .` from a source checkout), or set "
            "LRCORE_BACKEND=python to use the (much slower) numpy backend explicitly."
        ) from exc
    return _core


def _native():
    core = _import_core()
    ns = types.SimpleNamespace(
        name="native", StepPlan=core.StepPlan, isa=core.isa, available_isas=core.available_isas,
        set_isa=core.set_isa, default_threads=core.default_threads,
        set_default_threads=core.set_default_threads, probe=core.probe, core=core)
    for rule in RULES.values():
        doc = reference.docstring(rule)
        f32 = _validate.make_kernel(rule, core.run_kernel, doc)
        slow = lowp.kernel(rule.name, f32, core.lowp_run)
        # one generated function takes every call: float32/float64 straight to the core,
        # bfloat16/float16 buffers or low-precision keywords through lrcore.lowp (the same
        # dispatch as lowp.kernel's wrapper, without a second Python frame per call)
        fn = _validate.make_kernel(
            rule, core.run_kernel, slow.__doc__,
            lowp=(slow, core.half_pair, _layout_check(rule)), fast=core.exact_runner(rule))
        fn.run_checked = _run_checked(rule, core.exact_runner(rule), slow.run_checked)
        setattr(ns, rule.name, fn)
    return ns


def _run_checked(rule, exact, slow):
    """lrcore.optim's per-param path (lowp.kernel's run_checked, same arguments): the compiled
    fast path of the kernels first (it takes the call when every argument is regular, as
    the optimizer's checked ones are), lowp.kernel's run_checked otherwise."""
    public = tuple(h.name for h in rule.hypers if h.public)
    nbuf = 2 + len(rule.states)

    def run_checked(arrays, hp, rounding, seed, index_offset, num_threads):
        bufs = tuple(arrays) + (None,) * (nbuf - len(arrays))
        if exact(bufs, tuple(hp.get(k) for k in public), num_threads, rounding, seed,
                 index_offset):
            return None
        return slow(arrays, hp, rounding, seed, index_offset, num_threads)
    return run_checked


def _layout_check(rule):
    """lrcore.lowp.kernel's re-check after a float32-path TypeError: when every buffer is an
    ndarray or None, an unsupported mix of dtypes is reported with the supported layouts."""
    names = ["param", "grad"] + [s.name for s in rule.states]

    def check(arrays):
        if all(a is None or isinstance(a, np.ndarray) for a in arrays):
            lowp.layout_of(rule.name, names, list(arrays))
    return check


def _python():
    def no_isa(isa_name):
        if isa_name not in (None, "numpy"):
            raise ValueError(f"LRCORE_ISA={isa_name!r}: the python backend has no instruction-set "
                             f"builds (only 'numpy')")
        return "numpy"
    ns = types.SimpleNamespace(
        name="python", StepPlan=reference.StepPlan, isa=lambda: "numpy",
        available_isas=lambda: ("numpy",), set_isa=no_isa, default_threads=lambda: 1,
        set_default_threads=lambda n: None, probe=None, core=None)
    for rule in RULES.values():
        setattr(ns, rule.name, lowp.kernel(rule.name, getattr(reference, rule.name)))
    return ns


_IMPLS = {}


def implementation(which=None):
    """The namespace of one backend ('native' or 'python'; default: the selected one).
    Tests use it to run both backends side by side."""
    which = which or name
    if which not in _IMPLS:
        _IMPLS[which] = _native() if which == "native" else _python()
    return _IMPLS[which]


_impl = implementation()
if name == "native":
    _requested_isa = os.environ.get("LRCORE_ISA", "").strip().lower()
    if _requested_isa:
        _impl.set_isa(_requested_isa)

kernels = types.SimpleNamespace(**{k: getattr(_impl, k) for k in KERNELS})
StepPlan = _impl.StepPlan
isa = _impl.isa
available_isas = _impl.available_isas
set_isa = _impl.set_isa
default_threads = _impl.default_threads
set_default_threads = _impl.set_default_threads
probe = _impl.probe


def core():
    """The compiled core module (native backend only): planned_threads, min_bytes_per_thread
    and the other tuning hooks of tests and benchmarks."""
    if name != "native":
        raise RuntimeError("the compiled core is not in use (LRCORE_BACKEND=python)")
    return _impl.core


class _CallableModule(types.ModuleType):
    """lrcore.backend is this module and stays callable: lrcore.backend() -> its name."""

    def __call__(self):
        return name


sys.modules[__name__].__class__ = _CallableModule
