#!/usr/bin/env python3
"""Hear → think → speak, measured: voice-to-voice latency, recognition accuracy, and the voices' speed.

**Voice-to-voice.** A file of a user talking (utterances of different lengths, by eSpeak NG and
Piper voices, each followed by a pause long enough for the answer) goes through the default
graph paced as live (`--realtime`: the side work runs beside the frames, as with a camera),
with the built-in rules answering. For each utterance: from the end of its speech (where it was
placed) to the avatar's first sample of the answer in the output (found in the output sound,
where the user is silent), plus that frame's own time through the pipeline (capture to sink).
The parts, on the stream's clock: the VAD's hangover (speech end → the frame that knows the
turn ended), recognition (→ the frame that carries `user_said`), the responder (→ the frame whose
context sends a line) and first audio (→ the first sample of it), and the frame's pipeline time.
Median and p95 over the utterances.

**Recognition accuracy.** Word error rate of Whisper `tiny.en` (the recognizer the voice stage
uses, alone) on `SENTENCES`, each spoken by an eSpeak NG voice and by Piper, clean and with white
noise at 10 dB SNR. Words are compared lower-cased, without punctuation.

**The voices.** Time to first audio of a short sentence and the real-time factor (seconds of
compute per second of speech) of Piper, with eSpeak NG measured beside it in the same run.

    python bench/voice_loop.py [--utterances 12] [--skip-loop] [--skip-wer] [--hangovers]

**The hangover** (`--hangovers`): for each hangover, how many of the sentences here (three voices
each) the VAD's gate cuts into more than one turn, and how long after the speech ends it knows the
turn is over; the voice stage's `hangover_s` is the shortest that cuts none.

Targets (the issue's): voice-to-voice median ≤ 800 ms on a 2-core CPU (≤ 300 ms on a GPU); WER
≤ 10% clean, ≤ 20% noisy; Piper's first audio ≤ 150 ms for a short sentence.

Last line: one JSON object {"voice_to_voice": {...}, "wer": {...}, "voices": {...}}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av
import numpy as np

from pipeline.config import load_config
from pipeline.executor import Pipeline
from pipeline.frames import Frame
from pipeline.graph import build_graph
from pipeline.io.base import Sink, StreamInfo
from pipeline.io.media import MediaSource
from pipeline.stages.voice.piper_synth import shared_piper
from pipeline.stages.voice.recognizer import WhisperRecognizer
from pipeline.stages.voice.speaker import resample_mono
from pipeline.stages.voice.synth import EspeakSynthesizer

RATE = 16000  # the test speech, as the recognizer takes it
OUT_RATE = 48000  # the file's sound
FPS = 30
LEAD_S = 1.0  # silence before the first utterance
PAUSE_S = 5.0  # after each utterance: the answer, and quiet before the next
NOISE_SNR_DB = 10.0
SPEECH_LEVEL = 0.02  # a sample above this is speech (where the placed speech starts and ends)
VOICE_LEVEL = 1e-3  # an output sample above this in a pause is the avatar's voice
# (text, voice): eSpeak NG voices by name (a "+variant" changes the speaker), Piper's joe at a rate.
LOOP = (
    ("Hello there!", "espeak:en-us"),
    ("How are you doing today?", "piper:1.0"),
    ("What is your name?", "espeak:en-us+f3"),
    ("I went to the market this morning and bought some fresh bread and cheese.", "piper:0.85"),
    ("Thank you so much for your help.", "espeak:en"),
    ("Hi, good morning.", "piper:1.2"),
    ("The weather has been lovely all week, we should go for a walk.", "espeak:en-us+m3"),
    ("Who are you?", "piper:1.0"),
    ("Thanks a lot.", "espeak:en-us+f2"),
    ("My sister is visiting next month and I want to show her around the city.", "piper:1.0"),
    ("How's it going?", "espeak:en-us"),
    ("Okay, goodbye!", "piper:0.9"),
)
SENTENCES = (
    "Hello, how are you today?",
    "What is your name?",
    "Thank you very much for your help.",
    "I would like a cup of coffee please.",
    "The weather is nice this morning.",
    "Can you tell me the time?",
    "My favourite colour is blue.",
    "We are going to the park after lunch.",
    "Please open the window, it is hot in here.",
    "I have been working on this project all week.",
    "Where did you put my keys?",
    "The train leaves at the end of the day.",
    "She bought a new red bicycle yesterday.",
    "Let us meet at the library tomorrow.",
    "The children are playing in the garden.",
    "I think it is going to rain later.",
    "Could you speak a little more slowly?",
    "He plays the guitar in a small band.",
    "We watched a good movie last night.",
    "This soup tastes really good.",
    "Turn left at the next corner.",
    "I forgot to call my mother.",
    "The meeting has been moved to Friday.",
    "Do you like reading books?",
    "Our team won the game on Sunday.",
    "The cat is sleeping on the sofa.",
    "I need to buy some milk and eggs.",
    "What do you want to do this weekend?",
    "The museum is closed on Monday.",
    "Goodbye, see you soon.",
)
PARTS = ("voice_to_voice_ms", "hangover_ms", "recognition_ms", "responder_ms", "first_audio_ms", "pipeline_ms")
WER_VOICES = ("espeak:en-us", "espeak:en-us+f3", "espeak:en", "piper:1.0", "piper:0.85")


# ----------------------------------------------------------------- speech


def speak(text: str, voice: str) -> np.ndarray:
    """`text` in `voice` at 16 kHz: "espeak:NAME" or "piper:LENGTH_SCALE" (joe, slower or faster)."""
    kind, _, setting = voice.partition(":")
    if kind == "espeak":
        utterance = EspeakSynthesizer().synthesize(text, setting)
        return resample_mono(utterance.samples, utterance.sample_rate, RATE)
    from piper import SynthesisConfig

    piper = shared_piper()
    config = SynthesisConfig(length_scale=float(setting), volume=0.5)
    chunks = list(piper._voice.synthesize(text, config))
    samples = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
    return resample_mono(samples, piper.sample_rate, RATE)


def with_noise(speech: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """White noise `snr_db` below the speech's power (over its loud part)."""
    power = float(np.mean(speech[np.abs(speech) > SPEECH_LEVEL] ** 2))
    noise = np.random.default_rng(seed).standard_normal(len(speech)) * np.sqrt(power / 10 ** (snr_db / 10))
    return (speech + noise).astype(np.float32)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower().replace("favorite", "favourite"))


