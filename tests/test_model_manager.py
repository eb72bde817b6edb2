"""The model manager on CPU, with real torch modules of known sizes on simulated device budgets.

A "model" here is a bias-free `nn.Linear(512, 512·mb)`: mb MiB of float32 weights, filled with
one value per model, so a result shows which model made it. Its loader sleeps in proportion to
its size, as reading a weights file does, so measured reload costs are ordered like sizes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import threading

import pytest
import torch
from conftest import Clock
from torch import nn

from pipeline.device_profiles import MB, detect_profile, load_profile, pick_profile, profile_names
from pipeline.errors import ConfigError
from pipeline.model_manager.accounting import DevicePool, ModelSpec, module_bytes
from pipeline.model_manager.manager import ModelManager, ModelMemoryError

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


def test_module_bytes_counts_weights_at_their_precision():
    from models.precision import with_precision

    layer = linear(1, 0.5)
    assert module_bytes(layer) == MB
    assert module_bytes(with_precision(layer, "fp16")) == MB // 2
    assert module_bytes(with_precision(nn.Sequential(layer), "int8")) < MB // 3


def costly(name: str, mb: float, timer: Clock, cost_s: float, **options) -> ModelSpec:
    """A model whose load takes exactly `cost_s` on the manager's timer: fixed reload costs."""

    def load() -> nn.Module:
        timer.now += cost_s
        return linear(mb, 1.0)

    return ModelSpec(name, load, **options)


def test_the_eviction_score_keeps_a_costly_often_used_model_that_lru_drops():
    """Same requests, opposite victims: LRU drops the model used longest ago; the score drops the
    cheap, low-priority model used once, and keeps the often-used one that is costly to reload."""
    kept = {}
    for policy in ("score", "lru"):
        clock, timer = Clock(), Clock()
        manager = ModelManager([pool(flexible=2)], policy=policy, clock=clock, timer=timer, preload=False)
        manager.register(costly("costly", 1, timer, cost_s=2.0))
        manager.register(costly("cheap", 1, timer, cost_s=0.01, priority="low"))
        manager.register(costly("new", 1, timer, cost_s=0.01))
        for _ in range(5):
            with manager.use("costly"):
                clock.now += 1
        clock.now += 600  # costly: last used ten minutes ago
        with manager.use("cheap"):
            pass
        with manager.use("new"):  # the zone holds two: one must go
            pass
        kept[policy] = sorted(e.name for e in manager.entries.values() if e.level == "device")
        assert manager.entries["costly"].load_s == 2.0 and manager.status()["totals"]["evictions"] == 1
    assert kept["score"] == ["costly", "new"]
    assert kept["lru"] == ["cheap", "new"]


def test_critical_models_are_never_evicted_and_high_ones_only_under_pressure():
    """A high model gives way to nothing below critical while its device is under its warning
    threshold, to a critical model only when nothing else frees room, and to anything past it."""
    device = pool(flexible=2, total_mb=100)  # 2 MB of 100: far under the warning threshold
    manager = ModelManager([device], preload=False)
    for name, priority in (("h1", "high"), ("m", "medium"), ("h2", "high"), ("h3", "high")):
        manager.register(spec(name, 1, priority=priority, zone="flexible"))
    for name in ("h1", "m", "h2"):  # h2 takes the medium model's place
        with manager.use(name):
            pass
    assert manager.entries["m"].level == "disk" and device.level() == "ok"
    with manager.use("h3"):  # only high models there, no pressure: it runs on the CPU instead
        pass
    assert [manager.entries[n].level for n in ("h1", "h2", "h3")] == ["device", "device", "cpu"]
    for name in ("c1", "c2", "c3"):
        manager.register(spec(name, 1, priority="critical", zone="flexible"))
    with manager.use("c1"):  # nothing but high models can make room for a critical one: one goes
        pass
    assert manager.entries["c1"].level == "device"
    assert sum(manager.entries[n].level == "device" for n in ("h1", "h2")) == 1
    with manager.use("c2"):  # the other high one goes too
        pass
    with manager.use("c3"):  # only critical models left: they stay, and c3 runs on the CPU
        pass
    assert [manager.entries[n].level for n in ("c1", "c2", "c3")] == ["device", "device", "cpu"]

    tight = pool(flexible=2, total_mb=2.5)  # both placed: 80 %, past the 75 % warning threshold
    pressed = ModelManager([tight], preload=False)
    for name, priority in (("h1", "high"), ("h2", "high"), ("m", "medium")):
        pressed.register(spec(name, 1, priority=priority, zone="flexible"))
    for name in ("h1", "h2", "m"):
        with pressed.use(name):
            pass
    assert tight.level() == "warning" and pressed.entries["m"].level == "device"  # under pressure, a high one went
    assert sum(pressed.entries[n].level == "device" for n in ("h1", "h2")) == 1


