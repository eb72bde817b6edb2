"""Model input from a frame, in one step: crop, bilinear resize, RGB or gray, normalize, NCHW.

This is the torch reference; `kernels/prepare_triton.py` does the same in one pass over the
pixels it needs, reading the frame in its own layout (I420, NV12 or RGB) so nothing converts
the whole frame first. The definition, shared by both:

- Each output pixel (i, j) of box (x0, y0, x1, y1) samples the frame at
  x = x0 + (j + ½)·(x1 − x0)/W_out − ½, y likewise (the pixel-centre convention of
  `align_corners=False`), bilinearly from its four neighbours.
- A neighbour outside the frame counts as `fill` (0..255; 0, black, by default, as `roi_align`
  does): a box partly off the frame fades to it at the edge. The expression model's crops fill
  with the picture's own grey, as the pipeline it was trained with pads.
- RGB comes from YUV as `kernels.colour` defines it (each chroma sample covers its 2×2 block),
  before rounding. Gray is the luma: Y rescaled to full range, or Kr·R + Kg·G + Kb·B from RGB.
- Values are scaled to 0..1, then `(v − mean[c]) / std[c]`, and written N×C×H_out×W_out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from kernels.colour import conversion_constants, i420_planes, nv12_planes

LAYOUTS = ("i420", "nv12", "rgb")
# RGB from YUV for at least 1/WHOLE_FRAME_SHARE as many samples as the frame has pixels (a
# detector's input at half the frame's width): convert the whole frame in contiguous passes and
# let grid_sample blend, rather than convert four gathered neighbours per sample (about half
# the time for a detector's input). Fewer samples (face crops): only their neighbours are
# converted, which is then several times cheaper than the whole frame.
WHOLE_FRAME_SHARE = 4


def frame_size(image: torch.Tensor, layout: str) -> tuple[int, int]:
    """(width, height) of the picture in `image`."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if layout == "rgb":
        if image.dim() != 3 or image.shape[2] != 3:
            raise ValueError(f"an rgb image is H×W×3, got {tuple(image.shape)}")
        return image.shape[1], image.shape[0]
    rows, width = image.shape
    return width, rows * 2 // 3


def whole_frame(image: torch.Tensor, layout: str) -> torch.Tensor:
    """One box covering the frame: what a detector takes."""
    width, height = frame_size(image, layout)
    return torch.tensor([[0.0, 0.0, float(width), float(height)]], device=image.device)


