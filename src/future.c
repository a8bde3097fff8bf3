/* future.c — gilfree._core.Future (see future.h for the contract).
 *
 * Invariants:
 *   - state only moves forward along the transitions in future.h, under lock.
 *   - result/exception are written once, before state becomes FINISHED, and read under lock.
 *   - callbacks are owned while pending and moved out at completion: each runs exactly once.
 *   - A waiter is queued only while the state is not done; completion claims them all.
 */
#include "future.h"

#include <stdlib.h>

#define FUTURE_CAST(op) ((FutureObject *)(op))

static inline int
is_done_state(int state)
{
    return state == GF_FUT_CANCELLED || state == GF_FUT_CANCELLED_AND_NOTIFIED || state == GF_FUT_FINISHED;
}

static const char *const state_names[] = {"PENDING", "RUNNING", "CANCELLED", "CANCELLED_AND_NOTIFIED",
                                          "FINISHED"};

/* ---- construction ----------------------------------------------------------------------------------- */

static int
future_init_fields(FutureObject *f, gf_state *st)
{
    f->st = st;
    if (!f->lock_init) {
        if (pthread_mutex_init(&f->lock, NULL) != 0) {
            PyErr_NoMemory();
            return -1;
        }
        f->lock_init = 1;
    }
    f->state = GF_FUT_PENDING;
    return 0;
}

FutureObject *
gf_future_new(gf_state *st, PyObject *pool)
{
    PyTypeObject *tp = st->future_class ? st->future_class : st->future_type;
    FutureObject *f = (FutureObject *)tp->tp_alloc(tp, 0);
    if (f == NULL) {
        return NULL;
    }
    if (future_init_fields(f, st) < 0) {
        Py_DECREF(f);
        return NULL;
    }
    f->pool = Py_XNewRef(pool);
    return f;
}

static PyObject *
future_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *module = PyType_GetModuleByDef(type, &gf_module_def);
    if (module == NULL) {
        return NULL;
    }
    FutureObject *f = (FutureObject *)type->tp_alloc(type, 0);
    if (f == NULL) {
        return NULL;
    }
    if (future_init_fields(f, gf_get_state(module)) < 0) {
        Py_DECREF(f);
        return NULL;
    }
    return (PyObject *)f;
}

static int
future_init(PyObject *self, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Future() takes no arguments");
        return -1;
    }
    return 0;
}

/* ---- completion ------------------------------------------------------------------------------------- */

void
gf_log_exception(gf_state *st, const char *what, PyObject *obj)
{
    PyObject *value = gf_err_take();
    if (st->log_callback_error != NULL && value != NULL) {
        PyObject *r = PyObject_CallFunction(st->log_callback_error, "sOO", what, obj, value);
        if (r == NULL) {
            PyErr_WriteUnraisable(st->log_callback_error);
        }
        Py_XDECREF(r);
        Py_DECREF(value);
    }
    else {
        gf_err_restore(value);
        PyErr_WriteUnraisable(obj);
    }
}

static void
report_callback_error(FutureObject *f)
{
    gf_log_exception(f->st, "exception calling callback for %r", (PyObject *)f);
}

/* Run one done callback. An Exception it raises is logged, as the standard library does; anything else
 * (KeyboardInterrupt, SystemExit) is not swallowed: it is returned (a new reference) for the caller to
 * raise once every callback has run. */
static PyObject *
run_callback(FutureObject *f, PyObject *cb)
{
    PyObject *r = PyObject_CallOneArg(cb, (PyObject *)f);
    if (r != NULL) {
        Py_DECREF(r);
        return NULL;
    }
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return gf_err_take();
    }
    report_callback_error(f);
    return NULL;
}

/* After a state change made under lock: wake waiters, tell the standard library's waiters, run callbacks.
 * Attached, no lock held. Preserves a pending exception of the caller. Returns the first non-Exception a
 * callback raised (a new reference, to be raised by the caller), or NULL. */
