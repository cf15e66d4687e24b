"""Another program embeds lrcore's kernels, as the README's "Embedding from C or Cython" says.

The Cython module and its setup.py are taken from the README text itself and built against
the *installed* package (lrcore.get_include() and lrcore/clrcore.pxd); a C program includes
the header alone. Each is built as written and again with -march=native -O3 (gcc and clang,
where installed): the header keeps contraction into FMA off for its own functions, so every
build must give lrcore.kernels' bits exactly. Flags that change values in ways a header
cannot undo stop the build with lrcore.h's #error where the compiler announces them by a
macro (-ffast-math, -Ofast, ...); clang's -ffp-contract=fast is not announced and is
documented as unsupported."""
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lrcore
from lrcore import kernels

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
COMPILERS = [c for c in ("gcc", "clang") if shutil.which(c)]


def _section():
    text = README.read_text()
    start = text.index("### Embedding from C or Cython")
    return text[start:text.index("\n## ", start)]


def _block(lang, contains):
    for m in re.finditer(r"```" + lang + r"\n(.*?)```", _section(), re.S):
        if contains in m.group(1):
            return m.group(1)
    raise AssertionError(f"README's embedding section has no {lang} block with {contains!r}")


def _clean_env(**extra):
    env = dict(os.environ, **extra)
    env.pop("PYTHONPATH", None)  # resolve lrcore from site-packages, as a downstream build would
    return env


def _inputs(n=1003, steps=100):
    rng = np.random.default_rng(5)
    p = rng.uniform(0.5, 1.5, n).astype(np.float32)
    grads = rng.standard_normal((steps, n)).astype(np.float32)
    return p, grads


def _adam_reference(p, grads):
    p = p.copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    for step, g in enumerate(grads, 1):
        kernels.adam(p, g, m, v, lr=1e-2, step=step, weight_decay=0.01)
    return np.stack([p, m, v])


@pytest.mark.skipif(not COMPILERS, reason="no C compiler")
@pytest.mark.parametrize("cflags", ["", "-march=native -O3"], ids=["as-written", "march-native"])
def test_readme_cython_module(tmp_path, cflags):
    """The README's .pyx and setup.py, unchanged: they build (no performance hints), check
    the lengths of their inputs, and give lrcore.kernels' bits after 100 Adam steps."""
    pytest.importorskip("Cython")
    (tmp_path / "mymodule.pyx").write_text(_block("cython", "mymodule.pyx"))
    (tmp_path / "setup.py").write_text(_block("python", "cythonize"))
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tmp_path,
                           capture_output=True, text=True, env=_clean_env(CFLAGS=cflags))
    assert build.returncode == 0, build.stdout + build.stderr
    assert "performance hint" not in (build.stdout + build.stderr).lower()
    p, grads = _inputs()
    np.save(tmp_path / "p.npy", p)
    np.save(tmp_path / "grads.npy", grads)
    run = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import numpy as np, mymodule
        p = np.load("p.npy"); grads = np.load("grads.npy")
        m = np.zeros_like(p); v = np.zeros_like(p)
        for step, g in enumerate(grads, 1):
            mymodule.adam_step(p, g, m, v, 1e-2, step)
        np.save("out.npy", np.stack([p, m, v]))
        for bad in (dict(g=g[:-1]), dict(m=m[:5]), dict(v=np.zeros(0, np.float32))):
            args = dict(dict(p=p, g=g, m=m, v=v, lr=1e-2, step=1), **bad)
            try:
                mymodule.adam_step(**args)
            except ValueError as e:
                assert "length" in str(e), e
            else:
                raise SystemExit(f"a short input was accepted: {list(bad)}")
        try:
            mymodule.adam_step(p, g, m, v, 1e-2, 0)
        except ValueError as e:
            assert "step" in str(e), e
        else:
            raise SystemExit("step=0 was accepted")
    """)], cwd=tmp_path, capture_output=True, text=True, env=_clean_env())
    assert run.returncode == 0, run.stdout + run.stderr
    got = np.load(tmp_path / "out.npy")
    np.testing.assert_array_equal(got, _adam_reference(p, grads))


# Every rule, defaults plus weight decay, 100 steps over 1003 elements: raw float32 in and out.
C_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include "lrcore.h"
#define N 1003
#define STEPS 100
static float p[9][N], s[9][3][N], g[STEPS][N];
int main(int argc, char **argv) {
    FILE *in, *out;
    float p0[N];
    if (argc != 3) return 2;
    in = fopen(argv[1], "rb");
    out = fopen(argv[2], "wb");
    if (!in || !out || fread(p0, sizeof p0, 1, in) != 1 || fread(g, sizeof g, 1, in) != 1) return 2;
    for (int r = 0; r < 9; r++) for (int i = 0; i < N; i++) p[r][i] = p0[i];
    for (int64_t t = 1; t <= STEPS; t++) {
        const float *gt = g[t - 1];
        lrcore_sgd_hp sgd = lrcore_sgd_defaults(0.05, t); sgd.momentum = 0.9; sgd.weight_decay = 0.01;
        lrcore_sgd_f32(N, p[0], gt, s[0][0], &sgd);
        lrcore_adam_hp adam = lrcore_adam_defaults(1e-2, t); adam.weight_decay = 0.01;
        lrcore_adam_f32(N, p[1], gt, s[1][0], s[1][1], s[1][2], &adam);
        lrcore_adagrad_hp adagrad = lrcore_adagrad_defaults(0.05, t); adagrad.weight_decay = 0.01;
        lrcore_adagrad_f32(N, p[2], gt, s[2][0], &adagrad);
        lrcore_rmsprop_hp rmsprop = lrcore_rmsprop_defaults(1e-3, t); rmsprop.momentum = 0.9;
        rmsprop.weight_decay = 0.01;
        lrcore_rmsprop_f32(N, p[3], gt, s[3][0], s[3][1], s[3][2], &rmsprop);
        lrcore_adadelta_hp adadelta = lrcore_adadelta_defaults(1.0, t); adadelta.weight_decay = 0.01;
        lrcore_adadelta_f32(N, p[4], gt, s[4][0], s[4][1], &adadelta);
        lrcore_adamax_hp adamax = lrcore_adamax_defaults(1e-2, t); adamax.weight_decay = 0.01;
        lrcore_adamax_f32(N, p[5], gt, s[5][0], s[5][1], &adamax);
        lrcore_nadam_hp nadam = lrcore_nadam_defaults(1e-2, t); nadam.weight_decay = 0.01;
        lrcore_nadam_f32(N, p[6], gt, s[6][0], s[6][1], &nadam);
        lrcore_radam_hp radam = lrcore_radam_defaults(1e-2, t); radam.weight_decay = 0.01;
        lrcore_radam_f32(N, p[7], gt, s[7][0], s[7][1], &radam);
        lrcore_lion_hp lion = lrcore_lion_defaults(1e-3, t); lion.weight_decay = 0.01;
        lrcore_lion_f32(N, p[8], gt, s[8][0], &lion);
    }
    fwrite(p, sizeof p, 1, out);
    fwrite(s, sizeof s, 1, out);
    return fclose(out) != 0;
}
"""

