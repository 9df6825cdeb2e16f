/* soakd._profiler: a sampled allocation profiler for CPython (PEP 445 hooks).
 *
 * What it does
 *   A Poisson process over allocated bytes picks allocations (one every `interval` bytes on
 *   average, like tcmalloc, Go's MemProfileRate or Datadog's memalloc). Only a picked block
 *   gets a stack; its free is tracked; the live bytes per stack are estimated without bias
 *   (Horvitz-Thompson), with their variance.
 *
 * Why no lock
 *   Only PYMEM_DOMAIN_MEM and PYMEM_DOMAIN_OBJ are hooked. CPython calls both with the GIL
 *   held (PEP 445; RAW is called without it and is left alone), so every hook runs serialized
 *   by the GIL, as do the module functions below. The state is one static struct. A
 *   free-threaded build has no such guarantee: there start() refuses.
 *
 * Hot path
 *   malloc/calloc/realloc: call the previous allocator, subtract the size from a byte
 *   countdown, return if it is still positive. free: if any sampled block is live, one bit of a
 *   small bitmap of hashed sampled pointers; only when it is set, one probe of an
 *   open-addressing table of the sampled pointers.
 *   Everything else is the rare "sample" path.
 *
 * Re-entrancy
 *   On 3.11 a stack is read from the interpreter's frames (no allocation). Elsewhere capturing
 *   uses the public frame API, which materializes frame objects (it allocates). While it runs the countdown is parked at a huge value, so nested allocations
 *   pass straight through unsampled, and the cyclic GC is disabled: 3.11 may collect inside an
 *   object allocation, and a collection (finalizers, arbitrary code) must never run inside
 *   our hook. The tracker's own tables use libc malloc, never the hooked domains.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
/* 3.11: read the interpreter's frames directly (what tracemalloc itself does). The public API
 * materializes a frame object per frame (an allocation inside our allocator hook, with new and
 * dropped references), which costs most of a sample's time on coroutines created per request
 * and is the reentrancy that made other profilers crash. Borrowed pointers only, no
 * allocation. Other versions keep the public API. */
#define SOAKD_DIRECT_FRAMES 1
#include <internal/pycore_frame.h>
#endif

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_FRAMES 128
#define MIN_BLOCK_CAP 1024
#define MIN_STACK_CAP 256
#define FILTER_BITS 32 /* per block table slot */
/* Where the countdown parks while nothing may be sampled: never reaches zero in practice. */
#define PARKED (INT64_MAX / 2)

#if defined(__GNUC__)
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define LIKELY(x) (x)
#define UNLIKELY(x) (x)
#endif

/* ---- data ----------------------------------------------------------------------------- */

typedef struct {
    PyCodeObject *code; /* strong reference while the stack is interned */
    /* With direct frames: the byte offset of the instruction, turned into a line number only
     * when a snapshot first shows the stack (decoding the line table per frame per sample
     * cost more than the rest of the sample). Otherwise the line number. */
    int lineno;
} FrameKey;

typedef struct {
    uint64_t hash;
    Py_ssize_t live;        /* live sampled blocks */
    /* Of those, sampled at an interval coarser than the current one: after a zoom, the live
     * mass they stand for is known only to that coarse grain (see set_interval). */
    Py_ssize_t coarse_live;
    double est_bytes;       /* sum of w = s/p over live sampled blocks */
    double est_blocks;      /* sum of 1/p */
    double variance;        /* sum of s*s*(1-p)/(p*p) */
    /* Cumulative Horvitz-Thompson variance terms, s^2 (1-p) / p^2 = w^2 (1-p), of the sampled
     * allocations and frees: w^2 for small blocks, near 0 for blocks sampled almost surely
     * (a large buffer reallocated is no noise). */
    double alloc_w2;
    double free_w2;
    PyObject *frames_tuple; /* cached ((filename, lineno), ...), built by snapshot() */
    const char *label;      /* filename for a stack with no frames */
    int nframes;
    FrameKey frames[];
} Stack;

/* A block's size, with the index of the interval it was sampled at in the top byte: its
 * weights at free time must be the ones it was added with, across set_interval(). */
typedef struct {
    size_t size;
    Stack *stack;
} BlockInfo;

#define EPOCH_SHIFT 56
#define SIZE_MASK ((((size_t)1) << EPOCH_SHIFT) - 1)
#define MAX_EPOCHS 256

typedef struct {
    PyMemAllocatorEx prev; /* the allocator we chain to */
    PyMemAllocatorEx ours;
    PyMemAllocatorDomain domain;
    int hooked; /* we set ours on this domain and have not restored prev since */
} Hook;

/* The filter while there is no block table: one word, never a bit set, so that a free asks
 * one question whatever the state (no test for a table or a live block first). */
static uint64_t no_filter[1];

static struct {
    int64_t remaining; /* bytes left before the next sample: THE hot-path variable */
    int enabled;
    int busy;    /* inside the sample path or a module function that walks the tables */
    int probing; /* set by is_chained(): any hook call proves we are in the chain */
    int probe_hit;

    double interval;
    double intervals[MAX_EPOCHS]; /* every interval of this profile, by epoch */
    int n_intervals;
    size_t epoch; /* index of `interval` in `intervals` */
    int frames;
    Py_ssize_t max_blocks;
    Py_ssize_t max_stacks;
    uint64_t rng;

