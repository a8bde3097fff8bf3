/* pool.c — gilfree._core.Pool: a fixed set of native worker threads running Python callables.
 *
 * The C base of gilfree.ThreadPool (which also subclasses concurrent.futures.Executor). Workers are
 * pthreads started here on demand, as ThreadPoolExecutor starts its threads: a task (or a parallel_for
 * helper) that no idle worker can take starts one more, up to max_workers; each attaches one Python thread state for its whole life (PyGILState_Ensure
 * once), blocks asynchronous signals (Ctrl-C belongs to the main thread), and loops:
 *     take a task (holding the GIL, it takes the next queued one at once: no GIL hand-off per task;
 *     only when the queue is empty does it release the GIL and sleep) -> run it in a copy of the
 *     submitter's contextvars context -> complete its future.
 * After libuv's threadpool: a sleeping worker is signalled only when one is idle; shutdown sets a flag
 * every worker sees once the queue is drained; the state after fork() is never trusted.
 *
 * Fairness to other Python threads (the GIL convoy). With the GIL, a thread that wants it back waits for
 * the holder to drop it, which a running thread does when asked after the 5 ms switch interval; each extra
 * thread contending for the GIL makes everyone else wait longer. Measured (benchmarks' convoy probe, a
 * thread sleeping 1 ms again and again): workers that take the next task while still holding the GIL wait
 * no longer than ThreadPoolExecutor's, whose workers do the same (SimpleQueue.get returns without
 * releasing the GIL when a task is there): submit-and-wait shows the same probe p50 for both. What made the
 * probe wait longer was ThreadPool.map's consumer running not-yet-started tasks itself (to save two
 * hand-offs per tiny task): on pure-Python tasks it became one more GIL contender. map now runs a task
 * inline only while inline runs stay short (under 0.5 ms, a tenth of the switch interval; see _pool.py),
 * and always when the GIL is off. A finished task is counted in the same lock acquisition that takes the
 * next one (one lock round per task, for the free-threaded build where workers really run at once).
 *
 * Lifetime: the queue and counters live in a gf_poolcore on the C heap, shared (refs) by the Pool object
 * and each worker, and freed by the last: a worker that has detached for good may still touch it.
 *
 * Invariants:
 *   - lock guards the queue, the counters and the flags; held only for short sections that call no
 *     Python and never wait for the GIL (a sleeping worker holds it only inside pthread_cond_wait).
 *   - queued <= queue_size when queue_size > 0; a submitter parks on submitq only while it is full.
 *   - Every task popped is run or cancelled exactly once, and its future completed.
 *   - alive counts workers that have not yet released their thread state.
 */
#include "future.h"
#include "parallel.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

typedef struct gf_task {
    struct gf_task *next;
    int finished;                 /* debug build: set once its future is completed (never twice) */
    gf_job *job;                  /* a parallel_for helper (owned reference); then nothing below is set */
    PyObject *fn, *args, *kwargs; /* owned; kwargs may be NULL */
    FutureObject *fut;            /* owned */
    PyObject *ctx;                /* owned: the submitter's contextvars context, copied */
} gf_task;

typedef struct gf_poolcore {
    atomic_int refs;           /* the Pool object + one per worker thread */
    pthread_mutex_t lock;      /* guards everything below but `exiting` */
    pthread_cond_t work_cv;    /* sleeping workers; CLOCK_MONOTONIC */
    pthread_cond_t exit_cv;    /* shutdown(wait=True) waits for `alive` to drop */
    gf_task *head, *tail;
    Py_ssize_t queued, queue_size;
    gf_waitq submitq;          /* submitters parked on a full queue */
    int shutdown, broken, nthreads, alive, idle, signalled;
    int starting;              /* threads reserved by wake_or_reserve, not yet started */
    Py_ssize_t submitted, completed, failed, cancelled, running;
    gf_interrupt exiting;      /* interpreter exit: channel waits in the workers raise Cancelled */
    unsigned fork_gen;         /* gf_fork_generation() at creation: a forked child never trusts us */
} gf_poolcore;

typedef struct {
    PyObject_HEAD
    gf_state *st;
    gf_poolcore *p;
    PyObject *initializer, *initargs; /* owned */
    PyObject *prefix;                 /* thread name prefix (str) */
    int max_workers;
} PoolObject;

#define POOL_CAST(op) ((PoolObject *)(op))

/* ---- the core --------------------------------------------------------------------------------------- */

static gf_poolcore *
poolcore_new(Py_ssize_t queue_size)
{
    gf_poolcore *p = PyMem_RawCalloc(1, sizeof(gf_poolcore));
    if (p == NULL) {
        return NULL;
    }
    pthread_mutex_init(&p->lock, NULL);
    gf_cond_init_monotonic(&p->work_cv);
    gf_cond_init_monotonic(&p->exit_cv);
    atomic_init(&p->refs, 1);
    gf_interrupt_init(&p->exiting);
    p->queue_size = queue_size;
    p->fork_gen = gf_fork_generation();
    return p;
}

static void
poolcore_decref(gf_poolcore *p)
{
    if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) == 1) {
        pthread_mutex_destroy(&p->lock);
        pthread_cond_destroy(&p->work_cv);
        pthread_cond_destroy(&p->exit_cv);
        gf_interrupt_fini(&p->exiting);
        PyMem_RawFree(p);
    }
}

