"""Triton kernels for 4:2:0 YUV (I420, NV12) ↔ RGB: one pass over the pixels, nothing in between.

Each function here computes what its namesake in `kernels/colour.py` does, to within one code
value (the reference rounds halves to even, these round them up). Every pixel is read once
and written once; the torch references make several full-size float temporaries instead.

To YUV, one program takes a pair of rows and a run of 2×2 blocks, so each block's chroma is
averaged in registers. To RGB, one program takes one row and a run of pixels; each chroma
sample is read by the four pixels it covers (from cache after the first).

Run on CUDA tensors; on CPU tensors only under `TRITON_INTERPRET=1` (the tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.colour import conversion_constants

BLOCK = 256  # pixels (to RGB) or 2×2 blocks (to YUV) per program


@triton.jit
def round_u8(x):
    """Float code values → uint8: nearest, halves up, clamped to 0..255 (every kernel that writes pixels)."""
    return tl.minimum(tl.maximum(tl.floor(x + 0.5), 0.0), 255.0).to(tl.uint8)


@triton.jit
def _yuv420_to_rgb_kernel(
    src,
    dst,
    height,
    width,
    kr,
    kb,
    y_offset,
    y_span,
    c_span,
    NV12: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < width
    luma_plane = height * width
    y = tl.load(src + row * width + cols, mask=inside, other=0).to(tl.float32)
    if NV12:
        pair = luma_plane + (row // 2) * width + (cols // 2) * 2
        u = tl.load(src + pair, mask=inside, other=128).to(tl.float32)
        v = tl.load(src + pair + 1, mask=inside, other=128).to(tl.float32)
    else:
        sample = luma_plane + (row // 2) * (width // 2) + cols // 2
        u = tl.load(src + sample, mask=inside, other=128).to(tl.float32)
        v = tl.load(src + sample + luma_plane // 4, mask=inside, other=128).to(tl.float32)
    luma = (y - y_offset) * (255.0 / y_span)
    cb = (u - 128.0) * (255.0 / c_span)
    cr = (v - 128.0) * (255.0 / c_span)
    r = luma + 2.0 * (1.0 - kr) * cr
    b = luma + 2.0 * (1.0 - kb) * cb
    g = (luma - kr * r - kb * b) / (1.0 - kr - kb)
    out = dst + (row * width + cols) * 3
    tl.store(out, round_u8(r), mask=inside)
    tl.store(out + 1, round_u8(g), mask=inside)
    tl.store(out + 2, round_u8(b), mask=inside)


@triton.jit
def _rgb_pixel(src, row, cols, width, inside, kr, kb):
    """Luma and the two colour differences of pixels (row, cols), unscaled (0..255, ±127.5)."""
    at = src + (row * width + cols) * 3
    r = tl.load(at, mask=inside, other=0).to(tl.float32)
    g = tl.load(at + 1, mask=inside, other=0).to(tl.float32)
    b = tl.load(at + 2, mask=inside, other=0).to(tl.float32)
    luma = kr * r + (1.0 - kr - kb) * g + kb * b
    return luma, (b - luma) / (2.0 * (1.0 - kb)), (r - luma) / (2.0 * (1.0 - kr))


@triton.jit
def _rgb_to_yuv420_kernel(
    src,
    dst,
    height,
    width,
    kr,
    kb,
    y_offset,
    y_span,
    c_span,
    NV12: tl.constexpr,
    BLOCK: tl.constexpr,
):
    block_row = tl.program_id(0)
    blocks = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = blocks < width // 2
    top = block_row * 2
    left = blocks * 2
    y_scale = y_span / 255.0
    l00, b00, r00 = _rgb_pixel(src, top, left, width, inside, kr, kb)
    l01, b01, r01 = _rgb_pixel(src, top, left + 1, width, inside, kr, kb)
    l10, b10, r10 = _rgb_pixel(src, top + 1, left, width, inside, kr, kb)
    l11, b11, r11 = _rgb_pixel(src, top + 1, left + 1, width, inside, kr, kb)
    tl.store(dst + top * width + left, round_u8(y_offset + l00 * y_scale), mask=inside)
    tl.store(dst + top * width + left + 1, round_u8(y_offset + l01 * y_scale), mask=inside)
    tl.store(dst + (top + 1) * width + left, round_u8(y_offset + l10 * y_scale), mask=inside)
    tl.store(dst + (top + 1) * width + left + 1, round_u8(y_offset + l11 * y_scale), mask=inside)
    c_scale = c_span / 255.0 * 0.25  # the block's mean, scaled to the range
    u = round_u8((b00 + b01 + b10 + b11) * c_scale + 128.0)
    v = round_u8((r00 + r01 + r10 + r11) * c_scale + 128.0)
    luma_plane = height * width
    if NV12:
        pair = dst + luma_plane + block_row * width + blocks * 2
        tl.store(pair, u, mask=inside)
        tl.store(pair + 1, v, mask=inside)
    else:
        sample = dst + luma_plane + block_row * (width // 2) + blocks
        tl.store(sample, u, mask=inside)
        tl.store(sample + luma_plane // 4, v, mask=inside)


def _check_yuv(image: torch.Tensor) -> tuple[int, int]:
    rows, width = image.shape
    height = rows * 2 // 3
    if image.dtype != torch.uint8 or rows != height * 3 // 2 or height % 2 or width % 2:
        raise ValueError(f"not a packed 4:2:0 uint8 image of even size: {tuple(image.shape)} {image.dtype}")
    if not image.is_contiguous():
        raise ValueError("a packed 4:2:0 image must be contiguous")
    return height, width


def _check_rgb(rgb: torch.Tensor) -> tuple[int, int]:
    if rgb.dim() != 3 or rgb.shape[2] != 3 or rgb.dtype != torch.uint8 or rgb.shape[0] % 2 or rgb.shape[1] % 2:
        raise ValueError(f"need an even-sized H×W×3 uint8 image, got {tuple(rgb.shape)} {rgb.dtype}")
    if not rgb.is_contiguous():
        raise ValueError("the RGB image must be contiguous")
    return rgb.shape[0], rgb.shape[1]


def _to_rgb(image: torch.Tensor, matrix: str, full_range: bool, nv12: bool, out: torch.Tensor | None) -> torch.Tensor:
    height, width = _check_yuv(image)
    if out is None:
        out = torch.empty((height, width, 3), dtype=torch.uint8, device=image.device)
    _check_rgb(out)
    if height and width:
        grid = (height, triton.cdiv(width, BLOCK))
        constants = conversion_constants(matrix, full_range)
        _yuv420_to_rgb_kernel[grid](image, out, height, width, *constants, NV12=nv12, BLOCK=BLOCK)
    return out


def _from_rgb(rgb: torch.Tensor, matrix: str, full_range: bool, nv12: bool, out: torch.Tensor | None) -> torch.Tensor:
    height, width = _check_rgb(rgb)
    if out is None:
        out = torch.empty((height * 3 // 2, width), dtype=torch.uint8, device=rgb.device)
    _check_yuv(out)
    if height and width:
        grid = (height // 2, triton.cdiv(width // 2, BLOCK))
        constants = conversion_constants(matrix, full_range)
        _rgb_to_yuv420_kernel[grid](rgb, out, height, width, *constants, NV12=nv12, BLOCK=BLOCK)
    return out


def i420_to_rgb(
    i420: torch.Tensor, *, matrix: str = "bt601", full_range: bool = False, out: torch.Tensor | None = None
) -> torch.Tensor:
    return _to_rgb(i420, matrix, full_range, False, out)


def nv12_to_rgb(
    nv12: torch.Tensor, *, matrix: str = "bt601", full_range: bool = False, out: torch.Tensor | None = None
) -> torch.Tensor:
    return _to_rgb(nv12, matrix, full_range, True, out)


def rgb_to_i420(
    rgb: torch.Tensor, *, matrix: str = "bt601", full_range: bool = False, out: torch.Tensor | None = None
) -> torch.Tensor:
    return _from_rgb(rgb, matrix, full_range, False, out)


def rgb_to_nv12(
    rgb: torch.Tensor, *, matrix: str = "bt601", full_range: bool = False, out: torch.Tensor | None = None
) -> torch.Tensor:
    return _from_rgb(rgb, matrix, full_range, True, out)
