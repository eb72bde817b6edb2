"""A face detector that runs beside the frames instead of in their path.

On a live run a frame that has to wait for the detector waits its whole time (20–30 ms for
MTCNN on a CPU, more than half of a 50 ms budget), though between detections the tracker
already carries faces on held boxes. Here a frame that is due a detection hands over a plain
copy of its picture (scaling and converting it for the detector is the thread's work too) and
goes on at once with the tracked boxes; the faces found are matched in
on the first frame after they are ready. A detection then describes a picture a frame or two
old, which the tracker's overlap matching already allows for between detections.

One detection runs at a time, on a thread of its own: a frame due a detection while one is
still running is not queued (the next frame after it ends starts a fresh one), so the detector
never falls behind the camera. The thread runs at a higher nice value than the stage's own, so
on a busy CPU the frames are served first and the detector takes what is left (on a saturated
machine faces are then found later, never frames delayed). On a CPU a detection also starts
only between frames (`pipeline.quiet`), so it does not share the cores and the GIL with a frame's
stages. File runs keep detecting in line, so their output stays the same from run to run.

The emotion stage runs its expression classifier the same way, on a second one of these: any
model whose result a frame can take one frame late fits.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

import torch

from pipeline.device import background_nice, set_thread_nice
from pipeline.quiet import ACTIVITY

Found = TypeVar("Found")


class BackgroundDetector(Generic[Found]):
    """Runs `detect(picture, *extra)` on its own thread, one picture at a time; results are taken in order."""

    def __init__(self, detect: Callable[..., Found], *, name: str = "detector", stage_nice: int = 0):
        self._detect = detect
        nice = background_nice(stage_nice)  # behind the frames of the stage it serves
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"{name}-background", initializer=set_thread_nice, initargs=(nice,)
        )
        self._running: Future[Found] | None = None
        self.started = 0  # detections handed over
        self.finished = 0  # detections whose result was taken

    @property
    def busy(self) -> bool:
        """A detection is running (or finished and not yet taken)."""
        return self._running is not None

    def start(self, picture: torch.Tensor, *extra: object) -> None:
        """Detect on `picture` (a tensor the caller no longer writes to) in the background; `extra`
        goes to `detect` with it (what the caller's settings were when it was taken)."""
        if self._running is not None:
            raise RuntimeError("a detection is already running")
        ready = None
        if picture.is_cuda:  # the picture was made on the caller's stream: the thread waits for it
            ready = torch.cuda.Event()
            ready.record()
        self._running = self._pool.submit(self._run, picture, extra, ready)
        self.started += 1

    def _run(self, picture: torch.Tensor, extra: tuple[object, ...], ready: torch.cuda.Event | None) -> Found:
        if ready is not None:
            torch.cuda.current_stream(picture.device).wait_event(ready)
        else:  # on a CPU, between frames: a GPU runs it on a stream of its own, beside them
            ACTIVITY.wait_quiet()
        return self._detect(picture, *extra)

    def take(self) -> Found | None:
        """The finished detection's result, once (None while it runs or when none was started).
        A detection that raised raises here, on the frame that takes it."""
        if self._running is None or not self._running.done():
            return None
        running, self._running = self._running, None
        self.finished += 1
        return running.result()

    def close(self) -> None:
        """Wait for a running detection (it holds its model) and stop the thread."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._running = None
