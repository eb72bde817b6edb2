"""Sources PyAV opens: files (mp4, mkv, webm, mov, ts, …), http/rtsp URLs and capture devices.

A network stream (rtsp, rtmp, udp, srt, …, or an http(s) URL with no known duration, such as
a live HLS playlist) is live, as a camera is: it comes at the sender's pace, whether or not
we keep up, so a frame that finds no free ring slot is dropped rather than the reader waiting,
and the run gets deadlines and the scheduler. An http URL of a plain file is read as a file.

Decoding runs on a reader thread of its own, so it overlaps the stages and the encoder: the
event loop hands the reader pinned ring leases, the reader writes each picture into one and
posts the frame back. The reader also cuts the audio into one chunk per video frame (see
`audio_align`). Bad packets are skipped
and counted; an input that ends early still yields everything decoded before the damage,
and then a `SourceError` that the run reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any
from urllib.parse import urlparse

import av
import numpy as np
import torch

from pipeline.errors import SourceError, one_line
from pipeline.frames import AudioChunk, Frame, joined
from pipeline.io.audio_align import MAX_CHANNELS, AudioAligner, layout_name
from pipeline.io.base import Source, StreamInfo
from pipeline.io.passthrough import PassThrough, kept_tags, stream_name
from pipeline.io.picture import PictureWriter, even_size, quarter_turns
from pipeline.io.timeline import Timeline
from pipeline.pixels import RANGE_FULL, Colour
from pipeline.ringbuffer import FullPolicy, RingBuffer, SlotLease

log = logging.getLogger(__name__)

PREFETCH_FRAMES = 4  # ring slots handed to the reader ahead of the pipeline (files)
MAX_AUDIO_WAIT_FRAMES = 60  # video frames held back waiting for audio before sending them without
AUDIO_ONLY_CHUNK_RATE = 50  # chunks per second for a file with no video: 20 ms each
DEFAULT_FPS = Fraction(30)  # for a stream that states no rate
OPEN_TIMEOUT_S = 10.0  # s; a URL that sends nothing for this long is given up
JOIN_TIMEOUT_S = 2.0  # s; how long closing waits for the reader thread to notice
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "rtp", "udp", "srt", "tcp")  # always live
CARRIED_TYPES = ("video", "audio", "subtitle", "data")  # stream kinds a muxer may copy packet for packet
AVFMT_TS_DISCONT = 0x0200  # FFmpeg's flag for formats whose timestamps may jump (MPEG-TS)
HTTP_SCHEMES = ("http", "https")  # live when the stream states no duration (live HLS, a broadcast)


@dataclass(slots=True)
class _Decoded:
    """One frame's worth from the reader: a picture (or None without video) and its audio."""

    picture: av.VideoFrame | None
    pts: int
    audio: AudioChunk | None
    capture_ns: int  # when the reader got it; used as capture time by capture devices
    lease: SlotLease | None = None  # the slot the picture was written into


_END = object()  # the reader is done
_STOP = object()  # token telling the reader to stop


def _take(tokens: queue.SimpleQueue[Any], stop: threading.Event) -> Any:
    """The next token, waiting for it, or _STOP."""
    while not stop.is_set():
        try:
            return tokens.get(timeout=0.1)
        except queue.Empty:
            continue
    return _STOP