static inline int
poolcore_forked(gf_poolcore *p)
{
    return p->fork_gen != gf_fork_generation();
}

static void
task_free(gf_task *t)
{
    if (t->job != NULL) {
        gf_job_decref(t->job);
    }
    Py_XDECREF(t->fn);
    Py_XDECREF(t->args);
    Py_XDECREF(t->kwargs);
    Py_XDECREF(t->fut);
    Py_XDECREF(t->ctx);
    PyMem_RawFree(t);
}

/* Cancel a task that will never run (shutdown with cancel_futures, a broken pool). */
static void
task_cancel(gf_task *t, PyObject *exc)
{
    if (t->job != NULL) {
        task_free(t); /* a helper that never ran: the caller does the chunks itself */
        return;
    }
    if (exc != NULL) {
        if (gf_future_set_running_or_notify_cancel(t->fut) == 1) {
            (void)gf_future_finish(t->fut, NULL, exc);
        }
    }
    else {
        (void)gf_future_cancel(t->fut);
        (void)gf_future_set_running_or_notify_cancel(t->fut);
    }
    if (PyErr_Occurred()) {
        PyErr_WriteUnraisable((PyObject *)t->fut);
    }
    task_free(t);
}

/* Under lock: detach the queue but its first `keep` tasks. */
static gf_task *
take_queue(gf_poolcore *p, gf_wakelist *wl, Py_ssize_t keep)
{
    gf_task *t = p->head, *last = NULL;
    Py_ssize_t kept = 0;
    for (; kept < keep && t != NULL; kept++) {
        last = t;
        t = t->next;
    }
    if (last != NULL) {
        last->next = NULL;
        p->tail = last;
        p->queued = kept; /* fewer than `keep` when the queue was shorter */
    }
    else {
        p->head = p->tail = NULL;
        p->queued = 0;
    }
    while (gf_waitq_fire_first(&p->submitq, 1, NULL, wl) != NULL) {
    }
    return t;
}

/* ---- workers ---------------------------------------------------------------------------------------- */

typedef struct {
    gf_poolcore *p;
    gf_state *st;
    PyObject *initializer, *initargs; /* owned, released by the worker (attached) */
    char name[64];
} worker_start;

enum { DONE_NONE = -1, DONE_COMPLETED = 0, DONE_FAILED = 1, DONE_CANCELLED = 2, DONE_HELPER = 3 };

/* Under lock: account for the task this worker just finished (one of DONE_*). */
static void
count_done(gf_poolcore *p, int done)
{
    if (done == DONE_NONE) {
        return;
    }
    p->running--;
    if (done == DONE_COMPLETED) {
        p->completed++;
    }
    else if (done == DONE_FAILED) {
        p->failed++;
    }
    else if (done == DONE_CANCELLED) {
        p->cancelled++;
    }
}

/* Attached. Accounts for the task just finished (`done`), then returns the next task, or NULL once shut
 * down and drained: one lock acquisition per task. May sleep with the GIL released. */
static gf_task *
next_task(gf_poolcore *p, int done)
{
    gf_wakelist wl;
    gf_wakelist_init(&wl);
    gf_task *t = NULL;
    pthread_mutex_lock(&p->lock);
    count_done(p, done);
    while (p->head == NULL && !p->shutdown) {
        /* `signalled` counts idle workers a wake-up is on its way to: each wake-up consumes one, even when
         * another worker took the task first and this one waits again (else that wake-up would be counted
         * for ever, and a later task would wake nobody); it never exceeds `idle`. Over-counting loses
         * wake-ups; under-counting only costs a spare one. */
        pthread_mutex_unlock(&p->lock);
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&p->lock);
        p->idle++;
        while (p->head == NULL && !p->shutdown) {
            pthread_cond_wait(&p->work_cv, &p->lock);
            if (p->signalled > 0) {
                p->signalled--;
            }
        }
        p->idle--;
        if (p->signalled > p->idle) {
            p->signalled = p->idle;
        }
        pthread_mutex_unlock(&p->lock);
        Py_END_ALLOW_THREADS
        pthread_mutex_lock(&p->lock);
    }
    if (p->head != NULL) {
        t = p->head;
        p->head = t->next;
        if (p->head == NULL) {
            p->tail = NULL;
        }
        p->queued--;
        GF_ASSERT(p->queued >= 0);
        p->running++;
        if (p->queue_size > 0) {
            (void)gf_waitq_fire_first(&p->submitq, 0, NULL, &wl); /* room for one more */
        }
    }
    pthread_mutex_unlock(&p->lock);
    gf_wakelist_run(&wl);
    return t;
}

