"""8-bit optimizer state: blocks of 256 values, one float32 absmax per block, codes into the
dynamic quantization map of bitsandbytes and torchao (issue 13).

Design: a state buffer of n float32 values is stored as `QuantizedState`: n uint8 codes and
ceil(n / BLOCK) float32 absmax values. Decoding is `dynamic_map(signed)[code] * absmax`
(float32). Encoding stores, for each value v of a block, the map entry nearest to the float32
quotient x = v / absmax (exactly nearest: ties go to the entry of smaller magnitude, i.e.
towards zero). `adam8` runs one Adam/AdamW step over such states: per block it decodes the
moments, runs lrcore's float32 Adam kernel on them (the same C function as
`lrcore.kernels.adam`), takes the new absmax and encodes. The compiled kernel (lrcore._q8,
threads split on block boundaries) and the numpy twin `adam8_reference` agree bit for bit.
"""
import functools
import math
import numbers
from collections.abc import Mapping

import numpy as np

from . import _validate
from .rules import RULES, STEP_MAX

__all__ = ["BLOCK", "MIN_ELEMENTS", "INT8_RULES", "dynamic_map", "QuantizedState", "quantize",
           "dequantize", "encode", "step", "step_reference", "adam8", "adam8_reference",
           "state_nbytes", "Adam8", "to_bitsandbytes", "from_bitsandbytes", "to_torchao",
           "from_torchao"]

#: Elements per block (one float32 absmax each), as bitsandbytes and torchao.
BLOCK = 256
#: Buffers with fewer elements keep float32 state (the threshold of bitsandbytes and torchao).
MIN_ELEMENTS = 4096

# bitsandbytes' create_dynamic_map(signed, max_exponent_bits=7, total_bits=8) (also torchao's),
# as float32 bit patterns, ascending: the unsigned map (256 entries), then the signed map's
# entries 127..255 (0, its 127 positive entries, 1); its entries 0..126 are the negatives of
# entries 128..254, mirrored (create_dynamic_map appends -x for each x). tests/test_quantization.py
# rebuilds both maps with that recipe (torch float32 linspace, means, powers of ten) and
# compares value for value.
_MAP_BITS = (
    0x00000000, 0x34ae7baa, 0x35500998, 0x360e9b38, 0x3692ccf6, 0x36de4c51, 0x3714e5d5, 0x3783126e,
    0x37e171a0, 0x381fe868, 0x384f1800, 0x387e479a, 0x3896bb99, 0x38ae5364, 0x38c5eb31, 0x3906594b,
    0x394154ca, 0x397c5049, 0x399ba5e4, 0x39b923a2, 0x39d6a163, 0x39f41f22, 0x3a08ce71, 0x3a178d50,
    0x3a264c30, 0x3a350b10, 0x3a43c9ef, 0x3a5288d0, 0x3a6147af, 0x3a70068e, 0x3a7ec56e, 0x3a958106,
    0x3aba5e35, 0x3adf3b64, 0x3b020c4a, 0x3b147ae1, 0x3b26e978, 0x3b395810, 0x3b4bc6a7, 0x3b5e3540,
    0x3b70a3d7, 0x3b818937, 0x3b8ac082, 0x3b93f7cf, 0x3b9d2f1a, 0x3ba66666, 0x3baf9db2, 0x3bb8d4fd,
    0x3bc20c4a, 0x3bcb4395, 0x3bd47ae1, 0x3bddb22e, 0x3be6e978, 0x3bf020c5, 0x3bf9580f, 0x3c0147ae,
    0x3c05e354, 0x3c0a7ef9, 0x3c0f1aa0, 0x3c13b645, 0x3c1851eb, 0x3c1ced92, 0x3c218937, 0x3c2f5c2a,
    0x3c466667, 0x3c5d70a3, 0x3c747ae2, 0x3c85c28f, 0x3c9147af, 0x3c9ccccd, 0x3ca851eb, 0x3cb3d70b,
    0x3cbf5c29, 0x3ccae147, 0x3cd66667, 0x3ce1eb87, 0x3ced70a3, 0x3cf8f5c3, 0x3d023d70, 0x3d080000,
    0x3d0dc28f, 0x3d13851f, 0x3d1947af, 0x3d1f0a3d, 0x3d24cccd, 0x3d2a8f5c, 0x3d3051eb, 0x3d36147b,
    0x3d3bd70a, 0x3d41999a, 0x3d475c28, 0x3d4d1eb8, 0x3d52e147, 0x3d58a3d7, 0x3d5e6667, 0x3d6428f7,
    0x3d69eb87, 0x3d6fae15, 0x3d7570a3, 0x3d7b3333, 0x3d807ae2, 0x3d835c2a, 0x3d863d71, 0x3d891eb8,
    0x3d8c0000, 0x3d8ee148, 0x3d91c290, 0x3d94a3d7, 0x3d97851f, 0x3d9a6667, 0x3d9d47af, 0x3da028f6,
    0x3da30a3e, 0x3da5eb85, 0x3da8cccd, 0x3dabae15, 0x3dae8f5c, 0x3db170a4, 0x3db451eb, 0x3db73333,
    0x3dba147b, 0x3dbcf5c3, 0x3dbfd70b, 0x3dc2b852, 0x3dc5999a, 0x3dc87ae2, 0x3dcb5c29, 0x3dd40000,
    0x3de26666, 0x3df0cccd, 0x3dff3333, 0x3e06cccc, 0x3e0e0000, 0x3e153334, 0x3e1c6666, 0x3e23999a,
    0x3e2acccc, 0x3e320000, 0x3e393334, 0x3e406666, 0x3e47999a, 0x3e4ecccc, 0x3e560000, 0x3e5d3334,
    0x3e646666, 0x3e6b999a, 0x3e72cccc, 0x3e7a0000, 0x3e809999, 0x3e843333, 0x3e87cccd, 0x3e8b6666,
    0x3e8f0000, 0x3e92999a, 0x3e963333, 0x3e99cccc, 0x3e9d6666, 0x3ea10000, 0x3ea4999a, 0x3ea83333,
    0x3eabcccc, 0x3eaf6666, 0x3eb30000, 0x3eb6999a, 0x3eba3333, 0x3ebdcccc, 0x3ec16666, 0x3ec50000,
    0x3ec8999a, 0x3ecc3333, 0x3ecfcccc, 0x3ed36666, 0x3ed70000, 0x3eda999a, 0x3ede3333, 0x3ee1cccc,
    0x3ee56666, 0x3ee90000, 0x3eec999a, 0x3ef03333, 0x3ef3cccc, 0x3ef76666, 0x3efb0000, 0x3efe9999,
    0x3f01199a, 0x3f02e666, 0x3f04b333, 0x3f068000, 0x3f084ccc, 0x3f0a199a, 0x3f0be666, 0x3f0db334,
    0x3f0f8000, 0x3f114ccd, 0x3f13199a, 0x3f14e666, 0x3f16b334, 0x3f188000, 0x3f1a4ccd, 0x3f1c199a,
    0x3f1de666, 0x3f1fb334, 0x3f218000, 0x3f234ccd, 0x3f25199a, 0x3f26e666, 0x3f28b334, 0x3f2a8000,
    0x3f2c4ccd, 0x3f2e199a, 0x3f2fe666, 0x3f31b334, 0x3f338000, 0x3f354ccd, 0x3f37199a, 0x3f38e666,
    0x3f3ab334, 0x3f3c8000, 0x3f3e4ccd, 0x3f40199a, 0x3f41e666, 0x3f43b334, 0x3f458000, 0x3f474ccc,
    0x3f49199a, 0x3f4ae666, 0x3f4cb334, 0x3f4e8000, 0x3f504ccc, 0x3f52199a, 0x3f53e666, 0x3f55b334,
    0x3f578000, 0x3f594ccc, 0x3f5b199a, 0x3f5ce666, 0x3f5eb334, 0x3f608000, 0x3f624ccc, 0x3f64199a,
    0x3f65e666, 0x3f67b334, 0x3f698000, 0x3f6b4ccc, 0x3f6d199a, 0x3f6ee666, 0x3f70b334, 0x3f728000,
    0x3f744ccc, 0x3f76199a, 0x3f77e666, 0x3f79b334, 0x3f7b8000, 0x3f7d4ccc, 0x3f7f199a, 0x3f800000,
    0x00000000, 0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b,
    0x3923d70b, 0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff,
    0x3aa7ef9d, 0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d,
    0x3bbd70a4, 0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64,
    0x3c3ae148, 0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852,
    0x3d0ae148, 0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f,
    0x3d670a3d, 0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a,
    0x3da1999a, 0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85,
    0x3ddb3334, 0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666,
    0x3e60cccd, 0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc,
    0x3eaa0000, 0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666,
    0x3ee3999a, 0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000,
    0x3f0e999a, 0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd,
    0x3f2b6666, 0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a,
    0x3f483333, 0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666,
    0x3f650000, 0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333,
    0x3f800000,
)


