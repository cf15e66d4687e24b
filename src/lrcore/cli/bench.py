"""`lrcore bench`: how fast each update rule runs here, against this machine's memory.

Prints one row per optimizer, dtype, size and thread count: bytes per element, milliseconds
per step, GB/s, the fraction of the bandwidth probe measured on the same buffers in the same
run, and the speed-up over the numpy implementation and over PyTorch (when installed).
--dtype, --grad-dtype, --state-dtype and --rounding select rows of other layouts (bfloat16
and float16 buffers, 8-bit state; lrcore.bench.Layout), checked before anything runs.
"""
import sys

from .. import backend, bench
from . import CLIError, check_threads, thread_limit
from .paths import output_file

HELP = "benchmark every update rule against the memory bandwidth probe, numpy and torch"


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true",
                        help="2^20 and 2^22 elements, few repeats (under 30 s for one optimizer)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    limit = thread_limit()
    parser.add_argument("--threads", default="1,2",
                        help="comma-separated thread counts to run" + (
                            f", each 1 to {limit} on this machine" if limit else "") +
                        " (default: 1,2)")
    parser.add_argument("--optimizer", action="append", metavar="NAME",
                        help="only this optimizer (repeatable): " + ", ".join(
                            label for label, _, _ in bench.BENCH_CASES))
    lay = parser.add_argument_group(
        "element types (default: float32 rows, and float64 at 2^24 elements without "
        "--quick)")
    lay.add_argument("--dtype", choices=tuple(bench.DTYPES), metavar="DTYPE",
                     help="param dtype: " + ", ".join(bench.DTYPES) + "; the grad and "
                          "state follow it unless given (float16 params: float32 state)")
    lay.add_argument("--grad-dtype", choices=tuple(bench.DTYPES), dest="grad_dtype",
                     metavar="DTYPE",
                     help="grad dtype (default: the param's); bfloat16 or float16 with "
                          "float32 params and state: optimizer offload")
    lay.add_argument("--state-dtype", choices=bench.STATE_DTYPES, dest="state_dtype",
                     metavar="DTYPE",
                     help="state dtype: " + ", ".join(bench.STATE_DTYPES) + " (int8: 8-bit "
                          "state, blocks of 256 with a float32 absmax each, for the optimizers "
                          "whose rule has it: " + ", ".join(_int8_labels()) + ")")
    lay.add_argument("--rounding", choices=("nearest", "stochastic"), metavar="MODE",
                     help="rounding of values stored in bfloat16 or float16: nearest or "
                          "stochastic (default: a row for each)")


def _int8_labels():
    return [label for label, kspec, _ in bench.BENCH_CASES if bench.int8_states(kspec.name)]


def _layouts(args):
    """The Layouts the options ask for, or None (the default rows); one-line CLIError for
    a combination lrcore has no kernel for, or an optimizer without it."""
    given = [o for o, v in (("--grad-dtype", args.grad_dtype), ("--state-dtype", args.state_dtype),
                            ("--rounding", args.rounding)) if v is not None]
    if args.dtype is None and not given:
        return None
    dtype = args.dtype or "float32"
    if args.state_dtype == "int8":      # the options at fault, before any optimizer's row
        allowed = bench.int8_param_dtypes()
        if dtype not in allowed:
            raise CLIError(f"--dtype {dtype} with --state-dtype int8: 8-bit state takes "
                           f"{' or '.join(allowed)} params")
        if args.grad_dtype not in (None, dtype):
            shown = f"--dtype {dtype}" if args.dtype else f"{dtype}, the default --dtype"
            raise CLIError(f"--grad-dtype {args.grad_dtype} with --state-dtype int8: 8-bit "
                           f"state takes grads of the params' type ({shown})")
    try:
        layouts = bench.layouts(dtype, args.grad_dtype, args.state_dtype,
                                [args.rounding] if args.rounding else None)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.rounding and all(lay.rounding is None for lay in layouts):
        raise CLIError(f"--rounding applies when params or state are stored in bfloat16 or "
                       f"float16; param {layouts[0].param}, state {layouts[0].state} has "
                       f"nothing to round")
    if layouts[0].state == "int8":
        usable = _int8_labels()
        for name in args.optimizer or ():
            if name not in usable:
                raise CLIError(f"--state-dtype int8 does not apply to --optimizer {name}; "
                               f"8-bit state is for {', '.join(usable)}")
        labels = {label: kspec for label, kspec, _ in bench.BENCH_CASES}
        for lay in layouts:
            for name in args.optimizer or usable:
                try:
                    bench.check_layout(labels[name], lay)
                except ValueError as exc:
                    where = f"--optimizer {name}" if args.optimizer else \
                        f"--state-dtype int8 with {name}"
                    raise CLIError(f"{where}: {exc}") from None
    return layouts


def run(args):
    if backend.name != "native":
        raise CLIError("benchmarks need the compiled backend; unset LRCORE_BACKEND")
    try:
        threads = tuple(int(t) for t in args.threads.split(","))
    except ValueError:
        raise CLIError(f"--threads must be comma-separated integers, got {args.threads!r}") \
            from None
    check_threads("--threads", threads, repr(args.threads))
    threads = tuple(dict.fromkeys(threads))      # `--threads 1,1`: each count measured once
    if args.json is not None:
        output_file("--json", args.json)       # before minutes of measuring
    known = [label for label, _, _ in bench.BENCH_CASES]
    for name in args.optimizer or ():
        if name not in known:
            raise CLIError(f"unknown optimizer {name!r}; choose from {', '.join(known)}")
    layouts = _layouts(args)
    info = bench.machine_info()
    print(f"lrcore {info['lrcore']} ({info['isa']}), numpy {info['numpy']}, "
          f"torch: {'yes' if bench.torch_available() else 'not installed'}", flush=True)

    def progress(row):
        print(f"  measured {row.optimizer} {row.dtype} {row.elements:,} x{row.threads}",
              file=sys.stderr, flush=True)
    rows = bench.run(quick=args.quick, threads=threads, optimizers=args.optimizer,
                     progress=progress if sys.stderr.isatty() else None, layouts=layouts)
    print(bench.format_table(rows))
    print("GB/s counts the bytes each step must read and write (B/el per element); 'of probe' "
          "divides by a read-modify-write probe with the same streams, measured in this run.")
    if any(r.layout and r.layout != r.dtype for r in rows):
        print("dtype: param/grad/state (one name when all agree), sr = stochastic rounding; "
              "int8 = 8-bit state (code + float32 absmax per 256).")
    if any(r.probe_on == "float32" for r in rows):
        print("*: buffers of different sizes: probe GB/s measured on float32 buffers of the "
              "same rule and length.")
    impls = sorted({r.torch_impl for r in rows if r.torch_impl and r.layout and
                    r.layout != r.dtype})
    if impls:
        print("vs torch: " + "; ".join(impls) + ".")
    if args.json:
        bench.to_json(rows, args.json)
        print(f"wrote {args.json}")
    return 0
