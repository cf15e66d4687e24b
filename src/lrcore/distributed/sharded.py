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
"""
import hashlib
import json
import math
import numbers
import threading

import numpy as np

from ._comm import DEFAULT_TIMEOUT, DistributedError, agree, allgather_bytes, \
    import_mpi, mpi_type, wait, yield_cpu
from ._layout import Layout, block_sumsq
from ..optim import params as param_checks

__all__ = ["ShardedOptimizer"]

DEFAULT_BUCKET_ELEMENTS = 1 << 22   # elements per bucket, all ranks together (16 MiB of float32)


def _check_separate(params):
    """Every param its own memory (as the single-process optimizers require)."""
    extents = sorted((p.__array_interface__["data"][0], p.nbytes, i)
                     for i, p in enumerate(params) if p.nbytes)
    for (a, n, i), (b, _, j) in zip(extents, extents[1:]):
        if b < a + n:
            raise ValueError(f"ShardedOptimizer: params[{min(i, j)}] and params[{max(i, j)}] "
                             f"share memory; every param must be a separate array")


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
        every param's bytes).
    optimizer_class: an lrcore optimizer class (lrcore.Adam, lrcore.SGD, ...).
    comm: an mpi4py communicator (default MPI.COMM_WORLD).
    average: True (default): `step` takes each rank's local grads and uses their average
        (((g_0 + g_1) + g_2) + ... + g_{W-1}) / W, summed in rank order in the grads' dtype.
        False: the grads are already reduced (the same on every rank) and used as they are.
    bucket_elements: elements per communication bucket, all ranks together.
    timeout: seconds a rank waits for its peers in a collective before raising
        DistributedError (then the communicator is unusable: end the program).
    overlap: while a bucket's kernel runs (it releases the GIL), a helper thread keeps
        testing the collectives in flight (the next bucket's reduction, the previous one's
        gather), since MPICH moves non-blocking collectives only inside MPI calls unless
        it runs its own progress thread. Needs MPI_THREAD_MULTIPLE (mpi4py's default).
        Off by default: on the 2-core machine of the README's figures it made steps slower.
    **hyperparameters: passed to optimizer_class (lr=..., betas=..., schedules).

    `step(grads, clip_norm=None, skip_nonfinite=False)` leaves every rank's params bitwise
    equal to a single-process optimizer_class stepped with the averaged grads (clipping by
    the global norm summed in the single-process order). Every method that communicates is
    collective: call it on every rank, in the same order.
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
            if not isinstance(optimizer_class, type):
                raise TypeError(f"ShardedOptimizer: optimizer_class must be an lrcore "
                                f"optimizer class (e.g. lrcore.Adam), got {optimizer_class!r}")
            self._specs = []
            for g, group in enumerate(param_checks.groups(params, "ShardedOptimizer")):
                ps = group.pop("params")
                if not ps:
                    raise ValueError(f"ShardedOptimizer: parameter group {g} has no params")
                self._specs.append((group, ps))
            self._params, self._group_of = [], []
            for g, (_, ps) in enumerate(self._specs):
                for p in ps:
                    param_checks.check_param(len(self._params), p, "ShardedOptimizer")
                    self._params.append(p)
                    self._group_of.append(g)
            param_checks.check_writeable(self._params, "ShardedOptimizer")
            _check_separate(self._params)
            signature = self._signature(hyperparameters)
        except (TypeError, ValueError) as exc:
            error = exc
        sigs = agree(self.comm, error, self.timeout, "ShardedOptimizer construction",
                     payload=None if signature is None else signature[0])
        if len(set(sigs)) > 1:
            self._mismatch(signature[1])
        self._layout = Layout([p.size for p in self._params], [p.dtype for p in self._params],
                              self._group_of, self.world_size, int(bucket_elements))
        self._flat = [p.reshape(-1) for p in self._params]
        error = None
        self._inner = []
        try:
            for bucket in self._layout.buckets:
                spec, _ = self._specs[bucket.group]
                self._inner.append(optimizer_class(
                    [dict(spec, params=self._views(bucket, self._flat))], **hyperparameters))
        except (TypeError, ValueError) as exc:
            error = exc
        agree(self.comm, error, self.timeout, "ShardedOptimizer construction")
        # the first bucket of each group speaks for the group (all of them hold the same values)
        self._group_inner = {}
        for k, bucket in enumerate(self._layout.buckets):
            self._group_inner.setdefault(bucket.group, k)
        self._shard = [np.empty(b.counts[self.rank], dtype=b.dtype) for b in self._layout.buckets]
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

    def _signature(self, hyperparameters):
        """(digest, description) of what must be identical on every rank."""
        desc = {"optimizer": f"{self.optimizer_class.__module__}."
                             f"{self.optimizer_class.__qualname__}",
                "hyperparameters": {k: _describe(v) for k, v in sorted(hyperparameters.items())},
                "groups": [{k: _describe(v) for k, v in sorted(spec.items())}
                           for spec, _ in self._specs],
                "params": [[g, p.dtype.name, list(p.shape),
                            hashlib.sha256(memoryview(p).cast("B")).hexdigest()[:32]
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
        """Bytes of optimizer state held by this rank (its shard; params not counted)."""
        total = 0
        for inner in self._inner:
            for st in inner.state_dict()["state"]:
                total += sum(a.nbytes for a in st.values())
        return total

    def shard_elements(self):
        """Elements of each (group, dtype) range this rank owns: [(group, dtype, mine, total)]."""
        return [(g, np.dtype(dt).name, cuts[self.rank + 1] - cuts[self.rank], cuts[-1])
                for g, dt, _, cuts in self._layout.ranges]

    # -- the step ------------------------------------------------------------------------

    def _buffer(self, name, slot, size, dtype):
        key = (name, slot, np.dtype(dtype).str)
        buf = self._buffers.get(key)
        if buf is None or buf.size < size:
            buf = self._buffers[key] = np.empty(size, dtype=dtype)
        return buf[:size]

    def _check_grads(self, grads):
        grads = param_checks.grad_list(grads, "ShardedOptimizer.step()")
        if len(grads) != len(self._params):
            raise ValueError(f"ShardedOptimizer.step(): got {len(grads)} grads for "
                             f"{len(self._params)} params; pass one grad per param, in order")
        flat = []
        for i, (g, p) in enumerate(zip(grads, self._params)):
            if not isinstance(g, np.ndarray):
                raise TypeError(f"ShardedOptimizer.step(): grads[{i}] must be a numpy.ndarray, "
                                f"got {type(g).__name__}")
            if g.dtype != p.dtype or g.shape != p.shape:
                raise ValueError(f"ShardedOptimizer.step(): grads[{i}] is {g.dtype} {g.shape}, "
                                 f"params[{i}] is {p.dtype} {p.shape}; pass one grad per "
                                 f"param, of the same shape and dtype")
            flat.append(g.reshape(-1))
        return flat

    def step(self, grads, *, clip_norm=None, skip_nonfinite=False):
        """One step with this rank's `grads` (one array per param, in order). Collective.

        clip_norm / skip_nonfinite as for the single-process optimizer, on the averaged
        grads; every rank takes the same decision. Returns True if the step was applied.
        The caller's grads are never written.
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
        args = None if error else [None if clip_norm is None else float(clip_norm),
                                   bool(skip_nonfinite), self.step_count]
        seen = agree(self.comm, error, self.timeout, "step", payload=args)
        if any(a != seen[0] for a in seen):
            raise DistributedError("ShardedOptimizer.step(): the ranks disagree on (clip_norm, "
                                   "skip_nonfinite, step_count): "
                                   + ", ".join(f"rank {r}: {tuple(a)}" for r, a in enumerate(seen)))
        return self._step(flat, clip_norm, bool(skip_nonfinite))

    def _step(self, flat, clip_norm, skip_nonfinite):
        MPI = import_mpi()
        comm, rank, world, timeout = self.comm, self.rank, self.world_size, self.timeout
        buckets = self._layout.buckets
        pending = {}   # (kind, bucket) -> request
        needs_norm = clip_norm is not None or skip_nonfinite

        def start_reduce(b):
            bucket = buckets[b]
            send = self._buffer("send", b % 2, bucket.size, bucket.dtype)
            at = 0
            for r in range(world):
                for p in bucket.pieces[r]:
                    send[at:at + p.size] = flat[p.index][p.start:p.stop]
                    at += p.size
            mine = bucket.counts[rank]
            recv = self._buffer("recv", b % 2, world * mine, bucket.dtype)
            t = mpi_type(bucket.dtype)
            pending["reduce", b] = comm.Ialltoallv(
                [send, bucket.counts, bucket.displs, t],
                [recv, [mine] * world, [q * mine for q in range(world)], t])

        def finish_reduce(b):
            bucket = buckets[b]
            wait(pending.pop(("reduce", b)), timeout, "step (gradient reduction)", keep=self)
            mine = bucket.counts[rank]
            recv = self._buffer("recv", b % 2, world * mine, bucket.dtype)
            out = self._shard[b]
            if world == 1:
                out[...] = recv
            else:
                np.add(recv[:mine], recv[mine:2 * mine], out=out)
                for q in range(2, world):
                    np.add(out, recv[q * mine:(q + 1) * mine], out=out)
            np.divide(out, bucket.dtype.type(world), out=out)

        def local_grads(b):
            if self.average:
                return self._split(buckets[b], self._shard[b])
            return self._views(buckets[b], flat)

        def start_gather(b):
            bucket = buckets[b]
            pieces = bucket.pieces[rank]
            if len(pieces) == 1:
                p = pieces[0]
                send = self._flat[p.index][p.start:p.stop]
            else:
                send = self._shard[b]
                for dst, src in zip(self._split(bucket, send), self._views(bucket, self._flat)):
                    dst[...] = src
            recv = self._buffer("gather", b % 2, bucket.size, bucket.dtype)
            t = mpi_type(bucket.dtype)
            pending["gather", b] = comm.Iallgatherv([send, t],
                                                    [recv, bucket.counts, bucket.displs, t])

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
            if scale != 1.0:
                if not self.average:   # never write the caller's grads
                    staged = self._split(buckets[b], self._shard[b])
                    for dst, src in zip(staged, grads_b):
                        dst[...] = src
                    grads_b = staged
                s = buckets[b].dtype.type(scale)
                for g in grads_b:
                    np.multiply(g, s, out=g)
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

    def consolidated_state_dict(self, root=0):
        """On `root`: the state dict a single-process optimizer_class would have (the same
        keys, values and arrays); None on the other ranks. Collective. Gathered bucket by
        bucket and buffer by buffer: no rank but root ever holds more than its own shard
        plus one bucket's buffer."""
        if isinstance(root, bool) or not isinstance(root, numbers.Integral) \
                or not 0 <= root < self.world_size:
            raise ValueError(f"ShardedOptimizer.consolidated_state_dict(): root must be a rank "
                             f"in [0, {self.world_size}), got {root!r}")
        inner_sds = [inner.state_dict() for inner in self._inner]
        full = None
        if self.rank == root:
            full = [dict() for _ in self._params]
        for b, bucket in enumerate(self._layout.buckets):
            st = inner_sds[b]["state"]
            names = list(st[0]) if st else []
            for name in names:
                send = np.concatenate([s[name].reshape(-1) for s in st]) if len(st) > 1 \
                    else st[0][name].reshape(-1)
                t = mpi_type(bucket.dtype)
                if self.rank == root:
                    recv = np.empty(bucket.size, dtype=bucket.dtype)
                    req = self.comm.Igatherv([send, t], [recv, bucket.counts, bucket.displs, t],
                                             root=root)
                else:
                    recv = None
                    req = self.comm.Igatherv([send, t], None, root=root)
                wait(req, self.timeout, "consolidated_state_dict", keep=(send, recv))
                if self.rank != root:
                    continue
                for r in range(self.world_size):
                    at = bucket.displs[r]
                    for p in bucket.pieces[r]:
                        arr = full[p.index].get(name)
                        if arr is None:
                            arr = full[p.index][name] = np.zeros(self._params[p.index].shape,
                                                                 dtype=bucket.dtype)
                        arr.reshape(-1)[p.start:p.stop] = recv[at:at + p.size]
                        at += p.size
        if self.rank != root:
            return None
        sd = dict(inner_sds[0])
        groups = []
        for g in range(len(self._specs)):
            group = dict(inner_sds[self._group_inner[g]]["groups"][0])
            group["params"] = [i for i, gi in enumerate(self._group_of) if gi == g]
            groups.append(group)
        sd["groups"] = groups
        sd["params"] = [{"shape": list(p.shape), "dtype": p.dtype.name} for p in self._params]
        sd["state"] = full
        return sd

    def inner_state_dicts(self, state_dict, piece_array):
        """Per bucket, the inner optimizer's state dict for this rank's pieces, built from a
        single-process-format `state_dict` whose arrays are read through
        piece_array(param index, name, start, stop) -> 1-D array."""
        out = []
        for b, bucket in enumerate(self._layout.buckets):
            g = bucket.group
            members = [i for i in range(len(self._params))
                       if self._group_of[i] == g and self._params[i].dtype == bucket.dtype]
            names = list(state_dict["state"][members[0]])
            pieces = bucket.pieces[self.rank]
            group = dict(state_dict["groups"][g])
            if pieces:
                params = [{"shape": [p.size], "dtype": bucket.dtype.name} for p in pieces]
                state = [{name: piece_array(p.index, name, p.start, p.stop) for name in
                          state_dict["state"][p.index]} for p in pieces]
            else:
                params = [{"shape": [0], "dtype": bucket.dtype.name}]
                state = [{name: np.empty(0, dtype=bucket.dtype) for name in names}]
            group["params"] = list(range(len(params)))
            sd = {k: v for k, v in state_dict.items() if k not in ("groups", "params", "state")}
            sd.update(groups=[group], params=params, state=state)
            out.append(sd)
        return out

    def _check_full(self, state_dict):
        """Structural checks of a single-process state dict against this optimizer."""
        owner = "ShardedOptimizer.load_state_dict()"
        if not isinstance(state_dict, dict):
            raise ValueError(f"{owner}: expected a state dict, got {type(state_dict).__name__}")
        expected = self._inner[0].state_dict()
        for key in ("format", "version", "optimizer"):
            if state_dict.get(key) != expected.get(key):
                raise ValueError(f"{owner}: {key} is {state_dict.get(key)!r}, this optimizer's "
                                 f"is {expected.get(key)!r}")
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
        for i, (info, st, p) in enumerate(zip(params, state, self._params)):
            if not isinstance(info, dict) or tuple(info.get("shape", ())) != p.shape \
                    or info.get("dtype") != p.dtype.name:
                raise ValueError(f"{owner}: params[{i}] was {info}, is {p.dtype.name} {p.shape}")
            if isinstance(st, list):     # names only (a checkpoint index)
                continue
            if not isinstance(st, dict):
                raise ValueError(f"{owner}: state of params[{i}] is not a dict")
            for name, arr in st.items():
                if not isinstance(arr, np.ndarray) or arr.shape != p.shape or arr.dtype != p.dtype:
                    raise ValueError(f"{owner}: params[{i}] state {name!r} is not a "
                                     f"{p.dtype} {p.shape} array")

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
        rank before anything changes. Params are not part of a state dict."""
        error, sds = None, None
        try:
            self._check_full(state_dict)
            sds = self.inner_state_dicts(
                state_dict, lambda i, name, a, b: state_dict["state"][i][name].reshape(-1)[a:b])
        except (TypeError, ValueError, KeyError) as exc:
            error = exc if not isinstance(exc, KeyError) else ValueError(
                f"ShardedOptimizer.load_state_dict(): malformed state dict ({exc})")
        agree(self.comm, error, self.timeout, "load_state_dict")
        self._load_inner(sds, "load_state_dict")

    def gather_params(self):
        """Make every rank's params equal to the owners' pieces (after a load). Collective."""
        for b, bucket in enumerate(self._layout.buckets):
            pieces = bucket.pieces[self.rank]
            send = np.concatenate([self._flat[p.index][p.start:p.stop] for p in pieces]) \
                if pieces else np.empty(0, dtype=bucket.dtype)
            recv = np.empty(bucket.size, dtype=bucket.dtype)
            t = mpi_type(bucket.dtype)
            wait(self.comm.Iallgatherv([send, t], [recv, bucket.counts, bucket.displs, t]),
                 self.timeout, "parameter gather", keep=(send, recv))
            for r in range(self.world_size):
                at = bucket.displs[r]
                for p in bucket.pieces[r]:
                    self._flat[p.index][p.start:p.stop] = recv[at:at + p.size]
                    at += p.size

    # -- checkpoint interface (lrcore.distributed.save / load) ---------------------------

    def checkpoint_parts(self):
        """What `lrcore.distributed.save` writes, as (arrays, state_dict, layout):
        `arrays` is this rank's file, per bucket b each state buffer `"{b}/{name}"` and the
        params `"{b}/param"` over this rank's pieces, concatenated; `state_dict` is the
        single-process state dict without arrays (groups, each param's shape and dtype, the
        names of its state buffers); `layout[r][b]` lists rank r's pieces of bucket b as
        [param index, start, stop]. Not collective."""
        inner_sds = [inner.state_dict() for inner in self._inner]
        arrays = {}
        for b, bucket in enumerate(self._layout.buckets):
            st = inner_sds[b]["state"]
            for name in st[0]:
                arrays[f"{b}/{name}"] = np.concatenate([s[name].reshape(-1) for s in st])
            arrays[f"{b}/param"] = np.concatenate(self._views(bucket, self._flat))
        sd = {k: v for k, v in inner_sds[0].items() if k not in ("groups", "params", "state")}
        sd["groups"] = []
        for g in range(len(self._specs)):
            group = dict(inner_sds[self._group_inner[g]]["groups"][0])
            group["params"] = [i for i, gi in enumerate(self._group_of) if gi == g]
            sd["groups"].append(group)
        sd["params"] = [{"shape": list(p.shape), "dtype": p.dtype.name} for p in self._params]
        names = [None] * len(self._params)
        for b, bucket in enumerate(self._layout.buckets):
            for i in range(len(self._params)):
                if self._group_of[i] == bucket.group and self._params[i].dtype == bucket.dtype:
                    names[i] = list(inner_sds[b]["state"][0])
        sd["state"] = names
        layout = [[[[p.index, p.start, p.stop] for p in bucket.pieces[r]]
                   for bucket in self._layout.buckets] for r in range(self.world_size)]
        return arrays, sd, layout

    def checkpoint_loader(self, state_dict, piece):
        """Check a checkpoint's array-free `state_dict` (see checkpoint_parts) against this
        optimizer and read this rank's part through `piece(i, name, start, stop, dtype)`
        (elements [start, stop) of param i's buffer `name`, 'param' for the param). Returns
        what `restore_checkpoint` applies; changes nothing. Not collective."""
        self._check_full(state_dict)
        sds = self.inner_state_dicts(
            state_dict, lambda i, name, a, b: piece(i, name, a, b, self._params[i].dtype))
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
        self.gather_params()

    def __repr__(self):
        return (f"ShardedOptimizer({self.optimizer_class.__name__}, rank={self.rank}, "
                f"world_size={self.world_size}, step={self.step_count}, "
                f"params={len(self._params)}, buckets={len(self._layout.buckets)})")
