"""bfloat16 and float16 buffers: element types, rounding and the numpy twin of a low-precision step.

Design: every stored value is widened to float32 (exactly), the float32 rule runs exactly as
it does for float32 buffers, and each stored value (param and state, never grad) is rounded
once. This module is the executable specification of that contract, in numpy integer
arithmetic, and the compiled kernels (include/lrcore_lowp.h) reproduce it bit for bit:

- widening: bfloat16 -> float32 is a 16-bit shift; float16 -> float32 is exact (IEEE);
- ``rounding="nearest"``: round to nearest, ties to even; overflow gives Inf;
- ``rounding="stochastic"``: round away from zero with probability equal to the discarded
  fraction (in units of the target's ulp at the value's exponent, subnormals included), using
  32 random bits per element from a counter-based stream (:func:`random_bits`) keyed by
  ``(seed, step, buffer, element index)``; so results do not depend on how the work is split.
  One 32-bit hash serves two buffers: buffer 2k + 1's word is buffer 2k's rotated by 16 bits,
  so bfloat16 rounding, which adds the high 16 bits, draws the high half of the hash for the
  even buffer and the low half for the odd one (param, buffer 0, and float16, whose only
  rounded buffer is the param, use the full hash);
- NaN stays NaN (quiet, sign and top payload bits kept) and Inf stays Inf in both modes.

A layout names the dtypes of (param, grad, state); :data:`LAYOUTS` lists the supported ones.
"""
import numpy as np

try:
    import ml_dtypes as _ml
    bfloat16 = np.dtype(_ml.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is a dependency
    _ml = None
    bfloat16 = None

float16 = np.dtype(np.float16)
float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)

__all__ = ["bfloat16", "float16", "LAYOUTS", "ROUNDINGS", "layout_of", "widen", "round_nearest",
           "round_stochastic", "round_to", "random_bits", "stream_key", "check_seed",
           "check_rounding", "check_index_offset", "twin_step", "separate"]

ROUNDINGS = ("nearest", "stochastic")

#: Supported (param, grad, state) dtype names; state None: a rule call without state buffers.
LAYOUTS = (
    ("float32", "float32", "float32"),
    ("float64", "float64", "float64"),
    ("bfloat16", "bfloat16", "bfloat16"),   # (a) everything bfloat16: 14 bytes/element for Adam
    ("bfloat16", "bfloat16", "float32"),    # (b) half param and grad, float32 state
    ("float16", "float16", "float32"),      # (b)
    ("float32", "bfloat16", "float32"),     # (c) optimizer offload: half gradients
    ("float32", "float16", "float32"),      # (c)
)

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF
SEED_MAX = _M64


def _name(dt):
    dt = np.dtype(dt)
    if dt == bfloat16:
        return "bfloat16"
    return dt.name


def layouts_text():
    """The supported layouts as one line for error messages."""
    return "; ".join(f"param {p}, grad {g}, state {s}" for p, g, s in LAYOUTS)


def dtype_ok(dt):
    """Whether dt is an element type lrcore can store (float32/64, bfloat16, float16)."""
    dt = np.dtype(dt)
    return dt.isnative and (dt in (float32, float64, float16) or dt == bfloat16)


def layout_of(fn, names, arrays):
    """The (param, grad, state) dtype names of one kernel call, or TypeError naming the layout.

    names/arrays: param first, grad second, then the state buffers (None where absent). Every
    state buffer must share one dtype. Raises before anything is modified.
    """
    dts = []
    for name, a in zip(names, arrays):
        if a is None:
            dts.append(None)
            continue
        dt = getattr(a, "dtype", None)
        if dt is None:
            raise TypeError(f"{fn}(): {name} must be a numpy.ndarray, got {type(a).__name__}")
        if not dtype_ok(dt):
            raise TypeError(f"{fn}(): {name} has dtype {dt}; lrcore buffers are float32, float64, "
                            f"bfloat16 (ml_dtypes) or float16 in native byte order")
        dts.append(_name(dt))
    p, g = dts[0], dts[1]
    states = [d for d in dts[2:] if d is not None]
    if len(set(states)) > 1:
        bad = ", ".join(f"{n} {d}" for n, d in zip(names[2:], dts[2:]) if d is not None)
        raise TypeError(f"{fn}(): state buffers must share one dtype, got {bad}; supported "
                        f"layouts: {layouts_text()}")
    s = states[0] if states else None
    for lp, lg, ls in LAYOUTS:
        if (p, g) == (lp, lg) and (s is None or s == ls):
            return (p, g, s if s is not None else ls)
    what = f"param {p}, grad {g}" + (f", state {s}" if s is not None else "")
    extra = " (float16 state is not supported: squares overflow it)" if s == "float16" else ""
    raise TypeError(f"{fn}(): unsupported layout {what}{extra}; supported layouts: {layouts_text()}")


