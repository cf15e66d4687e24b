"""The update task's loop: a seeded, pausable, checkpointable training loop over numpy buffers.

Modelled on Apple Core ML's ``MLUpdateTask``: training parameters are set by key
(``MLParameterKey`` -> :class:`ParameterKey`), progress handlers are called on events
(``MLUpdateProgressEvent`` -> :class:`Event`), and, as Core ML puts it, "to modify a
model's learning rate midway through an update task, use its ``resume(withParameters:)``
method ... in the progress handler" -> ``ctx.task.resume(parameters={...})``.

Design: the task owns the loop and its position (epoch, samples consumed, running epoch
loss); the optimizer (lrcore.optim) owns the update, its state and the schedules; the
user's ``loss_and_grad(batch, params, grads)`` writes gradients into buffers separate from
the parameters, so an exception leaves the parameters at the last completed step. The order
of the samples in epoch ``e`` is ``PCG64([SEED, e]).permutation(n)``: a pure function of the
seed and the epoch, so pausing, resuming or reloading in a fresh process replays exactly
the batches, and therefore the bits, of a run that never stopped. ``resume()`` runs the
loop in the calling thread and returns when the task pauses, is cancelled, fails or ends.
"""
import math
import numbers
import threading

import numpy as np

from .. import optim
from ..optim import params as param_checks
from ..schedules import Schedule
from . import persistence
from .vocabulary import (Event, MetricKey, ParameterKey, ProgressHandlers, TaskState,
                         UpdateContext)

__all__ = ["UpdateTask", "OPTIMIZERS", "optimizer_keys", "check_params"]


class _ArrayData:
    """A tuple of arrays split along axis 0."""

    def __init__(self, arrays):
        self.arrays = tuple(np.asarray(a) for a in arrays)
        if not self.arrays:
            raise ValueError("UpdateTask: data is an empty tuple; expected (features, "
                             "targets, ...)")
        for i, a in enumerate(self.arrays):
            if a.ndim == 0:
                raise ValueError(f"UpdateTask: data[{i}] is a scalar; expected an array "
                                 f"with samples along axis 0")
        lengths = [a.shape[0] for a in self.arrays]
        if len(set(lengths)) != 1:
            raise ValueError(f"UpdateTask: data arrays have {lengths} rows; expected the "
                             f"same number of samples in each")

    def __len__(self):
        return self.arrays[0].shape[0]

    def batch(self, indices):
        return tuple(a[indices] for a in self.arrays)


def _wrap_data(data):
    if isinstance(data, (tuple, list)):
        return _ArrayData(data)
    if hasattr(data, "__len__") and callable(getattr(data, "batch", None)):
        return data
    hint = "; for a single array write (X,)" if isinstance(data, np.ndarray) else ""
    raise TypeError(f"UpdateTask: data must be a tuple of arrays (features, targets, ...) or an "
                    f"object with __len__ and batch(indices), got {type(data).__name__}{hint}")


# every optimizer of the table (lrcore.rules.PRESETS), by its name there
OPTIMIZERS = dict(optim.CLASSES)

_LOOP_DEFAULTS = {ParameterKey.MINI_BATCH_SIZE: 32, ParameterKey.EPOCHS: 1,
                  ParameterKey.SHUFFLE: True, ParameterKey.SEED: 0}


# the optimizers' element-type options (lrcore.optim.precision), passed through by name
_OPTIONS = frozenset({"state_dtype", "rounding", "seed"})


def optimizer_keys(opt):
    """The ParameterKeys that map to hyperparameters of this optimizer."""
    return [k for k in ParameterKey if k.value.hyperparameter in type(opt).numeric]


def check_params(params):
    params = param_checks.items(params, "UpdateTask", "a list of numpy arrays")
    for i, p in enumerate(params):
        if not isinstance(p, np.ndarray):
            raise TypeError(f"UpdateTask: params[{i}] must be a numpy.ndarray, got "
                            f"{type(p).__name__}")
    return params