/* Attached. Run one task and complete its future; returns how it ended (DONE_*), for next_task to count. */
static int
run_task(gf_poolcore *p, gf_task *t)
{
    if (t->job != NULL) { /* a parallel_for helper: kernels run with no thread state attached */
        gf_job *j = t->job;
        Py_BEGIN_ALLOW_THREADS
        gf_job_work(j, -1);
        Py_END_ALLOW_THREADS
        task_free(t);
        return DONE_HELPER;
    }
    int outcome; /* 0 completed, 1 failed, 2 cancelled */
    int r = gf_future_set_running_or_notify_cancel(t->fut);
    if (r == 1) {
        PyObject *res = NULL, *exc = NULL;
        if (PyContext_Enter(t->ctx) == 0) {
            res = PyObject_Call(t->fn, t->args, t->kwargs);
            PyObject *raised = gf_err_take();
            if (PyContext_Exit(t->ctx) < 0) {
                PyErr_WriteUnraisable(t->ctx);
            }
            gf_err_restore(raised);
        }
        if (res == NULL) {
            exc = gf_err_take();
        }
        GF_ASSERT(!t->finished);
        t->finished = 1;
        if ((res != NULL ? gf_future_finish(t->fut, res, NULL) : gf_future_finish(t->fut, NULL, exc)) < 0) {
            PyErr_WriteUnraisable((PyObject *)t->fut); /* someone completed it by hand meanwhile */
        }
        outcome = res != NULL ? 0 : 1;
        Py_XDECREF(res);
        Py_XDECREF(exc);
    }
    else {
        if (r < 0) {
            PyErr_WriteUnraisable((PyObject *)t->fut);
        }
        outcome = 2;
    }
    task_free(t);
    return outcome;
}

static void
worker_broken(worker_start *ws)
{
    gf_poolcore *p = ws->p;
    gf_wakelist wl;
    gf_wakelist_init(&wl);
    pthread_mutex_lock(&p->lock);
    p->broken = 1;
    gf_task *t = take_queue(p, &wl, 0);
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->lock);
    gf_wakelist_run(&wl);
    PyObject *exc = PyObject_CallFunction(ws->st->BrokenThreadPool ? ws->st->BrokenThreadPool
                                                                   : PyExc_RuntimeError,
                                          "s", "A thread initializer failed, the thread pool is not usable "
                                               "anymore");
    while (t != NULL) {
        gf_task *next = t->next;
        task_cancel(t, exc);
        t = next;
    }
    Py_XDECREF(exc);
}

/* In a forked child, from the worker whose task forked (attached): flush sys.stdout/stderr, _exit(0). */
static void
forked_child_exit(void)
{
    const char *names[] = {"stdout", "stderr"};
    for (int i = 0; i < 2; i++) {
        PyObject *f = PySys_GetObject(names[i]); /* borrowed */
        if (f != NULL && f != Py_None) {
            PyObject *r = PyObject_CallMethod(f, "flush", NULL);
            Py_XDECREF(r);
        }
        PyErr_Clear();
    }
    _exit(0);
}

static void *
worker_main(void *arg)
{
    worker_start *ws = (worker_start *)arg;
    gf_poolcore *p = ws->p;
    sigset_t async;
    gf_async_signal_set(&async);
    pthread_sigmask(SIG_BLOCK, &async, NULL); /* asynchronous signals are the main thread's */
#if defined(__linux__)
    char shortname[16]; /* the kernel keeps 15 characters */
    memcpy(shortname, ws->name, sizeof(shortname) - 1);
    shortname[sizeof(shortname) - 1] = '\0';
    pthread_setname_np(pthread_self(), shortname);
#endif
    PyGILState_STATE g = PyGILState_Ensure();
    gf_set_thread_interrupt(&p->exiting);
    int ok = 1;
    if (ws->initializer != NULL) {
        PyObject *r = PyObject_Call(ws->initializer, ws->initargs, NULL);
        if (r == NULL) {
            gf_log_exception(ws->st, "Exception in initializer %r", ws->initializer);
            ok = 0;
        }
        Py_XDECREF(r);
    }
    Py_CLEAR(ws->initializer);
    Py_CLEAR(ws->initargs);
    if (!ok) {
        worker_broken(ws);
    }
    gf_task *t;
    int done = DONE_NONE;
    while (ok && (t = next_task(p, done)) != NULL) {
        done = run_task(p, t);
        if (poolcore_forked(p)) {
            /* The task called os.fork() and returned in the child: this thread is the child's only one,
             * and its copy of the pool must run nothing (its queue is the parent's; its lock may be a
             * dead thread's). End the child as a forked child should end, os._exit(0), after flushing
             * sys.stdout and sys.stderr. (Py_Exit would finalize from a thread the runtime does not know
             * as its main one: 3.13 crashes there.) */
            forked_child_exit();
        }
    }
    gf_set_thread_interrupt(NULL);
    PyMem_RawFree(ws);
    PyGILState_Release(g); /* from here on no Python */
    pthread_mutex_lock(&p->lock);
    p->alive--;
    pthread_cond_broadcast(&p->exit_cv);
    pthread_mutex_unlock(&p->lock);
    poolcore_decref(p);
    return NULL;
}

/* ---- starting workers on demand --------------------------------------------------------------------- */

/* Under lock, for `n` tasks just queued: wake an idle worker for each that no worker is on its way for, or
 * reserve a new thread while fewer than max_workers exist. Returns how many threads the caller starts
 * (start_reserved) once the lock is released. */
static int
wake_or_reserve(gf_poolcore *p, int max_workers, int n)
{
    int start = 0;
    for (int k = 0; k < n; k++) {
        if (p->idle > p->signalled) { /* wake a sleeping worker only if none is on its way yet */
            p->signalled++;
            pthread_cond_signal(&p->work_cv);
        }
        else if (p->nthreads + p->starting < max_workers) {
            p->starting++;
            start++;
        }
    }
    return start;
}

