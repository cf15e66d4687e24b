"""lrcore.optim with bfloat16 / float16 buffers (issue 12): every rule in every layout against
the contract's twin, the random stream's keying, resume, state_nbytes, bad input.

The twin is the contract itself, built from other parts of lrcore: widen the half-precision
param, state and grad to float32, run one step of the float32 optimizer (its compiled
StepPlan) on them, round param and state back with lrcore.lowp.round_to (buffer 0 the param,
1, 2, ... the states in kernel order; index_offset = the param's place in the concatenation
of all params; the step number). Every comparison is bitwise, on non-zero random data.
"""
import re

import ml_dtypes
import numpy as np
import pytest

import lrcore
from lrcore import backend, checkpoint, lowp, optim
from lowp_helpers import Float32Twin, bits as _bits, case_class as _cls, rand as _rand, widen as _widen

BF16, F16, F32 = lowp.bfloat16, np.dtype(np.float16), np.dtype(np.float32)
SIZES = (37, 300)                      # around SIMD widths, and a multi-vector buffer
STEPS = 3

CASES = {                              # class name -> constructor keywords
    "SGD": dict(lr=1e-2, momentum=0.9, weight_decay=0.01),
    "SGD-nesterov": dict(lr=1e-2, momentum=0.9, nesterov=True),
    "Adam": dict(lr=1e-2, weight_decay=0.01),
    "Adam-amsgrad": dict(lr=1e-2, amsgrad=True),
    "AdamW": dict(lr=1e-2),
    "Adagrad": dict(lr=1e-2, lr_decay=0.01),
    "RMSprop": dict(lr=1e-2, momentum=0.5, centered=True),
    "Adadelta": dict(lr=0.5),
    "Adamax": dict(lr=1e-2),
    "NAdam": dict(lr=1e-2),
    "RAdam": dict(lr=1e-2),
    "Lion": dict(lr=1e-3, weight_decay=0.1),
}
# (param dtype, grad dtype, state_dtype option): layouts (a), (b), (c) of lrcore.lowp.LAYOUTS
LAYOUTS = {
    "a-bf16": (BF16, BF16, None),
    "b-bf16": (BF16, BF16, "float32"),
    "b-f16": (F16, F16, None),
    "c-bf16": (F32, BF16, None),
    "c-f16": (F32, F16, "float32"),
}


class Twin(Float32Twin):
    """The contract of a half-precision step: widen, the float32 optimizer, round once."""

    def __init__(self, cls, params, kw, state_dtype, rounding, seed):
        super().__init__(cls, params, kw, rounding, seed)
        self.pdt = [p.dtype for p in params]
        self.sdt = [BF16 if (state_dtype is None and p.dtype == BF16) else F32 for p in params]
        self.slots = self.opt.state_slots

    def _state_as_float32(self, s):
        return _widen(s)

    def _store(self, i, off, t, state32):
        self.half[i] = self._round(self.p32[i], self.pdt[i], 0, t, off)
        self.states[i] = {name: self._round(a, self.sdt[i], self.slots.index(name) + 1, t, off)
                          for name, a in state32.items()}

    def _round(self, x, dtype, buffer, t, off):
        if dtype == F32:
            return x.copy()
        r = lowp.round_to(x.reshape(-1), dtype, self.rounding, self.seed, t, buffer, off)
        return r.view(dtype).reshape(x.shape)


def _run(case, layout, rounding, seed=11, steps=STEPS, sizes=SIZES, num_threads=None):
    pdt, gdt, state_dtype = LAYOUTS[layout]
    rng = np.random.default_rng(5)
    params = [_rand(rng, n, pdt) for n in sizes]
    grads = [[_rand(rng, n, gdt) for n in sizes] for _ in range(steps)]
    kw = CASES[case]
    twin = Twin(_cls(case), params, kw, state_dtype, rounding, seed)
    opt = _cls(case)(params, state_dtype=state_dtype, rounding=rounding, seed=seed,
                     num_threads=num_threads, **kw)
    for g in grads:
        opt.step(g)
        twin.step(g)
    return params, opt, twin


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("case", list(CASES))
def test_every_rule_and_layout_equals_the_twin(case, layout, rounding):
    params, opt, twin = _run(case, layout, rounding)
    sd = opt.state_dict()
    for i, p in enumerate(params):
        assert p.dtype == LAYOUTS[layout][0]
        assert np.array_equal(_bits(p), _bits(twin.half[i])), f"params[{i}]"
        assert set(sd["state"][i]) == set(twin.states[i])
        for name, a in sd["state"][i].items():
            assert a.dtype == twin.sdt[i], name
            assert np.array_equal(_bits(a), _bits(twin.states[i][name])), f"{name} of {i}"
    # the steps did something
    start = [_rand(np.random.default_rng(5), n, LAYOUTS[layout][0]) for n in SIZES]
    assert not np.array_equal(_bits(params[1]), _bits(start[1]))


