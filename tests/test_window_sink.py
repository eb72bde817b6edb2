"""The window sink: shows what went in, plays the sound, reports fps/latency/rung, and stops the run when closed.

SDL's dummy video and audio drivers stand in for a desktop: the window's pixels are read back
from its surface, and the dummy audio device consumes sound in real time like a sound card.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import subprocess
import sys
import time

import numpy as np
import pygame
import pytest
import torch

from kernels.colour import i420_to_rgb
from pipeline.config import load_config
from pipeline.errors import SinkError
from pipeline.io.factory import default_output
from pipeline.io.synthetic import SyntheticSource, test_source
from pipeline.io.window import MAX_AUDIO_LAG_S, WindowSink, fit_size, quality_rung
from pipeline.job import JobOptions, run_job
from pipeline.ringbuffer import RingBuffer

WIDTH, HEIGHT, FPS, RATE = 160, 96, 30, 48000  # px, px, frames/s, Hz
OVERLAY_ROWS = 32  # px at the top the overlay text may cover


@pytest.fixture
def desktop(monkeypatch):
    """SDL's dummy drivers: a window and a sound card that show and play nothing, but behave."""
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/tmp")


def screen_rgb() -> np.ndarray:
    """What the window shows now, H×W×3."""
    return pygame.surfarray.array3d(pygame.display.get_surface()).transpose(1, 0, 2)


async def show(sink: WindowSink, source: SyntheticSource, *, annotate=None, info=None) -> list[tuple]:
    """Write every frame of `source` to `sink`; return (expected RGB, shown RGB) after each frame."""
    ring = RingBuffer(3, source.info.frame_shape)
    seen = []
    await sink.open(info or source.info)
    try:
        async for frame in source.frames(ring):
            if annotate is not None:
                frame.annotations.update(annotate)
            expected = i420_to_rgb(frame.image, matrix="bt601").numpy()
            await sink.write(frame)
            seen.append((expected, screen_rgb()))
            frame.release()
    finally:
        await sink.close()
    return seen


def test_window_shows_each_frame_as_it_went_in(desktop):
    sink = WindowSink()
    seen = asyncio.run(show(sink, SyntheticSource(width=WIDTH, height=HEIGHT, fps=FPS, frames=6, audio_rate=RATE)))
    assert sink.frames_shown == 6
    assert sink.display_size == (WIDTH, HEIGHT)
    for expected, shown in seen:
        assert shown.shape == expected.shape
        error = np.abs(shown[OVERLAY_ROWS:].astype(int) - expected[OVERLAY_ROWS:].astype(int))
        assert error.mean() < 3, "the window shows a different picture from the frame"


def test_lowered_output_resolution_still_fills_the_window_with_the_same_picture(desktop):
    sink = WindowSink()
    sink.set_output_scale(0.5)  # the scheduler's lower_output_resolution rung
    seen = asyncio.run(show(sink, SyntheticSource(width=WIDTH, height=HEIGHT, fps=FPS, frames=3, audio_rate=RATE)))
    assert sink.display_size == (WIDTH, HEIGHT)
    for expected, shown in seen:
        assert shown.shape == expected.shape
        error = np.abs(shown[OVERLAY_ROWS:].astype(int) - expected[OVERLAY_ROWS:].astype(int))
        assert error.mean() < 12, "a coarser picture, but the same one"
    sharp = asyncio.run(show(WindowSink(), SyntheticSource(width=WIDTH, height=HEIGHT, fps=FPS, frames=3)))
    coarse_error = np.abs(seen[-1][1][OVERLAY_ROWS:].astype(int) - seen[-1][0][OVERLAY_ROWS:].astype(int)).mean()
    sharp_error = np.abs(sharp[-1][1][OVERLAY_ROWS:].astype(int) - sharp[-1][0][OVERLAY_ROWS:].astype(int)).mean()
    assert coarse_error > sharp_error  # it really was shown at the lower resolution


def test_window_turns_a_rotated_picture_upright(desktop):
    source = SyntheticSource(width=WIDTH, height=HEIGHT, fps=FPS, frames=2, audio_rate=RATE)
    sink = WindowSink()
    seen = asyncio.run(show(sink, source, info=dataclasses.replace(source.info, rotation=90)))
    assert sink.display_size == (HEIGHT, WIDTH)
    expected, shown = seen[-1]
    upright = np.rot90(expected)  # 90° counter-clockwise, as a player shows it
    error = np.abs(shown[OVERLAY_ROWS:].astype(int) - upright[OVERLAY_ROWS:].astype(int))
    assert error.mean() < 3


def test_overlay_reads_fps_latency_and_quality_rung(desktop):
    sink = WindowSink()
    source = SyntheticSource(width=WIDTH, height=HEIGHT, fps=FPS, frames=3, audio_rate=RATE)
    asyncio.run(show(sink, source, annotate={"quality": {"rung": 2}}))
    text = sink.overlay_text
    assert "fps" in text and "rung 2" in text
    latency = float(text.split("e2e")[1].split("ms")[0])
    assert 0 <= latency < 10_000


def test_a_frame_with_no_scheduler_mark_is_full_quality():
    source = SyntheticSource(width=WIDTH, height=HEIGHT, fps=FPS, frames=1)

    async def first():
        async for frame in source.frames(RingBuffer(2, source.info.frame_shape)):
            return frame

    frame = asyncio.run(first())
    assert quality_rung(frame) == "full"
    frame.annotations["quality"] = {"rung": "emotion every 2nd frame"}
    assert quality_rung(frame) == "emotion every 2nd frame"