# The fast encoder's buckets (lrcore_q8.h): |x|'s float32 exponent and its top KEY_BITS mantissa
# bits pick a bucket; every bucket holds at most two decision thresholds (checked when the
# tables are built), so the code is base + (x >= thr[base]) + (x >= thr[base + 1]).
KEY_BITS = 6
KEY_LO = (127 - 24) << KEY_BITS          # |x| < 2**-24 shares the first bucket
NKEYS = (127 << KEY_BITS) - KEY_LO + 1   # up to |x| = 1 (larger |x| shares the last)


def dynamic_map(signed=True):
    """The 256-entry dynamic quantization map, ascending, as a new float32 array: signed
    (first moments; -0.99297 .. 1, entry 127 is 0) or unsigned (second moments; 0 .. 1)."""
    bits = np.array(_MAP_BITS, dtype=np.uint32)
    if signed:
        bits = np.concatenate([bits[256 + 127:256:-1] | np.uint32(0x80000000), bits[256:]])
    else:
        bits = bits[:256]
    return bits.view(np.float32)


def _f32(bits):
    return float(np.uint32(bits).view(np.float32))


class _Codec:
    """A map and its encoder tables: `thr[j]` is the smallest float32 x whose nearest entry
    (ties towards zero) is above entry j (257 values, the last two +inf), `base` the bucket
    table of the fast encoder, `zero_code` the code of 0."""

    #: The vector encoder's window around decision points and decade starts, in float32
    #: steps (its estimate's neighbourhood spans at most 4, lrcore_q8_encode_block).
    NEAR_STEPS = 8

    def __init__(self, signed):
        self.signed = bool(signed)
        self.map = dynamic_map(signed)
        m = self.map.astype(np.float64)
        thr = np.full(257, np.inf, dtype=np.float32)
        for j in range(255):
            mid = (m[j] + m[j + 1]) / 2.0          # exact in float64 (neighbours are close)
            t = np.float32(mid)
            if mid > 0:                             # tie -> lower entry: need x > mid
                if float(t) <= mid:
                    t = np.nextafter(t, np.float32(np.inf))
            elif mid < 0:                           # tie -> upper entry (towards zero): x >= mid
                if float(t) < mid:
                    t = np.nextafter(t, np.float32(np.inf))
            else:
                raise AssertionError("a threshold at 0")
            thr[j] = t
        self.thr = thr
        self.zero_code = int(np.flatnonzero(self.map == 0)[0])
        base = np.empty(2 * NKEYS, dtype=np.int32)
        t = thr[:255]
        shift = 23 - KEY_BITS
        for k in range(NKEYS):
            key = KEY_LO + k
            lo = 0.0 if k == 0 else _f32(key << shift)
            hi = np.inf if k == NKEYS - 1 else _f32((key + 1) << shift)
            # x in [lo, hi)
            b = int(np.searchsorted(t, np.float32(lo), side="right"))
            if int(np.searchsorted(t, np.float32(hi), side="left")) - b > 2:
                raise AssertionError("more than two thresholds in a bucket")
            base[k] = b
            # x in (-hi, -lo]
            b = int(np.searchsorted(t, np.float32(-hi), side="right"))
            if int(np.searchsorted(t, np.float32(-lo), side="right")) - b > 2:
                raise AssertionError("more than two thresholds in a bucket")
            base[NKEYS + k] = b
        self.base = base
        self._decades()
        # the VBMI decoder's byte planes: byte k (little-endian) of entry j at 256 k + j
        self.planes = np.ascontiguousarray(
            self.map.view(np.uint32)[None, :] >> np.uint32([[0], [8], [16], [24]])
        ).astype(np.uint8).reshape(-1)
        for a in (self.map, self.thr, self.base, self.dec, self.deci, self.planes):
            a.setflags(write=False)

    def _decades(self):
        """The vector encoder's tables (lrcore_q8_code16). It codes |x| against the magnitude
        map M (unsigned: the map; signed: entries 127.. of the map, 0 to 1; the negative half
        mirrors it exactly), whose entries after 0 come in decades of evenly spaced values
        (bitsandbytes' create_dynamic_map) and a last entry 1. Decade d holds the indices
        base[d] .. last[d] of M and starts at the threshold start[d]. In it the position of
        |x| among the indices, f = (|x| - M[base]) / spacing + base, is formed in fixed point
        with 14 fraction bits by one fused multiply-add:
            y = fma(|x|, INV[d], C[d]),  INV = 2**14 / spacing,
            C = 2**23 + 2**13 + 2**14 * (OFF - (M[base] / spacing - base))   (float32),
        OFF = 127 for the signed map (its codes are 127 + index), else 0: y is in [2**23,
        2**24), where float32 steps are 1, so Y = bits(y) - bits(2**23) is an integer close to
        2**14 * (f + OFF + 0.5), the code is Y >> 14 (clamped to last[d] + OFF), and the
        decision point k - 0.5 of the decade sits at Y = 2**14 * (k + OFF). A lane is left to
        the exact search when Y is within `window` of a multiple of 2**14: `window` (a power
        of two) is more than twice the largest |Y - 2**14 * (k + OFF)| over every float32
        within NEAR_STEPS steps of each decision point (the encoder codes an estimate x' of
        the quotient, within 2 ulp(x'), at most 4 steps, of it; lrcore_q8_encode_block), and
        lanes within `near` steps of a decade start are flagged too. The decade of |x| is
        lo[e], or lo[e] + 1 from split[e] on, e = |x|'s exponent - 96 (0 below 2**-31): one
        decade starts in a binade at most, split[e] is that start or +inf.
        dec = C | INV (16 float32 each) | split (32); deci = LAST = (bits(2**23) >> 14) +
        last + OFF | base (16 int32 each) | lo (32). Built and checked here;
        bench/q8_exhaustive.py checks the encoder on every float32 in [-1, 1], the tests
        compare it with a brute-force search."""
        mag = self.map[127:] if self.signed else self.map
        tm = self.thr[127:255] if self.signed else self.thr[:255]   # tm[j - 1] = T[j]
        K = mag.size
        T = np.concatenate([[np.float32(0)], tm[:K - 1]]).astype(np.float32)   # T[0] = 0
        off = 127 if self.signed else 0
        # decades: [0], then groups by decimal exponent, then [1.0]
        m64 = mag.astype(np.float64)
        key = np.floor(np.log10(m64[1:K - 1]) + 1e-9).astype(int)
        groups = [(0, 1)]
        j = 1
        for k in np.unique(key):
            cnt = int((key == k).sum())
            groups.append((j, cnt))
            j += cnt
        groups.append((K - 1, 1))
        assert j == K - 1 and len(groups) <= 15
        start = np.full(16, np.inf, np.float32)
        inv = np.zeros(16, np.float32)
        cst = np.zeros(16, np.float32)
        base = np.zeros(16, np.int32)
        last = np.zeros(16, np.int32)
        far = 0.0

        def Y(x, d):      # the encoder's fixed-point position (x float32 >= 0): an exact fma
            y = np.float32(float(np.float32(x)) * float(inv[d]) + float(cst[d]))
            assert 2.0 ** 23 <= y < 2.0 ** 24
            return int(y.view(np.int32)) - 0x4B000000

        for d, (b, cnt) in enumerate(groups):
            start[d] = T[b]
            base[d], last[d] = b, b + cnt - 1
            pos0 = float(b)                  # position of 0: the zero decade and [1.0]
            if cnt > 1:
                spacing = (m64[b + cnt - 1] - m64[b]) / (cnt - 1)
                inv[d] = np.float32(2.0 ** 14 / spacing)
                pos0 = b - m64[b] / spacing
            cst[d] = np.float32(2.0 ** 23 + 2.0 ** 13 + 2.0 ** 14 * (off + pos0))
            # the decision points T[b + k] (k = 1 .. cnt - 1), against Y = 2**14 (b + k +
            # OFF), at every float32 within NEAR_STEPS steps of them
            for k in range(1, cnt):
                tb = int(T[b + k:b + k + 1].view(np.int32)[0])
                for x in np.arange(tb - self.NEAR_STEPS, tb + self.NEAR_STEPS + 1,
                                   dtype=np.int32).view(np.float32):
                    far = max(far, abs(Y(x, d) - 2 ** 14 * (b + k + off)))
            # from the decade's start to the next one, the code is base .. last (clamped)
            assert Y(start[d], d) >> 14 == b + off and Y(start[d], d) % 2 ** 14 > 160
            nxt = T[b + cnt] if b + cnt < K else np.float32(1)
            assert Y(nxt, d) < 2 ** 22
        lo = np.zeros(32, np.int32)
        split = np.full(32, np.inf, np.float32)
        for e in range(32):
            low = 0.0 if e == 0 else 2.0 ** (e + 96 - 127)
            high = 2.0 ** (e + 96 - 126)
            lo[e] = int(np.searchsorted(start[:len(groups)], np.float32(low), side="right")) - 1
            inside = start[(start > low) & (start < high)]
            if inside.size > 1:
                raise AssertionError("two decade starts in one binade")
            if inside.size:
                split[e] = inside[0]
        # no decade start within 64 float32 steps of a power of two: an estimate within
        # NEAR_STEPS of a start is in the start's binade, where split holds it
        for s0 in start[1:len(groups)]:
            bits = int(np.float32(s0).view(np.int32))
            assert min(bits & 0x7fffff, 0x800000 - (bits & 0x7fffff)) > 64
        # every |x| below 2**-31 (e = 0) is in the zero decade
        assert lo[0] == 0 and start[1] > 2.0 ** -31
        self.window = 1 << int(np.ceil(np.log2(2 * far + 2)))
        assert self.window <= 64
        self.dec = np.concatenate([cst, inv, split]).astype(np.float32)
        self.deci = np.concatenate([(0x4B000000 >> 14) + last + off, base, lo]).astype(np.int32)
        self.near = self.NEAR_STEPS + 1     # |bits(|x'|) - bits(split)| < near: flagged


