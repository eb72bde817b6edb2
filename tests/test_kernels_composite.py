"""Overlay compositing: the Triton kernel against its torch reference, and the reference against plain facts.

Tolerance: the kernel and the reference blend in place to the same uint8 values (at most 1
code value apart, on at most 0.5% of pixels: float operation order). Pixels outside the
placed box must stay exactly as they were, in every plane.
"""

from __future__ import annotations

import pytest
import torch

from kernels import colour, composite, composite_triton, ops

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
HEIGHT, WIDTH = 20, 30
# (x, y, scale): inside, over each corner, enlarged at an odd place, shrunk, entirely off.
PLACEMENTS = [(3, 4, 1.0), (-3, -2, 1.0), (25, 15, 1.0), (5, 3, 1.7), (1, 1, 0.6), (31, 0, 1.0), (-20, 5, 1.0)]


def random_frame(layout: str, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (HEIGHT, WIDTH, 3) if layout == "rgb" else (HEIGHT * 3 // 2, WIDTH)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)


def random_overlay(height: int = 7, width: int = 9, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (height, width, 4), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize("layout", ["rgb", "i420", "nv12"])
@pytest.mark.parametrize(("x", "y", "scale"), PLACEMENTS)
def test_kernel_matches_reference(layout, x, y, scale):
    frame, overlay = random_frame(layout, seed=x * 31 + y), random_overlay()
    want = composite.composite(frame.clone(), overlay, layout=layout, x=x, y=y, scale=scale, matrix="bt709")
    got = frame.clone().to(DEVICE)
    result = composite_triton.composite(got, overlay.to(DEVICE), layout=layout, x=x, y=y, scale=scale, matrix="bt709")
    assert result is got
    diff = (got.cpu().int() - want.int()).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) <= 0.005


@pytest.mark.parametrize("blend", [composite.composite, composite_triton.composite], ids=["reference", "kernel"])
@pytest.mark.parametrize("layout", ["rgb", "i420", "nv12"])
def test_pixels_outside_the_box_are_untouched(blend, layout):
    frame = random_frame(layout, seed=7)
    device = DEVICE if blend is composite_triton.composite else torch.device("cpu")
    out = blend(frame.clone().to(device), random_overlay(), layout=layout, x=4, y=6).cpu()  # box [4,13) × [6,13)
    if layout == "rgb":
        changed = (out != frame).any(dim=-1)
        assert not changed[:, :4].any() and not changed[:, 13:].any()
        assert not changed[:6].any() and not changed[13:].any()
        return
    y_out, y_in = out[:HEIGHT], frame[:HEIGHT]
    assert torch.equal(y_out[:, :4], y_in[:, :4]) and torch.equal(y_out[:, 13:], y_in[:, 13:])
    assert torch.equal(y_out[:6], y_in[:6]) and torch.equal(y_out[13:], y_in[13:])
    # Chroma: only the 2×2 blocks the box touches (columns 4..13 → blocks 2..6, rows 6..13 → 3..6).
    planes_out = colour.i420_planes(out if layout == "i420" else colour.nv12_to_i420(out))[1:]
    planes_in = colour.i420_planes(frame if layout == "i420" else colour.nv12_to_i420(frame))[1:]
    for after, before in zip(planes_out, planes_in, strict=True):
        assert torch.equal(after[:, :2], before[:, :2]) and torch.equal(after[:, 7:], before[:, 7:])
        assert torch.equal(after[:3], before[:3]) and torch.equal(after[7:], before[7:])


@pytest.mark.parametrize("layout", ["rgb", "i420", "nv12"])
def test_a_transparent_overlay_changes_nothing(layout):
    frame = random_frame(layout, seed=3)
    clear = random_overlay()
    clear[..., 3] = 0
    assert torch.equal(composite.composite(frame.clone(), clear, layout=layout, x=2, y=2, scale=1.3), frame)
    got = composite_triton.composite(frame.clone().to(DEVICE), clear.to(DEVICE), layout=layout, x=2, y=2, scale=1.3)
    assert torch.equal(got.cpu(), frame)


def test_an_opaque_overlay_at_scale_one_is_copied_exactly_into_rgb():
    frame, overlay = random_frame("rgb", seed=4), random_overlay()
    overlay[..., 3] = 255
    out = composite.composite(frame.clone(), overlay, layout="rgb", x=10, y=5)
    assert torch.equal(out[5:12, 10:19], overlay[..., :3])


@pytest.mark.parametrize("layout", ["i420", "nv12"])
def test_blending_in_yuv_matches_blending_in_rgb_and_converting_back(layout):
    """The point of blending in the frame's own planes: same picture, no round trip through RGB."""
    # A smooth, mid-range picture: its colours survive the trip through 4:2:0 without clipping,
    # which would make the two ways differ for reasons that have nothing to do with blending.
    gy, gx = torch.meshgrid(torch.arange(HEIGHT), torch.arange(WIDTH), indexing="ij")
    rgb = torch.stack([40 + gx * 5, 60 + gy * 6, 200 - gx * 3 - gy * 2], -1).to(torch.uint8)
    to_yuv = colour.rgb_to_i420 if layout == "i420" else colour.rgb_to_nv12
    to_rgb = colour.i420_to_rgb if layout == "i420" else colour.nv12_to_rgb
    yuv = to_yuv(rgb)
    overlay = random_overlay(seed=9)
    in_yuv = composite.composite(yuv.clone(), overlay, layout=layout, x=4, y=2)  # even place: whole blocks
    via_rgb = to_yuv(composite.composite(to_rgb(yuv), overlay, layout="rgb", x=4, y=2))
    diff = (in_yuv.int() - via_rgb.int()).abs()
    assert float(diff.float().mean()) < 0.05 and int(diff.max()) <= 2  # both round, at different steps


def test_dispatch_takes_the_reference_on_cpu():
    frame, overlay = random_frame("i420", seed=6), random_overlay()
    want = composite.composite(frame.clone(), overlay, layout="i420", x=3, y=3)
    assert torch.equal(ops.composite(frame.clone(), overlay, layout="i420", x=3, y=3), want)


@pytest.mark.parametrize(
    ("overlay", "scale", "message"),
    [
        (torch.zeros((4, 4, 3), dtype=torch.uint8), 1.0, "RGBA"),
        (torch.zeros((4, 4, 4), dtype=torch.uint8), 0.0, "positive"),
        (torch.zeros((4, 4, 4), dtype=torch.uint8), float("nan"), "positive"),
    ],
)
def test_bad_overlays_are_refused(overlay, scale, message):
    for blend in (composite.composite, composite_triton.composite):
        frame = random_frame("rgb", seed=0)
        device = DEVICE if blend is composite_triton.composite else torch.device("cpu")
        with pytest.raises(ValueError, match=message):
            blend(frame.to(device), overlay.to(device), layout="rgb", x=0, y=0, scale=scale)


@pytest.mark.parametrize("layout", ["rgb", "i420"])
@pytest.mark.parametrize(("x", "y"), [(3, 4), (-3, -2), (25, 15), (3, 5), (-4, 17)])
def test_at_scale_one_reading_the_overlay_out_gives_what_interpolating_it_gives(layout, x, y):
    """The reference reads the overlay's pixels straight out at scale 1 (off its edges, the edge's
    value, as the interpolation holds it): the same samples as bilinear interpolation there."""
    overlay = random_overlay()
    region = composite.blend_region(WIDTH, HEIGHT, x, y, overlay.shape[1], overlay.shape[0], layout)
    r0, r1, c0, c1 = region
    rows, cols = torch.arange(r0, r1, dtype=torch.float32), torch.arange(c0, c1, dtype=torch.float32)
    picked = composite._picked(overlay, r0 - y, r1 - y, c0 - x, c1 - x)
    interpolated = composite._interpolated(overlay, x, y, 1.0, rows, cols)
    assert picked.shape == interpolated.shape
    assert torch.allclose(picked, interpolated, atol=1e-3)
