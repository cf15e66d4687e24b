"""The per-call fast paths of the compiled backend agree with the generic ones.

kernels.<rule>: with exact floats inside the table's ranges the compiled run_exact takes the
call; with equal values of another type (numpy scalars) the generated Python checks convert
them and run_kernel packs the dict. StepPlan.run: a complete dict of exact values packs
directly; a dict that leaves fields at their defaults goes through plan_hypers. Both pairs
must give bitwise-equal buffers. num_threads: both backends reject the same values with the
same message."""
import numpy as np
import pytest

from lrcore import _validate, lowp
from lrcore import backend as lrcore_backend
from lrcore.rules import RULES

try:
    native = lrcore_backend.implementation("native")
except ImportError:  # pragma: no cover - depends on the build
    native = None
python = lrcore_backend.implementation("python")
needs_native = pytest.mark.skipif(native is None, reason="compiled core not built")

N = 37   # not a multiple of any SIMD width


def _values(rule):
    """A valid value per public hyperparameter, away from the defaults, every loop variant's
    switches on where a float can do it (momentum > 0)."""
    out = {}
    for h in rule.hypers:
        if not h.public:
            continue
        if h.name == "step":
            out["step"] = 3
        elif h.ctype == "int":
            out[h.name] = h.name != "init_buffer"   # flags on (nesterov needs dampening 0)
        elif h.name == "dampening":
            out[h.name] = 0.0
        elif h.name == "mu_product":
            out[h.name] = 0.75
        else:
            r = h.range
            out[h.name] = 0.5 * r.hi if r.hi < np.inf else 0.0625
    return out


def _buffers(rule, dtype, seed):
    rng = np.random.default_rng(seed)
    arrays = [rng.uniform(0.25, 1.5, N).astype(dtype) for _ in range(2 + len(rule.states))]
    return arrays


@needs_native
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(RULES))
def test_kernel_fast_path_equals_generic_path(name, dtype, isa):
    rule = RULES[name]
    hp = _values(rule)
    kernel = getattr(native, name)
    a = _buffers(rule, dtype, 1)
    b = [x.copy() for x in a]
    kernel(*a, **hp)                                   # exact floats: run_exact
    slow = {k: (np.float64(v) if type(v) is float else v) for k, v in hp.items()}
    kernel(*b, **slow)                                 # numpy scalars: generated checks
    for x, y in zip(a, b):
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8))
    assert not np.array_equal(a[0], _buffers(rule, dtype, 1)[0])   # something happened


@needs_native
@pytest.mark.parametrize("name", sorted(RULES))
def test_plan_exact_dict_equals_completed_dict(name, isa):
    rule = RULES[name]
    hp = _values(rule)
    partial = dict(hp)
    for h in rule.hypers:   # leave the fields at their defaults out: plan_hypers fills them
        if h.public and h.default is not None and partial.get(h.name) == h.default:
            del partial[h.name]
    partial["lr"] = np.float64(hp["lr"])      # and one numpy scalar
    runs = []
    for group in (hp, partial):
        a = _buffers(rule, np.float32, 2)
        params, grads = [a[0]], [a[1]]
        states = [tuple(a[2:]) + (None,) * (3 - len(rule.states))]
        plan = native.StepPlan(name, params, states, [0])
        plan.run(grads, [group])
        runs.append(a)
    for x, y in zip(*runs):
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8))


@needs_native
def test_plan_missing_state_is_an_error_on_both_paths():
    rule = RULES["sgd"]
    p, g = _buffers(rule, np.float32, 3)[:2]
    plan = native.StepPlan("sgd", [p], [(None, None, None)], [0])
    before = p.copy()
    hp = _values(rule)
    for group in (hp, dict(hp, lr=np.float64(hp["lr"]))):
        with pytest.raises(ValueError, match=r"params\[0\] has no momentum_buffer"):
            plan.run([g], [group])
    assert np.array_equal(p, before)


