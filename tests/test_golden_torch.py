"""Replay PyTorch's optimizer trajectories through lrcore: recorded (tests/golden/kernels.npz)
and, with torch installed, produced live under every ATEN_CPU_CAPABILITY this CPU runs.

Each golden case is run step by step through ``lrcore.kernels`` (compiled, on every
instruction-set build the CPU runs) and ``lrcore.reference`` (numpy) from the same gradients;
the parameter and every state buffer must agree with torch's after every step within the
rounding-error budget derived in tests/ulp_budget.py (from the rule's rounded operations and
the steps taken; never a tolerance tuned on one machine). The recorded file needs only numpy;
make_kernel_golden.py (with torch) regenerates it, and the live sources run the same script in a
fresh interpreter per capability, since torch picks its kernels (and its rounding) at import.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from ulp_budget import compare, normalise_hp, step_budget, twin_step

GOLDEN_DIR = pathlib.Path(__file__).parent / "golden"
GOLDEN_PATH = GOLDEN_DIR / "kernels.npz"
BACKENDS = ("kernels", "reference")
# "recorded": the committed file; "torch-<capability>": torch run here, under that capability
SOURCES = ("recorded", "torch-default", "torch-avx2", "torch-avx512")
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def _load_golden(path):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(str(arrays.pop("index_json")))
    return meta, arrays


GOLDEN_META, GOLDEN_ARRAYS = _load_golden(GOLDEN_PATH)
GOLDEN_CASES = GOLDEN_META["cases"]


@pytest.fixture(scope="session")
def golden_source(request, tmp_path_factory):
    """{source: (meta, arrays)}, the live ones produced on first use."""
    cache = {"recorded": (GOLDEN_META, GOLDEN_ARRAYS)}

    def get(source):
        if source not in cache:
            cache[source] = _live_golden(source.split("-", 1)[1], tmp_path_factory)
        return cache[source]
    return get


def _live_golden(capability, tmp_path_factory):
    if not HAVE_TORCH:
        return None
    out = tmp_path_factory.mktemp(f"golden-{capability}") / "kernels.npz"
    code = ("import sys, numpy as np, torch\n"
            "torch.set_num_threads(1)\n"
            f"sys.path.insert(0, {str(GOLDEN_DIR)!r})\n"
            "import make_kernel_golden as m\n"
            "np.savez(sys.argv[1], **m.build_golden())\n"
            "print(torch.backends.cpu.get_cpu_capability())\n")
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True,
                       env=dict(os.environ, ATEN_CPU_CAPABILITY=capability, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    ran = r.stdout.strip().lower()
    if ran != capability:
        return ("unsupported", ran)
    return _load_golden(out)


def _backend(name: str):
    """lrcore.kernels or lrcore.reference; a missing backend fails its tests instead of skipping."""
    try:
        module = importlib.import_module(f"lrcore.{name}")
    except ImportError as error:
        pytest.fail(f"lrcore.{name} cannot be imported ({error}); build lrcore before running the golden tests")
    if name == "kernels" and module.backend() != "native":
        pytest.skip("LRCORE_BACKEND=python makes lrcore.kernels the numpy reference, already replayed as 'reference'")
    return module


def _torch_value(hp: dict, torch_name: str):
    """A hyperparameter by torch's name; 'betas[0]' indexes a pair."""
    if "[" in torch_name:
        base, index = torch_name[:-1].split("[")
        return hp[base][int(index)] if base in hp else None
    return hp.get(torch_name)


def _prepare_call(case: dict, size: int):
    """Translate a torch case into (lrcore function name, state buffers in call order, keyword args)
    through lrcore's table of rules (lrcore.rules): the preset whose torch class this is, its
    hyperparameters by torch's names, its state buffers with their initial values (Adagrad's sum
    starts at initial_accumulator_value, as in torch). Buffers are (torch state name, array or None)."""
    from lrcore.rules import PRESETS, RULES
    dtype = np.dtype(case["dtype"])
    hp = case["hyperparameters"]
    presets = [p for p in PRESETS.values() if p.torch_class == case["optimizer"]]
    assert presets, f"golden case {case['name']!r}: no lrcore preset has torch class {case['optimizer']!r}"
    preset = presets[0]
    rule = RULES[preset.rule]
    values, kwargs = {}, {}
    for h in rule.hypers:
        if not h.public or h.name == "step":
            continue
        value = _torch_value(hp, rule.torch_hypers.get(h.name, h.name))
        if value is not None:
            values[h.name] = kwargs[h.name] = value
    kwargs.update(preset.fixed)
    values.update(preset.fixed)
    for option in rule.options:
        values[option.name] = hp.get(option.name, option.default)
    buffers = [(s.torch_name,
                np.full(size, rule.initial_value(s, values), dtype=dtype)
                if rule.state_present(s, values) else None)
               for s in rule.states]
    return rule.name, buffers, kwargs


