"""The optimizer classes: SGD, Adam, AdamW, Adagrad, RMSprop, Adadelta, Adamax, NAdam, RAdam,
Lion.

Each class names its row of :data:`lrcore.rules.RULES` and keeps torch.optim's constructor
(argument names, order and defaults; a test checks the defaults against the table; Lion,
which torch lacks, follows optax/timm), plus the keyword-only options num_threads,
state_dtype (None, "float32", "bfloat16" or "int8"), rounding ("nearest" or "stochastic")
and seed (the stochastic-rounding stream's; lrcore.optim.precision). Its docstring ends
with the row's update, as the kernels compute it. `CLASSES` maps each optimizer name of the table (lrcore.rules.PRESETS)
to its class.
"""
import numpy as np

from .. import hyperparams, rules
from ..schedules import Schedule
from .base import Optimizer

__all__ = ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adadelta", "Adamax", "NAdam", "RAdam",
           "Lion", "CLASSES"]


def _element_options(state_dtype, rounding, seed):
    """The element-type options every class passes on to Optimizer (lrcore.optim.precision)."""
    return {"state_dtype": state_dtype, "rounding": rounding, "seed": seed}


def _with_math(cls):
    """Append the rule's update (written once, in the table) to the class docstring."""
    body = "\n".join("    " + line if line else "" for line in cls.rule.math.splitlines())
    cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n\n    Update:\n\n" + body + "\n"
    return cls


@_with_math
class SGD(Optimizer):
    """Stochastic gradient descent with momentum (torch.optim.SGD)."""
    rule = rules.RULES["sgd"]

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, num_threads=None,
                 state_dtype=None, rounding="nearest", seed=0):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize), num_threads,
                         **_element_options(state_dtype, rounding, seed))

    def _check_group(self, group, owner):
        if group["nesterov"]:
            m, d = group["momentum"], group["dampening"]
            if isinstance(m, Schedule) or isinstance(d, Schedule) or m <= 0 or d != 0:
                raise ValueError(f"{owner}: nesterov requires a constant momentum > 0 and "
                                 f"dampening = 0, got momentum={m!r}, dampening={d!r}")

    def _init_buffer(self, g, values):
        # torch's first momentum step (the buffer starts as g): the first step of this
        # group with momentum > 0
        return values["momentum"] > 0 and not self._momentum_started[g]

    def _after_step(self, values):
        self._momentum_started = [started or v["momentum"] > 0 for started, v in
                                  zip(self._momentum_started, values)]


class _AdamBetas:
    """torch's `betas=(beta1, beta2)` spelling of the table's beta1 and beta2."""

    def _betas(self, betas):
        owner = type(self).__name__
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"{owner}: betas must be a pair (beta1, beta2), got "
                            f"{betas!r}") from None
        return b1, b2

    def _split_betas(self, params):
        if isinstance(params, (list, tuple)) and params and \
                all(isinstance(x, dict) for x in params):
            out = []
            for group in params:
                if "betas" in group:
                    b1, b2 = self._betas(group["betas"])
                    group = {k: v for k, v in group.items() if k != "betas"}
                    group.update(beta1=b1, beta2=b2)
                out.append(group)
            return out
        return params

    def set(self, group=None, **hyperparameters):
        if "betas" in hyperparameters:
            b1, b2 = self._betas(hyperparameters.pop("betas"))
            hyperparameters.update(beta1=b1, beta2=b2)
        super().set(group, **hyperparameters)


@_with_math
class Adam(_AdamBetas, Optimizer):
    """Adam (torch.optim.Adam), with AMSGrad and AdamW's decoupled weight decay."""
    rule = rules.RULES["adam"]
    fixed = ("amsgrad",)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False, decoupled_weight_decay=False,
                 num_threads=None,
                 state_dtype=None, rounding="nearest", seed=0):
        b1, b2 = self._betas(betas)
        super().__init__(self._split_betas(params),
                         dict(lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=weight_decay,
                              amsgrad=amsgrad, maximize=maximize,
                              decoupled_weight_decay=decoupled_weight_decay), num_threads,
                         **_element_options(state_dtype, rounding, seed))


@_with_math
class AdamW(Adam):
    """AdamW (torch.optim.AdamW): Adam with decoupled weight decay (default 1e-2), the
    table's "adamw" preset."""
    fixed = ("amsgrad", "decoupled_weight_decay")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, num_threads=None,
                 state_dtype=None, rounding="nearest", seed=0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True,
                         num_threads=num_threads, state_dtype=state_dtype, rounding=rounding,
                         seed=seed)


