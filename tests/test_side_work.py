"""Side jobs: work beside the frames that the runtime owns, coordinated with its own graph's frames."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time

import pytest
import torch
from conftest import IndexSource, RecordingSink, wait_for
from stage_kit import TEST_TYPES, graph_of

from pipeline.config import parse_config
from pipeline.executor import Pipeline
from pipeline.graph import build_graph
from pipeline.registry import stage_types
from pipeline.side_work import CPU_SHARE, FramesInFlight, JobKind, SideJob, SideWork
from pipeline.stage import Stage, StageContext


def beside(work, kind=JobKind.LATEST, **options) -> SideJob:
    return SideJob(work, name="test", kind=kind, beside=True, **options)


def test_latest_wins_replaces_a_waiting_request_and_gives_the_newest_result():
    release = threading.Event()
    ran = []

    def work(n):
        ran.append(n)
        if n == 1:
            release.wait(5)
        return n * 10

    job = beside(work)
    try:
        job.submit(1)
        assert wait_for(lambda: ran == [1])  # running, and holding the thread
        job.submit(2)
        job.submit(3)  # replaces 2, which never ran
        assert job.take() is None and job.busy and job.waiting == 1
        release.set()
        assert wait_for(lambda: not job.busy)
        assert ran == [1, 3]
        assert job.take() == 30  # the newest; 10 was superseded
        assert job.take() is None  # taken once
        assert (job.stats.submitted, job.stats.run, job.stats.replaced, job.stats.superseded) == (3, 2, 1, 1)
    finally:
        release.set()
        job.close()


def test_in_order_keeps_order_and_drops_the_oldest_past_its_lag():
    release = threading.Event()
    ran = []

    def work(n):
        ran.append(n)
        release.wait(5)
        return n

    job = beside(work, JobKind.IN_ORDER, max_lag=3)
    try:
        job.submit(0)
        assert wait_for(lambda: ran == [0])  # running, and holding the thread
        for n in range(1, 8):  # 1..7 wait, at most 3 of them
            job.submit(n)
            assert job.waiting <= 3
        release.set()
        job.drain()
        assert ran == [0, 5, 6, 7]  # in order; 1..4 dropped, oldest first
        assert job.take() == [0, 5, 6, 7] and job.take() == []
        assert job.stats.dropped == 4 and job.stats.most_waiting == 3
    finally:
        release.set()
        job.close()


def test_a_failing_run_raises_on_the_frame_that_takes_it_and_the_job_goes_on():
    def work(n):
        if n == 1:
            raise ValueError("broken model")
        return n

    for kind in (JobKind.LATEST, JobKind.IN_ORDER):
        job = beside(work, kind)
        try:
            job.submit(1)
            job.drain()
            with pytest.raises(ValueError, match="broken model"):
                job.take()
            job.submit(2)
            job.drain()
            assert job.take() == (2 if kind is JobKind.LATEST else [2])
            assert job.stats.failed == 1
        finally:
            job.close()
    ordered = beside(work, JobKind.IN_ORDER)
    try:
        for n in (0, 1, 2):
            ordered.submit(n)
        ordered.drain()
        assert ordered.take() == [0]  # the results before the failure first...
        with pytest.raises(ValueError):
            ordered.take()  # ...then the failure, on the next frame...
        assert ordered.take() == [2]  # ...and nothing after it is lost
    finally:
        ordered.close()


def test_in_line_a_job_runs_at_once_in_the_callers_thread():
    threads = []
    job = SideJob(
        lambda n: threads.append(threading.current_thread()) or n, name="t", kind=JobKind.LATEST, beside=False
    )
    job.submit(4)
    assert job.take() == 4 and threads == [threading.current_thread()] and not job.busy
    assert not SideWork("auto", live=False).beside and SideWork("auto", live=True).beside
    assert SideWork("beside").beside and not SideWork("inline", live=True).beside


def test_a_wait_for_the_frames_in_flight_ends_when_the_last_leaves_and_is_bounded():
    frames = FramesInFlight()
    first, second = frames.enter(), frames.enter()
    done = threading.Event()
    threading.Thread(target=lambda: (frames.wait_for_current(5.0), done.set())).start()
    assert not done.wait(0.1)
    frames.leave(second)
    assert not done.wait(0.05)  # still one
    frames.leave(first)
    assert done.wait(2.0)
    assert frames.wait_for_current(5.0) == 0.0  # nothing in flight: no wait at all
    frames.enter()  # a frame that never comes out
    started = time.monotonic()
    assert 0.04 < frames.wait_for_current(0.05) < 1.0
    assert time.monotonic() - started < 1.0


def test_frames_that_arrive_during_a_wait_are_not_waited_for():
    """At overload a frame is always in flight: a job waits for those in flight when it starts."""
    frames = FramesInFlight()
    old = frames.enter()
    done = threading.Event()
    threading.Thread(target=lambda: (frames.wait_for_current(5.0), done.set())).start()
    assert not done.wait(0.05)
    frames.enter()  # newer, still in flight when the old one leaves
    frames.leave(old)
    assert done.wait(2.0) and frames.count == 1


def test_a_job_starts_between_its_own_graphs_frames_only():
    mine, other = FramesInFlight(), FramesInFlight()
    started = threading.Event()
    job = beside(lambda: started.set(), frames=mine, max_wait_s=5.0)
    try:
        other.enter()  # another session's frame: not this job's business
        ticket = mine.enter()
        job.submit()
        assert not started.wait(0.05)
        mine.leave(ticket)
        assert started.wait(2.0)
        assert job.stats.waits == 1 and 0.04 < job.stats.waited_s < 2.0
    finally:
        job.close()


def test_a_job_thread_is_served_after_its_stage():
    if not sys.platform.startswith("linux"):
        pytest.skip("thread nice values are Linux's")
    nice = []
    work = SideWork("beside")
    job = work.job(
        lambda: nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())),
        name="n",
        kind=JobKind.LATEST,
        stage_nice=2,
    )
    job.submit()
    job.drain()
    work.close()
    assert nice == [max(7, os.getpriority(os.PRIO_PROCESS, 0))]  # 5 steps behind (lowering needs privilege)


def test_a_latest_wins_job_rests_after_each_run_to_keep_to_its_share():
    starts, ends = [], []

    def work(n):
        starts.append(time.monotonic())
        time.sleep(0.02)
        ends.append(time.monotonic())
        return n

    job = beside(work, share=0.25)
    try:
        for n in range(3):
            job.submit(n)
            assert wait_for(lambda n=n: len(starts) == n + 1)
            assert job.busy  # running, then resting: a frame asking "busy?" does not ask again
        assert wait_for(lambda: not job.busy)
    finally:
        job.close()
    for ran_from, ran_to, next_start in zip(starts, ends, starts[1:], strict=False):
        assert next_start - ran_from >= (ran_to - ran_from) / 0.25 * 0.99  # 3× its run, resting
    assert job.stats.rested_s >= 3 * 3 * 0.02 * 0.99


def test_a_cadence_lowers_the_share_of_a_stages_latest_wins_jobs_only():
    work = SideWork("beside", live=True)
    try:
        detect = work.job(lambda: None, name="emotion.detect", kind=JobKind.LATEST, stage="emotion")
        listen = work.job(lambda: None, name="emotion.listen", kind=JobKind.IN_ORDER, stage="emotion")
        ask = work.job(lambda: None, name="context.ask", kind=JobKind.LATEST, stage="context", between_frames=False)
        other = work.job(lambda: None, name="other.detect", kind=JobKind.LATEST, stage="other")
        assert (detect.share, listen.share, ask.share) == (CPU_SHARE, 1.0, 1.0)  # sharing the CPU with frames
        work.set_cadence("emotion", 3)
        assert (detect.share, listen.share, other.share) == (CPU_SHARE / 3, 1.0, CPU_SHARE)
        work.set_cadence("emotion", 1)
        assert detect.share == CPU_SHARE
        assert work.report()["emotion.detect"]["share"] == round(CPU_SHARE, 4)
    finally:
        work.close()
    with pytest.raises(ValueError, match="share"):
        beside(lambda: None, share=0.0)


def test_a_job_resting_after_a_run_stops_at_once_when_closed():
    job = beside(lambda: time.sleep(0.05), share=0.001)  # a rest of about 50 s
    job.submit()
    assert wait_for(lambda: job.stats.run == 1)
    start = time.monotonic()
    job.close()
    assert time.monotonic() - start < 2.0


class Beside(Stage):
    """Asks a latest-wins side job for each frame's index; annotates with the newest result."""

    type_name = "beside"

    def setup(self, ctx: StageContext) -> None:
        super().setup(ctx)
        self.job = ctx.side_job(lambda n: (time.sleep(0.002), n)[1], "echo", kind=JobKind.LATEST)

    async def process(self, frame):
        self.job.submit(frame.index)
        return {"newest": self.job.take()}