    /* live sampled blocks: pointer -> (size, stack); linear probing, backward-shift delete */
    uintptr_t *keys; /* 0 = empty slot */
    BlockInfo *infos;
    size_t block_cap; /* power of two */
    Py_ssize_t live_blocks;
    /* Every free asks "is this a sampled block?" and the answer is almost always no. A bitmap
     * of FILTER_BITS bits per slot (at most 1 in 64 bits set, as the table is at most half
     * full; half the keys' bytes) answers most of those from cache; only a set bit probes. */
    uint64_t *filter;
    size_t filter_mask; /* bits in filter - 1 */

    /* interned stacks: linear probing on Stack.hash, deleted only from Python */
    Stack **stacks;
    size_t stack_cap;
    Py_ssize_t nstacks;
    size_t stack_bytes; /* malloc'd Stack structs */

    uint64_t sampled;
    uint64_t frees_seen;
    uint64_t dropped;
    double dropped_w;
    uint64_t overflow_samples;
} S = {.filter = no_filter, .filter_mask = 63};

static Hook hook_mem, hook_obj;
static Stack overflow_stack; /* where samples go when the stack table is full */

/* ---- random countdown ------------------------------------------------------------------ */

static uint64_t
splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Exponential with mean `interval`: the gap to the next sampled byte of a Poisson process. */
static int64_t
draw_countdown(void)
{
    double u = ((double)(splitmix64(&S.rng) >> 11) + 1.0) * 0x1.0p-53; /* (0, 1] */
    double gap = -log(u) * S.interval;
    if (gap < 1.0)
        return 1;
    if (gap > (double)(PARKED / 2))
        return PARKED / 2;
    return (int64_t)gap;
}

static uint64_t
default_seed(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t seed = ((uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec);
    seed ^= (uint64_t)getpid() << 32;
    seed ^= (uint64_t)(uintptr_t)&seed; /* ASLR: two processes started together still differ */
    return seed;
}

/* ---- Horvitz-Thompson weights ----------------------------------------------------------- */

/* A block of s bytes is sampled with p = 1 - exp(-s/interval): it stands for s/p bytes and
 * 1/p blocks. Recomputed at free time from the size, so the table stores only the size. */
static void
block_weights(size_t size, double interval, double *w, double *inv_p, double *var)
{
    double s = (double)size;
    double p = s > 0 ? -expm1(-s / interval) : 0.0;
    if (p <= 0.0) { /* zero-byte block: counts as one block, no bytes */
        *w = 0.0;
        *inv_p = 1.0;
        *var = 0.0;
        return;
    }
    *w = s / p;
    *inv_p = 1.0 / p;
    *var = s * s * (1.0 - p) / (p * p);
}

/* ---- block table ------------------------------------------------------------------------- */

/* Fibonacci hashing; blocks are 16-byte aligned, the multiply mixes the high bits down. */
static inline size_t
ptr_hash(uintptr_t key)
{
    return (size_t)(((uint64_t)key * 0x9E3779B97F4A7C15ULL) >> 32);
}

static inline size_t
ptr_slot(uintptr_t key, size_t cap)
{
    return ptr_hash(key) & (cap - 1);
}

/* The filter's bit: the slot with five more bits of the same hash (block_cap <= 2**27: 32
 * bits in all), so that keys sharing a bit share a home slot. */
static inline size_t
filter_bit(uintptr_t key)
{
    return ptr_hash(key) & S.filter_mask;
}

static inline void
filter_set(uintptr_t key)
{
    size_t b = filter_bit(key);
    S.filter[b >> 6] |= (uint64_t)1 << (b & 63);
}

static inline int
filter_may_hold(uintptr_t key)
{
    size_t b = filter_bit(key);
    return (S.filter[b >> 6] >> (b & 63)) & 1;
}

/* After `key` left the table: clear its bit unless another live key shares it. Such a key has
 * the same home slot (the bit's low bits are the slot), so it lies in the run of occupied slots
 * from there: a short walk, and the bitmap never holds a stale bit. Stale bits would gather
 * exactly where they cost most: pymalloc hands a freed address straight out again. */
static void
filter_forget(uintptr_t key)
{
    size_t b = filter_bit(key);
    size_t mask = S.block_cap - 1;
    for (size_t j = b & mask; S.keys[j] != 0; j = (j + 1) & mask) {
        if (filter_bit(S.keys[j]) == b)
            return;
    }
    S.filter[b >> 6] &= ~((uint64_t)1 << (b & 63));
}

static int
block_table_alloc(size_t cap)
{
    uintptr_t *keys = calloc(cap, sizeof(uintptr_t));
    BlockInfo *infos = malloc(cap * sizeof(BlockInfo));
    uint64_t *filter = calloc(cap * FILTER_BITS / 64, sizeof(uint64_t));
    if (keys == NULL || infos == NULL || filter == NULL) {
        free(keys);
        free(infos);
        free(filter);
        return -1;
    }
    S.keys = keys;
    S.infos = infos;
    S.filter = filter;
    S.filter_mask = cap * FILTER_BITS - 1;
    S.block_cap = cap;
    return 0;
}

static void
block_put(uintptr_t key, size_t size, Stack *stack)
{
    size_t mask = S.block_cap - 1;
    size_t i = ptr_slot(key, S.block_cap);
    while (S.keys[i] != 0 && S.keys[i] != key)
        i = (i + 1) & mask;
    if (S.keys[i] == 0)
        S.live_blocks++;
    S.keys[i] = key;
    filter_set(key);
    S.infos[i].size = size;
    S.infos[i].stack = stack;
}

/* Doubles the table (called from the sample path: libc malloc, never the hooked domains). */
static int
block_table_grow(void)
{
    uintptr_t *old_keys = S.keys;
    BlockInfo *old_infos = S.infos;
    uint64_t *old_filter = S.filter;
    size_t old_cap = S.block_cap;
    if (block_table_alloc(old_cap * 2) < 0)
        return -1;
    S.live_blocks = 0;
    for (size_t i = 0; i < old_cap; i++) {
        if (old_keys[i] != 0)
            block_put(old_keys[i], old_infos[i].size, old_infos[i].stack);
    }
    free(old_keys);
    free(old_infos);
    if (old_filter != no_filter)
        free(old_filter);
    return 0;
}

/* Backward-shift deletion keeps probe chains intact without tombstones: O(1) expected. */
static void
block_delete_slot(size_t i)
{
    size_t mask = S.block_cap - 1;
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (S.keys[j] == 0)
            break;
        size_t home = ptr_slot(S.keys[j], S.block_cap);
        /* Move j into the hole i unless its home lies cyclically in (i, j]. */
        int stays = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (!stays) {
            S.keys[i] = S.keys[j];
            S.infos[i] = S.infos[j];
            i = j;
        }
    }
    S.keys[i] = 0;
    S.live_blocks--;
}

