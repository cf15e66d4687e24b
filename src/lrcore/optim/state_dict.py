"""An optimizer's state dict: building it, and loading it as validate-then-apply.

:func:`check` reads a state dict against an optimizer and returns a :class:`Checked` that
holds everything the load will change (groups, step, state values, the SGD momentum
flags); only :meth:`Checked.apply` writes, and it cannot fail on the data, so a state
dict that does not fit raises ValueError and leaves the optimizer as it was.
Schedules travel as plain data (:func:`lrcore.hyperparams.to_data`).

Every state buffer keeps its dtype (float32, float64, bfloat16); an 8-bit buffer is two
arrays, ``"<name>.codes"`` (uint8) and ``"<name>.absmax"`` (float32), checked for dtype and
size against the optimizer (:meth:`~lrcore.optim.Optimizer.state_spec`). Version 2 adds
``state_dtype``, ``rounding`` and ``seed`` (loaded, so a resumed run draws the
stochastic-rounding bits of an uninterrupted one); version 1 dicts (float32 / float64 state
only) still load. The saved ``state_dtype`` must give every param the state layout the
optimizer's gives it (:func:`state_dtype_mismatch`): equal in meaning, not as written, so
None and "float32" (float32 or float16 params) or None and "bfloat16" (bfloat16 params) load
into each other.

This module sees an optimizer only through its public snapshot/restore protocol:
:meth:`~lrcore.optim.Optimizer.snapshot` (what to save and check against),
:meth:`~lrcore.optim.Optimizer.validate_group`, ``states_needed``, ``initial_scalars``
(the checks), and :meth:`~lrcore.optim.Optimizer.restore` (the apply).
"""
import numbers

import numpy as np

from .. import hyperparams, lowp
from . import precision

__all__ = ["FORMAT", "VERSION", "build", "check", "Checked", "state_dtype_mismatch"]

FORMAT = "lrcore.optimizer"
VERSION = 2
READS = (1, 2)


def build(opt):
    """state_dict() of ``opt``: plain data plus copies of the state buffers."""
    snap = opt.snapshot()
    groups = []
    for g, group in enumerate(snap.groups):
        hyper = {key: hyperparams.to_data(value) for key, value in group.items()}
        groups.append({"hyperparameters": hyper,
                       "params": [i for i, gi in enumerate(snap.group_of) if gi == g],
                       "momentum_started": snap.momentum_started[g],
                       "scalars": dict(snap.scalars[g])})
    return {
        "format": FORMAT, "version": VERSION,
        "optimizer": type(opt).__name__, "step": snap.step, "groups": groups,
        "params": [{"shape": list(p.shape), "dtype": p.dtype.name} for p in snap.params],
        "state_dtype": snap.options["state_dtype"], "rounding": snap.options["rounding"],
        "seed": snap.options["seed"],
        "state": [{k: v.copy() for k, v in precision.flat(st).items()} for st in snap.states],
    }


class Checked:
    """A state dict that fits ``opt``: :meth:`apply` installs it.

    ``states`` (per param, buffer name -> array) is what will be copied in; a caller that
    fills the buffers itself (lrcore.checkpoint reads a file into them) may replace an
    entry by an array of the same shape and dtype before :meth:`apply`."""

    def __init__(self, opt, live_groups, step, groups, states, started, scalars, options):
        self.opt, self.live_groups, self.step, self.groups = opt, live_groups, step, groups
        self.states, self.started, self.scalars = states, started, scalars
        self.options = options

    def apply(self):
        # a live schedule equal to the saved one is kept (its state loaded), so a caller's
        # own reference (e.g. to a ReduceOnPlateau) stays in use
        for g, group in enumerate(self.groups):
            for key, value in group.items():
                group[key] = hyperparams.adopt(value, self.live_groups[g][key])
        self.opt.restore(self.step, self.groups, self.states, self.started, self.scalars,
                         **self.options)


