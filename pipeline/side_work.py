"""Work beside the frames: side jobs the runtime runs for a stage, one graph's frames first.

Some models give results a frame may take a frame or two late: a face search, an expression
reading, listening to the user, a language model's reply. Run in a frame's path they make that
frame wait their whole time; run beside the frames they only have to keep up. A stage asks for
a side job in `setup` (`StageContext.side_job`) and never starts threads or waits itself; the
executor makes the jobs, starts and stops them with the graph, and reports what they did.

Two kinds cover what stages need:

- *latest wins* (`LATEST`): one request runs at a time; a request made while one runs waits,
  and a newer one replaces it (counted as `replaced`). A frame takes the newest result.
- *in order* (`IN_ORDER`): every request runs, in order, but never more than `max_lag` wait; past
  that the oldest waiting one is dropped (counted as `dropped`). A frame takes every result since
  the last frame.

A frame never waits for a side job: under overload frames keep flowing and the side work falls
behind, which shows in its counters. Nor does a latest-wins job fill every idle moment: each has a
`share`, the most of the wall time its runs may take, and rests after each run for as long as
that share asks. On a CPU it starts at `CPU_SHARE`: a job working back to back beside the frames
slows them, though the cores are not full, because its many short hand-offs of the interpreter
lock to and from the frames' threads each make a frame's thread wait (bench/NOTES.md has the
measurements). The quality ladder lowers the share further: an inference stage's jobs at 1
frame in N (`set_cadence`) get 1/N of it, as its frames do.

A job's thread runs at a nice value behind the stage it serves and, on a CUDA run, queues its GPU
work on a stream of its own at CUDA's least urgent priority. On a CPU the jobs also share the
cores and the GIL with the frames, so a job starts a run of work only once the live frames of its
own graph that were in flight then are done, waiting at most `MAX_WAIT_S` (frames that come in
meanwhile are not waited for: at overload one is always in flight). A job whose work raises keeps
running; the error is raised to the frame that takes its result.

`side_work: inline` in a graph runs every job in line, in the caller's thread, at once: the
result is there for the same frame, and a file run gives the same output every time. `auto` (the
default) does that for file runs and runs the jobs beside the frames on live runs; `beside`
always runs them beside.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Generic, Literal, TypeVar

import torch

from pipeline.device import background_nice, set_thread_nice

log = logging.getLogger(__name__)

MAX_WAIT_S = 0.05  # the longest a job waits for the frames in flight before a run of its work
CPU_SHARE = 1 / 3  # the most of the wall time a latest-wins job sharing the CPU with the frames may run
DEFAULT_MAX_LAG = 32  # requests an in-order job may have waiting before it drops the oldest

Result = TypeVar("Result")
SideWorkMode = Literal["auto", "beside", "inline"]


class JobKind(Enum):
    LATEST = "latest"  # a newer request replaces a waiting one; a frame takes the newest result
    IN_ORDER = "in_order"  # every request runs in order, at most `max_lag` waiting; a frame takes them all


class FramesInFlight:
    """The live frames of one graph between its source and the hands of its sink, by ticket.

    A sink that keeps a picture after `write` (a WebRTC sender, which encodes it later) may hold a
    ticket of its own until it is done, so side work does not start in the middle of that either."""

    def __init__(self) -> None:
        self._in_flight: set[int] = set()
        self._issued = 0
        self._changed = threading.Condition()

    @property
    def count(self) -> int:
        """How many frames are in flight."""
        return len(self._in_flight)

    def enter(self) -> int:
        """A frame went in; its ticket, for `leave`."""
        with self._changed:
            self._issued += 1
            self._in_flight.add(self._issued)
            return self._issued

    def leave(self, ticket: int) -> None:
        """The frame with `ticket` is done with (its sink has it, or it was abandoned)."""
        with self._changed:
            self._in_flight.discard(ticket)
            self._changed.notify_all()

    def wait_for_current(self, max_wait_s: float = MAX_WAIT_S) -> float:
        """Wait until every frame in flight now is done, at most `max_wait_s`; the seconds waited
        (0.0 when none was in flight). Frames that come in meanwhile are not waited for."""
        if not self._in_flight:
            return 0.0
        start = time.monotonic()
        with self._changed:
            now = self._issued
            self._changed.wait_for(lambda: not self._in_flight or min(self._in_flight) > now, max_wait_s)
        return time.monotonic() - start


@dataclass
class SideJobStats:
    """What one side job did, for the run report."""

    submitted: int = 0  # requests made
    run: int = 0  # requests that ran
    failed: int = 0  # of them, raised
    replaced: int = 0  # latest wins: waiting requests a newer one replaced
    dropped: int = 0  # in order: the oldest waiting requests dropped past the lag bound
    superseded: int = 0  # results no frame took, because a newer one was ready first
    most_waiting: int = 0  # the most requests waiting at once
    waits: int = 0  # runs of work that waited for the frames in flight
    waited_s: float = 0.0  # ... and how long, all together
    longest_wait_s: float = 0.0
    rested_s: float = 0.0  # time it rested after its runs, to keep to its share of the wall time
    worked_s: float = 0.0  # time its runs of work took, all together

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


class SideJob(Generic[Result]):
    """One job beside the frames (or in line): `submit` requests, `take` results. See the module."""

    def __init__(
        self,
        work: Callable[..., Result],
        *,
        name: str,
        kind: JobKind,
        beside: bool,
        frames: FramesInFlight | None = None,
        max_lag: int = DEFAULT_MAX_LAG,
        nice: int = 0,
        max_wait_s: float = MAX_WAIT_S,
        device: torch.device | None = None,
        share: float = 1.0,
    ):
        if max_lag < 1:
            raise ValueError(f"{name}: max_lag must be at least 1, got {max_lag}")
        self.name = name
        self.kind = kind
        self.beside = beside
        self.max_lag = max_lag
        self.stats = SideJobStats()
        self._work = work
        self.base_share = _checked_share(name, share)  # the share at full quality
        self.share = self.base_share  # the most of the wall time its runs may take now
        self._frames = frames  # None: nothing to wait for (file runs, GPU streams)
        self._max_wait_s = max_wait_s
        self._changed = threading.Condition()
        self._waiting: deque[tuple[Any, ...]] = deque()
        self._finished: deque[tuple[bool, Any]] = deque()  # (ok, result or exception), oldest first
        self._running = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._device = device  # a CUDA device: the thread's GPU work goes on a least-urgent stream
        if beside:
            self._thread = threading.Thread(target=self._serve, args=(nice,), name=f"{name}-side", daemon=True)
            self._thread.start()

    def set_cadence(self, every: int) -> None:
        """Its stage is called on 1 frame in `every`: a latest-wins job takes that much less of the
        wall time too (an in-order job must keep up with every request, so it is left as it is)."""
        if every < 1:
            raise ValueError(f"{self.name}: cadence must be at least 1, got {every}")
        if self.kind is JobKind.LATEST:
            self.share = self.base_share / every

    @property
    def busy(self) -> bool:
        """A request is running, resting after its run, or waiting to run."""
        return self._running or bool(self._waiting)

    @property
    def waiting(self) -> int:
        """Requests waiting to run."""
        return len(self._waiting)

    def submit(self, *args: Any) -> None:
        """Request one run of the work on `args`. In line it runs now; beside the frames the caller
        must not change `args` afterwards (hand over copies of what the frame still writes to)."""
        self.stats.submitted += 1
        if not self.beside:
            self._run(args)
            return
        with self._changed:
            if self._closed:
                return
            if self.kind is JobKind.LATEST and self._waiting:
                self._waiting.clear()
                self.stats.replaced += 1
            elif len(self._waiting) >= self.max_lag:
                self._waiting.popleft()
                self.stats.dropped += 1
            self._waiting.append(args)
            self.stats.most_waiting = max(self.stats.most_waiting, len(self._waiting))
            self._changed.notify_all()

    def take(self) -> Any:
        """The results finished since the last call: latest wins gives the newest (None if none),
        in order gives a list. A run that raised raises here (in order: once the results before
        it have been taken), and the job goes on."""
        with self._changed:
            if self.kind is JobKind.LATEST:
                if not self._finished:
                    return None
                ok, result = self._finished.pop()
                if ok:
                    return result
                raise result
            results = []
            while self._finished:
                ok, result = self._finished[0]
                if not ok:
                    if results:
                        break  # the error goes to the next frame
                    self._finished.popleft()
                    raise result
                results.append(self._finished.popleft()[1])
            return results

    def drain(self, timeout_s: float = 5.0) -> None:
        """Wait until nothing runs or waits (at most `timeout_s`), for a caller that needs every result."""
        with self._changed:
            self._changed.wait_for(lambda: not self.busy or self._closed, timeout_s)

    def pause(self) -> None:
        """Called by long work between its steps (a detector between network passes): on a CPU,
        let the frames in flight now go first, as before a run."""
        if self.beside and self._frames is not None:
            self._wait_for_frames()

    def close(self) -> None:
        """Drop what waits, let a running request finish (it may hold a model), stop the thread."""
        with self._changed:
            self._closed = True
            self._waiting.clear()
            self._changed.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    # ----------------------------------------------------------------- the job's thread

    def _serve(self, nice: int) -> None:
        set_thread_nice(nice)
        device = self._device
        if device is not None and device.type == "cuda":
            least_urgent = torch.cuda.Stream.priority_range()[0]
            torch.cuda.set_stream(torch.cuda.Stream(device=device, priority=least_urgent))  # this thread's
        idle = True
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._waiting or self._closed)
                if self._closed:
                    return
                args = self._waiting.popleft()
                self._running = True
            # Each request of a latest-wins job, and the first of a run of in-order ones, starts
            # between frames; requests queued behind that run follow at once, so an in-order job
            # that fell behind catches up rather than waiting before each one.
            if idle and self._frames is not None:
                self._wait_for_frames()
            started = time.monotonic()
            self._run(args)
            self._rest(time.monotonic() - started)
            with self._changed:
                self._running = False
                idle = self.kind is JobKind.LATEST or not self._waiting
                self._changed.notify_all()

    def _rest(self, ran_s: float) -> None:
        """After a run of `ran_s`, keep to the share: rest `ran_s` × (1/share − 1), or until closed."""
        if self.kind is not JobKind.LATEST or self.share >= 1.0:
            return
        start = time.monotonic()
        with self._changed:
            self._changed.wait_for(lambda: self._closed, ran_s * (1.0 / self.share - 1.0))
        self.stats.rested_s += time.monotonic() - start

    def _wait_for_frames(self) -> None:
        assert self._frames is not None
        waited = self._frames.wait_for_current(self._max_wait_s)
        if waited:
            stats = self.stats
            stats.waits += 1
            stats.waited_s += waited
            stats.longest_wait_s = max(stats.longest_wait_s, waited)

    def _run(self, args: tuple[Any, ...]) -> None:
        started = time.perf_counter()
        try:
            outcome = (True, self._work(*args))
        except Exception as exc:  # reported to the frame that takes it; the job goes on
            outcome = (False, exc)
            self.stats.failed += 1
        with self._changed:
            self.stats.worked_s += time.perf_counter() - started
            self.stats.run += 1
            if self.kind is JobKind.LATEST and self._finished:  # only the newest is ever taken
                self.stats.superseded += len(self._finished)
                self._finished.clear()
            self._finished.append(outcome)


class SideWork:
    """The side jobs of one graph run: made for its stages, stopped with it, reported."""

    def __init__(
        self,
        mode: SideWorkMode = "auto",
        *,
        live: bool = False,
        frames: FramesInFlight | None = None,
        device: torch.device | None = None,
    ):
        self.beside = mode == "beside" or (mode == "auto" and live)
        self.frames = frames if frames is not None else FramesInFlight()
        self._live = live
        self._device = device
        self._jobs: list[tuple[str | None, SideJob[Any]]] = []  # (the stage it serves, the job)

    def job(
        self,
        work: Callable[..., Result],
        *,
        name: str,
        kind: JobKind,
        stage: str | None = None,
        stage_nice: int = 0,
        max_lag: int = DEFAULT_MAX_LAG,
        between_frames: bool = True,
        share: float | None = None,
    ) -> SideJob[Result]:
        """A side job for `stage`, whose lane runs at `stage_nice`. `between_frames`: the work shares
        the CPU with the frames, so its runs start between them and a latest-wins one keeps to
        `CPU_SHARE` of the wall time (False for work on a GPU stream, or waiting on a network).
        `share`: a latest-wins job's share of the wall time where it shares the CPU, if not
        `CPU_SHARE` (work nobody waits for can take less)."""
        if any(job.name == name for _, job in self._jobs):
            raise ValueError(f"side job {name!r} already exists")
        waits = self.beside and self._live and between_frames
        job = SideJob(
            work,
            name=name,
            kind=kind,
            beside=self.beside,
            frames=self.frames if waits else None,
            max_lag=max_lag,
            nice=background_nice(stage_nice),
            device=self._device,
            share=(share or CPU_SHARE) if waits and kind is JobKind.LATEST else 1.0,
        )
        self._jobs.append((stage, job))
        return job

    def set_cadence(self, stage: str, every: int) -> None:
        """`stage` is called on 1 frame in `every` (the quality ladder's inference cadence): its
        latest-wins jobs take that much less of the wall time (`SideJob.set_cadence`)."""
        for served, job in self._jobs:
            if served == stage:
                job.set_cadence(every)

    def close(self) -> None:
        """Stop every job (a running request is let finish)."""
        for _, job in self._jobs:
            job.close()

    def report(self) -> dict[str, Any]:
        """Per job: its kind, where it ran, its share of the wall time now and its counters."""
        return {
            job.name: {"kind": job.kind.value, "beside": job.beside, "share": round(job.share, 4)} | job.stats.to_json()
            for _, job in self._jobs
        }


def _checked_share(name: str, share: float) -> float:
    if not 0.0 < share <= 1.0:
        raise ValueError(f"{name}: share must be in (0, 1], got {share}")
    return share
