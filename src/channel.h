/* channel.h — Go-style channels: the object, its non-blocking core operations, and the engine that every
 * blocking operation (send, recv, select) runs.
 *
 * The core operations run with the channel's lock held and mirror each other, as Go's chan.go does:
 *     send: closed -> a parked receiver: hand the value over -> room in the buffer -> would block
 *     recv: a buffered value (then refill from a parked sender) -> a parked sender: take its value
 *           -> closed -> would block
 * They never call Python, never wait for the GIL, never allocate except to grow an unbounded buffer.
 */
#ifndef GILFREE_CHANNEL_H
#define GILFREE_CHANNEL_H

#include "gilfree.h"
#include "park.h"
#include "ring.h"

typedef struct ChannelObject {
    PyObject_HEAD
    gf_state *st;           /* module state (the type keeps the module alive) */
    /* lock guards every field below. Taken by attached threads only, for short sections that call no
     * Python and never wait for the GIL, so waiting for it while attached cannot deadlock. Several channel
     * locks are taken together only by select, in address order. */
    pthread_mutex_t lock;
    int lock_init;
    Py_ssize_t capacity;    /* 0 unbuffered, > 0 bounded, -1 unbounded */
    PyObject **buf;         /* ring of owned references; size bufsize, a power of two, or NULL. With `ring`:
                               only the values put back in front (they come before the ring's) */
    Py_ssize_t bufsize;
    Py_ssize_t head;        /* index of the oldest value */
    Py_ssize_t count;       /* values in buf; <= capacity when bounded */
    gf_ring *ring;          /* bounded channels up to GF_RING_MAX_CAP: the lock-free ring (ring.h), which
                               the fast path uses without the lock; NULL otherwise */
    int slow;               /* GF_RING_SLOW is set on ring's head and tail (mirror, under lock) */
    int closed;
    gf_waitq recvq;         /* parked receivers; claimable ones only while count == 0 */
    gf_waitq sendq;         /* parked senders; claimable ones only while the buffer is full */
    PyObject *weakreflist;
} ChannelObject;

/* Results of the core operations and of the engine. */
enum { GF_OK = 0, GF_WOULDBLOCK = 1, GF_CLOSED = 2, GF_NOMEM = 3 };

static inline void gf_chan_lock(ChannelObject *ch) { pthread_mutex_lock(&ch->lock); }

/* Under ch->lock, a channel with a ring: set GF_RING_SLOW (every operation takes the lock) while a waiter
 * is queued or a value put back waits in front, clear it otherwise. */
static inline void
gf_chan_sync_slow(ChannelObject *ch)
{
    int want = ch->recvq.head != NULL || ch->sendq.head != NULL || ch->count > 0;
    if (want != ch->slow) {
        if (want) {
            gf_ring_set(ch->ring, ch->ring->slow, ch->ring->slow);
        }
        else {
            gf_ring_clear(ch->ring, ch->ring->slow, ch->ring->slow);
        }
        ch->slow = want;
    }
}

static inline void
gf_chan_unlock(ChannelObject *ch)
{
    if (ch->ring != NULL) {
        gf_chan_sync_slow(ch);
    }
    pthread_mutex_unlock(&ch->lock);
}

/* Under ch->lock. On GF_OK the owned reference `v` has moved into the channel or to a receiver. */
int gf_chan_try_send(ChannelObject *ch, PyObject *v, gf_wakelist *wl);
/* Under ch->lock. On GF_OK *out is a new (moved) reference. */
int gf_chan_try_recv(ChannelObject *ch, PyObject **out, gf_wakelist *wl);

/* Under ch->lock, right after queueing waiter w (a send case if is_send) on ch: with a ring, announce the
 * waiter to the lock-free operations (GF_RING_SLOW), then complete w's operation at once if a lock-free
 * operation made that possible just before (a value arrived, a slot was freed): see ring.h. Fires only a
 * still pending operation; the caller owns it and holds the lock of every channel it is queued on. */
void gf_chan_after_queue(ChannelObject *ch, gf_waiter *w, int is_send, gf_wakelist *wl);

/* Put a received value back in front of the channel (a parked receiver gets it at once), as if it had
 * never been taken. Locks the channel itself; attached, no lock held. 0 done (the reference moved in),
 * -1 no memory (nothing changed, no exception set). */
int gf_chan_put_back(ChannelObject *ch, PyObject *v);

static inline int
gf_is_channel(gf_state *st, PyObject *op)
{
    return PyObject_TypeCheck(op, st->channel_type);
}

/* Raise ChannelClosed (with .sent = sent when sent >= 0). Returns NULL. */
PyObject *gf_raise_closed(gf_state *st, Py_ssize_t sent);

/* asyncio (asyncop.c): start one send (value) or recv (value NULL) that calls notify once it completes;
 * the methods _async_send(value, notify) and _async_recv(notify). */
PyObject *gf_channel_async_send(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *gf_channel_async_recv(PyObject *self, PyObject *notify);

/* 1 if `bound` is a channel's bound recv, 2 if its bound send (*ch set, borrowed), else 0. */
int gf_channel_case_kind(gf_state *st, PyObject *bound, ChannelObject **ch);

/* ---- the engine (engine.c) ---------------------------------------------------------------------- */

#define GF_SMALL_SELECT 8  /* cases an engine run or a select handles without allocating */

typedef struct gf_case {
    ChannelObject *ch;  /* NULL: a case that is never ready (Go's nil channel), or an fd case */
    PyObject *value;    /* send case: an owned reference, consumed by the engine; NULL for recv */
    int is_send;
    int fd;             /* fd case (netpoll.c): the descriptor polled; -1 otherwise */
    short events;       /* fd case: POLLIN or POLLOUT */
    PyObject *fileobj;  /* fd case: what select returns as its value (borrowed) */
} gf_case;

/* If `arg` is a readable()/writable() case, fill c's fd fields and return 1; else 0. */
int gf_fdcase_fill(gf_state *st, PyObject *arg, gf_case *c);
/* f: an int file descriptor or an object with fileno(): the descriptor, or -1 with TypeError/ValueError. */
int gf_fd_of(PyObject *f);

/* Poller cases (poller.c). gf_poller_fill: if `arg` is a Poller, fill c as an fd case on its epoll
 * descriptor, count the select as one of its users and return 1 (-1 with an exception: closed, forked);
 * else 0. Each filled case is left with gf_poller_leave. gf_poller_harvest: the (f, events) ready now
 * (a list, maybe empty; *woke set when wake() was called), or NULL with an exception. */
int gf_poller_fill(gf_state *st, PyObject *arg, gf_case *c);
void gf_poller_leave(PyObject *poller);
PyObject *gf_poller_harvest(PyObject *poller, int *woke);

typedef struct gf_outcome {
    int index;          /* the case that proceeded (an fd case: value is NULL, the caller returns its object) */
    int closed;         /* it proceeded because its channel is closed (send: nothing was sent) */
    PyObject *value;    /* recv case: the received value (new reference); else NULL */
} gf_outcome;

/* Run one operation over n cases: poll them in random order, else (block) park on all until one
 * proceeds, the deadline passes or a signal handler raises. Consumes every send case's value (delivered,
 * or released). Returns GF_OK with *out filled, GF_WOULDBLOCK when !block and nothing was ready, or -1
 * with an exception set (TimeoutError, the signal handler's exception, MemoryError). */
int gf_engine_run(gf_state *st, gf_case *cases, int n, int block, const gf_deadline *d, gf_outcome *out);


#endif
