"""Where frames end: a file or stream encoded with PyAV, or nowhere at all (for benchmarks and tests).

Encoding is the heaviest thing a sink does, so `FileSink` runs it on worker threads of its own,
one for video and one for audio (FFmpeg encodes without holding the GIL, so the two overlap):
the event loop keeps scheduling stages meanwhile, and one thread per stream keeps its order.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

from pipeline.device import to_numpy
from pipeline.errors import SinkError, one_line
from pipeline.frames import AudioChunk, Frame
from pipeline.io.audio_align import layout_name
from pipeline.io.base import Sink, StreamInfo
from pipeline.io.passthrough import PassThrough, is_timeless, kept_tags

log = logging.getLogger(__name__)

# Output extension → (video codec, audio codec). The muxer itself is chosen from the extension.
CONTAINER_CODECS = {
    ".mp4": ("libx264", "aac"),
    ".mov": ("libx264", "aac"),
    ".mkv": ("libx264", "aac"),
    ".webm": ("libvpx-vp9", "libopus"),
}
PIXEL_FORMAT = "yuv420p"  # what every player decodes; needs even width and height
NVENC_FOR = {"libx264": "h264_nvenc", "libx265": "hevc_nvenc"}  # on a GPU, the hardware encoder
SOFTWARE_FOR = {"h264_nvenc": "libx264", "hevc_nvenc": "libx265"}  # when the GPU refuses it
DEFAULT_CRF = 23  # x264's own default quality
DEFAULT_PRESET = "veryfast"  # x264: near real time for 1080p on a few cores, at a modest size cost
NVENC_PRESET = "p4"  # NVENC's balanced preset
LIVE_KEYFRAME_INTERVAL_S = 2.0  # s; a viewer joining a live stream waits at most this for a picture
ENCODE_AHEAD = 2  # frames a file sink may have queued on its encoder thread beyond the one encoding
AUDIO_BLOCK = 1024  # samples per encoded audio frame when the codec takes any size


# Why a file cannot be created or written, as opposed to an encoder that will not start.
UNWRITABLE = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR}


class NullSink(Sink):
    """Writes nothing and counts what it was given: for benchmarks and tests."""

    def __init__(self) -> None:
        self.info: StreamInfo | None = None
        self.frames = 0  # frames that arrived with pixels
        self.dropped = 0  # frames that arrived dropped (or as sound alone)
        self.audio_samples = 0  # per channel, over all frames, dropped ones included

    async def open(self, info: StreamInfo) -> None:
        self.info = info

    async def write(self, frame: Frame) -> None:
        if frame.has_image:
            self.frames += 1
        else:
            self.dropped += 1
        if frame.audio is not None:
            self.audio_samples += frame.audio.samples.shape[-1]

    async def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class EncoderSettings:
    """What `--video-codec`, `--crf`, `--bitrate` and `--preset` pass through to the encoder."""

    video_codec: str | None = None  # None: the container's default (NVENC on a GPU)
    crf: int | None = None  # constant quality; None: the encoder's default (23 for x264)
    bitrate: int | None = None  # bits/s; a target bitrate instead of constant quality
    preset: str | None = None  # speed preset in the encoder's own words (x264: ultrafast … veryslow)


class FileSink(Sink):
    """Encodes frames with PyAV into a file (or any target FFmpeg can mux to, see `NetworkSink`).

    H.264 + AAC in .mp4/.mov/.mkv, VP9 + Opus in .webm. Frames go to the encoder in the layout
    they sit in the ring (I420), so a plain transcode converts no colour. Timestamps are the
    source's, counted from its first frame (variable frame rate survives; a recording that starts
    an hour in starts at 0, as ffmpeg writes it); so are its colour tags. Pictures stored turned
    come upright from the source, as ffmpeg turns them, so no rotation is written unless the
    source's turn was no quarter turn (kept for players). Dropped frames leave a gap in the video
    (players hold the previous picture) while their audio is still written, so sound never skips.
    """

    container_format: str | None = None  # None: from the file extension
    low_latency = False  # encoder settings for live viewers rather than for file size
    writes_file = True  # False for network targets: nothing on disk to check or clean up
    carries_streams = True  # copies the input's other streams where the container takes them

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        settings: EncoderSettings | None = None,
        device: torch.device | str = "cpu",
    ):
        self.target = str(path)
        self.path = Path(path)
        self.settings = settings or EncoderSettings()
        self.device = torch.device(device)
        video_default, self.audio_codec = self._default_codecs()
        self.video_codec = self.settings.video_codec or video_default
        for name in (self.video_codec, self.audio_codec):
            try:
                av.Codec(name, "w")
            except av.codec.codec.UnknownCodecError:
                raise SinkError(f"{self.target}: this FFmpeg build has no {name!r} encoder") from None
        self.frames_written = 0
        self.frames_dropped = 0
        self.description = ""  # "libx264 + aac", once open
        self._container: Any = None  # av OutputContainer while open
        self._video: Any = None
        self._audio: Any = None
        self._audio_layout = "mono"
        self._last_pts: int | None = None
        self._pts_fixed = 0
        self._origin_s: Fraction | None = None  # where the first frame starts: the output's time 0
        self._pool: ThreadPoolExecutor | None = None  # the video encoder's thread (also opens and finishes)
        self._audio_pool: ThreadPoolExecutor | None = None
        self._queued: deque[list[asyncio.Future[None]]] = deque()  # each frame's encode jobs, oldest first
        self._mux_lock = threading.Lock()  # the two encoder threads share one muxer
        self._carried: PassThrough | None = None  # the input's other streams this output copies
        self._carried_out: dict[int, Any] = {}  # input stream index → output stream

    def _default_codecs(self) -> tuple[str, str]:
        codecs = CONTAINER_CODECS.get(self.path.suffix.lower())
        if codecs is None:
            supported = ", ".join(CONTAINER_CODECS)
            raise SinkError(f"{self.target}: unsupported output extension; use one of {supported}")
        video = codecs[0]
        if self.device.type == "cuda" and video in NVENC_FOR:
            video = NVENC_FOR[video]  # falls back to the software encoder at open if the GPU refuses it
        return video, codecs[1]

    def _check_target(self) -> None:
        parent = self.path.parent
        if not parent.is_dir():
            raise SinkError(f"{self.target}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise SinkError(f"{self.target}: directory {parent} is not writable")

    async def open(self, info: StreamInfo) -> None:
        self._check_target()
        if info.has_video and (info.width % 2 or info.height % 2):
            raise SinkError(
                f"{self.target}: {info.width}x{info.height} cannot be encoded as {PIXEL_FORMAT}; "
                "width and height must be even"
            )
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-video")
        try:
            await asyncio.get_running_loop().run_in_executor(pool, self._open, info)
        except BaseException:
            pool.shutdown(wait=False)
            raise
        self._pool = pool
        if self._audio is not None:
            self._audio_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-audio")

    async def write(self, frame: Frame) -> None:
        """Hand one frame's picture and sound to the encoder threads.

        A live sink waits for the frame to be encoded, so end-to-end latency includes the
        encoder. A file sink keeps up to `ENCODE_AHEAD` frames queued on the encoder threads,
        holding a reference to each frame's slot until it is encoded: the encoder never waits
        for the event loop between frames, and no pixels are copied to make that safe.
        """
        if self._container is None or self._pool is None:
            raise SinkError(f"{self.target}: write before open (or after close)")
        loop = asyncio.get_running_loop()
        if self._origin_s is None:
            self._origin_s = _start_of(frame)
        lease = frame.lease if frame.has_image and self._video is not None else None
        jobs: list[asyncio.Future[None]] = []
        if lease is not None:
            events = [e for e in frame.events.values() if e is not None]
            video_job = loop.run_in_executor(
                self._pool, self._encode_video, frame.index, lease.tensor, events, frame.pts, frame.time_base
            )
            jobs.append(video_job)
            self.frames_written += 1
        else:
            self.frames_dropped += 1
        audio = frame.audio
        if audio is not None and self._audio_pool is not None and audio.samples.shape[-1]:
            jobs.append(loop.run_in_executor(self._audio_pool, self._encode_audio, frame.index, audio))
        end = _end_of(frame)
        if self._carried is not None and end is not None:  # what the other streams hold up to this frame's end
            jobs.append(loop.run_in_executor(self._pool, self._copy_carried, end))
        if self.low_latency:
            for job in jobs:
                await job
            return
        if lease is not None:
            lease.retain()
            lease.started = True  # the ring may not reclaim a slot the encoder is reading
            video_job.add_done_callback(lambda _: lease.release())
        self._queued.append(jobs)
        while len(self._queued) > ENCODE_AHEAD or (self._queued and all(job.done() for job in self._queued[0])):
            for job in self._queued.popleft():
                await job  # raises the first encoding error

    async def close(self) -> None:
        """Flush both encoders and finish the file. Does nothing when not open; safe to call twice."""
        pool, self._pool = self._pool, None
        audio_pool, self._audio_pool = self._audio_pool, None
        if pool is None:
            return
        failure: BaseException | None = None
        queued, self._queued = self._queued, deque()
        for job in (job for jobs in queued for job in jobs):  # all queued frames go in before the flush
            try:
                await job
            except Exception as exc:  # raised after the file is finished
                failure = failure or exc
        try:
            await asyncio.get_running_loop().run_in_executor(pool, self._finish)
        finally:
            pool.shutdown(wait=False)
            if audio_pool is not None:
                audio_pool.shutdown(wait=False)
        if failure is not None:
            raise failure

    # The methods below run on the encoder threads: opening, video and finishing on one, audio on the other.

    def _open(self, info: StreamInfo) -> None:
        try:
            self._open_with(info, self.video_codec)
        except SinkError as exc:
            fallback = SOFTWARE_FOR.get(self.video_codec)
            if fallback is None or self.settings.video_codec is not None:
                raise
            log.warning("%s; encoding with %s instead", exc, fallback)
            self.video_codec = fallback
            self._open_with(info, fallback)

    def _open_with(self, info: StreamInfo, video_codec: str) -> None:
        existed = self.writes_file and self.path.exists()
        try:
            container = av.open(self.target, mode="w", format=self.container_format)
        except (av.FFmpegError, OSError) as exc:
            raise SinkError(f"{self.target}: cannot open for writing ({one_line(exc)})") from exc
        try:
            video = self._add_video(container, info, video_codec) if info.has_video else None
            audio = None
            if info.audio_rate:
                audio = container.add_stream(self.audio_codec, rate=_audio_rate(self.audio_codec, info.audio_rate))
                self._audio_layout = info.audio_layout or layout_name(max(1, info.audio_channels))
                audio.layout = _encoder_layout(self.audio_codec, self._audio_layout)  # PyAV remixes to it
            for stream, kind in ((video, "video"), (audio, "audio")):
                if stream is not None:
                    stream.metadata.update(info.tags.get(kind, {}))
            carried_out = self._add_carried(container, info.carried)
            # Open the encoders and write the header now, so a bad option or codec fails here
            # rather than at the first frame (or, with no frames, at close).
            container.start_encoding()
        except (av.FFmpegError, ValueError, TypeError, OSError) as exc:
            container.close()
            if self.writes_file and not existed:
                self.path.unlink(missing_ok=True)
            raise SinkError(self._setup_failure(exc, video_codec)) from exc
        self._container, self._video, self._audio = container, video, audio
        if info.carried is not None:
            info.carried.claim(set(carried_out))
            self._carried, self._carried_out = (info.carried, carried_out) if carried_out else (None, {})
        self._fifo = av.AudioFifo()
        self._audio_pts: int | None = None
        self._audio_block = (audio.codec_context.frame_size or AUDIO_BLOCK) if audio is not None else AUDIO_BLOCK
        parts = ([video_codec] if video is not None else []) + ([self.audio_codec] if audio is not None else [])
        self.description = " + ".join(parts)

    def _setup_failure(self, exc: BaseException, video_codec: str) -> str:
        """Name what failed when the output was set up: the protocol, the connection or the encoders."""
        if isinstance(exc, av.error.ProtocolNotFoundError):
            scheme = self.target.split(":", 1)[0]
            return f"{self.target}: this FFmpeg build cannot write {scheme}:// (it has no {scheme} protocol)"
        if not self.writes_file and isinstance(exc, (ConnectionError, TimeoutError, av.error.HTTPError)):
            return f"{self.target}: cannot connect ({one_line(exc)})"
        if self.writes_file and isinstance(exc, OSError) and exc.errno in UNWRITABLE:
            # The file opens when the header is written: the path, not the encoders, is what failed
            # (a directory of a special filesystem, a read-only or full disk).
            return f"{self.target}: the path cannot be written ({exc.strerror or one_line(exc)})"
        return f"{self.target}: cannot set up {video_codec}/{self.audio_codec} ({one_line(exc)})"

    def _add_video(self, container: Any, info: StreamInfo, video_codec: str) -> Any:
        video = container.add_stream(video_codec, rate=info.fps)
        video.width = info.width
        video.height = info.height
        video.pix_fmt = PIXEL_FORMAT
        context = video.codec_context
        context.time_base = info.time_base  # the source's own: variable frame rate survives
        # Frame threads, as the ffmpeg command line uses: PyAV's default (slice threads) makes
        # x264 markedly slower.
        context.thread_type = "AUTO"
        colour = info.colour
        context.colorspace = colour.matrix
        context.color_primaries = colour.primaries
        context.color_trc = colour.transfer
        context.color_range = colour.range
        if info.rotation:
            video.set_display_rotation(info.rotation)
        video.options = _video_options(video_codec, self.settings, self.low_latency, info.fps)
        if self.settings.bitrate:
            context.bit_rate = self.settings.bitrate
        return video

    def _add_carried(self, container: Any, carried: PassThrough | None) -> dict[int, Any]:
        """Output streams for the input's other streams this container can hold, copied as they
        are; one line names those it cannot (a subtitle format mp4 has no place for, say)."""
        if carried is None:
            return {}
        supported = container.supported_codecs if self.carries_streams else set()
        out: dict[int, Any] = {}
        for index, stream in carried.streams.items():
            name = stream.codec_context.name if stream.codec_context is not None else None
            if name not in supported:
                continue
            try:
                copy = container.add_stream_from_template(stream)
            except (av.FFmpegError, ValueError, TypeError) as exc:
                log.debug("%s: cannot copy stream #%d (%s)", self.target, index, one_line(exc))
                continue
            copy.metadata.update(kept_tags(stream))
            copy.disposition = stream.disposition  # default, forced, commentary, attached picture …
            out[index] = copy
        left_out = set(carried.streams) - set(out)
        if out:
            log.info("%s: copying %s as they are", self.target, carried.names(set(out)))
        if left_out:
            if not self.carries_streams:
                why = "this target holds one video and one audio stream"
            elif self.path.suffix.lower() == ".mkv":
                why = "this container has no place for them"
            else:
                why = "this container has no place for them; .mkv takes most"
            log.warning("%s: %s not carried through (%s)", self.target, carried.names(left_out), why)
        return out

    def _encode_video(self, index: int, image: Any, events: list[Any], pts: int | None, time_base: Fraction) -> None:
        try:
            picture = _picture(host_pixels(image, events))
            if pts is None:
                pts = 0 if self._last_pts is None else self._last_pts + 1
            else:
                pts -= math.floor((self._origin_s or 0) / time_base)
            if self._last_pts is not None and pts <= self._last_pts:
                pts = self._last_pts + 1  # encoders refuse repeated or backward timestamps
                self._pts_fixed += 1
            self._last_pts = pts
            picture.pts = pts
            picture.time_base = time_base  # PyAV rescales to the encoder's time base
            self._mux(self._video.encode(picture))
        except (av.FFmpegError, ValueError, OSError) as exc:
            raise SinkError(f"{self.target}: encoding frame {index} failed ({one_line(exc)})") from exc

    def _encode_audio(self, index: int, audio: AudioChunk) -> None:
        try:
            if self._audio_pts is None:  # the first chunk's place sets the offset to the video
                self._audio_pts = audio.pts - math.floor((self._origin_s or 0) * audio.sample_rate)
            self._fifo.write(self._audio_frame(audio))
            packets = []
            for block in self._fifo.read_many(self._audio_block):
                packets += self._audio.encode(self._stamped(block))
            self._mux(packets)
        except (av.FFmpegError, ValueError, OSError) as exc:
            raise SinkError(f"{self.target}: encoding the audio of frame {index} failed ({one_line(exc)})") from exc

    def _copy_carried(self, until_s: Fraction | None, container: Any = None) -> None:
        """Mux the other streams' packets due by `until_s` (None: all that are left). Their trouble
        is never the output's: copying stops with one warning, and the processed streams go on."""
        if self._carried is None:
            return
        try:
            packets = self._carried_packets(until_s)
            if packets:
                with self._mux_lock:
                    (container or self._container).mux(packets)
        except (av.FFmpegError, ValueError, OSError) as exc:
            log.warning("%s: copying the input's other streams stopped (%s)", self.target, one_line(exc))
            self._carried = None

    def _carried_packets(self, until_s: Fraction | None) -> list[av.Packet]:
        """The other streams' packets that start before `until_s` (None: all that are left), moved
        to the output's clock; a packet that would start before the output does is let go."""
        if self._carried is None:
            return []
        packets = []
        for packet in self._carried.take(until_s):
            out = self._carried_out[packet.stream_index]
            if not is_timeless(packet):
                shift = math.floor((self._origin_s or 0) / packet.time_base)
                if packet.pts is not None:
                    packet.pts -= shift
                if packet.dts is not None:
                    packet.dts -= shift
                if packet.pts is not None and packet.pts < 0:
                    continue  # shown before the output starts (an encoder's priming, say)
            packet.stream = out
            packets.append(packet)
        return packets

    def _mux(self, packets: list[av.Packet]) -> None:
        if packets:
            with self._mux_lock:
                self._container.mux(packets)

    def _audio_frame(self, chunk: AudioChunk) -> av.AudioFrame:
        # Chunks follow the video frame rate, not the codec's frame size (1024 samples for AAC,
        # 960 for Opus); the FIFO re-blocks them, and `_stamped` numbers the blocks.
        samples = np.ascontiguousarray(to_numpy(chunk.samples.detach().cpu()), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=self._audio_layout)
        frame.sample_rate = chunk.sample_rate
        return frame

    def _stamped(self, block: av.AudioFrame) -> av.AudioFrame:
        """Number blocks by sample count from the first chunk's pts: continuous, so the encoder never balks."""
        block.pts = self._audio_pts
        block.time_base = Fraction(1, block.sample_rate)
        self._audio_pts += block.samples
        return block

    def _finish(self) -> None:
        container, self._container = self._container, None
        if container is None:
            return
        if self._pts_fixed:
            log.warning("%s: %d frame timestamp(s) were not increasing and were moved on", self.target, self._pts_fixed)
        try:
            packets = self._video.encode(None) if self._video is not None else []
            if self._audio is not None:
                rest = self._fifo.read()  # the last, short block
                if rest is not None:
                    packets += self._audio.encode(self._stamped(rest))
                packets += self._audio.encode(None)
            container.mux(packets)
            self._copy_carried(None, container)
        except (av.FFmpegError, ValueError, OSError) as exc:
            raise SinkError(f"{self.target}: flushing the encoders failed ({one_line(exc)})") from exc
        finally:
            try:
                container.close()
            except (av.FFmpegError, OSError) as exc:
                raise SinkError(f"{self.target}: closing the output failed ({one_line(exc)})") from exc


