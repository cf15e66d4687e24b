# cython: language_level=3
"""lrcore._q8: the compiled 8-bit kernels (lrcore_q8.h), threaded on block boundaries.

Private: lrcore.quantization checks every argument and builds the codec tables, then calls
these. `level` is lrcore's active instruction set (0 baseline, 1 AVX2, 2 AVX-512); a call is
split into tasks of whole blocks run on a thread pool (csrc/pool.c), so the bytes written do
not depend on the thread count.
"""
from libc.stdint cimport int32_t, uint8_t, int64_t, uint64_t

cdef extern from "pool.h" nogil:
    ctypedef void (*lrcore_task_fn)(void *arg, size_t task) noexcept nogil
    void lrcore_pool_run(int nthreads, size_t ntasks, lrcore_task_fn fn, void *arg)

cdef extern from "q8_jobs.h" nogil:
    ctypedef struct lrcore_adam_hp:
        double lr, beta1, beta2, eps, weight_decay, grad_scale
        int64_t step
        int decoupled_weight_decay, maximize
    ctypedef struct lrcore_q8_codec:
        const float *map
        const float *thr
        const int32_t *base
        const uint64_t *packed
    ctypedef struct lrcore_q8_state:
        uint8_t *codes
        float *absmax
    ctypedef struct lrcore_q8_adam_job:
        size_t n
        float *param
        const float *grad
        lrcore_q8_state m, v, vmax
        lrcore_q8_codec cs, cu
        lrcore_adam_hp hp
    ctypedef struct lrcore_q8_code_job:
        size_t n
        float *values
        lrcore_q8_state q
        lrcore_q8_codec c
    ctypedef void (*lrcore_q8_adam_fn)(const lrcore_q8_adam_job *job, size_t b0, size_t b1) noexcept nogil
    ctypedef void (*lrcore_q8_code_fn)(const lrcore_q8_code_job *job, size_t b0, size_t b1) noexcept nogil
    void lrcore_q8_adam_baseline(const lrcore_q8_adam_job *job, size_t b0, size_t b1)
    void lrcore_q8_adam_avx2(const lrcore_q8_adam_job *job, size_t b0, size_t b1)
    void lrcore_q8_adam_avx512(const lrcore_q8_adam_job *job, size_t b0, size_t b1)
    void lrcore_q8_encode_baseline(const lrcore_q8_code_job *job, size_t b0, size_t b1)
    void lrcore_q8_encode_avx2(const lrcore_q8_code_job *job, size_t b0, size_t b1)
    void lrcore_q8_encode_avx512(const lrcore_q8_code_job *job, size_t b0, size_t b1)
    void lrcore_q8_decode_baseline(const lrcore_q8_code_job *job, size_t b0, size_t b1)
    void lrcore_q8_decode_avx2(const lrcore_q8_code_job *job, size_t b0, size_t b1)
    void lrcore_q8_decode_avx512(const lrcore_q8_code_job *job, size_t b0, size_t b1)
    int LRCORE_Q8_BLOCK

# Blocks per task: 64 blocks = 16384 elements, a few hundred microseconds of work.
DEF TASK_BLOCKS = 64

cdef struct adam_call:
    const lrcore_q8_adam_job *job
    lrcore_q8_adam_fn fn
    size_t nblocks

cdef struct code_call:
    const lrcore_q8_code_job *job
    lrcore_q8_code_fn fn
    size_t nblocks

cdef void adam_task(void *arg, size_t t) noexcept nogil:
    cdef adam_call *c = <adam_call *>arg
    cdef size_t b0 = t * TASK_BLOCKS
    cdef size_t b1 = b0 + TASK_BLOCKS
    if b1 > c.nblocks:
        b1 = c.nblocks
    c.fn(c.job, b0, b1)

cdef void code_task(void *arg, size_t t) noexcept nogil:
    cdef code_call *c = <code_call *>arg
    cdef size_t b0 = t * TASK_BLOCKS
    cdef size_t b1 = b0 + TASK_BLOCKS
    if b1 > c.nblocks:
        b1 = c.nblocks
    c.fn(c.job, b0, b1)