def test_golden_file_is_complete():
    assert GOLDEN_META["torch_version"].startswith("2.13.0")
    assert str(GOLDEN_ARRAYS["torch_version"]) == GOLDEN_META["torch_version"]
    optimizers = {case["optimizer"] for case in GOLDEN_CASES}
    assert {"SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adadelta"} <= optimizers
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


# The recorded trajectories go through both backends (kernels on every ISA build); the live ones
# through lrcore.kernels as it stands: lrcore's side does not depend on torch's capability, and
# every build and backend is bitwise the same (tests/test_claims.py).
_REPLAYS = ([(c, b, "recorded") for c in GOLDEN_CASES for b in BACKENDS]
            + [(c, "kernels", s) for c in GOLDEN_CASES for s in SOURCES[1:]])


@pytest.mark.parametrize("case,backend_name,source", _REPLAYS,
                         ids=[f"{c['name']}-{b}-{s}" for c, b, s in _REPLAYS])
def test_trajectory_matches_torch(case, backend_name, source, golden_source):
    if source != "recorded" and not HAVE_TORCH:
        pytest.skip("torch is not installed: only the recorded trajectories are replayed")
    golden = golden_source(source)
    if isinstance(golden, tuple) and golden[0] == "unsupported":
        pytest.skip(f"this CPU does not run torch's {source[6:]} kernels (torch used {golden[1]})")
    meta, arrays = golden
    cases = {c["name"]: c for c in meta["cases"]}
    assert case["name"] in cases, f"{source}: make_kernel_golden.py no longer has {case['name']}"
    capability = "recorded" if source == "recorded" else source[6:]
    if source != "recorded":
        import lrcore
        _replay_and_compare(lrcore.kernels, cases[case["name"]], meta, arrays,
                            f"lrcore.kernels[{lrcore.isa()}]", capability)
        return
    backend = _backend(backend_name)
    if backend_name == "reference":
        _replay_and_compare(backend, cases[case["name"]], meta, arrays, "lrcore.reference", capability)
        return
    # The compiled core: replay once per instruction-set build this CPU runs (baseline, avx2, ...).
    import lrcore
    from lrcore import backend as switch

    isa_in_use = lrcore.isa()
    try:
        for isa in lrcore.available_isas():
            switch.set_isa(isa)
            _replay_and_compare(backend, cases[case["name"]], meta, arrays,
                                f"lrcore.kernels[{isa}]", capability)
    finally:
        switch.set_isa(isa_in_use)


def test_the_budget_catches_a_slightly_wrong_step():
    """The comparison can fail: lr off by 2**-12 (float32) or 2**-30 (float64) relative, far
    below what a tolerance tuned by eye would notice and far above rounding, is caught."""
    from lrcore import reference
    for name in ("sgd_momentum_dampening_wd", "adam_wd", "adagrad_default", "rmsprop_centered",
                 "adadelta_default"):
        for dtype, off in (("float32", 2.0 ** -12), ("float64", 2.0 ** -30)):
            case = next(c for c in GOLDEN_CASES if c["name"] == f"{name}__{dtype}")
            wrong = dict(case, hyperparameters=dict(case["hyperparameters"]))
            wrong["hyperparameters"]["lr"] *= 1 + off
            with pytest.raises(AssertionError, match="over budget"):
                _replay_and_compare(reference, wrong, GOLDEN_META, GOLDEN_ARRAYS, "perturbed",
                                    "recorded", record=False)


def _replay_and_compare(backend, case, meta, arrays, label, capability, record=True) -> None:
    dtype = case["dtype"]
    size, n_steps = meta["size"], meta["n_steps"]
    function_name, buffers, kwargs = _prepare_call(case, size)
    update = getattr(backend, function_name)
    rule = case["optimizer"]
    hp = normalise_hp(rule, case["hyperparameters"])

    param = arrays[f"inputs__{dtype}__initial_param"].copy()
    all_grads = arrays[f"inputs__{dtype}__grads"]
    expected_param = arrays[f"{case['name']}__param"]
    assert expected_param.dtype == dtype
    expected_state = {name: arrays[f"{case['name']}__state__{name}"]
                      for name, buffer in buffers if buffer is not None}
    scalar_states = {name: arrays[f"{case['name']}__scalar__{name}"]
                     for name in case.get("scalar_state_names", ())}
    torch_param = param.copy()
    torch_state = {name: buffer.copy() for name, buffer in buffers if buffer is not None}
    for step in range(1, n_steps + 1):
        grad = all_grads[step - 1].copy()
        mine_before = ({name: b.copy() for name, b in buffers if b is not None}, param.copy())
        returned = update(param, grad, *(buffer for _, buffer in buffers), step=step, **kwargs)
        where = f"{label}.{function_name} case {case['name']} ({capability}) step {step}"
        assert returned is None, f"{where}: returned {returned!r}; expected None (updates in place)"
        assert np.array_equal(grad, all_grads[step - 1]), f"{where}: grad was modified; expected it read-only"
        assert param.dtype == dtype
        if rule == "SGD" and step == 1:            # no buffer yet: the first step copies g in
            mine_before[0].pop("momentum_buffer", None)
            torch_state.pop("momentum_buffer", None)
        for name, trajectory in scalar_states.items():   # NAdam's mu_product: torch's float32
            held = np.float32(1.0 if step == 1 else trajectory[step - 2])   # product, which
            torch_state[name] = mine_before[0][name] = held           # lrcore forms alike
        allowed = step_budget(twin_step(rule, torch_param, grad, torch_state, hp, step, dtype),
                              twin_step(rule, mine_before[1], grad, mine_before[0], hp, step, dtype))
        mismatch = compare(rule, dtype, "param", param, expected_param[step - 1], allowed["param"],
                           where, before=torch_param, cap=capability, record=record)
        assert mismatch is None, mismatch
        for state_name, buffer in buffers:
            if buffer is None:
                continue
            expected = expected_state[state_name][step - 1]
            mismatch = compare(rule, dtype, state_name, buffer, expected, allowed[state_name], where,
                               before=torch_state.get(state_name), cap=capability, record=record)
            assert mismatch is None, mismatch
        torch_param = expected_param[step - 1]
        torch_state = {name: trajectory[step - 1] for name, trajectory in expected_state.items()}