/* Attached, no lock held: start `n` reserved workers. -1 with RuntimeError only if a thread could not be
 * started and the pool has none at all (the queued work would never run). */
static int
start_reserved(PoolObject *self, int n)
{
    gf_poolcore *p = self->p;
    int err = 0;
    for (int k = 0; k < n; k++) {
        worker_start *ws = err ? NULL : PyMem_RawCalloc(1, sizeof(worker_start));
        pthread_mutex_lock(&p->lock);
        p->starting--;
        int index = p->nthreads;
        if (ws != NULL) {
            p->alive++;
            p->nthreads++;
        }
        pthread_mutex_unlock(&p->lock);
        if (ws == NULL) {
            err = err ? err : ENOMEM;
            continue;
        }
        ws->p = p;
        ws->st = self->st;
        ws->initializer = Py_XNewRef(self->initializer);
        ws->initargs = Py_XNewRef(self->initargs);
        const char *prefix = PyUnicode_AsUTF8(self->prefix);
        snprintf(ws->name, sizeof(ws->name), "%.40s_%d", prefix ? prefix : "gilfree", index);
        PyErr_Clear();
        atomic_fetch_add(&p->refs, 1);
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_t tid;
        err = pthread_create(&tid, &attr, worker_main, ws);
        pthread_attr_destroy(&attr);
        if (err != 0) {
            pthread_mutex_lock(&p->lock);
            p->alive--;
            p->nthreads--;
            pthread_cond_broadcast(&p->exit_cv);
            pthread_mutex_unlock(&p->lock);
            atomic_fetch_sub(&p->refs, 1);
            Py_XDECREF(ws->initializer);
            Py_XDECREF(ws->initargs);
            PyMem_RawFree(ws);
        }
    }
    if (err != 0) {
        pthread_mutex_lock(&p->lock);
        int none = p->nthreads == 0;
        pthread_mutex_unlock(&p->lock);
        if (none) {
            errno = err;
            PyErr_SetFromErrno(PyExc_RuntimeError);
            return -1;
        }
    }
    return 0;
}

/* ---- Pool.__new__ ----------------------------------------------------------------------------------- */

