"""The analytics sidecar: one JSON line per frame beside whatever sink writes the media.

`{"frame": index, "time_s": presentation time, "<stage>": that stage's annotation, …}`, in
frame order, flushed line by line so a reader tailing the file always sees whole records. A
job writes it under a partial name and renames it with the video (`pipeline/job.py`), so a
run cut short never leaves a sidecar that looks complete.

Serialised strictly (`pipeline.annotation.strict_json`): a value that is not JSON (a tensor, a
NumPy array or float32, NaN) is not turned into something that looks like data. The stage that
left it is isolated instead: its annotation is written as missing, with the reason, and the
stage named once in the log, while the rest of the record and of the run go on. The annotation
shapes (`Stage.Annotation`) are checked in tests.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import IO

from pipeline.annotation import NotJson, strict_json
from pipeline.errors import SinkError
from pipeline.frames import Frame
from pipeline.io.base import Sink, StreamInfo

log = logging.getLogger(__name__)


class AnalyticsSink(Sink):
    """Wraps a sink: writes each frame's record to a JSONL file, then hands the frame on."""

    def __init__(self, inner: Sink, path: str | os.PathLike[str]):
        self.inner = inner
        self.path = Path(path)
        self.records = 0
        self.rejected = NotJson(log, "analytics", "written as missing")  # stage → records
        self._file: IO[str] | None = None

    @property
    def resizable_output(self) -> bool:
        return bool(getattr(self.inner, "resizable_output", False))

    def set_output_scale(self, scale: float) -> None:
        self.inner.set_output_scale(scale)

    @property
    def description(self) -> str:
        return getattr(self.inner, "description", "")

    async def open(self, info: StreamInfo) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w", encoding="utf-8", buffering=1)  # line-buffered
        except OSError as exc:
            raise SinkError(f"{self.path}: cannot write the analytics file ({exc.strerror})") from None
        try:
            await self.inner.open(info)
        except BaseException:
            self._file.close()
            self._file = None
            raise

    async def write(self, frame: Frame) -> None:
        if self._file is not None:
            self._file.write(strict_json(frame.to_json(), self.rejected) + "\n")
            self.records += 1
        await self.inner.write(frame)

    async def close(self) -> None:
        try:
            await self.inner.close()
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None
