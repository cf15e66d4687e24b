"""Helpers shared by the half-precision and 8-bit optimizer tests (test_optim_lowp.py,
test_optim_int8.py): the class of a case name, non-zero random data in a dtype, exact
widening to float32, and the raw bytes for bitwise comparisons."""
import numpy as np

from lrcore import lowp, optim


def case_class(case):
    """The lrcore.optim class named by a case such as "Adam-amsgrad"."""
    return getattr(optim, case.split("-")[0])


def rand(rng, n, dtype):
    """n values of magnitude 0.5..1.5, either sign, rounded from float32 to `dtype`."""
    x = rng.uniform(0.5, 1.5, n) * rng.choice([-1.0, 1.0], n)
    return x.astype(np.float32).astype(dtype)


def widen(a):
    """`a` as float32: bfloat16/float16 widened exactly (lrcore.lowp), others converted."""
    return lowp.widen(a.reshape(-1)).reshape(a.shape) if a.dtype.itemsize == 2 \
        else a.astype(np.float32)


def bits(a):
    """The bytes of `a`, for comparisons bit for bit."""
    return a.view(np.uint8)


class Float32Twin:
    """The contract both test files check an optimizer against: keep the params (and, as the
    subclass stores them, the states) as the optimizer under test does; for each step widen
    them, run one step of the float32 lrcore.optim class on them, and store the results back
    (subclasses: `_state_as_float32`, `_store`). `offsets`: each param's index_offset."""

    def __init__(self, cls, params, kw, rounding, seed):
        self.half = [p.copy() for p in params]
        self.p32 = [widen(p) for p in params]
        self.opt = cls(self.p32, **kw)
        self.rounding, self.seed = rounding, seed
        self.offsets = list(np.cumsum([0] + [p.size for p in params])[:-1])
        self.states = [dict() for _ in params]

    def step(self, grads):
        for p32, h in zip(self.p32, self.half):
            p32[...] = widen(h)
        sd = self.opt.state_dict()
        for i, st in enumerate(self.states):
            for name, s in st.items():
                sd["state"][i][name] = self._state_as_float32(s)
        self.opt.load_state_dict(sd)
        self.opt.step([widen(g) for g in grads])
        t = self.opt.step_count
        sd = self.opt.state_dict()
        for i, off in enumerate(self.offsets):
            self._store(i, off, t, sd["state"][i])

    def _state_as_float32(self, s):
        raise NotImplementedError

    def _store(self, i, off, t, state32):
        """Param i (self.p32[i]) and its float32 state after step t, into self.half[i] and
        self.states[i]."""
        raise NotImplementedError
