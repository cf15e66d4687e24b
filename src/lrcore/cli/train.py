"""`lrcore train`: train a small numpy classifier end to end with an lrcore UpdateTask.

Defaults need no arguments: the built-in 8x8 digits (lrcore/demo/data/LICENSE-digits.txt), an
80/20 train/validation split, features standardised with the training split's mean and
standard deviation, a one-hidden-layer MLP and Adam. Prints a progress bar (tqdm, if
installed), one line per epoch and a summary; optionally writes a checkpoint (--save,
continued with --resume) and a report figure (--plot).

Design: `run` reads as the steps of a run, each a function with one job: check the options
and files, the configuration (new, or from the checkpoint), data, model, the optimizer's
parameters from the options (`optimizer_parameters`) and the optimizer itself
(`make_optimizer`, the hook for options that change how it runs), the task, the schedule's
fit to the run's length, the loop, then the outputs. Optimizer choices, default learning
rates and the hyperparameter options come from the table of update rules (lrcore.rules).
Element types (issues 12, 13): --precision is the dtype of the model's params and grads
(lrcore.demo.models stores bfloat16/float16 and computes in float32) and the rounding;
--state-dtype the optimizer's state (lrcore.optim's state_dtype); both are checked together
before any work (check_precision) and kept in the checkpoint's configuration.
"""
import dataclasses
import math
import os
import sys
import time

import numpy as np

from .. import bench, checkpoint, lowp
from ..demo import datasets, models
from ..optim import precision as optim_precision
from ..rules import RULES, preset
from ..schedules import Schedule
from ..task import OPTIMIZERS, Event, ParameterKey, ProgressHandlers, UpdateTask
from . import (EXIT_FAILED, EXIT_INTERRUPTED, THREADS_DEFAULT, CLIError, check_threads, figure,
               thread_limit)
from .paths import PLOT_HINT, TQDM_HINT, input_file, output_file, plot_file
from .report import META_KEY, History, Reporter, header, summary, wrap
from .schedule import build as build_schedule
from .schedule import check_lr as check_schedule_lr
from .schedule import fillable_missing

HELP = "train a classifier with an update task (default: built-in digits, MLP, Adam)"
META_CONFIG = "lrcore train"

DEFAULTS = {"optimizer": "adam", "epochs": 10, "batch_size": 32, "seed": 0, "hidden": 64}

#: --precision -> (dtype of the model's params and grads, rounding of every stored value).
#: float64 is the default (float32 with --state-dtype int8, which needs float32 or bfloat16
#: params). The state's dtype is lrcore.optim's default for the params (their own dtype;
#: float32 for float16 params) unless --state-dtype says otherwise: so `bfloat16` and
#: `bfloat16-sr` keep *everything* in bfloat16 (param, grad, both Adam moments: 14 bytes per
#: element), and `bfloat16 --state-dtype float32` is bfloat16 params and grads with float32
#: state.
PRECISIONS = {
    "float64": ("float64", "nearest"),
    "float32": ("float32", "nearest"),
    "bfloat16": ("bfloat16", "nearest"),
    "bfloat16-sr": ("bfloat16", "stochastic"),
    "float16": ("float16", "nearest"),
}
STATE_DTYPES = ("float32", "bfloat16", "int8")


class _Default(float):
    """A default that behaves as its number but tells that the option was not given (a
    resumed run compares only the options given with its checkpoint's values)."""


VAL_FRACTION = _Default(0.2)

# ----------------------------------------------------------------------------------------
# Options, derived from the table of update rules and the task's parameter keys.
# ----------------------------------------------------------------------------------------


def _rule_of(name):
    """(Preset, Rule) of optimizer `name` in the table (every task optimizer has a row)."""
    row = preset(name)
    return row, RULES[row.rule]


def default_lr(name):
    """`lrcore train`'s default --lr for optimizer `name` (the table's cli_lr)."""
    row, rule = _rule_of(name)
    return row.cli_lr if row.cli_lr is not None else rule.cli_lr


def hyperparameter_names(name):
    """The hyperparameters optimizer `name` takes from the command line (table order)."""
    row, rule = _rule_of(name)
    return tuple(h.name for h in rule.public_hypers if h.name not in row.fixed)


def hyperparameter_options(name):
    """The options of `lrcore train` that set a hyperparameter of optimizer `name`, in
    the order --help shows them (--lr first): what an error may suggest."""
    usable = set(hyperparameter_names(name))
    return ["--lr"] + [option for option, hyper, _ in _hyper_keys() if hyper in usable]


def _hyper_keys():
    """(option, hyperparameter, ParameterKey) for every real-valued task key but the lr."""
    return [(f"--{k.value.hyperparameter.replace('_', '-')}", k.value.hyperparameter, k)
            for k in ParameterKey if k.value.hyperparameter and k.value.hyperparameter != "lr"]


def _hyper_help(hyper):
    """Help for one hyperparameter option: what it is and its default per optimizer."""
    docs, defaults, decoupled = [], [], []
    for name in sorted(OPTIMIZERS):
        row, rule = _rule_of(name)
        if hyper not in hyperparameter_names(name):
            continue
        h = rule.hyper(hyper)
        value = row.defaults.get(hyper, h.default)
        defaults.append(f"{name} {value:g}")
        if hyper == "weight_decay" and (row.fixed.get("decoupled_weight_decay")
                                        or h.doc.startswith("decoupled")):
            decoupled.append(name)
        elif h.doc and h.doc not in docs:
            docs.append(h.doc)
    text = "; ".join(docs) if docs else hyper.replace("_", " ")
    if decoupled:
        text += (f"; decoupled (param = param * (1 - lr * weight_decay)) in "
                 f"{', '.join(decoupled)}")
    return f"{text}; default: {', '.join(defaults)}"