def check(opt, d):
    """Validate state dict ``d`` against ``opt`` (format, step, groups, hyperparameters,
    schedules, state buffers, writeable destinations); return a :class:`Checked`."""
    owner = type(opt).__name__

    def bad(msg):
        return ValueError(f"{owner}.load_state_dict(): {msg}")
    try:
        snap = opt.snapshot()
        live_groups, params, group_of = snap.groups, snap.params, snap.group_of
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise bad("not an lrcore optimizer state dict (format key missing or wrong)")
        version = d.get("version")
        if isinstance(version, bool) or version not in READS:
            raise bad(f"format version {version!r} is not supported "
                      f"(this lrcore reads versions {', '.join(map(str, READS))})")
        options = _options(opt, d, version, bad)
        if d.get("optimizer") != owner:
            raise bad(f"the state dict is for {d.get('optimizer')!r}, not {owner!r}")
        step = d.get("step")
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0 \
                or step >= 2 ** 53:
            raise bad(f"step must be an integer in [0, 2**53), got {step!r}")
        step = int(step)
        if len(d.get("groups", ())) != len(live_groups):
            raise bad(f"it has {len(d.get('groups', ()))} parameter groups, this optimizer "
                      f"has {len(live_groups)}")
        if len(d.get("params", ())) != len(params):
            raise bad(f"it has {len(d.get('params', ()))} parameters, this optimizer has "
                      f"{len(params)}")
        for i, (info, p) in enumerate(zip(d["params"], params)):
            if tuple(info.get("shape", ())) != p.shape or info.get("dtype") != p.dtype.name:
                raise bad(f"params[{i}] was {info.get('dtype')} "
                          f"{tuple(info.get('shape', ()))}, is {p.dtype.name} {p.shape}")
        if version != 1:
            mismatch = state_dtype_mismatch(opt.rule, params, d.get("state_dtype"),
                                            opt.options["state_dtype"])
            if mismatch:
                raise bad(mismatch)
        for g, sg in enumerate(d["groups"]):
            mine = [i for i, gi in enumerate(group_of) if gi == g]
            if list(sg.get("params", ())) != mine:
                raise bad(f"group {g} holds params {sg.get('params')}, this optimizer's "
                          f"holds {mine}")
        new_groups = []
        for g, sg in enumerate(d["groups"]):
            hyper = dict(sg.get("hyperparameters", {}))
            if set(hyper) != set(live_groups[g]):
                raise bad(f"group {g} has hyperparameters {sorted(hyper)}, expected "
                          f"{sorted(live_groups[g])}")
            for key, value in hyper.items():
                if hyperparams.is_data(value):
                    try:
                        hyper[key] = hyperparams.from_data(f"group {g}", key, value,
                                                           live=live_groups[g][key])
                    except ValueError as exc:
                        raise bad(str(exc)) from None
            for key in opt.fixed:
                if hyper[key] != live_groups[g][key]:
                    raise bad(f"group {g} has {key}={hyper[key]}, this optimizer has "
                              f"{live_groups[g][key]}; {key} is fixed at construction")
            try:
                new_groups.append(opt.validate_group(hyper, step=step))
            except (TypeError, ValueError) as exc:
                raise bad(f"group {g}: {exc}") from None
        states = d.get("state", ())
        if len(states) != len(params):
            raise bad(f"it has state for {len(states)} parameters, expected "
                      f"{len(params)}")
        for i, (st, p) in enumerate(zip(states, params)):
            needed = set(opt.states_needed(new_groups[group_of[i]]))
            names = {precision.split_key(k)[0] for k in st}
            unknown = names - set(opt.state_slots)
            if unknown or not needed <= names:
                raise bad(f"params[{i}] state has buffers {sorted(names)}, expected "
                          f"{sorted(needed)}")
            for name in names:
                expected = opt.state_spec(i, name)
                if set(expected) != {k for k in st if precision.split_key(k)[0] == name}:
                    raise bad(f"params[{i}] state {name!r} has arrays "
                              f"{sorted(k for k in st if precision.split_key(k)[0] == name)}, "
                              f"expected {sorted(expected)}")
                for key, (shape, dtype) in expected.items():
                    arr = st[key]
                    if not isinstance(arr, np.ndarray) or arr.shape != shape \
                            or arr.dtype != dtype:
                        desc = (f"{_dname(arr.dtype)} {arr.shape}"
                                if isinstance(arr, np.ndarray) else type(arr).__name__)
                        raise bad(f"params[{i}] state {key!r} is {desc}, expected "
                                  f"{_dname(dtype)} {shape}")
                    precision.check_absmax(key, arr, lambda m, i=i: bad(f"params[{i}] state {m}"))
        started = []
        for g, sg in enumerate(d["groups"]):
            flag = sg.get("momentum_started", False)
            if not isinstance(flag, (bool, np.bool_)):
                raise bad(f"group {g} momentum_started must be True or False, got {flag!r}")
            started.append(bool(flag))
        scalars = []
        for g, sg in enumerate(d["groups"]):
            initial = opt.initial_scalars()
            saved = sg.get("scalars", initial if step == 0 or not initial else None)
            if not isinstance(saved, dict) or set(saved) != set(initial):
                raise bad(f"group {g} scalars must be {sorted(initial)} (the rule's per-group "
                          f"scalar state), got {saved!r}")
            out = {}
            for name, value in saved.items():
                try:
                    out[name] = hyperparams.check(
                        f"group {g} scalars", name, value,
                        hyperparams.range_of(opt.rule, name))
                except (TypeError, ValueError) as exc:
                    raise bad(str(exc)) from None
            scalars.append(out)
        for i, live in enumerate(snap.states):
            for name, buf in precision.flat(live).items():
                if not buf.flags.writeable:
                    raise bad(f"params[{i}] state {name!r} is read-only")
    except ValueError:
        raise
    except (TypeError, AttributeError, KeyError, IndexError) as exc:
        raise bad(f"malformed state dict ({type(exc).__name__}: {exc})") from None
    return Checked(opt, live_groups, step, new_groups, [dict(st) for st in states], started,
                   scalars, options)


