"""The user's utterances cut from the sound as the VAD finds them, for the recognizer.

The VAD says a turn began at the first chunk it rated as speech; the first syllable often starts
a little before (a soft consonant rated low), and the last one trails past the last chunk rated
as speech. So each utterance is cut from `preroll_s` before its turn's start to `tail_s` after
its end. The sound is kept only as far back as an utterance could need: from the open turn's
start less the pre-roll, or the last `preroll_s` while nobody speaks. A turn longer than
`max_s` is handed over in parts, so the recognizer (which reads 30 s windows) never gets more.

Times are seconds from the first sample pushed, as the VAD's gate counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RATE = 16000  # Hz
PREROLL_S = 0.3
TAIL_S = 0.1
PAUSE_S = 0.1  # a pause this long is read as the turn so far (live runs; see the voice stage)
MAX_S = 28.0


@dataclass(frozen=True)
class Clip:
    """One utterance (or part of a long one): its sound and where its speech starts and ends."""

    samples: np.ndarray  # float32 mono at 16 kHz, pre-roll and tail included
    start_s: float  # the speech's start (the turn's, or where a long turn's part begins)
    end_s: float  # the speech's end


class UtteranceCapture:
    """Keeps the recent sound and cuts utterances from it: `push` every sample in order, tell it
    where turns `begin`, `end` each turn to get its clip, then `trim` what no turn can need."""

    def __init__(self, *, preroll_s: float = PREROLL_S, tail_s: float = TAIL_S, max_s: float = MAX_S):
        self.preroll = round(preroll_s * RATE)
        self.tail = round(tail_s * RATE)
        self.max_samples = round(max_s * RATE)
        self._buffer = np.zeros(0, dtype=np.float32)
        self._first = 0  # sample index of the buffer's first sample
        self._open: int | None = None  # sample index the open turn's sound is kept from
        self._split = False  # the open turn has been handed over in parts
        self.parts = 0  # long turns' parts handed over before their end

    @property
    def pushed(self) -> int:
        """Samples pushed so far."""
        return self._first + len(self._buffer)

    def push(self, samples: np.ndarray) -> list[Clip]:
        """Adds sound; the parts of an open turn that has grown past `max_s`, if any."""
        self._buffer = np.concatenate((self._buffer, np.asarray(samples, dtype=np.float32).reshape(-1)))
        parts = []
        while self._open is not None and self.pushed - self._open >= self.max_samples:
            cut = self._open + self.max_samples
            first = not self._split  # the turn's first part has its pre-roll; the next ones follow on
            parts.append(self._clip(self._open, cut, self._open - (self.preroll if first else 0), cut))
            self._open, self._split = cut, True
            self.parts += 1
        return parts

    def begin(self, start_s: float) -> None:
        """A turn began at `start_s`: keep its sound (and the pre-roll) until it ends."""
        if self._open is None:
            self._open, self._split = round(start_s * RATE), False

    def end(self, start_s: float, end_s: float) -> Clip:
        """The turn that began at `start_s` ended at `end_s`: its clip (or the last part's)."""
        clip = self.so_far(start_s, end_s)
        self._open, self._split = None, False
        return clip

    def so_far(self, start_s: float, end_s: float) -> Clip:
        """The clip `end` would give for the open turn if it ended at `end_s`; the turn stays open."""
        start, end = round(start_s * RATE), round(end_s * RATE)
        preroll = self.preroll
        if self._open is not None and self._split:  # a long turn: what came after its last part
            start, preroll = self._open, 0
        return self._clip(start, end, start - preroll, end + self.tail)

    def _clip(self, start: int, end: int, cut_from: int, cut_to: int) -> Clip:
        lo = max(cut_from, self._first) - self._first
        hi = max(lo, min(cut_to, self.pushed) - self._first)
        return Clip(self._buffer[lo:hi].copy(), start / RATE, end / RATE)

    def trim(self) -> None:
        """Drops the sound before what the open turn, or the next one, could need."""
        keep_from = self.pushed - self.preroll - self.tail
        if self._open is not None:
            keep_from = min(keep_from, self._open - self.preroll)
        drop = keep_from - self._first
        if drop > 0:
            self._buffer = self._buffer[drop:]
            self._first += drop
