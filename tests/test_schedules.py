"""Tests for lrcore.schedules: torch golden values, boundaries, purity, validation, configs.

The golden values in tests/golden/schedules.json were recorded from torch.optim.lr_scheduler
by tests/golden/make_schedule_golden.py; these tests do not need torch.
"""
import json
import math
import pathlib
import sys
from decimal import Decimal, getcontext

import numpy as np
import pytest

from lrcore import schedules as S
from lrcore.schedules import (
    Constant, Cosine, CosineWarmRestarts, Cyclic, ExponentialDecay, InverseTimeDecay, Lambda,
    Linear, MultiStep, OneCycle, PiecewiseConstant, PolynomialDecay, ReduceOnPlateau, Schedule,
    Sequential, StepDecay, TimeBasedDecay, Warmup,
)

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "schedules.json").read_text())
EPS = np.finfo(np.float64).eps

# The golden file names user functions by their expression; these are the functions.
GOLDEN_LAMBDAS = {
    "0.1 * 0.95 ** n": lambda n: 0.1 * 0.95 ** n,
    "0.1 / math.sqrt(1 + n)": lambda n: 0.1 / math.sqrt(1 + n),
}


def golden_schedule(case):
    config = case["lrcore"]
    if "lambda" in config:
        return Lambda(GOLDEN_LAMBDAS[config["lambda"]])
    return Schedule.from_config(config)


# ---------------------------------------------------------------------------------------------
# Golden values from torch
# ---------------------------------------------------------------------------------------------


def test_golden_file_covers_every_torch_counterpart():
    described = " ".join(c["torch"] for c in GOLDEN["cases"])
    for torch_name in ("StepLR", "MultiStepLR", "ExponentialLR", "LinearLR", "PolynomialLR",
                       "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "OneCycleLR",
                       "CyclicLR", "SequentialLR", "ReduceLROnPlateau", "LambdaLR",
                       "ConstantLR", "MultiplicativeLR", "triangular2", "exp_range"):
        assert torch_name in described, torch_name
    assert GOLDEN["torch_version"].startswith("2.13.0")
    assert all(len(c["values"]) >= 150 for c in GOLDEN["cases"])


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["id"] for c in GOLDEN["cases"]])
def test_matches_torch(case):
    schedule = golden_schedule(case)
    want = np.array(case["values"], dtype=np.float64)
    if "metrics" in case:  # ReduceOnPlateau: read the value, then report the epoch's metric
        got = []
        for metric in case["metrics"]:
            got.append(schedule(len(got)))
            schedule.report(metric)
        got = np.array(got)
    else:
        got = schedule.values(len(want))
    n = case.get("compare_steps", len(want))
    assert got.shape == want.shape
    # atol only forgives subnormals (time_based_fast decays below 1e-308 within 300 steps).
    np.testing.assert_allclose(got[:n], want[:n], rtol=case["rtol"], atol=1e-300,
                               err_msg=f"{case['id']}: lrcore vs torch {case['torch']}")


def test_cosine_past_end_stays_at_floor_unlike_torch():
    """Documented deviation: torch's CosineAnnealingLR rises again after T_max."""
    case = next(c for c in GOLDEN["cases"] if c["id"] == "cosine_short")
    schedule = golden_schedule(case)
    torch_after = np.array(case["values"][101:])
    assert np.all(torch_after[1:] > 0)  # torch: back up the cosine
    assert np.all(schedule.values(300)[100:] == 0.0)  # lrcore: floor (0) from step T on


def test_onecycle_past_end_stays_at_minimum():
    """Documented deviation: torch extrapolates at step total_steps and raises after."""
    s = OneCycle(0.5, 300)
    minimum = 0.5 / 25.0 / 1e4
    assert s(299) == pytest.approx(minimum, rel=1e-15)
    assert s(300) == s(299) == s(10_000)


# ---------------------------------------------------------------------------------------------
# The three literature formulas against literal implementations
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decay", [0.0, 1e-6, 1e-3, 0.01, 0.3, 5.0])
def test_time_based_matches_literal_recursion(decay):
    s = TimeBasedDecay(0.1, decay)
    lr, want = 0.1, []
    for n in range(2000):
        want.append(lr)
        lr = lr / (1 + decay * n)  # lr_{n+1} = lr_n / (1 + d n)
    np.testing.assert_allclose(s.values(2000), want, rtol=1e-12, atol=1e-300)  # atol: subnormals


@pytest.mark.parametrize("decay", [1e-9, 1e-6, 1e-4, 0.01, 0.3, 5.0])
def test_time_based_against_exact_product(decay):
    """Against the product computed in 60-digit decimals, well past the Euler-Maclaurin switch."""
    getcontext().prec = 60
    s = TimeBasedDecay(1.0, decay)
    d, prod = Decimal(decay), Decimal(1)
    checks = set(range(0, 700)) | {1000, 3000, 10_000, 30_000}
    for n in range(max(checks) + 1):
        if n in checks:
            exact = 1 / prod
            if exact < Decimal("1e-290"):
                break
            log_divisor = float(prod.ln())
            got = Decimal(s(n))
            # exp(-L) turns an error of a few ulps in L into a relative error of a few L ulps
            # (a missing Euler-Maclaurin term would show as 1e-10 or worse).
            assert abs(got - exact) / exact <= (4 + log_divisor) * 8 * EPS, (n, got, exact)
        prod *= 1 + d * n


