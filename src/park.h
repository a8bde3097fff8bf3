/* park.h — the one blocking primitive of gilfree, and the waiter queues channels keep.
 *
 * A blocking operation (one recv, one send, or one select over many cases) owns one gf_sel: the token
 * every channel it waits on can fire. It puts one gf_waiter per case on the channels' queues, then
 * parks. Whoever completes the operation (a peer send/recv, or close) claims the gf_sel with one
 * compare-and-swap PENDING -> FIRED, so exactly one case ever fires, as in Go's selectDone. The owner
 * that gives up (timeout, Ctrl-C, asyncio cancellation) claims it PENDING -> WITHDRAWN instead; the loser
 * of that race knows at once who won.
 *
 * Invariants:
 *   - state leaves PENDING once, and only by a CAS.
 *   - fired/closed/result are written by the completer before `signaled` is set (release), and read by the
 *     owner only after it observed `signaled` (acquire).
 *   - A thread owner never returns while a completer may still touch its gf_sel: it waits for `signaled`
 *     under `mu`, and the completer sets it under `mu` and never touches the gf_sel after unlocking.
 *   - Waiter queues are changed only under their channel's lock, by a thread with an attached thread state
 *     (so the GC, which runs attached, sees them consistent); `linked` says whether a waiter is queued.
 *
 * Example usage (the engine in engine.c does this):
 *     gf_sel s; gf_sel_init(&s);
 *     ... lock channel(s), enqueue waiters pointing at &s, unlock ...
 *     Py_BEGIN_ALLOW_THREADS  r = gf_park(&s, &deadline, is_main);  Py_END_ALLOW_THREADS
 *     ... on GF_PARK_TIMEOUT: if gf_sel_withdraw(&s) fails, gf_park_until_signaled(&s): it fired ...
 *     gf_sel_fini(&s);
 */
#ifndef GILFREE_PARK_H
#define GILFREE_PARK_H

#include "gilfree.h"
#include "process.h"
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

/* A pause inside a spin loop (lets the sibling hyperthread run). */
#if defined(__x86_64__) || defined(__i386__)
#  include <immintrin.h>
#  define gf_cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#  define gf_cpu_relax() __asm__ __volatile__("yield")
#else
#  define gf_cpu_relax() ((void)0)
#endif

/* How long a blocked main thread sleeps at most between two checks for signals (Ctrl-C within 100 ms). */
#define GF_SIGNAL_POLL_NS (50 * 1000 * 1000)

/* How long a waiter spins (GIL released) before it sleeps on its condition variable. A peer thread that
 * is running usually answers a rendezvous within a few microseconds, while a sleep and wake-up through the
 * kernel costs tens of microseconds (more in a VM). Short enough that a lone waiter burns almost nothing. */
#ifndef GF_SPIN_NS
#define GF_SPIN_NS (20 * 1000)
#endif

enum { GF_PENDING = 0, GF_FIRED = 1, GF_WITHDRAWN = 2 };

struct ChannelObject;

/* One case of one blocking operation, queued on one channel. */
typedef struct gf_waiter {
    struct gf_waiter *next, *prev;  /* queue links; valid while linked */
    gf_sel *sel;                    /* the operation this case belongs to */
    struct ChannelObject *chan;     /* the channel whose queue it is on (borrowed: the owner holds it) */
    PyObject *value;                /* send case: the owned value to hand over; NULL once taken */
    int index;                      /* the case's position in the select (0 for send/recv) */
    int linked;                     /* 1 while on chan's queue; changed only under chan's lock */
    unsigned fork_gen;              /* gf_fork_generation() when queued: a forked child skips its
                                       parent's waiters, whose threads do not exist there */
} gf_waiter;

typedef struct gf_waitq {
    gf_waiter *head, *tail;
} gf_waitq;

struct gf_sel {
    atomic_int state;      /* GF_PENDING -> GF_FIRED | GF_WITHDRAWN, once, by CAS */
    atomic_int signaled;   /* 1 once the completer has published fired/closed/result */
    int fired;             /* index of the case that fired */
    int closed;            /* it fired because its channel was closed */
    PyObject *result;      /* value received by a recv case (owned), else NULL */
    PyObject *notify;      /* async owner: callable run (attached, no lock held) after firing; else NULL */
    atomic_int refs;       /* async owner: the owner's reference plus one per completer still waking it;
                              the last gf_sel_decref frees it (an async gf_sel lives on the heap) */
    void (*on_free)(gf_sel *);  /* async owner: releases the owner's extra fields, then frees */
    gf_sel *wake_next;     /* link in a completer's gf_wakelist */
    int sleeping;          /* owner is in pthread_cond_*wait; guarded by mu */
    int sync_init;         /* mu/cv initialised (thread owners only) */
    gf_sel *intr_next;     /* link in a gf_interrupt's parked list (thread owners only) */
    pthread_mutex_t mu;    /* guards sleeping and the signaled handshake; a leaf lock */
    pthread_cond_t cv;     /* on CLOCK_MONOTONIC */
    /* A select with fd cases (netpoll.c) parks in poll(2) instead of on cv: pfds has npfds fd entries and
     * one more for wake_fd, the owner thread's eventfd, which a completer writes after signaling. */
    struct pollfd *pfds;   /* NULL: park on cv */
    int npfds;
    int wake_fd;           /* -1 unless pfds; changed (remade) only by the owner, under mu */
    int park_errno;        /* the errno of a failed poll (GF_PARK_ERROR) */
};

