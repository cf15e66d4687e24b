"""The update task's vocabulary: training parameter keys, events, metric keys, states,
progress handlers and the context a handler receives.

Modelled on Apple Core ML's ``MLParameterKey``, ``MLUpdateProgressEvent`` and
``MLUpdateContext``; the loop that uses them is :mod:`lrcore.task.loop`.
"""
import dataclasses
import enum
import numbers
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .. import hyperparams, rules
from ..schedules import Schedule

if TYPE_CHECKING:
    from .loop import UpdateTask

__all__ = ["ParameterKey", "Event", "MetricKey", "TaskState", "ProgressHandlers",
           "UpdateContext"]


@dataclasses.dataclass(frozen=True)
class _Spec:
    """A key: the loop's own (int or bool, with its bounds) or an optimizer hyperparameter
    (float), whose range is the table's (lrcore.rules) for the optimizer in use."""
    name: str
    kind: type                 # float, int or bool
    low: int = 0               # int keys: inclusive bounds
    high: int = None
    hyperparameter: str = ""   # the table's name ("" for the loop's own keys)

    def range(self, rule=None):
        """The table's Range of a real key: ``rule``'s, else that of the first rule having
        the hyperparameter (LEARNING_RATE, MOMENTUM, WEIGHT_DECAY: sgd; BETA1, BETA2,
        EPS: adam)."""
        if rule is not None:
            try:
                return hyperparams.range_of(rule, self.hyperparameter)
            except KeyError:
                pass
        for r in rules.RULES.values():
            try:
                return hyperparams.range_of(r, self.hyperparameter)
            except KeyError:
                continue
        raise KeyError(self.hyperparameter)

    def describe(self, rule=None):
        if self.kind is bool:
            return "True or False"
        if self.kind is float:
            return f"{self.range(rule).text} or a lrcore Schedule"
        if self.high is None:
            return f"an integer >= {self.low}"
        return f"an integer in [{self.low}, {self.high}]"


class ParameterKey(enum.Enum):
    """Training parameters of an :class:`UpdateTask`, each with its type and allowed range.

    The real-valued keys (LEARNING_RATE, MOMENTUM, BETA1, BETA2, EPS, WEIGHT_DECAY) go to the
    optimizer, with the ranges of the table of update rules (:mod:`lrcore.rules`), and also
    accept a :class:`lrcore.schedules.Schedule`, evaluated at the number of optimizer steps
    already taken. MINI_BATCH_SIZE, EPOCHS, SHUFFLE and SEED drive the loop.
    """
    LEARNING_RATE = _Spec("learning_rate", float, hyperparameter="lr")
    MOMENTUM = _Spec("momentum", float, hyperparameter="momentum")
    MINI_BATCH_SIZE = _Spec("mini_batch_size", int, 1)
    BETA1 = _Spec("beta1", float, hyperparameter="beta1")
    BETA2 = _Spec("beta2", float, hyperparameter="beta2")
    EPS = _Spec("eps", float, hyperparameter="eps")
    EPOCHS = _Spec("epochs", int, 1)
    SHUFFLE = _Spec("shuffle", bool)
    SEED = _Spec("seed", int, 0, 2**63 - 1)
    WEIGHT_DECAY = _Spec("weight_decay", float, hyperparameter="weight_decay")

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

    def validate(self, value, step=0, rule=None):
        """Return ``value`` checked against the key's type and range (a real key against
        ``rule``'s range in the table, a Schedule at ``step``); raise TypeError or
        ValueError in the table's message style: "UpdateTask: ParameterKey.<KEY> must be
        <range>, got <value>"."""
        spec = self.value
        where, name = "UpdateTask", f"ParameterKey.{self.name}"
        if spec.kind is float:
            return hyperparams.check(where, name, value, spec.range(rule), step)
        if isinstance(value, Schedule):
            raise TypeError(f"{where}: {name} must be {spec.describe()}, got a schedule "
                            f"({value!r}); only real-valued keys accept schedules")
        if spec.kind is bool:
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{where}: {name} must be True or False, got {value!r}")
            return bool(value)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{where}: {name} must be {spec.describe()}, got {value!r} "
                            f"({type(value).__name__})")
        value = int(value)
        if value < spec.low or (spec.high is not None and value > spec.high):
            raise ValueError(f"{where}: {name} must be {spec.describe()}, got {value!r}")
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
