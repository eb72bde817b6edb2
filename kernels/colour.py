"""Colour conversion between 4:2:0 YUV (I420 and NV12: what decoders give and encoders take) and RGB.

These are the plain torch references: correct on any device, used on CPU tensors and as the
ground truth the Triton kernels (`kernels/colour_triton.py`) are checked against. Both YUV
layouts are one contiguous (H·3/2)×W uint8 tensor that starts with H rows of Y. In I420 the
U plane and then the V plane follow, each (H/2)×(W/2) stored row after row; in NV12 (what
NVDEC gives and NVENC takes) H/2 rows of interleaved U, V pairs follow. Width and height are
even. `kernels.ops` picks the kernel or the reference by the tensor's device.
"""

from __future__ import annotations

import torch

# Luma weights (Kr, Kb) of each matrix; Kg = 1 − Kr − Kb.
MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}
LIMITED_Y = (16.0, 219.0)  # offset and span of 8-bit limited-range ("TV") luma
LIMITED_C = 224.0  # span of 8-bit limited-range chroma, centred on 128


def i420_planes(i420: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views of the Y (H×W), U and V ((H/2)×(W/2)) planes of a packed I420 image; no copy."""
    rows, width = i420.shape
    height = rows * 2 // 3
    if rows != height * 3 // 2 or height % 2 or width % 2:
        raise ValueError(f"not a packed I420 image of even size: shape {tuple(i420.shape)}")
    if not i420.is_contiguous():
        raise ValueError("a packed I420 image must be contiguous")
    flat = i420.view(-1)
    luma = height * width
    chroma = luma // 4
    y = flat[:luma].view(height, width)
    u = flat[luma : luma + chroma].view(height // 2, width // 2)
    v = flat[luma + chroma :].view(height // 2, width // 2)
    return y, u, v


def nv12_planes(nv12: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of the Y (H×W) and interleaved UV ((H/2)×W) planes of a packed NV12 image; no copy."""
    y, _, _ = i420_planes(nv12)  # the same shape rules
    height, width = y.shape
    return y, nv12.view(-1)[height * width :].view(height // 2, width)


def i420_to_nv12(i420: torch.Tensor) -> torch.Tensor:
    """Same picture, chroma interleaved: a copy of the bytes, no colour maths."""
    y, u, v = i420_planes(i420)
    out = torch.empty_like(i420)
    y_out, uv_out = nv12_planes(out)
    y_out.copy_(y)
    uv_out.view(u.shape[0], u.shape[1], 2).copy_(torch.stack((u, v), dim=-1))
    return out


def nv12_to_i420(nv12: torch.Tensor) -> torch.Tensor:
    """Same picture, chroma in two planes: a copy of the bytes, no colour maths."""
    y, uv = nv12_planes(nv12)
    out = torch.empty_like(nv12)
    y_out, u_out, v_out = i420_planes(out)
    y_out.copy_(y)
    pairs = uv.view(uv.shape[0], uv.shape[1] // 2, 2)
    u_out.copy_(pairs[..., 0])
    v_out.copy_(pairs[..., 1])
    return out


def rgb_to_nv12(rgb: torch.Tensor, *, matrix: str = "bt601", full_range: bool = False) -> torch.Tensor:
    """H×W×3 uint8 RGB → packed NV12 (the values of `rgb_to_i420`, chroma interleaved)."""
    return i420_to_nv12(rgb_to_i420(rgb, matrix=matrix, full_range=full_range))


def nv12_to_rgb(nv12: torch.Tensor, *, matrix: str = "bt601", full_range: bool = False) -> torch.Tensor:
    """Packed NV12 → H×W×3 uint8 RGB (as `i420_to_rgb`)."""
    return i420_to_rgb(nv12_to_i420(nv12), matrix=matrix, full_range=full_range)


def conversion_constants(matrix: str, full_range: bool) -> tuple[float, float, float, float, float]:
    """(Kr, Kb, luma offset, luma span, chroma span) in 8-bit code values: what every kernel needs."""
    if matrix not in MATRICES:
        raise ValueError(f"unknown colour matrix {matrix!r}; use one of {', '.join(MATRICES)}")
    kr, kb = MATRICES[matrix]
    if full_range:
        return kr, kb, 0.0, 255.0, 255.0
    return kr, kb, LIMITED_Y[0], LIMITED_Y[1], LIMITED_C


def rgb_to_i420(rgb: torch.Tensor, *, matrix: str = "bt601", full_range: bool = False) -> torch.Tensor:
    """H×W×3 uint8 RGB → packed I420; chroma is the mean of each 2×2 block."""
    height, width, channels = rgb.shape
    if channels != 3 or height % 2 or width % 2:
        raise ValueError(f"need an even-sized H×W×3 image, got shape {tuple(rgb.shape)}")
    kr, kb = MATRICES[matrix]
    x = rgb.to(torch.float32)
    r, g, b = x.unbind(-1)
    luma = kr * r + (1.0 - kr - kb) * g + kb * b  # 0..255
    cb = (b - luma) / (2.0 * (1.0 - kb))  # −127.5..127.5
    cr = (r - luma) / (2.0 * (1.0 - kr))
    if full_range:
        y = luma
    else:
        y = LIMITED_Y[0] + luma * (LIMITED_Y[1] / 255.0)
        cb = cb * (LIMITED_C / 255.0)
        cr = cr * (LIMITED_C / 255.0)
    out = torch.empty((height * 3 // 2, width), dtype=torch.uint8, device=rgb.device)
    y_out, u_out, v_out = i420_planes(out)
    y_out.copy_(y.round().clamp(0, 255))
    u_out.copy_((block_mean(cb) + 128.0).round().clamp(0, 255))
    v_out.copy_((block_mean(cr) + 128.0).round().clamp(0, 255))
    return out


def i420_to_rgb(i420: torch.Tensor, *, matrix: str = "bt601", full_range: bool = False) -> torch.Tensor:
    """Packed I420 → H×W×3 uint8 RGB; each chroma sample covers its 2×2 block."""
    y, u, v = i420_planes(i420)
    kr, kb = MATRICES[matrix]
    luma = y.to(torch.float32)
    cb = u.to(torch.float32) - 128.0
    cr = v.to(torch.float32) - 128.0
    if not full_range:
        luma = (luma - LIMITED_Y[0]) * (255.0 / LIMITED_Y[1])
        cb = cb * (255.0 / LIMITED_C)
        cr = cr * (255.0 / LIMITED_C)
    cb = cb.repeat_interleave(2, 0).repeat_interleave(2, 1)
    cr = cr.repeat_interleave(2, 0).repeat_interleave(2, 1)
    r = luma + 2.0 * (1.0 - kr) * cr
    b = luma + 2.0 * (1.0 - kb) * cb
    g = (luma - kr * r - kb * b) / (1.0 - kr - kb)
    return torch.stack((r, g, b), dim=-1).round().clamp(0, 255).to(torch.uint8)


def block_mean(plane: torch.Tensor) -> torch.Tensor:
    """Mean of each 2×2 block of an H×W plane (or of each of a stack of them, …×H×W) → …×(H/2)×(W/2).

    Pairs of rows added first (whole rows, contiguous: vectorized), then pairs of columns of
    that half-height sum: on a CPU about 1.5-2 times faster than adding four strided views,
    and many times faster than a mean over the two inner axes of a 4-D view or `avg_pool2d`.
    """
    rows = plane[..., 0::2, :] + plane[..., 1::2, :]
    return (rows[..., 0::2] + rows[..., 1::2]).mul_(0.25)
