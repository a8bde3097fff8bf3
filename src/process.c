/* process.c — per-process state: fork generation, pool exit interrupts, blocked signals, PRNG (see
 * process.h). No Python objects; the after-fork hook is the only function that needs a thread state. */
#include "process.h"
#include "park.h"

#include <time.h>

/* ---- the exit interrupt of a pool's workers ------------------------------------------------------- */

static pthread_key_t interrupt_key;
static pthread_once_t interrupt_key_once = PTHREAD_ONCE_INIT;

static void
make_interrupt_key(void)
{
    (void)pthread_key_create(&interrupt_key, NULL);
}

void
gf_set_thread_interrupt(gf_interrupt *in)
{
    (void)pthread_once(&interrupt_key_once, make_interrupt_key);
    (void)pthread_setspecific(interrupt_key, in);
}

gf_interrupt *
gf_current_thread_interrupt(void)
{
    (void)pthread_once(&interrupt_key_once, make_interrupt_key);
    return (gf_interrupt *)pthread_getspecific(interrupt_key);
}

void
gf_interrupt_init(gf_interrupt *in)
{
    atomic_init(&in->flag, 0);
    pthread_mutex_init(&in->mu, NULL);
    in->parked = NULL;
}

void
gf_interrupt_fini(gf_interrupt *in)
{
    GF_ASSERT(in->parked == NULL);
    pthread_mutex_destroy(&in->mu);
}

/* gf_interrupt_fire is in park.c: it wakes gf_sels, whose locking is park.c's business. */

void
gf_async_signal_set(sigset_t *set)
{
    sigfillset(set);
    /* Synchronous signals are the crashing thread's own: they must reach faulthandler (or the default
     * action) in the thread that caused them. */
    sigdelset(set, SIGSEGV);
    sigdelset(set, SIGBUS);
    sigdelset(set, SIGFPE);
    sigdelset(set, SIGILL);
    sigdelset(set, SIGABRT);
    sigdelset(set, SIGTRAP);
    sigdelset(set, SIGSYS);
}

void
gf_park_after_fork_child(gf_state *st)
{
    gf_netpoll_after_fork_child();
    st->main_ident = PyThread_get_thread_ident();
    if (gf_current_thread_interrupt() != NULL) { /* a pool worker forked: it is the child's only thread */
        sigset_t set;
        gf_async_signal_set(&set);
        pthread_sigmask(SIG_UNBLOCK, &set, NULL);
        gf_set_thread_interrupt(NULL);
    }
}

/* ---- fork ------------------------------------------------------------------------------------- */

atomic_uint gf_fork_gen;

static void
gf_after_fork_in_child(void)
{
    atomic_fetch_add_explicit(&gf_fork_gen, 1, memory_order_relaxed);
}

static pthread_once_t fork_handler_once = PTHREAD_ONCE_INIT;

static void
install_fork_handler(void)
{
    (void)pthread_atfork(NULL, NULL, gf_after_fork_in_child);
}

void
gf_park_install_fork_handler(void)
{
    (void)pthread_once(&fork_handler_once, install_fork_handler);
}

/* ---- random ------------------------------------------------------------------------------------- */

/* splitmix64 over one shared atomic counter: no thread-local storage (whose dynamic allocation in a
 * dlopen'ed module trips sanitizers), one atomic add per multi-case select, good statistical quality. */
static atomic_uint_fast64_t random_state;

uint64_t
gf_random(void)
{
    uint64_t z = atomic_fetch_add_explicit(&random_state, 0x9E3779B97F4A7C15ull, memory_order_relaxed);
    if (z == 0) { /* first use: seed from the clock so runs differ */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t seed = ((uint64_t)ts.tv_nsec << 32) ^ (uint64_t)ts.tv_sec ^ 0x9E3779B97F4A7C15ull;
        uint_fast64_t expected = 0x9E3779B97F4A7C15ull;
        (void)atomic_compare_exchange_strong(&random_state, &expected, seed);
        z = seed;
    }
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
