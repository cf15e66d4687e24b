"""The per-call fast paths of the compiled backend agree with the generic ones.

kernels.<rule>: with exact floats inside the table's ranges the compiled run_exact takes the
call; with equal values of another type (numpy scalars) the generated Python checks convert
them and run_kernel packs the dict. StepPlan.run: a complete dict of exact values packs
directly; a dict that leaves fields at their defaults goes through plan_hypers. Both pairs
must give bitwise-equal buffers. num_threads: both backends reject the same values with the
same message."""
import numpy as np
import pytest

from lrcore import _validate
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
