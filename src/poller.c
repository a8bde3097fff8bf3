/* poller.c — gilfree.Poller: file descriptors registered once, reported by readiness at O(ready) a wake-up.
 *
 * readable(f)/writable(f) (netpoll.c) leave nothing behind, so every select polls every fd case it names:
 * O(n) per call. A Poller keeps its registrations in an epoll instance between waits (Go's pollDesc, libuv's
 * io watchers): a wait costs O(ready). It is a select case itself, ready when one of its files is (the epoll
 * descriptor is pollable, so the engine parks on it as on any fd case); select then returns the list of
 * (file, events) that are ready. `wait()` is the same without channels.
 *
 * Registrations:
 *   - The table is indexed by descriptor number (reg[fd]); the kernel's registration carries a token,
 *     (generation << 32) | fd, and a report is believed only while reg[fd] still has that generation: a
 *     file unregistered, or replaced by another file under the same number, is never reported again.
 *   - Each entry remembers its file's identity (st_dev, st_ino). register() on a number whose entry names
 *     another file replaces it (the old file was closed: the kernel dropped its registration with it);
 *     on the same file it raises KeyError, as selectors does. The object given is what is reported: a closed
 *     socket reports as that socket (whose recv() raises), never as the new file under its old number.
 *   - A registration ends with unregister(f), with close(), or when the number is registered again for
 *     another file. Closing a file only ends the kernel's side (when its last descriptor goes; a duplicate,
 *     or a forked child's copy, keeps it alive: then the first wake-up that finds only such stale
 *     registrations rebuilds the epoll instance without them, see rebuild_locked).
 *   - Regular files cannot be in an epoll set (EPERM) and poll(2) calls them always ready: they are kept
 *     out of the kernel's set and reported at every wait, through one eventfd (`ready_fd`) that stays
 *     readable while any is registered. Level-triggered throughout: a file stays reported while it is ready.
 *   - wake() writes `wake_fd`, registered too: a wait returns (an empty list), a select with the poller
 *     returns (index, []).
 *
 * Concurrency: `mu` guards the table; it is held only for short, non-blocking work (epoll_ctl, pointer and
 * refcount copies: no allocation that could start a GC, no Py_DECREF, no Python call), and taken with
 * try-lock else detached. Waits (the engine's park in poll(2) on the epoll descriptor) hold no lock. close()
 * with waits in progress marks the poller closed and wakes them; the last one out closes the descriptors, so a
 * number is never reused under a wait. A forked child cannot use a parent's poller (the epoll instance is
 * shared with the parent): every method raises there.
 */
#include "channel.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#define GF_READ 1
#define GF_WRITE 2
#define TOKEN_WAKE UINT64_MAX
#define TOKEN_READY (UINT64_MAX - 1)
#define HARVEST_MAX 1024 /* events taken from the kernel per call */

typedef struct {
    PyObject *fileobj; /* strong; NULL: no registration under this number */
    uint32_t gen;
    unsigned char events;  /* GF_READ | GF_WRITE */
    unsigned char regular; /* not in the epoll set: always ready */
    dev_t dev;
    ino_t ino;
} preg;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mu;
    int epfd, wake_fd, ready_fd; /* -1 once closed */
    atomic_int closed;           /* close() was called (the fds go when `users` is 0); read unlocked */
    int users;                   /* waits and selects in progress */
    preg *reg;
    int cap;                     /* entries in reg */
    Py_ssize_t count;            /* registrations */
    int nregular;
    uint32_t next_gen;
    unsigned fork_gen;
} PollerObject;

static void
plock(PollerObject *p)
{
    if (pthread_mutex_trylock(&p->mu) != 0) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&p->mu);
        Py_END_ALLOW_THREADS
    }
}

static void
close_fds_locked(PollerObject *p)
{
    int fds[3] = {p->epfd, p->wake_fd, p->ready_fd};
    p->epfd = p->wake_fd = p->ready_fd = -1;
    for (int i = 0; i < 3; i++) {
        if (fds[i] >= 0) {
            (void)close(fds[i]);
        }
    }
}

