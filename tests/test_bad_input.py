"""Bad input: a clear TypeError/ValueError naming the argument, on both backends,
with every buffer left byte-for-byte unchanged."""
import numpy as np
import pytest

from lrcore import backend as lrcore_backend  # the module (callable: lrcore.backend())

try:
    native = lrcore_backend.implementation("native")
except ImportError:  # the python backend still runs its half of the table
    native = None
python = lrcore_backend.implementation("python")

BACKENDS = [pytest.param(python, id="python")]
BACKENDS.append(pytest.param(native, id="native", marks=pytest.mark.skipif(
    native is None, reason="compiled core not built")))

N = 33


def _buffers(dtype=np.float32):
    rng = np.random.default_rng(0)
    return {name: rng.uniform(0.5, 1.5, N).astype(dtype)
            for name in ("param", "grad", "s0", "s1", "s2")}


def _adam(b, **kw):
    args = dict(param=b["param"], grad=b["grad"], exp_avg=b["s0"], exp_avg_sq=b["s1"])
    hyper = dict(lr=1e-3, step=1)
    for k, v in kw.items():
        (args if k in ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq") else hyper)[k] = v
    return ("adam", [args.pop("param"), args.pop("grad"), args.pop("exp_avg"),
                     args.pop("exp_avg_sq")] + ([args.pop("max_exp_avg_sq")]
                                                if "max_exp_avg_sq" in args else []), hyper)


def _sgd(b, **kw):
    args = [kw.pop("param", b["param"]), kw.pop("grad", b["grad"])]
    if "momentum_buffer" in kw:
        args.append(kw.pop("momentum_buffer"))
    return ("sgd", args, dict(dict(lr=0.1, step=1), **kw))


def _rmsprop(b, **kw):
    args = [b["param"], b["grad"], kw.pop("square_avg", b["s0"]), kw.pop("momentum_buffer", None),
            kw.pop("grad_avg", None)]
    return ("rmsprop", args, dict(dict(lr=0.1, step=1), **kw))


def _adagrad(b, **kw):
    return ("adagrad", [b["param"], b["grad"], kw.pop("state_sum", b["s0"])],
            dict(dict(lr=0.1, step=1), **kw))


def _adadelta(b, **kw):
    return ("adadelta", [b["param"], b["grad"], b["s0"], kw.pop("acc_delta", b["s1"])],
            dict(dict(lr=1.0, step=1), **kw))


def _noncontig(b, key):
    a = np.repeat(b[key], 2)[::2]
    b[key] = a
    return a


def _misaligned(b, key):
    """The same values in a buffer one byte off the element size (a uint8 view)."""
    raw = np.zeros(b[key].nbytes + 1, np.uint8)[1:]
    a = raw.view(b[key].dtype)
    a[...] = b[key]
    assert not a.flags.aligned
    b[key] = a
    return a


def _lion(b, **kw):
    return ("lion", [b["param"], b["grad"], kw.pop("exp_avg", b["s0"])],
            dict(dict(lr=1e-4, step=1), **kw))


def _nadam(b, **kw):
    return ("nadam", [b["param"], b["grad"], b["s0"], kw.pop("exp_avg_sq", b["s1"])],
            dict(dict(lr=1e-3, step=1), **kw))


def _readonly(b, key):
    b[key].flags.writeable = False
    return b[key]


def _swapped(b, key):
    b[key] = b[key].astype(b[key].dtype.newbyteorder())
    return b[key]


# (id, builder(b) -> (kernel, args, kwargs), exception, word in message)
TABLE = [
    ("param-None", lambda b: _adam(b, param=None), TypeError, "param"),
    ("param-list", lambda b: _adam(b, param=list(b["param"])), TypeError, "param"),
    ("grad-None", lambda b: _adam(b, grad=None), TypeError, "grad"),
    ("exp_avg-None", lambda b: _adam(b, exp_avg=None), TypeError, "exp_avg"),
    ("param-int", lambda b: _adam(b, param=np.ones(N, np.int64)), TypeError, "param"),
    ("param-float16", lambda b: _adam(b, param=np.ones(N, np.float16)), TypeError, "param"),
    ("grad-dtype-mismatch", lambda b: _adam(b, grad=b["grad"].astype(np.float64)), TypeError, "grad"),
    ("state-dtype-mismatch", lambda b: _adam(b, exp_avg_sq=b["s1"].astype(np.float64)), TypeError, "exp_avg_sq"),
    ("param-byteswapped", lambda b: _adam(b, param=_swapped(b, "param")), TypeError, "param"),
    ("grad-byteswapped", lambda b: _adam(b, grad=_swapped(b, "grad")), TypeError, "grad"),
    ("param-noncontiguous", lambda b: _adam(b, param=_noncontig(b, "param")), ValueError, "param"),
    ("state-noncontiguous", lambda b: _adam(b, exp_avg=_noncontig(b, "s0")), ValueError, "exp_avg"),
    ("grad-noncontiguous", lambda b: _adam(b, grad=_noncontig(b, "grad")), ValueError, "grad"),
    ("param-readonly", lambda b: _adam(b, param=_readonly(b, "param")), ValueError, "param"),
    ("state-readonly", lambda b: _adam(b, exp_avg_sq=_readonly(b, "s1")), ValueError, "exp_avg_sq"),
    ("grad-size", lambda b: _adam(b, grad=np.ones(N + 1, np.float32)), ValueError, "grad"),
    ("state-size", lambda b: _adam(b, exp_avg=np.zeros(N - 1, np.float32)), ValueError, "exp_avg"),
    ("grad-is-param", lambda b: _adam(b, grad=b["param"]), ValueError, "grad"),
    ("state-twice", lambda b: _adam(b, exp_avg_sq=b["s0"]), ValueError, "exp_avg_sq"),
    ("views-of-one-array", lambda b: _adam(b, exp_avg=b["s2"][:N - 1], exp_avg_sq=b["s2"][1:],
                                           param=b["param"][:N - 1], grad=b["grad"][:N - 1]),
     ValueError, "exp_avg"),
    ("amsgrad-overlap", lambda b: _adam(b, max_exp_avg_sq=b["param"]), ValueError, "max_exp_avg_sq"),
    ("step-0", lambda b: _adam(b, step=0), ValueError, "step"),
    ("step-float", lambda b: _adam(b, step=1.0), TypeError, "step"),
    ("step-huge", lambda b: _adam(b, step=2 ** 63), ValueError, "step"),
    ("step-huge-negative", lambda b: _adam(b, step=-2 ** 70), ValueError, "step"),
    ("lr-negative", lambda b: _adam(b, lr=-1e-3), ValueError, "lr"),
    ("lr-nan", lambda b: _adam(b, lr=float("nan")), ValueError, "lr"),
    ("lr-inf", lambda b: _adam(b, lr=float("inf")), ValueError, "lr"),
    ("lr-str", lambda b: _adam(b, lr="0.1"), TypeError, "lr"),
    ("eps-negative", lambda b: _adam(b, eps=-1e-8), ValueError, "eps"),
    ("weight_decay-nan", lambda b: _adam(b, weight_decay=float("nan")), ValueError, "weight_decay"),
    ("beta1-one", lambda b: _adam(b, beta1=1.0), ValueError, "beta1"),
    ("beta2-negative", lambda b: _adam(b, beta2=-0.1), ValueError, "beta2"),
    ("beta1-nan", lambda b: _adam(b, beta1=float("nan")), ValueError, "beta1"),
    ("num_threads-0", lambda b: _adam(b, num_threads=0), ValueError, "num_threads"),
    ("num_threads-float", lambda b: _adam(b, num_threads=2.0), TypeError, "num_threads"),
    ("sgd-momentum-negative", lambda b: _sgd(b, momentum=-0.9, momentum_buffer=b["s0"]), ValueError, "momentum"),
    ("sgd-dampening", lambda b: _sgd(b, momentum=0.9, dampening=1.5, momentum_buffer=b["s0"]), ValueError, "dampening"),
    ("sgd-nesterov-no-momentum", lambda b: _sgd(b, nesterov=True), ValueError, "nesterov"),
    ("sgd-nesterov-dampening", lambda b: _sgd(b, nesterov=True, momentum=0.9, dampening=0.1,
                                              momentum_buffer=b["s0"]), ValueError, "nesterov"),
    ("sgd-missing-buffer", lambda b: _sgd(b, momentum=0.9), ValueError, "momentum_buffer"),
    ("sgd-weight_decay-inf", lambda b: _sgd(b, weight_decay=float("inf")), ValueError, "weight_decay"),
    ("adagrad-lr_decay", lambda b: _adagrad(b, lr_decay=-0.1), ValueError, "lr_decay"),
    ("adagrad-state-None", lambda b: _adagrad(b, state_sum=None), TypeError, "state_sum"),
    ("rmsprop-alpha", lambda b: _rmsprop(b, alpha=1.0), ValueError, "alpha"),
    ("rmsprop-missing-buffer", lambda b: _rmsprop(b, momentum=0.9), ValueError, "momentum_buffer"),
    ("rmsprop-grad_avg-is-square_avg", lambda b: _rmsprop(b, grad_avg=b["s0"]), ValueError, "grad_avg"),
    ("adadelta-rho", lambda b: _adadelta(b, rho=1.5), ValueError, "rho"),
    ("adadelta-acc-readonly", lambda b: _adadelta(b, acc_delta=_readonly(b, "s1")), ValueError, "acc_delta"),
    ("param-misaligned", lambda b: _adam(b, param=_misaligned(b, "param")), ValueError, "param"),
    ("grad-misaligned", lambda b: _adam(b, grad=_misaligned(b, "grad")), ValueError, "grad"),
    ("state-misaligned", lambda b: _adam(b, exp_avg_sq=_misaligned(b, "s1")), ValueError, "exp_avg_sq"),
    ("lr-huge-int", lambda b: _adam(b, lr=10 ** 400), ValueError, "lr"),
    ("weight_decay-huge-int", lambda b: _sgd(b, weight_decay=-10 ** 400), ValueError, "weight_decay"),
    ("lion-beta1", lambda b: _lion(b, beta1=1.5), ValueError, "beta1"),
    ("lion-state-None", lambda b: _lion(b, exp_avg=None), TypeError, "exp_avg"),
    ("nadam-momentum_decay", lambda b: _nadam(b, momentum_decay=-1.0), ValueError, "momentum_decay"),
    ("nadam-state-size", lambda b: _nadam(b, exp_avg_sq=np.zeros(N + 2, np.float32)), ValueError,
     "exp_avg_sq"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case_id,build,exc,word", TABLE, ids=[t[0] for t in TABLE])
def test_bad_input_raises_and_modifies_nothing(backend, case_id, build, exc, word):
    b = _buffers()
    kernel, args, kwargs = build(b)
    arrays = [a for a in list(args) + list(b.values()) if isinstance(a, np.ndarray)]
    before = [a.tobytes() for a in arrays]
    with pytest.raises(exc) as info:
        getattr(backend, kernel)(*args, **kwargs)
    assert word in str(info.value), str(info.value)
    assert kernel in str(info.value), "message names the function"
    assert [a.tobytes() for a in arrays] == before, "a rejected call modified a buffer"


@pytest.mark.parametrize("case_id,build,exc,word", TABLE, ids=[t[0] for t in TABLE])
def test_both_backends_give_the_same_message(case_id, build, exc, word):
    if native is None:
        pytest.skip("compiled core not built")
    messages = []
    for backend in (python, native):
        kernel, args, kwargs = build(_buffers())
        with pytest.raises(exc) as info:
            getattr(backend, kernel)(*args, **kwargs)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_arrays_are_a_no_op(backend):
    e = np.zeros(0, np.float32)
    backend.adam(e, e.copy(), e.copy(), e.copy(), lr=0.1, step=1)
    backend.sgd(np.zeros(0), np.zeros(0), lr=0.1, step=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_grad_is_not_an_input_error(backend):
    p = np.ones(4)
    backend.sgd(p, np.array([np.inf, np.nan, 1.0, 0.0]), lr=0.1, step=1)
    assert np.isinf(p[0]) and np.isnan(p[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_integer_message_is_short(backend):
    b = _buffers()
    with pytest.raises(ValueError) as info:
        backend.adam(b["param"], b["grad"], b["s0"], b["s1"], lr=10 ** 400, step=1)
    assert "lr" in str(info.value) and len(str(info.value)) < 120, str(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,hp,slot", [("sgd", dict(momentum=0.9), 0),
                                          ("rmsprop", dict(momentum=0.5), 1)])
def test_step_plan_without_a_needed_buffer_is_an_error(backend, kind, hp, slot):
    """A group with momentum > 0 over a param that has no momentum buffer: the same clear
    error on both backends (the compiled plan used to dereference NULL), nothing changed."""
    rng = np.random.default_rng(2)
    params = [rng.uniform(0.5, 1.5, 9), rng.uniform(0.5, 1.5, 5)]
    states = [[None, None, None], [None, None, None]]
    if kind == "rmsprop":
        for st, p in zip(states, params):
            st[0] = np.zeros_like(p)
    states[0][slot] = np.zeros_like(params[0])       # params[1] has none
    plan = backend.StepPlan(kind, params, states, [0, 0])
    before = [p.copy() for p in params]
    grads = [np.ones_like(p) for p in params]
    with pytest.raises(ValueError, match=r"params\[1\] has no momentum_buffer.*momentum > 0"):
        plan.run(grads, [dict(lr=0.1, step=2, **hp)])
    for p, p0 in zip(params, before):
        np.testing.assert_array_equal(p, p0)
    plan.run(grads, [dict(lr=0.1, step=2)])            # momentum 0: no buffer needed


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_plan_checks_alignment_and_huge_integers(backend):
    b = _buffers(np.float64)
    with pytest.raises(ValueError, match="params\\[0\\] is not aligned"):
        backend.StepPlan("sgd", [_misaligned(b, "param")], [[None, None, None]], [0])
    p = np.ones(4)
    plan = backend.StepPlan("sgd", [p], [[None, None, None]], [0])
    with pytest.raises(ValueError, match="lr"):
        plan.run([np.ones(4)], [dict(lr=10 ** 400, step=1)])
    with pytest.raises(TypeError, match="dict by name"):
        plan.run([np.ones(4)], [(0.1, 0.0, 0.0, 0.0, False, False, 1)])
    np.testing.assert_array_equal(p, np.ones(4))
