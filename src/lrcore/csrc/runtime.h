/*
 * runtime.h -- lrcore's private native runtime: instruction-set dispatch and
 * the threaded runner that applies a list of kernel jobs.
 *
 * Design: lrcore.h holds the kernels (header-only, public). kernels_isa.c
 * includes it once per instruction set (baseline, AVX2+FMA, AVX-512), each
 * build exporting its range and sum-of-squares functions. runtime.c picks the
 * best build the CPU supports (detected once, race-free), splits a list of jobs
 * (one job = one kernel call over one set of buffers) into per-thread ranges
 * whose boundaries fall on 64-byte aligned param addresses, and runs them on
 * lrcore's own thread pool (pool.c: POSIX threads, fork-safe, the caller's
 * floating-point environment on every worker). Every element is computed by the
 * same code whatever the split, so results are bitwise identical for any
 * thread count.
 */
#ifndef LRCORE_RUNTIME_H
#define LRCORE_RUNTIME_H

#include <stddef.h>
#include "lrcore.h"

/* Kinds, element types, ISA levels, lrcore_hp and lrcore_job: see jobs.h. */
#include "jobs.h"

/* Run elements [start, start + count) of one job. */
typedef void (*lrcore_range_fn)(const lrcore_job *job, size_t start, size_t count);

/* Sum of squares of grad over [start, start + count) of one job. */
typedef double (*lrcore_sumsq_fn)(const lrcore_job *job, size_t start, size_t count);

/* One of each per instruction-set build of kernels_isa.c. */
extern const lrcore_range_fn lrcore_range_baseline, lrcore_range_avx2, lrcore_range_avx512;
extern const lrcore_sumsq_fn lrcore_sumsq_baseline, lrcore_sumsq_avx2, lrcore_sumsq_avx512;

/* Best level this CPU and OS support and this build has (0 baseline, 1 AVX2+FMA,
 * 2 AVX-512); detected once (pthread_once), any thread may ask first. */
int lrcore_isa_supported(void);
/* Whether `level` can run here; no side effect. */
int lrcore_isa_available(int level);
/* The level in use (an atomic); lrcore_set_isa clamps to what is supported and compiled. */
int lrcore_isa_active(void);
int lrcore_set_isa(int level);
/* Always 1: the thread pool is part of every build (kept for callers that ask). */
int lrcore_has_threads(void);
/* Most threads a call may use: 4 per online CPU, at least 8 (pool.h). */
int lrcore_max_threads(void);

/* Threads a call over `param_bytes` bytes of param would use, given a request. */
int lrcore_plan_threads(size_t param_bytes, int requested, size_t min_bytes_per_thread);

/* Apply every job; jobs must not share memory. nthreads >= 1. */
void lrcore_run_jobs(const lrcore_job *jobs, size_t njobs, int nthreads);

/* Sum of squares of every job's grad, in double: fixed blocks whatever the thread
 * count, so the result is bitwise reproducible. Writes 1 to *all_finite when every
 * grad element is finite (checked element by element only if the sum is not). */
double lrcore_grad_sumsq(const lrcore_job *jobs, size_t njobs, int nthreads, int *all_finite);

#endif
