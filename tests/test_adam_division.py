"""Adam's quotient sqrt(v) / sqrt(1 - beta2**step) without a division (lrcore_body.h,
quot_c: the avx512 build's float32 kernels) equals the division bit for bit:
second moments over the whole float32 range and its special values (zeros of both signs,
subnormals, the largest value, Inf, NaN), eps 0 and not, AMSGrad, bias corrections from
the first step to the ten-thousandth, every instruction set, against the numpy twin: float32
(where the avx512 build uses the quotient) and the half-precision layouts (which keep the
division). bench/markstein_exhaustive.c checks the quotient itself
for every float32 significand."""
import ml_dtypes
import numpy as np
import pytest

import lrcore
from lrcore import kernels, lowp, reference

BF16 = np.dtype(ml_dtypes.bfloat16)
F16, F32 = np.dtype(np.float16), np.dtype(np.float32)
LAYOUTS = [(F32, F32, F32), (BF16, BF16, BF16), (BF16, BF16, F32), (F16, F16, F32),
           (F32, BF16, F32)]


def _second_moments(rng, n):
    """Non-negative float32 spanning every binade, with the special values scattered."""
    bits = rng.integers(0, 0x7F800000, n, dtype=np.uint32)   # +0 .. the largest finite
    v = bits.view(np.float32).copy()
    special = np.array([0.0, -0.0, np.inf, np.nan, 1e-45, 1.1754942e-38, 1.1754944e-38,
                        3.4028235e38, 1.0, 2.0 ** -75, 2.0 ** 64], np.float32)
    at = rng.choice(n, 4 * special.size, replace=False)
    v[at] = np.tile(special, 4)
    return v


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "-".join(d.name for d in l))
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
def test_quotient_equals_division_every_isa(layout, amsgrad):
    from lrcore import backend
    pdt, gdt, sdt = layout
    rng = np.random.default_rng(7 + amsgrad)
    n = 4099    # vectors of every width and a tail
    before = backend.isa() if lrcore.backend() == "native" else None
    try:
        for beta2, step, eps in ((0.999, 1, 1e-8), (0.999, 3, 0.0), (0.9, 10000, 1e-8),
                                 (0.99995, 17, 0.0), (0.5, 2, 1e-3)):
            v = _second_moments(rng, n)
            if sdt == BF16:      # keep them representable; the tie to the twin is exact
                v = v.astype(BF16).astype(np.float32)
            bufs = [rng.standard_normal(n).astype(np.float32).astype(pdt),
                    (rng.standard_normal(n) * 1e-2).astype(np.float32).astype(gdt),
                    (rng.standard_normal(n) * 1e-2).astype(np.float32).astype(sdt),
                    v.astype(sdt)]
            if amsgrad:
                bufs.append(_second_moments(rng, n).astype(sdt))
            hp = dict(lr=1e-3, step=step, beta1=0.9, beta2=beta2, eps=eps, weight_decay=0.01,
                      decoupled_weight_decay=True)
            want = [b.copy() for b in bufs]
            names = ["param", "grad", "exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if amsgrad else [])
            with np.errstate(all="ignore"):
                if layout == (F32, F32, F32):
                    reference.adam(*want, **hp)
                else:
                    lowp.twin_step(reference.adam, names, want, **hp)
            for isa in lrcore.available_isas():
                if before is not None:
                    backend.set_isa(isa)
                got = [b.copy() for b in bufs]
                kernels.adam(*got, num_threads=2, **hp)
                for name, g, w in zip(names, got, want):
                    np.testing.assert_array_equal(g.view(np.uint8), w.view(np.uint8),
                                                  err_msg=f"{name} {isa} beta2={beta2} step={step}")
    finally:
        if before is not None:
            backend.set_isa(before)