def side_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.endswith("-side")]


def test_jobs_stop_with_their_graph_however_many_sessions_come_and_go(run):
    config = parse_config({"name": "t", "stages": [{"name": "b", "type": "beside"}]})
    types = {**stage_types(), **TEST_TYPES, "beside": Beside}
    before = len(side_threads())

    async def sessions():
        for _ in range(3):  # several at once, many times
            pipelines = [
                Pipeline(build_graph(config, types), IndexSource(20, live=True, fps=400), RecordingSink())
                for _ in range(4)
            ]
            reports = await asyncio.gather(*(p.run() for p in pipelines))
            for report in reports:
                assert report["side_work"]["b.echo"]["submitted"] == 20
                assert report["side_work"]["b.echo"]["beside"] is True

    run(sessions())
    assert wait_for(lambda: len(side_threads()) == before)


def test_live_frames_count_until_their_sink_has_them_and_none_stay_counted(run):
    seen = []
    pipelines = []

    class Watch(RecordingSink):
        async def write(self, frame):
            seen.append(pipelines[-1].frames_in_flight.count)
            await super().write(frame)

    stages = [{"name": "a", "type": "jitter", "options": {"max_ms": 2.0}}, {"name": "b", "type": "stamp"}]
    pipelines.append(Pipeline(graph_of(stages), IndexSource(60, live=True, fps=200), Watch()))
    run(pipelines[-1].run())
    assert pipelines[-1].frames_in_flight.count == 0
    assert len(seen) == 60 and min(seen) >= 1  # the frame being written counts
    pipelines.append(Pipeline(graph_of(stages), IndexSource(20), Watch()))
    run(pipelines[-1].run())  # a file run: nothing counted
    assert seen[60:] == [0] * 20


