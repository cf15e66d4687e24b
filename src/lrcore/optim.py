"""Optimizers: SGD, Adam, AdamW, Adagrad, RMSprop, Adadelta over the caller's numpy arrays.

Design: an optimizer owns its state buffers and one `StepPlan` (compiled, or the numpy
reference's twin) that applies a step to every parameter in one native call. It keeps
the hyperparameters of each parameter group, any of which may be a number or a
schedule (`lrcore.schedules`); schedules are evaluated at the number of steps already
taken, so resuming from a saved step is exact. The update arithmetic lives only in the
kernels; this layer validates, evaluates schedules and keeps the step count.
"""
import math
import numbers

import numpy as np

from . import kernels
from .schedules import ReduceOnPlateau, Schedule

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adadelta"]

STATE_DICT_FORMAT = "lrcore.optimizer"
STATE_DICT_VERSION = 1


def _plan_class():
    if kernels.backend() == "native":
        from ._core import StepPlan
    else:
        from .reference import StepPlan
    return StepPlan


# Allowed values of each numeric hyperparameter: (low, high, high_inclusive)
_RANGES = {
    "lr": (0.0, math.inf, False), "momentum": (0.0, math.inf, False),
    "dampening": (0.0, 1.0, True), "weight_decay": (0.0, math.inf, False),
    "eps": (0.0, math.inf, False), "beta1": (0.0, 1.0, False), "beta2": (0.0, 1.0, False),
    "lr_decay": (0.0, math.inf, False), "alpha": (0.0, 1.0, False), "rho": (0.0, 1.0, False),
    "initial_accumulator_value": (0.0, math.inf, False),
}


