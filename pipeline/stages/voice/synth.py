"""Speech synthesis behind a small interface, with eSpeak NG as the built-in synthesizer.

An `Utterance` is mono float32 audio with the phonemes it says and when each starts: the
phoneme timing is what drives the avatar's mouth. Any synthesizer that can give that fits
behind `Synthesizer`.

eSpeak NG comes from the optional `espeakng-loader` package (GPL-3.0; it ships the library
and its voice data, so nothing downloads at run time). It is driven through its C API with
ctypes: synchronous synthesis into a callback that collects the samples and the phoneme
events. The library is one global engine, so calls are serialized.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

# speak_lib.h
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
INITIALIZE_DONT_EXIT = 0x8000
CHARS_UTF8 = 1
EVENT_LIST_TERMINATED, EVENT_WORD, EVENT_END, EVENT_PHONEME = 0, 1, 5, 7
PARAMETER_RATE = 1  # words per minute
DEFAULT_VOICE = "en-us"
DEFAULT_RATE_WPM = 165


class SynthesisError(RuntimeError):
    """The synthesizer is missing or refused the text."""


@dataclass(frozen=True)
class Phoneme:
    start_s: float  # from the start of the utterance
    symbol: str  # eSpeak's phoneme mnemonic, e.g. "h", "@", "oU"


@dataclass(frozen=True)
class Utterance:
    text: str
    voice: str
    samples: np.ndarray  # float32 mono in −1..1
    sample_rate: int
    phonemes: tuple[Phoneme, ...] = field(default=())

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


class Synthesizer(Protocol):
    def synthesize(self, text: str, voice: str | None = None) -> Utterance: ...


class _EspeakEvent(ctypes.Structure):
    class _Id(ctypes.Union):
        _fields_ = (("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8))

    _fields_ = (
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms from the start of the text
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _Id),
    )


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_EspeakEvent))


class EspeakSynthesizer:
    """eSpeak NG through `espeakng-loader`: `synthesize(text)` → samples at eSpeak's rate (22050 Hz) and phonemes."""

    _lock = threading.Lock()  # one engine per process
    _library: ctypes.CDLL | None = None
    _sample_rate = 0

    def __init__(self, *, rate_wpm: int = DEFAULT_RATE_WPM):
        self.rate_wpm = rate_wpm
        self._open()

    @classmethod
    def _open(cls) -> None:
        with cls._lock:
            if cls._library is not None:
                return
            try:
                import espeakng_loader
            except ImportError:
                raise SynthesisError(
                    "speech synthesis needs eSpeak NG: pip install espeakng-loader (GPL-3.0), "
                    "or give the voice stage another synthesizer"
                ) from None
            library = ctypes.CDLL(str(espeakng_loader.get_library_path()))
            library.espeak_Initialize.restype = ctypes.c_int
            library.espeak_Initialize.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
            library.espeak_SetSynthCallback.argtypes = (_CALLBACK,)
            library.espeak_SetVoiceByName.argtypes = (ctypes.c_char_p,)
            library.espeak_SetParameter.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
            library.espeak_Synth.argtypes = (
                ctypes.c_void_p,
                ctypes.c_size_t,
                ctypes.c_uint,
                ctypes.c_int,
                ctypes.c_uint,
                ctypes.c_uint,
                ctypes.c_void_p,
                ctypes.c_void_p,
            )
            data = Path(espeakng_loader.get_data_path()).parent  # the folder holding espeak-ng-data
            rate = library.espeak_Initialize(
                AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data).encode(), INITIALIZE_PHONEME_EVENTS | INITIALIZE_DONT_EXIT
            )
            if rate <= 0:
                raise SynthesisError(f"eSpeak NG did not start (data in {data})")
            cls._library, cls._sample_rate = library, rate

    def synthesize(self, text: str, voice: str | None = None) -> Utterance:
        """The whole utterance, synthesized now (eSpeak runs several times faster than real time)."""
        voice = voice or DEFAULT_VOICE
        library = self._library
        assert library is not None
        chunks: list[np.ndarray] = []
        phonemes: list[Phoneme] = []

        def collect(wav, count, events) -> int:  # called by eSpeak on this thread, during espeak_Synth
            if count > 0 and wav:
                chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
            index = 0
            while events[index].type != EVENT_LIST_TERMINATED:
                event = events[index]
                if event.type == EVENT_PHONEME:
                    symbol = event.id.string.decode("utf-8", "replace").rstrip("\x00")
                    if symbol:
                        phonemes.append(Phoneme(event.audio_position / 1000.0, symbol))
                index += 1
            return 0  # go on

        callback = _CALLBACK(collect)
        encoded = text.encode("utf-8") + b"\x00"
        with self._lock:
            library.espeak_SetSynthCallback(callback)
            if library.espeak_SetVoiceByName(voice.encode()) != 0:
                raise SynthesisError(f"eSpeak NG has no voice {voice!r}")
            library.espeak_SetParameter(PARAMETER_RATE, self.rate_wpm, 0)
            status = library.espeak_Synth(encoded, len(encoded), 0, 0, 0, CHARS_UTF8, None, None)
        if status != 0:
            raise SynthesisError(f"eSpeak NG could not say {text[:40]!r} (error {status})")
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        samples = (pcm.astype(np.float32) / 32768.0).clip(-1.0, 1.0)
        return Utterance(text, voice, samples, self._sample_rate, tuple(phonemes))
