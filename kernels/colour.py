"""Colour conversion between packed I420 (what decoders give and encoders take) and RGB.

These are the plain torch references: correct on any device, used where a frame is converted
once (a test card, a display window) and as the ground truth the fused kernels are checked
against. An I420 image is one contiguous (H·3/2)×W uint8 tensor: H rows of Y, then the U
plane and then the V plane, each (H/2)×(W/2) stored row after row. Width and height are even.
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
    u_out.copy_((_block_mean(cb) + 128.0).round().clamp(0, 255))
    v_out.copy_((_block_mean(cr) + 128.0).round().clamp(0, 255))
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


def _block_mean(plane: torch.Tensor) -> torch.Tensor:
    """Mean of each 2×2 block of an H×W plane → (H/2)×(W/2)."""
    h, w = plane.shape
    return plane.view(h // 2, 2, w // 2, 2).mean(dim=(1, 3))
