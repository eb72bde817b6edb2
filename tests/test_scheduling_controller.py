"""The quality controller against a simulated pipeline: over budget it steps down fast, with room it climbs back slowly.

The plant is a single queue at 30 fps whose service time is a base cost × the offered load,
divided by each rung's speed-up (a rough model of skipping detections, shrinking inputs,
lowering precision and shedding a stage). As in a live run, a frame that has already waited
longer than the budget when its turn comes is dropped, not served (age-based dropping), so the
queue cannot grow without bound. No timing of real code: the same numbers every run.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.config import CLIMB_AFTER_S, CONTROL_PERIOD_S
from pipeline.scheduling.controller import CLIMB_WAIT_RESET_S, MAX_CLIMB_WAIT_S, QualityController
from pipeline.scheduling.ladder import DEFAULT_LADDER

FPS = 30
BUDGET_MS = 50.0
BASE_MS = 25.0  # service time at load 1, full quality: within the 33 ms a frame has
SPEED_UP = (1.0, 1.4, 1.8, 2.3, 2.9, 3.6, 4.5, 6.0, 8.0, 10.0)  # per rung of the default ladder


def simulate(controller: QualityController, loads: list[tuple[float, float]], seed: int = 0, report_busy: bool = True):
    """Run (seconds, load) phases; returns per-frame (delivery time s, latency ms, rung) and the changes."""
    rng = np.random.default_rng(seed)
    frames, finish, index, next_decision = [], 0.0, 0, 0.0
    start_s = 0.0
    for seconds, load in loads:
        end_s = start_s + seconds
        while index / FPS < end_s:
            arrival = index / FPS
            index += 1
            begin = max(arrival, finish)
            if (begin - arrival) * 1000 > BUDGET_MS:
                continue  # too old to make its deadline: dropped before the work
            service = BASE_MS * load / SPEED_UP[controller.rung] * rng.uniform(0.9, 1.1) / 1000
            finish = begin + service
            latency_ms = (finish - arrival) * 1000
            frames.append((finish, latency_ms, controller.rung))
            controller.observe(finish, latency_ms, busy=service * FPS if report_busy else None)
            while next_decision <= finish:
                controller.decide(next_decision)
                next_decision += CONTROL_PERIOD_S
        start_s = end_s
    return frames


def p99_after(frames, after_s: float, before_s: float = float("inf")) -> float:
    return float(np.percentile([lat for t, lat, _ in frames if after_s <= t < before_s], 99))


@pytest.mark.parametrize("load", [2.0, 4.0])
def test_overload_brings_p99_back_under_budget_within_ten_seconds_and_keeps_it(load):
    controller = QualityController(BUDGET_MS)
    frames = simulate(controller, [(60.0, load)])
    assert p99_after(frames, 0.0, 2.0) > BUDGET_MS  # it was over budget
    for start in (10.0, 20.0, 30.0, 40.0):  # every later stretch holds the budget
        assert p99_after(frames, start, start + 20.0) <= BUDGET_MS, start
    assert controller.rung > 0


def test_at_full_capacity_nothing_changes():
    controller = QualityController(BUDGET_MS)
    simulate(controller, [(20.0, 1.0)])
    assert controller.changes == []


def test_when_the_load_goes_the_ladder_climbs_back_to_full_quality():
    controller = QualityController(BUDGET_MS)
    frames = simulate(controller, [(20.0, 3.0), (60.0, 0.5)])
    assert max(rung for _, _, rung in frames) >= 3
    assert controller.rung == 0 and controller.rung_name == "full"
    ups = [c for c in controller.changes if c.direction == "up"]
    assert all(b.time_s - a.time_s >= 3.0 for a, b in itertools.pairwise(ups))  # one step per 3 s at most


def test_a_steady_load_does_not_make_the_ladder_oscillate():
    """With the busiest stage's load reported, the ladder settles and stays; see the next test without it."""
    controller = QualityController(BUDGET_MS)
    simulate(controller, [(120.0, 2.0)])
    assert len(controller.changes) <= 4
    assert not [c for c in controller.changes if c.time_s > 10.0]


def test_on_latency_alone_failed_climbs_come_ever_more_rarely():
    """Without the busy fraction a climb into a rung that cannot hold is tried, undone at once, and the
    wait before the next try doubles."""
    controller = QualityController(BUDGET_MS)
    simulate(controller, [(120.0, 2.0)], report_busy=False)
    early = [c for c in controller.changes if c.time_s < 60.0]
    assert len(controller.changes) - len(early) <= len(early) // 2  # the second minute: half the changes or fewer
    tries = [c.time_s for c in controller.changes if c.direction == "up" and c.rung == 1]
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert len(gaps) >= 2 and all(later > earlier for earlier, later in itertools.pairwise(gaps[:3]))


def test_the_wait_after_failed_climbs_stops_growing_and_is_forgotten_after_a_good_spell():
    """Doubling without a bound would, after a bad hour, keep quality low for hours once the load went."""
    controller = QualityController(BUDGET_MS)
    simulate(controller, [(400.0, 2.0)], report_busy=False)
    tries = [c.time_s for c in controller.changes if c.direction == "up"]
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert max(controller.climb_wait_s(rung) for rung in range(len(DEFAULT_LADDER))) == MAX_CLIMB_WAIT_S
    assert len(gaps) >= 8 and max(gaps) <= MAX_CLIMB_WAIT_S + 5.0  # a try at least every ~half minute
    controller = QualityController(BUDGET_MS)
    simulate(controller, [(200.0, 2.0)], report_busy=False)

    def waits() -> list[float]:
        return [controller.climb_wait_s(rung) for rung in range(len(DEFAULT_LADDER))]

    assert max(waits()) > CLIMB_AFTER_S  # it remembers the failed climbs
    last_down_s = max(c.time_s for c in controller.changes if c.direction == "down")
    controller.decide(last_down_s + CLIMB_WAIT_RESET_S - 1.0)
    assert max(waits()) > CLIMB_AFTER_S
    controller.decide(last_down_s + CLIMB_WAIT_RESET_S)
    assert waits() == [CLIMB_AFTER_S] * len(DEFAULT_LADDER)


