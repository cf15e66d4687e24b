"""Drop-in `torch.optim` optimizers whose step runs lrcore's compiled kernels, zero-copy.

`lrcore.torch.Adam` is a `torch.optim.Adam`: same constructor, defaults, param_groups,
state (`step` as a scalar float tensor, `exp_avg`, ...) and state_dict, so it interchanges
with torch.optim both ways. Only `step()` differs: one threaded native call over all params.

Design: each class subclasses its torch.optim counterpart and replaces `step()` alone.
The classes are made, one per class of `lrcore.optim.CLASSES`, by `_drop_in` from the table
(lrcore.rules: the torch class, hyperparameters, states) and torch's own constructor
signature; a new rule needs no edit here.
A step collects the params that have a grad, checks everything (params, grads,
hyperparameters) before touching any memory, creates missing state the way torch does,
and runs one `StepPlan` over numpy views (`t.detach().numpy()`, no copies) of the params
and state tensors with the GIL released. The plan is cached and rebuilt only when the
set of params with grads, their storage, their state tensors, a group's state layout or
the pattern of step counts changes. Hyperparameters may be numbers, 0-dim tensors,
values set by torch.optim.lr_scheduler, or lrcore schedules; a schedule is evaluated at
the number of steps the param has already taken (its `state["step"]` before the step;
for SGD, which keeps no per-param step, the group's `lrcore_steps` counter).
Importing this module imports torch; `import lrcore` does not.

Half precision and 8-bit state (issues 12, 13): params and grads may also be torch.bfloat16 or
torch.float16 (viewed as ml_dtypes.bfloat16 / numpy.float16 arrays, no copies), and every class
takes `state_dtype` (None, "float32", "bfloat16", "int8", or torch.float32 / torch.bfloat16),
`rounding` ("nearest" or "stochastic") and `seed`, as lrcore.optim's classes
(lrcore.optim.precision). Such a step runs the kernel once per param (`_lrcore_step_each`),
with index_offset = the param's place in the concatenation of every group's params, and its
state tensors keep their dtype: float32 or bfloat16, or for 8-bit state the uint8
`state["<name>.codes"]` and float32 `state["<name>.absmax"]`. load_state_dict keeps them
(torch would cast floating state to the param's dtype) after checking them, and keeps a
per-param scalar state (NAdam's float32 `mu_product`) in its dtype for every param dtype,
so a resumed run is bitwise the uninterrupted one. `state_nbytes()` is lrcore.optim's.
"""
import inspect
import math
import numbers
import sys
import textwrap
import threading

import torch
import torch.optim

import numpy as np

from . import _validate, hyperparams, lowp, quantization, rules
from . import backend as lrcore_backend
from . import optim as lrcore_optim
from .optim import precision
from .schedules import Schedule

_DTYPES = (torch.float32, torch.float64)
_HALF = (torch.bfloat16, torch.float16)
# torch dtypes given as state_dtype, by lrcore.optim.precision's names
_STATE_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _state_dtype_name(owner, state_dtype):
    """state_dtype (a string or torch.float32 / torch.bfloat16) as lrcore.optim's name."""
    if isinstance(state_dtype, torch.dtype):
        if state_dtype not in _STATE_DTYPES:
            raise ValueError(f"{owner}: state_dtype must be None, 'float32', 'bfloat16', "
                             f"'int8', torch.float32 or torch.bfloat16, got {state_dtype}")
        state_dtype = _STATE_DTYPES[state_dtype]
    return state_dtype


def _np_dtype(dtype):
    """The numpy dtype of a torch floating dtype lrcore reads."""
    if dtype == torch.bfloat16:
        return lowp.bfloat16
    return np.dtype({torch.float32: np.float32, torch.float64: np.float64,
                     torch.float16: np.float16}[dtype])


def _view(t):
    """A numpy view (no copy) of a contiguous CPU tensor, bfloat16 as ml_dtypes.bfloat16."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(lowp.bfloat16)
    return t.numpy()


def _torch_dtype(np_dtype):
    if np_dtype == lowp.bfloat16:
        return torch.bfloat16
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
            np.dtype(np.float16): torch.float16}[np.dtype(np_dtype)]


class _Shape:
    """What lrcore.optim.precision reads of a param: dtype, size and shape."""
    __slots__ = ("dtype", "size", "shape")

    def __init__(self, p):
        self.dtype, self.size, self.shape = _np_dtype(p.dtype), p.numel(), tuple(p.shape)


def _scalar_dtype():
    """dtype of torch's `step` tensors (torch.optim.optimizer._get_scalar_dtype)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class _StandIn(float):
    """A float standing in for a schedule while torch's constructor validates numbers."""


def _stand_ins(args):
    """Replace schedules (also inside betas) by _StandIn(value at step 0) for torch's checks."""
    out, schedules = {}, {}
    for key, value in args.items():
        if key == "betas" and isinstance(value, (tuple, list)) and \
                any(isinstance(b, Schedule) for b in value):
            if len(value) != 2:
                raise TypeError(f"betas must be a pair (beta1, beta2), got {value!r}")
            schedules[key] = tuple(value)
            out[key] = tuple(_StandIn(b(0)) if isinstance(b, Schedule) else
                             (_StandIn(b) if isinstance(b, float) else b) for b in value)
        elif isinstance(value, Schedule):
            schedules[key] = value
            out[key] = _StandIn(value(0))
        else:
            out[key] = value
    return out, schedules


def _restore_schedules(mapping, schedules):
    """Put the schedules back where their stand-ins went (defaults and every group)."""
    for key, sched in schedules.items():
        value = mapping.get(key)
        if key == "betas":
            if isinstance(value, (tuple, list)):
                mapping[key] = tuple(s if isinstance(v, _StandIn) and isinstance(s, Schedule)
                                     else (float(v) if isinstance(v, _StandIn) else v)
                                     for v, s in zip(value, sched))
        elif isinstance(value, _StandIn):
            mapping[key] = sched


# A torch.optim.lr_scheduler drives a param group by writing numbers over its lr (and, for
# OneCycleLR and CyclicLR with cycle_momentum, over betas[0] or momentum). Every scheduler,
# ReduceLROnPlateau and SWALR included, reads `optimizer.param_groups` from these modules
# before it writes anything, at its construction and at each step; that read is where a
# scheduler is refused when what it would overwrite is an lrcore schedule.
_SCHEDULER_MODULES = frozenset({"torch.optim.lr_scheduler", "torch.optim.swa_utils"})


def _cycles_momentum(frame):
    """Whether the torch scheduler whose code runs in `frame` (and its callers in the
    scheduler modules) cycles momentum: the `cycle_momentum` argument of the __init__ being
    run, or the attribute of the scheduler once constructed."""
    while frame is not None and frame.f_globals.get("__name__") in _SCHEDULER_MODULES:
        local = frame.f_locals
        if "cycle_momentum" in local:
            return bool(local["cycle_momentum"])
        owner = local.get("self")
        if owner is not None and hasattr(owner, "cycle_momentum"):
            return bool(owner.cycle_momentum)
        frame = frame.f_back
    return False