def _picture(pixels: np.ndarray) -> av.VideoFrame:
    """An encoder frame over the slot's pixels: I420 is wrapped as it is, RGB converted by the encoder."""
    if pixels.ndim == 2:
        # Wrapped, not copied: FFmpeg copies a frame it does not own when the encoder takes it.
        return av.VideoFrame.from_numpy_buffer(pixels, format=PIXEL_FORMAT)
    return av.VideoFrame.from_ndarray(pixels, format="rgb24")


def host_pixels(image: Any, events: list[Any]) -> np.ndarray:
    """The slot's pixels in host memory: a zero-copy view on CPU, one device-to-host copy on CUDA."""
    if image.device.type == "cpu":
        pixels = to_numpy(image)
    else:
        for event in events:  # the stages that wrote the pixels ran on their own streams
            event.synchronize()
        pixels = image.cpu().numpy()
    return pixels if pixels.flags.c_contiguous else np.ascontiguousarray(pixels)


def _video_options(codec: str, settings: EncoderSettings, low_latency: bool, fps: Fraction) -> dict[str, str]:
    """Quality and speed settings, in the encoder's own option names."""
    crf = settings.crf if settings.crf is not None else DEFAULT_CRF
    options: dict[str, str] = {}
    if codec in ("libx264", "libx265"):
        options["preset"] = settings.preset or DEFAULT_PRESET
        if not settings.bitrate:
            options["crf"] = str(crf)
        if low_latency:  # no lookahead or B-frames: each frame leaves the encoder as it goes in
            options["tune"] = "zerolatency"
    elif codec in ("libvpx-vp9", "libvpx"):
        # "good" (the default deadline) encodes far below real time; bitrate 0 makes crf the target.
        options |= {"deadline": "realtime", "cpu-used": "8", "row-mt": "1"}
        if not settings.bitrate:
            options |= {"crf": str(crf), "b": "0"}
    elif codec.endswith("_nvenc"):
        options["preset"] = settings.preset or NVENC_PRESET
        if not settings.bitrate:
            options |= {"rc": "vbr", "cq": str(crf)}
        if low_latency:
            options |= {"tune": "ll", "zerolatency": "1", "delay": "0"}
    elif settings.preset:
        options["preset"] = settings.preset
    if low_latency:
        options["g"] = str(max(1, round(float(fps) * LIVE_KEYFRAME_INTERVAL_S)))
    return options


