# cython: language_level=3
"""lrcore._q8: the compiled 8-bit kernels (lrcore_q8.h), threaded on block boundaries.

Private: lrcore.quantization checks every argument and builds the codec tables, then calls
these. `level` is lrcore's active instruction set (0 baseline, 1 AVX2, 2 AVX-512); a call is
split into tasks of whole blocks run on lrcore._core's thread pool (csrc/pool.c, one per
process, reached through a capsule), so the bytes written do not depend on the thread count.
"""
from libc.stdint cimport int32_t, uint8_t, uint64_t
from libc.string cimport memcpy, memset

cimport numpy as cnp

from cpython.pycapsule cimport PyCapsule_GetPointer

from . import _core

cnp.import_array()

cdef extern from "pool.h" nogil:
    ctypedef void (*lrcore_task_fn)(void *arg, size_t task) noexcept nogil

# The one thread pool of the process: lrcore._core's lrcore_pool_run (csrc/pool.c is
# compiled into _core only), taken from the capsule _core exports for this module.
ctypedef void (*pool_run_fn)(int nthreads, size_t ntasks, lrcore_task_fn fn,
                             void *arg) noexcept nogil
cdef pool_run_fn lrcore_pool_run = <pool_run_fn>PyCapsule_GetPointer(
    _core.pool_run_capsule, b"lrcore._core.lrcore_pool_run")

cdef extern from "q8_jobs.h" nogil:
    enum:
        LRCORE_ET_F32, LRCORE_ET_BF16, LRCORE_ROUND_NEAREST, LRCORE_ROUND_STOCHASTIC
    ctypedef struct lrcore_hp:
        pass
    ctypedef struct lrcore_lowp:
        int param, grad, state, rounding
        uint64_t seed, step, index_offset
    ctypedef struct lrcore_q8_codec:
        const float *map
        const float *thr
        const int32_t *base
        const float *dec
        const int32_t *deci
        const uint8_t *planes
        int32_t window
        int32_t near
        int is_signed
    ctypedef struct lrcore_q8_state:
        uint8_t *codes
        float *absmax
    ctypedef struct lrcore_q8_buf:
        float *f32
        lrcore_q8_state q
        int map
    ctypedef struct lrcore_q8_job:
        int kind
        size_t n
        void *param
        const void *grad
        lrcore_q8_buf state[3]
        lrcore_hp hp
        lrcore_lowp lowp
        lrcore_q8_codec codec[2]
    ctypedef struct lrcore_q8_code_job:
        size_t n
        float *values
        lrcore_q8_state q
        lrcore_q8_codec c
    ctypedef void (*lrcore_q8_step_fn)(const lrcore_q8_job *job, size_t b0, size_t b1) noexcept nogil
    ctypedef void (*lrcore_q8_code_fn)(const lrcore_q8_code_job *job, size_t b0, size_t b1) noexcept nogil
    void lrcore_q8_step_baseline(const lrcore_q8_job *job, size_t b0, size_t b1)
    void lrcore_q8_step_avx2(const lrcore_q8_job *job, size_t b0, size_t b1)
    void lrcore_q8_step_avx512(const lrcore_q8_job *job, size_t b0, size_t b1)
    void lrcore_q8_encode_baseline(const lrcore_q8_code_job *job, size_t b0, size_t b1)
    void lrcore_q8_encode_avx2(const lrcore_q8_code_job *job, size_t b0, size_t b1)
    void lrcore_q8_encode_avx512(const lrcore_q8_code_job *job, size_t b0, size_t b1)
    void lrcore_q8_decode_baseline(const lrcore_q8_code_job *job, size_t b0, size_t b1)
    void lrcore_q8_decode_avx2(const lrcore_q8_code_job *job, size_t b0, size_t b1)
    void lrcore_q8_decode_avx512(const lrcore_q8_code_job *job, size_t b0, size_t b1)
    int lrcore_q8_vector_codes_baseline(const lrcore_q8_codec *c, size_t n, const float *x,
                                        uint8_t *codes, uint8_t *flags)
    int lrcore_q8_vector_codes_avx2(const lrcore_q8_codec *c, size_t n, const float *x,
                                    uint8_t *codes, uint8_t *flags)
    int lrcore_q8_vector_codes_avx512(const lrcore_q8_codec *c, size_t n, const float *x,
                                      uint8_t *codes, uint8_t *flags)
    int lrcore_q8_vbmi_avx512(int set)
    int LRCORE_Q8_BLOCK

