/*
 * pool.c -- lrcore's private thread pool. See pool.h for the design.
 *
 * The job in flight is published through one 64-bit word, `ticket`:
 *   bits 63..32  generation (one per call that uses the workers),
 *   bits 31..16  number of tasks of that call,
 *   bits 15..0   next task to claim.
 * A thread claims task i by a compare-and-swap of (gen, n, i) to (gen, n, i + 1), so a
 * worker holding a stale view of an earlier call can never claim a task of a later one;
 * once it holds a claim, the call cannot finish before its task does, so the job's
 * function, argument and floating-point environment stay valid while it reads them.
 * The caller waits for `done` to reach the number of tasks, never for a worker to wake.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE   /* pthread_setname_np */
#endif
#include "pool.h"

#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LRCORE_POOL_X86 1
#define cpu_relax() _mm_pause()
#else
#include <fenv.h>
#define cpu_relax() ((void)0)
#endif

#define MAX_TASKS 0xFFFFu
#define GEN(t) ((uint32_t)((t) >> 32))
#define NTASKS(t) ((uint32_t)(((t) >> 16) & 0xFFFFu))
#define NEXT(t) ((uint32_t)((t) & 0xFFFFu))

/* --- floating-point environment of the caller ----------------------------------------- */

typedef struct {
#ifdef LRCORE_POOL_X86
    unsigned int mxcsr;   /* control bits only: FTZ, DAZ, rounding, exception masks */
#else
    fenv_t env;
#endif
} fp_env;

static void fp_env_get(fp_env *e)
{
#ifdef LRCORE_POOL_X86
    e->mxcsr = _mm_getcsr() & ~0x3Fu;   /* not the caller's sticky exception flags */
#else
    fegetenv(&e->env);
#endif
}

static void fp_env_set(const fp_env *e)
{
#ifdef LRCORE_POOL_X86
    _mm_setcsr(e->mxcsr);
#else
    fesetenv(&e->env);
#endif
}

/* --- state ----------------------------------------------------------------------------- */

static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER;   /* the call using the workers */
static pthread_mutex_t sleep_lock = PTHREAD_MUTEX_INITIALIZER; /* guards the two waits */
static pthread_cond_t work_cv = PTHREAD_COND_INITIALIZER;      /* idle workers sleep here */
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;      /* the caller sleeps here */

static int nworkers;                    /* started in this process; guarded by run_lock */
static atomic_int alive;                /* same, readable without the lock */
static _Atomic uint64_t ticket;
static atomic_size_t done;              /* tasks of the current call finished */
static atomic_int helpers;              /* workers 0 .. helpers-1 take part in this call */
static atomic_int sleepers;             /* workers waiting (or about to) on work_cv */
static atomic_int caller_sleeping;
static atomic_ullong worker_tasks;

/* The current call; written by the caller before it publishes the ticket. */
static lrcore_task_fn job_fn;
static void *job_arg;
static fp_env job_env;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int max_threads = 8;

/* --- helpers --------------------------------------------------------------------------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Claim and run tasks of generation `gen` until none is left; returns tasks run. */
static size_t run_tasks(uint32_t gen, int is_worker)
{
    size_t ran = 0;
    uint64_t t = atomic_load(&ticket);
    for (;;) {
        if (GEN(t) != gen || NEXT(t) >= NTASKS(t)) return ran;
        if (!atomic_compare_exchange_weak(&ticket, &t, t + 1)) continue;  /* t reloaded */
        if (is_worker && ran == 0) fp_env_set(&job_env);
        job_fn(job_arg, NEXT(t));
        ran++;
        size_t n = NTASKS(t);
        if (atomic_fetch_add(&done, 1) + 1 == n && atomic_load(&caller_sleeping)) {
            pthread_mutex_lock(&sleep_lock);
            pthread_cond_signal(&done_cv);
            pthread_mutex_unlock(&sleep_lock);
        }
        t = atomic_load(&ticket);
    }
}

static void *worker_main(void *arg)
{
    int id = (int)(intptr_t)arg;
    /* Treat the generation current at start as new: if that call is still running, help. */
    uint32_t seen = GEN(atomic_load(&ticket)) - 1u;
    int spin = 1;
    for (;;) {
        uint64_t t = atomic_load(&ticket);
        if (GEN(t) == seen && spin) {
            uint64_t until = now_ns() + LRCORE_POOL_SPIN_NS;
            for (unsigned k = 1; GEN(t) == seen; k++) {
                cpu_relax();
                if ((k & 63) == 0 && now_ns() > until) break;
                t = atomic_load(&ticket);
            }
        }
        if (GEN(t) == seen) {
            pthread_mutex_lock(&sleep_lock);
            atomic_fetch_add(&sleepers, 1);
            while (GEN(t = atomic_load(&ticket)) == seen)
                pthread_cond_wait(&work_cv, &sleep_lock);
            atomic_fetch_sub(&sleepers, 1);
            pthread_mutex_unlock(&sleep_lock);
        }
        seen = GEN(t);
        /* A worker this call does not need goes straight back to sleep, without spinning. */
        spin = id < atomic_load(&helpers);
        if (spin) atomic_fetch_add_explicit(&worker_tasks, run_tasks(seen, 1), memory_order_relaxed);
    }
    return NULL;
}

