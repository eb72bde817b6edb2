"""Copying a decoded picture into a ring slot as packed I420, in one pass over the pixels.

Decoders hand out pictures in their own buffers, with padded rows, in whatever layout the
codec uses. The common layouts (yuv420p, its full-range twin yuvj420p, and NV12 from hardware
decoders) are copied plane by plane with no colour maths; anything else (10-bit, 4:2:2, 4:4:4,
RGB) goes through FFmpeg's converter first. Odd sizes lose their last row or column, since
4:2:0 encoders need even ones.

A picture stored turned (a phone's portrait video: the pixels sideways, a display matrix telling
players to turn them) is turned upright in the same copy, as ffmpeg does by default: the stages
see faces the right way up, and the avatar and overlays are drawn upright.
"""

from __future__ import annotations

import logging

import av
import numpy as np
import torch

from kernels.colour import i420_planes

log = logging.getLogger(__name__)

PLANAR_420 = ("yuv420p", "yuvj420p")  # copied plane by plane
SEMI_PLANAR_420 = ("nv12",)  # Y plane, then interleaved U/V


def even_size(width: int, height: int) -> tuple[int, int]:
    """The largest even size inside width×height: what a 4:2:0 picture can hold."""
    return width & ~1, height & ~1


QUARTER_TOLERANCE = 1.0  # degrees: an angle this near a multiple of 90° is that many quarter turns


def quarter_turns(rotation: float) -> int | None:
    """Quarter turns counter-clockwise (0–3) that show a picture upright, from PyAV's
    `VideoFrame.rotation` (degrees counter-clockwise); None for an angle that is no multiple of
    90° (a picture cannot be turned that way by moving whole pixels)."""
    quarters = rotation / 90
    if abs(quarters - round(quarters)) * 90 > QUARTER_TOLERANCE:
        return None
    return round(quarters) % 4


class PictureWriter:
    """Writes decoded `av.VideoFrame`s of any layout into I420 slots of one fixed size.

    `width`×`height` is the size pictures are decoded at; `turns` quarter turns counter-clockwise
    (`quarter_turns`) make them upright, so an odd number of them gives slots of height×width.
    """

    def __init__(self, width: int, height: int, device: torch.device, turns: int = 0):
        self.width = width
        self.height = height
        self.device = device
        self.turns = turns % 4
        self.converted = 0  # pictures that needed FFmpeg's converter (not 4:2:0 8-bit, or resized)
        self._staging: torch.Tensor | None = None  # pinned host buffer for slots on a GPU
        self._resize_logged = False

    def write(self, picture: av.VideoFrame, slot: torch.Tensor) -> None:
        target = self._host_target(slot)
        fmt = picture.format.name
        too_small = picture.width < self.width or picture.height < self.height
        needs_resize = too_small or picture.width > self.width + 1 or picture.height > self.height + 1
        if needs_resize and not self._resize_logged:
            log.warning(
                "picture size changed mid-stream to %dx%d; scaling to %dx%d",
                picture.width,
                picture.height,
                self.width,
                self.height,
            )
            self._resize_logged = True
        if needs_resize or fmt not in PLANAR_420 + SEMI_PLANAR_420:
            picture = picture.reformat(width=self.width, height=self.height, format="yuv420p")
            fmt = "yuv420p"
            self.converted += 1
        y, u, v = (plane.numpy() for plane in i420_planes(target))
        turns, rows, cols = self.turns, self.height, self.width
        y[...] = np.rot90(_plane_rows(picture.planes[0], rows, cols), turns)
        if fmt in PLANAR_420:
            u[...] = np.rot90(_plane_rows(picture.planes[1], rows // 2, cols // 2), turns)
            v[...] = np.rot90(_plane_rows(picture.planes[2], rows // 2, cols // 2), turns)
        else:
            uv = _plane_rows(picture.planes[1], rows // 2, cols).reshape(rows // 2, cols // 2, 2)
            u[...] = np.rot90(uv[..., 0], turns)
            v[...] = np.rot90(uv[..., 1], turns)
        if target is not slot:
            slot.copy_(target)  # pinned → device; synchronous, so the staging buffer is free again

    def _host_target(self, slot: torch.Tensor) -> torch.Tensor:
        """Where to write: the slot itself on CPU, a pinned staging buffer for a GPU slot."""
        if slot.device.type == "cpu":
            return slot
        if self._staging is None:
            self._staging = torch.empty(slot.shape, dtype=torch.uint8, pin_memory=True)
        return self._staging


def _plane_rows(plane: av.video.plane.VideoPlane, rows: int, width: int) -> np.ndarray:
    """The top-left rows×width bytes of a plane, as a view of the decoder's buffer."""
    buffer = np.frombuffer(plane, dtype=np.uint8)
    return buffer[: rows * plane.line_size].reshape(rows, plane.line_size)[:, :width]
