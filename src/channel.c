/* channel.c — gilfree._core.Channel: a Go channel for Python threads and coroutines.
 *
 * Capacity 0 is a rendezvous (a send completes only when a receiver takes the value), N > 0 a bounded
 * buffer (send blocks while it is full: backpressure), -1 (Python None) an unbounded one. Blocked senders
 * and receivers wait in FIFO queues and are served first come, first served.
 *
 * The fast path: a bounded channel (capacity up to GF_RING_MAX_CAP) sends and receives through its lock-free
 * ring (ring.h) without taking the lock, as long as nobody is parked on it; send_many / recv_many claim
 * runs of slots. Everything else takes the lock and the core operations (chancore.c); a call that must
 * wait runs the engine (engine.c), which parks with the GIL released.
 *
 * Invariants (checked by the tests through behaviour; each holds whenever ch->lock is free):
 *   - Buffered values = those put back in front (buf) + the ring's; at most capacity when bounded, except
 *     for values put back in front by cancelled async receivers (each at most one over).
 *   - A claimable receiver is queued only while nothing is buffered; a claimable sender only while the
 *     buffer is full (for capacity 0: always). With a ring, while any waiter is queued (or a value put back
 *     waits) GF_RING_SLOW is set and no lock-free operation runs (ring.h).
 *   - Once closed, never open again; no new waiter is queued on a closed channel.
 *   - Every PyObject* in a buffer is an owned reference.
 *
 * _AsyncOp, one pending asyncio send or recv, lives in asyncop.c.
 */
#include "channel.h"

#include <stddef.h>
#include <string.h>
#include <time.h>
#include <structmember.h>

#define CHANNEL_CAST(op) ((ChannelObject *)(op))

/* ---- errors ------------------------------------------------------------------------------------- */

PyObject *
gf_raise_closed(gf_state *st, Py_ssize_t sent)
{
    PyObject *exc = PyObject_CallFunction(st->ChannelClosed, "s", "channel is closed");
    if (exc == NULL) {
        return NULL;
    }
    if (sent >= 0) {
        PyObject *n = PyLong_FromSsize_t(sent);
        if (n == NULL || PyObject_SetAttrString(exc, "sent", n) < 0) {
            Py_XDECREF(n);
            Py_DECREF(exc);
            return NULL;
        }
        Py_DECREF(n);
    }
    PyErr_SetObject(st->ChannelClosed, exc);
    Py_DECREF(exc);
    return NULL;
}

/* Attach `sent` to the exception being raised (send_many's count of values delivered). */
static void
annotate_sent(Py_ssize_t sent)
{
    PyObject *value = gf_err_take();
    if (value != NULL) {
        PyObject *n = PyLong_FromSsize_t(sent);
        if (n == NULL || PyObject_SetAttrString(value, "sent", n) < 0) {
            PyErr_Clear();
        }
        Py_XDECREF(n);
    }
    gf_err_restore(value);
}

static PyObject *channel_send(PyObject *, PyObject *const *, Py_ssize_t, PyObject *);
static PyObject *channel_recv(PyObject *, PyObject *const *, Py_ssize_t, PyObject *);

/* ---- spinning before parking ------------------------------------------------------------------- */

/* A blocking send that finds the ring full (a receive that finds it empty) retries the lock-free operation
 * for up to GF_RING_SPIN_NS before it parks, when threads run in parallel (a free-threaded build): a
 * running peer usually makes room (a value) within that, and parking costs both sides far more (the
 * parker's waiter sends every operation through the lock until it is woken). With the GIL the peer cannot
 * run while this thread holds it: no spin. */
#ifndef GF_RING_SPIN_NS
#define GF_RING_SPIN_NS 4000
#endif
#ifdef Py_GIL_DISABLED
static inline int64_t
ring_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int
ring_spin_push(gf_ring *r, PyObject *v)
{
    int64_t start = ring_now_ns();
    for (unsigned i = 1;; i++) {
        gf_cpu_relax();
        int rc = gf_ring_push(r, v, r->flags);
        if (rc != GF_RING_FULL) {
            return rc;
        }
        if ((i & 15) == 0 && ring_now_ns() - start > GF_RING_SPIN_NS) {
            return rc;
        }
    }
}

