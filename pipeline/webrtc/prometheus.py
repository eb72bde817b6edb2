"""The server's metrics in Prometheus' text format, for `GET /metrics`.

Nothing is recorded twice: at scrape time a collector reads the runs' own log-linear latency
histograms (`pipeline.metrics`) and turns them into Prometheus histograms at fixed bounds. A
session that ends folds its counts into the server's totals first, so every counter only grows.

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
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from pipeline.metrics import BUCKET_COUNT, LatencyHistogram, RunMetrics, bucket_floor
from pipeline.scheduler import CHANGE_REASONS

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
        self.stages: dict[str, Totals] = defaultdict(Totals)
        self.end_to_end = Totals()
        self.frames_out = 0
        self.drops: Counter[str] = Counter()
        self.rung_changes: Counter[tuple[str, str]] = Counter()

    def add(self, metrics: RunMetrics) -> None:
        metrics.fold()
        for name, stats in metrics.stages.items():
            self.stages[name].add(stats.latency)
        self.end_to_end.add(metrics.end_to_end)
        self.frames_out += metrics.frames_out
        self.drops.update(metrics.drops)
        self.rung_changes.update(metrics.rung_changes)


class ServerCollector:
    """Reads the server's sessions and model manager at each scrape."""

    def __init__(self, server: Server):
        self.server = server

    def collect(self) -> Iterator[Any]:
        server = self.server
        retired = server.retired
        live = [s.pipeline.metrics for s in server.sessions if s.pipeline is not None]
        stage_names = set(retired.stages) | {name for m in live for name in m.stages}
        stage = HistogramMetricFamily(
            "pipeline_stage_latency_seconds", "Time each stage took per frame", labels=["stage"]
        )
        for name in sorted(stage_names):
            totals = retired.stages[name].copy() if name in retired.stages else Totals()
            for metrics in live:
                if name in metrics.stages:
                    totals.add(metrics.stages[name].latency)
            stage.add_metric([name], totals.buckets(), totals.total_ns / 1e9)
        yield stage
        e2e = retired.end_to_end.copy()
        for metrics in live:
            e2e.add(metrics.end_to_end)
        end_to_end = HistogramMetricFamily(
            "pipeline_end_to_end_latency_seconds", "Capture to the peer's outgoing track, per delivered frame"
        )
        end_to_end.add_metric([], e2e.buckets(), e2e.total_ns / 1e9)
        yield end_to_end
        out = CounterMetricFamily("pipeline_frames_out", "Frames delivered to peers")
        out.add_metric([], retired.frames_out + sum(m.frames_out for m in live))
        yield out
        drops = retired.drops + sum((Counter(m.drops) for m in live), Counter())
        dropped = CounterMetricFamily("pipeline_frames_dropped", "Frames dropped, by reason", labels=["reason"])
        for reason, count in sorted(drops.items()):
            dropped.add_metric([reason], count)
        yield dropped
        yield GaugeMetricFamily("pipeline_fps", "Delivered frames per second, all sessions", value=server.fps())
        yield GaugeMetricFamily("pipeline_sessions", "Sessions running", value=len(server.sessions))
        yield CounterMetricFamily("pipeline_sessions_started", "Sessions started", value=server.sessions_total)
        yield CounterMetricFamily(
            "pipeline_sessions_refused", "Offers refused: every session taken", value=server.refused
        )
        rungs = GaugeMetricFamily("pipeline_sessions_at_rung", "Sessions at each quality rung", labels=["rung"])
        at = Counter(
            s.pipeline.scheduler.controller.rung_name
            for s in server.sessions
            if s.pipeline is not None and s.pipeline.scheduler is not None
        )
        for rung in server.config.quality.ladder:
            rungs.add_metric([rung], at.get(rung, 0))
        yield rungs
        changed = retired.rung_changes + sum((Counter(m.rung_changes) for m in live), Counter())
        changes = CounterMetricFamily(
            "pipeline_rung_changes", "Quality rung changes, by direction and cause", labels=["direction", "reason"]
        )
        for direction, reasons in CHANGE_REASONS.items():  # every pair, zeros too: a rate needs the series
            for reason in reasons:
                changes.add_metric([direction, reason], changed.get((direction, reason), 0))
        yield changes
        yield from _model_metrics(server.models.status())


def _model_metrics(status: dict[str, Any]) -> Iterator[Any]:
    requests = CounterMetricFamily("pipeline_model_requests", "Model requests", labels=["model", "result"])
    evictions = CounterMetricFamily("pipeline_model_evictions", "Models evicted", labels=["model"])
    fallbacks = CounterMetricFamily(
        "pipeline_model_fallbacks", "Models run on the CPU for want of room", labels=["model"]
    )
    loads = CounterMetricFamily("pipeline_model_loads", "Models built from their weights files", labels=["model"])
    size = GaugeMetricFamily("pipeline_model_bytes", "Bytes of each model, by where it is", labels=["model", "level"])
    for model in status["models"]:
        name = model["name"]
        requests.add_metric([name, "hit"], model["hits"])
        requests.add_metric([name, "miss"], model["misses"])
        evictions.add_metric([name], model["evictions"])
        fallbacks.add_metric([name], model["fallbacks"])
        loads.add_metric([name], model["loads"])
        size.add_metric([name, model["level"]], model["size_mb"] * 2**20)
    memory = GaugeMetricFamily(
        "pipeline_device_memory_bytes", "Bytes of models placed in each zone of each device", labels=["device", "zone"]
    )
    for device in status["devices"]:
        for zone in device["zones_mb"]:
            memory.add_metric([device["key"], zone], device["used_mb"].get(zone, 0.0) * 2**20)
    yield from (requests, evictions, fallbacks, loads, size, memory)


def exposition(server: Server) -> bytes:
    """The text `GET /metrics` answers with."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    return generate_latest(registry)
