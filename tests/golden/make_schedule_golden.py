"""Record learning rates from torch.optim.lr_scheduler into tests/golden/schedules.json.

Each case pairs an lrcore schedule config (written out here, not produced by lrcore, so the
golden file does not depend on the code it checks) with a torch scheduler, runs a dummy SGD
optimizer for up to 300 steps and stores ``optimizer.param_groups[0]['lr']`` read before
each ``scheduler.step()``: value ``n`` is the rate after ``n`` steps, i.e. lrcore's ``s(n)``.

Run (needs torch; the tests do not):  python tests/golden/make_schedule_golden.py
"""

from __future__ import annotations

import json
import math
import pathlib
import warnings

import torch
from torch.optim import SGD
from torch.optim import lr_scheduler as S

STEPS = 300
LR = 0.1  # the optimizer's base learning rate in every case
OUT = pathlib.Path(__file__).with_name("schedules.json")

# Relative tolerances stored with each case. TIGHT: torch evaluates the same closed form as
# lrcore (StepLR/MultiStepLR chains multiply by exact powers, CyclicLR/OneCycleLR/
# CosineAnnealingWarmRestarts/LambdaLR/ReduceLROnPlateau are absolute), so at most an ulp
# or so differs. DRIFT: torch's chained update (lr *= ratio each step: ExponentialLR,
# LinearLR, PolynomialLR, CosineAnnealingLR, MultiplicativeLR, SequentialLR) accumulates
# about one rounding per step; over 300 steps that measured below 6e-14 with torch 2.13.
TIGHT = 1e-15
DRIFT = 1e-12


def cfg(name: str, **kwargs):
    return {"name": name, "kwargs": kwargs}


def run(make_scheduler, steps=STEPS, metrics=None):
    param = torch.zeros(1, requires_grad=True)
    opt = SGD([param], lr=LR)
    sched = make_scheduler(opt)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's internal step() ordering warnings
        for n in range(steps):
            out.append(float(opt.param_groups[0]["lr"]))
            opt.step()
            if metrics is None:
                sched.step()
            else:
                sched.step(metrics[n])
    return out


def plateau_metrics(kind: int) -> list[float]:
    """Fixed, made-up validation curves: improve, stall, improve a little, stall again."""
    out = []
    for k in range(STEPS):
        if kind == 0:  # a loss, to minimise
            base = 1.0 / (1.0 + 0.08 * min(k, 40)) + 0.0005 * max(0, k - 150) * (k < 170)
            out.append(round(base + 0.002 * math.sin(1.7 * k), 6))
        else:  # an accuracy, to maximise
            base = 0.5 + 0.4 * (1 - math.exp(-k / 25.0)) if k < 120 else 0.9 - 0.01 * (k > 200)
            out.append(round(base + 0.003 * math.cos(0.9 * k), 6))
    return out


