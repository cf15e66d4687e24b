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

Layout: :mod:`.base` (the Schedule class, configs, argument checks), :mod:`.closed_forms`,
:mod:`.composition` (Warmup, Sequential, Lambda), :mod:`.stateful` (ReduceOnPlateau),
:mod:`.names` (short names and ``make``) and :mod:`.plotting`.
"""
from .base import Schedule
from .closed_forms import (Constant, Cosine, CosineWarmRestarts, Cyclic, ExponentialDecay,
                           InverseTimeDecay, Linear, MultiStep, OneCycle, PiecewiseConstant,
                           PolynomialDecay, StepDecay, TimeBasedDecay)
from .composition import Lambda, Sequential, Warmup, warmup_cosine
from .names import factory, make, names
from .plotting import plot
from .stateful import ReduceOnPlateau

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
    "factory",
    "plot",
]
