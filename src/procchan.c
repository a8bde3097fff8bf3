/* procchan.c — gilfree._core._ProcChan: the shared-memory core of gilfree.ProcessChannel.
 *
 * A bounded channel of byte strings between processes. Its state lives in one POSIX shared-memory object
 * (shm_open + mmap), so every process that maps it (a forked child inherits the mapping; a spawned one
 * attaches by name) sees the same ring, and its waits are process-shared. Values are pickled by the Python
 * layer (python/gilfree/_process.py); this file moves bytes.
 *
 * Layout of the shared object:
 *     gf_pc_shared header: magic, version, the robust process-shared mutex, two futex words (not_empty,
 *     not_full: sequence numbers a waiter sleeps on with FUTEX_WAIT), the sizes, the ring's head and tail (byte counts
 *     that only grow; the ring index is the count modulo ring_size), the number of messages, closed, the
 *     number of attached handles, and how many waiters sleep on each condition;
 *     then ring_size bytes of ring: records of [uint64 length][payload], each padded to 8 bytes, wrapping
 *     around the end of the ring (a record may be split in two; copies handle the split).
 *
 * Invariants (whenever the mutex is free, or its owner died: see recovery):
 *   - head <= tail, tail - head <= ring_size; the records between head and tail are complete.
 *   - count is the number of records between head and tail; 0 <= count <= capacity.
 *   - A sender writes the whole record past tail first and only then advances tail (and then count): a
 *     record is published by one store, so a reader never sees a torn message, whoever dies when.
 *   - A receiver copies the whole record out first and only then advances head.
 *   - Once closed, never open again; receivers drain what is there, then get ChannelClosed.
 * Lifetime: refs counts the handles in every process plus the pickled handles not yet attached (a pickle
 * adds one, the handle that attaches it takes that one over); the release that takes it to 0 removes the
 * name (shm_unlink), so a child may attach after the creator let go. The memory goes when the last process
 * unmaps it. A forked child's copy of a handle holds no reference of its own (it only unmaps).
 * Robustness: the mutex is PTHREAD_MUTEX_ROBUST. If a process dies holding it, the next locker gets
 * EOWNERDEAD: it recomputes count by walking the records from head to tail (the one field a death between
 * two stores can leave stale), marks the mutex consistent and goes on. A sender killed mid-copy leaves
 * nothing (tail was not advanced); a receiver killed mid-copy leaves the message for the next receiver; a
 * receiver killed after advancing head took the message with it.
 *
 * Why futexes and not process-shared condition variables: glibc's pthread_cond_signal/broadcast wait for
 * the waiters of the previous group to leave; a waiter killed inside pthread_cond_wait never leaves, and
 * the next signal blocks for ever, holding the mutex. A futex word keeps no per-waiter state: a waiter reads
 * the word under the mutex, unlocks, and sleeps only if the word still has that value (so no wake-up is
 * lost); a signaler bumps the word under the mutex and wakes. A dead waiter leaves nothing behind.
 *
 * A waiter first spins for up to PC_SPIN_NS with the mutex free, reading the header's counters atomically
 * (their writers store them atomically, under the mutex), and sleeps on the futex only if nothing changed:
 * a peer that is running answers in microseconds, and neither side pays for a wake-up.
 *
 * Every wait releases the GIL. The main thread waits in slices of GF_SIGNAL_POLL_NS (50 ms) and checks for
 * signals between them and whenever a futex wait ends in EINTR (Ctrl-C, and handlers of frequent signals);
 * so does a wait for the mutex itself (pthread_mutex_timedlock in slices), which another process may hold
 * for long: copying a large message, or stopped by SIGSTOP or a debugger. Timeouts bound that wait too, and
 * the nowait calls never block on it (WouldBlock after a short spin). A condition's wake-up goes to all its
 * sleepers (see pc_wait).
 *
 * Untrusted peers: any process of the same user that opens the name can write anything into the object.
 * So the geometry (ring size, capacity) is validated once at attach against the mapping's size and kept in
 * the handle; every copy is bounded by it (ring_put/ring_get cannot leave the mapping whatever a position
 * says); every length and the header's moving parts (head, tail, count) are checked under the mutex before
 * they are used. A violation marks the handle corrupt, closes the channel and raises OSError: never a crash.
 * What cannot be defended against: a peer that shrinks the object (ftruncate) makes the others' accesses
 * fault (SIGBUS), and a peer can always deny service (hold the mutex, eat every message).
 * Space: the pages are reserved at creation (posix_fallocate), so a small /dev/shm fails then, with
 * OSError(ENOSPC), and not later with SIGBUS on a write.
 */
#include "channel.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PC_MAGIC 0x676966726565504bull /* "gifreePK" */
#define PC_VERSION 1
#define PC_SMALL 512                   /* a recv copies a record this small in one round */

typedef struct {
    uint64_t magic;        /* written last at creation (release): attachers check it */
    uint32_t version;
    uint32_t closed;
    pthread_mutex_t mu;
    uint32_t not_empty;    /* futex words: bumped (under mu) by whoever makes room / a message */
    uint32_t not_full;
    uint64_t ring_size;    /* bytes, a multiple of 8 */
    uint64_t capacity;     /* messages */
    uint64_t head, tail;   /* byte counts, only growing */
    uint64_t count;        /* messages in the ring */
    uint32_t refs;         /* handles, in every process, plus pickled handles not yet attached (add_ref);
                              the release that takes it to 0 unlinks the name */
    uint32_t recv_waiting, send_waiting;
    uint32_t pad;
    uint64_t ring_off;     /* offset of the ring from the start of the object */
} gf_pc_shared;

typedef struct {
    PyObject_HEAD
    gf_state *st;
    gf_pc_shared *sh;      /* NULL once released */
    size_t map_size;
    PyObject *name;
    unsigned char *ring;
    /* The geometry, validated at attach and kept here: never re-read from shared memory, which any process
     * that can open the name may rewrite (see "Untrusted peers" above). */
    uint64_t ring_size;    /* bytes, a multiple of 8, >= 64; ring + ring_size is the end of the mapping */
    uint64_t capacity;     /* messages, >= 1 */
    int corrupt;           /* (atomic) a violation was seen: every later operation raises OSError */
    int users;             /* operations in progress on this handle (atomic): see pc_enter */
    int released;          /* release() was called (atomic) */
    int unmapped;          /* the mapping is gone (atomic; set once) */
} ProcChanObject;

#define PC_CAST(op) ((ProcChanObject *)(op))

static inline uint64_t
rec_size(uint64_t len)
{
    return 8 + ((len + 7) & ~(uint64_t)7);
}

/* Copy n bytes (n <= ring_size) into / out of the ring at byte count `pos`, wrapping around its end: always
 * inside the mapping, whatever pos is. */
static void
ring_put(ProcChanObject *self, uint64_t pos, const void *src, uint64_t n)
{
    unsigned char *ring = self->ring;
    uint64_t off = pos % self->ring_size, first = self->ring_size - off;
    if (n <= first) {
        memcpy(ring + off, src, n);
    }
    else {
        memcpy(ring + off, src, first);
        memcpy(ring, (const unsigned char *)src + first, n - first);
    }
}

static void
ring_get(ProcChanObject *self, uint64_t pos, void *dst, uint64_t n)
{
    unsigned char *ring = self->ring;
    uint64_t off = pos % self->ring_size, first = self->ring_size - off;
    if (n <= first) {
        memcpy(dst, ring + off, n);
    }
    else {
        memcpy(dst, ring + off, first);
        memcpy((unsigned char *)dst + first, ring, n - first);
    }
}

/* Under the mutex: the header's moving parts make sense (head and tail 8-aligned, at most one ring apart,
 * count within capacity and zero exactly when the ring is empty). 0, or -1: corrupt. */
static int
header_sane(ProcChanObject *self)
{
    gf_pc_shared *sh = self->sh;
    uint64_t head = sh->head, tail = sh->tail, count = sh->count;
    uint64_t used = tail - head; /* huge if tail < head */
    if ((head & 7) != 0 || (tail & 7) != 0 || used > self->ring_size || count > self->capacity ||
        (count == 0) != (used == 0)) {
        return -1;
    }
    return 0;
}

/* Under the mutex, count > 0 and header_sane: the length of the head record, or UINT64_MAX if the record
 * does not fit between head and tail (corrupt). */
static uint64_t
head_len(ProcChanObject *self)
{
    gf_pc_shared *sh = self->sh;
    uint64_t len;
    ring_get(self, sh->head, &len, 8);
    if (len > self->ring_size - 8 || rec_size(len) > sh->tail - sh->head) {
        return UINT64_MAX;
    }
    return len;
}

