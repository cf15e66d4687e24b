"""Compiled kernels against the numpy twin, bit for bit: every kernel, every loop variant
(the registry's cross-product of the table's variant-selecting options), both dtypes,
awkward sizes and alignments, on every instruction-set path the CPU has."""
import numpy as np
import pytest

import lrcore
from lrcore import kernels, reference
from lrcore.registry import KERNEL_SPECS, call, make_state
from lrcore.rules import RULES

from conftest import SIZES

CASES = [(k, c) for k in KERNEL_SPECS for c in k.cases]
CASE_IDS = [f"{k.name}-{c.name}" for k, c in CASES]

# steps per trajectory: 1 and later select SGD's first-step loop; RAdam rectifies from
# step 6 with beta2 = 0.999 (rho > 5), so it runs 7
STEPS = {"radam": 7}


def _buffers(rng, n, dtype, offset):
    """Random non-zero param and grad; `offset` elements into a larger allocation so the
    data does not start on a vector boundary."""
    def fresh():
        base = rng.uniform(0.5, 1.5, n + offset) * rng.choice([-1.0, 1.0], n + offset)
        return base.astype(dtype)[offset:]
    return fresh(), fresh


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kspec,case", CASES, ids=CASE_IDS)
def test_matches_reference_bitwise(isa, kspec, case, dtype):
    # the largest size once per rule (its default case): it is the slow part of the twin
    for n in (SIZES if case is kspec.cases[0] else [n for n in SIZES if n < 10_000]):
        rng = np.random.default_rng(n)
        for offset in (0, 3):
            param, fresh = _buffers(rng, n, dtype, offset)
            start = param.copy()
            state = make_state(kspec, case, param)
            ref_param, ref_state = param.copy(), {k: v.copy() for k, v in state.items()}
            for step in range(1, STEPS.get(kspec.name, 3) + 1):
                grad = fresh()
                grad_before = grad.copy()
                call(kernels, kspec, case, param, grad, state, step)
                call(reference, kspec, case, ref_param, grad, ref_state, step)
                np.testing.assert_array_equal(grad, grad_before, err_msg="grad was written")
                np.testing.assert_array_equal(param, ref_param,
                                              err_msg=f"param, n={n}, step {step}")
                for name in state:
                    np.testing.assert_array_equal(state[name], ref_state[name],
                                                  err_msg=f"{name}, n={n}, step {step}")
            if n:
                assert not np.array_equal(param, start), "the update did nothing"


@pytest.mark.parametrize("kspec", KERNEL_SPECS, ids=[k.name for k in KERNEL_SPECS])
def test_prefetching_loop_matches_reference_bitwise(isa, kspec):
    """Calls over 4 MiB per stream take the blocked loop with software prefetch
    (lrcore__prefetch in lrcore.h); every option on (the registry's last case)."""
    case = kspec.cases[-1]
    n = (4 << 20) // 4 + 1027
    rng = np.random.default_rng(5)
    param = rng.uniform(0.5, 1.5, n).astype(np.float32)
    state = make_state(kspec, case, param)
    ref_param, ref_state = param.copy(), {k: v.copy() for k, v in state.items()}
    for step in (1, 2):
        grad = rng.standard_normal(n).astype(np.float32)
        call(kernels, kspec, case, param, grad, state, step)
        call(reference, kspec, case, ref_param, grad, ref_state, step)
    np.testing.assert_array_equal(param, ref_param)
    for name in state:
        np.testing.assert_array_equal(state[name], ref_state[name])


@pytest.mark.skipif(lrcore.backend() != "native", reason="descriptors of the compiled core")
@pytest.mark.parametrize("rule", RULES.values(), ids=list(RULES))
def test_c_structs_match_the_table(rule):
    """The C side's field descriptors (made in csrc/jobs.h from the lists LRCORE_HP_FIELDS_<rule>
    in lrcore.h, which the structs are made from too) list the table's hyperparameters in the
    same order with the same types, and the kernel has the table's number of states."""
    from lrcore.backend import core
    fields, nstates = core().hp_fields(rule.name)
    assert [(f[0], f[2]) for f in fields] == [(h.name, h.ctype) for h in rule.hypers]
    offsets = [f[1] for f in fields]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    assert nstates == len(rule.states)
    assert core().kinds()[rule.name] == rule.kind