def test_isas_and_threads_agree(isa):
    ref, _, twin = _run("AdamW", "a-bf16", "stochastic", sizes=(5000, 70001))
    for nt in (1, 2, 3):
        got, _, _ = _run("AdamW", "a-bf16", "stochastic", sizes=(5000, 70001), num_threads=nt)
        for a, b, c in zip(got, ref, twin.half):
            assert np.array_equal(_bits(a), _bits(b)) and np.array_equal(_bits(a), _bits(c))


def test_float32_optimizer_takes_half_grads_and_float32_grads():
    """Layout (c) in an all-float32 optimizer: half grads take the per-param path, float32
    grads the StepPlan, and one continues the other."""
    rng = np.random.default_rng(1)
    p = [_rand(rng, n, F32) for n in SIZES]
    q = [x.copy() for x in p]
    gs = [[_rand(rng, n, BF16) for n in SIZES] for _ in range(4)]
    a, b = optim.Adam(p, lr=1e-2), optim.Adam(q, lr=1e-2)
    for t, g in enumerate(gs):
        a.step(g if t % 2 else [_widen(x) for x in g])
        b.step([_widen(x) for x in g])
    for x, y in zip(p, q):
        assert np.array_equal(_bits(x), _bits(y))


def test_stream_is_keyed_by_the_concatenation():
    """Param i draws the bits of elements offset_i.. of the concatenation of all params: two
    params equal one param holding both; equal values in two params round differently."""
    rng = np.random.default_rng(2)
    a, b = _rand(rng, 300, BF16), _rand(rng, 300, BF16)
    b[...] = a
    whole = np.concatenate([a, b])
    gs = [_rand(rng, 300, BF16) for _ in range(3)]
    two = optim.AdamW([a, b], lr=1e-3, rounding="stochastic", seed=9)
    one = optim.AdamW([whole], lr=1e-3, rounding="stochastic", seed=9)
    for g in gs:
        two.step([g, g.copy()])
        one.step([np.concatenate([g, g])])
    assert np.array_equal(_bits(np.concatenate([a, b])), _bits(whole))
    assert not np.array_equal(_bits(a), _bits(b))
    # another seed, another stream
    c = whole.copy()
    c[...] = np.concatenate([_rand(np.random.default_rng(2), 300, BF16)] * 2)
    other = optim.AdamW([c], lr=1e-3, rounding="stochastic", seed=10)
    for g in gs:
        other.step([np.concatenate([g, g])])
    assert not np.array_equal(_bits(c), _bits(whole))


@pytest.mark.parametrize("how", ["state_dict", "file"])
@pytest.mark.parametrize("layout", ["a-bf16", "b-f16"])
def test_resume_is_bitwise(tmp_path, layout, how):
    pdt, gdt, state_dtype = LAYOUTS[layout]
    rng = np.random.default_rng(3)
    start = [_rand(rng, n, pdt) for n in SIZES]
    grads = [[_rand(rng, n, gdt) for n in SIZES] for _ in range(6)]
    kw = dict(lr=1e-2, state_dtype=state_dtype, rounding="stochastic", seed=2 ** 64 - 1)
    full = [p.copy() for p in start]
    opt = optim.NAdam(full, **kw)
    for g in grads:
        opt.step(g)
    part = [p.copy() for p in start]
    opt = optim.NAdam(part, **kw)
    for g in grads[:3]:
        opt.step(g)
    resumed = [np.zeros_like(p) for p in start]
    new = optim.NAdam(resumed, **dict(kw, seed=0, rounding="nearest"))
    if how == "state_dict":
        sd = opt.state_dict()
        assert {a.dtype for st in sd["state"] for a in st.values()} == \
            {BF16 if state_dtype is None and pdt == BF16 else F32}
        new.load_state_dict(sd)
        for x, y in zip(resumed, part):
            x[...] = y
    else:
        checkpoint.save(tmp_path / "c.lrcore", opt)
        checkpoint.load(tmp_path / "c.lrcore", new)
    assert (new.seed, new.rounding) == (2 ** 64 - 1, "stochastic")   # loaded with the state
    for g in grads[3:]:
        new.step(g)
    for x, y in zip(resumed, full):
        assert np.array_equal(_bits(x), _bits(y))