/* After EOWNERDEAD: make the header consistent (see the file comment). Under the mutex. A header that
 * makes no sense is left for header_sane to report. */
static void
recover(ProcChanObject *self)
{
    gf_pc_shared *sh = self->sh;
    uint64_t n = 0, pos = sh->head, tail = sh->tail;
    if (tail - pos <= self->ring_size && (pos & 7) == 0) {
        while (pos < tail) {
            uint64_t len;
            ring_get(self, pos, &len, 8);
            if (len > self->ring_size - 8 || rec_size(len) > tail - pos) {
                __atomic_store_n(&sh->tail, pos, __ATOMIC_RELEASE); /* cannot happen; be safe */
                break;
            }
            pos += rec_size(len);
            n++;
        }
        __atomic_store_n(&sh->count, n, __ATOMIC_RELEASE);
    }
    pthread_mutex_consistent(&sh->mu);
}

static int
after_lock(ProcChanObject *self, int rc)
{
    if (rc == EOWNERDEAD) {
        recover(self);
        return 0;
    }
    return rc;
}

/* Attached: raise the error of a corrupt channel. */
static void
raise_corrupt(ProcChanObject *self)
{
    PyErr_Format(PyExc_OSError, "ProcessChannel %R: its shared memory is corrupt (another process wrote into it "
                 "out of turn); the channel was closed for this handle", self->name);
    /* (an OSError with errno EIO: subclass-free, so `except OSError` catches it) */
}

/* Under the mutex: a violation was found. Mark this handle corrupt, close the channel for everyone (so honest
 * peers stop waiting on it), unlock, raise. Always -1. */
static int
fail_corrupt(ProcChanObject *self)
{
    gf_pc_shared *sh = self->sh;
    __atomic_store_n(&self->corrupt, 1, __ATOMIC_SEQ_CST);
    __atomic_store_n(&sh->closed, 1, __ATOMIC_RELEASE);
    __atomic_add_fetch(&sh->not_empty, 1, __ATOMIC_RELEASE);
    __atomic_add_fetch(&sh->not_full, 1, __ATOMIC_RELEASE);
    (void)syscall(SYS_futex, &sh->not_empty, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    (void)syscall(SYS_futex, &sh->not_full, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    pthread_mutex_unlock(&sh->mu);
    raise_corrupt(self);
    return -1;
}

static void
futex_wake(uint32_t *word, int n)
{
    (void)syscall(SYS_futex, word, FUTEX_WAKE, n, NULL, NULL, 0);
}

/* Under mu: bump a futex word and wake n sleepers (1, or INT_MAX for all). */
static void
pc_signal(uint32_t *word, int n)
{
    __atomic_add_fetch(word, 1, __ATOMIC_RELEASE);
    futex_wake(word, n);
}

/* Detached, mutex free: sleep on `word` while it still holds `seen` (read under the mutex), until it is
 * bumped or `at` (CLOCK_MONOTONIC; NULL: no limit) passes. Returns 0 (woken, or the word had changed),
 * ETIMEDOUT (the deadline or the signal slice: the caller tells them apart) or EINTR (a signal arrived: the
 * main thread runs its handler before waiting again). */
static int
pc_futex_wait(uint32_t *word, uint32_t seen, const struct timespec *at)
{
    int timed_out = 0;
    struct timespec rel, *relp = NULL;
    if (at != NULL) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        int64_t ns = (int64_t)(at->tv_sec - now.tv_sec) * 1000000000 + (at->tv_nsec - now.tv_nsec);
        if (ns <= 0) {
            timed_out = 1;
        }
        rel.tv_sec = ns > 0 ? ns / 1000000000 : 0;
        rel.tv_nsec = ns > 0 ? ns % 1000000000 : 0;
        relp = &rel;
    }
    if (timed_out) {
        return ETIMEDOUT;
    }
    /* FUTEX_WAIT (not _PRIVATE: the word is shared between processes); a relative timeout is measured on
     * CLOCK_MONOTONIC. EAGAIN: the word changed already. */
    long r = syscall(SYS_futex, word, FUTEX_WAIT, seen, relp, NULL, 0);
    if (r < 0 && (errno == ETIMEDOUT || errno == EINTR)) {
        return errno;
    }
    return 0;
}

static void
pc_deadline_slice(const gf_deadline *d, int is_main, struct timespec *at, int *bounded, int *polling)
{
    *bounded = 0;
    *polling = 0;
    if (!d->infinite) {
        *at = d->at;
        *bounded = 1;
    }
    if (is_main) {
        struct timespec poll;
        gf_monotonic_after(&poll, GF_SIGNAL_POLL_NS);
        if (!*bounded || poll.tv_sec < at->tv_sec || (poll.tv_sec == at->tv_sec && poll.tv_nsec < at->tv_nsec)) {
            *at = poll;
            *bounded = 1;
            *polling = 1;
        }
    }
}

/* A handle's mapping stays while any thread uses it: every method runs between pc_enter and pc_leave, and
 * release() only marks the handle; whoever leaves last after that unmaps. (Another thread of this process
 * may be blocked in recv on the handle when it is released: it finishes normally, then the memory goes.)
 * Order: an entering thread counts itself in `users` before it reads `released`; release() sets
 * `released` and then leaves like a user; both sequentially consistent, so either the entering thread
 * sees `released`, or the last leaver sees its count. `unmapped` makes the unmap happen once. */
static void
pc_unmap(ProcChanObject *self)
{
    if (__atomic_exchange_n(&self->unmapped, 1, __ATOMIC_SEQ_CST) == 0) {
        munmap(self->sh, self->map_size);
        self->sh = NULL;
        self->ring = NULL;
    }
}

static int
pc_enter(ProcChanObject *self)
{
    __atomic_add_fetch(&self->users, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&self->released, __ATOMIC_SEQ_CST)) {
        if (__atomic_sub_fetch(&self->users, 1, __ATOMIC_SEQ_CST) == 0) {
            pc_unmap(self);
        }
        PyErr_SetString(PyExc_ValueError, "this ProcessChannel handle was released");
        return 0;
    }
    return 1;
}

static void
pc_leave(ProcChanObject *self)
{
    if (__atomic_sub_fetch(&self->users, 1, __ATOMIC_SEQ_CST) == 0 &&
        __atomic_load_n(&self->released, __ATOMIC_SEQ_CST)) {
        pc_unmap(self);
    }
}

/* Inside pc_enter/pc_leave the mapping is there; a handle that saw a corrupt header raises. */
static int
pc_alive(ProcChanObject *self)
{
    if (__atomic_load_n(&self->corrupt, __ATOMIC_SEQ_CST)) {
        raise_corrupt(self);
        return 0;
    }
    return 1;
}

/* A method whose _impl runs between pc_enter and pc_leave: the mapping stays while it runs. */
#define PC_GUARDED(name)                                                                                   \
    static PyObject *name(PyObject *op, PyObject *args, PyObject *kwargs)                                \
    {                                                                                                      \
        if (!pc_enter(PC_CAST(op))) {                                                                      \
            return NULL;                                                                                   \
        }                                                                                                  \
        PyObject *r = name##_impl(op, args, kwargs);                                                       \
        pc_leave(PC_CAST(op));                                                                             \
        return r;                                                                                          \
    }

enum { PC_SEND = 0, PC_RECV = 1 };

/* How long a waiter spins (GIL released, mutex free) before it sleeps on the futex: a peer process that
 * is running usually makes room or a message within microseconds, while sleeping costs a futex wake-up on
 * both sides. */
#ifndef PC_SPIN_NS
#define PC_SPIN_NS (20 * 1000)
#endif

static int64_t
ns_since(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)(now.tv_sec - start->tv_sec) * 1000000000 + (now.tv_nsec - start->tv_nsec);
}

/* pthread_mutex_timedlock until `at` on CLOCK_MONOTONIC. timedlock measures on CLOCK_REALTIME, so the slice
 * is converted; a clock step only lengthens or shortens one slice, and callers re-check their monotonic
 * deadline after it. (Not pthread_mutex_clocklock: ThreadSanitizer does not intercept it, and would then see
 * unlocks of a mutex it never saw locked.) */