static void atfork_prepare(void)
{
    pthread_mutex_lock(&run_lock);     /* waits for a call in flight to finish */
    pthread_mutex_lock(&sleep_lock);
}

static void atfork_parent(void)
{
    pthread_mutex_unlock(&sleep_lock);
    pthread_mutex_unlock(&run_lock);
}

static void atfork_child(void)
{
    /* Only the forking thread exists here: forget the parent's workers and their waits. */
    nworkers = 0;
    atomic_store(&alive, 0);
    atomic_store(&sleepers, 0);
    atomic_store(&caller_sleeping, 0);
    atomic_store(&helpers, 0);
    pthread_cond_init(&work_cv, NULL);
    pthread_cond_init(&done_cv, NULL);
    pthread_mutex_unlock(&sleep_lock);
    pthread_mutex_unlock(&run_lock);
}

static void init_once(void)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpu < 1) ncpu = 1;
    max_threads = ncpu > 1024 ? 4096 : (int)(4 * ncpu);
    if (max_threads < 8) max_threads = 8;
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* Start workers until there are `want` (run_lock held). Stops at the first refusal. */
static void grow(int want)
{
    pthread_attr_t attr;
    sigset_t all, old;
    if (pthread_attr_init(&attr) != 0) return;
    size_t stack = (size_t)1 << 20;
#ifdef PTHREAD_STACK_MIN
    if (stack < (size_t)PTHREAD_STACK_MIN) stack = (size_t)PTHREAD_STACK_MIN;
#endif
    pthread_attr_setstacksize(&attr, stack);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    /* Workers block every signal: Python's handlers belong to the main thread. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    while (nworkers < want) {
        pthread_t th;
        if (pthread_create(&th, &attr, worker_main, (void *)(intptr_t)nworkers) != 0) break;
#if defined(__linux__)
        char name[16];
        snprintf(name, sizeof name, "lrcore-%d", nworkers);
        pthread_setname_np(th, name);
#endif
        nworkers++;
        atomic_store(&alive, nworkers);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
}

/* --- API ------------------------------------------------------------------------------- */

int lrcore_pool_max_threads(void)
{
    pthread_once(&once, init_once);
    return max_threads;
}

int lrcore_pool_workers(void)
{
    return atomic_load(&alive);
}

unsigned long long lrcore_pool_worker_tasks(void)
{
    return atomic_load_explicit(&worker_tasks, memory_order_relaxed);
}

void lrcore_pool_run(int nthreads, size_t ntasks, lrcore_task_fn fn, void *arg)
{
    if (ntasks == 0) return;
    int maxt = lrcore_pool_max_threads();
    if (nthreads > maxt) nthreads = maxt;
    if ((size_t)nthreads > ntasks) nthreads = (int)ntasks;
    /* One thread, too many tasks for the ticket, or the pool busy with another call:
     * run everything here (same results: tasks are independent of the thread). */
    if (nthreads <= 1 || ntasks > MAX_TASKS || pthread_mutex_trylock(&run_lock) != 0) {
        for (size_t i = 0; i < ntasks; i++) fn(arg, i);
        return;
    }
    if (nworkers < nthreads - 1) grow(nthreads - 1);
    int nh = nworkers < nthreads - 1 ? nworkers : nthreads - 1;
    if (nh == 0) {
        pthread_mutex_unlock(&run_lock);
        for (size_t i = 0; i < ntasks; i++) fn(arg, i);
        return;
    }
    job_fn = fn;
    job_arg = arg;
    fp_env_get(&job_env);
    atomic_store(&done, 0);
    atomic_store(&helpers, nh);
    uint32_t gen = GEN(atomic_load(&ticket)) + 1u;
    atomic_store(&ticket, ((uint64_t)gen << 32) | ((uint64_t)ntasks << 16));
    if (atomic_load(&sleepers) > 0) {
        pthread_mutex_lock(&sleep_lock);
        pthread_cond_broadcast(&work_cv);
        pthread_mutex_unlock(&sleep_lock);
    }
    run_tasks(gen, 0);
    /* Every task is claimed; wait for the ones workers are still running. */
    if (atomic_load(&done) < ntasks) {
        uint64_t until = now_ns() + LRCORE_POOL_SPIN_NS;
        for (unsigned k = 1; atomic_load(&done) < ntasks; k++) {
            cpu_relax();
            if ((k & 63) == 0 && now_ns() > until) break;
        }
        if (atomic_load(&done) < ntasks) {
            pthread_mutex_lock(&sleep_lock);
            atomic_store(&caller_sleeping, 1);
            while (atomic_load(&done) < ntasks) pthread_cond_wait(&done_cv, &sleep_lock);
            atomic_store(&caller_sleeping, 0);
            pthread_mutex_unlock(&sleep_lock);
        }
    }
    pthread_mutex_unlock(&run_lock);
}
