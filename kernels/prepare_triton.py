"""Triton kernel for `kernels.prepare.prepare_input`: crop, resize, colour, normalize, NCHW in one pass.

One program writes one output row of one box: for each output pixel it reads the four frame
pixels around its sample point straight from the frame's own planes (Y, and U/V or UV for the
block each sits in; or R, G, B), converts them, blends them, normalizes and stores. Nothing
frame-sized is made on the way, so a 112×112 face crop from a 1080p frame reads only the
pixels around the crop, and the full-frame conversion the torch path costs is gone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from kernels.colour import conversion_constants
from kernels.prepare import LAYOUTS, frame_size, normalization, whole_frame

BLOCK = 128  # output pixels per program


@triton.jit
def _sample(
    src,
    yy,
    xx,
    valid,
    height,
    width,
    kr,
    kb,
    y_offset,
    y_span,
    c_span,
    fill,
    LAYOUT: tl.constexpr,
    GRAY: tl.constexpr,
):
    """(R, G, B) — or luma three times — of frame pixels (yy, xx) in 0..255; `fill` off the frame."""
    inside = valid & (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
    if LAYOUT == 2:  # rgb
        at = src + (yy * width + xx) * 3
        r = tl.where(inside, tl.load(at, mask=inside, other=0).to(tl.float32), fill)
        g = tl.where(inside, tl.load(at + 1, mask=inside, other=0).to(tl.float32), fill)
        b = tl.where(inside, tl.load(at + 2, mask=inside, other=0).to(tl.float32), fill)
        if GRAY:
            luma = tl.where(inside, kr * r + (1.0 - kr - kb) * g + kb * b, fill)
            return luma, luma, luma
        return r, g, b
    luma = (tl.load(src + yy * width + xx, mask=inside, other=0).to(tl.float32) - y_offset) * (255.0 / y_span)
    if GRAY:
        luma = tl.where(inside, tl.minimum(tl.maximum(luma, 0.0), 255.0), fill)
        return luma, luma, luma
    plane = height * width
    if LAYOUT == 1:  # nv12
        pair = plane + (yy // 2) * width + (xx // 2) * 2
        u = tl.load(src + pair, mask=inside, other=128).to(tl.float32)
        v = tl.load(src + pair + 1, mask=inside, other=128).to(tl.float32)
    else:  # i420
        sample = plane + (yy // 2) * (width // 2) + xx // 2
        u = tl.load(src + sample, mask=inside, other=128).to(tl.float32)
        v = tl.load(src + sample + plane // 4, mask=inside, other=128).to(tl.float32)
    cb = (u - 128.0) * (255.0 / c_span)
    cr = (v - 128.0) * (255.0 / c_span)
    r = luma + 2.0 * (1.0 - kr) * cr
    b = luma + 2.0 * (1.0 - kb) * cb
    g = (luma - kr * r - kb * b) / (1.0 - kr - kb)
    r = tl.where(inside, tl.minimum(tl.maximum(r, 0.0), 255.0), fill)
    g = tl.where(inside, tl.minimum(tl.maximum(g, 0.0), 255.0), fill)
    b = tl.where(inside, tl.minimum(tl.maximum(b, 0.0), 255.0), fill)
    return r, g, b


@triton.jit
def _prepare_kernel(
    src,
    boxes,
    dst,
    height,
    width,
    out_h,
    out_w,
    kr,
    kb,
    y_offset,
    y_span,
    c_span,
    scale0,
    scale1,
    scale2,
    shift0,
    shift1,
    shift2,
    fill,
    LAYOUT: tl.constexpr,
    GRAY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    box = tl.program_id(0) // out_h
    row = tl.program_id(0) % out_h
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = cols < out_w
    x0 = tl.load(boxes + box * 4)
    y0 = tl.load(boxes + box * 4 + 1)
    x1 = tl.load(boxes + box * 4 + 2)
    y1 = tl.load(boxes + box * 4 + 3)
    sy = y0 + (row + 0.5) * ((y1 - y0) / out_h) - 0.5
    sx = x0 + (cols.to(tl.float32) + 0.5) * ((x1 - x0) / out_w) - 0.5
    top_f = tl.floor(sy)
    left_f = tl.floor(sx)
    wy = sy - top_f
    wx = sx - left_f
    top = top_f.to(tl.int32)
    left = left_f.to(tl.int32)
    r00, g00, b00 = _sample(src, top, left, valid, height, width, kr, kb, y_offset, y_span, c_span, fill, LAYOUT, GRAY)
    r01, g01, b01 = _sample(
        src, top, left + 1, valid, height, width, kr, kb, y_offset, y_span, c_span, fill, LAYOUT, GRAY
    )
    r10, g10, b10 = _sample(
        src, top + 1, left, valid, height, width, kr, kb, y_offset, y_span, c_span, fill, LAYOUT, GRAY
    )
    r11, g11, b11 = _sample(
        src, top + 1, left + 1, valid, height, width, kr, kb, y_offset, y_span, c_span, fill, LAYOUT, GRAY
    )
    w00 = (1.0 - wy) * (1.0 - wx)
    w01 = (1.0 - wy) * wx
    w10 = wy * (1.0 - wx)
    w11 = wy * wx
    out_type = dst.dtype.element_ty
    plane = out_h * out_w
    first = dst + box * (1 if GRAY else 3) * plane + row * out_w + cols
    r = r00 * w00 + r01 * w01 + r10 * w10 + r11 * w11
    tl.store(first, (r * scale0 - shift0).to(out_type), mask=valid)
    if not GRAY:
        g = g00 * w00 + g01 * w01 + g10 * w10 + g11 * w11
        b = b00 * w00 + b01 * w01 + b10 * w10 + b11 * w11
        tl.store(first + plane, (g * scale1 - shift1).to(out_type), mask=valid)
        tl.store(first + 2 * plane, (b * scale2 - shift2).to(out_type), mask=valid)


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
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """As `kernels.prepare.prepare_input`; `out` (N×C×H×W of `dtype`) is written if given."""
    width, height = frame_size(image, layout)
    channels = 1 if gray else 3
    mean, std = normalization(channels, mean, std)
    if not image.is_contiguous() or image.dtype != torch.uint8:
        raise ValueError("the frame must be a contiguous uint8 tensor")
    if boxes is None:
        boxes = whole_frame(image, layout)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes are N×4 (x0, y0, x1, y1), got {tuple(boxes.shape)}")
    boxes = boxes.to(device=image.device, dtype=torch.float32).contiguous()
    out_h, out_w = size
    shape = (boxes.shape[0], channels, out_h, out_w)
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=image.device)
    elif tuple(out.shape) != shape or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {shape} tensor, got {tuple(out.shape)}")
    if out.numel() == 0:
        return out
    scales = [1.0 / (255.0 * s) for s in std] + [0.0] * (3 - channels)
    shifts = [m / s for m, s in zip(mean, std, strict=True)] + [0.0] * (3 - channels)
    grid = (boxes.shape[0] * out_h, triton.cdiv(out_w, BLOCK))
    _prepare_kernel[grid](
        image,
        boxes,
        out,
        height,
        width,
        out_h,
        out_w,
        *conversion_constants(matrix, full_range),
        *scales,
        *shifts,
        float(fill),
        LAYOUT=LAYOUTS.index(layout),
        GRAY=gray,
        BLOCK=BLOCK,
    )
    return out
