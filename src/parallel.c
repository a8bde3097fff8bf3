/* parallel.c — gilfree._core.parallel_for and the job every native kernel runs (see parallel.h).
 *
 * Invariants:
 *   - Chunk k (0 <= k < nchunks) is handed out exactly once: `next` only grows, by fetch-add of 1; an
 *     index >= nchunks hands out nothing. `next` is unsigned 64-bit and nchunks <= 2^63, so it cannot wrap
 *     (at most one increment per participant goes past nchunks).
 *   - `active` counts participants between their entry and exit of gf_job_work, under mu; the caller
 *     returns only when the hand-out is over (next >= nchunks or stop) and active == 0, so no kernel call
 *     on the caller's data can start or be running after it returns.
 *   - The job is freed by the last reference (caller or a helper that ran late).
 *   - A job is on the live registry exactly while its caller is inside gf_parallel_run.
 */
#include "parallel.h"

#include <errno.h>
#include <time.h>

/* ---- the registry of running jobs (interpreter exit stops them) ------------------------------------- */

static pthread_mutex_t live_mu = PTHREAD_MUTEX_INITIALIZER; /* a leaf lock */
static gf_job *live_head;
static atomic_int live_exiting;

static void
live_add(gf_job *j)
{
    pthread_mutex_lock(&live_mu);
    j->live_prev = NULL;
    j->live_next = live_head;
    if (live_head != NULL) {
        live_head->live_prev = j;
    }
    live_head = j;
    if (atomic_load(&live_exiting)) {
        atomic_store(&j->cancelled, 1);
        atomic_store(&j->stop, 1);
    }
    pthread_mutex_unlock(&live_mu);
}

static void
live_remove(gf_job *j)
{
    pthread_mutex_lock(&live_mu);
    if (j->live_prev != NULL) {
        j->live_prev->live_next = j->live_next;
    }
    else {
        live_head = j->live_next;
    }
    if (j->live_next != NULL) {
        j->live_next->live_prev = j->live_prev;
    }
    j->live_prev = j->live_next = NULL;
    pthread_mutex_unlock(&live_mu);
}

void
gf_parallel_stop_all(void)
{
    pthread_mutex_lock(&live_mu);
    atomic_store(&live_exiting, 1);
    for (gf_job *j = live_head; j != NULL; j = j->live_next) {
        atomic_store(&j->cancelled, 1);
        atomic_store(&j->stop, 1);
    }
    pthread_mutex_unlock(&live_mu);
}

/* In a forked child the jobs' threads do not exist, and live_mu may be held by one of them. */
static void
live_after_fork_in_child(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    live_mu = fresh;
    live_head = NULL;
}

static pthread_once_t live_fork_once = PTHREAD_ONCE_INIT;

static void
live_install_fork_handler(void)
{
    (void)pthread_atfork(NULL, NULL, live_after_fork_in_child);
}

/* ---- the job ------------------------------------------------------------------------------------- */

static int
handout_over(gf_job *j)
{
    return atomic_load(&j->stop) || atomic_load(&j->next) >= j->nchunks;
}

