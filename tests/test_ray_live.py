"""Live sessions over a real local Ray cluster: two worker actors, one session each."""

from __future__ import annotations

import asyncio

import pytest
import torch
from webrtc_kit import Client

ray = pytest.importorskip("ray", reason="the dev extra installs ray")

from pipeline.cluster.live import RayPlacer  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.webrtc.server import Server  # noqa: E402

pytest.importorskip("skimage", reason="the test face comes from scikit-image")


def test_sessions_go_to_workers_with_room_a_third_is_refused_and_a_dead_worker_takes_only_its_own():
    async def scenario():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        config = load_config("passthrough")
        placer = RayPlacer(config, workers=2, capacity=1, ice_addresses=["127.0.0.1"])
        server = Server(config, device=torch.device("cpu"), port=0, placer=placer)
        await server.start()
        clients = [Client(audio=False) for _ in range(3)]
        try:
            for client in clients[:2]:
                assert await client.connect(server.url) is None
            for client in clients[:2]:
                await client.wait_for(lambda c=client: len(c.frames) >= 10, what="video from a worker", timeout_s=60)
            refused = await clients[2].connect(server.url)
            workers = await placer.refresh()
            busy = [w for w in workers if w["sessions"]]
            # Kill the worker serving the first client.
            first_worker = placer.workers[0]
            ray.kill(first_worker)
            await asyncio.sleep(1.0)
            counts = [len(c.frames) for c in clients[:2]]
            await asyncio.sleep(2.0)
            after = [len(c.frames) - n for c, n in zip(clients[:2], counts, strict=True)]
            left = await placer.refresh()
            return refused.status, busy, after, left, placer.lost
        finally:
            for client in clients:
                await client.close()
            await server.stop()
            ray.shutdown()

    refused, busy, after, left, lost = asyncio.run(scenario())
    assert refused == 503
    assert len(busy) == 2 and all(w["capacity"] == 1 and w["free"] == 0 for w in busy)  # one session each
    streaming = sorted(after)
    assert streaming[0] == 0, "the dead worker's session still got frames"
    assert streaming[1] >= 20, "the other worker's session stopped too"
    assert len(left) == 1 and lost == 1
