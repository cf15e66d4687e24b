"""lrcore.optim with 8-bit state (issue 13): every rule of lrcore.quantization.INT8_RULES against
the contract's twin, the float32 fallback of small buffers, Adam8, resume, bad state dicts.

The twin: decode the 8-bit states (lrcore.quantization.dequantize), run one step of the
float32 optimizer on float32 copies of param, grad and states, encode the states again
(lrcore.quantization.quantize: per block absmax and exact nearest codes), round a bfloat16
param back (lrcore.lowp.round_to, buffer 0, index_offset = the param's place among all
params). Bitwise, on non-zero random data.
"""
import copy
import ml_dtypes
import numpy as np
import pytest

from lrcore import checkpoint, lowp, optim
from lrcore import quantization as q
from lowp_helpers import Float32Twin, bits as _bits, case_class as _cls, rand as _rand, widen as _widen

BF16, F32 = lowp.bfloat16, np.dtype(np.float32)
SIZES = (100, 5000)          # below MIN_ELEMENTS (float32 state), and 20 blocks (last partial)
STEPS = 3

CASES = {                    # class name -> (INT8_RULES row, constructor keywords)
    "Adam": ("adam", dict(lr=1e-2, weight_decay=0.01)),
    "Adam-amsgrad": ("adam", dict(lr=1e-2, amsgrad=True)),
    "AdamW": ("adam", dict(lr=1e-2)),
    "NAdam": ("nadam", dict(lr=1e-2)),
    "RAdam": ("radam", dict(lr=1e-2)),
    "SGD": ("sgd", dict(lr=1e-2, momentum=0.9)),
    "RMSprop": ("rmsprop", dict(lr=1e-3, momentum=0.5)),
    "Lion": ("lion", dict(lr=1e-3, weight_decay=0.1)),
}


def test_every_int8_rule_has_a_case():
    assert set(q.INT8_RULES) == {rule for rule, _ in CASES.values()}


class Twin(Float32Twin):
    """decode, the float32 optimizer, encode; a bfloat16 param rounded once."""

    def __init__(self, cls, rule, params, kw, rounding, seed):
        super().__init__(cls, params, kw, rounding, seed)
        self.int8 = q.INT8_RULES[rule]

    def _state_as_float32(self, s):
        return s.dequantize() if isinstance(s, q.QuantizedState) else s.copy()

    def _store(self, i, off, t, state32):
        if self.half[i].dtype == BF16:
            self.half[i] = lowp.round_to(self.p32[i], BF16, self.rounding, self.seed, t, 0,
                                         off).view(BF16)
        else:
            self.half[i] = self.p32[i].copy()
        self.states[i] = {
            name: (q.QuantizedState.from_float(a, self.int8[name])
                   if a.size >= q.MIN_ELEMENTS and name in self.int8 else a.copy())
            for name, a in state32.items()}


def _run(case, pdt, gdt, rounding, seed=7, steps=STEPS, sizes=SIZES, num_threads=None):
    rule, kw = CASES[case]
    rng = np.random.default_rng(5)
    params = [_rand(rng, n, pdt) for n in sizes]
    grads = [[_rand(rng, n, gdt) for n in sizes] for _ in range(steps)]
    twin = Twin(_cls(case), rule, params, kw, rounding, seed)
    opt = _cls(case)(params, state_dtype="int8", rounding=rounding, seed=seed,
                     num_threads=num_threads, **kw)
    for g in grads:
        opt.step(g)
        twin.step(g)
    return params, opt, twin


