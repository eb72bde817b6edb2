"""Alpha-blending an RGBA overlay (the avatar) into a frame, in the frame's own layout.

This is the torch reference; `kernels/composite_triton.py` does the same in one pass. The
overlay is placed with its top-left corner at frame pixel (x, y), scaled by `scale`, and
clipped at the frame's edges. The definition, shared by both:

- Frame pixel (r, c) inside the placed box takes the overlay at
  u = (c − x + ½)/scale − ½, v = (r − y + ½)/scale − ½, bilinearly (edges held).
- RGB frames: out = frame·(1 − α) + overlay·α, α = A/255 (straight, not premultiplied alpha).
- I420 / NV12 frames are blended where they are, never through RGB: Y as above with the
  overlay's luma; each chroma sample, shared by a 2×2 block, as
  out = C·(1 − mean α) + mean(α·C_overlay) over the block's four pixels. That is exactly
  what blending in RGB and converting back (block-mean chroma) gives, without the round trip.
- Results are rounded to the nearest code value (halves up) and clamped to 0..255.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels.colour import block_mean, conversion_constants, i420_planes, nv12_planes
from kernels.prepare import frame_size


def placed_size(overlay: torch.Tensor, scale: float) -> tuple[int, int]:
    """(width, height) the overlay covers on the frame at `scale`."""
    if overlay.dim() != 3 or overlay.shape[2] != 4 or overlay.dtype != torch.uint8:
        raise ValueError(f"the overlay must be H×W×4 uint8 RGBA, got {tuple(overlay.shape)} {overlay.dtype}")
    if not scale > 0 or math.isinf(scale):
        raise ValueError(f"scale must be a positive number, got {scale}")
    return round(overlay.shape[1] * scale), round(overlay.shape[0] * scale)


def blend_region(
    width: int, height: int, x: int, y: int, box_w: int, box_h: int, layout: str
) -> tuple[int, int, int, int] | None:
    """Frame rows [r0, r1) and columns [c0, c1) to visit, or None when the box is off the frame.

    The placed box clipped to the frame; for 4:2:0 layouts widened to whole 2×2 blocks, so each
    chroma sample is blended from all four of its pixels (those off the box have α = 0).
    """
    c0, c1 = max(0, x), min(width, x + box_w)
    r0, r1 = max(0, y), min(height, y + box_h)
    if c0 >= c1 or r0 >= r1:
        return None
    if layout != "rgb":
        c0, r0 = c0 & ~1, r0 & ~1
        c1, r1 = min(width, c1 + (c1 & 1)), min(height, r1 + (r1 & 1))
    return r0, r1, c0, c1


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
    """Blend `overlay` into `image` in place (and return it)."""
    width, height = frame_size(image, layout)
    box_w, box_h = placed_size(overlay, scale)
    region = blend_region(width, height, x, y, box_w, box_h, layout)
    if region is None:
        return image  # entirely off the frame
    r0, r1, c0, c1 = region
    colour, alpha = _overlay_at(overlay, x, y, scale, r0, r1, c0, c1, box_w, box_h)  # 3×h×w 0..255, h×w 0..1
    keep = 1.0 - alpha
    if layout == "rgb":
        region = image[r0:r1, c0:c1].permute(2, 0, 1).to(torch.float32)
        blended = torch.addcmul(colour * alpha, region, keep)
        image[r0:r1, c0:c1] = _round_u8(blended).permute(1, 2, 0)
        return image
    if layout == "i420":
        y_plane, u_plane, v_plane = i420_planes(image)
    else:
        y_plane, uv = nv12_planes(image)
        u_plane, v_plane = uv[:, 0::2], uv[:, 1::2]
    # The overlay's Y, Cb and Cr codes in one product, each weighed by its α (the blend's second term).
    weights, offsets = _to_yuv(matrix, full_range, colour.device)
    height, width = alpha.shape
    codes = torch.addmm(offsets, weights, colour.reshape(3, -1)).view(3, height, width).mul_(alpha)
    luma_region = y_plane[r0:r1, c0:c1].to(torch.float32)
    y_plane[r0:r1, c0:c1] = _round_u8(torch.addcmul(codes[0], luma_region, keep))
    # Per 2×2 block: mean α and mean α·C of Cb and Cr, at once.
    means = block_mean(torch.stack((alpha, codes[1], codes[2])))
    keep_blocks = 1.0 - means[0]
    for plane, weighed in ((u_plane, means[1]), (v_plane, means[2])):
        block = plane[r0 // 2 : r1 // 2, c0 // 2 : c1 // 2]
        block.copy_(_round_u8(torch.addcmul(weighed, block.to(torch.float32), keep_blocks)))
    return image


def _to_yuv(matrix: str, full_range: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(3×3 weights, 3×1 offsets) taking RGB 0..255 to Y, Cb, Cr code values."""
    key = (matrix, full_range, device)
    found = _YUV.get(key)
    if found is None:
        kr, kb, y_offset, y_span, c_span = conversion_constants(matrix, full_range)
        kg = 1.0 - kr - kb
        luma = torch.tensor([kr, kg, kb], dtype=torch.float64)
        weights = torch.stack(
            (
                luma * (y_span / 255.0),
                (torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) - luma) / (2.0 * (1.0 - kb)) * (c_span / 255.0),
                (torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64) - luma) / (2.0 * (1.0 - kr)) * (c_span / 255.0),
            )
        )
        offsets = torch.tensor([[y_offset], [128.0], [128.0]], dtype=torch.float64)
        found = _YUV[key] = (weights.to(device, torch.float32), offsets.to(device, torch.float32))
    return found


_YUV: dict[tuple[str, bool, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def _overlay_at(
    overlay: torch.Tensor, x: int, y: int, scale: float, r0: int, r1: int, c0: int, c1: int, box_w: int, box_h: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The overlay sampled at frame pixels [r0, r1) × [c0, c1): colour 3×h×w (0..255) and α h×w (0 off the box)."""
    # At scale 1 every frame pixel sits on an overlay pixel's centre, where the bilinear sample is
    # that pixel: it is read straight out (a view, mostly) instead of interpolated.
    if scale == 1.0:
        sampled = _picked(overlay, r0 - y, r1 - y, c0 - x, c1 - x)
    else:
        cols = torch.arange(c0, c1, device=overlay.device, dtype=torch.float32)
        rows = torch.arange(r0, r1, device=overlay.device, dtype=torch.float32)
        sampled = _interpolated(overlay, x, y, scale, rows, cols)
    alpha = sampled[3] / 255.0
    # Whole 4:2:0 blocks may reach a row or column past the box: none of the overlay there.
    if c0 < x:
        alpha[:, : x - c0] = 0.0
    if c1 > x + box_w:
        alpha[:, x + box_w - c0 :] = 0.0
    if r0 < y:
        alpha[: y - r0] = 0.0
    if r1 > y + box_h:
        alpha[y + box_h - r0 :] = 0.0
    return sampled[:3], alpha


def _interpolated(
    overlay: torch.Tensor, x: int, y: int, scale: float, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """The overlay at frame pixels `rows` × `cols`, bilinearly, edges held: 4×h×w float."""
    over_h, over_w = overlay.shape[:2]
    u = (cols - x + 0.5) / scale - 0.5  # overlay pixels
    v = (rows - y + 0.5) / scale - 0.5
    grid_x = ((u + 0.5) / over_w * 2 - 1)[None, :].expand(len(rows), -1)
    grid_y = ((v + 0.5) / over_h * 2 - 1)[:, None].expand(-1, len(cols))
    grid = torch.stack((grid_x, grid_y), dim=-1)[None]
    source = overlay.permute(2, 0, 1).to(torch.float32)[None]
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]


def _picked(overlay: torch.Tensor, row0: int, row1: int, col0: int, col1: int) -> torch.Tensor:
    """Overlay rows [row0, row1) × columns [col0, col1), edges held: `_interpolated` at scale 1
    without interpolating. 4×h×w float."""
    picked = _held_range(_held_range(overlay, 0, row0, row1), 1, col0, col1)
    return picked.permute(2, 0, 1).to(torch.float32)


def _held_range(overlay: torch.Tensor, dim: int, start: int, stop: int) -> torch.Tensor:
    """Indices start..stop-1 of `overlay` along `dim`, those off its edge holding the edge's value:
    a view when all are on it (the usual case), a gathered copy otherwise."""
    size = overlay.shape[dim]
    if start >= 0 and stop <= size:
        return overlay.narrow(dim, start, stop - start)
    picks = torch.arange(start, stop, device=overlay.device).clamp(0, size - 1)
    return overlay.index_select(dim, picks)


def _round_u8(values: torch.Tensor) -> torch.Tensor:
    """To the nearest code value, halves up, clamped: in place on `values` (a temporary).
    After the clamp every value is ≥ 0, where the conversion's truncation is the floor."""
    return values.add_(0.5).clamp_(0.0, 255.0).to(torch.uint8)
