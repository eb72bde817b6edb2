"""Listening to the user: 16 kHz mono, Silero VAD and the speech gate, chunk after chunk.

Every frame's sound has to go through the VAD in order, since the model and the gate keep state
from chunk to chunk. In line that costs each frame CPU time (the resampler and one or
two model calls), and on a busy machine several times that in waiting, on a stage
every frame's avatar waits for. What a frame needs from the VAD (the user is speaking, a turn
began or ended) can come a frame late: the events carry their own times on the stream's clock.
So the voice stage runs `listen` as an in-order side job (`pipeline.side_work`): on live runs
beside the frames, and a frame folds in whatever was heard up to then (`fold`); on file runs in
line, so their annotations are the same on every run.

The listener also cuts each finished turn's sound out (`pipeline.stages.voice.capture`), with a little
before and after it, for the recognizer: `Heard.utterances`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from pipeline.frames import AudioChunk
from pipeline.io.audio_align import ChunkResampler
from pipeline.stages.voice.capture import PREROLL_S, TAIL_S, Clip, UtteranceCapture
from pipeline.stages.voice.vad import HANGOVER_S, THRESHOLD, VAD_RATE, SileroVAD, SpeechGate, Turn

GAP_TOLERANCE_S = Fraction(1, 100)  # a chunk starting later than this after the last one's end: a gap
MAX_BEHIND_S = 1.0  # s of sound waiting to be heard, past which the oldest is dropped (a machine too slow)


@dataclass
class Heard:
    """What the VAD made of some sound, times on the stream's clock."""

    started: list[float] = field(default_factory=list)  # s: the start of each turn begun
    ended: list[Turn] = field(default_factory=list)  # turns that ended
    speaking: bool = False  # the user is speaking as of the last chunk heard
    probability: float = 0.0  # highest chunk probability of the last sound heard (if none completed: the last one)
    utterances: list[Clip] = field(default_factory=list)  # the sound of turns that ended (or long turns' parts)
    pauses: list[Clip] = field(default_factory=list)  # the sound of open turns so far, at a pause in them


class Listener:
    """Resampler → Silero VAD → speech gate for one stream: `listen` to each chunk in order (on
    whichever thread listens), `fold` what was heard into a frame's view (the frame's thread)."""

    def __init__(
        self,
        *,
        threshold: float = THRESHOLD,
        hangover_s: float = HANGOVER_S,
        capture: bool = False,
        preroll_s: float = PREROLL_S,
        tail_s: float = TAIL_S,
        pause_s: float | None = None,
    ):
        self._vad = SileroVAD()  # a small recurrent model: the CPU is the right place for 32 ms chunks
        # A pause is cut once its tail is in, so its clip is the one the turn's end would give.
        pause_s = max(pause_s, tail_s) if pause_s is not None and capture else None
        self._gate = SpeechGate(threshold=threshold, hangover_s=hangover_s, pause_s=pause_s)
        # The utterances' sound, for a recognizer (`capture`): none is kept without one.
        self._capture = UtteranceCapture(preroll_s=preroll_s, tail_s=tail_s) if capture else None
        self._resampler = ChunkResampler(VAD_RATE, 1)
        self._origin_s: float | None = None  # stream time of the first 16 kHz sample
        self._expected_s: Fraction | None = None  # stream time where the sound heard so far ends
        self.silence_added_s = 0.0  # sound that was missing, heard as silence
        self._last_probability = 0.0  # the last completed chunk's (listening side)
        self._speaking = False  # as of the last `fold` (frame side)
        self._probability = 0.0

    def listen(self, chunk: AudioChunk) -> Heard:
        """One chunk through the resampler, the VAD and the gate. Sound missing before it (chunks
        dropped because listening fell behind, a gap in a network stream) is heard as silence, so
        the times of what comes after stay on the stream's clock."""
        missing = self._missing_before(chunk)
        mono = self._resampler(chunk)
        if self._origin_s is None:
            self._origin_s = mono.pts / VAD_RATE
        samples = mono.samples[0].numpy()
        if missing:
            samples = np.concatenate((np.zeros(missing, dtype=np.float32), samples))
        clips = self._capture.push(samples) if self._capture is not None else []
        probabilities = self._vad.push(samples)
        if len(probabilities):
            self._last_probability = float(np.max(probabilities))
        started, ended = self._gate.push(probabilities)
        pauses = []
        if self._capture is not None:
            # In the order they happened: a turn ends before the next begins.
            for turn in ended:
                clips.append(self._capture.end(turn.start_s, turn.end_s))
            if self._gate.speaking and started:
                self._capture.begin(started[-1])
            if self._gate.speaking:  # a pause in the open turn (one in a turn that ended is that end)
                pauses = [self._capture.so_far(turn.start_s, turn.end_s) for turn in self._gate.pauses[-1:]]
            self._capture.trim()
        self._gate.pauses.clear()
        origin = self._origin_s
        return Heard(
            started=[origin + t for t in started],
            ended=[Turn(origin + turn.start_s, origin + turn.end_s) for turn in ended],
            speaking=self._gate.speaking,
            probability=self._last_probability,
            utterances=[Clip(clip.samples, origin + clip.start_s, origin + clip.end_s) for clip in clips],
            pauses=[Clip(clip.samples, origin + clip.start_s, origin + clip.end_s) for clip in pauses],
        )

    def _missing_before(self, chunk: AudioChunk) -> int:
        """16 kHz samples of silence that stand for the sound missing between the last chunk and this one."""
        start = Fraction(chunk.pts, chunk.sample_rate)
        end = start + Fraction(chunk.samples.shape[-1], chunk.sample_rate)
        expected, self._expected_s = self._expected_s, end if self._expected_s is None else max(end, self._expected_s)
        if expected is None or start - expected <= GAP_TOLERANCE_S:
            return 0
        self.silence_added_s += float(start - expected)
        return round((start - expected) * VAD_RATE)

    def fold(self, done: list[Heard]) -> Heard:
        """`done` (heard since the last call, in order) merged; `speaking` and `probability` as of
        the last chunk heard, or what the previous call said when nothing new was heard."""
        merged = Heard(speaking=self._speaking, probability=self._probability)
        for one in done:
            merged.started += one.started
            merged.ended += one.ended
            merged.utterances += one.utterances
            merged.pauses += one.pauses
            merged.speaking = one.speaking
            merged.probability = one.probability
        self._speaking, self._probability = merged.speaking, merged.probability
        return merged
