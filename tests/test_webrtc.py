"""The WebRTC server against a real aiortc client on 127.0.0.1: media both ways, analytics, commands.

The server and the client run in the test's event loop; ICE is limited to loopback.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np
import pytest
import torch
from webrtc_kit import Client

from pipeline.config import load_config
from pipeline.webrtc.server import MAX_BODY, Server

pytest.importorskip("skimage", reason="the test face comes from scikit-image")


async def started_server(**options) -> Server:
    options.setdefault("device", torch.device("cpu"))
    server = Server(load_config("default"), port=0, **options)
    await server.start()
    return server


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples**2))) if len(samples) else 0.0


def test_a_session_sends_back_processed_video_analytics_and_the_avatars_voice():
    async def scenario():
        server = await started_server()
        client = Client()
        try:
            assert await client.connect(server.url) is None
            # Processed frames come back, at about the rate sent.
            await client.wait_for(lambda: len(client.frames) >= 10, what="processed video")
            first_t = client.frames[-1][0]
            count = len(client.frames)
            await asyncio.sleep(3.0)
            fps = (len(client.frames) - count) / (client.frames[-1][0] - first_t)
            # The face's emotion arrives on the data channel.
            message = await client.wait_for(
                lambda: next((m for m in client.messages if (m.get("emotion") or {}).get("faces")), None),
                what="a face in the analytics",
            )
            face = message["emotion"]["faces"][0]
            # The avatar speaks on command, once the user has stopped (or the user would interrupt it).
            await client.wait_for(
                lambda: client.speech.speech_ends_s + 1.0 < asyncio.get_running_loop().time() - started_at,
                what="the end of the user's sentence",
            )
            said_at = asyncio.get_running_loop().time()
            client.send({"type": "say", "text": "Nice to meet you, this is the avatar speaking."})
            ack = await client.wait_for(
                lambda: next((m for m in client.messages if m.get("type") == "ack"), None), what="the ack"
            )
            speaking = await client.wait_for(
                lambda: next(
                    (
                        m
                        for m in client.messages
                        if (m.get("voice") or {}).get("text", "") and "avatar" in m["voice"]["text"]
                    ),
                    None,
                ),
                what="the avatar speaking in the analytics",
            )
            await asyncio.sleep(1.5)
            voice = np.concatenate([s for t, s in client.sound if t > said_at + 0.3] or [np.zeros(1)])
            status = server.performance()
            return server, client, fps, face, ack, speaking, voice, status
        finally:
            await client.close()
            await client.wait_for(lambda: not server.sessions, what="the session to end", timeout_s=15)
            await server.stop()

    started_at = 0.0

    async def timed():
        nonlocal started_at
        started_at = asyncio.get_running_loop().time()
        return await scenario()

    server, client, fps, face, ack, speaking, voice, status = asyncio.run(timed())
    assert fps >= 15, fps  # sent at 30 fps; on a 2-core box the full graph and both VP8 ends share the cores
    frame = client.frames[-1][1]
    assert (frame.width, frame.height) == (320, 240)
    assert face["label"] == "happy" and face["probs"]["happy"] > 0.5
    assert ack["command"] == "say"
    assert speaking["voice"]["avatar_speaking"] is True
    assert rms(voice) > 0.01, "the returned audio should carry the avatar's voice"
    assert len(status["sessions"]) == 1 and status["sessions"][0]["frames_out"] > 30
    assert status["sessions"][0]["audio_cut_samples"] == 0  # the peer kept reading: no sound was cut
    assert status["sessions"][0]["video_replaced"] >= 0
    assert not server.sessions  # disconnect freed it


def test_disconnect_frees_the_session_its_ring_and_its_tasks():
    async def scenario():
        server = await started_server()
        client = Client(audio=False)
        await client.connect(server.url)
        await client.wait_for(lambda: len(client.frames) >= 5, what="processed video")
        (session,) = server.sessions
        pipeline = session.pipeline
        await client.close()
        await client.wait_for(lambda: not server.sessions, what="the session to end", timeout_s=15)
        await asyncio.sleep(0.2)
        leftover = [t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await server.stop()
        return session, pipeline, leftover

    session, pipeline, leftover = asyncio.run(scenario())
    assert pipeline.ring.in_use == 0
    assert session.sink.video.readyState == "ended" and session.sink.audio.readyState == "ended"
    assert not [name for name in leftover if name.startswith(("session-", "source", "scheduler", "sampler"))]
    assert session.report is not None and session.report["leaked_slots"] == 0


def test_bad_requests_get_a_4xx_with_a_reason_and_the_server_keeps_serving():
    async def scenario():
        server = await started_server(token="secret", max_sessions=1)
        url = server.url
        replies = {}
        async with aiohttp.ClientSession() as http:

            async def post(name, **kwargs):
                async with http.post(f"{url}/offer", **kwargs) as reply:
                    replies[name] = (reply.status, (await reply.json()).get("error", ""))

            auth = {"Authorization": "Bearer secret"}
            await post("no token", json={"sdp": "v=0", "type": "offer"})
            await post("wrong token", json={"sdp": "v=0", "type": "offer"}, headers={"Authorization": "Bearer nope"})
            await post("text", data="hello", headers={**auth, "Content-Type": "text/plain"})
            await post("not json", data="{oops", headers={**auth, "Content-Type": "application/json"})
            await post("not an offer", json={"sdp": "v=0", "type": "answer"}, headers=auth)
            await post("bad sdp", json={"sdp": "v=0\r\nm=garbage\r\n", "type": "offer"}, headers=auth)
            big = json.dumps({"sdp": "m=" + "x" * MAX_BODY, "type": "offer"})
            await post("too big", data=big, headers={**auth, "Content-Type": "application/json"})
            async with http.get(f"{url}/api/resource/status") as reply:
                resource = await reply.json()
            async with http.get(f"{url}/") as reply:
                page = await reply.text()
        first, second = Client(audio=False), Client(audio=False)
        await first.connect(url, token="secret")
        refused = await second.connect(url, token="secret")
        replies["over the limit"] = (refused.status, "")
        await first.close()
        await second.close()
        await first.wait_for(lambda: not server.sessions, what="the session to end", timeout_s=15)
        await server.stop()
        return replies, resource, page

    replies, resource, page = asyncio.run(scenario())
    assert replies["no token"][0] == 401 and "token" in replies["no token"][1]
    assert replies["wrong token"][0] == 401
    assert replies["text"][0] == 415 and "application/json" in replies["text"][1]
    assert replies["not json"][0] == 400
    assert replies["not an offer"][0] == 400
    assert replies["bad sdp"][0] == 400 and "offer" in replies["bad sdp"][1]
    assert replies["too big"][0] == 413
    assert replies["over the limit"][0] == 503
    assert "models" in resource and "devices" in resource
    assert "<video" in page and "/static/app.js" in page


def test_commands_that_make_no_sense_are_refused_on_the_channel():
    async def scenario():
        server = await started_server()
        client = Client(audio=False)
        try:
            await client.connect(server.url)
            await client.wait_for(lambda: len(client.messages) >= 2, what="analytics")
            client.send({"type": "layout", "layout": "side"})
            client.send({"type": "layout", "layout": "upside-down"})
            client.send({"type": "dance"})
            client.send({"type": "targets", "latency_ms": 80})
            await client.wait_for(
                lambda: sum(m.get("type") in ("ack", "error") for m in client.messages) >= 4, what="four answers"
            )
            (session,) = server.sessions
            avatar = session.pipeline.stages_of("avatar")[0]
            budget = session.pipeline.scheduler.budget_ms
            return [m for m in client.messages if m.get("type") in ("ack", "error")], avatar.options.layout, budget
        finally:
            await client.close()
            await client.wait_for(lambda: not server.sessions, what="the session to end", timeout_s=15)
            await server.stop()

    answers, layout, budget = asyncio.run(scenario())
    assert [a["type"] for a in answers] == ["ack", "error", "error", "ack"]
    assert "unknown command" in answers[2]["error"]
    assert layout == "side" and budget == 80.0


def metric_names(text: str) -> set[str]:
    """Every metric the exposition declares (`# TYPE` lines, so also those with no samples yet)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            for suffix in ("_bucket", "_sum", "_count", "_created"):
                name = name.removesuffix(suffix)
            names.add(name)
    return names


