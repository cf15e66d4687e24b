"""The hyperparameter injector shared by lrcore.optim, lrcore.torch and lrcore.task.

A hyperparameter is stored as given (a number, a 0-d tensor or array, or a
:class:`lrcore.schedules.Schedule`); the floats a step hands to the kernels are resolved
and checked here, once per step, against the ranges of the table of update rules
(:mod:`lrcore.rules`).

Design (optax's ``inject_hyperparams``): callers keep their own containers (an
optimizer's groups, torch's ``param_groups``, the task's parameters) and ask this module to
``check`` a value when it is set, ``resolve`` it at a step, build ``kernel_values`` for a
whole group (the dict StepPlan.run takes: by name, in the rule's C-struct order, SGD's
``init_buffer`` flag explicit), ``report`` a metric to ReduceOnPlateau schedules, and turn
schedules into plain data and back (``to_data`` / ``from_data``) for state dicts and files.
Every message has one form: ``"<owner>: <name> must be <range>, got <value>"``.
"""
import numbers

from . import rules
from .schedules import ReduceOnPlateau, Schedule

__all__ = ["range_of", "is_scalar_tensor", "check", "resolve", "kernel_values", "report",
           "schedules_in", "to_data", "from_data", "is_data", "adopt"]


def range_of(rule, name):
    """The :class:`lrcore.rules.Range` of hyperparameter or option ``name`` of ``rule`` (a
    Rule or its name)."""
    rule = rules.rule(rule) if isinstance(rule, str) else rule
    for h in rule.hypers:
        if h.name == name and h.range is not None:
            return h.range
    for o in rule.options:
        if o.name == name and o.range is not None:
            return o.range
    raise KeyError(f"{rule.name} has no real-valued hyperparameter {name!r}")


def is_scalar_tensor(value):
    """True for a one-element torch tensor or numpy array (read with ``.item()``)."""
    return (not isinstance(value, numbers.Number) and callable(getattr(value, "item", None))
            and getattr(value, "size", None) is not None
            and _numel(value) == 1)


def _numel(value):
    n = getattr(value, "numel", None)
    if callable(n):
        return n()
    return value.size


def _number(where, name, value, rng):
    if is_scalar_tensor(value):
        value = value.item()
    elif callable(getattr(value, "item", None)) and not isinstance(value, numbers.Number):
        shape = tuple(getattr(value, "shape", ()))
        raise ValueError(f"{where}: {name} as a tensor must have one element, got shape "
                         f"{shape}")
    return rules.check_real(where, name, value, rng)


def check(where, name, value, rng, step=0, *, tensors=False):
    """Validate a value being set; return what to store: a float, or the schedule (checked
    at ``step``, the next step to run), or with ``tensors`` a one-element tensor (checked
    at its current value). Raises TypeError/ValueError naming ``name``."""
    if isinstance(value, Schedule):
        rules.check_real(f"{where} ({name} schedule at step {step})", name, value(step), rng)
        return value
    if tensors and is_scalar_tensor(value):
        _number(where, name, value, rng)
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "a number, a one-element tensor or a schedule" if tensors else \
            "a number or a schedule"
        raise TypeError(f"{where}: {name} must be {kind}, got {type(value).__name__}")
    return rules.check_real(where, name, value, rng)


def resolve(where, name, value, step, rng):
    """The float in force at ``step`` (steps already taken): a schedule evaluated there, a
    tensor read, a number checked."""
    if isinstance(value, Schedule):
        where = f"{where} ({name} schedule at step {step})"
        value = value(step)
    return _number(where, name, value, rng)


_FIELDS = {}


def _fields(rule):
    """(name, what, range) per field of the rule's struct, cached: what is "step",
    "init_buffer", "flag" or "real"; non-public fields other than init_buffer are left out."""
    out = _FIELDS.get(rule.name)
    if out is None:
        out = []
        for h in rule.hypers:
            if h.name in ("step", "init_buffer"):
                out.append((h.name, h.name, None))
            elif h.public:
                out.append((h.name, "flag" if h.ctype == "int" else "real", h.range))
        out = _FIELDS[rule.name] = tuple(out)
    return out


