"""A peer's tracks as the pipeline's source, and the pipeline's output as tracks for the peer.

`TrackSource` turns the browser's video track into frames in ring slots (scaled to the size of
the first frame, since a browser changes resolution as its bandwidth estimate moves) and its
audio track into each frame's audio chunk: all the sound received since the frame before,
resampled to 48 kHz mono. A peer that sends nothing for `silence_s` ends the source, so a
vanished browser frees its session. Pictures are taken from aiortc as they arrive and only the
newest waits for the graph, stamped with its arrival time: aiortc's own queue of decoded
pictures has no bound, so a graph slower than the camera would otherwise fall further behind
with every frame, unseen by the scheduler's deadlines (a camera source skips stale pictures the
same way).

`PeerSink` hands each processed frame to two outgoing tracks. The video track keeps no backlog:
it holds at most the newest picture, so a slow encoder or network sees fresh frames, never a
queue. The sound is encoded here, into Opus packets of 20 ms each, and the audio track keeps
every packet (sound is never dropped) up to `MAX_AUDIO_QUEUE_S`, past which the oldest goes: a
peer that stopped reading must not grow memory. aiortc would encode raw sound itself, but it
sends all the packets one frame of sound makes under one RTP timestamp, which the receiver
cannot decode (a frame carries 33 ms of sound at 30 fps, more when pictures were dropped on
arrival), and it makes a trip to a worker thread per frame; its sender passes encoded packets
straight on.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import av
import numpy as np
import torch
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from pipeline.device import copy_frame
from pipeline.frames import AudioChunk, Frame
from pipeline.io.base import Sink, Source, StreamInfo
from pipeline.io.sinks import host_pixels
from pipeline.pixels import Colour, PixelFormat
from pipeline.ringbuffer import RingBuffer
from pipeline.side_work import FramesInFlight

log = logging.getLogger(__name__)

AUDIO_RATE = 48000  # Hz: what Opus carries, and what the pipeline's audio runs at
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE)
VIDEO_CLOCK = fractions.Fraction(1, 90000)  # RTP's video clock
WEBRTC_COLOUR = Colour(
    matrix=6, primaries=6, transfer=6, range=1
)  # BT.601, limited range: what VP8/H.264 decoders give
SILENCE_S = 10.0  # a peer that sends no video for this long is gone
MAX_AUDIO_QUEUE_S = 0.5  # outgoing sound waiting for the sender beyond this is cut, oldest first
OPUS_FRAME = 960  # samples at 48 kHz: 20 ms, one Opus packet
OPUS_BIT_RATE = 96_000  # as aiortc's own encoder


async def first_picture(track: MediaStreamTrack, timeout_s: float = SILENCE_S) -> av.VideoFrame:
    """The first decoded frame of a peer's video track (its size fixes the session's)."""
    return await asyncio.wait_for(track.recv(), timeout_s)


class TrackSource(Source):
    """Frames from a peer's video track, with the sound of its audio track (if any) attached."""

    live = True

    def __init__(
        self,
        video: MediaStreamTrack,
        audio: MediaStreamTrack | None,
        first: av.VideoFrame,
        *,
        fps: float = 30.0,
        silence_s: float = SILENCE_S,
    ):
        self.video = video
        self.audio = audio
        self.silence_s = silence_s
        width, height = first.width & ~1, first.height & ~1
        self._info = StreamInfo(
            width=width,
            height=height,
            fps=fractions.Fraction(fps).limit_denominator(1001),
            time_base=VIDEO_CLOCK,
            audio_rate=AUDIO_RATE if audio is not None else None,
            audio_channels=1 if audio is not None else 0,
            pixel_format=PixelFormat.YUV420P,
            colour=WEBRTC_COLOUR,
            description=f"WebRTC peer {width}x{height}",
        )
        self._sound: deque[np.ndarray] = deque()  # received since the last frame, 48 kHz mono float32
        self._sound_at = 0  # samples handed out so far (the next chunk's pts)
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
        self._newest: tuple[av.VideoFrame, int] | None = (first, time.monotonic_ns())  # picture, arrival
        self._arrived = asyncio.Event()
        self._video_ended = False
        self.pictures_scaled = 0  # frames that arrived at another size than the first
        self.stale_dropped = 0  # pictures a newer one replaced before the graph took them
        self.audio_frames = 0

    @property
    def info(self) -> StreamInfo:
        return self._info

    async def _listen(self) -> None:
        """Move the peer's sound into the buffer the next frame takes it from."""
        assert self.audio is not None
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await self.audio.recv()
                self.audio_frames += 1
                for block in self._resampler.resample(frame):
                    self._sound.append(block.to_ndarray().reshape(-1).astype(np.float32, copy=False))

    def _take_sound(self) -> AudioChunk | None:
        if self.audio is None:
            return None
        blocks = [self._sound.popleft() for _ in range(len(self._sound))]
        samples = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
        chunk = AudioChunk(torch.from_numpy(samples).unsqueeze(0), AUDIO_RATE, self._sound_at)
        self._sound_at += samples.shape[0]
        return chunk

    async def _read_video(self) -> None:
        """Take every picture as aiortc decodes it, keeping only the newest for the graph."""
        try:
            while True:
                picture = await self.video.recv()
                if self._newest is not None:
                    self.stale_dropped += 1
                self._newest = (picture, time.monotonic_ns())
                self._arrived.set()
        except MediaStreamError:
            self._video_ended = True
            self._arrived.set()

    async def _next_picture(self) -> tuple[av.VideoFrame, int] | None:
        """The newest picture and its arrival time; None once the peer hung up or went silent."""
        while self._newest is None:
            if self._video_ended:
                return None
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), self.silence_s)
            except TimeoutError:
                return None
        newest, self._newest = self._newest, None
        return newest

    async def frames(self, ring: RingBuffer) -> AsyncIterator[Frame]:
        tasks = [asyncio.create_task(self._read_video())]
        if self.audio is not None:
            tasks.append(asyncio.create_task(self._listen()))
        width, height = self._info.width, self._info.height
        index = 0
        try:
            while (taken := await self._next_picture()) is not None:
                picture, arrival_ns = taken
                if picture.width != width or picture.height != height:
                    self.pictures_scaled += 1
                pixels = picture.reformat(width=width, height=height, format="yuv420p").to_ndarray()
                lease = await ring.acquire()
                copy_frame(lease.tensor, pixels)
                yield Frame(
                    index=index,
                    pts=int(picture.pts or 0),
                    time_base=picture.time_base or VIDEO_CLOCK,
                    capture_ns=arrival_ns,
                    lease=lease,
                    audio=self._take_sound(),
                )
                index += 1
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def stats(self) -> dict[str, Any]:
        return {
            "pictures_scaled": self.pictures_scaled,
            "stale_dropped": self.stale_dropped,
            "audio_frames": self.audio_frames,
        }


