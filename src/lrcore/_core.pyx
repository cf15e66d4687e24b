# cython: language_level=3
"""Compiled backend of lrcore.kernels: argument checks, then the C kernels without the GIL.

Design: every public function validates all of its arguments before touching any
memory (so a bad call modifies nothing), packs them into one `lrcore_job`, and hands
the job to the native runner (runtime.c), which splits it across threads and runs
the best instruction-set build of the kernels in lrcore.h. `StepPlan` does the same
for many buffers at once (an optimizer step over a model's parameters): the
buffers are checked once when the plan is made, the gradients at every step.
The checks mirror lrcore/_validate.py (used by the numpy backend) exactly; the
test-suite holds both to one table of bad inputs.
"""
cimport cython
cimport numpy as cnp
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_CheckExact
from libc.math cimport isfinite
from libc.stdint cimport int64_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

import numbers
import os

import numpy as np

cnp.import_array()

from lrcore.clrcore cimport (lrcore_adadelta_hp, lrcore_adagrad_hp, lrcore_adam_hp,
                              lrcore_rmsprop_hp, lrcore_sgd_hp)

cdef extern from "lrcore_lowp.h" nogil:
    ctypedef struct lrcore_lowp:
        int param, grad, state, rounding
        uint64_t seed, step, index_offset


cdef extern from "runtime.h" nogil:
    enum:
        LRCORE_SGD, LRCORE_ADAM, LRCORE_ADAGRAD, LRCORE_RMSPROP, LRCORE_ADADELTA, LRCORE_PROBE
        LRCORE_F32, LRCORE_F64
    ctypedef union lrcore_hp:
        lrcore_sgd_hp sgd
        lrcore_adam_hp adam
        lrcore_adagrad_hp adagrad
        lrcore_rmsprop_hp rmsprop
        lrcore_adadelta_hp adadelta
    ctypedef struct lrcore_job:
        int kind
        int dtype
        size_t n
        char *param
        const char *grad
        char *state[3]
        lrcore_hp hp
        lrcore_lowp lowp
    int lrcore_isa_supported()
    int lrcore_isa_available(int level)
    int lrcore_isa_active()
    int lrcore_set_isa(int level)
    int lrcore_has_threads()
    int lrcore_max_threads()
    int lrcore_plan_threads(size_t param_bytes, int requested, size_t min_bytes_per_thread)
    void lrcore_run_jobs(const lrcore_job *jobs, size_t njobs, int nthreads)
    double lrcore_grad_sumsq(const lrcore_job *jobs, size_t njobs, int nthreads, int *all_finite)

cdef extern from "pool.h" nogil:
    int lrcore_pool_workers()
    unsigned long long lrcore_pool_worker_tasks()


ISA_NAMES = ("baseline", "avx2", "avx512")

# A call uses a second thread only when each thread gets at least this many bytes of
# param: below it, waking a thread (about 1 us) costs more than it saves. Measured with
# bench/test_bench_optim.py::test_thread_threshold on the development machine: Adam float32
# pays from ~8k elements, plain SGD from ~32k; 48 KiB per thread (24,576 float32 elements
# in all for two threads) is where neither loses. See README, Performance.
cdef size_t MIN_BYTES_PER_THREAD = 48 * 1024


# Most threads a call may use: 4 per online CPU, at least 8 (csrc/pool.h). More can never
# help a memory-bound loop; the bound keeps a typo from starting a million OS threads.
MAX_THREADS = lrcore_max_threads()
_MAX_TEXT = f"{MAX_THREADS} (4 per CPU of this machine, at least 8)"


def _default_threads():
    """LRCORE_NUM_THREADS (checked: an error names it), else OMP_NUM_THREADS (another
    library's variable: clamped to [1, MAX_THREADS], ignored if not a number), else the CPUs
    this process may run on."""
    raw = os.environ.get("LRCORE_NUM_THREADS", "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if not 1 <= n <= MAX_THREADS:
            raise ValueError(f"LRCORE_NUM_THREADS must be an integer from 1 to {_MAX_TEXT}, "
                             f"got {raw!r}")
        return n
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n >= 1:
            return min(n, MAX_THREADS)
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_THREADS))


cdef int DEFAULT_THREADS = _default_threads()


def isa():
    """Name of the instruction-set build in use: 'baseline', 'avx2' or 'avx512'."""
    return ISA_NAMES[lrcore_isa_active()]


def available_isas():
    """Instruction-set builds this CPU can run, lowest first (changes nothing)."""
    return tuple(ISA_NAMES[level] for level in range(len(ISA_NAMES)) if lrcore_isa_available(level))


