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

/* The float32 kernel of the job's rule on one chunk: lrcore_<rule>_f32(m, p, g, s..., &hp). */
#define Q8_S1 s[0]
#define Q8_S2 Q8_S1, s[1]
#define Q8_S3 Q8_S2, s[2]
#define Q8_RULE(name, nstates) \
    case LRCORE_KIND_##name: lrcore_##name##_f32(m, p, g, Q8_S##nstates, &hp->name); break;

static void rule_f32(int kind, const lrcore_hp *hp, size_t m, float *p, const float *g,
                     float *s[3])
{
    switch (kind) { LRCORE_RULES(Q8_RULE) }
}

/*
 * Blocks [b0, b1) of one step, LRCORE_Q8_CHUNK blocks at a time:
 *   widen the chunk of a bfloat16 param / grad into float32 scratch (float32: in place);
 *   decode each 8-bit state's blocks into float32 scratch (float32 states: in place);
 *   run the rule's float32 kernel of lrcore.h on the chunk, unchanged;
 *   encode each 8-bit state's blocks (new absmax, exact nearest codes);
 *   round a bfloat16 param back (lrcore_round_half, buffer 0, index index_offset + e).
 * Every block is computed the same way whatever [b0, b1) is, so threads splitting a call
 * on block boundaries write the same bytes.
 */
void Q8_FN(lrcore_q8_step_)(const lrcore_q8_job *job, size_t b0, size_t b1)
{
    enum { CH = LRCORE_Q8_CHUNK * LRCORE_Q8_BLOCK };
    float tp[CH] __attribute__((aligned(64))), tg[CH] __attribute__((aligned(64)));
    float ts[3][CH] __attribute__((aligned(64)));
    const lrcore_lowp *lp = &job->lowp;
    const size_t n = job->n;
    for (size_t c0 = b0; c0 < b1; c0 += LRCORE_Q8_CHUNK) {
        const size_t c1 = b1 - c0 > LRCORE_Q8_CHUNK ? c0 + LRCORE_Q8_CHUNK : b1;
        const size_t e0 = c0 * LRCORE_Q8_BLOCK;
        const size_t e1 = c1 * LRCORE_Q8_BLOCK < n ? c1 * LRCORE_Q8_BLOCK : n;
        const size_t m = e1 - e0;
        float *p = lp->param == LRCORE_ET_F32 ? (float *)job->param + e0 : tp;
        const float *g = lp->grad == LRCORE_ET_F32 ? (const float *)job->grad + e0 : tg;
        if (lp->param != LRCORE_ET_F32) lrcore_widen_bf16(m, (const uint16_t *)job->param + e0, tp);
        if (lp->grad != LRCORE_ET_F32) lrcore_widen_bf16(m, (const uint16_t *)job->grad + e0, tg);
        float *s[3];
        for (int k = 0; k < 3; k++) {
            const lrcore_q8_buf *b = &job->state[k];
            s[k] = b->f32 ? b->f32 + e0 : (b->q.codes ? ts[k] : (float *)0);
            if (b->q.codes)
                lrcore_q8_decode_blocks(&job->codec[b->map], n, c0, c1, b->q, ts[k]);
        }
        rule_f32(job->kind, &job->hp, m, p, g, s);
        for (int k = 0; k < 3; k++) {
            const lrcore_q8_buf *b = &job->state[k];
            if (b->q.codes) lrcore_q8_encode_blocks(&job->codec[b->map], n, c0, c1, ts[k], b->q);
        }
        if (lp->param != LRCORE_ET_F32)
            lrcore_round_half(LRCORE_ET_BF16, m, tp, (uint16_t *)job->param + e0, lp->rounding,
                              lp->seed, lp->step, 0u, lp->index_offset + e0);
    }
}

void Q8_FN(lrcore_q8_encode_)(const lrcore_q8_code_job *job, size_t b0, size_t b1)
{
    lrcore_q8_encode_blocks(&job->c, job->n, b0, b1, job->values + b0 * LRCORE_Q8_BLOCK, job->q);
}

