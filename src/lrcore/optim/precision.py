"""Element types of an optimizer's buffers: half-precision params and grads, bfloat16 and
8-bit state (issues 12 and 13), shared by lrcore.optim and lrcore.torch.

Design: a param's *layout* (:class:`Layout`) is decided once, at construction, from the
param's dtype and the optimizer's ``state_dtype``; a step checks each grad against it
(:func:`check_grad`) before anything is written, and :func:`run` applies one param's update
through the backend's kernel (every layout of :data:`lrcore.lowp.LAYOUTS`) or, for 8-bit
state, through :mod:`lrcore.quantization`.

``state_dtype``:

- ``None``: the param's dtype for float32, float64 and bfloat16 params; float32 for float16
  params (float16 state is not supported: squares of gradients overflow it);
- ``"float32"``: float32 state (float32, bfloat16 or float16 params);
- ``"bfloat16"``: bfloat16 state, for bfloat16 params (everything bfloat16);
- ``"int8"``: the 8-bit states that :data:`lrcore.quantization.INT8_RULES` lists (Adam's
  moments and AMSGrad's max, NAdam's and RAdam's moments, SGD's and RMSprop's momentum,
  RMSprop's square_avg, Lion's exp_avg) as :class:`~lrcore.quantization.QuantizedState`
  (codes and one float32 absmax per block) for buffers of at least
  ``lrcore.quantization.MIN_ELEMENTS`` elements, stepped by :func:`lrcore.quantization.step`;
  smaller buffers and the rule's other states stay float32. Float32 or bfloat16 params.

The random stream of stochastic rounding is keyed by ``(seed, step, buffer, element index)``
(:func:`lrcore.lowp.random_bits`). An optimizer numbers the elements of all its params as one
concatenation, in the order of its params: param i passes ``index_offset`` = the number of
elements of params 0..i-1 (:func:`offsets`), so no two params, and no two elements, draw the
same bits; within a param the kernel's buffer number tells param and state buffers apart.
The step number is the optimizer's (1 for the first step), so a resumed run draws the bits
an uninterrupted one would.

State-dict keys (:func:`flat`): a float state buffer keeps its name; an 8-bit one becomes
two arrays, ``"<name>.codes"`` (uint8, one per element) and ``"<name>.absmax"`` (float32,
one per block).
"""
import bisect
import numbers
from typing import NamedTuple

import numpy as np

from .. import backend, lowp, quantization, reference

__all__ = ["check_absmax", "STATE_DTYPES", "Layout", "state_dtype_name", "check_options", "layout",
           "check_grad", "offsets", "int8_rules", "flat", "spec", "split_key", "run",
           "nbytes", "new_state", "parts", "copy_into", "adopt", "check_grad_memory",
           "grad_sumsq", "scaled", "check_int8_group", "extents"]

STATE_DTYPES = ("float32", "bfloat16", "int8")
PARAM_DTYPES = ("float32", "float64", "bfloat16", "float16")
_F32 = np.dtype(np.float32)
_PARTS = ("codes", "absmax")
_INT8_PARAMS = ("float32", "bfloat16")


_DNAMES = {}


def _dname(dt):
    """A dtype's name as lrcore.lowp.LAYOUTS spells it ('bfloat16' for ml_dtypes'); cached
    by dtype (numpy computes dtype.name in Python, ~1 us, and every step asks per grad)."""
    name = _DNAMES.get(dt)
    if name is None:
        d = np.dtype(dt)
        name = _DNAMES[dt] = "bfloat16" if d == lowp.bfloat16 else d.name
    return name


class Layout(NamedTuple):
    """One param's element types: ``param`` its dtype, ``state`` the dtype of its float state
    buffers, ``quantized`` {state name: signed map} of its 8-bit states (empty if none)."""
    param: np.dtype
    state: np.dtype
    quantized: dict

    @property
    def plain(self):
        """float32 or float64 param and state, no 8-bit state: the one-call StepPlan path."""
        return not self.quantized and self.param == self.state and \
            self.param in (_F32, np.dtype(np.float64))


