"""The one stateful schedule, :class:`ReduceOnPlateau`: its value follows reported metrics,
so its progress (``state_dict``) is saved beside the step."""
from __future__ import annotations

import math
import numbers
from typing import Any

from .base import Schedule, check_choice, check_int, check_real, describe

__all__ = ["ReduceOnPlateau"]


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
        self.initial = check_real(owner, "initial", initial, low=0.0)
        self.mode = check_choice(owner, "mode", mode, ("min", "max"))
        self.factor = check_real(owner, "factor", factor, low=0.0, high=1.0, high_open=True)
        self.patience = check_int(owner, "patience", patience, low=0)
        self.threshold = check_real(owner, "threshold", threshold, low=0.0)
        self.threshold_mode = check_choice(owner, "threshold_mode", threshold_mode,
                                            ("rel", "abs"))
        self.cooldown = check_int(owner, "cooldown", cooldown, low=0)
        self.min_value = check_real(owner, "min_value", min_value, low=0.0)
        self.eps = check_real(owner, "eps", eps, low=0.0)
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
                                f"got {describe(metric)}") from None
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
            got = sorted(state) if isinstance(state, dict) else describe(state)
            raise ValueError(f"{owner}: expected a dict with keys {sorted(expected)}, got {got}")
        value = check_real(owner, "value", state["value"], low=0.0)
        best = state["best"]
        if best is not None:
            if isinstance(best, bool) or not isinstance(best, numbers.Real):
                raise TypeError(f"{owner}: best must be a real number or None, "
                                f"got {describe(best)}")
            best = float(best)
        counters = {k: check_int(owner, k, state[k], low=0)
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
