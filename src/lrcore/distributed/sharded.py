"""ShardedOptimizer: optimizer state split over MPI ranks (ZeRO stage 1/2 for numpy arrays).

Design: every rank holds every param (the caller's own arrays) and 1/W of the optimizer
state. `_layout.Layout` cuts each (group, dtype) into one contiguous range per rank, on the
grid of the single-process sum of squares, and each rank's range into buckets. Per bucket, an
inner optimizer of the caller's class steps this rank's pieces of the params (views, so the
kernel writes the caller's arrays in place) with the group's hyperparameters and schedules.
A step, per bucket: all-to-all of grad pieces, then a left-to-right sum in rank order and a
division by W (the deterministic reduce-scatter), the inner kernel on the local shard, and an
all-gather of the updated pieces into every rank's params. The next bucket's reduction is
started before the current bucket's kernel, and its gather is left running while the next
kernel runs (non-blocking collectives; how much they overlap depends on the MPI's progress).

Element types (lrcore.optim's state_dtype, rounding, seed; issues 12 and 13): each param's
layout is decided on the whole param, as one process decides it (lrcore.optim.precision).
Every piece is stepped with index_offset = its first element's place in the concatenation of
all params, so stochastic rounding draws, element for element, the bits one process draws.
With 8-bit state the cuts fall on whole quantization blocks and never leave a piece of a
quantized param under the 4096-element threshold (`_layout`), so each piece's codes and
absmax are exactly that slice of one process's. Half-precision grads are averaged in float32
and rounded once, to nearest, to the grads' dtype (`average_grads`). Where one process would
take lrcore.optim's per-param path (any layout but all-float32 / all-float64 with grads of the
params' dtype), the global norm for clipping and skipping is that path's float64 sum of
squares, as on the float32 path: each rank sums its pieces' blocks of 2**14 elements (counted
from each param's start, where every cut lies) and one allgather of the blocks' sums adds
them in one process's order.
"""
import hashlib
import json
import math
import numbers
import threading

import numpy as np

from .. import lowp, quantization
from ._comm import DEFAULT_TIMEOUT, DistributedError, agree, allgather_bytes, \
    import_mpi, mpi_type, wait, wire, yield_cpu
from ._layout import Layout, block_sumsq
from ..optim import Optimizer
from ..optim import params as param_checks
from ..optim import precision
from ..optim.state_dict import READS as _STATE_DICT_VERSIONS, state_dtype_mismatch

__all__ = ["ShardedOptimizer", "average_grads"]

DEFAULT_BUCKET_ELEMENTS = 1 << 22   # elements per bucket, all ranks together (16 MiB of float32)


_FULL = (np.dtype(np.float32), np.dtype(np.float64))


def _dname(dt):
    """A dtype's name ('bfloat16' for ml_dtypes')."""
    dt = np.dtype(dt)
    return "bfloat16" if dt == lowp.bfloat16 else dt.name


def _mean_into(out, chunks):
    """out = the mean of the equal-length 1-d arrays `chunks` (one per rank, in rank order):
    ((c_0 + c_1) + c_2) + ... + c_{W-1}, then / W. float32 and float64 in their own type;
    bfloat16 and float16 widened to float32 (exact), summed and divided in float32, and
    rounded once to nearest even in their type (lrcore.lowp.round_nearest)."""
    dt = out.dtype
    if dt in _FULL:
        if len(chunks) == 1:
            out[...] = chunks[0]
        else:
            np.add(chunks[0], chunks[1], out=out)
            for c in chunks[2:]:
                np.add(out, c, out=out)
        np.divide(out, dt.type(len(chunks)), out=out)
        return
    acc = lowp.widen(chunks[0])
    for c in chunks[1:]:
        np.add(acc, lowp.widen(c), out=acc)
    np.divide(acc, np.float32(len(chunks)), out=acc)
    out.view(np.uint16)[...] = lowp.round_nearest(acc, dt).view(np.uint16)


def average_grads(grads_per_rank):
    """The averaged grads a ShardedOptimizer(average=True) steps with, computed in one
    process: grads_per_rank[r] is rank r's list of grads (the same shapes and dtypes on
    every rank). Per element, (((g_0 + g_1) + g_2) + ... + g_{W-1}) / W in rank order:
    float32 / float64 grads in their own type; bfloat16 / float16 grads widened to float32,
    summed and divided in float32, then rounded once to nearest even in the grads' dtype.
    A single-process optimizer stepped with these grads ends bitwise where the sharded one
    does (the reference of lrcore.distributed's equality guarantee)."""
    per_rank = [param_checks.grad_list(g, "average_grads()") for g in grads_per_rank]
    if not per_rank:
        raise ValueError("average_grads(): grads_per_rank is empty; give one list per rank")
    out = []
    for i, g0 in enumerate(per_rank[0]):
        parts = []
        for r, grads in enumerate(per_rank):
            if len(grads) != len(per_rank[0]):
                raise ValueError(f"average_grads(): rank {r} has {len(grads)} grads, rank 0 "
                                 f"{len(per_rank[0])}")
            g = grads[i]
            if not isinstance(g, np.ndarray) or g.dtype != g0.dtype or g.shape != g0.shape \
                    or not lowp.dtype_ok(g.dtype):
                raise ValueError(f"average_grads(): grads_per_rank[{r}][{i}] must be a "
                                 f"float32, float64, bfloat16 or float16 array like "
                                 f"grads_per_rank[0][{i}] ({g0.dtype} {g0.shape})")
            parts.append(np.ascontiguousarray(g).reshape(-1))
        a = np.empty(g0.shape, dtype=g0.dtype)
        _mean_into(a.reshape(-1), parts)
        out.append(a)
    return out


def _span(key, start, stop):
    """Elements [start, stop) of a param as positions in its state-dict array `key`: the
    same, or (an 8-bit buffer's absmax, one per block of 256) the blocks they cover."""
    if precision.split_key(key)[1] == "absmax":
        return start // quantization.BLOCK, -(-stop // quantization.BLOCK)
    return start, stop


def _place(inner, offsets):
    """Give a bucket's optimizer the index_offset of each of its pieces (the piece's place
    in the concatenation of every param, as one process numbers it), which its per-param
    step passes to the kernels. lrcore.optim.Optimizer numbers its own params from 0 and
    has no public argument for this: the one private field this module sets."""
    if not isinstance(getattr(inner, "_offsets", None), list) \
            or len(inner._offsets) != len(offsets):
        raise RuntimeError("lrcore.distributed: this lrcore.optim.Optimizer keeps no per-param "
                           "index offsets (_offsets); ShardedOptimizer cannot place its pieces")
    inner._offsets = list(offsets)


