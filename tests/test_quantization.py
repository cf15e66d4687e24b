"""8-bit optimizer state (lrcore.quantization, issue 13): the map, exact nearest codes, the
fused 8-bit Adam step bit for bit against its numpy twin on every ISA and thread count."""
import numpy as np
import pytest

import lrcore
from lrcore import quantization as q

NATIVE = lrcore.backend() == "native"


# ---------------------------------------------------------------------------
# The map
# ---------------------------------------------------------------------------

def _bnb_dynamic_map(torch, signed, max_exponent_bits=7, total_bits=8):
    """bitsandbytes' create_dynamic_map recipe (functional.py), step for step in torch
    float32 (linspace, means, powers of ten), as its users get it."""
    data = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed
                             else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
        boundaries = torch.linspace(0.1, 1, fraction_items)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    assert additional_items == 0
    data.append(0)
    data.append(1.0)
    data.sort()
    return torch.tensor(data, dtype=torch.float32).numpy()


@pytest.mark.parametrize("signed", [True, False])
def test_map_equals_bitsandbytes_recipe(signed):
    torch = pytest.importorskip("torch")
    m = q.dynamic_map(signed)
    ref = _bnb_dynamic_map(torch, signed)
    assert m.dtype == np.float32 and m.shape == (256,)
    assert np.array_equal(m.view(np.uint32), ref.view(np.uint32))


def test_map_properties():
    s, u = q.dynamic_map(True), q.dynamic_map(False)
    assert (np.diff(s) > 0).all() and (np.diff(u) > 0).all()
    assert s[127] == 0 and s[-1] == 1 and u[0] == 0 and u[-1] == 1
    s[0] = 5                      # a copy: the module's map is unchanged
    assert q.dynamic_map(True)[0] != 5
    assert q.BLOCK == 256 and q.MIN_ELEMENTS == 4096


# ---------------------------------------------------------------------------
# Codes: exact nearest, ties towards zero
# ---------------------------------------------------------------------------

def _brute_force(x, signed):
    """Index of the nearest map entry to each float32 x by a search over all 256 entries
    (differences in float64, exact for the entries near x), ties to the smaller magnitude."""
    m = q.dynamic_map(signed).astype(np.float64)
    x = np.where(np.isnan(x), 0, x).astype(np.float64)
    d = np.abs(x[:, None] - m[None, :])
    best = d.min(axis=1, keepdims=True)
    cand = np.where(d == best, np.abs(m)[None, :], np.inf)
    return np.argmin(cand, axis=1).astype(np.uint8)


def _awkward(signed, rng):
    """Values over 1e-8..1 of the absmax (log-uniform), zeros, every map entry, every
    midpoint between neighbours (ties) and the float32 neighbours of each."""
    m = q.dynamic_map(signed).astype(np.float64)
    mids = ((m[:-1] + m[1:]) / 2)
    mids32 = mids.astype(np.float32)
    parts = [10.0 ** rng.uniform(-8, 0, 20000), np.zeros(10), m, mids,
             np.nextafter(mids32, np.float32(np.inf)), np.nextafter(mids32, np.float32(-np.inf)),
             np.nextafter(m.astype(np.float32), np.float32(0)), [1e-30, 1e-45, 2.0 ** -24, 1.0]]
    x = np.concatenate([np.asarray(p, dtype=np.float64) for p in parts]).astype(np.float32)
    if signed:
        x = np.concatenate([x, -x, np.float32([-0.0])])
    return x[np.abs(x) <= 1]


@pytest.mark.parametrize("signed", [True, False])
def test_encode_is_exact_nearest(signed):
    rng = np.random.default_rng(1)
    x = _awkward(signed, rng)
    ties = (x.astype(np.float64)[:, None] == ((lambda m: (m[:-1] + m[1:]) / 2)(
        q.dynamic_map(signed).astype(np.float64)))[None, :]).any(axis=1)
    assert ties.sum() > 20                       # some midpoints are float32 values
    got = q.encode(x, signed)
    assert np.array_equal(got, _brute_force(x, signed)), "mismatches against brute force"


@pytest.mark.skipif(not NATIVE, reason="compiled encoder")
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 255, 256, 257, 4096 * 3 + 13])
def test_native_quantize_equals_numpy(isa, signed, n):
    rng = np.random.default_rng(n)
    pool = _awkward(signed, rng)
    scale = np.float32(10.0) ** rng.integers(-30, 30, size=-(-n // q.BLOCK))
    x = (rng.choice(pool, n) * np.repeat(scale, q.BLOCK)[:n]).astype(np.float32)
    if n > 300:
        x[256:512] = 0                            # an all-zero block
        x[600] = np.nan                           # a NaN block
        x[900] = -np.inf
    codes = np.empty(n, np.uint8)
    absmax = np.empty(-(-n // q.BLOCK), np.float32)
    q._quantize_into(x, codes, absmax, signed)
    for nt in (1, 2, 3):
        c2, a2 = q.quantize(x, signed) if nt == 1 else (np.empty_like(codes), np.empty_like(absmax))
        if nt != 1:
            q._native_code(False, x, c2, a2, signed, num_threads=nt)
        assert np.array_equal(c2, codes)
        assert np.array_equal(a2.view(np.uint32), absmax.view(np.uint32))
        back = np.empty(n, np.float32)
        q._native_code(True, back, codes.copy(), absmax.copy(), signed, num_threads=nt)
        ref = q._dequantize(codes, absmax, signed)
        assert np.array_equal(back.view(np.uint32), ref.view(np.uint32))


def test_quantize_per_block_absmax_and_roundtrip():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(1000).astype(np.float32)
    codes, absmax = q.quantize(x, True)
    assert absmax.shape == (4,)
    for b in range(4):
        assert absmax[b] == np.abs(x[256 * b:256 * (b + 1)]).max()
    back = q.dequantize(codes, absmax, True)
    # the nearest entry: no other entry times absmax is closer to x/absmax
    assert np.array_equal(codes, q.encode(x / np.repeat(absmax, 256)[:1000], True))
    assert np.abs(back - x).max() <= absmax.max() * 0.0071
    z = q.QuantizedState.zeros(300, False)
    assert not z.dequantize().any() and z.nbytes == 300 + 8


def test_state_nbytes():
    assert q.state_nbytes(1 << 20) == 2 * ((1 << 20) + 4 * (1 << 12))
    assert q.state_nbytes(1000) == 8000          # below MIN_ELEMENTS: float32
    assert q.state_nbytes(1 << 20, "float32") == 8 << 20


# ---------------------------------------------------------------------------
# The fused 8-bit Adam step
# ---------------------------------------------------------------------------

VARIANTS = [
    dict(),                                                   # Adam
    dict(weight_decay=0.1, decoupled_weight_decay=True),      # AdamW
    dict(weight_decay=0.1),                                   # Adam with L2
    dict(amsgrad=True, maximize=True),
    dict(amsgrad=True, beta1=0.3, weight_decay=0.01),         # lerp weight >= 0.5
]


def _states(n, amsgrad):
    return [q.QuantizedState.zeros(n, True), q.QuantizedState.zeros(n, False),
            q.QuantizedState.zeros(n, False) if amsgrad else None]


def _run(fn, n, hp, steps=4, seed=0, **kw):
    rng = np.random.default_rng(seed)
    hp = dict(hp)
    amsgrad = hp.pop("amsgrad", False)
    p = rng.standard_normal(n).astype(np.float32)
    st = _states(n, amsgrad)
    for step in range(1, steps + 1):
        g = (rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 1, n)).astype(np.float32)
        fn(p, g, *st, lr=1e-2, step=step, **hp, **kw)
    out = [p.view(np.uint32)]
    for s in st:
        if s is not None:
            out += [s.codes, s.absmax.view(np.uint32)]
    return out


@pytest.mark.skipif(not NATIVE, reason="compiled kernel")
@pytest.mark.parametrize("hp", VARIANTS)
@pytest.mark.parametrize("n", [1, 17, 256, 257, 2048 + 3, 40000])
def test_adam8_equals_numpy_twin(isa, hp, n):
    ref = _run(q.adam8_reference, n, hp)
    for nt in (1, 2, 3):
        got = _run(q.adam8, n, hp, num_threads=nt)
        for a, b in zip(got, ref):
            assert np.array_equal(a, b)


def test_adam8_is_decode_float32_adam_encode():
    """One step = the float32 kernel on the decoded moments, then the codec."""
    rng = np.random.default_rng(3)
    n = 3000
    p = rng.standard_normal(n).astype(np.float32)
    m = q.QuantizedState.from_float(rng.standard_normal(n).astype(np.float32) * 1e-2, True)
    v = q.QuantizedState.from_float(rng.random(n).astype(np.float32) * 1e-4, False)
    g = rng.standard_normal(n).astype(np.float32)
    p2, md, vd = p.copy(), m.dequantize(), v.dequantize()
    lrcore.kernels.adam(p2, g, md, vd, lr=1e-3, step=7, weight_decay=0.01,
                        decoupled_weight_decay=True)
    q.adam8(p, g, m, v, lr=1e-3, step=7, weight_decay=0.01, decoupled_weight_decay=True)
    assert np.array_equal(p.view(np.uint32), p2.view(np.uint32))
    c, a = q.quantize(md, True)
    assert np.array_equal(m.codes, c) and np.array_equal(m.absmax, a)
    c, a = q.quantize(vd, False)
    assert np.array_equal(v.codes, c) and np.array_equal(v.absmax, a)


def test_adam8_nonfinite_grad_poisons_only_its_block():
    n = 1024
    p = np.ones(n, np.float32)
    g = np.full(n, 0.5, np.float32)
    g[300] = np.nan
    st = _states(n, False)
    for fn in (q.adam8, q.adam8_reference):
        pp, s = p.copy(), [x.copy() if x is not None else None for x in st]
        fn(pp, g, *s, lr=1e-2, step=1)
        m = s[0].dequantize()
        assert np.isnan(m[256:512]).all() and np.isfinite(m[:256]).all() and np.isfinite(m[512:]).all()


def _bad_input_buffers(n=1000):
    """param, grad, exp_avg, exp_avg_sq (random, 8-bit) and a check that none changed."""
    rng = np.random.default_rng(4)
    p = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    m = q.QuantizedState.from_float(rng.standard_normal(n).astype(np.float32), True)
    v = q.QuantizedState.from_float(rng.random(n).astype(np.float32), False)
    bufs = [p, m.codes, m.absmax, v.codes, v.absmax]
    snap = [a.copy() for a in bufs]

    def unchanged():
        for a, b in zip(bufs, snap):
            assert np.array_equal(a, b)
    return p, g, m, v, unchanged


@pytest.mark.parametrize("fn", [q.adam8, q.adam8_reference])
def test_adam8_bad_input_changes_nothing(fn):
    n = 1000
    p, g, m, v, unchanged = _bad_input_buffers(n)

    short = q.QuantizedState.zeros(n - 1, False)
    cases = [
        ((p, g, m, short), {}, ValueError, "exp_avg_sq must have 1000 codes"),
        ((p, g, v, m), {}, ValueError, "exp_avg must use the signed map"),
        ((p, g.astype(np.float64), m, v), {}, TypeError, "grad must be a numpy.ndarray of float32"),
        ((p, g[:-1], m, v), {}, ValueError, "grad must have 1000 elements"),
        ((p, g, m, v), dict(lr=-1.0), ValueError, "lr"),
        ((p, g, m, v), dict(beta2=1.5), ValueError, "beta2"),
        ((p, g, m, v), dict(step=0), ValueError, "step"),
        ((p, g, m, (v.codes, v.absmax)), {}, TypeError, "QuantizedState"),
        ((p, p, m, v), {}, ValueError, "share memory"),
    ]
    for args, kw, exc, match in cases:
        kw = dict(dict(lr=1e-3, step=1), **kw)
        with pytest.raises(exc, match=match):
            fn(*args, **kw)
        unchanged()
    with pytest.raises(ValueError, match="absmax must have"):
        q.QuantizedState(np.zeros(300, np.uint8), np.zeros(1, np.float32), True)


# ---------------------------------------------------------------------------
# Adam8: the optimizer over 8-bit state
# ---------------------------------------------------------------------------

def _adam8_run(opt_kw, sizes, steps, seed=5, resume_at=None):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = [[rng.standard_normal(n).astype(np.float32) for n in sizes] for _ in range(steps)]
    opt = q.Adam8(params, **opt_kw)
    for t in range(steps):
        if resume_at == t:
            sd = opt.state_dict()
            params = [p.copy() for p in params]
            opt = q.Adam8(params, **opt_kw)
            opt.load_state_dict(sd)
        opt.step(grads[t])
    return params, opt


@pytest.mark.parametrize("kw", [dict(lr=1e-2), dict(lr=1e-2, weight_decay=0.1,
                                                    decoupled_weight_decay=True, amsgrad=True)])
def test_adam8_optimizer_state_and_resume(kw):
    sizes = [100, 4096, 5000]              # the first keeps float32 state
    params, opt = _adam8_run(kw, sizes, 5)
    assert isinstance(opt.state[0][0], np.ndarray) and opt.state[0][0].dtype == np.float32
    assert isinstance(opt.state[1][0], q.QuantizedState)
    k = 3 if kw.get("amsgrad") else 2
    assert opt.state_nbytes() == k * (400 + 4096 + 16 * 4 + 5000 + 20 * 4)
    # one step with the same buffers through the kernels directly
    rng = np.random.default_rng(9)
    g = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    p2 = [p.copy() for p in params]
    st2 = [[s.copy() for s in st] for st in opt.state]
    opt.step(g)
    hp = {k2: v for k2, v in kw.items() if k2 != "amsgrad"}
    for p, gi, st in zip(p2, g, st2):
        vm = st[2] if kw.get("amsgrad") else None
        fn = q.adam8_reference if isinstance(st[0], q.QuantizedState) else lrcore.reference.adam
        fn(p, gi, st[0], st[1], vm, step=6, **hp)
    for a, b in zip(params, p2):
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
    # resume from a state dict: bitwise the uninterrupted run
    full, _ = _adam8_run(kw, sizes, 6)
    resumed, _ = _adam8_run(kw, sizes, 6, resume_at=3)
    for a, b in zip(full, resumed):
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_adam8_optimizer_bad_state_dict_changes_nothing():
    params, opt = _adam8_run(dict(lr=1e-2), [100, 5000], 2)
    before = opt.state_dict()
    bad = []
    sd = opt.state_dict()
    sd["state"][1]["exp_avg"]["codes"] = sd["state"][1]["exp_avg"]["codes"][:-1]
    bad.append((sd, "codes'\\] must be 5000 uint8"))
    sd = opt.state_dict()
    sd["state"][1]["exp_avg_sq"]["absmax"] = np.zeros(19, np.float32)
    bad.append((sd, "absmax'\\] must be 20 float32"))
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"] = np.zeros(100, np.float64)
    bad.append((sd, "must be 100 float32"))
    sd = opt.state_dict()
    sd["state"][1]["exp_avg"] = np.zeros(5000, np.float32)
    bad.append((sd, "8-bit state"))
    for sd, match in bad:
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(sd)
        now = opt.state_dict()
        assert now["step"] == before["step"] == 2
        for a, b in zip(now["state"], before["state"]):
            for name in a:
                x, y = a[name], b[name]
                if isinstance(x, dict):
                    assert np.array_equal(x["codes"], y["codes"])
                    assert np.array_equal(x["absmax"], y["absmax"])
                else:
                    assert np.array_equal(x, y)


@pytest.mark.skipif(not NATIVE, reason="compiled encoder")
@pytest.mark.parametrize("signed", [True, False])
def test_native_codes_exact_nearest_with_ties(isa, signed):
    """Blocks whose absmax is 1, so each quotient is the value itself: the compiled encoder
    (AVX-512 lanes and scalar tail) against brute force, midpoints (ties) included."""
    rng = np.random.default_rng(7)
    x = _awkward(signed, rng)
    x = x[np.abs(x) < 1]
    per = q.BLOCK - 1
    nb = -(-x.size // per)
    blocks = np.zeros((nb, q.BLOCK), np.float32)
    flat = np.zeros(nb * per, np.float32)
    flat[:x.size] = x
    blocks[:, 1:] = flat.reshape(nb, per)
    blocks[:, 0] = 1.0
    v = blocks.reshape(-1)[:x.size + nb - 3]          # a partial last block (scalar tail)
    codes, absmax = q.quantize(v, signed)
    assert (absmax == 1).all()
    assert np.array_equal(codes, _brute_force(v, signed))


def _estimate_cases(signed, seed=3):
    """Values v and block absmax a whose quotient x = fl(v / a) is a decision threshold or
    a float32 next to one, while the AVX-512 encoder's estimate x' = fl(v * fl(1 / a)) is a
    different float32: (v, a, x, x') as float32 arrays. Every threshold, both sides, several
    absmax of assorted magnitude."""
    rng = np.random.default_rng(seed)
    thr = q._codec(signed).thr[:255]
    targets = np.concatenate([thr + np.float32(0), np.nextafter(thr, np.float32(-np.inf)),
                              np.nextafter(thr, np.float32(np.inf))])
    targets = targets[np.abs(targets) <= 1]
    vs, ams = [], []
    for a in (rng.uniform(1, 2, 12) * 10.0 ** rng.integers(-30, 30, 12)).astype(np.float32):
        r = np.float32(1) / a
        v0 = (targets.astype(np.float64) * np.float64(a)).astype(np.float32).view(np.int32)
        for k in range(-3, 4):
            v = (v0 + np.int32(k)).view(np.float32)
            with np.errstate(all="ignore"):
                x, xe = v / a, v * r
            keep = (x == targets) & (xe != x) & (np.abs(v) <= a)
            vs.append(v[keep])
            ams.append(np.full(keep.sum(), a, np.float32))
    v, a = np.concatenate(vs), np.concatenate(ams)
    return v, a, v / a, v * (np.float32(1) / a)


@pytest.mark.skipif(not NATIVE, reason="compiled encoder")
@pytest.mark.parametrize("signed", [True, False])
def test_native_codes_where_the_estimate_differs_from_the_quotient(isa, signed):
    """Quotients at and next to every threshold whose AVX-512 estimate v * (1 / absmax) is
    another float32 (lrcore_q8_encode_block): the encoder's codes (every build) are the exact
    nearest entries of v / absmax, against brute force."""
    v, a, x, xe = _estimate_cases(signed)
    assert v.size > 1000
    # blocks of 256 that start with their absmax, the rest of one absmax's cases after it
    blocks, expect = [], []
    for am in np.unique(a):
        sel = v[a == am]
        for i in range(0, sel.size, 255):
            b = np.zeros(256, np.float32)
            b[0] = am
            b[1:1 + sel[i:i + 255].size] = sel[i:i + 255]
            blocks.append(b)
    vals = np.concatenate(blocks)
    codes, absmax = q.quantize(vals, signed)
    quot = vals / np.repeat(absmax, q.BLOCK)
    assert np.array_equal(codes, _brute_force(quot, signed))


@pytest.mark.skipif(not NATIVE or "avx512" not in lrcore.available_isas(),
                    reason="AVX-512 vector encoder")
@pytest.mark.parametrize("signed", [True, False])
def test_vector_encoder_window_covers_the_estimate(signed):
    """The vector encoder's own lanes (lrcore._q8.vector_codes: codes and flags, no exact
    search) on the estimates x' of the cases above: every lane it does not flag has the
    exact code of the quotient x. With either half of its window shut (window = 0: no lane
    flagged for a position near a decision point; near = 0: none for |x'| near a decade
    start) some lanes are coded wrongly, so these cases do test both."""
    import types
    from lrcore import _q8
    v, a, x, xe = _estimate_cases(signed)
    n16 = -(-xe.size // 16) * 16
    est = np.zeros(n16, np.float32)
    est[:xe.size] = xe
    exact = _brute_force(x, signed)
    c = q._codec(signed)
    wrong = {}
    for name, window, near in (("real", c.window, c.near), ("no window", 0, c.near),
                               ("no near", c.window, 0)):
        codec = types.SimpleNamespace(window=window, near=near, **{
            k: getattr(c, k) for k in ("map", "thr", "base", "dec", "deci", "planes", "signed")})
        codes, flags = np.empty(n16, np.uint8), np.empty(n16, np.uint8)
        assert _q8.vector_codes(2, est, codes, flags, codec)
        ok = flags[:xe.size] == 0
        wrong[name] = int((codes[:xe.size] != exact)[ok].sum())
    assert wrong["real"] == 0
    assert wrong["no window"] > 20 and wrong["no near"] > 0


# ---------------------------------------------------------------------------
# bitsandbytes' 8-bit Adam state (skipped when bitsandbytes is not installed)
# ---------------------------------------------------------------------------

def _bnb():
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes")
    return torch, bnb


def test_bitsandbytes_maps_and_layout():
    torch, bnb = _bnb()
    import bitsandbytes.functional as F
    for signed in (True, False):
        assert np.array_equal(F.create_dynamic_map(signed).numpy().view(np.uint32),
                              q.dynamic_map(signed).view(np.uint32))
    p = torch.nn.Parameter(torch.randn(5000))
    opt = bnb.optim.AdamW8bit([p], lr=1e-3)
    p.grad = torch.randn(5000)
    opt.step()
    m, v, step = q.from_bitsandbytes(opt.state[p])
    assert step == 1 and m.size == v.size == 5000
    # bitsandbytes' own blockwise decoder reads the codes exactly as lrcore does
    for s, k in ((m, "1"), (v, "2")):
        st = opt.state[p]
        ref = F.dequantize_blockwise(st["state" + k], absmax=st["absmax" + k],
                                     code=st["qmap" + k], blocksize=256).numpy()
        assert np.array_equal(s.dequantize().view(np.uint32), ref.view(np.uint32))


def test_bitsandbytes_round_trip_and_bad_state():
    torch, _ = _bnb()
    rng = np.random.default_rng(11)
    m = q.QuantizedState.from_float(rng.standard_normal(1000).astype(np.float32), True)
    v = q.QuantizedState.from_float(rng.random(1000).astype(np.float32), False)
    d = q.to_bitsandbytes(m, v, 7)
    m2, v2, step = q.from_bitsandbytes(d)
    assert step == 7
    for a, b in ((m, m2), (v, v2)):
        assert np.array_equal(a.codes, b.codes) and np.array_equal(a.absmax, b.absmax)
    bad = dict(d, absmax1=d["absmax1"][:-1])
    with pytest.raises(ValueError, match="absmax1 has 3 values for 1000 codes"):
        q.from_bitsandbytes(bad)
    bad = dict(d, qmap2=d["qmap1"])
    with pytest.raises(ValueError, match="qmap2 is not the dynamic map"):
        q.from_bitsandbytes(bad)


def _bnb_adamw8bit(torch, bnb, shape, steps, seed):
    """A bitsandbytes AdamW8bit run of `steps` steps on a random param of `shape`."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(shape, generator=gen))
    opt = bnb.optim.AdamW8bit([p], lr=1e-2, weight_decay=1e-2)
    for _ in range(steps):
        p.grad = torch.randn(shape, generator=gen)
        opt.step()
    return p, opt


@pytest.mark.parametrize("shape", [(5120,), (64, 80)])
def test_bitsandbytes_reads_both_its_live_state_and_its_state_dict(tmp_path, shape):
    """from_bitsandbytes takes the live optimizer.state[p] and the entry of the optimizer's
    state_dict() (bitsandbytes 0.50 nests the tensors under '__bnb_optimizer_quant_state__'),
    also after torch.save / torch.load: the same codes, absmax and step."""
    torch, bnb = _bnb()
    p, opt = _bnb_adamw8bit(torch, bnb, shape, 3, seed=21)
    live = opt.state[p]
    torch.save(opt.state_dict(), tmp_path / "bnb.pt")
    entries = {"live": live, "state_dict": opt.state_dict()["state"][0],
               "file": torch.load(tmp_path / "bnb.pt", weights_only=True)["state"][0]}
    assert "__bnb_optimizer_quant_state__" in entries["file"]
    for how, entry in entries.items():
        m, v, step = q.from_bitsandbytes(entry)
        assert step == 3, how
        for s, k in ((m, "1"), (v, "2")):
            assert s.size == p.numel(), how
            assert np.array_equal(s.codes, live["state" + k].numpy().reshape(-1)), how
            assert np.array_equal(s.absmax.view(np.uint32),
                                  live["absmax" + k].numpy().view(np.uint32)), how
            assert s.absmax.any() and np.count_nonzero(s.codes) > s.size // 2, how
    sd_entry = opt.state_dict()["state"][0]
    with pytest.raises(ValueError, match="__bnb_optimizer_quant_state__.*must be a dict"):
        q.from_bitsandbytes(dict(sd_entry, __bnb_optimizer_quant_state__=[1, 2]))
    nested = dict(sd_entry["__bnb_optimizer_quant_state__"])
    del nested["absmax2"]
    with pytest.raises(ValueError, match="no 'absmax2'"):
        q.from_bitsandbytes(dict(sd_entry, __bnb_optimizer_quant_state__=nested))
    with pytest.raises(TypeError, match="state must be a dict"):
        q.from_bitsandbytes([sd_entry])


@pytest.mark.parametrize("shape", [(5120,), (64, 80)])
def test_bitsandbytes_steps_a_converted_state(shape):
    """lrcore's 8-bit AdamW state, converted with to_bitsandbytes(..., shape=param.shape),
    steps in bitsandbytes' AdamW8bit (a 2-D param needs the shape: bitsandbytes keeps state1
    and state2 in the param's shape) and continues as lrcore's own run does: params within
    a small fraction of the steps' movement, nearly all codes equal, absmax equal to float32
    rounding."""
    torch, bnb = _bnb()
    from lrcore import optim
    rng = np.random.default_rng(23)
    start = rng.standard_normal(shape).astype(np.float32)
    grads = [rng.standard_normal(shape).astype(np.float32) for _ in range(5)]
    mine = start.copy()
    ref = optim.AdamW([mine], lr=1e-2, weight_decay=1e-2, state_dtype="int8")
    for g in grads[:3]:
        ref.step([g])
    sd = ref.state_dict()["state"][0]
    m = q.QuantizedState(sd["exp_avg.codes"].copy(), sd["exp_avg.absmax"].copy(), True)
    v = q.QuantizedState(sd["exp_avg_sq.codes"].copy(), sd["exp_avg_sq.absmax"].copy(), False)
    d = q.to_bitsandbytes(m, v, 3, shape=shape)
    assert tuple(d["state1"].shape) == tuple(d["state2"].shape) == shape
    p = torch.nn.Parameter(torch.from_numpy(mine.copy()))
    opt = bnb.optim.AdamW8bit([p], lr=1e-2, weight_decay=1e-2)
    opt.state[p] = d
    saved = mine.copy()
    for g in grads[3:]:
        p.grad = torch.from_numpy(g.copy())
        opt.step()
        ref.step([g])
    moved = np.abs(mine - saved).max()
    assert moved > 1e-3
    assert np.abs(p.detach().numpy() - mine).max() <= 0.05 * moved
    m2, v2, step = q.from_bitsandbytes(opt.state[p])
    assert step == 5
    sd = ref.state_dict()["state"][0]
    for s, key in ((m2, "exp_avg"), (v2, "exp_avg_sq")):
        assert np.mean(s.codes == sd[key + ".codes"]) >= 0.99, key
        np.testing.assert_allclose(s.absmax, sd[key + ".absmax"], rtol=1e-5, atol=0)


def test_bitsandbytes_and_torchao_shape_is_checked():
    m = q.QuantizedState.zeros(5120, True)
    v = q.QuantizedState.zeros(5120, False)
    for fn, call in (("to_bitsandbytes", lambda shape: q.to_bitsandbytes(m, v, 1, shape=shape)),
                     ("to_torchao", lambda shape: q.to_torchao({"exp_avg": m, "exp_avg_sq": v},
                                                               1, shape=shape))):
        if fn == "to_bitsandbytes":
            pytest.importorskip("torch")
        else:
            _torchao()
        for shape, exc, match in [((64, 81), ValueError, r"shape \(64, 81\) does not hold 5120"),
                                  ((-64, -80), ValueError, r"shape \(-64, -80\) does not"),
                                  ((64.0, 80), TypeError, "shape must be a sequence of integers"),
                                  (5120, TypeError, "shape must be a sequence of integers")]:
            with pytest.raises(exc, match=f"{fn}\\(\\): {match}"):
                call(shape)
        assert tuple(call(np.array([80, 64]))["exp_avg_sq" if fn == "to_torchao"
                                               else "state2"].shape) == (80, 64)


def test_adam8_optimizer_bad_arguments_change_nothing():
    with pytest.raises(TypeError, match=r"params\[0\] must be a numpy.ndarray of float32"):
        q.Adam8([np.zeros(5000)])
    with pytest.raises(ValueError, match="beta2"):
        q.Adam8([np.zeros(5000, np.float32)], betas=(0.9, 1.5))
    params, opt = _adam8_run(dict(lr=1e-2), [100, 5000], 2)
    before = [p.copy() for p in params]
    sd = opt.state_dict()
    for grads, exc, match in [
        ([np.ones(100, np.float32)], ValueError, "1 grads for 2 params"),
        ([np.ones(100, np.float32), np.ones(4999, np.float32)], ValueError,
         r"grads\[1\] must have 5000 elements"),
        ([np.ones(100, np.float32), np.ones(5000)], TypeError, r"grads\[1\] must be"),
    ]:
        with pytest.raises(exc, match=match):
            opt.step(grads)
        assert opt.step_count == 2
        for a, b in zip(params, before):
            assert np.array_equal(a, b)
        now = opt.state_dict()
        assert np.array_equal(now["state"][1]["exp_avg"]["codes"],
                              sd["state"][1]["exp_avg"]["codes"])


def _adam8_bits(opt, params):
    sd = opt.state_dict()
    out = [p.tobytes() for p in params] + [sd["step"]]
    for st in sd["state"]:
        for name in sorted(st):
            x = st[name]
            out += ([x["codes"].tobytes(), x["absmax"].tobytes()] if isinstance(x, dict)
                    else [x.tobytes()])
    return out


def test_adam8_refuses_at_the_step_before_any_param_is_stepped():
    """A param made read-only after construction, or a grad that is (another) param: refused
    naming it before the first param is stepped (adam8() refused it at that param, after the
    params before it had been updated, with step_count unchanged)."""
    params, opt = _adam8_run(dict(lr=1e-2), [5000, 5000], 1)
    before = _adam8_bits(opt, params)
    params[1].flags.writeable = False
    with pytest.raises(ValueError, match=r"Adam8.step\(\): params\[1\] is read-only"):
        opt.step([np.ones(5000, np.float32), np.ones(5000, np.float32)])
    assert _adam8_bits(opt, params) == before
    params[1].flags.writeable = True
    with pytest.raises(ValueError, match=r"grads\[1\] shares memory with params\[0\]"):
        opt.step([np.ones(5000, np.float32), params[0]])
    assert _adam8_bits(opt, params) == before
    opt.step([np.ones(5000, np.float32), np.ones(5000, np.float32)])
    assert opt.step_count == 2


@pytest.mark.parametrize("kw,exc,match", [
    (dict(betas=(0.9,)), TypeError, r"Adam8: betas must be a pair"),
    (dict(betas=0.9), TypeError, r"Adam8: betas must be a pair"),
    (dict(num_threads=0), ValueError, r"Adam8: num_threads must be an integer >= 1"),
    (dict(min_elements="4096"), TypeError, r"Adam8: min_elements must be an integer"),
    (dict(min_elements=-1), ValueError, r"Adam8: min_elements must be an integer >= 0"),
])
def test_adam8_bad_constructor_arguments_are_named(kw, exc, match):
    with pytest.raises(exc, match=match):
        q.Adam8([np.zeros(5000, np.float32)], **kw)


def test_adam8_refuses_params_sharing_memory():
    a = np.zeros(5000, np.float32)
    with pytest.raises(ValueError, match=r"Adam8: params\[0\] and params\[1\] share memory"):
        q.Adam8([a, a])
    with pytest.raises(ValueError, match="share memory"):
        q.Adam8([a, a[100:200]])


def test_adam8_load_state_dict_refuses_negative_absmax_and_huge_step():
    params, opt = _adam8_run(dict(lr=1e-2), [100, 5000], 2)
    before = _adam8_bits(opt, params)
    sd = opt.state_dict()
    sd["state"][1]["exp_avg_sq"]["absmax"][3] = -1.0
    with pytest.raises(ValueError, match=r"state\[1\]\['exp_avg_sq'\]\['absmax'\] holds 1 "
                                         r"negative"):
        opt.load_state_dict(sd)
    sd = opt.state_dict()
    sd["step"] = 2 ** 53
    with pytest.raises(ValueError, match=r"step must be an integer in \[0, 2\*\*53\)"):
        opt.load_state_dict(sd)
    assert _adam8_bits(opt, params) == before


# ---------------------------------------------------------------------------
# step(): every rule of INT8_RULES, float32 and bfloat16 param/grad, both roundings
# ---------------------------------------------------------------------------

from lrcore import lowp  # noqa: E402

# (rule, hyperparameters, states kept float32 besides those of INT8_RULES)
STEP_CASES = [
    ("adam", dict(), ()),
    ("adamw", dict(weight_decay=0.05), ()),
    ("adam", dict(amsgrad=True, beta1=0.3, maximize=True), ()),
    ("adam", dict(weight_decay=0.01), ("exp_avg",)),          # mixed: exp_avg float32
    ("nadam", dict(weight_decay=0.01, decoupled_weight_decay=True), ()),
    ("radam", dict(), ()),
    ("sgd", dict(momentum=0.9, nesterov=True), ()),
    ("sgd", dict(momentum=0.9, dampening=0.1, weight_decay=0.01), ()),
    ("rmsprop", dict(), ()),
    ("rmsprop", dict(momentum=0.9, alpha=0.3), ()),
    ("lion", dict(weight_decay=0.1), ()),
]


def _step_states(rule, hp, keep32, n):
    from lrcore import rules
    row = rules.RULES[rules.preset(rule).rule]
    hp = dict(hp)
    opts = {o.name: hp.pop(o.name) for o in row.options if o.name in hp}
    values = dict(hp, **opts)
    out = {}
    for s in row.present_states(values):
        if s.name in q.INT8_RULES[row.name] and s.name not in keep32:
            out[s.name] = q.QuantizedState.zeros(n, q.INT8_RULES[row.name][s.name])
        else:
            out[s.name] = np.zeros(n, np.float32)
    return out, hp


def _step_run(fn, rule, hp, keep32, n, dtype=np.float32, steps=3, **kw):
    rng = np.random.default_rng(n)
    st, hp = _step_states(rule, hp, keep32, n)
    p = rng.standard_normal(n).astype(np.float32).astype(dtype)
    for t in range(1, steps + 1):
        g = (rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 1, n)).astype(np.float32)
        fn(rule, p, g.astype(dtype), st, step=t, lr=1e-2, seed=7, **hp, **kw)
    out = [p.view(np.uint16 if p.dtype.itemsize == 2 else np.uint32)]
    for s in st.values():
        out += ([s.codes, s.absmax.view(np.uint32)] if isinstance(s, q.QuantizedState)
                else [s.view(np.uint32)])
    return out


@pytest.mark.skipif(not NATIVE, reason="compiled kernel")
@pytest.mark.parametrize("rule,hp,keep32", STEP_CASES)
@pytest.mark.parametrize("n", [15, 256, 257, 40000])
def test_step_equals_numpy_twin(isa, rule, hp, keep32, n):
    ref = _step_run(q.step_reference, rule, hp, keep32, n)
    for nt in (1, 3):
        got = _step_run(q.step, rule, hp, keep32, n, num_threads=nt)
        for a, b in zip(got, ref):
            assert np.array_equal(a, b)


@pytest.mark.skipif(not NATIVE, reason="compiled kernel")
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("rule,hp", [("adamw", dict(weight_decay=0.05)),
                                     ("adam", dict(amsgrad=True)), ("lion", dict()),
                                     ("sgd", dict(momentum=0.9))])
@pytest.mark.parametrize("n", [17, 257, 40000])
def test_step_bfloat16_equals_numpy_twin(isa, rounding, rule, hp, n):
    ref = _step_run(q.step_reference, rule, hp, (), n, dtype=lowp.bfloat16, rounding=rounding)
    for nt in (1, 3):
        got = _step_run(q.step, rule, hp, (), n, dtype=lowp.bfloat16, rounding=rounding,
                        num_threads=nt)
        for a, b in zip(got, ref):
            assert np.array_equal(a, b)


@pytest.mark.skipif(not NATIVE, reason="compiled kernel")
def test_large_call_tasks_of_many_blocks_equal_the_twin():
    """A call of 4098 blocks: on 2 and 3 threads its tasks hold 129 and 86 blocks (16 tasks
    per thread, _q8.pyx), a thread's blocks no longer alternate with the other's every 64;
    every thread count gives the twin's bytes (a bfloat16 param, stochastic rounding)."""
    n = (1 << 20) + 257
    ref = _step_run(q.step_reference, "adamw", dict(weight_decay=0.05), (), n,
                    dtype=lowp.bfloat16, rounding="stochastic")
    for nt in (1, 2, 3):
        got = _step_run(q.step, "adamw", dict(weight_decay=0.05), (), n, dtype=lowp.bfloat16,
                        rounding="stochastic", num_threads=nt)
        for a, b in zip(got, ref):
            assert np.array_equal(a, b), nt


@pytest.fixture(params=["vbmi", "avx512f"])
def avx512_decoder(request):
    """The AVX-512 build with each of its decoders in turn: AVX512-VBMI byte permutes (where
    the CPU has them) and the AVX-512F register permutes (the decoder of CPUs without)."""
    if not NATIVE or "avx512" not in lrcore.available_isas():
        pytest.skip("AVX-512 build")
    from lrcore import _q8, backend
    before = backend.isa()
    backend.set_isa("avx512")
    try:
        if _q8.set_vbmi(request.param == "vbmi") != (request.param == "vbmi"):
            pytest.skip("the CPU has no AVX512-VBMI")
        yield request.param
    finally:
        _q8.set_vbmi(-1)
        backend.set_isa(before)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("n", [1, 63, 64, 65, 256 + 70, 4096 * 3 + 13])
def test_avx512_decoders_equal_numpy(avx512_decoder, signed, n):
    rng = np.random.default_rng(n)
    codes = rng.integers(0, 256, n).astype(np.uint8)
    nb = -(-n // q.BLOCK)
    absmax = (rng.uniform(0, 2, nb) * 10.0 ** rng.integers(-30, 30, nb)).astype(np.float32)
    specials = np.float32([1.0, 0.0, np.inf, np.nan])
    absmax[:specials.size] = specials[:absmax.size]
    for nt in (1, 3):
        back = np.empty(n, np.float32)
        q._native_code(True, back, codes, absmax, signed, num_threads=nt)
        ref = q._dequantize(codes, absmax, signed)
        assert np.array_equal(back.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("rule,hp,keep32", [c for c in STEP_CASES if c[0] in ("adamw", "adam")])
def test_step_avx512_decoders_equal_numpy_twin(avx512_decoder, rule, hp, keep32):
    n = 4096 + 70
    ref = _step_run(q.step_reference, rule, hp, keep32, n)
    got = _step_run(q.step, rule, hp, keep32, n, num_threads=2)
    for a, b in zip(got, ref):
        assert np.array_equal(a, b)


@pytest.mark.skipif(not NATIVE, reason="compiled kernel")
@pytest.mark.parametrize("pdt,gdt", [(np.float32, np.float32), (lowp.bfloat16, lowp.bfloat16),
                                     (np.float32, lowp.bfloat16), (lowp.bfloat16, np.float32)])
def test_step_awkward_blocks_equal_numpy_twin(isa, pdt, gdt):
    """AdamW (the AVX-512 build's fused path on VBMI CPUs) over blocks whose new moments have
    every kind of absmax: ordinary, zero (zero grads), subnormal, tiny and huge (the vector
    encoder's range ends), Inf (overflowing squares), NaN, and a partial last block; float32
    and bfloat16 param and grad in every combination, 1 and 3 threads."""
    B = q.BLOCK
    rng = np.random.default_rng(21)
    n = 9 * B + 100
    g = rng.standard_normal(n).astype(np.float32)
    g[B:2 * B] = 0                                   # zero block
    g[2 * B:3 * B] *= np.float32(1e-39)              # subnormal moments
    g[3 * B:4 * B] *= np.float32(1e-25)              # absmax of exp_avg_sq near 2**-126
    g[4 * B:5 * B] *= np.float32(1e18)               # exp_avg_sq near 2**126 and beyond
    g[5 * B:6 * B] *= np.float32(1e30)               # squares overflow: Inf
    g[6 * B + 7] = np.nan                            # a NaN
    p0 = rng.standard_normal(n).astype(np.float32)
    out = {}
    for fn, nt in ((q.step_reference, None), (q.step, 1), (q.step, 3)):
        p = p0.astype(pdt)
        st = {"exp_avg": q.QuantizedState.zeros(n, True),
              "exp_avg_sq": q.QuantizedState.zeros(n, False)}
        kw = {} if nt is None else {"num_threads": nt}
        for t in (1, 2):
            fn("adamw", p, (g * np.float32(t)).astype(gdt), st, step=t, lr=1e-2,
               weight_decay=0.1, rounding="stochastic", seed=3, **kw)
        out[nt] = [p.view(np.uint16 if p.dtype.itemsize == 2 else np.uint32)] + [
            x for s in st.values() for x in (s.codes, s.absmax.view(np.uint32))]
    for nt in (1, 3):
        for a, b in zip(out[nt], out[None]):
            assert np.array_equal(a, b)


@pytest.mark.skipif(not NATIVE, reason="compiled kernel")
def test_step_exp_avg_sq_with_a_sign_bit_equals_numpy_twin(isa):
    """exp_avg_sq blocks whose absmax is -0, negative or -Inf (a QuantizedState built by
    hand): their decoded second moments have the sign bit set, where the fused pass's
    absmax, taken on the bit patterns as they are, is taken again on |v|; 1 and 2 threads."""
    B = q.BLOCK
    rng = np.random.default_rng(5)
    n = 6 * B
    g = rng.standard_normal(n).astype(np.float32)
    g[B:2 * B] = 0
    v0 = q.QuantizedState.from_float(rng.random(n).astype(np.float32), False)
    m0 = q.QuantizedState.from_float(rng.standard_normal(n).astype(np.float32), True)
    v0.absmax[1:4] = np.float32([-0.0, -3.0, -np.inf])
    out = {}
    for fn, nt in ((q.step_reference, None), (q.step, 1), (q.step, 2)):
        p = np.ones(n, np.float32)
        st = {"exp_avg": m0.copy(), "exp_avg_sq": v0.copy()}
        kw = {} if nt is None else {"num_threads": nt}
        fn("adamw", p, g, st, step=3, lr=1e-2, **kw)
        out[nt] = [p.view(np.uint32)] + [
            x for s in st.values() for x in (s.codes, s.absmax.view(np.uint32))]
    vmax = out[None][4].view(np.float32)        # exp_avg_sq's new absmax: |v| of the blocks
    assert 0 < vmax[2] < np.inf and vmax[3] == np.inf
    for nt in (1, 2):
        for a, b in zip(out[nt], out[None]):
            assert np.array_equal(a, b)


def test_step_bfloat16_param_is_rounded_float32_step():
    """bfloat16 param: the float32 step on the widened param, rounded by lrcore.lowp's
    rule (stochastic: buffer 0 of the stream, index_offset + i); a slice with its offset
    gets the same bits as the whole."""
    rng = np.random.default_rng(11)
    n = 3 * q.BLOCK
    p = rng.standard_normal(n).astype(lowp.bfloat16)
    g = rng.standard_normal(n).astype(lowp.bfloat16)
    m, v = q.QuantizedState.zeros(n, True), q.QuantizedState.zeros(n, False)
    p32, g32 = lowp.widen(p), lowp.widen(g)
    m2, v2 = m.dequantize(), v.dequantize()
    lrcore.kernels.adam(p32, g32, m2, v2, lr=1e-2, step=3)
    want = lowp.round_to(p32, lowp.bfloat16, "stochastic", 9, 3, 0, 1000)
    q.step("adam", p, g, {"exp_avg": m, "exp_avg_sq": v}, step=3, lr=1e-2,
           rounding="stochastic", seed=9, index_offset=1000)
    assert np.array_equal(p.view(np.uint16), want.view(np.uint16))
    # the second block alone, at its offset: the same bits
    p1 = lowp.widen(p)  # any values: compare the rounding of one slice with the whole
    a = p1.astype(lowp.bfloat16)
    whole = a.copy()
    st = {"exp_avg": q.QuantizedState.zeros(n, True), "exp_avg_sq": q.QuantizedState.zeros(n, False)}
    q.step("adam", whole, g, st, step=2, lr=1e-3, rounding="stochastic", seed=1)
    part = a[q.BLOCK:2 * q.BLOCK].copy()
    st = {"exp_avg": q.QuantizedState.zeros(q.BLOCK, True),
          "exp_avg_sq": q.QuantizedState.zeros(q.BLOCK, False)}
    q.step("adam", part, g[q.BLOCK:2 * q.BLOCK].copy(), st, step=2, lr=1e-3,
           rounding="stochastic", seed=1, index_offset=q.BLOCK)
    assert np.array_equal(part.view(np.uint16), whole[q.BLOCK:2 * q.BLOCK].view(np.uint16))


def test_int8_rules_table():
    from lrcore import rules
    for name, states in q.INT8_RULES.items():
        row = rules.RULES[name]
        assert set(states) <= {s.name for s in row.states}
        assert all(isinstance(x, bool) for x in states.values())
    assert q.INT8_RULES["adam"] == {"exp_avg": True, "exp_avg_sq": False,
                                    "max_exp_avg_sq": False}
    assert not {"adagrad", "adadelta", "adamax"} & set(q.INT8_RULES)


@pytest.mark.parametrize("fn", [q.step, q.step_reference])
def test_step_bad_input_changes_nothing(fn):
    n = 1000
    p, g, m, v, unchanged = _bad_input_buffers(n)
    good = {"exp_avg": m, "exp_avg_sq": v}
    cases = [
        ("adagrad", p, g, {"state_sum": m}, {}, ValueError, "no 8-bit state"),
        ("nope", p, g, good, {}, ValueError, "unknown optimizer"),
        ("adam", p, g, {"exp_avg": m}, {}, ValueError, "'exp_avg_sq'"),
        ("adam", p, g, dict(good, bogus=m), {}, ValueError, "no state 'bogus'"),
        ("adam", p, g, {"exp_avg": v, "exp_avg_sq": m}, {}, ValueError, "signed map"),
        ("adam", p, g[:-1], good, {}, ValueError, "grad must have 1000"),
        ("adam", p.astype(np.float64), g, good, {}, TypeError, "float32 or bfloat16"),
        ("adam", p, g, good, dict(lr=-1.0), ValueError, "lr"),
        ("adam", p, g, good, dict(foo=1.0), TypeError, "'foo'"),
        ("adam", p, g, good, dict(rounding="up"), ValueError, "rounding"),
        ("adam", p, g, good, dict(seed=-1), ValueError, "seed"),
        ("adamw", p, g, good, dict(decoupled_weight_decay=False), ValueError, "fixes"),
        ("sgd", p, g, {"momentum_buffer": m}, {}, ValueError, "momentum=0.0"),
        ("rmsprop", p, g, {"square_avg": v, "grad_avg": np.zeros(n, np.float32)}, {},
         ValueError, "centered"),
        ("adam", p, p, good, {}, ValueError, "share memory"),
    ]
    for rule, pp, gg, st, kw, exc, match in cases:
        kw = dict(dict(lr=1e-3, step=1), **kw)
        with pytest.raises(exc, match=match):
            fn(rule, pp, gg, st, **kw)
        unchanged()


@pytest.mark.skipif(not NATIVE, reason="compiled kernel")
def test_step_runs_on_the_one_pool():
    """lrcore._q8 has no pool of its own: its tasks are run by lrcore._core's workers."""
    from lrcore import backend
    core = backend.core()
    n = 1 << 18
    p = np.ones(n, np.float32)
    g = np.full(n, 0.5, np.float32)
    st = {"exp_avg": q.QuantizedState.zeros(n, True), "exp_avg_sq": q.QuantizedState.zeros(n, False)}
    for t in range(1, 501):
        before = core.pool_worker_tasks()
        q.step("adamw", p, g, st, step=t, lr=1e-3, num_threads=2)
        if core.pool_worker_tasks() > before:
            break
    else:
        pytest.fail("no worker of lrcore._core's pool ran a task of the 8-bit step")
    assert core.pool_workers() >= 1


# ---------------------------------------------------------------------------
# torchao's 8-bit Adam state (skipped when torchao does not import)
# ---------------------------------------------------------------------------

def _torchao():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchao.optim")
    return torch


def test_torchao_maps_and_its_decoder():
    """torchao's map is lrcore's, and torchao's own decoder reads states made here, and its
    own (eager) quantizer's codes come back unchanged."""
    torch = _torchao()
    from torchao.optim import quant_utils as U
    from torchao.optim.subclass_8bit import OptimState8bit
    for signed in (True, False):
        ref = torch.tensor(U.create_dynamic_map(signed), dtype=torch.float32).numpy()
        assert np.array_equal(ref.view(np.uint32), q.dynamic_map(signed).view(np.uint32))
    rng = np.random.default_rng(12)
    n = 16 * q.BLOCK
    st = {"exp_avg": q.QuantizedState.from_float(rng.standard_normal(n).astype(np.float32), True),
          "exp_avg_sq": q.QuantizedState.from_float(rng.random(n).astype(np.float32), False),
          "max_exp_avg_sq": q.QuantizedState.from_float(rng.random(n).astype(np.float32), False)}
    d = q.to_torchao(st, 9, shape=(64, 64))
    assert float(d["step"]) == 9.0
    for name, s in st.items():
        x = d[name]
        assert isinstance(x, OptimState8bit) and tuple(x.shape) == (64, 64)
        got = x.dequantize().numpy().reshape(-1)
        assert np.array_equal(got.view(np.uint32), s.dequantize().view(np.uint32))
    back, step = q.from_torchao(d)
    assert step == 9 and set(back) == set(st)
    for name in st:
        assert np.array_equal(back[name].codes, st[name].codes)
        assert np.array_equal(back[name].absmax.view(np.uint32), st[name].absmax.view(np.uint32))
    # a state written by torchao's quantizer (what its AdamW8bit stores)
    x = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
    scaled, scale = U.scale_tensor(x, q.BLOCK)
    qmap = torch.tensor(U.create_dynamic_map(True), dtype=torch.float32)
    codes = U.quantize_8bit_with_qmap(scaled, qmap)
    theirs = {"step": torch.tensor(3.0), "exp_avg": OptimState8bit(codes, scale, qmap, True),
              "exp_avg_sq": OptimState8bit(codes.clone(), scale.abs(),
                                           torch.tensor(U.create_dynamic_map(False)), False)}
    mine, step = q.from_torchao(theirs)
    assert step == 3
    ref = theirs["exp_avg"].dequantize().numpy()
    assert np.array_equal(mine["exp_avg"].dequantize().view(np.uint32), ref.view(np.uint32))


def test_torchao_bad_state_and_sizes():
    torch = _torchao()
    m = q.QuantizedState.zeros(1000, True)
    v = q.QuantizedState.zeros(1000, False)
    with pytest.raises(ValueError, match="multiple of 256"):
        q.to_torchao({"exp_avg": m, "exp_avg_sq": v}, 1)
    with pytest.raises(TypeError, match="signed=False"):
        q.to_torchao({"exp_avg": m, "exp_avg_sq": m}, 1)
    m, v = q.QuantizedState.zeros(4096, True), q.QuantizedState.zeros(4096, False)
    d = q.to_torchao({"exp_avg": m, "exp_avg_sq": v}, 2)
    with pytest.raises(ValueError, match="not a torchao OptimState8bit"):
        q.from_torchao(dict(d, exp_avg=torch.zeros(4096)))
    with pytest.raises(ValueError, match="exp_avg_sq.qmap is not the dynamic map"):
        bad = d["exp_avg_sq"]
        bad.qmap = d["exp_avg"].qmap
        q.from_torchao(d)


@pytest.mark.skipif(not NATIVE, reason="compiled encoder")
@pytest.mark.parametrize("signed", [True, False])
def test_native_codes_near_every_decision_point(isa, signed):
    """The 40 float32 values on each side of every threshold (where the vector encoder's
    estimate is nearest to a half-integer and it falls back to the exact search), both
    signs, in blocks whose absmax is 1: the same codes as the numpy twin's binary search."""
    thr = q._codec(signed).thr[:255]
    bits = np.abs(thr).view(np.uint32).astype(np.int64)
    near = (bits[:, None] + np.arange(-40, 41)[None, :]).reshape(-1)
    near = near[(near >= 0) & (near <= 0x3F800000)].astype(np.uint32).view(np.float32)
    x = np.concatenate([near, -near])
    x = x[: x.size // 255 * 255].reshape(-1, 255)
    blocks = np.concatenate([np.ones((x.shape[0], 1), np.float32), x], axis=1).reshape(-1)
    codes, absmax = q.quantize(blocks, signed)
    assert (absmax == 1).all()
    assert np.array_equal(codes, q.encode(blocks, signed))
