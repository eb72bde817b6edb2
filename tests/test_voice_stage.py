"""The voice stage in a pipeline: real speech in a file is heard on the frames it plays over, with its turn events."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("silero_vad", reason="voice activity detection needs silero-vad")
pytest.importorskip("espeakng_loader", reason="the test speech is made with eSpeak NG")

from voice_kit import placed, speech_clip, spoken

from pipeline.config import parse_config
from pipeline.executor import Pipeline
from pipeline.graph import build_graph
from pipeline.io.analytics import AnalyticsSink
from pipeline.io.media import MediaSource
from pipeline.io.sinks import NullSink

FPS = 30


def run_voice(clip, tmp_path, *, realtime: bool = False) -> list[dict]:
    """The clip through a voice stage: unpaced (a file run, listening in line), or paced at its
    frame rate like a camera (a live run, listening beside the frames); every frame kept."""
    config = parse_config(
        {"name": "voice-test", "quality": {"mode": "off"}, "stages": [{"name": "voice", "type": "voice"}]}
    )
    analytics = tmp_path / f"voice-{realtime}.jsonl"
    source = MediaSource(clip, realtime=realtime)
    pipeline = Pipeline(build_graph(config), source, AnalyticsSink(NullSink(), analytics))
    report = asyncio.run(pipeline.run())
    assert pipeline.stages_of("voice")[0].listening.beside == realtime
    assert report["stages"]["voice"]["errors"] == 0
    return [json.loads(line) for line in analytics.read_text().splitlines()]


def test_speech_in_a_file_is_heard_on_its_frames_with_turn_events(tmp_path):
    speech, sound_start, sound_end = spoken()
    at = 1.0
    records = run_voice(speech_clip(tmp_path / "talk.mp4", placed(speech, at, 5.0)), tmp_path)
    start, end = at + sound_start, at + sound_end
    events = [event for record in records for event in record["voice"]["events"]]
    assert [e["type"] for e in events] == ["user_started", "user_stopped", "user_said"]
    assert abs(events[0]["time_s"] - start) <= 0.1
    assert abs(events[1]["time_s"] - end) <= 0.1
    assert abs(events[1]["duration_s"] - (end - start)) <= 0.15
    for record in records:
        t = record["time_s"]
        if start + 0.15 < t < end - 0.15:
            assert record["voice"]["user_speaking"], f"frame at {t:.2f} s should hear speech"
        if t < start - 0.15:
            assert not record["voice"]["user_speaking"], f"frame at {t:.2f} s is before the speech"
    levels = [record["voice"]["rms_dbfs"] for record in records]
    assert max(levels) > -40 and min(levels) == -120.0  # speech, and digital silence around it


def test_the_stopped_event_comes_after_the_hangover_on_a_later_frame(tmp_path):
    speech, _, _ = spoken("Hello.")
    records = run_voice(speech_clip(tmp_path / "hello.mp4", placed(speech, 0.5, 3.0)), tmp_path)
    (stopped,) = [(r["time_s"], e) for r in records for e in r["voice"]["events"] if e["type"] == "user_stopped"]
    frame_time, event = stopped
    assert frame_time >= event["time_s"] + 0.25  # told after 0.3 s of silence, about what ended earlier


def test_a_live_run_listens_beside_the_frames_and_hears_the_same_turns_on_the_frame_or_after(tmp_path):
    speech, _, _ = spoken("Hello there.")
    # Time after the speech for its recognition, beside the frames, to land before the clip ends.
    clip = speech_clip(tmp_path / "hello.mp4", placed(speech, 0.5, 4.0))
    in_line = run_voice(clip, tmp_path)
    beside = run_voice(clip, tmp_path, realtime=True)

    def turns(records):
        return [(r["frame"], e) for r in records for e in r["voice"]["events"]]

    assert [e["type"] for _, e in turns(in_line)] == ["user_started", "user_stopped", "user_said"]
    assert [e for _, e in turns(beside)] == [e for _, e in turns(in_line)]  # the same events at the same times
    for (late, _), (first, _) in zip(turns(beside), turns(in_line), strict=True):
        assert first <= late  # on the frame that heard it, or after it