def edit_distance(a: list[str], b: list[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


# ----------------------------------------------------------------- recognition accuracy


def word_error_rates() -> dict[str, Any]:
    recognizer = WhisperRecognizer()
    rows: dict[str, list[tuple[int, int]]] = {"clean": [], "noisy": []}
    worst: list[tuple[float, str, str, str]] = []
    for index, text in enumerate(SENTENCES):
        for voice in (WER_VOICES[index % 3], WER_VOICES[3 + index % 2]):  # an eSpeak voice and a Piper rate
            # As the voice stage hands it over: 0.3 s before the speech, 0.1 s after (here silence).
            speech = np.concatenate(
                (np.zeros(int(0.3 * RATE), np.float32), speak(text, voice), np.zeros(RATE // 10, np.float32))
            )
            for condition, audio in (("clean", speech), ("noisy", with_noise(speech, NOISE_SNR_DB, index))):
                heard = recognizer.transcribe(audio).text
                errors, total = edit_distance(words(text), words(heard)), len(words(text))
                rows[condition].append((errors, total))
                worst.append((errors / total, condition, voice, f"{text!r} → {heard!r}"))
    rates = {k: round(sum(e for e, _ in v) / sum(t for _, t in v), 4) for k, v in rows.items()}
    worst.sort(reverse=True)
    return {"sentences": len(SENTENCES), "clips": {k: len(v) for k, v in rows.items()}, **rates, "worst": worst[:5]}


# ----------------------------------------------------------------- the hangover


HANGOVERS = (0.15, 0.2, 0.25, 0.3, 0.4, 0.5)


def hangover_sweep() -> list[dict[str, Any]]:
    """For each hangover: how many utterances (every sentence here, three voices each, commas and
    all) the gate cuts into more than one turn, and how long after the speech ends it knows."""
    from pipeline.stages.voice.vad import CHUNK_S, SileroVAD, SpeechGate

    voices = ("espeak:en-us", "espeak:en", "espeak:en-us+f3", "piper:1.0", "piper:0.85", "piper:1.2")
    scored = []
    for index, text in enumerate([*SENTENCES, *(t for t, _ in LOOP)]):
        for voice in voices[index % 2 :: 2]:
            speech = speak(text, voice)
            end = (RATE + np.flatnonzero(np.abs(speech) > SPEECH_LEVEL)[-1] + 1) / RATE
            audio = np.concatenate((np.zeros(RATE, np.float32), speech, np.zeros(RATE, np.float32)))
            scored.append((SileroVAD().push(audio), end))
    rows = []
    for hangover in HANGOVERS:
        split, delays = 0, []
        for probabilities, end in scored:
            gate, turns, known = SpeechGate(hangover_s=hangover), 0, None
            for index, probability in enumerate(probabilities):
                ended = gate.push(np.array([probability]))[1]
                turns += len(ended)
                if ended and known is None:
                    known = (index + 1) * CHUNK_S
            split += turns + len(gate.finish()) > 1
            if known is not None:
                delays.append(1000 * (known - end))
        rows.append(
            {
                "hangover_s": hangover,
                "utterances": len(scored),
                "split": split,
                "end_known_ms": {"median": round(statistics.median(delays)), "p95": round(_p95(delays))},
            }
        )
    return rows


# ----------------------------------------------------------------- the voices' speed


SHORT = ("Hello there!", "Hi, how are you?", "Good morning!", "Nice to see you.", "Welcome back!", "See you soon!")


def voice_speed() -> dict[str, Any]:
    """Short sentences each said once (Piper keeps what it has made: a repeat costs nothing)."""
    longer = " ".join(SENTENCES[:6])
    piper = shared_piper()
    espeak = EspeakSynthesizer()
    result = {}
    for name, synthesize in (("piper", piper.synthesize), ("espeak", espeak.synthesize)):
        synthesize("Warm up.")
        firsts = []
        for short in SHORT:
            started = time.perf_counter()
            synthesize(short)
            firsts.append(time.perf_counter() - started)
        started = time.perf_counter()
        utterance = synthesize(longer)
        took = time.perf_counter() - started
        result[name] = {
            "first_audio_ms": round(1000 * statistics.median(firsts), 1),
            "rtf": round(took / utterance.duration_s, 4),
            "speech_s": round(utterance.duration_s, 2),
        }
    return result


# ----------------------------------------------------------------- voice to voice


def user_track(count: int) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """The user's side: utterances in pauses (48 kHz), and each one's (text, start, end) in seconds."""
    parts = [np.zeros(int(LEAD_S * OUT_RATE), np.float32)]
    placed = []
    at = LEAD_S
    for text, voice in (LOOP * (count // len(LOOP) + 1))[:count]:
        speech = resample_mono(speak(text, voice), RATE, OUT_RATE)
        loud = np.flatnonzero(np.abs(speech) > SPEECH_LEVEL)
        placed.append((text, at + loud[0] / OUT_RATE, at + (loud[-1] + 1) / OUT_RATE))
        parts += [speech, np.zeros(int(PAUSE_S * OUT_RATE), np.float32)]
        at += len(speech) / OUT_RATE + PAUSE_S
    return np.concatenate(parts), placed


def write_clip(path: Path, audio: np.ndarray) -> None:
    """Plain grey 320×240 pictures at 30 fps, and `audio` (mono, 48 kHz) as AAC."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        sound = out.add_stream("aac", rate=OUT_RATE)
        sound.layout = "mono"
        picture = av.VideoFrame.from_ndarray(np.full((240, 320, 3), 128, np.uint8), format="rgb24")
        per_frame = OUT_RATE // FPS
        for i in range(len(audio) // per_frame):
            picture.pts, picture.time_base = i, Fraction(1, FPS)
            out.mux(video.encode(picture.reformat(format="yuv420p")))
            chunk = av.AudioFrame.from_ndarray(
                audio[None, i * per_frame : (i + 1) * per_frame], format="fltp", layout="mono"
            )
            chunk.sample_rate, chunk.pts = OUT_RATE, i * per_frame
            out.mux(sound.encode(chunk))
        out.mux(video.encode(None))
        out.mux(sound.encode(None))


class Recorder(Sink):
    """Keeps each frame's time, its time through the pipeline, its sound and its annotations."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    async def open(self, info: StreamInfo) -> None:
        pass

    async def write(self, frame: Frame) -> None:
        sound = frame.audio.samples.float().mean(0).cpu().numpy() if frame.audio is not None else None
        self.frames.append(
            {
                "time_s": frame.time_s,
                "audio_pts_s": float(frame.audio.pts / frame.audio.sample_rate) if frame.audio is not None else None,
                "through_ms": (time.monotonic_ns() - frame.capture_ns) / 1e6,
                "sound": sound,
                "voice": frame.annotations.get("voice") or {},
                "context": frame.annotations.get("context") or {},
            }
        )

    async def close(self) -> None:
        pass


def voice_to_voice(count: int) -> dict[str, Any]:
    audio, placed = user_track(count)
    with tempfile.TemporaryDirectory() as folder:
        clip = Path(folder) / "talk.mp4"
        write_clip(clip, audio)
        recorder = Recorder()
        pipeline = Pipeline(build_graph(load_config("default")), MediaSource(clip, realtime=True), recorder)
        report = asyncio.run(pipeline.run())
    voice = pipeline.stages_of("voice")[0]
    frames = recorder.frames
    rows = []
    for number, (text, _, end) in enumerate(placed):
        until = placed[number + 1][1] if number + 1 < len(placed) else float("inf")
        window = [f for f in frames if end <= f["time_s"] < until]
        stopped = _first(window, lambda f: _has(f["voice"], "user_stopped"))
        said = _first(window, lambda f: _has(f["voice"], "user_said"))
        answered = _first(window, lambda f: bool(f["context"].get("said")))
        voiced = _first(window, lambda f: f["voice"].get("avatar_speaking") and f is not None)
        row: dict[str, Any] = {"text": text, "heard": None, "answer": None}
        if said is not None:
            row["heard"] = next(e["text"] for e in said["voice"]["events"] if e["type"] == "user_said")
        if answered is not None:
            row["answer"] = answered["context"]["said"][0]
        if None in (stopped, said, answered, voiced) or voiced["sound"] is None:
            rows.append(row | {"voice_to_voice_ms": None})
            continue
        loud = np.flatnonzero(np.abs(voiced["sound"]) > VOICE_LEVEL)
        first_sample_s = voiced["audio_pts_s"] + (loud[0] if len(loud) else 0) / OUT_RATE
        row |= {
            "hangover_ms": 1000 * (stopped["time_s"] - end),
            "recognition_ms": 1000 * (said["time_s"] - stopped["time_s"]),
            "responder_ms": 1000 * (answered["time_s"] - said["time_s"]),
            "first_audio_ms": 1000 * (first_sample_s - answered["time_s"]),
            "pipeline_ms": voiced["through_ms"],
        }
        row["voice_to_voice_ms"] = 1000 * (first_sample_s - end) + voiced["through_ms"]
        rows.append(row)
    measured = [r for r in rows if r["voice_to_voice_ms"] is not None]
    summary: dict[str, Any] = {"utterances": len(rows), "answered": len(measured)}
    for key in PARTS:
        values = [r[key] for r in measured]
        if values:
            summary[key] = {"median": round(statistics.median(values), 1), "p95": round(_p95(values), 1)}
    summary["recognize_side_job"] = report["side_work"].get("voice.recognize")
    summary["read_at_pause"] = voice.early
    summary["frame_latency_ms"] = report.get("latency_ms")
    summary["rows"] = rows
    return summary


def _has(annotation: dict[str, Any], kind: str) -> bool:
    return any(e["type"] == kind for e in annotation.get("events") or [])


def _first(frames: list[dict[str, Any]], test) -> dict[str, Any] | None:
    return next((f for f in frames if test(f)), None)


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


# ----------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=len(LOOP), help=f"default {len(LOOP)}")
    parser.add_argument("--skip-loop", action="store_true", help="skip voice-to-voice (it runs in real time)")
    parser.add_argument("--skip-wer", action="store_true", help="skip the word error rates")
    parser.add_argument("--hangovers", action="store_true", help="also sweep the VAD's hangover (splits, delay)")
    args = parser.parse_args()
    result: dict[str, Any] = {}
    if args.hangovers:
        result["hangovers"] = sweep = hangover_sweep()
        print("the VAD's hangover: utterances cut into more than one turn, and when the end is known")
        for row in sweep:
            known = row["end_known_ms"]
            print(
                f"  {row['hangover_s']:.2f} s: split {row['split']:>3}/{row['utterances']}"
                f"   end known {known['median']:>4} ms after the speech (p95 {known['p95']})"
            )
        print()
    result["voices"] = voices = voice_speed()
    print("voices: time to first audio of a short sentence, real-time factor")
    for name, row in voices.items():
        print(f"  {name:<7} first audio {row['first_audio_ms']:>7.1f} ms   rtf {row['rtf']:.4f}")
    if not args.skip_wer:
        result["wer"] = wer = word_error_rates()
        print(f"\nword error rate, Whisper tiny.en, {wer['sentences']} sentences × 2 voices")
        clips = wer["clips"]["clean"]
        print(f"  clean {wer['clean']:.1%} ({clips} clips)   noisy, {NOISE_SNR_DB:g} dB SNR {wer['noisy']:.1%}")
        for rate, condition, voice, what in wer["worst"]:
            print(f"  worst: {rate:.0%} {condition} {voice}: {what}")
    if not args.skip_loop:
        result["voice_to_voice"] = loop = voice_to_voice(args.utterances)
        answered = f"{loop['answered']}/{loop['utterances']} answered"
        print(f"\nvoice to voice, default graph paced as live, rules responder: {answered}")
        print(
            f"  {'utterance':<44} {'v2v ms':>7} {'hang':>6} {'recog':>6} {'resp':>5} {'audio':>6} {'pipe':>5}  answer"
        )
        for row in loop["rows"]:
            if row["voice_to_voice_ms"] is None:
                print(f"  {row['text'][:44]:<44} {'–':>7}  heard {row['heard']!r}, answer {row['answer']!r}")
                continue
            print(
                f"  {row['text'][:44]:<44} {row['voice_to_voice_ms']:>7.0f} {row['hangover_ms']:>6.0f}"
                f" {row['recognition_ms']:>6.0f} {row['responder_ms']:>5.0f} {row['first_audio_ms']:>6.0f}"
                f" {row['pipeline_ms']:>5.0f}  {row['heard']!r} → {row['answer']!r}"
            )
        for key in (
            "voice_to_voice_ms",
            "hangover_ms",
            "recognition_ms",
            "responder_ms",
            "first_audio_ms",
            "pipeline_ms",
        ):
            if key in loop:
                print(f"  {key:<18} median {loop[key]['median']:>7.1f}   p95 {loop[key]['p95']:>7.1f}")
        loop = {k: v for k, v in loop.items() if k != "rows"}
        result["voice_to_voice"] = loop
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