class OutgoingVideo(MediaStreamTrack):
    """The processed picture: `recv` gives the newest frame written, never a queue of old ones.

    A picture waiting here or being encoded still counts as a frame in flight of its graph
    (`frames`, set by the sink; `pipeline.side_work`): the sender asks for the next picture only
    once it has encoded and sent the last one, so side work does not start in the middle of an
    encode either."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._latest: av.VideoFrame | None = None
        self._ready = asyncio.Event()
        self.frames: FramesInFlight | None = None  # the graph's frames in flight, where it counts them
        self._ticket: int | None = None  # while a picture is waiting or with the sender
        self.replaced = 0  # frames overwritten before the sender took them

    def put(self, picture: av.VideoFrame) -> None:
        if self._latest is not None:
            self.replaced += 1
        self._latest = picture
        if self._ticket is None and self.frames is not None:
            self._ticket = self.frames.enter()
        self._ready.set()

    def stop(self) -> None:
        self._done_with_last()
        super().stop()

    def _done_with_last(self) -> None:
        ticket, self._ticket = self._ticket, None
        if ticket is not None and self.frames is not None:
            self.frames.leave(ticket)

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._latest is None:  # the sender is done with the picture it took last
            self._done_with_last()
        await self._ready.wait()
        picture, self._latest = self._latest, None
        self._ready.clear()
        assert picture is not None
        return picture


def _samples(item: av.AudioFrame | av.Packet) -> int:
    return item.samples if isinstance(item, av.AudioFrame) else int(item.duration or 0)


class OutgoingAudio(MediaStreamTrack):
    """The processed sound (the user's, ducked, with the avatar's voice): every packet (or raw
    chunk), in order."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._chunks: deque[av.AudioFrame | av.Packet] = deque()
        self._queued = 0  # samples waiting
        self._ready = asyncio.Event()
        self.cut = 0  # samples cut because the sender stopped reading

    def put(self, *chunks: av.AudioFrame | av.Packet) -> None:
        """Queue one frame's sound (its packets, in order). Over the cap the oldest sound waiting from
        earlier frames is cut, never this frame's: a frame may bring much sound at once (the sound
        of pictures dropped on arrival) with a sender that keeps up."""
        for chunk in chunks:
            self._chunks.append(chunk)
            self._queued += _samples(chunk)
        while self._queued > MAX_AUDIO_QUEUE_S * AUDIO_RATE and len(self._chunks) > max(1, len(chunks)):
            old = _samples(self._chunks.popleft())
            self._queued -= old
            self.cut += old
        self._ready.set()

    async def recv(self) -> av.AudioFrame | av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        while not self._chunks:
            self._ready.clear()
            await self._ready.wait()
        chunk = self._chunks.popleft()
        self._queued -= _samples(chunk)
        return chunk


