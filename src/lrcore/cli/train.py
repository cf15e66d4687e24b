"""`lrcore train`: train a small numpy classifier end to end with an lrcore UpdateTask.

Defaults need no arguments: the built-in 8x8 digits (lrcore/demo/data/LICENSE-digits.txt), an
80/20 train/validation split, standardized features, a one-hidden-layer MLP and Adam. Prints
a progress bar (tqdm, if installed), one line per epoch and a summary; optionally writes a
checkpoint (--save, continued with --resume) and a plot of loss, accuracy and lr (--plot).
"""
import math
import os
import sys
import time

import numpy as np

from .. import checkpoint
from ..demo import datasets, models
from . import CLIError
from .schedule import build as build_schedule
from ..task import OPTIMIZERS, Event, MetricKey, ParameterKey, ProgressHandlers, UpdateTask

HELP = "train a classifier with an update task (default: built-in digits, MLP, Adam)"

# learning rates that train the default model well in 10 epochs
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3, "adagrad": 1e-2, "rmsprop": 1e-3,
              "adadelta": 1.0}
DEFAULTS = {"optimizer": "adam", "epochs": 10, "batch_size": 32, "seed": 0}

# command-line option -> task parameter (and the attribute argparse stores it under)
_OPTION_KEYS = [("--lr", "lr", ParameterKey.LEARNING_RATE),
                ("--momentum", "momentum", ParameterKey.MOMENTUM),
                ("--beta1", "beta1", ParameterKey.BETA1),
                ("--beta2", "beta2", ParameterKey.BETA2),
                ("--eps", "eps", ParameterKey.EPS),
                ("--weight-decay", "weight_decay", ParameterKey.WEIGHT_DECAY),
                ("--epochs", "epochs", ParameterKey.EPOCHS),
                ("--batch-size", "batch_size", ParameterKey.MINI_BATCH_SIZE),
                ("--seed", "seed", ParameterKey.SEED)]