@pytest.mark.parametrize("dtypes", ["f32", "bf16", "f32-bf16grad"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_int8_rule_equals_the_twin(case, dtypes):
    pdt, gdt = {"f32": (F32, F32), "bf16": (BF16, BF16), "f32-bf16grad": (F32, BF16)}[dtypes]
    rounding = "stochastic" if pdt == BF16 else "nearest"
    params, opt, twin = _run(case, pdt, gdt, rounding)
    sd = opt.state_dict()
    for i, p in enumerate(params):
        assert np.array_equal(_bits(p), _bits(twin.half[i])), f"params[{i}]"
        for name, s in twin.states[i].items():
            if isinstance(s, q.QuantizedState):
                assert i == 1
                assert np.array_equal(sd["state"][i][name + ".codes"], s.codes), name
                assert np.array_equal(_bits(sd["state"][i][name + ".absmax"]),
                                      _bits(s.absmax)), name
            else:
                assert sd["state"][i][name].dtype == F32
                assert np.array_equal(_bits(sd["state"][i][name]), _bits(s)), name
    assert any(isinstance(s, q.QuantizedState) for s in twin.states[1].values())


def test_threads_agree():
    ref, _, _ = _run("AdamW", BF16, BF16, "stochastic", sizes=(5000, 70001))
    for nt in (1, 3):
        got, _, _ = _run("AdamW", BF16, BF16, "stochastic", sizes=(5000, 70001),
                         num_threads=nt)
        assert all(np.array_equal(_bits(a), _bits(b)) for a, b in zip(got, ref))


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam8_is_adam_with_int8_state(amsgrad):
    rng = np.random.default_rng(2)
    p = [_rand(rng, n, F32) for n in SIZES]
    r = [x.copy() for x in p]
    a = optim.AdamW(p, lr=1e-2, amsgrad=amsgrad, state_dtype="int8")
    b = q.Adam8(r, lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True, amsgrad=amsgrad)
    for _ in range(3):
        g = [_rand(rng, n, F32) for n in SIZES]
        a.step(g)
        b.step(g)
    assert all(np.array_equal(_bits(x), _bits(y)) for x, y in zip(p, r))
    assert a.state_nbytes() == b.state_nbytes()


def test_state_nbytes():
    n = 1 << 20
    nbytes = {sd: optim.Adam([np.zeros(n, F32)], state_dtype=sd).state_nbytes()
              for sd in (None, "int8")}
    assert nbytes[None] == 8 * n
    assert nbytes["int8"] == 2 * (n + 4 * (n // q.BLOCK)) == q.state_nbytes(n)
    small = optim.Adam([np.zeros(4095, F32)], state_dtype="int8")
    assert small.state_nbytes() == 8 * 4095            # below MIN_ELEMENTS: float32
    amsgrad = optim.Adam([np.zeros(n, BF16)], amsgrad=True, state_dtype="int8")
    assert amsgrad.state_nbytes() == 3 * (n + 4 * (n // q.BLOCK))


@pytest.mark.parametrize("saved, mine", [(None, "int8"), ("int8", None), ("float32", "int8")])
def test_int8_with_only_small_buffers_loads_float32_state(saved, mine):
    """Buffers under MIN_ELEMENTS keep float32 state with state_dtype="int8": where every
    param is that small, its state dict and a None / "float32" one hold the same buffers and
    load into each other (state_dtype is compared by what it gives each param); with one
    8-bit buffer they are refused, naming it."""
    rng = np.random.default_rng(7)
    sizes = (100, q.MIN_ELEMENTS - 1)
    src = optim.Adam([_rand(rng, n, F32) for n in sizes], lr=1e-2, state_dtype=saved)
    src.step([_rand(rng, n, F32) for n in sizes])
    dst = optim.Adam([_rand(rng, n, F32) for n in sizes], lr=1e-2, state_dtype=mine)
    dst.load_state_dict(src.state_dict())
    for a, b in zip(dst.state_dict()["state"], src.state_dict()["state"]):
        assert a.keys() == b.keys() and all(np.array_equal(_bits(a[k]), _bits(b[k])) for k in a)
    big = (100, q.MIN_ELEMENTS)
    src = optim.Adam([_rand(rng, n, F32) for n in big], lr=1e-2, state_dtype=saved)
    dst = optim.Adam([_rand(rng, n, F32) for n in big], lr=1e-2, state_dtype=mine)
    with pytest.raises(ValueError, match=r"params\[1\] \(float32 \(4096,\)\) has .*8-bit "
                                         r"exp_avg, exp_avg_sq, max_exp_avg_sq"):
        dst.load_state_dict(src.state_dict())


@pytest.mark.parametrize("how", ["state_dict", "file"])
def test_resume_is_bitwise(tmp_path, how):
    rng = np.random.default_rng(3)
    start = [_rand(rng, n, BF16) for n in SIZES]
    grads = [[_rand(rng, n, BF16) for n in SIZES] for _ in range(6)]
    kw = dict(lr=1e-2, state_dtype="int8", rounding="stochastic", seed=12345)
    full = [p.copy() for p in start]
    opt = optim.AdamW(full, **kw)
    for g in grads:
        opt.step(g)
    part = [p.copy() for p in start]
    opt = optim.AdamW(part, **kw)
    for g in grads[:3]:
        opt.step(g)
    resumed = [np.zeros_like(p) for p in start]
    new = optim.AdamW(resumed, **dict(kw, seed=1))
    if how == "state_dict":
        new.load_state_dict(opt.state_dict())
        for x, y in zip(resumed, part):
            x[...] = y
    else:
        checkpoint.save(tmp_path / "c.lrcore", opt)
        checkpoint.load(tmp_path / "c.lrcore", new)
    for g in grads[3:]:
        new.step(g)
    assert all(np.array_equal(_bits(x), _bits(y)) for x, y in zip(resumed, full))


def _snapshot(opt):
    return {(i, k): _bits(v).copy() for i, st in enumerate(opt.state_dict()["state"])
            for k, v in st.items()}


def test_bad_state_dict_changes_nothing():
    rng = np.random.default_rng(6)
    params = [_rand(rng, n, F32) for n in SIZES]
    opt = optim.Adam(params, lr=1e-2, state_dtype="int8")
    opt.step([_rand(rng, n, F32) for n in SIZES])
    base = _snapshot(opt)

    def set_(key, value):
        return lambda st: st.__setitem__(key, value)
    breakers = [
        (set_("exp_avg.codes", np.zeros(4999, np.uint8)),
         r"'exp_avg.codes' is uint8 \(4999,\), expected uint8 \(5000,\)"),
        (set_("exp_avg_sq.absmax", np.zeros(19, np.float32)),
         r"'exp_avg_sq.absmax' is float32 \(19,\), expected float32 \(20,\)"),
        (set_("exp_avg.absmax", np.zeros(20, np.float64)), r"is float64 \(20,\), expected float32"),
        (set_("exp_avg.codes", np.zeros(5000, np.int8)), r"is int8 \(5000,\), expected uint8"),
        (lambda st: st.pop("exp_avg.absmax"), r"state 'exp_avg' has arrays \['exp_avg.codes'\]"),
        (lambda st: (st.pop("exp_avg.codes"), st.pop("exp_avg.absmax"),
                     st.__setitem__("exp_avg", np.zeros(5000, np.float32))),
         r"state 'exp_avg' has arrays \['exp_avg'\], expected \['exp_avg.absmax', "
         r"'exp_avg.codes'\]"),
    ]
    for breaker, match in breakers:
        sd = opt.state_dict()
        breaker(sd["state"][1])
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(sd)
        now = _snapshot(opt)
        assert now.keys() == base.keys() and all(np.array_equal(now[k], base[k]) for k in now)
    sd = opt.state_dict()
    sd["state_dtype"] = None
    with pytest.raises(ValueError, match="state_dtype is fixed at construction"):
        opt.load_state_dict(sd)
    # a float32 state dict does not load into an 8-bit optimizer, nor the reverse
    plain = optim.Adam([p.copy() for p in params], lr=1e-2)
    with pytest.raises(ValueError, match="state_dtype"):
        plain.load_state_dict(opt.state_dict())


@pytest.mark.parametrize("make,exc,match", [
    (lambda: optim.Adagrad([np.zeros(5000, F32)], state_dtype="int8"), ValueError,
     r"state_dtype='int8' is supported for the rules \[.*'adam'.*\].*not 'adagrad'"),
    (lambda: optim.Adam([np.zeros(5000, np.float16)], state_dtype="int8"), TypeError,
     "float16; 8-bit state"),
    (lambda: optim.Adam([np.zeros(5000, np.float64)], state_dtype="int8"), TypeError,
     "float64; 8-bit state"),
    (lambda: optim.RMSprop([np.zeros(5000, F32)], centered=True, state_dtype="int8"),
     ValueError, "centered RMSprop cannot keep 8-bit state"),
])
def test_bad_construction(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_bad_grads_change_nothing():
    rng = np.random.default_rng(4)
    params = [_rand(rng, n, BF16) for n in SIZES]
    opt = optim.Adam(params, lr=1e-2, state_dtype="int8", rounding="stochastic")
    opt.step([_rand(rng, n, BF16) for n in SIZES])
    before, state = [_bits(p).copy() for p in params], _snapshot(opt)
    for grads, exc, match in [
        ([_rand(rng, 100, BF16), _rand(rng, 5000, np.float16)], TypeError,
         r"grads\[1\] is float16 .* 8-bit state"),
        ([_rand(rng, 100, BF16), _rand(rng, 4999, BF16)], ValueError, "4999 elements"),
    ]:
        with pytest.raises(exc, match=match):
            opt.step(grads)
        assert all(np.array_equal(_bits(p), b) for p, b in zip(params, before))
        now = _snapshot(opt)
        assert all(np.array_equal(now[k], state[k]) for k in now) and opt.step_count == 1


def test_checkpoint_file_keeps_dtypes_and_refuses_bad_codes(tmp_path):
    rng = np.random.default_rng(9)
    params = [_rand(rng, n, BF16) for n in SIZES]
    opt = optim.AdamW(params, lr=1e-2, state_dtype="int8", rounding="stochastic", seed=1)
    opt.step([_rand(rng, n, BF16) for n in SIZES])
    checkpoint.save(tmp_path / "ok.lrcore", opt)
    with checkpoint.CheckpointFile(tmp_path / "ok.lrcore") as f:
        kinds = {name: (e.dtype, e.shape) for name, e in f.entries.items()}
    assert kinds["param/1"] == (BF16, (5000,))
    assert kinds["state/1/exp_avg.codes"] == (np.dtype(np.uint8), (5000,))
    assert kinds["state/1/exp_avg_sq.absmax"] == (F32, (20,))
    assert kinds["state/0/exp_avg"] == (F32, (100,))
    # a file whose codes do not fit: refused before anything changes
    sd, names, arrays = checkpoint.pack_optimizer(opt)
    sd["state"] = names
    arrays["state/1/exp_avg.codes"] = arrays["state/1/exp_avg.codes"][:-1].copy()
    checkpoint.write(tmp_path / "bad.lrcore", arrays,
                     {"kind": "lrcore.checkpoint", "optimizer": sd, "extra": [], "user": None})
    target = [p.copy() for p in params]
    other = optim.AdamW(target, lr=1e-2, state_dtype="int8", rounding="stochastic", seed=1)
    before, state = [_bits(p).copy() for p in target], _snapshot(other)
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"state 'exp_avg.codes' of param 1 is uint8 \(4999,\), this "
                             r"optimizer holds it as uint8 \(5000,\)"):
        checkpoint.load(tmp_path / "bad.lrcore", other)
    assert all(np.array_equal(_bits(p), b) for p, b in zip(target, before))
    now = _snapshot(other)
    assert all(np.array_equal(now[k], state[k]) for k in now) and other.step_count == 0


def test_a_bfloat16_param_with_a_float32_grad_is_refused_with_8bit_state_too():
    """As with float or bfloat16 state: the grad is never wider than a bfloat16 param."""
    bf16 = ml_dtypes.bfloat16
    rng = np.random.default_rng(11)
    p = rng.standard_normal(5000).astype(bf16)
    opt = optim.AdamW([p], lr=1e-3, state_dtype="int8")
    opt.step([rng.standard_normal(5000).astype(bf16)])
    before_p, before_sd = p.copy(), opt.state_dict()
    with pytest.raises(TypeError, match=r"grads\[0\] is float32 for a bfloat16 param with 8-bit"):
        opt.step([rng.standard_normal(5000).astype(np.float32)])
    assert np.array_equal(p.view(np.uint16), before_p.view(np.uint16))
    after = opt.state_dict()["state"][0]
    for key, arr in before_sd["state"][0].items():
        assert np.array_equal(np.asarray(arr), np.asarray(after[key])), key


@pytest.mark.parametrize("bad_value", [-0.5, -0.0])
def test_a_negative_absmax_in_a_state_dict_is_refused_and_nothing_changes(bad_value):
    rng = np.random.default_rng(12)
    p = rng.standard_normal(5000).astype(np.float32)
    opt = optim.AdamW([p], lr=1e-3, state_dtype="int8")
    opt.step([rng.standard_normal(5000).astype(np.float32)])
    sd = opt.state_dict()
    bad = copy.deepcopy(sd)
    bad["state"][0]["exp_avg_sq.absmax"][3] = bad_value
    nan = copy.deepcopy(sd)
    nan["state"][0]["exp_avg.absmax"][2] = np.nan      # a NaN block is a state lrcore makes
    other = optim.AdamW([p.copy()], lr=1e-3, state_dtype="int8")
    other.load_state_dict(nan)
    fresh_p = p.copy()
    fresh = optim.AdamW([fresh_p], lr=1e-3, state_dtype="int8")
    with pytest.raises(ValueError, match=r"'exp_avg_sq.absmax' holds 1 negative value\(s\) \(block 3"):
        fresh.load_state_dict(bad)
    assert fresh.step_count == 0 and np.array_equal(fresh_p, p)


def test_a_checkpoint_file_of_another_state_dtype_names_both_and_changes_nothing(tmp_path):
    rng = np.random.default_rng(13)
    p = rng.standard_normal(5000).astype(np.float32)
    saved = optim.AdamW([p], lr=1e-3, state_dtype="int8")
    saved.step([rng.standard_normal(5000).astype(np.float32)])
    path = str(tmp_path / "int8.lrc")
    checkpoint.save(path, saved)
    q_ = p.copy()
    other = optim.AdamW([q_], lr=1e-3)                       # float32 state
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"state_dtype='int8', this optimizer None: params\[0\] "
                             r"\(float32 \(5000,\)\) has 8-bit exp_avg, .* in it, float32 "
                             r"state in this optimizer"):
        checkpoint.load(path, other)
    assert other.step_count == 0 and np.array_equal(q_, p)