def test_time_based_is_constant_time_and_underflows_cleanly():
    s = TimeBasedDecay(0.1, 1e-6)
    assert s(10**12) == 0.0
    assert 0.0 < s(2000) < 0.1
    assert s(0) == s(1) == 0.1
    assert TimeBasedDecay(0.1, 1e300)(10**6) == 0.0
    assert TimeBasedDecay(0.1, 1e306)(10**6) == 0.0  # d * n overflows: 0, not nan


@pytest.mark.parametrize("decay,rate", [(0.5, 10), (0.1, 1), (0.9, 7)])
def test_step_decay_matches_formula(decay, rate):
    s = StepDecay(0.1, decay, rate)
    want = [0.1 * decay ** math.floor((1 + n) / rate) for n in range(500)]
    assert s.values(500).tolist() == want


@pytest.mark.parametrize("decay", [0.0, 0.001, 0.05, 1.0])
def test_exponential_decay_matches_formula(decay):
    s = ExponentialDecay(0.1, decay)
    want = [0.1 * math.exp(-decay * n) for n in range(500)]
    assert s.values(500).tolist() == want


def test_other_keras_formulas():
    inv = InverseTimeDecay(0.1, 0.5, 10.0)
    assert [inv(n) for n in (0, 10, 15)] == [0.1, 0.1 / 1.5, 0.1 / 1.75]
    stair = InverseTimeDecay(0.1, 0.5, 10, staircase=True)
    assert [stair(n) for n in (0, 9, 10, 19, 20)] == [0.1, 0.1, 0.1 / 1.5, 0.1 / 1.5, 0.1 / 2]
    poly = PolynomialDecay(0.1, 0.01, 100, power=2.0)
    assert poly(50) == pytest.approx(0.09 * 0.25 + 0.01, rel=1e-15)
    cyc = PolynomialDecay(0.1, 0.0, 10, cycle=True)
    # keras: decay_steps * ceil(step / decay_steps), with the multiplier 1 at step 0
    want = [0.1 * (1 - n / (10 * max(1, math.ceil(n / 10)))) for n in range(40)]
    assert cyc.values(40).tolist() == pytest.approx(want, rel=1e-15, abs=0)
    assert cyc(10) == 0.0 and cyc(11) == pytest.approx(0.1 * (1 - 11 / 20))


# ---------------------------------------------------------------------------------------------
# Boundaries
# ---------------------------------------------------------------------------------------------