def add_arguments(parser):
    data = parser.add_argument_group("data and model")
    data.add_argument("--data", metavar="FILE",
                      help="a .csv (header row, numeric cells) or .npz (arrays X and y) file; "
                           "default: the built-in 8x8 digits (1,797 samples, 10 classes)")
    data.add_argument("--target", metavar="NAME",
                      help="label column (CSV header name) or label array (NPZ); default: the "
                           "last CSV column, or the NPZ array y")
    data.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                      help="fraction of samples held out for validation (default 0.2)")
    data.add_argument("--model", choices=("mlp", "softmax"), default=None,
                      help="one-hidden-layer MLP (default) or softmax regression")
    data.add_argument("--hidden", type=int, default=None, metavar="H",
                      help="hidden units of the MLP (default 64)")
    opt = parser.add_argument_group("optimizer")
    opt.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default=None,
                     help="default adam")
    opt.add_argument("--lr", type=float, metavar="LR",
                     help="learning rate (default: " + ", ".join(
                         f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    opt.add_argument("--schedule", nargs="+", metavar=("NAME", "key=value"),
                     help="learning-rate schedule by name with key=value arguments, e.g. "
                          "--schedule cosine floor=1e-5; a required `initial` or `max_value` left "
                          "out is --lr, a required `steps`/`total_steps` the run's total "
                          "mini-batch steps (see `lrcore schedule --help` for the names)")
    opt.add_argument("--momentum", type=float, help="sgd, rmsprop")
    opt.add_argument("--beta1", type=float, help="adam, adamw")
    opt.add_argument("--beta2", type=float, help="adam, adamw")
    opt.add_argument("--eps", type=float, help="adam, adamw, adagrad, rmsprop, adadelta")
    opt.add_argument("--weight-decay", type=float, dest="weight_decay")
    opt.add_argument("--threads", type=int, metavar="N",
                     help="threads for the optimizer step (default: OMP_NUM_THREADS or CPUs)")
    loop = parser.add_argument_group("loop")
    loop.add_argument("--epochs", type=int, help="default 10 (with --resume: the total)")
    loop.add_argument("--batch-size", type=int, dest="batch_size", help="default 32")
    loop.add_argument("--seed", type=int,
                      help="seeds the split, the initial weights and the shuffling (default 0)")
    loop.add_argument("--no-shuffle", action="store_true",
                      help="visit the training samples in the same order every epoch")
    out = parser.add_argument_group("output")
    out.add_argument("--save", metavar="FILE",
                     help="write a checkpoint of the whole task after every epoch and at the end")
    out.add_argument("--resume", metavar="FILE",
                     help="continue from a --save checkpoint (model, data and optimizer come "
                          "from it; options given here override its values)")
    out.add_argument("--plot", metavar="FILE.png",
                     help="draw loss, validation accuracy and learning rate against steps "
                          "(needs matplotlib: pip install 'lrcore[plot]')")
    bar = out.add_mutually_exclusive_group()
    bar.add_argument("--progress", action="store_true", default=None,
                     help="always show the progress bar (needs tqdm: pip install 'lrcore[cli]')")
    bar.add_argument("--no-progress", action="store_false", dest="progress",
                     help="never show the progress bar (default: shown when tqdm is installed "
                          "and stderr is a terminal)")


# ----------------------------------------------------------------------------------------
# Setup: data, model, parameters.
# ----------------------------------------------------------------------------------------


def _load_data(config):
    try:
        if config["data"] is None:
            if config["target"] is not None:
                raise CLIError("--target needs --data FILE (the built-in digits have no "
                               "columns to choose from)")
            X, y = datasets.load_digits()
        else:
            X, y = datasets.load_table(config["data"], config["target"])
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    n_classes = int(y.max()) + 1
    if np.unique(y).size < 2:
        raise CLIError(f"data file {config['data']!r}: the target holds a single class "
                       f"({int(y[0])}); expected at least two classes")
    try:
        X_train, y_train, X_val, y_val = datasets.train_val_split(
            X, y, config["val_fraction"], config["split_seed"])
    except ValueError as exc:
        raise CLIError(f"--val-fraction: {exc}") from None
    X_train, X_val = datasets.standardize(X_train, X_val)
    return X_train, y_train, X_val, y_val, n_classes


def _make_model(config):
    if config["model"] == "mlp":
        return models.MLP(config["n_features"], config["hidden"], config["n_classes"],
                          seed=config["split_seed"])
    return models.SoftmaxRegression(config["n_features"], config["n_classes"],
                                    seed=config["split_seed"])


def _option_parameters(args, optimizer):
    """{ParameterKey: value} for the options given, checked, with option names in errors."""
    usable = {k.value.hyperparameter for k in ParameterKey} & set(
        OPTIMIZERS[optimizer].numeric)
    out = {}
    for option, attr, key in _OPTION_KEYS:
        value = getattr(args, attr)
        if value is None:
            continue
        if key.value.hyperparameter and key.value.hyperparameter not in usable:
            raise CLIError(f"{option} does not apply to --optimizer {optimizer}")
        try:
            out[key] = key.validate(value)
        except (TypeError, ValueError):
            raise CLIError(f"{option} must be {key.expected.replace(' or a lrcore Schedule', '')}"
                           f", got {value!r}") from None
    if args.no_shuffle:
        out[ParameterKey.SHUFFLE] = False
    return out


def _check_options(args):
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads must be an integer >= 1, got {args.threads}")
    if args.hidden is not None and args.hidden < 1:
        raise CLIError(f"--hidden must be an integer >= 1, got {args.hidden}")
    if not 0.0 < args.val_fraction < 1.0:
        raise CLIError(f"--val-fraction must be a number strictly between 0 and 1, got "
                       f"{args.val_fraction!r}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CLIError("--plot needs matplotlib, an optional dependency: "
                           "pip install 'lrcore[plot]'") from None
    if args.progress:
        try:
            import tqdm  # noqa: F401
        except ImportError:
            raise CLIError("--progress needs tqdm, an optional dependency: "
                           "pip install 'lrcore[cli]'") from None
    for flag in ("save", "plot"):
        path = getattr(args, flag)
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise CLIError(f"--{flag} {path!r}: directory "
                           f"{os.path.dirname(os.path.abspath(path))!r} does not exist")


def _steps_per_epoch(n, batch_size):
    return -(-n // batch_size)


# ----------------------------------------------------------------------------------------
# Reporting.
# ----------------------------------------------------------------------------------------


class _Reporter:
    """Progress handler: progress bar, per-epoch lines, and the curves for --plot."""

    def __init__(self, model, X_val, y_val, n_train, total_steps, use_bar, epochs):
        self.model, self.X_val, self.y_val = model, X_val, y_val
        self.n_train = n_train
        self.epochs = epochs
        self.steps, self.losses, self.lrs = [], [], []
        self.epoch_steps, self.val_accuracy, self.epoch_losses = [], [], []
        self.samples = 0
        self.bar = None
        self.t_epoch = time.perf_counter()
        if use_bar:
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, unit="step", file=sys.stderr, leave=False,
                            dynamic_ncols=True)

    def write(self, line):
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def __call__(self, ctx):
        if ctx.event is Event.MINI_BATCH_END:
            step = ctx.task.step_count
            loss = ctx.metrics[MetricKey.LOSS]
            self.steps.append(step)
            self.losses.append(loss)
            self.lrs.append(ctx.parameters[ParameterKey.LEARNING_RATE])
            size = ctx.parameters[ParameterKey.MINI_BATCH_SIZE]
            self.samples += max(1, min(size, self.n_train - size *
                                       ctx.metrics[MetricKey.MINI_BATCH_INDEX]))
            if self.bar is not None:
                self.bar.update(1)
                if step % 10 == 0:
                    self.bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
        elif ctx.event is Event.EPOCH_END:
            accuracy = self.model.accuracy(self.X_val, self.y_val)
            epoch = ctx.metrics[MetricKey.EPOCH_INDEX] + 1
            now = time.perf_counter()
            self.epoch_steps.append(ctx.task.step_count)
            self.val_accuracy.append(accuracy)
            self.epoch_losses.append(ctx.metrics[MetricKey.LOSS])
            width = len(str(self.epochs))
            self.write(f"epoch {epoch:>{width}}/{self.epochs}  loss "
                       f"{_number(ctx.metrics[MetricKey.LOSS])}  val_acc {accuracy:.4f}  lr "
                       f"{ctx.parameters[ParameterKey.LEARNING_RATE]:.4g}  "
                       f"{now - self.t_epoch:.2f} s")
            self.t_epoch = now

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _plot(path, reporter, title):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 7))
    FigureCanvasAgg(fig)
    ax_loss, ax_acc, ax_lr = fig.subplots(3, 1, sharex=True)
    ax_loss.plot(reporter.steps, reporter.losses, lw=0.8, alpha=0.5, label="mini-batch")
    ax_loss.plot(reporter.epoch_steps, reporter.epoch_losses, "o-", lw=1.5, label="epoch mean")
    ax_loss.set_ylabel("training loss")
    ax_loss.legend(fontsize=8)
    ax_acc.plot(reporter.epoch_steps, reporter.val_accuracy, "o-", color="tab:green")
    ax_acc.set_ylabel("validation accuracy")
    ax_lr.plot(reporter.steps, reporter.lrs, color="tab:red")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        fig.savefig(path)
    except (OSError, ValueError) as exc:
        raise CLIError(f"--plot {path!r}: cannot write the image: {exc}") from None


