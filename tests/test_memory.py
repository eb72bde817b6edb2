"""The model manager on CPU, with real torch modules of known sizes on simulated device budgets.

A "model" here is a bias-free `nn.Linear(512, 512·mb)`: mb MiB of float32 weights, filled with
one value per model, so a result shows which model made it. Its loader sleeps in proportion to
its size, as reading a weights file does, so measured reload costs are ordered like sizes.
"""

from __future__ import annotations

import asyncio
import json
import random

import pytest
import torch
from torch import nn

from pipeline.device_profiles import MB, detect_profile, load_profile, pick_profile, profile_names
from pipeline.errors import ConfigError
from pipeline.memory import DevicePool, ModelManager, ModelMemoryError, ModelSpec, module_bytes

SIDE_1MB = 512  # 512 × 512 float32 = 1 MiB


def linear(mb: float, value: float) -> nn.Module:
    layer = nn.Linear(SIDE_1MB, int(SIDE_1MB * mb), bias=False)
    nn.init.constant_(layer.weight, value)
    return layer.eval()


def spec(name: str, mb: float, value: float = 1.0, **options) -> ModelSpec:
    def load() -> nn.Module:
        import time

        time.sleep(0.002 * mb)  # reading the weights file
        return linear(mb, value)

    return ModelSpec(name, load, **options)


def pool(key: str = "gpu0", *, flexible: float = 4, critical: float = 0, high: float = 0, speed: float = 1.0, **kw):
    zones = {"flexible": int(flexible * MB)}
    if critical:
        zones["critical"] = int(critical * MB)
    if high:
        zones["high"] = int(high * MB)
    total = int(kw.pop("total_mb", (flexible + critical + high) / 0.9) * MB)
    return DevicePool(key, torch.device("cpu"), zones, total=total, speed=speed, **kw)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_module_bytes_counts_weights_at_their_precision():
    from models.precision import with_precision

    layer = linear(1, 0.5)
    assert module_bytes(layer) == MB
    assert module_bytes(with_precision(layer, "fp16")) == MB // 2
    assert module_bytes(with_precision(nn.Sequential(layer), "int8")) < MB // 3


def test_a_full_zone_evicts_the_lowest_valued_model_and_never_a_critical_one():
    manager = ModelManager([pool(flexible=4, critical=2)])
    manager.register(spec("face", 2, priority="critical", zone="critical"))
    manager.register(spec("often", 1))
    manager.register(spec("rare", 1, priority="low"))
    manager.register(spec("big", 2))
    manager.register(spec("new", 2))
    for name in ("face", "often", "rare", "big"):
        with manager.use(name):
            pass
    for _ in range(5):
        with manager.use("often"):
            pass
    with manager.use("new"):  # flexible is full (1 + 1 + 2 MB): 2 MB must go
        pass
    levels = {e.name: e.level for e in manager.entries.values()}
    assert levels["face"] == "device" and levels["often"] == "device" and levels["new"] == "device"
    assert levels["rare"] == "disk" and levels["big"] == "disk"  # least valued: low priority, once; big, once
    assert manager.pools[0].used == {"critical": 2 * MB, "flexible": 3 * MB}


def test_critical_models_are_never_evicted_so_the_next_one_falls_back_to_the_cpu():
    manager = ModelManager([pool(flexible=1, critical=2)])
    manager.register(spec("a", 2, priority="critical", zone="critical"))
    manager.register(spec("b", 2, priority="critical", zone="critical"))
    manager.acquire("a")
    manager.release("a")
    model = manager.acquire("b")
    assert manager.entries["a"].level == "device"
    assert manager.entries["b"].level == "cpu" and manager.device_of("b") == torch.device("cpu")
    assert manager.entries["b"].fallbacks == 1 and manager.status()["totals"]["fallbacks"] == 1
    assert manager.status()["host"]["cpu_fallback_mb"] == 2.0
    assert torch.equal(model(torch.ones(1, SIDE_1MB)), torch.full((1, 2 * SIDE_1MB), float(SIDE_1MB)))


