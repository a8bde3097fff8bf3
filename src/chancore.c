/* chancore.c — a channel's buffer and its core operations, under the channel's lock: what the engine
 * (engine.c), the asyncio operations (asyncop.c) and the one-channel calls of channel.c build on. It calls
 * only the waiter queues (park.h) and the lock-free ring (ring.h): nothing calls back.
 *
 * The core operations mirror each other, as Go's chan.go does:
 *     send: closed -> a parked receiver: hand the value over -> room in the buffer -> would block
 *     recv: a buffered value (then refill from a parked sender) -> a parked sender: take its value
 *           -> closed -> would block
 * A bounded channel's buffer is its lock-free ring (ring.h) plus the values put back in front (ch->buf);
 * an unbounded one's is ch->buf, a ring that grows and shrinks.
 */
#include "channel.h"

#include <stddef.h>
#include <string.h>

/* ---- the ring buffer (under ch->lock) ----------------------------------------------------------- */

/* An unbounded channel's ring (a bounded one never holds more than its capacity) never shrinks below this
 * many slots (8 KiB: traffic that stays under that never resizes); it shrinks to half once an eighth or less is in use, so a
 * drained burst gives its memory back, and the gap between growing (full) and shrinking (an eighth) keeps
 * a channel whose length swings within a factor of four from resizing at all. */
#define RING_MIN 1024

static int
ring_resize(ChannelObject *ch, Py_ssize_t newsize)
{
    GF_ASSERT(newsize >= ch->count);
    PyObject **nb = (PyObject **)PyMem_RawMalloc((size_t)newsize * sizeof(PyObject *));
    if (nb == NULL) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < ch->count; i++) {
        nb[i] = ch->buf[(ch->head + i) & (ch->bufsize - 1)];
    }
    PyMem_RawFree(ch->buf);
    ch->buf = nb;
    ch->bufsize = newsize;
    ch->head = 0;
    return 0;
}

static int
ring_grow(ChannelObject *ch)
{
    Py_ssize_t newsize = ch->bufsize ? ch->bufsize * 2 : 8;
    if (newsize > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(PyObject *)) {
        return -1;
    }
    return ring_resize(ch, newsize);
}

static inline int
ring_push(ChannelObject *ch, PyObject *v)
{
    if (ch->count == ch->bufsize && ring_grow(ch) < 0) {
        return -1;
    }
    ch->buf[(ch->head + ch->count) & (ch->bufsize - 1)] = v;
    ch->count++;
    GF_ASSERT(ch->count <= ch->bufsize);
    return 0;
}

/* Put a value back in front of the others (a cancelled async receiver returning what it took). */
static inline int
ring_push_front(ChannelObject *ch, PyObject *v)
{
    if (ch->count == ch->bufsize && ring_grow(ch) < 0) {
        return -1;
    }
    ch->head = (ch->head - 1) & (ch->bufsize - 1);
    ch->buf[ch->head] = v;
    ch->count++;
    return 0;
}

static inline PyObject *
ring_pop(ChannelObject *ch)
{
    GF_ASSERT(ch->count > 0 && ch->count <= ch->bufsize);
    PyObject *v = ch->buf[ch->head];
    ch->head = (ch->head + 1) & (ch->bufsize - 1);
    ch->count--;
    if (ch->capacity < 0 && ch->bufsize > RING_MIN && ch->count <= ch->bufsize / 8) {
        (void)ring_resize(ch, ch->bufsize / 2); /* no memory: keep the larger ring */
    }
    return v;
}

/* ---- core operations (under ch->lock) ----------------------------------------------------------- */

int
gf_chan_try_send(ChannelObject *ch, PyObject *v, gf_wakelist *wl)
{
    if (ch->closed) {
        return GF_CLOSED;
    }
    if (gf_waitq_fire_first(&ch->recvq, 0, v, wl) != NULL) {
        return GF_OK;
    }
    GF_ASSERT(ch->recvq.head == NULL); /* fire_first above unlinked every stale waiter */
    if (ch->ring != NULL) {
        /* Values put back in front (ch->count > 0) take room too; then SLOW is set and the count is exact.
         * Otherwise lock-free peers may be moving head and tail: the ring's stamps decide. */
        if (ch->count > 0 && ch->count + (Py_ssize_t)gf_ring_count(ch->ring) >= ch->capacity) {
            return GF_WOULDBLOCK;
        }
        return gf_ring_push(ch->ring, v, 0) == GF_RING_OK ? GF_OK : GF_WOULDBLOCK;
    }
    if (ch->capacity < 0 || ch->count < ch->capacity) {
        return ring_push(ch, v) < 0 ? GF_NOMEM : GF_OK;
    }
    return GF_WOULDBLOCK;
}

