/*
 * runtime.c -- instruction-set dispatch and the threaded job runner.
 * See runtime.h for the design; the threads come from pool.c.
 */
#include "runtime.h"
#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#define LRCORE_X86 1
#else
const lrcore_range_fn lrcore_range_avx2 = 0;    /* not built on this architecture */
const lrcore_range_fn lrcore_range_avx512 = 0;
const lrcore_sumsq_fn lrcore_sumsq_avx2 = 0;
const lrcore_sumsq_fn lrcore_sumsq_avx512 = 0;
#endif

#define LRCORE_ALIGN 64   /* bytes: one cache line, one AVX-512 vector */

/* --- instruction set: detected once (pthread_once), the active level an atomic ---------- */

static pthread_once_t isa_once = PTHREAD_ONCE_INIT;
static int isa_best;                 /* written once, inside isa_once */
static atomic_int isa_level;         /* the level in use */

static lrcore_sumsq_fn sumsq_for(int level)
{
    if (level == LRCORE_ISA_AVX512) return lrcore_sumsq_avx512;
    if (level == LRCORE_ISA_AVX2) return lrcore_sumsq_avx2;
    return lrcore_sumsq_baseline;
}

static lrcore_range_fn fn_for(int level)
{
    if (level == LRCORE_ISA_AVX512) return lrcore_range_avx512;
    if (level == LRCORE_ISA_AVX2) return lrcore_range_avx2;
    return lrcore_range_baseline;
}

static int cpu_level(void)
{
#if defined(LRCORE_X86) && (defined(__GNUC__) || defined(__clang__))
    /* libgcc checks both CPUID and the OS-enabled register state (XGETBV). */
    __builtin_cpu_init();
    /* f16c: the avx2 and avx512 builds convert float16 with it (kernels_isa.c) */
    const int f16c = __builtin_cpu_supports("f16c") != 0;
    if (f16c && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
        return LRCORE_ISA_AVX512;
    if (f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return LRCORE_ISA_AVX2;
#endif
    return LRCORE_ISA_BASELINE;
}

static void isa_init(void)
{
    int level = cpu_level();
    while (level > 0 && fn_for(level) == 0) level--;   /* built for this architecture */
    isa_best = level;
    atomic_store(&isa_level, level);
}

int lrcore_isa_supported(void)
{
    pthread_once(&isa_once, isa_init);
    return isa_best;
}

int lrcore_isa_available(int level)
{
    return level >= 0 && level <= lrcore_isa_supported() && fn_for(level) != 0;
}

int lrcore_set_isa(int level)
{
    int best = lrcore_isa_supported();
    if (level < 0 || level > best) level = best;
    while (level > 0 && fn_for(level) == 0) level--;
    atomic_store(&isa_level, level);
    return level;
}

int lrcore_isa_active(void)
{
    pthread_once(&isa_once, isa_init);
    return atomic_load(&isa_level);
}

/* --- threads ---------------------------------------------------------------------------- */

int lrcore_has_threads(void)
{
    return 1;
}

int lrcore_max_threads(void)
{
    return lrcore_pool_max_threads();
}

int lrcore_plan_threads(size_t param_bytes, int requested, size_t min_bytes_per_thread)
{
    if (requested <= 1) return 1;
    int maxt = lrcore_pool_max_threads();
    if (requested > maxt) requested = maxt;
    if (min_bytes_per_thread == 0) return requested;
    size_t by_size = param_bytes / min_bytes_per_thread;
    if (by_size < 1) return 1;
    return by_size < (size_t)requested ? (int)by_size : requested;
}

static size_t elem_size(const lrcore_job *job)
{
    if (job->dtype == LRCORE_LOWP) return lrcore__et_size(job->lowp.param);
    return job->dtype == LRCORE_F32 ? sizeof(float) : sizeof(double);
}

/* Run [start, end) of one job: first up to the next aligned param address,
 * then the rest from there, so the vector loop's loads and stores are aligned
 * (numpy's large arrays start 16 bytes past a page). Same loop for both parts. */
static void run_aligned(lrcore_range_fn fn, const lrcore_job *job, size_t start, size_t end)
{
    if (end <= start) return;
    size_t es = elem_size(job);
    uintptr_t addr = (uintptr_t)(job->param + start * es);
    size_t mis = (size_t)(addr % LRCORE_ALIGN);
    size_t head = 0;
    if (mis != 0 && mis % es == 0) head = (LRCORE_ALIGN - mis) / es;
    if (head > end - start) head = end - start;
    fn(job, start, head);
    fn(job, start + head, end - start - head);
}

/* A position in the concatenation of all jobs. */
typedef struct { size_t job, off; } cut_t;

/* Round an offset inside a job up to the next aligned param address. */
static size_t align_up(const lrcore_job *job, size_t off)
{
    size_t es = elem_size(job);
    uintptr_t addr = (uintptr_t)(job->param + off * es);
    size_t mis = (size_t)(addr % LRCORE_ALIGN);
    if (mis != 0 && mis % es == 0) off += (LRCORE_ALIGN - mis) / es;
    return off < job->n ? off : job->n;
}

static void run_between(lrcore_range_fn fn, const lrcore_job *jobs, cut_t a, cut_t b)
{
    for (size_t j = a.job; j <= b.job; j++) {
        size_t s = j == a.job ? a.off : 0;
        size_t e = j == b.job ? b.off : jobs[j].n;
        run_aligned(fn, &jobs[j], s, e);
    }
}

typedef struct {
    lrcore_range_fn fn;
    const lrcore_job *jobs;
    const cut_t *cuts;
} run_task_t;

static void run_task(void *arg, size_t t)
{
    const run_task_t *rt = (const run_task_t *)arg;
    run_between(rt->fn, rt->jobs, rt->cuts[t], rt->cuts[t + 1]);
}

/* Tasks per call: LRCORE_TASKS_PER_THREAD per thread, so that when one thread is slow to
 * start or is preempted (another runtime's threads, another process), the others take its
 * share instead of waiting for it; any thread may run any task. A task holds at least
 * LRCORE_TASK_MIN_BYTES of param, and when a thread's share would exceed the kernels'
 * prefetch threshold (4 MiB per stream), at least LRCORE_TASK_MIN_PREFETCH_BYTES, so
 * splitting never turns prefetching off. At least one task per thread. */
#define LRCORE_TASKS_PER_THREAD 4
#define LRCORE_TASK_MIN_BYTES ((size_t)32 << 10)
#define LRCORE_TASK_MIN_PREFETCH_BYTES ((size_t)8 << 20)

static size_t tasks_for(size_t total_bytes, int nthreads)
{
    size_t nt = (size_t)nthreads;
    size_t min_bytes = total_bytes / nt > ((size_t)4 << 20) ? LRCORE_TASK_MIN_PREFETCH_BYTES
                                                             : LRCORE_TASK_MIN_BYTES;
    size_t by_size = total_bytes / min_bytes;
    size_t most = nt * LRCORE_TASKS_PER_THREAD;
    size_t n = by_size < most ? by_size : most;
    return n > nt ? n : nt;
}

void lrcore_run_jobs(const lrcore_job *jobs, size_t njobs, int nthreads)
{
    if (njobs == 0) return;
    lrcore_range_fn fn = fn_for(lrcore_isa_active());
    int maxt = lrcore_pool_max_threads();
    if (nthreads > maxt) nthreads = maxt;
    if (nthreads <= 1) {
        for (size_t j = 0; j < njobs; j++) run_aligned(fn, &jobs[j], 0, jobs[j].n);
        return;
    }
    size_t total = 0;
    for (size_t j = 0; j < njobs; j++) total += jobs[j].n * elem_size(&jobs[j]);
    size_t ntasks = tasks_for(total, nthreads);
    /* Split the bytes of param evenly; cut k falls at byte k*total/ntasks, rounded up to an
     * aligned param address. Task k runs [cut k, cut k+1): any thread may run any task. */
    cut_t stack_cuts[65];
    cut_t *cuts = ntasks < 65 ? stack_cuts : (cut_t *)malloc(sizeof(cut_t) * (ntasks + 1));
    if (!cuts) { for (size_t j = 0; j < njobs; j++) run_aligned(fn, &jobs[j], 0, jobs[j].n); return; }
    size_t j = 0, before = 0;   /* bytes in jobs[0..j) */
    cuts[0].job = 0; cuts[0].off = 0;
    for (size_t k = 1; k < ntasks; k++) {
        size_t target = (size_t)((double)total * (double)k / (double)ntasks);
        while (j + 1 < njobs && before + jobs[j].n * elem_size(&jobs[j]) <= target) {
            before += jobs[j].n * elem_size(&jobs[j]);
            j++;
        }
        size_t off = (target - before) / elem_size(&jobs[j]);
        if (off > jobs[j].n) off = jobs[j].n;
        off = align_up(&jobs[j], off);
        cuts[k].job = j; cuts[k].off = off;
        /* keep cuts monotone */
        if (cuts[k].job == cuts[k - 1].job && cuts[k].off < cuts[k - 1].off) cuts[k].off = cuts[k - 1].off;
    }
    cuts[ntasks].job = njobs - 1; cuts[ntasks].off = jobs[njobs - 1].n;
    run_task_t rt = { fn, jobs, cuts };
    lrcore_pool_run(nthreads, ntasks, run_task, &rt);
    if (cuts != stack_cuts) free(cuts);
}

#define LRCORE_SUMSQ_BLOCK ((size_t)1 << 14)

static int all_finite_job(const lrcore_job *job)
{
    if (job->dtype == LRCORE_F32) {
        const float *g = (const float *)job->grad;
        for (size_t i = 0; i < job->n; i++) if (!(g[i] - g[i] == 0.0f)) return 0;
    } else {
        const double *g = (const double *)job->grad;
        for (size_t i = 0; i < job->n; i++) if (!(g[i] - g[i] == 0.0)) return 0;
    }
    return 1;
}

typedef struct {
    lrcore_sumsq_fn fn;
    const lrcore_job *jobs;
    const size_t *job_of, *start_of;
    double *part;
    size_t nblocks, ntasks;
} sumsq_task_t;

/* Task t computes blocks [t*nblocks/ntasks, (t+1)*nblocks/ntasks). */
static void sumsq_task(void *arg, size_t t)
{
    const sumsq_task_t *st = (const sumsq_task_t *)arg;
    size_t lo = t * st->nblocks / st->ntasks, hi = (t + 1) * st->nblocks / st->ntasks;
    for (size_t k = lo; k < hi; k++) {
        const lrcore_job *job = &st->jobs[st->job_of[k]];
        size_t s = st->start_of[k];
        size_t c = job->n - s < LRCORE_SUMSQ_BLOCK ? job->n - s : LRCORE_SUMSQ_BLOCK;
        st->part[k] = st->fn(job, s, c);
    }
}

double lrcore_grad_sumsq(const lrcore_job *jobs, size_t njobs, int nthreads, int *all_finite)
{
    lrcore_sumsq_fn fn = sumsq_for(lrcore_isa_active());
    size_t nblocks = 0;
    for (size_t j = 0; j < njobs; j++) nblocks += (jobs[j].n + LRCORE_SUMSQ_BLOCK - 1) / LRCORE_SUMSQ_BLOCK;
    double total = 0.0;
    if (nblocks > 0) {
        double *part = (double *)malloc(sizeof(double) * nblocks);
        size_t *job_of = (size_t *)malloc(sizeof(size_t) * nblocks);
        size_t *start_of = (size_t *)malloc(sizeof(size_t) * nblocks);
        if (!part || !job_of || !start_of) {
            free(part); free(job_of); free(start_of);
            for (size_t j = 0; j < njobs; j++) total += fn(&jobs[j], 0, jobs[j].n);
        } else {
            size_t b = 0;
            for (size_t j = 0; j < njobs; j++)
                for (size_t s = 0; s < jobs[j].n; s += LRCORE_SUMSQ_BLOCK) { job_of[b] = j; start_of[b] = s; b++; }
            size_t ntasks = nthreads < 1 ? 1 : (size_t)nthreads * LRCORE_TASKS_PER_THREAD;
            if (ntasks > nblocks) ntasks = nblocks;
            sumsq_task_t st = { fn, jobs, job_of, start_of, part, nblocks, ntasks };
            lrcore_pool_run(nthreads, ntasks, sumsq_task, &st);
            /* fixed blocks summed in a fixed order: the same total for every thread count */
            for (size_t k = 0; k < nblocks; k++) total += part[k];
            free(part); free(job_of); free(start_of);
        }
    }
    if (all_finite) {
        *all_finite = 1;
        if (!(total - total == 0.0))   /* inf or nan: find out whether an element is */
            for (size_t j = 0; j < njobs && *all_finite; j++) *all_finite = all_finite_job(&jobs[j]);
    }
    return total;
}
