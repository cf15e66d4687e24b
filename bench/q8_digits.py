"""Quality of 8-bit AdamW (lrcore.quantization.Adam8) against float32 AdamW (lrcore.kernels.adam
through the same Adam8 class with every buffer kept float32) on the bundled digits data: one
MLP, the same initial weights and the same mini-batches; validation accuracy per epoch.

Run: python bench/q8_digits.py [out.png]
"""
import sys

import numpy as np

from lrcore import quantization as q
from lrcore.demo.datasets import load_digits, standardize, train_val_split
from lrcore.demo.models import MLP


def train(min_elements, epochs=40, hidden=256, lr=1e-3, batch=32, seed=0):
    X, y = load_digits()
    Xtr, ytr, Xva, yva = train_val_split(X.astype(np.float32), y, 0.2, seed=0)
    Xtr, Xva = standardize(Xtr, Xva)
    Xtr, Xva = Xtr.astype(np.float32), Xva.astype(np.float32)
    model = MLP(Xtr.shape[1], hidden, 10, dtype=np.float32, seed=seed)
    opt = q.Adam8(model.params, lr=lr, weight_decay=1e-2, decoupled_weight_decay=True,
                  min_elements=min_elements)
    grads = model.new_grads()
    rng = np.random.default_rng(seed)
    acc = []
    for _ in range(epochs):
        order = rng.permutation(len(Xtr))
        for i in range(0, len(order), batch):
            rows = order[i:i + batch]
            model.loss_and_grad(Xtr[rows], ytr[rows], grads)
            opt.step(grads)
        acc.append(model.accuracy(Xva, yva))
    return np.array(acc), opt.state_nbytes()


def main(argv):
    acc32, b32 = train(min_elements=1 << 62)      # every state float32
    acc8, b8 = train(min_elements=0)              # every state 8-bit (also the small ones)
    print(f"float32 AdamW: final val accuracy {acc32[-1]:.4f} (best {acc32.max():.4f}), "
          f"state {b32} bytes")
    print(f"8-bit AdamW:   final val accuracy {acc8[-1]:.4f} (best {acc8.max():.4f}), "
          f"state {b8} bytes")
    print(f"difference (8-bit - float32), final epoch: {100 * (acc8[-1] - acc32[-1]):+.2f} "
          f"points")
    if len(argv) > 1:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ep = np.arange(1, len(acc32) + 1)
        ax.plot(ep, acc32, label="AdamW, float32 state")
        ax.plot(ep, acc8, label="AdamW, 8-bit state (lrcore.quantization)", linestyle="--")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy")
        ax.set_title("digits MLP (64-256-10)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(argv[1], dpi=110)


if __name__ == "__main__":
    main(sys.argv)