@functools.lru_cache(maxsize=2)
def _codec(signed):
    return _Codec(signed)


def encode(x, signed=True):
    """Codes of float32 values x (already divided by their absmax): the index of the nearest
    map entry, ties to the entry of smaller magnitude; NaN encodes as 0 does. Exact (a binary
    search over the decision thresholds; the compiled encoder agrees bit for bit)."""
    c = _codec(bool(signed))
    x = np.asarray(x, dtype=np.float32)
    x = np.where(np.isnan(x), np.float32(0), x)
    return np.searchsorted(c.thr[:255], x, side="right").astype(np.uint8)


def _nblocks(n):
    return -(-n // BLOCK)


def _blocks(x):
    """x (float32, flat) padded with zeros to whole blocks, as (nblocks, BLOCK)."""
    n = x.size
    nb = _nblocks(n)
    if nb * BLOCK == n:
        return x.reshape(nb, BLOCK)
    out = np.zeros(nb * BLOCK, dtype=np.float32)
    out[:n] = x
    return out.reshape(nb, BLOCK)


def _quantize_into(x, codes, absmax, signed):
    """numpy twin of lrcore_q8_encode_block over every block of x (float32, flat)."""
    b = _blocks(x)
    with np.errstate(all="ignore"):
        am = np.max(np.abs(b), axis=1)          # NaN if any NaN, as the C loop
        q = b / am[:, None]                     # float32 division; 0/0 -> NaN -> code of 0
    codes[...] = encode(q, signed).reshape(-1)[:x.size]
    absmax[...] = am


def _dequantize(codes, absmax, signed):
    """numpy twin of lrcore_q8_decode_block: map[code] * absmax in float32."""
    m = _codec(bool(signed)).map
    with np.errstate(all="ignore"):
        return m[codes] * np.repeat(absmax, BLOCK)[:codes.size]


class QuantizedState:
    """One 8-bit state buffer: `codes` (uint8, one per element), `absmax` (float32, one per
    block of BLOCK elements), `signed` (which map). Values are map[code] * absmax."""

    __slots__ = ("codes", "absmax", "signed")

    def __init__(self, codes, absmax, signed):
        if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8 or codes.ndim != 1:
            raise TypeError(f"QuantizedState: codes must be a 1-d numpy.ndarray of uint8, got "
                            f"{_describe(codes)}")
        if not isinstance(absmax, np.ndarray) or absmax.dtype != np.float32 or absmax.ndim != 1:
            raise TypeError(f"QuantizedState: absmax must be a 1-d numpy.ndarray of float32, "
                            f"got {_describe(absmax)}")
        if absmax.size != _nblocks(codes.size):
            raise ValueError(f"QuantizedState: absmax must have ceil({codes.size} / {BLOCK}) = "
                             f"{_nblocks(codes.size)} elements for {codes.size} codes, got "
                             f"{absmax.size}")
        self.codes, self.absmax, self.signed = codes, absmax, bool(signed)

    @classmethod
    def zeros(cls, n, signed):
        """n zeros: every code the map's 0, every absmax 0."""
        c = _codec(bool(signed))
        return cls(np.full(n, c.zero_code, dtype=np.uint8),
                   np.zeros(_nblocks(n), dtype=np.float32), signed)

    @classmethod
    def from_float(cls, x, signed):
        """Quantize float32 values (any shape, flattened)."""
        codes, absmax = quantize(x, signed)
        return cls(codes, absmax, signed)

    @property
    def size(self):
        return self.codes.size

    @property
    def nbytes(self):
        return self.codes.nbytes + self.absmax.nbytes

    def dequantize(self):
        """The values as a new float32 array."""
        return dequantize(self.codes, self.absmax, self.signed)

    def copy(self):
        return QuantizedState(self.codes.copy(), self.absmax.copy(), self.signed)

    def __repr__(self):
        return (f"QuantizedState(size={self.size}, signed={self.signed}, "
                f"nbytes={self.nbytes})")


def _describe(x):
    if isinstance(x, np.ndarray):
        return f"{x.ndim}-d array of {x.dtype}"
    return type(x).__name__


def quantize(x, signed=True):
    """(codes, absmax) of float32 values x (flattened): per block of BLOCK values, absmax =
    max |v| (NaN if a value is NaN) and codes = encode(v / absmax). Compiled (lrcore._q8) on
    the native backend, numpy on the python one; the two agree bit for bit."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"quantize(): x must be float32, got {x.dtype}")
    x = np.ascontiguousarray(x).reshape(-1)
    codes = np.empty(x.size, dtype=np.uint8)
    absmax = np.empty(_nblocks(x.size), dtype=np.float32)
    from . import backend
    if backend.name == "python":
        _quantize_into(x, codes, absmax, signed)
    else:
        _native_code(False, x, codes, absmax, signed)
    return codes, absmax


def _native_code(decode, values, codes, absmax, signed, level=None, num_threads=None):
    from . import _q8, backend
    _q8.code(decode, _isa_level() if level is None else level,
             num_threads or backend.default_threads(), values, codes, absmax,
             _codec(bool(signed)))


def dequantize(codes, absmax, signed=True):
    """float32 values map[code] * absmax of its block."""
    codes = np.asarray(codes)
    absmax = np.asarray(absmax)
    if codes.dtype != np.uint8:
        raise TypeError(f"dequantize(): codes must be uint8, got {codes.dtype}")
    if absmax.dtype != np.float32:
        raise TypeError(f"dequantize(): absmax must be float32, got {absmax.dtype}")
    codes = codes.reshape(-1)
    if absmax.size != _nblocks(codes.size):
        raise ValueError(f"dequantize(): absmax must have {_nblocks(codes.size)} elements for "
                         f"{codes.size} codes, got {absmax.size}")
    return _dequantize(codes, absmax.reshape(-1), signed)


def state_nbytes(n, state_dtype="int8", nstates=2):
    """Bytes of `nstates` state buffers of n elements: 4 n each as float32; as int8, n codes
    plus 4 ceil(n / BLOCK) absmax bytes each (float32 below MIN_ELEMENTS)."""
    if state_dtype == "float32" or n < MIN_ELEMENTS:
        return 4 * n * nstates
    if state_dtype != "int8":
        raise ValueError(f"state_nbytes(): state_dtype must be 'int8' or 'float32', got "
                         f"{state_dtype!r}")
    return (n + 4 * _nblocks(n)) * nstates


# ---------------------------------------------------------------------------
# Adam / AdamW over 8-bit moments
# ---------------------------------------------------------------------------

_ADAM = RULES["adam"]

def _check_buffer(fn, name, a, n, writeable, dtype_checked=False):
    if not dtype_checked and (not isinstance(a, np.ndarray) or a.dtype != np.float32):
        raise TypeError(f"{fn}(): {name} must be a numpy.ndarray of float32, got {_describe(a)}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{fn}(): {name} must be C-contiguous")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{fn}(): {name} must be writeable")
    if n is not None and a.size != n:
        raise ValueError(f"{fn}(): {name} must have {n} elements (as param), got {a.size}")


def _check_state(fn, name, s, n, signed):
    if not isinstance(s, QuantizedState):
        raise TypeError(f"{fn}(): {name} must be a lrcore.quantization.QuantizedState, got "
                        f"{type(s).__name__}")
    if s.signed != signed:
        raise ValueError(f"{fn}(): {name} must use the {'signed' if signed else 'unsigned'} map")
    if s.codes.size != n:
        raise ValueError(f"{fn}(): {name} must have {n} codes (as param), got {s.codes.size}")
    if s.absmax.size != _nblocks(n):
        raise ValueError(f"{fn}(): {name}.absmax must have {_nblocks(n)} elements, got "
                         f"{s.absmax.size}")
    for part, a in (("codes", s.codes), ("absmax", s.absmax)):
        if not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"{fn}(): {name}.{part} must be C-contiguous and writeable")


# ---------------------------------------------------------------------------
# One step of a rule with 8-bit states
# ---------------------------------------------------------------------------

#: The rules whose states may be kept in 8 bits: rule -> {state name: signed map?}, from the
#: table (lrcore.rules, State.int8). A state
#: listed here may be a QuantizedState (signed: first-moment-like, values of either sign;
#: unsigned: second-moment-like, values >= 0) or a float32 array; the others stay float32.
#: Not listed (README, "8-bit optimizer state"): adagrad (its sum only grows, and once a
#: step's g*g is below half a code step, 0.35%..3.5% of the value, it rounds away: the sum
#: and with it the learning-rate decay stop after some hundred steps), adadelta (both states
#: sit near eps, 1e-6, where the map's lowest decade has 7% steps, and the ratio of the two
#: feeds back into acc_delta every step), adamax (exp_inf is the denominator itself, not its
#: square root, so a code's relative error passes to the step undamped). RMSprop's
#: centered variant is refused: square_avg - grad_avg**2 of two independently rounded
#: states can fall below zero.
INT8_RULES = {row.name: {st.name: st.int8 == "signed" for st in row.states if st.int8}
              for row in RULES.values() if any(st.int8 for st in row.states)}


def _is_bf16(a):
    bf16 = _lowp().bfloat16
    return bf16 is not None and a.dtype == bf16


def _check_pg(fn, name, a, n, writeable):
    """param / grad: float32 or bfloat16, C-contiguous (param writeable), n elements."""
    if not isinstance(a, np.ndarray) or not (a.dtype == np.float32 or _is_bf16(a)):
        raise TypeError(f"{fn}(): {name} must be a numpy.ndarray of float32 or bfloat16, got "
                        f"{_describe(a)}")
    _check_buffer(fn, name, a.view(np.float32) if a.dtype.itemsize == 4 else a, n, writeable,
                  dtype_checked=True)


@functools.lru_cache(maxsize=None)
def _rule_info(name):
    """Per preset name, what step() checks against, derived once from the table: the row,
    the preset, the public hyperparameter names with their defaults (None: required), and
    per state (name, kind, switch): kind 0 always present, 1 present with an option
    (amsgrad, centered: the caller decides), 2 present when hyperparameter `switch` > 0."""
    from . import rules
    pre = rules.preset(name)                    # ValueError naming the choices
    row = RULES[pre.rule]
    options = {o.name for o in row.options}
    states = tuple((st.name, 0 if st.when is None else (1 if st.when in options else 2),
                    st.when) for st in row.states)
    defaults = tuple((h.name, h.default, h.default is None
                      and (row.name, h.name) not in _validate.DERIVED)
                     for h in row.public_hypers)
    return row, pre, frozenset(h for h, _, _ in defaults), defaults, states


def _step_args(fn, rule, param, grad, states, step, rounding, seed, index_offset, num_threads,
               hp, label="states[{!r}]"):
    """Check every argument of step() (nothing is modified here); returns (rule row, the
    states in kernel order: None, float32 array or QuantizedState, the complete checked
    hyperparameters, rounding, seed, index_offset, threads)."""
    if not isinstance(rule, str):
        raise TypeError(f"{fn}(): rule must be a str, got {type(rule).__name__}")
    row, pre, public, defaults, specs = _rule_info(rule)
    if row.name not in INT8_RULES:
        raise ValueError(f"{fn}(): rule {rule!r} has no 8-bit state; rules with 8-bit state: "
                         f"{', '.join(INT8_RULES)}")
    _check_pg(fn, "param", param, None, True)
    n = param.size
    _check_pg(fn, "grad", grad, n, False)
    if not isinstance(states, dict):
        raise TypeError(f"{fn}(): states must be a dict of state name -> float32 array or "
                        f"QuantizedState, got {type(states).__name__}")
    if len(states) > sum(1 for name, _, _ in specs if name in states):
        extra = sorted(set(states) - {name for name, _, _ in specs}, key=str)
        raise ValueError(f"{fn}(): {rule} has no state {extra[0]!r}; its states: "
                         f"{', '.join(name for name, _, _ in specs)}")
    if not public.issuperset(hp):
        unknown = sorted(set(hp) - public, key=str)
        raise TypeError(f"{fn}(): unexpected hyperparameter {unknown[0]!r} for {rule}")
    full = dict(pre.defaults)
    full.update(hp)
    for k, x in pre.fixed.items():
        if k in hp and bool(hp[k]) != bool(x):
            raise ValueError(f"{fn}(): {rule} fixes {k}={x!r}, got {hp[k]!r}")
        full[k] = x
    full["step"] = step
    for name, default, required in defaults:
        if name not in full:
            if required:
                raise TypeError(f"{fn}(): missing hyperparameter {name!r} of {rule}")
            full[name] = default
    _validate.check_hypers(row, full, fn=fn)
    kernel_states, int8 = [], INT8_RULES[row.name]
    bufs = [param, grad]
    for name, kind, switch in specs:
        x = states.get(name)
        need = kind == 0 or (kind == 1 and x is not None) or (
            kind == 2 and (full[switch] or 0.0) > 0.0)
        if need and x is None:
            raise ValueError(f"{fn}(): states must hold {name!r} for these hyperparameters")
        if not need and x is not None:
            raise ValueError(f"{fn}(): states holds {name!r}, but {switch}="
                             f"{full[switch]!r} does not use it")
        if isinstance(x, QuantizedState):
            if name not in int8:
                raise ValueError(f"{fn}(): {name!r} of {rule} cannot be 8-bit (8-bit states "
                                 f"of {rule}: {', '.join(int8)})")
            _check_state(fn, label.format(name), x, n, int8[name])
            bufs += [x.codes, x.absmax]
        elif x is not None:
            _check_buffer(fn, label.format(name), x, n, True)
            bufs.append(x)
        kernel_states.append(x)
    if row.name == "rmsprop" and states.get("grad_avg") is not None and any(
            isinstance(x, QuantizedState) for x in kernel_states):
        raise ValueError(f"{fn}(): centered RMSprop (grad_avg) cannot keep 8-bit state: "
                         f"square_avg - grad_avg**2 of rounded states can fall below 0")
    # contiguous buffers: overlapping bounds == shared memory (empty ones share nothing)
    spans = sorted(_validate.extent(a) for a in bufs if a.nbytes)
    if any(b[0] < a[1] for a, b in zip(spans, spans[1:])):
        raise ValueError(f"{fn}(): param, grad and the states must not share memory")
    if rounding != "nearest":
        _lowp().check_rounding(fn, rounding)
    if type(seed) is not int or seed != 0:
        seed = _lowp().check_seed(fn, seed)
    if index_offset != 0 or type(index_offset) is not int:
        index_offset = _lowp().check_index_offset(fn, index_offset, n)
    return (row, kernel_states, full, rounding, seed, index_offset,
            _validate.threads(fn, num_threads))


def _lowp():
    from . import lowp
    return lowp


def _twin(fn, rule, param, grad, states, step, rounding, seed, index_offset, num_threads, hp,
          label="states[{!r}]"):
    from . import lowp, reference
    row, st, hp, rounding, seed, index_offset, _ = _step_args(
        fn, rule, param, grad, states, step, rounding, seed, index_offset, num_threads, hp,
        label)
    p = param.reshape(-1)
    p32 = p if p.dtype == np.float32 else lowp.widen(p)
    g32 = lowp.widen(grad.reshape(-1)) if _is_bf16(grad) else grad.reshape(-1)
    vals = [x.dequantize() if isinstance(x, QuantizedState) else
            (None if x is None else x.reshape(-1)) for x in st]
    getattr(reference, row.name)(p32, g32, *vals, **hp)
    for x, v in zip(st, vals):
        if isinstance(x, QuantizedState):
            _quantize_into(v, x.codes, x.absmax, x.signed)
    if p32 is not p:
        p.view(np.uint16)[...] = lowp.round_to(p32, p.dtype, rounding, seed, hp["step"], 0,
                                               index_offset).view(np.uint16)


def _native(fn, rule, param, grad, states, step, rounding, seed, index_offset, num_threads,
            hp, label="states[{!r}]"):
    from . import backend
    if backend.name == "python":
        return _twin(fn, rule, param, grad, states, step, rounding, seed, index_offset,
                     num_threads, hp, label)
    row, st, hp, rounding, seed, index_offset, nt = _step_args(
        fn, rule, param, grad, states, step, rounding, seed, index_offset, num_threads, hp,
        label)
    _q8_step(row, param, grad, st, hp, rounding, seed, index_offset, nt)


def _q8_step(row, param, grad, st, hp, rounding, seed, index_offset, num_threads):
    """The compiled 8-bit step on checked arguments: `st` the states in kernel order (None,
    float32 array or QuantizedState), `hp` every hyperparameter of `row`, step included."""
    from . import _q8, backend
    cst = [(x.codes, x.absmax, 0 if x.signed else 1) if isinstance(x, QuantizedState) else
           (None if x is None else x.reshape(-1)) for x in st]
    _q8.step(_isa_level(), num_threads or backend.default_threads(), row.kind,
             param.reshape(-1), grad.reshape(-1), cst, _hp_struct(row.name, hp),
             (_codec(True), _codec(False)), rounding == "stochastic", seed, int(hp["step"]),
             index_offset)


_CTYPES = {"double": "d", "int64": "q", "int": "i"}


@functools.lru_cache(maxsize=None)
def _hp_layout(rule):
    """(struct.Struct, field names) of the C struct lrcore_<rule>_hp, from the compiled
    core's field descriptors (csrc/jobs.h): native layout, offsets as C has them."""
    import struct
    from . import backend
    fields, _ = backend.core().hp_fields(rule)
    fmt, pos = "=", 0
    for name, off, t in fields:
        fmt += "x" * (off - pos) + _CTYPES[t]
        pos = off + struct.calcsize("=" + _CTYPES[t])
    return struct.Struct(fmt), tuple(name for name, _, _ in fields)


def _hp_struct(rule, hp):
    """The checked hyperparameters as the bytes of lrcore_<rule>_hp (grad_scale 1)."""
    layout, names = _hp_layout(rule)
    return layout.pack(*[1.0 if k == "grad_scale" else hp[k] for k in names])


def step_checked(rule, param, grad, states, hp, rounding, seed, index_offset, num_threads):
    """`step` without its checks, for a caller that has made them (lrcore.optim's per-param
    path: layouts, sizes and memory at construction and every step, every hyperparameter
    before the first param changes); they cost ~40 us per call. states: the rule's states
    the step uses, by name; hp: every hyperparameter of `rule` by name, step included."""
    from . import backend
    if backend.name == "python":
        hp = dict(hp)
        step = hp.pop("step")
        return _twin("step", rule, param, grad, states, step, rounding, seed, index_offset,
                     num_threads, hp)
    row, pre, _, _, specs = _rule_info(rule)
    full = dict(pre.defaults)
    full.update(hp)
    full.update(pre.fixed)
    _q8_step(row, param, grad, [states.get(name) for name, _, _ in specs], full, rounding,
             seed, index_offset, num_threads)


def step_reference(rule, param, grad, states, *, step, rounding="nearest", seed=0,
                   index_offset=0, num_threads=None, **hp):
    """numpy twin of `step`: widen param and grad to float32, decode the 8-bit states, run
    lrcore.reference's float32 rule, encode the states (per block: absmax, exact nearest
    codes) and round a bfloat16 param back (lrcore.lowp.round_to, buffer 0); bit for bit
    the compiled kernel."""
    _twin("step_reference", rule, param, grad, states, step, rounding, seed, index_offset,
          num_threads, hp)


def step(rule, param, grad, states, *, step, rounding="nearest", seed=0, index_offset=0,
         num_threads=None, **hp):
    """One step of update rule `rule` (a name of lrcore.rules.PRESETS whose rule is in
    INT8_RULES: adam, adamw, nadam, radam, sgd, rmsprop, lion) in place, with 8-bit states.

    param, grad: numpy arrays of n elements, float32 or bfloat16 (ml_dtypes); states: the
    rule's present states by name (lrcore.rules: exp_avg, exp_avg_sq, max_exp_avg_sq for
    AMSGrad, ...), each a float32 array or, if INT8_RULES lists it, a QuantizedState of the
    listed map. hp: the rule's hyperparameters (lr, ...), as lrcore.kernels.<rule> takes them.
    Per block of BLOCK elements: decode the 8-bit states, run the rule's float32 update of
    lrcore.kernels, absmax = max |value|, encode (exact nearest codes, ties towards zero).
    A bfloat16 param is rounded back by `rounding` ('nearest' or 'stochastic': the random
    stream of lrcore.lowp, buffer 0, element index index_offset + i, keyed by seed and step).
    The result does not depend on num_threads or the instruction set, and equals
    `step_reference` bit for bit. Bad input raises before anything is modified.
    """
    _native("step", rule, param, grad, states, step, rounding, seed, index_offset,
            num_threads, hp)


def _adam_states(exp_avg, exp_avg_sq, max_exp_avg_sq):
    d = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    if max_exp_avg_sq is not None:
        d["max_exp_avg_sq"] = max_exp_avg_sq
    return d


def _adam8_check(fn, exp_avg, exp_avg_sq, max_exp_avg_sq):
    for name, s in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq),
                    ("max_exp_avg_sq", max_exp_avg_sq)):
        if s is not None and not isinstance(s, QuantizedState):
            raise TypeError(f"{fn}(): {name} must be a lrcore.quantization.QuantizedState, "
                            f"got {type(s).__name__}")


