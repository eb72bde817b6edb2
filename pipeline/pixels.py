"""How a frame's pixels sit in its ring slot: the pixel format and the colour it means.

Frames stay in the layout the decoder gives (I420, "yuv420p") from decode to encode, so a
plain transcode never converts colour at all; a stage that wants RGB converts only what it
needs, at the size it needs. `rgb24` slots exist for sources that draw in RGB and for tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch

from kernels.colour import i420_planes, rgb_to_i420

# Colour code points of ITU-T H.273 (the numbers FFmpeg, containers and codecs all use).
MATRIX_BT709, MATRIX_UNSPECIFIED, MATRIX_BT470BG, MATRIX_SMPTE170M = 1, 2, 5, 6
RANGE_UNSPECIFIED, RANGE_LIMITED, RANGE_FULL = 0, 1, 2
HD_MIN_HEIGHT = 720  # px; untagged video this tall or taller is taken as BT.709, shorter as BT.601


class PixelFormat(StrEnum):
    YUV420P = "yuv420p"  # packed I420: (H·3/2)×W uint8
    RGB24 = "rgb24"  # H×W×3 uint8

    @property
    def kernel_layout(self) -> str:
        """The name `kernels.ops` uses for this layout ("i420" or "rgb")."""
        return "i420" if self is PixelFormat.YUV420P else "rgb"


@dataclass(frozen=True, slots=True)
class Colour:
    """Colour metadata carried from the input to the output, as H.273 code points (2 = unspecified)."""

    matrix: int = MATRIX_UNSPECIFIED
    primaries: int = 2
    transfer: int = 2
    range: int = RANGE_UNSPECIFIED

    def matrix_name(self, height: int) -> str:
        """The conversion matrix to use for RGB: the tagged one, else what the size implies."""
        if self.matrix == MATRIX_BT709:
            return "bt709"
        if self.matrix in (MATRIX_BT470BG, MATRIX_SMPTE170M):
            return "bt601"
        return "bt709" if height >= HD_MIN_HEIGHT else "bt601"

    @property
    def full_range(self) -> bool:
        return self.range == RANGE_FULL

    def kernel_args(self, height: int) -> dict[str, object]:
        """`matrix` and `full_range` as the colour kernels take them, for a picture `height` px tall."""
        return {"matrix": self.matrix_name(height), "full_range": self.full_range}


def slot_shape(pixel_format: PixelFormat | str, width: int, height: int) -> tuple[int, ...]:
    """The shape of one ring slot holding a width×height picture in `pixel_format`."""
    fmt = PixelFormat(pixel_format)
    if fmt is PixelFormat.YUV420P:
        if width % 2 or height % 2:
            raise ValueError(f"yuv420p needs an even width and height, got {width}x{height}")
        return (height * 3 // 2, width)
    return (height, width, 3)


def luma_plane(image: torch.Tensor, pixel_format: PixelFormat | str) -> torch.Tensor | None:
    """The H×W luma (Y) plane as a view, or None when the format has none (RGB)."""
    if PixelFormat(pixel_format) is PixelFormat.YUV420P:
        return i420_planes(image)[0]
    return None


def picture_size(image: torch.Tensor, pixel_format: PixelFormat | str) -> tuple[int, int]:
    """(width, height) of the picture a slot holds."""
    if PixelFormat(pixel_format) is PixelFormat.YUV420P:
        return image.shape[1], image.shape[0] * 2 // 3
    return image.shape[1], image.shape[0]


def paint_value(
    rgb: tuple[int, int, int], pixel_format: PixelFormat | str, colour: Colour, height: int, device: torch.device
) -> torch.Tensor | tuple[int, int, int]:
    """How a colour is written into frames of a stream: its RGB as a uint8 tensor on `device` for
    RGB24, or the Y, U and V values a patch of it has in the stream's own matrix and range."""
    if PixelFormat(pixel_format) is PixelFormat.RGB24:
        return torch.tensor(rgb, dtype=torch.uint8, device=device)
    patch = rgb_to_i420(
        torch.tensor(rgb, dtype=torch.uint8).expand(2, 2, 3),
        matrix=colour.matrix_name(height),
        full_range=colour.full_range,
    )
    y, u, v = (int(plane[0, 0]) for plane in i420_planes(patch))
    return y, u, v


def fill_rect(
    image: torch.Tensor, pixel_format: PixelFormat | str, rect: tuple[int, int, int, int], value: object
) -> None:
    """Paint the rectangle (x0, y0, x1, y1) in one colour (`paint_value`'s). In I420 its edges must
    be even: each chroma sample covers a 2×2 block, which is all painted or not at all."""
    x0, y0, x1, y1 = rect
    if PixelFormat(pixel_format) is PixelFormat.RGB24:
        image[y0:y1, x0:x1] = value
        return
    y, u, v = i420_planes(image)
    y[y0:y1, x0:x1] = value[0]  # type: ignore[index]
    u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = value[1]  # type: ignore[index]
    v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = value[2]  # type: ignore[index]
