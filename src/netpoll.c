/* netpoll.c — file descriptors as select cases: gilfree.readable(f), gilfree.writable(f).
 *
 * A select that names fd cases parks differently: instead of sleeping on its gf_sel's condition variable,
 * the owner thread sleeps in poll(2) on its fds plus one eventfd of its own (one per thread, made on first
 * use, closed when the thread ends). A channel completer fires the gf_sel exactly as before, then writes
 * that eventfd (gf_sel.wake_fd), so the poll returns. When poll reports an fd ready, the owner claims its own
 * gf_sel (PENDING -> FIRED, the same CAS a completer uses): if it wins, the fd case fired and no channel case
 * can; if a completer won, the channel case fired and the fd readiness is left for the next call.
 *
 * Why this and not one netpoller thread on epoll (Go's design): readiness here is level-triggered and per
 * waiter, as poll(2) reports it, so many threads waiting on one fd are each told; nothing is registered
 * anywhere, so a select leaves no state behind (no fd to unregister, none to leak when a select is
 * interrupted), and a wake-up costs one write to the owner's eventfd instead of a hop through a poller
 * thread. The cost is O(number of fds) per call, as with poll(2) itself: a select over a few hundred
 * connections per thread is the intended scale (the echo server example), and 10,000 fds work.
 *
 * Invariants:
 *   - The fd cases are polled once with a zero timeout in the engine's first pass, so a ready fd is chosen
 *     uniformly among every ready case, channel or fd.
 *   - A parked owner polls in slices of at most GF_SIGNAL_POLL_NS (50 ms): an fd closed while poll waits on
 *     it is not reported by that poll (the kernel keeps the file open for it), but the next slice reports
 *     POLLNVAL and the select raises OSError(EBADF). The main thread checks for signals at each slice.
 *   - The eventfd is written by a completer under the gf_sel's mu, after `signaled` is set; the owner takes
 *     mu before it returns, so no write reaches a gf_sel that is gone. A stale count (a wake-up the owner
 *     did not need to read) only makes the next poll return early, and is drained there.
 *   - Nothing here calls Python while parked; FdCase objects are immutable (free-threading safe).
 */
#include "channel.h"

#include <errno.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- the case object -------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *fileobj;  /* what the caller gave: select returns it as the case's value */
    int fd;
    short events;       /* POLLIN or POLLOUT */
} FdCaseObject;

static int
fdcase_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(((FdCaseObject *)op)->fileobj);
    return 0;
}

static int
fdcase_clear(PyObject *op)
{
    Py_CLEAR(((FdCaseObject *)op)->fileobj);
    return 0;
}

static void
fdcase_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    (void)fdcase_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
fdcase_repr(PyObject *op)
{
    FdCaseObject *c = (FdCaseObject *)op;
    return PyUnicode_FromFormat("gilfree.%s(%R)", c->events == POLLIN ? "readable" : "writable", c->fileobj);
}

static PyObject *
fdcase_get_fileobj(PyObject *op, void *Py_UNUSED(closure))
{
    return Py_NewRef(((FdCaseObject *)op)->fileobj);
}

static PyObject *
fdcase_get_fd(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(((FdCaseObject *)op)->fd);
}

static PyGetSetDef fdcase_getset[] = {
    {"fileobj", fdcase_get_fileobj, NULL, "The object given (select returns it as the case's value).", NULL},
    {"fd", fdcase_get_fd, NULL, "The file descriptor polled.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot fdcase_slots[] = {
    {Py_tp_doc, "A select case that is ready when a file descriptor is readable (gilfree.readable) or "
                "writable (gilfree.writable). Made by those functions."},
    {Py_tp_dealloc, fdcase_dealloc},
    {Py_tp_traverse, fdcase_traverse},
    {Py_tp_clear, fdcase_clear},
    {Py_tp_repr, fdcase_repr},
    {Py_tp_getset, fdcase_getset},
    {0, NULL},
};

static PyType_Spec fdcase_spec = {
    .name = "gilfree._core.FdCase",
    .basicsize = sizeof(FdCaseObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = fdcase_slots,
};

/* f: an int file descriptor or an object with fileno(). -1 with TypeError/ValueError naming `f`. */
int
gf_fd_of(PyObject *f)
{
    PyObject *num;
    if (PyLong_Check(f) && !PyBool_Check(f)) {
        num = Py_NewRef(f);
    }
    else {
        PyObject *meth = PyObject_GetAttrString(f, "fileno");
        if (meth == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
                return -1;
            }
            PyErr_Clear();
        }
        if (meth == NULL) {
            PyErr_Format(PyExc_TypeError, "f must be an int file descriptor or have a fileno() method, not %.100s",
                         Py_TYPE(f)->tp_name);
            return -1;
        }
        num = PyObject_CallNoArgs(meth);
        Py_DECREF(meth);
        if (num == NULL) {
            return -1;
        }
        if (!PyLong_Check(num) || PyBool_Check(num)) {
            PyErr_Format(PyExc_TypeError, "f.fileno() must return an int, not %.100s", Py_TYPE(num)->tp_name);
            Py_DECREF(num);
            return -1;
        }
    }
    long fd = PyLong_AsLong(num);
    Py_DECREF(num);
    if (fd == -1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "f: file descriptor out of range");
        }
        return -1;
    }
    if (fd < 0 || fd > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "f: file descriptor must be >= 0, not %ld (a closed socket's fileno() is -1)",
                     fd);
        return -1;
    }
    return (int)fd;
}

