"""Test speech made on the spot: eSpeak NG sentences at 16 kHz, placed in silence or noise."""

from __future__ import annotations

import numpy as np
from media_kit import clip_with_audio

from pipeline.stages.voice.speaker import resample_mono
from pipeline.stages.voice.synth import EspeakSynthesizer

RATE = 16000


def resample(samples: np.ndarray, rate: int, to: int = RATE) -> np.ndarray:
    """Mono float32 from `rate` to `to` Hz (16 kHz by default) with FFmpeg's resampler."""
    return resample_mono(samples, rate, to)


def spoken(text: str = "The quick brown fox jumps over the lazy dog.") -> tuple[np.ndarray, float, float]:
    """16 kHz speech, and where its sound starts and ends (s): eSpeak pads with a little silence."""
    utterance = EspeakSynthesizer().synthesize(text)
    speech = resample(utterance.samples, utterance.sample_rate)
    loud = np.flatnonzero(np.abs(speech) > 0.02)
    return speech, loud[0] / RATE, (loud[-1] + 1) / RATE


def placed(speech: np.ndarray, at_s: float, total_s: float, *, noise_snr_db: float | None = None, seed: int = 0):
    """`speech` at `at_s` in `total_s` of silence, or of white noise `noise_snr_db` below the speech's power."""
    out = np.zeros(int(total_s * RATE), dtype=np.float32)
    start = int(at_s * RATE)
    out[start : start + len(speech)] = speech
    if noise_snr_db is not None:
        power = float(np.mean(speech[np.abs(speech) > 0.02] ** 2))
        rng = np.random.default_rng(seed)
        out += (rng.standard_normal(len(out)) * np.sqrt(power / 10 ** (noise_snr_db / 10))).astype(np.float32)
    return out


def speech_clip(path, audio_16k: np.ndarray, *, fps: int = 30, rate: int = 48000):
    """An mp4 of plain video frames and `audio_16k` (resampled to `rate`, AAC), as long as the audio."""
    return clip_with_audio(path, resample(audio_16k, RATE, rate), rate=rate, fps=fps)
