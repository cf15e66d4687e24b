# cython: language_level=3
"""Compiled backend of lrcore.kernels: buffer checks, then the C kernels without the GIL.

Design: the kernel functions themselves are generated from the table of rules by
lrcore._validate (signature, hyperparameter checks) and reach this module through
lrcore.backend as `run_kernel(rule, buffers, hp, num_threads)`. run_kernel checks every
buffer before touching any memory (so a bad call modifies nothing), writes the
hyperparameters into the rule's C struct by name (`_pack`, from the field descriptors of
csrc/jobs.h), and hands one `lrcore_job` to the native runner (runtime.c), which splits
it across threads and runs the best instruction-set build of the kernels in lrcore.h.
`StepPlan` does the same for many buffers at once (an optimizer step over a model's
parameters): buffers checked once when the plan is made, gradients at every step,
hyperparameters by name per group. The buffer checks mirror lrcore/_validate.py (the
numpy backend's) exactly; tests/test_bad_input.py holds both to one table.
"""
cimport cython
cimport numpy as cnp
from cpython.dict cimport PyDict_GetItem
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_CheckExact
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_GET_ITEM
from libc.math cimport isfinite
from libc.stdint cimport int64_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

import numbers
import os

import numpy as np

from lrcore._validate import CONSTRAINTS, plan_hypers, required_slots
from lrcore.rules import RULES, STEP_MAX

cnp.import_array()

cdef extern from "lrcore_lowp.h" nogil:
    ctypedef struct lrcore_lowp:
        int param, grad, state, rounding
        uint64_t seed, step, index_offset


cdef extern from "jobs.h" nogil:
    enum:
        LRCORE_NKINDS, LRCORE_PROBE, LRCORE_F32, LRCORE_F64
        LRCORE_FIELD_DOUBLE, LRCORE_FIELD_INT64, LRCORE_FIELD_INT
    ctypedef struct lrcore_probe_hp:
        double scale
    ctypedef union lrcore_hp:
        lrcore_probe_hp probe
    ctypedef struct lrcore_job:
        int kind
        int dtype
        size_t n
        char *param
        const char *grad
        char *state[3]
        lrcore_hp hp
        lrcore_lowp lowp
    ctypedef struct lrcore_field:
        const char *name
        size_t offset
        int type
    const char *lrcore_kind_name(int kind)
    int lrcore_kind_nstates(int kind)
    const lrcore_field *lrcore_hp_fields(int kind, size_t *count)

cdef extern from "runtime.h" nogil:
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
    if not cnp.PyArray_ISALIGNED(a):
        raise ValueError(f"{fn}(): {name} is not aligned to its {a.itemsize}-byte elements "
                         f"(a view at an odd byte offset); pass an aligned array")
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

# Hyperparameters cross into C by name: lrcore_hp_fields (csrc/jobs.h) describes each
# rule's struct (field name, offset, type), from the rule's field list in lrcore.h
# (LRCORE_HP_FIELDS_<rule>) that the struct itself is made from; _pack writes a dict
# into it. tests/test_kernels.py checks that the descriptors and lrcore.rules list the
# same fields in the same order.

cdef dict _KIND = {}        # rule name -> kind id
cdef dict _FIELDS = {}      # rule name -> tuple of (name, offset, type)
cdef dict _NAMES = {}       # rule name -> tuple of field names
cdef object _MISSING = object()


def _load_descriptors():
    cdef size_t count, i
    cdef const lrcore_field *f
    for kind in range(LRCORE_NKINDS):
        name = lrcore_kind_name(kind).decode()
        f = lrcore_hp_fields(kind, &count)
        _KIND[name] = kind
        _FIELDS[name] = tuple((f[i].name.decode(), f[i].offset, f[i].type) for i in range(count))
        _NAMES[name] = tuple(field[0] for field in _FIELDS[name])


_load_descriptors()


def hp_fields(str rule):
    """The C struct lrcore_<rule>_hp as ((field, offset, 'double'|'int64'|'int'), ...)."""
    types = {LRCORE_FIELD_DOUBLE: "double", LRCORE_FIELD_INT64: "int64", LRCORE_FIELD_INT: "int"}
    return tuple((n, off, types[t]) for n, off, t in _FIELDS[rule]), lrcore_kind_nstates(_KIND[rule])


def kinds():
    """Rule name -> the kind id of the compiled core (LRCORE_RULES order in lrcore.h)."""
    return dict(_KIND)


cdef int _pack(str rule, dict hp, double grad_scale, lrcore_hp *out) except -1:
    """Write the hyperparameters `hp` (by name; `grad_scale` from the argument) into the
    rule's struct in `out`, field by field from the C descriptors. Values are checked by
    the caller (lrcore._validate); a value that does not fit its C type is still an error
    naming the field."""
    return _pack_info(_info_of(RULES[rule]), hp, grad_scale, out)


