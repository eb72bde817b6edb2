"""Is the user speaking? Silero VAD on 32 ms chunks, and a gate that turns its probabilities into turns.

Silero VAD (the `silero-vad` package, MIT; its TorchScript model ships inside the package)
takes exactly 512 samples at 16 kHz per call and keeps state between calls, so audio is
buffered into whole chunks here and fed in order. The model file is loaded directly rather
than through `silero_vad.load_silero_vad`, whose import sets torch's thread count for the
whole process.

TorchScript's executor profiles a model's first two calls and then compiles an optimized plan:
those calls take a noticeable fraction of a second on a CPU, as does loading the file. A live
session would pay both on its first frames (the voice stage is on every frame's path), so the
model is loaded and warmed once per process and device, and each `SileroVAD` gets a deep copy
of it (far cheaper): the copy keeps the optimized plan and has its own state.

`SpeechGate` adds hysteresis and hangover: speech starts when the probability reaches
`threshold`, and ends only after it has stayed below `threshold − 0.15` for `hangover_s`, so
the short pauses inside a sentence do not split a turn. A turn is reported from its first to
its last chunk at or above the threshold. With `pause_s` (shorter than the hangover), each pause
that lasts that long is reported too (`pauses`), once, as the turn would end if the user said no
more: a recognizer can start on it and have the text when the turn does end.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import math
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

VAD_RATE = 16000  # Hz: what the model takes
CHUNK = 512  # samples per call (32 ms); the model rejects other sizes at 16 kHz
CHUNK_S = CHUNK / VAD_RATE
THRESHOLD = 0.5
RELEASE_GAP = 0.15  # the probability must fall this far below the threshold to count as silence
HANGOVER_S = 0.3  # silence shorter than this does not end a turn: the shortest that split no test utterance
WARM_CALLS = 3  # calls that take the executor through profiling to its optimized plan


def model_path() -> Path:
    """The TorchScript model inside the installed `silero-vad` package (found without importing it)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("voice activity detection needs the silero-vad package: pip install silero-vad")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.jit"


_loading = threading.Lock()  # two sessions starting at once load the model once, and copy it in turn


@functools.cache
def _warmed_model(device: torch.device) -> torch.jit.ScriptModule:
    """The model on `device`, run through its first calls on silence, its state reset: only ever copied."""
    with warnings.catch_warnings():  # torch marks TorchScript loading for a future change
        warnings.simplefilter("ignore", DeprecationWarning)
        model = torch.jit.load(str(model_path()), map_location=device).eval()
    silence = torch.zeros(CHUNK, device=device)
    with torch.no_grad():
        for _ in range(WARM_CALLS):
            model(silence, VAD_RATE)
    model.reset_states()
    return model


def warm_up(device: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    """Load and warm the model for `device` if this process has not yet; the warmed model."""
    with _loading:
        return _warmed_model(torch.device(device))


def fresh_model(device: torch.device) -> torch.jit.ScriptModule:
    """A model of its own for one stream, already past the executor's profiling runs (copied under
    the lock: sessions may start on several threads)."""
    with _loading:
        return copy.deepcopy(_warmed_model(torch.device(device)))


class SileroVAD:
    """Speech probability per 32 ms chunk of 16 kHz mono audio, streamed: push any number of samples."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self._model = fresh_model(self.device)
        self._pending = np.zeros(0, dtype=np.float32)
        self.chunks = 0  # chunks scored since the last reset

    def reset(self) -> None:
        """Forget the stream so far (a new session or file)."""
        self._model.reset_states()
        self._pending = np.zeros(0, dtype=np.float32)
        self.chunks = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Probabilities of the whole chunks completed by `samples` (float32 in −1..1), in order."""
        data = np.concatenate((self._pending, np.asarray(samples, dtype=np.float32).reshape(-1)))
        whole = len(data) // CHUNK
        self._pending = data[whole * CHUNK :]
        if not whole:
            return np.zeros(0, dtype=np.float32)
        chunks = torch.from_numpy(np.ascontiguousarray(data[: whole * CHUNK])).view(whole, CHUNK).to(self.device)
        out = np.empty(whole, dtype=np.float32)
        with torch.no_grad():
            for i in range(whole):  # the model's state carries from chunk to chunk
                out[i] = float(self._model(chunks[i], VAD_RATE))
        self.chunks += whole
        return out


@dataclass(frozen=True)
class Turn:
    """A stretch of speech: from the first chunk at or above the threshold to the last one before the silence."""

    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


class SpeechGate:
    """Chunk probabilities → speaking or not, with hysteresis and hangover; finished turns as they end."""

    def __init__(self, *, threshold: float = THRESHOLD, hangover_s: float = HANGOVER_S, pause_s: float | None = None):
        self.threshold = threshold
        self.release = max(0.0, threshold - RELEASE_GAP)
        self.hangover_chunks = max(1, round(hangover_s / CHUNK_S))
        # Pauses this long (in chunks) are reported as the turn so far; None: none are.
        self.pause_chunks = max(1, math.ceil(pause_s / CHUNK_S - 1e-9)) if pause_s is not None else None
        self.pauses: list[Turn] = []  # reported since the caller last emptied it
        self.speaking = False
        self._start_chunk = 0
        self._last_speech_chunk = 0  # last chunk above the release level: keeps the turn open
        self._last_confident_chunk = 0  # last chunk at or above the threshold: where the turn ends
        self._index = 0  # chunks seen

    def push(self, probabilities: np.ndarray) -> tuple[list[float], list[Turn]]:
        """Feed chunk probabilities in order: (start times of turns begun, turns ended), in seconds."""
        started, ended = [], []
        for p in probabilities:
            if not self.speaking and p >= self.threshold:
                self.speaking = True
                self._start_chunk = self._last_speech_chunk = self._last_confident_chunk = self._index
                started.append(self._index * CHUNK_S)
            elif self.speaking:
                if p >= self.threshold:
                    self._last_confident_chunk = self._index
                if p >= self.release:
                    self._last_speech_chunk = self._index
                elif self._index - self._last_speech_chunk >= self.hangover_chunks:
                    self.speaking = False
                    ended.append(self._turn())
                elif self._index - self._last_speech_chunk == self.pause_chunks:
                    self.pauses.append(self._turn())
            self._index += 1
        return started, ended

    def finish(self) -> list[Turn]:
        """End of the stream: the turn still open, if any."""
        if not self.speaking:
            return []
        self.speaking = False
        return [self._turn()]

    def _turn(self) -> Turn:
        return Turn(self._start_chunk * CHUNK_S, (self._last_confident_chunk + 1) * CHUNK_S)
