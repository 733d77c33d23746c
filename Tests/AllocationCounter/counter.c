// Replaces the process's allocation functions with ones that forward to glibc's own
// (__libc_malloc and friends, the same heap) and count the calls of threads that asked.
#include "AllocationCounter.h"
#include <errno.h>
#include <stddef.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static _Thread_local int counting;
static _Thread_local long count;

void facet_alloc_count_begin(void) { count = 0; counting = 1; }
long facet_alloc_count_end(void) { counting = 0; return count; }

void *malloc(size_t n) { if (counting) count++; return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { if (counting) count++; return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { if (counting) count++; return __libc_realloc(p, n); }
void *memalign(size_t align, size_t n) { if (counting) count++; return __libc_memalign(align, n); }
void *aligned_alloc(size_t align, size_t n) { if (counting) count++; return __libc_memalign(align, n); }
int posix_memalign(void **out, size_t align, size_t n) {
    if (counting) count++;
    if (align < sizeof(void *) || (align & (align - 1)) != 0) return EINVAL;
    void *p = __libc_memalign(align, n);
    if (!p && n) return ENOMEM;
    *out = p;
    return 0;
}
