"""Brightness and motion of each frame, from a downscaled luma plane.

Cheap scene measures other stages can react to (a still scene needs no re-detection). All
temporaries come from the stage's scratch pool, so a frame in steady state allocates none.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from pipeline.annotation import Annotation, missing
from pipeline.frames import Frame
from pipeline.pixels import PixelFormat, luma_plane
from pipeline.stage import ComputeStage, StageContext, StageOptions

BT601_LUMA = (0.299, 0.587, 0.114)  # R, G, B weights of Y'


class FrameStatsOptions(StageOptions):
    downscale: int = Field(4, ge=1, le=64)  # read every Nth pixel in each direction


class FrameStatsAnnotation(Annotation):
    luma: float  # mean, 0..1
    motion: float  # mean absolute luma change since the last frame, 0..1


class FrameStats(ComputeStage):
    """Annotation: `luma` (mean, 0..1) and `motion` (mean absolute luma change since the last frame, 0..1)."""

    type_name = "frame_stats"
    Annotation = FrameStatsAnnotation
    Options = FrameStatsOptions

    def setup(self, ctx: StageContext) -> None:
        super().setup(ctx)
        self._weights = torch.tensor(BT601_LUMA, dtype=torch.float32, device=ctx.device) / 255.0
        self._previous: torch.Tensor | None = None  # last frame's luma; the stage is stateful
        self._format = ctx.stream.pixel_format if ctx.stream is not None else PixelFormat.YUV420P

    def compute(self, frame: Frame) -> dict[str, Any]:
        assert self.ctx is not None
        if frame.lease is None:
            return missing("no video")
        step = self.options.downscale
        y_plane = luma_plane(frame.image, self._format)
        small = (frame.image if y_plane is None else y_plane)[::step, ::step]
        h, w = small.shape[:2]
        scratch = self.ctx.scratch
        with scratch.lease((h, w)) as luma:
            if y_plane is None:  # RGB: weigh the channels
                with scratch.lease((h, w, 3)) as rgb:
                    rgb.copy_(small)
                    torch.matmul(rgb, self._weights, out=luma)
            else:  # I420: the Y plane is the luma already
                luma.copy_(small).mul_(1.0 / 255.0)
            brightness = float(luma.mean())
            if self._previous is None or self._previous.shape != luma.shape:
                self._previous = luma.clone()
                motion = 0.0
            else:
                with scratch.lease((h, w)) as change:
                    torch.sub(luma, self._previous, out=change).abs_()
                    motion = float(change.mean())
                self._previous.copy_(luma)
        return {"luma": round(brightness, 4), "motion": round(motion, 4)}