cdef class _Info:
    """Per rule, built once from the table and the C descriptors: the kind id, the struct's
    field names, offsets and types, the buffer names for messages, which buffers are written,
    and for each state the hyperparameter that switches it off at 0 (momentum), else None."""
    cdef int kind
    cdef str rule
    cdef tuple fields           # field names in struct order
    cdef const lrcore_field *desc
    cdef size_t count
    cdef list names, writeable
    cdef tuple switches
    cdef Py_ssize_t nstates
    cdef Py_ssize_t npublic     # public hyperparameters (the keys of a complete dict)
    # run_exact: per C field, its index among the public hyperparameters (-1: grad_scale)
    # and the table's range of a real; per state, required (-2), free (-1: an option's),
    # or the index of the hyperparameter that switches it on when > 0
    cdef Py_ssize_t slot[16]
    cdef double lo[16]
    cdef double hi[16]
    cdef bint hi_closed[16]
    cdef Py_ssize_t state_need[3]
    # the table's cross-argument constraints (lrcore._validate.CONSTRAINTS), compiled: a fast
    # path that finds one true declines the call, whose checks then raise
    cdef tuple public, constraints


cdef dict _INFO = {}         # rule name -> _Info
cdef long long STEP_MAX_C = STEP_MAX


cdef _Info _info_of(rule):
    cdef _Info info = _INFO.get(rule.name)
    if info is None:
        options = {o.name for o in rule.options}
        info = _Info()
        info.rule = rule.name
        info.kind = _KIND[rule.name]
        info.fields = _NAMES[rule.name]
        info.desc = lrcore_hp_fields(info.kind, &info.count)
        info.names = ["param", "grad"] + [st.name for st in rule.states]
        info.writeable = [True, False] + [True] * len(rule.states)
        info.switches = tuple(None if st.when is None or st.when in options else st.when
                              for st in rule.states)
        info.nstates = len(rule.states)
        public = [h.name for h in rule.hypers if h.public]
        info.npublic = len(public)
        info.public = tuple(public)
        info.constraints = tuple(compile(c, f"<{rule.name} constraint>", "eval")
                                 for c, _ in CONSTRAINTS.get(rule.name, ()))
        if info.count > 16 or len(rule.states) > 3:
            raise RuntimeError(f"{rule.name}: more fields or states than _Info holds")
        for i, h in enumerate(rule.hypers):
            if info.desc[i].type == LRCORE_FIELD_INT64 and h.name != "step":
                raise RuntimeError(f"{rule.name}: int64 field {h.name!r} (the fast paths take "
                                   f"step as the only one)")
            info.slot[i] = public.index(h.name) if h.public else -1
            if h.range is not None:
                info.lo[i] = h.range.lo
                info.hi[i] = h.range.hi
                # the generated check's test: lo <= x < hi (open or infinite hi), else <= hi
                info.hi_closed[i] = not (h.range.hi_open or h.range.hi == float("inf"))
        for k, st in enumerate(rule.states):
            info.state_need[k] = (-2 if st.when is None else -1 if st.when in options
                                  else public.index(st.when))
        _INFO[rule.name] = info
    return info


cdef int _pack_fields(_Info info, dict hp, double grad_scale, lrcore_hp *out, bint exact) except -1:
    """Write the rule's fields from `hp` into `out` (grad_scale from the argument). With
    `exact` (StepPlan.run's fast path) only an exact float (double fields), an int within int64
    (int64 fields) or a bool (flags) is taken, and anything else, a missing name included,
    returns 0 with nothing that matters written. Without it a value is converted as C would,
    and a missing name or an overflow raises ValueError. Returns 1 when packed."""
    cdef size_t i
    cdef const lrcore_field *f = info.desc
    cdef char *base = <char *>out
    cdef PyObject *ref
    cdef int overflow = 0
    cdef long long v
    memset(out, 0, sizeof(lrcore_hp))
    for i in range(info.count):
        name = <str>PyTuple_GET_ITEM(info.fields, i)
        if f[i].type == LRCORE_FIELD_DOUBLE and name == "grad_scale":
            (<double *>(base + f[i].offset))[0] = grad_scale
            continue
        ref = PyDict_GetItem(hp, name)
        if ref == NULL:
            if exact:
                return 0
            raise ValueError(f"step(): no value for the hyperparameter {name!r} of {info.rule}")
        x = <object>ref
        if f[i].type == LRCORE_FIELD_DOUBLE and PyFloat_CheckExact(x):   # the usual case
            (<double *>(base + f[i].offset))[0] = PyFloat_AS_DOUBLE(x)
        elif exact:
            if f[i].type == LRCORE_FIELD_INT64 and PyLong_CheckExact(x):
                v = PyLong_AsLongLongAndOverflow(x, &overflow)
                if overflow:
                    return 0
                (<int64_t *>(base + f[i].offset))[0] = v
            elif f[i].type == LRCORE_FIELD_INT and (x is True or x is False):
                (<int *>(base + f[i].offset))[0] = 1 if x is True else 0
            else:
                return 0
        else:
            try:
                if f[i].type == LRCORE_FIELD_DOUBLE:
                    (<double *>(base + f[i].offset))[0] = x
                elif f[i].type == LRCORE_FIELD_INT64:
                    (<int64_t *>(base + f[i].offset))[0] = x
                else:
                    (<int *>(base + f[i].offset))[0] = 1 if x else 0
            except OverflowError:
                raise ValueError(f"step(): {name} of {info.rule} is out of range for a C "
                                 f"{'double' if f[i].type == LRCORE_FIELD_DOUBLE else 'int64'}") from None
    return 1