def test_a_model_that_may_not_run_on_the_cpu_fails_with_its_size_and_what_is_free():
    manager = ModelManager([pool(flexible=1)])
    manager.register(spec("huge", 2, cpu_fallback=False))
    with pytest.raises(ModelMemoryError, match=r"'huge' needs 2\.0 MB \(2097152 bytes\).*gpu0/flexible: 1\.0 MB free"):
        manager.acquire("huge")
    cpu_only = ModelManager([DevicePool("cpu", torch.device("cpu"), {"flexible": MB}, total=2 * MB, host=True)])
    cpu_only.register(spec("too_big", 2))
    with pytest.raises(ModelMemoryError, match="too_big"):  # the CPU itself is the budget: nowhere to fall back
        cpu_only.acquire("too_big")


def test_a_model_used_by_a_frame_in_flight_is_never_evicted_under_it():
    manager = ModelManager([pool(flexible=2)])
    for name in ("busy", "other", "next"):
        manager.register(spec(name, 1, priority="low"))
    busy = manager.acquire("busy")  # pinned: a frame is using it
    with manager.use("other"):
        pass
    with manager.use("next"):
        pass
    assert manager.entries["busy"].level == "device" and manager.entries["other"].level == "disk"
    manager.register(spec("blocked", 2))
    with manager.use("blocked"):  # only the pinned model could make room: it runs on the CPU instead
        pass
    assert manager.entries["blocked"].level == "cpu" and manager.entries["busy"].level == "device"
    assert busy.weight.device.type == "cpu"
    manager.release("busy")
    with pytest.raises(RuntimeError, match="released more often"):
        manager.release("busy")


def test_many_tasks_at_once_on_a_tight_budget_get_the_right_models_and_never_overfill():
    manager = ModelManager([pool(flexible=3)])
    rng = random.Random(7)
    for index in range(6):
        manager.register(spec(f"m{index}", 1, value=float(index + 1), priority=rng.choice(["low", "medium"])))
    # At most two frames in the models at once: a third slot is always there to evict from, so
    # every miss is an eviction and none a CPU fallback (with all three slots pinned, a model
    # would fall back to the CPU and stay there, and a loaded machine could end with no eviction).
    in_flight = asyncio.Semaphore(2)

    def one_request(name: str) -> tuple[str, float]:
        with manager.use(name) as model, torch.no_grad():
            out = model(torch.ones(1, model.in_features))
            return name, float(out[0, 0])

    async def request(name: str) -> tuple[str, float]:
        async with in_flight:
            return await asyncio.to_thread(one_request, name)

    async def main():
        names = [f"m{rng.randrange(6)}" for _ in range(120)]
        return await asyncio.gather(*(request(name) for name in names))

    for name, result in asyncio.run(main()):
        index = int(name[1:])
        assert result == pytest.approx(SIDE_1MB * (index + 1))  # each request ran the model it asked for
    device = manager.pools[0]
    assert device.peak <= device.zones["flexible"]  # never more placed than the zone holds
    assert all(e.pins == 0 for e in manager.entries.values())
    totals = manager.status()["totals"]
    assert totals["evictions"] > 0 and totals["fallbacks"] == 0


def test_idle_models_are_unloaded_after_the_timeout_unless_in_use():
    clock = Clock()
    manager = ModelManager([pool()], idle_unload_s=900, clock=clock)
    manager.register(spec("idle", 1))
    manager.register(spec("busy", 1))
    with manager.use("idle"):
        pass
    manager.acquire("busy")
    clock.now += 899
    assert manager.unload_idle() == []
    clock.now += 2
    assert manager.unload_idle() == ["idle"]
    assert manager.entries["idle"].level == "disk" and manager.entries["busy"].level == "device"
    off = ModelManager([pool()], idle_unload_s=0, clock=clock)
    off.register(spec("kept", 1))
    with off.use("kept"):
        pass
    clock.now += 10_000
    assert off.unload_idle() == []


