"""Copying a decoded picture into a ring slot as packed I420, in one pass over the pixels.

Decoders hand out pictures in their own buffers, with padded rows, in whatever layout the
codec uses. The common layouts (yuv420p, its full-range twin yuvj420p, and NV12 from hardware
decoders) are copied plane by plane with no colour maths; anything else (10-bit, 4:2:2, 4:4:4,
RGB) goes through FFmpeg's converter first. Odd sizes lose their last row or column, since
4:2:0 encoders need even ones.
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


class PictureWriter:
    """Writes decoded `av.VideoFrame`s of any layout into I420 slots of one fixed size."""

    def __init__(self, width: int, height: int, device: torch.device):
        self.width = width
        self.height = height
        self.device = device
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
        _copy_plane(picture.planes[0], y)
        if fmt in PLANAR_420:
            _copy_plane(picture.planes[1], u)
            _copy_plane(picture.planes[2], v)
        else:
            uv = _plane_rows(picture.planes[1], u.shape[0], 2 * u.shape[1]).reshape(u.shape[0], u.shape[1], 2)
            u[...] = uv[..., 0]
            v[...] = uv[..., 1]
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


def _copy_plane(plane: av.video.plane.VideoPlane, out: np.ndarray) -> None:
    out[...] = _plane_rows(plane, out.shape[0], out.shape[1])
