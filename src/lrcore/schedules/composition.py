"""Schedules built from schedules (Warmup, Sequential, warmup_cosine) and a user function
(Lambda). Only closed forms compose: a ReduceOnPlateau cannot be shifted or joined."""
from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from .base import Schedule, check_int, check_int_list, check_real, describe
from .closed_forms import Cosine
from .stateful import ReduceOnPlateau

__all__ = ["Warmup", "Sequential", "Lambda", "warmup_cosine"]


def _check_schedule(owner: str, name: str, value: Any) -> Schedule:
    if not isinstance(value, Schedule):
        raise TypeError(f"{owner}: {name} must be a Schedule, got {describe(value)}")
    if isinstance(value, ReduceOnPlateau):
        raise ValueError(f"{owner}: {name} cannot be a ReduceOnPlateau: its value depends on "
                         "reported metrics, not on the step, so it cannot be shifted or joined")
    return value


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
        self.warmup_steps = check_int("Warmup", "warmup_steps", warmup_steps, low=0)
        self.start_value = check_real("Warmup", "start_value", start_value, low=0.0)
        self._freeze()

    def _value(self, step: int) -> float:
        if step >= self.warmup_steps:
            return self.schedule(step - self.warmup_steps)
        target = self.schedule(0)
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
                            f"got {describe(schedules)}")
        if not schedules:
            raise ValueError("Sequential: schedules=[] is empty; expected at least one schedule")
        self.schedules = tuple(_check_schedule("Sequential", f"schedules[{i}]", s)
                               for i, s in enumerate(schedules))
        self.milestones = tuple(check_int_list("Sequential", "milestones", milestones))
        if len(self.milestones) != len(self.schedules) - 1:
            raise ValueError(f"Sequential: milestones={list(self.milestones)} has "
                             f"{len(self.milestones)} entries; expected len(schedules) - 1 = "
                             f"{len(self.schedules) - 1}")
        self._freeze()

    def _value(self, step: int) -> float:
        i = bisect.bisect_right(self.milestones, step)
        offset = self.milestones[i - 1] if i else 0
        return self.schedules[i](step - offset)

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
            raise TypeError(f"Lambda: fn must be callable (step -> float), got {describe(fn)}")
        self.fn = fn
        self._freeze()

    def _value(self, step: int) -> float:
        value = self.fn(step)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"Lambda: fn({step}) returned {describe(value)}; "
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


def warmup_cosine(initial: float, steps: int, warmup_steps: int, floor: float = 0.0,
                  start_value: float = 0.0) -> Warmup:
    """Linear warm-up from ``start_value`` to ``initial`` over ``warmup_steps``, then a cosine
    from ``initial`` to ``floor`` over ``steps`` more steps: ``Warmup(Cosine(initial, steps,
    floor), warmup_steps, start_value)``. Total length ``warmup_steps + steps``.

    ``warmup_steps`` larger than ``steps`` is a ValueError naming both: a warm-up longer
    than the decay that follows it is almost always ``steps`` taken for the whole run's
    length, which would keep the lr near ``start_value`` for all of it (optax's
    ``warmup_cosine_decay_schedule``, whose ``decay_steps`` counts the warm-up, likewise
    refuses a warm-up that leaves no decay). Such a schedule can still be composed on
    purpose as ``Warmup(Cosine(...), warmup_steps)``."""
    cosine = Cosine(initial, steps, floor)
    warmup = check_int("warmup_cosine", "warmup_steps", warmup_steps, low=0)
    if warmup > cosine.steps:
        raise ValueError(f"warmup_cosine: warmup_steps={warmup} is larger than "
                         f"steps={cosine.steps}, the cosine's steps after the warm-up; for a "
                         f"longer warm-up compose Warmup(Cosine(initial, steps, floor), "
                         f"warmup_steps)")
    return Warmup(cosine, warmup, start_value)