def test_the_model_that_usually_comes_next_is_preloaded_only_when_there_is_room():
    manager = ModelManager([pool(flexible=2)])
    manager.register(spec("detector", 1))
    manager.register(spec("classifier", 1))
    for _ in range(3):
        for name in ("detector", "classifier"):
            with manager.use(name):
                pass
    manager.unload("classifier")
    with manager.use("detector"):
        pass
    assert manager.predicted_next("detector") == "classifier"
    assert manager.preload_predicted() == "classifier"
    assert manager.entries["classifier"].level == "device"
    # No room without evicting: nothing is preloaded.
    manager.register(spec("filler", 1))
    manager.unload("classifier")
    with manager.use("filler"):
        pass
    with manager.use("detector"):
        pass
    assert manager.preload_predicted() is None and manager.entries["classifier"].level == "disk"
    off = ModelManager([pool(flexible=2)], preload=False)
    off.register(spec("a", 1))
    off.register(spec("b", 1))
    for name in ("a", "b", "a"):
        with off.use(name):
            pass
    off.unload("b")
    assert off.preload_predicted() is None


def test_an_evicted_model_waits_in_host_memory_and_comes_back_from_there():
    manager = ModelManager([pool(flexible=1)], host_budget=1 * MB)
    manager.register(spec("a", 1))
    manager.register(spec("b", 1))
    manager.register(spec("c", 1))
    for name in ("a", "b"):
        with manager.use(name):
            pass
    a = manager.entries["a"]
    assert a.level == "host" and manager.host_used == MB
    with manager.use("a"):  # restored from host memory, not rebuilt from its file
        pass
    assert a.loads == 1 and a.restores == 1 and a.restore_s is not None
    with manager.use("c"):  # a goes down to host memory; b, waiting there longest, down to disk
        pass
    assert manager.entries["b"].level == "disk" and a.level == "host"
    host = manager.status()["host"]
    assert host["used_mb"] == 1.0 and host["peak_mb"] == 1.0  # never more than its 1 MB budget waiting


def test_past_the_critical_threshold_low_priority_models_go_largest_first():
    device = pool(flexible=8, total_mb=10)  # warning at 7.5 MB, critical at 8.5 MB
    manager = ModelManager([device])
    manager.register(spec("small_low", 1, priority="low"))
    manager.register(spec("big_low", 3, priority="low"))
    manager.register(spec("mid_low", 2, priority="low"))
    manager.register(spec("important", 2, priority="high"))
    for name in ("small_low", "big_low", "mid_low", "important"):
        with manager.use(name):
            pass
    assert device.level() == "warning"  # 8 of 10 MB
    assert manager.relieve() == []
    device.reserved = 1 * MB  # the frame buffers grew: 9 of 10 MB
    assert device.level() == "critical"
    assert manager.relieve() == ["big_low"]  # the largest low-priority model, and that is enough
    assert device.level() == "ok"
    assert manager.entries["important"].level == "device"


def test_two_devices_models_go_where_there_is_room_and_the_slower_is_relieved_first():
    fast, slow = pool("gpu0", flexible=4, speed=2.0, total_mb=5), pool("gpu1", flexible=4, speed=1.0, total_mb=5)
    manager = ModelManager([fast, slow])
    for name in ("a", "b", "c"):
        manager.register(spec(name, 2, priority="low"))
    for name in ("a", "b", "c"):
        with manager.use(name):
            pass
    placed = {name: manager.device_of(name) and manager.entries[name].pool.key for name in ("a", "b", "c")}
    assert placed == {"a": "gpu0", "b": "gpu0", "c": "gpu1"}  # free room × speed
    fast.reserved = slow.reserved = int(2.5 * MB)  # both past critical
    relieved = manager.relieve()
    assert relieved[0] == "c"  # the slower device first
    manager.acquire("a", on=torch.device("cpu"))
    assert manager.copies == 0  # same device as the data
    manager.release("a")
    with manager.use("a", on=torch.device("cuda", 1)):  # the frame lives on another device
        pass
    assert manager.copies == 1  # the input crosses over: counted as a copy