cdef int _pack_info(_Info info, dict hp, double grad_scale, lrcore_hp *out) except -1:
    return _pack_fields(info, hp, grad_scale, out, False)


cdef bint _pack_exact(_Info info, object obj, double grad_scale, lrcore_hp *out,
                      unsigned int *required) except -1:
    """StepPlan.run's fast path: pack `obj` when it is a dict holding exactly the rule's
    public fields as exact floats (double fields), ints within int64 (int64 fields) and bools
    (flags), and set `required` (bit per state slot switched on by its hyperparameter > 0, as
    _validate.required_slots). Returns False, writing nothing that matters, otherwise."""
    if type(obj) is not dict:
        return False
    cdef dict hp = <dict>obj
    if len(hp) != info.npublic:
        return False
    if not _pack_fields(info, hp, grad_scale, out, True):
        return False
    cdef PyObject *ref
    required[0] = 0
    cdef Py_ssize_t slot
    for slot in range(info.nstates):
        switch = info.switches[slot]
        if switch is not None:
            ref = PyDict_GetItem(hp, switch)
            if ref == NULL or not PyFloat_CheckExact(<object>ref):
                return False
            if PyFloat_AS_DOUBLE(<object>ref) > 0:
                required[0] |= 1u << slot
    return True


cdef inline bint _violates(_Info info, tuple values) except -1:
    """Whether exact, in-range `values` (public hyperparameters in struct order) break one of
    the rule's cross-argument constraints."""
    if not info.constraints:
        return False
    ns = dict(zip(info.public, values))
    for c in info.constraints:
        if eval(c, {}, ns):
            return True
    return False


cdef long long _pack_values(_Info info, tuple buffers, tuple values, lrcore_hp *out) except -1:
    """The fast paths' test of a call's hyperparameters (`values`: the public ones in struct
    order) and state buffers: when every value is what the generated checks pass unchanged
    (an exact float inside the table's range, an exact int step in [1, 2**53], an exact bool
    flag), every required state is present and no cross-argument constraint is broken, write
    them into `out` (grad_scale 1) and return the step; else return 0, `out` holding nothing
    that matters."""
    cdef size_t i
    cdef Py_ssize_t j, k
    cdef const lrcore_field *f = info.desc
    cdef char *base = <char *>out
    cdef double d
    cdef int overflow = 0
    cdef long long step = 0
    memset(out, 0, sizeof(lrcore_hp))
    for i in range(info.count):
        j = info.slot[i]
        if j < 0:
            (<double *>(base + f[i].offset))[0] = 1.0     # grad_scale
            continue
        x = <object>PyTuple_GET_ITEM(values, j)
        if f[i].type == LRCORE_FIELD_DOUBLE:
            if not PyFloat_CheckExact(x):
                return 0
            d = PyFloat_AS_DOUBLE(x)
            if not (d >= info.lo[i] and (d <= info.hi[i] if info.hi_closed[i] else d < info.hi[i])):
                return 0
            (<double *>(base + f[i].offset))[0] = d
        elif f[i].type == LRCORE_FIELD_INT64:     # step, the only int64 field (_info_of)
            if not PyLong_CheckExact(x):
                return 0
            step = PyLong_AsLongLongAndOverflow(x, &overflow)
            if overflow or not 1 <= step <= STEP_MAX_C:
                return 0
            (<int64_t *>(base + f[i].offset))[0] = <int64_t>step
        else:
            if x is True:
                (<int *>(base + f[i].offset))[0] = 1
            elif x is not False:
                return 0
    for k in range(info.nstates):
        if info.state_need[k] == -2 and buffers[2 + k] is None:
            return 0
        if info.state_need[k] >= 0 and buffers[2 + k] is None \
                and PyFloat_AS_DOUBLE(<object>PyTuple_GET_ITEM(values, info.state_need[k])) > 0.0:
            return 0
    if _violates(info, values):
        return 0
    return step


# ---- bfloat16/float16 calls without Python (lrcore.lowp's checks, compiled) --------------
# The element-type codes of lrcore_lowp.h (LRCORE_ET_*) and lrcore.lowp.LAYOUTS as codes.
from lrcore import lowp as _lowp

cdef int _BF16_NUM = np.dtype(_lowp.bfloat16).num


cdef inline bint _stream_defaults(object rounding, object seed, object index_offset):
    """rounding 'nearest', seed 0 and index_offset 0 (a str and two ints)."""
    return (type(rounding) is str and rounding == "nearest" and PyLong_CheckExact(seed)
            and seed == 0 and PyLong_CheckExact(index_offset) and index_offset == 0)

# (param, grad) -> the state code of lowp.layout_of's first matching layout (-1: none), and
# which state codes a call with state buffers may have (bit per code)
cdef int _LOWP_STATE[4][4]
cdef unsigned _LOWP_STATES_OK[4][4]


def _load_layouts():
    cdef int a, b
    codes = {"float32": 0, "float64": 1, "bfloat16": 2, "float16": 3}
    for a in range(4):
        for b in range(4):
            _LOWP_STATE[a][b] = -1
            _LOWP_STATES_OK[a][b] = 0
    for p, g, s in _lowp.LAYOUTS:
        a, b = codes[p], codes[g]
        if _LOWP_STATE[a][b] < 0:
            _LOWP_STATE[a][b] = codes[s]
        _LOWP_STATES_OK[a][b] |= 1u << codes[s]


