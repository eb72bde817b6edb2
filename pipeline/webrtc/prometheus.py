"""The server's metrics in Prometheus' text format, for `GET /metrics`.

Nothing is recorded twice: at scrape time a collector reads the runs' own log-linear latency
histograms (`pipeline.metrics`) and turns them into Prometheus histograms at fixed bounds. A
session that ends folds its counts into the server's totals first, so every counter only grows.
With `--serve --ray` the sessions run on worker actors: each reports its `Counters` as plain
data with its status, and the front adds them up with its own (and with the last counts of
workers that died, so their frames still count).

Exported (all prefixed `pipeline_`): `stage_latency_seconds{stage}` and
`end_to_end_latency_seconds` (histograms), `frames_out_total`, `frames_dropped_total{reason}`,
`fps` (delivered, all sessions), `sessions`, `sessions_started_total`, `sessions_refused_total`,
`sessions_at_rung{rung}`, `rung_changes_total{direction,reason}` (reason: latency, queue_age,
gpu down; margin up), and the model manager's `model_requests_total{model,result}`
(hit/miss), `model_evictions_total{model}`, `model_fallbacks_total{model}`,
`model_loads_total{model}`, `model_bytes{model,level}` and `device_memory_bytes{device,zone}`.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from pipeline.metrics import BUCKET_COUNT, LatencyHistogram, RunMetrics, bucket_floor
from pipeline.scheduling.controller import CHANGE_REASONS

if TYPE_CHECKING:
    from pipeline.webrtc.server import Server

BOUNDS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.033, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_FLOORS_NS = np.array([bucket_floor(i) for i in range(BUCKET_COUNT)], dtype=np.float64)  # the top ones pass int64
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Totals:
    """Bucket counts and sums of one latency series, over every session so far."""

    def __init__(self) -> None:
        self.counts = np.zeros(BUCKET_COUNT, dtype=np.int64)
        self.total_ns = 0

    def add(self, histogram: LatencyHistogram) -> None:
        histogram.fold()
        self.counts += histogram.counts
        self.total_ns += histogram.total_ns

    def copy(self) -> Totals:
        twin = Totals()
        twin.counts, twin.total_ns = self.counts.copy(), self.total_ns
        return twin

    def merge(self, other: Totals) -> None:
        self.counts += other.counts
        self.total_ns += other.total_ns

    def to_json(self) -> dict[str, Any]:
        """Sparse: a run fills a few dozen of its many buckets."""
        filled = np.flatnonzero(self.counts)
        return {"buckets": {str(i): int(self.counts[i]) for i in filled}, "total_ns": int(self.total_ns)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Totals:
        totals = cls()
        for index, count in data["buckets"].items():
            totals.counts[int(index)] = count
        totals.total_ns = data["total_ns"]
        return totals

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts at BOUNDS_S (a bucket counts below a bound when its floor is)."""
        cumulative = np.cumsum(self.counts)
        out = []
        for bound in BOUNDS_S:
            last = bisect.bisect_right(_FLOORS_NS, int(bound * 1e9)) - 1  # last bucket starting at or below it
            out.append((f"{bound:g}", float(cumulative[last]) if last >= 0 else 0.0))
        out.append(("+Inf", float(cumulative[-1])))
        return out


class Retired:
    """What ended sessions measured, kept so counters never go down."""

    def __init__(self) -> None:
        self.totals = Counters()

    def add(self, metrics: RunMetrics) -> None:
        metrics.fold()
        self.totals.add_run(metrics)