def adam8_reference(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, lr, step,
                    num_threads=None, **hp):
    """numpy twin of `adam8` (step_reference('adam', ...)); bit for bit the compiled kernel."""
    _adam8_check("adam8_reference", exp_avg, exp_avg_sq, max_exp_avg_sq)
    _twin("adam8_reference", "adam", param, grad,
          _adam_states(exp_avg, exp_avg_sq, max_exp_avg_sq), step, "nearest", 0, 0,
          num_threads, dict(hp, lr=lr), "{}")


def adam8(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, lr, step, beta1=0.9,
          beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
          maximize=False, num_threads=None):
    """One Adam / AdamW / AMSGrad step with 8-bit moments, in place: step('adam', ...).

    param, grad: float32 (or bfloat16) arrays of n elements; exp_avg: QuantizedState (signed
    map); exp_avg_sq and max_exp_avg_sq (AMSGrad, optional): QuantizedState (unsigned map).
    For each block of BLOCK elements: decode the moments, apply lrcore.kernels.adam's float32
    update (same hyperparameters and ranges), absmax = max |value| of the block, encode.
    The result does not depend on num_threads or the instruction set, and equals
    `adam8_reference` bit for bit.
    """
    _adam8_check("adam8", exp_avg, exp_avg_sq, max_exp_avg_sq)
    hp = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": weight_decay,
          "decoupled_weight_decay": decoupled_weight_decay, "maximize": maximize}
    _native("adam8", "adam", param, grad, _adam_states(exp_avg, exp_avg_sq, max_exp_avg_sq),
            step, "nearest", 0, 0, num_threads, hp, "{}")


