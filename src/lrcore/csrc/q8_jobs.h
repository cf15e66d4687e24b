/*
 * q8_jobs.h -- one call of the 8-bit kernels (lrcore._q8), shared by the per-ISA builds
 * of q8_isa.c and the Cython wrapper _q8.pyx.
 */
#ifndef LRCORE_Q8_JOBS_H
#define LRCORE_Q8_JOBS_H

#include "jobs.h"
#include "lrcore_q8.h"

/* One state buffer of a step: float32 (f32 != NULL), 8-bit (q.codes != NULL, codec `map`:
 * 0 signed, 1 unsigned) or absent (both NULL). */
typedef struct {
    float *f32;
    lrcore_q8_state q;
    int map;
} lrcore_q8_buf;

/* One step of any rule over n elements with some states in 8 bits. param and grad are
 * float32 or bfloat16 (LRCORE_ET_F32 / LRCORE_ET_BF16 in lowp.param / lowp.grad); a
 * bfloat16 param is rounded back by lowp.rounding with the stream of lrcore_lowp.h
 * (buffer 0, element index lowp.index_offset + i). */
typedef struct {
    int kind;                      /* LRCORE_KIND_<rule> */
    size_t n;
    void *param;
    const void *grad;
    lrcore_q8_buf state[3];        /* kernel order */
    lrcore_hp hp;                  /* hp.<rule> */
    lrcore_lowp lowp;              /* element types, rounding, stream */
    lrcore_q8_codec codec[2];      /* signed, unsigned */
} lrcore_q8_job;

typedef struct {
    size_t n;
    float *values;                 /* encode: read; decode: written */
    lrcore_q8_state q;
    lrcore_q8_codec c;
} lrcore_q8_code_job;

typedef void (*lrcore_q8_step_fn)(const lrcore_q8_job *job, size_t b0, size_t b1);
typedef void (*lrcore_q8_code_fn)(const lrcore_q8_code_job *job, size_t b0, size_t b1);

/* One of each per instruction-set build of q8_isa.c. */
#define LRCORE_Q8_DECLARE(isa) \
    void lrcore_q8_step_##isa(const lrcore_q8_job *job, size_t b0, size_t b1); \
    void lrcore_q8_encode_##isa(const lrcore_q8_code_job *job, size_t b0, size_t b1); \
    void lrcore_q8_decode_##isa(const lrcore_q8_code_job *job, size_t b0, size_t b1); \
    int lrcore_q8_vector_codes_##isa(const lrcore_q8_codec *c, size_t n, const float *x, \
                                     uint8_t *codes, uint8_t *flags); \
    int lrcore_q8_vbmi_##isa(int set);
LRCORE_Q8_DECLARE(baseline)
LRCORE_Q8_DECLARE(avx2)
LRCORE_Q8_DECLARE(avx512)

#endif
