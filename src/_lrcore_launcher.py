"""The `lrcore` console script: lrcore.cli.main, started from outside the lrcore package so
that an error raised while lrcore itself is imported (a bad LRCORE_ISA, LRCORE_BACKEND or
LRCORE_NUM_THREADS, a compiled core that does not load) is one line on stderr with exit
code 2, like every other command-line error, instead of a traceback."""
import sys


def main():
    try:
        from lrcore.cli import main as run
    except (ImportError, ValueError, RuntimeError) as exc:
        print(f"lrcore: error: {exc}", file=sys.stderr)
        return 2
    return run()


if __name__ == "__main__":
    sys.exit(main())
