"""Where frames end: a file encoded with PyAV, or nowhere at all (for benchmarks and tests).

Encoding is the heaviest thing a sink does, so `FileSink` runs it on one worker thread of its
own: the event loop keeps scheduling stages meanwhile, and one thread keeps frames in order.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from pipeline.device import to_numpy
from pipeline.errors import SinkError
from pipeline.frames import AudioChunk, Frame
from pipeline.io.base import Sink, StreamInfo

# Output extension → (video codec, audio codec). The muxer itself is chosen from the extension.
CONTAINER_CODECS = {
    ".mp4": ("libx264", "aac"),
    ".mov": ("libx264", "aac"),
    ".mkv": ("libx264", "aac"),
    ".webm": ("libvpx-vp9", "libopus"),
}
PIXEL_FORMAT = "yuv420p"  # what every player decodes; needs even width and height
AUDIO_LAYOUTS = {1: "mono", 2: "stereo"}


class NullSink(Sink):
    """Writes nothing and counts what it was given: for benchmarks and tests."""

    def __init__(self) -> None:
        self.info: StreamInfo | None = None
        self.frames = 0  # frames that arrived with pixels
        self.dropped = 0  # frames that arrived dropped
        self.audio_samples = 0  # per channel, over all frames, dropped ones included

    async def open(self, info: StreamInfo) -> None:
        self.info = info

    async def write(self, frame: Frame) -> None:
        if frame.dropped:
            self.dropped += 1
        else:
            self.frames += 1
        if frame.audio is not None:
            self.audio_samples += frame.audio.samples.shape[-1]

    async def close(self) -> None:
        pass


class FileSink(Sink):
    """Encodes frames into a video file: H.264 + AAC in .mp4/.mov/.mkv, VP9 + Opus in .webm.

    Dropped frames leave a gap in the video (players hold the previous picture) while their
    audio is still written, so sound never skips.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        video_codec: str | None = None,
        crf: int = 23,
        preset: str = "veryfast",
    ):
        self.path = Path(path)
        codecs = CONTAINER_CODECS.get(self.path.suffix.lower())
        if codecs is None:
            supported = ", ".join(CONTAINER_CODECS)
            raise SinkError(f"{self.path}: unsupported output extension; use one of {supported}")
        self.video_codec = video_codec or codecs[0]
        self.audio_codec = codecs[1]
        for name in (self.video_codec, self.audio_codec):
            try:
                av.Codec(name, "w")
            except av.codec.codec.UnknownCodecError:
                raise SinkError(f"{self.path}: this FFmpeg build has no {name!r} encoder") from None
        self.crf = crf  # constant rate factor: lower is better quality and bigger files
        self.preset = preset  # x264/x265 speed preset
        self.frames_written = 0
        self.frames_dropped = 0
        self._container: Any = None  # av OutputContainer while open
        self._video: Any = None
        self._audio: Any = None
        self._audio_layout = "mono"
        self._pool: ThreadPoolExecutor | None = None

    async def open(self, info: StreamInfo) -> None:
        parent = self.path.parent
        if not parent.is_dir():
            raise SinkError(f"{self.path}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise SinkError(f"{self.path}: directory {parent} is not writable")
        if info.width % 2 or info.height % 2:
            raise SinkError(
                f"{self.path}: {info.width}x{info.height} cannot be encoded as {PIXEL_FORMAT}; "
                "width and height must be even"
            )
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-file")
        try:
            await asyncio.get_running_loop().run_in_executor(pool, self._open, info)
        except BaseException:
            pool.shutdown(wait=False)
            raise
        self._pool = pool

    async def write(self, frame: Frame) -> None:
        """Encode one frame; the pixels are copied into the encoder's frame before this returns."""
        if self._container is None or self._pool is None:
            raise SinkError(f"{self.path}: write before open (or after close)")
        image = None if frame.dropped else frame.image
        events = [] if image is None else [e for e in frame.events.values() if e is not None]
        await asyncio.get_running_loop().run_in_executor(
            self._pool, self._encode, frame.index, image, events, frame.pts, frame.time_base, frame.audio
        )
        if image is None:
            self.frames_dropped += 1
        else:
            self.frames_written += 1

    async def close(self) -> None:
        """Flush both encoders and finish the file. Does nothing when not open; safe to call twice."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(pool, self._finish)
        finally:
            pool.shutdown(wait=False)

    # The methods below run on the worker thread.

    def _open(self, info: StreamInfo) -> None:
        existed = self.path.exists()
        try:
            container = av.open(str(self.path), mode="w")
        except (av.FFmpegError, OSError) as exc:
            raise SinkError(f"{self.path}: cannot open for writing ({_one_line(exc)})") from exc
        try:
            video = container.add_stream(self.video_codec, rate=info.fps)
            video.width = info.width
            video.height = info.height
            video.pix_fmt = PIXEL_FORMAT
            video.codec_context.time_base = info.time_base
            video.options = _video_options(self.video_codec, self.crf, self.preset)
            audio = None
            if info.audio_rate:
                audio = container.add_stream(self.audio_codec, rate=_audio_rate(self.audio_codec, info.audio_rate))
                channels = max(1, info.audio_channels)
                self._audio_layout = AUDIO_LAYOUTS.get(channels, f"{channels}c")
                audio.layout = self._audio_layout
            # Open the encoders and write the header now, so a bad option or codec fails here
            # rather than at the first frame (or, with no frames, at close).
            container.start_encoding()
        except (av.FFmpegError, ValueError, TypeError, OSError) as exc:
            container.close()
            if not existed:
                self.path.unlink(missing_ok=True)
            raise SinkError(
                f"{self.path}: cannot set up {self.video_codec}/{self.audio_codec} ({_one_line(exc)})"
            ) from exc
        self._container, self._video, self._audio = container, video, audio

    def _encode(
        self,
        index: int,
        image: Any,
        events: list[Any],
        pts: int,
        time_base: Fraction,
        audio: AudioChunk | None,
    ) -> None:
        try:
            packets = []
            if image is not None:
                picture = av.VideoFrame.from_ndarray(_host_pixels(image, events), format="rgb24")
                picture.pts = pts
                picture.time_base = time_base  # PyAV rescales to the encoder's time base
                packets += self._video.encode(picture)
            if audio is not None and self._audio is not None:
                packets += self._audio.encode(self._audio_frame(audio))
            self._container.mux(packets)
        except (av.FFmpegError, ValueError, OSError) as exc:
            raise SinkError(f"{self.path}: encoding frame {index} failed ({_one_line(exc)})") from exc

    def _audio_frame(self, chunk: AudioChunk) -> av.AudioFrame:
        # Chunks follow the video frame rate, not the codec's frame size (1024 samples for AAC,
        # 960 for Opus); the encoder's own resampler re-chunks them, so no AudioFifo is needed.
        samples = np.ascontiguousarray(to_numpy(chunk.samples.detach().cpu()), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=self._audio_layout)
        frame.sample_rate = chunk.sample_rate
        frame.pts = chunk.pts
        frame.time_base = Fraction(1, chunk.sample_rate)
        return frame

    def _finish(self) -> None:
        container, self._container = self._container, None
        if container is None:
            return
        try:
            packets = self._video.encode(None)
            if self._audio is not None:
                packets += self._audio.encode(None)
            container.mux(packets)
        except (av.FFmpegError, ValueError, OSError) as exc:
            raise SinkError(f"{self.path}: flushing the encoders failed ({_one_line(exc)})") from exc
        finally:
            try:
                container.close()
            except (av.FFmpegError, OSError) as exc:
                raise SinkError(f"{self.path}: closing the file failed ({_one_line(exc)})") from exc


def _host_pixels(image: Any, events: list[Any]) -> np.ndarray:
    """H×W×3 uint8 pixels in host memory: a zero-copy view on CPU, one device-to-host copy on CUDA."""
    if image.device.type == "cpu":
        pixels = to_numpy(image)
    else:
        for event in events:  # the stages that wrote the pixels ran on their own streams
            event.synchronize()
        pixels = image.cpu().numpy()
    return pixels if pixels.flags.c_contiguous else np.ascontiguousarray(pixels)


def _video_options(codec: str, crf: int, preset: str) -> dict[str, str]:
    """Quality and speed settings, in the encoder's own option names."""
    if codec in ("libx264", "libx265"):
        return {"crf": str(crf), "preset": preset}
    if codec == "libvpx-vp9":
        # "good" (the default deadline) encodes far below real time; bitrate 0 makes crf the target.
        return {"crf": str(crf), "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"}
    return {}


def _audio_rate(codec: str, rate: int) -> int:
    """`rate` if the encoder takes it, else the encoder's highest rate (PyAV resamples to it)."""
    rates = av.Codec(codec, "w").audio_rates
    return rate if not rates or rate in rates else max(rates)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
