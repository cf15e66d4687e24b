"""One registry of kernel cases, shared by tests, benchmarks and the self-check, from the table.

Each `KernelSpec` says how to call one kernel of lrcore.kernels: its state buffers in
signature order and its cases. The cases are the full cross-product of the values the
table (lrcore.rules) lists for every option that selects a loop variant (weight decay on
or off, lerp branch, AMSGrad, centered, momentum, nesterov, maximize, ...), less the
combinations the rule forbids; so every loop variant of every kernel runs. Steps 1 and
later select SGD's first-step variant and RAdam's rectification, so callers run several.
"""
import itertools
from dataclasses import dataclass, field

import numpy as np

from . import _validate
from .rules import RULES

__all__ = ["KernelSpec", "KERNEL_SPECS", "spec", "make_state", "call", "Case"]


@dataclass(frozen=True)
class Case:
    """One hyperparameter set: keyword arguments, the state buffers it uses and the
    option values (amsgrad, centered, initial_accumulator_value) that chose them."""
    name: str
    states: tuple
    hyper: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class KernelSpec:
    name: str
    states: tuple          # every state buffer, in signature order
    cases: tuple           # Case objects; cases[0] is the benchmark's default (table defaults)
    lr: float
    rule: object = None

    def bytes_per_element(self, case, itemsize, step=2):
        """Bytes one step moves per element: reads of param, grad and states, writes of
        param and states. (SGD with momentum writes but does not read buf at step 1.)"""
        reads, writes = 2 + len(case.states), 1 + len(case.states)
        if self.name == "sgd" and case.states and step <= 1:
            reads -= 1
        return (reads + writes) * itemsize


def _valid(rule, hyper):
    hp = {h.name: hyper.get(h.name, h.default) for h in rule.hypers if h.public}
    hp["step"] = 1
    try:
        _validate.check_hypers(rule, dict(hp, lr=1.0))
    except ValueError:
        return False
    return True


def _case_name(rule, hyper, options):
    """The settings that differ from the table's defaults, e.g. 'momentum=0.9,nesterov'."""
    defaults = {h.name: h.default for h in rule.hypers}
    defaults.update({o.name: o.default for o in rule.options})
    parts = [(k if v is True else f"{k}={v:g}") for k, v in {**hyper, **options}.items()
             if v != defaults.get(k)]
    return ",".join(parts) or "default"


def _cases(rule):
    """Every combination of the variant-selecting values; the all-defaults case first."""
    axes = [(h.name, h.variants, "hyper") for h in rule.hypers if h.variants and h.public
            and h.name != "init_buffer"]   # init_buffer follows the step (1, then later)
    axes += [(o.name, o.variants, "option") for o in rule.options if o.variants]
    out = []
    for values in itertools.product(*(v for _, v, _ in axes)):
        hyper = {n: x for (n, _, kind), x in zip(axes, values) if kind == "hyper"}
        options = {n: x for (n, _, kind), x in zip(axes, values) if kind == "option"}
        if not _valid(rule, hyper):
            continue
        states = tuple(s.name for s in rule.present_states(dict(hyper, **options)))
        out.append(Case(_case_name(rule, hyper, options), states, hyper, options))
    out.sort(key=lambda c: 0 if c.name == "default" else c.name.count(",") + 1)
    return tuple(out)


# the learning rates the registry's trajectories use (large enough to move every element)
_LR = {"sgd": 0.05, "adam": 1e-2, "adagrad": 0.05, "rmsprop": 1e-3, "adadelta": 1.0,
       "adamax": 1e-2, "nadam": 1e-2, "radam": 1e-2, "lion": 1e-3}

KERNEL_SPECS = tuple(KernelSpec(r.name, tuple(s.name for s in r.states), _cases(r),
                                _LR.get(r.name, r.cli_lr), r) for r in RULES.values())


def spec(name):
    for s in KERNEL_SPECS:
        if s.name == name:
            return s
    raise KeyError(name)


def make_state(kspec, case, like):
    """State buffers for one case at their initial values (Adagrad's state_sum at the
    case's initial_accumulator_value)."""
    rule = kspec.rule
    values = dict(case.hyper, **case.options)
    return {s.name: np.full_like(like, rule.initial_value(s, values))
            for s in rule.states if s.name in case.states}


def call(module, kspec, case, param, grad, state, step, **extra):
    """Run one step of kspec's kernel from `module` (lrcore.kernels, lrcore.reference, or a
    namespace of lrcore.backend.implementation())."""
    fn = getattr(module, kspec.name)
    args = [state.get(name) for name in kspec.states]
    while args and args[-1] is None:
        args.pop()
    return fn(param, grad, *args, lr=kspec.lr, step=step, **case.hyper, **extra)