static PyObject *
after_change(FutureObject *f, gf_wakelist *wl, PyObject **cbs, Py_ssize_t ncbs, int compat, const char *kind)
{
    PyObject *pending = gf_err_take(), *escaped = NULL;
    gf_wakelist_run(wl);
    if (compat) {
        PyObject *r = PyObject_CallMethod((PyObject *)f, "_cf_notify", "s", kind);
        if (r == NULL) {
            PyErr_WriteUnraisable((PyObject *)f);
        }
        Py_XDECREF(r);
    }
    for (Py_ssize_t i = 0; i < ncbs; i++) {
        PyObject *e = run_callback(f, cbs[i]);
        if (e != NULL && escaped == NULL) {
            escaped = e;
        }
        else {
            Py_XDECREF(e);
        }
        Py_DECREF(cbs[i]);
    }
    PyMem_RawFree(cbs);
    gf_err_restore(pending);
    return escaped;
}

/* Raise what a callback let escape, unless an exception is already set. -1 if it raised, else 0. */
static int
raise_escaped(PyObject *escaped)
{
    if (escaped == NULL) {
        return 0;
    }
    if (PyErr_Occurred()) {
        Py_DECREF(escaped);
        return 0;
    }
    gf_err_restore(escaped);
    return -1;
}

/* Under lock: claim every parked waiter, move the callbacks out. */
static void
take_for_completion(FutureObject *f, gf_wakelist *wl, PyObject ***cbs, Py_ssize_t *ncbs)
{
    while (gf_waitq_fire_first(&f->waiters, 0, NULL, wl) != NULL) {
    }
    *cbs = f->callbacks;
    *ncbs = f->ncallbacks;
    f->callbacks = NULL;
    f->ncallbacks = f->capcallbacks = 0;
}

static PyObject *
invalid_state(FutureObject *f, int state)
{
    PyErr_Format(f->st->InvalidStateError ? f->st->InvalidStateError : PyExc_RuntimeError, "%s: %R",
                 state_names[state], (PyObject *)f);
    return NULL;
}

int
gf_future_finish(FutureObject *f, PyObject *result, PyObject *exc)
{
    gf_wakelist wl;
    gf_wakelist_init(&wl);
    PyObject **cbs;
    Py_ssize_t ncbs;
    pthread_mutex_lock(&f->lock);
    int state = f->state;
    if (is_done_state(state)) {
        pthread_mutex_unlock(&f->lock);
        invalid_state(f, state);
        return -1;
    }
    if (exc != NULL) {
        f->exception = Py_NewRef(exc);
    }
    else {
        f->result = Py_NewRef(result);
    }
    f->state = GF_FUT_FINISHED;
    take_for_completion(f, &wl, &cbs, &ncbs);
    int compat = f->compat;
    pthread_mutex_unlock(&f->lock);
    return raise_escaped(after_change(f, &wl, cbs, ncbs, compat, exc != NULL ? "exception" : "result"));
}

int
gf_future_cancel(FutureObject *f)
{
    gf_wakelist wl;
    gf_wakelist_init(&wl);
    PyObject **cbs;
    Py_ssize_t ncbs;
    pthread_mutex_lock(&f->lock);
    int state = f->state;
    if (state == GF_FUT_RUNNING || state == GF_FUT_FINISHED) {
        pthread_mutex_unlock(&f->lock);
        return 0;
    }
    if (state != GF_FUT_PENDING) {
        pthread_mutex_unlock(&f->lock);
        return 1;
    }
    f->state = GF_FUT_CANCELLED;
    take_for_completion(f, &wl, &cbs, &ncbs);
    int compat = f->compat;
    pthread_mutex_unlock(&f->lock);
    if (raise_escaped(after_change(f, &wl, cbs, ncbs, compat, "cancel")) < 0) {
        return -1;
    }
    return 1;
}

int
gf_future_set_running_or_notify_cancel(FutureObject *f)
{
    pthread_mutex_lock(&f->lock);
    int state = f->state;
    if (state == GF_FUT_PENDING) {
        f->state = GF_FUT_RUNNING;
        pthread_mutex_unlock(&f->lock);
        return 1;
    }
    if (state == GF_FUT_CANCELLED) {
        f->state = GF_FUT_CANCELLED_AND_NOTIFIED;
        int compat = f->compat;
        pthread_mutex_unlock(&f->lock);
        if (compat) {
            PyObject *r = PyObject_CallMethod((PyObject *)f, "_cf_notify", "s", "cancelled_notified");
            if (r == NULL) {
                return -1;
            }
            Py_DECREF(r);
        }
        return 0;
    }
    pthread_mutex_unlock(&f->lock);
    PyErr_Format(PyExc_RuntimeError, "Future in unexpected state: %s", state_names[state]);
    return -1;
}

