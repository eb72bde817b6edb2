"""The session host: one models' housekeeping round for as long as the host lives."""

from __future__ import annotations

import asyncio

import torch
from conftest import Clock
from torch import nn

from pipeline.config import load_config
from pipeline.device_profiles import MB
from pipeline.model_manager.accounting import DevicePool, ModelSpec
from pipeline.model_manager.manager import ModelManager
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


def test_each_stage_type_warms_up_once_before_the_first_session_and_a_failure_is_only_logged(monkeypatch, caplog):
    """The host asks every stage type in its graph, once per type, to warm what its sessions share;
    one that fails is logged (its sessions' setup will report it) and the others still warm up."""
    from pipeline.stages.avatar import Avatar
    from pipeline.stages.voice.stage import Voice

    warmed: list[str] = []

    def failing(cls, device):
        raise RuntimeError("weights missing")

    monkeypatch.setattr(Voice, "warm_up", classmethod(lambda cls, device: warmed.append(f"voice on {device}")))
    monkeypatch.setattr(Avatar, "warm_up", classmethod(failing))
    config = load_config("default")
    host = SessionHost(config, device=torch.device("cpu"), capacity=1)
    host.warm_up()
    assert warmed == ["voice on cpu"]  # one voice stage in the graph, warmed once
    assert "warming up avatar failed: weights missing" in caplog.text


def test_the_voice_stage_warms_its_model_once_per_process():
    """(Each stream then gets a copy with its own state: tests/test_voice_vad.py.)"""
    from pipeline.stages.voice import vad
    from pipeline.stages.voice.stage import Voice

    Voice.warm_up(torch.device("cpu"))
    warmed = vad.warm_up("cpu")
    assert vad.warm_up(torch.device("cpu")) is warmed
