"""The `lrcore` command line: `lrcore` (or `lrcore info`) reports the installation and
self-checks the kernels; `lrcore train`, `lrcore schedule` and `lrcore bench` are the
trainer, the schedule viewer and the benchmark table (modules of this package).

Design: each command module provides HELP, add_arguments(parser) and run(args) -> exit
code. This module owns what is common to all of them: one-line errors naming the command
(CLIError, bad options), --version, Ctrl-C, and a closed stdout (`lrcore ... | head -1`).
Exit codes: 0 done, 1 training failed or diverged, 2 bad input, 130 interrupted,
141 (128 + SIGPIPE, like a Unix tool killed by it) stdout closed early.
"""
import argparse
import importlib
import os
import sys

# command -> module of this package providing HELP, add_arguments(parser) and run(args)
_COMMANDS = {"info": "info", "train": "train", "schedule": "schedule", "bench": "bench"}

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 2, 130, 141


class CLIError(Exception):
    """A user error: printed as one line, exit code 2 (or `exit_code`), never a traceback."""

    def __init__(self, message, exit_code=EXIT_USAGE):
        super().__init__(message)
        self.exit_code = exit_code


def thread_limit():
    """The most threads one call may use here (the compiled core's bound, which scales with
    the machine's CPUs), or None on the python backend (one thread, any count accepted)."""
    from .. import backend
    return backend.core().max_threads() if backend.name == "native" else None


THREADS_DEFAULT = "LRCORE_NUM_THREADS, else OMP_NUM_THREADS, else the usable CPUs"


def check_threads(option, counts, given=None):
    """Each of `counts` as a thread count this machine accepts, else a CLIError naming
    `option` (checked before any work; `given` is the text the user typed)."""
    limit = thread_limit()
    for n in counts:
        if n < 1 or (limit is not None and n > limit):
            bound = "an integer >= 1" if limit is None else f"an integer from 1 to {limit}"
            raise CLIError(f"{option} must be {bound} (this machine's limit), got "
                           f"{given if given is not None else n}")


def run_as_main_failed(exc):
    """`python -m lrcore ...` when importing lrcore itself fails (a bad LRCORE_ISA,
    LRCORE_BACKEND or LRCORE_NUM_THREADS, a compiled core that does not load): the package's
    __init__ calls this, and the error becomes one line on stderr with exit code 2, as from
    the `lrcore` script, instead of a traceback from runpy. Anywhere else (an `import
    lrcore` in a program, `python -m pytest`) it returns and the import error is raised.

    While `python -m` locates its module, sys.argv[0] is "-m" (it becomes the module's path
    once found, before the module runs); sys.orig_argv names the module."""
    argv = getattr(sys, "orig_argv", None) or []
    if sys.argv[:1] != ["-m"] or len(argv) <= len(sys.argv):
        return
    # orig_argv is [python, interpreter options..., "-m", MODULE | "-mMODULE", sys.argv[1:]...]
    target = argv[len(argv) - len(sys.argv)]
    if target.startswith("-"):
        target = target.partition("m")[2]
    if target.split(".")[0] != "lrcore":
        return
    print(f"lrcore: error: {exc}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad option reported as one line (no usage block), exit code 2."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _version():
    from .. import __version__
    return f"lrcore {__version__}"


def _parser():
    parser = _Parser(
        prog="lrcore", description="In-place optimizer updates under learning-rate schedules. "
                                   "Without a command: `lrcore info`.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    parsers = {}
    for name, module in _COMMANDS.items():
        mod = importlib.import_module(f"{__name__}.{module}")
        parsers[name] = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(parsers[name])
    return parser, parsers


def _parse(argv):
    """Parse argv; an option the command does not know is reported by that command's
    parser (`lrcore train: error: unrecognized arguments: --foo`)."""
    parser, parsers = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        (parsers.get(args.command) or parser).error(
            f"unrecognized arguments: {' '.join(extra)}")
    return args


def _stdout_closed():
    """stdout's reader went away (`| head`): stop quietly, as a Unix tool does. Later
    writes (the interpreter's final flush) go to /dev/null instead of raising again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return EXIT_BROKEN_PIPE


def main(argv=None):
    """Run one command; return its exit code (the console script exits with it)."""
    try:
        args = _parse(argv)
        command = args.command or "info"
        try:
            code = importlib.import_module(f"{__name__}.{_COMMANDS[command]}").run(args) or 0
            sys.stdout.flush()     # a closed pipe shows here, not at interpreter exit
            return code
        except CLIError as exc:
            print(f"lrcore {command}: error: {exc}", file=sys.stderr)
            return exc.exit_code
        except MemoryError as exc:      # sizes given that this machine cannot hold
            print(f"lrcore {command}: error: out of memory"
                  + (f" ({' '.join(str(exc).split())})" if str(exc) else "")
                  + "; try smaller sizes", file=sys.stderr)
            return EXIT_FAILED
    except BrokenPipeError:
        return _stdout_closed()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
