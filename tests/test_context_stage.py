"""The session context: events once per change (no flapping), a rolling summary, and lines that reach the voice."""

from __future__ import annotations

import itertools
import json
from fractions import Fraction

import pytest
import torch
from conftest import wait_for

from pipeline.frames import Frame
from pipeline.side_work import SideWork
from pipeline.stage import StageContext
from pipeline.stages.context.stage import RULE_LINES, Context, ContextOptions, Rules, speech_kind, valence_arousal

CPU = torch.device("cpu")


class SpeechQueue:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def say(self, text: str) -> None:
        self.lines.append(text)


def make_stage(**options) -> tuple[Context, SpeechQueue]:
    """A context stage whose side work (the language model's requests) runs beside the frames, as on a live run."""
    speech = SpeechQueue()
    stage = Context("context", options=ContextOptions(**options))
    stage.setup(
        StageContext.standalone(
            stage, services={"speech": "voice"}, offered={("voice", "speech"): speech}, side_work=SideWork("beside")
        )
    )
    return stage, speech


def frame(index: int, *, label: str | None = None, speaking: bool = False, voice_events=(), avatar=False) -> Frame:
    f = Frame(index, index, Fraction(1, 30), 0)
    faces = []
    if label is not None:
        probs = {
            name: (0.9 if name == label else 0.1 / 6)
            for name in ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
        }
        faces = [{"track": 1, "box": [0, 0, 10, 10], "probs": probs, "label": label}]
    f.annotations["emotion"] = {"faces": faces}
    f.annotations["voice"] = {"user_speaking": speaking, "avatar_speaking": avatar, "events": list(voice_events)}
    return f


def run(stage: Context, frames: list[Frame]) -> list[dict]:
    return [stage.compute(f) for f in frames]


def events_of(records, kind=None):
    return [e for r in records for e in r["events"] if kind is None or e["type"] == kind]


def test_a_flickering_label_is_no_event_and_a_held_one_is_one_event():
    stage, _ = make_stage(emotion_hold_s=0.5)
    script = ["neutral"] * 30 + ["happy", "neutral"] * 15 + ["happy"] * 30 + ["happy"] * 30
    records = run(stage, [frame(i, label=label) for i, label in enumerate(script)])
    changes = events_of(records, "emotion_changed")
    assert [(e["from"], e["emotion"]) for e in changes] == [(None, "neutral"), ("neutral", "happy")]
    assert changes[1]["frame"] == 60 + 15  # held for 0.5 s (15 frames) after the flicker settled
    assert changes[1]["confidence"] == 0.9
    assert len(events_of(records, "face_found")) == 1


def test_face_lost_after_it_is_unseen_for_a_while():
    stage, _ = make_stage(lost_after_s=1.0)
    records = run(stage, [frame(i, label="neutral") for i in range(10)] + [frame(i) for i in range(10, 60)])
    lost = events_of(records, "face_lost")
    assert len(lost) == 1 and lost[0]["frame"] == 9 + 31  # first frame more than 1 s after the last sighting
    assert records[-1]["faces"] == 0


def test_long_silence_fires_once_and_speech_resets_it():
    stage, _ = make_stage(silence_s=2.0, respond=False)
    quiet = [frame(i) for i in range(150)]  # 5 s
    talk = [frame(150 + i, speaking=True) for i in range(30)]
    quiet_again = [frame(180 + i) for i in range(90)]
    records = run(stage, quiet + talk + quiet_again)
    silences = events_of(records, "long_silence")
    assert [e["frame"] for e in silences] == [60, 179 + 60]


def test_turns_and_speaking_ratio_over_the_window():
    stage, _ = make_stage(window_s=2.0)
    started = {"type": "user_started", "time_s": 0.5}
    script = [frame(i, speaking=15 <= i < 45, voice_events=[started] if i == 15 else []) for i in range(60)]
    records = run(stage, script)
    assert records[-1]["turns"] == 1
    assert records[-1]["speaking_ratio"] == pytest.approx(30 / 60, abs=0.02)
    assert [e["type"] for e in events_of(records, "user_started")] == ["user_started"]


def test_the_responder_s_lines_reach_the_speech_queue():
    stage, speech = make_stage(emotion_hold_s=0.0)
    records = run(stage, [frame(0, label="neutral"), frame(1, label="happy"), frame(2, label="sad")])
    assert speech.lines == [line for r in records for line in r["said"]]
    assert speech.lines[0] in RULE_LINES["face_found"]
    assert speech.lines[1] in RULE_LINES["happy"] and speech.lines[2] in RULE_LINES["sad"]


def test_rules_do_not_repeat_a_line_back_to_back():
    rules = Rules(seed=3)
    lines = [rules.respond({"type": "face_found"}) for _ in range(20)]
    assert all(a != b for a, b in itertools.pairwise(lines))
    assert rules.respond({"type": "face_lost"}) is None


def test_valence_and_arousal():
    assert valence_arousal({"happy": 1.0}) == (0.8, 0.5)
    v, a = valence_arousal({"happy": 0.5, "sad": 0.5})
    assert v == pytest.approx(0.05) and a == pytest.approx(0.05)


def test_the_sample_run_greets_the_face_and_the_avatar_says_it(tmp_path):
    from pipeline.cli import EXIT_OK, main

    analytics = tmp_path / "sample.jsonl"
    assert main(["--source", "sample", "--frames", "45", "--analytics", str(analytics)]) == EXIT_OK
    records = [json.loads(line) for line in analytics.read_text().splitlines()]
    greeted = [line for r in records for line in r["context"]["said"]]
    assert greeted and greeted[0] in RULE_LINES["face_found"]
    assert any(r["voice"]["text"] == greeted[0] for r in records)  # and the avatar speaks it


