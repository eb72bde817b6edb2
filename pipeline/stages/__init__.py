"""Built-in stages; importing this package registers them."""

from pipeline.stages.audio_level import AudioLevel
from pipeline.stages.avatar import Avatar
from pipeline.stages.context import Context
from pipeline.stages.emotion import Emotion
from pipeline.stages.face_overlay import FaceOverlay
from pipeline.stages.frame_stats import FrameStats
from pipeline.stages.meter_overlay import MeterOverlay
from pipeline.stages.passthrough import PassThrough
from pipeline.stages.voice import Voice

__all__ = [
    "AudioLevel",
    "Avatar",
    "Context",
    "Emotion",
    "FaceOverlay",
    "FrameStats",
    "MeterOverlay",
    "PassThrough",
    "Voice",
]
