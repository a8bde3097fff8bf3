"""The GPU experiments of ``benchmarks/bench_gpu.py`` and the main job's ``gpu`` scenario: latency hiding by
overlap (``stream_map`` on 1, 2, 4, 8 streams), latency hiding by occupancy (bandwidth against resident warps),
warp divergence, and Mandelbrot on the GPU against ``gilfree.kernels.mandelbrot`` on every core.

Every device time is taken with CUDA events; every figure is the median of ``repeat`` runs, with its min and
max. ``overlap_cpu`` runs the overlap experiment on the CPU backend, where no GPU is present."""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable

from .. import gpu, kernels

PHASES = ("stage", "h2d", "kernel", "d2h", "collect")

# ---- helpers ------------------------------------------------------------------------------------------------


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def _cuda_time(cp: Any, fn: Callable[[], Any], repeat: int, warmup: int = 1) -> list[float]:
    """Seconds per call of ``fn`` (work on the current stream), by CUDA events."""
    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    out = []
    for _ in range(repeat):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(cp.cuda.get_elapsed_time(a, b) / 1e3)
    return out


def device_info() -> dict[str, Any]:
    cp = gpu._cupy()

    dev = cp.cuda.Device()
    p = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
    info = {"name": name, "sms": int(p["multiProcessorCount"]), "warp_size": int(p["warpSize"]),
            "max_threads_per_sm": int(p["maxThreadsPerMultiProcessor"]),
            "memory_gib": round(p["totalGlobalMem"] / 2**30, 1), "l2_mib": round(p["l2CacheSize"] / 2**20, 1),
            "async_engines": int(p.get("asyncEngineCount", 0)), "cupy": cp.__version__,
            "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(), "driver": cp.cuda.runtime.driverGetVersion(),
            "host_cpus": os.cpu_count()}
    return info


def copy_bandwidths(repeat: int = 5, mib: int = 512) -> dict[str, Any]:
    """GB/s of a device-to-device copy (bytes read + written) and of pinned host<->device copies."""
    cp = gpu._cupy()
    import numpy as np

    n = mib << 20
    a = cp.empty(n, dtype=cp.uint8)
    b = cp.empty_like(a)
    mem = cp.cuda.alloc_pinned_memory(n)
    host = np.ndarray((n,), dtype=np.uint8, buffer=mem)
    host[:] = 1
    rt = cp.cuda.runtime
    s = cp.cuda.get_current_stream().ptr
    d2d = _cuda_time(cp, lambda: b.__setitem__(slice(None), a), repeat)
    h2d = _cuda_time(cp, lambda: rt.memcpyAsync(a.data.ptr, host.ctypes.data, n, rt.memcpyHostToDevice, s), repeat)
    d2h = _cuda_time(cp, lambda: rt.memcpyAsync(host.ctypes.data, a.data.ptr, n, rt.memcpyDeviceToHost, s), repeat)
    t0 = time.perf_counter()
    src = np.ones(n, dtype=np.uint8)
    stage = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        host[:] = src
        stage.append(time.perf_counter() - t0)
    del a, b
    return {"bytes": n,
            "d2d_gbs": _stats([2 * n / t / 1e9 for t in d2d]),
            "h2d_gbs": _stats([n / t / 1e9 for t in h2d]),
            "d2h_gbs": _stats([n / t / 1e9 for t in d2h]),
            "host_stage_gbs": _stats([n / t / 1e9 for t in stage])}


# ---- latency hiding by overlap ------------------------------------------------------------------------------


def _work_kernel(xp: Any, passes: int) -> Callable[[Any], Any]:
    """Memory-bound on the device: ``passes`` sweeps of an elementwise update over the chunk."""
    if xp.__name__ == "cupy":
        k = xp.ElementwiseKernel("float32 x, int32 passes", "float32 y", """
            float v = x;
            for (int j = 0; j < passes; ++j) { v = v * 0.999f + 0.001f; }
            y = v;""", "gilfree_work")

        def run(x: Any) -> Any:
            return k(x, passes)
    else:
        def run(x: Any) -> Any:
            y = x * 0.999 + 0.001
            for _ in range(passes - 1):
                y *= 0.999
                y += 0.001
            return y
    return run