def cases():
    d = 0.01
    yield ("time_based_multiplicative", cfg("TimeBasedDecay", initial=LR, decay=d),
           f"MultiplicativeLR(lr_lambda=lambda e: 1 / (1 + {d} * (e - 1)))", DRIFT, None,
           lambda o: S.MultiplicativeLR(o, lr_lambda=lambda e: 1.0 / (1.0 + d * (e - 1))))
    d2 = 0.2
    yield ("time_based_fast", cfg("TimeBasedDecay", initial=LR, decay=d2),
           f"MultiplicativeLR(lr_lambda=lambda e: 1 / (1 + {d2} * (e - 1)))", DRIFT, None,
           lambda o: S.MultiplicativeLR(o, lr_lambda=lambda e: 1.0 / (1.0 + d2 * (e - 1))))
    yield ("steplr_30_half", cfg("StepDecay", initial=LR, decay=0.5, rate=30, offset=0),
           "StepLR(step_size=30, gamma=0.5)", TIGHT, None,
           lambda o: S.StepLR(o, step_size=30, gamma=0.5))
    yield ("steplr_7_tenth", cfg("StepDecay", initial=LR, decay=0.1, rate=7, offset=0),
           "StepLR(step_size=7, gamma=0.1)", TIGHT, None,
           lambda o: S.StepLR(o, step_size=7, gamma=0.1))
    # StepDecay's default offset=1 (the literature formula) as a LambdaLR.
    yield ("step_decay_literature", cfg("StepDecay", initial=LR, decay=0.5, rate=10),
           "LambdaLR(lr_lambda=lambda n: 0.5 ** ((1 + n) // 10))", TIGHT, None,
           lambda o: S.LambdaLR(o, lr_lambda=lambda n: 0.5 ** ((1 + n) // 10)))
    yield ("multistep", cfg("MultiStep", initial=LR, milestones=[30, 80, 150], gamma=0.1),
           "MultiStepLR(milestones=[30, 80, 150], gamma=0.1)", TIGHT, None,
           lambda o: S.MultiStepLR(o, milestones=[30, 80, 150], gamma=0.1))
    yield ("multistep_early", cfg("MultiStep", initial=LR, milestones=[1, 2, 100], gamma=0.5),
           "MultiStepLR(milestones=[1, 2, 100], gamma=0.5)", TIGHT, None,
           lambda o: S.MultiStepLR(o, milestones=[1, 2, 100], gamma=0.5))
    for rate in (0.01, 0.05):
        # torch multiplies by gamma once per step: about one rounding per step of drift.
        yield (f"exponential_{rate}", cfg("ExponentialDecay", initial=LR, decay=rate),
               f"ExponentialLR(gamma=math.exp(-{rate}))", DRIFT, None,
               lambda o, r=rate: S.ExponentialLR(o, gamma=math.exp(-r)))
    yield ("constantlr", cfg("PiecewiseConstant", boundaries=[40], values=[LR * 0.25, LR]),
           "ConstantLR(factor=0.25, total_iters=40)", TIGHT, None,
           lambda o: S.ConstantLR(o, factor=0.25, total_iters=40))
    yield ("linear_up", cfg("Linear", start=LR * 0.25, end=LR, steps=50),
           "LinearLR(start_factor=0.25, end_factor=1.0, total_iters=50)", DRIFT, None,
           lambda o: S.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=50))
    yield ("linear_down", cfg("Linear", start=LR, end=LR * 0.1, steps=200),
           "LinearLR(start_factor=1.0, end_factor=0.1, total_iters=200)", DRIFT, None,
           lambda o: S.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=200))
    yield ("polynomial_sq", cfg("PolynomialDecay", initial=LR, end=0.0, decay_steps=100,
                                power=2.0),
           "PolynomialLR(total_iters=100, power=2.0)", DRIFT, None,
           lambda o: S.PolynomialLR(o, total_iters=100, power=2.0))
    yield ("polynomial_lin", cfg("PolynomialDecay", initial=LR, end=0.0, decay_steps=250,
                                 power=1.0),
           "PolynomialLR(total_iters=250, power=1.0)", DRIFT, None,
           lambda o: S.PolynomialLR(o, total_iters=250, power=1.0))
    yield ("cosine_full", cfg("Cosine", initial=LR, steps=299, floor=0.001),
           "CosineAnnealingLR(T_max=299, eta_min=0.001)", DRIFT, None,
           lambda o: S.CosineAnnealingLR(o, T_max=299, eta_min=0.001))
    # Past T_max torch's cosine rises again; lrcore stays at the floor. Compare 0..T_max only.
    yield ("cosine_short", cfg("Cosine", initial=LR, steps=100),
           "CosineAnnealingLR(T_max=100, eta_min=0) [compare steps 0..100]", DRIFT, 101,
           lambda o: S.CosineAnnealingLR(o, T_max=100))
    yield ("warm_restarts_mult2", cfg("CosineWarmRestarts", initial=LR, period=10,
                                      period_mult=2, floor=1e-4),
           "CosineAnnealingWarmRestarts(T_0=10, T_mult=2, eta_min=1e-4)", TIGHT, None,
           lambda o: S.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2, eta_min=1e-4))
    yield ("warm_restarts_50", cfg("CosineWarmRestarts", initial=LR, period=50),
           "CosineAnnealingWarmRestarts(T_0=50)", TIGHT, None,
           lambda o: S.CosineAnnealingWarmRestarts(o, T_0=50))
    yield ("onecycle_cos", cfg("OneCycle", max_value=0.5, total_steps=300),
           "OneCycleLR(max_lr=0.5, total_steps=300, cycle_momentum=False)", TIGHT, None,
           lambda o: S.OneCycleLR(o, max_lr=0.5, total_steps=300, cycle_momentum=False))
    yield ("onecycle_linear_3phase",
           cfg("OneCycle", max_value=0.2, total_steps=200, pct_start=0.25, anneal="linear",
               div_factor=10.0, final_div_factor=100.0, three_phase=True),
           "OneCycleLR(max_lr=0.2, total_steps=200, pct_start=0.25, anneal_strategy='linear', "
           "div_factor=10, final_div_factor=100, three_phase=True, cycle_momentum=False)",
           TIGHT, None,
           lambda o: S.OneCycleLR(o, max_lr=0.2, total_steps=200, pct_start=0.25,
                                  anneal_strategy="linear", div_factor=10.0,
                                  final_div_factor=100.0, three_phase=True,
                                  cycle_momentum=False))
    yield ("onecycle_cos_3phase",
           cfg("OneCycle", max_value=1.0, total_steps=150, pct_start=0.4, three_phase=True),
           "OneCycleLR(max_lr=1.0, total_steps=150, pct_start=0.4, three_phase=True, "
           "cycle_momentum=False)", TIGHT, None,
           lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=150, pct_start=0.4,
                                  three_phase=True, cycle_momentum=False))
    yield ("cyclic_triangular", cfg("Cyclic", base=0.01, max_value=0.1, step_size_up=20,
                                    step_size_down=30),
           "CyclicLR(base_lr=0.01, max_lr=0.1, step_size_up=20, step_size_down=30, "
           "cycle_momentum=False)", TIGHT, None,
           lambda o: S.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=20,
                                step_size_down=30, cycle_momentum=False))
    yield ("cyclic_triangular2", cfg("Cyclic", base=0.001, max_value=0.1, step_size_up=25,
                                     mode="triangular2"),
           "CyclicLR(base_lr=0.001, max_lr=0.1, step_size_up=25, mode='triangular2', "
           "cycle_momentum=False)", TIGHT, None,
           lambda o: S.CyclicLR(o, base_lr=0.001, max_lr=0.1, step_size_up=25,
                                mode="triangular2", cycle_momentum=False))
    yield ("cyclic_exp_range", cfg("Cyclic", base=0.01, max_value=0.2, step_size_up=15,
                                   step_size_down=10, mode="exp_range", gamma=0.99),
           "CyclicLR(base_lr=0.01, max_lr=0.2, step_size_up=15, step_size_down=10, "
           "mode='exp_range', gamma=0.99, cycle_momentum=False)", TIGHT, None,
           lambda o: S.CyclicLR(o, base_lr=0.01, max_lr=0.2, step_size_up=15,
                                step_size_down=10, mode="exp_range", gamma=0.99,
                                cycle_momentum=False))
    yield ("sequential_linear_cosine",
           cfg("Sequential", schedules=[cfg("Linear", start=LR * 0.1, end=LR, steps=10),
                                        cfg("Cosine", initial=LR, steps=290)],
               milestones=[10]),
           "SequentialLR([LinearLR(start_factor=0.1, total_iters=10), "
           "CosineAnnealingLR(T_max=290)], milestones=[10])", DRIFT, None,
           lambda o: S.SequentialLR(o, [S.LinearLR(o, start_factor=0.1, total_iters=10),
                                        S.CosineAnnealingLR(o, T_max=290)],
                                    milestones=[10]))
    yield ("sequential_three",
           cfg("Sequential", schedules=[cfg("Constant", value=LR * 0.5),
                                        cfg("ExponentialDecay", initial=LR,
                                            decay=-math.log(0.98)),
                                        cfg("MultiStep", initial=LR, milestones=[40, 80],
                                            gamma=0.5)],
               milestones=[20, 150]),
           "SequentialLR([ConstantLR(factor=0.5, total_iters=1000), ExponentialLR(gamma=0.98), "
           "MultiStepLR(milestones=[40, 80], gamma=0.5)], milestones=[20, 150])", DRIFT, None,
           lambda o: S.SequentialLR(o, [S.ConstantLR(o, factor=0.5, total_iters=1000),
                                        S.ExponentialLR(o, gamma=0.98),
                                        S.MultiStepLR(o, milestones=[40, 80], gamma=0.5)],
                                    milestones=[20, 150]))
    yield ("warmup_cosine",
           cfg("Warmup", schedule=cfg("Cosine", initial=LR, steps=200), warmup_steps=20,
               start_value=LR * 0.01),
           "SequentialLR([LinearLR(start_factor=0.01, end_factor=1.0, total_iters=20), "
           "CosineAnnealingLR(T_max=200)], milestones=[20]) [compare steps 0..220]", DRIFT, 221,
           lambda o: S.SequentialLR(o, [S.LinearLR(o, start_factor=0.01, total_iters=20),
                                        S.CosineAnnealingLR(o, T_max=200)],
                                    milestones=[20]))
    yield ("lambda_exp", {"lambda": "0.1 * 0.95 ** n"},
           "LambdaLR(lr_lambda=lambda n: 0.95 ** n)", TIGHT, None,
           lambda o: S.LambdaLR(o, lr_lambda=lambda n: 0.95 ** n))
    yield ("lambda_rsqrt", {"lambda": "0.1 / math.sqrt(1 + n)"},
           "LambdaLR(lr_lambda=lambda n: 1 / math.sqrt(1 + n))", TIGHT, None,
           lambda o: S.LambdaLR(o, lr_lambda=lambda n: 1.0 / math.sqrt(1 + n)))