def normalization(
    channels: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Checked per-channel mean and std (on the 0..1 scale); None: 0 and 1."""
    mean = tuple(mean) if mean is not None else (0.0,) * channels
    std = tuple(std) if std is not None else (1.0,) * channels
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need {channels} value(s) each, got {len(mean)} and {len(std)}")
    if any(s == 0 for s in std):
        raise ValueError("std must not be 0")
    return mean, std


def prepare_input(
    image: torch.Tensor,
    *,
    layout: str,
    size: tuple[int, int],
    boxes: torch.Tensor | None = None,
    gray: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    dtype: torch.dtype = torch.float32,
    matrix: str = "bt601",
    full_range: bool = False,
    fill: float = 0.0,
) -> torch.Tensor:
    """N×C×H×W model input from `boxes` (N×4 x0, y0, x1, y1 in frame pixels; None: the whole frame).

    `size` is the model's (height, width); C is 1 with `gray`, else 3 (R, G, B). `mean` and
    `std` are per channel on the 0..1 scale (None: 0 and 1). `fill` is the value (0..255) of
    every channel outside the frame.
    """
    out_h, out_w = size
    channels = 1 if gray else 3
    mean, std = normalization(channels, mean, std)
    if boxes is None:
        boxes = whole_frame(image, layout)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes are N×4 (x0, y0, x1, y1), got {tuple(boxes.shape)}")
    width, height = frame_size(image, layout)
    count = boxes.shape[0]
    if count == 0 or out_h == 0 or out_w == 0:
        return torch.empty((count, channels, out_h, out_w), dtype=dtype, device=image.device)
    box = boxes.to(device=image.device, dtype=torch.float32)
    x0, y0, x1, y1 = box.unbind(1)
    cols = torch.arange(out_w, device=image.device, dtype=torch.float32) + 0.5
    rows = torch.arange(out_h, device=image.device, dtype=torch.float32) + 0.5
    sx = x0[:, None] + cols[None] * ((x1 - x0) / out_w)[:, None] - 0.5  # N×W_out, frame pixels
    sy = y0[:, None] + rows[None] * ((y1 - y0) / out_h)[:, None] - 0.5  # N×H_out
    constants = conversion_constants(matrix, full_range)
    planes = None
    if (layout == "rgb") != gray:  # Y alone, or RGB as it is: no conversion per pixel
        top, bottom, left, right = _window(sx, sy, width, height)
        planes = _ready_planes(image, layout, gray, (top, bottom, left, right), constants)
    elif layout != "rgb" and count * out_h * out_w * WHOLE_FRAME_SHARE >= width * height:
        top, bottom, left, right = 0, height, 0, width
        planes = _converted_planes(image, layout, constants)
    if planes is not None:  # Y for gray, RGB as it is, or the whole frame converted: let grid_sample blend
        # grid_sample's coordinates for the same points, over the rows and columns the planes hold
        grid_x = (sx - left + 0.5) / (right - left) * 2 - 1
        grid_y = (sy - top + 0.5) / (bottom - top) * 2 - 1
        grid = torch.stack(torch.broadcast_tensors(grid_x[:, None, :], grid_y[:, :, None]), dim=-1)
        # Outside the planes is outside the frame: sampled as 0 from the planes less `fill`, then
        # `fill` added back, it counts as `fill`.
        source = (planes - fill if fill else planes)[None].expand(count, -1, -1, -1)
        sampled = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        sampled = sampled.transpose(0, 1)
        if fill:
            sampled = sampled + fill
    else:  # a conversion per pixel: convert only the four neighbours of each sample point
        sampled = _blend_neighbours(image, layout, gray, constants, sx, sy, (channels, height, width), fill)
    scale = torch.tensor(std, device=image.device, dtype=torch.float32).view(-1, 1, 1, 1) * 255.0
    shift = torch.tensor(mean, device=image.device, dtype=torch.float32).view(-1, 1, 1, 1) * 255.0
    return ((sampled - shift) / scale).transpose(0, 1).contiguous().to(dtype)


def _window(sx: torch.Tensor, sy: torch.Tensor, width: int, height: int) -> tuple[int, int, int, int]:
    """Rows top..bottom and columns left..right (ends excluded) of the frame that hold every
    neighbour of the sample points that is in the frame (at least one pixel)."""

    def span(points: torch.Tensor, size: int) -> tuple[int, int]:
        first = min(max(0, math.floor(float(points.min()))), size - 1)
        return first, max(first + 1, min(size, math.floor(float(points.max())) + 2))

    (top, bottom), (left, right) = span(sy, height), span(sx, width)
    return top, bottom, left, right


def _ready_planes(
    image: torch.Tensor,
    layout: str,
    gray: bool,
    window: tuple[int, int, int, int],
    constants: tuple[float, float, float, float, float],
) -> torch.Tensor:
    """C×h×w float planes of the `window` (top, bottom, left, right) for the two cases that cost
    no conversion per pixel: Y alone of a YUV frame, or an RGB frame as it is. Face crops read a
    small part of the frame: only that part is made float."""
    _, _, y_offset, y_span, _ = constants
    top, bottom, left, right = window
    if layout == "rgb":
        return image[top:bottom, left:right].permute(2, 0, 1).to(torch.float32)
    y_plane = image[: image.shape[0] * 2 // 3][top:bottom, left:right]
    return ((y_plane.to(torch.float32) - y_offset) * (255.0 / y_span)).clamp(0, 255)[None]


def _converted_planes(
    image: torch.Tensor, layout: str, constants: tuple[float, float, float, float, float]
) -> torch.Tensor:
    """3×H×W float RGB of a whole YUV frame, 0..255 before rounding, by `_pixels_at`'s arithmetic.

    Each chroma term is computed once per chroma sample, doubled across, and added to both rows
    of luma it covers through a broadcast view, so every pass is over contiguous rows.
    """
    kr, kb, y_offset, y_span, c_span = constants
    if layout == "i420":
        y_plane, u, v = i420_planes(image)
    else:
        y_plane, uv = nv12_planes(image)
        u, v = uv[:, 0::2], uv[:, 1::2]
    height, width = y_plane.shape

    def row_pairs(plane: torch.Tensor) -> torch.Tensor:  # H×W → (H/2)×2×W: the rows one chroma row covers
        return plane.view(height // 2, 2, width)

    def across(term: torch.Tensor) -> torch.Tensor:  # (H/2)×(W/2) → (H/2)×1×W
        return term.repeat_interleave(2, dim=1)[:, None, :]

    cb = (u.to(torch.float32) - 128.0) * (255.0 / c_span)
    cr = (v.to(torch.float32) - 128.0) * (255.0 / c_span)
    # Each channel is luma plus a term of the chroma sample alone, so the terms are worked out at a
    # quarter of the pixels and each full-size plane takes one pass: G = (L − Kr·R − Kb·B)/Kg is
    # L − (Kr·R_term + Kb·B_term)/Kg.
    red = 2.0 * (1.0 - kr) * cr
    blue = 2.0 * (1.0 - kb) * cb
    green = (red * kr + blue * kb).mul_(-1.0 / (1.0 - kr - kb))
    luma = row_pairs(y_plane.to(torch.float32).sub_(y_offset).mul_(255.0 / y_span))
    planes = torch.empty((3, height, width), dtype=torch.float32, device=image.device)
    for plane, term in zip(planes, (red, green, blue), strict=True):
        torch.add(luma, across(term), out=row_pairs(plane))
    return planes.clamp_(0, 255)


def _blend_neighbours(
    image: torch.Tensor,
    layout: str,
    gray: bool,
    constants: tuple[float, float, float, float, float],
    sx: torch.Tensor,
    sy: torch.Tensor,
    shape: tuple[int, int, int],
    fill: float = 0.0,
) -> torch.Tensor:
    """C×N×H_out×W_out: each sample point's four neighbours converted, weighted and summed."""
    channels, height, width = shape
    top, left = torch.floor(sy), torch.floor(sx)
    wy, wx = sy - top, sx - left
    top, left = top.long(), left.long()
    sampled = torch.zeros((channels, sx.shape[0], sy.shape[1], sx.shape[1]), dtype=torch.float32, device=sx.device)
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        yy, xx = (top + dy)[:, :, None], (left + dx)[:, None, :]  # N×H_out×1, N×1×W_out
        inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)  # off the frame: `fill`
        weight = (wy if dy else 1.0 - wy)[:, :, None] * (wx if dx else 1.0 - wx)[:, None, :]
        values = _pixels_at(image, layout, yy.clamp(0, height - 1), xx.clamp(0, width - 1), gray, constants)
        sampled += values * (weight * inside)
        if fill:
            sampled += fill * (weight * ~inside)
    return sampled