static int
timedlock_until(pthread_mutex_t *mu, const struct timespec *at)
{
    struct timespec now, real;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int64_t ns = (int64_t)(at->tv_sec - now.tv_sec) * 1000000000 + (at->tv_nsec - now.tv_nsec);
    if (ns < 0) {
        ns = 0;
    }
    clock_gettime(CLOCK_REALTIME, &real);
    real.tv_sec += (time_t)(ns / 1000000000);
    real.tv_nsec += (long)(ns % 1000000000);
    if (real.tv_nsec >= 1000000000) {
        real.tv_sec++;
        real.tv_nsec -= 1000000000;
    }
    return pthread_mutex_timedlock(mu, &real);
}

/* Attached: take the mutex. Another process may hold it for long (copying a large message, or stopped by
 * SIGSTOP or a debugger), so a contended lock is waited for with the GIL released, in slices:
 *   - d (NULL: no deadline) is honoured: TimeoutError when it passes;
 *   - nowait: it never blocks: a peer's short hold (a copy) is spun out for up to PC_SPIN_NS, then it raises
 *     WouldBlock, as for a full or empty channel;
 *   - on the main thread, signals are checked every GF_SIGNAL_POLL_NS (Ctrl-C gets through).
 * A dead owner's state is recovered. 0, or -1 with an exception set (the mutex is not held then). */
static int
pc_lock_until(ProcChanObject *self, const gf_deadline *d, int nowait)
{
    gf_pc_shared *sh = self->sh;
    int rc = pthread_mutex_trylock(&sh->mu);
    if (rc == EBUSY && nowait) {
        struct timespec start;
        clock_gettime(CLOCK_MONOTONIC, &start);
        Py_BEGIN_ALLOW_THREADS
        for (unsigned i = 1; rc == EBUSY; i++) {
            gf_cpu_relax();
            if ((i & 63) == 0 && ns_since(&start) > PC_SPIN_NS) {
                break;
            }
            rc = pthread_mutex_trylock(&sh->mu);
        }
        Py_END_ALLOW_THREADS
        if (rc == EBUSY) {
            PyErr_SetString(self->st->WouldBlock, "ProcessChannel is busy: another process holds its lock");
            return -1;
        }
    }
    if (rc == EBUSY) {
        int is_main = PyThread_get_thread_ident() == self->st->main_ident;
        gf_deadline forever = {.infinite = 1};
        if (d == NULL) {
            d = &forever;
        }
        for (;;) {
            if (gf_deadline_passed(d)) {
                PyErr_SetString(PyExc_TimeoutError, "timed out (another process holds the channel's lock)");
                return -1;
            }
            struct timespec at;
            int bounded, polling;
            pc_deadline_slice(d, is_main, &at, &bounded, &polling);
            Py_BEGIN_ALLOW_THREADS
            rc = bounded ? timedlock_until(&sh->mu, &at) : pthread_mutex_lock(&sh->mu);
            Py_END_ALLOW_THREADS
            if (rc != ETIMEDOUT) {
                break;
            }
            if (is_main && PyErr_CheckSignals() < 0) {
                return -1;
            }
        }
    }
    rc = after_lock(self, rc);
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static int
pc_lock(ProcChanObject *self)
{
    return pc_lock_until(self, NULL, 0);
}

/* Detached, mutex free: spin reading the header (atomically: writers store these fields atomically) until
 * the operation may proceed, the channel is closed, or PC_SPIN_NS pass. */
static void
pc_spin(ProcChanObject *self, int kind, uint64_t need)
{
    gf_pc_shared *sh = self->sh;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (unsigned i = 1;; i++) {
        uint64_t count = __atomic_load_n(&sh->count, __ATOMIC_ACQUIRE);
        if (__atomic_load_n(&sh->closed, __ATOMIC_ACQUIRE)) {
            return;
        }
        uint64_t used = __atomic_load_n(&sh->tail, __ATOMIC_ACQUIRE) - __atomic_load_n(&sh->head, __ATOMIC_ACQUIRE);
        if (kind == PC_RECV ? count > 0
                            : count < self->capacity && used <= self->ring_size && self->ring_size - used >= need) {
            return;
        }
        gf_cpu_relax();
        if ((i & 63) == 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            if ((int64_t)(now.tv_sec - start.tv_sec) * 1000000000 + (now.tv_nsec - start.tv_nsec) > PC_SPIN_NS) {
                return;
            }
        }
    }
}

/* Attached, mutex held: wait (detached) until the operation can proceed, the channel is closed, or the
 * deadline passes; on the main thread also checks for signals every 50 ms and on every EINTR (releasing the
 * mutex for it). `need` is the record size for a send. Returns 0 ready, 1 closed (and, for a recv, empty),
 * 2 would block (nowait), all with the mutex held; -1 error (the mutex is released then). The header is
 * checked each time before it is trusted.
 *
 * Wake-ups go to every sleeper of a condition (pc_signal(..., INT_MAX)): waiters are unlike (a 16-byte
 * sender fits where a 2 KiB one does not; a recv_bytes_into with a small buffer takes nothing), so a single
 * wake-up could land on one that cannot use it while the one that could sleeps on. Waiters are few. */
static int
pc_wait(ProcChanObject *self, int kind, uint64_t need, const gf_deadline *d, int nowait)
{
    gf_pc_shared *sh = self->sh;
    int is_main = PyThread_get_thread_ident() == self->st->main_ident;
    int spun = 0;
    for (;;) {
        if (header_sane(self) < 0) {
            return fail_corrupt(self);
        }
        int ready, closed = sh->closed != 0;
        if (kind == PC_SEND) {
            ready = sh->count < self->capacity && self->ring_size - (sh->tail - sh->head) >= need;
        }
        else {
            ready = sh->count > 0;
        }
        if (kind == PC_SEND && closed) {
            return 1;
        }
        if (ready) {
            return 0;
        }
        if (closed) {
            return 1;
        }
        if (nowait) {
            return 2;
        }
        if (gf_deadline_passed(d)) {
            pthread_mutex_unlock(&sh->mu);
            PyErr_SetString(PyExc_TimeoutError, "timed out");
            return -1;
        }
        if (!spun) { /* once per call: spin with the mutex free before sleeping */
            spun = 1;
            pthread_mutex_unlock(&sh->mu);
            Py_BEGIN_ALLOW_THREADS
            pc_spin(self, kind, need);
            Py_END_ALLOW_THREADS
            if (pc_lock_until(self, d, 0) < 0) {
                return -1;
            }
            continue;
        }
        struct timespec at;
        int bounded, polling, rc;
        pc_deadline_slice(d, is_main, &at, &bounded, &polling);
        uint32_t *word = kind == PC_SEND ? &sh->not_full : &sh->not_empty;
        uint32_t *waiting = kind == PC_SEND ? &sh->send_waiting : &sh->recv_waiting;
        /* Counted and read under the mutex, so a signaler that runs after the unlock sees the count and
         * bumps the word (the futex then does not sleep, or is woken). The count is atomic: it is taken back
         * without the mutex, which may not be had again before the deadline. */
        uint32_t seen = __atomic_load_n(word, __ATOMIC_ACQUIRE);
        __atomic_add_fetch(waiting, 1, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&sh->mu);
        Py_BEGIN_ALLOW_THREADS
        rc = pc_futex_wait(word, seen, bounded ? &at : NULL);
        Py_END_ALLOW_THREADS
        __atomic_sub_fetch(waiting, 1, __ATOMIC_SEQ_CST);
        if (is_main && (rc == EINTR || (rc == ETIMEDOUT && polling)) && PyErr_CheckSignals() < 0) {
            return -1;
        }
        if (pc_lock_until(self, d, 0) < 0) {
            return -1;
        }
    }
}

static int
parse_timeout(PyObject *timeout, gf_deadline *d)
{
    return gf_deadline_from_timeout(timeout, d, "timeout");
}

/* ---- send ---------------------------------------------------------------------------------------- */

static PyObject *
pc_send_bytes_impl(PyObject *op, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"data", "timeout", "nowait", NULL};
    ProcChanObject *self = PC_CAST(op);
    Py_buffer view;
    PyObject *timeout = Py_None;
    int nowait = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|Op:send_bytes", kwlist, &view, &timeout, &nowait)) {
        return NULL;
    }
    PyObject *res = NULL;
    gf_deadline d;
    if (!pc_alive(self) || parse_timeout(timeout, &d) < 0) {
        goto done;
    }
    gf_pc_shared *sh = self->sh;
    uint64_t len = (uint64_t)view.len, need = rec_size(len);
    if (need > self->ring_size) {
        PyErr_Format(PyExc_ValueError, "a message of %zd bytes does not fit in this channel's buffer of %llu "
                     "bytes (make it with a larger buffer_size)", view.len,
                     (unsigned long long)(self->ring_size - 8));
        goto done;
    }
    if (pc_lock_until(self, &d, nowait) < 0) {
        goto done;
    }
    int w = pc_wait(self, PC_SEND, need, &d, nowait);
    if (w < 0) {
        goto done;
    }
    if (w == 1 || w == 2) {
        pthread_mutex_unlock(&sh->mu);
        PyErr_SetString(w == 1 ? self->st->ChannelClosed : self->st->WouldBlock,
                        w == 1 ? "send on a closed ProcessChannel" : "ProcessChannel is full");
        goto done;
    }
    int wake;
    Py_BEGIN_ALLOW_THREADS
    ring_put(self, sh->tail + 8, view.buf, len); /* the payload, then the length: then publish */
    ring_put(self, sh->tail, &len, 8);
    __atomic_store_n(&sh->tail, sh->tail + need, __ATOMIC_RELEASE); /* read unlocked only by spinners */
    __atomic_store_n(&sh->count, sh->count + 1, __ATOMIC_RELEASE);
    wake = __atomic_load_n(&sh->recv_waiting, __ATOMIC_SEQ_CST) > 0;
    if (wake) {
        pc_signal(&sh->not_empty, INT_MAX); /* every receiver: see pc_wait */
    }
    pthread_mutex_unlock(&sh->mu);
    Py_END_ALLOW_THREADS
    res = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&view);
    return res;
}

