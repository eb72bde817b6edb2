"""Cutting decoded audio into per-frame chunks, aligned to the video by presentation time.

Containers interleave audio and video loosely, and audio frames (1024 samples for AAC) do not
line up with video frames. `AudioAligner` keeps the decoded samples in a FIFO on one sample
timeline; the source asks it for "everything up to the end of video frame i", with the end
computed from that frame's own timestamp, so chunks never drift however the packets fall.
`ChunkResampler` turns a chunk into what a stage wants (16 kHz mono for voice activity, say).
"""

from __future__ import annotations

from collections import deque
from fractions import Fraction

import av
import numpy as np
import torch

from pipeline.frames import AudioChunk

LAYOUTS = {1: "mono", 2: "stereo"}  # what the stages' resamplers give: FFmpeg's names by channel count
# FFmpeg's usual layout for each channel count (its default for a stream that names none).
USUAL_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1"}
# 5.1: more (6.1, 7.1, …) is folded down to it. PyAV cannot hold eight planar channels in a
# frame (it gives a ninth plane and crashes converting it), and 5.1 is what players expect.
MAX_CHANNELS = 6
FRONT_CHANNELS = ("FL", "FR", "FC")  # where a voice is heard from in any layout (not the LFE or surrounds)


def layout_name(channels: int) -> str:
    """FFmpeg's usual layout for a channel count: mono, stereo, … 5.1 for six, 7.1 for eight."""
    return USUAL_LAYOUTS[min(max(channels, 1), MAX_CHANNELS)]


def front_channels(layout: str) -> list[int]:
    """The indices of a layout's front left, right and centre channels (all of them when it names none)."""
    names = [channel.name for channel in av.AudioLayout(layout).channels]
    front = [i for i, name in enumerate(names) if name in FRONT_CHANNELS]
    return front or list(range(len(names)))


class AudioAligner:
    """A FIFO of float32 samples, (channels, n), addressed by absolute sample index."""

    def __init__(self, sample_rate: int, channels: int):
        self.sample_rate = sample_rate  # Hz
        self.channels = channels
        self._blocks: deque[np.ndarray] = deque()
        self._start: int | None = None  # sample index of the first buffered sample
        self._end: int | None = None  # one past the last buffered sample
        self.finished = False  # no more audio will come

    @property
    def end(self) -> int | None:
        """One past the last sample received so far (None before any arrived)."""
        return self._end

    def push(self, samples: np.ndarray, start: int | None) -> None:
        """Add samples that begin at sample index `start` (None: right after the previous ones).

        A small gap or overlap against the previous block is ignored (the stream is taken as
        continuous), so jittery timestamps cannot insert silence or cut sound.
        """
        if samples.shape[-1] == 0:
            return
        if self._end is None:
            self._start = self._end = start or 0
        self._blocks.append(samples)
        self._end += samples.shape[-1]

    def ready(self, until: int) -> bool:
        """Whether every sample before `until` has arrived (or none ever will)."""
        return self.finished or (self._end is not None and self._end >= until)

    def take(self, until: int | None) -> AudioChunk | None:
        """The buffered samples before sample `until` (None: all of them), or None if there are none."""
        if self._start is None or self._end is None:
            return None
        stop = self._end if until is None else min(until, self._end)
        count = stop - self._start
        if count <= 0:
            return None
        parts = []
        while count > 0:
            block = self._blocks[0]
            n = block.shape[-1]
            if n <= count:
                parts.append(self._blocks.popleft())
                count -= n
            else:
                parts.append(block[:, :count])
                self._blocks[0] = block[:, count:]
                count = 0
        start, self._start = self._start, stop
        samples = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        tensor = torch.from_numpy(np.ascontiguousarray(samples))
        return AudioChunk(samples=tensor, sample_rate=self.sample_rate, pts=start)


class ChunkResampler:
    """Converts chunks to one sample rate and channel count with FFmpeg's resampler, keeping state.

    One per consumer: the resampler's filter history carries across chunks, so the result is
    the same as resampling the whole stream at once.
    """

    def __init__(self, sample_rate: int, channels: int = 1):
        if channels not in LAYOUTS:
            raise ValueError(f"channels must be 1 or 2, got {channels}")
        self.sample_rate = sample_rate  # Hz
        self.channels = channels
        self._resampler = av.AudioResampler(format="fltp", layout=LAYOUTS[channels], rate=sample_rate)
        self._produced = 0  # samples out so far: the next chunk's pts
        self._first_pts: int | None = None

    def __call__(self, chunk: AudioChunk) -> AudioChunk:
        samples = chunk.samples.detach().cpu().numpy().astype(np.float32, copy=False)
        in_channels = samples.shape[0]
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples), format="fltp", layout=layout_name(in_channels)
        )
        frame.sample_rate = chunk.sample_rate
        if self._first_pts is None:
            self._first_pts = round(Fraction(chunk.pts * self.sample_rate, chunk.sample_rate))
        out = [f.to_ndarray() for f in self._resampler.resample(frame)]
        data = np.concatenate(out, axis=1) if out else np.zeros((self.channels, 0), dtype=np.float32)
        pts = self._first_pts + self._produced
        self._produced += data.shape[-1]
        tensor = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        return AudioChunk(samples=tensor, sample_rate=self.sample_rate, pts=pts)
