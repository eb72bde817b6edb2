"""Speaking: lines play out frame by frame, cached, with visemes; barge-in cuts them; mixing ducks, never clips."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("espeakng_loader", reason="the avatar's voice is eSpeak NG")
pytest.importorskip("silero_vad", reason="barge-in listens with silero-vad")

from voice_kit import RATE, placed, resample, speech_clip, spoken

from pipeline.config import parse_config
from pipeline.executor import Pipeline
from pipeline.graph import build_graph
from pipeline.io.analytics import AnalyticsSink
from pipeline.io.base import Sink
from pipeline.io.media import MediaSource
from pipeline.stages.voice.speaker import Speaker
from pipeline.stages.voice.synth import EspeakSynthesizer
from pipeline.stages.voice.visemes import VISEMES, viseme

LONG_LINE = "I am going to keep talking for quite a while, so that you have plenty of time to interrupt me."


class AudioSink(Sink):
    """Keeps every frame's audio, as the encoder would get it."""

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []

    async def open(self, info) -> None:
        pass

    async def write(self, frame) -> None:
        if frame.audio is not None:
            self.chunks.append(frame.audio.samples.numpy().copy())

    async def close(self) -> None:
        pass


def run(clip, tmp_path, **options):
    config = parse_config({"name": "speak", "stages": [{"name": "voice", "type": "voice", "options": options}]})
    audio = AudioSink()
    analytics = tmp_path / "voice.jsonl"
    asyncio.run(Pipeline(build_graph(config), MediaSource(clip), AnalyticsSink(audio, analytics)).run())
    import json

    return [json.loads(line)["voice"] for line in analytics.read_text().splitlines()], audio.chunks


def synthesizers():
    """Both voices the avatar can have: Piper's natural one (the default) and eSpeak NG's."""
    from pipeline.stages.voice.piper_synth import shared_piper

    return [pytest.param(shared_piper, id="piper"), pytest.param(EspeakSynthesizer, id="espeak")]


@pytest.mark.parametrize("make", synthesizers())
def test_a_line_plays_out_chunk_by_chunk_with_its_mouth_shapes_then_silence_and_is_cached(make):
    speaker = Speaker(make(), 48000)
    speaker.say("Hello there.")
    speaker.say("Hello there.")
    assert speaker.synthesized == 1  # the second one came from the cache
    chunks = [speaker.next_chunk(1600) for _ in range(120)]
    speaking = [c.text is not None for c in chunks]
    assert speaking[0] and not speaking[-1]
    spoken_shapes = {c.viseme for c in chunks if c.text}
    assert len(spoken_shapes) >= 4 and spoken_shapes <= set(VISEMES)
    assert max(c.mouth for c in chunks) > 0.3 and chunks[-1].mouth == 0.0
    voiced = np.concatenate([c.samples for c in chunks if c.text])
    expected = 2 * round(speaker.cached("Hello there.").duration_s * 48000)  # said twice, back to back
    assert abs(len(voiced) - expected) <= 2 * 1600


def test_a_line_is_said_sentence_by_sentence_and_the_first_plays_before_the_rest_is_made():
    made: list = []
    speaker = Speaker(EspeakSynthesizer(), 48000, prepare=made.append)  # sentences wait to be made
    speaker.say("Hello there. How are you? I am fine!")
    assert [line.text for line in made] == ["Hello there.", "How are you?", "I am fine!"]
    assert speaker.next_chunk(1600).text is None  # nothing made yet: silence
    speaker.prepare(made[0])
    assert speaker.next_chunk(1600).text == "Hello there."  # the first plays; the others are still waiting
    speaker.stop()  # barge-in: the rest is dropped, and not made
    speaker.prepare(made[1])
    assert made[1].ready is None and not speaker.speaking


def test_piper_times_each_phoneme_and_each_sound_has_a_mouth_shape():
    from pipeline.stages.voice.piper_synth import _by_energy, shared_piper

    piper = shared_piper()
    utterance = piper.synthesize("Hello there! How are you today?")
    starts = [p.start_s for p in utterance.phonemes]
    assert starts == sorted(starts) and starts[0] >= 0 and starts[-1] < utterance.duration_s
    sounds = [p.symbol for p in utterance.phonemes if p.symbol != "_"]
    assert len(sounds) >= 15 and all(viseme(symbol) != "sil" for symbol in sounds), sounds
    # Without timing from the voice, phonemes share the sound's energy: none starts in a pause.
    sound = np.concatenate((np.zeros(1000, np.float32), np.ones(1000, np.float32)))
    assert [start for start, _ in _by_energy(["h", "ˈ", "a", " ", "i"], sound)] == [1000, 1333, 1666]