@dataclass
class Counters:
    """What one host of sessions measured, ended and running sessions together: plain data to add up."""

    stages: dict[str, Totals] = field(default_factory=lambda: defaultdict(Totals))
    end_to_end: Totals = field(default_factory=Totals)
    frames_out: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    rung_changes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (direction, reason) → changes
    sessions: int = 0  # running now
    sessions_total: int = 0
    rungs: Counter[str] = field(default_factory=Counter)  # running sessions at each quality rung
    models: dict[str, Any] = field(default_factory=lambda: {"models": [], "devices": []})  # managers' status

    @classmethod
    def of(cls, retired: Retired, live: Iterable[RunMetrics], rungs: Iterable[str], **fields: Any) -> Counters:
        """The ended sessions' totals with the running sessions' measurements added."""
        counters = replace(retired.totals.ended(), rungs=Counter(rungs), **fields)
        for metrics in live:
            counters.add_run(metrics)
        return counters

    def add_run(self, metrics: RunMetrics) -> None:
        """One session's measurements, added in."""
        for name, stats in metrics.stages.items():
            self.stages[name].add(stats.latency)
        self.end_to_end.add(metrics.end_to_end)
        self.frames_out += metrics.frames_out
        self.drops.update(metrics.drops)
        self.rung_changes.update(metrics.rung_changes)

    def add(self, other: Counters) -> None:
        for name, totals in other.stages.items():
            self.stages[name].merge(totals)
        self.end_to_end.merge(other.end_to_end)
        self.frames_out += other.frames_out
        self.drops.update(other.drops)
        self.rung_changes.update(other.rung_changes)
        self.sessions += other.sessions
        self.sessions_total += other.sessions_total
        self.rungs.update(other.rungs)
        self.models = {key: self.models[key] + other.models[key] for key in ("models", "devices")}

    def ended(self) -> Counters:
        """What still counts once the host is gone: its totals, not its sessions, rungs or models."""
        return Counters(
            stages=defaultdict(Totals, {name: totals.copy() for name, totals in self.stages.items()}),
            end_to_end=self.end_to_end.copy(),
            frames_out=self.frames_out,
            drops=Counter(self.drops),
            rung_changes=Counter(self.rung_changes),
            sessions_total=self.sessions_total,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "stages": {name: totals.to_json() for name, totals in self.stages.items()},
            "end_to_end": self.end_to_end.to_json(),
            "frames_out": self.frames_out,
            "drops": dict(self.drops),
            "rung_changes": [[direction, reason, n] for (direction, reason), n in self.rung_changes.items()],
            "sessions": self.sessions,
            "sessions_total": self.sessions_total,
            "rungs": dict(self.rungs),
            "models": self.models,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Counters:
        counters = cls(
            end_to_end=Totals.from_json(data["end_to_end"]),
            frames_out=data["frames_out"],
            drops=Counter(data["drops"]),
            rung_changes=Counter({(direction, reason): n for direction, reason, n in data["rung_changes"]}),
            sessions=data["sessions"],
            sessions_total=data["sessions_total"],
            rungs=Counter(data["rungs"]),
            models=data["models"],
        )
        for name, totals in data["stages"].items():
            counters.stages[name] = Totals.from_json(totals)
        return counters


class ServerCollector:
    """Reads the server's sessions and model manager at each scrape."""

    def __init__(self, server: Server):
        self.server = server

    def collect(self) -> Iterator[Any]:
        server = self.server
        counters = server.counters()
        stage = HistogramMetricFamily(
            "pipeline_stage_latency_seconds", "Time each stage took per frame", labels=["stage"]
        )
        for name in sorted(counters.stages):
            totals = counters.stages[name]
            stage.add_metric([name], totals.buckets(), totals.total_ns / 1e9)
        yield stage
        e2e = counters.end_to_end
        end_to_end = HistogramMetricFamily(
            "pipeline_end_to_end_latency_seconds", "Capture to the peer's outgoing track, per delivered frame"
        )
        end_to_end.add_metric([], e2e.buckets(), e2e.total_ns / 1e9)
        yield end_to_end
        out = CounterMetricFamily("pipeline_frames_out", "Frames delivered to peers")
        out.add_metric([], counters.frames_out)
        yield out
        dropped = CounterMetricFamily("pipeline_frames_dropped", "Frames dropped, by reason", labels=["reason"])
        for reason, count in sorted(counters.drops.items()):
            dropped.add_metric([reason], count)
        yield dropped
        yield GaugeMetricFamily("pipeline_fps", "Delivered frames per second, all sessions", value=server.fps())
        yield GaugeMetricFamily("pipeline_sessions", "Sessions running", value=counters.sessions)
        yield CounterMetricFamily("pipeline_sessions_started", "Sessions started", value=counters.sessions_total)
        yield CounterMetricFamily(
            "pipeline_sessions_refused", "Offers refused: every session taken", value=server.refused
        )
        rungs = GaugeMetricFamily("pipeline_sessions_at_rung", "Sessions at each quality rung", labels=["rung"])
        for rung in server.config.quality.ladder:
            rungs.add_metric([rung], counters.rungs.get(rung, 0))
        yield rungs
        changes = CounterMetricFamily(
            "pipeline_rung_changes", "Quality rung changes, by direction and cause", labels=["direction", "reason"]
        )
        for direction, reasons in CHANGE_REASONS.items():  # every pair, zeros too: a rate needs the series
            for reason in reasons:
                changes.add_metric([direction, reason], counters.rung_changes.get((direction, reason), 0))
        yield changes
        yield from _model_metrics(counters.models)


def _model_metrics(status: dict[str, Any]) -> Iterator[Any]:
    """The model managers' counts; the same model on several workers is added up under one name."""
    requests: Counter[tuple[str, ...]] = Counter()
    evictions: Counter[tuple[str, ...]] = Counter()
    fallbacks: Counter[tuple[str, ...]] = Counter()
    loads: Counter[tuple[str, ...]] = Counter()
    size: Counter[tuple[str, ...]] = Counter()
    memory: Counter[tuple[str, ...]] = Counter()
    for model in status["models"]:
        name = model["name"]
        requests[(name, "hit")] += model["hits"]
        requests[(name, "miss")] += model["misses"]
        evictions[(name,)] += model["evictions"]
        fallbacks[(name,)] += model["fallbacks"]
        loads[(name,)] += model["loads"]
        size[(name, model["level"])] += model["size_mb"] * 2**20
    for device in status["devices"]:
        for zone in device["zones_mb"]:
            memory[(device["key"], zone)] += device["used_mb"].get(zone, 0.0) * 2**20
    families = (
        (CounterMetricFamily, "pipeline_model_requests", "Model requests", ["model", "result"], requests),
        (CounterMetricFamily, "pipeline_model_evictions", "Models evicted", ["model"], evictions),
        (
            CounterMetricFamily,
            "pipeline_model_fallbacks",
            "Models run on the CPU for want of room",
            ["model"],
            fallbacks,
        ),
        (CounterMetricFamily, "pipeline_model_loads", "Models built from their weights files", ["model"], loads),
        (GaugeMetricFamily, "pipeline_model_bytes", "Bytes of each model, by where it is", ["model", "level"], size),
        (
            GaugeMetricFamily,
            "pipeline_device_memory_bytes",
            "Bytes of models placed in each zone of each device",
            ["device", "zone"],
            memory,
        ),
    )
    for kind, name, text, labels, values in families:
        family = kind(name, text, labels=labels)
        for key, value in values.items():
            family.add_metric(list(key), value)
        yield family


def exposition(server: Server) -> bytes:
    """The text `GET /metrics` answers with."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    return generate_latest(registry)
