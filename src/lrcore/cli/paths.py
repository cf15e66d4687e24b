"""Checking the files a command will read or write before it does any work: a bad --plot,
--save or --resume is a one-line error up front, never a failure after training, and the
path printed at the end is exactly the one written (the extension picks the image format;
nothing is appended to a name)."""
import os

from . import CLIError

# The one install hint for each optional package, as lrcore.schedules.plot words it: it
# works however lrcore itself was installed (the `plot`/`cli` extras hold just these).
PLOT_HINT = "pip install matplotlib"
TQDM_HINT = "pip install tqdm"


def _directory_of(option, path):
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CLIError(f"{option} {path!r}: directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CLIError(f"{option} {path!r}: directory {directory!r} is not writable")
    return directory


def output_file(option, path):
    """`path` as a file this command may create or replace (checked, not created)."""
    if not path:
        raise CLIError(f"{option} needs a file name")
    if os.path.isdir(path):
        raise CLIError(f"{option} {path!r} is a directory; expected a file name")
    _directory_of(option, path)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise CLIError(f"{option} {path!r}: the file exists and is not writable")
    return path


def input_file(option, path, what):
    """`path` as an existing regular file to read (`what` says what it should be)."""
    if os.path.isdir(path):
        raise CLIError(f"{option} {path!r} is a directory; expected {what}")
    if not os.path.exists(path):
        raise CLIError(f"{option} {path!r}: file does not exist")
    if not os.access(path, os.R_OK):
        raise CLIError(f"{option} {path!r}: the file is not readable")
    return path


def image_formats():
    """The image formats matplotlib's Agg canvas writes, by extension (png, pdf, svg...)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    return sorted(FigureCanvasAgg.get_supported_filetypes())


def plot_file(option, path):
    """Check `path` for a figure: matplotlib installed, a known image extension, a
    writable place. Returns (path, format); save with savefig(path, format=format) so
    that the file written is `path` itself."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CLIError(f"{option} needs matplotlib, an optional dependency: {PLOT_HINT}") \
            from None
    output_file(option, path)
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    formats = image_formats()
    if not ext:
        raise CLIError(f"{option} {path!r} has no extension to choose the image format "
                       f"by; e.g. {path}.png (or .pdf, .svg)")
    if ext not in formats:
        raise CLIError(f"{option} {path!r}: unsupported image format {ext!r}; use one of "
                       f"{', '.join(formats)}")
    return path, ext


def save_figure(fig, option, path, fmt):
    """Write `fig` to exactly `path` (one-line error if that fails after all)."""
    try:
        fig.savefig(path, format=fmt)
    except (OSError, ValueError) as exc:
        raise CLIError(f"{option} {path!r}: cannot write the image: {exc}") from None
    return path