/* A channel with a ring, under its lock: take the oldest buffered value (those put back first), or NULL. */
static inline PyObject *
ring_take(ChannelObject *ch)
{
    if (ch->count > 0) {
        return ring_pop(ch);
    }
    int why;
    return gf_ring_pop(ch->ring, 0, &why);
}

int
gf_chan_try_recv(ChannelObject *ch, PyObject **out, gf_wakelist *wl)
{
    gf_waiter *w;
    if (ch->ring != NULL) {
        PyObject *v = ring_take(ch);
        if (v != NULL) {
            *out = v;
            /* A slot is free: move the first parked sender's value in, keeping its place in line. While a
             * sender is parked no lock-free send runs (GF_RING_SLOW), so the slot is still free. */
            if (ch->count + (Py_ssize_t)gf_ring_count(ch->ring) < ch->capacity &&
                (w = gf_waitq_fire_first(&ch->sendq, 0, NULL, wl)) != NULL) {
                int rc = gf_ring_push(ch->ring, w->value, 0);
                GF_ASSERT(rc == GF_RING_OK);
                (void)rc;
                w->value = NULL;
            }
            return GF_OK;
        }
    }
    else if (ch->count > 0) {
        *out = ring_pop(ch);
        /* A slot is free: move the first parked sender's value in, keeping its place in line. */
        if (ch->count < ch->capacity && (w = gf_waitq_fire_first(&ch->sendq, 0, NULL, wl)) != NULL) {
            (void)ring_push(ch, w->value); /* cannot fail: a slot was just freed */
            w->value = NULL;
        }
        return GF_OK;
    }
    if ((w = gf_waitq_fire_first(&ch->sendq, 0, NULL, wl)) != NULL) {
        *out = w->value;
        w->value = NULL;
        return GF_OK;
    }
    return ch->closed ? GF_CLOSED : GF_WOULDBLOCK;
}

void
gf_chan_after_queue(ChannelObject *ch, gf_waiter *w, int is_send, gf_wakelist *wl)
{
    gf_ring *r = ch->ring;
    if (r == NULL) {
        return;
    }
    if (!ch->slow) {
        gf_ring_set(r, r->slow, r->slow);
        ch->slow = 1;
    }
    /* From here on head and tail move only under this lock; positions claimed before may still be in
     * progress, and gf_ring_pop / gf_ring_push wait those out. */
    if (atomic_load_explicit(&w->sel->state, memory_order_acquire) != GF_PENDING) {
        return; /* the caller's operation already fired (on an earlier case of its select) */
    }
    if (!is_send) {
        if (ch->count > 0 || gf_ring_count(r) == 0) {
            return;
        }
        int why;
        PyObject *v = gf_ring_pop(r, 0, &why);
        if (v == NULL) {
            return;
        }
        if (!gf_sel_claim(w->sel)) { /* cannot happen: the caller owns the operation and holds the locks */
            GF_ASSERT(0);
            (void)ring_push_front(ch, v);
            return;
        }
        gf_waitq_unlink(&ch->recvq, w);
        gf_sel_fire(w->sel, w->index, 0, v, wl);
    }
    else {
        if (ch->closed || ch->count + (Py_ssize_t)gf_ring_count(r) >= ch->capacity) {
            return;
        }
        if (!gf_sel_claim(w->sel)) {
            GF_ASSERT(0);
            return;
        }
        int rc = gf_ring_push(r, w->value, 0);
        GF_ASSERT(rc == GF_RING_OK);
        (void)rc;
        w->value = NULL;
        gf_waitq_unlink(&ch->sendq, w);
        gf_sel_fire(w->sel, w->index, 0, NULL, wl);
    }
}

int
gf_chan_put_back(ChannelObject *ch, PyObject *v)
{
    gf_wakelist wl;
    gf_wakelist_init(&wl);
    int rc = 0;
    gf_chan_lock(ch);
    Py_ssize_t buffered = ch->count + (ch->ring != NULL ? (Py_ssize_t)gf_ring_count(ch->ring) : 0);
    if (buffered > 0 || gf_waitq_fire_first(&ch->recvq, 0, v, &wl) == NULL) {
        if (ch->ring != NULL && !ch->slow) { /* before it is there: no lock-free receive may pass it */
            gf_ring_set(ch->ring, ch->ring->slow, ch->ring->slow);
            ch->slow = 1;
        }
        if (ring_push_front(ch, v) < 0) {
            rc = -1;
        }
    }
    gf_chan_unlock(ch);
    gf_wakelist_run(&wl);
    return rc;
}