@pytest.mark.parametrize("kspec,case", CASES, ids=CASE_IDS)
def test_every_element_moves(kspec, case):
    """A kernel that skipped part of the buffer (a lost tail, a wrong split) fails here."""
    n = 4099
    rng = np.random.default_rng(1)
    param = rng.uniform(0.5, 1.5, n).astype(np.float32)
    start = param.copy()
    state = make_state(kspec, case, param)
    call(kernels, kspec, case, param, rng.uniform(0.5, 1.5, n).astype(np.float32), state, 1)
    assert np.all(param != start)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kspec,case", CASES, ids=CASE_IDS)
def test_thread_count_is_bitwise_invariant(force_threads, isa, kspec, case, dtype):
    n = 100_003
    rng = np.random.default_rng(7)
    start = (rng.standard_normal(n + 5).astype(dtype) + 2)[5:]
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(3)]
    results = []
    for threads in (1, 2, 3, 8):
        param = start.copy()
        state = make_state(kspec, case, param)
        for step, grad in enumerate(grads, 1):
            call(kernels, kspec, case, param, grad, state, step, num_threads=threads)
        results.append((param, state))
    for param, state in results[1:]:
        assert param.tobytes() == results[0][0].tobytes()
        for name in state:
            assert state[name].tobytes() == results[0][1][name].tobytes()


def test_multidimensional_arrays_are_flat():
    rng = np.random.default_rng(3)
    p2 = rng.standard_normal((13, 7))
    p1 = p2.reshape(-1).copy()
    g = rng.standard_normal((13, 7))
    m2, v2 = np.zeros_like(p2), np.zeros_like(p2)
    m1, v1 = np.zeros_like(p1), np.zeros_like(p1)
    kernels.adam(p2, g, m2, v2, lr=0.1, step=1)
    kernels.adam(p1, g.reshape(-1), m1, v1, lr=0.1, step=1)
    np.testing.assert_array_equal(p2.reshape(-1), p1)


def test_nan_in_grad_propagates_like_torch():
    p = np.ones(9, np.float32)
    g = np.full(9, 0.5, np.float32)
    g[4] = np.nan
    kernels.adam(p, g, np.zeros(9, np.float32), np.zeros(9, np.float32), lr=0.1, step=1)
    assert np.isnan(p[4]) and np.all(np.isfinite(np.delete(p, 4)))


def test_sgd_first_step_copies_gradient_into_buffer():
    p = np.full(5, 2.0)
    g = np.arange(1.0, 6.0)
    buf = np.full(5, 123.0)  # step 1 ignores whatever the buffer held, as torch's None buffer
    kernels.sgd(p, g, buf, lr=0.1, step=1, momentum=0.9, weight_decay=0.5)
    np.testing.assert_allclose(buf, g + 0.5 * 2.0, rtol=1e-15)
    np.testing.assert_allclose(p, 2.0 - 0.1 * (g + 1.0), rtol=1e-15)


def test_returns_none():
    p, g = np.ones(3), np.ones(3)
    assert kernels.sgd(p, g, lr=0.1, step=1) is None


def test_backend_and_isa_reporting():
    assert lrcore.backend() in ("native", "python")
    assert lrcore.isa() in lrcore.available_isas()
    assert lrcore.num_threads() >= 1


