/* asyncop.c — gilfree._core._AsyncOp: one pending asyncio send or recv on a Channel, which the Python layer
 * (gilfree._channel) awaits.
 *
 * Invariants:
 *   - The heap block (gf_async) is shared by the _AsyncOp object and every completer still waking it
 *     (gf_sel.refs); the last reference frees it, attached, with no lock held.
 *   - Its one waiter is queued on the channel only while the operation is pending; withdrawing takes the
 *     channel lock, which also waits out a completer that claimed it and is still in its critical section.
 *   - A received value is taken out of the block under the channel lock, so of two cancel() calls at once
 *     exactly one puts it back.
 */
#include "channel.h"

/* ---- _AsyncOp: one asyncio send or recv --------------------------------------------------------- */

/* Heap block shared by the _AsyncOp object and any completer still waking it (gf_sel.refs). */
typedef struct gf_async {
    gf_sel sel;   /* first member: a gf_sel* is a gf_async* */
    gf_waiter w;  /* its one case; w.value is the value of a pending send */
    int is_send;
} gf_async;

typedef struct {
    PyObject_HEAD
    ChannelObject *ch; /* strong: the waiter is queued on it */
    gf_async *a;       /* NULL once released */
} AsyncOpObject;

#define ASYNCOP_CAST(op) ((AsyncOpObject *)(op))

static void
async_free(gf_sel *s)
{
    gf_async *a = (gf_async *)s;
    Py_CLEAR(a->sel.notify);
    Py_CLEAR(a->sel.result);
    Py_CLEAR(a->w.value);
    PyMem_RawFree(a);
}

/* Withdraw the operation if still pending. 1 withdrawn, 0 it had completed. Attached, no lock held. */
static int
asyncop_withdraw(AsyncOpObject *op)
{
    gf_async *a = op->a;
    if (a == NULL) {
        return 0;
    }
    int won = gf_sel_withdraw(&a->sel);
    PyObject *value = NULL;
    /* Taking the lock also waits out a completer that claimed it and is still in its critical section. */
    gf_chan_lock(op->ch);
    if (won) {
        gf_waitq_unlink(a->is_send ? &op->ch->sendq : &op->ch->recvq, &a->w);
        value = a->w.value;
        a->w.value = NULL;
    }
    gf_chan_unlock(op->ch);
    Py_XDECREF(value); /* a withdrawn send delivered nothing: its value goes back to nobody */
    return won;
}

static void
asyncop_release(AsyncOpObject *op)
{
    if (op->a != NULL) {
        (void)asyncop_withdraw(op);
        gf_async *a = op->a;
        op->a = NULL;
        gf_sel_decref(&a->sel);
    }
}

static int
asyncop_traverse(PyObject *self, visitproc visit, void *arg)
{
    AsyncOpObject *op = ASYNCOP_CAST(self);
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(op->ch);
    if (op->a != NULL) {
        Py_VISIT(op->a->sel.notify);
        Py_VISIT(op->a->sel.result);
        Py_VISIT(op->a->w.value);
    }
    return 0;
}

static int
asyncop_clear(PyObject *self)
{
    AsyncOpObject *op = ASYNCOP_CAST(self);
    asyncop_release(op);
    Py_CLEAR(op->ch);
    return 0;
}

static void
asyncop_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    (void)asyncop_clear(self);
    PyObject_GC_Del(self);
    Py_DECREF(tp);
}

/* Start an async op: completes at once if it can, else queues a waiter whose completion calls notify. */
static PyObject *
channel_async_start(ChannelObject *ch, PyObject *value, PyObject *notify)
{
    if (!PyCallable_Check(notify)) {
        return PyErr_Format(PyExc_TypeError, "notify must be callable");
    }
    gf_state *st = ch->st;
    gf_async *a = (gf_async *)gf_sel_new_async(sizeof(gf_async), notify, async_free);
    if (a == NULL) {
        return NULL;
    }
    AsyncOpObject *op = PyObject_GC_New(AsyncOpObject, st->asyncop_type);
    if (op == NULL) {
        gf_sel_decref(&a->sel);
        return NULL;
    }
    op->ch = (ChannelObject *)Py_NewRef(ch);
    op->a = a;
    a->is_send = value != NULL;
    a->w.sel = &a->sel;
    a->w.chan = ch;
    a->w.index = 0;
    a->w.linked = 0;

    gf_wakelist wl;
    gf_wakelist_init(&wl);
    PyObject *v = Py_XNewRef(value), *got = NULL;
    gf_chan_lock(ch);
    int r = a->is_send ? gf_chan_try_send(ch, v, &wl) : gf_chan_try_recv(ch, &got, &wl);
    if (r == GF_WOULDBLOCK) {
        a->w.value = v; /* moves in */
        v = NULL;
        gf_waitq_push(a->is_send ? &ch->sendq : &ch->recvq, &a->w);
        gf_chan_after_queue(ch, &a->w, a->is_send, &wl); /* may complete it at once (see ring.h) */
    }
    else if (r == GF_OK || r == GF_CLOSED) {
        if (r == GF_OK) {
            v = NULL; /* delivered */
        }
        (void)gf_sel_claim(&a->sel); /* nobody else can see it yet */
        a->sel.fired = 0;
        a->sel.closed = r == GF_CLOSED;
        a->sel.result = got;
        atomic_store_explicit(&a->sel.signaled, 1, memory_order_release);
    }
    gf_chan_unlock(ch);
    gf_wakelist_run(&wl);
    Py_XDECREF(v);
    PyObject_GC_Track((PyObject *)op);
    if (r == GF_NOMEM) {
        Py_DECREF(op);
        return PyErr_NoMemory();
    }
    return (PyObject *)op;
}