def set_isa(name):
    """Force an instruction-set build (at most the best supported); returns the one in use."""
    if name is None:
        return ISA_NAMES[lrcore_set_isa(-1)]
    if name not in ISA_NAMES:
        raise ValueError(f"LRCORE_ISA must be one of {', '.join(ISA_NAMES)}, got {name!r}")
    cdef int want = ISA_NAMES.index(name)
    if not lrcore_isa_available(want):
        raise ValueError(f"LRCORE_ISA={name!r} is not supported on this CPU; available: "
                         f"{', '.join(available_isas())}")
    return ISA_NAMES[lrcore_set_isa(want)]


def has_threads():
    """Always True: lrcore's thread pool (POSIX threads) is part of every build."""
    return bool(lrcore_has_threads())


def max_threads():
    """Most threads a call may use: 4 per CPU of this machine, at least 8."""
    return MAX_THREADS


def default_threads():
    """Threads used when num_threads=None (LRCORE_NUM_THREADS, else OMP_NUM_THREADS, else
    the usable CPUs)."""
    return DEFAULT_THREADS


def set_default_threads(n):
    """Change the num_threads=None default for this process."""
    global DEFAULT_THREADS
    if n is None:
        raise TypeError("set_default_threads(): num_threads must be an integer, got NoneType")
    DEFAULT_THREADS = _threads("set_default_threads", n)


def set_min_bytes_per_thread(size_t nbytes):
    """Tune the size below which a call uses fewer threads (bench/ measures it)."""
    global MIN_BYTES_PER_THREAD
    MIN_BYTES_PER_THREAD = nbytes


def min_bytes_per_thread():
    return MIN_BYTES_PER_THREAD


def planned_threads(size_t param_bytes, num_threads=None):
    """Threads a call over param_bytes of param would use."""
    return lrcore_plan_threads(param_bytes, _threads("planned_threads", num_threads),
                               MIN_BYTES_PER_THREAD)


def pool_workers():
    """Worker threads alive in lrcore's pool (0 in a forked child until its first threaded call)."""
    return lrcore_pool_workers()


def pool_worker_tasks():
    """Tasks run by pool workers (not by callers) so far in this process; tests use it to check
    that a worker really took part in a call."""
    return lrcore_pool_worker_tasks()


# ---------------------------------------------------------------------------
# Argument checks. Messages name the function, the argument, the value and the
# expectation; exception types match lrcore/_validate.py.
# ---------------------------------------------------------------------------

cdef inline str _tname(object x):
    return type(x).__name__


cdef double _real(str fn, str name, object x) except? -1.0:
    if PyFloat_CheckExact(x):
        return PyFloat_AS_DOUBLE(x)
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{fn}(): {name} must be a real number, got {_tname(x)}")
    return float(x)


cdef double _nonneg(str fn, str name, object x) except? -1.0:
    cdef double v = _real(fn, name, x)
    if not (isfinite(v) and v >= 0.0):
        raise ValueError(f"{fn}(): {name} must be a finite number >= 0, got {v!r}")
    return v


cdef double _unit_open(str fn, str name, object x) except? -1.0:
    """A value in [0, 1)."""
    cdef double v = _real(fn, name, x)
    if not (v >= 0.0 and v < 1.0):
        raise ValueError(f"{fn}(): {name} must be in [0, 1), got {v!r}")
    return v


# Largest step accepted: beta**step is exact to compute in double far beyond any real run.
STEP_MAX = 2 ** 53


cdef int64_t _step(str fn, object x) except? -1:
    cdef int overflow = 0
    cdef long long v = 0
    if PyLong_CheckExact(x):
        v = PyLong_AsLongLongAndOverflow(x, &overflow)
        if overflow == 0 and 1 <= v <= STEP_MAX:
            return v
    elif isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{fn}(): step must be an integer, got {_tname(x)}")
    x = int(x)
    if x < 1:
        raise ValueError(f"{fn}(): step must be >= 1 (1 for the first step), got {x}")
    if x > STEP_MAX:
        raise ValueError(f"{fn}(): step must be <= 2**53, got {x}")
    return x


cdef int _threads(str fn, object x) except -1:
    if x is None:
        return DEFAULT_THREADS
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{fn}(): num_threads must be an integer or None, got {_tname(x)}")
    if x < 1:
        raise ValueError(f"{fn}(): num_threads must be >= 1, got {x}")
    if x > MAX_THREADS:
        raise ValueError(f"{fn}(): num_threads must be at most {_MAX_TEXT}, got {x}")
    return int(x)