cdef lrcore_q8_adam_fn ADAM_FNS[3]
ADAM_FNS[0] = lrcore_q8_adam_baseline
ADAM_FNS[1] = lrcore_q8_adam_avx2
ADAM_FNS[2] = lrcore_q8_adam_avx512
cdef lrcore_q8_code_fn ENCODE_FNS[3]
ENCODE_FNS[0] = lrcore_q8_encode_baseline
ENCODE_FNS[1] = lrcore_q8_encode_avx2
ENCODE_FNS[2] = lrcore_q8_encode_avx512
cdef lrcore_q8_code_fn DECODE_FNS[3]
DECODE_FNS[0] = lrcore_q8_decode_baseline
DECODE_FNS[1] = lrcore_q8_decode_avx2
DECODE_FNS[2] = lrcore_q8_decode_avx512

BLOCK = LRCORE_Q8_BLOCK


cdef lrcore_q8_codec _codec(const float[::1] map, const float[::1] thr, const int32_t[::1] base,
                           const uint64_t[::1] packed):
    cdef lrcore_q8_codec c
    c.map = &map[0]
    c.thr = &thr[0]
    c.base = &base[0]
    c.packed = &packed[0]
    return c


cdef int _threads(int nthreads, size_t ntasks):
    if nthreads < 1:
        nthreads = 1
    if <size_t>nthreads > ntasks:
        nthreads = <int>ntasks if ntasks > 0 else 1
    return nthreads


def adam(int level, int nthreads, float[::1] param, const float[::1] grad,
         uint8_t[::1] m_codes, float[::1] m_absmax, uint8_t[::1] v_codes, float[::1] v_absmax,
         w_codes, w_absmax, const float[::1] smap, const float[::1] sthr,
         const int32_t[::1] sbase, const uint64_t[::1] spacked, const float[::1] umap,
         const float[::1] uthr, const int32_t[::1] ubase, const uint64_t[::1] upacked, dict hp):
    """One fused 8-bit Adam step (arguments checked by lrcore.quantization.adam8)."""
    cdef lrcore_q8_adam_job job
    cdef adam_call call
    cdef uint8_t[::1] wc
    cdef float[::1] wa
    cdef size_t n = param.shape[0]
    if n == 0:
        return
    job.n = n
    job.param = &param[0]
    job.grad = &grad[0]
    job.m.codes = &m_codes[0]
    job.m.absmax = &m_absmax[0]
    job.v.codes = &v_codes[0]
    job.v.absmax = &v_absmax[0]
    if w_codes is None:
        job.vmax.codes = NULL
        job.vmax.absmax = NULL
    else:
        wc = w_codes
        wa = w_absmax
        job.vmax.codes = &wc[0]
        job.vmax.absmax = &wa[0]
    job.cs = _codec(smap, sthr, sbase, spacked)
    job.cu = _codec(umap, uthr, ubase, upacked)
    job.hp.lr = hp["lr"]
    job.hp.beta1 = hp["beta1"]
    job.hp.beta2 = hp["beta2"]
    job.hp.eps = hp["eps"]
    job.hp.weight_decay = hp["weight_decay"]
    job.hp.grad_scale = 1.0
    job.hp.step = hp["step"]
    job.hp.decoupled_weight_decay = 1 if hp["decoupled_weight_decay"] else 0
    job.hp.maximize = 1 if hp["maximize"] else 0
    call.job = &job
    call.fn = ADAM_FNS[level]
    call.nblocks = (n + LRCORE_Q8_BLOCK - 1) // LRCORE_Q8_BLOCK
    cdef size_t ntasks = (call.nblocks + TASK_BLOCKS - 1) // TASK_BLOCKS
    nthreads = _threads(nthreads, ntasks)
    with nogil:
        lrcore_pool_run(nthreads, ntasks, adam_task, &call)


def code(bint decode, int level, int nthreads, float[::1] values, uint8_t[::1] codes,
         float[::1] absmax, const float[::1] map, const float[::1] thr, const int32_t[::1] base,
         const uint64_t[::1] packed):
    """Encode values into (codes, absmax), or decode them into values."""
    cdef lrcore_q8_code_job job
    cdef code_call call
    cdef size_t n = values.shape[0]
    if n == 0:
        return
    job.n = n
    job.values = &values[0]
    job.q.codes = &codes[0]
    job.q.absmax = &absmax[0]
    job.c = _codec(map, thr, base, packed)
    call.job = &job
    call.fn = DECODE_FNS[level] if decode else ENCODE_FNS[level]
    call.nblocks = (n + LRCORE_Q8_BLOCK - 1) // LRCORE_Q8_BLOCK
    cdef size_t ntasks = (call.nblocks + TASK_BLOCKS - 1) // TASK_BLOCKS
    nthreads = _threads(nthreads, ntasks)
    with nogil:
        lrcore_pool_run(nthreads, ntasks, code_task, &call)
