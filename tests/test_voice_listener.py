"""Listening beside the frames hears exactly what listening in line hears, without making a frame wait."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("silero_vad", reason="voice activity detection needs silero-vad")
pytest.importorskip("espeakng_loader", reason="the test speech is made with eSpeak NG")

from voice_kit import placed, resample, spoken

from pipeline.frames import AudioChunk
from pipeline.voice import listener as listening
from pipeline.voice.listener import Listener

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


def test_beside_the_frames_each_chunk_is_heard_as_in_line(talk):
    in_line, beside = Listener(), Listener(beside=True)
    try:
        assert beside.beside and not in_line.beside
        for chunk in talk:
            in_line.hear(chunk)
            beside.hear(chunk)
            assert beside.heard(wait=True) == in_line.heard()
    finally:
        beside.close()


def test_frames_take_what_was_heard_so_far_and_the_turns_come_out_the_same(talk):
    in_line, beside = Listener(), Listener(beside=True)
    expected, got = [], []
    try:
        for chunk in talk:
            in_line.hear(chunk)
            beside.hear(chunk)
            for listener, turns in ((in_line, expected), (beside, got)):
                heard = listener.heard()
                turns += [("started", t) for t in heard.started] + [("ended", t) for t in heard.ended]
        got += [("ended", t) for t in beside.heard(wait=True).ended]
    finally:
        beside.close()
    assert [kind for kind, _ in expected] == ["started", "ended"]
    assert got == expected  # the same turns, to the sample


def test_a_frame_does_not_wait_for_a_chunk_being_heard(talk, monkeypatch):
    release = threading.Event()
    listener = Listener(beside=True)
    real = listener._listen

    def slow(chunk):
        release.wait(5.0)
        return real(chunk)

    monkeypatch.setattr(listener, "_listen", slow)
    try:
        started = time.monotonic()
        listener.hear(talk[0])
        nothing = listener.heard()
        assert time.monotonic() - started < 1.0  # well short of the 5 s the chunk is held
        assert nothing.started == [] and listener.behind_s == pytest.approx(1 / FPS)
        release.set()
        listener.heard(wait=True)
        assert listener.behind_s == 0.0
    finally:
        release.set()
        listener.close()


def test_a_slow_listener_never_falls_more_than_its_bound_behind(talk, monkeypatch):
    monkeypatch.setattr(listening, "MAX_BEHIND_S", 0.2)
    listener = Listener(beside=True)
    real = listener._listen

    def slow(chunk):
        time.sleep(0.02)  # slower than the chunks come in below
        return real(chunk)

    monkeypatch.setattr(listener, "_listen", slow)
    most = 0.0
    try:
        for chunk in talk[:30]:
            listener.hear(chunk)
            most = max(most, listener.behind_s)
    finally:
        listener.close()
    assert 0.2 < most <= 0.2 + 1.5 / FPS  # it did fall behind, then each frame waited for the oldest chunk


def test_a_chunk_that_fails_to_be_heard_raises_on_the_frame_that_takes_it(talk, monkeypatch):
    listener = Listener(beside=True)

    def broken(chunk):
        raise RuntimeError("resampler broke")

    monkeypatch.setattr(listener, "_listen", broken)
    try:
        listener.hear(talk[0])
        with pytest.raises(RuntimeError, match="resampler broke"):
            listener.heard(wait=True)
        assert listener.behind_s == 0.0
    finally:
        listener.close()