_load_layouts()


cdef bint _stream_ok(object rounding, object seed, object index_offset, cnp.npy_intp n):
    """rounding 'nearest' or 'stochastic', seed an int in 0..2**64-1, index_offset an int with
    index_offset + n <= 2**63: what lrcore.lowp's checks pass unchanged."""
    if type(rounding) is not str or not (rounding == "nearest" or rounding == "stochastic"):
        return False
    if not PyLong_CheckExact(seed) or not 0 <= seed <= 0xFFFFFFFFFFFFFFFF:
        return False
    return (PyLong_CheckExact(index_offset) and 0 <= index_offset
            and index_offset + n <= 0x8000000000000000)


cdef inline int _et(object x, bint writeable):
    """LRCORE_ET_* code of a buffer lrcore.lowp accepts as it is (ndarray, native byte order,
    C-contiguous, aligned, writeable if `writeable`), else -1."""
    if not cnp.PyArray_Check(x):
        return -1
    cdef cnp.ndarray a = <cnp.ndarray>x
    if not (cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISALIGNED(a)
            and cnp.PyArray_ISNOTSWAPPED(a)):
        return -1
    if writeable and not cnp.PyArray_ISWRITEABLE(a):
        return -1
    cdef int t = cnp.PyArray_TYPE(a)
    if t == cnp.NPY_FLOAT32:
        return 0
    if t == cnp.NPY_FLOAT64:
        return 1
    if t == _BF16_NUM:
        return 2
    if t == cnp.NPY_FLOAT16:
        return 3
    return -1


cdef bint _run_lowp_exact(_Info info, tuple buffers, tuple values, object num_threads,
                          object rounding, object seed, object index_offset) except -1:
    """A bfloat16/float16 kernel call (`buffers` param, grad, states; `values` as
    _run_exact's) run without Python when everything is regular: rounding 'nearest' or
    'stochastic', seed an int in 0..2**64-1, index_offset an int with offset + n <= 2**63,
    num_threads None or an int in range, every hyperparameter exact and in range, every
    buffer an ndarray lrcore.lowp accepts as it is (_et), of one supported layout, one size,
    no two sharing memory, the required states present. Then it runs exactly what
    lrcore.lowp.kernel's call would (states switched off by their hyperparameter left out),
    and returns True; else False having changed nothing: lrcore.lowp then checks the call
    again, converts or raises with its messages (so too when the values break one of the
    rule's cross-argument constraints)."""
    cdef Py_ssize_t j, k, nb = len(buffers)
    cdef lrcore_job job
    cdef int code, pc, gc, sc = -1, nt
    cdef long long step
    cdef cnp.npy_intp n
    cdef uintptr_t a0, a1, b0, b1
    cdef cnp.ndarray a, b
    if not cnp.PyArray_Check(buffers[0]) or not _stream_ok(
            rounding, seed, index_offset, cnp.PyArray_SIZE(<cnp.ndarray>buffers[0])):
        return False
    if num_threads is None:
        nt = DEFAULT_THREADS
    elif PyLong_CheckExact(num_threads) and 1 <= num_threads <= MAX_THREADS:
        nt = num_threads
    else:
        return False
    memset(&job, 0, sizeof(job))
    step = _pack_values(info, buffers, values, &job.hp)
    if step == 0:
        return False
    # the buffers: codes, one layout, one size, separate memory
    pc = _et(buffers[0], True)
    gc = _et(buffers[1], False)
    if pc < 0 or gc < 0 or _LOWP_STATE[pc][gc] < 0:
        return False
    n = cnp.PyArray_SIZE(<cnp.ndarray>buffers[0])
    for k in range(1, nb):
        x = buffers[k]
        if x is None:
            continue
        if k >= 2:
            code = _et(x, True)
            if code < 0 or (sc >= 0 and code != sc) or not (_LOWP_STATES_OK[pc][gc] >> code) & 1u:
                return False
            sc = code
        if cnp.PyArray_SIZE(<cnp.ndarray>x) != n:
            return False
    for j in range(nb):
        if buffers[j] is None or cnp.PyArray_NBYTES(<cnp.ndarray>buffers[j]) == 0:
            continue
        a = <cnp.ndarray>buffers[j]
        a0 = <uintptr_t>cnp.PyArray_DATA(a)
        a1 = a0 + <uintptr_t>cnp.PyArray_NBYTES(a)
        for k in range(j + 1, nb):
            if buffers[k] is None or cnp.PyArray_NBYTES(<cnp.ndarray>buffers[k]) == 0:
                continue
            b = <cnp.ndarray>buffers[k]
            b0 = <uintptr_t>cnp.PyArray_DATA(b)
            b1 = b0 + <uintptr_t>cnp.PyArray_NBYTES(b)
            if a0 < b1 and b0 < a1:
                return False
    # everything checked: the job of lowp_run
    job.kind = info.kind
    job.dtype = 2   # LRCORE_LOWP
    job.lowp.param = pc
    job.lowp.grad = gc
    job.lowp.state = sc if sc >= 0 else _LOWP_STATE[pc][gc]
    job.lowp.rounding = 0 if rounding == "nearest" else 1
    job.lowp.seed = <uint64_t>seed
    job.lowp.step = <uint64_t>step
    job.lowp.index_offset = <uint64_t>index_offset
    job.n = <size_t>n
    job.param = <char *>cnp.PyArray_DATA(<cnp.ndarray>buffers[0])
    job.grad = <const char *>cnp.PyArray_DATA(<cnp.ndarray>buffers[1])
    for k in range(nb - 2):
        if buffers[2 + k] is None:
            continue
        # a state switched off by its hyperparameter (momentum = 0) is left out, as lowp.kernel does
        if info.state_need[k] < 0 or \
                PyFloat_AS_DOUBLE(<object>PyTuple_GET_ITEM(values, info.state_need[k])) > 0.0:
            job.state[k] = <char *>cnp.PyArray_DATA(<cnp.ndarray>buffers[2 + k])
    nt = lrcore_plan_threads(job.n * cnp.PyArray_ITEMSIZE(<cnp.ndarray>buffers[0]), nt,
                             MIN_BYTES_PER_THREAD)
    if job.n == 0:
        return True
    with nogil:
        lrcore_run_jobs(&job, 1, nt)
    return True


