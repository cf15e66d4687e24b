"""Data-parallel training of the demo classifiers over MPI (`lrcore train --distributed`).

Design: every rank loads the same data and builds the same model (same seed); every
mini-batch, drawn in the same shuffled order on every rank, is split across the ranks
(rank r takes samples r, r+W, ...). Each rank's gradient of its slice's mean loss is scaled
by W * n_r / n, so the ShardedOptimizer's average is the whole mini-batch's mean gradient,
and one optimizer step (state sharded 1/W per rank) follows. Every local piece of work
(data, loss and gradient, reporting) runs under a per-step agreement: an exception on any
rank makes every rank stop at the same step with the failing rank's message; a rank that
stops answering makes the others give up after the timeout (then MPI_Abort ends it). Only
rank 0 prints. --precision and --state-dtype act as in one process (lrcore train's check and
optimizer options; the model stores its params in that dtype and its grads are rounded to
it), the ShardedOptimizer averaging half-precision grads in float32.
"""
import math
import os
import sys
import time

import numpy as np

from ._comm import DEFAULT_TIMEOUT, DistributedError, agree, import_mpi
from .sharded import ShardedOptimizer

__all__ = ["train", "run"]


class _Silent:
    def write(self, s):
        return len(s)

    def flush(self):
        pass


def train(X_train, y_train, X_val, y_val, model, optimizer_class, *, lr, hyperparameters=None,
          epochs=10, batch_size=32, seed=0, shuffle=True, num_threads=None, comm=None,
          timeout=DEFAULT_TIMEOUT, out=None, on_epoch=None, optimizer_options=None):
    """Train `model` (lrcore.demo.models, params updated in place) data-parallel on `comm`.

    Returns {"val_accuracy", "steps", "samples", "seconds", "epoch_losses", "state_nbytes"}
    on every rank. `out`: where rank 0 writes one line per epoch (None: nothing).
    `on_epoch(epoch, loss, accuracy)` runs on every rank after each epoch (a raise there
    stops every rank). `optimizer_options`: the optimizer's state_dtype, rounding and seed
    (lrcore.optim; the model's params already have their dtype, bfloat16 or float16 too:
    the grads are made in it and averaged in float32, rounded once)."""
    MPI = import_mpi()
    comm = MPI.COMM_WORLD if comm is None else comm
    rank, world = comm.Get_rank(), comm.Get_size()
    opt = ShardedOptimizer(model.params, optimizer_class, comm, lr=lr, num_threads=num_threads,
                           timeout=timeout, **(optimizer_options or {}))
    if hyperparameters:
        opt.set(**hyperparameters)
    grads = [np.zeros_like(p) for p in model.params]
    n = len(y_train)
    rng = np.random.default_rng(seed)
    losses, start, steps = [], time.perf_counter(), 0
    pending = None          # an exception on this rank, shared at the next agreement
    for epoch in range(epochs):
        order = rng.permutation(n) if shuffle else np.arange(n)
        loss_sum = 0.0
        for at in range(0, n, batch_size):
            batch = order[at:at + batch_size]
            mine = batch[rank::world]
            local = 0.0
            if pending is None:
                try:
                    for g in grads:
                        g.fill(0)
                    if mine.size:
                        local = float(model.loss_and_grad(X_train[mine], y_train[mine], grads))
                        factor = world * mine.size / batch.size
                        if factor != 1.0:
                            for g in grads:
                                g *= g.dtype.type(factor)
                        local *= mine.size
                    if not math.isfinite(local):
                        raise FloatingPointError(f"the loss is {local / max(mine.size, 1)} at "
                                                 f"step {opt.step_count + 1}; try a smaller --lr")
                except Exception as exc:   # noqa: BLE001 - shared with every rank below
                    pending = exc
            sums = agree(comm, pending, timeout, f"mini-batch {steps + 1}", payload=local)
            loss_sum += math.fsum(sums)
            opt.step(grads)
            steps += 1
        epoch_loss = loss_sum / n
        losses.append(epoch_loss)
        try:
            accuracy = float(model.accuracy(X_val, y_val)) if len(y_val) else math.nan
            if out is not None and rank == 0:
                print(f"epoch {epoch + 1:>3}/{epochs}  loss {epoch_loss:.4f}  "
                      f"val acc {accuracy:.4f}", file=out, flush=True)
            if on_epoch is not None:
                on_epoch(epoch, epoch_loss, accuracy)
        except Exception as exc:   # noqa: BLE001
            pending = exc
        agree(comm, pending, timeout, f"end of epoch {epoch + 1}")
    return {"val_accuracy": accuracy, "steps": steps, "samples": n * epochs,
            "seconds": time.perf_counter() - start, "epoch_losses": losses,
            "state_nbytes": opt.state_nbytes()}


_UNSUPPORTED = (("save", "--save"), ("resume", "--resume"), ("plot", "--plot"))


