"""Checkpoints of a ShardedOptimizer: one file per rank plus an index, without pickle.

Layout: `path` is the index, written by rank 0 with lrcore.checkpoint.write (atomic,
checksummed JSON header, no arrays): the optimizer's state dict without its arrays (step,
hyperparameters and schedules, state_dtype, rounding and seed, the state-dict keys of each
param's buffers), the params' shapes and dtypes, and for every saving rank the pieces (param,
start, stop) of each bucket it held. Next to it, `<path>.<token>.rank<r>of<W>` holds rank r's
shard: per bucket, each state-dict array and the params over that rank's pieces, concatenated,
in their own dtypes (bfloat16, 8-bit codes and their float32 absmax, one per block of 256: a
piece [start, stop) of a quantized param holds absmax blocks [start/256, ceil(stop/256)) ). A save writes the rank files under a fresh token,
then the index (the commit point), then deletes the files of the index it replaced: a crash
at any moment leaves the previous checkpoint loadable. `load` reads the index and, on each
rank of any world size, only the files that overlap its new pieces.
"""
import os
import secrets

import numpy as np

from .. import checkpoint, quantization
from ..checkpoint import CheckpointError
from ._comm import agree
from .sharded import ShardedOptimizer, _state_description, refuse_different

__all__ = ["save", "load", "read_state_dict"]

INDEX_KIND = "lrcore.distributed.index"
SHARD_KIND = "lrcore.distributed.shard"


def _shard_name(path, token, rank, world):
    return f"{os.path.basename(path)}.{token}.rank{rank}of{world}"


def save(path, optimizer, meta=None):
    """Write `optimizer`'s params and state (a ShardedOptimizer) to `path` plus one file per
    rank. Collective: call it on every rank with the same path (on a file system every rank
    sees). `meta`: JSON-able data kept in the index, returned by `load`."""
    if not isinstance(optimizer, ShardedOptimizer):
        raise TypeError(f"lrcore.distributed.save(): optimizer must be a ShardedOptimizer, got "
                        f"{type(optimizer).__name__} (use lrcore.save for one process)")
    opt = optimizer
    comm, rank, world = opt.comm, opt.rank, opt.world_size
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    token = agree(comm, None, opt.timeout, "save", secrets.token_hex(8) if rank == 0 else None)[0]
    error, sd, layout = None, None, None
    try:
        arrays, sd, layout = opt.checkpoint_parts()
        checkpoint.write(os.path.join(directory, _shard_name(path, token, rank, world)), arrays,
                         {"kind": SHARD_KIND, "token": token, "rank": rank, "world": world})
    except (OSError, TypeError, ValueError) as exc:
        error = exc
    agree(comm, error, opt.timeout, "save (rank files)")
    error = None
    if rank == 0:
        try:
            files = [_shard_name(path, token, r, world) for r in range(world)]
            old = []
            if os.path.exists(path):
                try:
                    _, old_meta = checkpoint.read(path)
                    if isinstance(old_meta, dict) and old_meta.get("kind") == INDEX_KIND:
                        old = [f for f in old_meta.get("files", []) if f not in files]
                except (OSError, CheckpointError):
                    pass
            checkpoint.write(path, {}, {"kind": INDEX_KIND, "world": world, "token": token,
                                        "files": files, "optimizer": sd, "layout": layout,
                                        "user": meta})
            for f in old:   # the replaced checkpoint's rank files (only names of that form)
                if f.startswith(os.path.basename(path) + "."):
                    try:
                        os.unlink(os.path.join(directory, f))
                    except OSError:
                        pass
        except (OSError, TypeError, ValueError) as exc:
            error = exc
    agree(comm, error, opt.timeout, "save (index)")