def check_rounding(fn, rounding):
    if not isinstance(rounding, str) or rounding not in ROUNDINGS:
        raise ValueError(f"{fn}(): rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    return rounding


def _integer(fn, name, x):
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"{fn}(): {name} must be an integer, got {type(x).__name__}")
    return int(x)


def check_seed(fn, seed):
    """A seed is an integer in 0..2**64-1."""
    s = _integer(fn, "seed", seed)
    if not 0 <= s <= SEED_MAX:
        raise ValueError(f"{fn}(): seed must be in 0..2**64-1, got {s}")
    return s


def check_index_offset(fn, index_offset, n):
    """index_offset (the position of element 0 in the whole buffer): 0 <= offset, offset+n <= 2**63."""
    o = _integer(fn, "index_offset", index_offset)
    if o < 0 or o + n > 2 ** 63:
        raise ValueError(f"{fn}(): index_offset must be in 0..2**63 - (number of elements), got {o}")
    return o


# ---------------------------------------------------------------------------
# The random stream
# ---------------------------------------------------------------------------

def _fmix64(k):
    """murmur3's 64-bit finaliser (a bijection with full avalanche)."""
    k &= _M64
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M64
    k ^= k >> 33
    return k


def stream_key(seed, step, buffer, hi):
    """The 32-bit key of one (seed, step, buffer, high 32 bits of the element index):
    k = fmix64(fmix64(fmix64(seed) ^ step) ^ (hi * 256 + buffer)); key = low32(k ^ (k >> 32)).
    Computed once per call (and per 2**32 elements) in C, with uint64 arithmetic."""
    k = _fmix64(seed)
    k = _fmix64(k ^ (step & _M64))
    k = _fmix64(k ^ (((hi & _M32) << 8) | (buffer & 0xFF)))
    return (k ^ (k >> 32)) & _M32