PC_GUARDED(pc_send_bytes)

/* ---- recv ---------------------------------------------------------------------------------------- */

/* Mutex held, count > 0, len = head_len() checked: take the head record into dst (room for len bytes),
 * advance, wake the senders, unlock. */
static void
take_head(ProcChanObject *self, void *dst, uint64_t len)
{
    gf_pc_shared *sh = self->sh;
    ring_get(self, sh->head + 8, dst, len);
    __atomic_store_n(&sh->head, sh->head + rec_size(len), __ATOMIC_RELEASE);
    __atomic_store_n(&sh->count, sh->count - 1, __ATOMIC_RELEASE);
    if (__atomic_load_n(&sh->send_waiting, __ATOMIC_SEQ_CST) > 0) {
        pc_signal(&sh->not_full, INT_MAX); /* every sender: the room may suit one that is not first */
    }
    pthread_mutex_unlock(&sh->mu);
}

static int
raise_recv_outcome(ProcChanObject *self, int w)
{
    if (w == 1) {
        PyErr_SetString(self->st->ChannelClosed, "ProcessChannel is closed and drained");
    }
    else if (w == 2) {
        PyErr_SetString(self->st->WouldBlock, "ProcessChannel is empty");
    }
    return -1;
}

/* Lock and wait for a message (or closed, or nowait): the head record's length, with the mutex held; or
 * UINT64_MAX with an exception set and the mutex free (closed and drained, empty, timeout, corrupt). */
static uint64_t
lock_head(ProcChanObject *self, const gf_deadline *d, int nowait)
{
    if (pc_lock_until(self, d, nowait) < 0) {
        return UINT64_MAX;
    }
    int w = pc_wait(self, PC_RECV, 0, d, nowait);
    if (w < 0) {
        return UINT64_MAX;
    }
    if (w != 0) {
        pthread_mutex_unlock(&self->sh->mu);
        raise_recv_outcome(self, w);
        return UINT64_MAX;
    }
    uint64_t len = head_len(self);
    if (len == UINT64_MAX) {
        fail_corrupt(self);
    }
    return len;
}

static PyObject *
pc_recv_bytes_impl(PyObject *op, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"timeout", "nowait", NULL};
    ProcChanObject *self = PC_CAST(op);
    PyObject *timeout = Py_None;
    int nowait = 0;
    gf_deadline d;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|Op:recv_bytes", kwlist, &timeout, &nowait)) {
        return NULL;
    }
    if (!pc_alive(self) || parse_timeout(timeout, &d) < 0) {
        return NULL;
    }
    gf_pc_shared *sh = self->sh;
    for (;;) {
        uint64_t len = lock_head(self, &d, nowait);
        if (len == UINT64_MAX) {
            return NULL;
        }
        if (len <= PC_SMALL) {
            unsigned char small[PC_SMALL];
            take_head(self, small, len);
            return PyBytes_FromStringAndSize((const char *)small, (Py_ssize_t)len);
        }
        /* A large record: allocate its bytes with the mutex free (that needs the GIL), then take it if it
         * is still the head one (another receiver may have taken it meanwhile: then again). */
        pthread_mutex_unlock(&sh->mu);
        PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
        if (b == NULL) {
            return NULL;
        }
        if (pc_lock_until(self, &d, nowait) < 0) {
            Py_DECREF(b);
            return NULL;
        }
        if (header_sane(self) < 0) {
            Py_DECREF(b);
            fail_corrupt(self);
            return NULL;
        }
        if (sh->count > 0 && head_len(self) == len) {
            char *dst = PyBytes_AS_STRING(b);
            Py_BEGIN_ALLOW_THREADS
            take_head(self, dst, len);
            Py_END_ALLOW_THREADS
            return b;
        }
        pthread_mutex_unlock(&sh->mu);
        Py_DECREF(b);
    }
}

PC_GUARDED(pc_recv_bytes)

static PyObject *
pc_recv_bytes_into_impl(PyObject *op, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"buffer", "timeout", "nowait", NULL};
    ProcChanObject *self = PC_CAST(op);
    Py_buffer view;
    PyObject *timeout = Py_None, *res = NULL;
    int nowait = 0;
    gf_deadline d;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "w*|Op:recv_bytes_into", kwlist, &view, &timeout,
                                     &nowait)) {
        return NULL;
    }
    if (!pc_alive(self) || parse_timeout(timeout, &d) < 0) {
        goto done;
    }
    gf_pc_shared *sh = self->sh;
    uint64_t len = lock_head(self, &d, nowait);
    if (len == UINT64_MAX) {
        goto done;
    }
    if (len > (uint64_t)view.len) {
        pthread_mutex_unlock(&sh->mu);
        PyErr_Format(PyExc_ValueError, "buffer: the next message has %llu bytes, the buffer holds %zd "
                     "(nothing was taken)", (unsigned long long)len, view.len);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    take_head(self, view.buf, len);
    Py_END_ALLOW_THREADS
    res = PyLong_FromUnsignedLongLong(len);
done:
    PyBuffer_Release(&view);
    return res;
}

PC_GUARDED(pc_recv_bytes_into)

/* ---- values: send/recv of Python objects, one at a time or in batches -------------------------------
 *
 * The common small values travel in gilfree's own encoding, without pickle: a tag byte (0x01..0x07: no
 * pickle starts with one, its opcodes being printable ASCII or >= 0x80) and the value: None, True, False,
 * an int that fits 64 bits (in 7 bytes when it fits 56), a float (8 bytes, native order: both ends are on this machine), a str (UTF-8)
 * or bytes. Everything else (subclasses included) is pickled (protocol 5). pickle.dumps and loads of a small
 * int cost ~270 and ~130 ns here; the encoding costs a few ns. A receiver decodes a tag byte, and unpickles
 * anything else (so bytes that a peer sent with send_bytes(pickle.dumps(v)) still arrive as v).
 *
 * Batches: send_objs encodes up to PC_BATCH values (pickling needs the GIL and no process lock held), then
 * writes as many records as fit under one acquisition of the mutex, publishes them with one store of tail
 * and count, and wakes the receivers once. recv_objs takes up to max_items records (at most PC_BATCH_BYTES
 * of payload, but always the first) under one acquisition, wakes the senders once, and decodes them after
 * unlocking. A record is still one message: a batch's values can go to different receivers, and capacity
 * counts them one by one. */

#define PC_TAG_NONE 0x01
#define PC_TAG_TRUE 0x02
#define PC_TAG_FALSE 0x03
#define PC_TAG_INT 0x04
#define PC_TAG_FLOAT 0x05
#define PC_TAG_STR 0x06
#define PC_TAG_BYTES 0x07
#define PC_TAG_INT56 0x08 /* an int in 7 bytes: the record is 16 bytes, as small as a pickled small int's */
#define PC_BATCH 64
#define PC_BATCH_BYTES 65536
#define PC_MAX_ROUND 65536 /* records one recv_objs takes at most */

typedef struct {
    unsigned char head[9]; /* the tag and a fixed-size value */
    uint8_t head_len;
    const char *data;      /* and the variable part: a str's UTF-8, the bytes, or a pickle */
    Py_ssize_t data_len;
    PyObject *keep;        /* the pickle (owned), or NULL */
} pc_enc;

