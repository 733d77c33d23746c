#ifndef FACET_CKPOOL_H
#define FACET_CKPOOL_H

/// A persistent fork-join pool: `threads - 1` workers that spin briefly, then sleep, waiting
/// for work. `fk_pool_run` runs task(ctx, i) for i in [0, tasks) across the workers and the
/// caller, and returns when all are done. Calls from several threads at once are safe: a
/// caller that finds the pool busy runs its tasks itself.
typedef void (*fk_task_fn)(void *ctx, int task);
void fk_pool_start(int threads);
int fk_pool_threads(void);
void fk_pool_run(int tasks, fk_task_fn fn, void *ctx);
/// For the pool's own tests: when on, a worker that has read a ticket stalls for a varying
/// few microseconds before it checks it, which widens the window a stale claim needs.
/// Results never change; runs only get slower.
void fk_pool_stall_for_tests(int on);

/// Per-thread, grow-only scratch memory: slot `slot` (0..23) of the calling thread, at
/// least `bytes` long, 64-byte aligned, contents unspecified. Reused by every later call on
/// that thread, so the step loop does not allocate once sizes have been seen. NULL only if
/// memory is exhausted.
void *fk_thread_scratch(int slot, unsigned long bytes);

/// glibc only: mallopt(M_MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD) (no-op elsewhere).
void fk_retain_freed_memory(long mmap_threshold, long trim_threshold);
#endif