def _lowbias32(x):
    """Chris Wellons' lowbias32 integer hash on a uint32 array (a bijection)."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    x = x ^ (x >> np.uint32(16))
    return x


def random_bits(seed, step, buffer, index_offset, n):
    """The 32 random bits of elements index_offset .. index_offset + n - 1 of one buffer:
    h[i] = lowbias32(low32(index) ^ stream_key(seed, step, buffer & ~1, high32(index))),
    r[i] = h[i] for an even buffer, h[i] rotated left by 16 for an odd one (buffers 2k and
    2k + 1 share one hash; bfloat16 rounding uses the high 16 bits of r, so the two draw
    its two disjoint halves)."""
    idx = np.arange(index_offset, index_offset + n, dtype=np.uint64)
    out = np.empty(n, np.uint32)
    if n == 0:
        return out
    his = idx >> np.uint64(32)
    lo = (idx & np.uint64(_M32)).astype(np.uint32)
    for hi in np.unique(his):
        sel = his == hi
        key = np.uint32(stream_key(seed, step, buffer & ~1, int(hi)))
        with np.errstate(over="ignore"):
            out[sel] = _lowbias32(lo[sel] ^ key)
    if buffer & 1:
        out = (out << np.uint32(16)) | (out >> np.uint32(16))
    return out


# ---------------------------------------------------------------------------
# Conversions, on uint32 (float32 bits) and uint16 (half bits) arrays
# ---------------------------------------------------------------------------

def _bits32(x):
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def widen(a):
    """float32 copy of a bfloat16 / float16 / float32 array (exact). float16 NaN keeps its
    payload bits (no quieting): sign | 0x7f800000 | mantissa << 13."""
    dt = a.dtype
    if dt == float32:
        return np.array(a, np.float32)
    if dt == bfloat16:
        return (a.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
    if dt == float16:
        h = a.view(np.uint16).astype(np.uint32)
        sign = (h & np.uint32(0x8000)) << np.uint32(16)
        e = (h >> np.uint32(10)) & np.uint32(0x1F)
        m = h & np.uint32(0x3FF)
        with np.errstate(all="ignore"):
            normal = ((e + np.uint32(112)) << np.uint32(23)) | (m << np.uint32(13))
            special = np.uint32(0x7F800000) | (m << np.uint32(13))
            # subnormal: m * 2**-24, exact in float32
            sub = (m.astype(np.float32) * np.float32(2.0 ** -24)).view(np.uint32)
        u = np.where(e == 31, special, np.where(e == 0, sub, normal))
        return (u | sign).view(np.float32)
    raise TypeError(f"widen(): unsupported dtype {dt}")


def _bf16_nearest(u):
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    with np.errstate(over="ignore"):
        r = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return np.where(nan, (u >> np.uint32(16)) | np.uint32(0x40), r).astype(np.uint16)


def _bf16_stochastic(u, r):
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    inf = (u & np.uint32(0x7FFFFFFF)) == np.uint32(0x7F800000)
    with np.errstate(over="ignore"):
        t = (u + (r >> np.uint32(16))) >> np.uint32(16)
    t = np.where(inf, u >> np.uint32(16), t)
    return np.where(nan, (u >> np.uint32(16)) | np.uint32(0x40), t).astype(np.uint16)


def _f16_parts(u):
    sign = (u >> np.uint32(16)) & np.uint32(0x8000)
    a = u & np.uint32(0x7FFFFFFF)
    e = a >> np.uint32(23)
    nan = a > np.uint32(0x7F800000)
    big = (a >= np.uint32(143 << 23)) & ~nan            # |x| >= 2**16: Inf in both modes
    subn = e < np.uint32(113)                            # |x| < 2**-14: f16 subnormal or zero
    # significand M and shift sh of the subnormal branch: value / 2**-24 = M / 2**sh
    M = (a & np.uint32(0x7FFFFF)) | np.where(e != 0, np.uint32(0x800000), np.uint32(0))
    sh = np.uint32(126) - np.maximum(e, np.uint32(1))
    qnan = sign | np.uint32(0x7E00) | ((a & np.uint32(0x7FFFFF)) >> np.uint32(13))
    return sign, a, nan, big, subn, M, sh, qnan


def _f16_nearest(u):
    sign, a, nan, big, subn, M, sh, qnan = _f16_parts(u)
    with np.errstate(over="ignore"):
        norm = ((a + np.uint32(0xFFF) + ((a >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13)) \
            - np.uint32(112 << 10)
        s = np.minimum(sh, np.uint32(25))                # beyond 25 the result is 0 anyway
        half = (np.uint32(1) << (s - np.uint32(1))) - np.uint32(1)
        sub = (M + half + ((M >> s) & np.uint32(1))) >> s
    out = np.where(subn, sub, norm)
    out = np.where(big, np.uint32(0x7C00), out) | sign
    return np.where(nan, qnan, out).astype(np.uint16)


def _f16_stochastic(u, r):
    sign, a, nan, big, subn, M, sh, qnan = _f16_parts(u)
    with np.errstate(over="ignore"):
        norm = ((a + (r >> np.uint32(19))) >> np.uint32(13)) - np.uint32(112 << 10)
        # sh in 14..31: (M + r >> (32 - sh)) >> sh, i.e. (M * 2**(32-sh) + r) >> 32
        s1 = np.minimum(sh, np.uint32(31))
        sub_a = (M + (r >> (np.uint32(32) - s1))) >> s1
        # sh >= 32: Z = M >> (sh - 32) (0 once sh - 32 > 31); rounds up iff Z + r >= 2**32
        s2 = np.minimum(sh - np.minimum(sh, np.uint32(32)), np.uint32(31))
        Z = np.where(sh - np.minimum(sh, np.uint32(32)) > np.uint32(31), np.uint32(0), M >> s2)
        sub_b = (r > ~Z).astype(np.uint32)
    sub = np.where(sh >= np.uint32(32), sub_b, sub_a)
    out = np.where(subn, sub, norm)
    out = np.where(big, np.uint32(0x7C00), out) | sign
    return np.where(nan, qnan, out).astype(np.uint16)


def round_nearest(x, dtype):
    """float32 array -> dtype (bfloat16 or float16), round to nearest even."""
    u = _bits32(x)
    dtype = np.dtype(dtype)
    if dtype == bfloat16:
        return _bf16_nearest(u).view(bfloat16)
    if dtype == float16:
        return _f16_nearest(u).view(np.float16)
    raise TypeError(f"round_nearest(): dtype must be bfloat16 or float16, got {dtype}")


def round_stochastic(x, dtype, bits):
    """float32 array -> dtype with stochastic rounding, using the uint32 random `bits`."""
    u = _bits32(x)
    bits = np.asarray(bits, np.uint32)
    dtype = np.dtype(dtype)
    if dtype == bfloat16:
        return _bf16_stochastic(u, bits).view(bfloat16)
    if dtype == float16:
        return _f16_stochastic(u, bits).view(np.float16)
    raise TypeError(f"round_stochastic(): dtype must be bfloat16 or float16, got {dtype}")


def round_to(x, dtype, rounding="nearest", seed=0, step=1, buffer=0, index_offset=0):
    """Round the float32 array x to dtype: float32 (unchanged), bfloat16 or float16, by
    rounding; stochastic rounding draws random_bits(seed, step, buffer, index_offset, x.size)."""
    dtype = np.dtype(dtype)
    x = np.ascontiguousarray(x, np.float32).reshape(-1)
    if dtype == float32:
        return x
    if rounding == "nearest":
        return round_nearest(x, dtype)
    return round_stochastic(x, dtype, random_bits(seed, step, buffer, index_offset, x.size))


# ---------------------------------------------------------------------------
# The twin of a low-precision kernel call
# ---------------------------------------------------------------------------

def _check_buffers(fn, names, arrays):
    """Contiguity, writeability (all but grad), one size, no shared memory: what the float32
    kernel would check on the caller's arrays (it only sees the widened copies)."""
    n = arrays[0].size
    spans = []
    for b, (name, a) in enumerate(zip(names, arrays)):
        if a is None:
            continue
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{fn}(): {name} must be a numpy.ndarray, got {type(a).__name__}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{fn}(): {name} must be C-contiguous" +
                             ("" if b == 1 else " (it is updated in place, a copy would lose "
                                                "the update)"))
        if b != 1 and not a.flags.writeable:
            raise ValueError(f"{fn}(): {name} is read-only; it must be writeable")
        if a.size != n:
            raise ValueError(f"{fn}(): {name} has {a.size} elements but param has {n}; "
                             f"all buffers must have the same size")
        spans.append((name, a))
    separate(f"{fn}()", spans, "every buffer")


