"""Triton kernel for `kernels.composite.composite`: blend an RGBA overlay into RGB, I420 or NV12 in place.

Only the placed, clipped box is visited. For 4:2:0 frames one program takes a pair of rows
and a run of 2×2 blocks: it blends the four Y samples and then the block's U and V from the
same four overlay samples, so the frame is read and written once and never converted to RGB.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.colour import conversion_constants
from kernels.colour_triton import round_u8
from kernels.composite import blend_region, placed_size
from kernels.prepare import LAYOUTS, frame_size

BLOCK = 128  # pixels (RGB) or 2×2 blocks (4:2:0) per program


@triton.jit
def _overlay(over, over_h, over_w, row, cols, valid, x, y, box_w, box_h, inv_scale):
    """Overlay (R, G, B) in 0..255 and α in 0..1 at frame pixels (row, cols); α is 0 off the placed box."""
    u = (cols.to(tl.float32) - x + 0.5) * inv_scale - 0.5
    v = (row.to(tl.float32) - y + 0.5) * inv_scale - 0.5
    u = tl.minimum(tl.maximum(u, 0.0), over_w - 1.0)  # edges held
    v = tl.minimum(tl.maximum(v, 0.0), over_h - 1.0)
    left_f = tl.floor(u)
    top_f = tl.floor(v)
    wu = u - left_f
    wv = v - top_f
    left = left_f.to(tl.int32)
    top = top_f.to(tl.int32)
    right = tl.minimum(left + 1, over_w - 1)
    bottom = tl.minimum(top + 1, over_h - 1)
    p00 = over + (top * over_w + left) * 4
    p01 = over + (top * over_w + right) * 4
    p10 = over + (bottom * over_w + left) * 4
    p11 = over + (bottom * over_w + right) * 4
    w00 = (1.0 - wv) * (1.0 - wu)
    w01 = (1.0 - wv) * wu
    w10 = wv * (1.0 - wu)
    w11 = wv * wu
    r = (
        tl.load(p00, mask=valid, other=0).to(tl.float32) * w00
        + tl.load(p01, mask=valid, other=0).to(tl.float32) * w01
        + tl.load(p10, mask=valid, other=0).to(tl.float32) * w10
        + tl.load(p11, mask=valid, other=0).to(tl.float32) * w11
    )
    g = (
        tl.load(p00 + 1, mask=valid, other=0).to(tl.float32) * w00
        + tl.load(p01 + 1, mask=valid, other=0).to(tl.float32) * w01
        + tl.load(p10 + 1, mask=valid, other=0).to(tl.float32) * w10
        + tl.load(p11 + 1, mask=valid, other=0).to(tl.float32) * w11
    )
    b = (
        tl.load(p00 + 2, mask=valid, other=0).to(tl.float32) * w00
        + tl.load(p01 + 2, mask=valid, other=0).to(tl.float32) * w01
        + tl.load(p10 + 2, mask=valid, other=0).to(tl.float32) * w10
        + tl.load(p11 + 2, mask=valid, other=0).to(tl.float32) * w11
    )
    a = (
        tl.load(p00 + 3, mask=valid, other=0).to(tl.float32) * w00
        + tl.load(p01 + 3, mask=valid, other=0).to(tl.float32) * w01
        + tl.load(p10 + 3, mask=valid, other=0).to(tl.float32) * w10
        + tl.load(p11 + 3, mask=valid, other=0).to(tl.float32) * w11
    )
    inside = valid & (cols >= x) & (cols < x + box_w) & (row >= y) & (row < y + box_h)
    return r, g, b, tl.where(inside, a / 255.0, 0.0)


@triton.jit
def _composite_rgb_kernel(
    frame, over, width, over_h, over_w, x, y, box_w, box_h, inv_scale, r0, c0, c1, BLOCK: tl.constexpr
):
    row = r0 + tl.program_id(0)
    cols = c0 + tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = cols < c1
    r, g, b, a = _overlay(over, over_h, over_w, row, cols, valid, x, y, box_w, box_h, inv_scale)
    at = frame + (row * width + cols) * 3
    fr = tl.load(at, mask=valid, other=0).to(tl.float32)
    fg = tl.load(at + 1, mask=valid, other=0).to(tl.float32)
    fb = tl.load(at + 2, mask=valid, other=0).to(tl.float32)
    tl.store(at, round_u8(fr * (1.0 - a) + r * a), mask=valid)
    tl.store(at + 1, round_u8(fg * (1.0 - a) + g * a), mask=valid)
    tl.store(at + 2, round_u8(fb * (1.0 - a) + b * a), mask=valid)


@triton.jit
def _blend_luma(frame, width, row, cols, valid, r, g, b, a, kr, kb, y_offset, y_span, c_span):
    """Blend one pixel's Y; return its α and α-weighted Cb, Cr code values for the block's chroma."""
    luma = kr * r + (1.0 - kr - kb) * g + kb * b
    at = frame + row * width + cols
    old = tl.load(at, mask=valid, other=0).to(tl.float32)
    tl.store(at, round_u8(old * (1.0 - a) + (y_offset + luma * (y_span / 255.0)) * a), mask=valid)
    cb = 128.0 + (b - luma) / (2.0 * (1.0 - kb)) * (c_span / 255.0)
    cr = 128.0 + (r - luma) / (2.0 * (1.0 - kr)) * (c_span / 255.0)
    return a * cb, a * cr


@triton.jit
def _composite_yuv_kernel(
    frame,
    over,
    height,
    width,
    over_h,
    over_w,
    x,
    y,
    box_w,
    box_h,
    inv_scale,
    r0,
    c0,
    c1,
    kr,
    kb,
    y_offset,
    y_span,
    c_span,
    NV12: tl.constexpr,
    BLOCK: tl.constexpr,
):
    top = r0 + tl.program_id(0) * 2
    left = c0 + (tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)) * 2
    valid = left < c1
    sum_a = tl.zeros((BLOCK,), dtype=tl.float32)
    sum_cb = tl.zeros((BLOCK,), dtype=tl.float32)
    sum_cr = tl.zeros((BLOCK,), dtype=tl.float32)
    for dy in tl.static_range(2):
        for dx in tl.static_range(2):
            r, g, b, a = _overlay(over, over_h, over_w, top + dy, left + dx, valid, x, y, box_w, box_h, inv_scale)
            acb, acr = _blend_luma(
                frame, width, top + dy, left + dx, valid, r, g, b, a, kr, kb, y_offset, y_span, c_span
            )
            sum_a += a
            sum_cb += acb
            sum_cr += acr
    mean_a = sum_a * 0.25
    plane = height * width
    if NV12:
        u_at = frame + plane + (top // 2) * width + left
        v_at = u_at + 1
    else:
        u_at = frame + plane + (top // 2) * (width // 2) + left // 2
        v_at = u_at + plane // 4
    u = tl.load(u_at, mask=valid, other=0).to(tl.float32)
    v = tl.load(v_at, mask=valid, other=0).to(tl.float32)
    tl.store(u_at, round_u8(u * (1.0 - mean_a) + sum_cb * 0.25), mask=valid)
    tl.store(v_at, round_u8(v * (1.0 - mean_a) + sum_cr * 0.25), mask=valid)


def composite(
    image: torch.Tensor,
    overlay: torch.Tensor,
    *,
    layout: str,
    x: int,
    y: int,
    scale: float = 1.0,
    matrix: str = "bt601",
    full_range: bool = False,
) -> torch.Tensor:
    """As `kernels.composite.composite`: blend in place and return `image`."""
    width, height = frame_size(image, layout)
    box_w, box_h = placed_size(overlay, scale)
    if not image.is_contiguous() or image.dtype != torch.uint8 or not overlay.is_contiguous():
        raise ValueError("the frame and the overlay must be contiguous uint8 tensors")
    region = blend_region(width, height, x, y, box_w, box_h, layout)
    if region is None:
        return image
    r0, r1, c0, c1 = region
    common = (overlay.shape[0], overlay.shape[1], x, y, box_w, box_h, 1.0 / scale)
    if layout == "rgb":
        grid = (r1 - r0, triton.cdiv(c1 - c0, BLOCK))
        _composite_rgb_kernel[grid](image, overlay, width, *common, r0, c0, c1, BLOCK=BLOCK)
        return image
    grid = ((r1 - r0) // 2, triton.cdiv((c1 - c0) // 2, BLOCK))
    _composite_yuv_kernel[grid](
        image,
        overlay,
        height,
        width,
        *common,
        r0,
        c0,
        c1,
        *conversion_constants(matrix, full_range),
        NV12=LAYOUTS.index(layout) == 1,
        BLOCK=BLOCK,
    )
    return image
