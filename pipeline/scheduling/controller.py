"""The control loop that holds the latency target by moving along a quality ladder.

This module is the decision, kept free of the executor so it can be tested on its own: feed it
each delivered frame's end-to-end latency (`observe`), call `decide` on a timer (every 250 ms
in a run), and it answers with at most one rung change and the measurement behind it.

- The measure is the p95 of end-to-end latency over a sliding window (`window_s`), or the age of
  the oldest frame waiting in a stage's queue when that is higher: delivered frames show a
  backlog only once they get out of it, the queue shows it while it grows (or while nothing
  gets out at all). The target is a p99, though, and a p95 held just under the budget leaves
  the slowest frames over it: a window with more than one frame in a hundred late (and more
  than one frame: a lone stall is no trend) is over budget too, and a margin needs that tail
  gone as well.
- Over budget: one rung down at once, then again after `down_cooldown_s` if still over and not
  getting better — fast, because a queue that grows only grows faster; but a backlog that is
  already draining after a step is left to drain rather than answered with another step.
- Under `climb_margin` × budget (latency and queue ages both) for `climb_after_s` without a
  break, and the busiest stage busy less than `climb_busy` of each frame's time: one rung
  up — slow, so a short quiet spell does not undo a step that was needed. Latency alone
  cannot tell a stage working at 85% of the frame time (fine, but one rung up would overflow
  it) from one at 40%; the busy fraction can. Climbing out of a rung that thins the source
  brings back the frames it gave up, so the busy fraction counts as it will be after the climb
  (`climb_growth`: × 2 out of 1 frame in 2, × 1.5 out of 1 in 3 into 1 in 2).
  A climb that has to be undone anyway is undone at once, and doubles the wait before that
  climb is tried again (hysteresis: no oscillation), up to `MAX_CLIMB_WAIT_S`: a load that
  fell later is still found within half a minute. After `CLIMB_WAIT_RESET_S` without a step
  down the waits go back to `climb_after_s`: the failures they remember are old news.
- After any change the window starts afresh: the old measurements were taken at the old rung.

Rungs are names from the config's ladder; what each rung does to the stages is applied
elsewhere (the stages' knobs), so the loop stays about numbers.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from pipeline.config import (
    CLIMB_AFTER_S,
    CLIMB_BUSY,
    CLIMB_MARGIN,
    DOWN_COOLDOWN_S,
    WINDOW_S,
)
from pipeline.scheduling.ladder import DEFAULT_LADDER

MIN_SAMPLES = 8  # fewer frames than this in the window: no decision yet
TAIL_SHARE = 0.01  # more than this share of the window's frames over the budget is over budget (a p99 target)
IMPROVING = 0.9  # a p95 below this fraction of the last decision's counts as getting better
FAILED_CLIMB_S = 10.0  # a step down this soon after climbing into the rung undoes that climb
PRESSURE_COOLDOWN_S = 5.0  # between two steps down forced by GPU memory or temperature
MAX_CLIMB_WAIT_S = 30.0  # the doubled wait before retrying a failed climb stops growing here
CLIMB_WAIT_RESET_S = 60.0  # this long without a step down: failed climbs are forgotten


# What can cause a rung change, by direction (the labels of the metrics' rung-change counter).
CHANGE_REASONS = {"down": ("latency", "queue_age", "gpu"), "up": ("margin",)}


@dataclass(frozen=True)
class RungChange:
    """One move on the ladder, with what caused it (for the log line, the report and the timeline)."""

    time_s: float
    rung: int  # index into the ladder after the change
    name: str
    direction: str  # "down" (less quality) or "up"
    p95_ms: float | None  # None: too few frames in the window to say (a step forced by the GPU)
    budget_ms: float
    pressure: str | None = None  # what else forced the step (a hot or full GPU), if anything did
    queue_age_ms: float | None = None  # the oldest queued frame's age, when it weighed more than the p95
    p99_ms: float | None = None  # the window's p99, when it was over the budget (a late tail)

    @property
    def reason(self) -> str:
        """One word for what caused the change, from `CHANGE_REASONS`."""
        if self.direction == "up":
            return "margin"
        if self.pressure:
            return "gpu"
        return "queue_age" if self.queue_age_ms is not None else "latency"

    def describe(self) -> str:
        verb = "lowering quality" if self.direction == "down" else "raising quality"
        why = f"{self.pressure}; " if self.pressure else ""
        p95 = "unknown" if self.p95_ms is None else f"{self.p95_ms:.1f} ms"
        backlog = f", oldest queued frame {self.queue_age_ms:.1f} ms old" if self.queue_age_ms is not None else ""
        tail = f", p99 {self.p99_ms:.1f} ms" if self.p99_ms is not None else ""
        return (
            f"scheduler: {verb} to rung {self.rung} ({self.name}): {why}end-to-end p95 {p95}{tail}{backlog} "
            f"against a budget of {self.budget_ms:.0f} ms"
        )

    def to_json(self) -> dict[str, object]:
        record: dict[str, object] = {
            "time_s": round(self.time_s, 3),
            "rung": self.rung,
            "name": self.name,
            "direction": self.direction,
            "p95_ms": self.p95_ms,
        }
        if self.pressure:
            record["pressure"] = self.pressure
        if self.queue_age_ms is not None:
            record["queue_age_ms"] = self.queue_age_ms
        if self.p99_ms is not None:
            record["p99_ms"] = self.p99_ms
        return record


class QualityController:
    """Latencies in, rung changes out; see the module docstring for the rules."""

    def __init__(
        self,
        budget_ms: float,
        ladder: tuple[str, ...] = DEFAULT_LADDER,
        *,
        window_s: float = WINDOW_S,
        down_cooldown_s: float = DOWN_COOLDOWN_S,
        climb_after_s: float = CLIMB_AFTER_S,
        climb_margin: float = CLIMB_MARGIN,
        climb_busy: float = CLIMB_BUSY,
        climb_growth: tuple[float, ...] | None = None,
    ):
        if budget_ms <= 0:
            raise ValueError(f"latency budget must be > 0 ms, got {budget_ms}")
        if not ladder:
            raise ValueError("the quality ladder needs at least one rung")
        self.budget_ms = budget_ms
        self.ladder = tuple(ladder)
        self.window_s = window_s
        self.down_cooldown_s = down_cooldown_s
        self.climb_after_s = climb_after_s
        self.climb_margin = climb_margin
        self.climb_busy = climb_busy
        # Per rung: how many times the frames a stage works on grow when climbing out of it (a
        # rung that halves the source rate doubles the work when left); 1 where it is not known.
        growth = tuple(climb_growth) if climb_growth is not None else (1.0,) * len(self.ladder)
        if len(growth) != len(self.ladder) or any(g < 1.0 for g in growth):
            raise ValueError(f"climb_growth needs one factor >= 1 per rung, got {growth}")
        self.climb_growth = growth
        self.rung = 0
        self._busy: deque[tuple[float, float]] = deque()  # (time s, busiest stage's share of the frame time)
        self.changes: list[RungChange] = []
        self._samples: deque[tuple[float, float]] = deque()  # (time s, latency ms)
        self._last_change_s = -float("inf")
        self._margin_since_s: float | None = None
        self._previous: float | None = None  # the measure at the last decision, to see a backlog draining
        self._queue_age: tuple[float, float] | None = None  # (time s, oldest queued frame's age ms), latest
        self._climb_wait = [climb_after_s] * len(self.ladder)  # per target rung; doubled when a climb fails
        self._last_climb: tuple[float, int] | None = None  # (time, rung climbed into)
        self._last_down_s = -float("inf")  # the last step down, to forget old failed climbs

    @property
    def rung_name(self) -> str:
        return self.ladder[self.rung]

    def observe(self, time_s: float, latency_ms: float, busy: float | None = None) -> None:
        """One delivered frame's end-to-end latency, at the time it was delivered, and optionally how
        busy the busiest stage was (its time on this frame over the time between frames)."""
        self._samples.append((time_s, latency_ms))
        if busy is not None:
            self._busy.append((time_s, busy))

    def observe_busy(self, time_s: float, busy: float) -> None:
        """How busy the busiest stage was over the last control period (its share of the wall time)."""
        self._busy.append((time_s, busy))

    def observe_queue_age(self, time_s: float, age_ms: float) -> None:
        """The age since capture of the oldest frame waiting in any stage's queue (0: all empty)."""
        self._queue_age = (time_s, age_ms)

    def queue_age_ms(self, now_s: float) -> float | None:
        """The latest queue age reported within the window, else None."""
        if self._queue_age is None or self._queue_age[0] < now_s - self.window_s:
            return None
        return self._queue_age[1]

    def climb_wait_s(self, rung: int) -> float:
        """How long a sustained margin must last before climbing into `rung` (grows when climbs fail)."""
        return self._climb_wait[rung]

    def busy(self, now_s: float) -> float | None:
        """Mean busy fraction of the busiest stage over the window, or None when not reported."""
        while self._busy and self._busy[0][0] < now_s - self.window_s:
            self._busy.popleft()
        return sum(b for _, b in self._busy) / len(self._busy) if self._busy else None

    def p95_ms(self, now_s: float) -> float | None:
        """p95 over the window, or None with too few frames to say."""
        latencies = self._window(now_s)
        return float(np.percentile(latencies, 95)) if latencies is not None else None

    def _window(self, now_s: float) -> np.ndarray | None:
        """The latencies in the window (ms), or None with too few frames to say."""
        while self._samples and self._samples[0][0] < now_s - self.window_s:
            self._samples.popleft()
        if len(self._samples) < MIN_SAMPLES:
            return None
        return np.fromiter((latency for _, latency in self._samples), dtype=np.float64, count=len(self._samples))

    def decide(self, now_s: float, pressure: str | None = None) -> RungChange | None:
        """Maybe one rung change (already applied to `rung`), else None.

        `pressure` names a reason to step down that latency does not show (a GPU near its memory
        or temperature limit): it steps down as over-budget latency does, and blocks climbing.
        """
        latencies = self._window(now_s)
        p95, p99 = (float(p) for p in np.percentile(latencies, (95, 99))) if latencies is not None else (None, None)
        if now_s - self._last_down_s >= CLIMB_WAIT_RESET_S:
            self._climb_wait = [self.climb_after_s] * len(self.ladder)
        if pressure is not None:
            self._margin_since_s = None
            # Heat and memory answer a step slowly: give each step time to show before the next.
            if self.rung + 1 < len(self.ladder) and now_s - self._last_change_s >= PRESSURE_COOLDOWN_S:
                return self._move(now_s, +1, p95, pressure)
            return None
        age = self.queue_age_ms(now_s)
        if p95 is None and age is None:
            return None
        # A growing backlog counts as latency already: its frames will be that late, or later.
        measure = max(m for m in (p95, age) if m is not None)
        backlog = age if age is not None and (p95 is None or age > p95) else None
        previous, self._previous = self._previous, measure
        tail_late = latencies is not None and self._tail_late(latencies)
        if measure > self.budget_ms or tail_late:
            self._margin_since_s = None
            tail = p99 if p99 is not None and p99 > self.budget_ms else None
            if self._climb_failed(now_s):  # a climb that does not hold is undone at once
                return self._move(now_s, +1, p95, queue_age_ms=backlog, p99_ms=tail)
            # No second step before the first one has been measured, nor while the backlog drains
            # (a tail alone is no backlog: it is measured afresh after each step).
            draining = previous is None or (measure > self.budget_ms and measure < IMPROVING * previous)
            cooled = now_s - self._last_change_s >= self.down_cooldown_s
            if self.rung + 1 < len(self.ladder) and cooled and not draining:
                return self._move(now_s, +1, p95, queue_age_ms=backlog, p99_ms=tail)
            return None
        busy = self.busy(now_s)
        if p95 is None:  # a queue age alone, within budget, is not enough to climb on
            return None
        room = busy is None or busy * self.climb_growth[self.rung] < self.climb_busy  # busy after the climb
        if measure < self.climb_margin * self.budget_ms and room:
            if self._margin_since_s is None:
                self._margin_since_s = now_s
            if self.rung > 0 and now_s - self._margin_since_s >= self._climb_wait[self.rung - 1]:
                return self._move(now_s, -1, p95)
        else:
            self._margin_since_s = None  # within budget but no margin: stay
        return None

    def _tail_late(self, latencies: np.ndarray) -> bool:
        """Over 1% of the window's frames late, and more than one: the p99 is over the budget, and
        not for one frame alone (a single stall in a short window is no trend to act on)."""
        late = int(np.count_nonzero(latencies > self.budget_ms))
        return late > max(1.0, TAIL_SHARE * len(latencies))

    def reset_window(self) -> None:
        """Forget the measurements so far (taken under other conditions, e.g. another budget)."""
        self._samples.clear()
        self._busy.clear()
        self._previous = None
        self._queue_age = None
        self._margin_since_s = None

    def _climb_failed(self, now_s: float) -> bool:
        """The last change was a climb into the current rung, made just now, and it is over budget already."""
        return (
            self._last_climb is not None
            and self._last_climb[1] == self.rung
            and self._last_change_s == self._last_climb[0]
            and now_s - self._last_change_s <= FAILED_CLIMB_S
        )

    def _move(
        self,
        now_s: float,
        step: int,
        p95: float | None,
        pressure: str | None = None,
        *,
        queue_age_ms: float | None = None,
        p99_ms: float | None = None,
    ) -> RungChange:
        if step > 0 and self._last_climb is not None:
            climbed_at, into = self._last_climb
            if into == self.rung and now_s - climbed_at <= FAILED_CLIMB_S:
                # That climb did not hold: wait longer before trying it again, within a bound.
                self._climb_wait[into] = min(2 * self._climb_wait[into], max(MAX_CLIMB_WAIT_S, self.climb_after_s))
        if step > 0:
            self._last_down_s = now_s
        self._last_climb = (now_s, self.rung + step) if step < 0 else self._last_climb
        self.rung += step
        change = RungChange(
            now_s,
            self.rung,
            self.rung_name,
            "down" if step > 0 else "up",
            round(p95, 2) if p95 is not None else None,
            self.budget_ms,
            pressure,
            round(queue_age_ms, 2) if queue_age_ms is not None else None,
            round(p99_ms, 2) if p99_ms is not None else None,
        )
        self.changes.append(change)
        self._last_change_s = now_s
        self.reset_window()  # measured at the old rung
        return change