cdef int _dtype_code(str fn, str name, cnp.ndarray a) except -1:
    cdef int t = cnp.PyArray_TYPE(a)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise TypeError(f"{fn}(): {name} must have dtype float32 or float64, got {a.dtype}")
    if not cnp.PyArray_ISNOTSWAPPED(a):
        raise TypeError(f"{fn}(): {name} must be in native byte order, got dtype {a.dtype.str!r}")
    return LRCORE_F32 if t == cnp.NPY_FLOAT32 else LRCORE_F64


cdef cnp.ndarray _array(str fn, str name, object x, int dtype, cnp.npy_intp size, bint writeable):
    """Check one buffer against param's dtype (dtype < 0: this is param) and size."""
    if not cnp.PyArray_Check(x):
        raise TypeError(f"{fn}(): {name} must be a numpy.ndarray, got {_tname(x)}")
    cdef cnp.ndarray a = <cnp.ndarray>x
    cdef int code = _dtype_code(fn, name, a)
    if dtype >= 0 and code != dtype:
        raise TypeError(f"{fn}(): {name} has dtype {a.dtype} but param has dtype "
                        f"{'float32' if dtype == LRCORE_F32 else 'float64'}; all buffers must share one dtype")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise ValueError(f"{fn}(): {name} must be C-contiguous (it is updated in place, "
                         f"a copy would lose the update)" if writeable else
                         f"{fn}(): {name} must be C-contiguous")
    if writeable and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{fn}(): {name} is read-only; it must be writeable")
    if size >= 0 and cnp.PyArray_SIZE(a) != size:
        raise ValueError(f"{fn}(): {name} has {cnp.PyArray_SIZE(a)} elements but param has {size}; "
                         f"all buffers must have the same size")
    return a


cdef int _check_overlap(str fn, list names, list arrays) except -1:
    """Contiguous buffers overlap exactly when their byte ranges intersect."""
    cdef Py_ssize_t i, j, k = len(arrays)
    cdef uintptr_t a0, a1, b0, b1
    cdef cnp.ndarray a, b
    for i in range(k):
        a = <cnp.ndarray>arrays[i]
        if cnp.PyArray_NBYTES(a) == 0:
            continue
        a0 = <uintptr_t>cnp.PyArray_DATA(a)
        a1 = a0 + <uintptr_t>cnp.PyArray_NBYTES(a)
        for j in range(i + 1, k):
            b = <cnp.ndarray>arrays[j]
            if cnp.PyArray_NBYTES(b) == 0:
                continue
            b0 = <uintptr_t>cnp.PyArray_DATA(b)
            b1 = b0 + <uintptr_t>cnp.PyArray_NBYTES(b)
            if a0 < b1 and b0 < a1:
                raise ValueError(f"{fn}(): {names[i]} and {names[j]} share memory; "
                                 f"every buffer must be a separate array")
    return 0


cdef inline char *_ptr(cnp.ndarray a):
    return NULL if a is None else <char *>cnp.PyArray_DATA(a)


cdef int _run(lrcore_job *job, int nthreads) except -1:
    cdef size_t es = 4 if job.dtype == LRCORE_F32 else 8
    cdef int nt = lrcore_plan_threads(job.n * es, nthreads, MIN_BYTES_PER_THREAD)
    if job.n == 0:
        return 0
    with nogil:
        lrcore_run_jobs(job, 1, nt)
    return 0


cdef int _buffers(str fn, lrcore_job *job, list names, list objs, list writeable,
                  list arrays) except -1:
    """Check param (first), grad (second) and the state buffers; fill job pointers."""
    cdef cnp.ndarray p = _array(fn, names[0], objs[0], -1, -1, True)
    cdef int dtype = _dtype_code(fn, names[0], p)
    cdef cnp.npy_intp size = cnp.PyArray_SIZE(p)
    cdef Py_ssize_t i
    arrays.append(p)
    used = [names[0]]
    for i in range(1, len(objs)):
        if objs[i] is None and i > 1:
            continue
        arrays.append(_array(fn, names[i], objs[i], dtype, size, writeable[i]))
        used.append(names[i])
    _check_overlap(fn, used, arrays)
    job.dtype = dtype
    job.n = <size_t>size
    return 0


# ---------------------------------------------------------------------------
# The kernels (docstrings are attached from lrcore.reference by lrcore.kernels)
# ---------------------------------------------------------------------------

