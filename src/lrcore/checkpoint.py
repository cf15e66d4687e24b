"""Checkpoint files: atomic, checksummed, and never executing code when loaded (no pickle).

Layout of a file (all integers little-endian):
    b"LRCORE\\x00\\x01"       magic (8 bytes; the last byte is the container version)
    u64 header length, then the header: UTF-8 JSON {"meta": ..., "arrays": [{"name",
        "dtype", "shape", "offset", "nbytes"}]}, offsets relative to the data start
    array data, each array aligned to 64 bytes
    32-byte SHA-256 of everything before it

Design. Saving (`write`) goes to a temporary file `.lrcore-<host>-<pid>-<random>.tmp` in the
target's directory, created with mode 0o666 so that the kernel applies the umask (the
process umask is never changed), then flushed, fsynced and renamed over the target: a crash
mid-save leaves the previous checkpoint intact, and the next save into that directory
removes the temporary files of saves that died (see `_remove_stale_temps`).

Loading (`CheckpointFile`) opens without blocking and refuses anything but a regular file,
checks the size, the magic, the checksum (streamed in 1 MiB chunks) and the whole header
(unique names and JSON keys, whitelisted dtypes, integer shapes and sizes, 64-byte aligned,
in-bounds and non-overlapping entries) before it allocates anything. `load` then checks every
destination (shape, dtype, writeable) and the state dict against the optimizer (lrcore.optim's
validate-only `check`, fed stand-ins without memory), and only then reads the arrays from the
file straight into the optimizer's buffers and the caller's arrays, in one pass, and applies
the checked state. Extra memory: one 1 MiB chunk (plus one array for a destination that is not
C-contiguous). Every malformed file raises `CheckpointError` and changes nothing. What no check
can exclude: an I/O error, an interrupt (Ctrl-C) or another program writing into the file
(detected) during that final copy leaves the destinations partly written; the load raises.

`save(path, optimizer, params=None)` / `load(path, optimizer, params=None)` store an
optimizer's `state_dict()` plus its parameters (and optionally more arrays); the update
task's files (`lrcore.task.persistence`) reuse `pack_optimizer`/`OptimizerLoad`.
"""
import contextlib
import errno
import hashlib
import json
import math
import numbers
import os
import re
import socket
import stat
import struct
import sys
import time

import numpy as np

__all__ = ["save", "load", "write", "read", "read_meta", "CheckpointFile", "CheckpointError",
           "STALE_TEMP_SECONDS"]

MAGIC = b"LRCORE\x00\x01"
_PREFIX = len(MAGIC) + 8          # magic + u64 header length
_TRAILER = 32                     # SHA-256
_ALIGN = 64
_CHUNK = 1 << 20                  # bytes hashed per read
_MAX_NDIM = 64
_DTYPES = {"<f4", "<f8", "<i8", "<u8", "<i4", "<u4", "|u1", "|i1", "|b1", "<f2", "<i2", "<u2"}
_NAMED_DTYPES = ("bfloat16",)     # extension dtypes (ml_dtypes), stored by name
STEP_MAX = 2 ** 53                # the kernels' largest step number (lrcore._validate.STEP_MAX)

# A save's temporary file: ".lrcore-<host tag>-<pid>-<random>.tmp". Before lrcore 0.1.1 it
# was tempfile.mkstemp's ".lrcore-<8 random>.tmp"; both are recognised by the clean-up.
_TEMP_RE = re.compile(r"\.lrcore-(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]{1,10})-[0-9a-f]{12}\.tmp\Z")
_OLD_TEMP_RE = re.compile(r"\.lrcore-[a-z0-9_]{8}\.tmp\Z")
STALE_TEMP_SECONDS = 3600
"""A temporary file of lrcore's not written to for this long is removed by the next save into
its directory, whoever made it; one made on this machine by a process that no longer exists is
removed at once."""

