"""`lrcore bench`: how fast each update rule runs here, against this machine's memory.

Prints one row per optimizer, dtype, size and thread count: milliseconds per step, GB/s,
the fraction of the bandwidth probe measured on the same buffers in the same run, and
the speed-up over the numpy implementation and over PyTorch (when installed).
"""
import sys

from .. import backend, bench
from . import CLIError, check_threads, thread_limit
from .paths import output_file

HELP = "benchmark every update rule against the memory bandwidth probe, numpy and torch"


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true",
                        help="2^20 and 2^22 float32 elements, few repeats (under 30 s)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    limit = thread_limit()
    parser.add_argument("--threads", default="1,2",
                        help="comma-separated thread counts to run" + (
                            f", each 1 to {limit} on this machine" if limit else "") +
                        " (default: 1,2)")
    parser.add_argument("--optimizer", action="append", metavar="NAME",
                        help="only this optimizer (repeatable): " + ", ".join(
                            label for label, _, _ in bench.BENCH_CASES))


def run(args):
    if backend.name != "native":
        raise CLIError("benchmarks need the compiled backend; unset LRCORE_BACKEND")
    try:
        threads = tuple(int(t) for t in args.threads.split(","))
    except ValueError:
        raise CLIError(f"--threads must be comma-separated integers, got {args.threads!r}") \
            from None
    check_threads("--threads", threads, repr(args.threads))
    if args.json is not None:
        output_file("--json", args.json)       # before minutes of measuring
    known = [label for label, _, _ in bench.BENCH_CASES]
    for name in args.optimizer or ():
        if name not in known:
            raise CLIError(f"unknown optimizer {name!r}; choose from {', '.join(known)}")
    info = bench.machine_info()
    print(f"lrcore {info['lrcore']} ({info['isa']}), numpy {info['numpy']}, "
          f"torch: {'yes' if bench.torch_available() else 'not installed'}", flush=True)

    def progress(row):
        print(f"  measured {row.optimizer} {row.dtype} {row.elements:,} x{row.threads}",
              file=sys.stderr, flush=True)
    rows = bench.run(quick=args.quick, threads=threads, optimizers=args.optimizer,
                     progress=progress if sys.stderr.isatty() else None)
    print(bench.format_table(rows))
    print("GB/s counts the bytes each step must read and write; 'of probe' divides by a "
          "read-modify-write probe with the same streams, measured in this run.")
    if args.json:
        bench.to_json(rows, args.json)
        print(f"wrote {args.json}")
    return 0