void
gf_job_work(gf_job *j, int64_t max_chunks)
{
    pthread_mutex_lock(&j->mu);
    j->active++;
    pthread_mutex_unlock(&j->mu);
    for (int64_t done = 0; max_chunks < 0 || done < max_chunks; done++) {
        if (atomic_load_explicit(&j->stop, memory_order_relaxed)) {
            break;
        }
        uint64_t k = atomic_fetch_add(&j->next, 1);
        if (k >= j->nchunks) {
            break;
        }
        int64_t b = (int64_t)k * j->grain; /* < n: k < nchunks = ceil(n / grain) */
        int64_t e = j->n - b > j->grain ? b + j->grain : j->n;
        GF_ASSERT(0 <= b && b < e && e <= j->n);
        int rc = j->fn(b, e, j->arg);
        if (rc == GF_KERNEL_STOPPED && atomic_load(&j->stop)) {
            break; /* a built-in kernel saw the stop flag: not a failure */
        }
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
    GF_ASSERT(j->active >= 0);
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
    atomic_init(&j->cancelled, 0);
    j->fn = fn;
    j->arg = arg;
    j->n = n;
    j->grain = grain;
    j->nchunks = (uint64_t)(n / grain) + (n % grain != 0);
    return j;
}

/* Wait (detached) until the job is over, at most ~50 ms. 1 when over. *idle: nobody is inside a chunk. */
static int
job_wait_slice(gf_job *j, int *idle)
{
    struct timespec until;
    gf_monotonic_after(&until, GF_SIGNAL_POLL_NS);
    pthread_mutex_lock(&j->mu);
    int over = handout_over(j) && j->active == 0;
    if (!over) {
        pthread_cond_timedwait(&j->cv, &j->mu, &until);
        over = handout_over(j) && j->active == 0;
    }
    *idle = j->active == 0;
    pthread_mutex_unlock(&j->mu);
    return over;
}

static int
raise_kernel_error(gf_state *st, int code, int64_t eb, int64_t ee)
{
    PyObject *exc = PyObject_CallFunction(st->KernelError, "s", "");
    PyObject *msg = PyUnicode_FromFormat("kernel returned %d for the chunk [%lld, %lld)", code, (long long)eb,
                                         (long long)ee);
    PyObject *c = PyLong_FromLong(code), *b = PyLong_FromLongLong(eb), *e = PyLong_FromLongLong(ee);
    PyObject *args = msg ? PyTuple_Pack(1, msg) : NULL;
    if (exc == NULL || args == NULL || c == NULL || b == NULL || e == NULL ||
        PyObject_SetAttrString(exc, "args", args) < 0 || PyObject_SetAttrString(exc, "code", c) < 0 ||
        PyObject_SetAttrString(exc, "begin", b) < 0 || PyObject_SetAttrString(exc, "end", e) < 0) {
        Py_CLEAR(exc);
    }
    Py_XDECREF(msg);
    Py_XDECREF(args);
    Py_XDECREF(c);
    Py_XDECREF(b);
    Py_XDECREF(e);
    if (exc != NULL) {
        PyErr_SetObject(st->KernelError, exc);
        Py_DECREF(exc);
    }
    return -1;
}

int
gf_parallel_run(gf_state *st, PyObject *pool, int64_t n, gf_kernel_fn fn, void *arg, int workers,
                int64_t grain, const atomic_int **stop_out)
{
    if (!PyObject_TypeCheck(pool, st->pool_type)) {
        PyErr_Format(PyExc_TypeError, "pool must be a gilfree.ThreadPool, not %.100s", Py_TYPE(pool)->tp_name);
        return -1;
    }
    if (n <= 0) {
        return 0;
    }
    int cap = gf_pool_max_workers(pool);
    if (workers > cap) { /* more participants than threads would only queue idle helpers */
        workers = cap;
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
    if (stop_out != NULL) {
        *stop_out = &j->stop;
    }
    (void)pthread_once(&live_fork_once, live_install_fork_handler);
    live_add(j);
    int is_main = PyThread_get_thread_ident() == st->main_ident;
    /* The main thread mostly waits, so Ctrl-C is seen within 50 ms; it works a chunk itself only when no
     * helper is inside one (all busy elsewhere), checking signals between chunks. Any other caller, a pool
     * task among them, takes chunks from the start, so a busy pool can never deadlock it. */
    int helpers = is_main ? workers : workers - 1;
    int posted = gf_pool_post_helpers(pool, j, helpers);
    int interrupted = 0;
    /* self_help: work chunks here too, one at a time on the main thread (signals checked between them). */
    int self_help = !is_main || posted == 0;
    for (;;) {
        int over, idle = 0;
        if (self_help && !handout_over(j)) {
            Py_BEGIN_ALLOW_THREADS
            gf_job_work(j, is_main ? 1 : -1);
            Py_END_ALLOW_THREADS
            over = 0;
        }
        else {
            Py_BEGIN_ALLOW_THREADS
            over = job_wait_slice(j, &idle);
            Py_END_ALLOW_THREADS
            if (over) {
                break;
            }
        }
        if (is_main && !interrupted && PyErr_CheckSignals() < 0) {
            interrupted = 1; /* stop the hand-out; wait for the running chunks, then raise */
            atomic_store(&j->stop, 1);
        }
        if (idle || gf_pool_stopped(pool)) {
            self_help = 1; /* no helper inside a chunk for a whole slice: the pool is busy or gone */
        }
    }
    live_remove(j);
    int code = j->err_code, cancelled = atomic_load(&j->cancelled);
    int64_t eb = j->err_begin, ee = j->err_end;
    gf_job_decref(j);
    if (interrupted) {
        return -1;
    }
    if (code != 0) {
        return raise_kernel_error(st, code, eb, ee);
    }
    if (cancelled) {
        PyErr_SetString(st->Cancelled, "parallel_for stopped: the interpreter is exiting");
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
    if (n < 0) {
        return PyErr_Format(PyExc_ValueError, "n must be >= 0, got %lld", n);
    }
    if (kernel == 0) {
        return PyErr_Format(PyExc_ValueError, "kernel must be a non-null function address");
    }
    if (workers < 1) {
        return PyErr_Format(PyExc_ValueError, "workers must be >= 1, got %d", workers);
    }
    if (grain < 0) {
        return PyErr_Format(PyExc_ValueError, "grain must be >= 1 (or 0 for the default), got %lld", grain);
    }
    gf_kernel_fn fn = (gf_kernel_fn)(uintptr_t)kernel;
    if (gf_parallel_run(st, pool, n, fn, (void *)(uintptr_t)arg, workers, grain, NULL) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
stop_kernels_impl(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    gf_parallel_stop_all();
    Py_RETURN_NONE;
}

static PyMethodDef parallel_methods[] = {
    {"_parallel_for", parallel_for_impl, METH_VARARGS, NULL},
    {"_stop_kernels", stop_kernels_impl, METH_NOARGS,
     "_stop_kernels() (interpreter exit): stop handing out chunks of every running parallel_for"},
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