def add_arguments(parser):
    data = parser.add_argument_group("data and model")
    data.add_argument("--data", metavar="FILE",
                      help="a .csv (header row, numeric cells) or .npz (arrays X and y) file; "
                           "default: the built-in 8x8 digits (1,797 samples, 10 classes)")
    data.add_argument("--target", metavar="NAME",
                      help="label column (CSV header name) or label array (NPZ); default: the "
                           "last CSV column, or the NPZ array y")
    data.add_argument("--val-fraction", type=float, default=VAL_FRACTION, metavar="F",
                      help="fraction of samples held out for validation (default 0.2); "
                           "features are standardised with the training part's mean and "
                           "standard deviation")
    data.add_argument("--model", choices=("mlp", "softmax"), default=None,
                      help="one-hidden-layer MLP (default) or softmax regression")
    data.add_argument("--hidden", type=int, default=None, metavar="H",
                      help=f"hidden units of the MLP (default {DEFAULTS['hidden']})")
    opt = parser.add_argument_group("optimizer")
    opt.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default=None,
                     help=f"update rule (default {DEFAULTS['optimizer']})")
    opt.add_argument("--lr", type=float, metavar="LR",
                     help="learning rate (default: " + ", ".join(
                         f"{k} {default_lr(k):g}" for k in sorted(OPTIMIZERS)) + ")")
    opt.add_argument("--schedule", nargs="+", metavar=("NAME", "key=value"),
                     help="learning-rate schedule by name with key=value arguments, e.g. "
                          "--schedule cosine floor=1e-5; a required `initial` or `max_value` left "
                          "out is --lr (an --lr that differs from one given, or with a schedule "
                          "that has neither, is an error), a required `steps`/`total_steps` the "
                          "run's total mini-batch steps (re-fit when --resume extends the run; see "
                          "`lrcore schedule --help` for the names)")
    for option, hyper, _ in _hyper_keys():
        opt.add_argument(option, type=float, dest=hyper, metavar="X", help=_hyper_help(hyper))
    add_runtime_arguments(opt)
    loop = parser.add_argument_group("loop")
    loop.add_argument("--epochs", type=int, help=f"default {DEFAULTS['epochs']} (with "
                                                  f"--resume: the total, counting those done)")
    loop.add_argument("--batch-size", type=int, dest="batch_size",
                      help=f"default {DEFAULTS['batch_size']}")
    loop.add_argument("--seed", type=int,
                      help="seeds the split, the initial weights, the shuffling and "
                           "stochastic rounding (default 0); with --resume all four come from "
                           "the checkpoint, and a --seed other than its own is an error")
    loop.add_argument("--no-shuffle", action="store_true",
                      help="visit the training samples in the same order every epoch")
    out = parser.add_argument_group("output")
    out.add_argument("--save", metavar="FILE",
                     help="write a checkpoint of the whole task after every epoch and at the end")
    out.add_argument("--resume", metavar="FILE",
                     help="continue from a --save checkpoint (model, data and optimizer come "
                          "from it; options given here override its values)")
    out.add_argument("--plot", metavar="FILE.png",
                     help="draw a report figure (loss on a log scale, validation accuracy, the "
                          "learning rate if it changes, against epochs; a resumed run's covers "
                          "the whole run); the extension picks the format: .png, .pdf, .svg, "
                          f"... (needs matplotlib: {PLOT_HINT})")
    bar = out.add_mutually_exclusive_group()
    bar.add_argument("--progress", action="store_true", default=None,
                     help=f"always show the progress bar (needs tqdm: {TQDM_HINT})")
    bar.add_argument("--no-progress", action="store_false", dest="progress",
                     help="never show the progress bar (default: shown when tqdm is installed "
                          "and stderr is a terminal)")


# ----------------------------------------------------------------------------------------
# Checking the options and files, before any work.
# ----------------------------------------------------------------------------------------


def _check_values(args):
    """The checks of the numbers and choices given that need neither data nor files (a
    one-process run and --distributed alike)."""
    if args.threads is not None:
        check_threads("--threads", [args.threads])
    if args.hidden is not None and args.hidden < 1:
        raise CLIError(f"--hidden must be an integer >= 1, got {args.hidden}")
    if not 0.0 < args.val_fraction < 1.0:
        raise CLIError(f"--val-fraction must be a number strictly between 0 and 1, got "
                       f"{args.val_fraction!r}")
    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise CLIError(f"--seed must be an integer in [0, 2**63), got {args.seed}")
    if args.schedule:
        check_schedule_lr(args.schedule[0], args.schedule[1:], args.lr)
    if args.resume is None:
        check_precision(args.precision, args.state_dtype,
                        args.optimizer or DEFAULTS["optimizer"])


