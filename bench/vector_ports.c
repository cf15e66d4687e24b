/*
 * vector_ports.c -- how many 512-bit instructions of each kind one core retires per cycle:
 * the figures behind the README's account of the 8-bit step and the bfloat16 loops ("Where
 * the time goes"), which are bound by the vector units and the divider, not by memory.
 *
 * Build and run (x86-64 with AVX-512; GCC or clang):
 *   cc -O2 -mavx512f -mavx512bw -mavx512dq -mavx512vbmi bench/vector_ports.c \
 *      -o /tmp/vector_ports && /tmp/vector_ports
 *
 * Each row runs 8 independent instructions of one kind (or of two kinds, 8 each) per loop
 * iteration, so that only throughput counts, and prints the time per instruction and the
 * cycles per instruction at the clock it measures with a loop of dependent integer adds
 * (one per cycle on every x86 core). Rows of two kinds show which share execution pipes:
 * if "a + b" takes as long as a and b one after the other, they share. The divider rows run
 * one instruction per iteration (each is long). Only timing: the registers hold zeros.
 */
#include <stdint.h>
#include <stdio.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

#define N 40000000L
#define CLOBBER "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7"
#define R8(x) x(0) x(1) x(2) x(3) x(4) x(5) x(6) x(7)
#define FMA(i) "vfmadd231ps %%zmm8, %%zmm9, %%zmm" #i "\n\t"
#define MUL(i) "vmulps %%zmm8, %%zmm9, %%zmm" #i "\n\t"
#define ADD(i) "vaddps %%zmm8, %%zmm9, %%zmm" #i "\n\t"
#define PERM(i) "vpermps %%zmm8, %%zmm9, %%zmm" #i "\n\t"
#define PERMT2D(i) "vpermt2d %%zmm8, %%zmm9, %%zmm" #i "\n\t"
#define PERMI2B(i) "vpermi2b %%zmm8, %%zmm9, %%zmm" #i "\n\t"
#define IADD(i) "vpaddd %%zmm8, %%zmm9, %%zmm" #i "\n\t"
#define TERN(i) "vpternlogd $0x96, %%zmm8, %%zmm9, %%zmm" #i "\n\t"
#define SHR(i) "vpsrld $3, %%zmm8, %%zmm" #i "\n\t"
#define MULLD(i) "vpmulld %%zmm8, %%zmm9, %%zmm" #i "\n\t"
#define MOVDB(i) "vpmovdb %%zmm8, %%xmm" #i "\n\t"
#define TEST(i) "vptestmd %%zmm8, %%zmm9, %%k1\n\t"
#define DIV "vdivps %%zmm8, %%zmm9, %%zmm0\n\t"
#define SQRT "vsqrtps %%zmm8, %%zmm1\n\t"

static double ghz;

static void row(const char *name, double seconds, long count)
{
    const double ns = seconds / (double)count * 1e9;
    printf("%-26s %6.3f ns  %5.2f cycles per instruction\n", name, ns, ns * ghz);
}

#define TIME(name, per, body) do { \
        const double t0 = now(); \
        for (long i = 0; i < N / (per); i++) asm volatile(body ::: CLOBBER, "k1"); \
        row(name, now() - t0, N); \
    } while (0)

int main(void)
{
    /* the clock: a chain of dependent adds retires one per cycle */
    {
        uint64_t x = 0;
        const double t0 = now();
        for (long i = 0; i < N / 8; i++)
            asm volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                         "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
        ghz = (double)N / ((now() - t0) * 1e9);
        printf("clock (dependent integer adds): %.2f GHz\n", ghz);
    }
    asm volatile("vpxord %%zmm8, %%zmm8, %%zmm8\n\tvpxord %%zmm9, %%zmm9, %%zmm9"
                 ::: "xmm8", "xmm9");
    TIME("vfmadd231ps", 8, R8(FMA));
    TIME("vmulps", 8, R8(MUL));
    TIME("vaddps", 8, R8(ADD));
    TIME("vpermps", 8, R8(PERM));
    TIME("vpermt2d", 8, R8(PERMT2D));
    TIME("vpermi2b", 8, R8(PERMI2B));
    TIME("vpmovdb", 8, R8(MOVDB));
    TIME("vpmulld", 8, R8(MULLD));
    TIME("vpsrld", 8, R8(SHR));
    TIME("vptestmd", 8, R8(TEST));
    TIME("vpaddd", 8, R8(IADD));
    TIME("vpternlogd", 8, R8(TERN));
    TIME("vfmadd231ps + vaddps", 16, R8(FMA) R8(ADD));
    TIME("vfmadd231ps + vpermps", 16, R8(FMA) R8(PERM));
    TIME("vaddps + vpsrld", 16, R8(ADD) R8(SHR));
    TIME("vfmadd231ps + vptestmd", 16, R8(FMA) R8(TEST));
    TIME("vpermps + vpaddd", 16, R8(PERM) R8(IADD));
    TIME("vdivps", 1, DIV);
    TIME("vsqrtps", 1, SQRT);
    TIME("vdivps + vsqrtps", 2, DIV SQRT);
    return 0;
}