cdef object _run_exact(_Info info, tuple buffers, tuple values, object num_threads,
                       object rounding, object seed, object index_offset):
    """The compiled fast path of a generated kernel (lrcore._validate.make_kernel): `values`
    are the rule's public hyperparameters in struct order (the table's). When every one is
    already what the generated checks would pass unchanged (an exact float inside the
    table's range, an exact int step in [1, 2**53], an exact bool flag) and every required
    state is present, check the buffers and run exactly as run_kernel does, and return True.
    Otherwise return False having looked at nothing else: the generated Python checks then
    convert or raise, with their messages and in their order. None (before anything else):
    param or grad is not an ndarray, or has 2-byte elements, or rounding, seed or
    index_offset is not at its default: the generated code then sends the call to lrcore.lowp
    (or, not arrays, to the Python checks) -- unless _run_lowp_exact took it (bfloat16/float16
    buffers and every argument regular), which returns True."""
    cdef Py_ssize_t i, k
    cdef lrcore_job job
    p, g = buffers[0], buffers[1]
    if not (cnp.PyArray_Check(p) and cnp.PyArray_Check(g)):
        return None     # not arrays: the generated Python checks name them
    if cnp.PyArray_ITEMSIZE(<cnp.ndarray>p) == 2 or cnp.PyArray_ITEMSIZE(<cnp.ndarray>g) == 2:
        # bfloat16/float16: lrcore.lowp, or its compiled equivalent when every argument is regular
        return True if _run_lowp_exact(info, buffers, values, num_threads, rounding, seed,
                                       index_offset) else None
    if not _stream_defaults(rounding, seed, index_offset) and not _stream_ok(
            rounding, seed, index_offset, cnp.PyArray_SIZE(<cnp.ndarray>p)):
        return None     # float32/float64 with an irregular stream argument: lrcore.lowp names it
    memset(&job, 0, sizeof(job))
    if _pack_values(info, buffers, values, &job.hp) == 0:
        return False
    cdef Py_ssize_t nb = len(buffers)
    cdef str fn = info.rule
    job.kind = info.kind
    cdef int nt = _threads(fn, num_threads)
    objs = list(buffers)
    arrays = []
    _buffers(fn, &job, info.names, objs, info.writeable, arrays)
    job.param = _ptr(arrays[0])
    job.grad = _ptr(arrays[1])
    k = 2
    for i in range(nb - 2):
        if objs[2 + i] is None:
            continue
        # a state switched off by its hyperparameter (momentum = 0) is NULL for the kernel
        if info.state_need[i] < 0 or \
                PyFloat_AS_DOUBLE(<object>PyTuple_GET_ITEM(values, info.state_need[i])) > 0.0:
            job.state[i] = _ptr(arrays[k])
        k += 1
    _run(&job, nt)
    return True

def run_exact(rule, tuple buffers, tuple values, num_threads, rounding="nearest", seed=0,
              index_offset=0):
    """The compiled fast path of a generated kernel (lrcore._validate.make_kernel); see
    _run_exact. `exact_runner(rule)` is the same function bound to the rule's cached info."""
    return _run_exact(_info_of(rule), buffers, values, num_threads, rounding, seed, index_offset)


cdef class _ExactRunner:
    cdef _Info info

    def __call__(self, tuple buffers, tuple values, num_threads, rounding="nearest", seed=0,
                 index_offset=0):
        return _run_exact(self.info, buffers, values, num_threads, rounding, seed, index_offset)


def exact_runner(rule):
    """run_exact bound to `rule`: runner(buffers, values, num_threads) -> True when it ran."""
    cdef _ExactRunner r = _ExactRunner()
    r.info = _info_of(rule)
    return r


def half_pair(a, b):
    """True when param or grad is a 2-byte (bfloat16/float16) array: the low-precision path
    of lrcore.lowp. Same test as lowp.kernel's: `.dtype.itemsize == 2`, objects without a
    dtype go to the float32 kernel (which names them)."""
    if cnp.PyArray_Check(a) and cnp.PyArray_Check(b):
        return cnp.PyArray_ITEMSIZE(<cnp.ndarray>a) == 2 or cnp.PyArray_ITEMSIZE(<cnp.ndarray>b) == 2
    try:
        return not (a.dtype.itemsize != 2 and b.dtype.itemsize != 2)
    except AttributeError:
        return False


