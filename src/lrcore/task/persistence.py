"""The update task's file format: what :meth:`UpdateTask.save` writes and
:meth:`UpdateTask.load` reads, on top of :mod:`lrcore.checkpoint`'s container.

Design: :func:`save` takes the task's pieces as plain values (optimizer, params, loop
parameters, position, sample order); :func:`read` checks a file against them and returns a
:class:`SavedTask` whose optimizer is already built over the destination arrays, while the
destination arrays themselves are written only by :meth:`SavedTask.restore_params`, the last
thing a load does, so a file that does not fit changes nothing.
"""
import dataclasses

import numpy as np

from .. import checkpoint
from .vocabulary import ParameterKey

__all__ = ["FORMAT", "FORMAT_VERSION", "SavedTask", "save", "read"]

FORMAT = "lrcore.update_task"
FORMAT_VERSION = 1


def save(path, *, optimizer, params, loop, samples, position, order, state, meta):
    """Write a task's pieces to ``path`` atomically (``loop``: {ParameterKey: value};
    ``position``: the loop's counters; ``order``: this epoch's sample order or None)."""
    sd = optimizer.state_dict()
    arrays = {f"param/{i}": p for i, p in enumerate(params)}
    state_names = []
    for i, st in enumerate(sd.pop("state")):
        state_names.append(list(st))
        for name, arr in st.items():
            arrays[f"state/{i}/{name}"] = arr
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
    :meth:`restore_params`."""
    params: list
    saved_params: list
    optimizer: object
    loop: dict
    samples: int
    position: dict
    order: object
    user: object
    where: str

    def error(self, msg):
        return checkpoint.CheckpointError(f"{self.where}: {msg}")

    def restore_params(self):
        for p, a in zip(self.params, self.saved_params):
            np.copyto(p, a)


def read(path, optimizers, params=None, check_params=None):
    """Read and check the task file at ``path``. ``optimizers``: {lower-case class name:
    class}; ``params``: arrays to restore into, or None for new arrays; ``check_params``: the
    task's validation of a params argument. Raises lrcore.CheckpointError for a file that does
    not fit; modifies nothing."""
    arrays, meta = checkpoint.read(path)
    where = f"checkpoint {str(path)!r}"

    def bad(msg):
        return checkpoint.CheckpointError(f"{where}: {msg}")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise bad("is not an UpdateTask checkpoint (written by UpdateTask.save)")
    if meta.get("version") != FORMAT_VERSION:
        raise bad(f"has format version {meta.get('version')!r}; this lrcore reads "
                  f"version {FORMAT_VERSION}")
    try:
        saved = [arrays[f"param/{i}"] for i in range(len(meta["optimizer"]["state_names"]))]
        opt_meta = meta["optimizer"]
        opt_class = optimizers[opt_meta["class"].lower()]
        position, loop = meta["position"], meta["loop"]
    except (KeyError, TypeError, AttributeError) as exc:
        raise bad(f"is incomplete or corrupt ({exc!r})") from None
    if params is None:
        params = [np.array(a, copy=True) for a in saved]
    else:
        params = check_params(params)
        if len(params) != len(saved):
            raise bad(f"holds {len(saved)} params, {len(params)} were given")
        for i, (p, a) in enumerate(zip(params, saved)):
            if p.shape != a.shape or p.dtype != a.dtype:
                raise bad(f"params[{i}] is {a.dtype} {a.shape} in the file, the given "
                          f"array is {p.dtype} {p.shape}")
    sd = dict(opt_meta["state_dict"])
    sd["state"] = [{name: arrays[f"state/{i}/{name}"] for name in names}
                   for i, names in enumerate(opt_meta["state_names"])]
    groups = []
    for g, group in enumerate(sd["groups"]):
        groups.append(dict(opt_meta["fixed"][g],
                           params=[params[i] for i in group["params"]]))
    try:
        opt = opt_class(groups, num_threads=opt_meta["num_threads"])
        opt.load_state_dict(sd)
        loop = {ParameterKey[name]: ParameterKey[name].validate(value)
                for name, value in loop.items()}
    except (TypeError, ValueError, KeyError) as exc:
        raise bad(str(exc)) from None
    return SavedTask(params=params, saved_params=saved, optimizer=opt, loop=loop,
                     samples=meta.get("samples"), position=position,
                     order=arrays.get("order"), user=meta.get("user"), where=where)