# state_dtype spellings equal in meaning: each pair gives every param the same state buffers
# (None is the param's dtype for float32 and bfloat16 params, float32 for float16 params)
EQUIVALENT = [(F32, None, "float32"), (BF16, None, "bfloat16"), (F16, None, "float32")]
# (param dtype, saved, loading optimizer's, words of the refusal): other state buffers
DIFFERENT = [
    (BF16, None, "float32", "params[0] (bfloat16 (37,)) has bfloat16 state in it, float32 "
                            "state in this optimizer"),
    (BF16, "float32", None, "has float32 state in it, bfloat16 state in this optimizer"),
    (F32, None, "int8", "params[1] (float32 (5000,)) has float32 state in it, 8-bit exp_avg"),
    (F32, "int8", None, "params[1] (float32 (5000,)) has 8-bit exp_avg"),
]
EQUIVALENCE_SIZES = (37, 5000)         # 5000: 8-bit state under state_dtype="int8"


def _pair_ids(pairs):
    return [f"{np.dtype(p[0]).name}-{p[1]}-{p[2]}" for p in pairs]


def _transfer(tmp_path, how, source, target):
    """source's state into target: load_state_dict(state_dict()), or lrcore.save/load."""
    if how == "state_dict":
        target.load_state_dict(source.state_dict())
    else:
        lrcore.save(tmp_path / "c.lrc", source)
        lrcore.load(tmp_path / "c.lrc", target)


@pytest.mark.parametrize("how", ["state_dict", "file"])
@pytest.mark.parametrize("pdt, saved, mine",
                         EQUIVALENT + [(p, b, a) for p, a, b in EQUIVALENT],
                         ids=_pair_ids(EQUIVALENT + [(p, b, a) for p, a, b in EQUIVALENT]))
def test_equivalent_state_dtypes_load_and_resume_bitwise(tmp_path, pdt, saved, mine, how):
    """State saved under one spelling loads into an optimizer built with the other (both
    directions; state dict and file), and the run continues bit for bit as the
    uninterrupted one: state_dtype is compared by what it gives each param."""
    rng = np.random.default_rng(8)
    start = [_rand(rng, n, pdt) for n in EQUIVALENCE_SIZES]
    grads = [[_rand(rng, n, pdt) for n in EQUIVALENCE_SIZES] for _ in range(6)]
    kw = dict(lr=1e-2, rounding="stochastic", seed=2 ** 64 - 5)
    full = [p.copy() for p in start]
    opt = optim.NAdam(full, state_dtype=saved, **kw)
    for g in grads:
        opt.step(g)
    part = [p.copy() for p in start]
    opt = optim.NAdam(part, state_dtype=saved, **kw)
    for g in grads[:3]:
        opt.step(g)
    resumed = [p.copy() for p in part]
    new = optim.NAdam(resumed, state_dtype=mine, **dict(kw, seed=0, rounding="nearest"))
    _transfer(tmp_path, how, opt, new)
    assert (new.state_dtype, new.seed, new.rounding, new.step_count) == \
        (mine, 2 ** 64 - 5, "stochastic", 3)
    for a, b in zip(new.state_dict()["state"], opt.state_dict()["state"]):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(_bits(a[k]), _bits(b[k])), k
    for g in grads[3:]:
        new.step(g)
    for x, y in zip(resumed, full):
        assert np.array_equal(_bits(x), _bits(y))


