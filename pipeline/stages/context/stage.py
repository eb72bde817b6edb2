"""The session context: who is there, how they feel, who is talking — over a rolling window — and what to say.

Each frame the stage folds the emotion and voice annotations into a window of `window_s`
seconds: faces present, each face's dominant emotion over the window with its valence and
arousal (from the class probabilities, on the usual circumplex), the user's speaking ratio
and turns, the avatar's speaking state. It turns changes into events, each once:

- `face_found` / `face_lost` (a face unseen for `lost_after_s`),
- `emotion_changed` (a face's label held for `emotion_hold_s`, so a passing flicker is no event),
- `user_started` / `user_stopped` / `user_said` (relayed from the voice stage, marked
  `"origin": <that stage's name>`, so a reader of every stage's events counts each once),
- `long_silence` (nobody has spoken for `silence_s`; once per silence).

It also keeps the conversation: the user's utterances and the avatar's lines, with their times,
the last `conversation_lines` of them.

A responder turns events into lines for the avatar: the built-in rules greet a new face, react
to a smile or a frown, answer what the user says (a greeting, "how are you", "what is your
name", thanks, goodbye, else a short acknowledgement) and fill a long silence, with short lines
that do not repeat back to back; or, with `llm: {url, model, api, timeout_s}`, a chat endpoint
writes them as a side job (`responder.py`), its prompt carrying the conversation. The lines
go to the voice stage's speech queue (the `speech` service, `StageContext.service`).

Annotation: `faces`, `tracks` ({id: {emotion, confidence, valence, arousal}}), `speaking_ratio`,
`turns`, `avatar_speaking`, `events` (each with `type`, `time_s`, `frame`, and its details) and
`said` (the rules' lines sent to the voice this frame; a language model's go when they arrive).
"""

from __future__ import annotations

import random
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field
from typing_extensions import TypedDict

from pipeline.annotation import Annotation, Event
from pipeline.frames import Frame
from pipeline.stage import ComputeStage, StageContext, StageOptions
from pipeline.stages.context.responder import LLMOptions, LLMResponder

# (valence, arousal) of each expression, −1..1 (Russell's circumplex, as commonly placed).
CIRCUMPLEX = {
    "happy": (0.8, 0.5),
    "surprise": (0.3, 0.8),
    "fear": (-0.6, 0.7),
    "angry": (-0.7, 0.7),
    "disgust": (-0.7, 0.3),
    "sad": (-0.7, -0.4),
    "neutral": (0.0, 0.0),
}
RULE_LINES = {
    "face_found": ("Hello there!", "Hi! Nice to see you.", "Oh, hello!", "Welcome!"),
    "happy": ("You look happy!", "What a lovely smile.", "That smile suits you."),
    "sad": ("Is everything all right?", "You seem a little down.", "I'm here if you want to talk."),
    "angry": ("Something bothering you?", "Let's take a breath together.", "You look frustrated."),
    "surprise": ("Oh! Surprised?", "That caught you off guard!", "Wow, what happened?"),
    "fear": ("It's all right.", "Nothing to worry about.", "You look worried."),
    "long_silence": ("So, what's on your mind?", "Tell me about your day.", "It's quiet here. Shall we chat?"),
    # What the user said (`user_said`), by `speech_kind`.
    "said_goodbye": ("Goodbye! It was nice talking to you.", "See you soon!", "Bye for now, take care."),
    "said_thanks": ("You're welcome!", "Any time.", "Happy to help."),
    "said_name": ("I'm your avatar. I don't have a name yet.", "You can call me Avatar.", "I'm just Avatar."),
    "said_how_are_you": ("I'm doing well, thank you! How about you?", "Great, thanks for asking!", "All good here."),
    "said_greeting": ("Hello! Good to hear you.", "Hi there!", "Hey! How can I help?"),
    "said_other": ("I see.", "Mm-hm, go on.", "Interesting, tell me more.", "Got it.", "Okay."),
}
# What the user said, checked in this order: the first that matches picks the answer.
SPEECH_KINDS = (
    ("said_goodbye", re.compile(r"\b(good ?bye|bye|see you|farewell)\b")),
    ("said_thanks", re.compile(r"\b(thanks|thank you|cheers)\b")),
    ("said_name", re.compile(r"\b(what'?s|what is|tell me) your name\b|\bwho are you\b")),
    ("said_how_are_you", re.compile(r"\bhow are (you|things)\b|\bhow('?s| is) it going\b|\bhow do you do\b")),
    ("said_greeting", re.compile(r"\b(hello|hi|hey|good (morning|afternoon|evening)|greetings)\b")),
)
CONVERSATION_LINES = 12
AHEAD = ("face_found", *(key for key in RULE_LINES if key.startswith("said_")))  # answers made ahead


