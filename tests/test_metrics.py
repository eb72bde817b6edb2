"""Metrics: percentiles close to exact ones, in bounded memory, and a report file that is whole."""

from __future__ import annotations

import json
import random

from pipeline.metrics import LatencyHistogram, RecentRate, RunMetrics, write_report


def test_percentiles_are_within_two_percent_of_exact():
    rng = random.Random(7)
    values = sorted(int(rng.lognormvariate(14, 1.2)) for _ in range(50_000))
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    for q in (0.5, 0.95, 0.99):
        exact = values[int(q * len(values)) - 1]
        assert abs(histogram.percentile_ns(q) - exact) / exact < 0.02
    summary = histogram.summary_ms()
    assert summary["count"] == 50_000
    assert summary["min"] == round(values[0] * 1e-6, 4) and summary["max"] == round(values[-1] * 1e-6, 4)


def test_folding_bounds_memory_of_every_histogram():
    metrics = RunMetrics()
    histograms = [metrics.end_to_end, metrics.stage("s").latency, metrics.queue("q").oldest_age]
    for histogram in histograms:
        for value in range(0, 10**8, 997):
            histogram.record(value)
        assert histogram.unfolded > 100_000
    size = len(metrics.end_to_end.counts)
    metrics.fold()
    assert [h.unfolded for h in histograms] == [0, 0, 0]
    assert all(h.count > 100_000 and len(h.counts) == size for h in histograms)


def test_small_and_zero_values_are_exact():
    histogram = LatencyHistogram()
    for value in (0, 1, 2, 3):
        histogram.record(value)
    assert histogram.percentile_ns(0.25) == 0 and histogram.percentile_ns(1.0) == 3


def test_report_is_json_and_written_atomically(tmp_path):
    metrics = RunMetrics()
    for i in range(10):
        metrics.frame_in(1_000_000 * i)
        metrics.frame_out(1_000_000 * i, 1_000_000 * i + 5_000_000)
    metrics.frame_dropped("ring_full")
    metrics.finish()
    path = tmp_path / "nested" / "report.json"
    write_report(metrics.report(device="cpu"), path)
    report = json.loads(path.read_text())
    assert report["frames"] == {"in": 10, "out": 10, "dropped": {"ring_full": 1}}
    assert report["fps"]["in"] == 1000.0
    assert 4.8 < report["latency_ms"]["end_to_end"]["p50"] < 5.2
    assert not list(path.parent.glob("*.tmp"))


def test_the_recent_rate_follows_a_slowdown_that_a_lifetime_average_hides():
    rate = RecentRate(window_s=1.0)
    t = 0.0
    for _ in range(600):  # 20 s at 30 fps
        rate.tick(t)
        t += 1 / 30
    assert abs(rate.per_s(t) - 30) <= 1
    for _ in range(20):  # then 2 s at 10 fps
        rate.tick(t)
        t += 0.1
    lifetime = 620 / t
    assert abs(rate.per_s(t) - 10) <= 1 and lifetime > 25
    assert rate.per_s(t + 5.0) == 0.0  # nothing for 5 s: nothing in the window


def test_the_recent_rate_while_its_first_window_fills():
    rate = RecentRate(window_s=1.0)
    assert rate.per_s(3.0) == 0.0
    for i in range(6):
        rate.tick(10.0 + i * 0.05)  # 20 a second, for a quarter of a second
    assert 20 <= rate.per_s(10.25) <= 25


def test_the_recent_mean_is_of_the_last_calls_since_the_fold():
    histogram = LatencyHistogram()
    assert histogram.recent_mean_ns(4) is None
    for value in (1, 2, 30, 40, 50, 60):
        histogram.record(value)
    assert histogram.recent_mean_ns(4) == 45 and histogram.recent_mean_ns(100) == 183 // 6
    histogram.fold()
    assert histogram.recent_mean_ns(4) is None and histogram.count == 6
