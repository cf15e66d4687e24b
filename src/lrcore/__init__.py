"""lrcore: optimizer updates applied in place over large float buffers, at the speed of memory.

Layers: `lrcore.kernels` (one optimizer step over one set of buffers, compiled C
with a numpy twin in `lrcore.reference`), optimizers and schedules on top, and an
update task with a command-line trainer. See README.md.
"""
import os as _os

try:
    from . import backend
except (ImportError, ValueError, RuntimeError) as _exc:   # a bad LRCORE_* variable, no core
    from .cli import run_as_main_failed
    run_as_main_failed(_exc)       # `python -m lrcore`: one line and exit 2, as the script
    raise
from . import kernels, reference, schedules
from .checkpoint import CheckpointError, load, save
from .optim import (SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, Lion, NAdam, Optimizer, RAdam,
                    RMSprop)
from .task import Event, MetricKey, ParameterKey, ProgressHandlers, TaskState, UpdateTask

__version__ = "0.1.0"

__all__ = ["kernels", "reference", "schedules", "backend", "isa", "available_isas",
           "num_threads", "get_include", "SGD", "Adam", "AdamW", "Adagrad", "RMSprop",
           "Adadelta", "Adamax", "NAdam", "RAdam", "Lion", "Optimizer", "save", "load", "CheckpointError", "__version__",
           "UpdateTask", "ParameterKey", "Event", "ProgressHandlers", "TaskState", "MetricKey"]


def isa():
    """Instruction-set build of the kernels in use ('baseline', 'avx2', 'avx512'); 'numpy'
    on the python backend."""
    return backend.isa()


def available_isas():
    """Instruction-set builds this machine can run, lowest first."""
    return backend.available_isas()


def num_threads():
    """Threads a large call uses when num_threads=None (LRCORE_NUM_THREADS, else
    OMP_NUM_THREADS, else the usable CPUs; 1 on the numpy backend)."""
    return backend.default_threads()


def get_include():
    """Directory holding lrcore.h (header-only C99 kernels) for C/Cython extensions.

    Cython code can `from lrcore.clrcore cimport lrcore_adam_f32, lrcore_adam_hp` and
    needs `include_dirs=[lrcore.get_include()]` in its Extension.
    """
    return _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "include")