@pytest.mark.parametrize("how", ["state_dict", "file"])
@pytest.mark.parametrize("pdt, saved, mine, words", DIFFERENT, ids=_pair_ids(DIFFERENT))
def test_different_state_dtypes_are_refused_and_change_nothing(tmp_path, pdt, saved, mine,
                                                               words, how):
    """A state_dtype that gives some param other state buffers is refused, the message
    naming both values, the param and the two states; the optimizer is left as it was."""
    rng = np.random.default_rng(9)
    source = optim.Adam([_rand(rng, n, pdt) for n in EQUIVALENCE_SIZES], state_dtype=saved)
    source.step([_rand(rng, n, pdt) for n in EQUIVALENCE_SIZES])
    params = [_rand(rng, n, pdt) for n in EQUIVALENCE_SIZES]
    target = optim.Adam(params, state_dtype=mine, rounding="stochastic", seed=4)
    target.step([_rand(rng, n, pdt) for n in EQUIVALENCE_SIZES])
    before, state = [_bits(p).copy() for p in params], _state(target)
    with pytest.raises(ValueError) as info:
        _transfer(tmp_path, how, source, target)
    message = str(info.value)
    assert f"the state dict has state_dtype={saved!r}, this optimizer {mine!r}: " in message
    assert words in message and "state_dtype is fixed at construction" in message
    assert all(np.array_equal(_bits(p), b) for p, b in zip(params, before))
    now = _state(target)
    assert now.keys() == state.keys() and all(np.array_equal(now[k], state[k]) for k in now)
    assert (target.step_count, target.seed, target.rounding) == (1, 4, "stochastic")


@pytest.mark.parametrize("pdt, saved, mine",
                         EQUIVALENT + [(p, b, a) for p, a, b in EQUIVALENT],
                         ids=_pair_ids(EQUIVALENT + [(p, b, a) for p, a, b in EQUIVALENT]))
def test_sharded_optimizer_compares_state_dtypes_by_meaning(pdt, saved, mine):
    """lrcore.distributed.ShardedOptimizer (one process) loads a state dict saved under the
    other spelling and continues bit for bit; other state buffers are refused."""
    pytest.importorskip("mpi4py")
    from lrcore.distributed import ShardedOptimizer
    rng = np.random.default_rng(10)
    start = [_rand(rng, n, pdt) for n in EQUIVALENCE_SIZES]
    grads = [[_rand(rng, n, pdt) for n in EQUIVALENCE_SIZES] for _ in range(4)]
    kw = dict(lr=1e-2, rounding="stochastic", seed=5)
    full = [p.copy() for p in start]
    opt = optim.Adam(full, state_dtype=saved, **kw)
    for g in grads[:2]:
        opt.step(g)
    sd = opt.state_dict()
    resumed = [p.copy() for p in full]
    sharded = ShardedOptimizer(resumed, optim.Adam, state_dtype=mine, bucket_elements=1000,
                               **kw)
    sharded.load_state_dict(sd)
    for g in grads[2:]:
        opt.step(g)
        sharded.step(g)
    for x, y in zip(resumed, full):
        assert np.array_equal(_bits(x), _bits(y))
    if pdt == BF16:      # bfloat16 state (None) against float32 state: refused
        other = ShardedOptimizer([p.copy() for p in start], optim.Adam,
                                 state_dtype="float32" if mine != "float32" else None)
        with pytest.raises(ValueError, match="has bfloat16 state in it, float32 state in "
                                             "this optimizer|has float32 state in it, "
                                             "bfloat16 state in this optimizer"):
            other.load_state_dict(sd)
        assert other.step_count == 0


def test_a_state_dtype_no_param_can_have_is_refused():
    """A saved state_dtype that is not one, or that the params cannot have (bfloat16 state
    for float64 or float16 params), is refused naming it."""
    for pdt, value, words in ((np.float64, "bfloat16", "params[0] (float64 (5,)) cannot "
                                                       "have that state, float64 state"),
                              (F16, "bfloat16", "cannot have that state, float32 state"),
                              (F32, "int4", "state_dtype='int4', expected None, 'float32'")):
        opt = optim.Adam([np.ones(5, pdt)])
        sd = opt.state_dict()
        sd["state_dtype"] = value
        with pytest.raises(ValueError, match=re.escape(words)):
            optim.Adam([np.ones(5, pdt)]).load_state_dict(sd)


def test_state_nbytes():
    n = 1 << 16
    for pdt, state_dtype, per in ((F32, None, 8), (BF16, None, 4), (BF16, "float32", 8),
                                  (F16, None, 8)):
        opt = optim.Adam([np.zeros(n, pdt)], state_dtype=state_dtype)
        assert opt.state_nbytes() == per * n
    assert optim.SGD([np.zeros(n, BF16)]).state_nbytes() == 0
    assert optim.SGD([np.zeros(n, BF16)], momentum=0.9).state_nbytes() == 2 * n