static PyObject *
pool_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"max_workers", "queue_size", "thread_name_prefix", "initializer", "initargs",
                             NULL};
    PyObject *maxw = Py_None, *qs = NULL, *prefix = NULL, *init = Py_None, *initargs = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O$OOOO:ThreadPool", kwlist, &maxw, &qs, &prefix, &init,
                                     &initargs)) {
        return NULL;
    }
    long workers;
    if (maxw == Py_None) {
        PyObject *os = PyImport_ImportModule("os");
        PyObject *n = NULL;
        if (os != NULL) {
            n = PyObject_HasAttrString(os, "process_cpu_count") ? PyObject_CallMethod(os, "process_cpu_count",
                                                                                      NULL)
                                                               : NULL;
            if (n == NULL && !PyErr_Occurred()) {
                PyObject *aff = PyObject_CallMethod(os, "sched_getaffinity", "i", 0);
                if (aff != NULL) {
                    n = PyLong_FromSsize_t(PySet_Size(aff));
                    Py_DECREF(aff);
                }
                else {
                    PyErr_Clear();
                    n = PyObject_CallMethod(os, "cpu_count", NULL);
                }
            }
            Py_DECREF(os);
        }
        if (n == NULL) {
            return NULL;
        }
        workers = n == Py_None ? 1 : PyLong_AsLong(n);
        Py_DECREF(n);
        if (workers == -1 && PyErr_Occurred()) {
            return NULL;
        }
        /* ThreadPoolExecutor's default: min(32, CPUs + 4), as many tasks wait on I/O; the workers start on
         * demand, so the spare ones cost nothing until needed. (Native kernels' default pool asks for the
         * CPU count itself.) */
        workers = workers + 4 < 32 ? workers + 4 : 32;
    }
    else {
        if (PyBool_Check(maxw) || !PyLong_Check(maxw)) {
            return PyErr_Format(PyExc_TypeError, "max_workers must be an int or None, not %.100s",
                                Py_TYPE(maxw)->tp_name);
        }
        workers = PyLong_AsLong(maxw);
        if (workers == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (workers <= 0) {
            return PyErr_Format(PyExc_ValueError, "max_workers must be greater than 0, got %ld", workers);
        }
        if (workers > 4096) {
            return PyErr_Format(PyExc_ValueError, "max_workers must be at most 4096, got %ld", workers);
        }
    }
    Py_ssize_t queue_size = 0;
    if (qs != NULL) {
        if (PyBool_Check(qs) || !PyLong_Check(qs)) {
            return PyErr_Format(PyExc_TypeError, "queue_size must be an int, not %.100s", Py_TYPE(qs)->tp_name);
        }
        queue_size = PyLong_AsSsize_t(qs);
        if (queue_size == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (queue_size < 0) {
            return PyErr_Format(PyExc_ValueError, "queue_size must be >= 0 (0: unbounded), got %zd", queue_size);
        }
    }
    if (prefix != NULL && !PyUnicode_Check(prefix)) {
        return PyErr_Format(PyExc_TypeError, "thread_name_prefix must be a str, not %.100s",
                            Py_TYPE(prefix)->tp_name);
    }
    if (init != Py_None && !PyCallable_Check(init)) {
        return PyErr_Format(PyExc_TypeError, "initializer must be a callable or None, not %.100s",
                            Py_TYPE(init)->tp_name);
    }
    PyObject *iargs = initargs ? PySequence_Tuple(initargs) : PyTuple_New(0);
    if (iargs == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Format(PyExc_TypeError, "initargs must be a tuple, not %.100s", Py_TYPE(initargs)->tp_name);
        }
        return NULL;
    }
    PyObject *module = PyType_GetModuleByDef(type, &gf_module_def);
    if (module == NULL) {
        Py_DECREF(iargs);
        return NULL;
    }
    PoolObject *self = (PoolObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(iargs);
        return NULL;
    }
    self->st = gf_get_state(module);
    self->max_workers = (int)workers;
    self->initializer = init == Py_None ? NULL : Py_NewRef(init);
    self->initargs = iargs;
    self->prefix = prefix ? Py_NewRef(prefix) : PyUnicode_FromString("gilfree");
    self->p = poolcore_new(queue_size);
    if (self->prefix == NULL || self->p == NULL) { /* workers start on demand, at the first submits */
        if (self->p == NULL && !PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
pool_init(PyObject *self, PyObject *args, PyObject *kwargs)
{
    return 0; /* everything happened in __new__ */
}

/* ---- parallel_for helpers ------------------------------------------------------------------------ */

int
gf_pool_stopped(PyObject *pool)
{
    gf_poolcore *p = POOL_CAST(pool)->p;
    if (p == NULL || poolcore_forked(p)) {
        return 1;
    }
    pthread_mutex_lock(&p->lock);
    int stopped = p->shutdown || p->broken;
    pthread_mutex_unlock(&p->lock);
    return stopped;
}

int
gf_pool_max_workers(PyObject *pool)
{
    return POOL_CAST(pool)->max_workers;
}

int
gf_pool_post_helpers(PyObject *pool, gf_job *j, int count)
{
    gf_poolcore *p = POOL_CAST(pool)->p;
    if (p == NULL || poolcore_forked(p)) {
        return 0;
    }
    int posted = 0;
    pthread_mutex_lock(&p->lock);
    for (; posted < count && !p->shutdown && !p->broken; posted++) {
        gf_task *t = PyMem_RawCalloc(1, sizeof(gf_task)); /* raw: no Python, safe under our lock */
        if (t == NULL) {
            break;
        }
        atomic_fetch_add(&j->refs, 1);
        t->job = j;
        if (p->tail) {
            p->tail->next = t;
        }
        else {
            p->head = t;
        }
        p->tail = t;
        p->queued++; /* helpers ignore queue_size: they never block the caller */
    }
    int start = wake_or_reserve(p, POOL_CAST(pool)->max_workers, posted);
    pthread_mutex_unlock(&p->lock);
    if (start_reserved(POOL_CAST(pool), start) < 0) {
        PyErr_Clear(); /* no thread: the caller does every chunk itself (gf_pool_stopped is not enough) */
    }
    return posted;
}

/* ---- submit ---------------------------------------------------------------------------------------- */

static PyObject *
pool_unusable(gf_poolcore *p, gf_state *st)
{
    if (poolcore_forked(p)) {
        PyErr_SetString(PyExc_RuntimeError, "this ThreadPool was created before os.fork(): its workers do "
                                            "not exist in the child process; create a new pool there");
    }
    else if (p->broken) {
        PyErr_SetString(st->BrokenThreadPool ? st->BrokenThreadPool : PyExc_RuntimeError,
                        "A thread initializer failed, the thread pool is not usable anymore");
    }
    else {
        PyErr_SetString(PyExc_RuntimeError, "cannot schedule new futures after shutdown");
    }
    return NULL;
}

/* Under lock: take the queued task that is `target` (or, target NULL, whose future is `fut`) off the
 * queue. Returns it, or NULL if it is not queued (a worker took it). */
static gf_task *
queue_unlink(gf_poolcore *p, gf_task *target, PyObject *fut)
{
    gf_task *prev = NULL;
    for (gf_task *t = p->head; t != NULL; prev = t, t = t->next) {
        if (target != NULL ? t == target : (PyObject *)t->fut == fut) {
            if (prev) {
                prev->next = t->next;
            }
            else {
                p->head = t->next;
            }
            if (p->tail == t) {
                p->tail = prev;
            }
            p->queued--;
            return t;
        }
    }
    return NULL;
}

/* Queue t, blocking (GIL released, Ctrl-C works) while a bounded queue is full. 0 queued; -1 error (t is
 * still the caller's). */
static int
enqueue(PoolObject *self, gf_task *t)
{
    gf_poolcore *p = self->p;
    for (;;) {
        pthread_mutex_lock(&p->lock);
        if (p->shutdown || p->broken) {
            pthread_mutex_unlock(&p->lock);
            pool_unusable(p, self->st);
            return -1;
        }
        if (p->queue_size == 0 || p->queued < p->queue_size) {
            t->next = NULL;
            if (p->tail) {
                p->tail->next = t;
            }
            else {
                p->head = t;
            }
            p->tail = t;
            p->queued++;
            p->submitted++;
            int start = wake_or_reserve(p, self->max_workers, 1);
            pthread_mutex_unlock(&p->lock);
            if (start_reserved(self, start) < 0) {
                /* Not a single worker thread could be started: take t back, so submit fails cleanly. */
                pthread_mutex_lock(&p->lock);
                if (queue_unlink(p, t, NULL) != NULL) {
                    p->submitted--;
                    pthread_mutex_unlock(&p->lock);
                    return -1;
                }
                pthread_mutex_unlock(&p->lock);
                PyErr_Clear(); /* a thread started meanwhile and took it */
            }
            return 0;
        }
        pthread_mutex_unlock(&p->lock);
        /* Full: park until a worker takes a task, or shutdown; then try again. */
        gf_sel sel;
        if (gf_sel_init(&sel) < 0) {
            return -1;
        }
        gf_waiter w = {.sel = &sel, .index = 0};
        pthread_mutex_lock(&p->lock);
        int full = !p->shutdown && !p->broken && p->queued >= p->queue_size;
        if (full) {
            gf_waitq_push(&p->submitq, &w);
        }
        pthread_mutex_unlock(&p->lock);
        if (full) {
            gf_deadline forever = {.infinite = 1};
            if (gf_wait(self->st, &sel, &forever) != GF_WAIT_FIRED) {
                pthread_mutex_lock(&p->lock);
                gf_waitq_unlink(&p->submitq, &w);
                pthread_mutex_unlock(&p->lock);
                gf_sel_fini(&sel);
                return -1; /* Ctrl-C: nothing was queued */
            }
        }
        gf_sel_fini(&sel);
    }
}

static PyObject *
pool_submit(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PoolObject *self = POOL_CAST(op);
    gf_poolcore *p = self->p;
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "submit() missing required argument 'fn'");
        return NULL;
    }
    PyObject *fn = args[0];
    if (!PyCallable_Check(fn)) {
        return PyErr_Format(PyExc_TypeError, "submit() argument 'fn' must be callable, not %.100s",
                            Py_TYPE(fn)->tp_name);
    }
    if (poolcore_forked(p)) {
        return pool_unusable(p, self->st);
    }
    gf_task *t = PyMem_RawCalloc(1, sizeof(gf_task));
    if (t == NULL) {
        return PyErr_NoMemory();
    }
    t->fn = Py_NewRef(fn);
    t->args = PyTuple_New(nargs - 1);
    if (t->args == NULL) {
        goto error;
    }
    for (Py_ssize_t i = 1; i < nargs; i++) {
        PyTuple_SET_ITEM(t->args, i - 1, Py_NewRef(args[i]));
    }
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) {
        t->kwargs = PyDict_New();
        if (t->kwargs == NULL) {
            goto error;
        }
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(kwnames); k++) {
            if (PyDict_SetItem(t->kwargs, PyTuple_GET_ITEM(kwnames, k), args[nargs + k]) < 0) {
                goto error;
            }
        }
    }
    t->ctx = PyContext_CopyCurrent();
    t->fut = gf_future_new(self->st, op);
    if (t->ctx == NULL || t->fut == NULL) {
        goto error;
    }
    PyObject *fut = Py_NewRef(t->fut);
    if (enqueue(self, t) < 0) {
        Py_DECREF(fut);
        goto error;
    }
    return fut;
