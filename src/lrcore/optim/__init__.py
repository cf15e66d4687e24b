"""Optimizers over the caller's numpy arrays: SGD, Adam, AdamW, Adagrad, RMSprop, Adadelta.

:mod:`.base` holds the Optimizer class (groups, hyperparameters through
:mod:`lrcore.hyperparams`, state buffers, the step), :mod:`.state_dict` its state-dict I/O
(validate, then apply) and :mod:`.optimizers` the classes, each one row of
:data:`lrcore.rules.RULES`.
"""
from .base import Optimizer, plan_class
from .optimizers import SGD, Adadelta, Adagrad, Adam, AdamW, RMSprop
from .state_dict import FORMAT as STATE_DICT_FORMAT
from .state_dict import VERSION as STATE_DICT_VERSION

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adadelta",
           "plan_class", "STATE_DICT_FORMAT", "STATE_DICT_VERSION"]
