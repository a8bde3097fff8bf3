/* ring.h — the fast path of a bounded channel: a lock-free ring of slots (Vyukov's bounded MPMC queue, in
 * the form of crossbeam-channel's array flavour), which sends and receives use without the channel's lock
 * as long as nobody is parked on the channel.
 *
 * Layout: `head` and `tail` on cache lines of their own, then `cap` slots of {stamp, value}. A position is
 * lap * one_lap + index (index < cap); one_lap = 4 * B, B = next power of two > cap, so the two bits B and
 * 2B between the index and the lap are free for flags:
 *     tail: GF_RING_SLOW (B)  — take the lock: a waiter is parked, or values put back wait in front;
 *           GF_RING_CLOSED (2B) — closed: no lock-free send succeeds any more;
 *     head: GF_RING_SLOW (B)  — the same condition, for receivers.
 * A slot's stamp says whose turn it is: stamp == position p means free for the send at p; p + 1 means it
 * holds the value sent at p; a receive at p stores p + one_lap (free for the send one lap later).
 *
 * Send at tail position p: if the slot's stamp is p, claim the position with one CAS of tail (p -> next),
 * write the value, then publish it by storing stamp = p + 1 (release). Receive at head position p: if the
 * stamp is p + 1, claim with one CAS of head, read the value, release the slot with stamp = p + one_lap
 * (release). The stamp's acquire load pairs with those release stores: a receiver that sees p + 1 sees the
 * value; a sender that sees p sees the slot's previous value already read. Full: the slot at tail still
 * holds last lap's value and head is exactly one lap behind; empty: the slot at head is free for this lap and
 * tail == head. A position claimed but not yet published or released (a peer between its CAS and its stamp
 * store: a few instructions, while attached) is waited out with a short spin.
 *
 * Batches (send_many / recv_many) claim a run of k positions with one CAS, then fill or empty the k slots
 * in order, waiting out any that a peer has claimed but not yet finished.
 *
 * Memory-ordering argument for parking (the channel keeps Go's parked path, under its lock):
 *   - The flags live in the same words the lock-free operations CAS. Setting one is an atomic RMW of that
 *     word, so every lock-free CAS is ordered before or after it: before, and the operation's position is
 *     already counted in head/tail; after, and the CAS fails (the word changed), the operation reloads,
 *     sees the flag and takes the lock instead.
 *   - A thread that is about to park queues its waiter and sets GF_RING_SLOW on tail and head (under the
 *     channel's lock, all sequentially consistent). From then on head and tail change only under the lock:
 *     the count it computes from them is exact, except that positions claimed just before may still be
 *     being written or read, which it waits out. (So gf_ring_count is exact for a holder of the lock once
 *     SLOW is set; without SLOW it is a snapshot of one instant at best, clamped to cap, and a send decides
 *     "full" only from the stamps, in gf_ring_push, never from that count.) A receiver that finds a value, or a sender that finds a
 *     free slot, completes its own operation instead of sleeping. So a lock-free send can never leave a
 *     value beside a sleeping receiver, nor a lock-free receive a free slot beside a sleeping sender.
 *   - While SLOW is set every operation takes the lock, where parked waiters are served in FIFO order, as
 *     without this ring: a value goes straight to the first parked receiver, a freed slot to the first
 *     parked sender. The unlock that leaves no waiter (and nothing put back) clears SLOW.
 *   - close() sets GF_RING_CLOSED on tail (under the lock): a send that claimed its position before is a
 *     send before the close, and receivers still drain it; later lock-free sends fail and raise.
 * Under the GIL an attached thread is never interrupted inside these functions, so the waits for a peer's
 * unfinished position only ever spin without the GIL (free-threaded builds), and briefly.
 */
#ifndef GILFREE_RING_H
#define GILFREE_RING_H

#include "gilfree.h"
#include "park.h"

#include <sched.h>
#include <stddef.h>
#include <stdint.h>

/* Larger bounded channels keep the locked ring, which grows on demand (this one is allocated whole). */
#define GF_RING_MAX_CAP ((Py_ssize_t)1 << 16)

