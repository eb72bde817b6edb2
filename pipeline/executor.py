"""Runs a graph: source → stages → sink, as asyncio tasks joined by bounded queues.

Fan-out passes the same `Frame` to every child. Fan-in waits, per frame index, for every parent.
A reorder buffer in front of the sink restores source order, whatever order stages finish in.
A stop drains: the source stops, every frame already accepted reaches the sink, and the sink
is finalized. An abort (a second stop) cancels what is in flight but still finalizes the sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.device import Lane, configure_cpu_threads, cpu_nice, cuda_stream_priority
from pipeline.device_profiles import DeviceProfile, detect_profile
from pipeline.errors import PipelineError, SinkError, SourceError
from pipeline.frames import Frame
from pipeline.gpu_health import GpuHealth
from pipeline.graph import Graph, Node
from pipeline.io.base import Sink, Source
from pipeline.metrics import QueueStats, RunMetrics
from pipeline.model_manager.manager import ModelManager
from pipeline.ringbuffer import FullPolicy, RingBuffer
from pipeline.scheduling.runner import LATE, FrameScheduler, Watched, scheduler_enabled
from pipeline.scratch import ScratchPool
from pipeline.side_work import FramesInFlight, SideWork
from pipeline.stage import ComputeStage, StageContext, StageRunner

log = logging.getLogger(__name__)
SAMPLE_PERIOD_S = 0.010  # queue depths and ages are read, and latency samples folded, this often


class StageQueue(asyncio.Queue):
    """A FIFO of frames whose head can be read: how old (since capture) is the oldest frame waiting."""

    def oldest_age_ns(self, now_ns: int) -> int:
        """Age since capture of the frame at the head; 0 when empty."""
        queue = self._queue  # the deque asyncio.Queue keeps its items in (set up by its _init hook)
        return now_ns - queue[0].capture_ns if queue else 0


@dataclass(eq=False)
class _Running:
    """A node while the graph runs: its stage, queue, and joins still waiting on parents."""

    node: Node
    runner: StageRunner
    queue: StageQueue
    queue_stats: QueueStats
    lane: Lane
    scratch: ScratchPool
    children: list[_Running] = field(default_factory=list)
    waiting: dict[int, int] = field(default_factory=dict)  # frame index → parents still to finish
    watched: Watched | None = None  # the scheduler's view of it, on live runs with deadlines


class Pipeline:
    """One run of one graph from one source to one sink."""

    def __init__(
        self,
        graph: Graph,
        source: Source,
        sink: Sink,
        *,
        device: torch.device | str = "cpu",
        metrics: RunMetrics | None = None,
        models: ModelManager | None = None,
        device_profile: DeviceProfile | None = None,
    ):
        self.graph = graph
        self.source = source
        self.sink = sink
        self.device = torch.device(device)
        self.metrics = metrics or RunMetrics()
        self.profile = device_profile or detect_profile(self.device)
        # The models stages load: passed in when several sessions share them, else this run's own.
        self.models = models if models is not None else ModelManager.for_device(self.device, self.profile)
        config = graph.config
        policy = config.ring.policy
        if policy == "auto":
            policy = FullPolicy.LATEST if source.live else FullPolicy.BLOCK
        self.ring = RingBuffer(config.ring.slots, source.info.frame_shape, device=self.device, policy=policy)
        # Live: the ring alone bounds what is in flight and its policy decides what to drop, so a
        # queue must never make the source wait. Batch: queues push back on the source.
        self.queue_size = config.ring.slots if source.live else config.queue_size
        self._running: dict[str, _Running] = {}
        self._roots: list[_Running] = []
        self._leaves: set[str] = {node.name for node in graph.leaves}
        self._many_leaves = len(self._leaves) > 1
        self._sink_waiting: dict[int, int] = {}
        self._reorder: list[tuple[int, Frame]] = []
        self._next_index = 0
        self._delivering = False
        self._in_flight: dict[int, Frame] = {}
        # Live frames between the source and the sink's hands, which this graph's side work lets go first.
        self.frames_in_flight = FramesInFlight()
        self._in_flight_live: dict[int, int] = {}  # live frame index → its ticket, until the sink has it
        self.side_work = SideWork(config.side_work, live=source.live, frames=self.frames_in_flight, device=self.device)
        self._accepted = 0
        self._delivered = 0
        self._source_done = False
        self._stop_requested = False
        self._aborted = False  # nothing more reaches the sink
        self._done = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._fatal: BaseException | None = None
        self.source_error: str | None = None
        self.interrupted = False
        self.offered: dict[tuple[str, str], Any] = {}  # services stages offer each other (StageContext.offer)
        self.scheduler: FrameScheduler | None = None  # set up with the stages when this run schedules

    def stages_of(self, type_name: str) -> list[Any]:
        """The running stages of one type (e.g. "voice"), to act on at run time."""
        return [r.runner.stage for r in self._running.values() if r.runner.stage.type_name == type_name]

    # ----------------------------------------------------------------- control

    def request_stop(self) -> None:
        """First call: stop taking frames and drain. Second call: abort what is in flight."""
        if self._stop_requested:
            log.warning("stopping now: frames still in flight are abandoned, the output is finalized")
            self._abort(None)
            return
        self._stop_requested = True
        self.interrupted = True
        log.info("stopping: draining %d frame(s) in flight", self._accepted - self._delivered)

    def _abort(self, error: BaseException | None) -> None:
        if error is not None and self._fatal is None:
            self._fatal = error
        self._stop_requested = True
        self._aborted = True
        self.interrupted = True
        self._done.set()

    # ----------------------------------------------------------------- run

    async def run(self) -> dict[str, Any]:
        """Run to the end of the source (or a stop) and return the run report."""
        try:
            self.sink.hold_tickets(self.frames_in_flight if self.source.live else None)
            await self.sink.open(self.source.info)
        except BaseException:
            self.source.close()
            raise
        try:
            self._start_stages()
            self._tasks.append(asyncio.create_task(self._produce(), name="source"))
            self._tasks.append(asyncio.create_task(self._sample(), name="sampler"))
            if self.scheduler is not None:
                self._tasks.append(asyncio.create_task(self.scheduler.control(), name="scheduler"))
            if self.models.entries:
                self._tasks.append(asyncio.create_task(self.models.watch(), name="models"))
            for running in self._running.values():
                for worker in range(running.node.spec.workers):
                    task = asyncio.create_task(self._work(running), name=f"{running.node.name}#{worker}")
                    self._tasks.append(task)
            for task in self._tasks:
                task.add_done_callback(self._task_ended)
            if not self._check_done():
                await self._done.wait()
        finally:
            await self._shutdown()
        if isinstance(self._fatal, SinkError):
            raise self._fatal
        if self._fatal is not None:
            raise PipelineError(f"pipeline failed: {type(self._fatal).__name__}: {self._fatal}") from self._fatal
        return self.report()

    def report(self) -> dict[str, Any]:
        return self.metrics.report(
            graph=self.graph.config.name,
            device=str(self.device),
            source=type(self.source).__name__,
            source_description=self.source.info.description,
            source_stats=self.source.stats(),
            sink=type(self.sink).__name__,
            sink_description=getattr(self.sink, "description", ""),
            interrupted=self.interrupted,
            source_error=self.source_error,
            ring=self.ring.stats(),
            leaked_slots=self.ring.in_use,
            scratch={name: r.scratch.stats() for name, r in self._running.items()},
            quality=self.scheduler.report() if self.scheduler is not None else {"enabled": False},
            side_work=self.side_work.report(),
            stage_counters=self._stage_counters(),
            models=self.models.status(),
            device_profile=self.profile.name,
            cpu_threads=torch.get_num_threads(),  # torch's threads per op: the cores this run kept to
        )

    def _stage_counters(self) -> dict[str, dict[str, Any]]:
        """Each stage's own counters (`Stage.counters`), for those that keep any."""
        counters = {}
        for name, running in self._running.items():
            try:
                kept = running.runner.stage.counters()
            except Exception as exc:  # a report never fails for a stage's counters
                kept = {"error": f"{type(exc).__name__}: {exc}"}
            if kept:
                counters[name] = kept
        return counters

    def _start_stages(self) -> None:
        nodes = list(self.graph.nodes.values())
        if self.device.type == "cpu":
            computing = sum(n.spec.workers for n in nodes if issubclass(n.stage_type, ComputeStage))
            if computing:
                configure_cpu_threads(computing)
        top_priority = max((n.spec.priority for n in nodes), default=0)
        served = self.graph.served_priorities()
        for node in nodes:
            stream_priority = 0
            if self.device.type == "cuda":
                stream_priority = cuda_stream_priority(served[node.name], top_priority)
            lane = Lane(
                node.name,
                self.device,
                workers=node.spec.workers,
                stream_priority=stream_priority,
                cpu_nice=cpu_nice(served[node.name], top_priority),
            )
            scratch = ScratchPool(self.device)
            stage = node.instantiate()
            runner = StageRunner(stage, self.metrics.stage(node.name), self.graph.config.max_consecutive_failures)
            queue = StageQueue(self.queue_size)
            running = _Running(node, runner, queue, self.metrics.queue(node.name), lane, scratch)
            self._running[node.name] = running
            ctx = StageContext(
                name=node.name,
                device=self.device,
                lane=lane,
                scratch=scratch,
                parents=node.parents,
                inputs=node.inputs,
                stream=self.source.info,
                services=node.services,
                offered=self.offered,
                models=self.models,
                live=self.source.live,
                side_work=self.side_work,
            )
            try:
                stage.setup(ctx)
            except Exception as exc:
                runner.disable(f"setup failed: {type(exc).__name__}: {exc}".splitlines()[0])
        for running in self._running.values():
            # Handed on most important first: their workers wake, and reach their lanes, in this order.
            children = [self._running[child] for child in running.node.children]
            running.children = sorted(children, key=lambda child: -child.node.spec.priority)
        self._roots = [self._running[node.name] for node in self.graph.roots]
        if scheduler_enabled(self.graph.config, live=self.source.live):
            fps = self.source.info.fps
            self.scheduler = FrameScheduler(
                self.graph,
                {name: running.runner for name, running in self._running.items()},
                self.metrics,
                live=self.source.live,
                source_fps=float(fps) if fps else None,
                sink=self.sink,
                gpu=GpuHealth(self.device) if self.device.type == "cuda" else None,
                profile=self.profile,
                queue_age_ns=self._oldest_queue_age_ns,
                side_work=self.side_work,
            )
            if self.scheduler.deadlines:
                for name, running in self._running.items():
                    running.watched = self.scheduler.by_name[name]

    def _oldest_queue_age_ns(self, now_ns: int) -> int:
        """Age since capture of the oldest frame waiting at any stage (0 when every queue is empty)."""
        return max((r.queue.oldest_age_ns(now_ns) for r in self._running.values()), default=0)

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for index in list(self._in_flight_live):  # only after an abort: frames the sink never had
            self._handed_over(index)
        for frame in list(self._in_flight.values()):  # only after an abort: frames that never arrived
            self.metrics.frame_dropped("aborted")
            frame.release()
        self._in_flight.clear()
        self.side_work.close()  # before teardown: a running job may hold what the stage frees
        for running in self._running.values():
            try:
                running.runner.stage.teardown()
            except Exception as exc:
                log.warning("%s: teardown failed (%s: %s)", running.node.name, type(exc).__name__, exc)
            running.lane.close()
        try:
            await self.sink.close()
        finally:
            self.source.close()
            self.metrics.finish()
        if self.ring.in_use:
            log.error("ring: %d slot(s) still leased after the run", self.ring.in_use)

    async def _sample(self) -> None:
        """Off the hot path, on a timer: read queue depths and ages, fold latency samples."""
        queues = [(r.queue, r.queue_stats) for r in self._running.values()]
        while True:
            now = time.monotonic_ns()
            for queue, stats in queues:
                stats.sample(queue.qsize(), queue.oldest_age_ns(now))
            self.metrics.fold()
            await asyncio.sleep(SAMPLE_PERIOD_S)

    def _task_ended(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("task %s failed: %s: %s", task.get_name(), type(error).__name__, error)
            self._abort(error)

    def _check_done(self) -> bool:
        if self._source_done and self._delivered == self._accepted:
            self._done.set()
            return True
        return False

    # ----------------------------------------------------------------- data path

    async def _produce(self) -> None:
        try:
            last = await self._read_source()
            # The sound of frames thinned after the last one admitted: one last frame of sound alone.
            leftover = self.scheduler.leftover_audio() if self.scheduler is not None else None
            if leftover is not None and last is not None:
                sound = Frame(self._accepted, last.pts, last.time_base, time.monotonic_ns(), None, leftover)
                await self._take_in(sound)
        finally:
            self._source_done = True
            self._check_done()

    async def _read_source(self) -> Frame | None:
        """Take the source's frames in until it ends, fails or a stop is asked; returns the last one."""
        cuda = self.device.type == "cuda"
        last: Frame | None = None
        try:
            async with contextlib.aclosing(self.source.frames(self.ring)) as frames:
                async for frame in frames:
                    if frame.index != self._accepted:
                        frame.release()
                        raise SourceError(f"source gave frame {frame.index}, expected {self._accepted}")
                    if cuda:
                        ready = torch.cuda.Event()
                        ready.record()
                        frame.events["source"] = ready
                    if self.scheduler is not None:
                        self.scheduler.admit(frame)
                    last = frame
                    await self._take_in(frame)
                    if self._stop_requested:
                        break
        except SourceError as exc:
            self.source_error = str(exc)
            log.error("source: %s", exc)
        except Exception as exc:  # a source that breaks mid-stream still yields what it gave
            self.source_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            log.error("source failed after %d frame(s): %s", self._accepted, self.source_error)
        return last

    async def _take_in(self, frame: Frame) -> None:
        """A frame from the source into the graph (or straight to the sink, with no stages)."""
        self.metrics.frame_in(time.monotonic_ns())
        self._in_flight[frame.index] = frame
        self._accepted += 1
        if self._roots:
            if self.source.live:
                self._in_flight_live[frame.index] = self.frames_in_flight.enter()
            for root in self._roots:
                await root.queue.put(frame)
        else:
            await self._arrive_at_sink(frame)

    async def _work(self, running: _Running) -> None:
        # The hot loop: one iteration per frame per stage. A stage with one child that waits on
        # nothing else (a chain) passes frames straight on; the general case handles fan-in.
        batch = running.runner.stage.batch_frames
        if batch > 1 and not self.source.live and running.node.spec.workers == 1:
            await self._work_batched(running, batch)
            return
        run = running.runner.run
        get = running.queue.get if running.watched is None else self._getter(running)
        children = running.children
        if not children:
            while True:
                frame = await get()
                await run(frame)
                await self._arrive_at_sink(frame)
        if len(children) == 1 and len(children[0].node.parents) == 1:
            put = children[0].queue.put
            while True:
                frame = await get()
                await run(frame)
                await put(frame)
        edges = self._edges(running)
        while True:
            frame = await get()
            await run(frame)
            await self._hand_on(frame, edges)

    def _getter(self, running: _Running) -> Any:
        """`queue.get` that first drops a frame too late to make its deadline, when a newer one waits."""
        queue, watched, scheduler = running.queue, running.watched, self.scheduler
        assert watched is not None and scheduler is not None
        is_late, clock = scheduler.is_late, time.monotonic_ns

        async def get() -> Frame:
            frame = await queue.get()
            if not queue.empty() and frame.drop_reason is None and is_late(frame, watched, clock()):
                frame.drop(LATE)
            return frame

        return get

    @staticmethod
    def _edges(running: _Running) -> list[tuple[int, dict[int, int], Any]]:
        """(parents, joins waiting, put) for each child of a node."""
        return [(len(child.node.parents), child.waiting, child.queue.put) for child in running.children]

    async def _hand_on(self, frame: Frame, edges: list[tuple[int, dict[int, int], Any]]) -> None:
        """Pass a finished frame to each child, or to the sink when there are none."""
        if not edges:
            await self._arrive_at_sink(frame)
        for parents, waiting, put in edges:
            if parents > 1:  # fan-in: only the last parent to finish passes the frame on
                left = waiting.get(frame.index, parents) - 1
                if left:
                    waiting[frame.index] = left
                    continue
                waiting.pop(frame.index, None)
            await put(frame)

    async def _work_batched(self, running: _Running, batch: int) -> None:
        """A stage that takes several frames per call (files only): whatever is queued, up to `batch`.

        It never waits to fill a batch, so a stage that keeps up still sees one frame at a time;
        live sources never batch, since holding a frame back for company costs latency.
        """
        queue, run_batch = running.queue, running.runner.run_batch
        edges = self._edges(running)
        while True:
            frames = [await queue.get()]
            while len(frames) < batch and not queue.empty():
                frames.append(queue.get_nowait())
            await run_batch(frames)
            for frame in frames:
                await self._hand_on(frame, edges)

    async def _arrive_at_sink(self, frame: Frame) -> None:
        if self._many_leaves:  # fan-in at the sink: wait for every leaf
            left = self._sink_waiting.get(frame.index, len(self._leaves)) - 1
            if left:
                self._sink_waiting[frame.index] = left
                return
            self._sink_waiting.pop(frame.index, None)
        if self._delivering or frame.index != self._next_index:
            # Early, or another task is writing: the task delivering frame `_next_index` takes it in turn.
            heapq.heappush(self._reorder, (frame.index, frame))
            return
        self._delivering = True
        try:
            reorder = self._reorder
            while not self._aborted:
                self._next_index += 1
                await self._deliver(frame)
                if not reorder or reorder[0][0] != self._next_index:
                    break
                frame = heapq.heappop(reorder)[1]
        finally:
            self._delivering = False
        self._check_done()

    def _handed_over(self, index: int) -> None:
        """A live frame is through every stage and with its sink: work beside the frames may use
        the machine again, as far as this frame goes."""
        ticket = self._in_flight_live.pop(index, None)
        if ticket is not None:
            self.frames_in_flight.leave(ticket)

    async def _deliver(self, frame: Frame) -> None:
        """Write one frame, in order, then give its slot back."""
        try:
            await self.sink.write(frame)
        except Exception as exc:
            error = exc if isinstance(exc, SinkError) else SinkError(f"sink failed: {type(exc).__name__}: {exc}")
            log.error("%s", error)
            self._abort(error)
            return
        self._handed_over(frame.index)
        now_ns = time.monotonic_ns()
        if frame.dropped:
            self.metrics.frame_dropped(frame.why_dropped or "dropped")
        else:
            self.metrics.frame_out(frame.capture_ns, now_ns)
        if self.scheduler is not None:
            self.scheduler.delivered(frame, now_ns)
        frame.release()
        del self._in_flight[frame.index]
        self._delivered += 1
