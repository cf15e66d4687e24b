"""Training quality in bfloat16: the digits MLP with every optimizer buffer in one precision.

Each run keeps param, grad and optimizer state in float32, or all in bfloat16 with stochastic
or nearest rounding, and steps them with lrcore.kernels (the forward and backward passes
compute in float32 from the widened parameters; the gradient is rounded to the storage type
once, to nearest). `python -m lrcore.demo.lowp_quality --plot docs/lowp-quality.png` draws
the validation accuracy of the three runs (README, "bfloat16 and float16").
"""
import argparse
import json
import sys

import numpy as np

from .. import kernels, lowp
from .datasets import load_digits, standardize, train_val_split
from .models import MLP

__all__ = ["PRECISIONS", "train", "compare"]

#: name -> (storage dtype, rounding)
PRECISIONS = {
    "float32": (np.dtype(np.float32), "nearest"),
    "bfloat16-sr": (lowp.bfloat16, "stochastic"),
    "bfloat16-nearest": (lowp.bfloat16, "nearest"),
}


def train(precision, *, rule="sgd", lr=0.01, epochs=40, batch=32, hidden=64, seed=0, **hyper):
    """Validation accuracy after every epoch of one run (a list of floats)."""
    dtype, rounding = PRECISIONS[precision]
    X, y = load_digits()
    X_train, y_train, X_val, y_val = train_val_split(X, y, 0.2, seed=0)
    X_train, X_val = (a.astype(np.float32) for a in standardize(X_train, X_val))
    model = MLP(X.shape[1], hidden, 10, dtype=np.float32, seed=seed)
    grads = model.new_grads()
    flat_grad = grads[0].base            # the views share one flat buffer, in params order
    assert flat_grad is not None and flat_grad.size == model.n_params
    param = lowp.round_nearest(model.flat_params, dtype) if dtype != np.float32 \
        else model.flat_params.copy()
    n = param.size
    if rule == "sgd":
        states = {"momentum_buffer": np.zeros(n, dtype)} if hyper.get("momentum", 0) else {}
    elif rule == "adam":
        states = {"exp_avg": np.zeros(n, dtype), "exp_avg_sq": np.zeros(n, dtype)}
    else:
        raise ValueError(f"rule must be 'sgd' or 'adam', got {rule!r}")
    fn = getattr(kernels, rule)
    extra = {} if dtype == np.float32 else {"rounding": rounding, "seed": seed}
    rng = np.random.default_rng(seed)
    history, step = [], 0
    for _ in range(epochs):
        order = rng.permutation(len(y_train))
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            model.flat_params[...] = lowp.widen(param) if dtype != np.float32 else param
            model.loss_and_grad(X_train[rows], y_train[rows], grads)
            g = lowp.round_nearest(flat_grad, dtype) if dtype != np.float32 else flat_grad
            step += 1
            fn(param, g, lr=lr, step=step, **states, **hyper, **extra)
        model.flat_params[...] = lowp.widen(param) if dtype != np.float32 else param
        history.append(model.accuracy(X_val, y_val))
    return history


def compare(**kw):
    """{precision: history} for every precision in PRECISIONS."""
    return {name: train(name, **kw) for name in PRECISIONS}


#: The two runs of the README's figure: SGD with momentum at lr 0.01, and Adam at lr 1e-4
#: (its updates are then below half a bfloat16 ulp of most weights).
CONFIGS = (
    dict(rule="sgd", lr=0.01, momentum=0.9),
    dict(rule="adam", lr=1e-4),
)


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
            ax.plot(range(1, len(hist) + 1), [100 * a for a in hist], label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(f"digits MLP, {_label(cfg)}", fontsize=9)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle("param, grad and optimizer state stored in each precision", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--plot", default=None, help="write the figure here (needs matplotlib)")
    ap.add_argument("--json", action="store_true", help="print every history as JSON")
    args = ap.parse_args(argv)
    runs = []
    for cfg in CONFIGS:
        results = compare(epochs=args.epochs, **cfg)
        runs.append((cfg, results))
        for name, hist in results.items():
            print(f"{_label(cfg):28s} {name:18s} final {100 * hist[-1]:6.2f}%  "
                  f"best {100 * max(hist):6.2f}%")
    if args.plot:
        plot(runs, args.plot)
    if args.json:
        json.dump([{"config": cfg, "history": res} for cfg, res in runs], sys.stdout)
        print()


if __name__ == "__main__":
    main()
