"""The update task's vocabulary: training parameter keys, events, metric keys, states,
progress handlers and the context a handler receives.

Modelled on Apple Core ML's ``MLParameterKey``, ``MLUpdateProgressEvent`` and
``MLUpdateContext``; the loop that uses them is :mod:`lrcore.task.loop`.
"""
import dataclasses
import enum
import math
import numbers
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..schedules import Schedule

if TYPE_CHECKING:
    from .loop import UpdateTask

__all__ = ["ParameterKey", "Event", "MetricKey", "TaskState", "ProgressHandlers",
           "UpdateContext"]

@dataclasses.dataclass(frozen=True)
class _Spec:
    name: str
    kind: type                 # float, int or bool
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    hyperparameter: str = ""   # name in lrcore.optim ("" for the loop's own keys)

    def describe(self):
        if self.kind is bool:
            return "True or False"
        what = "a number" if self.kind is float else "an integer"
        if self.high == math.inf:
            bound = f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
        else:
            bound = (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                     f"{')' if self.high_open else ']'}")
        schedule = " or a lrcore Schedule" if self.kind is float else ""
        return f"{what} {bound}{schedule}"


class ParameterKey(enum.Enum):
    """Training parameters of an :class:`UpdateTask`, each with its type and allowed range.

    The real-valued keys (LEARNING_RATE, MOMENTUM, BETA1, BETA2, EPS, WEIGHT_DECAY) go to the
    optimizer and also accept a :class:`lrcore.schedules.Schedule`, evaluated at the number of
    optimizer steps already taken. MINI_BATCH_SIZE, EPOCHS, SHUFFLE and SEED drive the loop.
    """
    LEARNING_RATE = _Spec("learning_rate", float, 0.0, hyperparameter="lr")
    MOMENTUM = _Spec("momentum", float, 0.0, 1.0, high_open=True, hyperparameter="momentum")
    MINI_BATCH_SIZE = _Spec("mini_batch_size", int, 1)
    BETA1 = _Spec("beta1", float, 0.0, 1.0, high_open=True, hyperparameter="beta1")
    BETA2 = _Spec("beta2", float, 0.0, 1.0, high_open=True, hyperparameter="beta2")
    EPS = _Spec("eps", float, 0.0, low_open=True, hyperparameter="eps")
    EPOCHS = _Spec("epochs", int, 1)
    SHUFFLE = _Spec("shuffle", bool)
    SEED = _Spec("seed", int, 0, 2**63 - 1)
    WEIGHT_DECAY = _Spec("weight_decay", float, 0.0, hyperparameter="weight_decay")

    def __repr__(self):
        return f"ParameterKey.{self.name}"

    @property
    def kind(self):
        """The Python type of the key's values: float, int or bool."""
        return self.value.kind

    @property
    def accepts_schedule(self):
        """True for the real-valued keys, which may also be given a Schedule."""
        return self.value.kind is float

    @property
    def expected(self):
        """The allowed values, in words (as used in error messages)."""
        return self.value.describe()

    def validate(self, value, step=0):
        """Return ``value`` checked against the key's type and range (a Schedule is checked at
        ``step``); raise TypeError or ValueError naming the key, the value and the range."""
        spec = self.value
        where = f"ParameterKey.{self.name}"
        if isinstance(value, Schedule):
            if spec.kind is not float:
                raise TypeError(f"{where} must be {spec.describe()}, got a schedule "
                                f"({value!r}); only real-valued keys accept schedules")
            self._check_range(value(step), f"{where} (schedule {value!r} at step {step})")
            return value
        if spec.kind is bool:
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{where} must be True or False, got {value!r}")
            return bool(value)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{where} must be {spec.describe()}, got {value!r} "
                            f"({type(value).__name__})")
        if spec.kind is int:
            if not isinstance(value, numbers.Integral):
                raise TypeError(f"{where} must be {spec.describe()}, got {value!r} "
                                f"({type(value).__name__})")
            value = int(value)
        else:
            value = float(value)
        return self._check_range(value, where)

    def _check_range(self, value, where):
        spec = self.value
        v = float(value)
        ok = (math.isfinite(v) and (v > spec.low if spec.low_open else v >= spec.low)
              and (v < spec.high if spec.high_open else v <= spec.high))
        if not ok:
            raise ValueError(f"{where} must be {spec.describe()}, got {value!r}")
        return value


class Event(enum.Flag):
    """Moments at which the progress handler is called; combine with ``|``."""
    TRAINING_BEGIN = enum.auto()
    EPOCH_END = enum.auto()
    MINI_BATCH_END = enum.auto()


class MetricKey(enum.Enum):
    """Keys of ``UpdateContext.metrics``.

    LOSS: the mini-batch loss (MINI_BATCH_END) or the epoch's mean loss per sample
    (EPOCH_END); absent at TRAINING_BEGIN. EPOCH_INDEX: the epoch, from 0.
    MINI_BATCH_INDEX: the mini-batch within its epoch, from 0 (at EPOCH_END, the last one).
    In the completion context: LOSS of the last finished epoch, EPOCH_INDEX = epochs
    completed, MINI_BATCH_INDEX = mini-batches done in the unfinished epoch.
    """
    LOSS = "loss"
    EPOCH_INDEX = "epoch_index"
    MINI_BATCH_INDEX = "mini_batch_index"

    def __repr__(self):
        return f"MetricKey.{self.name}"


class TaskState(enum.Enum):
    """SUSPENDED (new or paused), RUNNING, CANCELLING (cancel() was called; also the final
    state of a cancelled task, as in Core ML), COMPLETED, FAILED (``task.error`` says why)."""
    SUSPENDED = "suspended"
    RUNNING = "running"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class ProgressHandlers:
    """``progress(ctx)`` is called on every event in ``events``; ``completion(ctx)`` once when
    the task completes, fails or is cancelled (``ctx.event`` is then None)."""
    events: Event = Event(0)
    progress: Callable[["UpdateContext"], Any] | None = None
    completion: Callable[["UpdateContext"], Any] | None = None

    def __post_init__(self):
        if not isinstance(self.events, Event):
            raise TypeError(f"ProgressHandlers: events must be an Event flag (e.g. "
                            f"Event.EPOCH_END | Event.MINI_BATCH_END), got {self.events!r}")
        for name in ("progress", "completion"):
            fn = getattr(self, name)
            if fn is not None and not callable(fn):
                raise TypeError(f"ProgressHandlers: {name} must be callable or None, "
                                f"got {fn!r}")
        if self.events and self.progress is None:
            raise ValueError(f"ProgressHandlers: events={self.events!r} but no progress "
                             f"handler; give progress=<function of the context>")
        if self.progress is not None and not self.events:
            raise ValueError("ProgressHandlers: a progress handler was given but events is "
                             "empty; choose e.g. events=Event.EPOCH_END")


@dataclasses.dataclass(frozen=True)
class UpdateContext:
    """What a handler receives. ``parameters``: the values in force (schedules evaluated) for
    the mini-batch just processed, or at TRAINING_BEGIN for the first one; ``params``: the
    arrays being trained (live, not copies)."""
    event: Event | None
    task: "UpdateTask"
    parameters: dict
    metrics: dict
    params: list
