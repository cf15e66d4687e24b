"""Every float32 quotient estimate in [-1, 1], both maps: the AVX-512 vector encoder against
the exact search.

The AVX-512 encoder (lrcore_q8_encode_block) codes the estimate x' = fl(v * fl(1 / absmax))
of each quotient x = fl(v / absmax) arithmetically and leaves a lane to the exact search
(lrcore_q8_code: bucket table + two threshold compares, which the tests compare with a
brute-force search over the 256 entries) when it flags it. lrcore_q8.h proves that x lies in
N(x') = [x' - 2 ulp(x'), x' + 2 ulp(x')] (for |x'| >= 2**-100; [-2**-99, 2**-99] below,
where every code is the code of 0). This script checks, for every float32 x' in [-1, 1]
(2 x 1,065,353,217 values per map):

  1. neighbourhood: where the vector encoder does not flag x', its code equals the exact
     code of both ends of N(x') (rounded outwards to float32, clamped to [-1, 1]); codes
     are monotone in x, so every float32 in N(x') has that code: the vector code is right
     for every quotient x whose estimate is x';
  2. end to end: the encoder's codes (vector lanes plus the exact search on flagged lanes)
     of blocks whose absmax is 1 (so x' = x) equal the baseline build's exact search.

Run: python bench/q8_exhaustive.py        (a few minutes per map on one core)
"""
import sys
import time

import numpy as np

import lrcore
from lrcore import backend
from lrcore import quantization as q

CHUNK = 255 << 16          # test values per call (a multiple of 255 and of 16)
TINY = 2.0 ** -100


def _blocks(values):
    """values (|v| <= 1) as blocks of 256 that start with 1.0 (absmax 1), flattened."""
    pad = -values.size % 255
    v = np.concatenate([values, np.zeros(pad, np.float32)])
    nb = v.size // 255
    x = np.empty((nb, 256), np.float32)
    x[:, 0] = 1.0
    x[:, 1:] = v.reshape(nb, 255)
    return x.reshape(-1), nb


def codes(values, signed, isa):
    """The encoder's codes of `values` (as quotients: absmax 1) under the build `isa`."""
    x, nb = _blocks(values)
    c, a = np.empty(x.size, np.uint8), np.empty(nb, np.float32)
    backend.set_isa(isa)
    q._native_code(False, x, c, a, signed, num_threads=1)
    assert (a == 1).all()
    return c.reshape(nb, 256)[:, 1:].reshape(-1)[:values.size]


def neighbourhood(x):
    """The ends of N(x') for float32 x', rounded outwards to float32 and clamped to [-1, 1]."""
    bits = x.view(np.uint32)
    expo = ((bits >> np.uint32(23)) & np.uint32(0xFF)).astype(np.int64)
    ulp = np.ldexp(1.0, expo - 150)            # binade spacing (exact in float64)
    x64 = x.astype(np.float64)
    lo64, hi64 = x64 - 2 * ulp, x64 + 2 * ulp
    tiny = np.abs(x64) < TINY
    lo64[tiny], hi64[tiny] = -2 * TINY, 2 * TINY
    lo, hi = lo64.astype(np.float32), hi64.astype(np.float32)
    lo = np.where(lo.astype(np.float64) > lo64, np.nextafter(lo, np.float32(-np.inf)), lo)
    hi = np.where(hi.astype(np.float64) < hi64, np.nextafter(hi, np.float32(np.inf)), hi)
    return np.clip(lo, -1, 1).astype(np.float32), np.clip(hi, -1, 1).astype(np.float32)


def main():
    if lrcore.backend() != "native" or "avx512" not in lrcore.available_isas():
        print("needs the compiled backend on an AVX-512 CPU")
        return 1
    from lrcore import _q8
    before = backend.isa()
    bad = 0
    try:
        for signed in (True, False):
            codec = q._codec(signed)
            t0 = time.perf_counter()
            count = diff = wrong = flagged = 0
            for sign in (0, 0x80000000):
                hi_bits = 0x3F800000 + 1
                for lo_bits in range(0, hi_bits, CHUNK):
                    bits = (np.arange(lo_bits, min(lo_bits + CHUNK, hi_bits), dtype=np.uint32)
                            | np.uint32(sign))
                    x = bits.view(np.float32)
                    n16 = -(-x.size // 16) * 16
                    xp = np.zeros(n16, np.float32)
                    xp[:x.size] = x
                    vc, fl = np.empty(n16, np.uint8), np.empty(n16, np.uint8)
                    assert _q8.vector_codes(2, xp, vc, fl, codec)
                    vc, fl = vc[:x.size], fl[:x.size].astype(bool)
                    exact = codes(x, signed, "baseline")
                    lo, hi = neighbourhood(x)
                    ok = ~fl
                    lo_c = codes(lo, signed, "baseline")
                    hi_c = codes(hi, signed, "baseline")
                    wrong += int(((vc != lo_c) | (vc != hi_c))[ok].sum())
                    flagged += int(fl.sum())
                    diff += int((codes(x, signed, "avx512") != exact).sum())
                    count += x.size
            bad += diff + wrong
            print(f"signed={signed}: {count} values, {flagged} flagged "
                  f"({flagged / count:.2e}); unflagged lanes whose neighbourhood codes "
                  f"differently: {wrong}; encoder codes that differ from the exact search: "
                  f"{diff} ({time.perf_counter() - t0:.0f} s)")
    finally:
        backend.set_isa(before)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