def _check_distinct_files(args):
    """No two of --data, --resume, --save and --plot name one file (but --save may be the
    --resume file it continues): a checkpoint or figure written over the data, the
    checkpoint or each other would be lost."""
    files = [(o, p) for o, p in (("--data", args.data), ("--resume", args.resume),
                                 ("--save", args.save), ("--plot", args.plot)) if p]
    for i, (first, a) in enumerate(files):
        for second, b in files[i + 1:]:
            if {first, second} == {"--resume", "--save"}:
                continue
            if os.path.realpath(a) == os.path.realpath(b):
                raise CLIError(f"{first} and {second} name the same file, {b!r}" + (
                    f"; {second} would overwrite it" if second in ("--save", "--plot")
                    else ""))


def _check_options(args):
    """Every check that needs no data: numbers, optional packages, files. Returns the
    checked plot (path, format) or None."""
    _check_values(args)
    if args.progress:
        try:
            import tqdm  # noqa: F401
        except ImportError:
            raise CLIError(f"--progress needs tqdm, an optional dependency: {TQDM_HINT}") \
                from None
    _check_distinct_files(args)
    if args.resume is not None:
        input_file("--resume", args.resume, "a checkpoint file written by --save")
    if args.save is not None:
        output_file("--save", args.save)
    return plot_file("--plot", args.plot) if args.plot is not None else None


def optimizer_parameters(args, optimizer):
    """{ParameterKey: value} for the optimizer and loop options given, checked, with the
    option's name in any error."""
    usable = set(hyperparameter_names(optimizer))
    rule = _rule_of(optimizer)[1]
    out = {}
    options = [("--lr", "lr", ParameterKey.LEARNING_RATE)] + _hyper_keys() + [
        ("--epochs", "epochs", ParameterKey.EPOCHS),
        ("--batch-size", "batch_size", ParameterKey.MINI_BATCH_SIZE),
        ("--seed", "seed", ParameterKey.SEED)]
    for option, attr, key in options:
        value = getattr(args, attr)
        if value is None:
            continue
        hyper = key.value.hyperparameter
        if hyper and hyper not in usable:
            raise CLIError(f"{option} does not apply to --optimizer {optimizer} (it takes "
                           f"{', '.join(hyperparameter_options(optimizer))})")
        try:                           # the ranges and their wording are the table's
            out[key] = key.validate(value, rule=rule if hyper else None)
        except (TypeError, ValueError):
            expected = key.value.describe(rule if hyper else None)
            raise CLIError(f"{option} must be {expected.replace(' or a lrcore Schedule', '')}"
                           f", got {value!r}") from None
    if args.no_shuffle:
        out[ParameterKey.SHUFFLE] = False
    return out


# ----------------------------------------------------------------------------------------
# The hook for options that change how the optimizer runs (threads, distribution, element
# and state types): declared in add_runtime_arguments, applied in make_optimizer.
# ----------------------------------------------------------------------------------------


def add_runtime_arguments(group):
    """Options that change how the optimizer runs rather than what it computes; each is
    applied in make_optimizer. --distributed (issue 14), --precision (issue 12) and
    --state-dtype (issue 13) belong here."""
    limit = thread_limit()
    group.add_argument("--threads", type=int, metavar="N",
                       help="threads for the optimizer step" + (
                           f", 1 to {limit} on this machine" if limit else "") +
                       f" (default: {THREADS_DEFAULT})")
    group.add_argument("--distributed", action="store_true",
                       help="data-parallel over MPI ranks: mpiexec -n N python -m mpi4py -m "
                            "lrcore train --distributed (lrcore.distributed.train)")
    group.add_argument("--precision", choices=tuple(PRECISIONS), default=None,
                       help="element type of the model's params and grads, which the "
                            "optimizer updates in place: float64 (default; float32 with "
                            "--state-dtype int8), float32, bfloat16 (rounded to nearest), "
                            "bfloat16-sr (stochastic rounding, seeded by --seed) or float16. "
                            "bfloat16 and float16 params are stored in that type; the forward "
                            "and backward passes widen them to float32, compute in float32 and "
                            "round each gradient element to nearest into a buffer of the "
                            "params' type. The optimizer's state is bfloat16 for bfloat16 "
                            "params (everything bfloat16), float32 for float16 params, unless "
                            "--state-dtype says otherwise")
    group.add_argument("--state-dtype", choices=STATE_DTYPES, default=None, dest="state_dtype",
                       help="element type of the optimizer's state (default: as --precision "
                            "says): float32 (with float32, bfloat16 or float16 params), "
                            "bfloat16 (with bfloat16 params) or int8: 8-bit codes in blocks of "
                            "256 with one float32 absmax each, for buffers of at least 4096 "
                            "elements (smaller ones keep float32 state), with "
                            + _either(list(bench.int8_param_dtypes())) + " params, for the "
                            "optimizers " + ", ".join(int8_optimizers()) + "; the summary "
                            "shows the state's bytes")


def int8_optimizers():
    """The optimizers `--state-dtype int8` applies to (those whose rule is in
    lrcore.quantization.INT8_RULES), in the table's order."""
    rules = optim_precision.int8_rules()
    return [name for name in OPTIMIZERS if _rule_of(name)[1].name in rules]


def resolved_precision(precision, state_dtype):
    """--precision as given, or its default: float64, float32 with --state-dtype int8."""
    if precision is not None:
        return precision
    return "float32" if state_dtype == "int8" else "float64"


