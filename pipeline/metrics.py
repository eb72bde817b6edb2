"""Run metrics: latency histograms per stage and end to end, fps, drops, queue depth and age.

Recording sits on the hot path of every frame and every stage, so a sample costs a few integer
operations and memory stays bounded however long a live session runs.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import numpy as np

SUB_BUCKETS_BITS = 4  # 16 buckets per power of two: about 3% relative error on a percentile
_SUB = 1 << SUB_BUCKETS_BITS
_BUCKETS = 64 * _SUB
BUCKET_COUNT = _BUCKETS  # buckets in every LatencyHistogram (for exporters reading `counts`)


def bucket_index(values_ns: np.ndarray) -> np.ndarray:
    """Log-linear bucket of each duration: exact below 16 ns, then 16 buckets per power of two."""
    values = np.maximum(values_ns.astype(np.int64), 0)
    bits = np.frexp(values.astype(np.float64))[1].astype(np.int64)  # int.bit_length, exact below 2**53
    shift = np.maximum(bits - SUB_BUCKETS_BITS - 1, 0)
    coarse = ((bits - SUB_BUCKETS_BITS) << SUB_BUCKETS_BITS) | ((values >> shift) & (_SUB - 1))
    return np.where(bits <= SUB_BUCKETS_BITS, values, coarse)


def bucket_floor(index: int) -> int:
    """The smallest duration that falls in bucket `index`."""
    if index < _SUB:
        return index
    shift = (index >> SUB_BUCKETS_BITS) - 1
    return (_SUB | (index & (_SUB - 1))) << shift


class LatencyHistogram:
    """Log-linear histogram of durations in nanoseconds, with exact count, mean, min and max.

    `record` is a bare `list.append`, cheap enough for every frame at every stage; `fold` moves
    what was recorded into the buckets in one vectorised step. Readers fold first, and the
    executor folds on a timer, so memory stays bounded however long a live session runs.
    Call `record` and `fold` from one thread (the event loop's).
    """

    __slots__ = ("_pending", "count", "counts", "max_ns", "min_ns", "record", "total_ns")

    def __init__(self) -> None:
        self.counts = np.zeros(_BUCKETS, dtype=np.int64)
        self.count = 0
        self.total_ns = 0
        self.min_ns = 0
        self.max_ns = 0
        self._pending: list[int] = []
        self.record = self._pending.append  # record(duration_ns)

    def recent_mean_ns(self, calls: int) -> int | None:
        """The mean of the last `calls` samples recorded since the last fold (None when there are
        none): what the latest calls cost, before the timer folds them into the whole run's count."""
        pending = self._pending[-calls:]
        return sum(pending) // len(pending) if pending else None

    @property
    def unfolded(self) -> int:
        """Samples recorded but not yet folded into the buckets."""
        return len(self._pending)

    def fold(self) -> None:
        """Move recorded samples into the buckets."""
        if not self._pending:
            return
        values = np.maximum(np.array(self._pending, dtype=np.int64), 0)
        self._pending.clear()
        self.counts += np.bincount(bucket_index(values), minlength=_BUCKETS)[:_BUCKETS]
        low, high = int(values.min()), int(values.max())
        self.min_ns = low if self.count == 0 else min(self.min_ns, low)
        self.max_ns = max(self.max_ns, high)
        self.count += len(values)
        self.total_ns += int(values.sum())

    def percentile_ns(self, q: float) -> int:
        """The value below which a fraction `q` (0..1) of samples fall, to bucket precision."""
        self.fold()
        if self.count == 0:
            return 0
        rank = max(1, int(q * self.count + 0.999999))
        index = int(np.searchsorted(np.cumsum(self.counts), rank))
        upper = bucket_floor(index + 1) - 1
        return max(self.min_ns, min(self.max_ns, (bucket_floor(index) + upper) // 2))

    def summary_ms(self) -> dict[str, float | int]:
        """p50/p95/p99, mean, min, max in milliseconds, and the sample count."""
        self.fold()
        ms = 1e-6
        return {
            "count": self.count,
            "mean": round(self.total_ns / self.count * ms, 4) if self.count else 0.0,
            "p50": round(self.percentile_ns(0.50) * ms, 4),
            "p95": round(self.percentile_ns(0.95) * ms, 4),
            "p99": round(self.percentile_ns(0.99) * ms, 4),
            "min": round(self.min_ns * ms, 4),
            "max": round(self.max_ns * ms, 4),
        }


class QueueStats:
    """Depth of one queue and age since capture of its oldest frame, sampled on a timer, off the hot path."""

    __slots__ = ("depth_sum", "max_depth", "oldest_age", "samples")

    def __init__(self) -> None:
        self.samples = 0
        self.depth_sum = 0
        self.max_depth = 0
        self.oldest_age = LatencyHistogram()  # now − capture time of the frame at the head

    def sample(self, depth: int, oldest_age_ns: int) -> None:
        self.samples += 1
        self.depth_sum += depth
        if depth > self.max_depth:
            self.max_depth = depth
        if depth:
            self.oldest_age.record(oldest_age_ns)

    def summary(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "max_depth": self.max_depth,
            "mean_depth": round(self.depth_sum / self.samples, 3) if self.samples else 0.0,
            "oldest_frame_age_ms": self.oldest_age.summary_ms(),
        }


class StageStats:
    """One stage's timings and what went wrong in it."""

    __slots__ = ("disabled", "errors", "held", "latency", "missing", "skipped")

    def __init__(self) -> None:
        self.latency = LatencyHistogram()
        self.errors = 0  # calls that raised
        self.missing = 0  # frames that left without this stage's annotation
        self.skipped = 0  # dropped frames passed on untouched
        self.held = 0  # frames the scheduler's cadence let carry the last result instead of a call
        self.disabled: str | None = None  # why the stage was switched off

    def summary(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency.summary_ms(),
            "errors": self.errors,
            "missing": self.missing,
            "skipped": self.skipped,
            "held": self.held,
            "disabled": self.disabled,
        }


class RecentRate:
    """Events per second over the last `window_s`: what a live panel shows, where a lifetime
    average would hide a session that slowed down minutes after it started."""

    __slots__ = ("_first_s", "_times", "window_s")

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._first_s: float | None = None

    def tick(self, now_s: float) -> None:
        """One event at `now_s` (seconds, monotonic)."""
        if self._first_s is None:
            self._first_s = now_s
        self._times.append(now_s)
        self._forget(now_s)

    def per_s(self, now_s: float) -> float:
        """The rate over the window ending at `now_s` (over less time while the first window fills)."""
        self._forget(now_s)
        if self._first_s is None:
            return 0.0
        span_s = min(self.window_s, now_s - self._first_s)
        return len(self._times) / span_s if span_s > 0 else 0.0

    def _forget(self, now_s: float) -> None:
        times = self._times
        while times and times[0] <= now_s - self.window_s:
            times.popleft()


class RunMetrics:
    """Everything measured during one run, turned into the report at the end."""

    def __init__(self) -> None:
        self.stages: dict[str, StageStats] = {}
        self.queues: dict[str, QueueStats] = {}
        self.end_to_end = LatencyHistogram()
        self.frames_in = 0
        self.frames_out = 0
        self.drops: Counter[str] = Counter()
        self.rung_changes: Counter[tuple[str, str]] = Counter()  # (direction, reason) → quality rung changes
        self.first_in_ns = 0
        self.last_in_ns = 0
        self.first_out_ns = 0
        self.last_out_ns = 0
        self.started_ns = time.monotonic_ns()
        self.finished_ns = 0

    def stage(self, name: str) -> StageStats:
        return self.stages.setdefault(name, StageStats())

    def queue(self, name: str) -> QueueStats:
        return self.queues.setdefault(name, QueueStats())

    def fold(self) -> None:
        """Fold every histogram's recent samples into its buckets (bounds memory on long runs)."""
        self.end_to_end.fold()
        for stats in self.stages.values():
            stats.latency.fold()
        for queue in self.queues.values():
            queue.oldest_age.fold()

    def frame_in(self, now_ns: int) -> None:
        if self.frames_in == 0:
            self.first_in_ns = now_ns
        self.last_in_ns = now_ns
        self.frames_in += 1

    def frame_out(self, capture_ns: int, now_ns: int) -> None:
        if self.frames_out == 0:
            self.first_out_ns = now_ns
        self.last_out_ns = now_ns
        self.frames_out += 1
        self.end_to_end.record(now_ns - capture_ns)

    def frame_dropped(self, reason: str) -> None:
        self.drops[reason] += 1

    def rung_changed(self, direction: str, reason: str) -> None:
        """One step on the quality ladder: "down" or "up", and what caused it (see `RungChange.reason`)."""
        self.rung_changes[direction, reason] += 1

    def finish(self) -> None:
        self.finished_ns = time.monotonic_ns()

    @staticmethod
    def _rate(count: int, first_ns: int, last_ns: int) -> float:
        span = (last_ns - first_ns) / 1e9
        return round((count - 1) / span, 2) if count > 1 and span > 0 else 0.0

    def report(self, **extra: Any) -> dict[str, Any]:
        """The run report: plain JSON-able data."""
        end = self.finished_ns or time.monotonic_ns()
        return {
            "wall_s": round((end - self.started_ns) / 1e9, 3),
            "frames": {"in": self.frames_in, "out": self.frames_out, "dropped": dict(self.drops)},
            "fps": {
                "in": self._rate(self.frames_in, self.first_in_ns, self.last_in_ns),
                "out": self._rate(self.frames_out, self.first_out_ns, self.last_out_ns),
            },
            "latency_ms": {"end_to_end": self.end_to_end.summary_ms()},
            "stages": {name: stats.summary() for name, stats in self.stages.items()},
            "queues": {name: stats.summary() for name, stats in self.queues.items()},
            **extra,
        }


def write_report(report: dict[str, Any], path: str | Path) -> None:
    """Write the report as JSON, atomically, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)