def test_visemes_for_known_phonemes():
    assert viseme("p") == viseme("b") == viseme("m") == "PP"
    assert viseme("'oU") == "oh" and viseme("aI") == "aa" and viseme("i:") == "ih"
    assert viseme("_:") == viseme(None) == viseme("?!") == "sil"


@pytest.mark.parametrize("tts", ["piper", "espeak"])
def test_barge_in_stops_the_avatar_when_the_user_starts(tmp_path, tts):
    speech, sound_start, _ = spoken("Wait, stop please.")
    at = 1.5
    clip = speech_clip(tmp_path / "user.mp4", placed(speech, at, 4.0))
    records, _ = run(clip, tmp_path, say=[LONG_LINE], tts=tts)
    talking = [r["avatar_speaking"] for r in records]
    cut = [e for r in records for e in r["events"] if e["type"] == "avatar_interrupted"]
    assert talking[0] and cut, "the avatar was speaking and was interrupted"
    assert abs(cut[0]["time_s"] - (at + sound_start)) <= 0.1
    assert cut[0]["text"] == LONG_LINE
    first_silent = talking.index(False)
    assert abs(first_silent / 30 - (at + sound_start)) <= 0.15  # within the chunk it was heard
    assert not any(talking[first_silent:])  # the rest of the line is dropped


def test_mixing_ducks_the_user_by_the_set_amount_and_never_clips(tmp_path):
    tone = (0.95 * np.sin(2 * np.pi * 300 * np.arange(3 * RATE) / RATE)).astype(np.float32)  # a loud "user"
    clip = speech_clip(tmp_path / "tone.mp4", tone)
    records, chunks = run(
        clip, tmp_path, say=["Hello there, how are you?"], duck_db=12.0, voice_gain_db=6.0, barge_in=False
    )
    mixed = np.concatenate([c[0] for c in chunks])
    assert np.abs(mixed).max() <= 1.0  # the limiter holds the ceiling
    # Ducking alone: the same run with the avatar turned all the way down.
    records, chunks = run(
        clip, tmp_path, say=["Hello there, how are you?"], duck_db=12.0, voice_gain_db=-40.0, barge_in=False
    )
    levels = [float(np.sqrt(np.mean(c[0] ** 2))) for c in chunks]
    under = [level for level, r in zip(levels, records, strict=True) if r["avatar_speaking"]]
    alone = [level for level, r in zip(levels[5:], records[5:], strict=True) if not r["avatar_speaking"]]
    assert under and alone
    drop_db = 20 * np.log10(np.median(alone) / np.median(under))
    assert abs(drop_db - 12.0) <= 1.0


def test_resample_keeps_duration():
    x = np.zeros(22050, np.float32)
    assert abs(len(resample(x, 22050, 48000)) - 48000) <= 64


def test_say_on_the_command_line_gives_the_avatar_its_lines(tmp_path):
    import json

    from pipeline.cli import EXIT_OK, EXIT_USAGE, main

    graph = tmp_path / "voice.yaml"
    graph.write_text("name: talk\nstages:\n  - {name: voice, type: voice}\n")
    analytics = tmp_path / "talk.jsonl"
    code = main(
        [
            "--source",
            "sample",
            "--frames",
            "20",
            "--config",
            str(graph),
            "--say",
            "Hello.",
            "--analytics",
            str(analytics),
        ]
    )
    assert code == EXIT_OK
    records = [json.loads(line)["voice"] for line in analytics.read_text().splitlines()]
    assert records[0]["avatar_speaking"] and records[0]["text"] == "Hello."
    assert main(["--source", "sample", "--frames", "2", "--config", "passthrough", "--say", "Hi."]) == EXIT_USAGE