PyObject *
gf_channel_async_send(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        return PyErr_Format(PyExc_TypeError, "_async_send(value, notify) takes 2 arguments");
    }
    return channel_async_start(((ChannelObject *)(self)), args[0], args[1]);
}

PyObject *
gf_channel_async_recv(PyObject *self, PyObject *notify)
{
    return channel_async_start(((ChannelObject *)(self)), NULL, notify);
}

static PyObject *
asyncop_done(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    gf_async *a = ASYNCOP_CAST(self)->a;
    return PyBool_FromLong(a != NULL && atomic_load_explicit(&a->sel.signaled, memory_order_acquire));
}

static PyObject *
asyncop_cancel(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    AsyncOpObject *op = ASYNCOP_CAST(self);
    if (op->a == NULL) {
        Py_RETURN_TRUE;
    }
    if (asyncop_withdraw(op)) {
        Py_RETURN_TRUE; /* withdrawn: nothing was sent or taken */
    }
    gf_async *a = op->a;
    if (a->is_send) {
        Py_RETURN_FALSE; /* delivered: cannot be undone */
    }
    /* Take the received value under the channel lock: of two cancel() calls at once (free-threaded
     * asyncio may make them), exactly one gets it and puts it back; the other finds NULL. */
    gf_chan_lock(op->ch);
    PyObject *v = a->sel.closed ? NULL : a->sel.result;
    if (v != NULL) {
        a->sel.result = NULL;
    }
    gf_chan_unlock(op->ch);
    if (v != NULL && gf_chan_put_back(op->ch, v) < 0) {
        gf_chan_lock(op->ch);
        a->sel.result = v; /* keep it: result() still returns it */
        gf_chan_unlock(op->ch);
        return PyErr_NoMemory();
    }
    Py_RETURN_TRUE;
}

static PyObject *
asyncop_result(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    AsyncOpObject *op = ASYNCOP_CAST(self);
    gf_async *a = op->a;
    if (a == NULL || atomic_load_explicit(&a->sel.state, memory_order_acquire) == GF_WITHDRAWN) {
        PyErr_SetString(PyExc_RuntimeError, "the operation was withdrawn");
        return NULL;
    }
    if (!atomic_load_explicit(&a->sel.signaled, memory_order_acquire)) {
        PyErr_SetString(PyExc_RuntimeError, "the operation is still pending");
        return NULL;
    }
    if (a->sel.closed) {
        return gf_raise_closed(op->ch->st, -1);
    }
    if (a->is_send) {
        Py_RETURN_NONE;
    }
    if (a->sel.result == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the received value was given back to the channel");
        return NULL;
    }
    return Py_NewRef(a->sel.result);
}

static PyMethodDef asyncop_methods[] = {
    {"done", asyncop_done, METH_NOARGS, "True once the operation completed (or found the channel closed)."},
    {"cancel", asyncop_cancel, METH_NOARGS,
     "Withdraw the operation. True if nothing was sent or taken (a recv that had completed puts its "
     "value back in front of the channel), False for a send that had already delivered its value."},
    {"result", asyncop_result, METH_NOARGS,
     "The received value (None for a send); raises ChannelClosed if it completed by the close."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot asyncop_slots[] = {
    {Py_tp_dealloc, asyncop_dealloc},
    {Py_tp_traverse, asyncop_traverse},
    {Py_tp_clear, asyncop_clear},
    {Py_tp_methods, asyncop_methods},
    {Py_tp_doc, "A pending asyncio send or recv on a Channel (internal)."},
    {0, NULL},
};

static PyType_Spec asyncop_spec = {
    .name = "gilfree._core._AsyncOp",
    .basicsize = sizeof(AsyncOpObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = asyncop_slots,
};

int
gf_asyncop_setup(PyObject *module, gf_state *st)
{
    st->asyncop_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &asyncop_spec, NULL);
    if (st->asyncop_type == NULL || PyModule_AddType(module, st->asyncop_type) < 0) {
        return -1;
    }
    return 0;
}