class MediaSource(Source):
    """Frames from anything PyAV can open, decoded on a thread and copied into ring slots."""

    def __init__(
        self,
        url: str | os.PathLike[str],
        *,
        container_format: str | None = None,
        options: dict[str, str] | None = None,
        capture: bool = False,
        realtime: bool = False,
        device: torch.device | str = "cpu",
        frames: int | None = None,
        label: str | None = None,
    ):
        self.url = os.fspath(url)
        self.label = label or self.url  # how logs and errors name it
        self.capture = capture  # a camera: frames come at its pace and stale ones are dropped
        self.realtime = realtime  # a file paced at its own frame rate
        self.stream = False  # a live network stream: paced by its sender, like a camera (set once open)
        self.live = capture or realtime
        self.device = torch.device(device)
        self.frame_limit = frames
        self.corrupt_packets = 0  # packets the decoder refused; skipped
        self.stale_dropped = 0  # camera or stream frames dropped because a newer one was waiting
        self.input_error: str | None = None  # why reading stopped early, if it did
        self._last_video_s: float | None = None  # presentation time of the latest decoded picture
        self._format, self._options = container_format, options  # to open it again (`_lost_at_the_cut`)
        self._container = self._open(container_format, options)
        self.stream = not capture and is_live_stream(self.url, self._container)
        if self.stream:
            self.realtime = False  # the sender paces it; pacing it again would only add latency
            self.live = True
        try:
            self._setup_streams()
        except BaseException:
            self._container.close()
            raise

    # Opening and probing, on the caller's thread.

    def _open(self, container_format: str | None, options: dict[str, str] | None) -> Any:
        hwaccel, why = _hwaccel_for(self.device)
        self._decoder_note = why
        kwargs: dict[str, Any] = {"format": container_format, "options": options or {}, "timeout": OPEN_TIMEOUT_S}
        if hwaccel is not None:
            try:
                return av.open(self.url, mode="r", hwaccel=hwaccel, **kwargs)
            except (av.FFmpegError, OSError) as exc:
                # FFmpeg could not start a CUDA decoder here (driver libraries, device in use, …):
                # decode in software rather than fail; a file that is itself bad fails again below.
                self._decoder_note = f"software decoder: NVDEC could not start ({one_line(exc)})"
        try:
            return av.open(self.url, mode="r", **kwargs)
        except FileNotFoundError:
            raise SourceError(f"{self.label}: no such file") from None
        except IsADirectoryError:
            raise SourceError(f"{self.label}: is a directory") from None
        except PermissionError:
            raise SourceError(f"{self.label}: permission denied") from None
        except (av.FFmpegError, OSError) as exc:
            hint = ""
            if isinstance(exc, av.error.InvalidDataError):
                if _starts_as_iso_media(self.url):
                    hint = "; an mp4 cut short before its index (moov atom) was written cannot be read"
                else:
                    hint = "; it is not a media file FFmpeg recognises"
            raise SourceError(f"{self.label}: cannot be read as media ({one_line(exc)}){hint}") from None

    def _setup_streams(self) -> None:
        container = self._container
        video = next(iter(container.streams.video), None)
        audio = next(iter(container.streams.audio), None)
        if video is None and audio is None:
            raise SourceError(f"{self.label}: holds no video or audio stream")
        for stream, kind in ((video, "video"), (audio, "audio")):
            if stream is not None and not _has_decoder(stream):
                if stream.codec_context is None:  # the container names a codec FFmpeg has never heard of
                    raise SourceError(f"{self.label}: unsupported {kind} codec (one FFmpeg does not recognise)")
                raise SourceError(
                    f"{self.label}: unsupported {kind} codec {stream.codec_context.name!r} "
                    "(this FFmpeg build cannot decode it)"
                )
        others = [stream for stream in container.streams if stream is not video and stream is not audio]
        carried = [stream for stream in others if stream.type in CARRIED_TYPES]
        left_out = [stream for stream in others if stream.type not in CARRIED_TYPES]
        if left_out:  # never silently: a font or anything else a user may count on
            log.warning("%s: %s not carried through", self.label, ", ".join(stream_name(s) for s in left_out))
        jumps_forward = bool(container.format.flags & AVFMT_TS_DISCONT)  # MPEG-TS and the like
        self._carried = PassThrough(carried, jumps_forward=jumps_forward) if carried else None
        self._timeline: Timeline | None = None
        if video is not None:
            video.thread_type = "AUTO"  # frame threads: decode several frames at once
            fps = Fraction(video.average_rate or video.guessed_rate or video.base_rate or DEFAULT_FPS)
            time_base = Fraction(video.time_base) if video.time_base else 1 / fps
            self._timeline = Timeline(self.label, time_base, fps, jumps_forward=jumps_forward)
        self._video, self._audio = video, audio
        self._audio_rate = audio.codec_context.sample_rate if audio is not None else None
        self._audio_layout = _kept_layout(audio) if audio is not None else None
        self._audio_channels = av.AudioLayout(self._audio_layout).nb_channels if self._audio_layout else 0
        self._events = self._decode_events()
        self._lookahead: deque[tuple[str, Any]] = deque()
        first = self._probe_first_picture() if video is not None else None
        if video is not None and first is None:
            reason = f": {self.input_error}" if self.input_error else ""
            raise SourceError(f"{self.label}: no video frame could be decoded{reason}")
        self._turns = self._upright_turns(first)
        self._info = self._stream_info(first)
        self._writer = None
        if first is not None:
            self._writer = PictureWriter(*even_size(first.width, first.height), self.device, turns=self._turns)
        log.info("%s: %s", self.label, self._info.description)

    def _upright_turns(self, first: av.VideoFrame | None) -> int:
        """Quarter turns that make the pictures upright (as ffmpeg turns them); 0 for an angle
        that is no multiple of 90°, whose turn is left to players, with a warning."""
        rotation = first.rotation if first is not None and first.rotation else 0
        turns = quarter_turns(rotation)
        if turns is None:
            log.warning(
                "%s: the picture is shown turned %s°, not a multiple of 90°: it is kept as stored, with its turn",
                self.label,
                rotation,
            )
            return 0
        return turns

    def _probe_first_picture(self) -> av.VideoFrame | None:
        """Decode up to the first picture, keeping what came before it, to learn the real size and layout."""
        for event in self._events:
            self._lookahead.append(event)
            if event[0] == "video":
                return event[1]
        return None

    def _stream_info(self, first: av.VideoFrame | None) -> StreamInfo:
        video, audio = self._video, self._audio
        parts = []
        if video is not None and first is not None:
            fps = video.average_rate or video.guessed_rate or video.base_rate or DEFAULT_FPS
            fps = Fraction(fps)
            time_base = Fraction(video.time_base) if video.time_base else 1 / fps
            width, height = even_size(first.width, first.height)
            if (width, height) != (first.width, first.height):
                log.warning(
                    "%s: %dx%d is cropped to %dx%d (4:2:0 video needs an even width and height)",
                    self.label,
                    first.width,
                    first.height,
                    width,
                    height,
                )
            colour = Colour(
                matrix=int(first.colorspace),
                primaries=int(first.color_primaries),
                transfer=int(first.color_trc),
                range=RANGE_FULL if first.format.name.startswith("yuvj") else int(first.color_range),
            )
            # Turned upright as the pictures are copied (see pipeline.io.picture): the stream is
            # the size players show, and carries no turn left to make (but one that is no quarter).
            if self._turns % 2:
                width, height = height, width
            turned = 90 * self._turns
            rotation = 0 if turned or not first.rotation else round(first.rotation) % 360
            frame_count = video.frames or _estimated_frames(video, fps)
            hw = " on NVDEC" if video.codec_context.is_hwaccel else ""
            parts.append(
                f"video {video.codec_context.name}{hw} {first.width}x{first.height} {first.format.name} "
                f"{float(fps):.3g} fps{f', turned {turned}° upright' if turned else ''} ({self._decoder_note})"
            )
        else:
            fps = Fraction(AUDIO_ONLY_CHUNK_RATE)
            time_base = 1 / fps
            width = height = 0
            colour, rotation = Colour(), 0
            frame_count = None
            if audio is not None and audio.duration and audio.time_base:
                frame_count = int(audio.duration * audio.time_base * AUDIO_ONLY_CHUNK_RATE) + 1
        if audio is not None:
            parts.append(f"audio {audio.codec_context.name} {self._audio_rate} Hz {self._audio_layout}")
        if self.frame_limit is not None:
            frame_count = self.frame_limit if frame_count is None else min(frame_count, self.frame_limit)
        return StreamInfo(
            width=width,
            height=height,
            fps=fps,
            time_base=time_base,
            audio_rate=self._audio_rate,
            audio_channels=self._audio_channels,
            audio_layout=self._audio_layout,
            colour=colour,
            rotation=rotation,
            frame_count=frame_count,
            description=", ".join(parts) or "empty",
            carried=self._carried,
            tags={
                kind: kept_tags(stream) for kind, stream in (("video", video), ("audio", audio)) if stream is not None
            },
        )

    @property
    def info(self) -> StreamInfo:
        return self._info

    @property
    def paced_by_sender(self) -> bool:
        """A camera or a live stream: frames exist at the sender's pace, and a stale one is dropped."""
        return self.capture or self.stream

    # Reading, on the reader thread.

    def _decode_events(self) -> Iterator[tuple[str, Any]]:
        """("video", picture) and ("audio", (samples, first sample index)) in decode order."""
        streams = [s for s in (self._video, self._audio) if s is not None]
        resampler = None
        if self._audio is not None:
            resampler = av.AudioResampler(format="fltp", layout=self._audio_layout, rate=self._audio_rate)
        carried = list(self._carried.streams.values()) if self._carried is not None else []
        packets = self._container.demux(*streams, *carried)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except (av.FFmpegError, OSError) as exc:
                self.input_error = f"input ends early ({one_line(exc)})"
                break
            if packet.stream is not self._video and packet.stream is not self._audio:
                if self._carried is not None:  # a stream carried through, not decoded here
                    self._carried.put(packet)
                continue
            try:
                decoded = packet.decode()
            except (av.FFmpegError, ValueError) as exc:
                self.corrupt_packets += 1
                if self.corrupt_packets == 1:
                    log.warning("%s: skipping a corrupt packet (%s)", self.label, one_line(exc))
                continue
            for item in decoded:
                if packet.stream is self._video:
                    yield "video", self._placed(item)
                elif resampler is not None:
                    yield from _audio_events(resampler, item)
        cut = False
        if self.input_error is None:
            self.input_error = self._short_of_declared()
            cut = self.input_error is not None
        if self.input_error is not None:  # flush what the decoders still hold
            for stream in streams:
                with contextlib.suppress(av.FFmpegError, ValueError):
                    for item in stream.decode(None):
                        if stream is self._video:
                            yield "video", self._placed(item)
                        elif resampler is not None:
                            yield from _audio_events(resampler, item)
            if cut:  # the file simply stops: what FFmpeg's frame threads lost there can be read again
                for item in self._lost_at_the_cut():
                    yield "video", self._placed(item)

    def _lost_at_the_cut(self) -> Iterator[av.VideoFrame]:
        """Pictures after the last one given that a single-threaded decoder still gets from a cut file.

        When the packet at a cut fails in one of FFmpeg's frame threads, the pictures the other
        threads hold are lost with it, where a decoder on one thread still gives them (ffmpeg
        keeps them). So a file found cut is read again from the keyframe before the last picture
        given, on one thread, and what comes after that picture is kept.
        """
        video, timeline = self._video, self._timeline
        if video is None or timeline is None or timeline.last_input is None or self.live:
            return
        if video.thread_type.name != "AUTO" or video.codec_context.is_hwaccel or timeline.jumps:
            return  # (after a jump, a timestamp does not say where in the file it was)
        if not os.path.isfile(self.url):
            return
        after = timeline.last_input
        try:
            options = self._options or {}
            with av.open(self.url, mode="r", format=self._format, options=options, timeout=OPEN_TIMEOUT_S) as again:
                stream = again.streams[video.index]
                stream.thread_type = "NONE"
                again.seek(after, stream=stream, backward=True)
                packets = again.demux(stream)
                while True:
                    try:
                        packet = next(packets)
                    except (StopIteration, av.FFmpegError, OSError):
                        break  # the end, or the damage: nothing past it
                    try:
                        pictures = packet.decode()
                    except (av.FFmpegError, ValueError):
                        continue
                    yield from (p for p in pictures if p.pts is not None and p.pts > after)
        except (av.FFmpegError, OSError, ValueError) as exc:
            log.debug("%s: reading the cut again found nothing more (%s)", self.label, one_line(exc))

    def _placed(self, picture: av.VideoFrame) -> av.VideoFrame:
        """The picture on a timeline that only moves forward (`Timeline`), noted as the latest."""
        assert self._timeline is not None
        self._timeline.place(picture)
        if picture.pts is not None and picture.time_base:
            self._last_video_s = float(picture.pts * picture.time_base)
        return picture

    def _short_of_declared(self) -> str | None:
        """Why the input looks cut short: demuxing ended well before the video's declared duration."""
        video = self._video
        if video is None or self._last_video_s is None:
            return None
        if self._timeline is not None and self._timeline.jumps:
            return None  # a length read off timestamps that jump says nothing about where the input ends
        declared = None
        if video.duration and video.time_base:
            declared = float(video.duration * video.time_base)
        else:
            declared = _duration_tag(video.metadata.get("DURATION"))
        if declared is None:
            return None
        if self._last_video_s < declared * 0.9 - 0.1:
            return f"input ends early: video stops at {self._last_video_s:.2f} s of a declared {declared:.2f} s"
        return None

    def _decoded(self) -> Iterator[_Decoded]:
        """Pictures with their audio, in presentation order of the reader's output."""
        events = _chain(self._lookahead, self._events)
        if self._video is None:
            yield from self._audio_only(events)
            return
        aligner = AudioAligner(self._audio_rate, self._audio_channels) if self._audio is not None else None
        pending: deque[av.VideoFrame] = deque()
        period = 1 / self._info.fps
        step = max(1, round(period / self._info.time_base))  # one frame, in time-base units
        last_pts: int | None = None
        for kind, item in events:
            if kind == "video":
                if item.pts is None:  # damaged or raw streams: carry on from the last picture
                    item.pts = 0 if last_pts is None else last_pts + step
                last_pts = item.pts
                pending.append(item)
            elif aligner is not None:
                aligner.push(*item)
            while pending:
                if aligner is None:
                    audio = None
                elif len(pending) == 1 and not self.paced_by_sender:
                    break  # a file's newest picture waits for the next: the last one takes the sound left
                else:
                    until = self._audio_end(pending[0], period)
                    if not aligner.ready(until) and len(pending) <= MAX_AUDIO_WAIT_FRAMES:
                        break
                    audio = aligner.take(until)
                picture = pending.popleft()
                yield _Decoded(picture, picture.pts, audio, time.monotonic_ns())
        if aligner is not None:
            aligner.finished = True
        while pending:
            picture = pending.popleft()
            until = None if not pending else self._audio_end(picture, period)  # the last frame takes the rest
            audio = aligner.take(until) if aligner is not None else None
            yield _Decoded(picture, picture.pts, audio, time.monotonic_ns())
        # Sound that runs on after the last picture of a camera or live stream (a file's last picture
        # took it): sound alone, as ffmpeg keeps a longer audio stream whole.
        rest = aligner.take(None) if aligner is not None else None
        if rest is not None:
            yield _Decoded(None, last_pts or 0, rest, time.monotonic_ns())

    def _audio_end(self, picture: av.VideoFrame, period: Fraction) -> int:
        """The sample index where this picture's audio ends: at the picture's own end time.

        Integer arithmetic, rounded half up: exact, and cheap enough to run for every frame.
        """
        time_base = picture.time_base or self._info.time_base
        num, den = time_base.numerator * self._audio_rate, time_base.denominator
        if picture.duration:
            return ((picture.pts or 0) + picture.duration) * num * 2 // den + 1 >> 1
        start = (picture.pts or 0) * num * 2 // den + 1 >> 1
        return start + round(period * self._audio_rate)

    def _audio_only(self, events: Iterator[tuple[str, Any]]) -> Iterator[_Decoded]:
        aligner = AudioAligner(self._audio_rate, self._audio_channels)
        index = 0
        origin: int | None = None

        def chunk_end(i: int) -> int:
            return origin + (i + 1) * self._audio_rate // AUDIO_ONLY_CHUNK_RATE

        for _, item in events:
            aligner.push(*item)
            if origin is None:
                origin = aligner.end - item[0].shape[-1]
            while aligner.ready(chunk_end(index)) and aligner.end > chunk_end(index):
                yield _Decoded(None, index, aligner.take(chunk_end(index)), time.monotonic_ns())
                index += 1
        aligner.finished = True
        while (chunk := aligner.take(None if origin is None else chunk_end(index))) is not None:
            yield _Decoded(None, index, chunk, time.monotonic_ns())
            index += 1

    def _reader(self, post: Any, stop: threading.Event, tokens: queue.SimpleQueue[Any]) -> None:
        """Decode, write each picture into a slot the loop handed over, and post the frame back.

        Each frame needs a token: a pinned ring lease (or None when there is no video). A file
        waits for one, which is what keeps the reader from running ahead; a camera never waits,
        and a picture that finds no free slot is dropped as stale (its sound goes with the next).
        """
        carried: AudioChunk | None = None  # the sound of pictures dropped here, for the next frame
        try:
            for count, item in enumerate(self._decoded()):
                if self.frame_limit is not None and count >= self.frame_limit:
                    if self._carried is not None and item.picture is not None and item.picture.time_base:
                        self._carried.end_at(Fraction(item.pts) * item.picture.time_base)  # where this frame starts
                    break
                if item.picture is None and self._writer is not None:  # sound after the last picture
                    carried = joined(carried, item.audio)
                    continue
                if self.paced_by_sender:
                    try:
                        token = tokens.get_nowait()
                    except queue.Empty:
                        self.stale_dropped += 1
                        carried = joined(carried, item.audio)
                        continue
                else:
                    token = _take(tokens, stop)
                if stop.is_set() or token is _STOP:
                    return
                if token is not None and item.picture is not None and self._writer is not None:
                    try:
                        self._writer.write(item.picture, token.tensor)
                    except BaseException:
                        post(token)  # the loop releases it
                        raise
                    item.lease = token
                item.picture = None  # the decoder's buffer goes back to it now
                item.audio, carried = joined(carried, item.audio), None
                post(item)
            if carried is not None:
                post(carried)  # the sound of the last pictures dropped: the stream ended before another came
            post(_END)
        except BaseException as exc:  # handed to the event loop, which raises it from frames()
            post(exc)

    # The event loop's side.

    async def frames(self, ring: RingBuffer) -> AsyncIterator[Frame]:
        if self._carried is not None and self._carried.claimed is None:
            self._carried.claim(set())  # the sink opened without taking them: nothing to keep
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        tokens: queue.SimpleQueue[Any] = queue.SimpleQueue()
        stop = threading.Event()

        def post(item: Any) -> None:
            loop.call_soon_threadsafe(inbox.put_nowait, item)

        reader = threading.Thread(target=self._reader, args=(post, stop, tokens), name="source-decode", daemon=True)
        reader.start()
        has_video = self._writer is not None
        # A live source keeps one slot ready; a file a few, so decoding runs ahead of the stages.
        ahead = 1 if self.live else PREFETCH_FRAMES
        handed: list[Any] = []  # leases the reader holds, oldest first
        time_base = self._info.time_base
        pace_anchor: tuple[float, float] | None = None  # (monotonic s, media s) of the first frame
        carried: AudioChunk | None = None  # the sound of stale pictures skipped, for the next frame
        last_pts = 0  # of the latest picture read, for a last frame of sound alone
        index = 0
        try:
            while True:
                while len(handed) < ahead:  # top the reader up with slots
                    if not has_video:
                        lease = None
                    elif handed:
                        lease = ring.try_acquire() if ring.policy is FullPolicy.BLOCK else None
                        if lease is None:
                            break
                    else:
                        lease = await ring.acquire()
                    if lease is not None:
                        lease.started = True  # pinned: the ring may not reclaim a slot being written
                    handed.append(lease)
                    tokens.put(lease)
                item = await inbox.get()
                if isinstance(item, AudioChunk):  # sound the reader kept from pictures it dropped
                    carried = joined(carried, item)
                    continue
                if isinstance(item, _Decoded):
                    last_pts = item.pts
                if isinstance(item, _Decoded) and item.lease is not None:
                    handed.remove(item.lease)
                    item.lease.started = False
                elif isinstance(item, _Decoded) and not has_video:
                    handed.pop()
                elif not isinstance(item, _Decoded) and item is not _END and not isinstance(item, BaseException):
                    handed.remove(item)  # a slot the reader gave back after failing to fill it
                    item.release()
                    continue
                if self.paced_by_sender and isinstance(item, _Decoded) and not inbox.empty():
                    self.stale_dropped += 1  # behind a camera: skip to the newest picture
                    carried = joined(carried, item.audio)  # but never its sound
                    if item.lease is not None:
                        item.lease.release()
                    continue
                if item is _END:
                    if carried is not None:  # dropped pictures' sound, after the last frame: a frame of sound
                        yield Frame(index, last_pts, time_base, time.monotonic_ns(), None, carried)
                        index += 1
                    break
                if isinstance(item, BaseException):
                    raise item
                if self.realtime:
                    media_s = float(item.pts * time_base)
                    if pace_anchor is None:
                        pace_anchor = (time.monotonic(), media_s)
                    delay = pace_anchor[0] + (media_s - pace_anchor[1]) - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                capture_ns = item.capture_ns if self.paced_by_sender else time.monotonic_ns()
                audio, carried = joined(carried, item.audio), None
                yield Frame(index, item.pts, time_base, capture_ns, item.lease, audio)
                index += 1
        finally:
            stop.set()
            tokens.put(_STOP)
            try:
                await asyncio.shield(loop.run_in_executor(None, reader.join, JOIN_TIMEOUT_S))
            finally:
                # Also when the pipeline cancels this cleanup midway: wait the reader out (it has
                # been told to stop), so no slot is written after it goes back to the ring.
                reader.join(JOIN_TIMEOUT_S)
                for lease in handed:  # slots the reader holds, filled or not, and frames never taken
                    if lease is not None:
                        lease.release()
        if self.input_error is not None:
            raise SourceError(f"{self.label}: {self.input_error}; kept the {index} frame(s) decoded before it")
        if self.corrupt_packets:
            log.warning("%s: %d corrupt packet(s) skipped", self.label, self.corrupt_packets)

    def close(self) -> None:
        self._container.close()

    def stats(self) -> dict[str, Any]:
        converted = self._writer.converted if self._writer is not None else 0
        return {
            "corrupt_packets": self.corrupt_packets,
            "stale_dropped": self.stale_dropped,
            "converted_pictures": converted,
            "input_error": self.input_error,
            "timestamp_jumps": self._timeline.jumps if self._timeline is not None else 0,
        }