static void
stack_remove_block(Stack *st, size_t packed)
{
    double w, inv_p, var;
    double interval = S.intervals[packed >> EPOCH_SHIFT];
    block_weights(packed & SIZE_MASK, interval, &w, &inv_p, &var);
    st->live--;
    if (interval > S.interval)
        st->coarse_live--;
    st->free_w2 += var;
    if (st->live == 0) { /* exact zero: no floating-point residue from add/subtract */
        st->est_bytes = st->est_blocks = st->variance = 0.0;
    }
    else {
        st->est_bytes -= w;
        st->est_blocks -= inv_p;
        st->variance -= var;
    }
}

/* Is this block, freed or reallocated, perhaps a sampled one? One bit answers "no" for almost
 * every call (NULL too: a set bit only sends it to untrack(), which finds no key 0). */
static inline int
may_be_sampled(void *ptr)
{
    return filter_may_hold((uintptr_t)ptr);
}

/* A block whose bit is set: is it a live sampled block? Then account its end. Out of line: the
 * hooks' common path stays short. */
static void
#if defined(__GNUC__)
    __attribute__((noinline))
#endif
    untrack(uintptr_t key)
{
    size_t mask = S.block_cap - 1;
    size_t i = ptr_slot(key, S.block_cap);
    for (;;) {
        uintptr_t k = S.keys[i];
        if (LIKELY(k == 0))
            return;
        if (k == key)
            break;
        i = (i + 1) & mask;
    }
    Stack *st = S.infos[i].stack;
    size_t size = S.infos[i].size;
    block_delete_slot(i);
    stack_remove_block(st, size);
    S.frees_seen++;
    filter_forget(key);
}

/* ---- stack table ------------------------------------------------------------------------- */

static uint64_t
frames_hash(const FrameKey *frames, int n)
{
    uint64_t h = 0x84222325CBF29CE4ULL ^ (uint64_t)n;
    for (int i = 0; i < n; i++) {
        h ^= (uint64_t)(uintptr_t)frames[i].code;
        h *= 0x100000001B3ULL;
        h ^= (uint64_t)(uint32_t)frames[i].lineno;
        h *= 0x100000001B3ULL;
    }
    return h ^ (h >> 29);
}

static int
stack_matches(const Stack *st, uint64_t hash, const FrameKey *frames, int n)
{
    if (st->hash != hash || st->nframes != n)
        return 0;
    for (int i = 0; i < n; i++) {
        if (st->frames[i].code != frames[i].code || st->frames[i].lineno != frames[i].lineno)
            return 0;
    }
    return 1;
}

static void
stack_slot_put(Stack *st)
{
    size_t mask = S.stack_cap - 1;
    size_t i = (size_t)st->hash & mask;
    while (S.stacks[i] != NULL)
        i = (i + 1) & mask;
    S.stacks[i] = st;
}

static int
stack_table_grow(void)
{
    Stack **old = S.stacks;
    size_t old_cap = S.stack_cap;
    Stack **fresh = calloc(old_cap * 2, sizeof(Stack *));
    if (fresh == NULL)
        return -1;
    S.stacks = fresh;
    S.stack_cap = old_cap * 2;
    for (size_t i = 0; i < old_cap; i++) {
        if (old[i] != NULL)
            stack_slot_put(old[i]);
    }
    free(old);
    return 0;
}

static void
stack_delete_slot(size_t i)
{
    size_t mask = S.stack_cap - 1;
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (S.stacks[j] == NULL)
            break;
        size_t home = (size_t)S.stacks[j]->hash & mask;
        int stays = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (!stays) {
            S.stacks[i] = S.stacks[j];
            i = j;
        }
    }
    S.stacks[i] = NULL;
    S.nstacks--;
}

/* Returns the interned stack for these frames; takes over the code references either way
 * (kept on insert, dropped when found: the running frames keep those code objects alive, so
 * the DECREF never deallocates inside a hook). */
