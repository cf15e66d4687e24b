"""Short names for schedules (``make("cosine", initial=0.1, steps=100)``) with string
arguments converted to each parameter's type, for command lines."""
from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

from .base import Schedule
from .closed_forms import (Constant, Cosine, CosineWarmRestarts, Cyclic, ExponentialDecay,
                           InverseTimeDecay, Linear, MultiStep, OneCycle, PiecewiseConstant,
                           PolynomialDecay, StepDecay, TimeBasedDecay)
from .composition import warmup_cosine
from .stateful import ReduceOnPlateau

__all__ = ["names", "make", "factory"]


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


def factory(name: str) -> Callable[..., Schedule]:
    """The class or function :func:`make` calls for short name ``name`` (for its signature)."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"factory: name={name!r} is not a known schedule; expected one of "
                         f"{names()}") from None
