"""Quiet moments: work beside the frames starts once the live frames in flight are done.

On a CPU, the models that run beside the frames (the face detector, the expression reader, the
voice's listener) share the cores and the GIL with the stages a frame is waiting for. Started the
moment they fall due, they run alongside a frame's stages and stretch them: on a two-core machine
the default graph's frame took 17 ms with them and 10 ms without. A frame takes a third of its
interval or less, so there is room between frames: each job beside the frames waits, before it
starts, until the live frames of every session in the process that are in flight then are done,
but no longer than `MAX_WAIT_S`. It does not wait for frames that arrive meanwhile, so with many
sessions, where a frame is nearly always in flight, the models beside them still keep up. A live
frame is in flight from the moment it enters its graph's stages until its sink has it; a WebRTC
session's picture, until the sender has encoded and sent it (`pipeline.webrtc.tracks`)."""

from __future__ import annotations

import threading
import time

MAX_WAIT_S = 0.05  # the longest a job beside the frames waits for the frames in flight


class FrameActivity:
    """The live frames in flight in this process, and a wait for the ones in flight now to be done."""

    def __init__(self) -> None:
        self._in_flight: set[int] = set()  # tickets of the frames in flight
        self._issued = 0  # tickets handed out so far
        self._quiet = threading.Condition()
        self.waits = 0  # jobs that found a frame in flight and waited
        self.waited_s = 0.0

    @property
    def busy(self) -> int:
        """How many live frames are in flight."""
        return len(self._in_flight)

    def enter(self) -> int:
        """A live frame went into a graph's stages (or a picture to an encoder); its ticket for `leave`."""
        with self._quiet:
            self._issued += 1
            self._in_flight.add(self._issued)
            return self._issued

    def leave(self, ticket: int) -> None:
        """The frame with `ticket` is done with (its sink has it, or it was abandoned)."""
        with self._quiet:
            self._in_flight.discard(ticket)
            self._quiet.notify_all()

    def wait_quiet(self, max_wait_s: float = MAX_WAIT_S) -> None:
        """Return once every live frame in flight now is done, or after `max_wait_s`. Frames that
        come in meanwhile are not waited for: with several sessions one is nearly always in
        flight, and a job that waited for none would wait its whole bound every time."""
        if not self._in_flight:
            return
        start = time.monotonic()
        with self._quiet:
            now = self._issued
            self._quiet.wait_for(lambda: not self._in_flight or min(self._in_flight) > now, max_wait_s)
            self.waits += 1  # under the lock: jobs on several threads wait
            self.waited_s += time.monotonic() - start


ACTIVITY = FrameActivity()
