/*
 * kernels_isa.c -- the kernels of lrcore.h compiled for one instruction set.
 *
 * setup.py compiles this file three times on x86-64 (-DLRCORE_ISA_NAME=baseline,
 * avx2 with -mavx2 -mfma -mf16c, avx512 with -mavx512f/vl/bw/dq and those), and once elsewhere.
 * Each build exports lrcore_range_<name>: run a sub-range of one job.
 */
/* F16C (vcvtph2ps/vcvtps2ph, for the float16 tiles of lrcore_lowp.h) comes with every x86
 * CPU that has AVX2; the runtime takes the avx2 and avx512 builds only where the CPU reports
 * it (runtime.c). GCC: enabled here when the flags did not (-mf16c); elsewhere the float16
 * loops keep their integer conversions (the same bits). */
#if defined(__AVX2__) && !defined(__F16C__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("f16c")
#endif
#include "runtime.h"

#ifndef LRCORE_ISA_NAME
#define LRCORE_ISA_NAME baseline
#endif

#define OFF(ptr, T) ((ptr) ? (T *)(ptr) + start : (T *)0)

/* The bandwidth probe: nstate + 1 read-modify-write streams and one read stream,
 * x = x + s*g for each. With s = 0 it leaves finite data unchanged, so benchmarks run it
 * on the very buffers they time the kernel on (placement in memory matters). */
#define DEFINE_PROBE(T, SUFFIX)                                                              \
static inline __attribute__((always_inline)) void probe_body_##SUFFIX(size_t n,             \
    T *restrict p, const T *restrict g, T *restrict a, T *restrict b, T *restrict c,         \
    const T s, const int k)                                                                  \
{                                                                                            \
    for (size_t i = 0; i < n; i++) {                                                         \
        T gi = g[i] * s;                                                                     \
        p[i] = p[i] + gi;                                                                    \
        if (k > 0) a[i] = a[i] + gi;                                                         \
        if (k > 1) b[i] = b[i] + gi;                                                         \
        if (k > 2) c[i] = c[i] + gi;                                                         \
    }                                                                                        \
}                                                                                            \
static void probe_##SUFFIX(size_t n, T *p, const T *g, T *a, T *b, T *c, double scale)      \
{                                                                                            \
    /* states are packed to the front: a, then b, then c */                                  \
    const T s = (T)scale;                                                                    \
    if (!a) probe_body_##SUFFIX(n, p, g, a, b, c, s, 0);                                     \
    else if (!b) probe_body_##SUFFIX(n, p, g, a, b, c, s, 1);                                \
    else if (!c) probe_body_##SUFFIX(n, p, g, a, b, c, s, 2);                                \
    else probe_body_##SUFFIX(n, p, g, a, b, c, s, 3);                                        \
}
DEFINE_PROBE(float, f32)
DEFINE_PROBE(double, f64)

/* One case per rule of LRCORE_RULES: lrcore_<rule>_<type>(count, p, g, states..., &hp.<rule>). */
#define STATES_1(T) OFF(job->state[0], T)
#define STATES_2(T) STATES_1(T), OFF(job->state[1], T)
#define STATES_3(T) STATES_2(T), OFF(job->state[2], T)
#define CASE(name, nstates, T, SUFFIX) \
    case LRCORE_KIND_##name: \
        lrcore_##name##_##SUFFIX(count, p, g, STATES_##nstates(T), &job->hp.name); break;
#define CASE_F32(name, nstates) CASE(name, nstates, float, f32)
#define CASE_F64(name, nstates) CASE(name, nstates, double, f64)

/* Low-precision jobs: the fused loops of lrcore_lowp.h for the job's layout and rounding,
 * element `start` being element index_offset + start of the whole buffer. */
#define CASE_LOWP(name, nstates) \
    case LRCORE_KIND_##name: lrcore_##name##_lowp(count, p, g, st, &job->hp.name, &lp); break;

static void lowp_range(const lrcore_job *job, size_t start, size_t count)
{
    const size_t ps = lrcore__et_size(job->lowp.param), gs = lrcore__et_size(job->lowp.grad);
    const size_t ss = lrcore__et_size(job->lowp.state);
    void *st[3];
    for (int k = 0; k < 3; k++) st[k] = job->state[k] ? (void *)(job->state[k] + start * ss) : (void *)0;
    void *p = job->param + start * ps;
    const void *g = job->grad + start * gs;
    lrcore_lowp lp = job->lowp;
    lp.index_offset += start;
    switch (job->kind) {
    LRCORE_RULES(CASE_LOWP)
    }
}

static void run_range(const lrcore_job *job, size_t start, size_t count)
{
    if (count == 0) return;
    if (job->dtype == LRCORE_LOWP) { lowp_range(job, start, count); return; }
    if (job->dtype == LRCORE_F32) {
        float *p = (float *)job->param + start;
        const float *g = (const float *)job->grad + start;
        switch (job->kind) {
        LRCORE_RULES(CASE_F32)
        case LRCORE_PROBE:
            probe_f32(count, p, g, STATES_3(float), job->hp.probe.scale); break;
        }
    } else {
        double *p = (double *)job->param + start;
        const double *g = (const double *)job->grad + start;
        switch (job->kind) {
        LRCORE_RULES(CASE_F64)
        case LRCORE_PROBE:
            probe_f64(count, p, g, STATES_3(double), job->hp.probe.scale); break;
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
