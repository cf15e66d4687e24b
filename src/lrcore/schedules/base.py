"""The Schedule base class (evaluation, description, JSON-able configs) and the argument
checks every schedule uses. Every message names the argument, the value and what was expected.
"""
from __future__ import annotations

import abc
import math
import numbers
import operator
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

__all__ = ["Schedule", "schedule_class", "schedule_classes", "describe", "check_real",
           "check_int", "check_bool", "check_choice", "check_int_list", "check_step",
           "to_jsonable", "from_jsonable"]


def describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_real(owner: str, name: str, value: Any, *, low: float | None = None,
                high: float | None = None, low_open: bool = False,
                high_open: bool = False, hint: str = "") -> float:
    """Return ``value`` as a finite float in the given range, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {describe(value)}")
    value = float(value)
    lo = "-inf" if low is None else repr(float(low))
    hi = "inf" if high is None else repr(float(high))
    wanted = f"a finite number in {'(' if low_open or low is None else '['}{lo}, {hi}" \
             f"{')' if high_open or high is None else ']'}"
    if not math.isfinite(value):
        raise ValueError(f"{owner}: {name}={value!r} is not finite; expected {wanted}")
    if hint:
        wanted += f" ({hint})"
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{owner}: {name}={value!r} is out of range; expected {wanted}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{owner}: {name}={value!r} is out of range; expected {wanted}")
    return value


def check_int(owner: str, name: str, value: Any, *, low: int = 0) -> int:
    """Return ``value`` as an int >= ``low`` (bools and floats are refused)."""
    if isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be an int >= {low}, got {describe(value)}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{owner}: {name} must be an int >= {low}, got {describe(value)}") from None
    if value < low:
        raise ValueError(f"{owner}: {name}={value!r} is out of range; expected an int >= {low}")
    return value


def check_bool(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be True or False, got {describe(value)}")
    return bool(value)


def check_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{owner}: {name}={value!r} is not one of {list(choices)}")
    return value


def check_int_list(owner: str, name: str, value: Any, *, low: int = 1) -> list[int]:
    """A strictly increasing list of ints >= ``low``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence | np.ndarray):
        raise TypeError(f"{owner}: {name} must be a list of ints, got {describe(value)}")
    out = [check_int(owner, f"{name}[{i}]", v, low=low) for i, v in enumerate(value)]
    for i in range(1, len(out)):
        if out[i] <= out[i - 1]:
            raise ValueError(f"{owner}: {name}={out!r} must be strictly increasing; "
                             f"{name}[{i}]={out[i]} follows {out[i - 1]}")
    return out


def check_step(step: Any) -> int:
    if isinstance(step, bool):
        raise TypeError(f"step must be an int >= 0 (steps already taken), got {describe(step)}")
    try:
        step = operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an int >= 0 (steps already taken), "
                        f"got {describe(step)}") from None
    if step < 0:
        raise ValueError(f"step={step} is negative; expected an int >= 0 (steps already taken)")
    return step


_CLASSES: dict[str, type[Schedule]] = {}


class Schedule(abc.ABC):
    """Base class: a learning rate as a function of the number of steps already taken.

    Subclasses implement ``_value(step)`` (step already checked) and ``_arguments()`` (the
    constructor keyword arguments, in order). Instances are immutable, except the progress of
    :class:`ReduceOnPlateau`.
    """

    #: Names of attributes that may change after construction (ReduceOnPlateau's progress).
    _MUTABLE: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            _CLASSES[cls.__name__] = cls

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_frozen", False) and name not in self._MUTABLE:
            raise AttributeError(f"{type(self).__name__} is immutable; cannot set {name!r}")
        object.__setattr__(self, name, value)

    def _freeze(self) -> None:
        object.__setattr__(self, "_frozen", True)

    # -- evaluation ---------------------------------------------------------------------------

    def __call__(self, step: int) -> float:
        """The value to use after ``step`` optimizer steps (``step`` an int >= 0)."""
        return self._value(check_step(step))

    @abc.abstractmethod
    def _value(self, step: int) -> float:
        """The value at a checked step."""

    def values(self, n: int) -> np.ndarray:
        """float64 array of the first ``n`` values, ``[s(0), ..., s(n-1)]`` (bit-identical)."""
        n = check_int(type(self).__name__, "n", n, low=0)
        return np.fromiter((self._value(i) for i in range(n)), dtype=np.float64, count=n)

    # -- description and serialisation ----------------------------------------------------------

    @abc.abstractmethod
    def _arguments(self) -> dict[str, Any]:
        """Constructor keyword arguments, in signature order (nested schedules as objects)."""

    def _defaults(self) -> dict[str, Any]:
        import inspect
        return {k: p.default for k, p in inspect.signature(type(self)).parameters.items()
                if p.default is not inspect.Parameter.empty}

    def __repr__(self) -> str:
        defaults = self._defaults()
        parts = [f"{k}={v!r}" for k, v in self._arguments().items()
                 if not (k in defaults and _same(defaults[k], v))]
        return f"{type(self).__name__}({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return (self._arguments() == other._arguments()
                and self.state_dict() == other.state_dict())

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(self)))

    def to_config(self) -> dict[str, Any]:
        """JSON-able ``{"name": class name, "kwargs": constructor arguments}``; nests."""
        return {"name": type(self).__name__,
                "kwargs": {k: to_jsonable(v) for k, v in self._arguments().items()}}

    @staticmethod
    def from_config(config: dict[str, Any]) -> Schedule:
        """Rebuild a schedule from :meth:`to_config` output (after a JSON round trip too)."""
        if not isinstance(config, dict) or set(config) != {"name", "kwargs"}:
            raise ValueError("Schedule.from_config: config must be a dict with exactly the keys "
                             f"'name' and 'kwargs', got {config!r}")
        name, kwargs = config["name"], config["kwargs"]
        cls = _CLASSES.get(name) if isinstance(name, str) else None
        if cls is None or cls is Schedule:
            raise ValueError(f"Schedule.from_config: name={name!r} is not a schedule class; "
                             f"expected one of {sorted(_CLASSES)}")
        if not isinstance(kwargs, dict):
            raise ValueError("Schedule.from_config: kwargs must be a dict, "
                             f"got {describe(kwargs)}")
        return cls(**{k: from_jsonable(v) for k, v in kwargs.items()})

    # -- state (only ReduceOnPlateau has any) ---------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Mutable progress as JSON-able scalars; ``{}`` for the pure schedules."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; pure schedules accept only ``{}``."""
        if not isinstance(state, dict) or state:
            raise ValueError(f"{type(self).__name__}.load_state_dict: this schedule has no "
                             f"state; expected {{}}, got {state!r}")


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def to_jsonable(value: Any) -> Any:
    if isinstance(value, Schedule):
        return value.to_config()
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def from_jsonable(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"name", "kwargs"}:
        return Schedule.from_config(value)
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value


def schedule_class(name: str) -> type[Schedule] | None:
    """The Schedule subclass called ``name`` (as in a config's "name"), or None."""
    return _CLASSES.get(name) if isinstance(name, str) else None


def schedule_classes() -> list[str]:
    """Names of every Schedule subclass, sorted."""
    return sorted(_CLASSES)