error:
    Py_XDECREF(t->fn);
    Py_XDECREF(t->args);
    Py_XDECREF(t->kwargs);
    Py_XDECREF(t->ctx);
    Py_XDECREF(t->fut);
    PyMem_RawFree(t);
    return NULL;
}

/* ---- shutdown -------------------------------------------------------------------------------------- */

static const char *const shutdown_names[] = {"wait", "cancel_futures"};

/* Wait (GIL released; Ctrl-C on the main thread) until at most `keep` workers are alive, or the deadline
 * (NULL: none) passes. 0 done, 1 timed out, -1 an exception. */
static int
wait_for_workers(PoolObject *self, int keep, const gf_deadline *d)
{
    gf_poolcore *p = self->p;
    int is_main = PyThread_get_thread_ident() == self->st->main_ident;
    for (;;) {
        if (d != NULL && gf_deadline_passed(d)) {
            return 1;
        }
        int alive;
        Py_BEGIN_ALLOW_THREADS
        struct timespec until;
        gf_monotonic_after(&until, GF_SIGNAL_POLL_NS);
        pthread_mutex_lock(&p->lock);
        if (p->alive > keep) {
            pthread_cond_timedwait(&p->exit_cv, &p->lock, &until);
        }
        alive = p->alive;
        pthread_mutex_unlock(&p->lock);
        Py_END_ALLOW_THREADS
        if (alive <= keep) {
            return 0;
        }
        if (is_main && PyErr_CheckSignals() < 0) {
            return -1;
        }
    }
}