def check_precision(precision, state_dtype, optimizer):
    """--precision, --state-dtype and the optimizer fit together (a layout lrcore.optim
    supports), else a one-line CLIError naming the options; checked before any work."""
    param = PRECISIONS[resolved_precision(precision, state_dtype)][0]
    shown = f"--precision {resolved_precision(precision, state_dtype)}" + (
        " (the default)" if precision is None else "")
    if state_dtype == "int8":
        usable = int8_optimizers()
        if optimizer not in usable:
            raise CLIError(f"--state-dtype int8 does not apply to --optimizer {optimizer}; "
                           f"8-bit state is for {', '.join(usable) or 'no optimizer here'}")
        allowed = bench.int8_param_dtypes()
        if param not in allowed:
            fits = [name for name, (p, _) in PRECISIONS.items() if p in allowed]
            raise CLIError(f"--state-dtype int8 needs {_either(list(allowed))} params "
                           f"(--precision {_either(fits)}), got {shown}")
    elif state_dtype is not None and (param, param, state_dtype) not in lowp.LAYOUTS:
        fits = [name for name, (p, _) in PRECISIONS.items()
                if (p, p, state_dtype) in lowp.LAYOUTS]
        params = list(dict.fromkeys(PRECISIONS[name][0] for name in fits))
        raise CLIError(f"--state-dtype {state_dtype} needs {_either(params)} params "
                       f"(--precision {_either(fits)}), got {shown}")


def _either(names):
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def precision_options(args):
    """The optimizer's keyword arguments for --precision and --state-dtype ({} when neither
    is given: the optimizer's own defaults, as before these options)."""
    if args.precision is None and args.state_dtype is None:
        return {}
    rounding = PRECISIONS[resolved_precision(args.precision, args.state_dtype)][1]
    seed = DEFAULTS["seed"] if args.seed is None else args.seed
    return {"state_dtype": args.state_dtype, "rounding": rounding, "seed": seed}


def make_optimizer(args, name, params, loaded=None):
    """The optimizer the task steps with: a new `name` over `params`, or the one a
    checkpoint restored (`loaded`), with the options that change how it runs applied.

    The hook for such options: --threads, --precision and --state-dtype (the params
    already have the --precision dtype: the model made them so); --distributed (issue 14)
    is handed to lrcore.distributed before this. A checkpoint's optimizer keeps its state
    dtype, rounding and seed (the random stream continues). Hyperparameters are not set
    here (optimizer_parameters gives them to the task)."""
    if loaded is not None:
        if args.threads is not None:
            loaded.num_threads = args.threads
        return loaded
    try:
        return OPTIMIZERS[name](params, num_threads=args.threads, **precision_options(args))
    except (TypeError, ValueError) as exc:
        raise CLIError(str(exc)) from None


# ----------------------------------------------------------------------------------------
# Configuration, data, model.
# ----------------------------------------------------------------------------------------


def _config_from_args(args):
    seed = DEFAULTS["seed"] if args.seed is None else args.seed
    if not 0 <= seed < 2**63:
        raise CLIError(f"--seed must be an integer in [0, 2**63), got {seed}")
    return {"data": os.path.abspath(args.data) if args.data else None, "target": args.target,
            "val_fraction": float(args.val_fraction), "split_seed": seed,
            "model": args.model or "mlp", "hidden": args.hidden or DEFAULTS["hidden"],
            "precision": resolved_precision(args.precision, args.state_dtype),
            "state_dtype": args.state_dtype}


def _read_checkpoint(args):
    """(config, optimizer name, history) from a --resume file written by lrcore train."""
    try:
        _, meta = checkpoint.read(args.resume)
    except FileNotFoundError:
        raise CLIError(f"--resume {args.resume!r}: file does not exist") from None
    except (OSError, checkpoint.CheckpointError) as exc:
        raise CLIError(f"--resume: {exc}") from None
    user = (meta.get("user") or {}) if isinstance(meta, dict) else {}
    config = user.get(META_CONFIG)
    if not isinstance(config, dict):
        raise CLIError(f"--resume {args.resume!r} was not written by `lrcore train --save`")
    # checkpoints written before --precision and --state-dtype: float64, the default state
    config = dict({"precision": "float64", "state_dtype": None}, **config)
    for option, attr in (("--model", "model"), ("--hidden", "hidden"),
                         ("--precision", "precision"), ("--state-dtype", "state_dtype")):
        given = getattr(args, attr)
        if attr == "state_dtype" and given is not None:
            # equal in meaning, not as written: `--state-dtype bfloat16` resumes a bfloat16
            # run saved without it (its state is bfloat16), `float32` a float32/float16 one
            held = _state_dtype_of(config["precision"], config["state_dtype"])
            if _state_dtype_of(config["precision"], given) != held:
                how = (f"--state-dtype {config['state_dtype']}" if config["state_dtype"]
                       else "without --state-dtype")
                raise CLIError(f"--state-dtype {given} conflicts with the checkpoint's "
                               f"{held} state (trained with --precision "
                               f"{config['precision']} {how}; the params and the optimizer's "
                               f"state keep their types in a resumed run)")
            continue
        if given is not None and given != config[attr]:
            held = (f"checkpoint's {config[attr]}" if config[attr] else
                    f"checkpoint, trained without {option}")
            raise CLIError(f"{option} {given} conflicts with the {held} (the params and the "
                           f"optimizer's state keep their types in a resumed run)"
                           if attr in ("precision", "state_dtype") else
                           f"{option} {given} conflicts with the checkpoint's {config[attr]}")
    if args.seed is not None and args.seed != config.get("split_seed"):
        raise CLIError(f"--seed {args.seed} conflicts with the checkpoint's "
                       f"{config.get('split_seed')} (a resumed run keeps its split, initial "
                       f"weights, shuffling and rounding stream)")
    if not isinstance(args.val_fraction, _Default) and \
            args.val_fraction != config.get("val_fraction"):
        raise CLIError(f"--val-fraction {args.val_fraction:g} conflicts with the checkpoint's "
                       f"{config.get('val_fraction')} (a resumed run keeps its training and "
                       f"validation split)")
    if args.data or args.target is not None:   # --target alone: a column of the saved data
        config = dict(config, data=os.path.abspath(args.data) if args.data else config["data"],
                      target=args.target if args.target is not None else config["target"])
    optimizer = meta["optimizer"]["class"].lower()
    if args.optimizer is not None and args.optimizer != optimizer:
        raise CLIError(f"--optimizer {args.optimizer} conflicts with the checkpoint, which "
                       f"was trained with {optimizer}")
    return config, optimizer, History(user.get(META_KEY))