# ----------------------------------------------------------------------------------------
# The command.
# ----------------------------------------------------------------------------------------


def _config_from_args(args):
    seed = DEFAULTS["seed"] if args.seed is None else args.seed
    if not 0 <= seed < 2**63:
        raise CLIError(f"--seed must be an integer in [0, 2**63), got {seed}")
    return {"data": os.path.abspath(args.data) if args.data else None, "target": args.target,
            "val_fraction": args.val_fraction, "split_seed": seed,
            "model": args.model or "mlp", "hidden": args.hidden or 64}


def _config_from_checkpoint(args):
    try:
        _, meta = checkpoint.read(args.resume)
    except FileNotFoundError:
        raise CLIError(f"--resume {args.resume!r}: file does not exist") from None
    except (OSError, checkpoint.CheckpointError) as exc:
        raise CLIError(f"--resume: {exc}") from None
    config = (meta.get("user") or {}).get("lrcore train") if isinstance(meta, dict) else None
    if not isinstance(config, dict):
        raise CLIError(f"--resume {args.resume!r} was not written by `lrcore train --save`")
    for option, attr in (("--model", "model"), ("--hidden", "hidden")):
        given = getattr(args, attr)
        if given is not None and given != config[attr]:
            raise CLIError(f"{option} {given} conflicts with the checkpoint's {config[attr]}")
    if args.data:
        config = dict(config, data=os.path.abspath(args.data),
                      target=args.target if args.target is not None else config["target"])
    optimizer = meta["optimizer"]["class"].lower()
    if args.optimizer is not None and args.optimizer != optimizer:
        raise CLIError(f"--optimizer {args.optimizer} conflicts with the checkpoint, which "
                       f"was trained with {optimizer}")
    return config, optimizer


