"""Under overload the default graph keeps delivering frames: side work falls behind, the frames never stop.

A live synthetic source (a face, a tone) is offered to the real default graph at its measured
capacity and at three times it, with the scheduler on. This checks delivery, not latency (a
timing belongs in `bench/latency_under_load.py`), so it holds on a slow or busy machine.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from fractions import Fraction

from pipeline.config import load_config, with_targets
from pipeline.executor import Pipeline
from pipeline.graph import build_graph
from pipeline.io.sinks import NullSink
from pipeline.io.synthetic import SyntheticSource

SIZE = {"width": 320, "height": 240}
SECONDS = 4.0


class Deliveries(NullSink):
    """When each picture reached the sink."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    async def write(self, frame) -> None:
        await super().write(frame)
        if frame.has_image:
            self.times.append(time.monotonic())


def capacity_fps(config) -> float:
    sink = Deliveries()
    source = SyntheticSource(fps=30, frames=60, live=False, scene="face", **SIZE)
    pipeline = Pipeline(build_graph(with_targets(config, quality="off")), source, sink)
    started = time.monotonic()
    asyncio.run(pipeline.run())
    return len(sink.times) / (time.monotonic() - started)


def offered(config, fps: float) -> tuple[list[float], float, float, dict]:
    """Delivery times of a live run offered `fps` for `SECONDS`, its start and stop times, its report."""
    sink = Deliveries()
    source = SyntheticSource(fps=Fraction(fps).limit_denominator(1000), frames=None, live=True, scene="face", **SIZE)
    pipeline = Pipeline(build_graph(config), source, sink)

    async def run() -> tuple[float, float, dict]:
        task = asyncio.create_task(pipeline.run())
        started = time.monotonic()
        await asyncio.sleep(SECONDS)
        stopped = time.monotonic()
        pipeline.request_stop()
        return started, stopped, await asyncio.wait_for(task, 30)

    started, stopped, report = asyncio.run(run())
    return sink.times, started, stopped, report


def test_at_three_times_capacity_the_default_graph_keeps_delivering_frames():
    config = with_targets(load_config("default"), quality="live", fps=1000.0)  # the load reaches the graph
    capacity_fps(config)  # warm the models up
    capacity = capacity_fps(config)
    at_capacity, *_ = offered(config, capacity)
    times, started, stopped, report = offered(config, 3 * capacity)
    edges = [started, *times, stopped]
    gaps = [later - earlier for earlier, later in itertools.pairwise(edges)]
    why = f"capacity {capacity:.0f} fps; delivered {len(times)} at 3x, {len(at_capacity)} at 1x; {report['quality']}"
    assert max(gaps) <= 1.0, f"a {max(gaps):.2f} s gap with no frame delivered ({why})"
    assert len(times) >= len(at_capacity) / 5, why
    jobs = report["side_work"]
    # The side work ran beside the frames: what always has work (the faces, the listening), and
    # every job that was given any (recognition is given none: the test signal says nothing).
    for name in ("emotion.detect", "emotion.read", "voice.listen"):
        assert jobs[name]["run"] >= 1, f"{name}: {jobs[name]}"
    for name, job in jobs.items():
        assert job["beside"] and (job["submitted"] == 0 or job["run"] >= 1), f"{name}: {job}"