def _load_data(config):
    """(X_train, y_train, X_val, y_val, n_classes), features standardised."""
    try:
        if config["data"] is None:
            if config["target"] is not None:
                raise CLIError("--target needs --data FILE (the built-in digits have no "
                               "columns to choose from)")
            X, y = datasets.load_digits()
        else:
            X, y = datasets.load_table(config["data"], config["target"])
    except UnicodeDecodeError as exc:      # a ValueError whose text names no file
        raise CLIError(f"data file {config['data']!r} is not a UTF-8 text CSV file (byte "
                       f"{exc.object[exc.start:exc.start + 1].hex()} at offset {exc.start} "
                       f"cannot be decoded)") from None
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
    with np.errstate(over="ignore", invalid="ignore"):
        X_train, X_val = datasets.standardize(X_train, X_val)
    if not (np.isfinite(X_train).all() and np.isfinite(X_val).all()):
        raise CLIError(f"data file {config['data']!r}: standardising the features with the "
                       f"training part's mean and standard deviation overflows float64 (values "
                       f"too large); rescale the data")
    return X_train, y_train, X_val, y_val, n_classes


def _param_dtype(config):
    name = PRECISIONS[config["precision"]][0]
    return lowp.bfloat16 if name == "bfloat16" else np.dtype(name)


def _make_model(config):
    """The model, its params in the --precision dtype (lrcore.demo.models: bfloat16 and
    float16 params are stored in that type, computed in float32)."""
    if config["model"] == "mlp":
        return models.MLP(config["n_features"], config["hidden"], config["n_classes"],
                          dtype=_param_dtype(config), seed=config["split_seed"])
    return models.SoftmaxRegression(config["n_features"], config["n_classes"],
                                    dtype=_param_dtype(config), seed=config["split_seed"])


def _too_large(config):
    """The one-line error for a model whose params do not fit in memory, naming what made
    it so large: --hidden, or labels that make as many classes as the largest label + 1."""
    classes, hidden = config["n_classes"], config["hidden"]
    if config["model"] == "mlp":
        n = config["n_features"] * hidden + hidden + hidden * classes + classes
    else:
        n = config["n_features"] * classes + classes
    itemsize = np.dtype(PRECISIONS[config["precision"]][0].replace("bfloat16", "float16"))\
        .itemsize
    causes = []
    if config["model"] == "mlp" and hidden > 10**6:
        causes.append(f"--hidden {hidden}")
    if classes > 10**6:
        causes.append(f"{classes} classes (the target's labels are class numbers 0, 1, 2, "
                      f"..., so its largest label, {classes - 1}, makes {classes})")
    why = " and ".join(causes) or f"{config['n_features']} features"
    return (f"the model does not fit in memory: {_model_name(config)} has {n:,} params "
            f"({n * itemsize:,} bytes), from {why}")


def _state_dtype_of(precision, state_dtype):
    """The optimizer state's type under --precision `precision` and --state-dtype
    `state_dtype` (None: lrcore.optim's default for the params, their own dtype; float32
    for float16 params)."""
    param = PRECISIONS.get(precision, (precision,))[0]
    return state_dtype or ("float32" if param == "float16" else param)


def _state_text(config):
    state = _state_dtype_of(config["precision"], config["state_dtype"])
    return state + (" (float32 below 4096 elements)" if state == "int8" else "")


def describe_precision(config):
    """--precision and --state-dtype in words, for the header."""
    name = config["precision"]
    param, rounding = PRECISIONS[name]
    text = f"{name}: params and grads {param}, state {_state_text(config)}"
    if param in ("bfloat16", "float16") or config["state_dtype"] == "bfloat16":
        text += f", {rounding} rounding"
    return text


def _model_name(config):
    if config["model"] == "mlp":
        return f"MLP {config['n_features']}-{config['hidden']}-{config['n_classes']}"
    return f"softmax regression {config['n_features']}-{config['n_classes']}"


def _data_name(config):
    return "digits (built-in)" if config["data"] is None else os.path.basename(config["data"])


# ----------------------------------------------------------------------------------------
# Divergence: the first non-finite loss or gradient stops the run before its step.
# ----------------------------------------------------------------------------------------