def test_metrics_count_frames_and_latency_and_the_models_and_survive_the_session():
    async def scenario():
        server = await started_server()
        client = Client(audio=False)
        async with aiohttp.ClientSession() as http:

            async def scrape() -> str:
                async with http.get(f"{server.url}/metrics") as reply:
                    assert reply.headers["Content-Type"].startswith("text/plain")
                    return await reply.text()

            async def post(path: str, body: dict) -> tuple[int, dict]:
                async with http.post(f"{server.url}{path}", json=body) as reply:
                    return reply.status, await reply.json()

            empty = await scrape()
            await client.connect(server.url)
            await client.wait_for(lambda: len(client.frames) >= 20, what="processed video")
            during = await scrape()
            unknown = await post("/api/resource/unload", {"model": "nope"})
            unloaded = await post("/api/resource/unload", {"model": "fer"})
            loaded = await post("/api/resource/load", {"model": "fer"})
            await client.close()
            await client.wait_for(lambda: not server.sessions, what="the session to end", timeout_s=15)
            after = await scrape()
        await server.stop()
        return empty, during, after, unknown, unloaded, loaded

    empty, during, after, unknown, unloaded, loaded = asyncio.run(scenario())
    assert "pipeline_sessions 0.0" in empty
    assert "pipeline_sessions 1.0" in during
    assert 'pipeline_stage_latency_seconds_count{stage="emotion"}' in during
    assert 'pipeline_model_requests_total{model="fer",result="hit"}' in during
    out_during = float(
        next(line.split()[-1] for line in during.splitlines() if line.startswith("pipeline_frames_out_total"))
    )
    out_after = float(
        next(line.split()[-1] for line in after.splitlines() if line.startswith("pipeline_frames_out_total"))
    )
    assert out_during >= 20 and out_after >= out_during  # the ended session's frames still count
    e2e = [
        line for line in after.splitlines() if line.startswith('pipeline_end_to_end_latency_seconds_bucket{le="+Inf"}')
    ]
    assert e2e and float(e2e[0].split()[-1]) == out_after
    assert unknown[0] == 404 and "registered" in unknown[1]["error"]
    assert unloaded[0] in (200, 409)  # 409 when a frame was using it at that moment
    assert loaded == (200, {"model": "fer", "device": "cpu"})