def test_precision_follows_the_rung_and_the_accounted_size_with_it():
    manager = ModelManager([pool(flexible=2)])
    manager.register(spec("m", 1))
    with manager.use("m"):
        pass
    manager.set_precision("m", "fp16")
    assert manager.entries["m"].nbytes == MB // 2 and manager.pools[0].used["flexible"] == MB // 2
    with manager.use("m") as model:
        assert model.weight.dtype == torch.float16
    manager.set_precision("m", "fp32")  # back up: rebuilt from its weights file
    with manager.use("m") as model:
        assert model.weight.dtype == torch.float32
    assert manager.entries["m"].nbytes == MB and manager.entries["m"].loads == 2


def test_status_names_every_model_with_its_place_and_counters():
    manager = ModelManager([pool()])
    manager.register(spec("m", 1, priority="high"))
    with manager.use("m"):
        pass
    status = manager.status()
    (model,) = status["models"]
    assert model["name"] == "m" and model["level"] == "device" and model["device"] == "cpu"
    assert model["zone"] == "flexible" and model["size_mb"] == 1.0 and model["priority"] == "high"
    assert model["misses"] == 1 and model["loads"] == 1
    assert status["devices"][0]["used_mb"] == {"flexible": 1.0}
    with pytest.raises(KeyError, match="not registered"):
        manager.acquire("nope")


# ------------------------------------------------------------------ device profiles


def test_every_shipped_profile_loads_and_its_zones_fit_its_memory():
    names = profile_names()
    assert {"cpu", "rtx3060-laptop-6gb", "rtx4090-24gb", "h100-80gb"} <= set(names)
    for name in names:
        profile = load_profile(name)
        assert sum(profile.zones.values()) + profile.reserved_mb <= profile.memory_mb


def test_profiles_are_picked_by_gpu_name_then_by_memory():
    profiles = [load_profile(name) for name in profile_names()]
    assert pick_profile("NVIDIA GeForce RTX 3060 Laptop GPU", 6144, profiles).name == "rtx3060-laptop-6gb"
    assert pick_profile("NVIDIA H100 80GB HBM3", 81559, profiles).name == "h100-80gb"
    assert pick_profile("NVIDIA RTX 6000 Ada Generation", 49140, profiles).name == "rtx4090-24gb"  # fits in 48 GB
    assert pick_profile("Tiny GPU", 2048, profiles) is None
    assert detect_profile(torch.device("cpu")).name == "cpu"


def test_a_bad_profile_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such profile"):
        load_profile("rtx9999")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nkind: cuda\nmemory_mb: 1000\nzones: {flexible: 2000}\n")
    with pytest.raises(ConfigError, match="exceed memory"):
        load_profile(bad)


def test_a_precision_change_asked_for_while_in_use_waits_for_the_frame_to_finish():
    manager = ModelManager([pool(flexible=2)])
    manager.register(spec("m", 1))
    model = manager.acquire("m")
    manager.set_precision("m", "fp16")
    assert model.weight.dtype == torch.float32 and manager.entries["m"].precision == "fp32"  # not under the frame
    manager.release("m")
    assert manager.entries["m"].precision == "fp16"
    with manager.use("m") as model:
        assert model.weight.dtype == torch.float16


def test_models_go_to_the_zone_named_like_their_priority():
    manager = ModelManager([pool(flexible=2, critical=2, high=2)])
    manager.register(spec("c", 1, priority="critical"))
    manager.register(spec("h", 1, priority="high"))
    manager.register(spec("m", 1))
    for name in "chm":
        with manager.use(name):
            pass
    assert {e.name: e.zone for e in manager.entries.values()} == {"c": "critical", "h": "high", "m": "flexible"}


# ------------------------------------------------------------------ in a real run


