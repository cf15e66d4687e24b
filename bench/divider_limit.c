/*
 * divider_limit.c -- why one core cannot run Adam at the bandwidth probe's speed on
 * cache-resident buffers: the floating-point divider.
 *
 * Build and run (portable flags, as lrcore's AVX2 build):
 *   cc -O3 -std=gnu11 -ffp-contract=off -fno-math-errno -mavx2 -mfma \
 *      bench/divider_limit.c -o /tmp/divider_limit -lm && /tmp/divider_limit
 *
 * On 2^18 float32 elements (4 MiB in all: in cache) it times, one thread:
 *   probe      the read-modify-write probe with Adam's streams (no arithmetic)
 *   exact      Adam as lrcore and torch compute it: sqrt(v) / sqrt(bc2) + eps, then
 *              m / denom: one sqrt and two divisions per element, IEEE-exact
 *   fma-quot   Adam as lrcore's avx2/avx512 builds compute it: sqrt(v) / sqrt(bc2) by
 *              a multiply and two FMAs (lrcore_body.h, quot_c: the same bits as the
 *              division), then m / denom: one sqrt and one division on the divider
 *   one-div    sqrt(v) * (1 / sqrt(bc2)) + eps: one division fewer (NOT torch's
 *              rounding; shown only to measure what the divider costs)
 *   no-div     no sqrt or division at all (the rest of Adam's arithmetic)
 * The gap between no-div and exact is the divider's share: sqrt and division share one
 * unit per core, and 8 float32 lanes of either take several cycles.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

#define N (1u << 18)
#define ARGS size_t n, float *restrict p, const float *restrict g, float *restrict m, float *restrict v

__attribute__((noinline)) static void probe(ARGS) {
    for (size_t i = 0; i < n; i++) { float gi = g[i]; p[i] += gi; m[i] += gi; v[i] += gi; }
}
__attribute__((noinline)) static void exact(ARGS) {
    const float c = 0.3f, eps = 1e-8f, ss = -1e-3f, w = 0.1f, b2 = 0.999f, omb2 = 0.001f;
    for (size_t i = 0; i < n; i++) {
        float gi = g[i], mi = m[i] + w * (gi - m[i]), vi = v[i] * b2 + (omb2 * gi) * gi;
        m[i] = mi; v[i] = vi;
        p[i] = p[i] + ss * (mi / (sqrtf(vi) / c + eps));
    }
}
__attribute__((noinline)) static void fma_quot(ARGS) {
    const float c = 0.3f, y = 1.0f / 0.3f;
    const float eps = 1e-8f, ss = -1e-3f, w = 0.1f, b2 = 0.999f, omb2 = 0.001f;
    for (size_t i = 0; i < n; i++) {
        float gi = g[i], mi = m[i] + w * (gi - m[i]), vi = v[i] * b2 + (omb2 * gi) * gi;
        m[i] = mi; v[i] = vi;
        const float x = sqrtf(vi), q0 = x * y, r = fmaf(q0, c, -x), q = fmaf(-r, y, q0);
        uint32_t xb, qb;   /* x = +-0, +-inf, NaN: x (a select on bits: see lrcore_body.h) */
        memcpy(&xb, &x, 4);
        memcpy(&qb, &q, 4);
        const uint32_t k = 0u - (uint32_t)(((xb & 0x7fffffffu) - 1u) >= 0x7f7fffffu), db = (xb & k) | (qb & ~k);
        float d;
        memcpy(&d, &db, 4);
        p[i] = p[i] + ss * (mi / (d + eps));
    }
}
__attribute__((noinline)) static void one_div(ARGS) {
    const float r = 1.0f / 0.3f, eps = 1e-8f, ss = -1e-3f, w = 0.1f, b2 = 0.999f, omb2 = 0.001f;
    for (size_t i = 0; i < n; i++) {
        float gi = g[i], mi = m[i] + w * (gi - m[i]), vi = v[i] * b2 + (omb2 * gi) * gi;
        m[i] = mi; v[i] = vi;
        p[i] = p[i] + ss * (mi / (sqrtf(vi) * r + eps));
    }
}
__attribute__((noinline)) static void no_div(ARGS) {
    const float r = 1.0f / 0.3f, eps = 1e-8f, ss = -1e-3f, w = 0.1f, b2 = 0.999f, omb2 = 0.001f;
    for (size_t i = 0; i < n; i++) {
        float gi = g[i], mi = m[i] + w * (gi - m[i]), vi = v[i] * b2 + (omb2 * gi) * gi;
        m[i] = mi; v[i] = vi;
        p[i] = p[i] + ss * (mi * (vi * r + eps));
    }
}

typedef void (*fn_t)(ARGS);

int main(void) {
    float *p = aligned_alloc(64, 4 * N), *g = aligned_alloc(64, 4 * N);
    float *m = aligned_alloc(64, 4 * N), *v = aligned_alloc(64, 4 * N);
    for (size_t i = 0; i < N; i++) { p[i] = 1; g[i] = 0.01f * (float)(i % 7); m[i] = 0.1f; v[i] = 0.2f; }
    fn_t fns[5] = {probe, exact, fma_quot, one_div, no_div};
    const char *names[5] = {"probe", "exact", "fma-quot", "one-div", "no-div"};
    double t[5][301];
    for (int k = 0; k < 301; k++)
        for (int f = 0; f < 5; f++) { double t0 = now(); fns[f](N, p, g, m, v); t[f][k] = now() - t0; }
    for (int f = 0; f < 5; f++) {   /* median */
        for (int a = 0; a < 301; a++) for (int b = a + 1; b < 301; b++)
            if (t[f][b] < t[f][a]) { double x = t[f][a]; t[f][a] = t[f][b]; t[f][b] = x; }
        double gbps = 28.0 * N / t[f][150] / 1e9;
        printf("%-8s %7.1f GB/s  %5.2f of probe\n", names[f], gbps, t[0][150] / t[f][150]);
    }
    return 0;
}
