/*
 * q8_percore.c -- the 8-bit step's time per element on one thread, by piece (issue 13).
 *
 * Built and run by bench/q8_percore.py (which writes the codec tables of
 * lrcore.quantization into q8_tables.h and compiles this file with the AVX-512 build's
 * flags): it includes csrc/q8_isa.c, so it times the same code as lrcore._q8's AVX-512
 * build, without Python or the thread pool. Arguments: n (elements), repetitions per
 * sample. Per piece: median and minimum over 31 samples of CPU time per element:
 *   step f32 / bf16 nearest / bf16 sr   AdamW (lr 1e-3, weight decay 1e-2) with both moments
 *                                        8-bit, after 20 warm-up steps with fresh grads
 *   decode signed                        the exp_avg state back to float32
 *   encode signed / unsigned             the decoded states again (lrcore_q8_encode_block:
 *                                        its absmax scan and table loads included)
 *   pass: encode both / adam loop        the fused pass's parts alone: both moments' codes
 *                                        with the tables in registers (lrcore_q8_encode64),
 *                                        and Adam's loop on 128 elements at a time
 *   f32 adamw                            lrcore_adam_f32 on float32 state, same n
 * Environment NOVBMI=1: the decoder and step of CPUs without AVX512-VBMI.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "q8_isa.c"
#include "q8_tables.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static lrcore_q8_codec codec(int s)
{
    lrcore_q8_codec c;
    c.map = (const float *)(s ? s_map : u_map);
    c.thr = (const float *)(s ? s_thr : u_thr);
    c.base = s ? s_base : u_base;
    c.dec = (const float *)(s ? s_dec : u_dec);
    c.deci = s ? s_deci : u_deci;
    c.planes = s ? s_planes : u_planes;
    c.window = s ? s_window : u_window;
    c.near = s ? s_near : u_near;
    c.is_signed = s;
    return c;
}

static uint64_t rs = 88172645463325252ull;
static double normal(void)      /* Irwin-Hall approximation: enough for timing */
{
    double a = 0;
    for (int k = 0; k < 12; k++) {
        rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
        a += (double)(rs >> 11) * (1.0 / 9007199254740992.0);
    }
    return a - 6;
}

static int cmpd(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#define SAMPLES 31
#define TIME(label, body) do { \
        double ts[SAMPLES]; \
        for (int r = 0; r < SAMPLES; r++) { \
            const double t0 = now(); \
            for (int k = 0; k < reps; k++) { body; } \
            ts[r] = (now() - t0) / reps / (double)n * 1e9; \
        } \
        qsort(ts, SAMPLES, sizeof(double), cmpd); \
        printf("%-20s %.3f ns/element (min %.3f)\n", label, ts[SAMPLES / 2], ts[0]); \
    } while (0)

/* The fused pass's pieces alone (q8_adam_fused, AVX512-VBMI): both moments' codes with the
 * tables in registers and each block's absmax known, as the pass encodes them ... */
static void pass_encode(size_t n, const float *dm, const float *dv, const float *a1,
                        const float *a2, uint8_t *e1, uint8_t *e2, const lrcore_q8_codec *cs,
                        const lrcore_q8_codec *cu)
{
    const lrcore_q8_vtab ts = lrcore_q8_vtab_load(cs), tu = lrcore_q8_vtab_load(cu);
    for (size_t b = 0; b < n / 256; b++) {
        const __m512 r1 = _mm512_set1_ps(1.0f / a1[b]), r2 = _mm512_set1_ps(1.0f / a2[b]);
        for (size_t i = 256 * b; i < 256 * b + 256; i += 64) {
            lrcore_q8_encode64(cs, &ts, dm + i, r1, a1[b], e1 + i, 1);
            lrcore_q8_encode64(cu, &tu, dv + i, r2, a2[b], e2 + i, 0);
        }
    }
}

/* ... and its Adam loop, 128 elements at a time, with its divisions. */
static void pass_adam(size_t n, float *p, const float *g, float *m, float *v,
                      const lrcore_adam_hp *hp)
{
    const lrcore__adam_k_f32 a = lrcore__adam_scalars_f32(hp, 0);
    for (size_t i = 0; i + 128 <= n; i += 128)
        lrcore__adam_loop_f32(128, p + i, g + i, m + i, v + i, 0, &a.k, a.bc2_sqrt, a.eps, a.nss,
                              lrcore__no_stream(), a.variant);
}

