"""Replay PyTorch's recorded optimizer trajectories (tests/golden/kernels.npz) through lrcore.

Each golden case is run step by step through both ``lrcore.kernels`` (compiled) and
``lrcore.reference`` (numpy); the parameter and every state buffer must match torch's after every
step, element by element. Needs only numpy; make_kernel_golden.py (with torch) regenerates the data.
"""

from __future__ import annotations

import importlib
import json
import pathlib

import numpy as np
import pytest

GOLDEN_PATH = pathlib.Path(__file__).parent / "golden" / "kernels.npz"

# Tolerances, applied per element as |actual - expected| <= atol * scale + rtol * |expected|, where
# scale = max(1, max |expected| over the whole buffer at that step). Why the scale: an element that
# ends near zero by cancellation (param crossing zero, a momentum buffer changing sign) carries the
# absolute rounding error of the O(scale) terms that cancelled, not an error relative to itself.
# float32: torch does every element operation in float32; a kernel that orders the same operations
# differently may differ by a few ulp per step, compounding over 25 steps: rtol 2e-5 (~170 ulp).
# float64: the same argument at 2^-52; 1e-12 (~4500 ulp) still catches any wrong formula, whose
# error is of order lr * |update| >= 1e-5 here.
TOLERANCES = {
    "float32": {"rtol": 2e-5, "atol": 1e-6},
    "float64": {"rtol": 1e-12, "atol": 1e-14},
}

BACKENDS = ("kernels", "reference")