static Stack *
stack_intern(FrameKey *frames, int n)
{
    uint64_t hash = frames_hash(frames, n);
    size_t mask = S.stack_cap - 1;
    size_t i = (size_t)hash & mask;
    for (; S.stacks[i] != NULL; i = (i + 1) & mask) {
        if (stack_matches(S.stacks[i], hash, frames, n)) {
            for (int k = 0; k < n; k++)
                Py_DECREF(frames[k].code);
            return S.stacks[i];
        }
    }
    Stack *st = NULL;
    if (S.nstacks < S.max_stacks
        && ((size_t)(S.nstacks + 1) * 2 <= S.stack_cap || stack_table_grow() == 0)) {
        size_t bytes = sizeof(Stack) + (size_t)n * sizeof(FrameKey);
        st = calloc(1, bytes);
        if (st != NULL) {
            st->hash = hash;
            st->nframes = n;
            st->label = "<unknown>";
            memcpy(st->frames, frames, (size_t)n * sizeof(FrameKey));
            stack_slot_put(st);
            S.nstacks++;
            S.stack_bytes += bytes;
            return st;
        }
    }
    for (int k = 0; k < n; k++)
        Py_DECREF(frames[k].code);
    S.overflow_samples++;
    return &overflow_stack;
}

/* ---- stack capture ------------------------------------------------------------------------- */

static PyThreadState *
current_tstate(void)
{
    /* Never a fatal error: a hook may run where no thread state is current. */
#if PY_VERSION_HEX >= 0x030D0000
    return PyThreadState_GetUnchecked();
#else
    return _PyThreadState_UncheckedGet();
#endif
}

