"""The stage runner: the scheduler's cadence is kept for any inference stage, with no code in the stage."""

from __future__ import annotations

import asyncio
from fractions import Fraction

from pipeline.frames import Frame
from pipeline.metrics import StageStats
from pipeline.ringbuffer import RingBuffer
from pipeline.stage import HELD_NOTHING, Stage, StageRunner


class Reader(Stage):
    """A model stage that knows nothing of cadence: it numbers its calls."""

    type_name = "reader"
    inference = True

    def __init__(self, name: str = "reader", **kwargs):
        super().__init__(name, **kwargs)
        self.calls = 0

    async def process(self, frame: Frame) -> dict:
        self.calls += 1
        return {"call": self.calls, "frame": frame.index}


class Meter(Reader):
    type_name = "meter"
    inference = False


def frames(count: int, *, image: bool = True) -> list[Frame]:
    ring = RingBuffer(count, (2, 2, 3))
    return [Frame(i, i, Fraction(1, 30), 0, ring.try_acquire() if image else None) for i in range(count)]


def test_an_inference_stage_is_called_on_one_frame_in_n_and_the_others_carry_its_last_result():
    reader, meter = Reader(), Meter("meter")
    runners = [StageRunner(stage, StageStats()) for stage in (reader, meter)]
    for runner in runners:
        runner.set_cadence(3)
    seen = frames(7)

    async def go():
        for frame in seen:
            for runner in runners:
                await runner.run(frame)

    asyncio.run(go())
    assert reader.calls == 3 and meter.calls == 7  # a stage that is not an inference stage runs every frame
    got = [frame.annotations["reader"] for frame in seen]
    assert [a["frame"] for a in got] == [0, 0, 0, 3, 3, 3, 6]
    assert [bool(a.get("held")) for a in got] == [False, True, True] * 2 + [False]
    assert runners[0].stats.held == 4
    runners[0].set_cadence(1)  # back at full: every frame, starting with the next
    more = frames(2)
    asyncio.run(runners[0].run(more[0]))
    assert reader.calls == 4 and "held" not in more[0].annotations["reader"]


def test_in_a_batch_a_held_frame_carries_the_frame_before_it_and_before_any_result_it_says_so():
    reader = Reader()
    runner = StageRunner(reader, StageStats())
    runner.set_cadence(2)
    seen = frames(5)
    asyncio.run(runner.run_batch(seen))
    got = [frame.annotations["reader"] for frame in seen]
    assert [a["frame"] for a in got] == [0, 0, 2, 2, 4] and reader.calls == 3
    assert [bool(a.get("held")) for a in got] == [False, True, False, True, False]
    first = Reader()
    late = StageRunner(first, StageStats())
    late.set_cadence(2)
    late._offered = 1  # a cadence that starts on a frame to hold, before any result
    (frame,) = frames(1)
    asyncio.run(late.run(frame))
    assert frame.annotations["reader"] == {"missing": True, "reason": HELD_NOTHING} and first.calls == 0


def test_frames_without_a_picture_do_not_count_toward_the_cadence():
    reader = Reader()
    runner = StageRunner(reader, StageStats())
    runner.set_cadence(2)
    sound_only, pictures = frames(1, image=False)[0], frames(2)

    async def go():
        await runner.run(pictures[0])
        await runner.run(sound_only)  # called (it has no picture to hold a reading of), not counted
        await runner.run(pictures[1])

    asyncio.run(go())
    assert reader.calls == 2 and pictures[1].annotations["reader"].get("held")


class Spotter(Reader):
    """An inference stage with events: each happened once, on the frame that found it."""

    type_name = "spotter"

    async def process(self, frame: Frame) -> dict:
        self.calls += 1
        return {"call": self.calls, "events": [{"type": "spotted", "frame": frame.index}]}


def test_a_held_result_carries_no_events_so_none_is_told_twice():
    runner = StageRunner(Spotter("spotter"), StageStats())
    runner.set_cadence(3)
    seen = frames(4)

    async def go():
        for frame in seen:
            await runner.run(frame)

    asyncio.run(go())
    got = [frame.annotations["spotter"] for frame in seen]
    assert [len(a["events"]) for a in got] == [1, 0, 0, 1]
    assert [a["call"] for a in got] == [1, 1, 1, 2]  # the result itself is held
