"""Closed-form schedules: pure functions of the step (constant, step/exponential/time-based
decays, multi-step, piecewise, inverse-time, polynomial, linear, cosine, warm restarts,
one-cycle, cyclic). Nothing to save but the step."""
from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import (Schedule, check_bool, check_choice, check_int, check_int_list, check_real,
                   check_step, describe)

__all__ = ["Constant", "TimeBasedDecay", "StepDecay", "ExponentialDecay", "MultiStep",
           "PiecewiseConstant", "InverseTimeDecay", "PolynomialDecay", "Linear", "Cosine",
           "CosineWarmRestarts", "OneCycle", "Cyclic"]


class Constant(Schedule):
    r"""The same value at every step: :math:`\eta_n = v`.

    Counterparts: optax ``constant_schedule``; a torch optimizer without a scheduler.
    """

    def __init__(self, value: float) -> None:
        self.value = check_real("Constant", "value", value, low=0.0)
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
        self.initial = check_real("TimeBasedDecay", "initial", initial, low=0.0)
        self.decay = check_real("TimeBasedDecay", "decay", decay, low=0.0)
        self._freeze()

    def log_divisor(self, step: int) -> float:
        """:math:`L_n = \\sum_{k<n} \\log(1 + d k)`, so that ``s(n) = initial * exp(-L_n)``."""
        n = check_step(step)
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
        self.initial = check_real("StepDecay", "initial", initial, low=0.0)
        self.decay = check_real("StepDecay", "decay", decay, low=0.0)
        self.rate = check_int("StepDecay", "rate", rate, low=1)
        self.offset = check_int("StepDecay", "offset", offset, low=0)
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
        self.initial = check_real("ExponentialDecay", "initial", initial, low=0.0)
        self.decay = check_real("ExponentialDecay", "decay", decay, low=0.0)
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
        self.initial = check_real("MultiStep", "initial", initial, low=0.0)
        self.milestones = tuple(check_int_list("MultiStep", "milestones", milestones))
        self.gamma = check_real("MultiStep", "gamma", gamma, low=0.0)
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
        self.boundaries = tuple(check_int_list("PiecewiseConstant", "boundaries", boundaries))
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence | np.ndarray):
            raise TypeError("PiecewiseConstant: values must be a list of numbers, "
                            f"got {describe(values)}")
        self.levels = tuple(check_real("PiecewiseConstant", f"values[{i}]", v, low=0.0)
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
        self.initial = check_real("InverseTimeDecay", "initial", initial, low=0.0)
        self.decay_rate = check_real("InverseTimeDecay", "decay_rate", decay_rate, low=0.0)
        self.decay_steps = check_real("InverseTimeDecay", "decay_steps", decay_steps,
                                       low=0.0, low_open=True)
        self.staircase = check_bool("InverseTimeDecay", "staircase", staircase)
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
        self.initial = check_real("PolynomialDecay", "initial", initial, low=0.0)
        self.end = check_real("PolynomialDecay", "end", end, low=0.0)
        self.decay_steps = check_int("PolynomialDecay", "decay_steps", decay_steps, low=1)
        self.power = check_real("PolynomialDecay", "power", power, low=0.0, low_open=True)
        self.cycle = check_bool("PolynomialDecay", "cycle", cycle)
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
        self.start = check_real("Linear", "start", start, low=0.0)
        self.end = check_real("Linear", "end", end, low=0.0)
        self.steps = check_int("Linear", "steps", steps, low=1)
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
        self.initial = check_real("Cosine", "initial", initial, low=0.0)
        self.steps = check_int("Cosine", "steps", steps, low=1)
        self.floor = check_real("Cosine", "floor", floor, low=0.0, high=self.initial,
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
        self.initial = check_real("CosineWarmRestarts", "initial", initial, low=0.0)
        self.period = check_int("CosineWarmRestarts", "period", period, low=1)
        self.period_mult = check_int("CosineWarmRestarts", "period_mult", period_mult, low=1)
        self.floor = check_real("CosineWarmRestarts", "floor", floor, low=0.0,
                                 high=self.initial, hint="floor may not exceed initial")
        self.decay = check_real("CosineWarmRestarts", "decay", decay, low=0.0, high=1.0)
        self._freeze()

    def cycle(self, step: int) -> tuple[int, int, int]:
        """``(i, t, T_i)``: cycle index, steps into the cycle, cycle length at ``step``."""
        step = check_step(step)
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
        self.max_value = check_real(owner, "max_value", max_value, low=0.0)
        self.total_steps = check_int(owner, "total_steps", total_steps, low=2)
        self.pct_start = check_real(owner, "pct_start", pct_start, low=0.0, high=1.0)
        self.anneal = check_choice(owner, "anneal", anneal, ("cos", "linear"))
        self.div_factor = check_real(owner, "div_factor", div_factor, low=0.0, low_open=True)
        self.final_div_factor = check_real(owner, "final_div_factor", final_div_factor,
                                            low=0.0, low_open=True)
        self.three_phase = check_bool(owner, "three_phase", three_phase)
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
        self.base = check_real(owner, "base", base, low=0.0)
        self.max_value = check_real(owner, "max_value", max_value, low=self.base,
                                     hint="max_value may not be below base")
        self.step_size_up = check_int(owner, "step_size_up", step_size_up, low=1)
        self.step_size_down = (None if step_size_down is None else
                               check_int(owner, "step_size_down", step_size_down, low=1))
        self.mode = check_choice(owner, "mode", mode, ("triangular", "triangular2", "exp_range"))
        self.gamma = check_real(owner, "gamma", gamma, low=0.0, high=1.0, low_open=True)
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
