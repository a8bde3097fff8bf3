/* engine.c — the parked path: the engine every blocking channel operation runs (send, recv, and select,
 * which is one operation over many cases). channel.c and select.c call it; it calls the core operations
 * of chancore.c and the park of park.c, and nothing calls back.
 *
 * The engine follows Go's selectgo in numbered passes:
 *   1. Lock every channel named by a case, in address order (so two selects naming the same channels in
 *      opposite orders cannot deadlock), and poll the cases in a random order: the first that can proceed
 *      does, so among several ready cases each is chosen with equal probability.
 *   2. Nothing ready and the caller may block: queue one waiter per case, all pointing at one gf_sel, and
 *      unlock. Park with the GIL released until a peer fires the gf_sel (exactly one case wins the CAS), the
 *      deadline passes, or, on the main thread, a signal handler raises (checked every 50 ms).
 *   3. Lock the channels again and unlink the waiters still queued (the losers). A lone waiter that fired
 *      was already unlinked by its completer: no second locking.
 * A timeout or an exception withdraws the gf_sel first; if a completer won that race the operation
 * happened, so its outcome is kept, and the signal handler's exception is raised right after, through a
 * pending call: a value taken is never dropped.
 *
 * fd cases (readable(f)/writable(f), see netpoll.c) are polled with poll(2) in pass 1 next to the channel
 * cases, and a select that has them parks in poll(2) on its fds and its thread's eventfd (gf_sel.pfds).
 *
 * Invariants:
 *   - Send values are owned references that move, never copy: into a channel or a receiver on success, back
 *     to the engine (which releases them) otherwise.
 *   - No lock is held while Python runs: wake-ups and releases happen after unlocking.
 */
#include "channel.h"

#include <errno.h>
#include <poll.h>


/* ---- locking several channels ------------------------------------------------------------------- */

typedef struct {
    uintptr_t ch;
    int index;
} order_key;

static int
order_key_cmp(const void *a, const void *b)
{
    const order_key *x = a, *y = b;
    return x->ch < y->ch ? -1 : x->ch > y->ch ? 1 : x->index - y->index;
}

/* Fill order[] with the indices of distinct channels, sorted by address (qsort: O(n log n), as Go's
 * sellock sorts with heapsort). `keys` has room for n. Returns their number. */
static int
lock_order(gf_case *cases, int n, int *order, order_key *keys)
{
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (cases[i].ch != NULL) {
            keys[k].ch = (uintptr_t)cases[i].ch;
            keys[k].index = i;
            k++;
        }
    }
    qsort(keys, (size_t)k, sizeof(order_key), order_key_cmp);
    int m = 0;
    for (int j = 0; j < k; j++) {
        if (j == 0 || keys[j].ch != keys[j - 1].ch) {
            order[m++] = keys[j].index;
        }
    }
    return m;
}

static void
lock_all(gf_case *cases, const int *order, int m)
{
    for (int k = 0; k < m; k++) {
        gf_chan_lock(cases[order[k]].ch);
    }
}

static void
unlock_all(gf_case *cases, const int *order, int m)
{
    for (int k = m - 1; k >= 0; k--) {
        gf_chan_unlock(cases[order[k]].ch);
    }
}

/* ---- the engine --------------------------------------------------------------------------------- */

/* A uniform integer in [0, bound) from a PRNG local to one engine run (splitmix64, seeded with one draw of
 * the process's gf_random): the shuffle of n cases then costs no atomic operation and no division per case
 * (Lemire's multiply-shift; its bias is below 2**-32 for the bounds used here). */
static inline uint32_t
local_below(uint64_t *state, uint32_t bound)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (uint32_t)(((z >> 32) * (uint64_t)bound) >> 32);
}

/* poll(2) the fd cases with a zero timeout. It never blocks, but with many fds the kernel's walk over them
 * takes microseconds (about 40 ns per socket): from GF_POLL_DETACH_FDS fds on, other threads run Python
 * meanwhile. -1 with OSError. */
