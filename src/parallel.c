/* parallel.c — gilfree._core.parallel_for and the job every native kernel runs (see parallel.h).
 *
 * Invariants:
 *   - A chunk [b, min(b + grain, n)) is handed out exactly once: `next` only grows, by fetch-add.
 *   - `active` counts participants between their entry and exit of gf_job_work, under mu; the caller
 *     returns only when the hand-out is over (next >= n or stop) and active == 0, so no kernel call on the
 *     caller's data can start or be running after it returns.
 *   - The job is freed by the last reference (caller or a helper that ran late).
 */
#include "parallel.h"

#include <errno.h>
#include <time.h>

static int
handout_over(gf_job *j)
{
    return atomic_load(&j->stop) || atomic_load(&j->next) >= j->n;
}

void
gf_job_work(gf_job *j)
{
    pthread_mutex_lock(&j->mu);
    j->active++;
    pthread_mutex_unlock(&j->mu);
    for (;;) {
        if (atomic_load_explicit(&j->stop, memory_order_relaxed)) {
            break;
        }
        int64_t b = atomic_fetch_add(&j->next, j->grain);
        if (b >= j->n) {
            break;
        }
        int64_t e = b + j->grain < j->n ? b + j->grain : j->n;
        int rc = j->fn(b, e, j->arg);
        if (rc != 0) {
            pthread_mutex_lock(&j->mu);
            if (j->err_code == 0) {
                j->err_code = rc;
                j->err_begin = b;
                j->err_end = e;
            }
            pthread_mutex_unlock(&j->mu);
            atomic_store(&j->stop, 1);
            break;
        }
    }
    pthread_mutex_lock(&j->mu);
    j->active--;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

void
gf_job_decref(gf_job *j)
{
    if (atomic_fetch_sub(&j->refs, 1) == 1) {
        pthread_mutex_destroy(&j->mu);
        pthread_cond_destroy(&j->cv);
        PyMem_RawFree(j);
    }
}

static gf_job *
job_new(int64_t n, int64_t grain, gf_kernel_fn fn, void *arg)
{
    gf_job *j = PyMem_RawCalloc(1, sizeof(gf_job));
    if (j == NULL) {
        return NULL;
    }
    pthread_mutex_init(&j->mu, NULL);
    gf_cond_init_monotonic(&j->cv);
    atomic_init(&j->refs, 1);
    atomic_init(&j->next, 0);
    atomic_init(&j->stop, 0);
    j->fn = fn;
    j->arg = arg;
    j->n = n;
    j->grain = grain;
    return j;
}

/* Wait (detached) until the job is over, at most ~50 ms. 1 when over. */
static int
job_wait_slice(gf_job *j)
{
    struct timespec until;
    gf_monotonic_after(&until, GF_SIGNAL_POLL_NS);
    pthread_mutex_lock(&j->mu);
    int over = handout_over(j) && j->active == 0;
    if (!over) {
        pthread_cond_timedwait(&j->cv, &j->mu, &until);
        over = handout_over(j) && j->active == 0;
    }
    pthread_mutex_unlock(&j->mu);
    return over;
}

int
gf_parallel_run(gf_state *st, PyObject *pool, int64_t n, gf_kernel_fn fn, void *arg, int workers,
                int64_t grain)
{
    if (n <= 0) {
        return 0;
    }
    if (workers < 1) {
        workers = 1;
    }
    if (grain <= 0) { /* about 8 chunks per worker: uneven work still spreads */
        grain = n / ((int64_t)workers * 8);
        if (grain < 1) {
            grain = 1;
        }
    }
    gf_job *j = job_new(n, grain, fn, arg);
    if (j == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int is_main = PyThread_get_thread_ident() == st->main_ident;
    /* The main thread only waits (so Ctrl-C is seen within 50 ms); any other caller, a pool task among
     * them, takes chunks too, so a busy pool can never deadlock it. */
    int helpers = is_main ? workers : workers - 1;
    int posted = gf_pool_post_helpers(pool, j, helpers);
    int interrupted = 0;
    if (!is_main || posted == 0) {
        Py_BEGIN_ALLOW_THREADS
        gf_job_work(j);
        Py_END_ALLOW_THREADS
    }
    for (;;) {
        int over;
        Py_BEGIN_ALLOW_THREADS
        over = job_wait_slice(j);
        Py_END_ALLOW_THREADS
        if (over) {
            break;
        }
        if (is_main && !interrupted && PyErr_CheckSignals() < 0) {
            interrupted = 1; /* stop the hand-out; wait for the running chunks, then raise */
            atomic_store(&j->stop, 1);
        }
        if (!handout_over(j) && gf_pool_stopped(pool)) {
            Py_BEGIN_ALLOW_THREADS /* nobody left to help: finish here */
            gf_job_work(j);
            Py_END_ALLOW_THREADS
        }
    }
    int code = j->err_code;
    int64_t eb = j->err_begin, ee = j->err_end;
    gf_job_decref(j);
    if (interrupted) {
        return -1;
    }
    if (code != 0) {
        PyObject *exc = PyObject_CallFunction(st->KernelError, "s", "");
        PyObject *msg = PyUnicode_FromFormat("kernel returned %d for the chunk [%lld, %lld)", code,
                                             (long long)eb, (long long)ee);
        PyObject *c = PyLong_FromLong(code), *b = PyLong_FromLongLong(eb), *e = PyLong_FromLongLong(ee);
        PyObject *args = msg ? PyTuple_Pack(1, msg) : NULL;
        if (exc == NULL || args == NULL || c == NULL || b == NULL || e == NULL ||
            PyObject_SetAttrString(exc, "args", args) < 0 || PyObject_SetAttrString(exc, "code", c) < 0 ||
            PyObject_SetAttrString(exc, "begin", b) < 0 || PyObject_SetAttrString(exc, "end", e) < 0) {
            Py_XDECREF(exc);
            exc = NULL;
        }
        Py_XDECREF(msg);
        Py_XDECREF(args);
        Py_XDECREF(c);
        Py_XDECREF(b);
        Py_XDECREF(e);
        if (exc == NULL) {
            return -1;
        }
        PyErr_SetObject(st->KernelError, exc);
        Py_DECREF(exc);
        return -1;
    }
    return 0;
}

/* parallel_for(n, kernel_address, arg_address, workers, grain, pool) — the Python layer resolved the
 * kernel and arg objects to addresses and checked every argument. */
static PyObject *
parallel_for_impl(PyObject *module, PyObject *args)
{
    gf_state *st = gf_get_state(module);
    long long n, grain;
    unsigned long long kernel, arg;
    int workers;
    PyObject *pool;
    if (!PyArg_ParseTuple(args, "LKKiLO:_parallel_for", &n, &kernel, &arg, &workers, &grain, &pool)) {
        return NULL;
    }
    if (!PyObject_TypeCheck(pool, st->pool_type)) {
        return PyErr_Format(PyExc_TypeError, "pool must be a gilfree.ThreadPool, not %.100s",
                            Py_TYPE(pool)->tp_name);
    }
    if (n < 0 || kernel == 0 || workers < 1) {
        return PyErr_Format(PyExc_ValueError, "bad parallel_for arguments");
    }
    gf_kernel_fn fn = (gf_kernel_fn)(uintptr_t)kernel;
    if (gf_parallel_run(st, pool, n, fn, (void *)(uintptr_t)arg, workers, grain) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef parallel_methods[] = {
    {"_parallel_for", parallel_for_impl, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

int
gf_parallel_setup(PyObject *module, gf_state *st)
{
    st->KernelError = PyErr_NewExceptionWithDoc(
        "gilfree.KernelError", "A native kernel returned a nonzero code: .code, and the chunk .begin/.end.",
        NULL, NULL);
    if (st->KernelError == NULL || PyModule_AddObjectRef(module, "KernelError", st->KernelError) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(module, parallel_methods);
}
