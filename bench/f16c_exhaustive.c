/*
 * f16c_exhaustive.c -- F16C's conversions against lrcore_lowp.h's float16 functions, on
 * every input: vcvtph2ps on all 65536 halves against lrcore__f16_widen (NaN payloads
 * included; a signalling NaN comes out quieted, which is counted and reported apart), and
 * vcvtps2ph with round-to-nearest-even on all 2^32 float32 bit patterns against
 * lrcore__f16_nearest. Exit status 0 when they agree (up to that quieting).
 *
 *   cc -O2 -std=gnu11 -mavx2 -mf16c -Isrc/lrcore/include bench/f16c_exhaustive.c \
 *      -o /tmp/f16c -lm && /tmp/f16c
 */
#include <stdio.h>
#include "lrcore_lowp.h"

int main(void)
{
#if !defined(__F16C__)
    puts("built without F16C (-mf16c)");
    return 2;
#else
    long widen_bad = 0, quieted = 0;
    for (uint32_t h = 0; h < 65536u; h++) {
        const uint32_t want = lrcore__f16_widen((uint16_t)h);
        const uint32_t got = lrcore__f32_bits(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((int)h))));
        const int snan = (h & 0x7C00u) == 0x7C00u && (h & 0x3FFu) && !(h & 0x200u);
        if (got == want) continue;
        if (snan && got == (want | 0x400000u)) quieted++;
        else if (widen_bad++ < 5) printf("widen %04x: %08x, want %08x\n", h, got, want);
    }
    long narrow_bad = 0;
    for (uint64_t u0 = 0; u0 < (1ull << 32); u0 += 8) {
        uint32_t in[8];
        uint16_t out[8];
        for (int k = 0; k < 8; k++) in[k] = (uint32_t)u0 + (uint32_t)k;
        __m256 x;
        memcpy(&x, in, 32);
        _mm_storeu_si128((__m128i *)out,
                         _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        for (int k = 0; k < 8; k++)
            if (out[k] != lrcore__f16_nearest(in[k]) && narrow_bad++ < 5)
                printf("narrow %08x: %04x, want %04x\n", in[k], out[k],
                       lrcore__f16_nearest(in[k]));
    }
    printf("vcvtph2ps: %ld of 65536 halves differ (and %ld signalling NaNs come out quieted)\n"
           "vcvtps2ph (nearest even): %ld of 2^32 floats differ\n", widen_bad, quieted,
           narrow_bad);
    return widen_bad || narrow_bad;
#endif
}