#define GF_POLL_DETACH_FDS 64
static int
poll_fds_now(struct pollfd *pfds, int nfd)
{
    int rc;
    if (nfd >= GF_POLL_DETACH_FDS) {
        Py_BEGIN_ALLOW_THREADS
        do {
            rc = poll(pfds, (nfds_t)nfd, 0);
        } while (rc < 0 && errno == EINTR);
        Py_END_ALLOW_THREADS
    }
    else {
        do {
            rc = poll(pfds, (nfds_t)nfd, 0);
        } while (rc < 0 && errno == EINTR);
    }
    if (rc < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return rc;
}

int
gf_engine_run(gf_state *st, gf_case *cases, int n, int block, const gf_deadline *d, gf_outcome *out)
{
    int pollbuf[GF_SMALL_SELECT], orderbuf[GF_SMALL_SELECT];
    order_key keybuf[GF_SMALL_SELECT];
    gf_waiter waitbuf[GF_SMALL_SELECT];
    int *poll = pollbuf, *order = orderbuf;
    order_key *keys = keybuf;
    gf_waiter *ws = waitbuf;
    struct pollfd pfdbuf[GF_SMALL_SELECT + 1];
    int pfdcasebuf[GF_SMALL_SELECT], caseslotbuf[GF_SMALL_SELECT];
    struct pollfd *pfds = pfdbuf;  /* one per fd case, in case order, plus one for the eventfd */
    int *pfdcase = pfdcasebuf;     /* pfds[j] belongs to case pfdcase[j] */
    int *caseslot = caseslotbuf;   /* case i's entry in pfds, or -1 */
    int ret = -1, sel_ready = 0, nactive = 0, nfd = 0;
    gf_sel sel;
    gf_wakelist wl;
    gf_wakelist_init(&wl);
    out->index = -1;
    out->closed = 0;
    out->value = NULL;

    if (n > GF_SMALL_SELECT) {
        poll = PyMem_Malloc((size_t)n * sizeof(int));
        order = PyMem_Malloc((size_t)n * sizeof(int));
        ws = PyMem_Malloc((size_t)n * sizeof(gf_waiter));
        keys = PyMem_Malloc((size_t)n * sizeof(order_key));
        pfds = PyMem_Malloc((size_t)(n + 1) * sizeof(struct pollfd));
        pfdcase = PyMem_Malloc((size_t)n * sizeof(int));
        caseslot = PyMem_Malloc((size_t)n * sizeof(int));
        if (poll == NULL || order == NULL || ws == NULL || keys == NULL || pfds == NULL || pfdcase == NULL ||
            caseslot == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    for (int i = 0; i < n; i++) {
        poll[i] = i;
        nactive += cases[i].ch != NULL;
        caseslot[i] = -1;
        if (cases[i].fileobj != NULL) {
            pfds[nfd].fd = cases[i].fd;
            pfds[nfd].events = cases[i].events;
            pfds[nfd].revents = 0;
            pfdcase[nfd] = i;
            caseslot[i] = nfd++;
        }
    }
    if (nfd > 0 && gf_netpoll_check_count(nfd, block) < 0) {
        goto done;
    }
    uint64_t rng = gf_random();
    for (int i = n - 1; i > 0; i--) { /* Fisher-Yates */
        int j = (int)local_below(&rng, (uint32_t)(i + 1));
        int t = poll[i];
        poll[i] = poll[j];
        poll[j] = t;
    }
    int m = lock_order(cases, n, order, keys);

    /* Pass 1: poll. Repeated once if we had to unlock to prepare the gf_sel for parking. */
    for (;;) {
        int fired = -1, closed = 0, nomem = 0;
        PyObject *got = NULL;
        if (nfd > 0 && !sel_ready && poll_fds_now(pfds, nfd) < 0) {
            goto done; /* (not again on the repeat: the park's poll sees what became ready since) */
        }
        lock_all(cases, order, m);
        for (int k = 0; k < n && fired < 0 && !nomem; k++) {
            gf_case *c = &cases[poll[k]];
            int r;
            if (caseslot[poll[k]] >= 0) {
                if (pfds[caseslot[poll[k]]].revents) {
                    fired = poll[k];
                }
                continue;
            }
            if (c->ch == NULL) {
                continue;
            }
            if (c->is_send) {
                r = gf_chan_try_send(c->ch, c->value, &wl);
                if (r == GF_OK) {
                    c->value = NULL;
                }
            }
            else {
                r = gf_chan_try_recv(c->ch, &got, &wl);
            }
            if (r == GF_OK || r == GF_CLOSED) {
                fired = poll[k];
                closed = r == GF_CLOSED;
            }
            nomem = r == GF_NOMEM;
        }
        int timed_out = fired < 0 && block && gf_deadline_passed(d);
        if (fired >= 0 || nomem || !block || timed_out) {
            unlock_all(cases, order, m);
            gf_wakelist_run(&wl);
            if (nomem) {
                PyErr_NoMemory();
            }
            else if (fired >= 0 && caseslot[fired] >= 0 && (pfds[caseslot[fired]].revents & POLLNVAL)) {
                errno = EBADF; /* the descriptor is not open */
                PyErr_SetFromErrno(PyExc_OSError);
            }
            else if (fired >= 0) {
                out->index = fired;
                out->closed = closed;
                out->value = got;
                ret = GF_OK;
            }
            else if (!block) {
                ret = GF_WOULDBLOCK;
            }
            else {
                PyErr_SetString(PyExc_TimeoutError, "timed out");
            }
            goto done;
        }
        if (sel_ready) {
            break; /* still locked: go on to pass 2 */
        }
        unlock_all(cases, order, m);
        if (gf_sel_init(&sel) < 0) {
            goto done;
        }
        sel_ready = 1;
        if (nfd > 0) {
            int efd = gf_netpoll_thread_eventfd();
            if (efd < 0) {
                goto done;
            }
            sel.pfds = pfds;
            sel.npfds = nfd;
            sel.wake_fd = efd;
        }
    }

    /* Pass 2: queue a waiter per case (channels still locked), unlock, park. In the random poll order: when
     * several cases wait on one channel (select(c.recv, c.recv)), the one queued first is served first, so
     * this order is what makes a parked select choose uniformly too. */
    for (int k = 0; k < n; k++) {
        int i = poll[k];
        gf_case *c = &cases[i];
        if (c->ch == NULL) {
            continue;
        }
        gf_waiter *w = &ws[i];
        w->sel = &sel;
        w->chan = c->ch;
        w->index = i;
        w->value = c->value; /* moves into the waiter */
        c->value = NULL;
        w->linked = 0;
        gf_waitq_push(c->is_send ? &c->ch->sendq : &c->ch->recvq, w);
        /* A bounded channel's lock-free operations must see the waiter, and one that made this case ready
         * just before must not be missed: then the case fires here (see ring.h). */
        gf_chan_after_queue(c->ch, w, c->is_send, &wl);
    }
    unlock_all(cases, order, m);
    gf_wakelist_run(&wl); /* our own operation, if it fired above */

    int w = gf_wait_ex(st, &sel, d, 1);
    enum { FIRED, TIMED_OUT, RAISED, FD } outcome = w == GF_WAIT_FIRED || w == GF_WAIT_FIRED_RAISED ? FIRED
                                                  : w == GF_WAIT_TIMED_OUT ? TIMED_OUT
                                                  : w == GF_WAIT_FD ? FD : RAISED;

    /* Pass 3: unlink the waiters still queued, and take back the values not sent. */
    if (outcome != FIRED || nactive > 1) {
        lock_all(cases, order, m);
        for (int i = 0; i < n; i++) {
            if (cases[i].ch != NULL) {
                gf_waitq_unlink(cases[i].is_send ? &cases[i].ch->sendq : &cases[i].ch->recvq, &ws[i]);
            }
        }
        unlock_all(cases, order, m);
    }
    for (int i = 0; i < n; i++) {
        if (cases[i].ch != NULL && ws[i].value != NULL) {
            cases[i].value = ws[i].value; /* released below, with the lock free */
            ws[i].value = NULL;
        }
    }
    if (outcome == FIRED && w == GF_WAIT_FIRED_RAISED) {
        /* A signal handler raised (Ctrl-C) as a peer completed us. A received value goes back in front of
         * its channel and the exception is raised: the call took nothing, so a batch or a value can never
         * be lost between the call and its caller. A send cannot be undone: it is kept, and the exception
         * raised right after the call returns. */
        gf_case *c = &cases[sel.fired];
        if (!c->is_send && !sel.closed && sel.result != NULL && gf_chan_put_back(c->ch, sel.result) == 0) {
            sel.result = NULL;
            outcome = RAISED;
        }
        else {
            gf_defer_current_exception();
        }
    }
    if (outcome == FIRED) {
        out->index = sel.fired;
        out->closed = sel.closed;
        out->value = sel.result;
        ret = GF_OK;
    }
    else if (outcome == TIMED_OUT) {
        PyErr_SetString(PyExc_TimeoutError, "timed out");
    }
    else if (outcome == FD) {
        /* Among the fds poll reported ready, one chosen uniformly (reservoir sampling). */
        int pick = -1, seen = 0;
        for (int j = 0; j < nfd; j++) {
            if (pfds[j].revents && local_below(&rng, (uint32_t)++seen) == 0) {
                pick = j;
            }
        }
        GF_ASSERT(pick >= 0);
        if (pfds[pick].revents & POLLNVAL) {
            errno = EBADF; /* closed while we waited (reported at the next 50 ms poll slice) */
            PyErr_SetFromErrno(PyExc_OSError);
        }
        else {
            out->index = pfdcase[pick];
            ret = GF_OK;
        }
    }
    /* RAISED: gf_wait left the exception set */

done:
    if (sel_ready) {
        gf_sel_fini(&sel);
    }
    for (int i = 0; i < n; i++) {
        Py_CLEAR(cases[i].value);
    }
    if (poll != pollbuf) {
        PyMem_Free(poll);
        PyMem_Free(order);
        PyMem_Free(ws);
        PyMem_Free(keys);
        PyMem_Free(pfds);
        PyMem_Free(pfdcase);
        PyMem_Free(caseslot);
    }
    return ret;
}