def kernel_values(rule, where, group, step, *, init_buffer=None, checked_floats=False):
    """Every public hyperparameter of ``rule`` for the step numbered ``step + 1``, resolved
    from ``group`` (a dict of stored values) and checked, by name in C-struct order, with
    ``step`` set to ``step + 1`` (the kernels' convention) and SGD's ``init_buffer``
    passed explicitly. Flags (int fields) are read as bools. ``checked_floats``: the
    caller's plain floats were checked when they were set (lrcore.optim), so only schedules
    and tensors are resolved and checked here; otherwise (torch's hand-editable
    param_groups) every value is checked at every step."""
    f = _KERNEL_VALUES.get(rule.name)
    if f is None:
        f = _KERNEL_VALUES[rule.name] = _make_kernel_values(rule)
    return f(where, group, step, init_buffer, checked_floats)


_KERNEL_VALUES = {}


def _make_kernel_values(rule):
    """kernel_values of one rule as straight-line code generated once from _fields(rule)
    (one step of an optimizer builds this dict per group: a loop over the table per step
    cost as much as the kernels on small models)."""
    lines = ["def kernel_values(where, group, step, init_buffer, checked_floats):",
             "    out = {}"]
    namespace = {"_resolve": resolve}
    for i, (name, what, rng) in enumerate(_fields(rule)):
        if what == "real":
            namespace[f"_rng{i}"] = rng
            lines += [f"    if {name!r} in group:",
                      f"        v = group[{name!r}]",
                      f"        out[{name!r}] = v if checked_floats and type(v) is float else "
                      f"_resolve(where, {name!r}, v, step, _rng{i})"]
        elif what == "flag":
            lines.append(f"    out[{name!r}] = bool(group.get({name!r}, False))")
        elif what == "step":
            lines.append("    out['step'] = step + 1")
        else:
            lines.append("    out['init_buffer'] = bool(init_buffer)")
    lines.append("    return out")
    exec("\n".join(lines) + "\n", namespace)   # noqa: S102 - source built from the table only
    return namespace["kernel_values"]


# -- metrics and serialisation ------------------------------------------------------------

def schedules_in(values):
    """The distinct Schedule objects among ``values`` (an iterable of group dicts or of
    values; tuples such as torch's betas are searched too), in order of appearance."""
    seen, out = set(), []

    def visit(v):
        if isinstance(v, Schedule):
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                visit(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                visit(x)
    for v in values:
        visit(v)
    return out


def report(values, metric):
    """Feed ``metric`` to every ReduceOnPlateau among ``values`` (once per object, however
    many groups share it). Returns how many schedules were fed."""
    metric_ok = isinstance(metric, numbers.Real) and not isinstance(metric, bool)
    if not metric_ok:
        raise TypeError(f"report(): metric must be a real number, got "
                        f"{type(metric).__name__}")
    fed = 0
    for s in schedules_in(values):
        if isinstance(s, ReduceOnPlateau):
            s.report(metric)
            fed += 1
    return fed


def to_data(value):
    """A value as plain data (dicts, lists, str, float, int, bool, None): a schedule becomes
    ``{"schedule": config or None, "state": {...}, "repr": "..."}`` (config None for a
    Lambda, which is not data); tuples become lists; other values are returned as they are."""
    if isinstance(value, Schedule):
        try:
            config = value.to_config()
        except TypeError:
            config = None
        return {"schedule": config, "state": value.state_dict(), "repr": repr(value)}
    if isinstance(value, tuple) and any(isinstance(v, Schedule) for v in value):
        return [to_data(v) for v in value]
    return value


def is_data(value):
    """True for the plain-data form of a schedule written by :func:`to_data`."""
    return isinstance(value, dict) and "schedule" in value and "repr" in value


def from_data(where, name, data, live=None):
    """Rebuild a schedule from :func:`to_data` output. A live schedule with the same
    config keeps its identity (its state is loaded, after the new one has been checked);
    a Lambda (config None) can only be taken from ``live``. Raises ValueError naming
    ``name``."""
    config = data.get("schedule")
    if config is None:
        if not isinstance(live, Schedule):
            raise ValueError(f"{where}: {name} was {data.get('repr')}, which cannot be "
                             f"restored from plain data; set the same schedule before "
                             f"loading")
        return live
    try:
        sched = Schedule.from_config(config)
        sched.load_state_dict(data.get("state", {}))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ValueError(f"{where}: {name}: bad schedule: {exc}") from None
    return sched


def adopt(new, live):
    """After a successful load: keep ``live`` (a caller may hold a reference to it) when it
    has the same config as the loaded schedule ``new``, with ``new``'s state."""
    if isinstance(new, Schedule) and isinstance(live, Schedule) and new is not live:
        try:
            same = new.to_config() == live.to_config()
        except TypeError:
            same = False
        if same:
            live.load_state_dict(new.state_dict())
            return live
    return new