static PyObject *
make_case(PyObject *module, PyObject *f, short events)
{
    gf_state *st = gf_get_state(module);
    int fd = gf_fd_of(f);
    if (fd < 0) {
        return NULL;
    }
    FdCaseObject *c = PyObject_GC_New(FdCaseObject, st->fdcase_type);
    if (c == NULL) {
        return NULL;
    }
    c->fileobj = Py_NewRef(f);
    c->fd = fd;
    c->events = events;
    PyObject_GC_Track((PyObject *)c);
    return (PyObject *)c;
}

static PyObject *
readable_impl(PyObject *module, PyObject *f)
{
    return make_case(module, f, POLLIN);
}

static PyObject *
writable_impl(PyObject *module, PyObject *f)
{
    return make_case(module, f, POLLOUT);
}

int
gf_fdcase_fill(gf_state *st, PyObject *arg, gf_case *c)
{
    if (!Py_IS_TYPE(arg, st->fdcase_type)) {
        return 0;
    }
    FdCaseObject *fc = (FdCaseObject *)arg;
    c->fd = fc->fd;
    c->events = fc->events;
    c->fileobj = fc->fileobj; /* borrowed: the case object, an argument of select, holds it */
    return 1;
}

/* ---- polling -------------------------------------------------------------------------------------- */

/* One eventfd per thread, made on first use and closed when the thread ends. */
static pthread_key_t wake_key;
static pthread_once_t wake_once = PTHREAD_ONCE_INIT;

static void
wake_key_destroy(void *p)
{
    (void)close((int)(intptr_t)p - 1);
}

static void
wake_key_make(void)
{
    (void)pthread_key_create(&wake_key, wake_key_destroy);
}

/* The identity of an eventfd as fstat(2) shows it: every anonymous-inode file (eventfd, epoll, timerfd...)
 * shares one inode with no file-type bits in st_mode; a pipe, socket or regular file has other values. */
static dev_t eventfd_dev;
static ino_t eventfd_ino;
static int eventfd_known; /* set once (under wake_once's first call path: benign if two threads race) */

static int
still_our_eventfd(int fd)
{
    struct stat sb;
    if (fstat(fd, &sb) < 0) {
        return 0; /* closed (EBADF) */
    }
    return (sb.st_mode & S_IFMT) == 0 && __atomic_load_n(&eventfd_known, __ATOMIC_ACQUIRE) &&
           sb.st_dev == eventfd_dev && sb.st_ino == eventfd_ino;
}

/* A new eventfd for this thread; the old number is not closed (it is not ours any more: user code closed
 * it, and the number may already belong to another file). -1 with errno. Detached or attached. */
static int
remake_eventfd(void)
{
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0) {
        return -1;
    }
    struct stat sb;
    if (!__atomic_load_n(&eventfd_known, __ATOMIC_ACQUIRE) && fstat(fd, &sb) == 0) {
        eventfd_dev = sb.st_dev;
        eventfd_ino = sb.st_ino;
        __atomic_store_n(&eventfd_known, 1, __ATOMIC_RELEASE);
    }
    if (pthread_setspecific(wake_key, (void *)(intptr_t)(fd + 1)) != 0) {
        (void)close(fd);
        errno = ENOMEM;
        return -1;
    }
    return fd;
}

int
gf_netpoll_thread_eventfd(void)
{
    (void)pthread_once(&wake_once, wake_key_make);
    intptr_t v = (intptr_t)pthread_getspecific(wake_key);
    /* User code may have closed it (os.closerange): then completers would write into whatever file reuses
     * the number. Checked once per park (one fstat), and during the park by POLLNVAL on it. */
    if (v > 0 && still_our_eventfd((int)v - 1)) {
        return (int)v - 1;
    }
    int fd = remake_eventfd();
    if (fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return fd;
}

int
gf_netpoll_check_count(int nfd, int block)
{
    /* poll(2) refuses more entries than RLIMIT_NOFILE's soft limit (EINVAL); a parked select polls one more
     * (its thread's eventfd). */
    struct rlimit rl;
    if (nfd == 0 || getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY) {
        return 0;
    }
    unsigned long long need = (unsigned long long)nfd + (block ? 1 : 0);
    if (need > (unsigned long long)rl.rlim_cur) {
        PyErr_Format(PyExc_OSError,
                     "select over %d file descriptor cases needs %llu poll entries (%s), more than this "
                     "process's limit on open files, RLIMIT_NOFILE = %llu: raise it with "
                     "resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard)) or `ulimit -n`, or split the "
                     "cases over several selects",
                     nfd, need, block ? "one more for the thread's wake-up eventfd" : "one per case",
                     (unsigned long long)rl.rlim_cur);
        return -1;
    }
    return 0;
}

void
gf_netpoll_after_fork_child(void)
{
    /* The forking thread's eventfd is shared with the parent (fork copies the descriptor, not the object):
     * make a fresh one on next use, so neither process drains the other's wake-ups. */
    (void)pthread_once(&wake_once, wake_key_make);
    intptr_t v = (intptr_t)pthread_getspecific(wake_key);
    if (v > 0) {
        (void)close((int)v - 1);
        (void)pthread_setspecific(wake_key, NULL);
    }
}

void
gf_netpoll_wake(int fd)
{
    uint64_t one = 1;
    ssize_t r;
    do {
        r = write(fd, &one, sizeof(one));
    } while (r < 0 && errno == EINTR);
    /* EAGAIN: the counter is saturated, so the owner's poll returns anyway. */
}

static int64_t
ns_until(const struct timespec *at)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)(at->tv_sec - now.tv_sec) * 1000000000 + (at->tv_nsec - now.tv_nsec);
}

