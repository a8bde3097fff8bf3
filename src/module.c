/* module.c — gilfree._core: module state, exceptions, sentinels, and the chain of per-file setups.
 *
 * Multi-phase init; everything lives in the module state. The core never relies on the GIL for its own
 * state (every shared field is guarded by a pthread mutex or is atomic), so it declares
 * Py_MOD_GIL_NOT_USED for free-threaded builds.
 */
#include "gilfree.h"
#include "park.h"
#include "parallel.h"

#include <structmember.h>

/* ---- sentinels (CLOSED, default) ---------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *name;
} SentinelObject;

static PyObject *
sentinel_repr(PyObject *op)
{
    return Py_NewRef(((SentinelObject *)op)->name);
}

static PyObject *
sentinel_reduce(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    /* Pickles by name: gilfree.CLOSED unpickles to the same singleton. */
    PyObject *name = ((SentinelObject *)op)->name;
    return PyUnicode_Substring(name, 8, PyUnicode_GET_LENGTH(name)); /* strip "gilfree." */
}

static void
sentinel_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    Py_XDECREF(((SentinelObject *)op)->name);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyMethodDef sentinel_methods[] = {
    {"__reduce__", sentinel_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot sentinel_slots[] = {
    {Py_tp_repr, sentinel_repr},
    {Py_tp_dealloc, sentinel_dealloc},
    {Py_tp_methods, sentinel_methods},
    {Py_tp_doc, "A gilfree singleton (CLOSED or default)."},
    {0, NULL},
};

static PyType_Spec sentinel_spec = {
    .name = "gilfree._core._Sentinel",
    .basicsize = sizeof(SentinelObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = sentinel_slots,
};

static PyObject *
new_sentinel(gf_state *st, const char *name)
{
    SentinelObject *s = PyObject_New(SentinelObject, st->sentinel_type);
    if (s == NULL) {
        return NULL;
    }
    Py_INCREF(st->sentinel_type); /* instances of heap types own a reference to their type */
    s->name = PyUnicode_FromString(name);
    if (s->name == NULL) {
        Py_DECREF(s);
        return NULL;
    }
    return (PyObject *)s;
}

/* ---- module ------------------------------------------------------------------------------------- */

static int
main_thread_ident(unsigned long *out)
{
    PyObject *threading = PyImport_ImportModule("threading");
    if (threading == NULL) {
        return -1;
    }
    PyObject *main = PyObject_CallMethod(threading, "main_thread", NULL);
    Py_DECREF(threading);
    if (main == NULL) {
        return -1;
    }
    PyObject *ident = PyObject_GetAttrString(main, "ident");
    Py_DECREF(main);
    if (ident == NULL) {
        return -1;
    }
    *out = PyLong_AsUnsignedLong(ident);
    Py_DECREF(ident);
    return PyErr_Occurred() ? -1 : 0;
}

/* _after_fork_child(): called in a forked child (os.register_at_fork) by the thread that forked. */
static PyObject *
after_fork_child(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    gf_park_after_fork_child(gf_get_state(module));
    Py_RETURN_NONE;
}

/* Atomic int64 slots in a writable buffer (a shared mapping between processes: ProcessPool's claims).
 * -1 with ValueError unless the slot is inside the buffer and 8-byte aligned. */
static int64_t *
shm_slot(Py_buffer *view, Py_ssize_t index)
{
    if (index < 0 || index > view->len / 8 - 1 || ((uintptr_t)view->buf & 7) != 0) {
        PyErr_Format(PyExc_ValueError, "index %zd is outside the buffer's %zd aligned 8-byte slots", index,
                     view->len / 8);
        return NULL;
    }
    return (int64_t *)view->buf + index;
}

static PyObject *
shm_cas(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer view;
    Py_ssize_t index;
    long long expected, desired;
    if (!PyArg_ParseTuple(args, "w*nLL:_shm_cas", &view, &index, &expected, &desired)) {
        return NULL;
    }
    int64_t *slot = shm_slot(&view, index);
    PyObject *r = NULL;
    if (slot != NULL) {
        int64_t e = expected;
        r = PyBool_FromLong(__atomic_compare_exchange_n(slot, &e, (int64_t)desired, 0, __ATOMIC_SEQ_CST,
                                                        __ATOMIC_SEQ_CST));
    }
    PyBuffer_Release(&view);
    return r;
}

static PyObject *
shm_store(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer view;
    Py_ssize_t index;
    long long value;
    if (!PyArg_ParseTuple(args, "w*nL:_shm_store", &view, &index, &value)) {
        return NULL;
    }
    int64_t *slot = shm_slot(&view, index);
    if (slot != NULL) {
        __atomic_store_n(slot, (int64_t)value, __ATOMIC_SEQ_CST);
    }
    PyBuffer_Release(&view);
    if (slot == NULL) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
shm_load(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer view;
    Py_ssize_t index;
    if (!PyArg_ParseTuple(args, "w*n:_shm_load", &view, &index)) {
        return NULL;
    }
    int64_t *slot = shm_slot(&view, index);
    PyObject *r = slot != NULL ? PyLong_FromLongLong(__atomic_load_n(slot, __ATOMIC_SEQ_CST)) : NULL;
    PyBuffer_Release(&view);
    return r;
}

static PyMethodDef module_methods[] = {
    {"_after_fork_child", after_fork_child, METH_NOARGS,
     "_after_fork_child() (os.register_at_fork): the forking thread is the child's main thread now"},
    {"_shm_cas", shm_cas, METH_VARARGS,
     "_shm_cas(buffer, index, expected, desired) -> bool: atomic compare-and-swap of int64 slot `index`"},
    {"_shm_store", shm_store, METH_VARARGS, "_shm_store(buffer, index, value): atomic store of an int64 slot"},
    {"_shm_load", shm_load, METH_VARARGS, "_shm_load(buffer, index) -> int: atomic load of an int64 slot"},
    {NULL, NULL, 0, NULL},
};

static int
add_object(PyObject *module, const char *name, PyObject *obj)
{
    return PyModule_AddObjectRef(module, name, obj);
}

static int
core_exec(PyObject *module)
{
    gf_state *st = gf_get_state(module);
    /* Pool workers attach to the main interpreter (PyGILState_Ensure), and the timer, exit hook and fork
     * handling are per process: gilfree runs in the main interpreter only. 3.12+ refuses the import in a
     * subinterpreter through the slot below; this check says the same on 3.11. */
    if (PyInterpreterState_Get() != PyInterpreterState_Main()) {
        PyErr_SetString(PyExc_ImportError, "gilfree._core does not support loading in subinterpreters: its "
                                           "pool workers run in the main interpreter");
        return -1;
    }
    gf_park_install_fork_handler();
    if (main_thread_ident(&st->main_ident) < 0) {
        return -1;
    }
    st->ChannelClosed = PyErr_NewExceptionWithDoc(
        "gilfree.ChannelClosed", "The channel is closed: nothing more can be sent, and it is drained.", NULL,
        NULL);
    if (st->ChannelClosed == NULL || add_object(module, "ChannelClosed", st->ChannelClosed) < 0) {
        return -1;
    }
    st->WouldBlock = PyErr_NewExceptionWithDoc(
        "gilfree.WouldBlock", "A non-blocking channel operation could not proceed now.", NULL, NULL);
    if (st->WouldBlock == NULL || add_object(module, "WouldBlock", st->WouldBlock) < 0) {
        return -1;
    }
    st->Cancelled = PyErr_NewExceptionWithDoc(
        "gilfree.Cancelled", "The work was cancelled: its context was cancelled, or its pool shut down.",
        NULL, NULL);
    if (st->Cancelled == NULL || add_object(module, "Cancelled", st->Cancelled) < 0) {
        return -1;
    }
    st->sentinel_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &sentinel_spec, NULL);
    if (st->sentinel_type == NULL) {
        return -1;
    }
    st->CLOSED = new_sentinel(st, "gilfree.CLOSED");
    if (st->CLOSED == NULL || add_object(module, "CLOSED", st->CLOSED) < 0) {
        return -1;
    }
    st->default_case = new_sentinel(st, "gilfree.default");
    if (st->default_case == NULL || add_object(module, "default", st->default_case) < 0) {
        return -1;
    }
    if (PyModule_AddFunctions(module, module_methods) < 0) {
        return -1;
    }
    if (gf_channel_setup(module, st) < 0 || gf_asyncop_setup(module, st) < 0 || gf_select_setup(module, st) < 0 ||
        gf_netpoll_setup(module, st) < 0 || gf_poller_setup(module, st) < 0 || gf_procchan_setup(module, st) < 0 ||
        gf_future_setup(module, st) < 0 || gf_pool_setup(module, st) < 0 ||
        gf_parallel_setup(module, st) < 0 || gf_kernels_setup(module, st) < 0) {
        return -1;
    }
    return 0;
}

static int
core_traverse(PyObject *module, visitproc visit, void *arg)
{
    gf_state *st = gf_get_state(module);
    Py_VISIT(st->channel_type);
    Py_VISIT(st->fdcase_type);
    Py_VISIT(st->poller_type);
    Py_VISIT(st->asyncop_type);
    Py_VISIT(st->sentinel_type);
    Py_VISIT(st->ChannelClosed);
    Py_VISIT(st->WouldBlock);
    Py_VISIT(st->Cancelled);
    Py_VISIT(st->CLOSED);
    Py_VISIT(st->default_case);
    Py_VISIT(st->future_type);
    Py_VISIT(st->future_class);
    Py_VISIT(st->pool_type);
    Py_VISIT(st->InvalidStateError);
    Py_VISIT(st->CancelledError);
    Py_VISIT(st->BrokenThreadPool);
    Py_VISIT(st->log_callback_error);
    Py_VISIT(st->KernelError);
    return 0;
}

static int
core_clear(PyObject *module)
{
    gf_state *st = gf_get_state(module);
    Py_CLEAR(st->channel_type);
    Py_CLEAR(st->fdcase_type);
    Py_CLEAR(st->poller_type);
    Py_CLEAR(st->asyncop_type);
    Py_CLEAR(st->sentinel_type);
    Py_CLEAR(st->ChannelClosed);
    Py_CLEAR(st->WouldBlock);
    Py_CLEAR(st->Cancelled);
    Py_CLEAR(st->CLOSED);
    Py_CLEAR(st->default_case);
    Py_CLEAR(st->future_type);
    Py_CLEAR(st->future_class);
    Py_CLEAR(st->pool_type);
    Py_CLEAR(st->InvalidStateError);
    Py_CLEAR(st->CancelledError);
    Py_CLEAR(st->BrokenThreadPool);
    Py_CLEAR(st->log_callback_error);
    Py_CLEAR(st->KernelError);
    return 0;
}

static void
core_free(void *module)
{
    (void)core_clear((PyObject *)module);
}

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

PyModuleDef gf_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gilfree._core",
    .m_doc = "gilfree's C core: Go-style channels and select, free of the GIL while they wait.",
    .m_size = sizeof(gf_state),
    .m_slots = core_slots,
    .m_traverse = core_traverse,
    .m_clear = core_clear,
    .m_free = core_free,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    return PyModuleDef_Init(&gf_module_def);
}