_O_BINARY = getattr(os, "O_BINARY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class CheckpointError(ValueError):
    """A checkpoint file is truncated, corrupt, or does not fit what it is loaded into."""


def _dtype_code(dt):
    """The header's name for a dtype, or None if it cannot be stored."""
    if dt.str in _DTYPES:
        return dt.str
    if dt.name in _NAMED_DTYPES and dt.kind == "V" and sys.byteorder == "little":
        return dt.name
    return None


def _dtype_of(code):
    """numpy dtype for a header code (already checked to be storable)."""
    if code in _NAMED_DTYPES:
        import ml_dtypes
        return np.dtype(getattr(ml_dtypes, code))
    return np.dtype(code)


def _pad(n):
    return (-n) % _ALIGN


def _bytes_of(a):
    """A writable/readable byte memoryview over a C-contiguous array (0-d included)."""
    return memoryview(a.reshape(-1).view(np.uint8))


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _host_tag():
    """8 hex digits naming this machine and pid namespace: the pid in a temporary file's
    name is checked only where it means the same process (not across hosts sharing a
    file system, nor across containers sharing a host)."""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except (OSError, AttributeError):
        ns = ""
    return hashlib.sha256(f"{socket.gethostname()}\0{ns}".encode("utf-8", "replace")
                          ).hexdigest()[:8]


def _pid_alive(pid):
    """False only when no process `pid` exists on this machine (POSIX)."""
    if os.name != "posix":        # os.kill(pid, 0) terminates the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def _remove_stale_temps(directory):
    """Remove temporary files that lrcore saves left behind in `directory` (best effort).

    Only names lrcore makes are touched, only regular files of this user, and only stale ones:
    not written to for STALE_TEMP_SECONDS, or made on this host (same host tag in the name) by
    a process id that no longer exists. A save in flight in another process or thread is kept
    (its pid is alive and it keeps writing)."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    now, host, me = time.time(), _host_tag(), os.getpid()
    uid = os.getuid() if hasattr(os, "getuid") else None
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if m is None and _OLD_TEMP_RE.match(entry.name) is None:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or (uid is not None and st.st_uid != uid):
            continue
        stale = now - st.st_mtime > STALE_TEMP_SECONDS
        if not stale and m is not None and m["host"] == host:
            pid = int(m["pid"])
            stale = pid != me and not _pid_alive(pid)
        if stale:
            try:
                os.unlink(entry.path)
            except OSError:
                pass


def _create_temp(directory):
    """Create a new temporary file next to the target: (fd, path). Mode 0o666 less the umask,
    applied by the kernel as for any new file."""
    prefix = f".lrcore-{_host_tag()}-{os.getpid()}-"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY | _O_CLOEXEC | _O_NOFOLLOW
    for _ in range(100):
        tmp = os.path.join(directory, prefix + os.urandom(6).hex() + ".tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "could not create a temporary file", directory)


def _prepare(arrays):
    """name -> array  =>  (entries, [(offset, little-endian C-contiguous array)])."""
    entries, prepared, offset = [], [], 0
    for name, arr in arrays.items():
        a = np.asarray(arr, order="C")   # (not ascontiguousarray: it makes 0-d arrays 1-d)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        code = _dtype_code(a.dtype)
        if code is None:
            raise TypeError(f"checkpoint: array {name!r} has dtype {a.dtype}, which cannot be "
                            f"stored (numbers, bfloat16 and booleans only)")
        offset += _pad(offset)
        entries.append({"name": str(name), "dtype": code, "shape": list(a.shape),
                        "offset": offset, "nbytes": int(a.nbytes)})
        prepared.append((offset, a))
        offset += a.nbytes
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"checkpoint: array names must be unique, got {names}")
    return entries, prepared


def write(path, arrays, meta):
    """Atomically write `arrays` (name -> numpy array) and JSON-able `meta` to `path`.

    A new file gets mode 0o666 less the umask (like open()); a file replaced keeps its mode.
    Stale temporary files of killed saves in the same directory are removed first."""
    path = os.fspath(path)
    entries, prepared = _prepare(arrays)
    header = json.dumps({"meta": meta, "arrays": entries}, allow_nan=True).encode("utf-8")
    directory = os.path.dirname(os.path.abspath(path))
    _remove_stale_temps(directory)
    try:
        old_mode = os.stat(path).st_mode
        keep_mode = stat.S_IMODE(old_mode) & 0o777 if stat.S_ISREG(old_mode) else None
    except OSError:
        keep_mode = None
    fd, tmp = _create_temp(directory)
    try:
        with os.fdopen(fd, "wb") as f:
            if keep_mode is not None and hasattr(os, "fchmod") \
                    and stat.S_IMODE(os.fstat(f.fileno()).st_mode) != keep_mode:
                os.fchmod(f.fileno(), keep_mode)
            digest = hashlib.sha256()

            def emit(b):
                f.write(b)
                digest.update(b)
            emit(MAGIC)
            emit(struct.pack("<Q", len(header)))
            emit(header)
            emit(b"\0" * _pad(_PREFIX + len(header)))
            pos = 0
            for off, a in prepared:
                emit(b"\0" * (off - pos))
                emit(_bytes_of(a) if a.nbytes else b"")
                pos = off + a.nbytes
            f.write(digest.digest())
            f.flush()
            os.fsync(f.fileno())
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


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


class _Entry:
    __slots__ = ("name", "dtype", "shape", "start", "nbytes")

    def __init__(self, name, dtype, shape, start, nbytes):
        self.name, self.dtype, self.shape, self.start, self.nbytes = (name, dtype, shape,
                                                                      start, nbytes)

    def describe(self):
        return f"{self.dtype.name} {self.shape}"


def _no_duplicate_keys(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {_brief(key)}")
        out[key] = value
    return out


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _brief(x, limit=80):
    """repr of a value read from a file, cut short for an error message."""
    r = repr(x)
    return r if len(r) <= limit else r[:limit - 3] + "..."


class CheckpointFile:
    """An open, verified checkpoint: `meta`, `entries` (name -> shape and dtype) and
    `read_into` / `read_array` to copy arrays out. Use as a context manager.

    Opening checks the file completely (regular file, size, magic, checksum, header) and
    allocates nothing but the header; a file that changes while it is open is detected."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.where = f"checkpoint {self.path!r}"
        mode = os.stat(self.path).st_mode    # (a socket cannot even be opened)
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise self._not_regular()
        fd = os.open(self.path, os.O_RDONLY | _O_BINARY | _O_CLOEXEC | _O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), self.path)
            if not stat.S_ISREG(st.st_mode):
                raise self._not_regular()
            self._file = os.fdopen(fd, "rb", buffering=0)
        except BaseException:
            os.close(fd)
            raise
        self._identity = self._stat_identity(st)
        try:
            self._verify(st.st_size)
        except BaseException:
            self.close()
            raise

    def _not_regular(self):
        return CheckpointError(f"{self.where} is not a regular file (a FIFO, device or "
                               f"socket); checkpoints are read from regular files only")

    # -- context manager ------------------------------------------------------------------

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def _stat_identity(st):
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    # -- verification ---------------------------------------------------------------------

    def _corrupt(self, why):
        return CheckpointError(f"{self.where} is truncated or corrupt ({why})")

    def _read_exact(self, mv, start):
        """Fill memoryview `mv` from byte `start` of the file."""
        self._file.seek(start)
        got, n = 0, len(mv)
        while got < n:
            k = self._file.readinto(mv[got:])
            if not k:
                raise self._corrupt(f"the file ended at byte {start + got} while "
                                    f"reading {n} bytes at {start}")
            got += k

    def _verify(self, size):
        where = self.where
        if size < _PREFIX + _TRAILER:
            raise CheckpointError(f"{where} is truncated or not an lrcore checkpoint "
                                  f"({size} bytes)")
        self.size = size
        prefix = bytearray(_PREFIX)
        self._read_exact(memoryview(prefix), 0)
        if prefix[:6] != MAGIC[:6]:
            raise CheckpointError(f"{where} is not an lrcore checkpoint (bad magic bytes)")
        if prefix[:8] != MAGIC:
            raise CheckpointError(f"{where} uses container version {prefix[7]}, this lrcore "
                                  f"reads version {MAGIC[7]}")
        (hlen,) = struct.unpack_from("<Q", prefix, 8)
        body = size - _TRAILER
        if hlen > body - _PREFIX:
            raise self._corrupt(f"a header of {hlen} bytes does not fit in {size} bytes")
        header = bytearray(hlen)
        self._read_exact(memoryview(header), _PREFIX)
        # checksum over everything before the trailer, streamed
        digest = hashlib.sha256(prefix)
        digest.update(header)
        chunk = memoryview(bytearray(min(_CHUNK, max(body - _PREFIX - hlen, 1))))
        pos = _PREFIX + hlen
        while pos < body:
            part = chunk[:min(len(chunk), body - pos)]
            self._read_exact(part, pos)
            digest.update(part)
            pos += len(part)
        stored = bytearray(_TRAILER)
        self._read_exact(memoryview(stored), body)
        if digest.digest() != bytes(stored):
            raise self._corrupt("checksum mismatch")
        self._parse_header(header, hlen, body)
        self._check_bools(chunk)

    def _parse_header(self, header, hlen, body):
        where = self.where
        try:
            parsed = json.loads(header.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
        except (ValueError, RecursionError) as exc:   # UnicodeDecodeError is a ValueError
            raise CheckpointError(f"{where} has a corrupt header: "
                                  f"{type(exc).__name__}: {str(exc)[:200]}") from None
        if not isinstance(parsed, dict) or set(parsed) != {"meta", "arrays"} \
                or not isinstance(parsed["arrays"], list):
            raise CheckpointError(f"{where} has a corrupt header (expected an object with "
                                  f"'meta' and a list 'arrays')")
        self.meta = parsed["meta"]
        data = _PREFIX + hlen + _pad(_PREFIX + hlen)
        entries = {}
        for k, e in enumerate(parsed["arrays"]):
            entry = self._entry(k, e, data, body)
            if entry.name in entries:
                raise CheckpointError(f"{where}: array name {_brief(entry.name)} appears "
                                      f"twice")
            entries[entry.name] = entry
        spans = sorted((e.start, e.start + e.nbytes, e.name) for e in entries.values()
                       if e.nbytes)
        for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise CheckpointError(f"{where}: arrays {_brief(n0)} and {_brief(n1)} overlap "
                                      f"in the file (bytes {s0}..{e0} and {s1}..{e1})")
        self.entries = entries

    def _entry(self, k, e, data, body):
        where = self.where
        if not isinstance(e, dict) or set(e) != {"name", "dtype", "shape", "offset", "nbytes"}:
            raise CheckpointError(f"{where} has a corrupt array entry #{k}: expected an object "
                                  f"with name, dtype, shape, offset, nbytes")
        name, dtype, shape, off, nbytes = (e["name"], e["dtype"], e["shape"], e["offset"],
                                           e["nbytes"])
        if not isinstance(name, str):
            raise CheckpointError(f"{where} has a corrupt array entry #{k}: name "
                                  f"{_brief(name)} is not a string")
        label = _brief(name)
        if not isinstance(dtype, str) or (dtype not in _DTYPES and dtype not in _NAMED_DTYPES):
            raise CheckpointError(f"{where}: array {label} has unsupported dtype "
                                  f"{_brief(dtype)}")
        try:
            dt = _dtype_of(dtype)
        except ImportError:
            raise CheckpointError(f"{where}: array {label} has dtype {dtype}, which needs the "
                                  f"ml_dtypes package") from None
        if not isinstance(shape, list) or not all(_is_int(s) for s in shape) \
                or len(shape) > _MAX_NDIM:
            raise CheckpointError(f"{where} has a corrupt array entry for {label}: shape "
                                  f"{_brief(shape)} is not a list of at most {_MAX_NDIM} "
                                  f"integers")
        if any(s < 0 for s in shape):
            raise CheckpointError(f"{where}: array {label} has a negative dimension "
                                  f"{_brief(shape)}")
        if not _is_int(off) or not _is_int(nbytes) or off < 0 or nbytes < 0:
            raise CheckpointError(f"{where} has a corrupt array entry for {label}: offset "
                                  f"{_brief(off)} and nbytes {_brief(nbytes)} must be "
                                  f"integers >= 0")
        if math.prod(shape) * dt.itemsize != nbytes:
            raise CheckpointError(f"{where}: array {label} of shape {_brief(shape)} and dtype "
                                  f"{dtype} does not fit its {nbytes} bytes")
        if off % _ALIGN:
            raise CheckpointError(f"{where}: array {label} is at offset {off}, not a multiple "
                                  f"of {_ALIGN}")
        if data + off + nbytes > body:
            raise CheckpointError(f"{where}: array {label} ({nbytes} bytes at offset {off}) "
                                  f"does not fit the file")
        return _Entry(name, dt, tuple(shape), data + off, nbytes)

    def _check_bools(self, chunk):
        """Boolean arrays must hold bytes 0 and 1 only (numpy's bool)."""
        for e in self.entries.values():
            if e.dtype.kind != "b":
                continue
            pos, end = e.start, e.start + e.nbytes
            while pos < end:
                part = chunk[:min(len(chunk), end - pos)]
                self._read_exact(part, pos)
                if np.frombuffer(part, np.uint8).max() > 1:
                    raise CheckpointError(f"{self.where}: boolean array {e.name!r} holds bytes "
                                          f"other than 0 and 1")
                pos += len(part)

    # -- access ---------------------------------------------------------------------------

    def entry(self, name, what=None):
        """The entry `name`; CheckpointError naming `what` if the file lacks it."""
        e = self.entries.get(name)
        if e is None:
            raise CheckpointError(f"{self.where}: {what or 'array ' + repr(name)} is missing "
                                  f"from the file")
        return e

    def check_destination(self, name, dest, what=None):
        """Check that array `name` can be read into `dest` (an ndarray of the same shape and
        dtype, writeable); raises CheckpointError naming `what`, changes nothing."""
        what = what or f"array {name!r}"
        e = self.entry(name, what)
        if not isinstance(dest, np.ndarray):
            raise CheckpointError(f"{self.where}: the target for {what} is a "
                                  f"{type(dest).__name__}, not a numpy array")
        if dest.shape != e.shape or dest.dtype.newbyteorder("<") != e.dtype:
            raise CheckpointError(f"{self.where}: {what} is {e.describe()} in the file, the "
                                  f"target is {dest.dtype.name} {dest.shape}")
        if not dest.flags.writeable:
            raise CheckpointError(f"{self.where}: the target for {what} is read-only")
        return e

    def read_into(self, pairs):
        """Copy arrays from the file into destinations: `pairs` of (name, ndarray), each
        already accepted by check_destination. Reads straight into C-contiguous native
        destinations; others go through one temporary array."""
        self.check_unchanged()
        for name, dest in sorted(pairs, key=lambda nd: self.entries[nd[0]].start):
            e = self.entries[name]
            if not e.nbytes:
                continue
            if dest.flags.c_contiguous and dest.dtype == e.dtype:
                self._read_exact(_bytes_of(dest), e.start)
            else:
                tmp = np.empty(e.shape, e.dtype)
                self._read_exact(_bytes_of(tmp), e.start)
                np.copyto(dest, tmp)
        self.check_unchanged()

    def read_array(self, name, what=None):
        """A new array holding `name`."""
        e = self.entry(name, what)
        out = np.empty(e.shape, e.dtype)
        if e.nbytes:
            self._read_exact(_bytes_of(out), e.start)
        self.check_unchanged()
        return out

    def check_unchanged(self):
        """CheckpointError if the file was written to since it was opened (lrcore's own saves
        never write into an existing file: they rename a new one over it)."""
        if self._stat_identity(os.fstat(self._file.fileno())) != self._identity:
            raise CheckpointError(f"{self.where} was modified while it was being loaded")


def read(path):
    """Read a file written by `write`: returns (arrays, meta). Raises CheckpointError on a
    truncated, corrupt or tampered file, FileNotFoundError if it does not exist."""
    with CheckpointFile(path) as f:
        return {name: f.read_array(name) for name in f.entries}, f.meta


def read_meta(path):
    """The `meta` of a file written by `write`, after verifying the whole file (checksum and
    header); no array is read."""
    with CheckpointFile(path) as f:
        return f.meta


# ---------------------------------------------------------------------------------------------
# Optimizers: packing and loading shared by save/load and lrcore.task.persistence
# ---------------------------------------------------------------------------------------------


def pack_optimizer(optimizer):
    """optimizer -> (state dict without "state", [names of each param's state buffers],
    {array name: array}) with arrays "param/<i>" and "state/<i>/<buffer>"."""
    sd = optimizer.state_dict()
    arrays = {f"param/{i}": p for i, p in enumerate(optimizer.params)}
    names = []
    for i, st in enumerate(sd.pop("state")):
        names.append(list(st))
        for name, arr in st.items():
            arrays[f"state/{i}/{name}"] = arr
    return sd, names, arrays


# What a state dict decoded from a file may make load_state_dict (or a schedule's from_config)
# raise before it changes anything: reported as CheckpointError.
_STATE_DICT_ERRORS = (ValueError, TypeError, ArithmeticError, LookupError, AttributeError,
                      RecursionError)


def _state_dict_checker():
    """lrcore.optim's validate-only entry point `check(optimizer, sd) -> Checked` (whose
    `apply()` installs a checked state dict and cannot fail), or None in an lrcore without
    it (then load_state_dict is used, which checks before it applies)."""
    try:
        from .optim.state_dict import check
    except ImportError:
        return None
    return check


def lock_of(optimizer):
    """The optimizer's own lock (its steps hold it), or a no-op context."""
    return getattr(optimizer, "lock", None) or contextlib.nullcontext()


def _refused(f, opt, exc):
    if isinstance(exc, ValueError):
        return CheckpointError(f"{f.where}: {exc}")
    return CheckpointError(f"{f.where}: the saved optimizer state was refused by "
                           f"{type(opt).__name__}.load_state_dict() "
                           f"({type(exc).__name__}: {exc})")


class OptimizerLoad:
    """Loading an optimizer's state from an open CheckpointFile in two phases: the
    constructor checks everything (the file's entries against the optimizer's parameters,
    writeable parameters, the state dict against the optimizer) and changes nothing;
    `load_state` / `commit` read and write. Hold `lock_of(optimizer)` across both phases
    when other threads may step the optimizer.

    `sd` is the saved state dict without "state"; `state_names` the buffer names per param."""

    def __init__(self, f, optimizer, sd, state_names):
        self.f, self.optimizer = f, optimizer
        where = f.where
        if not isinstance(sd, dict):
            raise CheckpointError(f"{where}: the optimizer state is not an object")
        step = sd.get("step")
        if not _is_int(step) or not 0 <= step < STEP_MAX:
            raise CheckpointError(f"{where}: step must be an integer in [0, 2**53), got "
                                  f"{_brief(step)}")
        params = optimizer.params
        if not isinstance(state_names, list) or len(state_names) != len(params) or not all(
                isinstance(ns, list) and all(isinstance(n, str) for n in ns)
                and len(set(ns)) == len(ns) for ns in state_names):
            raise CheckpointError(f"{where}: the optimizer state lists buffers for "
                                  f"{len(state_names) if isinstance(state_names, list) else '?'}"
                                  f" parameters (unique names per parameter), this optimizer "
                                  f"has {len(params)} parameters")
        for i, p in enumerate(params):
            f.check_destination(f"param/{i}", p, f"param {i}")
        # the file's state_dtype against the optimizer's, equal in meaning (what each
        # param's state buffers are), before the buffers: a refusal then names state_dtype
        mismatch = _state_dtype_mismatch(optimizer, sd)
        if mismatch:
            raise CheckpointError(f"{where}: {mismatch}")
        self.state = []          # (entry name, param index, buffer name)
        self.specs = []          # per param: state-dict key -> (shape, dtype)
        for i, (p, ns) in enumerate(zip(params, state_names)):
            specs = {}
            for n in ns:
                e = f.entry(f"state/{i}/{n}", f"state {n!r} of param {i}")
                shape, dtype = specs[n] = _state_spec(optimizer, i, p, n)
                held = _held_keys(optimizer, i, n)
                if held is not None and n not in held:
                    raise CheckpointError(
                        f"{where}: the file has state {n!r} of param {i}, which this "
                        f"optimizer (state_dtype={getattr(optimizer, 'state_dtype', None)!r}) "
                        f"keeps as {sorted(held)}: was the file saved with another "
                        f"state_dtype? (state_dtype is fixed at construction)")
                if e.shape != shape or e.dtype != dtype.newbyteorder("<"):
                    raise CheckpointError(f"{where}: state {n!r} of param {i} is "
                                          f"{e.describe()}, this optimizer holds it as "
                                          f"{dtype.name} {shape}")
                self.state.append((e.name, i, n))
            self.specs.append(specs)
        self.sd, self.state_names = sd, state_names
        self.checked = None
        check = _state_dict_checker()
        if check is not None:
            # every buffer as a stand-in of the right shape and dtype, without memory: the
            # check looks at shapes and dtypes only; the data is read after it passed
            stand_in = [{n: np.broadcast_to(np.zeros((), dtype), shape)
                         for n, (shape, dtype) in specs.items()} for specs in self.specs]
            try:
                self.checked = check(optimizer, dict(sd, state=stand_in))
            except _STATE_DICT_ERRORS as exc:
                raise _refused(f, optimizer, exc) from None

    def _state_destinations(self):
        """(entry name, array) for every saved buffer: the optimizer's own buffer, or a new
        one where it has none yet (all allocated before anything is read)."""
        opt, states = self.optimizer, self.checked.states
        snapshot = getattr(opt, "snapshot", None)   # lrcore.optim.Optimizer's public view
        live = [_flat_states(st) for st in snapshot().states] if snapshot is not None else None
        for name, i, n in self.state:
            own = live[i].get(n) if live is not None else None
            if own is None or not own.flags.c_contiguous or not own.flags.writeable:
                shape, dtype = self.specs[i][n]
                own = np.empty(shape, dtype)
            states[i][n] = own
        return [(name, states[i][n]) for name, i, n in self.state]

    def load_state(self):
        """Load the optimizer's state dict (hyperparameters, schedules, step, buffers).

        With optim's two-phase interface, each buffer is read from the file straight into
        the optimizer's own buffer and the checked state dict is applied. Otherwise the
        buffers are read into new arrays (at most the state's share of the file) and handed
        to load_state_dict."""
        if self.checked is not None:
            self.f.read_into(self._state_destinations())
            self.checked.apply()
            return
        opt, f = self.optimizer, self.f
        state = [dict() for _ in self.state_names]
        for name, i, n in self.state:
            state[i][n] = f.read_array(name)
        try:
            opt.load_state_dict(dict(self.sd, state=state))
        except _STATE_DICT_ERRORS as exc:   # load_state_dict checks before it changes anything
            raise _refused(f, opt, exc) from None

    def commit(self, more=()):
        """Load the state and read the parameters and `more` (pairs of (entry name, array)
        already accepted by check_destination) from the file straight into place: one pass
        over the file in the order of its data, then the checked state dict is applied."""
        params = [(f"param/{i}", p) for i, p in enumerate(self.optimizer.params)] + list(more)
        if self.checked is not None:
            self.f.read_into(self._state_destinations() + params)
            self.checked.apply()
        else:
            self.load_state()
            self.f.read_into(params)


def _state_dtype_mismatch(optimizer, sd):
    """Why the saved state dict's state_dtype does not fit the optimizer's (lrcore.optim's
    state_dict.state_dtype_mismatch: each param's state layout is compared, so None and
    'float32' or 'bfloat16' where they mean the same load into each other), or None: also
    for a version 1 state dict (no state_dtype) or an optimizer without a rule and a
    state_dtype (its own check reports what does not fit)."""
    rule = getattr(optimizer, "rule", None)
    if rule is None or not hasattr(optimizer, "state_dtype") or sd.get("version") == 1:
        return None
    try:
        from .optim.state_dict import state_dtype_mismatch
    except ImportError:
        return None
    return state_dtype_mismatch(rule, optimizer.params, sd.get("state_dtype"),
                                optimizer.state_dtype)


def _state_spec(optimizer, i, p, key):
    """(shape, dtype) the optimizer holds state-dict key ``key`` of param i in (an 8-bit
    buffer's ``.codes`` / ``.absmax`` included); the param's own for an optimizer without
    ``state_spec``, or a key it does not know (its check reports that)."""
    spec = getattr(optimizer, "state_spec", None)
    if spec is not None:
        from .optim import precision
        found = spec(i, precision.split_key(key)[0]).get(key)
        if found is not None:
            return found
    return p.shape, p.dtype


def _held_keys(optimizer, i, key):
    """The state-dict keys under which the optimizer keeps the buffer ``key`` names (its
    ``.codes``/``.absmax`` or plain name), or None where it cannot say (no ``state_spec``,
    or a buffer name it does not have: its own check reports that)."""
    spec = getattr(optimizer, "state_spec", None)
    if spec is None:
        return None
    from .optim import precision
    try:
        return set(spec(i, precision.split_key(key)[0]))
    except (KeyError, ValueError, IndexError):
        return None


def _flat_states(states):
    from .optim import precision
    return precision.flat(states)


def _as_named(params):
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
    sd, names, arrays = pack_optimizer(optimizer)
    sd["state"] = names
    extra = _as_named(params)
    for name, arr in extra.items():
        arrays[f"extra/{name}"] = np.asarray(arr)
    write(path, arrays, {"kind": "lrcore.checkpoint", "optimizer": sd,
                         "extra": list(extra), "user": meta})


def load(path, optimizer, params=None):
    """Restore a file written by `save` into `optimizer` (state, hyperparameters, step) and
    its parameters, and into `params` if given (same structure as when saved), in place.
    The whole file and every destination are checked before anything changes; arrays are
    read from the file straight into their destinations. Returns the `meta` given to save."""
    from .optim import Optimizer
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"lrcore.load(): optimizer must be an lrcore Optimizer, got "
                        f"{type(optimizer).__name__}")
    with CheckpointFile(path) as f:
        where, meta = f.where, f.meta
        if not isinstance(meta, dict) or meta.get("kind") != "lrcore.checkpoint" \
                or not isinstance(meta.get("optimizer"), dict) \
                or not isinstance(meta["optimizer"].get("state"), list) \
                or not isinstance(meta.get("extra", []), list) \
                or not all(isinstance(x, str) for x in meta.get("extra", [])):
            raise CheckpointError(f"{where} is not an optimizer checkpoint")
        sd = dict(meta["optimizer"])
        names = sd.pop("state")
        extra = _as_named(params)
        saved_extra = meta.get("extra", [])
        if params is not None and set(extra) != set(saved_extra):
            raise CheckpointError(f"{where}: holds extra arrays {saved_extra}, asked for "
                                  f"{sorted(extra)}")
        more = []
        for name, p in extra.items():
            f.check_destination(f"extra/{name}", p, f"extra array {name!r}")
            more.append((f"extra/{name}", p))
        with lock_of(optimizer):              # no step of another thread in between
            OptimizerLoad(f, optimizer, sd, names).commit(more)
        return meta.get("user")
