/* process.h — what is per process, not per channel: the fork generation, the exit interrupt of a pool's
 * workers, the signals pool threads block, and the PRNG of select.
 *
 * Invariants:
 *   - gf_fork_gen only grows, by one in each forked child (pthread_atfork): state stamped with an older
 *     generation belongs to threads that do not exist in this process.
 *   - A gf_interrupt's flag is set once and never cleared; every wait registered on it while parked is
 *     woken by gf_interrupt_fire (no polling).
 */
#ifndef GILFREE_PROCESS_H
#define GILFREE_PROCESS_H

#include "gilfree.h"
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>

typedef struct gf_sel gf_sel;

/* Bumped in a forked child (pthread_atfork), see gf_waiter.fork_gen. */
extern atomic_uint gf_fork_gen;
static inline unsigned
gf_fork_generation(void)
{
    return atomic_load_explicit(&gf_fork_gen, memory_order_relaxed);
}
/* Install the fork handler (once per process). */
void gf_park_install_fork_handler(void);

/* The exit interrupt of a pool: once fired, every wait in the pool's worker threads raises
 * gilfree.Cancelled. Parked workers are woken by gf_interrupt_fire itself (they do not poll): each wait
 * registers its gf_sel here while it is parked. Lock order: gf_interrupt.mu, then a gf_sel's mu. */
typedef struct gf_interrupt {
    atomic_int flag;        /* 1 once fired; never cleared */
    pthread_mutex_t mu;     /* guards `parked`; a leaf lock but for the gf_sel mu taken inside */
    gf_sel *parked;         /* gf_sels of waits parked now, linked through gf_sel.intr_next */
} gf_interrupt;

void gf_interrupt_init(gf_interrupt *in);
void gf_interrupt_fini(gf_interrupt *in);
/* Set the flag and wake every wait parked on it. Any thread, attached or not. */
void gf_interrupt_fire(gf_interrupt *in);
static inline int
gf_interrupt_fired(const gf_interrupt *in)
{
    return in != NULL && atomic_load_explicit(&in->flag, memory_order_acquire);
}

/* Pool worker threads register their pool's interrupt (NULL unregisters). */
void gf_set_thread_interrupt(gf_interrupt *in);
gf_interrupt *gf_current_thread_interrupt(void);

/* After fork, in the child (attached): the calling thread is now the main thread (its waits poll for
 * signals); a former pool worker gets its asynchronous signals unblocked and forgets its pool. */
void gf_park_after_fork_child(gf_state *st);

/* The asynchronous signals a pool worker blocks (Ctrl-C belongs to the main thread). SIGSEGV, SIGBUS,
 * SIGFPE, SIGILL, SIGABRT, SIGTRAP and SIGSYS stay deliverable, so faulthandler names a crashing thread. */
void gf_async_signal_set(sigset_t *set);

/* A fast PRNG (splitmix64) for select's random poll order. */
uint64_t gf_random(void);

#endif