class Diverged(Exception):
    """A mini-batch's loss or gradient is not finite; its step was not applied."""

    def __init__(self, what, value):
        super().__init__(f"{what} is {value}")
        self.what, self.value = what, value


def _guarded_loss_and_grad(model):
    def loss_and_grad(batch, params, grads):
        loss = model.loss_and_grad(batch[0], batch[1], grads)
        if not math.isfinite(loss):
            raise Diverged("the loss", loss)
        for g in grads:
            if not np.isfinite(g).all():
                raise Diverged("the gradient", "not finite (loss " f"{loss:.4g})")
        return loss
    return loss_and_grad


def _diverged_message(task, exc, per_epoch):
    lr = task.parameters[ParameterKey.LEARNING_RATE]
    scheduled = isinstance(lr, Schedule)
    value = lr(task.step_count) if scheduled else lr
    hint = (f"try a smaller --lr (e.g. {value / 10:.2g})" if not scheduled else
            f"try a schedule with smaller values (e.g. --lr {value / 10:.2g})")
    return (f"diverged at step {task.step_count + 1} (epoch {task.epoch + 1}, mini-batch "
            f"{task.mini_batch + 1}/{per_epoch}, lr {value:.4g}): {exc.what} is {exc.value}; "
            f"stopped before that step; {hint}")


# ----------------------------------------------------------------------------------------
# The schedule and the run's length.
# ----------------------------------------------------------------------------------------


def _schedule_spec(args, lr, total_steps):
    """The --schedule given, as plain data for the checkpoint: name, arguments, the
    values filled in, and whether its length was taken from the run's."""
    name, pairs = args.schedule[0], list(args.schedule[1:])
    fill = {"initial": lr, "max_value": lr, "steps": total_steps, "total_steps": total_steps}
    missing = fillable_missing(name, pairs)
    return {"name": name, "arguments": pairs,
            "fill": {k: v for k, v in fill.items() if k in missing},
            "fitted": any(k in ("steps", "total_steps") for k in missing),
            "length": total_steps}


def _build(spec, total_steps):
    """The schedule of `spec` for a run of `total_steps`: a length left out is the run's;
    for a schedule whose `steps` follow a warm-up (warmup_cosine: warmup_steps + steps in
    all), the run's less the warm-up, so that it ends with the run."""
    fill = dict(spec["fill"])
    warmup = _argument_int(spec, "warmup_steps") or 0
    for key in ("steps", "total_steps"):
        if key in fill:
            fill[key] = total_steps - warmup if key == "steps" else total_steps
    if "steps" in fill and warmup > 0 and fill["steps"] < warmup:
        raise CLIError(f"--schedule {spec['name']}: warmup_steps={warmup} leaves "
                       f"{max(fill['steps'], 0)} of the run's {total_steps} steps for what "
                       f"follows the warm-up, less than the warm-up itself; give a shorter "
                       f"warmup_steps, more --epochs, or steps= explicitly")
    return build_schedule(spec["name"], spec["arguments"], fill)


def _argument_int(spec, name):
    """The integer value of argument `name` in the spec's key=value pairs, else None."""
    for pair in spec["arguments"]:
        key, _, value = pair.partition("=")
        if key.strip().lstrip("-").replace("-", "_") == name:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _explicit_length(spec):
    """The step at which a schedule given its length ends (warm-up included), else None."""
    for name in ("steps", "total_steps"):
        n = _argument_int(spec, name)
        if n is not None:
            warmup = (_argument_int(spec, "warmup_steps") or 0) if name == "steps" else 0
            return n + warmup
    return None


def _fit_schedule(args, task, parameters, spec, total_steps):
    """Set the learning-rate schedule for a run of `total_steps` steps in all; returns the
    schedule's spec (to save) and a note for the user or None.

    A new --schedule is built for the whole run. Without one, a resumed run keeps the
    checkpoint's schedule, except that one whose length came from the run's (`steps` left
    out) is re-fit to the new length when --epochs changed it: what `--epochs` means. A
    schedule given an explicit length shorter than the run holds its final value after
    it; the note says so."""
    note = None
    if args.schedule:
        lr = parameters.get(ParameterKey.LEARNING_RATE, task.parameters[
            ParameterKey.LEARNING_RATE])
        lr = lr(task.step_count) if isinstance(lr, Schedule) else lr
        spec = _schedule_spec(args, lr, total_steps)
        parameters[ParameterKey.LEARNING_RATE] = _build(spec, total_steps)
    elif spec is not None and ParameterKey.LEARNING_RATE not in parameters:
        if spec["fitted"] and spec["length"] != total_steps:
            schedule = _build(spec, total_steps)
            note = (f"note: the {spec['name']} schedule was fit to the run's length, "
                    f"{spec['length']} steps; re-fit to {total_steps} steps: {schedule!r}")
            spec = dict(spec, length=total_steps)
            parameters[ParameterKey.LEARNING_RATE] = schedule
    elif ParameterKey.LEARNING_RATE in parameters:
        spec = None           # --lr replaces a saved schedule by a constant
    if spec is not None and not spec["fitted"]:
        end = _explicit_length(spec)
        if end is not None and end < total_steps and task.step_count < total_steps:
            schedule = parameters.get(ParameterKey.LEARNING_RATE)
            if schedule is None:
                schedule = task.parameters[ParameterKey.LEARNING_RATE]
            note = (f"warning: the {spec['name']} schedule ends at step {end}, before the "
                    f"run's {total_steps}; after it the lr stays {schedule(end):g}")
    return spec, note


