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

#ifdef LRCORE_Q8_VECTOR_ENCODER
/*
 * Adam / AdamW with both moments in 8 bits (exp_avg signed, exp_avg_sq unsigned, no
 * AMSGrad, beta1 > 0.5), on CPUs with AVX512-VBMI: one software-pipelined pass. Per block,
 * Q8_G elements at a time, it decodes block b's moments, runs lrcore.h's Adam loop on them
 * (lrcore__adam_loop_f32 with the scalars of lrcore__adam_scalars_f32: what lrcore_adam_f32
 * runs), folds the new moments into block b's absmax, and encodes the same Q8_G elements of
 * block b - 1 (whose absmax is known by then): the Adam loop is bound by the
 * divider, decoding and encoding by the vector ALUs, so the core can overlap them, and the
 * pass streams through memory once. A bfloat16 param / grad is widened per block and the
 * param rounded back per block (lrcore_round_half, index index_offset + element). Every
 * value is the one the chunked loop below computes (same functions, same order per
 * element; absmax is a maximum), so the bytes are the same. Full blocks only.
 */
/* Whether q8_adam_fused runs this job: Adam, exp_avg and exp_avg_sq 8-bit with their
 * usual maps, no max_exp_avg_sq, lerp weight 1 - beta1 < 0.5 (variants 2 and 3 of
 * lrcore_body.h's adam_loop), a CPU with AVX512-VBMI. */
static int q8_adam_fusable(const lrcore_q8_job *job)
{
    if (!lrcore_q8_vbmi || job->kind != LRCORE_KIND_adam) return 0;
    const lrcore_q8_buf *s = job->state;
    if (!s[0].q.codes || s[0].map != 0 || !s[1].q.codes || s[1].map != 1) return 0;
    if (s[2].q.codes || s[2].f32) return 0;
    const unsigned v = lrcore__adam_scalars_f32(&job->hp.adam, 0).variant;
    return v == 2u || v == 3u;
}

/* Elements per step of the pipeline (the Adam loop's length; a multiple of 64 dividing
 * the block): 128 measured best on Zen 4 (64 and 256 within a few per cent). */