/* ---- waiting ---------------------------------------------------------------------------------------- */

/* Wait until done (or the deadline). 0 done; -1 with TimeoutError or a signal handler's exception. */
static int
future_wait_done(FutureObject *f, PyObject *timeout)
{
    gf_deadline d;
    if (gf_deadline_from_timeout(timeout, &d, "timeout") < 0) {
        return -1;
    }
    pthread_mutex_lock(&f->lock);
    int done = is_done_state(f->state);
    pthread_mutex_unlock(&f->lock);
    if (done) {
        return 0;
    }
    gf_sel sel;
    if (gf_sel_init(&sel) < 0) {
        return -1;
    }
    gf_waiter w = {.sel = &sel, .index = 0};
    pthread_mutex_lock(&f->lock);
    if (is_done_state(f->state)) {
        pthread_mutex_unlock(&f->lock);
        gf_sel_fini(&sel);
        return 0;
    }
    if (gf_deadline_passed(&d)) {
        pthread_mutex_unlock(&f->lock);
        gf_sel_fini(&sel);
        PyErr_SetString(PyExc_TimeoutError, "the future did not complete in time");
        return -1;
    }
    gf_waitq_push(&f->waiters, &w);
    pthread_mutex_unlock(&f->lock);
    int r = gf_wait(f->st, &sel, &d);
    if (r != GF_WAIT_FIRED) {
        pthread_mutex_lock(&f->lock);
        gf_waitq_unlink(&f->waiters, &w);
        pthread_mutex_unlock(&f->lock);
    }
    gf_sel_fini(&sel);
    if (r == GF_WAIT_TIMED_OUT) {
        PyErr_SetString(PyExc_TimeoutError, "the future did not complete in time");
    }
    return r == GF_WAIT_FIRED ? 0 : -1;
}

/* Snapshot of a done future: its state and new references to result and exception. */
static int
snapshot(FutureObject *f, PyObject **result, PyObject **exc)
{
    pthread_mutex_lock(&f->lock);
    int state = f->state;
    *result = Py_XNewRef(f->result);
    *exc = Py_XNewRef(f->exception);
    pthread_mutex_unlock(&f->lock);
    return state;
}

static PyObject *
raise_cancelled(FutureObject *f)
{
    PyErr_SetNone(f->st->CancelledError ? f->st->CancelledError : PyExc_RuntimeError);
    return NULL;
}

static const char *const timeout_names[] = {"timeout"};

/* The common part of result() and exception(): parse timeout, wait until done, snapshot. Returns the
 * state (new references in *result and *exc), or -1 with an exception set (including CancelledError:
 * both methods raise it for a cancelled future). */
static int
wait_and_snapshot(FutureObject *f, const char *fname, PyObject *const *args, Py_ssize_t nargs,
                  PyObject *kwnames, PyObject **result, PyObject **exc)
{
    PyObject *a[1] = {NULL};
    if ((nargs || kwnames) && gf_parse_args(fname, args, nargs, kwnames, timeout_names, 0, 1, a) < 0) {
        return -1;
    }
    if (future_wait_done(f, a[0]) < 0) {
        return -1;
    }
    int state = snapshot(f, result, exc);
    if (state != GF_FUT_FINISHED) {
        Py_CLEAR(*result);
        Py_CLEAR(*exc);
        raise_cancelled(f);
        return -1;
    }
    return state;
}

static PyObject *
future_result(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    FutureObject *f = FUTURE_CAST(self);
    PyObject *result, *exc;
    if (wait_and_snapshot(f, "result", args, nargs, kwnames, &result, &exc) < 0) {
        return NULL;
    }
    if (exc != NULL) {
        Py_XDECREF(result);
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
        return NULL;
    }
    return result;
}