def fake_endpoint(reply: str, *, delay_s: float = 0.0, received: list | None = None):
    """A local OpenAI-compatible chat endpoint that answers every request with `reply`; each
    request's body is appended to `received`."""
    import time
    from http.server import BaseHTTPRequestHandler

    from conftest import serve_http

    class Chat(BaseHTTPRequestHandler):
        def do_POST(self):  # the name http.server calls
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert body["messages"][-1]["role"] == "user" and "event" in body["messages"][-1]["content"]
            if received is not None:
                received.append(body)
            time.sleep(delay_s)
            data = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server, base = serve_http(Chat)
    return server, f"{base}/v1/chat/completions"


def test_a_language_model_s_reply_reaches_the_speech_queue():
    server, url = fake_endpoint("Nice to meet you, friend.")
    try:
        stage, speech = make_stage(llm={"url": url, "model": "test"})
        run(stage, [frame(0, label="neutral")])  # face_found
        assert wait_for(lambda: speech.lines == ["Nice to meet you, friend."])
        assert stage.llm.replies == 1 and stage.llm.failures == 0
    finally:
        server.shutdown()


def test_an_unreachable_language_model_never_holds_frames_back():
    import socket
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here
    stage, speech = make_stage(llm={"url": f"http://127.0.0.1:{port}/v1/chat/completions", "timeout_s": 2.0})
    frames = [frame(i, label="neutral" if i < 100 else "happy") for i in range(300)]
    began = time.perf_counter()
    run(stage, frames)
    assert time.perf_counter() - began < 1.0  # 300 frames, no waiting on the endpoint
    assert wait_for(lambda: stage.llm.failures >= 1)
    # The rules stood in: at once for the events that came while the request was out, and for the
    # greeting the endpoint never gave, once it had failed.
    assert wait_for(lambda: any(line in RULE_LINES["face_found"] for line in speech.lines))
    assert any(line in RULE_LINES["happy"] for line in speech.lines)


def test_a_slow_language_model_is_asked_one_thing_at_a_time():
    server, url = fake_endpoint("Hello.", delay_s=0.5)
    try:
        stage, speech = make_stage(llm={"url": url}, emotion_hold_s=0.0)
        records = run(stage, [frame(0, label="neutral"), frame(1, label="happy"), frame(2, label="sad")])
        assert stage.llm.requests == 1  # the first event went to the model...
        assert [line for r in records for line in r["said"]][:2] == speech.lines[:2]  # ...the rest to the rules
        assert wait_for(lambda: "Hello." in speech.lines)
    finally:
        server.shutdown()


def said(text: str, start_s: float = 0.0) -> dict:
    return {"type": "user_said", "text": text, "start_s": start_s, "end_s": start_s + 1.0}


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Hello there!", "said_greeting"),
        ("Hi, good morning.", "said_greeting"),
        ("How are you doing today?", "said_how_are_you"),
        ("Hey, how's it going?", "said_how_are_you"),
        ("How is it going?", "said_how_are_you"),
        ("What's your name?", "said_name"),
        ("Who are you?", "said_name"),
        ("Thanks a lot.", "said_thanks"),
        ("Okay, goodbye!", "said_goodbye"),
        ("The weather is nice this week.", "said_other"),
        ("This is history.", "said_other"),  # "hi" only as a word
    ],
)
def test_the_rules_know_what_kind_of_thing_was_said(text, kind):
    assert speech_kind(text) == kind


def test_the_rules_answer_what_the_user_says_and_never_the_same_line_twice_running():
    stage, speech = make_stage()
    frames = [frame(i, voice_events=[said(text, i)]) for i, text in enumerate(["Hello!", "Hello again!", "Bye."])]
    records = run(stage, frames)
    assert [e["text"] for e in events_of(records, "user_said")] == ["Hello!", "Hello again!", "Bye."]
    first, second, third = speech.lines
    assert first in RULE_LINES["said_greeting"] and second in RULE_LINES["said_greeting"] and first != second
    assert third in RULE_LINES["said_goodbye"]
    assert [(line["who"], line["text"]) for line in stage.conversation()] == [
        ("user", "Hello!"),
        ("avatar", first),
        ("user", "Hello again!"),
        ("avatar", second),
        ("user", "Bye."),
        ("avatar", third),
    ]


def test_a_language_model_is_told_what_the_user_said_and_the_conversation_so_far():
    received: list[dict] = []
    server, url = fake_endpoint("Paris, of course.", received=received)
    try:
        stage, speech = make_stage(llm={"url": url, "model": "test"})
        run(stage, [frame(0, voice_events=[said("What is the capital of France?", 0.5)])])
        assert wait_for(lambda: speech.lines == ["Paris, of course."])
        run(stage, [frame(1, voice_events=[said("And of Spain?", 2.0)])])
        assert wait_for(lambda: len(received) == 2)
    finally:
        server.shutdown()
    prompt = json.loads(received[1]["messages"][-1]["content"])
    assert prompt["event"]["type"] == "user_said" and prompt["event"]["text"] == "And of Spain?"
    assert [(line["who"], line["text"]) for line in prompt["context"]["conversation"]] == [
        ("user", "What is the capital of France?"),
        ("avatar", "Paris, of course."),
        ("user", "And of Spain?"),
    ]
