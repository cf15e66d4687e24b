"""Build of lrcore's compiled extension (everything else is in pyproject.toml).

The kernels (src/lrcore/include/lrcore.h) are compiled once per instruction set
from src/lrcore/csrc/kernels_isa.c, each object with its own flags, and linked
into one extension; the runtime picks the best one at import. Portable flags
only: no tuning for the build machine and no fast-math. Threads come from lrcore's own
pool (src/lrcore/csrc/pool.c, POSIX threads), so every build is threaded and no OpenMP
runtime is needed. Compilers: GCC or Clang (Linux, macOS, MinGW-style POSIX toolchains);
MSVC is refused with a message, since the pool and the ISA flags are POSIX/GCC-style.
CFLAGS/LDFLAGS from the environment (sanitizers, coverage) reach every object and the
link, and there is no build probe that could fail on them and drop a feature.
"""
import os
import platform
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NATIVE = os.path.join("src", "lrcore", "csrc")
INCLUDE = os.path.join("src", "lrcore", "include")
IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64")

# -ffp-contract=off: a*b+c is never fused, so every instruction-set build and the
# numpy reference round identically (FMA would change results per CPU).
COMMON = ["-O3", "-ffp-contract=off", "-fno-math-errno"]
ISA_FLAGS = {"baseline": []}
if IS_X86_64:
    ISA_FLAGS["avx2"] = ["-mavx2", "-mfma", "-mf16c"]
    ISA_FLAGS["avx512"] = ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq",
                           "-mavx2", "-mfma", "-mf16c", "-mprefer-vector-width=512"]


# The per-instruction-set source of each extension (lrcore._q8: the 8-bit kernels, issue 13).
ISA_SOURCES = {"lrcore._core": "kernels_isa.c", "lrcore._q8": "q8_isa.c"}


class BuildExt(build_ext):
    """Compile each ISA_SOURCES file once per instruction set, then the extensions."""

    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            raise SystemExit("lrcore: MSVC is not supported (the thread pool needs POSIX threads "
                             "and the instruction-set builds GCC/Clang flags); build with GCC or "
                             "Clang, e.g. under WSL or MSYS2")
        for ext in self.extensions:
            if ext.name not in ISA_SOURCES:
                continue
            def compile_isa(item, ext=ext):
                name, flags = item
                return self.compiler.compile(
                    [os.path.join(NATIVE, ISA_SOURCES[ext.name])],
                    output_dir=os.path.join(self.build_temp, "isa_" + name),
                    include_dirs=[NATIVE, INCLUDE],
                    macros=[("LRCORE_ISA_NAME", name)],
                    extra_postargs=COMMON + ["-std=c99", "-fPIC"] + flags,
                    debug=self.debug,
                )
            # one compiler process per instruction set at once (each is a separate gcc run)
            with ThreadPoolExecutor(max_workers=min(len(ISA_FLAGS), os.cpu_count() or 1)) as ex:
                ext.extra_objects = [o for objs in ex.map(compile_isa, ISA_FLAGS.items())
                                     for o in objs]
        super().build_extensions()


extensions = [
    Extension(
        "lrcore._core",
        sources=["src/lrcore/_core.pyx", os.path.join(NATIVE, "runtime.c"),
                 os.path.join(NATIVE, "pool.c")],
        # relink when the per-ISA objects' sources change (they are extra_objects)
        depends=[os.path.join(NATIVE, name) for name in ("kernels_isa.c", "jobs.h", "pool.h",
                                                         "runtime.h")]
                + [os.path.join(INCLUDE, name) for name in ("lrcore.h", "lrcore_body.h",
                                                            "lrcore_lowp.h")],
        include_dirs=[NATIVE, INCLUDE, np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=COMMON + ["-pthread"],
        extra_link_args=["-pthread"],
    ),
    Extension(
        "lrcore._q8",
        # no pool.c: the 8-bit kernels run on lrcore._core's pool (one per process), whose
        # lrcore_pool_run _q8 takes from a capsule of _core
        sources=["src/lrcore/_q8.pyx"],
        # relink when the per-ISA objects' sources change (they are extra_objects)
        depends=[os.path.join(NATIVE, "q8_isa.c"), os.path.join(NATIVE, "q8_jobs.h"),
                 os.path.join(NATIVE, "jobs.h"), os.path.join(INCLUDE, "lrcore_q8.h"),
                 os.path.join(INCLUDE, "lrcore.h"), os.path.join(INCLUDE, "lrcore_body.h"),
                 os.path.join(INCLUDE, "lrcore_lowp.h")],
        include_dirs=[NATIVE, INCLUDE, np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=COMMON + ["-pthread"],
        extra_link_args=["-pthread"],
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
