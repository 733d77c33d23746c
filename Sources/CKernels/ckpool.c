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
static atomic_uint generation;
static atomic_int next_task;
static atomic_int done_tasks;
static atomic_int sleepers;
static int total_tasks;
static fk_task_fn task_fn;
static void *task_ctx;
static int pool_threads = 1;
static atomic_int started;

static void drain(void) {
    for (;;) {
        int i = atomic_fetch_add(&next_task, 1);
        if (i >= total_tasks) break;
        task_fn(task_ctx, i);
        atomic_fetch_add(&done_tasks, 1);
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
        drain();
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
    task_fn = fn;
    task_ctx = ctx;
    total_tasks = tasks;
    atomic_store(&done_tasks, 0);
    atomic_store(&next_task, 0);
    atomic_fetch_add_explicit(&generation, 1, memory_order_release);
    if (atomic_load(&sleepers) > 0) {
        pthread_mutex_lock(&sleep_lock);
        pthread_cond_broadcast(&wake);
        pthread_mutex_unlock(&sleep_lock);
    }
    drain();
    while (atomic_load_explicit(&done_tasks, memory_order_acquire) < tasks) PAUSE();
    pthread_mutex_unlock(&run_lock);
}