BOUNDARIES = [
    # (schedule, step, expected)
    (Constant(0.3), 0, 0.3),
    (Constant(0.3), 10**9, 0.3),
    (StepDecay(0.1, 0.5, 10), 8, 0.1),
    (StepDecay(0.1, 0.5, 10), 9, 0.05),  # literature form drops at r - 1
    (StepDecay(0.1, 0.5, 10, offset=0), 9, 0.1),
    (StepDecay(0.1, 0.5, 10, offset=0), 10, 0.05),  # torch StepLR drops at r
    (MultiStep(0.1, [3, 5], 0.1), 2, 0.1),
    (MultiStep(0.1, [3, 5], 0.1), 3, 0.1 * 0.1),
    (MultiStep(0.1, [3, 5], 0.1), 5, 0.1 * 0.1 ** 2),
    (MultiStep(0.1, [3, 5], 0.1), 10**6, 0.1 * 0.1 ** 2),
    (MultiStep(0.1, [], 0.1), 100, 0.1),
    (PiecewiseConstant([10, 20], [0.3, 0.2, 0.1]), 9, 0.3),
    (PiecewiseConstant([10, 20], [0.3, 0.2, 0.1]), 10, 0.2),
    (PiecewiseConstant([10, 20], [0.3, 0.2, 0.1]), 20, 0.1),
    (PolynomialDecay(0.1, 0.01, 100), 0, 0.1),
    (PolynomialDecay(0.1, 0.01, 100), 100, 0.01),
    (PolynomialDecay(0.1, 0.01, 100), 1000, 0.01),
    (Linear(0.0, 1.0, 4), 0, 0.0),
    (Linear(0.0, 1.0, 4), 2, 0.5),
    (Linear(0.0, 1.0, 4), 4, 1.0),
    (Linear(0.0, 1.0, 4), 5, 1.0),
    (Linear(1.0, 0.0, 4), 4, 0.0),
    (Cosine(0.1, 100, 0.01), 0, 0.1),
    (Cosine(0.1, 100, 0.01), 50, 0.1 / 2 + 0.01 / 2),
    (Cosine(0.1, 100, 0.01), 100, 0.01),
    (Cosine(0.1, 100, 0.01), 101, 0.01),
    (CosineWarmRestarts(0.1, 10), 10, 0.1),  # restart
    (CosineWarmRestarts(0.1, 10), 5, 0.05),
    (CosineWarmRestarts(0.1, 10, 2), 29, 0.1 * (1 + math.cos(math.pi * 19 / 20)) / 2),
    (CosineWarmRestarts(0.1, 10, 2), 30, 0.1),  # cycles 10 + 20
    (CosineWarmRestarts(0.1, 10, 2, decay=0.5), 30, 0.025),  # third cycle: 0.5 ** 2
    (CosineWarmRestarts(0.1, 10, 2, floor=0.02, decay=0.5), 10, 0.02 + 0.5 * 0.08),
    (Warmup(Constant(0.1), 10, 0.0), 0, 0.0),
    (Warmup(Constant(0.1), 10, 0.0), 5, 0.05),
    (Warmup(Constant(0.1), 10, 0.0), 10, 0.1),
    (Warmup(Cosine(0.1, 10), 10), 20, 0.0),  # total length = warmup + cosine
    (Warmup(Cosine(0.1, 10), 0), 0, 0.1),
    (OneCycle(1.0, 100), 0, 1.0 / 25),
    (OneCycle(1.0, 100), 29, 1.0),  # peak at pct_start * total - 1
    (OneCycle(1.0, 100), 99, 1.0 / 25 / 1e4),
    (OneCycle(1.0, 100, three_phase=True), 58, 1.0 / 25),  # back at initial at 2 p T - 2
    (Cyclic(0.1, 0.5, 4), 0, 0.1),
    (Cyclic(0.1, 0.5, 4), 4, 0.5),
    (Cyclic(0.1, 0.5, 4), 8, 0.1),
    (Cyclic(0.1, 0.5, 4, 12), 10, 0.1 + 0.4 * 0.5),
    (Cyclic(0.1, 0.5, 4, mode="triangular2"), 12, 0.1 + 0.4 / 2),
    (Cyclic(0.1, 0.5, 4, mode="exp_range", gamma=0.9), 4, 0.1 + 0.4 * 0.9 ** 4),
    (Sequential([Constant(0.1), Linear(0.2, 0.0, 10)], [5]), 4, 0.1),
    (Sequential([Constant(0.1), Linear(0.2, 0.0, 10)], [5]), 5, 0.2),  # starts at its step 0
    (Sequential([Constant(0.1), Linear(0.2, 0.0, 10)], [5]), 10, 0.1),
    (Sequential([Constant(0.1), Linear(0.2, 0.0, 10)], [5]), 15, 0.0),
    (Sequential([Constant(0.3)], []), 7, 0.3),
    (InverseTimeDecay(0.1, 1.0, 1.0), 0, 0.1),
    (ExponentialDecay(0.1, 0.5), 0, 0.1),
    (TimeBasedDecay(0.1, 0.5), 2, 0.1 / 1.5),
]


@pytest.mark.parametrize("schedule,step,expected", BOUNDARIES,
                         ids=[f"{s!r}@{n}" for s, n, _ in BOUNDARIES])
def test_boundaries(schedule, step, expected):
    assert schedule(step) == pytest.approx(expected, rel=1e-14, abs=1e-300)


# ---------------------------------------------------------------------------------------------
# Purity, values(), repr, equality, immutability
# ---------------------------------------------------------------------------------------------

SAMPLES = [
    Constant(0.25),
    TimeBasedDecay(0.1, 0.01),
    StepDecay(0.1, 0.5, 10),
    StepDecay(0.1, 0.5, 10, offset=0),
    ExponentialDecay(0.1, 0.02),
    MultiStep(0.1, [10, 20], 0.5),
    PiecewiseConstant([10, 30], [0.1, 0.05, 0.01]),
    InverseTimeDecay(0.1, 0.5, 7.5, staircase=True),
    PolynomialDecay(0.1, 0.001, 40, power=0.5, cycle=True),
    Linear(0.001, 0.1, 25),
    Cosine(0.1, 60, 0.001),
    CosineWarmRestarts(0.1, 7, 3, floor=0.001, decay=0.8),
    Warmup(Cosine(0.1, 60), 10, 0.001),
    OneCycle(0.4, 90, pct_start=0.2, anneal="linear", three_phase=True),
    Cyclic(0.01, 0.1, 5, 8, mode="exp_range", gamma=0.97),
    Sequential([Linear(0.01, 0.1, 10), Cosine(0.1, 50), Constant(0.001)], [10, 60]),
    ReduceOnPlateau(0.1, mode="max", factor=0.5, patience=3),
]
SERIALISABLE = SAMPLES
ALL_SAMPLES = SAMPLES + [Lambda(lambda n: 0.1 / (1 + n))]


