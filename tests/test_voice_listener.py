"""Listening as a side job beside the frames hears exactly what listening in line hears, and no frame waits for it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

pytest.importorskip("silero_vad", reason="voice activity detection needs silero-vad")
pytest.importorskip("espeakng_loader", reason="the test speech is made with eSpeak NG")

from voice_kit import placed, resample, spoken

from pipeline.frames import AudioChunk
from pipeline.side_work import JobKind, SideJob
from pipeline.stages.voice.listener import Listener

RATE, FPS = 48000, 30


def frame_chunks(audio_16k: np.ndarray) -> list[AudioChunk]:
    """The sound as a camera's frames carry it: 48 kHz stereo, one frame's worth (1/30 s) each."""
    audio = resample(audio_16k, 16000, RATE)
    step = RATE // FPS
    return [
        AudioChunk(torch.from_numpy(np.stack([audio[i : i + step]] * 2)), RATE, i)
        for i in range(0, len(audio) - step + 1, step)
    ]


@pytest.fixture(scope="module")
def talk() -> list[AudioChunk]:
    speech, _, _ = spoken("Hello there, how are you?")
    return frame_chunks(placed(speech, 0.5, 3.0))


def listening(listen: Callable, *, max_lag: int = 30) -> SideJob:
    """The voice stage's job: in order, beside the frames."""
    return SideJob(listen, name="listen", kind=JobKind.IN_ORDER, beside=True, max_lag=max_lag)


def test_beside_the_frames_each_chunk_is_heard_as_in_line(talk):
    in_line, heard_beside = Listener(), Listener()
    job = listening(heard_beside.listen)
    try:
        for chunk in talk:
            job.submit(chunk)
            job.drain()
            assert heard_beside.fold(job.take()) == in_line.fold([in_line.listen(chunk)])
    finally:
        job.close()


def test_beside_the_frames_the_turns_are_the_same_to_the_sample(talk):
    in_line, heard_beside = Listener(), Listener()
    job = listening(heard_beside.listen)
    expected, got = [], []
    try:
        for chunk in talk:
            job.submit(chunk)
            for heard, turns in (
                (in_line.fold([in_line.listen(chunk)]), expected),
                (heard_beside.fold(job.take()), got),
            ):
                turns += [("started", t) for t in heard.started] + [("ended", t) for t in heard.ended]
        job.drain()
        got += [("ended", t) for t in heard_beside.fold(job.take()).ended]
    finally:
        job.close()
    assert [kind for kind, _ in expected] == ["started", "ended"]
    assert got == expected  # the same turns, to the sample


def test_a_frame_does_not_wait_for_a_chunk_being_heard(talk):
    release = threading.Event()
    listener = Listener()

    def slow(chunk):
        release.wait(5.0)
        return listener.listen(chunk)

    job = listening(slow)
    try:
        started = time.monotonic()
        job.submit(talk[0])
        nothing = listener.fold(job.take())
        assert time.monotonic() - started < 1.0  # well short of the 5 s the chunk is held
        assert nothing.started == [] and job.busy
        release.set()
        job.drain()
        assert len(job.take()) == 1 and not job.busy
    finally:
        release.set()
        job.close()


def test_a_slow_listener_loses_the_oldest_sound_past_its_bound_never_the_frames(talk):
    listener = Listener()

    def slow(chunk):
        time.sleep(0.02)  # slower than the chunks come in below
        return listener.listen(chunk)

    job = listening(slow, max_lag=6)
    most = 0
    try:
        started = time.monotonic()
        for chunk in talk[:30]:
            job.submit(chunk)
            most = max(most, job.waiting)
        assert time.monotonic() - started < 0.3  # 30 frames handed over without waiting on 0.6 s of listening
    finally:
        job.close()
    assert most == 6 and job.stats.dropped > 0


def test_a_chunk_that_fails_to_be_heard_raises_on_the_frame_that_takes_it(talk):
    def broken(chunk):
        raise RuntimeError("resampler broke")

    job = listening(broken)
    try:
        job.submit(talk[0])
        job.drain()
        with pytest.raises(RuntimeError, match="resampler broke"):
            job.take()
        assert not job.busy
    finally:
        job.close()


def test_sound_that_never_came_is_heard_as_silence_so_later_turns_keep_their_times(talk):
    """Chunks dropped before the speech (a listener that fell behind, a gap in a stream): the turn
    is still placed where it is on the stream's clock, within one VAD chunk."""
    whole, gappy = Listener(), Listener()
    heard = whole.fold([whole.listen(chunk) for chunk in talk])
    kept = talk[:3] + talk[9:]  # 0.2 s of the silence before the speech missing
    with_gap = gappy.fold([gappy.listen(chunk) for chunk in kept])
    assert len(heard.started) == len(with_gap.started) == 1
    assert abs(with_gap.started[0] - heard.started[0]) <= 0.032
    assert abs(with_gap.ended[0].end_s - heard.ended[0].end_s) <= 0.032
    assert gappy.silence_added_s == pytest.approx(0.2, abs=0.001) and whole.silence_added_s == 0
