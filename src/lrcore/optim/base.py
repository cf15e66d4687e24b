"""The Optimizer base class: parameter groups, hyperparameters, state buffers and the step.

Design: an optimizer owns its state buffers and one `StepPlan` (compiled, or the numpy
reference's twin) that applies a step to every parameter in one native call. What a
subclass is (kernel, hyperparameters and their ranges, state buffers and when they exist,
their initial values) comes from its row of the table, :data:`lrcore.rules.RULES`.
Hyperparameters are stored as given (numbers or schedules) and resolved once per step by
:mod:`lrcore.hyperparams`, the injector shared with lrcore.torch and the update task;
the update arithmetic lives only in the kernels. State-dict I/O is
:mod:`lrcore.optim.state_dict`.

Element types (issues 12, 13): params may be float32, float64, bfloat16 (ml_dtypes) or
float16 arrays, the state float32, bfloat16 or 8-bit (``state_dtype``), grads half precision
where :data:`lrcore.lowp.LAYOUTS` allows; :mod:`lrcore.optim.precision` decides each param's
layout at construction. An optimizer whose params and states are all float32 (or all
float64) steps through its StepPlan in one native call. Any other layout without 8-bit
state (or a step whose grads are half precision) also steps in one native call, through a
StepPlan of lrcore.lowp's layouts (compiled backend) whose job for each param is the
kernel's call with ``rounding``, ``seed`` and the param's ``index_offset`` (its place in the
concatenation of all params); 8-bit state, the numpy backend, or a grad that plan does not
take as it is call the kernel once per param with the same arguments, after checking every
grad: the same bits either way.
A step holds the optimizer's lock, so one optimizer stepped from several threads applies
whole steps one after another.
"""
import math
import numbers
import threading
from typing import NamedTuple

import numpy as np

from .. import backend, hyperparams
from ..schedules import Schedule
from . import params as _params
from . import precision
from . import state_dict as _io

__all__ = ["Optimizer", "Snapshot", "plan_class"]


def plan_class():
    """The StepPlan of the selected backend (lrcore.backend: the compiled core, or the numpy
    twin)."""
    return backend.StepPlan


def _owner_range(rule, name):
    return hyperparams.range_of(rule, name)


class Snapshot(NamedTuple):
    """What :meth:`Optimizer.snapshot` returns: the optimizer's state, by field."""
    step: int                # steps applied so far
    groups: list             # per group: hyperparameter name -> stored value
    params: list             # the parameter arrays, in order
    group_of: list           # per param: its group's index
    states: list             # per param: state buffer name -> the optimizer's own buffer
    momentum_started: list   # per group: SGD's momentum buffer holds a first step
    scalars: list            # per group: the rule's scalar state (NAdam's mu_product)
    options: dict = None     # state_dtype, rounding, seed


