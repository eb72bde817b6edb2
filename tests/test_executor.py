"""Running a graph: stop drains, abort still finalizes, sources and sinks that fail are contained."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from conftest import IndexSource, RecordingSink
from stage_kit import graph_of

from pipeline.config import load_config
from pipeline.errors import SinkError
from pipeline.executor import Pipeline
from pipeline.graph import build_graph


def test_stop_drains_every_accepted_frame_and_finalizes_the_sink(run):
    async def scenario():
        sink = RecordingSink()
        graph = graph_of([{"name": "slow", "type": "jitter", "options": {"max_ms": 2.0}}])
        pipeline = Pipeline(graph, IndexSource(10_000), sink)
        task = asyncio.create_task(pipeline.run())
        await asyncio.sleep(0.1)
        pipeline.request_stop()
        report = await asyncio.wait_for(task, 10)
        return pipeline, sink, report

    pipeline, sink, report = run(scenario())
    accepted = report["frames"]["in"]
    assert 0 < accepted < 10_000
    assert sink.indices == list(range(accepted))
    assert not any(r["dropped"] for r in sink.records)
    assert report["interrupted"] is True and sink.closed == 1
    assert pipeline.ring.in_use == 0


def test_second_stop_aborts_in_flight_frames_but_still_closes_the_sink(run):
    async def scenario():
        sink = RecordingSink(delay_s=0.05)
        pipeline = Pipeline(graph_of([{"name": "s", "type": "stamp"}]), IndexSource(1000), sink)
        task = asyncio.create_task(pipeline.run())
        await asyncio.sleep(0.12)
        pipeline.request_stop()
        pipeline.request_stop()
        report = await asyncio.wait_for(task, 5)
        return pipeline, sink, report

    pipeline, sink, report = run(scenario())
    assert sink.closed == 1 and pipeline.ring.in_use == 0
    assert sink.indices == list(range(len(sink.records)))
    assert report["frames"]["dropped"].get("aborted", 0) > 0


def test_sink_failure_stops_the_run_with_a_sink_error_and_closes_it(run):
    sink = RecordingSink(fail_at=5)
    pipeline = Pipeline(graph_of([{"name": "s", "type": "stamp"}]), IndexSource(100), sink)
    with pytest.raises(SinkError, match="disk full"):
        run(pipeline.run())
    assert sink.closed == 1 and sink.indices == [0, 1, 2, 3, 4]
    assert pipeline.ring.in_use == 0


def test_source_failing_mid_stream_keeps_what_it_gave(run):
    source = IndexSource(100, fail_at=40)
    sink = RecordingSink()
    report = run(Pipeline(graph_of([{"name": "s", "type": "stamp"}]), source, sink).run())
    assert sink.indices == list(range(40))
    assert "device unplugged" in report["source_error"]
    assert source.closed and sink.closed == 1


def test_live_source_drops_oldest_unstarted_frames_when_stages_fall_behind(run):
    stages = [{"name": "slow", "type": "jitter", "options": {"max_ms": 8.0}}]
    graph = graph_of(stages, ring={"slots": 3}, quality={"mode": "off"})  # the ring alone, no scheduler
    sink = RecordingSink()
    report = run(Pipeline(graph, IndexSource(200, live=True, fps=1000), sink).run())
    assert sink.indices == list(range(200))  # every frame reaches the sink, in order (dropped ones as markers)
    dropped = report["frames"]["dropped"].get("ring_full", 0)
    assert dropped > 50 and report["frames"]["out"] == 200 - dropped
    assert report["ring"]["policy"] == "latest"
    # The newest frame wins: the last frame of the run is delivered, not dropped.
    assert not sink.records[-1]["dropped"]


def test_report_holds_latency_fps_stages_and_queues(run):
    graph = graph_of([{"name": "a", "type": "stamp"}, {"name": "b", "type": "stamp", "after": ["a"]}])
    report = run(Pipeline(graph, IndexSource(300), RecordingSink()).run())
    assert report["frames"] == {"in": 300, "out": 300, "dropped": {}}
    e2e = report["latency_ms"]["end_to_end"]
    assert e2e["count"] == 300 and 0 < e2e["p50"] <= e2e["p95"] <= e2e["p99"] <= e2e["max"]
    assert report["fps"]["out"] > 0 and report["fps"]["in"] > 0
    assert set(report["stages"]) == {"a", "b"} and report["stages"]["a"]["latency_ms"]["count"] == 300
    assert set(report["queues"]) == {"a", "b"}
    assert report["queues"]["b"]["samples"] >= 1
    assert report["leaked_slots"] == 0 and report["device"] == "cpu"


def test_queue_in_front_of_a_slow_stage_shows_its_depth_and_the_age_of_its_oldest_frame(run):
    graph = graph_of(
        [
            {"name": "fast", "type": "stamp"},
            {"name": "slow", "type": "jitter", "after": ["fast"], "options": {"max_ms": 4.0}},
        ],
        queue_size=3,
    )
    report = run(Pipeline(graph, IndexSource(150), RecordingSink()).run())
    slow = report["queues"]["slow"]
    assert slow["samples"] >= 5
    assert 1 <= slow["max_depth"] <= 3 and slow["mean_depth"] > 0.5
    age = slow["oldest_frame_age_ms"]
    assert age["count"] >= 1 and 0 < age["p50"] <= age["max"] < 1000


def test_two_cpu_heavy_stages_overlap(run):
    """Two matmul stages on their own threads: the run takes clearly less than their summed time."""
    threads = torch.get_num_threads()
    try:
        stages = [
            {"name": "m1", "type": "matmul", "options": {"size": 384, "repeats": 6}},
            {"name": "m2", "type": "matmul", "options": {"size": 384, "repeats": 6}},
        ]
        graph = graph_of(stages)
        run(Pipeline(graph, IndexSource(3), RecordingSink()).run())  # warm up
        start = time.perf_counter()
        report = run(Pipeline(graph, IndexSource(30), RecordingSink()).run())
        wall = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    busy = sum(report["stages"][name]["latency_ms"]["mean"] * 30 / 1000 for name in ("m1", "m2"))
    assert wall < 0.8 * busy, f"wall {wall:.3f}s vs summed stage time {busy:.3f}s"


def test_steady_state_frames_take_nothing_new_from_the_scratch_pool(run):
    graph = build_graph(load_config("default"))
    pipeline = Pipeline(graph, IndexSource(5, width=64, height=48), RecordingSink())
    run(pipeline.run())
    warm = {name: pool["misses"] for name, pool in pipeline.report()["scratch"].items()}
    longer = Pipeline(graph, IndexSource(200, width=64, height=48), RecordingSink())
    run(longer.run())
    after = {name: pool["misses"] for name, pool in longer.report()["scratch"].items()}
    assert after == warm  # misses happen while warming up only, never per frame
    stats = longer.report()["scratch"]["frame_stats"]
    assert stats["hits"] + stats["misses"] == 3 * 200 - 1  # the first frame has no previous to diff against
    assert stats["misses"] == 3
