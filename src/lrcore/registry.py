"""One registry of kernels and hyperparameter sets, shared by tests, benchmarks and the CLI.

Each `KernelSpec` says how to call one kernel of lrcore.kernels: its state buffers
in signature order, representative hyperparameter sets (the option combinations
that select different loops), and how many bytes one step moves per element.
"""
from dataclasses import dataclass, field

import numpy as np

__all__ = ["KernelSpec", "KERNEL_SPECS", "spec", "make_state", "call"]


@dataclass(frozen=True)
class Case:
    """One hyperparameter set: keyword arguments and the state buffers it uses."""
    name: str
    states: tuple
    hyper: dict = field(default_factory=dict)


@dataclass(frozen=True)
class KernelSpec:
    name: str
    states: tuple          # every state buffer, in signature order
    cases: tuple           # Case objects; cases[0] is the benchmark's default
    lr: float

    def bytes_per_element(self, case, itemsize, step=2):
        """Bytes one step moves per element: reads of param, grad and states, writes of
        param and states. (SGD with momentum writes but does not read buf at step 1.)"""
        reads, writes = 2 + len(case.states), 1 + len(case.states)
        if self.name == "sgd" and case.states and step <= 1:
            reads -= 1
        return (reads + writes) * itemsize


def _c(name, states, **hyper):
    return Case(name, tuple(states), hyper)


KERNEL_SPECS = (
    KernelSpec("sgd", ("momentum_buffer",), (
        _c("momentum", ["momentum_buffer"], momentum=0.9),
        _c("plain", []),
        _c("dampening_wd", ["momentum_buffer"], momentum=0.9, dampening=0.1, weight_decay=0.01),
        _c("nesterov_wd", ["momentum_buffer"], momentum=0.9, nesterov=True, weight_decay=0.01),
        _c("maximize_wd", [], maximize=True, weight_decay=0.1),
        _c("maximize_momentum", ["momentum_buffer"], momentum=0.5, maximize=True),
    ), lr=0.05),
    KernelSpec("adam", ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), (
        _c("default", ["exp_avg", "exp_avg_sq"]),
        _c("l2", ["exp_avg", "exp_avg_sq"], weight_decay=0.01),
        _c("adamw", ["exp_avg", "exp_avg_sq"], weight_decay=0.1, decoupled_weight_decay=True),
        _c("amsgrad", ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]),
        _c("small_betas", ["exp_avg", "exp_avg_sq"], beta1=0.3, beta2=0.8, eps=1e-6),
        _c("maximize_l2_amsgrad", ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
           maximize=True, weight_decay=0.05),
    ), lr=1e-2),
    KernelSpec("adagrad", ("state_sum",), (
        _c("default", ["state_sum"]),
        _c("lr_decay_wd", ["state_sum"], lr_decay=0.1, weight_decay=0.01),
        _c("maximize", ["state_sum"], maximize=True, eps=1e-6),
    ), lr=0.05),
    KernelSpec("rmsprop", ("square_avg", "momentum_buffer", "grad_avg"), (
        _c("default", ["square_avg"]),
        _c("centered", ["square_avg", "grad_avg"]),
        _c("momentum", ["square_avg", "momentum_buffer"], momentum=0.9),
        _c("centered_momentum_wd", ["square_avg", "momentum_buffer", "grad_avg"],
           momentum=0.9, weight_decay=0.01),
        _c("small_alpha_maximize", ["square_avg", "grad_avg"], alpha=0.3, maximize=True),
    ), lr=1e-3),
    KernelSpec("adadelta", ("square_avg", "acc_delta"), (
        _c("default", ["square_avg", "acc_delta"]),
        _c("wd_small_rho", ["square_avg", "acc_delta"], weight_decay=0.01, rho=0.3),
        _c("maximize", ["square_avg", "acc_delta"], maximize=True),
    ), lr=1.0),
)


def spec(name):
    for s in KERNEL_SPECS:
        if s.name == name:
            return s
    raise KeyError(name)


def make_state(kspec, case, like):
    """Zero-initialised state buffers for one case (Adagrad's state_sum starts at 0.1)."""
    state = {}
    for name in case.states:
        state[name] = np.full_like(like, 0.1) if name == "state_sum" else np.zeros_like(like)
    return state


def call(module, kspec, case, param, grad, state, step, **extra):
    """Run one step of kspec's kernel from `module` (lrcore.kernels or lrcore.reference)."""
    fn = getattr(module, kspec.name)
    args = [state.get(name) for name in kspec.states]
    while args and args[-1] is None:
        args.pop()
    return fn(param, grad, *args, lr=kspec.lr, step=step, **case.hyper, **extra)
