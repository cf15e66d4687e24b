"""The figure `lrcore train --plot` writes: training loss (log scale; each mini-batch at its
centre, each epoch's mean at the epoch's centre), validation accuracy after each epoch
(axis 0..1), and the learning rate when it changes (a constant one is named in the title
instead of filling a panel), all against epochs, under a title naming the model, the
data, the optimizer, the learning rate or schedule and the batch size."""
import math

import numpy as np

from .paths import save_figure


def _is_constant(values):
    return len(values) == 0 or all(v == values[0] for v in values)


def draw(history, path, fmt, **labels):
    """Render `history` (report.History) to `path` in format `fmt`; return the path."""
    return save_figure(build(history, **labels), "--plot", path, fmt)


def build(history, *, title, lr_text, epochs, steps_per_epoch=None):
    """The matplotlib Figure (Agg canvas, no pyplot) for `history`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import (FuncFormatter, LogLocator, MaxNLocator, NullFormatter,
                                   PercentFormatter)

    x = np.asarray(history.x, dtype=float)
    loss = np.asarray(history.loss, dtype=float)
    lrs = np.asarray(history.lr, dtype=float)
    epoch = np.asarray(history.epoch, dtype=float)
    epoch_loss = np.asarray(history.epoch_loss, dtype=float)
    val_acc = np.asarray(history.val_acc, dtype=float)
    constant_lr = _is_constant(history.lr)

    panels = 2 if constant_lr else 3
    ratios = [2.2, 1.3] + ([1.0] if panels == 3 else [])
    fig = Figure(figsize=(8, 6.2 if panels == 2 else 7.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(panels, 1, sharex=True, gridspec_kw={"height_ratios": ratios})
    ax_loss, ax_acc = axes[0], axes[1]

    # loss: log scale when every value is positive and finite (cross-entropy is)
    finite = np.isfinite(loss)
    ax_loss.plot(x[finite], loss[finite], lw=0.7, alpha=0.35, color="tab:blue",
                 label="mini-batch loss")
    centres = epoch - 0.5
    ok = np.isfinite(epoch_loss)
    ax_loss.plot(centres[ok], epoch_loss[ok], "o-", ms=4, lw=1.6, color="tab:blue",
                 label="epoch mean")
    positive = loss[finite]
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    if positive.size and positive.min() > 0:
        ax_loss.set_yscale("log")
        decades = math.log10(positive.max() / positive.min())
        ax_loss.yaxis.set_major_locator(LogLocator(10, subs=(1.0, 2.0, 5.0) if decades < 3
                                                   else (1.0,)))
        ax_loss.yaxis.set_major_formatter(plain)
        ax_loss.yaxis.set_minor_formatter(NullFormatter())
    ax_loss.set_ylabel("training loss")
    ax_loss.legend(fontsize=8, loc="upper right")

    ax_acc.plot(epoch, val_acc, "o-", ms=4, lw=1.6, color="tab:green")
    ax_acc.set_ylim(0.0, 1.0)
    ax_acc.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax_acc.set_ylabel("validation accuracy")
    if val_acc.size:
        best = int(np.argmax(val_acc))
        low = val_acc[-1] < 0.35          # keep the text off the curve
        ax_acc.annotate(f"after each epoch; final {val_acc[-1]:.1%}, best {val_acc[best]:.1%} "
                        f"(epoch {int(epoch[best])})", xy=(0.99, 0.93 if low else 0.05),
                        xycoords="axes fraction", ha="right", va="top" if low else "bottom",
                        fontsize=8)

    if panels == 3:
        ax_lr = axes[2]
        ax_lr.plot(x, lrs, lw=1.4, color="tab:red")
        ax_lr.set_ylabel("learning rate")
        ax_lr.set_ylim(bottom=0.0)
        ax_lr.yaxis.set_major_formatter(plain)

    last = axes[-1]
    last.set_xlabel("epoch")
    last.set_xlim(0.0, max(float(epochs), float(epoch.max()) if epoch.size else 1.0))
    last.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
        for at in history.resumed_at:
            ax.axvline(at, color="0.4", lw=0.8, ls=":")
    if history.resumed_at:
        ax_loss.text(history.resumed_at[0], 0.02, " resumed",
                     transform=ax_loss.get_xaxis_transform(), fontsize=8, color="0.3",
                     va="bottom")
    if steps_per_epoch:
        top = ax_loss.secondary_xaxis(
            "top", functions=(lambda e: e * steps_per_epoch, lambda s: s / steps_per_epoch))
        top.set_xlabel("optimizer step", fontsize=8)
        top.tick_params(labelsize=8)

    lr_line = f"lr {lr_text}" + (" (constant)" if constant_lr and not math.isnan(
        lrs[0] if lrs.size else math.nan) else "")
    fig.suptitle(f"{title}\n{lr_line}", fontsize=10)
    return fig
