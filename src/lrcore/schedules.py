"""Learning-rate schedules: pure functions of the step number, in plain Python floats.

A schedule ``s`` gives ``s(step) -> float`` where ``step`` (an int >= 0) is the number of
optimizer steps already taken, so ``s(0)`` is the value used by the first update, exactly
like a PyTorch LR scheduler after ``step`` calls of ``scheduler.step()``.

Use from an optimizer: ``lr = s(step)`` once per update, with ``step`` the number of updates
already applied; for :class:`ReduceOnPlateau` also call ``s.report(metric)`` once per epoch.
To checkpoint, store ``s.to_config()``, ``s.state_dict()`` and the step.

Design: every schedule except :class:`ReduceOnPlateau` is an immutable closed form (optax
style), so resuming from a step number is exact and nothing needs saving but the step.
Formulas mirror the closed forms of torch/keras/optax; ``tests/golden/schedules.json`` holds
values recorded from ``torch.optim.lr_scheduler`` that the tests compare against. Schedules
serialise to JSON-able configs (``to_config`` / ``Schedule.from_config``), and ``make`` builds
one from a short name and string arguments (for command lines). Nothing here is compiled:
the optimizer evaluates the schedule once per step, in double, outside its element loop.
"""

from __future__ import annotations

import abc
import bisect
import json
import math
import numbers
import operator
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "Schedule",
    "Constant",
    "TimeBasedDecay",
    "StepDecay",
    "ExponentialDecay",
    "MultiStep",
    "PiecewiseConstant",
    "InverseTimeDecay",
    "PolynomialDecay",
    "Linear",
    "Cosine",
    "CosineWarmRestarts",
    "Warmup",
    "OneCycle",
    "Cyclic",
    "Sequential",
    "Lambda",
    "ReduceOnPlateau",
    "warmup_cosine",
    "make",
    "names",
    "plot",
]


# --------------------------------------------------------------------------------------------
# Argument checking. Every message names the argument, the value and what was expected.
# --------------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _check_real(owner: str, name: str, value: Any, *, low: float | None = None,
                high: float | None = None, low_open: bool = False,
                high_open: bool = False, hint: str = "") -> float:
    """Return ``value`` as a finite float in the given range, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {_describe(value)}")
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


def _check_int(owner: str, name: str, value: Any, *, low: int = 0) -> int:
    """Return ``value`` as an int >= ``low`` (bools and floats are refused)."""
    if isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be an int >= {low}, got {_describe(value)}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{owner}: {name} must be an int >= {low}, got {_describe(value)}") from None
    if value < low:
        raise ValueError(f"{owner}: {name}={value!r} is out of range; expected an int >= {low}")
    return value


def _check_bool(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be True or False, got {_describe(value)}")
    return bool(value)


def _check_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{owner}: {name}={value!r} is not one of {list(choices)}")
    return value


def _check_int_list(owner: str, name: str, value: Any, *, low: int = 1) -> list[int]:
    """A strictly increasing list of ints >= ``low``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence | np.ndarray):
        raise TypeError(f"{owner}: {name} must be a list of ints, got {_describe(value)}")
    out = [_check_int(owner, f"{name}[{i}]", v, low=low) for i, v in enumerate(value)]
    for i in range(1, len(out)):
        if out[i] <= out[i - 1]:
            raise ValueError(f"{owner}: {name}={out!r} must be strictly increasing; "
                             f"{name}[{i}]={out[i]} follows {out[i - 1]}")
    return out


def _check_step(step: Any) -> int:
    if isinstance(step, bool):
        raise TypeError(f"step must be an int >= 0 (steps already taken), got {_describe(step)}")
    try:
        step = operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an int >= 0 (steps already taken), "
                        f"got {_describe(step)}") from None
    if step < 0:
        raise ValueError(f"step={step} is negative; expected an int >= 0 (steps already taken)")
    return step


def _check_schedule(owner: str, name: str, value: Any) -> Schedule:
    if not isinstance(value, Schedule):
        raise TypeError(f"{owner}: {name} must be a Schedule, got {_describe(value)}")
    if isinstance(value, ReduceOnPlateau):
        raise ValueError(f"{owner}: {name} cannot be a ReduceOnPlateau: its value depends on "
                         "reported metrics, not on the step, so it cannot be shifted or joined")
    return value


# --------------------------------------------------------------------------------------------
# Base class.
# --------------------------------------------------------------------------------------------

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
        return self._value(_check_step(step))

    @abc.abstractmethod
    def _value(self, step: int) -> float:
        """The value at a checked step."""

    def values(self, n: int) -> np.ndarray:
        """float64 array of the first ``n`` values, ``[s(0), ..., s(n-1)]`` (bit-identical)."""
        n = _check_int(type(self).__name__, "n", n, low=0)
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
                "kwargs": {k: _to_jsonable(v) for k, v in self._arguments().items()}}

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
                             f"got {_describe(kwargs)}")
        return cls(**{k: _from_jsonable(v) for k, v in kwargs.items()})

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


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, Schedule):
        return value.to_config()
    if isinstance(value, list | tuple):
        return [_to_jsonable(v) for v in value]
    return value


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"name", "kwargs"}:
        return Schedule.from_config(value)
    if isinstance(value, list):
        return [_from_jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Simple closed forms.
# --------------------------------------------------------------------------------------------


class Constant(Schedule):
    r"""The same value at every step: :math:`\eta_n = v`.

    Counterparts: optax ``constant_schedule``; a torch optimizer without a scheduler.
    """

    def __init__(self, value: float) -> None:
        self.value = _check_real("Constant", "value", value, low=0.0)
        self._freeze()

    def _value(self, step: int) -> float:
        return self.value

    def _arguments(self) -> dict[str, Any]:
        return {"value": self.value}


# Terms of sum_{k>=1} log1p(d k) summed one by one before switching to Euler-Maclaurin.
_TIME_BASED_DIRECT_TERMS = 256


def _log1pmx(u: float) -> float:
    """log(1 + u) - u for u >= 0, without cancellation for small u."""
    if u < 0.25:
        # -u^2/2 + u^3/3 - u^4/4 + ...; terms shrink by at least 4x.
        total, power, j = 0.0, u * u, 2
        while True:
            term = power / j
            if term <= 1e-18 * abs(total) or term == 0.0:
                break
            total += -term if j % 2 == 0 else term
            power *= u
            j += 1
        return total
    return math.log1p(u) - u


class TimeBasedDecay(Schedule):
    r"""Time-based decay, the recursion :math:`\eta_{n+1} = \eta_n / (1 + d\,n)`, from ``initial``.

    Unrolled: :math:`\eta_n = \eta \,/ \prod_{k=0}^{n-1} (1 + d\,k)`, so
    :math:`\eta_1 = \eta_0` (the ``k = 0`` factor is 1) and the decay then speeds up.

    Computed purely as :math:`\eta \exp(-L_n)` with :math:`L_n = \sum_{k=1}^{n-1}
    \mathrm{log1p}(d k)`: up to 511 terms are summed with ``math.fsum``; beyond, the first 255
    are, and the rest comes from Euler-Maclaurin on :math:`\int \mathrm{log1p}(d x)\,dx`
    (written with log1p(u) - u so nothing cancels) with three Bernoulli corrections, whose
    remainder is below 1e-15. So ``s(n)`` costs O(1) (about 40 us) for any ``n``, the
    product never overflows, and the relative error stays below ``8 eps (4 + L_n)`` (tested
    against 60-digit products; ``exp`` turns an ulp of :math:`L_n` into a relative error).
    The lgamma form :math:`d^{n-1}\Gamma(n + 1/d)/\Gamma(1 + 1/d)` was not used: for small
    ``d`` its two lgammas are huge and nearly equal, and their difference loses digits.

    Counterparts: torch ``MultiplicativeLR(lr_lambda=lambda e: 1 / (1 + d * (e - 1)))``
    runs the same recursion. (Keras' legacy ``decay=d`` argument is *not* this: it is
    :class:`InverseTimeDecay` with ``decay_steps=1``.)
    """

    def __init__(self, initial: float, decay: float) -> None:
        self.initial = _check_real("TimeBasedDecay", "initial", initial, low=0.0)
        self.decay = _check_real("TimeBasedDecay", "decay", decay, low=0.0)
        self._freeze()

    def log_divisor(self, step: int) -> float:
        """:math:`L_n = \\sum_{k<n} \\log(1 + d k)`, so that ``s(n) = initial * exp(-L_n)``."""
        n = _check_step(step)
        d = self.decay
        m = n - 1  # last k in the sum
        if m <= 0 or d == 0.0:
            return 0.0
        K = _TIME_BASED_DIRECT_TERMS
        if m < 2 * K:
            return math.fsum(math.log1p(d * k) for k in range(1, m + 1))
        head = math.fsum(math.log1p(d * k) for k in range(1, K))

        # sum_{k=K}^{m} f(k), f(x) = log1p(d x), by Euler-Maclaurin:
        #   int_K^m f + (f(K) + f(m))/2 + sum_j B_2j/(2j)! (f^(2j-1)(m) - f^(2j-1)(K)).
        # int f = G(d x)/d with G(u) = (1+u) log1p(u) - u = u log1p(u) + log1pmx(u).
        def G(u: float) -> float:
            return u * math.log1p(u) + _log1pmx(u)

        def odd_derivatives(x: float) -> tuple[float, float, float]:
            r = d / (1.0 + d * x)  # f'(x); f'''(x) = 2 r^3; f^(5)(x) = 24 r^5
            return r, 2.0 * r ** 3, 24.0 * r ** 5

        a1, a3, a5 = odd_derivatives(float(K))
        b1, b3, b5 = odd_derivatives(float(m))
        tail = math.fsum([
            (G(d * m) - G(d * K)) / d,
            0.5 * (math.log1p(d * K) + math.log1p(d * m)),
            (b1 - a1) / 12.0,
            -(b3 - a3) / 720.0,
            (b5 - a5) / 30240.0,
        ])
        total = head + tail
        return math.inf if math.isnan(total) else total  # inf - inf: d * n overflowed

    def _value(self, step: int) -> float:
        return self.initial * math.exp(-self.log_divisor(step))

    def _arguments(self) -> dict[str, Any]:
        return {"initial": self.initial, "decay": self.decay}


class StepDecay(Schedule):
    r"""Step decay :math:`\eta_n = \eta\, d^{\lfloor (n + o) / r \rfloor}` (offset o, default 1).

    The default ``offset=1`` is the literature form :math:`\eta\,d^{\lfloor (1+n)/r \rfloor}`:
    the first drop happens at ``n = r - 1``. ``offset=0`` drops at ``n = r`` and equals torch
    ``StepLR(step_size=r, gamma=d)``, keras ``ExponentialDecay(staircase=True)`` and optax
    ``exponential_decay(staircase=True)`` with ``transition_steps=r``.
    """

    def __init__(self, initial: float, decay: float, rate: int, offset: int = 1) -> None:
        self.initial = _check_real("StepDecay", "initial", initial, low=0.0)
        self.decay = _check_real("StepDecay", "decay", decay, low=0.0)
        self.rate = _check_int("StepDecay", "rate", rate, low=1)
        self.offset = _check_int("StepDecay", "offset", offset, low=0)
        self._freeze()

    def _value(self, step: int) -> float:
        return self.initial * self.decay ** ((step + self.offset) // self.rate)

    def _arguments(self) -> dict[str, Any]:
        return {"initial": self.initial, "decay": self.decay, "rate": self.rate,
                "offset": self.offset}


class ExponentialDecay(Schedule):
    r"""Exponential decay :math:`\eta_n = \eta\, e^{-d\,n}`.

    Counterparts: torch ``ExponentialLR(gamma=exp(-d))`` (which multiplies by ``gamma`` each
    step; drift about ``n`` ulps); keras/optax ``ExponentialDecay`` with ``decay_rate=exp(-d)``
    and ``decay_steps=1``.
    """

    def __init__(self, initial: float, decay: float) -> None:
        self.initial = _check_real("ExponentialDecay", "initial", initial, low=0.0)
        self.decay = _check_real("ExponentialDecay", "decay", decay, low=0.0)
        self._freeze()

    def _value(self, step: int) -> float:
        return self.initial * math.exp(-self.decay * step)

    def _arguments(self) -> dict[str, Any]:
        return {"initial": self.initial, "decay": self.decay}


class MultiStep(Schedule):
    r"""Drop by ``gamma`` at each milestone: :math:`\eta_n = \eta\,\gamma^{\#\{m_i \le n\}}`.

    Counterpart: torch ``MultiStepLR(milestones, gamma)`` (closed form
    ``base_lr * gamma ** bisect_right(milestones, n)``). Milestones are strictly increasing
    ints >= 1; the new value applies *from* the milestone step on.
    """

    def __init__(self, initial: float, milestones: Sequence[int], gamma: float = 0.1) -> None:
        self.initial = _check_real("MultiStep", "initial", initial, low=0.0)
        self.milestones = tuple(_check_int_list("MultiStep", "milestones", milestones))
        self.gamma = _check_real("MultiStep", "gamma", gamma, low=0.0)
        self._freeze()

    def _value(self, step: int) -> float:
        return self.initial * self.gamma ** bisect.bisect_right(self.milestones, step)

    def _arguments(self) -> dict[str, Any]:
        return {"initial": self.initial, "milestones": list(self.milestones),
                "gamma": self.gamma}


class PiecewiseConstant(Schedule):
    r"""Piecewise constant: :math:`\eta_n = v_i` for :math:`b_{i-1} \le n < b_i`.

    (with :math:`b_{-1} = 0` and :math:`b_k = \infty` for ``k = len(boundaries)``)

    ``len(values) == len(boundaries) + 1``; ``boundaries`` strictly increasing ints >= 1, each
    the first step of the next value (optax ``piecewise_constant_schedule`` and torch
    ``MultiStepLR`` convention). Keras ``PiecewiseConstantDecay`` treats a boundary as the
    *last* step of the previous value, so keras boundary ``b`` is lrcore boundary ``b + 1``.
    torch ``ConstantLR(factor, total_iters)`` is ``PiecewiseConstant([total_iters],
    [lr * factor, lr])``.
    """

    def __init__(self, boundaries: Sequence[int], values: Sequence[float]) -> None:
        self.boundaries = tuple(_check_int_list("PiecewiseConstant", "boundaries", boundaries))
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence | np.ndarray):
            raise TypeError("PiecewiseConstant: values must be a list of numbers, "
                            f"got {_describe(values)}")
        self.levels = tuple(_check_real("PiecewiseConstant", f"values[{i}]", v, low=0.0)
                            for i, v in enumerate(values))
        if len(self.levels) != len(self.boundaries) + 1:
            raise ValueError(f"PiecewiseConstant: values has {len(self.levels)} entries; "
                             f"expected len(boundaries) + 1 = {len(self.boundaries) + 1}")
        self._freeze()

    def _value(self, step: int) -> float:
        return self.levels[bisect.bisect_right(self.boundaries, step)]

    def _arguments(self) -> dict[str, Any]:
        return {"boundaries": list(self.boundaries), "values": list(self.levels)}


class InverseTimeDecay(Schedule):
    r"""Inverse time decay :math:`\eta_n = \eta / (1 + r\, n / T)` (keras ``InverseTimeDecay``).

    With ``staircase=True`` the ratio is floored: :math:`\eta / (1 + r \lfloor n/T \rfloor)`.
    ``decay_steps`` (T) is a real > 0, as in keras.
    """

    def __init__(self, initial: float, decay_rate: float, decay_steps: float,
                 staircase: bool = False) -> None:
        self.initial = _check_real("InverseTimeDecay", "initial", initial, low=0.0)
        self.decay_rate = _check_real("InverseTimeDecay", "decay_rate", decay_rate, low=0.0)
        self.decay_steps = _check_real("InverseTimeDecay", "decay_steps", decay_steps,
                                       low=0.0, low_open=True)
        self.staircase = _check_bool("InverseTimeDecay", "staircase", staircase)
        self._freeze()

    def _value(self, step: int) -> float:
        ratio = step / self.decay_steps
        if self.staircase:
            ratio = math.floor(ratio)
        return self.initial / (1.0 + self.decay_rate * ratio)

    def _arguments(self) -> dict[str, Any]:
        return {"initial": self.initial, "decay_rate": self.decay_rate,
                "decay_steps": self.decay_steps, "staircase": self.staircase}


class PolynomialDecay(Schedule):
    r"""Polynomial decay :math:`\eta_n = (\eta - e)(1 - \min(n, T)/T)^p + e` (keras).

    With ``cycle=True`` the horizon grows instead of clamping: :math:`T_n = T \lceil n/T
    \rceil` (and :math:`T_0 = T`), so the value jumps back up after each multiple of ``T``,
    as in keras. With ``end=0`` this is torch ``PolynomialLR(total_iters=T, power=p)``.
    """

    def __init__(self, initial: float, end: float, decay_steps: int, power: float = 1.0,
                 cycle: bool = False) -> None:
        self.initial = _check_real("PolynomialDecay", "initial", initial, low=0.0)
        self.end = _check_real("PolynomialDecay", "end", end, low=0.0)
        self.decay_steps = _check_int("PolynomialDecay", "decay_steps", decay_steps, low=1)
        self.power = _check_real("PolynomialDecay", "power", power, low=0.0, low_open=True)
        self.cycle = _check_bool("PolynomialDecay", "cycle", cycle)
        self._freeze()

    def _value(self, step: int) -> float:
        horizon = self.decay_steps
        if self.cycle:
            horizon *= max(1, -(-step // self.decay_steps))  # ceil, and 1 at step 0
        else:
            step = min(step, horizon)
        return (self.initial - self.end) * (1.0 - step / horizon) ** self.power + self.end

    def _arguments(self) -> dict[str, Any]:
        return {"initial": self.initial, "end": self.end, "decay_steps": self.decay_steps,
                "power": self.power, "cycle": self.cycle}


class Linear(Schedule):
    r"""Linear interpolation :math:`\eta_n = a + (b - a) \min(n, T)/T`, then ``end`` forever.

    Counterparts: optax ``linear_schedule(start, end, T)``; torch
    ``LinearLR(start_factor=a/lr, end_factor=b/lr, total_iters=T)``.
    """

    def __init__(self, start: float, end: float, steps: int) -> None:
        self.start = _check_real("Linear", "start", start, low=0.0)
        self.end = _check_real("Linear", "end", end, low=0.0)
        self.steps = _check_int("Linear", "steps", steps, low=1)
        self._freeze()

    def _value(self, step: int) -> float:
        if step >= self.steps:
            return self.end
        return self.start + (self.end - self.start) * (step / self.steps)

    def _arguments(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "steps": self.steps}


class Cosine(Schedule):
    r"""Cosine annealing :math:`\eta_n = f + \tfrac12(\eta - f)(1 + \cos(\pi \min(n, T)/T))`.

    Equals the closed form of torch ``CosineAnnealingLR(T_max=T, eta_min=f)`` for
    ``n <= T``. Past ``T`` it stays at ``floor`` (optax ``cosine_decay_schedule``, keras
    ``CosineDecay``), whereas torch keeps following the cosine back up (period ``2T``); use
    :class:`CosineWarmRestarts` for restarts.
    """

    def __init__(self, initial: float, steps: int, floor: float = 0.0) -> None:
        self.initial = _check_real("Cosine", "initial", initial, low=0.0)
        self.steps = _check_int("Cosine", "steps", steps, low=1)
        self.floor = _check_real("Cosine", "floor", floor, low=0.0, high=self.initial,
                                 hint="floor may not exceed initial")
        self._freeze()

    def _value(self, step: int) -> float:
        if step >= self.steps:
            return self.floor
        return self.floor + (self.initial - self.floor) * (
            1.0 + math.cos(math.pi * step / self.steps)) / 2.0

    def _arguments(self) -> dict[str, Any]:
        return {"initial": self.initial, "steps": self.steps, "floor": self.floor}


class CosineWarmRestarts(Schedule):
    r"""SGDR: :math:`\eta_n = f + \tfrac12 \delta^i (\eta - f)(1 + \cos(\pi t / T_i))`.

    Cycle ``i`` (from 0) lasts :math:`T_i = T_0 m^i` steps (``period``, ``period_mult``) and
    ``t`` counts steps since its start, so the value restarts at ``initial`` (times
    :math:`\delta^i`) after each cycle and never reaches ``floor`` exactly. ``decay``
    (:math:`\delta`) scales the amplitude above ``floor`` at each restart.

    Counterparts: with ``decay=1`` exactly torch ``CosineAnnealingWarmRestarts(T_0, T_mult,
    eta_min)`` (computed from integer ``t`` and ``T_i`` as torch does); ``decay`` is optax
    ``sgdr``/keras ``CosineDecayRestarts`` ``m_mul``, except that keras also scales the floor
    (its ``alpha`` is relative) while here ``floor`` is absolute.
    """

    def __init__(self, initial: float, period: int, period_mult: int = 1, floor: float = 0.0,
                 decay: float = 1.0) -> None:
        self.initial = _check_real("CosineWarmRestarts", "initial", initial, low=0.0)
        self.period = _check_int("CosineWarmRestarts", "period", period, low=1)
        self.period_mult = _check_int("CosineWarmRestarts", "period_mult", period_mult, low=1)
        self.floor = _check_real("CosineWarmRestarts", "floor", floor, low=0.0,
                                 high=self.initial, hint="floor may not exceed initial")
        self.decay = _check_real("CosineWarmRestarts", "decay", decay, low=0.0, high=1.0)
        self._freeze()

    def cycle(self, step: int) -> tuple[int, int, int]:
        """``(i, t, T_i)``: cycle index, steps into the cycle, cycle length at ``step``."""
        step = _check_step(step)
        if self.period_mult == 1:
            return step // self.period, step % self.period, self.period
        i, t, length = 0, step, self.period
        while t >= length:  # O(log step): lengths grow geometrically
            t -= length
            length *= self.period_mult
            i += 1
        return i, t, length

    def _value(self, step: int) -> float:
        i, t, length = self.cycle(step)
        amplitude = self.initial - self.floor
        if self.decay != 1.0:
            amplitude *= self.decay ** i
        return self.floor + amplitude * (1.0 + math.cos(math.pi * t / length)) / 2.0

    def _arguments(self) -> dict[str, Any]:
        return {"initial": self.initial, "period": self.period,
                "period_mult": self.period_mult, "floor": self.floor, "decay": self.decay}


class OneCycle(Schedule):
    r"""1cycle policy, exactly torch ``OneCycleLR`` for ``n < total_steps``.

    With :math:`\eta_0 = M/\text{div\_factor}` and :math:`\eta_{min} = \eta_0 /
    \text{final\_div\_factor}`, phases end at steps :math:`e_1 = pT - 1` and :math:`e_2 = T - 1`
    (``three_phase``: :math:`e_1 = pT - 1`, :math:`e_2 = 2pT - 2`, :math:`e_3 = T - 1`); phase
    ``k`` anneals from its start value to its end value as
    :math:`\text{anneal}(a, b, x) = b + \tfrac12(a - b)(1 + \cos \pi x)` (``'cos'``) or
    :math:`a + (b - a)x` (``'linear'``), with :math:`x = (n - e_{k-1})/(e_k - e_{k-1})`,
    :math:`e_0 = 0`. Two phases: :math:`\eta_0 \to M \to \eta_{min}`; three:
    :math:`\eta_0 \to M \to \eta_0 \to \eta_{min}`.

    Past the end (``n >= T - 1``) the value stays at :math:`\eta_{min}`; torch instead
    extrapolates the last phase at ``n = T`` and raises beyond. Momentum cycling is not part
    of a learning-rate schedule.
    """

    def __init__(self, max_value: float, total_steps: int, pct_start: float = 0.3,
                 anneal: str = "cos", div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False) -> None:
        owner = "OneCycle"
        self.max_value = _check_real(owner, "max_value", max_value, low=0.0)
        self.total_steps = _check_int(owner, "total_steps", total_steps, low=2)
        self.pct_start = _check_real(owner, "pct_start", pct_start, low=0.0, high=1.0)
        self.anneal = _check_choice(owner, "anneal", anneal, ("cos", "linear"))
        self.div_factor = _check_real(owner, "div_factor", div_factor, low=0.0, low_open=True)
        self.final_div_factor = _check_real(owner, "final_div_factor", final_div_factor,
                                            low=0.0, low_open=True)
        self.three_phase = _check_bool(owner, "three_phase", three_phase)
        initial = self.max_value / self.div_factor
        minimum = initial / self.final_div_factor
        T, p = self.total_steps, self.pct_start
        if self.three_phase:
            phases = [(float(p * T) - 1, initial, self.max_value),
                      (float(2 * p * T) - 2, self.max_value, initial),
                      (float(T - 1), initial, minimum)]
        else:
            phases = [(float(p * T) - 1, initial, self.max_value),
                      (float(T - 1), self.max_value, minimum)]
        ends = [0.0] + [e for e, _, _ in phases]
        if any(b <= a for a, b in zip(ends, ends[1:])):
            raise ValueError(
                f"OneCycle: total_steps={T}, pct_start={p} give phase end steps "
                f"{[e for e, _, _ in phases]}; expected each phase to span more than 0 steps "
                "(pct_start * total_steps > 1, and the last phase non-empty)")
        self._phases = tuple(phases)
        self._freeze()

    def _value(self, step: int) -> float:
        start = 0.0
        for k, (end, a, b) in enumerate(self._phases):
            if step <= end or k == len(self._phases) - 1:
                x = min(1.0, (step - start) / (end - start))
                if self.anneal == "cos":
                    return b + (a - b) / 2.0 * (math.cos(math.pi * x) + 1)
                return (b - a) * x + a
            start = end
        raise AssertionError("unreachable")

    def _arguments(self) -> dict[str, Any]:
        return {"max_value": self.max_value, "total_steps": self.total_steps,
                "pct_start": self.pct_start, "anneal": self.anneal,
                "div_factor": self.div_factor, "final_div_factor": self.final_div_factor,
                "three_phase": self.three_phase}


class Cyclic(Schedule):
    r"""Cyclical learning rate, exactly torch ``CyclicLR`` (learning rate only).

    With :math:`S = u + w` (``step_size_up`` + ``step_size_down``), :math:`c = \lfloor 1 + n/S
    \rfloor` and :math:`x = 1 + n/S - c`, the height is :math:`h = x/(u/S)` while
    :math:`x \le u/S`, else :math:`(x-1)/(u/S - 1)`, and
    :math:`\eta_n = \text{base} + (\text{max} - \text{base})\, h\, \sigma`, with
    :math:`\sigma = 1` (``'triangular'``), :math:`2^{1-c}` (``'triangular2'``) or
    :math:`\gamma^n` (``'exp_range'``). Cycles repeat forever.
    """

    def __init__(self, base: float, max_value: float, step_size_up: int,
                 step_size_down: int | None = None, mode: str = "triangular",
                 gamma: float = 1.0) -> None:
        owner = "Cyclic"
        self.base = _check_real(owner, "base", base, low=0.0)
        self.max_value = _check_real(owner, "max_value", max_value, low=self.base,
                                     hint="max_value may not be below base")
        self.step_size_up = _check_int(owner, "step_size_up", step_size_up, low=1)
        self.step_size_down = (None if step_size_down is None else
                               _check_int(owner, "step_size_down", step_size_down, low=1))
        self.mode = _check_choice(owner, "mode", mode, ("triangular", "triangular2", "exp_range"))
        self.gamma = _check_real(owner, "gamma", gamma, low=0.0, high=1.0, low_open=True)
        up = float(self.step_size_up)
        down = float(self.step_size_down) if self.step_size_down is not None else up
        self._total_size = up + down
        self._step_ratio = up / self._total_size
        self._freeze()

    def _value(self, step: int) -> float:
        cycle = math.floor(1 + step / self._total_size)
        x = 1.0 + step / self._total_size - cycle
        if x <= self._step_ratio:
            height = x / self._step_ratio
        else:
            height = (x - 1) / (self._step_ratio - 1)
        if self.mode == "triangular":
            scale = 1.0
        elif self.mode == "triangular2":
            scale = 1 / (2.0 ** (cycle - 1))
        else:
            scale = self.gamma ** step
        return self.base + (self.max_value - self.base) * height * scale

    def _arguments(self) -> dict[str, Any]:
        return {"base": self.base, "max_value": self.max_value,
                "step_size_up": self.step_size_up, "step_size_down": self.step_size_down,
                "mode": self.mode, "gamma": self.gamma}


# --------------------------------------------------------------------------------------------
# Composites and the user function.
# --------------------------------------------------------------------------------------------


class Warmup(Schedule):
    r"""Linear warm-up in front of another schedule, which then starts from its own step 0.

    .. math::
        \eta_n = \begin{cases} a + (s(0) - a)\, n / W & n < W \\ s(n - W) & n \ge W \end{cases}

    with ``a = start_value``, ``W = warmup_steps`` and ``s`` the wrapped schedule: the ramp
    ends at the wrapped schedule's initial value and the wrapped schedule is shifted by ``W``
    steps, so the whole thing lasts ``W`` + (its length). This is keras ``CosineDecay(
    warmup_target, warmup_steps)`` and optax ``warmup_cosine_decay_schedule`` (whose
    ``decay_steps`` counts the warm-up too, so optax ``decay_steps`` = ``W`` + cosine steps),
    and torch ``SequentialLR([LinearLR(a/lr, 1, W), s], milestones=[W])``.
    """

    def __init__(self, schedule: Schedule, warmup_steps: int, start_value: float = 0.0) -> None:
        self.schedule = _check_schedule("Warmup", "schedule", schedule)
        self.warmup_steps = _check_int("Warmup", "warmup_steps", warmup_steps, low=0)
        self.start_value = _check_real("Warmup", "start_value", start_value, low=0.0)
        self._freeze()

    def _value(self, step: int) -> float:
        if step >= self.warmup_steps:
            return self.schedule._value(step - self.warmup_steps)
        target = self.schedule._value(0)
        return self.start_value + (target - self.start_value) * (step / self.warmup_steps)

    def _arguments(self) -> dict[str, Any]:
        return {"schedule": self.schedule, "warmup_steps": self.warmup_steps,
                "start_value": self.start_value}


class Sequential(Schedule):
    r"""Run schedules one after another, switching at the milestones (torch ``SequentialLR``).

    With milestones :math:`m_1 < \dots < m_{k-1}` and :math:`i = \#\{m_j \le n\}`:
    :math:`\eta_n = s_0(n)` for :math:`i = 0`, else :math:`s_i(n - m_i)`. Each later schedule
    is restarted at its own step 0 at its milestone (torch calls ``_update_lr(0)`` there),
    so schedule ``i`` sees steps ``0 .. m_{i+1} - m_i - 1``. Unlike torch, each schedule has
    its own initial value rather than all sharing the optimizer's base learning rate.
    """

    def __init__(self, schedules: Sequence[Schedule], milestones: Sequence[int]) -> None:
        if isinstance(schedules, Schedule) or not isinstance(schedules, Sequence):
            raise TypeError(f"Sequential: schedules must be a list of Schedules, "
                            f"got {_describe(schedules)}")
        if not schedules:
            raise ValueError("Sequential: schedules=[] is empty; expected at least one schedule")
        self.schedules = tuple(_check_schedule("Sequential", f"schedules[{i}]", s)
                               for i, s in enumerate(schedules))
        self.milestones = tuple(_check_int_list("Sequential", "milestones", milestones))
        if len(self.milestones) != len(self.schedules) - 1:
            raise ValueError(f"Sequential: milestones={list(self.milestones)} has "
                             f"{len(self.milestones)} entries; expected len(schedules) - 1 = "
                             f"{len(self.schedules) - 1}")
        self._freeze()

    def _value(self, step: int) -> float:
        i = bisect.bisect_right(self.milestones, step)
        offset = self.milestones[i - 1] if i else 0
        return self.schedules[i]._value(step - offset)

    def _arguments(self) -> dict[str, Any]:
        return {"schedules": list(self.schedules), "milestones": list(self.milestones)}


class Lambda(Schedule):
    r"""A user function of the step: :math:`\eta_n = f(n)`.

    Unlike torch ``LambdaLR`` (which multiplies the base learning rate by ``f(n)``), ``f``
    returns the value itself; every result is checked to be a finite real >= 0. ``f`` must
    be pure for the schedule to be. Cannot be serialised with :meth:`to_config`.
    """

    def __init__(self, fn: Callable[[int], float]) -> None:
        if not callable(fn):
            raise TypeError(f"Lambda: fn must be callable (step -> float), got {_describe(fn)}")
        self.fn = fn
        self._freeze()

    def _value(self, step: int) -> float:
        value = self.fn(step)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"Lambda: fn({step}) returned {_describe(value)}; "
                            "expected a finite real number >= 0")
        value = float(value)
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"Lambda: fn({step}) returned {value!r}; "
                             "expected a finite real number >= 0")
        return value

    def _arguments(self) -> dict[str, Any]:
        return {"fn": self.fn}

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", None) or repr(self.fn)
        return f"Lambda(fn=<{name}>)"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.fn is other.fn

    __hash__ = Schedule.__hash__

    def to_config(self) -> dict[str, Any]:
        raise TypeError("Lambda schedules cannot be serialised: a Python function is not "
                        "data. Use a named schedule (see lrcore.schedules.names()), or "
                        "store your own description of the function next to the checkpoint")


class ReduceOnPlateau(Schedule):
    r"""Cut the value by ``factor`` when a reported metric stops improving (ReduceLROnPlateau).

    The only stateful schedule: ``s(step)`` returns the current value whatever ``step`` is,
    and ``s.report(metric)`` (e.g. once per epoch) updates it. For each report, with ``best``
    the best metric so far: it improves if ``metric < best (1 - threshold)`` (``'min'``,
    ``'rel'``), ``< best - threshold`` (``'abs'``), or the mirrored ``>`` tests for ``'max'``.
    Non-improving reports count as bad (reports during a cooldown do not); when more than
    ``patience`` have accumulated the value becomes ``max(value * factor, min_value)`` (only
    if that lowers it by more than ``eps``), the counter resets and a cooldown of
    ``cooldown`` reports starts. NaN metrics never improve, as in torch.

    ``state_dict()`` holds the progress (JSON-able); ``to_config()`` only the arguments.
    """

    _MUTABLE = ("value", "best", "num_bad_reports", "cooldown_counter", "num_reports")

    def __init__(self, initial: float, mode: str = "min", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4, threshold_mode: str = "rel",
                 cooldown: int = 0, min_value: float = 0.0, eps: float = 1e-8) -> None:
        owner = "ReduceOnPlateau"
        self.initial = _check_real(owner, "initial", initial, low=0.0)
        self.mode = _check_choice(owner, "mode", mode, ("min", "max"))
        self.factor = _check_real(owner, "factor", factor, low=0.0, high=1.0, high_open=True)
        self.patience = _check_int(owner, "patience", patience, low=0)
        self.threshold = _check_real(owner, "threshold", threshold, low=0.0)
        self.threshold_mode = _check_choice(owner, "threshold_mode", threshold_mode,
                                            ("rel", "abs"))
        self.cooldown = _check_int(owner, "cooldown", cooldown, low=0)
        self.min_value = _check_real(owner, "min_value", min_value, low=0.0)
        self.eps = _check_real(owner, "eps", eps, low=0.0)
        self.value = self.initial
        self.best: float | None = None  # no report yet (torch: +inf for 'min', -inf for 'max')
        self.num_bad_reports = 0
        self.cooldown_counter = 0
        self.num_reports = 0
        self._freeze()

    def _value(self, step: int) -> float:
        return self.value

    def _is_better(self, metric: float) -> bool:
        if self.best is None:
            best = math.inf if self.mode == "min" else -math.inf
        else:
            best = self.best
        if self.mode == "min":
            bar = best * (1.0 - self.threshold) if self.threshold_mode == "rel" \
                else best - self.threshold
            return metric < bar
        bar = best * (self.threshold + 1.0) if self.threshold_mode == "rel" \
            else best + self.threshold
        return metric > bar

    def report(self, metric: float) -> float:
        """Feed one metric value (e.g. a validation loss per epoch); returns the new value."""
        if isinstance(metric, bool) or not isinstance(metric, numbers.Real):
            try:  # zero-dimensional arrays and tensors
                metric = float(metric)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise TypeError(f"ReduceOnPlateau.report: metric must be a real number, "
                                f"got {_describe(metric)}") from None
        metric = float(metric)
        self.num_reports += 1
        if self._is_better(metric):
            self.best = metric
            self.num_bad_reports = 0
        else:
            self.num_bad_reports += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_reports = 0
        if self.num_bad_reports > self.patience:
            new_value = max(self.value * self.factor, self.min_value)
            if self.value - new_value > self.eps:
                self.value = new_value
            self.cooldown_counter = self.cooldown
            self.num_bad_reports = 0
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "best": self.best,
                "num_bad_reports": self.num_bad_reports,
                "cooldown_counter": self.cooldown_counter, "num_reports": self.num_reports}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        owner = "ReduceOnPlateau.load_state_dict"
        expected = set(self._MUTABLE)
        if not isinstance(state, dict) or set(state) != expected:
            got = sorted(state) if isinstance(state, dict) else _describe(state)
            raise ValueError(f"{owner}: expected a dict with keys {sorted(expected)}, got {got}")
        value = _check_real(owner, "value", state["value"], low=0.0)
        best = state["best"]
        if best is not None:
            if isinstance(best, bool) or not isinstance(best, numbers.Real):
                raise TypeError(f"{owner}: best must be a real number or None, "
                                f"got {_describe(best)}")
            best = float(best)
        counters = {k: _check_int(owner, k, state[k], low=0)
                    for k in ("num_bad_reports", "cooldown_counter", "num_reports")}
        self.value = value
        self.best = best
        for k, v in counters.items():
            setattr(self, k, v)

    def _arguments(self) -> dict[str, Any]:
        return {"initial": self.initial, "mode": self.mode, "factor": self.factor,
                "patience": self.patience, "threshold": self.threshold,
                "threshold_mode": self.threshold_mode, "cooldown": self.cooldown,
                "min_value": self.min_value, "eps": self.eps}


