"""`lrcore info` (also plain `lrcore` or `python -m lrcore`): what is installed and in use,
then a short self-check of every compiled kernel against the numpy reference on every
instruction-set path."""
import sys

import numpy as np

from .. import kernels, reference
from ..registry import KERNEL_SPECS, call, make_state


def check_kernels(sizes=(1, 17, 1003), steps=3):
    """Run every kernel case on each size and step; return a list of failure strings."""
    failures = []
    for kspec in KERNEL_SPECS:
        for case in kspec.cases:
            for dtype in (np.float32, np.float64):
                tol = 16 * np.finfo(dtype).eps
                for n in sizes:
                    rng = np.random.default_rng(n)
                    p = rng.uniform(0.5, 1.5, n).astype(dtype)
                    st = make_state(kspec, case, p)
                    rp, rst = p.copy(), {k: v.copy() for k, v in st.items()}
                    for step in range(1, steps + 1):
                        g = rng.uniform(-1, 1, n).astype(dtype)
                        call(kernels, kspec, case, p, g, st, step)
                        call(reference, kspec, case, rp, g, rst, step)
                    if not np.allclose(p, rp, rtol=tol, atol=tol):
                        failures.append(f"{kspec.name}/{case.name} {np.dtype(dtype).name} n={n}")
    return failures


HELP = "versions, backend, instruction set, threads; kernel self-check (the default command)"


def add_arguments(parser):
    """`lrcore info` takes no options."""


def run(args=None, out=None):
    """Print the report and the self-check; exit code 1 if a kernel disagrees."""
    out = sys.stdout if out is None else out
    import lrcore
    print(f"lrcore {lrcore.__version__}", file=out)
    print(f"  backend:          {lrcore.backend()}", file=out)
    print(f"  instruction set:  {lrcore.isa()} (available: {', '.join(lrcore.available_isas())})",
          file=out)
    print(f"  threads:          {lrcore.num_threads()}", file=out)
    print(f"  include dir:      {lrcore.get_include()}", file=out)
    print(f"  numpy:            {np.__version__}", file=out)
    isas = lrcore.available_isas() if lrcore.backend() == "native" else ("numpy",)
    bad = []
    total = sum(len(k.cases) for k in KERNEL_SPECS) * 2
    for name in isas:
        if lrcore.backend() == "native":
            from .. import _core
            _core.set_isa(name)
        failures = check_kernels()
        bad += [f"[{name}] {f}" for f in failures]
        print(f"  self-check [{name}]: {total - len({f.rsplit(' n=', 1)[0] for f in failures})}"
              f"/{total} kernel cases agree with the reference", file=out)
    if lrcore.backend() == "native":
        from .. import _core
        _core.set_isa(None)
    if bad:
        print("SELF-CHECK FAILED:\n  " + "\n  ".join(bad), file=out)
        return 1
    print("self-check passed", file=out)
    return 0