_LEVELS = {"baseline": 0, "avx2": 1, "avx512": 2}


def _isa_level():
    from . import backend
    return _LEVELS[backend.isa()]


# ---------------------------------------------------------------------------
# An optimizer over 8-bit state
# ---------------------------------------------------------------------------

class Adam8:
    """Adam / AdamW / AMSGrad over numpy float32 params with 8-bit moments.

    Params of `min_elements` (default MIN_ELEMENTS) elements or more keep exp_avg (signed map), exp_avg_sq and
    max_exp_avg_sq (unsigned map) as QuantizedState and are stepped by `adam8`; smaller
    params keep float32 moments and are stepped by lrcore.kernels.adam, as bitsandbytes and
    torchao do. Hyperparameters are numbers (one group). `state_dict()` holds codes and absmax
    (copies); `load_state_dict` checks every buffer's dtype and size before changing anything.

    The full optimizer is `lrcore.optim.Adam` / `AdamW` with `state_dtype="int8"` (parameter
    groups, schedules, bfloat16 params, clipping, checkpoint files, lrcore.torch, and every
    rule of INT8_RULES); its params follow this class's bit for bit
    (tests/test_optim_int8.py). Adam8 stays as the minimal standalone form, with its own
    state-dict layout ({'step', 'amsgrad', 'state'}, 8-bit buffers as {'codes', 'absmax'}).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False, amsgrad=False, maximize=False,
                 num_threads=None, min_elements=MIN_ELEMENTS):
        params = [params] if isinstance(params, np.ndarray) else list(params)
        if not params:
            raise ValueError("Adam8: params is empty")
        for i, p in enumerate(params):
            if not isinstance(p, np.ndarray) or p.dtype != np.float32:
                raise TypeError(f"Adam8: params[{i}] must be a numpy.ndarray of float32, got "
                                f"{_describe(p)}")
            if not p.flags.c_contiguous or not p.flags.writeable:
                raise ValueError(f"Adam8: params[{i}] must be C-contiguous and writeable")
        from . import lowp
        lowp.separate("Adam8", [(f"params[{i}]", p) for i, p in enumerate(params)],
                      "every parameter")
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"Adam8: betas must be a pair (beta1, beta2), got "
                            f"{betas!r}") from None
        if num_threads is not None and (isinstance(num_threads, (bool, np.bool_)) or
                                        not isinstance(num_threads, numbers.Integral) or
                                        num_threads < 1):
            raise ValueError(f"Adam8: num_threads must be an integer >= 1 or None, got "
                             f"{num_threads!r}")
        if isinstance(min_elements, (bool, np.bool_)) or \
                not isinstance(min_elements, numbers.Integral):
            raise TypeError(f"Adam8: min_elements must be an integer >= 0, got "
                            f"{min_elements!r}")
        if min_elements < 0:
            raise ValueError(f"Adam8: min_elements must be an integer >= 0, got "
                             f"{min_elements!r}")
        self.hp = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps,
                   "weight_decay": weight_decay,
                   "decoupled_weight_decay": bool(decoupled_weight_decay),
                   "maximize": bool(maximize)}
        _validate.check_hypers(_ADAM, dict(self.hp, step=1), fn="Adam8")
        self.amsgrad = bool(amsgrad)
        self.num_threads = num_threads
        self.min_elements = int(min_elements)
        self.params = params
        self.step_count = 0
        self.state = [self._zeros(p.size) for p in params]

    def _zeros(self, n):
        k = 3 if self.amsgrad else 2
        if n < self.min_elements:
            return [np.zeros(n, np.float32) for _ in range(k)]
        return [QuantizedState.zeros(n, True)] + [QuantizedState.zeros(n, False)
                                                   for _ in range(k - 1)]

    def state_nbytes(self):
        """Bytes of every state buffer (codes + absmax, or float32)."""
        return sum(s.nbytes for st in self.state for s in st)

    def step(self, grads):
        """One step; grads: float32 arrays, one per param, of the same sizes."""
        grads = [grads] if isinstance(grads, np.ndarray) else list(grads)
        if len(grads) != len(self.params):
            raise ValueError(f"Adam8.step(): {len(grads)} grads for {len(self.params)} params")
        for i, (p, g) in enumerate(zip(self.params, grads)):
            _check_buffer("Adam8.step", f"grads[{i}]", g, p.size, False)
        # every param still writeable, and no grad sharing memory with any param, before
        # the first param is stepped (a refusal by adam8() at a later param would leave the
        # step half applied)
        for i, p in enumerate(self.params):
            if not p.flags.writeable:
                raise ValueError(f"Adam8.step(): params[{i}] is read-only; it must be "
                                 f"writeable (it is updated in place)")
        for i, g in enumerate(grads):
            for k, p in enumerate(self.params):
                if np.may_share_memory(g, p):
                    raise ValueError(f"Adam8.step(): grads[{i}] shares memory with "
                                     f"params[{k}]; gradients must be separate arrays")
        t = self.step_count + 1
        for p, g, st in zip(self.params, grads, self.state):
            vm = st[2] if self.amsgrad else None
            if isinstance(st[0], QuantizedState):
                adam8(p.reshape(-1), g.reshape(-1), st[0], st[1], vm, step=t,
                      num_threads=self.num_threads, **self.hp)
            else:
                from . import kernels
                kernels.adam(p.reshape(-1), g.reshape(-1), st[0], st[1], vm, step=t,
                             num_threads=self.num_threads, **self.hp)
        self.step_count = t

    _NAMES = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def state_dict(self):
        """{'step': int, 'amsgrad': bool, 'state': [{name: array or {'codes', 'absmax'}}]}."""
        out = []
        for st in self.state:
            d = {}
            for name, s in zip(self._NAMES, st):
                d[name] = ({"codes": s.codes.copy(), "absmax": s.absmax.copy()}
                           if isinstance(s, QuantizedState) else s.copy())
            out.append(d)
        return {"step": self.step_count, "amsgrad": self.amsgrad, "state": out}

    def load_state_dict(self, sd):
        """Restore bit for bit; every buffer is checked first, nothing changes on an error."""
        if not isinstance(sd, dict) or set(sd) != {"step", "amsgrad", "state"}:
            raise ValueError("Adam8.load_state_dict(): expected a dict with keys 'step', "
                             "'amsgrad', 'state'")
        if bool(sd["amsgrad"]) != self.amsgrad:
            raise ValueError(f"Adam8.load_state_dict(): amsgrad={sd['amsgrad']} in the state "
                             f"dict, {self.amsgrad} here")
        step = sd["step"]
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0 \
                or step >= STEP_MAX:
            raise ValueError(f"Adam8.load_state_dict(): step must be an integer in "
                             f"[0, 2**53), got {step!r}")
        if len(sd["state"]) != len(self.params):
            raise ValueError(f"Adam8.load_state_dict(): {len(sd['state'])} states for "
                             f"{len(self.params)} params")
        new = []
        for i, (d, st) in enumerate(zip(sd["state"], self.state)):
            names = self._NAMES[:len(st)]
            if set(d) != set(names):
                raise ValueError(f"Adam8.load_state_dict(): state[{i}] must have keys "
                                 f"{list(names)}, got {sorted(d)}")
            row = []
            for name, cur in zip(names, st):
                x, where = d[name], f"state[{i}][{name!r}]"
                if isinstance(cur, QuantizedState):
                    if not isinstance(x, dict) or set(x) != {"codes", "absmax"}:
                        raise ValueError(f"Adam8.load_state_dict(): {where} must be a dict "
                                         f"of 'codes' and 'absmax' (8-bit state)")
                    c, a = np.asarray(x["codes"]), np.asarray(x["absmax"])
                    if c.dtype != np.uint8 or c.size != cur.codes.size:
                        raise ValueError(f"Adam8.load_state_dict(): {where}['codes'] must be "
                                         f"{cur.codes.size} uint8 values, got {c.size} "
                                         f"{c.dtype}")
                    if a.dtype != np.float32 or a.size != cur.absmax.size:
                        raise ValueError(f"Adam8.load_state_dict(): {where}['absmax'] must be "
                                         f"{cur.absmax.size} float32 values, got {a.size} "
                                         f"{a.dtype}")
                    neg = np.flatnonzero(np.signbit(a) & ~np.isnan(a))
                    if neg.size:
                        raise ValueError(f"Adam8.load_state_dict(): {where}['absmax'] holds "
                                         f"{neg.size} negative value(s); an absmax is a "
                                         f"block's largest magnitude, >= 0")
                    row.append(QuantizedState(c.reshape(-1).copy(), a.reshape(-1).copy(),
                                              cur.signed))
                else:
                    x = np.asarray(x)
                    if x.dtype != np.float32 or x.size != cur.size:
                        raise ValueError(f"Adam8.load_state_dict(): {where} must be "
                                         f"{cur.size} float32 values, got {x.size} {x.dtype}")
                    row.append(x.reshape(-1).copy())
            new.append(row)
        self.state = new
        self.step_count = int(step)


# ---------------------------------------------------------------------------
# Converters: bitsandbytes' and torchao's 8-bit Adam state (blocks of 256, one float32
# absmax per block, the same dynamic maps: the same layout, codes copied unchanged)
# ---------------------------------------------------------------------------

def _numpy_of(fn, key, x, dtype):
    """A torch tensor's (or array's) values as a new flat numpy array of `dtype`."""
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if x.dtype != dtype:
        raise ValueError(f"{fn}(): {key} must be {np.dtype(dtype).name}, got {x.dtype}")
    return np.ascontiguousarray(x).reshape(-1).copy()


def _check_map(fn, key, qmap, signed):
    if not np.array_equal(_numpy_of(fn, key, qmap, np.float32).view(np.uint32),
                          dynamic_map(signed).view(np.uint32)):
        raise ValueError(f"{fn}(): {key} is not the dynamic map (signed={signed}); only the "
                         f"default maps convert")


def _state_of(fn, name, codes, absmax, signed):
    if absmax.size != _nblocks(codes.size):
        raise ValueError(f"{fn}(): {name} has {absmax.size} values for {codes.size} "
                         f"codes; expected blocks of {BLOCK} ({_nblocks(codes.size)} values)")
    return QuantizedState(codes, absmax, signed)


def _step_of(state):
    step = state.get("step", 0)
    return int(step.item() if hasattr(step, "item") else step)


def _shape_of(fn, shape, n):
    """A parameter's `shape` argument (None: flat) as a tuple of ints holding n elements;
    TypeError / ValueError naming `shape` otherwise."""
    if shape is None:
        return (n,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"{fn}(): shape must be a sequence of integers or None, got "
                        f"{shape!r}") from None
    if not all(isinstance(d, numbers.Integral) and not isinstance(d, (bool, np.bool_))
               for d in dims):
        raise TypeError(f"{fn}(): shape must be a sequence of integers or None, got "
                        f"{shape!r}")
    dims = tuple(int(d) for d in dims)
    if any(d < 0 for d in dims) or math.prod(dims) != n:
        raise ValueError(f"{fn}(): shape {dims} does not hold {n} elements")
    return dims


def to_bitsandbytes(exp_avg, exp_avg_sq, step, shape=None):
    """The per-parameter state of bitsandbytes' Adam8bit/AdamW8bit (blockwise), as its
    `optimizer.state[p]` holds it: torch tensors state1/absmax1/qmap1 (exp_avg, signed map),
    state2/absmax2/qmap2 (exp_avg_sq, unsigned map) and step (an int). shape: the
    parameter's shape (default: flat); bitsandbytes keeps state1 and state2 in the
    parameter's shape and cannot step a parameter that is not 1-D with flat ones. The codes
    and absmax are copied unchanged: bitsandbytes indexes the same map with the same
    blocks (of the flattened parameter)."""
    import torch
    fn = "to_bitsandbytes"
    _check_pair(fn, exp_avg, exp_avg_sq)
    shape = _shape_of(fn, shape, exp_avg.size)
    return {"step": int(step),
            "state1": torch.from_numpy(exp_avg.codes.copy()).view(shape),
            "absmax1": torch.from_numpy(exp_avg.absmax.copy()),
            "qmap1": torch.from_numpy(dynamic_map(True)),
            "state2": torch.from_numpy(exp_avg_sq.codes.copy()).view(shape),
            "absmax2": torch.from_numpy(exp_avg_sq.absmax.copy()),
            "qmap2": torch.from_numpy(dynamic_map(False))}


#: Where bitsandbytes' Optimizer8bit.state_dict() nests a param's state1/absmax1/qmap1/...
#: (its non-castable tensors, hidden from FSDP); `step` stays beside it.
_BNB_NESTED = "__bnb_optimizer_quant_state__"


def from_bitsandbytes(state):
    """(exp_avg, exp_avg_sq, step) from one parameter's bitsandbytes 8-bit Adam state: the
    live entry `optimizer.state[p]`, or the entry of its `state_dict()["state"]`, where
    bitsandbytes nests the tensors under '__bnb_optimizer_quant_state__' (they are read from
    there, as its load_state_dict does). The maps must be this module's and the absmax one
    per block of 256 (codes of any shape, read flat); anything else is a ValueError."""
    fn = "from_bitsandbytes"
    if not isinstance(state, Mapping):
        raise TypeError(f"{fn}(): state must be a dict (a bitsandbytes optimizer.state[p] or "
                        f"an entry of its state_dict()['state']), got {type(state).__name__}")
    if _BNB_NESTED in state:
        nested = state[_BNB_NESTED]
        if not isinstance(nested, Mapping):
            raise ValueError(f"{fn}(): state[{_BNB_NESTED!r}] must be a dict of state1, "
                             f"absmax1, ..., got {type(nested).__name__}")
        state = {**{k: v for k, v in state.items() if k != _BNB_NESTED}, **nested}
    for key in ("state1", "absmax1", "qmap1", "state2", "absmax2", "qmap2"):
        if key not in state:
            raise ValueError(f"{fn}(): no {key!r} in the state (blockwise 8-bit Adam state has "
                             f"state1, absmax1, qmap1, state2, absmax2, qmap2)")
    _check_map(fn, "qmap1", state["qmap1"], True)
    _check_map(fn, "qmap2", state["qmap2"], False)
    c1, c2 = (_numpy_of(fn, k, state[k], np.uint8) for k in ("state1", "state2"))
    if c1.size != c2.size:
        raise ValueError(f"{fn}(): state1 has {c1.size} codes, state2 {c2.size}")
    m = _state_of(fn, "absmax1", c1, _numpy_of(fn, "absmax1", state["absmax1"], np.float32),
                  True)
    v = _state_of(fn, "absmax2", c2, _numpy_of(fn, "absmax2", state["absmax2"], np.float32),
                  False)
    return m, v, _step_of(state)


_TORCHAO_STATES = {"exp_avg": True, "exp_avg_sq": False, "max_exp_avg_sq": False}


def to_torchao(states, step, shape=None):
    """One parameter's state as torchao.optim's Adam8bit/AdamW8bit keeps it: {'step': a
    float32 scalar tensor, 'exp_avg', 'exp_avg_sq'[, 'max_exp_avg_sq']: OptimState8bit}.
    states: {'exp_avg': QuantizedState (signed), 'exp_avg_sq' and optionally
    'max_exp_avg_sq': QuantizedState (unsigned)}, the form `step` takes; shape: the
    parameter's shape (default: flat). torchao keeps 8-bit state only for parameters whose
    size is a multiple of 256 (its scale is a plain view of blocks): other sizes are a
    ValueError. Codes and absmax (torchao's scale) are copied unchanged."""
    import torch
    from torchao.optim.subclass_8bit import OptimState8bit
    fn = "to_torchao"
    if not isinstance(states, dict) or not {"exp_avg", "exp_avg_sq"} <= set(states) \
            or not set(states) <= set(_TORCHAO_STATES):
        raise ValueError(f"{fn}(): states must be a dict of exp_avg, exp_avg_sq and "
                         f"optionally max_exp_avg_sq")
    n = None
    for name, s in states.items():
        if not isinstance(s, QuantizedState) or s.signed != _TORCHAO_STATES[name]:
            raise TypeError(f"{fn}(): {name} must be a QuantizedState with "
                            f"signed={_TORCHAO_STATES[name]}")
        if n is not None and s.size != n:
            raise ValueError(f"{fn}(): the states have different sizes")
        n = s.size
    if n % BLOCK:
        raise ValueError(f"{fn}(): torchao keeps 8-bit state only for sizes that are a "
                         f"multiple of {BLOCK}, got {n}")
    shape = _shape_of(fn, shape, n)
    out = {"step": torch.tensor(float(step))}
    for name, s in states.items():
        out[name] = OptimState8bit(torch.from_numpy(s.codes.copy()).view(shape),
                                   torch.from_numpy(s.absmax.copy()),
                                   torch.from_numpy(dynamic_map(s.signed)), s.signed)
    return out


def from_torchao(state):
    """(states, step) from one parameter's torchao 8-bit Adam state (optimizer.state[p]):
    states = {'exp_avg', 'exp_avg_sq'[, 'max_exp_avg_sq']: QuantizedState}, the form `step`
    takes. Each must be an OptimState8bit over this module's map with blocks of 256;
    anything else (a float32 state torchao keeps for small parameters, another map or block
    size) is a ValueError."""
    fn = "from_torchao"
    out = {}
    for name, signed in _TORCHAO_STATES.items():
        if name not in state:
            if name == "max_exp_avg_sq":
                continue
            raise ValueError(f"{fn}(): no {name!r} in the state")
        x = state[name]
        if not all(hasattr(x, a) for a in ("codes", "scale", "qmap", "signed")):
            raise ValueError(f"{fn}(): {name} is not a torchao OptimState8bit (torchao keeps "
                             f"float32 state for parameters under 4096 elements)")
        if bool(x.signed) != signed:
            raise ValueError(f"{fn}(): {name} must use the {'signed' if signed else 'unsigned'} "
                             f"map")
        _check_map(fn, f"{name}.qmap", x.qmap, signed)
        out[name] = _state_of(fn, f"{name}.scale", _numpy_of(fn, f"{name}.codes", x.codes,
                                                               np.uint8),
                              _numpy_of(fn, f"{name}.scale", x.scale, np.float32), signed)
    if len({s.size for s in out.values()}) > 1:
        raise ValueError(f"{fn}(): the states have different sizes")
    return out, _step_of(state)


def _check_pair(fn, exp_avg, exp_avg_sq):
    for name, s, signed in (("exp_avg", exp_avg, True), ("exp_avg_sq", exp_avg_sq, False)):
        if not isinstance(s, QuantizedState) or s.signed != signed:
            raise TypeError(f"{fn}(): {name} must be a QuantizedState with signed={signed}")
    if exp_avg.size != exp_avg_sq.size:
        raise ValueError(f"{fn}(): exp_avg has {exp_avg.size} elements, exp_avg_sq "
                         f"{exp_avg_sq.size}")
