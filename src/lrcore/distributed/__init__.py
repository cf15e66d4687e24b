"""lrcore beyond one process: optimizer state sharded over MPI ranks, and its checkpoints.

`ShardedOptimizer` (ZeRO stage 1/2 over mpi4py) steps each rank's 1/W of the state with the
compiled kernels, reducing gradients in a fixed order so runs are reproducible and equal
bitwise to one process (every lrcore.optim layout: half-precision params and grads, bfloat16
and 8-bit state, stochastic rounding); `average_grads` is that reduction in one process;
`save` / `load` write one file per rank plus an index, loadable onto any number of ranks.
Needs mpi4py and an MPI library: pip install "lrcore[mpi]".
"""
from ._comm import DEFAULT_TIMEOUT, DistributedError
from .persistence import load, read_state_dict, save
from .sharded import DEFAULT_BUCKET_ELEMENTS, ShardedOptimizer, average_grads

__all__ = ["ShardedOptimizer", "DistributedError", "save", "load", "read_state_dict",
           "average_grads", "DEFAULT_TIMEOUT", "DEFAULT_BUCKET_ELEMENTS"]
