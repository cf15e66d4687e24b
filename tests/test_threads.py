"""lrcore's thread runtime (csrc/pool.c) and instruction-set choice (csrc/runtime.c):
fork safety, the caller's floating-point environment on every worker, bounded thread
counts, idle workers that sleep, concurrent callers, and a forced ISA that holds."""
import ctypes
import ctypes.util
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import lrcore

if lrcore.backend() != "native":
    pytest.skip("the thread pool exists only in the compiled backend", allow_module_level=True)

from lrcore import _core, kernels  # noqa: E402  (tests of the compiled core itself)

# Variables that change what a fresh `import lrcore` selects; a subprocess gets only ours.
_SWITCHES = ("LRCORE_BACKEND", "LRCORE_ISA", "OMP_NUM_THREADS", "LRCORE_NUM_THREADS")


def _run(code, timeout=60, **env):
    full = {k: v for k, v in os.environ.items() if k not in _SWITCHES}
    full.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full, timeout=timeout)


def _with_worker(call, tries=500):
    """Repeat `call()` until a pool worker (not the caller) ran part of it; return its result.
    Tasks go to whichever thread claims them first, so one call may run entirely on the
    caller; the tests below need a call where a worker really computed elements."""
    for _ in range(tries):
        before = _core.pool_worker_tasks()
        out = call()
        if _core.pool_worker_tasks() > before:
            return out
    pytest.fail(f"no pool worker took part in {tries} two-thread calls")


# 2^18 float32 elements: 1 MiB of param, split in two tasks of 512 KiB (above the 48 KiB
# per thread below which a call stays on one thread).
N = 1 << 18


def test_every_build_is_threaded_and_a_worker_takes_part():
    assert _core.has_threads()
    p, g = np.ones(N, np.float32), np.full(N, 0.5, np.float32)
    assert _core.planned_threads(p.nbytes, 2) == 2
    _with_worker(lambda: kernels.sgd(p, g, lr=1e-3, step=1, num_threads=2))
    assert _core.pool_workers() >= 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_calls_below_48_kib_of_param_per_thread_stay_on_one_thread(dtype):
    """README: calls below 48 KiB of param per thread stay on one thread. A call with
    num_threads=t runs on min(t, param bytes // 48 KiB) threads (at least one): no pool worker
    ever computes a part of a call one element short of 2 x 48 KiB of param (however large
    the grad and state), and one does at exactly 2 x 48 KiB."""
    kib48 = 48 * 1024
    assert _core.min_bytes_per_thread() == kib48
    for nbytes, threads, want in [(0, 8, 1), (kib48 - 1, 2, 1), (kib48, 2, 1),
                                  (2 * kib48 - 1, 2, 1), (2 * kib48, 2, 2), (2 * kib48, 8, 2),
                                  (3 * kib48 - 1, 8, 2), (3 * kib48, 8, 3), (3 * kib48, 2, 2),
                                  (100 * kib48, 1, 1), (100 * kib48, 8, 8)]:
        assert _core.planned_threads(nbytes, threads) == want, (nbytes, threads)
    item = np.dtype(dtype).itemsize
    n = 2 * kib48 // item

    def adam(m):
        rng = np.random.default_rng(m)
        p = rng.uniform(0.5, 1.5, m).astype(dtype)
        g, a, b = (rng.uniform(0.5, 1.5, m).astype(dtype) for _ in range(3))
        return lambda: kernels.adam(p, g, a, b, lr=1e-3, step=1, num_threads=2)

    small = adam(n - 1)
    before = _core.pool_worker_tasks()
    for _ in range(300):
        small()
    assert _core.pool_worker_tasks() == before, "a worker took part in a call below the bound"
    _with_worker(adam(n))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_calls_split_into_many_tasks_stay_bitwise(dtype):
    """Calls over 4 MiB of param per thread split into up to 4 tasks per thread of at least
    8 MiB each (runtime.c, tasks_for); smaller calls into tasks of at least 32 KiB. Every split
    gives the single-thread result bitwise, from a start that is not 64-byte aligned."""
    n = (26 << 20) // np.dtype(dtype).itemsize + 13      # 26 MiB of param: 3 tasks on 2 threads
    rng = np.random.default_rng(4)
    start = (rng.uniform(0.5, 1.5, n + 3).astype(dtype))[3:]
    grad = rng.uniform(-1, 1, n).astype(dtype)
    buf0 = rng.uniform(-1, 1, n).astype(dtype)
    results = []
    for threads in (1, 2):
        p, buf = start.copy(), buf0.copy()
        kernels.sgd(p, grad, buf, lr=1e-2, momentum=0.9, nesterov=True, weight_decay=0.1, step=2,
                    num_threads=threads)
        results.append(p.tobytes() + buf.tobytes())
    assert results[1] == results[0]


