"""bfloat16 / float16 buffers: the rounding spec (lrcore.lowp) and low-precision kernel steps.

The conversions are checked against ml_dtypes / numpy (nearest), against their definition
(stochastic: one of the two neighbours, unbiased within 3 standard errors), and the twin of a
step against "widen, run the float32 kernel, round once".
"""
import ml_dtypes
import numpy as np
import pytest

from lrcore import lowp, reference

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)


def _awkward_f32(rng, n):
    """float32 bit patterns over every exponent, both signs, plus ties, subnormals, near overflow."""
    u = rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32)
    x = u.view(np.float32)
    extra = np.array([0.0, -0.0, 1.0, -1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 65504.0, 65519.0,
                      65520.0, 65536.0, -65520.0, 2.0 ** -14, 2.0 ** -24, 2.0 ** -25,
                      1.5 * 2.0 ** -25, 2.0 ** -26, 3.0 * 2 ** -25, 2.0 ** -149, 2.0 ** -126,
                      3.3895314e38, 3.4028235e38, np.inf, -np.inf], np.float32)
    # exact ties of both targets
    ties_bf = ((rng.integers(0, 2 ** 16, 200).astype(np.uint32) << 16) | 0x8000).view(np.float32)
    ties_h = np.float16(rng.standard_normal(200)).astype(np.float32)
    ties_h = (ties_h.view(np.uint32) | 0x1000).view(np.float32)
    return np.concatenate([x, extra, ties_bf, ties_h]).astype(np.float32)


def _finite(x):
    return x[np.isfinite(x)]


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_nearest_matches_ml_dtypes_and_numpy(dtype):
    rng = np.random.default_rng(0)
    x = _awkward_f32(rng, 200_000)
    x = x[~np.isnan(x)]
    with np.errstate(all="ignore"):
        expected = x.astype(dtype)
    got = lowp.round_nearest(x, dtype)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got.view(np.uint16), expected.view(np.uint16))


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_widen_is_exact(dtype):
    bits = np.arange(2 ** 16, dtype=np.uint32).astype(np.uint16)
    h = bits.view(dtype)
    ok = ~np.isnan(h.astype(np.float32))
    got = lowp.widen(h)
    np.testing.assert_array_equal(got[ok].view(np.uint32), h[ok].astype(np.float32).view(np.uint32))
    assert np.isnan(got[~ok]).all()
    # NaN payload: sign | exponent | mantissa shifted (no quieting)
    if dtype == F16:
        nan_bits = bits[~ok].astype(np.uint32)
        np.testing.assert_array_equal(
            got[~ok].view(np.uint32),
            ((nan_bits & 0x8000) << 16) | 0x7F800000 | ((nan_bits & 0x3FF) << 13))


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_nan_and_inf_pass_through(dtype):
    x = np.array([np.nan, -np.nan, np.inf, -np.inf], np.float32)
    x = np.concatenate([x, (np.array([0x7F800001, 0xFFC12345, 0x7FFFFFFF], np.uint32)
                            .view(np.float32))])
    r = np.full(x.size, 0xFFFFFFFF, np.uint32)
    for y in (lowp.round_nearest(x, dtype), lowp.round_stochastic(x, dtype, r)):
        y32 = y.astype(np.float32)
        assert np.isnan(y32[[0, 1, 4, 5, 6]]).all()
        assert np.signbit(y32[[1, 5]]).all() and not np.signbit(y32[[0, 4, 6]]).any()
        assert y32[2] == np.inf and y32[3] == -np.inf