@pytest.mark.parametrize("s", ALL_SAMPLES, ids=repr)
def test_pure_and_values(s):
    assert isinstance(s, Schedule)
    got = s.values(150)
    assert got.dtype == np.float64 and got.shape == (150,)
    assert got.tolist() == [s(i) for i in range(150)]  # bit-identical
    assert got.tolist() == s.values(150).tolist()
    assert [s(i) for i in range(150)] == [s(i) for i in range(150)]
    assert [s(i) for i in range(149, -1, -1)] == got[::-1].tolist()  # order does not matter
    assert all(type(s(i)) is float for i in (0, 1, 77))
    assert np.all(np.isfinite(got)) and np.all(got >= 0)
    assert s.values(0).shape == (0,)
    assert s(np.int64(3)) == s(3)  # numpy integers are steps too


@pytest.mark.parametrize("s,text", [
    (StepDecay(0.1, 0.5, 10), "StepDecay(initial=0.1, decay=0.5, rate=10)"),
    (StepDecay(0.1, 0.5, 10, offset=0), "StepDecay(initial=0.1, decay=0.5, rate=10, offset=0)"),
    (Cosine(0.1, 100), "Cosine(initial=0.1, steps=100)"),
    (MultiStep(0.1, (30, 60)), "MultiStep(initial=0.1, milestones=[30, 60])"),
    (Warmup(Cosine(0.1, 100), 5), "Warmup(schedule=Cosine(initial=0.1, steps=100), "
                                   "warmup_steps=5)"),
    (ReduceOnPlateau(0.1, patience=3), "ReduceOnPlateau(initial=0.1, patience=3)"),
])
def test_repr(s, text):
    assert repr(s) == text


@pytest.mark.parametrize("s", SERIALISABLE, ids=repr)
def test_repr_evaluates_back(s):
    namespace = {name: getattr(S, name) for name in S.__all__}
    again = eval(repr(s), namespace)
    assert again == s and hash(again) == hash(s)
    assert again.values(100).tolist() == s.values(100).tolist()


def test_lambda_repr_names_function():
    def my_rate(n):
        return 0.1

    assert repr(Lambda(my_rate)) == "Lambda(fn=<test_lambda_repr_names_function.<locals>.my_rate>)"


def test_equality_and_immutability():
    assert StepDecay(0.1, 0.5, 10) == StepDecay(0.1, 0.5, 10)
    assert StepDecay(0.1, 0.5, 10) != StepDecay(0.1, 0.5, 11)
    assert StepDecay(0.1, 0.5, 10) != ExponentialDecay(0.1, 0.5)
    s = Cosine(0.1, 10)
    with pytest.raises(AttributeError, match="immutable"):
        s.initial = 0.2
    with pytest.raises(TypeError):
        Schedule()  # abstract


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