# --------------------------------------------------------------------------------------------
# Registry of short names, for command lines.
# --------------------------------------------------------------------------------------------


def warmup_cosine(initial: float, steps: int, warmup_steps: int, floor: float = 0.0,
                  start_value: float = 0.0) -> Warmup:
    """Linear warm-up from ``start_value`` to ``initial`` over ``warmup_steps``, then a cosine
    from ``initial`` to ``floor`` over ``steps`` more steps: ``Warmup(Cosine(initial, steps,
    floor), warmup_steps, start_value)``. Total length ``warmup_steps + steps``."""
    return Warmup(Cosine(initial, steps, floor), warmup_steps, start_value)


_REGISTRY: dict[str, Callable[..., Schedule]] = {
    "constant": Constant,
    "time_based": TimeBasedDecay,
    "step": StepDecay,
    "exponential": ExponentialDecay,
    "multistep": MultiStep,
    "piecewise": PiecewiseConstant,
    "inverse_time": InverseTimeDecay,
    "polynomial": PolynomialDecay,
    "linear": Linear,
    "cosine": Cosine,
    "cosine_restarts": CosineWarmRestarts,
    "warmup_cosine": warmup_cosine,
    "onecycle": OneCycle,
    "cyclic": Cyclic,
    "reduce_on_plateau": ReduceOnPlateau,
}


