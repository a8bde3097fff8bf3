/* parallel.h — parallel_for: a C kernel over [0, n) in chunks that the pool's threads take dynamically.
 *
 * A gf_job is shared by the caller and the helpers it posts to a pool (refs). Every participant loops:
 * take the next chunk with one atomic fetch-add, run the kernel on it, with no Python thread state
 * attached. A nonzero return stops the hand-out (the first failure is kept with its range); so does a
 * Ctrl-C seen by the waiting caller. The caller returns once every chunk was handed out (or the hand-out
 * stopped) and no participant is inside a chunk: a helper that starts later finds nothing to do, never
 * touches the caller's data, and only drops its reference.
 */
#ifndef GILFREE_PARALLEL_H
#define GILFREE_PARALLEL_H

#include "gilfree.h"
#include "park.h"

#include <stdint.h>

typedef int (*gf_kernel_fn)(int64_t begin, int64_t end, void *arg);

typedef struct gf_job {
    atomic_int refs;            /* the caller + one per posted helper */
    gf_kernel_fn fn;
    void *arg;
    int64_t n, grain;
    atomic_llong next;          /* start of the next chunk to hand out */
    atomic_int stop;            /* 1: hand out no more chunks */
    pthread_mutex_t mu;         /* guards active and err_*; a leaf lock */
    pthread_cond_t cv;          /* signalled when active drops; CLOCK_MONOTONIC */
    int active;                 /* participants inside gf_job_work */
    int err_code;               /* first nonzero kernel return, 0 if none */
    int64_t err_begin, err_end; /* its chunk */
} gf_job;

/* A helper's whole part: run chunks until none are left. Detached (no thread state attached). */
void gf_job_work(gf_job *j);
void gf_job_decref(gf_job *j);

/* pool.c: post `count` helper tasks for j to the pool (each takes a reference). Returns how many were
 * posted (fewer if the pool is shut down). Attached. */
int gf_pool_post_helpers(PyObject *pool, gf_job *j, int count);
/* 1 if the pool no longer runs tasks (shut down, broken, or forked away). */
int gf_pool_stopped(PyObject *pool);

int gf_parallel_setup(PyObject *module, gf_state *st);
int gf_kernels_setup(PyObject *module, gf_state *st);

/* Run fn over [0, n) on the pool, with `workers` participants and chunks of `grain` (0: about 8 chunks per
 * worker). GIL released while waiting; KernelError / KeyboardInterrupt as the contract says. 0 or -1. */
int gf_parallel_run(gf_state *st, PyObject *pool, int64_t n, gf_kernel_fn fn, void *arg, int workers,
                    int64_t grain);

#endif
