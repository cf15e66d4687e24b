"""Per-call cost of small calls (README, Performance: "Small arrays"), one tree per process.

    python bench/percall.py                                  # this tree
    PYTHONPATH=/path/to/other/src python bench/percall.py    # another checkout, same script

Run two trees alternately (several rounds) and compare medians from the same session: the
machine's load moves every figure. Prints one line of medians in microseconds per call:
kernels.adam on 1,000 float32 elements; StepPlan.run for Adam over 10 float32 arrays of
1,000 elements; Adam.step over one and over ten such arrays.
"""
import statistics
import sys
import timeit

import numpy as np

import lrcore
import lrcore.optim as optim
from lrcore import kernels

try:                                    # the backend switch (newer trees)
    from lrcore.backend import StepPlan
except ImportError:                     # older trees: the compiled core directly
    from lrcore._core import StepPlan


def median_us(fn, number, repeat=15):
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main():
    rng = np.random.default_rng(0)
    n = 1000

    def arr():
        return rng.uniform(0.1, 1.0, n).astype(np.float32)

    p, g, m, v = arr(), arr(), arr(), arr()
    out = {"kernels.adam": median_us(lambda: kernels.adam(p, g, m, v, lr=1e-3, step=1), 4000)}

    params = [arr() for _ in range(10)]
    grads = [arr() for _ in range(10)]
    states = [(arr(), arr(), None) for _ in range(10)]
    plan = StepPlan("adam", params, states, [0] * 10)
    by_name = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
               "step": 1, "decoupled_weight_decay": False, "maximize": False}
    try:
        plan.run(grads, [by_name])
        hps = [by_name]
    except (TypeError, KeyError):       # trees before the by-name form took positional tuples
        hps = [(1e-3, 0.9, 0.999, 1e-8, 0.0, False, False, 1)]
    out["StepPlan.run 10x1000"] = median_us(lambda: plan.run(grads, hps), 2000)

    one = optim.Adam([arr()], lr=1e-3)
    g1 = [arr()]
    out["Adam.step 1x1000"] = median_us(lambda: one.step(g1), 2000)
    ten = optim.Adam([arr() for _ in range(10)], lr=1e-3)
    g10 = [arr() for _ in range(10)]
    out["Adam.step 10x1000"] = median_us(lambda: ten.step(g10), 1000)
    print(lrcore.__file__.rsplit("/src/", 1)[0], " ".join(f"{k}={x:.2f}" for k, x in out.items()))


if __name__ == "__main__":
    sys.exit(main())