def _state(opt):
    return {(i, k): _bits(v).copy() for i, st in enumerate(opt.state_dict()["state"])
            for k, v in st.items()}


@pytest.mark.parametrize("kw,params,exc,match", [
    (dict(state_dtype="float16"), [np.ones(5, F16)], ValueError,
     "state_dtype='float16' is not supported: squares of gradients overflow"),
    (dict(state_dtype="bfloat16"), [np.ones(5, F32)], TypeError,
     r"params\[0\] is float32 and state_dtype='bfloat16'.*Supported layouts: param float32"),
    (dict(state_dtype="float32"), [np.ones(5, np.float64)], TypeError, "unsupported layout"),
    (dict(state_dtype="int4"), [np.ones(5, F32)], ValueError, "state_dtype must be None"),
    (dict(rounding="up"), [np.ones(5, F32)], ValueError, "rounding must be 'nearest' or"),
    (dict(seed=-1), [np.ones(5, F32)], ValueError, r"seed must be in 0..2\*\*64-1"),
    (dict(seed=2 ** 64), [np.ones(5, F32)], ValueError, r"seed must be in 0..2\*\*64-1"),
    (dict(seed=1.0), [np.ones(5, F32)], TypeError, "seed must be an integer"),
    (dict(), [np.ones(5, np.dtype(">f4"))], TypeError, "native byte order"),
])
def test_bad_construction(kw, params, exc, match):
    before = [p.tobytes() for p in params]
    with pytest.raises(exc, match=match):
        optim.Adam(params, **kw)
    assert [p.tobytes() for p in params] == before


@pytest.mark.parametrize("layout", ["a-bf16", "b-f16", "c-bf16"])
def test_bad_grads_change_nothing(layout):
    pdt, gdt, state_dtype = LAYOUTS[layout]
    rng = np.random.default_rng(4)
    params = [_rand(rng, n, pdt) for n in SIZES]
    opt = optim.Adam(params, lr=1e-2, state_dtype=state_dtype, rounding="stochastic")
    opt.step([_rand(rng, n, gdt) for n in SIZES])
    good = [_rand(rng, n, gdt) for n in SIZES]
    other = {BF16: F16, F16: BF16, F32: np.dtype(np.float64)}[gdt] if pdt != F32 else \
        np.dtype(np.int32)
    bad = [
        ([good[0], good[1].astype(other)], TypeError, r"grads\[1\].*Supported layouts"),
        ([good[0], good[1][:-1]], ValueError, r"grads\[1\] has 299 elements"),
        ([good[0]], ValueError, "1 grads for 2 params"),
        ([good[0], np.zeros((300, 2), gdt)[:, 0]], ValueError, "C-contiguous"),
        ([good[0], params[1]], ValueError, "shares memory"),
    ]
    for grads, exc, match in bad:
        before = [_bits(p).copy() for p in params]
        state = _state(opt)
        with pytest.raises(exc, match=match):
            opt.step(grads)
        assert all(np.array_equal(_bits(p), b) for p, b in zip(params, before))
        st = _state(opt)
        assert st.keys() == state.keys() and all(np.array_equal(st[k], state[k]) for k in st)
        assert opt.step_count == 1


def test_bad_state_dict_changes_nothing():
    rng = np.random.default_rng(6)
    params = [_rand(rng, n, BF16) for n in SIZES]
    opt = optim.Adam(params, lr=1e-2, rounding="stochastic", seed=3)
    opt.step([_rand(rng, n, BF16) for n in SIZES])
    base = opt.state_dict()
    breakers = [
        (lambda sd: sd["state"][1].update(exp_avg=sd["state"][1]["exp_avg"].astype(F32)),
         r"state 'exp_avg' is float32 \(300,\), expected bfloat16"),
        (lambda sd: sd.update(state_dtype="float32"), "state_dtype is fixed at construction"),
        (lambda sd: sd.update(seed=-5), r"seed must be in 0..2\*\*64-1"),
        (lambda sd: sd.update(rounding="down"), "rounding must be"),
    ]
    for breaker, match in breakers:
        sd = opt.state_dict()
        breaker(sd)
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(sd)
        now = opt.state_dict()
        assert (opt.seed, opt.rounding, now["step"]) == (3, "stochastic", 1)
        for a, b in zip(now["state"], base["state"]):
            assert all(np.array_equal(_bits(a[k]), _bits(b[k])) for k in a)