static PyObject *
ring_spin_pop(gf_ring *r)
{
    int64_t start = ring_now_ns();
    for (unsigned i = 1;; i++) {
        gf_cpu_relax();
        int why = GF_RING_FLAGGED;
        PyObject *v = gf_ring_pop(r, r->slow, &why);
        if (v != NULL || why != GF_RING_EMPTY) {
            return v;
        }
        if ((i & 15) == 0 && ring_now_ns() - start > GF_RING_SPIN_NS) {
            return NULL;
        }
    }
}
#else
static inline int
ring_spin_push(gf_ring *r, PyObject *v)
{
    (void)r;
    (void)v;
    return GF_RING_FULL;
}

static inline PyObject *
ring_spin_pop(gf_ring *r)
{
    (void)r;
    return NULL;
}
#endif

/* ---- one-channel operations through the engine ------------------------------------------------- */

/* Send one owned value (consumed). 0 sent; 1 would block (nowait); -1 error (ChannelClosed raised here).
 * Fast path: one lock, no engine, when it can proceed at once. */
static int
channel_send_one(ChannelObject *ch, PyObject *value, int block, const gf_deadline *d)
{
    if (ch->ring != NULL) {
        int rc = gf_ring_push(ch->ring, value, ch->ring->flags);
        if (rc == GF_RING_FULL && block) {
            rc = ring_spin_push(ch->ring, value);
        }
        if (rc == GF_RING_OK) {
            return 0; /* the fast path: nobody parked, room in the ring */
        }
    }
    gf_wakelist wl;
    gf_wakelist_init(&wl);
    gf_chan_lock(ch);
    int r = gf_chan_try_send(ch, value, &wl);
    gf_chan_unlock(ch);
    if (r == GF_OK) {
        gf_wakelist_run(&wl);
        return 0;
    }
    if (r == GF_WOULDBLOCK && block) {
        gf_case c = {.ch = ch, .value = value, .is_send = 1};
        gf_outcome o;
        r = gf_engine_run(ch->st, &c, 1, block, d, &o); /* consumes value */
        if (r < 0) {
            return -1;
        }
        if (!o.closed) {
            return 0;
        }
        r = GF_CLOSED;
    }
    else {
        Py_DECREF(value);
    }
    switch (r) {
    case GF_WOULDBLOCK:
        return 1;
    case GF_CLOSED:
        gf_raise_closed(ch->st, -1);
        return -1;
    default:
        PyErr_NoMemory();
        return -1;
    }
}

/* Receive one value: a new reference, or NULL with *status GF_WOULDBLOCK (nowait) or GF_CLOSED (closed and
 * drained), no exception set; or NULL with an exception (*status -1). */
static PyObject *
channel_recv_core(ChannelObject *ch, int block, const gf_deadline *d, int *status)
{
    PyObject *v = NULL;
    if (ch->ring != NULL) {
        int why = GF_RING_FLAGGED;
        v = gf_ring_pop(ch->ring, ch->ring->slow, &why);
        if (v == NULL && why == GF_RING_EMPTY && block) {
            v = ring_spin_pop(ch->ring);
        }
        if (v != NULL) { /* the fast path: nobody parked, nothing put back, a value in the ring */
            *status = GF_OK;
            return v;
        }
    }
    gf_wakelist wl;
    gf_wakelist_init(&wl);
    gf_chan_lock(ch);
    int r = gf_chan_try_recv(ch, &v, &wl);
    gf_chan_unlock(ch);
    *status = r;
    if (r == GF_OK) {
        gf_wakelist_run(&wl);
        return v;
    }
    if (r == GF_WOULDBLOCK && block) {
        gf_case c = {.ch = ch, .value = NULL, .is_send = 0};
        gf_outcome o;
        if (gf_engine_run(ch->st, &c, 1, block, d, &o) < 0) {
            *status = -1;
            return NULL;
        }
        *status = o.closed ? GF_CLOSED : GF_OK;
        return o.value;
    }
    return NULL;
}

