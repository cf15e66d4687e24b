"""Drawing a schedule with matplotlib (an optional dependency)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .base import Schedule, check_int, describe

__all__ = ["plot"]


def plot(schedule: Schedule, steps: int, path: str | None = None) -> Any:
    """Draw ``schedule`` over steps ``0 .. steps-1``; return the matplotlib Figure.

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
    ax.plot(np.arange(steps), schedule.values(steps), lw=1.5)
    ax.set_xlabel("step (optimizer steps taken)")
    ax.set_ylabel("value")
    ax.set_title(repr(schedule), fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig
