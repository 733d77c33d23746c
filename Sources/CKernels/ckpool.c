#include "ckpool.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define PAUSE() _mm_pause()
#else
#define PAUSE() ((void)0)
#endif

static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER;   // one fork-join at a time
static pthread_mutex_t sleep_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
// Each hot atomic on its own cache line: the caller spinning on done_tasks must not steal
// the line a worker is claiming tickets on.
#define LINE _Alignas(64)
static LINE atomic_uint generation;
// (generation << 32) | next task index: a worker only takes a task of the run whose
// generation it has seen, so a late worker can never start a task of the next run.
static LINE _Atomic unsigned long long ticket;
static LINE atomic_int done_tasks;
static LINE atomic_int sleepers;
static atomic_int total_tasks;
static fk_task_fn task_fn;
static void *task_ctx;
static int task_scalar_only;          // the caller's fk_scalar_only, for the workers
static int task_no_vnni;              // and its fk_no_vnni
static int task_no_avx512;            // and its fk_no_avx512
static int task_no_bf16;              // and its fk_no_bf16
extern _Thread_local int fk_scalar_only;
extern _Thread_local int fk_no_vnni;
extern _Thread_local int fk_no_avx512;
extern _Thread_local int fk_no_bf16;
static int pool_threads = 1;
static atomic_int started;

static atomic_int stall;
void fk_pool_stall_for_tests(int on) { atomic_store(&stall, on); }
// 0 to 255 pauses, varying with the ticket.
static void stall_a_little(unsigned long long v) {
    unsigned long long h = (v + 0x9E3779B97F4A7C15ull) * 0xBF58476D1CE4E5B9ull;
    for (unsigned n = (unsigned)(h >> 56); n > 0; n--) PAUSE();
}

static void drain(unsigned gen) {
    for (;;) {
        unsigned long long v = atomic_load_explicit(&ticket, memory_order_acquire);
        if ((unsigned)(v >> 32) != gen) return;
        unsigned i = (unsigned)(v & 0xFFFFFFFFu);
        if (atomic_load_explicit(&stall, memory_order_relaxed)) stall_a_little(v);
        if (i >= (unsigned)atomic_load_explicit(&total_tasks, memory_order_relaxed)) return;
        if (!atomic_compare_exchange_weak_explicit(&ticket, &v, v + 1, memory_order_acq_rel, memory_order_acquire)) continue;
        fk_scalar_only = task_scalar_only;
        fk_no_vnni = task_no_vnni;
        fk_no_avx512 = task_no_avx512;
        fk_no_bf16 = task_no_bf16;
        task_fn(task_ctx, (int)i);
        atomic_fetch_add_explicit(&done_tasks, 1, memory_order_acq_rel);
    }
}

static void *worker(void *arg) {
    (void)arg;
    unsigned seen = atomic_load(&generation);
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&generation, memory_order_acquire) == seen) {
            if (++spins < 200000) { PAUSE(); continue; }
            pthread_mutex_lock(&sleep_lock);
            atomic_fetch_add(&sleepers, 1);
            while (atomic_load(&generation) == seen) pthread_cond_wait(&wake, &sleep_lock);
            atomic_fetch_sub(&sleepers, 1);
            pthread_mutex_unlock(&sleep_lock);
        }
        seen = atomic_load(&generation);
        drain(seen);
    }
    return 0;
}

void fk_pool_start(int threads) {
    int expected = 0;
    if (!atomic_compare_exchange_strong(&started, &expected, 1)) return;
    pool_threads = threads < 1 ? 1 : threads;
    for (int i = 1; i < pool_threads; i++) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_create(&t, &attr, worker, 0);
        pthread_attr_destroy(&attr);
    }
}

int fk_pool_threads(void) { return pool_threads; }

void fk_pool_run(int tasks, fk_task_fn fn, void *ctx) {
    if (tasks <= 0) return;
    if (pool_threads <= 1 || tasks == 1 || pthread_mutex_trylock(&run_lock) != 0) {
        for (int i = 0; i < tasks; i++) fn(ctx, i);
        return;
    }
    // Close the last run's ticket before touching the run's parameters. A worker that read
    // the last run's exhausted ticket (index == its task count) but has not yet compared it
    // with total_tasks would otherwise see the new, larger count, win its compare-and-swap
    // on the old ticket, and run a task of this run before it is published (with stale or
    // half-written parameters, its completion counted against this run: the caller could
    // return while a task still writes). The exchange reads the workers' last claims, so
    // their reads of total_tasks happen before the writes below; a claim on the closed
    // ticket fails (other generation, index past any count).
    unsigned gen = atomic_load(&generation) + 1;
    atomic_exchange_explicit(&ticket, ((unsigned long long)gen << 32) | 0xFFFFFFFFull, memory_order_acq_rel);
    task_fn = fn;
    task_ctx = ctx;
    task_scalar_only = fk_scalar_only;
    task_no_vnni = fk_no_vnni;
    task_no_avx512 = fk_no_avx512;
    task_no_bf16 = fk_no_bf16;
    atomic_store_explicit(&total_tasks, tasks, memory_order_relaxed);
    atomic_store(&done_tasks, 0);
    atomic_store_explicit(&ticket, (unsigned long long)gen << 32, memory_order_release);
    // Sequentially consistent, as is the sleepers check after it and the worker's increment
    // before its own check: a release store could still sit in the store buffer when the
    // check reads, and a worker going to sleep at that moment would miss the run's wake-up.
    atomic_store(&generation, gen);
    if (atomic_load(&sleepers) > 0) {
        pthread_mutex_lock(&sleep_lock);
        pthread_cond_broadcast(&wake);
        pthread_mutex_unlock(&sleep_lock);
    }
    drain(gen);
    while (atomic_load_explicit(&done_tasks, memory_order_acquire) < tasks) PAUSE();
    pthread_mutex_unlock(&run_lock);
}

enum { SCRATCH_SLOTS = 28 };
static _Thread_local void *scratch_ptr[SCRATCH_SLOTS];
static _Thread_local unsigned long scratch_len[SCRATCH_SLOTS];
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

// Frees a thread's scratch when the thread exits (the key's value marks the thread as
// holding scratch; the buffers themselves are the thread-local arrays above).
static void scratch_free(void *unused) {
    (void)unused;
    for (int i = 0; i < SCRATCH_SLOTS; i++) { free(scratch_ptr[i]); scratch_ptr[i] = 0; scratch_len[i] = 0; }
}
static void scratch_key_init(void) { pthread_key_create(&scratch_key, scratch_free); }

void *fk_thread_scratch(int slot, unsigned long bytes) {
    if (slot < 0 || slot >= SCRATCH_SLOTS) return 0;
    if (bytes == 0) bytes = 64;
    pthread_once(&scratch_once, scratch_key_init);
    if (pthread_getspecific(scratch_key) == 0) pthread_setspecific(scratch_key, (void *)1);
    if (scratch_len[slot] < bytes) {
        unsigned long grown = bytes + bytes / 4;
        grown = (grown + 63) & ~63ul;
        void *p = 0;
        if (posix_memalign(&p, 64, grown) != 0) return 0;
        free(scratch_ptr[slot]);
        scratch_ptr[slot] = p;
        scratch_len[slot] = grown;
    }
    return scratch_ptr[slot];
}

#if defined(__GLIBC__)
#include <malloc.h>
#endif
void fk_retain_freed_memory(long mmap_threshold, long trim_threshold) {
#if defined(__GLIBC__)
    mallopt(M_MMAP_THRESHOLD, (int)mmap_threshold);
    mallopt(M_TRIM_THRESHOLD, (int)trim_threshold);
#else
    (void)mmap_threshold; (void)trim_threshold;
#endif
}