/* Receive one value: new reference; NULL with *wouldblock = 1 (nowait), or NULL with an exception. */
static PyObject *
channel_recv_one(ChannelObject *ch, int block, const gf_deadline *d, int *wouldblock)
{
    int status;
    PyObject *v = channel_recv_core(ch, block, d, &status);
    *wouldblock = status == GF_WOULDBLOCK;
    if (status == GF_CLOSED) {
        return gf_raise_closed(ch->st, -1);
    }
    return v;
}

int
gf_channel_case_kind(gf_state *st, PyObject *bound, ChannelObject **ch)
{
    if (!PyCFunction_Check(bound)) {
        return 0;
    }
    PyObject *self = PyCFunction_GET_SELF(bound);
    if (self == NULL || !gf_is_channel(st, self)) {
        return 0;
    }
    PyCFunction f = PyCFunction_GET_FUNCTION(bound);
    *ch = CHANNEL_CAST(self);
    if (f == (PyCFunction)(void (*)(void))channel_recv) {
        return 1;
    }
    if (f == (PyCFunction)(void (*)(void))channel_send) {
        return 2;
    }
    return 0;
}

/* ---- Channel type: clear / traverse / dealloc --------------------------------------------------- */

static int
channel_traverse(PyObject *op, visitproc visit, void *arg)
{
    ChannelObject *ch = CHANNEL_CAST(op);
    Py_VISIT(Py_TYPE(op));
    /* No lock: the ring only changes under attached threads, which the GC excludes. */
    for (Py_ssize_t i = 0; i < ch->count; i++) {
        Py_VISIT(ch->buf[(ch->head + i) & (ch->bufsize - 1)]);
    }
    if (ch->ring != NULL) {
        return gf_ring_traverse(ch->ring, visit, arg);
    }
    return 0;
}

/* Take every buffered value out under the lock; release them after. */
static void
channel_drop_buffer(ChannelObject *ch)
{
    if (!ch->lock_init) {
        return;
    }
    gf_chan_lock(ch);
    PyObject **buf = ch->buf;
    Py_ssize_t head = ch->head, count = ch->count, size = ch->bufsize;
    ch->buf = NULL;
    ch->bufsize = ch->head = ch->count = 0;
    gf_chan_unlock(ch);
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_DECREF(buf[(head + i) & (size - 1)]);
    }
    PyMem_RawFree(buf);
    if (ch->ring != NULL) {
        /* Only when the channel is unreachable (tp_clear, dealloc): no operation can be in progress. */
        int why;
        PyObject *v;
        while ((v = gf_ring_pop(ch->ring, 0, &why)) != NULL) {
            Py_DECREF(v);
        }
    }
}

static int
channel_clear(PyObject *op)
{
    channel_drop_buffer(CHANNEL_CAST(op));
    return 0;
}

static void
channel_dealloc(PyObject *op)
{
    ChannelObject *ch = CHANNEL_CAST(op);
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (ch->weakreflist != NULL) {
        PyObject_ClearWeakRefs(op);
    }
    channel_drop_buffer(ch);
    /* No waiter can be queued: each holds a reference to the channel while it waits. */
    if (ch->lock_init) {
        pthread_mutex_destroy(&ch->lock);
    }
    if (ch->ring != NULL) {
        gf_ring_free(ch->ring);
    }
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* ---- Channel.__new__ ---------------------------------------------------------------------------- */

static PyObject *
channel_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"capacity", NULL};
    PyObject *capobj = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:Channel", kwlist, &capobj)) {
        return NULL;
    }
    Py_ssize_t capacity = 0;
    if (capobj == Py_None) {
        capacity = -1;
    }
    else if (capobj != NULL) {
        if (PyBool_Check(capobj) || !PyIndex_Check(capobj)) {
            return PyErr_Format(PyExc_TypeError,
                                "capacity must be a non-negative int or None, not %.100s",
                                Py_TYPE(capobj)->tp_name);
        }
        capacity = PyNumber_AsSsize_t(capobj, PyExc_OverflowError);
        if (capacity == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (capacity < 0) {
            return PyErr_Format(PyExc_ValueError, "capacity must be >= 0 (or None for unbounded), got %zd",
                                capacity);
        }
    }
    PyObject *module = PyType_GetModuleByDef(type, &gf_module_def);
    if (module == NULL) {
        return NULL;
    }
    ChannelObject *ch = (ChannelObject *)type->tp_alloc(type, 0);
    if (ch == NULL) {
        return NULL;
    }
    ch->st = gf_get_state(module);
    if (pthread_mutex_init(&ch->lock, NULL) != 0) {
        Py_DECREF(ch);
        return PyErr_NoMemory();
    }
    ch->lock_init = 1;
    ch->capacity = capacity;
    if (capacity > 0 && capacity <= GF_RING_MAX_CAP) {
        ch->ring = gf_ring_new((size_t)capacity);
        if (ch->ring == NULL) {
            Py_DECREF(ch);
            return PyErr_NoMemory();
        }
    }
    return (PyObject *)ch;
}

