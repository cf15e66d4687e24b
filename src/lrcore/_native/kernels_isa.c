/*
 * kernels_isa.c -- the kernels of lrcore.h compiled for one instruction set.
 *
 * setup.py compiles this file three times on x86-64 (-DLRCORE_ISA_NAME=baseline,
 * avx2 with -mavx2 -mfma, avx512 with -mavx512f/vl/bw/dq), and once elsewhere.
 * Each build exports lrcore_range_<name>: run a sub-range of one job.
 */
#include "runtime.h"

#ifndef LRCORE_ISA_NAME
#define LRCORE_ISA_NAME baseline
#endif
#define LRCORE__CAT2(a, b) a##b
#define LRCORE__CAT(a, b) LRCORE__CAT2(a, b)

#define OFF(ptr, T) ((ptr) ? (T *)(ptr) + start : (T *)0)

static void run_range(const lrcore_job *job, size_t start, size_t count)
{
    if (count == 0) return;
    if (job->dtype == LRCORE_F32) {
        float *p = (float *)job->param + start;
        const float *g = (const float *)job->grad + start;
        switch (job->kind) {
        case LRCORE_SGD:
            lrcore_sgd_f32(count, p, g, OFF(job->state[0], float), &job->hp.sgd); break;
        case LRCORE_ADAM:
            lrcore_adam_f32(count, p, g, OFF(job->state[0], float), OFF(job->state[1], float),
                            OFF(job->state[2], float), &job->hp.adam); break;
        case LRCORE_ADAGRAD:
            lrcore_adagrad_f32(count, p, g, OFF(job->state[0], float), &job->hp.adagrad); break;
        case LRCORE_RMSPROP:
            lrcore_rmsprop_f32(count, p, g, OFF(job->state[0], float), OFF(job->state[1], float),
                               OFF(job->state[2], float), &job->hp.rmsprop); break;
        case LRCORE_ADADELTA:
            lrcore_adadelta_f32(count, p, g, OFF(job->state[0], float), OFF(job->state[1], float),
                                &job->hp.adadelta); break;
        }
    } else {
        double *p = (double *)job->param + start;
        const double *g = (const double *)job->grad + start;
        switch (job->kind) {
        case LRCORE_SGD:
            lrcore_sgd_f64(count, p, g, OFF(job->state[0], double), &job->hp.sgd); break;
        case LRCORE_ADAM:
            lrcore_adam_f64(count, p, g, OFF(job->state[0], double), OFF(job->state[1], double),
                            OFF(job->state[2], double), &job->hp.adam); break;
        case LRCORE_ADAGRAD:
            lrcore_adagrad_f64(count, p, g, OFF(job->state[0], double), &job->hp.adagrad); break;
        case LRCORE_RMSPROP:
            lrcore_rmsprop_f64(count, p, g, OFF(job->state[0], double), OFF(job->state[1], double),
                               OFF(job->state[2], double), &job->hp.rmsprop); break;
        case LRCORE_ADADELTA:
            lrcore_adadelta_f64(count, p, g, OFF(job->state[0], double), OFF(job->state[1], double),
                                &job->hp.adadelta); break;
        }
    }
}

static double sumsq_range(const lrcore_job *job, size_t start, size_t count)
{
    if (job->dtype == LRCORE_F32)
        return lrcore_sum_squares_f32(count, (const float *)job->grad + start);
    return lrcore_sum_squares_f64(count, (const double *)job->grad + start);
}

const lrcore_range_fn LRCORE__CAT(lrcore_range_, LRCORE_ISA_NAME) = run_range;
const lrcore_sumsq_fn LRCORE__CAT(lrcore_sumsq_, LRCORE_ISA_NAME) = sumsq_range;