C_CALLS = [("sgd", 0.05, dict(momentum=0.9), ["momentum_buffer"]),
           ("adam", 1e-2, {}, ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]),
           ("adagrad", 0.05, {}, ["state_sum"]),
           ("rmsprop", 1e-3, dict(momentum=0.9), ["square_avg", "momentum_buffer", "grad_avg"]),
           ("adadelta", 1.0, {}, ["square_avg", "acc_delta"]),
           ("adamax", 1e-2, {}, ["exp_avg", "exp_inf"]),
           ("nadam", 1e-2, {}, ["exp_avg", "exp_avg_sq"]),
           ("radam", 1e-2, {}, ["exp_avg", "exp_avg_sq"]),
           ("lion", 1e-3, {}, ["exp_avg"])]


def _c_reference(p0, grads):
    n = p0.size
    ps, ss = np.empty((9, n), np.float32), np.zeros((9, 3, n), np.float32)
    for r, (name, lr, extra, states) in enumerate(C_CALLS):
        p = p0.copy()
        bufs = [ss[r][k] for k in range(len(states))]
        for step, g in enumerate(grads, 1):
            getattr(kernels, name)(p, g, *bufs, lr=lr, step=step, weight_decay=0.01, **extra)
        ps[r] = p
    return ps, ss


C_FLAG_SETS = [("c99-pedantic", ["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-O2"]),
               ("march-native", ["-O3", "-march=native"]),
               ("mfma", ["-O2", "-mfma", "-mavx2"]),
               ("mfma-contract-on", ["-O2", "-mfma", "-mavx2", "-ffp-contract=on"])]
# GCC's optimize pragma holds under -ffp-contract=fast too; clang's -ffp-contract=fast fuses
# regardless of pragmas (unsupported, as lrcore.h says), so it is not in clang's list.
C_BUILDS = [(c, f) for c in COMPILERS for f in C_FLAG_SETS]
if "gcc" in COMPILERS:
    C_BUILDS.append(("gcc", ("contract-fast", ["-O3", "-march=native", "-mfma", "-mavx2",
                                               "-ffp-contract=fast"])))