def plateau_cases():
    yield ("plateau_min_rel",
           cfg("ReduceOnPlateau", initial=LR, mode="min", factor=0.5, patience=5,
               threshold=1e-3, threshold_mode="rel", cooldown=3, min_value=0.0, eps=1e-8),
           "ReduceLROnPlateau(mode='min', factor=0.5, patience=5, threshold=1e-3, cooldown=3)",
           plateau_metrics(0),
           lambda o: S.ReduceLROnPlateau(o, mode="min", factor=0.5, patience=5,
                                         threshold=1e-3, cooldown=3))
    yield ("plateau_max_abs",
           cfg("ReduceOnPlateau", initial=LR, mode="max", factor=0.3, patience=2,
               threshold=0.002, threshold_mode="abs", cooldown=0, min_value=0.002, eps=1e-8),
           "ReduceLROnPlateau(mode='max', factor=0.3, patience=2, threshold=0.002, "
           "threshold_mode='abs', min_lr=0.002)",
           plateau_metrics(1),
           lambda o: S.ReduceLROnPlateau(o, mode="max", factor=0.3, patience=2,
                                         threshold=0.002, threshold_mode="abs", min_lr=0.002))


def main() -> None:
    out = []
    for case_id, config, torch_desc, rtol, compare, make in cases():
        steps = config["kwargs"]["total_steps"] if config.get("name") == "OneCycle" else STEPS
        values = run(make, steps=steps)
        entry = {"id": case_id, "lrcore": config, "torch": torch_desc, "rtol": rtol,
                 "values": values}
        if compare is not None:
            entry["compare_steps"] = compare
        out.append(entry)
    for case_id, config, torch_desc, metrics, make in plateau_cases():
        out.append({"id": case_id, "lrcore": config, "torch": torch_desc, "rtol": TIGHT,
                    "metrics": metrics, "values": run(make, metrics=metrics)})
    doc = {
        "about": "learning rates recorded from torch.optim.lr_scheduler by "
                 "tests/golden/make_schedule_golden.py; values[n] = lr after n steps",
        "torch_version": torch.__version__,
        "base_lr": LR,
        "cases": out,
    }
    with OUT.open("w") as f:
        f.write("{\n")
        for key in ("about", "torch_version", "base_lr"):
            f.write(f"  {json.dumps(key)}: {json.dumps(doc[key])},\n")
        f.write('  "cases": [\n')
        f.write(",\n".join("    " + json.dumps(c) for c in out))
        f.write("\n  ]\n}\n")
    print(f"wrote {len(out)} cases to {OUT}")


if __name__ == "__main__":
    main()
