"""Build of lrcore's compiled extension (everything else is in pyproject.toml).

The kernels (src/lrcore/include/lrcore.h) are compiled once per instruction set
from src/lrcore/csrc/kernels_isa.c, each object with its own flags, and linked
into one extension; the runtime picks the best one at import. Portable flags
only: no tuning for the build machine and no fast-math. OpenMP is used when the compiler has it.
"""
import os
import platform
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NATIVE = os.path.join("src", "lrcore", "csrc")
INCLUDE = os.path.join("src", "lrcore", "include")
IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64")
IS_MSVC_LIKE = sys.platform == "win32"

# -ffp-contract=off: a*b+c is never fused, so every instruction-set build and the
# numpy reference round identically (FMA would change results per CPU).
COMMON = [] if IS_MSVC_LIKE else ["-O3", "-ffp-contract=off", "-fno-math-errno"]
ISA_FLAGS = {"baseline": []}
if IS_X86_64 and not IS_MSVC_LIKE:
    ISA_FLAGS["avx2"] = ["-mavx2", "-mfma"]
    ISA_FLAGS["avx512"] = ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq",
                           "-mavx2", "-mfma", "-mprefer-vector-width=512"]


def _compiler_accepts(compiler, flag):
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void) { return omp_get_max_threads() < 0; }\n")
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=[flag])
            compiler.link_executable(objs, "probe", output_dir=tmp, extra_postargs=[flag])
        except Exception:
            return False
    return True


class BuildExt(build_ext):
    """Compile kernels_isa.c once per instruction set, then the extension."""

    def build_extensions(self):
        openmp = not IS_MSVC_LIKE and _compiler_accepts(self.compiler, "-fopenmp")
        if not openmp:
            print("lrcore: compiler has no OpenMP; building single-threaded")
        for ext in self.extensions:
            if ext.name != "lrcore._core":
                continue
            objects = []
            for name, flags in ISA_FLAGS.items():
                objects += self.compiler.compile(
                    [os.path.join(NATIVE, "kernels_isa.c")],
                    output_dir=os.path.join(self.build_temp, "isa_" + name),
                    include_dirs=[NATIVE, INCLUDE],
                    macros=[("LRCORE_ISA_NAME", name)],
                    extra_postargs=COMMON + ["-std=c99", "-fPIC"] + flags,
                    debug=self.debug,
                )
            ext.extra_objects = objects
            if openmp:
                ext.extra_compile_args = ext.extra_compile_args + ["-fopenmp"]
                ext.extra_link_args = ext.extra_link_args + ["-fopenmp"]
        super().build_extensions()


extensions = [
    Extension(
        "lrcore._core",
        sources=["src/lrcore/_core.pyx", os.path.join(NATIVE, "runtime.c")],
        include_dirs=[NATIVE, INCLUDE, np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=COMMON,
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "binding": True, "embedsignature": True,
                             "boundscheck": False, "wraparound": False, "cdivision": True},
    ),
    cmdclass={"build_ext": BuildExt},
)
