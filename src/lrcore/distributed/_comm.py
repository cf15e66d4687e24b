"""MPI plumbing for lrcore.distributed: the lazy mpi4py import, waits bounded by a timeout,
and the agreement by which an error on one rank becomes an error on every rank.

Design: every blocking point of a collective operation in this package is a non-blocking
request polled with `wait` (MPI's own Wait cannot be interrupted), so a rank whose peer died
or stopped calling raises DistributedError after `timeout` seconds instead of hanging. An
error seen by one rank before any data moves is shared with `agree`: one small all-gather of a
fixed-size status record, after which every rank raises.
"""
import json
import os
import time

import numpy as np

__all__ = ["DistributedError", "import_mpi", "wait", "agree", "yield_cpu", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 120.0   # seconds a rank waits for its peers before it gives up
_RECORD = 1024            # bytes of one rank's status record in `agree`


class DistributedError(RuntimeError):
    """Another rank failed, the ranks disagree, or a peer did not answer within the timeout.

    `failed` maps rank -> that rank's message (empty when the cause is a timeout)."""

    def __init__(self, message, failed=None):
        super().__init__(message)
        self.failed = dict(failed or {})


def import_mpi():
    """mpi4py's MPI module, or an ImportError naming the install command."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(f"lrcore.distributed needs mpi4py and an MPI library ({exc}); "
                          f"install them with: pip install \"lrcore[mpi]\"") from None
    return MPI


def mpi_type(dtype):
    """The MPI datatype that carries `dtype`'s elements (bfloat16 and float16 as their 16-bit
    patterns: use `wire` for the array); MPI never does arithmetic on them here."""
    MPI = import_mpi()
    dtype = np.dtype(dtype)
    if dtype.kind != "i" and dtype.itemsize == 2:      # float16, ml_dtypes.bfloat16
        return MPI.UINT16_T
    return {np.dtype(np.float32): MPI.FLOAT, np.dtype(np.float64): MPI.DOUBLE,
            np.dtype(np.uint8): MPI.BYTE, np.dtype(np.int64): MPI.INT64_T}[dtype]


def wire(array):
    """A 1-d array as MPI can send or receive it: bfloat16 / float16 as a uint16 view (numpy
    exports no buffer of ml_dtypes' types), others as they are."""
    if array.dtype.kind != "i" and array.dtype.itemsize == 2:
        return array.view(np.uint16)
    return array


def yield_cpu():
    """Give the CPU to another runnable thread, if any (sched_yield, not a timed sleep)."""
    if _sched_yield is not None:
        _sched_yield()
    else:
        time.sleep(0)


_sched_yield = getattr(os, "sched_yield", None)
_ABANDONED = []   # requests given up after a timeout, with their buffers: MPI may still write them


def wait(request, timeout, what, keep=None):
    """Complete `request`, polling; DistributedError if it takes longer than `timeout` s.

    On a timeout the request and `keep` (the object owning its buffers) stay referenced for
    the life of the process: a late peer may still complete the transfer into them."""
    if request.Test():
        return
    start = time.monotonic()
    # Test() is what moves a non-blocking collective forward (MPICH has no progress thread
    # by default), so poll it back to back as MPI's own Wait spins, but yield the CPU
    # between tests (sched_yield: free when the core is ours, fair when ranks share cores)
    while not request.Test():
        yield_cpu()
        if time.monotonic() - start > timeout:
            _ABANDONED.append((request, keep))
            raise DistributedError(
                f"lrcore.distributed: no answer from the other ranks for {timeout:g} s during "
                f"{what}; a rank failed or stopped calling. This communicator cannot be used "
                f"again: end the program (python -m mpi4py aborts every rank on an uncaught "
                f"exception)")


def agree(comm, error, timeout, what, payload=None):
    """Exchange (error message or None, payload) with every rank; returns the payloads.

    If any rank reports an error, every rank raises: the failing rank re-raises its own
    exception (`error`), the others DistributedError naming the rank and its message.
    Payloads (JSON-able, small) that differ are returned for the caller to compare."""
    MPI = import_mpi()
    msg = None if error is None else f"{type(error).__name__}: {error}"
    record = json.dumps({"error": msg, "payload": payload}).encode("utf-8")
    if len(record) > _RECORD:
        record = json.dumps({"error": (msg or "")[:_RECORD // 2] + "...",
                             "payload": None, "overflow": True}).encode("utf-8")
    send = np.zeros(_RECORD, dtype=np.uint8)
    send[:len(record)] = np.frombuffer(record, dtype=np.uint8)
    recv = np.zeros(_RECORD * comm.Get_size(), dtype=np.uint8)
    wait(comm.Iallgather([send, MPI.BYTE], [recv, MPI.BYTE]), timeout, what, keep=(send, recv))
    records = [json.loads(bytes(r).rstrip(b"\0").decode("utf-8"))
               for r in recv.reshape(comm.Get_size(), _RECORD)]
    failed = {r: rec["error"] for r, rec in enumerate(records) if rec["error"] is not None}
    if failed:
        if error is not None:
            raise error
        first = min(failed)
        more = f" (and {len(failed) - 1} more rank(s))" if len(failed) > 1 else ""
        raise DistributedError(f"lrcore.distributed: rank {first} failed during {what}: "
                               f"{failed[first]}{more}", failed)
    if any(rec.get("overflow") for rec in records):
        raise DistributedError(f"lrcore.distributed: a status record during {what} exceeded "
                               f"{_RECORD} bytes")
    return [rec["payload"] for rec in records]


def allgather_bytes(comm, data, timeout, what):
    """Every rank's `data` (bytes), in rank order."""
    MPI = import_mpi()
    size = comm.Get_size()
    n = np.array([len(data)], dtype=np.int64)
    counts = np.zeros(size, dtype=np.int64)
    wait(comm.Iallgather([n, MPI.INT64_T], [counts, MPI.INT64_T]), timeout, what,
         keep=(n, counts))
    displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
    recv = np.zeros(int(counts.sum()), dtype=np.uint8)
    wait(comm.Iallgatherv([np.frombuffer(data, dtype=np.uint8), MPI.BYTE],
                          [recv, counts.tolist(), displs.tolist(), MPI.BYTE]), timeout, what,
         keep=(data, recv))
    return [bytes(recv[d:d + c]) for d, c in zip(displs.tolist(), counts.tolist())]
