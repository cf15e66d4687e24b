"""What an optimizer accepts as `params`, checked in one place for every optimizer.

`groups(params, owner)` reads an array, a list of arrays or a list of parameter-group dicts
into a list of group dicts, each with its `params` list; `check_param(i, p, owner)` checks one
parameter array (numpy, float32/float64 -- also bfloat16/float16 for lrcore.optim -- in
native byte order, C-contiguous, writeable).
Messages start with `owner` (the class the caller is building) and name the argument.
Used by lrcore.optim's Optimizer and lrcore.distributed's ShardedOptimizer.
"""
import numpy as np

from .. import lowp

__all__ = ["items", "groups", "check_param", "check_writeable", "grad_list"]

_FULL = (np.dtype(np.float32), np.dtype(np.float64))
_HALF = _FULL + (np.dtype(np.float16),) + ((lowp.bfloat16,) if lowp.bfloat16 is not None else ())


def items(params, owner, expected):
    """params as a non-empty list (an ndarray is one item): TypeError "params must be
    <expected>" when it is not iterable, ValueError when it is empty."""
    if isinstance(params, np.ndarray):
        return [params]
    try:
        out = list(params)
    except TypeError:
        raise TypeError(f"{owner}: params must be {expected}, got "
                        f"{type(params).__name__}") from None
    if not out:
        raise ValueError(f"{owner}: params is empty; give at least one array")
    return out


def groups(params, owner):
    """params -> [{'params': [arrays], other group keys...}], in order."""
    if isinstance(params, dict):
        raise TypeError(f"{owner}: params must be an array, a list of arrays or a list of "
                        f"dicts (parameter groups), got a dict; wrap it in a list")
    found = items(params, owner, "an array, a list of arrays or a list of dicts")
    if all(isinstance(x, dict) for x in found):
        out = []
        for g, d in enumerate(found):
            if "params" not in d:
                raise ValueError(f"{owner}: parameter group {g} has no 'params' key")
            ps = d["params"]
            ps = [ps] if isinstance(ps, np.ndarray) else list(ps)
            out.append(dict(d, params=ps))
        return out
    if any(isinstance(x, dict) for x in found):
        raise TypeError(f"{owner}: params mixes arrays and dicts; use one or the other")
    return [{"params": found}]


def check_param(i, p, owner, half=False):
    """params[i] is a C-contiguous numpy array in native byte order of dtype float32 or
    float64, or also bfloat16 (ml_dtypes) and float16 when `half` (lrcore.optim's
    optimizers; the layout with the state dtype is lrcore.optim.precision's check). Its
    writeability is check_writeable's, which steps repeat."""
    if not isinstance(p, np.ndarray):
        raise TypeError(f"{owner}: params[{i}] must be a numpy.ndarray, got "
                        f"{type(p).__name__}")
    kinds = _HALF if half else _FULL
    if p.dtype not in kinds or not p.dtype.isnative:
        names = "float32, float64, bfloat16 or float16" if half else "float32 or float64"
        raise TypeError(f"{owner}: params[{i}] must have dtype {names} "
                        f"(native byte order), got {p.dtype}")
    if not p.flags.c_contiguous:
        raise ValueError(f"{owner}: params[{i}] must be C-contiguous (it is updated "
                         f"in place)")


def check_writeable(params, owner):
    """Every param still writeable (a flag read per array: cheap enough for each step)."""
    for i, p in enumerate(params):
        if not p.flags.writeable:
            raise ValueError(f"{owner}: params[{i}] is read-only; it must be writeable "
                             f"(it is updated in place)")


def grad_list(grads, where):
    """A step's grads as a list: one array, or any iterable of arrays (`where` starts the
    message, e.g. 'Adam.step()')."""
    if isinstance(grads, np.ndarray):
        return [grads]
    if isinstance(grads, list):
        return grads
    try:
        return list(grads)
    except TypeError:
        raise TypeError(f"{where}: grads must be an array or a list of arrays, "
                        f"got {type(grads).__name__}") from None