def test_version_1_state_dict_still_loads():
    p = [np.linspace(-1, 1, 50).astype(np.float32)]
    opt = optim.Adam(p, lr=1e-2)
    opt.step([np.ones(50, np.float32)])
    sd = opt.state_dict()
    for key in ("state_dtype", "rounding", "seed"):
        del sd[key]
    sd["version"] = 1
    q = [p[0].copy()]
    other = optim.Adam(q, lr=1e-2, seed=4)
    other.load_state_dict(sd)
    assert other.seed == 4 and other.step_count == 1


def test_clip_and_skip_nonfinite_on_half_grads():
    rng = np.random.default_rng(8)
    p = [_rand(rng, n, BF16) for n in SIZES]
    q = [x.copy() for x in p]
    g = [_rand(rng, n, BF16) for n in SIZES]
    a = optim.SGD(p, lr=0.1)
    b = optim.SGD(q, lr=0.1)
    assert a.step(g, clip_norm=1.0)
    norm = np.sqrt(sum(float(np.sum(_widen(x).astype(np.float64) ** 2)) for x in g))
    assert a.last_grad_norm == pytest.approx(norm, rel=1e-12)
    scale = np.float32(1.0 / (norm + 1e-6))
    b.step([lowp.round_nearest(_widen(x) * scale, BF16) for x in g])
    for x, y in zip(p, q):
        assert np.array_equal(_bits(x), _bits(y))
    before = [_bits(x).copy() for x in p]
    g[1][3] = np.inf
    assert not a.step(g, skip_nonfinite=True)
    assert all(np.array_equal(_bits(x), y) for x, y in zip(p, before)) and a.step_count == 1


@pytest.mark.parametrize("layout,state_dtype", [
    ("c-bf16", None), ("c-f16", None), ("c-bf16", "int8"), ("b-f16", None), ("b-bf16", "float32")])
def test_clipped_half_grads_follow_the_readme(layout, state_dtype):
    """README: clip_norm on the per-param path scales a half-precision grad of a
    bfloat16/float16 param and rounds it to nearest in its dtype, while a half-precision grad
    of a float32 param is kept in float32 (widened exactly, scaled in float32). So, bitwise:
    a float32 param with bfloat16/float16 grads steps as the float32 optimizer given the
    widened grads and the same clip_norm; a half-precision param steps as the same
    optimizer given round_nearest(widen(g) * float32(scale)) without clipping."""
    pdt, gdt, _ = LAYOUTS[layout]
    sizes = (37, 300, 5000) if state_dtype == "int8" else (37, 300)
    rng = np.random.default_rng(21)
    start = [_rand(rng, n, pdt) for n in sizes]
    kw = dict(lr=1e-2, weight_decay=0.01, state_dtype=state_dtype)
    a = optim.Adam([x.copy() for x in start], **kw)
    b = optim.Adam([x.copy() for x in start], **kw)
    scales = []
    for step in range(3):
        g = [_rand(rng, n, gdt) for n in sizes]
        keep = [_bits(x).copy() for x in g]
        assert a.step(g, clip_norm=0.5 * (step + 1)) is True
        assert all(np.array_equal(_bits(x), y) for x, y in zip(g, keep)), "grads written"
        scale = min(1.0, 0.5 * (step + 1) / (a.last_grad_norm + 1e-6))
        scales.append(scale)
        if pdt == F32:
            assert b.step([_widen(x) for x in g], clip_norm=0.5 * (step + 1)) is True
            assert b.last_grad_norm == a.last_grad_norm
        else:
            b.step([lowp.round_nearest(_widen(x) * np.float32(scale), gdt) for x in g])
        for i, (x, y) in enumerate(zip(a.params, b.params)):
            assert np.array_equal(_bits(x), _bits(y)), f"step {step}, params[{i}]"
        sa, sb = a.state_dict()["state"], b.state_dict()["state"]
        for i, (x, y) in enumerate(zip(sa, sb)):
            assert sorted(x) == sorted(y)
            for k in x:
                assert np.array_equal(_bits(np.asarray(x[k])), _bits(np.asarray(y[k]))), \
                    f"step {step}, state {i} {k}"
    assert max(scales) < 0.1                       # every step was clipped


