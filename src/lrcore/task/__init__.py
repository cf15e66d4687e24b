"""Update tasks: a seeded, pausable, checkpointable training loop over numpy buffers.

Three modules: :mod:`~lrcore.task.vocabulary` (ParameterKey, Event, MetricKey, TaskState,
ProgressHandlers, UpdateContext), :mod:`~lrcore.task.loop` (UpdateTask, the optimizer names)
and :mod:`~lrcore.task.persistence` (the file format of UpdateTask.save/load).
"""
from .loop import OPTIMIZERS, UpdateTask
from .persistence import FORMAT, FORMAT_VERSION
from .vocabulary import (Event, MetricKey, ParameterKey, ProgressHandlers, TaskState,
                         UpdateContext)

__all__ = ["UpdateTask", "ParameterKey", "Event", "ProgressHandlers", "UpdateContext",
           "TaskState", "MetricKey", "OPTIMIZERS", "FORMAT", "FORMAT_VERSION"]