def test_an_aborted_live_run_leaves_nothing_counted(run):
    stages = [{"name": "s", "type": "jitter", "options": {"max_ms": 5.0}}]
    pipeline = Pipeline(graph_of(stages), IndexSource(1000, live=True, fps=500), RecordingSink(delay_s=0.05))

    async def scenario():
        task = asyncio.create_task(pipeline.run())
        await asyncio.sleep(0.12)
        pipeline.request_stop()
        pipeline.request_stop()
        await asyncio.wait_for(task, 5)

    run(scenario())
    assert pipeline.frames_in_flight.count == 0


def test_a_picture_counts_until_the_webrtc_sender_is_done_encoding_it(run):
    import av

    from pipeline.webrtc.tracks import PeerSink

    frames = FramesInFlight()

    async def scenario():
        sink = PeerSink()
        sink.hold_tickets(frames)
        track = sink.video
        picture = av.VideoFrame(16, 16, "yuv420p")
        track.put(picture)
        track.put(picture)  # a newer one replaces it: still one picture in flight
        assert frames.count == 1
        assert await track.recv() is picture
        assert frames.count == 1  # being encoded and sent
        asking = asyncio.ensure_future(track.recv())  # the sender asks for the next: done with the last
        await asyncio.sleep(0.01)
        assert frames.count == 0 and not asking.done()
        track.put(picture)
        assert await asking is picture and frames.count == 1
        track.stop()
        assert frames.count == 0

    run(scenario())


class Breaks(Stage):
    """A latest-wins side job that raises on frame 3's request."""

    type_name = "breaks"

    def setup(self, ctx: StageContext) -> None:
        super().setup(ctx)
        self.job = ctx.side_job(self.work, "work", kind=JobKind.LATEST)

    @staticmethod
    def work(n: int) -> int:
        if n == 3:
            raise ValueError(f"cannot read frame {n}")
        return n

    async def process(self, frame):
        self.job.submit(frame.index)
        return {"newest": self.job.take()}


@pytest.mark.parametrize("side_work", ["inline", "beside"])
def test_a_failing_side_job_costs_the_frame_that_takes_it_its_annotation_and_nothing_more(run, side_work):
    config = parse_config({"name": "t", "side_work": side_work, "stages": [{"name": "b", "type": "breaks"}]})
    types = {**stage_types(), **TEST_TYPES, "breaks": Breaks}
    sink = RecordingSink()
    source = IndexSource(12, live=True, fps=100)
    report = run(Pipeline(build_graph(config, types), source, sink).run())
    annotations = [record["annotations"]["b"] for record in sink.records]
    failed = [a for a in annotations if a.get("missing")]
    assert len(failed) == 1 and "ValueError: cannot read frame 3" in failed[0]["reason"]
    assert annotations[-1] == {"newest": 11} or side_work == "beside"  # in line: each frame's own result
    assert any((a.get("newest") or 0) > 3 for a in annotations)  # the job went on after the failure
    assert report["side_work"]["b.work"]["failed"] == 1 and report["stages"]["b"]["errors"] == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_a_job_queues_its_work_on_a_least_urgent_stream_of_its_own():
    device = torch.device("cuda", 0)
    streams = []
    work = SideWork("beside", device=device)
    job = work.job(lambda: streams.append(torch.cuda.current_stream(device)), name="s", kind=JobKind.LATEST)
    job.submit()
    job.drain()
    work.close()
    (stream,) = streams
    assert stream != torch.cuda.default_stream(device)
    assert stream.priority == torch.cuda.Stream.priority_range()[0]
