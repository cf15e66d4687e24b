"""What `lrcore train` shows while it runs: the history of the run (kept in the checkpoint's
meta, so a resumed run's figure covers the whole run), the progress bar, one line per
epoch, and the header and summary lines (each wrapped to fit 80 columns)."""
import math
import sys
import textwrap
import time

from ..task import Event, MetricKey, ParameterKey

WIDTH = 80
META_KEY = "lrcore train history"


def wrap(text):
    """`text` as lines of at most WIDTH columns (continuations indented)."""
    return "\n".join(textwrap.wrap(text, WIDTH, subsequent_indent="  ",
                                   break_on_hyphens=False))


class History:
    """Per mini-batch: position in epochs (the batch's centre: epoch index + (b + 0.5) /
    batches per epoch), loss and lr in force; per epoch: its number, mean loss and the
    validation accuracy after it; and the epochs at which the run was resumed."""

    FIELDS = ("x", "loss", "lr", "epoch", "epoch_loss", "val_acc", "resumed_at")

    def __init__(self, data=None):
        data = data if isinstance(data, dict) else {}
        for name in self.FIELDS:
            value = data.get(name, [])
            setattr(self, name, [float(v) for v in value] if isinstance(value, list) else [])
        n = min(len(self.x), len(self.loss), len(self.lr))
        self.x, self.loss, self.lr = self.x[:n], self.loss[:n], self.lr[:n]
        m = min(len(self.epoch), len(self.epoch_loss), len(self.val_acc))
        self.epoch, self.epoch_loss, self.val_acc = (
            self.epoch[:m], self.epoch_loss[:m], self.val_acc[:m])

    def to_meta(self):
        return {name: list(getattr(self, name)) for name in self.FIELDS}

    def cut(self, epoch_position):
        """Forget what lies after `epoch_position` (a checkpoint older than the history)."""
        keep = [i for i, x in enumerate(self.x) if x < epoch_position]
        self.x, self.loss, self.lr = ([v[i] for i in keep] for v in (self.x, self.loss, self.lr))
        keep = [i for i, e in enumerate(self.epoch) if e <= epoch_position]
        self.epoch, self.epoch_loss, self.val_acc = (
            [v[i] for i in keep] for v in (self.epoch, self.epoch_loss, self.val_acc))
        self.resumed_at = [r for r in self.resumed_at if r < epoch_position]


class Reporter:
    """Progress handler of the training task: records the history, drives the progress bar
    (tqdm, on stderr, showing the epoch) and prints one line per epoch on stdout."""

    def __init__(self, model, X_val, y_val, n_train, history, per_epoch, epochs,
                 total_steps, use_bar, first_epoch):
        self.model, self.X_val, self.y_val = model, X_val, y_val
        self.n_train = n_train
        self.history = history
        self.per_epoch, self.epochs = per_epoch, epochs
        self.steps = 0            # steps taken in this process
        self.samples = 0
        self.t_epoch = time.perf_counter()
        self.bar = None
        if use_bar:
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, unit="step", file=sys.stderr, leave=False,
                            dynamic_ncols=True, desc=self._epoch_label(first_epoch))

    def _epoch_label(self, index):
        return f"epoch {index + 1}/{self.epochs}"

    def write(self, line):
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
            sys.stdout.flush()
        else:
            print(line, flush=True)

    def __call__(self, ctx):
        if ctx.event is Event.MINI_BATCH_END:
            self._mini_batch(ctx)
        elif ctx.event is Event.EPOCH_END:
            self._epoch_end(ctx)

    def _mini_batch(self, ctx):
        loss = ctx.metrics[MetricKey.LOSS]
        index = ctx.metrics[MetricKey.MINI_BATCH_INDEX]
        epoch = ctx.metrics[MetricKey.EPOCH_INDEX]
        self.history.x.append(epoch + (index + 0.5) / self.per_epoch)
        self.history.loss.append(float(loss))
        self.history.lr.append(float(ctx.parameters[ParameterKey.LEARNING_RATE]))
        self.steps += 1
        size = ctx.parameters[ParameterKey.MINI_BATCH_SIZE]
        self.samples += min(size, self.n_train - size * index)
        if self.bar is not None:
            self.bar.update(1)
            if self.steps % 10 == 0:
                self.bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)

    def _epoch_end(self, ctx):
        accuracy = self.model.accuracy(self.X_val, self.y_val)
        epoch = ctx.metrics[MetricKey.EPOCH_INDEX] + 1
        loss = ctx.metrics[MetricKey.LOSS]
        now = time.perf_counter()
        self.history.epoch.append(float(epoch))
        self.history.epoch_loss.append(float(loss))
        self.history.val_acc.append(float(accuracy))
        width = len(str(self.epochs))
        self.write(f"epoch {epoch:>{width}}/{self.epochs}  loss {number(loss)}  "
                   f"val_acc {accuracy:.4f}  lr "
                   f"{ctx.parameters[ParameterKey.LEARNING_RATE]:.4g}  "
                   f"{now - self.t_epoch:.2f} s")
        self.t_epoch = now
        if self.bar is not None and epoch < self.epochs:
            self.bar.set_description_str(self._epoch_label(epoch), refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def number(x):
    """A loss for a line of text: 4 decimals, or 4 significant digits when large."""
    return f"{x:.4f}" if abs(x) < 1e4 else f"{x:.3e}"


def describe_lr(lr):
    """A learning rate or schedule in words: '0.001' or its repr."""
    return f"{lr:g}" if isinstance(lr, float) else repr(lr)


def header(model, source, n_train, n_val, optimizer, lr, epochs, per_epoch, batch_size,
           resuming_at=None, precision=None):
    """Two lines (each wrapped): model and data; optimizer, lr and the run's length; then
    `precision` (element types in words) on a third when given."""
    first = f"{model} on {source}: {n_train} train / {n_val} val samples"
    second = (f"{optimizer} lr {describe_lr(lr)}; {epochs} epoch{'s' * (epochs != 1)} of "
              f"{per_epoch} mini-batches of {batch_size}")
    if resuming_at is not None:
        second += f", resuming at epoch {resuming_at}"
    lines = [wrap(first), wrap(second)]
    if precision is not None:
        lines.append(wrap(f"precision {precision}"))
    return "\n".join(lines)


def summary(outcome, steps, samples, elapsed, accuracy, written, precision=None,
            state=None):
    """The last lines: steps, samples and speed; final accuracy; the precision and the
    optimizer state's memory in words (when given); the files written."""
    rate = samples / elapsed if elapsed > 0 else math.inf
    lines = [f"{outcome}: {steps} step{'s' * (steps != 1)}, {samples:,} samples in {elapsed:.2f} s "
             f"({rate:,.0f} samples/s)", f"final val_acc {accuracy:.4f}"]
    if precision is not None:
        lines.append(f"precision {precision}" + ("" if state is None else
                                                 f"; optimizer state {state}"))
    # one line per file, never wrapped: a path stays whole for copying
    return "\n".join([wrap(line) for line in lines] + [f"wrote {w}" for w in written])
