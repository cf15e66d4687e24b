"""Optimizers over the caller's numpy arrays: SGD, Adam, AdamW, Adagrad, RMSprop, Adadelta,
Adamax, NAdam, RAdam, Lion.

:mod:`.base` holds the Optimizer class (groups, hyperparameters through
:mod:`lrcore.hyperparams`, state buffers, the step), :mod:`.state_dict` its state-dict I/O
(validate, then apply) and :mod:`.optimizers` the classes, each one row of
:data:`lrcore.rules.RULES`.
"""
from .base import Optimizer, plan_class
from .optimizers import (CLASSES, SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, Lion, NAdam,
                         RAdam, RMSprop)
from .state_dict import FORMAT as STATE_DICT_FORMAT
from .state_dict import VERSION as STATE_DICT_VERSION

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adadelta", "Adamax",
           "NAdam", "RAdam", "Lion", "CLASSES", "plan_class", "STATE_DICT_FORMAT",
           "STATE_DICT_VERSION"]