/* 0, or -1 with an exception: closed, or a forked child's copy. */
static int
usable(PollerObject *p)
{
    if (p->fork_gen != gf_fork_generation()) {
        PyErr_SetString(PyExc_RuntimeError, "a Poller cannot be used in a forked child (its epoll instance is "
                                            "the parent's): make a new one in the child");
        return -1;
    }
    if (p->closed) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on a closed Poller");
        return -1;
    }
    return 0;
}

static PyObject *
poller_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        return PyErr_Format(PyExc_TypeError, "Poller() takes no arguments");
    }
    PollerObject *p = (PollerObject *)type->tp_alloc(type, 0);
    if (p == NULL) {
        return NULL;
    }
    p->epfd = p->wake_fd = p->ready_fd = -1;
    p->fork_gen = gf_fork_generation();
    p->next_gen = 1;
    pthread_mutex_init(&p->mu, NULL);
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (p->epfd >= 0) {
        p->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    }
    if (p->wake_fd >= 0) {
        p->ready_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    }
    struct epoll_event ev = {.events = EPOLLIN};
    int ok = p->ready_fd >= 0;
    if (ok) {
        ev.data.u64 = TOKEN_WAKE;
        ok = epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->wake_fd, &ev) == 0;
    }
    if (ok) {
        ev.data.u64 = TOKEN_READY;
        ok = epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->ready_fd, &ev) == 0;
    }
    if (!ok) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(p);
        return NULL;
    }
    return (PyObject *)p;
}

static int
poller_traverse(PyObject *op, visitproc visit, void *arg)
{
    PollerObject *p = (PollerObject *)op;
    Py_VISIT(Py_TYPE(op));
    for (int i = 0; i < p->cap; i++) {
        Py_VISIT(p->reg[i].fileobj);
    }
    return 0;
}

static int
poller_clear(PyObject *op)
{
    PollerObject *p = (PollerObject *)op;
    for (int i = 0; i < p->cap; i++) {
        Py_CLEAR(p->reg[i].fileobj);
    }
    p->count = 0;
    return 0;
}