/* Fills frames[] innermost first with new references to the code objects; returns the count. */
#ifdef SOAKD_DIRECT_FRAMES
static int
walk_frames(PyThreadState *ts, FrameKey *frames, int limit)
{
    int n = 0;
    _PyInterpreterFrame *f = ts->cframe != NULL ? ts->cframe->current_frame : NULL;
    while (f != NULL && n < limit) {
        /* Incomplete frames are being set up (not yet running): PyFrame_GetBack skips them. */
        if (!_PyFrame_IsIncomplete(f)) {
            PyCodeObject *code = f->f_code;
            Py_INCREF(code); /* the frame holds it: never the last reference when dropped */
            frames[n].code = code;
            frames[n].lineno = _PyInterpreterFrame_LASTI(f) * (int)sizeof(_Py_CODEUNIT);
            n++;
        }
        f = f->previous;
    }
    return n;
}
#else
static int
walk_frames(PyThreadState *ts, FrameKey *frames, int limit)
{
    int n = 0;
    PyFrameObject *f = PyThreadState_GetFrame(ts);
    while (f != NULL && n < limit) {
        frames[n].code = PyFrame_GetCode(f);
        frames[n].lineno = PyFrame_GetLineNumber(f);
        n++;
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    Py_XDECREF(f);
    return n;
}
#endif

static Stack *
capture_stack(void)
{
    FrameKey frames[MAX_FRAMES];
    int n = 0;
    PyThreadState *ts = current_tstate();
#ifdef SOAKD_DIRECT_FRAMES
    if (ts != NULL)
        n = walk_frames(ts, frames, S.frames); /* reads only: no GC, no error state to keep */
#else
    if (ts != NULL) {
        /* The hook may run while an exception is being raised: keep it intact. Materializing
         * a frame can fail (MemoryError); that only shortens the stack. */
#if PY_VERSION_HEX >= 0x030C0000
        PyObject *exc = PyErr_GetRaisedException();
#else
        PyObject *exc_type, *exc_value, *exc_tb;
        PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
#endif
        int gc_was_enabled = PyGC_Disable();
        n = walk_frames(ts, frames, S.frames);
        if (gc_was_enabled)
            PyGC_Enable();
        PyErr_Clear();
#if PY_VERSION_HEX >= 0x030C0000
        PyErr_SetRaisedException(exc);
#else
        PyErr_Restore(exc_type, exc_value, exc_tb);
#endif
    }
#endif
    return stack_intern(frames, n);
}

/* ---- the sample path ---------------------------------------------------------------------- */

static int
block_room(void)
{
    if (S.live_blocks >= S.max_blocks)
        return 0;
    if ((size_t)(S.live_blocks + 1) * 2 > S.block_cap)
        return block_table_grow() == 0;
    return 1;
}

/* The countdown reached zero inside this block: record it. Never inlined into the hooks. */
static void
#if defined(__GNUC__)
    __attribute__((noinline))
#endif
    sample_block(void *ptr, size_t size)
{
    if (S.probing) {
        S.probe_hit = 1;
        S.remaining = PARKED;
        return;
    }
    if (!S.enabled || S.busy) {
        S.remaining = PARKED;
        return;
    }
    S.busy = 1;
    S.remaining = PARKED; /* allocations made while capturing pass through */
    S.sampled++;
    double w, inv_p, var;
    size &= SIZE_MASK;
    block_weights(size, S.interval, &w, &inv_p, &var);
    if (!block_room()) {
        S.dropped++;
        S.dropped_w += w;
    }
    else {
        Stack *st = capture_stack();
        block_put((uintptr_t)ptr, size | (S.epoch << EPOCH_SHIFT), st);
        st->live++;
        st->est_bytes += w;
        st->est_blocks += inv_p;
        st->variance += var;
        st->alloc_w2 += var;
    }
    S.remaining = draw_countdown();
    S.busy = 0;
}

/* ---- the hooks ---------------------------------------------------------------------------- */

static inline void
account(void *ptr, size_t size)
{
    S.remaining -= (int64_t)size;
    if (UNLIKELY(S.remaining <= 0))
        sample_block(ptr, size);
}

/* malloc and calloc take their bytes off the countdown before they allocate, so that the
 * common path ends in a tail call to the allocator below: no frame of ours to come back
 * through, which is most of what a hook costs on millions of allocations a second. An
 * allocation that reaches zero is made out of line and sampled once it exists. */
static void *
#if defined(__GNUC__)
    __attribute__((noinline))
#endif
    sampled_result(void *ptr, size_t size)
{
    if (UNLIKELY(ptr == NULL))
        S.remaining += (int64_t)size; /* nothing was allocated: the sampled byte is still due */
    else
        sample_block(ptr, size);
    return ptr;
}

static void *
#if defined(__GNUC__)
    __attribute__((noinline))
#endif
    malloc_sampled(Hook *h, size_t size)
{
    return sampled_result(h->prev.malloc(h->prev.ctx, size), size);
}

static void *
#if defined(__GNUC__)
    __attribute__((noinline))
#endif
    calloc_sampled(Hook *h, size_t nelem, size_t elsize)
{
    return sampled_result(h->prev.calloc(h->prev.ctx, nelem, elsize), nelem * elsize);
}

static void *
hook_malloc(void *ctx, size_t size)
{
    Hook *h = (Hook *)ctx;
    S.remaining -= (int64_t)size;
    if (UNLIKELY(S.remaining <= 0))
        return malloc_sampled(h, size);
    return h->prev.malloc(h->prev.ctx, size);
}

static void *
hook_calloc(void *ctx, size_t nelem, size_t elsize)
{
    Hook *h = (Hook *)ctx;
    size_t size = nelem * elsize;
    if (UNLIKELY(elsize != 0 && size / elsize != nelem)) /* overflows: fails below, uncounted */
        return h->prev.calloc(h->prev.ctx, nelem, elsize);
    S.remaining -= (int64_t)size;
    if (UNLIKELY(S.remaining <= 0))
        return calloc_sampled(h, nelem, elsize);
    return h->prev.calloc(h->prev.ctx, nelem, elsize);
}

static void *
hook_realloc(void *ctx, void *old, size_t size)
{
    Hook *h = (Hook *)ctx;
    void *ptr = h->prev.realloc(h->prev.ctx, old, size);
    if (UNLIKELY(ptr == NULL))
        return NULL; /* the old block is untouched and stays tracked */
    /* The old block ends here (a free); the new size is a new allocation. */
    if (UNLIKELY(may_be_sampled(old)))
        untrack((uintptr_t)old);
    account(ptr, size);
    return ptr;
}

/* A free that may be of a sampled block (its bit is set): out of line, so that the common path
 * of hook_free saves no registers and ends in a tail call. */
static void
#if defined(__GNUC__)
    __attribute__((noinline))
#endif
    hook_free_probe(Hook *h, void *ptr)
{
    untrack((uintptr_t)ptr);
    h->prev.free(h->prev.ctx, ptr);
}

static void
hook_free(void *ctx, void *ptr)
{
    Hook *h = (Hook *)ctx;
    if (UNLIKELY(may_be_sampled(ptr)))
        hook_free_probe(h, ptr);
    else
        h->prev.free(h->prev.ctx, ptr);
}

static void
hook_init(Hook *h, PyMemAllocatorDomain domain)
{
    h->domain = domain;
    h->ours.ctx = h;
    h->ours.malloc = hook_malloc;
    h->ours.calloc = hook_calloc;
    h->ours.realloc = hook_realloc;
    h->ours.free = hook_free;
}

/* Our hooks are the domain's current allocator. */
static int
hook_on_top(Hook *h)
{
    PyMemAllocatorEx cur;
    PyMem_GetAllocator(h->domain, &cur);
    return cur.malloc == hook_malloc && cur.ctx == h;
}

/* Our hooks see this domain's allocations (on top, or under another hook such as
 * tracemalloc): allocate one byte through the domain's front door and watch for our hook. */
static int
hook_in_chain(Hook *h)
{
    if (!h->hooked)
        return 0;
    if (hook_on_top(h))
        return 1;
    int64_t saved = S.remaining;
    S.probe_hit = 0;
    S.probing = 1;
    S.remaining = 0;
    void *p = h->domain == PYMEM_DOMAIN_OBJ ? PyObject_Malloc(1) : PyMem_Malloc(1);
    S.probing = 0;
    S.remaining = saved;
    if (h->domain == PYMEM_DOMAIN_OBJ)
        PyObject_Free(p);
    else
        PyMem_Free(p);
    return S.probe_hit;
}

static void
hook_install(Hook *h)
{
    PyMem_GetAllocator(h->domain, &h->prev);
    PyMem_SetAllocator(h->domain, &h->ours);
    h->hooked = 1;
}

/* ---- table lifetime (module functions only: GIL held, outside any hook) ---------------------- */

static void
stack_reset_counts(Stack *st)
{
    st->live = st->coarse_live = 0;
    st->est_bytes = st->est_blocks = st->variance = 0.0;
    st->alloc_w2 = st->free_w2 = 0.0;
}

/* Forgets every sample and stack. References are dropped only after the tables are consistent
 * and empty: a code object's deallocation may run arbitrary code (weakref callbacks). */
static void
tables_release(void)
{
    S.busy = 1;
    Stack **old_stacks = S.stacks;
    size_t old_cap = S.stack_cap;
    free(S.keys);
    free(S.infos);
    if (S.filter != no_filter)
        free(S.filter);
    S.keys = NULL;
    S.infos = NULL;
    S.filter = no_filter;
    S.filter_mask = 63;
    S.block_cap = 0;
    S.live_blocks = 0;
    S.stacks = NULL;
    S.stack_cap = 0;
    S.nstacks = 0;
    S.stack_bytes = 0;
    PyObject *overflow_tuple = overflow_stack.frames_tuple;
    overflow_stack.frames_tuple = NULL;
    stack_reset_counts(&overflow_stack);
    S.sampled = S.frees_seen = S.dropped = S.overflow_samples = 0;
    S.dropped_w = 0.0;
    S.busy = 0;
    for (size_t i = 0; i < old_cap; i++) {
        Stack *st = old_stacks[i];
        if (st == NULL)
            continue;
        for (int k = 0; k < st->nframes; k++)
            Py_DECREF(st->frames[k].code);
        Py_XDECREF(st->frames_tuple);
        free(st);
    }
    free(old_stacks);
    Py_XDECREF(overflow_tuple);
}

static int
tables_create(void)
{
    size_t block_cap = MIN_BLOCK_CAP;
    S.stacks = calloc(MIN_STACK_CAP, sizeof(Stack *));
    if (S.stacks == NULL || block_table_alloc(block_cap) < 0) {
        free(S.stacks);
        S.stacks = NULL;
        return -1;
    }
    S.stack_cap = MIN_STACK_CAP;
    return 0;
}

/* ---- snapshot ----------------------------------------------------------------------------- */

static PyObject *
frames_tuple_build(const Stack *st)
{
    if (st->nframes == 0)
        return Py_BuildValue("((si))", st->label, 0);
    PyObject *tuple = PyTuple_New(st->nframes);
    if (tuple == NULL)
        return NULL;
    for (int i = 0; i < st->nframes; i++) {
#ifdef SOAKD_DIRECT_FRAMES
        int lineno = PyCode_Addr2Line(st->frames[i].code, st->frames[i].lineno);
#else
        int lineno = st->frames[i].lineno;
#endif
        PyObject *frame = Py_BuildValue("(Oi)", st->frames[i].code->co_filename, lineno);
        if (frame == NULL) {
            Py_DECREF(tuple);
            return NULL;
        }
        PyTuple_SET_ITEM(tuple, i, frame);
    }
    return tuple;
}

static int
snapshot_append(PyObject *list, Stack *st)
{
    if (st->frames_tuple == NULL) {
        st->frames_tuple = frames_tuple_build(st);
        if (st->frames_tuple == NULL)
            return -1;
    }
    PyObject *item =
        Py_BuildValue("(Odddnddn)", st->frames_tuple, st->est_bytes, st->est_blocks, st->variance,
                      st->live, st->alloc_w2, st->free_w2, st->coarse_live);
    if (item == NULL)
        return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

/* Stacks without live blocks are unlinked at every snapshot (their cumulative counters, never
 * reported without a live block, are lost) and returned for release once the walk is over: a
 * stack holds its frames' code objects, and code compiled at run time (templates, generated
 * functions) must not be kept alive by soakd after the target dropped it. */
static Stack **
stacks_unlink_dead(Py_ssize_t *count)
{
    *count = 0;
    if (S.nstacks == 0)
        return NULL;
    Stack **dead = malloc((size_t)S.nstacks * sizeof(Stack *));
    if (dead == NULL)
        return NULL;
    size_t i = 0;
    while (i < S.stack_cap) {
        Stack *st = S.stacks[i];
        if (st != NULL && st->live == 0) {
            dead[(*count)++] = st;
            S.stack_bytes -= sizeof(Stack) + (size_t)st->nframes * sizeof(FrameKey);
            stack_delete_slot(i); /* slot i may now hold a shifted entry: look again */
            continue;
        }
        i++;
    }
    return dead;
}

static void
stacks_release(Stack **dead, Py_ssize_t count)
{
    for (Py_ssize_t k = 0; k < count; k++) {
        Stack *st = dead[k];
        for (int f = 0; f < st->nframes; f++)
            Py_DECREF(st->frames[f].code);
        Py_XDECREF(st->frames_tuple);
        free(st);
    }
    free(dead);
}

/* ---- module functions --------------------------------------------------------------------- */

static int
is_running(void)
{
    return S.enabled && (hook_in_chain(&hook_mem) || hook_in_chain(&hook_obj));
}

static PyObject *
prof_start(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"interval", "frames", "max_blocks", "max_stacks", "seed", NULL};
    long long interval;
    int frames;
    Py_ssize_t max_blocks, max_stacks;
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Linn|K", kwlist, &interval, &frames,
                                     &max_blocks, &max_stacks, &seed))
        return NULL;