ISO_BOX_TYPES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")  # how an mp4/mov begins


def _starts_as_iso_media(url: str) -> bool:
    """Whether a file begins as an mp4/mov does (a box: size, then a known type), so a failure to
    open it means its index is missing rather than that it is no media at all."""
    try:
        with open(url, "rb") as file:
            head = file.read(8)
    except OSError:  # a URL, or unreadable: no telling
        return False
    return len(head) == 8 and head[4:8] in ISO_BOX_TYPES


def is_live_stream(url: str, container: Any) -> bool:
    """Whether an opened URL is a live network stream rather than a file (local or over http)."""
    scheme = urlparse(url).scheme.lower()
    if scheme in STREAM_SCHEMES:
        return True
    return scheme in HTTP_SCHEMES and not container.duration


def _audio_events(resampler: av.AudioResampler, frame: av.AudioFrame) -> Iterator[tuple[str, Any]]:
    """("audio", (samples, first sample index)) for one decoded frame, converted only if it must be."""
    same = frame.format.name == "fltp" and frame.layout.name == resampler.layout.name
    for out in [frame] if same and frame.sample_rate == resampler.rate else resampler.resample(frame):
        start = None
        if out.pts is not None and out.time_base:
            tb = out.time_base
            start = out.pts * tb.numerator * out.sample_rate * 2 // tb.denominator + 1 >> 1
        yield "audio", (out.to_ndarray().astype(np.float32, copy=False), start)