static PyObject *
future_exception(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    FutureObject *f = FUTURE_CAST(self);
    PyObject *result, *exc;
    if (wait_and_snapshot(f, "exception", args, nargs, kwnames, &result, &exc) < 0) {
        return NULL;
    }
    Py_XDECREF(result);
    return exc != NULL ? exc : Py_NewRef(Py_None);
}

/* ---- the rest of the concurrent.futures.Future API ------------------------------------------------ */

static PyObject *
future_cancel(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    int r = gf_future_cancel(FUTURE_CAST(self));
    return r < 0 ? NULL : PyBool_FromLong(r);
}

static int
get_state(FutureObject *f)
{
    pthread_mutex_lock(&f->lock);
    int state = f->state;
    pthread_mutex_unlock(&f->lock);
    return state;
}

static PyObject *
future_cancelled(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    int state = get_state(FUTURE_CAST(self));
    return PyBool_FromLong(state == GF_FUT_CANCELLED || state == GF_FUT_CANCELLED_AND_NOTIFIED);
}

static PyObject *
future_running(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(get_state(FUTURE_CAST(self)) == GF_FUT_RUNNING);
}

static PyObject *
future_done(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(is_done_state(get_state(FUTURE_CAST(self))));
}

static PyObject *
future_set_result(PyObject *self, PyObject *value)
{
    if (gf_future_finish(FUTURE_CAST(self), value, NULL) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
future_set_exception(PyObject *self, PyObject *exc)
{
    if (exc == Py_None) { /* as concurrent.futures.Future: finished, with no exception and a None result */
        if (gf_future_finish(FUTURE_CAST(self), Py_None, NULL) < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    if (PyType_Check(exc) && PyType_IsSubtype((PyTypeObject *)exc, (PyTypeObject *)PyExc_BaseException)) {
        PyObject *inst = PyObject_CallNoArgs(exc); /* as raise does with a class */
        if (inst == NULL) {
            return NULL;
        }
        if (!PyExceptionInstance_Check(inst)) {
            PyErr_Format(PyExc_TypeError, "calling %R should have returned an instance of BaseException, not "
                         "%.100s", exc, Py_TYPE(inst)->tp_name);
            Py_DECREF(inst);
            return NULL;
        }
        int r = gf_future_finish(FUTURE_CAST(self), NULL, inst);
        Py_DECREF(inst);
        if (r < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    if (!PyExceptionInstance_Check(exc)) {
        return PyErr_Format(PyExc_TypeError, "set_exception() argument must be an exception, not %.100s",
                            Py_TYPE(exc)->tp_name);
    }
    if (gf_future_finish(FUTURE_CAST(self), NULL, exc) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
future_set_running_or_notify_cancel_m(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    int r = gf_future_set_running_or_notify_cancel(FUTURE_CAST(self));
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r);
}

static PyObject *
future_add_done_callback(PyObject *self, PyObject *fn)
{
    FutureObject *f = FUTURE_CAST(self);
    if (!PyCallable_Check(fn)) {
        return PyErr_Format(PyExc_TypeError, "add_done_callback() argument 'fn' must be callable, not %.100s",
                            Py_TYPE(fn)->tp_name);
    }
    pthread_mutex_lock(&f->lock);
    if (!is_done_state(f->state)) {
        if (f->ncallbacks == f->capcallbacks) {
            Py_ssize_t cap = f->capcallbacks ? f->capcallbacks * 2 : 4;
            PyObject **nc = PyMem_RawRealloc(f->callbacks, (size_t)cap * sizeof(PyObject *));
            if (nc == NULL) {
                pthread_mutex_unlock(&f->lock);
                return PyErr_NoMemory();
            }
            f->callbacks = nc;
            f->capcallbacks = cap;
        }
        f->callbacks[f->ncallbacks++] = Py_NewRef(fn);
        pthread_mutex_unlock(&f->lock);
        Py_RETURN_NONE;
    }
    pthread_mutex_unlock(&f->lock);
    if (raise_escaped(run_callback(f, fn)) < 0) { /* already done: now, in this thread */
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The standard library's wait()/as_completed() attached their waiters: report changes from now on.
 * Returns the state name seen at that moment (under the same lock as the change it orders with). */
static PyObject *
future_enable_compat(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    FutureObject *f = FUTURE_CAST(self);
    pthread_mutex_lock(&f->lock);
    f->compat = 1;
    int state = f->state;
    pthread_mutex_unlock(&f->lock);
    return PyUnicode_FromString(state_names[state]);
}

static PyObject *
future_get_state(PyObject *self, void *Py_UNUSED(closure))
{
    return PyUnicode_InternFromString(state_names[get_state(FUTURE_CAST(self))]);
}

static PyObject *
future_get_pool(PyObject *self, void *Py_UNUSED(closure))
{
    FutureObject *f = FUTURE_CAST(self);
    pthread_mutex_lock(&f->lock);
    PyObject *pool = Py_NewRef(f->pool ? f->pool : Py_None);
    pthread_mutex_unlock(&f->lock);
    return pool;
}

static int
future_set_pool(PyObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    FutureObject *f = FUTURE_CAST(self);
    if (value == NULL || value == Py_None) {
        value = NULL;
    }
    else if (!PyObject_TypeCheck(value, f->st->pool_type)) {
        PyErr_SetString(PyExc_TypeError, "_pool must be a gilfree pool or None");
        return -1;
    }
    pthread_mutex_lock(&f->lock);
    PyObject *old = f->pool;
    f->pool = Py_XNewRef(value);
    pthread_mutex_unlock(&f->lock);
    Py_XDECREF(old);
    return 0;
}

static PyObject *
future_repr(PyObject *self)
{
    FutureObject *f = FUTURE_CAST(self);
    PyObject *result, *exc;
    int state = snapshot(f, &result, &exc);
    PyObject *r;
    if (state == GF_FUT_FINISHED && exc != NULL) {
        r = PyUnicode_FromFormat("<%s at %p state=finished raised %s>", Py_TYPE(self)->tp_name, self,
                                 Py_TYPE(exc)->tp_name);
    }
    else if (state == GF_FUT_FINISHED) {
        r = PyUnicode_FromFormat("<%s at %p state=finished returned %s>", Py_TYPE(self)->tp_name, self,
                                 Py_TYPE(result)->tp_name);
    }
    else {
        const char *names[] = {"pending", "running", "cancelled", "cancelled", "finished"};
        r = PyUnicode_FromFormat("<%s at %p state=%s>", Py_TYPE(self)->tp_name, self, names[state]);
    }
    Py_XDECREF(result);
    Py_XDECREF(exc);
    return r;
}

/* ---- GC ------------------------------------------------------------------------------------------- */

static int
future_traverse(PyObject *self, visitproc visit, void *arg)
{
    FutureObject *f = FUTURE_CAST(self);
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(f->result);
    Py_VISIT(f->exception);
    Py_VISIT(f->pool);
    for (Py_ssize_t i = 0; i < f->ncallbacks; i++) {
        Py_VISIT(f->callbacks[i]);
    }
    return 0;
}

static int
future_clear(PyObject *self)
{
    FutureObject *f = FUTURE_CAST(self);
    PyObject *result = NULL, *exc = NULL, *pool = NULL, **cbs = NULL;
    Py_ssize_t ncbs = 0;
    if (f->lock_init) {
        pthread_mutex_lock(&f->lock);
    }
    result = f->result;
    exc = f->exception;
    pool = f->pool;
    cbs = f->callbacks;
    ncbs = f->ncallbacks;
    f->result = f->exception = f->pool = NULL;
    f->callbacks = NULL;
    f->ncallbacks = f->capcallbacks = 0;
    if (f->lock_init) {
        pthread_mutex_unlock(&f->lock);
    }
    Py_XDECREF(result);
    Py_XDECREF(exc);
    Py_XDECREF(pool);
    for (Py_ssize_t i = 0; i < ncbs; i++) {
        Py_DECREF(cbs[i]);
    }
    PyMem_RawFree(cbs);
    return 0;
}

static void
future_dealloc(PyObject *self)
{
    FutureObject *f = FUTURE_CAST(self);
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    (void)future_clear(self);
    /* No waiter can be queued: each holds a reference to the future while it waits. */
    if (f->lock_init) {
        pthread_mutex_destroy(&f->lock);
    }
    tp->tp_free(self);
    Py_DECREF(tp);
}

/* ---- type ----------------------------------------------------------------------------------------- */

static PyMethodDef future_methods[] = {
    {"result", (PyCFunction)(void (*)(void))future_result, METH_FASTCALL | METH_KEYWORDS,
     "result(timeout=None)\n--\n\nThe result, waiting (GIL released) until done; re-raises the work's "
     "exception; CancelledError if cancelled; TimeoutError when timeout passes."},
    {"exception", (PyCFunction)(void (*)(void))future_exception, METH_FASTCALL | METH_KEYWORDS,
     "exception(timeout=None)\n--\n\nThe exception the work raised, or None; waits like result()."},
    {"cancel", future_cancel, METH_NOARGS, "cancel()\n--\n\nCancel if not yet running. True if cancelled."},
    {"cancelled", future_cancelled, METH_NOARGS, "cancelled()\n--\n\nTrue if cancelled."},
    {"running", future_running, METH_NOARGS, "running()\n--\n\nTrue while the work runs."},
    {"done", future_done, METH_NOARGS, "done()\n--\n\nTrue once finished or cancelled."},
    {"set_result", future_set_result, METH_O, "set_result(result)\n--\n\nComplete with a result."},
    {"set_exception", future_set_exception, METH_O,
     "set_exception(exception)\n--\n\nComplete with an exception."},
    {"set_running_or_notify_cancel", future_set_running_or_notify_cancel_m, METH_NOARGS,
     "set_running_or_notify_cancel()\n--\n\nMark running (True), or acknowledge a cancel (False)."},
    {"add_done_callback", future_add_done_callback, METH_O,
     "add_done_callback(fn)\n--\n\nCall fn(future) once done (now, if it is); an exception it raises is "
     "logged and the other callbacks still run."},
    {"_enable_compat", future_enable_compat, METH_NOARGS, NULL},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef future_getset[] = {
    {"_state", future_get_state, NULL, "The concurrent.futures state name.", NULL},
    {"_pool", future_get_pool, future_set_pool, "The pool continuations (then) run on, or None.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot future_slots[] = {
    {Py_tp_new, future_new},
    {Py_tp_init, future_init},
    {Py_tp_dealloc, future_dealloc},
    {Py_tp_traverse, future_traverse},
    {Py_tp_clear, future_clear},
    {Py_tp_methods, future_methods},
    {Py_tp_getset, future_getset},
    {Py_tp_repr, future_repr},
    {Py_tp_doc, "The C core of gilfree.Future."},
    {0, NULL},
};

static PyType_Spec future_spec = {
    .name = "gilfree._core.Future",
    .basicsize = sizeof(FutureObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = future_slots,
};

/* _configure_futures(future_class, InvalidStateError, CancelledError, BrokenThreadPool, log_callback_error) */
static PyObject *
configure_futures(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    gf_state *st = gf_get_state(module);
    if (nargs != 5 || !PyType_Check(args[0]) ||
        !PyType_IsSubtype((PyTypeObject *)args[0], st->future_type)) {
        PyErr_SetString(PyExc_TypeError,
                        "_configure_futures(future_class, InvalidStateError, CancelledError, "
                        "BrokenThreadPool, log)");
        return NULL;
    }
    Py_XSETREF(st->future_class, (PyTypeObject *)Py_NewRef(args[0]));
    Py_XSETREF(st->InvalidStateError, Py_NewRef(args[1]));
    Py_XSETREF(st->CancelledError, Py_NewRef(args[2]));
    Py_XSETREF(st->BrokenThreadPool, Py_NewRef(args[3]));
    Py_XSETREF(st->log_callback_error, Py_NewRef(args[4]));
    Py_RETURN_NONE;
}

static PyMethodDef future_module_methods[] = {
    {"_configure_futures", (PyCFunction)(void (*)(void))configure_futures, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

int
gf_future_setup(PyObject *module, gf_state *st)
{
    st->future_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &future_spec, NULL);
    if (st->future_type == NULL || PyModule_AddType(module, st->future_type) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(module, future_module_methods);
}