@needs_native
@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_num_threads_bad_values_same_on_both_backends(bad):
    errors = []
    for impl in (native, python):
        rule = RULES["lion"]
        a = _buffers(rule, np.float32, 4)
        before = [x.copy() for x in a]
        with pytest.raises((TypeError, ValueError)) as info:
            impl.lion(*a, lr=0.1, step=1, num_threads=bad)
        errors.append((type(info.value), str(info.value)))
        assert all(np.array_equal(x, y) for x, y in zip(a, before))
    assert errors[0] == errors[1]


@needs_native
def test_num_threads_bound_is_the_compiled_cores():
    core = native.core
    assert _validate.THREADS_MAX == core.max_threads()
    assert _validate.threads("adam", core.max_threads()) == core.max_threads()
    for bad in (core.max_threads() + 1, 4097, 10 ** 6, 2 ** 70):
        errors = []
        for impl in (native, python):
            rule = RULES["adam"]
            a = _buffers(rule, np.float32, 5)
            before = [x.copy() for x in a]
            with pytest.raises(ValueError) as info:
                impl.adam(*a, lr=1e-3, step=1, num_threads=bad)
            errors.append(str(info.value))
            assert all(np.array_equal(x, y) for x, y in zip(a, before))
        assert errors[0] == errors[1]
        assert "num_threads must be at most" in errors[0]


# ---- bfloat16/float16 calls: the compiled fast path of lrcore.lowp's checks ----------------

HALF_LAYOUTS = [l for l in lowp.LAYOUTS if {"bfloat16", "float16"} & set(l[:2])]


def _half_buffers(rule, layout, seed):
    rng = np.random.default_rng(seed)
    p, g, s = (lowp.bfloat16 if d == "bfloat16" else np.dtype(d) for d in layout)
    x = [rng.uniform(0.25, 1.5, N).astype(np.float32) * rng.choice([-1, 1], N)
         for _ in range(2 + len(rule.states))]
    return [x[0].astype(p), x[1].astype(g)] + [np.abs(y).astype(s) for y in x[2:]]


def _public(rule, hp):
    return tuple(hp[h.name] for h in rule.hypers if h.public)


@needs_native
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("layout", HALF_LAYOUTS, ids=lambda l: "-".join(l))
@pytest.mark.parametrize("name", sorted(RULES))
def test_lowp_fast_path_equals_lowp_checks(name, layout, rounding, isa):
    """Exact values: run_exact takes a bfloat16/float16 call itself (returns True); numpy
    scalars: lrcore.lowp's Python checks convert them and run lowp_run. Bitwise equal."""
    rule = RULES[name]
    hp = _values(rule)
    a = _half_buffers(rule, layout, 1)
    b = [x.copy() for x in a]
    assert native.core.run_exact(rule, tuple(a), _public(rule, hp), None, rounding, 7, 5) is True
    slow = {k: (np.float64(v) if type(v) is float else v) for k, v in hp.items()}
    getattr(native, name)(*b, **slow, rounding=rounding, seed=np.uint64(7),
                          index_offset=np.int64(5))
    for x, y in zip(a, b):
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8))
    assert not np.array_equal(a[0].view(np.uint8), _half_buffers(rule, layout, 1)[0].view(np.uint8))