class Optimizer:
    """Base class. A subclass names its row of the table (``rule``) and the options fixed
    at construction (``fixed``); the rest is derived from the row when the class is made:

    - ``kernel``: the rule's name (the StepPlan kind);
    - ``numeric``: real hyperparameters a caller sets (numbers or schedules);
    - ``flags``: boolean hyperparameters changeable with set();
    - ``state_slots``: state buffer names in kernel order.
    """

    rule = None            # a lrcore.rules.Rule
    fixed = ()             # boolean options/flags fixed at construction (state layout)
    kernel = None
    numeric = ()
    flags = ()
    state_slots = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        rule = cls.rule
        if rule is None:
            return
        cls.kernel = rule.name
        cls.numeric = tuple(h.name for h in rule.hypers if h.public and h.ctype == "double"
                            and h.name not in rule.scalar_states)
        cls.flags = tuple(h.name for h in rule.hypers
                          if h.public and h.ctype == "int" and h.name not in cls.fixed)
        cls.state_slots = tuple(s.name for s in rule.states)

    def __init__(self, params, defaults, num_threads=None, *, state_dtype=None,
                 rounding="nearest", seed=0):
        owner = type(self).__name__
        self._state_dtype, self._rounding, self._seed = precision.check_options(
            owner, state_dtype, rounding, seed)
        if num_threads is not None and (isinstance(num_threads, bool)
                                        or not isinstance(num_threads, numbers.Integral)
                                        or num_threads < 1):
            raise ValueError(f"{owner}: num_threads must be an integer >= 1 or None, "
                             f"got {num_threads!r}")
        self.num_threads = num_threads
        self._lock = threading.RLock()
        self._step = 0
        self._groups = []
        self._params = []
        self._group_of = []
        for g, spec in enumerate(_params.groups(params, owner)):
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
        self._layouts = [precision.layout(owner, f"params[{i}]", self.rule, p,
                                          self._state_dtype)
                         for i, p in enumerate(self._params)]
        self._offsets = precision.offsets(self._params)
        self._plain = all(lay.plain for lay in self._layouts)
        self._extents = None
        self._built = False
        self._states = [dict() for _ in self._params]
        self._momentum_started = [False] * len(self._groups)
        self._scalars = [self._initial_scalars() for _ in self._groups]
        self._plan = None
        # layouts without 8-bit state on the compiled backend, and float32 optimizers given
        # half-precision grads: one StepPlan of lrcore.lowp's layouts over every param (built
        # at the step for the states in use)
        self._lowp_plan = self._lowp_key = None
        self._lowp_ok = (backend.name == "native"
                         and not any(lay.quantized for lay in self._layouts))
        self._ensure_state()
        self.last_grad_norm = None

    # -- construction ------------------------------------------------------------------

    def _check_params(self, owner):
        for i, p in enumerate(self._params):
            _params.check_param(i, p, owner, half=True)
        self._check_writeable(owner)

    def _check_writeable(self, owner):
        _params.check_writeable(self._params, owner)

    def _validated(self, group, owner, step=None):
        """Check a group's values; a schedule is checked at `step` (default: the next step)."""
        step = getattr(self, "_step", 0) if step is None else step
        out = {}
        for key, value in group.items():
            if key in self.numeric:
                out[key] = hyperparams.check(owner, key, value, _owner_range(self.rule, key),
                                             step)
            elif key in self.flags or key in self.fixed:
                if not isinstance(value, (bool, np.bool_)):
                    raise TypeError(f"{owner}: {key} must be True or False, got {value!r}")
                out[key] = bool(value)
            else:
                out[key] = value
        self._check_group(out, owner)
        precision.check_int8_group(owner, self.rule, out, getattr(self, "_state_dtype", None))
        return out

    def _check_group(self, group, owner):
        """Cross-field rules (subclasses)."""

    def _needs(self, group):
        """State buffers this group needs now: the rule's `when` conditions, a schedule
        counting as > 0 (a momentum schedule keeps its buffer)."""
        values = {k: (1.0 if isinstance(v, Schedule) else v) for k, v in group.items()}
        return tuple(s.name for s in self.rule.present_states(values))

    def _options(self):
        """The construction-time options that set initial state values (subclasses)."""
        return {}

    def _initial_scalars(self):
        """Per-group scalar state of the rule (NAdam's mu_product), before any step."""
        return {}

    def _next_scalars(self, g, values):
        """The group's scalar state for this step, given its hyperparameters (subclasses)."""
        return {}

    def _initial_state(self, name, i):
        """A new state buffer `name` of param i, at the row's initial value, in the param's
        state layout (an array of the state dtype, or 8-bit codes and absmax)."""
        state = next(s for s in self.rule.states if s.name == name)
        return precision.new_state(self._layouts[i], name, self._params[i],
                                   self.rule.initial_value(state, self._options()))

    def _ensure_state(self):
        """Allocate missing state buffers and (re)build the native plan (float32/float64
        optimizers) or the owned-memory map (others) if anything changed."""
        changed = not self._built
        for i, p in enumerate(self._params):
            for name in self._needs(self._groups[self._group_of[i]]):
                if name not in self._states[i]:
                    self._states[i][name] = self._initial_state(name, i)
                    changed = True
        if not changed:
            return
        self._extents = None
        if self._plain:
            states = [tuple(st.get(name) for name in self.state_slots) + (None,) *
                      (3 - len(self.state_slots)) for st in self._states]
            self._plan = plan_class()(self.kernel, list(self._params), states,
                                      list(self._group_of))
        else:      # the per-param path: its memory map now (the plan's checks)
            self._extents = self._owned_extents()
        self._built = True

    def _owned_extents(self):
        """Sorted (start, end, name) of every param and state buffer's memory; checks that
        no two share memory (the StepPlan's check, for the per-param path)."""
        return precision.extents(type(self).__name__, self._params, self._states)

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
        with self._lock:
            targets = range(len(self._groups)) if group is None else [group]
            if group is not None:
                self._check_group_index(group)
            for key in hyperparameters:
                if key in self.fixed:
                    raise ValueError(f"{owner}: {key} changes the optimizer's state layout "
                                     f"and is fixed at construction")
                if key not in self._groups[0]:
                    raise TypeError(f"{owner}: unknown hyperparameter {key!r}; expected one "
                                    f"of {sorted(k for k in self._groups[0] if k not in self.fixed)}")
            new = {g: self._validated(dict(self._groups[g], **hyperparameters), owner)
                   for g in targets}
            for g, group_values in new.items():
                self._groups[g] = group_values
            self._ensure_state()

    def report(self, metric):
        """Feed a metric (e.g. validation loss) to every ReduceOnPlateau hyperparameter,
        once per schedule object (groups share the constructor's default schedule). A
        one-element array or tensor (a 0-d loss) is read as its value, as
        ReduceOnPlateau.report reads it."""
        if hyperparams.is_scalar_tensor(metric):
            metric = metric.item()
        with self._lock:
            hyperparams.report(self._groups, metric)

    # -- the step ------------------------------------------------------------------------

    def _init_buffer(self, g, values):
        """SGD's first momentum step (subclasses): None elsewhere."""
        return None

    def _step_values(self, owner):
        """Every group's hyperparameters for this step, by name, validated (a schedule may
        leave its range at a later step)."""
        where = f"{owner}.step()"
        out = []
        for g, group in enumerate(self._groups):
            values = hyperparams.kernel_values(self.rule, where, group, self._step,
                                               checked_floats=True)
            if "init_buffer" in values:
                values["init_buffer"] = self._init_buffer(g, values)
            values.update(self._next_scalars(g, values))
            out.append(values)
        return out

    def step(self, grads, *, clip_norm=None, skip_nonfinite=False):
        """Apply one step with `grads` (one array, or a list in the order of the params).

        clip_norm: scale all grads by min(1, clip_norm / (total_norm + 1e-6)), total_norm the
        L2 norm over every grad (torch.nn.utils.clip_grad_norm_), inside the update: grads are
        not written. skip_nonfinite: if any grad holds NaN or Inf, change nothing and return
        False. Returns True when the step was applied.

        Every argument, hyperparameter and param (still writeable) is checked before
        anything changes. Steps from several threads on one optimizer are serialised.

        Half-precision grads (lrcore.lowp.LAYOUTS) or any param whose layout is not all
        float32 / all float64 take the path of those layouts (one call of lrcore.lowp's
        layouts, or with 8-bit state the kernel per param): there the norm is summed in float64
        and a clipped grad is a scaled copy (float32 for a float32 param; for a bfloat16 or
        float16 param, rounded to nearest in the grad's dtype, as torch's clip_grad_norm_
        writes it).
        """
        owner = type(self).__name__
        grads = _params.grad_list(grads, f"{owner}.step()")
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
        with self._lock:
            self._check_writeable(f"{owner}.step()")
            values = self._step_values(owner)
            if self._plain:
                try:
                    return self._step_plan(grads, values, clip_norm, skip_nonfinite)
                except TypeError:
                    # the plan takes grads of the param's dtype only (it checks them before
                    # it writes anything): other arrays go the per-param way, which runs
                    # half-precision grads and names the supported layouts for the rest
                    if not all(isinstance(g, np.ndarray) for g in grads):
                        raise
            return self._step_each(grads, values, clip_norm, skip_nonfinite, owner)

    def _scale(self, norm, clip_norm):
        # an overflowed (inf) norm scales to 0 as in torch; NaN stays NaN
        self.last_grad_norm = norm
        if clip_norm is None:
            return 1.0
        return math.nan if math.isnan(norm) else min(1.0, clip_norm / (norm + 1e-6))

    def _step_plan(self, grads, values, clip_norm, skip_nonfinite):
        """One native call over every buffer (float32 / float64 layouts)."""
        scale = 1.0
        checked = False
        if clip_norm is not None or skip_nonfinite:
            sumsq, finite = self._plan.grad_sumsq(grads, self.num_threads)
            checked = True
            scale = self._scale(math.sqrt(sumsq), clip_norm)
            if skip_nonfinite and not finite:
                return False
        # values by name: StepPlan.run packs each dict
        self._plan.run(grads, values, scale, self.num_threads, checked)
        self._after_step(values)
        self._step += 1
        return True

    def _step_each(self, grads, values, clip_norm, skip_nonfinite, owner):
        """A step of the half-precision or 8-bit layouts: one call of lrcore.lowp's layouts
        (_step_lowp_plan) where it applies, else the kernel once per param after every grad
        is checked against its param's layout and the optimizer's memory."""
        where = f"{owner}.step()"
        needs = [self._needs(group) for group in self._groups]
        # the plan checks every grad (count, layout, size, memory) before it writes
        # anything; whatever it refuses goes through the checks below, which name it
        if self._lowp_ok and clip_norm is None and not skip_nonfinite and \
                self._step_lowp_plan(needs, grads, values, (TypeError, ValueError)):
            return True
        if len(grads) != len(self._params):
            raise ValueError(f"{where}: got {len(grads)} grads for {len(self._params)} "
                             f"params; pass one grad per param, in the same order")
        for i, (g, p) in enumerate(zip(grads, self._params)):
            precision.check_grad(where, i, self._layouts[i], g, p.size)
        if self._extents is None:
            self._extents = self._owned_extents()
        precision.check_grad_memory(where, grads, self._extents)
        if clip_norm is not None or skip_nonfinite:
            sumsq, finite = precision.grad_sumsq(grads)
            scale = self._scale(math.sqrt(sumsq), clip_norm)
            if skip_nonfinite and not finite:
                return False
            if scale != 1.0:
                grads = [precision.scaled(g, scale, lay)
                         for g, lay in zip(grads, self._layouts)]
        # checked grads the plan still refuses (e.g. a view at an odd byte offset): the
        # kernel once per param
        if self._lowp_ok and self._step_lowp_plan(needs, grads, values, TypeError):
            return True
        for i, (p, g) in enumerate(zip(self._params, grads)):
            used = needs[self._group_of[i]]
            precision.run(self.kernel, self._layouts[i], p, g,
                          {k: v for k, v in self._states[i].items() if k in used},
                          self.state_slots, values[self._group_of[i]],
                          rounding=self._rounding, seed=self._seed,
                          index_offset=self._offsets[i], num_threads=self.num_threads)
        self._after_step(values)
        self._step += 1
        return True

    def _step_lowp_plan(self, needs, grads, values, refused):
        """One step in one call of :meth:`_lowp_plan_for`'s plan: True when it ran (the
        step's bookkeeping done), False when the plan raised one of `refused` (it checks
        everything before it writes: nothing changed)."""
        try:
            self._lowp_plan_for(needs).run(list(grads), values, 1.0, self.num_threads,
                                           False, self._rounding, self._seed)
        except refused:
            return False
        self._after_step(values)
        self._step += 1
        return True

    def _lowp_plan_for(self, needs):
        """The StepPlan (lrcore.lowp's layouts) over every param with the states the groups
        use now (``needs``: per group, the state names), as the per-param calls would pass
        them; rebuilt when those or the buffers change. Bitwise the per-param path's step:
        each param's job is lowp.kernel's call for it, at its index_offset."""
        states = []
        for i, st in enumerate(self._states):
            used = needs[self._group_of[i]]
            states.append(tuple(st.get(name) if name in used else None
                                for name in self.state_slots)
                          + (None,) * (3 - len(self.state_slots)))
        key = tuple(tuple(map(id, t)) for t in states)
        if self._lowp_plan is None or key != self._lowp_key:
            unused = [b for st, t in zip(self._states, states) for b in st.values()
                      if not any(b is x for x in t)]
            self._lowp_plan = plan_class()(self.kernel, list(self._params), states,
                                           list(self._group_of), list(self._offsets),
                                           unused)
            self._lowp_key = key
        return self._lowp_plan

    def _after_step(self, values):
        """Bookkeeping after a step landed: the groups' scalar state moves on."""
        if any(self._scalars):   # rules without scalar state (most) keep their empty dicts
            self._scalars = [{k: v[k] for k in s} for s, v in zip(self._scalars, values)]

    # -- snapshot and restore: the protocol lrcore.optim.state_dict builds on ------------

    @property
    def lock(self):
        """The lock every step, set() and load holds; hold it to keep other threads' steps
        out of a sequence of calls (e.g. a checkpoint's check, read and apply)."""
        return self._lock

    def snapshot(self):
        """Everything a state dict records, as this optimizer holds it now, without copies:
        a :class:`Snapshot`. Its groups hold the stored values (numbers, or the live
        schedule objects) and its states the optimizer's own buffers: read them, and change
        the optimizer only through :meth:`restore`."""
        with self._lock:
            return Snapshot(step=self._step,
                            groups=[dict(g) for g in self._groups],
                            params=list(self._params),
                            group_of=list(self._group_of),
                            states=[dict(st) for st in self._states],
                            momentum_started=list(self._momentum_started),
                            scalars=[dict(s) for s in self._scalars],
                            options=self.options)

    def validate_group(self, group, step):
        """``group`` (hyperparameter name -> number, flag or schedule) checked as the
        constructor and set() check it, schedules at ``step``: the validated dict, or
        TypeError/ValueError. Changes nothing."""
        return self._validated(group, type(self).__name__, step=step)

    def states_needed(self, group):
        """Names of the state buffers a group with these hyperparameters needs."""
        return self._needs(group)

    def state_spec(self, i, name):
        """{state-dict key: (shape, dtype)} of state buffer ``name`` of param i as this
        optimizer holds it: one array of the state dtype, or (8-bit state) its
        ``name.codes`` and ``name.absmax`` (lrcore.optim.precision)."""
        return precision.spec(self._layouts[i], self._params[i], name)

    @property
    def options(self):
        """The element-type options given at construction: {'state_dtype', 'rounding',
        'seed'} (rounding and seed are replaced by a loaded state dict's)."""
        return {"state_dtype": self._state_dtype, "rounding": self._rounding,
                "seed": self._seed}

    @property
    def state_dtype(self):
        """None, 'float32', 'bfloat16' or 'int8', as given at construction."""
        return self._state_dtype

    @property
    def rounding(self):
        """'nearest' or 'stochastic': how params and states narrower than float32 are
        rounded."""
        return self._rounding

    @property
    def seed(self):
        """The stochastic-rounding stream's seed (0..2**64-1)."""
        return self._seed

    def state_nbytes(self):
        """Bytes of optimizer state held now: every state buffer (8-bit ones as codes plus
        absmax), not the params."""
        with self._lock:
            return sum(precision.nbytes(st) for st in self._states)

    def initial_scalars(self):
        """The rule's per-group scalar state before any step (empty for most rules)."""
        return self._initial_scalars()

    def restore(self, step, groups, states, momentum_started, scalars, rounding=None,
                seed=None):
        """Install a state that passed every check (:func:`lrcore.optim.state_dict.check`):
        the step count, every group's validated hyperparameters, per param the state buffers
        by name (copied into the optimizer's own buffers; a buffer given that it lacks is
        taken as a copy, one it has that is not given returns to its initial value), the
        SGD momentum flags and the per-group scalar state; rounding and seed (checked)
        replace the optimizer's when given. States are by state-dict key (an 8-bit buffer as
        its ``.codes`` and ``.absmax``). Nothing here can fail on checked data, so a load is
        validate-then-apply."""
        with self._lock:
            self._groups = list(groups)
            for i, st in enumerate(states):
                live = self._states[i]
                given = {}
                for key, arr in st.items():
                    name, part = precision.split_key(key)
                    given.setdefault(name, {})[part] = arr
                for name, parts in given.items():
                    if name not in live:
                        live[name] = precision.adopt(self._layouts[i], name, parts)
                        self._built = False
                    else:
                        precision.copy_into(live[name], parts)
                for name, buf in live.items():
                    if name not in given:   # not in the state dict: back to its initial value
                        precision.copy_into(buf, precision.parts(self._initial_state(name, i)))
            if rounding is not None:
                self._rounding = rounding
            if seed is not None:
                self._seed = seed
            self._step = step
            self._momentum_started = list(momentum_started)
            self._scalars = [dict(s) for s in scalars]
            self._ensure_state()

    def state_dict(self):
        """A copy of everything needed to resume: step, hyperparameters (schedules as plain
        data with their state), flags, and copies (never views) of the state buffers."""
        with self._lock:
            return _io.build(self)

    def load_state_dict(self, state_dict):
        """Restore from state_dict(). Everything is checked first; a state dict that does
        not fit raises ValueError and changes nothing."""
        with self._lock:
            _io.check(self, state_dict).apply()

    def __repr__(self):
        lines = [f"{type(self).__name__}(step={self._step}, params={len(self._params)}, "
                 f"backend={backend.name}"]
        for g, group in enumerate(self._groups):
            items = ", ".join(f"{k}={v!r}" for k, v in group.items())
            lines.append(f"  group {g}: {items}")
        return "\n".join(lines) + ")"