def _pixels_at(
    image: torch.Tensor,
    layout: str,
    yy: torch.Tensor,
    xx: torch.Tensor,
    gray: bool,
    constants: tuple[float, float, float, float, float],
) -> torch.Tensor:
    """C×(broadcast of yy, xx) values of the frame pixels at rows `yy`, columns `xx`, in 0..255."""
    kr, kb, y_offset, y_span, c_span = constants
    if layout == "rgb":
        rgb = image[yy, xx].to(torch.float32).movedim(-1, 0)  # 3×…
        if gray:
            return (kr * rgb[0] + (1.0 - kr - kb) * rgb[1] + kb * rgb[2])[None]
        return rgb
    if layout == "i420":
        y_plane, u_plane, v_plane = i420_planes(image)
        u, v = u_plane[yy // 2, xx // 2], v_plane[yy // 2, xx // 2]
    else:
        y_plane, uv = nv12_planes(image)
        u, v = uv[yy // 2, (xx // 2) * 2], uv[yy // 2, (xx // 2) * 2 + 1]
    luma = (y_plane[yy, xx].to(torch.float32) - y_offset) * (255.0 / y_span)
    if gray:
        return luma.clamp(0, 255)[None]
    cb = (u.to(torch.float32) - 128.0) * (255.0 / c_span)
    cr = (v.to(torch.float32) - 128.0) * (255.0 / c_span)
    r = luma + 2.0 * (1.0 - kr) * cr
    b = luma + 2.0 * (1.0 - kb) * cb
    g = (luma - kr * r - kb * b) / (1.0 - kr - kb)
    return torch.stack((r, g, b)).clamp(0, 255)