def test_idle_unloading_never_unloads_a_critical_model():
    clock = Clock()
    manager = ModelManager([pool(flexible=2, critical=2)], idle_unload_s=900, clock=clock)
    manager.register(spec("face", 1, priority="critical"))
    manager.register(spec("extra", 1, priority="low"))
    for name in ("face", "extra"):
        with manager.use(name):
            pass
    clock.now += 10_000
    assert manager.unload_idle() == ["extra"]
    assert manager.entries["face"].level == "device"


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
    exact = r"'huge' needs 2\.0 MB \(2097152 bytes\).*gpu0/flexible: 1\.0 MB \(1048576 bytes\) free"
    with pytest.raises(ModelMemoryError, match=exact):
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
    manager = ModelManager([pool(flexible=4)])
    rng = random.Random(7)
    manager.register(spec("m0", 1, value=1.0, priority="low"))
    for index in range(1, 7):
        manager.register(spec(f"m{index}", 1, value=float(index + 1), priority=rng.choice(["low", "medium"])))
    # An evicted model's memory goes to the next one: here its weights are zeroed as it is
    # evicted, so a frame still computing with a model evicted under it gets zeros, not the
    # model's value; and every victim's pins are recorded at the moment it goes.
    victims: list[tuple[str, int]] = []
    evict = manager._evict

    def evict_and_reuse_its_memory(entry, *, reason):
        victims.append((entry.name, entry.pins))
        module = entry.module
        evict(entry, reason=reason)
        with torch.no_grad():
            module.weight.zero_()

    manager._evict = evict_and_reuse_its_memory
    # A long frame holds m0 through the whole burst: soon the least valued and least recently
    # used model, it is the first to go if a pin did not protect it. At most two more frames in
    # the models at once: a fourth slot is always there to evict from, so every miss is an
    # eviction and none a CPU fallback.
    held = manager.acquire("m0")
    in_flight = asyncio.Semaphore(2)

    def one_request(name: str) -> tuple[str, float, float]:
        with manager.use(name) as model, torch.no_grad():
            first = model(torch.ones(1, model.in_features))
            second = model(torch.ones(1, model.in_features))  # still pinned: still the same weights
            return name, float(first[0, 0]), float(second[0, 0])

    async def request(name: str) -> tuple[str, float, float]:
        async with in_flight:
            return await asyncio.to_thread(one_request, name)

    async def main():
        names = [f"m{rng.randrange(1, 7)}" for _ in range(120)]
        return await asyncio.gather(*(request(name) for name in names))

    results = asyncio.run(main())
    with torch.no_grad():
        assert float(held(torch.ones(1, SIDE_1MB))[0, 0]) == SIDE_1MB  # m0's weights, untouched under the frame
    manager.release("m0")
    for name, first, second in results:
        expected = SIDE_1MB * (int(name[1:]) + 1)
        assert (first, second) == (pytest.approx(expected), pytest.approx(expected))  # the model it asked for
    assert victims and all(pins == 0 for _, pins in victims), victims  # never one a frame was using
    device = manager.pools[0]
    assert device.peak <= device.zones["flexible"]  # never more placed than the zone holds
    assert all(e.pins == 0 for e in manager.entries.values())
    totals = manager.status()["totals"]
    assert totals["evictions"] == len(victims) and totals["fallbacks"] == 0


def test_status_and_other_models_answer_while_a_slow_model_loads():
    """Building a model runs outside the manager's lock: the status (read on the event loop by
    the server) and requests for other models do not wait for it."""
    started, finish = threading.Event(), threading.Event()

    def slow_load() -> nn.Module:
        started.set()
        assert finish.wait(30)
        return linear(1, 3.0)

    manager = ModelManager([pool(flexible=4)])
    manager.register(ModelSpec("slow", slow_load))
    manager.register(spec("quick", 1))
    slow_result: list[float] = []

    def slow_request() -> None:
        with manager.use("slow") as model, torch.no_grad():
            slow_result.append(float(model(torch.ones(1, SIDE_1MB))[0, 0]))

    loading = threading.Thread(target=slow_request)
    loading.start()
    assert started.wait(30)
    seen: dict[str, object] = {}

    def meanwhile() -> None:
        seen["status"] = manager.status()
        with manager.use("quick") as model:
            seen["quick"] = model.weight.device.type

    other = threading.Thread(target=meanwhile)
    other.start()
    other.join(timeout=30)
    answered_during_the_load = not other.is_alive()
    finish.set()
    loading.join()
    other.join()
    assert answered_during_the_load
    levels = {m["name"]: m["level"] for m in seen["status"]["models"]}
    assert levels == {"slow": "loading", "quick": "disk"} and seen["quick"] == "cpu"
    assert slow_result == [3.0 * SIDE_1MB] and manager.entries["slow"].level == "device"


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