def _declined_cases():
    """(id, change to an adam call over bfloat16 buffers, whether the public call raises)."""
    big = native.core.max_threads() + 1 if native is not None else 10 ** 6

    def buf(i, f):
        return lambda kw, bufs: bufs.__setitem__(i, f(bufs[i], bufs))

    def arg(k, v):
        return lambda kw, bufs: kw.__setitem__(k, v)

    def readonly(a, _):
        a.flags.writeable = False
        return a

    def unaligned(a, _):
        raw = np.zeros(a.nbytes + 1, np.uint8)[1:]
        out = raw.view(a.dtype)
        out[...] = a
        return out
    return [
        ("rounding-case", arg("rounding", "Nearest"), True),
        ("rounding-bytes", arg("rounding", b"nearest"), True),
        ("seed-negative", arg("seed", -1), True),
        ("seed-2**64", arg("seed", 2 ** 64), True),
        ("seed-bool", arg("seed", True), True),
        ("seed-numpy", arg("seed", np.uint64(9)), False),
        ("offset-negative", arg("index_offset", -1), True),
        ("offset-past-2**63", arg("index_offset", 2 ** 63 - N + 1), True),
        ("offset-numpy", arg("index_offset", np.int64(3)), False),
        ("threads-0", arg("num_threads", 0), True),
        ("threads-float", arg("num_threads", 1.0), True),
        ("threads-too-many", arg("num_threads", big), True),
        ("lr-numpy", arg("lr", np.float64(1e-3)), False),
        ("lr-negative", arg("lr", -1.0), True),
        ("step-0", arg("step", 0), True),
        ("step-numpy", arg("step", np.int64(3)), False),
        ("flag-int", arg("maximize", 0), False),
        ("param-strided", buf(0, lambda a, _: np.repeat(a, 2)[::2]), True),
        ("param-readonly", buf(0, readonly), True),
        ("state-readonly", buf(3, readonly), True),
        ("grad-unaligned", buf(1, unaligned), False),
        ("state-float16", buf(2, lambda a, _: a.astype(np.float16)), True),
        ("states-mixed", buf(3, lambda a, _: a.astype(np.float32)), True),
        ("state-short", buf(2, lambda a, _: a[:-1].copy()), True),
        ("state-is-param", buf(2, lambda a, bufs: bufs[0]), True),
        ("state-overlaps-param", buf(2, lambda a, bufs: bufs[0][:N]), True),
        ("state-missing", buf(2, lambda a, _: None), True),
        ("state-list", buf(2, lambda a, _: a.tolist()), True),
    ]


@needs_native
@pytest.mark.parametrize("case", _declined_cases() if native is not None else [],
                         ids=lambda c: c[0])
def test_lowp_fast_path_declines_irregular_calls(case):
    """Anything irregular: run_exact declines (None) having changed nothing, and the public
    kernel then raises with lrcore.lowp's message and changes nothing, or (a value its checks
    convert) gives the bits of the regular call."""
    _, change, raises = case
    rule = RULES["adam"]
    base = _half_buffers(rule, ("bfloat16", "bfloat16", "bfloat16"), 2)
    kw = dict(lr=1e-3, step=3, weight_decay=0.01, maximize=False, rounding="stochastic",
              seed=9, index_offset=3, num_threads=None)
    bufs = [x.copy() for x in base]
    change(kw, bufs)
    before = [None if x is None or not isinstance(x, np.ndarray) else x.copy() for x in bufs]
    hp = {h.name: kw.get(h.name, h.default) for h in rule.hypers if h.public}
    assert native.core.run_exact(rule, tuple(bufs), _public(rule, hp), kw["num_threads"],
                                 kw["rounding"], kw["seed"], kw["index_offset"]) is None
    for x, y in zip(bufs, before):
        if y is not None:
            assert x.tobytes() == y.tobytes()
    if raises:
        with pytest.raises((TypeError, ValueError)):
            native.adam(*bufs, **kw)
        for x, y in zip(bufs, before):
            if y is not None:
                assert x.tobytes() == y.tobytes()
    else:
        native.adam(*bufs, **kw)
        ref = [x.copy() for x in base]
        native.adam(*ref, lr=1e-3, step=3, weight_decay=0.01, rounding="stochastic",
                    seed=int(kw["seed"]), index_offset=int(kw["index_offset"]))
        for x, y in zip(bufs, ref):
            assert np.array_equal(x.view(np.uint8), y.view(np.uint8))


@needs_native
def test_sgd_constraint_checked_on_the_fast_paths():
    """nesterov with dampening != 0: every fast path declines, the checks raise, nothing changes."""
    rule = RULES["sgd"]
    for layout in [("float32",) * 3] + HALF_LAYOUTS:
        bufs = _half_buffers(rule, layout, 3)
        before = [x.copy() for x in bufs]
        hp = dict(_values(rule), nesterov=True, dampening=0.5, init_buffer=False)
        assert not native.core.run_exact(rule, tuple(bufs), _public(rule, hp), None)
        with pytest.raises(ValueError, match="nesterov requires"):
            native.sgd(*bufs, **hp)
        assert all(np.array_equal(x.view(np.uint8), y.view(np.uint8)) for x, y in zip(bufs, before))
