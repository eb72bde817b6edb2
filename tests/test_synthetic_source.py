"""The synthetic source: frames in order, drawn in place, moving, with drift-free beeping audio."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from contextlib import aclosing
from fractions import Fraction

import pytest
import torch

from kernels.colour import i420_planes
from pipeline.errors import SourceError
from pipeline.frames import Frame
from pipeline.io import synthetic
from pipeline.io.synthetic import SyntheticSource
from pipeline.ringbuffer import RingBuffer


def small_ring(source: SyntheticSource, slots: int = 4) -> RingBuffer:
    return RingBuffer(slots, source.info.frame_shape)


async def consume(source: SyntheticSource, ring: RingBuffer, count: int, keep_images: bool = False):
    """Take `count` frames, releasing each slot as we go; returns the frames (and image copies)."""
    frames: list[Frame] = []
    images: list[torch.Tensor] = []
    async with aclosing(source.frames(ring)) as stream:
        async for frame in stream:
            if keep_images:
                images.append(frame.image.clone())
            frame.release()
            frames.append(frame)
            if len(frames) == count:
                break
    return frames, images


def test_frames_come_in_index_order_with_pts_equal_to_index():
    source = SyntheticSource(width=64, height=32, frames=12)
    frames, _ = asyncio.run(consume(source, small_ring(source), 100))
    assert [f.index for f in frames] == list(range(12))
    assert [f.pts for f in frames] == list(range(12))
    assert all(f.time_base == Fraction(1, 30) for f in frames)
    assert source.info.time_base == Fraction(1, 30)


def test_pixels_are_drawn_in_place_into_the_leased_slot():
    source = SyntheticSource(width=64, height=32, frames=6)

    async def run(prefill: int) -> list[torch.Tensor]:
        ring = small_ring(source, slots=2)
        ring.storage.fill_(prefill)
        drawn = []
        async with aclosing(source.frames(ring)) as stream:
            async for frame in stream:
                slot = ring.storage[frame.lease.slot]
                assert frame.image.data_ptr() == slot.data_ptr()
                luma = i420_planes(slot)[0]
                side = 32 // 8  # the square: an eighth of the shorter side, in white (Y = 235)
                assert int((luma == 235).sum()) >= side * side
                drawn.append(slot.clone())
                frame.release()
        return drawn

    # Whatever the slots held before, every pixel is overwritten.
    for before, after in zip(asyncio.run(run(0)), asyncio.run(run(77)), strict=True):
        assert torch.equal(before, after)


def test_consecutive_frames_differ():
    source = SyntheticSource(width=320, height=180, frames=10)  # moves at least 2 px a frame
    _, images = asyncio.run(consume(source, small_ring(source), 10, keep_images=True))
    for before, after in itertools.pairwise(images):
        assert not torch.equal(before, after)


def test_audio_has_no_drift_at_ntsc_rate_and_the_tone_is_continuous():
    fps, rate, count = Fraction(30000, 1001), 48000, 100
    source = SyntheticSource(width=64, height=32, fps=fps, frames=count, audio_rate=rate)
    frames, _ = asyncio.run(consume(source, small_ring(source), count))
    chunks = [f.audio for f in frames]
    assert all(c.samples.shape[0] == 1 and c.samples.dtype == torch.float32 for c in chunks)
    assert sum(c.samples.shape[1] for c in chunks) == round(count * rate / fps)
    starts = [c.pts for c in chunks]
    assert starts[0] == 0
    assert all(s + c.samples.shape[1] == nxt for s, c, nxt in zip(starts, chunks, starts[1:], strict=False))

    signal = torch.cat([c.samples[0] for c in chunks]).double()
    k = torch.arange(signal.numel(), dtype=torch.float64)
    second = (k % rate) / rate
    full_beep = (second > 0.01) & (second < 0.49)  # beep on, past the fades
    expected = torch.sin(2 * math.pi * synthetic.TONE_HZ * k / rate) * synthetic.TONE_AMPLITUDE
    assert torch.allclose(signal[full_beep], expected[full_beep], atol=1e-5)  # no phase jump anywhere
    boundaries = torch.tensor(starts[1:])
    assert bool(full_beep[boundaries].any())  # ...including at chunk boundaries

    silent = (second > 0.51) & (second < 0.99)
    assert float(signal[silent].abs().max()) < 1e-6  # the beep really stops: a level meter moves


def test_live_source_paces_frames_at_fps():
    source = SyntheticSource(width=64, height=32, fps=100, frames=10, live=True)
    start = time.monotonic()
    frames, _ = asyncio.run(consume(source, small_ring(source), 10))
    elapsed_s = time.monotonic() - start
    assert len(frames) == 10
    assert elapsed_s >= 0.08  # 9 intervals of 10 ms, less scheduling slack
    captures = [f.capture_ns for f in frames]
    assert captures == sorted(captures)


def test_live_source_does_not_burst_to_catch_up_after_a_stall():
    source = SyntheticSource(width=64, height=32, fps=100, frames=None, live=True)
    ring = small_ring(source)

    async def run() -> float:
        async with aclosing(source.frames(ring)) as stream:
            (await anext(stream)).release()
            await asyncio.sleep(0.1)  # a consumer stall of 10 frame periods
            (await anext(stream)).release()  # late: the newest frame due is made at once
            start = time.monotonic()
            for _ in range(5):
                (await anext(stream)).release()
            return time.monotonic() - start

    assert asyncio.run(run()) >= 0.04  # paced again, not 10 overdue frames at once


def test_a_live_frame_is_stamped_when_due_and_frames_missed_while_behind_are_counted_not_hidden():
    """A camera's frame exists at its due time: a wait for a ring slot counts in its latency, and the
    frames that came and went meanwhile are skipped and counted, with their sound carried on."""
    source = SyntheticSource(width=64, height=32, fps=100, frames=None, live=True)
    ring = RingBuffer(1, source.info.frame_shape)

    async def run() -> tuple[list[Frame], int]:
        taken: list[Frame] = []
        async with aclosing(source.frames(ring)) as stream:
            first = await anext(stream)
            taken.append(first)
            getting = asyncio.ensure_future(anext(stream))  # waits: the only slot is still held
            await asyncio.sleep(0.1)
            freed_ns = time.monotonic_ns()
            first.release()
            late = await getting
            taken.append(late)
            late.release()
            for _ in range(3):
                frame = await anext(stream)
                taken.append(frame)
                frame.release()
        return taken, freed_ns

    frames, freed_ns = asyncio.run(run())
    first, late = frames[0], frames[1]
    assert late.pts == 1 and late.capture_ns - first.capture_ns == 10_000_000  # due 10 ms after the first
    assert freed_ns - late.capture_ns >= 80_000_000  # the ~100 ms wait for the slot is in its age
    assert frames[2].pts >= 9  # behind: the ticks that passed were skipped, not burst out
    stats = source.stats()
    assert stats["missed"] == frames[-1].pts + 1 - len(frames) and stats["missed"] >= 7
    assert stats["taken"] == len(frames) and stats["offered"] == frames[-1].pts + 1
    for before, after in itertools.pairwise(frames):  # the sound of missed frames rides on the next
        assert after.audio.pts == before.audio.pts + before.audio.samples.shape[-1]
        assert after.capture_ns - before.capture_ns == (after.pts - before.pts) * 10_000_000


def test_endless_source_keeps_producing():
    source = SyntheticSource(width=64, height=32, frames=None)
    frames, _ = asyncio.run(consume(source, small_ring(source), 50))
    assert [f.index for f in frames] == list(range(50))


def test_factories_give_the_demo_clip_and_the_live_test_signal():
    clip = synthetic.sample_source()
    assert (clip.info.width, clip.info.height, clip.info.fps) == (640, 360, 30)
    assert clip.frame_count == 300 and not clip.live
    signal = synthetic.test_source(fps=25)
    assert signal.frame_count is None and signal.live and signal.info.fps == 25
    assert synthetic.sample_source(frames=5).frame_count == 5


@pytest.mark.parametrize(
    "kwargs",
    [{"width": 641}, {"height": 0}, {"width": -2}, {"fps": 0}, {"fps": Fraction(-30)}, {"frames": -1}],
)
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError) as caught:
        SyntheticSource(**kwargs)
    assert "\n" not in str(caught.value)


def test_a_ring_of_the_wrong_shape_is_refused():
    source = SyntheticSource(width=64, height=32, frames=1)
    ring = RingBuffer(2, (32, 32, 3))
    with pytest.raises(SourceError):
        asyncio.run(consume(source, ring, 1))


def test_the_sample_pans_across_a_real_photograph():
    import av

    from pipeline.io.synthetic import FACE_PICTURE, SyntheticSource, sample_source

    assert sample_source().scene == "face" and "face" in sample_source().info.description
    source = SyntheticSource(width=256, height=144, frames=60, scene="face", pixel_format="rgb24")

    async def frames():
        ring = RingBuffer(3, source.info.frame_shape)
        out = []
        async for frame in source.frames(ring):
            out.append(frame.image.clone())
            frame.release()
        return out

    pictures = asyncio.run(frames())
    with av.open(str(FACE_PICTURE)) as container:
        photo = next(container.decode(video=0)).reformat(width=256, height=144, format="rgb24").to_ndarray()
    assert float((pictures[0].float() - torch.from_numpy(photo).float()).abs().mean()) < 1.0  # frame 0: the photo
    assert not torch.equal(pictures[0], pictures[-1])  # and it moves


def test_an_unknown_scene_is_refused():
    from pipeline.io.synthetic import SyntheticSource

    with pytest.raises(ValueError, match="scene"):
        SyntheticSource(scene="beach")