def _neighbours(x, dtype):
    """The representable values just toward and away from zero of x (same sign), as float32,
    computed with numpy's nearest conversion and nextafter (independently of lrcore.lowp)."""
    with np.errstate(all="ignore"):
        near = x.astype(dtype)
        past = np.abs(near.astype(np.float32)) > np.abs(x)
        down = np.where(past, np.nextafter(near, np.zeros_like(near)), near)
        sign = np.where(np.signbit(x), -np.inf, np.inf).astype(dtype)
        exact = down.astype(np.float32) == x
        up = np.where(exact, down, np.nextafter(down, sign))
    return down.astype(np.float32), up.astype(np.float32)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_stochastic_gives_one_of_the_two_neighbours(dtype):
    rng = np.random.default_rng(1)
    x = _finite(_awkward_f32(rng, 100_000))
    if dtype == F16:   # from 2**16 on (one ulp past the largest float16) both modes give Inf
        big = np.abs(x) >= 65536.0
        assert np.isinf(lowp.round_stochastic(x[big], dtype, np.zeros(big.sum(), np.uint32)
                                              ).astype(np.float32)).all()
        x = x[~big]
    r = rng.integers(0, 2 ** 32, x.size, dtype=np.uint64).astype(np.uint32)
    y = lowp.round_stochastic(x, dtype, r).astype(np.float32)
    down, up = _neighbours(x, dtype)
    assert ((y == down) | (y == up)).all()
    # all-zero bits truncate toward zero; all-one bits round away whenever the discarded
    # fraction is at least 2**-32 of an ulp (the resolution of 32 random bits)
    lo = lowp.round_stochastic(x, dtype, np.zeros(x.size, np.uint32)).astype(np.float32)
    hi = lowp.round_stochastic(x, dtype, np.full(x.size, 0xFFFFFFFF, np.uint32)).astype(np.float32)
    np.testing.assert_array_equal(lo, down)
    with np.errstate(all="ignore"):
        ulp = np.abs(up - down)
        frac = np.abs(x.astype(np.float64) - down) / np.where(ulp > 0, ulp, 1)
    resolvable = (frac >= 2.0 ** -32) | (up == down)
    np.testing.assert_array_equal(hi[resolvable], up[resolvable])
    assert ((hi == down) | (hi == up)).all()
    near = lowp.round_nearest(x, dtype).astype(np.float32)
    assert ((near == down) | (near == up)).all()


@pytest.mark.parametrize("dtype,value,buffer", [
    (BF16, 1.0 + 2 ** -10, 2), (BF16, -3.14159, 2), (BF16, 1e-3, 2), (BF16, 1e-40, 2),
    # odd buffers: the low half of the even neighbour's hash
    (BF16, 1.0 + 2 ** -10, 1), (BF16, -3.14159, 3), (BF16, 1e-3, 1), (BF16, 1e-40, 3),
    (F16, 1.0 + 2 ** -13, 2), (F16, -3.14159, 2), (F16, 1e-6, 2), (F16, 3e-8, 2), (F16, 1e-9, 2),
    (F16, 60001.0, 2), (F16, 4e-5, 2),
], ids=lambda v: str(v))
def test_stochastic_is_unbiased(dtype, value, buffer):
    """10**5 draws of one value (consecutive element indices): mean within 3 standard errors."""
    n = 100_000
    x = np.full(n, value, np.float32)
    y = lowp.round_to(x, dtype, "stochastic", seed=12345, step=7, buffer=buffer).astype(np.float64)
    down, up = _neighbours(x[:1], dtype)
    down, up = float(down[0]), float(up[0])
    assert set(np.unique(y)) <= {down, up}
    p = (float(x[0]) - down) / (up - down)
    assert 0.0 < p < 1.0          # the value is between two representable neighbours
    se = abs(up - down) * np.sqrt(p * (1 - p) / n)
    assert abs(y.mean() - float(x[0])) <= 3 * se
    # and over steps, for one element
    ys = np.array([lowp.round_to(x[:1], dtype, "stochastic", seed=3, step=s).astype(np.float64)[0]
                   for s in range(1, 2001)])
    se_s = abs(up - down) * np.sqrt(p * (1 - p) / ys.size)
    assert abs(ys.mean() - float(x[0])) <= 3 * se_s


def test_nearest_ties_to_even():
    # bfloat16: 1 + 2**-8 is halfway between 1 and 1 + 2**-7 -> 1 (even); 1 + 3*2**-8 -> 1 + 2**-6
    x = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8)], np.float32)
    assert lowp.round_nearest(x, BF16).astype(np.float32).tolist() == [1.0, 1 + 2 ** -6, -1.0]
    # float16: 1 + 2**-11 -> 1, 1 + 3*2**-11 -> 1 + 2**-9; subnormal tie 2**-25 -> 0, 3*2**-25 -> 2**-23
    x = np.array([1 + 2 ** -11, 1 + 3 * 2 ** -11, 2.0 ** -25, 3 * 2.0 ** -25, 65520.0], np.float32)
    got = lowp.round_nearest(x, F16).astype(np.float32).tolist()
    assert got == [1.0, 1 + 2 ** -9, 0.0, 2.0 ** -23, np.inf]


