/*
 * q8_jobs.h -- one call of the 8-bit kernels (lrcore._q8), shared by the per-ISA builds
 * of q8_isa.c and the Cython wrapper _q8.pyx.
 */
#ifndef LRCORE_Q8_JOBS_H
#define LRCORE_Q8_JOBS_H

#include "lrcore_q8.h"

typedef struct {
    size_t n;                      /* elements */
    float *param;
    const float *grad;
    lrcore_q8_state m, v, vmax;    /* vmax.codes NULL: no AMSGrad */
    lrcore_q8_codec cs, cu;        /* signed (exp_avg) and unsigned maps */
    lrcore_adam_hp hp;
} lrcore_q8_adam_job;

typedef struct {
    size_t n;
    float *values;                 /* encode: read; decode: written */
    lrcore_q8_state q;
    lrcore_q8_codec c;
} lrcore_q8_code_job;

typedef void (*lrcore_q8_adam_fn)(const lrcore_q8_adam_job *job, size_t b0, size_t b1);
typedef void (*lrcore_q8_code_fn)(const lrcore_q8_code_job *job, size_t b0, size_t b1);

/* One of each per instruction-set build of q8_isa.c. */
#define LRCORE_Q8_DECLARE(isa) \
    void lrcore_q8_adam_##isa(const lrcore_q8_adam_job *job, size_t b0, size_t b1); \
    void lrcore_q8_encode_##isa(const lrcore_q8_code_job *job, size_t b0, size_t b1); \
    void lrcore_q8_decode_##isa(const lrcore_q8_code_job *job, size_t b0, size_t b1);
LRCORE_Q8_DECLARE(baseline)
LRCORE_Q8_DECLARE(avx2)
LRCORE_Q8_DECLARE(avx512)

#endif
