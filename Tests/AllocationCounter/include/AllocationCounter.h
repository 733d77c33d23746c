#ifndef FACET_ALLOCATION_COUNTER_H
#define FACET_ALLOCATION_COUNTER_H
/// Counts heap allocations (malloc, calloc, realloc, aligned allocations) made by the
/// calling thread between begin and end. The test process's allocation functions are
/// replaced by ones that forward to glibc's own (__libc_malloc and friends), so behaviour
/// is unchanged; only a thread that called begin is counted.
void facet_alloc_count_begin(void);
long facet_alloc_count_end(void);
#endif
