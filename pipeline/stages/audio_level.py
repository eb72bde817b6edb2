"""Loudness of each frame's audio: RMS and peak in dBFS."""

from __future__ import annotations

import math

from pipeline.annotation import Annotation
from pipeline.frames import Frame
from pipeline.stage import Stage

SILENCE_DBFS = -120.0  # floor for digital silence, so the annotation stays a finite number


def to_dbfs(amplitude: float) -> float:
    return round(max(SILENCE_DBFS, 20.0 * math.log10(amplitude)) if amplitude > 0 else SILENCE_DBFS, 2)


class AudioLevelAnnotation(Annotation):
    rms_dbfs: float | None  # None on a frame with no audio
    peak_dbfs: float | None


class AudioLevel(Stage):
    """Annotation: `rms_dbfs`, `peak_dbfs` of the chunk; None for both on a frame with no audio.

    A few small reductions per chunk: cheaper on the event loop than a hop to a worker thread.
    """

    type_name = "audio_level"
    Annotation = AudioLevelAnnotation
    handles_dropped = True  # the sound of a dropped frame still plays

    async def process(self, frame: Frame) -> dict[str, float | None]:
        chunk = frame.audio
        if chunk is None or chunk.samples.numel() == 0:
            return {"rms_dbfs": None, "peak_dbfs": None}
        samples = chunk.samples
        peak = float(samples.abs().max())
        rms = float(samples.square().mean().sqrt())
        return {"rms_dbfs": to_dbfs(rms), "peak_dbfs": to_dbfs(peak)}
