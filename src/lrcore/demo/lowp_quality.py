"""Training quality in bfloat16: the digits MLP with every optimizer buffer in one precision.

Each run is `lrcore train --precision P` (lrcore.demo.runs): float32 (param, grad and state
float32), bfloat16-sr (all three bfloat16, stochastic rounding) or bfloat16 (all three
bfloat16, nearest rounding). The model widens its bfloat16 params to float32 for the forward
and backward passes and rounds each gradient element to nearest into a bfloat16 buffer; the
optimizer (lrcore.optim, state_dtype None: the params' type) steps the bfloat16 buffers.
`python -m lrcore.demo.lowp_quality --plot docs/lowp-quality.png` prints every run's command
and accuracy and draws the README's figure ("bfloat16 and float16").
"""
import argparse
import json
import sys

from .runs import command, train_curve

__all__ = ["PRECISIONS", "CONFIGS", "options", "train", "compare", "plot", "main"]

#: curve name -> `lrcore train --precision` value
PRECISIONS = {
    "float32": "float32",
    "bfloat16-sr": "bfloat16-sr",
    "bfloat16-nearest": "bfloat16",
}

#: The two runs of the README's figure: SGD with momentum at lr 0.01, and Adam at lr 1e-4
#: (its updates are then below half a bfloat16 ulp of most weights).
CONFIGS = (
    dict(rule="sgd", lr=0.01, momentum=0.9),
    dict(rule="adam", lr=1e-4),
)


def options(precision, *, rule="sgd", lr=0.01, epochs=40, batch=32, hidden=64, seed=0,
            **hyper):
    """The `lrcore train` options of one run (`precision`: a key of PRECISIONS)."""
    out = ["--precision", PRECISIONS[precision], "--optimizer", rule, "--lr", repr(lr),
           "--epochs", str(epochs), "--batch-size", str(batch), "--hidden", str(hidden),
           "--seed", str(seed)]
    for name, value in hyper.items():
        out += [f"--{name.replace('_', '-')}", repr(value)]
    return out


def train(precision, **kw):
    """Validation accuracy after every epoch of one run (a list of floats)."""
    return train_curve(options(precision, **kw)).val_acc


def compare(**kw):
    """{precision: history} for every precision in PRECISIONS."""
    return {name: train(name, **kw) for name in PRECISIONS}


def _label(cfg):
    return ", ".join(f"{k}={v}" if k != "rule" else v for k, v in cfg.items())


def plot(runs, path):
    """runs: [(config, {precision: history})]; one panel per config."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 3.6), squeeze=False)
    for ax, (cfg, results) in zip(axes[0], runs):
        for name, hist in results.items():
            ax.plot(range(1, len(hist) + 1), [100 * a for a in hist],
                    label=f"--precision {PRECISIONS[name]}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(f"digits MLP, {_label(cfg)}", fontsize=9)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle("lrcore train --precision: param, grad and optimizer state stored in each "
                 "precision", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lrcore.demo.lowp_quality",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--plot", default=None, help="write the figure here (needs matplotlib)")
    ap.add_argument("--json", action="store_true", help="print every history as JSON")
    args = ap.parse_args(argv)
    runs = []
    for cfg in CONFIGS:
        results = {}
        for name in PRECISIONS:
            opts = options(name, epochs=args.epochs, **cfg)
            results[name] = hist = train_curve(opts).val_acc
            print(f"{command(opts)}\n    final {100 * hist[-1]:6.2f}%  best "
                  f"{100 * max(hist):6.2f}%", flush=True)
        runs.append((cfg, results))
    if args.plot:
        plot(runs, args.plot)
        print(f"wrote {args.plot}")
    if args.json:
        json.dump([{"config": cfg, "history": res} for cfg, res in runs], sys.stdout)
        print()


if __name__ == "__main__":
    main()
