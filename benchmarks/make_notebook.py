"""Writes benchmarks/gil_effects.ipynb (outputs cleared). Edit the cells here, then run this script."""

from __future__ import annotations

from pathlib import Path

import nbformat

md = nbformat.v4.new_markdown_cell
code = nbformat.v4.new_code_cell

CELLS = [
    md("""# What the GIL does — measured with gilfree

This notebook answers the study notes (学んだこと) with live measurements on *this* machine:

* **並行 (concurrency) vs 並列 (parallelism)** — several tasks in progress vs several cores busy.
* **ブロッキング vs ノンブロッキング, 同期 vs 非同期** — `select` with and without `default`, and
  awaiting a channel.
* **Why threads do not speed up Python code under the GIL**, what multiprocessing costs, and what native
  kernels (the GIL released for the whole computation) gain.

Set `GILFREE_NOTEBOOK_TINY=1` to run everything in seconds (the test suite does)."""),
    code("""import os, sys, time, threading, asyncio
import gilfree
from gilfree import kernels, reference

TINY = os.environ.get("GILFREE_NOTEBOOK_TINY") == "1"
print(f"Python {sys.version.split()[0]}, GIL enabled: {gilfree.gil_enabled()}, CPUs: {len(os.sched_getaffinity(0))}")"""),
    md("""## 1. Concurrency is not parallelism

Two threads each counting primes in **pure Python**. With the GIL only one of them runs Python bytecode at
a time: they are *concurrent* (both in progress) but not *parallel* (never at once). The same work as a
native kernel runs on every core, because no thread holds the GIL while it computes."""),
    code("""import statistics
N = 20_000 if TINY else 200_000
halves = [(0, N // 2), (N // 2, N)]

def serial():
    return sum(reference.count_primes(a, b) for a, b in halves)

def two_threads():
    results = []
    threads = [threading.Thread(target=lambda a=a, b=b: results.append(reference.count_primes(a, b)))
               for a, b in halves]
    for t in threads: t.start()
    for t in threads: t.join()
    return sum(results)

def native():
    return kernels.count_primes(0, N, workers=2)

def timed(fn, reps=5):                      # the median of 5 runs, and the spread
    walls, result = [], None
    for _ in range(reps):
        t0 = time.perf_counter(); result = fn(); walls.append(time.perf_counter() - t0)
    return result, statistics.median(walls), min(walls), max(walls)

runs = {name: timed(fn) for name, fn in [("pure Python, serial", serial), ("pure Python, 2 threads", two_threads),
                                         ("native, 2 workers", native)]}
assert len({r[0] for r in runs.values()}) == 1   # all three counted the same primes
t_serial = runs["pure Python, serial"][1]
for name, (_, med, lo, hi) in runs.items():
    print(f"{name + ':':24}{med * 1e3:8.1f} ms  ({lo * 1e3:.1f}–{hi * 1e3:.1f})  {t_serial / med:5.2f}x serial")

x = t_serial / runs["pure Python, 2 threads"][1]
if x < 1.15:
    verdict = "no faster than serial: one thread at a time runs Python, the GIL"
elif not gilfree.gil_enabled():
    verdict = "faster: this interpreter runs without the GIL"
else:
    verdict = "faster than the GIL allows pure Python to be: is the machine busy? (section 3 measures it)"
print(f"\\n2 threads: {x:.2f}x serial, {verdict}")"""),
    md("""## 2. Blocking, non-blocking, asynchronous

`select` waits on several channels at once (I/O多重化 over channels): without `default` it **blocks**
until one case can proceed; with `default` it never blocks (非同期・ノンブロッキング). A coroutine can
**await** a channel while the event loop keeps running."""),
    code("""jobs = gilfree.Channel(1)
done = gilfree.Channel()

print("non-blocking, nothing ready ->", gilfree.select(jobs.recv, gilfree.default))
jobs.send("build")
print("blocking, one ready         ->", gilfree.select(jobs.recv, done.recv, timeout=1))
try:
    gilfree.select(jobs.recv, done.recv, timeout=0.05)
except TimeoutError:
    print("blocking, nothing ready     -> TimeoutError after 50 ms")"""),
    code("""async def main():
    ch = gilfree.Channel()
    threading.Timer(0.05, ch.send, args=("from a thread",)).start()
    ticks = 0
    async def heartbeat():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)
    hb = asyncio.ensure_future(heartbeat())
    value = await ch.recv_async()        # the loop keeps running while we wait
    hb.cancel()
    return value, ticks

value, ticks = await main()
print(f"received {value!r}; the event loop ran {ticks} heartbeats meanwhile")"""),
    md("""## 3. The comparison

The same work under every executor: serial, threading, multiprocessing, the gilfree pool running Python
callables, and gilfree native kernels — wall time, speedup, efficiency, CPU utilisation, peak RSS, and the
**GIL convoy probe**: a thread that sleeps 1 ms again and again and measures how late it wakes while the
executor runs. Threads running Python make it wait for the GIL (up to the 5 ms switch interval); native
kernels hold no GIL, so it wakes on time."""),
    code("""from gilfree import bench
report = bench.run(workers=[1, 2], sizes=bench.TINY if TINY else None)
print(report.table())      # its first lines say how many CPUs were free; its last ones, the lesson"""),
    code("""report.plot()   # a matplotlib Figure: shown inline; report.plot("gil_effects.png") also writes a file"""),
    md("""## 3b. What free-threaded Python changes

Give a second interpreter, a free-threaded one (`python3.13t`, with gilfree installed there) for instance,
in `GILFREE_NOTEBOOK_PYTHON`, and the same work runs under it too: its columns are labelled with the
interpreter and its GIL status, e.g. `threading [3.13t, GIL off]`. With the GIL off, pure-Python threads
scale like the native kernels do."""),
    code("""OTHER = os.environ.get("GILFREE_NOTEBOOK_PYTHON")
if OTHER:
    both = bench.run(["cpu_python"], workers=[1, 2], sizes=bench.TINY if TINY else None, pythons=[OTHER])
    print(both.table())
else:
    print("set GILFREE_NOTEBOOK_PYTHON to another interpreter's path to compare")"""),
    code("""both.plot() if OTHER else None"""),
    md("""## 4. A Mandelbrot image, computed in parallel

`kernels.mandelbrot` fills a buffer of iteration counts on every core with the GIL released; numpy views
it without a copy and matplotlib draws it."""),
    code("""import numpy as np
import matplotlib.pyplot as plt

w, h = (160, 120) if TINY else (800, 600)
t0 = time.perf_counter()
counts = np.frombuffer(kernels.mandelbrot(w, h, 200), dtype=np.uint16).reshape(h, w)
print(f"{w}x{h} in {(time.perf_counter() - t0) * 1e3:.1f} ms")
plt.figure(figsize=(8, 6))
# row 0 is Im = -1.25: origin="lower" puts it at the bottom, as the complex plane is drawn
plt.imshow(np.log1p(counts), cmap="magma", extent=(-2, 1, -1.25, 1.25), origin="lower")
plt.xlabel("Re(c)")
plt.ylabel("Im(c)")
plt.colorbar(label="log(1 + iterations)")
plt.title("gilfree.kernels.mandelbrot")
plt.show()"""),
    md("""## 5. A durable queue: a consumer dies, its task stays

The notes' producer–consumer story ends with message queues that keep the tasks: "when a consumer goes
down the tasks stay in the queue." `gilfree.DurableQueue` stores messages in SQLite here (Redis to scale
out). Below, a consumer process takes a job and is killed (SIGKILL) before it acks; after its lease runs
out the job goes to the next consumer, marked as its second attempt. Nothing is lost."""),
    code("""import signal, subprocess, tempfile, textwrap

path = os.path.join(tempfile.mkdtemp(), "jobs.db")
q = gilfree.DurableQueue(path, lease=1.0)
workers = q.consumer("workers")
q.put_many([f"job {i}" for i in range(3)])

doomed = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f'''
    import gilfree, time
    q = gilfree.DurableQueue({path!r}, lease=1.0)
    m = q.consumer("workers", "doomed").get(timeout=10)
    print(m.value, flush=True)
    time.sleep(60)            # handling it... when the process is killed
    ''')], stdout=subprocess.PIPE, text=True)
taken = doomed.stdout.readline().strip()
doomed.send_signal(signal.SIGKILL); doomed.wait(); doomed.stdout.close()
print(f"a consumer process took {taken!r} and was killed before acking it")

t0 = time.monotonic()
seen = []
while len(seen) < 3:
    with workers.get(timeout=10) as m:     # ack when the block ends
        seen.append((m.value, m.attempt))
for value, attempt in seen:
    print(f"  {value}: delivered {attempt} time{'s' if attempt > 1 else ''}")
print(f"all 3 handled within {time.monotonic() - t0:.1f} s: {taken!r} came back once its 1 s lease ran out")
print(q.stats("workers"))
q.close()"""),
    md("""## 6. Streaming through a GPU: SIMT and latency hiding

The notes' streaming model: a GPU runs threads in warps of 32 that share one instruction pointer, and hides
memory latency by switching to other warps while data is on its way ("他の処理をすることでデータ待ちする").
A program hides the latency of the copies over PCIe the same way, by overlapping them with compute on several
CUDA streams. `gpu.stream_map` does that: staging slots from a bounded channel (backpressure), results in input
order through a channel of channels. Below: the same chunks on 1 and 4 streams, here — on the GPU where there
is one, otherwise on the CPU backend (a thread per stream) — and the figures recorded on an H200."""),
    code("""import json
from IPython.display import Image, display
from gilfree import gpu
from gilfree.bench import gpu_lab

avail = gpu.available()
print(f"GPU: {avail.device}" if avail else f"no GPU here ({avail.reason}): the CPU backend, same pipeline")
ov = gpu_lab.overlap(backend="cupy" if avail else "cpu", chunks=8 if TINY else 32, chunk_mib=1 if TINY else 4,
                     passes=4 if TINY else 20, streams_list=[1, 4], repeat=3)
for r in ov["rows"]:
    w = r["wall_s"]
    print(f"  {r['streams']} stream{'s' if r['streams'] > 1 else ' '}: {w['median'] * 1e3:6.1f} ms "
          f"({w['min'] * 1e3:.1f}-{w['max'] * 1e3:.1f}), {r['speedup_vs_1']:.2f}x 1 stream")

recorded = os.path.join(os.pardir, "docs", "bench_gpu.json")
if os.path.exists(recorded):
    with open(recorded) as f:
        rec = json.load(f)
    print(f"\\nrecorded on {rec['device']}, {rec['date']}:")
    for key in ("overlap_compute", "overlap"):
        rows = rec[key]["rows"]
        print(f"  {key}: " + ", ".join(f"{r['streams']} streams {r['wall_s']['median'] * 1e3:.0f} ms" for r in rows)
              + f"; bound {rows[-1]['bound_s'] * 1e3:.0f} ms")
    m = rec["mandelbrot"]
    print(f"  Mandelbrot {m['size']}x{m['size']}: GPU {m['gpu_with_copy_s']['median'] * 1e3:.2f} ms with the copy, "
          f"{m['cpu_workers']} CPUs {m['cpu_s']['median'] * 1e3:.0f} ms: {m['speedup_with_copy']:.0f}x")
    last = rec["divergence"]["rows"][-1]
    print(f"  divergence: {last['paths']} paths by lane cost {last['cost']:.1f}x the same paths by warp")
    display(Image(filename=os.path.join(os.pardir, "docs", "bench_gpu.png")))"""),
]


def main() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = CELLS
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    path = Path(__file__).with_name("gil_effects.ipynb")
    nbformat.write(nb, str(path))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
