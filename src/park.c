/* park.c — parking a thread on a gf_sel, firing it, and waking it (see park.h for the contract).
 *
 * Invariants (as in park.h):
 *   - mu is a leaf lock: nothing else is locked, no Python is called, while it is held.
 *   - A completer signals a thread owner with mu held and never touches the gf_sel after unlocking mu;
 *     the owner returns only after taking mu once after `signaled` became 1.
 *   - Async gf_sels are freed by the last gf_sel_decref, always attached and with no internal lock held.
 */
#include "park.h"

#include <errno.h>
#include <signal.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>


/* ---- clock -------------------------------------------------------------------------------------- */

static void
now_monotonic(struct timespec *ts)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
}

static void
ts_add_ns(struct timespec *ts, int64_t ns)
{
    ts->tv_sec += (time_t)(ns / 1000000000);
    ts->tv_nsec += (long)(ns % 1000000000);
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec += 1;
        ts->tv_nsec -= 1000000000;
    }
}

static int
ts_before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

void
gf_monotonic_after(struct timespec *ts, int64_t ns)
{
    now_monotonic(ts);
    ts_add_ns(ts, ns);
}

int
gf_cond_init_monotonic(pthread_cond_t *cv)
{
    pthread_condattr_t attr;
    int rc = pthread_condattr_init(&attr);
    if (rc != 0) {
        return rc;
    }
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC); /* setup.py builds on Linux only: see there */
    rc = pthread_cond_init(cv, &attr);
    pthread_condattr_destroy(&attr);
    return rc;
}

int
gf_deadline_from_timeout(PyObject *timeout, gf_deadline *out, const char *name)
{
    out->infinite = 1;
    if (timeout == NULL || timeout == Py_None) {
        return 0;
    }
    if (PyBool_Check(timeout) || (!PyFloat_Check(timeout) && !PyLong_Check(timeout))) {
        PyErr_Format(PyExc_TypeError, "%s must be a number of seconds or None, not %.100s", name,
                     Py_TYPE(timeout)->tp_name);
        return -1;
    }
    double secs;
    if (PyLong_Check(timeout)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(timeout, &overflow);
        if (v == -1 && PyErr_Occurred()) {
            return -1;
        }
        /* An int too large for any clock (10**400) means "never", like any delay past ~31 years. */
        secs = overflow > 0 ? HUGE_VAL : overflow < 0 ? -1.0 : (double)v;
    }
    else {
        secs = PyFloat_AS_DOUBLE(timeout);
    }
    if (isnan(secs)) {
        PyErr_Format(PyExc_ValueError, "%s must not be NaN", name);
        return -1;
    }
    if (secs < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be non-negative, got %R", name, timeout);
        return -1;
    }
    if (secs > 1e9) { /* ~31 years: as good as forever, and no overflow below */
        return 0;
    }
    out->infinite = 0;
    now_monotonic(&out->at);
    ts_add_ns(&out->at, (int64_t)(secs * 1e9));
    return 0;
}

int
gf_deadline_passed(const gf_deadline *d)
{
    if (d->infinite) {
        return 0;
    }
    struct timespec now;
    now_monotonic(&now);
    return !ts_before(&now, &d->at);
}

/* ---- gf_sel ------------------------------------------------------------------------------------- */

static void
sel_reset(gf_sel *s)
{
    atomic_init(&s->state, GF_PENDING);
    atomic_init(&s->signaled, 0);
    atomic_init(&s->refs, 1);
    s->fired = -1;
    s->closed = 0;
    s->result = NULL;
    s->notify = NULL;
    s->on_free = NULL;
    s->wake_next = NULL;
    s->sleeping = 0;
    s->sync_init = 0;
    s->pfds = NULL;
    s->npfds = 0;
    s->wake_fd = -1;
    s->park_errno = 0;
}

int
gf_sel_init(gf_sel *s)
{
    sel_reset(s);
    if (gf_cond_init_monotonic(&s->cv) != 0) {
        PyErr_NoMemory();
        return -1;
    }
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        pthread_cond_destroy(&s->cv);
        PyErr_NoMemory();
        return -1;
    }
    s->sync_init = 1;
    return 0;
}

void
gf_sel_fini(gf_sel *s)
{
    if (s->sync_init) {
        pthread_cond_destroy(&s->cv);
        pthread_mutex_destroy(&s->mu);
        s->sync_init = 0;
    }
}

gf_sel *
gf_sel_new_async(size_t size, PyObject *notify, void (*on_free)(gf_sel *))
{
    gf_sel *s = (gf_sel *)PyMem_RawCalloc(1, size);
    if (s == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    sel_reset(s);
    s->notify = Py_NewRef(notify);
    s->on_free = on_free;
    return s;
}

void
gf_sel_decref(gf_sel *s)
{
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1) {
        s->on_free(s);
    }
}