static int
shutdown_core(PoolObject *self, int wait, int cancel_futures)
{
    gf_poolcore *p = self->p;
    if (p == NULL || poolcore_forked(p)) {
        return 0; /* the child has no workers to stop, and the lock may be a dead thread's */
    }
    gf_wakelist wl;
    gf_wakelist_init(&wl);
    pthread_mutex_lock(&p->lock);
    p->shutdown = 1;
    /* cancel_futures: each worker that is free now (idle, woken, or still starting) is as good as holding
     * the next queued task, as ThreadPoolExecutor's idle workers blocked in its queue's get() are: those
     * tasks run; the rest is cancelled. */
    Py_ssize_t free_workers = (Py_ssize_t)p->alive - p->running;
    gf_task *t = cancel_futures ? take_queue(p, &wl, free_workers > 0 ? free_workers : 0) : NULL;
    while (gf_waitq_fire_first(&p->submitq, 1, NULL, &wl) != NULL) { /* parked submitters see the shutdown */
    }
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->lock);
    gf_wakelist_run(&wl);
    Py_ssize_t ncancelled = 0;
    while (t != NULL) {
        gf_task *next = t->next;
        task_cancel(t, NULL);
        ncancelled++;
        t = next;
    }
    if (ncancelled) {
        pthread_mutex_lock(&p->lock);
        p->cancelled += ncancelled;
        pthread_mutex_unlock(&p->lock);
    }
    if (!wait) {
        return 0;
    }
    if (gf_current_thread_interrupt() == &p->exiting) {
        /* One of our own workers: it would wait for itself (and two such tasks for each other). The pool
         * is shut down all the same; as ThreadPoolExecutor's join of the current thread does, say so. */
        PyErr_SetString(PyExc_RuntimeError, "cannot join current thread: shutdown(wait=True) called from a "
                                            "task of the same pool (use wait=False there)");
        return -1;
    }
    return wait_for_workers(self, 0, NULL);
}

static PyObject *
pool_shutdown(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[2];
    if (gf_parse_args("shutdown", args, nargs, kwnames, shutdown_names, 0, 2, a) < 0) {
        return NULL;
    }
    int wait = a[0] ? PyObject_IsTrue(a[0]) : 1;
    int cancel = a[1] ? PyObject_IsTrue(a[1]) : 0;
    if (wait < 0 || cancel < 0 || shutdown_core(POOL_CAST(op), wait, cancel) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* If fut's task has not started yet, take it off the queue and run it here, in the calling thread: a
 * caller about to wait for it (map) saves two GIL hand-offs, and cannot deadlock waiting for a task that
 * no free worker would start. True if it ran here. */
static PyObject *
pool_run_inline(PyObject *op, PyObject *fut)
{
    gf_poolcore *p = POOL_CAST(op)->p;
    if (poolcore_forked(p)) {
        Py_RETURN_FALSE;
    }
    gf_wakelist wl;
    gf_wakelist_init(&wl);
    pthread_mutex_lock(&p->lock);
    gf_task *t = queue_unlink(p, NULL, fut);
    if (t != NULL) {
        p->running++;
        if (p->queue_size > 0) {
            (void)gf_waitq_fire_first(&p->submitq, 0, NULL, &wl);
        }
    }
    pthread_mutex_unlock(&p->lock);
    gf_wakelist_run(&wl);
    if (t == NULL) {
        Py_RETURN_FALSE;
    }
    int done = run_task(p, t);
    if (!poolcore_forked(p)) { /* (a task that forked: in the child the lock may be a dead thread's) */
        pthread_mutex_lock(&p->lock);
        count_done(p, done);
        pthread_mutex_unlock(&p->lock);
    }
    Py_RETURN_TRUE;
}

/* At interpreter exit: channel and future waits inside the workers give up (gilfree.Cancelled). */
static PyObject *
pool_interrupt_waits(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    gf_poolcore *p = POOL_CAST(op)->p;
    if (p != NULL && !poolcore_forked(p)) {
        gf_interrupt_fire(&p->exiting); /* wakes the waits parked in the workers */
    }
    Py_RETURN_NONE;
}

static const char *const join_names[] = {"timeout"};

/* _join_workers(timeout=None): wait until every worker thread has ended. True if they have. */
static PyObject *
pool_join_workers(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PoolObject *self = POOL_CAST(op);
    PyObject *a[1];
    gf_deadline d;
    if (gf_parse_args("_join_workers", args, nargs, kwnames, join_names, 0, 1, a) < 0 ||
        gf_deadline_from_timeout(a[0], &d, "timeout") < 0) {
        return NULL;
    }
    if (self->p == NULL || poolcore_forked(self->p)) {
        Py_RETURN_TRUE;
    }
    if (gf_current_thread_interrupt() == &self->p->exiting) {
        PyErr_SetString(PyExc_RuntimeError, "cannot join current thread");
        return NULL;
    }
    int r = wait_for_workers(self, 0, &d);
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r == 0);
}

static PyObject *
pool_get_stopped(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(gf_pool_stopped(op));
}

static PyObject *
pool_get_started(PyObject *op, void *Py_UNUSED(closure))
{
    gf_poolcore *p = POOL_CAST(op)->p;
    int n = 0;
    if (p != NULL && !poolcore_forked(p)) {
        pthread_mutex_lock(&p->lock);
        n = p->nthreads;
        pthread_mutex_unlock(&p->lock);
    }
    return PyLong_FromLong(n);
}

static PyObject *
pool_get_broken(PyObject *op, void *Py_UNUSED(closure))
{
    gf_poolcore *p = POOL_CAST(op)->p;
    int broken = 0;
    if (p != NULL && !poolcore_forked(p)) {
        pthread_mutex_lock(&p->lock);
        broken = p->broken;
        pthread_mutex_unlock(&p->lock);
    }
    if (broken) {
        return PyUnicode_FromString("A thread initializer failed, the thread pool is not usable anymore");
    }
    Py_RETURN_FALSE;
}

static PyObject *
pool_stats(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    gf_poolcore *p = POOL_CAST(op)->p;
    Py_ssize_t v[8];
    int forked = poolcore_forked(p);
    if (!forked) {
        pthread_mutex_lock(&p->lock);
    }
    v[0] = p->submitted;
    v[1] = p->completed;
    v[2] = p->failed;
    v[3] = p->cancelled;
    v[4] = p->queued;
    v[5] = p->running;
    v[6] = forked ? 0 : p->alive;
    v[7] = forked ? 0 : p->idle;
    if (!forked) {
        pthread_mutex_unlock(&p->lock);
    }
    return Py_BuildValue("{sn,sn,sn,sn,sn,sn,sn,sn}", "submitted", v[0], "completed", v[1], "failed", v[2],
                         "cancelled", v[3], "queued", v[4], "running", v[5], "workers", v[6], "idle", v[7]);
}

static PyObject *
pool_get_max_workers(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(POOL_CAST(op)->max_workers);
}

static PyObject *
pool_get_queue_size(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(POOL_CAST(op)->p->queue_size);
}

/* ---- GC -------------------------------------------------------------------------------------------- */

static int
pool_traverse(PyObject *op, visitproc visit, void *arg)
{
    PoolObject *self = POOL_CAST(op);
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->initializer);
    Py_VISIT(self->initargs);
    Py_VISIT(self->prefix);
    /* Queued tasks belong to the workers, which run them whatever the GC thinks: not visited, so a
     * pending task is never torn apart as garbage. */
    return 0;
}

