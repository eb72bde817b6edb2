"""Fused model-input preparation: the Triton kernel against its torch reference, and the reference against plain facts.

Tolerances: float32 outputs within 1e-4 of the reference (values are about ±4 after
normalization; the two differ only in the order of float operations); float16 within 4e-3
(one float16 step at that size). Outputs are filled with NaN first, so an element the kernel
never writes fails.
"""

from __future__ import annotations

import pytest
import torch

from kernels import colour, ops, prepare, prepare_triton

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOLERANCE = {torch.float32: 1e-4, torch.float16: 4e-3}


def frame(layout: str, height: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (height, width, 3) if layout == "rgb" else (height * 3 // 2, width)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)


def compare(image: torch.Tensor, **kwargs) -> None:
    want = prepare.prepare_input(image, **kwargs)
    out = torch.full(want.shape, float("nan"), dtype=want.dtype, device=DEVICE)
    boxes = kwargs.pop("boxes", None)
    got = prepare_triton.prepare_input(
        image.to(DEVICE), boxes=None if boxes is None else boxes.to(DEVICE), out=out, **kwargs
    )
    assert got is out
    assert not torch.isnan(got).any(), "the kernel left elements unwritten"
    error = (got.cpu().float() - want.float()).abs().max() if want.numel() else torch.tensor(0.0)
    assert float(error) <= TOLERANCE[want.dtype]


BOXES = torch.tensor(
    [
        [0.0, 0.0, 30.0, 20.0],  # the whole frame
        [5.5, 3.2, 17.1, 15.9],  # inside, fractional
        [-6.0, -4.0, 10.0, 9.0],  # over the top-left corner
        [25.0, 15.0, 40.0, 30.0],  # over the bottom-right corner
        [12.0, 8.0, 14.0, 9.0],  # tiny: upscaled
    ]
)


@pytest.mark.parametrize("layout", ["i420", "nv12", "rgb"])
@pytest.mark.parametrize("gray", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel_matches_reference_on_boxes_in_and_out_of_the_frame(layout, gray, dtype):
    channels = 1 if gray else 3
    compare(
        frame(layout, 20, 30, seed=len(layout)),
        layout=layout,
        size=(7, 9),
        boxes=BOXES,
        gray=gray,
        dtype=dtype,
        mean=(0.485, 0.456, 0.406)[:channels],
        std=(0.229, 0.224, 0.225)[:channels],
        matrix="bt709",
    )


@pytest.mark.parametrize("layout", ["i420", "nv12", "rgb"])
@pytest.mark.parametrize("gray", [False, True])
def test_kernel_matches_reference_filling_outside_the_frame(layout, gray):
    """The expression crops' border: outside the frame counts as the picture's own grey."""
    compare(frame(layout, 20, 30, seed=3), layout=layout, size=(7, 9), boxes=BOXES, gray=gray, fill=97.25)


@pytest.mark.parametrize(("layout", "height", "width"), [("rgb", 9, 13), ("i420", 10, 14), ("nv12", 6, 262)])
def test_whole_frame_at_awkward_sizes(layout, height, width):
    """Odd RGB sizes, widths past one block of 128 output pixels, the default whole-frame box."""
    compare(frame(layout, height, width, seed=width), layout=layout, size=(5, 131), full_range=True)


def test_an_empty_batch_gives_an_empty_output():
    image = frame("i420", 8, 8, seed=0)
    empty = torch.zeros((0, 4))
    assert prepare.prepare_input(image, layout="i420", size=(4, 4), boxes=empty).shape == (0, 3, 4, 4)
    got = prepare_triton.prepare_input(image.to(DEVICE), layout="i420", size=(4, 4), boxes=empty.to(DEVICE))
    assert got.shape == (0, 3, 4, 4)


def test_reference_at_scale_one_gives_back_the_pixels():
    """Sampling the whole frame at its own size lands on pixel centres: no blur, no shift."""
    image = frame("rgb", 6, 10, seed=4)
    out = prepare.prepare_input(image, layout="rgb", size=(6, 10))
    assert torch.allclose(out[0] * 255.0, image.permute(2, 0, 1).float(), atol=1e-3)


def test_reference_yuv_agrees_with_the_colour_conversion():
    image = frame("i420", 8, 12, seed=5)
    out = prepare.prepare_input(image, layout="i420", size=(8, 12))
    rgb = colour.i420_to_rgb(image).permute(2, 0, 1).float()
    assert float((out[0] * 255.0 - rgb).abs().max()) <= 0.5 + 1e-3  # the conversion rounds, this does not


@pytest.mark.parametrize("layout", ["i420", "nv12"])
def test_converting_the_whole_frame_gives_what_converting_each_neighbour_gives(layout, monkeypatch):
    """The reference's two ways to RGB from YUV: the whole frame then blended, or four neighbours per sample."""
    image = frame(layout, 20, 30, seed=7)
    kwargs = dict(layout=layout, size=(12, 16), mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4), matrix="bt709")
    for boxes in (None, BOXES):
        monkeypatch.setattr(prepare, "WHOLE_FRAME_SHARE", 10**9)  # every request converts the whole frame
        whole = prepare.prepare_input(image, boxes=boxes, **kwargs)
        monkeypatch.setattr(prepare, "WHOLE_FRAME_SHARE", 0)  # none does
        neighbours = prepare.prepare_input(image, boxes=boxes, **kwargs)
        assert float((whole - neighbours).abs().max()) <= 1e-4


@pytest.mark.parametrize(("layout", "gray"), [("i420", True), ("nv12", True), ("rgb", False)])
def test_planes_of_the_part_the_boxes_read_give_what_the_whole_planes_give(layout, gray, monkeypatch):
    """Each box alone (inside, over a corner, tiny), so the part read is less than the frame."""
    image = frame(layout, 40, 60, seed=11)
    window = prepare._window
    for box in BOXES[1:] * 2:
        kwargs = dict(layout=layout, size=(6, 5), boxes=box[None], gray=gray)
        monkeypatch.setattr(prepare, "_window", window)
        part = prepare.prepare_input(image, **kwargs)
        monkeypatch.setattr(prepare, "_window", lambda sx, sy, width, height: (0, height, 0, width))
        whole = prepare.prepare_input(image, **kwargs)
        assert float((part - whole).abs().max()) <= 1e-5, box


def test_reference_outside_the_frame_is_black():
    image = torch.full((4, 4, 3), 200, dtype=torch.uint8)
    off = torch.tensor([[10.0, 10.0, 14.0, 14.0]])  # entirely outside
    assert float(prepare.prepare_input(image, layout="rgb", size=(2, 2), boxes=off).abs().max()) == 0.0


@pytest.mark.parametrize(("layout", "gray"), [("i420", True), ("i420", False), ("rgb", True), ("rgb", False)])
def test_reference_outside_the_frame_is_the_fill_and_the_edge_blends_into_it(layout, gray, monkeypatch):
    image = frame(layout, 8, 8, seed=2)
    off = torch.tensor([[10.0, 10.0, 14.0, 14.0]])  # entirely outside
    out = prepare.prepare_input(image, layout=layout, size=(2, 2), boxes=off, gray=gray, fill=51.0)
    assert torch.allclose(out * 255.0, torch.full_like(out, 51.0), atol=1e-3)
    over = torch.tensor([[-3.0, -2.0, 5.0, 6.0]])  # over the corner: both ways of the reference agree
    kwargs = dict(layout=layout, size=(5, 4), boxes=over, gray=gray, fill=51.0)
    monkeypatch.setattr(prepare, "WHOLE_FRAME_SHARE", 10**9)
    whole = prepare.prepare_input(image, **kwargs)
    monkeypatch.setattr(prepare, "WHOLE_FRAME_SHARE", 0)
    neighbours = prepare.prepare_input(image, **kwargs)
    assert float((whole - neighbours).abs().max()) <= 1e-4


def test_reference_normalizes_per_channel():
    image = torch.full((2, 2, 3), 255, dtype=torch.uint8)
    out = prepare.prepare_input(image, layout="rgb", size=(2, 2), mean=(0.5, 0.0, 1.0), std=(0.5, 1.0, 2.0))
    assert out[0, :, 0, 0].tolist() == pytest.approx([1.0, 1.0, 0.0])


def test_dispatch_takes_the_reference_on_cpu():
    image = frame("nv12", 4, 6, seed=1)
    assert torch.equal(
        ops.prepare_input(image, layout="nv12", size=(2, 3)), prepare.prepare_input(image, layout="nv12", size=(2, 3))
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layout": "yuyv", "size": (2, 2)}, "unknown layout"),
        ({"layout": "rgb", "size": (2, 2), "mean": (0.5,)}, "mean and std"),
        ({"layout": "rgb", "size": (2, 2), "std": (1.0, 0.0, 1.0)}, "std must not be 0"),
        ({"layout": "rgb", "size": (2, 2), "boxes": torch.zeros(3)}, "N×4"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    image = frame("rgb", 4, 4, seed=0)
    for implementation in (prepare.prepare_input, prepare_triton.prepare_input):
        with pytest.raises(ValueError, match=message):
            implementation(image.to(DEVICE) if implementation is not prepare.prepare_input else image, **kwargs)