class _Source:
    """Reads pieces of params and state from a saved checkpoint, file by file on demand."""

    def __init__(self, path):
        self.path = os.path.abspath(os.fspath(path))
        self.where = f"checkpoint {os.fspath(path)!r}"
        _, meta = checkpoint.read(self.path)
        if not isinstance(meta, dict) or meta.get("kind") != INDEX_KIND:
            raise CheckpointError(f"{self.where} is not an lrcore.distributed checkpoint index "
                                  f"(use lrcore.load for a single-process checkpoint)")
        try:
            self.sd = meta["optimizer"]
            self.token = meta.get("token")
            self.files = list(meta["files"])
            self.user = meta.get("user")
            # the state-dict keys of each param (float buffers by name, 8-bit ones as
            # name.codes and name.absmax)
            self.keys = [set(k) for k in self.sd["state"]]
            self.layout = [[[(int(i), int(s), int(e)) for i, s, e in pieces]
                            for pieces in buckets] for buckets in meta["layout"]]
            self.held = {}       # param -> [(start, stop, rank, bucket, piece number)]
            for r, buckets in enumerate(self.layout):
                for b, pieces in enumerate(buckets):
                    for k, (i, s, e) in enumerate(pieces):
                        self.held.setdefault(i, []).append((s, e, r, b, k))
            if len(self.files) != len(meta["layout"]):
                raise ValueError("files and layout differ in length")
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{self.where} has a malformed index ({exc})") from None
        self.cache = {}

    def _file(self, r):
        if r not in self.cache:
            name = os.path.join(os.path.dirname(self.path), self.files[r])
            try:
                arrays, meta = checkpoint.read(name)
            except FileNotFoundError:
                raise CheckpointError(f"{self.where}: rank file {self.files[r]!r} is "
                                      f"missing") from None
            if meta.get("kind") != SHARD_KIND or meta.get("rank") != r:
                raise CheckpointError(f"{self.where}: {self.files[r]!r} is not rank {r}'s file")
            self.cache[r] = arrays
        return self.cache[r]

    def _at(self, r, b, k, key):
        """Where piece k of rank r's bucket b starts in that file's array `key`: the spans of
        the bucket's earlier pieces whose param holds `key`."""
        at = 0
        for i, s, e in self.layout[r][b][:k]:
            if key == "param" or key in self.keys[i]:
                lo, hi = _span(key, s, e)
                at += hi - lo
        return at

    def piece(self, i, key, start, stop, dtype=None):
        """Positions [start, stop) of param i's state-dict array `key` ('param': the param's
        elements), as an array of `dtype` (None: the saved dtype)."""
        out = None if dtype is None else np.empty(stop - start, dtype=dtype)
        filled = 0
        for s, e, r, b, k in self.held.get(i, ()):
            s, e = _span(key, s, e)
            lo, hi = max(s, start), min(e, stop)
            if hi <= lo:
                continue
            at = self._at(r, b, k, key)
            src = self._file(r).get(f"{b}/{key}")
            if out is None and src is not None:
                out = np.empty(stop - start, dtype=src.dtype)
            if src is None or src.dtype != out.dtype or at + (e - s) > src.size:
                raise CheckpointError(f"{self.where}: rank {r}'s file lacks {key!r} for "
                                      f"param {i}" + ("" if src is None or src.dtype == out.dtype
                                                      else f" as {out.dtype}"))
            out[lo - start:hi - start] = src[at + lo - s:at + hi - s]
            filled += hi - lo
        if filled != stop - start or out is None:
            raise CheckpointError(f"{self.where}: param {i} positions [{start}, {stop}) of "
                                  f"{key!r} are not all in the checkpoint")
        return out


def _span(key, start, stop):
    """Elements [start, stop) of a param as positions of its state-dict array `key`."""
    if key.endswith(".absmax"):
        return start // quantization.BLOCK, -(-stop // quantization.BLOCK)
    return start, stop


def load(path, optimizer):
    """Restore a checkpoint written by `save` (with any number of ranks) into `optimizer`:
    a ShardedOptimizer on any number of ranks (collective), or a single-process lrcore
    optimizer. Everything is checked on every rank before anything changes, and the ranks
    compare a digest of the index they read (its token and array-free state dict): ranks
    given different checkpoints all raise the same ValueError. Returns the `meta` given to
    save."""
    if not isinstance(optimizer, ShardedOptimizer):
        sd, params = read_state_dict(path)
        own = optimizer.params
        if len(own) != len(params) or any(p.shape != q.shape or p.dtype != q.dtype
                                          for p, q in zip(own, params)):
            raise CheckpointError(f"checkpoint {os.fspath(path)!r}: its params "
                                  f"{[(q.dtype.name, q.shape) for q in params]} do not match "
                                  f"the optimizer's")
        try:
            optimizer.load_state_dict(sd)
        except ValueError as exc:
            raise CheckpointError(f"checkpoint {os.fspath(path)!r}: {exc}") from None
        for p, q in zip(own, params):
            np.copyto(p, q)
        return _Source(path).user
    opt = optimizer
    error, loaded, src, digest, desc = None, None, None, None, None
    try:
        src = _Source(path)
        loaded = opt.checkpoint_loader(src.sd, src.piece)
        src.cache.clear()
        digest, desc = _state_description(dict(src.sd, token=src.token))
    except (OSError, CheckpointError, ValueError, TypeError, KeyError) as exc:
        error = exc if not isinstance(exc, KeyError) else CheckpointError(
            f"checkpoint {os.fspath(path)!r} is malformed ({exc})")
    seen = agree(opt.comm, error, opt.timeout, "load", payload=digest)
    if len(set(seen)) > 1:
        refuse_different(opt.comm, opt.timeout, desc, "lrcore.distributed.load()",
                         "checkpoints", "load")
    opt.restore_checkpoint(loaded)
    return src.user


def read_state_dict(path):
    """(state dict of the single-process optimizer, [params]) from a checkpoint written by
    `save`, read in one process (every rank file). Every array keeps its saved dtype."""
    src = _Source(path)
    sd = dict(src.sd)
    try:
        infos = sd["params"]
        shapes = [(tuple(int(s) for s in info["shape"]), info["dtype"]) for info in infos]
        state = []
        for i, keys in enumerate(sd["state"]):
            shape = shapes[i][0]
            n = int(np.prod(shape, dtype=np.int64))
            st = {}
            for key in keys:
                lo, hi = _span(key, 0, n)
                part = key.rpartition(".")[2] if "." in key else None
                st[key] = src.piece(i, key, lo, hi).reshape(
                    (hi - lo,) if part in ("codes", "absmax") else shape)
            state.append(st)
        params = [src.piece(i, "param", 0, int(np.prod(s, dtype=np.int64))).reshape(s)
                  for i, (s, _) in enumerate(shapes)]
        for i, (p, (_, dt)) in enumerate(zip(params, shapes)):
            if p.dtype.name != dt:
                raise ValueError(f"params[{i}] is saved as {p.dtype.name}, the index says {dt}")
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{src.where} is malformed ({exc})") from None
    sd["state"] = state
    return sd, params