@_with_math
class Adagrad(Optimizer):
    """Adagrad (torch.optim.Adagrad)."""
    rule = rules.RULES["adagrad"]

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, *, maximize=False, num_threads=None,
                 state_dtype=None, rounding="nearest", seed=0):
        self._initial_accumulator = hyperparams.check(
            "Adagrad", "initial_accumulator_value", initial_accumulator_value,
            hyperparams.range_of(self.rule, "initial_accumulator_value"))
        if isinstance(self._initial_accumulator, Schedule):
            raise TypeError("Adagrad: initial_accumulator_value must be a number, got a "
                            "schedule")
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      eps=eps, maximize=maximize), num_threads,
                         **_element_options(state_dtype, rounding, seed))

    def _options(self):
        return {"initial_accumulator_value": self._initial_accumulator}


@_with_math
class RMSprop(Optimizer):
    """RMSprop (torch.optim.RMSprop), centered and with momentum."""
    rule = rules.RULES["rmsprop"]
    fixed = ("centered",)

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, maximize=False, num_threads=None,
                 state_dtype=None, rounding="nearest", seed=0):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize),
                         num_threads, **_element_options(state_dtype, rounding, seed))


@_with_math
class Adadelta(Optimizer):
    """Adadelta (torch.optim.Adadelta)."""
    rule = rules.RULES["adadelta"]

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, *, maximize=False,
                 num_threads=None,
                 state_dtype=None, rounding="nearest", seed=0):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize), num_threads,
                         **_element_options(state_dtype, rounding, seed))


@_with_math
class Adamax(_AdamBetas, Optimizer):
    """Adamax (torch.optim.Adamax): Adam with the infinity norm."""
    rule = rules.RULES["adamax"]

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
                 maximize=False, num_threads=None,
                 state_dtype=None, rounding="nearest", seed=0):
        b1, b2 = self._betas(betas)
        super().__init__(self._split_betas(params),
                         dict(lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=weight_decay,
                              maximize=maximize), num_threads,
                         **_element_options(state_dtype, rounding, seed))


@_with_math
class NAdam(_AdamBetas, Optimizer):
    """NAdam (torch.optim.NAdam): Adam with Nesterov momentum and momentum decay.

    mu_product (torch's per-parameter scalar state) is kept per group as torch keeps it, a
    float32 running product: each step multiplies it by that step's mu (beta1 and
    momentum_decay in force), both rounded to float32."""
    rule = rules.RULES["nadam"]

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, maximize=False,
                 num_threads=None,
                 state_dtype=None, rounding="nearest", seed=0):
        b1, b2 = self._betas(betas)
        super().__init__(self._split_betas(params),
                         dict(lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=weight_decay,
                              momentum_decay=momentum_decay,
                              decoupled_weight_decay=decoupled_weight_decay,
                              maximize=maximize), num_threads,
                         **_element_options(state_dtype, rounding, seed))

    def _initial_scalars(self):
        return {"mu_product": 1.0}

    def _next_scalars(self, g, values):
        # the table's mu_product: torch's float32 running product, f32(mu_product * f32(mu))
        mu = values["beta1"] * (1.0 - 0.5 * 0.96 ** (values["step"] * values["momentum_decay"]))
        return {"mu_product": float(np.float32(self._scalars[g]["mu_product"]) * np.float32(mu))}


@_with_math
class RAdam(_AdamBetas, Optimizer):
    """RAdam (torch.optim.RAdam): Adam with the variance rectification of Liu et al. 2020."""
    rule = rules.RULES["radam"]

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False, *, maximize=False, num_threads=None,
                 state_dtype=None, rounding="nearest", seed=0):
        b1, b2 = self._betas(betas)
        super().__init__(self._split_betas(params),
                         dict(lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=weight_decay,
                              decoupled_weight_decay=decoupled_weight_decay,
                              maximize=maximize), num_threads,
                         **_element_options(state_dtype, rounding, seed))


@_with_math
class Lion(_AdamBetas, Optimizer):
    """Lion (Chen et al. 2023; optax.lion, timm's Lion): the sign of an interpolated momentum,
    decoupled weight decay. torch.optim has no Lion; the defaults are optax's."""
    rule = rules.RULES["lion"]

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *,
                 maximize=False, num_threads=None,
                 state_dtype=None, rounding="nearest", seed=0):
        b1, b2 = self._betas(betas)
        super().__init__(self._split_betas(params),
                         dict(lr=lr, beta1=b1, beta2=b2, weight_decay=weight_decay,
                              maximize=maximize), num_threads,
                         **_element_options(state_dtype, rounding, seed))


CLASSES = {c.__name__.lower(): c for c in (SGD, Adam, AdamW, Adagrad, RMSprop, Adadelta,
                                           Adamax, NAdam, RAdam, Lion)}