def run_sample(profile, frames: int = 20, analytics=None) -> dict:
    from pipeline.config import load_config
    from pipeline.job import JobOptions, run_job

    options = JobOptions(
        config=load_config("default"),
        device=torch.device("cpu"),
        frames=frames,
        device_profile=profile,
        analytics=analytics,
    )
    result = asyncio.run(run_job("sample", "null", options))
    assert result.status == "ok", result.reason
    return result.report


def test_the_6gb_profile_runs_the_full_graph_without_passing_its_budget():
    profile = load_profile("rtx3060-laptop-6gb")
    report = run_sample(profile)
    models = report["models"]
    (device,) = models["devices"]
    assert report["device_profile"] == "rtx3060-laptop-6gb" and "simulated" in device["key"]
    assert device["peak_mb"] <= profile.memory_mb  # at no moment more than the card has
    for zone, used in device["used_mb"].items():
        assert used <= device["zones_mb"][zone]
    assert {m["name"] for m in models["models"]} == {"mtcnn(min_face=20)", "fer"}
    assert all(m["level"] == "device" and m["zone"] == "high" for m in models["models"])
    assert models["totals"]["fallbacks"] == 0 and models["totals"]["evictions"] == 0
    requests = {m["name"]: m["hits"] + m["misses"] for m in models["models"]}
    assert requests["mtcnn(min_face=20)"] == 20  # taken for every frame
    assert requests["fer"] >= 20  # every frame, and again by the classifier's batcher for each call


def test_a_card_too_small_for_the_detector_runs_it_on_the_cpu_and_still_finds_the_face(tmp_path):
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("name: tiny\nkind: cuda\nmemory_mb: 4\nreserved_mb: 1\nzones: {high: 1, flexible: 1}\n")
    report = run_sample(load_profile(tiny), frames=6, analytics=tmp_path / "faces.jsonl")
    models = {m["name"]: m for m in report["models"]["models"]}
    assert models["mtcnn(min_face=20)"]["level"] == "cpu" and models["mtcnn(min_face=20)"]["fallbacks"] == 1
    assert models["fer"]["level"] == "device"  # 0.2 MB: it fits
    assert report["models"]["devices"][0]["peak_mb"] <= 4
    assert report["stages"]["emotion"]["errors"] == 0
    records = [json.loads(line) for line in (tmp_path / "faces.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(len(r["emotion"]["faces"]) == 1 for r in records)


def test_every_gpu_of_a_machine_gets_a_pool_weighted_by_its_speed(monkeypatch):
    """Two cards, faked at the torch.cuda calls the manager makes (no GPU here): pools for both,
    the run's device first, speeds from their multiprocessor counts."""
    from types import SimpleNamespace

    cards = {0: ("NVIDIA GeForce RTX 4090", 24564, 128), 1: ("NVIDIA GeForce RTX 3060 Laptop GPU", 6144, 30)}

    def properties(device):
        name, mb, sms = cards[torch.device(device).index]
        return SimpleNamespace(name=name, total_memory=mb * MB, multi_processor_count=sms)

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    manager = ModelManager.for_device(torch.device("cuda", 0))
    assert [p.key for p in manager.pools] == ["cuda:0", "cuda:1"]
    assert [round(p.speed, 3) for p in manager.pools] == [1.0, round(30 / 128, 3)]
    assert manager.pools[1].zones == load_profile("rtx3060-laptop-6gb").zone_bytes()


def test_runs_sharing_a_manager_share_one_housekeeping_round():
    manager = ModelManager([pool()])
    rounds = []
    manager.housekeeping = lambda: rounds.append(1)  # count the rounds only

    async def scenario():
        watchers = [asyncio.create_task(manager.watch(0.05)) for _ in range(5)]
        await asyncio.sleep(0.32)
        first = len(rounds)
        watchers[0].cancel()  # the leading run ends: another takes over
        await asyncio.sleep(0.3)
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        return first, len(rounds)

    first, total = asyncio.run(scenario())
    assert 1 <= first <= 8  # about one round per period (6 here), not one per run (30)
    assert total > first  # the round went on after the first run ended
    assert manager._watchers == []
