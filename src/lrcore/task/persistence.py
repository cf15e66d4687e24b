"""The update task's file format: what :meth:`UpdateTask.save` writes and
:meth:`UpdateTask.load` reads, on top of :mod:`lrcore.checkpoint`'s container.

Design: :func:`save` takes the task's pieces as plain values (optimizer, params, loop
parameters, position, sample order) and packs the optimizer with
:func:`lrcore.checkpoint.pack_optimizer`; :func:`read` checks every field of a file
(a malformed one raises :class:`~lrcore.checkpoint.CheckpointError`) and returns a
:class:`SavedTask` whose new optimizer is built over the destination arrays with the saved
state loaded. The destination arrays themselves are written only by
:meth:`SavedTask.restore_params`, straight from the still open file, as the last thing a
load does: a file that does not fit changes nothing.
"""
import dataclasses
import math
import numbers

import numpy as np

from .. import checkpoint
from .vocabulary import ParameterKey

__all__ = ["FORMAT", "FORMAT_VERSION", "SavedTask", "save", "read"]

FORMAT = "lrcore.update_task"
FORMAT_VERSION = 1
_POSITION = {"began", "epoch", "offset", "mini_batch", "loss_sum", "loss_count",
             "last_epoch_loss"}


def save(path, *, optimizer, params, loop, samples, position, order, state, meta):
    """Write a task's pieces to ``path`` atomically (``loop``: {ParameterKey: value};
    ``position``: the loop's counters; ``order``: this epoch's sample order or None)."""
    sd, state_names, arrays = checkpoint.pack_optimizer(optimizer)
    if len(params) != len(optimizer.params) or any(
            p is not q for p, q in zip(params, optimizer.params)):
        raise ValueError("UpdateTask.save(): the optimizer must be built over the task's "
                         "params, in the same order")
    for g, group in enumerate(sd["groups"]):
        for key, value in group["hyperparameters"].items():
            if isinstance(value, dict) and value.get("schedule") is None:
                raise ValueError(f"UpdateTask.save(): {key} of group {g} is "
                                 f"{value.get('repr')}, which cannot be stored in a file; "
                                 f"use a named schedule (lrcore.schedules.names())")
    if order is not None:
        arrays["order"] = order
    meta_out = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "optimizer": {"class": type(optimizer).__name__,
                      "num_threads": optimizer.num_threads,
                      "fixed": [{k: grp["hyperparameters"][k] for k in
                                 type(optimizer).fixed} for grp in sd["groups"]],
                      "state_dict": sd, "state_names": state_names},
        "loop": {k.name: v for k, v in loop.items()}, "samples": samples,
        "position": dict(position), "state": state.name, "user": meta,
    }
    checkpoint.write(path, arrays, meta_out)


@dataclasses.dataclass
class SavedTask:
    """A task file checked and decoded: the optimizer is built over ``params`` (the arrays to
    restore into) with the saved state loaded; ``params`` still hold their old values until
    :meth:`restore_params`, which reads them from the file (kept open until then)."""
    params: list
    optimizer: object
    loop: dict
    samples: int
    position: dict
    order: object
    user: object
    where: str
    file: object = None

    def error(self, msg):
        return checkpoint.CheckpointError(f"{self.where}: {msg}")

    def restore_params(self):
        """Read the saved params into ``params`` and close the file."""
        try:
            self.file.read_into([(f"param/{i}", p) for i, p in enumerate(self.params)])
        finally:
            self.close()

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None

    def __del__(self):
        self.close()


def _is_int(x):
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def read(path, optimizers, params=None, check_params=None):
    """Read and check the task file at ``path``. ``optimizers``: {lower-case class name:
    class}; ``params``: arrays to restore into, or None for new arrays; ``check_params``: the
    task's validation of a params argument. Raises lrcore.CheckpointError for a file that does
    not fit; modifies nothing (the params are written by SavedTask.restore_params)."""
    f = checkpoint.CheckpointFile(path)
    try:
        return _read(f, optimizers, params, check_params)
    except BaseException:
        f.close()
        raise