static PyObject *
pickle_func(const char *name)
{
    PyObject *m = PyImport_ImportModule("pickle");
    if (m == NULL) {
        return NULL;
    }
    PyObject *f = PyObject_GetAttrString(m, name);
    Py_DECREF(m);
    return f;
}

/* Encode v (the caller keeps it alive until the record is written: data may point into it). */
static int
pc_encode(PyObject *v, pc_enc *e)
{
    e->head_len = 1;
    e->data = NULL;
    e->data_len = 0;
    e->keep = NULL;
    if (v == Py_None) {
        e->head[0] = PC_TAG_NONE;
        return 0;
    }
    if (v == Py_True || v == Py_False) {
        e->head[0] = v == Py_True ? PC_TAG_TRUE : PC_TAG_FALSE;
        return 0;
    }
    if (PyLong_CheckExact(v)) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (!overflow && !(x == -1 && PyErr_Occurred())) {
            int64_t x64 = (int64_t)x;
            if (x64 >= -((int64_t)1 << 55) && x64 < ((int64_t)1 << 55)) {
                uint64_t u = (uint64_t)x64;
                e->head[0] = PC_TAG_INT56;
                for (int i = 0; i < 7; i++) {
                    e->head[1 + i] = (unsigned char)(u >> (8 * i));
                }
                e->head_len = 8;
                return 0;
            }
            e->head[0] = PC_TAG_INT;
            memcpy(e->head + 1, &x64, 8);
            e->head_len = 9;
            return 0;
        }
        PyErr_Clear(); /* a big int: pickled */
    }
    else if (PyFloat_CheckExact(v)) {
        double x = PyFloat_AS_DOUBLE(v);
        e->head[0] = PC_TAG_FLOAT;
        memcpy(e->head + 1, &x, 8);
        e->head_len = 9;
        return 0;
    }
    else if (PyBytes_CheckExact(v)) {
        e->head[0] = PC_TAG_BYTES;
        e->data = PyBytes_AS_STRING(v);
        e->data_len = PyBytes_GET_SIZE(v);
        return 0;
    }
    else if (PyUnicode_CheckExact(v)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(v, &n); /* cached in the str: valid while it lives */
        if (s != NULL) {
            e->head[0] = PC_TAG_STR;
            e->data = s;
            e->data_len = n;
            return 0;
        }
        PyErr_Clear(); /* lone surrogates: pickle keeps them */
    }
    PyObject *dumps = pickle_func("dumps");
    if (dumps == NULL) {
        return -1;
    }
    PyObject *b = PyObject_CallFunction(dumps, "Oi", v, 5);
    Py_DECREF(dumps);
    if (b == NULL) {
        return -1;
    }
    if (!PyBytes_Check(b)) {
        Py_DECREF(b);
        PyErr_SetString(PyExc_TypeError, "pickle.dumps returned no bytes");
        return -1;
    }
    e->head_len = 0;
    e->keep = b;
    e->data = PyBytes_AS_STRING(b);
    e->data_len = PyBytes_GET_SIZE(b);
    return 0;
}

static inline uint64_t
enc_len(const pc_enc *e)
{
    return (uint64_t)e->head_len + (uint64_t)e->data_len;
}

static int
enc_fits(ProcChanObject *self, const pc_enc *e)
{
    if (rec_size(enc_len(e)) > self->ring_size) {
        PyErr_Format(PyExc_ValueError, "a message of %llu bytes does not fit in this channel's buffer of %llu "
                     "bytes (make it with a larger buffer_size)", (unsigned long long)enc_len(e),
                     (unsigned long long)(self->ring_size - 8));
        return 0;
    }
    return 1;
}

/* Mutex held, room checked: write the record at byte count pos (payload first, then its length). */
static void
put_record(ProcChanObject *self, uint64_t pos, const pc_enc *e)
{
    uint64_t len = enc_len(e);
    ring_put(self, pos + 8, e->head, e->head_len);
    if (e->data_len > 0) {
        ring_put(self, pos + 8 + e->head_len, e->data, (uint64_t)e->data_len);
    }
    ring_put(self, pos, &len, 8);
}

/* Mutex held, header_sane: the length of the record at byte count pos (head <= pos < tail), or UINT64_MAX
 * if it does not fit before tail (corrupt). */
static uint64_t
rec_len_at(ProcChanObject *self, uint64_t pos)
{
    gf_pc_shared *sh = self->sh;
    uint64_t len;
    ring_get(self, pos, &len, 8);
    if (len > self->ring_size - 8 || rec_size(len) > sh->tail - pos) {
        return UINT64_MAX;
    }
    return len;
}

/* Decode one message. `as_bytes`, when given, holds the same bytes (a pickle is loaded from it). */
static PyObject *
pc_decode(const unsigned char *p, uint64_t len, PyObject *as_bytes)
{
    if (len >= 1) {
        switch (p[0]) {
        case PC_TAG_NONE:
            if (len == 1) {
                Py_RETURN_NONE;
            }
            break;
        case PC_TAG_TRUE:
        case PC_TAG_FALSE:
            if (len == 1) {
                return PyBool_FromLong(p[0] == PC_TAG_TRUE);
            }
            break;
        case PC_TAG_INT:
            if (len == 9) {
                int64_t x;
                memcpy(&x, p + 1, 8);
                return PyLong_FromLongLong((long long)x);
            }
            break;
        case PC_TAG_INT56:
            if (len == 8) {
                uint64_t u = 0;
                for (int i = 0; i < 7; i++) {
                    u |= (uint64_t)p[1 + i] << (8 * i);
                }
                if (u & ((uint64_t)1 << 55)) {
                    u |= (uint64_t)0xff << 56; /* sign-extend */
                }
                return PyLong_FromLongLong((long long)(int64_t)u);
            }
            break;
        case PC_TAG_FLOAT:
            if (len == 9) {
                double x;
                memcpy(&x, p + 1, 8);
                return PyFloat_FromDouble(x);
            }
            break;
        case PC_TAG_STR:
            return PyUnicode_DecodeUTF8((const char *)p + 1, (Py_ssize_t)(len - 1), "strict");
        case PC_TAG_BYTES:
            return PyBytes_FromStringAndSize((const char *)p + 1, (Py_ssize_t)(len - 1));
        default: { /* a pickle */
            PyObject *loads = pickle_func("loads");
            if (loads == NULL) {
                return NULL;
            }
            PyObject *b = as_bytes != NULL ? Py_NewRef(as_bytes)
                                           : PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)len);
            PyObject *r = b == NULL ? NULL : PyObject_CallOneArg(loads, b);
            Py_XDECREF(b);
            Py_DECREF(loads);
            return r;
        }
        }
    }
    PyErr_Format(PyExc_ValueError, "a message of %llu bytes with tag 0x%02x and the wrong length: not a value "
                 "encoded by ProcessChannel.send", (unsigned long long)len, len ? p[0] : 0);
    return NULL;
}

/* send_obj(value, timeout=None, nowait=False) */
static PyObject *
pc_send_obj_impl(PyObject *op, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"value", "timeout", "nowait", NULL};
    ProcChanObject *self = PC_CAST(op);
    PyObject *value, *timeout = Py_None;
    int nowait = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|Op:send_obj", kwlist, &value, &timeout, &nowait)) {
        return NULL;
    }
    gf_deadline d;
    pc_enc e;
    if (!pc_alive(self) || parse_timeout(timeout, &d) < 0 || pc_encode(value, &e) < 0) {
        return NULL;
    }
    PyObject *res = NULL;
    gf_pc_shared *sh = self->sh;
    uint64_t need = rec_size(enc_len(&e));
    if (!enc_fits(self, &e) || pc_lock_until(self, &d, nowait) < 0) {
        goto done;
    }
    int w = pc_wait(self, PC_SEND, need, &d, nowait);
    if (w < 0) {
        goto done;
    }
    if (w == 1 || w == 2) {
        pthread_mutex_unlock(&sh->mu);
        PyErr_SetString(w == 1 ? self->st->ChannelClosed : self->st->WouldBlock,
                        w == 1 ? "send on a closed ProcessChannel" : "ProcessChannel is full");
        goto done;
    }
    /* small: write with the GIL held (cheaper than detaching); large: detached */
    int detach = need > PC_SMALL;
    PyThreadState *ts = detach ? PyEval_SaveThread() : NULL;
    put_record(self, sh->tail, &e);
    __atomic_store_n(&sh->tail, sh->tail + need, __ATOMIC_RELEASE);
    __atomic_store_n(&sh->count, sh->count + 1, __ATOMIC_RELEASE);
    if (__atomic_load_n(&sh->recv_waiting, __ATOMIC_SEQ_CST) > 0) {
        pc_signal(&sh->not_empty, INT_MAX); /* every receiver: see pc_wait */
    }
    pthread_mutex_unlock(&sh->mu);
    if (detach) {
        PyEval_RestoreThread(ts);
    }
    res = Py_NewRef(Py_None);
