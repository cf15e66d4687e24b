"""Shared fixtures: every compiled instruction-set path the machine has, and tolerances.

Tests that use torch run it on one thread: torch's OpenMP workers spinning against other
work on a small shared machine turned a 6 s test into 7 minutes (issue 9, item 3).
"""
import sys

import numpy as np
import pytest

import lrcore


def pin_torch_threads():
    """torch (if imported) on one intra-op thread; a no-op without torch."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "torch_compare: compares lrcore with torch.optim; run again under every "
                   "ATEN_CPU_CAPABILITY by tests/test_torch_optim.py")


def pytest_collection_finish(session):
    pin_torch_threads()          # torch modules are imported while collecting


@pytest.fixture(autouse=True)
def _torch_on_one_thread():
    pin_torch_threads()          # also for a test that imported torch in an earlier test
    yield


def _isas():
    return lrcore.available_isas()


@pytest.fixture(params=_isas())
def isa(request):
    """Force each instruction-set build the CPU supports in turn (native backend)."""
    if lrcore.backend() != "native":
        yield request.param
        return
    from lrcore import backend
    before = backend.isa()
    backend.set_isa(request.param)
    try:
        yield request.param
    finally:
        backend.set_isa(before)


@pytest.fixture
def force_threads():
    """Let even small calls split across threads, to test the split itself."""
    if lrcore.backend() != "native":
        pytest.skip("threads exist only in the compiled backend")
    from lrcore import backend
    core = backend.core()     # the compiled core's tuning hooks, through the backend switch
    before = core.min_bytes_per_thread()
    core.set_min_bytes_per_thread(64)
    try:
        yield
    finally:
        core.set_min_bytes_per_thread(before)


def tolerances(dtype):
    """Element-wise tolerances scaled to the dtype's precision."""
    eps = np.finfo(dtype).eps
    return dict(rtol=16 * eps, atol=16 * eps)


SIZES = (0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 1000, 1003, 65_537 + 2)