@pytest.mark.parametrize("pdt,gdt,state_dtype", [
    (F32, F32, "int8"), (F32, BF16, None), (F32, np.float16, None), (BF16, BF16, "int8"),
    (BF16, BF16, None), (np.float16, np.float16, None)])
def test_clip_norm_on_the_per_param_path_takes_0d_params(pdt, gdt, state_dtype):
    """A clipped grad of a 0-d param stays a 0-d array (np.float32 * np.float32 on 0-d
    arrays gives a numpy scalar, which the kernel refused after the params before it had
    been stepped: a half-applied step). The step equals the float32 optimizer's over the
    widened grads (float32 param) or the unclipped step over the rounded scaled grads."""
    rng = np.random.default_rng(3)
    start = [_rand(rng, 5000, pdt), np.array(1.5, pdt), _rand(rng, 7, pdt)]
    a = optim.Adam([x.copy() for x in start], lr=1e-2, state_dtype=state_dtype)
    b = optim.Adam([x.copy() for x in start], lr=1e-2, state_dtype=state_dtype)
    for _ in range(2):
        g = [_rand(rng, 5000, gdt), np.array(-0.75, gdt), _rand(rng, 7, gdt)]
        assert a.step(g, clip_norm=0.5) is True
        scale = min(1.0, 0.5 / (a.last_grad_norm + 1e-6))
        if pdt == F32:
            b.step([_widen(x) for x in g], clip_norm=0.5)
        else:
            b.step([lowp.round_nearest(np.atleast_1d(_widen(x) * np.float32(scale)),
                                       gdt).reshape(x.shape) for x in g])
    assert a.step_count == 2 and a.params[1].shape == ()
    for x, y in zip(a.params, b.params):
        assert np.array_equal(_bits(np.atleast_1d(x)), _bits(np.atleast_1d(y)))


def test_backend_kernels_are_the_ones_used(monkeypatch):
    """The per-param path calls the backend's kernel (its run_checked entry: the kernel
    without the per-call checks the optimizer has made) with the param's index_offset."""
    seen = []
    real = backend.kernels.adam.run_checked

    def spy(arrays, hp, rounding, seed, index_offset, num_threads):
        seen.append((index_offset, seed, rounding, hp["step"]))
        return real(arrays, hp, rounding, seed, index_offset, num_threads)
    monkeypatch.setattr(backend.kernels.adam, "run_checked", spy)
    params = [np.zeros(n, BF16) for n in (10, 20, 30)]
    opt = optim.Adam(params, rounding="stochastic", seed=5)
    opt._lowp_ok = False     # the per-param path (else one StepPlan call, tested below)
    opt.step([np.ones(n, BF16) for n in (10, 20, 30)])
    opt.step([np.ones(n, BF16) for n in (10, 20, 30)])
    assert seen == [(0, 5, "stochastic", 1), (10, 5, "stochastic", 1), (30, 5, "stochastic", 1),
                    (0, 5, "stochastic", 2), (10, 5, "stochastic", 2), (30, 5, "stochastic", 2)]


_PLAN_CASES = ["SGD-momentum", "Adam", "AdamW-amsgrad", "RMSprop-centered", "Adagrad", "Lion",
               "NAdam", "Adadelta"]