def test_two_devices_models_go_where_there_is_room_and_the_slower_gives_up_room_first():
    fast, slow = pool("gpu0", flexible=4, speed=2.0, total_mb=5), pool("gpu1", flexible=2, speed=1.0, total_mb=3)
    clock, timer = Clock(), Clock()
    manager = ModelManager([fast, slow], clock=clock, timer=timer, preload=False)
    names = ("a", "b", "c", "d", "e", "f")
    for name in names:  # all alike: the same size, priority, reload cost and uses
        manager.register(costly(name, 1, timer, cost_s=0.5, priority="low"))
    for name in names:
        with manager.use(name):
            clock.now += 1
    where = {name: manager.entries[name].pool.key for name in names}
    assert where == {"a": "gpu0", "b": "gpu0", "c": "gpu0", "d": "gpu0", "e": "gpu1", "f": "gpu1"}  # room × speed
    manager.register(costly("new", 1, timer, cost_s=0.5, priority="low"))
    with manager.use("new"):  # both full: the slower device makes the room, the faster keeps its four
        pass
    assert manager.entries["new"].pool is slow and manager.entries["e"].level == "disk"
    assert sorted(n for n in names if manager.entries[n].pool is fast) == ["a", "b", "c", "d"]
    fast.reserved = slow.reserved = int(2.5 * MB)  # both past critical: each sheds its own low models
    relieved = manager.relieve()
    assert len(relieved) == 5 and {"f", "new"} <= set(relieved)  # 3 of the fast one's 4 bring it under warning
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


# ------------------------------------------------------------------ real CUDA readings, faked


class FakeCuda:
    """The torch.cuda calls the manager makes, on a machine without a GPU: a driver that reports
    `free` bytes, a copy that raises out-of-memory `ooms` times, per-device cache figures."""

    def __init__(self, monkeypatch, *, free: int, total: int = 64 * MB):
        from pipeline.model_manager import transfer

        self.free, self.total, self.ooms = free, total, 0
        self.moved: list[str] = []
        self.emptied: list[int] = []
        self.reserved: dict[int, int] = {}
        self.allocated: dict[int, int] = {}
        self.current = 0
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (self.free, self.total))
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: self.emptied.append(self.current))
        monkeypatch.setattr(torch.cuda, "device", self.device)
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: self.reserved[torch.device(device).index])
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: self.allocated[torch.device(device).index])
        monkeypatch.setattr(transfer, "move", self.move)
        monkeypatch.setitem(sys.modules, "pynvml", None)  # no NVML: readings from mem_get_info

    @contextlib.contextmanager
    def device(self, device):
        before, self.current = self.current, torch.device(device).index
        try:
            yield
        finally:
            self.current = before

    def move(self, module, pool, nbytes):
        if self.ooms:
            self.ooms -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 MiB")
        self.moved.append(pool.key)
        return module, nbytes


def gpu(index: int = 0, *, flexible: float = 8, total_mb: float = 64) -> DevicePool:
    return DevicePool(
        f"cuda:{index}", torch.device("cuda", index), {"flexible": int(flexible * MB)}, total=int(total_mb * MB)
    )