def _refuse_scheduler(groups, frame):
    """TypeError if a torch scheduler (running in `frame`) would overwrite an lrcore
    schedule: any group's lr, or betas[0]/momentum when the scheduler cycles momentum."""
    momentum = None
    for g, group in enumerate(groups):
        lr = group.get("lr")
        if isinstance(lr, Schedule):
            raise TypeError(
                f"lrcore.torch: param_groups[{g}]'s lr is the lrcore schedule {lr!r}; a "
                f"torch.optim.lr_scheduler cannot also drive it (it would replace or scale "
                f"the schedule object). Give lr as a number to use a torch scheduler, or "
                f"let the lrcore schedule set the learning rate alone")
        betas = group.get("betas")
        for key, value in (("betas[0]", betas[0] if isinstance(betas, (tuple, list)) and
                            betas else None), ("momentum", group.get("momentum"))):
            if isinstance(value, Schedule):
                if momentum is None:
                    momentum = _cycles_momentum(frame)
                if momentum:
                    raise TypeError(
                        f"lrcore.torch: param_groups[{g}]'s {key} is the lrcore schedule "
                        f"{value!r}; a torch.optim.lr_scheduler with cycle_momentum=True "
                        f"cannot also drive it (it would replace the schedule object). Pass "
                        f"cycle_momentum=False, or give {key} as a number")


def _to_data(group):
    """A state-dict group with lrcore schedules as plain data (torch.load weights_only)."""
    return {k: hyperparams.to_data(v) for k, v in group.items()}


def _from_data(owner, g, group, live):
    """The inverse of _to_data, checked: schedules rebuilt as new objects (a Lambda, which
    is not data, taken from ``live``); raises ValueError naming the group and key. Nothing
    live changes here: :func:`_adopt` keeps the live schedules once the load has passed
    every check."""
    out = dict(group)
    for key, value in group.items():
        where = f"{owner}.load_state_dict(): param_groups[{g}]"
        old = live.get(key) if live is not None else None
        if hyperparams.is_data(value):
            out[key] = hyperparams.from_data(where, key, value, old)
        elif key == "betas" and isinstance(value, (list, tuple)) and \
                any(hyperparams.is_data(v) for v in value):
            olds = old if isinstance(old, (list, tuple)) else (None,) * len(value)
            out[key] = tuple(hyperparams.from_data(where, f"betas[{i}]", v, o)
                             if hyperparams.is_data(v) else v
                             for i, (v, o) in enumerate(zip(value, olds)))
    return out


def _adopt(value, old):
    """After a successful load: a live schedule with the loaded one's config is kept (with
    the loaded state), so a caller's reference (e.g. to a ReduceOnPlateau) stays in use;
    betas element by element."""
    if isinstance(value, tuple) and isinstance(old, (list, tuple)):
        return tuple(hyperparams.adopt(v, o) for v, o in zip(value, old)) + \
            tuple(value[len(old):])
    return hyperparams.adopt(value, old)


def _describe(p):
    return f"{str(p.dtype).replace('torch.', '')} {tuple(p.shape)} on {p.device}"


def _got(value):
    """What a state value is, for a message: a tensor's dtype, shape and device, else repr."""
    if isinstance(value, torch.Tensor):
        return _describe(value)
    if isinstance(value, np.ndarray):
        return f"a numpy.ndarray {value.dtype} {value.shape}"
    return repr(value)


