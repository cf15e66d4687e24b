"""The environment switches: LRCORE_BACKEND and LRCORE_ISA, read at import."""
import os
import subprocess
import sys

import pytest

import lrcore


# Variables that change what `import lrcore` selects: a subprocess never inherits them from
# the caller (a suite run under LRCORE_ISA=avx2 must still see the default choice here).
_SWITCHES = ("LRCORE_BACKEND", "LRCORE_ISA", "OMP_NUM_THREADS")


def _env(**env):
    """The caller's environment without the switches, plus the ones given here."""
    full = {k: v for k, v in os.environ.items() if k not in _SWITCHES}
    full.update(env)
    return full


def _run(code, **env):
    """Run `code` in a fresh interpreter with only the switches given here set."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(**env))


def _native_isas():
    """The compiled builds this CPU runs, asked of a fresh native import (also when this
    suite itself runs under LRCORE_BACKEND=python); () without a compiled core."""
    r = _run("import lrcore; print(*lrcore.available_isas())", LRCORE_BACKEND="native")
    return tuple(r.stdout.split()) if r.returncode == 0 else ()


NATIVE_ISAS = _native_isas()
needs_native = pytest.mark.skipif(not NATIVE_ISAS, reason="no compiled core to select from")


def test_python_backend_is_selectable():
    r = _run("import lrcore; print(lrcore.backend(), lrcore.isa(), "
             "lrcore.kernels.adam.__wrapped__ is lrcore.reference.adam)", LRCORE_BACKEND="python")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["python", "numpy", "True"]


def test_unknown_backend_is_an_error():
    r = _run("import lrcore", LRCORE_BACKEND="fortran")
    assert r.returncode != 0 and "LRCORE_BACKEND" in r.stderr


@needs_native
@pytest.mark.parametrize("name", NATIVE_ISAS)
def test_isa_can_be_forced_lower(name):
    r = _run("import lrcore; print(lrcore.isa())", LRCORE_ISA=name, LRCORE_BACKEND="native")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == name


@needs_native
def test_unknown_isa_is_an_error():
    r = _run("import lrcore", LRCORE_ISA="sse9", LRCORE_BACKEND="native")
    assert r.returncode != 0 and "LRCORE_ISA" in r.stderr


@needs_native
def test_best_isa_is_the_default():
    """Without LRCORE_ISA (never inherited from the caller) the best build runs."""
    r = _run("import lrcore; print(lrcore.isa())", LRCORE_BACKEND="native")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == NATIVE_ISAS[-1]


def test_omp_num_threads_sets_the_default():
    r = _run("import lrcore; print(lrcore.num_threads())", OMP_NUM_THREADS="3",
             LRCORE_BACKEND="native")
    if NATIVE_ISAS:
        assert r.stdout.strip() == "3", r.stderr


@pytest.mark.skipif(lrcore.backend() != "native", reason="ISA builds exist only natively")
def test_forcing_an_unsupported_isa_says_what_is_available():
    from lrcore import backend
    missing = [n for n in ("baseline", "avx2", "avx512") if n not in lrcore.available_isas()]
    if not missing:
        pytest.skip("this CPU runs every build")
    before = lrcore.isa()
    with pytest.raises(ValueError, match="not supported on this CPU; available"):
        backend.set_isa(missing[0])
    assert lrcore.isa() == before


def test_python_m_lrcore_reports_and_self_checks():
    r = subprocess.run([sys.executable, "-m", "lrcore"], capture_output=True, text=True,
                       env=_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"lrcore {lrcore.__version__}" in r.stdout
    for word in ("backend:", "instruction set:", "threads:", "self-check passed"):
        assert word in r.stdout


def test_a_missing_compiled_core_is_an_error_that_says_what_to_do():
    code = ("import sys; sys.modules['lrcore._core'] = None\n"
            "try:\n    import lrcore\nexcept ImportError as e:\n    print('ERR', e)\n")
    r = _run(code, LRCORE_BACKEND="native")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ERR") and "LRCORE_BACKEND=python" in r.stdout
    assert "pip install" in r.stdout
    r = _run(code, LRCORE_BACKEND="python")          # the explicit switch still works
    assert "ERR" not in r.stdout