void
gf_sel_fire(gf_sel *s, int index, int closed, PyObject *result, gf_wakelist *wl)
{
    GF_ASSERT(atomic_load(&s->state) == GF_FIRED);  /* claimed by this completer, never fired twice */
    GF_ASSERT(!atomic_load(&s->signaled) && s->result == NULL);
    s->fired = index;
    s->closed = closed;
    s->result = result;
    if (s->notify != NULL) {
        /* Async owner: publish now (its owner polls `signaled` from Python), wake after unlocking. */
        atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
        atomic_store_explicit(&s->signaled, 1, memory_order_release);
    }
    s->wake_next = wl->head;
    wl->head = s;
}

void
gf_wakelist_run(gf_wakelist *wl)
{
    gf_sel *s = wl->head;
    wl->head = NULL;
    while (s != NULL) {
        gf_sel *next = s->wake_next; /* read first: after the wake-up s may be gone */
        if (s->notify != NULL) {
            PyObject *r = PyObject_CallNoArgs(s->notify);
            if (r == NULL) {
                PyErr_WriteUnraisable(s->notify);
            }
            Py_XDECREF(r);
            gf_sel_decref(s);
        }
        else {
            pthread_mutex_lock(&s->mu);
            atomic_store_explicit(&s->signaled, 1, memory_order_release);
            if (s->sleeping) {
                pthread_cond_signal(&s->cv);
            }
            if (s->wake_fd >= 0) {
                gf_netpoll_wake(s->wake_fd); /* under mu: the owner takes mu before it returns */
            }
            pthread_mutex_unlock(&s->mu);
        }
        s = next;
    }
}

/* ---- parking ------------------------------------------------------------------------------------ */

int
gf_park(gf_sel *s, const gf_deadline *d, int is_main, const gf_interrupt *in)
{
    if (s->pfds != NULL) {
        return gf_netpoll_park(s, d, is_main, in);
    }
    struct timespec spin_start, now;
    now_monotonic(&spin_start);
    for (unsigned i = 1; !atomic_load_explicit(&s->signaled, memory_order_acquire); i++) {
        gf_cpu_relax();
        if ((i & 63) == 0) {
            now_monotonic(&now);
            int64_t spun = (int64_t)(now.tv_sec - spin_start.tv_sec) * 1000000000 +
                           (now.tv_nsec - spin_start.tv_nsec);
            if (spun > GF_SPIN_NS) {
                break;
            }
        }
    }
    pthread_mutex_lock(&s->mu);
    while (!atomic_load_explicit(&s->signaled, memory_order_acquire)) {
        if (gf_interrupt_fired(in)) { /* read under s->mu: gf_interrupt_fire signals under it after setting */
            pthread_mutex_unlock(&s->mu);
            return GF_PARK_CHECK_SIGNALS;
        }
        struct timespec wake;
        int bounded = 0, polling = 0;
        if (!d->infinite) {
            wake = d->at;
            bounded = 1;
        }
        if (is_main) {
            struct timespec poll;
            now_monotonic(&poll);
            ts_add_ns(&poll, GF_SIGNAL_POLL_NS);
            if (!bounded || ts_before(&poll, &wake)) {
                wake = poll;
                bounded = 1;
                polling = 1;
            }
        }
        s->sleeping = 1;
        int rc = bounded ? pthread_cond_timedwait(&s->cv, &s->mu, &wake)
                         : pthread_cond_wait(&s->cv, &s->mu);
        s->sleeping = 0;
        if (rc == ETIMEDOUT && !atomic_load_explicit(&s->signaled, memory_order_acquire)) {
            pthread_mutex_unlock(&s->mu);
            /* Woken by the clock: either the deadline passed, or it is the main thread's poll. */
            return (!polling || gf_deadline_passed(d)) ? GF_PARK_TIMEOUT : GF_PARK_CHECK_SIGNALS;
        }
    }
    /* Taking mu after `signaled` was set means the completer has released mu: it is done with s. */
    pthread_mutex_unlock(&s->mu);
    return GF_PARK_OK;
}

void
gf_park_until_signaled(gf_sel *s)
{
    /* Only `signaled` ends this wait: not a ready fd (a select with fd cases parks in poll(2) otherwise, and
     * a ready fd must not let the owner return while the completer that claimed the gf_sel still has to
     * signal it), not a deadline, not a signal. The completer is running: this is short. It sets
     * `signaled` and signals cv under mu (it also writes the eventfd; the stale count is drained by the
     * thread's next poll). */
    pthread_mutex_lock(&s->mu);
    while (!atomic_load_explicit(&s->signaled, memory_order_acquire)) {
        s->sleeping = 1;
        pthread_cond_wait(&s->cv, &s->mu);
        s->sleeping = 0;
    }
    pthread_mutex_unlock(&s->mu);
}

/* ---- the wait of every blocking call --------------------------------------------------------- */

void
gf_interrupt_fire(gf_interrupt *in)
{
    pthread_mutex_lock(&in->mu);
    atomic_store_explicit(&in->flag, 1, memory_order_release);
    for (gf_sel *s = in->parked; s != NULL; s = s->intr_next) {
        pthread_mutex_lock(&s->mu);
        if (s->sleeping) {
            pthread_cond_signal(&s->cv);
        }
        if (s->wake_fd >= 0) {
            gf_netpoll_wake(s->wake_fd);
        }
        pthread_mutex_unlock(&s->mu);
    }
    pthread_mutex_unlock(&in->mu);
}