class UpdateTask:
    """Train ``params`` in place by mini-batches of ``data`` with an lrcore optimizer.

    ``loss_and_grad(batch, params, grads) -> float`` is the user's function: it writes the
    gradient into ``grads`` (zeroed before each call, laid out like ``params``) and returns the
    mini-batch loss. ``data``: a tuple of arrays split along axis 0 (``batch`` is then the
    tuple of their rows), or any object with ``__len__`` and ``batch(indices)``.
    ``optimizer``: a name in ``lrcore.task.OPTIMIZERS`` ("sgd", "adam", "adamw", "adagrad",
    "rmsprop", "adadelta", "adamax", "nadam", "radam", "lion": the table's optimizers) or an
    lrcore Optimizer over the same arrays. ``parameters``: {ParameterKey: value}; keys the optimizer
    has no use for are an error; unset optimizer keys keep the optimizer's values; the loop
    defaults are MINI_BATCH_SIZE 32, EPOCHS 1, SHUFFLE True, SEED 0. The last mini-batch of an
    epoch may be smaller. ``optimizer_options``: the element-type options of an optimizer
    built by name, {"state_dtype": None | "float32" | "bfloat16" | "int8", "rounding":
    "nearest" | "stochastic", "seed": stochastic rounding's seed} (lrcore.optim.precision;
    not the loop's shuffle SEED); params may then be bfloat16 or float16 arrays, and the
    grads are laid out like them. Saved tasks keep these options.
    """

    def __init__(self, params, loss_and_grad, data, optimizer="sgd", parameters=None,
                 progress_handlers=None, *, num_threads=None, optimizer_options=None):
        self._params = check_params(params)
        self._init_common(loss_and_grad, data, progress_handlers)
        self._optimizer = self._make_optimizer(optimizer, num_threads, optimizer_options)
        self._keys = optimizer_keys(self._optimizer)
        self._loop = dict(_LOOP_DEFAULTS)
        self._apply(self._checked(parameters))

    def _init_common(self, loss_and_grad, data, progress_handlers):
        if not callable(loss_and_grad):
            raise TypeError(f"UpdateTask: loss_and_grad must be callable as "
                            f"loss_and_grad(batch, params, grads), got {loss_and_grad!r}")
        if progress_handlers is None:
            progress_handlers = ProgressHandlers()
        if not isinstance(progress_handlers, ProgressHandlers):
            raise TypeError(f"UpdateTask: progress_handlers must be a ProgressHandlers, got "
                            f"{type(progress_handlers).__name__}")
        self._loss_and_grad = loss_and_grad
        self._data = _wrap_data(data)
        self._n = len(self._data)
        if self._n < 1:
            raise ValueError("UpdateTask: data holds 0 samples; expected at least one")
        self._handlers = progress_handlers
        self._grads = [np.zeros_like(p) for p in self._params]
        self._state = TaskState.SUSPENDED
        self._error = None
        self._pause_requested = False
        self._cancel_requested = False
        self._handler_thread = None
        # position: epoch index, samples of this epoch consumed, batches done, epoch loss
        self._began = False
        self._epoch = 0
        self._offset = 0
        self._batch = 0
        self._order = None
        self._loss_sum = 0.0
        self._loss_count = 0
        self._last_epoch_loss = None
        self._pending = None   # (step before, samples, loss) while a step is being applied
        self.meta = None

    def _make_optimizer(self, optimizer, num_threads, options):
        if options is not None:
            if isinstance(optimizer, optim.Optimizer):
                raise ValueError("UpdateTask: optimizer_options applies to an optimizer built "
                                 "by name; give these options to the Optimizer instance")
            if not isinstance(options, dict) or not set(options) <= _OPTIONS:
                raise TypeError(f"UpdateTask: optimizer_options must be a dict with keys "
                                f"among {sorted(_OPTIONS)}, got {options!r}")
        if isinstance(optimizer, optim.Optimizer):
            theirs = optimizer.params
            if len(theirs) != len(self._params) or any(a is not b for a, b in
                                                        zip(theirs, self._params)):
                raise ValueError("UpdateTask: the optimizer must be built over the same "
                                 "arrays as params, in the same order")
            return optimizer
        if isinstance(optimizer, str) and optimizer.lower() in OPTIMIZERS:
            return OPTIMIZERS[optimizer.lower()](self._params, num_threads=num_threads,
                                                 **(options or {}))
        raise ValueError(f"UpdateTask: optimizer must be one of {sorted(OPTIMIZERS)} or an "
                         f"lrcore Optimizer instance, got {optimizer!r}")

    # -- parameters ------------------------------------------------------------------------

    def _checked(self, parameters):
        """Validate {ParameterKey: value} against the keys and this optimizer."""
        if parameters is None:
            return {}
        if not isinstance(parameters, dict):
            raise TypeError(f"UpdateTask: parameters must be a dict of ParameterKey -> value, "
                            f"got {type(parameters).__name__}")
        usable = self._keys
        out = {}
        for key, value in parameters.items():
            if not isinstance(key, ParameterKey):
                raise TypeError(f"UpdateTask: parameter keys must be ParameterKey members "
                                f"(e.g. ParameterKey.LEARNING_RATE), got {key!r}")
            if key.value.hyperparameter and key not in usable:
                raise ValueError(f"UpdateTask: ParameterKey.{key.name} does not apply to "
                                 f"{type(self._optimizer).__name__}; it takes "
                                 f"{[k.name for k in usable] + [k.name for k in _LOOP_DEFAULTS]}")
            out[key] = key.validate(value, self._optimizer.step_count,
                                    getattr(type(self._optimizer), "rule", None))
        return out

    def _apply(self, checked):
        hyper = {k.value.hyperparameter: v for k, v in checked.items() if k.value.hyperparameter}
        if hyper:
            try:
                self._optimizer.set(**hyper)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"UpdateTask: parameters {sorted(k.name for k in checked)} "
                                 f"rejected by the optimizer: {exc}") from None
        for key, value in checked.items():
            if not key.value.hyperparameter:
                self._loop[key] = value

    @property
    def parameters(self):
        """{ParameterKey: value} as configured now (schedules as Schedule objects)."""
        group = self._optimizer.param_groups[0]
        out = {k: group[k.value.hyperparameter] for k in self._keys}
        out.update(self._loop)
        return out

    def _parameters_at(self, step):
        """Values in force at optimizer step `step` (schedules evaluated)."""
        if step == self._optimizer.step_count:   # the fast path, once per mini-batch
            values = self._optimizer.hyperparameters(0)
            out = {k: values[k.value.hyperparameter] for k in self._keys}
            out.update(self._loop)
            return out
        return {key: value(step) if isinstance(value, Schedule) else value
                for key, value in self.parameters.items()}

    # -- read-only views -------------------------------------------------------------------

    @property
    def state(self):
        """The TaskState."""
        return self._state

    @property
    def error(self):
        """The exception that made the task FAILED, else None."""
        return self._error

    @property
    def params(self):
        """The arrays being trained, updated in place."""
        return list(self._params)

    @property
    def progress_handlers(self):
        """The ProgressHandlers; may be replaced while the task is not RUNNING."""
        return self._handlers

    @progress_handlers.setter
    def progress_handlers(self, handlers):
        if not isinstance(handlers, ProgressHandlers):
            raise TypeError(f"UpdateTask: progress_handlers must be a ProgressHandlers, got "
                            f"{type(handlers).__name__}")
        if self._state is TaskState.RUNNING:
            raise RuntimeError("UpdateTask: progress_handlers cannot be replaced while RUNNING")
        self._handlers = handlers

    @property
    def optimizer(self):
        """The lrcore Optimizer applying the updates."""
        return self._optimizer

    @property
    def epoch(self):
        """Index of the current epoch (= epochs completed)."""
        return self._epoch

    @property
    def mini_batch(self):
        """Mini-batches completed in the current epoch."""
        return self._batch

    @property
    def step_count(self):
        """Optimizer steps taken so far."""
        return self._optimizer.step_count

    def __repr__(self):
        return (f"UpdateTask(state={self._state.name}, optimizer="
                f"{type(self._optimizer).__name__}, epoch={self._epoch}, "
                f"mini_batch={self._batch}, step={self.step_count})")

    # -- control ---------------------------------------------------------------------------

    def resume(self, parameters=None):
        """Start or continue training, after replacing ``parameters`` ({ParameterKey: value})
        from the next mini-batch on. Called from a progress handler (state RUNNING) it only
        replaces the values (and withdraws a pause asked for earlier) and returns at once.
        Otherwise it runs the loop in this thread until the task pauses, is cancelled, fails
        or completes, and returns the resulting TaskState."""
        if self._state in (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLING):
            raise RuntimeError(f"UpdateTask.resume(): the task is {self._state.name}; only a "
                               f"SUSPENDED or RUNNING task can be resumed")
        self._apply(self._checked(parameters))
        if self._state is TaskState.RUNNING:
            self._pause_requested = False
            return self._state
        self._pause_requested = False
        self._state = TaskState.RUNNING
        self._run()
        return self._state

    def pause(self):
        """Stop after the current mini-batch or handler; a later resume() continues exactly
        there. No effect on a SUSPENDED task."""
        if self._state is TaskState.RUNNING:
            self._pause_requested = True
        elif self._state is not TaskState.SUSPENDED:
            raise RuntimeError(f"UpdateTask.pause(): the task is {self._state.name}; only a "
                               f"RUNNING or SUSPENDED task can be paused")

    def cancel(self):
        """Stop for good after the current mini-batch (state CANCELLING; the completion
        handler runs). A SUSPENDED task is cancelled at once."""
        if self._state is TaskState.RUNNING:
            self._cancel_requested = True
        elif self._state is TaskState.SUSPENDED:
            self._state = TaskState.CANCELLING
            self._complete()
        elif self._state is not TaskState.CANCELLING:
            raise RuntimeError(f"UpdateTask.cancel(): the task is {self._state.name}; only a "
                               f"RUNNING or SUSPENDED task can be cancelled")

    # -- the loop --------------------------------------------------------------------------

    def _epoch_order(self, epoch):
        if not self._loop[ParameterKey.SHUFFLE]:
            return np.arange(self._n, dtype=np.int64)
        rng = np.random.Generator(np.random.PCG64([self._loop[ParameterKey.SEED], epoch]))
        return rng.permutation(self._n).astype(np.int64)

    def _run(self):
        try:
            if not self._began:
                self._began = True
                self._fire(Event.TRAINING_BEGIN, self._optimizer.step_count,
                           {MetricKey.EPOCH_INDEX: self._epoch, MetricKey.MINI_BATCH_INDEX: 0})
            while not self._stopping():
                if self._order is None:
                    if self._epoch >= self._loop[ParameterKey.EPOCHS]:
                        self._state = TaskState.COMPLETED
                        break
                    self._order = self._epoch_order(self._epoch)
                if self._offset < self._n:
                    self._mini_batch()
                else:
                    self._end_epoch()
        except KeyboardInterrupt:
            # the position stays consistent: finish the bookkeeping of a step that landed
            if self._pending is not None and \
                    self._optimizer.step_count == self._pending[0] + 1:
                self._commit()
            self._pending = None
            self._state = TaskState.SUSPENDED
            raise
        except Exception as exc:  # the user's function, a handler or a step failed
            self._error = exc
            self._state = TaskState.FAILED
        if self._state is not TaskState.SUSPENDED:
            self._complete()

    def _stopping(self):
        if self._cancel_requested:
            self._cancel_requested = False
            self._state = TaskState.CANCELLING
            return True
        if self._pause_requested:
            self._pause_requested = False
            self._state = TaskState.SUSPENDED
            return True
        return False

    def _mini_batch(self):
        size = self._loop[ParameterKey.MINI_BATCH_SIZE]
        indices = self._order[self._offset:self._offset + size]
        batch = self._data.batch(indices)
        for g in self._grads:
            g.fill(0)
        loss = self._loss_and_grad(batch, self._params, self._grads)
        if isinstance(loss, np.ndarray) and loss.size == 1:
            loss = loss.reshape(())[()]
        if isinstance(loss, (bool, np.bool_)) or not isinstance(loss, numbers.Real):
            raise TypeError(f"loss_and_grad returned {loss!r} ({type(loss).__name__}); "
                            f"expected the mini-batch loss as a real number")
        wanted = Event.MINI_BATCH_END in self._handlers.events
        parameters = self._parameters_at(self._optimizer.step_count) if wanted else None
        self._pending = (self._optimizer.step_count, len(indices), float(loss))
        self._optimizer.step(self._grads)   # changes nothing if it raises
        loss = self._commit()
        if wanted:
            metrics = {MetricKey.LOSS: loss, MetricKey.EPOCH_INDEX: self._epoch,
                       MetricKey.MINI_BATCH_INDEX: self._batch - 1}
            self._call(self._handlers.progress, UpdateContext(
                Event.MINI_BATCH_END, self, parameters, metrics, self.params))

    def _commit(self):
        """Advance the position past the mini-batch whose step was just applied."""
        _, samples, loss = self._pending
        self._pending = None
        self._offset += samples
        self._batch += 1
        self._loss_sum += loss * samples
        self._loss_count += samples
        return loss

    def _end_epoch(self):
        epoch_loss = self._loss_sum / self._loss_count if self._loss_count else math.nan
        metrics = {MetricKey.LOSS: epoch_loss, MetricKey.EPOCH_INDEX: self._epoch,
                   MetricKey.MINI_BATCH_INDEX: self._batch - 1}
        wanted = Event.EPOCH_END in self._handlers.events
        parameters = self._parameters_at(max(self._optimizer.step_count - 1, 0)) if wanted else None
        self._optimizer.report(epoch_loss)   # feeds ReduceOnPlateau schedules, if any
        self._epoch += 1
        self._order = None
        self._offset = self._batch = self._loss_count = 0
        self._loss_sum = 0.0
        self._last_epoch_loss = epoch_loss
        if wanted:
            self._call(self._handlers.progress,
                       UpdateContext(Event.EPOCH_END, self, parameters, metrics, self.params))

    def _fire(self, event, step, metrics):
        if event in self._handlers.events:
            self._call(self._handlers.progress,
                       UpdateContext(event, self, self._parameters_at(step), metrics,
                                     self.params))

    def _call(self, fn, ctx):
        self._handler_thread = threading.get_ident()
        try:
            fn(ctx)
        finally:
            self._handler_thread = None

    def _complete(self):
        if self._handlers.completion is None:
            return
        metrics = {MetricKey.EPOCH_INDEX: self._epoch, MetricKey.MINI_BATCH_INDEX: self._batch}
        if self._last_epoch_loss is not None:
            metrics[MetricKey.LOSS] = self._last_epoch_loss
        self._call(self._handlers.completion,
                   UpdateContext(None, self, self._parameters_at(self._optimizer.step_count),
                                 metrics, self.params))

    # -- checkpoints (lrcore.task.persistence) --------------------------------------------

    def save(self, path, meta=None):
        """Write the whole task (params, optimizer state and schedules, loop parameters, epoch
        and position in it, running epoch loss) to ``path`` atomically, plus JSON-able
        ``meta`` of your own. Allowed when not RUNNING, or from a progress handler."""
        if self._state is TaskState.RUNNING and self._handler_thread != threading.get_ident():
            raise RuntimeError("UpdateTask.save(): the task is RUNNING; save from a progress "
                               "handler, or pause() it first")
        persistence.save(
            path, optimizer=self._optimizer, params=self._params, loop=self._loop,
            samples=self._n, order=self._order, state=self._state, meta=meta,
            position={"began": self._began, "epoch": self._epoch, "offset": self._offset,
                      "mini_batch": self._batch, "loss_sum": self._loss_sum,
                      "loss_count": self._loss_count, "last_epoch_loss": self._last_epoch_loss})

    @classmethod
    def load(cls, path, loss_and_grad, data, progress_handlers=None, *, params=None):
        """Rebuild a task saved with :meth:`save`; it is SUSPENDED, and ``resume()`` continues
        exactly where the saved one was. ``params``: arrays to restore into (e.g. a model's
        own views); by default new arrays are made. The meta given to save() is in
        ``task.meta``. Raises lrcore.CheckpointError for a file that does not fit."""
        saved = persistence.read(path, OPTIMIZERS, params, check_params)
        task = cls.__new__(cls)
        task._params = saved.params
        task._init_common(loss_and_grad, data, progress_handlers)
        if task._n != saved.samples:
            raise saved.error(f"was saved with {saved.samples} samples of data, the data "
                              f"given has {task._n}")
        position = saved.position
        try:
            began, epoch = bool(position["began"]), int(position["epoch"])
            offset, batch = int(position["offset"]), int(position["mini_batch"])
            loss_sum, loss_count = float(position["loss_sum"]), int(position["loss_count"])
            last_epoch_loss = position.get("last_epoch_loss")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise saved.error(f"is incomplete or corrupt ({exc!r})") from None
        if saved.order is not None and saved.order.shape != (task._n,):
            raise saved.error(f"holds a sample order of shape {saved.order.shape}, expected "
                              f"({task._n},)")
        task._optimizer = saved.optimizer
        task._keys = optimizer_keys(saved.optimizer)
        task._loop = saved.loop
        task._began, task._epoch, task._offset, task._batch = began, epoch, offset, batch
        task._loss_sum, task._loss_count = loss_sum, loss_count
        task._last_epoch_loss = last_epoch_loss
        task._order = saved.order
        saved.restore_params()
        task.meta = saved.user
        return task