done:
    Py_XDECREF(e.keep);
    return res;
}

PC_GUARDED(pc_send_obj)

/* send_objs(values: tuple, start, timeout=None) -> how many of values[start:] were sent: at least one
 * (waiting for room for the first), as many as fit, at most PC_BATCH. Raises (nothing sent by this call)
 * when the channel is closed, the timeout passes, or values[start] cannot be encoded or does not fit; a
 * later value that cannot be encoded ends the batch before it. */
static PyObject *
pc_send_objs_impl(PyObject *op, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"values", "start", "timeout", NULL};
    ProcChanObject *self = PC_CAST(op);
    PyObject *values, *timeout = Py_None;
    Py_ssize_t start;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!n|O:send_objs", kwlist, &PyTuple_Type, &values, &start,
                                     &timeout)) {
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(values);
    if (start < 0 || start >= n) {
        PyErr_SetString(PyExc_ValueError, "start must be in range(len(values))");
        return NULL;
    }
    gf_deadline d;
    if (!pc_alive(self) || parse_timeout(timeout, &d) < 0) {
        return NULL;
    }
    pc_enc encs[PC_BATCH];
    int k = 0;
    PyObject *res = NULL;
    for (; k < PC_BATCH && start + k < n; k++) {
        if (pc_encode(PyTuple_GET_ITEM(values, start + k), &encs[k]) < 0 || !enc_fits(self, &encs[k])) {
            Py_CLEAR(encs[k].keep); /* (set when it was encoded but does not fit) */
            if (k == 0) {
                goto done; /* the error is the first value's: raise it */
            }
            PyErr_Clear(); /* send the ones before it; the next call raises it */
            break;
        }
    }
    gf_pc_shared *sh = self->sh;
    if (pc_lock_until(self, &d, 0) < 0) {
        goto done;
    }
    int w = pc_wait(self, PC_SEND, rec_size(enc_len(&encs[0])), &d, 0);
    if (w < 0) {
        goto done;
    }
    if (w == 1) {
        pthread_mutex_unlock(&sh->mu);
        PyErr_SetString(self->st->ChannelClosed, "send on a closed ProcessChannel");
        goto done;
    }
    int sent = 0;
    Py_BEGIN_ALLOW_THREADS
    uint64_t tail = sh->tail, count = sh->count;
    while (sent < k) {
        uint64_t need = rec_size(enc_len(&encs[sent]));
        if (count >= self->capacity || self->ring_size - (tail - sh->head) < need) {
            break;
        }
        put_record(self, tail, &encs[sent]);
        tail += need;
        count++;
        sent++;
    }
    __atomic_store_n(&sh->tail, tail, __ATOMIC_RELEASE); /* one store publishes them all */
    __atomic_store_n(&sh->count, count, __ATOMIC_RELEASE);
    if (__atomic_load_n(&sh->recv_waiting, __ATOMIC_SEQ_CST) > 0) {
        pc_signal(&sh->not_empty, INT_MAX);
    }
    pthread_mutex_unlock(&sh->mu);
    Py_END_ALLOW_THREADS
    res = PyLong_FromLong(sent);
done:
    for (int i = 0; i < k; i++) {
        Py_XDECREF(encs[i].keep);
    }
    return res;
}

PC_GUARDED(pc_send_objs)

/* Attach the messages taken with a value that cannot be decoded to its exception: .values (decoded before
 * it), .data (its bytes), .more (the values after it; one that cannot be decoded either, as its bytes):
 * nothing taken is lost. */
static void
attach_taken(PyObject *values, PyObject *data, PyObject *more)
{
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    if (v != NULL) {
        if (PyObject_SetAttrString(v, "values", values) < 0 || PyObject_SetAttrString(v, "data", data) < 0 ||
            PyObject_SetAttrString(v, "more", more) < 0) {
            PyErr_Clear(); /* an exception that takes no attributes */
        }
    }
    PyErr_Restore(t, v, tb);
}

/* recv_objs(max_items, timeout=None, nowait=False) -> a list of 1 to max_items values: what is there, waiting
 * only for the first. */
static PyObject *
pc_recv_objs_impl(PyObject *op, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"max_items", "timeout", "nowait", NULL};
    ProcChanObject *self = PC_CAST(op);
    Py_ssize_t max_items;
    PyObject *timeout = Py_None;
    int nowait = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n|Op:recv_objs", kwlist, &max_items, &timeout, &nowait)) {
        return NULL;
    }
    if (max_items < 1) {
        PyErr_SetString(PyExc_ValueError, "max_items must be >= 1");
        return NULL;
    }
    gf_deadline d;
    if (!pc_alive(self) || parse_timeout(timeout, &d) < 0) {
        return NULL;
    }
    if (max_items > PC_MAX_ROUND) {
        max_items = PC_MAX_ROUND;
    }
    gf_pc_shared *sh = self->sh;
    size_t cap = PC_BATCH_BYTES;
    unsigned char *buf = PyMem_Malloc(cap);
    uint64_t *lens = PyMem_Malloc(sizeof(uint64_t) * (size_t)(max_items < PC_BATCH ? max_items : PC_BATCH));
    size_t lens_cap = (size_t)(max_items < PC_BATCH ? max_items : PC_BATCH);
    PyObject *out = NULL;
    Py_ssize_t k = 0;
    if (buf == NULL || lens == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (;;) {
        uint64_t first = lock_head(self, &d, nowait);
        if (first == UINT64_MAX) {
            goto done;
        }
        if (first > cap) { /* a large first record: grow the buffer with the mutex free, then again */
            pthread_mutex_unlock(&sh->mu);
            size_t want = (size_t)first + PC_BATCH_BYTES; /* it, and a round of small ones after it */
            unsigned char *bigger = PyMem_Realloc(buf, want);
            if (bigger == NULL) {
                PyErr_NoMemory();
                goto done;
            }
            buf = bigger;
            cap = want;
            continue;
        }
        /* take records while they fit the buffer (the first always does) */
        uint64_t pos = sh->head, total = 0;
        k = 0;
        while (k < max_items && (uint64_t)k < sh->count && pos != sh->tail) { /* (count: a peer may lie) */
            uint64_t len = rec_len_at(self, pos);
            if (len == UINT64_MAX) {
                if (k == 0) {
                    fail_corrupt(self);
                    goto done;
                }
                break; /* take the good ones; the next call reports it */
            }
            if (total + len > cap) {
                break;
            }
            if ((size_t)k == lens_cap) {
                size_t nc = lens_cap * 4 > (size_t)max_items ? (size_t)max_items : lens_cap * 4;
                uint64_t *more = PyMem_Realloc(lens, sizeof(uint64_t) * nc); /* (pymalloc: no lock) */
                if (more == NULL) {
                    break;
                }
                lens = more;
                lens_cap = nc;
            }
            ring_get(self, pos + 8, buf + total, len);
            lens[k++] = len;
            total += len;
            pos += rec_size(len);
        }
        __atomic_store_n(&sh->head, pos, __ATOMIC_RELEASE);
        __atomic_store_n(&sh->count, sh->count - (uint64_t)k, __ATOMIC_RELEASE);
        if (__atomic_load_n(&sh->send_waiting, __ATOMIC_SEQ_CST) > 0) {
            pc_signal(&sh->not_full, INT_MAX);
        }
        pthread_mutex_unlock(&sh->mu);
        break;
    }
    out = PyList_New(k);
    if (out == NULL) {
        goto done; /* (the k messages are lost only if a list of k cannot be made: out of memory) */
    }
    uint64_t off = 0;
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *v = pc_decode(buf + off, lens[i], NULL);
        if (v == NULL) {
            PyObject *before = PyList_GetSlice(out, 0, i);
            PyObject *data = PyBytes_FromStringAndSize((const char *)buf + off, (Py_ssize_t)lens[i]);
            PyObject *more = PyList_New(k - i - 1);
            uint64_t o = off + lens[i];
            for (Py_ssize_t j = i + 1; more != NULL && j < k; j++) {
                PyObject *t, *ev, *tb;
                PyErr_Fetch(&t, &ev, &tb); /* the first error is the one raised */
                PyObject *b = pc_decode(buf + o, lens[j], NULL);
                if (b == NULL) { /* undecodable too: its bytes */
                    PyErr_Clear();
                    b = PyBytes_FromStringAndSize((const char *)buf + o, (Py_ssize_t)lens[j]);
                }
                PyErr_Restore(t, ev, tb);
                if (b == NULL) {
                    Py_CLEAR(more);
                    break;
                }
                PyList_SET_ITEM(more, j - i - 1, b);
                o += lens[j];
            }
            if (before != NULL && data != NULL && more != NULL) {
                attach_taken(before, data, more);
            }
            Py_XDECREF(before);
            Py_XDECREF(data);
            Py_XDECREF(more);
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, v);
        off += lens[i];
    }
