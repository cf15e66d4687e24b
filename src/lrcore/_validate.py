"""The kernels' Python front, shared by both backends: signatures and checks from the table.

`make_kernel(rule, run)` builds the public function of one update rule (for example
`adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, lr, step, beta1=0.9, ...)`)
from its row in lrcore.rules: it checks every hyperparameter against the table (one
vocabulary, one message style), applies the rule's cross-argument constraints, and hands
the buffers and a dict of hyperparameters (by name) to the backend's `run`. The buffer
checks themselves (`buffers` below for the numpy backend, `_buffers` in _core.pyx for the
compiled one) agree check for check and message for message; tests/test_bad_input.py
holds both to one table.
"""
import ast
import math
import numbers
import os

import numpy as np

from .rules import RULES, STEP_MAX, check_real, check_step

__all__ = ["make_kernel", "check_hypers", "threads", "buffers", "plan_hypers",
           "required_slots", "check_array", "extent", "STEP_MAX"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _max_threads():
    """The compiled core's bound (csrc/pool.c): 4 per online CPU, at least 8, at most 4096."""
    try:
        ncpu = os.sysconf("SC_NPROCESSORS_ONLN")
    except (AttributeError, ValueError, OSError):   # not POSIX
        ncpu = os.cpu_count() or 1
    ncpu = max(1, ncpu)
    return max(8, 4096 if ncpu > 1024 else 4 * ncpu)


THREADS_MAX = _max_threads()
_THREADS_TEXT = f"{THREADS_MAX} (4 per CPU of this machine, at least 8)"


# ---------------------------------------------------------------------------
# Hyperparameters
# ---------------------------------------------------------------------------

def nadam_mu_product(beta1, momentum_decay, step):
    """mu_1 * ... * mu_step as torch.optim.NAdam keeps it: a float32 running product (a
    scalar tensor of torch's default dtype), mu_t formed in double then rounded. O(step):
    optimizers keep the running product instead. Stops once the product is 0."""
    prod = np.float32(1.0)
    for t in range(1, step + 1):
        prod = prod * np.float32(beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay)))
        if prod == 0.0:
            break
    return float(prod)


# Fields a caller may leave as None: their value, as an expression of the other (checked)
# fields. init_buffer: torch's first momentum step is the first step.
DERIVED = {("sgd", "init_buffer"): "step <= 1",
           ("nadam", "mu_product"): "_nadam_mu_product(beta1, momentum_decay, step)"}

# Checks that involve several hyperparameters of one rule: (condition, message), both
# evaluated over the checked values.
CONSTRAINTS = {"sgd": [("nesterov and (momentum <= 0.0 or dampening != 0.0)",
                        "nesterov requires momentum > 0 and dampening = 0, got "
                        "momentum={momentum!r}, dampening={dampening!r}")]}

_EVAL = {"_nadam_mu_product": nadam_mu_product}


def check_hypers(rule, hp, fn=None):
    """Check and convert every public hyperparameter of `rule` in `hp` (a dict, changed in
    place): reals into their range, `step` an integer in [1, 2**53], flags to bool; then
    fill derived fields and apply the rule's constraints."""
    fn = fn or rule.name
    where = f"{fn}()"
    for h in rule.hypers:
        if not h.public:
            continue
        x = hp[h.name]
        if h.name == "step":
            hp["step"] = check_step(where, x)
        elif h.ctype == "int":
            if x is not None or (rule.name, h.name) not in DERIVED:
                hp[h.name] = bool(x)
        elif x is None and (rule.name, h.name) in DERIVED:
            pass
        else:
            hp[h.name] = check_real(where, h.name, x, h.range)
    for h in rule.hypers:
        if h.public and hp[h.name] is None:
            hp[h.name] = eval(DERIVED[(rule.name, h.name)], dict(_EVAL), hp)  # noqa: S307
    for condition, message in CONSTRAINTS.get(rule.name, ()):
        if eval(condition, {}, hp):   # noqa: S307 - expressions of this module only
            raise ValueError(f"{fn}(): " + message.format(**hp))
    return hp


def required_slots(rule, hp):
    """Indices (into the rule's states) of the optional states these hyperparameters need
    (momentum > 0 needs momentum_buffer): their absence is an error, not a crash."""
    out = []
    for i, s in enumerate(rule.states):
        if s.when is not None and not any(o.name == s.when for o in rule.options):
            v = hp.get(s.when, 0.0)
            if v is not None and v > 0:
                out.append(i)
    return tuple(out)


def threads(fn, x):
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{fn}(): num_threads must be an integer or None, got {type(x).__name__}")
    if x < 1:
        raise ValueError(f"{fn}(): num_threads must be >= 1, got {x}")
    if x > THREADS_MAX:   # the compiled core's bound and message (_core.pyx, _threads)
        raise ValueError(f"{fn}(): num_threads must be at most {_THREADS_TEXT}, got {x}")
    return int(x)


