/* gilfree.h — what every C file of gilfree._core shares: the module state and the per-file setup hooks.
 *
 * The core keeps no C globals holding Python objects: every type, exception and sentinel lives in the
 * module state (gf_state), reached from a module object or, for instances, through the pointer each
 * object caches when it is created (an instance keeps its heap type alive, the type keeps the module).
 *
 * Dependencies point one way: module.c -> channel.c, select.c -> engine.c -> chancore.c -> ring.c, park.c.
 */
#ifndef GILFREE_H
#define GILFREE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdio.h>
#include <stdlib.h>

/* GF_ASSERT(cond): the invariants the comments state, checked in the debug build (GILFREE_DEBUG=1 builds
 * with -DGILFREE_ASSERTIONS -UNDEBUG and the tests run under it in CI); compiled out otherwise. A failure
 * prints where and aborts, so faulthandler names the thread. */
#ifdef GILFREE_ASSERTIONS
#  define GF_ASSERT(cond) \
    ((cond) ? (void)0 : gf_assert_fail(#cond, __FILE__, __LINE__))
static inline void
gf_assert_fail(const char *what, const char *file, int line)
{
    fprintf(stderr, "gilfree: assertion failed: %s (%s:%d)\n", what, file, line);
    fflush(stderr);
    abort();
}
#else
#  define GF_ASSERT(cond) ((void)0)
#endif

typedef struct gf_state {
    PyTypeObject *channel_type;   /* gilfree._core.Channel */
    PyTypeObject *asyncop_type;   /* gilfree._core._AsyncOp: one pending asyncio send or recv */
    PyTypeObject *sentinel_type;  /* type of CLOSED and default */
    PyTypeObject *future_type;    /* gilfree._core.Future, the C base of gilfree.Future */
    PyTypeObject *future_class;   /* gilfree.Future (set by _configure_futures), what pools create */
    PyTypeObject *pool_type;      /* gilfree._core.Pool, the C base of gilfree.ThreadPool */
    PyTypeObject *fdcase_type;    /* gilfree._core.FdCase: readable(f) / writable(f) select cases */
    PyTypeObject *poller_type;    /* gilfree._core.Poller: registered fds on epoll (poller.c) */
    PyObject *InvalidStateError;  /* concurrent.futures.InvalidStateError */
    PyObject *CancelledError;     /* concurrent.futures.CancelledError */
    PyObject *BrokenThreadPool;   /* concurrent.futures.thread.BrokenThreadPool */
    PyObject *log_callback_error; /* logs a done callback's exception: f(future, exc) */
    PyObject *KernelError;        /* exception: a native kernel returned a nonzero code */
    PyObject *ChannelClosed;      /* exception: the channel is closed */
    PyObject *WouldBlock;         /* exception: a *_nowait call could not proceed */
    PyObject *Cancelled;          /* exception: the work was cancelled (Context.err(), pool teardown) */
    PyObject *CLOSED;             /* singleton a select recv case yields on a closed, drained channel */
    PyObject *default_case;       /* singleton marking select's non-blocking default case */
    unsigned long main_ident;     /* thread ident of the main thread: its waits poll for signals */
} gf_state;

extern PyModuleDef gf_module_def;

/* The exception being raised, taken out (normalized, traceback attached): a new reference, or NULL if
 * none. PyErr_Fetch is deprecated since 3.12; this is the one place that knows both APIs. */
static inline PyObject *
gf_err_take(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && tb != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

/* Raise `exc` again (steals the reference; NULL: nothing). */
static inline void
gf_err_restore(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    if (exc != NULL) {
        PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc, PyException_GetTraceback(exc));
    }
#endif
}

static inline gf_state *
gf_get_state(PyObject *module)
{
    return (gf_state *)PyModule_GetState(module);
}

/* Each file with a type or a function exports one setup function; module.c only chains them. */
int gf_channel_setup(PyObject *module, gf_state *st);
int gf_asyncop_setup(PyObject *module, gf_state *st);
int gf_select_setup(PyObject *module, gf_state *st);
int gf_future_setup(PyObject *module, gf_state *st);
int gf_pool_setup(PyObject *module, gf_state *st);
int gf_netpoll_setup(PyObject *module, gf_state *st);
int gf_poller_setup(PyObject *module, gf_state *st);
int gf_procchan_setup(PyObject *module, gf_state *st);

/* Argument parsing for METH_FASTCALL|METH_KEYWORDS methods: fills out[0..nmax) (NULL when absent) from
 * positional and keyword arguments named by `names`. Raises TypeError like CPython's own parsers. */
int gf_parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                  const char *const *names, int nrequired, int nmax, PyObject **out);

#endif