#ifdef Py_GIL_DISABLED
    PyErr_SetString(PyExc_RuntimeError, "the sampled profiler needs the GIL");
    return NULL;
#endif
    if (interval < 1 || interval > (1LL << 40)) {
        PyErr_Format(PyExc_ValueError, "interval must be in [1, 2**40] bytes: %lld", interval);
        return NULL;
    }
    if (frames < 1 || frames > MAX_FRAMES) {
        PyErr_Format(PyExc_ValueError, "frames must be in [1, %d]: %d", MAX_FRAMES, frames);
        return NULL;
    }
    if (max_blocks < 1 || max_blocks > (1 << 26) || max_stacks < 1 || max_stacks > (1 << 24)) {
        PyErr_Format(PyExc_ValueError,
                     "max_blocks must be in [1, 2**26] and max_stacks in [1, 2**24]: %zd, %zd",
                     max_blocks, max_stacks);
        return NULL;
    }
    if (is_running()) {
        PyErr_SetString(PyExc_RuntimeError, "the sampled profiler is already running");
        return NULL;
    }
    S.enabled = 0;
    S.remaining = PARKED;
    tables_release(); /* leftovers of a run whose hooks were taken away */
    if (tables_create() < 0)
        return PyErr_NoMemory();
    S.interval = (double)interval;
    S.intervals[0] = S.interval;
    S.n_intervals = 1;
    S.epoch = 0;
    S.frames = frames;
    S.max_blocks = max_blocks;
    S.max_stacks = max_stacks;
    S.rng = seed ? (uint64_t)seed : default_seed();
    /* A domain whose hooks still see allocations (pass-through under another hook) is
     * re-enabled in place; otherwise chain to whatever is current now. */
    if (!hook_in_chain(&hook_mem))
        hook_install(&hook_mem);
    if (!hook_in_chain(&hook_obj))
        hook_install(&hook_obj);
    S.enabled = 1;
    S.remaining = draw_countdown();
    Py_RETURN_NONE;
}