nan, inf = float("nan"), float("inf")
BAD_ARGS = [
    # (factory, kwargs, exception, fragment of the message)
    (Constant, dict(value=nan), ValueError, "value=nan"),
    (Constant, dict(value=-0.1), ValueError, "value=-0.1"),
    (Constant, dict(value="0.1"), TypeError, "value must be a real number"),
    (Constant, dict(value=True), TypeError, "value must be a real number, got True"),
    (TimeBasedDecay, dict(initial=0.1, decay=-1.0), ValueError, "decay=-1.0"),
    (TimeBasedDecay, dict(initial=inf, decay=0.1), ValueError, "initial=inf is not finite"),
    (StepDecay, dict(initial=0.1, decay=0.5, rate=0), ValueError, "rate=0"),
    (StepDecay, dict(initial=0.1, decay=0.5, rate=2.0), TypeError, "rate must be an int"),
    (StepDecay, dict(initial=0.1, decay=0.5, rate=True), TypeError, "rate must be an int"),
    (StepDecay, dict(initial=0.1, decay=0.5, rate=5, offset=-1), ValueError, "offset=-1"),
    (ExponentialDecay, dict(initial=0.1, decay=-inf), ValueError, "decay=-inf"),
    (ExponentialDecay, dict(initial=None, decay=0.1), TypeError, "initial"),
    (MultiStep, dict(initial=0.1, milestones=[30, 20]), ValueError, "strictly increasing"),
    (MultiStep, dict(initial=0.1, milestones=[10, 10]), ValueError, "strictly increasing"),
    (MultiStep, dict(initial=0.1, milestones=[0, 10]), ValueError, "milestones[0]=0"),
    (MultiStep, dict(initial=0.1, milestones=[1.5]), TypeError, "milestones[0] must be an int"),
    (MultiStep, dict(initial=0.1, milestones="30,60"), TypeError, "milestones must be a list"),
    (MultiStep, dict(initial=0.1, milestones=[5], gamma=nan), ValueError, "gamma=nan"),
    (PiecewiseConstant, dict(boundaries=[10], values=[0.1]), ValueError,
     "len(boundaries) + 1 = 2"),
    (PiecewiseConstant, dict(boundaries=[10], values=[0.1, -1]), ValueError, "values[1]=-1"),
    (PiecewiseConstant, dict(boundaries=[10], values=0.1), TypeError, "values must be a list"),
    (InverseTimeDecay, dict(initial=0.1, decay_rate=0.5, decay_steps=0), ValueError,
     "decay_steps=0.0"),
    (InverseTimeDecay, dict(initial=0.1, decay_rate=0.5, decay_steps=1, staircase=1),
     TypeError, "staircase must be True or False"),
    (PolynomialDecay, dict(initial=0.1, end=0.0, decay_steps=0), ValueError, "decay_steps=0"),
    (PolynomialDecay, dict(initial=0.1, end=0.0, decay_steps=10, power=0.0), ValueError,
     "power=0.0"),
    (PolynomialDecay, dict(initial=0.1, end=0.0, decay_steps=10, cycle="yes"), TypeError,
     "cycle"),
    (Linear, dict(start=0.0, end=0.1, steps=0), ValueError, "steps=0"),
    (Linear, dict(start=0.0, end=nan, steps=5), ValueError, "end=nan"),
    (Cosine, dict(initial=0.1, steps=10, floor=0.2), ValueError, "floor=0.2"),
    (Cosine, dict(initial=0.1, steps=-1), ValueError, "steps=-1"),
    (CosineWarmRestarts, dict(initial=0.1, period=0), ValueError, "period=0"),
    (CosineWarmRestarts, dict(initial=0.1, period=10, period_mult=1.5), TypeError,
     "period_mult must be an int"),
    (CosineWarmRestarts, dict(initial=0.1, period=10, decay=1.5), ValueError, "decay=1.5"),
    (Warmup, dict(schedule=0.1, warmup_steps=10), TypeError, "schedule must be a Schedule"),
    (Warmup, dict(schedule=ReduceOnPlateau(0.1), warmup_steps=10), ValueError,
     "cannot be a ReduceOnPlateau"),
    (Warmup, dict(schedule=Constant(0.1), warmup_steps=-2), ValueError, "warmup_steps=-2"),
    (OneCycle, dict(max_value=0.1, total_steps=100, pct_start=1.5), ValueError, "pct_start=1.5"),
    (OneCycle, dict(max_value=0.1, total_steps=100, pct_start=0.005), ValueError,
     "phase end steps"),
    (OneCycle, dict(max_value=0.1, total_steps=100, anneal="cosine"), ValueError,
     "anneal='cosine' is not one of ['cos', 'linear']"),
    (OneCycle, dict(max_value=0.1, total_steps=100, div_factor=0), ValueError, "div_factor=0.0"),
    (OneCycle, dict(max_value=0.1, total_steps=1), ValueError, "total_steps=1"),
    (Cyclic, dict(base=0.1, max_value=0.01, step_size_up=5), ValueError, "max_value=0.01"),
    (Cyclic, dict(base=0.01, max_value=0.1, step_size_up=5, mode="triangle"), ValueError,
     "mode='triangle'"),
    (Cyclic, dict(base=0.01, max_value=0.1, step_size_up=5, gamma=0.0), ValueError, "gamma=0.0"),
    (Cyclic, dict(base=0.01, max_value=0.1, step_size_up=5, step_size_down=0), ValueError,
     "step_size_down=0"),
    (Sequential, dict(schedules=[], milestones=[]), ValueError, "at least one schedule"),
    (Sequential, dict(schedules=[Constant(0.1), Constant(0.2)], milestones=[]), ValueError,
     "len(schedules) - 1 = 1"),
    (Sequential, dict(schedules=[Constant(0.1), "cosine"], milestones=[5]), TypeError,
     "schedules[1] must be a Schedule"),
    (Sequential, dict(schedules=Constant(0.1), milestones=[]), TypeError, "list of Schedules"),
    (Lambda, dict(fn=0.1), TypeError, "fn must be callable"),
    (ReduceOnPlateau, dict(initial=0.1, factor=1.0), ValueError, "factor=1.0"),
    (ReduceOnPlateau, dict(initial=0.1, mode="minimum"), ValueError, "mode='minimum'"),
    (ReduceOnPlateau, dict(initial=0.1, threshold_mode="relative"), ValueError,
     "threshold_mode='relative'"),
    (ReduceOnPlateau, dict(initial=0.1, patience=-1), ValueError, "patience=-1"),
    (ReduceOnPlateau, dict(initial=0.1, cooldown=1.0), TypeError, "cooldown must be an int"),
    (ReduceOnPlateau, dict(initial=0.1, min_value=nan), ValueError, "min_value=nan"),
]


@pytest.mark.parametrize("factory,kwargs,exc,fragment", BAD_ARGS,
                         ids=[f"{f.__name__}-{sorted(k.items())!r}" for f, k, _, _ in BAD_ARGS])
