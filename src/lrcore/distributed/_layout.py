"""How a ShardedOptimizer cuts its parameters into ranks and buckets (pure arithmetic, no MPI).

Design: the params of each (parameter group, dtype) are laid end to end in one virtual flat
range [0, N) (nothing is copied: a position maps back to (param, element)). Every cut, between
ranks and between buckets, lies on the grid where the single-process sum of squares starts its
blocks (2**14 elements from the start of each param, plus each param's end), so a block is
always summed whole by one rank. Rank r owns [R_r, R_{r+1}), the grid point nearest to r*N/W:
no padding is stored; a rank's share differs from N/W by less than one block per group and
dtype. Each rank's range is cut into the same number of buckets, so the b-th collective of a
step means the same thing on every rank.

8-bit state (lrcore.quantization: blocks of BLOCK = 256 elements counted from each param's
start; params under MIN_ELEMENTS = 4096 elements keep float32 state): every cut inside a param
lies on the 2**14 grid, a multiple of 256, so a piece holds whole quantization blocks (only a
param's last block may be short, as in one process). With `min_tail` (MIN_ELEMENTS when the
state is 8-bit) a grid point that would leave fewer than min_tail elements after it in its
param is dropped, so every piece of a param of MIN_ELEMENTS or more elements has at least
MIN_ELEMENTS elements: the bucket's optimizer then quantizes exactly the pieces of the params
one process quantizes, block for block. (A grid block then reaches 2**14 + min_tail - 1
elements, and a rank's share may differ from N/W by as much.)
"""
import math

import numpy as np

SUMSQ_BLOCK = 1 << 14   # LRCORE_SUMSQ_BLOCK of csrc/runtime.c and reference._SUMSQ_BLOCK


class Piece:
    """Elements [start, stop) of param `index` (flat, C order)."""
    __slots__ = ("index", "start", "stop")

    def __init__(self, index, start, stop):
        self.index, self.start, self.stop = index, start, stop

    @property
    def size(self):
        return self.stop - self.start

    def __repr__(self):
        return f"Piece({self.index}, {self.start}, {self.stop})"


class Bucket:
    """One collective's worth of a (group, dtype) range: rank r's part is pieces[r]."""

    def __init__(self, group, dtype, number, pieces):
        self.group, self.dtype, self.number = group, dtype, number
        self.pieces = pieces                                   # [rank] -> [Piece]
        self.counts = [sum(p.size for p in ps) for ps in pieces]
        self.displs = [0]
        for c in self.counts[:-1]:
            self.displs.append(self.displs[-1] + c)
        self.size = sum(self.counts)


