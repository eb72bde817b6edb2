"""A session's own bookkeeping, on a real (unconnected) peer connection: what the page is told
and what waits for a data channel that may never open."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction

import pytest
import torch
from aiortc import RTCPeerConnection

from pipeline.config import load_config
from pipeline.frames import Frame
from pipeline.model_manager.manager import ModelManager
from pipeline.webrtc.session import MAX_PENDING_EVENTS, Session, parse_targets


def session() -> Session:
    cpu = torch.device("cpu")
    return Session(RTCPeerConnection(), load_config("default"), device=cpu, models=ModelManager.for_device(cpu))


def frame(index: int, events: list[dict] | None = None) -> Frame:
    frame = Frame(index, index, Fraction(1, 30), capture_ns=time.monotonic_ns())
    if events:
        frame.annotations["context"] = {"events": events}
    return frame


def test_events_for_a_channel_never_opened_are_capped_newest_kept_and_counted():
    async def scenario():
        s = session()
        try:
            for i in range(MAX_PENDING_EVENTS + 40):  # no analytics channel: nothing is ever sent
                s._frame_out(frame(i, [{"event": "tick", "n": i}]), 1.0)
            return s, list(s._pending_events)
        finally:
            await s.pc.close()

    s, pending = asyncio.run(scenario())
    assert len(pending) == MAX_PENDING_EVENTS
    assert pending[-1]["n"] == MAX_PENDING_EVENTS + 39 and pending[0]["n"] == 40  # the newest, in order
    assert s.events_dropped == 40 and s.status()["events_dropped"] == 40


def test_every_stages_events_reach_the_channel_once_each_marked_with_its_stage():
    async def scenario():
        s = session()
        try:
            sent = []
            s._send = lambda message: sent.append(message) or True
            f = frame(0)
            said = {"type": "user_said", "text": "hello", "start_s": 0.5, "end_s": 1.0}
            f.annotations["voice"] = {"user_speaking": False, "events": [said]}
            f.annotations["context"] = {"faces": 1, "events": [{**said, "origin": "voice"}, {"type": "face_found"}]}
            f.annotations["my_stage"] = {"events": [{"type": "door_opened"}]}  # a stage the session has never heard of
            f.annotations["odd"] = {"events": "door_opened"}  # not a list of records: no event, and left out
            s._frame_out(f, 1.0)
            return sent
        finally:
            await s.pc.close()

    (message,) = asyncio.run(scenario())
    assert sorted((e["stage"], e["type"]) for e in message["events"]) == [
        ("context", "face_found"),
        ("my_stage", "door_opened"),
        ("voice", "user_said"),
    ]
    assert message["voice"] == {"user_speaking": False} and message["context"] == {"faces": 1}
    assert message["my_stage"] == {} and message["odd"] == {}


def test_the_fps_the_page_sees_is_the_recent_rate_not_a_lifetime_average():
    async def scenario():
        s = session()
        s.started_s -= 60.0  # a session a minute old that delivers at about 20 fps only now
        try:
            times = []
            for i in range(30):
                s._frame_out(frame(i), 1.0)
                times.append(time.monotonic())
                await asyncio.sleep(1 / 20)
            before = time.monotonic()
            fps = s.status()["fps"]
            after = time.monotonic()
            return fps, times, before, after
        finally:
            await s.pc.close()

    fps, times, before, after = asyncio.run(scenario())
    # Frames delivered in the last second, however the machine's load spread them out.
    fewest = sum(t > after - 1.0 for t in times) - 1
    most = sum(t > before - 1.0 for t in times) + 1
    assert fewest >= 5  # the test saw a busy second, not a stall
    assert fewest <= fps <= most, (fps, fewest, most)


def test_targets_take_a_latency_and_or_an_fps_and_refuse_nonsense():
    assert parse_targets({"latency_ms": 80}) == {"latency_ms": 80.0}
    assert parse_targets({"fps": 15.5}) == {"fps": 15.5}
    assert parse_targets({"latency_ms": 80, "fps": 12, "other": 1}) == {"latency_ms": 80.0, "fps": 12.0}
    for bad in ({}, {"fps": 0}, {"fps": -3}, {"latency_ms": float("nan")}, {"fps": float("inf")}, {"fps": "30"}):
        with pytest.raises(ValueError):
            parse_targets(bad)


def test_targets_stay_within_what_a_live_session_can_hold():
    assert parse_targets({"fps": 1, "latency_ms": 10_000}) == {"fps": 1.0, "latency_ms": 10_000.0}
    for bad in ({"fps": 1e-320}, {"fps": 0.5}, {"fps": 1001}, {"latency_ms": 1}, {"latency_ms": 20_000}):
        with pytest.raises(ValueError, match="must be from"):
            parse_targets(bad)
    with pytest.raises(ValueError, match="must be from 1 to 1000") as refused:
        parse_targets({"fps": 10**400})
    assert len(str(refused.value)) < 120  # the number is named, not printed whole


def test_every_message_gets_one_reply_and_none_ends_the_session():
    async def scenario():
        s = session()
        replies = []
        s._send = lambda message: replies.append(message) or True
        try:
            s.pipeline = object()  # started, as far as the commands go
            for text in ("[" * 100_000, '{"type": "targets", "fps": ' + "9" * 400 + "}", '{"fps": 1e-320', "7"):
                before = len(replies)
                s._on_message(text)  # raises nothing
                assert len(replies) == before + 1 and replies[-1]["type"] == "error"
            return replies
        finally:
            await s.pc.close()

    replies = asyncio.run(scenario())
    assert all(len(reply["error"]) <= 300 for reply in replies)


def test_a_value_that_is_not_json_is_sent_as_missing_and_the_session_goes_on():
    import json

    import numpy as np

    async def scenario():
        s = session()
        try:
            sent = []

            class Channel:
                readyState = "open"

                def send(self, text):
                    sent.append(json.loads(text))  # what a page's JSON.parse must be able to read

            s.channel = Channel()
            for index in range(2):
                f = frame(index)
                f.annotations["mine"] = {"level": np.float32(0.5), "events": [{"type": "peak", "x": torch.ones(1)}]}
                f.annotations["voice"] = {"user_speaking": True, "events": [{"type": "user_started", "time_s": 0.1}]}
                s._last_sent_s = 0.0
                s._frame_out(f, 1.0)
            return sent, s.status()
        finally:
            await s.pc.close()

    sent, status = asyncio.run(scenario())
    assert len(sent) == 2
    assert sent[0]["mine"]["missing"] and "not JSON" in sent[0]["mine"]["reason"]
    assert sent[0]["voice"] == {"user_speaking": True}
    assert [e["type"] for e in sent[0]["events"]] == ["user_started"]  # the event that was not JSON is left out
    assert status["not_json"] == {"mine": 2}