void Q8_FN(lrcore_q8_decode_)(const lrcore_q8_code_job *job, size_t b0, size_t b1)
{
    lrcore_q8_decode_blocks(&job->c, job->n, b0, b1, job->q, job->values + b0 * LRCORE_Q8_BLOCK);
}

/* Whether the AVX-512 build decodes with AVX512-VBMI byte permutes (lrcore_q8.h):
 * set < 0 detects it from the CPU (done once at import of lrcore._q8), 0 turns it off,
 * 1 on where the CPU has it (tests run both decoders); returns the setting. 0 in the other
 * builds. */
#ifdef LRCORE_Q8_VECTOR_ENCODER
int lrcore_q8_vbmi = 0;
#endif
int Q8_FN(lrcore_q8_vbmi_)(int set)
{
#ifdef LRCORE_Q8_VECTOR_ENCODER
    __builtin_cpu_init();
    const int has = __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512bw");
    lrcore_q8_vbmi = set < 0 ? has : (set && has);
    return lrcore_q8_vbmi;
#else
    (void)set;
    return 0;
#endif
}

/* Test hook (bench/q8_exhaustive.py, tests): the vector encoder's codes of n quotient
 * estimates x (n a multiple of 16) and flags[i] = 1 where it leaves lane i to the exact
 * search; no exact search here. Returns 0 where this build has no vector encoder. */
int Q8_FN(lrcore_q8_vector_codes_)(const lrcore_q8_codec *c, size_t n, const float *x,
                                   uint8_t *codes, uint8_t *flags)
{
#ifdef LRCORE_Q8_VECTOR_ENCODER
    const lrcore_q8_vtab t = lrcore_q8_vtab_load(c);
    for (size_t i = 0; i + 16 <= n; i += 16) {
        __mmask16 bad = 0;
        const __m512i k = lrcore_q8_code16(&t, _mm512_loadu_ps(x + i), c->is_signed, &bad);
        _mm_storeu_si128((__m128i *)(codes + i), _mm512_cvtepi32_epi8(k));
        _mm_storeu_si128((__m128i *)(flags + i), _mm_maskz_set1_epi8(bad, 1));
    }
    return 1;
#else
    (void)c; (void)n; (void)x; (void)codes; (void)flags;
    return 0;
#endif
}

/* Elsewhere than x86-64 only the baseline build exists (setup.py); lrcore never selects
 * the other levels there, but the wrapper links against their names. */
#if !defined(__x86_64__) && !defined(_M_X64)
#define Q8_ALIAS(fn, J) \
    void fn##avx2(const J *job, size_t b0, size_t b1) { fn##baseline(job, b0, b1); } \
    void fn##avx512(const J *job, size_t b0, size_t b1) { fn##baseline(job, b0, b1); }
Q8_ALIAS(lrcore_q8_step_, lrcore_q8_job)
Q8_ALIAS(lrcore_q8_encode_, lrcore_q8_code_job)
Q8_ALIAS(lrcore_q8_decode_, lrcore_q8_code_job)
int lrcore_q8_vbmi_avx2(int set) { return lrcore_q8_vbmi_baseline(set); }
int lrcore_q8_vbmi_avx512(int set) { return lrcore_q8_vbmi_baseline(set); }
int lrcore_q8_vector_codes_avx2(const lrcore_q8_codec *c, size_t n, const float *x,
                                uint8_t *codes, uint8_t *flags)
{ return lrcore_q8_vector_codes_baseline(c, n, x, codes, flags); }
int lrcore_q8_vector_codes_avx512(const lrcore_q8_codec *c, size_t n, const float *x,
                                  uint8_t *codes, uint8_t *flags)
{ return lrcore_q8_vector_codes_baseline(c, n, x, codes, flags); }
#endif