class PeerSink(Sink):
    """Writes processed frames to the outgoing tracks and their annotations to `on_frame`."""

    low_latency = True

    def __init__(self, on_frame: Callable[[Frame, float], None] | None = None):
        self.video = OutgoingVideo()
        self.audio = OutgoingAudio()
        self.on_frame = on_frame  # (frame, end-to-end ms) → e.g. the data channel
        self.frames = 0
        self.dropped = 0
        self._audio_pts = 0
        self._pcm = np.zeros(0, dtype=np.int16)  # sound short of a whole packet, sent with the next frame
        self._opus: Any = None  # the encoder, made with the first sound
        self._first_pts: int | None = None  # the encoder's first packet starts before 0: moved to 0

    def hold_tickets(self, frames: FramesInFlight | None) -> None:
        self.video.frames = frames

    async def open(self, info: StreamInfo) -> None:
        self.info = info

    async def write(self, frame: Frame) -> None:
        chunk = frame.audio
        if chunk is not None and chunk.samples.shape[-1]:
            if chunk.sample_rate != AUDIO_RATE:
                raise ValueError(f"the outgoing sound must be {AUDIO_RATE} Hz, got {chunk.sample_rate}")
            samples = chunk.samples[0].detach().cpu().numpy()
            pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
            self._pcm = np.concatenate((self._pcm, pcm)) if self._pcm.size else pcm
            self._send_packets(flush=False)
        if frame.has_image:
            events = [e for e in frame.events.values() if e is not None]
            pixels = host_pixels(frame.image, events)
            picture = av.VideoFrame.from_ndarray(pixels, format="yuv420p")  # a copy: the slot goes back
            picture.pts = frame.pts
            picture.time_base = frame.time_base
            self.video.put(picture)
            self.frames += 1
        else:
            self.dropped += 1
        if self.on_frame is not None:
            self.on_frame(frame, (time.monotonic_ns() - frame.capture_ns) / 1e6)

    def _send_packets(self, *, flush: bool) -> None:
        """The buffered sound, in whole 20 ms frames, encoded and queued on the audio track; with
        `flush`, also the rest (padded with silence) and what the encoder still holds."""
        if self._opus is None:
            self._opus = opus_encoder()
        if flush and len(self._pcm) % OPUS_FRAME:
            self._pcm = np.concatenate((self._pcm, np.zeros(OPUS_FRAME - len(self._pcm) % OPUS_FRAME, np.int16)))
        whole = len(self._pcm) // OPUS_FRAME * OPUS_FRAME
        packets = []
        for start in range(0, whole, OPUS_FRAME):
            sound = av.AudioFrame.from_ndarray(self._pcm[None, start : start + OPUS_FRAME], format="s16", layout="mono")
            sound.sample_rate, sound.time_base, sound.pts = AUDIO_RATE, AUDIO_TIME_BASE, self._audio_pts
            self._audio_pts += OPUS_FRAME
            packets += self._opus.encode(sound)
        if flush:
            packets += self._opus.encode(None)
        self._pcm = self._pcm[whole:]
        for packet in packets:
            if self._first_pts is None:
                self._first_pts = packet.pts
            packet.pts -= self._first_pts
            packet.time_base = AUDIO_TIME_BASE
        if packets:
            self.audio.put(*packets)

    async def close(self) -> None:
        if self._opus is not None or len(self._pcm):
            self._send_packets(flush=True)
        self.video.stop()
        self.audio.stop()


def opus_encoder() -> Any:
    """A 48 kHz mono Opus encoder with 20 ms packets, set as aiortc's own (whose sender then only
    packs what it is given)."""
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate = OPUS_BIT_RATE
    codec.format = "s16"
    codec.layout = "mono"
    codec.sample_rate = AUDIO_RATE
    codec.time_base = AUDIO_TIME_BASE
    codec.options = {"application": "voip"}
    return codec