@pytest.mark.parametrize("tts", ["piper", "espeak"])
@pytest.mark.parametrize("fps", [30, 60])
def test_on_a_stream_without_audio_the_avatar_still_speaks_in_real_time(fps, tts):
    """No audio to mix into, but the mouth must keep time with the picture: one frame's worth of voice per frame."""
    from fractions import Fraction

    import torch

    from pipeline.frames import Frame
    from pipeline.io.base import StreamInfo
    from pipeline.stage import StageContext
    from pipeline.stages.voice.stage import Voice, VoiceOptions

    cpu = torch.device("cpu")
    stage = Voice("voice", options=VoiceOptions(say=("Hello there, how are you?",), tts=tts))
    info = StreamInfo(160, 96, Fraction(fps), Fraction(1, fps))  # video only
    stage.setup(StageContext.standalone(stage, cpu, stream=info))
    speaking = [stage.compute(Frame(i, i, Fraction(1, fps), 0))["avatar_speaking"] for i in range(10 * fps)]
    duration = stage.speaker.cached("Hello there, how are you?").duration_s
    assert abs(sum(speaking) / fps - duration) <= 2 / fps


def test_returning_the_avatar_alone_leaves_the_user_out_of_the_sound(tmp_path):
    """What a browser page plays: the avatar's voice, never the user's own sound played back. The
    "user" is a steady 300 Hz tone; mixed, it is there under the voice (ducked), alone it is not."""
    samples = 3 * RATE
    tone = (0.5 * np.sin(2 * np.pi * 300 * np.arange(samples) / RATE)).astype(np.float32)
    clip = speech_clip(tmp_path / "tone.mp4", tone)
    line = ["Hello there, how are you?"]

    def tone_level(chunks: list[np.ndarray]) -> float:
        """Magnitude of the 300 Hz bin over `chunks`, per sample (a steady tone stands out of speech)."""
        sound = np.concatenate([c[0] for c in chunks])
        return float(np.abs(np.fft.rfft(sound))[round(300 * len(sound) / 48000)]) / len(sound)

    records, alone = run(clip, tmp_path, say=line, returns="avatar", barge_in=False)
    speaking = [r["avatar_speaking"] for r in records]
    assert any(speaking) and not all(speaking)
    assert all(not chunk.any() for chunk, talking in zip(alone, speaking, strict=True) if not talking)  # silence
    voiced = [chunk for chunk, talking in zip(alone, speaking, strict=True) if talking]
    assert max(float(np.abs(c).max()) for c in voiced) > 0.1  # the voice
    records, mixed = run(clip, tmp_path, say=line, returns="mixed", barge_in=False)
    under = [chunk for chunk, r in zip(mixed, records, strict=True) if r["avatar_speaking"]]
    assert tone_level(voiced) < 0.1 * tone_level(under)


def test_browser_sessions_return_the_avatar_alone_unless_the_graph_says_otherwise():
    from pipeline.config import load_config
    from pipeline.graph import with_avatar_voice_returned

    config = with_avatar_voice_returned(load_config("default"))
    assert [s.options["returns"] for s in config.stages if s.type == "voice"] == ["avatar"]
    mixed = parse_config({"name": "m", "stages": [{"name": "v", "type": "voice", "options": {"returns": "mixed"}}]})
    assert with_avatar_voice_returned(mixed).stages[0].options["returns"] == "mixed"


def test_a_piper_voice_that_will_not_load_falls_back_to_espeak_said_once(tmp_path, caplog):
    import shutil

    from pipeline.stages.voice.piper_synth import LazyPiper, default_voice_path

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    shutil.copy(f"{default_voice_path()}.json", f"{broken}.json")
    voice = LazyPiper(broken)
    first, second = voice.synthesize("Hello there."), voice.synthesize("Goodbye.")
    assert first.voice == second.voice == "en-us" and len(first.samples) and len(second.samples)
    assert caplog.text.count("the avatar speaks with eSpeak NG") == 1


def test_a_flood_of_sentences_is_refused_past_the_queue_never_left_half_made():
    from pipeline.stages.voice.speaker import MAX_QUEUED

    made: list = []
    speaker = Speaker(EspeakSynthesizer(), 48000, prepare=made.append)
    speaker.say(" ".join(f"Line {i}." for i in range(MAX_QUEUED + 40)))
    assert len(made) == MAX_QUEUED and speaker.refused == 40
    speaker.prepare(made[0])
    assert speaker.next_chunk(1600).text == "Line 0."