done:
    PyMem_Free(buf);
    PyMem_Free(lens);
    return out;
}

PC_GUARDED(pc_recv_objs)

/* recv_obj(timeout=None, nowait=False) */
static PyObject *
pc_recv_obj(PyObject *op, PyObject *args, PyObject *kwargs)
{
    if (!pc_enter(PC_CAST(op))) {
        return NULL;
    }
    PyObject *b = pc_recv_bytes_impl(op, args, kwargs);
    PyObject *r = NULL;
    if (b != NULL) {
        r = pc_decode((const unsigned char *)PyBytes_AS_STRING(b), (uint64_t)PyBytes_GET_SIZE(b), b);
        Py_DECREF(b);
    }
    pc_leave(PC_CAST(op));
    return r;
}

/* ---- close, release, state -------------------------------------------------------------------------- */

static PyObject *
pc_close_impl(PyObject *op, PyObject *ignored)
{
    ProcChanObject *self = PC_CAST(op);
    if (!pc_alive(self) || pc_lock(self) < 0) {
        return NULL;
    }
    gf_pc_shared *sh = self->sh;
    __atomic_store_n(&sh->closed, 1, __ATOMIC_RELEASE);
    pc_signal(&sh->not_empty, INT_MAX);
    pc_signal(&sh->not_full, INT_MAX);
    pthread_mutex_unlock(&sh->mu);
    Py_RETURN_NONE;
}

static PyObject *
pc_close(PyObject *op, PyObject *ignored)
{
    if (!pc_enter(PC_CAST(op))) {
        return NULL;
    }
    PyObject *r = pc_close_impl(op, ignored);
    pc_leave(PC_CAST(op));
    return r;
}

/* Detach this handle (unmap; the memory itself goes once every process has unmapped it). Idempotent.
 * mode PC_UNMAP: only that (a forked child's copy of a handle, which holds no reference of its own);
 * PC_DROP: also drop this handle's reference, and remove the name if it was the last one (handles and
 * pickled handles in flight, in every process); PC_FORCE: drop it and remove the name whatever the count
 * (an owner that knows every user is gone). Returns True if the name was removed here. */
enum { PC_UNMAP = 0, PC_DROP = 1, PC_FORCE = 2 };

static PyObject *
pc_release_impl(ProcChanObject *self, int mode)
{
    if (!pc_enter(self)) { /* already released: idempotent */
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    if (__atomic_exchange_n(&self->released, 1, __ATOMIC_SEQ_CST)) { /* another thread released it */
        pc_leave(self);
        Py_RETURN_FALSE;
    }
    gf_pc_shared *sh = self->sh;
    int unlink = mode == PC_FORCE;
    if (mode != PC_UNMAP) {
        if (pc_lock(self) < 0) {
            __atomic_store_n(&self->released, 0, __ATOMIC_SEQ_CST);
            pc_leave(self);
            return NULL;
        }
        if (sh->refs > 0) { /* (a count another process wrote: never below 0) */
            sh->refs--;
        }
        unlink = unlink || sh->refs == 0;
        pthread_mutex_unlock(&sh->mu);
    }
    pc_leave(self); /* unmaps now, or when the last operation in progress on this handle returns */
    if (unlink) {
        const char *name = PyUnicode_AsUTF8(self->name);
        if (name == NULL) {
            return NULL;
        }
        (void)shm_unlink(name);
    }
    return PyBool_FromLong(unlink);
}

static PyObject *
pc_release(PyObject *op, PyObject *args)
{
    int mode = PC_UNMAP;
    if (!PyArg_ParseTuple(args, "|i:release", &mode)) {
        return NULL;
    }
    if (mode < PC_UNMAP || mode > PC_FORCE) {
        return PyErr_Format(PyExc_ValueError, "mode must be 0, 1 or 2, not %d", mode);
    }
    return pc_release_impl(PC_CAST(op), mode);
}

/* A pickled handle is in flight: it holds a reference until a process attaches it (which takes the
 * reference over) or the name is removed anyway. */
static PyObject *
pc_add_ref_impl(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    ProcChanObject *self = PC_CAST(op);
    if (!pc_alive(self) || pc_lock(self) < 0) {
        return NULL;
    }
    self->sh->refs++;
    pthread_mutex_unlock(&self->sh->mu);
    Py_RETURN_NONE;
}

static PyObject *
pc_add_ref(PyObject *op, PyObject *ignored)
{
    if (!pc_enter(PC_CAST(op))) {
        return NULL;
    }
    PyObject *r = pc_add_ref_impl(op, ignored);
    pc_leave(PC_CAST(op));
    return r;
}

static PyObject *
pc_len_impl(PyObject *op, PyObject *ignored)
{
    ProcChanObject *self = PC_CAST(op);
    if (!pc_alive(self)) {
        return NULL;
    }
    /* Read without the lock (stored atomically), so len() never waits for a peer; clamped, since the
     * word is shared with processes that may write anything. */
    uint64_t n = __atomic_load_n(&self->sh->count, __ATOMIC_ACQUIRE);
    return PyLong_FromUnsignedLongLong(n < self->capacity ? n : self->capacity);
}

static PyObject *
pc_len(PyObject *op, PyObject *ignored)
{
    if (!pc_enter(PC_CAST(op))) {
        return NULL;
    }
    PyObject *r = pc_len_impl(op, ignored);
    pc_leave(PC_CAST(op));
    return r;
}

static PyObject *
pc_state_impl(PyObject *op, PyObject *ignored)
{
    ProcChanObject *self = PC_CAST(op);
    if (!pc_alive(self) || pc_lock(self) < 0) {
        return NULL;
    }
    gf_pc_shared *sh = self->sh;
    PyObject *r = Py_BuildValue("{s:K,s:K,s:K,s:i,s:I}", "capacity", (unsigned long long)self->capacity,
                                "buffer_size", (unsigned long long)self->ring_size, "count",
                                (unsigned long long)sh->count, "closed", (int)sh->closed, "refs", sh->refs);
    pthread_mutex_unlock(&sh->mu);
    return r;
}

static PyObject *
pc_state(PyObject *op, PyObject *ignored)
{
    if (!pc_enter(PC_CAST(op))) {
        return NULL;
    }
    PyObject *r = pc_state_impl(op, ignored);
    pc_leave(PC_CAST(op));
    return r;
}

/* ---- making and attaching ----------------------------------------------------------------------------- */

static int
init_shared(gf_pc_shared *sh, uint64_t capacity, uint64_t ring_size)
{
    pthread_mutexattr_t ma;
    if (pthread_mutexattr_init(&ma) != 0) {
        return -1;
    }
    pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(&sh->mu, &ma);
    pthread_mutexattr_destroy(&ma);
    if (rc != 0) {
        return -1;
    }
    sh->version = PC_VERSION;
    sh->capacity = capacity;
    sh->ring_size = ring_size;
    sh->ring_off = (sizeof(gf_pc_shared) + 63) & ~(uint64_t)63;
    sh->refs = 1;
    __atomic_store_n(&sh->magic, PC_MAGIC, __ATOMIC_RELEASE);
    return 0;
}

static PyObject *
pc_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"name", "create", "capacity", "buffer_size", NULL};
    PyObject *name;
    int create;
    unsigned long long capacity = 0, buffer_size = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Up|KK:_ProcChan", kwlist, &name, &create, &capacity,
                                     &buffer_size)) {
        return NULL;
    }
    Py_ssize_t name_len;
    const char *cname = PyUnicode_AsUTF8AndSize(name, &name_len);
    if (cname == NULL) {
        return NULL;
    }
    if ((size_t)name_len != strlen(cname)) {
        return PyErr_Format(PyExc_ValueError, "name must not contain NUL characters: %R", name);
    }
    if (create && (capacity < 1 || buffer_size < 64 || buffer_size > ((unsigned long long)1 << 40))) {
        return PyErr_Format(PyExc_ValueError, "capacity must be >= 1 and buffer_size in [64, 2**40]");
    }
    gf_state *st = PyType_GetModuleState(type);
    size_t header = (sizeof(gf_pc_shared) + 63) & ~(size_t)63;
    uint64_t ring = (buffer_size + 7) & ~(uint64_t)7;
    int fd;
    size_t map_size;
    Py_BEGIN_ALLOW_THREADS
    fd = shm_open(cname, create ? (O_CREAT | O_EXCL | O_RDWR) : O_RDWR, 0600);
    Py_END_ALLOW_THREADS
    if (fd < 0) {
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
    }
    if (create) {
        map_size = header + ring;
        if (ftruncate(fd, (off_t)map_size) < 0) {
            int e = errno;
            close(fd);
            shm_unlink(cname);
            errno = e;
            return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
        }
        /* Reserve the pages now. ftruncate only sets the size: on a small /dev/shm (Docker's default is
         * 64 MiB) the first write to a page that finds no room would kill the process with SIGBUS. */
        int e;
        Py_BEGIN_ALLOW_THREADS
        e = posix_fallocate(fd, 0, (off_t)map_size);
        Py_END_ALLOW_THREADS
        if (e != 0 && e != EOPNOTSUPP && e != EINVAL) { /* (those two: a file system without it: go on) */
            close(fd);
            shm_unlink(cname);
            if (e == ENOSPC) {
                PyObject *msg = PyUnicode_FromFormat("no space left in /dev/shm for a ProcessChannel of %zu "
                                                     "bytes (buffer_size=%llu): make it with a smaller "
                                                     "buffer_size, free space there, or enlarge it (docker "
                                                     "run --shm-size=...)", map_size, buffer_size);
                PyObject *exc_args = msg != NULL ? Py_BuildValue("(iN)", ENOSPC, msg) : NULL;
                if (exc_args != NULL) {
                    PyErr_SetObject(PyExc_OSError, exc_args);
                    Py_DECREF(exc_args);
                }
                return NULL;
            }
            errno = e;
            return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
        }
    }
    else {
        struct stat stt;
        if (fstat(fd, &stt) < 0) {
            int e = errno;
            close(fd);
            errno = e;
            return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
        }
        map_size = (size_t)stt.st_size;
        if (map_size < header + 64) {
            close(fd);
            return PyErr_Format(PyExc_ValueError, "%R is not a gilfree ProcessChannel", name);
        }
    }
    void *mem = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (mem == MAP_FAILED) {
        if (create) {
            shm_unlink(cname);
        }
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
    }
    gf_pc_shared *sh = (gf_pc_shared *)mem;
    if (create) {
        if (init_shared(sh, capacity, ring) < 0) {
            munmap(mem, map_size);
            shm_unlink(cname);
            return PyErr_NoMemory();
        }
    }
    else {
        /* The layout is checked once, here, against the size of the mapping, and kept in the handle: no
         * later read of these fields from shared memory is trusted. (ring_size is compared with what the
         * mapping holds after our own header size, so no sum can wrap around.) */
        uint64_t ring_size = __atomic_load_n(&sh->ring_size, __ATOMIC_ACQUIRE);
        uint64_t cap = __atomic_load_n(&sh->capacity, __ATOMIC_ACQUIRE);
        if (__atomic_load_n(&sh->magic, __ATOMIC_ACQUIRE) != PC_MAGIC || sh->version != PC_VERSION ||
            sh->ring_off != header || ring_size != map_size - header || ring_size < 64 || (ring_size & 7) != 0 ||
            cap < 1 || cap > ((uint64_t)1 << 40)) {
            munmap(mem, map_size);
            return PyErr_Format(PyExc_ValueError, "%R is not a gilfree ProcessChannel (or another version's, "
                                "or its header is corrupt)", name);
        }
        ring = ring_size;
        capacity = cap;
    }
    ProcChanObject *self = (ProcChanObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        munmap(mem, map_size);
        if (create) {
            shm_unlink(cname);
        }
        return NULL;
    }
    self->st = st;
    self->sh = sh;
    self->map_size = map_size;
    self->ring = (unsigned char *)mem + header;
    self->ring_size = ring;
    self->capacity = capacity;
    self->name = Py_NewRef(name);
    /* An attaching handle takes over the reference its pickle held (add_ref): refs is not changed here. */
    return (PyObject *)self;
}