def test_a_model_goes_to_the_gpu_only_when_the_driver_has_room_for_its_load_peak(monkeypatch):
    cuda = FakeCuda(monkeypatch, free=MB // 2)  # another process holds the rest of the card
    manager = ModelManager([gpu(flexible=8)], preload=False)
    manager.register(spec("m", 1))
    manager.register(spec("strict", 1, cpu_fallback=False))
    with manager.use("m"):  # 8 MB of zone free, but only 0.5 MB on the card: never copied there
        pass
    assert manager.entries["m"].level == "cpu" and cuda.moved == []
    assert "cuda:0 driver: 524288 bytes free" in manager.events[-1]
    with pytest.raises(ModelMemoryError, match=r"'strict' needs 1\.0 MB \(1048576 bytes\).*524288 bytes free"):
        manager.acquire("strict")
    cuda.free = 2 * MB
    assert manager.retry_fallbacks() == ["m"] and manager.entries["m"].level == "device"
    cuda.free = MB // 2  # the other process grew: too little for the next model, unless m's 1 MB goes
    manager.register(spec("next", 1))
    with manager.use("next"):
        pass
    assert manager.entries["next"].level == "device" and manager.entries["m"].level == "disk"
    assert cuda.emptied == [0]  # m's blocks handed back to the driver before the copy


def test_out_of_memory_while_placing_evicts_then_falls_back_and_never_crashes(monkeypatch):
    cuda = FakeCuda(monkeypatch, free=32 * MB)
    manager = ModelManager([gpu(flexible=8)], preload=False)
    for name in ("resident", "new", "second", "strict"):
        manager.register(spec(name, 1, cpu_fallback=name != "strict"))
    with manager.use("resident"):
        pass
    cuda.ooms = 1  # the driver's reading was stale: the copy fails once
    with manager.use("new") as model:
        assert model(torch.ones(1, SIDE_1MB)).shape == (1, SIDE_1MB)
    assert manager.entries["new"].level == "device" and manager.entries["resident"].level == "disk"
    assert any("out of memory placing 1048576 bytes on cuda:0" in event for event in manager.events)
    cuda.ooms = 2  # fails again after evicting: the CPU
    with manager.use("second"):
        pass
    assert manager.entries["second"].level == "cpu" and manager.entries["second"].fallbacks == 1
    assert manager.pools[0].used["flexible"] == 0  # "new" made room; nothing reserved is left behind
    cuda.ooms = 1  # nothing of ours left there to evict: for a model that may not fall back, the error
    with pytest.raises(ModelMemoryError, match=r"'strict'.*out of memory on cuda:0"):
        manager.acquire("strict")
    assert manager.entries["strict"].pins == 0 and manager.entries["strict"].level == "disk"
    with manager.use("resident"):
        pass
    evictions = manager.status()["totals"]["evictions"]
    cuda.ooms = 1  # moving the fallback back fails: it stays on the CPU, nothing is evicted for it
    assert manager.retry_fallbacks() == [] and manager.entries["second"].level == "cpu"
    assert manager.status()["totals"]["evictions"] == evictions and manager.entries["resident"].level == "device"


def test_thresholds_read_nvml_when_present(monkeypatch):
    """NVML counts every process on the card; its reading, not the manager's own bytes, decides."""
    from types import SimpleNamespace

    FakeCuda(monkeypatch, free=60 * MB)  # torch alone would say the card is nearly empty
    nvml = SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetMemoryInfo=lambda handle: SimpleNamespace(used=90, total=100),
        nvmlDeviceGetTemperature=lambda handle, sensor: 60,
        NVML_TEMPERATURE_GPU=0,
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    device = gpu(flexible=8)
    manager = ModelManager([device], preload=False)
    manager.register(spec("low", 1, priority="low"))
    with manager.use("low"):
        pass
    assert device.level() == "critical"
    assert manager.relieve() == ["low"]


def test_fragmentation_past_the_limit_releases_that_gpus_cached_blocks(monkeypatch):
    cuda = FakeCuda(monkeypatch, free=32 * MB)
    first, second = gpu(0), gpu(1)
    first.fragmentation_limit = second.fragmentation_limit = 256 * MB
    manager = ModelManager([first, second])
    cuda.reserved = {0: 900 * MB, 1: 500 * MB}
    cuda.allocated = {0: 600 * MB, 1: 400 * MB}  # 300 MB cached unused on cuda:0, 100 MB on cuda:1
    manager.between_frames()
    assert cuda.emptied == [0] and manager.cache_releases == 1  # only cuda:0, and on cuda:0
    assert manager.status()["fragmentation_mb"] == 400.0
    cuda.reserved = {0: 600 * MB, 1: 500 * MB}  # released
    manager.between_frames()
    assert cuda.emptied == [0] and manager.fragmentation == 100 * MB


def test_a_precision_change_keeps_a_cpu_fallback_and_a_host_copy_where_they_are():
    manager = ModelManager([pool(flexible=1)], host_budget=2 * MB, preload=False)
    for name in ("resident", "fallback", "waiting"):
        manager.register(spec(name, 1, priority="critical" if name == "resident" else "medium"))
    with manager.use("waiting"):
        pass
    with manager.use("resident"):  # waiting goes to host memory
        pass
    with manager.use("fallback"):  # only a critical model there: the CPU
        pass
    assert [manager.entries[n].level for n in ("resident", "fallback", "waiting")] == ["device", "cpu", "host"]
    for name in ("fallback", "waiting"):
        manager.set_precision(name, "fp16")
    assert [manager.entries[n].level for n in ("fallback", "waiting")] == ["cpu", "host"]  # not sent to disk
    assert manager.entries["fallback"].module.weight.dtype == torch.float16
    assert manager.host_used == MB // 2 and manager.fallback_used == MB // 2  # accounted at the new size
    with manager.use("waiting") as model:  # back from host memory, not rebuilt
        assert model.weight.dtype == torch.float16
    assert manager.entries["waiting"].loads == 1 and manager.entries["fallback"].loads == 1


# ------------------------------------------------------------------ device profiles


def test_every_shipped_profile_loads_and_its_zones_fit_its_memory():
    names = profile_names()
    assert {"cpu", "rtx3060-laptop-6gb", "rtx4090-24gb", "h100-80gb"} <= set(names)
    for name in names:
        profile = load_profile(name)
        assert sum(profile.zones.values()) + profile.reserved_mb <= profile.memory_mb


def test_the_default_graphs_models_fit_every_shipped_profile_the_recognizer_included():
    """The plan: the detector and the expression model (high) and Whisper (medium, flexible) are
    placed on the device of every profile, the smallest card included, none on the CPU fallback."""
    pytest.importorskip("faster_whisper", reason="speech recognition needs faster-whisper")
    from models.fer import load_fer
    from models.mtcnn import load_mtcnn
    from pipeline.stages.voice.recognizer import load_recognizer

    specs = [
        ModelSpec("mtcnn", load_mtcnn, "high"),
        ModelSpec("fer", load_fer, "high"),
        ModelSpec("whisper", load_recognizer, "medium"),
    ]
    for name in profile_names():
        manager = ModelManager.from_profile(load_profile(name), torch.device("cpu"))
        for model in specs:
            manager.register(model)
            with manager.use(model.name):
                pass
        placed = {model.name: manager.entries[model.name].level for model in specs}
        assert placed == dict.fromkeys(placed, "device"), (name, placed)
        assert manager.entries["whisper"].zone == "flexible" and manager.entries["whisper"].nbytes > 50 * MB


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


def test_the_6gb_profile_scaled_to_the_models_runs_the_full_graph_without_passing_its_budget(tmp_path):
    """The 6 GB card's plan scaled down a thousandfold (MB for GB), so the real models (the detector
    1.9 MB, the classifier 0.2 MB) press on it, with filler models taking the rest of the zones: the
    classifier finds neither zone with room and must evict the low-priority filler. At no moment
    is more placed in a zone than it holds, or on the card than it has."""
    from pipeline.config import load_config
    from pipeline.job import JobOptions, run_job

    scaled = tmp_path / "rtx3060-scaled.yaml"
    scaled.write_text(
        "name: rtx3060-scaled\nkind: cuda\nmemory_mb: 6\nreserved_mb: 1\n"
        "zones: {critical: 2, high: 2, flexible: 1}\nwarning: 0.9\ncritical: 0.95\n"
    )
    profile = load_profile(scaled)
    manager = ModelManager.from_profile(profile, torch.device("cpu"), preload=False)
    manager.register(spec("face_id", 1.5, priority="critical"))  # a critical model: never evicted
    manager.register(spec("filler", 0.9, priority="low"))  # 0.9 of flexible's 1 MB
    for name in ("face_id", "filler"):
        with manager.use(name):
            pass
    options = JobOptions(config=load_config("default"), device=torch.device("cpu"), frames=12, device_profile=profile)
    result = asyncio.run(run_job("sample", "null", options, models=manager))
    assert result.status == "ok", result.reason
    report = result.report["models"]
    (device,) = report["devices"]
    models = {m["name"]: m for m in report["models"]}
    assert models["mtcnn(min_face=20)"]["zone"] == "high"  # 1.9 of the high zone's 2 MB
    assert models["fer"]["zone"] == "flexible" and models["filler"]["level"] == "disk"  # room made for it
    assert models["face_id"]["level"] == "device" and report["totals"]["fallbacks"] == 0
    for zone, peak in device["zone_peaks_mb"].items():
        assert peak <= device["zones_mb"][zone]  # never more in a zone than it holds
    assert device["peak_mb"] <= profile.memory_mb
    assert device["peak_mb"] >= 1 + 1.5 + 0.9 + 1.89  # the card was nearly full: the budget was tested
    assert models["mtcnn(min_face=20)"]["hits"] + models["mtcnn(min_face=20)"]["misses"] == 12


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