def _dname(dt):
    return "bfloat16" if dt == lowp.bfloat16 else str(dt)


def _options(opt, d, version, bad):
    """rounding and seed to load (version 2; None: keep the optimizer's). The state dtype
    is checked by :func:`state_dtype_mismatch`, once the params are known to match."""
    if version == 1:
        return {"rounding": None, "seed": None}
    mine = opt.options
    try:
        _, rounding, seed = precision.check_options(
            "", mine["state_dtype"], d.get("rounding"), d.get("seed"))
    except (TypeError, ValueError) as exc:
        raise bad(str(exc).lstrip(": ")) from None
    return {"rounding": rounding, "seed": seed}


def _layout_text(lay):
    if not lay.quantized:
        return f"{_dname(lay.state)} state"
    return f"8-bit {', '.join(lay.quantized)} (other state {_dname(lay.state)})"


def state_dtype_mismatch(rule, params, saved, mine):
    """Why state saved with ``state_dtype=saved`` does not fit an optimizer of ``rule`` over
    ``params`` with ``state_dtype=mine`` (a message), or None if it fits.

    The two are compared by what they give each param, not as written: the dtype of its
    float state buffers and which of them are 8-bit (:func:`lrcore.optim.precision.layout`).
    None and "float32" give float32 and float16 params the same float32 state, None and
    "bfloat16" give bfloat16 params bfloat16 state: such a pair fits. A saved value that is
    not a state_dtype, or that gives some param another state (or none it can have), does
    not."""
    if (saved is None or isinstance(saved, str)) and saved == mine:
        return None
    fixed = "; state_dtype is fixed at construction"
    try:
        name = precision.state_dtype_name("", saved)
    except (TypeError, ValueError):
        return (f"the state dict has state_dtype={saved!r}, expected None, 'float32', "
                f"'bfloat16' or 'int8'")
    for i, p in enumerate(params):
        live = precision.layout("", f"params[{i}]", rule, p, mine)
        try:
            other = precision.layout("", f"params[{i}]", rule, p, name)
        except (TypeError, ValueError):
            other = None
        if other is None or (other.state, other.quantized) != (live.state, live.quantized):
            saved_text = ("cannot have that state" if other is None else
                          f"has {_layout_text(other)} in it")
            return (f"the state dict has state_dtype={saved!r}, this optimizer {mine!r}: "
                    f"params[{i}] ({_dname(p.dtype)} {p.shape}) {saved_text}, "
                    f"{_layout_text(live)} in this optimizer{fixed}")
    return None