# --- fork -------------------------------------------------------------------------------------

def test_forked_child_can_use_threads_after_the_parent_did():
    """The issue's reproducer: with libgomp the child waited forever in a futex."""
    r = _run("""
        import os, numpy as np
        from lrcore import _core, kernels
        p = np.ones(1 << 22, np.float32); g = np.ones_like(p)
        kernels.sgd(p, g, lr=0.1, step=1, num_threads=2)
        assert _core.pool_workers() >= 1
        pid = os.fork()
        if pid == 0:
            ok = _core.pool_workers() == 0          # the parent's workers are not here
            q, r = np.ones(1 << 22, np.float32), np.ones(1 << 22, np.float32)
            for _ in range(20):
                kernels.sgd(q, g, lr=0.1, step=1, num_threads=2)
                kernels.sgd(r, g, lr=0.1, step=1, num_threads=1)
            ok = ok and _core.pool_workers() >= 1 and q.tobytes() == r.tobytes() and r[0] < 0
            if os.fork() == 0:                      # and a grandchild of a threaded child
                kernels.sgd(q, g, lr=0.1, step=1, num_threads=2)
                os._exit(0)
            ok = ok and os.wait()[1] == 0
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        kernels.sgd(p, g, lr=0.1, step=1, num_threads=2)   # the parent's pool still works
        print(os.waitstatus_to_exitcode(status))
        """, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0"


def test_fork_while_another_thread_runs_a_threaded_call():
    """pthread_atfork waits for a call in flight, so the child never inherits a half-used pool."""
    r = _run("""
        import os, threading, numpy as np
        from lrcore import kernels
        p = np.ones(1 << 22, np.float32); g = np.ones_like(p)
        stop = threading.Event()
        def loop():
            while not stop.is_set():
                kernels.sgd(p, g, lr=0.0, step=1, num_threads=2)
        t = threading.Thread(target=loop); t.start()
        codes = []
        for _ in range(10):
            pid = os.fork()
            if pid == 0:
                q = np.ones(1 << 20, np.float32)
                kernels.sgd(q, q.copy(), lr=0.5, step=1, num_threads=2)
                os._exit(0 if np.all(q == 0.5) else 3)
            codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        stop.set(); t.join()
        print(codes)
        """, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str([0] * 10)


# --- floating-point environment ---------------------------------------------------------------

def _denormal_case(dtype):
    tiny = np.finfo(dtype).tiny
    rng = np.random.default_rng(5)
    param = (rng.uniform(0.05, 0.95, N) * tiny).astype(dtype)        # denormal
    grad = (rng.uniform(-0.9, 0.9, N) * tiny).astype(dtype)          # denormal
    return param, grad


def _sgd_result(param, grad, threads):
    p = param.copy()
    kernels.sgd(p, grad, lr=0.5, step=1, num_threads=threads)
    return p


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flush_to_zero_reaches_every_worker(dtype):
    """torch.set_flush_denormal(True) sets FTZ/DAZ on the calling thread only; every worker
    must compute with it, or results depend on the thread count."""
    torch = pytest.importorskip("torch")
    param, grad = _denormal_case(dtype)
    plain = _sgd_result(param, grad, 1)
    assert np.count_nonzero(plain) > N // 2          # denormal results without FTZ
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU has no flush-to-zero mode")
    try:
        one = _sgd_result(param, grad, 1)
        two = _with_worker(lambda: _sgd_result(param, grad, 2))
    finally:
        torch.set_flush_denormal(False)
    assert np.count_nonzero(one) == 0                # FTZ/DAZ in effect on the caller
    assert two.tobytes() == one.tobytes()
    # and a later call without FTZ does not inherit it on the workers
    again = _with_worker(lambda: _sgd_result(param, grad, 2))
    assert again.tobytes() == plain.tobytes()


def _fesetround():
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    libm.fesetround.argtypes = [ctypes.c_int]
    libm.fegetround.restype = ctypes.c_int
    return libm


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
                    reason="rounding-mode constants below are glibc x86-64's")
def test_rounding_mode_reaches_every_worker():
    fe_tonearest, fe_towardzero = 0x000, 0xC00
    libm = _fesetround()
    assert libm.fegetround() == fe_tonearest
    rng = np.random.default_rng(6)
    param = rng.uniform(0.5, 1.5, N).astype(np.float32)
    grad = rng.uniform(-1, 1, N).astype(np.float32)
    m0, v0 = np.zeros_like(param), np.zeros_like(param)

    def adam(threads):
        p, m, v = param.copy(), m0.copy(), v0.copy()
        kernels.adam(p, grad, m, v, lr=1e-3, step=3, num_threads=threads)
        return p.tobytes() + m.tobytes() + v.tobytes()

    nearest = adam(1)
    assert libm.fesetround(fe_towardzero) == 0
    try:
        one = adam(1)
        two = _with_worker(lambda: adam(2))
    finally:
        libm.fesetround(fe_tonearest)
    assert one != nearest                            # the mode changes results ...
    assert two == one                                # ... on every thread alike


# --- thread counts ----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [10 ** 6, 2 ** 70, _core.max_threads() + 1])
def test_absurd_thread_counts_are_an_error_naming_num_threads(bad):
    p, g = np.ones(N, np.float32), np.ones(N, np.float32)
    workers = _core.pool_workers()
    with pytest.raises(ValueError, match=r"num_threads must be at most \d+"):
        kernels.sgd(p, g, lr=0.1, step=1, num_threads=bad)
    assert np.all(p == 1)                            # nothing modified
    with pytest.raises(ValueError, match="num_threads"):
        _core.planned_threads(p.nbytes, bad)
    with pytest.raises(ValueError, match="num_threads"):
        _core.set_default_threads(bad)
    assert _core.pool_workers() == workers           # no thread started


def test_the_bound_allows_oversubscription_up_to_four_per_cpu():
    assert _core.max_threads() == max(8, 4 * os.cpu_count())
    p, g = np.ones(N, np.float32), np.full(N, 0.5, np.float32)
    kernels.sgd(p, g, lr=1.0, step=1, num_threads=_core.max_threads())
    assert np.all(p == 0.5)
    assert _core.pool_workers() <= _core.max_threads() - 1


@pytest.fixture
def thread_env(monkeypatch):
    """Set LRCORE_NUM_THREADS / OMP_NUM_THREADS and read the default they give (the same
    function the import runs)."""
    def default(**env):
        for name in ("LRCORE_NUM_THREADS", "OMP_NUM_THREADS"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return _core._default_threads()
    return default


@pytest.mark.parametrize("value,expected", [("3", 3), (" 1 ", 1)])
def test_lrcore_num_threads_sets_the_default(thread_env, value, expected):
    assert thread_env(LRCORE_NUM_THREADS=value) == expected


@pytest.mark.parametrize("value", ["0", "-2", "abc", "5000000000", str(10 ** 30), "2.5"])
def test_bad_lrcore_num_threads_is_an_error_naming_it(thread_env, value):
    with pytest.raises(ValueError, match="^LRCORE_NUM_THREADS must be an integer from 1 to"):
        thread_env(LRCORE_NUM_THREADS=value)


@pytest.mark.parametrize("value", ["100000", "5000000000", str(10 ** 30), "99999999,2"])
def test_absurd_omp_num_threads_is_clamped(thread_env, value):
    """OMP_NUM_THREADS belongs to every OpenMP library in the process: lrcore clamps it."""
    assert thread_env(OMP_NUM_THREADS=value) == _core.max_threads()


@pytest.mark.parametrize("value", ["0", "abc", ""])
def test_unusable_omp_num_threads_is_ignored(thread_env, value):
    assert thread_env(OMP_NUM_THREADS=value) == thread_env()


def test_lrcore_num_threads_wins_over_omp_num_threads(thread_env):
    assert thread_env(LRCORE_NUM_THREADS="2", OMP_NUM_THREADS="5") == 2


def test_environment_at_import():
    """What the import does with them: an error naming LRCORE_NUM_THREADS (never an
    OverflowError), a clamp for OMP_NUM_THREADS."""
    code = "from lrcore import _core; print(_core.default_threads(), _core.max_threads())"
    r = _run(code, LRCORE_NUM_THREADS="5000000000")
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: LRCORE_NUM_THREADS must be an integer from 1 to"), last
    r = _run(code, OMP_NUM_THREADS="5000000000")
    assert r.returncode == 0, r.stderr
    default, bound = r.stdout.split()
    assert default == bound
    r = _run(code, LRCORE_NUM_THREADS="3", OMP_NUM_THREADS="5")
    assert r.stdout.split()[0] == "3", r.stderr


def test_a_worker_the_os_refuses_leaves_the_call_on_fewer_threads():
    """Under an address-space limit pthread_create fails: the call still completes, on the
    threads the pool could start (libgomp exited the process with status 1)."""
    r = _run("""
        import resource, numpy as np
        from lrcore import _core, kernels
        p, g = np.ones(1 << 20, np.float32), np.full(1 << 20, 0.5, np.float32)
        used = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + (3 << 20),) * 2)   # ~2 worker stacks
        kernels.sgd(p, g, lr=1.0, step=1, num_threads=_core.max_threads())
        # p.min()/max(): no new array under the limit
        print(p.min() == 0.5 and p.max() == 0.5, _core.pool_workers() < _core.max_threads() - 1)
        """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True"]


# --- waiting ----------------------------------------------------------------------------------

def test_idle_workers_sleep():
    """After a short spin the workers block: an idle pool costs no CPU, so it never competes
    with another runtime's threads (torch's OpenMP) between calls."""
    p, g = np.ones(1 << 20, np.float32), np.full(1 << 20, 0.5, np.float32)
    for _ in range(20):
        kernels.sgd(p, g, lr=0.0, step=1, num_threads=2)
    time.sleep(0.01)                                 # past the 50 us spin
    cpu0, wall0 = time.process_time(), time.perf_counter()
    time.sleep(0.3)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    assert cpu < 0.1 * wall, f"idle process used {cpu:.3f} s CPU in {wall:.3f} s"


# --- concurrent callers -----------------------------------------------------------------------

def test_concurrent_calls_from_python_threads_match_sequential():
    """Calls from several Python threads at once (GIL released): one uses the workers, the
    others run on their own thread; every result equals the sequential one bitwise."""
    rng = np.random.default_rng(8)
    starts = [rng.uniform(0.5, 1.5, N + 17 * k).astype(np.float32) for k in range(4)]
    grads = [rng.uniform(-1, 1, s.size).astype(np.float32) for s in starts]

    def work(k, out):
        p = starts[k].copy()
        m, v = np.zeros_like(p), np.zeros_like(p)
        for step in range(1, 31):
            kernels.adam(p, grads[k], m, v, lr=1e-2, step=step, num_threads=2)
        out[k] = p.tobytes() + m.tobytes() + v.tobytes()

    sequential, concurrent = {}, {}
    for k in range(4):
        work(k, sequential)
    threads = [threading.Thread(target=work, args=(k, concurrent)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert concurrent == sequential


# --- instruction set --------------------------------------------------------------------------

def test_available_isas_changes_nothing():
    before = _core.isa()
    lowest = _core.available_isas()[0]
    _core.set_isa(lowest)
    try:
        assert _core.available_isas()[0] == lowest
        assert _core.isa() == lowest
    finally:
        _core.set_isa(before)


def test_forced_isa_holds_after_available_isas():
    """The issue's reproducer: available_isas() used to set each level in turn and leave the best."""
    r = _run("""
        import lrcore
        print(lrcore.isa())
        print(*lrcore.available_isas())
        print(lrcore.isa())
        """, LRCORE_ISA="baseline")
    assert r.returncode == 0, r.stderr
    first, isas, last = r.stdout.splitlines()
    assert first == last == "baseline"
    assert isas.split()[0] == "baseline"


def test_isa_is_chosen_once_whichever_thread_asks_first():
    """Eight threads make the process's first kernel calls at once: all see one choice."""
    r = _run("""
        import threading, numpy as np
        from lrcore import _core
        seen, barrier = [], threading.Barrier(8)
        def first():
            barrier.wait()
            seen.append(_core.isa())
        ts = [threading.Thread(target=first) for _ in range(8)]
        [t.start() for t in ts]; [t.join() for t in ts]
        print(len(set(seen)), seen[0] == _core.available_isas()[-1])
        """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "True"]
