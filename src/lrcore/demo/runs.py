"""Training curves of `lrcore train` runs, for the README's quality figures.

Each run is the command line itself (``lrcore.cli.main(["train", ...])`` in this process,
its output captured); the validation accuracy after every epoch is read back from the
checkpoint the run writes (``--save``), where ``lrcore train`` keeps its history, and the
optimizer state's bytes from the run's summary. So a curve of a figure is reproduced by hand
with the command :func:`command` prints.
"""
import contextlib
import io
import os
import re
import shlex
import tempfile

__all__ = ["command", "train_curve", "Curve"]


class Curve:
    """One run: ``options`` (lrcore train's), ``val_acc`` (after each epoch, a list of
    floats), ``state_bytes`` (the optimizer state's bytes, from the summary) and ``output``
    (what the run printed)."""

    def __init__(self, options, val_acc, state_bytes, output):
        self.options, self.val_acc = list(options), list(val_acc)
        self.state_bytes, self.output = state_bytes, output

    @property
    def final(self):
        return self.val_acc[-1]

    @property
    def best(self):
        return max(self.val_acc)

    def __repr__(self):
        return (f"Curve({command(self.options)!r}: final {self.final:.4f}, best "
                f"{self.best:.4f}, state {self.state_bytes} bytes)")


def command(options):
    """The shell command of a run: ``lrcore train OPTIONS``."""
    return "lrcore train " + " ".join(shlex.quote(str(o)) for o in options)


def train_curve(options):
    """Run ``lrcore train OPTIONS`` here and return its :class:`Curve`; RuntimeError with
    the run's own error line if it fails."""
    from .. import checkpoint
    from ..cli import main
    from ..cli.report import META_KEY, History
    options = [str(o) for o in options]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "run.lrc")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["train", *options, "--no-progress", "--save", path])
        if code != 0:
            raise RuntimeError(f"`{command(options)}` failed (exit code {code}): "
                               f"{err.getvalue().strip()}")
        _, meta = checkpoint.read(path)
    history = History(meta["user"][META_KEY])
    found = re.search(r"optimizer state ([0-9,]+) bytes", out.getvalue())
    state_bytes = int(found.group(1).replace(",", "")) if found else None
    return Curve(options, history.val_acc, state_bytes, out.getvalue())