def test_the_grafana_dashboard_uses_only_metrics_the_server_exports():
    import re
    from pathlib import Path

    from pipeline.webrtc.prometheus import exposition

    server = Server(load_config("default"), device=torch.device("cpu"), port=0)
    exported = metric_names(exposition(server).decode())
    dashboard = json.loads(
        (Path(__file__).resolve().parent.parent / "configs/grafana/pipeline-dashboard.json").read_text()
    )
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"\bpipeline_[a-z_]+", target["expr"]):
                for suffix in ("_bucket", "_sum", "_count"):
                    name = name.removesuffix(suffix)
                used.add(name)
    assert used and used <= exported, used - exported


def test_rung_changes_are_counted_by_direction_and_cause_and_survive_the_session():
    from pipeline.metrics import RunMetrics
    from pipeline.webrtc.prometheus import exposition

    server = Server(load_config("default"), device=torch.device("cpu"), port=0)
    before = exposition(server).decode()
    assert 'pipeline_rung_changes_total{direction="down",reason="latency"} 0.0' in before  # a series from the start
    ended = RunMetrics()
    for direction, reason in (("down", "latency"), ("down", "latency"), ("down", "gpu"), ("up", "margin")):
        ended.rung_changed(direction, reason)
    server.retired.add(ended)
    after = exposition(server).decode()
    assert 'pipeline_rung_changes_total{direction="down",reason="latency"} 2.0' in after
    assert 'pipeline_rung_changes_total{direction="down",reason="gpu"} 1.0' in after
    assert 'pipeline_rung_changes_total{direction="up",reason="margin"} 1.0' in after


def test_an_offer_with_video_only_gets_video_back_and_a_valid_answer():
    """A client that offers no audio section: the answer must not add one (browsers reject it)."""

    async def scenario():
        server = await started_server()
        client = Client(audio=None)
        try:
            assert await client.connect(server.url) is None
            await client.wait_for(lambda: len(client.frames) >= 5, what="processed video")
            return client.pc.remoteDescription.sdp.count("\nm="), len(client.frames)
        finally:
            await client.close()
            await client.wait_for(lambda: not server.sessions, what="the session to end", timeout_s=15)
            await server.stop()

    sections, frames = asyncio.run(scenario())
    assert sections == 2  # video and the data channel, as offered
    assert frames >= 5


def test_two_sessions_share_the_models_and_their_face_crops_share_classifier_calls():
    async def scenario():
        server = await started_server()
        clients = [Client(audio=False), Client(audio=False)]
        try:
            for client in clients:
                assert await client.connect(server.url) is None
            for client in clients:
                await client.wait_for(lambda c=client: len(c.frames) >= 30, what="processed video", timeout_s=30)
            users_while = server.models.status()["batchers"]["fer"]["users"]
        finally:
            for client in clients:
                await client.close()
            await clients[0].wait_for(lambda: not server.sessions, what="the sessions to end", timeout_s=15)
            await server.stop()
        return users_while, server.models.status()

    users_while, status = asyncio.run(scenario())
    assert users_while == 2

    models = {m["name"]: m for m in status["models"]}
    assert models["fer"]["loads"] == 1 and models["mtcnn(min_face=20)"]["loads"] == 1  # loaded once, shared
    batched = status["batchers"]["fer"]
    assert batched["users"] == 0  # both sessions left it when they ended
    assert batched["calls"] < batched["requests"]  # some calls carried both sessions' faces


def test_a_peer_that_goes_silent_is_let_go():
    """The connection stays up but the camera stops: after `silence_s` the session ends by itself."""

    async def scenario():
        server = await started_server(silence_s=1.0)
        client = Client(audio=False)
        try:
            await client.connect(server.url)
            await client.wait_for(lambda: len(client.frames) >= 5, what="processed video")
            (session,) = server.sessions
            client.face.stop()  # the camera goes away; the peer connection does not
            await client.wait_for(lambda: not server.sessions, what="the silent session to end", timeout_s=15)
            return session
        finally:
            await client.close()
            await server.stop()

    session = asyncio.run(scenario())
    assert session.closed.is_set() and session.pipeline.ring.in_use == 0
    assert session.report is not None and session.report["frames"]["out"] >= 5