@pytest.mark.skipif(lrcore.backend() != "native", reason="the probe is part of the compiled core")
@pytest.mark.parametrize("nstates", [0, 1, 2, 3])
def test_bandwidth_probe_touches_every_stream(force_threads, nstates):
    """The benchmarks' probe must really read and write every stream it is credited with."""
    from lrcore.backend import probe
    n = 10_001
    rng = np.random.default_rng(nstates)
    grad = rng.uniform(0.5, 1.5, n)
    bufs = [rng.uniform(0.5, 1.5, n) for _ in range(nstates + 1)]
    before = [b.copy() for b in bufs]
    probe(*bufs[:1], grad, *bufs[1:], num_threads=2)
    for b, b0 in zip(bufs, before):
        np.testing.assert_array_equal(b, b0 + grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adagrad_first_step_is_bitwise_torch(dtype):
    """Pins the order of the final division: torch.addcdiv computes (value * t1) / t2.
    Adagrad's first step is the one place where torch and lrcore must agree bit for bit:
    state_sum = g*g, and sqrt(g*g) = |g| exactly. Elsewhere they agree to a few ulp, not
    bitwise: torch's vector code fuses a*b + c into FMA, and its vectorised sqrt is not
    correctly rounded (about 1 float32 result in 6 is 1 ulp off); lrcore does neither."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    n = 100_003
    p0 = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    tp = torch.tensor(p0.copy(), requires_grad=True)
    tp.grad = torch.tensor(g)
    torch.optim.Adagrad([tp], lr=0.1, foreach=False).step()
    p = p0.copy()
    kernels.adagrad(p, g, np.zeros_like(p), lr=0.1, step=1)
    assert np.array_equal(p, tp.detach().numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64, "bfloat16"])
def test_lion_sign_at_zero_nan_and_inf_every_isa(isa, dtype):
    """Lion's update is param - lr * sign(c) with sign(+-0) = +-0 and sign(NaN) = NaN, where
    c = beta1 * exp_avg + (1 - beta1) * grad: exp_avg and grad are built so that c is
    exactly +0, -0, NaN, +Inf or -Inf at chosen elements (spread over vector lanes and the
    scalar tail), every other c non-zero. The compiled loops (one ordered-not-equal compare,
    lion_update in lrcore_body.h) equal the twin bit for bit and the expected values."""
    import ml_dtypes
    dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    rng = np.random.default_rng(5)
    n = 100
    m = rng.uniform(0.5, 1.5, n) * rng.choice([-1.0, 1.0], n)
    g = rng.uniform(0.5, 1.5, n) * rng.choice([-1.0, 1.0], n)
    kinds = {3: (0.0, 0.0), 17: (-0.0, -0.0), 31: (np.nan, 1.0), 48: (1.0, np.nan),
             64: (np.inf, 1.0), 80: (-np.inf, 1.0), 97: (0.0, 0.0), 98: (-0.0, -0.0),
             99: (np.nan, 0.0)}
    for i, (mi, gi) in kinds.items():
        m[i], g[i] = mi, gi
    p = rng.uniform(0.5, 1.5, n).astype(dt)
    m, g = m.astype(dt), g.astype(dt)
    p0 = p.copy()
    got_p, got_m, want_p, want_m = p.copy(), m.copy(), p.copy(), m.copy()
    with np.errstate(all="ignore"):
        kernels.lion(got_p, g, got_m, lr=0.25, step=1)
        if dtype == "bfloat16":
            from lrcore import lowp
            lowp.twin_step(reference.lion, ["param", "grad", "exp_avg"], [want_p, g, want_m],
                           rounding="nearest", seed=0, index_offset=0, lr=0.25, step=1)
        else:
            reference.lion(want_p, g, want_m, lr=0.25, step=1)
    np.testing.assert_array_equal(got_p.view(np.uint8), want_p.view(np.uint8))
    np.testing.assert_array_equal(got_m.view(np.uint8), want_m.view(np.uint8))
    w = np.float32 if dtype == "bfloat16" else dt.type
    upd = got_p.astype(w) - p0.astype(w)
    for i in (3, 17, 97, 98):          # c = +-0: the param is unchanged
        assert got_p.view(np.uint8).reshape(n, -1)[i].tobytes() == \
            p0.view(np.uint8).reshape(n, -1)[i].tobytes(), i
    assert np.isnan(got_p[[31, 48, 99]].astype(w)).all()
    assert upd[64] < 0 < upd[80]       # sign(+Inf) = 1, sign(-Inf) = -1
    rest = np.setdiff1d(np.arange(n), list(kinds))
    assert (np.abs(upd[rest]) > 0).all()