class Layout:
    """Ranks' ranges and buckets for params grouped as `group_of` (param index -> group).

    sizes: element count per param; dtypes: numpy dtype per param; world: W;
    bucket_elements: target elements per bucket (all ranks together); min_tail: see the
    module's docstring (0: every 2**14 grid point is a possible cut).
    """

    def __init__(self, sizes, dtypes, group_of, world, bucket_elements, min_tail=0):
        self.world = world
        self.sizes = list(sizes)
        # the single-process sum's block order: params in optimizer order, blocks in order
        self.block_base = [0]
        for n in self.sizes:
            self.block_base.append(self.block_base[-1] + -(-n // SUMSQ_BLOCK))
        self.nblocks = self.block_base[-1]
        self.ranges = []      # (group, dtype, [param indices], [R_0..R_W])
        self.buckets = []
        keys = []
        for i, (g, dt) in enumerate(zip(group_of, dtypes)):
            if (g, dt) not in keys:
                keys.append((g, dt))
        for g, dt in keys:
            members = [i for i, (gi, di) in enumerate(zip(group_of, dtypes)) if (gi, di) == (g, dt)]
            offsets = np.zeros(len(members) + 1, dtype=np.int64)
            offsets[1:] = np.cumsum([self.sizes[i] for i in members])
            total = int(offsets[-1])
            grid = np.unique(np.concatenate(
                [offsets] + [offsets[k] + _grid(self.sizes[i], min_tail)
                             for k, i in enumerate(members)]))
            cuts = [_snap(grid, total * r / world) for r in range(world + 1)]
            self.ranges.append((g, dt, members, cuts))
            nb = max(1, math.ceil(total / bucket_elements))
            chunk_cuts = []
            for r in range(world):
                lo, hi = cuts[r], cuts[r + 1]
                chunk_cuts.append([lo] + [min(hi, max(lo, _snap(grid, lo + (hi - lo) * k / nb)))
                                          for k in range(1, nb)] + [hi])
            for b in range(nb):
                pieces = [_pieces(members, offsets, chunk_cuts[r][b], chunk_cuts[r][b + 1])
                          for r in range(world)]
                self.buckets.append(Bucket(g, dt, b, pieces))

    def block_ids(self, rank):
        """Global block numbers (single-process order) that `rank` sums, in its bucket order."""
        out = []
        for bucket in self.buckets:
            for p in bucket.pieces[rank]:
                first = self.block_base[p.index] + p.start // SUMSQ_BLOCK
                out.extend(range(first, first + -(-p.size // SUMSQ_BLOCK)))
        return out

    def owned(self, rank):
        """Elements owned by `rank`, per (group, dtype) range."""
        return [cuts[rank + 1] - cuts[rank] for _, _, _, cuts in self.ranges]


def _grid(n, min_tail):
    """Cut points inside a param of n elements: 0 and every multiple of 2**14 below n that
    leaves at least min_tail elements after it."""
    at = np.arange(0, n, SUMSQ_BLOCK, dtype=np.int64)
    return at[(at == 0) | (n - at >= min_tail)]


def _snap(grid, target):
    """The grid point nearest to target (the lower one on a tie)."""
    k = int(np.searchsorted(grid, target))
    if k == 0:
        return int(grid[0])
    if k == len(grid):
        return int(grid[-1])
    lo, hi = int(grid[k - 1]), int(grid[k])
    return lo if target - lo <= hi - target else hi


def _pieces(members, offsets, lo, hi):
    """The pieces of params covering flat [lo, hi) (empty pieces dropped)."""
    out = []
    if hi <= lo:
        return out
    k = int(np.searchsorted(offsets, lo, side="right")) - 1
    while k < len(members) and offsets[k] < hi:
        a = max(lo, int(offsets[k])) - int(offsets[k])
        b = min(hi, int(offsets[k + 1])) - int(offsets[k])
        if b > a:
            out.append(Piece(members[k], a, b))
        k += 1
    return out


def block_sumsq(x, out):
    """Write into `out` the sum of squares of each 2**14-element block of the 1-D array x,
    in the compiled core's order (lrcore.h lrcore_sum_squares: in a block, 8 running double
    sums over i mod 8 added row by row, then combined pairwise), as reference.StepPlan does."""
    n = x.size
    nfull = n // SUMSQ_BLOCK
    step = 64   # blocks per pass: bounds the float64 temporary to 8 MiB
    for s in range(0, nfull, step):
        e = min(nfull, s + step)
        sq = x[s * SUMSQ_BLOCK:e * SUMSQ_BLOCK].astype(np.float64)
        np.multiply(sq, sq, out=sq)
        acc = np.add.reduce(sq.reshape(e - s, SUMSQ_BLOCK // 8, 8), axis=1)
        out[s:e] = ((acc[:, 0] + acc[:, 1]) + (acc[:, 2] + acc[:, 3])) + \
                   ((acc[:, 4] + acc[:, 5]) + (acc[:, 6] + acc[:, 7]))
    if n > nfull * SUMSQ_BLOCK:
        v = x[nfull * SUMSQ_BLOCK:].astype(np.float64)
        sq = v * v
        whole = sq.size - sq.size % 8
        acc = np.add.reduce(sq[:whole].reshape(-1, 8), axis=0) if whole else np.zeros(8)
        acc[:sq.size - whole] += sq[whole:]
        out[nfull] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
