/* kernels.c — gilfree.kernels: built-in native kernels, each run by parallel_for on the pool with the
 * GIL released for the whole run. Each has a pure-Python twin in gilfree.reference with the same
 * signature; the tests compare the two.
 *
 * Invariants: a kernel touches only its argument struct and the memory it names (never a PyObject);
 * chunking never changes a result: per-chunk partial results are combined in chunk order, and the Monte
 * Carlo streams are per fixed-size block, so any worker count gives the same answer.
 */
#include "parallel.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- count_primes ----------------------------------------------------------------------------------- */

/* Built-in kernels poll the job's stop flag (Ctrl-C, exit, another chunk's failure) this often, in
 * inner-loop iterations: a few hundred microseconds of work at most between two looks. */
#define STOP_POLL 4096

static inline int
stopped(const atomic_int *stop)
{
    return atomic_load_explicit(stop, memory_order_relaxed) != 0;
}

typedef struct {
    const atomic_int *stop;
    int64_t lo; /* >= 0: the entry point clamps it (no negative number is prime) */
    atomic_llong count;
} primes_arg;

/* 1 prime, 0 not, -1 stopped part-way. d <= x / d: d * d would overflow near INT64_MAX. */
static int
is_prime(int64_t x, const atomic_int *stop)
{
    if (x < 2) {
        return 0;
    }
    if (x < 4) {
        return 1;
    }
    if (x % 2 == 0) {
        return 0;
    }
    unsigned n = 0;
    for (int64_t d = 3; d <= x / d; d += 2) {
        if (x % d == 0) {
            return 0;
        }
        if (++n % STOP_POLL == 0 && stopped(stop)) {
            return -1;
        }
    }
    return 1;
}

static int
primes_kernel(int64_t begin, int64_t end, void *argp)
{
    primes_arg *a = argp;
    long long c = 0;
    for (int64_t i = begin; i < end; i++) {
        int p = is_prime(a->lo + i, a->stop);
        if (p < 0 || ((i & (STOP_POLL - 1)) == 0 && stopped(a->stop))) {
            return GF_KERNEL_STOPPED;
        }
        c += p;
    }
    atomic_fetch_add(&a->count, c);
    return 0;
}

/* ---- mandelbrot ------------------------------------------------------------------------------------- */

typedef struct {
    const atomic_int *stop;
    int64_t width, height;
    int max_iter;
    double x, y, w, h;
    uint16_t *out;
} mandel_arg;

static int
mandel_kernel(int64_t begin, int64_t end, void *argp)
{
    mandel_arg *a = argp;
    for (int64_t row = begin; row < end; row++) {
        if (stopped(a->stop)) {
            return GF_KERNEL_STOPPED;
        }
        double ci = a->y + a->h * (double)row / (double)a->height;
        uint16_t *line = a->out + row * a->width;
        for (int64_t col = 0; col < a->width; col++) {
            if ((col & (STOP_POLL - 1)) == STOP_POLL - 1 && stopped(a->stop)) {
                return GF_KERNEL_STOPPED;
            }
            double cr = a->x + a->w * (double)col / (double)a->width;
            double zr = 0.0, zi = 0.0;
            int it = 0;
            while (it < a->max_iter && zr * zr + zi * zi <= 4.0) {
                double t = zr * zr - zi * zi + cr;
                zi = 2.0 * zr * zi + ci;
                zr = t;
                it++;
            }
            line[col] = (uint16_t)it;
        }
    }
    return 0;
}

/* ---- monte_carlo_pi --------------------------------------------------------------------------------- */

#define MC_BLOCK 65536 /* samples per RNG stream: fixed, so the result never depends on the workers */

typedef struct {
    const atomic_int *stop;
    int64_t samples;
    uint64_t seed;
    atomic_llong hits;
} mc_arg;