def sgd(param, grad, momentum_buffer=None, *, lr, step, momentum=0.0, dampening=0.0,
        nesterov=False, weight_decay=0.0, maximize=False, num_threads=None):
    cdef str fn = "sgd"
    cdef lrcore_job job
    memset(&job, 0, sizeof(job))
    job.kind = LRCORE_SGD
    job.hp.sgd.lr = _nonneg(fn, "lr", lr)
    job.hp.sgd.step = _step(fn, step)
    job.hp.sgd.momentum = _nonneg(fn, "momentum", momentum)
    job.hp.sgd.dampening = _real(fn, "dampening", dampening)
    if not (job.hp.sgd.dampening >= 0.0 and job.hp.sgd.dampening <= 1.0):
        raise ValueError(f"{fn}(): dampening must be in [0, 1], got {job.hp.sgd.dampening!r}")
    job.hp.sgd.weight_decay = _nonneg(fn, "weight_decay", weight_decay)
    job.hp.sgd.nesterov = bool(nesterov)
    job.hp.sgd.maximize = bool(maximize)
    job.hp.sgd.grad_scale = 1.0
    if job.hp.sgd.nesterov and (job.hp.sgd.momentum <= 0.0 or job.hp.sgd.dampening != 0.0):
        raise ValueError(f"{fn}(): nesterov requires momentum > 0 and dampening = 0, got "
                         f"momentum={job.hp.sgd.momentum!r}, dampening={job.hp.sgd.dampening!r}")
    if job.hp.sgd.momentum > 0.0 and momentum_buffer is None:
        raise ValueError(f"{fn}(): momentum_buffer is required when momentum > 0")
    cdef int nt = _threads(fn, num_threads)
    arrays = []
    _buffers(fn, &job, ["param", "grad", "momentum_buffer"],
             [param, grad, momentum_buffer], [True, False, True], arrays)
    job.param = _ptr(arrays[0])
    job.grad = _ptr(arrays[1])
    job.state[0] = _ptr(arrays[2]) if job.hp.sgd.momentum > 0.0 else NULL
    _run(&job, nt)


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, lr, step, beta1=0.9,
         beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, maximize=False,
         num_threads=None):
    cdef str fn = "adam"
    cdef lrcore_job job
    memset(&job, 0, sizeof(job))
    job.kind = LRCORE_ADAM
    job.hp.adam.lr = _nonneg(fn, "lr", lr)
    job.hp.adam.step = _step(fn, step)
    job.hp.adam.beta1 = _unit_open(fn, "beta1", beta1)
    job.hp.adam.beta2 = _unit_open(fn, "beta2", beta2)
    job.hp.adam.eps = _nonneg(fn, "eps", eps)
    job.hp.adam.weight_decay = _nonneg(fn, "weight_decay", weight_decay)
    job.hp.adam.decoupled_weight_decay = bool(decoupled_weight_decay)
    job.hp.adam.maximize = bool(maximize)
    job.hp.adam.grad_scale = 1.0
    cdef int nt = _threads(fn, num_threads)
    if exp_avg is None:
        raise TypeError(f"{fn}(): exp_avg must be a numpy.ndarray, got NoneType")
    if exp_avg_sq is None:
        raise TypeError(f"{fn}(): exp_avg_sq must be a numpy.ndarray, got NoneType")
    arrays = []
    _buffers(fn, &job, ["param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
             [param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq],
             [True, False, True, True, True], arrays)
    job.param = _ptr(arrays[0])
    job.grad = _ptr(arrays[1])
    job.state[0] = _ptr(arrays[2])
    job.state[1] = _ptr(arrays[3])
    job.state[2] = _ptr(arrays[4]) if max_exp_avg_sq is not None else NULL
    _run(&job, nt)


def adagrad(param, grad, state_sum, *, lr, step, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
            maximize=False, num_threads=None):
    cdef str fn = "adagrad"
    cdef lrcore_job job
    memset(&job, 0, sizeof(job))
    job.kind = LRCORE_ADAGRAD
    job.hp.adagrad.lr = _nonneg(fn, "lr", lr)
    job.hp.adagrad.step = _step(fn, step)
    job.hp.adagrad.lr_decay = _nonneg(fn, "lr_decay", lr_decay)
    job.hp.adagrad.weight_decay = _nonneg(fn, "weight_decay", weight_decay)
    job.hp.adagrad.eps = _nonneg(fn, "eps", eps)
    job.hp.adagrad.maximize = bool(maximize)
    job.hp.adagrad.grad_scale = 1.0
    cdef int nt = _threads(fn, num_threads)
    if state_sum is None:
        raise TypeError(f"{fn}(): state_sum must be a numpy.ndarray, got NoneType")
    arrays = []
    _buffers(fn, &job, ["param", "grad", "state_sum"], [param, grad, state_sum],
             [True, False, True], arrays)
    job.param = _ptr(arrays[0])
    job.grad = _ptr(arrays[1])
    job.state[0] = _ptr(arrays[2])
    _run(&job, nt)


def rmsprop(param, grad, square_avg, momentum_buffer=None, grad_avg=None, *, lr, step, alpha=0.99,
            eps=1e-8, weight_decay=0.0, momentum=0.0, maximize=False, num_threads=None):
    cdef str fn = "rmsprop"
    cdef lrcore_job job
    memset(&job, 0, sizeof(job))
    job.kind = LRCORE_RMSPROP
    job.hp.rmsprop.lr = _nonneg(fn, "lr", lr)
    job.hp.rmsprop.step = _step(fn, step)
    job.hp.rmsprop.alpha = _unit_open(fn, "alpha", alpha)
    job.hp.rmsprop.eps = _nonneg(fn, "eps", eps)
    job.hp.rmsprop.weight_decay = _nonneg(fn, "weight_decay", weight_decay)
    job.hp.rmsprop.momentum = _nonneg(fn, "momentum", momentum)
    job.hp.rmsprop.maximize = bool(maximize)
    job.hp.rmsprop.grad_scale = 1.0
    cdef int nt = _threads(fn, num_threads)
    if square_avg is None:
        raise TypeError(f"{fn}(): square_avg must be a numpy.ndarray, got NoneType")
    if job.hp.rmsprop.momentum > 0.0 and momentum_buffer is None:
        raise ValueError(f"{fn}(): momentum_buffer is required when momentum > 0")
    arrays = []
    _buffers(fn, &job, ["param", "grad", "square_avg", "momentum_buffer", "grad_avg"],
             [param, grad, square_avg, momentum_buffer, grad_avg],
             [True, False, True, True, True], arrays)
    job.param = _ptr(arrays[0])
    job.grad = _ptr(arrays[1])
    job.state[0] = _ptr(arrays[2])
    cdef Py_ssize_t k = 3
    if momentum_buffer is not None:
        job.state[1] = _ptr(arrays[k]) if job.hp.rmsprop.momentum > 0.0 else NULL
        k += 1
    if grad_avg is not None:
        job.state[2] = _ptr(arrays[k])
    _run(&job, nt)


def adadelta(param, grad, square_avg, acc_delta, *, lr, step, rho=0.9, eps=1e-6, weight_decay=0.0,
             maximize=False, num_threads=None):
    cdef str fn = "adadelta"
    cdef lrcore_job job
    memset(&job, 0, sizeof(job))
    job.kind = LRCORE_ADADELTA
    job.hp.adadelta.lr = _nonneg(fn, "lr", lr)
    job.hp.adadelta.step = _step(fn, step)
    job.hp.adadelta.rho = _unit_open(fn, "rho", rho)
    job.hp.adadelta.eps = _nonneg(fn, "eps", eps)
    job.hp.adadelta.weight_decay = _nonneg(fn, "weight_decay", weight_decay)
    job.hp.adadelta.maximize = bool(maximize)
    job.hp.adadelta.grad_scale = 1.0
    cdef int nt = _threads(fn, num_threads)
    if square_avg is None:
        raise TypeError(f"{fn}(): square_avg must be a numpy.ndarray, got NoneType")
    if acc_delta is None:
        raise TypeError(f"{fn}(): acc_delta must be a numpy.ndarray, got NoneType")
    arrays = []
    _buffers(fn, &job, ["param", "grad", "square_avg", "acc_delta"],
             [param, grad, square_avg, acc_delta], [True, False, True, True], arrays)
    job.param = _ptr(arrays[0])
    job.grad = _ptr(arrays[1])
    job.state[0] = _ptr(arrays[2])
    job.state[1] = _ptr(arrays[3])
    _run(&job, nt)


def probe(param, grad, s0=None, s1=None, s2=None, *, scale=1.0, num_threads=None):
    """Bandwidth probe for benchmarks: param += scale * grad and each given state +=
    scale * grad, with the kernels' threading and alignment. It moves the bytes of an
    update rule with the same state buffers (reads: param, grad, states; writes: param,
    states), with almost no arithmetic, so its speed is the memory system's limit for that
    access pattern. scale=0 leaves finite data unchanged."""
    cdef str fn = "probe"
    cdef lrcore_job job
    memset(&job, 0, sizeof(job))
    job.kind = LRCORE_PROBE
    job.hp.sgd.grad_scale = _real(fn, "scale", scale)
    cdef int nt = _threads(fn, num_threads)
    states = [s for s in (s0, s1, s2) if s is not None]
    arrays = []
    _buffers(fn, &job, ["param", "grad", "s0", "s1", "s2"][:2 + len(states)],
             [param, grad] + states, [True, False, True, True, True], arrays)
    job.param = _ptr(arrays[0])
    job.grad = _ptr(arrays[1])
    cdef Py_ssize_t k
    for k in range(len(states)):
        job.state[k] = _ptr(arrays[2 + k])
    _run(&job, nt)


# ---------------------------------------------------------------------------
# Many buffers in one call: the optimizers' step
# ---------------------------------------------------------------------------

_KINDS = {"sgd": LRCORE_SGD, "adam": LRCORE_ADAM, "adagrad": LRCORE_ADAGRAD,
          "rmsprop": LRCORE_RMSPROP, "adadelta": LRCORE_ADADELTA}


cdef class StepPlan:
    """One optimizer step over many (param, state...) buffer sets, as one threaded call.

    StepPlan(kind, params, states, groups): `params` a list of arrays, `states` a list
    (one per param) of 3-tuples of state arrays or None in kernel order, `groups` the
    group index of each param. Buffers are checked once here (dtype, contiguity,
    writeability, sizes, no shared memory anywhere) and kept alive by the plan.
    Hyperparameters are validated by the caller (lrcore.optim).
    """
    cdef lrcore_job *jobs
    cdef readonly Py_ssize_t njobs
    cdef readonly str kind
    cdef int kind_code
    cdef list keep
    cdef list group_of
    cdef readonly size_t param_bytes
    cdef list extents      # sorted (start, end) of every owned buffer
    cdef list grads        # the grads whose pointers the jobs hold (kept alive)

    def __cinit__(self, str kind, list params, list states, list groups):
        self.jobs = NULL

    def __init__(self, str kind, list params, list states, list groups):
        if kind not in _KINDS:
            raise ValueError(f"StepPlan: kind must be one of {sorted(_KINDS)}, got {kind!r}")
        if not (len(params) == len(states) == len(groups)):
            raise ValueError("StepPlan: params, states and groups must have the same length")
        self.kind = kind
        self.kind_code = _KINDS[kind]
        self.njobs = len(params)
        self.jobs = <lrcore_job *>malloc(sizeof(lrcore_job) * max(1, self.njobs))
        if self.jobs == NULL:
            raise MemoryError()
        memset(self.jobs, 0, sizeof(lrcore_job) * max(1, self.njobs))
        self.keep = []
        self.group_of = [int(g) for g in groups]
        names, arrays = [], []
        cdef Py_ssize_t i, k
        cdef cnp.ndarray p, a
        cdef int dtype
        self.param_bytes = 0
        for i in range(self.njobs):
            p = _array("step", f"params[{i}]", params[i], -1, -1, True)
            dtype = _dtype_code("step", f"params[{i}]", p)
            self.jobs[i].kind = self.kind_code
            self.jobs[i].dtype = dtype
            self.jobs[i].n = <size_t>cnp.PyArray_SIZE(p)
            self.jobs[i].param = <char *>cnp.PyArray_DATA(p)
            self.param_bytes += <size_t>cnp.PyArray_NBYTES(p)
            names.append(f"params[{i}]")
            arrays.append(p)
            st = states[i]
            if len(st) != 3:
                raise ValueError("StepPlan: each states entry must have 3 slots")
            for k in range(3):
                if st[k] is None:
                    continue
                a = _array("step", f"state of params[{i}]", st[k], dtype, cnp.PyArray_SIZE(p), True)
                self.jobs[i].state[k] = <char *>cnp.PyArray_DATA(a)
                names.append(f"state of params[{i}]")
                arrays.append(a)
        self.keep = arrays
        ext = []
        for i in range(len(arrays)):
            a = <cnp.ndarray>arrays[i]
            if cnp.PyArray_NBYTES(a):
                ext.append((<uintptr_t>cnp.PyArray_DATA(a),
                            <uintptr_t>cnp.PyArray_DATA(a) + <uintptr_t>cnp.PyArray_NBYTES(a), names[i]))
        ext.sort()
        for i in range(1, len(ext)):
            if ext[i][0] < ext[i - 1][1]:
                raise ValueError(f"step(): {ext[i - 1][2]} and {ext[i][2]} share memory; "
                                 f"every parameter and state buffer must be a separate array")
        self.extents = ext

    def __dealloc__(self):
        free(self.jobs)

    cdef int _set_grads(self, list grads) except -1:
        if len(grads) != self.njobs:
            raise ValueError(f"step(): got {len(grads)} grads for {self.njobs} params; "
                             f"pass one grad per param, in the same order")
        cdef Py_ssize_t i, lo, hi, mid
        cdef cnp.ndarray g
        cdef uintptr_t g0, g1
        ext = self.extents
        cdef Py_ssize_t ne = len(ext)
        for i in range(self.njobs):
            g = _array("step", f"grads[{i}]", grads[i],
                       self.jobs[i].dtype, <cnp.npy_intp>self.jobs[i].n, False)
            if cnp.PyArray_NBYTES(g) == 0:
                continue
            g0 = <uintptr_t>cnp.PyArray_DATA(g)
            g1 = g0 + <uintptr_t>cnp.PyArray_NBYTES(g)
            # the first owned extent whose end is past g0 is the only candidate to overlap
            lo, hi = 0, ne
            while lo < hi:
                mid = (lo + hi) // 2
                if <uintptr_t>ext[mid][1] <= g0:
                    lo = mid + 1
                else:
                    hi = mid
            if lo < ne and <uintptr_t>ext[lo][0] < g1:
                raise ValueError(f"step(): grads[{i}] shares memory with {ext[lo][2]}; "
                                 f"gradients must be separate arrays")
        self.grads = list(grads)
        for i in range(self.njobs):
            self.jobs[i].grad = <const char *>cnp.PyArray_DATA(<cnp.ndarray>self.grads[i])
        return 0

    def grad_sumsq(self, list grads, num_threads=None):
        """(sum of squares of all grads in double, every element finite), one read of grads."""
        self._set_grads(grads)
        cdef int nt = lrcore_plan_threads(self.param_bytes, _threads("step", num_threads),
                                          MIN_BYTES_PER_THREAD)
        cdef int finite = 1
        cdef double total
        with nogil:
            total = lrcore_grad_sumsq(self.jobs, self.njobs, nt, &finite)
        return total, bool(finite)

    def run(self, list grads, list group_hps, double grad_scale=1.0, num_threads=None,
            bint grads_checked=False):
        """Apply one step. group_hps[g] is a tuple of the group's hyperparameters:
        sgd (lr, momentum, dampening, weight_decay, nesterov, maximize, step);
        adam (lr, beta1, beta2, eps, weight_decay, decoupled, maximize, step);
        adagrad (lr, lr_decay, weight_decay, eps, maximize, step);
        rmsprop (lr, alpha, eps, weight_decay, momentum, maximize, step);
        adadelta (lr, rho, eps, weight_decay, maximize, step)."""
        if not grads_checked or self.grads is None or len(grads) != len(self.grads) \
                or any(a is not b for a, b in zip(grads, self.grads)):
            self._set_grads(grads)
        cdef int nt = lrcore_plan_threads(self.param_bytes, _threads("step", num_threads),
                                          MIN_BYTES_PER_THREAD)
        cdef Py_ssize_t ng = len(group_hps), gi = 0
        cdef lrcore_hp *hps = <lrcore_hp *>malloc(sizeof(lrcore_hp) * max(1, ng))
        if hps == NULL:
            raise MemoryError()
        cdef lrcore_hp hp
        for t in group_hps:
            memset(&hp, 0, sizeof(hp))
            if self.kind_code == LRCORE_SGD:
                hp.sgd.lr, hp.sgd.momentum, hp.sgd.dampening, hp.sgd.weight_decay = t[0], t[1], t[2], t[3]
                hp.sgd.nesterov, hp.sgd.maximize, hp.sgd.step = t[4], t[5], t[6]
                hp.sgd.grad_scale = grad_scale
            elif self.kind_code == LRCORE_ADAM:
                hp.adam.lr, hp.adam.beta1, hp.adam.beta2, hp.adam.eps = t[0], t[1], t[2], t[3]
                hp.adam.weight_decay, hp.adam.decoupled_weight_decay = t[4], t[5]
                hp.adam.maximize, hp.adam.step = t[6], t[7]
                hp.adam.grad_scale = grad_scale
            elif self.kind_code == LRCORE_ADAGRAD:
                hp.adagrad.lr, hp.adagrad.lr_decay, hp.adagrad.weight_decay = t[0], t[1], t[2]
                hp.adagrad.eps, hp.adagrad.maximize, hp.adagrad.step = t[3], t[4], t[5]
                hp.adagrad.grad_scale = grad_scale
            elif self.kind_code == LRCORE_RMSPROP:
                hp.rmsprop.lr, hp.rmsprop.alpha, hp.rmsprop.eps = t[0], t[1], t[2]
                hp.rmsprop.weight_decay, hp.rmsprop.momentum = t[3], t[4]
                hp.rmsprop.maximize, hp.rmsprop.step = t[5], t[6]
                hp.rmsprop.grad_scale = grad_scale
            else:
                hp.adadelta.lr, hp.adadelta.rho, hp.adadelta.eps = t[0], t[1], t[2]
                hp.adadelta.weight_decay, hp.adadelta.maximize, hp.adadelta.step = t[3], t[4], t[5]
                hp.adadelta.grad_scale = grad_scale
            hps[gi] = hp
            gi += 1
        cdef Py_ssize_t i, g
        for i in range(self.njobs):
            g = self.group_of[i]
            if g < 0 or g >= ng:
                free(hps)
                raise ValueError(f"StepPlan.run: no hyperparameters for group {g}")
            self.jobs[i].hp = hps[g]
        free(hps)
        with nogil:
            lrcore_run_jobs(self.jobs, self.njobs, nt)


# ---------------------------------------------------------------------------
# bfloat16 / float16 buffers (issue 12): lrcore.lowp validates, this runs
# ---------------------------------------------------------------------------

cdef int _pack_hp_by_name(int kind, dict d, lrcore_hp *hp) except -1:
    """Hyperparameters (already validated by lrcore.lowp) into the kind's C struct."""
    memset(hp, 0, sizeof(lrcore_hp))
    if kind == LRCORE_SGD:
        hp.sgd.lr, hp.sgd.momentum, hp.sgd.dampening = d["lr"], d["momentum"], d["dampening"]
        hp.sgd.weight_decay, hp.sgd.nesterov = d["weight_decay"], d["nesterov"]
        hp.sgd.maximize, hp.sgd.step, hp.sgd.grad_scale = d["maximize"], d["step"], 1.0
    elif kind == LRCORE_ADAM:
        hp.adam.lr, hp.adam.beta1, hp.adam.beta2, hp.adam.eps = d["lr"], d["beta1"], d["beta2"], d["eps"]
        hp.adam.weight_decay = d["weight_decay"]
        hp.adam.decoupled_weight_decay = d["decoupled_weight_decay"]
        hp.adam.maximize, hp.adam.step, hp.adam.grad_scale = d["maximize"], d["step"], 1.0
    elif kind == LRCORE_ADAGRAD:
        hp.adagrad.lr, hp.adagrad.lr_decay = d["lr"], d["lr_decay"]
        hp.adagrad.weight_decay, hp.adagrad.eps = d["weight_decay"], d["eps"]
        hp.adagrad.maximize, hp.adagrad.step, hp.adagrad.grad_scale = d["maximize"], d["step"], 1.0
    elif kind == LRCORE_RMSPROP:
        hp.rmsprop.lr, hp.rmsprop.alpha, hp.rmsprop.eps = d["lr"], d["alpha"], d["eps"]
        hp.rmsprop.weight_decay, hp.rmsprop.momentum = d["weight_decay"], d["momentum"]
        hp.rmsprop.maximize, hp.rmsprop.step, hp.rmsprop.grad_scale = d["maximize"], d["step"], 1.0
    elif kind == LRCORE_ADADELTA:
        hp.adadelta.lr, hp.adadelta.rho, hp.adadelta.eps = d["lr"], d["rho"], d["eps"]
        hp.adadelta.weight_decay = d["weight_decay"]
        hp.adadelta.maximize, hp.adadelta.step, hp.adadelta.grad_scale = d["maximize"], d["step"], 1.0
    else:
        raise ValueError(f"lowp_run: no low-precision kernel for kind {kind}")
    return 0


def lowp_run(str kind, list arrays, list element_types, dict hp, int rounding, seed,
             index_offset, num_threads=None):
    """One kernel call over bfloat16/float16 buffers (lrcore.lowp.kernel checks everything
    first). arrays: [param, grad, state0, state1, state2] (None where absent), C-contiguous;
    element_types: (param, grad, state) as LRCORE_ET_* codes; hp: the rule's hyperparameters
    by name, including step."""
    if kind not in _KINDS:
        raise ValueError(f"lowp_run: kind must be one of {sorted(_KINDS)}, got {kind!r}")
    cdef lrcore_job job
    memset(&job, 0, sizeof(job))
    job.kind = _KINDS[kind]
    job.dtype = 2   # LRCORE_LOWP
    _pack_hp_by_name(job.kind, hp, &job.hp)
    job.lowp.param, job.lowp.grad, job.lowp.state = element_types
    job.lowp.rounding = rounding
    job.lowp.seed = <uint64_t>seed
    job.lowp.step = <uint64_t>hp["step"]
    job.lowp.index_offset = <uint64_t>index_offset
    cdef cnp.ndarray a
    a = <cnp.ndarray>arrays[0]
    job.n = <size_t>cnp.PyArray_SIZE(a)
    job.param = <char *>cnp.PyArray_DATA(a)
    job.grad = <const char *>cnp.PyArray_DATA(<cnp.ndarray>arrays[1])
    cdef int k
    for k in range(3):
        if arrays[2 + k] is not None:
            job.state[k] = <char *>cnp.PyArray_DATA(<cnp.ndarray>arrays[2 + k])
    cdef int nt = lrcore_plan_threads(job.n * cnp.PyArray_ITEMSIZE(a), _threads(kind, num_threads),
                                      MIN_BYTES_PER_THREAD)
    if job.n == 0:
        return
    with nogil:
        lrcore_run_jobs(&job, 1, nt)
