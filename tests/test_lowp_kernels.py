"""Low-precision kernel calls: every rule, loop variant, layout, rounding, instruction set and
thread count equals the numpy twin (lrcore.lowp.twin_step) bit for bit; slices with
index_offset equal the whole; bad layouts and arguments raise and modify nothing."""
import ml_dtypes
import numpy as np
import pytest

import lrcore
from lrcore import kernels, lowp, reference, registry

BF16 = np.dtype(ml_dtypes.bfloat16)
DT = {"bfloat16": BF16, "float16": np.dtype(np.float16), "float32": np.dtype(np.float32)}
LAYOUTS = [tuple(l) for l in lowp.LAYOUTS if "float64" not in l and l != ("float32",) * 3]
CASES = [(s, c) for s in registry.KERNEL_SPECS for c in s.cases]


def _make(rng, spec, case, layout, n):
    pdt, gdt, sdt = (DT[d] for d in layout)
    param = rng.standard_normal(n).astype(np.float32).astype(pdt)
    grad = (rng.standard_normal(n) * 0.5).astype(np.float32).astype(gdt)
    states = {}
    for name in case.states:
        x = rng.random(n) * 0.1 if "sq" in name or "sum" in name or name in (
            "square_avg", "acc_delta") else rng.standard_normal(n) * 0.1
        states[name] = x.astype(np.float32).astype(sdt)
    if "grad_avg" in states:   # centered RMSprop: square_avg >= grad_avg**2 keeps sqrt real
        states["square_avg"] = (states["square_avg"].astype(np.float32)
                                + states["grad_avg"].astype(np.float32) ** 2).astype(sdt)
    return param, grad, states


def _run(fn, spec, case, bufs, step, **kw):
    param, grad, states = bufs
    fn(param, grad, **states, lr=spec.lr, step=step, **case.hyper, **kw)


def _copy(bufs):
    return bufs[0].copy(), bufs[1].copy(), {k: v.copy() for k, v in bufs[2].items()}


def _assert_same(a, b):
    for x, y in zip([a[0]] + list(a[2].values()), [b[0]] + list(b[2].values())):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))


def _twin(spec):
    ref = getattr(reference, spec.name)
    names = ["param", "grad"] + list(spec.states)

    def fn(param, grad, lr, step, rounding="nearest", seed=0, index_offset=0, num_threads=None,
           **kw):
        states = [kw.pop(s, None) for s in spec.states]
        for s, h in (("momentum_buffer", "momentum"),):
            if s in spec.states and not kw.get(h, 0) > 0:
                states[spec.states.index(s)] = None
        lowp.twin_step(ref, names, [param, grad] + states, rounding=rounding, seed=seed,
                       index_offset=index_offset, lr=lr, step=step, **kw)
    return fn


@pytest.mark.parametrize("index", range(len(CASES)),
                         ids=[f"{s.name}-{c.name}" for s, c in CASES])
def test_native_equals_twin(isa, force_threads, index):
    """Every loop variant (registry case) in every layout with each rounding, 1 and 3
    threads, against the twin (the README: every rule, loop variant, layout and rounding)."""
    spec, case = CASES[index]
    twin = _twin(spec)
    fn = getattr(kernels, spec.name)
    for li, (layout, rounding) in enumerate((lay, r) for lay in LAYOUTS
                                            for r in ("nearest", "stochastic")):
        rng = np.random.default_rng(index * 100 + li)
        n = 1024 + 37          # three tiles of 512, the last partial; no multiple of a vector width
        bufs = _make(rng, spec, case, layout, n)
        want = _copy(bufs)
        one, many = _copy(bufs), _copy(bufs)
        for step in (1, 2):
            kw = dict(rounding=rounding, seed=2 ** 64 - 1 - step, index_offset=5 * step)
            twin(want[0], want[1], **want[2], lr=spec.lr, step=step, **case.hyper, **kw)
            _run(fn, spec, case, one, step, num_threads=1, **kw)
            _run(fn, spec, case, many, step, num_threads=3, **kw)
        _assert_same(one, want)
        _assert_same(many, want)
        assert not np.array_equal(one[0].view(np.uint8), bufs[0].view(np.uint8)), layout


# Vector widths of the fused loops: 4, 8, 16 float32 lanes (SSE, AVX2, AVX-512), 32 lanes of
# 16-bit data in a 512-bit register; n around each, plus odd sizes for the scalar tails.
SIZES = [1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 48, 49, 63, 64, 65, 95, 96, 97,
         127, 128, 129, 257]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "-".join(l))
