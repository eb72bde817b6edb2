"""Triton colour kernels against their torch references, and known colours against published values.

On a machine without a GPU the kernels run under Triton's interpreter (`TRITON_INTERPRET=1`,
set by conftest) on CPU tensors; with a GPU they run compiled, on CUDA tensors. Outputs are
poisoned before each run so an element a kernel never writes fails the comparison.

Tolerance, uint8 outputs: at most 1 code value, on at most 0.1% of elements. The reference
rounds halves to even and the kernels round them up; nothing else may differ.
"""

from __future__ import annotations

import pytest
import torch

from kernels import colour, ops
from kernels import colour_triton as triton_colour

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
POISON = 0xA5  # a value no conversion of the inputs below lands on everywhere
# (height, width): tiny, empty, odd numbers of 2×2 blocks, a width past one block of 256 pixels.
SIZES = [(2, 2), (0, 4), (6, 10), (10, 6), (4, 514), (14, 38)]
SETTINGS = [("bt601", False), ("bt601", True), ("bt709", False), ("bt709", True)]


def within_one(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    if not got.numel():
        return
    diff = (got.int() - want.int()).abs()
    assert int(diff.max()) <= 1, "more than one code value from the reference"
    assert float((diff > 0).float().mean()) <= 0.001, "too many elements off by one"


def poisoned(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.full(shape, POISON, dtype=torch.uint8, device=DEVICE)


def random_rgb(height: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize(("height", "width"), SIZES)
@pytest.mark.parametrize(("matrix", "full_range"), SETTINGS)
@pytest.mark.parametrize("layout", ["i420", "nv12"])
def test_rgb_to_yuv_kernel_matches_the_reference(height, width, matrix, full_range, layout):
    rgb = random_rgb(height, width, seed=height * 1000 + width)
    kernel = getattr(triton_colour, f"rgb_to_{layout}")
    reference = getattr(colour, f"rgb_to_{layout}")
    out = poisoned((height * 3 // 2, width))
    got = kernel(rgb.to(DEVICE), matrix=matrix, full_range=full_range, out=out)
    assert got is out
    within_one(got.cpu(), reference(rgb, matrix=matrix, full_range=full_range))


@pytest.mark.parametrize(("height", "width"), SIZES)
@pytest.mark.parametrize(("matrix", "full_range"), SETTINGS)
@pytest.mark.parametrize("layout", ["i420", "nv12"])
def test_yuv_to_rgb_kernel_matches_the_reference(height, width, matrix, full_range, layout):
    generator = torch.Generator().manual_seed(height * 7 + width)
    yuv = torch.randint(0, 256, (height * 3 // 2, width), dtype=torch.uint8, generator=generator)
    kernel = getattr(triton_colour, f"{layout}_to_rgb")
    reference = getattr(colour, f"{layout}_to_rgb")
    out = poisoned((height, width, 3))
    got = kernel(yuv.to(DEVICE), matrix=matrix, full_range=full_range, out=out)
    within_one(got.cpu(), reference(yuv, matrix=matrix, full_range=full_range))


# Published 8-bit values (ITU-R BT.601 and BT.709, limited range): (Y, Cb, Cr) of each colour.
KNOWN = {
    "bt601": {
        (255, 0, 0): (81, 90, 240),
        (0, 255, 0): (145, 54, 34),
        (0, 0, 255): (41, 240, 110),
        (255, 255, 255): (235, 128, 128),
        (0, 0, 0): (16, 128, 128),
    },
    "bt709": {
        (255, 0, 0): (63, 102, 240),
        (0, 255, 0): (173, 42, 26),
        (0, 0, 255): (32, 240, 118),
        (255, 255, 255): (235, 128, 128),
        (0, 0, 0): (16, 128, 128),
    },
}


@pytest.mark.parametrize("matrix", ["bt601", "bt709"])
@pytest.mark.parametrize("convert", [colour.rgb_to_nv12, triton_colour.rgb_to_nv12], ids=["reference", "kernel"])
def test_known_colours_map_to_their_published_values(matrix, convert):
    for rgb, expected in KNOWN[matrix].items():
        patch = torch.tensor(rgb, dtype=torch.uint8).expand(2, 4, 3).contiguous()
        device = DEVICE if convert is triton_colour.rgb_to_nv12 else torch.device("cpu")
        y, uv = colour.nv12_planes(convert(patch.to(device), matrix=matrix).cpu())
        assert (int(y[0, 0]), int(uv[0, 0]), int(uv[0, 1])) == expected, f"{matrix} {rgb}"


@pytest.mark.parametrize(("matrix", "full_range"), SETTINGS)
def test_rgb_nv12_rgb_round_trip_stays_close(matrix, full_range):
    """A smooth picture survives the trip; 2×2 chroma sharing costs a little at edges."""
    height, width = 38, 54  # not multiples of any block size
    gy, gx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    rgb = torch.stack([gx * 255 // width, gy * 255 // height, (gx + gy) * 255 // (height + width)], -1)
    rgb = rgb.to(torch.uint8).to(DEVICE)
    nv12 = triton_colour.rgb_to_nv12(rgb, matrix=matrix, full_range=full_range)
    back = triton_colour.nv12_to_rgb(nv12, matrix=matrix, full_range=full_range)
    error = (back.int() - rgb.int()).abs().float()
    assert float(error.mean()) < 3.0
    assert float(error.max()) < 16.0


def test_layout_helpers_move_bytes_without_changing_them():
    generator = torch.Generator().manual_seed(3)
    i420 = torch.randint(0, 256, (12, 10), dtype=torch.uint8, generator=generator)
    nv12 = colour.i420_to_nv12(i420)
    y, u, v = colour.i420_planes(i420)
    ny, uv = colour.nv12_planes(nv12)
    assert torch.equal(ny, y) and torch.equal(uv[:, 0::2], u) and torch.equal(uv[:, 1::2], v)
    assert torch.equal(colour.nv12_to_i420(nv12), i420)


def test_dispatch_runs_the_reference_on_cpu_tensors():
    rgb = random_rgb(4, 6, seed=1)
    assert torch.equal(ops.rgb_to_i420(rgb), colour.rgb_to_i420(rgb))
    assert ops.rgb_to_i420.reference is colour.rgb_to_i420
    assert ops.rgb_to_nv12.accelerated is triton_colour.rgb_to_nv12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; the CPU dispatch is tested beside it")
def test_dispatch_runs_the_kernel_on_cuda_tensors():
    rgb = random_rgb(8, 12, seed=2)
    within_one(ops.rgb_to_i420(rgb.cuda()).cpu(), colour.rgb_to_i420(rgb))


@pytest.mark.parametrize(
    ("call", "shape"),
    [
        (triton_colour.i420_to_rgb, (13, 10)),  # not (H·3/2)×W
        (triton_colour.nv12_to_rgb, (12, 9)),  # odd width
    ],
)
def test_bad_shapes_are_refused(call, shape):
    with pytest.raises(ValueError, match="4:2:0"):
        call(torch.zeros(shape, dtype=torch.uint8, device=DEVICE))


def test_unknown_matrix_is_refused():
    with pytest.raises(ValueError, match="unknown colour matrix"):
        triton_colour.rgb_to_i420(torch.zeros((2, 2, 3), dtype=torch.uint8, device=DEVICE), matrix="bt2020")


def test_block_mean_is_the_mean_of_each_2x2_block_of_a_plane_or_of_each_plane_of_a_stack():
    from kernels.colour import block_mean

    planes = torch.rand(3, 6, 10, generator=torch.Generator().manual_seed(3)) * 255
    expected = planes.view(3, 3, 2, 5, 2).mean(dim=(2, 4))  # by definition, the slow way
    torch.testing.assert_close(block_mean(planes), expected)
    torch.testing.assert_close(block_mean(planes[1]), expected[1])
    # A strided view (every other column of a wider plane) is read as it is, not as its storage.
    wide = torch.rand(6, 20, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(block_mean(wide[:, ::2]), wide[:, ::2].reshape(3, 2, 5, 2).mean(dim=(1, 3)))
