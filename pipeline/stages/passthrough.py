"""A stage that does nothing: for measuring the runtime itself and for plain transcoding graphs."""

from __future__ import annotations

from pipeline.frames import Frame
from pipeline.stage import Stage


class PassThrough(Stage):
    type_name = "passthrough"

    async def process(self, frame: Frame) -> None:
        return None
