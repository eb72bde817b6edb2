"""Listening to the user: 16 kHz mono, Silero VAD and the speech gate, in order, in line or beside the frames.

Every frame's sound has to go through the VAD, in order, since the model and the gate keep
state from chunk to chunk. In line that costs each frame about 2 ms of CPU (the resampler and
one or two model calls), and on a busy two-core machine three to six times that in waiting,
on a stage every frame's avatar waits for. What a frame needs from the VAD (the user is
speaking, a turn began or ended) can come a frame late: the events carry their own times on
the stream's clock, and a barge-in one frame later is still within a frame of the sound that
caused it. So on a live run the chunks go to a thread of their own, one after another, and a
frame takes whatever was heard up to then.

The thread is served after the frames (a higher nice value), starts each chunk between frames
(`pipeline.quiet`), and never falls more than `MAX_BEHIND_S` of sound behind: past that, a frame
waits for the oldest chunk, so a machine too slow for the VAD slows the frames (and the scheduler
sees it) instead of losing the user's turns. File runs listen in line, so their annotations are
the same on every run.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from pipeline.device import background_nice, set_thread_nice
from pipeline.frames import AudioChunk
from pipeline.io.audio_align import ChunkResampler
from pipeline.quiet import ACTIVITY
from pipeline.voice.vad import HANGOVER_S, THRESHOLD, VAD_RATE, SileroVAD, SpeechGate, Turn

MAX_BEHIND_S = 1.0  # s of sound handed over and not yet heard, past which a frame waits for the oldest


@dataclass
class Heard:
    """What the VAD made of the sound handed over since the last `heard()`, times on the stream's clock."""

    started: list[float] = field(default_factory=list)  # s: the start of each turn begun
    ended: list[Turn] = field(default_factory=list)  # turns that ended
    speaking: bool = False  # the user is speaking as of the last chunk heard
    probability: float = 0.0  # highest chunk probability of the last sound heard (if none completed: the last one)


class Listener:
    """Resampler → Silero VAD → speech gate for one stream. `hear` each chunk in order; `heard` the results."""

    def __init__(
        self,
        *,
        threshold: float = THRESHOLD,
        hangover_s: float = HANGOVER_S,
        beside: bool = False,
        name: str = "voice",
        stage_nice: int = 0,
    ):
        self._vad = SileroVAD()  # a small recurrent model: the CPU is the right place for 32 ms chunks
        self._gate = SpeechGate(threshold=threshold, hangover_s=hangover_s)
        self._resampler = ChunkResampler(VAD_RATE, 1)
        self._origin_s: float | None = None  # stream time of the first 16 kHz sample
        self._last_probability = 0.0  # the last completed chunk's (listening side)
        self._speaking = False  # as of the last `heard()` (caller's side)
        self._probability = 0.0
        self._done: list[Heard] = []  # in line: heard and not yet taken
        self._pending: deque[tuple[Future[Heard], float]] = deque()  # beside: (result, its sound's length in s)
        self._behind_s = 0.0
        self.beside = beside  # chunks are heard on a thread of their own
        self._pool = None
        if beside:
            self._pool = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix=f"{name}-listener",
                initializer=set_thread_nice,
                initargs=(background_nice(stage_nice),),
            )

    def hear(self, chunk: AudioChunk) -> None:
        """Hand over the next chunk of the stream (in order). Beside the frames, the caller may
        change or drop `chunk` afterwards: the thread works on a copy."""
        if self._pool is None:
            self._done.append(self._listen(chunk))
            return
        while self._pending and self._behind_s > MAX_BEHIND_S:
            self._settle(block=True)
        own = AudioChunk(chunk.samples.detach().to("cpu", copy=True), chunk.sample_rate, chunk.pts)
        self._pending.append((self._pool.submit(self._listen_between_frames, own), own.duration_s))
        self._behind_s += own.duration_s

    @property
    def behind_s(self) -> float:
        """Seconds of sound handed over and not yet heard (beside the frames; 0 in line)."""
        return self._behind_s

    def heard(self, *, wait: bool = False) -> Heard:
        """Everything heard since the last call, merged; `speaking` and `probability` as of the
        last chunk heard (what the previous call said, when nothing new was heard). With `wait`,
        everything handed over is heard first (the end of a stream). A chunk whose listening
        raised raises here."""
        while self._pending and wait:
            self._settle(block=True)
        if self._pool is not None:
            self._settle(block=False)
        merged = Heard(speaking=self._speaking, probability=self._probability)
        done, self._done = self._done, []
        for one in done:
            merged.started += one.started
            merged.ended += one.ended
            merged.speaking = one.speaking
            merged.probability = one.probability
        self._speaking, self._probability = merged.speaking, merged.probability
        return merged

    def close(self) -> None:
        """Finish the chunks handed over and stop the thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._pending.clear()

    def _settle(self, *, block: bool) -> None:
        """Move finished chunks (in order; the oldest at least, with `block`) to the heard list."""
        while self._pending and (block or self._pending[0][0].done()):
            future, seconds = self._pending.popleft()
            self._behind_s -= seconds
            self._done.append(future.result())
            block = False

    def _listen_between_frames(self, chunk: AudioChunk) -> Heard:
        """`_listen` on the listening thread, once the frames in flight are done (`pipeline.quiet`)."""
        ACTIVITY.wait_quiet()
        return self._listen(chunk)

    def _listen(self, chunk: AudioChunk) -> Heard:
        """One chunk through the resampler, the VAD and the gate (on whichever thread listens)."""
        mono = self._resampler(chunk)
        if self._origin_s is None:
            self._origin_s = mono.pts / VAD_RATE
        probabilities = self._vad.push(mono.samples[0].numpy())
        if len(probabilities):
            self._last_probability = float(np.max(probabilities))
        started, ended = self._gate.push(probabilities)
        origin = self._origin_s
        return Heard(
            started=[origin + t for t in started],
            ended=[Turn(origin + turn.start_s, origin + turn.end_s) for turn in ended],
            speaking=self._gate.speaking,
            probability=self._last_probability,
        )