def _check_number(owner, name, value):
    """Validate one numeric hyperparameter value; returns it as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a number or a schedule, got "
                        f"{type(value).__name__}")
    v = float(value)
    low, high, closed = _RANGES[name]
    ok = math.isfinite(v) and v >= low and (v <= high if closed else v < high)
    if not ok:
        want = f"in [{low:g}, {high:g}{']' if closed else ')'}" if high != math.inf else f">= {low:g}"
        raise ValueError(f"{owner}: {name} must be a finite number {want}, got {v!r}")
    return v


def _check_hyper(owner, name, value, step=0):
    """A number, or a schedule whose value at `step` (the next step to run) is valid."""
    if isinstance(value, Schedule):
        _check_number(f"{owner} ({name} schedule at step {step})", name, value(step))
        return value
    return _check_number(owner, name, value)


def _same_config(a, b):
    try:
        return a.to_config() == b.to_config()
    except TypeError:  # a Lambda
        return False


class Optimizer:
    """Base class. Subclasses declare the kernel, hyperparameters, flags and state."""

    kernel = None          # name in lrcore.kernels
    numeric = ()           # numeric hyperparameters (number or schedule)
    flags = ()             # boolean hyperparameters, changeable with set()
    fixed = ()             # boolean hyperparameters fixed at construction (state layout)
    state_slots = ()       # state buffer names in kernel order (3 slots)

    def __init__(self, params, defaults, num_threads=None):
        owner = type(self).__name__
        if num_threads is not None and (isinstance(num_threads, bool)
                                        or not isinstance(num_threads, numbers.Integral)
                                        or num_threads < 1):
            raise ValueError(f"{owner}: num_threads must be an integer >= 1 or None, "
                             f"got {num_threads!r}")
        self.num_threads = num_threads
        self._step = 0
        self._groups = []
        self._params = []
        self._group_of = []
        for g, spec in enumerate(self._normalise(params, owner)):
            group = dict(defaults)
            for key, value in spec.items():
                if key == "params":
                    continue
                if key not in defaults:
                    raise TypeError(f"{owner}: unknown hyperparameter {key!r} in parameter "
                                    f"group {g}; expected one of {sorted(defaults)}")
                group[key] = value
            self._groups.append(self._validated(group, owner))
            for p in spec["params"]:
                self._params.append(p)
                self._group_of.append(g)
        self._check_params(owner)
        self._states = [dict() for _ in self._params]
        self._momentum_started = [False] * len(self._groups)
        self._plan = None
        self._ensure_state()
        self.last_grad_norm = None

    # -- construction ------------------------------------------------------------------

    @staticmethod
    def _normalise(params, owner):
        if isinstance(params, np.ndarray):
            return [{"params": [params]}]
        if isinstance(params, dict):
            raise TypeError(f"{owner}: params must be an array, a list of arrays or a list of "
                            f"dicts (parameter groups), got a dict; wrap it in a list")
        try:
            items = list(params)
        except TypeError:
            raise TypeError(f"{owner}: params must be an array, a list of arrays or a list of "
                            f"dicts, got {type(params).__name__}") from None
        if not items:
            raise ValueError(f"{owner}: params is empty; give at least one array")
        if all(isinstance(x, dict) for x in items):
            groups = []
            for g, d in enumerate(items):
                if "params" not in d:
                    raise ValueError(f"{owner}: parameter group {g} has no 'params' key")
                ps = d["params"]
                ps = [ps] if isinstance(ps, np.ndarray) else list(ps)
                groups.append(dict(d, params=ps))
            return groups
        if any(isinstance(x, dict) for x in items):
            raise TypeError(f"{owner}: params mixes arrays and dicts; use one or the other")
        return [{"params": items}]

    def _check_params(self, owner):
        for i, p in enumerate(self._params):
            if not isinstance(p, np.ndarray):
                raise TypeError(f"{owner}: params[{i}] must be a numpy.ndarray, got "
                                f"{type(p).__name__}")
            if p.dtype not in (np.float32, np.float64) or not p.dtype.isnative:
                raise TypeError(f"{owner}: params[{i}] must have dtype float32 or float64 "
                                f"(native byte order), got {p.dtype}")
            if not p.flags.c_contiguous:
                raise ValueError(f"{owner}: params[{i}] must be C-contiguous (it is updated "
                                 f"in place)")
            if not p.flags.writeable:
                raise ValueError(f"{owner}: params[{i}] is read-only; it must be writeable")

    def _validated(self, group, owner, step=None):
        """Check a group's values; a schedule is checked at `step` (default: the next step)."""
        step = getattr(self, "_step", 0) if step is None else step
        out = {}
        for key, value in group.items():
            if key in self.numeric:
                out[key] = _check_hyper(owner, key, value, step)
            elif key in self.flags or key in self.fixed:
                if not isinstance(value, (bool, np.bool_)):
                    raise TypeError(f"{owner}: {key} must be True or False, got {value!r}")
                out[key] = bool(value)
            else:
                out[key] = value
        self._check_group(out, owner)
        return out

    def _check_group(self, group, owner):
        """Cross-field rules (subclasses)."""

    def _needs(self, group):
        """State buffers this group needs now (subclasses)."""
        return self.state_slots

    def _ensure_state(self):
        """Allocate missing state buffers and (re)build the native plan if anything changed."""
        changed = self._plan is None
        for i, p in enumerate(self._params):
            for name in self._needs(self._groups[self._group_of[i]]):
                if name not in self._states[i]:
                    self._states[i][name] = self._initial_state(name, p)
                    changed = True
        if changed:
            states = [tuple(st.get(name) for name in self.state_slots) + (None,) *
                      (3 - len(self.state_slots)) for st in self._states]
            self._plan = _plan_class()(self.kernel, list(self._params), states,
                                       list(self._group_of))

    def _initial_state(self, name, p):
        return np.zeros_like(p)

    # -- hyperparameters -----------------------------------------------------------------

    @property
    def step_count(self):
        """Number of steps applied so far (the next step is number step_count + 1)."""
        return self._step

    @property
    def params(self):
        """The arrays being optimised, in order (the caller's own arrays)."""
        return list(self._params)

    @property
    def param_groups(self):
        """The parameter groups: dicts of 'params' and hyperparameters (numbers or schedules)."""
        return [dict(g, params=[p for p, gi in zip(self._params, self._group_of) if gi == k])
                for k, g in enumerate(self._groups)]

    def _value(self, value):
        return value(self._step) if isinstance(value, Schedule) else value

    def hyperparameters(self, group=0):
        """Values in force for the next step (schedules evaluated), as a dict."""
        self._check_group_index(group)
        return {k: self._value(v) for k, v in self._groups[group].items()}

    @property
    def lr(self):
        """Learning rate in force for the next step (group 0)."""
        return self._value(self._groups[0]["lr"])

    def _check_group_index(self, group):
        if isinstance(group, bool) or not isinstance(group, numbers.Integral) \
                or not 0 <= group < len(self._groups):
            raise ValueError(f"{type(self).__name__}: group must be an index in "
                             f"[0, {len(self._groups)}), got {group!r}")

    def set(self, group=None, **hyperparameters):
        """Change hyperparameters (numbers or schedules) from the next step on, in one group
        or (group=None) in every group. Validated like the constructor; nothing changes if
        any value is rejected."""
        owner = type(self).__name__
        targets = range(len(self._groups)) if group is None else [group]
        if group is not None:
            self._check_group_index(group)
        for key in hyperparameters:
            if key in self.fixed:
                raise ValueError(f"{owner}: {key} changes the optimizer's state layout and is "
                                 f"fixed at construction")
            if key not in self._groups[0]:
                raise TypeError(f"{owner}: unknown hyperparameter {key!r}; expected one of "
                                f"{sorted(k for k in self._groups[0] if k not in self.fixed)}")
        new = {g: self._validated(dict(self._groups[g], **hyperparameters), owner)
               for g in targets}
        for g, group_values in new.items():
            self._groups[g] = group_values
        self._ensure_state()

    def report(self, metric):
        """Feed a metric (e.g. validation loss) to every ReduceOnPlateau hyperparameter,
        once per schedule object (groups share the constructor's default schedule)."""
        seen = set()
        for group in self._groups:
            for value in group.values():
                if isinstance(value, ReduceOnPlateau) and id(value) not in seen:
                    seen.add(id(value))
                    value.report(metric)

    # -- the step ------------------------------------------------------------------------

    def _group_tuple(self, group, g):
        raise NotImplementedError

    def _step_values(self):
        """Every group's values for this step, validated (a schedule may leave the range)."""
        owner = type(self).__name__
        out = []
        for g, group in enumerate(self._groups):
            values = {}
            for key, value in group.items():
                if isinstance(value, Schedule):
                    values[key] = _check_number(f"{owner} (schedule at step {self._step})", key,
                                                value(self._step))
                else:
                    values[key] = value
            out.append(self._group_tuple(values, g))
        return out

    def step(self, grads, *, clip_norm=None, skip_nonfinite=False):
        """Apply one step with `grads` (one array, or a list in the order of the params).

        clip_norm: scale all grads by min(1, clip_norm / (total_norm + 1e-6)), total_norm the
        L2 norm over every grad (torch.nn.utils.clip_grad_norm_), inside the update: grads are
        not written. skip_nonfinite: if any grad holds NaN or Inf, change nothing and return
        False. Returns True when the step was applied.
        """
        owner = type(self).__name__
        if isinstance(grads, np.ndarray):
            grads = [grads]
        elif not isinstance(grads, list):
            try:
                grads = list(grads)
            except TypeError:
                raise TypeError(f"{owner}.step(): grads must be an array or a list of arrays, "
                                f"got {type(grads).__name__}") from None
        if len(grads) == len(self._params):
            for i, (g, p) in enumerate(zip(grads, self._params)):
                if isinstance(g, np.ndarray) and g.shape != p.shape and g.size == p.size:
                    raise ValueError(f"{owner}.step(): grads[{i}] has shape {g.shape} but "
                                     f"params[{i}] has shape {p.shape}; pass one grad per "
                                     f"param, of the same shape")
        if clip_norm is not None:
            if isinstance(clip_norm, bool) or not isinstance(clip_norm, numbers.Real) \
                    or not (math.isfinite(clip_norm) and clip_norm > 0):
                raise ValueError(f"{owner}.step(): clip_norm must be a finite number > 0 or "
                                 f"None, got {clip_norm!r}")
        hps = self._step_values()
        scale = 1.0
        checked = False
        if clip_norm is not None or skip_nonfinite:
            sumsq, finite = self._plan.grad_sumsq(grads, self.num_threads)
            checked = True
            norm = math.sqrt(sumsq)
            self.last_grad_norm = norm
            if skip_nonfinite and not finite:
                return False
            if clip_norm is not None:
                # an overflowed (inf) norm scales to 0 as in torch; NaN stays NaN (min() would drop it)
                scale = math.nan if math.isnan(norm) else min(1.0, clip_norm / (norm + 1e-6))
        self._plan.run(grads, hps, scale, self.num_threads, checked)
        self._after_step()
        self._step += 1
        return True

    def _after_step(self):
        pass

    # -- checkpoints ---------------------------------------------------------------------

    def state_dict(self):
        """A copy of everything needed to resume: step, hyperparameters (schedules as
        configs with their state), flags, and copies (never views) of the state buffers."""
        groups = []
        for g, group in enumerate(self._groups):
            hyper = {}
            for key, value in group.items():
                if isinstance(value, Schedule):
                    try:
                        config = value.to_config()
                    except TypeError:
                        config = None  # a Lambda: kept from the live optimizer on load
                    hyper[key] = {"schedule": config, "state": value.state_dict(),
                                  "repr": repr(value)}
                else:
                    hyper[key] = value
            groups.append({"hyperparameters": hyper,
                           "params": [i for i, gi in enumerate(self._group_of) if gi == g],
                           "momentum_started": self._momentum_started[g]})
        return {
            "format": STATE_DICT_FORMAT, "version": STATE_DICT_VERSION,
            "optimizer": type(self).__name__, "step": self._step, "groups": groups,
            "params": [{"shape": list(p.shape), "dtype": p.dtype.name} for p in self._params],
            "state": [{k: v.copy() for k, v in st.items()} for st in self._states],
        }

    def load_state_dict(self, state_dict):
        """Restore from state_dict(). Everything is checked before anything changes."""
        owner = type(self).__name__
        d = state_dict

        def bad(msg):
            return ValueError(f"{owner}.load_state_dict(): {msg}")
        try:
            if not isinstance(d, dict) or d.get("format") != STATE_DICT_FORMAT:
                raise bad("not an lrcore optimizer state dict (format key missing or wrong)")
            if d.get("version") != STATE_DICT_VERSION:
                raise bad(f"format version {d.get('version')!r} is not supported "
                          f"(this lrcore reads version {STATE_DICT_VERSION})")
            if d.get("optimizer") != owner:
                raise bad(f"the state dict is for {d.get('optimizer')!r}, not {owner!r}")
            step = d.get("step")
            if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
                raise bad(f"step must be an integer >= 0, got {step!r}")
            if len(d.get("groups", ())) != len(self._groups):
                raise bad(f"it has {len(d.get('groups', ()))} parameter groups, this optimizer "
                          f"has {len(self._groups)}")
            if len(d.get("params", ())) != len(self._params):
                raise bad(f"it has {len(d.get('params', ()))} parameters, this optimizer has "
                          f"{len(self._params)}")
            for i, (info, p) in enumerate(zip(d["params"], self._params)):
                if tuple(info.get("shape", ())) != p.shape or info.get("dtype") != p.dtype.name:
                    raise bad(f"params[{i}] was {info.get('dtype')} {tuple(info.get('shape', ()))}, "
                              f"is {p.dtype.name} {p.shape}")
            for g, sg in enumerate(d["groups"]):
                mine = [i for i, gi in enumerate(self._group_of) if gi == g]
                if list(sg.get("params", ())) != mine:
                    raise bad(f"group {g} holds params {sg.get('params')}, this optimizer's holds "
                              f"{mine}")
            new_groups = []
            for g, sg in enumerate(d["groups"]):
                hyper = dict(sg.get("hyperparameters", {}))
                if set(hyper) != set(self._groups[g]):
                    raise bad(f"group {g} has hyperparameters {sorted(hyper)}, expected "
                              f"{sorted(self._groups[g])}")
                for key, value in hyper.items():
                    if isinstance(value, dict):
                        if value.get("schedule") is None:
                            live = self._groups[g][key]
                            if not isinstance(live, Schedule):
                                raise bad(f"group {g} {key} was {value.get('repr')}, which cannot "
                                          f"be restored from a file; set the same schedule on the "
                                          f"optimizer before loading")
                            hyper[key] = live
                        else:
                            try:
                                sched = Schedule.from_config(value["schedule"])
                                sched.load_state_dict(value.get("state", {}))
                            except (TypeError, ValueError, KeyError) as exc:
                                raise bad(f"group {g} {key}: bad schedule: {exc}") from None
                            hyper[key] = sched
                for key in self.fixed:
                    if hyper[key] != self._groups[g][key]:
                        raise bad(f"group {g} has {key}={hyper[key]}, this optimizer has "
                                  f"{self._groups[g][key]}; {key} is fixed at construction")
                try:
                    new_groups.append(self._validated(hyper, owner, step=int(step)))
                except (TypeError, ValueError) as exc:
                    raise bad(f"group {g}: {exc}") from None
            states = d.get("state", ())
            if len(states) != len(self._params):
                raise bad(f"it has state for {len(states)} parameters, expected {len(self._params)}")
            for i, (st, p) in enumerate(zip(states, self._params)):
                needed = set(self._needs(new_groups[self._group_of[i]]))
                unknown = set(st) - set(self.state_slots)
                if unknown or not needed <= set(st):
                    raise bad(f"params[{i}] state has buffers {sorted(st)}, expected "
                              f"{sorted(needed)}")
                for name, arr in st.items():
                    if not isinstance(arr, np.ndarray) or arr.shape != p.shape or arr.dtype != p.dtype:
                        desc = (f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray)
                                else type(arr).__name__)
                        raise bad(f"params[{i}] state {name!r} is {desc}, expected "
                                  f"{p.dtype} {p.shape}")
            started = [bool(sg.get("momentum_started", False)) for sg in d["groups"]]
        except ValueError:
            raise
        except (TypeError, AttributeError, KeyError, IndexError) as exc:
            raise bad(f"malformed state dict ({type(exc).__name__}: {exc})") from None
        # checked: apply. A live schedule equal to the saved one is kept (its state
        # loaded), so a caller's own reference (e.g. to a ReduceOnPlateau) stays in use.
        for g, group in enumerate(new_groups):
            for key, value in group.items():
                live = self._groups[g][key]
                if isinstance(value, Schedule) and isinstance(live, Schedule) \
                        and value is not live and _same_config(live, value):
                    live.load_state_dict(value.state_dict())
                    group[key] = live
        self._groups = new_groups
        for i, st in enumerate(states):
            for name, arr in st.items():
                if name in self._states[i]:
                    np.copyto(self._states[i][name], arr)
                else:
                    self._states[i][name] = np.array(arr, copy=True, order="C")
                    self._plan = None
            for name, live in self._states[i].items():
                if name not in st:   # not in the file: back to its initial value
                    np.copyto(live, self._initial_state(name, live))
        self._step = int(step)
        self._momentum_started = started
        self._ensure_state()

    def __repr__(self):
        lines = [f"{type(self).__name__}(step={self._step}, params={len(self._params)}, "
                 f"backend={kernels.backend()}"]
        for g, group in enumerate(self._groups):
            items = ", ".join(f"{k}={v!r}" for k, v in group.items())
            lines.append(f"  group {g}: {items}")
        return "\n".join(lines) + ")"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum (torch.optim.SGD).

    g = -grad if maximize else grad;  g = g + weight_decay * param
    buf = g (first step with momentum), then buf = momentum * buf + (1 - dampening) * g
    g = g + momentum * buf if nesterov else buf           (when momentum != 0)
    param = param - lr * g
    """
    kernel = "sgd"
    numeric = ("lr", "momentum", "dampening", "weight_decay")
    flags = ("nesterov", "maximize")
    state_slots = ("momentum_buffer",)

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, num_threads=None):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize), num_threads)

    def _check_group(self, group, owner):
        if group["nesterov"]:
            m, d = group["momentum"], group["dampening"]
            if isinstance(m, Schedule) or isinstance(d, Schedule) or m <= 0 or d != 0:
                raise ValueError(f"{owner}: nesterov requires a constant momentum > 0 and "
                                 f"dampening = 0, got momentum={m!r}, dampening={d!r}")

    def _needs(self, group):
        m = group["momentum"]
        return ("momentum_buffer",) if isinstance(m, Schedule) or m > 0 else ()

    def _group_tuple(self, v, g):
        first = v["momentum"] > 0 and not self._momentum_started[g]
        return (v["lr"], v["momentum"], v["dampening"], v["weight_decay"], v["nesterov"],
                v["maximize"], 1 if first else self._step + 1)

    def _step_values(self):
        values = super()._step_values()
        self._pending_started = [t[1] > 0 for t in values]
        return values

    def _after_step(self):
        self._momentum_started = [a or b for a, b in
                                  zip(self._momentum_started, self._pending_started)]


class Adam(Optimizer):
    """Adam (torch.optim.Adam), with AMSGrad and AdamW's decoupled weight decay.

    g = -grad if maximize else grad
    param = param * (1 - lr * weight_decay) if decoupled_weight_decay
    else g = g + weight_decay * param
    exp_avg = beta1 * exp_avg + (1 - beta1) * g
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
    v = max(max_exp_avg_sq, exp_avg_sq) if amsgrad else exp_avg_sq
    param = param - lr / (1 - beta1**t) * exp_avg / (sqrt(v) / sqrt(1 - beta2**t) + eps)
    """
    kernel = "adam"
    numeric = ("lr", "beta1", "beta2", "eps", "weight_decay")
    flags = ("maximize", "decoupled_weight_decay")
    fixed = ("amsgrad",)
    state_slots = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False, decoupled_weight_decay=False,
                 num_threads=None):
        betas = self._betas(betas)
        if isinstance(params, (list, tuple)) and params and all(isinstance(x, dict) for x in params):
            params = [self._split_betas(d) for d in params]
        super().__init__(params, dict(lr=lr, beta1=betas[0], beta2=betas[1], eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay),
                         num_threads)

    def _betas(self, betas):
        owner = type(self).__name__
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}") from None
        return b1, b2

    def _split_betas(self, group):
        if "betas" in group:
            b1, b2 = self._betas(group["betas"])
            group = {k: v for k, v in group.items() if k != "betas"}
            group.update(beta1=b1, beta2=b2)
        return group

    def set(self, group=None, **hyperparameters):
        if "betas" in hyperparameters:
            b1, b2 = self._betas(hyperparameters.pop("betas"))
            hyperparameters.update(beta1=b1, beta2=b2)
        super().set(group, **hyperparameters)

    def _needs(self, group):
        return self.state_slots if group["amsgrad"] else self.state_slots[:2]

    def _group_tuple(self, v, g):
        return (v["lr"], v["beta1"], v["beta2"], v["eps"], v["weight_decay"],
                v["decoupled_weight_decay"], v["maximize"], self._step + 1)


class AdamW(Adam):
    """AdamW (torch.optim.AdamW): Adam with decoupled weight decay, default 1e-2.

    param = param * (1 - lr * weight_decay), then the Adam update without L2 in g.
    """
    flags = ("maximize",)
    fixed = ("amsgrad", "decoupled_weight_decay")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, num_threads=None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True,
                         num_threads=num_threads)


class Adagrad(Optimizer):
    """Adagrad (torch.optim.Adagrad).

    g = -grad if maximize else grad;  g = g + weight_decay * param
    clr = lr / (1 + (t - 1) * lr_decay)
    state_sum = state_sum + g * g      (starts at initial_accumulator_value)
    param = param - clr * g / (sqrt(state_sum) + eps)
    """
    kernel = "adagrad"
    numeric = ("lr", "lr_decay", "weight_decay", "eps")
    flags = ("maximize",)
    state_slots = ("state_sum",)

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, *, maximize=False, num_threads=None):
        self._initial_accumulator = _check_number("Adagrad", "initial_accumulator_value",
                                                  initial_accumulator_value)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      eps=eps, maximize=maximize), num_threads)

    def _initial_state(self, name, p):
        return np.full_like(p, self._initial_accumulator)

    def _group_tuple(self, v, g):
        return (v["lr"], v["lr_decay"], v["weight_decay"], v["eps"], v["maximize"],
                self._step + 1)


class RMSprop(Optimizer):
    """RMSprop (torch.optim.RMSprop), centered and with momentum.

    g = -grad if maximize else grad;  g = g + weight_decay * param
    square_avg = alpha * square_avg + (1 - alpha) * g * g
    avg = sqrt(square_avg - grad_avg**2) + eps, grad_avg = alpha*grad_avg + (1-alpha)*g  (centered)
    avg = sqrt(square_avg) + eps                                                         (otherwise)
    buf = momentum * buf + g / avg;  param = param - lr * buf      (momentum > 0)
    param = param - lr * g / avg                                    (otherwise)
    """
    kernel = "rmsprop"
    numeric = ("lr", "alpha", "eps", "weight_decay", "momentum")
    flags = ("maximize",)
    fixed = ("centered",)
    state_slots = ("square_avg", "momentum_buffer", "grad_avg")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, maximize=False, num_threads=None):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize),
                         num_threads)

    def _needs(self, group):
        m = group["momentum"]
        need = ["square_avg"]
        if isinstance(m, Schedule) or m > 0:
            need.append("momentum_buffer")
        if group["centered"]:
            need.append("grad_avg")
        return tuple(need)

    def _group_tuple(self, v, g):
        return (v["lr"], v["alpha"], v["eps"], v["weight_decay"], v["momentum"],
                v["maximize"], self._step + 1)


class Adadelta(Optimizer):
    """Adadelta (torch.optim.Adadelta).

    g = -grad if maximize else grad;  g = g + weight_decay * param
    square_avg = rho * square_avg + (1 - rho) * g * g
    delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g
    acc_delta = rho * acc_delta + (1 - rho) * delta * delta
    param = param - lr * delta
    """
    kernel = "adadelta"
    numeric = ("lr", "rho", "eps", "weight_decay")
    flags = ("maximize",)
    state_slots = ("square_avg", "acc_delta")

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, *, maximize=False,
                 num_threads=None):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize), num_threads)

    def _group_tuple(self, v, g):
        return (v["lr"], v["rho"], v["eps"], v["weight_decay"], v["maximize"], self._step + 1)
