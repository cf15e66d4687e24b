"""The in-place update kernels: lrcore.kernels.sgd, adam, adagrad, rmsprop, adadelta.

Backed by the compiled core (lrcore._core) unless LRCORE_BACKEND=python selects the
numpy reference (lrcore.reference). A compiled core that fails to import is an
error that says how to fix it, never a silent switch to the slow backend.
"""
import os

from . import lowp, reference

__all__ = ["sgd", "adam", "adagrad", "rmsprop", "adadelta", "backend", "KERNELS"]

KERNELS = ("sgd", "adam", "adagrad", "rmsprop", "adadelta")

_BACKEND = os.environ.get("LRCORE_BACKEND", "native").strip().lower() or "native"
if _BACKEND not in ("native", "python"):
    raise ImportError(f"LRCORE_BACKEND must be 'native' or 'python', got {_BACKEND!r}")

if _BACKEND == "native":
    try:
        from . import _core
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "lrcore's compiled core (lrcore._core) could not be imported: "
            f"{exc}. Reinstall with a C compiler available (`pip install --force-reinstall "
            "--no-binary lrcore lrcore`, or `pip install .` from a source checkout), or set "
            "LRCORE_BACKEND=python to use the (much slower) numpy backend explicitly."
        ) from exc
    _impl = _core
    _requested_isa = os.environ.get("LRCORE_ISA", "").strip().lower()
    if _requested_isa:
        _core.set_isa(_requested_isa)
    for _name in KERNELS:
        getattr(_core, _name).__doc__ = getattr(reference, _name).__doc__
else:
    _impl = reference

# every kernel also takes bfloat16/float16 buffers (lrcore.lowp: layouts and rounding)
_lowp_run = _core.lowp_run if _BACKEND == "native" else None
sgd = lowp.kernel("sgd", _impl.sgd, _lowp_run)
adam = lowp.kernel("adam", _impl.adam, _lowp_run)
adagrad = lowp.kernel("adagrad", _impl.adagrad, _lowp_run)
rmsprop = lowp.kernel("rmsprop", _impl.rmsprop, _lowp_run)
adadelta = lowp.kernel("adadelta", _impl.adadelta, _lowp_run)


def backend():
    """'native' (the compiled core) or 'python' (the numpy reference)."""
    return _BACKEND
