"""The checks of check_sharded.py as pytest tests, for a run under MPI:

    OMP_NUM_THREADS=1 mpiexec -n 2 python -m mpi4py -m pytest -q tests/mpi
    OMP_NUM_THREADS=1 mpiexec -n 3 python -m mpi4py -m pytest -q tests/mpi

(OMP_NUM_THREADS=1 keeps numpy's OpenBLAS, which lrcore.optim's per-param gradient norm
calls, from starting a thread per core in every rank: without it the same tests pass but
take about 5x as long on 2 cores. lrcore's own threads are set to 1 below.)

Every rank runs the same tests in the same order (they are collective); a mismatch aborts
every rank (MPI_Abort) with a FAIL line naming it. In a plain `pytest` run (one process)
this module skips: tests/test_distributed.py launches mpiexec itself.
"""
import os
import shutil
import sys
import tempfile
import traceback

import pytest

MPI = pytest.importorskip("mpi4py.MPI")
if MPI.COMM_WORLD.Get_size() < 2:
    pytest.skip("collective tests: run under mpiexec -n W (W >= 2), e.g. "
                "mpiexec -n 2 python -m mpi4py -m pytest -q tests/mpi", allow_module_level=True)

import check_sharded as cs  # noqa: E402  (tests/mpi is on sys.path: pytest's rootdir import)
from lrcore import backend  # noqa: E402

# one thread per rank, as tests/test_distributed.py launches them (OMP_NUM_THREADS=1): W ranks
# of several threads each on CI's 2 cores would oversubscribe them
backend.set_default_threads(1)

comm = MPI.COMM_WORLD


def collective(fn, *args):
    """Run a check on every rank; any exception aborts every rank (a rank that went on
    alone would wait forever in the next test's collectives)."""
    try:
        fn(*args)
    except BaseException as exc:   # noqa: BLE001 - reported, then every rank ends
        print(f"FAIL rank {comm.Get_rank()}/{comm.Get_size()}: {type(exc).__name__}: {exc}",
              flush=True)
        traceback.print_exc(file=sys.stdout)
        sys.stdout.flush()
        comm.Abort(1)


@pytest.fixture
def shared_dir():
    """A directory every rank sees (rank 0 makes it)."""
    path = comm.bcast(tempfile.mkdtemp(prefix="lrcore-mpi-") if comm.Get_rank() == 0 else None)
    yield path
    comm.Barrier()
    if comm.Get_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)


def test_every_rule_default_options_bitwise():
    collective(cs.mode_rules, True)


def test_half_precision_and_8bit_state_bitwise():
    collective(cs.mode_lowp)


def test_checkpoint_round_trip_continues_bitwise(shared_dir):
    collective(cs.mode_save, shared_dir)
    comm.Barrier()
    assert os.path.exists(os.path.join(shared_dir, "lowp", "ckpt.lrc"))
    collective(cs.mode_load, shared_dir)


def test_faults_raise_on_every_rank():
    collective(cs.mode_faults)


def test_mismatch_caught_at_construction():
    collective(cs.mode_mismatch)


def test_refused_input_changes_nothing(shared_dir):
    collective(cs.mode_refusals, shared_dir)


def test_set_differing_between_ranks_refused_at_step():
    collective(cs.mode_set_mismatch)