@pytest.mark.parametrize("name", ["adam", "sgd", "lion"])
def test_sizes_around_vector_widths(isa, name, layout):
    """Every size of SIZES (roundings alternating), the rule's case with the most state
    buffers, on slices starting at every alignment (offset 0..3 into a larger buffer)."""
    spec = registry.spec(name)
    case = max(spec.cases, key=lambda c: len(c.states))
    twin, fn = _twin(spec), getattr(kernels, name)
    for i, n in enumerate(SIZES):
        for rounding in [("nearest", "stochastic")[(i + len(name)) % 2]]:
            start = n % 4
            rng = np.random.default_rng(n)
            big = _make(rng, spec, case, layout, n + start)
            bufs = (big[0][start:], big[1][start:], {k: v[start:] for k, v in big[2].items()})
            want, got = _copy(bufs), _copy(bufs)
            got = (big[0][start:], big[1][start:], {k: v[start:] for k, v in big[2].items()})
            kw = dict(rounding=rounding, seed=11, index_offset=3)
            twin(want[0], want[1], **want[2], lr=spec.lr, step=2, **case.hyper, **kw)
            fn(got[0], got[1], **got[2], lr=spec.lr, step=2, **case.hyper, **kw)
            _assert_same(got, want)


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "-".join(l))
@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop", "lion"])
def test_slices_with_index_offset_equal_the_whole(force_threads, layout, name):
    spec = registry.spec(name)
    case = max(spec.cases, key=lambda c: len(c.states))
    rng = np.random.default_rng(3)
    n = 5000
    bufs = _make(rng, spec, case, layout, n)
    whole, parts = _copy(bufs), _copy(bufs)
    kw = dict(rounding="stochastic", seed=123456789)
    fn = getattr(kernels, name)
    fn(whole[0], whole[1], **whole[2], lr=spec.lr, step=4, **case.hyper, **kw, num_threads=2)
    for lo, hi in [(0, 1000), (1000, 1001), (1001, 3333), (3333, n)]:
        fn(parts[0][lo:hi], parts[1][lo:hi], **{k: v[lo:hi] for k, v in parts[2].items()},
           lr=spec.lr, step=4, **case.hyper, index_offset=lo, **kw)
    _assert_same(parts, whole)


@pytest.mark.parametrize("layout", [l for l in LAYOUTS if l[0] != "float32"],
                         ids=lambda l: "-".join(l))
def test_index_offset_past_two_to_the_32(isa, force_threads, layout):
    """A call whose indices cross 2**32 runs in two segments, each with its keys."""
    rng = np.random.default_rng(4)
    spec, case = registry.spec("adam"), registry.spec("adam").cases[0]
    bufs = _make(rng, spec, case, layout, 3000)
    want, got = _copy(bufs), _copy(bufs)
    kw = dict(rounding="stochastic", seed=1, index_offset=2 ** 32 - 1500)
    _twin(spec)(want[0], want[1], **want[2], lr=0.1, step=2, **kw)
    kernels.adam(got[0], got[1], **got[2], lr=0.1, step=2, num_threads=3, **kw)
    _assert_same(got, want)


def test_stochastic_keeps_small_updates_nearest_loses_them():
    """SGD with an update far below half an ulp of bfloat16: nearest never moves the param,
    stochastic rounding moves it by the right amount on average."""
    n = 100_000
    p0 = np.ones(n, np.float32)
    g = np.ones(n, BF16)
    lr = 2.0 ** -12          # ulp of bfloat16 at 1 is 2**-7: the update is 1/32 of it
    near = p0.astype(BF16)
    sr = p0.astype(BF16)
    for step in range(1, 9):
        kernels.sgd(near, g, lr=lr, step=step)
        kernels.sgd(sr, g, lr=lr, step=step, rounding="stochastic", seed=9)
    assert (near.astype(np.float32) == 1.0).all()
    mean = sr.astype(np.float64).mean()
    # 8 roundings per element, each a Bernoulli draw of at most one ulp (2**-8 below 1)
    se = 2.0 ** -8 * np.sqrt(8 * 0.25 / n)
    assert abs(mean - (1.0 - 8 * lr)) < 3 * se