static int
pool_clear(PyObject *op)
{
    PoolObject *self = POOL_CAST(op);
    Py_CLEAR(self->initializer);
    Py_CLEAR(self->initargs);
    Py_CLEAR(self->prefix);
    return 0;
}

static void
pool_dealloc(PyObject *op)
{
    PoolObject *self = POOL_CAST(op);
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (self->p != NULL) {
        /* Like a dropped ThreadPoolExecutor: the workers finish what is queued, then exit. */
        PyObject *raised = gf_err_take();
        (void)shutdown_core(self, 0, 0);
        gf_err_restore(raised);
        poolcore_decref(self->p);
        self->p = NULL;
    }
    (void)pool_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* ---- type ------------------------------------------------------------------------------------------ */

static PyMethodDef pool_methods[] = {
    {"submit", (PyCFunction)(void (*)(void))pool_submit, METH_FASTCALL | METH_KEYWORDS,
     "submit(fn, /, *args, **kwargs)\n--\n\nSchedule ``fn(*args, **kwargs)``; return a gilfree.Future. With "
     "queue_size > 0, blocks (GIL released) while that many tasks wait to start."},
    {"shutdown", (PyCFunction)(void (*)(void))pool_shutdown, METH_FASTCALL | METH_KEYWORDS,
     "shutdown(wait=True, *, cancel_futures=False)\n--\n\nStop accepting work; with cancel_futures "
     "cancel what has not started; with wait, wait for the workers to finish."},
    {"stats", pool_stats, METH_NOARGS,
     "stats()\n--\n\nCounts: submitted, completed, failed, cancelled, queued, running, workers (started, "
     "alive), idle (waiting for a task)."},
    {"_interrupt_waits", pool_interrupt_waits, METH_NOARGS, NULL},
    {"_run_inline", pool_run_inline, METH_O, NULL},
    {"_join_workers", (PyCFunction)(void (*)(void))pool_join_workers, METH_FASTCALL | METH_KEYWORDS,
     "_join_workers(timeout=None)\n--\n\nWait until every worker thread has ended; True if they have."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef pool_getset[] = {
    {"max_workers", pool_get_max_workers, NULL, "The number of worker threads.", NULL},
    {"queue_size", pool_get_queue_size, NULL, "Tasks allowed to wait to start (0: unbounded).", NULL},
    {"_stopped", pool_get_stopped, NULL, "True once shut down, broken or forked away: it runs no more tasks.",
     NULL},
    {"_started", pool_get_started, NULL, "How many worker threads were started (they start on demand).", NULL},
    {"_broken", pool_get_broken, NULL, "False, or why the pool is broken (as ThreadPoolExecutor._broken).",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot pool_slots[] = {
    {Py_tp_new, pool_new},
    {Py_tp_init, pool_init},
    {Py_tp_dealloc, pool_dealloc},
    {Py_tp_traverse, pool_traverse},
    {Py_tp_clear, pool_clear},
    {Py_tp_methods, pool_methods},
    {Py_tp_getset, pool_getset},
    {Py_tp_doc, "The C core of gilfree.ThreadPool."},
    {0, NULL},
};

static PyType_Spec pool_spec = {
    .name = "gilfree._core.Pool",
    .basicsize = sizeof(PoolObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = pool_slots,
};

int
gf_pool_setup(PyObject *module, gf_state *st)
{
    st->pool_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &pool_spec, NULL);
    if (st->pool_type == NULL || PyModule_AddType(module, st->pool_type) < 0) {
        return -1;
    }
    return 0;
}