# Blocks per task: at least 64 blocks (16384 elements, a few hundred microseconds of
# work); large calls get TASKS_PER_THREAD tasks per thread, so that each thread streams
# through long runs of contiguous memory (any thread takes the next task: with small tasks
# the two threads alternate, and each task starts its streams anew).
DEF TASK_BLOCKS = 64
DEF TASKS_PER_THREAD = 16

# One call of either kind: the job, the per-ISA function, the blocks.
cdef struct call_t:
    const void *job
    void *fn
    size_t nblocks
    size_t task_blocks

ctypedef void (*range_fn)(const void *job, size_t b0, size_t b1) noexcept nogil

cdef void run_task(void *arg, size_t t) noexcept nogil:
    cdef call_t *c = <call_t *>arg
    cdef size_t b0 = t * c.task_blocks
    cdef size_t b1 = b0 + c.task_blocks
    if b1 > c.nblocks:
        b1 = c.nblocks
    (<range_fn>c.fn)(c.job, b0, b1)

cdef void *STEP_FNS[3]
STEP_FNS[0] = <void *>lrcore_q8_step_baseline
STEP_FNS[1] = <void *>lrcore_q8_step_avx2
STEP_FNS[2] = <void *>lrcore_q8_step_avx512
cdef void *ENCODE_FNS[3]
ENCODE_FNS[0] = <void *>lrcore_q8_encode_baseline
ENCODE_FNS[1] = <void *>lrcore_q8_encode_avx2
ENCODE_FNS[2] = <void *>lrcore_q8_encode_avx512
cdef void *DECODE_FNS[3]
DECODE_FNS[0] = <void *>lrcore_q8_decode_baseline
DECODE_FNS[1] = <void *>lrcore_q8_decode_avx2
DECODE_FNS[2] = <void *>lrcore_q8_decode_avx512

BLOCK = LRCORE_Q8_BLOCK

# The AVX-512 build's decoder: byte permutes where the CPU has AVX512-VBMI (detected here,
# once, before any call can run on the pool's threads; the avx512 object's code runs only on
# CPUs that can run that build).
if "avx512" in _core.available_isas():
    lrcore_q8_vbmi_avx512(-1)


def set_vbmi(int on):
    """Test hook: the AVX-512 build decodes with AVX512-VBMI byte permutes (on=1, where the
    CPU has them; on=-1: as detected) or with the AVX-512F register permutes (on=0). Returns
    whether it uses VBMI now. Not thread-safe: no step may run meanwhile."""
    if "avx512" not in _core.available_isas():
        return False
    return bool(lrcore_q8_vbmi_avx512(on))


cdef lrcore_q8_codec _codec(c):
    """The C view of a lrcore.quantization._Codec (its arrays outlive the call)."""
    cdef const float[::1] map = c.map
    cdef const float[::1] thr = c.thr
    cdef const int32_t[::1] base = c.base
    cdef const float[::1] dec = c.dec
    cdef const int32_t[::1] deci = c.deci
    cdef const uint8_t[::1] planes = c.planes
    cdef lrcore_q8_codec out
    out.map = &map[0]
    out.thr = &thr[0]
    out.base = &base[0]
    out.dec = &dec[0]
    out.deci = &deci[0]
    out.planes = &planes[0]
    out.window = c.window
    out.near = c.near
    out.is_signed = 1 if c.signed else 0
    return out


cdef void _run(const void *job, void *fn, size_t n, int nthreads) noexcept nogil:
    """Run fn over the blocks of n elements, TASK_BLOCKS blocks per task."""
    cdef call_t call
    call.job = job
    call.fn = fn
    call.nblocks = (n + LRCORE_Q8_BLOCK - 1) // LRCORE_Q8_BLOCK
    if nthreads < 1:
        nthreads = 1
    call.task_blocks = (call.nblocks + <size_t>nthreads * TASKS_PER_THREAD - 1) // (
        <size_t>nthreads * TASKS_PER_THREAD)
    if call.task_blocks < TASK_BLOCKS:
        call.task_blocks = TASK_BLOCKS
    cdef size_t ntasks = (call.nblocks + call.task_blocks - 1) // call.task_blocks
    if <size_t>nthreads > ntasks:
        nthreads = <int>ntasks if ntasks > 0 else 1
    lrcore_pool_run(nthreads, ntasks, run_task, &call)


