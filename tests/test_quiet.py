"""Quiet moments: work beside the frames starts once no live frame is in the stages, or after a bounded wait."""

from __future__ import annotations

import asyncio
import threading
import time

import torch
from conftest import IndexSource, RecordingSink
from stage_kit import graph_of

from pipeline.executor import Pipeline
from pipeline.quiet import ACTIVITY, FrameActivity
from pipeline.stages.background_detection import BackgroundDetector


def test_a_wait_ends_when_the_last_frame_leaves():
    activity = FrameActivity()
    first, second = activity.enter(), activity.enter()
    done = threading.Event()

    def job():
        activity.wait_quiet(max_wait_s=5.0)
        done.set()

    threading.Thread(target=job).start()
    assert not done.wait(0.1)  # two frames in the stages
    activity.leave(second)
    assert not done.wait(0.1)  # still one
    activity.leave(first)
    assert done.wait(2.0)
    assert activity.busy == 0 and activity.waits == 1 and 0.15 < activity.waited_s < 2.0


def test_a_wait_never_outlasts_its_bound_and_costs_nothing_when_quiet():
    activity = FrameActivity()
    started = time.monotonic()
    activity.wait_quiet(max_wait_s=5.0)
    assert time.monotonic() - started < 0.05 and activity.waits == 0
    activity.enter()  # a frame that never comes out
    started = time.monotonic()
    activity.wait_quiet(max_wait_s=0.05)
    assert 0.04 < time.monotonic() - started < 1.0


def test_frames_that_arrive_during_a_wait_are_not_waited_for():
    """With many sessions a frame is nearly always in flight: a job waits for those in flight
    when it asks, not for a moment with none."""
    activity = FrameActivity()
    old = activity.enter()
    done = threading.Event()

    def job():
        activity.wait_quiet(max_wait_s=5.0)
        done.set()

    threading.Thread(target=job).start()
    assert not done.wait(0.05)
    activity.enter()  # a newer frame, still in flight when the old one leaves
    assert not done.wait(0.05)
    activity.leave(old)
    assert done.wait(2.0) and activity.busy == 1


def test_a_background_detection_starts_between_frames():
    started = threading.Event()
    detector = BackgroundDetector(lambda picture: started.set())
    ticket = ACTIVITY.enter()  # a frame in the stages
    try:
        detector.start(torch.ones(3))
        assert not started.wait(0.02)
    finally:
        ACTIVITY.leave(ticket)
    try:
        assert started.wait(2.0)  # at once when the frame is out
    finally:
        detector.close()


def test_live_frames_count_until_their_sink_has_them_and_none_stay_counted_after_the_run(run):
    seen = []

    class Watch(RecordingSink):
        async def write(self, frame):
            seen.append(ACTIVITY.busy)
            await super().write(frame)

    stages = [{"name": "a", "type": "jitter", "options": {"max_ms": 2.0}}, {"name": "b", "type": "stamp"}]
    run(Pipeline(graph_of(stages), IndexSource(60, live=True, fps=200), Watch()).run())
    assert ACTIVITY.busy == 0
    assert len(seen) == 60 and min(seen) >= 1  # the frame being written counts
    run(Pipeline(graph_of(stages), IndexSource(20), Watch()).run())  # a file run: nothing counted
    assert seen[60:] == [0] * 20


def test_an_aborted_live_run_leaves_nothing_counted(run):
    async def scenario():
        sink = RecordingSink(delay_s=0.05)
        stages = [{"name": "s", "type": "jitter", "options": {"max_ms": 5.0}}]
        pipeline = Pipeline(graph_of(stages), IndexSource(1000, live=True, fps=500), sink)
        task = asyncio.create_task(pipeline.run())
        await asyncio.sleep(0.12)
        pipeline.request_stop()
        pipeline.request_stop()
        await asyncio.wait_for(task, 5)

    run(scenario())
    assert ACTIVITY.busy == 0


def test_a_picture_counts_until_the_webrtc_sender_is_done_encoding_it(run):
    import av

    from pipeline.webrtc.tracks import OutgoingVideo

    async def scenario():
        track = OutgoingVideo()
        picture = av.VideoFrame(16, 16, "yuv420p")
        track.put(picture)
        track.put(picture)  # a newer one replaces it: still one picture in flight
        assert ACTIVITY.busy == 1
        assert await track.recv() is picture
        assert ACTIVITY.busy == 1  # being encoded and sent
        asking = asyncio.ensure_future(track.recv())  # the sender asks for the next: done with the last
        await asyncio.sleep(0.01)
        assert ACTIVITY.busy == 0 and not asking.done()
        track.put(picture)
        assert await asking is picture and ACTIVITY.busy == 1
        track.stop()
        assert ACTIVITY.busy == 0

    run(scenario())
