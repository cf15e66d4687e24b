"""The in-place update kernels: lrcore.kernels.<rule> for every rule of lrcore.rules
(sgd, adam, adagrad, rmsprop, adadelta, adamax, nadam, radam, lion).

Each performs ONE optimizer step over one set of buffers. They come from the selected
backend (lrcore.backend: the compiled core, or the numpy twin with LRCORE_BACKEND=python);
their signatures, checks and docstrings come from the table of rules.
"""
from . import backend as _backend
from .rules import RULES

__all__ = list(RULES) + ["backend", "KERNELS"]

KERNELS = tuple(RULES)

globals().update({k: getattr(_backend.kernels, k) for k in KERNELS})


def backend():
    """'native' (the compiled core) or 'python' (the numpy reference)."""
    return _backend.name
