/* ring.c — the lock-free ring of a bounded channel (see ring.h for the protocol and its ordering
 * argument): allocation, the batched claims, and the GC's walk. */
#include "ring.h"

#include <stdlib.h>
#include <string.h>

gf_ring *
gf_ring_new(size_t cap)
{
    size_t b = 1;
    while (b <= cap) {
        b <<= 1;
    }
    gf_ring *r = NULL;
    size_t size = sizeof(gf_ring) + cap * sizeof(gf_slot);
    if (posix_memalign((void **)&r, 64, size) != 0) {
        return NULL;
    }
    memset(r, 0, size);
    r->cap = cap;
    r->idx_mask = b - 1;
    r->slow = b;
    r->closed = b << 1;
    r->flags = r->slow | r->closed;
    r->one_lap = b << 2;
    r->lap_shift = 0;
    while (((size_t)1 << r->lap_shift) < r->one_lap) {
        r->lap_shift++;
    }
    for (size_t i = 0; i < cap; i++) {
        r->slots[i].stamp = i;
    }
    return r;
}

void
gf_ring_free(gf_ring *r)
{
    free(r);
}

/* Wait until the slot at position q has stamp `want` (a peer finishing the position it claimed). */
static inline gf_slot *
wait_stamp(gf_ring *r, size_t q, size_t want)
{
    gf_slot *s = &r->slots[q & r->idx_mask];
    unsigned spins = 0;
    while (__atomic_load_n(&s->stamp, __ATOMIC_ACQUIRE) != want) {
        gf_ring_backoff(&spins);
    }
    return s;
}

size_t
gf_ring_push_many(gf_ring *r, PyObject *const *vs, size_t n, size_t block_flags)
{
    size_t t = __atomic_load_n(&r->tail, __ATOMIC_RELAXED);
    for (;;) {
        if (t & block_flags) {
            return 0;
        }
        size_t p = t & ~r->flags;
        size_t h = __atomic_load_n(&r->head, __ATOMIC_SEQ_CST) & ~r->flags;
        size_t lp = gf_ring_lin(r, p), lh = gf_ring_lin(r, h);
        if (lh > lp) { /* tail moved on since we read it */
            t = __atomic_load_n(&r->tail, __ATOMIC_RELAXED);
            continue;
        }
        size_t room = r->cap - (lp - lh), k = n < room ? n : room;
        if (k == 0) {
            return 0;
        }
        /* Claim p .. p+k-1: head is past every one of their previous laps' values (room), so each slot
         * is free or being freed by a receive that claimed it. */
        if (__atomic_compare_exchange_n(&r->tail, &t, (t & r->flags) | gf_ring_pos(r, lp + k), 1,
                                        __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
            for (size_t i = 0; i < k; i++) {
                size_t q = gf_ring_pos(r, lp + i);
                gf_slot *s = wait_stamp(r, q, q);
                s->value = vs[i];
                __atomic_store_n(&s->stamp, q + 1, __ATOMIC_RELEASE);
            }
            return k;
        }
    }
}

size_t
gf_ring_pop_many(gf_ring *r, PyObject **out, size_t n, size_t block_flags)
{
    size_t h = __atomic_load_n(&r->head, __ATOMIC_RELAXED);
    for (;;) {
        if (h & block_flags) {
            return 0;
        }
        size_t p = h & ~r->flags;
        size_t t = __atomic_load_n(&r->tail, __ATOMIC_SEQ_CST) & ~r->flags;
        size_t lp = gf_ring_lin(r, p), lt = gf_ring_lin(r, t);
        if (lt < lp) {
            h = __atomic_load_n(&r->head, __ATOMIC_RELAXED);
            continue;
        }
        size_t avail = lt - lp, k = n < avail ? n : avail;
        if (k == 0) {
            return 0;
        }
        /* Claim p .. p+k-1: every one was claimed by a send (tail is past it), which publishes it soon. */
        if (__atomic_compare_exchange_n(&r->head, &h, (h & r->flags) | gf_ring_pos(r, lp + k), 1,
                                        __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
            for (size_t i = 0; i < k; i++) {
                size_t q = gf_ring_pos(r, lp + i);
                gf_slot *s = wait_stamp(r, q, q + 1);
                out[i] = s->value;
                s->value = NULL;
                __atomic_store_n(&s->stamp, q + r->one_lap, __ATOMIC_RELEASE);
            }
            return k;
        }
    }
}

int
gf_ring_traverse(gf_ring *r, visitproc visit, void *arg)
{
    size_t h = gf_ring_load(&r->head) & ~r->flags, t = gf_ring_load(&r->tail) & ~r->flags;
    for (size_t l = gf_ring_lin(r, h), end = gf_ring_lin(r, t); l < end; l++) {
        size_t q = gf_ring_pos(r, l);
        gf_slot *s = &r->slots[q & r->idx_mask];
        if (__atomic_load_n(&s->stamp, __ATOMIC_ACQUIRE) == q + 1) {
            Py_VISIT(s->value);
        }
    }
    return 0;
}