def run(args):
    _check_options(args)
    if args.resume:
        config, optimizer = _config_from_checkpoint(args)
    else:
        config, optimizer = _config_from_args(args), args.optimizer or DEFAULTS["optimizer"]
    X_train, y_train, X_val, y_val, n_classes = _load_data(config)
    if args.resume and (X_train.shape[1] != config["n_features"]
                        or n_classes != config["n_classes"]):
        raise CLIError(f"the data has {X_train.shape[1]} features and {n_classes} classes; "
                       f"the checkpoint's model has {config['n_features']} and "
                       f"{config['n_classes']}")
    config.update(n_features=int(X_train.shape[1]), n_classes=n_classes)
    parameters = _option_parameters(args, optimizer)
    model = _make_model(config)

    def loss_and_grad(batch, params, grads):
        return model.loss_and_grad(batch[0], batch[1], grads)

    data = (X_train, y_train)
    if args.resume:
        try:
            task = UpdateTask.load(args.resume, loss_and_grad, data, params=model.params)
        except (OSError, ValueError) as exc:
            raise CLIError(f"--resume: {exc}") from None
    else:
        parameters.setdefault(ParameterKey.LEARNING_RATE, DEFAULT_LR[optimizer])
        parameters.setdefault(ParameterKey.EPOCHS, DEFAULTS["epochs"])
        parameters.setdefault(ParameterKey.MINI_BATCH_SIZE, DEFAULTS["batch_size"])
        parameters.setdefault(ParameterKey.SEED, config["split_seed"])
        try:
            task = UpdateTask(model.params, loss_and_grad, data, optimizer=optimizer,
                              num_threads=args.threads)
        except (TypeError, ValueError) as exc:
            raise CLIError(str(exc)) from None
    current = task.parameters
    epochs = parameters.get(ParameterKey.EPOCHS, current[ParameterKey.EPOCHS])
    batch_size = parameters.get(ParameterKey.MINI_BATCH_SIZE,
                                current[ParameterKey.MINI_BATCH_SIZE])
    per_epoch = _steps_per_epoch(len(y_train), batch_size)
    if args.schedule:
        lr = parameters.get(ParameterKey.LEARNING_RATE, current[ParameterKey.LEARNING_RATE])
        lr = lr(task.step_count) if callable(lr) else lr
        parameters[ParameterKey.LEARNING_RATE] = build_schedule(
            args.schedule[0], args.schedule[1:],
            {"initial": lr, "max_value": lr, "steps": epochs * per_epoch,
             "total_steps": epochs * per_epoch})
    if args.threads is not None:
        task.optimizer.num_threads = args.threads
    if task.epoch >= epochs:
        print(f"nothing to do: the checkpoint has completed {task.epoch} of {epochs} epochs; "
              f"pass --epochs N with N > {task.epoch} to train further")
        return 0
    remaining = (epochs - task.epoch) * per_epoch - task.mini_batch
    use_bar = args.progress if args.progress is not None else (
        _has_tqdm() and sys.stderr.isatty())
    _print_header(config, task, parameters, len(y_train), len(y_val), epochs, per_epoch,
                  args.resume)
    reporter = _Reporter(model, X_val, y_val, len(y_train), remaining, use_bar, epochs)
    written = []

    def on_progress(ctx):
        reporter(ctx)
        if ctx.event is Event.EPOCH_END and args.save:
            ctx.task.save(args.save, meta={"lrcore train": config})

    task.progress_handlers = ProgressHandlers(Event.MINI_BATCH_END | Event.EPOCH_END, on_progress)
    start = time.perf_counter()
    try:
        state = task.resume(parameters)
    except (TypeError, ValueError) as exc:
        reporter.close()
        raise CLIError(str(exc).replace("UpdateTask: ", "")) from None
    except KeyboardInterrupt:
        reporter.close()
        where = f"epoch {task.epoch + 1} after {task.mini_batch} of {per_epoch} mini-batches"
        if args.save:
            task.save(args.save, meta={"lrcore train": config})
            print(f"interrupted in {where}; checkpoint written to {args.save} "
                  f"(continue with --resume {args.save})", file=sys.stderr)
        else:
            print(f"interrupted in {where}", file=sys.stderr)
        return 130
    elapsed = time.perf_counter() - start
    reporter.close()
    if task.error is not None:
        raise CLIError(f"training failed at epoch {task.epoch + 1}, mini-batch "
                       f"{task.mini_batch + 1}: {type(task.error).__name__}: {task.error}")
    if args.save:
        task.save(args.save, meta={"lrcore train": config})
        written.append(f"checkpoint {args.save}")
    if args.plot:
        _plot(args.plot, reporter, f"{_model_name(config)}, {type(task.optimizer).__name__}")
        written.append(f"plot {args.plot}")
    rate = reporter.samples / elapsed if elapsed > 0 else math.inf
    accuracy = reporter.val_accuracy[-1] if reporter.val_accuracy else model.accuracy(X_val, y_val)
    print(f"{state.name.lower()}: {len(reporter.steps)} steps, {reporter.samples:,} samples in "
          f"{elapsed:.2f} s ({rate:,.0f} samples/s); final val_acc {accuracy:.4f}")
    if reporter.losses and not math.isfinite(reporter.losses[-1]):
        print("warning: the loss is not finite; try a smaller --lr", file=sys.stderr)
    if written:
        print("wrote " + ", ".join(written))
    return 0


def _number(x):
    return f"{x:.4f}" if abs(x) < 1e4 else f"{x:.3e}"


def _has_tqdm():
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def _model_name(config):
    if config["model"] == "mlp":
        return f"MLP {config['n_features']}-{config['hidden']}-{config['n_classes']}"
    return f"softmax regression {config['n_features']}-{config['n_classes']}"


def _print_header(config, task, parameters, n_train, n_val, epochs, per_epoch, resuming):
    source = "digits (built-in)" if config["data"] is None else os.path.basename(config["data"])
    lr = parameters.get(ParameterKey.LEARNING_RATE, task.parameters[ParameterKey.LEARNING_RATE])
    lr = f"{lr:g}" if isinstance(lr, float) else repr(lr)
    start = f", resuming at epoch {task.epoch + 1}" if resuming else ""
    print(f"{_model_name(config)} on {source}: {n_train} train / {n_val} val samples; "
          f"{type(task.optimizer).__name__} lr {lr}; {epochs} epoch{'s' * (epochs != 1)} of "
          f"{per_epoch} mini-batches{start}")
