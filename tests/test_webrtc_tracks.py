"""The outgoing tracks: video keeps only the newest picture, audio keeps every chunk up to a cap and goes
out in 20 ms frames."""

from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np
import torch
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from pipeline.frames import AudioChunk, Frame
from pipeline.ringbuffer import RingBuffer
from pipeline.webrtc.tracks import (
    AUDIO_RATE,
    MAX_AUDIO_QUEUE_S,
    OutgoingAudio,
    OutgoingVideo,
    PeerSink,
    TrackSource,
)

CHUNK = 960  # 20 ms at 48 kHz


def picture(pts: int) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(np.full((24, 32, 3), pts % 256, np.uint8), format="rgb24")
    frame.pts, frame.time_base = pts, fractions.Fraction(1, 90000)
    return frame


def sound(pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(np.zeros((1, CHUNK), np.int16), format="s16", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, pts, fractions.Fraction(1, AUDIO_RATE)
    return frame


def test_the_video_track_gives_the_newest_picture_and_counts_the_ones_it_replaced():
    async def scenario():
        track = OutgoingVideo()
        for pts in range(5):
            track.put(picture(pts))
        first = await track.recv()
        waiting = asyncio.ensure_future(track.recv())  # nothing new yet: the sender waits
        await asyncio.sleep(0.05)
        pending = not waiting.done()
        track.put(picture(9))
        second = await asyncio.wait_for(waiting, 5)
        return track, first, pending, second

    track, first, pending, second = asyncio.run(scenario())
    assert first.pts == 4  # the newest of the five
    assert track.replaced == 4  # the four it replaced, never sent
    assert pending  # no old picture is sent twice
    assert second.pts == 9


def test_the_audio_track_cuts_the_oldest_sound_over_its_cap_and_keeps_the_newest():
    cap = int(MAX_AUDIO_QUEUE_S * AUDIO_RATE)
    puts = cap // CHUNK + 10  # ten chunks over the cap: a sender that stopped reading

    async def scenario():
        track = OutgoingAudio()
        for i in range(puts):
            track.put(sound(i * CHUNK))
        received = [await track.recv() for _ in range(puts - track.cut // CHUNK)]
        return track, received

    track, received = asyncio.run(scenario())
    assert track.cut > 0 and track.cut % CHUNK == 0
    assert sum(f.samples for f in received) <= cap  # what was kept fits under the cap
    pts = [f.pts for f in received]
    assert pts[-1] == (puts - 1) * CHUNK  # the newest sound is kept
    assert pts == sorted(pts) and np.all(np.diff(pts) == CHUNK)  # in order, nothing missing in between
    assert pts[0] == track.cut  # the oldest were the ones cut


def test_one_frame_bringing_more_sound_than_the_cap_keeps_it_all():
    """The sound of pictures dropped on arrival comes with the next frame, in one go: only sound that
    has waited since earlier frames counts as a sender that stopped reading."""
    cap = int(MAX_AUDIO_QUEUE_S * AUDIO_RATE)
    burst = [sound(i * CHUNK) for i in range(cap // CHUNK + 5)]
    track = OutgoingAudio()
    track.put(*burst)
    assert track.cut == 0 and len(track._chunks) == len(burst)
    track.put(sound(len(burst) * CHUNK))  # the next frame, and nothing was read: now the oldest go
    assert track.cut == 6 * CHUNK and track._chunks[-1].pts == len(burst) * CHUNK


def test_the_audio_track_cuts_nothing_while_the_sender_keeps_up():
    async def scenario():
        track = OutgoingAudio()
        out = []
        for i in range(200):  # four seconds of sound, each chunk taken as it comes
            track.put(sound(i * CHUNK))
            out.append(await track.recv())
        return track, out

    track, out = asyncio.run(scenario())
    assert track.cut == 0 and [f.pts for f in out] == [i * CHUNK for i in range(200)]


def test_the_sink_sends_sound_as_20_ms_opus_packets_whatever_the_frames_carry():
    """aiortc sends every Opus packet one frame of raw sound makes under one RTP timestamp, which a
    receiver cannot decode: the sink encodes 20 ms packets itself, whatever length of sound each
    frame carries (joined sound from pictures dropped on arrival, a sliver, none)."""
    lengths = [1600, 4800, 100, 1600, 0, 2400]  # one frame's sound at 30 fps, three frames', a sliver, …
    total = sum(lengths)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(total) / AUDIO_RATE)).astype(np.float32)

    async def scenario():
        sink = PeerSink()
        start = 0
        for index, length in enumerate(lengths):
            audio = AudioChunk(torch.from_numpy(tone[start : start + length].copy())[None], AUDIO_RATE, start)
            await sink.write(Frame(index, index, fractions.Fraction(1, 30), time.monotonic_ns(), None, audio))
            start += length
        sent_before_close = len(sink.audio._chunks)
        await sink.close()
        return [sink.audio._chunks.popleft() for _ in range(len(sink.audio._chunks))], sent_before_close

    sent, before_close = asyncio.run(scenario())
    assert all(isinstance(p, av.Packet) for p in sent)
    assert all(p.duration == CHUNK for p in sent[:-1]) and 0 < sent[-1].duration <= CHUNK  # the encoder's tail
    assert before_close <= total // CHUNK  # only whole 20 ms frames go before the end
    assert [p.pts for p in sent] == [i * CHUNK for i in range(len(sent))]  # one timestamp each, in order
    decoder = av.CodecContext.create("libopus", "r")  # as a receiver does; it may give stereo, planar or not
    decoded = [f for p in sent for f in decoder.decode(p)]

    def left(f: av.AudioFrame) -> np.ndarray:
        pcm = f.to_ndarray()
        return pcm[0] if f.format.is_planar else pcm.reshape(-1)[:: len(f.layout.channels)]

    heard = np.concatenate([left(f) for f in decoded]).astype(np.float32)
    heard = heard / (32767 if decoded[0].format.name.startswith("s16") else 1)
    assert len(heard) >= total  # all of it, the last packet padded with silence
    assert abs(np.sqrt(np.mean(heard[:total] ** 2)) - np.sqrt(np.mean(tone**2))) < 0.05  # the tone's level
    spectrum = np.abs(np.fft.rfft(heard[:total]))
    assert abs(np.argmax(spectrum) * AUDIO_RATE / total - 440) < 5  # and its pitch


class BurstTrack(MediaStreamTrack):
    """A peer's video track that delivers `count` pictures back to back, then hangs up."""

    kind = "video"

    def __init__(self, count: int):
        super().__init__()
        self._pts = iter(range(1, count + 1))

    async def recv(self) -> av.VideoFrame:
        pts = next(self._pts, None)
        if pts is None:
            raise MediaStreamError
        await asyncio.sleep(0.001)
        return picture(pts)


def test_a_graph_slower_than_the_peer_gets_the_newest_picture_stamped_on_arrival():
    async def scenario():
        source = TrackSource(BurstTrack(40), None, picture(0))
        ring = RingBuffer(4, (36, 32))
        taken = []
        async for frame in source.frames(ring):
            taken.append((frame.index, frame.capture_ns, time.monotonic_ns()))
            frame.lease.release()
            await asyncio.sleep(0.02)  # the graph takes 20 ms a frame; the peer sends every 1 ms
        return source, taken

    source, taken = asyncio.run(scenario())
    assert len(taken) < 10  # with aiortc's unbounded queue the graph would have walked through all 41
    assert source.stale_dropped == 41 - len(taken)  # every picture is either taken or counted
    # Each frame is stamped when its picture arrived, not when the graph got round to it.
    assert all(start <= now for _, start, now in taken)
    assert all(now - start < 50_000_000 for _, start, now in taken[1:])  # ns: no frame waited behind others