def _whole_step(value):
    """A `step` (a real number or a one-element real tensor) as a float if it is a whole
    number >= 0, else None."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            return None
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    if not (math.isfinite(value) and value >= 0 and value == int(value)):
        return None
    return value


class _Cache:
    """The StepPlan of the last rebuild and what it was built for (lowp: a plan of
    lrcore.lowp's layouts, which takes the stream's rounding and seed at each run)."""
    __slots__ = ("plan", "signature", "step_tensors", "step_views", "expected_steps",
                 "expected_scalars", "group_of", "representative", "tensors", "lowp")


class _LrcoreOptimizer:
    """Shared step() of the lrcore.torch optimizers (a mixin placed before torch's class).

    Subclasses (made by _drop_in) name their row of the table (`_rule`, lrcore.rules.RULES);
    an entry of _OVERRIDES may say that torch keeps no state["step"] (`_has_step`). The
    kernel, the state names (torch's) and their conditions, the ranges and the
    hyperparameters come from the row, through the shared injector (lrcore.hyperparams).
    Steps from several threads are serialised by a lock.
    """
    _rule = None
    _has_step = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls._rule is not None:
            cls._kind = cls._rule.name
            cls._slots = tuple(s.torch_name for s in cls._rule.states)
            cls._lrcore_names = {s.torch_name: s.name for s in cls._rule.states}

    # -- torch schedulers ---------------------------------------------------------------

    @property
    def param_groups(self):
        """torch's list of param groups. Read by a torch.optim.lr_scheduler (at its
        construction and at each step), it first refuses, with a TypeError saying what to
        do, a scheduler that would overwrite an lrcore schedule (see _refuse_scheduler)."""
        frame = sys._getframe(1)
        groups = self.__dict__["param_groups"]
        if frame.f_globals.get("__name__") in _SCHEDULER_MODULES:
            _refuse_scheduler(groups, frame)
        return groups

    @param_groups.setter
    def param_groups(self, value):
        self.__dict__["param_groups"] = value

    # -- construction ------------------------------------------------------------------

    def _lrcore_init(self, torch_cls, params, args, flags, num_threads, options):
        owner = type(self).__name__
        (self._lrcore_state_dtype, self._lrcore_rounding,
         self._lrcore_seed) = precision.check_options(
            owner, _state_dtype_name(owner, options["state_dtype"]), options["rounding"],
            options["seed"])
        for name in ("capturable", "differentiable"):
            if flags.get(name):
                raise NotImplementedError(
                    f"{owner}: {name}=True is not supported; lrcore.torch updates CPU tensors "
                    f"in place outside autograd and CUDA graphs (use torch.optim.{owner})")
        if num_threads is not None and (isinstance(num_threads, bool) or
                                        not isinstance(num_threads, numbers.Integral) or
                                        num_threads < 1):
            raise ValueError(f"{owner}: num_threads must be an integer >= 1 or None, got "
                             f"{num_threads!r}")
        self.num_threads = num_threads
        self._lrcore_lock = threading.RLock()
        self._lrcore_cache = None
        self._lrcore_schedules = {}
        self._check_group(dict(args, **flags))   # the table's ranges and messages first
        args, schedules = _stand_ins(args)
        self._lrcore_schedules = schedules
        torch_cls.__init__(self, params, **args, **flags)
        _restore_schedules(self.defaults, schedules)
        for g, group in enumerate(self.param_groups):
            _restore_schedules(group, schedules)
            self._check_group(group, g)
        # lrcore's step reads grads as they are; GradScaler must unscale them first
        self._step_supports_amp_scaling = False
        # state torch made at construction (Adagrad's sum) in the param's dtype, where this
        # optimizer keeps another (state_dtype): dropped, made again at the first step
        for p, st in self.state.items():
            if self._lrcore_state_dtype is None and p.dtype not in _HALF:
                continue
            lay = self._lrcore_layout("a param", p)
            for name in [n for n in st if n in self._lrcore_names]:
                shape, dtype = self._lrcore_expected(lay, p, name).get(name, (None, None))
                if st[name].dtype != dtype:
                    del st[name]

    def add_param_group(self, param_group):
        """torch's add_param_group, then lrcore's checks (CPU, float32/float64, contiguous,
        valid hyperparameters); a rejected group is not added."""
        n = len(self.param_groups)
        super().add_param_group(param_group)
        try:
            group = self.param_groups[-1]
            _restore_schedules(group, getattr(self, "_lrcore_schedules", {}))
            for k, p in enumerate(group["params"]):
                self._check_param(n, k, p)
            self._check_group(group, n)
        except Exception:
            del self.param_groups[n:]
            raise
        self._lrcore_cache = None

    def _check_param(self, g, k, p):
        owner = type(self).__name__
        where = f"param_groups[{g}]['params'][{k}] ({_describe(p)})"
        if p.layout != torch.strided:
            raise TypeError(f"{owner}: {where} has layout {p.layout}; lrcore needs dense "
                            f"(torch.strided) parameters")
        if p.device.type != "cpu":
            raise ValueError(f"{owner}: {where} is not on the CPU; lrcore.torch updates CPU "
                             f"tensors (use torch.optim for {p.device.type})")
        if p.dtype not in _DTYPES and p.dtype not in _HALF:
            kind = "complex " if p.is_complex() else ""
            raise TypeError(f"{owner}: {where} has {kind}dtype {p.dtype}; lrcore supports "
                            f"torch.float32, torch.float64, torch.bfloat16 and torch.float16")
        if not p.is_contiguous():
            raise ValueError(f"{owner}: {where} is not contiguous (strides {p.stride()}); "
                             f"lrcore updates parameters in place in their own memory, so they "
                             f"must be contiguous (e.g. param.data = param.data.contiguous())")
        if getattr(self, "_lrcore_state_dtype", None) is not None or p.dtype in _HALF:
            self._lrcore_layout(where, p)      # a supported (param, state) layout

    def _check_group(self, group, g=None):
        """Validate a group's hyperparameters as they would be at its next step (and SGD's
        lrcore_steps, when the group has one; `g` is the group's index)."""
        if not self._has_step and "lrcore_steps" in group:
            self._group_steps(g, group, type(self).__name__)
        values = self._hyper(group, 0, False)
        for h in self._rule.hypers:   # one the table has no default for (lr)
            if h.public and h.default is None and h.name not in values and \
                    (self._rule.name, h.name) not in _validate.DERIVED:
                raise ValueError(f"{type(self).__name__}: param group has no value for "
                                 f"{self._rule.torch_hypers.get(h.name, h.name)!r}")
        precision.check_int8_group(type(self).__name__, self._rule, group,
                                   getattr(self, "_lrcore_state_dtype", None))

    def _group_steps(self, g, group, where):
        """SGD's count of the steps group `g` has taken, group["lrcore_steps"] (0 when
        absent), checked: ValueError naming it unless an integer in [0, 2**53)."""
        value = group.get("lrcore_steps", 0)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or \
                not 0 <= value < 2 ** 53:
            raise ValueError(
                f"{where}: param_groups[{'?' if g is None else g}]['lrcore_steps'] is "
                f"{value!r}; expected an integer in [0, 2**53) (lrcore's count of the steps "
                f"the group has taken, at which its schedules are evaluated)")
        return int(value)

    # -- hyperparameters (subclasses) ----------------------------------------------------

    def _flags(self, group):
        owner = type(self).__name__
        for name in ("capturable", "differentiable"):
            if group.get(name):
                raise NotImplementedError(f"{owner}: param group has {name}=True, which "
                                          f"lrcore.torch does not support; set it to False")

    def _stored(self, group):
        """The group's values under the table's names (torch's betas split in two)."""
        values = dict(group)
        betas = values.pop("betas", None)
        if betas is not None:
            try:
                values["beta1"], values["beta2"] = betas
            except (TypeError, ValueError):
                raise TypeError(f"{type(self).__name__}: betas must be a pair (beta1, beta2), "
                                f"got {betas!r}") from None
        return values

    def _hyper(self, group, step, first):
        """The kernel's hyperparameters for the step after `step` taken, by name."""
        return hyperparams.kernel_values(self._rule, type(self).__name__, self._stored(group),
                                         step, init_buffer=first)

    def _needs(self, group):
        """torch names of the state buffers this group needs (the table's conditions; a
        schedule or tensor counts by its current value's sign, a schedule as > 0)."""
        values = {}
        for k, v in self._stored(group).items():
            if isinstance(v, Schedule):
                v = 1.0
            elif isinstance(v, torch.Tensor) and v.numel() == 1:
                v = v.item()
            values[k] = v
        return tuple(s.torch_name for s in self._rule.present_states(values))

    def _new_state(self, name, p, group):
        """A new state buffer, filled with the row's initial value (an Option's value, as
        Adagrad's initial_accumulator_value, is read from the optimizer's defaults)."""
        value = self._initial_value(name)
        if value == 0:
            return torch.zeros_like(p, memory_format=torch.preserve_format)
        return torch.full_like(p, value, memory_format=torch.preserve_format)

    def _initial_value(self, name):
        """The row's initial value of state `name` (torch's name; an Option's value, as
        Adagrad's initial_accumulator_value, read from the optimizer's defaults)."""
        init = next(s.init for s in self._rule.states if s.torch_name == name)
        return self.defaults[init] if isinstance(init, str) else init

    # -- per-param scalar state (NAdam's mu_product): none by default -------------------

    def _scalar_keys(self, params):
        return None

    def _next_scalars(self, p, values):
        return {}

    def _store_scalars(self, params, values):
        pass

    # -- the step ------------------------------------------------------------------------

    def step(self, closure=None):
        """Perform one optimization step (torch.optim semantics).

        closure: optional callable that re-evaluates the model and returns the loss; it is
        called with grad enabled and its loss is returned. Params whose .grad is None are
        skipped. Every param, grad and hyperparameter is checked before anything changes.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad(), self._lrcore_lock:
            self._lrcore_step()
        return loss

    def _collect(self):
        params, grads, gidx = [], [], []
        for gi, group in enumerate(self.param_groups):
            self._flags(group)
            for p in group["params"]:
                g = p.grad
                if g is not None:
                    params.append(p)
                    grads.append(g)
                    gidx.append(gi)
        return params, grads, gidx

    def _grad_arrays(self, params, grads, lowp_mode=False):
        """Zero-copy numpy views of the grads; the common case costs one call per grad.
        lowp_mode: bfloat16/float16 grads too (viewed as lrcore.lowp's dtypes), and a grad's
        dtype need not be its param's (StepPlan.run checks it completes a layout)."""
        if lowp_mode:
            out = []
            for p, g in zip(params, grads):
                if g.layout != torch.strided or g.device.type != "cpu" or g.shape != p.shape \
                        or not (g.dtype == p.dtype or (p.dtype == torch.float32
                                                       and g.dtype in _HALF)):
                    return None      # no layout of lrcore.lowp: the per-param path names it
                out.append(_view(g if g.is_contiguous() else g.contiguous()))
            return out
        try:
            arrays = [g.numpy() for g in grads]
            if all(a.flags.c_contiguous for a in arrays):
                return arrays  # dtype and size are checked by StepPlan.run
        except (RuntimeError, TypeError, ValueError):
            pass
        owner = type(self).__name__
        out = []
        for p, g in zip(params, grads):
            if g.layout != torch.strided:
                raise RuntimeError(f"{owner} does not support sparse gradients (the grad of "
                                   f"a {_describe(p)} param has layout {g.layout})")
            if g.dtype != p.dtype or g.device.type != "cpu" or g.shape != p.shape:
                raise TypeError(f"{owner}: a grad is {_describe(g)} but its param is "
                                f"{_describe(p)}; grads must match their param's dtype, "
                                f"shape and device")
            if g.requires_grad:
                g = g.detach()
            if not g.is_contiguous():
                g = g.contiguous()  # grads are only read: a copy is fine
            out.append(g.numpy())
        return out

    def _signature(self, params, gidx, needs):
        """What a plan depends on: which params (and their groups, storage and strides: a
        `p.data = p.data.t()` keeps the storage but not the layout the plan was checked for)
        and the identity of every tensor in their state; any change means a rebuild."""
        get = self.state.get
        empty = {}
        return (tuple(map(id, params)), tuple(gidx), tuple(needs),
                [(p.data_ptr(), p.stride()) for p in params],
                [id(t) for p in params for t in get(p, empty).values()])

    def _lrcore_step(self):
        owner = type(self).__name__
        params, grads, gidx = self._collect()
        if not params:
            return
        # the one-call plan takes float32/float64 params, grads and state of one dtype, and
        # (compiled backend) the layouts of lrcore.lowp without 8-bit state: the latter's
        # grads are checked by StepPlan.run against each param's layout
        sd = self._lrcore_state_dtype
        lowp_mode = (sd is not None and not (sd == "float32" and all(p.dtype == torch.float32
                                                                   for p in params))) or any(
            p.dtype not in _DTYPES or g.dtype != p.dtype for p, g in zip(params, grads))
        if lowp_mode and (sd == "int8" or lrcore_backend.name != "native" or any(
                p.dtype not in _DTYPES and p.dtype not in _HALF for p in params)):
            self._lrcore_step_each(params, grads, gidx)
            return
        grad_arrays = self._grad_arrays(params, grads, lowp_mode) if lowp_mode else None
        if lowp_mode and grad_arrays is None:
            self._lrcore_step_each(params, grads, gidx)
            return
        groups = self.param_groups
        needs = [tuple(self._needs(g)) for g in groups]
        sig = self._signature(params, gidx, needs)
        cache = getattr(self, "_lrcore_cache", None)
        state = self.state
        rebuild = cache is None or cache.signature != sig or cache.lowp != lowp_mode
        if self._has_step:
            if not rebuild:
                steps = [v.item() for v in cache.step_views]
                rebuild = steps != cache.expected_steps
            if rebuild:
                steps = []
                for p in params:
                    st = state.get(p)
                    s = st.get("step") if st else None
                    taken = 0.0 if s is None else _whole_step(s)
                    if taken is None:   # nothing has changed so far
                        raise ValueError(f"{owner}: state['step'] of a {_describe(p)} param "
                                         f"is {_got(s)}; expected a whole number >= 0")
                    steps.append(taken)
        else:
            steps = None
        scalars = self._scalar_keys(params)   # NAdam's mu_product per param, else None
        if scalars is not None and not rebuild:
            rebuild = scalars != cache.expected_scalars
        # -- checks: nothing has changed so far --------------------------------------------
        if rebuild:
            where = {id(p): (gi, k) for gi, g in enumerate(groups)
                     for k, p in enumerate(g["params"])}
            for p in params:
                self._check_param(*where[id(p)], p)
            group_of, representative, keys = [], [], {}
            for i, (p, gi) in enumerate(zip(params, gidx)):
                if self._has_step:
                    key = (gi, steps[i]) + ((scalars[i],) if scalars is not None else ())
                else:  # SGD: is the momentum buffer created by this step?
                    st = state.get(p)
                    key = (gi, "momentum_buffer" in needs[gi] and
                           (st is None or st.get("momentum_buffer") is None))
                if key not in keys:
                    keys[key] = len(representative)
                    representative.append(i)
                group_of.append(keys[key])
        else:
            group_of, representative = cache.group_of, cache.representative
        if not lowp_mode:
            grad_arrays = self._grad_arrays(params, grads)
        hps = []
        for r in representative:
            group = groups[gidx[r]]
            if self._has_step:
                taken = int(steps[r])
                values = self._hyper(group, taken, False)
                values.update(self._next_scalars(params[r], values))
                hps.append(values)
            else:
                first = "momentum_buffer" in needs[gidx[r]] and (
                    state.get(params[r]) is None or
                    state[params[r]].get("momentum_buffer") is None)
                taken = self._group_steps(gidx[r], group, owner)
                hps.append(self._hyper(group, taken, first))
        # -- state and plan ----------------------------------------------------------------
        if rebuild:
            cache = self._rebuild(params, gidx, needs, group_of, representative, lowp_mode)
            cache.signature = self._signature(params, gidx, needs)
        by_name = [{k: x for k, x in v.items() if k[0] != "_"} for v in hps]
        if lowp_mode:
            try:
                cache.plan.run(grad_arrays, by_name, 1.0, self.num_threads, False,
                               self._lrcore_rounding, self._lrcore_seed)
            except TypeError:
                # a grad the plan does not take as it is (checked before anything is
                # written): the per-param path takes it or names it
                self._lrcore_cache = None
                self._lrcore_step_each(params, grads, gidx)
                return
        else:
            cache.plan.run(grad_arrays, by_name, 1.0, self.num_threads, False)
        if scalars is not None:
            self._store_scalars(params, [hps[k] for k in group_of])
            cache.expected_scalars = self._scalar_keys(params)
        # -- bookkeeping: torch's step counts ----------------------------------------------
        if self._has_step:
            # torch's `step_t += 1`, written through the cached numpy views (far cheaper
            # than a tensor op per param)
            expected = [s + 1.0 for s in steps]
            for view, value in zip(cache.step_views, expected):
                view[()] = value
            cache.expected_steps = [v.item() for v in cache.step_views]
        else:
            # hps are recomputed every step from the state, so a cached plan whose groups
            # were split by "buffer created by this step" stays valid once buffers exist
            for gi in set(gidx):
                groups[gi]["lrcore_steps"] = self._group_steps(gi, groups[gi], owner) + 1
        self._lrcore_cache = cache

    # -- half precision and 8-bit state: the kernel once per param -------------------------

    def _lrcore_layout(self, where, p):
        return precision.layout(type(self).__name__, where, self._rule, _Shape(p),
                                self._lrcore_state_dtype)

    def _lrcore_expected(self, lay, p, name):
        """{state key: (shape, torch dtype)} of state buffer `name` (a torch name)."""
        lname = self._lrcore_names[name]
        out = {}
        for key, (shape, dtype) in precision.spec(lay, _Shape(p), lname).items():
            tkey = name + key[len(lname):]
            out[tkey] = (shape, torch.uint8 if dtype == np.uint8 else _torch_dtype(dtype))
        return out

    def _lrcore_offsets(self):
        """index_offset of every param (by id): its place in the concatenation of all groups'
        params, in order (as lrcore.optim numbers its params)."""
        out, total = {}, 0
        for group in self.param_groups:
            for p in group["params"]:
                out[id(p)] = total
                total += p.numel()
        return out

    def _lrcore_step_each(self, params, grads, gidx):
        """One step of params whose layout is not all float32 / float64 (or whose grads are
        half precision): everything is checked, missing state created (undone on failure),
        then each param's kernel runs (lrcore.optim.precision.run)."""
        owner = type(self).__name__
        where = f"{owner}.step()"
        groups = self.param_groups
        state = self.state
        places = {id(p): (gi, k) for gi, g in enumerate(groups) for k, p in enumerate(g["params"])}
        layouts, g_arrays, steps, hps = [], [], [], []
        for i, (p, g, gi) in enumerate(zip(params, grads, gidx)):
            self._check_param(*places[id(p)], p)
            pname = f"param_groups[{places[id(p)][0]}]['params'][{places[id(p)][1]}]"
            lay = self._lrcore_layout(f"{pname} ({_describe(p)})", p)
            if g.layout != torch.strided:
                raise RuntimeError(f"{owner} does not support sparse gradients (the grad of "
                                   f"a {_describe(p)} param has layout {g.layout})")
            if g.device.type != "cpu" or g.shape != p.shape or \
                    (g.dtype not in _DTYPES and g.dtype not in _HALF):
                raise TypeError(f"{owner}: a grad is {_describe(g)} but its param is "
                                f"{_describe(p)}; grads must have their param's shape and "
                                f"device, and a dtype of a supported layout: "
                                f"{lowp.layouts_text()}")
            ga = _view(g if g.is_contiguous() else g.contiguous())
            precision.check_grad(where, i, lay, ga, p.numel(), name=f"the .grad of {pname}")
            layouts.append(lay)
            g_arrays.append(ga)
            st = state.get(p) or {}
            group = groups[gi]
            if self._has_step:
                s = st.get("step")
                taken = 0.0 if s is None else _whole_step(s)
                if taken is None:
                    raise ValueError(f"{owner}: state['step'] of a {_describe(p)} param is "
                                     f"{_got(s)}; expected a whole number >= 0")
                values = self._hyper(group, int(taken), False)
                values.update(self._next_scalars(p, values))
            else:
                first = "momentum_buffer" in self._needs(group) and \
                    st.get("momentum_buffer") is None and \
                    st.get("momentum_buffer.codes") is None
                values = self._hyper(group, self._group_steps(gi, group, owner), first)
            steps.append(values["step"])
            hps.append(values)
        for i, (p, lay) in enumerate(zip(params, layouts)):
            st = state.get(p) or {}
            for name in self._needs(groups[gidx[i]]):
                for key, (shape, dtype) in self._lrcore_expected(lay, p, name).items():
                    t = st.get(key)
                    if t is not None and (not isinstance(t, torch.Tensor) or t.dtype != dtype
                                          or t.device.type != "cpu"
                                          or tuple(t.shape) != shape):
                        raise ValueError(
                            f"{owner}: state[{key!r}] of a {_describe(p)} param is "
                            f"{_describe(t) if isinstance(t, torch.Tensor) else repr(t)}; "
                            f"expected {str(dtype).replace('torch.', '')} {shape} on cpu "
                            f"(state_dtype={self._lrcore_state_dtype!r})")
        created = []
        try:
            arrays = []
            for i, (p, lay) in enumerate(zip(params, layouts)):
                arrays.append(self._lrcore_state_arrays(p, lay, groups[gidx[i]], created))
            extents = precision.extents(where, [_view(p) for p in params], arrays)
            precision.check_grad_memory(where, g_arrays, extents)
        except Exception:
            self._lrcore_undo(params, created)
            raise
        offsets = self._lrcore_offsets()
        slots = tuple(s.name for s in self._rule.states)
        for p, g, lay, bufs, values in zip(params, g_arrays, layouts, arrays, hps):
            values = {k: x for k, x in values.items() if k[0] != "_"}
            precision.run(self._kind, lay, _view(p), g, bufs, slots, values,
                          rounding=self._lrcore_rounding, seed=self._lrcore_seed,
                          index_offset=offsets[id(p)], num_threads=self.num_threads)
        if self._rule.scalar_states:
            self._store_scalars(params, hps)
        if self._has_step:
            for p, t in zip(params, steps):
                state[p]["step"].fill_(float(t))
        else:
            for gi in set(gidx):
                groups[gi]["lrcore_steps"] = self._group_steps(gi, groups[gi], owner) + 1
        self._lrcore_cache = None

    def _lrcore_undo(self, params, created):
        """Remove the state a failed step created ((state dict, key) pairs in `created`)."""
        for st, name in created:
            st.pop(name, None)
        for p in params:
            if p in self.state and not self.state[p]:
                del self.state[p]

    def _lrcore_state_arrays(self, p, lay, group, created):
        """{lrcore state name: numpy view or QuantizedState over the state tensors} of one
        param, creating what is missing (recorded in `created`)."""
        st = self.state[p]
        if self._has_step and st.get("step") is None:
            st["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
            created.append((st, "step"))
        for name in self._rule.scalar_states:
            if st.get(name) is None:
                st[name] = torch.ones((), dtype=_scalar_dtype())
                created.append((st, name))
        out = {}
        for name in self._needs(group):
            lname = self._lrcore_names[name]
            if name in st or name + ".codes" in st:
                pass
            else:
                value = self._initial_value(name)
                buf = precision.new_state(lay, lname, _Shape(p), value)
                if isinstance(buf, quantization.QuantizedState):
                    st[name + ".codes"] = torch.from_numpy(buf.codes)
                    st[name + ".absmax"] = torch.from_numpy(buf.absmax)
                    created += [(st, name + ".codes"), (st, name + ".absmax")]
                else:
                    st[name] = torch.full(p.shape, value, dtype=_torch_dtype(lay.state))
                    created.append((st, name))
            if lname in lay.quantized:
                out[lname] = quantization.QuantizedState(
                    _view(st[name + ".codes"]), _view(st[name + ".absmax"]),
                    lay.quantized[lname])
            else:
                t = st[name]
                if not t.is_contiguous():
                    st[name] = t = t.contiguous()
                out[lname] = _view(t)
        return out

    def _rebuild(self, params, gidx, needs, group_of, representative, lowp_mode=False):
        """Create missing state (as torch would) and a new StepPlan; undo on failure.
        lowp_mode: each param's state in its layout's dtype (lrcore.optim.precision), the
        plan one of lrcore.lowp's layouts with each param's index_offset."""
        state = self.state
        created = []
        owner = type(self).__name__
        try:
            places = {id(p): (gi, k) for gi, g in enumerate(self.param_groups)
                      for k, p in enumerate(g["params"])}
            state_dtype = {}
            for p in params:   # the layout of each param (TypeError naming it if none)
                if lowp_mode:
                    gi, k = places[id(p)]
                    lay = self._lrcore_layout(
                        f"param_groups[{gi}]['params'][{k}] ({_describe(p)})", p)
                    state_dtype[id(p)] = _torch_dtype(lay.state)
                else:
                    state_dtype[id(p)] = p.dtype
            for p, gi in zip(params, gidx):
                if not self._has_step and not needs[gi]:
                    continue  # like torch: SGD without momentum keeps no state
                st = state[p]
                group = self.param_groups[gi]
                if self._has_step:
                    s = st.get("step")
                    if s is None:
                        st["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
                        created.append((st, "step"))
                    elif not isinstance(s, torch.Tensor) or s.device.type != "cpu" \
                            or s.numel() != 1:
                        st["step"] = torch.tensor(float(s), dtype=_scalar_dtype())
                for name in self._rule.scalar_states:   # torch.ones((), scalar dtype)
                    if st.get(name) is None:
                        st[name] = torch.ones((), dtype=_scalar_dtype())
                        created.append((st, name))
                sdt = state_dtype[id(p)]
                for name in needs[gi]:
                    t = st.get(name)
                    if t is None:
                        # a layout's state dtype: filled as the per-param path fills it
                        st[name] = (self._new_state(name, p, group) if not lowp_mode else
                                    torch.full(p.shape, self._initial_value(name), dtype=sdt))
                        created.append((st, name))
                    elif not isinstance(t, torch.Tensor) or t.dtype != sdt or \
                            t.device.type != "cpu" or t.shape != p.shape:
                        raise ValueError(
                            f"{owner}: state[{name!r}] of a {_describe(p)} "
                            f"param is {_describe(t) if isinstance(t, torch.Tensor) else t!r}; "
                            f"expected {str(sdt).replace('torch.', '')} of the param's shape "
                            f"on cpu" + (f" (state_dtype={self._lrcore_state_dtype!r})"
                                         if lowp_mode else ""))
                    elif not t.is_contiguous():
                        st[name] = t.contiguous()
            cache = _Cache()
            p_arrays, s_arrays, tensors = [], [], []
            for p, gi in zip(params, gidx):
                st = state.get(p, {})
                p_arrays.append(_view(p))
                slots = [_view(st[name]) if name in needs[gi] else None
                         for name in self._slots]
                s_arrays.append(tuple(slots) + (None,) * (3 - len(slots)))
                tensors.append((p, [st.get(name) for name in needs[gi]]))
            offsets = self._lrcore_offsets() if lowp_mode else None
            cache.plan = lrcore_optim.plan_class()(
                self._kind, p_arrays, s_arrays, list(group_of),
                *([[offsets[id(p)] for p in params]] if lowp_mode else []))
            cache.lowp = lowp_mode
        except Exception:
            self._lrcore_undo(params, created)
            self._lrcore_cache = None
            raise
        cache.tensors = tensors  # keeps every viewed tensor alive with the plan
        cache.group_of = group_of
        cache.representative = representative
        if self._has_step:
            cache.step_tensors = [state[p]["step"] for p in params]
            cache.step_views = [t.numpy() for t in cache.step_tensors]
        else:
            cache.step_tensors = cache.step_views = ()
        cache.expected_steps = None
        cache.expected_scalars = None
        return cache

    def state_nbytes(self):
        """Bytes of optimizer state held now, as lrcore.optim's state_nbytes(): every state
        buffer of the rule in `self.state` (8-bit ones as `<name>.codes` plus
        `<name>.absmax`), not the params, not `step` and not a per-param scalar (NAdam's
        mu_product, which lrcore.optim keeps per group)."""
        with self._lrcore_lock:
            keys = {name + part for name in self._slots for part in ("", ".codes", ".absmax")}
            return sum(t.numel() * t.element_size() for st in self.state.values()
                       for key, t in st.items()
                       if key in keys and isinstance(t, torch.Tensor))

    def state_dict(self):
        """torch's state_dict, with lrcore schedules stored as plain data (a dict of their
        config, state and repr), so that `torch.load(path)` reads it under torch's default
        weights_only=True."""
        sd = super().state_dict()
        sd["param_groups"] = [_to_data(g) for g in sd["param_groups"]]
        return sd

    def load_state_dict(self, state_dict):
        """torch's load_state_dict; lrcore schedules stored in the groups come back as they
        were saved (checked before anything changes). The cached plan is rebuilt at the
        next step. As in torch, the load_state_dict pre-hooks see (and may replace) the
        state dict first, so lrcore checks what they return; the post-hooks run last, on
        the optimizer as loaded (schedules and state dtypes included)."""
        owner = type(self).__name__
        with self._lrcore_lock:
            state_dict = state_dict.copy()   # torch's shallow copy, then its pre-hooks
            pre_hooks = self._optimizer_load_state_dict_pre_hooks
            post_hooks = self._optimizer_load_state_dict_post_hooks
            for pre_hook in pre_hooks.values():
                result = pre_hook(self, state_dict)
                if result is not None:
                    state_dict = result
            try:
                saved = state_dict["param_groups"]
                groups = [_from_data(owner, g, group,
                                     self.param_groups[g] if g < len(self.param_groups)
                                     else None)
                          for g, group in enumerate(saved)]
            except (KeyError, TypeError, AttributeError):
                groups = None   # torch's own checks report it
            if not self._has_step:
                for g, group in enumerate(groups or ()):
                    if "lrcore_steps" in group:
                        self._group_steps(g, group, f"{owner}.load_state_dict()")
            try:
                same_sizes = groups is not None and [len(g["params"]) for g in groups] == \
                    [len(g["params"]) for g in self.param_groups]
            except (KeyError, TypeError):
                same_sizes = False   # torch's own checks report it
            if same_sizes:
                # the saved hyperparameters as the next step would check them (else torch's
                # own check reports the groups' sizes)
                for g, group in enumerate(groups):
                    try:
                        self._flags(group)
                        self._check_group(group, g)
                    except (TypeError, ValueError, NotImplementedError) as e:
                        msg = str(e)
                        msg = msg[len(owner) + 2:] if msg.startswith(owner + ": ") else msg
                        raise type(e)(f"{owner}.load_state_dict(): param_groups[{g}]: "
                                      f"{msg}") from None
            kept = self._lrcore_kept_state(state_dict, groups)
            if groups is not None:
                state_dict = dict(state_dict, param_groups=groups)
            live = [dict(g) for g in self.param_groups]
            # torch's load without the hooks, which run here before and after it
            self._optimizer_load_state_dict_pre_hooks = type(pre_hooks)()
            self._optimizer_load_state_dict_post_hooks = type(post_hooks)()
            try:
                super().load_state_dict(state_dict)
            finally:
                self._optimizer_load_state_dict_pre_hooks = pre_hooks
                self._optimizer_load_state_dict_post_hooks = post_hooks
            # torch deep-copies the groups: put back the schedule objects themselves, and
            # (only now that the load passed) a live schedule with the same config keeps its
            # identity with the loaded state (a caller's ReduceOnPlateau, a Lambda)
            for g, (group, mine) in enumerate(zip(self.param_groups, groups or ())):
                for key, value in mine.items():
                    if key != "params" and hyperparams.schedules_in([value]):
                        group[key] = _adopt(value, live[g].get(key) if g < len(live)
                                            else None)
            for p, st in kept.items():   # in their own dtype, not cast to the param's
                self.state[p].update(st)
            self._lrcore_cache = None
            for post_hook in post_hooks.values():
                post_hook(self)

    def _lrcore_kept_state(self, state_dict, groups):
        """The saved state tensors of an optimizer with bfloat16/float16 params or a
        state_dtype, by param, checked against each param's layout (dtype, shape; 8-bit:
        codes and absmax of the right sizes, both present): ValueError otherwise, before
        anything changes. For float32/float64 optimizers torch's load casts the buffers (to
        the param's dtype, which they have). Per-param scalar state (the table's
        scalar_states: NAdam's mu_product) is kept in its own dtype for every optimizer,
        checked to be a 0-dim floating-point tensor.
        For every optimizer, a param's saved state that has a `step` must hold every
        buffer its group needs (the table's conditions on the saved group's options, e.g.
        max_exp_avg_sq with amsgrad): torch would fail at the next step, lrcore would
        otherwise start the missing buffer afresh; ValueError naming it instead."""
        owner = type(self).__name__
        params = [p for g in self.param_groups for p in g["params"]]
        try:
            ids = [i for g in state_dict["param_groups"] for i in g["params"]]
            gids = [k for k, g in enumerate(state_dict["param_groups"]) for _ in g["params"]]
            saved = state_dict["state"]
            saved.get
        except (KeyError, TypeError, AttributeError):
            return {}      # torch's own checks report it
        if groups is None or [len(g["params"]) for g in self.param_groups] != \
                [len(g["params"]) for g in groups]:
            return {}      # torch's own checks report it
        plain = self._lrcore_state_dtype is None and all(p.dtype in _DTYPES for p in params)
        out = {}
        for sid, p, gk in zip(ids, params, gids):
            st = saved.get(sid)
            where = f"{owner}.load_state_dict(): state of param {sid} ({_describe(p)})"
            if st is not None and not isinstance(st, dict):
                raise ValueError(f"{where} is {_got(st)}; expected a dict of state")
            if not st:
                continue
            if self._has_step and st.get("step") is not None and \
                    _whole_step(st["step"]) is None:
                raise ValueError(f"{where}: 'step' is {_got(st['step'])}; expected a whole "
                                 f"number >= 0 (a number or a one-element tensor)")
            needs = self._needs(groups[gk])
            if self._has_step and "step" in st:
                missing = [name for name in needs
                           if st.get(name) is None and
                           not (name + ".codes" in st or name + ".absmax" in st)]
                if missing:
                    raise ValueError(f"{where} has a step but no {missing[0]!r}; with the "
                                     f"saved group's options it holds {list(needs)}")
            # per-param scalar state (NAdam's float32 mu_product), like `step`, keeps its
            # dtype for every param dtype: torch would cast it to a bfloat16/float16/float64
            # param's dtype, and the next products would round differently
            keep = {}
            for name in self._rule.scalar_states:
                value = st.get(name)
                if value is None:
                    continue
                if not isinstance(value, torch.Tensor) or not value.is_floating_point() or \
                        value.dim() != 0:
                    got = _describe(value) if isinstance(value, torch.Tensor) else repr(value)
                    raise ValueError(f"{where}: {name!r} is {got}, expected a 0-dim "
                                     f"floating-point tensor (as torch.ones((), "
                                     f"dtype={_scalar_dtype()}))")
                keep[name] = value.detach().to("cpu").clone()
            if plain:
                # torch's load casts a floating state tensor to the param's dtype; what it
                # would load and the step refuse (or cast silently: an integer, bool or
                # complex tensor) is refused now, before anything changes
                shape = tuple(p.shape)
                for key, value in st.items():
                    name, dot, part = str(key).partition(".")
                    if name in self._slots and dot and part in ("codes", "absmax"):
                        raise ValueError(
                            f"{where} has {key!r} (8-bit state); with state_dtype=None and "
                            f"{str(p.dtype).replace('torch.', '')} params it holds "
                            f"{sorted(needs)} as {str(p.dtype).replace('torch.', '')} tensors")
                    if key not in self._slots or value is None:
                        continue    # (torch's SGD may hold momentum_buffer None)
                    if not isinstance(value, torch.Tensor) or \
                            value.layout != torch.strided or \
                            not value.is_floating_point() or tuple(value.shape) != shape:
                        raise ValueError(
                            f"{where}: {key!r} is {_got(value)}, expected a floating-point "
                            f"tensor of the param's shape {shape} (loaded as "
                            f"{str(p.dtype).replace('torch.', '')}, as torch does)")
                if keep:
                    out[p] = keep
                continue
            lay = self._lrcore_layout(where, p)
            expected = {}
            for name in self._slots:
                expected.update(self._lrcore_expected(lay, p, name))
            holds = sorted(k for name in needs for k in self._lrcore_expected(lay, p, name))
            for key, value in st.items():
                if key == "step" or key in self._rule.scalar_states or value is None:
                    continue        # (torch's SGD may hold momentum_buffer None)
                if key not in expected:
                    raise ValueError(f"{where} has {key!r}; with state_dtype="
                                     f"{self._lrcore_state_dtype!r} it holds {holds}")
                shape, dtype = expected[key]
                if not isinstance(value, torch.Tensor) or value.dtype != dtype or \
                        tuple(value.shape) != shape:
                    got = _describe(value) if isinstance(value, torch.Tensor) else repr(value)
                    raise ValueError(f"{where}: {key!r} is {got}, expected "
                                     f"{str(dtype).replace('torch.', '')} {shape}")
                keep[key] = value.detach().to("cpu").contiguous().clone()
                if key.endswith(".absmax"):   # (float32: checked above)
                    precision.check_absmax(key, keep[key].numpy(),
                                           lambda m, where=where: ValueError(f"{where}: {m}"))
            for name in lay.quantized:
                tname = next(s.torch_name for s in self._rule.states if s.name == name)
                if (tname + ".codes" in keep) != (tname + ".absmax" in keep):
                    raise ValueError(f"{where} has only one of {tname}.codes and "
                                     f"{tname}.absmax")
            out[p] = keep
        return out

    # lrcore's own attributes, which torch's __getstate__ (defaults, state, param_groups)
    # would drop from a pickle or deepcopy
    _PICKLED = ("num_threads", "_lrcore_state_dtype", "_lrcore_rounding", "_lrcore_seed",
                "_lrcore_schedules")

    def __getstate__(self):
        state = super().__getstate__()
        for key in self._PICKLED:
            if key in self.__dict__:
                state[key] = self.__dict__[key]
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("num_threads", None)
        self.__dict__.setdefault("_lrcore_schedules", {})
        self.__dict__.setdefault("_lrcore_state_dtype", None)
        self.__dict__.setdefault("_lrcore_rounding", "nearest")
        self.__dict__.setdefault("_lrcore_seed", 0)
        # torch's load_state_dict calls this while a load holds the lock: keep that lock
        # (a new one would let another thread's step run during the load)
        if "_lrcore_lock" not in self.__dict__:
            self.__dict__["_lrcore_lock"] = threading.RLock()
        self._lrcore_cache = None

    def __repr__(self):
        return f"lrcore.torch.{super().__repr__()}"


# ---------------------------------------------------------------------------------------
# The optimizers: one drop-in per class of lrcore.optim.CLASSES, made by _drop_in
# ---------------------------------------------------------------------------------------
# A new row of the table (with its lrcore.optim class) gets its drop-in here without an
# edit: the torch class named by the row (or preset), its constructor's signature, the
# row's hyperparameters and states. Only behaviour that no row can say lives below, in
# _OVERRIDES, keyed by optimizer name.

class _SGDOverrides:
    """SGD: torch keeps no per-param step; schedules are evaluated at the group's
    lrcore_steps; nesterov needs momentum > 0 and dampening = 0 at every step."""
    _has_step = False
    _doc = ('Schedules are evaluated at group["lrcore_steps"], the group\'s count of steps '
            'taken.')

    def _hyper(self, group, step, first):
        values = super()._hyper(group, step, first)
        if values["nesterov"] and (values["momentum"] <= 0 or values["dampening"] != 0):
            raise ValueError(f"{type(self).__name__}: nesterov requires momentum > 0 and "
                             f"dampening = 0, got momentum={values['momentum']!r}, "
                             f"dampening={values['dampening']!r}")
        return values


class _NAdamOverrides:
    """NAdam: torch's per-param scalar state mu_product."""
    _doc = ('state["mu_product"] is torch\'s 0-dim tensor, multiplied by each step\'s mu as '
            'torch does (in its dtype) and handed to the kernel; load_state_dict keeps its '
            'dtype (torch\'s scalar dtype, float32), whatever the param\'s.')

    def _mu_product(self, p):
        st = self.state.get(p)
        t = st.get("mu_product") if st else None
        return torch.ones((), dtype=_scalar_dtype()) if t is None else t

    def _scalar_keys(self, params):
        return [(self._mu_product(p).item(), self._mu_product(p).dtype) for p in params]

    def _next_scalars(self, p, values):
        # torch: mu = beta1 * (1 - 0.5 * 0.96 ** (step * momentum_decay)); mu_product *= mu
        mu = values["beta1"] * (1.0 - 0.5 * (0.96 ** (float(values["step"]) *
                                                   values["momentum_decay"])))
        new = self._mu_product(p) * mu
        return {"mu_product": new.item(), "_mu_product_tensor": new}

    def _store_scalars(self, params, values):
        for p, v in zip(params, values):
            self.state[p]["mu_product"].copy_(v["_mu_product_tensor"])


_OVERRIDES = {"sgd": _SGDOverrides, "nadam": _NAdamOverrides}


def _without_self(sig):
    return sig.replace(parameters=list(sig.parameters.values())[1:])


def _torch_base(name, lrcore_cls):
    """The torch.optim.Optimizer that torch lacks for a rule (Lion): the lrcore.optim
    class's constructor (names, order, defaults) without num_threads; every argument is a
    default of the param groups."""
    sig = inspect.signature(lrcore_cls.__init__)
    sig = sig.replace(parameters=[p for p in sig.parameters.values()
                                  if p.name not in _LRCORE_ONLY])

    def __init__(self, *args, **kwargs):
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        del values["self"]
        params = values.pop("params")
        torch.optim.Optimizer.__init__(self, params, values)

    __init__.__signature__ = sig
    __init__.__qualname__ = f"_Torch{name}.__init__"
    return type(f"_Torch{name}", (torch.optim.Optimizer,),
                {"__init__": __init__, "__module__": __name__,
                 "__doc__": f"The torch.optim.Optimizer that torch lacks for {name}: "
                            f"lrcore.optim.{name}'s constructor and groups."})


# lrcore's own keyword-only constructor arguments (after torch's), with their defaults
_LRCORE_ONLY = {"num_threads": None, "state_dtype": None, "rounding": "nearest", "seed": 0}


def _drop_in(key, lrcore_cls):
    """The lrcore.torch class for lrcore.optim.CLASSES[key]: a subclass of the torch.optim
    class the table names (rules.PRESETS[key].torch_class), or of _torch_base when torch
    has none, with torch's constructor plus num_threads. The arguments that are the row's
    real hyperparameters (betas for beta1/beta2, through the row's torch_hypers) may be
    lrcore schedules; every other argument (flags, options) is passed to torch as given."""
    name = lrcore_cls.__name__
    rule = lrcore_cls.rule
    torch_name = rules.PRESETS[key].torch_class
    torch_cls = getattr(torch.optim, torch_name) if torch_name else _torch_base(name, lrcore_cls)
    numeric = {h.name for h in rule.hypers if h.ctype == "double"}
    numeric |= {rule.torch_hypers[n].split("[")[0] for n in list(numeric)
                if n in rule.torch_hypers}
    base_sig = inspect.signature(torch_cls.__init__)
    plist = list(base_sig.parameters.values())
    clash = set(_LRCORE_ONLY) & set(base_sig.parameters)
    if clash:
        raise TypeError(f"torch.optim.{torch_name}'s constructor already has {sorted(clash)}")
    ours = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d)
            for n, d in _LRCORE_ONLY.items()]
    at = next((i for i, p in enumerate(plist) if p.kind == p.VAR_KEYWORD), len(plist))
    sig = base_sig.replace(parameters=plist[:at] + ours + plist[at:])

    def __init__(self, *args, **kwargs):
        try:
            bound = sig.bind(self, *args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{type(self).__name__}.__init__() {e}") from None
        bound.apply_defaults()
        args, flags, options = {}, {}, {}
        params = None
        for pname, value in bound.arguments.items():
            kind = sig.parameters[pname].kind
            if pname == "self":
                continue
            if pname == "params":
                params = value
            elif pname in _LRCORE_ONLY:
                options[pname] = value
            elif kind == inspect.Parameter.VAR_KEYWORD:
                flags.update(value)
            elif kind == inspect.Parameter.VAR_POSITIONAL:
                raise TypeError(f"{name}: torch.optim.{torch_name}'s *{pname} is not supported")
            elif pname in numeric:
                args[pname] = value
            else:
                flags[pname] = value
        num_threads = options.pop("num_threads")
        self._lrcore_init(torch_cls, params, args, flags, num_threads, options)

    __init__.__signature__ = sig
    __init__.__qualname__ = f"{name}.__init__"
    origin = "torch" if torch_name else "lrcore"
    __init__.__doc__ = (f"{origin}.optim.{name}'s arguments and defaults, checked by lrcore "
                        f"before torch sees them; num_threads caps lrcore's threads (None: "
                        f"lrcore's default); state_dtype (None, 'float32', 'bfloat16', "
                        f"'int8' or a torch dtype), rounding and seed as lrcore.optim.{name}'s.")
    override = _OVERRIDES.get(key)
    names = set(sig.parameters)
    ignored = [f for f in ("foreach", "fused") if f in names]
    refused = [f for f in ("capturable", "differentiable") if f in names]
    if torch_name:
        doc = (f"torch.optim.{torch_name} computed by lrcore (same arguments, defaults, state "
               f"and state_dict).")
    else:
        states = ", ".join(f"`{s.torch_name}`" for s in rule.states)
        doc = (f"{name} as a torch.optim.Optimizer computed by lrcore. torch.optim has no "
               f"{name}: the arguments and defaults are lrcore.optim.{name}'s; the state per "
               f"param is `step` and {states}, as in torch's other optimizers.")
    notes = []
    if ignored:
        notes.append(f"{' and '.join(ignored)} {'are' if len(ignored) > 1 else 'is'} accepted "
                     f"and ignored (kept in param_groups for torch);")
    if refused:
        notes.append(f"{'/'.join(refused)}=True raise{'s' if len(refused) == 1 else ''} "
                     f"NotImplementedError;")
    notes.append("num_threads (lrcore) caps the threads; state_dtype, rounding and seed "
                 "are lrcore.optim's (bfloat16/float16 params, bfloat16 or 8-bit state).")
    if override is not None:
        notes.append(override._doc)
    notes.append(f"The update rule is lrcore.optim.{name}'s, the table's row {rule.name!r}:")
    doc = textwrap.fill(doc, 88, replace_whitespace=False) + "\n\n" + \
        textwrap.fill(" ".join(notes), 88)
    bases = ((override,) if override else ()) + (_LrcoreOptimizer, torch_cls)
    return type(name, bases, {"__init__": __init__, "__doc__": doc, "__module__": __name__,
                              "__qualname__": name, "_rule": rule})


def _with_rule(cls):
    """Append the row's update (written once, in the table) to a class docstring."""
    body = "\n".join("    " + line if line else "" for line in cls._rule.math.splitlines())
    cls.__doc__ = cls.__doc__.rstrip() + "\n\n    Update:\n\n" + body + "\n"
    return cls


__all__ = []
for _key, _cls in lrcore_optim.CLASSES.items():
    globals()[_cls.__name__] = _with_rule(_drop_in(_key, _cls))
    __all__.append(_cls.__name__)
del _key, _cls