/* Register / unregister a thread owner's gf_sel as parked on `in`. Detached or attached: no Python. */
static void
interrupt_link(gf_interrupt *in, gf_sel *s)
{
    pthread_mutex_lock(&in->mu);
    s->intr_next = in->parked;
    in->parked = s;
    pthread_mutex_unlock(&in->mu);
}

static void
interrupt_unlink(gf_interrupt *in, gf_sel *s)
{
    pthread_mutex_lock(&in->mu);
    for (gf_sel **pp = &in->parked; *pp != NULL; pp = &(*pp)->intr_next) {
        if (*pp == s) {
            *pp = s->intr_next;
            break;
        }
    }
    s->intr_next = NULL;
    pthread_mutex_unlock(&in->mu);
}


static int
raise_deferred(void *arg)
{
    PyObject *exc = (PyObject *)arg;
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return -1;
}

/* Main thread only: the operation completed although a signal handler raised while we waited. Keep the
 * outcome, and have the handler's exception raised at the interpreter's next check (right after this call
 * returns), through a pending call, which runs on the main thread. The handler is not run again. */
void
gf_defer_current_exception(void)
{
    PyObject *value = gf_err_take();
    if (value == NULL) {
        return;
    }
    if (Py_AddPendingCall(raise_deferred, value) < 0) {
        /* The queue of pending calls is full: raising it now would lose the outcome; report it. */
        PyErr_SetObject((PyObject *)Py_TYPE(value), value);
        Py_DECREF(value);
        PyErr_WriteUnraisable(NULL);
    }
}

/* 0 nothing to do, -1 an exception is set (signal handler, or the exit interrupt of a pool worker). */
static int
check_interrupts(gf_state *st, int is_main, gf_interrupt *in)
{
    if (is_main && PyErr_CheckSignals() < 0) {
        return -1;
    }
    if (gf_interrupt_fired(in)) {
        PyErr_SetString(st->Cancelled, "the pool is shutting down at interpreter exit");
        return -1;
    }
    return 0;
}

int
gf_wait(gf_state *st, gf_sel *s, const gf_deadline *d)
{
    return gf_wait_ex(st, s, d, 0);
}

int
gf_wait_ex(gf_state *st, gf_sel *s, const gf_deadline *d, int keep_exception)
{
    int is_main = PyThread_get_thread_ident() == st->main_ident;
    gf_interrupt *in = gf_current_thread_interrupt();
    if (in != NULL) {
        interrupt_link(in, s);
    }
    int ret;
    for (;;) {
        int pr;
        Py_BEGIN_ALLOW_THREADS
        pr = gf_park(s, d, is_main, in);
        Py_END_ALLOW_THREADS
        if (pr == GF_PARK_OK) {
            ret = GF_WAIT_FIRED;
            break;
        }
        if (pr == GF_PARK_FD_READY) {
            if (gf_sel_claim(s)) { /* the owner fires its own operation: no channel case can now */
                ret = GF_WAIT_FD;
                break;
            }
            Py_BEGIN_ALLOW_THREADS
            gf_park_until_signaled(s); /* a completer got there first: its case fired */
            Py_END_ALLOW_THREADS
            ret = GF_WAIT_FIRED;
            break;
        }
        if (pr == GF_PARK_CHECK_SIGNALS && check_interrupts(st, is_main, in) == 0) {
            continue; /* nothing pending: park again */
        }
        if (pr == GF_PARK_ERROR) { /* poll(2) failed: raise it (nothing is retried blindly) */
            if (gf_sel_withdraw(s)) {
                errno = s->park_errno;
                PyErr_SetFromErrno(PyExc_OSError);
                ret = GF_WAIT_RAISED;
                break;
            }
            Py_BEGIN_ALLOW_THREADS
            gf_park_until_signaled(s); /* a completer got there first: its case fired, no error to report */
            Py_END_ALLOW_THREADS
            ret = GF_WAIT_FIRED;
            break;
        }
        /* Timeout, or an exception: give up unless a completer got there first. */
        if (gf_sel_withdraw(s)) {
            ret = pr == GF_PARK_TIMEOUT ? GF_WAIT_TIMED_OUT : GF_WAIT_RAISED;
            break;
        }
        int raised_too = 0;
        if (pr == GF_PARK_CHECK_SIGNALS) {
            if (is_main && keep_exception) {
                raised_too = 1; /* the caller decides: undo the outcome and raise, or defer */
            }
            else if (is_main) {
                gf_defer_current_exception();
            }
            else {
                /* A worker's exit Cancelled: keep the outcome; the flag stays set, so its next wait raises.
                 * (Only the main thread runs pending calls: deferring would raise it there.) */
                PyErr_Clear();
            }
        }
        Py_BEGIN_ALLOW_THREADS
        gf_park_until_signaled(s);
        Py_END_ALLOW_THREADS
        ret = raised_too ? GF_WAIT_FIRED_RAISED : GF_WAIT_FIRED;
        break;
    }
    if (in != NULL) {
        interrupt_unlink(in, s);
    }
    return ret;
}