def run_kernel(rule, tuple buffers, dict hp, num_threads):
    """The compiled backend's `run` for lrcore._validate.make_kernel: check the buffers
    (param, grad, states in kernel order, None where absent), pack `hp` and run one job."""
    cdef _Info info = _info_of(rule)
    cdef str fn = info.rule
    cdef lrcore_job job
    memset(&job, 0, sizeof(job))
    job.kind = info.kind
    cdef int nt = _threads(fn, num_threads)
    objs = list(buffers)
    arrays = []
    _buffers(fn, &job, info.names, objs, info.writeable, arrays)
    _pack_info(info, hp, 1.0, &job.hp)
    job.param = _ptr(arrays[0])
    job.grad = _ptr(arrays[1])
    cdef Py_ssize_t k = 2, i
    for i in range(len(objs) - 2):
        if objs[2 + i] is None:
            continue
        switch = info.switches[i]
        # a state switched off by its hyperparameter (momentum = 0) is NULL for the kernel
        if switch is None or hp[switch] > 0.0:
            job.state[i] = _ptr(arrays[k])
        k += 1
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
    job.hp.probe.scale = _real(fn, "scale", scale)
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

cdef class StepPlan:
    """One optimizer step over many (param, state...) buffer sets, as one threaded call.

    StepPlan(kind, params, states, groups): `params` a list of arrays, `states` a list
    (one per param) of 3-tuples of state arrays or None in kernel order, `groups` the
    group index of each param. Buffers are checked once here (dtype, contiguity,
    writeability, sizes, no shared memory anywhere) and kept alive by the plan.
    Hyperparameters are validated by the caller (lrcore.optim); `run` takes them by name.

    offsets (a list, one int per param): the layouts of lrcore.lowp (bfloat16/float16
    params, grads or states, mixed freely across params, each param's states of one dtype),
    `offsets[i]` param i's index_offset in the random stream; `run` then takes the stream's
    rounding and seed, checks each grad's layout, and every param's job is what
    lrcore.lowp.kernel would run for it (bitwise: float32/float64 layouts as the float32
    kernel, the others as lowp_run). States given to such a plan are the ones the step
    uses (lowp.kernel leaves a state switched off by its hyperparameter out of the call);
    `grad_sumsq` is for float32/float64 plans only. owned: more arrays of the caller's
    (states not used by this step) that the grads must not overlap either, kept alive.
    """
    cdef lrcore_job *jobs
    cdef readonly Py_ssize_t njobs
    cdef readonly str kind
    cdef int kind_code
    cdef object rule
    cdef list keep
    cdef list group_of
    cdef readonly size_t param_bytes
    cdef list extents      # sorted (start, end) of every owned buffer
    cdef list grads        # the grads whose pointers the jobs hold (kept alive)
    cdef readonly bint lowp   # a plan of lrcore.lowp's layouts (offsets given)
    cdef list codes        # lowp: per param (param code, state code or -1)

    def __cinit__(self, str kind, list params, list states, list groups, offsets=None,
                  owned=None):
        self.jobs = NULL

    def __init__(self, str kind, list params, list states, list groups, offsets=None,
                 owned=None):
        if kind not in _KIND:
            raise ValueError(f"StepPlan: kind must be one of {sorted(_KIND)}, got {kind!r}")
        if not (len(params) == len(states) == len(groups)):
            raise ValueError("StepPlan: params, states and groups must have the same length")
        self.kind = kind
        self.kind_code = _KIND[kind]
        self.rule = RULES[kind]
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
        self.lowp = offsets is not None
        if self.lowp:
            if len(offsets) != self.njobs:
                raise ValueError("StepPlan: offsets must have one entry per param")
            self._init_lowp(params, states, offsets, names, arrays)
        for i in range(self.njobs if not self.lowp else 0):
            p = _array("step", f"params[{i}]", params[i], -1, -1, True)
            dtype = _dtype_code("step", f"params[{i}]", p)
            self.jobs[i].dtype = dtype
            st = self._add_param(i, p, states[i], names, arrays)
            for k in range(3):
                if st[k] is None:
                    continue
                a = _array("step", f"state of params[{i}]", st[k], dtype, cnp.PyArray_SIZE(p), True)
                self.jobs[i].state[k] = <char *>cnp.PyArray_DATA(a)
                names.append(f"state of params[{i}]")
                arrays.append(a)
        for k, a in enumerate(owned or ()):
            if not cnp.PyArray_Check(a):
                raise TypeError(f"StepPlan: owned[{k}] must be a numpy.ndarray")
            names.append("a state buffer")
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

    cdef object _add_param(self, Py_ssize_t i, cnp.ndarray p, object st, list names,
                           list arrays):
        """Job i's param (checked by the caller) and bookkeeping; returns its states entry."""
        self.jobs[i].kind = self.kind_code
        self.jobs[i].n = <size_t>cnp.PyArray_SIZE(p)
        self.jobs[i].param = <char *>cnp.PyArray_DATA(p)
        self.param_bytes += <size_t>cnp.PyArray_NBYTES(p)
        names.append(f"params[{i}]")
        arrays.append(p)
        if len(st) != 3:
            raise ValueError("StepPlan: each states entry must have 3 slots")
        return st

    cdef int _init_lowp(self, list params, list states, list offsets, list names,
                        list arrays) except -1:
        """The jobs of a plan of lrcore.lowp's layouts: element types, index offsets."""
        cdef Py_ssize_t i, k
        cdef int pc, sc, code
        cdef bint ok
        cdef cnp.ndarray p, a
        self.codes = []
        for i in range(self.njobs):
            pc = _et(params[i], True)
            if pc < 0:
                raise TypeError(f"step(): params[{i}] must be a writeable, C-contiguous, aligned "
                                f"array of float32, float64, bfloat16 or float16 in native "
                                f"byte order")
            p = <cnp.ndarray>params[i]
            o = offsets[i]
            if not PyLong_CheckExact(o) or not 0 <= o or o + cnp.PyArray_SIZE(p) > 2 ** 63:
                raise ValueError(f"StepPlan: offsets[{i}] must be an int with offset + size "
                                 f"<= 2**63, got {o!r}")
            self.jobs[i].lowp.index_offset = <uint64_t>o
            st = self._add_param(i, p, states[i], names, arrays)
            sc = -1
            for k in range(3):
                if st[k] is None:
                    continue
                code = _et(st[k], True)
                if code < 0 or (sc >= 0 and code != sc) or \
                        cnp.PyArray_SIZE(<cnp.ndarray>st[k]) != cnp.PyArray_SIZE(p):
                    raise TypeError(f"step(): the states of params[{i}] must be writeable, "
                                    f"C-contiguous arrays of one supported dtype and the "
                                    f"param's size")
                sc = code
                a = <cnp.ndarray>st[k]
                self.jobs[i].state[k] = <char *>cnp.PyArray_DATA(a)
                names.append(f"state of params[{i}]")
                arrays.append(a)
            ok = False
            for code in range(4):    # some grad type completes a supported layout
                if _LOWP_STATE[pc][code] >= 0 and (sc < 0 or (_LOWP_STATES_OK[pc][code] >> sc) & 1u):
                    ok = True
            if not ok:
                raise TypeError(f"step(): params[{i}] and its states form no supported layout")
            self.codes.append((pc, sc))
        return 0

    cdef int _set_grads(self, list grads) except -1:
        if len(grads) != self.njobs:
            raise ValueError(f"step(): got {len(grads)} grads for {self.njobs} params; "
                             f"pass one grad per param, in the same order")
        cdef Py_ssize_t i, lo, hi, mid
        cdef cnp.ndarray g
        cdef uintptr_t g0, g1
        cdef int pc, sc, gc
        ext = self.extents
        cdef Py_ssize_t ne = len(ext)
        for i in range(self.njobs):
            if self.lowp:
                # the grad's element type completes the param's layout (lrcore.lowp.LAYOUTS)
                pc, sc = self.codes[i]
                gc = _et(grads[i], False)
                if gc < 0 or _LOWP_STATE[pc][gc] < 0 or \
                        (sc >= 0 and not (_LOWP_STATES_OK[pc][gc] >> sc) & 1u) or \
                        cnp.PyArray_SIZE(<cnp.ndarray>grads[i]) != <cnp.npy_intp>self.jobs[i].n:
                    raise TypeError(f"step(): grads[{i}] does not complete a supported layout "
                                    f"with params[{i}] (lrcore.lowp.LAYOUTS), or has another size")
                g = <cnp.ndarray>grads[i]
                if sc < 0:
                    sc = _LOWP_STATE[pc][gc]
                if pc == gc == sc and pc < 2:     # float32/float64 throughout: the float32 kernel
                    self.jobs[i].dtype = LRCORE_F32 if pc == 0 else LRCORE_F64
                else:
                    self.jobs[i].dtype = 2   # LRCORE_LOWP
                self.jobs[i].lowp.param = pc
                self.jobs[i].lowp.grad = gc
                self.jobs[i].lowp.state = sc
            else:
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
        if self.lowp:
            raise TypeError("StepPlan.grad_sumsq: a plan of lrcore.lowp's layouts has none; "
                            "sum the grads with lrcore.optim.precision.grad_sumsq")
        self._set_grads(grads)
        cdef int nt = lrcore_plan_threads(self.param_bytes, _threads("step", num_threads),
                                          MIN_BYTES_PER_THREAD)
        cdef int finite = 1
        cdef double total
        with nogil:
            total = lrcore_grad_sumsq(self.jobs, self.njobs, nt, &finite)
        return total, bool(finite)

    def run(self, list grads, list group_hps, double grad_scale=1.0, num_threads=None,
            bint grads_checked=False, rounding=None, seed=None):
        """Apply one step. group_hps[g] is a dict of group g's hyperparameters by name (the
        fields of the rule in lrcore.rules; derived ones and those at their default may be
        left out). A plan of lrcore.lowp's layouts also takes the stream: rounding
        ('nearest' or 'stochastic') and seed (0..2**64-1), and grad_scale must be 1."""
        cdef int rcode = 0
        if self.lowp:
            if rounding not in ("nearest", "stochastic"):
                raise ValueError(f"StepPlan.run: rounding must be 'nearest' or 'stochastic', "
                                 f"got {rounding!r}")
            if not PyLong_CheckExact(seed) or not 0 <= seed <= 0xFFFFFFFFFFFFFFFF:
                raise ValueError(f"StepPlan.run: seed must be an int in 0..2**64-1, got {seed!r}")
            if grad_scale != 1.0:
                raise ValueError("StepPlan.run: a plan of lrcore.lowp's layouts takes scaled "
                                 "grads, not grad_scale")
            rcode = 0 if rounding == "nearest" else 1
        if not grads_checked or self.grads is None or len(grads) != len(self.grads) \
                or any(a is not b for a, b in zip(grads, self.grads)):
            self._set_grads(grads)
        cdef int nt = lrcore_plan_threads(self.param_bytes, _threads("step", num_threads),
                                          MIN_BYTES_PER_THREAD)
        cdef _Info info = _info_of(self.rule)
        cdef Py_ssize_t ng = len(group_hps), gi = 0
        cdef lrcore_hp *packed = <lrcore_hp *>malloc(sizeof(lrcore_hp) * max(1, ng))
        if packed == NULL:
            raise MemoryError()
        cdef Py_ssize_t i, g, slot
        cdef unsigned int *required = <unsigned int *>malloc(sizeof(unsigned int) * max(1, ng))
        if required == NULL:
            free(packed)
            raise MemoryError()
        try:
            hps = None
            for gi in range(ng):
                # the usual case (a complete dict of exact floats, ints and bools, as
                # lrcore.optim passes) packs directly; anything else is completed and
                # checked by plan_hypers first (defaults, derived fields, errors by name)
                if not _pack_exact(info, group_hps[gi], grad_scale, &packed[gi], &required[gi]):
                    if hps is None:
                        hps = plan_hypers(self.rule, group_hps)
                    _pack_info(info, hps[gi], grad_scale, &packed[gi])
                    required[gi] = 0
                    for slot in required_slots(self.rule, hps[gi]):
                        required[gi] |= 1u << slot
            for i in range(self.njobs):
                g = self.group_of[i]
                if g < 0 or g >= ng:
                    raise ValueError(f"StepPlan.run: no hyperparameters for group {g}")
                if required[g]:
                    for slot in range(info.nstates):
                        if required[g] & (1u << slot) and self.jobs[i].state[slot] == NULL:
                            st = self.rule.states[slot]
                            raise ValueError(f"step(): params[{i}] has no {st.name} but its "
                                             f"group {g} has {st.when} > 0")
            for i in range(self.njobs):
                self.jobs[i].hp = packed[self.group_of[i]]
            if self.lowp:
                steps = [(hps[gi] if hps is not None else group_hps[gi])["step"]
                         for gi in range(ng)]
                for i in range(self.njobs):
                    self.jobs[i].lowp.rounding = rcode
                    self.jobs[i].lowp.seed = <uint64_t>seed
                    self.jobs[i].lowp.step = <uint64_t>steps[self.group_of[i]]
        finally:
            free(packed)
            free(required)
        with nogil:
            lrcore_run_jobs(self.jobs, self.njobs, nt)


