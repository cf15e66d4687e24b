/*
 * lion_limit.c -- why Lion, with no square root or division, still cannot reach the
 * bandwidth probe on buffers that fit in L1/L2: it is bound by its vector arithmetic.
 *
 * Build and run (portable flags, as lrcore's per-ISA builds; the kernel is lrcore.h's):
 *   cc -O3 -std=gnu11 -ffp-contract=off -fno-math-errno -mavx512f -mavx512vl -mavx512bw \
 *      -mavx512dq -I src/lrcore/include bench/lion_limit.c -o /tmp/lion_limit -lm && /tmp/lion_limit
 *   (or -mavx2 -mfma for the AVX2 build)
 *
 * One thread, float32, sizes from L1 to beyond L2. It times, per element:
 *   probe   Lion's streams with the probe's arithmetic (p += g*s; m += g*s): 3 loads,
 *           2 stores and 3 arithmetic vector ops per vector of elements
 *   lion    lrcore_lion_f32 (no weight decay, grad_scale 1): the same loads and stores,
 *           c = m*b1 + (1-b1)*g; p + sign update; m = m*b2 + (1-b2)*g, each product and
 *           sum rounded (no FMA), as the numpy twin
 * Counting: the probe's loop is 3 vector FP ops for 5 memory ops (3 loads, 2 stores); Lion's
 * semantics need at least 9 (2 mul + add for c, the same for the new exp_avg, a compare
 * and a select for sign, the add to param), gcc's AVX-512 loop had 13 (llvm-mca 14,
 * icelake-server model: 6.6 cycles per 16 elements against the probe's 2.4), 10 since
 * lion_update selects on one compare (islessgreater) and the loop subtracts
 * copysign(lr, c). On a core
 * with two vector FP pipes, data in L1 can arrive faster than Lion can compute on it, so
 * the fraction of the probe there is its arithmetic limit; from L2 outwards the memory
 * side slows down and the fraction rises towards 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "lrcore.h"

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

__attribute__((noinline)) static void probe(size_t n, float *restrict p, const float *restrict g,
                                            float *restrict m, float s) {
    for (size_t i = 0; i < n; i++) { float gi = g[i] * s; p[i] = p[i] + gi; m[i] = m[i] + gi; }
}

__attribute__((noinline)) static void lion(size_t n, float *p, const float *g, float *m,
                                           const lrcore_lion_hp *hp) {
    lrcore_lion_f32(n, p, g, m, hp);
}

int main(void) {
    const size_t max = (size_t)1 << 20;
    float *p = aligned_alloc(64, 4 * max), *g = aligned_alloc(64, 4 * max), *m = aligned_alloc(64, 4 * max);
    for (size_t i = 0; i < max; i++) { p[i] = 1.0f + i % 7; g[i] = 0.25f - (i % 5) * 0.1f; m[i] = 0.01f * (i % 3); }
    lrcore_lion_hp hp = lrcore_lion_defaults(1e-4, 1);
    printf("%-8s %10s %12s %12s %10s\n", "n", "KiB", "probe ns/el", "lion ns/el", "probe/lion");
    for (size_t n = (size_t)1 << 10; n <= max; n <<= 2) {
        const int reps = (int)(((size_t)1 << 27) / n);
        double best[2] = {1e9, 1e9};
        for (int r = 0; r < 7; r++) {
            double t0 = now();
            for (int k = 0; k < reps; k++) probe(n, p, g, m, 0.0f);
            double t1 = now();
            for (int k = 0; k < reps; k++) lion(n, p, g, m, &hp);
            double t2 = now();
            double t[2] = {t1 - t0, t2 - t1};
            for (int j = 0; j < 2; j++) if (t[j] < best[j]) best[j] = t[j];
        }
        double e = 1e9 / ((double)reps * n);
        printf("%-8zu %10zu %12.4f %12.4f %10.2f\n", n, 12 * n / 1024, best[0] * e, best[1] * e,
               best[0] / best[1]);
    }
    free(p); free(g); free(m);
    return 0;
}