def state_dtype_name(owner, state_dtype):
    """``state_dtype`` as one of None, "float32", "bfloat16", "int8" (a numpy or ml_dtypes
    dtype is accepted for the first two); ValueError otherwise, naming the argument."""
    if state_dtype is None:
        return None
    name = state_dtype
    if not isinstance(state_dtype, str):
        try:
            name = _dname(np.dtype(state_dtype))
        except TypeError:
            name = None
        if name not in ("float32", "bfloat16", "float16"):   # "int8" only as a string
            name = None
    if name == "float16":
        raise ValueError(f"{owner}: state_dtype='float16' is not supported: squares of "
                         f"gradients overflow float16 (largest 65504); use 'float32', "
                         f"'bfloat16' or 'int8'")
    if name not in STATE_DTYPES:
        raise ValueError(f"{owner}: state_dtype must be None, 'float32', 'bfloat16' or "
                         f"'int8' (or the numpy/ml_dtypes dtype float32 or bfloat16), got "
                         f"{state_dtype!r}")
    return name


def check_options(owner, state_dtype, rounding, seed):
    """(state_dtype name, rounding, seed) checked; errors name the argument."""
    name = state_dtype_name(owner, state_dtype)
    if not isinstance(rounding, str) or rounding not in lowp.ROUNDINGS:
        raise ValueError(f"{owner}: rounding must be 'nearest' or 'stochastic', got "
                         f"{rounding!r}")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{owner}: seed must be an integer in 0..2**64-1, got {seed!r}")
    if not 0 <= int(seed) <= lowp.SEED_MAX:
        raise ValueError(f"{owner}: seed must be in 0..2**64-1, got {seed}")
    return name, rounding, int(seed)


def int8_rules():
    """{rule name: {state name: signed map}} of the rules with 8-bit state (a copy of
    :data:`lrcore.quantization.INT8_RULES`)."""
    return {rule: dict(states) for rule, states in quantization.INT8_RULES.items()}


def _layouts_text():
    return lowp.layouts_text() + "; and 8-bit state (state_dtype='int8') with float32 or " \
        "bfloat16 param and grad"


def layout(owner, where, rule, p, state_dtype):
    """The :class:`Layout` of param ``p`` (``where``: e.g. 'params[3]') under the optimizer's
    ``state_dtype`` (already a name); TypeError listing the supported layouts otherwise."""
    pname = _dname(p.dtype)
    if pname not in PARAM_DTYPES or not p.dtype.isnative:
        raise TypeError(f"{owner}: {where} has dtype {p.dtype}; lrcore params are float32, "
                        f"float64, bfloat16 (ml_dtypes) or float16 in native byte order")
    quantized = {}
    if state_dtype == "int8":
        table = quantization.INT8_RULES
        if rule.name not in table:
            raise ValueError(f"{owner}: state_dtype='int8' is supported for the rules "
                             f"{sorted(table)} (lrcore.quantization.INT8_RULES), not "
                             f"{rule.name!r}")
        if pname not in _INT8_PARAMS:
            raise TypeError(f"{owner}: {where} is {pname}; 8-bit state (state_dtype='int8') "
                            f"takes float32 or bfloat16 params. Supported layouts: "
                            f"{_layouts_text()}")
        if p.size >= quantization.MIN_ELEMENTS:
            quantized = {s.name: table[rule.name][s.name] for s in rule.states
                         if s.name in table[rule.name]}
        state = _F32
    elif state_dtype is None:
        state = _F32 if pname == "float16" else p.dtype
    else:
        state = lowp.bfloat16 if state_dtype == "bfloat16" else _F32
    sname = _dname(state)
    if not any((lp, ls) == (pname, sname) for lp, _, ls in lowp.LAYOUTS):
        raise TypeError(f"{owner}: {where} is {pname} and state_dtype={state_dtype!r} gives "
                        f"{sname} state: an unsupported layout. Supported layouts: "
                        f"{_layouts_text()}")
    return Layout(p.dtype, np.dtype(state), quantized)