def run(args):
    """`lrcore train --distributed`: the options of `lrcore train` (see there) that make
    sense data-parallel; rank 0 prints. Returns the exit code."""
    from ..cli import EXIT_FAILED, CLIError
    from ..cli.schedule import build as build_schedule
    from ..cli.train import DEFAULTS, PRECISIONS, _load_data, check_precision, default_lr, \
        describe_precision, hyperparameter_names, precision_options, resolved_precision
    from ..demo import models
    from ..lowp import bfloat16
    from ..task import OPTIMIZERS
    try:
        MPI = import_mpi()
    except ImportError as exc:
        raise CLIError(f"--distributed: {exc}") from None
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    stdout = sys.stdout
    if rank != 0:
        sys.stdout = _Silent()
    timeout = float(os.environ.get("LRCORE_DIST_TIMEOUT", DEFAULT_TIMEOUT))
    error, setup = None, None
    try:
        for attr, option in _UNSUPPORTED:
            if getattr(args, attr, None):
                raise CLIError(f"{option} is not supported with --distributed yet (save from "
                               f"a script with lrcore.distributed.save)")
        name = args.optimizer or DEFAULTS["optimizer"]
        seed = DEFAULTS["seed"] if args.seed is None else args.seed
        # --precision / --state-dtype: lrcore train's check and options (one process's)
        precision, state_dtype = getattr(args, "precision", None), getattr(args, "state_dtype",
                                                                           None)
        check_precision(precision, state_dtype, name)
        options = precision_options(args)
        dtype = {}
        if options:
            param = PRECISIONS[resolved_precision(precision, state_dtype)][0]
            dtype = {"dtype": bfloat16 if param == "bfloat16" else np.dtype(param)}
        # the one-process job's loading, split and standardising, with its messages
        X_train, y_train, X_val, y_val, n_classes = _load_data({
            "data": os.path.abspath(args.data) if args.data else None,
            "target": args.target, "val_fraction": float(args.val_fraction),
            "split_seed": seed})
        hidden = args.hidden or DEFAULTS["hidden"]
        if (args.model or "mlp") == "mlp":
            model = models.MLP(X_train.shape[1], hidden, n_classes, seed=seed, **dtype)
            model_name = f"MLP {X_train.shape[1]}-{hidden}-{n_classes}"
        else:
            model = models.SoftmaxRegression(X_train.shape[1], n_classes, seed=seed, **dtype)
            model_name = f"softmax regression {X_train.shape[1]}-{n_classes}"
        epochs = DEFAULTS["epochs"] if args.epochs is None else args.epochs
        batch_size = DEFAULTS["batch_size"] if args.batch_size is None else args.batch_size
        if epochs < 1 or batch_size < 1:
            raise CLIError(f"--epochs and --batch-size must be >= 1, got {epochs}, {batch_size}")
        lr = default_lr(name) if args.lr is None else args.lr
        total = epochs * -(-len(y_train) // batch_size)
        if getattr(args, "schedule", None):
            lr = build_schedule(args.schedule[0], list(args.schedule[1:]),
                                {"initial": lr, "max_value": lr, "steps": total,
                                 "total_steps": total})
        hyper = {h: getattr(args, h) for h in hyperparameter_names(name)
                 if h != "lr" and getattr(args, h, None) is not None}
        shown = "" if not options else "; " + describe_precision(
            {"precision": resolved_precision(precision, state_dtype), "state_dtype": state_dtype})
        setup = (OPTIMIZERS[name], model, model_name, epochs, batch_size, lr, hyper, seed,
                 options, shown)
    except CLIError as exc:
        error = exc
    except (OSError, ValueError, TypeError, KeyError) as exc:
        error = CLIError(str(exc))
    try:
        try:
            agree(comm, error, timeout, "lrcore train --distributed set-up")
        except DistributedError as exc:
            raise CLIError(f"rank {min(exc.failed)}: {exc.failed[min(exc.failed)]}") from None
        cls, model, model_name, epochs, batch_size, lr, hyper, seed, options, shown = setup
        print(f"lrcore train --distributed: {model_name} on "
              f"{os.path.basename(args.data) if args.data else 'digits (built-in)'}, "
              f"{cls.__name__}, lr {lr if not isinstance(lr, float) else f'{lr:g}'}, "
              f"{epochs} epoch{'s' * (epochs != 1)} of {len(y_train)} samples, mini-batch {batch_size} split over "
              f"{world} rank(s){shown}", flush=True)
        try:
            result = train(X_train, y_train, X_val, y_val, model, cls, lr=lr,
                           hyperparameters=hyper, epochs=epochs, batch_size=batch_size,
                           seed=seed, shuffle=not args.no_shuffle, num_threads=args.threads,
                           comm=comm, timeout=timeout, out=sys.stdout,
                           optimizer_options=options)
        except DistributedError as exc:
            if not exc.failed:      # a timeout: the silent rank cannot be reached; end it
                print(f"lrcore train: error: {exc}", file=sys.stderr if rank == 0 else _Silent())
                sys.stderr.flush()
                comm.Abort(EXIT_FAILED)
            first = min(exc.failed)
            raise CLIError(f"training failed on rank {first}: {exc.failed[first]}",
                           EXIT_FAILED) from None
        except Exception as exc:   # noqa: BLE001 - this rank's own failure, as one line
            raise CLIError(f"training failed on rank {rank}: {type(exc).__name__}: {exc}",
                           EXIT_FAILED) from None
        steps = result["steps"]
        print(f"done: {steps} step{'s' * (steps != 1)} in {result['seconds']:.2f} s, "
              f"validation accuracy {result['val_accuracy']:.4f}; optimizer state "
              f"{result['state_nbytes']:,} bytes on rank 0 of {world}", flush=True)
        return 0
    except CLIError:
        if rank != 0:   # rank 0 prints the one message; the others exit quietly alike
            sys.stderr = _Silent()
        raise
    finally:
        sys.stdout = stdout