/* ---- Channel methods ---------------------------------------------------------------------------- */

static const char *const send_names[] = {"value", "timeout"};
static const char *const recv_names[] = {"timeout"};

static PyObject *
channel_send(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ChannelObject *ch = CHANNEL_CAST(op);
    PyObject *a[2];
    gf_deadline d;
    if (gf_parse_args("send", args, nargs, kwnames, send_names, 1, 2, a) < 0 ||
        gf_deadline_from_timeout(a[1], &d, "timeout") < 0) {
        return NULL;
    }
    if (channel_send_one(ch, Py_NewRef(a[0]), 1, &d) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
channel_send_nowait(PyObject *op, PyObject *value)
{
    ChannelObject *ch = CHANNEL_CAST(op);
    gf_deadline d = {.infinite = 1};
    int r = channel_send_one(ch, Py_NewRef(value), 0, &d);
    if (r < 0) {
        return NULL;
    }
    if (r == 1) {
        PyErr_SetString(ch->st->WouldBlock, "send would block: no receiver waiting and no room");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
channel_recv(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ChannelObject *ch = CHANNEL_CAST(op);
    gf_deadline d = {.infinite = 1};
    int wouldblock;
    if (nargs != 0 || kwnames != NULL) {
        PyObject *a[1];
        if (gf_parse_args("recv", args, nargs, kwnames, recv_names, 0, 1, a) < 0 ||
            gf_deadline_from_timeout(a[0], &d, "timeout") < 0) {
            return NULL;
        }
    }
    return channel_recv_one(ch, 1, &d, &wouldblock);
}

static PyObject *
channel_recv_nowait(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    ChannelObject *ch = CHANNEL_CAST(op);
    gf_deadline d = {.infinite = 1};
    int wouldblock;
    PyObject *v = channel_recv_one(ch, 0, &d, &wouldblock);
    if (v == NULL && wouldblock) {
        PyErr_SetString(ch->st->WouldBlock, "recv would block: nothing buffered and no sender waiting");
    }
    return v;
}

/* Send items[0..n) in order: as many as fit under one lock, blocking (one value) only when full.
 * Returns the count sent; on error (< n) an exception is set, its .sent not yet annotated. */
static Py_ssize_t
send_batch(ChannelObject *ch, PyObject *const *items, Py_ssize_t n, const gf_deadline *d)
{
    Py_ssize_t i = 0;
    while (i < n) {
        if (ch->ring != NULL) { /* the fast path: claim a run of slots with one CAS */
            for (Py_ssize_t j = i; j < n; j++) {
                Py_INCREF(items[j]); /* before a receiver can see them */
            }
            size_t k = gf_ring_push_many(ch->ring, items + i, (size_t)(n - i), ch->ring->flags);
            for (Py_ssize_t j = i + (Py_ssize_t)k; j < n; j++) {
                Py_DECREF(items[j]); /* not sent: the caller still holds them */
            }
            i += (Py_ssize_t)k;
            if (i == n) {
                break;
            }
        }
        gf_wakelist wl;
        gf_wakelist_init(&wl);
        int r = GF_OK;
        PyObject *unsent = NULL;
        gf_chan_lock(ch);
        while (i < n) {
            PyObject *v = items[i];
            Py_INCREF(v);
            r = gf_chan_try_send(ch, v, &wl);
            if (r != GF_OK) {
                unsent = v; /* released after unlocking: no Py_DECREF under a channel lock */
                break;
            }
            i++;
        }
        gf_chan_unlock(ch);
        Py_XDECREF(unsent);
        gf_wakelist_run(&wl);
        if (i == n) {
            break;
        }
        if (r == GF_CLOSED) {
            gf_raise_closed(ch->st, -1);
            return i;
        }
        if (r == GF_NOMEM) {
            PyErr_NoMemory();
            return i;
        }
        /* Full: send the next one blocking, then batch again. */
        if (channel_send_one(ch, Py_NewRef(items[i]), 1, d) < 0) {
            return i;
        }
        i++;
    }
    return i;
}

#define SEND_CHUNK 256

static const char *const send_many_names[] = {"values", "timeout"};

static PyObject *
channel_send_many(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ChannelObject *ch = CHANNEL_CAST(op);
    PyObject *a[2];
    gf_deadline d;
    if (gf_parse_args("send_many", args, nargs, kwnames, send_many_names, 1, 2, a) < 0 ||
        gf_deadline_from_timeout(a[1], &d, "timeout") < 0) {
        return NULL;
    }
    Py_ssize_t sent = 0;
    if (PyTuple_CheckExact(a[0]) || PyList_CheckExact(a[0])) {
        /* A snapshot (free for a tuple): the caller may change a list while we wait for room. */
        PyObject *items = PySequence_Tuple(a[0]);
        if (items == NULL) {
            return NULL;
        }
        Py_ssize_t n = PyTuple_GET_SIZE(items);
        sent = send_batch(ch, &PyTuple_GET_ITEM(items, 0), n, &d);
        Py_DECREF(items);
        if (sent < n) {
            goto error;
        }
        return PyLong_FromSsize_t(sent);
    }
    /* Any other iterable is read a chunk at a time, so an endless generator streams in bounded memory. */
    PyObject *it = PyObject_GetIter(a[0]);
    if (it == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Format(PyExc_TypeError, "send_many() argument 'values' must be iterable, not %.100s",
                         Py_TYPE(a[0])->tp_name);
        }
        return NULL;
    }
    PyObject *chunk[SEND_CHUNK];
    for (;;) {
        Py_ssize_t n = 0;
        PyObject *v = NULL;
        while (n < SEND_CHUNK && (v = PyIter_Next(it)) != NULL) {
            chunk[n++] = v;
        }
        /* The iterator failed: deliver what it yielded before, as a loop of send() calls would, then raise
         * its exception with .sent counting them (unless sending failed first). */
        PyObject *iter_exc = gf_err_take();
        Py_ssize_t k = send_batch(ch, chunk, n, &d);
        for (Py_ssize_t j = 0; j < n; j++) {
            Py_DECREF(chunk[j]);
        }
        sent += k;
        if (k < n) {
            Py_XDECREF(iter_exc);
            Py_DECREF(it);
            goto error;
        }
        if (iter_exc != NULL) {
            gf_err_restore(iter_exc);
            Py_DECREF(it);
            goto error;
        }
        if (n < SEND_CHUNK) {
            break; /* exhausted */
        }
    }
    Py_DECREF(it);
    return PyLong_FromSsize_t(sent);
error:
    annotate_sent(sent);
    return NULL;
}

/* Append up to `want` values that are ready now, RECV_BATCH per lock. -1 on error. */
#define RECV_BATCH 256
static int
take_available(ChannelObject *ch, PyObject *list, Py_ssize_t want)
{
    while (want > 0) {
        PyObject *got[RECV_BATCH];
        Py_ssize_t room = want < RECV_BATCH ? want : RECV_BATCH, ngot = 0;
        if (ch->ring != NULL) { /* the fast path: claim a run of values with one CAS */
            ngot = (Py_ssize_t)gf_ring_pop_many(ch->ring, got, (size_t)room, ch->ring->slow);
        }
        if (ngot == 0) {
            gf_wakelist wl;
            gf_wakelist_init(&wl);
            gf_chan_lock(ch);
            while (ngot < room && gf_chan_try_recv(ch, &got[ngot], &wl) == GF_OK) {
                ngot++;
            }
            gf_chan_unlock(ch);
            gf_wakelist_run(&wl);
        }
        if (ngot > 0) {
            /* The references move into a new list; an empty result list takes that list's items. */
            PyObject *part = PyList_New(ngot);
            if (part != NULL) {
                for (Py_ssize_t k = 0; k < ngot; k++) {
                    PyList_SET_ITEM(part, k, Py_NewRef(got[k]));
                }
                Py_ssize_t len = PyList_GET_SIZE(list);
                int rc = PyList_SetSlice(list, len, len, part);
                Py_DECREF(part);
                if (rc < 0) {
                    part = NULL; /* released above (with the extra references): fall through to the put-back */
                }
                else {
                    for (Py_ssize_t k = 0; k < ngot; k++) {
                        Py_DECREF(got[k]); /* the list holds them now */
                    }
                }
            }
            if (part == NULL) {
                /* MemoryError: nothing taken in this round is dropped; it goes back in front, in order. */
                for (Py_ssize_t k = ngot - 1; k >= 0; k--) {
                    if (gf_chan_put_back(ch, got[k]) < 0) {
                        Py_DECREF(got[k]); /* no memory even for that: cannot be kept */
                    }
                }
                return -1;
            }
        }
        if (ngot < room) {
            break;
        }
        want -= ngot;
    }
    return 0;
}

static const char *const recv_many_names[] = {"max_items", "timeout"};

static PyObject *
channel_recv_many(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ChannelObject *ch = CHANNEL_CAST(op);
    PyObject *a[2];
    gf_deadline d;
    if (gf_parse_args("recv_many", args, nargs, kwnames, recv_many_names, 1, 2, a) < 0) {
        return NULL;
    }
    if (PyBool_Check(a[0]) || !PyLong_Check(a[0])) {
        return PyErr_Format(PyExc_TypeError, "max_items must be an int, not %.100s",
                            Py_TYPE(a[0])->tp_name);
    }
    Py_ssize_t max_items = PyLong_AsSsize_t(a[0]);
    if (max_items == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (max_items < 1) {
        return PyErr_Format(PyExc_ValueError, "max_items must be >= 1, got %zd", max_items);
    }
    if (gf_deadline_from_timeout(a[1], &d, "timeout") < 0) {
        return NULL;
    }
    PyObject *list = PyList_New(0);
    if (list == NULL) {
        return NULL;
    }
    if (take_available(ch, list, max_items) < 0) {
        goto error;
    }
    /* From here on the list holds values taken: an error gives them back (below), in order. */
    if (PyList_GET_SIZE(list) == 0) {
        /* Nothing there: wait for the first value only, then take whatever else has arrived. */
        int wouldblock;
        PyObject *first = channel_recv_one(ch, 1, &d, &wouldblock);
        if (first == NULL) {
            goto error;
        }
        if (PyList_Append(list, first) < 0) {
            if (gf_chan_put_back(ch, first) < 0) {
                Py_DECREF(first);
            }
            goto error;
        }
        Py_DECREF(first);
        if (take_available(ch, list, max_items - 1) < 0) {
            goto error;
        }
    }
    return list;
error:
    /* MemoryError: what the list holds goes back in front of the channel, in order (values of the
     * failing round are already back, behind them). Nothing taken is dropped. */
    for (Py_ssize_t k = PyList_GET_SIZE(list) - 1; k >= 0; k--) {
        PyObject *v = Py_NewRef(PyList_GET_ITEM(list, k));
        if (gf_chan_put_back(ch, v) < 0) {
            Py_DECREF(v);
        }
    }
    Py_DECREF(list);
    return NULL;
}

static PyObject *
channel_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    ChannelObject *ch = CHANNEL_CAST(op);
    gf_wakelist wl;
    gf_wakelist_init(&wl);
    gf_chan_lock(ch);
    if (!ch->closed) {
        ch->closed = 1;
        if (ch->ring != NULL) {
            gf_ring_set(ch->ring, ch->ring->closed, 0); /* lock-free sends stop; receives still drain */
        }
        /* Receivers parked here: the buffer is empty, so each sees the close. Senders keep their value. */
        while (gf_waitq_fire_first(&ch->recvq, 1, NULL, &wl) != NULL) {
        }
        while (gf_waitq_fire_first(&ch->sendq, 1, NULL, &wl) != NULL) {
        }
    }
    gf_chan_unlock(ch);
    gf_wakelist_run(&wl);
    Py_RETURN_NONE;
}

static PyObject *
channel_enter(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(op);
}

static PyObject *
channel_exit(PyObject *op, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs))
{
    PyObject *r = channel_close(op, NULL);
    if (r == NULL) {
        return NULL;
    }
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static PyObject *
channel_reduce(PyObject *op, PyObject *Py_UNUSED(args))
{
    return PyErr_Format(PyExc_TypeError,
                        "cannot pickle '%.100s' object: a channel connects threads of one process; "
                        "use gilfree.ProcessChannel between processes",
                        Py_TYPE(op)->tp_name);
}

static PyObject *
channel_iternext(PyObject *op)
{
    gf_deadline d = {.infinite = 1};
    int status;
    return channel_recv_core(CHANNEL_CAST(op), 1, &d, &status); /* closed: NULL, no exception: stop */
}

static Py_ssize_t
channel_length(PyObject *op)
{
    ChannelObject *ch = CHANNEL_CAST(op);
    gf_chan_lock(ch);
    Py_ssize_t n = ch->count + (ch->ring != NULL ? (Py_ssize_t)gf_ring_count(ch->ring) : 0);
    gf_chan_unlock(ch);
    return n;
}

/* sys.getsizeof(ch): the object plus its ring (an unbounded channel's ring shrinks after a burst). */
static PyObject *
channel_sizeof(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    ChannelObject *ch = CHANNEL_CAST(op);
    gf_chan_lock(ch);
    Py_ssize_t slots = ch->bufsize;
    gf_chan_unlock(ch);
    Py_ssize_t ring = ch->ring != NULL ? (Py_ssize_t)(sizeof(gf_ring) + ch->ring->cap * sizeof(gf_slot)) : 0;
    return PyLong_FromSsize_t(Py_TYPE(op)->tp_basicsize + slots * (Py_ssize_t)sizeof(PyObject *) + ring);
}

static Py_ssize_t
count_pending(gf_waitq *q)
{
    Py_ssize_t n = 0;
    unsigned gen = gf_fork_generation();
    for (gf_waiter *w = q->head; w != NULL; w = w->next) {
        n += w->fork_gen == gen && atomic_load_explicit(&w->sel->state, memory_order_relaxed) == GF_PENDING;
    }
    return n;
}

static PyObject *
channel_waiters(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    ChannelObject *ch = CHANNEL_CAST(op);
    gf_chan_lock(ch);
    Py_ssize_t r = count_pending(&ch->recvq), s = count_pending(&ch->sendq);
    gf_chan_unlock(ch);
    return Py_BuildValue("(nn)", r, s);
}

static PyObject *
channel_get_closed(PyObject *op, void *Py_UNUSED(closure))
{
    ChannelObject *ch = CHANNEL_CAST(op);
    gf_chan_lock(ch);
    int closed = ch->closed;
    gf_chan_unlock(ch);
    return PyBool_FromLong(closed);
}

static PyObject *
channel_get_capacity(PyObject *op, void *Py_UNUSED(closure))
{
    ChannelObject *ch = CHANNEL_CAST(op);
    if (ch->capacity < 0) {
        Py_RETURN_NONE;
    }
    return PyLong_FromSsize_t(ch->capacity);
}

static PyObject *
channel_repr(PyObject *op)
{
    ChannelObject *ch = CHANNEL_CAST(op);
    gf_chan_lock(ch);
    Py_ssize_t count = ch->count + (ch->ring != NULL ? (Py_ssize_t)gf_ring_count(ch->ring) : 0);
    int closed = ch->closed;
    gf_chan_unlock(ch);
    PyObject *module = PyObject_GetAttrString((PyObject *)Py_TYPE(op), "__module__");
    PyObject *qualname = module ? PyType_GetQualName(Py_TYPE(op)) : NULL;
    PyObject *cap = qualname ? (ch->capacity < 0 ? PyUnicode_FromString("None")
                                                  : PyUnicode_FromFormat("%zd", ch->capacity))
                             : NULL;
    PyObject *r = NULL;
    if (cap != NULL) {
        r = PyUnicode_FromFormat("<%S.%U capacity=%U len=%zd%s>", module, qualname, cap, count,
                                 closed ? " closed" : "");
    }
    Py_XDECREF(module);
    Py_XDECREF(qualname);
    Py_XDECREF(cap);
    return r;
}

/* ---- Channel type tables ------------------------------------------------------------------------ */

static PyMethodDef channel_methods[] = {
    {"send", (PyCFunction)(void (*)(void))channel_send, METH_FASTCALL | METH_KEYWORDS,
     "send(value, timeout=None)\n--\n\nSend value, blocking (GIL released) while there is no room. Raises "
     "ChannelClosed if the channel is closed before or while waiting, TimeoutError when timeout passes; "
     "a send that raised delivered nothing."},
    {"recv", (PyCFunction)(void (*)(void))channel_recv, METH_FASTCALL | METH_KEYWORDS,
     "recv(timeout=None)\n--\n\nReceive the next value, blocking (GIL released) until one arrives. After "
     "close() buffered values are still delivered, then ChannelClosed is raised."},
    {"send_nowait", channel_send_nowait, METH_O,
     "send_nowait(value)\n--\n\nSend without blocking; WouldBlock if it cannot proceed now."},
    {"recv_nowait", channel_recv_nowait, METH_NOARGS,
     "recv_nowait()\n--\n\nReceive without blocking; WouldBlock if nothing is ready."},
    {"send_many", (PyCFunction)(void (*)(void))channel_send_many, METH_FASTCALL | METH_KEYWORDS,
     "send_many(values, timeout=None)\n--\n\nSend every value of the iterable, in order, as many per lock "
     "as fit. Returns the count. On close or timeout the exception carries .sent, the count delivered."},
    {"recv_many", (PyCFunction)(void (*)(void))channel_recv_many, METH_FASTCALL | METH_KEYWORDS,
     "recv_many(max_items, timeout=None)\n--\n\nReceive between 1 and max_items values: what is there, "
     "waiting only for the first."},
    {"close", channel_close, METH_NOARGS,
     "close()\n--\n\nClose the channel (idempotent). Blocked senders raise ChannelClosed; receivers drain "
     "what is buffered, then raise ChannelClosed."},
    {"__enter__", channel_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))channel_exit, METH_FASTCALL, NULL},
    {"__reduce__", channel_reduce, METH_NOARGS, NULL},
    {"__sizeof__", channel_sizeof, METH_NOARGS, NULL},
    {"__reduce_ex__", channel_reduce, METH_O, NULL},
    {"_async_send", (PyCFunction)(void (*)(void))gf_channel_async_send, METH_FASTCALL,
     "_async_send(value, notify) -> _AsyncOp (internal: used by send_async)"},
    {"_async_recv", gf_channel_async_recv, METH_O,
     "_async_recv(notify) -> _AsyncOp (internal: used by recv_async)"},
    {"_waiters", channel_waiters, METH_NOARGS,
     "_waiters() -> (receivers, senders) parked now (introspection for tests and debugging)"},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef channel_getset[] = {
    {"closed", channel_get_closed, NULL, "True once close() was called.", NULL},
    {"capacity", channel_get_capacity, NULL, "0 unbuffered, N bounded, None unbounded.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef channel_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(ChannelObject, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot channel_slots[] = {
    {Py_tp_new, channel_new},
    {Py_tp_dealloc, channel_dealloc},
    {Py_tp_traverse, channel_traverse},
    {Py_tp_clear, channel_clear},
    {Py_tp_methods, channel_methods},
    {Py_tp_getset, channel_getset},
    {Py_tp_members, channel_members},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, channel_iternext},
    {Py_tp_repr, channel_repr},
    {Py_sq_length, channel_length},
    {Py_tp_doc, "Channel(capacity=0)\n--\n\nA Go-style channel: 0 unbuffered, N bounded, None unbounded."},
    {0, NULL},
};

static PyType_Spec channel_spec = {
    .name = "gilfree._core.Channel",
    .basicsize = sizeof(ChannelObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = channel_slots,
};

int
gf_channel_setup(PyObject *module, gf_state *st)
{
    st->channel_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &channel_spec, NULL);
    if (st->channel_type == NULL || PyModule_AddType(module, st->channel_type) < 0) {
        return -1;
    }
    return 0;
}
