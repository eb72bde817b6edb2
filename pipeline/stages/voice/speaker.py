"""The avatar's voice over time: a queue of sentences played out chunk by chunk, with barge-in.

A line is split into sentences, each synthesized once per (text, voice) and kept in an LRU cache,
resampled to the output rate. Synthesis goes through `prepare`: the voice stage hands each
sentence to a side job, so the frames never wait for it and the first sentence plays while the
rest are made; without one, `say` synthesizes at once. Each video frame asks for its chunk of
audio (`next_chunk`): the current sentence plays on, the next one starts right after it once it
is ready, and silence fills the gaps. `stop` cuts the current sentence at once (barge-in) and
may drop the rest of the queue, sentences still being made included.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np

from pipeline.stages.voice.synth import Synthesizer, Utterance
from pipeline.stages.voice.visemes import SILENCE, viseme

CACHE_SIZE = 64  # sentences kept synthesized
MAX_QUEUED = 256  # sentences waiting to be said; more are refused (counted), not queued
SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


def sentences(text: str) -> list[str]:
    """`text` cut after each . ! ? or … that a space follows."""
    return [part.strip() for part in SENTENCE_END.split(text.strip()) if part.strip()]


@dataclass
class _Playing:
    utterance: Utterance
    samples: np.ndarray  # at the output rate
    phoneme_starts: np.ndarray  # sample index of each phoneme at the output rate
    position: int = 0


@dataclass
class Line:
    """One sentence queued to be said: made (`ready`) by `Speaker.prepare`, perhaps on another thread."""

    text: str
    ready: _Playing | None = None
    dropped: bool = False  # barge-in dropped it: no need to make it


@dataclass(frozen=True)
class SpokenChunk:
    samples: np.ndarray  # float32 mono at the output rate, silence where nothing is said
    text: str | None  # the sentence this chunk is part of
    viseme: str  # the mouth shape at the chunk's middle
    mouth: float  # 0..1, from the chunk's loudness


class Speaker:
    """Plays queued utterances at `rate` Hz; one chunk per video frame."""

    def __init__(
        self,
        synthesizer: Synthesizer,
        rate: int,
        *,
        voice: str | None = None,
        cache_size: int = CACHE_SIZE,
        prepare: Callable[[Line], None] | None = None,
    ):
        self.synthesizer = synthesizer
        self.rate = rate
        self.voice = voice
        self.cache_size = cache_size
        # How a sentence gets made: handed to `prepare` (a side job that calls `self.prepare`), or now.
        self._schedule = prepare or self.prepare
        self._cache: OrderedDict[tuple[str, str | None], _Playing] = OrderedDict()
        self._queue: deque[Line] = deque()
        self._current: _Playing | None = None
        self.synthesized = 0  # utterances synthesized (cache misses)
        self.interrupted = 0  # utterances cut by barge-in
        self.refused = 0  # sentences not queued: `MAX_QUEUED` were waiting
        self._lock = threading.Lock()  # `say` may come from other threads (stages, the WebRTC client)

    @property
    def speaking(self) -> bool:
        return self._current is not None or bool(self._queue)

    @property
    def current_text(self) -> str | None:
        current = self._current
        return current.utterance.text if current is not None else None

    def say(self, text: str) -> None:
        """Queue `text` to be spoken after whatever is queued already, sentence by sentence."""
        lines = [Line(sentence) for sentence in sentences(text)]
        with self._lock:
            room = max(0, MAX_QUEUED - len(self._queue))
            self.refused += max(0, len(lines) - room)
            lines = lines[:room]
            self._queue.extend(lines)
            for line in lines:
                line.ready = self._from_cache(line.text)
        for line in lines:
            if line.ready is None:
                self._schedule(line)

    def cached(self, text: str) -> Utterance | None:
        """The sentence as it was synthesized, if it still is in the cache."""
        with self._lock:
            playing = self._cache.get((text, self.voice))
        return playing.utterance if playing is not None else None

    def prepare(self, line: Line) -> None:
        """Make a queued sentence (on whichever thread synthesizes), unless barge-in dropped it."""
        if not line.dropped and line.ready is None:
            line.ready = self._prepared(line.text)

    def stop(self, *, drop_queue: bool = True) -> None:
        """Barge-in: end the current sentence now; with `drop_queue`, forget the rest too."""
        with self._lock:
            if self._current is not None:
                self.interrupted += 1
                self._current = None
            if drop_queue:
                for line in self._queue:
                    line.dropped = True
                self._queue.clear()

    def next_chunk(self, count: int) -> SpokenChunk:
        """The next `count` samples of the avatar's voice."""
        with self._lock:
            return self._next_chunk(count)

    def _next_chunk(self, count: int) -> SpokenChunk:
        out = np.zeros(count, dtype=np.float32)
        filled = 0
        text, shape = None, SILENCE
        while filled < count:
            if self._current is None:
                while self._queue and self._queue[0].dropped:  # a sentence that could not be made
                    self._queue.popleft()
                if not self._queue or self._queue[0].ready is None:
                    break  # nothing queued, or the next sentence is still being made
                self._current = self._queue.popleft().ready
                self._current.position = 0
            playing = self._current
            take = min(count - filled, len(playing.samples) - playing.position)
            out[filled : filled + take] = playing.samples[playing.position : playing.position + take]
            if text is None or filled <= count // 2 < filled + take:
                text = playing.utterance.text
                middle = playing.position + (count // 2 - filled if filled <= count // 2 else 0)
                shape = self._viseme_at(playing, min(middle, len(playing.samples) - 1))
            playing.position += take
            filled += take
            if playing.position >= len(playing.samples):
                self._current = None
        mouth = float(min(1.0, np.sqrt(np.mean(out**2)) / 0.15)) if count else 0.0
        return SpokenChunk(out, text, shape if text is not None else SILENCE, round(mouth, 3))

    def _viseme_at(self, playing: _Playing, sample: int) -> str:
        index = int(np.searchsorted(playing.phoneme_starts, sample, side="right")) - 1
        if index < 0:
            return SILENCE
        return viseme(playing.utterance.phonemes[index].symbol)

    def _from_cache(self, text: str) -> _Playing | None:
        """A playing copy of the cached sentence (its own position), marked recently used; the lock held."""
        key = (text, self.voice)
        cached = self._cache.get(key)
        if cached is None:
            return None
        self._cache.move_to_end(key)
        return _Playing(cached.utterance, cached.samples, cached.phoneme_starts)

    def _prepared(self, text: str) -> _Playing:
        with self._lock:
            playing = self._from_cache(text)
        if playing is not None:
            return playing
        utterance = self.synthesizer.synthesize(text, self.voice)
        self.synthesized += 1
        samples = resample_mono(utterance.samples, utterance.sample_rate, self.rate)
        starts = np.array([round(p.start_s * self.rate) for p in utterance.phonemes], dtype=np.int64)
        made = _Playing(utterance, samples, starts)
        with self._lock:
            self._cache[(text, self.voice)] = made
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return _Playing(made.utterance, made.samples, made.phoneme_starts)


def resample_mono(samples: np.ndarray, rate: int, to: int) -> np.ndarray:
    """A whole mono float32 signal from `rate` to `to` Hz with FFmpeg's resampler (flushed, so nothing is held back)."""
    if rate == to or not len(samples):
        return samples.astype(np.float32)
    frame = av.AudioFrame.from_ndarray(samples.astype(np.float32)[None], format="flt", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=to)
    parts = [f.to_ndarray()[0] for f in resampler.resample(frame)] + [
        f.to_ndarray()[0] for f in resampler.resample(None)
    ]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