def _derive_exact(rule, h):
    """Source that fills the derived field h (left None) before the fast path when its
    expression reads only the step and the step is an int in range: the value the checks
    would derive (sgd's init_buffer = step <= 1). Other derivations (NAdam's mu_product, a
    loop over the steps) are left to the checks, which validate their inputs first."""
    expr = DERIVED[(rule.name, h.name)]
    reads = {n.id for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Name)}
    if reads - {"step"}:
        return ""
    return (f"    if {h.name} is None and type(step) is int and 1 <= step <= _STEP_MAX: "
            f"{h.name} = {expr}\n")


def _kernel_source(rule, lowp=False, fast=False):
    """Source of the public function of `rule`, generated from its row: a real signature
    (help(), inspect, IDEs) and the table's checks written out, so that a valid call costs
    a comparison per argument. Anything unusual (a non-float, a value out of range, a
    derived field left as None) goes to the generic check, which converts or raises.

    lowp: the function also takes lrcore.lowp's keywords (rounding, seed, index_offset);
    any of them not at its default, or a 2-byte param or grad, hands the whole call to
    `_lowp` (lrcore.lowp.kernel over the plain function); a TypeError of the float32 path
    is re-checked as a layout (`_layout`) first, as lrcore.lowp.kernel does.
    fast (with lowp): `_fast(buffers, values,
    num_threads, rounding, seed, index_offset)` (the compiled core's run_exact bound to the
    rule) is tried first with the public hyperparameters in struct order; it runs the call and
    returns True only when every value is one the checks below (or lrcore.lowp's, for
    bfloat16/float16 buffers) would pass unchanged, else those checks run."""
    fn = rule.name
    params, optional = ["param", "grad"], False
    for s in rule.states:
        optional = optional or s.when is not None
        params.append(f"{s.name}=None" if optional else s.name)
    public = [h for h in rule.hypers if h.public]
    kw = [h.name if h.name in ("lr", "step") else f"{h.name}={h.default!r}"  # lr, step explicit
          for h in sorted(public, key=lambda h: h.name not in ("lr", "step"))]
    body = ["if type(step) is not int or not 1 <= step <= _STEP_MAX: "   # derivations use it
            "step = _check_step(_where, step)"]
    for i, h in enumerate(rule.hypers):
        if not h.public or h.name == "step":
            continue
        derived = (fn, h.name) in DERIVED
        if h.ctype == "int":
            if derived:
                body.append(f"if {h.name} is None: {h.name} = {DERIVED[(fn, h.name)]}")
            body.append(f"{h.name} = True if {h.name} else False")
        else:
            r = h.range
            test = f"_lo{i} <= {h.name} {'<' if r.hi_open or r.hi == math.inf else '<='} _hi{i}"
            fix = f"_check_real(_where, {h.name!r}, {h.name}, _rng{i})"
            if derived:   # from fields before it in the struct, already checked
                body.append(f"if {h.name} is None: {h.name} = {DERIVED[(fn, h.name)]}")
            body.append(f"if type({h.name}) is not float or not {test}: {h.name} = {fix}")
    for condition, message in CONSTRAINTS.get(fn, ()):
        body.append(f"if {condition}: raise ValueError({fn + '(): '!r} + {message!r}.format("
                    f"**locals()))")
    body.append("if num_threads is not None: num_threads = threads(_fn, num_threads)")
    for i, s in enumerate(rule.states):
        if s.when is None:
            body.append(f"if {s.name} is None: raise TypeError("
                        f"{fn + '(): ' + s.name + ' must be a numpy.ndarray, got NoneType'!r})")
        elif not any(o.name == s.when for o in rule.options):
            body.append(f"if {s.when} > 0.0 and {s.name} is None: raise ValueError("
                        f"{fn + '(): ' + s.name + ' is required when ' + s.when + ' > 0'!r})")
    hp = ", ".join(f"{h.name!r}: {h.name}" for h in public)
    states = ", ".join(s.name for s in rule.states)
    body.append(f"_run(_rule, (param, grad, {states},), {{{hp}}}, num_threads)")
    head = f"def {fn}({', '.join(params)}, *, {', '.join(kw)}, num_threads=None"
    if not lowp:
        return head + "):\n" + "".join(f"    {line}\n" for line in body)
    args = ", ".join(["param", "grad"] + [s.name for s in rule.states])
    kws = ", ".join(f"{h.name}={h.name}" for h in public)
    to_lowp = (f"return _lowp({args}, {kws}, num_threads=num_threads, rounding=rounding, "
               "seed=seed, index_offset=index_offset)")
    src = head + ", rounding='nearest', seed=0, index_offset=0):\n"
    if fast:   # run_exact: True ran, False not exact, None 2-byte / stream args / not arrays
        src += "".join(_derive_exact(rule, h) for h in public if (fn, h.name) in DERIVED)
        src += ("    try:\n"
                f"        done = _fast(({args},), ({', '.join(h.name for h in public)},), "
                "num_threads, rounding, seed, index_offset)\n"
                "    except TypeError:\n"
                f"        _layout(({args},))\n"
                "        raise\n"
                "    if done:\n"
                "        return None\n"
                "    if done is None and (rounding is not _NEAREST or seed is not _ZERO "
                f"or index_offset is not _ZERO or _half(param, grad)):\n        {to_lowp}\n")
    else:
        src += ("    if rounding is not _NEAREST or seed is not _ZERO or index_offset is not _ZERO "
                f"or _half(param, grad):\n        {to_lowp}\n")
    return (src + "    try:\n"
            + "".join(f"        {line}\n" for line in body)
            + "    except TypeError:\n"
            f"        _layout(({args},))\n"
            "        raise\n")