static inline uint64_t
splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int
mc_kernel(int64_t begin, int64_t end, void *argp)
{
    mc_arg *a = argp;
    long long hits = 0;
    for (int64_t block = begin; block < end; block++) {
        if (stopped(a->stop)) {
            return GF_KERNEL_STOPPED;
        }
        uint64_t s = a->seed * 0x100000001B3ull ^ (uint64_t)block * 0xD1B54A32D192ED03ull;
        int64_t lo = block * MC_BLOCK, hi = a->samples - lo > MC_BLOCK ? lo + MC_BLOCK : a->samples;
        for (int64_t i = lo; i < hi; i++) {
            double x = (double)(splitmix64(&s) >> 11) * 0x1.0p-53;
            double y = (double)(splitmix64(&s) >> 11) * 0x1.0p-53;
            hits += x * x + y * y < 1.0;
        }
    }
    atomic_fetch_add(&a->hits, hits);
    return 0;
}

/* ---- sum_squares ------------------------------------------------------------------------------------ */

#define SUM_BLOCK 65536 /* values per partial sum: fixed, partial sums added in order */

typedef struct {
    const atomic_int *stop;
    const double *data;
    int64_t len;
    double *partial; /* one per block */
} sum_arg;

static int
sum_kernel(int64_t begin, int64_t end, void *argp)
{
    sum_arg *a = argp;
    for (int64_t block = begin; block < end; block++) {
        if (stopped(a->stop)) {
            return GF_KERNEL_STOPPED;
        }
        int64_t lo = block * SUM_BLOCK, hi = a->len - lo > SUM_BLOCK ? lo + SUM_BLOCK : a->len;
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        int64_t i = lo;
        for (; i + 4 <= hi; i += 4) {
            s0 += a->data[i] * a->data[i];
            s1 += a->data[i + 1] * a->data[i + 1];
            s2 += a->data[i + 2] * a->data[i + 2];
            s3 += a->data[i + 3] * a->data[i + 3];
        }
        for (; i < hi; i++) {
            s0 += a->data[i] * a->data[i];
        }
        a->partial[block] = (s0 + s1) + (s2 + s3);
    }
    return 0;
}

/* ---- sleep and read_files --------------------------------------------------------------------------- */

typedef struct {
    const atomic_int *stop;
    int64_t ns; /* each sleep, in nanoseconds (the entry point bounds it) */
} sleep_arg;

#define SLEEP_SLICE_NS (10 * 1000 * 1000) /* a long sleep looks at the stop flag this often */

static int
sleep_kernel(int64_t begin, int64_t end, void *argp)
{
    sleep_arg *a = argp;
    for (int64_t i = begin; i < end; i++) {
        struct timespec until;
        gf_monotonic_after(&until, a->ns);
        for (;;) {
            if (stopped(a->stop)) {
                return GF_KERNEL_STOPPED;
            }
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            int64_t left = (int64_t)(until.tv_sec - now.tv_sec) * 1000000000 + (until.tv_nsec - now.tv_nsec);
            if (left <= 0) {
                break;
            }
            int64_t step = left < SLEEP_SLICE_NS ? left : SLEEP_SLICE_NS;
            struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)step};
            (void)nanosleep(&ts, NULL); /* EINTR: the loop recomputes what is left */
        }
    }
    return 0;
}

typedef struct {
    const atomic_int *stop;
    char **paths;
    long long *sizes;
    int *errnos;
    size_t block;
} read_arg;

static int
read_kernel(int64_t begin, int64_t end, void *argp)
{
    read_arg *a = argp;
    char *buf = malloc(a->block);
    if (buf == NULL) {
        return ENOMEM; /* no errnos[] entry: the entry point raises MemoryError */
    }
    int rc = 0;
    for (int64_t i = begin; i < end && rc == 0; i++) {
        if (stopped(a->stop)) {
            rc = GF_KERNEL_STOPPED;
            break;
        }
        int fd = open(a->paths[i], O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            a->errnos[i] = errno;
            rc = 1;
            break;
        }
        long long total = 0;
        for (;;) {
            ssize_t r = read(fd, buf, a->block);
            if (r < 0 && errno == EINTR) {
                continue;
            }
            if (r < 0) {
                a->errnos[i] = errno;
                rc = 1;
                break;
            }
            if (r == 0) {
                break;
            }
            total += r;
        }
        close(fd);
        a->sizes[i] = total;
    }
    free(buf);
    return rc;
}

