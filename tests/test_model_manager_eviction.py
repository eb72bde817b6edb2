"""Eviction and upkeep as pure decisions: plain records in, models out, no torch, no device."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from pipeline.model_manager import eviction, upkeep


@dataclass
class Model:
    name: str
    priority: str = "medium"
    nbytes: int = 100
    pins: int = 0
    loading: bool = False
    value: float = 0.0
    last_use: float = 0.0
    level: str = "device"


def test_the_policy_loads_without_torch():
    code = "import sys, pipeline.model_manager.eviction, pipeline.model_manager.upkeep; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_the_value_rises_with_priority_uses_and_reload_cost_and_falls_with_size():
    base = {"inflation": 0.0, "priority": "medium", "uses": 2, "reload_cost_s": 0.5, "nbytes": 10 << 20}
    value = eviction.value(**base)
    assert eviction.value(**{**base, "priority": "high"}) > value
    assert eviction.value(**{**base, "uses": 3}) > value
    assert eviction.value(**{**base, "reload_cost_s": 1.0}) > value
    assert eviction.value(**{**base, "nbytes": 20 << 20}) < value
    assert eviction.value(**{**base, "inflation": 5.0}) == value + 5.0


def test_the_reload_cost_is_the_restore_when_host_memory_would_hold_it():
    assert eviction.reload_cost(nbytes=100, host_budget=1000, restore_s=0.01, load_s=2.0) == 0.01
    assert eviction.reload_cost(nbytes=8_000_000, host_budget=10**9, restore_s=None, load_s=2.0) == 0.001
    assert eviction.reload_cost(nbytes=2000, host_budget=1000, restore_s=0.01, load_s=2.0) == 2.0
    assert eviction.reload_cost(nbytes=100, host_budget=0, restore_s=None, load_s=0.0) > 0


def test_the_lowest_valued_go_first_and_only_as_many_as_needed():
    models = [Model("a", value=3.0), Model("b", value=1.0), Model("c", value=2.0)]
    chosen = eviction.victims(models, 150, requester="medium", device_level="ok")
    assert [m.name for m in chosen] == ["b", "c"]
    assert eviction.victims(models, 0, requester="medium", device_level="ok") == []
    assert eviction.victims(models, 301, requester="medium", device_level="ok") is None


def test_lru_goes_by_last_use_instead():
    models = [Model("old", value=9.0, last_use=1.0), Model("new", value=0.0, last_use=5.0)]
    assert [m.name for m in eviction.victims(models, 100, requester="low", device_level="ok", policy="lru")] == ["old"]


def test_pinned_loading_and_critical_models_never_go():
    models = [Model("pinned", pins=1), Model("loading", loading=True), Model("critical", priority="critical")]
    for level in ("ok", "warning", "critical"):
        assert eviction.victims(models, 1, requester="critical", device_level=level) is None


def test_high_models_go_only_under_pressure_or_for_a_critical_one():
    models = [Model("high", priority="high")]
    assert eviction.victims(models, 50, requester="medium", device_level="ok") is None
    assert eviction.victims(models, 50, requester="medium", device_level="warning") == models
    assert eviction.victims(models, 50, requester="critical", device_level="ok") == models
    both = [Model("high", priority="high", value=0.0), Model("low", priority="low", value=5.0)]
    assert [m.name for m in eviction.victims(both, 50, requester="critical", device_level="ok")] == ["low"]


def test_host_memory_spills_its_least_recently_used_to_disk():
    waiting = [Model("recent", last_use=9.0), Model("old", last_use=1.0)]
    assert eviction.host_spill(waiting, used=200, budget=250, nbytes=50) == []
    assert [m.name for m in eviction.host_spill(waiting, used=200, budget=250, nbytes=100)] == ["old"]
    assert [m.name for m in eviction.host_spill(waiting, used=200, budget=250, nbytes=250)] == ["old", "recent"]
    assert eviction.host_spill(waiting, used=200, budget=250, nbytes=251) is None


def test_idle_models_are_the_unused_unpinned_non_critical_ones_still_loaded():
    models = [
        Model("idle", last_use=0.0),
        Model("recent", last_use=95.0),
        Model("pinned", pins=1),
        Model("critical", priority="critical"),
        Model("on disk", level="disk"),
    ]
    assert [m.name for m in upkeep.idle(models, now=100.0, idle_unload_s=10.0)] == ["idle"]
    assert upkeep.idle(models, now=100.0, idle_unload_s=0.0) == []


def test_relief_gives_up_the_largest_low_models_first():
    models = [
        Model("small", "low", 10),
        Model("big", "low", 90),
        Model("busy", "low", 500, pins=1),
        Model("mid", "medium", 900),
    ]
    assert [m.name for m in upkeep.relief_order(models)] == ["big", "small"]


def test_the_history_predicts_the_model_that_usually_follows():
    history = upkeep.UsageHistory()
    for name in ["detector", "classifier", "detector", "classifier", "detector", "voice", "voice"]:
        history.used(name)
    assert history.predicted_next("detector") == "classifier"
    assert history.predicted_next("voice") is None  # a repeat is no transition
    assert history.last == "voice"