def make_kernel(rule, run, doc=None, lowp=None, fast=None):
    """The public kernel function of `rule` over a backend's `run(rule, buffers, hp,
    num_threads)`; `buffers` is (param, grad, *states) with None for absent states.
    lowp: None, or (call, half, layout): `call` takes the whole call when a low-precision
    keyword is given or `half(param, grad)` is true; `layout(buffers)` re-checks the
    buffers' layout when the float32 path raises a TypeError (see _kernel_source).
    fast: the backend's run_exact bound to this rule (see _kernel_source), or None."""
    namespace = {"_rule": rule, "_run": run, "_fn": rule.name, "_where": f"{rule.name}()",
                 "_STEP_MAX": STEP_MAX, "_check_step": check_step, "_check_real": check_real,
                 "threads": threads, **_EVAL}
    if lowp is not None:
        namespace.update(_lowp=lowp[0], _half=lowp[1], _layout=lowp[2], _NEAREST="nearest",
                         _ZERO=0)
    for i, h in enumerate(rule.hypers):
        if h.range is not None:
            namespace.update({f"_lo{i}": h.range.lo, f"_hi{i}": h.range.hi, f"_rng{i}": h.range})
    if fast is not None:
        namespace["_fast"] = fast
    exec(_kernel_source(rule, lowp is not None, fast is not None), namespace)   # noqa: S102 - source built from the table only
    f = namespace[rule.name]
    f.__doc__ = doc
    f.__module__ = "lrcore.kernels"
    f.__qualname__ = rule.name
    return f


# ---------------------------------------------------------------------------
# StepPlan hyperparameters: a dict per group, by name
# ---------------------------------------------------------------------------

def plan_hypers(rule, group_hps):
    """Each group's hyperparameters as a complete dict of the rule's public fields (derived
    ones filled in, defaults from the table for the others)."""
    out = []
    for g, hp in enumerate(group_hps):
        if not isinstance(hp, dict):
            raise TypeError(f"step(): hyperparameters of group {g} must be a dict by name, "
                            f"got {type(hp).__name__}")
        hp = dict(hp)
        for h in rule.hypers:
            if not h.public:
                continue
            if h.name not in hp:
                if h.default is None and (rule.name, h.name) not in DERIVED:
                    raise ValueError(f"step(): group {g} has no value for {h.name!r}")
                hp[h.name] = h.default
        for h in rule.hypers:
            if h.public and hp[h.name] is None:
                hp[h.name] = eval(DERIVED[(rule.name, h.name)], dict(_EVAL), hp)  # noqa: S307
        for name, x in hp.items():   # a huge int is an error naming it, not an OverflowError
            if type(x) is int and not -2 ** 1023 < x < 2 ** 1023:
                raise ValueError(f"step(): {name} of group {g} is out of range, got an integer "
                                 f"of {len(str(abs(x)))} digits")
        out.append(hp)
    return out


# ---------------------------------------------------------------------------
# Buffers (numpy backend; _core.pyx has the compiled twin of these checks)
# ---------------------------------------------------------------------------

def check_array(fn, name, x, dtype, size, writeable):
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
    if not x.flags.aligned:
        raise ValueError(f"{fn}(): {name} is not aligned to its {x.itemsize}-byte elements "
                         f"(a view at an odd byte offset); pass an aligned array")
    if writeable and not x.flags.writeable:
        raise ValueError(f"{fn}(): {name} is read-only; it must be writeable")
    if size is not None and x.size != size:
        raise ValueError(f"{fn}(): {name} has {x.size} elements but param has {size}; "
                         f"all buffers must have the same size")
    return x


def extent(a):
    start = a.__array_interface__["data"][0]
    return start, start + a.nbytes


def buffers(fn, names, objs, writeable):
    """Check param (first), grad (second) and the optional state buffers (None skipped)."""
    param = check_array(fn, names[0], objs[0], None, None, True)
    checked = [(names[0], param)]
    for i, (name, x, w) in enumerate(zip(names[1:], objs[1:], writeable[1:])):
        if x is not None or i == 0:  # grad is required, the states after it may be None
            checked.append((name, check_array(fn, name, x, param.dtype, param.size, w)))
    for i, (na, a) in enumerate(checked):
        if a.nbytes == 0:
            continue
        a0, a1 = extent(a)
        for nb, b in checked[i + 1:]:
            if b.nbytes == 0:
                continue
            b0, b1 = extent(b)
            if a0 < b1 and b0 < a1:
                raise ValueError(f"{fn}(): {na} and {nb} share memory; "
                                 f"every buffer must be a separate array")
    return [a for _, a in checked]