#ifndef Q8_G
#define Q8_G 128
#endif
LRCORE_Q8_VBMI static void q8_adam_fused(const lrcore_q8_job *job, size_t b0, size_t b1)
{
    enum { B = LRCORE_Q8_BLOCK };
    const lrcore__adam_k_f32 a = lrcore__adam_scalars_f32(&job->hp.adam, 0);
    const lrcore__stream st = lrcore__no_stream();
    const lrcore_lowp *lp = &job->lowp;
    const int hpar = lp->param != LRCORE_ET_F32, hgr = lp->grad != LRCORE_ET_F32;
    const lrcore_q8_codec *cm = &job->codec[0], *cv = &job->codec[1];
    const lrcore_q8_state qm = job->state[0].q, qv = job->state[1].q;
    lrcore_q8_btab dm, dv;
    lrcore_q8_btab_load(cm, &dm);
    lrcore_q8_btab_load(cv, &dv);
    const lrcore_q8_vtab em = lrcore_q8_vtab_load(cm), ev = lrcore_q8_vtab_load(cv);
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    float sm[2][B] __attribute__((aligned(64))), sv[2][B] __attribute__((aligned(64)));
    float tp[B] __attribute__((aligned(64))), tg[B] __attribute__((aligned(64)));
    uint32_t mbm = 0, mbv = 0;        /* absmax bits of the previous block's moments */
    for (size_t b = b0; b <= b1; b++) {
        const int cur = (int)(b & 1u), prev = cur ^ 1;
        const int have = b < b1, enc = b > b0;
        /* the previous block: vector codes when its absmax is in [2**-126, 2**126] */
        float amm, amv;
        memcpy(&amm, &mbm, sizeof amm);
        memcpy(&amv, &mbv, sizeof amv);
        const int vm = enc && lrcore_q8_vector_ok(mbm);
        const int vv = enc && lrcore_q8_vector_ok(mbv);
        const __m512 rm = _mm512_set1_ps(vm ? 1.0f / amm : 1.0f);
        const __m512 rv = _mm512_set1_ps(vv ? 1.0f / amv : 1.0f);
        float *p = 0;
        const float *g = 0;
        __m512 dam = _mm512_setzero_ps(), dav = dam;
        if (have) {
            const size_t e = b * B;
            p = hpar ? tp : (float *)job->param + e;
            g = hgr ? tg : (const float *)job->grad + e;
            if (hpar) lrcore_widen_bf16(B, (const uint16_t *)job->param + e, tp);
            if (hgr) lrcore_widen_bf16(B, (const uint16_t *)job->grad + e, tg);
            dam = _mm512_set1_ps(qm.absmax[b]);
            dav = _mm512_set1_ps(qv.absmax[b]);
        }
        __m512i mxm = _mm512_setzero_si512(), mxv = mxm;
        for (size_t i = 0; i < B; i += Q8_G) {
            if (have) {
                const size_t e = b * B + i;
                float *m = sm[cur] + i, *v = sv[cur] + i;
                for (int k = 0; k < Q8_G; k += 64) {
                    lrcore_q8_decode64_vbmi(&dm, qm.codes + e + k, dam, m + k);
                    lrcore_q8_decode64_vbmi(&dv, qv.codes + e + k, dav, v + k);
                }
                if (a.variant == 3u)
                    lrcore__adam_loop_f32(Q8_G, p + i, g + i, m, v, 0, &a.k, a.bc2_sqrt, a.eps,
                                          a.nss, st, 3u);
                else
                    lrcore__adam_loop_f32(Q8_G, p + i, g + i, m, v, 0, &a.k, a.bc2_sqrt, a.eps,
                                          a.nss, st, 2u);
                /* exp_avg_sq on its bit patterns as they are (one op, not two): where
                 * none has its sign bit set or is NaN they are those of |v| */
                for (int k = 0; k < Q8_G; k += 16) {
                    mxm = _mm512_max_epu32(mxm, _mm512_and_si512(
                        _mm512_load_si512((const void *)(m + k)), absmask));
                    mxv = _mm512_max_epu32(mxv, _mm512_load_si512((const void *)(v + k)));
                }
            }
            for (int k = 0; k < Q8_G; k += 64) {
                if (vm)
                    lrcore_q8_encode64(cm, &em, sm[prev] + i + k, rm, amm,
                                       qm.codes + (b - 1) * B + i + k, 1);
                if (vv)
                    lrcore_q8_encode64(cv, &ev, sv[prev] + i + k, rv, amv,
                                       qv.codes + (b - 1) * B + i + k, 0);
            }
        }
        if (enc) {    /* absmax out of range (0, NaN, Inf, tiny, huge): the block encoder */
            qm.absmax[b - 1] = vm ? amm
                : lrcore_q8_encode_block(cm, B, sm[prev], qm.codes + (b - 1) * B);
            qv.absmax[b - 1] = vv ? amv
                : lrcore_q8_encode_block(cv, B, sv[prev], qv.codes + (b - 1) * B);
        }
        if (have) {
            mbm = lrcore_q8_absmax_bits(_mm512_reduce_max_epu32(mxm));
            mbv = _mm512_reduce_max_epu32(mxv);
            if (mbv > 0x7f800000u) {    /* a NaN or a set sign bit (-0): |v| again */
                __m512i mx = _mm512_setzero_si512();
                for (int k = 0; k < B; k += 16)
                    mx = _mm512_max_epu32(mx, _mm512_and_si512(
                        _mm512_load_si512((const void *)(sv[cur] + k)), absmask));
                mbv = _mm512_reduce_max_epu32(mx);
            }
            mbv = lrcore_q8_absmax_bits(mbv);
            if (hpar)
                lrcore_round_half(LRCORE_ET_BF16, B, tp, (uint16_t *)job->param + b * B,
                                  lp->rounding, lp->seed, lp->step, 0u,
                                  lp->index_offset + b * B);
        }
    }
}
#endif

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
#ifdef LRCORE_Q8_VECTOR_ENCODER
    if (q8_adam_fusable(job)) {    /* full blocks fused; a partial last block below */
        const size_t full = job->n / LRCORE_Q8_BLOCK, f1 = b1 < full ? b1 : full;
        if (b0 < f1) {
            q8_adam_fused(job, b0, f1);
            b0 = f1;
        }
    }
#endif
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
        __mmask16 ok = 0xFFFF;
        _mm_storeu_si128((__m128i *)(codes + i),
                         lrcore_q8_code16(&t, _mm512_loadu_ps(x + i), c->is_signed, &ok));
        _mm_storeu_si128((__m128i *)(flags + i), _mm_maskz_set1_epi8((__mmask16)~ok, 1));
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
