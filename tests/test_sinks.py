"""Sinks: FileSink writes files that decode back to what went in; NullSink counts."""

from __future__ import annotations

import asyncio
import os
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.errors import SinkError
from pipeline.io.base import Sink, StreamInfo
from pipeline.io.sinks import EncoderSettings, FileSink, NullSink
from pipeline.io.synthetic import SyntheticSource
from pipeline.ringbuffer import RingBuffer

WIDTH, HEIGHT, FPS, RATE = 160, 96, 30, 48000  # px, px, frames/s, Hz


async def write_clip(
    sink: Sink,
    frames: int,
    drop: frozenset[int] = frozenset(),
    pixel_format: str = "yuv420p",
    *,
    slots: int = 3,
    flat: bool = False,
) -> dict[int, np.ndarray]:
    """Run `frames` synthetic frames through `sink` (closing it); returns the pixels written, by index.

    `flat`: paint each frame's luma one level that differs from frame to frame, so a frame
    encoded from the wrong slot cannot pass for the right one.
    """
    source = SyntheticSource(
        width=WIDTH, height=HEIGHT, fps=FPS, frames=frames, audio_rate=RATE, pixel_format=pixel_format
    )
    ring = RingBuffer(slots, source.info.frame_shape)
    written: dict[int, np.ndarray] = {}
    await sink.open(source.info)
    try:
        async for frame in source.frames(ring):
            if flat:
                frame.image[:HEIGHT] = 30 + 15 * (frame.index % 12)
            if frame.index in drop:
                frame.drop("test")
            else:
                written[frame.index] = frame.image.numpy().copy()
            await sink.write(frame)
            frame.release()  # the sink must have copied what it needs by now
    finally:
        await sink.close()
    return written


def decode(path: Path, pixel_format: str = "yuv420p") -> tuple[dict[int, np.ndarray], float]:
    """Decoded pictures keyed by frame index, and the audio duration in seconds."""
    with av.open(str(path)) as container:
        pictures = {round(float(f.time) * FPS): f.to_ndarray(format=pixel_format) for f in container.decode(video=0)}
    with av.open(str(path)) as container:
        audio = list(container.decode(audio=0))
    return pictures, sum(f.samples for f in audio) / audio[0].sample_rate


@pytest.mark.parametrize(
    ("suffix", "pixel_format"),
    [(".mp4", "yuv420p"), (".mov", "yuv420p"), (".mkv", "yuv420p"), (".webm", "yuv420p"), (".mp4", "rgb24")],
)
def test_file_sink_writes_a_file_that_decodes_to_what_went_in(tmp_path, suffix, pixel_format):
    path = tmp_path / f"clip{suffix}"
    sink = FileSink(path, settings=EncoderSettings(crf=18))
    written = asyncio.run(write_clip(sink, 30, pixel_format=pixel_format))
    pictures, audio_s = decode(path, pixel_format)
    assert sorted(pictures) == list(range(30))
    assert all(p.shape == written[0].shape for p in pictures.values())
    assert audio_s == pytest.approx(30 / FPS, abs=0.1)
    for index in (0, 15, 29):
        error = np.abs(pictures[index].astype(np.int16) - written[index].astype(np.int16)).mean()
        assert error < 10, f"frame {index}: mean abs error {error:.1f}"
    assert (sink.frames_written, sink.frames_dropped) == (30, 0)


def test_a_file_sink_holds_each_slot_until_the_encoder_has_read_it(tmp_path):
    """Frames queue on the encoder thread; their slots must not go back to the ring before they are encoded."""

    class SlowEncoder(FileSink):
        def _encode_video(self, *args):
            time.sleep(0.02)  # the encoder falls behind the source
            super()._encode_video(*args)

    path = tmp_path / "slow.mp4"
    sink = SlowEncoder(path, settings=EncoderSettings(crf=18))
    written = asyncio.run(write_clip(sink, 12, slots=2, flat=True))
    pictures, _ = decode(path)
    assert sorted(pictures) == list(range(12))
    for index, picture in pictures.items():
        luma = np.abs(picture[:HEIGHT].astype(np.int16) - written[index][:HEIGHT].astype(np.int16)).mean()
        assert luma < 4, f"frame {index} was encoded from another frame's pixels"


def test_an_encoding_error_on_a_queued_frame_is_raised_and_the_file_still_finished(tmp_path):
    class BreaksAtFive(FileSink):
        def _encode_video(self, index, *args):
            if index == 5:
                raise SinkError(f"{self.target}: encoding frame 5 failed (test)")
            super()._encode_video(index, *args)

    path = tmp_path / "broken.mp4"
    with pytest.raises(SinkError, match="frame 5"):
        asyncio.run(write_clip(BreaksAtFive(path), 12))
    pictures, _ = decode(path)
    assert len(pictures) >= 5  # everything before the error, flushed and playable


def test_dropped_frames_leave_the_video_but_keep_their_audio(tmp_path):
    path = tmp_path / "dropped.mp4"
    sink = FileSink(path)
    drop = frozenset({3, 10, 11, 20})
    asyncio.run(write_clip(sink, 30, drop))
    pictures, audio_s = decode(path)
    assert sorted(pictures) == sorted(set(range(30)) - drop)
    assert audio_s == pytest.approx(30 / FPS, abs=0.1)
    assert (sink.frames_written, sink.frames_dropped) == (26, 4)