def _read(f, optimizers, params, check_params):
    meta, where = f.meta, f.where

    def bad(msg):
        return checkpoint.CheckpointError(f"{where}: {msg}")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise bad("is not an UpdateTask checkpoint (written by UpdateTask.save)")
    if meta.get("version") != FORMAT_VERSION:
        raise bad(f"has format version {meta.get('version')!r}; this lrcore reads "
                  f"version {FORMAT_VERSION}")
    opt_meta = meta.get("optimizer")
    if not isinstance(opt_meta, dict) or not {"class", "num_threads", "fixed", "state_dict",
                                              "state_names"} <= set(opt_meta):
        raise bad("is incomplete or corrupt (optimizer record)")
    cls_name, sd, names = opt_meta["class"], opt_meta["state_dict"], opt_meta["state_names"]
    if not isinstance(cls_name, str) or cls_name.lower() not in optimizers \
            or optimizers[cls_name.lower()].__name__ != cls_name:
        raise bad(f"names optimizer {cls_name!r}; expected one of "
                  f"{sorted(o.__name__ for o in optimizers.values())}")
    opt_class = optimizers[cls_name.lower()]
    if not isinstance(names, list) or not names:
        raise bad("is incomplete or corrupt (no parameters)")
    n = len(names)
    if not isinstance(sd, dict) or not isinstance(sd.get("groups"), list) or not sd["groups"] \
            or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                       for g in sd["groups"]):
        raise bad("is incomplete or corrupt (parameter groups)")
    order_of_params = [i for g in sd["groups"] for i in g["params"]]
    if not all(_is_int(i) for i in order_of_params) or order_of_params != list(range(n)):
        raise bad(f"is corrupt: its parameter groups hold params {order_of_params}, expected "
                  f"0..{n - 1} in order")
    fixed = opt_meta["fixed"]
    if not isinstance(fixed, list) or len(fixed) != len(sd["groups"]) or not all(
            isinstance(x, dict) and set(x) == set(opt_class.fixed)
            and all(isinstance(v, bool) for v in x.values()) for x in fixed):
        raise bad(f"is corrupt: fixed options {fixed!r}, expected per group "
                  f"{list(opt_class.fixed)} as True/False")
    threads = opt_meta["num_threads"]
    if threads is not None and (not _is_int(threads) or not 1 <= threads < 2 ** 31):
        raise bad(f"is corrupt: num_threads {threads!r} is not None or an integer >= 1")
    samples = meta.get("samples")
    if not _is_int(samples) or samples < 1:
        raise bad(f"is corrupt: samples {samples!r} is not an integer >= 1")
    position = _position(meta.get("position"), samples, bad)
    loop = _loop(meta.get("loop"), bad)

    # destinations: the caller's arrays (checked, written last) or new ones
    saved = [f.entry(f"param/{i}", f"params[{i}]") for i in range(n)]
    if params is None:
        params = [np.empty(e.shape, e.dtype.newbyteorder("=")) for e in saved]
    else:
        params = check_params(params)
        if len(params) != n:
            raise bad(f"holds {n} params, {len(params)} were given")
    for i, p in enumerate(params):
        f.check_destination(f"param/{i}", p, f"params[{i}]")
    order = None
    if "order" in f.entries:
        e = f.entry("order")
        if e.shape != (samples,) or e.dtype.kind not in "iu":
            raise bad(f"holds a sample order of {e.describe()}, expected integers of shape "
                      f"({samples},)")
        order = f.read_array("order").astype(np.int64)
        if not np.array_equal(np.sort(order), np.arange(samples)):
            raise bad(f"holds a sample order that is not a permutation of 0..{samples - 1}")
    if order is None and position["offset"]:
        raise bad(f"is corrupt: offset {position['offset']} into an epoch without a sample "
                  f"order")

    groups = [dict(fx, params=[params[i] for i in g["params"]])
              for fx, g in zip(fixed, sd["groups"])]
    try:
        # the element-type options of a version-2 state dict (lrcore.optim.state_dict);
        # its own check of them runs in the load below
        options = {k: sd[k] for k in ("state_dtype", "rounding", "seed") if k in sd}
        opt = opt_class(groups, num_threads=opt_meta["num_threads"], **options)
    except (TypeError, ValueError) as exc:
        raise bad(f"does not describe a valid {cls_name}: {exc}") from None
    checkpoint.OptimizerLoad(f, opt, sd, names).load_state()
    return SavedTask(params=params, optimizer=opt, loop=loop, samples=samples,
                     position=position, order=order, user=meta.get("user"), where=where,
                     file=f)


def _position(pos, samples, bad):
    if not isinstance(pos, dict) or set(pos) != _POSITION:
        raise bad(f"is corrupt: position {pos!r} must hold {sorted(_POSITION)}")
    ints = {k: pos[k] for k in ("epoch", "offset", "mini_batch", "loss_count")}
    for k, v in ints.items():
        if not _is_int(v) or v < 0 or v >= 2 ** 63:
            raise bad(f"is corrupt: position {k} {v!r} is not an integer in [0, 2**63)")
    if ints["offset"] > samples:
        raise bad(f"is corrupt: position offset {ints['offset']} is past the {samples} samples")
    if not isinstance(pos["began"], bool):
        raise bad(f"is corrupt: position began {pos['began']!r} is not True/False")
    for k in ("loss_sum", "last_epoch_loss"):
        v = pos[k]
        if (v is not None or k == "loss_sum") and (
                isinstance(v, bool) or not isinstance(v, (int, float))):
            raise bad(f"is corrupt: position {k} {v!r} is not a number")
    try:
        losses = {k: None if pos[k] is None else float(pos[k])
                  for k in ("loss_sum", "last_epoch_loss")}
    except OverflowError:
        raise bad("is corrupt: a position loss is too large for a float") from None
    return {"began": pos["began"], **ints, **losses}


def _loop(loop, bad):
    wanted = {k.name for k in ParameterKey if not k.value.hyperparameter}
    if not isinstance(loop, dict) or set(loop) != wanted:
        raise bad(f"is corrupt: loop parameters {loop!r} must be {sorted(wanted)}")
    try:
        return {ParameterKey[name]: ParameterKey[name].validate(value)
                for name, value in loop.items()}
    except (TypeError, ValueError) as exc:
        raise bad(f"is corrupt: {exc}") from None