/* ---- a kernel that does nothing: the per-chunk cost of parallel_for itself ---------------------------- */

static int
noop_kernel(int64_t begin, int64_t end, void *argp)
{
    (void)begin;
    (void)end;
    (void)argp;
    return 0;
}

/* ---- Python entry points ------------------------------------------------------------------------------ */

/* Every entry point takes (…, workers, pool) resolved by the Python layer, and checks and bounds every
 * argument again itself: the private entry points trust nothing. */

static int
check_workers(int workers)
{
    if (workers < 1) {
        PyErr_Format(PyExc_ValueError, "workers must be >= 1, got %d", workers);
        return -1;
    }
    return 0;
}

static PyObject *
k_count_primes(PyObject *module, PyObject *args)
{
    long long lo, hi;
    int workers;
    PyObject *pool;
    if (!PyArg_ParseTuple(args, "LLiO", &lo, &hi, &workers, &pool) || check_workers(workers) < 0) {
        return NULL;
    }
    if (lo < 0) {
        lo = 0; /* no negative number is prime; and now hi - lo cannot overflow */
    }
    primes_arg a = {.lo = lo};
    atomic_init(&a.count, 0);
    int64_t n = hi > lo ? (int64_t)hi - (int64_t)lo : 0;
    if (gf_parallel_run(gf_get_state(module), pool, n, primes_kernel, &a, workers, 0, &a.stop) < 0) {
        return NULL;
    }
    return PyLong_FromLongLong(atomic_load(&a.count));
}

#define MAX_ITER_LIMIT 65535

