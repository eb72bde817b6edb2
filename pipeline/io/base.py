"""The two contracts every media end keeps: `Source.frames(ring)` and `Sink.write(frame)`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from pipeline.frames import Frame
from pipeline.pixels import Colour, PixelFormat, slot_shape
from pipeline.ringbuffer import RingBuffer

if TYPE_CHECKING:
    from pipeline.io.passthrough import PassThrough
    from pipeline.side_work import FramesInFlight


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What stages and sinks need to know before the first frame."""

    width: int  # px; 0 when the source has no video
    height: int
    fps: Fraction  # frames per second (the average one for variable-rate video)
    time_base: Fraction  # unit of Frame.pts
    audio_rate: int | None = None  # Hz; None when the source has no audio
    audio_channels: int = 0
    audio_layout: str | None = None  # FFmpeg's name ("5.1(side)"); None: the usual one for the channel count
    pixel_format: PixelFormat = PixelFormat.YUV420P  # layout of the pixels in each ring slot
    colour: Colour = field(default_factory=Colour)
    # Degrees counter-clockwise a player still has to turn the picture for display: 0 from files,
    # whose pictures are turned upright as they are decoded (pipeline.io.picture).
    rotation: int = 0
    frame_count: int | None = None  # frames expected, when known (for progress); None: unknown or endless
    description: str = ""  # one line for logs and the report: decoder, codec, container
    carried: PassThrough | None = None  # the input's other streams, for a sink to copy as they are
    # The input's language and title of its video and its audio stream ({"video": {...}, "audio": {...}}).
    tags: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def has_video(self) -> bool:
        return self.width > 0 and self.height > 0

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """The shape of one ring slot; (0,) when there is no video."""
        if not self.has_video:
            return (0,)
        return slot_shape(self.pixel_format, self.width, self.height)


class Source(ABC):
    """Produces frames into leased ring slots, in index order 0, 1, 2, … with no gaps."""

    live: bool = False  # True: capture time is wall-clock capture, and a full ring drops the oldest

    @property
    @abstractmethod
    def info(self) -> StreamInfo: ...

    @abstractmethod
    def frames(self, ring: RingBuffer) -> AsyncIterator[Frame]:
        """Yield frames; each holds a lease from `await ring.acquire()` with its pixels written in."""

    def close(self) -> None:  # noqa: B027 — most sources hold nothing
        """Free whatever the source holds (devices, files)."""

    def stats(self) -> dict[str, Any]:
        """Counters for the run report (skipped packets, stale frames, …)."""
        return {}


class Sink(ABC):
    """Receives every accepted frame, in index order, and writes it out."""

    @abstractmethod
    async def open(self, info: StreamInfo) -> None: ...

    def hold_tickets(self, frames: FramesInFlight | None) -> None:
        """Called before `open` on live runs with the graph's frames in flight. A sink that works on
        a picture after `write` returns (a WebRTC sender encodes it later) holds a ticket for it
        until done, so the graph's side work does not start in the middle of that."""
        return  # most sinks are done with a frame when `write` returns

    @abstractmethod
    async def write(self, frame: Frame) -> None:
        """Write one frame. A dropped frame (`frame.dropped`) has no image but keeps its audio.

        The caller releases the frame's slot when this returns, so a sink that encodes later
        must first copy what it needs, or `retain()` the lease (and mark it started, so the
        ring cannot reclaim it) and release it, on the event loop, once done.
        """

    @abstractmethod
    async def close(self) -> None:
        """Finish the output so it is valid and playable. Called once, also after an error."""