def test_a_step_forced_by_the_gpu_without_latencies_says_the_p95_is_unknown():
    controller = QualityController(BUDGET_MS)
    change = controller.decide(1.0, pressure="GPU at 91 °C (limit 83 °C)")
    assert change is not None and change.p95_ms is None
    assert "end-to-end p95 unknown" in change.describe() and "0.0 ms" not in change.describe()
    assert change.to_json()["p95_ms"] is None


def test_each_change_says_what_caused_it():
    controller = QualityController(BUDGET_MS)
    simulate(controller, [(5.0, 4.0)])
    first = controller.changes[0]
    assert first.direction == "down" and first.rung == 1 and first.name == DEFAULT_LADDER[1]
    assert first.p95_ms > BUDGET_MS
    assert (
        "lowering quality to rung 1 (inference_every_2)" in first.describe() and "budget of 50 ms" in first.describe()
    )


def test_no_decision_without_enough_frames_and_no_step_past_the_last_rung():
    controller = QualityController(BUDGET_MS, ladder=("full", "less"))
    for i in range(5):
        controller.observe(i * 0.03, 500.0)
    assert controller.decide(0.2) is None  # five frames are too few to judge
    simulate(controller, [(10.0, 8.0)])
    assert controller.rung == 1 and len(controller.changes) == 1


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="budget"):
        QualityController(0)
    with pytest.raises(ValueError, match="ladder"):
        QualityController(50, ladder=())


def test_a_growing_backlog_steps_down_before_any_late_frame_is_delivered():
    """Nothing gets out of a stuck stage, so no latency is measured; the queue's oldest frame shows it."""
    controller = QualityController(BUDGET_MS)
    assert controller.decide(0.25) is None
    ages = [0.0, 40.0, 80.0, 120.0, 160.0, 200.0]
    changes = []
    for tick, age in enumerate(ages, start=2):
        controller.observe_queue_age(tick * CONTROL_PERIOD_S, age)
        changes.append(controller.decide(tick * CONTROL_PERIOD_S))
    steps = [c for c in changes if c is not None]
    assert steps and all(c.direction == "down" for c in steps)
    first = steps[0]
    assert first.p95_ms is None and first.queue_age_ms > BUDGET_MS
    assert "oldest queued frame 80.0 ms old" in first.describe()


def test_a_backlog_within_budget_but_without_margin_holds_the_climb():
    def climbed(queue_age_ms: float) -> bool:
        controller = QualityController(BUDGET_MS)
        controller.rung = 1
        for i in range(200):  # 10 s of quick frames: a p95 well within the margin
            t = i / 20
            controller.observe(t, 10.0)
            if i % 5 == 0:
                controller.observe_queue_age(t, queue_age_ms)
                controller.decide(t)
        return controller.rung == 0

    assert climbed(5.0)
    assert not climbed(0.9 * BUDGET_MS)  # frames queue for most of the budget: no room to climb into


def test_a_late_tail_under_a_p95_within_budget_steps_down_and_blocks_the_climb():
    """The target is a p99: 3% of frames late leave the p95 within budget, but not the p99."""

    def run(late_every: int | None = None, late_at: int | None = None) -> QualityController:
        controller = QualityController(BUDGET_MS)
        controller.rung = 1
        for i in range(200):  # 10 s at 20 fps, 20 ms a frame
            t = i / 20
            late = (late_every is not None and i % late_every == 0) or i == late_at
            controller.observe(t, 1.5 * BUDGET_MS if late else 20.0)
            if i % 5 == 0 and controller.decide(t) is not None:
                break
        return controller

    tail = run(late_every=33)
    change = tail.changes[0]
    assert change.direction == "down" and change.p95_ms < BUDGET_MS < change.p99_ms
    assert f"p99 {change.p99_ms:.1f} ms" in change.describe() and change.to_json()["p99_ms"] == change.p99_ms
    climbed = run()  # without the tail the same frames make a margin: one rung up
    assert climbed.changes[0].direction == "up" and climbed.changes[0].p99_ms is None
    one_stall = run(late_at=30)  # one late frame is no trend: no step down, and the same climb
    assert [(c.direction, c.time_s) for c in one_stall.changes] == [(c.direction, c.time_s) for c in climbed.changes]


def test_a_climb_that_brings_back_thinned_frames_needs_room_for_them():
    """40% busy at 1 frame in 2: climbing would double it past `climb_busy`, so the ladder stays."""

    def climbs(growth: float) -> bool:
        controller = QualityController(BUDGET_MS, ladder=("full", "thinned"), climb_growth=(1.0, growth))
        controller.rung = 1
        for i in range(200):  # 10 s at 20 fps, well within the budget
            t = i / 20
            controller.observe(t, 20.0, busy=0.4)
            if i % 5 == 0:
                controller.decide(t)
        return controller.rung == 0

    assert climbs(1.0)
    assert not climbs(2.0)
    with pytest.raises(ValueError, match="climb_growth"):
        QualityController(BUDGET_MS, ladder=("full", "thinned"), climb_growth=(1.0,))
