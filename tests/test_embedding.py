"""Another extension embeds lrcore's kernels: a tiny Cython module is built against the
*installed* package (lrcore.get_include() and the lrcore.clrcore .pxd) and runs an Adam
step with no Python in the loop, then a plain C program includes the header alone."""
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lrcore
from lrcore import reference

PYX = textwrap.dedent("""
    # cython: language_level=3
    from lrcore.clrcore cimport lrcore_adam_f32, lrcore_adam_hp, lrcore_adam_defaults

    def adam_step(float[::1] param, const float[::1] grad, float[::1] m, float[::1] v,
                  double lr, long step, double weight_decay):
        cdef lrcore_adam_hp hp = lrcore_adam_defaults(lr, step)
        hp.weight_decay = weight_decay
        with nogil:
            lrcore_adam_f32(param.shape[0], &param[0], &grad[0], &m[0], &v[0], NULL, &hp)
""")

SETUP = textwrap.dedent("""
    import lrcore
    from Cython.Build import cythonize
    from setuptools import Extension, setup
    setup(name="downstream", ext_modules=cythonize(
        [Extension("downstream", ["downstream.pyx"], include_dirs=[lrcore.get_include()],
                   extra_compile_args=["-O2"])], language_level=3))
""")


def _clean_env():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # resolve lrcore from site-packages, as a downstream build would
    return env


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_cython_module_built_against_installed_lrcore(tmp_path):
    pytest.importorskip("Cython")
    (tmp_path / "downstream.pyx").write_text(PYX)
    (tmp_path / "setup.py").write_text(SETUP)
    build = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                           cwd=tmp_path, capture_output=True, text=True, env=_clean_env())
    assert build.returncode == 0, build.stdout + build.stderr
    run = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import numpy as np, downstream
        rng = np.random.default_rng(5)
        p = rng.uniform(0.5, 1.5, 1003).astype(np.float32)
        g = rng.uniform(-1, 1, 1003).astype(np.float32)
        m = np.zeros_like(p); v = np.zeros_like(p)
        for step in (1, 2, 3):
            downstream.adam_step(p, g, m, v, 1e-2, step, 0.01)
        np.save("out.npy", np.stack([p, m, v]))
    """)], cwd=tmp_path, capture_output=True, text=True, env=_clean_env())
    assert run.returncode == 0, run.stdout + run.stderr
    got = np.load(tmp_path / "out.npy")

    rng = np.random.default_rng(5)
    p = rng.uniform(0.5, 1.5, 1003).astype(np.float32)
    g = rng.uniform(-1, 1, 1003).astype(np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    for step in (1, 2, 3):
        reference.adam(p, g, m, v, lr=1e-2, step=step, weight_decay=0.01)
    eps = np.finfo(np.float32).eps
    for a, b in zip(got, (p, m, v)):
        np.testing.assert_allclose(a, b, rtol=64 * eps, atol=64 * eps)
    assert not np.array_equal(got[0], rng.uniform(0.5, 1.5, 1003).astype(np.float32))


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_header_is_self_contained_c99(tmp_path):
    src = tmp_path / "use.c"
    src.write_text(textwrap.dedent("""
        #include "lrcore.h"
        #include <stdio.h>
        int main(void) {
            float p[3] = {1, 2, 3}, g[3] = {0.5f, -0.5f, 1}, buf[3] = {0};
            lrcore_sgd_hp hp = lrcore_sgd_defaults(0.1, 1);
            hp.momentum = 0.9;
            lrcore_sgd_f32(3, p, g, buf, &hp);
            printf("%.6f %.6f %.6f\\n", p[0], p[1], p[2]);
            return 0;
        }
    """))
    exe = tmp_path / "use"
    cc = subprocess.run(["cc", "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror",
                         "-I", lrcore.get_include(), str(src), "-o", str(exe), "-lm"],
                        capture_output=True, text=True)
    assert cc.returncode == 0, cc.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    np.testing.assert_allclose([float(x) for x in out], [0.95, 2.05, 2.9], rtol=1e-6)
    assert "#include <Python.h>" not in open(os.path.join(lrcore.get_include(), "lrcore.h")).read()
