/*
 * markstein_exhaustive.c -- checks lrcore's division-free quotient (lrcore_body.h,
 * lrcore__quot_c_f32: Adam's sqrt(v) / sqrt(1 - beta2**step)) against IEEE division.
 *
 * Build and run (the flags of lrcore's AVX-512 build, where the kernels use it; -fopenmp
 * only to use both cores):
 *   cc -O3 -std=gnu11 -ffp-contract=off -fno-math-errno -mavx512f -mavx512vl -mavx512bw \
 *      -mavx512dq -mavx2 -mfma -mprefer-vector-width=512 -fopenmp \
 *      -Isrc/lrcore/include bench/markstein_exhaustive.c -o /tmp/markstein -lm \
 *      && /tmp/markstein [number of random divisors, default 4096]
 *
 * Scaling x or c by a power of two scales every step of the sequence exactly (as long as
 * nothing under- or overflows, which the ranges exclude), so the significands decide. It
 * takes as divisors c: the range ends 2**-60 and 1 and their neighbours, 1 - 2**-24, the
 * c of Adam's first 100 000 steps for beta2 in {0.9, 0.95, 0.98, 0.99, 0.995, 0.999,
 * 0.9999} (distinct values only, a sample of them when there are more than the budget),
 * the significands in [1/2, 1) whose rounded reciprocal y is least accurate (largest
 * |c y - 1|: all 2**23 scanned), and random significands in [1/2, 1); for each c every float32 x in [1, 2) (2**23
 * values), and for some c every float32 x in [2**-75, 2**-72) and [2**62, 2**64] (the
 * ends of the square roots' range), plus 0, -0, inf, NaN and every 2**k. It prints the
 * count of x whose quotient differs from fl(x / c) in any bit: it must be 0.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lrcore.h"

#if !(defined(__AVX512F__) && defined(__FMA__))
#error "build with AVX-512 and FMA flags (see above): elsewhere lrcore's quotient is the division"
#endif

static uint32_t bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float fl(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* mismatches over x = fl(u) for u in [u0, u1) */
static unsigned long long check_range(float c, uint32_t u0, uint32_t u1)
{
    if (!lrcore__recip_ok_f32(c)) { fprintf(stderr, "c = %a outside the range\n", c); exit(2); }
    const float rc = 1.0f / c;
    unsigned long long bad = 0;
#pragma omp parallel for reduction(+ : bad) schedule(static)
    for (long long k = 0; k < (long long)(u1 - u0); k += 4096) {
        float xs[4096], q[4096], d[4096];
        const uint32_t n = (uint32_t)((long long)(u1 - u0) - k < 4096 ? (long long)(u1 - u0) - k : 4096);
        for (uint32_t j = 0; j < n; j++) xs[j] = fl(u0 + (uint32_t)k + j);
        for (uint32_t j = 0; j < n; j++) q[j] = lrcore__quot_c_f32(xs[j], c, rc);
        for (uint32_t j = 0; j < n; j++) d[j] = xs[j] / c;
        for (uint32_t j = 0; j < n; j++) bad += bits(q[j]) != bits(d[j]);
    }
    return bad;
}

static unsigned long long check(float c, int ends)
{
    unsigned long long bad = check_range(c, bits(1.0f), bits(2.0f));
    if (ends) {
        bad += check_range(c, bits(0x1p-75f), bits(0x1p-72f));
        bad += check_range(c, bits(0x1p62f), bits(0x1p64f) + 1u);
    }
    const float sp[] = {0.0f, -0.0f, INFINITY, NAN, -NAN, fl(0x7fc12345u)};
    const float rc = 1.0f / c;
    for (int j = 0; j < 6; j++)
        bad += bits(lrcore__quot_c_f32(sp[j], c, rc)) != bits(sp[j] / c);
    for (int e = -75; e <= 64; e++) {
        const float x = ldexpf(1.0f, e);
        bad += bits(lrcore__quot_c_f32(x, c, rc)) != bits(x / c);
    }
    return bad;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t next32(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (uint32_t)(rng >> 16); }

static int cmpf(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    const int nrand = argc > 1 ? atoi(argv[1]) : 4096;
    unsigned long long bad = 0, cs = 0;
    /* range ends and special divisors, with the range ends of x */
    const float ends[] = {0x1p-60f, nextafterf(0x1p-60f, 1.0f), 1.0f, nextafterf(1.0f, 0.0f),
                          0.5f, nextafterf(0.5f, 1.0f), 0.75f, 1.0f / 3.0f, 0x1p-27f};
    for (unsigned j = 0; j < sizeof ends / sizeof ends[0]; j++, cs++) bad += check(ends[j], 1);
    /* Adam's divisors: c = fl(sqrt(1 - beta2**step)), distinct, up to 2 * nrand of them */
    const double betas[] = {0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999};
    float *adam = malloc(sizeof(float) * 7 * 100000);
    size_t na = 0;
    for (int b = 0; b < 7; b++)
        for (int step = 1; step <= 100000; step++)
            adam[na++] = (float)sqrt(1.0 - pow(betas[b], (double)step));
    qsort(adam, na, sizeof(float), cmpf);
    size_t nd = 0;
    for (size_t j = 0; j < na; j++)
        if (nd == 0 || adam[j] != adam[nd - 1]) adam[nd++] = adam[j];
    const size_t budget = 2 * (size_t)nrand, stride = nd > budget ? nd / budget : 1;
    for (size_t j = 0; j < nd; j += stride, cs++) bad += check(adam[j], j % (64 * stride) == 0);
    printf("Adam's divisors: %zu distinct, %zu checked\n", nd, (nd + stride - 1) / stride);
    /* the least accurate reciprocals: the nrand / 4 largest |c y - 1| (exact, by FMA) */
    {
        const int top = nrand / 4 > 0 ? nrand / 4 : 1;
        float *best = calloc((size_t)top, sizeof(float)), *err = calloc((size_t)top, sizeof(float));
        for (uint32_t u = bits(0.5f); u < bits(1.0f); u++) {
            const float c = fl(u), e = fabsf(fmaf(c, 1.0f / c, -1.0f));
            if (e <= err[top - 1]) continue;
            int j = top - 1;
            for (; j > 0 && err[j - 1] < e; j--) { err[j] = err[j - 1]; best[j] = best[j - 1]; }
            err[j] = e; best[j] = c;
        }
        for (int j = 0; j < top; j++, cs++) bad += check(best[j], j % 16 == 0);
        printf("least accurate reciprocals: %d checked, |c y - 1| from %.3g down to %.3g\n",
               top, (double)err[0], (double)err[top - 1]);
        free(best); free(err);
    }
    /* random significands in [1/2, 1) */
    for (int j = 0; j < nrand; j++, cs++)
        bad += check(fl(bits(0.5f) | (next32() & 0x7fffffu)), j % 64 == 0);
    printf("%llu divisors, %llu quotients differing from x / c\n", cs, bad);
    return bad != 0;
}