@pytest.mark.parametrize("bad,match,exc", [
    (dict(seed=2 ** 64), "seed must be in 0..2\\*\\*64-1", ValueError),
    (dict(seed=-1), "seed must be in 0..2\\*\\*64-1", ValueError),
    (dict(seed=1.5), "seed must be an integer", TypeError),
    (dict(rounding="down"), "rounding must be 'nearest' or 'stochastic'", ValueError),
    (dict(index_offset=-1), "index_offset must be in", ValueError),
    (dict(lr=-1.0), "lr must be", ValueError),
    (dict(beta1=1.0), "beta1 must be", ValueError),
])
def test_bad_arguments_modify_nothing(bad, match, exc):
    rng = np.random.default_rng(8)
    spec, case = registry.spec("adam"), registry.spec("adam").cases[0]
    bufs = _make(rng, spec, case, ("bfloat16",) * 3, 100)
    before = _copy(bufs)
    kw = dict(lr=1e-3, step=1, rounding="stochastic")
    kw.update(bad)
    with pytest.raises(exc, match=match):
        kernels.adam(bufs[0], bufs[1], **bufs[2], **kw)
    _assert_same(bufs, before)


@pytest.mark.parametrize("dts,match", [
    (("float16", "float16", "float16"), "float16 state is not supported"),
    (("bfloat16", "float32", "float32"), "unsupported layout param bfloat16, grad float32"),
    (("float16", "bfloat16", "float32"), "unsupported layout"),
    (("bfloat16", "bfloat16", "float64"), "unsupported layout"),
    (("float64", "bfloat16", "float64"), "unsupported layout"),
    (("float8", "bfloat16", "bfloat16"), "param has dtype float8_e4m3fn"),
    (("bfloat16", "bfloat16", "bfloat8"), "exp_avg has dtype float8_e5m2"),
])
def test_unsupported_layouts_list_the_supported_ones(dts, match):
    extra = {"float8": np.dtype(ml_dtypes.float8_e4m3fn), "bfloat8": np.dtype(ml_dtypes.float8_e5m2),
             "float64": np.dtype(np.float64)}
    p, g, s = (extra.get(d) or DT[d] for d in dts)
    param = np.ones(10, np.float32).astype(p)
    grad = np.ones(10, np.float32).astype(g)
    m, v = np.ones(10, np.float32).astype(s), np.ones(10, np.float32).astype(s)
    before = [a.copy() for a in (param, m, v)]
    with pytest.raises(TypeError, match=match) as e:
        kernels.adam(param, grad, m, v, lr=1e-3, step=1)
    if "unsupported layout" in match:
        assert "supported layouts: param float32, grad float32, state float32; " in str(e.value)
        assert "param bfloat16, grad bfloat16, state bfloat16" in str(e.value)
    for a, b in zip((param, m, v), before):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


def test_bad_buffers_modify_nothing():
    rng = np.random.default_rng(9)
    spec, case = registry.spec("adam"), registry.spec("adam").cases[0]
    p, g, st = _make(rng, spec, case, ("bfloat16",) * 3, 100)
    m, v = st["exp_avg"], st["exp_avg_sq"]
    before = [a.copy() for a in (p, m, v)]
    ro = v.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="exp_avg_sq is read-only"):
        kernels.adam(p, g, m, ro, lr=1e-3, step=1)
    with pytest.raises(ValueError, match="exp_avg must be C-contiguous"):
        kernels.adam(p, g, np.repeat(m, 2)[::2], v, lr=1e-3, step=1)
    with pytest.raises(ValueError, match="exp_avg has 99 elements"):
        kernels.adam(p, g, m[:99], v, lr=1e-3, step=1)
    with pytest.raises(ValueError, match="share memory"):
        kernels.adam(p, g, m, m, lr=1e-3, step=1)
    for a, b in zip((p, m, v), before):
        np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))


def test_float32_calls_are_unchanged():
    rng = np.random.default_rng(10)
    p = rng.standard_normal(100).astype(np.float32)
    g = rng.standard_normal(100).astype(np.float32)
    m, v = np.zeros(100, np.float32), np.zeros(100, np.float32)
    a = [x.copy() for x in (p, g, m, v)]
    kernels.adam(*a, lr=1e-3, step=1)
    b = [x.copy() for x in (p, g, m, v)]
    reference.adam(*b, lr=1e-3, step=1)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="seed must be"):
        kernels.adam(*a, lr=1e-3, step=1, seed=-5)


@pytest.mark.slow
@pytest.mark.parametrize("name, layout", [
    ("adam", ("bfloat16",) * 3), ("adam", ("bfloat16", "bfloat16", "float32")),
    ("adam", ("float32", "float16", "float32")), ("sgd", ("bfloat16",) * 3),
    ("lion", ("bfloat16",) * 3), ("sgd", ("float16", "float16", "float32"))],
    ids=lambda x: x if isinstance(x, str) else "-".join(x))