def test_bad_constructor_arguments(factory, kwargs, exc, fragment):
    with pytest.raises(exc) as info:
        factory(**kwargs)
    assert fragment in str(info.value)
    assert factory.__name__ in str(info.value)  # says which schedule complained


@pytest.mark.parametrize("step,exc,fragment", [
    (-1, ValueError, "step=-1 is negative"),
    (1.0, TypeError, "step must be an int >= 0"),
    (2.5, TypeError, "got 2.5 (float)"),
    ("3", TypeError, "got '3' (str)"),
    (True, TypeError, "got True (bool)"),
    (None, TypeError, "got None"),
    (np.float64(2.0), TypeError, "step must be an int"),
])
@pytest.mark.parametrize("s", [Constant(0.1), Cosine(0.1, 10), ReduceOnPlateau(0.1),
                               Sequential([Constant(0.1), Constant(0.2)], [3])], ids=repr)
def test_bad_steps(s, step, exc, fragment):
    with pytest.raises(exc, match=None) as info:
        s(step)
    assert fragment in str(info.value)


@pytest.mark.parametrize("n", [-1, 2.0, None, True])
def test_bad_values_length(n):
    with pytest.raises((TypeError, ValueError), match="n"):
        Cosine(0.1, 10).values(n)


@pytest.mark.parametrize("returned,exc", [(float("nan"), ValueError), (-0.1, ValueError),
                                          (float("inf"), ValueError), ("0.1", TypeError),
                                          (None, TypeError), (True, TypeError)])
def test_lambda_checks_results(returned, exc):
    s = Lambda(lambda n: returned)
    with pytest.raises(exc, match=r"fn\(4\) returned"):
        s(4)


def test_lambda_accepts_numpy_and_int_results():
    assert Lambda(lambda n: np.float32(0.5))(0) == 0.5
    assert Lambda(lambda n: 1)(0) == 1.0 and type(Lambda(lambda n: 1)(0)) is float


# ---------------------------------------------------------------------------------------------
# Configs and state
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("s", SERIALISABLE, ids=repr)
def test_config_round_trip_through_json(s):
    config = s.to_config()
    text = json.dumps(config, allow_nan=False)  # strictly JSON
    again = Schedule.from_config(json.loads(text))
    assert type(again) is type(s) and again == s
    assert again.values(200).tolist() == s.values(200).tolist()
    assert again.to_config() == config


def test_config_nests_composites():
    s = Sequential([Warmup(Cosine(0.1, 50), 5), Constant(0.001)], [55])
    config = s.to_config()
    assert config["name"] == "Sequential"
    assert config["kwargs"]["schedules"][0]["kwargs"]["schedule"] == {
        "name": "Cosine", "kwargs": {"initial": 0.1, "steps": 50, "floor": 0.0}}


def test_lambda_cannot_be_serialised():
    with pytest.raises(TypeError, match="Lambda schedules cannot be serialised"):
        Lambda(lambda n: 0.1).to_config()
    with pytest.raises(TypeError, match="cannot be serialised"):
        Sequential([Lambda(lambda n: 0.1), Constant(0.1)], [3]).to_config()


@pytest.mark.parametrize("config,fragment", [
    ({"name": "Nope", "kwargs": {}}, "name='Nope' is not a schedule class"),
    ({"name": "Schedule", "kwargs": {}}, "not a schedule class"),
    ({"name": "Cosine"}, "exactly the keys"),
    ({"name": "Cosine", "kwargs": [0.1, 10]}, "kwargs must be a dict"),
    ("Cosine", "exactly the keys"),
])
def test_from_config_rejects_bad_configs(config, fragment):
    with pytest.raises(ValueError, match=None) as info:
        Schedule.from_config(config)
    assert fragment in str(info.value)


def test_from_config_validates_arguments():
    with pytest.raises(ValueError, match="steps=0"):
        Schedule.from_config({"name": "Cosine", "kwargs": {"initial": 0.1, "steps": 0}})
    with pytest.raises(TypeError):
        Schedule.from_config({"name": "Cosine", "kwargs": {"initial": 0.1, "stepz": 10}})


@pytest.mark.parametrize("s", SAMPLES[:-1], ids=repr)
def test_pure_schedules_have_empty_state(s):
    assert s.state_dict() == {}
    s.load_state_dict({})
    with pytest.raises(ValueError, match="has no state"):
        s.load_state_dict({"value": 0.1})


def run_plateau(s, metrics, start=0):
    out = []
    for k, metric in enumerate(metrics):
        out.append(s(start + k))
        s.report(metric)
    return out


PLATEAU_METRICS = [1.0, 0.9, 0.9, 0.95, 0.91, 0.9, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9, 0.9, 0.9,
                   0.91, 0.92, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1]