def separate(where, named, what):
    """Sorted (start, end, name) of the memory of the arrays in `named` ((name, array)
    pairs, C-contiguous; empty ones left out), or ValueError "<where>: <a> and <b> share
    memory; <what> must be a separate array" naming two that overlap."""
    spans = []
    for name, a in named:
        if a.nbytes:
            start = a.__array_interface__["data"][0]
            spans.append((start, start + a.nbytes, name))
    spans.sort()
    for (a0, a1, na), (b0, b1, nb) in zip(spans, spans[1:]):
        if b0 < a1:
            raise ValueError(f"{where}: {na} and {nb} share memory; {what} must be a "
                             f"separate array")
    return spans


def twin_step(kernel, names, arrays, *, rounding="nearest", seed=0, index_offset=0, step, **hp):
    """One step of a float32 rule over half-precision buffers, in place: widen every buffer
    to float32, run `kernel` (a float32 kernel with the signature of lrcore.kernels') on
    the widened copies, round param and the states back once (buffer ids: param 0, the
    state buffers 1, 2, ... in kernel order, absent ones keeping their number).

    names/arrays: param, grad, then the kernel's state buffers (None where absent).
    Nothing is modified if the float32 kernel raises.
    """
    fn = getattr(kernel, "__name__", "step")
    layout_of(fn, names, arrays)
    _check_buffers(fn, names, arrays)
    rounding = check_rounding(fn, rounding)
    seed = check_seed(fn, seed)
    n = arrays[0].size if hasattr(arrays[0], "size") else 0
    index_offset = check_index_offset(fn, index_offset, n)
    wide = [None if a is None else (a if a.dtype in (float32, float64) else
                                    widen(a.reshape(-1)).reshape(a.shape))
            for a in arrays]
    kernel(*wide, step=step, **hp)
    for b, (a, w) in enumerate(zip(arrays, wide)):
        if b == 1 or a is None or w is a:
            continue
        r = round_to(w.reshape(-1), a.dtype, rounding, seed, step, 0 if b == 0 else b - 1,
                     index_offset)
        a.reshape(-1)[...] = r.view(a.dtype)


