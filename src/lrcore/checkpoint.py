"""Checkpoint files: atomic, checksummed, and never executing code when loaded (no pickle).

Layout of a file (all integers little-endian):
    b"LRCORE\\x00\\x01"       magic (8 bytes; the last byte is the container version)
    u64 header length, then the header: UTF-8 JSON {"meta": ..., "arrays": [{"name",
        "dtype", "shape", "offset", "nbytes"}]}, offsets relative to the data start
    array data, each array aligned to 64 bytes
    32-byte SHA-256 of everything before it
`write` goes to a temporary file in the same directory, flushes, fsyncs and renames it
over the target, so a crash mid-save leaves the previous checkpoint intact. `read`
verifies size, checksum and header before building any array.

`save(path, optimizer, params=None)` / `load(path, optimizer, params=None)` store an
optimizer's `state_dict()` plus its parameters (and optionally more arrays).
"""
import hashlib
import json
import os
import struct
import tempfile

import numpy as np

__all__ = ["save", "load", "write", "read", "CheckpointError"]

MAGIC = b"LRCORE\x00\x01"
_ALIGN = 64
_DTYPES = {"<f4", "<f8", "<i8", "<u8", "<i4", "<u4", "|u1", "|i1", "|b1", "<f2", "<i2", "<u2"}


class CheckpointError(ValueError):
    """A checkpoint file is truncated, corrupt, or does not fit what it is loaded into."""


def _pad(n):
    return (-n) % _ALIGN