int
gf_netpoll_park(gf_sel *s, const gf_deadline *d, int is_main, const gf_interrupt *in)
{
    struct pollfd *p = s->pfds;
    int n = s->npfds;
    p[n].fd = s->wake_fd;
    p[n].events = POLLIN;
    for (;;) {
        if (atomic_load_explicit(&s->signaled, memory_order_acquire)) {
            break;
        }
        if (gf_interrupt_fired(in)) {
            return GF_PARK_CHECK_SIGNALS;
        }
        int64_t slice = GF_SIGNAL_POLL_NS;
        if (!d->infinite) {
            int64_t left = ns_until(&d->at);
            if (left <= 0) {
                return GF_PARK_TIMEOUT;
            }
            if (left < slice) {
                slice = left;
            }
        }
        int ms = (int)((slice + 999999) / 1000000);
        for (int i = 0; i <= n; i++) {
            p[i].revents = 0;
        }
        int rc = poll(p, (nfds_t)n + 1, ms);
        if (rc < 0) {
            if (errno != EINTR) {
                s->park_errno = errno; /* raised by the caller; never retried blindly (it would spin) */
                return GF_PARK_ERROR;
            }
            if (is_main && !atomic_load_explicit(&s->signaled, memory_order_acquire)) {
                return GF_PARK_CHECK_SIGNALS; /* a signal arrived: run its handler now */
            }
            continue;
        }
        if (rc > 0 && (p[n].revents & POLLNVAL)) {
            /* Our eventfd was closed under us (user code closing descriptors): make a new one, and publish
             * it under mu, where completers read it. A wake-up written meanwhile went nowhere, so look at
             * `signaled` again before sleeping. */
            pthread_mutex_lock(&s->mu);
            int fd = remake_eventfd();
            if (fd >= 0) {
                s->wake_fd = fd;
            }
            pthread_mutex_unlock(&s->mu);
            if (fd < 0) {
                s->park_errno = errno;
                return GF_PARK_ERROR;
            }
            p[n].fd = fd;
            continue;
        }
        if (rc > 0 && p[n].revents) {
            uint64_t count;
            (void)!read(s->wake_fd, &count, sizeof(count));
        }
        if (atomic_load_explicit(&s->signaled, memory_order_acquire)) {
            break;
        }
        if (rc > 0) {
            for (int i = 0; i < n; i++) {
                if (p[i].revents) {
                    return GF_PARK_FD_READY;
                }
            }
        }
        if (!d->infinite && gf_deadline_passed(d)) {
            return GF_PARK_TIMEOUT;
        }
        if (is_main) {
            return GF_PARK_CHECK_SIGNALS;
        }
        /* else: the next slice (a descriptor closed meanwhile shows up as POLLNVAL there) */
    }
    /* Taking mu after `signaled` was set means the completer has released mu: it is done with s. */
    pthread_mutex_lock(&s->mu);
    pthread_mutex_unlock(&s->mu);
    return GF_PARK_OK;
}

/* ---- module functions ------------------------------------------------------------------------------- */

static PyMethodDef netpoll_methods[] = {
    {"readable", readable_impl, METH_O,
     "readable(f)\n--\n\n"
     "A select case that is ready when ``f`` can be read without blocking (or is at end of file, or has an\n"
     "error). ``f`` is an int file descriptor or an object with ``fileno()``: a socket, a pipe, a file.\n"
     "When it fires, select returns ``(index, f)``; nothing is read: call ``f.recv()`` yourself."},
    {"writable", writable_impl, METH_O,
     "writable(f)\n--\n\n"
     "A select case that is ready when ``f`` can be written without blocking. ``f`` as for readable();\n"
     "select returns ``(index, f)`` and writes nothing."},
    {NULL, NULL, 0, NULL},
};

int
gf_netpoll_setup(PyObject *module, gf_state *st)
{
    st->fdcase_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &fdcase_spec, NULL);
    if (st->fdcase_type == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "FdCase", (PyObject *)st->fdcase_type) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(module, netpoll_methods);
}