def test_close_after_a_partial_write_gives_a_playable_file(tmp_path):
    path = tmp_path / "partial.mp4"
    sink = FileSink(path)

    async def run() -> None:
        source = SyntheticSource(width=WIDTH, height=HEIGHT, fps=FPS, frames=None)
        ring = RingBuffer(2, source.info.frame_shape)
        await sink.open(source.info)
        stream = source.frames(ring)
        for _ in range(10):
            frame = await anext(stream)
            await sink.write(frame)
            frame.release()
        await stream.aclose()
        await sink.close()
        await sink.close()  # twice is fine

    asyncio.run(run())
    pictures, _ = decode(path)
    assert len(pictures) == 10


def test_unsupported_extension_is_refused_in_one_line(tmp_path):
    with pytest.raises(SinkError) as caught:
        FileSink(tmp_path / "clip.avi")
    message = str(caught.value)
    assert "\n" not in message and "clip.avi" in message and ".mp4" in message


def missing_dir(tmp_path: Path) -> Path:
    return tmp_path / "missing"


def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.touch()
    return path


def unwritable_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "locked"
    directory.mkdir(mode=0o500)
    return directory


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(missing_dir, id="missing"),
        pytest.param(a_file, id="parent-is-a-file"),
        pytest.param(
            unwritable_dir,
            id="not-writable",
            marks=pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere"),
        ),
    ],
)
def test_unusable_directory_is_refused_in_one_line(tmp_path, where):
    path = where(tmp_path) / "clip.mp4"
    sink = FileSink(path)
    info = StreamInfo(
        width=WIDTH, height=HEIGHT, fps=FPS, time_base=Fraction(1, FPS), audio_rate=RATE, audio_channels=1
    )

    async def run() -> None:
        try:
            await sink.open(info)
        finally:
            await sink.close()  # after a failed open, close does nothing

    with pytest.raises(SinkError) as caught:
        asyncio.run(run())
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    assert not path.exists()


def test_odd_picture_size_is_refused(tmp_path):
    info = StreamInfo(width=161, height=96, fps=FPS, time_base=Fraction(1, FPS))
    with pytest.raises(SinkError, match="even"):
        asyncio.run(FileSink(tmp_path / "odd.mp4").open(info))


def test_null_sink_counts_frames_drops_and_audio():
    sink = NullSink()
    asyncio.run(write_clip(sink, 20, frozenset({1, 2, 3, 4, 5})))
    assert (sink.frames, sink.dropped) == (15, 5)
    assert sink.audio_samples == 20 * RATE // FPS


def test_bad_encoder_settings_fail_at_open_not_at_the_first_frame(tmp_path):
    path = tmp_path / "clip.mp4"
    info = StreamInfo(width=WIDTH, height=HEIGHT, fps=FPS, time_base=Fraction(1, FPS))
    with pytest.raises(SinkError) as caught:
        asyncio.run(FileSink(path, settings=EncoderSettings(preset="no-such-preset")).open(info))
    assert "\n" not in str(caught.value)
    assert not path.exists()  # nothing half-made is left behind


def test_unknown_codec_is_refused_when_the_sink_is_made(tmp_path):
    with pytest.raises(SinkError, match="no-such-codec"):
        FileSink(tmp_path / "clip.mp4", settings=EncoderSettings(video_codec="no-such-codec"))


def test_repeated_timestamps_are_moved_on_and_reported_once(tmp_path, caplog):
    path = tmp_path / "repeats.mp4"
    sink = FileSink(path)

    async def run() -> None:
        source = SyntheticSource(width=WIDTH, height=HEIGHT, fps=FPS, frames=6, audio_rate=RATE)
        ring = RingBuffer(2, source.info.frame_shape)
        await sink.open(source.info)
        async for frame in source.frames(ring):
            frame.pts = frame.index // 2  # pairs of frames claim the same time
            await sink.write(frame)
            frame.release()
        await sink.close()

    asyncio.run(run())
    pictures, _ = decode(path)
    assert len(pictures) == 6
    # 0,0,1,1,2,2 become 0..5: every frame after the first lands on or before its moved-on predecessor
    assert any("5 frame timestamp(s) were not increasing" in r.getMessage() for r in caplog.records)


def test_a_cuda_run_encodes_with_x264_when_nvenc_cannot_start(tmp_path, caplog):
    """NVENC is tried first on a CUDA run; where it cannot open (no GPU here), x264 takes over, with a log line."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("NVENC can start here; tests/test_gpu_media.py covers it")
    path = tmp_path / "clip.mp4"
    sink = FileSink(path, device=torch.device("cuda"))
    assert sink.video_codec == "h264_nvenc"
    asyncio.run(write_clip(sink, 10))
    assert sink.description == "libx264 + aac"
    assert any("encoding with libx264 instead" in r.getMessage() for r in caplog.records)
    pictures, _ = decode(path)
    assert sorted(pictures) == list(range(10))