static void
poller_dealloc(PyObject *op)
{
    PollerObject *p = (PollerObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    (void)poller_clear(op);
    close_fds_locked(p); /* nobody else holds it: no lock (a forked child's may be a dead thread's) */
    PyMem_RawFree(p->reg);
    if (p->fork_gen == gf_fork_generation()) {
        pthread_mutex_destroy(&p->mu);
    }
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* events argument: READ, WRITE or both. -1 with ValueError/TypeError. */
static int
events_of(PyObject *obj)
{
    if (obj == NULL) {
        return GF_READ;
    }
    if (!PyLong_Check(obj) || PyBool_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "events must be an int (gilfree.READ, gilfree.WRITE or both), not %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    long v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        v = 0;
    }
    if (v < 1 || v > (GF_READ | GF_WRITE)) {
        PyErr_Format(PyExc_ValueError, "events must be gilfree.READ (1), gilfree.WRITE (2) or READ | WRITE (3), "
                                       "not %R", obj);
        return -1;
    }
    return (int)v;
}

static uint32_t
epoll_mask(int events)
{
    return (events & GF_READ ? EPOLLIN | EPOLLRDHUP : 0) | (events & GF_WRITE ? EPOLLOUT : 0);
}

/* The entry for fd, growing the table (locked). NULL with errno ENOMEM. */
static preg *
slot_locked(PollerObject *p, int fd)
{
    if (fd >= p->cap) {
        int cap = p->cap ? p->cap : 64;
        while (cap <= fd) {
            if (cap > INT_MAX / 2) {
                cap = fd + 1;
                break;
            }
            cap *= 2;
        }
        preg *r = PyMem_RawRealloc(p->reg, (size_t)cap * sizeof(preg));
        if (r == NULL) {
            errno = ENOMEM;
            return NULL;
        }
        memset(r + p->cap, 0, (size_t)(cap - p->cap) * sizeof(preg));
        p->reg = r;
        p->cap = cap;
    }
    return &p->reg[fd];
}

/* Drop an entry (locked): its kernel registration if `del` (the number still names its file), its
 * regular-file count; returns its object, for the caller to release after unlocking. */
static PyObject *
drop_locked(PollerObject *p, int fd, int del)
{
    preg *r = &p->reg[fd];
    PyObject *old = r->fileobj;
    if (r->regular) {
        if (--p->nregular == 0) {
            uint64_t count;
            (void)!read(p->ready_fd, &count, sizeof(count));
        }
    }
    else if (del) {
        (void)epoll_ctl(p->epfd, EPOLL_CTL_DEL, fd, NULL); /* ENOENT/EBADF: already gone with its file */
    }
    r->fileobj = NULL;
    r->regular = 0;
    r->gen = 0;
    p->count--;
    return old;
}

enum { OP_REGISTER, OP_MODIFY };

static PyObject *
poller_set(PollerObject *p, PyObject *f, PyObject *evobj, int op)
{
    int events = events_of(evobj);
    if (events < 0 || usable(p) < 0) {
        return NULL;
    }
    int fd = gf_fd_of(f);
    if (fd < 0) {
        return NULL;
    }
    struct stat sb;
    if (fstat(fd, &sb) < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *old = NULL, *result = NULL;
    int err = 0, missing = 0, exists = 0;
    plock(p);
    if (p->closed) {
        pthread_mutex_unlock(&p->mu);
        (void)usable(p);
        return NULL;
    }
    preg *r = slot_locked(p, fd);
    if (r == NULL) {
        err = ENOMEM;
        goto unlock;
    }
    int same = r->fileobj != NULL && r->dev == sb.st_dev && r->ino == sb.st_ino;
    if (r->fileobj != NULL && !same) {
        old = drop_locked(p, fd, 0); /* its file was closed: the number names another one now */
        r = &p->reg[fd];
    }
    if (op == OP_MODIFY) {
        if (!same) {
            missing = 1;
            goto unlock;
        }
        if (!r->regular) {
            struct epoll_event ev = {.events = epoll_mask(events),
                                     .data.u64 = ((uint64_t)r->gen << 32) | (uint32_t)fd};
            if (epoll_ctl(p->epfd, EPOLL_CTL_MOD, fd, &ev) < 0) {
                err = errno;
                goto unlock;
            }
        }
        r->events = (unsigned char)events;
        PyObject *prev = r->fileobj;
        r->fileobj = Py_NewRef(f);
        old = prev; /* released below: modify(f) may name the file by another object */
        goto unlock_ok;
    }
    if (same) {
        exists = 1;
        goto unlock;
    }
    uint32_t gen = p->next_gen++;
    if (p->next_gen == 0) {
        p->next_gen = 1;
    }
    struct epoll_event ev = {.events = epoll_mask(events), .data.u64 = ((uint64_t)gen << 32) | (uint32_t)fd};
    int regular = 0;
    if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        if (errno == EEXIST) {
            /* The number was registered for a file now closed whose description lives on (a duplicate):
             * the kernel matches by number and file, so this is that same file again. */
            if (epoll_ctl(p->epfd, EPOLL_CTL_MOD, fd, &ev) < 0) {
                err = errno;
                goto unlock;
            }
        }
        else if (errno == EPERM) {
            regular = 1; /* a regular file or a directory: always ready, as poll(2) says */
        }
        else {
            err = errno;
            goto unlock;
        }
    }
    r->fileobj = Py_NewRef(f);
    r->gen = gen;
    r->events = (unsigned char)events;
    r->regular = (unsigned char)regular;
    r->dev = sb.st_dev;
    r->ino = sb.st_ino;
    p->count++;
    if (regular && p->nregular++ == 0) {
        uint64_t one = 1;
        (void)!write(p->ready_fd, &one, sizeof(one));
    }
unlock_ok:
    result = Py_NewRef(Py_None);
unlock:
    pthread_mutex_unlock(&p->mu);
    Py_XDECREF(old);
    if (err) {
        errno = err;
        return err == ENOMEM ? PyErr_NoMemory() : PyErr_SetFromErrno(PyExc_OSError);
    }
    if (missing) {
        PyErr_Format(PyExc_KeyError, "%R (fd %d) is not registered", f, fd);
    }
    if (exists) {
        PyErr_Format(PyExc_KeyError, "%R (fd %d) is already registered", f, fd);
    }
    return result;
}

static PyObject *
poller_register(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"f", "events", NULL};
    PyObject *a[2];
    if (gf_parse_args("register", args, nargs, kwnames, names, 1, 2, a) < 0) {
        return NULL;
    }
    return poller_set((PollerObject *)op, a[0], a[1], OP_REGISTER);
}

static PyObject *
poller_modify(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"f", "events", NULL};
    PyObject *a[2];
    if (gf_parse_args("modify", args, nargs, kwnames, names, 2, 2, a) < 0) {
        return NULL;
    }
    return poller_set((PollerObject *)op, a[0], a[1], OP_MODIFY);
}

