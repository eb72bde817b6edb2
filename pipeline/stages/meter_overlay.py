"""Draws an audio level bar and a motion bar into the frame, in place.

Reads two upstream annotations (a fan-in), and shows on the output that the graph carried
each frame's own measurements to it.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from pipeline.annotation import Annotation, missing
from pipeline.frames import Frame
from pipeline.pixels import Colour, PixelFormat, fill_rect, paint_value, picture_size
from pipeline.stage import ComputeStage, StageContext, StageOptions

LEVEL_FLOOR_DBFS = -60.0  # an empty level bar
MOTION_FULL_SCALE = 0.1  # mean luma change that fills the motion bar
BACKDROP_RGB = (16, 16, 16)
LEVEL_RGB = (40, 220, 90)
MOTION_RGB = (250, 160, 30)


class MeterOverlayOptions(StageOptions):
    bar_height_px: int = Field(10, ge=1, le=200)
    margin_px: int = Field(8, ge=0, le=500)
    width_fraction: float = Field(0.3, gt=0.0, le=1.0)  # of the frame width, for a full bar


class MeterOverlayAnnotation(Annotation):
    level: float  # the bar fills drawn, 0..1
    motion: float


class MeterOverlay(ComputeStage):
    """Annotation: `level` and `motion`, the bar fills drawn (0..1)."""

    type_name = "meter_overlay"
    Annotation = MeterOverlayAnnotation
    Options = MeterOverlayOptions
    inputs = ("frame_stats", "audio_level")

    def setup(self, ctx: StageContext) -> None:
        super().setup(ctx)
        stream = ctx.stream
        self._format = stream.pixel_format if stream is not None else PixelFormat.YUV420P
        colour = stream.colour if stream is not None else Colour()
        height = stream.height if stream is not None else 0
        self._colours: dict[str, Any] = {
            name: paint_value(rgb, self._format, colour, height, ctx.device)
            for name, rgb in (("backdrop", BACKDROP_RGB), ("level", LEVEL_RGB), ("motion", MOTION_RGB))
        }

    def compute(self, frame: Frame) -> dict[str, Any]:
        if frame.lease is None:
            return missing("no video")
        stats = self.input_annotation(frame, "frame_stats")
        audio = self.input_annotation(frame, "audio_level")
        level_dbfs = audio.get("rms_dbfs") if audio else None
        level = 0.0 if level_dbfs is None else min(1.0, max(0.0, 1.0 - level_dbfs / LEVEL_FLOOR_DBFS))
        motion = 0.0 if stats is None else min(1.0, stats["motion"] / MOTION_FULL_SCALE)
        image = frame.image
        width, height = picture_size(image, self._format)
        opts = self.options
        full = max(2, int(width * opts.width_fraction))
        bar = max(2, opts.bar_height_px)
        # Even edges: in I420 each chroma sample covers a 2×2 block, which must be all bar or all not.
        x0 = min(opts.margin_px, width - 2) & ~1
        x1 = min(width, x0 + full) & ~1
        for row, (name, fill) in enumerate((("level", level), ("motion", motion))):
            y1 = (height - opts.margin_px - row * (bar + 2)) & ~1
            y0 = max(0, y1 - bar) & ~1
            if y1 <= 0:
                continue
            self._fill(image, (y0, y1, x0, x1), self._colours["backdrop"])
            filled = int((x1 - x0) * fill) & ~1
            if filled:
                self._fill(image, (y0, y1, x0, x0 + filled), self._colours[name])
        return {"level": round(level, 3), "motion": round(motion, 3)}

    def _fill(self, image: torch.Tensor, box: tuple[int, int, int, int], colour: Any) -> None:
        """Paint the rectangle (y0, y1, x0, x1), with even edges, in one colour."""
        y0, y1, x0, x1 = box
        fill_rect(image, self._format, (x0, y0, x1, y1), colour)
