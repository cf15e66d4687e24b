"""Training quality with 8-bit optimizer state: the digits MLP with AdamW's moments 8-bit.

Each run is `lrcore train --optimizer adamw` (lrcore.demo.runs) on a 64-256-10 MLP: float32
params with float32 state, float32 params with `--state-dtype int8`, and bfloat16 params with
stochastic rounding and 8-bit state. With int8, every state buffer of at least 4096 elements
(here the 64x256 hidden weights' two moments) is 8-bit; the smaller ones stay float32.
`python -m lrcore.demo.q8_quality --plot docs/q8_digits.png` prints every run's command,
accuracy and state bytes and draws the README's figure ("8-bit optimizer state").
"""
import argparse
import json
import sys

from .runs import command, train_curve

__all__ = ["RUNS", "options", "compare", "plot", "main"]

#: curve name -> (--precision, --state-dtype or None)
RUNS = {
    "float32 state": ("float32", None),
    "8-bit state": ("float32", "int8"),
    "8-bit state, bfloat16 params (stochastic rounding)": ("bfloat16-sr", "int8"),
}

#: the run's settings: AdamW (its default weight decay 1e-2) at lr 1e-3, 256 hidden units
SETTINGS = dict(lr=1e-3, epochs=40, batch=32, hidden=256, seed=0)


def options(name, *, lr, epochs, batch, hidden, seed):
    """The `lrcore train` options of run `name` (a key of RUNS)."""
    precision, state = RUNS[name]
    out = ["--optimizer", "adamw", "--precision", precision]
    if state:
        out += ["--state-dtype", state]
    return out + ["--lr", repr(lr), "--epochs", str(epochs), "--batch-size", str(batch),
                  "--hidden", str(hidden), "--seed", str(seed)]


def compare(**kw):
    """{name: Curve} for every run of RUNS (lrcore.demo.runs.Curve: val_acc, state_bytes)."""
    settings = dict(SETTINGS, **kw)
    return {name: train_curve(options(name, **settings)) for name in RUNS}


def plot(curves, path, hidden=SETTINGS["hidden"]):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for (name, curve), style in zip(curves.items(), ("-", "--", ":")):
        acc = curve.val_acc
        ax.plot(range(1, len(acc) + 1), [100 * a for a in acc], linestyle=style,
                label=f"{name}: {curve.state_bytes:,} bytes")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"digits MLP (64-{hidden}-10), lrcore train --optimizer adamw --lr 1e-3",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, title="optimizer state", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lrcore.demo.q8_quality",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=SETTINGS["epochs"])
    ap.add_argument("--plot", default=None, help="write the figure here (needs matplotlib)")
    ap.add_argument("--json", action="store_true", help="print every history as JSON")
    args = ap.parse_args(argv)
    settings = dict(SETTINGS, epochs=args.epochs)
    curves = {}
    for name in RUNS:
        opts = options(name, **settings)
        curves[name] = c = train_curve(opts)
        print(f"{command(opts)}\n    final {100 * c.final:6.2f}%  best {100 * c.best:6.2f}%  "
              f"optimizer state {c.state_bytes:,} bytes", flush=True)
    base = curves["float32 state"].final
    for name, c in curves.items():
        if name != "float32 state":
            print(f"{name}: final {100 * (c.final - base):+.2f} points against float32 state")
    if args.plot:
        plot(curves, args.plot, settings["hidden"])
        print(f"wrote {args.plot}")
    if args.json:
        json.dump({name: {"options": c.options, "val_acc": c.val_acc,
                          "state_bytes": c.state_bytes} for name, c in curves.items()},
                  sys.stdout)
        print()


if __name__ == "__main__":
    main()