def test_random_bits_split_equals_whole_and_key_dependence():
    whole = lowp.random_bits(7, 3, 1, 1000, 5000)
    parts = np.concatenate([lowp.random_bits(7, 3, 1, 1000, 1234),
                            lowp.random_bits(7, 3, 1, 2234, 3766)])
    np.testing.assert_array_equal(whole, parts)
    # crossing 2**32 elements: the key changes with the high word, the split still agrees
    a = lowp.random_bits(1, 1, 0, 2 ** 32 - 10, 20)
    b = np.concatenate([lowp.random_bits(1, 1, 0, 2 ** 32 - 10, 10),
                        lowp.random_bits(1, 1, 0, 2 ** 32, 10)])
    np.testing.assert_array_equal(a, b)
    for other in [(8, 3, 1), (7, 4, 1), (7, 3, 2)]:
        c = lowp.random_bits(*other, 1000, 5000)
        assert (c != whole).mean() > 0.99
    # roughly uniform bits
    bits = np.unpackbits(whole.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 0.01


def test_odd_buffer_shares_the_hash_of_its_even_neighbour():
    """Buffer 2k + 1's word is buffer 2k's rotated by 16: bfloat16 rounding (the high 16 bits)
    draws the two halves of one hash, which are independent of each other."""
    for b in (0, 2):
        even = lowp.random_bits(7, 3, b, 2 ** 32 - 100, 5000)
        odd = lowp.random_bits(7, 3, b + 1, 2 ** 32 - 100, 5000)
        np.testing.assert_array_equal(odd, (even << np.uint32(16)) | (even >> np.uint32(16)))
    hi = (lowp.random_bits(7, 3, 0, 0, 100_000) >> np.uint32(16)).astype(np.float64)
    lo = (lowp.random_bits(7, 3, 1, 0, 100_000) >> np.uint32(16)).astype(np.float64)
    assert abs(np.corrcoef(hi, lo)[0, 1]) < 0.02
    # bfloat16 results of buffers 0 and 1 on the same values: independent draws
    x = np.full(100_000, 1.0 + 2 ** -8, np.float32)   # rounds up with probability 1/2
    up0 = lowp.round_to(x, BF16, "stochastic", 5, 2, 0).astype(np.float32) > 1
    up1 = lowp.round_to(x, BF16, "stochastic", 5, 2, 1).astype(np.float32) > 1
    assert abs(up0.mean() - 0.5) < 0.01 and abs(up1.mean() - 0.5) < 0.01
    assert abs((up0 & up1).mean() - 0.25) < 0.01


def test_stream_key_is_fixed():
    """The stream is part of the file format of a resumed run: pin a few values."""
    assert lowp.stream_key(0, 1, 0, 0) == lowp.stream_key(0, 1, 0, 0)
    pinned = [lowp.stream_key(0, 1, 0, 0), lowp.stream_key(2 ** 64 - 1, 2 ** 53, 3, 5)]
    assert pinned == PINNED_KEYS
    np.testing.assert_array_equal(lowp.random_bits(42, 5, 0, 0, 4), PINNED_BITS)
    np.testing.assert_array_equal(lowp.random_bits(42, 5, 1, 0, 4), PINNED_BITS_ODD)


PINNED_KEYS = [4131737889, 373862747]
PINNED_BITS = np.array([1979601571, 4193961243, 3973600546, 2720040143], np.uint32)
# buffer 1: buffer 0's hash rotated by 16 (since 2026-12-07; before, its own hash)
PINNED_BITS_ODD = np.array([1386444286, 3306945018, 1428352216, 2228199968], np.uint32)


# ---------------------------------------------------------------------------
# Layouts and the twin of a step
# ---------------------------------------------------------------------------

def test_layout_of():
    z = lambda dt: np.zeros(4, dt)  # noqa: E731
    names = ["param", "grad", "exp_avg", "exp_avg_sq"]
    assert lowp.layout_of("adam", names, [z(BF16)] * 4) == ("bfloat16",) * 3
    assert lowp.layout_of("adam", names, [z(F16), z(F16), z(np.float32), z(np.float32)]) == \
        ("float16", "float16", "float32")
    assert lowp.layout_of("adam", names, [z(np.float32), z(F16), z(np.float32), z(np.float32)]) == \
        ("float32", "float16", "float32")
    with pytest.raises(TypeError, match="float16 state is not supported"):
        lowp.layout_of("adam", names, [z(F16)] * 4)
    with pytest.raises(TypeError, match="supported layouts: param float32"):
        lowp.layout_of("adam", names, [z(BF16), z(np.float32), z(BF16), z(BF16)])
    with pytest.raises(TypeError, match="state buffers must share one dtype"):
        lowp.layout_of("adam", names, [z(BF16), z(BF16), z(BF16), z(np.float32)])
    with pytest.raises(TypeError, match="exp_avg has dtype float8_e4m3fn"):
        lowp.layout_of("adam", names, [z(BF16), z(BF16), z(ml_dtypes.float8_e4m3fn), z(BF16)])


def _case(rng, n, layout):
    pdt, gdt, sdt = (np.dtype(ml_dtypes.bfloat16) if d == "bfloat16" else np.dtype(d)
                     for d in layout)
    param = rng.standard_normal(n).astype(np.float32).astype(pdt)
    grad = (rng.standard_normal(n) * 0.1).astype(np.float32).astype(gdt)
    m = (rng.standard_normal(n) * 0.01).astype(np.float32).astype(sdt)
    v = (rng.random(n) * 0.01).astype(np.float32).astype(sdt)
    return param, grad, m, v


LOWP_LAYOUTS = [l for l in lowp.LAYOUTS if "float64" not in l and l != ("float32",) * 3]


@pytest.mark.parametrize("layout", LOWP_LAYOUTS, ids=lambda l: "-".join(l))
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_twin_step_is_widen_run_round(layout, rounding):
    rng = np.random.default_rng(5)
    n = 1031
    param, grad, m, v = _case(rng, n, layout)
    p32, g32, m32, v32 = (lowp.widen(a) if a.dtype != np.float32 else a.copy()
                          for a in (param, grad, m, v))
    hp = dict(lr=1e-3, step=4, weight_decay=0.01, decoupled_weight_decay=True)
    reference.adam(p32, g32, m32, v32, **hp)
    lowp.twin_step(reference.adam, ["param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
                   [param, grad, m, v, None], rounding=rounding, seed=99, index_offset=10, **hp)
    for b, (got, want) in enumerate([(param, p32), (m, m32), (v, v32)]):
        exp = lowp.round_to(want, got.dtype, rounding, 99, 4, [0, 1, 2][b], 10)
        np.testing.assert_array_equal(got.view(np.uint8), exp.view(np.uint8))


def test_twin_step_in_two_slices_equals_whole():
    rng = np.random.default_rng(6)
    n = 3000
    layout = ("bfloat16", "bfloat16", "bfloat16")
    param, grad, m, v = _case(rng, n, layout)
    whole = [a.copy() for a in (param, grad, m, v)]
    names = ["param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
    hp = dict(lr=1e-3, step=2, rounding="stochastic", seed=2 ** 64 - 1)
    lowp.twin_step(reference.adam, names, whole + [None], **hp)
    for lo, hi in [(0, 1234), (1234, n)]:
        lowp.twin_step(reference.adam, names, [a[lo:hi] for a in (param, grad, m, v)] + [None],
                       index_offset=lo, **hp)
    for a, b in zip((param, m, v), (whole[0], whole[2], whole[3])):
        np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))


def test_twin_bad_input_modifies_nothing():
    rng = np.random.default_rng(7)
    param, grad, m, v = _case(rng, 64, ("bfloat16",) * 3)
    before = [a.copy() for a in (param, m, v)]
    names = ["param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
    with pytest.raises(ValueError, match="seed must be in 0..2\\*\\*64-1"):
        lowp.twin_step(reference.adam, names, [param, grad, m, v, None], lr=1e-3, step=1, seed=2 ** 64)
    with pytest.raises(ValueError, match="seed must be in"):
        lowp.twin_step(reference.adam, names, [param, grad, m, v, None], lr=1e-3, step=1, seed=-1)
    with pytest.raises(ValueError, match="rounding must be"):
        lowp.twin_step(reference.adam, names, [param, grad, m, v, None], lr=1e-3, step=1,
                       rounding="up")
    with pytest.raises(ValueError, match="lr must be"):
        lowp.twin_step(reference.adam, names, [param, grad, m, v, None], lr=-1.0, step=1)
    with pytest.raises(TypeError, match="unsupported layout"):
        lowp.twin_step(reference.adam, names, [param, grad.astype(np.float32), m, v, None],
                       lr=1e-3, step=1)
    for a, b in zip((param, m, v), before):
        np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))