/* Operations fired while a channel lock was held, woken once it is released. Linked through the gf_sels
 * themselves, so firing never allocates: a thread owner's gf_sel stays valid until it is signaled, an async
 * one holds a reference for the list (gf_sel.refs). */
typedef struct gf_wakelist {
    gf_sel *head;
} gf_wakelist;

typedef struct gf_deadline {
    int infinite;
    struct timespec at;  /* CLOCK_MONOTONIC */
} gf_deadline;

/* GF_PARK_ERROR: (fd cases) poll(2) failed with s->park_errno; the caller raises it. */
enum { GF_PARK_OK = 0, GF_PARK_TIMEOUT = 1, GF_PARK_CHECK_SIGNALS = 2, GF_PARK_FD_READY = 3, GF_PARK_ERROR = 4 };

/* --- clock ------------------------------------------------------------------------------------------ */

/* Parse a timeout argument (None, int or float seconds) into a deadline. Raises ValueError for a negative
 * or NaN value, TypeError for a non-number; `name` is the argument's name in messages. -1 on error. */
int gf_deadline_from_timeout(PyObject *timeout, gf_deadline *out, const char *name);
int gf_deadline_passed(const gf_deadline *d);
/* *ts = CLOCK_MONOTONIC now + ns. */
void gf_monotonic_after(struct timespec *ts, int64_t ns);
/* A condition variable whose timed waits use CLOCK_MONOTONIC. 0 or an errno. */
int gf_cond_init_monotonic(pthread_cond_t *cv);

/* --- gf_sel ----------------------------------------------------------------------------------------- */

/* A thread owner's gf_sel, usually on its stack. -1 with an exception set on failure. */
int gf_sel_init(gf_sel *s);
void gf_sel_fini(gf_sel *s);

/* An async owner's gf_sel: heap allocated with `size` bytes (>= sizeof(gf_sel)), holding a new reference to
 * `notify`, refs = 1 (the owner's). on_free runs (attached) when the last reference goes. NULL on error. */
gf_sel *gf_sel_new_async(size_t size, PyObject *notify, void (*on_free)(gf_sel *));
/* Drop a reference to an async gf_sel. Attached; no internal lock held. */
void gf_sel_decref(gf_sel *s);

/* Owner gives up: 1 if it won (nobody will fire it now), 0 if it had already fired. */
static inline int
gf_sel_withdraw(gf_sel *s)
{
    int expected = GF_PENDING;
    return atomic_compare_exchange_strong(&s->state, &expected, GF_WITHDRAWN);
}

/* Completer, under the channel lock: claim the operation. 1 if claimed. */
static inline int
gf_sel_claim(gf_sel *s)
{
    int expected = GF_PENDING;
    return atomic_compare_exchange_strong(&s->state, &expected, GF_FIRED);
}

/* Completer, under the channel lock, after a successful claim: publish the outcome and schedule the
 * wake-up for when the lock is released. `result` (owned) moves into the gf_sel. Never fails, never
 * allocates, calls no Python. */
void gf_sel_fire(gf_sel *s, int index, int closed, PyObject *result, gf_wakelist *wl);

/* Park, detached (GIL released), until fired, the deadline passes, or (main thread only) it is time to
 * check for signals; with fd cases (s->pfds), also until an fd is ready (GF_PARK_FD_READY). */
int gf_park(gf_sel *s, const gf_deadline *d, int is_main, const gf_interrupt *in);

/* netpoll.c: the poll(2) park of a select with fd cases, the calling thread's eventfd (-1 with an
 * exception set on failure), and a wake-up write to one. */
struct pollfd;
int gf_netpoll_park(gf_sel *s, const gf_deadline *d, int is_main, const gf_interrupt *in);
int gf_netpoll_thread_eventfd(void);
void gf_netpoll_wake(int fd);
void gf_netpoll_after_fork_child(void);
/* Attached: -1 with OSError (naming RLIMIT_NOFILE and how to raise it) if poll(2) cannot take nfd fd cases
 * (plus the eventfd when the select may park); else 0. */
int gf_netpoll_check_count(int nfd, int block);
/* Wait, detached, for a claim that already happened to be published. Short: the completer is running. */
void gf_park_until_signaled(gf_sel *s);

/* The wait every blocking call makes, attached, after queueing its waiters on the gf_sel: park with the GIL
 * released until fired, the deadline passes, or (main thread, or a pool worker whose pool is being torn
 * down at exit: polled every GF_SIGNAL_POLL_NS) a signal handler raises / the exit interrupt is set. On
 * GF_WAIT_TIMED_OUT and GF_WAIT_RAISED the gf_sel was withdrawn (nothing happened; RAISED leaves the
 * exception set). If a completer won the race against a signal handler's exception, the outcome is kept
 * (GF_WAIT_FIRED) and the exception is raised again at the interpreter's next check. */
enum { GF_WAIT_FIRED = 0, GF_WAIT_TIMED_OUT = 1, GF_WAIT_RAISED = 2, GF_WAIT_FIRED_RAISED = 3 };
/* GF_WAIT_FD: (a select with fd cases) poll reported an fd ready and the owner claimed its own gf_sel:
 * no channel case fired; the caller picks the fd case from s->pfds. */
enum { GF_WAIT_FD = 4 };
int gf_wait(gf_state *st, gf_sel *s, const gf_deadline *d);
/* gf_wait, but with keep_exception a main-thread wait that fired although a signal handler raised returns
 * GF_WAIT_FIRED_RAISED with the exception still set: the caller either undoes the outcome (a receive puts
 * its value back) and raises, or calls gf_defer_current_exception() and keeps it. */
int gf_wait_ex(gf_state *st, gf_sel *s, const gf_deadline *d, int keep_exception);
/* Main thread: have the exception being raised raised again at the interpreter's next check (a pending
 * call), and clear it now. */
void gf_defer_current_exception(void);



/* --- wake list ------------------------------------------------------------------------------------- */

static inline void
gf_wakelist_init(gf_wakelist *wl)
{
    wl->head = NULL;
}

/* Wake everything on the list. Call with no internal lock held and a thread state attached: it runs the
 * async notify callables (their exceptions are reported as unraisable and never propagate). */
void gf_wakelist_run(gf_wakelist *wl);

/* --- waiter queues (changed only under the owning channel's lock) ---------------------------------- */



static inline void
gf_waitq_push(gf_waitq *q, gf_waiter *w)
{
    GF_ASSERT(!w->linked);
    w->fork_gen = gf_fork_generation();
    w->next = NULL;
    w->prev = q->tail;
    if (q->tail) {
        q->tail->next = w;
    }
    else {
        q->head = w;
    }
    q->tail = w;
    w->linked = 1;
}

static inline void
gf_waitq_unlink(gf_waitq *q, gf_waiter *w)
{
    if (!w->linked) {
        return;
    }
    if (w->prev) {
        w->prev->next = w->next;
    }
    else {
        q->head = w->next;
    }
    if (w->next) {
        w->next->prev = w->prev;
    }
    else {
        q->tail = w->prev;
    }
    w->next = w->prev = NULL;
    w->linked = 0;
}

/* First waiter whose operation this caller manages to claim, unlinked; NULL if none. Waiters of
 * operations already fired elsewhere or withdrawn are unlinked on the way (their owners see linked == 0). */
static inline gf_waiter *
gf_waitq_claim_first(gf_waitq *q)
{
    gf_waiter *w;
    unsigned gen = gf_fork_generation();
    while ((w = q->head) != NULL) {
        gf_waitq_unlink(q, w);
        if (w->fork_gen == gen && gf_sel_claim(w->sel)) {
            return w;
        }
    }
    return NULL;
}

/* The one way a completer serves a queue: claim the first waiter it can, fire its operation (as case
 * w->index, with `closed` and the owned `result`, which moves in only if a waiter was fired) and put it on
 * the wake list. Returns the waiter (still valid until the lock is released: a send case's w->value can
 * be taken), or NULL if none was waiting. Under the queue owner's lock. */
static inline gf_waiter *
gf_waitq_fire_first(gf_waitq *q, int closed, PyObject *result, gf_wakelist *wl)
{
    gf_waiter *w = gf_waitq_claim_first(q);
    if (w != NULL) {
        gf_sel_fire(w->sel, w->index, closed, result, wl);
    }
    return w;
}



#endif
