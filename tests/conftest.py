"""Test helpers: a source that stamps each frame's index into its pixels, and a sink that records."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import AsyncIterator
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import torch

from pipeline.frames import AudioChunk, Frame
from pipeline.io.base import Sink, Source, StreamInfo
from pipeline.pixels import PixelFormat
from pipeline.ringbuffer import RingBuffer

# Triton kernels run on CUDA where there is a GPU; elsewhere Triton's interpreter runs them on
# CPU tensors. It reads this when a kernel is defined, so it is set before any test imports one
# (nothing imported above defines a kernel).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

AUDIO_RATE = 16000  # Hz


class Clock:
    """A clock that moves only when a test sets `now` (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wait_for(condition, timeout_s: float = 5.0) -> bool:
    """Poll `condition` (work on another thread) until it holds, at most `timeout_s`; its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def serve_http(handler: type[BaseHTTPRequestHandler], **handler_options: Any) -> tuple[ThreadingHTTPServer, str]:
    """A local HTTP server on a free port, on a daemon thread, with `handler`'s request log silenced;
    returns the server (the caller shuts it down) and its base URL."""

    class Quiet(handler):  # type: ignore[misc, valid-type]
        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, **handler_options))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class IndexSource(Source):
    """`count` frames; pixel [0, 0, 0] holds index % 256, and each frame carries a short audio chunk."""

    def __init__(
        self,
        count: int,
        *,
        width: int = 32,
        height: int = 24,
        live: bool = False,
        fps: float | None = None,
        fail_at: int | None = None,
    ):
        self.count = count
        self.live = live
        self.fps = fps  # pace frames at this rate when set
        self.fail_at = fail_at  # raise after yielding this many frames
        self._info = StreamInfo(
            width, height, Fraction(30), Fraction(1, 30), AUDIO_RATE, 1, pixel_format=PixelFormat.RGB24
        )
        self.closed = False

    @property
    def info(self) -> StreamInfo:
        return self._info

    async def frames(self, ring: RingBuffer) -> AsyncIterator[Frame]:
        samples_per_frame = AUDIO_RATE // 30
        start = time.monotonic()
        for index in range(self.count):
            if self.fail_at is not None and index == self.fail_at:
                raise OSError("device unplugged")
            if self.fps:
                delay = start + index / self.fps - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            lease = await ring.acquire()
            lease.tensor[0, 0, 0] = index % 256
            audio = AudioChunk(torch.full((1, samples_per_frame), 0.25), AUDIO_RATE, index * samples_per_frame)
            yield Frame(index, index, Fraction(1, 30), time.monotonic_ns(), lease, audio)

    def close(self) -> None:
        self.closed = True


class RecordingSink(Sink):
    """Keeps, per frame written: index, the stamp read back from its pixels, annotations, dropped."""

    def __init__(self, delay_s: float = 0.0, fail_at: int | None = None):
        self.delay_s = delay_s
        self.fail_at = fail_at
        self.records: list[dict[str, Any]] = []
        self.opened = False
        self.closed = 0

    async def open(self, info: StreamInfo) -> None:
        self.opened = True

    async def write(self, frame: Frame) -> None:
        if self.fail_at is not None and frame.index == self.fail_at:
            raise OSError("disk full")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        stamp = int(frame.image[0, 0, 0]) if frame.has_image else None
        self.records.append(
            {
                "index": frame.index,
                "stamp": stamp,
                "dropped": frame.dropped,
                "annotations": dict(frame.annotations),
                "audio_pts": frame.audio.pts if frame.audio is not None else None,
                "audio_samples": frame.audio.samples.shape[-1] if frame.audio is not None else 0,
                "latency_ms": (time.monotonic_ns() - frame.capture_ns) / 1e6,
                "time_s": time.monotonic(),
            }
        )

    async def close(self) -> None:
        self.closed += 1

    @property
    def indices(self) -> list[int]:
        return [r["index"] for r in self.records]


@pytest.fixture
def run():
    """Run a coroutine to completion in a fresh event loop."""
    return asyncio.run
