"""One model call for the requests of several sessions at once.

Sessions share models (the model manager), and each runs its own stages on its own threads. A
`Batcher` gathers the inputs those threads hand it, up to `max_batch` rows or `wait_s` after the
first, runs the model once on all of them, and gives each caller its own rows back. Ten
sessions' face crops become one classifier call instead of ten.

The first caller of a round leads it: it waits for company (only while more than one session
uses the batcher, so a lone session never waits), takes what has gathered, runs the call, and
hands out the results; the others just wait for theirs. No thread of its own, nothing to stop.
A failing call fails every request in it, each with the same exception.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

DEFAULT_MAX_BATCH = 64  # rows per call
DEFAULT_WAIT_S = 0.002  # how long the leader waits for other sessions' requests


@dataclass(eq=False)
class _Request:
    inputs: torch.Tensor
    done: threading.Event = field(default_factory=threading.Event)
    result: torch.Tensor | None = None
    error: BaseException | None = None


class Batcher:
    """Batches calls of `fn` (rows in, rows out, along dim 0) from many threads; see the module docstring."""

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        wait_s: float = DEFAULT_WAIT_S,
    ):
        self.fn = fn
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.users = 0  # sessions using it now: with one, nobody waits
        self.calls = 0  # model calls made
        self.requests = 0  # requests served
        self.rows = 0
        self._pending: list[_Request] = []
        self._leading = False
        self._cond = threading.Condition()

    def join(self) -> None:
        """A session starts using the batcher."""
        with self._cond:
            self.users += 1

    def leave(self) -> None:
        with self._cond:
            self.users = max(0, self.users - 1)
            self._cond.notify_all()

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """`fn(inputs)`, computed together with whatever other threads ask for meanwhile."""
        request = _Request(inputs)
        with self._cond:
            self._pending.append(request)
            self._cond.notify_all()
            lead = not self._leading
            if lead:
                self._leading = True
        if lead:
            self._lead()
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _lead(self) -> None:
        with self._cond:
            deadline = time.monotonic() + self.wait_s
            while self.users > 1 and self._rows_pending() < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0 or len(self._pending) >= self.users:  # everyone who could ask has asked
                    break
                self._cond.wait(left)
            batch, rows = [], 0
            while self._pending and (not batch or rows + self._pending[0].inputs.shape[0] <= self.max_batch):
                request = self._pending.pop(0)
                batch.append(request)
                rows += request.inputs.shape[0]
            self._leading = False
            if self._pending:  # more than one call's worth: the next waiting caller leads the next round
                self._cond.notify_all()
        self._run(batch)
        with self._cond:  # anyone left waiting without a leader becomes one
            if self._pending and not self._leading:
                self._leading = True
                leftover = True
            else:
                leftover = False
        if leftover:
            self._lead()

    def _rows_pending(self) -> int:
        return sum(request.inputs.shape[0] for request in self._pending)

    def _run(self, batch: list[_Request]) -> None:
        try:
            outputs = self.fn(torch.cat([request.inputs for request in batch]))
        except BaseException as exc:
            for request in batch:
                request.error = exc
                request.done.set()
            return
        start = 0
        for request in batch:
            count = request.inputs.shape[0]
            request.result = outputs[start : start + count]
            start += count
            request.done.set()
        self.calls += 1
        self.requests += len(batch)
        self.rows += start