def names() -> list[str]:
    """The short names :func:`make` accepts, sorted."""
    return sorted(_REGISTRY)


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _parse(owner: str, name: str, text: str, annotation: str) -> Any:
    """Convert one command-line string to the parameter's annotated type."""
    kind = annotation.replace(" ", "")
    try:
        if kind == "float":
            return float(text)
        if kind == "int":
            return int(text)
        if kind == "int|None":
            return None if text.lower() in ("none", "") else int(text)
        if kind == "bool":
            low = text.lower()
            if low in _TRUE | _FALSE:
                return low in _TRUE
            raise ValueError(text)
        if kind == "str":
            return text
        if kind in ("Sequence[int]", "Sequence[float]"):
            stripped = text.strip()
            items = json.loads(stripped) if stripped.startswith("[") else \
                [t for t in stripped.split(",") if t.strip()]
            convert = int if kind == "Sequence[int]" else float
            return [convert(t) if isinstance(t, str) else t for t in items]
    except ValueError:
        raise ValueError(f"{owner}: {name}={text!r} cannot be read as {kind}") from None
    raise TypeError(f"{owner}: {name} cannot be given as a string (type {kind})")


def make(name: str, **kwargs: Any) -> Schedule:
    """Build a schedule from a short name (see :func:`names`) and keyword arguments.

    String values are converted to the parameter's type, so command-line text works:
    ``make("step", initial="0.1", decay="0.5", rate="10")``; lists as ``"30,60,90"`` or
    JSON ``"[30, 60, 90]"``; bools as ``true/false/1/0/yes/no``.
    """
    import inspect
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ValueError(f"make: name={name!r} is not a known schedule; expected one of {names()}")
    params = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise TypeError(f"make({name!r}): unknown argument(s) {unknown}; "
                        f"expected some of {list(params)}")
    missing = [k for k, p in params.items()
               if p.default is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise TypeError(f"make({name!r}): missing required argument(s) {missing}")
    converted = {k: _parse(f"make({name!r})", k, v, str(params[k].annotation))
                 if isinstance(v, str) and str(params[k].annotation) != "str" else v
                 for k, v in kwargs.items()}
    return factory(**converted)


# --------------------------------------------------------------------------------------------
# Plotting (matplotlib is optional).
# --------------------------------------------------------------------------------------------


def plot(schedule: Schedule, steps: int, path: str | None = None) -> Any:
    """Draw ``schedule`` over steps ``0 .. steps-1``; return the matplotlib Figure.

    With ``path`` the figure is rendered with the Agg backend and saved there (the format
    follows the extension), without touching pyplot's global backend; without it the figure
    comes from pyplot, so it shows in notebooks and with ``plt.show()``.
    """
    if not isinstance(schedule, Schedule):
        raise TypeError(f"plot: schedule must be a Schedule, got {_describe(schedule)}")
    steps = _check_int("plot", "steps", steps, low=1)
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ImportError("plot() needs matplotlib, an optional dependency of lrcore: "
                          "pip install matplotlib") from exc
    if path is None:
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
    else:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        fig = Figure(figsize=(6.4, 3.6))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    ax.plot(np.arange(steps), schedule.values(steps), lw=1.5)
    ax.set_xlabel("step (optimizer steps taken)")
    ax.set_ylabel("value")
    ax.set_title(repr(schedule), fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig
