"""The scheduler inside a run: deadlines on arrival, age-based drops, and the 250 ms control loop.

`QualityController` (`pipeline.scheduling.controller`) decides; this module measures for it and carries out
what it decides, so the executor only calls four hooks:

- `admit(frame)` on arrival: the frame's deadline (capture time + the latency budget), its
  `quality` annotation, and thinning: a source faster than `targets.fps`, and the
  `lower_source_fps` rungs, drop frames here, before any work. A thinned frame's sound rides on
  the next frame admitted (`frames.joined`), so the sound stages run once per frame admitted,
  not once per frame the camera makes; the thinned frame still flows to the sink as a marker,
  so order is kept. `leftover_audio()` at the end of the source is the sound still waiting.
- `is_late(frame, node)` before a stage: a frame that cannot make its deadline if this stage
  and the slowest path after it cost what they have lately (+ 20%) is dropped — but only when
  a newer frame is already waiting there (the newest frame wins; the stage never goes idle
  for want of a frame that would have made it). "Lately" is each stage's mean over the last
  control period, or over its last `RECENT_CALLS` calls when that is higher: on a CPU the
  stages' calls can all slow down at once for a moment (side work, or the avatar starting to
  talk, taking the interpreter lock more often), and a frame judged by the costs of the last
  tick would then go on, and arrive late, where one judged by the last few calls makes way
  for the newer frame behind it.
- `delivered(frame, now)` at the sink: the end-to-end latency the controller watches. A frame
  dropped for being late (or reclaimed by a full ring) counts as a miss, a quarter over the
  budget, so a run that holds its latency only by dropping still steps down.
- `control()`, a task: every `control_period_s` it reads each stage's busy share and mean cost
  since the last tick, the share of the machine's cores the process used (side work included:
  a stage can look idle while the cores are full, and climbing then only brings a burst of late
  frames), the age of the oldest frame waiting in any stage's queue, GPU memory
  and temperature, asks the controller, applies the new rung
  to every stage (`Stage.apply_quality`), to shedding and to the sink, logs the change in one
  line, and adds a point to the timeline.

Batch runs (files, not `--realtime`) get no scheduler unless asked (`quality.mode: auto`, or
`--quality auto`); even then they drop nothing: they only lower quality.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.config import GraphConfig
from pipeline.device import cpu_cores
from pipeline.device_profiles import DeviceProfile
from pipeline.frames import AudioChunk, Frame, joined
from pipeline.gpu_health import GpuHealth, pressure
from pipeline.graph import Graph
from pipeline.metrics import RunMetrics
from pipeline.ringbuffer import RING_FULL
from pipeline.scheduling.controller import QualityController
from pipeline.scheduling.ladder import FULL, QualitySettings, effective_ladder, settings_at
from pipeline.side_work import SideWork
from pipeline.stage import StageRunner

log = logging.getLogger(__name__)

LATE = "late"  # drop reason: could not make its deadline, and a newer frame was waiting
THINNED = "lower_source_fps"  # drop reason: a `lower_source_fps` rung admits only 1 frame in 2 (3, 4)
OVER_TARGET = "over_target_fps"  # drop reason: the source is faster than targets.fps
MISSES = frozenset({LATE, RING_FULL})  # drops that mean "behind", and count against the budget
MISS_FACTOR = 1.25  # a missed frame counts as this × the budget
COST_MARGIN = 1.2  # a frame's remaining path is costed at this × the recent mean (costs vary frame to frame)
RECENT_CALLS = 4  # a stage's last calls, whose mean costs a frame's path when it is above the tick's mean
TIMELINE_EVERY_S = 1.0  # a timeline point at least this often (and at every change)
TIMELINE_MAX = 10_000  # points kept: hours of a live session


@dataclass(eq=False)
class Watched:
    """A stage as the control loop sees it: its runner, and what it cost since the last tick."""

    name: str
    runner: StageRunner
    workers: int
    priority: int
    children: list[Watched]
    mean_ns: int = 0  # mean cost per frame over the last tick in which it ran
    _total_ns: int = 0
    _count: int = 0


def source_rate_growth(ladder: tuple[str, ...]) -> tuple[float, ...]:
    """Per rung, how many times the frames admitted grow when climbing out of it: 2 out of 1 in 2,
    1.5 out of 1 in 3 into 1 in 2, and 1 for rungs that leave the rate alone."""
    divisors = [settings_at(ladder, rung).fps_divisor for rung in range(len(ladder))]
    return (1.0, *(divisors[rung] / divisors[rung - 1] for rung in range(1, len(ladder))))


def scheduler_enabled(config: GraphConfig, *, live: bool) -> bool:
    mode = config.quality.mode
    return mode == "auto" or (mode == "live" and live)


class FrameScheduler:
    """Deadlines, drops by age and the quality control loop for one run; see the module docstring."""

    def __init__(
        self,
        graph: Graph,
        runners: dict[str, StageRunner],
        metrics: RunMetrics,
        *,
        live: bool,
        source_fps: float | None,
        sink: Any,
        gpu: GpuHealth | None = None,
        profile: DeviceProfile | None = None,
        queue_age_ns: Callable[[int], int] | None = None,
        cpu_seconds: Callable[[], float] | None = time.process_time,
        side_work: SideWork | None = None,
    ):
        config = graph.config
        self.config = config
        self.quality = quality = config.quality
        self.metrics = metrics
        self.live = live
        self.sink = sink
        self.gpu = gpu
        self.side_work = side_work  # the run's side jobs: an inference stage's follow its cadence
        self.queue_age_ns = queue_age_ns  # now (monotonic ns) → age of the oldest frame queued at any stage
        self.cpu_seconds = cpu_seconds  # the process's CPU time so far, every thread's (None: not read)
        self._cpu_s = cpu_seconds() if cpu_seconds is not None else 0.0
        self._cores = cpu_cores()  # those granted to this process (a Ray task's), else the machine's
        self.gpu_memory_max = quality.gpu_memory_max or (profile.gpu_memory_max if profile else 0.90)
        self.gpu_temperature_max_c = quality.gpu_temperature_max_c or (
            profile.gpu_temperature_max_c if profile else 83.0
        )
        self.deadlines = live  # a file run drops nothing
        self._source_fps = source_fps
        self.set_target_fps(config.targets.fps)  # also starts the arrival count
        self._admitted = 0
        self._carried: AudioChunk | None = None  # thinned frames' sound, for the next frame admitted
        nodes = graph.nodes
        watched: dict[str, Watched] = {}
        for name in reversed(list(nodes)):  # children first, so each node can link them
            node = nodes[name]
            watched[name] = Watched(
                name,
                runners[name],
                node.spec.workers,
                node.spec.priority,
                [watched[child] for child in node.children],
            )
        self.stages = [watched[name] for name in nodes]  # topological order
        self.by_name = watched
        priorities = {stage.priority for stage in self.stages}
        lowest = min(priorities, default=0)
        self._sheddable = [s for s in self.stages if s.priority == lowest] if len(priorities) > 1 else []
        self._resizes_output = bool(getattr(sink, "resizable_output", False))
        knobs = set().union(*(node.stage_type.quality_knobs for node in nodes.values()))
        if any(node.stage_type.inference for node in nodes.values()):
            knobs.add("inference_every")  # the runner keeps the cadence of every inference stage
        self._inference = [s for s in self.stages if s.runner.inference]
        self.ladder = effective_ladder(
            self.quality.ladder,
            felt=knobs,
            can_shed=bool(self._sheddable),
            can_resize_output=self._resizes_output,
            live=live,
        )
        self.controller = QualityController(
            config.targets.latency_ms,
            self.ladder,
            window_s=self.quality.window_s,
            down_cooldown_s=self.quality.down_cooldown_s,
            climb_after_s=self.quality.climb_after_s,
            climb_margin=self.quality.climb_margin,
            climb_busy=self.quality.climb_busy,
            climb_growth=source_rate_growth(self.ladder),
        )
        self.settings: QualitySettings = FULL
        self._annotation = {"rung": FULL.rung}
        self._started_s = time.monotonic()
        self.timeline: deque[tuple[float, str, float | None, float]] = deque(maxlen=TIMELINE_MAX)
        self._last_point_s = -float("inf")
        self.pressure_steps = 0

    def set_budget(self, latency_ms: float) -> None:
        """A new latency target from now on (a command at run time); the window starts afresh."""
        if latency_ms <= 0:
            raise ValueError(f"latency budget must be > 0 ms, got {latency_ms}")
        self.controller.budget_ms = latency_ms
        self.controller.reset_window()

    def set_target_fps(self, fps: float) -> None:
        """A new frame-rate target from now on: a live source faster than `fps` is thinned to it."""
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"target fps must be a finite number > 0, got {fps}")
        self.target_fps = fps
        # Thinning: keep frame i when floor((i+1)·keep) > floor(i·keep); counting restarts so
        # the new ratio holds from the next frame, whatever the old one had reached.
        source_fps = self._source_fps
        self._keep = min(1.0, fps / source_fps) if self.live and source_fps else 1.0
        self._arrived = 0

    @property
    def budget_ms(self) -> float:
        """The latency target: the controller's, which a command may change at run time."""
        return self.controller.budget_ms

    # ----------------------------------------------------------------- hooks on the data path

    def admit(self, frame: Frame) -> None:
        """On arrival, before any stage: deadline, quality annotation, thinning."""
        frame.annotations["quality"] = self._annotation
        if not self.deadlines:
            return
        frame.deadline_ns = frame.capture_ns + int(self.controller.budget_ms * 1e6)
        arrived, self._arrived = self._arrived, self._arrived + 1
        if self._keep < 1.0 and int((arrived + 1) * self._keep) == int(arrived * self._keep):
            self._thin(frame, OVER_TARGET)
            return
        admitted, self._admitted = self._admitted, self._admitted + 1
        if admitted % self.settings.fps_divisor:
            self._thin(frame, THINNED)
        elif self._carried is not None:
            frame.audio, self._carried = joined(self._carried, frame.audio), None

    def _thin(self, frame: Frame, reason: str) -> None:
        """Drop `frame` on arrival and keep its sound for the next frame admitted."""
        frame.drop(reason)
        if frame.audio is not None:
            self._carried, frame.audio = joined(self._carried, frame.audio), None
            frame.sound_passed_on = True

    def leftover_audio(self) -> AudioChunk | None:
        """The sound of frames thinned since the last one admitted (once): at the end of the source
        it goes out as a frame of sound alone."""
        carried, self._carried = self._carried, None
        return carried

    def is_late(self, frame: Frame, stage: Watched, now_ns: int) -> bool:
        """Whether `frame` would miss its deadline going through `stage` and on (the caller has
        checked that a newer frame waits behind it)."""
        return now_ns + int(_path_ns(stage) * COST_MARGIN) > frame.deadline_ns

    def delivered(self, frame: Frame, now_ns: int) -> None:
        """At the sink: the latency the controller watches (misses count over the budget)."""
        latency_ms = (now_ns - frame.capture_ns) / 1e6
        reason = frame.why_dropped
        if reason is None:
            self.controller.observe(now_ns / 1e9, latency_ms)
        elif reason in MISSES:
            self.controller.observe(now_ns / 1e9, max(latency_ms, MISS_FACTOR * self.controller.budget_ms))

    # ----------------------------------------------------------------- the control loop

    async def control(self) -> None:
        """Every control period: measure, decide, apply. Runs as a task for the whole run."""
        period_s = self.quality.control_period_s
        frames_out = self.metrics.frames_out
        last_s = time.monotonic()
        while True:
            await asyncio.sleep(period_s)
            now_s = time.monotonic()
            elapsed_s = max(now_s - last_s, 1e-6)
            fps = (self.metrics.frames_out - frames_out) / elapsed_s
            frames_out, last_s = self.metrics.frames_out, now_s
            self.tick(now_s, elapsed_s, fps)

    def tick(self, now_s: float, elapsed_s: float, fps: float) -> None:
        """One control step (separate from the timer, for tests)."""
        busiest = self._measure_stages(elapsed_s)
        if self.cpu_seconds is not None:
            cpu_s, self._cpu_s = self._cpu_s, self.cpu_seconds()
            cores = (self._cpu_s - cpu_s) / (elapsed_s * self._cores)
            busiest = cores if busiest is None else max(busiest, cores)
        if busiest is not None:
            self.controller.observe_busy(now_s, busiest)
        if self.queue_age_ns is not None:
            self.controller.observe_queue_age(now_s, self.queue_age_ns(int(now_s * 1e9)) / 1e6)
        why = None
        if self.gpu is not None:
            why = pressure(
                self.gpu.read(),
                memory_max=self.gpu_memory_max,
                temperature_max_c=self.gpu_temperature_max_c,
            )
        change = self.controller.decide(now_s, pressure=why)
        if change is not None:
            self.pressure_steps += change.pressure is not None
            self.metrics.rung_changed(change.direction, change.reason)
            log.info("%s", change.describe())
            self.apply(settings_at(self.ladder, change.rung))
        if change is not None or now_s - self._last_point_s >= TIMELINE_EVERY_S:
            p95 = self.controller.p95_ms(now_s) if change is None else change.p95_ms
            p95 = round(p95, 2) if p95 is not None else None
            self.timeline.append((round(now_s - self._started_s, 3), self.controller.rung_name, p95, round(fps, 2)))
            self._last_point_s = now_s

    def _measure_stages(self, elapsed_s: float) -> float | None:
        """Update each stage's mean cost; return the busiest stage's busy share."""
        self.metrics.fold()
        busiest = None
        for stage in self.stages:
            latency = stage.runner.stats.latency
            spent, count = latency.total_ns - stage._total_ns, latency.count - stage._count
            stage._total_ns, stage._count = latency.total_ns, latency.count
            if count:
                stage.mean_ns = spent // count
                share = spent / (elapsed_s * 1e9 * stage.workers)
                busiest = share if busiest is None else max(busiest, share)
        return busiest

    def apply(self, settings: QualitySettings) -> None:
        """Put every knob to `settings`: stages, shedding, sink. A stage that fails to follow is
        reported and keeps its old setting; the run goes on."""
        self.settings = settings
        self._annotation = {"rung": settings.rung}
        for stage in self.stages:
            try:
                stage.runner.stage.apply_quality(settings)
            except Exception as exc:
                log.warning(
                    "%s: cannot apply quality rung %s (%s: %s)", stage.name, settings.rung, type(exc).__name__, exc
                )
        for stage in self._inference:
            stage.runner.set_cadence(settings.inference_every)
            if self.side_work is not None:
                self.side_work.set_cadence(stage.name, settings.inference_every)
        for stage in self._sheddable:
            stage.runner.shed = settings.shed
        if self._resizes_output:
            self.sink.set_output_scale(settings.output_scale)

    # ----------------------------------------------------------------- report

    def report(self) -> dict[str, Any]:
        changes = self.controller.changes
        return {
            "enabled": True,
            "budget_ms": self.budget_ms,
            "target_fps": self.target_fps,
            "drops_late_frames": self.deadlines,
            "ladder": list(self.ladder),
            "rung": self.controller.rung_name,
            "changes": len(changes),
            "steps_down": sum(c.direction == "down" for c in changes),
            "steps_up": sum(c.direction == "up" for c in changes),
            "steps_for_gpu_pressure": self.pressure_steps,
            "events": [{**change.to_json(), "time_s": round(change.time_s - self._started_s, 3)} for change in changes],
            "timeline_columns": ["time_s", "rung", "p95_ms", "fps"],
            "timeline": [list(point) for point in self.timeline],
            "shed": [stage.name for stage in self._sheddable],
        }


def _path_ns(stage: Watched) -> int:
    """What `stage` and the slowest path from it to the sink cost lately: per stage, the mean over
    the last tick or over its last `RECENT_CALLS` calls, whichever is higher."""
    recent = stage.runner.stats.latency.recent_mean_ns(RECENT_CALLS) or 0
    return max(stage.mean_ns, recent) + max((_path_ns(child) for child in stage.children), default=0)