def valence_arousal(probs: dict[str, float]) -> tuple[float, float]:
    total = sum(probs.values()) or 1.0
    valence = sum(CIRCUMPLEX.get(k, (0, 0))[0] * p for k, p in probs.items()) / total
    arousal = sum(CIRCUMPLEX.get(k, (0, 0))[1] * p for k, p in probs.items()) / total
    return valence, arousal


def speech_kind(text: str) -> str:
    """Which of the rules' answers fits what the user said (`RULE_LINES` key)."""
    lowered = text.lower().replace("’", "'")
    return next((kind for kind, pattern in SPEECH_KINDS if pattern.search(lowered)), "said_other")


class Rules:
    """The built-in responder: a short line for greetings, smiles and frowns, what the user says,
    and long silences."""

    def __init__(self, seed: int = 0):
        self._random = random.Random(seed)
        self._last: dict[str, str] = {}

    def respond(self, event: dict[str, Any]) -> str | None:
        kind = event["type"]
        if kind == "emotion_changed":
            key = event.get("emotion")
        elif kind == "user_said":
            key = speech_kind(event.get("text") or "")
        else:
            key = kind
        lines = RULE_LINES.get(key or "")
        if not lines:
            return None
        choices = [line for line in lines if line != self._last.get(key)] or list(lines)
        line = self._random.choice(choices)
        self._last[key] = line
        return line


@dataclass
class _Track:
    first_s: float
    last_seen_s: float
    label: str | None = None  # the reported (held) emotion
    candidate: str | None = None  # a new label waiting to be held long enough
    candidate_since_s: float = 0.0
    history: deque = field(default_factory=deque)  # (time_s, probs) within the window


class ContextOptions(StageOptions):
    window_s: float = Field(10.0, gt=0.0, le=600.0)
    lost_after_s: float = Field(1.0, ge=0.0, le=60.0)
    emotion_hold_s: float = Field(0.5, ge=0.0, le=60.0)
    silence_s: float = Field(8.0, gt=0.0, le=3600.0)
    respond: bool = True  # send the responder's lines to the voice stage
    seed: int = 0
    llm: LLMOptions | None = None  # a chat endpoint to write the lines instead of the rules
    conversation_lines: int = Field(CONVERSATION_LINES, ge=0, le=200)  # the user's and the avatar's, kept


class TrackSummary(TypedDict):
    emotion: str | None  # dominant over the window
    confidence: float
    valence: float
    arousal: float


class ContextAnnotation(Annotation):
    faces: int
    tracks: dict[str, TrackSummary]
    speaking_ratio: float
    turns: int
    avatar_speaking: bool
    events: list[Event]
    said: list[str]


