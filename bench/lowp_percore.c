/*
 * lowp_percore.c -- the all-bfloat16 loops of lrcore_lowp.h per element, one thread, data in
 * cache: the compute side of the roofline of bench/test_bench_lowp.py, without Python.
 *
 * Build and run (portable flags, as lrcore's avx512 build; the kernels are lrcore_lowp.h's):
 *   cc -O3 -std=gnu11 -ffp-contract=off -fno-math-errno -mavx512f -mavx512vl -mavx512bw \
 *      -mavx512dq -mavx2 -mfma -mprefer-vector-width=512 -I src/lrcore/include \
 *      bench/lowp_percore.c -o /tmp/lowp_percore -lm && /tmp/lowp_percore [n] [reps] [GHz]
 *   (or -mavx2 -mfma for the AVX2 build)
 *
 * For Lion, SGD with momentum and AdamW (decoupled weight decay): the float32 kernel, then the
 * all-bfloat16 layout with nearest and with stochastic rounding, on n elements (default
 * 16,384: 128 KiB of bfloat16 buffers for AdamW, in L2). Each row: `reps` calls timed as a
 * batch on the thread's CPU time, 21 batches, the median per element; with a GHz argument
 * (the core's clock) also cycles per 16 elements (one 512-bit vector of float32).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "lrcore.h"
#include "lrcore_lowp.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static int cmpd(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#define BATCHES 21
static size_t n;
static int reps;
static double ghz;

/* median over BATCHES of (time of `reps` runs of body) / reps / n, in ns per element */
#define TIME(label, body) do { \
    double ts[BATCHES]; \
    for (int r = 0; r < BATCHES; r++) { \
        const double t0 = now(); \
        for (int k = 0; k < reps; k++) { body; } \
        ts[r] = (now() - t0) / reps / (double)n * 1e9; \
    } \
    qsort(ts, BATCHES, sizeof(double), cmpd); \
    if (ghz > 0) printf("%-16s %7.3f ns/el  %5.1f cycles/16\n", label, ts[BATCHES / 2], \
                        ts[BATCHES / 2] * ghz * 16); \
    else printf("%-16s %7.3f ns/el\n", label, ts[BATCHES / 2]); \
} while (0)

static uint16_t bf16_of(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return lrcore__bf16_nearest(u);
}

int main(int argc, char **argv)
{
    n = argc > 1 ? strtoul(argv[1], 0, 0) : 16384;
    reps = argc > 2 ? atoi(argv[2]) : 200;
    ghz = argc > 3 ? atof(argv[3]) : 0.0;
    float *p = aligned_alloc(64, n * 4), *g = aligned_alloc(64, n * 4);
    float *m = aligned_alloc(64, n * 4), *v = aligned_alloc(64, n * 4);
    uint16_t *pb = aligned_alloc(64, n * 2), *gb = aligned_alloc(64, n * 2);
    uint16_t *mb = aligned_alloc(64, n * 2), *vb = aligned_alloc(64, n * 2);
    srand(1);
    for (size_t i = 0; i < n; i++) {   /* non-zero random data, typical magnitudes */
        p[i] = rand() / (float)RAND_MAX - 0.5f;
        g[i] = (rand() / (float)RAND_MAX - 0.5f) * 1e-3f;
        m[i] = g[i] * 0.1f;
        v[i] = g[i] * g[i];
        pb[i] = bf16_of(p[i]); gb[i] = bf16_of(g[i]); mb[i] = bf16_of(m[i]); vb[i] = bf16_of(v[i]);
    }
    lrcore_lion_hp lh = lrcore_lion_defaults(1e-4, 1);
    lrcore_sgd_hp sh;
    memset(&sh, 0, sizeof sh);
    sh.lr = 1e-3; sh.momentum = 0.9; sh.grad_scale = 1.0;
    lrcore_adam_hp ah = lrcore_adam_defaults(1e-3, 1);
    ah.weight_decay = 1e-2; ah.decoupled_weight_decay = 1;
    lrcore_lowp lp = {LRCORE_ET_BF16, LRCORE_ET_BF16, LRCORE_ET_BF16, 0, 1, 1, 0};
    void *st1[3] = {mb, 0, 0}, *st2[3] = {mb, vb, 0};
    printf("n = %zu, one thread, %d calls per batch, median of %d batches\n", n, reps, BATCHES);
    TIME("lion f32", lrcore_lion_f32(n, p, g, m, &lh));
    lp.rounding = LRCORE_ROUND_NEAREST;
    TIME("lion bf16 rn", lrcore_lion_lowp(n, pb, gb, st1, &lh, &lp));
    lp.rounding = LRCORE_ROUND_STOCHASTIC;
    TIME("lion bf16 sr", (lp.step++, lrcore_lion_lowp(n, pb, gb, st1, &lh, &lp)));
    TIME("sgd f32", lrcore_sgd_f32(n, p, g, m, &sh));
    lp.rounding = LRCORE_ROUND_NEAREST;
    TIME("sgd bf16 rn", lrcore_sgd_lowp(n, pb, gb, st1, &sh, &lp));
    lp.rounding = LRCORE_ROUND_STOCHASTIC;
    TIME("sgd bf16 sr", (lp.step++, lrcore_sgd_lowp(n, pb, gb, st1, &sh, &lp)));
    TIME("adamw f32", (ah.step++, lrcore_adam_f32(n, p, g, m, v, NULL, &ah)));
    lp.rounding = LRCORE_ROUND_NEAREST;
    TIME("adamw bf16 rn", (ah.step++, lrcore_adam_lowp(n, pb, gb, st2, &ah, &lp)));
    lp.rounding = LRCORE_ROUND_STOCHASTIC;
    TIME("adamw bf16 sr", (ah.step++, lp.step++, lrcore_adam_lowp(n, pb, gb, st2, &ah, &lp)));
    free(p); free(g); free(m); free(v); free(pb); free(gb); free(mb); free(vb);
    return 0;
}
