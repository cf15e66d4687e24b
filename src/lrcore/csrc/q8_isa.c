/*
 * q8_isa.c -- the 8-bit kernels of lrcore_q8.h for one instruction set. setup.py compiles
 * this file once per ISA with LRCORE_ISA_NAME set (baseline, avx2, avx512) and its flags;
 * _q8.pyx picks the build for lrcore's active ISA. Each function runs blocks [b0, b1).
 */
#include "q8_jobs.h"

#ifndef LRCORE_ISA_NAME
#define LRCORE_ISA_NAME baseline
#endif
#define Q8_CAT2(a, b) a##b
#define Q8_CAT(a, b) Q8_CAT2(a, b)
#define Q8_FN(name) Q8_CAT(name, LRCORE_ISA_NAME)

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

static inline size_t block_len(size_t n, size_t b)
{
    const size_t s = b * LRCORE_Q8_BLOCK;
    return n - s < LRCORE_Q8_BLOCK ? n - s : LRCORE_Q8_BLOCK;
}

void Q8_FN(lrcore_q8_adam_)(const lrcore_q8_adam_job *job, size_t b0, size_t b1)
{
    lrcore_q8_adam_f32(job->n, b0, b1, job->param, job->grad, job->m, job->v, job->vmax,
                       &job->cs, &job->cu, &job->hp);
}

void Q8_FN(lrcore_q8_encode_)(const lrcore_q8_code_job *job, size_t b0, size_t b1)
{
    for (size_t b = b0; b < b1; b++) {
        const size_t s = b * LRCORE_Q8_BLOCK;
        job->q.absmax[b] = lrcore_q8_encode_block(&job->c, block_len(job->n, b),
                                                  job->values + s, job->q.codes + s);
    }
}

void Q8_FN(lrcore_q8_decode_)(const lrcore_q8_code_job *job, size_t b0, size_t b1)
{
    for (size_t b = b0; b < b1; b++) {
        const size_t s = b * LRCORE_Q8_BLOCK;
        lrcore_q8_decode_block(&job->c, block_len(job->n, b), job->q.codes + s,
                               job->q.absmax[b], job->values + s);
    }
}

/* Elsewhere than x86-64 only the baseline build exists (setup.py); lrcore never selects
 * the other levels there, but the wrapper links against their names. */
#if !defined(__x86_64__) && !defined(_M_X64)
void lrcore_q8_adam_avx2(const lrcore_q8_adam_job *job, size_t b0, size_t b1)
{ lrcore_q8_adam_baseline(job, b0, b1); }
void lrcore_q8_adam_avx512(const lrcore_q8_adam_job *job, size_t b0, size_t b1)
{ lrcore_q8_adam_baseline(job, b0, b1); }
void lrcore_q8_encode_avx2(const lrcore_q8_code_job *job, size_t b0, size_t b1)
{ lrcore_q8_encode_baseline(job, b0, b1); }
void lrcore_q8_encode_avx512(const lrcore_q8_code_job *job, size_t b0, size_t b1)
{ lrcore_q8_encode_baseline(job, b0, b1); }
void lrcore_q8_decode_avx2(const lrcore_q8_code_job *job, size_t b0, size_t b1)
{ lrcore_q8_decode_baseline(job, b0, b1); }
void lrcore_q8_decode_avx512(const lrcore_q8_code_job *job, size_t b0, size_t b1)
{ lrcore_q8_decode_baseline(job, b0, b1); }
#endif