@pytest.mark.skipif(backend.name != "native", reason="the one-call plan is the compiled core's")
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("case", _PLAN_CASES)
def test_one_call_plan_equals_the_per_param_calls(case, rounding):
    """Without 8-bit state the optimizer steps every param in one StepPlan call (lrcore.lowp's
    layouts, each param at its index_offset); the per-param calls give the same bits. Params
    of several layouts in one optimizer (bfloat16, float16, float32 with bfloat16 and float16
    grads, float64), sizes around the vector widths, two groups, 5 steps with a set() of the
    second group's hyperparameters between them (SGD: momentum off, then on again)."""
    cls = _cls(case)
    kw = {"SGD-momentum": dict(lr=0.05, momentum=0.9), "AdamW-amsgrad": dict(lr=0.01, amsgrad=True),
          "RMSprop-centered": dict(lr=0.01, centered=True, momentum=0.5)}.get(case, dict(lr=0.01))
    rng = np.random.default_rng(11)
    specs = [(BF16, 33), (np.float16, 17), (F32, 65), (BF16, 1), (np.float64, 9), (F32, 31)]
    gdts = [BF16, np.float16, BF16, BF16, np.float64, np.float16]
    start = [_rand(rng, n, dt) for dt, n in specs]
    runs = []
    for plan in (True, False):
        params = [x.copy() for x in start]
        opt = cls([{"params": params[:3]}, {"params": params[3:]}], rounding=rounding, seed=3, **kw)
        opt._lowp_ok = opt._lowp_ok and plan
        grng = np.random.default_rng(12)
        for t in range(5):
            if t == 2 and "momentum" in kw:
                opt.set(momentum=0.0, group=1)
            if t == 3 and "momentum" in kw:
                opt.set(momentum=0.9, group=1)
            if t == 4:
                opt.set(lr=kw["lr"] / 2, group=1)
            assert opt.step([_rand(grng, n, gdt)
                             for (_, n), gdt in zip(specs, gdts)]) is True
        assert (opt._lowp_plan is not None) == plan
        sd = opt.state_dict()
        runs.append((params, [{k: np.asarray(v).copy() for k, v in st.items()}
                              for st in sd["state"]]))
    for x, y in zip(runs[0][0], runs[1][0]):
        assert np.array_equal(_bits(x), _bits(y))
    for sa, sb in zip(runs[0][1], runs[1][1]):
        assert sa.keys() == sb.keys()
        for k in sa:
            assert np.array_equal(_bits(np.atleast_1d(sa[k])), _bits(np.atleast_1d(sb[k])))


@pytest.mark.skipif(backend.name != "native", reason="the one-call plan is the compiled core's")
def test_one_call_plan_refuses_a_grad_on_an_unused_state():
    """A grad that is a state buffer the step does not use (SGD's momentum_buffer after
    set(momentum=0)) is refused by name as on the per-param path, nothing changed; a grad at
    an odd byte offset, which the plan does not take, steps through the per-param path."""
    params = [_rand(np.random.default_rng(1), 40, BF16)]
    orig = params[0].copy()
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    opt.step([np.ones(40, BF16)])
    opt.set(momentum=0.0)
    buf = opt.state_dict()["state"][0]["momentum_buffer"]
    live = next(iter(opt._states[0].values()))
    before = params[0].copy()
    with pytest.raises(ValueError, match="share"):
        opt.step([live])
    assert np.array_equal(_bits(params[0]), _bits(before)) and opt.step_count == 1
    assert np.array_equal(_bits(live), _bits(buf))
    raw = np.zeros(81, np.uint8)[1:].view(BF16)
    raw[...] = np.ones(40, BF16)
    ref = optim.SGD([orig], lr=0.1, momentum=0.9)
    ref.step([np.ones(40, BF16)])
    ref.set(momentum=0.0)
    ref.step([np.ones(40, BF16)])
    assert opt.step([raw]) is True
    assert np.array_equal(_bits(params[0]), _bits(ref.params[0]))


@pytest.mark.parametrize("sizes", [[5], [16384], [16385, 7, 100_003], [(1 << 18) + 9, 33]])
def test_per_param_clip_norm_sums_in_the_native_blocked_order(sizes):
    """The per-param path's norm (half-precision grads, 8-bit state) is summed as the compiled
    core's grad_sumsq sums float32 grads: fixed blocks, never a BLAS dot product whose bits
    follow its thread count. bfloat16 grads widen exactly, so their sum equals the native
    sum over the widened float32 copies."""
    from lrcore.optim import precision
    rng = np.random.default_rng(len(sizes))
    grads = [rng.standard_normal(n).astype(np.float32) * 3 for n in sizes]
    plan_opt = optim.Adam([np.zeros(n, np.float32) for n in sizes], lr=1e-3)
    for threads in (1, 2, 3):
        native, _ = plan_opt._plan.grad_sumsq(grads, threads)
        assert precision.grad_sumsq(grads)[0] == native
    half = [g.astype(ml_dtypes.bfloat16) for g in grads]
    widened = [h.astype(np.float32) for h in half]
    assert precision.grad_sumsq(half)[0] == plan_opt._plan.grad_sumsq(widened, 2)[0]