def _kept_layout(audio: Any) -> str:
    """The channel layout the run keeps: the input's own (5.1 stays 5.1), or for one FFmpeg gives
    no order for ("6 channels"), the usual layout of that count; more than six channels is folded
    to 5.1 (`MAX_CHANNELS`)."""
    context = audio.codec_context
    channels = context.channels or 1
    if channels > MAX_CHANNELS:
        return layout_name(MAX_CHANNELS)
    name = context.layout.name if context.layout is not None else ""
    return name if name and "channels" not in name else layout_name(channels)


def _duration_tag(text: str | None) -> float | None:
    """Seconds from a Matroska DURATION tag ("00:00:01.000000000"), or None."""
    if not text:
        return None
    try:
        hours, minutes, seconds = text.split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def _chain(first: deque[tuple[str, Any]], rest: Iterator[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    while first:
        yield first.popleft()
    yield from rest


def _has_decoder(stream: Any) -> bool:
    name = stream.codec_context.name if stream.codec_context is not None else None
    if not name or name == "none":
        return False
    try:
        av.Codec(name, "r")
    except (av.codec.codec.UnknownCodecError, ValueError):
        return False
    return True


def _estimated_frames(video: Any, fps: Fraction) -> int | None:
    if video.duration and video.time_base:
        return max(1, round(video.duration * video.time_base * fps))
    container = video.container
    if container.duration:
        return max(1, round(Fraction(container.duration, av.time_base) * fps))
    return None


def _hwaccel_for(device: torch.device) -> tuple[Any, str]:
    """NVDEC settings when the run is on a CUDA device and FFmpeg has CUDA, and why (not)."""
    if device.type != "cuda":
        return None, "software decoder: the run is on the CPU"
    if "cuda" not in av.codec.hwaccel.hwdevices_available():
        return None, "software decoder: this FFmpeg build has no CUDA support"
    accel = av.codec.hwaccel.HWAccel(device_type="cuda", device=str(device.index or 0), allow_software_fallback=True)
    return accel, f"NVDEC on {device}, software if the codec has no NVDEC profile"