def overlap(*, backend: str, chunks: int, chunk_mib: float, passes: int, streams_list: list[int], repeat: int,
            depth: int = 2) -> dict[str, Any]:
    """The same chunks through ``stream_map`` on each stream count: wall time, and the total of each phase
    from the 1-stream timeline (where the phases do not overlap). The bound: with everything overlapped the
    total approaches the largest of the device phases' totals (copy in, kernel, copy back: one copy engine
    each way, one kernel at a time) and the host's share (staging and collecting, spread over the streams'
    threads, as many at once as there are CPUs)."""
    import numpy as np

    n = int(chunk_mib * 2**20) // 4
    host = [np.full(n, i, dtype=np.float32) for i in range(chunks)]
    xp = np if backend == "cpu" else gpu._cupy()
    kern = _work_kernel(xp, passes)
    list(gpu.stream_map(kern, host[:2], streams=1, backend=backend))  # compile, warm
    for _ in range(2):  # the second, warm: the phases one after another, each chunk's alone
        tl1: list[gpu.Span] = []
        list(gpu.stream_map(kern, host, streams=1, depth=1, backend=backend, timeline=tl1))
    totals = {ph: sum(s.end - s.start for s in tl1 if s.phase == ph) for ph in PHASES}
    cpus = os.cpu_count() or 1
    rows: list[dict[str, Any]] = []
    timelines: dict[str, list[dict[str, Any]]] = {}
    for streams in streams_list:
        walls = []
        tl_keep: list[gpu.Span] = []
        for _ in range(repeat):
            tl: list[gpu.Span] = []
            t0 = time.perf_counter()
            for _res in gpu.stream_map(kern, host, streams=streams, depth=depth, backend=backend, timeline=tl):
                pass
            walls.append(time.perf_counter() - t0)
            tl_keep = tl
        t_first = min(s.start for s in tl_keep)
        timelines[str(streams)] = [{"chunk": s.chunk, "stream": s.stream, "phase": s.phase,
                                    "start": s.start - t_first, "end": s.end - t_first} for s in tl_keep]
        host_share = (totals["stage"] + totals["collect"]) / min(streams, cpus)
        bound = max(totals["h2d"], totals["kernel"], totals["d2h"], host_share)
        med = statistics.median(walls)
        rows.append({"streams": streams, "wall_s": _stats(walls), "bound_s": bound, "host_share_s": host_share,
                     "vs_bound": bound / med})
    for row in rows:
        row["speedup_vs_1"] = rows[0]["wall_s"]["median"] / row["wall_s"]["median"]
    return {"backend": backend, "chunks": chunks, "chunk_bytes": n * 4, "passes": passes, "depth": depth,
            "phase_totals_s": totals, "serial_s": sum(totals.values()),
            "device_bound_s": max(totals["h2d"], totals["kernel"], totals["d2h"]), "rows": rows,
            "timelines": timelines}


def calibrate_passes(chunk_mib: int, target_s: float) -> int:
    """Passes of the work kernel that make one chunk's kernel last about ``target_s`` on this GPU."""
    cp = gpu._cupy()

    n = (chunk_mib << 20) // 4
    x = cp.ones(n, dtype=cp.float32)
    passes = 16
    while True:
        k = _work_kernel(cp, passes)
        t = statistics.median(_cuda_time(cp, lambda: k(x), 3))
        if t >= target_s or passes >= 1 << 16:
            return max(1, int(passes * target_s / t))
        passes *= 4


# ---- latency hiding by occupancy ----------------------------------------------------------------------------

_OCC_SRC = r"""
extern "C" __global__ void scale1(const float *x, float *y, long long n) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        y[i] = 2.0f * x[i];
}
extern "C" __global__ void scale4(const float4 *x, float4 *y, long long n4) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += stride) {
        float4 v = x[i];
        y[i] = make_float4(2.0f * v.x, 2.0f * v.y, 2.0f * v.z, 2.0f * v.w);
    }
}
"""


