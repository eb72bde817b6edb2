#!/usr/bin/env python3
"""End-to-end latency against offered load, with the frame scheduler on and off, in one run.

The real graph (configs/default.yaml: emotion, voice, avatar, context, meters) on a live
synthetic source. First the graph's capacity on this machine is measured: frames per second
with the source unpaced and nothing lowered. Then, for each offered load (a multiple of that
capacity), the source is paced at load × capacity for `--seconds`, once with the scheduler
(`quality.mode: live`) and once without (`off`: frames go through at full quality, and a full
ring drops the oldest waiting frame — dropping by queue length, as most tools do). Latency is
capture to sink, of delivered frames, over the second half of each run (after the scheduler
has settled: at 4× it walks down all eight rungs this graph and sink have, at most one per
0.5 s and each measured before the next, which takes it 4–5 s on a 2-core CPU; the default
12 s leaves it 6). `targets.fps` is lifted out of the way so the offered load is what it says.

The source behaves as a camera: each frame is stamped at its due time, so time spent waiting
for a ring slot counts in its latency, and frames it could not hand over while the pipeline
was not taking any are counted as missed. Each run reports frames offered and taken in, ring
waits and ring reclaims (a full ring dropping its oldest waiting frame) beside the latencies.

Target: with the scheduler on, p99 ≤ budget at every load up to 4×.

    python bench/latency_under_load.py [--seconds 12] [--budget-ms 50] [--loads 0.5,1,1.5,2,3,4] [--device cuda]
                                       [--capacity FPS]

Writes bench/results/latency_under_load.png (needs matplotlib: pip install -e '.[bench]');
the last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import GraphConfig, load_config, with_targets  # noqa: E402
from pipeline.executor import Pipeline  # noqa: E402
from pipeline.frames import Frame  # noqa: E402
from pipeline.graph import build_graph  # noqa: E402
from pipeline.io.sinks import NullSink  # noqa: E402
from pipeline.io.synthetic import SyntheticSource  # noqa: E402

RESULTS = ROOT / "bench" / "results"
NO_FPS_CAP = 1000.0  # targets.fps: out of the way, so the offered load reaches the graph


class LatencySink(NullSink):
    """Keeps (delivery time s, end-to-end latency ms) of every delivered frame."""

    def __init__(self) -> None:
        super().__init__()
        self.samples: list[tuple[float, float]] = []

    async def write(self, frame: Frame) -> None:
        await super().write(frame)
        if frame.has_image:  # not dropped, nor a frame of sound alone
            now = time.monotonic_ns()
            self.samples.append((now / 1e9, (now - frame.capture_ns) / 1e6))


def source(
    fps: float, *, live: bool, frames: int | None, scene: str, device: str, size: tuple[int, int]
) -> SyntheticSource:
    fps_q = Fraction(fps).limit_denominator(1000)
    width, height = size
    return SyntheticSource(width=width, height=height, fps=fps_q, frames=frames, live=live, scene=scene, device=device)


async def measure_capacity(config: GraphConfig, frames: int, scene: str, device: str, size: tuple[int, int]) -> float:
    """Frames per second of the graph with the source unpaced and quality fixed at full."""
    sink = LatencySink()
    pipeline = Pipeline(
        build_graph(with_targets(config, quality="off")),
        source(30, live=False, frames=frames, scene=scene, device=device, size=size),
        sink,
        device=device,
    )
    start = time.monotonic()
    await pipeline.run()
    return sink.frames / (time.monotonic() - start)


async def run_at(
    config: GraphConfig, fps: float, seconds: float, scene: str, mode: str, device: str, size: tuple[int, int]
) -> dict:
    sink = LatencySink()
    pipeline = Pipeline(
        build_graph(with_targets(config, quality=mode)),
        source(fps, live=True, frames=None, scene=scene, device=device, size=size),
        sink,
        device=device,
    )
    task = asyncio.create_task(pipeline.run())
    started = time.monotonic()
    await asyncio.sleep(seconds)
    pipeline.request_stop()
    report = await task
    settled = [latency for t, latency in sink.samples if t >= started + seconds / 2]
    delivered = len(settled)
    quality = report["quality"]
    offered = report["source_stats"]
    return {
        "device": report["device"],
        "offered": offered["offered"],  # frames the source's schedule made, taken or not
        "taken": offered["taken"],  # frames the pipeline took in
        "ring_waits": report["ring"]["waits"],  # times the source waited for a free slot
        "reclaimed": report["ring"]["reclaimed"],  # frames a full ring dropped for a newer one
        "p50": float(np.percentile(settled, 50)) if settled else float("nan"),
        "p95": float(np.percentile(settled, 95)) if settled else float("nan"),
        "p99": float(np.percentile(settled, 99)) if settled else float("nan"),
        "fps": delivered / (seconds / 2),
        "drops": sum(report["frames"]["dropped"].values()),
        "rung": quality.get("rung", "full"),
        "changes": quality.get("changes", 0),
    }


def plot(path: Path, loads: list[float], on: list[dict], off: list[dict], budget_ms: float, capacity: float) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install -e '.[bench]')"
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 8), sharex=True)
    for runs, label, colour in ((on, "scheduler on", "tab:blue"), (off, "scheduler off", "tab:red")):
        top.plot(loads, [r["p99"] for r in runs], "o-", color=colour, label=f"p99, {label}")
        top.plot(loads, [r["p50"] for r in runs], "o--", color=colour, alpha=0.6, label=f"p50, {label}")
        bottom.plot(loads, [r["fps"] for r in runs], "o-", color=colour, label=label)
    top.axhline(budget_ms, color="black", linewidth=1, linestyle=":", label=f"budget {budget_ms:g} ms")
    top.set_yscale("log")
    top.set_ylabel("end-to-end latency (ms)")
    top.legend(fontsize=8)
    top.set_title(f"default graph, capacity {capacity:.1f} fps on this machine")
    bottom.plot(loads, [load * capacity for load in loads], ":", color="grey", label="offered")
    bottom.set_xlabel("offered load (× capacity)")
    bottom.set_ylabel("delivered fps")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return f"plot: {path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="per load and mode; the second half is measured")
    parser.add_argument("--budget-ms", type=float, default=50.0)
    parser.add_argument("--loads", default="0.5,1,1.5,2,3,4", help="offered loads, × the measured capacity")
    parser.add_argument("--capacity-frames", type=int, default=240, help="frames to measure the capacity on")
    parser.add_argument(
        "--capacity",
        type=float,
        help="fps to take as the capacity instead of measuring it: two versions compared at the same offered rates",
    )
    parser.add_argument("--scene", choices=["face", "card"], default="face", help="face: the emotion stage has a face")
    parser.add_argument("--device", default="cpu", help="where the graph runs: cpu, cuda, cuda:1, …")
    parser.add_argument("--size", default="640x360", help="picture size WxH (even numbers), e.g. 1920x1080")
    parser.add_argument("--plot", type=Path, default=RESULTS / "latency_under_load.png", help="where the PNG goes")
    args = parser.parse_args()
    try:
        width, height = (int(n) for n in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must be WxH, e.g. 1280x720, got {args.size!r}")
    size = (width, height)
    logging.basicConfig(level=logging.WARNING)
    loads = [float(x) for x in args.loads.split(",")]
    config = with_targets(load_config("default"), latency_ms=args.budget_ms, fps=NO_FPS_CAP)
    torch.set_grad_enabled(False)

    asyncio.run(measure_capacity(config, 30, args.scene, args.device, size))  # warm up models and caches
    capacity = args.capacity or asyncio.run(
        measure_capacity(config, args.capacity_frames, args.scene, args.device, size)
    )
    on, off = [], []
    for load in loads:
        on.append(asyncio.run(run_at(config, load * capacity, args.seconds, args.scene, "live", args.device, size)))
        off.append(asyncio.run(run_at(config, load * capacity, args.seconds, args.scene, "off", args.device, size)))

    device = on[0]["device"] if on else args.device  # as the runs report it
    given = " (given)" if args.capacity else ""
    print(f"default graph on a live synthetic {args.size} source ({args.scene}), {device}")
    print(f"capacity {capacity:.1f} fps{given}")
    print(f"budget {args.budget_ms:g} ms; latency of delivered frames over the second half of {args.seconds:g} s")
    print("in: frames taken in / offered by the source; waits: for a ring slot; recl: dropped by a full ring")
    head = f"{'load':>5} {'offered':>8} | {'p50 on':>7} {'p99 on':>7} {'fps on':>7} {'in on':>11} {'waits':>5}"
    head += f" {'recl':>5} {'rung at end':<27} | {'p50 off':>7} {'p99 off':>8} {'fps off':>7} {'in off':>11}"
    print(head + f" {'waits':>5} {'recl':>5}")
    for load, a, b in zip(loads, on, off, strict=True):
        print(
            f"{load:>5.1f} {load * capacity:>8.1f} | {a['p50']:>7.1f} {a['p99']:>7.1f} {a['fps']:>7.1f} "
            f"{a['taken']:>5}/{a['offered']:<5} {a['ring_waits']:>5} {a['reclaimed']:>5} {a['rung']:<27} | "
            f"{b['p50']:>7.1f} {b['p99']:>8.1f} {b['fps']:>7.1f} {b['taken']:>5}/{b['offered']:<5} "
            f"{b['ring_waits']:>5} {b['reclaimed']:>5}"
        )
    met = all(r["p99"] <= args.budget_ms for r in on)
    print(f"target p99 <= {args.budget_ms:g} ms at every load with the scheduler on: {'met' if met else 'NOT met'}")
    print(plot(args.plot, loads, on, off, args.budget_ms, capacity))
    print(
        json.dumps(
            {
                "budget_ms": args.budget_ms,
                "device": device,
                "size": args.size,
                "capacity_fps": round(capacity, 2),
                "load": loads,
                "p99_ms_on": [round(r["p99"], 2) for r in on],
                "p99_ms_off": [round(r["p99"], 2) for r in off],
                "p50_ms_on": [round(r["p50"], 2) for r in on],
                "p50_ms_off": [round(r["p50"], 2) for r in off],
                "p95_ms_on": [round(r["p95"], 2) for r in on],
                "fps_on": [round(r["fps"], 2) for r in on],
                "fps_off": [round(r["fps"], 2) for r in off],
                "rung_on": [r["rung"] for r in on],
                "offered_on": [r["offered"] for r in on],
                "taken_on": [r["taken"] for r in on],
                "ring_waits_on": [r["ring_waits"] for r in on],
                "reclaimed_on": [r["reclaimed"] for r in on],
                "offered_off": [r["offered"] for r in off],
                "taken_off": [r["taken"] for r in off],
                "ring_waits_off": [r["ring_waits"] for r in off],
                "reclaimed_off": [r["reclaimed"] for r in off],
                "target_met": met,
            }
        )
    )


if __name__ == "__main__":
    main()
