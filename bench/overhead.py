#!/usr/bin/env python3
"""What the runtime costs per stage hop, against a bare chain of asyncio queues in the same run.

Ours: real `Frame`s leasing real ring slots, through a graph of N pass-through stages with
metrics on, into a null sink. Bare: N `asyncio.Queue(maxsize=4)` joined by forwarding tasks.
Both move the same number of frames; the table shows fps and microseconds per hop, and the last
line is one JSON object: {"us_per_hop", "bare_us_per_hop", "ratio", …}.

    python bench/overhead.py [--frames 20000] [--stages 5] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import parse_config
from pipeline.executor import Pipeline
from pipeline.frames import Frame
from pipeline.graph import build_graph
from pipeline.io.base import Source, StreamInfo
from pipeline.io.sinks import NullSink
from pipeline.ringbuffer import RingBuffer

BARE_QUEUE_SIZE = 4  # as asked of the baseline: asyncio.Queue(maxsize=4)


class LeasingSource(Source):
    """Leases a slot per frame and stamps it, but draws nothing: only the runtime is measured."""

    def __init__(self, count: int):
        self.count = count
        self._info = StreamInfo(64, 36, Fraction(30), Fraction(1, 30))

    @property
    def info(self) -> StreamInfo:
        return self._info

    async def frames(self, ring: RingBuffer) -> AsyncIterator[Frame]:
        time_base = self._info.time_base
        for index in range(self.count):
            lease = await ring.acquire()
            yield Frame(index, index, time_base, time.monotonic_ns(), lease)


async def run_ours(frames: int, stages: int) -> tuple[float, dict]:
    config = parse_config(
        {
            "name": "overhead",
            "queue_size": BARE_QUEUE_SIZE,
            # As many frames in flight as the bare chain can hold, so neither waits on the other's limit.
            "ring": {"slots": BARE_QUEUE_SIZE * (stages + 1)},
            "stages": [
                {"name": f"s{i}", "type": "passthrough", **({"after": [f"s{i - 1}"]} if i else {})}
                for i in range(stages)
            ],
        }
    )
    sink = NullSink()
    pipeline = Pipeline(build_graph(config), LeasingSource(frames), sink)
    start = time.perf_counter()
    report = await pipeline.run()
    wall = time.perf_counter() - start
    assert sink.frames == frames and report["leaked_slots"] == 0
    return wall, report


async def run_bare(frames: int, stages: int) -> float:
    queues = [asyncio.Queue(maxsize=BARE_QUEUE_SIZE) for _ in range(stages)]
    done = asyncio.Event()

    async def produce() -> None:
        for index in range(frames):
            await queues[0].put(index)

    async def forward(inbox: asyncio.Queue, outbox: asyncio.Queue) -> None:
        while True:
            await outbox.put(await inbox.get())

    async def consume() -> None:
        for _ in range(frames):
            await queues[-1].get()
        done.set()

    start = time.perf_counter()
    tasks = [asyncio.create_task(forward(a, b)) for a, b in itertools.pairwise(queues)]
    tasks += [asyncio.create_task(produce()), asyncio.create_task(consume())]
    await done.wait()
    wall = time.perf_counter() - start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--stages", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs of each; medians reported")
    args = parser.parse_args()
    hops = args.frames * args.stages

    asyncio.run(run_ours(500, args.stages))  # warm up imports and caches
    asyncio.run(run_bare(500, args.stages))
    ours_walls, bare_walls = [], []
    report: dict = {}
    for _ in range(args.repeats):
        gc.collect()
        wall, report = asyncio.run(run_ours(args.frames, args.stages))
        ours_walls.append(wall)
        gc.collect()
        bare_walls.append(asyncio.run(run_bare(args.frames, args.stages)))
    ours, bare = statistics.median(ours_walls), statistics.median(bare_walls)
    us_ours, us_bare = ours / hops * 1e6, bare / hops * 1e6

    print(f"{args.frames} frames through {args.stages} stages, median of {args.repeats} alternating runs")
    print(f"{'chain':<34}{'fps':>12}{'us/hop':>10}")
    print(f"{'ours (frames, ring, metrics)':<34}{args.frames / ours:>12,.0f}{us_ours:>10.2f}")
    print(f"{'bare asyncio.Queue(maxsize=4)':<34}{args.frames / bare:>12,.0f}{us_bare:>10.2f}")
    print(f"ratio ours / bare: {us_ours / us_bare:.2f}  (target <= 2.0)")
    e2e = report["latency_ms"]["end_to_end"]
    print(f"end-to-end latency through the chain: p50 {e2e['p50']:.3f} ms, p99 {e2e['p99']:.3f} ms")
    print(
        json.dumps(
            {
                "us_per_hop": round(us_ours, 3),
                "bare_us_per_hop": round(us_bare, 3),
                "ratio": round(us_ours / us_bare, 3),
                "fps": round(args.frames / ours),
                "bare_fps": round(args.frames / bare),
                "stages": args.stages,
                "frames": args.frames,
            }
        )
    )


if __name__ == "__main__":
    main()
