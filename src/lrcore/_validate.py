"""Argument checks for the numpy backend (lrcore.reference).

They mirror the compiled backend's checks in _core.pyx: same order, same exception
types, same messages, so a bad call fails identically on both backends and
modifies nothing. tests/test_bad_input.py holds both to one table.
"""
import math
import numbers

import numpy as np

__all__ = ["real", "nonneg", "unit_open", "step_number", "threads", "buffers"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
STEP_MAX = 2 ** 53   # as in _core.pyx


def real(fn, name, x):
    if type(x) is float:
        return x
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{fn}(): {name} must be a real number, got {type(x).__name__}")
    return float(x)


def nonneg(fn, name, x):
    v = real(fn, name, x)
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"{fn}(): {name} must be a finite number >= 0, got {v!r}")
    return v


def unit_open(fn, name, x):
    """A value in [0, 1)."""
    v = real(fn, name, x)
    if not (0.0 <= v < 1.0):
        raise ValueError(f"{fn}(): {name} must be in [0, 1), got {v!r}")
    return v


def unit_closed(fn, name, x):
    """A value in [0, 1]."""
    v = real(fn, name, x)
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"{fn}(): {name} must be in [0, 1], got {v!r}")
    return v


def step_number(fn, x):
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{fn}(): step must be an integer, got {type(x).__name__}")
    v = int(x)
    if v < 1:
        raise ValueError(f"{fn}(): step must be >= 1 (1 for the first step), got {v}")
    if v > STEP_MAX:
        raise ValueError(f"{fn}(): step must be <= 2**53, got {v}")
    return v


def threads(fn, x):
    if x is None:
        return 1
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{fn}(): num_threads must be an integer or None, got {type(x).__name__}")
    if x < 1:
        raise ValueError(f"{fn}(): num_threads must be >= 1, got {x}")
    return min(int(x), 4096)


def required(fn, name, x):
    if x is None:
        raise TypeError(f"{fn}(): {name} must be a numpy.ndarray, got NoneType")


def _array(fn, name, x, dtype, size, writeable):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{fn}(): {name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype.kind != "f" or x.dtype.newbyteorder("=") not in _FLOATS:
        raise TypeError(f"{fn}(): {name} must have dtype float32 or float64, got {x.dtype}")
    if not x.dtype.isnative:
        raise TypeError(f"{fn}(): {name} must be in native byte order, got dtype {x.dtype.str!r}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{fn}(): {name} has dtype {x.dtype} but param has dtype {dtype}; "
                        f"all buffers must share one dtype")
    if not x.flags.c_contiguous:
        raise ValueError(f"{fn}(): {name} must be C-contiguous (it is updated in place, "
                         f"a copy would lose the update)" if writeable else
                         f"{fn}(): {name} must be C-contiguous")
    if writeable and not x.flags.writeable:
        raise ValueError(f"{fn}(): {name} is read-only; it must be writeable")
    if size is not None and x.size != size:
        raise ValueError(f"{fn}(): {name} has {x.size} elements but param has {size}; "
                         f"all buffers must have the same size")
    return x


def _extent(a):
    start = a.__array_interface__["data"][0]
    return start, start + a.nbytes


def buffers(fn, names, objs, writeable):
    """Check param (first), grad (second) and the optional state buffers (None skipped)."""
    param = _array(fn, names[0], objs[0], None, None, True)
    checked = [(names[0], param)]
    for i, (name, x, w) in enumerate(zip(names[1:], objs[1:], writeable[1:])):
        if x is not None or i == 0:  # grad is required, the states after it may be None
            checked.append((name, _array(fn, name, x, param.dtype, param.size, w)))
    for i, (na, a) in enumerate(checked):
        if a.nbytes == 0:
            continue
        a0, a1 = _extent(a)
        for nb, b in checked[i + 1:]:
            if b.nbytes == 0:
                continue
            b0, b1 = _extent(b)
            if a0 < b1 and b0 < a1:
                raise ValueError(f"{fn}(): {na} and {nb} share memory; "
                                 f"every buffer must be a separate array")
