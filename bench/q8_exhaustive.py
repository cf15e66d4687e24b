"""Every float32 quotient in [-1, 1], both maps: the vector encoder against the exact search.

The AVX-512 encoder (lrcore_q8_encode_block) codes most values arithmetically and falls back
to the exact search (lrcore_q8_code: bucket table + two threshold compares, which the tests
compare with a brute-force search over the 256 entries) only near decision points. This
script feeds every float32 bit pattern in [-1, 1] (2 x 1,065,353,217 values per map) through
the compiled encoder under the AVX-512 build and under the baseline build (scalar exact
search) and counts the codes that differ. Each block of 256 holds 1.0 first and 255 test
values, so absmax = 1 and the quotient is the value itself.

Run: python bench/q8_exhaustive.py        (about a minute per map on one core)
"""
import sys
import time

import numpy as np

import lrcore
from lrcore import backend
from lrcore import quantization as q

CHUNK = 255 << 16          # test values per call (a multiple of 255)


def codes(values, signed, isa):
    nb = values.size // 255
    x = np.empty((nb, 256), np.float32)
    x[:, 0] = 1.0
    x[:, 1:] = values.reshape(nb, 255)
    c, a = np.empty(x.size, np.uint8), np.empty(nb, np.float32)
    backend.set_isa(isa)
    q._native_code(False, x.reshape(-1), c, a, signed, num_threads=1)
    assert (a == 1).all()
    return c.reshape(nb, 256)[:, 1:].reshape(-1)


def main():
    if lrcore.backend() != "native" or "avx512" not in lrcore.available_isas():
        print("needs the compiled backend on an AVX-512 CPU")
        return 1
    before = backend.isa()
    bad = 0
    try:
        for signed in (True, False):
            t0, count, diff = time.perf_counter(), 0, 0
            for sign in (0, 0x80000000):
                hi = 0x3F800000 + 1
                for lo in range(0, hi, CHUNK):
                    bits = np.arange(lo, min(lo + CHUNK, hi), dtype=np.uint32) | np.uint32(sign)
                    pad = -bits.size % 255
                    v = np.concatenate([bits, np.zeros(pad, np.uint32)]).view(np.float32)
                    d = codes(v, signed, "avx512") != codes(v, signed, "baseline")
                    diff += int(d[:bits.size].sum())
                    count += bits.size
            bad += diff
            print(f"signed={signed}: {count} values, {diff} codes differ "
                  f"({time.perf_counter() - t0:.0f} s)")
    finally:
        backend.set_isa(before)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