# ----------------------------------------------------------------------------------------
# The command: set up, plan, announce, train, finish.
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Run:
    """What the steps of one `lrcore train` share."""
    config: dict
    model: object
    X_val: np.ndarray
    y_val: np.ndarray
    n_train: int
    task: UpdateTask
    parameters: dict            # {ParameterKey: value} given to task.resume
    history: History
    epochs: int = 0
    batch_size: int = 0
    per_epoch: int = 0
    remaining: int = 0          # steps this process will take
    lr: object = None           # the lr or schedule in force

    def save(self, path):
        self.task.save(path, meta={META_CONFIG: self.config, META_KEY: self.history.to_meta()})


def _set_up(args):
    """Configuration, data, model and task, new or from --resume."""
    if args.resume:
        config, optimizer, history = _read_checkpoint(args)
    else:
        config, optimizer, history = (_config_from_args(args),
                                      args.optimizer or DEFAULTS["optimizer"], History())
    X_train, y_train, X_val, y_val, n_classes = _load_data(config)
    if args.resume and (X_train.shape[1] != config["n_features"]
                        or n_classes != config["n_classes"]):
        raise CLIError(f"the data has {X_train.shape[1]} features and {n_classes} classes; "
                       f"the checkpoint's model has {config['n_features']} and "
                       f"{config['n_classes']}")
    config.update(n_features=int(X_train.shape[1]), n_classes=n_classes)
    parameters = optimizer_parameters(args, optimizer)
    if args.resume:     # the checkpoint's seed (the loop's, kept whatever --seed says)
        parameters.pop(ParameterKey.SEED, None)
    try:
        model = _make_model(config)
    except MemoryError:
        raise CLIError(_too_large(config)) from None
    loss_and_grad = _guarded_loss_and_grad(model)
    data = (X_train, y_train)
    try:
        if args.resume:
            task = UpdateTask.load(args.resume, loss_and_grad, data, params=model.params)
            make_optimizer(args, optimizer, model.params, loaded=task.optimizer)
        else:
            parameters.setdefault(ParameterKey.LEARNING_RATE, default_lr(optimizer))
            parameters.setdefault(ParameterKey.EPOCHS, DEFAULTS["epochs"])
            parameters.setdefault(ParameterKey.MINI_BATCH_SIZE, DEFAULTS["batch_size"])
            parameters.setdefault(ParameterKey.SEED, config["split_seed"])
            task = UpdateTask(model.params, loss_and_grad, data,
                              optimizer=make_optimizer(args, optimizer, model.params))
    except (OSError, TypeError, ValueError) as exc:
        raise CLIError(f"--resume: {exc}" if args.resume else str(exc)) from None
    return _Run(config, model, X_val, y_val, len(y_train), task, parameters, history)