def write(path, arrays, meta):
    """Atomically write `arrays` (name -> numpy array) and JSON-able `meta` to `path`."""
    path = os.fspath(path)
    entries, offset = [], 0
    prepared = []
    for name, arr in arrays.items():
        a = np.asarray(arr, order="C")   # (not ascontiguousarray: it makes 0-d arrays 1-d)
        if a.dtype.byteorder == ">" or a.dtype.str not in _DTYPES:
            a = a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a
        if a.dtype.str not in _DTYPES:
            raise TypeError(f"checkpoint: array {name!r} has dtype {a.dtype}, which cannot be "
                            f"stored (numbers and booleans only)")
        offset += _pad(offset)
        entries.append({"name": str(name), "dtype": a.dtype.str, "shape": list(a.shape),
                        "offset": offset, "nbytes": int(a.nbytes)})
        prepared.append((offset, a))
        offset += a.nbytes
    header = json.dumps({"meta": meta, "arrays": entries}, allow_nan=True).encode("utf-8")
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".lrcore-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            digest = hashlib.sha256()

            def emit(b):
                f.write(b)
                digest.update(b)
            emit(MAGIC)
            emit(struct.pack("<Q", len(header)))
            emit(header)
            emit(b"\0" * _pad(len(MAGIC) + 8 + len(header)))
            pos = 0
            for off, a in prepared:
                emit(b"\0" * (off - pos))
                emit(memoryview(a).cast("B") if a.nbytes else b"")
                pos = off + a.nbytes
            f.write(digest.digest())
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp's 0600 would outlive the rename
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def read(path):
    """Read a file written by `write`: returns (arrays, meta). Raises CheckpointError on a
    truncated, corrupt or tampered file, FileNotFoundError if it does not exist."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        blob = f.read()
    where = f"checkpoint {path!r}"
    if len(blob) < len(MAGIC) + 8 + 32:
        raise CheckpointError(f"{where} is truncated or not an lrcore checkpoint "
                              f"({len(blob)} bytes)")
    if blob[:6] != MAGIC[:6]:
        raise CheckpointError(f"{where} is not an lrcore checkpoint (bad magic bytes)")
    if blob[:8] != MAGIC:
        raise CheckpointError(f"{where} uses container version {blob[7]}, this lrcore reads "
                              f"version {MAGIC[7]}")
    body, stored = blob[:-32], blob[-32:]
    if hashlib.sha256(body).digest() != stored:
        raise CheckpointError(f"{where} is truncated or corrupt (checksum mismatch)")
    (hlen,) = struct.unpack_from("<Q", body, 8)
    start = len(MAGIC) + 8
    if start + hlen > len(body):
        raise CheckpointError(f"{where} is corrupt (header runs past the end)")
    try:
        header = json.loads(body[start:start + hlen].decode("utf-8"))
        entries, meta = header["arrays"], header["meta"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{where} has a corrupt header: {exc}") from None
    data = start + hlen + _pad(start + hlen)
    arrays = {}
    for e in entries:
        try:
            name, shape = e["name"], tuple(int(s) for s in e["shape"])
            off, nbytes = int(e["offset"]), int(e["nbytes"])
            if not isinstance(e["dtype"], str) or e["dtype"] not in _DTYPES:
                raise CheckpointError(f"{where}: array {name!r} has unsupported dtype "
                                      f"{e['dtype']!r}")
            dtype = np.dtype(e["dtype"])
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"{where} has a corrupt array entry: {exc}") from None
        if any(s < 0 for s in shape):
            raise CheckpointError(f"{where}: array {name!r} has a negative dimension {shape}")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count * dtype.itemsize != nbytes or off < 0 or data + off + nbytes > len(body):
            raise CheckpointError(f"{where}: array {name!r} does not fit the file")
        arrays[name] = np.frombuffer(body, dtype=dtype, count=count,
                                     offset=data + off).reshape(shape).copy()
    return arrays, meta


def _split_state(sd):
    """state_dict -> (JSON meta, arrays)."""
    arrays = {}
    meta = {k: v for k, v in sd.items() if k != "state"}
    meta["state"] = []
    for i, st in enumerate(sd["state"]):
        names = []
        for name, arr in st.items():
            arrays[f"state/{i}/{name}"] = arr
            names.append(name)
        meta["state"].append(names)
    return meta, arrays


def _join_state(meta, arrays, where):
    sd = {k: v for k, v in meta.items() if k != "state"}
    try:
        sd["state"] = [{name: arrays[f"state/{i}/{name}"] for name in names}
                       for i, names in enumerate(meta["state"])]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{where}: optimizer state is incomplete ({exc})") from None
    return sd


def _as_named(params, what):
    if params is None:
        return {}
    if isinstance(params, np.ndarray):
        return {"0": params}
    if isinstance(params, dict):
        return {str(k): v for k, v in params.items()}
    return {str(i): p for i, p in enumerate(params)}


def save(path, optimizer, params=None, meta=None):
    """Write optimizer.state_dict(), the optimizer's parameters and optionally more arrays
    (`params`: an array, a list, or a dict of name -> array) to one file, atomically."""
    meta_sd, arrays = _split_state(optimizer.state_dict())
    for i, p in enumerate(optimizer.params):
        arrays[f"param/{i}"] = p
    extra = _as_named(params, "params")
    for name, arr in extra.items():
        arrays[f"extra/{name}"] = np.asarray(arr)
    write(path, arrays, {"kind": "lrcore.checkpoint", "optimizer": meta_sd,
                         "extra": list(extra), "user": meta})


def load(path, optimizer, params=None):
    """Restore a file written by `save` into `optimizer` (state, hyperparameters, step) and
    its parameters, and into `params` if given (same structure as when saved), in place.
    Everything is checked before anything changes. Returns the `meta` given to save."""
    arrays, meta = read(path)
    where = f"checkpoint {os.fspath(path)!r}"
    if not isinstance(meta, dict) or meta.get("kind") != "lrcore.checkpoint" \
            or not isinstance(meta.get("optimizer"), dict) \
            or not isinstance(meta["optimizer"].get("state"), list) \
            or not isinstance(meta.get("extra", []), list):
        raise CheckpointError(f"{where} is not an optimizer checkpoint")
    sd = _join_state(meta["optimizer"], arrays, where)
    own = optimizer.params
    targets = []
    for i, p in enumerate(own):
        saved = arrays.get(f"param/{i}")
        if saved is None or saved.shape != p.shape or saved.dtype != p.dtype:
            got = "missing" if saved is None else f"{saved.dtype} {saved.shape}"
            raise CheckpointError(f"{where}: param {i} is {got}, expected {p.dtype} {p.shape}")
        targets.append((p, saved))
    extra = _as_named(params, "params")
    if params is not None and set(extra) != set(meta.get("extra", [])):
        raise CheckpointError(f"{where}: holds extra arrays {meta.get('extra')}, "
                              f"asked for {sorted(extra)}")
    for name, p in extra.items():
        saved = arrays.get(f"extra/{name}")
        if saved is None:
            raise CheckpointError(f"{where}: extra array {name!r} is missing from the file")
        if not isinstance(p, np.ndarray) or saved.shape != p.shape or saved.dtype != p.dtype:
            raise CheckpointError(f"{where}: extra array {name!r} is {saved.dtype} "
                                  f"{saved.shape}, the target is not")
        if not p.flags.writeable:
            raise CheckpointError(f"{where}: target for {name!r} is read-only")
        targets.append((p, saved))
    try:
        optimizer.load_state_dict(sd)   # checks everything before changing anything
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    for p, saved in targets:
        np.copyto(p, saved)
    return meta.get("user")