def test_plateau_patience_and_cooldown_by_hand():
    s = ReduceOnPlateau(1.0, factor=0.5, patience=2, cooldown=1, threshold=0.0)
    values = run_plateau(s, PLATEAU_METRICS)
    # Bad reports after the best 0.9 (index 1): 0.9, 0.95, 0.91 -> 3 > patience at index 4.
    assert values[:6] == [1.0, 1.0, 1.0, 1.0, 1.0, 0.5]
    # index 5 is in cooldown (ignored); 0.85 improves at 6; 7, 8, 9 bad -> cut after 9.
    assert values[6:11] == [0.5, 0.5, 0.5, 0.5, 0.25]
    assert s.best == 0.5 and s.num_reports == len(PLATEAU_METRICS)


def test_plateau_state_round_trip_resumes_exactly():
    kwargs = dict(initial=0.1, factor=0.5, patience=1, cooldown=2, min_value=0.01)
    straight = ReduceOnPlateau(**kwargs)
    want = run_plateau(straight, PLATEAU_METRICS)
    first = ReduceOnPlateau(**kwargs)
    got = run_plateau(first, PLATEAU_METRICS[:9])
    state = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    assert set(state) == {"value", "best", "num_bad_reports", "cooldown_counter", "num_reports"}
    resumed = Schedule.from_config(json.loads(json.dumps(first.to_config())))
    resumed.load_state_dict(state)
    assert resumed == first
    got += run_plateau(resumed, PLATEAU_METRICS[9:], start=9)
    assert got == want
    assert min(want) == 0.01  # reached the floor
    assert resumed.state_dict() == straight.state_dict()


def test_plateau_initial_state_is_json_and_has_no_best():
    s = ReduceOnPlateau(0.1)
    assert s.state_dict() == {"value": 0.1, "best": None, "num_bad_reports": 0,
                              "cooldown_counter": 0, "num_reports": 0}
    json.dumps(s.state_dict(), allow_nan=False)
    assert s(0) == s(1000) == 0.1


@pytest.mark.parametrize("change,exc,fragment", [
    ({"value": -1.0}, ValueError, "value=-1.0"),
    ({"value": nan}, ValueError, "value=nan"),
    ({"best": "low"}, TypeError, "best must be a real number or None"),
    ({"num_bad_reports": -1}, ValueError, "num_bad_reports=-1"),
    ({"cooldown_counter": 1.5}, TypeError, "cooldown_counter must be an int"),
    ({"extra": 1}, ValueError, "expected a dict with keys"),
])
def test_plateau_load_state_dict_validates(change, exc, fragment):
    s = ReduceOnPlateau(0.1)
    state = {**s.state_dict(), **change}
    with pytest.raises(exc) as info:
        s.load_state_dict(state)
    assert fragment in str(info.value)
    assert s.state_dict()["value"] == 0.1  # untouched on failure


def test_plateau_report_checks_metric_and_nan_never_improves():
    s = ReduceOnPlateau(0.1, patience=0)
    with pytest.raises(TypeError, match="metric must be a real number"):
        s.report("low")
    s.report(np.float32(1.0))  # numpy scalars are fine
    s.report(np.array(2.0))  # and 0-d arrays
    assert s(0) == pytest.approx(0.01)
    s.report(float("nan"))
    assert s(0) == pytest.approx(0.001)


def test_sequential_rejects_plateau():
    with pytest.raises(ValueError, match=r"schedules\[1\] cannot be a ReduceOnPlateau"):
        Sequential([Constant(0.1), ReduceOnPlateau(0.1)], [3])


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

MAKE_EXAMPLES = {
    "constant": dict(value="0.1"),
    "time_based": dict(initial="0.1", decay="0.01"),
    "step": dict(initial="0.1", decay="0.5", rate="10"),
    "exponential": dict(initial="0.1", decay="0.01"),
    "multistep": dict(initial="0.1", milestones="30,60,90", gamma="0.1"),
    "piecewise": dict(boundaries="[10, 20]", values="0.1,0.01,0.001"),
    "inverse_time": dict(initial="0.1", decay_rate="0.5", decay_steps="10", staircase="true"),
    "polynomial": dict(initial="0.1", end="0", decay_steps="100", power="2", cycle="no"),
    "linear": dict(start="0.0", end="0.1", steps="10"),
    "cosine": dict(initial="0.1", steps="100", floor="1e-4"),
    "cosine_restarts": dict(initial="0.1", period="10", period_mult="2"),
    "warmup_cosine": dict(initial="0.1", steps="100", warmup_steps="10"),
    "onecycle": dict(max_value="0.5", total_steps="300", anneal="linear", three_phase="True"),
    "cyclic": dict(base="0.01", max_value="0.1", step_size_up="20", step_size_down="None",
                   mode="triangular2"),
    "reduce_on_plateau": dict(initial="0.1", patience="3"),
}


def test_names_cover_required_short_names():
    assert S.names() == sorted(MAKE_EXAMPLES)


@pytest.mark.parametrize("name", sorted(MAKE_EXAMPLES))
def test_make_from_strings(name):
    s = S.make(name, **MAKE_EXAMPLES[name])
    assert isinstance(s, Schedule)
    assert np.all(np.isfinite(s.values(50)))


