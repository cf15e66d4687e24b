"""The README's guarantees about lrcore's results, each tested exactly as the README states it.

1. Finite inputs: the compiled kernels on every instruction-set build this CPU runs and every
   thread count, and the numpy twin (LRCORE_BACKEND=python), produce the same bytes -- signed
   zeros included -- for the param and every state buffer. (tests/test_kernels.py compares
   each build with the twin over many sizes and alignments; here all three dimensions are
   crossed in one comparison, byte for byte.)
2. NaN and Inf inputs: the same holds for every value that is not NaN, and NaN appears at the
   same positions everywhere. The sign and payload of a NaN are not part of the guarantee
   (IEEE 754 leaves them open; numpy's own loops may give different signs for the same
   operation at different positions of one array), so the test compares NaN positions and
   the bytes of every other value; canonicalising NaNs would cost every kernel a compare
   and a blend per element.
5. The README's block of kernel signatures is the real one (inspect.signature).
3. Agreement with torch.optim is within a derived rounding budget, not bitwise:
   tests/ulp_budget.py, tests/test_torch_optim.py, tests/test_golden_torch.py.
4. lrcore.torch continuing from its own state dict is bitwise the uninterrupted run:
   tests/test_torch_optim.py::test_state_dict_continuation_is_bitwise.
"""
import numpy as np
import pytest

import lrcore
from lrcore import kernels, reference
from lrcore.registry import KERNEL_SPECS, call, make_state

CASES = [(k, c) for k in KERNEL_SPECS for c in k.cases]
CASE_IDS = [f"{k.name}-{c.name}" for k, c in CASES]
N = 4099            # several SIMD vectors and a tail; split into three parts by 3 threads
THREADS = (1, 2, 3)
STEPS = 3           # 1 and later: SGD's first-step variant and RAdam's rectification
NATIVE = lrcore.backend() == "native"


def _data(dtype, nonfinite):
    """Random non-zero values with some exact zeros of both signs (signed-zero results);
    with `nonfinite`, NaN, +Inf and -Inf sprinkled through every input buffer."""
    rng = np.random.default_rng(12345)

    def buf():
        x = rng.uniform(0.25, 2.0, N) * rng.choice([-1.0, 1.0], N)
        x[rng.integers(0, N, 40)] = 0.0
        x[rng.integers(0, N, 40)] = -0.0
        if nonfinite:
            for value in (np.nan, np.inf, -np.inf):
                x[rng.integers(0, N, 25)] = value
        return x.astype(dtype)
    return buf


def _run(module, kspec, case, dtype, nonfinite, **extra):
    buf = _data(dtype, nonfinite)
    param = buf()
    state = make_state(kspec, case, param)
    if nonfinite:
        for name in state:                       # states hold NaN/Inf too
            state[name][::97] = np.nan
            state[name][5::101] = np.inf
    grads = [buf() for _ in range(STEPS)]
    with np.errstate(all="ignore"):
        for step, grad in enumerate(grads, 1):
            call(module, kspec, case, param, grad, state, step, **extra)
    return {"param": param, **state}


def _compiled_results(kspec, case, dtype, nonfinite):
    """{(isa, threads): buffers} for every build and thread count."""
    from lrcore import backend
    _core = backend.core()                          # the compiled core's tuning hooks
    before_isa, before_min = _core.isa(), _core.min_bytes_per_thread()
    out = {}
    try:
        _core.set_min_bytes_per_thread(64)          # let this size split across threads
        for isa in lrcore.available_isas():
            _core.set_isa(isa)
            for threads in THREADS:
                out[(isa, threads)] = _run(kernels, kspec, case, dtype, nonfinite,
                                           num_threads=threads)
    finally:
        _core.set_isa(before_isa)
        _core.set_min_bytes_per_thread(before_min)
    return out


@pytest.mark.skipif(not NATIVE, reason="the compiled core is not in use")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kspec,case", CASES, ids=CASE_IDS)
def test_every_build_and_thread_count_is_bitwise_the_numpy_twin(kspec, case, dtype):
    twin = _run(reference, kspec, case, dtype, nonfinite=False)
    for (isa, threads), result in _compiled_results(kspec, case, dtype, False).items():
        for name, expected in twin.items():
            assert np.isfinite(expected).any()
            got = result[name]
            if got.tobytes() != expected.tobytes():
                bad = np.flatnonzero(got.view(f"u{got.itemsize}") !=
                                     expected.view(f"u{got.itemsize}"))
                pytest.fail(f"{isa}, {threads} threads, {name}: {bad.size} elements differ in "
                            f"their bytes from the numpy twin, first at {bad[0]}: "
                            f"{got[bad[0]]!r} vs {expected[bad[0]]!r}")


@pytest.mark.skipif(not NATIVE, reason="the compiled core is not in use")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kspec,case", CASES, ids=CASE_IDS)
def test_nan_positions_and_other_values_agree_everywhere(kspec, case, dtype):
    twin = _run(reference, kspec, case, dtype, nonfinite=True)
    for (isa, threads), result in _compiled_results(kspec, case, dtype, True).items():
        for name, expected in twin.items():
            got = result[name]
            nan = np.isnan(expected)
            assert nan.any(), "the data must produce NaN results"
            np.testing.assert_array_equal(np.isnan(got), nan,
                                          err_msg=f"{isa}, {threads} threads, {name}: NaN positions")
            same = got[~nan].tobytes() == expected[~nan].tobytes()
            assert same, f"{isa}, {threads} threads, {name}: a non-NaN value differs in its bytes"


def _readme_kernel_signatures():
    """{name: signature text} from the README's block of kernel signatures, with `...`
    expanded to the keyword arguments it stands for and trailing comments removed."""
    import pathlib
    import re
    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    intro = text.index("kernels, one step per call, in place")
    tail = re.search(r"`\.\.\.` stands for the four keyword arguments every kernel\s+ends with, `([^`]*)`",
                     text[intro:])
    block = text[intro:].split("```\n", 2)[1]
    lines = [line.split("#", 1)[0].rstrip() for line in block.splitlines()]
    out = {}
    for entry in re.split(r"\n(?=\w+\()", "\n".join(lines).strip()):
        flat = " ".join(entry.split())
        name, args = flat.split("(", 1)
        out[name] = "(" + args.replace("...", tail.group(1)).replace("( ", "(")
    return out


def test_readme_lists_every_kernel_with_its_real_signature():
    """The README's kernel block names every kernel of lrcore.kernels with the signature
    inspect.signature prints (the block is what a user reads instead of help())."""
    import inspect
    listed = _readme_kernel_signatures()
    names = [k.name for k in KERNEL_SPECS]
    assert sorted(listed) == sorted(set(names)), (sorted(listed), sorted(set(names)))
    for name, text in listed.items():
        assert text == str(inspect.signature(getattr(kernels, name))), name