# The layouts libopus encodes (Vorbis channel order), by channel count; others are remixed to these.
OPUS_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1"}


def _encoder_layout(codec: str, layout: str) -> str:
    """`layout` if the encoder takes it, else the one it takes with as many channels (Opus has no
    2.1, 4.0 or 5.1(side): 3.0, quad and 5.1 hold the same sound)."""
    if codec != "libopus" or layout in OPUS_LAYOUTS.values():
        return layout
    return OPUS_LAYOUTS[min(av.AudioLayout(layout).nb_channels, max(OPUS_LAYOUTS))]


def _audio_rate(codec: str, rate: int) -> int:
    """`rate` if the encoder takes it, else the encoder's highest rate (PyAV resamples to it)."""
    rates = av.Codec(codec, "w").audio_rates
    return rate if not rates or rate in rates else max(rates)


def _end_of(frame: Frame) -> Fraction | None:
    """Where a frame ends on the source's clock: its sound's end, or its picture's start when it
    has no sound (the next picture's start is not known yet); None when it has neither."""
    audio = frame.audio
    if audio is not None and audio.samples.shape[-1]:
        return Fraction(audio.pts + audio.samples.shape[-1], audio.sample_rate)
    if frame.pts is not None:
        return frame.pts * frame.time_base
    return None


def _start_of(frame: Frame) -> Fraction:
    """Where a frame starts on the source's clock: its picture's time, or its sound's when that
    begins earlier. The first frame's start becomes the output's time 0, as ffmpeg makes an
    input's start time 0: a recording that starts an hour in gets no hour of blank lead-in."""
    starts = []
    if frame.has_image and frame.pts is not None:
        starts.append(frame.pts * frame.time_base)
    audio = frame.audio
    if audio is not None and audio.samples.shape[-1]:
        starts.append(Fraction(audio.pts, audio.sample_rate))
    return min(starts, default=Fraction(0))