def test_large_call_with_prefetch_equals_twin(force_threads, name, layout):
    """Past 4 MiB in its widest stream a loop runs in blocks and asks for lines ahead in
    every stream (lrcore__block_lowp in lrcore_lowp.h; a hint: no effect on bits). SGD with
    momentum and Lion with weight decay: the cases with a state and a rounded store each."""
    spec = registry.spec(name)
    case = next(c for c in spec.cases if c.states and c.hyper.get("weight_decay", 0) == (
        0.01 if name == "lion" else 0.0))
    rng = np.random.default_rng(12)
    n = (1 << 21) + 1001 if layout[2] == "bfloat16" else (1 << 20) + 1001
    bufs = _make(rng, spec, case, layout, n)
    want, got = _copy(bufs), _copy(bufs)
    kw = dict(rounding="stochastic", seed=77, index_offset=0)
    _run(_twin(spec), spec, case, want, 2, **kw)
    _run(getattr(kernels, name), spec, case, got, 2, num_threads=2, **kw)
    _assert_same(got, want)


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "-".join(l))
def test_python_backend_kernels_take_the_same_layouts(layout):
    """LRCORE_BACKEND=python's kernels run the twin through the same front (checks and all)."""
    from lrcore import backend
    py = backend.implementation("python")
    spec = registry.spec("rmsprop")
    case = max(spec.cases, key=lambda c: len(c.states))
    rng = np.random.default_rng(13)
    bufs = _make(rng, spec, case, layout, 777)
    a, b = _copy(bufs), _copy(bufs)
    kw = dict(rounding="stochastic", seed=5, index_offset=9)
    _run(py.rmsprop, spec, case, a, 3, **kw)
    _run(kernels.rmsprop, spec, case, b, 3, **kw)
    _assert_same(a, b)
    with pytest.raises(ValueError, match="seed must be in"):
        _run(py.rmsprop, spec, case, a, 3, rounding="stochastic", seed=-1)


# Half-precision bit patterns that take the conversions' special branches: signalling and
# quiet NaNs with payloads, Inf, zeros, subnormals, the largest finite values.
SPECIAL_HALF = {
    "float16": [0x7C01, 0xFC01, 0x7D55, 0x7E00, 0xFE01, 0x7C00, 0xFC00, 0x0000, 0x8000,
                0x0001, 0x8001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF],
    "bfloat16": [0x7F81, 0xFF81, 0x7FA5, 0x7FC0, 0xFFC1, 0x7F80, 0xFF80, 0x0000, 0x8000,
                 0x0001, 0x8001, 0x007F, 0x0080, 0x7F7F, 0xFF7F],
}


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "-".join(l))
def test_special_values_equal_twin_and_every_isa(force_threads, layout):
    """NaN (signalling and quiet, with payloads), Inf, zeros, subnormals and the largest values
    in half-precision param and grad, scattered over 3 tiles of the float16 loops (a tile
    with none, tiles with some): every rule's cases, both roundings, every instruction set,
    equal to the twin and to each other bit for bit. (vcvtph2ps, which the avx2/avx512
    float16 loops use, quiets a signalling NaN that the integer widening keeps; the stored
    values come out of arithmetic either way.) Param and grad hold them at different
    elements: where two NaNs meet in one operation, which payload survives is up to the
    instruction and operand order, which numpy and the C loops need not share."""
    from lrcore import backend
    rng = np.random.default_rng(21)
    n = 700
    before = backend.isa() if lrcore.backend() == "native" else None
    try:
        for spec, case in CASES:
            for rounding in ("nearest", "stochastic"):
                bufs = _make(rng, spec, case, layout, n)
                pos = rng.choice(np.arange(300, n), 80, replace=False)
                for b, dt in ((0, layout[0]), (1, layout[1])):
                    if dt in SPECIAL_HALF:   # param and grad at different elements
                        at = pos[40 * b:40 * (b + 1)]
                        bufs[b].view(np.uint16)[at] = rng.choice(SPECIAL_HALF[dt], 40)
                kw = dict(rounding=rounding, seed=3, index_offset=7)
                want = _copy(bufs)
                with np.errstate(all="ignore"):
                    _run(_twin(spec), spec, case, want, 2, **kw)
                for isa in lrcore.available_isas():
                    if before is not None:
                        backend.set_isa(isa)
                    got = _copy(bufs)
                    _run(getattr(kernels, spec.name), spec, case, got, 2, num_threads=2, **kw)
                    _assert_same(got, want)
    finally:
        if before is not None:
            backend.set_isa(before)