static PyObject *
poller_unregister(PyObject *op, PyObject *f)
{
    PollerObject *p = (PollerObject *)op;
    if (usable(p) < 0) {
        return NULL;
    }
    int fd = gf_fd_of(f);
    int by_object = 0;
    struct stat sb;
    if (fd < 0) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError)) {
            return NULL;
        }
        PyErr_Clear(); /* a closed socket (fileno() -1): its entry is found by the object */
        by_object = 1;
    }
    else if (fstat(fd, &sb) < 0) {
        by_object = 1; /* closed: the entry can only be the object's */
    }
    PyObject *old = NULL;
    plock(p);
    if (by_object) {
        for (int i = 0; i < p->cap && old == NULL; i++) {
            if (p->reg[i].fileobj == f) {
                old = drop_locked(p, i, 0);
            }
        }
    }
    else if (fd < p->cap && p->reg[fd].fileobj != NULL) {
        preg *r = &p->reg[fd];
        /* Another file under that number: the registered one was closed (its kernel side went with it). */
        old = drop_locked(p, fd, r->dev == sb.st_dev && r->ino == sb.st_ino);
    }
    pthread_mutex_unlock(&p->mu);
    if (old == NULL) {
        if (by_object) {
            return PyErr_Format(PyExc_KeyError, "%R is not registered", f);
        }
        return PyErr_Format(PyExc_KeyError, "%R (fd %d) is not registered", f, fd);
    }
    Py_DECREF(old);
    Py_RETURN_NONE;
}

typedef struct {
    PyObject *obj; /* strong */
    int events;
} ready_item;

/* A registered file closed while a duplicate of it lives on (a dup, a forked child's copy) keeps its
 * kernel registration, which no epoll_ctl can reach any more (the kernel finds a registration by number and
 * file, and the number no longer names that file). Reported, its token is stale and dropped, but it keeps
 * the epoll descriptor readable and every wait would spin. So: a new epoll instance with the live entries
 * (each re-added only if its number still names its file), put in place under the same number (dup3: a
 * wait parked on the old one returns within its 50 ms poll slice and polls the new one). O(registered), and
 * only when a wake-up found nothing but stale tokens. Locked; on failure the old instance stays. */
static void
rebuild_locked(PollerObject *p)
{
    int fd = epoll_create1(EPOLL_CLOEXEC);
    if (fd < 0) {
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TOKEN_WAKE};
    int ok = epoll_ctl(fd, EPOLL_CTL_ADD, p->wake_fd, &ev) == 0;
    ev.data.u64 = TOKEN_READY;
    ok = ok && epoll_ctl(fd, EPOLL_CTL_ADD, p->ready_fd, &ev) == 0;
    for (int i = 0; ok && i < p->cap; i++) {
        preg *r = &p->reg[i];
        struct stat sb;
        if (r->fileobj == NULL || r->regular || fstat(i, &sb) < 0 || sb.st_dev != r->dev || sb.st_ino != r->ino) {
            continue; /* not in the kernel's set, or its file was closed (then never reported again) */
        }
        struct epoll_event e = {.events = epoll_mask(r->events), .data.u64 = ((uint64_t)r->gen << 32) | (uint32_t)i};
        ok = epoll_ctl(fd, EPOLL_CTL_ADD, i, &e) == 0;
    }
    if (ok) {
        (void)dup3(fd, p->epfd, O_CLOEXEC);
    }
    (void)close(fd);
}

/* Take what the kernel reports now (no wait) and return it as a list of (f, events); *woke is set when wake()
 * was called. NULL with an exception. Attached. */
