"""`lrcore schedule NAME [key=value ...] --steps N [--plot FILE.png]`: a schedule's values.

Prints a step/value table (every step, or an evenly spaced sample of --rows of them) or
draws the curve. Also holds the `NAME key=value ...` parsing that `lrcore train --schedule`
shares, including the defaults it fills in (`steps` from --steps; in train also
`initial`/`max_value` from --lr).
"""
import inspect
import math
from fractions import Fraction

from .. import schedules
from ..schedules.plotting import PLOT_POINTS
from . import CLIError
from .paths import PLOT_HINT, plot_file

HELP = "print or draw a learning-rate schedule's values, step by step"

# arguments that may be left out on the command line and are filled by the caller
FILLABLE = ("initial", "max_value", "steps", "total_steps")


def _signature(name):
    """The parameters of schedule `name` (its class or factory), for help and defaults."""
    return inspect.signature(schedules.factory(name)).parameters


def describe(name):
    """`name(arg: type, arg: type = default, ...)` for messages."""
    parts = []
    for key, p in _signature(name).items():
        ann = p.annotation if isinstance(p.annotation, str) else getattr(
            p.annotation, "__name__", str(p.annotation))
        parts.append(f"{key}: {ann}" + ("" if p.default is inspect.Parameter.empty
                                         else f" = {p.default!r}"))
    return f"{name}({', '.join(parts)})"


def _given(pairs):
    """The argument names among `key=value` strings (as build() reads them)."""
    return {pair.partition("=")[0].strip().lstrip("-").replace("-", "_") for pair in pairs}


def fillable_missing(name, pairs):
    """The FILLABLE arguments schedule `name` requires that `pairs` leave out (those
    build() takes from `fill`): e.g. ['steps'] for `cosine initial=0.1`."""
    if name not in schedules.names():
        return []
    given = _given(pairs)
    return [key for key, p in _signature(name).items() if key in FILLABLE and key not in given
            and p.default is inspect.Parameter.empty]


def check_lr(name, pairs, lr):
    """`lrcore train --lr LR --schedule NAME key=value ...`: --lr fills the schedule's
    `initial`/`max_value` when the pairs leave it out. Given with a schedule that sets that
    value to another number, or with one that has no such argument, it would be ignored:
    a one-line CLIError naming both (an equal value is accepted). An unknown name or an
    unreadable value is left to build()."""
    if lr is None or name not in schedules.names():
        return
    params = _signature(name)
    fillable = [key for key in ("initial", "max_value") if key in params]
    if not fillable:
        raise CLIError(f"--lr {lr:g} does not apply to --schedule {name}, which has no "
                       f"initial value to fill (its values are its arguments: "
                       f"{describe(name)}); leave out --lr")
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or key not in fillable:
            continue
        try:
            given = float(value)
        except ValueError:
            continue
        if given != lr:
            raise CLIError(f"--lr {lr:g} conflicts with --schedule {name} {key}={value}; "
                           f"give the value once (--lr fills {key} when the schedule "
                           f"leaves it out)")


def build(name, pairs, fill=None):
    """Make schedule `name` from `key=value` strings; `fill` gives values for the FILLABLE
    arguments that are required and were not given. Raises CLIError on any bad input."""
    if name not in schedules.names():
        raise CLIError(f"unknown schedule {name!r}; expected one of "
                       f"{', '.join(schedules.names())}")
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise CLIError(f"schedule argument {pair!r} is not key=value; {describe(name)}")
        if key in kwargs:
            raise CLIError(f"schedule argument {key!r} is given twice")
        kwargs[key] = value
    params = _signature(name)
    filled = []
    for key, value in (fill or {}).items():
        if key in FILLABLE and key in params and key not in kwargs and \
                params[key].default is inspect.Parameter.empty and value is not None:
            kwargs[key] = str(value)
            filled.append(f"{key}={value}")
    try:
        return schedules.make(name, **kwargs)
    except (TypeError, ValueError) as exc:
        note = f" (left out, so filled in: {', '.join(filled)})" if filled else ""
        raise CLIError(f"{exc}{note}; {describe(name)}") from None


def add_arguments(parser):
    parser.description = (
        f"{HELP}. Schedule arguments are key=value pairs after the name, e.g. "
        f"`lrcore schedule cosine initial=0.1 --steps 100`; a required `steps` or "
        f"`total_steps` left out is taken from --steps. Lists: milestones=30,60,90. "
        f"Names: {', '.join(schedules.names())}.")
    parser.add_argument("name", metavar="NAME", help="schedule name, e.g. cosine")
    parser.add_argument("arguments", nargs="*", metavar="key=value",
                        help="schedule arguments, e.g. initial=0.1 floor=0.001")
    parser.add_argument("--steps", type=int, required=True, metavar="N",
                        help="number of steps to show (steps 0 .. N-1)")
    parser.add_argument("--rows", type=int, default=None, metavar="R",
                        help="print only R evenly spaced rows (default: all if N <= 50, else 21)")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="draw the schedule to this image instead of printing a table "
                             f"(every step up to {PLOT_POINTS}, else that "
                             "many evenly spaced steps, the first and last included); "
                             "the extension picks the format: .png, .pdf, .svg, ... (needs "
                             f"matplotlib: {PLOT_HINT})")


def _rows(steps, rows):
    if rows is None:
        rows = steps if steps <= 50 else 21
    if rows >= steps:
        return list(range(steps))
    # exact: a float quotient loses steps beyond 2**53 (and could name step N, past the end)
    return sorted({round(Fraction(i * (steps - 1), rows - 1)) for i in range(rows)}) \
        if rows > 1 else [0]


def run(args):
    if args.steps < 1:
        raise CLIError(f"--steps must be an integer >= 1, got {args.steps}")
    if args.rows is not None and args.rows < 1:
        raise CLIError(f"--rows must be an integer >= 1, got {args.rows}")
    plot = plot_file("--plot", args.plot) if args.plot is not None else None
    schedule = build(args.name, args.arguments, {"steps": args.steps, "total_steps": args.steps})
    if plot:
        path, _ = plot   # a checked extension: savefig writes exactly `path`
        try:
            schedules.plot(schedule, args.steps, path)
        except (OSError, ValueError) as exc:
            raise CLIError(f"--plot {path!r}: cannot write the image: {exc}") from None
        print(f"{schedule!r}: {args.steps} steps drawn to {path}")
        return 0
    print(f"{schedule!r}")
    width = max(8, len(str(args.steps - 1)))      # the widest step shown is the last
    print(f"{'step':>{width}}  value")
    for step in _rows(args.steps, args.rows):
        value = schedule(step)
        print(f"{step:>{width}}  {value:.6g}" if math.isfinite(value)
              else f"{step:>{width}}  {value}")
    return 0
