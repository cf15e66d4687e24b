/*
 * pool.h -- lrcore's private thread pool (POSIX threads; no OpenMP).
 *
 * Design: one process-wide pool of worker threads, created on first use and grown on
 * demand up to lrcore_pool_max_threads(). A call hands the pool `ntasks` numbered tasks;
 * the caller and up to nthreads - 1 workers claim them one at a time from a shared
 * counter, so a worker that is slow to wake (asleep, or preempted by another runtime's
 * threads) never holds the call up: the caller runs the tasks nobody claimed. Which
 * thread runs which task never changes a result (callers make tasks independent).
 *
 * - Floating-point environment: each worker adopts the caller's (x86: the MXCSR
 *   control bits, i.e. FTZ, DAZ, rounding mode and exception masks; elsewhere fenv)
 *   before running the caller's tasks.
 * - Waiting: workers spin for LRCORE_POOL_SPIN_NS after their last task, then sleep on
 *   a condition variable; the caller spins at most as long for the last claimed task,
 *   then sleeps. Idle workers use no CPU, so they never starve another runtime.
 * - fork: a pthread_atfork handler leaves the child with an empty pool (the parent's
 *   workers do not exist there); the child's first threaded call starts new ones.
 * - Concurrency: one call at a time uses the workers; a call made while the pool is busy
 *   (another Python thread, GIL released) runs its tasks on its own thread instead.
 */
#ifndef LRCORE_POOL_H
#define LRCORE_POOL_H

#include <stddef.h>

/* Spin this long (nanoseconds) before sleeping, on both sides. */
#ifndef LRCORE_POOL_SPIN_NS
#define LRCORE_POOL_SPIN_NS 50000
#endif

typedef void (*lrcore_task_fn)(void *arg, size_t task);

/* Each extension that compiles pool.c gets its own pool: the symbols stay inside its .so,
 * whatever flags Python loads it with. */
#if defined(__GNUC__) || defined(__clang__)
#define LRCORE_POOL_API __attribute__((visibility("hidden")))
#else
#define LRCORE_POOL_API
#endif

/* Most threads a call may use (the caller included): 4 per online CPU, at least 8. */
LRCORE_POOL_API int lrcore_pool_max_threads(void);

/* Run fn(arg, t) for every t in [0, ntasks), on at most nthreads threads (the caller is one;
 * nthreads is clamped to [1, lrcore_pool_max_threads()]); returns when every task is done.
 * If the OS refuses to start a worker, the call runs on the threads the pool has. */
LRCORE_POOL_API void lrcore_pool_run(int nthreads, size_t ntasks, lrcore_task_fn fn, void *arg);

/* Workers currently alive in this process (0 in a forked child until its first call). */
LRCORE_POOL_API int lrcore_pool_workers(void);

/* Tasks run by workers (not callers) since the process started: lets tests check that a
 * worker really took part in a call. */
LRCORE_POOL_API unsigned long long lrcore_pool_worker_tasks(void);

#endif
