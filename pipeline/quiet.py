"""Quiet moments: work beside the frames starts when no live frame is in flight.

On a CPU, the models that run beside the frames (the face detector, the expression reader, the
voice's listener) share the cores and the GIL with the stages a frame is waiting for. Started the
moment they fall due, they run alongside a frame's stages and stretch them: on a two-core machine
the default graph's frame took 17 ms with them and 10 ms without. A frame takes a third of its
interval or less, so there is room between frames: each job beside the frames waits, before it
starts, until no live frame of any session in the process is in flight, but no longer than
`MAX_WAIT_S`, so a machine that always has a frame in flight still detects faces. A live frame
is in flight from the moment it enters its graph's stages until its sink has it; a WebRTC
session's picture, until the sender has encoded and sent it (`pipeline.webrtc.tracks`).
"""

from __future__ import annotations

import threading
import time

MAX_WAIT_S = 0.05  # the longest a job beside the frames waits for a quiet moment


class FrameActivity:
    """How many live frames are in flight in this process, and a wait for none."""

    def __init__(self) -> None:
        self._busy = 0
        self._quiet = threading.Condition()
        self.waits = 0  # jobs that found a frame in flight and waited
        self.waited_s = 0.0

    @property
    def busy(self) -> int:
        return self._busy

    def enter(self) -> None:
        """A live frame went into a graph's stages (or a picture to an encoder)."""
        with self._quiet:
            self._busy += 1

    def leave(self) -> None:
        """A live frame is done with (its sink has it, or it was abandoned)."""
        with self._quiet:
            self._busy = max(0, self._busy - 1)
            if not self._busy:
                self._quiet.notify_all()

    def wait_quiet(self, max_wait_s: float = MAX_WAIT_S) -> None:
        """Return once no live frame is in flight, or after `max_wait_s`."""
        if not self._busy:
            return
        start = time.monotonic()
        with self._quiet:
            self._quiet.wait_for(lambda: not self._busy, max_wait_s)
            self.waits += 1  # under the lock: jobs on several threads wait
            self.waited_s += time.monotonic() - start


ACTIVITY = FrameActivity()