/* Which live samples are coarser than the interval now in force, per stack. Zooming in leaves
 * the blocks already live at their coarse samples: a stack that drew none there, or few, holds
 * live bytes its estimate does not show, and as those blocks are replaced by finely sampled
 * ones its estimate climbs without the stack growing. The detector bounds that climb by these
 * counts. One walk of the tables per interval change (GIL held: no hook runs meanwhile). */
static void
recount_coarse(void)
{
    for (size_t i = 0; S.stacks != NULL && i < S.stack_cap; i++) {
        if (S.stacks[i] != NULL)
            S.stacks[i]->coarse_live = 0;
    }
    overflow_stack.coarse_live = 0;
    for (size_t i = 0; S.keys != NULL && i < S.block_cap; i++) {
        if (S.keys[i] != 0 && S.intervals[S.infos[i].size >> EPOCH_SHIFT] > S.interval)
            S.infos[i].stack->coarse_live++;
    }
}

/* Samples from now on at another interval, keeping every sample taken so far: each block keeps
 * the weights of the interval it was sampled at, so the estimates stay unbiased (a
 * Horvitz-Thompson sum needs each unit's own inclusion probability, not a common one). */
static PyObject *
prof_set_interval(PyObject *Py_UNUSED(module), PyObject *arg)
{
    long long interval = PyLong_AsLongLong(arg);
    if (interval == -1 && PyErr_Occurred())
        return NULL;
    if (interval < 1 || interval > (1LL << 40)) {
        PyErr_Format(PyExc_ValueError, "interval must be in [1, 2**40] bytes: %lld", interval);
        return NULL;
    }
    if (!is_running()) {
        PyErr_SetString(PyExc_RuntimeError, "the sampled profiler is not running");
        return NULL;
    }
    int k = 0;
    while (k < S.n_intervals && S.intervals[k] != (double)interval)
        k++;
    if (k == S.n_intervals) {
        if (S.n_intervals == MAX_EPOCHS)
            Py_RETURN_FALSE; /* the caller restarts the profile instead */
        S.intervals[S.n_intervals++] = (double)interval;
    }
    S.interval = (double)interval;
    S.epoch = (size_t)k;
    recount_coarse();
    S.remaining = draw_countdown();
    Py_RETURN_TRUE;
}

static void
hook_uninstall_or_park(Hook *h)
{
    if (h->hooked && hook_on_top(h)) {
        PyMem_SetAllocator(h->domain, &h->prev);
        h->hooked = 0;
    }
    else if (h->hooked && !hook_in_chain(h)) {
        h->hooked = 0; /* someone restored an allocator from before us: we are out already */
    }
    /* else: a hook chained on top of ours calls us; stay, passing through */
}

static PyObject *
prof_stop(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    S.enabled = 0;
    S.remaining = PARKED;
    hook_uninstall_or_park(&hook_mem);
    hook_uninstall_or_park(&hook_obj);
    tables_release();
    Py_RETURN_NONE;
}

static PyObject *
prof_reinstall(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    if (!S.enabled)
        Py_RETURN_FALSE;
    int changed = 0;
    Hook *hooks[2] = {&hook_mem, &hook_obj};
    for (int i = 0; i < 2; i++) {
        if (!hook_in_chain(hooks[i])) {
            hook_install(hooks[i]);
            changed = 1;
        }
    }
    if (!changed)
        Py_RETURN_FALSE;
    /* Frees were missed while out of the chain: the samples may be stale. Start afresh. */
    S.enabled = 0;
    S.remaining = PARKED;
    tables_release();
    if (tables_create() < 0)
        return PyErr_NoMemory();
    S.enabled = 1;
    S.remaining = draw_countdown();
    Py_RETURN_TRUE;
}

static PyObject *
prof_is_running(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(is_running());
}

static PyObject *
prof_clear(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    int was_enabled = S.enabled;
    S.enabled = 0;
    S.remaining = PARKED;
    tables_release();
    S.intervals[0] = S.interval; /* no block of an older interval is left */
    S.n_intervals = 1;
    S.epoch = 0;
    if (was_enabled) {
        if (tables_create() < 0)
            return PyErr_NoMemory();
        S.enabled = 1;
        S.remaining = draw_countdown();
    }
    Py_RETURN_NONE;
}

/* With ``released``, also the stacks about to be released that an earlier snapshot reported
 * (frames, alloc_w2 + free_w2): a site's cumulative churn must not fall when one of its
 * stacks dies, or its growth would be judged against the ends' variances alone. A stack born
 * and gone between two snapshots held no block live at either, so it is not needed. */
