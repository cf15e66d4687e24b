"""The 8-bit step's time per element on one thread, by piece: builds bench/q8_percore.c
against this checkout's headers with the AVX-512 build's flags (setup.py) and runs it.

Run: python bench/q8_percore.py [n [repetitions]]     (default 2048 elements in cache;
     e.g. 4194304 3 for buffers out of cache). NOVBMI=1 in the environment: the path of
     AVX-512 CPUs without AVX512-VBMI. Needs gcc and an AVX-512 CPU.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "src")
sys.path.insert(0, SRC)
from lrcore import quantization as q  # noqa: E402

FLAGS = ["-O3", "-std=gnu11", "-ffp-contract=off", "-fno-math-errno", "-mavx512f",
         "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx2", "-mfma",
         "-mprefer-vector-width=512", "-DLRCORE_ISA_NAME=avx512"]


def tables():
    out = []
    for signed, nm in ((True, "s"), (False, "u")):
        c = q._codec(signed)
        for name, a, ty in (("map", c.map.view(np.uint32), "uint32_t"),
                            ("thr", c.thr.view(np.uint32), "uint32_t"),
                            ("base", c.base, "int32_t"), ("dec", c.dec.view(np.uint32), "uint32_t"),
                            ("deci", c.deci, "int32_t"), ("planes", c.planes, "uint8_t")):
            out.append(f"static const {ty} {nm}_{name}[{a.size}] = "
                       "{" + ",".join(str(int(x)) + ("u" if ty == "uint32_t" else "")
                                      for x in a) + "};")
        out.append(f"static const int {nm}_window = {c.window}, {nm}_near = {c.near};")
    return "\n".join(out) + "\n"


def main():
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "q8_tables.h"), "w") as f:
            f.write(tables())
        exe = os.path.join(d, "q8_percore")
        subprocess.run(["gcc", *FLAGS, "-I", d, "-I", os.path.join(SRC, "lrcore", "csrc"),
                        "-I", os.path.join(SRC, "lrcore", "include"),
                        os.path.join(HERE, "q8_percore.c"), "-o", exe, "-lm"], check=True)
        return subprocess.run([exe, *sys.argv[1:]]).returncode


if __name__ == "__main__":
    sys.exit(main())