def test_window_plays_the_audio_and_never_lags_it_far(desktop):
    """10 frames arrive at once (0.33 s of sound): the excess over the lag bound is cut, the rest plays."""
    sink = WindowSink()

    async def run():
        source = SyntheticSource(width=WIDTH, height=HEIGHT, fps=FPS, frames=10, audio_rate=RATE)
        ring = RingBuffer(3, source.info.frame_shape)
        await sink.open(source.info)
        async for frame in source.frames(ring):
            await sink.write(frame)
            frame.release()
        player = sink.player
        assert player is not None
        assert player.queued_samples <= MAX_AUDIO_LAG_S * RATE
        deadline = time.monotonic() + 5
        while player.queued_samples and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the dummy sound card plays in real time
        await sink.close()
        return player

    player = asyncio.run(run())
    pushed = 10 * RATE // FPS
    assert player.queued_samples == 0
    assert player.played_samples + player.cut_samples == pushed
    assert player.played_samples >= MAX_AUDIO_LAG_S * RATE * 0.9
    assert player.cut_samples > 0


def test_closing_the_window_stops_the_run(desktop):
    options = JobOptions(config=load_config("passthrough"), device=torch.device("cpu"))

    async def run():
        job = asyncio.create_task(run_job("testsrc", "window", options))
        await asyncio.sleep(0.5)
        pygame.event.post(pygame.event.Event(pygame.QUIT))
        return await asyncio.wait_for(job, 10)

    result = asyncio.run(run())
    assert result.status == "interrupted"
    assert result.frames_out > 0


def test_no_display_is_one_clear_error(monkeypatch):
    if not sys.platform.startswith("linux"):
        pytest.skip("display detection is tested where DISPLAY decides it")
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")
    sink = WindowSink()
    with pytest.raises(SinkError, match=r"^--output window: .*DISPLAY") as caught:
        asyncio.run(sink.open(test_source(frames=1).info))
    assert "\n" not in str(caught.value)


def test_fit_size_scales_down_to_the_screen_and_never_up():
    assert fit_size(3840, 2160, (1728, 972)) == (1728, 972)
    assert fit_size(640, 360, (1728, 972)) == (640, 360)
    assert fit_size(1080, 1920, (1728, 972)) == (546, 972)
    assert fit_size(640, 360, None) == (640, 360)


def test_webcam_opens_a_window_on_a_desktop_and_nothing_else_does():
    assert default_output("webcam", display=True) == "window"
    assert default_output("webcam:1", display=True) == "window"
    assert default_output("webcam", display=False) == "null"
    assert default_output("talk.mp4", display=True) == "null"
    assert default_output("sample", display=True) == "null"


def test_cli_plays_the_sample_in_a_window_at_its_own_pace(desktop, tmp_path):
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "run_pipeline.py", "--source", "sample", "--output", "window", "--frames", "30"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    summary = re.search(r"done: (\d+) frame\(s\).* dropped (\d+).* -> window", run.stderr)
    assert summary, run.stderr
    assert int(summary.group(1)) + int(summary.group(2)) == 30  # live: the scheduler may drop late frames
    assert time.monotonic() - started >= 0.9  # 30 frames at 30 fps: paced like a player, not decoded flat out


def test_folder_source_refuses_a_window(tmp_path):
    (tmp_path / "in").mkdir()
    run = subprocess.run(
        [sys.executable, "run_pipeline.py", "--source", str(tmp_path / "in"), "--output", "window"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "a folder --source needs a folder --output" in run.stderr
    assert "Traceback" not in run.stderr


STOP_WHILE_PLAYING = """
import sys, time
import numpy as np
from pipeline.io.window import AudioPlayer
for i in range(60):
    player = AudioPlayer(48000, 1)
    player.push(np.zeros((1, 4800), np.float32))
    busy_until = time.perf_counter() + 0.02 + (i % 7) * 0.003
    while time.perf_counter() < busy_until:  # hold the GIL, as a frame's work would, while SDL calls back
        pass
    player.close()
print("closed 60")
"""


def test_stopping_playback_never_deadlocks_with_sdl_s_audio_thread(desktop):
    """SDL holds the device lock while our callback waits for the GIL; closing must not wait on that lock
    while holding the GIL. Before the fix this hung within 60 closes every time; SDL's own signal
    handlers ignore SIGTERM, so the run is killed outright if it hangs."""
    run = subprocess.run([sys.executable, "-c", STOP_WHILE_PLAYING], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "closed 60" in run.stdout, run.stderr


def test_surround_sound_plays_on_two_speakers_with_its_centre(desktop, monkeypatch):
    """A 5.1 source: the window mixes it down to stereo, so dialogue in the centre is heard."""
    sink = WindowSink()
    pushed: list[np.ndarray] = []

    async def run():
        source = SyntheticSource(width=WIDTH, height=HEIGHT, fps=FPS, frames=3, audio_rate=RATE)
        info = dataclasses.replace(source.info, audio_channels=6, audio_layout="5.1")
        ring = RingBuffer(3, source.info.frame_shape)
        await sink.open(info)
        assert sink.player is not None and sink.player.channels == 2
        monkeypatch.setattr(sink.player, "push", lambda samples: pushed.append(samples))
        async for frame in source.frames(ring):
            voice = torch.zeros((6, frame.audio.samples.shape[-1]))
            voice[2] = 0.5  # the centre channel alone (FL FR FC LFE BL BR)
            frame.audio = dataclasses.replace(frame.audio, samples=voice)
            await sink.write(frame)
            frame.release()
        await sink.close()

    asyncio.run(run())
    sound = np.concatenate(pushed, axis=1)
    assert sound.shape[0] == 2
    assert np.abs(sound[:, sound.shape[1] // 2 :]).min() > 0.1  # the centre, in both speakers