static PyObject *
prof_snapshot(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"released", NULL};
    int released = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|p", kwlist, &released))
        return NULL;
    PyObject *list = PyList_New(0);
    PyObject *gone = released ? PyList_New(0) : NULL;
    if (list == NULL || (released && gone == NULL)) {
        Py_XDECREF(list);
        Py_XDECREF(gone);
        return NULL;
    }
    /* The walk allocates (tuples, floats): those must not be sampled into the tables being
     * walked, nor may a collection run finalizers that switch threads mid-walk. */
    int gc_was_enabled = PyGC_Disable();
    int64_t saved = S.remaining;
    S.busy = 1;
    S.remaining = PARKED;
    int failed = 0;
    for (size_t i = 0; i < S.stack_cap && !failed; i++) {
        Stack *st = S.stacks[i];
        if (st == NULL)
            continue;
        if (st->live > 0)
            failed = snapshot_append(list, st) < 0;
        else if (gone != NULL && st->frames_tuple != NULL) {
            PyObject *item =
                Py_BuildValue("(Od)", st->frames_tuple, st->alloc_w2 + st->free_w2);
            failed = item == NULL || PyList_Append(gone, item) < 0;
            Py_XDECREF(item);
        }
    }
    if (!failed && overflow_stack.live > 0)
        failed = snapshot_append(list, &overflow_stack) < 0;
    Py_ssize_t ndead = 0;
    Stack **dead = failed ? NULL : stacks_unlink_dead(&ndead);
    S.busy = 0;
    S.remaining = saved;
    if (gc_was_enabled)
        PyGC_Enable();
    if (dead != NULL)
        stacks_release(dead, ndead);
    if (failed) {
        Py_DECREF(list);
        Py_XDECREF(gone);
        return NULL;
    }
    if (gone == NULL)
        return list;
    PyObject *pair = PyTuple_Pack(2, list, gone);
    Py_DECREF(list);
    Py_DECREF(gone);
    return pair;
}

static size_t
tuple_bytes(PyObject *frames_tuple)
{
    if (frames_tuple == NULL)
        return 0;
    /* The outer tuple and its (filename, lineno) pairs; filenames belong to the code objects. */
    Py_ssize_t n = PyTuple_GET_SIZE(frames_tuple);
    size_t pair = sizeof(PyTupleObject) + sizeof(PyObject *) + 16; /* + GC header */
    return sizeof(PyTupleObject) + 16 + (size_t)n * (sizeof(PyObject *) + pair);
}

static size_t
memory_bytes(void)
{
    size_t total = S.block_cap * (sizeof(uintptr_t) + sizeof(BlockInfo) + FILTER_BITS / 8);
    total += S.stack_cap * sizeof(Stack *) + S.stack_bytes;
    for (size_t i = 0; i < S.stack_cap; i++) {
        if (S.stacks[i] != NULL)
            total += tuple_bytes(S.stacks[i]->frames_tuple);
    }
    return total + tuple_bytes(overflow_stack.frames_tuple);
}

static PyObject *
prof_stats(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    int mem_in = hook_in_chain(&hook_mem), obj_in = hook_in_chain(&hook_obj);
    int top = hook_on_top(&hook_mem) && hook_on_top(&hook_obj);
    return Py_BuildValue(
        "{s:O,s:O,s:O,s:L,s:i,s:K,s:K,s:n,s:K,s:d,s:K,s:n,s:n,s:n,s:n}",
        "running", (S.enabled && (mem_in || obj_in)) ? Py_True : Py_False,
        "installed", top ? Py_True : Py_False,
        "chained", (mem_in && obj_in) ? Py_True : Py_False,
        "interval", (long long)S.interval,
        "frames", S.frames,
        "sampled", (unsigned long long)S.sampled,
        "frees_seen", (unsigned long long)S.frees_seen,
        "live_blocks", S.live_blocks,
        "dropped_blocks", (unsigned long long)S.dropped,
        "dropped_bytes", S.dropped_w,
        "overflow_samples", (unsigned long long)S.overflow_samples,
        "stacks", S.nstacks,
        "memory_bytes", (Py_ssize_t)memory_bytes(),
        "max_blocks", S.max_blocks,
        "max_stacks", S.max_stacks);
}

static PyMethodDef prof_methods[] = {
    {"start", (PyCFunction)(void (*)(void))prof_start, METH_VARARGS | METH_KEYWORDS,
     "start(interval, frames, max_blocks, max_stacks, seed=0): hook the allocators and sample."},
    {"stop", prof_stop, METH_NOARGS,
     "Stop sampling and forget the samples; unhook unless another hook chained on top."},
    {"reinstall", prof_reinstall, METH_NOARGS,
     "Put the hooks back where another tool's stop() took them out; True if it did."},
    {"is_running", prof_is_running, METH_NOARGS, "Sampling allocations now."},
    {"set_interval", prof_set_interval, METH_O,
     "set_interval(bytes): sample at another mean interval, keeping the samples; False when a "
     "profile has seen too many intervals (restart it)."},
    {"clear", prof_clear, METH_NOARGS, "Forget every sample and stack; keep running."},
    {"snapshot", (PyCFunction)(void (*)(void))prof_snapshot, METH_VARARGS | METH_KEYWORDS,
     "[(frames, est_bytes, est_blocks, variance, sampled_blocks, alloc_w2, free_w2), ...]"},
    {"stats", prof_stats, METH_NOARGS, "The tracker's counters and its own memory."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef prof_module = {
    PyModuleDef_HEAD_INIT,
    "soakd._profiler",
    "Sampled allocation profiler: PEP 445 hooks, Poisson sampling over allocated bytes.",
    -1, /* one process-wide allocator, one state: no sub-interpreters */
    prof_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__profiler(void)
{
    hook_init(&hook_mem, PYMEM_DOMAIN_MEM);
    hook_init(&hook_obj, PYMEM_DOMAIN_OBJ);
    S.remaining = PARKED;
    overflow_stack.label = "<profiler: stack table full>";
    S.frames = 1;
    S.interval = 1.0;
    return PyModule_Create(&prof_module);
}