cdef void *_data(a):
    """The first element of a C-contiguous array (checked by lrcore.quantization)."""
    return cnp.PyArray_DATA(<cnp.ndarray>a)


def step(int level, int nthreads, int kind, param, grad, list states, bytes hp, codecs,
         bint stochastic, uint64_t seed, uint64_t step, uint64_t index_offset):
    """One step of rule `kind` (arguments checked by lrcore.quantization.step).

    param, grad: 1-d float32 or bfloat16 arrays; states: per kernel state, None, a float32
    array, or (codes, absmax, map) with map 0 signed / 1 unsigned; hp: the rule's C struct
    lrcore_<rule>_hp as bytes (packed by lrcore.quantization from jobs.h's descriptors);
    codecs: the signed and unsigned lrcore.quantization._Codec."""
    cdef lrcore_q8_job job
    cdef size_t n = param.shape[0]
    if n == 0:
        return
    if len(hp) > sizeof(lrcore_hp):
        raise ValueError("step(): hyperparameter struct larger than lrcore_hp")
    memset(&job, 0, sizeof(job))
    memcpy(&job.hp, <const char *>hp, len(hp))
    job.kind = kind
    job.n = n
    job.param = _data(param)
    job.grad = _data(grad)
    job.lowp.param = LRCORE_ET_F32 if param.dtype.itemsize == 4 else LRCORE_ET_BF16
    job.lowp.grad = LRCORE_ET_F32 if grad.dtype.itemsize == 4 else LRCORE_ET_BF16
    job.lowp.state = LRCORE_ET_F32
    job.lowp.rounding = LRCORE_ROUND_STOCHASTIC if stochastic else LRCORE_ROUND_NEAREST
    job.lowp.seed = seed
    job.lowp.step = step
    job.lowp.index_offset = index_offset
    for k, s in enumerate(states):
        if isinstance(s, tuple):
            job.state[k].q.codes = <uint8_t *>_data(s[0])
            job.state[k].q.absmax = <float *>_data(s[1])
            job.state[k].map = s[2]
        elif s is not None:
            job.state[k].f32 = <float *>_data(s)
    job.codec[0] = _codec(codecs[0])
    job.codec[1] = _codec(codecs[1])
    with nogil:
        _run(&job, STEP_FNS[level], n, nthreads)


def code(bint decode, int level, int nthreads, float[::1] values, uint8_t[::1] codes,
         float[::1] absmax, codec):
    """Encode values into (codes, absmax), or decode them into values."""
    cdef lrcore_q8_code_job job
    cdef size_t n = values.shape[0]
    if n == 0:
        return
    job.n = n
    job.values = &values[0]
    job.q.codes = &codes[0]
    job.q.absmax = &absmax[0]
    job.c = _codec(codec)
    with nogil:
        _run(&job, DECODE_FNS[level] if decode else ENCODE_FNS[level], n, nthreads)


def vector_codes(int level, const float[::1] x, uint8_t[::1] codes, uint8_t[::1] flags, codec):
    """Test hook (bench/q8_exhaustive.py, tests): the vector encoder of lrcore_q8.h on quotient
    estimates x (its codes, and flags 1 where it leaves the lane to the exact search), one
    thread, no exact search. False where the build of `level` has no vector encoder."""
    cdef lrcore_q8_codec c = _codec(codec)
    cdef size_t n = x.shape[0]
    cdef int ok
    if codes.shape[0] != n or flags.shape[0] != n or n % 16:
        raise ValueError("vector_codes(): x, codes and flags need the same size, a multiple of 16")
    if n == 0:
        return True
    with nogil:
        if level == 2:
            ok = lrcore_q8_vector_codes_avx512(&c, n, &x[0], &codes[0], &flags[0])
        elif level == 1:
            ok = lrcore_q8_vector_codes_avx2(&c, n, &x[0], &codes[0], &flags[0])
        else:
            ok = lrcore_q8_vector_codes_baseline(&c, n, &x[0], &codes[0], &flags[0])
    return bool(ok)
