"""`lrcore info` (also plain `lrcore` or `python -m lrcore`): what is installed and in use,
then a short self-check: every kernel case of the test registry (each loop variant), run a
few steps on the selected backend under every instruction set, must equal the numpy twin
bit for bit."""
import sys

import numpy as np

from .. import backend, reference
from ..registry import KERNEL_SPECS, call, make_state

HELP = "versions, backend, instruction set, threads; kernel self-check (the default command)"
SIZES = (1, 17, 1003)       # one element, a SIMD tail, several vectors and a tail
STEPS = 3


def _same(a, b):
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


def check_kernels(sizes=SIZES, steps=STEPS):
    """Run every kernel case on each size and dtype for `steps` steps on the selected
    backend and on the numpy twin; return the cases whose params or states differ in any
    bit, as 'rule/case dtype'."""
    failures = []
    for kspec in KERNEL_SPECS:
        for case in kspec.cases:
            for dtype in (np.float32, np.float64):
                for n in sizes:
                    rng = np.random.default_rng(n)
                    p = rng.uniform(0.5, 1.5, n).astype(dtype)
                    st = make_state(kspec, case, p)
                    rp, rst = p.copy(), {k: v.copy() for k, v in st.items()}
                    for step in range(1, steps + 1):
                        g = rng.uniform(-1, 1, n).astype(dtype)
                        call(backend.kernels, kspec, case, p, g, st, step)
                        call(reference, kspec, case, rp, g, rst, step)
                    if not (_same(p, rp) and all(_same(st[k], rst[k]) for k in st)):
                        failures.append(f"{kspec.name}/{case.name} {np.dtype(dtype).name}")
                        break
    return failures


def add_arguments(parser):
    """`lrcore info` takes no options."""


def run(args=None, out=None):
    """Print the report and the self-check; exit code 1 if a kernel disagrees."""
    out = sys.stdout if out is None else out
    import lrcore
    print(f"lrcore {lrcore.__version__}", file=out)
    print(f"  backend:          {backend.name}", file=out)
    print(f"  instruction set:  {backend.isa()} (available: "
          f"{', '.join(backend.available_isas())})", file=out)
    print(f"  threads:          {backend.default_threads()}", file=out)
    print(f"  include dir:      {lrcore.get_include()}", file=out)
    print(f"  numpy:            {np.__version__}", file=out)
    total = sum(len(k.cases) for k in KERNEL_SPECS) * 2     # (rule, loop variant) x dtype
    bad = []
    in_use = backend.isa()
    try:
        for isa in backend.available_isas():
            backend.set_isa(isa)
            failures = check_kernels()
            bad += [f"[{isa}] {f}" for f in failures]
            print(f"  self-check [{isa}]: {total - len(failures)}/{total} kernel cases equal "
                  f"the numpy twin bit for bit", file=out)
    finally:
        backend.set_isa(in_use)
    if bad:
        print("SELF-CHECK FAILED:\n  " + "\n  ".join(bad), file=out)
        return 1
    print("self-check passed", file=out)
    return 0
