/* select.c — gilfree.select(): parses the cases (channel recv/send methods, (send, value) pairs, readable()/
 * writable() fd cases, default, timeout) and runs them as one operation through the engine (engine.c).
 */
#include "channel.h"

#include <errno.h>
#include <poll.h>


/* ---- gilfree.select ----------------------------------------------------------------------------- */

static int
is_poller(gf_state *st, PyObject *fileobj)
{
    return fileobj != NULL && Py_IS_TYPE(fileobj, st->poller_type);
}

static PyObject *
select_impl(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    gf_state *st = gf_get_state(module);
    PyObject *timeout = NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        if (PyUnicode_CompareWithASCIIString(key, "timeout") != 0) {
            return PyErr_Format(PyExc_TypeError, "select() got an unexpected keyword argument '%U'", key);
        }
        timeout = args[nargs + k];
    }
    gf_deadline d;
    if (gf_deadline_from_timeout(timeout, &d, "timeout") < 0) {
        return NULL;
    }
    if (nargs == 0 && d.infinite) {
        /* Go's `select {}` blocks for ever, and Go reports the deadlock; here that is a clear error. (With
         * a timeout, no case is a sleep that ends in TimeoutError.) */
        return PyErr_Format(PyExc_ValueError, "select() needs at least one case (with none it would block "
                                              "for ever)");
    }
    if (nargs > 1 << 20) {
        return PyErr_Format(PyExc_ValueError, "select() takes at most %d cases", 1 << 20);
    }
    int n = (int)nargs, default_index = -1;
    gf_case smallcases[GF_SMALL_SELECT];
    gf_case *cases = n > GF_SMALL_SELECT ? PyMem_Calloc((size_t)n, sizeof(gf_case)) : smallcases;
    if (cases == NULL) {
        return PyErr_NoMemory();
    }
    PyObject *result = NULL;
    for (int i = 0; i < n; i++) {
        cases[i].ch = NULL;
        cases[i].value = NULL;
        cases[i].is_send = 0;
        cases[i].fd = -1;
        cases[i].events = 0;
        cases[i].fileobj = NULL;
    }
    for (int i = 0; i < n; i++) {
        PyObject *arg = args[i];
        ChannelObject *ch;
        if (arg == Py_None) {
            continue; /* never ready */
        }
        if (arg == st->default_case) {
            if (default_index >= 0) {
                PyErr_SetString(PyExc_TypeError, "select() got more than one default case");
                goto done;
            }
            default_index = i;
            continue;
        }
        if (gf_channel_case_kind(st, arg, &ch) == 1) {
            cases[i].ch = ch;
            continue;
        }
        if (gf_fdcase_fill(st, arg, &cases[i])) {
            continue;
        }
        int pr = gf_poller_fill(st, arg, &cases[i]);
        if (pr < 0) {
            goto done;
        }
        if (pr) {
            continue;
        }
        if (PyTuple_Check(arg) && PyTuple_GET_SIZE(arg) == 2 &&
            gf_channel_case_kind(st, PyTuple_GET_ITEM(arg, 0), &ch) == 2) {
            cases[i].ch = ch;
            cases[i].is_send = 1;
            cases[i].value = Py_NewRef(PyTuple_GET_ITEM(arg, 1));
            continue;
        }
        PyErr_Format(PyExc_TypeError,
                     "select() case %d must be a channel's bound recv, a (channel.send, value) pair, "
                     "gilfree.readable(f), gilfree.writable(f), a gilfree.Poller, gilfree.default or None, not %.100R "
                     "(pass ch.recv itself, not ch.recv(): calling it receives a value before select runs)",
                     i, arg);
        goto done;
    }
    gf_outcome o;
    int r;
    for (;;) {
        r = gf_engine_run(st, cases, n, default_index < 0, &d, &o);
        if (r < 0) {
            goto done;
        }
        if (r == GF_WOULDBLOCK || !is_poller(st, cases[o.index].fileobj)) {
            break;
        }
        /* A Poller's descriptor was ready: its value is what is ready now. Another thread may have taken it
         * first (level-triggered, every waiter is told): then wait again, with every send case re-armed (the
         * engine consumed their values). wake() returns an empty list. */
        int woke;
        PyObject *ready = gf_poller_harvest(cases[o.index].fileobj, &woke);
        if (ready == NULL) {
            goto done;
        }
        if (PyList_GET_SIZE(ready) > 0 || woke) {
            o.value = ready;
            break;
        }
        Py_DECREF(ready);
        if (default_index >= 0) {
            r = GF_WOULDBLOCK; /* non-blocking: nothing is ready after all */
            break;
        }
        if (gf_deadline_passed(&d)) {
            PyErr_SetString(PyExc_TimeoutError, "timed out");
            goto done;
        }
        if (PyErr_CheckSignals() < 0) {
            goto done;
        }
        for (int i = 0; i < n; i++) {
            if (cases[i].is_send) {
                Py_XSETREF(cases[i].value, Py_NewRef(PyTuple_GET_ITEM(args[i], 1)));
            }
        }
    }
    if (r == GF_WOULDBLOCK) {
        result = Py_BuildValue("(iO)", default_index, Py_None);
        goto done;
    }
    if (o.closed && cases[o.index].is_send) {
        PyErr_SetString(st->ChannelClosed, "select: send case on a closed channel");
        goto done;
    }
    if (o.closed) {
        o.value = Py_NewRef(st->CLOSED);
    }
    if (cases[o.index].fileobj != NULL && !is_poller(st, cases[o.index].fileobj)) {
        o.value = Py_NewRef(cases[o.index].fileobj);
    }
    result = Py_BuildValue("(iN)", o.index, o.value ? o.value : Py_NewRef(Py_None));

done:
    for (int i = 0; i < n; i++) {
        Py_XDECREF(cases[i].value);
        if (is_poller(st, cases[i].fileobj)) {
            gf_poller_leave(cases[i].fileobj);
        }
    }
    if (cases != smallcases) {
        PyMem_Free(cases);
    }
    return result;
}

static PyMethodDef select_methods[] = {
    {"select", (PyCFunction)(void (*)(void))select_impl, METH_FASTCALL | METH_KEYWORDS,
     "select(*cases, timeout=None)\n--\n\n"
     "Wait until one case can proceed, perform exactly that one, and return (index, value).\n\n"
     "A case is a channel's bound recv, a (channel.send, value) pair, gilfree.readable(f) or\n"
     "gilfree.writable(f) (ready when the file descriptor is; the value is f), a gilfree.Poller (ready when\n"
     "one of its files is; the value is the list of (f, events) ready), gilfree.default (makes the\n"
     "call non-blocking: its index is returned when nothing is ready) or None (never ready). A recv case on a\n"
     "closed, drained channel yields gilfree.CLOSED; a send case on a closed channel raises ChannelClosed.\n"
     "Among several ready cases one is chosen uniformly at random. TimeoutError when timeout passes.\n"
     "No case at all and no timeout: ValueError (it would block for ever)."},
    {NULL, NULL, 0, NULL},
};

int
gf_select_setup(PyObject *module, gf_state *Py_UNUSED(st))
{
    return PyModule_AddFunctions(module, select_methods);
}