typedef struct {
    size_t stamp;        /* atomic */
    PyObject *value;     /* owned while the stamp says it holds a value */
} gf_slot;

typedef struct gf_ring {
    size_t head;         /* atomic: position | GF_RING_SLOW */
    char pad_head[64 - sizeof(size_t)];
    size_t tail;         /* atomic: position | GF_RING_SLOW | GF_RING_CLOSED */
    char pad_tail[64 - sizeof(size_t)];
    size_t cap;          /* slots */
    size_t idx_mask;     /* B - 1 */
    size_t slow;         /* B */
    size_t closed;       /* 2B */
    size_t flags;        /* 3B */
    size_t one_lap;      /* 4B */
    unsigned lap_shift;  /* log2(one_lap) */
    gf_slot slots[];
} gf_ring;

enum { GF_RING_OK = 0, GF_RING_FULL = 1, GF_RING_EMPTY = 1, GF_RING_FLAGGED = 2 };

/* NULL if out of memory (nothing raised). cap in [1, GF_RING_MAX_CAP]. */
gf_ring *gf_ring_new(size_t cap);
void gf_ring_free(gf_ring *r);

static inline size_t
gf_ring_load(const size_t *word)
{
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

/* The position after p. */
static inline size_t
gf_ring_next(const gf_ring *r, size_t p)
{
    return (p & r->idx_mask) + 1 < r->cap ? p + 1 : (p & ~(r->one_lap - 1)) + r->one_lap;
}

/* A position as a linear count (laps * cap + index), and back. */
static inline size_t
gf_ring_lin(const gf_ring *r, size_t p)
{
    return (p >> r->lap_shift) * r->cap + (p & r->idx_mask);
}

static inline size_t
gf_ring_pos(const gf_ring *r, size_t lin)
{
    return ((lin / r->cap) << r->lap_shift) + lin % r->cap;
}

/* Values in the ring (counting positions claimed by a send that is still writing), at one instant:
 * 0 <= result <= cap. head and tail are two words, read one after the other; while lock-free peers move
 * both, a head read early and a tail read late would count values received in between twice (up to 8 for a
 * ring of 1 was seen). So tail is read before and after head: if it did not move, the pair (head, tail) held
 * together at the moment head was read (positions only grow), and the count is exact for that instant.
 * After a few tries it settles for a clamped count, which only a caller that holds the lock with SLOW set
 * (no lock-free peer moves head or tail then) may treat as exact; with peers running lock-free, a "full"
 * from this count is advisory, and gf_ring_push's stamp check decides. */
static inline size_t
gf_ring_count(const gf_ring *r)
{
    size_t h, t = gf_ring_load(&r->tail) & ~r->flags;
    for (int tries = 0;; tries++) {
        h = gf_ring_load(&r->head) & ~r->flags;
        size_t t2 = gf_ring_load(&r->tail) & ~r->flags;
        if (t2 == t || tries >= 8) {
            t = t2;
            break;
        }
        t = t2;
    }
    size_t lt = gf_ring_lin(r, t), lh = gf_ring_lin(r, h);
    size_t n = lt > lh ? lt - lh : 0;
    return n < r->cap ? n : r->cap;
}

/* Back off inside a wait for a peer: pause, then yield the CPU (the peer may have been preempted). */
static inline void
gf_ring_backoff(unsigned *spins)
{
    if (++*spins < 1024) {
        gf_cpu_relax();
    }
    else {
        sched_yield();
    }
}

/* Send v (an owned reference, which moves in on GF_RING_OK). block_flags: the tail flags that send it to
 * the lock instead (GF_RING_FLAGGED): the fast path passes r->flags; the holder of the channel's lock
 * passes 0, and must itself have checked that the channel is not closed. GF_RING_FULL: no room. */
static inline int
gf_ring_push(gf_ring *r, PyObject *v, size_t block_flags)
{
    size_t t = __atomic_load_n(&r->tail, __ATOMIC_RELAXED);
    unsigned spins = 0;
    for (;;) {
        if (t & block_flags) {
            return GF_RING_FLAGGED;
        }
        size_t p = t & ~r->flags;
        gf_slot *s = &r->slots[p & r->idx_mask];
        size_t stamp = __atomic_load_n(&s->stamp, __ATOMIC_ACQUIRE);
        if (stamp == p) {
            if (__atomic_compare_exchange_n(&r->tail, &t, (t & r->flags) | gf_ring_next(r, p), 1,
                                            __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
                s->value = v;
                __atomic_store_n(&s->stamp, p + 1, __ATOMIC_RELEASE);
                return GF_RING_OK;
            }
            continue; /* t reloaded by the failed CAS */
        }
        if (stamp + r->one_lap == p + 1) { /* the slot still holds last lap's value: full? */
            size_t h = __atomic_load_n(&r->head, __ATOMIC_SEQ_CST) & ~r->flags;
            if (h + r->one_lap == p) {
                return GF_RING_FULL;
            }
        }
        gf_ring_backoff(&spins); /* a receive claimed the slot and is still reading it, or tail moved */
        t = __atomic_load_n(&r->tail, __ATOMIC_RELAXED);
    }
}

/* Receive: a reference (moved out), or NULL with *why GF_RING_EMPTY or GF_RING_FLAGGED (head flags in
 * block_flags: the fast path passes r->slow, the lock holder 0). */
static inline PyObject *
gf_ring_pop(gf_ring *r, size_t block_flags, int *why)
{
    size_t h = __atomic_load_n(&r->head, __ATOMIC_RELAXED);
    unsigned spins = 0;
    for (;;) {
        if (h & block_flags) {
            *why = GF_RING_FLAGGED;
            return NULL;
        }
        size_t p = h & ~r->flags;
        gf_slot *s = &r->slots[p & r->idx_mask];
        size_t stamp = __atomic_load_n(&s->stamp, __ATOMIC_ACQUIRE);
        if (stamp == p + 1) {
            if (__atomic_compare_exchange_n(&r->head, &h, (h & r->flags) | gf_ring_next(r, p), 1,
                                            __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
                PyObject *v = s->value;
                s->value = NULL;
                __atomic_store_n(&s->stamp, p + r->one_lap, __ATOMIC_RELEASE);
                return v;
            }
            continue;
        }
        if (stamp == p) { /* free for this lap: empty, unless a send claimed it and is still writing */
            size_t t = __atomic_load_n(&r->tail, __ATOMIC_SEQ_CST) & ~r->flags;
            if (t == p) {
                *why = GF_RING_EMPTY;
                return NULL;
            }
        }
        gf_ring_backoff(&spins);
        h = __atomic_load_n(&r->head, __ATOMIC_RELAXED);
    }
}

/* Send up to n values (owned references; those sent move in) with one claim. Returns how many were sent,
 * 0 if full or flagged (block_flags as for gf_ring_push). */
size_t gf_ring_push_many(gf_ring *r, PyObject *const *vs, size_t n, size_t block_flags);
/* Receive up to n values into out (moved out) with one claim; 0 if empty or flagged. */
size_t gf_ring_pop_many(gf_ring *r, PyObject **out, size_t n, size_t block_flags);

/* Set / clear flags on tail and head (RMW, sequentially consistent). Under the channel's lock. */
static inline void
gf_ring_set(gf_ring *r, size_t tail_flags, size_t head_flags)
{
    if (tail_flags) {
        __atomic_fetch_or(&r->tail, tail_flags, __ATOMIC_SEQ_CST);
    }
    if (head_flags) {
        __atomic_fetch_or(&r->head, head_flags, __ATOMIC_SEQ_CST);
    }
}

static inline void
gf_ring_clear(gf_ring *r, size_t tail_flags, size_t head_flags)
{
    if (tail_flags) {
        __atomic_fetch_and(&r->tail, ~tail_flags, __ATOMIC_SEQ_CST);
    }
    if (head_flags) {
        __atomic_fetch_and(&r->head, ~head_flags, __ATOMIC_SEQ_CST);
    }
}

/* Visit / take every value in the ring, with no operation in progress (the GC, dealloc). */
int gf_ring_traverse(gf_ring *r, visitproc visit, void *arg);

#endif