def test_make_builds_the_expected_objects():
    assert S.make("step", initial=0.1, decay=0.5, rate=10) == StepDecay(0.1, 0.5, 10)
    assert S.make("step", initial="0.1", decay="0.5", rate="10") == StepDecay(0.1, 0.5, 10)
    assert S.make("multistep", initial="0.1", milestones="30, 60") == MultiStep(0.1, [30, 60])
    assert S.make("warmup_cosine", initial="0.1", steps="100", warmup_steps="10",
                  start_value="0.001") == Warmup(Cosine(0.1, 100), 10, 0.001)
    assert S.make("polynomial", initial="0.1", end="0", decay_steps="10",
                  cycle="1").cycle is True


@pytest.mark.parametrize("name,kwargs,exc,fragment", [
    ("stepp", {}, ValueError, "name='stepp' is not a known schedule"),
    ("step", dict(initial="0.1", decay="0.5", rate="10", gamma="0.1"), TypeError,
     "unknown argument(s) ['gamma']"),
    ("step", dict(initial="0.1"), TypeError, "missing required argument(s) ['decay', 'rate']"),
    ("step", dict(initial="abc", decay="0.5", rate="10"), ValueError,
     "initial='abc' cannot be read as float"),
    ("step", dict(initial="0.1", decay="0.5", rate="2.5"), ValueError,
     "rate='2.5' cannot be read as int"),
    ("polynomial", dict(initial="0.1", end="0", decay_steps="10", cycle="maybe"), ValueError,
     "cycle='maybe' cannot be read as bool"),
    ("step", dict(initial="nan", decay="0.5", rate="10"), ValueError, "initial=nan"),
])
def test_make_errors(name, kwargs, exc, fragment):
    with pytest.raises(exc) as info:
        S.make(name, **kwargs)
    assert fragment in str(info.value)


# ---------------------------------------------------------------------------------------------
# plot()
# ---------------------------------------------------------------------------------------------


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "schedule.png"
    fig = S.plot(Warmup(Cosine(0.1, 90), 10), 100, path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    line = fig.axes[0].lines[0]
    assert line.get_ydata().tolist() == Warmup(Cosine(0.1, 90), 10).values(100).tolist()


def test_plot_without_matplotlib_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(ImportError, match="pip install matplotlib"):
        S.plot(Constant(0.1), 10)


def test_plot_checks_arguments():
    with pytest.raises(TypeError, match="schedule must be a Schedule"):
        S.plot(lambda n: 0.1, 10)
    with pytest.raises(ValueError, match="steps=0"):
        S.plot(Constant(0.1), 0)


def test_plot_of_a_very_long_schedule_evaluates_a_bounded_number_of_exact_points():
    """plot() evaluated every step: 10**9 steps ran for minutes and took gigabytes. It now
    draws at most PLOT_POINTS evenly spaced steps, the first and the last among them, each
    at its exact value; a short schedule is still drawn at every step."""
    pytest.importorskip("matplotlib")
    calls = []

    def f(n):
        calls.append(n)
        return 1.0 / (1 + n)
    n = 10**9
    fig = S.plot(Lambda(f), n, path=None)
    x, y = fig.axes[0].lines[0].get_data()
    assert len(calls) <= S.plotting.PLOT_POINTS and len(x) == len(calls)
    assert x[0] == 0 and x[-1] == n - 1 and np.all(np.diff(x) > 0)
    assert list(y) == [1.0 / (1 + int(s)) for s in x]
    s = Cosine(0.1, 300)
    x, y = S.plot(s, 300).axes[0].lines[0].get_data()
    assert list(x) == list(range(300)) and list(y) == list(s.values(300))
    import matplotlib.pyplot as plt
    plt.close("all")


def test_warmup_cosine_refuses_a_warmup_longer_than_its_cosine():
    """warmup_cosine(0.1, steps=45, warmup_steps=10**6) kept the lr near 0 for any run of
    about `steps` steps (optax, whose decay_steps counts the warm-up, refuses a warm-up
    that leaves no decay); now a ValueError names both."""
    with pytest.raises(ValueError, match=r"warmup_cosine: warmup_steps=1000000 is larger "
                                         r"than steps=45"):
        S.warmup_cosine(0.1, 45, 10**6)
    with pytest.raises(ValueError, match=r"warmup_steps=46 is larger than steps=45"):
        S.make("warmup_cosine", initial="0.1", steps="45", warmup_steps="46")
    with pytest.raises(TypeError, match="warmup_steps must be an int"):
        S.warmup_cosine(0.1, 45, 1.5)
    assert S.warmup_cosine(0.1, 45, 45)(45) == 0.1          # equal lengths are fine
    # Warmup itself composes any two lengths
    assert Warmup(Cosine(0.1, 10), 100)(50) == pytest.approx(0.05)