int main(int argc, char **argv)
{
    const size_t n = argc > 1 ? strtoul(argv[1], 0, 0) : 2048;
    const int reps = argc > 2 ? atoi(argv[2]) : 2000;
    printf("n = %zu, AVX512-VBMI path: %d\n", n, lrcore_q8_vbmi_avx512(getenv("NOVBMI") ? 0 : -1));
    const size_t nb = (n + 255) / 256;
    float *p = aligned_alloc(64, n * 4 + 64), *g = aligned_alloc(64, n * 4 + 64);
    float *v = aligned_alloc(64, n * 4 + 64);
    uint16_t *pb = aligned_alloc(64, n * 2 + 64), *gb = aligned_alloc(64, n * 2 + 64);
    uint8_t *c1 = aligned_alloc(64, n + 64), *c2 = aligned_alloc(64, n + 64);
    uint8_t *cc = aligned_alloc(64, n + 64);
    float *a1 = calloc(nb, 4), *a2 = calloc(nb, 4), *aa = calloc(nb, 4);
    for (size_t i = 0; i < n; i++) { p[i] = (float)normal(); c1[i] = 127; c2[i] = 0; }
    lrcore_q8_job job;
    memset(&job, 0, sizeof job);
    job.kind = LRCORE_KIND_adam;
    job.n = n;
    job.param = p;
    job.grad = g;
    job.hp.adam = lrcore_adam_defaults(1e-3, 1);
    job.hp.adam.weight_decay = 1e-2;
    job.hp.adam.decoupled_weight_decay = 1;
    job.state[0].q.codes = c1; job.state[0].q.absmax = a1; job.state[0].map = 0;
    job.state[1].q.codes = c2; job.state[1].q.absmax = a2; job.state[1].map = 1;
    job.lowp.param = job.lowp.grad = job.lowp.state = LRCORE_ET_F32;
    job.codec[0] = codec(1);
    job.codec[1] = codec(0);
    for (int t = 1; t <= 20; t++) {    /* states like Adam's */
        for (size_t i = 0; i < n; i++) g[i] = (float)(normal() * 1e-3 * (double)(1 + i % 7));
        job.hp.adam.step = t;
        lrcore_q8_step_avx512(&job, 0, nb);
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &p[i], 4); pb[i] = (uint16_t)(u >> 16);
        memcpy(&u, &g[i], 4); gb[i] = (uint16_t)(u >> 16);
    }
    TIME("step f32", (job.hp.adam.step++, lrcore_q8_step_avx512(&job, 0, nb)));
    lrcore_q8_code_job dj = {n, v, {c1, a1}, codec(1)};
    TIME("decode signed", lrcore_q8_decode_avx512(&dj, 0, nb));
    lrcore_q8_code_job ej = {n, v, {cc, aa}, codec(1)};
    TIME("encode signed", lrcore_q8_encode_avx512(&ej, 0, nb));
    dj.q.codes = c2; dj.q.absmax = a2; dj.c = codec(0);
    lrcore_q8_decode_avx512(&dj, 0, nb);
    ej.c = codec(0);
    TIME("encode unsigned", lrcore_q8_encode_avx512(&ej, 0, nb));
    {
        float *dm = aligned_alloc(64, n * 4 + 64), *dv = aligned_alloc(64, n * 4 + 64);
        uint8_t *e1 = aligned_alloc(64, n + 64), *e2 = aligned_alloc(64, n + 64);
        lrcore_q8_code_job d1 = {n, dm, {c1, a1}, codec(1)}, d2 = {n, dv, {c2, a2}, codec(0)};
        lrcore_q8_decode_avx512(&d1, 0, nb);
        lrcore_q8_decode_avx512(&d2, 0, nb);
        const lrcore_q8_codec cs = codec(1), cu = codec(0);
        TIME("pass: encode both", pass_encode(n, dm, dv, a1, a2, e1, e2, &cs, &cu));
        TIME("pass: adam loop", pass_adam(n, p, g, dm, dv, &job.hp.adam));
    }
    job.param = pb; job.grad = gb;
    job.lowp.param = job.lowp.grad = LRCORE_ET_BF16;
    TIME("step bf16 nearest", (job.hp.adam.step++, lrcore_q8_step_avx512(&job, 0, nb)));
    job.lowp.rounding = LRCORE_ROUND_STOCHASTIC;
    TIME("step bf16 sr", (job.hp.adam.step++, lrcore_q8_step_avx512(&job, 0, nb)));
    float *m = calloc(n, 4), *vv = calloc(n, 4);
    lrcore_adam_hp hp = job.hp.adam;
    TIME("f32 adamw", lrcore_adam_f32(n, p, g, m, vv, NULL, &hp));
    return 0;
}
