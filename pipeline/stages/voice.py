"""The voice stage, listening half: is the user speaking, how loud, and when turns begin and end.

Each frame's audio is resampled to 16 kHz mono (FFmpeg's resampler, state kept across frames)
and fed to Silero VAD in 32 ms chunks; a speech gate with hysteresis and hangover turns the
chunk probabilities into turns. Levels come from the audio kernels on the frame's own audio.
Turn events carry their time on the stream's clock (the audio's pts), so they line up with
video frames; a turn's end is known only after the hangover, so `user_stopped` arrives on a
later frame than the one it names.

Annotation, under the stage's name: `user_speaking`, `speech_prob` (the frame's highest chunk
probability; the last one when no chunk completed), `rms_dbfs`, `peak_dbfs`, `clipped` (samples
at full scale in this frame) and `events`: `{"type": "user_started", "time_s"}` or
`{"type": "user_stopped", "time_s", "duration_s"}`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import Field

from kernels import ops
from pipeline.frames import Frame
from pipeline.io.audio_align import ChunkResampler
from pipeline.registry import register_stage
from pipeline.stage import ComputeStage, StageContext, StageOptions
from pipeline.voice.vad import HANGOVER_S, THRESHOLD, VAD_RATE, SileroVAD, SpeechGate

SILENCE_DBFS = -120.0  # floor for digital silence, so levels stay finite numbers
FULL_SCALE = 0.999  # a sample this close to ±1 counts as clipped


def dbfs(amplitude: float) -> float:
    return round(max(SILENCE_DBFS, 20.0 * math.log10(amplitude)) if amplitude > 0 else SILENCE_DBFS, 2)


class VoiceOptions(StageOptions):
    threshold: float = Field(THRESHOLD, gt=0.0, lt=1.0)  # speech probability that starts a turn
    hangover_s: float = Field(HANGOVER_S, ge=0.0, le=5.0)  # silence that ends one


@register_stage
class Voice(ComputeStage):
    """Annotation: the user's speech (VAD), levels, clipping and turn events, per frame."""

    type_name = "voice"
    Options = VoiceOptions

    def setup(self, ctx: StageContext) -> None:
        super().setup(ctx)
        self._vad = SileroVAD()  # a small recurrent model: the CPU is the right place for 32 ms chunks
        self._gate = SpeechGate(threshold=self.options.threshold, hangover_s=self.options.hangover_s)
        self._resampler = ChunkResampler(VAD_RATE, 1)
        self._origin_s: float | None = None  # stream time of the first 16 kHz sample
        self._last_prob = 0.0
        self.clipped_total = 0

    def compute(self, frame: Frame) -> dict[str, Any]:
        chunk = frame.audio
        events: list[dict[str, Any]] = []
        record: dict[str, Any] = {"rms_dbfs": None, "peak_dbfs": None, "clipped": 0}
        if chunk is not None and chunk.samples.shape[-1]:
            rms, peak = ops.levels(chunk.samples)
            record["rms_dbfs"] = dbfs(float(rms.max()))
            record["peak_dbfs"] = dbfs(float(peak.max()))
            clipped = int((chunk.samples.abs() >= FULL_SCALE).sum())
            record["clipped"] = clipped
            self.clipped_total += clipped
            mono = self._resampler(chunk)
            if self._origin_s is None:
                self._origin_s = mono.pts / VAD_RATE
            probabilities = self._vad.push(mono.samples[0].numpy())
            if len(probabilities):
                self._last_prob = float(np.max(probabilities))
            started, ended = self._gate.push(probabilities)
            origin = self._origin_s
            events += [{"type": "user_started", "time_s": round(origin + t, 3)} for t in started]
            events += [
                {
                    "type": "user_stopped",
                    "time_s": round(origin + turn.end_s, 3),
                    "duration_s": round(turn.duration_s, 3),
                }
                for turn in ended
            ]
        record |= {"user_speaking": self._gate.speaking, "speech_prob": round(self._last_prob, 4), "events": events}
        return record