# ---------------------------------------------------------------------------
# bfloat16 / float16 buffers (issue 12): lrcore.lowp checks everything, this runs
# ---------------------------------------------------------------------------

def lowp_run(str kind, list arrays, list element_types, dict hp, int rounding, seed,
             index_offset, num_threads=None):
    """One kernel call over bfloat16/float16 buffers (lrcore.lowp.kernel has checked the
    layout, buffers, hyperparameters and stream arguments). arrays: [param, grad, state0,
    state1, state2] (None where absent), C-contiguous; element_types: (param, grad, state)
    as LRCORE_ET_* codes; hp: the rule's public hyperparameters by name, step included."""
    if kind not in _KIND:
        raise ValueError(f"lowp_run: kind must be one of {sorted(_KIND)}, got {kind!r}")
    cdef lrcore_job job
    memset(&job, 0, sizeof(job))
    job.kind = _KIND[kind]
    job.dtype = 2   # LRCORE_LOWP
    _pack(kind, plan_hypers(RULES[kind], [hp])[0], 1.0, &job.hp)
    job.lowp.param, job.lowp.grad, job.lowp.state = element_types
    job.lowp.rounding = rounding
    job.lowp.seed = <uint64_t>seed
    job.lowp.step = <uint64_t>hp["step"]
    job.lowp.index_offset = <uint64_t>index_offset
    cdef cnp.ndarray a = <cnp.ndarray>arrays[0]
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


# ---- lrcore._q8 (8-bit kernels, issue 13): this pool is the process's one pool ----------
# _q8 does not compile csrc/pool.c; it runs its tasks through lrcore_pool_run, which it
# takes from this capsule. Nothing else of _core is used by _q8.
from cpython.pycapsule cimport PyCapsule_New as _PyCapsule_New

cdef extern from "pool.h" nogil:
    ctypedef void (*lrcore_task_fn)(void *arg, size_t task) noexcept nogil
    void lrcore_pool_run(int nthreads, size_t ntasks, lrcore_task_fn fn, void *arg)

pool_run_capsule = _PyCapsule_New(<void *>lrcore_pool_run, b"lrcore._core.lrcore_pool_run", NULL)
