"""The study notes' streaming model on a real GPU: latency hiding by overlap and by occupancy, warp
divergence, and the GPU against every CPU core, with gilfree.gpu.stream_map keeping the device fed.

  overlap     the same memory-bound work over host chunks through stream_map on 1, 2, 4, 8 CUDA streams:
              wall time, a timeline of each chunk's copy in, kernel and copy back (CUDA events), and the
              bound the overlap approaches: the largest of the three phase totals
  occupancy   y = 2x over 1 GiB with 1, 2, 4, ... warps resident per SM: bandwidth against warps, for
              4-byte and 16-byte loads per thread
  divergence  the same arithmetic split over k paths by lane (a warp's threads diverge) or by warp
  mandelbrot  a CuPy RawKernel against gilfree.kernels.mandelbrot on every core, copy back counted

Without a GPU only the overlap experiment runs, on the CPU backend (a thread per stream). Every figure is
the median of --repeat runs with min-max.

    python benchmarks/bench_gpu.py [--quick] [--repeat 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from gilfree import gpu
from gilfree.bench import gpu_lab


def run(quick: bool, repeat: int) -> dict[str, Any]:
    avail = gpu.available()
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "available": bool(avail),
                           "device": avail.device, "reason": avail.reason, "repeat": repeat}
    if not avail:
        print(f"no GPU: {avail.reason}\nthe overlap experiment on the CPU backend (a thread per stream):")
        res["overlap_cpu"] = ov = gpu_lab.overlap(backend="cpu", chunks=16, chunk_mib=4, passes=20,
                                                  streams_list=[1, 2, 4], repeat=repeat)
        _print_overlap("overlap_cpu", ov)
        return res
    res["info"] = info = gpu_lab.device_info()
    print(f"device: {avail.device}; {info['sms']} SMs, {info['memory_gib']} GiB, "
          f"{info['async_engines']} copy engines; host: {info['host_cpus']} CPUs", flush=True)
    res["copies"] = c = gpu_lab.copy_bandwidths(repeat=repeat, mib=256 if quick else 1024)
    print(f"copies, GB/s: device-to-device {c['d2d_gbs']['median']:.0f} (read + written), host-to-device "
          f"{c['h2d_gbs']['median']:.1f}, device-to-host {c['d2h_gbs']['median']:.1f} (pinned); host memcpy "
          f"into pinned {c['host_stage_gbs']['median']:.1f}", flush=True)
    h2d = c["h2d_gbs"]["median"] * 1e9
    # two shapes of work: copy-bound (a kernel as long as its chunk's copy in) and compute-bound (small chunks,
    # a kernel 25 times its copy in, so the device's compute is what the overlap hides the copies behind)
    for key, chunks, chunk_mib, ratio in (("overlap", 16 if quick else 32, 16 if quick else 64, 1.0),
                                          ("overlap_compute", 32 if quick else 64, 4, 25.0)):
        passes = gpu_lab.calibrate_passes(chunk_mib, ratio * chunk_mib * 2**20 / h2d)
        res[key] = ov = gpu_lab.overlap(backend="cupy", chunks=chunks, chunk_mib=chunk_mib, passes=passes,
                                        streams_list=[1, 2, 4, 8], repeat=repeat)
        _print_overlap(key, ov)
    res["occupancy"] = oc = gpu_lab.occupancy(mib=256 if quick else 1024, repeat=repeat)
    print("occupancy (GB/s, read + written):", flush=True)
    for r in oc["rows"]:
        print(f"  {r['warps_per_sm']:>2} warps/SM: 4-byte loads {r['scale1_gbs']['median']:7.0f}, "
              f"16-byte loads {r['scale4_gbs']['median']:7.0f}", flush=True)
    res["divergence"] = dv = gpu_lab.divergence(iters=256 if quick else 1024, repeat=repeat)
    print("divergence (ms: paths split by warp / by lane; cost):", flush=True)
    for r in dv["rows"]:
        print(f"  {r['paths']:>2} paths: {r['uniform_s']['median'] * 1e3:7.3f} / "
              f"{r['divergent_s']['median'] * 1e3:7.3f}  {r['cost']:.2f}x", flush=True)
    res["mandelbrot"] = m = gpu_lab.mandelbrot(size=1024 if quick else 4096, max_iter=1000, repeat=repeat)
    print(f"mandelbrot {m['size']}x{m['size']}, {m['max_iter']} iterations: GPU kernel "
          f"{m['gpu_kernel_s']['median'] * 1e3:.2f} ms, with the copy back {m['gpu_with_copy_s']['median'] * 1e3:.2f} ms; "
          f"native kernels on {m['cpu_workers']} CPUs {m['cpu_s']['median'] * 1e3:.0f} ms: {m['speedup_with_copy']:.0f}x "
          f"(kernel alone {m['speedup_kernel']:.0f}x); same counts {m['same_counts'] * 100:.3f}%", flush=True)
    return res


def _print_overlap(key: str, ov: dict[str, Any]) -> None:
    pt = ov["phase_totals_s"]
    print(f"{key}: {ov['chunks']} chunks of {ov['chunk_bytes'] / 2**20:g} MiB, kernel {ov['passes']} passes; phase "
          f"totals on 1 stream, ms: " + ", ".join(f"{ph} {pt[ph] * 1e3:.1f}" for ph in gpu_lab.PHASES)
          + f"; serial {ov['serial_s'] * 1e3:.1f}", flush=True)
    for r in ov["rows"]:
        w = r["wall_s"]
        print(f"  {r['streams']} streams: {w['median'] * 1e3:7.1f} ms ({w['min'] * 1e3:.1f}-{w['max'] * 1e3:.1f}), "
              f"{r['speedup_vs_1']:.2f}x 1 stream; bound {r['bound_s'] * 1e3:.1f} ms (host share "
              f"{r['host_share_s'] * 1e3:.1f}): {r['vs_bound'] * 100:.0f}% of the bound's speed", flush=True)


def plot(res: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"stage": "silver", "h2d": "tab:blue", "kernel": "tab:orange", "d2h": "tab:green", "collect": "dimgrey"}
    names = ["host: stage into pinned", "host to device", "kernel", "device to host", "host: collect the result"]
    if not res.get("available"):
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
        panels = [("timeline", axes[0]), ("walls", axes[1])]
    else:
        fig, axes = plt.subplots(3, 3, figsize=(18, 13))
        panels = [("timeline1", axes[0][0]), ("timeline", axes[0][1]), ("walls", axes[0][2]),
                  ("timeline1:overlap_compute", axes[1][0]), ("timeline:overlap_compute", axes[1][1]),
                  ("walls:overlap_compute", axes[1][2]),
                  ("occupancy", axes[2][0]), ("divergence", axes[2][1]), ("mandelbrot", axes[2][2])]
    for kind, ax in panels:
        ov = res[kind.split(":")[1]] if ":" in kind else (res.get("overlap") or res.get("overlap_cpu"))
        what = "compute-bound" if kind.endswith("compute") else "copy-bound"
        kind = kind.split(":")[0]
        if kind.startswith("timeline"):
            key = "1" if kind == "timeline1" else str(max(int(k) for k in ov["timelines"]))
            for s in ov["timelines"][key]:
                ax.barh(s["stream"], (s["end"] - s["start"]) * 1e3, left=s["start"] * 1e3, height=0.6,
                        color=colors[s["phase"]], edgecolor="white", linewidth=0.3)
            ax.set_xlabel("ms since the first copy")
            ax.set_ylabel("stream")
            ax.set_title(f"{what}, {key} stream{'s' if key != '1' else ''}: each chunk's phases")
            ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()],
                      labels=names, loc="upper right", fontsize=7)
        elif kind == "walls":
            xs = [r["streams"] for r in ov["rows"]]
            med = [r["wall_s"]["median"] * 1e3 for r in ov["rows"]]
            err = [[m - r["wall_s"]["min"] * 1e3 for m, r in zip(med, ov["rows"])],
                   [r["wall_s"]["max"] * 1e3 - m for m, r in zip(med, ov["rows"])]]
            ax.bar([str(x) for x in xs], med, yerr=err, capsize=3, color="tab:purple", label="wall time")
            ax.plot([str(x) for x in xs], [r["bound_s"] * 1e3 for r in ov["rows"]], color="black", ls="--",
                    marker="_", label="bound: the largest phase total\n(the host's shared over the streams)")
            ax.axhline(ov["serial_s"] * 1e3, color="grey", ls=":", label="serial: the sum of the phases")
            ax.set_xlabel("streams")
            ax.set_ylabel("ms for all chunks")
            ax.set_title(f"latency hiding by overlap ({what})")
            ax.legend(fontsize=8)
        elif kind == "occupancy":
            oc = res["occupancy"]
            ws = [r["warps_per_sm"] for r in oc["rows"]]
            for key, label in (("scale1_gbs", "4-byte loads"), ("scale4_gbs", "16-byte loads")):
                ax.plot(ws, [r[key]["median"] for r in oc["rows"]], marker="o", label=label)
            ax.axhline(res["copies"]["d2d_gbs"]["median"], color="grey", ls=":", label="device copy")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("warps resident per SM")
            ax.set_ylabel("GB/s (read + written)")
            ax.set_title("latency hiding by occupancy")
            ax.legend(fontsize=8)
        elif kind == "divergence":
            dv = res["divergence"]
            ks = [r["paths"] for r in dv["rows"]]
            ax.plot(ks, [r["uniform_s"]["median"] * 1e3 for r in dv["rows"]], marker="o", label="paths by warp")
            ax.plot(ks, [r["divergent_s"]["median"] * 1e3 for r in dv["rows"]], marker="o",
                    label="paths by lane (divergent)")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("paths")
            ax.set_ylabel("ms")
            ax.set_title("SIMT: a warp runs every path its threads take")
            ax.legend(fontsize=8)
        elif kind == "mandelbrot":
            m = res["mandelbrot"]
            labels = [f"native kernels\n{m['cpu_workers']} CPUs", "GPU kernel\n+ copy back", "GPU kernel"]
            vals = [m["cpu_s"]["median"], m["gpu_with_copy_s"]["median"], m["gpu_kernel_s"]["median"]]
            ax.bar(labels, [v * 1e3 for v in vals], color=["tab:grey", "tab:green", "tab:orange"])
            ax.set_yscale("log")
            ax.set_ylabel("ms")
            ax.set_title(f"Mandelbrot {m['size']}x{m['size']}, {m['max_iter']} iterations")
    title = res["device"] or f"no GPU ({res['reason'][:60]}): the CPU backend"
    fig.suptitle(f"gilfree.gpu: {title}, {res['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_gpu.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a few seconds)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", help="a folder for bench_gpu.json and bench_gpu.png")
    a = ap.parse_args(argv)
    res = run(a.quick, a.repeat)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "bench_gpu.json"), "w") as f:
            json.dump(res, f, indent=1)
        try:
            plot(res, os.path.join(a.out, "bench_gpu.png"))
        except ImportError as e:
            print(f"no plot: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