# ---------------------------------------------------------------------------
# The public kernels: float32/float64 calls go straight to the float32 kernel
# ---------------------------------------------------------------------------

_ET = {"float32": 0, "float64": 1, "bfloat16": 2, "float16": 3}   # LRCORE_ET_* (lrcore_lowp.h)
_LOWP_SET = frozenset(("rounding", "seed", "index_offset"))


def kernel(name, f32_kernel, native_run=None):
    """The kernel `name` accepting every supported layout: f32_kernel (the backend's float32/
    float64 kernel) for float32/float64 buffers, else `native_run` (lrcore._core.lowp_run) or,
    for the numpy backend (native_run None), twin_step over lrcore.reference's kernel.

    Extra keyword arguments: rounding ('nearest' or 'stochastic'), seed (0..2**64-1) and
    index_offset (where element 0 of these buffers sits in the whole buffer: a slice
    processed with its offset draws the same random bits as the whole)."""
    import inspect

    from . import reference, rules

    ref = getattr(reference, name)
    sig = inspect.signature(ref)
    buffers = [p.name for p in sig.parameters.values()
               if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    defaults = {p.name: p.default for p in sig.parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "num_threads"}
    hyper_names = {h.name for h in rules.RULES[name].hypers}
    # states present only while a hyperparameter is > 0 (momentum): the float32 kernel
    # ignores them otherwise, so the low-precision call leaves them untouched too
    when_hyper = {s.name: s.when for s in rules.RULES[name].states if s.when in hyper_names}
    nbuf = len(buffers)

    def call(*args, **kw):
        # float32/float64 param and grad without low-precision arguments: the float32 kernel
        # as before (a state buffer of another dtype is reported with the supported layouts)
        if len(args) >= 2 and not (kw.keys() & _LOWP_SET):
            try:
                fast = args[0].dtype.itemsize != 2 and args[1].dtype.itemsize != 2
            except AttributeError:
                fast = True
            if fast:
                try:
                    return f32_kernel(*args, **kw)
                except TypeError:
                    _check_layout_of_call(args, kw)
                    raise
        return _call(*args, **kw)

    def _check_layout_of_call(args, kw):
        arrays = list(args[:nbuf]) + [kw.get(b) for b in buffers[len(args):]]
        if all(a is None or isinstance(a, np.ndarray) for a in arrays):
            layout_of(name, buffers, arrays)

    def _call(*args, rounding="nearest", seed=0, index_offset=0, **kw):
        arrays = list(args[:nbuf]) + [None] * (nbuf - min(len(args), nbuf))
        for i, b in enumerate(buffers):
            if b in kw:
                if i < len(args):
                    raise TypeError(f"{name}() got multiple values for argument {b!r}")
                arrays[i] = kw.pop(b)
        if len(args) > nbuf:
            raise TypeError(f"{name}() takes {nbuf} positional arguments but {len(args)} were given")
        p = arrays[0]
        half = any(getattr(a, "dtype", None) in (bfloat16, float16) for a in arrays if a is not None)
        if not half:
            if rounding != "nearest" or seed != 0 or index_offset != 0:
                check_rounding(name, rounding)
                check_seed(name, seed)
                check_index_offset(name, index_offset, getattr(p, "size", 0))
            return f32_kernel(*arrays, **kw)
        layout = layout_of(name, buffers, arrays)
        rounding = check_rounding(name, rounding)
        seed = check_seed(name, seed)
        _check_buffers(name, buffers, arrays)
        index_offset = check_index_offset(name, index_offset, p.size)
        # every hyperparameter and buffer-presence check of the float32 kernel, on empty
        # arrays (the compiled one where there is one: ~2 us, the numpy twin's ~18 us)
        empty = [None if a is None else np.empty(0, np.float32) for a in arrays]
        (ref if native_run is None else f32_kernel)(*empty, **kw)
        hp = dict(defaults)
        hp.update(kw)
        hp.pop("num_threads", None)
        for s, h in when_hyper.items():
            if not hp.get(h, 0) > 0:
                arrays[buffers.index(s)] = None
        if native_run is None:
            twin_step(ref, buffers, arrays, rounding=rounding, seed=seed,
                      index_offset=index_offset, **hp)
            return None
        hp["step"] = int(hp["step"])
        native_run(name, arrays + [None] * (5 - len(arrays)), [_ET[t] for t in layout], hp,
                   ROUNDINGS.index(rounding), seed, index_offset, kw.get("num_threads"))
        return None

    def run_checked(arrays, hp, rounding, seed, index_offset, num_threads):
        """One call whose buffers, hyperparameters and stream arguments the caller has
        checked as `call` checks them (lrcore.optim's per-param path: its layouts, memory
        and grads at construction and every step, every hyperparameter before the first
        param changes): `call` without its Python checks (~20 us per call; lrcore.backend's
        run_checked tries the kernels' compiled checks first, ~1 us).
        arrays: param, grad and the kernel's state buffers in order (None where absent or
        unused); hp: every hyperparameter by name, step included."""
        arrays = list(arrays)
        key = tuple(None if a is None else a.dtype for a in arrays)
        codes = codes_of.get(key)
        if codes is None:        # a new combination of dtypes: checked once, then reused
            codes = codes_of[key] = [_ET[t] for t in layout_of(name, buffers, arrays)]
        if max(codes) < _ET["bfloat16"]:      # float32/float64 only: the float32 kernel
            return f32_kernel(*arrays, num_threads=num_threads, **hp)
        if native_run is None:
            twin_step(ref, buffers, arrays + [None] * (nbuf - len(arrays)), rounding=rounding,
                      seed=seed, index_offset=index_offset, **hp)
            return
        hp = dict(hp)
        hp["step"] = int(hp["step"])
        native_run(name, arrays + [None] * (5 - len(arrays)), codes, hp,
                   ROUNDINGS.index(rounding), seed, index_offset, num_threads)

    codes_of = {}
    call.run_checked = run_checked
    call.__name__ = call.__qualname__ = name
    call.__wrapped__ = f32_kernel
    # the signature a user sees (help, inspect) is the float32 kernel's plus the low-precision
    # keywords, on both backends alike
    try:
        f32_sig = inspect.signature(f32_kernel)
    except (TypeError, ValueError):
        f32_sig = sig
    extra = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
             for k, v in (("rounding", "nearest"), ("seed", 0), ("index_offset", 0))
             if k not in f32_sig.parameters]
    call.__signature__ = f32_sig.replace(parameters=list(f32_sig.parameters.values()) + extra)
    call.__module__ = getattr(f32_kernel, "__module__", __name__)
    call.__doc__ = (f32_kernel.__doc__ or ref.__doc__ or "") + (
        "\n    bfloat16/float16 buffers (lrcore.lowp.LAYOUTS): every value is widened to float32,"
        "\n    the float32 step runs, param and states are rounded once: rounding='nearest'"
        "\n    (ties to even) or 'stochastic' (stream keyed by seed, step, buffer and"
        "\n    index_offset + element index).\n")
    return call