def check_grad(owner, i, lay, g, n, name=None):
    """grads[i] fits param i's layout: an ndarray of n elements, C-contiguous, whose dtype
    makes a supported (param, grad, state) layout (8-bit state: the grad has the param's
    dtype, or is bfloat16 for a float32 param). TypeError/ValueError naming grads[i] (or
    `name`, e.g. lrcore.torch's "the .grad of param_groups[0]['params'][1]") otherwise."""
    gn = name or f"grads[{i}]"
    if not isinstance(g, np.ndarray):
        raise TypeError(f"{owner}: {gn} must be a numpy.ndarray, got {type(g).__name__}")
    if g.size != n:
        raise ValueError(f"{owner}: {gn} has {g.size} elements but params[{i}] has {n}")
    if not g.flags.c_contiguous:
        raise ValueError(f"{owner}: {gn} must be C-contiguous")
    gname = _dname(g.dtype) if lowp.dtype_ok(g.dtype) else str(g.dtype)
    pname, sname = _dname(lay.param), _dname(lay.state)
    ok = (pname, gname, sname) in lowp.LAYOUTS
    if lay.quantized:
        # lrcore.quantization.step: the grad has the param's dtype, or a float32 param
        # takes a bfloat16 grad (offload), as layout (c); never a wider grad than the param
        ok = gname in _INT8_PARAMS and (gname == pname or pname == "float32")
        if not ok:
            raise TypeError(f"{owner}: {gn} is {gname} for a {pname} param with 8-bit "
                            f"state: an unsupported layout. With state_dtype='int8' the grad "
                            f"has the param's dtype (float32 or bfloat16), or is bfloat16 for "
                            f"a float32 param")
    if not ok:
        raise TypeError(f"{owner}: {gn} is {gname} for a {pname} param with {sname} "
                        f"state: an unsupported layout. Supported layouts: {_layouts_text()}")


def offsets(params):
    """index_offset of each param: its first element's position in the concatenation of all
    params, in order (the stochastic-rounding stream's element index)."""
    out, total = [], 0
    for p in params:
        out.append(total)
        total += p.size
    return out


def new_state(lay, name, p, init):
    """A new state buffer for a param of layout ``lay``, every value ``init``: an array of
    the state dtype and the param's shape, or a QuantizedState (codes of ``init``)."""
    if name in lay.quantized:
        signed = lay.quantized[name]
        if init == 0:
            return quantization.QuantizedState.zeros(p.size, signed)
        return quantization.QuantizedState.from_float(np.full(p.size, init, np.float32), signed)
    return np.full(p.shape, init, dtype=lay.state)


def flat(states):
    """{name: buffer} -> {state-dict key: array}: an 8-bit buffer as its codes and absmax."""
    out = {}
    for name, buf in states.items():
        if isinstance(buf, quantization.QuantizedState):
            out[name + ".codes"], out[name + ".absmax"] = buf.codes, buf.absmax
        else:
            out[name] = buf
    return out


def split_key(key):
    """A state-dict key -> (buffer name, part): part 'codes'/'absmax', or None."""
    name, dot, part = key.rpartition(".")
    if dot and part in _PARTS:
        return name, part
    return key, None


