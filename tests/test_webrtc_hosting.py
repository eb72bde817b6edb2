"""The session host: one models' housekeeping round for as long as the host lives."""

from __future__ import annotations

import asyncio

import torch
from conftest import Clock
from torch import nn

from pipeline.config import load_config
from pipeline.device_profiles import MB
from pipeline.memory import DevicePool, ModelManager, ModelSpec
from pipeline.webrtc.hosting import SessionHost

PERIOD_S = 0.01  # between housekeeping rounds: short, so the test is quick
PATIENCE_S = 30.0  # the most the test waits for a round on a loaded machine


def test_idle_models_are_unloaded_between_sessions_and_the_round_ends_with_the_host():
    """No session runs: a model loaded as `POST /api/resource/load` does it is still unloaded once
    idle, by the host's own round; closing the host ends that round."""
    clock = Clock()
    device = DevicePool("gpu0", torch.device("cpu"), {"flexible": 4 * MB}, total=5 * MB)
    models = ModelManager([device], idle_unload_s=60, clock=clock)
    models.register(ModelSpec("fer", lambda: nn.Linear(512, 512, bias=False)))

    def load(name: str) -> None:  # what POST /api/resource/load does
        with models.use(name):
            pass

    async def scenario() -> tuple[str, str, int]:
        host = SessionHost(
            load_config("default"), device=torch.device("cpu"), capacity=1, models=models, housekeeping_s=PERIOD_S
        )
        host.start()
        await asyncio.to_thread(load, "fer")
        before = models.entries["fer"].level
        clock.now += 61  # idle past its timeout, with no session running
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PATIENCE_S
        while models.entries["fer"].level != "disk" and loop.time() < deadline:
            await asyncio.sleep(PERIOD_S)
        after = models.entries["fer"].level
        await host.close()
        return before, after, len(models._watchers)

    before, after, watchers = asyncio.run(scenario())
    assert before == "device" and after == "disk"
    assert watchers == 0  # the round ended with the host