# NaN and Inf in the gradient: the README says they "propagate, as in PyTorch". Every golden
# case (every torch rule and option set, both dtypes) takes one step of ordinary gradients,
# then NaN, +Inf and -Inf at chosen elements (vector lanes and the tail of 37) on the next two
# steps; after each step every element of the param and of every state buffer must be of the
# same kind as torch's -- finite, +Inf, -Inf or NaN -- on every instruction-set build and in
# the numpy twin. (The finite values are held to the rounding budget by the replays above.)
_NONFINITE_STEPS = {2: {np.nan: (3, 20), np.inf: (8, 34), -np.inf: (12,)},
                    3: {np.nan: (17,), np.inf: (1, 25), -np.inf: (18, 36)}}


def _kind(x):
    """0 finite, 1 +Inf, 2 -Inf, 3 NaN, element by element."""
    x = np.asarray(x, np.float64)
    return np.select([np.isnan(x), x == np.inf, x == -np.inf], [3, 1, 2], 0)


@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch to run the same steps")
@pytest.mark.parametrize("case", GOLDEN_CASES, ids=[c["name"] for c in GOLDEN_CASES])
def test_nan_and_inf_in_grad_propagate_as_in_torch(case):
    import torch
    import lrcore
    from lrcore import backend as switch
    from lrcore import reference

    dtype, size = np.dtype(case["dtype"]), GOLDEN_META["size"]
    rng = np.random.default_rng(2024)
    start = (rng.uniform(0.5, 1.5, size) * rng.choice([-1.0, 1.0], size)).astype(dtype)
    grads = [(rng.uniform(0.5, 1.5, size) * rng.choice([-1.0, 1.0], size)).astype(dtype)
             for _ in range(4)]
    for step, kinds in _NONFINITE_STEPS.items():
        for value, where in kinds.items():
            grads[step - 1][list(where)] = value

    tp = torch.nn.Parameter(torch.from_numpy(start.copy()))
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in case["torch_kwargs"].items()}
    topt = getattr(torch.optim, case["optimizer"])([tp], foreach=False, **kw)
    expected = []
    for g in grads:
        tp.grad = torch.from_numpy(g.copy())
        topt.step()
        state = {k: v.detach().numpy().copy() for k, v in topt.state[tp].items()
                 if torch.is_tensor(v) and v.shape == tp.shape}
        expected.append({"param": tp.detach().numpy().copy(), **state})
    assert any((_kind(a) != 0).any() for a in expected[-1].values()), "nothing non-finite"

    function_name, buffers, kwargs = _prepare_call(case, size)
    runs = [("lrcore.reference", reference, None)]
    if lrcore.backend() == "native":
        runs += [(f"lrcore.kernels[{isa}]", lrcore.kernels, isa) for isa in lrcore.available_isas()]
    before = lrcore.isa()
    try:
        for label, module, isa in runs:
            if isa is not None:
                switch.set_isa(isa)
            param = start.copy()
            bufs = [(name, None if b is None else b.copy()) for name, b in buffers]
            for step, g in enumerate(grads, 1):
                with np.errstate(all="ignore"):
                    getattr(module, function_name)(param, g.copy(), *(b for _, b in bufs),
                                                   step=step, **kwargs)
                mine = {"param": param, **{n: b for n, b in bufs if b is not None}}
                want = expected[step - 1]
                assert set(mine) == set(want), (sorted(mine), sorted(want))
                for name, got in mine.items():
                    bad = np.flatnonzero(_kind(got) != _kind(want[name]))
                    assert bad.size == 0, (
                        f"{label} {case['name']} step {step} {name}: elements {bad.tolist()} "
                        f"are {got[bad].tolist()} where torch has {want[name][bad].tolist()}")
    finally:
        if lrcore.backend() == "native":
            switch.set_isa(before)