@pytest.mark.skipif(not COMPILERS, reason="no C compiler")
@pytest.mark.parametrize("compiler,flags", [(c, f) for c, (_, f) in C_BUILDS],
                         ids=[f"{c}-{i}" for c, (i, _) in C_BUILDS])
def test_c_program_matches_kernels_bitwise(tmp_path, compiler, flags):
    """Every rule from a plain C program, 100 steps: the same bits as lrcore.kernels
    under every supported set of flags (contraction into FMA stays off inside the header)."""
    src, exe = tmp_path / "use.c", tmp_path / "use"
    src.write_text(C_PROGRAM)
    cc = subprocess.run([compiler, *flags, "-I", lrcore.get_include(), str(src), "-o", str(exe),
                         "-lm"], capture_output=True, text=True)
    assert cc.returncode == 0, cc.stderr
    p0, grads = _inputs()
    (tmp_path / "in.bin").write_bytes(p0.tobytes() + grads.tobytes())
    subprocess.run([str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")], check=True)
    raw = np.frombuffer((tmp_path / "out.bin").read_bytes(), np.float32)
    n = p0.size
    got_p, got_s = raw[:9 * n].reshape(9, n), raw[9 * n:].reshape(9, 3, n)
    want_p, want_s = _c_reference(p0, grads)
    for r, (name, *_rest) in enumerate(C_CALLS):
        np.testing.assert_array_equal(got_p[r], want_p[r], err_msg=f"{name} param")
        np.testing.assert_array_equal(got_s[r], want_s[r], err_msg=f"{name} state")


@pytest.mark.skipif(not COMPILERS, reason="no C compiler")
def test_readme_c_command_links(tmp_path):
    """The README's cc command, run as written (it needs -lm: sqrt and pow)."""
    command = _block("sh", "demo.c").strip()
    (tmp_path / "demo.c").write_text(textwrap.dedent("""
        #include <stdio.h>
        #include "lrcore.h"
        int main(void) {
            double p[3] = {1, 2, 3}, g[3] = {0.5, -0.5, 1}, m[3] = {0}, v[3] = {0};
            lrcore_adam_hp hp = lrcore_adam_defaults(0.1, 1);
            lrcore_adam_f64(3, p, g, m, v, NULL, &hp);
            printf("%.17g %.17g %.17g\\n", p[0], p[1], p[2]);
            return 0;
        }
    """))
    build = subprocess.run(command.replace("python", sys.executable, 1), shell=True, cwd=tmp_path,
                           capture_output=True, text=True, env=_clean_env())
    assert build.returncode == 0, build.stderr
    out = subprocess.run([str(tmp_path / "demo")], capture_output=True, text=True, check=True)
    p, g = np.array([1.0, 2.0, 3.0]), np.array([0.5, -0.5, 1.0])
    kernels.adam(p, g, np.zeros(3), np.zeros(3), lr=0.1, step=1)
    assert [float(x) for x in out.stdout.split()] == p.tolist()


def test_header_includes_only_the_c_library():
    for name in ("lrcore.h", "lrcore_body.h"):
        text = open(os.path.join(lrcore.get_include(), name)).read()
        includes = re.findall(r"^#include\s+(\S+)", text, re.M)
        assert set(includes) <= {"<math.h>", "<stddef.h>", "<stdint.h>", "<string.h>",
                                 '"lrcore_body.h"'}, includes


FAST_MATH_FLAGS = [["-ffast-math"], ["-Ofast"], ["-ffinite-math-only"]]
FAST_MATH_BUILDS = [(c, f) for c in COMPILERS for f in FAST_MATH_FLAGS] + \
    [("gcc", f) for f in (["-funsafe-math-optimizations"], ["-freciprocal-math"])
     if "gcc" in COMPILERS]


@pytest.mark.skipif(not COMPILERS, reason="no C compiler")
@pytest.mark.parametrize("compiler,flags", FAST_MATH_BUILDS,
                         ids=[f"{c}{''.join(f)}" for c, f in FAST_MATH_BUILDS])
def test_header_refuses_value_changing_math_flags(tmp_path, compiler, flags):
    """A file compiled with -ffast-math (or another flag the compiler announces by a macro)
    cannot get lrcore's results: including lrcore.h stops the build with lrcore's #error,
    while the same file builds without the flag."""
    src = tmp_path / "use.c"
    src.write_text('#include "lrcore.h"\nint main(void) { return 0; }\n')
    base = [compiler, "-O2", "-I", lrcore.get_include(), "-c", str(src), "-o", str(tmp_path / "use.o")]
    plain = subprocess.run(base, capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr
    fast = subprocess.run(base + flags, capture_output=True, text=True)
    assert fast.returncode != 0, f"{compiler} {flags}: lrcore.h compiled"
    assert "lrcore.h cannot give lrcore's results" in fast.stderr, fast.stderr
