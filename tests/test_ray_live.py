"""Live sessions over a real local Ray cluster: two worker actors, one session each."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import psutil
import pytest
import torch
from webrtc_kit import Client

ray = pytest.importorskip("ray", reason="the dev extra installs ray")

from pipeline.cluster import live  # noqa: E402
from pipeline.cluster.live import RayPlacer, placement_order  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.webrtc.server import Server  # noqa: E402

pytest.importorskip("skimage", reason="the test face comes from scikit-image")


def test_a_session_goes_to_the_worker_with_the_most_free_room_not_the_first_with_any():
    statuses = [{"free": 1}, {"free": 0}, {"free": 3}, {"free": 2}]
    assert placement_order(statuses) == [2, 3, 0]  # first-fit would take worker 0; a full one is never asked
    assert placement_order([{"free": 0}, {"free": 0}]) == []


def sample(text: str, name: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def test_sessions_go_to_workers_with_room_a_third_is_refused_and_a_dead_worker_takes_only_its_own(monkeypatch):
    # A worker that stops answering is written off after this long (5 s in service).
    monkeypatch.setattr(live, "STATUS_TIMEOUT_S", 3.0)

    async def scenario():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        config = load_config("passthrough")
        placer = RayPlacer(config, workers=2, capacity=1, ice_addresses=["127.0.0.1"])
        server = Server(config, device=torch.device("cpu"), port=0, placer=placer)
        await server.start()
        deadline = time.monotonic() + 60
        while len(await placer.refresh()) < 2:  # the workers are up (torch and the graph loaded)
            assert time.monotonic() < deadline, "the workers never started"
            await asyncio.sleep(0.5)
        clients = [Client(audio=False) for _ in range(3)]
        seen = {}
        try:
            async with aiohttp.ClientSession() as http:

                async def get(path: str):
                    async with http.get(f"{server.url}{path}") as reply:
                        return reply.status, (await reply.json() if path.startswith("/api") else await reply.text())

                async def post(path: str, body: dict):
                    async with http.post(f"{server.url}{path}", json=body) as reply:
                        return reply.status, await reply.json()

                for client in clients[:2]:
                    assert await client.connect(server.url) is None
                for client in clients[:2]:
                    await client.wait_for(lambda c=client: len(c.frames) >= 10, what="video", timeout_s=60)
                refused = await clients[2].connect(server.url)
                workers = await placer.refresh()
                busy = [w for w in workers if w["sessions"]]
                seen["status"] = (await get("/api/performance/status"))[1]
                seen["metrics"] = (await get("/metrics"))[1]
                seen["targets"] = await post("/api/performance/targets", {"latency_ms": 80, "fps": 24})
                seen["unload"] = await post("/api/resource/unload", {"model": "fer"})
                seen["resource"] = await get("/api/resource/status")
                # Kill the worker serving the first client; the front notices on its own, with no offer.
                first_worker = placer.workers[0]
                ray.kill(first_worker)
                await asyncio.sleep(1.0)
                counts = [len(c.frames) for c in clients[:2]]
                await asyncio.sleep(2.0)
                after = [len(c.frames) - n for c, n in zip(clients[:2], counts, strict=True)]
                seen["lost_unasked"] = placer.lost
                seen["metrics_after"] = (await get("/metrics"))[1]
                left = await placer.refresh()
                # The other worker hangs (stopped): it is written off, and killed, not left running.
                stuck = left[0]["pid"]
                os.kill(stuck, signal.SIGSTOP)
                gone = await placer.refresh()
                deadline = time.monotonic() + 10
                while psutil.pid_exists(stuck) and psutil.Process(stuck).status() != psutil.STATUS_ZOMBIE:
                    assert time.monotonic() < deadline, "the stuck worker was left running"
                    await asyncio.sleep(0.1)
                return refused.status, busy, after, left, gone, placer.lost, seen
        finally:
            for client in clients:
                await client.close()
            await server.stop()
            ray.shutdown()

    refused, busy, after, left, gone, lost, seen = asyncio.run(scenario())
    assert refused == 503
    assert len(busy) == 2 and all(w["capacity"] == 1 and w["free"] == 0 for w in busy)  # one session each
    streaming = sorted(after)
    assert streaming[0] == 0, "the dead worker's session still got frames"
    assert streaming[1] >= 20, "the other worker's session stopped too"
    assert len(left) == 1 and gone == [] and lost == 2
    # The front's status and metrics are the workers' sessions, not its own empty host's.
    status = seen["status"]
    assert len(status["sessions"]) == 2 and {s["worker"] for s in status["sessions"]} == {0, 1}
    assert status["sessions_total"] == 2 and status["frames_out"] >= 20
    assert sample(seen["metrics"], "pipeline_sessions") == 2.0
    assert sample(seen["metrics"], "pipeline_sessions_started_total") == 2.0
    before = sample(seen["metrics"], "pipeline_frames_out_total")
    assert before >= 20
    assert seen["lost_unasked"] == 1, "the dead worker was not noticed until the next offer"
    assert sample(seen["metrics_after"], "pipeline_sessions") == 1.0
    assert sample(seen["metrics_after"], "pipeline_frames_out_total") >= before  # the dead worker's frames count
    # Acting on models or targets goes to the workers, or says plainly that it cannot.
    assert seen["targets"] == (200, {"latency_ms": 80.0, "fps": 24.0, "sessions": 2})
    assert seen["unload"][0] == 501 and "--ray" in seen["unload"][1]["error"]
    assert seen["resource"][0] == 200 and len(seen["resource"][1]["workers"]) == 2
