"""The `lrcore` command line: `lrcore` (or `lrcore info`) reports the installation and
self-checks the kernels; `lrcore train`, `lrcore schedule` and `lrcore bench` are the
trainer, the schedule viewer and the benchmark table."""
import argparse
import importlib
import sys


class CLIError(Exception):
    """A user error: printed as one line, exit code 2, never a traceback."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad option reported as one line (no usage block), exit code 2."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _parser():
    parser = _Parser(
        prog="lrcore", description="In-place optimizer updates under learning-rate schedules.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    sub.add_parser("info", help="versions, backend, instruction set, threads; kernel self-check")
    for name, module in _COMMANDS.items():
        mod = importlib.import_module(f"lrcore.cli.{module}")
        mod.add_arguments(sub.add_parser(name, help=mod.HELP, description=mod.HELP))
    return parser


# command -> module in lrcore.cli providing HELP, add_arguments(parser) and run(args) -> exit code
_COMMANDS = {"train": "train", "schedule": "schedule", "bench": "bench"}


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        if args.command in (None, "info"):
            from .info import main as info
            return info()
        mod = importlib.import_module(f"lrcore.cli.{_COMMANDS[args.command]}")
        return mod.run(args) or 0
    except CLIError as exc:
        print(f"lrcore {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