def _load_golden():
    with np.load(GOLDEN_PATH, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(str(arrays.pop("index_json")))
    return meta, arrays


GOLDEN_META, GOLDEN_ARRAYS = _load_golden()
GOLDEN_CASES = GOLDEN_META["cases"]


def _backend(name: str):
    """lrcore.kernels or lrcore.reference; a missing backend fails its tests instead of skipping."""
    try:
        module = importlib.import_module(f"lrcore.{name}")
    except ImportError as error:
        pytest.fail(f"lrcore.{name} cannot be imported ({error}); build lrcore before running the golden tests")
    if name == "kernels" and module.backend() != "native":
        pytest.skip("LRCORE_BACKEND=python makes lrcore.kernels the numpy reference, already replayed as 'reference'")
    return module


def _prepare_call(case: dict, size: int):
    """Translate a torch case into (lrcore function name, state buffers in call order, keyword args).

    Returns the buffers as (torch state name, array or None) pairs, zero-initialised as lrcore's
    caller must (Adagrad's sum starts at initial_accumulator_value, as in torch).
    """
    dtype = np.dtype(case["dtype"])
    hp = case["hyperparameters"]
    optimizer = case["optimizer"]

    def zeros():
        return np.zeros(size, dtype=dtype)

    if optimizer == "SGD":
        buffers = [("momentum_buffer", zeros() if hp["momentum"] != 0 else None)]
        kwargs = {key: hp[key] for key in ("lr", "momentum", "dampening", "nesterov", "weight_decay", "maximize")}
        return "sgd", buffers, kwargs
    if optimizer in ("Adam", "AdamW"):
        buffers = [("exp_avg", zeros()), ("exp_avg_sq", zeros()),
                   ("max_exp_avg_sq", zeros() if hp["amsgrad"] else None)]
        decoupled = optimizer == "AdamW" or bool(hp.get("decoupled_weight_decay", False))
        kwargs = {"lr": hp["lr"], "beta1": hp["betas"][0], "beta2": hp["betas"][1], "eps": hp["eps"],
                  "weight_decay": hp["weight_decay"], "decoupled_weight_decay": decoupled,
                  "maximize": hp["maximize"]}
        return "adam", buffers, kwargs
    if optimizer == "Adagrad":
        buffers = [("sum", np.full(size, hp["initial_accumulator_value"], dtype=dtype))]
        kwargs = {key: hp[key] for key in ("lr", "lr_decay", "weight_decay", "eps", "maximize")}
        return "adagrad", buffers, kwargs
    if optimizer == "RMSprop":
        buffers = [("square_avg", zeros()),
                   ("momentum_buffer", zeros() if hp["momentum"] != 0 else None),
                   ("grad_avg", zeros() if hp["centered"] else None)]
        kwargs = {key: hp[key] for key in ("lr", "alpha", "eps", "weight_decay", "momentum", "maximize")}
        return "rmsprop", buffers, kwargs
    if optimizer == "Adadelta":
        buffers = [("square_avg", zeros()), ("acc_delta", zeros())]
        kwargs = {key: hp[key] for key in ("lr", "rho", "eps", "weight_decay", "maximize")}
        return "adadelta", buffers, kwargs
    raise AssertionError(f"golden case {case['name']!r} has optimizer {optimizer!r}; no lrcore mapping for it")


def _first_mismatch(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float):
    """None if every element is within tolerance, else a description of the worst element."""
    scale = max(1.0, float(np.max(np.abs(expected.astype(np.float64)))))
    actual64 = actual.astype(np.float64)
    expected64 = expected.astype(np.float64)
    error = np.abs(actual64 - expected64)
    allowed = atol * scale + rtol * np.abs(expected64)
    bad = ~(error <= allowed)  # also catches NaN
    if not bad.any():
        return None
    worst = int(np.argmax(np.where(bad, error / allowed, -np.inf)))
    if np.isnan(actual64).any():
        worst = int(np.argmax(np.isnan(actual64)))
    relative = error[worst] / abs(expected64[worst]) if expected64[worst] != 0 else np.inf
    return (f"element {worst} of {actual.size}: got {float(actual64[worst])!r}, "
            f"torch {float(expected64[worst])!r}, |diff| {error[worst]:.3e} (rel {relative:.3e}), allowed {allowed[worst]:.3e}; "
            f"{int(bad.sum())} elements out of tolerance")


def test_golden_file_is_complete():
    assert GOLDEN_META["torch_version"].startswith("2.13.0")
    assert str(GOLDEN_ARRAYS["torch_version"]) == GOLDEN_META["torch_version"]
    optimizers = {case["optimizer"] for case in GOLDEN_CASES}
    assert optimizers == {"SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adadelta"}
    assert {case["dtype"] for case in GOLDEN_CASES} == {"float32", "float64"}
    assert GOLDEN_META["size"] % 2 == 1
    for dtype in ("float32", "float64"):
        grads = GOLDEN_ARRAYS[f"inputs__{dtype}__grads"]
        assert grads.dtype == dtype and grads.shape == (GOLDEN_META["n_steps"], GOLDEN_META["size"])
        assert np.all(grads != 0) and np.all(GOLDEN_ARRAYS[f"inputs__{dtype}__initial_param"] != 0)
    for case in GOLDEN_CASES:
        _, buffers, _ = _prepare_call(case, GOLDEN_META["size"])
        used_states = sorted(name for name, buffer in buffers if buffer is not None)
        assert used_states == case["state_names"], case["name"]


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("case", GOLDEN_CASES, ids=[case["name"] for case in GOLDEN_CASES])
def test_trajectory_matches_torch(case, backend_name):
    backend = _backend(backend_name)
    if backend_name == "reference":
        _replay_and_compare(backend, case, label="lrcore.reference")
        return
    # The compiled core: replay once per instruction-set build this CPU runs (baseline, avx2, ...).
    import lrcore
    from lrcore import _core

    isa_in_use = lrcore.isa()
    try:
        for isa in lrcore.available_isas():
            _core.set_isa(isa)
            _replay_and_compare(backend, case, label=f"lrcore.kernels[{isa}]")
    finally:
        _core.set_isa(isa_in_use)


def _replay_and_compare(backend, case: dict, label: str) -> None:
    dtype = case["dtype"]
    tolerance = TOLERANCES[dtype]
    size, n_steps = GOLDEN_META["size"], GOLDEN_META["n_steps"]
    function_name, buffers, kwargs = _prepare_call(case, size)
    update = getattr(backend, function_name)

    param = GOLDEN_ARRAYS[f"inputs__{dtype}__initial_param"].copy()
    all_grads = GOLDEN_ARRAYS[f"inputs__{dtype}__grads"]
    expected_param = GOLDEN_ARRAYS[f"{case['name']}__param"]
    for step in range(1, n_steps + 1):
        grad = all_grads[step - 1].copy()
        returned = update(param, grad, *(buffer for _, buffer in buffers), step=step, **kwargs)
        where = f"{label}.{function_name} case {case['name']} step {step}"
        assert returned is None, f"{where}: returned {returned!r}; expected None (updates in place)"
        assert np.array_equal(grad, all_grads[step - 1]), f"{where}: grad was modified; expected it read-only"
        assert param.dtype == dtype
        mismatch = _first_mismatch(param, expected_param[step - 1], **tolerance)
        assert mismatch is None, f"{where} param: {mismatch}"
        for state_name, buffer in buffers:
            if buffer is None:
                continue
            expected_state = GOLDEN_ARRAYS[f"{case['name']}__state__{state_name}"][step - 1]
            mismatch = _first_mismatch(buffer, expected_state, **tolerance)
            assert mismatch is None, f"{where} state {state_name}: {mismatch}"