static PyObject *
harvest(PollerObject *p, int *woke)
{
    struct epoll_event evs[64];
    struct epoll_event *ev = evs;
    int maxev = 64;
    *woke = 0;
    /* the regular files are all reported: room for them too */
    plock(p);
    int nreg = p->nregular, closed = p->closed, epfd = p->epfd;
    Py_ssize_t count = p->count;
    pthread_mutex_unlock(&p->mu);
    if (closed) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on a closed Poller");
        return NULL;
    }
    if (count > maxev) {
        maxev = count < HARVEST_MAX ? (int)count + 2 : HARVEST_MAX;
        ev = PyMem_Malloc((size_t)maxev * sizeof(*ev));
        if (ev == NULL) {
            return PyErr_NoMemory();
        }
    }
    int n = epoll_wait(epfd, ev, maxev, 0);
    if (n < 0) {
        n = 0; /* EINTR: nothing taken */
    }
    ready_item *items = PyMem_Malloc((size_t)(n + nreg + 1) * sizeof(ready_item));
    if (items == NULL) {
        if (ev != evs) {
            PyMem_Free(ev);
        }
        return PyErr_NoMemory();
    }
    int k = 0, want_regular = 0, stale = 0;
    plock(p);
    for (int i = 0; i < n; i++) {
        uint64_t tok = ev[i].data.u64;
        if (tok == TOKEN_WAKE) {
            uint64_t count;
            (void)!read(p->wake_fd, &count, sizeof(count));
            *woke = 1;
            continue;
        }
        if (tok == TOKEN_READY) {
            want_regular = 1;
            continue;
        }
        int fd = (int)(uint32_t)tok;
        uint32_t gen = (uint32_t)(tok >> 32);
        if (fd >= p->cap || p->reg[fd].fileobj == NULL || p->reg[fd].gen != gen) {
            stale++; /* unregistered, or replaced under this number; or a closed file a duplicate keeps */
            continue;
        }
        uint32_t e = ev[i].events;
        int got = ((e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) ? GF_READ : 0) |
                  ((e & (EPOLLOUT | EPOLLHUP | EPOLLERR)) ? GF_WRITE : 0);
        got &= p->reg[fd].events;
        if (got) {
            items[k].obj = Py_NewRef(p->reg[fd].fileobj);
            items[k].events = got;
            k++;
        }
    }
    if (want_regular) {
        for (int i = 0; i < p->cap && k < n + nreg; i++) {
            if (p->reg[i].fileobj != NULL && p->reg[i].regular) {
                items[k].obj = Py_NewRef(p->reg[i].fileobj);
                items[k].events = p->reg[i].events;
                k++;
            }
        }
    }
    if (stale && k == 0 && !*woke && !p->closed) {
        rebuild_locked(p); /* the wake-up was only stale registrations: they would wake every wait */
    }
    pthread_mutex_unlock(&p->mu);
    if (ev != evs) {
        PyMem_Free(ev);
    }
    PyObject *list = PyList_New(k);
    for (int i = 0; i < k; i++) {
        PyObject *t = list != NULL ? PyTuple_New(2) : NULL;
        PyObject *e = t != NULL ? PyLong_FromLong(items[i].events) : NULL;
        if (e == NULL) {
            Py_XDECREF(t);
            Py_CLEAR(list);
            Py_DECREF(items[i].obj);
            continue;
        }
        PyTuple_SET_ITEM(t, 0, items[i].obj);
        PyTuple_SET_ITEM(t, 1, e);
        PyList_SET_ITEM(list, i, t);
    }
    PyMem_Free(items);
    return list;
}

/* ---- the select case ------------------------------------------------------------------------------ */

int
gf_poller_fill(gf_state *st, PyObject *arg, gf_case *c)
{
    if (!Py_IS_TYPE(arg, st->poller_type)) {
        return 0;
    }
    PollerObject *p = (PollerObject *)arg;
    if (usable(p) < 0) {
        return -1;
    }
    plock(p);
    int ok = !p->closed;
    if (ok) {
        p->users++;
        c->fd = p->epfd;
    }
    pthread_mutex_unlock(&p->mu);
    if (!ok) {
        (void)usable(p);
        return -1;
    }
    c->events = POLLIN;
    c->fileobj = arg;
    return 1;
}

