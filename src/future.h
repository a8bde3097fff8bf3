/* future.h — gilfree._core.Future: the result of one piece of work, kept once, returned to every waiter.
 *
 * The C base of gilfree.Future (which also subclasses concurrent.futures.Future, so the standard
 * library's wait/as_completed/asyncio.wrap_future accept it). States and transitions follow
 * concurrent.futures exactly:
 *     PENDING -> RUNNING -> FINISHED                      (set_running_or_notify_cancel, set_result/exception)
 *     PENDING -> CANCELLED -> CANCELLED_AND_NOTIFIED      (cancel, set_running_or_notify_cancel)
 *     PENDING -> FINISHED                                 (a standalone future used as a promise)
 * Completion wakes every parked waiter, then runs the done callbacks in the completing thread, in the
 * order added; a callback that raises is logged and the others still run.
 */
#ifndef GILFREE_FUTURE_H
#define GILFREE_FUTURE_H

#include "gilfree.h"
#include "park.h"

enum { GF_FUT_PENDING, GF_FUT_RUNNING, GF_FUT_CANCELLED, GF_FUT_CANCELLED_AND_NOTIFIED, GF_FUT_FINISHED };

typedef struct FutureObject {
    PyObject_HEAD
    gf_state *st;
    /* lock guards every field below. Held only for short sections that call no Python and never wait for
     * the GIL (so attached threads may wait for it); callbacks and wake-ups run after unlocking. */
    pthread_mutex_t lock;
    int lock_init;
    int state;             /* GF_FUT_* */
    PyObject *result;      /* owned; FINISHED with no exception */
    PyObject *exception;   /* owned; FINISHED with an exception */
    PyObject **callbacks;  /* owned; taken out (and run) at completion */
    Py_ssize_t ncallbacks, capcallbacks;
    gf_waitq waiters;      /* threads parked in result()/exception() */
    int compat;            /* the standard library's wait/as_completed attached _condition/_waiters:
                              changes are reported through self._cf_notify(kind) */
    PyObject *pool;        /* the pool the work runs on (then() continues there), or NULL */
} FutureObject;

/* A new PENDING future of st->future_class (gilfree.Future) or the C base. NULL on error. */
FutureObject *gf_future_new(gf_state *st, PyObject *pool);
/* PENDING -> RUNNING: 1; CANCELLED -> CANCELLED_AND_NOTIFIED: 0; else RuntimeError, -1. */
int gf_future_set_running_or_notify_cancel(FutureObject *f);
/* Complete with a result (exc == NULL) or an exception. Steals neither. -1 if already done. */
int gf_future_finish(FutureObject *f, PyObject *result, PyObject *exc);
/* cancel(): 1 cancelled (or already), 0 running or finished. */
int gf_future_cancel(FutureObject *f);

/* Log the current exception through concurrent.futures' logger: what % obj (a %r format). Clears it. */
void gf_log_exception(gf_state *st, const char *what, PyObject *obj);

static inline int
gf_is_future(gf_state *st, PyObject *op)
{
    return PyObject_TypeCheck(op, st->future_type);
}

#endif