def spec(lay, p, name):
    """{state-dict key: (shape, dtype)} of state buffer ``name`` of param ``p``."""
    if name in lay.quantized:
        nb = -(-p.size // quantization.BLOCK)
        return {name + ".codes": ((p.size,), np.dtype(np.uint8)),
                name + ".absmax": ((nb,), _F32)}
    return {name: (p.shape, lay.state)}


def check_absmax(key, absmax, bad):
    """An 8-bit buffer's absmax (state-dict key ``key``, a float32 array) holds no negative
    value: each is a block's largest magnitude, >= 0 (NaN where the block held a NaN, Inf
    where it overflowed). ``bad(message)`` makes the exception raised otherwise."""
    if key.endswith(".absmax"):
        a = np.asarray(absmax)
        neg = np.flatnonzero(np.signbit(a) & ~np.isnan(a))
        if neg.size:
            raise bad(f"{key!r} holds {neg.size} negative value(s) (block {int(neg[0])}: "
                      f"{float(a[neg[0]])!r}); an absmax is a block's largest magnitude, >= 0")


def nbytes(states):
    """Bytes held by the buffers of {name: buffer}."""
    return sum(b.nbytes for b in states.values())


def _kernel(kernel):
    return getattr(backend.kernels, kernel)


def check_int8_group(owner, rule, group, state_dtype):
    """8-bit state and a group's fixed options: centered RMSprop keeps grad_avg, and
    square_avg - grad_avg**2 of two rounded states can fall below 0 (ValueError)."""
    if state_dtype == "int8" and rule.name == "rmsprop" and group.get("centered"):
        raise ValueError(f"{owner}: centered RMSprop cannot keep 8-bit state "
                         f"(state_dtype='int8'): square_avg - grad_avg**2 of two rounded "
                         f"states can fall below 0; use centered=False or another "
                         f"state_dtype")


def run(kernel, lay, p, g, states, slots, values, *, rounding, seed, index_offset,
        num_threads):
    """One param's update, in place: ``states`` {name: buffer} (those the step uses),
    ``slots`` the rule's state names in kernel order, ``values`` the kernel's
    hyperparameters by name (step included). Everything was checked before (layout, sizes,
    hyperparameters)."""
    if not lay.quantized:
        bufs = [states.get(s) for s in slots]
        # the backend's run_checked: the kernel's compiled checks (~1 us) and call, or
        # lrcore.lowp.kernel's run_checked without the Python checks (~20 us)
        _kernel(kernel).run_checked([p, g, *bufs], values, rounding, seed, index_offset,
                                    num_threads)
        return
    # quantization.step without its per-call checks (~40 us)
    quantization.step_checked(kernel, p.reshape(-1), g.reshape(-1),
                              {s: (b if isinstance(b, quantization.QuantizedState) else
                                   b.reshape(-1)) for s, b in states.items()},
                              values, rounding, seed, index_offset, num_threads)


def parts(buf):
    """A buffer as {part: array}: {None: array}, or {'codes', 'absmax'} of an 8-bit one."""
    if isinstance(buf, quantization.QuantizedState):
        return {"codes": buf.codes, "absmax": buf.absmax}
    return {None: buf}


def copy_into(buf, given):
    """Copy checked arrays {part: array} (:func:`parts`) into a live buffer."""
    for part, dest in parts(buf).items():
        np.copyto(dest, np.asarray(given[part]).reshape(dest.shape))


def adopt(lay, name, given):
    """A new live buffer holding copies of checked arrays {part: array}."""
    if name in lay.quantized:
        return quantization.QuantizedState(
            np.array(given["codes"], np.uint8, copy=True, order="C").reshape(-1),
            np.array(given["absmax"], np.float32, copy=True, order="C").reshape(-1),
            lay.quantized[name])
    return np.array(given[None], copy=True, order="C")


def extents(where, params, states):
    """Sorted (start, end, name) of the memory of params and their state buffers
    ({name: buffer} per param); ValueError if two share memory."""
    named = []
    for i, (p, st) in enumerate(zip(params, states)):
        named.append((f"params[{i}]", p))
        named += [(f"state of params[{i}]", a) for a in flat(st).values()]
    return lowp.separate(where, named, "every parameter and state buffer")


def check_grad_memory(where, grads, extents):
    """No grad shares memory with a param or state buffer (``extents``: sorted (start, end,
    name) of the optimizer's buffers)."""
    ends = [e[1] for e in extents]
    for i, g in enumerate(grads):
        if not g.nbytes:
            continue
        g0 = g.__array_interface__["data"][0]
        k = bisect.bisect_right(ends, g0)      # the first extent ending after g0
        if k < len(extents) and extents[k][0] < g0 + g.nbytes:
            raise ValueError(f"{where}: grads[{i}] shares memory with {extents[k][2]}; "
                             f"gradients must be separate arrays")


def grad_sumsq(grads):
    """(sum of squares of every grad, widened to float64, in the compiled core's blocked
    order: reference.sum_squares_blocked, the same bits for every thread count; every
    element finite)."""
    total = reference.sum_squares_blocked(grads)
    finite = bool(np.isfinite(total)) or all(
        np.isfinite(np.asarray(g, np.float32)).all() for g in grads)
    return total, finite


def scaled(g, scale, lay):
    """A clipped copy of grad g (times ``scale``): float64 for float64 grads, float32 for a
    float32 param (or a float32 grad), else rounded to nearest in the grad's dtype."""
    # np.multiply(..., out=new array): a 0-d grad stays a 0-d array (``*`` would give a
    # numpy scalar, which the kernels refuse after earlier params were already stepped)
    if g.dtype == np.float64:
        return np.multiply(g, scale, out=np.empty(g.shape, np.float64))
    w = np.multiply(np.asarray(g, np.float32), np.float32(scale),
                    out=np.empty(g.shape, np.float32))
    if g.dtype == _F32 or lay.param == _F32:
        return w
    return lowp.round_nearest(w.reshape(-1), g.dtype).reshape(g.shape)