class Context(ComputeStage):
    """Annotation: the rolling session context and this frame's events."""

    type_name = "context"
    Annotation = ContextAnnotation
    Options = ContextOptions
    inputs = ("emotion", "voice")
    uses = ("speech",)  # the voice stage's queue of lines to say

    def setup(self, ctx: StageContext) -> None:
        super().setup(ctx)
        self._tracks: dict[int, _Track] = {}
        self._speaking: deque[tuple[float, bool]] = deque()  # (time_s, user speaking) per frame in the window
        self._turns: deque[float] = deque()  # start times of turns in the window
        self._last_voice_s = 0.0  # last time anyone (user or avatar) was heard
        self._silence_reported = False
        self._responder = Rules(self.options.seed)
        self.events_total = 0
        self.lines_sent = 0
        self._voice_stage = ctx.inputs.get("voice", "voice")
        self.llm: LLMResponder | None = None
        if self.options.llm is not None:
            self.llm = LLMResponder(
                self.options.llm, deliver=self._send, fallback=self._answer_by_rules, side_job=ctx.side_job
            )
        self._summary_now: dict[str, Any] = {}
        # The conversation: {"who": "user"|"avatar", "text", "time_s"}; a language model's replies
        # are added from its thread.
        self._conversation: deque[dict[str, Any]] = deque(maxlen=self.options.conversation_lines)
        self._conversation_lock = threading.Lock()
        self._now_s = 0.0  # the latest frame's time, for the lines sent between frames
        speech = ctx.service("speech")
        if self.options.respond and self.llm is None and speech is not None and hasattr(speech, "prepare_ahead"):
            # The rules answer from a fixed set of lines: the voice makes the greetings and the
            # answers to what the user says ahead (on live runs, as side work that gives way to the
            # frames), so an answer starts as soon as it is chosen.
            speech.prepare_ahead([line for key in AHEAD for line in RULE_LINES[key]])

    def counters(self) -> dict[str, Any]:
        return {"events": self.events_total, "lines_sent": self.lines_sent}

    def _send(self, line: str) -> None:
        speech = self.ctx.service("speech") if self.ctx is not None else None
        if speech is not None:
            speech.say(line)
            self.lines_sent += 1
            self._remember("avatar", line, self._now_s)

    def _remember(self, who: str, text: str, time_s: float) -> None:
        with self._conversation_lock:
            self._conversation.append({"who": who, "text": text, "time_s": round(time_s, 3)})

    def conversation(self) -> list[dict[str, Any]]:
        """The conversation kept, oldest first."""
        with self._conversation_lock:
            return list(self._conversation)

    def _answer_by_rules(self, event: dict[str, Any]) -> None:
        line = self._responder.respond(event)
        if line is not None:
            self._send(line)

    def compute(self, frame: Frame) -> dict[str, Any]:
        now = self._now_s = frame.time_s
        emotion = self.input_annotation(frame, "emotion") or {}
        voice = self.input_annotation(frame, "voice") or {}
        events: list[dict[str, Any]] = []
        self._faces(now, emotion.get("faces") or [], events)
        self._voices(now, voice, events)
        for event in events:
            event.setdefault("time_s", round(now, 3))
            event["frame"] = frame.index
        self.events_total += len(events)
        window = self.options.window_s
        while self._speaking and self._speaking[0][0] < now - window:
            self._speaking.popleft()
        while self._turns and self._turns[0] < now - window:
            self._turns.popleft()
        ratio = sum(1 for _, speaking in self._speaking if speaking) / max(1, len(self._speaking))
        summary = {
            "faces": sum(1 for t in self._tracks.values() if now - t.last_seen_s <= self.options.lost_after_s),
            "tracks": {str(track_id): self._summary(track) for track_id, track in self._tracks.items()},
            "speaking_ratio": round(ratio, 3),
            "turns": len(self._turns),
            "avatar_speaking": bool(voice.get("avatar_speaking")),
        }
        said = self._respond(events, summary) if self.options.respond else []
        return {**summary, "events": events, "said": said}

    def _faces(self, now: float, faces: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
        options = self.options
        for face in faces:
            track_id = face["track"]
            track = self._tracks.get(track_id)
            if track is None:
                track = self._tracks[track_id] = _Track(first_s=now, last_seen_s=now)
                events.append({"type": "face_found", "track": track_id})
            track.last_seen_s = now
            if face.get("probs"):
                track.history.append((now, face["probs"]))
            while track.history and track.history[0][0] < now - options.window_s:
                track.history.popleft()
            label = face.get("label")
            if label is None or label == track.label:
                track.candidate = None
                continue
            if label != track.candidate:
                track.candidate, track.candidate_since_s = label, now
            if now - track.candidate_since_s >= options.emotion_hold_s:
                confidence = float((face.get("probs") or {}).get(label, 0.0))
                events.append(
                    {"type": "emotion_changed", "track": track_id, "emotion": label, "from": track.label,
                     "confidence": round(confidence, 3)}
                )  # fmt: skip
                track.label, track.candidate = label, None
        for track_id in [t for t, track in self._tracks.items() if now - track.last_seen_s > options.lost_after_s]:
            del self._tracks[track_id]
            events.append({"type": "face_lost", "track": track_id})

    def _voices(self, now: float, voice: dict[str, Any], events: list[dict[str, Any]]) -> None:
        speaking = bool(voice.get("user_speaking"))
        self._speaking.append((now, speaking))
        for event in voice.get("events") or []:
            if event["type"] in ("user_started", "user_stopped", "user_said"):
                events.append({**event, "origin": self._voice_stage})  # a relay: the data channel sends it once
                if event["type"] == "user_started":
                    self._turns.append(event["time_s"])
                elif event["type"] == "user_said":
                    self._remember("user", event["text"], event["start_s"])
        if speaking or voice.get("avatar_speaking"):
            self._last_voice_s = now
            self._silence_reported = False
        elif not self._silence_reported and now - self._last_voice_s >= self.options.silence_s:
            self._silence_reported = True
            events.append({"type": "long_silence", "silent_s": round(now - self._last_voice_s, 2)})

    def _respond(self, events: list[dict[str, Any]], summary: dict[str, Any]) -> list[str]:
        """Lines for this frame's events: the rules' now, or the language model's whenever it answers."""
        said = []
        for event in events:
            if event["type"] in ("face_lost", "user_stopped", "user_started"):
                continue  # nothing to say about these
            told = {k: v for k, v in event.items() if k != "origin"}  # the prompt as before relays were marked
            if self.llm is not None and self.llm.respond(told, {**summary, "conversation": self.conversation()}):
                continue  # its reply goes to the voice when it comes
            line = self._responder.respond(event)
            if line is not None:
                said.append(line)
                self._send(line)
        return said

    @staticmethod
    def _summary(track: _Track) -> dict[str, Any]:
        if not track.history:
            return {"emotion": track.label, "confidence": 0.0, "valence": 0.0, "arousal": 0.0}
        mean: dict[str, float] = {}
        for _, probs in track.history:
            for label, p in probs.items():
                mean[label] = mean.get(label, 0.0) + p / len(track.history)
        dominant = max(mean, key=mean.get)
        valence, arousal = valence_arousal(mean)
        return {
            "emotion": dominant,
            "confidence": round(mean[dominant], 3),
            "valence": round(valence, 3),
            "arousal": round(arousal, 3),
        }
