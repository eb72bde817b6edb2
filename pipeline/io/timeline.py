"""A picture timeline that only moves forward, whatever the input's timestamps do.

Two recordings joined end to end (`cat a.ts b.ts`), or a camera or encoder that restarts,
give timestamps that jump back to where the first started; a transport stream may also jump
far forward (its clock was reset, or wrapped). Left as they are, the pictures after a jump
back would be squeezed into a millisecond by the muxer, and the sound cut to match, and a jump
forward would leave a long frozen gap. ffmpeg shifts the rest of the input so that it
continues the timeline; so does `Timeline`, one offset from the jump on.

Only pictures' timestamps are moved: the sound is already taken as one continuous run of
samples (`audio_align`), and each picture takes the sound up to its own end, so a picture
that continues the timeline also continues the sound.
"""

from __future__ import annotations

import logging
from fractions import Fraction

import av

log = logging.getLogger(__name__)

FORWARD_JUMP_S = 10.0  # a jump forward this long, in a format that allows jumps, is one (ffmpeg's threshold)
# A step back this long is a jump. Shorter ones (a repeated or jittery timestamp) are not mended
# here, as ffmpeg leaves them: the sink moves such a picture on by one tick, and only that picture.
BACK_JUMP_S = 0.5


class Continuity:
    """One stream's timestamps (in its time base) carried on past jumps: from each jump on, an
    offset puts the next item where the items before it end, and the rest follow it. The
    pictures (`Timeline`) and the streams copied as they are (`passthrough`: sound, subtitles,
    data, whose items last as long as they say) both use it."""

    def __init__(self, time_base: Fraction, *, jumps_forward: bool, step: int = 1):
        self.back_limit = round(BACK_JUMP_S / time_base)
        self.forward_limit = round(FORWARD_JUMP_S / time_base) if jumps_forward else None
        self.step = step  # how long an item that states no duration lasts
        self.offset = 0  # added to every timestamp from the last jump on
        self.last: int | None = None  # the latest timestamp placed
        self.end: int | None = None  # where the items placed so far end
        self.jumps = 0

    def place(self, ts: int, duration: int = 0) -> int:
        """`ts` on the continued timeline; `duration`: how long its item lasts (0: `step`)."""
        placed = ts + self.offset
        if self.last is not None and self.end is not None:
            back = self.last - placed > self.back_limit
            forward = self.forward_limit is not None and placed - self.last > self.forward_limit
            if back or forward:
                self.offset += self.end - placed
                self.jumps += 1
                placed = ts + self.offset
        self.last = placed if self.last is None else max(placed, self.last)
        ends = placed + (duration or self.step)
        self.end = ends if self.end is None else max(ends, self.end)
        return placed


class Timeline:
    """Moves the decoded pictures' pts on after each jump, so the timeline keeps going; counts the jumps."""

    def __init__(self, label: str, time_base: Fraction, fps: Fraction, *, jumps_forward: bool):
        self.label = label
        self.time_base = time_base
        step = max(1, round(1 / (fps * time_base)))  # one frame, in time-base units
        self._continuity = Continuity(time_base, jumps_forward=jumps_forward, step=step)
        self.last_input: int | None = None  # the last placed picture's pts as the input gave it

    @property
    def jumps(self) -> int:
        return self._continuity.jumps

    def place(self, picture: av.VideoFrame) -> None:
        """Move `picture.pts` (in `time_base`) onto the timeline; a picture with no pts is left alone."""
        if picture.pts is None:
            return
        self.last_input = picture.pts
        continuity = self._continuity
        last, unmended = continuity.last, picture.pts + continuity.offset
        picture.pts = continuity.place(picture.pts, picture.duration or 0)
        if continuity.jumps == 1 and picture.pts != unmended:  # the first jump: one line
            log.warning(
                "%s: timestamps jump %s by %.2f s after %.2f s; the rest follows on from there",
                self.label,
                "back" if unmended < picture.pts else "forward",
                abs(float((unmended - last) * self.time_base)),
                float(last * self.time_base),
            )
