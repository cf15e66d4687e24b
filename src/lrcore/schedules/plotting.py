"""Drawing a schedule with matplotlib (an optional dependency)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .base import Schedule, check_int, describe

__all__ = ["plot", "PLOT_POINTS"]

#: The most steps :func:`plot` evaluates: every step of a schedule this long or shorter,
#: else this many evenly spaced steps, the first and the last among them.
PLOT_POINTS = 4096


def _plotted_steps(steps: int) -> list[int]:
    """The steps :func:`plot` draws: ``0 .. steps-1``, or PLOT_POINTS of them evenly
    spaced (each the nearest whole step, in exact integer arithmetic, so none is skipped
    or past the end however long the schedule)."""
    if steps <= PLOT_POINTS:
        return list(range(steps))
    k = PLOT_POINTS - 1
    return [(i * (steps - 1) + k // 2) // k for i in range(PLOT_POINTS)]


def plot(schedule: Schedule, steps: int, path: str | None = None) -> Any:
    """Draw ``schedule`` over steps ``0 .. steps-1``; return the matplotlib Figure.

    A schedule of up to :data:`PLOT_POINTS` steps is drawn at every step; a longer one at
    that many evenly spaced steps (the first and the last included), each at its exact
    value, so time and memory stay bounded however many steps (a jump between two drawn
    steps shows as a slope).

    With ``path`` the figure is rendered with the Agg backend and saved there (the format
    follows the extension), without touching pyplot's global backend; without it the figure
    comes from pyplot, so it shows in notebooks and with ``plt.show()``.
    """
    if not isinstance(schedule, Schedule):
        raise TypeError(f"plot: schedule must be a Schedule, got {describe(schedule)}")
    steps = check_int("plot", "steps", steps, low=1)
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ImportError("plot() needs matplotlib, an optional dependency of lrcore: "
                          "pip install matplotlib") from exc
    if path is None:
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
    else:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        fig = Figure(figsize=(6.4, 3.6))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    at = _plotted_steps(steps)
    values = np.fromiter((schedule(n) for n in at), dtype=np.float64, count=len(at))
    ax.plot(np.array(at, dtype=np.int64 if steps <= 2**63 else np.float64), values, lw=1.5)
    ax.set_xlabel("step (optimizer steps taken)")
    ax.set_ylabel("value")
    ax.set_title(repr(schedule), fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig
