/* parallel.h — parallel_for: a C kernel over [0, n) in chunks that the pool's threads take dynamically.
 *
 * A gf_job is shared by the caller and the helpers it posts to a pool (refs). Every participant loops:
 * take the next chunk index with one atomic fetch-add, run the kernel on it, with no Python thread state
 * attached. A nonzero return stops the hand-out (the first failure is kept with its range); so does a
 * Ctrl-C seen by the waiting caller, and so does interpreter exit (gf_parallel_stop_all). The caller
 * returns once every chunk was handed out (or the hand-out stopped) and no participant is inside a chunk:
 * a helper that starts later finds nothing to do, never touches the caller's data, and only drops its
 * reference.
 *
 * Chunks are numbered, not addressed: chunk k is [k * grain, min((k + 1) * grain, n)), k < nchunks, and the
 * counter handing them out is unsigned 64-bit, so no arithmetic here can overflow for any n, grain in
 * [1, INT64_MAX]: a kernel only ever sees 0 <= begin < end <= n, each index exactly once.
 */
#ifndef GILFREE_PARALLEL_H
#define GILFREE_PARALLEL_H

#include "gilfree.h"
#include "park.h"

#include <stdint.h>

typedef int (*gf_kernel_fn)(int64_t begin, int64_t end, void *arg);

/* What a built-in kernel returns when it saw the stop flag and gave up part-way (not an error). */
#define GF_KERNEL_STOPPED (-0x7ffffff0)

typedef struct gf_job {
    atomic_int refs;            /* the caller + one per posted helper */
    gf_kernel_fn fn;
    void *arg;
    int64_t n, grain;
    uint64_t nchunks;           /* ceil(n / grain) */
    atomic_ullong next;         /* index of the next chunk to hand out; only grows, by fetch-add */
    atomic_int stop;            /* 1: hand out no more chunks (built-in kernels also poll it) */
    atomic_int cancelled;       /* 1: stopped by interpreter exit */
    pthread_mutex_t mu;         /* guards active and err_*; a leaf lock */
    pthread_cond_t cv;          /* signalled when active drops; CLOCK_MONOTONIC */
    int active;                 /* participants inside gf_job_work */
    int err_code;               /* first nonzero kernel return, 0 if none */
    int64_t err_begin, err_end; /* its chunk */
    struct gf_job *live_prev, *live_next; /* the registry of running jobs (exit stops them) */
} gf_job;

/* A participant's part: run chunks until none are left, or `max_chunks` of them (< 0: no limit).
 * Detached (no thread state attached). */
void gf_job_work(gf_job *j, int64_t max_chunks);
void gf_job_decref(gf_job *j);

/* pool.c: post `count` helper tasks for j to the pool (each takes a reference). Returns how many were
 * posted (fewer if the pool is shut down). Attached. */
int gf_pool_post_helpers(PyObject *pool, gf_job *j, int count);
/* 1 if the pool no longer runs tasks (shut down, broken, or forked away). */
int gf_pool_stopped(PyObject *pool);
/* The pool's number of worker threads. */
int gf_pool_max_workers(PyObject *pool);

int gf_parallel_setup(PyObject *module, gf_state *st);
int gf_kernels_setup(PyObject *module, gf_state *st);

/* Run fn over [0, n) on the pool, with at most `workers` participants (capped at the pool's size) and
 * chunks of `grain` (0: about 8 chunks per worker). GIL released while waiting; KernelError /
 * KeyboardInterrupt / gilfree.Cancelled (interpreter exit) as the contract says. A built-in kernel passes
 * `stop_out`: it receives the job's stop flag, which the kernel polls in its inner loops so that Ctrl-C
 * and exit stop it within milliseconds (it then returns GF_KERNEL_STOPPED). 0 or -1. */
int gf_parallel_run(gf_state *st, PyObject *pool, int64_t n, gf_kernel_fn fn, void *arg, int workers,
                    int64_t grain, const atomic_int **stop_out);

/* Interpreter exit: stop the hand-out of every running job, and of every job started from now on. */
void gf_parallel_stop_all(void);

#endif
