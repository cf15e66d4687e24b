"""Checking the files a command will read or write before it does any work: a bad --plot,
--save or --resume is a one-line error up front, never a failure after training, and the
path printed at the end is exactly the one written (the extension picks the image format;
nothing is appended to a name)."""
import io
import os
import shutil

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


def _missing_tool(ext):
    """What image format `ext` needs from outside matplotlib that this machine lacks, or
    None: pgf runs a TeX program (rcParams['pgf.texsystem'], xelatex by default) for every
    figure; avif needs a Pillow built with AVIF support. Every other format matplotlib's
    Agg canvas lists is written by matplotlib (and Pillow, its dependency) alone."""
    if ext == "pgf":
        import matplotlib
        tex = matplotlib.rcParams["pgf.texsystem"]
        return None if shutil.which(tex) else f"{tex} (a TeX program)"
    if ext == "avif":
        from PIL import features
        return None if features.check("avif") else "a Pillow built with AVIF support"
    return None


def image_formats():
    """The image formats a figure can be written in here, by extension (png, pdf, svg...):
    those of matplotlib's Agg canvas whose external tools (see _missing_tool) are present."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    return sorted(ext for ext in FigureCanvasAgg.get_supported_filetypes()
                  if _missing_tool(ext) is None)


def _try_format(ext):
    """Render a tiny figure with text in format `ext` to memory: the error (one line) if
    that fails here (e.g. text.usetex set in a matplotlibrc without LaTeX), else None."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(1, 1))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], [1, 0])
    ax.set_title("lr 0.1")
    try:
        fig.savefig(io.BytesIO(), format=ext)
    except Exception as exc:  # noqa: BLE001 - any failure of the writer, reported in one line
        return " ".join(f"{type(exc).__name__}: {exc}".split())
    return None


def plot_file(option, path):
    """Check `path` for a figure, before any work: matplotlib installed, an image extension
    this machine can write (a tiny figure is rendered in that format to be sure), a
    writable place. Returns (path, format); save with savefig(path, format=format) so that
    the file written is `path` itself."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CLIError(f"{option} needs matplotlib, an optional dependency: {PLOT_HINT}") \
            from None
    output_file(option, path)
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if not ext:
        raise CLIError(f"{option} {path!r} has no extension to choose the image format "
                       f"by; e.g. {path}.png (or .pdf, .svg)")
    formats = image_formats()
    if ext not in formats:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        missing = (_missing_tool(ext) if ext in FigureCanvasAgg.get_supported_filetypes()
                   else None)
        what = (f"the {ext} format needs {missing}, which is not installed" if missing
                else f"unsupported image format {ext!r}")
        raise CLIError(f"{option} {path!r}: {what}; use one of {', '.join(formats)}")
    failure = _try_format(ext)
    if failure:
        raise CLIError(f"{option} {path!r}: {ext} images cannot be written here ({failure}); "
                       f"try .png")
    return path, ext


def save_figure(fig, option, path, fmt):
    """Write `fig` to exactly `path` (one-line error if that fails after all)."""
    try:
        fig.savefig(path, format=fmt)
    except (OSError, ValueError) as exc:
        raise CLIError(f"{option} {path!r}: cannot write the image: {exc}") from None
    return path