def _check_separate(params):
    """Every param its own memory (as the single-process optimizers require). Returns the
    sorted (start, end, "params[i]") of their memory, against which step() checks grads."""
    extents = sorted((p.__array_interface__["data"][0], p.nbytes, i)
                     for i, p in enumerate(params) if p.nbytes)
    for (a, n, i), (b, _, j) in zip(extents, extents[1:]):
        if b < a + n:
            raise ValueError(f"ShardedOptimizer: params[{min(i, j)}] and params[{max(i, j)}] "
                             f"share memory; every param must be a separate array")
    return [(a, a + n, f"params[{i}]") for a, n, i in extents]


# Constructor arguments that are each rank's own and may differ between ranks: how long a
# rank waits (timeout), whether a helper thread drives its collectives (overlap), and its
# kernel threads (num_threads, a hyperparameter of the class; every thread count gives the
# same bits). Everything else (optimizer_class, average, bucket_elements, the groups and
# every other hyperparameter, the params) must be the same on every rank and is compared at
# construction.
PER_RANK_HYPERPARAMETERS = ("num_threads",)


def _first_difference(a, b, path):
    """The first place where two JSON-like values differ: (path, a's part, b's part), or
    None if they are equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                return (f"{path}.{key}" if path else str(key), a.get(key, "(absent)"),
                        b.get(key, "(absent)"))
            found = _first_difference(a[key], b[key], f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for k, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{path}[{k}]")
            if found:
                return found
        return None
    return None if a == b else (path, a, b)


def _state_description(state_dict):
    """(digest, description) of what of a single-process state dict must be the same on
    every rank: everything but the arrays (format, version, optimizer, step, state_dtype,
    rounding, seed, every group's hyperparameters, schedules, momentum flags and scalars,
    the params' shapes and dtypes) and the names of each param's state arrays. The arrays'
    values are not compared (a rank reads only its own pieces); every rank checks all of
    them (_check_full)."""
    desc = {k: v for k, v in state_dict.items() if k != "state"}
    desc["state"] = [sorted(st) for st in state_dict.get("state", ())]
    # one JSON round trip: the description every rank compares (repr for what JSON lacks)
    desc = json.loads(json.dumps(desc, sort_keys=True, default=repr))
    text = json.dumps(desc, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest(), desc


def refuse_different(comm, timeout, desc, owner, what, during):
    """After an agreement found different digests: every rank's description (one
    allgather), then the same ValueError on every rank naming the first difference of a
    rank from rank 0."""
    texts = allgather_bytes(comm, json.dumps(desc, sort_keys=True).encode(), timeout, during)
    descs = [json.loads(t) for t in texts]
    for r, d in enumerate(descs[1:], start=1):
        found = _first_difference(d, descs[0], "")
        if found:
            where, mine, base = found
            short = [v if len(repr(v)) <= 120 else repr(v)[:117] + "..." for v in (mine, base)]
            raise ValueError(f"{owner}: the ranks were given different {what}: {where} is "
                             f"{short[0]!r} on rank {r}, {short[1]!r} on rank 0; give every "
                             f"rank the same")
    raise ValueError(f"{owner}: the ranks were given different {what}")


def _describe(value):
    """A rank-independent description of a hyperparameter value (for the agreement check)."""
    to_config = getattr(value, "to_config", None)
    if to_config is not None:
        try:
            return json.dumps(to_config(), sort_keys=True, default=repr)
        except TypeError:
            return type(value).__name__
    return repr(value)


class ShardedOptimizer:
    """An lrcore optimizer whose state is split over the ranks of an MPI communicator.

    params: as for the optimizer class (an array, a list of arrays, or a list of parameter
        group dicts); every rank passes the same list, with the same initial values
        (checked at construction: shapes, dtypes, groups, hyperparameters and a SHA-256 of
        every param's bytes). float32, float64, bfloat16 (ml_dtypes) or float16 arrays.
    optimizer_class: an lrcore optimizer class (lrcore.Adam, lrcore.SGD, ...).
    comm: an mpi4py communicator (default MPI.COMM_WORLD).
    average: True (default): `step` takes each rank's local grads and uses their average
        (((g_0 + g_1) + g_2) + ... + g_{W-1}) / W, summed in rank order: float32 / float64
        grads in their type, bfloat16 / float16 grads in float32 and rounded once to nearest
        in their type (`average_grads` computes the same in one process).
        False: the grads are already reduced (the same on every rank) and used as they are.
    bucket_elements: elements per communication bucket, all ranks together.
        average and bucket_elements must be the same on every rank (compared at
        construction with the params and hyperparameters: a ValueError on every rank).
    timeout: seconds a rank waits for its peers in a collective before raising
        DistributedError (then the communicator is unusable: end the program). timeout,
        overlap and the hyperparameter num_threads are each rank's own and may differ.
    overlap: while a bucket's kernel runs (it releases the GIL), a helper thread keeps
        testing the collectives in flight (the next bucket's reduction, the previous one's
        gather), since MPICH moves non-blocking collectives only inside MPI calls unless
        it runs its own progress thread. Needs MPI_THREAD_MULTIPLE (mpi4py's default).
        Off by default: on the 2-core machine of the README's figures it made steps slower.
    **hyperparameters: passed to optimizer_class (lr=..., betas=..., schedules), including
        the element-type options state_dtype (None, 'float32', 'bfloat16', 'int8'),
        rounding ('nearest', 'stochastic') and seed, with lrcore.optim's meaning.

    `step(grads, clip_norm=None, skip_nonfinite=False)` leaves every rank's params bitwise
    equal to a single-process optimizer_class, built with the same options, stepped with
    the averaged grads (clipping by the global norm summed in the single-process order), and
    `consolidated_state_dict()` equal to its state dict, for every layout of
    lrcore.optim (half-precision params and grads, bfloat16 and 8-bit state, stochastic
    rounding). Every method that communicates is collective: call it on every rank, in
    the same order.
    """

    def __init__(self, params, optimizer_class, comm=None, *, average=True,
                 bucket_elements=DEFAULT_BUCKET_ELEMENTS, timeout=DEFAULT_TIMEOUT,
                 overlap=False, **hyperparameters):
        MPI = import_mpi()
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.world_size = self.comm.Get_size()
        self.timeout = DEFAULT_TIMEOUT
        self.optimizer_class = optimizer_class
        self.average = average
        self.overlap = bool(overlap) and MPI.Query_thread() == MPI.THREAD_MULTIPLE
        owner = "ShardedOptimizer"
        error, signature = None, None
        try:
            if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) \
                    or not (timeout > 0 and math.isfinite(timeout)):
                raise ValueError(f"ShardedOptimizer: timeout must be a finite number of "
                                 f"seconds > 0, got {timeout!r}")
            self.timeout = float(timeout)
            if not isinstance(average, bool):
                raise TypeError(f"ShardedOptimizer: average must be True or False, got "
                                f"{average!r}")
            if isinstance(bucket_elements, bool) or not isinstance(bucket_elements,
                                                                   numbers.Integral) \
                    or bucket_elements < 1:
                raise ValueError(f"ShardedOptimizer: bucket_elements must be an integer >= 1, "
                                 f"got {bucket_elements!r}")
            if not isinstance(optimizer_class, type) or not issubclass(optimizer_class,
                                                                       Optimizer) \
                    or getattr(optimizer_class, "rule", None) is None:
                raise TypeError(f"ShardedOptimizer: optimizer_class must be an lrcore "
                                f"optimizer class (e.g. lrcore.Adam), got {optimizer_class!r}")
            state_dtype, _, _ = precision.check_options(
                owner, hyperparameters.get("state_dtype"),
                hyperparameters.get("rounding", "nearest"), hyperparameters.get("seed", 0))
            self._specs = []
            for g, group in enumerate(param_checks.groups(params, owner)):
                ps = group.pop("params")
                if not ps:
                    raise ValueError(f"ShardedOptimizer: parameter group {g} has no params")
                self._specs.append((group, ps))
            self._params, self._group_of = [], []
            for g, (_, ps) in enumerate(self._specs):
                for p in ps:
                    param_checks.check_param(len(self._params), p, owner, half=True)
                    self._params.append(p)
                    self._group_of.append(g)
            param_checks.check_writeable(self._params, owner)
            self._param_extents = _check_separate(self._params)
            # each param's layout, decided on the whole param as one process decides it
            self._layouts = [precision.layout(owner, f"params[{i}]", optimizer_class.rule, p,
                                              state_dtype)
                             for i, p in enumerate(self._params)]
            # the class's own checks of groups and hyperparameters, on empty params
            optimizer_class([dict(spec, params=[np.empty(0, p.dtype) for p in ps])
                             for spec, ps in self._specs], **hyperparameters)
            signature = self._signature(hyperparameters, average, int(bucket_elements))
        except (TypeError, ValueError) as exc:
            error = exc
        sigs = agree(self.comm, error, self.timeout, "ShardedOptimizer construction",
                     payload=None if signature is None else signature[0])
        if len(set(sigs)) > 1:
            self._mismatch(signature[1])
        self._state_dtype = state_dtype
        self._plain = all(lay.plain for lay in self._layouts)
        offsets = precision.offsets(self._params)
        self._layout = Layout([p.size for p in self._params], [p.dtype for p in self._params],
                              self._group_of, self.world_size, int(bucket_elements),
                              min_tail=quantization.MIN_ELEMENTS if state_dtype == "int8"
                              else 0)
        self._flat = [p.reshape(-1) for p in self._params]
        # per bucket, the params of its (group, dtype) range
        members = {(g, np.dtype(dt)): m for g, dt, m, _ in self._layout.ranges}
        self._members = [members[b.group, np.dtype(b.dtype)] for b in self._layout.buckets]
        error = None
        self._inner = []
        try:
            for bucket in self._layout.buckets:
                spec, _ = self._specs[bucket.group]
                inner = optimizer_class([dict(spec, params=self._views(bucket, self._flat))],
                                        **hyperparameters)
                _place(inner, [offsets[p.index] + p.start for p in
                               bucket.pieces[self.rank]] or [0])
                self._inner.append(inner)
        except (TypeError, ValueError) as exc:
            error = exc
        agree(self.comm, error, self.timeout, "ShardedOptimizer construction")
        # the first bucket of each group speaks for the group (all of them hold the same values)
        self._group_inner = {}
        for k, bucket in enumerate(self._layout.buckets):
            self._group_inner.setdefault(bucket.group, k)
        self._shards = {}     # (bucket, dtype) -> this rank's averaged grads / gather staging
        ids = [self._layout.block_ids(r) for r in range(self.world_size)]
        self._block_counts = [1 + len(x) for x in ids]        # a finite flag, then partials
        self._block_displs = np.concatenate([[0], np.cumsum(self._block_counts)[:-1]]).tolist()
        flat_ids = np.array([i for x in ids for i in x], dtype=np.int64)
        values_at = np.concatenate([np.arange(d + 1, d + c) for d, c in
                                    zip(self._block_displs, self._block_counts)]).astype(np.int64)
        order = np.empty(self._layout.nblocks, dtype=np.int64)
        order[flat_ids] = values_at
        self._block_order = order               # received position of global block k
        self._flag_at = np.array(self._block_displs, dtype=np.int64)
        self._partials = np.empty(self._block_counts[self.rank], dtype=np.float64)
        self._partials_all = np.empty(sum(self._block_counts), dtype=np.float64)
        self._buffers = {}
        self.last_grad_norm = None

    # -- construction helpers ------------------------------------------------------------

    def _signature(self, hyperparameters, average, bucket_elements):
        """(digest, description) of what must be identical on every rank (all but the
        per-rank arguments: timeout, overlap, PER_RANK_HYPERPARAMETERS)."""
        desc = {"optimizer": f"{self.optimizer_class.__module__}."
                             f"{self.optimizer_class.__qualname__}",
                "options": {"average": average, "bucket_elements": bucket_elements},
                "hyperparameters": {k: _describe(v) for k, v in sorted(hyperparameters.items())
                                    if k not in PER_RANK_HYPERPARAMETERS},
                "groups": [{k: _describe(v) for k, v in sorted(spec.items())}
                           for spec, _ in self._specs],
                "params": [[g, p.dtype.name, list(p.shape),
                            hashlib.sha256(p.reshape(-1).view(np.uint8)).hexdigest()[:32]
                            if p.size else ""]
                           for p, g in zip(self._params, self._group_of)]}
        text = json.dumps(desc, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest(), desc

    def _mismatch(self, desc):
        """Every rank's description; raise naming the first difference from rank 0."""
        texts = allgather_bytes(self.comm, json.dumps(desc, sort_keys=True).encode(),
                                self.timeout, "ShardedOptimizer construction")
        descs = [json.loads(t) for t in texts]
        base = descs[0]
        for r, d in enumerate(descs[1:], start=1):
            if d == base:
                continue
            for key in ("average", "bucket_elements"):
                if d["options"][key] != base["options"][key]:
                    raise ValueError(f"ShardedOptimizer: {key} is {d['options'][key]!r} on "
                                     f"rank {r} and {base['options'][key]!r} on rank 0; it "
                                     f"must be the same on every rank")
            why = None
            for key in ("optimizer", "hyperparameters"):
                if d[key] != base[key]:
                    why = f"{key} {d[key]} on rank {r}, {base[key]} on rank 0"
                    break
            if why is None and len(d["groups"]) != len(base["groups"]):
                why = f"{len(d['groups'])} parameter groups on rank {r}, {len(base['groups'])} on rank 0"
            if why is None and len(d["params"]) != len(base["params"]):
                why = f"{len(d['params'])} params on rank {r}, {len(base['params'])} on rank 0"
            if why is None:
                for g, (a, b) in enumerate(zip(d["groups"], base["groups"])):
                    if a != b:
                        why = f"parameter group {g} is {a} on rank {r}, {b} on rank 0"
                        break
            if why is None:
                for i, (a, b) in enumerate(zip(d["params"], base["params"])):
                    if a[:3] != b[:3]:
                        why = (f"params[{i}] is {a[1]} {tuple(a[2])} in group {a[0]} on rank {r}, "
                               f"{b[1]} {tuple(b[2])} in group {b[0]} on rank 0")
                        break
                    if a[3] != b[3]:
                        why = (f"params[{i}] holds different values on rank {r} and rank 0 "
                               f"(every rank must start from the same values: seed the "
                               f"initialisation alike, or broadcast rank 0's arrays)")
                        break
            raise ValueError(f"ShardedOptimizer: the ranks were given different params: {why}")
        raise ValueError("ShardedOptimizer: the ranks were given different params")

    def _views(self, bucket, flats, rank=None):
        """This rank's pieces of a bucket as views of `flats` (one empty array if none)."""
        pieces = bucket.pieces[self.rank if rank is None else rank]
        if not pieces:
            return [np.empty(0, dtype=bucket.dtype)]
        return [flats[p.index][p.start:p.stop] for p in pieces]

    def _split(self, bucket, buf):
        """A chunk-sized buffer cut into this rank's pieces of `bucket`."""
        pieces = bucket.pieces[self.rank]
        if not pieces:
            return [buf[:0]]
        out, at = [], 0
        for p in pieces:
            out.append(buf[at:at + p.size])
            at += p.size
        return out

    # -- properties ----------------------------------------------------------------------

    @property
    def params(self):
        """The arrays being optimised, in order (the caller's own arrays)."""
        return list(self._params)

    @property
    def step_count(self):
        """Number of steps applied so far."""
        return self._inner[0].step_count

    @property
    def param_groups(self):
        """The parameter groups: the caller's arrays and the hyperparameters (numbers or
        schedules) in force."""
        out = []
        for g in range(len(self._specs)):
            group = dict(self._inner[self._group_inner[g]].param_groups[0])
            group["params"] = [p for p, gi in zip(self._params, self._group_of) if gi == g]
            out.append(group)
        return out

    def hyperparameters(self, group=0):
        """Values in force for the next step (schedules evaluated), as a dict."""
        if isinstance(group, bool) or not isinstance(group, numbers.Integral) \
                or not 0 <= group < len(self._specs):
            raise ValueError(f"ShardedOptimizer: group must be an index in "
                             f"[0, {len(self._specs)}), got {group!r}")
        return self._inner[self._group_inner[group]].hyperparameters(0)

    @property
    def lr(self):
        """Learning rate in force for the next step (group 0)."""
        return self.hyperparameters(0)["lr"]

    def set(self, group=None, **hyperparameters):
        """Change hyperparameters from the next step on (as optimizer_class.set), in one group
        or every group. Call it alike on every rank (no communication)."""
        if group is not None and (isinstance(group, bool) or not isinstance(group, numbers.Integral)
                                  or not 0 <= group < len(self._specs)):
            raise ValueError(f"ShardedOptimizer: group must be an index in "
                             f"[0, {len(self._specs)}) or None, got {group!r}")
        targets = [k for k, b in enumerate(self._layout.buckets) if group in (None, b.group)]
        before = [self._inner[k].state_dict() for k in targets]
        try:
            for k in targets:
                self._inner[k].set(**hyperparameters)
        except BaseException:
            for k, sd in zip(targets, before):
                self._inner[k].load_state_dict(sd)
            raise

    def report(self, metric):
        """Feed a metric to every ReduceOnPlateau hyperparameter, once per schedule object.
        Call it alike on every rank."""
        from ..schedules import ReduceOnPlateau
        seen = set()
        for g in range(len(self._specs)):
            for value in self._inner[self._group_inner[g]].param_groups[0].values():
                if isinstance(value, ReduceOnPlateau) and id(value) not in seen:
                    seen.add(id(value))
                    value.report(metric)

    def state_nbytes(self):
        """Bytes of optimizer state held by this rank (its shard; params not counted): every
        state buffer of its pieces, 8-bit ones as codes plus absmax. Summed over the ranks,
        the single-process optimizer's state_nbytes()."""
        return sum(inner.state_nbytes() for inner in self._inner)

    def shard_elements(self):
        """Elements of each (group, dtype) range this rank owns: [(group, dtype, mine, total)]."""
        return [(g, _dname(dt), cuts[self.rank + 1] - cuts[self.rank], cuts[-1])
                for g, dt, _, cuts in self._layout.ranges]

    @property
    def state_dtype(self):
        """None, 'float32', 'bfloat16' or 'int8', as given at construction."""
        return self._state_dtype

    @property
    def rounding(self):
        """'nearest' or 'stochastic' (a loaded state dict's, after a load)."""
        return self._inner[0].rounding

    @property
    def seed(self):
        """The stochastic-rounding stream's seed (a loaded state dict's, after a load)."""
        return self._inner[0].seed

    # -- the step ------------------------------------------------------------------------

    def _buffer(self, name, slot, size, dtype):
        key = (name, slot, np.dtype(dtype).str, np.dtype(dtype).name)
        buf = self._buffers.get(key)
        if buf is None or buf.size < size:
            buf = self._buffers[key] = np.empty(size, dtype=dtype)
        return buf[:size]

    def _shard(self, b, dtype):
        """This rank's part of bucket b in `dtype`: its averaged grads (average=True), or the
        staging of its updated params for the gather (kept per bucket and dtype)."""
        key = (b, np.dtype(dtype).str, np.dtype(dtype).name)
        buf = self._shards.get(key)
        if buf is None:
            buf = self._shards[key] = np.empty(self._layout.buckets[b].counts[self.rank],
                                               dtype=dtype)
        return buf

    def _check_grads(self, grads):
        """The grads as flat views, checked against each param's layout (lrcore.optim's
        rules) and against the params' memory (no grad shares memory with any param, as
        one process requires); with average=True, the grads of one bucket's params share a
        dtype. The params must still be writeable. Local checks only (a flag per param, a
        bisection per grad): step() shares their outcome in its one agreement."""
        where = "ShardedOptimizer.step()"
        param_checks.check_writeable(self._params, where)
        grads = param_checks.grad_list(grads, where)
        if len(grads) != len(self._params):
            raise ValueError(f"ShardedOptimizer.step(): got {len(grads)} grads for "
                             f"{len(self._params)} params; pass one grad per param, in order")
        flat = []
        for i, (g, p) in enumerate(zip(grads, self._params)):
            if not isinstance(g, np.ndarray):
                raise TypeError(f"ShardedOptimizer.step(): grads[{i}] must be a numpy.ndarray, "
                                f"got {type(g).__name__}")
            if g.shape != p.shape:
                raise ValueError(f"ShardedOptimizer.step(): grads[{i}] is "
                                 f"{_dname(g.dtype)} {g.shape}, params[{i}] is "
                                 f"{_dname(p.dtype)} {p.shape}; pass one grad per "
                                 f"param, of the same shape")
            try:
                precision.check_grad(where, i, self._layouts[i], g, p.size)
            except TypeError as exc:
                if g.dtype in _FULL and p.dtype in _FULL:   # float32 vs float64
                    raise ValueError(str(exc)) from None
                raise
            flat.append(g.reshape(-1))
        precision.check_grad_memory(where, grads, self._param_extents)
        if self.average:
            for _, _, members, _ in self._layout.ranges:
                first = members[0]
                for i in members[1:]:
                    if flat[i].dtype != flat[first].dtype:
                        raise TypeError(
                            f"ShardedOptimizer.step(): grads[{i}] is "
                            f"{_dname(flat[i].dtype)} and grads[{first}] "
                            f"{_dname(flat[first].dtype)}: the grads of params of "
                            f"one dtype in one parameter group are averaged together and "
                            f"must share a dtype")
        return flat

    def step(self, grads, *, clip_norm=None, skip_nonfinite=False):
        """One step with this rank's `grads` (one array per param, in order). Collective.

        Each grad has its param's shape and a dtype lrcore.optim accepts for the param's
        layout (the param's dtype; also bfloat16 / float16 for a float32 param), the same
        on every rank. clip_norm / skip_nonfinite as for the single-process optimizer, on
        the averaged grads; every rank takes the same decision. Returns True if the step
        was applied. The caller's grads are never written.
        """
        error, flat = None, None
        try:
            flat = self._check_grads(grads)
            if clip_norm is not None and (isinstance(clip_norm, bool)
                                          or not isinstance(clip_norm, numbers.Real)
                                          or not (math.isfinite(clip_norm) and clip_norm > 0)):
                raise ValueError(f"ShardedOptimizer.step(): clip_norm must be a finite number "
                                 f"> 0 or None, got {clip_norm!r}")
            if not isinstance(skip_nonfinite, (bool, np.bool_)):
                raise TypeError(f"ShardedOptimizer.step(): skip_nonfinite must be True or "
                                f"False, got {skip_nonfinite!r}")
        except (TypeError, ValueError) as exc:
            error = exc
        args, values = None, None
        if error is None:
            kinds = ",".join(_dname(g.dtype) for g in flat)
            values = self._step_values()
            args = [None if clip_norm is None else float(clip_norm), bool(skip_nonfinite),
                    self.step_count, hashlib.sha256(kinds.encode()).hexdigest()[:16],
                    hashlib.sha256(values.encode()).hexdigest()[:16]]
        seen = agree(self.comm, error, self.timeout, "step", payload=args)
        if any(a[:4] != seen[0][:4] for a in seen):
            raise DistributedError("ShardedOptimizer.step(): the ranks disagree on (clip_norm, "
                                   "skip_nonfinite, step_count, digest of the grads' dtypes): "
                                   + ", ".join(f"rank {r}: {tuple(a[:4])}"
                                               for r, a in enumerate(seen)))
        if any(a[4] != seen[0][4] for a in seen):
            # set() / report() called differently: name the first difference, change nothing
            refuse_different(self.comm, self.timeout, json.loads(values),
                             "ShardedOptimizer.step()",
                             f"hyperparameters for step {self.step_count} (call set() and "
                             f"report() alike on every rank)", "step")
        # the single-process optimizer's path: one StepPlan call (float32 / float64 layouts
        # and grads of the params' dtypes), or the kernel per param (any other)
        plan = self._plain and all(g.dtype == p.dtype for g, p in zip(flat, self._params))
        return self._step(flat, clip_norm, bool(skip_nonfinite), plan)

    def _step_values(self):
        """Every group's hyperparameter values this step will use (schedules evaluated at
        this step; PER_RANK_HYPERPARAMETERS left out), as JSON text that the ranks compare by
        digest in step()'s agreement (floats exactly: JSON writes repr)."""
        desc = {}
        for g, k in sorted(self._group_inner.items()):
            desc[f"group {g}"] = {name: value for name, value
                                  in self._inner[k].hyperparameters(0).items()
                                  if name not in PER_RANK_HYPERPARAMETERS}
        return json.dumps(desc, sort_keys=True, default=repr)

    def _step(self, flat, clip_norm, skip_nonfinite, plan):
        MPI = import_mpi()
        comm, rank, world, timeout = self.comm, self.rank, self.world_size, self.timeout
        buckets = self._layout.buckets
        pending = {}   # (kind, bucket) -> request
        needs_norm = clip_norm is not None or skip_nonfinite
        gdtypes = [flat[m[0]].dtype for m in self._members]   # grads' dtype per bucket

        def start_reduce(b):
            bucket, dt = buckets[b], gdtypes[b]
            send = self._buffer("send", b % 2, bucket.size, dt)
            at = 0
            for r in range(world):
                for p in bucket.pieces[r]:
                    send[at:at + p.size] = flat[p.index][p.start:p.stop]
                    at += p.size
            mine = bucket.counts[rank]
            recv = self._buffer("recv", b % 2, world * mine, dt)
            t = mpi_type(dt)
            pending["reduce", b] = comm.Ialltoallv(
                [wire(send), bucket.counts, bucket.displs, t],
                [wire(recv), [mine] * world, [q * mine for q in range(world)], t])

        def finish_reduce(b):
            bucket, dt = buckets[b], gdtypes[b]
            wait(pending.pop(("reduce", b)), timeout, "step (gradient reduction)", keep=self)
            mine = bucket.counts[rank]
            recv = self._buffer("recv", b % 2, world * mine, dt)
            _mean_into(self._shard(b, dt), [recv[q * mine:(q + 1) * mine] for q in range(world)])

        def local_grads(b):
            if self.average:
                return self._split(buckets[b], self._shard(b, gdtypes[b]))
            return self._views(buckets[b], flat)

        def start_gather(b):
            bucket = buckets[b]
            pieces = bucket.pieces[rank]
            if len(pieces) == 1:
                p = pieces[0]
                send = self._flat[p.index][p.start:p.stop]
            else:
                send = self._shard(b, bucket.dtype)
                for dst, src in zip(self._split(bucket, send), self._views(bucket, self._flat)):
                    dst[...] = src
            recv = self._buffer("gather", b % 2, bucket.size, bucket.dtype)
            t = mpi_type(bucket.dtype)
            pending["gather", b] = comm.Iallgatherv([wire(send), t],
                                                    [wire(recv), bucket.counts, bucket.displs, t])

        def finish_gather(b):
            bucket = buckets[b]
            wait(pending.pop(("gather", b)), timeout, "step (parameter gather)", keep=self)
            recv = self._buffer("gather", b % 2, bucket.size, bucket.dtype)
            for r in range(world):
                if r == rank:
                    continue
                at = bucket.displs[r]
                for p in bucket.pieces[r]:
                    self._flat[p.index][p.start:p.stop] = recv[at:at + p.size]
                    at += p.size

        def run_kernel(b, scale):
            grads_b = local_grads(b)
            pieces = buckets[b].pieces[rank]
            if scale != 1.0 and pieces:
                if plan:
                    if not self.average:   # never write the caller's grads
                        staged = self._split(buckets[b], self._shard(b, gdtypes[b]))
                        for dst, src in zip(staged, grads_b):
                            dst[...] = src
                        grads_b = staged
                    s = gdtypes[b].type(scale)
                    for g in grads_b:
                        np.multiply(g, s, out=g)
                else:   # lrcore.optim's per-param path: a scaled copy (precision.scaled)
                    grads_b = [precision.scaled(g, scale, self._layouts[p.index])
                               for g, p in zip(grads_b, pieces)]
            live = list(pending.values())
            if self.overlap and live:
                self._step_driving(b, grads_b, live)
            else:
                self._inner[b].step(grads_b)
            start_gather(b)
            if b > 0:
                finish_gather(b - 1)

        try:
            with np.errstate(all="ignore"):
                nb = len(buckets)
                if self.average:
                    start_reduce(0)
                if needs_norm:
                    for b in range(nb):
                        if self.average:
                            if b + 1 < nb:
                                start_reduce(b + 1)
                            finish_reduce(b)
                    norm, finite = self._global_norm(local_grads, MPI)
                    self.last_grad_norm = norm
                    if skip_nonfinite and not finite:
                        return False
                    scale = 1.0
                    if clip_norm is not None:
                        scale = math.nan if math.isnan(norm) else min(1.0, clip_norm / (norm + 1e-6))
                    for b in range(nb):
                        run_kernel(b, scale)
                else:
                    for b in range(nb):
                        if self.average:
                            if b + 1 < nb:
                                start_reduce(b + 1)
                            finish_reduce(b)
                        run_kernel(b, 1.0)
                finish_gather(nb - 1)
        except DistributedError:
            raise
        except BaseException:
            # every rank fails alike here (same schedules, same values): complete what was
            # started so the communicator stays usable, then raise
            for key in list(pending):
                try:
                    wait(pending.pop(key), timeout, "step (cleanup after an error)", keep=self)
                except DistributedError:
                    pass
            raise
        return True

    def _step_driving(self, b, grads_b, live):
        """Bucket b's kernel, with a helper thread testing the requests in flight meanwhile
        (the kernel releases the GIL; the main thread makes no MPI call until it is done)."""
        MPI = import_mpi()
        stop = threading.Event()

        def drive():
            while not stop.is_set():
                if MPI.Request.Testall(live):
                    return
                yield_cpu()
        helper = threading.Thread(target=drive, daemon=True)
        helper.start()
        try:
            self._inner[b].step(grads_b)
        finally:
            stop.set()
            helper.join()

    def _global_norm(self, local_grads, MPI):
        """(L2 norm of the averaged grads, all finite), summed in the single-process order."""
        part = self._partials
        at = 1
        for b, bucket in enumerate(self._layout.buckets):
            if not bucket.pieces[self.rank]:
                continue
            for g in local_grads(b):
                n = -(-g.size // (1 << 14))
                block_sumsq(g, part[at:at + n])
                at += n
        local = part[1:]
        part[0] = 1.0 if bool(np.isfinite(local).all()) or all(
            bool(np.isfinite(g).all()) for b in range(len(self._layout.buckets))
            if self._layout.buckets[b].pieces[self.rank] for g in local_grads(b)) else 0.0
        wait(self.comm.Iallgatherv([part, MPI.DOUBLE],
                                   [self._partials_all, self._block_counts, self._block_displs,
                                    MPI.DOUBLE]),
             self.timeout, "step (gradient norm)", keep=self)
        ordered = self._partials_all[self._block_order]
        total = float(np.cumsum(ordered)[-1]) if ordered.size else 0.0
        finite = math.isfinite(total) or bool((self._partials_all[self._flag_at] == 1.0).all())
        return math.sqrt(total), finite

    # -- state ---------------------------------------------------------------------------
    #
    # A state dict holds, per param, one array per state-dict key (lrcore.optim.precision):
    # a float buffer `name` of the param's shape, or an 8-bit buffer as `name.codes` (one per
    # element) and `name.absmax` (one per block of 256). A piece [start, stop) of a param
    # holds positions _span(key, start, stop) of each key; pieces of a quantized param
    # start on block boundaries, so those spans tile every array.

    def _names(self, g):
        """Names of the state buffers the params of group g hold (as its bucket optimizers
        hold them: all alike)."""
        return list(self._inner[self._group_inner[g]].snapshot().states[0])

    def _keys(self, i, names):
        """{state-dict key: (shape, dtype)} of param i's buffers `names`, as one process
        holds them."""
        out = {}
        for name in names:
            out.update(precision.spec(self._layouts[i], self._params[i], name))
        return out

    def _local_arrays(self, b):
        """Per piece of bucket b held here: {state-dict key: this rank's array (live)}."""
        if not self._layout.buckets[b].pieces[self.rank]:
            return []
        return [precision.flat(st) for st in self._inner[b].snapshot().states]

    def _bucket_keys(self, b, keys_of):
        """(key, dtype, counts per rank) of every state-dict key that bucket b's pieces hold
        (keys_of[i]: param i's {key: (shape, dtype)}), in a rank-independent order."""
        bucket = self._layout.buckets[b]
        out = {}
        for i in self._members[b]:
            for key, (_, dt) in keys_of[i].items():
                out.setdefault(key, dt)
        rows = []
        for key, dt in out.items():
            counts = [sum(_span(key, p.start, p.stop)[1] - _span(key, p.start, p.stop)[0]
                          for p in bucket.pieces[r] if key in keys_of[p.index])
                      for r in range(self.world_size)]
            if sum(counts):
                rows.append((key, dt, counts))
        return rows

    def consolidated_state_dict(self, root=0):
        """On `root`: the state dict a single-process optimizer_class would have (the same
        keys, values, arrays and dtypes, 8-bit buffers as codes and absmax); None on the
        other ranks. Collective. Gathered bucket by bucket and buffer by buffer: no rank but
        root ever holds more than its own shard plus one bucket's buffer."""
        if isinstance(root, bool) or not isinstance(root, numbers.Integral) \
                or not 0 <= root < self.world_size:
            raise ValueError(f"ShardedOptimizer.consolidated_state_dict(): root must be a rank "
                             f"in [0, {self.world_size}), got {root!r}")
        names = {g: self._names(g) for g in range(len(self._specs))}
        keys_of = [self._keys(i, names[g]) for i, g in enumerate(self._group_of)]
        full = None
        if self.rank == root:
            full = [{key: np.zeros(shape, dtype=dt) for key, (shape, dt) in k.items()}
                    for k in keys_of]
        for b, bucket in enumerate(self._layout.buckets):
            mine = self._local_arrays(b)
            pieces = bucket.pieces[self.rank]
            for key, dt, counts in self._bucket_keys(b, keys_of):
                parts = [arrs[key].reshape(-1) for p, arrs in zip(pieces, mine) if key in arrs]
                send = np.concatenate(parts) if parts else np.empty(0, dtype=dt)
                t = mpi_type(dt)
                if self.rank == root:
                    recv = np.empty(sum(counts), dtype=dt)
                    displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
                    req = self.comm.Igatherv([wire(send), t], [wire(recv), counts, displs, t],
                                             root=root)
                else:
                    recv = None
                    req = self.comm.Igatherv([wire(send), t], None, root=root)
                wait(req, self.timeout, "consolidated_state_dict", keep=(send, recv))
                if self.rank != root:
                    continue
                at = 0
                for r in range(self.world_size):
                    for p in bucket.pieces[r]:
                        if key not in keys_of[p.index]:
                            continue
                        lo, hi = _span(key, p.start, p.stop)
                        full[p.index][key].reshape(-1)[lo:hi] = recv[at:at + hi - lo]
                        at += hi - lo
        if self.rank != root:
            return None
        sd = self._head()
        sd["state"] = full
        return sd

    def _head(self):
        """The single-process state dict but its state: the bucket optimizers' fields (one
        bucket of each group speaks for the group), every param's shape and dtype."""
        sds = {g: self._inner[k].state_dict() for g, k in self._group_inner.items()}
        sd = {k: v for k, v in sds[0].items() if k not in ("groups", "params", "state")}
        sd["groups"] = []
        for g in range(len(self._specs)):
            group = dict(sds[g]["groups"][0])
            group["params"] = [i for i, gi in enumerate(self._group_of) if gi == g]
            sd["groups"].append(group)
        sd["params"] = [{"shape": list(p.shape), "dtype": p.dtype.name} for p in self._params]
        return sd

    def inner_state_dicts(self, state_dict, piece_array):
        """Per bucket, the inner optimizer's state dict for this rank's pieces, built from a
        single-process-format `state_dict` (checked by _check_full) whose arrays are read
        through piece_array(param index, key, start, stop) -> 1-d array (positions of the
        state-dict array `key`)."""
        out = []
        for b, bucket in enumerate(self._layout.buckets):
            g = bucket.group
            members = self._members[b]
            pieces = bucket.pieces[self.rank]
            group = dict(state_dict["groups"][g])
            if pieces:
                params = [{"shape": [p.size], "dtype": bucket.dtype.name} for p in pieces]
                state = [{key: piece_array(p.index, key, *_span(key, p.start, p.stop))
                          for key in state_dict["state"][p.index]} for p in pieces]
            else:    # the bucket optimizer's one empty param: float state, never 8-bit
                params = [{"shape": [0], "dtype": bucket.dtype.name}]
                lay = precision.layout("ShardedOptimizer", "an empty piece",
                                       self.optimizer_class.rule, np.empty(0, bucket.dtype),
                                       self._state_dtype)
                names = dict.fromkeys(precision.split_key(k)[0]
                                      for k in state_dict["state"][members[0]])
                state = [{name: np.empty(0, dtype=lay.state) for name in names}]
            group["params"] = list(range(len(params)))
            sd = {k: v for k, v in state_dict.items() if k not in ("groups", "params", "state")}
            sd.update(groups=[group], params=params, state=state)
            out.append(sd)
        return out

    def _check_full(self, state_dict):
        """Structural checks of a single-process state dict against this optimizer (each
        param's state-dict keys, and the shape and dtype of every array given)."""
        owner = "ShardedOptimizer.load_state_dict()"
        if not isinstance(state_dict, dict):
            raise ValueError(f"{owner}: expected a state dict, got {type(state_dict).__name__}")
        expected = self._inner[0].state_dict()
        for key in ("format", "optimizer"):
            if state_dict.get(key) != expected.get(key):
                raise ValueError(f"{owner}: {key} is {state_dict.get(key)!r}, this optimizer's "
                                 f"is {expected.get(key)!r}")
        version = state_dict.get("version")
        if isinstance(version, bool) or version not in _STATE_DICT_VERSIONS:
            raise ValueError(f"{owner}: version is {version!r}; this lrcore reads versions "
                             f"{', '.join(map(str, _STATE_DICT_VERSIONS))}")
        # equal in meaning, not as written: what each param's state buffers are
        mismatch = version != 1 and state_dtype_mismatch(
            self.optimizer_class.rule, self._params, state_dict.get("state_dtype"),
            self._state_dtype)
        if mismatch:
            raise ValueError(f"{owner}: {mismatch}")
        groups, params, state = (state_dict.get(k) for k in ("groups", "params", "state"))
        if not isinstance(groups, list) or len(groups) != len(self._specs):
            raise ValueError(f"{owner}: it has {len(groups or ())} parameter groups, this "
                             f"optimizer has {len(self._specs)}")
        for g, sg in enumerate(groups):
            mine = [i for i, gi in enumerate(self._group_of) if gi == g]
            if not isinstance(sg, dict) or list(sg.get("params", ())) != mine:
                raise ValueError(f"{owner}: group {g} holds params "
                                 f"{sg.get('params') if isinstance(sg, dict) else sg}, this "
                                 f"optimizer's holds {mine}")
        if not isinstance(params, list) or len(params) != len(self._params) \
                or not isinstance(state, list) or len(state) != len(self._params):
            raise ValueError(f"{owner}: it has {len(params or ())} params and state for "
                             f"{len(state or ())}, this optimizer has {len(self._params)}")
        names_of = {}
        for i, (info, st, p) in enumerate(zip(params, state, self._params)):
            if not isinstance(info, dict) or tuple(info.get("shape", ())) != p.shape \
                    or info.get("dtype") != p.dtype.name:
                raise ValueError(f"{owner}: params[{i}] was {info}, is {p.dtype.name} {p.shape}")
            if not isinstance(st, (list, dict)):
                raise ValueError(f"{owner}: state of params[{i}] is not a dict")
            names = list(dict.fromkeys(precision.split_key(k)[0] for k in st))
            unknown = [n for n in names if n not in self.optimizer_class.state_slots]
            if unknown:
                raise ValueError(f"{owner}: params[{i}] state has a buffer {unknown[0]!r}; "
                                 f"{self.optimizer_class.__name__} keeps "
                                 f"{list(self.optimizer_class.state_slots)}")
            spec = self._keys(i, names)
            if set(st) != set(spec):
                raise ValueError(f"{owner}: params[{i}] state has arrays {sorted(st)}, "
                                 f"expected {sorted(spec)}")
            g = self._group_of[i]
            if names_of.setdefault(g, set(names)) != set(names):
                raise ValueError(f"{owner}: params[{i}] state has buffers {sorted(names)}, "
                                 f"the other params of group {g} {sorted(names_of[g])}")
            if isinstance(st, list):     # keys only (a checkpoint index)
                continue
            for key, (shape, dt) in spec.items():
                arr = st[key]
                if not isinstance(arr, np.ndarray) or arr.shape != shape or arr.dtype != dt:
                    raise ValueError(f"{owner}: params[{i}] state {key!r} is not a "
                                     f"{_dname(dt)} {shape} array")
                # every piece, not only this rank's: each rank refuses a bad array alike
                precision.check_absmax(key, arr,
                                       lambda m, i=i: ValueError(f"{owner}: params[{i}] state {m}"))

    def _load_inner(self, sds, what):
        """Load per-bucket state dicts into the inner optimizers, all or none, on every rank."""
        before = [inner.state_dict() for inner in self._inner]
        error = None
        done = 0
        try:
            for inner, sd in zip(self._inner, sds):
                inner.load_state_dict(sd)
                done += 1
        except (TypeError, ValueError) as exc:
            error = exc
        try:
            agree(self.comm, error, self.timeout, what)
        except BaseException:
            for inner, sd in zip(self._inner[:done], before[:done]):
                inner.load_state_dict(sd)
            raise

    def load_state_dict(self, state_dict):
        """Restore from a single-process-format state dict (e.g. consolidated_state_dict()'s,
        or a single-process optimizer's), given on every rank. Collective; checked on every
        rank before anything changes. Params are not part of a state dict. Its rounding and
        seed replace the optimizer's, and its step count continues the random stream.

        Every rank checks the whole state dict (its arrays' shapes, dtypes and 8-bit absmax,
        not only the pieces it loads), and the ranks compare a digest of all but its arrays
        (step, rounding, seed, groups and hyperparameters, ...) in the agreement they hold
        anyway: a state dict that differs between ranks there is a ValueError naming the
        first difference on every rank, and nothing is changed."""
        error, sds, digest, desc = None, None, None, None
        try:
            self._check_full(state_dict)
            digest, desc = _state_description(state_dict)
            sds = self.inner_state_dicts(
                state_dict, lambda i, key, a, b: state_dict["state"][i][key].reshape(-1)[a:b])
        except (TypeError, ValueError, KeyError) as exc:
            error = exc if not isinstance(exc, KeyError) else ValueError(
                f"ShardedOptimizer.load_state_dict(): malformed state dict ({exc})")
        seen = agree(self.comm, error, self.timeout, "load_state_dict", payload=digest)
        if len(set(seen)) > 1:
            refuse_different(self.comm, self.timeout, desc, "ShardedOptimizer.load_state_dict()",
                             "state dicts", "load_state_dict")
        self._load_inner(sds, "load_state_dict")

    def gather_params(self):
        """Make every rank's params equal to the owners' pieces (after a load). Collective;
        a read-only param on any rank is an error on every rank, before anything moves."""
        error = None
        try:
            param_checks.check_writeable(self._params, "ShardedOptimizer.gather_params()")
        except ValueError as exc:
            error = exc
        agree(self.comm, error, self.timeout, "parameter gather")
        self._gather()

    def _gather(self):
        for b, bucket in enumerate(self._layout.buckets):
            pieces = bucket.pieces[self.rank]
            send = np.concatenate([self._flat[p.index][p.start:p.stop] for p in pieces]) \
                if pieces else np.empty(0, dtype=bucket.dtype)
            recv = np.empty(bucket.size, dtype=bucket.dtype)
            t = mpi_type(bucket.dtype)
            wait(self.comm.Iallgatherv([wire(send), t],
                                       [wire(recv), bucket.counts, bucket.displs, t]),
                 self.timeout, "parameter gather", keep=(send, recv))
            for r in range(self.world_size):
                at = bucket.displs[r]
                for p in bucket.pieces[r]:
                    self._flat[p.index][p.start:p.stop] = recv[at:at + p.size]
                    at += p.size

    # -- checkpoint interface (lrcore.distributed.save / load) ---------------------------

    def checkpoint_parts(self):
        """What `lrcore.distributed.save` writes, as (arrays, state_dict, layout):
        `arrays` is this rank's file: per bucket b, for each state-dict key the arrays of
        this rank's pieces that hold it, concatenated, as `"{b}/{key}"` (positions
        _span(key, start, stop) of each piece), and the params over its pieces as
        `"{b}/param"`; `state_dict` is the single-process state dict without arrays (groups,
        each param's shape and dtype, the list of its state-dict keys); `layout[r][b]` lists
        rank r's pieces of bucket b as [param index, start, stop]. Not collective."""
        names = {g: self._names(g) for g in range(len(self._specs))}
        keys_of = [self._keys(i, names[g]) for i, g in enumerate(self._group_of)]
        arrays = {}
        for b, bucket in enumerate(self._layout.buckets):
            mine = self._local_arrays(b)
            for key, dt, _ in self._bucket_keys(b, keys_of):
                parts = [arrs[key].reshape(-1) for arrs in mine if key in arrs]
                arrays[f"{b}/{key}"] = np.concatenate(parts) if parts else np.empty(0, dt)
            arrays[f"{b}/param"] = np.concatenate(self._views(bucket, self._flat))
        sd = self._head()
        sd["state"] = [list(k) for k in keys_of]
        layout = [[[[p.index, p.start, p.stop] for p in bucket.pieces[r]]
                   for bucket in self._layout.buckets] for r in range(self.world_size)]
        return arrays, sd, layout

    def checkpoint_loader(self, state_dict, piece):
        """Check a checkpoint's array-free `state_dict` (see checkpoint_parts) against this
        optimizer and read this rank's part through `piece(i, key, start, stop, dtype)`
        (positions [start, stop) of param i's state-dict array `key`, 'param' for the param's
        elements). Returns what `restore_checkpoint` applies; changes nothing. Not
        collective. The params must be writeable (restore_checkpoint writes them)."""
        param_checks.check_writeable(self._params, "lrcore.distributed.load()")
        self._check_full(state_dict)
        names = {g: [precision.split_key(k)[0] for k in state_dict["state"][
            self._group_of.index(g)]] for g in range(len(self._specs))}
        keys_of = [self._keys(i, dict.fromkeys(names[g])) for i, g in enumerate(self._group_of)]
        sds = self.inner_state_dicts(
            state_dict, lambda i, key, a, b: piece(i, key, a, b, keys_of[i][key][1]))
        params = [[piece(p.index, "param", p.start, p.stop, bucket.dtype)
                   for p in bucket.pieces[self.rank]] for bucket in self._layout.buckets]
        return sds, params

    def restore_checkpoint(self, loaded):
        """Apply `checkpoint_loader`'s result on every rank (all or none), then make every
        rank's params equal to the owners' pieces. Collective."""
        sds, params = loaded
        self._load_inner(sds, "load")
        for bucket, chunks in zip(self._layout.buckets, params):
            for p, chunk in zip(bucket.pieces[self.rank], chunks):
                self._flat[p.index][p.start:p.stop] = chunk
        self._gather()     # checkpoint_loader checked that every param is writeable

    def __repr__(self):
        return (f"ShardedOptimizer({self.optimizer_class.__name__}, rank={self.rank}, "
                f"world_size={self.world_size}, step={self.step_count}, "
                f"params={len(self._params)}, buckets={len(self._layout.buckets)})")