def _measure(run):
    """The run's length: epochs in all, mini-batches per epoch, steps still to take."""
    task, current = run.task, run.task.parameters
    run.epochs = run.parameters.get(ParameterKey.EPOCHS, current[ParameterKey.EPOCHS])
    run.batch_size = run.parameters.get(ParameterKey.MINI_BATCH_SIZE,
                                        current[ParameterKey.MINI_BATCH_SIZE])
    saved = current[ParameterKey.MINI_BATCH_SIZE]
    if task.mini_batch and run.batch_size != saved:
        # the position in the epoch is counted in mini-batches of the saved size: the run's
        # length (a schedule fit to it, the progress bar) and the samples counted would be off
        raise CLIError(f"--batch-size {run.batch_size} differs from the checkpoint's {saved}, "
                       f"which stopped in the middle of epoch {task.epoch + 1} (after "
                       f"{task.mini_batch} of {-(-run.n_train // saved)} mini-batches); resume "
                       f"with --batch-size {saved} (a checkpoint saved at an epoch's end may "
                       f"change it)")
    run.per_epoch = -(-run.n_train // run.batch_size)
    run.remaining = max(0, (run.epochs - task.epoch) * run.per_epoch - task.mini_batch)


def _plan(args, run):
    """The schedule for the run's length and the history's resume mark; returns a note for
    the user, or None."""
    task, current = run.task, run.task.parameters
    spec, note = _fit_schedule(args, task, run.parameters, run.config.get("schedule"),
                               task.step_count + run.remaining)
    run.config["schedule"] = spec
    run.lr = run.parameters.get(ParameterKey.LEARNING_RATE, current[ParameterKey.LEARNING_RATE])
    if args.resume and task.step_count:
        position = task.epoch + task.mini_batch / run.per_epoch
        run.history.cut(position)
        run.history.resumed_at.append(position)
    return note


def _announce(args, run, note):
    print(header(_model_name(run.config), _data_name(run.config), run.n_train, len(run.y_val),
                 type(run.task.optimizer).__name__, run.lr, run.epochs, run.per_epoch,
                 run.batch_size, run.task.epoch + 1 if args.resume else None,
                 precision=None if _default_precision(run.config)
                 else describe_precision(run.config)), flush=True)
    if note:
        print(wrap(f"lrcore train: {note}"), file=sys.stderr, flush=True)


def _default_precision(config):
    return config["precision"] == "float64" and config["state_dtype"] is None


def _has_tqdm():
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def _train(args, run):
    """Run the task with the reporter (and a checkpoint after every epoch); returns
    (reporter, seconds). Ctrl-C propagates after the reporter is closed."""
    use_bar = args.progress if args.progress is not None else (
        _has_tqdm() and sys.stderr.isatty())
    reporter = Reporter(run.model, run.X_val, run.y_val, run.n_train, run.history,
                        run.per_epoch, run.epochs, run.remaining, use_bar, run.task.epoch)

    def on_progress(ctx):
        if ctx.event is Event.EPOCH_END and args.save:
            run.save(args.save)          # before the report: a closed stdout loses nothing
        reporter(ctx)

    run.task.progress_handlers = ProgressHandlers(Event.MINI_BATCH_END | Event.EPOCH_END,
                                                  on_progress)
    start = time.perf_counter()
    try:
        # non-finite values are caught by _guarded_loss_and_grad, not printed by numpy
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            run.task.resume(run.parameters)
    except (TypeError, ValueError) as exc:
        raise CLIError(str(exc).replace("UpdateTask: ", "")) from None
    finally:
        reporter.close()
    return reporter, time.perf_counter() - start


def _interrupted(args, run):
    task = run.task
    where = f"epoch {task.epoch + 1} after {task.mini_batch} of {run.per_epoch} mini-batches"
    if args.save:
        run.save(args.save)
        print(f"interrupted in {where}; checkpoint written to {args.save} "
              f"(continue with --resume {args.save})", file=sys.stderr)
    else:
        print(f"interrupted in {where}", file=sys.stderr)
    return EXIT_INTERRUPTED


def _check_outcome(run):
    """A failed task as one line: a closed stdout is re-raised (quiet exit), divergence and
    any other failure are exit code 1."""
    task, error = run.task, run.task.error
    if error is None:
        return
    if isinstance(error, BrokenPipeError):
        raise error
    if isinstance(error, Diverged):
        raise CLIError(_diverged_message(task, error, run.per_epoch), EXIT_FAILED)
    raise CLIError(f"training failed in epoch {task.epoch + 1}, mini-batch "
                   f"{task.mini_batch + 1}: {type(error).__name__}: {error}", EXIT_FAILED)


def _draw(run, plot):
    """The --plot figure of the run's history (the whole run's, when resumed)."""
    figure.draw(run.history, *plot, epochs=run.epochs, steps_per_epoch=run.per_epoch,
                title=f"{_model_name(run.config)} on {_data_name(run.config)}, "
                      f"{type(run.task.optimizer).__name__}, batch {run.batch_size}",
                lr_text=f"{run.lr:g}" if isinstance(run.lr, float) else repr(run.lr))


def _finish(args, run, plot, reporter, elapsed):
    """The final checkpoint, the figure and the summary."""
    written = []
    if args.save:
        run.save(args.save)
        written.append(f"checkpoint {args.save}")
    if plot:
        _draw(run, plot)
        written.append(f"plot {plot[0]}")
    accuracy = (run.history.val_acc[-1] if run.history.val_acc
                else run.model.accuracy(run.X_val, run.y_val))
    print(summary(run.task.state.name.lower(), reporter.steps, reporter.samples, elapsed,
                  accuracy, written, precision=run.config["precision"],
                  state=f"{run.task.optimizer.state_nbytes():,} bytes, "
                        f"{_state_text(run.config)}"))


def _check_distributed(args):
    """The checks of a one-process run's numbers and hyperparameter options, for
    --distributed (which takes them from `args` without checking ranges or whether they
    apply to the optimizer); every rank finds the same error, and only rank 0 prints it."""
    try:
        _check_values(args)
        if args.progress:
            raise CLIError("--progress is not supported with --distributed (rank 0 prints one "
                           "line per epoch)")
        optimizer_parameters(args, args.optimizer or DEFAULTS["optimizer"])
    except CLIError:
        try:
            from ..distributed._comm import import_mpi
            if import_mpi().COMM_WORLD.Get_rank() != 0:
                sys.stderr = open(os.devnull, "w")       # noqa: SIM115 - until exit
        except Exception:  # noqa: BLE001 - no MPI: one process, which prints the error
            pass
        raise


def run(args):
    if args.distributed:   # issue 14: the data-parallel loop lives in lrcore.distributed
        _check_distributed(args)          # as one process checks them, before any work
        from ..distributed.train import run as run_distributed
        return run_distributed(args)
    plot = _check_options(args)
    job = _set_up(args)
    _measure(job)
    if job.task.epoch >= job.epochs:
        print(f"nothing to do: the checkpoint has completed {job.task.epoch} of {job.epochs} "
              f"epochs; pass --epochs N with N > {job.task.epoch} to train further")
        if args.save:         # asked for: the run the checkpoint holds, written as asked
            job.save(args.save)
            print(f"wrote checkpoint {args.save}")
        if plot:              # the figure of the run the checkpoint holds
            job.lr = job.parameters.get(ParameterKey.LEARNING_RATE,
                                        job.task.parameters[ParameterKey.LEARNING_RATE])
            _draw(job, plot)
            print(f"wrote plot {plot[0]}")
        return 0
    _announce(args, job, _plan(args, job))
    try:
        reporter, elapsed = _train(args, job)
    except KeyboardInterrupt:
        return _interrupted(args, job)
    _check_outcome(job)
    _finish(args, job, plot, reporter, elapsed)
    return 0
