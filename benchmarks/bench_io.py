"""Event-driven I/O: the same TCP echo workload against four servers, on loopback, in one run.

Servers (each in its own process, so its CPU time and peak RSS are its own; the code: gilfree.bench.echo):
  gilfree      gilfree.bench.echo.EchoServer (examples/echo_server.py runs it): --workers event-loop threads,
               each with its own SO_REUSEPORT listener and one gilfree.Poller (epoll) over its sockets
  asyncio      asyncio streams (start_server), the default event loop
  uvloop       the same on uvloop, where uvloop installs
  threading    socketserver.ThreadingTCPServer: a thread per connection

The client (one process, epoll) keeps N connections busy in a closed loop: each sends a small message, waits
for the whole echo, records the round trip, and sends the next, for a set duration after a warm-up, or
until a bounded number of requests. Reported: requests/s, p50 and p99 latency, the server's CPU time per
request and its peak RSS; medians of --repeat runs with min-max.

    python benchmarks/bench_io.py [--connections 100,1000] [--duration 3] [--repeat 3] [--json PATH]
                                  [--plot PATH.png] [--servers gilfree,asyncio,uvloop,threading]
                                  [--workers N] [--idle 10000]

--idle N adds a row per server: 100 busy connections while N more stay open and silent (an event loop
should cost what is ready, not what is open: their p99 against the 100-connection row).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
from pathlib import Path
from typing import Any

from gilfree.bench.echo import MESSAGE, SERVERS, available, run_one


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=0,
                    help="gilfree server's event-loop threads (default 0: the server's own choice, one per CPU "
                         "on a free-threaded build, else one)")
    ap.add_argument("--connections", default="100,1000")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds measured per run")
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--max-requests", type=int, default=2_000_000, help="bound per run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--idle", type=int, default=0,
                    help="also: 100 busy connections beside this many idle ones (e.g. 10000)")
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--json")
    ap.add_argument("--plot")
    args = ap.parse_args()
    conns = [int(c) for c in args.connections.split(",")]
    need = max(conns + [args.idle + 100]) * 2 + 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need and (hard == resource.RLIM_INFINITY or hard >= need):
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    kinds = [k for k in args.servers.split(",") if k]
    unknown = [k for k in kinds if k not in SERVERS]
    if unknown:
        ap.error(f"unknown server(s) {', '.join(unknown)}; choose from {', '.join(SERVERS)}")
    skipped = [k for k in kinds if not available(k)]
    kinds = [k for k in kinds if available(k)]
    results: dict[str, Any] = {"cpus": len(os.sched_getaffinity(0)), "python": sys.version.split()[0],
                               "duration_s": args.duration, "repeat": args.repeat, "skipped": skipped, "workers": args.workers,
                               "rows": [], "idle_rows": []}
    print(f"echo over loopback, {len(MESSAGE)}-byte messages, closed loop; {results['cpus']} CPUs, "
          f"Python {results['python']}; medians of {args.repeat} runs of {args.duration:g} s (min-max)")
    if skipped:
        print(f"not installed, skipped: {', '.join(skipped)}")
    print(f"{'server':10} {'conns':>5} {'req/s (min-max)':>24} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} "
          f"{'RSS MiB':>8}")
    for c in conns:
        for k in kinds:
            runs = [run_one(k, c, args.duration, args.warmup, args.max_requests, args.workers)
                    for _ in range(args.repeat)]
            rps = sorted(r["rps"] for r in runs)
            row = {"server": k, "connections": c, "rps": statistics.median(rps), "rps_min": rps[0],
                   "rps_max": rps[-1], **{key: statistics.median(r[key] for r in runs)
                                          for key in ("p50_ms", "p99_ms", "cpu_us_per_req", "rss_mib")}}
            results["rows"].append(row)
            print(f"{k:10} {c:5d} {row['rps']:9.0f} ({rps[0]:.0f}-{rps[-1]:.0f}) {row['p50_ms']:7.2f} "
                  f"{row['p99_ms']:7.2f} {row['cpu_us_per_req']:10.1f} {row['rss_mib']:8.1f}", flush=True)
    if args.idle:
        for k in kinds:
            runs = [run_one(k, 100, args.duration, args.warmup, args.max_requests, args.workers, args.idle)
                    for _ in range(args.repeat)]
            rps = sorted(r["rps"] for r in runs)
            row = {"server": k, "connections": 100, "idle": args.idle, "rps": statistics.median(rps),
                   "rps_min": rps[0], "rps_max": rps[-1],
                   **{key: statistics.median(r[key] for r in runs)
                      for key in ("p50_ms", "p99_ms", "cpu_us_per_req", "rss_mib")}}
            results["idle_rows"].append(row)
            busy = next((r for r in results["rows"] if r["server"] == k and r["connections"] == 100), None)
            vs = f"  (p99 {row['p99_ms'] / busy['p99_ms']:.2f}x its 100-connection p99)" if busy else ""
            print(f"{k:10} {'100+' + str(args.idle // 1000) + 'k':>7} {row['rps']:9.0f} ({rps[0]:.0f}-{rps[-1]:.0f}) "
                  f"{row['p50_ms']:7.2f} {row['p99_ms']:7.2f} {row['cpu_us_per_req']:10.1f} {row['rss_mib']:8.1f}"
                  f"{vs}", flush=True)
    for c in conns:
        rows = {r["server"]: r for r in results["rows"] if r["connections"] == c}
        if "gilfree" in rows and "asyncio" in rows:
            mine, base = rows["gilfree"], rows["asyncio"]
            print(f"at {c} connections: gilfree {mine['rps'] / base['rps']:.2f}x asyncio's throughput, "
                  f"p99 {mine['p99_ms']:.2f} vs {base['p99_ms']:.2f} ms", end="")
            if "uvloop" in rows:
                print(f"; {mine['rps'] / rows['uvloop']['rps']:.2f}x uvloop's", end="")
            print()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.plot:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10, 3.6))
        ax1, ax2 = fig.subplots(1, 2)
        for k in kinds:
            rows_k = [r for r in results["rows"] if r["server"] == k]
            xs = [r["connections"] for r in rows_k]
            ax1.plot(xs, [r["rps"] for r in rows_k], marker="o", label=k)
            ax2.plot(xs, [r["p99_ms"] for r in rows_k], marker="o", label=k)
        for ax, title in ((ax1, "requests/s (higher is better)"), (ax2, "p99 latency, ms (lower is better)")):
            ax.set_xscale("log")
            ax.set_xticks(conns, [str(c) for c in conns])
            ax.set_xlabel("concurrent connections")
            ax.set_title(title)
            ax.legend(fontsize=7)
        fig.suptitle(f"TCP echo on loopback, {results['cpus']} CPUs, Python {results['python']}", fontsize=10)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