void
gf_poller_leave(PyObject *arg)
{
    PollerObject *p = (PollerObject *)arg;
    plock(p);
    if (--p->users == 0 && p->closed) {
        close_fds_locked(p);
    }
    pthread_mutex_unlock(&p->mu);
}

PyObject *
gf_poller_harvest(PyObject *arg, int *woke)
{
    return harvest((PollerObject *)arg, woke);
}

/* ---- wait, wake, close ------------------------------------------------------------------------------ */

static PyObject *
poller_wait(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"timeout", NULL};
    PyObject *a[1];
    if (gf_parse_args("wait", args, nargs, kwnames, names, 0, 1, a) < 0) {
        return NULL;
    }
    PollerObject *p = (PollerObject *)op;
    gf_deadline d;
    if (gf_deadline_from_timeout(a[0], &d, "timeout") < 0) {
        return NULL;
    }
    gf_state *st = gf_get_state(PyType_GetModuleByDef(Py_TYPE(op), &gf_module_def));
    gf_case c = {.ch = NULL, .value = NULL, .is_send = 0, .fd = -1, .events = 0, .fileobj = NULL};
    if (gf_poller_fill(st, op, &c) < 0) {
        return NULL;
    }
    PyObject *list = NULL;
    for (int round = 0;; round++) {
        int woke;
        list = harvest(p, &woke); /* first without waiting: a busy poller costs one system call */
        if (list == NULL || PyList_GET_SIZE(list) > 0 || woke || gf_deadline_passed(&d)) {
            break; /* (an empty list when the deadline has passed) */
        }
        Py_CLEAR(list);
        if (round > 0 && PyErr_CheckSignals() < 0) {
            break; /* woken for readiness another waiter took: not a loop that Ctrl-C cannot end */
        }
        gf_outcome o;
        if (gf_engine_run(st, &c, 1, 1, &d, &o) < 0) {
            if (PyErr_ExceptionMatches(PyExc_TimeoutError)) {
                PyErr_Clear();
                list = PyList_New(0);
            }
            break;
        }
    }
    gf_poller_leave(op);
    return list;
}

static PyObject *
poller_wake(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    PollerObject *p = (PollerObject *)op;
    if (usable(p) < 0) {
        return NULL;
    }
    plock(p);
    if (p->wake_fd >= 0) {
        gf_netpoll_wake(p->wake_fd);
    }
    pthread_mutex_unlock(&p->mu);
    Py_RETURN_NONE;
}

static PyObject *
poller_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    PollerObject *p = (PollerObject *)op;
    if (p->fork_gen != gf_fork_generation()) {
        close_fds_locked(p); /* the child's copies only: the parent's poller is not touched */
        p->closed = 1;
        Py_RETURN_NONE;
    }
    plock(p);
    if (p->closed) {
        pthread_mutex_unlock(&p->mu);
        Py_RETURN_NONE;
    }
    p->closed = 1;
    int cap = p->cap;
    preg *reg = p->reg;
    p->reg = NULL;
    p->cap = 0;
    p->count = 0;
    p->nregular = 0;
    if (p->users == 0) {
        close_fds_locked(p);
    }
    else {
        gf_netpoll_wake(p->wake_fd); /* the waits see `closed` and raise; the last one closes the fds */
    }
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < cap; i++) {
        Py_XDECREF(reg[i].fileobj);
    }
    PyMem_RawFree(reg);
    Py_RETURN_NONE;
}

static PyObject *
poller_enter(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    if (usable((PollerObject *)op) < 0) {
        return NULL;
    }
    return Py_NewRef(op);
}

static PyObject *
poller_exit(PyObject *op, PyObject *Py_UNUSED(args))
{
    PyObject *r = poller_close(op, NULL);
    Py_XDECREF(r);
    return r == NULL ? NULL : Py_NewRef(Py_False);
}

static PyObject *
poller_fileno(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    PollerObject *p = (PollerObject *)op;
    if (usable(p) < 0) {
        return NULL;
    }
    return PyLong_FromLong(p->epfd);
}

