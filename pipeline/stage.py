"""Stages: what a stage does, kept apart from when it runs.

A stage's one contract is `async process(frame) -> annotation | None`. The graph decides when
to call it; the stage never sleeps, polls or drops frames itself. `StageRunner` wraps each call
with timing and isolation: a stage that raises costs that frame its annotation, not the run.
For an inference stage (`Stage.inference`) the runner also keeps the scheduler's cadence: at
"infer on every Nth frame" it calls the stage on one frame in N, and the frames between carry
the last result, marked `"held": true`, so a new model stage is slowed by the ladder with no
code of its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from pipeline.annotation import Annotation, missing
from pipeline.device import Lane
from pipeline.frames import Frame
from pipeline.metrics import StageStats
from pipeline.scratch import ScratchPool
from pipeline.side_work import DEFAULT_MAX_LAG, JobKind, SideJob, SideWork

if TYPE_CHECKING:
    from pipeline.io.base import StreamInfo
    from pipeline.scheduling.ladder import QualitySettings

log = logging.getLogger(__name__)

DEFAULT_MAX_CONSECUTIVE_FAILURES = 5
HELD_NOTHING = "held: no result yet"  # why a frame the cadence skipped has no annotation
_clock_ns = time.perf_counter_ns


class StageOptions(BaseModel):
    """Base of every stage's options; unknown keys are config errors, not silent no-ops."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(slots=True)
class StageContext:
    """What a stage is given at setup: where it runs and where its inputs come from."""

    name: str
    device: torch.device
    lane: Lane
    scratch: ScratchPool
    parents: tuple[str, ...] = ()  # the nodes this stage runs after
    inputs: dict[str, str] = field(default_factory=dict)  # input port (stage type) → node name
    stream: StreamInfo | None = None  # the source's picture size, pixel format, colour and audio
    # The services the stage uses (`Stage.uses`) → the node offering each, as the graph checked it.
    services: dict[str, str] = field(default_factory=dict)
    # What the run's stages offer, by (node name, service), the same dict for every stage of a run.
    offered: dict[tuple[str, str], Any] = field(default_factory=dict)
    # The model manager (pipeline.model_manager.manager.ModelManager) stages get their models from; shared by
    # every session of the process. None: a stage on its own makes one for its device.
    models: Any = None
    # A live source (camera, peer, stream): frames have deadlines.
    live: bool = False
    # The run's side jobs (pipeline.side_work); a context made on its own runs them in line.
    side_work: SideWork = field(default_factory=SideWork)

    @classmethod
    def standalone(cls, stage: Stage, device: torch.device | None = None, **fields: Any) -> StageContext:
        """A context for `stage` on its own, outside any graph (a test, a bench, a notebook): on
        `device` (the CPU by default), each of its input ports read from an annotation named like
        the port, its side jobs run in line unless `side_work` says otherwise. `fields` set any
        other field (`stream`, `services`, `offered`, `models`, `live`, …)."""
        device = device or torch.device("cpu")
        fields.setdefault("inputs", {port: port for port in stage.inputs})
        return cls(stage.name, device, Lane(stage.name, device), ScratchPool(device), **fields)

    def offer(self, service: str, provider: Any) -> None:
        """Make `provider` the service the stage declared in `Stage.offers` (at setup)."""
        self.offered[(self.name, service)] = provider

    def service(self, service: str) -> Any:
        """The provider of a service the stage declared in `Stage.uses`; None while the stage that
        offers it has not (its setup failed, or it sets up after this one)."""
        if service not in self.services:
            raise KeyError(f"{self.name}: {service!r} is not a service this stage declared it uses")
        return self.offered.get((self.services[service], service))

    def side_job(
        self,
        work: Any,
        what: str,
        *,
        kind: JobKind,
        max_lag: int = DEFAULT_MAX_LAG,
        between_frames: bool = True,
        share: float | None = None,
    ) -> SideJob[Any]:
        """A job beside this stage's frames (or in line, as the graph says), named `<stage>.<what>`,
        its thread behind the stage's lane. See `pipeline.side_work.SideWork.job`."""
        return self.side_work.job(
            work,
            name=f"{self.name}.{what}",
            kind=kind,
            stage=self.name,
            stage_nice=self.lane.cpu_nice,
            max_lag=max_lag,
            between_frames=between_frames,
            share=share,
        )


class Stage:
    """Base of all stages. Subclasses set `type_name`, maybe `Options` and `inputs`, and `process`."""

    type_name: ClassVar[str] = ""  # key in configs, e.g. "frame_stats"
    Options: ClassVar[type[StageOptions]] = StageOptions
    # The shape of what `process` returns (a TypedDict derived from `Annotation`), checked in tests.
    Annotation: ClassVar[type] = Annotation
    inputs: ClassVar[tuple[str, ...]] = ()  # stage types whose annotations this stage reads
    # Services between stages beyond annotations (e.g. "speech": the voice stage's queue of lines
    # to say, which the context stage fills). The graph checks that each one used is offered by
    # exactly one stage before the first frame; stages reach them through `StageContext.service`.
    offers: ClassVar[tuple[str, ...]] = ()
    uses: ClassVar[tuple[str, ...]] = ()
    # Stages that work on the sound run on dropped frames too: a drop costs a picture, never audio.
    # Not on a frame whose sound was passed on to the next frame (thinned on arrival): that one carries it.
    # Such a stage never reads the pixels (a reclaimed frame's slot already holds another picture), so
    # it does not pin the frame's ring slot either: a frame it has seen can still be dropped or
    # reclaimed, and give its slot back at once.
    handles_dropped: ClassVar[bool] = False
    # The quality knobs (`QualitySettings` field names) `apply_quality` acts on: the scheduler
    # leaves out of its ladder the rungs that no stage in the graph would feel.
    quality_knobs: ClassVar[frozenset[str]] = frozenset()
    # A model's reading of the picture, which a frame may take from an earlier frame: the runner
    # holds the result between calls when the scheduler lowers the cadence (`inference_every`).
    inference: ClassVar[bool] = False

    def __init__(self, name: str, *, priority: int = 0, options: StageOptions | None = None):
        self.name = name
        self.priority = priority  # higher = more important: stream priority, shed order, service order
        self.options = options if options is not None else self.Options()
        self.ctx: StageContext | None = None

    @classmethod
    def warm_up(cls, device: torch.device) -> None:
        """Load and warm, once per process, what every instance of this type shares.

        A host that runs many sessions (the WebRTC server) calls it before the first one, so that
        session's `setup` and first frames do not pay for it while media already flows. Must be
        idempotent and thread-safe: it may run off the event loop, and more than once."""

    def setup(self, ctx: StageContext) -> None:
        """Acquire what the stage needs (models, buffers). Runs once, before the first frame."""
        self.ctx = ctx

    def counters(self) -> dict[str, Any]:
        """What the stage did over the run, for the report (`stage_counters`): JSON-able numbers
        a user would ask about (utterances heard, lines said); none by default."""
        return {}

    async def process(self, frame: Frame) -> dict[str, Any] | None:
        """Look at (or draw into) the frame; return this stage's annotation, or None."""
        raise NotImplementedError

    def apply_quality(self, settings: QualitySettings) -> None:
        """Follow the scheduler's rung from the next frame on (called between frames, on the event loop)."""

    @property
    def batch_frames(self) -> int:
        """Frames the stage may take per call when it is behind (its `batch_frames` option; 1: one at a time)."""
        return int(getattr(self.options, "batch_frames", 1))

    async def process_batch(self, frames: list[Frame]) -> list[dict[str, Any] | None]:
        """Several frames in index order, one annotation each; by default one `process` call per frame."""
        return [await self.process(frame) for frame in frames]

    def teardown(self) -> None:
        """Free what `setup` acquired. Runs once, also after an error."""

    def input_annotation(self, frame: Frame, port: str) -> dict[str, Any] | None:
        """The annotation an upstream stage of type `port` left on this frame, if it left one."""
        assert self.ctx is not None, "setup() has not run"
        found = frame.annotations.get(self.ctx.inputs[port])
        if found is None or found.get("missing"):
            return None
        return found


class ComputeStage(Stage):
    """A stage whose work blocks (torch, NumPy): `compute` runs on the stage's own lane.

    On CPU that is its own worker thread, so stages overlap; on CUDA its own stream, ordered
    after the stages it reads from by events.
    """

    async def process(self, frame: Frame) -> dict[str, Any] | None:
        ctx = self.ctx
        assert ctx is not None, "setup() has not run"
        if ctx.lane.stream is None:
            return await ctx.lane.run(self.compute, frame)
        after = [frame.events.get(parent) for parent in ctx.parents] or [frame.events.get("source")]
        result, done = await ctx.lane.run_ordered(self.compute, (frame,), after)
        frame.events[self.name] = done
        return result

    async def process_batch(self, frames: list[Frame]) -> list[dict[str, Any] | None]:
        ctx = self.ctx
        assert ctx is not None, "setup() has not run"
        if ctx.lane.stream is None:
            return await ctx.lane.run(self.compute_batch, frames)
        after = [frame.events.get(parent) for frame in frames for parent in ctx.parents] or [
            frame.events.get("source") for frame in frames
        ]
        results, done = await ctx.lane.run_ordered(self.compute_batch, (frames,), after)
        for frame in frames:
            frame.events[self.name] = done
        return results

    def compute(self, frame: Frame) -> dict[str, Any] | None:
        """The blocking work; runs off the event loop."""
        raise NotImplementedError

    def compute_batch(self, frames: list[Frame]) -> list[dict[str, Any] | None]:
        """Several frames in index order; a stage that can share work between them overrides this."""
        return [self.compute(frame) for frame in frames]


class StageRunner:
    """Calls one stage for each frame: times it, isolates its failures, disables it if it keeps failing."""

    __slots__ = (
        "_held",
        "_offered",
        "_process",
        "_record",
        "consecutive_failures",
        "every",
        "handles_dropped",
        "inference",
        "max_consecutive_failures",
        "name",
        "shed",
        "stage",
        "stats",
    )

    def __init__(
        self, stage: Stage, stats: StageStats, max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES
    ):
        self.stage = stage
        self.name = stage.name
        self.stats = stats
        self.max_consecutive_failures = max_consecutive_failures
        self.consecutive_failures = 0
        self.shed = False  # skipped by the scheduler to save its time (the lowest-priority stages)
        self.handles_dropped = stage.handles_dropped
        self.inference = stage.inference
        self.every = 1  # an inference stage is called on 1 frame in this many (the scheduler's cadence)
        # Frames with pixels offered since the cadence was set: the cadence counts these, not frame
        # indices, because the scheduler may already have thinned the indices (a source at twice
        # the target rate keeps only odd ones, and `index % 2` would then skip every frame).
        self._offered = 0
        self._held: dict[str, Any] | None = None  # the last result, carried by the frames between
        self._process = stage.process  # bound once: run() is on the hot path
        self._record = stats.latency.record

    def set_cadence(self, every: int) -> None:
        """Call an inference stage on 1 frame in `every` from the next frame on (the first is called)."""
        if every != self.every:
            self.every = every
            self._offered = 0

    def _next_is_held(self) -> bool:
        """Count a frame with pixels offered to an inference stage: whether the cadence skips it."""
        offered, self._offered = self._offered, self._offered + 1
        return offered % self.every != 0

    def _hold(self, frame: Frame) -> bool:
        """Whether the cadence skips `frame`; if so it carries the last result, marked held."""
        if not self.inference or not frame.has_image or not self._next_is_held():
            return False
        self.stats.held += 1
        self._carry(frame)
        return True

    def _carry(self, frame: Frame) -> None:
        """Give a frame the cadence skipped the last result, marked held. Its events happened
        once, on the frame that found them: a held copy carries none."""
        last = self._held
        if last is None:
            frame.annotations[self.name] = missing(HELD_NOTHING)
            return
        held = {**last, "held": True}
        if "events" in held:
            held["events"] = []
        frame.annotations[self.name] = held

    def _keep(self, annotation: dict[str, Any] | None) -> None:
        """Remember an inference stage's result for the frames the cadence will skip."""
        if self.inference and annotation is not None and not annotation.get("missing"):
            self._held = annotation

    def disable(self, reason: str) -> None:
        if self.stats.disabled is None:
            self.stats.disabled = reason
            log.warning("%s: disabled (%s)", self.name, reason)

    def _passes_by(self, frame: Frame) -> bool:
        """Whether the stage has nothing to do on `frame`: it was dropped, or reclaimed by the ring
        while it waited, and (for a stage that works on sound) its sound went on with another frame.
        A dropped frame of a stream without sound still reaches the sound stages: the avatar's
        voice keeps its clock by the frames it is given."""
        lease = frame.lease
        dropped = frame.drop_reason is not None or (lease is not None and lease.revoked)
        return dropped and not (self.handles_dropped and not frame.sound_passed_on)

    async def run(self, frame: Frame) -> None:
        """One call of the stage on one frame, timed and isolated."""
        stats = self.stats
        lease = frame.lease
        if self._passes_by(frame):
            stats.skipped += 1
            return
        if stats.disabled is not None or self.shed:
            stats.missing += 1
            frame.annotations[self.name] = missing("disabled" if stats.disabled is not None else "shed")
            return
        if self._hold(frame):
            return
        if lease is not None and not self.handles_dropped:
            lease.started = True  # from here on the ring may not reclaim it
        start = _clock_ns()
        try:
            annotation = await self._process(frame)
        except Exception as exc:  # isolation is the point: any stage bug stays in the stage
            self._record(_clock_ns() - start)
            self._failed(frame, exc)
            return
        self._record(_clock_ns() - start)
        self.consecutive_failures = 0
        if annotation is not None:
            frame.annotations[self.name] = annotation
            self._keep(annotation)

    async def run_batch(self, frames: list[Frame]) -> None:
        """One call of the stage on several frames (in index order), timed as a whole and isolated.
        Frames the cadence skips carry the result of the last frame called before them."""
        stats = self.stats
        todo = []
        in_order: list[tuple[Frame, bool]] = []  # (frame, held) for the frames called or held
        for frame in frames:
            lease = frame.lease
            if self._passes_by(frame):
                stats.skipped += 1
            elif stats.disabled is not None or self.shed:
                stats.missing += 1
                frame.annotations[self.name] = missing("disabled" if stats.disabled is not None else "shed")
            elif self.inference and frame.has_image and self._next_is_held():
                stats.held += 1
                in_order.append((frame, True))
            else:
                if lease is not None and not self.handles_dropped:
                    lease.started = True
                todo.append(frame)
                in_order.append((frame, False))
        if todo:
            await self._call_batch(todo)
        for frame, held in in_order:  # in order, so each held frame carries the result before it
            if held:
                self._carry(frame)
            else:
                self._keep(frame.annotations.get(self.name))

    async def _call_batch(self, todo: list[Frame]) -> None:
        start = _clock_ns()
        try:
            annotations = await self.stage.process_batch(todo)
            if len(annotations) != len(todo):
                raise RuntimeError(f"process_batch gave {len(annotations)} annotation(s) for {len(todo)} frame(s)")
        except Exception as exc:
            elapsed = _clock_ns() - start
            for frame in todo:
                self._record(elapsed // len(todo))
                self._failed(frame, exc)
            return
        elapsed = _clock_ns() - start
        self.consecutive_failures = 0
        for frame, annotation in zip(todo, annotations, strict=True):
            self._record(elapsed // len(todo))  # each frame's share of the call
            if annotation is not None:
                frame.annotations[self.name] = annotation

    def _failed(self, frame: Frame, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        self.stats.errors += 1
        self.stats.missing += 1
        self.consecutive_failures += 1
        frame.annotations[self.name] = missing(reason)
        if self.stats.errors == 1:
            log.warning("%s: frame %d failed (%s); the frame goes on without it", self.name, frame.index, reason)
        if self.consecutive_failures >= self.max_consecutive_failures:
            self.disable(f"{self.consecutive_failures} consecutive failures, last: {reason}")