static PyObject *
k_mandelbrot(PyObject *module, PyObject *args)
{
    long long width, height;
    int max_iter, workers;
    double x, y, w, h;
    PyObject *out, *pool;
    if (!PyArg_ParseTuple(args, "LLiddddOiO", &width, &height, &max_iter, &x, &y, &w, &h, &out, &workers,
                          &pool) || check_workers(workers) < 0) {
        return NULL;
    }
    if (width < 0 || height < 0) {
        return PyErr_Format(PyExc_ValueError, "width and height must be >= 0, got %lld and %lld", width, height);
    }
    if (max_iter < 0 || max_iter > MAX_ITER_LIMIT) {
        return PyErr_Format(PyExc_ValueError, "max_iter must be in [0, 65535], got %d", max_iter);
    }
    if (!isfinite(x) || !isfinite(y) || !isfinite(w) || !isfinite(h)) {
        return PyErr_Format(PyExc_ValueError, "x, y, w and h must be finite");
    }
    long long cells, bytes;
    if (__builtin_mul_overflow(width, height, &cells) || __builtin_mul_overflow(cells, 2LL, &bytes) ||
        bytes > (long long)PY_SSIZE_T_MAX) {
        return PyErr_Format(PyExc_OverflowError, "width*height (%lld x %lld) is too large", width, height);
    }
    Py_buffer view;
    if (PyObject_GetBuffer(out, &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    if (view.len < (Py_ssize_t)bytes) {
        PyBuffer_Release(&view);
        return PyErr_Format(PyExc_ValueError, "out must hold width*height uint16 values (%lld bytes), has %zd",
                            bytes, view.len);
    }
    mandel_arg a = {.width = width, .height = height, .max_iter = max_iter, .x = x, .y = y, .w = w, .h = h,
                    .out = (uint16_t *)view.buf};
    /* no cell: nothing to do (and no row loop over an empty width) */
    int rc = cells == 0 ? 0
                        : gf_parallel_run(gf_get_state(module), pool, height, mandel_kernel, &a, workers, 0,
                                          &a.stop);
    PyBuffer_Release(&view);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The hit count is exact in a double, and the estimate meaningful, up to 2**53 samples. */
#define MC_MAX_SAMPLES (1LL << 53)

static PyObject *
k_monte_carlo_pi(PyObject *module, PyObject *args)
{
    long long samples;
    unsigned long long seed;
    int workers;
    PyObject *pool;
    if (!PyArg_ParseTuple(args, "LKiO", &samples, &seed, &workers, &pool) || check_workers(workers) < 0) {
        return NULL;
    }
    if (samples < 1 || samples > MC_MAX_SAMPLES) {
        return PyErr_Format(PyExc_ValueError, "samples must be in [1, 2**53], got %lld", samples);
    }
    mc_arg a = {.samples = samples, .seed = seed};
    atomic_init(&a.hits, 0);
    int64_t blocks = samples / MC_BLOCK + (samples % MC_BLOCK != 0);
    if (gf_parallel_run(gf_get_state(module), pool, blocks, mc_kernel, &a, workers, 1, &a.stop) < 0) {
        return NULL;
    }
    return PyFloat_FromDouble(4.0 * (double)atomic_load(&a.hits) / (double)samples);
}

static PyObject *
k_sum_squares(PyObject *module, PyObject *args)
{
    PyObject *buffer, *pool;
    int workers;
    if (!PyArg_ParseTuple(args, "OiO", &buffer, &workers, &pool) || check_workers(workers) < 0) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        return NULL;
    }
    /* float64 ('d'), or raw bytes ('B'/'b'/'c' or no format) read as float64 */
    const char *fmt = view.format ? view.format : "B";
    if (*fmt == '@' || *fmt == '=' || *fmt == '<') {
        fmt++;
    }
    int is_double = strcmp(fmt, "d") == 0;
    int is_bytes = strcmp(fmt, "B") == 0 || strcmp(fmt, "b") == 0 || strcmp(fmt, "c") == 0;
    if ((!is_double && !is_bytes) || view.len % 8 != 0 || ((uintptr_t)view.buf % 8 != 0 && view.len)) {
        PyBuffer_Release(&view);
        return PyErr_Format(PyExc_TypeError,
                            "buffer must be C-contiguous float64 data (format 'd', or bytes whose length is a "
                            "multiple of 8, 8-byte aligned), got format %s, %zd bytes",
                            view.format ? view.format : "B", view.len);
    }
    int64_t len = view.len / 8, blocks = len / SUM_BLOCK + (len % SUM_BLOCK != 0);
    double *partial = PyMem_RawCalloc(blocks ? (size_t)blocks : 1, sizeof(double));
    if (partial == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    sum_arg a = {.data = (const double *)view.buf, .len = len, .partial = partial};
    int rc = gf_parallel_run(gf_get_state(module), pool, blocks, sum_kernel, &a, workers, 1, &a.stop);
    PyBuffer_Release(&view); /* held for the whole run, released before returning */
    double total = 0;
    for (int64_t b = 0; b < blocks; b++) {
        total += partial[b];
    }
    PyMem_RawFree(partial);
    if (rc < 0) {
        return NULL;
    }
    return PyFloat_FromDouble(total);
}

#define SLEEP_MAX_SECONDS 1e9 /* about 31 years */

static PyObject *
k_sleep(PyObject *module, PyObject *args)
{
    double seconds;
    long long count;
    int workers;
    PyObject *pool;
    if (!PyArg_ParseTuple(args, "dLiO", &seconds, &count, &workers, &pool) || check_workers(workers) < 0) {
        return NULL;
    }
    if (!(seconds >= 0 && seconds <= SLEEP_MAX_SECONDS)) { /* NaN and inf fail here too */
        return PyErr_Format(PyExc_ValueError, "seconds must be a finite number in [0, 1e9], got %R",
                            PyTuple_GET_ITEM(args, 0));
    }
    if (count < 0) {
        return PyErr_Format(PyExc_ValueError, "count must be >= 0, got %lld", count);
    }
    sleep_arg a = {.ns = (int64_t)(seconds * 1e9)};
    if (gf_parallel_run(gf_get_state(module), pool, count, sleep_kernel, &a, workers, 1, &a.stop) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

#define READ_MAX_BLOCK (1LL << 30)

static PyObject *
k_read_files(PyObject *module, PyObject *args)
{
    PyObject *paths, *pool;
    long long block;
    int workers;
    if (!PyArg_ParseTuple(args, "OLiO", &paths, &block, &workers, &pool) || check_workers(workers) < 0) {
        return NULL;
    }
    if (PyUnicode_Check(paths) || PyBytes_Check(paths) || PyByteArray_Check(paths)) {
        return PyErr_Format(PyExc_TypeError, "paths must be a sequence of paths, not a single %.100s",
                            Py_TYPE(paths)->tp_name);
    }
    if (block < 1 || block > READ_MAX_BLOCK) {
        return PyErr_Format(PyExc_ValueError, "block_size must be in [1, 2**30], got %lld", block);
    }
    PyObject *seq = PySequence_Tuple(paths);
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    PyObject **encoded = PyMem_Calloc(n ? (size_t)n : 1, sizeof(PyObject *));
    read_arg a = {.paths = PyMem_RawCalloc(n ? (size_t)n : 1, sizeof(char *)),
                  .sizes = PyMem_RawCalloc(n ? (size_t)n : 1, sizeof(long long)),
                  .errnos = PyMem_RawCalloc(n ? (size_t)n : 1, sizeof(int)),
                  .block = (size_t)block};
    PyObject *result = NULL;
    if (encoded == NULL || a.paths == NULL || a.sizes == NULL || a.errnos == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyUnicode_FSConverter(PyTuple_GET_ITEM(seq, i), &encoded[i])) {
            goto done;
        }
        a.paths[i] = PyBytes_AS_STRING(encoded[i]);
    }
    gf_state *st = gf_get_state(module);
    if (gf_parallel_run(st, pool, n, read_kernel, &a, workers, 1, &a.stop) < 0) {
        if (PyErr_ExceptionMatches(st->KernelError)) { /* a file failed: say which, as OSError */
            int found = 0;
            for (Py_ssize_t i = 0; i < n; i++) {
                if (a.errnos[i] != 0) {
                    PyErr_Clear();
                    errno = a.errnos[i];
                    PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, PyTuple_GET_ITEM(seq, i));
                    found = 1;
                    break;
                }
            }
            if (!found) { /* the read buffer could not be allocated */
                PyErr_Clear();
                PyErr_NoMemory();
            }
        }
        goto done;
    }
    result = PyList_New(n);
    for (Py_ssize_t i = 0; result != NULL && i < n; i++) {
        PyObject *v = PyLong_FromLongLong(a.sizes[i]);
        if (v == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, i, v);
    }
done:
    for (Py_ssize_t i = 0; encoded != NULL && i < n; i++) {
        Py_XDECREF(encoded[i]);
    }
    PyMem_Free(encoded);
    PyMem_RawFree(a.paths);
    PyMem_RawFree(a.sizes);
    PyMem_RawFree(a.errnos);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef kernel_methods[] = {
    {"_count_primes", k_count_primes, METH_VARARGS, NULL},
    {"_mandelbrot", k_mandelbrot, METH_VARARGS, NULL},
    {"_monte_carlo_pi", k_monte_carlo_pi, METH_VARARGS, NULL},
    {"_sum_squares", k_sum_squares, METH_VARARGS, NULL},
    {"_sleep", k_sleep, METH_VARARGS, NULL},
    {"_read_files", k_read_files, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

int
gf_kernels_setup(PyObject *module, gf_state *Py_UNUSED(st))
{
    if (PyModule_AddObject(module, "_noop_kernel", PyLong_FromVoidPtr((void *)(uintptr_t)noop_kernel)) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(module, kernel_methods);
}