static Py_ssize_t
poller_len(PyObject *op)
{
    PollerObject *p = (PollerObject *)op;
    plock(p);
    Py_ssize_t n = p->count;
    pthread_mutex_unlock(&p->mu);
    return n;
}

static PyObject *
poller_get_closed(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((PollerObject *)op)->closed);
}

static PyObject *
poller_repr(PyObject *op)
{
    PollerObject *p = (PollerObject *)op;
    if (p->closed) {
        return PyUnicode_FromString("<gilfree.Poller closed>");
    }
    return PyUnicode_FromFormat("<gilfree.Poller %zd registered>", poller_len(op));
}

static PyMethodDef poller_methods[] = {
    {"register", (PyCFunction)(void (*)(void))poller_register, METH_FASTCALL | METH_KEYWORDS,
     "register(f, events=READ)\n--\n\n"
     "Watch ``f`` (an int file descriptor or an object with ``fileno()``) for ``events``: gilfree.READ,\n"
     "gilfree.WRITE or both (the values of selectors.EVENT_READ/EVENT_WRITE). The registration lasts until\n"
     "unregister(f), close(), or the number is registered again for another file. KeyError if ``f``'s file is\n"
     "registered already; OSError if it is not open."},
    {"modify", (PyCFunction)(void (*)(void))poller_modify, METH_FASTCALL | METH_KEYWORDS,
     "modify(f, events)\n--\n\nChange the events watched for ``f``. KeyError if it is not registered."},
    {"unregister", poller_unregister, METH_O,
     "unregister(f)\n--\n\nStop watching ``f`` (also once closed). KeyError if it is not registered."},
    {"wait", (PyCFunction)(void (*)(void))poller_wait, METH_FASTCALL | METH_KEYWORDS,
     "wait(timeout=None)\n--\n\n"
     "Wait until a registered file is ready and return a list of ``(f, events)``, ``f`` as registered and\n"
     "``events`` the ready subset of what it is watched for. Returns ``[]`` when ``timeout`` seconds pass or\n"
     "wake() is called. The GIL is released while waiting; Ctrl-C reaches the main thread within 100 ms."},
    {"wake", poller_wake, METH_NOARGS,
     "wake()\n--\n\nMake a wait() in progress (or the next) return, from any thread."},
    {"close", poller_close, METH_NOARGS,
     "close()\n--\n\nEnd every registration and release the descriptors; waits in progress raise ValueError."},
    {"fileno", poller_fileno, METH_NOARGS,
     "fileno()\n--\n\nThe epoll descriptor: readable when a registered file is ready."},
    {"__enter__", poller_enter, METH_NOARGS, NULL},
    {"__exit__", poller_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef poller_getset[] = {
    {"closed", poller_get_closed, NULL, "True once close() was called.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot poller_slots[] = {
    {Py_tp_doc, "Poller()\n--\n\n"
                "Files registered once and reported when ready, at a cost that grows with the number ready, not\n"
                "the number registered (epoll). Level-triggered: a file is reported while it stays ready. A\n"
                "Poller is a select case: ``gilfree.select(poller, ch.recv)`` returns ``(0, [(f, events), ...])``\n"
                "when files are ready, next to channel cases."},
    {Py_tp_new, poller_new},
    {Py_tp_dealloc, poller_dealloc},
    {Py_tp_traverse, poller_traverse},
    {Py_tp_clear, poller_clear},
    {Py_tp_repr, poller_repr},
    {Py_tp_methods, poller_methods},
    {Py_tp_getset, poller_getset},
    {Py_mp_length, poller_len},
    {0, NULL},
};

static PyType_Spec poller_spec = {
    .name = "gilfree._core.Poller",
    .basicsize = sizeof(PollerObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = poller_slots,
};

int
gf_poller_setup(PyObject *module, gf_state *st)
{
    st->poller_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &poller_spec, NULL);
    if (st->poller_type == NULL || PyModule_AddObjectRef(module, "Poller", (PyObject *)st->poller_type) < 0) {
        return -1;
    }
    if (PyModule_AddIntConstant(module, "READ", GF_READ) < 0 || PyModule_AddIntConstant(module, "WRITE", GF_WRITE) < 0) {
        return -1;
    }
    return 0;
}
