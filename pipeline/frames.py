"""Frames and audio chunks: the plain data that passes between stages.

A `Frame` is cheap to pass: its pixels live in a ring-buffer slot it leases, and stages add
annotations to it rather than copying it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from pipeline.ringbuffer import SlotLease


@dataclass(slots=True, eq=False)
class AudioChunk:
    """The audio that belongs with one video frame, aligned to it by presentation time."""

    samples: torch.Tensor  # (channels, n) float32 in [-1, 1]
    sample_rate: int  # Hz
    pts: int  # index of the first sample, in 1/sample_rate units

    @property
    def duration_s(self) -> float:
        return self.samples.shape[-1] / self.sample_rate

    @property
    def time_s(self) -> float:
        return self.pts / self.sample_rate


def joined(first: AudioChunk | None, then: AudioChunk | None) -> AudioChunk | None:
    """`first` and, right after it, `then` as one chunk: the sound of a picture dropped on arrival
    rides on the next frame, so dropping pictures never drops sound."""
    if first is None or first.samples.shape[-1] == 0:
        return then
    if then is None:
        return first
    return AudioChunk(torch.cat((first.samples, then.samples), dim=-1), first.sample_rate, first.pts)


@dataclass(slots=True, eq=False)
class Frame:
    """One video frame in flight, with its audio and the annotations stages add to it."""

    index: int  # 0, 1, 2, … in source order; the reorder buffer relies on no gaps
    pts: int  # presentation time in `time_base` units
    time_base: Fraction
    capture_ns: int  # time.monotonic_ns() when captured (live) or read (file)
    lease: SlotLease | None = None  # the ring slot holding the pixels
    audio: AudioChunk | None = None
    annotations: dict[str, Any] = field(default_factory=dict)  # one JSON-able dict per stage
    drop_reason: str | None = None  # set when the frame is dropped; it still flows, without pixels
    deadline_ns: int = 0  # live runs: capture_ns + the latency budget (0: no deadline)
    sound_passed_on: bool = False  # dropped on arrival, its sound moved to the next frame admitted
    # CUDA events recorded by the stages that produced this frame's data, keyed by stage name.
    events: dict[str, Any] = field(default_factory=dict)

    @property
    def image(self) -> torch.Tensor:
        """The leased pixels, laid out as the stream's pixel format says (packed I420 by default)."""
        if self.lease is None:
            raise RuntimeError(f"frame {self.index} holds no image")
        return self.lease.tensor

    @property
    def time_s(self) -> float:
        return float(self.pts * self.time_base)

    @property
    def has_image(self) -> bool:
        """Whether there are pixels to look at: False for dropped frames and audio-only streams."""
        lease = self.lease
        return lease is not None and not lease.revoked and self.drop_reason is None

    @property
    def dropped(self) -> bool:
        """Whether the frame lost its pixels (dropped by reason, or its slot was reclaimed)."""
        if self.drop_reason is not None:
            return True
        return self.lease is not None and self.lease.revoked

    @property
    def why_dropped(self) -> str | None:
        if self.drop_reason is not None:
            return self.drop_reason
        if self.lease is not None and self.lease.revoked:
            return self.lease.revoke_reason
        return None

    def drop(self, reason: str) -> None:
        """Drop the pixels (keeping audio and order): the frame flows on as a marker.

        The slot goes back at once when no stage has begun on it; otherwise a stage on another
        branch may still be reading it, and it goes back when the frame leaves at the sink.
        """
        if self.drop_reason is None:
            self.drop_reason = reason
            if self.lease is not None and not self.lease.started:
                self.release()

    def release(self) -> None:
        """Give the slot back. Safe to call more than once."""
        lease, self.lease = self.lease, None
        if lease is not None:
            lease.release()
            if lease.revoked and self.drop_reason is None:
                self.drop_reason = lease.revoke_reason

    def to_json(self) -> dict[str, Any]:
        """The analytics record: one JSON object per frame."""
        record: dict[str, Any] = {"frame": self.index, "time_s": round(self.time_s, 6)}
        if self.dropped:
            record["dropped"] = self.why_dropped
        record.update(self.annotations)
        return record