static void
pc_dealloc(PyObject *op)
{
    ProcChanObject *self = PC_CAST(op);
    PyTypeObject *tp = Py_TYPE(op);
    if (!__atomic_load_n(&self->released, __ATOMIC_SEQ_CST)) { /* the Python layer releases explicitly */
        PyObject *r = pc_release_impl(self, PC_UNMAP);
        if (r == NULL) {
            PyErr_WriteUnraisable(op);
        }
        Py_XDECREF(r);
    }
    Py_CLEAR(self->name);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
pc_get_name(PyObject *op, void *Py_UNUSED(closure))
{
    return Py_NewRef(PC_CAST(op)->name);
}

static PyObject *
pc_get_released(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(__atomic_load_n(&PC_CAST(op)->released, __ATOMIC_SEQ_CST));
}

static PyMethodDef pc_methods[] = {
    {"send_bytes", (PyCFunction)(void (*)(void))pc_send_bytes, METH_VARARGS | METH_KEYWORDS,
     "send_bytes(data, timeout=None, nowait=False)"},
    {"recv_bytes", (PyCFunction)(void (*)(void))pc_recv_bytes, METH_VARARGS | METH_KEYWORDS,
     "recv_bytes(timeout=None, nowait=False)"},
    {"recv_bytes_into", (PyCFunction)(void (*)(void))pc_recv_bytes_into, METH_VARARGS | METH_KEYWORDS,
     "recv_bytes_into(buffer, timeout=None, nowait=False)"},
    {"send_obj", (PyCFunction)(void (*)(void))pc_send_obj, METH_VARARGS | METH_KEYWORDS,
     "send_obj(value, timeout=None, nowait=False)"},
    {"recv_obj", (PyCFunction)(void (*)(void))pc_recv_obj, METH_VARARGS | METH_KEYWORDS,
     "recv_obj(timeout=None, nowait=False)"},
    {"send_objs", (PyCFunction)(void (*)(void))pc_send_objs, METH_VARARGS | METH_KEYWORDS,
     "send_objs(values: tuple, start, timeout=None) -> how many of values[start:] were sent (>= 1)"},
    {"recv_objs", (PyCFunction)(void (*)(void))pc_recv_objs, METH_VARARGS | METH_KEYWORDS,
     "recv_objs(max_items, timeout=None, nowait=False) -> 1 to max_items values"},
    {"close", pc_close, METH_NOARGS, "close()"},
    {"release", pc_release, METH_VARARGS,
     "release(mode=0) -> bool: unmap; 1: also drop this handle's reference and remove the name if it was the "
     "last; 2: drop it and remove the name anyway. True if the name was removed."},
    {"add_ref", pc_add_ref, METH_NOARGS, "add_ref(): a pickled handle is in flight (see release)"},
    {"count", pc_len, METH_NOARGS, "count() -> messages waiting"},
    {"state", pc_state, METH_NOARGS, "state() -> dict"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef pc_getset[] = {
    {"name", pc_get_name, NULL, "The shared-memory object's name.", NULL},
    {"released", pc_get_released, NULL, "True once this handle was released.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot pc_slots[] = {
    {Py_tp_doc, "The shared-memory core of gilfree.ProcessChannel (bytes in, bytes out)."},
    {Py_tp_new, pc_new},
    {Py_tp_dealloc, pc_dealloc},
    {Py_tp_methods, pc_methods},
    {Py_tp_getset, pc_getset},
    {0, NULL},
};

static PyType_Spec pc_spec = {
    .name = "gilfree._core._ProcChan",
    .basicsize = sizeof(ProcChanObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = pc_slots,
};

int
gf_procchan_setup(PyObject *module, gf_state *st)
{
    PyObject *tp = PyType_FromModuleAndSpec(module, &pc_spec, NULL);
    if (tp == NULL) {
        return -1;
    }
    int rc = PyModule_AddObjectRef(module, "_ProcChan", tp);
    Py_DECREF(tp);
    return rc;
}