def occupancy(*, mib: int, repeat: int) -> dict[str, Any]:
    """Bandwidth of a memory-bound kernel (y = 2x over ``mib`` MiB, read + written) with 1, 2, 4, ...
    warps resident on every SM, for 4-byte and 16-byte loads per thread."""
    cp = gpu._cupy()

    info = device_info()
    sms, max_warps = info["sms"], info["max_threads_per_sm"] // 32
    mod = cp.RawModule(code=_OCC_SRC)
    n = (mib << 20) // 4
    x = cp.ones(n, dtype=cp.float32)
    y = cp.empty_like(x)
    rows = []
    w = 1
    while w <= max_warps:
        threads = min(w, 32) * 32
        blocks = sms * max(1, w // 32)
        row: dict[str, Any] = {"warps_per_sm": w, "threads_per_block": threads, "blocks": blocks}
        for name, count in (("scale1", n), ("scale4", n // 4)):
            k = mod.get_function(name)
            ts = _cuda_time(cp, lambda: k((blocks,), (threads,), (x, y, cp.int64(count))), repeat)
            row[name + "_gbs"] = _stats([2 * n * 4 / t / 1e9 for t in ts])
        rows.append(row)
        w *= 2
    return {"bytes_moved": 2 * n * 4, "sms": sms, "max_warps_per_sm": max_warps, "rows": rows}


# ---- divergence ---------------------------------------------------------------------------------------------

_DIV_SRC = r"""
extern "C" __global__ void paths(float *x, int k, int by_lane, int iters) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int lane = threadIdx.x & 31, warp = i >> 5;
    int p = (by_lane ? lane : warp) % k;
    float v = x[i];
    for (int q = 0; q < k; ++q) {
        if (q == p) {  /* k different paths: a warp runs every path one of its threads takes, in turn */
            for (int j = 0; j < iters; ++j) v = v * 0.9999f + (float)(q + 1) * 1e-4f;
        }
    }
    x[i] = v;
}
"""


def divergence(*, iters: int, repeat: int) -> dict[str, Any]:
    """The same work (``iters`` dependent FMAs per thread) split over k paths: by lane (a warp's threads
    take different paths: the warp runs them one after another) or by warp (each warp takes one path)."""
    cp = gpu._cupy()

    info = device_info()
    threads = info["sms"] * info["max_threads_per_sm"] * 4
    x = cp.ones(threads, dtype=cp.float32)
    k_fn = cp.RawModule(code=_DIV_SRC).get_function("paths")
    rows = []
    for k in (1, 2, 4, 8, 16, 32):
        row: dict[str, Any] = {"paths": k}
        for mode, by_lane in (("uniform", 0), ("divergent", 1)):
            ts = _cuda_time(cp, lambda: k_fn((threads // 256,), (256,), (x, cp.int32(k), cp.int32(by_lane),
                                                                          cp.int32(iters))), repeat)
            row[mode + "_s"] = _stats(ts)
        row["cost"] = row["divergent_s"]["median"] / row["uniform_s"]["median"]
        rows.append(row)
    return {"threads": threads, "iters": iters, "rows": rows}


# ---- Mandelbrot: the GPU against every core -----------------------------------------------------------------

_MANDEL_SRC = r"""
extern "C" __global__ void mandel(unsigned short *out, int width, int height, int max_iter,
                                  double x, double y, double w, double h) {
    int col = blockIdx.x * blockDim.x + threadIdx.x, row = blockIdx.y * blockDim.y + threadIdx.y;
    if (col >= width || row >= height) return;
    double ci = y + h * (double)row / (double)height, cr = x + w * (double)col / (double)width;
    double zr = 0.0, zi = 0.0;
    int it = 0;
    while (it < max_iter && zr * zr + zi * zi <= 4.0) {
        double t = zr * zr - zi * zi + cr;
        zi = 2.0 * zr * zi + ci;
        zr = t;
        it++;
    }
    out[(long long)row * width + col] = (unsigned short)it;
}
"""


def mandelbrot(*, size: int, max_iter: int, repeat: int, workers: int | None = None) -> dict[str, Any]:
    """The same image as ``gilfree.kernels.mandelbrot`` (no fused multiply-add, so the counts match):
    the kernel alone, and kernel + copy back to the host, against the native kernel on every core."""
    cp = gpu._cupy()
    import numpy as np

    workers = workers or os.cpu_count() or 1
    k = cp.RawKernel(_MANDEL_SRC, "mandel", options=("--fmad=false",))
    out = cp.empty(size * size, dtype=cp.uint16)
    mem = cp.cuda.alloc_pinned_memory(size * size * 2)
    host = np.ndarray((size * size,), dtype=np.uint16, buffer=mem)
    args = (out, np.int32(size), np.int32(size), np.int32(max_iter), np.float64(-2.0), np.float64(-1.25),
            np.float64(3.0), np.float64(2.5))
    grid = ((size + 15) // 16, (size + 15) // 16)

    def kernel_only() -> None:
        k(grid, (16, 16), args)

    def with_copy() -> None:
        k(grid, (16, 16), args)
        out.get(out=host)

    t_kernel = _cuda_time(cp, kernel_only, repeat)
    t_copy = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        with_copy()
        t_copy.append(time.perf_counter() - t0)
    cpu = []
    ref = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        ref = kernels.mandelbrot(size, size, max_iter, workers=workers)
        cpu.append(time.perf_counter() - t0)
    same = float(np.mean(np.frombuffer(ref, dtype=np.uint16) == host))  # type: ignore[arg-type]
    return {"size": size, "max_iter": max_iter, "cpu_workers": workers, "gpu_kernel_s": _stats(t_kernel),
            "gpu_with_copy_s": _stats(t_copy), "cpu_s": _stats(cpu), "same_counts": same,
            "speedup_kernel": statistics.median(cpu) / statistics.median(t_kernel),
            "speedup_with_copy": statistics.median(cpu) / statistics.median(t_copy)}
